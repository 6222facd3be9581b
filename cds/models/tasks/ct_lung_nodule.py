"""``ct-lung-nodule``: chest CT series -> lung nodule / mass candidates with boxes in patient LPS mm.

What it does
------------
A classical detector with a small learned scorer (see :mod:`cds.models.tasks.lung_ct` for the steps):

0. the working grid (:func:`~cds.models.tasks.lung_ct.work_grid`): about 1.5 mm pixels; slices thinner
   than 2.5 mm are averaged, slices thicker than 5 mm (routine 8 or 10 mm reconstructions) are
   linearly interpolated along the normal to <= 5 mm. Slice spacing 0.5-10 mm is accepted, anything
   else refused with the reason;
1. lung masks from air (< -400 HU) enclosed by the body, trachea removed, split into right / left,
   closed and hole-filled per slice; the search region adds a juxtapleural band (each lung's
   per-slice convex hull, within 25 mm of aerated lung) so masses against the chest wall or the
   mediastinum are searched too;
2. multi-scale Laplacian-of-Gaussian blob seeds (sigma 2..19 mm) in the search region, one region
   per seed (voxels > -500 HU within 1.5 radii), larger blobs first so their texture is not
   re-detected;
3. 12 features per candidate (``CANDIDATE_FEATURES``: size, HU mean/std, sphericity, elongation,
   fill ratio, distance to pleura, fraction outside aerated lung, Hessian blob / tube ratios);
4. the learned part: a small MLP (MONAI ``FullyConnectedNet`` 12 -> 32 -> 1) over the standardised
   features, trained (:func:`train`) on candidates of **real LIDC-IDRI nodules** (crops + masks of
   the training patients, pasted into the real CT at its spacing with partial volume,
   :func:`~cds.models.tasks.lung_ct.insert_crop`) plus a few synthetic masses, against the real CT's
   own candidates away from them and from the annotated lesions, at 5 mm and at simulated 8 and 10 mm
   slices (slab averaging, :func:`~cds.models.tasks.lung_ct.thick_series`). LIDC patients are split
   train / val / test; the series' right lung is used to fit and set the threshold, the left lung
   (where the annotated lesion is) only for held-out numbers;
5. each reported candidate is characterised (diameter, volume, size category, malignancy
   likelihood) by ``cds.models.tasks.ct_nodule_characterisation`` (:func:`characterise_candidates`)
   and carries it in its Finding.

Hit rule used by :func:`evaluate` (documented in the card): a candidate hits a lesion when its centre
voxel lies within the lesion's slice range +-1 slice and inside the lesion's annotated box on the
nearest annotated slice (pixel coordinates), or when its voxel box overlaps the lesion's voxel box
with 3D IoU >= 0.25. Lesions are the annotated 2D boxes merged across adjacent slices when they
overlap. Several candidates on one lesion count once and are not false positives.

Thick reconstructions: :func:`evaluate` also scores 2.5 / 5 / 8 / 10 mm slab averages of every thinner
series (``by_slice_thickness``); :func:`write_thick_copy` (``python -m cds.models.tasks.ct_lung_nodule
--data DIR --out DIR --mm 8``) writes such a copy as DICOM for ``cds evaluate``.

Examples
--------
>>> _clopper_pearson(1, 1)[0] > 0.02
True
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import SNOMED
from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.locations import BUNDLES_DIR, display_path
from cds.models.card_markdown import readme_for
from cds.models.task import TrainableTask, image_ref
from cds.models.tasks.lung_ct import (
    CANDIDATE_FEATURES,
    Candidate,
    CtSeries,
    DetectorConfig,
    LungMasks,
    WorkGrid,
    detect_candidates,
    find_series_folders,
    index_to_lps,
    insert_crop,
    insert_nodule,
    lung_masks,
    read_ct_series,
    thick_series,
    work_grid,
)

if TYPE_CHECKING:
    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = [
    "NAME",
    "TASK",
    "MODEL_ID",
    "DEFAULT_BUNDLE",
    "train",
    "evaluate",
    "predict",
    "to_findings",
    "analyse_volume",
    "load_lesions",
]

NAME = "ct-lung-nodule"
MODEL_ID = "ct-lung-nodule"
MODEL_VERSION = "0.2.0"
DEFAULT_BUNDLE = BUNDLES_DIR / MODEL_ID
DATA_SET = "lung-pet-ct-dx"
OUTPUT_CODE = {"code_system": SNOMED, "code": "27925004", "display": "Nodule"}
BODY_SITE = {"code_system": SNOMED, "code": "39607008", "display": "Lung structure"}
HIT_IOU = 0.25
SLICE_TOLERANCE = 1
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
REPORT_RATES = (*FROC_RATES, 10.0)
#: thick reconstructions :func:`evaluate` simulates from every thinner series (slab averaging)
SIMULATED_THICKNESS_MM = (2.5, 5.0, 8.0, 10.0)
SLICE_SPACING_RANGE_MM = (0.5, 10.0)
PIXEL_SPACING_RANGE_MM = (0.4, 1.2)


# ----------------------------------------------------------------------------------------------
# Running the detector on a volume
# ----------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Masks and candidates of one volume (working grid) plus the map back to full resolution."""

    masks: LungMasks
    candidates: list[Candidate]
    grid: WorkGrid
    shape: tuple[int, int, int]


def _check_geometry(volume_hu: Any, spacing: Any, origin: Any, direction: Any) -> tuple[np.ndarray, tuple, tuple, np.ndarray]:
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ParameterError("volume_hu", f"expected a 3D (slices, rows, columns) array, got shape {vol.shape}")
    sp = tuple(float(s) for s in np.asarray(spacing, float).ravel())
    if len(sp) != 3 or min(sp) <= 0:
        raise ParameterError("spacing", f"expected 3 positive values (slice, row, column spacing) in mm, got {spacing!r}")
    org = tuple(float(s) for s in np.asarray(origin, float).ravel())
    if len(org) != 3:
        raise ParameterError("origin", f"expected 3 values (LPS mm), got {origin!r}")
    if direction is None:
        raise ParameterError("direction", "needed: a 3x3 matrix whose columns are the LPS directions of the array axes")
    dirm = np.asarray(direction, float)
    if dirm.size != 9:
        raise ParameterError("direction", "expected a 3x3 matrix (column a = LPS direction of array axis a)")
    dirm = dirm.reshape(3, 3)
    if abs(abs(np.linalg.det(dirm)) - 1.0) > 0.05:
        raise ParameterError("direction", "not an orthonormal 3x3 direction matrix")
    if not (SLICE_SPACING_RANGE_MM[0] <= sp[0] <= SLICE_SPACING_RANGE_MM[1]):
        raise ModelInputError("spacing", f"slice spacing {sp[0]:.2f} mm is outside the supported "
                              f"{SLICE_SPACING_RANGE_MM[0]}-{SLICE_SPACING_RANGE_MM[1]} mm")
    if not all(PIXEL_SPACING_RANGE_MM[0] <= s <= PIXEL_SPACING_RANGE_MM[1] for s in sp[1:]):
        raise ModelInputError("spacing", f"pixel spacing {sp[1]:.2f} x {sp[2]:.2f} mm is outside the supported "
                              f"{PIXEL_SPACING_RANGE_MM[0]}-{PIXEL_SPACING_RANGE_MM[1]} mm")
    lo, hi = float(np.min(vol)), float(np.max(vol))
    if lo > -500 or hi < 0:
        raise ModelInputError("volume_hu", f"values {lo:.0f}..{hi:.0f} do not look like CT Hounsfield units")
    return vol, sp, org, dirm


def analyse_volume(volume_hu: np.ndarray, spacing: Sequence[float], direction: Any = None,
                   cfg: DetectorConfig | None = None) -> Analysis:
    """Working grid (:func:`~cds.models.tasks.lung_ct.work_grid`), lung masks and unscored candidates
    of one HU volume ``[k, j, i]``."""
    cfg = cfg or DetectorConfig()
    w, grid = work_grid(volume_hu, spacing, cfg)
    masks = lung_masks(w, grid.spacing, direction, cfg)
    cands = detect_candidates(w, masks, cfg)
    return Analysis(masks=masks, candidates=cands, grid=grid, shape=tuple(volume_hu.shape))


def _feature_matrix(cands: Sequence[Candidate], names: Sequence[str] = CANDIDATE_FEATURES) -> np.ndarray:
    return np.array([[c.features[n] for n in names] for c in cands], dtype=np.float64).reshape(len(cands), len(names))


def _to_full(an: Analysis, c: Candidate, spacing: Sequence[float], origin: Sequence[float],
             direction: np.ndarray) -> dict[str, Any]:
    box = an.grid.box_to_full(c.box_kji, an.shape)
    centre = list(an.grid.to_full(c.centroid_kji))
    corners = np.array([[a, b, d] for a in (box[0] - 0.5, box[3] + 0.5) for b in (box[1] - 0.5, box[4] + 0.5)
                        for d in (box[2] - 0.5, box[5] + 0.5)])
    lps = index_to_lps(corners, spacing, origin, direction)
    centre_lps = index_to_lps([centre], spacing, origin, direction)[0]
    return {
        "box_voxel": [int(b) for b in box],
        "centre_voxel": [float(v) for v in centre],
        "box_lps": [float(v) for v in np.concatenate([lps.min(0), lps.max(0)])],
        "centre_lps": [float(v) for v in centre_lps],
        "diameter_mm": float((6.0 * c.volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0)),
        "volume_ml": float(c.volume_ml),
        "side": {1: "right", 2: "left"}.get(c.side, "unknown"),
        "features": {k: float(v) for k, v in c.features.items()},
    }


# ----------------------------------------------------------------------------------------------
# The bundle
# ----------------------------------------------------------------------------------------------


def _bundle(bundle: Any) -> Any:
    from cds.models.bundle import Bundle, load_bundle

    if isinstance(bundle, Bundle):
        return bundle
    return load_bundle(DEFAULT_BUNDLE if bundle is None else bundle)


