"""Model folders with nonsense in them (issue 15, class 5): each is a WeightsError naming the field
or the tensors, before anything large is allocated; and a quantized folder is not quantized again."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from dialogue.cli import main
from engine.checkpoints import load_csm
from engine.errors import InputError, WeightsError

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


@pytest.fixture()
def folder(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(GOLDEN / "csm_tiny", target)
    return target


def _edit_config(folder, change):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("field,value,words", [
    ("hidden_size", -32, "hidden_size is -32; it must be from 1"),
    ("max_position_embeddings", 1e9, "max_position_embeddings is 1000000000; it must be from 1 to 32768"),
    ("num_hidden_layers", 2.5, "num_hidden_layers must be a whole number"),
    ("num_attention_heads", 3, "num_attention_heads (3) must be a multiple of num_key_value_heads"),
    ("intermediate_size", "64", "intermediate_size must be a whole number"),
    ("rms_norm_eps", -1, "rms_norm_eps is -1.0"),
    ("vocab_size", 0, "vocab_size is 0"),
    ("num_codebooks", 8, "num_codebooks is 8"),
    ("num_attention_heads", 0, "num_attention_heads is 0"),
])
def test_nonsense_in_config_is_a_weights_error_naming_the_field(folder, field, value, words):
    _edit_config(folder, lambda c: c.__setitem__(field, value))
    with pytest.raises(WeightsError) as caught:
        load_csm(folder)
    assert words in str(caught.value)


def test_nonsense_in_the_depth_decoder_config_names_it(folder):
    _edit_config(folder, lambda c: c["depth_decoder_config"].__setitem__("hidden_size", -1))
    with pytest.raises(WeightsError, match="depth_decoder_config.hidden_size is -1"):
        load_csm(folder)


@pytest.mark.parametrize("kind", ["integer", "nan"])
def test_integer_or_nan_weights_are_refused_naming_them(folder, kind):
    path = folder / "model.safetensors"
    weights = dict(mx.load(str(path)))
    name = next(k for k in sorted(weights) if k.endswith("lm_head.weight"))
    if kind == "integer":
        weights[name] = weights[name].astype(mx.int32)
    else:
        weights[name] = mx.full(weights[name].shape, np.nan, dtype=mx.float32)
    mx.save_safetensors(str(path), weights)
    words = "wrong type" if kind == "integer" else "NaN or infinite"
    with pytest.raises(WeightsError, match=words) as caught:
        load_csm(folder)
    assert "lm_head.weight" in str(caught.value)


def test_a_quantized_folder_is_not_quantized_again(tmp_path, tiny_model_path):
    runner = CliRunner()
    q8 = tmp_path / "q8"
    made = runner.invoke(main, ["convert", "--model", str(tiny_model_path), "--quantize", "8",
                                "--group-size", "32", "-o", str(q8)])
    assert made.exit_code == 0, made.output
    again = runner.invoke(main, ["convert", "--model", str(q8), "--quantize", "4", "--group-size",
                                 "32", "-o", str(tmp_path / "q4")])
    assert again.exit_code == 1 and "already quantized to 8 bits" in again.output
    assert not (tmp_path / "q4").exists()
    from engine.checkpoints.convert import write_quantized_model

    with pytest.raises(InputError, match="already quantized"):
        write_quantized_model(q8, tmp_path / "q4b", 4, 32, progress=lambda *_: None)
