"""A cohort: FHIR R4 patient records and their images, as tidy pandas tables, loaded in one call.

>>> import cds
>>> cohort = cds.load_cohort("fhir_samples", reference_date="2026-01-01")  # doctest: +SKIP
>>> cohort.summary()["patients"]                                         # doctest: +SKIP
57
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from cds.sources.fhir_read import Problem, RawResource, read_resources, read_server
from cds.sources.tables import TABLE_COLUMNS, build_tables

__all__ = ["Cohort", "load_cohort", "PatientRecord"]

log = logging.getLogger(__name__)


@dataclass
class PatientRecord:
    """One patient's rows of every table (see :meth:`Cohort.patient`)."""

    patient_id: str
    patient: pd.Series
    conditions: pd.DataFrame
    observations: pd.DataFrame
    medications: pd.DataFrame
    encounters: pd.DataFrame
    imaging: pd.DataFrame


@dataclass
class Cohort:
    """Patients, conditions, observations, medications, encounters and imaging as DataFrames.

    ``problems`` lists every resource or file that could not be used (invalid JSON, failed R4
    validation, dangling references); valid resources still load.
    """

    patients: pd.DataFrame
    conditions: pd.DataFrame
    observations: pd.DataFrame
    medications: pd.DataFrame
    encounters: pd.DataFrame
    imaging: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    reference_date: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    _groups: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def invalid_resources(self) -> list[Problem]:
        """Problems that made a resource or file unusable (not dangling references)."""
        return [p for p in self.problems if p.kind != "dangling-reference"]

    @property
    def dangling_references(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == "dangling-reference"]

    def tables(self) -> dict[str, pd.DataFrame]:
        """All tables by name."""
        return {name: getattr(self, name) for name in TABLE_COLUMNS}

    def summary(self) -> dict[str, Any]:
        """Counts for a quick look (what ``cds cohort summary --json`` prints)."""
        img = self.imaging
        return {
            "source": self.source,
            "patients": int(len(self.patients)),
            "imaging_studies": int(img["imaging_study_id"].nunique()) if len(img) else 0,
            "imaging_series": int(len(img)),
            "images_with_pixels": int(img["pixel_location"].notna().sum()) if len(img) else 0,
            "observations": int(len(self.observations)),
            "conditions": int(len(self.conditions)),
            "medications": int(len(self.medications)),
            "encounters": int(len(self.encounters)),
            "invalid_resources": len(self.invalid_resources),
            "dangling_references": len(self.dangling_references),
            "modalities": {str(k): int(v) for k, v in img["modality"].value_counts().sort_index().items()},
            "sex": {str(k): int(v) for k, v in self.patients["sex"].value_counts().sort_index().items()},
            "reference_date": self.reference_date,
        }

    def _index(self) -> dict[str, dict[str, Any]]:
        if self._groups is None:
            self._groups = {}
            for name in ("conditions", "observations", "medications", "encounters", "imaging"):
                df = getattr(self, name)
                self._groups[name] = {k: v.index.to_numpy() for k, v in df.groupby("patient_id", sort=False)}
        return self._groups

    def patient(self, patient_id: str) -> PatientRecord:
        """One patient's rows of every table (indexed once, so switching patients is cheap).

        Raises ``KeyError`` naming the id when the patient is not in the cohort.
        """
        hit = self.patients.index[self.patients["patient_id"] == patient_id]
        if len(hit) == 0:
            raise KeyError(f"patient {patient_id!r} is not in this cohort")
        idx = self._index()
        parts = {}
        for name in ("conditions", "observations", "medications", "encounters", "imaging"):
            df = getattr(self, name)
            rows = idx[name].get(patient_id)
            parts[name] = df.loc[rows] if rows is not None else df.iloc[0:0]
        return PatientRecord(patient_id, self.patients.loc[hit[0]], **parts)

    def problems_frame(self) -> pd.DataFrame:
        """The problems as a DataFrame (file, entry, resource type and id, kind, message)."""
        cols = ["source", "index", "resource_type", "resource_id", "kind", "message"]
        return pd.DataFrame([p.to_dict() for p in self.problems], columns=cols)


def _is_url(source: str) -> bool:
    return source.startswith("http://") or source.startswith("https://")


def load_cohort(source: str | Path, validate: bool = True, reference_date: str | date | None = None) -> Cohort:
    """Load a cohort from a Bundle file, a folder of bundles / ndjson, or a FHIR server base URL.

    Parameters
    ----------
    source
        A ``.json`` Bundle (or single resource), a ``.ndjson`` bulk-export file, a folder holding
        any of these (searched recursively), or a FHIR R4 server base URL (``http(s)://...``).
    validate
        Validate every resource with ``fhir.resources.R4B`` (default). Invalid resources are listed
        in ``Cohort.problems`` with file, entry index, type and message, and left out of the tables.
        ``False`` skips validation for speed (tables are built from the raw JSON either way).
    reference_date
        The date ages are computed at (default: today). Fix it for reproducible reports.

    Raises
    ------
    cds.errors.FhirInputError
        The source does not exist, holds no FHIR files, or the server cannot be reached.
    """
    from cds.sources.fhir_validate import validate_resource

    t0 = time.perf_counter()
    src = str(source)
    if _is_url(src):
        resources, problems = read_server(src)
    else:
        resources, problems = read_resources(src)
    t1 = time.perf_counter()
    if validate:
        kept: list[RawResource] = []
        for rr in resources:
            ok, msg = validate_resource(rr.resource)
            if ok:
                kept.append(rr)
            else:
                problems.append(Problem(rr.source, rr.index, rr.resource.get("resourceType"),
                                        rr.resource.get("id"), "validation", msg))
        resources = kept
    t2 = time.perf_counter()
    ref = str(reference_date or date.today())
    tables, dangling = build_tables(resources, reference_date=ref)
    t3 = time.perf_counter()
    problems.extend(dangling)
    cohort = Cohort(**tables, problems=problems, source=src, reference_date=ref,
                    timings={"read_s": t1 - t0, "validate_s": t2 - t1, "tables_s": t3 - t2})
    log.info("cohort loaded: %d patients, %d imaging series, %d problems in %.2f s",
             len(cohort.patients), len(cohort.imaging), len(problems), t3 - t0)
    return cohort
