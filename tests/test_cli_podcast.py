"""`csm podcast`: validate, render on tiny-random, resume, restart; bad scripts generate nothing."""

from __future__ import annotations

import json
import textwrap

import soundfile
from click.testing import CliRunner

from dialogue.cli import main

SCRIPT = textwrap.dedent("""
    title: CLI show
    speakers:
      alice: conversational_a
      bob: conversational_b
    defaults: {seed: 3, pause: 0.2, max_audio_length_ms: 240}
    lines:
      - alice: Hello there.
      - bob: Hi, Alice.
      - alice: Shall we start?
""").lstrip()


def run(*args: str):
    return CliRunner().invoke(main, ["podcast", *args], catch_exceptions=False)


def test_renders_resumes_and_restarts(tiny_model_path, tmp_path):
    script = tmp_path / "show.yaml"
    script.write_text(SCRIPT)
    output = tmp_path / "out" / "show.wav"
    args = [str(script), "-o", str(output), "--model", str(tiny_model_path), "--quiet"]

    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "3 rendered now, 0 kept" in first.output
    audio, sample_rate = soundfile.read(output)
    assert sample_rate == 24000 and len(audio) > 0
    chapters = json.loads((tmp_path / "out" / "show.chapters.json").read_text())
    assert [c["speaker"] for c in chapters] == ["alice", "bob", "alice"]
    assert (tmp_path / "out" / "show.db").exists()

    again = run(*args)
    assert again.exit_code == 0 and "0 rendered now, 3 kept" in again.output

    script.write_text(SCRIPT.replace("Shall we start?", "Let's begin."))
    edited = run(*args)
    assert edited.exit_code == 0 and "1 rendered now, 2 kept" in edited.output

    restarted = run(*args, "--restart")
    assert restarted.exit_code == 0 and "3 rendered now, 0 kept" in restarted.output


def test_bad_script_lists_its_lines_and_writes_nothing(tmp_path):
    script = tmp_path / "bad.yaml"
    script.write_text(SCRIPT.replace("- bob: Hi, Alice.", "- bobby: Hi, Alice.").replace("Hello there.", '""'))
    output = tmp_path / "bad.wav"
    result = run(str(script), "-o", str(output), "--model", "tiny-random")
    assert result.exit_code == 1
    assert "2 problems" in result.output
    assert "line 7: empty text for 'alice'" in result.output
    assert "line 8: unknown speaker 'bobby' (did you mean 'bob'?)" in result.output
    assert list(tmp_path.iterdir()) == [script]


def test_check_only_validates(tmp_path):
    script = tmp_path / "show.yaml"
    script.write_text(SCRIPT)
    result = run(str(script), "--check")
    assert result.exit_code == 0 and "OK" in result.output and "3 lines" in result.output
    assert list(tmp_path.iterdir()) == [script]
