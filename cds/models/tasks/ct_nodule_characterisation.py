"""``ct-nodule-characterisation``: one lung nodule on CT -> diameter, volume, radiologists' suspicion, size band.

What it does
------------
1. **Working grid.** The CT around the nodule is resampled to isotropic :data:`WORK_MM` (1 mm) voxels
   (linear), whatever the slice spacing (0.5-10 mm accepted).
2. **Segmentation.** A small MONAI 3D ``UNet`` (8-16-32-64 channels, one residual unit per level, about
   150 k weights) trained on 32 mm cubes of the LIDC-IDRI crops of the training patients against their
   nodule masks (Dice + BCE). It is fully convolutional, so at run time it sees the whole cut-out.
   The nodule is the connected component of ``p >= 0.5`` nearest the given centre (within
   :data:`MAX_CENTRE_OFFSET_MM`).
3. **Measurement on that segmentation.** ``volume_mm3`` = the segmented volume;
   ``diameter_mm`` = its volume-equivalent sphere diameter, linearly calibrated on the training patients
   to the LIDC readers' diameter (``diameter_mm`` of ``nodules.csv``, which agrees with the equivalent-sphere
   diameter of the masks far better than with their long axis); ``long_axis_mm`` = the longest in-plane
   (axial) extent of the segmentation, reported beside it. On slices thicker than the training scans'
   2.5 mm the nodule is smeared along z, so ``diameter_mm`` comes from the largest axial section instead
   (same calibration) and the volume is flagged as overestimated.
4. **Suspicion.** A logistic regression over :data:`FEATURE_NAMES` (size, shape, HU and margin features
   of the segmentation) gives ``likelihood``: the probability that LIDC radiologists rate the nodule
   suspicious (Malignancy >= 4 of 5 versus <= 2; nodules rated 3 are left out of training and testing).
   **This is radiologist suspicion, not pathology.** ``likelihood`` is None when the model cannot vouch
   (no nodule found at the centre, slices thicker than the training scans' 2.5 mm, or a size outside the
   training range).
5. **Size band.** ``size_category``: the Lung-RADS v2022 *baseline solid-nodule size bands* applied to
   ``diameter_mm`` (< 6 mm: 2, 6 to < 8: 3, 8 to < 15: 4A, >= 15: 4B). A size category only, not a full
   Lung-RADS assessment (no nodule type, growth, morphology or prior study).

Training patients are split train / validation / test by a hash of the patient id
(:func:`cds.models.tasks.nodule_crops.patient_split`); the test patients are used for nothing but the
card's numbers, and :func:`evaluate` leaves out every training and validation patient it meets.

The API a whole-CT detector calls per candidate
-----------------------------------------------
:func:`characterise` ``(bundle, volume_hu, spacing_zyx, centre_zyx) -> dict``: it cuts a cube of
:data:`CUT_MM` mm (a larger one when the nodule reaches the cube's edge) around the voxel index
``centre_zyx`` of the ``(z, y, x)`` HU volume, resamples it to the working grid and answers with the
keys ``diameter_mm``, ``volume_mm3``, ``likelihood``, ``size_category`` (and ``long_axis_mm``,
``found``, ``vouched``, ``reasons``, ``centre_zyx_mm_offset``)::

    from cds.models.tasks.ct_nodule_characterisation import characterise, load_bundle
    bundle = load_bundle()                      # the shipped bundle (DEFAULT_BUNDLE)
    for cand in candidates:                     # e.g. ct_lung_nodule.predict(...)
        r = characterise(bundle, volume_hu, spacing_zyx, cand["centre_voxel"])
        r["diameter_mm"], r["volume_mm3"], r["likelihood"], r["size_category"]

Examples
--------
>>> lung_rads_size_category(5.9), lung_rads_size_category(6.0), lung_rads_size_category(14.99), lung_rads_size_category(15)
('2', '3', '4A', '4B')
>>> import numpy as np
>>> z, y, x = np.mgrid[:20, :64, :64]
>>> vol = np.where(((z - 10) * 2.5) ** 2 + ((y - 32) * 0.7) ** 2 + ((x - 32) * 0.7) ** 2 <= 25, 30.0, -850.0)
>>> r = characterise(load_bundle(), vol, (2.5, 0.7, 0.7), (10, 32, 32))    # a 10 mm sphere
>>> r["found"], 8.5 < r["diameter_mm"] < 11.5, r["size_category"]
(True, True, '4A')
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import LUNG_RADS_SIZE_BAND_CODES, NODULE_SUSPICION_CODES, SNOMED
from cds.errors import ModelInputError, ParameterError
from cds.locations import BUNDLES_DIR, display_path
from cds.models.task import TrainableTask, image_ref
from cds.models.tasks import nodule_crops as nc
from cds.models.tasks.inputs import default_data_dir, name_hash

if TYPE_CHECKING:
    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["NAME", "TASK", "MODEL_ID", "DEFAULT_BUNDLE", "FEATURE_NAMES", "WORK_MM", "CUT_MM",
           "characterise", "load_bundle", "lung_rads_size_category", "predict", "to_findings", "train", "evaluate"]

NAME = "ct-nodule-characterisation"
MODEL_ID = "ct-nodule-characterisation"
MODEL_VERSION = "0.1.0"
DATA_SET = "lidc-nodule-crops"
DEFAULT_BUNDLE = BUNDLES_DIR / MODEL_ID

WORK_MM = 1.0
PATCH = 32
HU_RANGE = (-1000.0, 400.0)
CUT_MM = 48.0
MAX_CUT_MM = 96.0
MAX_CENTRE_OFFSET_MM = 5.0
SLICE_RANGE_MM = (0.5, 10.0)
#: thickest slices (mm) the likelihood is vouched for: the thickest of the training scans
MAX_VOUCHED_SLICE_MM = 2.5
EPOCHS = 40
BATCH = 16
LR = 2e-3
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)

FEATURE_NAMES = ("log_diameter", "elongation", "sphericity", "opening_loss", "hu_mean", "hu_std",
                 "frac_calcified", "frac_low", "edge_contrast", "outer_dense_frac")

#: Finding codes: LOINC has no nodule-specific size codes, so the measures use SNOMED CT's qualifiers
#: (as :data:`cds.codes.EXTRA_MEASUREMENTS` does); the suspicion and the size band are local codes.
CODES = {
    "diameter": (SNOMED, "81827009", "Diameter"),
    "volume": (SNOMED, "118565006", "Volume"),
}
SIZE_BANDS = {"2": "< 6 mm", "3": "6 to < 8 mm", "4A": "8 to < 15 mm", "4B": ">= 15 mm"}
BODY_SITE = {"code_system": SNOMED, "code": "39607008", "display": "Lung structure"}


def lung_rads_size_category(diameter_mm: float | None) -> str | None:
    """Lung-RADS v2022 baseline solid-nodule size band of a diameter: '2' (< 6 mm), '3' (6 to < 8),
    '4A' (8 to < 15), '4B' (>= 15); None without a diameter. A size category only, not a Lung-RADS
    assessment."""
    if diameter_mm is None or not math.isfinite(float(diameter_mm)):
        return None
    d = float(diameter_mm)
    return "2" if d < 6 else "3" if d < 8 else "4A" if d < 15 else "4B"


# ------------------------------------------------------------------------------------ the grid
def _normalise(hu: np.ndarray) -> np.ndarray:
    lo, hi = HU_RANGE
    return np.clip((np.asarray(hu, np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _background_hu(hu: np.ndarray) -> float:
    """The HU a cut-out is padded with: the median of its aerated-lung voxels (< -400 HU), else -850."""
    lung = hu[hu < -400]
    return float(np.median(lung)) if lung.size >= 20 else -850.0


def _pad_to(hu: np.ndarray, minimum: int = PATCH, multiple: int = 8, value: float | None = None
            ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``hu`` padded (centred) to at least ``minimum`` and a multiple of ``multiple`` per axis; the slices
    that give the original back."""
    value = _background_hu(hu) if value is None else value
    pads, back = [], []
    for n in hu.shape:
        m = max(minimum, int(math.ceil(n / multiple) * multiple))
        a = (m - n) // 2
        pads.append((a, m - n - a))
        back.append(slice(a, a + n))
    return np.pad(hu, pads, constant_values=value).astype(np.float32), tuple(back)


