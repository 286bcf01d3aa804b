"""The codec transformer (encoder and decoder side alike), at 25 Hz.

Pre-norm LayerNorm blocks with LayerScale on both branches, exact (erf) GELU MLP, RoPE on adjacent
pairs (max period 10000), causal attention over a sliding window: the query at position p sees the
keys at p - window + 1 .. p.

    y = transformer(x)            # whole sequence from position 0, (B, T, D) -> (B, T, D)
    s = transformer.stream()      # owns positions and the last window - 1 keys/values of every layer
    y1 = s.step(x1); y2 = s.step(x2) ...; s.reset()
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .config import MimiConfig

QUERY_BLOCK = 256  # the whole-sequence call attends in query blocks of this size (bounded memory)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x):
        return x * self.scale


class Attention(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.head_dim, self.window = cfg.num_heads, cfg.head_dim, cfg.sliding_window
        self.rope_theta = cfg.rope_theta
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def _heads(self, x):  # (B, T, D) -> (B, H, T, hd)
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def qkv(self, x: mx.array, offset: int):
        rope = dict(dims=self.head_dim, traditional=True, base=self.rope_theta, scale=1.0, offset=offset)
        q = mx.fast.rope(self._heads(self.q_proj(x)), **rope)
        k = mx.fast.rope(self._heads(self.k_proj(x)), **rope)
        return q, k, self._heads(self.v_proj(x))

    def attend(self, q, k, v, q_start: int, k_start: int) -> mx.array:
        """q (B, H, n, hd) at positions q_start..; k, v (B, H, m, hd) at k_start.. -> (B, n, D)."""
        n, m = q.shape[2], k.shape[2]
        qpos = mx.arange(q_start, q_start + n)[:, None]
        kpos = mx.arange(k_start, k_start + m)[None, :]
        delta = qpos - kpos
        mask = (delta >= 0) & (delta < self.window)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        b = out.shape[0]
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x):
        return self.fc2(nn.gelu(self.fc1(x)))  # exact erf GELU


class TransformerLayer(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        d = cfg.hidden_size
        self.input_layernorm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.self_attn_layer_scale = LayerScale(d)
        self.post_attention_layernorm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_layer_scale = LayerScale(d)

    def feed_forward(self, x):
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class CodecTransformer(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]
        self.window = cfg.sliding_window

    def __call__(self, x: mx.array) -> mx.array:  # (B, T, D), positions 0..T-1
        t = x.shape[1]
        for layer in self.layers:
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), 0)
            blocks = []
            for start in range(0, t, QUERY_BLOCK):
                stop = min(start + QUERY_BLOCK, t)
                k0 = max(0, start - self.window + 1)
                blocks.append(attn.attend(q[:, :, start:stop], k[:, :, k0:stop], v[:, :, k0:stop], start, k0))
            h = blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=1)
            x = layer.feed_forward(x + layer.self_attn_layer_scale(h))
        return x

    def stream(self) -> "TransformerStream":
        return TransformerStream(self)


class TransformerStream:
    """Positions so far, and per layer the keys/values of the last window - 1 positions."""

    def __init__(self, model: CodecTransformer):
        self.model = model
        self.reset()

    def reset(self):
        self.offset = 0
        self.cache: list[tuple[mx.array, mx.array] | None] = [None] * len(self.model.layers)

    def arrays(self) -> list:
        return [a for kv in self.cache if kv is not None for a in kv]

    def step(self, x: mx.array) -> mx.array:  # (B, n, D) at positions offset..offset+n-1
        n = x.shape[1]
        if n == 0:
            return x
        keep = self.model.window - 1
        for i, layer in enumerate(self.model.layers):
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), self.offset)
            if self.cache[i] is not None:
                k = mx.concatenate([self.cache[i][0], k], axis=2)
                v = mx.concatenate([self.cache[i][1], v], axis=2)
            k_start = self.offset + n - k.shape[2]
            h = attn.attend(q, k, v, self.offset, k_start)
            self.cache[i] = (k[:, :, -keep:], v[:, :, -keep:]) if keep > 0 else None
            x = layer.feed_forward(x + layer.self_attn_layer_scale(h))
        self.offset += n
        return x
