"""Multi-row products for prompt prefill: `gemm(x, w)` = x @ W^T over packed bfloat16, int8 or int4
weights (engine/cpu/pack.py's PackedWeight), in native code (engine/cpu/gemm.c).

Why: prefill runs the backbone over 64-row blocks, 2 GFLOP per row at full size. A matrix-vector
kernel would read every weight once per row; a matrix-matrix product reads each weight once per
block and keeps it in cache while all the rows go over it, so prefill becomes compute-bound and the
CPU's matrix units decide the speed. Four variants, picked at run time from the CPU's features:

  amx-bf16     Intel AMX tiles (`tdpbf16ps`), Sapphire Rapids and later;
  avx512-bf16  `vdpbf16ps` dot products (Cooper Lake, AMD Zen 4 and later);
  avx512-vnni  for int8/int4 weights: x quantized to int8 per row and group, `vpdpbusd` over the
               codes as they are (no dequantizing), the scales and biases applied per group;
               bfloat16 weights go to avx512-bf16 (AVX512-VNNI and -BF16: Zen 4 and later);
  portable     plain C that the compiler vectorises, on any CPU.

The bfloat16 ones compute the same products: x rounded to bfloat16 (as a bfloat16 model's
activations are), each weight rounded to bfloat16 after dequantization (w = scale * q + bias in
float32), sums in float32; avx512-vnni differs from them by x's quantization (half a step per
input at most) and rounds no weight. For them int8/int4 weights are dequantized 32 output rows at
a time into a buffer that stays in L2, never into a float copy of the whole matrix. A row's result depends only on that row, never on
how many rows share the call.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from .build import BuildError, load_library

VARIANTS = ("portable", "avx512-bf16", "amx-bf16", "avx512-vnni")  # index = the C code's variant number
SOURCE = Path(__file__).with_name("gemm.c")

_state: dict = {}


class GemmUnavailable(RuntimeError):
    """The native library could not be built or loaded here (reason in the message)."""


def library() -> ctypes.CDLL:
    """The compiled gemm.c (built once for this machine), or GemmUnavailable saying why not."""
    if "lib" not in _state:
        try:
            _state["lib"] = _declare(load_library(SOURCE.name))
        except (BuildError, OSError) as exc:  # no compiler, a failed build: callers fall back
            _state["lib"] = None
            _state["reason"] = str(exc)
    if _state["lib"] is None:
        raise GemmUnavailable(f"the prefill kernels are not available: {_state['reason']}")
    return _state["lib"]


def available() -> bool:
    try:
        library()
        return True
    except GemmUnavailable:
        return False


def reason() -> str:
    """Why the library is unavailable ('' when it is available)."""
    return "" if available() else _state.get("reason", "")


def supported(variant: str) -> bool:
    """Whether `variant` (one of VARIANTS) runs on this CPU."""
    return bool(library().csm_gemm_supported(_index(variant)))


def best_variant(fmt: str = "bf16") -> str:
    """The fastest variant this CPU runs for weights of format `fmt` ("bf16", "q8" or "q4")."""
    return VARIANTS[_best_index(library(), fmt)]


def _best_index(lib: ctypes.CDLL, fmt: str) -> int:
    return lib.csm_gemm_best() if fmt == "bf16" else lib.csm_gemm_best_q()


def gemm(x: np.ndarray, w: Any, variant: str | None = None, threads: int | None = None, *,
         out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """x (T, in) float32 @ W^T -> (T, out) float32, for a PackedWeight `w` (fmt "bf16", "q8" or "q4").

    `variant`: one of VARIANTS (default: best_variant()); `threads`: OpenMP threads, which split the
    output rows of W between them (default: engine.cpu.blas.default_threads(), read once). A caller
    that chose its thread count at load passes it here. `out`: a contiguous float32 (T, out) array
    to write into; `scratch`: a 64-byte aligned uint8 buffer of at least scratch_bytes() for the
    kernel's buffers, which it otherwise allocates per call (fresh pages cost time: see
    engine/cpu/prefill.py's Workspace)."""
    lib = library()
    if threads is None:
        threads = _default_threads()
    v = _best_index(lib, w.fmt) if variant is None else _index(variant)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != w.in_:
        raise ValueError(f"gemm: x must be (T, {w.in_}), got {x.shape}")
    T = x.shape[0]
    if out is None:
        y = np.empty((T, w.out), np.float32)
    else:
        _check(out, np.float32, (T, w.out))
        y = out
    sp, sn = (0, 0) if scratch is None else (_ptr(scratch), int(scratch.nbytes))
    data = w.data
    if not data.flags.c_contiguous:
        raise ValueError("gemm: packed weights must be C-contiguous")
    if w.fmt == "bf16":
        _check(data, np.uint16, (w.out, w.in_))
        rc = lib.csm_gemm_bf16_variant(v, _ptr(x), T, w.in_, _ptr(data), w.out, _ptr(y), int(threads), sp, sn)
    elif w.fmt in ("q8", "q4"):
        bits = 8 if w.fmt == "q8" else 4
        _check(data, np.uint8, (w.out, w.in_ * bits // 8))
        groups = (w.out, w.in_ // w.group)
        scales = np.ascontiguousarray(w.scales, dtype=np.float32)
        biases = np.ascontiguousarray(w.biases, dtype=np.float32)
        _check(scales, np.float32, groups)
        _check(biases, np.float32, groups)
        rc = lib.csm_gemm_q_variant(v, _ptr(x), T, w.in_, _ptr(data), _ptr(scales), _ptr(biases), w.out,
                                    int(w.group), bits, _ptr(y), int(threads), sp, sn)
    else:
        raise ValueError(f"gemm: unknown weight format {w.fmt!r} (expected 'bf16', 'q8' or 'q4')")
    if rc == -1:
        raise GemmUnavailable(f"the {VARIANTS[v]} kernel does not run on this CPU")
    if rc == -2:
        raise MemoryError("gemm: out of memory for its buffers")
    if rc == -3:
        raise ValueError(f"gemm: group {w.group} / in {w.in_} not supported (group a multiple of 32 dividing in)")
    return y


def scratch_bytes(rows: int, w: Any, variant: str | None = None, threads: int | None = None) -> int:
    """Bytes of scratch gemm() needs for `rows` rows of x over PackedWeight `w` (see gemm())."""
    lib = library()
    v = _best_index(lib, w.fmt) if variant is None else _index(variant)
    bits = {"bf16": 16, "q8": 8, "q4": 4}.get(w.fmt)
    if bits is None:
        raise ValueError(f"gemm: unknown weight format {w.fmt!r} (expected 'bf16', 'q8' or 'q4')")
    n = lib.csm_gemm_scratch_bytes(v, int(rows), int(w.in_), int(getattr(w, "group", 0) or 1), bits,
                                   int(threads or _default_threads()))
    return max(int(n), 0)


def _default_threads() -> int:
    if "threads" not in _state:
        from .blas import default_threads

        _state["threads"] = default_threads()
    return _state["threads"]


def _index(variant: str) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"unknown gemm variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS.index(variant)


def _check(a: np.ndarray, dtype, shape: tuple) -> None:
    if a.dtype != dtype or a.shape != tuple(shape) or not a.flags.c_contiguous:
        raise ValueError(f"gemm: expected a contiguous {np.dtype(dtype).name} array {tuple(shape)}, "
                         f"got {a.dtype} {a.shape}")


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.csm_gemm_supported.argtypes, lib.csm_gemm_supported.restype = [i], i
    lib.csm_gemm_best.argtypes, lib.csm_gemm_best.restype = [], i
    lib.csm_gemm_best_q.argtypes, lib.csm_gemm_best_q.restype = [], i
    lib.csm_gemm_scratch_bytes.argtypes, lib.csm_gemm_scratch_bytes.restype = [i, n, n, i, i, i], n
    lib.csm_gemm_bf16_variant.argtypes = [i, p, n, n, p, n, p, i, p, n]
    lib.csm_gemm_bf16_variant.restype = i
    lib.csm_gemm_q_variant.argtypes = [i, p, n, n, p, p, p, n, i, i, p, i, p, n]
    lib.csm_gemm_q_variant.restype = i
    return lib
