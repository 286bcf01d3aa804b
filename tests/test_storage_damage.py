"""A damaged or unusual database (issue 15, class 3): damage is reported as one clear error naming
the session, never a traceback; read-only commands open the database read-only (a read-only file
works, a writer's lock is not waited for); a foreign SQLite file is refused, not written into."""

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dialogue.cli import main
from storage import (
    DamagedDatabaseError,
    ForeignDatabaseError,
    StorageError,
    Store,
    open_store,
)

ROOT = Path(__file__).resolve().parents[1]


def codes(frames, seed=0):
    return np.random.default_rng(seed).integers(0, 2051, size=(frames, 32)).astype(np.int32)


def fill(target, turns=3, session="talk"):
    with Store(target) as store:
        store.open_session(session, meta={"topic": "tests"})
        store.set_voice_prompt(session, speaker=0, text="voice", codes=codes(4, 99))
        for i in range(turns):
            store.append_turn(session, speaker=i % 2, text=f"turn {i}", codes=codes(3, i),
                              audio=np.zeros(2400, np.float32), params={"seed": i}, seed=i)
    return target


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# -- damaged rows, on both backends -----------------------------------------------------------

@pytest.mark.parametrize("column, value, what", [
    ("codes", b"\x01\x02\x03", "codes"),  # not a whole number of int16 codes
    ("codes", b"\xff\x7f" * 3 * 32, "codes"),  # the right size, values far outside 0..2050
    ("params", "{not json", "params"),
    ("timing", "[1, 2]", "timing"),  # JSON, but not an object
    ("meta", "\x01garbage", "meta"),
])
def test_damaged_column_names_the_session_and_turn(db_target, column, value, what):
    target = fill(db_target())
    with Store(target) as store:
        store.query(f"UPDATE segments SET {column} = ? WHERE idx = 1", [value])
        with pytest.raises(DamagedDatabaseError, match=rf"turn 1 of session 'talk'.*{what}"):
            store.turns("talk")
        assert store.voice_prompts("talk")[0].text == "voice"  # the rest is still readable
        assert [s.name for s in store.sessions()] == ["talk"]


def test_damaged_audio_and_session_meta(db_target):
    target = fill(db_target())
    with Store(target) as store:
        second = store.turns("talk")[1]
        store.query("UPDATE segments SET audio = ? WHERE id = ?", [b"fLaC but not really", second.id])
        with pytest.raises(DamagedDatabaseError, match="turn 1 of session 'talk'.*audio"):
            store.audio(second.id)
        store.query("UPDATE sessions SET meta = ? WHERE name = 'talk'", ["{oops"])
        with pytest.raises(DamagedDatabaseError, match="session 'talk'.*meta"):
            store.sessions()


def test_damaged_turn_through_the_cli_and_conversation(tmp_path, tiny_model):
    from dialogue.conversation import Conversation

    db = fill(tmp_path / "talk.db")
    with Store(db) as store:
        store.query("UPDATE segments SET codes = ? WHERE idx = 2", [b"\x00"])
    for args in (("sessions", "show", db, "talk"),
                 ("sessions", "export", db, "talk", "-o", tmp_path / "t.json"),
                 ("replay", db, "--session", "talk", "-o", tmp_path / "t.wav")):
        result = cli(*args)
        assert result.exit_code == 1 and "damaged" in result.output
        assert "turn 2 of session 'talk'" in result.output
    with pytest.raises(DamagedDatabaseError, match="session 'talk'"):
        Conversation.open(db, "talk", model=tiny_model)


# -- a damaged SQLite file ----------------------------------------------------------------------

