"""De-identification: pseudonyms for Findings, scrubbing free text, and the check that no identifier is left.

Pseudonymising (:func:`pseudonymise_finding`, keyed by a secret ``salt`` of at least
:data:`MIN_SALT_BYTES` bytes, see :func:`check_salt`): the patient id becomes a UUID from
HMAC-SHA256(salt, "patient|" + id), every DICOM UID ``2.25.<integer>`` from HMAC-SHA256(salt, "uid|" + uid);
mask paths, EHR input values and the record's ids and dates (ImagingStudy id, study start, EHR
Observation ids) are dropped. The same salt gives the same pseudonyms on every run; without the salt
they cannot be linked back.

Identifying strings (:func:`identifying_strings`): from the FHIR source, each Patient's id, identifier
values, names, birth date (and its other written forms), address (lines, city, postal code, text) and
telecom (phone numbers, e-mails), also of the Patient's contacts; ImagingStudy / Encounter ids and
identifiers, DICOM UIDs; phone numbers, e-mail addresses and street addresses found in any free text
of the source (notes, descriptions, narrative); with the cohort, the image file paths and the DICOM
headers' patient fields (PatientID, PatientName, PatientBirthDate, AccessionNumber, ...).

Scrubbing (:class:`Scrubber`, :func:`scrub_text`): text taken from the source that reaches a
de-identified output (failure messages, condition names, descriptions) has file paths, e-mails,
phone numbers, street addresses and every identifying string replaced by ``[... removed]``.

Checking (:func:`check_deidentified`): every file of a de-identified output (HTML, notebook, JSON,
CSV, PNG) is searched for the identifying strings, with HTML entities and JSON escapes undone, base64
blobs (embedded images, attachments) decoded and PNG text chunks (tEXt, zTXt, iTXt, eXIf) read; a hit
raises :class:`IdentifierLeak` naming the file and the kind, never the identifier.
:func:`check_figure` does the same for the text a matplotlib figure draws, before it is saved.

>>> from cds.finding import Finding
>>> salt = "a-secret-of-16-bytes-or-more"
>>> g = pseudonymise_finding(Finding("p1", "1.2.3", "s", "c", "d", "m", "1", imaging_study_id="is1"), salt)
>>> g.study_uid.startswith("2.25."), g.imaging_study_id, pseudonyms("p1", "1.2.3", salt) == (g.patient_id, g.study_uid)
(True, None, True)
>>> scrub_text("call 555-250-5611 or jo@example.org, /data/p1/x.dcm", {})
'call [phone removed] or [e-mail removed], [path removed]'
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import html
import json
import re
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cds.errors import CdsError, ParameterError
from cds.finding import Finding, Location

__all__ = ["MIN_SALT_BYTES", "check_salt", "pseudonymise_finding", "scrub_finding", "pseudonyms", "IdentifierLeak",
           "identifying_strings", "find_identifiers", "find_patterns", "scrub_text", "Scrubber", "check_figure",
           "figure_texts", "png_text", "output_files", "check_deidentified"]

#: The shortest secret salt accepted (bytes of its UTF-8 form): a short salt can be found by trying.
MIN_SALT_BYTES = 16


def check_salt(salt: str | None, where: str = "salt") -> str:
    """``salt`` when it is a secret of at least :data:`MIN_SALT_BYTES` bytes; else :class:`ParameterError`
    naming ``where`` (the message never holds the salt).

    >>> check_salt("0123456789abcdef")
    '0123456789abcdef'
    >>> check_salt("s3cret")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: salt: the de-identification salt is shorter than 16 bytes; use a random secret \
