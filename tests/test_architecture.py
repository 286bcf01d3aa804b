"""The package's structure, read statically from the source: no import cycles inside `engine`, and
the layers point one way (`engine` and `storage` never import each other or `dialogue`).

Every import counts, at module level or inside a function: a function-level import is still an
arrow in the design, only a lazy one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "storage", "dialogue")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import name` that names a module
    counts as that module)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its own modules is not a cycle of the design: drop the
    arrows from a package to its own submodules."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _without_package_inits(_imports(_modules()))


def test_the_reader_sees_the_tree(graph):
    # guards the test itself: it must find the modules and their arrows
    assert "engine.model" in graph and "engine.generator" in graph["engine.model"]
    assert "storage.store" in graph


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


@pytest.mark.parametrize("layer, forbidden", [
    ("engine", ("storage", "dialogue")),
    ("storage", ("engine", "dialogue")),
])
def test_layers_point_one_way(graph, layer, forbidden):
    wrong = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.split(".")[0] == layer
                   for t in ts if t.split(".")[0] in forbidden)
    assert wrong == []


def test_checkpoints_point_toward_the_network_only(graph):
    """engine/checkpoints/ reads and writes files for the network; the network never reaches back."""
    back = sorted(f"{m} -> {t}" for m, ts in graph.items()
                  if m.startswith("engine.") and not m.startswith(("engine.checkpoints", "engine.bench"))
                  and m not in ("engine.model",)
                  for t in ts if t.startswith("engine.checkpoints"))
    assert back == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