def test_bit_flipped_file_gives_clear_errors(tmp_path):
    """Flip one bit at many places of a real database file: every read-only command either works
    or says the database is damaged / unusable, in one line, and never shows a traceback."""
    pristine = fill(tmp_path / "pristine.db", turns=6).read_bytes()
    rng = np.random.default_rng(15)
    for trial, position in enumerate(rng.integers(100, len(pristine), size=40)):
        damaged = bytearray(pristine)
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        db = tmp_path / f"flip{trial}.db"
        db.write_bytes(bytes(damaged))
        for args in (("sessions", "list", db), ("sessions", "show", db, "talk"),
                     ("sessions", "export", db, "talk", "-o", tmp_path / "x.json")):
            result = cli(*args)
            assert result.exit_code in (0, 1), result.output
            if result.exit_code:
                assert result.output.startswith("Error: "), result.output
                assert len(result.output.strip().splitlines()) == 1, result.output
    # a whole damaged page (its b-tree header overwritten) is reported as damage
    damaged = bytearray(pristine)
    damaged[4096:4096 + 64] = b"\xff" * 64
    db = tmp_path / "page.db"
    db.write_bytes(bytes(damaged))
    result = cli("sessions", "list", db)
    assert result.exit_code == 1 and "damaged" in result.output and ".recover" in result.output


def test_not_a_database_file(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    result = cli("sessions", "list", junk)
    assert result.exit_code == 1 and "junk.db" in result.output
    assert junk.read_bytes() == b"this is not sqlite" * 100


# -- read-only opening ----------------------------------------------------------------------------

def test_read_only_commands_do_not_write(tmp_path):
    db = fill(tmp_path / "talk.db")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    assert cli("sessions", "list", db).exit_code == 0
    assert cli("sessions", "show", db, "talk").exit_code == 0
    assert cli("sessions", "export", db, "talk", "-o", tmp_path / "t.json").exit_code == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    with open_store(db, readonly=True) as store:
        with pytest.raises(StorageError, match="read-only"):
            store.append_turn("talk", speaker=0, text="no", codes=codes(1))
    with pytest.raises(StorageError, match="no database file"):
        open_store(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_read_only_file_can_be_listed(tmp_path, monkeypatch):
    """A file the user cannot write (and whose folder they cannot write): SQLite's WAL readers
    would need a -shm file beside it, so it is read as an immutable file."""
    import storage.sqlite

    db = fill(tmp_path / "talk.db")
    db.chmod(0o444)
    monkeypatch.setattr(storage.sqlite, "_can_write_beside", lambda path: False)  # also as root
    try:
        result = cli("sessions", "list", db)
        assert result.exit_code == 0 and "talk" in result.output and "3 turns" in result.output
        assert cli("sessions", "show", db, "talk").exit_code == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.db"]  # no -wal, no -shm
    finally:
        db.chmod(0o644)


HOLDER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from storage import Store
    store = Store(sys.argv[1])
    with store.transaction():
        store.append_turn("talk", speaker=0, text="uncommitted", codes=np.zeros((1, 32), np.int32))
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_reading_does_not_wait_for_a_writer(tmp_path):
    db = fill(tmp_path / "talk.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # timeout=0: any wait for the writer's lock would fail at once with "busy"
        with open_store(db, readonly=True, timeout=0) as store:
            assert store.session("talk").turns == 3  # the writer's turn is not committed
            assert [t.text for t in store.turns("talk")] == ["turn 0", "turn 1", "turn 2"]
        result = subprocess.run([sys.executable, "-c", "from dialogue.cli import main; main()",
                                 "sessions", "list", str(db)],
                                cwd=ROOT, capture_output=True, text=True, timeout=25)
        assert result.returncode == 0 and "3 turns" in result.stdout, result.stderr
    finally:
        holder.kill()
        holder.wait()


# -- a foreign SQLite file ------------------------------------------------------------------------

def test_foreign_sqlite_file_is_refused(tmp_path, tiny_model):
    from dialogue.conversation import Conversation

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users (email) VALUES ('a@example.org')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    result = cli("sessions", "list", other)
    assert result.exit_code == 1 and "another program" in result.output and "users" in result.output
    result = cli("say", "--db", other, "--model", "tiny-random", "Hello.")
    assert result.exit_code == 1 and "another program" in result.output
    with pytest.raises(ForeignDatabaseError):
        Store(other)
    with pytest.raises(ForeignDatabaseError):
        Conversation.open(other, "s", model=tiny_model)
    assert other.read_bytes() == before
    tables = {r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")}
    assert tables == {"users"}


def test_foreign_postgres_tables_are_refused(postgres_cluster):
    import psycopg

    url = postgres_cluster.new_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE sessions (id serial PRIMARY KEY, token text)")
    with pytest.raises(ForeignDatabaseError, match="sessions"):
        open_store(url)