of at least 16 bytes (e.g. python -c "import secrets; print(secrets.token_hex(16))") and keep it
    """
    if not isinstance(salt, str) or not salt:
        raise ParameterError(where, "de-identification needs a secret salt of at least "
                                    f"{MIN_SALT_BYTES} bytes (an unsalted hash of a patient id can be reversed "
                                    "by trying every id)")
    if len(salt.encode("utf-8")) < MIN_SALT_BYTES:
        raise ParameterError(where, f"the de-identification salt is shorter than {MIN_SALT_BYTES} bytes; use a "
                                    f"random secret of at least {MIN_SALT_BYTES} bytes (e.g. python -c \"import "
                                    "secrets; print(secrets.token_hex(16))\") and keep it")
    return salt


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
    the same pseudonyms on every run. (The report refuses salts shorter than :data:`MIN_SALT_BYTES`
    before any work, :func:`check_salt`; here only an empty salt is refused.)

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


def scrub_finding(finding: Finding, scrub: Any) -> Finding:
    """A copy of a Finding with its free text passed through ``scrub`` (a :class:`Scrubber` or any
    str -> str): the explanation, the study's body site and every string inside ``extra``.

    >>> f = Finding("p1", "1.2", "s", "c", "d", "m", "1", explanation="seen for Louis", extra={"n": ["Louis", 2]})
    >>> g = scrub_finding(f, Scrubber({"name": {"Louis"}}))
    >>> g.explanation, g.extra
    ('seen for [name removed]', {'n': ['[name removed]', 2]})
    """
    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return scrub(x)
        if isinstance(x, Mapping):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(walk(v) for v in x)
        return x

    return replace(finding, explanation=None if finding.explanation is None else scrub(finding.explanation),
                   study_body_site=None if finding.study_body_site is None else scrub(finding.study_body_site),
                   extra=walk(dict(finding.extra)))


def pseudonyms(patient_id: str, study_uid: str, salt: str) -> tuple[str, str]:
    """The patient pseudonym and study UID pseudonym :func:`pseudonymise_finding` gives for this salt."""
    g = pseudonymise_finding(Finding(patient_id, study_uid, "", "", "", "", ""), salt)
    return g.patient_id, g.study_uid


# ---------------------------------------------------------------------------- patterns in free text
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
#: A phone number: +country code and digits, or (area) and digits, or 2 to 5 groups of digits separated
#: by one space, dot, slash or dash (a last extension -0 may be one digit); a whole token (no digit,
#: letter, dot or dash around it); 7 to 15 digits; not a date (checked in :func:`_phones`).
_PHONE = re.compile(r"(?<![\w.+/-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,5}\)[ .-]?)?\d{2,14}(?:[ ./-]\d{1,8}){0,4}"
                    r"|\(\d{1,5}\)[ .-]?\d{2,8}(?:[ ./-]\d{1,8}){0,3}"
                    r"|\d{2,5}(?:[ ./-]\d{2,8}){1,4}(?:-\d{1,4})?)(?![\w/-]|\.\d)")
_DATE_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./]\d{1,2}[./]\d{4}|\d{4}/\d{2}/\d{2}|\d{4}\.\d{2}\.\d{2}|\d{1,3}(?:\.\d{1,3}){1,2}")
_STREET_WORDS = ("Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Way|Boulevard|Blvd|Court|Ct|Place|Pl|Terrace|"
                 "Parkway|Pkwy|Route|Highway|Hwy|Square|Sq|Gateway|Fork|Glen|Ferry|Parade|Crescent|Close|Alley")
_STREET = re.compile(
    rf"(?<![\w-])\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][A-Za-z'.-]*\s+){{1,4}}(?:{_STREET_WORDS})\b\.?"
    r"(?:\s+(?:Unit|Suite|Apt\.?|Apartment|#)\s*\w+)?"
    r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm)\s+\d{1,4}[a-z]?\b")
_PATH = re.compile(r"(?:[A-Za-z]:\\|/)[^\s'\":,;()]+")


def _phones(text: str) -> Iterator[str]:
    for m in _PHONE.finditer(text):
        s = m.group(0)
        digits = re.sub(r"\D", "", s)
        if 7 <= len(digits) <= 15 and not _DATE_LIKE.fullmatch(s):
            yield s


def find_patterns(text: str) -> dict[str, set[str]]:
    """The e-mail addresses, phone numbers and street addresses written in ``text``.

    >>> r = find_patterns("Pt. called from +49 511 532-0 and (555) 250-5611; lives at 675 Kunde Route, a@b.de; "
    ...                   "seen 2020-04-01, UID 1.2.840.10008.5.1")
    >>> sorted(r["telecom"]), sorted(r["address"])
    (['(555) 250-5611', '+49 511 532-0', 'a@b.de'], ['675 Kunde Route'])
    """
    return {"telecom": {*(m.group(0) for m in _EMAIL.finditer(text)), *_phones(text)},
            "address": {m.group(0).strip() for m in _STREET.finditer(text)}}


# --------------------------------------------------------------------------------------- leak check
class IdentifierLeak(CdsError):
    """A de-identified output still contains an identifying string; the message names the file and the
    kind of identifier, never the identifier itself."""


#: Kinds of identifying strings and the shortest string of each kind that is searched for.
KINDS = {"patient_id": 4, "identifier": 6, "name": 3, "birth_date": 7, "address": 4, "telecom": 6,
         "free_text": 6, "resource_id": 4, "uid": 4, "path": 4}
#: Keys whose string values are never free text (codes, references, urls, ids).
_NOT_TEXT = frozenset({"resourceType", "id", "system", "code", "url", "reference", "uid", "valueUrl", "valueUri",
                       "valueCode", "fullUrl", "status", "version", "profile", "source", "gender", "use",
                       "valueCanonical", "lastUpdated", "versionId", "contentType", "language", "birthDate"})
_DATE_KEYS = ("date", "Date", "DateTime", "Instant", "Period", "start", "end", "issued", "started", "recorded")


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def _birth_forms(value: str) -> set[str]:
    """A birth date as FHIR writes it and in the other common forms (DICOM, German, US, with the English
    month name); year-only dates identify nobody and are left out.

    >>> sorted(_birth_forms("1961-03-14"))[:4], _birth_forms("1961")
    (['03/14/1961', '14 Mar 1961', '14 March 1961', '14.03.1961'], set())
    """
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2}).*", value)
    if m:
        y, mo, d = m.groups()
        forms = {f"{y}-{mo}-{d}", f"{y}{mo}{d}", f"{d}.{mo}.{y}", f"{mo}/{d}/{y}", f"{d}/{mo}/{y}"}
        if 1 <= int(mo) <= 12:
            for month in (_MONTHS[int(mo) - 1], _MONTHS[int(mo) - 1][:3]):
                forms |= {f"{int(d)} {month} {y}", f"{month} {int(d)}, {y}", f"{d} {month} {y}"}
        return forms
    return {value} if re.fullmatch(r"\d{4}-\d{2}", value) else set()


def _names(nm: Any) -> set[str]:
    if not isinstance(nm, dict):
        return set()
    parts = [*(nm.get("given") or []), nm.get("family")]
    out = {str(x) for x in parts if x}
    if nm.get("text"):
        out.add(str(nm["text"]))
    if nm.get("given") and nm.get("family"):
        out.add(" ".join([*map(str, nm["given"]), str(nm["family"])]))
    return out


def _address(ad: Any) -> set[str]:
    if not isinstance(ad, dict):
        return set()
    vals = [*(ad.get("line") or []), ad.get("city"), ad.get("district"), ad.get("postalCode"), ad.get("text")]
    return {str(v).strip() for v in vals if v and str(v).strip()}


def _telecom(tc: Any) -> set[str]:
    if not isinstance(tc, dict) or not tc.get("value"):
        return set()
    v = str(tc["value"]).strip()
    v = v.split(":", 1)[1] if v.lower().startswith(("mailto:", "tel:")) else v
    digits = re.sub(r"\D", "", v)
    return {v} | ({digits} if "@" not in v and len(digits) >= 7 else set())


def _strings(x: Any, key: str = "") -> Iterator[str]:
    """The free-text strings of a FHIR resource (codes, references, ids, urls and dates left out)."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _strings(v, k)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v, key)
    elif isinstance(x, str) and key == "data":  # an Attachment: base64 of (often) a text report
        yield from (t for t in _decode_blob(x) if not t.startswith("\x89PNG"))
    elif isinstance(x, str) and key not in _NOT_TEXT and not key.endswith(_DATE_KEYS):
        yield x


