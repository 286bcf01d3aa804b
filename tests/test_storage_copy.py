"""Moving sessions between backends (`csm sessions copy`, storage.copy_sessions), conversations on
PostgreSQL, and uploaded voices kept in a shared database."""

import io

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from dialogue.cli import main
from dialogue.conversation import Conversation
from storage import StorageError, Store, copy_sessions, open_store

SHORT = 400.0  # ms: 5 frames per generated turn


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def codes(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 2051, size=(frames, 32)).astype(np.int32)


def everything(target) -> dict:
    """Every stored value of every session and voice, for equality checks."""
    with open_store(target, readonly=True) as store:
        sessions = {info.name: store.dump_session(info.name) for info in store.sessions()}
        voices = {name: (v.text, v.audio.tobytes(), v.sample_rate, v.meta)
                  for name in store.voice_names() for v in [store.voice(name)]}
    return {"sessions": sessions, "voices": voices}


@pytest.fixture
def original(tmp_path, tiny_model):
    """An SQLite database with two sessions: generated and recorded turns, voice prompts, audio
    stored for some turns, meta, and a registered voice."""
    db = tmp_path / "original.db"
    with Conversation.open(db, "alpha", model=tiny_model) as conv:
        conv.set_voice(0, ref_audio=np.sin(np.arange(24_000) / 9).astype(np.float32) * 0.3,
                       ref_text="A voice clip.")
        conv.say(0, "Hello there.", seed=11, max_audio_length_ms=SHORT, meta={"mood": "calm"})
        conv.add(1, "A recorded answer.", np.cos(np.arange(12_000) / 7).astype(np.float32) * 0.2)
        conv.say(0, "And a third turn.", seed=12, max_audio_length_ms=SHORT)
    with Conversation.open(db, "beta", model=tiny_model, store_audio=False) as conv:
        conv.say(1, "Only codes here.", seed=13, max_audio_length_ms=SHORT)
    with Store(db) as store:
        store.update_session_meta("beta", {"owner": "tests", "n": [1, 2]})
        store.save_voice("narrator", "Words of the narrator.", np.linspace(-0.5, 0.5, 24_000),
                         meta={"speaker": 1})
    return db


def test_sqlite_to_postgres_to_sqlite_round_trip(original, postgres_cluster, tmp_path):
    url = postgres_cluster.new_url()
    first = cli("sessions", "copy", original, url)
    assert first.exit_code == 0, first.output
    assert "copied session alpha" in first.output and "copied voices: narrator" in first.output
    back = tmp_path / "back.db"
    second = cli("sessions", "copy", url, back)
    assert second.exit_code == 0, second.output
    assert everything(back) == everything(original)
    assert everything(url) == everything(original)
    assert cli("sessions", "list", url).output == cli("sessions", "list", original).output.replace(
        str(original), url)
    with Store(back) as store:
        assert store.integrity_check() == ["ok"]


def test_copy_named_sessions_and_existing_ones(original, tmp_path):
    target = tmp_path / "target.db"
    assert cli("sessions", "copy", original, target, "beta").exit_code == 0
    assert [s.name for s in Store(target).sessions()] == ["beta"]
    refused = cli("sessions", "copy", original, target)
    assert refused.exit_code == 1 and "already has session(s) 'beta'" in refused.output
    assert [s.name for s in Store(target).sessions()] == ["beta"]  # checked before writing
    missing = cli("sessions", "copy", original, target, "gamma")
    assert missing.exit_code == 1 and "no session 'gamma'" in missing.output
    skipped = cli("sessions", "copy", original, target, "--skip-existing")
    assert skipped.exit_code == 0 and "skipped session beta" in skipped.output
    with Store(target) as store:
        store.append_turn("beta", speaker=0, text="only in the copy", codes=codes(2))
    replaced = cli("sessions", "copy", original, target, "beta", "--replace")
    assert replaced.exit_code == 0
    assert everything(target)["sessions"] == everything(original)["sessions"]
    same = cli("sessions", "copy", original, original)
    assert same.exit_code == 2 and "same database" in same.output


def test_copy_keeps_the_context_so_the_next_turn_has_the_same_codes(original, db_target,
                                                                    tiny_model):
    target = db_target()
    with open_store(original, readonly=True) as src, open_store(target) as dst:
        report = copy_sessions(src, dst, ["alpha"])
    assert report.sessions == ["alpha"]
    spoken = []
    for db in (original, target):
        tiny_model.generator.reset()
        with Conversation.open(db, "alpha", model=tiny_model) as conv:
            spoken.append(conv.say(1, "One more turn, please.", seed=21, max_audio_length_ms=SHORT))
    assert np.array_equal(spoken[0].codes, spoken[1].codes)


def test_conversation_on_postgres_notices_other_writers(postgres_cluster, tiny_model):
    url = postgres_cluster.new_url()
    with Conversation.open(url, "shared", model=tiny_model) as a, \
            Conversation.open(url, "shared", model=tiny_model) as b:
        a.say(0, "First from a.", seed=1, max_audio_length_ms=SHORT)
        assert len(b) == 1  # the revision check sees a's turn
        b.add(1, "Then b.", np.zeros(4800, np.float32) + 0.01)
        assert [t.text for t in a.turns] == ["First from a.", "Then b."]
        a.undo()
        assert len(b) == 1


def test_copy_refuses_a_missing_source_and_bad_url(tmp_path):
    result = cli("sessions", "copy", tmp_path / "none.db", tmp_path / "t.db")
    assert result.exit_code == 2 and "no such file" in result.output
    with pytest.raises(StorageError, match="cannot connect"):
        open_store(f"postgresql://nobody@/nodb?host={tmp_path}", timeout=2)


# -- uploaded voices in a shared database ---------------------------------------------------------

def _clip(seconds=3.0) -> bytes:
    t = np.arange(int(24_000 * seconds)) / 24_000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24_000, format="WAV")
    return buffer.getvalue()


def test_voices_uploaded_to_one_server_are_seen_by_another(postgres_cluster, csm_home):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dialogue.server import create_app

    url = postgres_cluster.new_url()
    local = csm_home / "voices" / "shared_one.wav"
    with TestClient(create_app("tiny-random", url)) as one, \
            TestClient(create_app("tiny-random", url)) as two:
        reply = one.post("/v1/voices", data={"name": "shared_one", "transcript": "Hello there."},
                         files={"audio": ("clip.wav", _clip(), "audio/wav")})
        assert reply.status_code == 201, reply.text
        assert "shared_one" in [v["id"] for v in two.get("/v1/voices").json()["data"]]
        speech = two.post("/v1/audio/speech", json={
            "model": "csm-1b", "input": "In the shared voice.", "voice": "shared_one", "seed": 3,
            "max_audio_length_ms": SHORT, "response_format": "wav"})
        assert speech.status_code == 200, speech.text
        again = two.post("/v1/voices", data={"name": "shared_one", "transcript": "Again."},
                         files={"audio": ("clip.wav", _clip(), "audio/wav")})
        assert again.status_code == 409, again.text
    assert not local.exists()  # kept in the database, not in a replica's folder
    with open_store(url) as store:
        assert store.voice_names() == ["shared_one"]
        assert store.voice("shared_one").text == "Hello there."
