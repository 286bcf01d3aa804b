"""The codec benchmark runs (tiny size) and reports its figures."""

from __future__ import annotations

import json

from engine.bench import mimi as bench


def test_mimi_bench_tiny(capsys):
    assert bench.main(["--size", "tiny", "--seconds", "1", "--repeat", "1", "--chunks", "1", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("decode_x_realtime", "stream1_x_realtime", "stream3_x_realtime", "encode_x_realtime"):
        assert result[key] > 0
    assert result["audio_seconds"] == 1.04 and "blas" in result
    assert "x real time" in bench.format_table(result)