def _network_def() -> dict[str, Any]:
    return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
            "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}


def _probabilities(net: Any, hu: np.ndarray) -> np.ndarray:
    """Nodule probability per voxel of a working-grid HU volume."""
    import torch

    x, back = _pad_to(hu)
    with torch.inference_mode():
        logits = net(torch.from_numpy(_normalise(x))[None, None])
    return torch.sigmoid(logits)[0, 0].numpy()[back].astype(np.float32)


# -------------------------------------------------------------------------------- measurement
def _component_at(mask: np.ndarray, centre: Sequence[float]) -> tuple[np.ndarray | None, float]:
    """The connected component of ``mask`` nearest ``centre`` (working voxels) within
    :data:`MAX_CENTRE_OFFSET_MM`, and its distance (mm); (None, inf) when there is none."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return None, math.inf
    c = np.asarray(centre, float)
    best, best_d, best_size = 0, math.inf, 0
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        pts = np.argwhere(lab[sl] == k) + np.array([s.start for s in sl])
        d = float(np.sqrt(((pts - c) ** 2).sum(axis=1)).min()) * WORK_MM
        if d < best_d - 1e-9 or (abs(d - best_d) <= 1e-9 and len(pts) > best_size):
            best, best_d, best_size = k, d, len(pts)
    if best_d > MAX_CENTRE_OFFSET_MM:
        return None, best_d
    return lab == best, best_d


def _long_axis_mm(m: np.ndarray) -> float:
    """Longest in-plane (axial, axis 0 = slices) extent of a working-grid mask, voxel edges included."""
    from scipy.spatial import ConvexHull, QhullError

    best = 0.0
    for k in np.flatnonzero(m.any(axis=(1, 2))):
        pts = np.argwhere(m[k]).astype(float)
        if len(pts) > 3:
            try:
                pts = pts[ConvexHull(pts).vertices]
            except QhullError:
                pass
        if len(pts) > 1:
            d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max()
            best = max(best, float(d))
    return (best + 1.0) * WORK_MM


def _sphericity(prob: np.ndarray, m: np.ndarray) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    p = np.pad(np.where(_dilate(m, 1), prob, 0.0), 1)
    try:
        verts, faces, _, _ = marching_cubes(p, 0.5)
    except (ValueError, RuntimeError):
        return 1.0
    area = float(mesh_surface_area(verts, faces))
    vol = float(m.sum())
    return float(min(1.0, math.pi ** (1 / 3) * (6 * vol) ** (2 / 3) / area)) if area > 0 else 1.0


def _dilate(m: np.ndarray, it: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_dilation(m, ndi.generate_binary_structure(3, 1), iterations=it)


def _features(hu: np.ndarray, prob: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """The raw measures and :data:`FEATURE_NAMES` of one segmented nodule on the working grid."""
    from scipy import ndimage as ndi

    vol = float(m.sum()) * WORK_MM ** 3
    eqd = (6.0 * vol / math.pi) ** (1 / 3)
    long_axis = _long_axis_mm(m)
    v = hu[m]
    ball = ndi.generate_binary_structure(3, 1)
    opened = ndi.binary_opening(m, ball)
    inner = m & ~ndi.binary_erosion(m, ball)
    outer1 = _dilate(m, 1) & ~m
    outer3 = _dilate(m, 3) & ~_dilate(m, 1)
    section = float(m.sum(axis=(1, 2)).max()) * WORK_MM ** 2
    return {
        "volume_mm3": vol, "eqd_mm": eqd, "long_axis_mm": long_axis,
        "section_eqd_mm": math.sqrt(4.0 * section / math.pi),
        "log_diameter": math.log(max(eqd, 1.0)),
        "elongation": long_axis / max(eqd, 1.0),
        "sphericity": _sphericity(prob, m),
        "opening_loss": 1.0 - float(opened.sum()) / max(float(m.sum()), 1.0),
        "hu_mean": float(np.clip(v, -1000, 1000).mean()),
        "hu_std": float(np.clip(v, -1000, 1000).std()),
        "frac_calcified": float((v > 200).mean()),
        "frac_low": float((v < -400).mean()),
        "edge_contrast": float(np.clip(hu[inner], -1000, 400).mean() - np.clip(hu[outer1], -1000, 400).mean())
        if outer1.any() and inner.any() else 0.0,
        "outer_dense_frac": float((hu[outer3] > -500).mean()) if outer3.any() else 0.0,
    }


# ------------------------------------------------------------------------------------ the bundle
def load_bundle(path: str | Path | None = None) -> Bundle:
    """The ``ct-nodule-characterisation`` bundle at ``path`` (None: :data:`DEFAULT_BUNDLE`, the shipped one)."""
    from cds.models.bundle import Bundle
    from cds.models.bundle import load_bundle as _load

    if isinstance(path, Bundle):
        return path
    return _load(DEFAULT_BUNDLE if path is None else path)


def _model(bundle: Any) -> dict[str, Any]:
    b = load_bundle(bundle)
    inf = b.inference
    if inf.get("features") != list(FEATURE_NAMES) or "classifier" not in inf or "diameter_calibration" not in inf:
        raise ParameterError("bundle", f"{b.path}/configs/inference.json: not a {NAME} bundle of this code version "
                                       "(features, classifier or diameter_calibration missing or different)")
    return {"bundle": b, "net": b.network(), **inf}


def _likelihood(model: dict[str, Any], feats: dict[str, float]) -> float:
    c = model["classifier"]
    x = (np.array([feats[n] for n in FEATURE_NAMES]) - np.asarray(c["mean"])) / np.asarray(c["std"])
    z = float(x @ np.asarray(c["coef"]) + c["intercept"])
    return float(1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))))


def _calibrated_diameter(model: dict[str, Any], eqd: float) -> float:
    cal = model["diameter_calibration"]
    return float(cal["slope"] * eqd + cal["intercept"])


def _analyse(model: dict[str, Any], work_hu: np.ndarray, centre: Sequence[float]) -> dict[str, Any]:
    """Segment, measure and score one working-grid cut-out around ``centre`` (working voxel index)."""
    prob = _probabilities(model["net"], work_hu)
    m, offset = _component_at(prob >= 0.5, centre)
    if m is None:
        return {"found": False, "prob": prob, "mask": None, "offset_mm": offset}
    feats = _features(work_hu, prob, m)
    return {"found": True, "prob": prob, "mask": m, "offset_mm": offset, "features": feats,
            "diameter_mm": _calibrated_diameter(model, feats["eqd_mm"]),
            "likelihood": _likelihood(model, feats)}


def _touches_edge(m: np.ndarray) -> bool:
    return bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def _check_volume(volume_hu: Any, spacing_zyx: Any, centre_zyx: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ModelInputError("volume_hu", f"expected a (z, y, x) volume, got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.number):
        raise ModelInputError("volume_hu", f"pixel type {vol.dtype} is not numeric")
    try:
        sp = np.asarray(spacing_zyx, float).reshape(3)
        c = np.asarray(centre_zyx, float).reshape(3)
    except (TypeError, ValueError):
        raise ModelInputError("spacing_zyx/centre_zyx", f"expected three numbers each, got {spacing_zyx!r}, "
                                                        f"{centre_zyx!r}") from None
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ModelInputError("spacing_zyx", f"expected positive spacings in mm, got {tuple(sp)}")
    if sp[0] < SLICE_RANGE_MM[0] or sp[0] > SLICE_RANGE_MM[1] or np.any(sp[1:] < 0.2) or np.any(sp[1:] > 2.0):
        raise ModelInputError("spacing_zyx", f"spacing {tuple(float(s) for s in sp)} mm is outside what the model "
                                             f"reads (slices {SLICE_RANGE_MM[0]}-{SLICE_RANGE_MM[1]} mm, pixels 0.2-2 mm)")
    if not np.all(np.isfinite(c)) or np.any(c < -0.5) or np.any(c > np.asarray(vol.shape) - 0.5):
        raise ModelInputError("centre_zyx", f"voxel index {tuple(c)} is outside the volume of shape {vol.shape}")
    return vol, sp, c


def _cut(vol: np.ndarray, sp: np.ndarray, c: np.ndarray, cut_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A working-grid cube of ``cut_mm`` around ``c`` (voxel index), resampled linearly. Where the cube leaves
    the volume it is filled with the cut's aerated-lung HU, as the training crops were padded (air at -1000
    HU around lung would be a border the network never saw). Returns the cube and the working index of ``c``."""
    from scipy import ndimage as ndi

    n = int(round(cut_mm / WORK_MM))
    mm = (np.arange(n) - (n - 1) / 2.0) * WORK_MM
    axes = [c[a] + mm / sp[a] for a in range(3)]
    # read only the block the cube needs (a whole CT is never copied per candidate)
    lo = [int(np.clip(np.floor(x.min()) - 1, 0, vol.shape[a] - 1)) for a, x in enumerate(axes)]
    hi = [int(np.clip(np.ceil(x.max()) + 2, lo[a] + 1, vol.shape[a])) for a, x in enumerate(axes)]
    block = np.asarray(vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], np.float32)
    grid = np.meshgrid(*[x - lo[a] for a, x in enumerate(axes)], indexing="ij")
    out = ndi.map_coordinates(block, grid, order=1, mode="nearest").astype(np.float32)
    inside = [(x >= -0.5) & (x <= vol.shape[a] - 0.5) for a, x in enumerate(axes)]
    keep = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    if not keep.all():
        out[~keep] = _background_hu(out[keep])
    return out, np.full(3, (n - 1) / 2.0)


