"""Persistence for conversations: one `Store` interface, SQLite (embedded default) or PostgreSQL.

    store = open_store("talk.db")                        # or Store("talk.db")
    store = open_store("postgresql://csm@host:5432/csm")

No MLX, no engine imports.
"""

from .copy import copy_sessions
from .errors import (
    ConcurrentWriteError,
    ConstraintError,
    DamagedDatabaseError,
    ForeignDatabaseError,
    SchemaVersionError,
    SessionNotFoundError,
    StorageError,
)
from .records import SessionInfo, StoredSegment, StoredVoice
from .schema import LATEST_VERSION
from .store import Store, is_postgres_url, open_store

# The backends register themselves with Store (Store(target) and open_store dispatch on the target).
from . import postgres, sqlite  # noqa: E402,F401  isort: skip

__all__ = [
    "LATEST_VERSION",
    "ConcurrentWriteError",
    "ConstraintError",
    "DamagedDatabaseError",
    "ForeignDatabaseError",
    "SchemaVersionError",
    "SessionInfo",
    "SessionNotFoundError",
    "StorageError",
    "Store",
    "StoredSegment",
    "StoredVoice",
    "copy_sessions",
    "is_postgres_url",
    "open_store",
]
