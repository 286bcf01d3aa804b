"""The generator's bookkeeping: prefix reuse, stop rules, chunking — on a transparent fake network,
then the same promises on the tiny random CSM (same codes with and without reuse)."""

from __future__ import annotations

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from engine.backends import prefill_per_chunk
from engine.errors import ContextTooLongError, InputError
from engine.generator import (
    STOP_END_OF_SPEECH,
    STOP_MAX_AUDIO_LENGTH,
    STOP_TEXT_LENGTH_CAP,
    Generator,
    chunk_frames_for,
    common_prefix_length,
    canonical_rows,
    frame_cap,
    frame_row,
    text_frame_cap,
)
from engine.segment import Segment


# ------------------------------------------------------------------------------------------------
# A fake network whose hidden state is the running sum of its rows, so any cache mistake shows.
# ------------------------------------------------------------------------------------------------


class FakeCache:
    """A backend StreamCache holding one number per position."""

    def __init__(self, max_positions):
        self.values = np.zeros(max_positions)
        self.offset = 0

    def append(self, values):
        if self.offset + len(values) > len(self.values):
            raise ContextTooLongError("fake cache full")
        self.values[self.offset:self.offset + len(values)] = values
        self.offset += len(values)
        return self.values[: self.offset].sum()

    def trim_to(self, n):
        self.offset = min(self.offset, n)

    def copy_from(self, other, n):
        self.values[:n] = other.values[:n]
        self.offset = n

    def reset(self):
        self.offset = 0

    @property
    def nbytes(self):
        return self.values.nbytes


class FakeBackend:
    """A FrameBackend whose hidden state is the running sum over positions of (row value + 1000 *
    size of the chunk that computed the position): like floating point, a position's keys depend
    on how it was chunked."""

    name, detail = "fake", "fake"

    def __init__(self, max_seq_len=64):
        self.max_positions = max_seq_len
        self.script: list[int] = []  # per frame drawn: 0 -> the all-zero frame

    def new_cache(self, max_positions):
        return FakeCache(max_positions)

    def prefill(self, cache, tokens, mask):
        rows = np.where(mask, tokens, 0).sum(axis=1) + 1000 * len(tokens)
        return cache.append(rows)

    def prefill_blocks(self, cache, tokens, mask, block):
        return prefill_per_chunk(self, cache, tokens, mask, block)

    def step(self, caches, codes, draws):
        codes = np.asarray(codes)
        hidden = [c.append([codes[b].sum() + 1000]) for b, c in enumerate(caches)]
        return self.frames_from_hidden(hidden, draws)

    def frames_from_hidden(self, hidden, draws):
        out = []
        for h in hidden:
            base = int(h) % 997 + 1  # never 0
            codes = (base + np.arange(32)) % 2048 + (np.arange(32) == 0)
            if self.script and self.script.pop(0) == 0:
                codes = np.zeros(32)
            out.append(codes)
        return np.array(out, dtype=np.int32)

    def frames(self, caches, codes, draws, hidden, hidden_draws):
        parts = ([self.step(caches, codes, draws)] if len(caches) else []) + (
            [self.frames_from_hidden(hidden, hidden_draws)] if len(hidden) else [])
        return np.concatenate(parts)

    def batch_kernels(self, max_batch):
        return False

    def start(self, result):
        pass


class FakeCodec:
    frame_size = 4

    def decode(self, codes):  # (K, F) -> (F * 4,)
        return mx.repeat(mx.array(codes[0].astype(np.float32)), self.frame_size)

    def streaming_decoder(self):
        return SimpleNamespace(decode=self.decode, reset=lambda: None)


def text_rows(ids):
    tokens = np.zeros((len(ids), 33), np.int32)
    tokens[:, 32] = ids
    mask = np.zeros((len(ids), 33), bool)
    mask[:, 32] = True
    return tokens, mask