def characterise(bundle: Any, volume_hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                 centre_zyx: tuple[float, float, float]) -> dict[str, Any]:
    """Diameter, volume, suspicion likelihood and size band of the nodule at voxel ``centre_zyx`` of a CT.

    Parameters
    ----------
    bundle : Bundle, path or None
        The ``ct-nodule-characterisation`` bundle (None: the shipped one; load it once with
        :func:`load_bundle` when characterising many candidates).
    volume_hu : array (z, y, x)
        The CT in Hounsfield units (slices along axis 0).
    spacing_zyx : (float, float, float)
        mm per voxel along z, y, x; slices 0.5-10 mm, pixels 0.2-2 mm.
    centre_zyx : (float, float, float)
        The candidate's centre as a (fractional) voxel index.

    Returns
    -------
    dict
        ``diameter_mm`` (calibrated equivalent-sphere diameter, see the module docstring), ``volume_mm3``,
        ``long_axis_mm``, ``likelihood`` (0-1, or None when the model cannot vouch), ``size_category``
        (Lung-RADS v2022 size band only), ``found`` (a nodule was segmented within
        :data:`MAX_CENTRE_OFFSET_MM` of the centre), ``vouched`` and ``reasons`` (why not),
        ``centre_offset_mm``, ``working_spacing_mm``. Without a nodule every measure is None.

    Bad input raises :class:`cds.errors.ModelInputError` naming the parameter.
    """
    model = _model(bundle)
    vol, sp, c = _check_volume(volume_hu, spacing_zyx, centre_zyx)
    cut_mm = CUT_MM
    while True:
        work, wc = _cut(vol, sp, c, cut_mm)
        res = _analyse(model, work, wc)
        if not res["found"] or not _touches_edge(res["mask"]) or cut_mm >= MAX_CUT_MM:
            break
        cut_mm *= 2
    return _answer(model, res, float(sp[0]), edge=bool(res["found"] and _touches_edge(res["mask"])))


