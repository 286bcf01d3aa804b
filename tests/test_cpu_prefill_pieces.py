"""engine/cpu/prefill.c, the prefill's native pieces between its products, against NumPy in float64:
causal GQA attention over the cache (the tiled path for head_dim a multiple of 16 and rows.h's
attend() otherwise), RMSNorm, RoPE into the cache, SwiGLU with its polynomial exp; and that a row's
result does not depend on the other rows of the call."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends import native_unavailable_reason

NATIVE = native_unavailable_reason()
pytestmark = pytest.mark.skipif(NATIVE is not None, reason=f"native CPU backend unavailable: {NATIVE}")


@pytest.fixture(scope="module")
def lib():
    from engine.cpu.frame import library

    return library()


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


def attention_reference(q, kv, offset, scale):
    """q (T, H, hd), kv (2, G, cap, hd) -> (T, H*hd): row t over positions 0..offset+t, in float64."""
    T, H, hd = q.shape
    G = kv.shape[1]
    out = np.empty((T, H, hd))
    for t in range(T):
        n = offset + t + 1
        for h in range(H):
            g = h // (H // G)
            s = kv[0, g, :n].astype(np.float64) @ q[t, h].astype(np.float64) * scale
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ kv[1, g, :n].astype(np.float64)
    return out.reshape(T, H * hd)


def attention(lib, q, kv, offset, scale, threads=2):
    T, H, hd = q.shape
    out = np.empty((T, H * hd), np.float32)
    rc = lib.csm_prefill_attention(ptr(q), T, H, kv.shape[1], hd, ptr(kv), kv.shape[2], offset, scale, ptr(out), threads)
    assert rc == 0
    return out


@pytest.mark.parametrize("H,G,hd", [(32, 8, 64), (4, 2, 16), (4, 2, 8), (6, 2, 32), (8, 8, 48)])
@pytest.mark.parametrize("offset,T", [(0, 1), (0, 45), (37, 70), (300, 3)])
def test_attention_matches_float64(lib, H, G, hd, offset, T):
    rng = np.random.default_rng(hd + offset + T)
    cap = offset + T + 5
    kv = rng.standard_normal((2, G, cap, hd), dtype=np.float32)
    kv[:, :, offset + T:] = np.nan  # positions past the call's rows must never be read
    q = rng.standard_normal((T, H, hd), dtype=np.float32)
    scale = hd ** -0.5
    got = attention(lib, q, kv, offset, scale)
    want = attention_reference(q, kv, offset, scale)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("hd", [64, 8])
def test_a_row_does_not_depend_on_the_rows_beside_it(lib, hd):
    """All 70 rows in one call equal them in calls of 30 and 40 rows, and on one thread, bit for bit."""
    rng = np.random.default_rng(1)
    H, G, offset, T = 8, 2, 50, 70
    kv = rng.standard_normal((2, G, offset + T, hd), dtype=np.float32)
    q = rng.standard_normal((T, H, hd), dtype=np.float32)
    whole = attention(lib, q, kv, offset, 0.125)
    parts = np.concatenate([attention(lib, np.ascontiguousarray(q[:30]), kv, offset, 0.125),
                            attention(lib, np.ascontiguousarray(q[30:]), kv, offset + 30, 0.125)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole, attention(lib, q, kv, offset, 0.125, threads=1))


def test_swiglu_within_a_few_ulp_and_nan_stays_nan(lib):
    gate = np.concatenate([np.linspace(-100, 100, 20001, dtype=np.float32),
                           np.array([-1e30, 1e30, -88.5, 89.0, 0.0, -0.0, np.nan, np.inf], np.float32)])
    up = np.random.default_rng(2).uniform(-2, 2, gate.size).astype(np.float32)
    out = gate.copy()
    lib.csm_prefill_swiglu(ptr(out), ptr(up), out.size, 2)
    g = gate.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want = g / (1 + np.exp(-g)) * up
    finite = np.isfinite(want)
    assert np.isnan(out[np.isnan(gate)]).all()
    np.testing.assert_allclose(out[finite], want[finite], rtol=4e-7 * 4, atol=1e-30)


def test_norm_and_rope_store(lib):
    rng = np.random.default_rng(3)
    T, D, H, G, hd, offset, cap = 9, 96, 4, 2, 16, 5, 20
    x = rng.standard_normal((T, D), dtype=np.float32)
    w = rng.uniform(0.5, 1.5, D).astype(np.float32)
    y = np.empty_like(x)
    lib.csm_prefill_norm(ptr(x), T, D, ptr(w), 1e-5, ptr(y), 2)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w, rtol=1e-6)

    angle = np.arange(cap)[:, None] * (10000.0 ** (-np.arange(hd // 2) / (hd // 2)))[None, :]
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    q = rng.standard_normal((T, H, hd), dtype=np.float32)
    k = rng.standard_normal((T, G, hd), dtype=np.float32)
    v = rng.standard_normal((T, G, hd), dtype=np.float32)
    kv = np.zeros((2, G, cap, hd), np.float32)
    q0 = q.copy()
    lib.csm_prefill_rope_store(ptr(q), ptr(k), ptr(v), T, H, G, hd, ptr(cos), ptr(sin), offset, ptr(kv), cap, 2)

    def rotated(a):  # adjacent pairs as complex numbers, times e^(i angle) of each row's position
        turns = np.exp(1j * angle[offset:offset + T])[:, None, :]
        return (a[..., 0::2] + 1j * a[..., 1::2]) * turns

    got_q = q[..., 0::2] + 1j * q[..., 1::2]
    np.testing.assert_allclose(got_q, rotated(q0), atol=1e-5)
    got_k = kv[0, :, offset:offset + T].transpose(1, 0, 2)
    np.testing.assert_allclose(got_k[..., 0::2] + 1j * got_k[..., 1::2], rotated(k), atol=1e-5)
    assert np.array_equal(kv[1, :, offset:offset + T].transpose(1, 0, 2), v)
    assert not kv[:, :, :offset].any() and not kv[:, :, offset + T:].any()
