"""The import graph of the cds package, read with ``ast`` (nothing is imported).

- No cycle between cds modules through top-level imports (module and class bodies: what runs at import
  time; ``if TYPE_CHECKING:`` blocks do not run and are left out).
- No cycle between ``cds.images`` modules at any level (function-level imports included): the readers
  form a layered stack (image <- dicom_image <- dicom <- dicomweb <- read).
- Every ``cds...`` import in cds, tests, bench and the notebooks' scripts names a module or a name
  that exists (so a moved module leaves no stale import behind).

Dynamic imports (``importlib.import_module("cds...")``) are not seen.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cds"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line``; ``top_level`` when it runs at import time."""

    source: str
    target: str
    line: int
    top_level: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    """``cds/images/read.py`` -> ``cds.images.read``; ``cds/images/__init__.py`` -> ``cds.images``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs at import time (not in a def, not under TYPE_CHECKING)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, top))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), top)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_edges(
    path: Path, source: str, modules: set[str], text: str | None = None
) -> tuple[list[Edge], list[str]]:
    """Edges from ``source`` (the module in ``path``) to cds modules, and the cds imports that resolve to nothing.

    ``from cds.a import b`` points at ``cds.a.b`` when that is a module, else at ``cds.a`` (``b`` a name in it).
    ``text`` is the source when it is not the file's (a notebook cell).
    """
    code = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(code, filename=str(path))
    edges: list[Edge] = []
    missing: list[str] = []
    for node, top in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cds" or alias.name.startswith("cds."):
                    if alias.name not in modules:
                        missing.append(f"{path.name}:{node.lineno} import {alias.name}")
                    else:
                        edges.append(Edge(source, alias.name, node.lineno, top))
            continue
        target = _absolute(node, source, path.name == "__init__.py")
        if not (target == "cds" or target.startswith("cds.")):
            continue
        if target not in modules:
            missing.append(f"{path.name}:{node.lineno} from {target} import ...")
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            edges.append(Edge(source, sub if sub in modules else target, node.lineno, top))
    return edges, missing


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b"}, "b": set()}) is None
    True
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


def _graph(edges: list[Edge], keep: Callable[[Edge], bool] = lambda e: True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        if keep(e) and e.source != e.target and not e.source.startswith(f"{e.target}."):
            graph.setdefault(e.source, set()).add(e.target)  # a package's own __init__ runs first: no edge
    return graph


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    modules = package_modules()
    out: list[Edge] = []
    for name, path in modules.items():
        found, _ = import_edges(path, name, set(modules))
        out.extend(found)
    return out


def test_cycle_finder_sees_a_cycle_and_its_absence() -> None:
    sample = [Edge("cds.a", "cds.b", 1, True), Edge("cds.b", "cds.a", 5, False)]
    assert find_cycle(_graph(sample)) == ["cds.a", "cds.b", "cds.a"]
    assert find_cycle(_graph(sample, lambda e: e.top_level)) is None


def test_edges_are_read_with_their_level(tmp_path: Path) -> None:
    pkg = tmp_path / "cds" / "images"
    pkg.mkdir(parents=True)
    for name in ("__init__", "image", "read"):
        (pkg / f"{name}.py").write_text("")
    (tmp_path / "cds" / "__init__.py").write_text("")
    (pkg / "dicom.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from cds.images.image import Image\n"
        "from . import read\n"
        "if TYPE_CHECKING:\n    import cds.images.read\n"
        "def f():\n    from cds.images import read\n    from cds.gone import x\n"
    )
    modules = package_modules(tmp_path / "cds")
    found, missing = import_edges(pkg / "dicom.py", "cds.images.dicom", set(modules))
    assert [(e.target, e.line, e.top_level) for e in found] == [
        ("cds.images.image", 2, True),
        ("cds.images.read", 3, True),
        ("cds.images.read", 5, False),
        ("cds.images.read", 7, False),
    ]
    assert missing == ["dicom.py:8 from cds.gone import ..."]


def test_no_cycle_between_cds_modules_at_import_time(edges: list[Edge]) -> None:
    cycle = find_cycle(_graph(edges, lambda e: e.top_level))
    assert cycle is None, "top-level import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_between_image_modules_at_any_level(edges: list[Edge]) -> None:
    images = [e for e in edges if e.source.startswith("cds.images.") and e.target.startswith("cds.images.")]
    assert {e.target for e in images} >= {"cds.images.image", "cds.images.dicom", "cds.images.dicomweb"}
    cycle = find_cycle(_graph(images))
    assert cycle is None, "import cycle between cds.images modules: " + " -> ".join(cycle or [])


def test_image_readers_are_layered(edges: list[Edge]) -> None:
    """dicomweb builds on dicom, read dispatches to both; nothing below imports read or dicomweb back."""
    graph = _graph([e for e in edges if e.source.startswith("cds.images.")])
    assert "cds.images.dicom" in graph["cds.images.dicomweb"]
    assert {"cds.images.dicom", "cds.images.dicomweb"} <= graph["cds.images.read"]
    for low in ("cds.images.image", "cds.images.dicom_image", "cds.images.dicom", "cds.images.dicomweb"):
        assert not graph.get(low, set()) & {"cds.images.read"}, low
    for low in ("cds.images.image", "cds.images.dicom_image", "cds.images.dicom"):
        assert "cds.images.dicomweb" not in graph.get(low, set()), low


def test_every_cds_import_resolves() -> None:
    modules = set(package_modules())
    files = [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "tests").glob("*.py"),
        *(ROOT / "bench").glob("*.py"),
        *(ROOT / "notebooks").glob("*.py"),
    ]
    missing: list[str] = []
    for path in sorted(files):
        name = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
        missing += [f"{path.relative_to(ROOT).parent}/{m}" for m in import_edges(path, name, modules)[1]]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] != "code" or "cds" not in text:
                continue
            lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("%", "!"))]
            try:
                found = import_edges(nb, nb.stem, modules, "\n".join(lines))[1]
            except SyntaxError:  # other IPython syntax: its imports are still checked line by line
                found = [m for ln in lines if ln.lstrip().startswith(("import cds", "from cds"))
                         for m in import_edges(nb, nb.stem, modules, ln.strip())[1]]
            missing += [f"notebooks/{m}" for m in found]
    assert not missing, "imports of cds modules that do not exist: " + "; ".join(missing)
