"""Hardening through the command line and the Python API (issue classes 1, 2, 4, 6 and 8).

Every bad value is one clear error naming the option and its range, through every surface that
takes it; a command that fails stores nothing; `podcast --check` refuses what a render would; a
voice is bounded so a registered voice always works; and the small honesty gaps are closed.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from dialogue.cli import main
from engine.errors import ContextTooLongError, InputError, VoiceError
from engine.option_checks import OPTIONS, check_option
from storage import Store

SR = 24_000
FAST = ["--model", "tiny-random", "--max_audio_length_ms", "240", "--seed", "1"]


def run(*args, input=None, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def _clip(path, seconds: float, rate: int = SR):
    sf.write(path, _noise(seconds)[: int(rate * seconds)] if rate == SR else
             np.zeros(int(rate * seconds), np.float32) + 0.01, rate)
    return path


# -- class 1: one check per option ----------------------------------------------------------------

BAD_VALUES = [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -0.1), ("temperature", 6),
    ("temperature", "0.5"), ("temperature", None), ("top_k", 2.5), ("top_k", -1), ("top_k", True),
    ("seed", 2**64), ("seed", 99999999999999999999), ("seed", -1), ("seed", "7"),
    ("max_audio_length_ms", math.inf), ("max_audio_length_ms", 0), ("max_audio_length_ms", 1e9),
    ("streaming_interval", math.inf), ("streaming_interval", 0.0), ("streaming_interval", math.nan),
    ("pause", math.nan), ("pause", 1e7), ("pause", -1), ("speaker", 99999999999999999999),
    ("speaker", -1), ("speaker", 1.5),
]


@pytest.mark.parametrize("name,value", BAD_VALUES)
def test_each_option_refuses_bad_values_naming_itself_and_its_range(name, value):
    with pytest.raises(InputError) as caught:
        check_option(name, value)
    message = str(caught.value)
    assert message.startswith(f"{name} must be ") and OPTIONS[name].describe() in message


@pytest.mark.parametrize("name,value,expected", [
    ("temperature", 0, 0.0), ("temperature", np.float32(0.5), 0.5), ("top_k", 2.0, 2),
    ("seed", None, None), ("seed", np.int64(2**32 - 1), 2**32 - 1), ("speaker", 1023, 1023),
    ("max_audio_length_ms", 80, 80.0), ("pause", 60, 60.0),
])
def test_good_values_come_back_in_the_option_type(name, value, expected):
    checked = check_option(name, value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("option,value,words", [
    ("--temperature", "nan", "temperature must be a finite number from 0 to 5"),
    ("--temperature", "warm", "temperature must be a finite number"),
    ("--seed", "99999999999999999999", "seed must be a whole number from 0 to 4294967295"),
    ("--max_audio_length_ms", "inf", "max_audio_length_ms must be a finite number from 80"),
    ("--streaming_interval", "inf", "streaming_interval must be a finite number above 0"),
    ("--speaker", "99999999999999999999", "speaker must be a whole number from 0 to 1023"),
    ("--top_k", "1e999", "top_k must be a whole number"),
])
def test_generate_refuses_bad_numbers_before_any_work(tmp_path, option, value, words):
    out = tmp_path / "x.wav"
    result = run("generate", *FAST, "--text", "Hi.", option, value, "-o", out)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("option,value", [("--pause", "nan"), ("--pause", "1e7")])
def test_replay_refuses_bad_pauses(tmp_path, option, value):
    db = tmp_path / "t.db"
    Store(db).close()
    result = run("replay", db, "-o", tmp_path / "x.wav", option, value)
    assert result.exit_code == 2 and "pause must be a finite number from 0 to 60" in result.output


def test_say_refuses_bad_numbers_and_stores_nothing(tmp_path):
    db = tmp_path / "t.db"
    for option, value in [("--seed", "99999999999999999999"), ("--speaker", "99999999999999999999"),
                          ("--temperature", "nan")]:
        result = run("say", "--db", db, *FAST, option, value, "Hello.")
        assert result.exit_code == 2 and option.strip("-") in result.output
    assert not db.exists() or Store(db).sessions() == []


@pytest.mark.parametrize("kwargs,words", [
    ({"temperature": "0.5"}, "temperature must be"), ({"seed": 2**64}, "seed must be"),
    ({"temperature": math.nan}, "temperature must be"), ({"top_k": 3.5}, "top_k must be"),
    ({"max_audio_length_ms": math.inf}, "max_audio_length_ms must be"),
    ({"stream": "yes"}, "stream must be True or False"), ({"speaker": True}, "speaker must be"),
    ({"stream": True, "streaming_interval": math.inf}, "streaming_interval must be"),
])
def test_python_api_raises_input_errors_for_the_same_values(tiny_model, kwargs, words):
    with pytest.raises(InputError, match=words):
        tiny_model.generate(text="Hi.", **kwargs)


def test_conversation_say_checks_options_before_anything_is_stored(tiny_model, tmp_path):
    from dialogue import Conversation

    with Conversation.open(tmp_path / "c.db", "s", model=tiny_model) as conv:
        for kwargs in ({"temperature": "0.5"}, {"seed": 2**64}, {"max_audio_length_ms": math.nan},
                       {"top_k": -3}):
            with pytest.raises(InputError):
                conv.say(0, "Hello.", **kwargs)
        with pytest.raises(InputError, match="speaker must be"):
            conv.say(2**70, "Hello.")
        assert len(conv) == 0
    with Store(tmp_path / "c.db") as store:
        assert store.sessions() == []  # nothing stored, not even the session


def test_temperature_nan_never_reaches_the_codec(tiny_model):
    from engine.sampling import make_sampler

    with pytest.raises(InputError, match="temperature"):
        make_sampler(float("nan"), 50)


# -- class 2: check outputs and inputs before generating; store nothing that failed ----------------

def test_say_to_an_unwritable_output_fails_before_storing(tmp_path):
    db = tmp_path / "t.db"
    result = run("say", "--db", db, *FAST, "-o", "/proc/x.wav", "Hello.")
    assert result.exit_code == 1 and "Cannot write '/proc/x.wav'" in result.output
    assert not db.exists() or Store(db).sessions() == []
    folder = tmp_path / "afolder.wav"
    folder.mkdir()
    assert "is a directory" in run("generate", *FAST, "--text", "Hi.", "-o", folder).output


def test_say_with_a_bad_clip_leaves_no_session_and_pins_nothing(tmp_path):
    db = tmp_path / "t.db"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....WAVEnot audio")
    result = run("say", "--db", db, *FAST, "--ref_audio", junk, "--ref_text", "Words.", "Hello.")
    assert result.exit_code == 1 and "Could not read" in result.output
    long_clip = _clip(tmp_path / "long.wav", 40.0)
    result = run("say", "--db", db, *FAST, "--ref_audio", long_clip, "--ref_text", "Words.", "Hi.")
    assert result.exit_code == 1 and "a voice may be at most 30 s" in result.output
    assert not db.exists() or Store(db).sessions() == []


def test_a_voice_whose_turn_fails_is_unpinned_again(tmp_path, tiny_model):
    from dialogue import Conversation

    db = tmp_path / "t.db"
    assert run("say", "--db", db, "--session", "s", *FAST, "Hello there.").exit_code == 0
    clip = _clip(tmp_path / "voice.wav", 3.0)
    # The turn cannot fit a 50-position budget: the voice pinned for it must not stay pinned.
    result = run("say", "--db", db, "--session", "s", *FAST, "--context_limit", "120",
                 "--ref_audio", clip, "--ref_text", "Some words.", "--speaker", "1", "Hi.")
    assert result.exit_code == 1, result.output
    with Store(db) as store:
        assert len(store.turns("s")) == 1 and store.voice_prompts("s") == {}
    with Conversation.open(db, "s", model=tiny_model, context_limit=100) as conv:
        with pytest.raises(ContextTooLongError, match="a turn needs at least"):
            conv.set_voice(1, ref_audio=_noise(3.0), ref_text="Some words.")
        assert conv.voices == {}


def test_say_ref_text_without_ref_audio_is_refused(tmp_path):
    result = run("say", "--db", tmp_path / "t.db", *FAST, "--ref_text", "Words.", "Hello.")
    assert result.exit_code == 2 and "--ref_text needs --ref_audio" in result.output
    result = run("generate", *FAST, "--ref_text", "Words.", "--text", "Hello.")
    assert result.exit_code == 2 and "--ref_text needs --ref_audio" in result.output


# -- class 4: podcast --check refuses what render refuses ---------------------------------------

def _script(tmp_path, body: str):
    path = tmp_path / "show.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_podcast_check_reports_unknown_voices_bad_clips_and_lines_too_long(tmp_path):
    long_clip = _clip(tmp_path / "long.wav", 40.0)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    script = _script(tmp_path, f"""\
        speakers:
          maya: nobody_voice
          miles: {{ref_audio: {long_clip}, ref_text: Words.}}
          zoe: {{ref_audio: junk.wav, ref_text: Words.}}
          ann: conversational_a
        lines:
          - ann: {"word " * 1500}
          - ann: Fine.
            pause: 100000
          - ann: {{text: Hello, max_audio_length_ms: .inf}}
        """)
    result = run("podcast", script, "--check", "--model", "tiny-random")
    assert result.exit_code == 1, result.output
    out = result.output
    assert "line 2: unknown voice 'nobody_voice'" in out
    assert "line 3: The clip of 'miles' is 40.0 s long" in out
    assert "line 4: Could not read" in out
    assert "line 7: the line of 'ann' does not fit the model's context" in out
    assert "line 9: `pause` must be a finite number from 0 to 60" in out
    assert "line 10: `max_audio_length_ms` must be a finite number" in out


def test_podcast_check_passes_a_good_script(tmp_path):
    script = _script(tmp_path, """\
        speakers: {ann: conversational_a, bob: conversational_b}
        lines:
          - ann: Hello.
          - bob: Hi.
        """)
    result = run("podcast", script, "--check", "--model", "tiny-random")
    assert result.exit_code == 0 and "OK" in result.output


# -- class 6: a registered voice always works ---------------------------------------------------

def test_voices_add_refuses_a_long_clip_and_warns_on_a_truncated_wav(tmp_path):
    long_clip = _clip(tmp_path / "long.wav", 180.0, rate=8000)
    result = run("voices", "add", "toolong", "--audio", long_clip, "--text", "Words.")
    assert result.exit_code == 1 and "180.0 s long; a voice may be at most 30 s" in result.output
    assert "toolong" not in run("voices").output
    cut = tmp_path / "cut.wav"
    data = _clip(tmp_path / "whole.wav", 4.0).read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the header still promises 4 s
    result = run("voices", "add", "cutvoice", "--audio", cut, "--text", "Words.")
    assert result.exit_code == 0, result.output
    assert "warning: audio file" in result.output and "cut short" in result.output
    assert "Traceback" not in result.output and "UserWarning" not in result.output


def test_voices_remove_and_overwrite(tmp_path):
    clip = _clip(tmp_path / "v.wav", 3.0)
    assert run("voices", "add", "replaceme", "--audio", clip, "--text", "One.").exit_code == 0
    again = run("voices", "add", "replaceme", "--audio", clip, "--text", "Two.")
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert run("voices", "add", "replaceme", "--audio", clip, "--text", "Two.", "--overwrite").exit_code == 0
    assert "Two." in run("voices").output
    assert run("voices", "remove", "replaceme").exit_code == 0
    assert "replaceme" not in run("voices").output
    gone = run("voices", "remove", "replaceme")
    assert gone.exit_code == 1 and "Unknown voice" in gone.output


# -- class 8: small honesty gaps ------------------------------------------------------------------

def test_voices_lists_registered_voices_without_the_model(tmp_path, monkeypatch):
    clip = _clip(tmp_path / "v.wav", 3.0)
    assert run("voices", "add", "offline_voice", "--audio", clip, "--text", "Hi.").exit_code == 0
    result = run("voices", "--model", str(tmp_path / "no-such-model"))
    assert result.exit_code == 0 and "offline_voice" in result.output
    assert "presets of" in result.output and "are not listed" in result.output
    run("voices", "remove", "offline_voice")


def test_csm_model_sets_every_commands_default(tmp_path, monkeypatch):
    out = tmp_path / "x.wav"
    result = run("generate", "--max_audio_length_ms", "240", "--seed", "1", "--quiet",
                 "--text", "Hi.", "-o", out, env={"CSM_MODEL": "tiny-random"})
    assert result.exit_code == 0, result.output
    for command in (["generate"], ["say"], ["voices"], ["podcast"], ["serve"], ["replay"]):
        assert "CSM_MODEL" in run(*command, "--help").output


def test_play_without_a_device_and_without_a_file_fails_before_generating(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    result = run("generate", *FAST, "--play", "--text", "Hi.")
    assert result.exit_code == 1 and "Nothing was generated" in result.output


def test_warnings_are_one_line_and_the_watermark_notice_comes_once(tmp_path):
    result = run("generate", *FAST, "--quiet", "--text", "One. Two. Three.", "--max_piece_chars", "5",
                 "-o", tmp_path / "x.wav")
    # max_piece_chars is not a CLI option: fall back to three lines through stdin instead
    if result.exit_code == 2:
        result = run("generate", *FAST, "--quiet", "--text", "First line here. " * 30, "-o",
                     tmp_path / "x.wav")
    assert result.exit_code == 0, result.output
    assert result.output.count("not watermarked") <= 1
    assert "UserWarning" not in result.output and ".py:" not in result.output


def test_sessions_delete_without_a_terminal_says_to_use_yes(tmp_path):
    db = tmp_path / "t.db"
    assert run("say", "--db", db, "--session", "s", *FAST, "Hello.").exit_code == 0
    result = run("sessions", "delete", db, "s")  # CliRunner: no terminal, nothing on stdin
    assert result.exit_code == 2 and "--yes" in result.output and "Aborted" not in result.output
    assert Store(db).has_session("s")
