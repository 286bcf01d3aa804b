"""The depth decoder's 31 steps of a frame on the CPU, for a bfloat16 model, over engine.cpu.kernels.

A frame's depth decoder reads its weights 31 times (7 GB in bfloat16): on a CPU that is most of a
frame's time, and MLX's CPU backend reads bfloat16 weights slowly (see engine/cpu/kernels.py). Here
the same network runs one row at a time in NumPy, its products in the bfloat16 kernels, its own
small KV cache (at most 33 positions) in float32 arrays. The codes are still drawn by the model's
sampler, an MLX function of the logits that advances mx.random's state exactly as the MLX path
does, so a seed means the same draws; the logits differ from MLX's bfloat16 path only by rounding.

Used by CSM.generate_frame for one sequence (batch 1) of a bfloat16 model on the CPU when the
kernels are available; `frame_logits` (teacher-forced) exists for the tests.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from engine.quantize import quantized_paths

from . import kernels as cpu_kernels


def usable(model) -> bool:
    """Whether `model` (a CSM) can run its depth decoder here."""
    if mx.default_device() != mx.cpu or model._act_dtype() != mx.bfloat16:
        return False
    if quantized_paths(model):  # quantized weights: MLX's own path
        return False
    return cpu_kernels.available()


def _f32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


class CpuDepthDecoder:
    """The bfloat16 weights of a CSM's depth decoder as NumPy views, and its frame step."""

    def __init__(self, model):
        bits = cpu_kernels.bf16_bits
        self._keep = []  # the MLX arrays behind the NumPy views

        def view(a):
            self._keep.append(a)
            return bits(a)

        dec = model.decoder
        attn0 = dec.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = attn0.n_heads, attn0.n_kv_heads, attn0.head_dim
        self.eps = dec.layers[0].input_layernorm.eps
        self.layers = []
        for layer in dec.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append({
                "q": view(a.q_proj.weight), "k": view(a.k_proj.weight), "v": view(a.v_proj.weight),
                "o": view(a.o_proj.weight), "gate": view(m.gate_proj.weight), "up": view(m.up_proj.weight),
                "down": view(m.down_proj.weight),
                "norm1": _f32(layer.input_layernorm.weight), "norm2": _f32(layer.post_attention_layernorm.weight),
                "inv_freq": 1.0 / np.array(a._rope_periods, dtype=np.float64),
            })
        self.norm = _f32(dec.norm.weight)
        self.projection = view(model.projection.weight)  # (Dd, Db)
        self.audio_head = view(model.audio_head)  # (K-1, Dd, V)
        self.embeddings = view(model.audio_embeddings.weight)  # (K*V, Db)
        self.K = model.config.audio_num_codebooks
        self.V = model.config.audio_vocab_size
        self.scale = self.head_dim ** -0.5

    # ---- pieces -------------------------------------------------------------------------------
    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return (x / np.sqrt(np.mean(x * x) + self.eps) * weight).astype(np.float32)

    @staticmethod
    def _rope(x: np.ndarray, pos: int, inv_freq: np.ndarray) -> np.ndarray:
        """Rotate adjacent pairs of x (heads, head_dim) to position `pos`."""
        angle = pos * inv_freq
        cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
        even, odd = x[:, 0::2], x[:, 1::2]
        out = np.empty_like(x)
        out[:, 0::2] = even * cos - odd * sin
        out[:, 1::2] = even * sin + odd * cos
        return out

    def embedding(self, index: int) -> np.ndarray:
        """Row `index` of the audio embedding table, float32."""
        return (self.embeddings[index].astype(np.uint32) << 16).view(np.float32)

    def _new_cache(self):
        shape = (self.K, self.kv_heads, self.head_dim)
        return [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in self.layers]

    def _position(self, x_in: np.ndarray, pos: int, cache) -> np.ndarray:
        """One input row (Db,) at position `pos` through the decoder -> its final hidden state (Dd,)."""
        mv = cpu_kernels.matvec
        H, G, D = self.heads, self.kv_heads, self.head_dim
        x = mv(self.projection, x_in)
        for w, (keys, values) in zip(self.layers, cache):
            h = self._rms(x, w["norm1"])
            q = self._rope(mv(w["q"], h).reshape(H, D), pos, w["inv_freq"])
            keys[pos] = self._rope(mv(w["k"], h).reshape(G, D), pos, w["inv_freq"])
            values[pos] = mv(w["v"], h).reshape(G, D)
            k, v = keys[: pos + 1], values[: pos + 1]  # (t, G, D)
            scores = np.einsum("gqd,tgd->gqt", q.reshape(G, H // G, D), k) * self.scale
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = np.einsum("gqt,tgd->gqd", scores, v).reshape(-1)
            x = x + mv(w["o"], attended)
            h = self._rms(x, w["norm2"])
            gate, up = mv(w["gate"], h), mv(w["up"], h)
            x = x + mv(w["down"], gate / (1.0 + np.exp(-gate)) * up)
        return self._rms(x, self.norm)

    def _logits(self, i: int, hidden: np.ndarray) -> np.ndarray:
        """Codebook i's logits (V,) from the decoder's last hidden state."""
        return cpu_kernels.matvec_t(self.audio_head[i - 1], hidden)

    # ---- a frame ------------------------------------------------------------------------------
    def frame(self, h_last: np.ndarray, c0: int, sampler) -> list[int]:
        """Codes 1..K-1 of a frame after the backbone state h_last (Db,) and codebook 0's code."""
        cache = self._new_cache()
        self._position(h_last, 0, cache)
        hidden = self._position(self.embedding(c0), 1, cache)
        codes = []
        for i in range(1, self.K):
            logits = mx.array(self._logits(i, hidden)[None]).astype(mx.bfloat16)
            c = int(sampler(logits).astype(mx.int32).item())
            codes.append(c)
            if i < self.K - 1:
                hidden = self._position(self.embedding(i * self.V + c), i + 1, cache)
        return codes

    def frame_logits(self, h_last: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Teacher-forced logits of codebooks 1..K-1 given the frame's codes (K,) -> (K-1, V)."""
        cache = self._new_cache()
        self._position(h_last, 0, cache)
        out = []
        for i in range(1, self.K):
            hidden = self._position(self.embedding((i - 1) * self.V + int(codes[i - 1])), i, cache)
            out.append(self._logits(i, hidden))
        return np.stack(out)
