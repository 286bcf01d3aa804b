"""The preallocated KV cache: append, trim, re-append, reset, overflow."""

import mlx.core as mx
import numpy as np
import pytest

from engine.errors import ContextTooLongError
from engine.kv_cache import KVCache
from engine.llama import Llama, LlamaArgs

ARGS = LlamaArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_dim=64, max_seq_len=64,
                 rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192})


@pytest.fixture(scope="module")
def llama():
    mx.random.seed(0)
    model = Llama(ARGS)
    # unit-scale weights so attention is far from uniform (a wrong position or mask would show)
    model.update({k: v for k, v in _scaled(model.parameters()).items()})
    mx.eval(model.parameters())
    return model


def _scaled(tree):
    if isinstance(tree, dict):
        return {k: _scaled(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_scaled(v) for v in tree]
    return tree * 20.0 if tree.ndim == 2 else tree


def rows(n, seed=1):
    return mx.array(np.random.default_rng(seed).standard_normal((1, n, ARGS.dim)).astype(np.float32))


def test_update_and_fetch():
    cache = KVCache(8, 2, 4)
    k = mx.ones((1, 2, 3, 4))
    keys, values = cache.update_and_fetch(k, 2 * k)
    assert cache.offset == 3 and keys.shape == (1, 2, 3, 4)
    keys, values = cache.update_and_fetch(3 * mx.ones((1, 2, 2, 4)), mx.zeros((1, 2, 2, 4)))
    assert cache.offset == 5 and keys.shape == (1, 2, 5, 4)
    np.testing.assert_array_equal(np.array(keys[0, 0, :, 0]), [1, 1, 1, 3, 3])
    np.testing.assert_array_equal(np.array(values[0, 0, :, 0]), [2, 2, 2, 0, 0])
    assert cache.keys.shape == (1, 2, 8, 4)  # preallocated, never grows


def test_trim_clamps_and_reset():
    cache = KVCache(8, 1, 2)
    cache.update_and_fetch(mx.ones((1, 1, 5, 2)), mx.ones((1, 1, 5, 2)))
    assert cache.trim(2) == 2 and cache.offset == 3
    assert cache.trim(10) == 3 and cache.offset == 0
    cache.update_and_fetch(mx.ones((1, 1, 4, 2)), mx.ones((1, 1, 4, 2)))
    cache.reset()
    assert cache.offset == 0


def test_overflow_is_a_context_error():
    cache = KVCache(4, 1, 2)
    cache.update_and_fetch(mx.ones((1, 1, 3, 2)), mx.ones((1, 1, 3, 2)))
    with pytest.raises(ContextTooLongError):
        cache.update_and_fetch(mx.ones((1, 1, 2, 2)), mx.ones((1, 1, 2, 2)))


def test_cached_prefill_in_pieces_equals_one_pass(llama):
    x = rows(12)
    whole = llama(x)  # no cache, causal
    cache = llama.new_cache(32)
    parts = [llama(x[:, :5], cache), llama(x[:, 5:6], cache), llama(x[:, 6:], cache)]
    np.testing.assert_allclose(np.array(mx.concatenate(parts, axis=1)), np.array(whole), atol=1e-5)
    assert all(c.offset == 12 for c in cache)


def test_trim_then_reappend_gives_identical_outputs(llama):
    x = rows(10)
    cache = llama.new_cache(32)
    llama(x[:, :6], cache)
    first = np.array(llama(x[:, 6:], cache))
    for c in cache:
        c.trim(4)
    again = np.array(llama(x[:, 6:], cache))  # the same 4 rows, re-appended after the kept prefix
    np.testing.assert_array_equal(again, first)
    # ...and other rows after the kept prefix give what a fresh run computes
    y = mx.concatenate([x[:, :6], rows(3, seed=2)], axis=1)
    for c in cache:
        c.trim(4)
    fresh = np.array(llama(y))
    np.testing.assert_allclose(np.array(llama(y[:, 6:], cache)), fresh[:, 6:], atol=1e-5)


def test_reset_then_reuse(llama):
    x = rows(6)
    cache = llama.new_cache(16)
    first = np.array(llama(x, cache))
    llama(rows(5, seed=3), cache)
    for c in cache:
        c.reset()
    np.testing.assert_array_equal(np.array(llama(x, cache)), first)
