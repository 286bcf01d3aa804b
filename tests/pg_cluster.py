"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, a server listening
only on a Unix socket in that folder, stopped and removed at the end of the test session.

PostgreSQL refuses to run as root; under root the folder is handed to an unprivileged user
(`postgres` where Debian's package made one, else `nobody`) and the server runs as that user.
Each test gets a schema of its own (`new_url()`), so tests never see each other's tables.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's
    /usr/lib/postgresql/<version>/bin (newest version)."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                      reverse=True)
    candidates += [Path(p) for p in versions]
    for folder in candidates:
        if all((folder / name).is_file() for name in BINARIES):
            return folder
    return None


def _service_user() -> str | None:
    """None when not root; else the unprivileged account the server runs as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


class Cluster:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.user = _service_user()
        self.root = Path(tempfile.mkdtemp(prefix="csm-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._schemas = itertools.count(1)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o755)  # the socket must be reachable by the tests' own user

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, cwd=self.root, **kwargs)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "csm", "--auth=trust", "-E", "UTF8",
                         "--no-sync", "--no-instructions")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        options = (f"-k {self.root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=100 -c shared_buffers=16MB")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                         "-t", "60", "start")
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n{log}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", **query: str) -> str:
        params = "&".join([f"host={quote(str(self.root))}"] +
                          [f"{k}={quote(v)}" for k, v in query.items()])
        return f"postgresql://csm@/{database}?{params}"

    def new_url(self) -> str:
        """A URL whose tables live in a fresh, empty schema of the `postgres` database."""
        import psycopg

        schema = f"t{next(self._schemas)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.url(options=f"-c search_path={schema}")