def _scores(bundle: Any, feats: np.ndarray) -> np.ndarray:
    if len(feats) == 0:
        return np.zeros(0)
    import torch

    inf = bundle.inference
    names = inf.get("features")
    if list(names or []) != list(CANDIDATE_FEATURES):
        raise ParameterError("bundle", f"{bundle.path}: feature list in inference.json does not match this code")
    mean = np.asarray(inf["feature_mean"], float)
    std = np.asarray(inf["feature_std"], float)
    z = (feats - mean) / std
    net = bundle.network()
    with torch.inference_mode():
        logits = net(torch.as_tensor(z, dtype=torch.float32)).reshape(-1)
    return torch.sigmoid(logits).double().numpy()


def predict(bundle: Any, volume_hu: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
            direction: Any, min_score: float = 0.0) -> list[dict[str, Any]]:
    """Candidates of one CT volume, best first.

    Parameters
    ----------
    bundle : Bundle, path or None
        The ``ct-lung-nodule`` bundle (``None``: the one shipped in ``cds/models/bundles``).
    volume_hu : array (slices, rows, columns)
        Hounsfield units, slices sorted along the slice normal (see :mod:`cds.models.tasks.lung_ct`).
    spacing, origin, direction
        As in :mod:`cds.images.read`: mm per array axis ``(slice, row, column)``; LPS of the centre of voxel
        [0, 0, 0]; 3x3 matrix whose column ``a`` is the LPS direction of array axis ``a``.
    min_score : float
        Drop candidates scoring below this.

    Returns
    -------
    list of dict
        ``score`` (0..1, the learned candidate score; not a calibrated probability), ``box_voxel``
        ``[k0, j0, i0, k1, j1, i1]`` (array indices, inclusive), ``box_lps`` ``[x0, y0, z0, x1, y1, z1]``
        (mm, through the outer voxel edges), ``centre_voxel`` ``(k, j, i)``, ``centre_lps``,
        ``diameter_mm`` (equivalent sphere),
        ``volume_ml``, ``side`` and ``features``.
    """
    b = _bundle(bundle)
    vol, sp, org, dirm = _check_geometry(volume_hu, spacing, origin, direction)
    cfg = DetectorConfig.from_dict(b.inference.get("detector", {}))
    an = analyse_volume(vol, sp, dirm, cfg)
    scores = _scores(b, _feature_matrix(an.candidates))
    out = []
    for c, s in zip(an.candidates, scores, strict=True):
        if s < min_score:
            continue
        d = _to_full(an, c, sp, org, dirm)
        d["score"] = float(s)
        out.append(d)
    out.sort(key=lambda d: -d["score"])
    return out


CHARACTERISATION_MODULE = "cds.models.tasks.ct_nodule_characterisation"
CHARACTERISATION_KEYS = ("diameter_mm", "volume_mm3", "likelihood", "size_category")
CHARACTERISATION_OPTIONAL = ("long_axis_mm", "found", "vouched", "reasons")
_CHARACTERISER_CACHE: dict[str, Any] = {}


