"""The MLX frame backend: the plain-MLX CSM network (engine/csm.py) behind the FrameBackend contract.

- prefill: the backbone over T rows of one stream as one chunk (B = 1).
- step: B streams' fed-back frames as B rows of one batch: every projection takes the B rows at
  once (the weights are read once per step), while rotation and attention run per stream over its
  own cache (engine/llama.py `rows`). Then the frame.
- a frame: codebook 0's head and the depth decoder over the batch, compiled into one graph
  (mx.compile, one per batch size); the draws come from engine/backends/mlx_draws.py, whose inputs
  are arrays of B rows, so one graph serves any mix of seeds and sampler settings.
- A bfloat16 model on a CPU with engine/cpu/kernels.py runs the depth decoder row by row in
  engine/cpu/depth.py (NumPy over bfloat16 kernels), as CSM.generate_frame does.

Rows of a batch do not mix: for float32 the tests hold batched codes equal to solo codes bit for
bit. Products over bfloat16 weights on the CPU switch kernels at engine.llama's
FLOAT32_PRODUCT_MIN_ROWS rows (widened to float32 from there), so a batch of that many streams
rounds its backbone rows differently from one alone (a stream's codes may then differ).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import mlx.core as mx
import numpy as np

from engine.backends import Draw
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
        self._depth_state = None  # (dtype, device, weights id, CpuDepthDecoder | None)
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
    def frames_from_hidden(self, hidden: Sequence, draws: Sequence[Draw]) -> mx.array:
        h = mx.stack([mx.array(x) for x in hidden]).astype(self.csm._act_dtype())  # (B, Db)
        return self._frames(h, draws)

    def _frames(self, h: mx.array, draws: Sequence[Draw]) -> mx.array:
        """h (B, Db) -> codes (B, 32) int32, each row drawn by its own Draw."""
        depth = self._cpu_depth()
        if depth is not None:
            return mx.concatenate([self._cpu_frame(depth, h[b:b + 1], d) for b, d in enumerate(draws)])
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
        if self._compiled is None or self._compiled[0] is not self._weights_token():
            self._compiled = (self._weights_token(), mx.compile(self._frame))
        return self._compiled[1]

    def _weights_token(self):
        """Changes when the network's weights are replaced (compiled graphs hold the old ones)."""
        return self.csm.codebook0_head.weight

    def _cpu_depth(self):
        from engine.cpu import depth as cpu_depth

        key = (self.csm._act_dtype(), mx.default_device(), id(self._weights_token()))
        state = self._depth_state
        if state is None or state[:3] != key:
            depth = cpu_depth.CpuDepthDecoder(self.csm) if cpu_depth.usable(self.csm) else None
            state = self._depth_state = (*key, depth)
        return state[3]

    def _cpu_frame(self, depth, h: mx.array, draw: Draw) -> mx.array:
        """One stream's frame through engine/cpu/depth.py: codes (1, 32) int32."""
        params = draw_arrays([draw])
        c0 = int(pick(self.csm.codebook0_head(h), 0, params).item())
        codebook = iter(range(1, NUM_CODEBOOKS))
        rest = depth.frame(np.array(h[0].astype(mx.float32)), c0,
                           lambda logits: pick(logits, next(codebook), params))
        return mx.array([[c0, *rest]], dtype=mx.int32)

    # -- the rest of the contract ----------------------------------------------------------------
    def start(self, result) -> None:
        if isinstance(result, mx.array):
            mx.async_eval(result)

    def frame_logits(self, hidden, codes) -> np.ndarray:
        logits = self.csm.frame_logits(mx.array(hidden).astype(self.csm._act_dtype()), mx.array(codes))
        return np.array(logits.astype(mx.float32))