def _patient_strings(r: Mapping[str, Any], out: dict[str, set[str]]) -> None:
    if r.get("id"):
        out["patient_id"].add(str(r["id"]))
    for ident in r.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            out["identifier"].add(str(ident["value"]))
    people = [r, *(c for c in r.get("contact") or [] if isinstance(c, dict))]
    for p in people:
        for nm in (p.get("name") or []) if p is r else [p.get("name")]:
            out["name"].update(_names(nm))
        for ad in (p.get("address") or []) if p is r else [p.get("address")]:
            out["address"].update(_address(ad))
        for tc in p.get("telecom") or []:
            out["telecom"].update(_telecom(tc))
    if r.get("birthDate"):
        out["birth_date"].update(_birth_forms(str(r["birthDate"])))


def _dicom_strings(files: Iterable[str], out: dict[str, set[str]], limit: int = 20000) -> None:
    """Patient fields of the DICOM headers of local files (header only; unreadable files skipped)."""
    import os

    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        return
    tags = ["PatientID", "OtherPatientIDs", "PatientName", "PatientBirthDate", "AccessionNumber",
            "PatientAddress", "PatientTelephoneNumbers", "OtherPatientNames", "PatientMotherBirthName"]
    for n, f in enumerate(files):
        if n >= limit:
            break
        try:
            if not os.path.isfile(f) or os.path.islink(f):
                continue
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags, force=False)
        except Exception:  # noqa: BLE001 - any unreadable header: the models report it, nothing to collect
            continue
        for tag in tags:
            v = ds.get(tag)
            if v is None or v == "":
                continue
            values = list(v) if isinstance(v, pydicom.multival.MultiValue) else [v]
            for x in map(str, values):
                if tag in ("PatientName", "OtherPatientNames", "PatientMotherBirthName"):
                    parts = [p for p in re.split(r"[\^=]", x) if p.strip()]
                    out["name"].update(p.strip() for p in parts)
                    out["name"].add(" ".join(p.strip() for p in parts[:2][::-1]))
                elif tag == "PatientBirthDate" and re.fullmatch(r"\d{8}", x):
                    out["birth_date"].update(_birth_forms(f"{x[:4]}-{x[4:6]}-{x[6:]}"))
                elif tag == "PatientAddress":
                    out["address"].add(x)
                elif tag == "PatientTelephoneNumbers":
                    out["telecom"].add(x)
                elif tag == "PatientID":
                    out["patient_id"].add(x)
                else:
                    out["identifier"].add(x)


