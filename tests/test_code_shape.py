"""The code's shape, checked on every run: imports point one way (flows -> tasks -> heal_core), no module
imports itself back through others, and no production function outgrows a screen (60 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = ("heal_core", "tasks", "flows")  # each may import only the ones before it
FORBIDDEN = {"heal_core": ("tasks", "flows", "prefect"), "tasks": ("flows",), "flows": ()}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for layer in LAYERS
        for p in sorted((ROOT / layer).rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (a lazy import is still a dependency)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_imports_point_one_way():
    upward = [
        f"{name} imports {imported}"
        for name, path in _modules().items()
        for imported in sorted(_imports(path))
        if imported.split(".")[0] in FORBIDDEN[name.split(".")[0]]
    ]
    assert not upward, upward


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(graph[name]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_production_function_is_over_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _modules().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long
