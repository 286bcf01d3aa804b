"""bfloat16 matrix-vector products for the frame loop on x86-64 CPUs with AVX512-BF16.

Why: on a CPU the frame loop is bound by memory bandwidth (18 GB of float32 weights per frame), and
MLX's CPU backend has no fast product for bfloat16 weights (its bfloat16 matrix-vector product read
2.4 GB/s on the 2-core Xeon we measure on, against 12-13 GB/s for float32 through OpenBLAS). These
kernels read bfloat16 weights at ~13 GB/s there (`vdpbf16ps`, the vector's entries rounded to
bfloat16 as a bfloat16 model's activations are anyway), so a frame reads half the bytes at the same
speed. They are used only with a bfloat16 model on the CPU (engine/llama.py's one-row products and
engine/cpu_depth.py's depth decoder), which is then the CPU's default dtype (engine/device.py).

The C source below is compiled once with the system's C compiler (as MLX's own CPU `mx.compile`
does) into $CSM_HOME/lib and loaded with ctypes. Where that cannot be done (not x86-64, no
AVX512-BF16, no compiler, `CSM_CPU_KERNELS=0`) `available()` is False and `reason()` says why; the
engine then runs float32 on the CPU, as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .blas import cache_dir, cpu_flags, default_threads

ENV_SWITCH = "CSM_CPU_KERNELS"

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t v) { uint32_t b = (uint32_t)v << 16; float f; memcpy(&f, &b, 4); return f; }
/* x rounded to the nearest bfloat16 (ties to even), as vcvtne2ps2bf16 rounds */
static inline float round_bf16(float x) {
    uint32_t b; memcpy(&b, &x, 4); b += 0x7FFFu + ((b >> 16) & 1u); b &= 0xFFFF0000u; memcpy(&x, &b, 4); return x;
}

/* y[r] = W[r, :] . x for W (rows, k) bfloat16, row-major; x float32 (k). */
void csm_bf16_matvec(const uint16_t *W, const float *x, float *y, long rows, long k, int threads) {
    long nb = k / 32;
    __m512bh *xb = (__m512bh *)_mm_malloc((nb > 0 ? nb : 1) * sizeof(__m512bh), 64);
    for (long b = 0; b < nb; b++)
        xb[b] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 32 * b + 16), _mm512_loadu_ps(x + 32 * b));
    /* the tail in bfloat16 too, as the vector part rounds it */
    float xt[32];
    for (long i = 32 * nb; i < k; i++) xt[i - 32 * nb] = round_bf16(x[i]);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        const uint16_t *w = W + r * k;
        __m512 acc = _mm512_setzero_ps();
        for (long b = 0; b < nb; b++)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w + 32 * b), xb[b]);
        float s = _mm512_reduce_add_ps(acc);
        for (long i = 32 * nb; i < k; i++) s += bf16_to_f32(w[i]) * xt[i - 32 * nb];
        y[r] = s;
    }
    _mm_free(xb);
}

/* y[o] = sum_i h[i] * W[i, o] for W (k, cols) bfloat16, row-major (a weight stored input-major). */
void csm_bf16_matvec_t(const uint16_t *W, const float *h, float *y, long k, long cols, int threads) {
    long chunks = (cols + 255) / 256;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long c = 0; c < chunks; c++) {
        long o0 = c * 256, o1 = o0 + 256 < cols ? o0 + 256 : cols;
        float acc[256];
        for (long o = 0; o < o1 - o0; o++) acc[o] = 0.0f;
        for (long i = 0; i < k; i++) {
            const uint16_t *w = W + i * cols;
            float hi = round_bf16(h[i]);
            for (long o = o0; o < o1; o++) acc[o - o0] += hi * bf16_to_f32(w[o]);
        }
        for (long o = o0; o < o1; o++) y[o] = acc[o - o0];
    }
}
"""

_state: dict = {}


def available() -> bool:
    """Whether the kernels are built and loaded (building them on first call)."""
    return _load() is not None


def reason() -> str:
    """Why the kernels are not available ('' when they are)."""
    _load()
    return _state.get("reason", "")


def _load():
    if "lib" in _state:
        return _state["lib"]
    _state["lib"] = None
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        _state["reason"] = f"switched off ({ENV_SWITCH}=0)"
    elif platform.machine() not in ("x86_64", "AMD64"):
        _state["reason"] = f"no kernels for {platform.machine()}"
    elif "avx512_bf16" not in cpu_flags():
        _state["reason"] = "this CPU has no AVX512-BF16"
    else:
        try:
            _state["lib"] = _open(_build())
        except Exception as exc:  # an optional speed-up must never stop the engine
            _state["reason"] = f"could not build them: {exc}"
    return _state["lib"]


def _build() -> Path:
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    target = cache_dir() / f"csm_bf16_kernels_{digest}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        cmd = [compiler, "-O3", "-mavx512f", "-mavx512bf16", "-fopenmp", "-fPIC", "-shared", str(src), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
        os.replace(out, target)  # atomic: a concurrent build leaves one good file
    return target


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


def matvec(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """weight (rows, k) bfloat16 bits as uint16, x (k,) -> weight @ x, float32 (rows,)."""
    return _product("csm_bf16_matvec", weight, x, k_axis=1)


def matvec_t(weight: np.ndarray, h: np.ndarray) -> np.ndarray:
    """weight (k, cols) bfloat16 bits as uint16, h (k,) -> h @ weight, float32 (cols,)."""
    return _product("csm_bf16_matvec_t", weight, h, k_axis=0)


def _product(kernel: str, weight: np.ndarray, vector: np.ndarray, k_axis: int) -> np.ndarray:
    lib = _load()
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
