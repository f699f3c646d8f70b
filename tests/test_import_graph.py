"""No import circles in dtd/, properties/ or benchmarks/: the import graph, read statically, has no cycle.

The graph is built from the source alone (``ast``; nothing is imported):

* a node is a module of the three packages (``dtd_properties_pytest.py`` at the top level too), a package
  being its ``__init__.py``;
* an edge is an import statement *wherever it stands*: at module level, inside a function or a method, or
  under ``if TYPE_CHECKING:``.  A function-level import is as much a dependency for the reader as one at the
  top -- it only runs later -- so a circle closed by one is still a circle;
* ``import a.b`` is an edge to ``a.b``; ``from a import b`` to the module ``a.b`` where ``b`` is a module,
  else to ``a`` (the module that defines ``b``); relative imports are resolved against the importing
  module's package;
* not edges: the parent packages Python runs first (``import a.b`` also runs ``a/__init__.py``; counting
  that would make every package whose ``__init__`` imports one of its modules a circle with it), imports of
  anything outside the three packages, and modules named in strings (``importlib.import_module``,
  ``pytest_plugins``, ``-p properties.plugin``).

A cycle fails the test of the package it passes through, naming each import that closes it (``file:line``). The
rooms of ``properties/`` (its subpackages) must not form a circle either, even where their modules do not:
``measure/`` importing ``report/`` would, as ``report/`` reads ``measure/``'s keys.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dtd", "properties", "benchmarks")
TOP_LEVEL_MODULES = ("dtd_properties_pytest",)


def module_files(root: Path, packages: Iterable[str] = PACKAGES,
                 modules: Iterable[str] = TOP_LEVEL_MODULES) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of ``packages`` (a package is its ``__init__.py``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in modules:
        path = root / f"{name}.py"
        if path.exists():
            found[name] = path
    return found


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(package):
        raise ValueError(f"{module}: a relative import of level {level} climbs above the top package")
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_edges(files: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> ``[(imported module, line), ...]``: every import of a module in ``files``, wherever it stands."""
    edges: dict[str, list[tuple[str, int]]] = {name: [] for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(name, is_package, node.level, node.module) if node.level else node.module
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in files else base)
            for target in targets:
                if target in files and target != name:
                    edges[name].append((target, node.lineno))
                elif target == name:
                    raise ValueError(f"{path}:{node.lineno} imports its own module")
    return edges


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[tuple[list[tuple[str, int]], list[str]]]:
    """One shortest cycle per strongly connected component of more than one module, as ``([(module, line of its
    import of the next module), ...], the component's modules)``; sorted, so the message is the same on every run."""
    graph = {name: sorted({target for target, _ in targets}) for name, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit to meet)
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
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
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    found = []
    for component in sorted(components):
        members = set(component)
        start = component[0]
        # breadth-first search back to start inside the component: the shortest circle through its first module
        previous = {start: None}
        queue = [start]
        closing = None
        while queue and closing is None:
            next_queue = []
            for node in queue:
                for child in graph[node]:
                    if child == start:
                        closing = node
                        break
                    if child in members and child not in previous:
                        previous[child] = node
                        next_queue.append(child)
                if closing is not None:
                    break
            queue = next_queue
        path = [closing]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        path.reverse()  # start ... closing, and closing imports start
        lines = []
        for position, node in enumerate(path):
            following = path[(position + 1) % len(path)]
            lines.append((node, min(line for target, line in edges[node] if target == following)))
        found.append((lines, component))
    return found


def describe(found: tuple[list[tuple[str, int]], list[str]], files: dict[str, Path], root: Path) -> str:
    """``a.py:3 -> b.py:10 -> a.py``: each module with the line of its import of the next; when more modules
    are tangled with them, ``(one of the circles among: ...)``."""
    cycle, component = found
    steps = [f"{files[name].relative_to(root)}:{line}" for name, line in cycle]
    text = " -> ".join(steps + [str(files[cycle[0][0]].relative_to(root))])
    if len(component) > len(cycle):
        text += f" (one of the circles among: {', '.join(component)})"
    return text


def circles_through(package: str, root: Path = ROOT) -> list[str]:
    files = module_files(root)
    return [describe(found, files, root) for found in cycles(import_edges(files))
            if any(name == package or name.startswith(package + ".") for name in found[1])]


@pytest.mark.parametrize("package", [
    "properties",
    "benchmarks",
    "dtd_properties_pytest",
    "dtd",
])
def test_no_import_circle(package):
    found = circles_through(package)
    assert not found, f"{len(found)} import circle(s) through {package}:\n  " + "\n  ".join(found)


def room_of(module: str) -> str:
    """``properties.measure.keys`` -> ``properties.measure``: the folder (room) of a module of properties/."""
    return ".".join(module.split(".")[:2])


def test_no_circle_between_the_rooms_of_properties():
    """The rooms depend on each other one way only: measure/ and generate/ on dtd alone, subjects/, findings/ and
    conformance/ on those, report/ on measure/, plugin/ and cli/ on the rest (CONTRIBUTING.md)."""
    files = module_files(ROOT)
    rooms: dict[str, list[tuple[str, str]]] = {}
    for name, targets in import_edges(files).items():
        if not name.startswith("properties."):
            continue
        for target, line in targets:
            if target.startswith("properties.") and room_of(target) != room_of(name):
                rooms.setdefault(room_of(name), []).append((room_of(target), f"{files[name].relative_to(ROOT)}:{line}"))
                rooms.setdefault(room_of(target), [])
    found = [" -> ".join([f"{room} ({where})" for room, where in circle] + [circle[0][0]])
             for circle, _ in cycles(rooms)]
    assert not found, "circles between rooms of properties/:\n  " + "\n  ".join(found)


# --------------------------------------------------------------------------- the checker itself
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path, packages=("pkg",), modules=())


def test_a_circle_closed_inside_a_function_is_found_and_named(tmp_path):
    files = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import os\n\n\ndef later():\n    from .. import a\n    return a\n",
        "pkg/b.py": "from pkg.sub import c\nthing = 1\n",
    })
    found = cycles(import_edges(files))
    assert [describe(c, files, tmp_path) for c in found] == ["pkg/a.py:1 -> pkg/b.py:1 -> pkg/sub/c.py:5 -> pkg/a.py"]


def test_a_package_importing_its_own_modules_and_type_checking_imports(tmp_path):
    files = _tree(tmp_path, {
        "pkg/__init__.py": "from .a import A\nfrom . import b\n",  # the package re-exports its modules: no circle
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n",
        "pkg/b.py": "import pkg.c\nB = 2\n",
        "pkg/c.py": "from pkg.a import A\n",
    })
    edges = import_edges(files)
    assert edges["pkg"] == [("pkg.a", 1), ("pkg.b", 2)]
    expected = "pkg/a.py:3 -> pkg/b.py:1 -> pkg/c.py:1 -> pkg/a.py"
    assert [describe(c, files, tmp_path) for c in cycles(edges)] == [expected]
    assert cycles(import_edges(_tree(tmp_path, {"pkg/a.py": "A = 1\n"}))) == []  # without the TYPE_CHECKING import


def test_the_graph_sees_the_project():
    edges = {name: {target for target, _ in targets} for name, targets in import_edges(module_files(ROOT)).items()}
    assert "properties.measure.thresholds" in edges["properties.measure.checks"]
    assert {"dtd", "properties.measure.checks"} <= edges["benchmarks.workloads"]
    assert len(edges) > 60
