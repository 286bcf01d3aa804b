"""How a frame is computed: the FrameBackend contract, the per-frame `Draw`, and the choice of backend.

A backend is chosen once, in load_model, and handed to the Generator (engine/generator.py), which
talks to the network only through it:

    new_cache(max_positions) -> StreamCache      one stream's backbone KV cache
    prefill(cache, tokens, mask) -> hidden       (T, 33) canonical rows as ONE chunk -> last row (Db,)
    frames_from_hidden(hidden, draws) -> codes   (B, 32): one frame per stream from hidden states
    step(caches, codes, draws) -> codes          feed each stream's frame as one row, draw the next
    start(result)                                begin computing a result without waiting
    frame_logits(hidden, codes) -> logits        (B, 32, V) teacher-forced logits (tests)

Streams are independent: a stream's hidden states and codes do not depend on which other streams
share a call, nor on how many (per-row arithmetic is the same for any batch). Draws are
reproducible: the random numbers of (seed, frame, codebook) come from a counter-based generator
keyed by exactly those, so a stream's codes do not depend on its batch, its history or threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Draw:
    """How to draw one frame of one stream: the sampler settings, the stream's seed, and which
    frame of its utterance this is (0 for the first)."""

    temperature: float = 0.9  # 0 = greedy (argmax; the first index wins ties)
    top_k: int = 50  # keep logits >= the k-th largest; <= 0 or >= V: no top-k
    suppress_undecodable: bool = True  # -inf on ids >= 2048 (Mimi cannot decode them)
    seed: int = 0
    frame: int = 0

    def at(self, frame: int) -> "Draw":
        """The same stream's draw for another frame."""
        return Draw(self.temperature, self.top_k, self.suppress_undecodable, self.seed, int(frame))


@runtime_checkable
class StreamCache(Protocol):
    offset: int  # positions held

    def trim_to(self, n: int) -> None: ...  # keep the first n positions

    def reset(self) -> None: ...

    @property
    def nbytes(self) -> int: ...  # bytes held (allocated)


@runtime_checkable
class FrameBackend(Protocol):
    name: str  # "mlx" or "cpu"
    detail: str  # what runs, in words

    def new_cache(self, max_positions: int) -> StreamCache: ...

    def prefill(self, cache: StreamCache, tokens, mask): ...

    def frames_from_hidden(self, hidden: Sequence, draws: Sequence[Draw]): ...

    def step(self, caches: Sequence[StreamCache], codes, draws: Sequence[Draw]): ...

    def start(self, result) -> None: ...

    def frame_logits(self, hidden, codes): ...


def choose_backend(csm, options=None) -> FrameBackend:
    """The frame backend for the network `csm` under `options` (EngineOptions). Today: the MLX
    backend everywhere."""
    from engine.backends.mlx import MLXBackend

    return MLXBackend(csm, compile_frames=getattr(options, "compile", True))
