"""The package's layers, read from its imports (every import, at module level or inside a function):
no import circle, and no module imports from a layer above its own. Modules stay under ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resexp"

# Bottom to top. A module's layer is that of the longest prefix of its name listed here.
LAYERS = [
    ["resexp.errors", "resexp.nets.spec"],  # words every layer uses: errors, the networks' spec table
    ["resexp.config", "resexp.distributed", "resexp.device"],  # the config schema, processes, devices
    ["resexp.identity"],  # what a run is: its identity and folder name, from its config
    ["resexp.nets", "resexp.data"],  # the networks (built from a config) and the data
    ["resexp.rundir"],  # a run folder on disk: written and read back
    ["resexp.run"],  # one run's life: setup, the loop, checkpoints, the recorder
    ["resexp.launch"],  # Hydra: compose configs, plan and launch jobs
    ["resexp.analysis"],  # the analyses of trained nets
    ["resexp.commands"],  # one module per CLI command
    ["resexp.cli", "resexp.api", "resexp.__main__"],  # the shell's and Python's entry points
]
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    if name == "resexp":  # the package's __init__: a docstring, imports nothing
        return 0
    best, found = -1, None
    for rank, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), rank
    assert found is not None, f"{name} is in no layer: add it to LAYERS"
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (a `from X import y` counts X, and X.y where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


GRAPH = {name: imports(name, path, set(modules())) for name, path in modules().items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(GRAPH) == []


def test_the_circle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, targets in sorted(graph.items()) for b in sorted(targets) if layer(b) > layer(a)]


def test_no_import_from_a_higher_layer():
    assert upward(GRAPH) == []


def test_the_layer_check_sees_an_import_from_above():
    graph = {"resexp.config": {"resexp.launch.hydra", "resexp.errors"}, "resexp.run.loop": {"resexp.nets.build"}}
    assert upward(graph) == ["resexp.config -> resexp.launch.hydra"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_size(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_one_version_story():
    """The version the code names formats by is the package's version."""
    import resexp

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'version = "{resexp.__version__}"' in pyproject
