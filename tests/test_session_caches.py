"""KV caches per conversation: sessions taking turns each reuse their own history; the caches are
kept least recently used under a byte budget; the same codes with reuse, without it, after eviction."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from engine.generator import Generator
from engine.segment import Segment

LINES = {
    "a": ["Hello there.", "Pretty good, thanks.", "I am great!", "So happy to talk."],
    "b": ["Good morning.", "What a day it was.", "See you soon.", "Take care now."],
}


def interleave(model, reuse: bool = True, seed: int = 3):
    """Sessions a and b take turns; each turn hears its own session's earlier turns."""
    history = {key: [] for key in LINES}
    out = {key: [] for key in LINES}
    for turn in range(4):
        for key in LINES:
            line = LINES[key][turn]
            *_, final = model.generate(line, voice=None, speaker=turn % 2, context=history[key],
                                       seed=seed + turn, max_audio_length_ms=1200, reuse_cache=reuse,
                                       cache_key=key)
            out[key].append((final.frames, final.prefill_tokens, final.cached_tokens))
            history[key].append(Segment(turn % 2, final.text, codes=final.frames))
    return out


def with_generator(model, **kw):
    clone = copy.copy(model)
    clone.generator = Generator(model.backend, model.codec, model.max_positions, **kw)
    return clone


@pytest.fixture(scope="module")
def roomy(tiny_model):
    model = with_generator(tiny_model)
    return model, interleave(model)


def test_interleaved_sessions_prefill_only_their_new_rows(tiny_model, roomy):
    model, reused = roomy
    fresh = interleave(with_generator(tiny_model), reuse=False)
    block = model.generator.block
    for key in LINES:
        for turn in range(4):
            frames, computed, cached = reused[key][turn]
            assert np.array_equal(frames, fresh[key][turn][0]), (key, turn)
            if turn == 0:
                continue
            new_text = len(model.tokenizer.encode_segment(turn % 2, LINES[key][turn]))
            # this turn's text rows, the previous turn's last frame and end-of-speech row (it stopped
            # at the frame cap, so neither was fed back), and less than one canonical block
            assert new_text + 2 <= computed < new_text + 2 + block, (key, turn, computed)
        assert reused[key][3][2] >= block  # the last turn kept whole blocks of its own history
    assert set(model.generator.streams.keys()) == {"a", "b"}


def test_least_recently_used_caches_go_first_under_the_budget(tiny_model):
    one = tiny_model.backend.new_cache(tiny_model.max_positions).nbytes
    model = with_generator(tiny_model, cache_bytes=2 * one)
    for key in ["a", "b", "c"]:
        list(model.generate("Hi.", voice=None, seed=1, max_audio_length_ms=160, cache_key=key))
    streams = model.generator.streams
    assert streams.keys() == ["b", "c"] and streams.evictions == 1
    assert streams.nbytes <= streams.budget_bytes
    list(model.generate("Hi.", voice=None, seed=1, max_audio_length_ms=160, cache_key="b"))
    list(model.generate("Hi.", voice=None, seed=1, max_audio_length_ms=160, cache_key="d"))
    assert streams.keys() == ["b", "d"]


def test_an_evicted_session_gives_the_same_codes(tiny_model, roomy):
    one = tiny_model.backend.new_cache(tiny_model.max_positions).nbytes
    small = with_generator(tiny_model, cache_bytes=one)  # every other session evicts the last
    evicted, kept = interleave(small), roomy[1]
    assert small.generator.streams.evictions > 0
    for key in LINES:
        for (a, _, cached), (b, _, _) in zip(evicted[key], kept[key]):
            assert np.array_equal(a, b) and cached == 0
