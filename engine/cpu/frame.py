"""The native frame step (frame.c) from Python: the library, its structs, and a packed model in them.

`NativeModel(packed, threads, variant)` lays a PackedCSM (engine/cpu/pack.py) out as frame.c's
CsmModel struct, pointing at the packed arrays (which it keeps alive), plus the RoPE tables. Its
methods are thin wrappers over the C entry points; engine/cpu/backend.py drives them.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_double, c_float, c_int, c_int32, c_int64, c_uint64, c_void_p

import numpy as np

from .pack import PackedCSM, PackedStack, PackedWeight

FORMAT_CODES = {"bf16": 0, "q8": 1, "q4": 2, "bf16t": 3}
VARIANT_PORTABLE, VARIANT_BEST, VARIANT_AMX = 0, 1, 2  # frame.c's variants
FEATURE_NAMES = {1: "avx512-bf16", 2: "vnni", 4: "avx2", 8: "neon-dotprod", 16: "openmp", 32: "avx-vnni",
                 64: "amx-bf16"}


class CsmWeight(Structure):
    _fields_ = [("fmt", c_int32), ("group", c_int32), ("out", c_int64), ("in_", c_int64),
                ("data", c_void_p), ("scales", c_void_p), ("biases", c_void_p)]


class CsmLayer(Structure):
    _fields_ = [(n, CsmWeight) for n in ("q", "k", "v", "o", "gate", "up", "down")] + [
        ("norm1", c_void_p), ("norm2", c_void_p)]


class CsmStack(Structure):
    _fields_ = [("dim", c_int32), ("n_layers", c_int32), ("n_heads", c_int32), ("n_kv", c_int32),
                ("head_dim", c_int32), ("hidden", c_int32), ("rope_positions", c_int32), ("eps", c_float),
                ("layers", POINTER(CsmLayer)), ("norm", c_void_p), ("rope_cos", c_void_p), ("rope_sin", c_void_p)]


class CsmModel(Structure):
    _fields_ = [("backbone", CsmStack), ("decoder", CsmStack), ("projection", CsmWeight), ("head0", CsmWeight),
                ("embed", CsmWeight), ("audio_head", POINTER(CsmWeight)), ("K", c_int32), ("V", c_int32),
                ("variant", c_int32), ("threads", c_int32)]


class CsmDraw(Structure):
    _fields_ = [("temperature", c_float), ("top_k", c_int32), ("suppress", c_int32), ("frame", c_int32),
                ("seed", c_uint64)]


_LIB: dict = {}


def library(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """frame.c built for this machine (once per machine and flags, cached) and loaded; raises
    BuildError with the reason. `extra_flags` (tests): e.g. ("-march=x86-64-v3",) for an AVX2 build."""
    key = tuple(extra_flags)
    if isinstance(_LIB.get(key), Exception):  # a failed build is not retried in this process
        raise _LIB[key]
    if key not in _LIB:
        from .build import load_library

        try:
            lib = load_library("frame.c", list(key), sources=("prefill.c",))
        except Exception as exc:
            _LIB[key] = exc
            raise
        P = c_void_p
        signatures = {
            "csm_backbone_step": [P, c_int, P, P, P, P, P],
            "csm_depth": [P, c_int, P, P, P, P, P],
            "csm_step": [P, c_int, P, P, P, P, P, P, P],
            "csm_product": [P, P, P, c_int, P],
            "csm_draw": [P, c_int32, P, c_int32],
            "csm_uniform": [c_uint64, c_int64, c_int64],
            "csm_features": [],
            # prefill.c: the prefill's pieces between its products (engine/cpu/prefill.py)
            "csm_prefill_norm": [P, c_int64, c_int64, P, c_float, P, c_int],
            "csm_prefill_rope_store": [P, P, P, c_int64, c_int, c_int, c_int, P, P, c_int64, P, c_int64, c_int],
            "csm_prefill_attention": [P, c_int64, c_int, c_int, c_int, P, c_int64, c_int64, c_float, P, c_int],
            "csm_prefill_swiglu": [P, P, c_int64, c_int],
        }
        for name, args in signatures.items():
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = None
        lib.csm_draw.restype = c_int32
        lib.csm_uniform.restype = c_double
        lib.csm_features.restype = c_int
        lib.csm_prefill_attention.restype = c_int
        _LIB[key] = lib
    return _LIB[key]


def unavailable_reason() -> str | None:
    """Why frame.c cannot be built or loaded here (unsupported CPU, no compiler, a compiler error),
    or None when it can (it is then built, once per machine)."""
    from .build import BuildError, machine_supported

    if not machine_supported():
        import platform

        return f"no native kernels for {platform.machine()} CPUs"
    try:
        library()
    except (BuildError, OSError) as exc:
        return f"the native library did not build: {exc}"
    return None


def features() -> list[str]:
    """The instruction sets frame.c was built with here, e.g. ['avx512-bf16', 'vnni', 'avx2', 'openmp']."""
    bits = library().csm_features()
    return [name for bit, name in FEATURE_NAMES.items() if bits & bit]


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _rope_tables(inv_freq: np.ndarray, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * f_i: (positions, head_dim/2) float32 (shared by prefill and step)."""
    angle = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


