"""Benchmark cohorts: the sample cohort replicated ``factor`` times, with new ids and shared images.

:func:`scale_cohort` writes a cohort folder holding ``factor`` replicas of a source cohort (default: the
shipped ``fhir_samples/``). Replica 0 is the source content, byte for byte. Replicas 1..N-1 get new,
deterministic FHIR resource ids (uuid5 of seed, replica, type and old id) for every resource, every
reference rewritten to match (``Type/id``, ``urn:uuid:`` fullUrls, ``request.url``), and new Patient
identifier values.

Images are shared, never copied: every ImagingStudy keeps the study, series and instance UIDs of its
file, and the pixel files are hard links to the source's files (same inode, no bytes copied), so
the unchanged relative instance locations resolve inside the new folder with no extra options. Where
hard links are impossible (another file system) the locations are rewritten to point at the source's
files instead, and the summary's ``image_roots`` must be given to ``load_cohort(image_roots=...)``.

Identity: a DICOM file records one PatientID, while all replicas of a patient point at the same file.
Each replica Patient therefore carries an identifier (system :data:`DICOM_PATIENT_ID_SYSTEM`) with the
PatientID of its images; :func:`patient_identifiers` reads them, for
``StudyFacts.patient_identifiers`` in :func:`cds.models.vouch.check_record`. Another patient's image is
still refused.

>>> import tempfile
>>> s = scale_cohort(None, Path(tempfile.mkdtemp()) / "x2", 2)  # doctest: +SKIP
>>> s["factor"], s["n_patients"]                                  # doctest: +SKIP
(2, 110)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from cds.codes import INSTANCE_LOCATION_URL
from cds.errors import ParameterError

__all__ = ["scale_cohort", "patient_identifiers", "DICOM_PATIENT_ID_SYSTEM", "SCALED_FILE", "MAX_FACTOR"]

log = logging.getLogger(__name__)

#: Patient.identifier system whose value is the DICOM PatientID of the patient's images.
from cds.codes import DICOM_PATIENT_ID_SYSTEM  # noqa: E402 - re-exported

#: The note written into every scaled cohort folder.
SCALED_FILE = "SCALED.md"
#: Largest factor accepted.
MAX_FACTOR = 100_000

_NS = uuid.UUID("6d1f4f0e-5a53-4d5e-9d0c-3c1e2f7a9b10")
_FHIR_SUFFIXES = (".json", ".ndjson")
_TEXT_SUFFIXES = (".md", ".csv", ".txt", ".tsv", "")  # copied; anything else (pixel data) is linked
_REL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/.*)?$")
_ABS_REF = re.compile(r"^(https?://.+/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/.*)?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

Key = tuple[str, str]


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n"


class _Source:
    """The parsed source cohort: FHIR files, the resource keys and fullUrls, the patients' DICOM PatientIDs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fhir: list[tuple[Path, list[Any]]] = []  # relative path, [document] (.json) or lines (.ndjson)
        self.other: list[Path] = []
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(root)
            if rel.as_posix() == SCALED_FILE:
                continue
            if p.suffix.lower() in _FHIR_SUFFIXES:
                self.fhir.append((rel, self._parse(p)))
            else:
                self.other.append(rel)
        self.keys: set[Key] = set()
        self.full_urls: dict[str, Key] = {}
        for _, docs in self.fhir:
            for _ in self._resources(docs):  # records keys and fullUrls
                pass
        self.dicom_ids = self._dicom_patient_ids()

    def _parse(self, p: Path) -> list[Any]:
        data = p.read_bytes()
        try:
            if p.suffix.lower() == ".ndjson":
                return [orjson.loads(line) for line in data.splitlines() if line.strip()]
            return [orjson.loads(data)]
        except orjson.JSONDecodeError as exc:
            from cds.errors import FhirInputError

            raise FhirInputError(str(p), f"malformed JSON ({exc}); fix or remove it before scaling") from None

    def _resources(self, docs: list[Any]) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any]]]:
        """``(entry or None, resource)`` of every top-level resource, recording keys and fullUrls."""
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            if doc.get("resourceType") == "Bundle":
                for e in doc.get("entry") or []:
                    res = e.get("resource") if isinstance(e, dict) else None
                    if isinstance(res, dict):
                        key = (str(res.get("resourceType")), str(res.get("id")))
                        self.keys.add(key)
                        if isinstance(e.get("fullUrl"), str):
                            self.full_urls[e["fullUrl"]] = key
                        yield e, res
            else:
                self.keys.add((str(doc.get("resourceType")), str(doc.get("id"))))
                yield None, doc

    def patient_key(self, ref: Any) -> Key | None:
        r = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(r, str):
            return None
        if r in self.full_urls:
            return self.full_urls[r]
        m = _REL_REF.match(r)
        return (m.group(1), m.group(2)) if m else None

    def _dicom_patient_ids(self) -> dict[Key, set[str]]:
        """Patient key -> the PatientIDs recorded in the DICOM files its ImagingStudies point at."""
        cache: dict[Path, str | None] = {}
        out: dict[Key, set[str]] = {}
        for rel, docs in self.fhir:
            for _, res in self._resources(docs):
                if res.get("resourceType") != "ImagingStudy":
                    continue
                pkey = self.patient_key(res.get("subject"))
                if pkey is None:
                    continue
                for loc in _instance_locations(res):
                    if "://" in loc:
                        continue
                    f = Path(os.path.normpath(self.root / rel.parent / loc))
                    if f not in cache:
                        cache[f] = _dicom_patient_id(f)
                    if cache[f]:
                        out.setdefault(pkey, set()).add(str(cache[f]))
        return out


