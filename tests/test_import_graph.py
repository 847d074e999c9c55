"""No import circles in ``models``, ``datamodules`` and ``kd_modules``, lazy (function-level) imports included.

The module graph is read from the source with ``ast``: an edge for every ``import`` / ``from ... import`` of a
module of the same package, wherever it stands in the file, except under ``if TYPE_CHECKING:`` (annotations only:
nothing is imported when the code runs).  A package's ``__init__`` is left out as a target (it
is imported before any of its submodules anyway), so the circles found are real ones between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree except those inside an ``if TYPE_CHECKING:`` block."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _graph(package: str) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name and not files[target].name == "__init__.py":
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["models", "datamodules", "kd_modules"])
def test_no_import_circles(package: str) -> None:
    cycle = _cycle(_graph(package))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_detector_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_readers_do_not_import_the_fixture_writers_and_the_registry_no_network() -> None:
    data = _graph("datamodules")
    assert not [m for m, edges in data.items() if "datamodules.synthetic" in edges]
    assert not [t for t in _graph("models")["models.registry"] if t != "models.contract"]


def test_benchmarks_flow_one_way_but_for_the_wandb_import_command() -> None:
    """The renderer, the report and the cost model never reach up into the runner or the speed harness.  One edge
    is allowed: ``python -m benchmarks.wandb_import`` plans its tables through the runner, which itself imports
    ``import_wandb`` for ``--from-wandb`` (two command-line entry points)."""
    graph = _graph("benchmarks")
    graph["benchmarks.wandb_import"].discard("benchmarks.run")
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_imports_for_annotations_only_are_not_edges() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\nimport c\n"
    imported = {alias.name for n in _runtime_nodes(ast.parse(source)) if isinstance(n, ast.Import) for alias in n.names}
    assert imported == {"b", "c"}
