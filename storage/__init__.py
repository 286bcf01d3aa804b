"""SQLite persistence for conversations: `Store(path)`. No MLX, no engine imports."""

from .errors import SchemaVersionError, SessionNotFoundError, StorageError
from .records import SessionInfo, StoredSegment
from .schema import LATEST_VERSION
from .store import Store

__all__ = [
    "LATEST_VERSION",
    "SchemaVersionError",
    "SessionInfo",
    "SessionNotFoundError",
    "StorageError",
    "Store",
    "StoredSegment",
]