def identifying_strings(source: str | Path, cohort: Any = None, files: Iterable[str | Path] = ()
                        ) -> dict[str, set[str]]:
    """Strings that identify the cohort's patients, by kind, for scrubbing and leak checks.

    From the FHIR source: Patient ids, identifier values, names (each given / family name and the full
    name, also in capitals), birth dates (FHIR, DICOM, DD.MM.YYYY, MM/DD/YYYY and DD/MM/YYYY forms), addresses (lines,
    city, district, postal code, text) and telecom values (phone numbers also as digits only), the
    same of each Patient.contact; resource ids and identifiers of ImagingStudy and Encounter; DICOM
    UIDs of studies, series and instances; e-mails, phone numbers and street addresses written in any
    free text of any resource (``free_text``). From the cohort tables (when given): image file paths,
    FHIR file names and the DICOM headers' patient fields; the same for ``files`` (e.g. every file
    under the cohort folder). Strings shorter than :data:`KINDS` says are left out: they would match
    anywhere.
    """
    from cds.sources.fhir_read import read_resources, read_server

    src = str(source)
    resources, _ = read_server(src) if src.startswith(("http://", "https://")) else read_resources(src)
    out: dict[str, set[str]] = {k: set() for k in KINDS}
    for rr in resources:
        r = rr.resource
        rt = r.get("resourceType")
        if rt == "Patient":
            _patient_strings(r, out)
        elif rt in ("ImagingStudy", "Encounter"):
            if r.get("id"):
                out["resource_id"].add(str(r["id"]))
            for ident in r.get("identifier") or []:
                v = str((ident or {}).get("value") or "") if isinstance(ident, dict) else ""
                if v.startswith("urn:oid:"):
                    out["uid"].add(v[8:])
                elif v:
                    out["identifier"].add(v)
        if rt == "ImagingStudy":
            for se in r.get("series") or []:
                if not isinstance(se, dict):
                    continue
                if se.get("uid"):
                    out["uid"].add(str(se["uid"]))
                for inst in se.get("instance") or []:
                    if isinstance(inst, dict) and inst.get("uid"):
                        out["uid"].add(str(inst["uid"]))
        for text in _strings(r):
            for found in find_patterns(text).values():
                out["free_text"].update(found)
    if cohort is not None:
        img = cohort.imaging
        out["uid"].update(str(u) for u in img["study_uid"].dropna())
        out["uid"].update(str(u) for u in img["series_uid"].dropna())
        for col in ("pixel_location", "source"):
            out["path"].update(str(v) for v in img[col].dropna() if isinstance(v, str))
        out["path"].update(str(v) for v in cohort.patients["source"].dropna() if isinstance(v, str))
        for n in cohort.patients["name"].dropna():
            out["name"].add(str(n))
        dicoms = [x for locs in img["instance_locations"] for x in (locs or ()) if "://" not in str(x)]
        _dicom_strings(dict.fromkeys(map(str, dicoms)), out)
    extra = [str(f) for f in files]
    out["path"].update(extra)
    _dicom_strings((f for f in extra if f.lower().endswith((".dcm", ".dicom")) or "." not in Path(f).name), out)
    out["name"] |= {n.upper() for n in out["name"] if len(n) >= 4}  # as DICOM and many systems write names
    return {k: {s for s in v if len(s.strip()) >= KINDS.get(k, 4)} for k, v in out.items()}


