"""Split residual vector quantizer: 1 semantic codebook + 31 acoustic ones (real codec).

Both halves see the same latent, each through its own 1x1 input projection (hidden -> codebook_dim);
each half quantizes residually (code i = nearest centroid to what codes < i left over) and projects
its sum of centroids back (codebook_dim -> hidden); the latent is the sum of the two halves.
Centroids = embed_sum / max(cluster_usage, 1e-5). They are derived arrays: `refresh()` recomputes
them and must run after weights are loaded (Mimi.load_weights does).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import MimiConfig

EPSILON = 1e-5


class EuclideanCodebook(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embed_sum = mx.zeros((size, dim))
        self.cluster_usage = mx.ones((size,))

    def centroids(self) -> mx.array:  # (size, dim)
        return self.embed_sum / mx.maximum(self.cluster_usage, EPSILON)[:, None]


class VectorQuantization(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.codebook = EuclideanCodebook(size, dim)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: MimiConfig, count: int):
        super().__init__()
        self.size, self.count = cfg.codebook_size, count
        self.input_proj = nn.Linear(cfg.hidden_size, cfg.codebook_dim, bias=False)
        self.output_proj = nn.Linear(cfg.codebook_dim, cfg.hidden_size, bias=False)
        self.layers = [VectorQuantization(cfg.codebook_size, cfg.codebook_dim) for _ in range(count)]
        self._table = None  # (count * size, dim): every codebook's centroids, stacked
        self._norms = None  # (count, size): squared centroid norms

    def refresh(self):
        table = mx.stack([layer.codebook.centroids() for layer in self.layers])  # (count, size, dim)
        self._norms = (table * table).sum(axis=-1)
        self._table = table.reshape(-1, table.shape[-1])
        mx.eval(self._table, self._norms)

    def invalidate(self):
        self._table = self._norms = None

    def _ready(self):
        if self._table is None:
            self.refresh()

    def encode(self, x: mx.array, count: int | None = None) -> mx.array:
        """x (N, hidden) -> codes (count, N) int32, nearest centroid of each residual in turn."""
        self._ready()
        count = self.count if count is None else count
        residual = self.input_proj(x)
        size, codes = self.size, []
        for i in range(count):
            centroids = self._table[i * size:(i + 1) * size]
            # argmin |r - c|^2 = argmin |c|^2 - 2 r.c  (|r|^2 is the same for every c)
            dist = self._norms[i] - 2.0 * (residual @ centroids.T)
            idx = mx.argmin(dist, axis=-1).astype(mx.int32)
            residual = residual - centroids[idx]
            codes.append(idx)
        return mx.stack(codes)

    def decode(self, codes: mx.array) -> mx.array:
        """codes (K <= count, N) -> (N, hidden)."""
        self._ready()
        k = codes.shape[0]
        rows = codes + (mx.arange(k, dtype=mx.int32) * self.size)[:, None]
        return self.output_proj(self._table[rows].sum(axis=0))


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, cfg.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, cfg.num_acoustic_quantizers)

    def refresh(self):
        self.semantic_residual_vector_quantizer.refresh()
        self.acoustic_residual_vector_quantizer.refresh()

    def invalidate(self):
        self.semantic_residual_vector_quantizer.invalidate()
        self.acoustic_residual_vector_quantizer.invalidate()

    def encode(self, x: mx.array) -> mx.array:  # (N, hidden) -> (num_quantizers, N) int32
        first = self.semantic_residual_vector_quantizer.encode(x)
        rest = self.acoustic_residual_vector_quantizer.encode(x)
        return mx.concatenate([first, rest], axis=0)

    def decode(self, codes: mx.array) -> mx.array:  # (K, N) -> (N, hidden); K may be < num_quantizers
        out = self.semantic_residual_vector_quantizer.decode(codes[: self.semantic])
        if codes.shape[0] > self.semantic:
            out = out + self.acoustic_residual_vector_quantizer.decode(codes[self.semantic:])
        return out
