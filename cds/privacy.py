"""De-identification: pseudonyms for Findings, and the check that no identifier is left in an output.

Pseudonymising (:func:`pseudonymise_finding`, keyed by a secret ``salt``): the patient id becomes a
UUID from HMAC-SHA256(salt, "patient|" + id), every DICOM UID ``2.25.<integer>`` from
HMAC-SHA256(salt, "uid|" + uid); mask paths, EHR input values and the record's ids and dates
(ImagingStudy id, study start, EHR Observation ids) are dropped. The same salt gives the same
pseudonyms on every run; without the salt they cannot be linked back.

Checking (:func:`check_deidentified`): every file of a de-identified output is searched for the
cohort's identifying strings (:func:`identifying_strings`: patient ids, identifier values, names,
birth dates, ImagingStudy / Encounter ids, DICOM UIDs, file paths), base64 attachments decoded; a
hit raises :class:`IdentifierLeak` naming the file and the kind, never the identifier.

>>> from cds.finding import Finding
>>> g = pseudonymise_finding(Finding("p1", "1.2.3", "s", "c", "d", "m", "1", imaging_study_id="is1"), "k")
>>> g.study_uid.startswith("2.25."), g.imaging_study_id, pseudonyms("p1", "1.2.3", "k") == (g.patient_id, g.study_uid)
(True, None, True)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cds.errors import CdsError, ParameterError
from cds.finding import Finding, Location

__all__ = ["pseudonymise_finding", "pseudonyms", "IdentifierLeak", "identifying_strings", "find_identifiers",
           "check_deidentified"]


# ------------------------------------------------------------------------------------ pseudonymising
def _hmac(salt: str, value: str) -> bytes:
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).digest()


def _pseudo_patient(patient_id: str, salt: str) -> str:
    return str(uuid.UUID(bytes=_hmac(salt, "patient|" + patient_id)[:16], version=4))


def _pseudo_uid(uid: str | None, salt: str) -> str | None:
    if not uid:
        return uid
    return "2.25." + str(int.from_bytes(_hmac(salt, "uid|" + uid)[:16], "big"))


def pseudonymise_finding(finding: Finding, salt: str) -> Finding:
    """A copy of a Finding with pseudonymous patient id and DICOM UIDs (keyed by ``salt``).

    The patient id becomes a UUID from HMAC-SHA256(salt, id); UIDs become ``2.25.<integer>``
    (the DICOM form for UUID-derived UIDs) from HMAC-SHA256(salt, uid); ``Location.ref`` (a file
    path) is dropped and the EHR input values are replaced by their names only. The same salt gives
    the same pseudonyms on every run.

    >>> f = Finding("p1", "1.2.3", "s", "c", "d", "m", "1", probability=0.5)
    >>> g = pseudonymise_finding(f, "secret")
    >>> g.patient_id != "p1" and g.study_uid.startswith("2.25.")
    True
    >>> g == pseudonymise_finding(f, "secret") and g != pseudonymise_finding(f, "other")
    True
    """
    if not salt:
        raise ParameterError("salt", "de-identification needs a non-empty secret salt (an unsalted hash "
                                     "of a patient id can be reversed by trying every id)")
    loc = finding.location
    if loc is not None:
        loc = Location(loc.kind, loc.coords, None, loc.frame, _pseudo_uid(loc.sop_instance_uid, salt))
    return replace(
        finding, patient_id=_pseudo_patient(finding.patient_id, salt),
        study_uid=_pseudo_uid(finding.study_uid, salt) or "", series_uid=_pseudo_uid(finding.series_uid, salt),
        instance_uids=tuple(_pseudo_uid(u, salt) or "" for u in finding.instance_uids), location=loc,
        ehr_inputs={k: "(removed)" for k in finding.ehr_inputs},
        imaging_study_id=None, study_started=None, ehr_observation_ids=(),  # record ids and dates: dropped
    )


def pseudonyms(patient_id: str, study_uid: str, salt: str) -> tuple[str, str]:
    """The patient pseudonym and study UID pseudonym :func:`pseudonymise_finding` gives for this salt."""
    g = pseudonymise_finding(Finding(patient_id, study_uid, "", "", "", "", ""), salt)
    return g.patient_id, g.study_uid


# --------------------------------------------------------------------------------------- leak check
class IdentifierLeak(CdsError):
    """A de-identified output still contains an identifying string; the message names the file and the
    kind of identifier, never the identifier itself."""


def identifying_strings(source: str | Path, cohort: Any = None) -> dict[str, set[str]]:
    """Strings that identify the cohort's patients, by kind, for scrubbing and leak checks.

    From the FHIR source: Patient ids, identifier values, names (each given / family name and the full
    name), birth dates; resource ids of ImagingStudy and Encounter; DICOM UIDs of studies, series
    and instances. From the cohort tables (when given): image file paths and FHIR file names.
    Strings shorter than 4 characters (6 for identifier values) are left out: they would match anywhere.
    """
    from cds.sources.fhir_read import read_resources, read_server

    src = str(source)
    resources, _ = read_server(src) if src.startswith(("http://", "https://")) else read_resources(src)
    out: dict[str, set[str]] = {k: set() for k in ("patient_id", "identifier", "name", "birth_date", "resource_id",
                                                   "uid", "path")}
    for rr in resources:
        r = rr.resource
        rt = r.get("resourceType")
        if rt == "Patient":
            if r.get("id"):
                out["patient_id"].add(str(r["id"]))
            for ident in r.get("identifier") or []:
                if isinstance(ident, dict) and ident.get("value"):
                    out["identifier"].add(str(ident["value"]))
            for nm in r.get("name") or []:
                if not isinstance(nm, dict):
                    continue
                parts = [*(nm.get("given") or []), nm.get("family")]
                out["name"].update(str(x) for x in parts if x)
                if nm.get("text"):
                    out["name"].add(str(nm["text"]))
            if r.get("birthDate"):
                out["birth_date"].add(str(r["birthDate"]))
        elif rt in ("ImagingStudy", "Encounter") and r.get("id"):
            out["resource_id"].add(str(r["id"]))
        if rt == "ImagingStudy":
            for ident in r.get("identifier") or []:
                v = str((ident or {}).get("value") or "")
                if v.startswith("urn:oid:"):
                    out["uid"].add(v[8:])
            for se in r.get("series") or []:
                if se.get("uid"):
                    out["uid"].add(str(se["uid"]))
                for inst in se.get("instance") or []:
                    if inst.get("uid"):
                        out["uid"].add(str(inst["uid"]))
    if cohort is not None:
        img = cohort.imaging
        out["uid"].update(str(u) for u in img["study_uid"].dropna())
        out["uid"].update(str(u) for u in img["series_uid"].dropna())
        for col in ("pixel_location", "source"):
            out["path"].update(str(v) for v in img[col].dropna() if isinstance(v, str))
        for n in cohort.patients["name"].dropna():
            out["name"].add(str(n))
    minimum = {"identifier": 6}
    return {k: {s for s in v if len(s) >= minimum.get(k, 4)} for k, v in out.items()}


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


def _scan_text(path: Path) -> str:
    """A file's text with base64 runs (embedded images, attachments) decoded where they are text, or dropped."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    decoded: list[str] = []

    def repl(m: re.Match[str]) -> str:
        blob = m.group(0)
        try:
            txt = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return " "
        decoded.append(txt)
        return " "

    return _BASE64_RUN.sub(repl, raw) + "\n" + "\n".join(decoded)


