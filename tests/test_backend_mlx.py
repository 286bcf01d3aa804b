"""The MLX frame backend: batched rows equal rows alone (float32, bit for bit), counter-based draws,
greedy draws = argmax of the teacher-forced logits."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from engine.backends import Draw
from engine.backends.mlx import MLXBackend


@pytest.fixture(scope="module")
def backend(tiny_model_path):
    from engine.checkpoints import load_csm

    return MLXBackend(load_csm(tiny_model_path, dtype=mx.float32))


def prompt(seed: int, rows: int):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((rows, 33), np.int32)
    mask = np.zeros((rows, 33), bool)
    tokens[:, 32] = rng.integers(1, 500, rows)  # the tiny text vocabulary has 512 ids
    mask[: rows // 2, 32] = True
    tokens[rows // 2:, :32] = rng.integers(0, 2048, (rows - rows // 2, 32))
    mask[rows // 2:, :32] = True
    return tokens, mask


def primed(backend, seed: int, rows: int):
    cache = backend.new_cache(128)
    hidden = backend.prefill(cache, *prompt(seed, rows))
    return cache, hidden


DRAWS = [Draw(0.9, 50, True, 11, 3), Draw(0.0, 50, True, 12, 0), Draw(1.3, 0, False, 13, 7)]


def test_batched_steps_equal_steps_alone(backend):
    lengths = [5, 12, 9]
    batch = [primed(backend, i, n) for i, n in enumerate(lengths)]
    alone = [primed(backend, i, n) for i, n in enumerate(lengths)]
    codes = np.array(backend.frames_from_hidden([h for _, h in batch], DRAWS))
    solo_first = [np.array(backend.frames_from_hidden([h], [d]))[0] for (_, h), d in zip(alone, DRAWS)]
    assert np.array_equal(codes, np.stack(solo_first))
    for frame in range(1, 6):
        draws = [d.at(d.frame + frame) for d in DRAWS]
        batched = np.array(backend.step([c for c, _ in batch], codes, draws))
        solo = np.stack([np.array(backend.step([c], codes[b:b + 1], [draws[b]]))[0]
                         for b, (c, _) in enumerate(alone)])
        assert np.array_equal(batched, solo), frame
        codes = batched
    for (a, _), (b, _), n in zip(batch, alone, lengths):
        assert a.offset == b.offset == n + 5
        for la, lb in zip(a.layers, b.layers):
            assert np.array_equal(np.array(la.keys[:, :, :a.offset]), np.array(lb.keys[:, :, :b.offset]))


def test_a_stream_s_codes_do_not_depend_on_its_neighbours(backend):
    h = [primed(backend, i, 6)[1] for i in range(3)]
    target = Draw(0.9, 50, True, 5, 2)
    alone = np.array(backend.frames_from_hidden([h[0]], [target]))[0]
    for others in ([h[1]], [h[1], h[2]], [h[2], h[1], h[2]]):
        mixed = np.array(backend.frames_from_hidden([*others, h[0]],
                                                    [*DRAWS[: len(others)], target][-len(others) - 1:]))
        assert np.array_equal(mixed[-1], alone)


def test_draws_follow_seed_and_frame(backend):
    _, h = primed(backend, 0, 6)

    def frame(seed, index):
        return np.array(backend.frames_from_hidden([h], [Draw(0.9, 50, True, seed, index)]))[0]

    assert np.array_equal(frame(1, 0), frame(1, 0))
    assert not np.array_equal(frame(1, 0), frame(2, 0))
    assert not np.array_equal(frame(1, 0), frame(1, 1))


def test_greedy_draws_are_the_argmax_of_the_teacher_forced_logits(backend):
    _, h = primed(backend, 3, 7)
    codes = np.array(backend.frames_from_hidden([h], [Draw(0.0, 50, False, 0, 0)]))
    logits = backend.frame_logits(mx.array(h)[None], codes)  # (1, 32, V)
    assert np.array_equal(codes[0], logits[0].argmax(axis=-1))
    suppressed = np.array(backend.frames_from_hidden([h], [Draw(0.0, 50, True, 0, 0)]))
    assert suppressed.max() < 2048


def test_top_k_one_is_greedy_and_the_compiled_frame_equals_the_plain_one(backend, tiny_model_path):
    _, h = primed(backend, 4, 7)
    greedy = np.array(backend.frames_from_hidden([h], [Draw(0.0, 50, True, 9, 0)]))
    top1 = np.array(backend.frames_from_hidden([h], [Draw(1.0, 1, True, 9, 0)]))
    assert np.array_equal(greedy, top1)
    plain = MLXBackend(backend.csm, compile_frames=False)
    draws = [Draw(0.9, 50, True, 9, 4)]
    assert np.array_equal(np.array(plain.frames_from_hidden([h], draws)),
                          np.array(backend.frames_from_hidden([h], draws)))

