"""Read FHIR R4 resources from where they live: Bundle files, folders, bulk-export ndjson, a server.

Everything here yields :class:`RawResource` records (the resource as a plain dict plus where it
came from) and collects :class:`Problem` records for input that cannot be used, so one bad file
never stops a cohort from loading. Files are opened only after :mod:`cds.sources.safe_files` checked
them (regular file, inside the folder, under the size limit); text that is not UTF-8, JSON nested past
the parser's limit and resources nested more than :data:`MAX_RESOURCE_DEPTH` levels are named
problems (``encoding``, ``too-deep``), never a RecursionError or MemoryError.

Examples
--------
>>> import json, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "b.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
...     "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}]}))
>>> _ = (d / "bad.json").write_text("{not json")
>>> res, probs = read_resources(d)
>>> [r.resource["id"] for r in res], [p.kind for p in probs]
(['p1'], ['json'])
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from cds.errors import FhirInputError
from cds.sources.records import Problem, RawResource, problem_for
from cds.sources.safe_files import (
    ENV_MAX_FILE_MB,
    Refused,
    check_file,
    find_files,
    max_file_bytes,
    open_checked,
    read_limited,
)

__all__ = ["RawResource", "Problem", "read_resources", "read_server", "SERVER_RESOURCE_TYPES", "MAX_RESOURCE_DEPTH",
           "nested_deeper_than"]

log = logging.getLogger(__name__)

#: Resource types fetched from a FHIR server (the ones the cohort tables use).
SERVER_RESOURCE_TYPES = (
    "Patient", "Condition", "Observation", "MedicationRequest", "Encounter", "ImagingStudy", "Endpoint",
)


_MAX_BUNDLE_NESTING = 8
"""Bundles inside Bundle entries deeper than this are refused (``too-deep``): no real export nests so deep."""

MAX_RESOURCE_DEPTH = 100
"""JSON nesting allowed inside one resource (real ones stay below 30): deeper ones are a ``too-deep`` problem,
so no recursive code downstream (validation, de-identification) meets a RecursionError."""


def nested_deeper_than(obj: Any, limit: int) -> bool:
    """Whether ``obj`` (parsed JSON) nests lists/objects more than ``limit`` levels deep (no recursion used).

    >>> nested_deeper_than({"a": [{"b": 1}]}, 3), nested_deeper_than({"a": [{"b": 1}]}, 2)
    (False, True)
    """
    level = [obj] if isinstance(obj, (dict, list)) else []
    if not level:
        return False
    for _ in range(limit):  # one level at a time: list comprehensions, no recursion
        level = [c for n in level for c in (n.values() if isinstance(n, dict) else n) if isinstance(c, (dict, list))]
        if not level:
            return False
    return True


def _add(rr: RawResource, out: list[RawResource], problems: list[Problem]) -> None:
    """Keep ``rr`` unless it nests deeper than :data:`MAX_RESOURCE_DEPTH`."""
    if nested_deeper_than(rr.resource, MAX_RESOURCE_DEPTH):
        problems.append(problem_for(rr, "too-deep", f"{rr.resource['resourceType']} nests more than "
                                                    f"{MAX_RESOURCE_DEPTH} levels deep; left out"))
    else:
        out.append(rr)


def _json_error(source: str, index: int | None, exc: Exception, data: bytes, where: str = "") -> Problem:
    """Name what is wrong with text orjson refused: not UTF-8, nested too deep, or malformed JSON."""
    msg = str(exc).split("\n")[0]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Problem(source, index, None, None, "encoding",
                       f"{where}text is UTF-16 (byte order mark {data[:2].hex()}); FHIR JSON must be UTF-8: save it as UTF-8")
    if "UTF-8" in msg:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as ude:
            return Problem(source, index, None, None, "encoding",
                           f"{where}bytes that are not UTF-8 at offset {ude.start} (FHIR JSON must be UTF-8: "
                           "re-export or convert the file)")
    if "depth limit" in msg or "recursion" in msg:
        return Problem(source, index, None, None, "too-deep",
                       f"{where}JSON nested deeper than the parser's limit of 1024 levels; not a FHIR resource")
    return Problem(source, index, None, None, "json", f"malformed JSON{' on ' + where.rstrip(': ') if where else ''}: "
                                                      f"{msg}")


def _from_document(obj: Any, source: str, out: list[RawResource], problems: list[Problem], depth: int = 0) -> None:
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        problems.append(Problem(source, None, None, None, "not-fhir",
                                "not a FHIR resource (JSON object without a 'resourceType' string)"))
        return
    if obj["resourceType"] != "Bundle":
        _add(RawResource(obj, source, None, None), out, problems)
        return
    if depth >= _MAX_BUNDLE_NESTING:
        problems.append(Problem(source, None, "Bundle", _str(obj.get("id")), "too-deep",
                                f"Bundles nested more than {_MAX_BUNDLE_NESTING} deep; the inner ones were not read"))
        return
    entries = obj.get("entry") or []
    if not isinstance(entries, list):
        problems.append(Problem(source, None, "Bundle", _str(obj.get("id")), "validation",
                                "Bundle.entry must be a list"))
        return
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            problems.append(Problem(source, i, None, None, "not-fhir",
                                    "Bundle entry without a resource that has a 'resourceType'"))
            continue
        if res["resourceType"] == "Bundle":  # nested bundle (e.g. a searchset of bundles)
            _from_document(res, f"{source}#entry{i}", out, problems, depth + 1)
            continue
        full_url = entry.get("fullUrl")
        _add(RawResource(res, source, i, full_url if isinstance(full_url, str) else None), out, problems)


def _str(x: Any) -> str | None:
    return x if isinstance(x, str) else None


_BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark some Windows tools write first; valid JSON text after it is read as is."""


