"""bfloat16 matrix-vector products for the frame loop on the CPU (x86-64 and 64-bit ARM).

Why: on a CPU the frame loop is bound by memory bandwidth (18 GB of float32 weights per frame), and
MLX's CPU backend has no fast product for bfloat16 weights (its bfloat16 matrix-vector product read
2.4 GB/s on the 2-core Xeon we measure on, against 12-13 GB/s for float32 through OpenBLAS). These
kernels read bfloat16 weights at ~13 GB/s there with 2 threads: `vdpbf16ps` on CPUs with
AVX512-BF16, elsewhere a portable C loop that widens each weight to float32 (13.6 GB/s on the same
machine, built without AVX512-BF16). The vector's entries are rounded to bfloat16 first, as a
bfloat16 model's activations are anyway, so both variants compute the same products. A frame then
reads half the bytes at the same speed. They are used only with a bfloat16 model on the CPU
(engine/llama.py's one-row products and engine/cpu_depth.py's depth decoder), which is then the
CPU's default dtype (engine/device.py).

The C source below is compiled once with the system's C compiler for this machine (`-march=native`,
as MLX's own CPU `mx.compile` compiles C++ at run time) into $CSM_HOME/lib and loaded with ctypes;
OpenMP threads it where the compiler has OpenMP. Where that cannot be done (no compiler, a CPU other
than x86-64 or ARM64, `CSM_CPU_KERNELS=0`) `available()` is False and `reason()` says why; the engine
then runs float32 on the CPU, as before. `CSM_CPU_KERNELS=portable` builds the portable loop even
where AVX512-BF16 exists.
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

from .blas import cache_dir, default_threads

ENV_SWITCH = "CSM_CPU_KERNELS"

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__) && !defined(CSM_PORTABLE)
#include <immintrin.h>
#define CSM_VDPBF16PS 1
#endif

static inline float bf16_to_f32(uint16_t v) { uint32_t b = (uint32_t)v << 16; float f; memcpy(&f, &b, 4); return f; }
/* x rounded to the nearest bfloat16 (ties to even), as vcvtne2ps2bf16 rounds */
static inline float round_bf16(float x) {
    uint32_t b; memcpy(&b, &x, 4); b += 0x7FFFu + ((b >> 16) & 1u); b &= 0xFFFF0000u; memcpy(&x, &b, 4); return x;
}

int csm_bf16_variant(void) {
#ifdef CSM_VDPBF16PS
    return 1;
#else
    return 0;
#endif
}

/* y[r] = W[r, :] . x for W (rows, k) bfloat16, row-major; x float32 (k), rounded to bfloat16. */
void csm_bf16_matvec(const uint16_t *W, const float *x, float *y, long rows, long k, int threads) {
    float *xr = (float *)malloc((k > 0 ? k : 1) * sizeof(float));
    for (long i = 0; i < k; i++) xr[i] = round_bf16(x[i]);
#ifdef CSM_VDPBF16PS
    long nb = k / 32;
    __m512bh *xb = (__m512bh *)_mm_malloc((nb > 0 ? nb : 1) * sizeof(__m512bh), 64);
    for (long b = 0; b < nb; b++)
        xb[b] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + 32 * b + 16), _mm512_loadu_ps(xr + 32 * b));
    #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        const uint16_t *w = W + r * k;
        __m512 acc = _mm512_setzero_ps();
        for (long b = 0; b < nb; b++)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w + 32 * b), xb[b]);
        float s = _mm512_reduce_add_ps(acc);
        for (long i = 32 * nb; i < k; i++) s += bf16_to_f32(w[i]) * xr[i];
        y[r] = s;
    }
    _mm_free(xb);
#else
    #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (long r = 0; r < rows; r++) {
        const uint16_t *w = W + r * k;
        float acc[16] = {0};
        long i = 0;
        for (; i + 16 <= k; i += 16)
            for (int j = 0; j < 16; j++) acc[j] += bf16_to_f32(w[i + j]) * xr[i + j];
        float s = 0.0f;
        for (int j = 0; j < 16; j++) s += acc[j];
        for (; i < k; i++) s += bf16_to_f32(w[i]) * xr[i];
        y[r] = s;
    }
#endif
    free(xr);
}

/* y[o] = sum_i h[i] * W[i, o] for W (k, cols) bfloat16, row-major (a weight stored input-major). */
void csm_bf16_matvec_t(const uint16_t *W, const float *h, float *y, long k, long cols, int threads) {
    long chunks = (cols + 255) / 256;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
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

_MACHINES = {"x86_64": "-march=native", "AMD64": "-march=native", "aarch64": "-mcpu=native", "arm64": "-mcpu=native"}
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
    elif platform.machine() not in _MACHINES:
        _state["reason"] = f"no kernels for {platform.machine()} CPUs"
    else:
        try:
            _state["lib"] = _open(_build(portable=setting == "portable"))
        except Exception as exc:  # an optional speed-up must never stop the engine
            _state["reason"] = f"could not build them: {exc}"
    return _state["lib"]


def _build(portable: bool = False) -> Path:
    """Compile SOURCE for this machine into the cache (once per source and flags) -> the library."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    flags = ["-O3", _MACHINES.get(platform.machine(), "-O3"), "-fPIC", "-shared"]
    if portable:
        flags.append("-DCSM_PORTABLE")
    digest = hashlib.sha256((SOURCE + " ".join(flags) + compiler).encode()).hexdigest()[:16]
    target = cache_dir() / f"csm_bf16_kernels_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        errors = []
        for openmp in (["-fopenmp"], []):  # without OpenMP (e.g. Apple clang) the loops run on one thread
            cmd = [compiler, *flags, *openmp, str(src), "-o", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                break
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-300:]}")
        else:
            raise RuntimeError("; ".join(errors))
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


def matvec(weight: np.ndarray, x: np.ndarray, lib: ctypes.CDLL | None = None) -> np.ndarray:
    """weight (rows, k) bfloat16 bits as uint16, x (k,) -> weight @ x, float32 (rows,).
    `lib`: a library from `_open(_build(...))` instead of the loaded one (tests)."""
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
