"""A small FHIR R4 REST server for tests: serves the resources of a folder on 127.0.0.1.

Supports ``GET [base]/metadata``, ``GET [base]/[type]?_count=N&_getpagesoffset=K`` (searchset
Bundles with ``next`` links) and ``GET [base]/[type]/[id]``; anything else is a 404 with an
OperationOutcome. It reads the files with the same reader as cds, so it serves exactly what a
file load would see.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cds.sources.fhir_read import read_resources


def _outcome(msg: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-found", "diagnostics": msg}]}


@contextmanager
def serve_fhir(folder: str | Path) -> Iterator[str]:
    """Serve a folder's resources; yields the base URL (``http://127.0.0.1:PORT/fhir``)."""
    resources, _ = read_resources(folder)
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        res = dict(r.resource)
        by_type.setdefault(res["resourceType"], []).append(res)
    requests_seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            url = urlparse(self.path)
            requests_seen.append(self.path)
            parts = [p for p in url.path.split("/") if p]
            if not parts or parts[0] != "fhir":
                return self._send(404, _outcome(f"unknown path {url.path}"))
            parts = parts[1:]
            if parts == ["metadata"]:
                return self._send(200, {"resourceType": "CapabilityStatement", "status": "active",
                                        "fhirVersion": "4.0.1", "kind": "instance", "format": ["json"],
                                        "date": "2026-01-01"})
            if len(parts) == 2:
                hit = [r for r in by_type.get(parts[0], []) if r.get("id") == parts[1]]
                return self._send(200, hit[0]) if hit else self._send(404, _outcome(f"{parts[0]}/{parts[1]}"))
            if len(parts) != 1:
                return self._send(404, _outcome(f"unsupported path {url.path}"))
            q = parse_qs(url.query)
            count = int(q.get("_count", ["50"])[0])
            offset = int(q.get("_getpagesoffset", ["0"])[0])
            items = by_type.get(parts[0], [])
            page = items[offset: offset + count]
            base = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}/fhir/{parts[0]}"
            links = [{"relation": "self", "url": f"{base}?_count={count}&_getpagesoffset={offset}"}]
            if offset + count < len(items):
                links.append({"relation": "next", "url": f"{base}?_count={count}&_getpagesoffset={offset + count}"})
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": len(items), "link": links,
                             "entry": [{"fullUrl": f"{base}/{r.get('id')}", "resource": r,
                                        "search": {"mode": "match"}} for r in page]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests_seen = requests_seen  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
