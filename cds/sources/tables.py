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
>>> t, dangling = build_tables(res, reference_date="2020-06-01")
>>> float(t["patients"].loc[0, "age_years"]), float(t["observations"].loc[0, "value"])
(70.0, 6.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

# INSTANCE_LOCATION_URL: the extension on ImagingStudy.series.instance giving the file (relative to the
# Bundle file) or URL where that instance's pixels are; re-exported here for readers of the tables.
from cds.codes import DICOM_UID_SYSTEM, INSTANCE_LOCATION_URL, URI_SYSTEM
from cds.sources.fhir_read import Problem, RawResource

__all__ = ["build_tables", "TABLE_COLUMNS", "INSTANCE_LOCATION_URL", "ref_id"]

TABLE_COLUMNS: dict[str, list[str]] = {
    "patients": ["patient_id", "sex", "birth_date", "deceased", "deceased_date", "age_years", "name", "source"],
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

_PATIENT_REF_FIELDS = ("subject", "patient")


def ref_id(ref: Any) -> str | None:
    """The id a FHIR Reference points at: ``Patient/x``, ``urn:uuid:x``, or an absolute URL.

    >>> ref_id({"reference": "urn:uuid:abc"}), ref_id({"reference": "http://h/fhir/Patient/p1/_history/2"})
    ('abc', 'p1')
    """
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if not isinstance(r, str) or not r:
        return None
    if r.startswith("urn:uuid:") or r.startswith("urn:oid:"):
        return r.split(":", 2)[2]
    parts = r.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else None


def _coding(cc: Any) -> tuple[str | None, str | None, str | None]:
    """First coding of a CodeableConcept as (system, code, display), display falling back to text."""
    if not isinstance(cc, dict):
        return None, None, None
    codings = cc.get("coding") or []
    c = codings[0] if codings and isinstance(codings[0], dict) else {}
    return c.get("system"), c.get("code"), c.get("display") or cc.get("text")


def _first_display(ccs: Any) -> str | None:
    if isinstance(ccs, list) and ccs:
        return _coding(ccs[0])[2]
    return None


def _period(p: Any) -> tuple[str | None, str | None]:
    if not isinstance(p, dict):
        return None, None
    return p.get("start"), p.get("end")


def _patient_ref(res: dict[str, Any]) -> str | None:
    for f in _PATIENT_REF_FIELDS:
        if f in res:
            return ref_id(res[f])
    return None


def _dicom_uid(identifiers: Any) -> str | None:
    for ident in identifiers or []:
        v = ident.get("value") if isinstance(ident, dict) else None
        if isinstance(v, str) and ident.get("system") in (DICOM_UID_SYSTEM, URI_SYSTEM):
            return v.removeprefix("urn:oid:")
    return None


def _quantity(res: dict[str, Any], row: dict[str, Any]) -> None:
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
            row["value_string"] = str(res[key])
            return
    if "valueCodeableConcept" in res:
        row["value_string"] = _coding(res["valueCodeableConcept"])[2]
    elif "dataAbsentReason" in res:
        _, code, disp = _coding(res["dataAbsentReason"])
        row["value_string"] = "absent: " + str(disp or code or "unknown")
        # off-scale results: keep the direction (below / above the detection limit) as a comparator
        if code in ("negative-infinity", "positive-infinity"):
            row["comparator"] = "<" if code == "negative-infinity" else ">"
        else:
            interp = _coding((res.get("interpretation") or [None])[0])[1]
            if interp in ("<", ">"):
                row["comparator"] = interp


def _resolve_location(loc: str, source: str) -> str:
    if "://" in loc:
        return loc
    if loc.startswith("file:"):
        loc = loc[5:]
    p = Path(loc)
    if not p.is_absolute() and source and "://" not in source:
        p = (Path(source).parent / p).resolve()
    return str(p)


def _imaging_rows(res: dict[str, Any], rr: RawResource, pid: str | None,
                  endpoints: dict[str, str]) -> list[dict[str, Any]]:
    study_uid = _dicom_uid(res.get("identifier"))
    endpoint_urls = [endpoints[e] for e in (ref_id(x) for x in res.get("endpoint") or []) if e in endpoints]
    rows = []
    for series in res.get("series") or []:
        suid = series.get("uid")
        instances = series.get("instance") or []
        uids = tuple(i.get("uid") for i in instances if isinstance(i, dict))
        locs: list[str] = []
        for inst in instances:
            for ext in inst.get("extension") or []:
                if ext.get("url") == INSTANCE_LOCATION_URL and ext.get("valueUrl"):
                    locs.append(_resolve_location(ext["valueUrl"], rr.source))
        s_endpoints = [endpoints[e] for e in (ref_id(x) for x in series.get("endpoint") or []) if e in endpoints]
        wado = (s_endpoints or endpoint_urls or [None])[0]
        if locs:
            folders = {str(Path(x).parent) for x in locs if "://" not in x}
            location = locs[0] if len(locs) == 1 else (folders.pop() if len(folders) == 1 else locs[0])
        elif wado and study_uid and suid:
            location = f"{wado.rstrip('/')}/studies/{study_uid}/series/{suid}"
        else:
            location = None
        mod = series.get("modality") or {}
        body = series.get("bodySite") or {}
        rows.append({
            "patient_id": pid, "imaging_study_id": res.get("id"), "study_uid": study_uid, "series_uid": suid,
            "instance_uids": uids, "modality": mod.get("code"), "body_site": body.get("display") or body.get("code"),
            "view": _view(series), "description": series.get("description") or res.get("description"),
            "started": series.get("started") or res.get("started"), "n_instances": len(uids),
            "pixel_location": location, "instance_locations": tuple(locs),
            "encounter_id": ref_id(res.get("encounter")), "source": rr.source,
        })
    return rows


def _view(series: dict[str, Any]) -> str | None:
    for ext in series.get("extension") or []:
        if str(ext.get("url", "")).endswith("view-position"):
            return ext.get("valueString") or ext.get("valueCode")
    desc = (series.get("description") or "").upper().split()
    for v in ("PA", "AP", "LAT", "LL", "RL", "MLO", "CC"):
        if v in desc:
            return v
    return None


def age_years(birth: Any, until: Any) -> Any:
    """Age in years (one decimal) at ``until``: the one age computation of cds.

    Works on two scalars (``None`` when either is missing) or two Series (element-wise).

    >>> age_years("1950-06-01", "2020-06-01")
    70.0
    >>> age_years(None, "2020-06-01") is None
    True
    """
    if isinstance(birth, pd.Series) or isinstance(until, pd.Series):
        return ((until - birth).dt.days / 365.2425).round(1)
    if birth is None or until is None or pd.isna(birth) or pd.isna(until):
        return None
    return round((pd.Timestamp(until) - pd.Timestamp(birth)).days / 365.2425, 1)


def build_tables(resources: Iterable[RawResource], reference_date: str | date | None = None,
                 ) -> tuple[dict[str, pd.DataFrame], list[Problem]]:
    """Build the cohort tables. Returns ``(tables, dangling_reference_problems)``.

    ``age_years`` is the age at ``reference_date`` (default: today), or at death if earlier.
    References are matched by id, whether written ``Patient/x``, ``urn:uuid:x`` or as a URL.
    """
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in TABLE_COLUMNS}
    resources = list(resources)
    endpoints = {r.resource.get("id"): r.resource.get("address") for r in resources
                 if r.resource.get("resourceType") == "Endpoint" and r.resource.get("address")}
    patient_ids = {r.resource.get("id") for r in resources if r.resource.get("resourceType") == "Patient"}
    encounter_ids = {r.resource.get("id") for r in resources if r.resource.get("resourceType") == "Encounter"}
    dangling: list[Problem] = []

    for rr in resources:
        res = rr.resource
        rt = res.get("resourceType")
        if rt not in ("Patient", "Condition", "Observation", "MedicationRequest", "Encounter", "ImagingStudy"):
            continue
        rid = res.get("id")
        if rt == "Patient":
            dec = res.get("deceasedDateTime")
            name = None
            for n in res.get("name") or []:
                name = " ".join([*(n.get("given") or []), n.get("family") or ""]).strip() or n.get("text")
                if name:
                    break
            rows["patients"].append({
                "patient_id": rid, "sex": res.get("gender"), "birth_date": res.get("birthDate"),
                "deceased": bool(dec) or bool(res.get("deceasedBoolean")), "deceased_date": dec,
                "name": name, "source": rr.source,
            })
            continue
        pid = _patient_ref(res)
        if pid is None or pid not in patient_ids:
            field = next((f for f in _PATIENT_REF_FIELDS if f in res), "subject")
            target = (res.get(field) or {}).get("reference") if isinstance(res.get(field), dict) else None
            dangling.append(Problem(rr.source, rr.index, rt, rid, "dangling-reference",
                                    f"{rt}.{field} points at {target!r}, which is not a Patient in this cohort"))
        enc = ref_id(res.get("encounter")) if rt != "Encounter" else None
        if enc is not None and enc not in encounter_ids:
            dangling.append(Problem(rr.source, rr.index, rt, rid, "dangling-reference",
                                    f"{rt}.encounter points at {res['encounter'].get('reference')!r}, "
                                    "which is not an Encounter in this cohort"))
        if rt == "Condition":
            sys_, code, disp = _coding(res.get("code"))
            rows["conditions"].append({
                "patient_id": pid, "condition_id": rid, "code_system": sys_, "code": code, "display": disp,
                "onset": res.get("onsetDateTime") or _period(res.get("onsetPeriod"))[0],
                "abatement": res.get("abatementDateTime"),
                "clinical_status": _coding(res.get("clinicalStatus"))[1], "encounter_id": enc,
            })
        elif rt == "Observation":
            time = res.get("effectiveDateTime") or _period(res.get("effectivePeriod"))[0] or res.get("issued")
            cat = _coding((res.get("category") or [None])[0])[1]
            base = {"patient_id": pid, "observation_id": rid, "time": time, "category": cat,
                    "status": res.get("status"), "encounter_id": enc, "value": None, "value_string": None,
                    "comparator": None, "unit": None}
            comps = res.get("component") or []
            if comps and "valueQuantity" not in res:
                for comp in comps:
                    row = dict(base)
                    row["code_system"], row["code"], row["display"] = _coding(comp.get("code"))
                    _quantity(comp, row)
                    rows["observations"].append(row)
            else:
                row = dict(base)
                row["code_system"], row["code"], row["display"] = _coding(res.get("code"))
                _quantity(res, row)
                rows["observations"].append(row)
        elif rt == "MedicationRequest":
            sys_, code, disp = _coding(res.get("medicationCodeableConcept"))
            rows["medications"].append({
                "patient_id": pid, "medication_id": rid, "code_system": sys_, "code": code, "display": disp,
                "status": res.get("status"), "intent": res.get("intent"), "authored_on": res.get("authoredOn"),
                "encounter_id": enc,
            })
        elif rt == "Encounter":
            start, end = _period(res.get("period"))
            cls = res.get("class")
            rows["encounters"].append({
                "patient_id": pid, "encounter_id": rid, "class": cls.get("code") if isinstance(cls, dict) else None,
                "type": _first_display(res.get("type")), "status": res.get("status"), "start": start, "end": end,
                "reason": _first_display(res.get("reasonCode")),
            })
        elif rt == "ImagingStudy":
            rows["imaging"].extend(_imaging_rows(res, rr, pid, endpoints))

    tables = {}
    for name, cols in TABLE_COLUMNS.items():
        df = pd.DataFrame(rows[name], columns=cols)
        for c in _TIME_COLS[name]:
            df[c] = pd.to_datetime(df[c], format="ISO8601", utc=True, errors="coerce")
        tables[name] = df
    obs = tables["observations"]
    obs["value"] = pd.to_numeric(obs["value"], errors="coerce")
    pat = tables["patients"]
    ref = pd.Timestamp(reference_date or date.today(), tz="UTC")
    until = pat["deceased_date"].where(pat["deceased_date"] < ref, ref).fillna(ref)
    pat["age_years"] = age_years(pat["birth_date"], until)
    for name, sort in (("conditions", ["patient_id", "onset"]), ("observations", ["patient_id", "time", "code"]),
                       ("medications", ["patient_id", "authored_on"]), ("encounters", ["patient_id", "start"]),
                       ("imaging", ["patient_id", "started", "series_uid"]), ("patients", ["patient_id"])):
        tables[name] = tables[name].sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)
    return tables, dangling
