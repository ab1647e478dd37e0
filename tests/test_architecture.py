"""The package's shape: its import graph has no cycles, and domain modules know nothing of pytest.

Read from the source with :mod:`ast` (nothing is imported), every import counted — a deferred
import inside a function is still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed package → source directory (pyproject.toml's package-dir).
PACKAGES = {"editgate": ROOT / "editgate", "editgate.editors": ROOT / "editors",
            "editgate.fixtures": ROOT / "fixtures"}
# The pytest seam: only these modules may import pytest or the plugin object (the CLI, because
# its commands run pytest).
PYTEST_SEAM = {"editgate.plugin", "editgate.report.plugin", "editgate.fixtures", "editgate.cli"}


def modules() -> dict[str, Path]:
    found = {}
    for prefix, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from pkg import module`` resolved to the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                           for a in node.names)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]


def test_import_graph_has_no_cycles():
    edges = graph()
    # The walk saw all three source trees and resolved their imports.
    assert {"editgate.editors.rome", "editgate.fixtures", "editgate.report.html"} <= set(edges)
    assert "editgate.editors.base" in edges["editgate.editors.rome"]
    assert cycles(edges) == []


def test_only_the_pytest_seam_imports_pytest_or_the_plugin():
    known = modules()
    leaks = {}
    for name, path in known.items():
        if name in PYTEST_SEAM:
            continue
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        bad = {m for m in names if m.split(".")[0] in ("pytest", "_pytest")
               or m in ("editgate.plugin", "editgate.report.plugin")}
        if bad:
            leaks[name] = sorted(bad)
    assert leaks == {}
