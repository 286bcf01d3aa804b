"""Store: the conversation database interface (sessions, their turns, pinned voice prompts and
registered voices), with one implementation per backend.

    store = open_store("talk.db")                          # SQLite, the embedded default
    store = open_store("postgresql://csm@db:5432/csm")     # PostgreSQL, shared by many processes
    store = Store("talk.db")                               # the same as open_store(...)

Every backend keeps the same guarantees:
- one transaction per change: a turn, a voice prompt, a truncation is stored whole or not at all,
  whatever kills the process;
- turns of one session are numbered 0, 1, 2, ... without gaps, even with several writers;
- each session has a revision bumped by every write to it, so a reader notices other writers;
- data that cannot be read back raises DamagedDatabaseError naming the session, never a bare
  driver exception.

The SQL below is written once, with `?` placeholders; a backend supplies the connection, the
transactions and the few words that differ (backend modules: sqlite.py, postgres.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np

from .blobs import audio_to_flac, blob_to_codes, codes_to_blob, flac_to_audio
from .errors import ConcurrentWriteError, DamagedDatabaseError, SessionNotFoundError, StorageError
from .records import SessionInfo, StoredSegment, StoredVoice
from .schema import SOURCES, utc_now

DEFAULT_TIMEOUT_S = 30.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_SEGMENT_COLUMNS = (
    "s.id, s.idx, s.source, s.speaker, s.text, s.frames, s.codebooks, s.codes, "
    "s.audio IS NOT NULL AS has_audio, s.sample_rate, s.params, s.seed, s.timing, s.meta, "
    "s.window_start, s.created_at, ss.name AS session"
)
# Every column of a segment, as copied between databases (storage/copy.py).
SEGMENT_FIELDS = ("idx", "source", "speaker", "text", "frames", "codebooks", "codes", "audio",
                  "sample_rate", "params", "seed", "timing", "meta", "window_start", "created_at")


def is_postgres_url(target) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def open_store(target: str | Path, *, readonly: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> "Store":
    """The store for `target`: a `postgresql://` URL, else an SQLite file path (or ":memory:").

    readonly: open without writing anything (no migration, no lock wait on a writer); for
    commands that only read. A read-only SQLite file can be opened this way.
    """
    if isinstance(target, Store):
        return target
    return Store.backend_for(target)(target, readonly=readonly, timeout=timeout)


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


def _guarded(what: str | None = None):
    """Run a public method inside the backend's error translation; `what` ("session" or "voice")
    says what the method's first argument names, so a damage report can name it."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            subject = f"{what} {args[0]!r}" if what and args and isinstance(args[0], str) else None
            with self._guard(subject):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


