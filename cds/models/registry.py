"""The model registry: which models are available, their cards, and running one on a cohort.

Models are MONAI bundle folders (:mod:`cds.models.bundle`) found in

1. the built-in folder ``cds/models/bundles/`` (the reference models shipped with cds), and
2. the user's models directory: ``$CDS_MODELS_DIR`` (``os.pathsep``-separated list) or
   ``~/.cds/models`` — drop a bundle folder there (yours, or a downloaded MONAI Model Zoo bundle).

Running a model on a cohort reads each study's pixels, pulls the EHR inputs the card declares from
the cohort's FHIR tables (refusing with :class:`cds.errors.ModelInputError` naming a missing one),
and returns :class:`cds.finding.Finding` records plus one failure row per study that could not be
run — a cohort run never stops at one bad case.

>>> reg = ModelRegistry(user_dirs=[])
>>> "pneumonia" in reg.ids()
True
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import CdsError, ModelInputError, ParameterError
from cds.finding import Failure
from cds.locations import BUNDLES_DIR
from cds.models.bundle import Bundle, BundleError, load_bundle
from cds.models.ehr_inputs import ehr_inputs_for
from cds.models.tasks import TASK_MODULES

__all__ = ["ModelRegistry", "RunResult", "ehr_inputs_for", "BUILTIN_DIR", "TASK_MODULES"]


log = logging.getLogger(__name__)

BUILTIN_DIR = BUNDLES_DIR



def user_model_dirs() -> list[Path]:
    env = os.environ.get("CDS_MODELS_DIR")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.cds/models").expanduser()]


@dataclass
class RunResult:
    """Findings of a cohort run, and the studies that failed (with the reason)."""

    findings: list[Any] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def findings_frame(self) -> pd.DataFrame:
        cols = ["patient_id", "study_uid", "model_id", "code", "display", "probability", "value", "unit",
                "threshold", "interpretation", "id"]
        return pd.DataFrame([{k: f.to_dict()[k] for k in cols} for f in self.findings], columns=cols)

    def failures_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.to_dict() for f in self.failures],
                            columns=["patient_id", "study_uid", "model_id", "error", "message", "series_uid", "state"])


def with_study_context(findings: list[Any], row: Any, ehr: Any) -> list[Any]:
    """The Findings with the facts of their study row (ImagingStudy id, start, body site) and the ids of
    the Observations behind their EHR inputs: what the FHIR writer needs, carried forward."""
    started = getattr(row, "started", None)
    started_s = None if started is None or pd.isna(started) else pd.Timestamp(started).isoformat()
    sid = getattr(row, "imaging_study_id", None)
    site = getattr(row, "body_site", None)
    obs_ids = tuple(dict.fromkeys(getattr(ehr, "observation_ids", {}).values()))
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
            from cds.models import zoo

            kind = zoo.detect_zoo_bundle(b.path)
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
        b = self.get(model_id)
        return b.card.get("task") or model_id

    def list_models(self) -> pd.DataFrame:
        """One row per model: id, version, task, modality, intended use, threshold, headline metric."""
        rows = []
        for mid in self.ids():
            b = self._bundles[mid]
            card = b.card
            perf = (card.get("performance") or {}).get("metrics") or {}
            head = next(iter(perf.items()), (None, None))
            rows.append({
                "model_id": mid, "version": b.version, "task": card.get("task") or mid,
                "modality": ",".join(card.get("modality") or []) if isinstance(card.get("modality"), list)
                else card.get("modality"),
                "intended_use": card.get("intended_use") or b.metadata.get("description"),
                "threshold": card.get("threshold"), "indeterminate": card.get("indeterminate"),
                "headline_metric": head[0], "headline_value": (head[1] or {}).get("value") if head[1] else None,
                "headline_ci95": (head[1] or {}).get("ci95") if head[1] else None,
                "source": "built-in" if b.path.parent == BUILTIN_DIR else ("zoo" if not card else "user"),
                "path": str(b.path),
            })
        return pd.DataFrame(rows)

    # -- running -------------------------------------------------------------------------------

    def _eligible(self, card: dict[str, Any], imaging: pd.DataFrame) -> pd.DataFrame:
        mods = card.get("modality")
        if mods:
            mods = [mods] if isinstance(mods, str) else list(mods)
            imaging = imaging[imaging["modality"].isin(mods)]
        return imaging

    def run(self, model_id: str, cohort: Any, studies: pd.DataFrame | None = None,
            progress: bool = False, artifacts_dir: str | Path | None = None) -> RunResult:
        """Run a model on the cohort's imaging series (or the given rows of ``cohort.imaging``).

        With ``artifacts_dir``, explanation maps (GradCAM) are saved there as ``<finding id>.npy``
        and referenced from ``Finding.extra["heatmap"]`` so viewers can overlay them.
        """
        from cds.images.read import read_image

        b = self.get(model_id)
        card = b.card
        task = self.task_of(model_id)
        rows = self._eligible(card, cohort.imaging if studies is None else studies)
        result = RunResult()
        it = rows.itertuples(index=False)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(rows), desc=model_id)
        for r in it:
            try:
                if not isinstance(r.pixel_location, str) or not r.pixel_location:
                    raise ModelInputError("image", "the ImagingStudy says nowhere where its pixels are")
                ehr = ehr_inputs_for(card, cohort, r.patient_id, r.started)
                image = read_image(r.pixel_location, series_uid=r.series_uid, modality=r.modality)
                found = self.run_one(b, task, image, ehr, r.patient_id, r.study_uid, r.series_uid,
                                     tuple(r.instance_uids), artifacts_dir=artifacts_dir)
                result.findings.extend(with_study_context(found, r, ehr))
            except CdsError as exc:
                result.failures.append(Failure(r.patient_id, r.study_uid, model_id, type(exc).__name__, str(exc),
                                               r.series_uid))
            except Exception as exc:  # noqa: BLE001 - one bad case must not stop a cohort run
                log.warning("model %s failed on a study: %s", model_id, type(exc).__name__)
                result.failures.append(Failure(r.patient_id, r.study_uid, model_id, type(exc).__name__, str(exc),
                                               r.series_uid))
        return result

    def run_one(self, b: Bundle, task: str, image: Any, ehr: dict[str, Any], patient_id: str, study_uid: str,
                series_uid: str | None, instance_uids: tuple[str, ...],
                artifacts_dir: str | Path | None = None) -> list[Any]:
        """Run one bundle on one image (a :class:`cds.images.image.Image`) and return its Findings."""
        if not b.card:
            from cds.models import zoo

            return zoo.run_zoo_bundle(b.path, image, patient_id, study_uid, series_uid, instance_uids)
        if task not in TASK_MODULES:
            raise ParameterError("task", f"model {b.model_id!r} declares unknown task {task!r}")
        mod = importlib.import_module(TASK_MODULES[task])
        if task == "ct-lung-nodule":
            pred = mod.predict(b, image.array, image.spacing, image.origin, image.direction)
        elif task == "cmr-function":
            if image.array.ndim != 4:
                raise ModelInputError("image", f"cmr-function needs a cine short-axis stack (frames, slices, rows, "
                                               f"cols); got an array of shape {image.array.shape}")
            spacing = [float(s) for s in image.spacing][-3:]
            pred = mod.predict(b, image.array, {"pixel_spacing_mm": spacing[1:], "slice_thickness_mm":
                                                image.meta.get("slice_thickness_mm", spacing[0]),
                                                "spacing_between_slices_mm": spacing[0]})
        else:
            pred = mod.predict(b, image.array, ehr)
        findings = mod.to_findings(b, pred, patient_id, study_uid, series_uid, list(instance_uids), ehr)
        cam = pred.get("gradcam") if isinstance(pred, dict) else None
        if artifacts_dir is not None and cam is not None and float(np.max(cam)) > 0:
            out = Path(artifacts_dir)
            out.mkdir(parents=True, exist_ok=True)
            saved = []
            for f in findings:
                path = out / f"{f.id}.npy"
                np.save(path, np.asarray(cam, dtype=np.float16))
                saved.append(replace(f, extra={**f.extra, "heatmap": str(path)}))
            findings = saved
        return findings