def _instance_locations(res: dict[str, Any]) -> Iterator[str]:
    for series in res.get("series") or []:
        for inst in (series.get("instance") or []) if isinstance(series, dict) else []:
            for ext in (inst.get("extension") or []) if isinstance(inst, dict) else []:
                if isinstance(ext, dict) and ext.get("url") == INSTANCE_LOCATION_URL \
                        and isinstance(ext.get("valueUrl"), str):
                    yield ext["valueUrl"]


def _dicom_patient_id(path: Path) -> str | None:
    """The PatientID of a DICOM file (the first file of a folder), or None when there is none to read."""
    import pydicom

    if path.is_dir():
        path = next((p for p in sorted(path.iterdir()) if p.is_file()), path)
    if not path.is_file():
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # noqa: BLE001 - not DICOM (PNG, NIfTI): no identity to carry
        return None
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    return pid or None


class _Replica:
    """Rewrites one source document into replica ``k``: ids, references, fullUrls, Patient identifiers."""

    def __init__(self, src: _Source, k: int, seed: int, relocate: tuple[Path, Path] | None) -> None:
        self.src, self.k, self.seed = src, k, seed
        self.relocate = relocate  # (source folder, output folder) of the file when locations are rewritten
        self._ids: dict[Key, str] = {}

    def new_id(self, key: Key) -> str:
        if self.k == 0:
            return key[1]
        nid = self._ids.get(key)
        if nid is None:
            nid = self._ids[key] = str(uuid.uuid5(_NS, f"{self.seed}/{self.k}/{key[0]}/{key[1]}"))
        return nid

    def full_url(self, url: str) -> str:
        if self.k == 0:
            return url
        owner = self.src.full_urls.get(url)
        if owner is not None and url == f"urn:uuid:{owner[1]}":
            return f"urn:uuid:{self.new_id(owner)}"
        if url.startswith("urn:uuid:"):
            return f"urn:uuid:{uuid.uuid5(_NS, f'{self.seed}/{self.k}/fullUrl/{url}')}"
        return self.ref(url)

    def ref(self, value: str) -> str:
        if self.k == 0 or value.startswith("#"):
            return value
        if value.startswith("urn:uuid:"):
            return self.full_url(value) if value in self.src.full_urls else value
        m = _REL_REF.match(value)
        if m and (m.group(1), m.group(2)) in self.src.keys:
            return f"{m.group(1)}/{self.new_id((m.group(1), m.group(2)))}{m.group(3) or ''}"
        m = _ABS_REF.match(value)
        if m and (m.group(2), m.group(3)) in self.src.keys:
            return f"{m.group(1)}{m.group(2)}/{self.new_id((m.group(2), m.group(3)))}{m.group(4) or ''}"
        return value

    def walk(self, x: Any) -> Any:
        if isinstance(x, dict):
            out = {}
            for key, v in x.items():
                if key == "reference" and isinstance(v, str):
                    out[key] = self.ref(v)
                elif key == "valueUrl" and self.relocate and x.get("url") == INSTANCE_LOCATION_URL \
                        and isinstance(v, str) and "://" not in v and not os.path.isabs(v):
                    src_dir, out_dir = self.relocate
                    out[key] = Path(os.path.relpath(os.path.normpath(src_dir / v), out_dir)).as_posix()
                elif isinstance(v, (dict, list)):
                    out[key] = self.walk(v)
                else:
                    out[key] = v
            return out
        if isinstance(x, list):
            return [self.walk(v) if isinstance(v, (dict, list)) else v for v in x]
        return x

    def resource(self, res: dict[str, Any]) -> dict[str, Any]:
        key = (str(res.get("resourceType")), str(res.get("id")))
        new = self.walk(res)
        if self.k == 0:
            return new
        if isinstance(res.get("id"), str):
            new["id"] = self.new_id(key)
        if key[0] == "Patient":
            self._patient(new, key)
        return new

    def _patient(self, new: dict[str, Any], key: Key) -> None:
        """New identifier values, except the DICOM PatientIDs of the patient's images, which it gains."""
        keep = self.src.dicom_ids.get(key, set())
        idents = [dict(i) for i in new.get("identifier") or [] if isinstance(i, dict)]
        for ident in idents:
            value = ident.get("value")
            if not isinstance(value, str) or value in keep:
                continue
            if _UUID.match(value):
                ident["value"] = str(uuid.uuid5(_NS, f"{self.seed}/{self.k}/identifier/{ident.get('system')}/{value}"))
            else:
                ident["value"] = f"{value}-r{self.k}"
        have = {i.get("value") for i in idents if i.get("system") == DICOM_PATIENT_ID_SYSTEM}
        idents += [{"use": "secondary", "system": DICOM_PATIENT_ID_SYSTEM, "value": pid}
                   for pid in sorted(keep - have)]
        if idents:
            new["identifier"] = idents

    def document(self, doc: Any) -> Any:
        if not isinstance(doc, dict):
            return doc
        if doc.get("resourceType") != "Bundle":
            return self.resource(doc)
        out = {}
        for key, v in doc.items():
            if key == "entry" and isinstance(v, list):
                out[key] = [self.entry(e) for e in v]
            elif key == "id" and isinstance(v, str) and self.k:
                out[key] = self.new_id(("Bundle", v))
            else:
                out[key] = self.walk(v) if isinstance(v, (dict, list)) else v
        return out

    def entry(self, e: Any) -> Any:
        if not isinstance(e, dict):
            return e
        out = {}
        for key, v in e.items():
            if key == "fullUrl" and isinstance(v, str):
                out[key] = self.full_url(v)
            elif key == "resource" and isinstance(v, dict):
                out[key] = self.resource(v)
            elif key == "request" and isinstance(v, dict):
                out[key] = {k2: (self.ref(v2) if k2 == "url" and isinstance(v2, str) else v2) for k2, v2 in v.items()}
            else:
                out[key] = self.walk(v) if isinstance(v, (dict, list)) else v
        return out