def audio_rows(codes, eos=True):
    rows = [frame_row(c) for c in codes]
    if eos:
        rows.append(frame_row(np.zeros(32, np.int32)))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def cat(*parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def run(gen, prompt, **kw):
    kw.setdefault("max_frames", 8)
    return list(gen.generate(*prompt, **kw))


# ------------------------------------------------------------------------------------------------
# Pure arithmetic
# ------------------------------------------------------------------------------------------------


def test_text_frame_cap_is_generous_but_bounded():
    short = text_frame_cap("Hi.")
    line = text_frame_cap("Hello from Sesame, how are you doing today?")  # 8 words, 43 chars
    assert short >= 3 * 12.5  # the pause allowance alone
    # slower than natural speech (~2.5 words/s) yet finite: between 1x and 4x of natural pace
    assert 8 / 2.5 * 12.5 < line < 4 * 8 / 2.5 * 12.5 + 3 * 12.5
    assert text_frame_cap("word " * 100) > text_frame_cap("word " * 10)


def test_frame_cap_takes_the_stricter_rule():
    assert frame_cap("Hi.", 90_000)[1] == STOP_TEXT_LENGTH_CAP
    frames, reason = frame_cap("word " * 200, 10_000)
    assert (frames, reason) == (125, STOP_MAX_AUDIO_LENGTH)
    with pytest.raises(InputError):
        frame_cap("Hi.", 0)


def test_chunk_frames_for_interval():
    assert chunk_frames_for(0.5) == 6  # 6.25 frames -> 6 (0.48 s)
    assert chunk_frames_for(0.01) == 1
    assert chunk_frames_for(2.0) == 25
    with pytest.raises(InputError):
        chunk_frames_for(0)


def test_common_prefix_ignores_masked_out_columns():
    a = cat(text_rows([5, 6, 7]), audio_rows(np.ones((2, 32), np.int32)))
    b_tokens, b_mask = a[0].copy(), a[1].copy()
    b_tokens[0, 3] = 99  # garbage under the mask of a text row
    ca, cb = canonical_rows(*a), canonical_rows(b_tokens, b_mask)
    assert common_prefix_length(*ca, *cb) == 6
    b_tokens[4, 0] = 2  # a real difference in the second audio row
    assert common_prefix_length(*ca, *canonical_rows(b_tokens, b_mask)) == 4
    short = canonical_rows(a[0][:2], a[1][:2])
    assert common_prefix_length(*ca, *short) == 2


# ------------------------------------------------------------------------------------------------
# The frame loop on the fake network
# ------------------------------------------------------------------------------------------------


def test_end_of_speech_frame_stops_and_is_not_audio():
    csm = FakeBackend()
    gen = Generator(csm, FakeCodec())
    csm.script = [1, 1, 1, 0]
    (out,) = run(gen, text_rows([3, 4]))
    assert out.is_final and out.stop_reason == STOP_END_OF_SPEECH
    assert out.codes.shape == (3, 32) and out.codes.all()
    assert out.audio.shape == (3 * FakeCodec.frame_size,)


def test_frame_cap_stops_with_its_reason():
    gen = Generator(FakeBackend(), FakeCodec())
    (out,) = run(gen, text_rows([3, 4]), max_frames=5, cap_reason=STOP_TEXT_LENGTH_CAP)
    assert out.codes.shape == (5, 32)
    assert out.stop_reason == STOP_TEXT_LENGTH_CAP
    # the last frame was never fed back: prompt + 4 frames held
    assert gen.held_rows == 2 + 4


def test_streaming_chunks_join_to_the_whole():
    csm = FakeBackend()
    whole = run(Generator(csm, FakeCodec()), text_rows([3, 4]), max_frames=5)[0]
    chunks = run(Generator(csm, FakeCodec()), text_rows([3, 4]), max_frames=5, stream=True, chunk_frames=2)
    assert [len(c.codes) for c in chunks] == [2, 2, 1]
    assert [c.is_final for c in chunks] == [False, False, True]
    assert np.array_equal(np.concatenate([c.codes for c in chunks]), whole.codes)
    assert np.array_equal(chunks[-1].frames, whole.codes)
    joined = np.concatenate([np.array(c.audio) for c in chunks])
    assert np.array_equal(joined, np.array(whole.audio))


def test_stream_ending_on_a_chunk_boundary_yields_an_empty_final_chunk():
    csm = FakeBackend()
    csm.script = [1, 1, 1, 1, 0]
    chunks = run(Generator(csm, FakeCodec()), text_rows([3]), stream=True, chunk_frames=2)
    assert [len(c.codes) for c in chunks] == [2, 2, 0]
    assert chunks[-1].stop_reason == STOP_END_OF_SPEECH and chunks[-1].audio.shape == (0,)


def test_context_too_long_is_refused_before_any_work():
    gen = Generator(FakeBackend(max_seq_len=16), FakeCodec())
    with pytest.raises(ContextTooLongError, match="10 positions.*8 frames"):
        gen.generate(*text_rows(list(range(1, 11))), max_frames=8)
    assert gen.held_rows == 0


@pytest.mark.parametrize("block", [1, 4, 32])
def test_reuse_prefills_only_new_rows_and_gives_the_same_codes(block):
    csm_a, csm_b = FakeBackend(max_seq_len=256), FakeBackend(max_seq_len=256)
    reuse = Generator(csm_a, FakeCodec(), prefill_block=block)
    fresh = Generator(csm_b, FakeCodec(), prefill_block=block)
    history = []
    for turn in range(6):
        text = text_rows([10 + turn, 20 + turn, 30 + turn])
        prompt = cat(*history, text)
        script = [1] * (3 + 2 * turn) + [0]
        csm_a.script, csm_b.script = list(script), list(script)
        canonical_before = reuse.canonical_rows
        (a,) = run(reuse, prompt, max_frames=20)
        (b,) = run(fresh, prompt, max_frames=20, reuse_cache=False)
        assert np.array_equal(a.codes, b.codes)  # chunk-sensitive keys, yet the same codes
        assert b.prefill_tokens == len(prompt[0]) and b.cached_tokens == 0
        assert a.prefill_tokens + a.cached_tokens == len(prompt[0])
        if turn == 0:
            assert a.prefill_tokens == 3
        else:
            # the previous turn's frames and end-of-speech row were fed back while generating;
            # whole blocks of them were made canonical, so only this turn's three text rows and
            # the rows of the last incomplete block are computed
            assert a.cached_tokens == canonical_before
            assert 3 <= a.prefill_tokens < 3 + block
            if block == 1:
                assert a.prefill_tokens == 3
        history += [text, audio_rows(a.codes)]


def test_keeping_provisional_rows_would_change_the_codes():
    """The fake is as sensitive as floating point: a prompt prefilled in a different chunking
    (block 4 vs the whole prompt in one chunk) gives other codes. The canonical blocks matter."""
    prompt = text_rows(list(range(1, 11)))
    (a,) = run(Generator(FakeBackend(), FakeCodec(), prefill_block=4), prompt)
    (b,) = run(Generator(FakeBackend(), FakeCodec(), prefill_block=64), prompt)
    assert not np.array_equal(a.codes, b.codes)


@pytest.mark.parametrize("block, expect", [(1, (1, 3)), (4, (2, 4))])
def test_same_prompt_twice_recomputes_only_the_last_block(block, expect):
    gen = Generator(FakeBackend(), FakeCodec(), prefill_block=block)
    prompt = text_rows([3, 4, 5, 6] if block == 1 else [3, 4, 5, 6, 7, 8])
    first = run(gen, prompt)[0]
    again = run(gen, prompt)[0]
    assert (again.prefill_tokens, again.cached_tokens) == expect
    assert np.array_equal(first.codes, again.codes)


def test_abandoned_stream_leaves_a_consistent_cache():
    csm = FakeBackend()
    gen = Generator(csm, FakeCodec(), prefill_block=2)
    prompt = text_rows([3, 4, 5])
    stream = gen.generate(*prompt, max_frames=8, stream=True, chunk_frames=2)
    first = next(stream)
    stream.close()
    held_tokens, _ = gen.held()
    assert len(held_tokens) == 3 + 2  # prompt + the two frames fed back (one in flight counted)
    assert np.array_equal(held_tokens[3:5, :32], first.codes)
    assert gen.canonical_rows == 4
    # a follow-up that shares the prompt and the two frames reuses them and matches a fresh run
    follow = cat(prompt, audio_rows(first.codes, eos=False), text_rows([7]))
    (a,) = run(gen, follow)
    (b,) = run(Generator(FakeBackend(), FakeCodec(), prefill_block=2), follow)
    assert (a.prefill_tokens, a.cached_tokens) == (2, 4)
    assert np.array_equal(a.codes, b.codes)


def test_a_second_request_supersedes_a_paused_stream():
    gen = Generator(FakeBackend(), FakeCodec(), prefill_block=1)
    stream = gen.generate(*text_rows([3]), max_frames=8, stream=True, chunk_frames=1)
    next(stream)
    run(gen, text_rows([4, 5]))
    with pytest.raises(InputError, match="another generation"):
        next(stream)
    again = run(gen, text_rows([4, 5]))[0]  # the newer request's rows survived the stale one
    assert (again.prefill_tokens, again.cached_tokens) == (1, 1)


def test_requests_on_a_busy_key_share_its_canonical_rows():
    """Concurrent requests of one key (one voice prompt, different lines) get private streams that
    start from a copy of the canonical rows they share with the busy one: they prefill only what
    differs, and their codes are those of a fresh generator."""
    prefix = text_rows(list(range(1, 14)))  # 13 rows: 12 canonical after a first request (block 4)
    gen = Generator(FakeBackend(max_seq_len=128), FakeCodec(), prefill_block=4)
    run(gen, cat(prefix, text_rows([50])))
    assert gen.canonical_rows >= 12
    prompts = [cat(prefix, text_rows([60 + i, 70 + i])) for i in range(3)]
    scheduler = gen.batch(max_batch=4)
    try:
        streams = [gen.generate(*p, max_frames=6) for p in prompts]
        finals = [list(s)[-1] for s in streams]  # consumed one after another: all share each tick
    finally:
        scheduler.cancel_all()
        gen.unbatch()
    for prompt, final in zip(prompts, finals):
        (alone,) = run(Generator(FakeBackend(max_seq_len=128), FakeCodec(), prefill_block=4), prompt,
                       max_frames=6)
        assert np.array_equal(final.codes, alone.codes)
        assert (final.cached_tokens, final.prefill_tokens) == (12, len(prompt[0]) - 12)


# ------------------------------------------------------------------------------------------------
# The same promise on the tiny random CSM, through model.generate (a conversation that grows)
# ------------------------------------------------------------------------------------------------

LINES = ["Hello there.", "Hey, how are you?", "Pretty good, thanks.", "What about you?",
         "I am great!", "So happy to talk."]


def converse(model, reuse: bool, seed: int, temperature: float, stream: bool = False):
    """Six turns, each conditioned on every earlier turn's text and codes."""
    model.generator.reset()
    context, codes, prefill, canonical = [], [], [], []
    for turn, line in enumerate(LINES):
        canonical.append(model.generator.canonical_rows)
        results = list(model.generate(
            line, voice=None, speaker=turn % 2, context=context, seed=seed + turn,
            temperature=temperature, max_audio_length_ms=560, reuse_cache=reuse, stream=stream,
            streaming_interval=0.24,
        ))
        final = results[-1]
        codes.append(final.frames)
        prefill.append((final.prefill_tokens, final.cached_tokens, final.prompt_tokens))
        context.append(Segment(turn % 2, final.text, codes=final.frames))
    return codes, prefill, canonical


@pytest.mark.parametrize("seed, temperature", [(0, 0.9), (1, 0.9), (2, 0.0)])
def test_tiny_conversation_same_codes_with_and_without_reuse(tiny_model, seed, temperature):
    reused, prefill, canonical = converse(tiny_model, True, seed, temperature)
    fresh, fresh_prefill, _ = converse(tiny_model, False, seed, temperature)
    for turn, (a, b) in enumerate(zip(reused, fresh)):
        assert np.array_equal(a, b), f"turn {turn} differs"
    block = tiny_model.generator.block
    for turn in range(1, len(LINES)):
        new_text_rows = len(tiny_model.tokenizer.encode_segment(turn % 2, LINES[turn]))
        computed, cached, total = prefill[turn]
        assert fresh_prefill[turn] == (total, 0, total)  # without reuse: the whole history
        assert cached == canonical[turn]  # everything computed for the previous turn is kept
        # this turn's text rows, the previous turn's last frame and end-of-speech row (it stopped
        # at the frame cap, so neither was fed back), and the rows of the last incomplete block
        assert new_text_rows + 2 <= computed <= new_text_rows + 2 + block - 1


def test_tiny_conversation_streamed_equals_whole(tiny_model):
    whole, _, _ = converse(tiny_model, True, 5, 0.9)
    streamed, _, _ = converse(tiny_model, True, 5, 0.9, stream=True)
    assert all(np.array_equal(a, b) for a, b in zip(whole, streamed))