@functools.lru_cache(maxsize=65536)
def _boundary_pattern(value: str, kind: str = "text") -> re.Pattern[str]:
    """``value`` as a whole token of its kind. Text (names, dates, addresses, phone numbers): no letter
    next to a letter end; no letter, digit or decimal point before a digit next to a digit end (a postal
    code is not found inside a hex id). Ids: no letter or digit on either side. UIDs: no digit or dot
    before, no (dot and) digit after.

    >>> [bool(_boundary_pattern("1234", "resource_id").search(t)) for t in ("2.25.912345", "Encounter/1234")]
    [False, True]
    >>> [bool(_boundary_pattern("38678").search(t)) for t in ("id 5fa38678c", "0.38678", "PLZ 38678.")]
    [False, False, True]
    """
    v = re.escape(value)
    if kind in _ID_KINDS:
        return re.compile(rf"(?<![A-Za-z0-9]){v}(?![A-Za-z0-9])")
    if kind == "uid":
        return re.compile(rf"(?<![\d.]){v}(?!\.?\d)")
    pre = r"(?<![A-Za-zÀ-ÿ])" if value[:1].isalpha() else r"(?<![A-Za-z0-9])(?<!\d\.)" if value[:1].isdigit() else ""
    post = r"(?![A-Za-zÀ-ÿ])" if value[-1:].isalpha() else r"(?![A-Za-z0-9])(?!\.\d)" if value[-1:].isdigit() else ""
    return re.compile(pre + v + post)


#: Kinds matched as whole tokens of text, as ids, as UIDs (the others, paths and the salt, anywhere).
_TEXT_KINDS = frozenset({"name", "birth_date", "address", "telecom", "free_text"})
_ID_KINDS = frozenset({"patient_id", "identifier", "resource_id"})


def _token_kind(kind: str) -> bool:
    return kind in _TEXT_KINDS or kind in _ID_KINDS or kind == "uid"


def _occurs(value: str, kind: str, text: str) -> bool:
    if value not in text:
        return False
    return bool(_boundary_pattern(value, kind).search(text)) if _token_kind(kind) else True


_RUN = re.compile(r"[A-Za-zÀ-ÿ]+|\d+")


def _runs(text: str) -> set[str]:
    """The maximal runs of letters and of digits in ``text``.

    >>> sorted(_runs("Louis204, 04a3-x"))
    ['04', '204', '3', 'Louis', 'a', 'x']
    """
    return set(_RUN.findall(text))


def _digits_of_phones(text: str) -> set[str]:
    return {re.sub(r"\D", "", s) for s in _phones(text)}


