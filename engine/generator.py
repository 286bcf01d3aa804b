"""The stateful generator: KV caches per conversation, the prompt rows they hold, and the frame loop.

A request is a prompt — rows of 33 columns (32 audio codes + 1 text token) and their mask — and a
cache key (a session id; None for calls that name none). For each key the generator keeps a stream
(engine/streams.py): a backbone KV cache and the rows it holds (the prompt of that key's last
request plus the frames it generated and fed back). A new request keeps the longest common prefix
of those rows, trims the cache to it and prefills only the rest, so a conversation's next turn
computes just the previous turn's new rows and its own text instead of the whole history — also
while other conversations take turns in between. Streams are evicted least recently used under a
byte budget.

The generator computes through a FrameBackend (engine/backends): prefill of rows, a batched frame
step, frames from hidden states. Draws are keyed by (seed, frame, codebook) (backends `Draw`), so a
request's codes depend on nothing but its own inputs.

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

Frame loop (one frame = 80 ms of audio), as ticks over a set of requests (one alone, or a batch,
engine/scheduler.py):
  prefill the new prompt rows -> last hidden state h -> backend.frames_from_hidden -> codes (32,)
  then, every tick, while no stop rule fires: feed each request's frame back as one row of one
  batched backend.step -> the next frames.
The next frame's computation is started (backend.start) before the current frame is inspected,
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

from engine.backends import Draw
from engine.errors import ContextTooLongError, InputError
from engine.constants import FRAME_RATE, MS_PER_FRAME, NUM_CODEBOOKS, ROW_WIDTH
from engine.streams import Stream, StreamStore


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


def stream_seed(seed: int, index: int) -> int:
    """The draw seed of piece `index` of a call with `seed` (each piece is its own stream of draws)."""
    x = (int(seed) * 0x9E3779B1 + int(index) * 0x85EBCA77 + 0x632BE5AB) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


class Request:
    """One utterance being generated: its prompt, its stream, its draws, stop rules and output.

    Made by Generator.admit; advanced by Generator.prefill_some (its prompt, in aligned chunks) and
    Generator.tick (one frame per tick, alongside other requests). Output chunks go to `emit`
    (appended to `outbox` unless replaced)."""

    def __init__(self, gen: "Generator", stream: Stream, tokens, mask, keep: int, *, max_frames: int,
                 draw: Draw, cap_reason: str, streaming: bool, chunk_frames: int, decode: bool,
                 on_frame, request_id: int, private: bool):
        self.gen = gen
        self.stream = stream
        self.private = private  # a stream of its own (its key was busy): dropped at the end
        self.id = request_id
        self.tokens, self.mask = tokens, mask
        self.next_row = keep  # the first prompt row not yet prefilled
        self.prefill_tokens, self.cached_tokens = len(tokens) - keep, keep
        self.max_frames = max_frames
        self.draw = draw
        self.cap_reason = cap_reason
        self.streaming = streaming
        self.chunk_frames = chunk_frames
        self.decode = decode
        self.on_frame = on_frame
        self.result = None  # the current (not yet inspected) frame: row `index` of `result`
        self.index = 0
        self.hidden = None  # the last prefilled row's backbone state, until the first frame is drawn
        self.first_pending = False  # prefilled; the first frame is drawn by the next tick
        self.frames: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []  # frames not yet handed out
        self.decoder = gen.codec.streaming_decoder() if (decode and streaming) else None
        self.first_audio: float | None = None
        self.chunk_index = 0
        self.stop_reason: str | None = None
        self.done = False
        self.clock = _Clock()
        self.outbox: list[GeneratedChunk] = []
        self.emit: Callable[[GeneratedChunk], None] = self.outbox.append
        self.error: BaseException | None = None  # why it failed (batched runs)
        self.owner = None  # who drives it (engine/scheduler.py)

    @property
    def prefilled(self) -> bool:
        return self.result is not None or self.first_pending

    def launches(self) -> bool:
        """Whether this tick feeds the current frame back (a next frame may be needed)."""
        return len(self.frames) + 1 < self.max_frames

    def _chunk(self, codes, audio, final: bool) -> GeneratedChunk:
        frames = np.stack(self.frames) if self.frames else np.zeros((0, NUM_CODEBOOKS), np.int32)
        out = GeneratedChunk(
            codes=codes, audio=audio, frames=frames, is_final=final,
            stop_reason=self.stop_reason if final else None, prefill_tokens=self.prefill_tokens,
            cached_tokens=self.cached_tokens,
            first_audio_time=self.first_audio if self.first_audio is not None else time.perf_counter(),
            compute_seconds=self.clock.busy(), chunk_index=self.chunk_index,
        )
        self.chunk_index += 1
        return out

    def take(self, frame: np.ndarray) -> None:
        """Inspect the current frame: stop rules, progress, streamed chunks."""
        if is_end_of_speech(frame):
            self.stop_reason = STOP_END_OF_SPEECH
            return self.finish()
        self.frames.append(frame)
        self.pending.append(frame)
        if self.on_frame is not None:
            self.on_frame(len(self.frames), self.max_frames)
        if len(self.frames) >= self.max_frames:
            self.stop_reason = self.cap_reason
            return self.finish()
        if self.streaming and len(self.pending) >= self.chunk_frames:
            chunk = np.stack(self.pending)
            self.pending = []
            audio = self.decoder.decode(chunk.T) if self.decoder is not None else None
            if audio is not None:
                mx.eval(audio)
                if self.first_audio is None:
                    self.first_audio = time.perf_counter()
            self.emit(self._chunk(chunk, audio, final=False))

    def finish(self) -> None:
        """The final chunk: what is left (streaming) or everything (not streaming)."""
        chunk = np.stack(self.pending) if self.pending else np.zeros((0, NUM_CODEBOOKS), np.int32)
        self.pending = []
        audio = None
        if self.decode:
            if not len(chunk):
                audio = mx.zeros((0,), mx.float32)
            elif self.decoder is not None:
                audio = self.decoder.decode(chunk.T)
            else:
                audio = self.gen.codec.decode(chunk.T)
            mx.eval(audio)
        if self.first_audio is None:
            self.first_audio = time.perf_counter()
        self.done = True
        self.release()
        self.emit(self._chunk(chunk, audio, final=True))

    def release(self) -> None:
        """Give the stream back (its rows stay cached for the key's next request)."""
        self.done = True
        if self.stream.owner == self.id:
            self.stream.owner = None
            if self.private:  # its cache serves the next private stream
                self.gen.streams.recycle(self.stream)


class Generator:
    """Frame generator over one FrameBackend, with KV caches per cache key.

    `generate` runs one request in the caller's thread; engine/scheduler.py runs many at once
    through the same `admit` / `prefill_some` / `tick`. Not thread-safe: one thread drives it.
    `codec` (optional) has decode((K, F)) and streaming_decoder().
    """

    def __init__(self, backend, codec=None, max_positions: int | None = None,
                 prefill_block: int = PREFILL_BLOCK, cache_bytes: int | None = None):
        self.backend = backend
        self.codec = codec
        if max_positions is None:
            max_positions = int(getattr(backend, "max_positions", 2048))
        if prefill_block < 1:
            raise InputError(f"prefill_block must be at least 1, got {prefill_block}")
        self.max_positions = max_positions
        self.block = int(prefill_block)
        self.streams = StreamStore(backend, max_positions, cache_bytes)
        self._request = 0  # bumped by every request
        self.scheduler = None  # engine/scheduler.py, when requests are batched (see `batch`)

    def batch(self, max_batch: int = 8, prefill_chunks: int = 1):
        """Batch requests from now on: `generate` submits to a Scheduler, and iterating any
        request's chunks advances all of them together (one thread drives them). -> the Scheduler.
        max_batch=1 runs requests one after another (no batching)."""
        from engine.scheduler import Scheduler

        if self.scheduler is not None and not self.scheduler.idle():
            raise InputError("requests are running: let them finish before changing the batch")
        self.scheduler = Scheduler(self, max_batch=max_batch, prefill_chunks=prefill_chunks)
        self._kernels_for(max_batch)
        return self.scheduler

    def _kernels_for(self, max_batch: int) -> None:
        """The backend's kernels for this batch size; cached rows from other kernels are dropped,
        so a stream's rows all come from the kernels that continue it."""
        if self.backend.batch_kernels(max_batch):
            self.reset()

    def unbatch(self) -> None:
        """Back to one request at a time in the caller's thread."""
        if self.scheduler is not None and not self.scheduler.idle():
            raise InputError("requests are running: let them finish before changing the batch")
        self.scheduler = None
        self._kernels_for(1)

    # -- cache state (of one key; None: the calls that name no key) ----------------------------

    def stream(self, key=None) -> Stream:
        return self.streams.get(key)

    def held_rows_of(self, key=None) -> int:
        stream = self.streams.peek(key)
        return stream.rows.count if stream is not None else 0

    @property
    def held_rows(self) -> int:
        """Rows the anonymous KV cache holds now (prompt rows and fed-back frames)."""
        return self.held_rows_of(None)

    def held(self, key=None) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the rows the KV cache of `key` holds (canonical tokens, mask)."""
        tokens, mask = self.stream(key).rows.view()
        return tokens.copy(), mask.copy()

    def canonical_rows_of(self, key=None) -> int:
        stream = self.streams.peek(key)
        return stream.canonical if stream is not None else 0

    @property
    def canonical_rows(self) -> int:
        """Rows of the anonymous cache whose keys/values are final (computed in canonical blocks);
        a multiple of the block size, or everything when the block size is 1."""
        return self.canonical_rows_of(None)

    def reset(self, key=...) -> None:
        """Forget the cached rows of `key` (default: of every stream no request is using)."""
        keys = self.streams.keys() if key is ... else [key] if key in self.streams else []
        for k in keys:
            stream = self.streams.peek(k)
            if key is not ... or stream.owner is None:
                stream.reset()

    # -- one request ---------------------------------------------------------------------------

    def plan_prefill(self, tokens: np.ndarray, mask: np.ndarray, reuse_cache: bool = True,
                     stream: Stream | None = None) -> int:
        """Rows of this (canonical) prompt the cache can keep: the common prefix, within the
        canonical rows, rounded down to a block boundary; and never the whole prompt, as the hidden
        state of its last row starts the first frame (its block is recomputed)."""
        if not reuse_cache:
            return 0
        stream = stream if stream is not None else self.stream(None)
        held_tokens, held_mask = stream.rows.view()
        keep = min(common_prefix_length(held_tokens, held_mask, tokens, mask), stream.canonical)
        return min(keep // self.block, (len(tokens) - 1) // self.block) * self.block

    def check(self, tokens: np.ndarray, mask: np.ndarray, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """The canonical prompt rows, or InputError / ContextTooLongError before any work."""
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
        return tokens, mask

    def admit(self, tokens, mask, *, max_frames: int, draw: Draw | None = None,
              cap_reason: str = STOP_MAX_AUDIO_LENGTH, stream: bool = False, chunk_frames: int = 6,
              reuse_cache: bool = True, decode: bool = True, on_frame=None, cache_key=None,
              take_over: bool = False) -> Request:
        """A new request on the stream of `cache_key`, its cache trimmed to what it keeps.

        When another request is using that stream: `take_over` takes it (the other one fails when
        it next runs), else this request gets a private stream that starts from a copy of the
        canonical rows it shares with the busy one (the same codes as computing them again)."""
        tokens, mask = self.check(tokens, mask, max_frames)
        self._request += 1
        held = self.streams.get(cache_key)
        private = held.owner is not None and not take_over
        keep = self.plan_prefill(tokens, mask, reuse_cache, held)
        if private:  # its own stream, from a copy of the busy one's shared canonical rows
            target = self.streams.private(cache_key)
            target.take_prefix(held, keep)
        else:
            target = held
            target.trim_to(keep)
        target.owner = self._request
        request = Request(
            self, target, tokens, mask, keep, max_frames=max_frames, draw=draw or Draw(),
            cap_reason=cap_reason, streaming=stream, chunk_frames=max(1, int(chunk_frames)),
            decode=decode and self.codec is not None, on_frame=on_frame, request_id=self._request,
            private=private,
        )
        return request

    def prefill_some(self, request: Request, max_chunks: int | None = None) -> bool:
        """Prefill up to `max_chunks` aligned chunks of the request's prompt (all by default); when
        the prompt is done, start its first frame. True when the request is ready for ticks."""
        if request.prefilled:
            return True
        stream, tokens, mask = request.stream, request.tokens, request.mask
        request.clock.resume()
        try:
            a = request.next_row
            if a < len(tokens):  # up to max_chunks aligned chunks, in one call (see prefill_blocks)
                b = len(tokens)
                if max_chunks is not None:
                    b = min(b, (a // self.block + max(1, max_chunks)) * self.block)
                hidden = self.backend.prefill_blocks(stream.cache, tokens[a:b], mask[a:b], self.block)
                stream.rows.extend(tokens[a:b], mask[a:b])
                completed = b // self.block * self.block  # the last aligned chunk end within [a, b]
                if completed > a:
                    stream.canonical = completed
                request.next_row, request.hidden = b, hidden
            if request.next_row < len(tokens):
                return False
            request.first_pending = True  # its first frame joins the next tick's batched depth pass
            self.streams.evict()
            return True
        except BaseException:
            self.fail(request)
            raise
        finally:
            request.clock.pause()

    def fail(self, request: Request) -> None:
        """Drop a request after an error: its stream may hold rows nobody logged."""
        if request.stream.owner == request.id:
            request.stream.reset()
        request.release()

    def tick(self, requests: list[Request]) -> None:
        """One frame for every prefilled request: feed each one's current frame back (one batched
        step; a frame completing a canonical block recomputes the block through prefill), start the
        next frames, then inspect the current ones (stop rules, chunks)."""
        requests = [r for r in requests if r.prefilled and not r.done]
        if not requests:
            return
        for r in requests:
            r.clock.resume()
        try:
            self._tick(requests)
        except BaseException:
            for r in requests:
                self.fail(r)
            raise
        finally:
            for r in requests:
                r.clock.pause()

    def _tick(self, requests: list[Request]) -> None:
        firsts = [r for r in requests if r.first_pending]  # just prefilled: draw frame 0 from hidden
        others = [r for r in requests if not r.first_pending]
        feeders = [r for r in others if r.launches()]
        blocks = [r for r in feeders if self._completes_block(r)]
        rows = [r for r in feeders if r not in blocks]
        current = {r.id: np.asarray(r.result)[r.index] for r in blocks}  # waits for these frames
        hidden = [self._recompute_block(r, current[r.id]) for r in blocks] + [r.hidden for r in firsts]
        hidden_draws = [r.draw.at(len(r.frames) + 1) for r in blocks] + [r.draw.at(0) for r in firsts]
        launched: dict[int, tuple] = {}
        if rows or hidden:  # one batched depth pass for every stream's next frame
            codes = _gather([(r.result, r.index) for r in rows]) if rows else None
            draws = [r.draw.at(len(r.frames) + 1) for r in rows]
            result = self.backend.frames([r.stream.cache for r in rows], codes, draws, hidden, hidden_draws)
            self.backend.start(result)
            launched.update({r.id: (result, i) for i, r in enumerate(rows + blocks + firsts)})
        for r in others:
            frame = current.get(r.id)
            if frame is None:
                frame = np.asarray(r.result)[r.index]
            frame = frame.reshape(NUM_CODEBOOKS).astype(np.int32)
            if r.id in launched:
                if r not in blocks:  # (a block's rows were logged by _recompute_block)
                    r.stream.rows.extend(*(x[None] for x in frame_row(frame)))
                    if self.block == 1:  # one-row blocks: every row is canonical
                        r.stream.canonical = r.stream.rows.count
                r.result, r.index = launched[r.id]
            r.take(frame)
        for r in firsts:
            r.result, r.index = launched[r.id]
            r.hidden, r.first_pending = None, False

    def _completes_block(self, r: Request) -> bool:
        """Whether feeding r's current frame completes a canonical block (see the module doc)."""
        p = r.stream.rows.count  # the frame goes to position p
        return self.block > 1 and (p + 1) % self.block == 0 and p + 1 - self.block == r.stream.canonical

    def _recompute_block(self, r: Request, frame: np.ndarray):
        """Drop the block's provisional rows and compute the whole block (frame included) as one
        chunk; -> the hidden state of its last row."""
        stream = r.stream
        p = stream.rows.count
        start = p + 1 - self.block
        stream.trim_to(start)
        stream.rows.count = p  # the log's buffer still holds the provisional rows [start, p)
        stream.rows.extend(*(x[None] for x in frame_row(frame)))
        tokens, mask = stream.rows.tokens[start:p + 1], stream.rows.mask[start:p + 1]
        hidden = self.backend.prefill(stream.cache, tokens, mask)
        stream.canonical = p + 1
        return hidden

    def generate(self, tokens: np.ndarray, mask: np.ndarray, *, max_frames: int,
                 draw: Draw | None = None, cap_reason: str = STOP_MAX_AUDIO_LENGTH,
                 stream: bool = False, chunk_frames: int = 6, reuse_cache: bool = True,
                 decode: bool = True, on_frame: Callable[[int, int], None] | None = None,
                 cache_key=None) -> Iterator[GeneratedChunk]:
        """Generate one utterance after the prompt rows `tokens`/`mask` ((T, 33) each), in the
        caller's thread, on the stream of `cache_key`.

        Yields GeneratedChunk: one at the end, or (stream=True) one every `chunk_frames` frames
        plus a final one (which may hold no frames when the utterance ended right after a chunk).
        `on_frame(frames_so_far, max_frames)` is called after every audio frame. Unbatched, a newer
        request on the same key takes its stream over: this one then raises InputError when resumed.
        Batched (`batch`), a request whose key is busy gets a stream of its own for its duration.
        """
        options = dict(max_frames=max_frames, draw=draw, cap_reason=cap_reason, stream=stream,
                       chunk_frames=chunk_frames, reuse_cache=reuse_cache, decode=decode,
                       on_frame=on_frame, cache_key=cache_key)
        if self.scheduler is not None:  # batched: submitted now, advanced with the others
            return self.scheduler.iterate(self.scheduler.submit(tokens, mask, **options))
        return self._run(self.admit(tokens, mask, take_over=True, **options))

    def _run(self, request: Request) -> Iterator[GeneratedChunk]:
        try:
            self.prefill_some(request)
            while True:
                self.tick([request])
                while request.outbox:
                    yield request.outbox.pop(0)
                    if request.stream.owner != request.id and not request.done:
                        raise _Superseded()
                if request.done:
                    return
        except _Superseded:
            request.done = True
            raise InputError(
                "another generation started on this model before this one finished; "
                "finish (or close) one stream before starting the next"
            ) from None
        finally:
            request.release()


def _gather(parts: list[tuple]):
    """Rows `index` of results, stacked into one (B, 32) batch (the result itself when it is one)."""
    first = parts[0][0]
    if all(res is first for res, _ in parts) and [i for _, i in parts] == list(range(len(first))):
        return first
    if all(isinstance(res, np.ndarray) for res, _ in parts):
        return np.stack([np.asarray(res)[i] for res, i in parts])
    return mx.concatenate([mx.array(res)[i:i + 1] for res, i in parts], axis=0)


class _Superseded(Exception):
    """A newer request took over the stream while this one waited at a yield."""


class _Clock:
    """Seconds spent working, not counting the time between pause() and resume()."""

    def __init__(self):
        self._busy = 0.0
        self._since = None

    def pause(self) -> None:
        if self._since is not None:
            self._busy += time.perf_counter() - self._since
            self._since = None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def busy(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._busy + running
