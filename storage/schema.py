"""The database schema and its migrations.

`schema_version` holds one row per migration applied (version, applied_at). Opening a store applies
the missing migrations in order, inside one write transaction, so two processes opening a fresh file
at once cannot both migrate it. A database newer than this code is refused rather than guessed at.

Version 1:
  sessions(id, name UNIQUE, created_at, meta JSON, revision: bumped by every write to the session)
  segments(id, session_id -> sessions.id, idx, source, speaker, text, frames, codebooks, codes BLOB,
           audio BLOB (FLAC) | NULL, sample_rate, params JSON, seed, timing JSON, meta JSON,
           window_start, created_at)
  Turns have idx 0, 1, 2, ... within their session (unique); voice prompts have idx NULL and at
  most one row per (session, speaker).
"""

from collections.abc import Callable
from datetime import datetime, timezone

import sqlite_utils

from .errors import SchemaVersionError

SOURCES = ("generated", "recorded", "voice_prompt")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _v1_sessions_and_segments(db: sqlite_utils.Database) -> None:
    db["sessions"].create(
        {"id": int, "name": str, "created_at": str, "meta": str, "revision": int},
        pk="id",
        not_null={"name", "created_at", "meta", "revision"},
        defaults={"meta": "{}", "revision": 0},
    )
    db.execute("CREATE UNIQUE INDEX idx_sessions_name ON sessions(name)")
    db["segments"].create(
        {
            "id": int,
            "session_id": int,
            "idx": int,  # turn index within the session; NULL for voice prompts
            "source": str,  # generated | recorded | voice_prompt
            "speaker": int,
            "text": str,
            "frames": int,
            "codebooks": int,
            "codes": bytes,  # int16 little-endian, frames x codebooks
            "audio": bytes,  # FLAC, optional
            "sample_rate": int,
            "params": str,  # JSON: generation options as asked
            "seed": int,  # the seed actually used (generated turns)
            "timing": str,  # JSON: time to first audio, prefill/cached rows, ...
            "meta": str,  # JSON: the caller's own data
            "window_start": int,  # first turn in the context window this turn saw
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
        not_null={"session_id", "source", "speaker", "text", "frames", "codebooks", "codes",
                  "params", "timing", "meta", "created_at"},
        defaults={"params": "{}", "timing": "{}", "meta": "{}"},
    )
    db.execute("CREATE UNIQUE INDEX idx_segments_turn ON segments(session_id, idx)")
    db.execute(
        "CREATE UNIQUE INDEX idx_segments_voice ON segments(session_id, speaker) "
        "WHERE source = 'voice_prompt'"
    )


# (version, what it does, function). Append new migrations; never edit an applied one.
MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "sessions and segments", _v1_sessions_and_segments),
]
LATEST_VERSION = MIGRATIONS[-1][0]


def current_version(db: sqlite_utils.Database) -> int:
    if "schema_version" not in db.table_names():
        return 0
    row = next(db.query("SELECT MAX(version) AS v FROM schema_version"))
    return int(row["v"] or 0)


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema up to LATEST_VERSION. Call inside a write (IMMEDIATE) transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    version = current_version(db)
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"this database has schema version {version}, newer than this package understands "
            f"({LATEST_VERSION}); upgrade csm-mlx-engine to open it"
        )
    for number, description, apply in MIGRATIONS:
        if number > version:
            apply(db)
            db["schema_version"].insert(
                {"version": number, "description": description, "applied_at": utc_now()}
            )
            version = number
    return version
