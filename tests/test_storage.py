"""storage.Store on both backends (SQLite, PostgreSQL): schema, round trips, transactions, several
processes on one database. The `db_target` fixture (conftest.py) runs each test once per backend."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from storage import (
    LATEST_VERSION,
    ConstraintError,
    SchemaVersionError,
    SessionNotFoundError,
    StorageError,
    Store,
    open_store,
)
from storage.postgres import PostgresStore
from storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


def codes(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 2051, size=(frames, 32)).astype(np.int32)


@pytest.fixture
def target(db_target):
    return db_target()


@pytest.fixture
def store(target):
    with open_store(target) as s:
        yield s


def test_storage_does_not_import_mlx_or_engine():
    code = "import sys, storage; print(any(m.split('.')[0] in ('mlx', 'engine', 'dialogue') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sqlite_pragmas(tmp_path):
    with Store(tmp_path / "talk.db") as store:
        assert isinstance(store, SQLiteStore)
        assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        assert store.query("PRAGMA foreign_keys")[0]["foreign_keys"] == 1
        assert store.query("PRAGMA busy_timeout")[0]["timeout"] >= 1000


def test_schema_version(store, target):
    assert isinstance(store, PostgresStore if isinstance(target, str) else SQLiteStore)
    assert isinstance(Store(target), type(store))  # Store(target) dispatches like open_store
    versions = [row["version"] for row in store.query("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, LATEST_VERSION + 1)) and store.schema_version() == LATEST_VERSION
    assert store.integrity_check() == ["ok"]


def test_turn_round_trip(store):
    store.open_session("demo", meta={"model": "tiny"})
    audio = np.sin(np.linspace(0, 200, 4800)).astype(np.float32) * 0.5
    c = codes(7)
    turn = store.append_turn(
        "demo", speaker=1, text="Hello there.", codes=c, audio=audio, source="generated",
        params={"temperature": 0.9, "top_k": 50}, seed=1234, timing={"prefill_tokens": 12},
        meta={"mood": "happy"}, window_start=0,
    )
    assert turn.index == 0 and turn.source == "generated" and turn.speaker == 1
    assert turn.codes.dtype == np.int32 and np.array_equal(turn.codes, c)
    assert turn.params == {"temperature": 0.9, "top_k": 50}
    assert turn.seed == 1234 and turn.timing == {"prefill_tokens": 12} and turn.meta == {"mood": "happy"}
    assert turn.has_audio and turn.window_start == 0 and turn.frames == 7
    restored, sr = store.audio(turn.id)
    assert sr == 24000 and restored.dtype == np.float32
    np.testing.assert_allclose(restored, audio, atol=1e-6)
    info = store.session("demo")
    assert (info.turns, info.frames, info.voices, info.meta) == (1, 7, 0, {"model": "tiny"})


def test_codes_stored_as_int16_blob(store):
    store.open_session("s")
    store.append_turn("s", speaker=0, text="a", codes=codes(5))
    (row,) = store.query("SELECT codes, frames, codebooks FROM segments")
    assert len(row["codes"]) == 5 * 32 * 2 and (row["frames"], row["codebooks"]) == (5, 32)
    with pytest.raises(StorageError):
        store.append_turn("s", speaker=0, text="a", codes=np.full((2, 32), 70000))
    with pytest.raises(StorageError):
        store.append_turn("s", speaker=0, text="a", codes=np.zeros(32))


def test_indices_undo_truncate(store):
    store.open_session("s")
    for i in range(5):
        store.append_turn("s", speaker=i % 2, text=f"turn {i}", codes=codes(2, i), source="recorded")
    assert [t.index for t in store.turns("s")] == [0, 1, 2, 3, 4]
    popped = store.pop_turn("s")
    assert popped.text == "turn 4"
    assert store.append_turn("s", speaker=0, text="again", codes=codes(1)).index == 4
    assert store.truncate("s", 2) == 3
    assert [t.text for t in store.turns("s")] == ["turn 0", "turn 1"]
    assert store.truncate("s", 0) == 2 and store.pop_turn("s") is None


def test_revision_changes_on_every_write(store):
    store.open_session("s")
    seen = [store.revision("s")]
    store.append_turn("s", speaker=0, text="a", codes=codes(1))
    seen.append(store.revision("s"))
    store.pop_turn("s")
    seen.append(store.revision("s"))
    store.append_turn("s", speaker=0, text="b", codes=codes(1))  # may reuse the popped row id
    seen.append(store.revision("s"))
    assert len(set(seen)) == len(seen)


def test_voice_prompts_pinned_one_per_speaker(store):
    store.open_session("s")
    store.set_voice_prompt("s", speaker=1, text="one", codes=codes(3), meta={"voice": "a"})
    store.set_voice_prompt("s", speaker=0, text="zero", codes=codes(4))
    store.set_voice_prompt("s", speaker=1, text="one again", codes=codes(2), audio=np.zeros(100))
    voices = store.voice_prompts("s")
    assert list(voices) == [0, 1]
    assert voices[1].text == "one again" and voices[1].source == "voice_prompt" and voices[1].index is None
    assert store.turns("s") == [] and store.session("s").voices == 2
    session_id = store.session("s").id
    with pytest.raises(ConstraintError):  # the partial unique index backs the rule up
        store.query(
            "INSERT INTO segments (session_id, source, speaker, text, frames, codebooks, codes, created_at)"
            " VALUES (?, 'voice_prompt', 1, 'x', 0, 32, ?, 'now')", [session_id, b""]
        )
    assert store.remove_voice_prompt("s", 1) and not store.remove_voice_prompt("s", 1)
    assert list(store.voice_prompts("s")) == [0]


def test_sessions_listing_and_delete(store):
    store.open_session("a")
    store.open_session("b")
    store.open_session("a")  # opening again does not duplicate
    store.append_turn("b", speaker=0, text="x", codes=codes(3))
    assert [s.name for s in store.sessions()] == ["a", "b"]
    assert store.delete_session("b") == 1
    assert not store.has_session("b")
    with pytest.raises(SessionNotFoundError, match="sessions: 'a'"):
        store.turns("b")
    with pytest.raises(StorageError):
        store.open_session("  ")


def test_foreign_keys_enforced(store):
    with pytest.raises(ConstraintError):
        store.query(
            "INSERT INTO segments (session_id, idx, source, speaker, text, frames, codebooks, codes, created_at)"
            " VALUES (99, 0, 'generated', 0, 'x', 0, 32, ?, 'now')", [b""]
        )


def test_failed_transaction_leaves_nothing(store):
    store.open_session("s")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.append_turn("s", speaker=0, text="half", codes=codes(1))
            raise RuntimeError("crash in the middle")
    assert store.turns("s") == [] and store.integrity_check() == ["ok"]


def test_reopen_persists(target):
    path = target
    with Store(path) as s:
        s.open_session("s")
        s.append_turn("s", speaker=0, text="kept", codes=codes(2), seed=7)
    with Store(path) as s:
        (turn,) = s.turns("s")
        assert turn.text == "kept" and turn.seed == 7 and np.array_equal(turn.codes, codes(2))


def test_newer_schema_refused(target):
    with Store(target) as s:
        s.query("INSERT INTO schema_version VALUES (?, 'from the future', 'now')", [LATEST_VERSION + 1])
    with pytest.raises(SchemaVersionError, match="upgrade"):
        Store(target)
    with pytest.raises(SchemaVersionError, match="upgrade"):
        open_store(target, readonly=True)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open"):
        Store(path)


APPENDER = textwrap.dedent(
    """
    import sys, numpy as np
    from storage import Store
    store = Store(sys.argv[1])
    store.open_session("shared")
    for i in range(int(sys.argv[3])):
        store.append_turn("shared", speaker=int(sys.argv[2]), text=f"{sys.argv[2]}-{i}",
                          codes=np.zeros((2, 32), np.int32))
    """
)


def test_two_processes_append_to_one_database(target):
    path = target
    Store(path).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(sp), "25"], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
        for sp in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with Store(path) as s:
        turns = s.turns("shared")
        assert [t.index for t in turns] == list(range(50))
        assert sorted(t.text for t in turns) == sorted(f"{sp}-{i}" for sp in (0, 1) for i in range(25))


HOLDER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from storage import Store
    store = Store(sys.argv[1])
    with store.transaction():
        store.append_turn("s", speaker=0, text="holder", codes=np.zeros((1, 32), np.int32))
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    time.sleep(60)
    """
)


def test_second_writer_waits_for_the_first(target):
    path = target
    with Store(path) as s:
        s.open_session("s")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1.5"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with Store(path) as s:  # the write below blocks until the holder commits, then succeeds
            s.append_turn("s", speaker=1, text="waiter", codes=np.zeros((1, 32), np.int32))
            assert [t.text for t in s.turns("s")] == ["holder", "waiter"]
    finally:
        holder.kill()
        holder.wait()


def test_kill_during_write_transaction_keeps_earlier_turns(target):
    path = target
    with Store(path) as s:
        s.open_session("s")
        s.append_turn("s", speaker=0, text="before", codes=codes(3))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "60"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with Store(path) as s:
        assert s.integrity_check() == ["ok"]
        assert [t.text for t in s.turns("s")] == ["before"]
        s.append_turn("s", speaker=1, text="after", codes=codes(1))
        assert [t.index for t in s.turns("s")] == [0, 1]
