"""The case explorer as a notebook helper and as a standalone app (voila).

Notebook use (``notebooks/case_explorer.ipynb`` does exactly this)::

    explorer = build_explorer(cohort="fhir_samples", models=["pneumonia"], reader_id="dr-a",
                              store_path="reviews.jsonl")
    explorer                       # the live widget (static HTML where no widget frontend runs)

App use: :func:`run_explorer` computes the Findings once (through the model registry), writes a
parameterised copy of the notebook and serves it with voila on ``127.0.0.1`` (a free port, a token),
printing the URL to open. ``cds explorer`` is the same from the shell (:func:`add_explorer_parser`).

This module imports only the standard library at the top, so the CLI stays fast.

>>> free_port() > 1024
True
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds.errors import CdsError, ParameterError
from cds.locations import cohort_source, notebook_file

__all__ = [
    "build_explorer",
    "compute_findings",
    "load_findings",
    "save_findings",
    "model_cards",
    "run_explorer",
    "ExplorerServer",
    "add_explorer_parser",
    "free_port",
    "check_app_ready",
    "NOTEBOOK",
]

#: The explorer notebook (thin: a parameters cell and a call to :func:`build_explorer`).
NOTEBOOK = notebook_file("case_explorer.ipynb")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------ findings
def save_findings(findings: Sequence[Any], path: str | Path, failures: Sequence[dict[str, Any]] = ()) -> Path:
    """Write Findings (and model failures) as JSON: ``{"findings": [Finding.to_dict()...], "failures": [...]}``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"findings": [f.to_dict() for f in findings], "failures": [f.to_dict() for f in failures]}
    p.write_text(json.dumps(data, default=str))
    return p


