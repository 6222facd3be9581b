"""The hardened voila service behind ``cds explorer`` (run as ``python -m cds.explorer.service SETTINGS``).

:func:`cds.explorer.app.run_explorer` writes ``SETTINGS`` (JSON, mode 0600, in a private 0700 folder)
and starts this module in a child process, so the access token never appears on a command line or in
the environment. On top of plain voila the service:

- binds the one port it was given on 127.0.0.1 (no "next free port": a taken port is a refusal) and
  reports ``listening`` / ``failed`` in a status file, so the caller never mistakes another server on
  that port for its own;
- answers only requests whose ``Host`` is ``127.0.0.1``, ``localhost`` or a configured name (403
  otherwise, static files included: no DNS rebinding);
- hides cell tracebacks (``show_tracebacks`` off: a short message, no code or server paths);
- keeps one kernel per browser session (a signed session cookie): reloading the app replaces the
  session's kernel instead of adding one; at most ``max_kernels`` kernels live at once (the least
  recently active one without an open page is shut down first, otherwise the page is refused with
  503); idle kernels without an open page are culled after ``idle_timeout`` seconds;
- removes the token from what the kernels see of the request (``VOILA_REQUEST_URL``, ``QUERY_STRING``);
- serves no files of its working folder (``/voila/files`` is closed: the heat maps stay private) and
  renders the lab template without its CDN stylesheets (Font Awesome already ships in voila's own
  bundle), under a Content-Security-Policy that lets the page load nothing from other hosts.

Only the standard library is imported at the top; voila, jupyter-server and tornado are imported by
:func:`main` in the child.

>>> str(local_only('<link rel="stylesheet" href="https://cdn.example/x.css" type="text/css" /><style>a{}</style>'))
'<style>a{}</style>'
>>> scrub_query("token=abc&x=1")
'x=1'
"""

from __future__ import annotations

import contextvars
import errno
import json
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = ["main", "local_only", "scrub_query", "write_private", "read_status", "SESSION_COOKIE",
           "TEMPLATE"]

#: The signed cookie naming a browser session (one kernel per session).
SESSION_COOKIE = "cds-explorer-session"

#: The lab template minus anything it would load from another host (``cds_local_only`` is :func:`local_only`):
#: its Font Awesome stylesheets (voila-style.js bundles Font Awesome) and nbconvert's mermaid.js loader.
TEMPLATE = """{%- extends 'voila/templates/lab/index.html.j2' -%}
{#- cds: the lab template without its CDN stylesheets; Font Awesome ships in voila-style.js -#}
{%- block notebook_css -%}
{{ super() | cds_local_only }}
{%- endblock notebook_css -%}
{#- no mermaid.js from cdnjs: the explorer draws no diagrams -#}
{%- block html_head_js_mermaidjs -%}
{%- endblock html_head_js_mermaidjs -%}
"""

#: The page for a refused request (503: too many open pages), with the reason voila's page leaves out.
ERROR_503 = """{%- extends 'voila/templates/lab/error.html' -%}
{%- block error_detail -%}<p class="cds-refusal">{{ message }}</p>{%- endblock error_detail -%}
"""

_REMOTE_TAG = re.compile(r"<(?:link|script)\b[^>]*?\b(?:href|src)\s*=\s*[\"']?(?:[a-z][a-z0-9+.-]*:)?//[^>]*>"
                         r"(?:\s*</script>)?", re.IGNORECASE)

_SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("cds_explorer_session", default=None)


def local_only(html: Any) -> Any:
    """``html`` without ``<link>`` / ``<script>`` elements that load from another host (a jinja filter)."""
    from markupsafe import Markup

    return Markup(_REMOTE_TAG.sub("", str(html)))  # noqa: S704 - voila's own template output, links removed


def scrub_query(query: str) -> str:
    """A URL query without its ``token`` parameter.

    >>> scrub_query("a=1&token=s3cret&b=2")
    'a=1&b=2'
    """
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode([(k, v) for k, v in pairs if k.lower() != "token"])


def _scrub_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query=scrub_query(parts.query)))


