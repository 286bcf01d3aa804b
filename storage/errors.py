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