def _source_dir(source: str | Path | None) -> Path:
    if source is None or str(source).strip() == "":
        from cds.locations import sample_cohort_dir

        sample = sample_cohort_dir()
        if sample is None:
            raise ParameterError("source", "this installation has no sample cohort (fhir_samples/); give a cohort "
                                           "folder")
        return sample.resolve()
    p = Path(source).expanduser()
    if not p.is_dir():
        raise ParameterError("source", f"'{source}' is not a folder; give a cohort folder of FHIR .json/.ndjson files")
    return p.resolve()


def _out_dir(out_dir: str | Path, src: Path) -> Path:
    from cds.params import output_dir

    out = output_dir(str(out_dir) if isinstance(out_dir, Path) else out_dir, "out_dir").resolve()
    if out.exists() and any(out.iterdir()):
        raise ParameterError("out_dir", f"'{out_dir}' is not empty; give a new or empty folder")
    if out == src or src in out.parents or out in src.parents:
        raise ParameterError("out_dir", f"'{out_dir}' must lie outside the source cohort (and not hold it)")
    return out


def _can_link(src: _Source, out: Path) -> bool:
    probe = next((r for r in src.other if r.suffix.lower() not in _TEXT_SUFFIXES), None)
    if probe is None:
        return True
    try:
        out.mkdir(parents=True, exist_ok=True)
        os.link(src.root / probe, out / ".link-probe")
        (out / ".link-probe").unlink()
        return True
    except OSError:
        return False


