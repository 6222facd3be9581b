"""Start a real, throw-away Orthanc DICOMweb server for tests (Debian packages ``orthanc`` and
``orthanc-dicomweb``; see ../shared/docs/STACK.md, "Orthanc").

The server runs as a plain subprocess (never the system service), listens on a free loopback port,
keeps its storage in a temporary folder, has its DICOM port disabled and refuses non-loopback
clients. ``running_orthanc`` yields the DICOMweb base URL and stops the server on exit.

Use from pytest (see ``orthanc_session``)::

    @pytest.fixture(scope="session")
    def orthanc_url(tmp_path_factory):
        yield from orthanc_session(tmp_path_factory)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
INSTALL_HINT = "install it with: apt-get install -y orthanc orthanc-dicomweb"


class OrthancStartError(RuntimeError):
    """Orthanc did not come up; the message holds the tail of its log."""


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable, or None when it is not installed."""
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None
    )


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin library, or None when ``orthanc-dicomweb`` is not installed."""
    return next((p for p in PLUGIN_CANDIDATES if Path(p).is_file()), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, port: int, plugin: str) -> Path:
    """Write an Orthanc JSON config for a loopback-only HTTP + DICOMweb server storing in ``folder``."""
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "cds-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [plugin],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "Host": f"127.0.0.1:{port}",
            "Ssl": False,
        },
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _log_tail(log: Path, n: int = 25) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(lines[-n:]) or "(log is empty)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)  # Orthanc takes 1-5 s to exit after SIGTERM
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_ready(proc: subprocess.Popen, http: str, log: Path, timeout: float) -> str | None:
    """Poll /system and /plugins; return None when ready, 'exited' if the process died."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            r = requests.get(f"{http}/system", timeout=1)
            if r.ok:
                plugins = requests.get(f"{http}/plugins", timeout=2).json()
                if "dicom-web" not in plugins:
                    raise OrthancStartError(
                        f"Orthanc at {http} runs but the DICOMweb plugin is not loaded (plugins: {plugins}); "
                        f"{INSTALL_HINT}\n--- Orthanc log tail ({log}) ---\n{_log_tail(log)}"
                    )
                return None
            last = f"HTTP {r.status_code} on /system"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise OrthancStartError(
        f"Orthanc did not answer on {http}/system within {timeout:.0f} s (last: {last})\n"
        f"--- Orthanc log tail ({log}) ---\n{_log_tail(log)}"
    )


@contextmanager
def running_orthanc(tmpdir: str | os.PathLike, timeout: float = 20.0, attempts: int = 3) -> Iterator[str]:
    """Run Orthanc with DICOMweb in ``tmpdir`` and yield its DICOMweb base URL.

    Parameters
    ----------
    tmpdir
        Folder for the config, the storage and ``orthanc.log`` (created if absent).
    timeout
        Seconds to wait for HTTP readiness before raising :class:`OrthancStartError` with the log tail.
    attempts
        Tries with a fresh free port each, in case another process grabbed the port in between.

    Yields
    ------
    str
        e.g. ``"http://127.0.0.1:40123/dicom-web"``. The REST root is the same URL without ``/dicom-web``.
    """
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        raise OrthancStartError(f"Orthanc or its DICOMweb plugin is not installed; {INSTALL_HINT}")
    folder = Path(tmpdir)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "orthanc.log"
    for attempt in range(1, attempts + 1):
        port = free_port()
        config = write_config(folder, port, plugin)
        http = f"http://127.0.0.1:{port}"
        with open(log, "ab") as log_fh:
            proc = subprocess.Popen(
                [binary, str(config)], stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            state = _wait_ready(proc, http, log, timeout)
            if state == "exited":
                if attempt < attempts:
                    continue
                raise OrthancStartError(
                    f"Orthanc exited with code {proc.returncode} while starting on port {port}\n"
                    f"--- Orthanc log tail ({log}) ---\n{_log_tail(log)}"
                )
            yield f"{http}/dicom-web"
            return
        finally:
            _stop(proc)


def orthanc_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Body of a session fixture: yield the DICOMweb URL of a fresh Orthanc, or skip / fail.

    Skips when Orthanc is not installed, except when the environment variable ``CI`` is set: then it
    fails, because CI must install ``orthanc`` and ``orthanc-dicomweb``. Use it as::

        @pytest.fixture(scope="session")
        def orthanc_url(tmp_path_factory):
            yield from orthanc_session(tmp_path_factory)
    """
    if orthanc_binary() is None or dicomweb_plugin() is None:
        missing = "Orthanc binary" if orthanc_binary() is None else "Orthanc DICOMweb plugin"
        message = f"{missing} not found; {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so Orthanc is required: {message}", pytrace=False)
        pytest.skip(message)
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url
