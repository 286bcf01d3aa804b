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
import sys
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cpu import kernels as cpu_kernels
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


# On Linux CPUs (MLX 0.32 + OpenBLAS 0.3.31, x86-64) `W @ x^T` runs 2-5x faster than the equal
# `x @ W^T` for the weight shapes here and 1..512 rows of x (isolated matmuls); a whole full-size
# depth-decoder frame got 10-20% faster. Elsewhere (GPU, macOS Accelerate) the usual form is kept.
MATMUL_WEIGHT_LEFT = sys.platform.startswith("linux")


def _weight_left() -> bool:
    return MATMUL_WEIGHT_LEFT and mx.default_device() == mx.cpu


class Linear(nn.Linear):
    """nn.Linear without bias; the product is oriented for the backend (see MATMUL_WEIGHT_LEFT)."""

    def __init__(self, input_dims: int, output_dims: int):
        super().__init__(input_dims, output_dims, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight
        if w.dtype in _HALF and _float32_rows(x):
            return _product(x.astype(mx.float32), w.astype(mx.float32)).astype(x.dtype)
        if w.dtype == mx.bfloat16 and mx.default_device() == mx.cpu and cpu_kernels.available():
            return self._kernel_product(x)
        return _product(x, w)

    def _kernel_product(self, x: mx.array) -> mx.array:
        """A few rows through engine.cpu.kernels (bfloat16 weights on the CPU; evaluates x now)."""
        cached = getattr(self, "_kernel_bits", None)
        if cached is None or cached[0] is not self.weight:
            cached = (self.weight, cpu_kernels.bf16_bits(self.weight))
            object.__setattr__(self, "_kernel_bits", cached)  # not a parameter
        rows = x.reshape(-1, x.shape[-1]).astype(mx.float32)
        out = np.stack([cpu_kernels.matvec(cached[1], row) for row in np.array(rows)])
        return mx.array(out).astype(x.dtype).reshape(*x.shape[:-1], -1)

    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine",
                     quantize_input: bool = False):
        if quantize_input or mode != "affine":
            return super().to_quantized(group_size, bits, mode=mode, quantize_input=quantize_input)
        return QuantizedLinear.from_linear(self, group_size, bits, mode=mode)


def _product(x: mx.array, weight: mx.array) -> mx.array:
    """x (..., in) @ weight (out, in).T, oriented for the backend."""
    if not _weight_left():
        return x @ weight.T
    rows = x.reshape(-1, x.shape[-1])  # (N, in)
    return (weight @ rows.T).T.reshape(*x.shape[:-1], -1)  # (..., out)


# On the CPU, MLX's products with quantized or bfloat16/float16 weights run in its own kernels, not
# the BLAS: a 64-row prompt block through an 8192x2048 layer took 830 ms with 8-bit weights and 424 ms
# in bfloat16, against 10 ms in float32 (OpenBLAS). For that many rows it is faster to widen the
# weights to float32 first and use the BLAS product (55 ms and 43 ms, widening included). One row (a
# frame step) keeps the native kernel: widening every weight for one row costs more than it saves.
FLOAT32_PRODUCT_MIN_ROWS = 8
_HALF = (mx.bfloat16, mx.float16)


def _float32_rows(x: mx.array) -> bool:
    """Whether a product with x (..., in) should run in float32 on this device (see above)."""
    return x.size // x.shape[-1] >= FLOAT32_PRODUCT_MIN_ROWS and mx.default_device() == mx.cpu


class QuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear (affine) whose multi-row products on the CPU run in float32 (see above).

    Both paths compute with the same weights (the affine-dequantized values); they differ only by
    float rounding."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _float32_rows(x) or "bias" in self:
            return super().__call__(x)
        w = dequantize_affine(self.weight, self.scales, self.biases, self.group_size, self.bits)
        return _product(x.astype(mx.float32), w).astype(x.dtype)


def dequantize_affine(w: mx.array, scales: mx.array, biases: mx.array, group_size: int, bits: int) -> mx.array:
    """The float32 weights of MLX affine quantization: (out, in). Equal to mx.dequantize; for 8 and
    4 bits unpacked with plain array ops, about twice as fast as mx.dequantize on the CPU."""
    out = w.shape[0]
    if bits not in (4, 8):
        return mx.dequantize(w, scales, biases, group_size, bits).astype(mx.float32)
    q = w.view(mx.uint8)  # little-endian words: low bits first
    if bits == 4:
        q = mx.stack([q & 0xF, q >> 4], axis=-1)
    q = q.reshape(out, -1, group_size).astype(mx.float32)
    s = scales.astype(mx.float32)[..., None]
    b = biases.astype(mx.float32)[..., None]
    return (q * s + b).reshape(out, -1)


def head_matmul(h: mx.array, w: mx.array) -> mx.array:
    """h (N, in) @ w (in, out), oriented as Linear is."""
    return (w.T @ h.T).T if _weight_left() else h @ w


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        self.q_proj = Linear(args.dim, args.n_heads * args.head_dim)
        self.k_proj = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.v_proj = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.o_proj = Linear(args.n_heads * args.head_dim, args.dim)
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
        self.gate_proj = Linear(args.dim, args.hidden_dim)
        self.up_proj = Linear(args.dim, args.hidden_dim)
        self.down_proj = Linear(args.hidden_dim, args.dim)

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
