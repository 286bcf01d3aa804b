"""The native CPU frame backend ("cpu"): packed weights and one native call per frame.

At load the CSM's weights are packed (engine/cpu/pack.py: bf16, MLX affine int8/int4 as they are)
and laid out for frame.c (engine/cpu/frame.py). Then:
  step(caches, codes, draws)      one call into frame.c for all B streams: embed the fed-back frames,
                                  the backbone's one-row step through each stream's cache, codebook 0's
                                  head, the 31 depth-decoder steps and the 32 seeded draws
  frames_from_hidden(hidden, ..)  the same from backbone states (after a prefill)
  frames(caches, .., hidden, ..)  both in one depth pass (the batched tick)
  prefill(cache, tokens, mask)    the backbone over T rows (engine/cpu/prefill.py)
  prefill_blocks(.., block)       the same for several aligned chunks in one pass over the weights
A stream's KV cache is NumPy memory owned here: float32 (layers, 2, n_kv, max_positions, head_dim),
its pages touched only as positions fill.

The cores belong to the frame step's OpenMP threads, so the backend gives the BLAS that MLX uses
(engine/cpu/blas.py; only the codec still runs on MLX) one thread unless CSM_OPENBLAS_THREADS says
otherwise: OpenBLAS's idle workers spin for ~70 ms after each call, and after every decoded chunk
that spinning took a core from the next frame step (4-stream server ticks ran ~20% slower). The
codec's 6-frame streaming chunk costs ~10 ms more on one BLAS thread (56 against 45 ms).

Draws are keyed by (seed, frame, codebook) through a counter-based hash in frame.c, so a stream's
codes depend on nothing else in the batch, its history or the thread count.
"""

from __future__ import annotations

import os

import numpy as np

from ..blocks import aligned_bounds
from ..errors import ContextTooLongError, InputError
from .frame import VARIANT_AMX, VARIANT_BEST, VARIANT_PORTABLE, NativeModel, best_variant, features
from .pack import pack_csm
from .prefill import Workspace, backbone_prefill, embed_rows


PASS_ROWS = 256  # prefill_blocks' rows per pass: gemm.c runs 128-256-row blocks at its best rate


def _hidden_rows(hidden) -> np.ndarray:
    """Backbone states (B of (Db,), e.g. prefill results) as one (B, Db) float32 array."""
    return np.stack([np.asarray(x, dtype=np.float32).reshape(-1) for x in hidden])


class CpuStreamCache:
    """One stream's backbone KV cache in native memory."""

    def __init__(self, args, max_positions: int):
        self.kv = np.zeros((args.n_layers, 2, args.n_kv_heads, max_positions, args.head_dim), np.float32)
        self.offset = 0

    @property
    def max_positions(self) -> int:
        return self.kv.shape[3]

    def trim_to(self, n: int) -> None:
        self.offset = max(0, min(int(n), self.offset))

    def reset(self) -> None:
        self.offset = 0

    def copy_from(self, other: "CpuStreamCache", n: int) -> None:
        """Hold the first n positions of `other` (and nothing more)."""
        n = max(0, min(int(n), other.offset))
        self.kv[:, :, :, :n] = other.kv[:, :, :, :n]
        self.offset = n

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


def _gemm(threads: int):
    """engine/cpu/gemm.py's multi-row product (x (T, in), PackedWeight, out, scratch) -> out (T, out),
    and the scratch bytes it needs for `rows` rows of a weight, when it is there and builds here;
    else None."""
    try:
        from . import gemm
    except ImportError:
        return None
    if hasattr(gemm, "available") and not gemm.available():
        return None
    product = lambda x, w, out=None, scratch=None: gemm.gemm(x, w, threads=threads, out=out, scratch=scratch)
    return product, lambda rows, w: gemm.scratch_bytes(rows, w, threads=threads)


