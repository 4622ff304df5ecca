"""No import circle among the project's modules (issue 16), and Prefect only in the Prefect layer.

Every module of the shipped packages is parsed with `ast`; every import counts wherever it is
written (module level, inside a function, under `if TYPE_CHECKING:`), and so does
`importlib.import_module("literal")`. An edge goes to the module imported: `from pkg import sub`
names the submodule `pkg.sub` when there is one, else the package `pkg`. Imports of other
distributions (pandas, prefect, ...) are not edges; they are collected to check who imports Prefect.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "connectors", "flows", "transforms")
PREFECT_LAYER = {"flows.sync", "flows.serve", "flows.artifacts"}  # the only modules that may import Prefect


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imported_names(path: Path, name: str, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every dotted name `path` imports, absolute: `pkg.sub` for `from pkg import sub` when `pkg.sub`
    is one of `modules`, else `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
        elif (isinstance(node, ast.Call) and _called(node.func) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)
    return out


def _called(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the project modules it imports."""
    mods = project_modules()
    names = set(mods)
    return {name: frozenset(n for n in imported_names(path, name, names) if n in names and n != name)
            for name, path in mods.items()}


def cycles(graph: Mapping[str, AbstractSet[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
])
def test_cycle_finder(graph, expected):
    assert cycles(graph) == expected


def test_imports_inside_functions_relative_and_from_package_are_edges(tmp_path):
    src = ("import os\nfrom flows import pipeline\nfrom connectors.errors import DestinationError\n"
           "from . import sibling\nfrom ..state.tables import metadata\n"
           "def f():\n    from flows.reports import report_specs\n    import_module('connectors.registry')\n")
    (tmp_path / "m.py").write_text(src)
    known = {"flows.pipeline", "flows.reports", "connectors.errors", "connectors.http.sibling"}
    names = imported_names(tmp_path / "m.py", "connectors.http.m", known)
    assert names == {"os", "flows.pipeline", "connectors.errors", "connectors.http.sibling",
                     "connectors.state.tables", "flows.reports", "connectors.registry"}


def test_the_graph_sees_every_package():
    graph = import_graph()
    assert {"flows.pipeline", "connectors.registry", "connectors.state.tables", "config.models"} <= set(graph)
    assert "flows.pipeline" in graph["flows.sync"]
    assert "connectors.errors" in graph["connectors.destinations.local_file"]


def test_no_import_circle_between_project_modules():
    assert cycles(import_graph()) == []


def test_only_the_prefect_layer_imports_prefect():
    mods = project_modules()
    users = {name for name, path in mods.items()
             if any(n.split(".")[0] in ("prefect", "prefect_dask") for n in imported_names(path, name))}
    assert "flows.sync" in users  # the check sees Prefect imports at all
    assert users - PREFECT_LAYER == set()