def find_identifiers(text: str, identifiers: Mapping[str, set[str]]) -> dict[str, int]:
    """How many distinct identifying strings of each kind occur in ``text`` (names, dates, addresses,
    phone numbers: whole tokens only; a phone number also when written with other separators).

    >>> find_identifiers("Patient Judson, born 1982-07-29", {"name": {"Judson", "Jud"}, "birth_date": {"1982-07-29"}})
    {'name': 1, 'birth_date': 1}
    >>> find_identifiers("call (555) 250 5611", {"telecom": {"555-250-5611", "5552505611"}})
    {'telecom': 1}
    """
    hits: dict[str, int] = {}
    phone_digits: set[str] | None = None
    runs = _runs(text) if len(text) > 20_000 else None  # a quick first look for long texts
    for kind, values in identifiers.items():
        found: set[str] = set()
        for v in values:
            # a whole-token value has each of its letter / digit runs as a whole run of the text
            maybe = runs is None or not _token_kind(kind) or _runs(v) <= runs
            if v and maybe and _occurs(v, kind, text):
                found.add(v)
            elif kind in ("telecom", "free_text") and v and "@" not in v:
                digits = re.sub(r"\D", "", v)
                if len(digits) >= 7:
                    phone_digits = _digits_of_phones(text) if phone_digits is None else phone_digits
                    if digits in phone_digits:
                        found.add(re.sub(r"\D", "", v))
        if kind in ("telecom", "free_text"):  # a number and its digits-only form are one identifier
            found = {re.sub(r"\D", "", v) if "@" not in v and len(re.sub(r"\D", "", v)) >= 7 else v for v in found}
        if found:
            hits[kind] = len(found)
    return hits


# ------------------------------------------------------------------------------------------ scrubbing
class Scrubber:
    """Replaces identifying strings and identifying patterns in text taken from the source (file paths too,
    unless ``paths=False``).

    >>> s = Scrubber({"name": {"Louis", "Erdman"}, "patient_id": {"76bc2bcd"}})
    >>> s("Louis Erdman (76bc2bcd-x) of Louisiana, mail louis@example.org")
    '[name removed] [name removed] ([id removed]-x) of Louisiana, mail [e-mail removed]'
    """

    _LABEL = {"name": "name", "birth_date": "date", "address": "address", "telecom": "contact",
              "free_text": "contact"}

    def __init__(self, identifiers: Mapping[str, set[str]], paths: bool = True) -> None:
        self.values = sorted(((v, k) for k, vs in identifiers.items() for v in vs if v),
                             key=lambda t: len(t[0]), reverse=True)
        self.paths = paths
        self._cache: dict[str, str] = {}

    def __call__(self, text: Any) -> str:
        s = "" if text is None else str(text)
        if s in self._cache:
            return self._cache[s]
        out = _PATH.sub("[path removed]", s) if self.paths else s
        out = _EMAIL.sub("[e-mail removed]", out)
        for p in sorted(set(_phones(out)), key=len, reverse=True):
            out = _boundary_pattern(p, "telecom").sub("[phone removed]", out)
        out = _STREET.sub("[address removed]", out)
        for v, kind in self.values:
            if _occurs(v, kind, out):
                label = f"[{self._LABEL.get(kind, 'id')} removed]"
                out = _boundary_pattern(v, kind).sub(label, out) if _token_kind(kind) else out.replace(v, label)
        if len(self._cache) < 100_000:
            self._cache[s] = out
        return out


def scrub_text(text: Any, identifiers: Mapping[str, set[str]]) -> str:
    """``text`` with file paths, e-mails, phone numbers, street addresses and the given identifying strings
    replaced (see :class:`Scrubber`; build one Scrubber for many texts)."""
    return Scrubber(identifiers)(text)