def _answer(model: dict[str, Any], res: dict[str, Any], slice_mm: float, edge: bool = False) -> dict[str, Any]:
    reasons: list[str] = []
    out: dict[str, Any] = {"found": bool(res["found"]), "working_spacing_mm": WORK_MM,
                           "centre_offset_mm": None if not math.isfinite(res["offset_mm"]) else round(res["offset_mm"], 2)}
    if not res["found"]:
        reasons.append(f"no nodule segmented within {MAX_CENTRE_OFFSET_MM:g} mm of the centre")
        out.update(diameter_mm=None, volume_mm3=None, long_axis_mm=None, likelihood=None, size_category=None,
                   vouched=False, reasons=reasons)
        return out
    f = res["features"]
    d = res["diameter_mm"]
    lo, hi = model["vouched_diameter_mm"]
    if slice_mm > MAX_VOUCHED_SLICE_MM + 1e-6:
        # thick slices smear the nodule along z: its volume is overestimated, the largest axial section is not
        d = _calibrated_diameter(model, f["section_eqd_mm"])
        reasons.append(f"slices of {slice_mm:g} mm are thicker than the training scans' {MAX_VOUCHED_SLICE_MM:g} mm: "
                       "diameter from the largest axial section, volume overestimated, no likelihood")
    if not lo <= d <= hi:
        reasons.append(f"diameter {d:.1f} mm is outside the training nodules' {lo:g}-{hi:g} mm")
    if edge:
        reasons.append("the segmentation reaches the edge of the largest cut-out (a mass or not a nodule)")
    vouched = not reasons
    out.update(diameter_mm=round(d, 2), volume_mm3=round(f["volume_mm3"], 1), long_axis_mm=round(f["long_axis_mm"], 2),
               likelihood=round(res["likelihood"], 4) if vouched else None, size_category=lung_rads_size_category(d),
               vouched=vouched, reasons=reasons, features={k: round(float(f[k]), 4) for k in FEATURE_NAMES})
    return out


# ------------------------------------------------------------------------------- crop files
def _work_crop(hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    return nc.resample(hu, spacing, WORK_MM, order=1)


def predict(bundle: Any, volume_hu: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, Any]:
    """:func:`characterise` for a crop around one nodule (as in ``lidc-nodule-crops``): the whole crop is
    segmented on the working grid and the nodule is the component nearest the crop's centre."""
    model = _model(bundle)
    vol, sp, _ = _check_volume(volume_hu, spacing_zyx, (np.asarray(np.shape(volume_hu)) - 1) / 2.0)
    work = _work_crop(vol.astype(np.float32), sp)
    res = _analyse(model, work, (np.asarray(work.shape) - 1) / 2.0)
    return _answer(model, res, float(sp[0]))


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str, series_uid: str | None = None,
                instance_uids: Sequence[str] = (), ehr_inputs: dict[str, Any] | None = None) -> list[Any]:
    """Findings of one :func:`predict` / :func:`characterise` result: the diameter (mm, with the size band),
    the volume (mm3) and, when vouched, the suspicion likelihood against the card's threshold and band.
    Without a nodule there are none."""
    from cds.finding import Finding

    b = load_bundle(bundle)
    card = b.model_card
    if not pred.get("found"):
        return []
    common = dict(patient_id=patient_id, study_uid=study_uid, model_id=b.model_id, model_version=b.version,
                  series_uid=series_uid, instance_uids=tuple(instance_uids or ()), ehr_inputs=dict(ehr_inputs or {}))
    extra: dict[str, Any] = {"body_site": dict(BODY_SITE), "diameter_mm": pred["diameter_mm"],
                             "volume_ml": round(pred["volume_mm3"] / 1000.0, 4)}
    if pred.get("reasons"):
        extra["warnings"] = list(pred["reasons"])
    cat = pred["size_category"]
    out = [
        Finding(code_system=CODES["diameter"][0], code=CODES["diameter"][1], display="Nodule diameter",
                value=pred["diameter_mm"], unit="mm", extra=dict(extra),
                explanation=(f"nodule diameter {pred['diameter_mm']:.1f} mm (long axis {pred['long_axis_mm']:.1f} mm); "
                             f"Lung-RADS v2022 size category {cat} (size category only, not a full Lung-RADS "
                             "assessment)"), **common),
        Finding(code_system=CODES["volume"][0], code=CODES["volume"][1], display="Nodule volume",
                value=pred["volume_mm3"], unit="mm3", extra=dict(extra),
                explanation=f"segmented nodule volume {pred['volume_mm3']:.0f} mm3", **common),
        Finding(code_system=LUNG_RADS_SIZE_BAND_CODES, code=cat, display=f"Lung-RADS v2022 size category {cat} "
                "(size category only, not a full Lung-RADS assessment)", extra=dict(extra),
                explanation=(f"diameter {pred['diameter_mm']:.1f} mm is in the Lung-RADS v2022 baseline solid-nodule "
                             f"size band {cat} ({SIZE_BANDS[cat]}); nodule type, growth and morphology are not "
                             "assessed"), **common),
    ]
    if pred.get("likelihood") is not None:
        out.append(Finding(
            code_system=NODULE_SUSPICION_CODES, code="radiologist-suspicious",
            display="Radiologists would rate the nodule suspicious (LIDC malignancy >= 4; not pathology)",
            probability=pred["likelihood"], threshold=card.threshold, indeterminate=card.indeterminate,
            extra=dict(extra), prognostic=False,
            explanation=(f"likelihood {pred['likelihood']:.2f} that LIDC radiologists rate this nodule 4-5 of 5 "
                         "(vs 1-2); radiologist suspicion, not a pathology-proven malignancy"), **common))
    return out


# ---------------------------------------------------------------------------------------- training
def _prepare(df: Any, with_masks: bool = True) -> list[dict[str, Any]]:
    """Working-grid HU (and reference mask) of every crop of ``df`` (a :func:`nodule_crops.load_table`)."""
    from tqdm.auto import tqdm

    items = []
    for r in tqdm(list(df.itertuples()), desc=f"{NAME} crops", disable=None, leave=False):
        hu, sp = nc.read_crop(r.file)
        it = {"patient_id": str(r.patient_id), "nodule_id": int(r.nodule_id), "file": Path(r.file).name,
              "label": _label(r.label), "malignancy": int(r.Malignancy_value), "diameter_ref": float(r.diameter_mm),
              "spacing": sp, "work": _work_crop(hu, sp)}
        if with_masks and isinstance(r.mask, str):
            m, msp = nc.read_crop(r.mask)
            if m.shape != hu.shape:
                raise ModelInputError(r.mask, f"mask shape {m.shape} differs from its crop's {hu.shape}")
            it["mask"] = nc.resample((m > 0).astype(np.float32), sp, WORK_MM, order=1, cval=0.0) >= 0.5
            it["mask_volume_mm3"] = float((m > 0).sum() * np.prod(sp))
        items.append(it)
    return items


