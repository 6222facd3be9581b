"""cds/codes.py is the one place of the package's code systems, extension URLs, identifier systems and labels.

Read with ``ast`` (nothing under cds/ but cds.codes is imported): no other module assigns a module-level
constant whose value is one of cds.codes' URL values, and no other module spells such a URL as a string
literal in code (docstrings, where doctests show values, are left out). A module that needs one imports
it from cds.codes (and may re-export it under its own name by importing it ``as`` that name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cds import codes

PACKAGE = Path(__file__).resolve().parents[1] / "cds"
CODES_PY = PACKAGE / "codes.py"
URL_PREFIXES = ("http://", "https://", "urn:")

#: Every URL / URN value of cds.codes, by its value -> its name there.
URLS: dict[str, str] = {
    v: k for k, v in vars(codes).items()
    if not k.startswith("_") and isinstance(v, str) and v.startswith(URL_PREFIXES)
}


def _value(node: ast.AST | None) -> str | None:
    """The string an expression of literals spells (``"a"``, ``"a" + "b"``, ``f"a"``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _value(node.left), _value(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.JoinedStr):
        parts = [_value(v) for v in node.values]
        return None if any(p is None for p in parts) else "".join(parts)  # type: ignore[arg-type]
    return None


def module_constants(tree: ast.Module) -> list[tuple[str, int, str]]:
    """(name, line, value) of each module-level assignment of a string spelled by literals.

    >>> module_constants(ast.parse('A = "x"\\nB: str = "y" + "z"\\nC = A\\ndef f():\\n    D = "w"'))
    [('A', 1, 'x'), ('B', 2, 'yz')]
    """
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        else:
            continue
        v = _value(value)
        if v is None:
            continue
        for t in targets:
            names = [t] if isinstance(t, ast.Name) else [e for e in getattr(t, "elts", []) if isinstance(e, ast.Name)]
            found.extend((n.id, stmt.lineno, v) for n in names)
    return found


def _docstring_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            # the first statement (a docstring) and every bare string statement (attribute docstrings)
            ids.update(id(s.value) for s in body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    return ids


def string_literals(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, value) of each string literal that is not a docstring (a bare string statement)."""
    docs = _docstring_nodes(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != CODES_PY]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_codes_has_the_package_urls() -> None:
    # the systems the package writes and reads, each once (two names for one value would be two places)
    assert len(URLS) == len([k for k, v in vars(codes).items()
                             if not k.startswith("_") and isinstance(v, str) and v.startswith(URL_PREFIXES)])
    for name in ("SNOMED", "LOINC", "UCUM", "INSTANCE_LOCATION_URL", "VIEW_POSITION_URL", "CMR_MEASURE_CODES",
                 "MIAS_TISSUE_CODES", "BIRADS_DENSITY_SYSTEM", "SAX_STRUCTURE_SYSTEM", "DICOM_UID_SYSTEM"):
        assert URLS[getattr(codes, name)] == name
    assert set(URLS.values()) <= set(codes.__all__)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_defines_a_codes_url(path: Path) -> None:
    tree = _tree(path)
    own = [f"{path.name}:{line} {name} = {value!r} (import cds.codes.{URLS[value]})"
           for name, line, value in module_constants(tree) if value in URLS]
    assert not own, own
    literals = [f"{path.name}:{line} {value!r} (use cds.codes.{URLS[value]})"
                for line, value in string_literals(tree) if value in URLS]
    assert not literals, literals


def test_the_check_sees_a_redefinition() -> None:
    tree = ast.parse(f'SNOMED = "{codes.SNOMED}"\nX = "https://cds.example.org/fhir/" + "finding-id"\n'
                     f'def f():\n    return {{"system": "{codes.LOINC}"}}\n')
    assert [(n, v in URLS) for n, _, v in module_constants(tree)] == [("SNOMED", True), ("X", True)]
    assert [v for _, v in string_literals(tree) if v in URLS] == [codes.SNOMED, codes.CDS_BASE, codes.LOINC]
