"""The backbone over T prompt rows of one stream on the CPU, in NumPy around multi-row products.

    x = embed_rows(tokens, mask)                       # (T, Db) masked sums of column embeddings
    for each layer: RMSNorm, q/k/v = x @ W^T, RoPE (adjacent pairs, the frame step's tables),
                    keys/values into the stream's cache, causal GQA attention, o_proj, SwiGLU
    hidden = RMSNorm(last row)

The products go through `product(x, weight)`: engine/cpu/gemm.py's blocked kernels where they exist,
else the frame step's own kernels run over the T rows (each weight row read once for all of them).
"""

from __future__ import annotations

import numpy as np

from ..blocks import aligned_bounds
from ..errors import ContextTooLongError
from .pack import PackedCSM


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32) * weight).astype(np.float32, copy=False)


def rope(x: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs of x (T, heads, head_dim) by turns = cos + i sin (T, head_dim/2),
    complex64: each pair (even, odd) read as even + i odd and multiplied, one pass (5x the speed of
    the four strided products it replaces)."""
    return (x.view(np.complex64) * turns[:, None, :]).view(np.float32)


def silu_times(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate / (1 + exp(-gate)) * up (float32), in place in a buffer of its own: no temporaries."""
    out = np.negative(gate)
    np.exp(out, out=out)
    out += 1.0
    np.divide(gate, out, out=out)
    out *= up
    return out


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


def backbone_prefill(packed: PackedCSM, product, rope_tables, kv: np.ndarray, offset: int,
                     x: np.ndarray, block: int | None = None) -> np.ndarray:
    """Rows x (T, Db) at positions offset.. of the cache kv (L, 2, G, cap, hd) -> last hidden (Db,).

    With `block`, the rows are computed exactly as consecutive calls over the aligned chunks
    [offset, next multiple of block), ... would compute them: every product, norm and activation
    is row by row anyway (gemm's rows do not depend on the block), and attention runs chunk by chunk,
    each chunk over the positions up to its own end, the shapes those calls would use. So one pass
    reads each weight once for all the chunks instead of once per chunk."""
    s = packed.backbone
    a = s.args
    T = x.shape[0]
    end = offset + T
    if end > kv.shape[3]:
        raise ContextTooLongError(
            f"the KV cache holds {kv.shape[3]} positions; {offset} are used and {T} more were given. "
            "Shorten the context or the text, or ask for less audio.")
    H, G, hd = a.n_heads, a.n_kv_heads, a.head_dim
    cos, sin = rope_tables
    turns = (cos[offset:end] + 1j * sin[offset:end]).astype(np.complex64)
    cuts = aligned_bounds(offset, end, block) if block else [offset, end]
    chunks = [(c0 - offset, c1 - offset, np.arange(c1)[None, :] > np.arange(c0, c1)[:, None])
              for c0, c1 in zip(cuts, cuts[1:])]  # (rows, masked: (rows, c1) future positions)
    scale = np.float32(hd ** -0.5)
    for l, L in enumerate(s.layers):
        h = rms_norm(x, L.norm1, a.norm_eps)
        q = rope(product(h, L.q).reshape(T, H, hd), turns)
        k = rope(product(h, L.k).reshape(T, G, hd), turns)
        v = product(h, L.v).reshape(T, G, hd)
        kv[l, 0, :, offset:end] = k.transpose(1, 0, 2)
        kv[l, 1, :, offset:end] = v.transpose(1, 0, 2)
        out = np.concatenate([attention(q[r0:r1], kv[l], offset + r1, masked, scale) for r0, r1, masked in chunks])
        x = x + product(out, L.o)
        h = rms_norm(x, L.norm2, a.norm_eps)
        gate, up = product(h, L.gate), product(h, L.up)
        x = x + product(silu_times(gate, up), L.down)
    return rms_norm(x[-1], s.norm, a.norm_eps)


def attention(q: np.ndarray, kv: np.ndarray, end: int, masked: np.ndarray, scale) -> np.ndarray:
    """Causal GQA attention of rows q (T, H, hd) over the cache's positions :end (kv: (2, G, cap, hd));
    masked (T, end) marks each row's future positions. -> (T, H * hd)."""
    T, H, hd = q.shape
    G = kv.shape[1]
    keys, values = kv[0, :, :end], kv[1, :, :end]  # (G, end, hd)
    qg = q.reshape(T, G, H // G, hd).transpose(1, 2, 0, 3)  # (G, r, T, hd)
    scores = np.matmul(qg, keys[:, None].transpose(0, 1, 3, 2))  # (G, r, T, end)
    scores *= scale  # (in place from here on: the same operations, without temporaries)
    np.copyto(scores, -np.inf, where=masked)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, values[:, None])  # (G, r, T, hd)
    return out.transpose(2, 0, 1, 3).reshape(T, H * hd)
