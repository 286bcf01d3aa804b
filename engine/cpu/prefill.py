"""The backbone over T prompt rows of one stream on the CPU: multi-row products around native pieces.

    x = embed_rows(tokens, mask)                       # (T, Db) masked sums of column embeddings
    for each layer: RMSNorm, q/k/v = x @ W^T, RoPE (adjacent pairs, the frame step's tables) with
                    keys/values into the stream's cache, causal GQA attention, o_proj, SwiGLU
    hidden = RMSNorm(last row)

The products go through `product(x, weight, out)`: engine/cpu/gemm.py's blocked kernels where they
exist, else the frame step's own kernels run over the T rows (each weight row read once for all of
them).
Everything between them runs in engine/cpu/prefill.c (frame.c's library), on the backend's threads,
row by row with the frame step's own one-row pieces (rows.h). So a row's result depends only on the
row and the cache positions before it: one call over many rows computes each row exactly as
separate calls over consecutive chunks of them would.

The activations between the products and the products' own buffers (X laid out for the kernel,
each thread's strip and partial sums) live in a Workspace made once per backend for passes of up to
`rows` rows, its pages written at load. Fresh memory is not free: the first touch of each 4 KB page
faults, and a prefill of 100 rows would otherwise allocate ~10 MB a layer (a first prefill measured
512 ms against 322 ms once its memory had been touched, on a 2-core EPYC VM).
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import ContextTooLongError
from .pack import PackedCSM


def embed_rows(packed: PackedCSM, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """tokens/mask (T, K+1) -> (T, Db): the masked sum of each row's column embeddings, added up
    codebook by codebook (one (T, Db) gather at a time, not a (T, K, Db) one)."""
    K, V = packed.config.audio_num_codebooks, packed.config.audio_vocab_size
    tokens = np.where(mask, tokens, 0).astype(np.int64)
    weights = mask.astype(np.float32)
    audio = packed.audio_embeddings.rows(tokens[:, 0])
    audio *= weights[:, :1]
    for k in range(1, K):
        column = packed.audio_embeddings.rows(tokens[:, k] + k * V)
        column *= weights[:, k:k + 1]
        audio += column
    text = packed.text_embeddings.rows(tokens[:, K])
    text *= weights[:, K:]
    audio += text
    return audio


class Workspace:
    """Buffers for backbone_prefill over up to `rows` rows: x, h, y (rows, dim); q and the attention's
    output (rows, H*hd); k, v (rows, G*hd); gate, up (rows, hidden); and `scratch`, bytes for the
    products (`scratch_bytes`, 0 for none). All written once here, so their pages exist before the
    first prefill. One caller at a time: take() hands them out, or None while another call holds them
    (that call then allocates its own)."""

    def __init__(self, packed: PackedCSM, rows: int, scratch_bytes: int = 0):
        self.rows = int(rows)
        self.arrays = {name: np.zeros((self.rows, width), np.float32) for name, width in _widths(packed).items()}
        # 64-byte aligned bytes for the kernels, carved out of a slightly larger block
        block = np.zeros(int(scratch_bytes) + 64, np.uint8)
        start = -block.ctypes.data % 64
        self.scratch = block[start:start + int(scratch_bytes)] if scratch_bytes else None
        for a in (*self.arrays.values(), block):
            a.fill(0)  # np.zeros maps pages lazily: write them now
        self._lock = threading.Lock()

    def take(self, T: int) -> dict | None:
        """The buffers' first T rows (and "scratch"), or None when T > rows or another call holds
        them; release() after use."""
        if T > self.rows or not self._lock.acquire(blocking=False):
            return None
        return {**{name: a[:T] for name, a in self.arrays.items()}, "scratch": self.scratch}

    def release(self) -> None:
        self._lock.release()


def _widths(packed: PackedCSM) -> dict:
    """The prefill's buffers and their widths (all layers have the first one's shapes)."""
    L = packed.backbone.layers[0]
    return {"x": L.o.out, "h": L.q.in_, "y": L.o.out, "q": L.q.out, "att": L.o.in_, "k": L.k.out,
            "v": L.v.out, "gate": L.gate.out, "up": L.up.out}


def _fresh(native, T: int) -> dict:
    """Buffers for one call when no Workspace serves it."""
    return {**{name: np.empty((T, w), np.float32) for name, w in _widths(native.packed).items()}, "scratch": None}


def backbone_prefill(native, product, kv: np.ndarray, offset: int, x: np.ndarray,
                     workspace: Workspace | None = None) -> np.ndarray:
    """Rows x (T, Db) at positions offset.. of the cache kv (L, 2, G, cap, hd) -> last hidden (Db,).
    `native`: the backend's NativeModel (its library, threads and RoPE tables); `product(x, w, out,
    scratch)`: a multi-row product into `out`; `workspace`: buffers to use when free (else this call
    allocates its own)."""
    buffers = workspace.take(x.shape[0]) if workspace is not None else None
    try:
        return _layers(native, product, kv, offset, x, buffers or _fresh(native, x.shape[0]))
    finally:
        if buffers is not None:
            workspace.release()


def _layers(native, product, kv: np.ndarray, offset: int, x_in: np.ndarray, b: dict) -> np.ndarray:
    s = native.packed.backbone
    a = s.args
    T = x_in.shape[0]
    end = offset + T
    cap = kv.shape[3]
    if end > cap:
        raise ContextTooLongError(
            f"the KV cache holds {cap} positions; {offset} are used and {T} more were given. "
            "Shorten the context or the text, or ask for less audio.")
    if not kv.flags.c_contiguous or kv.dtype != np.float32:
        raise ValueError("backbone_prefill: the cache must be a contiguous float32 array")
    lib, threads = native.lib, native.struct.threads
    H, G, hd = a.n_heads, a.n_kv_heads, a.head_dim
    cos, sin = native.rope["backbone"]
    scale = hd ** -0.5
    x, h, y, q, k, v, out, gate, up, scratch = (b[n] for n in ("x", "h", "y", "q", "k", "v", "att", "gate", "up",
                                                                "scratch"))
    x[...] = x_in
    p = _ptr
    for l, L in enumerate(s.layers):
        layer = kv[l]
        lib.csm_prefill_norm(p(x), T, a.dim, p(L.norm1), a.norm_eps, p(h), threads)
        for w, dst in ((L.q, q), (L.k, k), (L.v, v)):
            product(h, w, dst, scratch)
        lib.csm_prefill_rope_store(p(q), p(k), p(v), T, H, G, hd, p(cos), p(sin), offset, p(layer), cap, threads)
        if lib.csm_prefill_attention(p(q), T, H, G, hd, p(layer), cap, offset, scale, p(out), threads):
            raise MemoryError("prefill: out of memory for attention scores")
        x += product(out, L.o, y, scratch)
        lib.csm_prefill_norm(p(x), T, a.dim, p(L.norm2), a.norm_eps, p(h), threads)
        product(h, L.gate, gate, scratch)
        product(h, L.up, up, scratch)
        lib.csm_prefill_swiglu(p(gate), p(up), gate.size, threads)
        x += product(gate, L.down, y, scratch)
    last = np.empty(a.dim, np.float32)
    lib.csm_prefill_norm(p(x[-1]), 1, a.dim, p(s.norm), a.norm_eps, p(last), threads)
    return last


def _ptr(a: np.ndarray) -> int:
    if not a.flags.c_contiguous:
        raise ValueError("prefill: arrays passed to native code must be contiguous")
    return a.ctypes.data
