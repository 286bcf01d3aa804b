"""The backbone over T prompt rows of one stream on the CPU: multi-row products around native pieces.

    x = embed_rows(tokens, mask)                       # (T, Db) masked sums of column embeddings
    for each layer: RMSNorm, q/k/v = x @ W^T, RoPE (adjacent pairs, the frame step's tables) with
                    keys/values into the stream's cache, causal GQA attention, o_proj, SwiGLU
    hidden = RMSNorm(last row)

The products go through `product(x, weight)`: engine/cpu/gemm.py's blocked kernels where they exist,
else the frame step's own kernels run over the T rows (each weight row read once for all of them).
Everything between them runs in engine/cpu/prefill.c (frame.c's library), on the backend's threads,
row by row with the frame step's own one-row pieces (rows.h). So a row's result depends only on the
row and the cache positions before it: one call over many rows computes each row exactly as
separate calls over consecutive chunks of them would.
"""

from __future__ import annotations

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


def backbone_prefill(native, product, kv: np.ndarray, offset: int, x: np.ndarray) -> np.ndarray:
    """Rows x (T, Db) at positions offset.. of the cache kv (L, 2, G, cap, hd) -> last hidden (Db,).
    `native`: the backend's NativeModel (its library, threads and RoPE tables)."""
    s = native.packed.backbone
    a = s.args
    T = x.shape[0]
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
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = np.empty_like(x)
    out = np.empty((T, H * hd), np.float32)
    p = _ptr
    for l, L in enumerate(s.layers):
        layer = kv[l]
        lib.csm_prefill_norm(p(x), T, a.dim, p(L.norm1), a.norm_eps, p(h), threads)
        q, k, v = product(h, L.q), product(h, L.k), product(h, L.v)
        lib.csm_prefill_rope_store(p(q), p(k), p(v), T, H, G, hd, p(cos), p(sin), offset, p(layer), cap, threads)
        if lib.csm_prefill_attention(p(q), T, H, G, hd, p(layer), cap, offset, scale, p(out), threads):
            raise MemoryError("prefill: out of memory for attention scores")
        x += product(out, L.o)
        lib.csm_prefill_norm(p(x), T, a.dim, p(L.norm2), a.norm_eps, p(h), threads)
        gate, up = product(h, L.gate), product(h, L.up)
        lib.csm_prefill_swiglu(p(gate), p(up), gate.size, threads)
        x += product(gate, L.down)
    last = np.empty(a.dim, np.float32)
    lib.csm_prefill_norm(p(x[-1]), 1, a.dim, p(s.norm), a.norm_eps, p(last), threads)
    return last


def _ptr(a: np.ndarray) -> int:
    if not a.flags.c_contiguous:
        raise ValueError("prefill: arrays passed to native code must be contiguous")
    return a.ctypes.data
