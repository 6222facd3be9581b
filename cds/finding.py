"""The one record every model output becomes: a :class:`Finding`.

A Finding says *what* (a coded concept), *how sure* (probability or value against the model's
operating threshold and indeterminate band), *where in the patient* (a point, box or mask in
patient LPS millimetres), *which model* (id + version) and *from which inputs* (study/series
UIDs and the EHR values the model used). Widgets, reports and the FHIR writer read Findings;
they never call a model directly.

Examples
--------
>>> f = Finding(
...     patient_id="p1", study_uid="1.2.3", code_system="http://snomed.info/sct",
...     code="8186001", display="Cardiomegaly", probability=0.81, threshold=0.5,
...     indeterminate=(0.4, 0.6), model_id="cxr-cardiomegaly", model_version="1.0.0")
>>> f.interpretation
'positive'
>>> Finding.from_dict(f.to_dict()) == f
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Interpretation = Literal["positive", "negative", "indeterminate", "measured"]
LocationKind = Literal["point", "box", "mask"]

__all__ = ["Finding", "Failure", "FAILURE_STATES", "FAILURE_LABELS", "Location", "interpret", "EXTRA_KEYS"]

EXTRA_KEYS: dict[str, str] = {
    # explanation
    "heatmap": "path of a saved explanation map (.npy, float16, the image's grid) for viewer overlays",
    "gradcam_peak_pixel": "[row, col] of the GradCAM maximum (pneumonia, cxr-cardiomegaly)",
    "gradcam_layer": "name of the layer GradCAM was computed at",
    "contributions": "{feature: standardised value x weight} of a linear model's score (cxr-icu)",
    "image_features": "{name: value} of the image features a model used (cxr-icu)",
    "proxy_for": "what the model's label stands in for (cxr-cardiomegaly: echo-confirmed LV abnormality)",
    # classification
    "class_probabilities": "{class label: probability} of a multi-class model",
    "activation": "how class outputs were turned into probabilities when they need not sum to 1 (zoo breast)",
    "dense": "whether the BI-RADS category is dense (C or D) (zoo breast density)",
    # detection: boxes and points (the box itself is Finding.location)
    "centre_lps": "centre of a detected region in patient LPS mm [x, y, z] (ct-lung-nodule, zoo lung, box-detection)",
    "box_voxel": "the box in voxel indices [k0, j0, i0, k1, j1, i1] (ct-lung-nodule)",
    "characterisation": ("what the nodule characterisation model said of a detected nodule (ct-lung-nodule): "
                         "{diameter_mm, volume_mm3, likelihood, size_category, found, vouched, reasons, model} "
                         "or {error}"),
    "size_mm": "box edge lengths in mm [x, y, z] (zoo lung)",
    "diameter_mm": "longest diameter of a detected region in mm",
    "volume_ml": "volume of a detected or segmented region in mL",
    "rank": "rank of a detection among the image's detections (1 = highest score)",
    "label": "the detector's class label index of a box (zoo lung)",
    "box_source": "how the box was derived from the network output (zoo lung)",
    "level": "'image' (the image-level score) or 'candidate' (one region) (mammo-abnormality)",
    "n_called": "number of candidate regions at or above the threshold in the image (mammo-abnormality)",
    "radius_px": "radius of a candidate region in pixels (mammo-abnormality)",
    "body_site": "a body-site text or {code_system, code, display} more specific than the model card's",
    # mammography image facts
    "chest_wall": "side of the image the chest wall was found on ('left' / 'right')",
    "pectoral_found": "whether the pectoral muscle was found and removed (mammo-density)",
    # segmentation measurements (zoo ventricular)
    "label_value": "the label value of the structure in the segmentation",
    "area_mm2": "the structure's area per plane (slice or frame) in mm^2",
    "pixel_spacing_mm": "[row, col] pixel spacing the areas were computed with",
    "slice_spacing_mm": "slice spacing a volume was computed with",
    "frame_index_of_largest": "the frame (or slice) with the largest area",
    "fractional_area_change": "(max - min) / max area over the frames of a cine plane",
    # cardiac function (cmr-function, zoo ventricular cine)
    "ef_category": "'reduced' / 'indeterminate' / 'not reduced' ejection fraction against the band below",
    "reduced_below_pct": "EF (%) below which the EF counts as reduced",
    "indeterminate_pct": "[low, high] EF (%) band reported as indeterminate",
    "ed_frame": "index of the end-diastolic frame",
    "es_frame": "index of the end-systolic frame",
    "mid_slices": "indices of the mid-ventricular slices strain was measured on",
    "warnings": "list of texts: what made the measurement less reliable",
    "validation": "what the measurement was validated on (cmr-function: synthetic phantoms only)",
    "lv_volumes_ml": "LV blood-pool volume per frame in mL (zoo ventricular cine)",
    "rv_volumes_ml": "RV blood-pool volume per frame in mL (zoo ventricular cine)",
    "slice_positions_mm": "position of each slice along the slice normal in mm",
    "segmentation": "which segmentation model the measurements came from",
    "mask_files": "paths of the label masks written (NIfTI), one per slice",
}
"""Documented keys of :attr:`Finding.extra`: writers and viewers read only these (other keys are
carried but never interpreted). A key not listed here is a bug to fix in the producing model."""


def interpret(
    score: float | None, threshold: float | None, indeterminate: tuple[float, float] | None
) -> Interpretation:
    """Turn a score into an interpretation against a threshold and indeterminate band.

    The band is closed at both ends: a score on either edge is ``indeterminate``.
    Without a threshold (a pure measurement such as an ejection fraction) the result is
    ``measured``.

    >>> interpret(0.7, 0.5, (0.4, 0.6))
    'positive'
    >>> interpret(0.45, 0.5, (0.4, 0.6))
    'indeterminate'
    >>> interpret(0.1, 0.5, None)
    'negative'
    >>> interpret(55.0, None, None)
    'measured'
    """
    if score is None or threshold is None:
        return "measured"
    if indeterminate is not None and indeterminate[0] <= score <= indeterminate[1]:
        return "indeterminate"
    return "positive" if score >= threshold else "negative"


@dataclass(frozen=True)
class Location:
    """Where a finding is, in patient LPS millimetres (DICOM patient coordinate system).

    ``kind`` is ``point`` (``coords`` = [x, y, z]), ``box`` (``coords`` = [x0, y0, z0, x1, y1, z1],
    min corner then max corner) or ``mask`` (``ref`` points at a mask file / DICOM SEG and
    ``coords`` may hold its bounding box). For 2D projection images without a patient frame the
    coordinates are image pixels and ``frame`` says ``pixel``.

    >>> Location("point", (10.0, -20.5, 3.0)).to_dict()["coords"]
    [10.0, -20.5, 3.0]
    """

    kind: LocationKind
    coords: tuple[float, ...] = ()
    ref: str | None = None
    frame: Literal["LPS", "pixel"] = "LPS"
    sop_instance_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coords"] = [float(c) for c in self.coords]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Location:
        return cls(
            kind=d["kind"],
            coords=tuple(float(c) for c in d.get("coords", ())),
            ref=d.get("ref"),
            frame=d.get("frame", "LPS"),
            sop_instance_uid=d.get("sop_instance_uid"),
        )


@dataclass(frozen=True)
class Finding:
    """One AI result for one study (see module docstring).

    ``probability`` is for classifiers (0..1); ``value``/``unit`` for measurements (e.g. an
    ejection fraction in %). ``threshold`` and ``indeterminate`` are compared against the
    probability when present, else against the value.
    """

    patient_id: str
    study_uid: str
    code_system: str
    code: str
    display: str
    model_id: str
    model_version: str
    probability: float | None = None
    value: float | None = None
    unit: str | None = None
    threshold: float | None = None
    indeterminate: tuple[float, float] | None = None
    location: Location | None = None
    series_uid: str | None = None
    instance_uids: tuple[str, ...] = ()
    ehr_inputs: dict[str, Any] = field(default_factory=dict)
    explanation: str | None = None
    prognostic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    imaging_study_id: str | None = None
    study_started: str | None = None
    study_body_site: str | None = None
    ehr_observation_ids: tuple[str, ...] = ()

    def __hash__(self) -> int:  # dict fields make the default hash fail
        return hash(self.id)

    @property
    def score(self) -> float | None:
        """The number compared against the threshold: probability if present, else value."""
        return self.probability if self.probability is not None else self.value

    @property
    def interpretation(self) -> Interpretation:
        """``positive`` / ``negative`` / ``indeterminate`` / ``measured``."""
        return interpret(self.score, self.threshold, self.indeterminate)

    @property
    def id(self) -> str:
        """A stable identifier: the same inputs and model give the same id on every run.

        >>> a = Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.3)
        >>> a.id == Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.9).id
        True
        """
        loc = json.dumps(self.location.to_dict(), sort_keys=True) if self.location else ""
        key = "|".join(
            [self.patient_id, self.study_uid, self.series_uid or "", self.code_system, self.code,
             self.model_id, self.model_version, loc]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, including the derived ``id`` and ``interpretation``."""
        d = asdict(self)
        d["location"] = self.location.to_dict() if self.location else None
        d["indeterminate"] = list(self.indeterminate) if self.indeterminate else None
        d["instance_uids"] = list(self.instance_uids)
        d["ehr_observation_ids"] = list(self.ehr_observation_ids)
        d["id"] = self.id
        d["interpretation"] = self.interpretation
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        d = {k: v for k, v in d.items() if k not in ("id", "interpretation")}
        if d.get("location"):
            d["location"] = Location.from_dict(d["location"])
        if d.get("indeterminate"):
            d["indeterminate"] = tuple(d["indeterminate"])
        d["instance_uids"] = tuple(d.get("instance_uids", ()))
        d["ehr_observation_ids"] = tuple(d.get("ehr_observation_ids", ()))
        return cls(**d)

    def record_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the study-record context (``imaging_study_id``, ``study_started``,
        ``study_body_site``, ``ehr_observation_ids``) that the FHIR writer reads: the form of
        ``results.json`` and of saved findings."""
        d = self.to_dict()
        for k in _CONTEXT_FIELDS:
            d.pop(k, None)
        return d


_CONTEXT_FIELDS = ("imaging_study_id", "study_started", "study_body_site", "ehr_observation_ids")


@dataclass(frozen=True)
class Failure:
    """A study a model gave no Finding for, and why: the typed record beside :class:`Finding`.

    ``state`` says which kind of "no answer" it is (:data:`FAILURE_STATES`): ``failed`` (the model or
    its input could not be run), ``record-mismatch`` (the image is not the one its ImagingStudy
    describes), ``input-rejected`` (the quality gate refused the pixels) or ``outside-intended-use``
    (the study is outside the model card's intended population or inputs). ``error`` is the exception
    class, ``message`` the reason naming the input. ``model_version``, ``imaging_study_id`` and
    ``study_started`` are the study-record facts the FHIR writer cites (see :meth:`Finding.record_dict`).

    >>> f = Failure("p1", "1.2.3", "pneumonia", "ImageReadError", "a.dcm: truncated")
    >>> Failure.from_dict(f.to_dict()) == f, f.to_dict()["state"], f.answered
    (True, 'failed', False)
    """

    patient_id: str
    study_uid: str | None
    model_id: str
    error: str
    message: str
    series_uid: str | None = None
    state: str = "failed"
    model_version: str | None = None
    imaging_study_id: str | None = None
    study_started: str | None = None

    def __post_init__(self) -> None:
        if self.state not in FAILURE_STATES:
            raise ValueError(f"Failure.state must be one of {', '.join(FAILURE_STATES)}, got {self.state!r}")

    @property
    def answered(self) -> bool:
        """Always False: a Failure is a study the model gave no answer for (the worklist shows why)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the form of ``results.json`` ``failures``)."""
        return asdict(self)

    def record_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the study-record context (the form of ``results.json``)."""
        d = self.to_dict()
        for k in ("imaging_study_id", "study_started"):
            d.pop(k, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Failure:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing optional ones default."""
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in keys})


#: The kinds of "no answer" a :class:`Failure` records, in the order the worklist ranks them.
FAILURE_STATES = ("record-mismatch", "input-rejected", "outside-intended-use", "failed")
#: How each kind of "no answer" is named to people (worklist, case view, report, FHIR text).
FAILURE_LABELS = {"record-mismatch": "image does not match record", "input-rejected": "input rejected (quality)",
                  "outside-intended-use": "outside intended use", "failed": "model could not run"}
