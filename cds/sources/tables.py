"""Tidy pandas tables from FHIR R4 resources (plain dicts, as read by :mod:`cds.sources.fhir_read`).

One function builds all tables in one pass over the resources; the column sets are fixed so that
empty cohorts still give tables with the right columns.

>>> from cds.sources.fhir_read import RawResource
>>> res = [RawResource({"resourceType": "Patient", "id": "p1", "gender": "male",
...                     "birthDate": "1950-06-01"}, "x.json", 0),
...        RawResource({"resourceType": "Observation", "id": "o1", "status": "final",
...                     "code": {"coding": [{"system": "http://loinc.org", "code": "1988-5",
...                                          "display": "CRP"}]},
...                     "subject": {"reference": "Patient/p1"},
...                     "effectiveDateTime": "2020-04-01",
...                     "valueQuantity": {"value": 6.0, "unit": "mg/L"}}, "x.json", 1)]
>>> t, problems = build_tables(res, reference_date="2020-06-01")
>>> float(t["patients"].loc[0, "age_years"]), float(t["observations"].loc[0, "value"])
(70.0, 6.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import pandas as pd

# INSTANCE_LOCATION_URL: the extension on ImagingStudy.series.instance giving the file (relative to the
# Bundle file) or URL where that instance's pixels are; re-exported here for readers of the tables.
from cds.codes import INSTANCE_LOCATION_URL
from cds.sources.fhir_values import (
    PATIENT_REF_FIELDS,
    as_list,
    as_str,
    coding,
    dicts,
    first_display,
    patient_ref,
    period,
    ref_id,
    ref_type,
)
from cds.sources.imaging_rows import RowContext, imaging_rows
from cds.sources.pixel_access import PixelAccess
from cds.sources.plausibility import GENDERS, deduplicate, fhir_date, value_type_error
from cds.sources.records import Problem, RawResource

__all__ = ["build_tables", "TABLE_COLUMNS", "INSTANCE_LOCATION_URL", "ref_id", "ref_type", "age_years"]

TABLE_COLUMNS: dict[str, list[str]] = {
    "patients": ["patient_id", "sex", "birth_date", "deceased", "deceased_date", "age_years", "name", "source",
                 "dicom_patient_ids"],
    "conditions": ["patient_id", "condition_id", "code_system", "code", "display", "onset", "abatement",
                   "clinical_status", "encounter_id"],
    "observations": ["patient_id", "observation_id", "code_system", "code", "display", "value", "value_string",
                     "comparator", "unit", "time", "category", "status", "encounter_id"],
    "medications": ["patient_id", "medication_id", "code_system", "code", "display", "status", "intent",
                    "authored_on", "encounter_id"],
    "encounters": ["patient_id", "encounter_id", "class", "type", "status", "start", "end", "reason"],
    "imaging": ["patient_id", "imaging_study_id", "study_uid", "series_uid", "instance_uids", "modality",
                "body_site", "view", "description", "started", "n_instances", "pixel_location",
                "instance_locations", "encounter_id", "source"],
}

_TIME_COLS = {
    "patients": ["birth_date", "deceased_date"],
    "conditions": ["onset", "abatement"],
    "observations": ["time"],
    "medications": ["authored_on"],
    "encounters": ["start", "end"],
    "imaging": ["started"],
}

def _quantity(res: dict[str, Any], row: dict[str, Any]) -> None:
    """Fill value / unit / comparator / value_string (types already checked by ``value_type_error``)."""
    q = res.get("valueQuantity")
    if isinstance(q, dict):
        row["value"] = q.get("value")
        row["unit"] = q.get("unit") or q.get("code")
        row["comparator"] = q.get("comparator")
        return
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in res:
            if key == "valueInteger":
                row["value"] = float(res[key])
            row["value_string"] = str(res[key]).lower() if key == "valueBoolean" else str(res[key])
            return
    if "valueCodeableConcept" in res:
        row["value_string"] = coding(res["valueCodeableConcept"])[2]
    elif "dataAbsentReason" in res:
        _, code, disp = coding(res["dataAbsentReason"])
        row["value_string"] = "absent: " + str(disp or code or "unknown")
        # off-scale results: keep the direction (below / above the detection limit) as a comparator
        if code in ("negative-infinity", "positive-infinity"):
            row["comparator"] = "<" if code == "negative-infinity" else ">"
        else:
            interp = coding((as_list(res.get("interpretation")) or [None])[0])[1]
            if interp in ("<", ">"):
                row["comparator"] = interp


def age_years(birth: Any, until: Any) -> Any:
    """Age in years (one decimal) at ``until``: the one age computation of cds. Never negative: a
    ``birth`` after ``until`` gives no age (``None`` / NaN), not a negative one.

    Works on two scalars (``None`` when either is missing) or two Series (element-wise).

    >>> age_years("1950-06-01", "2020-06-01")
    70.0
    >>> age_years(None, "2020-06-01") is None, age_years("2021-01-01", "2020-06-01") is None
    (True, True)
    """
    if isinstance(birth, pd.Series) or isinstance(until, pd.Series):
        age = ((until - birth).dt.days / 365.2425).round(1)
        return age.where(age >= 0)
    if birth is None or until is None or pd.isna(birth) or pd.isna(until):
        return None
    age = round((pd.Timestamp(until) - pd.Timestamp(birth)).days / 365.2425, 1)
    return age if age >= 0 else None


def _patient_row(rr: RawResource, ctx: RowContext) -> dict[str, Any]:
    res = rr.resource
    birth = ctx.date(rr, res.get("birthDate"), "Patient.birthDate")
    dec = ctx.date(rr, res.get("deceasedDateTime"), "Patient.deceasedDateTime")
    b, d = fhir_date(birth)[0] if birth else None, fhir_date(dec)[0] if dec else None
    if b is not None and b > ctx.today.timetuple()[:3]:
        ctx.add(rr, "future-birth-date", "Patient.birthDate is after today; birth_date and age_years left empty")
        birth = b = None
    elif b is not None and b > ctx.reference.timetuple()[:3]:
        ctx.add(rr, "future-birth-date", f"Patient.birthDate is after the cohort's reference date {ctx.reference}; "
                                         "age_years left empty")
    if d is not None and d > ctx.today.timetuple()[:3]:
        ctx.add(rr, "future-death-date", "Patient.deceasedDateTime is after today; deceased_date left empty")
        dec = d = None
    if b is not None and d is not None and d < b:
        ctx.add(rr, "death-before-birth", "Patient.deceasedDateTime is before Patient.birthDate; "
                                          "birth_date, deceased_date and age_years left empty")
        birth = dec = None
    gender = res.get("gender")
    if gender is not None and gender not in GENDERS:
        what = "not a string" if not isinstance(gender, str) else "not one of " + ", ".join(GENDERS)
        ctx.add(rr, "wrong-code", f"Patient.gender is {what}; sex left empty")
        gender = None
    dec_bool = res.get("deceasedBoolean")
    if dec_bool is not None and not isinstance(dec_bool, bool):
        ctx.add(rr, "wrong-type", "Patient.deceasedBoolean is not true or false; not used")
        dec_bool = None
    name = None
    for n in dicts(res.get("name")):
        given = [g for g in as_list(n.get("given")) if isinstance(g, str)]
        name = " ".join([*given, as_str(n.get("family")) or ""]).strip() or as_str(n.get("text"))
        if name:
            break
    from cds.codes import DICOM_PATIENT_ID_SYSTEM

    dicom_ids = tuple(str(i["value"]) for i in dicts(res.get("identifier"))
                      if i.get("system") == DICOM_PATIENT_ID_SYSTEM and isinstance(i.get("value"), str))
    return {"patient_id": res.get("id"), "sex": gender, "birth_date": birth,
            "deceased": bool(res.get("deceasedDateTime")) or dec_bool is True, "deceased_date": dec,
            "name": name, "source": rr.source, "dicom_patient_ids": dicom_ids}


def _references(rr: RawResource, rt: str, ctx: RowContext) -> tuple[str | None, str | None]:
    """``(patient_id, encounter_id)`` of a resource, recording dangling and cross-patient references."""
    res = rr.resource
    pid = patient_ref(res)
    field = next((f for f in PATIENT_REF_FIELDS if f in res), "subject")
    if ref_type(res.get(field)) not in (None, "Patient"):
        pid = None  # a Device or Group that happens to share a patient's id is not that patient
    if pid is None or pid not in ctx.patient_ids:
        target = res[field].get("reference") if isinstance(res.get(field), dict) else None
        ctx.add(rr, "dangling-reference", f"{rt}.{field} points at {target!r}, which is not a Patient in this cohort")
    if rt == "Encounter":
        return pid, None
    enc = ref_id(res.get("encounter"))
    if enc is not None and ref_type(res.get("encounter")) not in (None, "Encounter"):
        ctx.add(rr, "dangling-reference", f"{rt}.encounter points at {res['encounter'].get('reference')!r}, "
                                          "which is not an Encounter; the link is left out")
        enc = None
    elif enc is not None and enc not in ctx.encounter_patient:
        ctx.add(rr, "dangling-reference", f"{rt}.encounter points at {res['encounter'].get('reference')!r}, "
                                          "which is not an Encounter in this cohort")
    elif enc is not None and pid is not None and ctx.encounter_patient[enc] not in (None, pid):
        ctx.add(rr, "cross-patient-reference", f"{rt}.encounter points at Encounter/{enc}, which belongs to another "
                                               "patient; the encounter link is left out")
        enc = None
    return pid, enc


def _observation_rows(rr: RawResource, pid: str | None, enc: str | None, ctx: RowContext) -> list[dict[str, Any]]:
    res = rr.resource
    eff = res.get("effectiveDateTime") or period(res.get("effectivePeriod"))[0] or res.get("issued")
    time = ctx.date(rr, eff, "Observation.effective[x]")
    cat = coding((as_list(res.get("category")) or [None])[0])[1]
    base = {"patient_id": pid, "observation_id": res.get("id"), "time": time, "category": cat,
            "status": as_str(res.get("status")), "encounter_id": enc, "value": None, "value_string": None,
            "comparator": None, "unit": None}
    comps = dicts(res.get("component"))
    parts = [(c, f"Observation.component[{i}]") for i, c in enumerate(comps)] \
        if comps and "valueQuantity" not in res else [(res, "Observation")]
    rows = []
    for part, where in parts:
        row = dict(base)
        row["code_system"], row["code"], row["display"] = coding(part.get("code"))
        why = value_type_error(part, where)
        if why:
            ctx.add(rr, "wrong-type", f"{why}; the value is left empty")
        else:
            _quantity(part, row)
        rows.append(row)
    return rows


def _rows_of(rr: RawResource, rt: str, ctx: RowContext) -> tuple[str, list[dict[str, Any]]]:
    """The table a resource goes to and its rows (problems go to ``ctx``)."""
    res = rr.resource
    rid = res.get("id")
    if rt == "Patient":
        return "patients", [_patient_row(rr, ctx)]
    pid, enc = _references(rr, rt, ctx)
    if rt == "Condition":
        sys_, code, disp = coding(res.get("code"))
        onset = ctx.date(rr, res.get("onsetDateTime") or period(res.get("onsetPeriod"))[0], "Condition.onset[x]")
        return "conditions", [{
            "patient_id": pid, "condition_id": rid, "code_system": sys_, "code": code, "display": disp,
            "onset": onset, "abatement": ctx.date(rr, res.get("abatementDateTime"), "Condition.abatementDateTime"),
            "clinical_status": coding(res.get("clinicalStatus"))[1], "encounter_id": enc}]
    if rt == "Observation":
        return "observations", _observation_rows(rr, pid, enc, ctx)
    if rt == "MedicationRequest":
        sys_, code, disp = coding(res.get("medicationCodeableConcept"))
        return "medications", [{
            "patient_id": pid, "medication_id": rid, "code_system": sys_, "code": code, "display": disp,
            "status": as_str(res.get("status")), "intent": as_str(res.get("intent")),
            "authored_on": ctx.date(rr, res.get("authoredOn"), "MedicationRequest.authoredOn"), "encounter_id": enc}]
    if rt == "Encounter":
        start, end = period(res.get("period"))
        start, end = ctx.date(rr, start, "Encounter.period.start"), ctx.date(rr, end, "Encounter.period.end")
        if start and end and _instant(end) < _instant(start):
            ctx.add(rr, "end-before-start", "Encounter.period.end is before its start; end left empty")
            end = None
        cls = res.get("class")
        return "encounters", [{
            "patient_id": pid, "encounter_id": rid, "class": as_str(cls.get("code")) if isinstance(cls, dict) else None,
            "type": first_display(res.get("type")), "status": as_str(res.get("status")), "start": start, "end": end,
            "reason": first_display(res.get("reasonCode"))}]
    return "imaging", imaging_rows(res, rr, pid, ctx, enc)


def _instant(value: str) -> pd.Timestamp:
    """A parsed FHIR date as a UTC timestamp (a date without zone is read as UTC), for ordering two dates."""
    return pd.to_datetime(value, format="ISO8601", utc=True)


_TABLED = ("Patient", "Condition", "Observation", "MedicationRequest", "Encounter", "ImagingStudy")


def build_tables(resources: Iterable[RawResource], reference_date: str | date | None = None,
                 access: PixelAccess | None = None) -> tuple[dict[str, pd.DataFrame], list[Problem]]:
    """Build the cohort tables. Returns ``(tables, problems)``.

    ``age_years`` is the age at ``reference_date`` (default: today), or at death if earlier.
    References are matched by id, whether written ``Patient/x``, ``urn:uuid:x`` or as a URL.
    ``problems`` holds dangling and cross-patient references, duplicate ids, impossible or
    unparseable values (see :mod:`cds.sources.plausibility`) and refused pixel locations; pixel
    locations are resolved with ``access`` (default: nothing allowed, see :mod:`cds.sources.pixel_access`).
    """
    problems: list[Problem] = []
    resources, dup_problems = deduplicate(list(resources))
    problems.extend(dup_problems)
    ref = pd.Timestamp(reference_date or date.today(), tz="UTC")
    ctx = RowContext(resources, access or PixelAccess(), ref.date(), problems)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in TABLE_COLUMNS}

    for rr in resources:
        rt = rr.resource.get("resourceType")
        if rt not in _TABLED:
            continue
        rid = rr.resource.get("id")
        if rid is not None and not isinstance(rid, str):
            ctx.add(rr, "malformed", f"{rt}.id is not a string; the resource is left out")
            continue
        mark = len(problems)
        try:
            table, new = _rows_of(rr, rt, ctx)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            del problems[mark:]
            ctx.add(rr, "malformed", f"{rt} has an unexpected structure ({type(exc).__name__}); the resource is "
                                     "left out (load with validate=True to see which field)")
            continue
        rows[table].extend(new)

    tables = {}
    for name, cols in TABLE_COLUMNS.items():
        df = pd.DataFrame(rows[name], columns=cols)
        for c in _TIME_COLS[name]:
            df[c] = pd.to_datetime(df[c], format="ISO8601", utc=True, errors="coerce")
        tables[name] = df
    obs = tables["observations"]
    obs["value"] = pd.to_numeric(obs["value"], errors="coerce")
    pat = tables["patients"]
    until = pat["deceased_date"].where(pat["deceased_date"] < ref, ref).fillna(ref)
    pat["age_years"] = age_years(pat["birth_date"], until)
    for name, sort in (("conditions", ["patient_id", "onset"]), ("observations", ["patient_id", "time", "code"]),
                       ("medications", ["patient_id", "authored_on"]), ("encounters", ["patient_id", "start"]),
                       ("imaging", ["patient_id", "started", "series_uid"]), ("patients", ["patient_id"])):
        tables[name] = tables[name].sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
    return tables, problems
