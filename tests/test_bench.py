"""engine.bench on the tiny size: the output has the promised shape and keys (never a time)."""

import json

import mlx.core as mx
import numpy as np

from engine.bench import __main__ as bench_main
from engine.bench import generation
from engine.bench.generation import RESULT_KEYS
from engine.checkpoints.tiny import quantizable_tiny_config, random_csm, random_prompt


def test_json_output_has_the_keys(capsys):
    code = bench_main.main(["--size", "tiny", "--frames", "3", "--prompt-tokens", "8", "--json", "--no-mimi"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in RESULT_KEYS:
        assert key in result, key
    assert result["frames"] == 3 and result["prompt_tokens"] == 8
    assert result["frames_per_second"] > 0 and result["real_time_factor"] > 0
    assert result["mlx_version"] == mx.__version__
    assert isinstance(result["blas"], str) and result["blas"]
    assert result["command"].startswith("python -m engine.bench")


def test_table_output_and_options(capsys):
    code = generation.main(["--size", "tiny", "--frames", "2", "--prompt-tokens", "4", "--dtype", "bfloat16",
                            "--quantize", "4", "--no-mimi"])
    assert code == 0
    out = capsys.readouterr().out
    for label in ("frames/s", "real-time factor", "time to first audio", "blas", "peak memory"):
        assert label in out


def test_fixed_frame_count_with_random_weights():
    from engine.backends import choose_backend

    model = random_csm(quantizable_tiny_config(), mx.float32, seed=1)
    r = generation.measure(choose_backend(model), model.config, prompt_rows=6, frames=4, seed=1)
    assert r["codes"].shape == (4, model.config.audio_num_codebooks)
    assert r["codes"].dtype == np.int32 and r["frames_all_decodable"]


def test_random_prompt_rows():
    config = quantizable_tiny_config()
    tokens, mask = random_prompt(12, config, seed=0)
    assert tokens.shape == mask.shape == (12, config.audio_num_codebooks + 1)
    assert mask[:3, -1].all() and not mask[3:, -1].any() and mask[3:, :-1].all()


def test_unknown_subcommand_falls_back_to_generation_parser():
    assert bench_main.SUBCOMMANDS[0] == "generation"


def test_default_dtype_by_device(monkeypatch):
    import pytest

    from engine.device import default_dtype
    from engine.errors import InputError

    monkeypatch.delenv("CSM_DTYPE", raising=False)
    from engine.backends import native_unavailable_reason

    gpu = mx.default_device().type == mx.DeviceType.gpu
    expected = mx.bfloat16 if gpu or native_unavailable_reason() is None else mx.float32
    assert default_dtype() == expected
    monkeypatch.setenv("CSM_DTYPE", "bfloat16")
    assert default_dtype() == mx.bfloat16
    monkeypatch.setenv("CSM_DTYPE", "float64")
    with pytest.raises(InputError):
        default_dtype()


def test_compare_runs_variants_side_by_side(capsys):
    code = generation.main(["--size", "tiny", "--frames", "2", "--rounds", "1", "--compare", "compile", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = [row["variant"] for row in result["rows"]]
    assert names == ["mlx eager", "mlx compiled"] and all(len(row["all_fps"]) == 1 for row in result["rows"])
    assert result["rows"][1]["same_codes_as_first"]  # the compiled frame step draws what the eager one does


def test_compare_prefill_times_both_backends_and_they_agree(capsys):
    code = generation.main(["--size", "tiny", "--prompt-tokens", "70", "--rounds", "1", "--dtype", "float32",
                            "--compare", "prefill", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["prompt_tokens"] == 70 and set(result["backends"]) == {"mlx", "cpu"}
    mlx_row, cpu_row = result["rows"]
    assert mlx_row["prefill_rows_per_second"] > 0 and cpu_row["prefill_rows_per_second"] > 0
    # the same prefill, up to the native backend's bfloat16 weights
    assert cpu_row["hidden_max_rel_diff"] < 0.05


def test_the_table_says_which_backend_ran(capsys):
    assert generation.main(["--size", "tiny", "--frames", "2", "--prompt-tokens", "8", "--no-mimi"]) == 0
    out = capsys.readouterr().out
    assert "backend" in out and ("cpu (cpu:" in out or "mlx (" in out)
    assert generation.main(["--size", "tiny", "--frames", "2", "--prompt-tokens", "8", "--no-mimi",
                            "--backend", "mlx"]) == 0
    assert "native CPU backend not used: chosen by the backend setting" in capsys.readouterr().out


def test_generator_path_makes_the_fixed_frame_count(capsys):
    code = generation.main(["--size", "tiny", "--frames", "4", "--prompt-tokens", "6", "--generator", "--json",
                            "--chunk-frames", "2"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    g = result["generator"]
    assert g["frames"] == 4 and g["chunks"] >= 2
    assert result["mimi_decode_realtime_multiple"] is None or result["mimi_decode_realtime_multiple"] > 0


def test_concurrency_benchmark_reports_each_load(capsys):
    import json

    code = bench_main.main(["concurrency", "--size", "tiny", "--streams", "1,3", "--frames", "4",
                            "--chunk-frames", "2", "--no-mimi", "--json", "--quiet"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    one, three = r["loads"]
    assert (one["streams"], three["streams"]) == (1, 3)
    assert three["frames"] == 12 and three["peak_batch"] == 3
    assert len(three["per_stream_fps"]) == len(three["time_to_first_audio"]) == 3
    assert one["speedup_over_one"] == 1.0 and three["peak_memory_gb"] > 0


def test_conversation_benchmark_interleaves_sessions(capsys):
    import json

    code = bench_main.main(["conversation", "--sessions", "2", "--turns", "2", "--repeats", "1",
                            "--frames", "2", "--voice-seconds", "1", "--no-mimi", "--json", "--quiet"])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert [(t["session"], t["turn"]) for t in r["turns"]] == [(1, 1), (2, 1), (1, 2), (2, 2)]
    assert r["codes_identical"]
    for t in r["turns"][2:]:  # a session's second turn reuses its own first turn's rows
        assert t["reuse"]["cached_rows"] > 0 and t["reuse"]["prefill_rows"] < t["no_reuse"]["prefill_rows"]
