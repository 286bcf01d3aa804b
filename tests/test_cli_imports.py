"""The lazy imports the CLI keeps are there for a reason; these hold it: `csm --help` (of every
command) imports neither MLX nor numpy, and replaying a stored conversation imports no MLX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dialogue.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from dialogue.cli import main
try:
    main({args!r})
except SystemExit as exit:
    assert not exit.code, exit.code
print("LOADED", " ".join(m for m in ("mlx.core", "numpy") if m in sys.modules))
"""


def loaded_after(*args: str) -> set[str]:
    """The heavy modules a fresh process has imported after running `csm ARGS`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("LOADED")][-1]
    return set(line.split()[1:])


def test_help_imports_neither_mlx_nor_numpy():
    assert loaded_after("--help") == set()
    for command in ("generate", "say", "podcast", "serve", "replay", "convert"):
        assert loaded_after(command, "--help") == set(), command


def test_replaying_stored_audio_imports_no_mlx(tiny_model_path, tmp_path):
    db = tmp_path / "talk.db"
    said = CliRunner().invoke(main, ["say", "--db", str(db), "--model", str(tiny_model_path),
                                     "--seed", "1", "--max_audio_length_ms", "240", "Hello."])
    assert said.exit_code == 0, said.output
    assert "mlx.core" not in loaded_after("replay", str(db), "-o", str(tmp_path / "talk.wav"))
    assert (tmp_path / "talk.wav").stat().st_size > 44
