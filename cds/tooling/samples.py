"""Build the embedded sample cohort ``fhir_samples/`` from public source folders, deterministically.

Two sources, each a folder laid out like the team's ``shared/data`` copies:

* **Synthea** (``synthea-fhir-r4``: ``bundles/*.json``, ``LICENSE``): a handful of synthetic
  patients chosen by a rule over flags derived from each bundle's own Conditions and
  ImagingStudies (myocardial infarction, heart failure, lung cancer, a chest CR/DX study), with
  billing resources (Claim, ExplanationOfBenefit, ...) removed. One R4 transaction Bundle per
  patient in ``synthea/<patient id>.json``.
* **Hannover COVID-19 CXR** (``hannover-covid19-cxr``: ``data.csv``, ``png/<image_id>.png``,
  ``LICENSE``): real de-identified patients. One R4 transaction Bundle per patient in
  ``hannover/<patient_id>.json`` (Patient, hospital and ICU Encounters, one ImagingStudy per
  radiograph, one Observation per distinct lab value) and the radiographs as DICOM files in
  ``dicom/hannover/<patient_id>/<image_id>.dcm`` (longest side 512, JPEG-LS).

Everything written is a pure function of the inputs: ids and DICOM UIDs are hashes of source ids,
no clock or random number is read, JSON is written in a fixed order. Running twice gives
byte-identical folders. ``SOURCES.md`` (origin, licence, attribution, changes, the rebuild
command) is written by the same code.

Examples
--------
>>> exam_day(date(2020, 4, 1), admission_offset=-3)
datetime.date(2020, 4, 4)
>>> lab_value("-inf"), lab_value("6.0"), lab_value("")
('-inf', 6.0, None)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from cds.codes import (
    DATA_ABSENT_REASON,
    DCM,
    DICOM_UID_SYSTEM,
    INSTANCE_LOCATION_URL,
    LOINC,
    OBS_CATEGORY,
    SNOMED,
    UCUM,
    URI_SYSTEM,
    V3_ACT_CODE,
    V3_INTERPRETATION,
    VIEW_POSITION_URL,
)
from cds.errors import FhirInputError, ImageReadError, ParameterError

__all__ = [
    "INSTANCE_LOCATION_URL",
    "VIEW_POSITION_URL",
    "HANNOVER_ANCHOR",
    "LABS",
    "SYNTHEA_KEEP_TYPES",
    "build_sample_cohort",
    "synthea_flags",
    "trim_synthea_bundle",
    "select_synthea",
    "hannover_bundles",
    "hannover_uids",
    "write_hannover_dicom",
    "exam_day",
    "lab_value",
    "main",
]

log = logging.getLogger(__name__)

# INSTANCE_LOCATION_URL (where an ImagingStudy instance's pixels are) and VIEW_POSITION_URL (the series'
# DICOM View Position) come from cds.codes, the one place of the package's URLs.
#: Every Hannover patient's hospital admission day. The source only gives day offsets.
HANNOVER_ANCHOR = date(2020, 4, 1)

HANNOVER_SOURCE_URL = "https://github.com/ml-workgroup/covid-19-image-repository"
HANNOVER_DOI = "10.6084/m9.figshare.12275009"
#: Root of the UUID namespace for Hannover ``fullUrl``s (``urn:uuid:<uuid5>``).
_FULLURL_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://cds.example.org/fhir_samples")

# --- terminology (code systems from cds.codes) -------------------------------------------------
CHEST = {"system": SNOMED, "code": "51185008", "display": "Thoracic structure"}

MODALITY_DISPLAY = {"CR": "Computed Radiography", "DX": "Digital Radiography"}
#: SOP class per modality. DX rows use Secondary Capture: the DX IOD needs type 1 attributes the
#: source does not give (Imager Pixel Spacing, Burned In Annotation, Patient Orientation, ...);
#: inventing them would be wrong.
SOP_CLASS = {
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "CR Image Storage"),
    "DX": ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
}
VIEW_POSITIONS = {"ap": "AP", "pa": "PA", "ll": "LL", "lat": "LL", "rl": "RL"}
SEX = {"m": ("male", "M"), "f": ("female", "F"), "w": ("female", "F")}


@dataclass(frozen=True)
class LabSpec:
    """How one lab column pair (``<column>_offset``, ``<column>_val``) of ``data.csv`` maps to FHIR."""

    key: str
    columns: tuple[str, ...]
    label: str
    loinc: str
    display: str
    unit: str
    ucum: str
    ref_low: float | None = None
    ref_high: float | None = None
    ref_text: str | None = None


#: The eight lab values of ``data.csv``. LOINC codes checked (check digit and display); reference
#: intervals are those of the source README ("comment / reference interval").
LABS: tuple[LabSpec, ...] = (
    LabSpec("crp", ("crp",), "CRP", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma",
            "mg/L", "mg/L", None, 5.0, "<= 5 mg/l (source reference interval)"),
    LabSpec("ldh", ("ldh",), "LDH", "2532-0",
            "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", "U/L", None, 248.0, "< 248 U/l (source reference interval)"),
    LabSpec("d-dimer", ("d-dimer",), "D-dimer", "48065-7",
            "Fibrin D-dimer FEU [Mass/volume] in Platelet poor plasma",
            "mg/L FEU", "mg/L", 0.0, 0.5, "0 - 0.5 mg/l (source reference interval)"),
    LabSpec("factor-xiii", ("factor_xiii", "factor_xii"), "Factor XIII", "27815-0",
            "Coagulation factor XIII activity actual/normal in Platelet poor plasma by Chromogenic method",
            "%", "%", 70.0, 140.0, "70 - 140 % (source reference interval)"),
    LabSpec("lymphocytes", ("lymphocytes",), "Lymphocytes", "731-0",
            "Lymphocytes [#/volume] in Blood by Automated count",
            "10^3/uL", "10*3/uL", 1.1, 4.0, "1.1 - 4.0 Tsd/ul (source reference interval)"),
    LabSpec("neutrophils", ("neutrophils",), "Neutrophils", "751-8",
            "Neutrophils [#/volume] in Blood by Automated count",
            "10^3/uL", "10*3/uL", 1.5, 7.7, "1.5 - 7.7 Tsd/ul (source reference interval)"),
    LabSpec("pco2", ("pco2",), "pCO2", "11557-6", "Carbon dioxide [Partial pressure] in Blood",
            "mmHg", "mm[Hg]"),
    LabSpec("po2", ("po2",), "pO2", "11556-8", "Oxygen [Partial pressure] in Blood", "mmHg", "mm[Hg]"),
)

HANNOVER_REQUIRED_COLUMNS = (
    "patient_id", "image_id", "sex", "admission_offset", "icu_admission_offset", "icu_release_offset",
    "death_offset", "modality", "projection",
)

# --- Synthea ----------------------------------------------------------------------------------
#: Resource types kept in the trimmed Synthea bundles. Organization, Practitioner and Goal stay
#: because kept Encounters, MedicationRequests and CarePlans reference them.
SYNTHEA_KEEP_TYPES = frozenset({
    "Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Medication",
    "MedicationAdministration", "ImagingStudy", "Procedure", "DiagnosticReport", "AllergyIntolerance",
    "Immunization", "CarePlan", "CareTeam", "Goal", "Organization", "Practitioner", "PractitionerRole",
    "Location", "Device",
})
#: SNOMED CT codes of Conditions that set a flag (the code is stable across Synthea versions; the
#: display text is not).
SYNTHEA_CONDITION_FLAGS: dict[str, frozenset[str]] = {
    "myocardial_infarction": frozenset({"22298006", "399211009", "401303003", "401314000"}),
    "heart_failure": frozenset({"88805009", "84114007", "42343007", "703272007", "446221000"}),
    "lung_cancer": frozenset({"254637007", "424132000", "254632001", "67811000119102", "93880001",
                              "363358000"}),
}
#: Body sites counted as chest for the chest-radiograph flag (SNOMED CT), or words in the display.
CHEST_SITE_CODES = frozenset({"51185008", "302551006", "43799004"})
CHEST_SITE_WORDS = ("chest", "thora")
#: Flags in the order the selection rule satisfies them (rarest first).
SYNTHEA_FLAG_ORDER = ("lung_cancer", "myocardial_infarction", "heart_failure", "chest_xray")

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


# ============================================================================================
# small helpers
# ============================================================================================

def _dumps(obj: Any) -> bytes:
    """The one JSON serialisation used for every file: insertion order, indent 1, UTF-8, final newline."""
    return (json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)


def _full_url(source: str, rtype: str, rid: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_FULLURL_NS, f'{source}/{rtype}/{rid}')}"


def _entry(resource: dict[str, Any], full_url: str) -> dict[str, Any]:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def _check_id(value: str, where: str) -> str:
    if not _FHIR_ID.match(value):
        raise FhirInputError(where, f"id {value!r} is not a valid FHIR id ([A-Za-z0-9-.], 1-64 characters)")
    return value


def exam_day(anchor: date, admission_offset: int) -> date:
    """The exam day of a ``data.csv`` row: the admission day is ``anchor``; offsets are relative to the exam.

    ``admission_offset`` = admission day - exam day, so exam day = anchor - admission_offset.

    >>> exam_day(date(2020, 4, 1), 0), exam_day(date(2020, 4, 1), 4)
    (datetime.date(2020, 4, 1), datetime.date(2020, 3, 28))
    """
    return anchor - timedelta(days=admission_offset)


def _offset_days(value: str, where: str) -> int | None:
    """A day offset from ``data.csv`` (``''`` = no event). Non-integral offsets are rounded (and logged)."""
    value = value.strip()
    if value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        raise FhirInputError(where, f"offset {value!r} is not a number of days") from None
    if not math.isfinite(x):
        raise FhirInputError(where, f"offset {value!r} is not a finite number of days")
    if x != round(x):
        log.warning("%s: offset %s is not a whole number of days; rounded", where, value)
    return int(round(x))


def lab_value(value: str) -> float | str | None:
    """A lab value from ``data.csv``: a float, ``'-inf'``/``'inf'`` (beyond the detection limit) or None.

    >>> lab_value("inf"), lab_value("0.6")
    ('inf', 0.6)
    """
    value = value.strip()
    if value == "":
        return None
    x = float(value)
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    if math.isnan(x):
        return None
    return x


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# ============================================================================================
# Synthea
# ============================================================================================

def synthea_flags(bundle: dict[str, Any]) -> frozenset[str]:
    """Flags of one Synthea bundle, derived from its own Conditions and ImagingStudies.

    ``chest_xray`` = an ImagingStudy series with modality CR or DX on a chest/thoracic body site.

    >>> synthea_flags({"entry": [{"resource": {"resourceType": "Condition",
    ...     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]}}}]})
    frozenset({'myocardial_infarction'})
    """
    flags: set[str] = set()
    for entry in bundle.get("entry") or []:
        res = entry.get("resource") or {}
        rtype = res.get("resourceType")
        if rtype == "Condition":
            status = ((res.get("verificationStatus") or {}).get("coding") or [{}])[0].get("code")
            if status in ("refuted", "entered-in-error"):
                continue
            codes = {c.get("code") for c in (res.get("code") or {}).get("coding") or []
                     if c.get("system") in (SNOMED, None)}
            for flag, flag_codes in SYNTHEA_CONDITION_FLAGS.items():
                if codes & flag_codes:
                    flags.add(flag)
        elif rtype == "ImagingStudy":
            for series in res.get("series") or []:
                modality = (series.get("modality") or {}).get("code")
                site = series.get("bodySite") or {}
                display = str(site.get("display") or "").lower()
                chest = site.get("code") in CHEST_SITE_CODES or any(w in display for w in CHEST_SITE_WORDS)
                if modality in ("CR", "DX") and chest:
                    flags.add("chest_xray")
    return frozenset(flags)


def _references(obj: Any) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                yield v
            elif k != "contained":
                yield from _references(v)
    elif isinstance(obj, list):
        for x in obj:
            yield from _references(x)


def trim_synthea_bundle(bundle: dict[str, Any], where: str,
                        keep_types: Collection[str] = SYNTHEA_KEEP_TYPES) -> tuple[dict[str, Any], Counter[str]]:
    """Drop resources whose type is not in ``keep_types``; make requests ``PUT Type/id``.

    Raises :class:`~cds.errors.FhirInputError` (naming ``where`` and the resource) if a kept resource
    references a removed one. Returns ``(trimmed bundle, counts of removed types)``.

    >>> b = {"resourceType": "Bundle", "type": "transaction", "entry": [
    ...   {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
    ...   {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Claim", "id": "c",
    ...    "patient": {"reference": "urn:uuid:p"}}}]}
    >>> t, removed = trim_synthea_bundle(b, "b.json")
    >>> [e["request"] for e in t["entry"]], dict(removed)
    ([{'method': 'PUT', 'url': 'Patient/p'}], {'Claim': 1})
    """
    kept: list[dict[str, Any]] = []
    removed: Counter[str] = Counter()
    removed_refs: set[str] = set()
    for i, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource")
        if not isinstance(res, dict) or "resourceType" not in res:
            raise FhirInputError(where, f"entry {i} has no resource")
        rtype, rid = res["resourceType"], res.get("id")
        if not isinstance(rid, str):
            raise FhirInputError(where, f"entry {i} ({rtype}) has no id")
        if rtype in keep_types:
            new = {k: v for k, v in entry.items() if k not in ("request", "response", "search")}
            new["request"] = {"method": "PUT", "url": f"{rtype}/{rid}"}
            kept.append(new)
        else:
            removed[rtype] += 1
            removed_refs.update({f"{rtype}/{rid}", f"urn:uuid:{rid}"})
            if entry.get("fullUrl"):
                removed_refs.add(entry["fullUrl"])
    for entry in kept:
        res = entry["resource"]
        for ref in _references(res):
            if ref in removed_refs or ref.split("/_history")[0] in removed_refs:
                raise FhirInputError(
                    where, f"{res['resourceType']}/{res['id']} references {ref!r}, a removed resource")
    out = {k: v for k, v in bundle.items() if k != "entry"}
    out["type"] = "transaction"
    out["entry"] = kept
    return out, removed


@dataclass(frozen=True)
class SyntheaCandidate:
    """One source bundle, its flags and the size of its trimmed output."""

    patient_id: str
    path: Path
    flags: frozenset[str]
    n_entries: int
    n_kept: int
    size: int


def select_synthea(candidates: Sequence[SyntheaCandidate], per_flag: int = 2,
                   n_controls: int = 1) -> list[tuple[SyntheaCandidate, str]]:
    """The selection rule: cover every flag ``per_flag`` times with few, small bundles, plus controls.

    Greedy set cover: repeatedly take the candidate that covers the most flags still needed
    (ties: smaller trimmed size, then patient id), until each flag in
    :data:`SYNTHEA_FLAG_ORDER` is held by ``per_flag`` selected patients or no candidate helps.
    Then add the ``n_controls`` smallest bundles without any flag. Returns ``(candidate, reason)``.

    >>> c = [SyntheaCandidate("a", Path("a"), frozenset({"lung_cancer", "heart_failure"}), 1, 1, 900),
    ...      SyntheaCandidate("b", Path("b"), frozenset({"heart_failure"}), 1, 1, 100),
    ...      SyntheaCandidate("c", Path("c"), frozenset(), 1, 1, 50)]
    >>> [(x.patient_id, why) for x, why in select_synthea(c, per_flag=1)]
    [('a', 'heart_failure, lung_cancer'), ('c', 'control (no flag)')]
    """
    if per_flag < 0 or n_controls < 0:
        raise ParameterError("per_flag/n_controls", "must be >= 0")
    need = {f: per_flag for f in SYNTHEA_FLAG_ORDER}
    chosen: list[tuple[SyntheaCandidate, str]] = []
    pool = sorted(candidates, key=lambda c: (c.size, c.patient_id))
    while any(need.values()):
        best, best_cover = None, 0
        for c in pool:
            cover = sum(1 for f in c.flags if need.get(f, 0) > 0)
            if cover > best_cover:
                best, best_cover = c, cover
        if best is None:
            break
        helped = sorted(f for f in best.flags if need.get(f, 0) > 0)
        for f in helped:
            need[f] -= 1
        chosen.append((best, ", ".join(helped)))
        pool.remove(best)
    controls = [c for c in pool if not c.flags][:n_controls]
    chosen.extend((c, "control (no flag)") for c in controls)
    missing = [f for f, n in need.items() if n > 0]
    if missing:
        log.warning("Synthea: not enough bundles for flags %s", ", ".join(missing))
    return chosen


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FhirInputError(str(path), f"cannot read JSON: {exc}") from None


def _synthea_candidates(synthea_dir: Path) -> list[tuple[SyntheaCandidate, dict[str, Any], Counter[str]]]:
    bundle_dir = synthea_dir / "bundles"
    files = sorted(bundle_dir.glob("*.json"))
    if not files:
        raise FhirInputError(str(bundle_dir), "no *.json bundles (expected a folder laid out like "
                                              "shared/data/synthea-fhir-r4)")
    out = []
    seen: dict[str, Path] = {}
    for path in files:
        bundle = _load_json(path)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirInputError(str(path), "not a FHIR Bundle")
        patients = [e["resource"] for e in bundle.get("entry") or []
                    if (e.get("resource") or {}).get("resourceType") == "Patient"]
        if len(patients) != 1:
            raise FhirInputError(str(path), f"expected one Patient, found {len(patients)}")
        pid = _check_id(str(patients[0].get("id")), str(path))
        if pid in seen:
            raise FhirInputError(str(path), f"Patient id {pid} also in {seen[pid]}")
        seen[pid] = path
        trimmed, removed = trim_synthea_bundle(bundle, str(path))
        cand = SyntheaCandidate(pid, path, synthea_flags(bundle), len(bundle.get("entry") or []),
                                len(trimmed["entry"]), len(_dumps(trimmed)))
        out.append((cand, trimmed, removed))
    return out


# ============================================================================================
# Hannover: rows -> FHIR
# ============================================================================================

def _read_hannover_csv(hannover_dir: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Rows of ``data.csv`` and the column chosen for each lab (``lab key -> column prefix``)."""
    path = hannover_dir / "data.csv"
    if not path.is_file():
        raise FhirInputError(str(path), "missing (expected a folder laid out like shared/data/hannover-covid19-cxr)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in HANNOVER_REQUIRED_COLUMNS if c not in header]
    lab_columns: dict[str, str] = {}
    for spec in LABS:
        col = next((c for c in spec.columns if f"{c}_val" in header and f"{c}_offset" in header), None)
        if col is None:
            missing.append(f"{spec.columns[0]}_val/{spec.columns[0]}_offset")
        else:
            lab_columns[spec.key] = col
    if missing:
        raise FhirInputError(str(path), f"missing column(s): {', '.join(missing)}")
    if not rows:
        raise FhirInputError(str(path), "no rows")
    return rows, lab_columns


def hannover_uids(patient_id: str, image_id: str) -> tuple[str, str, str]:
    """Deterministic (study, series, SOP instance) UIDs of one radiograph, hashed from the source ids.

    >>> a = hannover_uids("04a33bab", "6b5af975")
    >>> a == hannover_uids("04a33bab", "6b5af975"), len(set(a)), a[0].startswith("1.2.826.0.1.3680043.8.498.")
    (True, 3, True)
    """
    from pydicom.uid import generate_uid

    base = ["cds.samples", "hannover-covid19-cxr", patient_id, image_id]  # UID seed: keep (ids stay stable)
    return tuple(str(generate_uid(entropy_srcs=[*base, part])) for part in ("study", "series", "instance"))


def _consensus(values: list[date], what: str, pid: str, problems: list[str]) -> date | None:
    """The one date all rows of a patient agree on; on disagreement the most common (then earliest)."""
    if not values:
        return None
    counts = Counter(values)
    if len(counts) > 1:
        msg = f"patient {pid}: rows disagree on {what} ({', '.join(sorted(str(d) for d in counts))})"
        log.warning("%s", msg)
        problems.append(msg)
    return sorted(counts, key=lambda d: (-counts[d], d))[0]


@dataclass(frozen=True)
class _Exam:
    patient_id: str
    image_id: str
    modality: str
    view: str
    day: date
    row: dict[str, str]
    where: str


def _dicom_relpath(patient_id: str, image_id: str) -> str:
    return f"dicom/hannover/{patient_id}/{image_id}.dcm"


def _patient_resources(pid: str, rows: list[tuple[int, dict[str, str]]], lab_columns: dict[str, str],
                       anchor: date, csv_name: str, problems: list[str],
                       stats: Counter[str]) -> tuple[list[dict[str, Any]], list[_Exam]]:
    """FHIR resources (Patient, Encounters, ImagingStudies, Observations) and exams of one patient."""
    meta = {"source": HANNOVER_SOURCE_URL}
    exams: list[_Exam] = []
    icu_start: list[date] = []
    icu_end: list[date] = []
    death: list[date] = []
    sexes: set[str] = set()
    labs: dict[tuple[str, date, str], float | str] = {}
    for line, row in rows:
        where = f"{csv_name} line {line}"
        image_id = _check_id(row["image_id"].strip(), where)
        adm = _offset_days(row["admission_offset"], f"{where} admission_offset")
        if adm is None:
            raise FhirInputError(f"{where} admission_offset", "empty; every row needs the day offset of admission")
        day = exam_day(anchor, adm)
        modality = row["modality"].strip().upper()
        if modality not in SOP_CLASS:
            raise FhirInputError(f"{where} modality", f"{row['modality']!r} is not CR or DX")
        view = VIEW_POSITIONS.get(row["projection"].strip().lower())
        if view is None:
            raise FhirInputError(f"{where} projection", f"{row['projection']!r} is not one of "
                                                        f"{', '.join(sorted(VIEW_POSITIONS))}")
        exams.append(_Exam(pid, image_id, modality, view, day, row, where))
        sexes.add(row["sex"].strip().lower())
        for col, bucket in (("icu_admission_offset", icu_start), ("icu_release_offset", icu_end),
                            ("death_offset", death)):
            off = _offset_days(row[col], f"{where} {col}")
            if off is not None:
                bucket.append(day + timedelta(days=off))
        for spec in LABS:
            col = lab_columns[spec.key]
            raw_val = row[f"{col}_val"]
            try:
                val = lab_value(raw_val)
            except ValueError:
                raise FhirInputError(f"{where} {col}_val", f"{raw_val!r} is not a number") from None
            if val is None:
                continue
            off = _offset_days(row[f"{col}_offset"], f"{where} {col}_offset")
            if off is None:
                log.warning("%s: %s_val without %s_offset; value skipped", where, col, col)
                stats["labs_without_date"] += 1
                continue
            stats["lab_values_in_rows"] += 1
            labs.setdefault((spec.key, day + timedelta(days=off), str(val)), val)

    if len(sexes) > 1:
        problems.append(f"patient {pid}: rows disagree on sex ({', '.join(sorted(sexes))})")
    sex = sorted(sexes)[0] if sexes else ""
    gender = SEX.get(sex, ("unknown", "O"))[0]
    admission = anchor
    icu_a = _consensus(icu_start, "ICU admission", pid, problems)
    icu_r = _consensus(icu_end, "ICU release", pid, problems)
    died = _consensus(death, "death", pid, problems)
    if icu_a is not None and icu_a < admission:
        problems.append(f"patient {pid}: ICU admission {icu_a} before hospital admission {admission}")

    patient: dict[str, Any] = {"resourceType": "Patient", "id": pid, "meta": meta, "gender": gender}
    if died is not None:
        patient["deceasedDateTime"] = died.isoformat()
    resources: list[dict[str, Any]] = [patient]
    subject = {"reference": f"Patient/{pid}"}

    hosp_id = f"{pid}-hospital"
    resources.append({
        "resourceType": "Encounter", "id": hosp_id, "meta": meta, "status": "unknown",
        "class": {"system": V3_ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        "type": [{"coding": [{"system": SNOMED, "code": "32485007", "display": "Hospital admission"}],
                  "text": "Hospital admission (COVID-19)"}],
        "subject": subject, "period": {"start": admission.isoformat()},
    })
    icu_id = None
    if icu_a is not None:
        icu_id = f"{pid}-icu"
        period = {"start": icu_a.isoformat()}
        if icu_r is not None:
            period["end"] = icu_r.isoformat()
        resources.append({
            "resourceType": "Encounter", "id": icu_id, "meta": meta,
            "status": "finished" if icu_r is not None else "unknown",
            "class": {"system": V3_ACT_CODE, "code": "ACUTE", "display": "inpatient acute"},
            "type": [{"coding": [{"system": SNOMED, "code": "305351004",
                                  "display": "Admission to intensive care unit"}], "text": "ICU stay"}],
            "subject": subject, "period": period, "partOf": {"reference": f"Encounter/{hosp_id}"},
        })

    def encounter_of(d: date) -> dict[str, str] | None:
        if icu_id is not None and icu_a is not None and icu_a <= d and (icu_r is None or d <= icu_r):
            return {"reference": f"Encounter/{icu_id}"}
        if d >= admission:
            return {"reference": f"Encounter/{hosp_id}"}
        return None

    for ex in sorted(exams, key=lambda e: (e.day, e.image_id)):
        study_uid, series_uid, sop_uid = hannover_uids(pid, ex.image_id)
        sop_class, sop_name = SOP_CLASS[ex.modality]
        modality = {"system": DCM, "code": ex.modality, "display": MODALITY_DISPLAY[ex.modality]}
        label = f"Chest {ex.view}"
        study: dict[str, Any] = {
            "resourceType": "ImagingStudy", "id": ex.image_id, "meta": meta,
            "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}],
            "status": "available", "modality": [modality], "subject": subject,
        }
        enc = encounter_of(ex.day)
        if enc:
            study["encounter"] = enc
        study.update({
            "started": ex.day.isoformat(), "numberOfSeries": 1, "numberOfInstances": 1,
            "procedureCode": [{"text": f"XR Chest {ex.view}"}],
            "description": f"Chest radiograph, {ex.view} view",
            "series": [{
                "extension": [{"url": VIEW_POSITION_URL, "valueCode": ex.view}],
                "uid": series_uid, "number": 1, "modality": modality, "description": label,
                "numberOfInstances": 1, "bodySite": CHEST, "started": ex.day.isoformat(),
                "instance": [{
                    "extension": [{"url": INSTANCE_LOCATION_URL,
                                   "valueUrl": f"../{_dicom_relpath(pid, ex.image_id)}"}],
                    "uid": sop_uid,
                    "sopClass": {"system": URI_SYSTEM, "code": f"urn:oid:{sop_class}",
                                 "display": sop_name},
                    "number": 1, "title": label,
                }],
            }],
        })
        resources.append(study)

    spec_index = {s.key: i for i, s in enumerate(LABS)}
    seen_ids: Counter[str] = Counter()
    for (key, d, _), val in sorted(labs.items(),
                                   key=lambda kv: (kv[0][1], spec_index[kv[0][0]], float(kv[0][2]))):
        spec = LABS[spec_index[key]]
        base_id = f"{pid}-{key}-{d:%Y%m%d}"
        seen_ids[base_id] += 1
        oid = base_id if seen_ids[base_id] == 1 else f"{base_id}-{seen_ids[base_id]}"
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": oid, "meta": meta, "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": spec.loinc, "display": spec.display}],
                     "text": spec.label},
            "subject": subject,
        }
        enc = encounter_of(d)
        if enc:
            obs["encounter"] = enc
        obs["effectiveDateTime"] = d.isoformat()
        if isinstance(val, float):
            obs["valueQuantity"] = {"value": val, "unit": spec.unit, "system": UCUM, "code": spec.ucum}
        else:
            below = val == "-inf"
            obs["dataAbsentReason"] = {
                "coding": [{"system": DATA_ABSENT_REASON, "code": "negative-infinity" if below else "positive-infinity",
                            "display": "Negative Infinity (NINF)" if below else "Positive Infinity (PINF)"}],
                "text": ("below" if below else "above") + f" the detection limit (source value {val})",
            }
            obs["interpretation"] = [{"coding": [{
                "system": V3_INTERPRETATION, "code": "<" if below else ">",
                "display": "Off scale low" if below else "Off scale high"}]}]
            stats["labs_beyond_detection_limit"] += 1
        if spec.ref_text:
            rr: dict[str, Any] = {}
            if spec.ref_low is not None:
                rr["low"] = {"value": spec.ref_low, "unit": spec.unit, "system": UCUM, "code": spec.ucum}
            if spec.ref_high is not None:
                rr["high"] = {"value": spec.ref_high, "unit": spec.unit, "system": UCUM, "code": spec.ucum}
            rr["text"] = spec.ref_text
            obs["referenceRange"] = [rr]
        resources.append(obs)
        stats["observations"] += 1
    return resources, exams


