"""Shared test setup: no network, no user caches, and the tiny models every part tests with."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network or the user's caches. Set before anything imports huggingface_hub
# (it reads HF_HUB_OFFLINE once) or engine (which reads CSM_HOME when it builds things).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CSM_HOME = Path(tempfile.mkdtemp(prefix="csm-home-tests-"))
os.environ["CSM_HOME"] = str(_CSM_HOME)
# MLX runs float32 matrix products as TF32 by default where the hardware has it (CUDA GPUs, M5 Macs):
# ~1e-3 relative error, far above the golden files' float32 tolerances. The tests check float32 as
# float32, so they turn it off (set before MLX is first imported).
os.environ.setdefault("MLX_ENABLE_TF32", "0")

# Before any test module imports MLX: engine loads the optimised BLAS (engine/cpu/blas.py), which only
# takes effect when it comes first, so the tests run the same BLAS as users do.
import engine  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def csm_home() -> Path:
    """This session's $CSM_HOME (a fresh temporary folder), removed at the end."""
    yield _CSM_HOME
    shutil.rmtree(_CSM_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path(csm_home) -> Path:
    """The tiny random model in the transformers layout ($CSM_HOME/tiny-random, built once)."""
    from engine.checkpoints.tiny import tiny_random_path

    return tiny_random_path()


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    """A loaded CSMModel of the tiny random model (engine.load_model), shared by the session.

    Its generator holds a KV cache across calls: tests that count prefill/cached rows should call
    `tiny_model.generator.reset()` first (or load their own model)."""
    from engine import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL server for this test session (tests/pg_cluster.py); skips where
    no PostgreSQL binaries or no psycopg driver can be found."""
    from pg_cluster import Cluster, find_bin_dir

    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as error:
        pytest.skip(f"PostgreSQL tests need psycopg[pool] ({error.name} missing): "
                    "pip install -e '.[postgres]'")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin: install the postgresql package")
    cluster = Cluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path):
    """A factory of fresh, empty database targets, once per backend: an SQLite file path, or a
    postgresql:// URL naming a schema of its own in the session's throwaway server."""
    if request.param == "sqlite":
        names = iter(range(1, 1000))
        return lambda: tmp_path / f"db{next(names)}.sqlite"
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_url