def load_findings(path: str | Path) -> tuple[list[Any], list[dict[str, Any]]]:
    """Findings and failures from :func:`save_findings` output (a bare list of Finding dicts also works)."""
    from cds.finding import Finding

    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ParameterError("findings_json", f"{p}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ParameterError("findings_json", f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    items = data.get("findings", []) if isinstance(data, dict) else data
    failures = data.get("failures", []) if isinstance(data, dict) else []
    out = []
    for i, d in enumerate(items):
        try:
            out.append(Finding.from_dict(d))
        except (TypeError, KeyError, ValueError) as exc:
            raise ParameterError("findings_json", f"{p}: finding {i} is not a Finding record ({exc})") from None
    from cds.finding import Failure

    return out, [Failure.from_dict(f) for f in failures if isinstance(f, dict)]


def compute_findings(cohort: Any, models: Sequence[str], registry: Any = None,
                     progress: bool = False, artifacts_dir: str | Path | None = None,
                     ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Run each model of the registry on the cohort; returns (findings, failures).

    With ``artifacts_dir`` the models' explanation maps are saved there for the viewer's overlays.
    """
    from cds.models.registry import ModelRegistry

    reg = registry or ModelRegistry()
    findings: list[Any] = []
    failures: list[dict[str, Any]] = []
    for mid in models:
        result = reg.run(mid, cohort, progress=progress, artifacts_dir=artifacts_dir)
        findings.extend(result.findings)
        failures.extend(result.failures)
    return findings, failures


def model_cards(model_ids: Sequence[str], registry: Any = None) -> dict[str, dict[str, Any]]:
    """Model-card info per model id: name, version, path and the card rendered as HTML.

    The card is the bundle's ``docs/README.md`` (Markdown) or, without one, its ``configs/metadata.json``.
    Unknown ids are left out (the findings panel then says no card was found).
    """
    from cds.explorer.widgets.static import esc, markdown_html
    from cds.models.registry import ModelRegistry

    reg = registry or ModelRegistry()
    out: dict[str, dict[str, Any]] = {}
    for mid in dict.fromkeys(model_ids):
        try:
            b = reg.get(mid)
        except CdsError:
            continue
        readme = b.path / "docs" / "README.md"
        meta = b.path / "configs" / "metadata.json"
        if readme.is_file():
            html, path = markdown_html(readme.read_text(encoding="utf-8")), readme
        else:
            html, path = f"<pre>{esc(json.dumps(b.metadata, indent=2))}</pre>", meta
        out[mid] = {"name": b.metadata.get("name") or mid, "version": b.version, "path": str(path), "html": html}
    return out


# --------------------------------------------------------------------------------- the widget
def build_explorer(cohort: Any, models: Sequence[str] | None = ("pneumonia",), reader_id: str = "reader",
                   store_path: str | Path = "reviews.jsonl", reader_study: bool = False,
                   findings_json: str | Path | None = None, reference_date: str | None = None, now: Any = None,
                   validate: bool = False, registry: Any = None) -> Any:
    """The :class:`cds.explorer.widgets.CaseExplorer` for a cohort, with Findings from the models or a JSON file.

    Parameters
    ----------
    cohort
        A :class:`cds.sources.cohort.Cohort` or a source for :func:`cds.load_cohort` (folder, file, FHIR URL;
        ``""`` is the shipped sample cohort, :func:`cds.locations.cohort_source`).
    models
        Model ids to run through the registry (ignored when ``findings_json`` is given).
    reader_id
        The clinician's id (``Practitioner/<id>`` in the review log).
    store_path
        The review log (``.jsonl``); earlier actions in it are shown.
    reader_study
        Reader-study mode (AI hidden until the reader's own read is saved).
    findings_json
        Load Findings from this file (:func:`save_findings`) instead of running models.
    reference_date, now
        Date ages are computed at / time worklist waits are measured to (default: the reference date).
    """
    from cds.explorer.widgets.explorer import CaseExplorer
    from cds.review.store import ReviewStore
    from cds.sources.cohort import load_cohort

    if isinstance(cohort, str | Path):
        cohort = load_cohort(cohort_source(cohort), validate=validate, reference_date=reference_date)
    if findings_json:
        findings, failures = load_findings(findings_json)
    elif models:
        findings, failures = compute_findings(cohort, list(models), registry)
    else:
        findings, failures = [], []
    ids = sorted({f.model_id for f in findings} | set(models or ()))
    cards = model_cards(ids, registry)
    return CaseExplorer(cohort, findings, ReviewStore(store_path), reader_id, reader_study=reader_study,
                        cards=cards, now=now, failures=failures)


# ----------------------------------------------------------------------------------- the app
@dataclass
class ExplorerServer:
    """A running voila server with the explorer; :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    token: str
    notebook: Path
    workdir: Path
    log_path: Path
    _log: Any = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate voila (and its kernels) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ExplorerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_notebook(parameters: dict[str, Any], path: str | Path, notebook: str | Path = NOTEBOOK) -> Path:
    """A copy of the explorer notebook with ``parameters`` injected after its ``parameters`` cell (papermill)."""
    import nbformat
    from papermill.parameterize import parameterize_notebook

    src = Path(notebook)
    if not src.is_file():
        raise ParameterError("notebook", f"{src}: not found")
    nb = nbformat.read(str(src), as_version=4)
    for cell in nb.cells:  # papermill's parameterize step expects every cell to have a tags list
        cell.metadata.setdefault("tags", [])
    nb.metadata.setdefault("papermill", {})
    nb = parameterize_notebook(nb, parameters)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    return out


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise CdsError(f"voila exited with code {proc.returncode} before serving; log {log_path}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own loopback server
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise CdsError(f"voila did not answer at {url} within {timeout:.0f} s; log {log_path}")


def check_app_ready(notebook: str | Path | None = None) -> Path:
    """What :func:`run_explorer` needs before any model runs: the explorer notebook and voila, papermill and
    ipywidgets. Returns the notebook; raises :class:`ParameterError` (``notebook``) or
    :class:`cds.extras.MissingDependency` naming what is missing.

    >>> check_app_ready().name
    'case_explorer.ipynb'
    >>> check_app_ready("absent.ipynb")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: notebook: absent.ipynb not found (the case explorer notebook; set CDS_NOTEBOOKS to the folder holding case_explorer.ipynb)
    """
    from cds.extras import require

    src = Path(notebook) if notebook is not None else notebook_file("case_explorer.ipynb")
    if not src.is_file():
        raise ParameterError("notebook", f"{src} not found (the case explorer notebook; set CDS_NOTEBOOKS to the "
                                         "folder holding case_explorer.ipynb)")
    for module in ("voila", "papermill", "ipywidgets"):
        require(module, "the case explorer app")
    return src


def run_explorer(cohort: str | Path | None = None, models: Sequence[str] | None = ("pneumonia",), reader_id: str = "reader",
                 store: str | Path = "reviews.jsonl", port: int | None = None, token: str | None = None,
                 findings_json: str | Path | None = None, reader_study: bool = False,
                 reference_date: str | None = None, workdir: str | Path | None = None, block: bool = True,
                 ready_timeout: float = 90.0, quiet: bool = False) -> ExplorerServer:
    """Serve the case explorer with voila on 127.0.0.1 and print its URL (with the access token).

    Findings are computed once here (unless ``findings_json`` is given) and handed to the notebook
    as a JSON file, so reloading the page is fast and shows the same results. With ``block`` (the
    default) this waits until Ctrl-C and then stops the server; otherwise it returns the running
    :class:`ExplorerServer`. ``cohort`` None or ``""`` is the shipped sample cohort. The notebook, voila
    and the cohort are checked before any model runs.
    """
    notebook = check_app_ready()
    cohort_src = cohort_source(cohort)
    if not cohort_src.startswith(("http://", "https://")):
        cohort_src = str(Path(cohort_src).resolve())
        if not Path(cohort_src).exists():
            raise ParameterError("cohort", f"{cohort_src}: no such file or folder")
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cds-explorer-"))
    work.mkdir(parents=True, exist_ok=True)
    if findings_json is None and models:
        from cds.sources.cohort import load_cohort

        if not quiet:
            print(f"running {', '.join(models)} on {cohort_src} ...", flush=True)
        co = load_cohort(cohort_src, validate=False, reference_date=reference_date)
        findings, failures = compute_findings(co, list(models), progress=not quiet,
                                              artifacts_dir=work / "heatmaps")
        findings_json = save_findings(findings, work / "findings.json", failures)
    params = {"cohort": cohort_src, "models": list(models or []), "reader_id": reader_id,
              "store_path": str(Path(store).resolve()), "reader_study": bool(reader_study),
              "findings_json": str(Path(findings_json).resolve()) if findings_json else None,
              "reference_date": reference_date}
    nb_path = write_notebook(params, work / "case_explorer.ipynb", notebook)
    port = port or free_port()
    token = token or secrets.token_urlsafe(24)
    log_path = work / "voila.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by ExplorerServer.stop
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "voila", str(nb_path), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           f"--Voila.token={token}", "--show_tracebacks=True", "--theme=light"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(work), env=env)
    url = f"http://127.0.0.1:{port}/?token={token}"
    server = ExplorerServer(proc, url, port, token, nb_path, work, log_path, log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc, ready_timeout, log_path)
    except BaseException:
        server.stop()
        raise
    if not quiet:
        print(f"case explorer: {url}", flush=True)
    if not block:
        return server
    import signal

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)  # stop voila on SIGTERM as on Ctrl-C
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    return server


# ------------------------------------------------------------------------------------- CLI
def _cmd_explorer(args: argparse.Namespace) -> int:
    run_explorer(args.cohort, models=args.models, reader_id=args.reader, store=args.store, port=args.port,
                 token=args.token, findings_json=args.findings_json, reader_study=args.reader_study,
                 reference_date=args.reference_date)
    return 0


def add_explorer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cds explorer`` to the CLI's sub-parsers (``build_parser`` calls this)."""
    e = subparsers.add_parser("explorer", help="serve the clinician case explorer (voila) on 127.0.0.1")
    e.add_argument("--cohort", help="cohort source (default: the shipped sample cohort, fhir_samples)")
    e.add_argument("--models", nargs="*", default=["pneumonia"], help="model ids to run (default: pneumonia)")
    e.add_argument("--findings-json", help="load Findings from this file instead of running models")
    e.add_argument("--reader", default=os.environ.get("USER", "reader"), help="reviewer id (default: $USER)")
    e.add_argument("--store", default="reviews.jsonl", help="review log file (default: reviews.jsonl)")
    e.add_argument("--reader-study", action="store_true", help="reader-study mode: AI hidden until the read is saved")
    e.add_argument("--reference-date", help="date ages and waits are computed at (YYYY-MM-DD)")
    e.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    e.add_argument("--token", help="access token (default: a random one, printed in the URL)")
    e.set_defaults(func=_cmd_explorer)
    return e