class CpuBackend:
    name = "cpu"

    def __init__(self, csm, threads: int | None = None, portable: bool = False):
        from .blas import ENV_THREADS, default_threads, set_threads

        self.config = csm.config
        self.max_positions = int(self.config.max_seq_len)
        self.threads = int(threads or default_threads())
        self.packed = pack_csm(csm)
        self.portable = portable
        self.native = NativeModel(self.packed, self.threads, VARIANT_PORTABLE if portable else VARIANT_BEST)
        self.K = self.config.audio_num_codebooks
        if not os.environ.get(ENV_THREADS, "").strip():  # see the module doc
            set_threads(1)
        gemm = _gemm(self.threads)
        if gemm is not None:
            self._product, needs = gemm
            L = self.packed.backbone.layers[0]
            scratch = max(needs(PASS_ROWS, w) for w in (L.q, L.k, L.v, L.o, L.gate, L.up, L.down))
        else:
            self._product = lambda x, w, out=None, scratch=None: self.native.product(x, w, out)
            scratch = 0
        self._workspace = Workspace(self.packed, PASS_ROWS, scratch)
        self._prefill_by = "gemm" if gemm is not None else "frame kernels"
        self._describe()

    def _describe(self) -> None:
        used = [f for f in features() if f != "openmp" and (f != "amx-bf16" or self.native.variant == VARIANT_AMX)]
        kernels = "portable C" if self.portable else (", ".join(used) or "portable C")
        self.detail = (f"cpu: {'+'.join(self.packed.formats)} weights, {kernels}, {self.threads} threads"
                       f", prefill {self._prefill_by}")

    def batch_kernels(self, max_batch: int) -> bool:
        """bf16 products for one stream run fastest as AVX512 dot products; for several they run on
        AMX tiles (Sapphire Rapids and later), which read each weight once for up to 16 streams but
        are ~15-25% slower for one stream alone. So batching (max_batch > 1) switches to AMX where
        this CPU and process have it, and back for one stream. Each is used for every batch size while
        it is chosen, so a stream's codes never depend on what shares its batch; the two differ from
        each other by float32 summation order. -> True if the kernels changed."""
        if self.portable:
            return False
        wanted = best_variant() if max_batch > 1 else VARIANT_BEST
        if wanted == self.native.variant:
            return False
        self.native.set_variant(wanted)
        self._describe()
        return True

    # ---- caches --------------------------------------------------------------------------------
    def new_cache(self, max_positions: int) -> CpuStreamCache:
        if max_positions > self.native.max_positions:
            raise ContextTooLongError(f"the model takes at most {self.native.max_positions} positions, "
                                      f"{max_positions} were asked for")
        return CpuStreamCache(self.config.backbone, int(max_positions))

    # ---- backbone ------------------------------------------------------------------------------
    def prefill(self, cache: CpuStreamCache, tokens, mask) -> np.ndarray:
        """(T, 33) rows appended to `cache` as one chunk -> the last row's hidden state (Db,) float32."""
        return self._prefill(cache, tokens, mask)

    def prefill_blocks(self, cache: CpuStreamCache, tokens, mask, block: int) -> np.ndarray:
        """(T, 33) rows appended to `cache`, each computed as prefill() over the aligned chunks
        (positions cut at multiples of `block`) would compute it, bit for bit (a row depends only on
        itself and the positions before it: engine/cpu/prefill.py), but in passes of up to
        PASS_ROWS rows, cut at chunk ends, that read every weight once for all their chunks (a
        100-row prompt: one pass instead of 64 + 36 rows, each reading all 2 GB of a bfloat16
        backbone)."""
        tokens, mask = np.asarray(tokens), np.asarray(mask)
        start, stop = cache.offset, cache.offset + len(tokens)
        chunks = aligned_bounds(start, stop, block)
        passes = [start]
        for prev, end in zip(chunks, chunks[1:]):  # passes end at chunk ends: PASS_ROWS rows or one chunk
            if end - passes[-1] > PASS_ROWS and prev > passes[-1]:
                passes.append(prev)
        passes.append(stop)
        hidden = None
        for p0, p1 in zip(passes, passes[1:]):
            hidden = self._prefill(cache, tokens[p0 - start:p1 - start], mask[p0 - start:p1 - start])
        return hidden

    def _prefill(self, cache: CpuStreamCache, tokens, mask) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int32)
        mask = np.asarray(mask, dtype=np.bool_)
        if tokens.ndim != 2 or tokens.shape[1] != self.K + 1 or mask.shape != tokens.shape or not len(tokens):
            raise InputError(f"prefill takes (T, {self.K + 1}) rows and a mask of the same shape, T >= 1; "
                             f"got {tokens.shape} and {mask.shape}")
        self._check_ids(np.where(mask, tokens, 0))
        x = embed_rows(self.packed, tokens, mask)
        hidden = backbone_prefill(self.native, self._product, cache.kv, cache.offset, x, self._workspace)
        cache.offset += len(tokens)
        return hidden

    # ---- frames --------------------------------------------------------------------------------
    def frames_from_hidden(self, hidden, draws) -> np.ndarray:
        """One frame per stream from hidden states (B of (Db,)): codes (B, 32) int32."""
        h = _hidden_rows(hidden)
        self._check_draws(draws, len(h))
        return self.native.depth(h, draws)

    def step(self, caches, codes, draws) -> np.ndarray:
        """Feed each stream's frame (B, 32) at its cache's offset, then draw its next frame (B, 32)."""
        codes, positions = self._feed(caches, codes)
        self._check_draws(draws, len(caches))
        out = self.native.step(codes, [c.kv for c in caches], positions, draws)
        for c in caches:
            c.offset += 1
        return out

    def frames(self, caches, codes, draws, hidden, hidden_draws) -> np.ndarray:
        """step() for `caches`, then frames from `hidden` (after prefills), through one depth pass:
        codes (len(caches) + len(hidden), 32). A stream's codes are those of step/frames_from_hidden."""
        parts = []
        if len(caches):
            parts.append(self.step_hidden(caches, codes))
        if len(hidden):
            parts.append(_hidden_rows(hidden))
        all_draws = [*draws, *hidden_draws]
        self._check_draws(all_draws, sum(len(p) for p in parts))
        return self.native.depth(np.concatenate(parts), all_draws)

    def step_hidden(self, caches, codes) -> np.ndarray:
        """Feed each stream's frame and return the backbone states (B, Db) instead of drawing (tests)."""
        codes, positions = self._feed(caches, codes)
        hidden = self.native.backbone_step(codes, [c.kv for c in caches], positions)
        for c in caches:
            c.offset += 1
        return hidden

    def start(self, result) -> None:
        """Nothing to start: the native calls return finished results."""

    def frame_logits(self, hidden, codes) -> np.ndarray:
        """Teacher-forced logits (B, 32, V) float32 of frames `codes` (B, 32) after states hidden (B, Db)."""
        h = np.asarray(hidden, dtype=np.float32).reshape(-1, self.config.backbone.dim)
        codes = np.asarray(codes, dtype=np.int32).reshape(len(h), self.K)
        _, logits = self.native.depth(h, None, forced=codes, logits=True)
        return logits

    # ---- checks --------------------------------------------------------------------------------
    def _feed(self, caches, codes):
        codes = np.asarray(codes, dtype=np.int32).reshape(len(caches), self.K)
        V = self.config.audio_vocab_size
        if codes.size and (codes.min() < 0 or codes.max() >= V):
            raise InputError(f"audio codes must lie in 0..{V - 1}")
        for c in caches:
            if c.offset >= c.max_positions:
                raise ContextTooLongError(
                    f"the KV cache holds {c.max_positions} positions and all are used. "
                    "Shorten the context or the text, or ask for less audio.")
        if len({id(c) for c in caches}) != len(caches):
            raise InputError("a stream's cache appears twice in one step")
        return codes, np.array([c.offset for c in caches], dtype=np.int32)

    def _check_ids(self, tokens: np.ndarray) -> None:
        V, text = self.config.audio_vocab_size, self.config.text_vocab_size
        if tokens[:, :self.K].min() < 0 or tokens[:, :self.K].max() >= V:
            raise InputError(f"audio codes must lie in 0..{V - 1}")
        if tokens[:, self.K].min() < 0 or tokens[:, self.K].max() >= text:
            raise InputError(f"text tokens must lie in 0..{text - 1} (this model's text vocabulary)")

    @staticmethod
    def _check_draws(draws, B: int) -> None:
        if len(draws) != B:
            raise InputError(f"{B} streams need {B} draws, got {len(draws)}")
        for d in draws:
            if d.temperature is None or d.temperature < 0:
                raise InputError(f"temperature must be >= 0, got {d.temperature}")
