"""The case explorer as a notebook helper and as a standalone app (voila).

Notebook use (``notebooks/case_explorer.ipynb`` does exactly this)::

    explorer = build_explorer(cohort="fhir_samples", reader_id="dr-a", store_path="reviews.jsonl")
    explorer                       # the live widget (static HTML where no widget frontend runs)

The cohort is loaded with FHIR validation on, as the report loads it (invalid resources are left out
and listed in ``Cohort.problems``); without ``models`` the explorer runs the models meant for the
cohort's studies (:func:`default_models`, ``ModelRegistry.models_for``).

App use: :func:`run_explorer` loads and validates the cohort once (a cache the notebook reads back),
computes the Findings once (through the model registry), writes a parameterised copy of the notebook
and serves it with voila on ``127.0.0.1`` through :mod:`cds.explorer.service` (one port, a token of at
least 32 characters passed in a private file, Host header checked, tracebacks hidden, one kernel per
browser session, idle kernels culled, nothing loaded from other hosts), printing the URL to open.
``cds explorer`` is the same from the shell (:func:`add_explorer_parser`).

This module imports only the standard library at the top, so the CLI stays fast.

>>> free_port() > 1024
True
>>> check_port(99999)
Traceback (most recent call last):
...
cds.errors.ParameterError: --port: 99999 is outside 1..65535; choose a port in that range or omit --port for a free one
>>> len(new_token()) >= MIN_TOKEN_LENGTH
True
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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
    "check_port",
    "check_token",
    "check_hosts",
    "port_in_use",
    "new_token",
    "default_models",
    "save_cohort_cache",
    "load_cohort_cache",
    "NOTEBOOK",
    "MIN_TOKEN_LENGTH",
    "TOKEN_ENV",
]

#: The explorer notebook (thin: a parameters cell and a call to :func:`build_explorer`).
NOTEBOOK = notebook_file("case_explorer.ipynb")


#: Tokens shorter than this are refused (``secrets.token_urlsafe(32)`` gives 43 characters).
MIN_TOKEN_LENGTH = 32
#: The environment variable ``cds explorer`` reads a chosen token from (never a command-line argument).
TOKEN_ENV = "CDS_EXPLORER_TOKEN"
#: Host headers always accepted (the server listens on 127.0.0.1 only).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*",
                        re.IGNORECASE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port(port: Any) -> int:
    """``port`` as an int in 1..65535, else :class:`ParameterError` (``--port``).

    >>> check_port("8866")
    8866
    """
    try:
        value = int(port)
        if isinstance(port, bool) or value != float(port):
            raise ValueError
    except (TypeError, ValueError):
        raise ParameterError("--port", f"{port!r} is not a port number; give one in 1..65535 or omit --port "
                                       "for a free one") from None
    if not 1 <= value <= 65535:
        raise ParameterError("--port", f"{value} is outside 1..65535; choose a port in that range or omit --port "
                                       "for a free one")
    return value


def port_in_use(port: int) -> bool:
    """Whether something already listens on (or holds) ``127.0.0.1:port``; a port this user may not bind
    at all is a :class:`ParameterError`.

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen(); port_in_use(s.getsockname()[1])
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado binds: TIME_WAIT is not "in use"
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise ParameterError("--port", f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); choose "
                                           "another --port or omit it") from None
    return False


def _port_taken(port: int) -> ParameterError:
    return ParameterError("--port", f"port {port} on 127.0.0.1 is in use; choose another --port or omit it")


