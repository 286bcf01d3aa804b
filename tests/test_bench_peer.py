"""engine.bench peer: the driver that runs ours and transformers taking turns (the peer itself needs
torch and transformers in another virtualenv, so here a stand-in script plays it)."""

import json
import sys

import pytest

from engine.bench import peer
from engine.cpu import gemm

FAKE_PEER = """
import json, sys
arg = lambda name: sys.argv[sys.argv.index(name) + 1]
rows = int(arg("--prompt-rows"))
assert arg("--size") == "tiny" and arg("--chunk-frames") == "2"
print("some log line")
print(json.dumps({"peer": "transformers", "torch": "x", "transformers": "y", "threads": 2, "dtype": "bfloat16",
                  "prefill_rows_per_second": rows / 0.5, "first_frame_seconds": 2.0, "time_to_first_audio": 4.0,
                  "frames_per_second": 1.25, "frames_per_second_with_decode": 1.0, "all_audio_seconds": 6.0,
                  "prefill_seconds": 0.5}))
"""


def test_driver_takes_turns_and_reports_ratios(tmp_path, monkeypatch):
    """The real child processes: ours at tiny size with Mimi decoding, two variants; theirs a stand-in."""
    script = tmp_path / "peer.py"
    script.write_text(FAKE_PEER)
    monkeypatch.setattr(peer, "PEER_SCRIPT", script)
    ns = peer.parse_args(["--python", sys.executable, "--prompt-rows", "8", "--frames", "3", "--rounds", "2",
                          "--chunk-frames", "2", "--size", "tiny", "--variants", "default,q4",
                          "--ours", "--no-compile"])
    assert ns.ours == ["--no-compile"] and ns.variants == ["default", "q4"]
    r = peer.compare(ns)
    assert len(r["rounds"]) == 2 and list(r["rounds"][0]) == ["theirs", "default", "q4"]
    theirs = r["medians"]["theirs"]
    assert theirs["prefill_rows_per_second"] == 16.0 and theirs["frames_per_second"] == 1.25
    for variant in ("default", "q4"):
        ours = r["rounds"][0][variant]
        assert ours["variant"] == variant
        assert ours["first_frame_seconds"] > ours["prefill_seconds"] > 0  # prefill + one frame
        # Mimi decoding ran: the first chunk's decode is in the time to first audio
        assert ours["mimi_first_chunk_seconds"] > 0 and ours["first_chunk_frames"] == 2
        assert ours["time_to_first_audio"] > ours["first_frame_seconds"]
        assert 0 < ours["frames_per_second_with_decode"] < ours["frames_per_second"]
        assert ours["all_audio_seconds"] > ours["prefill_seconds"]
        assert ours["peak_rss_gb"] > 0
        # the same work through the Generator (CSMModel.generate's streaming path)
        assert 0 < ours["streamed_first_audio_seconds"] < ours["streamed_all_audio_seconds"]
        ratio = r["ratios_ours_over_theirs"][variant]["prefill_rows_per_second"]
        assert abs(ratio - r["medians"][variant]["prefill_rows_per_second"] / 16.0) < 1e-9
    assert r["rounds"][0]["theirs"]["peak_rss_gb"] > 0  # from wait4
    assert r["ours_detail"]["q4"]["quantize"] == 4 and r["ours_detail"]["default"]["quantize"] is None
    assert r["variant_options"] == {"default": ["--no-compile"], "q4": ["--no-compile", "--quantize", "4"]}
    text = peer.format_result(r)
    assert "/theirs" in text and "frames/s with decoding" in text and "time to first audio" in text
    json.dumps(r)


def fake_figures(scale: float) -> dict:
    return {"prefill_rows_per_second": 100.0 * scale, "first_frame_seconds": 2.0 / scale,
            "time_to_first_audio": 3.0 / scale, "frames_per_second": 1.0 * scale,
            "frames_per_second_with_decode": 0.8 * scale, "all_audio_seconds": 30.0 / scale, "peak_rss_gb": 4.0,
            "streamed_first_audio_seconds": 2.5 / scale, "streamed_all_audio_seconds": 28.0 / scale}


