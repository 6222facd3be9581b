"""Read FHIR R4 resources from where they live: Bundle files, folders, bulk-export ndjson, a server.

Everything here yields :class:`RawResource` records (the resource as a plain dict plus where it
came from) and collects :class:`Problem` records for input that cannot be used, so one bad file
never stops a cohort from loading.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from cds.errors import FhirInputError

__all__ = ["RawResource", "Problem", "read_resources", "read_server", "SERVER_RESOURCE_TYPES"]

log = logging.getLogger(__name__)

#: Resource types fetched from a FHIR server (the ones the cohort tables use).
SERVER_RESOURCE_TYPES = (
    "Patient", "Condition", "Observation", "MedicationRequest", "Encounter", "ImagingStudy", "Endpoint",
)


@dataclass(frozen=True)
class RawResource:
    """One FHIR resource as parsed JSON, with its origin (file or URL, and entry/line index)."""

    resource: dict[str, Any]
    source: str
    index: int | None = None
    full_url: str | None = None


@dataclass(frozen=True)
class Problem:
    """A resource or file that could not be used, and why.

    ``kind`` is ``json`` (not parseable), ``not-fhir`` (no resourceType), ``validation`` (fails
    FHIR R4B validation) or ``dangling-reference`` (points at a resource the cohort does not have).
    """

    source: str
    index: int | None
    resource_type: str | None
    resource_id: str | None
    kind: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = self.source + (f" entry {self.index}" if self.index is not None else "")
        what = "/".join(x for x in (self.resource_type, self.resource_id) if x)
        return f"{where}{' ' + what if what else ''}: {self.message}"


def _json_error(path: Path, exc: Exception) -> Problem:
    msg = str(exc).split("\n")[0]
    return Problem(str(path), None, None, None, "json", f"malformed JSON: {msg}")


def _from_document(obj: Any, source: str, out: list[RawResource], problems: list[Problem]) -> None:
    if not isinstance(obj, dict) or "resourceType" not in obj:
        problems.append(Problem(source, None, None, None, "not-fhir",
                                "not a FHIR resource (JSON object without 'resourceType')"))
        return
    if obj["resourceType"] != "Bundle":
        out.append(RawResource(obj, source, None, None))
        return
    entries = obj.get("entry") or []
    if not isinstance(entries, list):
        problems.append(Problem(source, None, "Bundle", obj.get("id"), "validation",
                                "Bundle.entry must be a list"))
        return
    for i, entry in enumerate(entries):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or "resourceType" not in res:
            problems.append(Problem(source, i, None, None, "not-fhir",
                                    "Bundle entry without a resource that has a 'resourceType'"))
            continue
        if res["resourceType"] == "Bundle":  # nested bundle (e.g. a searchset of bundles)
            _from_document(res, f"{source}#entry{i}", out, problems)
            continue
        out.append(RawResource(res, source, i, entry.get("fullUrl")))


_BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark some Windows tools write first; valid JSON text after it is read as is."""


def _read_json_file(path: Path, out: list[RawResource], problems: list[Problem]) -> None:
    try:
        obj = orjson.loads(path.read_bytes().removeprefix(_BOM))
    except orjson.JSONDecodeError as exc:
        problems.append(_json_error(path, exc))
        return
    _from_document(obj, str(path), out, problems)


def _read_ndjson_file(path: Path, out: list[RawResource], problems: list[Problem]) -> None:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(Problem(str(path), lineno, None, None, "json",
                                        f"malformed JSON on line {lineno}: {str(exc).splitlines()[0]}"))
                continue
            if not isinstance(obj, dict) or "resourceType" not in obj:
                problems.append(Problem(str(path), lineno, None, None, "not-fhir",
                                        f"line {lineno} is not a FHIR resource"))
                continue
            if obj["resourceType"] == "Bundle":  # a whole Bundle on one line: its entries, like a .json file
                _from_document(obj, f"{path}#line{lineno}", out, problems)
                continue
            out.append(RawResource(obj, str(path), lineno, None))


def _files_in(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".ndjson")]
    return sorted(files)


def read_resources(path: str | Path) -> tuple[list[RawResource], list[Problem]]:
    """Read every resource in a file or folder (recursively: ``*.json`` and ``*.ndjson``).

    A ``.json`` file may hold a Bundle (any type) or a single resource; a ``.ndjson`` file is a
    FHIR bulk-export file (one resource per line). Unreadable files and entries become
    :class:`Problem` records; the rest still load.

    Raises
    ------
    FhirInputError
        When the path does not exist, or a folder holds no FHIR files at all.
    """
    p = Path(path)
    if not p.exists():
        raise FhirInputError(str(p), "no such file or folder (give a Bundle .json, an .ndjson file, "
                                     "a folder of them, or a FHIR server base URL)")
    files = _files_in(p) if p.is_dir() else [p]
    if not files:
        raise FhirInputError(str(p), "folder holds no FHIR files (*.json bundles or *.ndjson bulk export)")
    out: list[RawResource] = []
    problems: list[Problem] = []
    for f in files:
        if f.suffix.lower() == ".ndjson":
            _read_ndjson_file(f, out, problems)
        else:
            _read_json_file(f, out, problems)
    log.info("read %d resources from %d files (%d problems)", len(out), len(files), len(problems))
    return out, problems


def _pages(session: Any, url: str, params: dict[str, Any] | None, timeout: float) -> Iterator[dict[str, Any]]:
    next_url: str | None = url
    first = True
    seen: set[str] = set()
    while next_url:
        if next_url in seen:  # a server that loops its "next" link
            break
        seen.add(next_url)
        try:
            resp = session.get(next_url, params=params if first else None, timeout=timeout,
                               headers={"Accept": "application/fhir+json"})
        except Exception as exc:  # noqa: BLE001 - network errors of any kind
            raise FhirInputError(next_url, f"cannot reach FHIR server: {exc}") from None
        first = False
        if resp.status_code != 200:
            raise FhirInputError(next_url, f"FHIR server answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            page = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise FhirInputError(next_url, f"FHIR server sent malformed JSON: {exc}") from None
        yield page
        next_url = next((lk.get("url") for lk in page.get("link", []) if lk.get("relation") == "next"), None)


def read_server(base_url: str, resource_types: tuple[str, ...] = SERVER_RESOURCE_TYPES,
                page_size: int = 200, timeout: float = 30.0) -> tuple[list[RawResource], list[Problem]]:
    """Fetch resources from a FHIR R4 server's REST search API (``GET [base]/[type]``), following
    ``next`` links. Each page's entries are read like a Bundle file.

    Raises
    ------
    FhirInputError
        When the server cannot be reached or answers with an HTTP error (the URL is named).
    """
    import requests

    base = base_url.rstrip("/")
    out: list[RawResource] = []
    problems: list[Problem] = []
    with requests.Session() as session:
        for rtype in resource_types:
            for page in _pages(session, f"{base}/{rtype}", {"_count": page_size}, timeout):
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
