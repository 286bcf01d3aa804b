"""The `--db` / DB argument of the commands: an SQLite file path or a postgresql:// URL."""

from __future__ import annotations

from pathlib import Path

import click

# `csm --help` imports this module: numpy, MLX, storage and the optional extras are imported
# inside the commands that use them.


class Database(click.ParamType):
    """A conversation database: a `postgresql://...` URL (kept as the string given) or an SQLite
    file path (a Path). `existing=True`: a file must already be there (commands that only read
    must not create one)."""

    name = "DB"

    def __init__(self, existing: bool = False):
        self.existing = existing

    def convert(self, value, param, ctx):
        from storage import is_postgres_url

        if isinstance(value, Path):
            path = value
        elif is_postgres_url(str(value)):
            return str(value)
        else:
            path = Path(str(value))
        if path.is_dir():
            self.fail(f"{path} is a folder; give an SQLite file or a postgresql:// URL", param, ctx)
        if self.existing and not path.exists():
            self.fail(f"{path}: no such file (give an SQLite file or a postgresql:// URL)", param, ctx)
        return path
