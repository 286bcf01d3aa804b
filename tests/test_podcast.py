"""Podcast scripts: the YAML format and its line-numbered errors; rendering on the tiny model
(length, chapters, resume after a stop, re-rendering after an edit)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dialogue.podcast import ScriptError, line_seed, load_script, parse_script, render

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
    """, 3, "`temperature` must be a finite number from 0 to 5"),
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
    """, 4, "`pause` must be a finite number from 0 to 60 (seconds), got -1"),
    "pause is not a number": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: hi
            pause: .nan
    """, 4, "`pause` must be a finite number from 0 to 60 (seconds), got nan"),
    "absurd pause": ("""
        speakers: {alice: conversational_a}
        defaults: {pause: 100000}
        lines:
          - alice: hi
    """, 2, "`pause` must be a finite number from 0 to 60"),
    "huge seed": ("""
        speakers: {alice: conversational_a}
        defaults: {seed: 99999999999999999999999}
        lines:
          - alice: hi
    """, 2, "`seed` must be a whole number from 0 to 4294967295"),
    "infinite max_audio_length_ms": ("""
        speakers: {alice: conversational_a}
        lines:
          - alice: {text: hi, max_audio_length_ms: .inf}
    """, 3, "`max_audio_length_ms` must be a finite number from 80 to 163840"),
    "huge speaker id": ("""
        speakers:
          alice: {id: 99999999999999999999, voice: conversational_a}
        lines:
          - alice: hi
    """, 2, "`id` must be a whole number from 0 to 1023"),
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


# --- rendering on the tiny model -----------------------------------------------------------------

SHOW = """
title: Six lines
speakers:
  alice: conversational_a
  bob: {id: 1, voice: conversational_b}
defaults:
  seed: 7
  pause: 0.25
  max_audio_length_ms: 400
lines:
  - alice: Hi Bob, good to see you.
  - bob: Hi Alice. How was the trip?
  - alice: Long, but the mountains were worth it.
    pause: 0.5
  - bob: Did you take pictures?
  - alice: Hundreds. I will show you.
  - bob: Great, let's have a look.
"""


def show(text: str = SHOW, **replace: str):
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_script(textwrap.dedent(text).lstrip("\n"))


class Stop(Exception):
    pass


def stop_after(number: int):
    def on_line(line, segment):
        if line.number == number:
            raise Stop(f"stopped after line {number}")

    return on_line


def stored_turns(db: Path, session: str, model) -> list:
    from dialogue.conversation import Conversation

    return Conversation.open(db, session=session, model=model).turns


@pytest.fixture(scope="module")
def tiny_model(tiny_model_path):
    """The tiny random model, loaded for this module (its KV cache sees only these renders)."""
    from engine import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture(scope="module")
def full_render(tiny_model, tmp_path_factory):
    """One uninterrupted render of SHOW, shared by the tests that compare against it."""
    folder = tmp_path_factory.mktemp("full")
    return render(show(), tiny_model, db=folder / "show.db", output=folder / "show.wav", progress=False)


def test_render_writes_wav_and_chapters(full_render, tiny_model):
    script = show()
    turns = stored_turns(full_render.db, full_render.session, tiny_model)
    assert len(turns) == 6 and full_render.rendered == [1, 2, 3, 4, 5, 6] and full_render.reused == 0
    clips = [len(t.segment.audio) for t in turns]
    assert all(n > 0 for n in clips)
    pauses = [round(line.pause * 24000) for line in script.lines]
    assert pauses == [6000, 6000, 12000, 6000, 6000, 0]

    audio, sample_rate = soundfile.read(full_render.output, dtype="float32")
    assert sample_rate == 24000
    assert len(audio) == len(full_render.audio) == sum(clips) + sum(pauses)

    chapters = json.loads(full_render.chapters_path.read_text())
    assert full_render.chapters_path == full_render.output.with_name("show.chapters.json")
    assert [c["line"] for c in chapters] == [1, 2, 3, 4, 5, 6]
    assert [c["speaker"] for c in chapters] == ["alice", "bob"] * 3
    assert [c["text"] for c in chapters] == [line.text for line in script.lines]
    position = 0
    for chapter, clip, pause in zip(chapters, clips, pauses):
        assert chapter["start"] == pytest.approx(position / 24000, abs=1e-3)
        assert chapter["end"] == pytest.approx((position + clip) / 24000, abs=1e-3)
        position += clip + pause
    assert position == len(audio)
    # the silence is where the chapters say it is
    end_of_3 = round(chapters[2]["end"] * 24000)
    assert not np.any(full_render.audio[end_of_3 + 1 : end_of_3 + 12000 - 1])


