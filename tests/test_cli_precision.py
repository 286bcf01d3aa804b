"""--dtype and --quantize on `csm generate`, `say`, `podcast` and `serve`: passed to load_model, and a
value the model refuses is a one-line usage error."""

from __future__ import annotations

import textwrap

import mlx.core as mx
import mlx.nn as nn
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten

import engine
from dialogue.cli import main
from engine.checkpoints.convert import write_quantized_model

FAST = ["--max_audio_length_ms", "240", "--seed", "1"]
SCRIPT = textwrap.dedent("""
    title: Precision
    speakers:
      alice: conversational_a
    defaults: {seed: 3, max_audio_length_ms: 240}
    lines:
      - alice: Hello there.
""").lstrip()


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def loaded(monkeypatch):
    """The models the command loads, and the dtype/quantize it asked for."""
    models, calls = [], []
    real = engine.load_model

    def recording(name, **kwargs):
        calls.append(kwargs)
        models.append(real(name, **kwargs))
        return models[-1]

    monkeypatch.setattr(engine, "load_model", recording)
    return models, calls


def float_dtypes(model) -> set:
    return {v.dtype for _, v in tree_flatten(model.csm.parameters()) if mx.issubdtype(v.dtype, mx.floating)}


def quantized_bits(model) -> set:
    return {m.bits for _, m in model.csm.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


@pytest.fixture(scope="module")
def quantized_folder(tmp_path_factory):
    return write_quantized_model("tiny-random", tmp_path_factory.mktemp("q") / "tiny-8bit", 8, 32)


def test_generate_loads_the_dtype_and_quantization_asked_for(tmp_path, loaded):
    models, calls = loaded
    out = tmp_path / "x.wav"
    result = invoke("generate", "--model", "tiny-random", "--dtype", "float32", "--quantize", "8",
                    *FAST, "--quiet", "--text", "Hi.", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 44
    assert calls == [{"dtype": "float32", "quantize": 8}]
    assert quantized_bits(models[0]) == {8} and float_dtypes(models[0]) == {mx.float32}


def test_without_the_options_the_model_loads_as_stored(tmp_path, loaded):
    models, calls = loaded
    result = invoke("generate", "--model", "tiny-random", *FAST, "--quiet", "--text", "Hi.",
                    "-o", str(tmp_path / "x.wav"))
    assert result.exit_code == 0, result.output
    assert calls == [{"dtype": None, "quantize": None}] and quantized_bits(models[0]) == set()


def test_say_and_podcast_take_them_too(tmp_path, loaded):
    models, calls = loaded
    said = invoke("say", "--db", str(tmp_path / "talk.db"), "--model", "tiny-random",
                  "--dtype", "float32", "--quantize", "4", "--seed", "1",
                  "--max_audio_length_ms", "240", "Hello.")
    assert said.exit_code == 0, said.output
    script = tmp_path / "show.yaml"
    script.write_text(SCRIPT)
    rendered = invoke("podcast", str(script), "-o", str(tmp_path / "show.wav"), "--model", "tiny-random",
                      "--dtype", "bfloat16", "--quiet")
    assert rendered.exit_code == 0, rendered.output
    assert calls == [{"dtype": "float32", "quantize": 4}, {"dtype": "bfloat16", "quantize": None}]
    assert quantized_bits(models[0]) == {4} and float_dtypes(models[0]) == {mx.float32}
    assert quantized_bits(models[1]) == set() and float_dtypes(models[1]) == {mx.bfloat16}


def test_serve_loads_the_model_with_them(monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    result = invoke("serve", "--model", "tiny-random", "--dtype", "float32", "--quantize", "8",
                    "--max-batch", "1")
    try:
        assert result.exit_code == 0, result.output
        model = served[0].state.csm.backend.model
        assert quantized_bits(model) == {8} and float_dtypes(model) == {mx.float32}
    finally:
        for app in served:
            app.state.csm.worker.stop()


@pytest.mark.parametrize("args, needle", [
    (["--dtype", "float64"], "'float64' is not one of 'float32', 'bfloat16', 'float16'"),
    (["--quantize", "7"], "'7' is not one of '8', '6', '5', '4', '3', '2'"),
    (["--quantize", "eight"], "'eight' is not one of"),
])
def test_a_bad_value_is_a_usage_error(tmp_path, loaded, args, needle):
    result = invoke("generate", "--model", "tiny-random", *args, "--text", "Hi.", "-o", str(tmp_path / "x.wav"))
    assert result.exit_code == 2 and needle in result.output
    assert "Traceback" not in result.output and loaded[1] == []


@pytest.mark.parametrize("command", ["generate", "say", "podcast", "serve"])
def test_quantizing_a_quantized_model_is_a_one_line_usage_error(tmp_path, quantized_folder, command):
    script = tmp_path / "show.yaml"
    script.write_text(SCRIPT)
    where = {"generate": ["--text", "Hi.", "-o", str(tmp_path / "x.wav")],
             "say": ["--db", str(tmp_path / "talk.db"), "Hi."],
             "podcast": [str(script), "-o", str(tmp_path / "show.wav")],
             "serve": ["--max-batch", "1"]}[command]
    result = invoke(command, "--model", str(quantized_folder), "--quantize", "4", *where)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "already quantized" in error[0] and "--quantize" in error[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "show.wav").exists()
    assert not (tmp_path / "talk.db").exists()


def test_help_lists_them(tmp_path):
    for command in ("generate", "say", "podcast", "serve"):
        text = invoke(command, "--help").output
        assert "--dtype [float32|bfloat16|float16]" in text and "--quantize [8|6|5|4|3|2]" in text
