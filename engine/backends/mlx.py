"""The MLX frame backend: the plain-MLX CSM network (engine/csm.py) behind the FrameBackend contract.

- prefill: the backbone over T rows of one stream as one chunk (B = 1).
- step: B streams' fed-back frames as B rows of one batch: every projection takes the B rows at
  once (the weights are read once per step), while rotation and attention run per stream over its
  own cache (engine/llama.py `rows`). Then the frame.
- a frame: codebook 0's head and the depth decoder over the batch, compiled into one graph
  (mx.compile, one per batch size); the draws come from engine/backends/mlx_draws.py, whose inputs
  are arrays of B rows, so one graph serves any mix of seeds and sampler settings.

Rows of a batch do not mix: for float32 the tests hold batched codes equal to solo codes bit for
bit.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import mlx.core as mx
from mlx.utils import tree_flatten
import numpy as np

from engine.backends import Draw, prefill_per_chunk
from engine.backends.mlx_draws import draw_arrays, pick
from engine.constants import NUM_CODEBOOKS
from engine.kv_cache import KVCache

_FRAME_MASK = np.zeros((1, NUM_CODEBOOKS + 1), np.bool_)
_FRAME_MASK[0, :NUM_CODEBOOKS] = True


class MLXStreamCache:
    """One stream's backbone KV cache: a preallocated KVCache per layer."""

    def __init__(self, layers: list[KVCache]):
        self.layers = layers

    @property
    def offset(self) -> int:
        return self.layers[0].offset

    def trim_to(self, n: int) -> None:
        for layer in self.layers:
            layer.trim(layer.offset - n)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def copy_from(self, other: "MLXStreamCache", n: int) -> None:
        """Hold the first n positions of `other` (and nothing more)."""
        for mine, theirs in zip(self.layers, other.layers):
            mine.copy_from(theirs, n)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


class MLXBackend:
    name = "mlx"

    def __init__(self, csm, compile_frames: bool = True):
        """`compile_frames`: run the frame as one compiled graph (EngineOptions.compile)."""
        self.csm = csm
        self.max_positions = int(getattr(csm.config, "max_seq_len", 2048))
        self.compile = bool(compile_frames)
        self._compiled = None
        self.detail = f"mlx ({mx.default_device()}, {csm._act_dtype()})"

    # -- caches ----------------------------------------------------------------------------------
    def new_cache(self, max_positions: int) -> MLXStreamCache:
        return MLXStreamCache(self.csm.new_backbone_cache(max_positions))

    # -- backbone --------------------------------------------------------------------------------
    def prefill(self, cache: MLXStreamCache, tokens, mask) -> mx.array:
        """(T, 33) rows as one chunk -> the last row's hidden state (Db,), evaluated.

        Evaluated here, not left lazy: evaluated in one graph with the frame that follows, MLX 0.32
        on the CPU gave other bits for the same hidden state (measured on tiny-random, float32),
        which would make a stream's codes depend on what shares its graph."""
        embeds = self.csm.embed_rows(mx.array(tokens)[None], mx.array(mask)[None])
        hidden = self.csm.backbone(embeds, cache.layers)[0, -1]
        mx.eval(hidden)
        return hidden

    def prefill_blocks(self, cache: MLXStreamCache, tokens, mask, block: int) -> mx.array:
        """The rows as one prefill() per aligned chunk (positions cut at multiples of `block`): MLX's
        products round a row differently in other shapes, so the chunks stay separate calls."""
        return prefill_per_chunk(self, cache, tokens, mask, block)

    def step(self, caches: Sequence[MLXStreamCache], codes, draws: Sequence[Draw]) -> mx.array:
        """Feed each stream's frame (B, 32) as one row of its own cache; draw the next frames."""
        codes = mx.array(codes).astype(mx.int32).reshape(len(caches), NUM_CODEBOOKS)
        rows = mx.concatenate([codes, mx.zeros((len(caches), 1), mx.int32)], axis=1)[:, None, :]
        mask = mx.array(np.broadcast_to(_FRAME_MASK[None], (len(caches), 1, NUM_CODEBOOKS + 1)))
        # The same row embedding as a prompt's audio row, so a frame fed back here and the same
        # frame prefilled later as context embed identically.
        embeds = self.csm.embed_rows(rows, mask)  # (B, 1, Db)
        hidden = self.csm["backbone"].rows(embeds, [c.layers for c in caches])  # (B, 1, Db)
        return self._frames(hidden[:, 0, :], draws)

    # -- frames ----------------------------------------------------------------------------------
    def frames(self, caches: Sequence[MLXStreamCache], codes, draws: Sequence[Draw], hidden: Sequence,
               hidden_draws: Sequence[Draw]) -> mx.array:
        """step() for `caches`, then frames from `hidden`: (len(caches) + len(hidden), 32)."""
        parts = []
        if len(caches):
            parts.append(self.step(caches, codes, draws))
        if len(hidden):
            parts.append(self.frames_from_hidden(hidden, hidden_draws))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)

    def frames_from_hidden(self, hidden: Sequence, draws: Sequence[Draw]) -> mx.array:
        h = mx.stack([mx.array(x) for x in hidden]).astype(self.csm._act_dtype())  # (B, Db)
        return self._frames(h, draws)

    def _frames(self, h: mx.array, draws: Sequence[Draw]) -> mx.array:
        """h (B, Db) -> codes (B, 32) int32, each row drawn by its own Draw."""
        params = draw_arrays(draws)
        if self.compile:
            fn = self._compiled_frame()
            try:
                return fn(h, params)
            except RuntimeError as err:  # e.g. no C++ compiler for MLX's CPU kernels
                warnings.warn(f"compiled frame step unavailable ({err}); running uncompiled")
                self.compile = False
        return self._frame(h, params)

    def _frame(self, h: mx.array, params: dict) -> mx.array:
        cache = self.csm.decoder.new_cache(NUM_CODEBOOKS, batch=h.shape[0], dtype=self.csm._act_dtype())
        return self.csm.depth_frame(h, lambda i, logits: pick(logits, i, params), cache)

    def _compiled_frame(self):
        weights = self._weights()
        if self._compiled is None or len(self._compiled[0]) != len(weights) or any(
                a is not b for a, b in zip(self._compiled[0], weights)):
            self._compiled = (weights, mx.compile(self._frame))
        return self._compiled[1]

    def _weights(self) -> list:
        """The network's parameter arrays: a compiled graph holds the ones it was traced with, so it
        is traced anew when any of them is replaced (csm.update, load_weights)."""
        return [a for _, a in tree_flatten(self.csm.parameters())]

    # -- the rest of the contract ----------------------------------------------------------------
    def start(self, result) -> None:
        if isinstance(result, mx.array):
            mx.async_eval(result)

    def batch_kernels(self, max_batch: int) -> bool:
        """One graph serves every batch size here: nothing to change."""
        return False

    def frame_logits(self, hidden, codes) -> np.ndarray:
        logits = self.csm.frame_logits(mx.array(hidden).astype(self.csm._act_dtype()), mx.array(codes))
        return np.array(logits.astype(mx.float32))
