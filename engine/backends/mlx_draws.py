"""Counter-based draws in MLX: a code from logits, reproducible from (seed, frame, codebook) alone.

Each stream of a batch has its own settings and seed, given as arrays of B rows, so one compiled
graph serves any mix of requests. The random numbers are a hash of (seed, frame, codebook, vocab id):
no generator state, so a stream's draws do not depend on its batch, its history or the thread
count. A draw is a Gumbel-max sample: argmax(logits / T + g) with g = -log(-log(u)), u uniform in
(0, 1) — the same distribution as softmax sampling.

Settings (as engine.sampling.Sampler had them): temperature 0 = greedy (argmax over the logits,
first index wins a tie); top-k keeps every logit >= the k-th largest (ties kept); top_k <= 0 or
>= V turns it off; suppress_undecodable puts -inf on ids >= 2048, which Mimi cannot decode.
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx

from engine.backends import Draw

DECODABLE_CODES = 2048
_MIX_1 = 0x7FEB352D  # "lowbias32" multipliers (a well-mixing 32-bit integer hash)
_MIX_2 = 0x846CA68B
_GOLDEN = 0x9E3779B9
_NUM_CODEBOOKS = 32


def _mix(x: mx.array) -> mx.array:
    """A bijective 32-bit hash of uint32 x, element-wise."""
    x = x ^ (x >> 16)
    x = x * mx.array(_MIX_1, dtype=mx.uint32)
    x = x ^ (x >> 15)
    x = x * mx.array(_MIX_2, dtype=mx.uint32)
    return x ^ (x >> 16)


def draw_arrays(draws: Sequence[Draw]) -> dict[str, mx.array]:
    """The per-stream settings of a batch as arrays of B rows (inputs of the compiled frame)."""
    return {
        "temperature": mx.array([float(d.temperature) for d in draws], dtype=mx.float32),
        "top_k": mx.array([int(d.top_k) for d in draws], dtype=mx.int32),
        "suppress": mx.array([bool(d.suppress_undecodable) for d in draws], dtype=mx.bool_),
        "seed": mx.array([int(d.seed) % 2**32 for d in draws], dtype=mx.uint32),
        "frame": mx.array([int(d.frame) % 2**32 for d in draws], dtype=mx.uint32),
    }


def uniforms(seed: mx.array, frame: mx.array, codebook: int, size: int) -> mx.array:
    """(B, size) float32 in (0, 1): the random numbers of (seed, frame, codebook) for ids 0..size-1."""
    counter = frame * mx.array(_NUM_CODEBOOKS, dtype=mx.uint32) + mx.array(codebook, dtype=mx.uint32)
    stream = _mix(_mix(seed ^ mx.array(_GOLDEN, dtype=mx.uint32)) + _mix(counter))  # (B,)
    ids = mx.arange(size, dtype=mx.uint32) * mx.array(_GOLDEN, dtype=mx.uint32)  # (size,)
    bits = _mix(_mix(stream[:, None] ^ ids[None, :]))  # (B, size)
    return ((bits >> 8).astype(mx.float32) + 0.5) * (1.0 / 2**24)


def pick(logits: mx.array, codebook: int, params: dict[str, mx.array]) -> mx.array:
    """logits (B, V) of one codebook -> codes (B,) int32, each row by its own stream's settings."""
    logits = logits.astype(mx.float32)
    B, V = logits.shape
    if V > DECODABLE_CODES:
        undecodable = mx.arange(V) >= DECODABLE_CODES  # (V,)
        logits = mx.where(params["suppress"][:, None] & undecodable[None, :], -mx.inf, logits)
    greedy = mx.argmax(logits, axis=-1).astype(mx.int32)
    top_k = params["top_k"]
    k = mx.where((top_k <= 0) | (top_k >= V), V, top_k)  # (B,)
    kth = mx.take_along_axis(mx.sort(logits, axis=-1), (V - k)[:, None], axis=-1)  # (B, 1)
    kept = mx.where(logits >= kth, logits, -mx.inf)
    temperature = params["temperature"]
    t = mx.where(temperature > 0, temperature, 1.0)[:, None]
    gumbel = -mx.log(-mx.log(uniforms(params["seed"], params["frame"], codebook, V)))
    sampled = mx.argmax(kept / t + gumbel, axis=-1).astype(mx.int32)
    return mx.where(temperature > 0, sampled, greedy)
