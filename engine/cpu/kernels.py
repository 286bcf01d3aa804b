"""bfloat16 matrix-vector products for the frame loop on the CPU (x86-64 and 64-bit ARM).

Why: on a CPU the frame loop is bound by memory bandwidth (18 GB of float32 weights per frame), and
MLX's CPU backend has no fast product for bfloat16 weights (its bfloat16 matrix-vector product read
2.4 GB/s on the 2-core Xeon we measure on, against 12-13 GB/s for float32 through OpenBLAS). These
kernels read bfloat16 weights at ~13 GB/s there with 2 threads: `vdpbf16ps` on CPUs with
AVX512-BF16, elsewhere a portable C loop that widens each weight to float32 (13.6 GB/s on the same
machine, built without AVX512-BF16). The vector's entries are rounded to bfloat16 first, as a
bfloat16 model's activations are anyway, so both variants compute the same products. A frame then
reads half the bytes at the same speed. They are used only with a bfloat16 model on the CPU
(engine/llama.py's one-row products and engine/cpu/depth.py's depth decoder), which is then the
CPU's default dtype (engine/device.py).

The C source, kernels.c beside this file, is compiled once for this machine by build.py and loaded
with ctypes. Where that cannot be done (no compiler, a CPU other
than x86-64 or ARM64, `CSM_CPU_KERNELS=0`) `available()` is False and `reason()` says why; the engine
then runs float32 on the CPU, as before. `CSM_CPU_KERNELS=portable` builds the portable loop even
where AVX512-BF16 exists.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import numpy as np

from .blas import default_threads
from .build import build_library, machine_supported

ENV_SWITCH = "CSM_CPU_KERNELS"


_state: dict = {}


def available() -> bool:
    """Whether the kernels are built and loaded (building them on first call)."""
    return _load() is not None


def reason() -> str:
    """Why the kernels are not available ('' when they are)."""
    _load()
    return _state.get("reason", "")


def variant() -> str:
    """'vdpbf16ps' or 'portable C' (or '' when not available), for reports."""
    lib = _load()
    if lib is None:
        return ""
    return "vdpbf16ps" if lib.csm_bf16_variant() else "portable C"


def _load():
    if "lib" in _state:
        return _state["lib"]
    _state["lib"] = None
    setting = os.environ.get(ENV_SWITCH, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        _state["reason"] = f"switched off ({ENV_SWITCH}=0)"
    elif not machine_supported():
        _state["reason"] = f"no kernels for {platform.machine()} CPUs"
    else:
        try:
            _state["lib"] = _open(build_library("kernels.c", ["-DCSM_PORTABLE"] if setting == "portable" else []))
        except Exception as exc:  # an optional speed-up must never stop the engine
            _state["reason"] = f"could not build them: {exc}"
    return _state["lib"]


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    ptr, long_, int_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for name in ("csm_bf16_matvec", "csm_bf16_matvec_t"):
        getattr(lib, name).argtypes = [ptr, ptr, ptr, long_, long_, int_]
        getattr(lib, name).restype = None
    _state["threads"] = default_threads()
    return lib


def threads() -> int:
    _load()
    return _state.get("threads", 1)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def matvec(weight: np.ndarray, x: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """weight (rows, k) bfloat16 bits as uint16, x (k,) -> weight @ x, float32 (rows,).
    `lib`: a library from `_open(build_library(...))` instead of the loaded one (tests)."""
    return _product("csm_bf16_matvec", weight, x, 1, lib)


def matvec_t(weight: np.ndarray, h: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """weight (k, cols) bfloat16 bits as uint16, h (k,) -> h @ weight, float32 (cols,)."""
    return _product("csm_bf16_matvec_t", weight, h, 0, lib)


def _product(kernel: str, weight: np.ndarray, vector: np.ndarray, k_axis: int, lib=None) -> np.ndarray:
    lib = lib or _load()
    vector = np.ascontiguousarray(vector, dtype=np.float32)
    assert weight.dtype == np.uint16 and weight.ndim == 2 and weight.flags.c_contiguous
    assert weight.shape[k_axis] == vector.shape[0], (weight.shape, vector.shape)
    out = np.empty(weight.shape[1 - k_axis], np.float32)
    getattr(lib, kernel)(_ptr(weight), _ptr(vector), _ptr(out), weight.shape[0], weight.shape[1], threads())
    return out


def bf16_bits(array) -> np.ndarray:
    """The bits of an evaluated, row-contiguous MLX bfloat16 array as a NumPy uint16 view (no copy).
    Keep `array` alive while the view is used."""
    import mlx.core as mx

    bits = array.view(mx.uint16)
    mx.eval(bits)
    return np.array(bits, copy=False)
