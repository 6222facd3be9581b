"""Shared by the tools/make_*_notebook.py scripts: write a notebook from cells and, optionally,
execute it once and keep only the outputs nbval compares (cells starting ``# NBVAL_CHECK_OUTPUT``),
so the committed notebook stays small and its checked outputs are real.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_notebook

CHECK = "# NBVAL_CHECK_OUTPUT\n"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def write_notebook(name: str, cells: list, execute: bool, timeout: int = 900) -> Path:
    """Write ``notebooks/<name>.ipynb``; with ``execute`` run it and keep the check cells' outputs."""
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    out = NOTEBOOKS / f"{name}.ipynb"
    nbformat.write(nb, str(out))
    if execute:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(out.parent)}}).execute()
        for c in nb.cells:  # nbval treats a cell with outputs but no execution count as unrun: keep those
            c.metadata.pop("execution", None)  # timings only: keep diffs of regenerated notebooks quiet
            if c.cell_type == "code" and not c.source.startswith(CHECK.strip()):
                c.outputs = []
                c.execution_count = None
        nbformat.write(nb, str(out))
    return out
