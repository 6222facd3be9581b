"""The explorer service (``cds explorer`` / :func:`run_explorer`) probed as an attacker or an unlucky user would.

Each server runs on 127.0.0.1 on a one-patient cohort with no models (nothing to score: the tests are
about the service) and is stopped afterwards. Kernels are counted as the server's child processes
running ``ipykernel_launcher`` (``/proc``), memory as their resident set sizes.
"""

from __future__ import annotations

import asyncio
import http.client
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import cds
from cds.cli import main
from cds.errors import ParameterError
from cds.explorer import app
from cds.explorer.app import (
    MIN_TOKEN_LENGTH,
    build_explorer,
    check_port,
    check_token,
    default_models,
    load_cohort_cache,
    new_token,
    run_explorer,
    save_cohort_cache,
)

REFERENCE_DATE = "2020-06-02"
PATIENT = "04a33bab"  # a Hannover patient with one radiograph


# ---------------------------------------------------------------------------------- helpers
def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kernel_pids(server: app.ExplorerServer) -> list[int]:
    """The server's live kernel processes."""
    return [p for p in _children(server.process.pid) if "ipykernel_launcher" in _cmdline(p)]


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        total += int(m.group(1)) if m else 0
    return total


def _opener(cookies: bool) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())] if cookies else []
    return urllib.request.build_opener(*handlers)


def _load(opener: urllib.request.OpenerDirector, url: str) -> str:
    with opener.open(url, timeout=120) as r:
        assert r.status == 200
        return r.read().decode()


