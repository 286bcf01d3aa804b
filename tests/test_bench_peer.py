"""engine.bench peer: the driver that runs ours and transformers taking turns (the peer itself needs
torch and transformers in another virtualenv, so here a stand-in script plays it)."""

import json
import sys

import pytest

from engine.bench import peer
from engine.cpu import gemm

FAKE_PEER = """
import json, sys
rows = int(sys.argv[sys.argv.index("--prompt-rows") + 1])
print("some log line")
print(json.dumps({"peer": "transformers", "torch": "x", "transformers": "y", "threads": 2,
                  "prefill_rows_per_second": rows / 0.5, "first_frame_seconds": 2.0,
                  "frames_per_second": 1.25, "prefill_seconds": 0.5}))
"""


def test_driver_takes_turns_and_reports_ratios(tmp_path, monkeypatch):
    script = tmp_path / "peer.py"
    script.write_text(FAKE_PEER)
    monkeypatch.setattr(peer, "PEER_SCRIPT", script)
    ns = peer.parse_args(["--python", sys.executable, "--prompt-rows", "8", "--frames", "2", "--rounds", "2",
                          "--ours", "--size", "tiny", "--no-compile"])
    assert ns.ours == ["--size", "tiny", "--no-compile"]
    r = peer.compare(ns)
    assert len(r["rounds"]) == 2
    theirs = r["medians"]["theirs"]
    assert theirs["prefill_rows_per_second"] == 16.0 and theirs["frames_per_second"] == 1.25
    ours = r["rounds"][0]["ours"]
    assert ours["first_frame_seconds"] > ours["prefill_seconds"] > 0  # prefill + one frame
    assert ours["peak_rss_gb"] > 0 and r["rounds"][0]["theirs"]["peak_rss_gb"] > 0  # from wait4
    ratio = r["ratios_ours_over_theirs"]["prefill_rows_per_second"]
    assert abs(ratio - r["medians"]["ours"]["prefill_rows_per_second"] / 16.0) < 1e-9
    text = peer.format_result(r)
    assert "ours/theirs" in text and "frames/s" in text
    json.dumps(r)


def test_missing_peer_python_is_a_clear_error(tmp_path, capsys):
    try:
        peer.parse_args(["--python", str(tmp_path / "nope")])
    except SystemExit as exc:
        assert exc.code == 2
    assert "make the peer virtualenv first" in capsys.readouterr().err


FAKE_PRODUCTS_PEER = """
import json, sys
assert "--products" in sys.argv and sys.argv[sys.argv.index("--layers") + 1] == "1"
print(json.dumps({"peer": "torch", "torch": "x", "threads": 2, "ms_per_block": 40.0,
                  "cpu_ms_per_block": 80.0, "rows_per_second_products": 100.0}))
"""


@pytest.mark.skipif(not gemm.available(), reason="the prefill kernels cannot be built here")
def test_products_mode_compares_the_kernels(tmp_path, monkeypatch):
    script = tmp_path / "peer.py"
    script.write_text(FAKE_PRODUCTS_PEER)
    monkeypatch.setattr(peer, "PEER_SCRIPT", script)
    ns = peer.parse_args(["--python", sys.executable, "--products", "4", "--layers", "1", "--bits", "4",
                          "--rounds", "1", "--product-rounds", "1", "--threads", "1"])
    r = peer.compare_products(ns)
    ours = r["rounds"][0]["ours"]
    assert ours["bits"] == 4 and ours["ms_per_block"] > 0 and ours["threads"] == 1
    assert abs(r["ratios_ours_over_theirs"]["ms_per_block"] - ours["ms_per_block"] / 40.0) < 1e-9
    assert "rows/s (products only)" in peer.format_result(r)
