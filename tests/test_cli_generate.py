"""`csm generate` and `csm voices` on the tiny random model, through click's test runner."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from dialogue.cli import main

FAST = ["--model", "tiny-random", "--max_audio_length_ms", "480", "--seed", "1"]


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_generate_writes_a_24k_wav_and_a_summary(tmp_path):
    out = tmp_path / "hello.wav"
    result = invoke("generate", *FAST, "--text", "Hello there.", "-o", str(out))
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24_000 and audio.ndim == 1 and len(audio) == 6 * 1920
    summary = result.stdout.strip().splitlines()[-1]
    assert str(out) in summary and "real-time factor" in summary and "frames/s" in summary
    assert "seed 1" in summary


def test_text_from_stdin_flac_and_stream_give_the_same_audio(tmp_path):
    wav, flac = tmp_path / "a.wav", tmp_path / "b.flac"
    assert invoke("generate", *FAST, "--quiet", "-o", str(wav), input="Hello there.\n").exit_code == 0
    result = invoke("generate", *FAST, "--quiet", "--stream", "--streaming_interval", "0.16",
                    "--text", "Hello there.", "-o", str(flac))
    assert result.exit_code == 0, result.output
    a, rate_a = sf.read(wav, dtype="float32")
    b, rate_b = sf.read(flac, dtype="float32")
    assert rate_a == rate_b == 24_000 and len(a) == len(b)
    assert sf.info(str(flac)).format == "FLAC"
    assert np.abs(a - b).max() < 1e-3  # 16-bit files of the same samples


def test_voice_options(tmp_path):
    for extra in (["--voice", "none"], ["--voice", "conversational_b", "--no-voice_match"],
                  ["--speaker", "1", "--temperature", "0", "--top_k", "10"]):
        result = invoke("generate", *FAST, "--quiet", "--text", "Hi.", "-o", str(tmp_path / "x.wav"), *extra)
        assert result.exit_code == 0, (extra, result.output)


def test_clone_from_a_clip(tmp_path):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(0).standard_normal(3 * 24_000).astype(np.float32) * 0.1, 24_000)
    result = invoke("generate", *FAST, "--quiet", "--text", "Hi.", "--ref_audio", str(clip),
                    "--ref_text", "Some words.", "-o", str(tmp_path / "x.wav"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, needle", [
    (["--voice", "nobody"], "Unknown voice 'nobody'"),
    (["--ref_audio", "__CLIP__"], "ref_text"),
    (["--ref_audio", "/no/such/file.wav", "--ref_text", "x"], "/no/such/file.wav"),
])
def test_errors_are_one_clean_line(tmp_path, args, needle):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(24_000, np.float32), 24_000)
    args = [str(clip) if a == "__CLIP__" else a for a in args]
    result = invoke("generate", *FAST, "--quiet", "--text", "Hi.", "-o", str(tmp_path / "x.wav"), *args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0]
    assert not (tmp_path / "x.wav").exists()


def test_bad_output_extension_is_a_usage_error(tmp_path):
    result = invoke("generate", *FAST, "--text", "Hi.", "-o", str(tmp_path / "x.mp3"))
    assert result.exit_code == 2 and ".wav or .flac" in result.output


def test_play_without_sounddevice_says_so_and_still_writes(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    out = tmp_path / "x.wav"
    result = invoke("generate", *FAST, "--quiet", "--play", "--text", "Hi.", "-o", str(out))
    assert result.exit_code == 0
    assert "sounddevice" in result.stderr
    assert out.exists()


def test_voices_lists_presets_and_registers_new_ones(tmp_path):
    listed = invoke("voices", "--model", "tiny-random")
    assert listed.exit_code == 0
    assert "conversational_a" in listed.output and "conversational_b" in listed.output
    clip = tmp_path / "bob.wav"
    sf.write(clip, np.random.default_rng(1).standard_normal(3 * 24_000).astype(np.float32) * 0.1, 24_000)
    added = invoke("voices", "add", "bob_cli", "--audio", str(clip), "--text", "I am Bob.")
    assert added.exit_code == 0, added.output
    assert "bob_cli" in invoke("voices", "--model", "tiny-random").output
    spoken = invoke("generate", *FAST, "--quiet", "--voice", "bob_cli", "--text", "Hi.", "-o", str(tmp_path / "b.wav"))
    assert spoken.exit_code == 0, spoken.output
    again = invoke("voices", "add", "bob_cli", "--audio", str(clip), "--text", "I am Bob.")
    assert again.exit_code == 1 and "already registered" in again.stderr
