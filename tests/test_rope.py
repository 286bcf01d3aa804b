"""Llama-3 scaled RoPE: the general formula, checked against the reference formula and transformers."""

import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine.llama import Attention, LlamaArgs, llama3_inv_freqs

GOLDEN = Path(__file__).parent / "golden" / "csm_golden.npz"
SESAME = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
HF_BACKBONE = {"factor": 32.0, "low_freq_factor": 0.125, "high_freq_factor": 0.5, "original_max_position_embeddings": 1024}
HF_DECODER = {"factor": 32.0, "low_freq_factor": 1 / 512, "high_freq_factor": 1 / 128,
              "original_max_position_embeddings": 16}


def reference_freq(f: float, s: dict) -> float:
    """REFERENCE.md, one frequency at a time."""
    old, low, high, factor = (s["original_max_position_embeddings"], s["low_freq_factor"],
                              s["high_freq_factor"], s["factor"])
    wavelen = 2 * math.pi / f
    if wavelen < old / high:
        return f
    if wavelen > old / low:
        return f / factor
    smooth = (old / wavelen - low) / (high - low)
    return (1 - smooth) * f / factor + smooth * f


@pytest.mark.parametrize("head_dim", [8, 16, 64, 128])
@pytest.mark.parametrize("scaling", [SESAME, HF_BACKBONE, HF_DECODER])
def test_matches_reference_formula(head_dim, scaling):
    theta = 500000.0
    base = [theta ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    want = [reference_freq(f, scaling) for f in base]
    np.testing.assert_allclose(llama3_inv_freqs(head_dim, theta, scaling), want, rtol=1e-12)


def test_all_three_regimes_are_exercised():
    inv = 500000.0 ** (-np.arange(0, 64, 2) / 64)
    scaled = llama3_inv_freqs(64, 500000.0, SESAME)
    kept, divided = np.isclose(scaled, inv), np.isclose(scaled, inv / 32)
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any()
    assert np.all((scaled[blended] < inv[blended]) & (scaled[blended] > inv[blended] / 32))


@pytest.mark.parametrize("head_dim", [8, 64, 128])
def test_transformers_form_is_sesames_curve(head_dim):
    """The published transformers config numbers describe the same scaling as Sesame's constants."""
    ref = llama3_inv_freqs(head_dim, 500000.0, SESAME)
    np.testing.assert_allclose(llama3_inv_freqs(head_dim, 500000.0, HF_BACKBONE), ref, rtol=1e-12)
    np.testing.assert_allclose(llama3_inv_freqs(head_dim, 500000.0, HF_DECODER), ref, rtol=1e-12)


def test_no_scaling_is_plain_rope():
    np.testing.assert_allclose(llama3_inv_freqs(16, 10000.0, None), 10000.0 ** (-np.arange(0, 16, 2) / 16))


@pytest.mark.parametrize("name, head_dim, theta, scaling", [
    ("rope_backbone_hd64", 64, 500000.0, HF_BACKBONE),
    ("rope_decoder_hd128", 128, 500000.0, HF_DECODER),
    ("rope_sesame_hd64", 64, 500000.0, SESAME),
    ("rope_tiny_hd8", 8, 500000.0, HF_BACKBONE),
    ("rope_model_backbone", 8, 500000.0, HF_BACKBONE),
    ("rope_model_decoder", 8, 500000.0, HF_DECODER),
    ("rope_theta1e4_hd32", 32, 10000.0, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
])
def test_matches_transformers(name, head_dim, theta, scaling):
    want = np.load(GOLDEN)[name]  # float32, from transformers' llama3 rope init
    np.testing.assert_allclose(llama3_inv_freqs(head_dim, theta, scaling), want, rtol=2e-6)


@pytest.mark.parametrize("offset", [0, 5, 1500])
def test_rotation_is_interleaved_pairs_at_the_right_positions(offset):
    """Attention.rope rotates (x[2i], x[2i+1]) by angle position * f_i, positions from `offset`."""
    args = LlamaArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, hidden_dim=32,
                     rope_scaling=SESAME)
    attn = Attention(args)
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 16)).astype(np.float32)  # (B, H, T, hd)
    got = np.array(attn.rope(mx.array(x), offset))
    f = llama3_inv_freqs(16, args.rope_theta, SESAME)
    angle = (offset + np.arange(6))[:, None] * f[None, :]  # (T, hd/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    want = np.empty_like(x)
    want[..., 0::2] = even * np.cos(angle) - odd * np.sin(angle)
    want[..., 1::2] = odd * np.cos(angle) + even * np.sin(angle)
    np.testing.assert_allclose(got, want, atol=2e-4 if offset > 1000 else 1e-5)