class NativeModel:
    """A PackedCSM as frame.c's CsmModel."""

    def __init__(self, packed: PackedCSM, threads: int, variant: int = VARIANT_BEST,
                 max_positions: int | None = None, lib: ctypes.CDLL | None = None):
        self.lib = lib or library()
        # a library given by the caller (tests: another build) is not the one best_variant() checked
        self.variant = VARIANT_BEST if (variant == VARIANT_AMX and lib is not None) else _usable(variant)
        self.packed = packed
        cfg = packed.config
        self.K, self.V = cfg.audio_num_codebooks, cfg.audio_vocab_size
        self.Db, self.Dd = cfg.backbone.dim, cfg.decoder.dim
        self.max_positions = max_positions or cfg.max_seq_len
        self._keep = []
        self.rope = {}  # name -> (cos, sin) tables (positions, head_dim/2)
        backbone = self._stack("backbone", packed.backbone, self.max_positions)
        decoder = self._stack("decoder", packed.decoder, self.K)
        heads = (CsmWeight * len(packed.audio_head))(*[self._weight(w) for w in packed.audio_head])
        self._keep.append(heads)
        self.struct = CsmModel(backbone, decoder, self._weight(packed.projection), self._weight(packed.codebook0_head),
                               self._weight(packed.audio_embeddings), heads, self.K, self.V, variant, threads)
        self.ref = ctypes.byref(self.struct)

    def _weight(self, w: PackedWeight) -> CsmWeight:
        for a in (w.data, w.scales, w.biases):
            if a is not None and not a.flags.c_contiguous:
                raise ValueError("packed weights must be C-contiguous")
        return CsmWeight(FORMAT_CODES[w.fmt], w.group, w.out, w.in_, _ptr(w.data), _ptr(w.scales), _ptr(w.biases))

    def _stack(self, name: str, s: PackedStack, positions: int) -> CsmStack:
        a = s.args
        cos, sin = self.rope[name] = _rope_tables(s.inv_freq, positions)
        layers = (CsmLayer * len(s.layers))()
        for i, L in enumerate(s.layers):
            layers[i] = CsmLayer(*(self._weight(getattr(L, n)) for n in ("q", "k", "v", "o", "gate", "up", "down")),
                                 _ptr(L.norm1), _ptr(L.norm2))
        self._keep += [layers, cos, sin]
        return CsmStack(a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_dim, positions,
                        a.norm_eps, layers, _ptr(s.norm), _ptr(cos), _ptr(sin))

    def set_variant(self, variant: int) -> None:
        """Switch kernels (between frames; engine/cpu/backend.py's batch_kernels)."""
        self.variant = self.struct.variant = _usable(variant)

    # ---- calls ---------------------------------------------------------------------------------
    @staticmethod
    def _caches(kvs: list[np.ndarray]):
        ptrs = (c_void_p * len(kvs))(*[kv.ctypes.data for kv in kvs])
        caps = np.array([kv.shape[3] for kv in kvs], dtype=np.int64)
        return ptrs, caps

    def backbone_step(self, codes: np.ndarray, kvs: list[np.ndarray], positions: np.ndarray) -> np.ndarray:
        """codes (B, K) int32 fed back at positions (B,) of the caches -> hidden (B, Db) float32."""
        B = len(kvs)
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        positions = np.ascontiguousarray(positions, dtype=np.int32)
        ptrs, caps = self._caches(kvs)
        hidden = np.empty((B, self.Db), np.float32)
        self.lib.csm_backbone_step(self.ref, B, _ptr(codes), ptrs, _ptr(caps), _ptr(positions), _ptr(hidden))
        return hidden

    def depth(self, hidden: np.ndarray, draws=None, forced: np.ndarray | None = None, logits: bool = False):
        """One frame from hidden (B, Db): codes (B, K) int32, and logits (B, K, V) when asked."""
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        B = hidden.shape[0]
        draws_c = draw_structs(draws, B)
        forced = None if forced is None else np.ascontiguousarray(forced, dtype=np.int32)
        codes = np.empty((B, self.K), np.int32)
        out = np.empty((B, self.K, self.V), np.float32) if logits else None
        self.lib.csm_depth(self.ref, B, _ptr(hidden), draws_c, _ptr(forced), _ptr(codes), _ptr(out))
        return (codes, out) if logits else codes

    def step(self, codes: np.ndarray, kvs: list[np.ndarray], positions: np.ndarray, draws) -> np.ndarray:
        """Feed codes (B, K) at positions (B,), then draw the next frame: codes (B, K) int32."""
        B = len(kvs)
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        positions = np.ascontiguousarray(positions, dtype=np.int32)
        ptrs, caps = self._caches(kvs)
        out = np.empty((B, self.K), np.int32)
        hidden = np.empty((B, self.Db), np.float32)
        self.lib.csm_step(self.ref, B, _ptr(codes), ptrs, _ptr(caps), _ptr(positions), draw_structs(draws, B),
                          _ptr(out), _ptr(hidden))
        return out

    def product(self, x: np.ndarray, w: PackedWeight, out: np.ndarray | None = None) -> np.ndarray:
        """x (T, in) @ W^T through the frame kernels: (T, out) float32 (into `out` when given: a
        contiguous float32 array of that shape)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty((x.shape[0], w.out), np.float32) if out is None else out
        if y.dtype != np.float32 or y.shape != (x.shape[0], w.out) or not y.flags.c_contiguous:
            raise ValueError(f"product: out must be a contiguous float32 {(x.shape[0], w.out)} array")
        cw = self._weight(w)
        self.lib.csm_product(self.ref, ctypes.byref(cw), _ptr(x), x.shape[0], _ptr(y))
        return y


def draw_structs(draws, B: int):
    """(CsmDraw * B) from Draw objects (None: greedy)."""
    arr = (CsmDraw * B)()
    for i in range(B):
        d = draws[i] if draws is not None else None
        if d is None:
            arr[i] = CsmDraw(0.0, 0, 1, 0, 0)
        else:
            arr[i] = CsmDraw(float(d.temperature), int(d.top_k), int(bool(d.suppress_undecodable)), int(d.frame),
                             int(d.seed) & 0xFFFFFFFFFFFFFFFF)
    return arr


def best_variant() -> int:
    """VARIANT_AMX where frame.c was built with AMX and this process may use tile data (the kernel's
    permission is asked once, by engine/cpu/gemm.c), else VARIANT_BEST. The backend switches to it
    when the generator starts batching (CpuBackend.batch_kernels); while it holds, a stream's bf16
    products run on the same kernel whatever the batch, so its bits never depend on what shares it."""
    if "amx-bf16" not in features():
        return VARIANT_BEST
    from . import gemm

    try:
        return VARIANT_AMX if gemm.available() and gemm.supported("amx-bf16") else VARIANT_BEST
    except Exception:  # gemm.c did not build: no permission asked, no tiles
        return VARIANT_BEST


def _usable(variant: int) -> int:
    """`variant`, or VARIANT_BEST for AMX where this process may not use tiles (a tile instruction
    without the kernel's permission kills the process)."""
    return VARIANT_BEST if variant == VARIANT_AMX and best_variant() != VARIANT_AMX else variant
