"""Imaging table rows: one per ImagingStudy series, with its pixel location checked by :mod:`cds.sources.pixel_access`.

:class:`RowContext` carries what rows need from the rest of the cohort (patients, encounters, allowed
endpoints) and collects the problems found while building them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from cds.codes import INSTANCE_LOCATION_URL
from cds.sources.fhir_values import as_str, dicom_uid, dicts, patient_ref, ref_id
from cds.sources.pixel_access import PixelAccess, is_dicom_uid
from cds.sources.plausibility import fhir_date
from cds.sources.records import Problem, RawResource, problem_for

__all__ = ["RowContext", "imaging_rows"]


class RowContext:
    """What one resource's rows need from the rest of the cohort, and where its problems go."""

    def __init__(self, resources: list[RawResource], access: PixelAccess, reference: date,
                 problems: list[Problem]) -> None:
        self.access = access
        self.reference = reference
        self.today = date.today()
        self.problems = problems
        self.endpoints: dict[str, str] = {}
        for r in resources:
            res = r.resource
            if res.get("resourceType") != "Endpoint" or not isinstance(res.get("id"), str) or not res.get("address"):
                continue
            url, why = access.url(res["address"]) if isinstance(res["address"], str) else (None, "not a string")
            if why:
                problems.append(problem_for(r, "location-refused", f"Endpoint.address refused: {why}; "
                                            "imaging studies using this endpoint get no pixels"))
            else:
                self.endpoints[res["id"]] = str(url)
        self.patient_ids = {r.resource.get("id") for r in resources if r.resource.get("resourceType") == "Patient"}
        self.encounter_patient = {r.resource.get("id"): patient_ref(r.resource) for r in resources
                                  if r.resource.get("resourceType") == "Encounter"}

    def add(self, rr: RawResource, kind: str, message: str) -> None:
        self.problems.append(problem_for(rr, kind, message))

    def date(self, rr: RawResource, value: Any, field: str) -> str | None:
        """``value`` when it is a FHIR date/dateTime; else ``None`` and an ``unparseable-date`` problem."""
        if value is None:
            return None
        _, why = fhir_date(value)
        if why:
            self.add(rr, "unparseable-date", f"{field} is {why}; left empty")
            return None
        return str(value)


def _series_location(res: dict[str, Any], series: dict[str, Any], s_i: int, rr: RawResource, ctx: RowContext,
                     study_uid: str | None) -> tuple[str | None, tuple[str, ...]]:
    """``(pixel_location, instance_locations)`` of one series; a refused location leaves the series without pixels."""
    locs: list[str] = []
    refused = False
    for j, inst in enumerate(dicts(series.get("instance"))):
        for ext in dicts(inst.get("extension")):
            if ext.get("url") != INSTANCE_LOCATION_URL or not ext.get("valueUrl"):
                continue
            loc, why = ctx.access.resolve(ext["valueUrl"], rr.source)
            if why:
                refused = True
                ctx.add(rr, "location-refused", f"ImagingStudy.series[{s_i}].instance[{j}] location refused: {why}; "
                                                "the series gets no pixels")
            else:
                locs.append(str(loc))
    if refused:
        return None, ()
    if locs:
        folders = {str(Path(x).parent) for x in locs if "://" not in x}
        return (locs[0] if len(locs) == 1 else (folders.pop() if len(folders) == 1 else locs[0])), tuple(locs)
    refs = dicts(series.get("endpoint")) or dicts(res.get("endpoint"))
    bases = [ctx.endpoints[e] for e in (ref_id(x) for x in refs) if e in ctx.endpoints]
    suid = series.get("uid")
    if not bases or not study_uid or not suid:
        return None, ()
    if not (is_dicom_uid(study_uid) and is_dicom_uid(suid)):
        ctx.add(rr, "location-refused", f"ImagingStudy.series[{s_i}]: study or series UID is not a DICOM UID "
                                        "(digits and dots); no DICOMweb URL is built from it")
        return None, ()
    url, why = ctx.access.url(f"{bases[0].rstrip('/')}/studies/{study_uid}/series/{suid}")
    if why:
        ctx.add(rr, "location-refused", f"ImagingStudy.series[{s_i}] URL refused: {why}")
    return url, ()


def imaging_rows(res: dict[str, Any], rr: RawResource, pid: str | None, ctx: RowContext,
                  encounter_id: str | None) -> list[dict[str, Any]]:
    study_uid = dicom_uid(res.get("identifier"))
    series_list = res.get("series") or []
    if not isinstance(series_list, list) or not all(isinstance(x, dict) for x in series_list):
        ctx.add(rr, "malformed", "ImagingStudy.series is not a list of objects; the study is left out")
        return []
    rows = []
    for s_i, series in enumerate(series_list):
        uids = tuple(as_str(i.get("uid")) for i in dicts(series.get("instance")))
        location, locs = _series_location(res, series, s_i, rr, ctx, study_uid)
        mod = series.get("modality") if isinstance(series.get("modality"), dict) else {}
        body = series.get("bodySite") if isinstance(series.get("bodySite"), dict) else {}
        started = ctx.date(rr, series.get("started"), f"ImagingStudy.series[{s_i}].started") or \
            ctx.date(rr, res.get("started"), "ImagingStudy.started")
        rows.append({
            "patient_id": pid, "imaging_study_id": res.get("id"), "study_uid": study_uid,
            "series_uid": as_str(series.get("uid")), "instance_uids": uids, "modality": as_str(mod.get("code")),
            "body_site": as_str(body.get("display")) or as_str(body.get("code")), "view": _view(series),
            "description": as_str(series.get("description")) or as_str(res.get("description")), "started": started,
            "n_instances": len(uids), "pixel_location": location, "instance_locations": locs,
            "encounter_id": encounter_id, "source": rr.source,
        })
    return rows


def _view(series: dict[str, Any]) -> str | None:
    for ext in dicts(series.get("extension")):
        if str(ext.get("url", "")).endswith("view-position"):
            return as_str(ext.get("valueString")) or as_str(ext.get("valueCode"))
    desc = (as_str(series.get("description")) or "").upper().split()
    for v in ("PA", "AP", "LAT", "LL", "RL", "MLO", "CC"):
        if v in desc:
            return v
    return None