def _raw(port: int, path: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tiny_cohort(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    (root / "hannover").mkdir()
    shutil.copy(samples_dir / "hannover" / f"{PATIENT}.json", root / "hannover")
    shutil.copytree(samples_dir / "dicom" / "hannover" / PATIENT, root / "dicom" / "hannover" / PATIENT)
    return root


def _serve(cohort: Path, tmp: Path, **kw: Any) -> app.ExplorerServer:
    kw.setdefault("models", [])
    return run_explorer(cohort, store=tmp / "reviews.jsonl", reference_date=REFERENCE_DATE, workdir=tmp / "work",
                        block=False, quiet=True, **kw)


@pytest.fixture(scope="module")
def server(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[app.ExplorerServer]:
    s = _serve(tiny_cohort, tmp_path_factory.mktemp("server"), host_names=["cds-explorer.test"])
    try:
        yield s
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- the token
def test_token_is_never_on_a_command_line_or_in_an_environment(server: app.ExplorerServer) -> None:
    _load(_opener(True), server.url)  # a page load starts a kernel: check it too
    kernels = kernel_pids(server)
    assert kernels, "the page load started no kernel"
    token = server.token.encode()
    for pid in [server.process.pid, *kernels]:
        assert Path(f"/proc/{pid}/cmdline").read_bytes(), pid
        assert token not in Path(f"/proc/{pid}/cmdline").read_bytes(), _cmdline(pid)
        assert token not in Path(f"/proc/{pid}/environ").read_bytes(), pid
    assert "cds.explorer.service" in _cmdline(server.process.pid)
    # the settings file that carries it is the owner's alone, in a folder that is the owner's alone
    assert server.private_dir is not None
    assert stat.S_IMODE(server.private_dir.stat().st_mode) == 0o700
    settings = server.private_dir / "service.json"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert json.loads(settings.read_text())["token"] == server.token
    assert server.token not in server.log_path.read_text()  # request logs scrub it
    assert len(server.token) >= MIN_TOKEN_LENGTH


def test_default_token_is_long_and_random() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", a)


@pytest.mark.parametrize("token", ["x" * 9, "y" * 31, "", "a" * 40 + " b", "a" * 40 + "&next=/", "é" * 40])
def test_short_or_unsafe_tokens_are_refused(token: str, tiny_cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as err:
        _serve(tiny_cohort, tmp_path, token=token)
    assert err.value.where == "token"
    assert not (tmp_path / "work").exists()  # refused before anything was written or started


def test_a_token_of_32_characters_is_accepted() -> None:
    assert check_token("k" * 32) == "k" * 32


@pytest.mark.parametrize("token", [new_token(), "-" + "k" * 42])  # a random token may start with "-"
def test_cli_refuses_a_token_on_its_command_line(token: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explorer", f"--token={token}"]) == 2
    err = capsys.readouterr().err
    assert "--token: a token on the command line is visible to every local user" in err
    assert "CDS_EXPLORER_TOKEN" in err and "Traceback" not in err


def test_cli_refuses_a_token_file_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "token"
    f.write_text(new_token())
    f.chmod(0o644)
    assert main(["explorer", "--token-file", str(f)]) == 2
    assert f"--token-file: {f} is readable by other users (mode 644); chmod 600 {f}" in capsys.readouterr().err


def test_cli_refuses_a_short_token_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDS_EXPLORER_TOKEN", "short-token")
    assert main(["explorer"]) == 2
    assert "token: 11 characters is too short; use at least 32" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the port
@pytest.mark.parametrize("port", [0, -1, 65536, 99999, "http", 80.5, True])
def test_ports_outside_1_to_65535_are_refused(port: Any) -> None:
    with pytest.raises(ParameterError) as err:
        check_port(port)
    assert err.value.where == "--port"


def test_cli_refuses_port_99999_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explorer", "--port", "99999", "--models", "pneumonia"]) == 2
    out = capsys.readouterr()
    assert "--port: 99999 is outside 1..65535" in out.err
    assert "running" not in out.out and "Traceback" not in out.err


@pytest.fixture()
def other_server() -> Iterator[int]:
    """A plain HTTP server (not ours) holding a port on 127.0.0.1; answers 200 to anything."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"another server")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_taken_port_is_refused_and_no_url_printed(other_server: int, tiny_cohort: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ParameterError) as err:
        run_explorer(tiny_cohort, models=[], port=other_server, store=tmp_path / "r.jsonl", workdir=tmp_path / "w",
                     block=False, quiet=False, reference_date=REFERENCE_DATE)
    assert str(err.value) == (f"--port: port {other_server} on 127.0.0.1 is in use; choose another --port or omit it")
    assert "http://" not in capsys.readouterr().out
    assert urllib.request.urlopen(f"http://127.0.0.1:{other_server}/", timeout=5).read() == b"another server"


def test_a_port_taken_after_the_check_is_refused_by_the_service(other_server: int, tiny_cohort: Path,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The race: the port was free when checked, taken when the service binds it. The service must not
    move to another port nor may the caller take the other server's answers for its own."""
    monkeypatch.setattr(app, "port_in_use", lambda port: False)
    with pytest.raises(ParameterError) as err:
        run_explorer(tiny_cohort, models=[], port=other_server, store=tmp_path / "r.jsonl", workdir=tmp_path / "w",
                     block=False, quiet=False, reference_date=REFERENCE_DATE)
    assert "is in use; choose another --port or omit it" in str(err.value)
    assert "http://" not in capsys.readouterr().out
    assert "cannot listen on 127.0.0.1" in (tmp_path / "w" / "voila.log").read_text()


def test_a_picked_free_port_taken_meanwhile_is_replaced_by_another(other_server: int, tiny_cohort: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No --port: the free port picked was taken before the service bound it; the service tries another
    and the URL printed is its own, never the other server's."""
    real_free_port = app.free_port
    picks = iter([other_server])
    monkeypatch.setattr(app, "free_port", lambda: next(picks, None) or real_free_port())
    s = run_explorer(tiny_cohort, models=[], store=tmp_path / "r.jsonl", workdir=tmp_path / "w", block=False,
                     quiet=True, reference_date=REFERENCE_DATE)
    try:
        assert s.port != other_server and f":{s.port}/" in s.url
        assert "cannot listen on 127.0.0.1" in s.log_path.read_text()
        status, _ = _raw(s.port, "/", f"127.0.0.1:{s.port}")
        assert status == 302  # ours: the login redirect, not "another server"
    finally:
        s.stop()


def test_cli_port_taken_one_line(other_server: int, tiny_cohort: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explorer", "--cohort", str(tiny_cohort), "--models", "--port", str(other_server),
                 "--store", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr()
    assert code == 2 and "http://" not in out.out
    assert out.err.strip() == f"cds: error: --port: port {other_server} on 127.0.0.1 is in use; choose another " \
                              "--port or omit it"


# ---------------------------------------------------------------------------------- Host header, files
@pytest.mark.parametrize("path", ["/?token={t}", "/", "/voila/static/voila.js", "/voila/api/themes/x",
                                  "/api/kernels/abc?token={t}", "/login", "/voila/files/findings.json"])
def test_a_foreign_host_header_is_refused(server: app.ExplorerServer, path: str) -> None:
    for host in ("evil.com", f"evil.com:{server.port}", "127.0.0.1.evil.com", "localhost.evil.com", "10.0.0.1"):
        status, body = _raw(server.port, path.format(t=server.token), host)
        assert status == 403, (host, path, status)
        assert "answers only to 127.0.0.1, localhost, cds-explorer.test" in body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "cds-explorer.test"])
def test_our_host_names_are_served(server: app.ExplorerServer, host: str) -> None:
    status, _ = _raw(server.port, "/voila/static/voila.js", f"{host}:{server.port}")
    assert status == 200
    status, _ = _raw(server.port, "/", f"{host}:{server.port}")  # no token: the login page, not the app
    assert status == 302


def test_work_folder_files_are_not_served(server: app.ExplorerServer) -> None:
    """/voila/files serves without the token: it must not hand out heat maps or findings."""
    (server.workdir / "heatmaps").mkdir(exist_ok=True)
    (server.workdir / "heatmaps" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    for path in ("/voila/files/heatmaps/x.png", f"/voila/files/heatmaps/x.png?token={server.token}",
                 "/voila/files/findings.json", "/voila/files/cohort.pickle"):
        status, _ = _raw(server.port, path, f"127.0.0.1:{server.port}")
        assert status in (403, 404), (path, status)


def test_page_forbids_other_hosts_and_referrers(server: app.ExplorerServer) -> None:
    with _opener(True).open(server.url, timeout=120) as r:
        csp = r.headers["Content-Security-Policy"]
        assert r.headers["Referrer-Policy"] == "no-referrer"
        html = r.read().decode()
    assert "default-src 'self'" in csp and f"ws://127.0.0.1:{server.port}" in csp and "https:" not in csp
    for url in re.findall(r"""(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)""", html):
        assert url.startswith(("http://www.w3.org", "http://purl.org", "http://creativecommons.org")), url
    assert "cdn.jsdelivr" not in html and "cdnjs" not in html


# ---------------------------------------------------------------------------------- tracebacks
def test_cell_errors_show_a_short_message_without_code_or_paths(tiny_cohort: Path, tmp_path: Path) -> None:
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps({"findings": [], "failures": []}))
    s = _serve(tiny_cohort, tmp_path, findings_json=findings)
    try:
        findings.write_text("{ not json")  # broken after the start: the notebook's cell raises ParameterError
        html = _load(_opener(True), s.url)
    finally:
        s.stop()
    assert "This part of the case explorer could not be shown" in html
    for leak in ("Traceback", "ParameterError", "invalid JSON", str(tmp_path), "build_explorer", "site-packages",
                 "show_tracebacks", ".py", "findings_json"):
        assert leak not in html, leak
    assert "invalid JSON" in s.log_path.read_text()  # the details are in the server log


# ---------------------------------------------------------------------------------- kernels
@pytest.mark.slow
def test_kernels_stay_bounded_over_50_page_loads(tiny_cohort: Path, tmp_path: Path) -> None:
    s = _serve(tiny_cohort, tmp_path, max_kernels=3)
    try:
        same_session = _opener(True)
        counts, rss, server_rss = [], [], []
        for _ in range(50):
            _load(same_session, s.url)
            kernels = kernel_pids(s)
            counts.append(len(kernels))
            rss.append(rss_kib([s.process.pid, *kernels]))
            server_rss.append(rss_kib([s.process.pid]))
        # one browser session reloading: its kernel is replaced, never added to
        assert counts == [1] * 50, counts
        assert max(rss[-10:]) < 1.3 * max(rss[2:10]), rss
        # new sessions (no cookies): never more than max_kernels; unused kernels make room
        for _ in range(6):
            _load(_opener(False), s.url)
            assert len(kernel_pids(s)) <= 3
        assert len(kernel_pids(s)) == 3
    finally:
        s.stop()
    print(f"50 reloads: kernels {set(counts)}, server+kernels RSS {rss[2] // 1024} -> {rss[-1] // 1024} MiB "
          f"(server alone {server_rss[2] // 1024} -> {server_rss[-1] // 1024} MiB)")


def _kernel_id(html: str) -> str:
    m = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', html)
    assert m, "no kernel id in the page"
    return m.group(1)


@pytest.mark.slow
def test_a_full_server_refuses_a_new_page_with_a_message(tiny_cohort: Path, tmp_path: Path) -> None:
    """Every kernel has an open page (websocket): the next new session gets 503 and a message, no new kernel."""
    from tornado.websocket import websocket_connect

    s = _serve(tiny_cohort, tmp_path, max_kernels=2)
    try:
        ids = [_kernel_id(_load(_opener(False), s.url)) for _ in range(2)]

        async def hold_pages_and_load() -> tuple[int, str]:
            sockets = [await websocket_connect(f"ws://127.0.0.1:{s.port}/api/kernels/{k}/channels?token={s.token}")
                       for k in ids]
            await asyncio.sleep(0.5)
            try:
                return await asyncio.to_thread(_status_of, s.url)
            finally:
                for ws in sockets:
                    ws.close()

        status, body = asyncio.run(hold_pages_and_load())
        assert status == 503
        assert "open in 2 pages already" in body and "Close one of them and reload this page" in body
        assert "Traceback" not in body
        assert len(kernel_pids(s)) == 2
    finally:
        s.stop()


def _status_of(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_idle_kernels_are_culled(tiny_cohort: Path, tmp_path: Path) -> None:
    s = _serve(tiny_cohort, tmp_path, idle_timeout=2, cull_interval=1)
    try:
        _load(_opener(False), s.url)
        assert len(kernel_pids(s)) == 1
        deadline = time.monotonic() + 60
        while kernel_pids(s) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kernel_pids(s) == []
        assert "Culling 'idle' kernel" in s.log_path.read_text()
    finally:
        s.stop()


# ---------------------------------------------------------------------------------- validation, models
def _with_invalid_observation(tiny_cohort: Path, tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, root)
    bad = {"resourceType": "Observation", "id": "bad-obs",  # no status: R4 requires one
           "code": {"text": "x"}, "subject": {"reference": f"Patient/{PATIENT}"}, "valueQuantity": {"value": 1}}
    (root / "extra.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                 "entry": [{"resource": bad}]}))
    return root


def test_the_explorer_validates_the_cohort_like_the_report(tiny_cohort: Path, tmp_path: Path) -> None:
    root = _with_invalid_observation(tiny_cohort, tmp_path)
    ex = build_explorer(str(root), models=[], store_path=tmp_path / "r.jsonl", reference_date=REFERENCE_DATE)
    problems = [p for p in ex.cohort.problems if p.kind == "validation"]
    assert [p.resource_id for p in problems] == ["bad-obs"]
    assert "bad-obs" not in set(ex.cohort.observations.get("id", []))
    raw = build_explorer(str(root), models=[], store_path=tmp_path / "r.jsonl", reference_date=REFERENCE_DATE,
                         validate=False)
    assert not [p for p in raw.cohort.problems if p.kind == "validation"]


def test_the_app_caches_the_validated_cohort_for_page_loads(tiny_cohort: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(_with_invalid_observation(tiny_cohort, tmp_path))
    co = cds.load_cohort(root, validate=True, reference_date=REFERENCE_DATE)
    cache = save_cohort_cache(co, tmp_path / "cohort.pickle")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert load_cohort_cache(cache, root, "1999-01-01") is None  # another date: not this load
    assert load_cohort_cache(cache, str(tiny_cohort), REFERENCE_DATE) is None  # another source
    assert load_cohort_cache(tmp_path / "absent.pickle", root) is None
    (tmp_path / "garbage.pickle").write_bytes(b"not a pickle")
    assert load_cohort_cache(tmp_path / "garbage.pickle", root) is None

    import cds.sources.cohort as cohort_module

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("the cached cohort was not used")

    monkeypatch.setattr(cohort_module, "load_cohort", no_load)
    ex = build_explorer(root, models=[], store_path=tmp_path / "r.jsonl", reference_date=REFERENCE_DATE,
                        cohort_cache=cache)
    assert [p.resource_id for p in ex.cohort.problems if p.kind == "validation"] == ["bad-obs"]
    assert len(ex.cohort.patients) == 1


def test_run_explorer_hands_the_notebook_a_validated_cache(server: app.ExplorerServer) -> None:
    import nbformat

    nb = nbformat.read(str(server.notebook), as_version=4)
    injected = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    cache = Path(re.search(r'cohort_cache = "([^"]+)"', injected).group(1))
    assert cache.parent == server.workdir.resolve()
    data = load_cohort_cache(cache, re.search(r'cohort = "([^"]+)"', injected).group(1), REFERENCE_DATE)
    assert data is not None and len(data.patients) == 1


class _RegistryWithoutIntendedUse:
    """A registry from before ``models_for``."""

    def run(self, model_id: str, cohort: Any, **kw: Any) -> Any:
        return SimpleNamespace(findings=[], failures=[])


class _Registry:
    """A registry stand-in: records which models it was asked to run."""

    def __init__(self, meant: list[str]) -> None:
        self.meant, self.ran = meant, []

    def models_for(self, cohort: Any) -> list[str]:
        return list(self.meant)

    def run(self, model_id: str, cohort: Any, **kw: Any) -> Any:
        self.ran.append(model_id)
        return SimpleNamespace(findings=[], failures=[])

    def get(self, model_id: str) -> Any:
        raise cds.errors.CdsError(model_id)


def test_default_models_are_the_ones_meant_for_the_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    co = cds.load_cohort(tiny_cohort, validate=True, reference_date=REFERENCE_DATE)
    reg = _Registry(["cxr-model-a", "cxr-model-b"])
    assert default_models(co, reg) == ["cxr-model-a", "cxr-model-b"]
    build_explorer(co, store_path=tmp_path / "r.jsonl", registry=reg)
    assert reg.ran == ["cxr-model-a", "cxr-model-b"]
    none_meant = _Registry([])
    build_explorer(co, store_path=tmp_path / "r.jsonl", registry=none_meant)
    assert none_meant.ran == []
    explicit = _Registry(["cxr-model-a"])
    build_explorer(co, models=["other"], store_path=tmp_path / "r.jsonl", registry=explicit)
    assert explicit.ran == ["other"]
    assert default_models(co, _RegistryWithoutIntendedUse()) == ["pneumonia"]


def test_real_registry_defaults(tiny_cohort: Path) -> None:
    from cds.models.registry import ModelRegistry

    co = cds.load_cohort(tiny_cohort, validate=True, reference_date=REFERENCE_DATE)
    reg = ModelRegistry()
    if hasattr(reg, "models_for"):
        assert default_models(co) == list(reg.models_for(co))
    else:  # until the registry declares intended use: the former default
        assert default_models(co) == ["pneumonia"]



# ---------------------------------------------------------------------------------- offline in a browser
@pytest.mark.browser
@pytest.mark.slow
def test_the_app_makes_no_request_beyond_this_machine(tiny_cohort: Path, tmp_path: Path) -> None:
    """Chromium opens the app with every non-loopback request blocked and recorded: none may be made,
    none may even be attempted (the page's Content-Security-Policy would report it on the console), and
    Font Awesome comes from the server itself."""
    from urllib.parse import urlsplit

    from playwright.sync_api import sync_playwright

    from tests.test_browser import ARGS, CHROMIUM

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    external: list[str] = []
    loopback: list[str] = []
    csp: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname in ("127.0.0.1", "localhost"):
            loopback.append(url)
            r.continue_()
        else:
            external.append(url)
            r.abort()

    s = _serve(tiny_cohort, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1200})
                context.route("**/*", route)
                page = context.new_page()
                page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
                sockets: list[str] = []
                page.on("websocket", lambda ws: sockets.append(ws.url))
                page.goto(s.url)
                page.locator(".cds-case-header").first.wait_for(state="visible", timeout=180_000)
                page.wait_for_load_state("networkidle")
                fonts = page.evaluate("() => [...document.fonts].map(f => f.family)")
                assert external == [], external
                assert csp == [], csp
                assert any(u.startswith(f"http://127.0.0.1:{s.port}/voila/") for u in loopback)
                assert sockets and all(u.startswith(f"ws://127.0.0.1:{s.port}/") for u in sockets), sockets
                assert any("Font Awesome" in f for f in fonts), fonts
                # the recorder does catch a request to another host
                probe = context.new_page()
                with pytest.raises(Exception):  # noqa: B017 - playwright's net::ERR_FAILED
                    probe.goto("https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@5/css/all.min.css")
                assert external == ["https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@5/css/all.min.css"]
            finally:
                browser.close()
    finally:
        s.stop()