def test_variants_take_turns_and_the_report_gives_each_ratio():
    """Without child processes (no torch here): stand-ins for theirs and ours record the order."""
    ns = peer.parse_args(["--python", sys.executable, "--rounds", "3", "--variants", "default,q8,q4",
                          "--ours", "--threads", "1"])
    calls = []
    speed = {"default": 2.0, "q8": 3.0, "q4": 4.0}

    def theirs(ns):
        calls.append("theirs")
        figures = fake_figures(1.0)
        figures.update(torch="2.x", transformers="5.x", threads=2, dtype="bfloat16")
        if len(calls) > 8:  # the last round without a figure: the medians skip it
            figures["time_to_first_audio"] = None
        return figures

    def ours(ns, variant):
        calls.append(variant)
        options = [*ns.ours, *peer.variant_options(variant)]
        return {**fake_figures(speed[variant]), "variant": variant, "backend": "cpu", "dtype": "bfloat16",
                "quantize": {"q8": 8, "q4": 4}.get(variant), "backend_detail": " ".join(options)}

    r = peer.compare(ns, theirs_fn=theirs, ours_fn=ours)
    # each round runs each side once; every other round in the reverse order
    assert calls == ["theirs", "default", "q8", "q4", "q4", "q8", "default", "theirs",
                     "theirs", "default", "q8", "q4"]
    assert r["variants"] == ["default", "q8", "q4"]
    for variant, x in speed.items():
        ratios = r["ratios_ours_over_theirs"][variant]
        assert ratios["frames_per_second"] == pytest.approx(x)
        assert ratios["frames_per_second_with_decode"] == pytest.approx(x)
        assert ratios["first_frame_seconds"] == pytest.approx(1 / x)
        assert ratios["time_to_first_audio"] == pytest.approx(1 / x)
        assert ratios["peak_rss_gb"] == pytest.approx(1.0)
        assert ratios["streamed_first_audio_seconds"] == pytest.approx(1 / x)
    assert r["medians"]["theirs"]["time_to_first_audio"] == 3.0  # the None left out
    assert r["variant_options"]["q8"] == ["--threads", "1", "--quantize", "8"]

    text = peer.format_result(r)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("medians"))
    assert header.split() == ["medians", "theirs", "default", "/theirs", "q8", "/theirs", "q4", "/theirs"]
    fps = next(line for line in lines if line.startswith("frames/s with decoding"))
    assert fps.split()[-7:] == ["0.8", "1.6", "2.00x", "2.4", "3.00x", "3.2", "4.00x"]
    ttfa = next(line for line in lines if line.startswith("time to first audio"))
    assert ttfa.split()[-7:] == ["3", "1.5", "0.50x", "1", "0.33x", "0.75", "0.25x"]
    assert "q4       --threads 1 --quantize 4: cpu backend, bfloat16, 4-bit" in text
    assert "per round (theirs | default | q8 | q4):" in text
    per_round = [line for line in lines if line.startswith("time to first audio")][-1]
    assert per_round.split()[-3:] == ["3|1.5|1|0.75", "3|1.5|1|0.75", "n/a|1.5|1|0.75"]
    prefill = next(line for line in lines if line.startswith("prefill rows/s"))
    assert prefill.split()[-7:] == ["100", "200", "2.00x", "300", "3.00x", "400", "4.00x"]
    json.dumps(r)


def test_variant_names(capsys):
    assert peer.variant_options("default") == []
    assert peer.variant_options("q8") == ["--quantize", "8"]
    assert peer.variant_options("float32") == ["--dtype", "float32"]
    assert peer.parse_args(["--python", sys.executable]).variants == ["default", "q8", "q4"]
    for bad in ("q7", "int8", "default,default"):
        with pytest.raises(SystemExit):
            peer.parse_args(["--python", sys.executable, "--variants", bad])
        assert "--variants" in capsys.readouterr().err


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
