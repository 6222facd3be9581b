"""Run a cds notebook through papermill and export it as an HTML report without code cells.

>>> notebook_path("cohort_overview.ipynb").name
'cohort_overview.ipynb'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds.errors import CdsError, ParameterError

__all__ = ["notebook_path", "run_notebook", "to_html", "html_exporter", "OFFLINE_TEMPLATE", "NotebookFailed"]


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


#: The HTML export template: JupyterLab's ``lab`` template without anything it would fetch from the web.
#: Dropped: require.js and MathJax (cdnjs), the mermaid loader (cdnjs) and the ipywidgets embed manager
#: (unpkg/jsdelivr): a report reader's browser makes no request outside the file. MathJax is not needed (no
#: report shows TeX) and the cds widgets carry a static HTML snapshot of themselves (``cds.explorer.widgets``).
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_OFFLINE_NAME = "cds_offline.html.j2"


def html_exporter() -> Any:
    """nbconvert's HTML exporter with :data:`OFFLINE_TEMPLATE`: outputs only (no code cells, no prompts), no CDN.

    >>> "cdnjs" in html_exporter().from_notebook_node(__import__("nbformat").v4.new_notebook())[0]
    False
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file=_OFFLINE_NAME,
                        extra_loaders=[DictLoader({_OFFLINE_NAME: OFFLINE_TEMPLATE})],
                        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)


def to_html(notebook: str | Path, html_path: str | Path) -> Path:
    """Export an executed notebook to HTML with the code cells hidden (outputs only), loading nothing from
    the web (see :data:`OFFLINE_TEMPLATE`)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = html_exporter().from_notebook_node(nb)
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