def test_turns_remember_their_lines(full_render, tiny_model):
    turns = stored_turns(full_render.db, full_render.session, tiny_model)
    identities = [t.meta["podcast"] for t in turns]
    assert [i["index"] for i in identities] == list(range(6))
    assert len({i["hash"] for i in identities}) == 6
    assert [t.segment.speaker for t in turns] == [0, 1, 0, 1, 0, 1]


def copy_of(rendered, folder: Path) -> tuple[Path, Path]:
    """A copy of a rendered show's database in `folder`: (db, output) to render on from."""
    for path in rendered.db.parent.glob(rendered.db.name + "*"):  # show.db and any -wal / -shm
        shutil.copy(path, folder / path.name)
    return folder / rendered.db.name, folder / rendered.output.name


def test_interrupted_render_resumes_and_matches(full_render, tiny_model, tiny_model_path, tmp_path):
    from engine import load_model

    db, output = tmp_path / "show.db", tmp_path / "show.wav"
    with pytest.raises(Stop):
        render(show(), tiny_model, db=db, output=output, progress=False, on_line=stop_after(3))
    assert len(stored_turns(db, "show", tiny_model)) == 3
    assert not output.exists()

    # as after a crash: a new process, a model whose KV cache holds nothing yet
    resumed = render(show(), load_model(str(tiny_model_path)), db=db, output=output, progress=False)
    assert resumed.reused == 3 and resumed.rendered == [4, 5, 6]
    np.testing.assert_array_equal(resumed.audio, full_render.audio)
    assert resumed.chapters == full_render.chapters
    assert output.read_bytes() == full_render.output.read_bytes()


def test_editing_a_line_rerenders_it_and_the_lines_after(full_render, tiny_model, tmp_path):
    db, output = copy_of(full_render, tmp_path)
    before = [t.segment.codes for t in stored_turns(db, "show", tiny_model)]

    edited = render(show(**{"Hundreds. I will show you.": "Only a few, sadly."}), tiny_model,
                    db=db, output=output, progress=False)
    assert edited.reused == 4 and edited.rendered == [5, 6]
    turns = stored_turns(db, "show", tiny_model)
    assert len(turns) == 6 and turns[4].segment.text == "Only a few, sadly."
    for old, turn in zip(before[:4], turns[:4]):
        np.testing.assert_array_equal(old, turn.segment.codes)
    # line 6 (same seed) came out differently: it heard the new line 5
    assert not np.array_equal(before[5], turns[5].segment.codes)
    start_5 = round(edited.chapters[4].start * 24000)
    np.testing.assert_array_equal(edited.audio[:start_5], full_render.audio[:start_5])

    # the same script again: nothing to do
    again = render(show(**{"Hundreds. I will show you.": "Only a few, sadly."}), tiny_model,
                   db=db, output=output, progress=False)
    assert again.rendered == [] and again.reused == 6


def test_pause_edits_only_remix(full_render, tiny_model, tmp_path):
    db, output = copy_of(full_render, tmp_path)
    longer = render(show(**{"pause: 0.25": "pause: 1.0"}), tiny_model, db=db, output=output, progress=False)
    assert longer.rendered == [] and longer.reused == 6
    assert len(longer.audio) == len(full_render.audio) + 4 * round(0.75 * 24000)


