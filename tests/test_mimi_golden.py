"""Mimi on MLX equals transformers' MimiModel (golden files from tests/golden/make_mimi_golden.py),
from both checkpoint layouts."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.mimi import Mimi, mimi_from_weights, load_mimi
from engine.mimi.config import MimiConfig
from engine.mimi.layouts import transformers_to_kyutai
from engine.mimi.testing import tiny_test_signal

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-5  # of the reference's peak, float32


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN / "mimi_golden.npz"))


@pytest.fixture(scope="module")
def mimi():
    return load_mimi(GOLDEN / "mimi_tiny")


@pytest.fixture(scope="module")
def kyutai_mimi(tmp_path_factory):
    """The same weights converted to Kyutai's original layout, loaded from a file with a sidecar config."""
    folder = tmp_path_factory.mktemp("kyutai")
    ref = load_weights_np(GOLDEN / "mimi_tiny" / "model.safetensors")
    cfg = MimiConfig.from_dict(__import__("json").loads((GOLDEN / "mimi_tiny" / "config.json").read_text()))
    kyutai = transformers_to_kyutai(ref, cfg)
    assert any(k.endswith("in_proj_weight") for k in kyutai) and not any(k.startswith("encoder.layers") for k in kyutai)
    save_file(kyutai, str(folder / "tokenizer-tiny.safetensors"))
    (folder / "tokenizer-tiny.json").write_text(__import__("json").dumps(cfg.to_dict()))
    return load_mimi(folder / "tokenizer-tiny.safetensors")


def load_weights_np(file):
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(str(file)).items()}


def close(ours, ref, tol=TOL):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= tol, f"max error {err:.2e} of peak"


def test_sizes(mimi):
    assert (mimi.sample_rate, mimi.frame_size, mimi.frame_rate, mimi.num_codebooks) == (24000, 1920, 12.5, 32)
    assert mimi.config.sliding_window == 250 and mimi.config.ratios == (8, 6, 5, 4)


def test_encode_40_frames(mimi, golden):
    audio = tiny_test_signal(40 * 1920)
    close(mimi.encode_latent(audio), golden["latent_40"])
    codes = mimi.encode(audio)
    assert codes.dtype == np.int32 and codes.shape == (32, 40)
    np.testing.assert_array_equal(codes, golden["codes_40"])


def test_encode_ragged_pads_inside_the_convs(mimi, golden):
    codes = mimi.encode(tiny_test_signal(40 * 1920 - 777))
    np.testing.assert_array_equal(codes, golden["codes_ragged"])


def test_encode_past_the_window(mimi, golden):
    audio = tiny_test_signal(140 * 1920)  # 280 positions at 25 Hz
    close(mimi.encode_latent(audio), golden["latent_long"])
    np.testing.assert_array_equal(mimi.encode(audio), golden["codes_long"])


def test_decode_40_frames(mimi, golden):
    audio = mimi.decode(golden["codes_40"])
    assert isinstance(audio, mx.array) and audio.dtype == mx.float32
    close(audio, golden["audio_40"])


def test_decode_past_the_window(mimi, golden):
    codes = golden["decode_codes"].astype(np.int32)
    latent = mimi.quantizer.decode(mx.array(codes))[None]
    close(mimi.decoder_transformer(mimi.upsample(latent))[0], golden["decode_hidden"])
    close(mimi.decode(codes)[-2 * 1920:], golden["decode_tail"])


def test_kyutai_layout_gives_the_same_outputs(mimi, kyutai_mimi, golden):
    audio = tiny_test_signal(40 * 1920 - 777)
    np.testing.assert_array_equal(kyutai_mimi.encode(audio), golden["codes_ragged"])
    np.testing.assert_allclose(np.array(kyutai_mimi.encode_latent(audio)), np.array(mimi.encode_latent(audio)),
                               rtol=0, atol=1e-6)
    close(kyutai_mimi.decode(golden["codes_40"]), golden["audio_40"])


def test_from_weights_with_codec_model_prefix(golden):
    """As the CSM loader calls it: transformers CSM's codec_model.* tensors and its codec_config."""
    import json

    weights = {f"codec_model.{k}": mx.array(v) for k, v in
               load_weights_np(GOLDEN / "mimi_tiny" / "model.safetensors").items()}
    weights = {k: v.astype(mx.float16) for k, v in weights.items()}  # half precision, as stored
    config = json.loads((GOLDEN / "mimi_tiny" / "config.json").read_text())
    mimi = mimi_from_weights(weights, config)
    np.testing.assert_array_equal(mimi.encode(tiny_test_signal(40 * 1920)), golden["codes_40"])
