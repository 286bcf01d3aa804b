"""Sampling a code from logits: temperature, top-k, greedy; seeded through mx.random.

Decisions:
- Top-k keeps every value >= the k-th largest (ties at the threshold are kept), as the reference
  does; mlx-audio keeps exactly k. The difference only shows when logits tie exactly.
- Greedy when temperature == 0 (argmax; the first index wins a tie).
- The audio vocabulary has 2051 ids, but the Mimi codec only decodes 0..2047 (2050 is transformers'
  padding id). By default those ids get probability 0 (logit -inf) for every codebook, so every
  generated frame is decodable. `suppress_undecodable=False` samples from the raw distribution
  (golden comparisons with the reference do that).
- Randomness comes from mx.random's global state: `mx.random.seed(s)` makes a run reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .option_checks import check_option


DECODABLE_CODES = 2048  # Mimi codebook size: ids >= this cannot be decoded


@dataclass(frozen=True)
class Sampler:
    temperature: float = 0.9
    top_k: int = 50
    suppress_undecodable: bool = True

    def __call__(self, logits: mx.array) -> mx.array:
        """logits (B, V) -> codes (B,) int32."""
        logits = logits.astype(mx.float32)
        V = logits.shape[-1]
        if self.suppress_undecodable and V > DECODABLE_CODES:
            logits = mx.where(mx.arange(V) < DECODABLE_CODES, logits, -mx.inf)
        if self.temperature == 0:
            return mx.argmax(logits, axis=-1).astype(mx.int32)
        if 0 < self.top_k < V:
            kth = mx.topk(logits, self.top_k, axis=-1).min(axis=-1, keepdims=True)  # (B, 1)
            logits = mx.where(logits >= kth, logits, -mx.inf)
        return mx.random.categorical(logits / self.temperature, axis=-1).astype(mx.int32)


def make_sampler(temperature: float = 0.9, top_k: int = 50, suppress_undecodable: bool = True) -> Sampler:
    """A sampler for every codebook. temperature 0 -> greedy; top_k <= 0 or >= V -> no top-k."""
    temperature = check_option("temperature", temperature)
    top_k = check_option("top_k", top_k)
    return Sampler(temperature, top_k, bool(suppress_undecodable))
