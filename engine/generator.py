"""The stateful generator: one backbone KV cache, the prompt rows it holds, and the frame loop.

A request is a prompt — rows of 33 columns (32 audio codes + 1 text token) and their mask. The
generator remembers which rows its KV cache holds (the prompt of the last request plus the frames
it generated and fed back). A new request keeps the longest common prefix of those rows, trims the
cache to it and prefills only the rest, so a conversation's next turn computes just the previous
turn's new rows and its own text instead of the whole history.

The cache is only a cache: with `reuse_cache=False` (or after a restart, from stored turns) the
result must be the same codes, bit for bit. Floating point is not associative, and a matrix
product over 40 rows does not round row 3 the way a product over 10 rows does, so "the same rows
computed in other chunks" is not enough (we measured ~1e-6 differences, and one flipped sample in
a few 10-turn conversations, mostly at the top-k boundary). So every backbone position is computed
in ONE canonical way, whatever the history of requests:

  * positions are grouped in aligned blocks of `prefill_block` (B) rows: [0, B), [B, 2B), ...;
  * a complete block is always computed as one chunk of exactly those B rows, on top of the
    canonical blocks before it — when a prompt is prefilled, and also while generating: the step
    that feeds the frame completing a block recomputes the whole block in one chunk;
  * rows of the incomplete last block are provisional (a prompt's tail, frames fed one by one); a
    later request recomputes them, starting from the block's first row.

A request therefore keeps min(common prefix, canonical rows) rounded down to a block boundary, and
prefills from there in aligned chunks. Same inputs, same chunk shapes, same kernels: the same bits
(tests/test_generator_cache.py holds reuse and no-reuse conversations equal). The cost is < B extra
rows per request and one B-row chunk instead of a 1-row step every B frames. B = 1 keeps
everything (one row at a time) but makes long prefills slow.

Frame loop (one frame = 80 ms of audio):
  prefill the new prompt rows -> last hidden state h -> CSM.generate_frame(h) -> codes (32,)
  then, while no stop rule fires: feed the frame back as a row -> h -> the next frame.
The next frame's computation is started (mx.async_eval) before the current frame is inspected,
decoded and handed to the caller, so Python work and decoding overlap the model's work. The price
is one frame computed in vain after the end-of-speech frame.

Stop rules (checked in this order for every frame):
  1. end of speech: a frame whose 32 codes are all 0 (the reference's rule). It is not part of the
     audio, and nothing before it is trimmed, so the last word is never cut by us.
  2. the frame cap: `max_frames`, the smaller of max_audio_length_ms / 80 and a generous estimate
     from the text length (`text_frame_cap`), so a run-away generation ends.

Streaming: frames are decoded in chunks of `chunk_frames` with the codec's stateful streaming
decoder (never reset inside an utterance, so the chunks join without clicks); joined, they equal
the whole-utterance decode.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import attrs
import mlx.core as mx
import numpy as np

from engine.errors import ContextTooLongError, InputError
from engine.constants import FRAME_RATE, MS_PER_FRAME, NUM_CODEBOOKS, ROW_WIDTH


# Run-away protection from the text length. Natural reading runs ~2.5 words/s (~15 chars/s);
# these bounds are slower than any natural pace, plus a fixed allowance for pauses and breaths,
# so a real utterance ends (all-zero frame) long before the cap, and a run-away one stops.
SLOWEST_WORDS_PER_SECOND = 1.5
SLOWEST_CHARS_PER_SECOND = 8.0
PAUSE_ALLOWANCE_SECONDS = 3.0

# Backbone positions are computed in aligned blocks of this many rows (see "The cache is only a
# cache" above): big enough for prefill to run as efficient matrix-matrix products, small enough
# that the rows a request recomputes beyond its new ones stay few. Measured at full size (fp32,
# 2-core CPU), 512 rows in one chunk 11.5 s; in blocks of 128: 11.2 s, 64: 13.0 s, 32: 16.5 s,
# 16: 23.7 s; one 1-row step 0.5 s.
PREFILL_BLOCK = 64

STOP_END_OF_SPEECH = "end_of_speech"
STOP_TEXT_LENGTH_CAP = "text_length_cap"
STOP_MAX_AUDIO_LENGTH = "max_audio_length"


# ---------------------------------------------------------------------------------------------
# Pure arithmetic: caps, chunking, prefix matching
# ---------------------------------------------------------------------------------------------


def text_frame_cap(text: str, frame_rate: float = FRAME_RATE) -> int:
    """Most frames a line of `text` may plausibly need: the slowest plausible speech plus pauses."""
    words = len(text.split())
    chars = len(text.strip())
    seconds = PAUSE_ALLOWANCE_SECONDS + max(
        words / SLOWEST_WORDS_PER_SECOND, chars / SLOWEST_CHARS_PER_SECOND
    )
    return int(math.ceil(seconds * frame_rate))


def audio_length_frame_cap(max_audio_length_ms: float) -> int:
    """Frames in `max_audio_length_ms` of audio (80 ms per frame), as the reference counts them."""
    if max_audio_length_ms is None or not max_audio_length_ms > 0:
        raise InputError(
            f"max_audio_length_ms must be a positive number of milliseconds, got {max_audio_length_ms!r}"
        )
    return int(max_audio_length_ms // MS_PER_FRAME)


def frame_cap(text: str, max_audio_length_ms: float) -> tuple[int, str]:
    """(frames, which rule) — the stricter of the text-length cap and max_audio_length_ms."""
    by_text = text_frame_cap(text)
    by_length = audio_length_frame_cap(max_audio_length_ms)
    if by_text < by_length:
        return by_text, STOP_TEXT_LENGTH_CAP
    return by_length, STOP_MAX_AUDIO_LENGTH


def chunk_frames_for(streaming_interval: float, frame_rate: float = FRAME_RATE) -> int:
    """Frames per streamed chunk for `streaming_interval` seconds of audio (at least one)."""
    if streaming_interval is None or not streaming_interval > 0:
        raise InputError(
            f"streaming_interval must be a positive number of seconds, got {streaming_interval!r}"
        )
    return max(1, int(round(streaming_interval * frame_rate)))


def canonical_rows(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with every masked-out column set to 0, so two rows compare equal when they embed equal."""
    tokens = np.asarray(tokens, dtype=np.int32)
    mask = np.asarray(mask, dtype=np.bool_)
    if tokens.ndim != 2 or tokens.shape[1] != ROW_WIDTH or mask.shape != tokens.shape:
        raise InputError(
            f"prompt rows must be (T, {ROW_WIDTH}) tokens with a mask of the same shape, "
            f"got {tokens.shape} and {mask.shape}"
        )
    return np.where(mask, tokens, 0).astype(np.int32), mask