def _label(v: Any) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _patch(work: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random :data:`PATCH` cube holding the nodule (centroid jittered by up to 6 voxels), randomly
    flipped and transposed in plane; padded with the crop's lung HU where the crop ends."""
    bg = _background_hu(work)
    hu, back = _pad_to(work, value=bg)
    m = np.zeros(hu.shape, bool)
    m[back] = mask
    c = np.argwhere(m).mean(axis=0) if m.any() else (np.asarray(m.shape) - 1) / 2.0
    start = [int(np.clip(round(c[a] - PATCH / 2 + rng.integers(-6, 7)), 0, m.shape[a] - PATCH)) for a in range(3)]
    sl = tuple(slice(s, s + PATCH) for s in start)
    x, y = hu[sl], m[sl]
    for a in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, a), np.flip(y, a)
    if rng.random() < 0.5:
        x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _train_segmenter(items: Sequence[dict[str, Any]], epochs: int, seed: int) -> tuple[Any, list[float]]:
    """The UNet of :func:`_network_def` fitted to the items' masks (Dice + BCE, AdamW, cosine schedule)."""
    import torch
    from monai.bundle import ConfigParser
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    net = ConfigParser({"net": _network_def()}).get_parsed_content("net", instantiate=True)
    n = len(items)
    n_batches = max(1, int(math.ceil(n / BATCH)))
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    bce = torch.nn.BCEWithLogitsLoss()
    losses = []
    net.train()
    for _ in tqdm(range(epochs), desc=f"{NAME} segmenter", disable=None, leave=False):
        total = 0.0
        for idx in np.array_split(rng.permutation(n), n_batches):
            pairs = [_patch(items[i]["work"], items[i]["mask"], rng) for i in idx]
            x = torch.from_numpy(np.stack([_normalise(p[0]) for p in pairs])[:, None])
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32)[:, None])
            opt.zero_grad()
            logits = net(x)
            p = torch.sigmoid(logits)
            dice = 1 - (2 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0)
            loss = bce(logits, y) + dice
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(round(total / n, 5))
    net.eval()
    return net, losses


