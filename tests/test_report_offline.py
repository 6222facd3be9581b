"""report.html is offline for its readers (issue 9, item 10): it loads nothing from outside the file.

- static (no browser): the HTML of a real report run, and of a notebook with widget outputs and widget
  state (which makes nbconvert's stock template add its CDN widget manager), holds no script, link,
  image, frame or CSS ``url()``/``@import`` pointing at an http(s) address other than loopback, and no
  require.js / MathJax / mermaid loader at all;
- in Chromium with every request routed: opening report.html makes no request that is neither the
  file itself nor inline (``data:``/``blob:``), and a control page proves the recorder sees external
  requests (so the check can fail).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from cds.reports.notebook_run import to_html

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
FAST = {"models": ["pneumonia", "cxr-icu", "cxr-cardiomegaly"], "reference_date": "2026-01-01", "n_boot": 200}
#: attributes that make a browser fetch something, in any tag; CSS url(...) and @import
_FETCHING = re.compile(r"""<(script|link|img|iframe|frame|source|video|audio|embed|object|input|track)\b[^>]*?"""
                       r"""\b(src|href|data|srcset|poster)\s*=\s*["']?([^"'\s>]+)""", re.I)
_CSS_URL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])([^"')\s]+)""", re.I)
_JS_IMPORT = re.compile(r"""(?:import\s*\(\s*|\.src\s*=\s*)["']([^"']+)["']""")


def external_references(html: str) -> list[str]:
    """Every address in ``html`` a browser would fetch that is http(s) and not loopback.

    >>> external_references('<script src="https://cdn.x/require.js"></script><img src="data:image/png;base64,AA">')
    ['https://cdn.x/require.js']
    >>> external_references("<style>@import 'http://127.0.0.1:8866/a.css'; b {background: url(//fonts.x/f)}</style>")
    ['//fonts.x/f']
    """
    urls = [m.group(3) for m in _FETCHING.finditer(html)]
    urls += _CSS_URL.findall(html) + _JS_IMPORT.findall(html)
    out = []
    for u in urls:
        if u.startswith("//"):
            out.append(u)
        elif u.lower().startswith(("http://", "https://")) and urlparse(u).hostname not in LOOPBACK:
            out.append(u)
    return out


def _check_static(html: str) -> None:
    assert not external_references(html), external_references(html)
    low = html.lower()
    for needle in ("require.js", "require.min.js", "mathjax", "mermaid.esm", "embed-amd.js", "cdnjs", "unpkg",
                   "jsdelivr", "fonts.googleapis"):
        assert needle not in low, needle


@pytest.fixture(scope="module")
def report_html(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real small report run: the shipped Synthea patients (tables, figures, per-study failures)."""
    from cds.reports import report as rp

    cohort = tmp_path_factory.mktemp("offline") / "synthea"
    shutil.copytree(samples_dir / "synthea", cohort)
    result = rp.run_report(cohort, cohort.parent / "out", FAST, progress=False)
    html = Path(result["html"])
    assert html.is_file() and "<img" in html.read_text(encoding="utf-8")  # figures inlined
    return html


def test_html_export_of_widget_outputs_loads_nothing_from_outside(tmp_path: Path) -> None:
    """Widget views and saved widget state: the stock lab template would add unpkg/jsdelivr and cdnjs scripts."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    view = {"version_major": 2, "version_minor": 0, "model_id": "abc"}
    nb = new_notebook(cells=[
        new_markdown_cell("# Report\nSee [the paper](https://example.org/paper) and $x^2$."),
        new_code_cell("w", outputs=[new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": view, "text/html": "<b>static snapshot</b>",
            "text/plain": "w"})]),
    ])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "version_major": 2, "version_minor": 0, "state": {}}}
    src = tmp_path / "w.ipynb"
    nbformat.write(nb, str(src))
    html = to_html(src, tmp_path / "w.html").read_text(encoding="utf-8")
    _check_static(html)
    assert "<b>static snapshot</b>" in html and 'href="https://example.org/paper"' in html  # links stay links
    # the stock exporter does fetch from CDNs: the check above is not vacuous
    from nbconvert import HTMLExporter

    stock, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    assert len(external_references(stock)) >= 2


@pytest.mark.slow
def test_report_html_references_nothing_outside(report_html: Path) -> None:
    _check_static(report_html.read_text(encoding="utf-8"))




def _open_recording(browser: Any, url: str) -> list[str]:
    """Open ``url`` with every request routed: file:/data:/blob:/loopback pass, anything else is recorded and
    aborted. Returns the recorded addresses."""
    outside: list[str] = []
    context = browser.new_context()

    def route(r: Any) -> None:
        u = r.request.url
        host = urlparse(u).hostname
        if u.startswith(("file:", "data:", "blob:", "about:")) or host in LOOPBACK:
            r.continue_()
        else:
            outside.append(u)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("requestfailed", lambda req: None if req.url in outside or req.url.startswith(("data:", "blob:"))
            else outside.append(f"failed: {req.url}"))
    try:
        page.goto(url, wait_until="load")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)
        assert page.locator("body").inner_text().strip()
    finally:
        context.close()
    return outside


@pytest.mark.browser
@pytest.mark.slow
def test_report_html_makes_no_external_request_in_a_browser(browser: Any, report_html: Path, tmp_path: Path) -> None:
    assert _open_recording(browser, report_html.as_uri()) == []
    # control: the same recorder catches a page that does reach out
    control = tmp_path / "control.html"
    control.write_text('<html><body><p>x</p><script src="https://cdn.invalid/x.js"></script></body></html>')
    assert _open_recording(browser, control.as_uri()) == ["https://cdn.invalid/x.js"]