def hannover_bundles(hannover_dir: str | Path, anchor: date = HANNOVER_ANCHOR,
                     patients: Collection[str] | None = None) -> tuple[dict[str, dict[str, Any]], list[_Exam],
                                                                        dict[str, Any]]:
    """One R4 transaction Bundle per patient of ``data.csv`` (no files are written).

    Returns ``(bundles by patient id, exams, report)``; the report counts rows, distinct labs and
    lists any rows that disagree on a patient's dates (``problems``).
    """
    hannover_dir = Path(hannover_dir)
    rows, lab_columns = _read_hannover_csv(hannover_dir)
    csv_name = str(hannover_dir / "data.csv")
    by_patient: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    image_ids: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        pid = _check_id(row["patient_id"].strip(), f"{csv_name} line {i} patient_id")
        iid = row["image_id"].strip()
        if iid in image_ids:
            raise FhirInputError(f"{csv_name} line {i}", f"image_id {iid} repeats line {image_ids[iid]}")
        image_ids[iid] = i
        by_patient[pid].append((i, row))
    if patients is not None:
        unknown = sorted(set(patients) - set(by_patient))
        if unknown:
            raise ParameterError("hannover_patients", f"not in {csv_name}: {', '.join(unknown)}")
    problems: list[str] = []
    stats: Counter[str] = Counter()
    bundles: dict[str, dict[str, Any]] = {}
    all_exams: list[_Exam] = []
    for pid in sorted(by_patient):
        if patients is not None and pid not in patients:
            continue
        resources, exams = _patient_resources(pid, by_patient[pid], lab_columns, anchor, csv_name,
                                              problems, stats)
        entries = [_entry(r, _full_url("hannover-covid19-cxr", r["resourceType"], r["id"])) for r in resources]
        bundles[pid] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        all_exams.extend(exams)
    report = {
        "patients": len(bundles), "images": len(all_exams), "observations": stats["observations"],
        "lab_values_in_rows": stats["lab_values_in_rows"],
        "lab_duplicates_removed": stats["lab_values_in_rows"] - stats["observations"],
        "labs_beyond_detection_limit": stats["labs_beyond_detection_limit"],
        "labs_without_date": stats["labs_without_date"],
        "deceased": sum(1 for b in bundles.values() if "deceasedDateTime" in b["entry"][0]["resource"]),
        "icu_stays": sum(1 for b in bundles.values() for e in b["entry"] if e["resource"]["id"].endswith("-icu")),
        "problems": problems, "lab_columns": lab_columns,
    }
    return bundles, all_exams, report


