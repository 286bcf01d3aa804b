"""Podcast scripts: the YAML format and its line-numbered errors; rendering on the tiny model
(length, chapters, resume after a stop, re-rendering after an edit)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dialogue.podcast import ScriptError, line_seed, load_script, parse_script

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "podcast.yaml"


def script_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def errors_of(text: str, **kwargs) -> list[tuple[int | None, str]]:
    with pytest.raises(ScriptError) as caught:
        parse_script(script_text(text), **kwargs)
    return caught.value.errors


# --- the format ----------------------------------------------------------------------------------


def test_short_and_long_forms_read_the_same():
    script = parse_script(script_text("""
        title: Forms
        speakers:
          alice: conversational_a
          bob:
            voice: conversational_b
        defaults: {temperature: 0.5, top_k: 20, seed: 3, pause: 0.25, max_audio_length_ms: 900}
        lines:
          - alice: Hi there
          - bob: "Hello, Alice."
            pause: 1
          - speaker: alice
            text: >
              Folded
              text.
            temperature: 0.7
          - bob: {text: "Nested form", top_k: 5, seed: 11}
    """))
    assert script.title == "Forms"
    assert [(s.name, s.id, s.voice) for s in script.speakers] == [
        ("alice", 0, "conversational_a"),
        ("bob", 1, "conversational_b"),
    ]
    assert [(l.speaker, l.text) for l in script.lines] == [
        ("alice", "Hi there"),
        ("bob", "Hello, Alice."),
        ("alice", "Folded text."),
        ("bob", "Nested form"),
    ]
    assert [l.pause for l in script.lines] == [0.25, 1.0, 0.25, 0.0]  # none after the last line
    assert [l.temperature for l in script.lines] == [0.5, 0.5, 0.7, 0.5]
    assert [l.top_k for l in script.lines] == [20, 20, 20, 5]
    assert [l.seed for l in script.lines] == [None, None, None, 11]
    assert {l.max_audio_length_ms for l in script.lines} == {900}
    assert script.seed == 3
    assert [l.yaml_line for l in script.lines] == [8, 9, 11, 16]


def test_text_is_kept_as_written():
    # plain YAML would read `yes` as True and `42` as a number; a line is always text
    script = parse_script(script_text("""
        speakers: {a: conversational_a}
        lines:
          - a: yes
          - a: 42
          - a: "  spaced   out  "
    """))
    assert [l.text for l in script.lines] == ["yes", "42", "spaced out"]


def test_speaker_ids_and_list_form(tmp_path):
    clip = tmp_path / "sam.wav"
    soundfile.write(clip, np.zeros(2400, dtype=np.float32), 24000)
    script = parse_script(
        script_text("""
            speakers:
              - name: ann
                id: 1
              - name: sam
                ref_audio: sam.wav
                ref_text: "Hello, I'm Sam."
              - name: zed
            lines:
              - ann: one
              - sam: two
              - zed: three
        """),
        base_dir=tmp_path,
    )
    ann, sam, zed = script.speakers
    assert (ann.id, sam.id, zed.id) == (1, 0, 2)  # explicit ids first, then the free ones in order
    assert ann.voice is None and zed.voice is None  # no voice: the model picks, the context keeps it
    assert sam.ref_audio == clip and sam.ref_text == "Hello, I'm Sam."


def test_the_example_is_valid():
    script = load_script(EXAMPLE)
    assert len(script.speakers) == 2 and len(script.lines) >= 6
    assert {s.voice for s in script.speakers} == {"conversational_a", "conversational_b"}


def test_line_seeds_are_fixed_and_distinct():
    seeds = [line_seed(42, i) for i in range(50)]
    assert seeds == [line_seed(42, i) for i in range(50)]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert seeds != [line_seed(43, i) for i in range(50)]


# --- errors: each one names its line; all are reported together -------------------------------

BAD_SCRIPTS = {
    "yaml syntax": ("""
        speakers: {a: conversational_a}
        lines:
          - a: "unclosed
          - a: fine
    """, 3, "YAML syntax error"),
    "unknown speaker": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
          - alcie: hello
    """, 4, "unknown speaker 'alcie' (did you mean 'alice'?)"),
    "empty text": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
          - alice: "   "
    """, 4, "empty text"),
    "no text": ("""
        speakers: {alice: conversational_a}
        lines:
          - speaker: alice
    """, 3, "has no text"),
    "missing voice file": ("""
        speakers:
          alice:
            ref_audio: missing.wav
            ref_text: hello
        lines:
          - alice: hi
    """, 3, "voice file not found"),
    "ref_audio without ref_text": ("""
        speakers:
          alice: {ref_audio: missing.wav}
        lines:
          - alice: hi
    """, 2, "no `ref_text:`"),
    "bad number": ("""
        speakers: {alice: conversational_a}
        defaults:
          temperature: warm
        lines:
          - alice: hi
    """, 3, "`temperature` must be a number"),
    "bad integer": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
            top_k: 2.5
    """, 4, "`top_k` must be a whole number"),
    "negative pause": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
            pause: -1
    """, 4, "`pause` must be at least 0"),
    "unknown key in defaults": ("""
        speakers: {alice: conversational_a}
        defaults:
          temprature: 0.5
        lines:
          - alice: hi
    """, 3, "unknown key 'temprature' in `defaults` (did you mean 'temperature'?)"),
    "unknown key in a line": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
            puase: 1
    """, 4, "unknown key 'puase' in a line (did you mean 'pause'?)"),
    "unknown top-level key": ("""
        speakers: {alice: conversational_a}
        line:
          - alice: hi
    """, 2, "unknown key 'line' in the script (did you mean 'lines'?)"),
    "two speakers on one line": ("""
        speakers: {alice: conversational_a, bob: conversational_b}
        lines:
          - alice: hi
            bob: hello
    """, 3, "one line has one speaker"),
    "line without speaker": ("""
        speakers: {alice: conversational_a}
        lines:
          - "alice says hi"
    """, 3, "a line must say who speaks"),
    "text that is a list": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: [hi, there]
    """, 3, "must be text, not a list"),
    "duplicate speaker id": ("""
        speakers:
          alice: {id: 0, voice: conversational_a}
          bob: {id: 0, voice: conversational_b}
        lines:
          - alice: hi
    """, 3, "the same id 0"),
    "reserved speaker name": ("""
        speakers: {pause: conversational_a}
        lines:
          - pause: hi
    """, 1, "cannot be a speaker's name"),
    "no lines": ("""
        speakers: {alice: conversational_a}
        lines: []
    """, 2, "`lines:` is empty"),
    "no speakers": ("""
        title: Empty
        lines:
          - alice: hi
    """, 1, "no `speakers:`"),
}


@pytest.mark.parametrize("case", list(BAD_SCRIPTS), ids=list(BAD_SCRIPTS))
def test_each_bad_script_names_its_line(case, tmp_path):
    text, line, message = BAD_SCRIPTS[case]
    errors = errors_of(text, base_dir=tmp_path)
    assert any(l == line and message in m for l, m in errors), errors


def test_all_errors_are_reported_at_once(tmp_path):
    errors = errors_of("""
        speakers:
          alice: conversational_a
          bob:
            ref_audio: nowhere.wav
            ref_text: hi
        defaults:
          seed: -3
        lines:
          - alice: ""
          - carol: hello
          - bob: fine
            top_k: zero
    """, base_dir=tmp_path)
    assert [line for line, _ in errors] == [4, 7, 9, 10, 12]


def test_error_message_lists_every_line(tmp_path):
    path = tmp_path / "show.yaml"
    path.write_text("speakers: {a: conversational_a}\nlines:\n  - b: hi\n  - a: ''\n")
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    message = str(caught.value)
    assert str(path) in message and "2 problems" in message and "nothing was generated" in message
    assert "line 3: unknown speaker 'b'" in message and "line 4: empty text" in message


def test_missing_script_file(tmp_path):
    with pytest.raises(ScriptError, match="does not exist"):
        load_script(tmp_path / "nope.yaml")