def write_private(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to a new file readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    return path


def read_status(path: Path) -> dict[str, Any] | None:
    """The service's status (``{"state": "listening" | "failed", ...}``), or None before it wrote one."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _host_pattern(hosts: list[str]) -> str:
    return "(" + "|".join(re.escape(h.lower()) for h in hosts) + ")$"


def _csp(port: int, hosts: list[str]) -> str:
    sockets = " ".join(f"ws://{h}:{port}" for h in hosts)
    return ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
            f"connect-src 'self' data: blob: {sockets}; frame-ancestors 'self'; base-uri 'self'; form-action 'self'")


def _classes(settings: dict[str, Any]) -> Any:
    """The Voila application class with the hardening above (voila is imported here, in the child)."""
    import tornado.ioloop
    import tornado.web
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from tornado.routing import HostMatches
    from voila.app import Voila
    from voila.tornado.handler import TornadoVoilaHandler

    max_kernels = int(settings["max_kernels"])
    hosts = list(settings["hosts"])
    status_file = Path(settings["status_file"])

    class SessionKernelManager(AsyncMappingKernelManager):
        """One kernel per browser session, at most ``max_kernels`` in all; the token kept from kernels."""

        @property
        def _session_kernels(self) -> dict[str, str]:
            return self.__dict__.setdefault("_cds_session_kernels", {})

        def _evictable(self) -> str | None:
            connections = getattr(self, "_kernel_connections", {})
            idle = [(getattr(self.get_kernel(k), "last_activity", None), k) for k in self.list_kernel_ids()
                    if not connections.get(k, 0)
                    and getattr(self.get_kernel(k), "execution_state", "") not in ("busy", "starting")]
            idle.sort(key=lambda t: (t[0] is not None, t[0]))
            return idle[0][1] if idle else None

        async def start_kernel(self, *args: Any, **kwargs: Any) -> str:
            env = kwargs.get("env")
            if isinstance(env, dict):
                if "VOILA_REQUEST_URL" in env:
                    env["VOILA_REQUEST_URL"] = _scrub_url(env["VOILA_REQUEST_URL"])
                if "QUERY_STRING" in env:
                    env["QUERY_STRING"] = scrub_query(env["QUERY_STRING"])
            live = set(self.list_kernel_ids())
            for sid, kid in list(self._session_kernels.items()):
                if kid not in live:
                    del self._session_kernels[sid]
            session = _SESSION.get()
            previous = self._session_kernels.pop(session, None) if session else None
            if previous in live:
                self.log.info("session reload: replacing its kernel %s", previous)
                await self.shutdown_kernel(previous)
            while len(self.list_kernel_ids()) >= max_kernels:
                victim = self._evictable()
                if victim is None:
                    raise tornado.web.HTTPError(
                        503, f"The case explorer is open in {max_kernels} pages already (the most it serves at "
                             "once). Close one of them and reload this page.")
                self.log.info("kernel limit %d: shutting down the least recently active unused kernel %s",
                              max_kernels, victim)
                await self.shutdown_kernel(victim)
            kernel_id = await super().start_kernel(*args, **kwargs)
            if session:
                self._session_kernels[session] = kernel_id
            return kernel_id

    class SessionVoilaHandler(TornadoVoilaHandler):
        """The app page; names the browser session with a signed cookie before the kernel starts."""

        @tornado.web.authenticated
        async def get(self, path: str | None = None) -> None:
            raw = self.get_secure_cookie(SESSION_COOKIE, max_age_days=1)
            session = raw.decode() if raw else os.urandom(16).hex()
            self.set_secure_cookie(SESSION_COOKIE, session, expires_days=None, httponly=True, samesite="Strict")
            token = _SESSION.set(session)
            try:
                await super().get(path)
            finally:
                _SESSION.reset(token)

    class RefusedHostHandler(tornado.web.RequestHandler):
        """Every request whose Host header is not one of ours."""

        def prepare(self) -> None:
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("403: this server answers only to " + ", ".join(hosts) + "\n")

    class ExplorerVoila(Voila):
        """Voila with the cds hardening (see the module docstring)."""

        def setup_template_dirs(self) -> None:
            super().setup_template_dirs()
            self.template_paths = [settings["template_dir"], *self.template_paths]

        def init_handlers(self) -> list[Any]:
            return [(h[0], SessionVoilaHandler, *h[2:]) if h[1] is TornadoVoilaHandler else h
                    for h in super().init_handlers()]

        def _restrict_hosts(self) -> None:
            for rule in self.app.default_router.rules:
                if isinstance(rule.matcher, HostMatches) and rule.matcher.host_pattern.pattern == ".*$":
                    rule.matcher = HostMatches(_host_pattern(hosts))
            self.app.add_handlers(".*$", [(r".*", RefusedHostHandler)])

        def listen(self) -> None:
            self._restrict_hosts()
            try:
                self.app.listen(self.port, self.ip)
            except OSError as exc:
                reason = "in-use" if exc.errno == errno.EADDRINUSE else f"{type(exc).__name__}: {exc.strerror or exc}"
                write_private(status_file, {"state": "failed", "reason": reason, "port": self.port})
                self.log.critical("cannot listen on %s:%s: %s", self.ip, self.port, reason)
                self.exit(3)
            write_private(status_file, {"state": "listening", "port": self.port, "pid": os.getpid()})
            self.log.info("case explorer listening on %s:%s", self.ip, self.port)
            self.ioloop = tornado.ioloop.IOLoop.current()
            try:
                self.ioloop.start()
            except KeyboardInterrupt:
                self.log.info("Stopping...")
            finally:
                self.stop()

    return ExplorerVoila, SessionKernelManager


def _config(settings: dict[str, Any], kernel_manager: type) -> Any:
    from jupyter_server.log import log_request
    from traitlets.config import Config

    port, hosts = int(settings["port"]), list(settings["hosts"])
    c = Config()
    c.Voila.ip = "127.0.0.1"
    c.Voila.port = port
    c.Voila.port_retries = 0
    c.Voila.open_browser = False
    c.Voila.token = settings["token"]
    c.Voila.config_file_paths = []  # no voila.json from the cwd or the user's config: these settings hold
    c.Voila.connection_dir_root = settings["private_dir"]
    c.Voila.tornado_settings = {
        "allow_remote_access": False, "local_hostnames": hosts, "serve_traceback": False,
        "log_function": log_request,  # jupyter-server's request log scrubs tokens from URLs
        "headers": {"Content-Security-Policy": _csp(port, hosts), "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff"},
    }
    c.VoilaConfiguration.show_tracebacks = False
    c.VoilaConfiguration.theme = settings.get("theme", "light")
    c.VoilaConfiguration.file_allowlist = []  # /voila/files would serve the work folder without the token
    c.VoilaConfiguration.multi_kernel_manager_class = kernel_manager
    # JupyterLab-only extensions fail to load in voila (console errors) and do nothing for the app
    c.VoilaConfiguration.extension_denylist = ["jupyterlab-jupytext", "@voila-dashboards/jupyterlab-preview"]
    c.VoilaConfiguration.allow_template_override = "NO"
    c.VoilaConfiguration.allow_theme_override = "NO"
    c.VoilaExecutor.cell_error_instruction = ("This part of the case explorer could not be shown. Whoever runs the "
                                              "explorer finds the details in its server log.")
    c.VoilaExporter.filters = {"cds_local_only": "cds.explorer.service.local_only"}
    c.MappingKernelManager.cull_idle_timeout = int(settings["idle_timeout"])
    c.MappingKernelManager.cull_interval = int(settings["cull_interval"])
    c.MappingKernelManager.cull_connected = False
    c.MappingKernelManager.cull_busy = False
    return c


def main(argv: list[str] | None = None) -> int:
    """Serve the explorer notebook named in the settings file ``argv[0]`` (see the module docstring)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cds.explorer.service SETTINGS.json", file=sys.stderr)
        return 2
    settings = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    template_dir = Path(settings["private_dir"]) / "template"
    template_dir.mkdir(mode=0o700, exist_ok=True)
    (template_dir / "index.html.j2").write_text(TEMPLATE, encoding="utf-8")
    (template_dir / "503.html").write_text(ERROR_503, encoding="utf-8")
    settings["template_dir"] = str(template_dir)
    app_class, kernel_manager = _classes(settings)
    app = app_class.instance(config=_config(settings, kernel_manager))  # the global app: its log is everyone's
    app.initialize([settings["notebook"]])
    app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
