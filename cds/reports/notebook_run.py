"""Run a cds notebook through papermill and export it as an HTML report without code cells.

>>> notebook_path("cohort_overview.ipynb").name
'cohort_overview.ipynb'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds.errors import CdsError, ParameterError

__all__ = ["notebook_path", "run_notebook", "to_html", "NotebookFailed"]


class NotebookFailed(CdsError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


def notebooks_dir() -> Path:
    """The notebooks folder: ``$CDS_NOTEBOOKS`` or the package's ``cds.notebooks``."""
    from cds.locations import notebooks_dir as _nb

    return _nb()


def notebook_path(name: str) -> Path:
    """``name`` itself when it is a file, else the shipped notebook of that name; :class:`ParameterError` if neither."""
    p = Path(name)
    if p.is_file():
        return p
    q = notebooks_dir() / name
    if not q.is_file():
        raise ParameterError("notebook", f"{name!r} not found in {notebooks_dir()} (set CDS_NOTEBOOKS)")
    return q


def to_html(notebook: str | Path, html_path: str | Path) -> Path:
    """Export an executed notebook to HTML with the code cells hidden (outputs only)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = Path(html_path)
    out.write_text(body, encoding="utf-8")
    return out


def run_notebook(name: str, out_dir: str | Path, parameters: dict[str, Any],
                 progress: bool = True, timeout: int = 1800) -> dict[str, Path]:
    """Execute notebook ``name`` with ``parameters`` into ``out_dir``; write ``<stem>.ipynb`` and
    ``report.html``. Raises :class:`NotebookFailed` naming the failing cell and error."""
    from cds.extras import require

    src = notebook_path(name)
    pm = require("papermill", f"running the notebook {src.name}")
    from papermill.exceptions import PapermillExecutionError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    executed = out / src.name
    try:
        pm.execute_notebook(str(src), str(executed), parameters=parameters, progress_bar=progress,
                            cwd=str(out), execution_timeout=timeout, kernel_name="python3")
    except PapermillExecutionError as exc:
        raise NotebookFailed(f"{src.name}: cell {exc.exec_count} failed: {exc.ename}: {exc.evalue} "
                             f"(executed notebook with the traceback: {executed})") from None
    html = to_html(executed, out / "report.html")
    return {"notebook": executed, "html": html}