def _read_json_file(path: Path, real: Path, limit: int, out: list[RawResource], problems: list[Problem]) -> None:
    with open_checked(path, real, limit) as fh:
        data = read_limited(fh, path, limit).removeprefix(_BOM)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        problems.append(_json_error(str(path), None, exc, data))
        return
    _from_document(obj, str(path), out, problems)


def _read_ndjson_file(path: Path, real: Path, limit: int, out: list[RawResource], problems: list[Problem]) -> None:
    read = 0
    with open_checked(path, real, limit) as fh:
        for lineno, line in enumerate(fh, start=1):
            read += len(line)
            if read > limit:  # the file grew while being read
                raise Refused(Problem(str(path), lineno, None, None, "too-large",
                                      f"file grew past the {limit / 1e6:.4g} MB limit while being read; "
                                      f"lines from {lineno} on were not read"))
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(_json_error(str(path), lineno, exc, line, f"line {lineno}: "))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
                problems.append(Problem(str(path), lineno, None, None, "not-fhir",
                                        f"line {lineno} is not a FHIR resource"))
                continue
            if obj["resourceType"] == "Bundle":  # a whole Bundle on one line: its entries, like a .json file
                _from_document(obj, f"{path}#line{lineno}", out, problems)
                continue
            _add(RawResource(obj, str(path), lineno, None), out, problems)


def read_resources(path: str | Path, max_file_mb: float | None = None) -> tuple[list[RawResource], list[Problem]]:
    """Read every resource in a file or folder (recursively: ``*.json`` and ``*.ndjson``).

    A ``.json`` file may hold a Bundle (any type) or a single resource; a ``.ndjson`` file is a
    FHIR bulk-export file (one resource per line). Unreadable files and entries become
    :class:`Problem` records; the rest still load. In a folder, only regular files are opened, links
    only when they lead inside the folder, files only up to ``max_file_mb`` (default 512 MB, or
    ``$CDS_MAX_FHIR_FILE_MB``): see :mod:`cds.sources.safe_files`.

    Raises
    ------
    FhirInputError
        When the path does not exist, is itself no regular file (a FIFO, a device) or too large, or
        a folder holds no FHIR files at all.
    """
    p = Path(path)
    limit = max_file_bytes(max_file_mb)
    if not p.exists():
        raise FhirInputError(str(p), "no such file or folder (give a Bundle .json, an .ndjson file, "
                                     "a folder of them, or a FHIR server base URL)")
    problems: list[Problem] = []
    if p.is_dir():
        root: Path | None = p.resolve()
        files, problems = find_files(p)
        if not files and not problems:
            raise FhirInputError(str(p), "folder holds no FHIR files (*.json bundles or *.ndjson bulk export)")
    else:
        root, files = None, [p]
    out: list[RawResource] = []
    for f in files:
        real, refused = check_file(f, root, limit)
        if refused is not None:
            if root is None:  # the one file the user named
                hint = " (give a Bundle .json or .ndjson file)" if refused.kind == "not-regular-file" else ""
                raise FhirInputError(str(f), refused.message + hint)
            problems.append(refused)
            continue
        assert real is not None
        try:
            if f.suffix.lower() == ".ndjson":
                _read_ndjson_file(f, real, limit, out, problems)
            else:
                _read_json_file(f, real, limit, out, problems)
        except Refused as exc:
            if root is None:
                raise FhirInputError(str(f), exc.problem.message) from None
            problems.append(exc.problem)
    log.info("read %d resources from %d files (%d problems)", len(out), len(files), len(problems))
    return out, problems


