"""The project's import graph, read from the source (every import, at module top or inside a function): no circle
between modules, evaluation never imports mlops (mlops builds on evaluation), and imports of the project's own
modules sit at module top except where the line says why (a heavy optional dependency: Spark, MLflow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("twots", "pipelines", "experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module top) of every import in `path`; `from a import b` names a.b when
    that is a module, else a."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and name in known:
                found.append((name, node.lineno, id(node) in top))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {target for target, _, _ in imports(path, known) if target != name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others."""
    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return seen

    reach = {v: reachable(v) for v in edges}
    groups = {frozenset(w for w in reach[v] if v in reach.get(w, ())) for v in edges if v in reach[v]}
    return sorted(sorted(group) for group in groups)


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_evaluation_does_not_import_mlops():
    edges = graph()
    bad = sorted((m, t) for m, targets in edges.items() if m.startswith("twots.evaluation")
                 for t in targets if t.startswith("twots.mlops"))
    assert bad == []


@pytest.mark.parametrize("path", sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_project_imports_at_module_top_unless_the_line_says_why(path):
    lines = path.read_text().splitlines()
    hidden = [f"{path.relative_to(REPO)}:{line}: {lines[line - 1].strip()}"
              for _, line, at_top in imports(path, set(modules())) if not at_top and "#" not in lines[line - 1]]
    assert hidden == []
