"""Write each ``notebooks/<name>.ipynb`` from its jupytext percent script ``notebooks/<name>.py`` (the source).

Run from the repository root::

    .venv/bin/python tools/sync_notebooks.py [--execute] [NAME ...]

The ``.py`` script is what people edit and review; the ``.ipynb`` is its paired copy
(``jupytext: formats: ipynb,py:percent``, so JupyterLab with jupytext keeps both in step) with
stable cell ids ``cell-00``, ``cell-01``, ... Only cells starting with ``# NBVAL_CHECK_OUTPUT`` keep
outputs (nbval compares exactly those; the committed notebooks stay small):

- without ``--execute`` a check cell keeps the outputs the ``.ipynb`` already has for the same source
  (so a markdown edit needs no re-run); a check cell that is new or changed ends up without outputs;
- with ``--execute`` the notebook runs once with its default parameters in a temporary folder (as
  ``papermill notebooks/<name>.ipynb out.ipynb`` would from anywhere) and the check cells' fresh
  outputs are kept.

``tests/test_notebooks.py`` checks that every ``.ipynb`` has its ``.py`` and that both hold the same cells.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jupytext
import nbformat

CHECK = "# NBVAL_CHECK_OUTPUT"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FORMATS = "ipynb,py:percent"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def names() -> list[str]:
    """The paired notebooks: every ``notebooks/*.py`` script that is not a package module."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.py") if not p.name.startswith("_"))


def _old_outputs(ipynb: Path) -> dict[str, tuple[list, int | None]]:
    """Outputs and execution counts of the committed notebook's check cells, by cell source."""
    if not ipynb.is_file():
        return {}
    old = nbformat.read(str(ipynb), as_version=4)
    return {c.source: (c.outputs, c.execution_count) for c in old.cells
            if c.cell_type == "code" and c.source.startswith(CHECK)}


def sync(name: str, execute: bool = False, timeout: int = 900) -> Path:
    """Write ``notebooks/<name>.ipynb`` from ``notebooks/<name>.py``; return the ``.ipynb`` path."""
    script = NOTEBOOKS / f"{name}.py"
    if not script.is_file():
        raise SystemExit(f"sync_notebooks: {script} not found")
    ipynb = script.with_suffix(".ipynb")
    nb = jupytext.read(script, fmt="py:percent")
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
        c.metadata.pop("lines_to_next_cell", None)
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    if execute:
        from nbclient import NotebookClient

        with tempfile.TemporaryDirectory(prefix=f"cds-sync-{name}-") as cwd:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": cwd}}).execute()
        for c in nb.cells:
            c.metadata.pop("execution", None)  # timings only: keep diffs of regenerated notebooks quiet
            if c.cell_type == "code" and not c.source.startswith(CHECK):
                c.outputs, c.execution_count = [], None
    else:
        old = _old_outputs(ipynb)
        for c in nb.cells:
            if c.cell_type == "code" and c.source in old:
                c.outputs, c.execution_count = old[c.source]
    # the kernel fills in its version and widget state on execution: keep only the pairing and kernel
    nb.metadata = {"jupytext": {"formats": FORMATS}, "kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    nbformat.write(nb, str(ipynb))
    jupytext.write(nb, script, fmt="py:percent")  # normalises the script's header (the pairing metadata)
    return ipynb


def main() -> None:
    """Command line: ``[--execute] [NAME ...]`` (default: every paired notebook)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"notebook names (default: {', '.join(names())})")
    ap.add_argument("--execute", action="store_true", help="run each notebook once and keep its check outputs")
    args = ap.parse_args()
    for name in args.names or names():
        print(sync(name, execute=args.execute), "(executed)" if args.execute else "")


if __name__ == "__main__":
    main()
