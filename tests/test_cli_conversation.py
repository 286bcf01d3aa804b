"""`csm say`, `csm replay`, `csm sessions ...` end to end on the tiny random model."""

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from dialogue.cli import main
from storage import Store

SAY = ["--model", "tiny-random", "--max_audio_length_ms", "640"]


@pytest.fixture(scope="module")
def talk(tmp_path_factory, tiny_model_path):
    """A database with one session of three turns, made through `csm say`."""
    folder = tmp_path_factory.mktemp("cli")
    db = folder / "talk.db"
    runner = CliRunner()
    outputs = []
    for i, (speaker, text) in enumerate([(0, "Hello there."), (1, "Hi! How are you?"), (0, "Fine, thanks.")]):
        args = ["say", "--db", str(db), "--session", "demo", "--speaker", str(speaker), "--seed", str(i), *SAY]
        if i == 0:
            args += ["--voice", "conversational_a", "-o", str(folder / "first.wav")]
        result = runner.invoke(main, [*args, text])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    return folder, db, outputs


def test_say_stores_turns_and_writes_audio(talk):
    folder, db, outputs = talk
    assert "demo turn 0 (speaker 0)" in outputs[0] and "demo turn 2 (speaker 0)" in outputs[2]
    with Store(db) as store:
        turns = store.turns("demo")
        assert [t.text for t in turns] == ["Hello there.", "Hi! How are you?", "Fine, thanks."]
        assert [t.seed for t in turns] == [0, 1, 2]
        assert list(store.voice_prompts("demo")) == [0]
    audio, sr = sf.read(folder / "first.wav")
    assert sr == 24000 and audio.shape[0] == turns[0].frames * 1920


def test_say_reads_stdin_and_reports_errors(talk, tmp_path):
    runner = CliRunner()
    db = tmp_path / "x.db"
    result = runner.invoke(main, ["say", "--db", str(db), "--seed", "1", *SAY], input="From stdin.\n")
    assert result.exit_code == 0, result.output
    assert Store(db).turns("default")[0].text == "From stdin."
    result = runner.invoke(main, ["say", "--db", str(db), "--voice", "nobody", *SAY, "Hi."])
    assert result.exit_code == 1 and "Error:" in result.output and "nobody" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["say", "--db", str(db), "--context_limit", "8", *SAY, "Too much."])
    assert result.exit_code == 1 and "positions" in result.output


def test_replay_writes_every_turn(talk):
    folder, db, _ = talk
    out = folder / "replay.wav"
    result = CliRunner().invoke(main, ["replay", str(db), "--session", "demo", "-o", str(out), "--pause", "0.5"])
    assert result.exit_code == 0, result.output
    audio, sr = sf.read(out)
    with Store(db) as store:
        frames = sum(t.frames for t in store.turns("demo"))
    assert sr == 24000 and audio.shape[0] == frames * 1920 + 2 * 12000
    assert np.abs(audio).max() > 0


def test_sessions_list_show_export(talk):
    folder, db, _ = talk
    runner = CliRunner()
    listed = runner.invoke(main, ["sessions", "list", str(db)])
    assert listed.exit_code == 0 and "demo" in listed.output and "3 turns" in listed.output
    shown = runner.invoke(main, ["sessions", "show", str(db), "demo"])
    assert shown.exit_code == 0, shown.output
    assert "conversational_a" in shown.output and "Hi! How are you?" in shown.output
    assert "seed 1" in shown.output
    exported = runner.invoke(main, ["sessions", "export", str(db), "demo", "-o", str(folder / "t.json")])
    assert exported.exit_code == 0, exported.output
    document = json.loads((folder / "t.json").read_text())
    assert [t["speaker"] for t in document["turns"]] == [0, 1, 0]
    assert document["turns"][1]["params"]["seed"] == 1 and document["voices"][0]["speaker"] == 0
    flac = runner.invoke(main, ["sessions", "export", str(db), "demo", "-o", str(folder / "t.flac")])
    assert flac.exit_code == 0 and sf.info(folder / "t.flac").samplerate == 24000
    missing = runner.invoke(main, ["sessions", "show", str(db), "nope"])
    assert missing.exit_code == 1 and "demo" in missing.output


def test_sessions_delete(talk, tmp_path):
    _, db, _ = talk
    runner = CliRunner()
    copy = tmp_path / "copy.db"
    with Store(db) as source, Store(copy) as target:
        source.db.conn.backup(target.db.conn)
    refused = runner.invoke(main, ["sessions", "delete", str(copy), "demo"], input="n\n")
    assert refused.exit_code == 1 and Store(copy).has_session("demo")
    done = runner.invoke(main, ["sessions", "delete", str(copy), "demo", "--yes"])
    assert done.exit_code == 0 and not Store(copy).has_session("demo")
    assert runner.invoke(main, ["sessions", "list", str(tmp_path / "absent.db")]).exit_code == 2