def find_identifiers(text: str, identifiers: Mapping[str, set[str]]) -> dict[str, int]:
    """How many distinct identifying strings of each kind occur in ``text`` (names: whole words only).

    >>> find_identifiers("Patient Judson, born 1982-07-29", {"name": {"Judson", "Jud"}, "birth_date": {"1982-07-29"}})
    {'name': 1, 'birth_date': 1}
    """
    hits: dict[str, int] = {}
    for kind, values in identifiers.items():
        n = 0
        for v in values:
            if v not in text:
                continue
            if kind == "name" and not re.search(rf"(?<![A-Za-z]){re.escape(v)}(?![A-Za-z])", text):
                continue
            n += 1
        if n:
            hits[kind] = n
    return hits


def check_deidentified(paths: Sequence[str | Path], identifiers: Mapping[str, set[str]],
                       remove: bool = False) -> None:
    """Raise :class:`IdentifierLeak` when any file holds an identifying string (optionally removing the
    leaking files first). The message names the files and the kinds, never the identifiers."""
    leaks = []
    for p in map(Path, paths):
        if not p.is_file():
            continue
        hits = find_identifiers(_scan_text(p), identifiers)
        if hits:
            leaks.append((p, hits))
    if not leaks:
        return
    if remove:
        for p, _ in leaks:
            p.unlink()
    detail = "; ".join(f"{p.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(h.items())) for p, h in leaks)
    raise IdentifierLeak(f"de-identified output still contains identifying strings ({detail})"
                         + ("; those files were removed" if remove else ""))