def _dice(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    s = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / s if s > 0 else 1.0


def _run_items(model: dict[str, Any], items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`_analyse` + :func:`_answer` of every prepared crop, with the Dice against its mask."""
    from tqdm.auto import tqdm

    out = []
    for it in tqdm(items, desc=f"{NAME} inference", disable=None, leave=False):
        w = it["work"]
        res = _analyse(model, w, (np.asarray(w.shape) - 1) / 2.0)
        ans = _answer(model, res, float(it["spacing"][0]))
        ans["eqd_mm"] = res["features"]["eqd_mm"] if res["found"] else None
        ans["likelihood_raw"] = res.get("likelihood")
        if "mask" in it:
            ans["dice"] = _dice(res["mask"], it["mask"])
        out.append(ans)
    return out


def _fit_logistic(X: np.ndarray, y: np.ndarray, C: float) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-9
    lr = LogisticRegression(C=C, max_iter=5000).fit((X - mean) / std, y)
    return {"mean": mean.tolist(), "std": std.tolist(), "coef": lr.coef_[0].tolist(),
            "intercept": float(lr.intercept_[0]), "C": C}


def _apply_logistic(c: dict[str, Any], X: np.ndarray) -> np.ndarray:
    z = ((X - np.asarray(c["mean"])) / np.asarray(c["std"])) @ np.asarray(c["coef"]) + c["intercept"]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _grouped_oof(X: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float, k: int = 5) -> np.ndarray:
    """Out-of-fold probabilities, folds by a hash of the patient id (deterministic)."""
    fold = np.array([int(name_hash(f"fold:{g}"), 16) % k for g in groups])
    p = np.zeros(len(y))
    for f in range(k):
        te = fold == f
        if te.any() and len(set(y[~te])) == 2:
            p[te] = _apply_logistic(_fit_logistic(X[~te], y[~te], C), X[te])
    return p


def _select_C(X: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: Sequence[float]) -> tuple[float, dict[str, float]]:
    from cds.evaluation.metrics import auroc

    scores = {str(C): round(auroc(y, _grouped_oof(X, y, groups, C)), 4) for C in grid}
    best = max(grid, key=lambda C: (scores[str(C)], -C))
    return float(best), scores


def _split_items(items: list[dict[str, Any]]) -> dict[str, str]:
    """Patient -> train / val / test (:func:`nodule_crops.patient_split`, stratified by any nodule rated >= 4)."""
    plab: dict[str, int] = {}
    for it in items:
        plab[it["patient_id"]] = max(plab.get(it["patient_id"], 0), int(it["label"] == 1))
    return nc.patient_split(list(plab), plab)


def _feature_matrix(res: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[r["features"][n] for n in FEATURE_NAMES] for r in res], float)


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          quick: bool = False) -> Path:
    """Train the bundle on a ``lidc-nodule-crops`` style folder and write it (card numbers from :func:`evaluate`).

    Patients are split by :func:`cds.models.tasks.nodule_crops.patient_split` (60 / 20 / 20 %). The UNet
    learns the masks of the training patients (:data:`EPOCHS` epochs); the diameter calibration, the
    suspicion classifier (L2 penalty by 5-fold cross-validation by patient) and the size-only baseline are
    fitted on the training and validation patients' nodules as the trained UNet segments them (nodules
    rated 3 left out); the threshold is the Youden point of the out-of-fold probabilities. The test
    patients are used only by :func:`evaluate`. ``quick``: 40 patients, 2 epochs, 200 bootstrap resamples
    (for tests; not a model to ship). Deterministic for a given ``seed`` on one machine.
    """
    from cds.evaluation.metrics import auroc
    from cds.models.bundle import save_bundle
    from cds.models.card_files import write_performance
    from cds.models.training import band_around, deterministic, youden_threshold

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    out = Path(out_dir) if out_dir is not None else DEFAULT_BUNDLE
    df = nc.load_table(root, need_masks=True)
    if quick:
        keep = sorted(df["patient_id"].unique())[:40]
        df = df[df["patient_id"].isin(keep)].reset_index(drop=True)
    items = _prepare(df)
    split = _split_items(items)
    for it in items:
        it["split"] = split[it["patient_id"]]
    tr = [it for it in items if it["split"] == "train"]
    fit = [it for it in items if it["split"] in ("train", "val")]
    epochs = 2 if quick else EPOCHS
    with deterministic(seed):
        net, losses = _train_segmenter(tr, epochs, seed)
        model = {"net": net, "classifier": {"mean": [0.0] * len(FEATURE_NAMES), "std": [1.0] * len(FEATURE_NAMES),
                                            "coef": [0.0] * len(FEATURE_NAMES), "intercept": 0.0},
                 "diameter_calibration": {"slope": 1.0, "intercept": 0.0}, "vouched_diameter_mm": [0.0, 1e9]}
        res = _run_items(model, fit)
    found = [i for i, r in enumerate(res) if r["found"]]
    eqd = np.array([res[i]["eqd_mm"] for i in found])
    ref = np.array([fit[i]["diameter_ref"] for i in found])
    slope, intercept = np.polyfit(eqd, ref, 1)
    cal = {"slope": round(float(slope), 6), "intercept": round(float(intercept), 6),
           "fitted_on": "training + validation patients' nodules as segmented by the trained UNet",
           "target": "diameter_mm of nodules.csv (LIDC readers' diameter)"}
    lab = [i for i in found if fit[i]["label"] is not None]
    X = _feature_matrix([res[i] for i in lab])
    y = np.array([int(fit[i]["label"]) for i in lab])
    groups = np.array([fit[i]["patient_id"] for i in lab])
    C, cv_auroc = _select_C(X, y, groups, C_GRID if not quick else (0.1, 1.0))
    clf = _fit_logistic(X, y, C)
    oof = _grouped_oof(X, y, groups, C)
    thr = youden_threshold(y, oof)
    band = band_around(oof, thr, 0.05)
    size_X = np.log(np.array([[fit[i]["diameter_ref"]] for i in lab]))
    size_ref = _fit_logistic(size_X, y, 1e6)
    size_meas = _fit_logistic(X[:, [0]], y, 1e6)
    dice_val = [r["dice"] for r, it in zip(res, fit, strict=True) if it["split"] == "val"]
    d_all = [it["diameter_ref"] for it in fit]
    vouched = [round(max(0.0, float(min(d_all)) - 1.0), 2), round(float(max(d_all)) + 3.0, 2)]
    training = {
        "name": "LIDC-IDRI nodule crops (lidc-nodule-crops)" + (" (quick: first 40 patients)" if quick else ""),
        "path": display_path(root), "seed": seed,
        "split": "patient-level by sha256 hash of the patient id (salt " + nc.SPLIT_SALT + "), stratified by "
                 "whether the patient has a nodule rated >= 4: train 60 % / validation 20 % / test 20 %",
        "n_patients": {s: len({it["patient_id"] for it in items if it["split"] == s}) for s in ("train", "val", "test")},
        "n_nodules": {s: sum(it["split"] == s for it in items) for s in ("train", "val", "test")},
        "segmenter": {"trained_on": "train patients", "epochs": epochs, "loss_per_epoch": losses,
                      "validation_dice_mean": round(float(np.mean(dice_val)), 4) if dice_val else None},
        "classifier": {"fitted_on": "train + validation patients, nodules rated 1-2 vs 4-5",
                       "n_nodules": int(len(y)), "n_suspicious": int(y.sum()),
                       "cv_auroc_by_C": cv_auroc, "cv_auroc_size_only": round(auroc(y, size_X[:, 0]), 4)},
        "patient_ids": "configs/training_patients.json (sha256(patient_id)[:16] of train and validation patients)",
        "licence": "LIDC-IDRI: Creative Commons Attribution 3.0 (TCIA); cite Armato 2011",
    }
    extra = {"working_spacing_mm": WORK_MM, "hu_range": list(HU_RANGE), "cut_mm": CUT_MM,
             "max_cut_mm": MAX_CUT_MM, "features": list(FEATURE_NAMES),
             "classifier": {**clf, "threshold": round(float(thr), 6)},
             "size_only": {"reference_diameter": {**size_ref, "feature": "log(diameter_mm of nodules.csv)"},
                           "measured_diameter": {**size_meas, "feature": "log(equivalent-sphere diameter, model)"}},
             "diameter_calibration": cal, "vouched_diameter_mm": vouched}
    card = _card(training, float(thr), band, C)
    path = save_bundle(out, card, _network_def(), net.state_dict(), inference_extra=extra)
    manifest = {"hash": "sha256(patient_id)[:16]",
                "train": sorted(name_hash(p) for p, s in split.items() if s == "train"),
                "val": sorted(name_hash(p) for p, s in split.items() if s == "val")}
    (path / "configs" / "training_patients.json").write_text(json.dumps(manifest, indent=1) + "\n")
    test = [it for it in items if it["split"] == "test"]
    result = evaluate(root, path, n_boot=200 if quick else 2000, _items=test,
                      _n_excluded=len({it["patient_id"] for it in fit}))
    write_performance(path, result, PERFORMANCE_KEYS, extra={"targets": result["targets"]})
    return path


PERFORMANCE_KEYS = ("data", "split", "split_rule", "n_cases", "n_patients", "n_positive", "metrics", "comparisons",
                    "bootstrap", "notes", "evaluation_command")
TARGETS = {"diameter_mae_mm": ("<=", 1.5), "auroc": (">=", 0.94)}


def _card(training: dict[str, Any], thr: float, band: list[float], C: float) -> dict[str, Any]:
    from cds.models.card_files import monai_metadata

    cds = {
        "model_id": MODEL_ID,
        "task": NAME,
        "modality": ["CT"],
        "body_site": "chest",
        "intended_use": (
            "Research and teaching reference: measure one lung nodule on chest CT (diameter, volume) and "
            "estimate how likely LIDC-style radiologists would rate it suspicious, for a reader to review. "
            "Not a diagnostic device; not a malignancy or cancer-risk prediction; not a Lung-RADS assessment."),
        "intended_for": {"age_years": [18, None], "age_unknown": "accept",
                         "age_unknown_reason": "de-identified CT (LIDC-IDRI crops) carries no PatientAge; "
                                               "LIDC-IDRI is adult thoracic CT",
                         "body_parts": ["chest"]},
        "proxy_for": (
            "The likelihood is RADIOLOGIST SUSPICION, not pathology: the chance that LIDC-IDRI radiologists "
            "(max voting of up to 4 readers) rate the nodule 4-5 on their 1-5 malignancy scale rather than 1-2. "
            "It stands in for a malignancy-risk model (e.g. Brock / PanCan or a deep nodule classifier "
            "validated against histology and follow-up), which this is not."),
        "limitations": [
            "Labels are radiologists' subjective ratings, not biopsy or follow-up; nodules rated 3 are left out "
            "of training and testing, so the likelihood says nothing calibrated about them.",
            "Size is most of the signal: radiologists' ratings follow nodule size; compare the size-only baseline "
            "beside the AUROC before reading meaning into the likelihood.",
            "Trained on crops of LIDC-IDRI scans (slices 0.45-2.5 mm): the likelihood is withheld for thicker "
            "slices; diameter and volume from thick slices are less exact.",
            "The crops end about one slice beyond the nodule in z; the network never saw the tissue above and "
            "below, so vessels leaving a nodule in z may be segmented as nodule in whole-CT use.",
            "Nodules under about 3 mm (LIDC's lower limit) and over about 35 mm are outside the training range.",
            "diameter_mm is the volume-equivalent sphere diameter calibrated to the LIDC readers' diameter; "
            "Lung-RADS asks for the mean of long and short axis: the size band is a size category only.",
            "Cross-validated AUROCs on the training + validation patients (training_data.classifier) are lower "
            "than on the test split: the test number is partly the luck of a split of under 100 patients, and "
            "the image model's edge over size alone is not shown (auroc_minus_size_only's CI includes 0).",
            "On synthetic solid spheres (tests) the volume is over-estimated, little on slices up to 1.25 mm and "
            "by up to about half on 2.5 mm slices (linear interpolation widens the thresholded nodule along z); "
            "the LIDC masks share that slice-thickness effect, so the volume agreement with them does not show "
            "it. The calibrated diameter of a sphere reads about 10 % below its true diameter, because it is "
            "calibrated to the readers' diameter, which is smaller than the masks'.",
            "Findings on whole CT (characterise) were checked on synthetic spheres only; real whole-CT "
            "candidates (vessels, pleura, fissures around the nodule) have not been evaluated.",
        ],
        "inputs": {"image": {"modality": "CT", "kind": "volume around one nodule (z, y, x), HU",
                             "spatial": "any; resampled to 1 mm isotropic; slices 0.5-10 mm"},
                   "ehr": []},
        "outputs": [
            {"code_system": SNOMED, "code": "81827009", "display": "Nodule diameter", "kind": "measurement",
             "unit": "mm"},
            {"code_system": SNOMED, "code": "118565006", "display": "Nodule volume", "kind": "measurement",
             "unit": "mm3"},
            {"code_system": NODULE_SUSPICION_CODES,
             "code": "radiologist-suspicious", "display": "Radiologists would rate the nodule suspicious "
             "(LIDC malignancy >= 4; not pathology)", "kind": "probability"},
            *({"code_system": LUNG_RADS_SIZE_BAND_CODES, "code": band,
               "display": f"Lung-RADS v2022 size category {band} (size category only, not a full Lung-RADS "
                          "assessment)", "kind": "category"} for band in SIZE_BANDS),
        ],
        "code_note": ("Diameter and volume use SNOMED CT qualifiers (as cds.codes.EXTRA_MEASUREMENTS); the "
                      "suspicion is a local code: no LOINC or SNOMED concept names 'LIDC radiologist rating'."),
        "threshold": round(thr, 4),
        "indeterminate": band,
        "operating_point": {"how_chosen": "Youden point of the out-of-fold (5-fold by patient) probabilities on "
                                          "the training + validation patients; band: 5 % of those nodules on "
                                          "either side in rank"},
        "measurement_definitions": {
            "diameter_mm": "equivalent-sphere diameter of the segmented volume, linearly calibrated to the LIDC "
                           "readers' diameter (nodules.csv diameter_mm) on the training + validation patients",
            "long_axis_mm": "longest in-plane (axial) extent of the segmentation (in characterise's answer and "
                            "the diameter Finding's explanation)",
            "volume_mm3": "voxels of the segmentation on the 1 mm working grid",
            "size_category": "Lung-RADS v2022 baseline solid-nodule size bands on diameter_mm: < 6 mm 2, "
                             "6 to < 8 mm 3, 8 to < 15 mm 4A, >= 15 mm 4B; size category only, not a full "
                             "Lung-RADS assessment",
        },
        "features": list(FEATURE_NAMES),
        "hyperparameters": {"working_spacing_mm": WORK_MM, "patch": PATCH, "epochs": training["segmenter"]["epochs"],
                            "batch": BATCH, "lr": LR, "network": "MONAI UNet 8-16-32-64, 1 residual unit",
                            "classifier_C": C, "C_grid": list(C_GRID)},
        "context": [
            "LIDC-IDRI studies distinguishing ratings 4-5 from 1-2 typically report AUROC 0.85-0.95 for size and "
            "radiomics models and up to about 0.95 for CNNs; numbers depend on the rating aggregation.",
        ],
        "training_data": training,
        "performance": {},
    }
    return monai_metadata(
        version=MODEL_VERSION, name=MODEL_ID, task="Lung nodule measurement and radiologist-suspicion likelihood",
        description="MONAI 3D UNet segmentation on a 1 mm grid; diameter / volume on its segmentation; logistic "
                    "regression over size, shape, HU and margin features for LIDC radiologist suspicion.",
        cds=cds,
        inputs={"image": {"type": "image", "format": "hounsfield", "num_channels": 1, "spatial_shape": [PATCH] * 3,
                          "dtype": "float32", "value_range": list(HU_RANGE), "is_patch_data": True,
                          "channel_def": {"0": "CT (HU clipped to -1000..400, scaled to 0..1)"}}},
        outputs={"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                          "spatial_shape": [PATCH] * 3, "dtype": "float32", "value_range": [0, 1],
                          "is_patch_data": True, "channel_def": {"0": "nodule logit"}}},
        data_source="LIDC-IDRI (Armato 2011, TCIA, CC BY 3.0) nodule crops with masks and max-voting ratings",
        data_type="nifti",
        references=["Armato SG 3rd et al. The Lung Image Database Consortium (LIDC) and Image Database Resource "
                    "Initiative (IDRI). Med Phys 38(2):915-931, 2011. doi:10.1118/1.3528204",
                    "American College of Radiology. Lung-RADS v2022."],
        changelog={MODEL_VERSION: "first model: UNet segmentation + feature logistic regression on LIDC crops"},
    )


# ------------------------------------------------------------------------------------ evaluation
def _training_patients(b: Any) -> set[str]:
    p = Path(b.path) / "configs" / "training_patients.json"
    if not p.is_file():
        raise ParameterError("bundle", f"{p}: missing (the bundle must list its training patients)")
    d = json.loads(p.read_text())
    return set(d.get("train", [])) | set(d.get("val", []))


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             **_private: Any) -> dict[str, Any]:
    """The card's metrics on a ``lidc-nodule-crops`` style folder, on patients the model never saw.

    Every patient whose hashed id is in the bundle's ``configs/training_patients.json`` (training and
    validation patients) is left out and counted (``n_excluded_patients``); on a held-back folder every
    patient counts. Metrics (95 % percentile bootstrap CIs resampling patients): ``auroc`` (image model,
    Malignancy >= 4 vs <= 2), ``auroc_size_only`` (logistic regression on the readers' diameter_mm,
    fitted on the training patients), ``auroc_size_only_measured`` (on the model's own diameter),
    ``auroc_minus_size_only`` (paired), sensitivity / specificity at the card threshold,
    ``diameter_mae_mm`` and ``diameter_bias_mm`` (model vs diameter_mm), ``volume_median_abs_rel_error``
    (vs the reference mask's volume), ``dice_mean`` (vs the reference masks, when present) and
    ``size_category_agreement`` (model band vs the band of diameter_mm).
    """
    from cds.evaluation.metrics import auroc, binary_metrics, bootstrap_ci, round_metric

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    b = load_bundle(bundle_dir)
    model = _model(b)
    seen = _training_patients(b)
    if "_items" in _private:
        items = _private["_items"]
        n_excluded = int(_private.get("_n_excluded", 0))
    else:
        df = nc.load_table(root)
        is_seen = df["patient_id"].map(lambda p: name_hash(str(p)) in seen)
        n_excluded = int(df.loc[is_seen, "patient_id"].nunique())
        df = df[~is_seen].reset_index(drop=True)
        if df.empty:
            raise ParameterError("data_dir", f"{root}: every patient is a training or validation patient of "
                                             f"{b.path.name}; nothing left to evaluate")
        items = _prepare(df)
    res = _run_items(model, items)
    pid = np.array([it["patient_id"] for it in items])
    found = np.array([r["found"] for r in res])
    inf = b.inference
    seed = int(b.model_card.training_data.get("seed", 0))
    boot = {"n_boot": n_boot, "seed": seed}
    metrics: dict[str, Any] = {}
    # suspicion: labelled nodules; a nodule the model did not find or cannot vouch for scores 0.5 (no answer)
    lab = np.array([it["label"] is not None for it in items])
    y = np.array([int(it["label"]) if it["label"] is not None else 0 for it in items])[lab]
    p_img = np.array([r["likelihood"] if r["likelihood"] is not None else 0.5 for r in res])[lab]
    g = pid[lab]
    d_ref = np.array([it["diameter_ref"] for it in items])
    size_ref = _apply_logistic(inf["size_only"]["reference_diameter"], np.log(d_ref[:, None]))[lab]
    d_model = np.array([r["eqd_mm"] if r["found"] else np.nan for r in res])
    size_meas = _apply_logistic(inf["size_only"]["measured_diameter"],
                                np.log(np.nan_to_num(d_model, nan=1.0)[:, None]).clip(0.0))[lab]
    thr = b.model_card.threshold
    bm = binary_metrics(y, p_img, thr, groups=g, n_boot=n_boot, seed=seed)
    metrics["auroc"] = bm["auroc"]
    metrics["auroc_size_only"] = round_metric(bootstrap_ci(auroc, y, size_ref, n_boot=n_boot, seed=seed, groups=g))
    metrics["auroc_size_only_measured"] = round_metric(bootstrap_ci(auroc, y, size_meas, n_boot=n_boot, seed=seed,
                                                                    groups=g))
    metrics["auroc_minus_size_only"] = round_metric(bootstrap_ci(
        lambda a, p, q: auroc(a, p) - auroc(a, q), y, p_img, size_ref, n_boot=n_boot, seed=seed, groups=g))
    metrics["sensitivity"] = bm["sensitivity"]
    metrics["specificity"] = bm["specificity"]
    # measurement
    d_cal = np.array([r["diameter_mm"] if r["found"] else np.nan for r in res])
    f_idx = np.flatnonzero(found)
    err = d_cal[f_idx] - d_ref[f_idx]
    metrics["diameter_mae_mm"] = round_metric(bootstrap_ci(lambda e: float(np.mean(np.abs(e))), err,
                                                           n_boot=n_boot, seed=seed, groups=pid[f_idx]))
    metrics["diameter_bias_mm"] = round_metric(bootstrap_ci(lambda e: float(np.mean(e)), err, n_boot=n_boot,
                                                            seed=seed, groups=pid[f_idx]))
    has_mask = np.array(["mask_volume_mm3" in it for it in items])
    m_idx = np.flatnonzero(found & has_mask)
    if len(m_idx):
        vol = np.array([res[i]["volume_mm3"] for i in m_idx])
        ref_v = np.array([items[i]["mask_volume_mm3"] for i in m_idx])
        rel = (vol - ref_v) / ref_v
        metrics["volume_median_abs_rel_error"] = round_metric(bootstrap_ci(
            lambda e: float(np.median(np.abs(e))), rel, n_boot=n_boot, seed=seed, groups=pid[m_idx]))
        metrics["volume_median_rel_bias"] = round_metric(bootstrap_ci(
            lambda e: float(np.median(e)), rel, n_boot=n_boot, seed=seed, groups=pid[m_idx]))
        dice_idx = np.flatnonzero(has_mask)
        dice = np.array([res[i]["dice"] for i in dice_idx])
        metrics["dice_mean"] = round_metric(bootstrap_ci(lambda d: float(np.mean(d)), dice, n_boot=n_boot,
                                                         seed=seed, groups=pid[dice_idx]))
    agree = np.array([lung_rads_size_category(d_cal[i]) == lung_rads_size_category(d_ref[i]) for i in f_idx], float)
    metrics["size_category_agreement"] = round_metric(bootstrap_ci(lambda a: float(np.mean(a)), agree,
                                                                   n_boot=n_boot, seed=seed, groups=pid[f_idx]))
    targets = {k: {"target": f"{op} {v}", "met": bool(metrics[k]["value"] is not None and (
        metrics[k]["value"] <= v if op == "<=" else metrics[k]["value"] >= v))} for k, (op, v) in TARGETS.items()}
    a_img, a_size = metrics["auroc"]["value"], metrics["auroc_size_only"]["value"]
    targets["auroc_not_below_size_only"] = {"target": "auroc >= auroc_size_only",
                                            "met": bool(a_img is not None and a_size is not None and a_img >= a_size)}
    n_unvouched = int(sum(1 for r in res if r["found"] and r["likelihood"] is None))
    notes = [
        f"{n_excluded} patient(s) of this folder are training or validation patients of the bundle and were left out."
        if n_excluded else "No patient of this folder is a training or validation patient of the bundle.",
        f"{int((~found).sum())} of {len(items)} nodules were not found by the segmentation (no measurement; "
        "their likelihood counts as 0.5 in the AUROC).",
        f"{n_unvouched} found nodule(s) got no likelihood (outside what the model vouches for; counted as 0.5).",
        "Suspicion = LIDC Malignancy (max voting) >= 4 vs <= 2; nodules rated 3 are left out. Radiologist "
        "suspicion, not pathology.",
    ]
    return {
        "task": NAME, "model_id": b.model_id, "model_version": b.version,
        "data": display_path(root),
        "split": "patients the model never saw (training and validation patients excluded)",
        "split_rule": "a patient counts unless sha256(patient_id)[:16] is in the bundle's configs/training_patients.json",
        "n_cases": len(items), "n_nodules": len(items), "n_patients": int(len(set(pid))),
        "n_excluded_patients": n_excluded, "n_labelled": int(lab.sum()), "n_positive": int(y.sum()),
        "n_found": int(found.sum()),
        "metrics": metrics,
        "comparisons": {"size_only_baseline": "logistic regression on log(diameter_mm) of nodules.csv (the readers' "
                                              "diameter), fitted on the training + validation patients",
                        "size_only_measured": "the same on the model's own (uncalibrated) diameter"},
        "targets": targets,
        "bootstrap": {**boot, "unit": "patient", "method": "percentile"},
        "notes": notes,
        "evaluation_command": f"cds evaluate {NAME} --data {display_path(root)} --json",
    }


# ------------------------------------------------------------------------------------- the task
class NoduleCharacterisationTask(TrainableTask):
    """A CT crop around one nodule -> diameter, volume and suspicion Findings."""

    name = NAME
    evaluate_options = ()

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on the crop (``image.array`` is ``(slices, rows, cols)``) then :func:`to_findings`."""
        arr = np.asarray(image.array)
        if arr.ndim != 3:
            raise ModelInputError(str(image.source), f"expected a CT volume around one nodule, got shape {arr.shape}")
        ref = image_ref(image)
        pred = predict(bundle, arr, tuple(float(s) for s in image.spacing))
        return to_findings(bundle, pred, ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids, ehr)

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (no options)."""
        self.check_options(options)
        return evaluate(data_dir, bundle_dir, n_boot=n_boot)


TASK = NoduleCharacterisationTask()
"""The ct-nodule-characterisation task object listed in :data:`cds.models.task_table.TASKS`."""
