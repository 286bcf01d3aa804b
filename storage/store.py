"""Store: conversations in one SQLite file (sessions, their turns and pinned voice prompts).

The file is opened in WAL mode with foreign keys on and a busy timeout, so several processes can
read while one writes, and a second writer waits for the first instead of failing. Every change is
one IMMEDIATE transaction (the write lock is taken up front, so two writers never deadlock on a lock
upgrade). A process killed at any point leaves either the whole turn or none of it.

A Store may be shared between threads: calls are serialised by a lock.
"""

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sqlite_utils

from .blobs import audio_to_flac, blob_to_codes, codes_to_blob, flac_to_audio
from .errors import SessionNotFoundError, StorageError
from .records import SessionInfo, StoredSegment
from .schema import SOURCES, migrate, utc_now

DEFAULT_TIMEOUT_S = 30.0

_SEGMENT_COLUMNS = (
    "s.id, s.idx, s.source, s.speaker, s.text, s.frames, s.codebooks, s.codes, "
    "s.audio IS NOT NULL AS has_audio, s.sample_rate, s.params, s.seed, s.timing, s.meta, "
    "s.window_start, s.created_at, ss.name AS session"
)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: dict | None) -> str:
    return json.dumps(value or {}, default=_json_default, sort_keys=True)


class Store:
    """`Store(path)`: open (creating and migrating if needed) a conversation database."""

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.path = Path(path) if str(path) != ":memory:" else None
        self._lock = threading.RLock()
        target = str(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(target, timeout=timeout, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.path is not None:
                self.db.enable_wal()
                self.db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: commits stay atomic
            with self.transaction():
                self.version = migrate(self.db)
        except sqlite3.DatabaseError as error:
            raise StorageError(f"cannot open {target} as a conversation database: {error}") from error

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path or ':memory:')!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); nested use joins the outer one."""
        with self._lock:
            conn = self.db.conn
            if conn.in_transaction:
                yield self.db
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def integrity_check(self) -> list[str]:
        """SQLite's own check plus foreign keys: ["ok"] when the file is sound."""
        with self._lock:
            problems = [row["integrity_check"] for row in self.db.query("PRAGMA integrity_check")]
            problems += [str(row) for row in self.db.query("PRAGMA foreign_key_check")]
            return problems

    # -- sessions --------------------------------------------------------------------------------

    def sessions(self) -> list[SessionInfo]:
        with self._lock:
            rows = self.db.query(
                "SELECT ss.*, "
                "(SELECT COUNT(*) FROM segments s WHERE s.session_id = ss.id AND s.idx IS NOT NULL)"
                " AS turns, "
                "(SELECT COALESCE(SUM(frames), 0) FROM segments s "
                " WHERE s.session_id = ss.id AND s.idx IS NOT NULL) AS frames, "
                "(SELECT COUNT(*) FROM segments s WHERE s.session_id = ss.id AND s.idx IS NULL)"
                " AS voices "
                "FROM sessions ss ORDER BY ss.id"
            )
            return [self._session_info(row) for row in rows]

    def has_session(self, name: str) -> bool:
        with self._lock:
            return self._session_id(name, required=False) is not None

    def session(self, name: str) -> SessionInfo:
        for info in self.sessions():
            if info.name == name:
                return info
        raise self._not_found(name)

    def open_session(self, name: str, meta: dict | None = None) -> SessionInfo:
        """The session called `name`, created (with `meta`) if it does not exist yet."""
        if not isinstance(name, str) or not name.strip():
            raise StorageError("a session name must be a non-empty string")
        with self.transaction() as db:
            if self._session_id(name, required=False) is None:
                db["sessions"].insert({"name": name, "created_at": utc_now(), "meta": _dumps(meta)})
        return self.session(name)

    def update_session_meta(self, name: str, meta: dict) -> None:
        with self.transaction() as db:
            session_id = self._session_id(name)
            db.execute("UPDATE sessions SET meta = ? WHERE id = ?", [_dumps(meta), session_id])
            self._bump(session_id)

    def delete_session(self, name: str) -> int:
        """Delete a session and all its segments; returns how many segments went with it."""
        with self.transaction() as db:
            session_id = self._session_id(name)
            removed = db.execute("DELETE FROM segments WHERE session_id = ?", [session_id]).rowcount
            db.execute("DELETE FROM sessions WHERE id = ?", [session_id])
            return removed

    # -- reading segments ------------------------------------------------------------------------

    def turns(self, session: str) -> list[StoredSegment]:
        """The session's turns in order (index 0, 1, ...)."""
        with self._lock:
            return self._select(session, "s.idx IS NOT NULL ORDER BY s.idx")

    def voice_prompts(self, session: str) -> dict[int, StoredSegment]:
        """The session's pinned voice prompts, by speaker (in speaker order)."""
        with self._lock:
            rows = self._select(session, "s.idx IS NULL ORDER BY s.speaker")
            return {row.speaker: row for row in rows}

    def turn(self, session: str, index: int) -> StoredSegment:
        with self._lock:
            rows = self._select(session, "s.idx = ?", [index])
            if not rows:
                raise StorageError(f"session {session!r} has no turn {index}")
            return rows[0]

    def revision(self, session: str) -> int:
        """A counter bumped by every write to the session (to notice writes by another process)."""
        with self._lock:
            rows = list(self.db.query("SELECT revision FROM sessions WHERE name = ?", [session]))
            if not rows:
                raise self._not_found(session)
            return int(rows[0]["revision"])

    def audio(self, segment_id: int) -> tuple[np.ndarray, int] | None:
        """The stored audio of one segment as (float32 samples, sample rate), or None."""
        with self._lock:
            rows = list(self.db.query("SELECT audio FROM segments WHERE id = ?", [segment_id]))
        if not rows:
            raise StorageError(f"no segment with id {segment_id}")
        blob = rows[0]["audio"]
        return None if blob is None else flac_to_audio(blob)

    # -- writing segments ------------------------------------------------------------------------

    def append_turn(
        self,
        session: str,
        *,
        speaker: int,
        text: str,
        codes,
        source: str = "generated",
        audio=None,
        sample_rate: int = 24000,
        params: dict | None = None,
        seed: int | None = None,
        timing: dict | None = None,
        meta: dict | None = None,
        window_start: int | None = None,
    ) -> StoredSegment:
        """Append one turn at the end of the session, in one transaction."""
        if source not in SOURCES or source == "voice_prompt":
            raise StorageError(f"a turn's source must be 'generated' or 'recorded', not {source!r}")
        row = self._segment_row(speaker, text, codes, source, audio, sample_rate, params, seed,
                                timing, meta, window_start)
        with self.transaction() as db:
            session_id = self._session_id(session)
            last = next(db.query("SELECT MAX(idx) AS m FROM segments WHERE session_id = ?", [session_id]))
            row.update(session_id=session_id, idx=0 if last["m"] is None else last["m"] + 1)
            self._bump(session_id)
            new_id = db["segments"].insert(row).last_pk
            return self._select(session, "s.id = ?", [new_id])[0]

    def set_voice_prompt(
        self,
        session: str,
        *,
        speaker: int,
        text: str,
        codes,
        audio=None,
        sample_rate: int = 24000,
        meta: dict | None = None,
    ) -> StoredSegment:
        """Pin (or replace) the voice prompt of one speaker, in one transaction."""
        row = self._segment_row(speaker, text, codes, "voice_prompt", audio, sample_rate, None, None,
                                None, meta, None)
        with self.transaction() as db:
            session_id = self._session_id(session)
            db.execute(
                "DELETE FROM segments WHERE session_id = ? AND idx IS NULL AND speaker = ?",
                [session_id, int(speaker)],
            )
            row.update(session_id=session_id, idx=None)
            self._bump(session_id)
            new_id = db["segments"].insert(row).last_pk
            return self._select(session, "s.id = ?", [new_id])[0]

    def remove_voice_prompt(self, session: str, speaker: int) -> bool:
        with self.transaction() as db:
            session_id = self._session_id(session)
            cursor = db.execute(
                "DELETE FROM segments WHERE session_id = ? AND idx IS NULL AND speaker = ?",
                [session_id, int(speaker)],
            )
            self._bump(session_id)
            return cursor.rowcount > 0

    def truncate(self, session: str, keep: int) -> int:
        """Keep the first `keep` turns; returns how many were removed."""
        if keep < 0:
            raise StorageError("truncate needs a number of turns >= 0")
        with self.transaction() as db:
            session_id = self._session_id(session)
            cursor = db.execute(
                "DELETE FROM segments WHERE session_id = ? AND idx >= ?", [session_id, int(keep)]
            )
            self._bump(session_id)
            return cursor.rowcount

    def pop_turn(self, session: str) -> StoredSegment | None:
        """Remove the last turn and return it (None when the session has no turns)."""
        with self.transaction() as db:
            rows = self._select(session, "s.idx IS NOT NULL ORDER BY s.idx DESC LIMIT 1")
            if not rows:
                return None
            db.execute("DELETE FROM segments WHERE id = ?", [rows[0].id])
            self._bump(self._session_id(session))
            return rows[0]

    # -- internals -------------------------------------------------------------------------------

    def _segment_row(self, speaker, text, codes, source, audio, sample_rate, params, seed, timing,
                     meta, window_start) -> dict:
        if int(speaker) < 0:
            raise StorageError(f"speaker must be >= 0, got {speaker}")
        blob, frames, codebooks = codes_to_blob(codes)
        if seed is not None and not -(2**63) <= int(seed) < 2**63:
            raise StorageError(f"seed {seed} does not fit in a 64-bit integer")
        return {
            "source": source,
            "speaker": int(speaker),
            "text": str(text),
            "frames": frames,
            "codebooks": codebooks,
            "codes": blob,
            "audio": None if audio is None else audio_to_flac(audio, sample_rate),
            "sample_rate": int(sample_rate),
            "params": _dumps(params),
            "seed": None if seed is None else int(seed),
            "timing": _dumps(timing),
            "meta": _dumps(meta),
            "window_start": None if window_start is None else int(window_start),
            "created_at": utc_now(),
        }

    def _bump(self, session_id: int) -> None:
        self.db.execute("UPDATE sessions SET revision = revision + 1 WHERE id = ?", [session_id])

    def _session_id(self, name: str, required: bool = True) -> int | None:
        rows = list(self.db.query("SELECT id FROM sessions WHERE name = ?", [name]))
        if rows:
            return rows[0]["id"]
        if required:
            raise self._not_found(name)
        return None

    def _not_found(self, name: str) -> SessionNotFoundError:
        known = [row["name"] for row in self.db.query("SELECT name FROM sessions ORDER BY id")]
        listing = ", ".join(repr(k) for k in known) if known else "none yet"
        return SessionNotFoundError(
            f"no session {name!r} in {self.path or ':memory:'} (sessions: {listing})"
        )

    def _select(self, session: str, where: str, params: list | None = None) -> list[StoredSegment]:
        session_id = self._session_id(session)
        rows = self.db.query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments s JOIN sessions ss ON ss.id = s.session_id "
            f"WHERE s.session_id = ? AND {where}",
            [session_id, *(params or [])],
        )
        return [self._segment(row) for row in rows]

    @staticmethod
    def _segment(row: dict) -> StoredSegment:
        return StoredSegment(
            id=row["id"],
            session=row["session"],
            index=row["idx"],
            source=row["source"],
            speaker=row["speaker"],
            text=row["text"],
            codes=blob_to_codes(row["codes"], row["frames"], row["codebooks"]),
            has_audio=bool(row["has_audio"]),
            sample_rate=row["sample_rate"],
            params=json.loads(row["params"] or "{}"),
            seed=row["seed"],
            timing=json.loads(row["timing"] or "{}"),
            meta=json.loads(row["meta"] or "{}"),
            window_start=row["window_start"],
            created_at=row["created_at"],
        )

    @staticmethod
    def _session_info(row: dict) -> SessionInfo:
        return SessionInfo(
            id=row["id"],
            name=row["name"],
            created_at=row["created_at"],
            meta=json.loads(row["meta"] or "{}"),
            turns=row["turns"],
            frames=row["frames"],
            voices=row["voices"],
        )
