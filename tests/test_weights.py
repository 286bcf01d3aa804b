"""Finding and loading checkpoints: layouts, config variants, codec/tokenizer sources, and the errors."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine.device import default_dtype
from engine.checkpoints import tiny as testing
from engine.errors import WeightsError
from engine.checkpoints import (
    CodecSource,
    codec_source,
    detect_layout,
    load_csm,
    load_tokenizer_path,
    resolve_model,
    safetensors_keys,
)

GOLDEN = Path(__file__).parent / "golden"


def copy_of(tmp_path, name) -> Path:
    return Path(shutil.copytree(GOLDEN / name, tmp_path / name))


def edit_weights(folder: Path, fn) -> None:
    f = folder / "model.safetensors"
    weights = dict(mx.load(str(f)))
    fn(weights)
    mx.save_safetensors(str(f), weights)


def edit_config(folder: Path, fn) -> None:
    config = json.loads((folder / "config.json").read_text())
    fn(config)
    (folder / "config.json").write_text(json.dumps(config))


def c0_logits(model) -> np.ndarray:
    tokens = np.zeros((1, 4, 33), np.int32)
    tokens[0, :, 32] = [1, 2, 3, 4]
    mask = np.zeros((1, 4, 33), bool)
    mask[0, :, 32] = True
    return np.array(model.codebook0_head(model.backbone(model.embed_rows(tokens, mask))).astype(mx.float32))


# ---- layouts ------------------------------------------------------------------------------------


def test_detects_each_layout():
    assert detect_layout({}, ["backbone_model.layers.0.self_attn.q_proj.weight"]) == "transformers"
    assert detect_layout({}, ["backbone.layers.0.attn.q_proj.weight"]) == "sesame"
    assert detect_layout({}, ["backbone.layers.0.self_attn.q_proj.weight"]) == "mlx"
    assert detect_layout({}, ["model.backbone.layers.0.self_attn.q_proj.weight"]) == "mlx"
    with pytest.raises(WeightsError, match="unknown checkpoint layout"):
        detect_layout({}, ["encoder.weight"])


@pytest.mark.parametrize("layout", ["transformers", "sesame", "mlx"])
def test_tiny_models_in_every_layout_compute_the_same(tmp_path, layout):
    folder = testing.write_tiny_csm(tmp_path / layout, layout=layout, seed=3, with_prompts=False)
    reference = testing.write_tiny_csm(tmp_path / "ref", layout="mlx", seed=3, with_codec=False,
                                       with_tokenizer=False, with_prompts=False)
    np.testing.assert_array_equal(c0_logits(load_csm(folder)), c0_logits(load_csm(reference)))


def test_transformers_tied_embeddings_stored_once(tiny_model_path):
    keys = safetensors_keys(tiny_model_path / "model.safetensors")
    assert "depth_decoder.model.embed_tokens.weight" in keys
    assert "backbone_model.embed_tokens.embed_audio_tokens.weight" not in keys
    assert any(k.startswith("codec_model.") for k in keys)  # skipped by load_csm
    load_csm(tiny_model_path)


def test_transformers_untied_copies(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny")
    want = c0_logits(load_csm(folder))

    def add_backbone_copy(w):
        w["backbone_model.embed_tokens.embed_audio_tokens.weight"] = w["depth_decoder.model.embed_tokens.weight"]

    edit_weights(folder, add_backbone_copy)  # both copies, equal: fine
    np.testing.assert_array_equal(c0_logits(load_csm(folder)), want)
    edit_weights(folder, lambda w: w.pop("depth_decoder.model.embed_tokens.weight"))  # only the backbone's
    np.testing.assert_array_equal(c0_logits(load_csm(folder)), want)

    def differ(w):
        w["depth_decoder.model.embed_tokens.weight"] = w["backbone_model.embed_tokens.embed_audio_tokens.weight"] + 1

    edit_weights(folder, differ)
    with pytest.raises(WeightsError, match="untied"):
        load_csm(folder)


def test_transformers_old_rope_config_form(tmp_path):
    """Published configs spell RoPE as rope_theta + rope_scaling; transformers 5 writes rope_parameters."""
    folder = copy_of(tmp_path, "csm_tiny")
    want = c0_logits(load_csm(folder))

    def old_form(config):
        for c in (config, config["depth_decoder_config"]):
            params = c.pop("rope_parameters")
            c["rope_theta"] = params.pop("rope_theta")
            c["rope_scaling"] = params
            params["rope_type"] = params.pop("rope_type")

    edit_config(folder, old_form)
    np.testing.assert_array_equal(c0_logits(load_csm(folder)), want)


def test_unsupported_rope_type(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny")
    edit_config(folder, lambda c: c["rope_parameters"].update(rope_type="yarn"))
    with pytest.raises(WeightsError, match="yarn"):
        load_csm(folder)


def test_dtype_choice():
    model = load_csm(GOLDEN / "csm_tiny_sesame", dtype=mx.bfloat16)
    assert model.projection.weight.dtype == mx.bfloat16
    assert load_csm(GOLDEN / "csm_tiny_sesame").projection.weight.dtype == default_dtype()  # per device


# ---- errors -------------------------------------------------------------------------------------


def test_missing_key_is_named_in_the_checkpoints_spelling(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny_sesame")
    edit_weights(folder, lambda w: w.pop("decoder.layers.1.mlp.w2.weight"))
    with pytest.raises(WeightsError, match=r"missing keys: decoder\.layers\.1\.mlp\.w2\.weight"):
        load_csm(folder)


def test_missing_key_transformers_spelling(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny")
    edit_weights(folder, lambda w: w.pop("lm_head.weight"))
    with pytest.raises(WeightsError, match=r"missing keys: lm_head\.weight"):
        load_csm(folder)


def test_unexpected_key_is_named(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny_sesame")
    edit_weights(folder, lambda w: w.update({"backbone.layers.0.attn.rotary.freqs": mx.zeros((4,))}))
    with pytest.raises(WeightsError, match=r"unexpected keys: backbone\.layers\.0\.attn\.rotary\.freqs"):
        load_csm(folder)


def test_wrong_shape_is_named(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny")
    edit_weights(folder, lambda w: w.update({"depth_decoder.model.layers.0.self_attn.k_proj.weight": mx.zeros((12, 32))}))
    with pytest.raises(WeightsError, match=r"wrong shapes: depth_decoder\.model\.layers\.0\.self_attn\.k_proj\.weight "
                                           r"\(12, 32\) \(expected \(16, 32\)\)"):
        load_csm(folder)


def test_too_few_layers_for_the_config(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny_sesame")
    edit_config(folder, lambda c: c["flavors"]["tiny-backbone"].update(n_layers=3))
    with pytest.raises(WeightsError, match=r"missing keys: backbone\.layers\.2\.attn\.k_proj\.weight"):
        load_csm(folder)


def test_missing_files(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        load_csm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not readable JSON"):
        load_csm(tmp_path)
    shutil.copy(GOLDEN / "csm_tiny" / "config.json", tmp_path / "config.json")
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"no \.safetensors weights \(found ckpt\.pt"):
        load_csm(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(WeightsError, match="could not be read"):
        load_csm(tmp_path)


def test_missing_shard(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(WeightsError, match="model-00001-of-00002.safetensors"):
        load_csm(folder)


def test_unknown_config_and_flavor(tmp_path):
    folder = copy_of(tmp_path, "csm_tiny_sesame")
    edit_config(folder, lambda c: c.update(backbone_flavor="llama-7B"))
    with pytest.raises(WeightsError, match="unknown backbone_flavor 'llama-7B'; known: llama-1B, llama-100M"):
        load_csm(folder)
    edit_config(folder, lambda c: [c.pop("backbone_flavor")])
    with pytest.raises(WeightsError, match="unknown config.json"):
        load_csm(folder)


def test_known_flavors_are_the_real_sizes():
    from engine.checkpoints.layouts import _sesame_config

    cfg = _sesame_config({"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M"})
    b, d = cfg.backbone, cfg.decoder
    assert (b.dim, b.n_layers, b.n_heads, b.n_kv_heads, b.head_dim, b.hidden_dim) == (2048, 16, 32, 8, 64, 8192)
    assert (d.dim, d.n_layers, d.n_heads, d.n_kv_heads, d.head_dim, d.hidden_dim) == (1024, 4, 8, 2, 128, 8192)
    assert (cfg.text_vocab_size, cfg.audio_vocab_size, cfg.audio_num_codebooks) == (128256, 2051, 32)


# ---- resolving names, tokenizer and codec sources -----------------------------------------------


def test_resolve_local_folder_and_bad_paths(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    with pytest.raises(WeightsError, match="no model folder"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(WeightsError, match="is a file"):
        resolve_model(tmp_path / "file.bin")


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(WeightsError) as err:
        resolve_model("sesame/csm-1b")  # HF_HUB_OFFLINE=1 in tests, and not cached in this CSM_HOME
    message = str(err.value)
    assert "sesame/csm-1b" in message and "huggingface-cli login" in message
    assert "tiny-random" in message or "local folder" in message


def test_tiny_random_is_built_once(tiny_model_path, csm_home):
    assert tiny_model_path == csm_home / "tiny-random"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "prompts/conversational_a.wav", "prompts/conversational_a.txt",
                 "prompts/conversational_b.wav", "prompts/conversational_b.txt"):
        assert (tiny_model_path / name).is_file(), name
    stamp = (tiny_model_path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-random") == tiny_model_path
    assert (tiny_model_path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in csm_home.iterdir() if p.name.startswith(".tiny-random")]  # no leftovers


def test_tiny_random_stale_copy_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CSM_HOME", str(tmp_path))
    stale = tmp_path / "tiny-random"
    stale.mkdir()
    (stale / ".tiny-version").write_text("0\n")
    path = testing.tiny_random_path()
    assert path == stale and (path / ".tiny-version").read_text().strip() == testing.TINY_VERSION
    assert (path / "model.safetensors").is_file()


def test_tiny_model_covers_its_tokenizer(tiny_model_path):
    from engine.text import TextTokenizer

    tok = TextTokenizer.from_file(load_tokenizer_path(tiny_model_path))
    config = json.loads((tiny_model_path / "config.json").read_text())
    ids = tok.encode_segment(0, "Hello there, tiny model!")
    assert max(ids + [tok.bos_id, tok.eos_id]) < config["text_vocab_size"]


def test_tokenizer_fallback_offline(tmp_path):
    with pytest.raises(WeightsError, match="unsloth/Llama-3.2-1B"):
        load_tokenizer_path(tmp_path)


def test_codec_sources(tmp_path, tiny_model_path):
    inside = codec_source(tiny_model_path)
    assert isinstance(inside, CodecSource) and inside.file is None
    assert inside.config == json.loads((tiny_model_path / "config.json").read_text())["codec_config"]
    assert inside.weights and not any(k.startswith("codec_model.") for k in inside.weights)
    folder = testing.write_tiny_csm(tmp_path / "sesame", layout="sesame", with_prompts=False, with_tokenizer=False)
    beside = codec_source(folder)
    assert beside.weights is None and beside.file == folder / "codec"
    with pytest.raises(WeightsError, match="kyutai/moshiko-pytorch-bf16"):
        codec_source(GOLDEN / "csm_tiny_sesame")  # no codec there, and offline


def test_published_transformers_config_is_the_sesame_model():
    """sesame/csm-1b's transformers config (as published: rope_theta + rope_scaling) maps onto the same
    hyperparameters, RoPE frequencies included, as Sesame's llama-1B / llama-100M flavours."""
    from engine.llama import llama3_inv_freqs
    from engine.checkpoints.layouts import _sesame_config, _transformers_config

    published = {
        "model_type": "csm", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048, "rope_theta": 500000,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 0.5, "low_freq_factor": 0.125,
                         "original_max_position_embeddings": 1024, "rope_type": "llama3"},
        "text_vocab_size": 128256, "vocab_size": 2051, "num_codebooks": 32,
        "depth_decoder_config": {
            "hidden_size": 1024, "intermediate_size": 8192, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 128, "rms_norm_eps": 1e-5, "max_position_embeddings": 33,
            "rope_theta": 500000,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 0.0078125, "low_freq_factor": 0.001953125,
                             "original_max_position_embeddings": 16, "rope_type": "llama3"},
            "backbone_hidden_size": 2048, "vocab_size": 2051, "num_codebooks": 32,
        },
    }
    hf = _transformers_config(published)
    ses = _sesame_config({"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M"})
    for a, b in ((hf.backbone, ses.backbone), (hf.decoder, ses.decoder)):
        assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_dim, a.norm_eps) == \
               (b.dim, b.n_layers, b.n_heads, b.n_kv_heads, b.head_dim, b.hidden_dim, b.norm_eps)
        np.testing.assert_allclose(llama3_inv_freqs(a.head_dim, a.rope_theta, a.rope_scaling),
                                   llama3_inv_freqs(b.head_dim, b.rope_theta, b.rope_scaling), rtol=1e-12)
    assert (hf.text_vocab_size, hf.audio_vocab_size, hf.audio_num_codebooks, hf.max_seq_len) == (128256, 2051, 32, 2048)