def common_prefix_length(
    held_tokens: np.ndarray, held_mask: np.ndarray, tokens: np.ndarray, mask: np.ndarray
) -> int:
    """How many leading rows two canonical row lists share (tokens and mask both equal)."""
    n = min(len(held_tokens), len(tokens))
    if n == 0:
        return 0
    same = np.all(held_tokens[:n] == tokens[:n], axis=1) & np.all(held_mask[:n] == mask[:n], axis=1)
    differ = np.flatnonzero(~same)
    return int(differ[0]) if differ.size else n


def frame_row(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prompt row of one generated frame: its 32 codes, no text token."""
    tokens = np.zeros(ROW_WIDTH, dtype=np.int32)
    tokens[:NUM_CODEBOOKS] = codes
    mask = np.zeros(ROW_WIDTH, dtype=np.bool_)
    mask[:NUM_CODEBOOKS] = True
    return tokens, mask


def is_end_of_speech(codes: np.ndarray) -> bool:
    """The reference's end-of-utterance frame: all 32 codes are 0."""
    return not np.any(codes)


# ---------------------------------------------------------------------------------------------
# What the generator yields
# ---------------------------------------------------------------------------------------------


@attrs.define
class GeneratedChunk:
    """One piece of an utterance's output (the whole utterance when not streaming)."""

    codes: np.ndarray  # (f, 32) int32: the frames of this chunk
    audio: mx.array | None  # (f * frame_size,) float32, None without a codec
    frames: np.ndarray  # (F, 32) int32: every frame of the utterance so far
    is_final: bool  # last chunk of the utterance
    stop_reason: str | None  # set on the final chunk
    prefill_tokens: int  # backbone positions computed for the prompt
    cached_tokens: int  # prompt positions reused from the KV cache
    first_audio_time: float  # perf_counter() when this utterance's first audio was ready
    compute_seconds: float  # time spent working on this utterance so far (not waiting on the caller)
    chunk_index: int


class _RowLog:
    """The rows (canonical tokens + mask) the KV cache holds, in a preallocated buffer."""

    def __init__(self, capacity: int):
        self.tokens = np.zeros((capacity, ROW_WIDTH), dtype=np.int32)
        self.mask = np.zeros((capacity, ROW_WIDTH), dtype=np.bool_)
        self.count = 0

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[: self.count], self.mask[: self.count]

    def truncate(self, n: int) -> None:
        self.count = min(self.count, n)

    def extend(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        n = len(tokens)
        self.tokens[self.count : self.count + n] = tokens
        self.mask[self.count : self.count + n] = mask
        self.count += n


class Generator:
    """Stateful frame generator over one CSM network. Not thread-safe: one request at a time.

    `csm` follows the CSM contract (embed_rows, new_backbone_cache, backbone, generate_frame);
    `codec` (optional) has decode((K, F)) and streaming_decoder().
    """

    def __init__(self, csm, codec=None, max_positions: int | None = None,
                 prefill_block: int = PREFILL_BLOCK):
        self.csm = csm
        self.codec = codec
        if max_positions is None:
            max_positions = int(getattr(csm.config, "max_seq_len", 2048))
        if prefill_block < 1:
            raise InputError(f"prefill_block must be at least 1, got {prefill_block}")
        self.max_positions = max_positions
        self.block = int(prefill_block)
        self._cache = None  # list[KVCache], made on first use
        self._rows = _RowLog(max_positions)  # every row in the cache (canonical or provisional)
        self._canonical = 0  # rows [0, _canonical) were computed in canonical blocks
        self._request = 0  # bumped by every request; a stale iterator notices and stops

    # -- cache state ---------------------------------------------------------------------------

    @property
    def held_rows(self) -> int:
        """Rows the KV cache holds now (prompt rows and fed-back frames)."""
        return self._rows.count

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the rows the KV cache holds (canonical tokens, mask)."""
        tokens, mask = self._rows.view()
        return tokens.copy(), mask.copy()

    @property
    def canonical_rows(self) -> int:
        """Rows whose keys/values are final (computed in canonical blocks); a multiple of the block
        size, or everything when the block size is 1."""
        return self._canonical

    def reset(self) -> None:
        """Forget the cached rows (the buffers stay allocated)."""
        self._rows.truncate(0)
        self._canonical = 0
        if self._cache is not None:
            for layer in self._cache:
                layer.reset()

    def _backbone_cache(self):
        if self._cache is None:
            self._cache = self.csm.new_backbone_cache(self.max_positions)
        return self._cache

    def _trim_to(self, n: int) -> None:
        for layer in self._backbone_cache():
            layer.trim(layer.offset - n)
        self._rows.truncate(n)
        self._canonical = min(self._canonical, n)

    # -- one request ---------------------------------------------------------------------------

    def plan_prefill(self, tokens: np.ndarray, mask: np.ndarray, reuse_cache: bool = True) -> int:
        """Rows of this (canonical) prompt the cache can keep: the common prefix, within the
        canonical rows, rounded down to a block boundary; and never the whole prompt, as the hidden
        state of its last row starts the first frame (its block is recomputed)."""
        if not reuse_cache:
            return 0
        held_tokens, held_mask = self._rows.view()
        keep = min(common_prefix_length(held_tokens, held_mask, tokens, mask), self._canonical)
        return min(keep // self.block, (len(tokens) - 1) // self.block) * self.block

    def generate(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        *,
        max_frames: int,
        sampler: Callable[[mx.array], mx.array],
        cap_reason: str = STOP_MAX_AUDIO_LENGTH,
        stream: bool = False,
        chunk_frames: int = 6,
        reuse_cache: bool = True,
        decode: bool = True,
        on_frame: Callable[[int, int], None] | None = None,
    ) -> Iterator[GeneratedChunk]:
        """Generate one utterance after the prompt rows `tokens`/`mask` ((T, 33) each).

        Yields GeneratedChunk: one at the end, or (stream=True) one every `chunk_frames` frames
        plus a final one (which may hold no frames when the utterance ended right after a chunk).
        `on_frame(frames_so_far, max_frames)` is called after every audio frame.
        """
        tokens, mask = canonical_rows(tokens, mask)
        if len(tokens) == 0:
            raise InputError("the prompt is empty: give at least the text of the line to speak")
        if max_frames < 1:
            raise InputError(f"max_frames must be at least 1, got {max_frames}")
        if len(tokens) + max_frames > self.max_positions:
            raise ContextTooLongError(
                f"the prompt takes {len(tokens)} positions and up to {max_frames} frames may be "
                f"generated: {len(tokens) + max_frames} > {self.max_positions}. Drop older context, "
                "use a shorter voice prompt or text, or lower max_audio_length_ms."
            )
        return self._run(
            tokens, mask, max_frames=max_frames, sampler=sampler, cap_reason=cap_reason,
            stream=stream, chunk_frames=max(1, int(chunk_frames)), reuse_cache=reuse_cache,
            decode=decode and self.codec is not None, on_frame=on_frame,
        )

    def _run(self, tokens, mask, *, max_frames, sampler, cap_reason, stream, chunk_frames,
             reuse_cache, decode, on_frame) -> Iterator[GeneratedChunk]:
        self._request += 1
        request = self._request
        clock = _Clock()
        cache = self._backbone_cache()

        # Prefill only the rows the cache does not hold already.
        keep = self.plan_prefill(tokens, mask, reuse_cache)
        self._trim_to(keep)
        try:
            codes = self._prefill(tokens, mask, keep, cache, sampler)  # (1, 32) lazy
            self._rows.extend(tokens[keep:], mask[keep:])
        except BaseException:
            self.reset()
            raise
        prefill_tokens, cached_tokens = len(tokens) - keep, keep

        frames: list[np.ndarray] = []
        pending: list[np.ndarray] = []  # frames not yet handed out
        decoder = self.codec.streaming_decoder() if (decode and stream) else None
        first_audio: float | None = None
        chunk_index = 0
        stop_reason = None

        try:
            while True:
                # Start the next frame before looking at this one (it feeds this frame back).
                launched = len(frames) + 1 < max_frames
                if launched:
                    next_codes = self._step(codes, cache, sampler)
                    mx.async_eval(next_codes)
                frame = np.array(codes).reshape(NUM_CODEBOOKS).astype(np.int32)
                if launched:
                    self._rows.extend(*(r[None] for r in frame_row(frame)))
                if is_end_of_speech(frame):
                    stop_reason = STOP_END_OF_SPEECH
                    break
                frames.append(frame)
                pending.append(frame)
                if on_frame is not None:
                    on_frame(len(frames), max_frames)
                if not launched:
                    stop_reason = cap_reason
                    break
                if stream and len(pending) >= chunk_frames:
                    chunk = np.stack(pending)
                    pending = []
                    audio = decoder.decode(chunk.T) if decoder is not None else None
                    if audio is not None:
                        mx.eval(audio)
                        if first_audio is None:
                            first_audio = time.perf_counter()
                    out = GeneratedChunk(
                        codes=chunk, audio=audio, frames=np.stack(frames), is_final=False,
                        stop_reason=None, prefill_tokens=prefill_tokens, cached_tokens=cached_tokens,
                        first_audio_time=first_audio if first_audio is not None else time.perf_counter(),
                        compute_seconds=clock.busy(), chunk_index=chunk_index,
                    )
                    chunk_index += 1
                    clock.pause()
                    yield out
                    clock.resume()
                    if self._request != request:
                        raise _Superseded()
                codes = next_codes
        except GeneratorExit:
            raise
        except _Superseded:
            raise InputError(
                "another generation started on this model before this one finished; "
                "finish (or close) one stream before starting the next"
            ) from None
        except BaseException:
            self.reset()  # the cache may hold rows we did not log
            raise

        # The final chunk: what is left (streaming) or everything (not streaming).
        chunk = np.stack(pending) if pending else np.zeros((0, NUM_CODEBOOKS), np.int32)
        audio = None
        if decode:
            if decoder is not None:
                audio = decoder.decode(chunk.T) if len(chunk) else mx.zeros((0,), mx.float32)
            else:
                audio = self.codec.decode(chunk.T) if len(chunk) else mx.zeros((0,), mx.float32)
            mx.eval(audio)
        now = time.perf_counter()
        if first_audio is None:
            first_audio = now
        all_frames = np.stack(frames) if frames else np.zeros((0, NUM_CODEBOOKS), np.int32)
        yield GeneratedChunk(
            codes=chunk, audio=audio, frames=all_frames, is_final=True, stop_reason=stop_reason,
            prefill_tokens=prefill_tokens, cached_tokens=cached_tokens, first_audio_time=first_audio,
            compute_seconds=clock.busy(), chunk_index=chunk_index,
        )

    # -- model steps -----------------------------------------------------------------------------

    def _prefill(self, tokens: np.ndarray, mask: np.ndarray, start: int, cache, sampler) -> mx.array:
        """Run the backbone over the prompt rows from `start` (a block boundary) in aligned chunks;
        sample the first frame. -> (1, 32) lazy codes."""
        hidden = None
        for a in range(start, len(tokens), self.block):
            b = min(a + self.block, len(tokens))
            embeds = self.csm.embed_rows(mx.array(tokens[a:b])[None], mx.array(mask[a:b])[None])
            hidden = self.csm.backbone(embeds, cache)  # (1, b - a, D)
        self._canonical = len(tokens) // self.block * self.block
        return self.csm.generate_frame(hidden[:, -1, :], sampler)

    def _step(self, codes: mx.array, cache, sampler) -> mx.array:
        """Feed one frame (1, 32) back as a row; sample the next. -> (1, 32) lazy codes.

        The frame goes to position p. When it completes the block [p+1-B, p+1), the block's
        provisional rows are dropped and the whole block is computed as one chunk (canonical);
        otherwise the frame is one provisional row."""
        p = self._rows.count  # the rows log holds every row before this frame
        # The same row embedding as a prompt's audio row (embed_rows), so a frame fed back here and
        # the same frame prefilled later as context embed identically.
        row = mx.concatenate([codes.astype(mx.int32), mx.zeros((1, 1), mx.int32)], axis=1)  # (1, 33)
        start = p + 1 - self.block
        if self.block > 1 and (p + 1) % self.block == 0 and start == self._canonical:
            for layer in cache:
                layer.trim(layer.offset - start)
            tokens = mx.concatenate([mx.array(self._rows.tokens[start:p]), row], axis=0)  # (B, 33)
            mask = mx.concatenate([mx.array(self._rows.mask[start:p]), _FRAME_MASK[0]], axis=0)
            hidden = self.csm.backbone(self.csm.embed_rows(tokens[None], mask[None]), cache)
            self._canonical = p + 1
        else:
            hidden = self.csm.backbone(self.csm.embed_rows(row[:, None, :], _FRAME_MASK), cache)
            if self.block == 1:
                self._canonical = p + 1
        return self.csm.generate_frame(hidden[:, -1, :], sampler)


_FRAME_MASK = mx.array(frame_row(np.zeros(NUM_CODEBOOKS, np.int32))[1])[None, None, :]  # (1, 1, 33)


class _Superseded(Exception):
    """A newer request took over the cache while this one waited at a yield."""


class _Clock:
    """Seconds spent working, not counting the time the caller holds a yielded chunk."""

    def __init__(self):
        self._busy = 0.0
        self._since = time.perf_counter()

    def pause(self) -> None:
        self._busy += time.perf_counter() - self._since
        self._since = None

    def resume(self) -> None:
        self._since = time.perf_counter()

    def busy(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._busy + running
