"""PostgresStore: the conversation database in PostgreSQL, shared by many processes and machines.

    store = PostgresStore("postgresql://csm@db.internal:5432/csm")

The schema, migrations and guarantees are SQLite's (storage/store.py): every change is one
transaction; a write first locks its session's row (SELECT ... FOR UPDATE), so writers of one
session take turns and turn numbers never race, while writers of other sessions go on in parallel.
Migrations run under a transaction-scoped advisory lock, so two servers starting at once do not
both migrate. Reads run as REPEATABLE READ transactions: one snapshot per call.

Connections come from a psycopg_pool pool (checked before use, so a restarted server is
reconnected), one per thread at a time: a PostgresStore may be shared between threads and calls
on different threads run in parallel. The database must exist (`createdb csm`); its tables are
created on first use.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from .errors import ConstraintError, DamagedDatabaseError, ForeignDatabaseError, StorageError
from .schema import SCHEMA_TABLES, check_version, migrate
from .store import DEFAULT_TIMEOUT_S, Store

_MIGRATION_LOCK = 0x63736D  # pg_advisory_xact_lock key: "csm"
DEFAULT_POOL_SIZE = 4


def redact(url: str) -> str:
    """The URL without its password (for messages and repr)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _placeholders(sql: str) -> str:
    """The interface's `?` placeholders in psycopg's `%s` style."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(Store):
    """`PostgresStore(url)`: open (creating tables and migrating if needed) a PostgreSQL database."""

    dialect = "postgresql"
    shares_voices = True
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, readonly: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
                 pool_size: int = DEFAULT_POOL_SIZE):
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError as error:
            raise StorageError(
                f"a postgresql:// database needs the psycopg driver ({error.name} is missing): "
                "pip install 'csm-mlx-engine[postgres]'") from None
        self._psycopg = psycopg
        self.url = url
        self.location = redact(url)
        self.readonly = bool(readonly)
        self.timeout = float(timeout)
        self._local = threading.local()
        try:  # our server settings join the URL's own `options`, never replace them
            given = conninfo_to_dict(url)
        except psycopg.Error as error:
            raise StorageError(f"{self.location} is not a valid PostgreSQL URL: {_first_line(error)}") from None
        options = [given.pop("options", ""), f"-c lock_timeout={int(self.timeout * 1000)}"]
        if self.readonly:
            options.append("-c default_transaction_read_only=on")
        conninfo = make_conninfo(**given, options=" ".join(o for o in options if o))
        self._connect_kwargs = {"autocommit": True, "row_factory": dict_row}
        self._pool = None
        # One direct connection first: a wrong URL fails at once with the server's own reason
        # (the pool would retry quietly until its timeout). It also migrates.
        try:
            first = psycopg.connect(conninfo, connect_timeout=max(1, int(self.timeout)),
                                    **self._connect_kwargs)
        except psycopg.Error as error:
            raise StorageError(f"cannot connect to {self.location}: {_first_line(error)}") from None
        try:
            with self._guard(None):
                self._local.conn = first
                try:
                    with first.transaction():
                        self.version = self._prepare()
                finally:
                    self._local.conn = None
        finally:
            first.close()
        self._pool = ConnectionPool(conninfo, min_size=1, max_size=max(1, int(pool_size)),
                                    kwargs=self._connect_kwargs, timeout=self.timeout,
                                    check=ConnectionPool.check_connection, open=False,
                                    name=f"csm-store-{id(self):x}")
        try:
            self._pool.open(wait=True, timeout=self.timeout)
        except Exception as error:
            self._pool.close()
            raise StorageError(f"cannot connect to {self.location}: {_first_line(error)}") from None

    def _prepare(self) -> int:
        tables = {row["table_name"] for row in self._rows(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        clash = sorted(tables & set(SCHEMA_TABLES))
        if clash and "schema_version" not in tables:
            raise ForeignDatabaseError(
                f"{self.location} already has tables named {', '.join(clash)} that csm did not "
                "create; use a database of its own (createdb csm)")
        if self.readonly:
            if "schema_version" not in tables:
                raise StorageError(f"{self.location} holds no conversations yet (no csm tables)")
            version = int(self._rows("SELECT MAX(version) AS v FROM schema_version")[0]["v"] or 0)
            check_version(version)
            return version
        self._execute("SELECT pg_advisory_xact_lock(?)", [_MIGRATION_LOCK])
        return migrate(self)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextlib.contextmanager
    def _connection(self, read: bool) -> Iterator["PostgresStore"]:
        if getattr(self._local, "conn", None) is not None:  # join the transaction of this thread
            yield self
            return
        if self._pool is None:
            raise StorageError(f"the store for {self.location} is closed")
        with self._pool.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    if read:
                        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    yield self
            finally:
                self._local.conn = None

    def transaction(self):
        """One write transaction on this thread's connection; nested use joins the outer one."""
        if self.readonly and getattr(self._local, "conn", None) is None:
            raise StorageError(f"{self.location} is open read-only; it cannot be changed here")
        return self._connection(read=False)

    def _reading(self):
        return self._connection(read=True)

    def query(self, sql: str, params=()) -> list[dict]:
        with self._guard(None), self._connection(read=self.readonly):
            return self._rows(sql, params)

    def integrity_check(self) -> list[str]:
        """The rules SQLite's check covers that PostgreSQL does not enforce by itself: ["ok"]."""
        with self._guard(None), self._reading():
            orphans = self._rows("SELECT COUNT(*) AS n FROM segments s LEFT JOIN sessions ss "
                                 "ON ss.id = s.session_id WHERE ss.id IS NULL")[0]["n"]
        return ["ok"] if not orphans else [f"{orphans} segments without a session"]

    # -- the primitives the interface runs on ----------------------------------------------------

    def _cursor(self, sql: str, params):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            raise StorageError("internal: a statement ran outside a transaction")
        return conn.execute(_placeholders(sql), list(params))

    def _execute(self, sql: str, params=()) -> int:
        return self._cursor(sql, params).rowcount

    def _rows(self, sql: str, params=()) -> list[dict]:
        cursor = self._cursor(sql, params)
        return list(cursor.fetchall()) if cursor.description else []

    def _insert(self, table: str, row: dict) -> int:
        columns = ", ".join(row)
        sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))}) RETURNING id"
        return int(self._cursor(sql, row.values()).fetchone()["id"])

    @contextlib.contextmanager
    def _guard(self, subject: str | None) -> Iterator[None]:
        errors = self._psycopg.errors
        reading = f" (reading {subject})" if subject else ""
        try:
            yield
        except self._psycopg.IntegrityError as error:
            raise ConstraintError(f"{self.location}: {_first_line(error)}") from None
        except (errors.DataCorrupted, errors.IndexCorrupted) as error:
            raise DamagedDatabaseError(
                f"the database {self.location} is damaged ({_first_line(error)}){reading}; "
                "restore it from a backup") from None
        except errors.LockNotAvailable:
            raise StorageError(
                f"{self.location} is busy: another writer held the session for more than "
                f"{self.timeout:g} s; try again when it is done") from None
        except errors.ReadOnlySqlTransaction:
            raise StorageError(f"{self.location} is open read-only; it cannot be changed here") from None
        except self._psycopg.OperationalError as error:
            raise StorageError(
                f"lost the connection to {self.location}: {_first_line(error)}{reading}") from None
        except self._psycopg.Error as error:
            raise StorageError(f"{self.location}: {_first_line(error)}{reading}") from None
        except Exception as error:
            if type(error).__module__.startswith("psycopg_pool"):  # PoolTimeout, PoolClosed
                raise StorageError(
                    f"no connection to {self.location} within {self.timeout:g} s: "
                    f"{_first_line(error)}") from None
            raise


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