# ============================================================================================
# Hannover: PNG -> DICOM
# ============================================================================================

def write_hannover_dicom(png: Path, out: Path, exam: _Exam, *, max_side: int = 512,
                         jpegls_near: int = 3) -> dict[str, Any]:
    """Write one radiograph as a DICOM file (JPEG-LS) and check that it reads back.

    The PNG is resampled (Lanczos) so that its longest side is at most ``max_side``, stored as
    8-bit MONOCHROME2, and compressed with JPEG-LS: lossless if ``jpegls_near`` is 0, otherwise
    near-lossless with every pixel within ``jpegls_near`` grey levels of the resampled image.
    Returns ``{"rows", "columns", "bytes", "max_abs_error"}``.
    """
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

    try:
        with Image.open(png) as im:
            im.load()
            if im.mode != "L":
                log.warning("%s: mode %s converted to 8-bit grey", png, im.mode)
                im = im.convert("L")
            w, h = im.size
            scale = min(1.0, max_side / max(w, h))
            if scale < 1.0:
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
            arr = np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except (OSError, ValueError) as exc:
        raise ImageReadError(str(png), f"cannot read the radiograph: {exc}") from None

    study_uid, series_uid, sop_uid = hannover_uids(exam.patient_id, exam.image_id)
    sop_class = SOP_CLASS[exam.modality][0]
    sex = SEX.get(exam.row["sex"].strip().lower(), ("unknown", "O"))[1]
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["DERIVED", "PRIMARY"] if exam.modality == "CR" else ["DERIVED", "SECONDARY"]
    ds.StudyDate = exam.day.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = ""  # not in the source: left empty (type 2) rather than invented
    ds.AccessionNumber = ""
    ds.Modality = exam.modality
    if exam.modality == "DX":
        ds.ConversionType = "WSD"
    ds.Manufacturer = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"XR Chest {exam.view}"
    ds.SeriesDescription = f"Chest {exam.view}"
    ds.DerivationDescription = (
        f"From {HANNOVER_SOURCE_URL} png/{exam.image_id}.png; resampled to longest side <= {max_side} "
        f"(Lanczos); JPEG-LS {'lossless' if jpegls_near == 0 else f'near-lossless NEAR={jpegls_near}'}")
    ds.PatientName = ""
    ds.PatientID = exam.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Source de-identification (Hannover Medical School)"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = exam.view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if jpegls_near == 0:
        ds.compress(JPEGLSLossless, arr, generate_instance_uid=False)
    else:
        ds.compress(JPEGLSNearLossless, arr, generate_instance_uid=False, jls_error=jpegls_near)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [round(arr.nbytes / len(ds.PixelData), 2)]
        ds.LossyImageCompressionMethod = ["ISO_14495_1"]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    _write_bytes(out, data)

    back = dcmread(io.BytesIO(data))
    pixels = back.pixel_array
    if pixels.shape != arr.shape:
        raise ImageReadError(str(out), f"reads back as {pixels.shape}, wrote {arr.shape}")
    err = int(np.abs(pixels.astype(np.int16) - arr.astype(np.int16)).max())
    if err > jpegls_near:
        raise ImageReadError(str(out), f"pixels differ by {err} > NEAR={jpegls_near}")
    if (back.StudyInstanceUID, back.SeriesInstanceUID, back.SOPInstanceUID) != (study_uid, series_uid, sop_uid):
        raise ImageReadError(str(out), "UIDs do not read back as written")
    return {"rows": int(arr.shape[0]), "columns": int(arr.shape[1]), "bytes": len(data), "max_abs_error": err}


