"""Continuous batching (engine/scheduler.py) on tiny-random in float32: a request's codes in a batch
equal its codes alone, bit for bit; requests join a running batch, leave it, or are cancelled in
the middle without disturbing the others; a newcomer's prefill runs in chunks between frames."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

from engine.segment import Segment

REQUESTS = [
    dict(text="Hello there, how are you?", seed=1, temperature=0.9, top_k=50),
    dict(text="A second voice joins in.", seed=2, temperature=0.0, top_k=50, speaker=1),
    dict(text="And a third one, sampled hot.", seed=3, temperature=1.3, top_k=0),
]
COMMON = dict(voice=None, max_audio_length_ms=960, stream=True, streaming_interval=0.16)


@pytest.fixture(scope="module")
def models(tiny_model_path):
    from engine import load_model

    solo = load_model(str(tiny_model_path), dtype="float32")
    batched = load_model(str(tiny_model_path), dtype="float32")
    return solo, batched


@contextmanager
def batching(model, max_batch=8):
    scheduler = model.generator.batch(max_batch=max_batch)
    try:
        yield scheduler
    finally:
        scheduler.cancel_all()
        model.generator.unbatch()


def frames_alone(model, request, **extra):
    *_, final = model.generate(**{**COMMON, **request, **extra})
    return final.frames


def drain_round_robin(iterators):
    """Consume iterators side by side, one result at a time; -> each one's final result."""
    finals = [None] * len(iterators)
    live = dict(enumerate(iterators))
    while live:
        for i, it in list(live.items()):
            try:
                result = next(it)
            except StopIteration:
                del live[i]
                continue
            if result.is_final:
                finals[i] = result
    return finals


def test_batched_codes_equal_solo_codes(models):
    solo, batched = models
    expected = [frames_alone(solo, r) for r in REQUESTS]
    with batching(batched, 8) as scheduler:
        finals = drain_round_robin([batched.generate(**COMMON, **r) for r in REQUESTS])
    for final, want in zip(finals, expected):
        assert np.array_equal(final.frames, want)
    assert scheduler.peak_batch == 3
    frames = sum(len(f) for f in expected)
    assert scheduler.ticks < frames  # frames were computed together, not one request at a time


def test_join_leave_and_cancel_mid_batch(models):
    solo, batched = models
    long = dict(REQUESTS[0], max_audio_length_ms=1600)
    expected_long = frames_alone(solo, long)
    expected_late = frames_alone(solo, REQUESTS[1])
    with batching(batched, 8) as scheduler:
        first = batched.generate(**{**COMMON, **long})
        doomed = batched.generate(**COMMON, **REQUESTS[2])
        got_first = [next(first), next(first)]
        next(doomed)
        late = batched.generate(**COMMON, **REQUESTS[1])
        next(late)  # joins the running batch
        assert len(scheduler.batch) == 3
        doomed.close()  # cancelled mid-batch
        assert len(scheduler.batch) == 2
        finals = drain_round_robin([first, late])
    assert np.array_equal(finals[0].frames, expected_long)
    assert np.array_equal(finals[1].frames, expected_late)
    assert all(s.owner is None for s in map(batched.generator.streams.peek, batched.generator.streams.keys()))


def test_a_long_prefill_runs_in_chunks_between_the_others_frames(models):
    solo, batched = models
    history = [Segment(i % 2, f"Line number {i} of an old talk.", codes=np.full((20, 32), 7 + i, np.int32))
               for i in range(6)]  # ~200 prompt rows: several 64-row chunks
    newcomer = dict(REQUESTS[1], context=history, max_audio_length_ms=320)
    expected = frames_alone(solo, newcomer)
    expected_first = frames_alone(solo, dict(REQUESTS[0], max_audio_length_ms=1600))
    with batching(batched, 8) as scheduler:
        first = batched.generate(**{**COMMON, **REQUESTS[0], "max_audio_length_ms": 1600})
        next(first)
        late = batched.generate(**{**COMMON, **newcomer})
        ticks_before = scheduler.ticks
        late_first = next(late)  # its prefill + first chunk; `first` kept getting frames meanwhile
        assert scheduler.ticks - ticks_before >= 3
        finals = drain_round_robin([first, late])
    assert late_first.prefill_tokens > 3 * batched.generator.block
    assert np.array_equal(finals[1].frames, expected)
    assert np.array_equal(finals[0].frames, expected_first)


def test_max_batch_one_runs_requests_one_after_another(models):
    solo, batched = models
    expected = [frames_alone(solo, r) for r in REQUESTS[:2]]
    with batching(batched, 1) as scheduler:
        finals = drain_round_robin([batched.generate(**COMMON, **r) for r in REQUESTS[:2]])
    assert scheduler.peak_batch == 1
    for final, want in zip(finals, expected):
        assert np.array_equal(final.frames, want)


@pytest.mark.parametrize("backend", ["mlx", "cpu"])
def test_concurrent_requests_of_one_context_prefill_only_what_differs(tiny_model_path, backend):
    """Requests of one key arriving together: the first takes the key's stream, the others get
    private ones that start from a copy of the canonical rows they share (the history), on each
    backend's real caches; each one's codes equal its codes alone."""
    from engine import load_model
    from engine.backends import native_unavailable_reason
    from engine.options import EngineOptions

    options = EngineOptions.from_env(backend=backend)
    if backend == "cpu" and native_unavailable_reason(options):
        pytest.skip(f"native CPU backend unavailable: {native_unavailable_reason(options)}")
    solo, batched = (load_model(str(tiny_model_path), dtype="bfloat16", options=options) for _ in range(2))
    history = [Segment(i % 2, f"Line number {i} of an old talk.", codes=np.full((20, 32), 7 + i, np.int32))
               for i in range(4)]
    requests = [dict(r, context=history, max_audio_length_ms=480) for r in REQUESTS]
    expected = [frames_alone(solo, r) for r in requests]
    frames_alone(batched, dict(REQUESTS[0], context=history, max_audio_length_ms=160))  # the history, cached
    canonical = batched.generator.canonical_rows
    assert canonical >= 2 * batched.generator.block
    with batching(batched, 8):
        finals = drain_round_robin([batched.generate(**{**COMMON, **r}) for r in requests])
    for final, want in zip(finals, expected):
        assert np.array_equal(final.frames, want)
        assert final.cached_tokens == canonical  # the private streams too

    # a second round: the ended private streams' caches serve the new private streams (no fresh
    # memory), counted in the store's bytes, and the codes are those alone again
    store = batched.generator.streams
    spares = len(store._spares)
    assert spares == len(requests) - 1
    before = store.nbytes
    with batching(batched, 8):
        finals = drain_round_robin([batched.generate(**{**COMMON, **r}) for r in requests])
    for final, want in zip(finals, expected):
        assert np.array_equal(final.frames, want)
    assert len(store._spares) == spares and store.nbytes == before
    store.budget_bytes = before - sum(int(c.nbytes) for c in store._spares)  # spares go first
    store.evict()
    assert not store._spares and len(store) >= 1 and store.nbytes == store.budget_bytes
