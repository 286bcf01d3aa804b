"""engine.blas: OpenBLAS loaded before MLX, switchable off, honest when it comes too late.

Each case runs in a fresh interpreter, since what matters is the order of imports in a new process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cpu import blas

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS loading is Linux-only")

REPORT = """
import json, sys
{imports}
import mlx.core as mx
import numpy as np
info = engine.cpu.blas.blas_info()
a = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((48, 32)).astype(np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
spd = a.T @ a + 48 * np.eye(48, dtype=np.float32)  # a LAPACK call (Cholesky) too
chol = np.array(mx.linalg.cholesky(mx.array(spd), stream=mx.cpu))
lap = float(np.abs(chol @ chol.T - spd).max() / np.abs(spd).max())
print(json.dumps(dict(info=info.as_dict(), err=err, lap=lap)))
"""


def _run(imports: str, **env) -> dict:
    code = REPORT.format(imports=imports)
    full_env = {**os.environ, **env}
    root = str(Path(__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available() -> bool:
    return blas._cmeel_library() is not None or any(Path(p).exists() for p in blas.DEBIAN_PATHS)


@linux_only
def test_loaded_before_mlx_and_bound(tmp_path):
    if not _available():
        pytest.skip("no OpenBLAS installed")
    r = _run("import engine", CSM_OPENBLAS="1", CSM_HOME=str(tmp_path))
    info = r["info"]
    assert info["loaded"], info
    assert info["bound"] is True
    assert info["config"].startswith("OpenBLAS")
    assert info["threads"] >= 1
    assert r["err"] < 1e-3 and r["lap"] < 1e-4


@linux_only
def test_switched_off(tmp_path):
    r = _run("import engine", CSM_OPENBLAS="0", CSM_HOME=str(tmp_path))
    assert not r["info"]["loaded"]
    assert "switched off" in r["info"]["reason"]
    assert r["err"] < 1e-3


@linux_only
def test_does_not_pretend_after_mlx(tmp_path):
    r = _run("import mlx.core\nimport engine", CSM_OPENBLAS="1", CSM_HOME=str(tmp_path))
    assert not r["info"]["loaded"]
    assert r["info"]["reason"] == "not loaded (mlx imported first)"


@linux_only
def test_missing_library_is_reported_not_raised(tmp_path):
    r = _run("import engine", CSM_OPENBLAS=str(tmp_path / "nope.so"), CSM_HOME=str(tmp_path))
    assert not r["info"]["loaded"]
    assert "nope.so" in r["info"]["reason"]


@linux_only
def test_renamed_copy_changes_only_the_soname(tmp_path, monkeypatch):
    source = blas._mlx_bundled_libs()
    if source is None:
        pytest.skip("MLX's wheel bundles no libgfortran here")
    lib = next(iter(sorted(source.glob("libgfortran*.so*"))))
    monkeypatch.setenv("CSM_HOME", str(tmp_path))
    copy = blas._renamed_copy(lib, b"libgfortran.so.5")
    original, renamed = lib.read_bytes(), copy.read_bytes()
    start, length = blas._soname_slot(renamed)
    assert renamed[start : start + length] == b"libgfortran.so.5"
    assert len(original) == len(renamed)
    differing = [i for i, (x, y) in enumerate(zip(original, renamed)) if x != y]
    assert differing and min(differing) >= start and max(differing) < start + len(lib.name) + 16
    assert blas._renamed_copy(lib, b"libgfortran.so.5") == copy  # cached


def test_cpu_mismatch_rules(monkeypatch):
    monkeypatch.setattr(blas, "cpu_flags", lambda: {"avx", "avx2", "fma"})
    monkeypatch.setattr(blas.platform, "machine", lambda: "x86_64")
    assert "avx512f" in blas._cpu_mismatch("DYNAMIC_ARCH=OFF SKYLAKEX MAX_THREADS=4")
    assert blas._cpu_mismatch("DYNAMIC_ARCH=OFF HASWELL") == ""
    assert blas._cpu_mismatch("DYNAMIC_ARCH=ON") == ""
    assert "unknown" in blas._cpu_mismatch("DYNAMIC_ARCH=OFF MYSTERYCPU")


def test_describe_says_what_happened():
    assert "reference" in blas.BlasInfo(reason="switched off").describe()
    info = blas.BlasInfo(loaded=True, path="/x/libopenblas.so.0", source="debian", config="OpenBLAS 0.3.21",
                         core="SkylakeX", threads=2)
    assert "OpenBLAS 0.3.21" in info.describe() and "2 threads" in info.describe()


@linux_only
def test_this_test_process_got_it_too():
    """conftest imports engine before any test module imports MLX, so the suite runs on OpenBLAS."""
    info = blas.blas_info()
    if not _available() or any("skipped" in n for n in info.notes) or "switched off" in info.reason:
        pytest.skip(info.reason or "no usable OpenBLAS here")
    assert info.loaded, info.reason
