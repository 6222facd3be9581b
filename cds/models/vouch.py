"""What a model may answer for: the checks every study passes before any model runs.

A model answers only for input it can vouch for. Before :meth:`cds.models.task.Task.predict` runs,
the registry asks three questions, each with its own "no answer" state (:data:`cds.finding.FAILURE_STATES`):

1. **Is this the record's image?** (:func:`check_record`, state ``record-mismatch``) The file's DICOM
   PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and Modality are compared with the
   ImagingStudy that points at it. Tolerance for de-identified sources whose ids were rewritten: a
   PatientID is also accepted when it is one of ``StudyFacts.patient_identifiers`` (a caller's), or when the
   cohort's id map (``dicom_id_map.csv`` in the cohort folder: columns ``dicom_patient_id``,
   ``patient_id``) maps it to the record's patient. Formats that record no identity (PNG, NIfTI) are
   accepted on their path alone, with a warning carried on the Finding; a file the ImagingStudy names
   as a DICOM instance must be DICOM.
2. **Is the study inside the model's intended use?** (:func:`check_intended_use`, state
   ``outside-intended-use``) Against the card's modality and ``intended_for`` section
   (:class:`cds.models.card.IntendedFor`): patient age, view, body part, image size, slice count.
3. **Are the pixels fit to be read?** (:func:`check_quality`, state ``input-rejected``) No
   non-finite pixels, not blank or constant, positive spacing, an orthonormal orientation, and, where
   the card states an input profile, features within the range of the training images
   (:func:`input_features`, :func:`profile_distance`): a robust z-score of simple intensity and
   texture statistics against the training set, the largest accepted value stated in the card.

Each check raises the matching :class:`cds.errors.NoAnswer` subclass with the reason, or returns
warnings (texts) to carry on the Finding (``extra["warnings"]``).

>>> import numpy as np
>>> from cds.images.image import Image
>>> blank = Image(np.zeros((64, 64)), (0.2, 0.2), (0.0, 0.0, 0.0), np.eye(3), "CR", {}, "blank.dcm")
>>> check_quality(None, blank)
Traceback (most recent call last):
...
cds.errors.InputQualityError: blank.dcm: blank image: every pixel is 0
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.errors import InputQualityError, OutsideIntendedUseError, RecordMismatchError

if TYPE_CHECKING:
    from cds.images.image import Image
    from cds.models.card import ModelCard

__all__ = ["StudyFacts", "check_record", "check_intended_use", "check_quality", "input_features",
           "input_profile", "profile_distance", "read_id_map", "facts_for", "ID_MAP_FILE", "FEATURES"]

#: The cohort-folder file that maps rewritten DICOM PatientIDs to FHIR Patient ids.
ID_MAP_FILE = "dicom_id_map.csv"

#: Names of :func:`input_features`, in order.
FEATURES = ("mean", "std", "dark_fraction", "bright_fraction", "gradient", "row_correlation",
            "column_correlation")

#: Chest body-part words accepted for one another (DICOM BodyPartExamined, FHIR bodySite text/display/code).
_SYNONYMS = {"chest": {"chest", "thorax", "thoracic structure", "51185008", "43799004", "lung", "lungs",
                       "heart", "80891009"},
             "breast": {"breast", "76752008", "80248007"},
             "heart": {"heart", "80891009", "cardiac", "chest", "thorax", "thoracic structure", "51185008"}}


@dataclass(frozen=True)
class StudyFacts:
    """What the FHIR record says about one series: who, which study/series/instances, and context.

    >>> StudyFacts("p1", "1.2.3", modality="CR", age_years=4.0).age_years
    4.0
    """

    patient_id: str
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uids: tuple[str, ...] = ()
    modality: str | None = None
    view: str | None = None
    body_site: str | None = None
    age_years: float | None = None
    patient_identifiers: tuple[str, ...] = ()
    dicom_patient_ids: tuple[str, ...] = ()


def read_id_map(folder: str | Path | None) -> dict[str, str]:
    """The cohort's DICOM-PatientID -> FHIR Patient id map (``dicom_id_map.csv``), or {} when absent.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ID_MAP_FILE).write_text("dicom_patient_id,patient_id\\nANON01,p1\\n")
    >>> read_id_map(d)
    {'ANON01': 'p1'}
    """
    if folder is None:
        return {}
    path = Path(folder) / ID_MAP_FILE
    if not path.is_file():
        return {}
    from cds.errors import FhirInputError

    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"dicom_patient_id", "patient_id"} <= set(reader.fieldnames):
            raise FhirInputError(str(path), "expected columns dicom_patient_id,patient_id")
        return {str(r["dicom_patient_id"]).strip(): str(r["patient_id"]).strip() for r in reader
                if r.get("dicom_patient_id") and r.get("patient_id")}


def _clean_uid(uid: Any) -> str:
    s = "" if uid is None else str(uid).strip()
    return s[len("urn:oid:"):] if s.startswith("urn:oid:") else s


def check_record(image: Image, facts: StudyFacts) -> list[str]:
    """Refuse (``RecordMismatchError``) an image whose identity differs from its ImagingStudy's.

    Returns warnings (an identity that could not be checked). See the module docstring for the
    tolerance rules.

    >>> import numpy as np
    >>> from cds.images.image import Image
    >>> img = Image(np.ones((4, 4)), (1.0, 1.0), (0, 0, 0), np.eye(3), "CT",
    ...             {"patient_id": "p2", "study_uid": "1.2", "series_uid": "1.2.1"}, "x.dcm")
    >>> check_record(img, StudyFacts("p2", "1.2", "1.2.1", modality="CR"))
    Traceback (most recent call last):
    ...
    cds.errors.RecordMismatchError: x.dcm: the file's Modality is CT, the ImagingStudy's series is CR
    >>> check_record(img, StudyFacts("p1", "1.2", "1.2.1", modality="CT"))
    Traceback (most recent call last):
    ...
    cds.errors.RecordMismatchError: x.dcm: the file's PatientID is 'p2', not the ImagingStudy's patient 'p1' (nor one of its identifiers or a dicom_id_map.csv entry): it may be another patient's image
    """
    meta = image.meta or {}
    src = str(image.source)
    if not _is_dicom(image):
        if facts.instance_uids and _names_dicom(src):
            raise RecordMismatchError(src, "the ImagingStudy names a DICOM instance but the file is not DICOM")
        return [f"identity not checked: a {Path(src).suffix or 'non-DICOM'} file records no patient or study"]
    pid = str(meta.get("patient_id") or "").strip()
    accepted = {facts.patient_id, *facts.patient_identifiers, *facts.dicom_patient_ids} - {""}
    if not pid:
        raise RecordMismatchError(src, f"the file records no PatientID: cannot confirm it belongs to patient "
                                       f"{facts.patient_id!r} (map it in {ID_MAP_FILE})")
    if pid not in accepted:
        raise RecordMismatchError(src, f"the file's PatientID is {pid!r}, not the ImagingStudy's patient "
                                       f"{facts.patient_id!r} (nor one of its identifiers or a {ID_MAP_FILE} "
                                       "entry): it may be another patient's image")
    for label, mine, theirs in (("StudyInstanceUID", meta.get("study_uid"), facts.study_uid),
                                ("SeriesInstanceUID", meta.get("series_uid"), facts.series_uid)):
        if theirs and _clean_uid(mine) != _clean_uid(theirs):
            raise RecordMismatchError(src, f"the file's {label} is {_clean_uid(mine) or 'missing'}, the "
                                           f"ImagingStudy's is {_clean_uid(theirs)}")
    if facts.modality and image.modality and str(image.modality).upper() != str(facts.modality).upper():
        raise RecordMismatchError(src, f"the file's Modality is {image.modality}, the ImagingStudy's series is "
                                       f"{facts.modality}")
    listed = {_clean_uid(u) for u in facts.instance_uids} - {""}
    if listed:
        mine = [_clean_uid(u) for u in (meta.get("sop_instance_uids") or [meta.get("sop_instance_uid")]) if u]
        stray = [u for u in mine if u not in listed]
        if stray:
            raise RecordMismatchError(src, f"{len(stray)} of the file's SOP instances (e.g. {stray[0]}) are not "
                                           "among the ImagingStudy's instances")
    return []


def _is_dicom(image: Image) -> bool:
    """Whether the image came from a DICOM reader (file or DICOMweb): those always record the identity keys."""
    meta = image.meta or {}
    return "patient_id" in meta or "sop_class_uid" in meta


def _names_dicom(src: str) -> bool:
    return src.lower().endswith((".dcm", ".dicom")) or "/dicom-web/" in src


def _image_age(meta: Mapping[str, Any]) -> float | None:
    """Age in years from a DICOM PatientAge (``004Y``, ``018M``, ``030W``, ``010D``)."""
    age = str(meta.get("patient_age") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        return int(age[:3]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[age[3]]
    return None


def _words(*values: Any) -> set[str]:
    out: set[str] = set()
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        s = str(v).strip().lower()
        if s:
            out.add(s)
    return out


def check_intended_use(card: ModelCard, image: Image | None, facts: StudyFacts | None = None) -> list[str]:
    """Refuse (``OutsideIntendedUseError``) a study outside the card's modality and ``intended_for``.

    Returns warnings: facts that were not recorded and the card accepts unrecorded (age with
    ``age_unknown: accept``, view, body part). With ``image`` None only the record's facts are checked
    (what :meth:`cds.models.registry.ModelRegistry.models_for` does before reading any pixels).

    >>> import numpy as np
    >>> from cds.images.image import Image
    >>> from cds.models.card import ModelCard
    >>> card = ModelCard.from_dict({"modality": ["CR", "DX"], "intended_for": {"age_years": [0, 17]}})
    >>> cxr = Image(np.ones((64, 64)), (1.0, 1.0), (0, 0, 0), np.eye(3), "CR", {}, "a.dcm")
    >>> check_intended_use(card, cxr, StudyFacts("p1", age_years=54.0))
    Traceback (most recent call last):
    ...
    cds.errors.OutsideIntendedUseError: a.dcm: outside intended use: the patient is 54 years old; the model is for ages 0-17 years
    >>> check_intended_use(card, cxr, StudyFacts("p1"))
    Traceback (most recent call last):
    ...
    cds.errors.OutsideIntendedUseError: a.dcm: outside intended use: the patient's age is not recorded; the model is for ages 0-17 years and cannot vouch for a patient of unknown age
    """
    src = str(image.source) if image is not None else "study " + str(facts.study_uid if facts else "")
    meta = (image.meta or {}) if image is not None else {}
    intended = card.intended_for
    warnings: list[str] = []

    def refuse(reason: str) -> OutsideIntendedUseError:
        return OutsideIntendedUseError(src, f"outside intended use: {reason}")

    modality = ((image.modality if image is not None else None) or (facts.modality if facts else None) or "").upper()
    if card.modality and modality and modality not in {m.upper() for m in card.modality}:
        raise refuse(f"modality {modality}; the model is for {', '.join(card.modality)}")
    if intended.age_years:
        lo, hi = intended.age_years
        span = f"{'' if lo is None else f'{lo:g}'}-{'' if hi is None else f'{hi:g}'} years"
        age = facts.age_years if facts is not None and facts.age_years is not None else _image_age(meta)
        if age is None or (isinstance(age, float) and np.isnan(age)):
            if intended.age_unknown == "refuse":
                raise refuse(f"the patient's age is not recorded; the model is for ages {span} and cannot vouch "
                             "for a patient of unknown age")
            warnings.append(f"patient age not recorded; the model is for ages {span}"
                            + (f" ({intended.age_unknown_reason})" if intended.age_unknown_reason else ""))
        elif (lo is not None and age < lo) or (hi is not None and age > hi):
            raise refuse(f"the patient is {age:.0f} years old; the model is for ages {span}")
    if intended.views:
        view = _words(meta.get("view_position"), facts.view if facts else None)
        view = {v.upper() for v in view}
        if not view:
            warnings.append(f"view not recorded; the model is for {', '.join(intended.views)} views")
        elif not view & set(intended.views):
            raise refuse(f"view {', '.join(sorted(view))}; the model is for {', '.join(intended.views)} views")
    if intended.body_parts:
        parts = _words(meta.get("body_part"), facts.body_site if facts else None)
        allowed = set().union(*(_SYNONYMS.get(b, {b}) for b in intended.body_parts))
        if not parts:
            warnings.append(f"body part not recorded; the model is for {', '.join(intended.body_parts)}")
        elif not parts & allowed:
            raise refuse(f"body part {', '.join(sorted(parts))}; the model is for {', '.join(intended.body_parts)}")
    if image is None:
        return warnings
    arr = np.asarray(image.array)
    if intended.min_size_px and arr.ndim >= 2 and min(arr.shape[-2:]) < intended.min_size_px:
        raise refuse(f"the image is {arr.shape[-2]}x{arr.shape[-1]} pixels; the model needs at least "
                     f"{intended.min_size_px} per side")
    if intended.min_slices:
        n = arr.shape[-3] if arr.ndim >= 3 else 1
        if n < intended.min_slices:
            raise refuse(f"{n} slice(s); the model needs a volume of at least {intended.min_slices}")
    return warnings


def _plane(arr: np.ndarray) -> np.ndarray:
    """The 2D plane features are computed on: the image, or the middle slice (first frame) of a volume."""
    while arr.ndim > 3:
        arr = arr[0]
    return arr[arr.shape[0] // 2] if arr.ndim == 3 else arr


def _geometry_problem(image: Image) -> str | None:
    spacing = np.asarray(image.spacing, dtype=float)
    if spacing.size and (not np.all(np.isfinite(spacing)) or np.any(spacing <= 0)):
        return f"impossible pixel spacing {tuple(float(s) for s in spacing)} mm (must be finite and > 0)"
    if (image.meta or {}).get("patient_frame") is False:
        return None
    d = np.asarray(image.direction, dtype=float)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        return "orientation is not a finite 3x3 matrix"
    if abs(abs(float(np.linalg.det(d))) - 1.0) > 1e-3 or not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        return "orientation is degenerate or not orthonormal (row and column directions must be perpendicular unit vectors)"
    return None


def check_quality(card: ModelCard | None, image: Image) -> list[str]:
    """Refuse (``InputQualityError``) pixels no model should read, or that lie outside the card's
    input profile; returns warnings (none today)."""
    src = str(image.source)
    arr = np.asarray(image.array)
    if arr.size == 0:
        raise InputQualityError(src, "the image has no pixels")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputQualityError(src, f"pixel type {arr.dtype} is not numeric")
    finite = np.isfinite(arr)
    if not finite.all():
        raise InputQualityError(src, f"{int((~finite).sum())} pixel(s) are NaN or infinite")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputQualityError(src, f"blank image: every pixel is {lo:g}")
    plane = _plane(arr)
    value, count = _majority(plane)
    if count >= 0.995 * plane.size:
        raise InputQualityError(src, f"nearly blank image: {100 * count / plane.size:.1f} % of the pixels are "
                                     f"{float(value):g}")
    geometry = _geometry_problem(image)
    if geometry:
        raise InputQualityError(src, geometry)
    if card is not None and card.intended_for.input_profile:
        profile = card.intended_for.input_profile
        z, feature = profile_distance(profile, input_features(image))
        if z > float(profile["max_z"]):
            raise InputQualityError(src, f"out of distribution: {feature.replace('_', ' ')} is {z:.1f} robust SDs from "
                                         f"the training images (accepted up to {float(profile['max_z']):.1f}; "
                                         f"reference: {profile.get('data', 'the training data')})")
    return []


def input_features(image: Image | np.ndarray) -> dict[str, float]:
    """Simple intensity and texture statistics of an image's (middle) plane: what the OOD check compares.

    The plane is scaled by its own 1st-99th percentiles to [0, 1] and resampled (area average) to
    32x32 for ``mean``, ``std``, ``dark_fraction`` (< 0.1), ``bright_fraction`` (> 0.9) and
    ``gradient`` (mean absolute neighbour difference); ``row_correlation`` / ``column_correlation``
    are the correlations of neighbouring pixels along the columns / rows of the full-resolution plane
    (a scrambled raster, e.g. rows and columns swapped, breaks them).

    >>> import numpy as np
    >>> smooth = np.add.outer(np.arange(64.0), np.arange(64.0))
    >>> f = input_features(smooth)
    >>> round(f["mean"], 2), f["row_correlation"] > 0.99
    (0.5, True)
    >>> rng = np.random.default_rng(0)
    >>> input_features(rng.permutation(smooth.ravel()).reshape(64, 64))["row_correlation"] < 0.2
    True
    """
    arr = np.asarray(getattr(image, "array", image), dtype=np.float64)
    plane = _plane(arr)
    p1, p99 = np.percentile(plane, [1, 99])
    scale = (p99 - p1) or (float(plane.max() - plane.min()) or 1.0)
    x = np.clip((plane - p1) / scale, 0.0, 1.0)
    small = _area_resize(x, 32)
    grad = float(np.mean(np.abs(np.diff(small, axis=0)))) / 2 + float(np.mean(np.abs(np.diff(small, axis=1)))) / 2
    return {"mean": float(small.mean()), "std": float(small.std()), "dark_fraction": float((small < 0.1).mean()),
            "bright_fraction": float((small > 0.9).mean()), "gradient": grad,
            "row_correlation": _neighbour_corr(x, 0), "column_correlation": _neighbour_corr(x, 1)}


def _area_resize(x: np.ndarray, size: int) -> np.ndarray:
    """Area-average (upsample by repetition first when smaller) to ``size`` x ``size``."""
    rows, cols = x.shape
    rep = (int(np.ceil(size / rows)), int(np.ceil(size / cols)))
    if rep != (1, 1):
        x = np.repeat(np.repeat(x, rep[0], axis=0), rep[1], axis=1)
        rows, cols = x.shape
    r_edges = np.linspace(0, rows, size + 1).astype(int)
    c_edges = np.linspace(0, cols, size + 1).astype(int)
    summed = np.add.reduceat(np.add.reduceat(x, r_edges[:-1], axis=0), c_edges[:-1], axis=1)
    areas = np.outer(np.diff(r_edges), np.diff(c_edges))
    return summed / areas


def _majority(plane: np.ndarray) -> tuple[float, int]:
    """(value, count) of the plane's middle order statistic: a value held by more than half of the pixels
    is that one, so ``count`` is the largest share whenever it matters (>= 99.5 % blank checks) without
    sorting every pixel (``np.unique``; checked against it in tests).

    >>> _majority(np.array([[3, 3, 3], [3, 1, 3]]))
    (3.0, 5)
    """
    flat = np.ravel(plane)
    mid = np.partition(flat, flat.size // 2)[flat.size // 2]
    return float(mid), int(np.count_nonzero(flat == mid))


def _neighbour_corr(x: np.ndarray, axis: int) -> float:
    """Pearson correlation of each pixel with its next neighbour along ``axis`` (as ``np.corrcoef`` of the
    two shifted views, without copying them)."""
    if x.shape[axis] < 2:
        return 1.0
    a = x[:-1] if axis == 0 else x[:, :-1]
    b = x[1:] if axis == 0 else x[:, 1:]
    da = a - a.mean()
    db = b - b.mean()
    sa = float(np.sqrt(np.einsum("ij,ij->", da, da)))
    sb = float(np.sqrt(np.einsum("ij,ij->", db, db)))
    if sa == 0 or sb == 0:
        return 1.0
    return float(np.einsum("ij,ij->", da, db) / (sa * sb))


def input_profile(features: Iterable[Mapping[str, float]], *, data: str, quantile: float = 0.995,
                  margin: float = 1.25) -> dict[str, Any]:
    """The OOD reference for a card: per-feature median and MAD of the training images' features, and
    ``max_z`` = ``margin`` x the ``quantile`` of the training images' own largest robust z-scores.

    >>> rng = np.random.default_rng(0)
    >>> feats = [{"mean": m, "std": 0.2} for m in rng.normal(0.5, 0.05, 200)]
    >>> p = input_profile(feats, data="toy")
    >>> round(p["features"]["mean"]["median"], 2), p["n"], p["max_z"] > 2
    (0.5, 200, True)
    """
    rows = list(features)
    names = [n for n in FEATURES if rows and n in rows[0]]
    table = np.array([[r[n] for n in names] for r in rows], dtype=float)
    med = np.median(table, axis=0)
    mad = np.median(np.abs(table - med), axis=0) * 1.4826
    mad = np.maximum(mad, 1e-3)
    prof = {"features": {n: {"median": round(float(m), 6), "mad": round(float(s), 6)} for n, m, s in zip(names, med, mad, strict=True)},
            "n": len(rows), "data": data, "quantile": quantile, "margin": margin}
    own = [profile_distance(prof, r)[0] for r in rows]
    prof["max_z"] = round(float(np.quantile(own, quantile)) * margin, 3)
    prof["training_flagged_fraction"] = round(float(np.mean(np.array(own) > prof["max_z"])), 4)
    return prof


def profile_distance(profile: Mapping[str, Any], features: Mapping[str, float]) -> tuple[float, str]:
    """The largest robust z-score of ``features`` against ``profile`` and the feature it belongs to."""
    worst, name = 0.0, ""
    for n, ref in profile["features"].items():
        if n not in features:
            continue
        z = abs(float(features[n]) - float(ref["median"])) / float(ref["mad"])
        if z > worst:
            worst, name = z, n
    return worst, name


def facts_for(row: Any, id_map: Mapping[str, str] | None = None, age_years: float | None = None,
              dicom_ids: Sequence[str] = ()) -> StudyFacts:
    """The :class:`StudyFacts` of a ``cohort.imaging`` row; ``id_map`` (:func:`read_id_map`) names the
    rewritten DICOM PatientIDs accepted for its patient, and so do ``dicom_ids`` (the patient's
    ``Patient.identifier`` values of system :data:`cds.codes.DICOM_PATIENT_ID_SYSTEM`, the patients
    table's ``dicom_patient_ids``)."""
    pid = str(row.patient_id)
    mapped = tuple(k for k, v in (id_map or {}).items() if v == pid) + tuple(str(d) for d in dicom_ids or ())

    def text(name: str) -> str | None:
        v = getattr(row, name, None)
        return v if isinstance(v, str) and v else None

    uids = getattr(row, "instance_uids", ()) or ()
    return StudyFacts(pid, text("study_uid"), text("series_uid"), tuple(str(u) for u in uids if u),
                      text("modality"), text("view"), text("body_site"), age_years, (), mapped)
