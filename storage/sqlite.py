"""SQLiteStore: the conversation database in one SQLite file (the embedded default).

The file is opened in WAL mode with foreign keys on and a busy timeout, so several processes can
read while one writes, and a second writer waits for the first instead of failing. Every change is
one IMMEDIATE transaction (the write lock is taken up front, so two writers never deadlock on a lock
upgrade, and turn numbers cannot race). A process killed at any point leaves either the whole turn
or none of it.

Opened read-only (`readonly=True`), the file is never written, not even migrated, and reading never
waits for a writer: commands that only list or export use this, and it works on a file the user
cannot write.

A file that holds other tables but not ours belongs to another program and is refused, so a typo
on the command line never writes our schema into someone else's database.

A SQLiteStore may be shared between threads: calls are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from .errors import ConstraintError, DamagedDatabaseError, ForeignDatabaseError, StorageError
from .schema import SCHEMA_TABLES, check_version, migrate
from .store import DEFAULT_TIMEOUT_S, Store

_SALVAGE = "salvage what is left with `sqlite3 FILE .recover | sqlite3 NEW.db`, or restore a backup"


class SQLiteStore(Store):
    """`SQLiteStore(path)`: open (creating and migrating if needed) a conversation database file."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.path = Path(path) if str(path) != ":memory:" else None
        self.location = str(self.path or ":memory:")
        self.readonly = bool(readonly)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self.conn: sqlite3.Connection | None = None
        try:
            self.conn = self._connect()
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._refuse_foreign()
            if self.readonly:
                self.version = self._read_version()
            else:
                if self.path is not None:
                    self.conn.execute("PRAGMA journal_mode = WAL")
                    self.conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: commits stay atomic
                with self.transaction():
                    self.version = migrate(self)
        except StorageError:
            self._close_quietly()
            raise
        except sqlite3.DatabaseError as error:
            self._close_quietly()
            if "malformed" in str(error) or "corrupt" in str(error):
                raise self._damaged(str(error), "") from None
            raise StorageError(
                f"cannot open {self.location} as a conversation database: {error}") from None

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            return sqlite3.connect(self.location, timeout=self.timeout, check_same_thread=False,
                                   isolation_level=None)
        if self.path is None or not self.path.is_file():
            raise StorageError(f"no database file at {self.location}")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        if not _can_write_beside(self.path):
            # Nobody here can write the file, so nobody here can be writing it: read it as the
            # immutable file it is (WAL readers would otherwise need to create a -shm file).
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False,
                               isolation_level=None)

    def _refuse_foreign(self) -> None:
        tables = [row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        if tables and "schema_version" not in tables:
            ours = [t for t in tables if t in SCHEMA_TABLES]
            theirs = [t for t in tables if t not in SCHEMA_TABLES]
            listing = ", ".join(theirs or ours)
            raise ForeignDatabaseError(
                f"{self.location} is an SQLite database of another program (its tables: {listing}); "
                "csm will not write its own tables into it. Name a new file for the conversations "
                "(it is created on first use)."
            )

    def _read_version(self) -> int:
        tables = {row[0] for row in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            raise StorageError(f"{self.location} holds no conversations yet (it has no tables)")
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(row[0] or 0)
        check_version(version)
        return version

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    @property
    def db(self):
        """The connection as a sqlite_utils.Database, for SQLite-only tools (backups, inspection)."""
        import sqlite_utils

        return sqlite_utils.Database(self._open_conn())

    def _close_quietly(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator["SQLiteStore"]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); nested use joins the outer one."""
        with self._lock:
            conn = self._open_conn()
            if conn.in_transaction:
                yield self
                return
            if self.readonly:
                raise StorageError(f"{self.location} is open read-only; it cannot be changed here")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def _reading(self) -> Iterator["SQLiteStore"]:
        """A read transaction (one snapshot for the call's statements); in WAL mode it never waits
        for a writer, and it joins a write transaction already open."""
        with self._lock:
            conn = self._open_conn()
            if conn.in_transaction:
                yield self
                return
            conn.execute("BEGIN")
            try:
                yield self
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[dict]:
        with self._guard(None), (self._reading() if self.readonly else self.transaction()):
            return self._rows(sql, params)

    def integrity_check(self) -> list[str]:
        """SQLite's own check plus foreign keys: ["ok"] when the file is sound."""
        with self._guard(None), self._lock:
            conn = self._open_conn()
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            problems += [str(tuple(row)) for row in conn.execute("PRAGMA foreign_key_check")]
            return problems

    # -- the primitives the interface runs on ----------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StorageError(f"the store for {self.location} is closed")
        return self.conn

    def _execute(self, sql: str, params=()) -> int:
        return self._open_conn().execute(sql, list(params)).rowcount

    def _rows(self, sql: str, params=()) -> list[dict]:
        return [dict(row) for row in self._open_conn().execute(sql, list(params))]

    def _insert(self, table: str, row: dict) -> int:
        columns = ", ".join(row)
        cursor = self._open_conn().execute(
            f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        return int(cursor.lastrowid)

    @contextlib.contextmanager
    def _guard(self, subject: str | None) -> Iterator[None]:
        reading = f" (reading {subject})" if subject else ""
        try:
            yield
        except sqlite3.IntegrityError as error:
            raise ConstraintError(f"{self.location}: {error}") from None
        except sqlite3.OperationalError as error:
            message = str(error)
            if "locked" in message or "busy" in message:
                raise StorageError(
                    f"{self.location} is busy: another process held its write lock for more than "
                    f"{self.timeout:g} s; try again when it is done") from None
            if "readonly" in message or "read-only" in message:
                raise StorageError(
                    f"{self.location} cannot be written ({message}); check the permissions of the "
                    "file and its folder") from None
            if "malformed" in message or "corrupt" in message:
                raise self._damaged(message, reading) from None
            raise StorageError(f"{self.location}: {message}{reading}") from None
        except sqlite3.DatabaseError as error:  # SQLITE_CORRUPT, SQLITE_NOTADB: the file itself
            raise self._damaged(str(error), reading) from None

    def _damaged(self, message: str, reading: str) -> DamagedDatabaseError:
        return DamagedDatabaseError(
            f"the database file {self.location} is damaged ({message}){reading}; "
            + _SALVAGE.replace("FILE", self.location))


def _can_write_beside(path: Path) -> bool:
    """Whether this process may write the file and create its -wal/-shm files next to it."""
    return os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)
