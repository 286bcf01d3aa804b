"""Errors the storage layer raises on purpose.

storage/ must not import engine/, so these are its own types; dialogue/ turns them into the
package's user-facing errors where a user caused them.
"""


class StorageError(Exception):
    """The database cannot be used as asked (wrong file, newer schema, bad data)."""


class SessionNotFoundError(StorageError, KeyError):
    """No session with that name exists in the database."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "session not found"


class SchemaVersionError(StorageError):
    """The database was written by a newer version of this package than the one running."""


class DamagedDatabaseError(StorageError):
    """The database, or a row in it, cannot be read back: a damaged file, a corrupt codes blob or
    a column that no longer holds valid JSON. The message names the session (and turn) affected."""


class ForeignDatabaseError(StorageError):
    """The file or database belongs to another program; the store will not write its schema into
    it."""


class ConcurrentWriteError(StorageError):
    """Another writer changed the session since the caller read it (its revision moved on), so a
    turn generated from the older state is not stored."""


class ConstraintError(StorageError):
    """A write broke one of the schema's rules (a unique index, a foreign key, NOT NULL)."""
