"""engine.checkpoints.convert and `csm convert`: quantized folders load, and the logits stay near float32."""

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from dialogue.cli import main as cli
from engine.bench.generation import random_csm, random_prompt, tiny_config
from engine.errors import InputError
from engine.bench.accuracy import frame_logits_probe, logit_error
from engine.quantize import quantize_csm, quantized_paths
from engine.checkpoints.tiny import write_tiny_csm
from engine.checkpoints import load_csm


def _probe(model, seed=0):
    tokens, mask = random_prompt(10, model.config, seed)
    codes = np.random.default_rng(seed).integers(0, 2048, model.config.audio_num_codebooks)
    return frame_logits_probe(model, tokens, mask, codes)


@pytest.mark.parametrize("bits, max_rel", [(8, 0.05), (4, 0.5)])
def test_quantized_logits_stay_close(bits, max_rel):
    model = random_csm(tiny_config(), mx.float32, seed=3)
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
        quantize_csm(random_csm(tiny_config()), 7)


def test_convert_writes_a_folder_the_loader_reads(tmp_path):
    src = write_tiny_csm(tmp_path / "src", layout="transformers", config=tiny_config())
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
    src = write_tiny_csm(tmp_path / "src", layout="sesame", with_prompts=False, config=tiny_config())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    result = CliRunner().invoke(cli, ["convert", "--model", str(src), "-q", "4", "-o", str(tmp_path / "busy")])
    assert result.exit_code != 0 and "not empty" in result.output


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_unpacked_weights_equal_mlx_dequantize(bits):
    from engine.llama import dequantize_affine

    for group_size in (32, 64, 128):
        w = mx.random.normal((48, 256), key=mx.random.key(bits))
        q, scales, biases = mx.quantize(w, group_size, bits)
        want = mx.dequantize(q, scales, biases, group_size, bits)
        assert mx.array_equal(dequantize_affine(q, scales, biases, group_size, bits), want).item()


def test_quantized_layers_take_the_float32_path_for_many_rows_only(monkeypatch):
    """Our QuantizedLinear: a prompt block (>= FLOAT32_PRODUCT_MIN_ROWS rows) on the CPU goes through
    unpacked float32 weights; one row keeps MLX's quantized kernel. Both give the same products up
    to float rounding, and the whole model's prefill agrees either way."""
    import engine.llama as llama

    model = random_csm(tiny_config(), mx.float32, seed=5)
    quantize_csm(model, 8)
    layer = model["backbone"].layers[0].mlp.gate_proj
    assert isinstance(layer, llama.QuantizedLinear)

    calls = []
    real = llama.dequantize_affine
    monkeypatch.setattr(llama, "dequantize_affine", lambda *a: calls.append(1) or real(*a))
    with mx.stream(mx.cpu):
        x = mx.random.normal((1, llama.FLOAT32_PRODUCT_MIN_ROWS, layer.weight.shape[1] * 32 // layer.bits),
                             key=mx.random.key(1))
        kernel = mx.quantized_matmul(x, layer.weight, layer.scales, layer.biases, transpose=True,
                                     group_size=layer.group_size, bits=layer.bits)
        many = layer(x)
        assert calls and many.shape == kernel.shape
        assert mx.allclose(many, kernel, atol=1e-4, rtol=1e-4).item()
        calls.clear()
        one = layer(x[:, :1])
        assert not calls
        assert mx.allclose(one, kernel[:, :1], atol=1e-4, rtol=1e-4).item()

        tokens, mask = random_prompt(20, model.config, 0)
        def prefill():
            cache = model.new_backbone_cache(24)
            return model.backbone(model.embed_rows(tokens[None], mask[None]), cache)
        fast = prefill()
        monkeypatch.setattr(llama, "FLOAT32_PRODUCT_MIN_ROWS", 1 << 30)
        slow = prefill()
    assert mx.allclose(fast, slow, atol=1e-4, rtol=1e-4).item()


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_half_precision_prompt_blocks_run_in_float32_on_the_cpu(dtype, monkeypatch):
    """bfloat16/float16 Linear layers: many rows on the CPU go through float32 products (the BLAS),
    one row stays in MLX's own kernel; the prefill agrees either way up to half-precision rounding."""
    import engine.llama as llama

    model = random_csm(tiny_config(), dtype, seed=6)
    tokens, mask = random_prompt(20, model.config, 0)
    widened = []
    real = llama._product
    monkeypatch.setattr(llama, "_product", lambda x, w: widened.append(w.dtype) or real(x, w))
    with mx.stream(mx.cpu):
        def prefill():
            cache = model.new_backbone_cache(24)
            return model.backbone(model.embed_rows(tokens[None], mask[None]), cache)
        fast = prefill()
        assert fast.dtype == dtype and widened and set(widened) == {mx.float32}
        widened.clear()
        monkeypatch.setattr(llama, "FLOAT32_PRODUCT_MIN_ROWS", 1 << 30)
        slow = prefill()
        assert mx.float32 not in widened  # MLX's kernel (or, for bfloat16, engine.cpu.kernels)
    f, s = np.array(fast.astype(mx.float32)), np.array(slow.astype(mx.float32))
    assert np.abs(f - s).max() <= 0.05 * np.abs(s).max()