# ------------------------------------------------------------------------------------------- figures
def figure_texts(fig: Any) -> list[str]:
    """Every string a matplotlib figure draws (titles, labels, tick labels, legends, annotations, table
    cells) and the labels of its artists; the figure is drawn first so tick labels exist."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    texts: list[str] = []
    for a in fig.findobj():
        if hasattr(a, "get_text"):
            t = a.get_text()
            if t:
                texts.append(str(t))
        lab = a.get_label() if hasattr(a, "get_label") else ""
        if lab and not str(lab).startswith("_"):
            texts.append(str(lab))
    return texts


def check_figure(fig: Any, identifiers: Mapping[str, set[str]], name: str) -> None:
    """Raise :class:`IdentifierLeak` (naming the figure and the kinds) when the text the figure draws holds
    an identifying string, an e-mail address, a phone number or a street address."""
    text = "\n".join(figure_texts(fig))
    hits = find_identifiers(text, identifiers)
    for kind, found in find_patterns(text).items():
        if found:
            hits[f"{kind} pattern"] = len(found)
    if hits:
        raise IdentifierLeak(f"figure {name}: the data drawn still holds identifying strings ("
                             + ", ".join(f"{n} {k}" for k, n in sorted(hits.items())) + "); it was not saved")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes) -> list[str]:
    """The text a PNG carries besides its pixels: tEXt, zTXt and iTXt chunks (keyword and text) and eXIf.

    >>> import io
    >>> from PIL import Image, PngImagePlugin
    >>> info = PngImagePlugin.PngInfo(); info.add_text("Author", "Louis Erdman"); info.add_itxt("C", "ü", zip=True)
    >>> buf = io.BytesIO(); Image.new("L", (2, 2)).save(buf, "PNG", pnginfo=info)
    >>> png_text(buf.getvalue())
    ['Author', 'Louis Erdman', 'C', 'ü']
    """
    out: list[str] = []
    if not data.startswith(_PNG_SIGNATURE):
        return out
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if ctype == b"tEXt":
                k, _, v = body.partition(b"\0")
                out += [k.decode("latin-1"), v.decode("latin-1")]
            elif ctype == b"zTXt":
                k, _, rest = body.partition(b"\0")
                out += [k.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")]
            elif ctype == b"iTXt":
                k, _, rest = body.partition(b"\0")
                flag, rest = rest[0], rest[2:]
                lang, _, rest = rest.partition(b"\0")
                tkey, _, txt = rest.partition(b"\0")
                txt = zlib.decompress(txt) if flag else txt
                out += [k.decode("latin-1"), *(x.decode("utf-8", "replace") for x in (lang, tkey) if x),
                        txt.decode("utf-8", "replace")]
            elif ctype == b"eXIf":
                out.append(body.decode("latin-1"))
            elif ctype == b"IEND":
                break
        except (zlib.error, IndexError, UnicodeDecodeError):
            out.append(body.decode("latin-1"))
    return out


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")
_DATA_URI = re.compile(r"data:[\w/.+-]*(?:;[\w=.-]+)*;base64,([A-Za-z0-9+/]+={0,2})")


def _decode_blob(blob: str) -> list[str]:
    """Text inside a base64 blob: a PNG's text chunks, or the blob as UTF-8 text; nothing for other bytes."""
    try:
        raw = base64.b64decode(re.sub(r"\s", "", blob) + "=" * (-len(re.sub(r"\s", "", blob)) % 4), validate=False)
    except (ValueError, binascii.Error):
        return []
    if raw.startswith(_PNG_SIGNATURE):
        return png_text(raw)
    try:
        return [raw.decode("utf-8")]
    except UnicodeDecodeError:
        return []


def _json_strings(x: Any) -> Iterator[str]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield str(k)
            yield from _json_strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _json_strings(v)
    elif isinstance(x, str):
        yield x


def _scan_text(path: Path) -> str:
    """All the text a file carries: its text, HTML entities undone, JSON strings unescaped, base64 blobs
    decoded (text, or a PNG's text chunks); a PNG file's text chunks; other binary files as Latin-1."""
    data = path.read_bytes()
    if data.startswith(_PNG_SIGNATURE):
        return "\n".join(png_text(data))
    raw = data.decode("utf-8", errors="replace")
    parts = [_BASE64_RUN.sub(" ", raw)]
    parts += [t for m in _BASE64_RUN.finditer(raw) for t in _decode_blob(m.group(0))]
    parts += [t for m in _DATA_URI.finditer(raw) if len(m.group(1)) < 200 for t in _decode_blob(m.group(1))]
    if path.suffix.lower() in (".json", ".ipynb", ".ndjson"):
        try:
            docs = [json.loads(raw)] if path.suffix.lower() != ".ndjson" else \
                [json.loads(x) for x in raw.splitlines() if x.strip()]
        except ValueError:
            docs = []
        for s in (s for d in docs for s in _json_strings(d)):
            if len(s) >= 40 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", s):  # e.g. a notebook's image/png output
                parts += _decode_blob(s)
            parts.append(_BASE64_RUN.sub(" ", s))
    text = "\n".join(parts)
    return text + "\n" + html.unescape(text)


def output_files(out_dir: str | Path) -> list[Path]:
    """Every regular file under an output folder (symbolic links not followed), sorted."""
    return sorted(p for p in Path(out_dir).rglob("*") if p.is_file() and not p.is_symlink())


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