class Store:
    """The interface. `Store(target)` opens the backend `target` names (see open_store)."""

    dialect = ""  # "sqlite" | "postgresql"
    shares_voices = False  # True where several processes on several machines share the database
    location = ""  # what messages call the database (a path, or a URL without its password)
    readonly = False

    _backends: dict[str, type] = {}  # dialect -> class; each backend's module registers itself

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.dialect:
            Store._backends[cls.dialect] = cls

    @staticmethod
    def backend_for(target) -> type:
        """The backend class for a target (the package imports every backend, so all are known)."""
        return Store._backends["postgresql" if is_postgres_url(target) else "sqlite"]

    def __new__(cls, *args, **kwargs):
        if cls is Store:  # Store(target): dispatch on the target, like open_store
            cls = Store.backend_for(args[0] if args else kwargs.get("target", kwargs.get("path")))
        return super().__new__(cls)

    # -- what a backend provides -----------------------------------------------------------------

    def close(self) -> None:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager:
        """One write transaction; nested use joins the outer one."""
        raise NotImplementedError

    def _reading(self) -> contextlib.AbstractContextManager:
        """One consistent read (a connection held for the statements of one call)."""
        raise NotImplementedError

    def _execute(self, sql: str, params=()) -> int:
        """Run one statement; returns the number of rows it changed."""
        raise NotImplementedError

    def _rows(self, sql: str, params=()) -> list[dict]:
        raise NotImplementedError

    def _insert(self, table: str, row: dict) -> int:
        """Insert one row; returns its id."""
        raise NotImplementedError

    def _guard(self, subject: str | None) -> contextlib.AbstractContextManager:
        """Turn the driver's exceptions into StorageError subclasses that name `subject`."""
        raise NotImplementedError

    _for_update = ""  # appended to the session lookup of a write (row lock where needed)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def query(self, sql: str, params=()) -> list[dict]:
        """Raw SQL with `?` placeholders, for diagnostics and tests (rows as dicts)."""
        with self._guard(None):
            with self.transaction():
                return self._rows(sql, params)

    def schema_version(self) -> int:
        with self._guard(None), self._reading():
            return int(self._rows("SELECT MAX(version) AS v FROM schema_version")[0]["v"] or 0)

    # -- sessions --------------------------------------------------------------------------------

    @_guarded()
    def sessions(self) -> list[SessionInfo]:
        with self._reading():
            rows = self._rows(
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

    @_guarded("session")
    def has_session(self, name: str) -> bool:
        with self._reading():
            return self._session_id(name, required=False) is not None

    @_guarded("session")
    def session(self, name: str) -> SessionInfo:
        for info in self.sessions():
            if info.name == name:
                return info
        with self._reading():
            raise self._not_found(name)

    @_guarded("session")
    def open_session(self, name: str, meta: dict | None = None) -> SessionInfo:
        """The session called `name`, created (with `meta`) if it does not exist yet."""
        if not isinstance(name, str) or not name.strip():
            raise StorageError("a session name must be a non-empty string")
        _check_text("a session name", name)
        if self.readonly:
            return self.session(name)
        with self.transaction():
            # One statement, so that two processes opening a new session at once both get it (a
            # look-then-insert lets both look, and PostgreSQL then refuses the second insert).
            self._execute("INSERT INTO sessions (name, created_at, meta) VALUES (?, ?, ?) "
                          "ON CONFLICT (name) DO NOTHING", [name, utc_now(), _dumps(meta)])
        return self.session(name)

    @_guarded("session")
    def update_session_meta(self, name: str, meta: dict) -> None:
        with self.transaction():
            session_id = self._session_id(name, lock=True)
            self._execute("UPDATE sessions SET meta = ? WHERE id = ?", [_dumps(meta), session_id])
            self._bump(session_id)

    @_guarded("session")
    def delete_session(self, name: str) -> int:
        """Delete a session and all its segments; returns how many segments went with it."""
        with self.transaction():
            session_id = self._session_id(name, lock=True)
            removed = self._execute("DELETE FROM segments WHERE session_id = ?", [session_id])
            self._execute("DELETE FROM sessions WHERE id = ?", [session_id])
            return removed

    # -- reading segments ------------------------------------------------------------------------

    @_guarded("session")
    def turns(self, session: str) -> list[StoredSegment]:
        """The session's turns in order (index 0, 1, ...)."""
        with self._reading():
            return self._select(session, "s.idx IS NOT NULL ORDER BY s.idx")

    @_guarded("session")
    def voice_prompts(self, session: str) -> dict[int, StoredSegment]:
        """The session's pinned voice prompts, by speaker (in speaker order)."""
        with self._reading():
            rows = self._select(session, "s.idx IS NULL ORDER BY s.speaker")
        return {row.speaker: row for row in rows}

    @_guarded("session")
    def turn(self, session: str, index: int) -> StoredSegment:
        with self._reading():
            rows = self._select(session, "s.idx = ?", [int(index)])
        if not rows:
            raise StorageError(f"session {session!r} has no turn {index}")
        return rows[0]

    @_guarded("session")
    def revision(self, session: str) -> int:
        """A counter bumped by every write to the session (to notice writes by another process)."""
        with self._reading():
            rows = self._rows("SELECT revision FROM sessions WHERE name = ?", [session])
            if not rows:
                raise self._not_found(session)
        return int(rows[0]["revision"])

    @_guarded()
    def audio(self, segment_id: int) -> tuple[np.ndarray, int] | None:
        """The stored audio of one segment as (float32 samples, sample rate), or None."""
        with self._reading():
            rows = self._rows(
                "SELECT s.audio, s.idx, ss.name FROM segments s JOIN sessions ss "
                "ON ss.id = s.session_id WHERE s.id = ?", [int(segment_id)])
        if not rows:
            raise StorageError(f"no segment with id {segment_id}")
        blob = rows[0]["audio"]
        if blob is None:
            return None
        where = _where(rows[0]["name"], rows[0]["idx"])
        return _decode(where, "audio", lambda: flac_to_audio(bytes(blob)))

    # -- writing segments ------------------------------------------------------------------------

    @_guarded("session")
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
        expected_revision: int | None = None,
    ) -> StoredSegment:
        """Append one turn at the end of the session, in one transaction. With
        `expected_revision` (the `revision()` the turn was generated from), a session another
        writer changed since raises ConcurrentWriteError and nothing is stored."""
        if source not in SOURCES or source == "voice_prompt":
            raise StorageError(f"a turn's source must be 'generated' or 'recorded', not {source!r}")
        row = self._segment_row(speaker, text, codes, source, audio, sample_rate, params, seed,
                                timing, meta, window_start)
        with self.transaction():
            session_id = self._session_id(session, lock=True)  # one writer per session from here
            if expected_revision is not None:
                now = int(self._rows("SELECT revision FROM sessions WHERE id = ?", [session_id])[0]["revision"])
                if now != int(expected_revision):
                    raise ConcurrentWriteError(
                        f"session {session!r} changed while this turn was generated (revision "
                        f"{expected_revision} -> {now}): another writer added to it, so this turn "
                        "did not hear the latest turns and is not stored; generate it again")
            last = self._rows("SELECT MAX(idx) AS m FROM segments WHERE session_id = ?", [session_id])
            row.update(session_id=session_id, idx=0 if last[0]["m"] is None else int(last[0]["m"]) + 1)
            self._bump(session_id)
            new_id = self._insert("segments", row)
            return self._select(session, "s.id = ?", [new_id])[0]

    @_guarded("session")
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
        with self.transaction():
            session_id = self._session_id(session, lock=True)
            self._execute(
                "DELETE FROM segments WHERE session_id = ? AND idx IS NULL AND speaker = ?",
                [session_id, int(speaker)],
            )
            row.update(session_id=session_id, idx=None)
            self._bump(session_id)
            new_id = self._insert("segments", row)
            return self._select(session, "s.id = ?", [new_id])[0]

    @_guarded("session")
    def remove_voice_prompt(self, session: str, speaker: int) -> bool:
        with self.transaction():
            session_id = self._session_id(session, lock=True)
            removed = self._execute(
                "DELETE FROM segments WHERE session_id = ? AND idx IS NULL AND speaker = ?",
                [session_id, int(speaker)],
            )
            self._bump(session_id)
            return removed > 0

    @_guarded("session")
    def truncate(self, session: str, keep: int) -> int:
        """Keep the first `keep` turns; returns how many were removed."""
        if keep < 0:
            raise StorageError("truncate needs a number of turns >= 0")
        with self.transaction():
            session_id = self._session_id(session, lock=True)
            removed = self._execute(
                "DELETE FROM segments WHERE session_id = ? AND idx >= ?", [session_id, int(keep)]
            )
            self._bump(session_id)
            return removed

    @_guarded("session")
    def pop_turn(self, session: str) -> StoredSegment | None:
        """Remove the last turn and return it (None when the session has no turns)."""
        with self.transaction():
            session_id = self._session_id(session, lock=True)
            rows = self._select(session, "s.idx IS NOT NULL ORDER BY s.idx DESC LIMIT 1")
            if not rows:
                return None
            self._execute("DELETE FROM segments WHERE id = ?", [rows[0].id])
            self._bump(session_id)
            return rows[0]

    # -- registered voices (shared by every process that opens the database) ---------------------

    @_guarded()
    def voice_names(self) -> list[str]:
        with self._reading():
            return [row["name"] for row in self._rows("SELECT name FROM voices ORDER BY name")]

    @_guarded("voice")
    def voice(self, name: str) -> StoredVoice | None:
        """The registered voice `name`, or None."""
        with self._reading():
            rows = self._rows("SELECT * FROM voices WHERE name = ?", [name])
        if not rows:
            return None
        row = rows[0]
        where = f"voice {name!r} in {self.location}"
        audio, rate = _decode(where, "audio", lambda: flac_to_audio(bytes(row["audio"])))
        return StoredVoice(name=row["name"], text=row["text"], audio=audio, sample_rate=rate,
                           meta=_decode(where, "meta", lambda: _loads(row["meta"])),
                           created_at=row["created_at"])

    @_guarded("voice")
    def save_voice(self, name: str, text: str, audio, *, sample_rate: int = 24000,
                   meta: dict | None = None, overwrite: bool = False) -> None:
        """Register (or, with overwrite, replace) a voice, in one transaction."""
        if not isinstance(name, str) or not name.strip():
            raise StorageError("a voice name must be a non-empty string")
        _check_text("a voice name", name)
        _check_text("a voice's transcript", text)
        row = {"name": name, "text": str(text), "audio": audio_to_flac(audio, sample_rate),
               "sample_rate": int(sample_rate), "meta": _dumps(meta), "created_at": utc_now()}
        with self.transaction():
            exists = self._rows("SELECT name FROM voices WHERE name = ?" + self._for_update, [name])
            if exists and not overwrite:
                raise StorageError(f"a voice named {name!r} is already registered in "
                                   f"{self.location}; remove it first or overwrite it")
            self._execute("DELETE FROM voices WHERE name = ?", [name])
            columns = ", ".join(row)
            self._execute(f"INSERT INTO voices ({columns}) VALUES ({', '.join('?' * len(row))})",
                          list(row.values()))

    @_guarded("voice")
    def remove_voice(self, name: str) -> bool:
        with self.transaction():
            return self._execute("DELETE FROM voices WHERE name = ?", [name]) > 0

    # -- whole sessions, as raw rows (storage/copy.py) -------------------------------------------

    @_guarded("session")
    def dump_session(self, name: str) -> dict:
        """Everything stored for one session, as plain values (blobs as bytes), in one read."""
        with self._reading():
            rows = self._rows("SELECT id, name, created_at, meta FROM sessions WHERE name = ?", [name])
            if not rows:
                raise self._not_found(name)
            session = rows[0]
            segments = self._rows(
                f"SELECT {', '.join(SEGMENT_FIELDS)} FROM segments WHERE session_id = ? "
                "ORDER BY idx IS NULL, idx, speaker", [session["id"]])
        return {"name": session["name"], "created_at": session["created_at"],
                "meta": session["meta"],
                "segments": [{k: bytes(v) if isinstance(v, memoryview) else v for k, v in s.items()}
                             for s in segments]}

    @_guarded()
    def load_session(self, dump: dict, *, replace: bool = False) -> None:
        """Store a dump_session() result as one session, in one transaction."""
        name = dump["name"]
        with self.transaction():
            existing = self._session_id(name, required=False, lock=True)
            if existing is not None:
                if not replace:
                    raise StorageError(f"session {name!r} already exists in {self.location}")
                self._execute("DELETE FROM segments WHERE session_id = ?", [existing])
                self._execute("DELETE FROM sessions WHERE id = ?", [existing])
            session_id = self._create_session(name, dump["created_at"], dump["meta"])
            for segment in dump["segments"]:
                self._insert("segments", {**segment, "session_id": session_id})
            self._bump(session_id)

    # -- internals -------------------------------------------------------------------------------

    def _create_session(self, name: str, created_at: str, meta: str) -> int:
        return self._insert("sessions", {"name": name, "created_at": created_at, "meta": meta})

    def _segment_row(self, speaker, text, codes, source, audio, sample_rate, params, seed, timing,
                     meta, window_start) -> dict:
        if int(speaker) < 0:
            raise StorageError(f"speaker must be >= 0, got {speaker}")
        if not int(speaker) < 2**63:
            raise StorageError(f"speaker {speaker} does not fit in a 64-bit integer")
        _check_text("text", text)
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
        self._execute("UPDATE sessions SET revision = revision + 1 WHERE id = ?", [session_id])

    def _session_id(self, name: str, required: bool = True, lock: bool = False) -> int | None:
        sql = "SELECT id FROM sessions WHERE name = ?" + (self._for_update if lock else "")
        rows = self._rows(sql, [name])
        if rows:
            return int(rows[0]["id"])
        if required:
            raise self._not_found(name)
        return None

    def _not_found(self, name: str) -> SessionNotFoundError:
        known = [row["name"] for row in self._rows("SELECT name FROM sessions ORDER BY id")]
        listing = ", ".join(repr(k) for k in known) if known else "none yet"
        return SessionNotFoundError(f"no session {name!r} in {self.location} (sessions: {listing})")

    def _select(self, session: str, where: str, params: list | None = None) -> list[StoredSegment]:
        session_id = self._session_id(session)
        rows = self._rows(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments s JOIN sessions ss ON ss.id = s.session_id "
            f"WHERE s.session_id = ? AND {where}",
            [session_id, *(params or [])],
        )
        return [self._segment(row) for row in rows]

    def _segment(self, row: dict) -> StoredSegment:
        where = _where(row["session"], row["idx"]) + f" in {self.location}"
        codes = _decode(where, "codes", lambda: blob_to_codes(row["codes"], row["frames"], row["codebooks"]))
        return StoredSegment(
            id=int(row["id"]),
            session=row["session"],
            index=row["idx"],
            source=row["source"],
            speaker=int(row["speaker"]),
            text=row["text"],
            codes=codes,
            has_audio=bool(row["has_audio"]),
            sample_rate=row["sample_rate"],
            params=_decode(where, "params", lambda: _loads(row["params"])),
            seed=row["seed"],
            timing=_decode(where, "timing", lambda: _loads(row["timing"])),
            meta=_decode(where, "meta", lambda: _loads(row["meta"])),
            window_start=row["window_start"],
            created_at=row["created_at"],
        )

    def _session_info(self, row: dict) -> SessionInfo:
        where = f"session {row['name']!r} in {self.location}"
        return SessionInfo(
            id=int(row["id"]),
            name=row["name"],
            created_at=row["created_at"],
            meta=_decode(where, "meta", lambda: _loads(row["meta"])),
            turns=int(row["turns"]),
            frames=int(row["frames"]),
            voices=int(row["voices"]),
        )


def _check_text(what: str, text) -> None:
    """The same text is storable in every backend (PostgreSQL's text cannot hold NUL)."""
    if "\x00" in str(text):
        raise StorageError(f"{what} must not contain NUL characters (\\x00)")


def _loads(text) -> dict:
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _where(session: str, index) -> str:
    part = "a voice prompt" if index is None else f"turn {index}"
    return f"{part} of session {session!r}"


def _decode(where: str, column: str, read):
    """Read one stored value; anything unreadable is reported as damage to `where`."""
    try:
        return read()
    except (ValueError, TypeError, RuntimeError, StorageError) as error:
        # soundfile's LibsndfileError is a RuntimeError; json's errors are ValueErrors
        raise DamagedDatabaseError(
            f"the database is damaged: {where} has an unreadable {column} column ({error}). "
            "Other sessions can still be read; export them, or delete this session."
        ) from None

