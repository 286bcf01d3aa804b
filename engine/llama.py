"""Llama-3 transformer blocks: RMSNorm, grouped-query attention with scaled RoPE, SwiGLU MLP.

CSM uses two of these stacks: the backbone (Llama-3.2-1B shape) and the depth decoder (a small
Llama). Neither has token embeddings or an output head of its own; `Llama` maps input embeddings
(B, T, dim) to hidden states after the final norm.

Parameter names follow mlx-lm (`self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, ...), so the
MLX-community checkpoints map onto these modules one to one.

RoPE rotates *adjacent pairs* (x[2i], x[2i+1]) — the "traditional"/interleaved convention of the
original Sesame weights. Checkpoints written for rotate-half RoPE (transformers) have their q/k rows
permuted back at load time (see engine/checkpoints/layouts.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .kv_cache import KVCache


@dataclass
class LlamaArgs:
    """Hyperparameters of one Llama stack."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int  # SwiGLU inner width
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    # Llama-3 scaling: {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}
    # or None for plain RoPE.
    rope_scaling: dict | None = field(default=None)
    max_seq_len: int = 2048


def llama3_inv_freqs(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """Inverse frequencies f_i (one per rotated pair), Llama-3 scaled when `scaling` is given.

    f_i = theta^(-2i/d). With wavelength L = 2*pi/f and old = original_max_position_embeddings:
      L < old/high  -> f            (high frequencies are kept)
      L > old/low   -> f / factor   (low frequencies are stretched)
      otherwise     -> (1-s) f/factor + s f,   s = (old/L - low) / (high - low)
    """
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (head_dim/2,)
    if not scaling:
        return inv
    factor = float(scaling["factor"])
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    return np.where(wavelen < old / high, inv, np.where(wavelen > old / low, inv / factor, blended))


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        # mx.fast.rope takes periods (1 / inverse frequency). Underscore: not a parameter.
        inv = llama3_inv_freqs(args.head_dim, args.rope_theta, args.rope_scaling)
        self._rope_periods = mx.array(1.0 / inv, dtype=mx.float32)

    def rope(self, x: mx.array, offset) -> mx.array:
        """Rotate adjacent pairs of x (B, H, T, head_dim); positions start at `offset`."""
        return mx.fast.rope(
            x, self.head_dim, traditional=True, base=None, scale=1.0, offset=offset,
            freqs=self._rope_periods,
        )

    def __call__(self, x: mx.array, cache: KVCache | None = None) -> mx.array:
        B, T, _ = x.shape  # (B, T, dim)
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q = self.rope(q, offset)
        k = self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, n_kv, offset+T, head_dim)
        # "causal" aligns the last query with the last key: right for a prefill after a cached prefix.
        mask = "causal" if T > 1 else None
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


    def rows(self, x: mx.array, caches: list[KVCache]) -> mx.array:
        """One new row per stream: x (B, 1, dim), row b appended to caches[b] at its own offset.
        The projections take all B rows at once (the weights are read once); rotation and attention
        run per stream, each over its own cache."""
        B = x.shape[0]
        q = self.q_proj(x).reshape(B, 1, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, 1, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, 1, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        out = []
        for b, cache in enumerate(caches):
            qb = self.rope(q[b:b + 1], cache.offset)
            kb, vb = cache.update_and_fetch(self.rope(k[b:b + 1], cache.offset), v[b:b + 1])
            out.append(mx.fast.scaled_dot_product_attention(qb, kb, vb, scale=self.scale))
        out = mx.concatenate(out, axis=0) if B > 1 else out[0]  # (B, H, 1, head_dim)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, 1, -1))


class MLP(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    def __call__(self, x: mx.array, cache: KVCache | None = None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


    def rows(self, x: mx.array, caches: list[KVCache]) -> mx.array:
        """One new row per stream (see Attention.rows): x (B, 1, dim)."""
        h = x + self.self_attn.rows(self.input_layernorm(x), caches)
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    """A stack of blocks and the final norm: embeddings (B, T, dim) -> hidden (B, T, dim)."""

    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.layers = [Block(args) for _ in range(args.n_layers)]
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)

    def new_cache(self, max_size: int | None = None, batch: int = 1, dtype=None) -> list[KVCache]:
        """One preallocated KV cache per layer, `max_size` positions (default max_seq_len)."""
        size = max_size or self.args.max_seq_len
        dtype = dtype or self.layers[0].input_layernorm.weight.dtype
        a = self.args
        return [KVCache(size, a.n_kv_heads, a.head_dim, batch=batch, dtype=dtype) for _ in self.layers]

    def __call__(self, x: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        for i, layer in enumerate(self.layers):
            x = layer(x, cache[i] if cache is not None else None)
        return self.norm(x)

    def rows(self, x: mx.array, caches: list[list[KVCache]]) -> mx.array:
        """One new row for each of B streams: x (B, 1, dim) -> hidden (B, 1, dim) after the final
        norm; caches[b] is stream b's cache (one KVCache per layer)."""
        for i, layer in enumerate(self.layers):
            x = layer.rows(x, [c[i] for c in caches])
        return self.norm(x)
