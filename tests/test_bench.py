"""engine.bench on the tiny size: the output has the promised shape and keys (never a time)."""

import json

import mlx.core as mx
import numpy as np

from engine.bench import __main__ as bench_main
from engine.bench import generation
from engine.bench.generation import RESULT_KEYS


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
    model = generation.random_csm(generation.tiny_config(), mx.float32, seed=1)
    r = generation.measure(model, prompt_rows=6, frames=4, seed=1)
    assert r["codes"].shape == (4, model.config.audio_num_codebooks)
    assert r["codes"].dtype == np.int32 and r["frames_all_decodable"]


def test_random_prompt_rows():
    config = generation.tiny_config()
    tokens, mask = generation.random_prompt(12, config, seed=0)
    assert tokens.shape == mask.shape == (12, config.audio_num_codebooks + 1)
    assert mask[:3, -1].all() and not mask[3:, -1].any() and mask[3:, :-1].all()


def test_unknown_subcommand_falls_back_to_generation_parser():
    assert bench_main.SUBCOMMANDS[0] == "generation"


def test_default_dtype_by_device(monkeypatch):
    import pytest

    from engine.device import default_dtype
    from engine.errors import InputError

    monkeypatch.delenv("CSM_DTYPE", raising=False)
    from engine.cpu import kernels as cpu_kernels

    gpu = mx.default_device().type == mx.DeviceType.gpu
    expected = mx.bfloat16 if gpu or cpu_kernels.available() else mx.float32
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
    assert len(names) == 4 and all(len(row["all_fps"]) == 1 for row in result["rows"])
    # the compiled frame step draws the same codes as the eager one (same matmul orientation)
    compiled = next(row for row in result["rows"] if row["variant"].startswith("compiled, x @ W.T"))
    assert compiled["same_codes_as_first"]


def test_compare_prefill_times_quantized_prefill_and_agrees(capsys):
    import engine.llama as llama

    default = llama.FLOAT32_PRODUCT_MIN_ROWS
    try:
        code = generation.main(["--size", "tiny", "--prompt-tokens", "70", "--rounds", "1", "--dtype", "float32",
                                "--compare", "prefill", "--json"])
    finally:
        llama.FLOAT32_PRODUCT_MIN_ROWS = default
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["quantize"] == 8 and result["prompt_tokens"] == 70
    before, after = result["rows"]
    assert before["variant"].startswith("MLX's own") and after["prefill_rows_per_second"] > 0
    # the same prefill either way, up to float rounding
    assert after["hidden_max_rel_diff"] < 1e-4


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
