"""The model registry: which models are available, their cards, and running one on a cohort.

Models are MONAI bundle folders (:mod:`cds.models.bundle`) found in

1. the built-in folder ``cds/models/bundles/`` (the reference models shipped with cds), and
2. the user's models directory: ``$CDS_MODELS_DIR`` (``os.pathsep``-separated list) or
   ``~/.cds/models`` — drop a bundle folder there (yours, or a downloaded MONAI Model Zoo bundle).

Each model runs through one task object (:meth:`ModelRegistry.task_for`): its card's ``task`` in
:data:`cds.models.task_table.TASKS`, its ``kind`` in :data:`cds.models.generic.KINDS`, or, for a
bundle without a cds card, its Model Zoo adapter in :data:`cds.models.zoo.ZOO_TASKS`; all of them
``predict(bundle, image, ehr) -> list[Finding]``.

Running a model on a cohort (:meth:`ModelRegistry.run`) reads each study's pixels, pulls the EHR
inputs the card declares from the cohort's FHIR tables (refusing with :class:`cds.errors.ModelInputError`
naming a missing one), runs :meth:`ModelRegistry.run_image` with the ImagingStudy row's identity,
and returns :class:`cds.finding.Finding` records plus one :class:`cds.finding.Failure` per study
that could not be run — a cohort run never stops at one bad case.

>>> reg = ModelRegistry(user_dirs=[])
>>> "pneumonia" in reg.ids()
True
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ModelInputError, ParameterError, StudyTimeLimitError
from cds.finding import Failure, Finding
from cds.locations import BUNDLES_DIR
from cds.models.bundle import Bundle, BundleError, load_bundle
from cds.models.ehr_inputs import EhrInputs, ehr_inputs_for
from cds.models.generic import KINDS
from cds.models.task import StudyRef, Task
from cds.models.task_table import TASKS
from cds.models.vouch import (
    StudyFacts,
    check_intended_use,
    check_quality,
    check_record,
    facts_for,
)
from cds.models.zoo import ZOO_TASKS, detect_zoo_bundle

__all__ = ["ModelRegistry", "RunResult", "ehr_inputs_for", "BUILTIN_DIR", "TASKS", "KINDS", "study_ref"]


log = logging.getLogger(__name__)

BUILTIN_DIR = BUNDLES_DIR

#: Seconds one study may take in a cohort run before it is recorded as failed (``$CDS_STUDY_TIME_LIMIT_S``).
DEFAULT_STUDY_TIME_LIMIT_S = 600.0


def user_model_dirs() -> list[Path]:
    """``$CDS_MODELS_DIR`` (``os.pathsep``-separated) or ``~/.cds/models``."""
    env = os.environ.get("CDS_MODELS_DIR")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.cds/models").expanduser()]


@dataclass
class RunResult:
    """Findings of a cohort run, and the studies that failed (with the reason)."""

    findings: list[Finding] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def findings_frame(self) -> pd.DataFrame:
        """One row per Finding: identity, code, score, threshold, interpretation, id."""
        cols = ["patient_id", "study_uid", "model_id", "code", "display", "probability", "value", "unit",
                "threshold", "interpretation", "id"]
        return pd.DataFrame([{k: f.to_dict()[k] for k in cols} for f in self.findings], columns=cols)

    def failures_frame(self) -> pd.DataFrame:
        """One row per failed study: identity, error class, message naming the input."""
        return pd.DataFrame([f.to_dict() for f in self.failures],
                            columns=["patient_id", "study_uid", "model_id", "error", "message", "series_uid", "state"])


def study_ref(row: Any) -> StudyRef:
    """The identity of a ``cohort.imaging`` row (patient, study, series, instance UIDs)."""
    uids = getattr(row, "instance_uids", ()) or ()
    return StudyRef(str(row.patient_id), str(row.study_uid), getattr(row, "series_uid", None),
                    tuple(str(u) for u in uids))


def with_study_context(findings: list[Finding], row: Any, ehr: Any) -> list[Finding]:
    """The Findings with the facts of their study row (ImagingStudy id, start, body site) and the ids of
    the Observations behind their EHR inputs: what the FHIR writer needs, carried forward."""
    started = getattr(row, "started", None)
    started_s = None if started is None or pd.isna(started) else pd.Timestamp(started).isoformat()
    sid = getattr(row, "imaging_study_id", None)
    site = getattr(row, "body_site", None)
    sources = getattr(ehr, "observation_ids", {})
    obs_ids = tuple(dict.fromkeys(sources[k] for k in sorted(sources)))  # by source key: a stable order
    return [replace(f, imaging_study_id=sid if isinstance(sid, str) else None, study_started=started_s,
                    study_body_site=site if isinstance(site, str) else None, ehr_observation_ids=obs_ids)
            for f in findings]


class ModelRegistry:
    """Built-in and user models by id (see module docstring)."""

    def __init__(self, user_dirs: list[str | Path] | None = None) -> None:
        self.dirs = [BUILTIN_DIR, *(Path(d) for d in (user_model_dirs() if user_dirs is None else user_dirs))]
        self._bundles: dict[str, Bundle] = {}
        self.errors: list[str] = []
        for d in self.dirs:
            if not d.is_dir():
                continue
            for sub in sorted(d.iterdir()):
                if not sub.is_dir() or sub.name.startswith((".", "_")):
                    continue
                if not (sub / "configs" / "metadata.json").exists():
                    self.errors.append(f"{sub}: not a MONAI bundle (configs/metadata.json missing); "
                                       "copy the whole bundle folder (configs/, models/) here")
                    continue
                try:
                    b = load_bundle(sub)
                except BundleError as exc:
                    self.errors.append(str(exc))
                    continue
                self._bundles.setdefault(self._id_of(b), b)

    @staticmethod
    def _id_of(b: Bundle) -> str:
        if not b.card:
            kind = detect_zoo_bundle(b.path)
            if kind:
                return kind
        return b.model_id

    def ids(self) -> list[str]:
        return sorted(self._bundles)

    def get(self, model_id: str) -> Bundle:
        if model_id not in self._bundles:
            raise ParameterError("model", f"unknown model {model_id!r}; available: {', '.join(self.ids())}")
        return self._bundles[model_id]

    def task_of(self, model_id: str) -> str:
        """The task or kind name a model runs as (its card's ``task``, else ``kind``, else its zoo name)."""
        b = self.get(model_id)
        return b.model_card.task or b.model_card.kind or model_id

    def task_for(self, model_id: str) -> Task:
        """The task object that runs ``model_id``: a reference task (card ``task``), a generic kind (card
        ``kind``) or a Model Zoo adapter (a bundle without a cds card)."""
        b = self.get(model_id)
        card = b.model_card
        if not b.card:
            if model_id in ZOO_TASKS:
                return ZOO_TASKS[model_id]
            raise ParameterError("model", f"{model_id!r} ({b.path}) has no cds section in configs/metadata.json "
                                          f"and is not a supported Model Zoo bundle; declare a cds.kind "
                                          f"({', '.join(KINDS)})")
        if card.task:
            if card.task not in TASKS:
                raise ParameterError("task", f"model {model_id!r} declares unknown task {card.task!r}; reference "
                                             f"tasks: {', '.join(TASKS)} (or declare a generic cds.kind: "
                                             f"{', '.join(KINDS)})")
            return TASKS[card.task]
        if card.kind not in KINDS:
            raise ParameterError("kind", f"model {model_id!r} declares {'kind ' + repr(card.kind) if card.kind else 'neither task nor kind'}; "
                                         f"generic kinds: {', '.join(KINDS)}")
        return KINDS[card.kind]

    def list_models(self) -> pd.DataFrame:
        """One row per model: id, version, task, modality, intended use, threshold, headline metric."""
        rows = []
        for mid in self.ids():
            b = self._bundles[mid]
            card = b.model_card
            head, m = card.headline_metric
            rows.append({
                "model_id": mid, "version": b.version, "task": self.task_of(mid),
                "modality": ",".join(card.modality) or None,
                "intended_use": card.intended_use or b.metadata.get("description"),
                "threshold": card.threshold, "indeterminate": list(card.indeterminate) if card.indeterminate else None,
                "headline_metric": head, "headline_value": m.get("value"), "headline_ci95": m.get("ci95"),
                "source": "built-in" if b.path.parent == BUILTIN_DIR else ("zoo" if not b.card else "user"),
                "path": str(b.path),
            })
        return pd.DataFrame(rows)

    # -- running -------------------------------------------------------------------------------

    def _eligible(self, b: Bundle, imaging: pd.DataFrame) -> pd.DataFrame:
        mods = b.model_card.modality
        return imaging[imaging["modality"].isin(mods)] if mods else imaging

    def models_for(self, cohort: Any) -> list[str]:
        """The models meant for the cohort's studies: those whose card declares an intended use
        (``intended_for``) that at least one of the cohort's imaging series meets on its record alone
        (modality, patient age, view, body part; pixels are checked when the model runs). The default
        models of the report and the explorer. A model whose required EHR inputs (e.g. the patient's age)
        no study of the cohort has is not meant for it either.

        >>> import cds
        >>> ModelRegistry(user_dirs=[]).models_for(cds.load_cohort("fhir_samples", reference_date="2026-01-01"))
        ['cxr-cardiomegaly', 'cxr-icu']
        """
        imaging = cohort.imaging
        births = _birth_dates(cohort)
        chosen = []
        for mid in self.ids():
            card = self._bundles[mid].model_card
            if not card.intended_for.declared:
                continue
            for r in self._eligible(self._bundles[mid], imaging).itertuples(index=False):
                try:
                    check_intended_use(card, None, facts_for(r, age_years=_age_at(births, r)))
                    ehr_inputs_for(card, cohort, r.patient_id, r.started)  # a required EHR input the cohort lacks
                except ModelInputError:
                    continue
                chosen.append(mid)
                break
        return chosen

    def run(self, model_id: str, cohort: Any, studies: pd.DataFrame | None = None,
            progress: bool = False, artifacts_dir: str | Path | None = None,
            time_limit_s: float | None = None, *, workers: int | None = None, batch_size: int | None = None,
            explain: str | None = None, cache: Any = None, stats: Any = None) -> RunResult:
        """Run a model on the cohort's imaging series (or the given rows of ``cohort.imaging``).

        Each series: read its pixels, pull the card's EHR inputs, the checks of :mod:`cds.models.vouch`
        against the ImagingStudy row (:meth:`vouch`), then the task with the row's identity, then
        :func:`with_study_context`. A study the model must not answer for becomes a
        :class:`Failure` whose ``state`` says why (``record-mismatch``, ``input-rejected``,
        ``outside-intended-use``); one that errors or runs past ``time_limit_s`` seconds
        (default ``$CDS_STUDY_TIME_LIMIT_S`` or :data:`DEFAULT_STUDY_TIME_LIMIT_S`) is ``failed``. With
        ``artifacts_dir``, explanation maps (GradCAM) are saved there as ``<finding id>.npy`` and
        referenced from ``Finding.extra["heatmap"]`` so viewers can overlay them — by default only for
        studies with a positive or indeterminate Finding (``explain``: none / positives / all).

        The studies stream through :func:`cds.inference.stream.stream_run`: ``workers`` decode
        processes ahead of batched forward passes of ``batch_size``; with ``cache`` (a
        :class:`cds.inference.cache.ResultCache`) stored answers are reused and new ones stored.
        Findings and failures come back in row order, whatever the workers and batches.
        """
        from cds.inference.stream import BATCH_SIZE, stream_run

        b = self.get(model_id)
        rows = self._eligible(b, cohort.imaging if studies is None else studies)
        return stream_run(self, model_id, cohort, rows, progress=progress, artifacts_dir=artifacts_dir,
                          time_limit_s=time_limit_s, batch_size=batch_size or BATCH_SIZE, workers=workers,
                          explain=explain, cache=cache, stats=stats)

    def vouch(self, model_id: str, image: Any, ehr: EhrInputs | dict[str, Any] | None,
              facts: StudyFacts | None, check_identity: bool = True) -> tuple[EhrInputs, list[str]]:
        """The checks of :mod:`cds.models.vouch` before a model may answer for ``image``: the image must be
        its record's (``facts``; skipped with ``check_identity`` False), inside the card's intended use and
        pass the quality gate, and the card's required EHR inputs must be there. Raises a
        :class:`cds.errors.NoAnswer` subclass or :class:`ModelInputError`; returns the EHR inputs (optional
        missing ones as None) and the checks' warnings."""
        b = self.get(model_id)
        warnings = check_record(image, facts) if facts is not None and check_identity else []
        facts = _with_ehr_age(facts, b.model_card, ehr)
        warnings += check_intended_use(b.model_card, image, facts)
        warnings += check_quality(b.model_card, image)
        ehr = ehr if isinstance(ehr, EhrInputs) else EhrInputs(ehr or {})
        for spec in b.model_card.ehr_inputs:
            name, source = spec["name"], spec.get("source")
            if name not in ehr and source not in ehr:
                if spec.get("required", True):
                    raise ModelInputError(name, f"model {model_id!r} needs EHR input {name!r} ({source})")
                ehr[name] = None
        return ehr, warnings

    def attach_explanation(self, model_id: str, image: Any, ehr: Any, findings: list[Finding],
                           artifacts_dir: str | Path) -> list[Finding]:
        """The Findings with the task's explanation map saved as ``<artifacts_dir>/<finding id>.npy``
        (float16) and named in ``extra["heatmap"]`` (and the GradCAM peak pixel); unchanged when the task
        has no map or it is empty."""
        task = self.task_for(model_id)
        cam = task.explain(self.get(model_id), image, ehr) if findings else None
        if cam is None or float(np.max(cam)) <= 0:
            return findings
        out = Path(artifacts_dir)
        out.mkdir(parents=True, exist_ok=True)
        peak = [int(v) for v in np.unravel_index(int(np.argmax(cam)), np.shape(cam))] if np.ndim(cam) == 2 else None
        saved = []
        for f in findings:
            path = out / f"{f.id}.npy"
            np.save(path, np.asarray(cam, dtype=np.float16))
            extra = {**f.extra, "heatmap": str(path)}
            if peak is not None and "gradcam_peak_pixel" not in extra:
                extra["gradcam_peak_pixel"] = peak
            saved.append(replace(f, extra=extra))
        return saved

    def run_image(self, model_id: str, image: Any, ehr: EhrInputs | dict[str, Any] | None = None,
                  ref: StudyRef | None = None, artifacts_dir: str | Path | None = None,
                  facts: StudyFacts | None = None, check_identity: bool = True) -> list[Finding]:
        """Run one model on one :class:`cds.images.image.Image` and return its Findings.

        First the checks of :meth:`vouch` (:mod:`cds.models.vouch`): with ``facts`` (what the FHIR record
        says of the series) the image must be that record's (:func:`~cds.models.vouch.check_record`;
        ``check_identity`` False skips it when ``facts`` come from the user, not a record, as in
        ``cds run --age``); the study must be inside the card's intended use and the pixels must pass the
        quality gate — otherwise a :class:`cds.errors.NoAnswer` subclass is raised and no Finding is made.
        Warnings of the checks (facts not recorded) are carried in ``Finding.extra["warnings"]``.

        ``ehr`` holds the card's EHR inputs (by name); a declared required one that is missing raises
        :class:`ModelInputError` naming it. ``ref`` (the cohort's identity for the series) replaces the
        identity the image carries. With ``artifacts_dir``, the task's explanation map is saved (see :meth:`run`).
        """
        b = self.get(model_id)
        task = self.task_for(model_id)
        ehr, warnings = self.vouch(model_id, image, ehr, facts, check_identity)
        findings = task.predict(b, image, ehr)
        if warnings:
            findings = [replace(f, extra={**f.extra, "warnings": [*f.extra.get("warnings", []), *warnings]})
                        for f in findings]
        if ref is not None:
            findings = ref.stamp(findings)
        if artifacts_dir is not None and findings:
            findings = self.attach_explanation(model_id, image, ehr, findings, artifacts_dir)
        return findings


def _read_series(row: Any, read_image: Any, access: Any = None) -> Any:
    """The pixels of a ``cohort.imaging`` row. A folder or DICOMweb location may hold several series: the
    row's series (and modality) is the one read. A single file holds one: it is read as it is, so that
    :func:`cds.models.vouch.check_record` compares all of its identity (patient first) with the record.

    With the cohort's ``access`` policy (:class:`cds.sources.pixel_access.PixelAccess`) the location is
    checked again just before it is opened (a file swapped for a link out of the cohort root since loading
    is refused)."""
    loc = str(row.pixel_location)
    if access is not None:
        access.require(loc)
    if not loc.startswith(("http://", "https://")) and Path(loc).is_file():
        return read_image(loc)
    return read_image(loc, series_uid=row.series_uid, modality=row.modality)


def _with_ehr_age(facts: StudyFacts | None, card: Any, ehr: Any) -> StudyFacts | None:
    """``facts`` with the patient's age from an EHR input the card takes from ``patient.age_years`` (e.g.
    ``cds run ... --ehr age=61``) when the facts record none."""
    if facts is not None and facts.age_years is not None:
        return facts
    for spec in card.ehr_inputs:
        value = (ehr or {}).get(spec.get("name")) if spec.get("source") == "patient.age_years" else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            return replace(facts or StudyFacts(""), age_years=float(value))
    return facts


def _failure(row: Any, model_id: str, version: str | None, exc: BaseException, state: str = "failed") -> Failure:
    """The :class:`Failure` of one ``cohort.imaging`` row, with the study facts the FHIR writer cites."""
    started = getattr(row, "started", None)
    sid = getattr(row, "imaging_study_id", None)
    return Failure(row.patient_id, row.study_uid, model_id, type(exc).__name__,
                   str(exc), row.series_uid, state=state, model_version=version,
                   imaging_study_id=sid if isinstance(sid, str) else None,
                   study_started=None if started is None or pd.isna(started) else pd.Timestamp(started).isoformat())


def _birth_dates(cohort: Any) -> dict[str, Any]:
    """Patient id -> birth date of the cohort's patients (read once per run, not once per study)."""
    patients = getattr(cohort, "patients", None)
    if patients is None or not len(patients) or "birth_date" not in patients.columns:
        return {}
    return dict(zip(patients["patient_id"].astype(str), patients["birth_date"], strict=True))


def _dicom_ids(cohort: Any) -> dict[str, tuple[str, ...]]:
    """Patient id -> the DICOM PatientIDs its Patient.identifier declares (the ``dicom_patient_ids`` column)."""
    pat = getattr(cohort, "patients", None)
    if pat is None or "dicom_patient_ids" not in pat:
        return {}
    return {str(p): tuple(v) for p, v in zip(pat["patient_id"], pat["dicom_patient_ids"], strict=True)
            if isinstance(v, tuple | list) and v}


def _age_at(births: dict[str, Any], row: Any) -> float | None:
    """The patient's age in years at the study's start (None when birth date or start is unknown)."""
    from cds.sources.tables import age_years

    born = births.get(str(row.patient_id))
    started = getattr(row, "started", None)
    if born is None or started is None or pd.isna(started) or pd.isna(born):
        return None
    age = age_years(born, started)
    return None if age is None or pd.isna(age) or age < 0 else float(age)


def _cohort_root(cohort: Any) -> Path | None:
    """The cohort's folder (where ``dicom_id_map.csv`` may lie), when it was loaded from one."""
    src = str(getattr(cohort, "source", "") or "")
    if not src or src.startswith(("http://", "https://")):
        return None
    p = Path(src)
    return p if p.is_dir() else (p.parent if p.exists() else None)


def _time_limit(seconds: float | None) -> float | None:
    if seconds is None:
        env = os.environ.get("CDS_STUDY_TIME_LIMIT_S")
        try:
            seconds = float(env) if env else DEFAULT_STUDY_TIME_LIMIT_S
        except ValueError:
            raise ParameterError("CDS_STUDY_TIME_LIMIT_S", f"{env!r} is not a number of seconds") from None
    if seconds != seconds or seconds < 0:
        raise ParameterError("time_limit_s", f"{seconds!r}: expected seconds >= 0 (0 = no limit)")
    return seconds or None


@contextmanager
def _deadline(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`StudyTimeLimitError` in the main thread when the block runs past ``seconds``
    (SIGALRM; elsewhere, or on platforms without it, the block runs unlimited)."""
    usable = (seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise StudyTimeLimitError(what, f"ran past the per-study time limit of {seconds:g} s "
                                        "(set CDS_STUDY_TIME_LIMIT_S to change it)")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