def _origin(url: str) -> tuple[str, str | None, int | None]:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        return u.scheme, u.hostname, u.port
    except ValueError:
        return "", None, None


def _body(resp: Any, url: str, limit: int) -> bytes:
    """The response body, refused (FhirInputError) past ``limit`` bytes without reading the rest."""
    chunks, size = [], 0
    for chunk in resp.iter_content(1 << 20):
        size += len(chunk)
        if size > limit:
            resp.close()
            raise FhirInputError(url, f"FHIR server page is over the {limit / 1e6:.4g} MB limit "
                                      f"(raise max_file_mb / ${ENV_MAX_FILE_MB}, or ask for smaller pages)")
        chunks.append(chunk)
    return b"".join(chunks)


def _next_link(page: Any) -> str | None:
    links = page.get("link") if isinstance(page, dict) else None
    for lk in links if isinstance(links, list) else []:
        if isinstance(lk, dict) and lk.get("relation") == "next" and isinstance(lk.get("url"), str):
            return str(lk["url"])
    return None


def _pages(session: Any, url: str, params: dict[str, Any] | None, timeout: float, limit: int,
           problems: list[Problem]) -> Iterator[Any]:
    next_url: str | None = url
    first = True
    seen: set[str] = set()
    while next_url:
        if next_url in seen:  # a server that loops its "next" link
            break
        if _origin(next_url) != _origin(url):  # FHIR data must not send cds to another server
            problems.append(Problem(url, None, "Bundle", None, "location-refused",
                                    f"the 'next' link of a search page leads to another server "
                                    f"({_origin(next_url)[1]}); the rest of the results were not fetched"))
            break
        seen.add(next_url)
        try:
            resp = session.get(next_url, params=params if first else None, timeout=timeout,
                               headers={"Accept": "application/fhir+json"}, stream=True)
        except Exception as exc:  # noqa: BLE001 - network errors of any kind
            raise FhirInputError(next_url, f"cannot reach FHIR server: {exc}") from None
        first = False
        with resp:
            if resp.status_code != 200:
                raise FhirInputError(next_url, f"FHIR server answered HTTP {resp.status_code}: "
                                               f"{_body(resp, next_url, limit)[:200].decode('utf-8', 'replace')}")
            content = _body(resp, next_url, limit)
        try:
            page = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise FhirInputError(next_url, f"FHIR server sent {_json_error(next_url, None, exc, content).message}") \
                from None
        yield page
        next_url = _next_link(page)


def read_server(base_url: str, resource_types: tuple[str, ...] = SERVER_RESOURCE_TYPES,
                page_size: int = 200, timeout: float = 30.0,
                max_file_mb: float | None = None) -> tuple[list[RawResource], list[Problem]]:
    """Fetch resources from a FHIR R4 server's REST search API (``GET [base]/[type]``), following
    ``next`` links on the same server (one to another server is a ``location-refused`` problem; paging
    stops). Each page's entries are read like a Bundle file; a page over ``max_file_mb`` is refused.

    Raises
    ------
    FhirInputError
        When the server cannot be reached, answers with an HTTP error (the URL is named), or sends
        a page that is too large or not JSON.
    """
    import requests

    base = base_url.rstrip("/")
    limit = max_file_bytes(max_file_mb)
    out: list[RawResource] = []
    problems: list[Problem] = []
    with requests.Session() as session:
        for rtype in resource_types:
            for page in _pages(session, f"{base}/{rtype}", {"_count": page_size}, timeout, limit, problems):
                _from_document(page, f"{base}/{rtype}", out, problems)
    # search results may include the same resource twice (e.g. _include); keep the first
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in out:
        key = (r.resource["resourceType"], str(r.resource.get("id")))
        if key in seen and r.resource.get("id") is not None:
            continue
        seen.add(key)
        unique.append(r)
    return unique, problems
