"""python -m dialogue.server.bench: concurrent clients of the real HTTP server, on the tiny model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from dialogue.server import bench  # noqa: E402


def test_the_server_benchmark_reports_every_load(capsys, csm_home):
    assert bench.main(["--size", "tiny", "--streams", "1,2", "--frames", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    one, two = result["loads"]
    assert (one["streams"], two["streams"]) == (1, 2) and result["max_batch"] == 2
    for load in (one, two):
        assert load["ok"] == load["streams"] and not load["errors"]
        # every request makes exactly the frames asked for: 4 frames of 80 ms each
        assert load["audio_s"] == pytest.approx(load["streams"] * 4 * 0.08)
        assert load["first_audio_median_s"] > 0
    assert one["speedup_over_one"] == 1.0 and two["speedup_over_one"] > 0


def test_bad_streams_are_a_usage_error():
    with pytest.raises(SystemExit):
        bench.parse_args(["--streams", "one"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--streams", "0"])
