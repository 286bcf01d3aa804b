"""The notebooks run top to bottom on tiny-random, as a reader would run them.

Each notebook runs in a fresh kernel of *this* interpreter (a kernelspec written to a temporary
folder, so a stale `python3` kernelspec elsewhere on the machine cannot pick another Python), in
an empty temporary working folder, with CSM_HOME, the hub cache and the Jupyter/IPython/matplotlib
folders all pointed at temporary places and HF_HUB_OFFLINE=1: nothing touches the user's caches or
the network. A cell that raises fails the test with the cell and its traceback.

The notebooks are committed without outputs (small diffs); a static test keeps it that way.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart.ipynb", "02_conversation.ipynb", "03_podcast.ipynb"]
KERNEL_NAME = "csm-notebook-test"
CELL_TIMEOUT_S = 600  # a generous ceiling per cell for a loaded 2-core machine, not a time assertion


def test_the_notebooks_are_all_there():
    assert [path.name for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    first_code = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "MODEL =" in first_code and '"tiny-random"' in first_code, (
        f"{path.name}: the first code cell picks the model, tiny-random by default"
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model_path) -> dict:
    """A kernelspec for this interpreter and the environment the kernels run with."""
    root = tmp_path_factory.mktemp("notebook-sandbox")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }))
    for name in ("runtime", "ipython", "matplotlib", "hf"):
        (root / name).mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("MPLBACKEND", "CSM_MODEL")}
    env.update(
        CSM_HOME=os.environ["CSM_HOME"],  # the test session's (conftest), where tiny-random is built
        CSM_MODEL="tiny-random",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(root / "hf"),
        IPYTHONDIR=str(root / "ipython"),
        MPLCONFIGDIR=str(root / "matplotlib"),  # shared by the kernels: the font cache is built once
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    assert Path(tiny_model_path).is_dir()
    return {"kernel_dirs": [str(root / "kernels")], "runtime": root / "runtime", "env": env}


def _kernel_manager(sandbox: dict, name: str):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=sandbox["kernel_dirs"]),
        connection_file=str(sandbox["runtime"] / f"kernel-{name}.json"),
    )


def _output_types(nb) -> set[str]:
    kinds = set()
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            kinds.add(output.get("output_type"))
            kinds.update(output.get("data", {}))
    return kinds


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, sandbox, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(sandbox, path.stem),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
    )
    client.execute(env=sandbox["env"])  # raises CellExecutionError naming the cell that failed

    kinds = _output_types(nb)
    assert "error" not in kinds
    assert "image/png" in kinds, f"{path.name} drew no plot"
    audio_players = [o for c in nb.cells for o in c.get("outputs", [])
                     if "<audio" in str(o.get("data", {}).get("text/html", ""))]
    assert audio_players, f"{path.name} played no audio"