# ============================================================================================
# the whole folder
# ============================================================================================

def _validate_bundle(bundle: dict[str, Any], where: str) -> None:
    """Validate with the R4 (``fhir.resources.R4B``) models; raise FhirInputError naming the file."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise FhirInputError(where, f"not valid FHIR R4: {str(exc).splitlines()[0:3]}") from None


def _check_internal_refs(bundle: dict[str, Any], where: str) -> None:
    """Every ``Type/id`` or ``urn:uuid:`` reference must point at an entry of the same bundle."""
    targets: set[str] = set()
    for e in bundle["entry"]:
        r = e["resource"]
        targets.add(f"{r['resourceType']}/{r['id']}")
        targets.add(e.get("fullUrl", ""))
    for e in bundle["entry"]:
        for ref in _references(e["resource"]):
            if not ref.startswith("#") and ref not in targets:
                r = e["resource"]
                raise FhirInputError(where, f"{r['resourceType']}/{r['id']} references {ref!r}, not in the bundle")


def _copy_licence(src_dir: Path, dest: Path) -> None:
    lic = src_dir / "LICENSE"
    if not lic.is_file():
        raise FhirInputError(str(lic), "missing: every source folder must carry its licence")
    _write_bytes(dest, lic.read_bytes())


def _prune(folder: Path, pattern: str, keep: set[Path]) -> list[str]:
    """Remove files matching ``pattern`` under ``folder`` that this build did not write."""
    removed = []
    if folder.is_dir():
        for p in sorted(folder.glob(pattern)):
            if p.is_file() and p not in keep:
                p.unlink()
                removed.append(str(p))
        for d in sorted((x for x in folder.glob("**/*") if x.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
    return removed


def build_sample_cohort(synthea_dir: str | Path, hannover_dir: str | Path, out_dir: str | Path, *,
                        per_flag: int = 2, n_controls: int = 1, hannover_patients: Collection[str] | None = None,
                        include_synthea: bool = True, max_side: int = 512, jpegls_near: int = 3,
                        anchor: date = HANNOVER_ANCHOR, validate: bool = True,
                        progress: bool = True) -> dict[str, Any]:
    """Build (or rebuild) the sample cohort folder from the two source folders.

    Parameters
    ----------
    synthea_dir, hannover_dir
        Folders laid out like ``shared/data/synthea-fhir-r4`` and ``shared/data/hannover-covid19-cxr``.
    out_dir
        Output folder (``fhir_samples``). Files this build owns but no longer writes are removed
        (only on a full build, i.e. ``hannover_patients`` is None and ``include_synthea``).
    per_flag, n_controls
        Synthea selection rule, see :func:`select_synthea`.
    hannover_patients
        Only these Hannover patient ids (for quick partial rebuilds, e.g. in tests).
    include_synthea
        Build the Synthea part (the selection still scans every source bundle).
    max_side, jpegls_near
        DICOM size: longest side in pixels; JPEG-LS NEAR (0 = lossless).
    anchor
        The date every Hannover patient's admission is placed on.
    validate
        Validate every written Bundle with ``fhir.resources.R4B`` and check its references.
    progress
        Show a tqdm progress bar for the radiographs.

    Returns
    -------
    dict
        What was written: selections, counts, byte sizes per part and the build time.
    """
    t0 = time.perf_counter()
    synthea_dir, hannover_dir, out = Path(synthea_dir), Path(hannover_dir), Path(out_dir)
    for name, d in (("synthea_dir", synthea_dir), ("hannover_dir", hannover_dir)):
        if not d.is_dir():
            raise ParameterError(name, f"{d} is not a folder")
    if max_side < 16:
        raise ParameterError("max_side", f"{max_side} is too small (>= 16)")
    if not 0 <= jpegls_near <= 9:
        raise ParameterError("jpegls_near", f"{jpegls_near} is outside 0..9")
    out.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    summary: dict[str, Any] = {"out_dir": str(out)}

    # --- Synthea -----------------------------------------------------------------------------
    if include_synthea:
        cands = _synthea_candidates(synthea_dir)
        by_id = {c.patient_id: (t, r) for c, t, r in cands}
        chosen = select_synthea([c for c, _, _ in cands], per_flag=per_flag, n_controls=n_controls)
        removed_total: Counter[str] = Counter()
        selected = []
        for cand, reason in chosen:
            trimmed, removed = by_id[cand.patient_id]
            path = out / "synthea" / f"{cand.patient_id}.json"
            if validate:
                _check_internal_refs(trimmed, str(path))
                _validate_bundle(trimmed, str(path))
            _write_bytes(path, _dumps(trimmed))
            written.add(path)
            removed_total.update(removed)
            selected.append({"patient_id": cand.patient_id, "flags": sorted(cand.flags), "reason": reason,
                             "entries_source": cand.n_entries, "entries_kept": cand.n_kept, "bytes": cand.size})
            log.info("synthea: %s kept %d of %d entries (%s)", cand.patient_id, cand.n_kept, cand.n_entries, reason)
        lic = out / "synthea" / "LICENSE"
        _copy_licence(synthea_dir, lic)
        written.add(lic)
        summary["synthea"] = {"candidates": len(cands), "per_flag": per_flag, "n_controls": n_controls,
                              "selected": selected,
                              "removed_types": dict(sorted(removed_total.items()))}

    # --- Hannover FHIR -----------------------------------------------------------------------
    bundles, exams, report = hannover_bundles(hannover_dir, anchor=anchor, patients=hannover_patients)
    for pid, bundle in bundles.items():
        path = out / "hannover" / f"{pid}.json"
        if validate:
            _check_internal_refs(bundle, str(path))
            _validate_bundle(bundle, str(path))
        _write_bytes(path, _dumps(bundle))
        written.add(path)
    for dest in (out / "hannover" / "LICENSE", out / "dicom" / "hannover" / "LICENSE"):
        _copy_licence(hannover_dir, dest)
        written.add(dest)
    summary["hannover"] = report

    # --- Hannover DICOM ----------------------------------------------------------------------
    from tqdm.auto import tqdm

    dicom_bytes, max_err, shapes = 0, 0, Counter()
    for ex in tqdm(exams, desc="radiographs -> DICOM", unit="img", disable=not progress):
        png = hannover_dir / "png" / f"{ex.image_id}.png"
        if not png.is_file():
            raise ImageReadError(str(png), f"missing; {ex.where} names image {ex.image_id}")
        path = out / _dicom_relpath(ex.patient_id, ex.image_id)
        info = write_hannover_dicom(png, path, ex, max_side=max_side, jpegls_near=jpegls_near)
        written.add(path)
        dicom_bytes += info["bytes"]
        max_err = max(max_err, info["max_abs_error"])
        shapes[max(info["rows"], info["columns"])] += 1
    summary["dicom"] = {
        "files": len(exams), "bytes": dicom_bytes, "max_abs_error": max_err,
        "transfer_syntax": "JPEG-LS Lossless (1.2.840.10008.1.2.4.80)" if jpegls_near == 0
        else f"JPEG-LS Near-Lossless (1.2.840.10008.1.2.4.81), NEAR={jpegls_near}",
        "longest_side": dict(sorted(shapes.items())),
    }

    # --- housekeeping, SOURCES.md ------------------------------------------------------------
    full = hannover_patients is None and include_synthea
    if full:
        pruned = []
        pruned += _prune(out / "synthea", "*.json", written)
        pruned += _prune(out / "hannover", "*.json", written)
        pruned += _prune(out / "dicom" / "hannover", "*/*.dcm", written)
        if pruned:
            log.info("removed %d stale files", len(pruned))
    sizes = {
        "synthea": _dir_size(out / "synthea"), "hannover_fhir": _dir_size(out / "hannover"),
        "dicom": _dir_size(out / "dicom"),
    }
    summary["bytes"] = sizes
    sources = out / "SOURCES.md"
    _write_bytes(sources, _sources_md(summary, max_side, jpegls_near, anchor).encode("utf-8"))
    summary["bytes"]["total"] = _dir_size(out)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


# ============================================================================================
# SOURCES.md
# ============================================================================================

REBUILD_COMMAND = ("python -m cds.tooling.samples --synthea ../shared/data/synthea-fhir-r4 "
                   "--hannover ../shared/data/hannover-covid19-cxr --out fhir_samples")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _sources_md(summary: dict[str, Any], max_side: int, near: int, anchor: date) -> str:
    syn = summary.get("synthea")
    han = summary["hannover"]
    dic = summary["dicom"]
    sizes = summary["bytes"]
    lines = [
        "# fhir_samples: the embedded sample cohort",
        "",
        "Everything in this folder is written by `cds/tooling/samples.py` from two public data sets. The build is",
        "deterministic (ids and DICOM UIDs are hashes of source ids; no clock, no random numbers), so",
        "rebuilding gives byte-identical files. From the repository root:",
        "",
        "```",
        REBUILD_COMMAND,
        "# or, the same through the CLI:",
        REBUILD_COMMAND.replace("python -m cds.tooling.samples", "cds samples build"),
        "```",
        "",
        "The source folders may be any folders laid out like `shared/data/synthea-fhir-r4` and",
        "`shared/data/hannover-covid19-cxr` (same file names and CSV columns).",
        "",
        "| part | what | size |",
        "| --- | --- | --- |",
        f"| `synthea/` | {len(syn['selected']) if syn else 0} Synthea R4 transaction Bundles + `LICENSE` "
        f"| {_mb(sizes['synthea'])} |",
        f"| `hannover/` | {han['patients']} Hannover R4 transaction Bundles + `LICENSE` | {_mb(sizes['hannover_fhir'])} |",
        f"| `dicom/hannover/` | {dic['files']} radiographs as DICOM + `LICENSE` | {_mb(sizes['dicom'])} |",
        "",
        "Checks run by every build: each Bundle validates with `fhir.resources.R4B`; every reference",
        "inside a Bundle resolves to an entry of that Bundle; every DICOM file is read back with",
        "pydicom (`pixel_array`, UIDs) and compared with the pixels written.",
        "",
        "## 1. Synthea synthetic patients (`synthea/`)",
        "",
        "- **Origin:** GitHub `smart-on-fhir/generated-sample-data`, folder `R4/SYNTHEA/`, commit",
        "  `25ac8089f0464b8673c7669509dc0bb8f4883773` (SMART Health IT's copy of the bundles on its",
        "  sandbox servers), generated by Synthea (The MITRE Corporation). Synthetic people, not real ones.",
        "- **Licence:** Apache License 2.0, \"Copyright 2018 Boston Children's Hospital\" (`synthea/LICENSE`).",
        "- **Attribution:** SMART Health IT sample data (https://github.com/smart-on-fhir/generated-sample-data),",
        "  generated with Synthea (https://github.com/synthetichealth/synthea).",
        "- **What was changed:**",
        "  - *Selection* (rule in `select_synthea`): flags are derived from each bundle's own resources:",
        "    Conditions by SNOMED CT code (myocardial infarction 22298006/399211009, heart failure 88805009",
        "    and relatives, lung cancer 254637007/424132000/254632001/67811000119102 and relatives) and",
        "    `chest_xray` = an ImagingStudy series with modality CR or DX on a chest/thoracic body site.",
        "    Greedy set cover: take the bundle covering most still-needed flags (ties: smaller trimmed",
        f"    size, then patient id) until each flag is held by {syn['per_flag'] if syn else '-'} patients, then add",
        f"    the {syn['n_controls'] if syn else '-'} smallest bundle(s) without any flag as controls.",
        "  - *Trimming:* only clinical resource types are kept (Patient, Encounter, Condition, Observation,",
        "    MedicationRequest, Medication, ImagingStudy, Procedure, DiagnosticReport, AllergyIntolerance,",
        "    Immunization, CarePlan, Goal, Organization, Practitioner and similar); billing resources are",
        "    removed. The build fails if a kept resource references a removed one.",
        "  - Entry requests changed from `POST Type` to `PUT Type/id` (idempotent upload); fullUrls and",
        "    references (`urn:uuid:`) unchanged; JSON re-serialised (indent 1); file named `<Patient.id>.json`.",
        "  - Synthea's ImagingStudy UIDs are synthetic: no pixel data exists for them.",
        "",
    ]
    if syn:
        removed = ", ".join(f"{k} {v}" for k, v in syn["removed_types"].items()) or "none"
        lines += [f"Removed resources (all selected bundles): {removed}.", "",
                  "| patient id | flags | why selected | entries kept / source |", "| --- | --- | --- | --- |"]
        for s in syn["selected"]:
            lines.append(f"| `{s['patient_id']}` | {', '.join(s['flags']) or '-'} | {s['reason']} | "
                         f"{s['entries_kept']} / {s['entries_source']} |")
        lines.append("")
    cols = han.get("lab_columns", {})
    lab_rows = [f"| `{cols.get(s.key, s.columns[0])}` | {s.label} | {s.loinc} {s.display} | `{s.ucum}` |"
                for s in LABS]
    lines += [
        "## 2. Hannover Medical School COVID-19 chest radiographs (`hannover/`, `dicom/hannover/`)",
        "",
        "- **Origin:** GitHub `ml-workgroup/covid-19-image-repository`, commit",
        "  `ad7ab099b425f16e06bba22322336b7d6a732965` (files `data.csv`, `png/<image_id>.png`). Institute",
        "  for Diagnostic and Interventional Radiology, Hannover Medical School, Germany. Real,",
        "  de-identified COVID-19 patients. The team's copy holds a patient-level subset.",
        "- **Licence:** Creative Commons Attribution 3.0 Unported (CC BY 3.0): `hannover/LICENSE`,",
        "  `dicom/hannover/LICENSE`.",
        f"- **Attribution (required):** Hannover Medical School, COVID-19 Image Repository, DOI {HANNOVER_DOI}",
        "  (full-resolution images: DOI 10.25835/0090041). The files here are modified, see below.",
        "- **What was changed:** the CSV rows were mapped to FHIR R4 and the PNGs converted to DICOM:",
        f"  - One transaction Bundle per patient, `hannover/<patient_id>.json`: {han['patients']} patients,",
        f"    {han['images']} ImagingStudies, {han['observations']} lab Observations, {han['icu_stays']} ICU stays,",
        f"    {han['deceased']} deaths. Entries: fullUrl `urn:uuid:<uuid5 of type/id>`, request `PUT Type/id`;",
        "    references are `Patient/<id>`-style resource ids that resolve inside the Bundle.",
        "  - **Patient**: id = source `patient_id`, gender from `sex`; no name and no birth date (age is",
        "    redacted by the source); `deceasedDateTime` where `death_offset` is recorded.",
        "  - **Dates:** the source gives only day offsets, relative to each exam (one row per image).",
        f"    Every patient's hospital admission is placed on {anchor.isoformat()}; a row's exam day =",
        f"    {anchor.isoformat()} - `admission_offset`; every other event (ICU admission/release, death, each",
        "    lab) = exam day + its offset. All dates are therefore synthetic, but intervals between a",
        "    patient's events are the source's. The build checks that all rows of a patient give the same",
        f"    ICU and death dates (disagreements found: {len(han['problems'])}).",
        "  - **Encounters:** hospital admission (class IMP, SNOMED 32485007, start = admission, end unknown)",
        "    and, where recorded, the ICU stay (class ACUTE, SNOMED 305351004, period from the ICU offsets,",
        "    `partOf` the admission). ImagingStudies and Observations point at the encounter they fall in.",
        "  - **ImagingStudy** per radiograph: status available, modality CR/DX (DICOM DCM), started = exam day,",
        "    one series (body site SNOMED 51185008 Thoracic structure, description `Chest AP`/`Chest PA`,",
        "    view also in the `view-position` extension and `procedureCode.text`), one instance (SOP",
        "    class + UID). Study/series/instance UIDs equal those in the DICOM file. The instance's",
        f"    extension `{INSTANCE_LOCATION_URL}` gives the DICOM path relative to the Bundle file.",
        "  - **Observations** (category laboratory), one per distinct (lab, day, value) of the patient:",
        f"    the same lab value repeated on several image rows is written once ({han['lab_duplicates_removed']} "
        "duplicates",
        f"    removed from {han['lab_values_in_rows']} row values). Codes and UCUM units:",
        "",
        "    | column | lab | LOINC | UCUM |",
        "    | --- | --- | --- | --- |",
        *("    " + r for r in lab_rows),
        "",
        "    The CSV column `factor_xii` holds coagulation factor XIII (source README: \"coagulation factor",
        "    XIII, %, 70 - 140\"); the chromogenic-method code was chosen as the source gives no method.",
        "    pCO2/pO2 use the LOINC codes for blood without a sample type (arterial is not stated, and",
        "    many pO2 values are venous-range). D-dimer: the source gives mg/l with a 0 - 0.5 reference",
        "    interval, read as fibrinogen-equivalent units (FEU). Reference ranges are the source's.",
        "    The source reports lab values in intervals (k-anonymity), e.g. LDH in steps of 5 U/l.",
        f"  - **Values beyond the detection limit** (`-inf`/`inf` in the source, {han['labs_beyond_detection_limit']} "
        "here):",
        "    the number is unknown, so no value is invented: the Observation has no `value[x]`, a",
        "    `dataAbsentReason` (data-absent-reason `negative-infinity`/`positive-infinity`, the source's",
        "    own coding) and `interpretation` `<` Off scale low / `>` Off scale high (v3",
        "    ObservationInterpretation). This is valid R4 (obs-6: value and dataAbsentReason exclusive).",
        f"  - **DICOM** `dicom/hannover/<patient_id>/<image_id>.dcm`: {dic['files']} files, {_mb(sizes['dicom'])}.",
        f"    Resampled from the source PNG to longest side {max_side} (Lanczos), 8-bit",
        f"    MONOCHROME2, {dic['transfer_syntax']}.",
    ]
    if near:
        lines += [
            f"    Near-lossless: every pixel is within {near} grey levels (of 255) of the resampled image",
            f"    (largest difference measured: {dic['max_abs_error']}). Lossless JPEG-LS at 512 px would take",
            "    about 23 MB for the 188 images of the shared/data copy (12 MB even at 384 px), over the",
            "    10 MB budget for the images. NEAR=3 at 512 px is about 9.7 MB.",
            "    pydicom 3.0.2 encodes and decodes JPEG-LS with `pyjpegls` (installed with highdicom).",
        ]
    else:
        lines.append("    Lossless: pixels equal the resampled image.")
    lines += [
        "    SOP class: CR rows use CR Image Storage; DX rows use Secondary Capture Image Storage with",
        "    Modality DX, because the DX IOD requires attributes the source does not give and that would",
        "    have to be invented (dciodvfy lists e.g. Imager Pixel Spacing, Burned In Annotation, Patient",
        "    Orientation, Pixel Intensity Relationship as missing type 1). Both pass dciodvfy (View",
        "    Position makes the SC files a Standard Extended SOP Class). ViewPosition AP/PA, PatientID = patient_id, PatientSex,",
        "    StudyDate = exam day (StudyTime empty: not in the source), no name or birth date,",
        "    PatientIdentityRemoved YES. UIDs: `pydicom.uid.generate_uid(entropy_srcs=[..., patient_id,",
        "    image_id, part])` under pydicom's UID root.",
        "",
    ]
    return "\n".join(lines)


# ============================================================================================
# CLI
# ============================================================================================

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.tooling.samples --synthea DIR --hannover DIR --out DIR``: build and print a summary."""
    p = argparse.ArgumentParser(prog="python -m cds.tooling.samples", description=__doc__.split("\n\n")[0])
    p.add_argument("--synthea", required=True, help="folder laid out like shared/data/synthea-fhir-r4")
    p.add_argument("--hannover", required=True, help="folder laid out like shared/data/hannover-covid19-cxr")
    p.add_argument("--out", required=True, help="output folder (e.g. fhir_samples)")
    p.add_argument("--per-flag", type=int, default=2, help="Synthea patients per flag (default 2)")
    p.add_argument("--max-side", type=int, default=512, help="longest side of the DICOM images (default 512)")
    p.add_argument("--jpegls-near", type=int, default=3, help="JPEG-LS NEAR, 0 = lossless (default 3)")
    p.add_argument("--patients", help="comma-separated Hannover patient ids (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    patients = [x.strip() for x in args.patients.split(",") if x.strip()] if args.patients else None
    try:
        s = build_sample_cohort(args.synthea, args.hannover, args.out, per_flag=args.per_flag,
                                max_side=args.max_side, jpegls_near=args.jpegls_near, hannover_patients=patients,
                                progress=not args.no_progress)
    except (FhirInputError, ImageReadError, ParameterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        b = s["bytes"]
        n_syn = len(s.get("synthea", {}).get("selected", []))
        print(f"wrote {s['out_dir']}: {n_syn} Synthea bundles ({_mb(b['synthea'])}), "
              f"{s['hannover']['patients']} Hannover bundles ({_mb(b['hannover_fhir'])}), "
              f"{s['dicom']['files']} DICOM files ({_mb(b['dicom'])}); total {_mb(b['total'])} "
              f"in {s['seconds']} s")
        for msg in s["hannover"]["problems"]:
            print(f"  problem: {msg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
