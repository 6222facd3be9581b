"""The one protocol every model task follows: ``predict(bundle, image, ehr) -> list[Finding]``.

A :class:`Task` turns one image (a :class:`cds.images.image.Image`: pixels plus LPS geometry and
DICOM identity in ``meta``) and the EHR values its card declares (:class:`cds.models.ehr_inputs.EhrInputs`)
into :class:`cds.finding.Finding` records. The reference tasks (one object per module under
:mod:`cds.models.tasks`, e.g. ``cds.models.tasks.pneumonia.TASK``) also ``train`` and ``evaluate``;
the generic kinds (:mod:`cds.models.generic`) only predict.

Identity. A Task reads the patient / study / series identity it stamps on its Findings from the
image itself (:func:`image_ref`: the DICOM header, or the file name for formats without one). A
caller that knows better — the registry knows the cohort's ImagingStudy row — replaces it with
:meth:`StudyRef.stamp`, which keeps everything else (and each Finding's own ``instance_uids``, e.g.
the slices a box spans) as the task wrote it.

>>> ref = StudyRef("p1", "1.2.3", "1.2.3.4", ("1.2.3.4.1",))
>>> from cds.finding import Finding
>>> f = Finding("", "", "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0", probability=0.2)
>>> g = ref.stamp([f])[0]
>>> (g.patient_id, g.study_uid, g.series_uid, g.instance_uids, g.probability)
('p1', '1.2.3', '1.2.3.4', ('1.2.3.4.1',), 0.2)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError

if TYPE_CHECKING:  # keep the import light: the CLI lists tasks without numpy / torch
    import numpy as np

    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["Task", "TrainableTask", "StudyRef", "image_ref"]


@dataclass(frozen=True)
class StudyRef:
    """Who and what a Finding is about: patient, study, series and the series' SOP Instance UIDs."""

    patient_id: str
    study_uid: str
    series_uid: str | None = None
    instance_uids: tuple[str, ...] = ()

    def stamp(self, findings: list[Finding]) -> list[Finding]:
        """The Findings with this identity; a Finding that names its own instances keeps them."""
        return [replace(f, patient_id=self.patient_id, study_uid=self.study_uid, series_uid=self.series_uid,
                        instance_uids=f.instance_uids or self.instance_uids) for f in findings]


def image_ref(image: Image) -> StudyRef:
    """The identity an image carries: DICOM PatientID / Study- / SeriesInstanceUID and SOP Instance UIDs
    (in slice order); for NIfTI or PNG files, which record none, the file name stands in for the study.

    >>> import numpy as np
    >>> from cds.images.image import Image
    >>> image_ref(Image(np.zeros((4, 4)), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), None, {}, "/data/cxr.png"))
    StudyRef(patient_id='', study_uid='cxr.png', series_uid=None, instance_uids=())
    """
    meta = image.meta
    uids = meta.get("sop_instance_uids") or ([meta["sop_instance_uid"]] if meta.get("sop_instance_uid") else [])
    return StudyRef(patient_id=str(meta.get("patient_id") or ""),
                    study_uid=str(meta.get("study_uid") or Path(str(image.source)).name),
                    series_uid=meta.get("series_uid"),
                    instance_uids=tuple(str(u) for u in uids if u))


class Task(ABC):
    """One kind of model output from one image (see the module docstring)."""

    #: the task name a model card's ``cds.task`` (or ``cds.kind``) names
    name: str = ""

    @abstractmethod
    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """Run ``bundle`` on ``image`` with ``ehr`` and return its Findings (identity from :func:`image_ref`).

        Raises :class:`cds.errors.ModelInputError` naming the input (``image`` or an EHR input name)
        when the input cannot be used.
        """

    def explain(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> np.ndarray | None:
        """An explanation map on the image's pixel grid (values in [0, 1]), or None when the task has none."""
        return None

    # -- batched cohort runs (cds.inference.stream) ---------------------------------------------
    def prepare(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> Any:
        """The CPU work on one image before the network (decode workers run it, ahead of the model).

        The default keeps the image itself; a batched task returns its network input (small, picklable).
        """
        return (image, ehr)

    def predict_batch(self, bundle: Bundle, prepared: list[Any]) -> list[list[Finding]]:
        """Findings of each :meth:`prepare` result, in order (identity from the image, as :meth:`predict`).

        The default calls :meth:`predict` per item. A batched task runs fixed-size forward passes
        (:data:`cds.inference.stream.BATCH_SIZE`, the last one padded), so an image's numbers never
        depend on which other images share its batch.
        """
        return [self.predict(bundle, image, ehr) for image, ehr in prepared]


class TrainableTask(Task):
    """A reference task: also trains its bundle and evaluates it on a data folder (``cds train`` / ``cds evaluate``)."""

    #: keyword arguments ``evaluate`` accepts beyond ``bundle_dir`` and ``n_boot``
    evaluate_options: tuple[str, ...] = ()

    @abstractmethod
    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """Write the bundle folder (model card included, performance from :meth:`evaluate`); returns its path."""

    @abstractmethod
    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """The card's metrics with 95 % bootstrap CIs on a data folder laid out like the task's ``shared/data`` set."""

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` without None values; one this task does not take raises ParameterError naming it.

        >>> class T(TrainableTask):
        ...     name, evaluate_options = "t", ("split",)
        ...     def predict(self, bundle, image, ehr): return []
        ...     def train(self, data_dir, out_dir, *, seed=0, quick=False): return Path(out_dir)
        ...     def evaluate(self, data_dir, *, bundle_dir=None, n_boot=2000, **options): return {}
        >>> T().check_options({"split": "test", "seed": None})
        {'split': 'test'}
        >>> T().check_options({"seed": 3})
        Traceback (most recent call last):
        ...
        cds.errors.ParameterError: seed: task 't' takes no option 'seed' (it takes: split)
        """
        given = {k: v for k, v in options.items() if v is not None}
        for k in given:
            if k not in self.evaluate_options:
                raise ParameterError(k, f"task {self.name!r} takes no option {k!r} (it takes: "
                                        f"{', '.join(self.evaluate_options) or 'none'})")
        return given