def default_characteriser() -> Any:
    """The nodule characterisation model (``cds.models.tasks.ct_nodule_characterisation``: an object with
    ``load_bundle()`` and ``characterise(bundle, volume_hu, spacing_zyx, centre_zyx)``), or None when
    it is not installed."""
    import importlib

    try:
        return importlib.import_module(CHARACTERISATION_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and CHARACTERISATION_MODULE.startswith(exc.name):
            return None
        raise


def characterise_candidates(candidates: Sequence[dict[str, Any]], volume_hu: np.ndarray, spacing: Sequence[float],
                            characteriser: Any = None, min_score: float | None = None,
                            bundle: Any = None) -> list[dict[str, Any]]:
    """Every candidate (scoring >= ``min_score``) with ``characterisation``: what ``characteriser`` says of it.

    ``characteriser.characterise(bundle, volume_hu, spacing, centre_voxel)`` must return a dict with
    ``diameter_mm``, ``volume_mm3``, ``likelihood`` (0..1) and ``size_category`` (each may be None: no
    nodule found, or the model does not vouch), optionally ``found``, ``vouched``, ``reasons`` and
    ``long_axis_mm`` (kept too); ``bundle`` defaults to ``characteriser.load_bundle()`` (loaded once
    per characteriser). When the characteriser cannot load its bundle or measure a candidate (a
    :class:`~cds.errors.CdsError`), the candidate's ``characterisation`` is ``{"error": reason}``.
    Candidates are copied, not changed in place; ``characteriser=None`` copies them only.

    >>> class Fake:
    ...     def load_bundle(self): return "b"
    ...     def characterise(self, bundle, vol, sp, c):
    ...         return {"diameter_mm": 7.0, "volume_mm3": 180.0, "likelihood": 0.1, "size_category": "3"}
    >>> out = characterise_candidates([{"score": 0.9, "centre_voxel": [1, 2, 3]}], np.zeros((2, 4, 4)), (5, 1, 1), Fake())
    >>> out[0]["characterisation"]["size_category"]
    '3'
    """
    from cds.errors import CdsError

    if characteriser is None:
        return [dict(c) for c in candidates]
    load_error = None
    if bundle is None:
        key = f"{id(characteriser)}"
        if key not in _CHARACTERISER_CACHE:
            try:
                _CHARACTERISER_CACHE[key] = characteriser.load_bundle()
            except CdsError as exc:
                load_error = f"characterisation model unavailable: {exc}"
        bundle = _CHARACTERISER_CACHE.get(key)
    out = []
    for c in candidates:
        d = dict(c)
        if min_score is None or float(c["score"]) >= min_score:
            if load_error:
                d["characterisation"] = {"error": load_error}
                out.append(d)
                continue
            centre = tuple(float(v) for v in c["centre_voxel"])
            try:
                ch = dict(characteriser.characterise(bundle, volume_hu, tuple(float(s) for s in spacing), centre))
            except CdsError as exc:
                d["characterisation"] = {"error": str(exc)}
            else:
                missing = [k for k in CHARACTERISATION_KEYS if k not in ch]
                if missing:
                    raise ParameterError("characteriser", f"{characteriser!r} returned no {', '.join(missing)}")
                d["characterisation"] = {k: ch[k] for k in (*CHARACTERISATION_KEYS, *CHARACTERISATION_OPTIONAL)
                                         if k in ch}
                model = getattr(bundle, "model_id", None)
                if model:
                    d["characterisation"]["model"] = f"{model} {getattr(bundle, 'version', '')}".strip()
        out.append(d)
    return out


def _characterisation_text(ch: dict[str, Any]) -> str:
    """One line for the explanation (explorer, report, FHIR note).

    >>> _characterisation_text({"diameter_mm": 7.04, "volume_mm3": 180.0, "likelihood": None, "size_category": "3",
    ...                         "reasons": ["slices of 5 mm are thicker than the training scans' 2.5 mm"]})
    "nodule characterisation: 7.0 mm, 180 mm3, size category 3; malignancy likelihood not given (slices of 5 mm are thicker than the training scans' 2.5 mm)"
    """
    if ch.get("error"):
        return f"not characterised: {ch['error']}"
    reasons = "; ".join(str(r) for r in ch.get("reasons") or ())
    if ch.get("diameter_mm") is None:
        return "nodule characterisation: no nodule segmented at this candidate" + (f" ({reasons})" if reasons else "")
    text = (f"nodule characterisation: {float(ch['diameter_mm']):.1f} mm, {float(ch['volume_mm3']):.0f} mm3, "
            f"size category {ch['size_category']}; ")
    if ch.get("likelihood") is None:
        return text + "malignancy likelihood not given" + (f" ({reasons})" if reasons else "")
    return text + f"malignancy likelihood {float(ch['likelihood']):.2f}"


def to_findings(bundle: Any, candidates: Sequence[dict[str, Any]], patient_id: str, study_uid: str,
                series_uid: str, instance_uids: Sequence[str] = (), ehr_inputs: dict[str, Any] | None = None,
                include_negative: bool = False) -> list[Any]:
    """Turn :func:`predict` candidates into :class:`cds.finding.Finding` records (box in LPS mm).

    Candidates scoring below the lower edge of the indeterminate band are left out unless
    ``include_negative``. A candidate with ``characterisation`` (:func:`characterise_candidates`)
    carries it: ``extra["characterisation"]`` holds it whole, ``extra`` ``diameter_mm`` and
    ``volume_ml`` become its measurements (so FHIR gets them as components), and the explanation
    (explorer, report, FHIR note) names size, size category and likelihood. ``instance_uids`` (SOP Instance UIDs in slice order ``k``) lets each
    finding name the slices its box spans and the slice through its centre.
    """
    from cds.finding import Finding, Location

    b = _bundle(bundle)
    card = b.model_card
    if card.threshold is None:
        raise ParameterError("bundle", f"{b.path}: the card declares no threshold")
    thr = card.threshold
    band = card.indeterminate
    floor = band[0] if band else thr
    uids = list(instance_uids)
    out = []
    for c in candidates:
        s = float(c["score"])
        if s < floor and not include_negative:
            continue
        k0, j0, i0, k1, j1, i1 = c["box_voxel"]
        span: tuple[str, ...] = ()
        centre_uid = None
        if uids:
            span = tuple(uids[max(0, k0): min(len(uids), k1 + 1)])
            kc = int(round(c["centre_voxel"][0]))
            centre_uid = uids[min(max(kc, 0), len(uids) - 1)]
        feats = c.get("features", {})
        expl = (f"candidate score {s:.2f} (threshold {thr:.2f}); about {c['diameter_mm']:.0f} mm "
                f"({c['volume_ml']:.1f} ml), {c['side']} side, "
                f"{100 * feats.get('frac_outside_lung', 0.0):.0f} % outside aerated lung")
        extra = {"centre_lps": list(c["centre_lps"]), "box_voxel": list(c["box_voxel"]),
                 "diameter_mm": c["diameter_mm"], "volume_ml": c["volume_ml"], "body_site": dict(BODY_SITE)}
        ch = c.get("characterisation")
        if ch:
            expl += "; " + _characterisation_text(ch)
            extra["characterisation"] = dict(ch)
            if ch.get("diameter_mm") is not None and ch.get("volume_mm3") is not None:
                extra.update({"diameter_mm": float(ch["diameter_mm"]), "volume_ml": float(ch["volume_mm3"]) / 1000.0})
        out.append(Finding(
            patient_id=patient_id, study_uid=study_uid, code_system=OUTPUT_CODE["code_system"],
            code=OUTPUT_CODE["code"], display=OUTPUT_CODE["display"], model_id=b.model_id,
            model_version=b.version, probability=s, threshold=thr, indeterminate=band,
            location=Location("box", tuple(float(v) for v in c["box_lps"]), frame="LPS",
                              sop_instance_uid=centre_uid),
            series_uid=series_uid, instance_uids=span, ehr_inputs=dict(ehr_inputs or {}),
            explanation=expl, extra=extra,
        ))
    return out


# ----------------------------------------------------------------------------------------------
# Annotations and lesions
# ----------------------------------------------------------------------------------------------


@dataclass
class Lesion:
    """Annotated 2D boxes of one series merged into one 3D lesion (pixel coords, slice indices)."""

    boxes: dict[int, tuple[float, float, float, float]]  # k -> (xmin, ymin, xmax, ymax)
    label: str = ""

    @property
    def k_range(self) -> tuple[int, int]:
        return min(self.boxes), max(self.boxes)

    @property
    def box_voxel(self) -> list[float]:
        """``[k0, j0, i0, k1, j1, i1]``: the slice range and the union of the in-plane boxes."""
        b = np.array(list(self.boxes.values()))
        k0, k1 = self.k_range
        return [k0, b[:, 1].min(), b[:, 0].min(), k1, b[:, 3].max(), b[:, 2].max()]


def _read_annotations(data_dir: Path) -> Any:
    import pandas as pd

    path = data_dir / "annotations.csv"
    if not path.is_file():
        raise ParameterError("data_dir", f"{path} is missing (needs sop_instance_uid, xmin, ymin, xmax, ymax)")
    df = pd.read_csv(path)
    need = {"xmin", "ymin", "xmax", "ymax"}
    if not need <= set(df.columns) or not ({"sop_instance_uid", "file"} & set(df.columns)):
        raise ParameterError("data_dir", f"{path}: needs columns sop_instance_uid (or file) and xmin, ymin, xmax, ymax")
    return df


def load_lesions(series: CtSeries, annotations: Any) -> tuple[list[Lesion], list[tuple[int, tuple]], int]:
    """Annotated boxes of ``series`` -> (3D lesions, 2D boxes as (k, box), rows not in this series).

    Rows match by ``sop_instance_uid`` (or a ``file`` whose stem is the SOP Instance UID or whose name
    is one of the series' files). Boxes on adjacent slices (|dk| <= 1) that overlap in-plane join one lesion.
    """
    uid_k = {u: k for k, u in enumerate(series.sop_instance_uids)}
    name_k = {f.name: k for k, f in enumerate(series.files)}
    boxes: list[tuple[int, tuple, str]] = []
    for r in annotations.to_dict("records"):
        k = None
        uid = str(r.get("sop_instance_uid", "") or "")
        if uid in uid_k:
            k = uid_k[uid]
        elif "file" in r:
            fname = str(r["file"])
            k = uid_k.get(Path(fname).stem, name_k.get(fname) if "sop_instance_uid" not in r else None)
        if k is None:
            continue
        boxes.append((k, (float(r["xmin"]), float(r["ymin"]), float(r["xmax"]), float(r["ymax"])),
                      str(r.get("label", ""))))
    # union-find over boxes
    parent = list(range(len(boxes)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            (ka, ba, _), (kb, bb, _) = boxes[a], boxes[b]
            if abs(ka - kb) <= 1 and ba[0] <= bb[2] and bb[0] <= ba[2] and ba[1] <= bb[3] and bb[1] <= ba[3]:
                parent[find(a)] = find(b)
    groups: dict[int, Lesion] = {}
    for idx, (k, box, label) in enumerate(boxes):
        les = groups.setdefault(find(idx), Lesion(boxes={}, label=label))
        if k in les.boxes:  # two boxes of one lesion on one slice: keep their union
            o = les.boxes[k]
            box = (min(o[0], box[0]), min(o[1], box[1]), max(o[2], box[2]), max(o[3], box[3]))
        les.boxes[k] = box
    return list(groups.values()), [(k, box) for k, box, _ in boxes], len(annotations) - len(boxes)


def _iou3d(a: Sequence[float], b: Sequence[float]) -> float:
    inter = 1.0
    for d in range(3):
        lo, hi = max(a[d], b[d]), min(a[d + 3], b[d + 3])
        if hi < lo:
            return 0.0
        inter *= hi - lo + 1
    va = np.prod([a[d + 3] - a[d] + 1 for d in range(3)])
    vb = np.prod([b[d + 3] - b[d] + 1 for d in range(3)])
    return float(inter / (va + vb - inter))


def hits_lesion(cand: dict[str, Any], lesion: Lesion) -> bool:
    """The documented hit rule (centre in the box on the nearest annotated slice +-1, or 3D IoU >= 0.25)."""
    kc, jc, ic = cand["centre_voxel"]
    k0, k1 = lesion.k_range
    if k0 - SLICE_TOLERANCE - 0.5 <= kc <= k1 + SLICE_TOLERANCE + 0.5:
        ks = np.array(sorted(lesion.boxes))
        dist = np.abs(ks - kc)
        for k in ks[dist <= dist.min() + 1e-9]:
            x0, y0, x1, y1 = lesion.boxes[int(k)]
            if x0 <= ic <= x1 and y0 <= jc <= y1:
                return True
    return _iou3d(cand["box_voxel"], lesion.box_voxel) >= HIT_IOU


def _hits_box(cand: dict[str, Any], k: int, box: Sequence[float]) -> bool:
    k0, j0, i0, k1, j1, i1 = cand["box_voxel"]
    if not (k0 - SLICE_TOLERANCE <= k <= k1 + SLICE_TOLERANCE):
        return False
    _, jc, ic = cand["centre_voxel"]
    if box[0] <= ic <= box[2] and box[1] <= jc <= box[3]:
        return True
    ix = max(0.0, min(i1, box[2]) - max(i0, box[0]) + 1)
    iy = max(0.0, min(j1, box[3]) - max(j0, box[1]) + 1)
    inter = ix * iy
    union = (i1 - i0 + 1) * (j1 - j0 + 1) + (box[2] - box[0] + 1) * (box[3] - box[1] + 1) - inter
    return inter / union >= HIT_IOU


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _clopper_pearson(k: int, n: int, alpha: float = 0.05) -> list[float]:
    from scipy.stats import beta

    if n == 0:
        return [float("nan"), float("nan")]
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return [lo, hi]


def _poisson_rate_ci(count: int, n: int, alpha: float = 0.05) -> list[float]:
    """Exact (Garwood) CI of a Poisson count, divided by ``n`` series."""
    from scipy.stats import chi2

    if n == 0:
        return [float("nan"), float("nan")]
    lo = 0.0 if count == 0 else float(chi2.ppf(alpha / 2, 2 * count) / 2)
    hi = float(chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2)
    return [lo / n, hi / n]


@dataclass
class _SeriesResult:
    name: str
    series_uid: str
    scores: np.ndarray  # per candidate
    lesion_hit: np.ndarray  # (n_cand, n_lesions) bool
    box_hit: np.ndarray  # (n_cand, n_boxes) bool
    seconds: float


def _at_threshold(res: Sequence[_SeriesResult], t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per series: lesions hit, lesions, false positives, boxes hit (all at score >= t)."""
    hit, nles, fp, bhit = [], [], [], []
    for r in res:
        keep = r.scores >= t
        lh = r.lesion_hit[keep]
        hit.append(int(lh.any(axis=0).sum()) if lh.size else 0)
        nles.append(r.lesion_hit.shape[1])
        fp.append(int((~lh.any(axis=1)).sum()) if keep.any() else 0)
        bh = r.box_hit[keep]
        bhit.append(int(bh.any(axis=0).sum()) if bh.size else 0)
    return np.array(hit), np.array(nles), np.array(fp), np.array(bhit)


def _froc_inputs(res: Sequence[_SeriesResult]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """MONAI's FROC inputs: scores of false-positive candidates, the best hit score of every lesion (0 when
    missed), number of lesions, number of series."""
    fp = [r.scores[~r.lesion_hit.any(axis=1)] for r in res]
    tp = [np.array([float(r.scores[r.lesion_hit[:, j]].max()) if r.lesion_hit[:, j].any() else 0.0
                    for j in range(r.lesion_hit.shape[1])]) for r in res]
    return (np.concatenate(fp + [np.zeros(0)]).astype(np.float64), np.concatenate(tp + [np.zeros(0)]).astype(np.float64),
            int(sum(r.lesion_hit.shape[1] for r in res)), len(res))


def _froc(res: Sequence[_SeriesResult]) -> dict[str, Any]:
    """FROC by :func:`monai.metrics.compute_froc_curve_data` and :func:`monai.metrics.compute_froc_score`.

    Every distinct score but the lowest is a threshold (MONAI's CAMELYON-16 convention); a missed
    lesion enters with score 0. ``sensitivity_at_fp`` interpolates the curve linearly at each rate
    (``compute_froc_score`` at that one rate), ``cpm`` is the mean over :data:`FROC_RATES` (the LUNA16
    rates 1/8 .. 8); the rate 10 is reported too (the project's target: the lesion found at <= 10 FP
    per series).
    """
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    fp, tp, n_targets, n_images = _froc_inputs(res)
    if n_targets == 0 or n_images == 0:
        nan = float("nan")
        return {"points": [], "sensitivity_at_fp": {f"{r:g}": nan for r in REPORT_RATES}, "cpm": nan}
    fps, sens = compute_froc_curve_data(fp, tp, n_targets, n_images)
    thresholds = sorted(set(fp.tolist()) | set(tp.tolist()))[1:]
    points = [(float(f), float(se), float(t)) for f, se, t in zip(fps[:-1], sens[:-1], thresholds, strict=True)]
    points = points[::-1]  # highest threshold first
    if len(points) > 60:  # thin to about 60 points, keeping the ends and every change of sensitivity
        keep = {0, len(points) - 1} | {i for i in range(1, len(points)) if points[i][1] != points[i - 1][1]}
        keep |= set(np.linspace(0, len(points) - 1, 60 - min(len(keep), 59)).astype(int).tolist())
        points = [points[i] for i in sorted(keep)]
    return {
        "points": [{"fp_per_series": p[0], "sensitivity": p[1], "threshold": p[2]} for p in points],
        "sensitivity_at_fp": {f"{r:g}": float(compute_froc_score(fps, sens, (r,))) for r in REPORT_RATES},
        "cpm": float(compute_froc_score(fps, sens, FROC_RATES)),
        "method": "monai.metrics.compute_froc_curve_data / compute_froc_score (linear interpolation)",
    }


def _metric(value: float, exact: list[float], method: str, boots: list[float], n: int) -> dict[str, Any]:
    ci_b = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots else [float("nan")] * 2
    return {"value": value, "ci95": exact, "ci95_method": method, "ci95_bootstrap": ci_b,
            "n_boot": len(boots), "n": n}


def _metrics_at(res: Sequence[_SeriesResult], t: float, n_boot: int, seed: int = 0) -> dict[str, Any]:
    hit, nles, fp, bhit = _at_threshold(res, t)
    nbox = np.array([r.box_hit.shape[1] for r in res])
    n_series = len(res)
    rng = np.random.default_rng(seed)
    b_sens, b_fp, b_box = [], [], []
    for _ in range(n_boot):
        sel = rng.integers(0, n_series, n_series)
        if nles[sel].sum():
            b_sens.append(float(hit[sel].sum() / nles[sel].sum()))
        if nbox[sel].sum():
            b_box.append(float(bhit[sel].sum() / nbox[sel].sum()))
        b_fp.append(float(fp[sel].sum() / n_series))
    sens = float(hit.sum() / nles.sum()) if nles.sum() else float("nan")
    boxs = float(bhit.sum() / nbox.sum()) if nbox.sum() else float("nan")
    cp = "Clopper-Pearson exact over lesions"
    return {
        "lesion_sensitivity": _metric(sens, _clopper_pearson(int(hit.sum()), int(nles.sum())), cp, b_sens,
                                      int(nles.sum())),
        "fp_per_series": _metric(float(fp.sum() / n_series), _poisson_rate_ci(int(fp.sum()), n_series),
                                 "Poisson exact (Garwood) on the false-positive count", b_fp, n_series),
        "box_sensitivity": _metric(boxs, _clopper_pearson(int(bhit.sum()), int(nbox.sum())),
                                   cp.replace("lesions", "annotated 2D boxes (not independent)"), b_box,
                                   int(nbox.sum())),
    }


def _series_result(bundle: Any, series: CtSeries, lesions: Sequence[Lesion],
                   boxes: Sequence[tuple[int, tuple]]) -> tuple[_SeriesResult, list[dict]]:
    t0 = time.perf_counter()
    cands = predict(bundle, series.volume_hu, series.spacing, series.origin, series.direction)
    lh = np.array([[hits_lesion(c, les) for les in lesions] for c in cands], bool).reshape(len(cands), len(lesions))
    bh = np.array([[_hits_box(c, k, b) for k, b in boxes] for c in cands], bool).reshape(len(cands), len(boxes))
    scores = np.array([c["score"] for c in cands])
    name = str(series.folder)
    return _SeriesResult(name, series.series_uid, scores, lh, bh, time.perf_counter() - t0), cands


def thick_lesions(lesions: Sequence[Lesion], boxes: Sequence[tuple[int, tuple]],
                  weights: np.ndarray) -> tuple[list[Lesion], list[tuple[int, tuple]]]:
    """Lesions and boxes of a thin series moved onto its thick reconstruction.

    ``weights`` is the ``W`` of :func:`~cds.models.tasks.lung_ct.thick_series`: thin slice ``k`` lies
    in thick slice ``argmax(W[:, k])`` (thin slices outside every complete slab are dropped); boxes
    of one lesion landing on one thick slice are joined.

    >>> w = np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    >>> les, bx = thick_lesions([Lesion({1: (0, 0, 4, 4), 2: (1, 1, 6, 6)})], [(1, (0, 0, 4, 4))], w)
    >>> les[0].boxes, bx
    ({0: (0, 0, 4, 4), 1: (1, 1, 6, 6)}, [(0, (0, 0, 4, 4))])
    """
    where = {k: int(np.argmax(weights[:, k])) for k in range(weights.shape[1]) if weights[:, k].max() > 0}
    out = []
    for les in lesions:
        nb: dict[int, tuple] = {}
        for k, b in les.boxes.items():
            if k not in where:
                continue
            m = where[k]
            o = nb.get(m)
            nb[m] = b if o is None else (min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3]))
        if nb:
            out.append(Lesion(boxes=dict(sorted(nb.items())), label=les.label))
    return out, [(where[k], b) for k, b in boxes if k in where]


def write_thick_copy(data_dir: str | Path, out_dir: str | Path, thickness_mm: float) -> Path:
    """A copy of a folder laid out like ``lung-pet-ct-dx`` with every CT series as a thick reconstruction.

    Every CT series thinner than ``thickness_mm`` is slab-averaged and written as DICOM
    (:func:`~cds.models.tasks.lung_ct.write_thick_dicom`) under the same relative folder of
    ``out_dir``; ``annotations.csv`` is rewritten for the new slices (:func:`thick_lesions`' slice
    rule: a box moves to the slab holding its slice; boxes on one slab are kept apart). Then
    ``cds evaluate ct-lung-nodule --data <out_dir> --json`` scores the real DICOM files. Returns
    ``out_dir``. From the command line::

        python -m cds.models.tasks.ct_lung_nodule --data ../shared/data/lung-pet-ct-dx --out /tmp/lung-8mm --mm 8
    """
    import pandas as pd

    from cds.models.tasks.lung_ct import write_thick_dicom

    data, out = Path(data_dir), Path(out_dir)
    if not data.is_dir():
        raise ParameterError("data_dir", f"{data} is not a folder")
    ann = _read_annotations(data)
    rows = []
    n = 0
    for folder in find_series_folders(data):
        try:
            s = read_ct_series(folder)
        except ImageReadError as exc:
            if "this model needs CT" in exc.reason:
                continue
            raise
        if thickness_mm <= s.spacing[0] * 1.05:
            raise ParameterError("thickness_mm", f"{thickness_mm} mm is not thicker than {folder} ({s.spacing[0]:.2f} mm)")
        rel = folder.relative_to(data)
        ts, w = write_thick_dicom(s, out / rel, thickness_mm)
        n += 1
        uid_k = {u: k for k, u in enumerate(s.sop_instance_uids)}
        name_k = {f.name: k for k, f in enumerate(s.files)}
        for r in ann.to_dict("records"):
            uid = str(r.get("sop_instance_uid", "") or "")
            k = uid_k.get(uid, name_k.get(str(r.get("file", ""))) if "file" in r else None)
            if k is None or w[:, k].max() <= 0:
                continue
            m = int(np.argmax(w[:, k]))
            rows.append({**r, "series_dir": str(rel), "file": ts.files[m].name, "sop_instance_uid": ts.sop_instance_uids[m]})
    if not n:
        raise ImageReadError(str(data), "no CT series to reconstruct")
    pd.DataFrame(rows, columns=list(dict.fromkeys([*ann.columns, "sop_instance_uid", "file"]))).to_csv(
        out / "annotations.csv", index=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.models.tasks.ct_lung_nodule --data DIR --out DIR --mm 8``: :func:`write_thick_copy`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cds.models.tasks.ct_lung_nodule",
                                 description="write a thick-slice (slab-averaged) copy of a lung-pet-ct-dx-like folder")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mm", type=float, required=True, help="slice thickness of the copy (mm)")
    a = ap.parse_args(argv)
    print(write_thick_copy(a.data, a.out, a.mm))
    return 0


def default_data_dir() -> Path:
    """``$CDS_SHARED_DATA/lung-pet-ct-dx`` or ``<repo>/../shared/data/lung-pet-ct-dx``."""
    from cds.locations import shared_data_dir

    return shared_data_dir(DATA_SET)


def _baseline_result(res: _SeriesResult, cands: Sequence[dict[str, Any]]) -> _SeriesResult:
    """``res`` with each candidate scored by its LoG blob response only (the baseline)."""
    sc = np.array([float(c["features"]["log_response"]) for c in cands])
    return _SeriesResult(res.name, res.series_uid, sc, res.lesion_hit, res.box_hit, 0.0)


def _best_rank(res: _SeriesResult) -> int | None:
    """Rank (1 = highest score) of the best-scoring candidate that hits a lesion, None when none does."""
    hit = res.lesion_hit.any(axis=1)
    if not hit.any():
        return None
    return int((res.scores > res.scores[hit].max()).sum()) + 1


def _series_summary(folder: str, s: CtSeries, res: _SeriesResult, cands: list[dict], n_les: int,
                    t: float) -> dict[str, Any]:
    best = None
    for rank, (c, row) in enumerate(zip(cands, res.lesion_hit, strict=True)):
        if row.any():
            fp_above = int(((res.scores >= c["score"]) & ~res.lesion_hit.any(axis=1)).sum())
            best = {"rank": rank + 1, "score": c["score"], "false_positives_scoring_higher": fp_above,
                    "centre_lps": c["centre_lps"], "box_lps": c["box_lps"], "diameter_mm": c["diameter_mm"]}
            break
    fp_mask = (res.scores >= t) & ~res.lesion_hit.any(axis=1)
    fp_side = {side: int(sum(1 for c, f in zip(cands, fp_mask, strict=True) if f and c["side"] == side))
               for side in ("right", "left", "unknown")}
    return {
        "folder": folder, "series_uid": s.series_uid, "patient_id": s.patient_id,
        "slice_spacing_mm": float(s.spacing[0]),
        "n_slices": int(s.volume_hu.shape[0]), "n_candidates": len(cands),
        "n_above_threshold": int((res.scores >= t).sum()), "fp_by_side_at_threshold": fp_side,
        "n_lesions": n_les, "n_boxes": int(res.box_hit.shape[1]), "best_lesion_candidate": best,
        "seconds": round(res.seconds, 2),
    }


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None,
             n_boot: int = 2000, thicknesses_mm: Sequence[float] = SIMULATED_THICKNESS_MM) -> dict[str, Any]:
    """Lesion-level detection performance of the bundle on every CT series under ``data_dir``.

    ``data_dir`` is laid out like ``lung-pet-ct-dx``: series folders of DICOM files (under patient
    folders) plus ``annotations.csv`` (``sop_instance_uid`` or ``file``, ``xmin, ymin, xmax, ymax`` in
    pixels). Series of any slice spacing the model takes (0.5-10 mm) are scored as they are (the
    top-level ``metrics`` and ``froc``); non-CT series are skipped and listed; a folder with no CT
    series raises :class:`~cds.errors.ImageReadError`.

    ``by_slice_thickness`` repeats the evaluation on thick reconstructions simulated from every
    series thinner than each of ``thicknesses_mm`` (:func:`~cds.models.tasks.lung_ct.thick_series`:
    slab averaging along the slice normal, annotations moved with :func:`thick_lesions`); the key
    ``native`` holds the series as read. Returns a JSON-ready dict (see the module docstring for the
    hit rule); confidence intervals: ``ci95`` is exact (Clopper-Pearson over lesions, Poisson over the
    false-positive count), ``ci95_bootstrap`` resamples whole series (degenerate with one series).
    """
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    if not data.is_dir():
        raise ParameterError("data_dir", f"{data} is not a folder")
    b = _bundle(bundle_dir)
    card = b.model_card
    thr = float(card.threshold if card.threshold is not None else 0.5)
    ann = _read_annotations(data)
    folders = find_series_folders(data)
    if not folders:
        raise ImageReadError(str(data), "no DICOM series folders found")
    groups: dict[str, tuple[list[_SeriesResult], list[dict]]] = {"native": ([], [])}
    baseline: dict[str, list[_SeriesResult]] = {}
    skipped = []
    n_matched = 0
    for folder in folders:
        try:
            s = read_ct_series(folder)
        except ImageReadError as exc:
            if "this model needs CT" in exc.reason:
                skipped.append({"folder": str(folder), "reason": exc.reason})
                continue
            raise
        lesions, boxes, _ = load_lesions(s, ann)
        rel = str(folder.relative_to(data))
        res, cands = _series_result(b, s, lesions, boxes)
        n_matched += res.box_hit.shape[1]
        groups["native"][0].append(res)
        groups["native"][1].append(_series_summary(rel, s, res, cands, len(lesions), thr))
        baseline.setdefault("native", []).append(_baseline_result(res, cands))
        for t_mm in thicknesses_mm:
            if t_mm <= s.spacing[0] * 1.05 or t_mm < SLICE_SPACING_RANGE_MM[0] or t_mm > SLICE_SPACING_RANGE_MM[1]:
                continue
            ts, w = thick_series(s, float(t_mm))
            tl, tb = thick_lesions(lesions, boxes, w)
            tres, tc = _series_result(b, ts, tl, tb)
            g = groups.setdefault(f"{t_mm:g}", ([], []))
            g[0].append(tres)
            g[1].append(_series_summary(rel, ts, tres, tc, len(tl), thr))
            baseline.setdefault(f"{t_mm:g}", []).append(_baseline_result(tres, tc))
    results = groups["native"][0]
    if not results:
        raise ImageReadError(str(data), "no CT series found (only: " + ", ".join(s["reason"] for s in skipped) + ")")
    unmatched = len(ann) - n_matched
    if unmatched:
        warnings.warn(f"{data / 'annotations.csv'}: {unmatched} box rows match no CT slice found under {data}",
                      stacklevel=2)
    by_thickness = {}
    for key, (rs, summ) in groups.items():
        fr = _froc(rs)
        by_thickness[key] = {
            "slice_spacing_mm": sorted({p["slice_spacing_mm"] for p in summ}),
            "n_series": len(rs), "n_lesions": int(sum(r.lesion_hit.shape[1] for r in rs)),
            "metrics": _metrics_at(rs, thr, n_boot),
            "froc": {"sensitivity_at_fp": fr["sensitivity_at_fp"], "cpm": fr["cpm"]},
            "lesion_rank": [p["best_lesion_candidate"]["rank"] if p["best_lesion_candidate"] else None for p in summ],
            "false_positives_scoring_above_lesion": [
                p["best_lesion_candidate"]["false_positives_scoring_higher"] if p["best_lesion_candidate"] else None
                for p in summ],
        }
        bfr = _froc(baseline[key])
        by_thickness[key]["baseline_log_response"] = {
            "what": "the same candidates ranked by their LoG blob response alone (no learned scorer)",
            "froc": {"sensitivity_at_fp": bfr["sensitivity_at_fp"], "cpm": bfr["cpm"]},
            "lesion_rank": [_best_rank(r) for r in baseline[key]],
        }
        if key != "native":
            by_thickness[key]["simulated_from"] = "slab averaging of each thinner series along its slice normal"
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": str(data),
        "n_series": len(results),
        "n_lesions": int(sum(r.lesion_hit.shape[1] for r in results)),
        "n_boxes": int(n_matched),
        "n_boxes_unmatched": int(unmatched),
        "threshold": thr,
        "indeterminate": list(card.indeterminate) if card.indeterminate else None,
        "hit_rule": (f"candidate centre voxel within the lesion's slice range +-{SLICE_TOLERANCE} slice and inside "
                     f"the annotated box of the nearest annotated slice, or 3D voxel-box IoU >= {HIT_IOU}; "
                     "lesions = annotated boxes merged across adjacent overlapping slices; extra hits on a "
                     "hit lesion are not false positives"),
        "metrics": _metrics_at(results, thr, n_boot),
        "froc": _froc(results),
        "per_series": groups["native"][1],
        "by_slice_thickness": by_thickness,
        "slice_thickness_table": _thickness_table(by_thickness),
        "skipped": skipped,
    }


def _fmt_ci(m: dict[str, Any], digits: int = 2) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def _thickness_table(by: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per slice thickness of :func:`evaluate`'s ``by_slice_thickness`` (for the card's table)."""
    rows = []
    for key, d in by.items():
        m = d["metrics"]
        rows.append({
            "slices": ("as read, " if key == "native" else "simulated, ") + "/".join(f"{v:g}" for v in d["slice_spacing_mm"])
                      + " mm",
            "lesion sensitivity at threshold (95 % CI)": _fmt_ci(m["lesion_sensitivity"]),
            "FP per series at threshold (95 % CI)": _fmt_ci(m["fp_per_series"], 1),
            "lesion rank": ", ".join("missed" if r is None else str(r) for r in d["lesion_rank"]),
            "FP scoring above the lesion": ", ".join("-" if r is None else str(r)
                                                     for r in d["false_positives_scoring_above_lesion"]),
            "FROC sensitivity at 10 FP/series": round(float(d["froc"]["sensitivity_at_fp"]["10"]), 3),
            "baseline (LoG response) lesion rank": ", ".join(
                "missed" if r is None else str(r) for r in d["baseline_log_response"]["lesion_rank"]),
        })
    return rows


# ----------------------------------------------------------------------------------------------
# Training on synthetic nodules
# ----------------------------------------------------------------------------------------------


def _sample_nodules(rng: np.random.Generator, an: Analysis, series: CtSeries, side: int, n: int,
                    avoid_lps: Sequence[tuple[np.ndarray, float]], diameters: Sequence[float] | None = None,
                    diameter_range: tuple[float, float] | None = None) -> list[dict[str, Any]]:
    """Random nodule specs (centre in full-res voxel coords, axes, HU...) inside lung ``side``.

    ``diameters``: one spec per given diameter (in order; a real crop's size), else ``n`` specs of
    log-uniform diameter in ``diameter_range`` (default :data:`SYNTH_DIAMETER_MM`). A spec that finds no
    room is left out (its ``index`` says which diameter it was)."""
    lo_d, hi_d = diameter_range or SYNTH_DIAMETER_MM
    if diameters is not None:
        n = len(diameters)
    from scipy import ndimage as ndi

    m = an.masks
    sz, sy, sx = m.spacing
    lung = m.side == side
    dist = ndi.distance_transform_edt(lung, sampling=(sz, sy, sx))
    out: list[dict[str, Any]] = []
    tries = 0
    index = 0
    while index < n and tries < 200 * n:
        tries += 1
        if diameters is not None and tries > 200 * (index + 1):
            index += 1  # no room for this one
            continue
        d = float(diameters[index]) if diameters is not None else float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))
        r = max(d / 2, 3.0)
        axes = r * rng.uniform(0.75, 1.25, 3)
        juxta = rng.random() < SYNTH_JUXTAPLEURAL
        ok = (dist > 0) & ((dist <= 0.5 * r + 2) if juxta else (dist >= r + 2))
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        kji = np.array(np.unravel_index(rng.choice(idx), lung.shape), float)
        kji += rng.uniform(-0.5, 0.5, 3)
        centre = np.array(an.grid.to_full(kji))
        lps = index_to_lps([centre], series.spacing, series.origin, series.direction)[0]
        if any(np.linalg.norm(lps - a) < r + ra + 20.0 for a, ra in avoid_lps):
            continue
        if any(np.linalg.norm(lps - o["lps"]) < r + o["r"] + 15.0 for o in out):
            continue
        index += 1
        out.append({"index": index - 1, "centre_kji": centre, "axes": axes, "r": float(np.max(axes)), "lps": lps,
                    "hu": float(rng.uniform(-80, 60)), "edge_mm": float(rng.uniform(0.7, 2.0)),
                    "noise_hu": float(rng.uniform(10, 30)), "lobes": int(rng.integers(0, 4)), "juxta": bool(juxta)})
    return out


def _synthetic_volume(series: CtSeries, specs: Sequence[dict[str, Any]], rng: np.random.Generator,
                      crops: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]] = ()) -> np.ndarray:
    """A copy of the series with the specs pasted in: a spec with ``crop`` (an index into ``crops``, a
    real nodule's HU, mask and spacing) by :func:`~cds.models.tasks.lung_ct.insert_crop` (randomly
    flipped / turned in-plane, random sub-voxel phase), any other as a synthetic ellipsoid."""
    vol = series.volume_hu.copy()
    for s in specs:
        if s.get("crop") is not None:
            hu, mask, sp = crops[s["crop"]]
            k = int(rng.integers(0, 4))
            hu, mask = np.rot90(hu, k, axes=(1, 2)), np.rot90(mask, k, axes=(1, 2))
            sp = (sp[0], sp[2], sp[1]) if k % 2 else sp
            if rng.random() < 0.5:
                hu, mask = hu[::-1], mask[::-1]
            phase = tuple(float(rng.uniform(0, series.spacing[a])) for a in range(3))
            insert_crop(vol, series.spacing, s["centre_kji"], hu, mask, sp, phase)
        else:
            insert_nodule(vol, series.spacing, s["centre_kji"], s["axes"], hu=s["hu"], rng=rng, edge_mm=s["edge_mm"],
                          noise_hu=s["noise_hu"], slice_thickness=series.slice_thickness, lobes=s["lobes"])
    return vol


