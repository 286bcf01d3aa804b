"""Mimi's public API: loading from folders, files and hub ids, input checks, clear errors."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from engine.errors import AudioError, InputError, WeightsError
from engine.mimi import Mimi, mimi_from_weights, MimiConfig, load_mimi
from engine.mimi.layouts import from_rotate_half, to_rotate_half, transformers_to_canonical
from engine.mimi.testing import KYUTAI_TINY_FILE, tiny_mimi_config, tiny_test_signal, write_tiny_mimi
from engine.mimi.weights import infer_config

AUDIO = tiny_test_signal(6 * 1920 + 100)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimi")
    write_tiny_mimi(root / "hf", layout="transformers")
    write_tiny_mimi(root / "kyutai", layout="kyutai")
    return root


@pytest.fixture(scope="module")
def mimi(folders):
    return load_mimi(folders / "hf")


@pytest.fixture(scope="module")
def reference(mimi):
    codes = mimi.encode(AUDIO)
    return codes, np.array(mimi.decode(codes))


def test_written_folders_load_in_both_layouts(folders, reference):
    codes, audio = reference
    assert codes.shape == (32, 7)
    for mimi in (load_mimi(folders / "kyutai"), load_mimi(folders / "kyutai" / KYUTAI_TINY_FILE),
                 load_mimi(str(folders / "hf" / "model.safetensors"))):
        np.testing.assert_array_equal(mimi.encode(AUDIO), codes)
        np.testing.assert_allclose(np.array(mimi.decode(codes)), audio, atol=1e-6)


def test_write_tiny_mimi_into_a_dict_matches_the_files(folders):
    weights, config = write_tiny_mimi({}, layout="kyutai")
    on_disk = load_file(str(folders / "kyutai" / KYUTAI_TINY_FILE))
    assert set(weights) == set(on_disk) and config == tiny_mimi_config()
    assert "quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum" in weights
    assert "encoder_transformer.transformer.layers.1.self_attn.in_proj_weight" in weights
    target = {}
    weights, _ = write_tiny_mimi(target)
    assert target is not weights and set(target) == set(weights)
    assert "quantizer.semantic_residual_vector_quantizer.layers.0.codebook.embed_sum" in weights
    assert "decoder.layers.2.conv.weight" in weights


def test_transformers_5_in_memory_names_load_too(folders, reference):
    weights = load_file(str(folders / "hf" / "model.safetensors"))
    renamed = {}
    for k, v in weights.items():
        for old, new in (("encoder.layers.", "encoder.encoder_seanet.layers."),
                         ("encoder_transformer.", "encoder.encoder_transformer."),
                         ("downsample.", "encoder.downsample."), ("upsample.", "decoder.upsample."),
                         ("decoder_transformer.", "decoder.decoder_transformer."),
                         ("decoder.layers.", "decoder.decoder_seanet.layers.")):
            if k.startswith(old):
                k = new + k[len(old):]
                break
        renamed[k] = v
    mimi = mimi_from_weights(renamed, tiny_mimi_config())
    np.testing.assert_array_equal(mimi.encode(AUDIO), reference[0])


def test_rope_permutation_round_trips():
    w = np.arange(32 * 5, dtype=np.float32).reshape(32, 5)
    np.testing.assert_array_equal(from_rotate_half(to_rotate_half(w, 4), 4), w)
    # head 0, rotate-half row 1 is adjacent-pair row 2 (the first element of the second pair)
    np.testing.assert_array_equal(to_rotate_half(w, 4)[1], w[2])


def test_config_is_inferred_from_shapes_except_heads(folders):
    weights = load_file(str(folders / "hf" / "model.safetensors"))
    inferred = infer_config(transformers_to_canonical(weights, 1)[0])
    expected = MimiConfig.from_dict(tiny_mimi_config())
    assert inferred.replace(num_heads=expected.num_heads, head_dim=expected.head_dim) == expected
    assert inferred.frame_size == 1920 and inferred.frame_rate == 12.5


def test_config_dict_round_trip():
    cfg = MimiConfig.from_dict(tiny_mimi_config())
    assert MimiConfig.from_dict(cfg.to_dict()) == cfg
    # transformers 5.x writes `_frame_rate` and `rope_parameters`
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("frame_rate", "rope_theta")}
    d.update(_frame_rate=12.5, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    assert MimiConfig.from_dict(d) == cfg
    assert MimiConfig().frame_size == 1920 and MimiConfig().num_quantizers == 32


def test_missing_and_misshapen_weights_are_named(folders, tmp_path):
    weights = load_file(str(folders / "kyutai" / KYUTAI_TINY_FILE))
    config = tiny_mimi_config()
    broken = dict(weights)
    del broken["decoder.model.2.convtr.convtr.weight"]
    with pytest.raises(WeightsError, match=r"missing 1 .*decoder\.layers\.2\.conv\.weight"):
        mimi_from_weights(broken, config)
    broken = dict(weights)
    broken["quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum"] = np.zeros((2048, 3), np.float32)
    with pytest.raises(WeightsError, match=r"quantizer\.rvq_rest\.vq\.layers\.3\._codebook\.embedding_sum: \(2048, 3\)"):
        mimi_from_weights(broken, config)
    with pytest.raises(WeightsError, match="not a Mimi codec"):
        mimi_from_weights({"foo.weight": np.zeros(3, np.float32)}, config)
    with pytest.warns(UserWarning, match="not used by Mimi"):
        mimi_from_weights({**weights, "encoder.model.99.conv.conv.weight": np.zeros(3, np.float32)}, config)


def test_wrong_config_is_a_weights_error(folders):
    config = dict(tiny_mimi_config(), num_hidden_layers=3)
    with pytest.raises(WeightsError, match="missing"):
        mimi_from_weights(load_file(str(folders / "hf" / "model.safetensors")), config)
    with pytest.raises(WeightsError, match="num_attention_heads"):
        MimiConfig.from_dict(dict(tiny_mimi_config(), num_attention_heads=3))


def test_unreadable_sources_are_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="no Mimi weights"):
        load_mimi(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no .safetensors"):
        load_mimi(tmp_path / "empty")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="safetensors"):
        load_mimi(tmp_path / "bad.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="could not get the Mimi codec from the hub repo kyutai/mimi"):
        load_mimi("kyutai/mimi")


def test_a_csm_folder_with_codec_model_keys(folders, tmp_path, reference):
    weights = load_file(str(folders / "hf" / "model.safetensors"))
    csm = {f"codec_model.{k}": v for k, v in weights.items()}
    csm["backbone_model.norm.weight"] = np.ones(4, np.float32)
    save_file(csm, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "csm", "codec_config": tiny_mimi_config()}))
    np.testing.assert_array_equal(load_mimi(tmp_path).encode(AUDIO), reference[0])


def test_decode_checks_codes(mimi, reference):
    codes, audio = reference
    with pytest.raises(InputError, match="outside 0..2047"):
        mimi.decode(np.full((32, 3), 2050))
    with pytest.raises(InputError, match="outside 0..2047"):
        mimi.streaming_decoder().decode(-np.ones((32, 1), np.int32))
    with pytest.raises(InputError, match="transpose"):
        mimi.decode(codes.T)
    with pytest.raises(InputError, match="2-D"):
        mimi.decode(codes[0])
    with pytest.raises(InputError, match="integers"):
        mimi.decode(codes + 0.5)
    np.testing.assert_allclose(np.array(mimi.decode(mx.array(codes))), audio, atol=1e-6)  # mx input too
    assert mimi.decode(np.zeros((32, 0), np.int32)).shape == (0,)


def test_decode_fewer_codebooks_when_asked(mimi, reference):
    codes, _ = reference
    with pytest.raises(InputError, match="num_codebooks=8"):
        mimi.decode(codes[:8])
    out = mimi.decode(codes[:8], num_codebooks=8)
    assert out.shape == (7 * 1920,) and np.isfinite(np.array(out)).all()
    first = mimi.decode(codes[:1], num_codebooks=1)
    assert not np.allclose(np.array(first), np.array(out))
    streamed = [np.array(mimi.streaming_decoder(8).decode(codes[:8, :4]))]
    assert np.abs(streamed[0] - np.array(out)[: 4 * 1920]).max() < 1e-5
    with pytest.raises(InputError, match="1..32"):
        mimi.decode(codes, num_codebooks=33)


def test_encode_checks_and_converts_audio(mimi, reference):
    codes, _ = reference
    with pytest.raises(AudioError, match="empty"):
        mimi.encode(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        mimi.encode(np.full(100, np.nan, np.float32))
    with pytest.raises(AudioError, match="1-D"):
        mimi.encode(np.zeros((2, 3, 4), np.float32))
    stereo = np.stack([AUDIO, AUDIO])
    np.testing.assert_array_equal(mimi.encode(stereo), codes)  # (channels, samples)
    np.testing.assert_array_equal(mimi.encode(stereo.T), codes)  # (samples, channels)
    np.testing.assert_array_equal(mimi.encode(list(AUDIO[:1920])), codes[:, :1] * 0 + mimi.encode(AUDIO[:1920]))
    at_16k = mimi.encode(tiny_test_signal(16000), sample_rate=16000)  # 1 s -> 24000 samples -> 13 frames
    assert at_16k.shape == (32, 13)
    assert mimi.encode(np.zeros(1, np.float32)).shape == (32, 1)


def test_centroids_follow_weight_updates(folders, reference):
    """Centroids derive from embed_sum / cluster_usage: loading new weights must not leave stale ones."""
    from mlx.utils import tree_flatten

    target = load_mimi(folders / "hf")
    other = mimi_from_weights(write_tiny_mimi({}, seed=1)[0], tiny_mimi_config())
    assert not np.array_equal(other.encode(AUDIO), reference[0])
    other.load_weights(tree_flatten(target.parameters()))
    np.testing.assert_array_equal(other.encode(AUDIO), reference[0])


def test_a_bfloat16_kyutai_file_loads(folders, tmp_path):
    """Kyutai publishes its checkpoint in bfloat16 (which NumPy cannot even read)."""
    weights = {k: mx.array(v).astype(mx.bfloat16) for k, v in load_file(str(folders / "kyutai" / KYUTAI_TINY_FILE)).items()}
    mx.save_safetensors(str(tmp_path / "tokenizer-bf16.safetensors"), weights)
    (tmp_path / "tokenizer-bf16.json").write_text(json.dumps(tiny_mimi_config()))
    mimi = load_mimi(tmp_path / "tokenizer-bf16.safetensors")
    assert mimi.decoder.layers[0].weight.dtype == mx.float32
    assert mimi.encode(AUDIO).shape == (32, 7)
