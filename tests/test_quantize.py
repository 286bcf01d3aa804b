"""engine.checkpoints.convert and `csm convert`: quantized folders load, and the logits stay near float32."""

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from dialogue.cli import main as cli
from engine.checkpoints.tiny import quantizable_tiny_config, random_csm, random_prompt, write_tiny_csm
from engine.errors import InputError
from engine.bench.accuracy import frame_logits_probe, logit_error
from engine.quantize import quantize_csm, quantized_paths
from engine.checkpoints import load_csm


def _probe(model, seed=0):
    tokens, mask = random_prompt(10, model.config, seed)
    codes = np.random.default_rng(seed).integers(0, 2048, model.config.audio_num_codebooks)
    return frame_logits_probe(model, tokens, mask, codes)


@pytest.mark.parametrize("bits, max_rel", [(8, 0.05), (4, 0.5)])
def test_quantized_logits_stay_close(bits, max_rel):
    model = random_csm(quantizable_tiny_config(), mx.float32, seed=3)
    reference = _probe(model)
    entry = quantize_csm(model, bits)
    assert entry == {"group_size": 64, "bits": bits}
    paths = quantized_paths(model)
    assert "decoder.layers.0.mlp.gate_proj" in paths and "backbone.layers.1.self_attn.q_proj" in paths
    assert "text_embeddings" in paths and "codebook0_head" in paths
    err = logit_error(reference, _probe(model))
    assert err["codebook0"]["rel"] < max_rel and err["all"]["rel"] < max_rel
    assert 0 < err["all"]["max_abs"]


def test_bad_bits_is_an_input_error():
    with pytest.raises(InputError):
        quantize_csm(random_csm(quantizable_tiny_config()), 7)


def test_convert_writes_a_folder_the_loader_reads(tmp_path):
    src = write_tiny_csm(tmp_path / "src", layout="transformers", config=quantizable_tiny_config())
    out = tmp_path / "q8"
    result = CliRunner().invoke(cli, ["convert", "--model", str(src), "--quantize", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 8}
    assert (out / "tokenizer.json").is_file()

    loaded = load_csm(out)
    assert "decoder.layers.0.self_attn.o_proj" in quantized_paths(loaded)
    # The same network as quantizing the float model in memory.
    expected = load_csm(src)
    quantize_csm(expected, 8)
    assert mx.allclose(_probe(loaded), _probe(expected), atol=1e-5).item()

    from engine import load_model

    model = load_model(out)
    results = list(model.generate(text="Hi.", seed=1, max_audio_length_ms=240))
    assert results[-1].codes.shape[1] == 32


def test_convert_refuses_a_non_empty_output(tmp_path):
    src = write_tiny_csm(tmp_path / "src", layout="sesame", with_prompts=False, config=quantizable_tiny_config())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    result = CliRunner().invoke(cli, ["convert", "--model", str(src), "-q", "4", "-o", str(tmp_path / "busy")])
    assert result.exit_code != 0 and "not empty" in result.output




@pytest.fixture(scope="module")
def converted(tiny_model_path, tmp_path_factory):
    """tiny-random converted by `csm convert --quantize 8` and `--quantize 4`."""
    out = {}
    for bits in (8, 4):
        folder = tmp_path_factory.mktemp("converted") / f"q{bits}"
        result = CliRunner().invoke(cli, ["convert", "--model", str(tiny_model_path), "--quantize", str(bits),
                                          "-o", str(folder)])
        assert result.exit_code == 0, result.output
        out[bits] = folder
    return out


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("backend, compiled", [("mlx", "1"), ("mlx", "0"), ("cpu", "1")])
def test_converted_models_generate_on_every_backend(converted, tmp_path, monkeypatch, bits, backend, compiled):
    """`csm convert` then `csm generate --model <converted>`: on the MLX backend (compiled frame step
    and eager) and on the native CPU backend (which falls back to MLX, with a warning, where it
    cannot build)."""
    monkeypatch.setenv("CSM_BACKEND", backend)
    monkeypatch.setenv("CSM_COMPILE", compiled)
    wav = tmp_path / "out.wav"
    result = CliRunner().invoke(cli, ["generate", "--model", str(converted[bits]), "--text", "Hi there.",
                                      "--seed", "1", "--max_audio_length_ms", "480", "-o", str(wav), "--quiet"])
    assert result.exit_code == 0, result.output
    assert wav.is_file() and wav.stat().st_size > 44