def new_token() -> str:
    """A fresh random access token (``secrets.token_urlsafe(32)``, 43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """``token`` if it is at least :data:`MIN_TOKEN_LENGTH` URL-safe characters, else :class:`ParameterError`.

    >>> check_token("x" * 9)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: token: 9 characters is too short; use at least 32 (e.g. python -c "import secrets; print(secrets.token_urlsafe(32))") or leave it out for a random one
    """
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        n = len(token) if isinstance(token, str) else 0
        raise ParameterError("token", f"{n} characters is too short; use at least {MIN_TOKEN_LENGTH} (e.g. python -c "
                                      '"import secrets; print(secrets.token_urlsafe(32))") or leave it out for a '
                                      "random one")
    if not _TOKEN_CHARS.fullmatch(token):
        raise ParameterError("token", "holds characters other than letters, digits and . _ ~ - (it goes into a URL); "
                                      "use secrets.token_urlsafe(32)")
    return token


def check_hosts(names: Sequence[str] | None) -> list[str]:
    """The Host header names the server answers to: 127.0.0.1, localhost and each valid extra name.

    >>> check_hosts(["Cds.Local"])
    ['127.0.0.1', 'localhost', 'cds.local']
    >>> check_hosts(["evil.com/x"])
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --host-name: 'evil.com/x' is not a host name (letters, digits, '-' and '.')
    """
    out = list(LOOPBACK_HOSTS)
    for name in names or ():
        if not isinstance(name, str) or not _HOST_NAME.fullmatch(name):
            raise ParameterError("--host-name", f"{name!r} is not a host name (letters, digits, '-' and '.')")
        if name.lower() not in out:
            out.append(name.lower())
    return out


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


#: A result cache file (:mod:`cds.inference.cache`) the explorer reads and fills, e.g. a report's
#: ``result-cache.sqlite``: studies the report already answered open without running the models.
CACHE_ENV = "CDS_RESULT_CACHE"


def compute_findings(cohort: Any, models: Sequence[str], registry: Any = None,
                     progress: bool = False, artifacts_dir: str | Path | None = None,
                     cache: str | Path | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """Run each model of the registry on the cohort; returns (findings, failures).

    With ``artifacts_dir`` the models' explanation maps are saved there for the viewer's overlays
    (for every study: a clinician may open any). ``cache`` (default ``$CDS_RESULT_CACHE``) is a result
    cache file shared with ``cds report``: stored answers are reused, new ones stored.
    """
    from cds.models.registry import ModelRegistry

    reg = registry or ModelRegistry()
    findings: list[Any] = []
    failures: list[dict[str, Any]] = []
    path = cache if cache is not None else (os.environ.get(CACHE_ENV) or None)
    store = None
    if path:
        from cds.inference.cache import ResultCache

        store = ResultCache(path)
    try:
        for mid in models:
            result = reg.run(mid, cohort, progress=progress, artifacts_dir=artifacts_dir, cache=store,
                             explain="all" if artifacts_dir is not None else None)
            findings.extend(result.findings)
            failures.extend(result.failures)
    finally:
        if store is not None:
            store.close()
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


def default_models(cohort: Any, registry: Any = None) -> list[str]:
    """The models meant for the cohort's studies: ``ModelRegistry.models_for(cohort)``.

    (A registry without ``models_for`` falls back to ``["pneumonia"]``, the explorer's former default.)
    """
    from cds.models.registry import ModelRegistry

    reg = registry or ModelRegistry()
    models_for = getattr(reg, "models_for", None)
    if models_for is None:
        return ["pneumonia"]
    return list(models_for(cohort))


def _cohort_key(source: str, reference_date: str | None) -> dict[str, Any]:
    from cds import __version__

    return {"cds": __version__, "source": str(source), "reference_date": reference_date, "validated": True}


def save_cohort_cache(cohort: Any, path: str | Path) -> Path:
    """Save a validated cohort for the explorer's page loads (a pickle readable by its owner only).

    The file is as trusted as the explorer notebook beside it: write it only where only you can write.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        pickle.dump({"key": _cohort_key(cohort.source, cohort.reference_date), "cohort": cohort}, fh)
    os.replace(tmp, p)
    return p


def load_cohort_cache(path: str | Path | None, source: str, reference_date: str | None = None) -> Any:
    """The cohort :func:`save_cohort_cache` wrote, if it is the validated load of ``source`` at
    ``reference_date`` (None: any date) by this cds version; otherwise None (the caller loads it)."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - our own file, written 0600 by run_explorer
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if not isinstance(data, dict) or "cohort" not in data:
        return None
    key = data.get("key", {})
    want = _cohort_key(source, reference_date or key.get("reference_date"))
    return data["cohort"] if key == want else None


# --------------------------------------------------------------------------------- the widget
def build_explorer(cohort: Any, models: Sequence[str] | None = None, reader_id: str = "reader",
                   store_path: str | Path = "reviews.jsonl", reader_study: bool = False,
                   findings_json: str | Path | None = None, reference_date: str | None = None, now: Any = None,
                   validate: bool = True, registry: Any = None, cohort_cache: str | Path | None = None) -> Any:
    """The :class:`cds.explorer.widgets.CaseExplorer` for a cohort, with Findings from the models or a JSON file.

    Parameters
    ----------
    cohort
        A :class:`cds.sources.cohort.Cohort` or a source for :func:`cds.load_cohort` (folder, file, FHIR URL;
        ``""`` is the shipped sample cohort, :func:`cds.locations.cohort_source`).
    models
        Model ids to run through the registry (ignored when ``findings_json`` is given); None: the models
        meant for the cohort's studies (:func:`default_models`); ``[]``: none.
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
    validate
        Validate every FHIR resource (default, as the report does); invalid ones are left out and listed
        in ``Cohort.problems``.
    cohort_cache
        A validated cohort saved by :func:`save_cohort_cache` (``cds explorer`` writes one): used when it
        is the load of the same source at the same date, so page loads skip the validation.
    """
    from cds.explorer.widgets.explorer import CaseExplorer
    from cds.review.store import ReviewStore
    from cds.sources.cohort import load_cohort

    if isinstance(cohort, str | Path):
        src = cohort_source(cohort)
        cached = load_cohort_cache(cohort_cache, src, reference_date) if validate else None
        cohort = cached if cached is not None else load_cohort(src, validate=validate, reference_date=reference_date)
    if models is None and not findings_json:
        models = default_models(cohort, registry)
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
    """A running explorer service (voila, :mod:`cds.explorer.service`); :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    token: str
    notebook: Path
    workdir: Path
    log_path: Path
    private_dir: Path | None = None
    _log: Any = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (it shuts its kernels down), wait for it, remove the private settings."""
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
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None

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


def _log_tail(log_path: Path, n: int = 2000) -> str:
    return log_path.read_text(errors="replace")[-n:] if log_path.exists() else ""


def _wait_listening(server: ExplorerServer, status_file: Path, timeout: float) -> None:
    """Wait until the service reports it listens on its port; a taken port is a :class:`ParameterError`."""
    from cds.explorer.service import read_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(status_file)
        if status is not None and status.get("state") == "listening" and status.get("pid") == server.process.pid:
            return
        if status is not None and status.get("state") == "failed":
            if status.get("reason") == "in-use":
                raise _port_taken(server.port)
            raise CdsError(f"the explorer could not listen on 127.0.0.1:{server.port}: {status.get('reason')}; "
                           f"log {server.log_path}")
        if server.process.poll() is not None:
            raise CdsError(f"the explorer service exited with code {server.process.returncode} before serving; "
                           f"log {server.log_path}:\n{_log_tail(server.log_path)}")
        time.sleep(0.1)
    raise CdsError(f"the explorer service did not start listening within {timeout:.0f} s; log {server.log_path}")


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


def _start_service(nb_path: Path, work: Path, port: int, token: str, hosts: list[str], options: dict[str, Any],
                   ready_timeout: float) -> ExplorerServer | None:
    """Start :mod:`cds.explorer.service` on ``port``; the running server, or None when the port was taken."""
    from cds.explorer.service import write_private

    private = Path(tempfile.mkdtemp(prefix="cds-explorer-private-"))  # mode 0700
    os.chmod(private, 0o700)
    status_file = private / "status.json"
    settings = write_private(private / "service.json", {
        "notebook": str(nb_path), "port": port, "token": token, "hosts": hosts, "private_dir": str(private),
        "status_file": str(status_file), **options})
    log_path = work / "voila.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by ExplorerServer.stop
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "cds.explorer.service", str(settings)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(work), env=env)
    server = ExplorerServer(proc, f"http://127.0.0.1:{port}/?token={token}", port, token, nb_path, work, log_path,
                            private, log)
    try:
        _wait_listening(server, status_file, ready_timeout)
    except ParameterError:
        server.stop()
        return None
    except BaseException:
        server.stop()
        raise
    return server


def _prepare_cohort(cohort_src: str, reference_date: str | None, work: Path) -> tuple[Any, Path]:
    from cds.sources.cohort import load_cohort

    co = load_cohort(cohort_src, validate=True, reference_date=reference_date)
    return co, save_cohort_cache(co, work / "cohort.pickle")


def run_explorer(cohort: str | Path | None = None, models: Sequence[str] | None = None, reader_id: str = "reader",
                 store: str | Path = "reviews.jsonl", port: int | None = None, token: str | None = None,
                 findings_json: str | Path | None = None, reader_study: bool = False,
                 reference_date: str | None = None, workdir: str | Path | None = None, block: bool = True,
                 ready_timeout: float = 90.0, quiet: bool = False, host_names: Sequence[str] = (),
                 idle_timeout: int = 1800, cull_interval: int = 60, max_kernels: int = 8,
                 theme: str = "light") -> ExplorerServer:
    """Serve the case explorer with voila on 127.0.0.1 and print its URL (with the access token).

    The cohort is loaded and FHIR-validated once (like the report) and cached for the page loads;
    Findings are computed once here (unless ``findings_json`` is given; ``models`` None: the models meant
    for the cohort's studies, :func:`default_models`) and handed to the notebook as a JSON file, so
    reloading the page is fast and shows the same results. With ``block`` (the default) this waits until
    Ctrl-C and then stops the server; otherwise it returns the running :class:`ExplorerServer`. ``cohort``
    None or ``""`` is the shipped sample cohort.

    Every parameter, the port (``port`` None: a free one; a taken port is refused, never replaced), the
    notebook, voila and the cohort are checked before any model runs. ``token`` (default: a new
    ``secrets.token_urlsafe(32)``) must have at least :data:`MIN_TOKEN_LENGTH` characters; it reaches the
    service through a 0600 file in a private 0700 folder, never a command line. ``host_names``: extra
    ``Host`` header names to accept besides 127.0.0.1 and localhost (names that resolve to 127.0.0.1).
    Kernels: one per browser session (a reload replaces it), at most ``max_kernels``; a kernel without an
    open page is shut down after ``idle_timeout`` seconds (checked every ``cull_interval`` seconds).
    """
    port = check_port(port) if port is not None else None
    token = check_token(token) if token is not None else new_token()
    hosts = check_hosts(host_names)
    for name, value, low in (("idle_timeout", idle_timeout, 1), ("cull_interval", cull_interval, 1),
                             ("max_kernels", max_kernels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ParameterError(name, f"{value!r} must be a whole number of at least {low}")
    if theme not in ("light", "dark"):
        raise ParameterError("--theme", f"{theme!r} is not one of: light, dark")
    if models is not None and any(not isinstance(m, str) or not m.strip() for m in models):
        raise ParameterError("--models", f"{list(models)!r} holds an empty model id; name models (see `cds models`) "
                                         "or leave --models out for the models meant for the cohort")
    notebook = check_app_ready()
    cohort_src = cohort_source(cohort)
    if not cohort_src.startswith(("http://", "https://")):
        cohort_src = str(Path(cohort_src).resolve())
        if not Path(cohort_src).exists():
            raise ParameterError("cohort", f"{cohort_src}: no such file or folder")
    if findings_json is not None:
        load_findings(findings_json)  # a broken file is refused here, not on every page load
    if port is not None and port_in_use(port):
        raise _port_taken(port)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cds-explorer-"))
    work.mkdir(parents=True, exist_ok=True)
    co, cache = _prepare_cohort(cohort_src, reference_date, work)
    if findings_json is None:
        if models is None:
            models = default_models(co)
        if models:
            if not quiet:
                print(f"running {', '.join(models)} on {cohort_src} ...", flush=True)
            findings, failures = compute_findings(co, list(models), progress=not quiet,
                                                  artifacts_dir=work / "heatmaps")
        else:
            findings, failures = [], []
        findings_json = save_findings(findings, work / "findings.json", failures)
    params = {"cohort": cohort_src, "models": list(models or []), "reader_id": reader_id,
              "store_path": str(Path(store).resolve()), "reader_study": bool(reader_study),
              "findings_json": str(Path(findings_json).resolve()), "reference_date": reference_date,
              "cohort_cache": str(cache.resolve())}
    nb_path = write_notebook(params, work / "case_explorer.ipynb", notebook)
    (work / "voila.log").write_bytes(b"")
    options = {"idle_timeout": idle_timeout, "cull_interval": cull_interval, "max_kernels": max_kernels, "theme": theme}
    server = None
    for _ in range(3):  # a free port picked here can be taken before the service binds it: pick another
        try_port = port or free_port()
        server = _start_service(nb_path, work, try_port, token, hosts, options, ready_timeout)
        if server is not None:
            break
        if port is not None:
            raise _port_taken(port)
    if server is None:
        raise CdsError(f"the explorer found no free port on 127.0.0.1 in 3 tries; give one with --port; log "
                       f"{work / 'voila.log'}")
    url = server.url
    if not quiet:
        print(f"case explorer: {url}", flush=True)
    if not block:
        return server
    import signal

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)  # stop voila on SIGTERM as on Ctrl-C
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    return server


# ------------------------------------------------------------------------------------- CLI
def _read_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token-file`` (owner-only file) or ``$CDS_EXPLORER_TOKEN``; None: a new one."""
    if args.token is not None:
        raise ParameterError("--token", "a token on the command line is visible to every local user (ps, "
                                        f"/proc); put it in ${TOKEN_ENV} or a file given with --token-file")
    if args.token_file:
        path = Path(args.token_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ParameterError("--token-file", f"{path}: {exc.strerror or exc}") from None
        if mode & 0o077:
            raise ParameterError("--token-file", f"{path} is readable by other users (mode {mode & 0o777:o}); "
                                                 f"chmod 600 {path}")
        return text
    return os.environ.get(TOKEN_ENV) or None


def _cmd_explorer(args: argparse.Namespace) -> int:
    token = _read_token(args)
    run_explorer(args.cohort, models=args.models, reader_id=args.reader, store=args.store,
                 port=check_port(args.port) if args.port is not None else None,
                 token=token, findings_json=args.findings_json, reader_study=args.reader_study,
                 reference_date=args.reference_date, host_names=args.host_name or (),
                 idle_timeout=args.idle_timeout, max_kernels=args.max_kernels, theme=args.theme)
    return 0


def add_explorer_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``cds explorer`` to the CLI's sub-parsers (``build_parser`` calls this)."""
    e = subparsers.add_parser("explorer", help="serve the clinician case explorer (voila) on 127.0.0.1")
    e.add_argument("--cohort", help="cohort source (default: the shipped sample cohort, fhir_samples)")
    e.add_argument("--models", nargs="*", default=None,
                   help="model ids to run (default: the models meant for the cohort's studies)")
    e.add_argument("--findings-json", help="load Findings from this file instead of running models")
    e.add_argument("--reader", default=os.environ.get("USER", "reader"), help="reviewer id (default: $USER)")
    e.add_argument("--store", default="reviews.jsonl", help="review log file (default: reviews.jsonl)")
    e.add_argument("--reader-study", action="store_true", help="reader-study mode: AI hidden until the read is saved")
    e.add_argument("--reference-date", help="date ages and waits are computed at (YYYY-MM-DD)")
    e.add_argument("--port", help="port on 127.0.0.1, 1..65535 (default: a free one; a taken port is refused)")
    e.add_argument("--token-file", help=f"file holding the access token (mode 600, at least {MIN_TOKEN_LENGTH} "
                   f"characters; or set ${TOKEN_ENV}); default: a random one, printed in the URL")
    e.add_argument("--token", help=argparse.SUPPRESS)  # refused with a message: command lines are public
    e.add_argument("--host-name", action="append", help="an extra Host name to accept besides 127.0.0.1 and "
                   "localhost (one that resolves to 127.0.0.1); repeatable")
    e.add_argument("--idle-timeout", type=int, default=1800,
                   help="seconds before a kernel without an open page is shut down (default 1800)")
    e.add_argument("--max-kernels", type=int, default=8,
                   help="most kernels (open pages) at once (default 8; one per browser session)")
    e.add_argument("--theme", choices=("light", "dark"), default="light", help="JupyterLab theme (default light)")
    e.set_defaults(func=_cmd_explorer)
    return e
