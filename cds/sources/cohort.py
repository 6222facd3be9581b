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

from cds.errors import ParameterError
from cds.sources.fhir_read import Problem, RawResource, read_resources, read_server
from cds.sources.pixel_access import PixelAccess
from cds.sources.records import kind_group, problem_for
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

    ``problems`` lists every file, resource or value that could not be used (invalid JSON, failed R4
    validation, dangling or cross-patient references, impossible values, refused pixel locations;
    kinds in :data:`cds.sources.records.PROBLEM_KINDS`); valid data still loads.
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
    #: Where pixel locations of this cohort may lead (cohort root, image roots, allowed DICOMweb bases):
    #: ``cohort.pixel_access.resolve(location, "")`` re-checks a location before it is opened.
    pixel_access: PixelAccess = field(default_factory=PixelAccess)
    _groups: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def invalid_resources(self) -> list[Problem]:
        """Problems that made a file or a resource unusable (it is not in the tables)."""
        return [p for p in self.problems if kind_group(p.kind) in ("file", "resource")]

    @property
    def dangling_references(self) -> list[Problem]:
        """References to a Patient or Encounter the cohort does not have."""
        return [p for p in self.problems if p.kind == "dangling-reference"]

    @property
    def implausible_values(self) -> list[Problem]:
        """Resources kept with a value left out: impossible dates, wrong types, cross-patient links, refused
        pixel locations (everything that is neither an invalid resource nor a dangling reference)."""
        return [p for p in self.problems
                if kind_group(p.kind) not in ("file", "resource") and p.kind != "dangling-reference"]

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
            "implausible_values": len(self.implausible_values),
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

    def patient_row(self, patient_id: str) -> pd.Series | None:
        """The patient's row of ``patients`` (by an index built once), or None when not in the cohort."""
        idx = self._index()
        if "patients" not in idx:
            idx["patients"] = {str(k): i for i, k in zip(self.patients.index, self.patients["patient_id"], strict=True)}
        i = idx["patients"].get(str(patient_id))
        return None if i is None else self.patients.loc[i]

    def patient_rows(self, table: str, patient_id: str) -> pd.DataFrame:
        """The patient's rows of one table (``observations``, ``conditions``, ...), by the index built once."""
        rows = self._index()[table].get(patient_id)
        df = getattr(self, table)
        return df.loc[rows] if rows is not None else df.iloc[0:0]

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


def _reference_date(reference_date: str | date | None) -> str:
    """The reference date as ``YYYY-MM-DD``; :class:`ParameterError` naming ``reference_date`` if it is no date.

    >>> _reference_date("2026-01-01"), _reference_date(date(2020, 6, 2))
    ('2026-01-01', '2020-06-02')
    """
    if reference_date is None or reference_date == "":
        return str(date.today())
    if isinstance(reference_date, date):  # datetime and pandas.Timestamp too
        return reference_date.isoformat()[:10]
    text = str(reference_date).strip()
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ParameterError("reference_date", f"{reference_date!r} is not a date; give it as YYYY-MM-DD "
                                               "(e.g. 2026-01-01)") from None


def _cohort_root(src: str) -> Path | None:
    """Where pixel paths in the cohort's data may lead: the folder loaded (or the file's folder); the
    shipped sample cohort as a whole when a part of it is loaded (its bundles point into ``dicom/``)."""
    if _is_url(src):
        return None
    p = Path(src).resolve()
    root = p if p.is_dir() else p.parent
    from cds.locations import sample_cohort_dir

    sample = sample_cohort_dir()
    if sample is not None and (root == sample.resolve() or sample.resolve() in root.parents):
        return sample.resolve()
    return root


def load_cohort(source: str | Path, validate: bool = True, reference_date: str | date | None = None, *,
                dicomweb_hosts: list[str] | None = None, image_roots: list[str | Path] | None = None,
                max_file_mb: float | None = None) -> Cohort:
    """Load a cohort from a Bundle file, a folder of bundles / ndjson, or a FHIR server base URL.

    Parameters
    ----------
    source
        A ``.json`` Bundle (or single resource), a ``.ndjson`` bulk-export file, a folder holding
        any of these (searched recursively), or a FHIR R4 server base URL (``http(s)://...``).
    validate
        Validate every resource with ``fhir.resources.R4B`` (default). Invalid resources are listed
        in ``Cohort.problems`` with file, entry index, type and message, and left out of the tables.
        ``False`` skips validation for speed (tables are built from the raw JSON either way, and the
        plausibility checks of :mod:`cds.sources.plausibility` run in both cases).
    reference_date
        The date ages are computed at (default: today), ``YYYY-MM-DD``. Fix it for reproducible reports.
    dicomweb_hosts
        DICOMweb base URLs (``http://127.0.0.1:8042/dicom-web``) or ``host[:port]`` names that pixel
        URLs in the data (``Endpoint.address``, instance locations) may point at; added to
        ``$CDS_DICOMWEB_HOSTS``. None by default: any other URL is a ``location-refused`` problem.
    image_roots
        Folders besides the cohort root (the folder loaded, or the loaded file's folder) that local
        pixel paths may resolve into; added to ``$CDS_IMAGE_ROOTS`` (see :mod:`cds.sources.pixel_access`).
    max_file_mb
        Largest FHIR file read (default 512 MB or ``$CDS_MAX_FHIR_FILE_MB``); larger ones are a ``too-large`` problem.

    Raises
    ------
    cds.errors.FhirInputError
        The source does not exist, is no regular file, holds no FHIR files, or the server cannot be reached.
    cds.errors.ParameterError
        ``reference_date``, ``dicomweb_hosts``, ``image_roots`` or ``max_file_mb`` is not usable.
    """
    from cds.sources.fhir_validate import validate_resource

    t0 = time.perf_counter()
    src = str(source)
    ref = _reference_date(reference_date)
    access = PixelAccess.build(_cohort_root(src), image_roots, dicomweb_hosts)
    if _is_url(src):
        resources, problems = read_server(src, max_file_mb=max_file_mb)
    else:
        resources, problems = read_resources(src, max_file_mb=max_file_mb)
    t1 = time.perf_counter()
    if validate:
        kept: list[RawResource] = []
        for rr in resources:
            ok, msg = validate_resource(rr.resource)
            if ok:
                kept.append(rr)
            else:
                problems.append(problem_for(rr, "validation", msg))
        resources = kept
    t2 = time.perf_counter()
    tables, table_problems = build_tables(resources, reference_date=ref, access=access)
    t3 = time.perf_counter()
    problems.extend(table_problems)
    cohort = Cohort(**tables, problems=problems, source=src, reference_date=ref, pixel_access=access,
                    timings={"read_s": t1 - t0, "validate_s": t2 - t1, "tables_s": t3 - t2})
    log.info("cohort loaded: %d patients, %d imaging series, %d problems in %.2f s",
             len(cohort.patients), len(cohort.imaging), len(problems), t3 - t0)
    return cohort
