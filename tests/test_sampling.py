"""Sampling: greedy, temperature + top-k (ties kept), seeds, and the undecodable audio ids."""

import mlx.core as mx
import numpy as np
import pytest

from engine.errors import InputError
from engine.sampling import DECODABLE_CODES, make_sampler

V = 2051


def logits_favouring(ids, vocab=V, batch=1):
    x = np.zeros((batch, vocab), np.float32)
    for rank, i in enumerate(ids):
        x[:, i] = 10.0 - rank
    return mx.array(x)


def test_greedy_is_argmax_first_index_on_ties():
    x = mx.array([[0.0, 3.0, 1.0, 3.0], [5.0, 1.0, 2.0, 0.0]])
    out = make_sampler(temperature=0)(x)
    assert out.dtype == mx.int32 and out.shape == (2,)
    assert out.tolist() == [1, 0]


def test_undecodable_ids_are_suppressed_by_default():
    x = logits_favouring([2049, 2050, 2048, 7])
    assert make_sampler(temperature=0)(x).tolist() == [7]
    assert make_sampler(temperature=0, suppress_undecodable=False)(x).tolist() == [2049]
    mx.random.seed(0)
    draws = make_sampler(temperature=1.0, top_k=3)(mx.repeat(x, 500, axis=0))
    assert int(draws.max()) < DECODABLE_CODES  # only 7 is left in the top 3
    mx.random.seed(0)
    raw = np.array(make_sampler(temperature=1.0, top_k=3, suppress_undecodable=False)(mx.repeat(x, 500, axis=0)))
    assert set(raw.tolist()) <= {2048, 2049, 2050} and len(set(raw.tolist())) > 1


def test_small_vocabularies_are_left_alone():
    x = logits_favouring([66, 3], vocab=67)
    assert make_sampler(temperature=0)(x).tolist() == [66]


def test_top_k_keeps_only_the_k_best():
    rng = np.random.default_rng(0)
    x = mx.array(np.repeat(rng.standard_normal((1, 100)).astype(np.float32), 4000, axis=0))
    mx.random.seed(1)
    draws = set(np.array(make_sampler(temperature=1.0, top_k=5)(x)).tolist())
    top5 = set(np.argsort(-np.array(x[0]))[:5].tolist())
    assert draws == top5


def test_top_k_keeps_ties_at_the_threshold():
    x = mx.array(np.repeat(np.array([[1.0, 5.0, 4.0, 4.0, 4.0, 0.0]], np.float32), 3000, axis=0))
    mx.random.seed(2)
    draws = set(np.array(make_sampler(temperature=1.0, top_k=2)(x)).tolist())
    assert draws == {1, 2, 3, 4}  # the k-th largest value (4.0) appears three times: all kept


def test_frequencies_follow_the_tempered_softmax():
    base = np.array([2.0, 1.0, 0.5, 0.0], np.float32)
    x = mx.array(np.repeat(base[None], 40000, axis=0))
    mx.random.seed(3)
    draws = np.array(make_sampler(temperature=0.5, top_k=0)(x))
    p = np.exp(base / 0.5) / np.exp(base / 0.5).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), p, atol=0.01)


def test_seeded_runs_repeat_and_differ_between_seeds():
    x = mx.array(np.random.default_rng(4).standard_normal((64, V)).astype(np.float32))
    sampler = make_sampler()  # 0.9, top-50
    mx.random.seed(7)
    a = np.array(sampler(x))
    mx.random.seed(7)
    b = np.array(sampler(x))
    mx.random.seed(8)
    c = np.array(sampler(x))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": 2.5}, {"temperature": None}])
def test_bad_settings_are_input_errors(kwargs):
    with pytest.raises(InputError):
        make_sampler(**kwargs)


def test_generated_frames_are_decodable(tiny_model_path):
    from engine.checkpoints import load_csm

    model = load_csm(tiny_model_path)
    h = mx.array(np.random.default_rng(5).standard_normal((4, model.config.backbone.dim)).astype(np.float32))
    mx.random.seed(0)
    codes = np.array(model.generate_frame(h, make_sampler(temperature=1.5, top_k=0)))
    assert codes.shape == (4, 32) and codes.max() < DECODABLE_CODES