def test_restart_renders_everything_again(full_render, tiny_model, tmp_path):
    db, output = copy_of(full_render, tmp_path)
    again = render(show(), tiny_model, db=db, output=output, progress=False, restart=True)
    assert again.rendered == [1, 2, 3, 4, 5, 6] and again.reused == 0
    np.testing.assert_array_equal(again.audio, full_render.audio)
    assert len(stored_turns(db, "show", tiny_model)) == 6


def test_a_show_without_seed_resumes_with_the_seed_it_started_with(tiny_model, tmp_path):
    text = SHOW.replace("  seed: 7\n", "").split("  - bob: Did you")[0]  # 3 lines, no seed
    db, output = tmp_path / "show.db", tmp_path / "show.wav"
    with pytest.raises(Stop):
        render(show(text), tiny_model, db=db, output=output, progress=False, on_line=stop_after(2))
    resumed = render(show(text), tiny_model, db=db, output=output, progress=False)
    assert resumed.rendered == [3] and resumed.reused == 2
    assert {t.meta["podcast"]["show_seed"] for t in stored_turns(db, "show", tiny_model)} == {resumed.seed}


def test_unknown_voice_is_found_before_generating(tiny_model, tmp_path):
    db, output = tmp_path / "show.db", tmp_path / "show.wav"
    with pytest.raises(ScriptError) as caught:
        render(show(**{"bob: {id: 1, voice: conversational_b}": "bob: {id: 1, voice: nobody}"}),
               tiny_model, db=db, output=output, progress=False)
    assert caught.value.errors[0][0] == 4 and "unknown voice 'nobody'" in caught.value.errors[0][1]
    assert not db.exists() and not output.exists()


def test_the_example_renders_on_tiny_random(tiny_model, tmp_path):
    text = EXAMPLE.read_text().replace("max_audio_length_ms: 8000", "max_audio_length_ms: 160")
    script = parse_script(text, source=str(EXAMPLE), base_dir=EXAMPLE.parent)
    result = render(script, tiny_model, output=tmp_path / "example.wav", progress=False)
    assert result.rendered == list(range(1, len(script.lines) + 1))
    assert result.db == tmp_path / "example.db" and result.session == "example"
    assert len(soundfile.read(result.output)[0]) == len(result.audio) > 0


def test_a_cloned_voice_from_a_clip(tiny_model, tiny_model_path, tmp_path):
    shutil.copy(tiny_model_path / "prompts" / "conversational_a.wav", tmp_path / "sam.wav")
    script = parse_script(script_text("""
        speakers:
          sam: {ref_audio: sam.wav, ref_text: "A short clip of how Sam sounds."}
          kim: conversational_b
        defaults: {seed: 1, max_audio_length_ms: 160}
        lines:
          - sam: Hello from a cloned voice.
          - kim: And hello from a preset.
    """), base_dir=tmp_path)
    result = render(script, tiny_model, output=tmp_path / "clone.wav", progress=False)
    assert result.rendered == [1, 2]
    from dialogue.conversation import Conversation

    with Conversation.open(result.db, session="clone", model=tiny_model) as conv:
        assert conv.voices[0].text == "A short clip of how Sam sounds."


def test_switching_models_renders_again(full_render, tiny_model, tmp_path, monkeypatch):
    db, output = copy_of(full_render, tmp_path)
    monkeypatch.setattr(tiny_model, "path", tmp_path / "another-model")
    with pytest.raises(Stop):
        render(show(), tiny_model, db=db, output=output, progress=False, on_line=stop_after(1))
    turns = stored_turns(db, "show", tiny_model)
    assert len(turns) == 1  # the other model's lines were dropped, line 1 rendered again


def test_a_line_too_long_for_the_context_is_found_before_generating(tiny_model, tmp_path):
    long_text = "word " * 2500
    script = parse_script(f"speakers: {{a: conversational_a}}\nlines:\n  - a: hi\n  - a: {long_text}\n")
    with pytest.raises(ScriptError) as caught:
        render(script, tiny_model, output=tmp_path / "long.wav", progress=False)
    [(line, message)] = caught.value.errors
    assert line == 4 and "2048" in message
    assert stored_turns(tmp_path / "long.db", "long", tiny_model) == []  # line 3 was not generated either