def scale_cohort(source: str | Path | None, out_dir: str | Path, factor: int, *, seed: int = 0,
                 images: str = "link") -> dict[str, Any]:
    """Write ``factor`` replicas of the cohort ``source`` (None or "": the shipped sample cohort) into ``out_dir``.

    ``images="link"`` (default) hard-links the pixel files (falls back to ``"reference"`` when the
    file system refuses); ``"reference"`` writes instance locations pointing at the source's files
    (then load with ``image_roots=summary["image_roots"]``). Text files (LICENSE, SOURCES.md,
    ``dicom_id_map.csv``) are copied; ``SCALED.md`` says what the folder is.

    Returns ``factor``, ``n_patients``, ``n_resources``, ``n_imaging`` (ImagingStudy resources),
    ``n_files``, ``images``, ``image_roots``, ``source``, ``out`` and ``seconds``.

    Raises :class:`cds.errors.ParameterError` naming ``factor``, ``seed``, ``images``, ``source`` or ``out_dir``.

    >>> scale_cohort(None, "/tmp/never-written", 0)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: factor: 0 is out of range; give a whole number from 1 to 100000
    """
    from cds.params import count

    t0 = time.perf_counter()
    factor = count(factor, "factor", 1, MAX_FACTOR)
    seed = count(seed, "seed", 0)
    if images not in ("link", "reference"):
        raise ParameterError("images", f"{images!r}: choose 'link' (hard links) or 'reference'")
    src_root = _source_dir(source)
    out = _out_dir(out_dir, src_root)
    src = _Source(src_root)
    if not src.fhir:
        raise ParameterError("source", f"'{source}' holds no FHIR .json or .ndjson files")
    if images == "link" and not _can_link(src, out):
        log.warning("hard links refused between %s and %s: instance locations point at the source's files",
                    src_root, out)
        images = "reference"
    out.mkdir(parents=True, exist_ok=True)
    for rel in src.other:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.suffix.lower() in _TEXT_SUFFIXES:
            shutil.copyfile(src_root / rel, dst)
        elif images == "link":
            os.link(src_root / rel, dst)
    width = max(3, len(str(factor - 1)))
    counts: Counter[str] = Counter()
    n_files = 0
    for rel, docs in src.fhir:
        for _, res in src._resources(docs):
            counts[str(res.get("resourceType"))] += 1
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        relocate = (src_root / rel.parent, out / rel.parent) if images == "reference" else None
        for k in range(factor):
            dst = out / rel if k == 0 else out / rel.parent / f"{rel.stem}.r{k:0{width}d}{rel.suffix}"
            n_files += 1
            if k == 0 and relocate is None:
                shutil.copyfile(src_root / rel, dst)
                continue
            rep = _Replica(src, k, seed, relocate)
            if rel.suffix.lower() == ".ndjson":
                dst.write_bytes(b"".join(orjson.dumps(rep.document(d)) + b"\n" for d in docs))
            else:
                dst.write_bytes(_dumps(rep.document(docs[0])))
    roots = [str(src_root)] if images == "reference" else []
    summary = {"factor": factor, "n_patients": factor * counts["Patient"], "n_resources": factor * sum(counts.values()),
               "n_imaging": factor * counts["ImagingStudy"], "n_files": n_files, "images": images,
               "image_roots": roots, "source": str(src_root), "out": str(out), "seed": seed}
    (out / SCALED_FILE).write_text(_scaled_md(summary, source), encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("scaled cohort written: factor %d, %d resources in %.1f s", factor, summary["n_resources"],
             summary["seconds"])
    return summary


def _scaled_md(s: dict[str, Any], source: str | Path | None) -> str:
    """The folder's note (no clock, no output path: identical for identical inputs)."""
    given = "the shipped sample cohort (fhir_samples)" if source is None or str(source).strip() == "" \
        else f"`{source}`"
    if s["images"] == "link":
        where = ("The pixel files are **hard links** to the source's files (same inode: no pixel bytes copied); "
                 "the instance locations are the source's relative paths and resolve inside this folder.")
    else:
        where = ("The pixel files are **not** in this folder: instance locations are relative paths to the "
                 "source's files. Load with `load_cohort(folder, image_roots=[\"" + s["image_roots"][0] + "\"])`.")
    return f"""# Scaled benchmark cohort (not clinical data)

Written by `cds samples scale` (`cds.tooling.scale.scale_cohort`). **Benchmark data**: the cohort
{given} replicated **{s['factor']}** times (seed {s['seed']}), for load and throughput measurements only.
Never use it for statistics, model evaluation or anything that counts patients: every person appears
{s['factor']} times.

- Replica 0 (`<name>.json`) is the source content unchanged. Replica k (`<name>.r<k>.json`) has new,
  deterministic resource ids for every resource (uuid5 of seed, replica, type and id), every reference
  and `urn:uuid:` fullUrl rewritten to match, and new Patient identifier values.
- **Replicas share the images.** Every replica's ImagingStudy keeps the study, series and instance
  UIDs of the DICOM file it points at, so the same UIDs appear {s['factor']} times in this cohort.
  {where}
- The DICOM PatientID of a shared file is carried by each replica Patient as an identifier
  (system `{DICOM_PATIENT_ID_SYSTEM}`), so the image identity check
  (`cds.models.vouch.check_record` with `StudyFacts.patient_identifiers`) accepts a replica's own
  images and still refuses any other patient's.
- Counts: {s['n_patients']} patients, {s['n_resources']} resources, {s['n_imaging']} ImagingStudies,
  {s['n_files']} FHIR files. Licences and attribution of the source data (LICENSE, SOURCES.md) apply
  unchanged and are copied alongside.
"""


def patient_identifiers(folder: str | Path) -> dict[str, tuple[str, ...]]:
    """Patient id -> the DICOM PatientIDs it carries (identifier system :data:`DICOM_PATIENT_ID_SYSTEM`).

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "p.json").write_text(json.dumps({"resourceType": "Patient", "id": "r1", "identifier": [
    ...     {"system": DICOM_PATIENT_ID_SYSTEM, "value": "p1"}]}))
    >>> patient_identifiers(d)
    {'r1': ('p1',)}
    """
    from cds.sources.fhir_read import read_resources

    resources, _ = read_resources(folder)
    out: dict[str, tuple[str, ...]] = {}
    for rr in resources:
        res = rr.resource
        if res.get("resourceType") != "Patient" or not isinstance(res.get("id"), str):
            continue
        vals = tuple(str(i["value"]) for i in res.get("identifier") or [] if isinstance(i, dict)
                     and i.get("system") == DICOM_PATIENT_ID_SYSTEM and i.get("value"))
        if vals:
            out[res["id"]] = vals
    return out
