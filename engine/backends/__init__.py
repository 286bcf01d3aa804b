"""How a frame is computed: the FrameBackend contract, the per-frame `Draw`, and the choice of backend.

A backend is chosen once, in load_model, and handed to the Generator (engine/generator.py), which
talks to the network only through it:

    new_cache(max_positions) -> StreamCache      one stream's backbone KV cache
    prefill(cache, tokens, mask) -> hidden       (T, 33) canonical rows as ONE chunk -> last row (Db,)
    prefill_blocks(cache, tokens, mask, block)   the same rows as one prefill() per aligned chunk
                                                 (cut at multiples of `block`) would give them, bit
                                                 for bit; the CPU backend runs several chunks in one
                                                 pass over the weights
    frames_from_hidden(hidden, draws) -> codes   (B, 32): one frame per stream from hidden states
    step(caches, codes, draws) -> codes          feed each stream's frame as one row, draw the next
    frames(caches, codes, draws, hidden, hidden_draws) -> codes
                                                 step's rows, then frames from hidden states, in one
                                                 depth pass: (len(caches) + len(hidden), 32)
    start(result)                                begin computing a result without waiting
    frame_logits(hidden, codes) -> logits        (B, 32, V) teacher-forced logits (tests)
    batch_kernels(max_batch) -> bool             pick the kernels for batches of up to max_batch
                                                 streams (Generator.batch); True if they changed

Streams are independent: a stream's hidden states and codes do not depend on which other streams
share a call, nor on how many (per-row arithmetic is the same for any batch). Draws are
reproducible: the random numbers of (seed, frame, codebook) come from a counter-based generator
keyed by exactly those, so a stream's codes do not depend on its batch, its history or threads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from engine.blocks import aligned_bounds


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

    def copy_from(self, other: "StreamCache", n: int) -> None: ...  # hold other's first n positions

    @property
    def nbytes(self) -> int: ...  # bytes held (allocated)


@runtime_checkable
class FrameBackend(Protocol):
    name: str  # "mlx" or "cpu"
    detail: str  # what runs, in words

    def new_cache(self, max_positions: int) -> StreamCache: ...

    def prefill(self, cache: StreamCache, tokens, mask): ...

    def prefill_blocks(self, cache: StreamCache, tokens, mask, block: int): ...

    def frames_from_hidden(self, hidden: Sequence, draws: Sequence[Draw]): ...

    def step(self, caches: Sequence[StreamCache], codes, draws: Sequence[Draw]): ...

    def frames(self, caches: Sequence[StreamCache], codes, draws: Sequence[Draw], hidden: Sequence,
               hidden_draws: Sequence[Draw]): ...

    def start(self, result) -> None: ...

    def frame_logits(self, hidden, codes): ...

    def batch_kernels(self, max_batch: int) -> bool: ...


def prefill_per_chunk(backend, cache, tokens, mask, block: int):
    """prefill_blocks as one backend.prefill per aligned chunk: for backends whose products round a
    row by the shape of its chunk (MLX)."""
    bounds = aligned_bounds(cache.offset, cache.offset + len(tokens), block)
    start, hidden = bounds[0], None
    for a, b in zip(bounds, bounds[1:]):
        hidden = backend.prefill(cache, tokens[a - start:b - start], mask[a - start:b - start])
    return hidden


def choose_backend(csm, options=None) -> FrameBackend:
    """The frame backend for the network `csm` under `options` (EngineOptions; default from the
    environment), chosen once when a model loads.

    - MLX on a GPU (Metal, CUDA), and when `options.backend == "mlx"`;
    - else the native CPU backend (engine/cpu/backend.py) where its C library builds: an x86-64 or
      ARM64 CPU with a C compiler, `cpu_kernels` not "off" (CSM_CPU_KERNELS=0), and weights its
      kernels take (bfloat16 or MLX affine 8-/4-bit). It computes in bfloat16, so a float32 or
      float16 model (an explicit ask for that precision) stays on MLX under "auto"; with
      backend "cpu" its weights are converted to bfloat16 copies, with a warning;
    - else MLX, with a warning saying why the native backend was not used. `detail` says the same.
    A fallback is never an error, also not when "cpu" was asked for.
    """
    from engine.options import EngineOptions

    options = options or EngineOptions.from_env()
    reason = None
    if options.backend == "mlx":
        reason = "chosen by the backend setting"
    elif options.backend == "auto" and _on_gpu():
        reason = "the GPU"
    else:
        reason = native_unavailable_reason(options)
        wide = _wide_float_weights(csm)
        if reason is None and wide and options.backend == "auto":
            reason = (f"{wide} weights: the native CPU backend computes in bfloat16; "
                      "backend='cpu' converts them")
            return _mlx_backend(csm, options, reason, warn=False)
        if reason is None:
            if wide:
                warnings.warn(f"the native CPU backend converts this model's {wide} weights to bfloat16 copies",
                              RuntimeWarning, stacklevel=2)
            from engine.cpu.backend import CpuBackend
            from engine.cpu.pack import UnsupportedWeights

            try:
                return CpuBackend(csm, threads=options.threads, portable=options.cpu_kernels == "portable")
            except UnsupportedWeights as exc:
                reason = str(exc)
    return _mlx_backend(csm, options, reason)


def native_unavailable_reason(options=None) -> str | None:
    """Why the native CPU backend cannot run here (a setting, the CPU, no compiler, a build error),
    or None when it can."""
    from engine.cpu.frame import unavailable_reason

    if options is not None and options.cpu_kernels == "off":
        return "native CPU kernels switched off (cpu_kernels=off, CSM_CPU_KERNELS=0)"
    return unavailable_reason()


def _wide_float_weights(csm) -> str | None:
    """'float32' or 'float16' when a float (not quantized) model holds such weights, else None.
    (A quantized model's float parts, norms and heads, stay native whatever their dtype.)"""
    import mlx.core as mx
    import mlx.nn as nn

    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in csm.named_modules()):
        return None
    dtype = csm.codebook0_head.weight.dtype
    return {mx.float32: "float32", mx.float16: "float16"}.get(dtype)


def _on_gpu() -> bool:
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.gpu


def _mlx_backend(csm, options, reason: str, warn: bool = True) -> FrameBackend:
    from engine.backends.mlx import MLXBackend

    backend = MLXBackend(csm, compile_frames=options.compile)
    if reason == "the GPU":
        return backend
    backend.detail = f"{backend.detail}; native CPU backend not used: {reason}"
    if warn and reason != "chosen by the backend setting":
        warnings.warn(f"running the MLX backend: the native CPU backend is not available ({reason})",
                      RuntimeWarning, stacklevel=3)
    return backend