def _label_candidates(an: Analysis, series: CtSeries, specs: Sequence[dict[str, Any]], side: int,
                      avoid_lps: Sequence[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: label (1 on a synthetic nodule, 0 background, -1 ignored) and nodule index."""
    labels = np.full(len(an.candidates), -1, int)
    which = np.full(len(an.candidates), -1, int)
    for ci, c in enumerate(an.candidates):
        d = _to_full(an, c, series.spacing, series.origin, series.direction)
        p = np.asarray(d["centre_lps"])
        if any(np.linalg.norm(p - a) < ra + 20.0 for a, ra in avoid_lps):
            continue  # near an annotated real lesion: neither positive nor negative
        dists = [np.linalg.norm(p - s["lps"]) for s in specs]
        j = int(np.argmin(dists)) if dists else -1
        if j >= 0 and dists[j] <= specs[j]["r"]:
            labels[ci], which[ci] = 1, j
        elif j >= 0 and dists[j] <= specs[j]["r"] + 10.0:
            continue
        elif c.side == side:
            labels[ci] = 0
    return labels, which


def _lesion_avoid_list(series: CtSeries, annotations: Any) -> list[tuple[np.ndarray, float]]:
    if annotations is None:
        return []
    lesions, _, _ = load_lesions(series, annotations)
    out = []
    for les in lesions:
        b = les.box_voxel
        corners = index_to_lps([b[:3], b[3:]], series.spacing, series.origin, series.direction)
        out.append((corners.mean(0), float(np.linalg.norm(corners[1] - corners[0]) / 2)))
    return out


SYNTH_DIAMETER_MM = (15.0, 50.0)  # synthetic masses beside the real LIDC nodules (3-32 mm)
SYNTH_JUXTAPLEURAL = 0.35
SCORER = {"hidden": 32, "weight_decay": 1e-3, "epochs": 1000, "lr": 0.01}
LIDC_SET = "lidc-nodule-crops"
#: copies per (role, thickness): LIDC crops + synthetic masses pasted into one lung of the real series
COPIES = {"train": 10, "val": 2, "test": 6}
COPIES_QUICK = {"train": 1, "val": 1, "test": 1}
PER_COPY = {"train": (10, 2), "val": (10, 2), "test": (12, 0)}  # (LIDC crops, synthetic masses)
#: slice spacings trained and tested on: None = the series as read (5 mm here), then thick simulations
TRAIN_THICKNESS_MM: tuple[float | None, ...] = (None, 8.0, 10.0)
SIDES = {"train": 1, "val": 1, "test": 2}  # patient right lung for fitting and threshold, left for the test
SIZE_GROUPS_MM = ((0.0, 6.0), (6.0, 10.0), (10.0, 100.0))
#: operating point: false positives per lung on the validation copies (about twice that per series)
OPERATING_FP_PER_LUNG = 4.0
BAND_FP_PER_LUNG = (6.0, 2.0)  # the indeterminate band spans these validation FP rates


def _network_def() -> dict[str, Any]:
    return {"_target_": "monai.networks.nets.FullyConnectedNet", "in_channels": len(CANDIDATE_FEATURES),
            "out_channels": 1, "hidden_channels": [SCORER["hidden"]], "act": "RELU"}


def _fit_scorer(z: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """Full-batch Adam on class-weighted BCE (positives weighted n_neg / n_pos); deterministic on CPU."""
    import torch
    from monai.networks.nets import FullyConnectedNet

    torch.manual_seed(seed)
    cfg = _network_def()
    net = FullyConnectedNet(cfg["in_channels"], cfg["out_channels"], cfg["hidden_channels"], act=cfg["act"])
    x = torch.as_tensor(z, dtype=torch.float32)
    t = torch.as_tensor(y, dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float((y == 0).sum()) / max(int(y.sum()), 1)))
    opt = torch.optim.Adam(net.parameters(), lr=SCORER["lr"], weight_decay=SCORER["weight_decay"])
    net.train()
    for _ in range(int(SCORER["epochs"])):
        opt.zero_grad()
        loss = loss_fn(net(x).reshape(-1), t)
        loss.backward()
        opt.step()
    return net.eval()


def _threshold_at_fp(neg_scores: Sequence[np.ndarray], fp_per_lung: float) -> float:
    """Lowest threshold at which the copies' negatives give at most ``fp_per_lung`` false positives per copy.

    >>> _threshold_at_fp([np.array([0.9, 0.5, 0.2]), np.array([0.7, 0.1])], 1.0) > 0.5
    True
    """
    allneg = np.sort(np.concatenate([np.asarray(g, float) for g in neg_scores] + [np.zeros(0)]))[::-1]
    allowed = int(math.floor(fp_per_lung * len(neg_scores) + 1e-9))
    if allowed >= len(allneg):
        return 0.0
    return float(np.nextafter(allneg[allowed], 1.0))


def _lidc_crops(lidc_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The LIDC crops of ``lidc_dir`` by patient split (:func:`cds.models.tasks.nodule_crops.patient_split`,
    the split the nodule characterisation model uses): ``{"train": [...], "val": [...], "test": [...]}``,
    each ``{"file", "mask", "patient_id", "diameter_mm"}``."""
    from cds.models.tasks.nodule_crops import load_table, patient_split

    df = load_table(lidc_dir, need_masks=True)
    lab = {str(p): int(any(v == 1 for v in g["label"])) for p, g in df.groupby("patient_id")}
    split = patient_split(sorted(lab), lab)
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for r in df.to_dict("records"):
        out[split[str(r["patient_id"])]].append({"file": r["file"], "mask": r["mask"], "patient_id": str(r["patient_id"]),
                                                 "diameter_mm": float(r["diameter_mm"])})
    return out


def _copy_rows(series: CtSeries, an0: Analysis, avoid: list, role: str, thickness: float | None, pool: list[dict],
               rng: np.random.Generator, cfg: DetectorConfig) -> dict[str, Any]:
    """One copy: paste LIDC crops (+ synthetic masses) into lung ``SIDES[role]``, optionally simulate a thick
    reconstruction, run the detector and label its candidates."""
    from cds.models.tasks.nodule_crops import read_crop

    side = SIDES[role]
    n_crop, n_syn = PER_COPY[role]
    picks = [pool[int(i)] for i in rng.choice(len(pool), size=min(n_crop, len(pool)), replace=False)]
    specs = _sample_nodules(rng, an0, series, side, n_crop, avoid, diameters=[c["diameter_mm"] for c in picks])
    crops = []
    for sp in specs:
        c = picks[sp["index"]]
        hu, sp_c = read_crop(c["file"])
        mask, _ = read_crop(c["mask"])
        sp.update(crop=len(crops), patient_id=c["patient_id"], diameter_mm=c["diameter_mm"], source="lidc")
        crops.append((hu, mask > 0.5, sp_c))
    if n_syn:
        syn = _sample_nodules(rng, an0, series, side, n_syn, avoid + [(o["lps"], o["r"]) for o in specs])
        for sp in syn:
            sp.update(crop=None, source="synthetic", diameter_mm=float(2 * np.prod(sp["axes"]) ** (1 / 3)))
        specs += syn
    vol = _synthetic_volume(series, specs, rng, crops)
    geo = CtSeries(volume_hu=vol, spacing=series.spacing, origin=series.origin, direction=series.direction,
                   sop_instance_uids=series.sop_instance_uids, files=series.files, series_uid=series.series_uid,
                   slice_thickness=series.slice_thickness)
    if thickness is not None:
        geo, _ = thick_series(geo, float(thickness), float(rng.uniform(0, series.spacing[0])))
    an = analyse_volume(geo.volume_hu, geo.spacing, geo.direction, cfg)
    labels, which = _label_candidates(an, geo, specs, side, avoid)
    return {"role": role, "thickness": thickness, "slice_mm": float(geo.spacing[0]), "X": _feature_matrix(an.candidates),
            "y": labels, "which": which, "specs": specs}


def _nodule_table(rows: Sequence[dict[str, Any]], score: Any) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Per pasted nodule: best score of a candidate on it (0 when none), found-by-any; per copy: negatives' scores."""
    nod, negs = [], []
    for r in rows:
        sc = score(r["X"])
        for j, sp in enumerate(r["specs"]):
            on = (r["which"] == j) & (r["y"] == 1)
            nod.append({"source": sp["source"], "diameter_mm": sp["diameter_mm"], "found": bool(on.any()),
                        "best": float(sc[on].max()) if on.any() else 0.0})
        negs.append(sc[r["y"] == 0])
    return nod, negs


def _held_out_summary(nod: list[dict[str, Any]], negs: list[np.ndarray], thr: float) -> dict[str, Any]:
    """Sensitivity (exact CI) and false positives per lung (exact Poisson CI) at ``thr``, and MONAI's FROC."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    best = np.array([n["best"] for n in nod])
    k = int((best >= thr).sum()) if len(best) else 0
    fp = int(sum(int((g >= thr).sum()) for g in negs))
    out: dict[str, Any] = {
        "n_nodules": len(nod), "n_copies": len(negs),
        "found_by_any_candidate": int(sum(n["found"] for n in nod)),
        "sensitivity_at_threshold": {"value": k / len(nod) if nod else float("nan"),
                                     "ci95": _clopper_pearson(k, len(nod)), "ci95_method": "Clopper-Pearson exact",
                                     "n": len(nod)},
        "fp_per_lung_at_threshold": {"value": fp / len(negs) if negs else float("nan"),
                                     "ci95": _poisson_rate_ci(fp, len(negs)), "ci95_method": "Poisson exact (Garwood)",
                                     "n": len(negs)},
    }
    if nod and negs:
        fps, sens = compute_froc_curve_data(np.concatenate(negs).astype(float), best.astype(float), len(nod), len(negs))
        out["froc_sensitivity_at_fp_per_lung"] = {f"{r:g}": float(compute_froc_score(fps, sens, (r,)))
                                                  for r in REPORT_RATES}
        out["cpm"] = float(compute_froc_score(fps, sens, FROC_RATES))
    by_size = {}
    for lo, hi in SIZE_GROUPS_MM:
        g = [n for n in nod if lo <= n["diameter_mm"] < hi]
        kg = sum(1 for n in g if n["best"] >= thr)
        by_size[f"{lo:g}-{hi:g} mm"] = {"n": len(g), "sensitivity": kg / len(g) if g else float("nan"),
                                         "ci95": _clopper_pearson(kg, len(g))}
    out["sensitivity_by_diameter"] = by_size
    return out


def _keep_inference_keys(out: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """``mine`` plus every key of the bundle's existing inference.json that this code does not write (other
    tools' additions, e.g. MONAI bundle sections), so retraining does not drop them."""
    import json

    path = out / "configs" / "inference.json"
    if not path.is_file():
        return mine
    old = json.loads(path.read_text())
    keep = {k: v for k, v in old.items() if k not in mine and k not in ("bundle_root", "device", "network_def")}
    return {**keep, **mine}


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          quick: bool = False, lidc_dir: str | Path | None = None) -> Path:
    """Fit the candidate scorer on real LIDC nodules (and synthetic masses) pasted into the CT series of ``data_dir``.

    Positives are real nodules: LIDC-IDRI crops with their masks (``lidc_dir``, default
    ``shared/data/lidc-nodule-crops``), pasted at the series' spacing with
    :func:`~cds.models.tasks.lung_ct.insert_crop` (partial volume of the thick slices included), plus
    a few synthetic masses of :data:`SYNTH_DIAMETER_MM`; negatives are the real candidates of the same
    lung away from every pasted nodule and from the annotated lesions. LIDC patients are split by
    :func:`cds.models.tasks.nodule_crops.patient_split`; the lungs of the series by side
    (:data:`SIDES`): train-patient crops in the patient-right lung fit the scorer, val-patient crops
    in the right lung set the threshold (:data:`OPERATING_FP_PER_LUNG`) and band (:data:`BAND_FP_PER_LUNG`),
    test-patient crops in the left lung (never used to fit or choose anything) give the held-out
    numbers in the card. Every copy is analysed as read and as simulated thick reconstructions
    (:data:`TRAIN_THICKNESS_MM`). The bundle is written to ``out_dir`` and :func:`evaluate` on
    ``data_dir`` fills the card's performance. Returns the bundle path.
    """
    import torch
    from tqdm.auto import tqdm

    from cds.locations import shared_data_dir
    from cds.models.bundle import save_bundle

    torch.set_num_threads(1)
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    lidc = Path(lidc_dir) if lidc_dir is not None else shared_data_dir(LIDC_SET)
    folders = find_series_folders(data)
    try:
        ann = _read_annotations(data)
    except ParameterError:
        ann = None
    series_list = []
    for f in folders:
        try:
            series_list.append(read_ct_series(f))
        except ImageReadError as exc:
            if "this model needs CT" not in exc.reason:
                raise
    if not series_list:
        raise ImageReadError(str(data), "no CT series to train on")
    pools = _lidc_crops(lidc)
    cfg = DetectorConfig()
    rng = np.random.default_rng(seed)
    copies = COPIES_QUICK if quick else COPIES
    thicknesses = (None, 10.0) if quick else TRAIN_THICKNESS_MM
    jobs = [(s, role, t) for s in series_list for role in ("train", "val", "test") for t in thicknesses
            for _ in range(copies[role])]
    clean: dict[str, tuple[Analysis, list]] = {}
    rows: list[dict[str, Any]] = []
    for s, role, t in tqdm(jobs, desc="copies with pasted nodules", leave=False):
        if s.series_uid not in clean:
            clean[s.series_uid] = (analyse_volume(s.volume_hu, s.spacing, s.direction, cfg), _lesion_avoid_list(s, ann))
        an0, avoid = clean[s.series_uid]
        rows.append(_copy_rows(s, an0, avoid, role, t, pools[role], rng, cfg))
    tr = [r for r in rows if r["role"] == "train"]
    X = np.concatenate([r["X"][r["y"] >= 0] for r in tr])
    y = np.concatenate([r["y"][r["y"] >= 0] for r in tr])
    mean, std = X.mean(0), X.std(0)
    std[std < 1e-6] = 1.0
    net = _fit_scorer((X - mean) / std, y, seed)

    def score(Xm: np.ndarray) -> np.ndarray:
        if not len(Xm):
            return np.zeros(0)
        with torch.inference_mode():
            z = torch.as_tensor((Xm - mean) / std, dtype=torch.float32)
            return torch.sigmoid(net(z).reshape(-1)).double().numpy()

    _, val_negs = _nodule_table([r for r in rows if r["role"] == "val"], score)
    thr = _threshold_at_fp(val_negs, OPERATING_FP_PER_LUNG)
    band = [min(_threshold_at_fp(val_negs, BAND_FP_PER_LUNG[0]), thr), max(_threshold_at_fp(val_negs, BAND_FP_PER_LUNG[1]), thr)]
    held_out = {}
    for t in thicknesses:
        te = [r for r in rows if r["role"] == "test" and r["thickness"] == t]
        nod, negs = _nodule_table(te, score)
        key = "native" if t is None else f"{t:g}"
        held_out[key] = {"slice_spacing_mm": sorted({r["slice_mm"] for r in te}), **_held_out_summary(nod, negs, thr)}
        bnod, bnegs = _nodule_table(te, lambda Xm: Xm[:, 0] if len(Xm) else np.zeros(0))  # log_response only
        bsum = _held_out_summary(bnod, bnegs, float("inf"))
        held_out[key]["baseline_log_response"] = {
            "what": "the same candidates ranked by their LoG blob response alone (no learned scorer)",
            "froc_sensitivity_at_fp_per_lung": bsum.get("froc_sensitivity_at_fp_per_lung"), "cpm": bsum.get("cpm")}
    from cds.evaluation.metrics import auroc

    va = [r for r in rows if r["role"] == "val"]
    yv = np.concatenate([r["y"][r["y"] >= 0] for r in va])
    pv = score(np.concatenate([r["X"][r["y"] >= 0] for r in va]))
    n_pat = {k: len({c["patient_id"] for c in v}) for k, v in pools.items()}
    training = {
        "name": ("real LIDC-IDRI nodules (crops + masks) and synthetic masses pasted into the CT series of the "
                 "training folder; negatives = the series' own candidates away from them"),
        "path": display_path(data),
        "lidc_path": display_path(lidc),
        "series": [s.series_uid for s in series_list],
        "n_series": len(series_list),
        "lidc_patients_by_split": n_pat,
        "lidc_crops_by_split": {k: len(v) for k, v in pools.items()},
        "lidc_split": "cds.models.tasks.nodule_crops.patient_split (hash of the patient id, stratified, 60/20/20)",
        "slice_spacings_mm": sorted({r["slice_mm"] for r in rows}),
        "thick_simulation": "slab averaging of the pasted copy along the slice normal (random slab phase)",
        "copies": {role: copies[role] * len(thicknesses) * len(series_list) for role in copies},
        "sides": {"train": "patient right lung, LIDC train patients (fit)",
                  "val": "patient right lung, LIDC val patients (threshold and band)",
                  "test": "patient left lung, LIDC test patients (held out; the annotated lesion's lung, which "
                          "fitting never sees)"},
        "n": int(len(y)), "n_positive": int(y.sum()), "n_negative": int((y == 0).sum()),
        "n_pasted_nodules": {role: int(sum(len(r["specs"]) for r in rows if r["role"] == role)) for role in copies},
        "synthetic_masses": (f"lobulated ellipsoids, equivalent diameter log-uniform {SYNTH_DIAMETER_MM[0]:g}-"
                             f"{SYNTH_DIAMETER_MM[1]:g} mm, -80..60 HU, {PER_COPY['train'][1]} per train/val copy"),
        "juxtapleural_fraction": SYNTH_JUXTAPLEURAL,
        "val_candidate_auroc": auroc(yv, pv),
        "held_out_lidc_table": [
            {"slices": ("as read, " if k == "native" else "simulated, ") + "/".join(f"{v:g}" for v in d["slice_spacing_mm"])
             + " mm", "nodules": d["n_nodules"], "found by any candidate": d["found_by_any_candidate"],
             "sensitivity at threshold (95 % CI)": _fmt_ci(d["sensitivity_at_threshold"]),
             "FP per left lung at threshold (95 % CI)": _fmt_ci(d["fp_per_lung_at_threshold"], 1),
             "FROC sensitivity at 4 FP/lung": round(float(d["froc_sensitivity_at_fp_per_lung"]["4"]), 3)
             if "froc_sensitivity_at_fp_per_lung" in d else None,
             "FROC sensitivity at 8 FP/lung": round(float(d["froc_sensitivity_at_fp_per_lung"]["8"]), 3)
             if "froc_sensitivity_at_fp_per_lung" in d else None,
             "baseline (LoG response) at 4 FP/lung": round(float(d["baseline_log_response"]
                                                                ["froc_sensitivity_at_fp_per_lung"]["4"]), 3)
             if d["baseline_log_response"].get("froc_sensitivity_at_fp_per_lung") else None}
            for k, d in held_out.items()],
        "held_out_lidc_in_left_lung": held_out,
        "training_command": f"cds train {NAME} --data {display_path(data)} --out <bundle> (seed {seed})",
    }
    out = Path(out_dir) if out_dir is not None else DEFAULT_BUNDLE
    card = _card(thr, band, training, cfg)
    net_def = _network_def()
    extra = _keep_inference_keys(out, {
        "features": list(CANDIDATE_FEATURES),
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "score": "sigmoid(network_def((features - feature_mean) / feature_std))",
        "detector": cfg.to_dict(),
    })
    save_bundle(out, card, net_def, net.state_dict(), inference_extra=extra)
    perf = evaluate(data, out, n_boot=2000)
    card["cds"]["performance"] = _performance_section(perf, data)
    save_bundle(out, card, net_def, net.state_dict(), inference_extra=extra, readme=readme_for(card))
    return out


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------


def _performance_section(perf: dict[str, Any], data: Path) -> dict[str, Any]:
    return {
        "data": f"{data.name}: {perf['n_series']} CT series, {perf['n_lesions']} lesion(s), {perf['n_boxes']} boxes",
        "n_cases": perf["n_series"],
        "n_lesions": perf["n_lesions"],
        "threshold": perf["threshold"],
        "hit_rule": perf["hit_rule"],
        "metrics": perf["metrics"],
        "froc": {"sensitivity_at_fp": perf["froc"]["sensitivity_at_fp"], "cpm": perf["froc"]["cpm"],
                 "method": perf["froc"].get("method", "")},
        "per_series": perf["per_series"],
        "slice_thickness_table": perf["slice_thickness_table"],
        "by_slice_thickness": perf["by_slice_thickness"],
        "evaluation_command": f"cds evaluate {NAME} --data {display_path(data)} --json",
        "caveats": [
            "One real series and one real lesion: the exact 95 % CIs are nearly [0, 1] for sensitivity and wide "
            "for false positives; the series bootstrap collapses to a point with one series and is no "
            "uncertainty statement. The larger held-out numbers (training_data.held_out_lidc_in_left_lung) "
            "are real LIDC nodules pasted into this series' left lung, not whole real scans.",
            "No series here is unseen by the team: the detector's hand-set parameters were chosen while looking "
            "at this same series, and the scorer's negatives come from its right lung. Only the left lung "
            "(where the lesion is) was never used to fit or choose anything, so right-lung false positives are "
            "in-sample (see fp_by_side_at_threshold).",
            "The 8 and 10 mm results (by_slice_thickness) are simulated by slab averaging the 5 mm series, not "
            "scanner reconstructions (no slice profile, no reconstruction kernel change); thinner than 5 mm "
            "cannot be simulated from it, so 0.5-4 mm slices are accepted but not evaluated on a real lesion.",
            "The lesion is a 5-6 cm adenocarcinoma mass; it is larger than every LIDC training nodule "
            "(<= 32 mm) and is hit by candidates on parts of it, not by one candidate covering the whole mass.",
        ],
    }


def _card(thr: float, band: list[float], training: dict[str, Any], cfg: DetectorConfig) -> dict[str, Any]:
    import monai
    import torch

    return {
        "name": "CT lung nodule / mass candidate detector (reference model)",
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: ("slice spacing 0.5-10 mm (thick slices interpolated to the working grid); "
                                      "scorer trained on real LIDC nodules pasted into the series (plus synthetic "
                                      "masses) at 5, 8 and 10 mm; MONAI FROC; per-thickness evaluation; nodule "
                                      "characterisation per finding"),
                      "0.1.0": "first release"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "task": "Detection of lung nodules and masses on chest CT",
        "description": ("Lung masks, multi-scale LoG blob candidates with a juxtapleural search band, 12 hand-made "
                        "candidate features and a small MLP scorer trained on real LIDC-IDRI nodules (and synthetic "
                        "masses) pasted into a real chest CT at 5, 8 and 10 mm slices."),
        "authors": "cds project",
        "copyright": ("cds project; training/evaluation CT from TCIA Lung-PET-CT-Dx (CC BY 4.0); nodule crops from "
                      "TCIA LIDC-IDRI (CC BY 3.0)"),
        "references": ["Li P. et al. (2020) Lung-PET-CT-Dx, TCIA, https://doi.org/10.7937/TCIA.2020.NNC20461",
                       "Armato SG 3rd et al. (2011) LIDC-IDRI, Med Phys 38(2):915-931, doi:10.1118/1.3528204"],
        "network_data_format": {
            "inputs": {"features": {"type": "vector", "num_channels": len(CANDIDATE_FEATURES),
                                    "names": list(CANDIDATE_FEATURES), "format": "standardised"}},
            "outputs": {"logit": {"type": "probabilities", "num_channels": 1, "activation": "sigmoid"}},
        },
        "cds": {
            "model_id": MODEL_ID,
            "task": NAME,
            "modality": ["CT"],
            "body_site": "chest",
            "intended_use": ("Research and teaching reference: propose lung nodule / mass candidates on a chest CT "
                             "series, with boxes in patient LPS millimetres, for a reader to review. Not a "
                             "diagnostic device; a candidate is not a diagnosis of neoplasm."),
            "proxy_for": ("A CE/FDA-cleared lung nodule CAD or a deep detector such as MONAI's "
                          "lung_nodule_ct_detection (RetinaNet on LUNA16), whose weights are not available here."),
            "limitations": [
                "Evaluated on ONE real CT series with ONE annotated lesion (a large adenocarcinoma mass against the "
                "mediastinum and posterior chest wall, Lung-PET-CT-Dx A0001), which the team has seen; no clinical "
                "claim can rest on it. The held-out numbers on many nodules are real LIDC nodules pasted into that "
                "series' left lung: real nodule appearance, but one patient's lung, one scanner and no real "
                "surroundings of the nodules.",
                "Slice spacing 0.5-10 mm is accepted; real-lesion results exist for 5 mm only, 8 and 10 mm are "
                "simulated by slab averaging. Thinner slices are averaged to 2.5 mm and never evaluated here.",
                "Not validated on whole LIDC/LUNA screening scans, contrast CT, children, or scanners other "
                "than one Philips Brilliance 16.",
                "Positives are LIDC nodules (3-32 mm, candidates need > -500 HU, so faint ground glass is "
                "often missed) and synthetic solid masses 15-50 mm; cavitating lesions and masses over 50 mm "
                "are not represented. Masses engulfing the hilum or mediastinum are only searched within 25 mm "
                "of aerated lung.",
                "The score ranks candidates; it is not a calibrated probability of a nodule or of cancer. The "
                "nodule characterisation attached to each finding comes from a separate model with its own card.",
                "Small nodules (under 6 mm) are found less often at 8-10 mm slices (partial volume); see "
                "training_data.held_out_lidc_in_left_lung.*.sensitivity_by_diameter. Expect more false "
                "positives on other scanners and protocols than on this series.",
            ],
            "inputs": {
                "image": {"modality": "CT", "kind": "series", "units": "HU (RescaleSlope/Intercept applied)",
                          "orientation": "any; volume [k, j, i] sorted along the slice normal, LPS geometry",
                          "slice_spacing_mm": list(SLICE_SPACING_RANGE_MM),
                          "pixel_spacing_mm": list(PIXEL_SPACING_RANGE_MM),
                          "validated_slice_thickness_mm": [5.0, 10.0],
                          "slice_thickness_note": ("5 mm real; 8 and 10 mm simulated by slab averaging of the 5 mm "
                                                   "series; slices thicker than 5 mm are interpolated along the "
                                                   "normal to <= 5 mm before detection"),
                          "body_part": "chest, lungs fully or largely in the field of view"},
                "ehr": [],
            },
            "outputs": [dict(OUTPUT_CODE, kind="candidate score (0..1) per box",
                             note=("SNOMED CT 27925004 'Nodule (morphologic abnormality)'; 126713003 'Neoplasm of "
                                   "lung (disorder)' was not used because a detector does not diagnose neoplasm. "
                                   "Body site 39607008 'Lung structure'. Codes checked against published SNOMED "
                                   "CT references in public code, not against a terminology server."),
                             body_site=dict(BODY_SITE), location="box in LPS mm [x0, y0, z0, x1, y1, z1]")],
            "threshold": float(thr),
            "indeterminate": [float(band[0]), float(band[1])],
            "threshold_rule": (f"lowest score at which the validation copies (LIDC val patients pasted into the right "
                               f"lung, 5/8/10 mm pooled) give at most {OPERATING_FP_PER_LUNG:g} false positives per "
                               f"lung (about {2 * OPERATING_FP_PER_LUNG:g} per series, inside the target of 10); the "
                               f"indeterminate band spans {BAND_FP_PER_LUNG[0]:g} .. {BAND_FP_PER_LUNG[1]:g} per lung. "
                               "The right lung's negatives also train the scorer, so these rates are optimistic; the "
                               "held-out left-lung rates are in training_data"),
            "learned": {
                "what": ("a candidate scorer: MONAI FullyConnectedNet 12 -> 32 (ReLU) -> 1, sigmoid, over the "
                         "standardised candidate features; the detector itself (masks, LoG seeds, features) is "
                         "hand-designed, not learned"),
                "on_what": ("candidates on real LIDC nodules (and synthetic masses) pasted into the real CT, against "
                            "the real CT's other candidates, at 5, 8 and 10 mm slices; see training_data"),
                "fit": (f"full-batch Adam, lr {SCORER['lr']}, weight decay {SCORER['weight_decay']}, "
                        f"{SCORER['epochs']} epochs, BCE with positives weighted n_neg/n_pos, seed = train(seed)"),
                "selection": ("architecture kept from 0.1.0 (MLP chosen over logistic regression by cross-validation "
                              "on synthetic copies); no choice in 0.2.0 looked at the left lung or the real lesion"),
            },
            "training_data": training,
            "detector": cfg.to_dict(),
        },
    }


# ---------------------------------------------------------------------------------------- the task
class LungNoduleTask(TrainableTask):
    """CT series -> nodule / mass box Findings in LPS mm."""

    name = NAME

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on the volume and its geometry, then :func:`to_findings`; each box names the
        SOP Instance UIDs of the slices it spans (``image.meta["sop_instance_uids"]``, in slice order)."""
        return self.predict_with(bundle, image, ehr, default_characteriser())

    def predict_with(self, bundle: Bundle, image: Image, ehr: EhrInputs, characteriser: Any) -> list[Finding]:
        """:meth:`predict` with the given nodule ``characteriser`` (None: candidates are not characterised);
        only candidates that become findings (at or above the indeterminate band) are characterised."""
        ref = image_ref(image)
        cands = predict(bundle, image.array, image.spacing, image.origin, image.direction)
        b = _bundle(bundle)
        band = b.model_card.indeterminate
        floor = band[0] if band else b.model_card.threshold
        cands = characterise_candidates(cands, np.asarray(image.array), image.spacing, characteriser, floor)
        return to_findings(b, cands, ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids, ehr)

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (no options)."""
        self.check_options(options)
        return evaluate(data_dir, bundle_dir, n_boot=n_boot)


TASK = LungNoduleTask()
"""The ct-lung-nodule task object listed in :data:`cds.models.task_table.TASKS`."""


if __name__ == "__main__":
    raise SystemExit(main())
