"""``mammo-abnormality``: mammogram -> suspicious-region candidates (points with scores).

A reference model, not a product. Inside the breast (pectoral muscle removed) bright blobs are
found as scale-space maxima of a difference of Gaussians computed by *normalised convolution*
(the background and the muscle do not leak into the blur), at 7 scales from 0.8 to 6.4 mm
(sigma, mini-MIAS working grid of 400 um). Each candidate gets 8 features (:data:`FEATURE_NAMES`:
scale, brightness rank, depth under the skin, distance from the chest wall, and how much its blob
strength, brightness, ring contrast and edge strength stand out among the image's candidates) and
a logistic-regression score (a ``torch.nn.Linear`` ``network_def``, feature standardisation folded
into the weights). There is no microcalcification detector. The L2 penalty is chosen by cross-validation by woman;
the operating threshold is the score giving :data:`TARGET_FP_PER_IMAGE` false positives per image
on cross-validated training scores (a fixed design choice, not tuned on evaluation data).

Evaluation on a mini-MIAS style folder: a marked abnormality is *hit* when a candidate centre lies
within its marked radius of the MIAS centre (``row = height - Y``, ``col = X``); sensitivity per
abnormality and false positives per image at the operating point, a FROC list, and the image-level
AUROC of the top candidate score for "image has a marked (benign or malignant) abnormality" vs
normal, all with bootstrap CIs over women.

Examples
--------
>>> hits_marked(np.array([[10.0, 10.0], [50.0, 50.0]]), [(12.0, 11.0, 5.0)]).tolist()
[True, False]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import SNOMED
from cds.errors import ModelInputError, ParameterError
from cds.evaluation.metrics import round_metric
from cds.locations import BUNDLES_DIR, display_path
from cds.models.card_files import write_performance
from cds.models.task import TrainableTask, image_ref
from cds.models.tasks import mammo
from cds.models.tasks.inputs import default_data_dir

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = [
    "NAME",
    "TASK",
    "MODEL_ID",
    "FEATURE_NAMES",
    "SIGMAS",
    "TARGET_FP_PER_IMAGE",
    "DEFAULT_BUNDLE",
    "find_candidates",
    "hits_marked",
    "train",
    "evaluate",
    "predict",
    "to_findings",
]

NAME = "mammo-abnormality"
MODEL_ID = "mammo-abnormality"
MODEL_VERSION = "0.1.0"
DATA_SET = "mini-mias"
DEFAULT_BUNDLE = BUNDLES_DIR / MODEL_ID
CODE = ("129714008", "Mammography finding")
SIGMAS = (2.0, 2.83, 4.0, 5.66, 8.0, 11.31, 16.0)
"""Blob scales (Gaussian sigma) in working-grid pixels (400 um on mini-MIAS): 0.8-6.4 mm."""
MAX_CANDIDATES = 40
MAX_REPORTED = 5
EDGE_MARGIN = 8
TARGET_FP_PER_IMAGE = 2.0
FROC_POINTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
C_GRID = (0.01, 0.1, 1.0, 10.0)
INNER_FOLDS = 5

FEATURE_NAMES = (
    "log2_sigma", "intensity_rank", "skin_depth", "chest_distance",
    "z_dog", "z_brightness", "z_ring_contrast", "z_gradient",
)
"""Per candidate: scale, brightness rank among breast pixels, depth under the skin, distance from the
chest wall (absolute), and blob strength, brightness, contrast to a 3-scale-wider ring and edge
strength as z-scores among the image's candidates (how much it stands out)."""


# ----------------------------------------------------------------------------------- candidates
def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (truncated at 3 sigma); sigmas >= 6 px are blurred on a 2x/4x reduced grid
    (block means, then linear interpolation back), which is much faster and close enough."""
    from scipy import ndimage as ndi
    from skimage.transform import downscale_local_mean, resize

    f = 1
    while sigma / (2 * f) >= 2.8 and f < 4:
        f *= 2
    if f == 1:
        return ndi.gaussian_filter(x, sigma, truncate=3.0)
    small = downscale_local_mean(x, (f, f))
    s_eff = float(np.sqrt(max(sigma**2 - (f * f - 1) / 12.0, 0.25))) / f
    small = ndi.gaussian_filter(small, s_eff, truncate=3.0)
    return resize(small, x.shape, order=1, mode="edge", preserve_range=True).astype(x.dtype)


def _normalised_blurs(img: np.ndarray, mask: np.ndarray, sigmas: Any, extra: np.ndarray | None = None
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised convolution of ``img`` (and of ``extra``, if given) inside ``mask`` at each sigma:
    ``blur(img * mask) / blur(mask)``, so pixels outside the mask do not leak in."""
    m = mask.astype(np.float32)
    a = (img * m).astype(np.float32)
    e = None if extra is None else (extra * m).astype(np.float32)
    out, out_e = [], []
    for s in sigmas:
        den = np.maximum(_smooth(m, s), 1e-3)
        out.append(_smooth(a, s) / den)
        if e is not None:
            out_e.append(_smooth(e, s) / den)
    return out, out_e


def find_candidates(region: mammo.BreastRegion) -> dict[str, np.ndarray]:
    """Candidate centres and their :data:`FEATURE_NAMES` features for one segmented breast.

    Returns ``{"rc": (n, 2) working-grid (row, col), "sigma": (n,), "X": (n, 8)}``; at most
    :data:`MAX_CANDIDATES` candidates, strongest blob first, none closer than its scale to a
    stronger one.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    w, tissue = region.work, region.tissue
    # candidate centres: at least EDGE_MARGIN working pixels inside the breast (away from the skin
    # line, the pectoral edge and the chest-wall film edge) and away from the image border
    inner = ndi.distance_transform_edt(tissue) >= EDGE_MARGIN
    inner[:EDGE_MARGIN, :] = inner[-EDGE_MARGIN:, :] = False
    inner[:, :EDGE_MARGIN] = inner[:, -EDGE_MARGIN:] = False
    if inner.sum() < 100:
        raise ModelInputError("image_array", "breast region too small to search for abnormalities")
    vals = w[inner]
    sd = float(vals.std()) + 1e-6
    med = float(np.median(vals))
    sorted_vals = np.sort(vals)
    k = SIGMAS[1] / SIGMAS[0]
    gy, gx = np.gradient(ndi.gaussian_filter(w, 1.5))
    grad = np.hypot(gy, gx).astype(np.float32)
    blurs, grad_blurs = _normalised_blurs(w, tissue, (*SIGMAS, SIGMAS[-1] * k), extra=grad)
    dogs = [(blurs[i] - blurs[i + 1]) / (k - 1.0) / sd for i in range(len(SIGMAS))]
    found = []
    for i, s in enumerate(SIGMAS):
        pk = peak_local_max(np.where(inner, dogs[i], -1e9), min_distance=max(2, int(round(s))),
                            threshold_abs=0.0, exclude_border=False)
        found += [(float(dogs[i][r, c]), int(r), int(c), i) for r, c in pk]
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    kept: list[tuple[float, int, int, int]] = []
    for v, r, c, i in found:
        if all(np.hypot(r - r2, c - c2) >= max(SIGMAS[i], SIGMAS[i2]) for _, r2, c2, i2 in kept):
            kept.append((v, r, c, i))
        if len(kept) >= MAX_CANDIDATES:
            break
    if not kept:
        return {"rc": np.zeros((0, 2)), "sigma": np.zeros(0), "X": np.zeros((0, len(FEATURE_NAMES)))}
    rc = np.array([(r, c) for _, r, c, _ in kept], dtype=float)
    idx = np.array([i for *_, i in kept])
    sig = np.array([SIGMAS[i] for i in idx])
    dist = ndi.distance_transform_edt(region.breast)
    cols = np.flatnonzero(region.breast.any(axis=0))
    c_left, width = float(cols[0]), float(max(cols[-1] - cols[0], 1))
    ri, ci = rc[:, 0].astype(int), rc[:, 1].astype(int)
    dog = np.array([dogs[i][r, c] for i, r, c in zip(idx, ri, ci, strict=True)])
    bright = np.array([blurs[i][r, c] for i, r, c in zip(idx, ri, ci, strict=True)])
    ring_idx = np.minimum(idx + 3, len(blurs) - 1)
    ring = np.array([blurs[j][r, c] for j, r, c in zip(ring_idx, ri, ci, strict=True)])
    gmean = np.array([grad_blurs[i][r, c] for i, r, c in zip(idx, ri, ci, strict=True)])
    contrast = np.column_stack([
        dog,
        (bright - med) / sd,
        (bright - ring) / sd,
        gmean / sd,
    ])
    z = (contrast - contrast.mean(axis=0)) / (contrast.std(axis=0) + 1e-6)
    X = np.column_stack([
        np.log2(sig),
        np.searchsorted(sorted_vals, bright) / len(sorted_vals),
        dist[ri, ci] / max(float(dist.max()), 1.0),
        (rc[:, 1] - c_left) / width,
        z,
    ])
    return {"rc": rc, "sigma": sig, "X": X}


def hits_marked(points_rc: np.ndarray, marks: list[tuple[float, float, float]]) -> np.ndarray:
    """For each candidate (row, col) in original pixels: does it lie within a marked circle?

    ``marks`` are ``(row, col, radius)`` in original pixels.
    """
    pts = np.asarray(points_rc, dtype=float).reshape(-1, 2)
    out = np.zeros(len(pts), bool)
    for r, c, rad in marks:
        out |= np.hypot(pts[:, 0] - r, pts[:, 1] - c) <= rad
    return out


def _analyse(image: Any, where: str, laterality: str | None) -> tuple[mammo.BreastRegion, dict[str, np.ndarray]]:
    region = mammo.segment_breast(image, where, chest_wall=mammo.chest_wall_from_laterality(laterality))
    cands = find_candidates(region)
    cands["rc_original"] = np.array([region.to_original(r, c) for r, c in cands["rc"]]).reshape(-1, 2)
    cands["radius_original"] = cands["sigma"] * np.sqrt(2.0) * region.scale
    return region, cands


# ------------------------------------------------------------------------------------ data sets
def _dataset(data_dir: str | Path, limit_women: int | None = None) -> dict[str, Any]:
    """Candidates, features and hit labels of every image in a mini-MIAS style folder."""
    from tqdm.auto import tqdm

    df = mammo.load_labels(data_dir, required=("REFNUM", "CLASS"))
    images = df.drop_duplicates("REFNUM").reset_index(drop=True)
    if limit_women is not None:
        keep = sorted(images["woman"].unique())[:limit_women]
        images = images[images["woman"].isin(keep)].reset_index(drop=True)
    out: dict[str, Any] = {"images": [], "X": [], "hit": [], "img_index": [], "lesions": []}
    for k, r in enumerate(tqdm(list(images.itertuples()), desc=f"{NAME} candidates", disable=None)):
        path = mammo.image_path(data_dir, r.REFNUM)
        img = mammo.read_mammogram(path)
        lat = getattr(r, "laterality", None)
        _, cands = _analyse(img, str(path), lat if isinstance(lat, str) else None)
        rows = df[df["REFNUM"] == r.REFNUM]
        cls = [str(c).strip().upper() for c in rows["CLASS"] if isinstance(c, str)]
        abnormal = any(c and c != "NORM" for c in cls)
        marks, unmarked = [], False
        for m in rows.itertuples():
            if not (isinstance(m.CLASS, str) and m.CLASS.strip().upper() not in ("", "NORM")):
                continue
            if np.isfinite(m.X) and np.isfinite(m.Y) and np.isfinite(m.RADIUS) and m.RADIUS > 0:
                marks.append((img.shape[0] - float(m.Y), float(m.X), float(m.RADIUS)))
                out["lesions"].append({"image": k, "refnum": r.REFNUM, "woman": r.woman, "class": m.CLASS,
                                       "severity": m.SEVERITY if isinstance(m.SEVERITY, str) else None,
                                       "row": img.shape[0] - float(m.Y), "col": float(m.X),
                                       "radius": float(m.RADIUS)})
            else:
                unmarked = True
        hit = hits_marked(cands["rc_original"], marks)
        severity = [str(s).strip().upper() for s in rows["SEVERITY"] if isinstance(s, str)]
        out["images"].append({"refnum": r.REFNUM, "woman": r.woman, "sha256": mammo.image_sha256(img),
                              "abnormal": bool(abnormal), "malignant": "M" in severity,
                              "unmarked": unmarked, "marks": marks, "rc": cands["rc_original"]})
        out["X"].append(cands["X"])
        out["hit"].append(hit)
        out["img_index"].append(np.full(len(hit), k))
    out["X"] = np.vstack(out["X"])
    out["hit"] = np.concatenate(out["hit"]).astype(int)
    out["img_index"] = np.concatenate(out["img_index"])
    out["women_of_candidate"] = np.array([out["images"][i]["woman"] for i in out["img_index"]])
    # candidates of images with an abnormality but no centre (e.g. widely distributed calcifications)
    # can be neither true nor false positives: they are left out of training and lesion-level metrics
    out["judgeable"] = np.array([not out["images"][i]["unmarked"] for i in out["img_index"]])
    return out


def _fp_threshold(scores: np.ndarray, hit: np.ndarray, n_images: int, target: float) -> float:
    """Lowest score threshold whose false positives per image (non-hit candidates) are <= target."""
    fp_scores = np.sort(scores[hit == 0])[::-1]
    allowed = int(np.floor(target * n_images))
    if allowed >= len(fp_scores):
        return float(np.min(scores)) if len(scores) else 0.5
    return float(np.nextafter(fp_scores[allowed], np.inf))


def _fit(ds: dict[str, Any], sel: np.ndarray, Cs: Any, k_inner: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Fit on the candidates ``sel`` (judgeable ones): C by inner CV by woman, threshold at the
    target FP/image on the inner out-of-fold scores. Returns ``(W, b, C, threshold)``."""
    X, y, women = ds["X"][sel], ds["hit"][sel], ds["women_of_candidate"][sel]
    C, oof = mammo.select_C(X, y, women, Cs, 2, k_inner)
    W, b = mammo.fit_linear(X, y, C, 2)
    n_img = len(np.unique(ds["img_index"][sel]))
    t = _fp_threshold(oof, y, n_img, TARGET_FP_PER_IMAGE)
    return W, b, C, t


# -------------------------------------------------------------------------------------- bundles
def _load(bundle: Any) -> Any:
    from cds.models.bundle import Bundle, load_bundle

    if isinstance(bundle, Bundle):
        return bundle
    return load_bundle(DEFAULT_BUNDLE if bundle is None else bundle)


PERFORMANCE_KEYS = ("data", "split", "split_rule", "n_cases", "n_patients", "n_lesions", "n_abnormal_images", "n_positive",
                    "metrics", "froc", "by_class", "operating_point", "bootstrap", "notes", "evaluation_command")


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          quick: bool = False) -> Path:
    """Fit the candidate scorer on a mini-MIAS style folder and write a MONAI bundle.

    C is chosen by 5-fold CV by woman over all training candidates; the threshold gives
    :data:`TARGET_FP_PER_IMAGE` on the out-of-fold scores at that C. The card's performance is
    :func:`evaluate` on the same folder (nested leave-one-woman-out CV). ``quick``: first 8 women,
    2 penalties, 200 bootstrap resamples (tests only). Deterministic; ``seed`` seeds the bootstrap.
    """
    from cds.models.bundle import save_bundle

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_BUNDLE
    ds = _dataset(root, limit_women=8 if quick else None)
    if ds["hit"].sum() == 0:
        raise ParameterError("data_dir", f"{root}: no candidate hits a marked abnormality; cannot train")
    Cs = (0.1, 1.0) if quick else C_GRID
    W, b, C, t = _fit(ds, ds["judgeable"], Cs, INNER_FOLDS)
    card = _card(root, ds, C, Cs, t, quick, seed)
    net_def = {"_target_": "torch.nn.Linear", "in_features": len(FEATURE_NAMES), "out_features": 1}
    out = save_bundle(out_dir, card, net_def, mammo.linear_state_dict(W, b))
    mammo.write_training_images(out, [im["refnum"] for im in ds["images"]], [im["sha256"] for im in ds["images"]])
    res = evaluate(root, out, n_boot=200 if quick else 2000, _dataset_cache=ds)
    write_performance(out, res, PERFORMANCE_KEYS)
    return out


def _card(root: Path, ds: dict[str, Any], C: float, Cs: Any, threshold: float, quick: bool,
          seed: int) -> dict[str, Any]:

    n_img = len(ds["images"])
    n_women = len({im["woman"] for im in ds["images"]})
    n_les = len(ds["lesions"])
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: "first reference model (normalised-convolution DoG candidates + logistic scorer)"},
        "name": MODEL_ID,
        "task": "Suspicious-region candidates on a mammogram (MIAS abnormalities)",
        "description": "Breast region and pectoral removal, multi-scale difference-of-Gaussians blob candidates "
                       "(normalised convolution), 8 features per candidate, "
                       "logistic-regression scorer.",
        **mammo.mias_bundle_provenance(),
        "label_classes": "candidate hits a marked MIAS abnormality (1) or not (0)",
        "pred_classes": "logit of a candidate being a marked abnormality",
        "eval_metrics": {},
        "intended_use": "Research and teaching only: a transparent baseline for the cds notebooks.",
        "references": [
            "Suckling J et al. The Mammographic Image Analysis Society Digital Mammogram Database. "
            "Excerpta Medica ICS 1069:375-378, 1994.",
            "McKinney SM et al. International evaluation of an AI system for breast cancer screening. "
            "Nature 577:89-94, 2020.",
        ],
        "network_data_format": {
            "inputs": {"features": {
                "type": "tabular", "format": "features", "num_channels": len(FEATURE_NAMES),
                "spatial_shape": [len(FEATURE_NAMES)], "dtype": "float32", "value_range": [],
                "is_patch_data": False, "channel_def": {str(i): n for i, n in enumerate(FEATURE_NAMES)},
            }},
            "outputs": {"pred": {
                "type": "probabilities", "format": "logits", "num_channels": 1, "spatial_shape": [1],
                "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {"0": "candidate is a marked abnormality"},
            }},
        },
        "cds": {
            "model_id": MODEL_ID,
            "task": NAME,
            "modality": ["MG"],
            "body_site": "breast",
            "intended_use": (
                "Research/teaching reference: point at up to 5 regions of one digitised-film MLO "
                "mammogram that look like the abnormalities marked in MIAS (masses, asymmetries, "
                "architectural distortions), to demonstrate region Findings in cds. "
                "Not for clinical use, screening, diagnosis or triage."),
            "proxy_for": (
                "A stand-in for a screening-mammography AI that localises suspicious findings and scores "
                "cancer suspicion (e.g. McKinney 2020: AUC 0.966 UK / 0.883 US on large screening "
                "cohorts with follow-up). This model is nowhere near that: hand-made features, 40 images, "
                "benign and malignant MIAS marks pooled, no prior or contralateral views."),
            "limitations": [
                f"Trained and evaluated on {n_img} images of {n_women} women with {n_les} marked abnormalities "
                "(mini-MIAS subset): sensitivity CIs span tens of percentage points.",
                "Digitised film, 200 um pixels, 8-bit, MLO only; digital mammography, CC views, other scanners "
                "or processing are untested.",
                "The marks are MIAS circles (centre + radius) from one set of readers; benign and malignant "
                "abnormalities are pooled; widely distributed calcifications without a centre are excluded "
                "from lesion-level metrics.",
                "Calcifications are not targeted (no microcalcification detector: a speck-cluster channel tried "
                "during development did not reach the 3 marked clusters and was removed).",
                "The candidate generator (scales, 40 candidates, edge margin) was designed while looking at "
                "these 40 images; only the scorer weights, penalty and threshold are chosen inside CV.",
                "Design history: a first version (10 absolute features, a speck-cluster channel, 4 px edge "
                "margin) gave cross-validated lesion sensitivity 0.13 at 1.9 FP/image and image AUROC 0.57; "
                "the features were then changed to within-image z-scores, the edge margin widened to 8 px and "
                "the speck channel dropped, after seeing that result (an intermediate version reached 0.47 at 1.85 "
                "FP/image, AUROC 0.64, before the speck channel was dropped; with 15 marks such swings are noise, "
                "and the design was frozen after that change). The cross-validated numbers are therefore "
                "optimistic; only images never used in development (e.g. the team's withheld set) are an "
                "independent check.",
                "A candidate 'hit' only means its centre falls inside the marked circle; large marks "
                "(radius up to 111 px = 22 mm) are easy to hit.",
                "Images must be bright = dense (cds.images.dicom_image inverts MONOCHROME1 DICOM; raw arrays are not checked).",
            ],
            "inputs": {
                "image": {"modality": "MG", "view": "MLO", "channels": 1, "dtype": "uint8 preferred",
                          "spatial": "any size; blobs on a 512 px (longest side) grid; "
                                     "scales assume ~200 um pixels at 1024 px",
                          "orientation": "any; chest-wall side from ehr['laterality'] (R/L, optional) when "
                                         "given, else found from the image"},
                "ehr": [],
            },
            "outputs": [{"code_system": SNOMED, "code": CODE[0], "display": CODE[1], "kind": "probability",
                         "location": "pixel point (col, row) of each candidate at or above the threshold"}],
            "code_note": ("SNOMED CT 129714008 'Mammography finding (finding)' (used in HL7 breast-imaging IGs as "
                          "the mammographic change concept) because candidates mix masses, asymmetries, "
                          "distortions and calcifications. 129748009 is 'Radiographic calcification finding', "
                          "not a general breast-lesion code, so it is not used."),
            "threshold": round(float(threshold), 6),
            "indeterminate": None,
            "operating_point": {
                "how_chosen": f"score giving {TARGET_FP_PER_IMAGE} false positives per image on the "
                              f"{INNER_FOLDS}-fold cross-validated (by woman) training scores",
                "target_fp_per_image": TARGET_FP_PER_IMAGE, "max_reported_candidates": MAX_REPORTED},
            "image_score": "the highest candidate score of the image (used for the image-level AUROC)",
            "features": list(FEATURE_NAMES),
            "candidate_generator": {"sigmas_working_px": list(SIGMAS), "working_grid_longest_side": mammo.WORK_SIZE,
                                    "max_candidates": MAX_CANDIDATES, "edge_margin_working_px": EDGE_MARGIN},
            "hyperparameters": {"C": C, "C_grid": list(Cs), "inner_cv": f"{INNER_FOLDS}-fold by woman",
                                "penalty": "L2", "standardisation": "folded into the Linear weights"},
            "training_data": {
                "name": "mini-MIAS" + (" (quick: first 8 women)" if quick else ""),
                "path": display_path(root), "split": "all images; performance by nested leave-one-woman-out CV",
                "n": n_img, "n_patients": n_women, "n_lesions": n_les,
                "n_candidates": int(len(ds["hit"])), "n_hit_candidates": int(ds["hit"].sum()), "seed": seed,
                "licence": "MIAS licence: research use only; do not rent, lease or sell; cite Suckling 1994.",
                "image_hashes": "configs/training_images.json",
            },
            "context": [
                "McKinney 2020: AUC 0.966 (UK) / 0.883 (US) for cancer within follow-up, on tens of thousands "
                "of screening exams; not comparable with this 40-image detection baseline.",
            ],
            "performance": {},
        },
    }


# ----------------------------------------------------------------------------------- evaluation
def _lesion_hits(ds: dict[str, Any], called: np.ndarray) -> np.ndarray:
    """For each marked lesion: is it hit by a called candidate?"""
    out = np.zeros(len(ds["lesions"]), bool)
    for j, les in enumerate(ds["lesions"]):
        k = les["image"]
        sel = (ds["img_index"] == k) & called
        rc = ds["images"][k]["rc"][np.flatnonzero(sel[ds["img_index"] == k])] if sel.any() else np.zeros((0, 2))
        out[j] = bool(hits_marked(rc, [(les["row"], les["col"], les["radius"])]).any())
    return out


def _fp_per_image(ds: dict[str, Any], called: np.ndarray, images: np.ndarray) -> np.ndarray:
    fp = (called & (ds["hit"] == 0))
    return np.array([int(fp[ds["img_index"] == k].sum()) for k in images])


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             **_private: Any) -> dict[str, Any]:
    """Detection of marked abnormalities on a mini-MIAS style folder (JSON-ready dict).

    Split rule as in :func:`cds.models.tasks.mammo_density.evaluate`: a folder made only of training
    images (pixel SHA-256 in ``configs/training_images.json``) is scored with nested
    leave-one-woman-out cross-validated candidate scores and per-fold thresholds; otherwise the
    shipped model and its card threshold score the images not used in training.

    Metrics: ``lesion_sensitivity`` (marked abnormalities hit by a candidate at or above the
    threshold), ``fp_per_image`` (candidates at or above the threshold that hit no mark, images
    with a centre-less abnormality left out), ``auroc_abnormal_vs_normal`` (image score = top
    candidate score), ``auroc_malignant_vs_normal``; CIs: percentile bootstrap over women.
    ``froc``: sensitivity at 0.25-8 FP per image on the pooled scores.
    """
    from cds.evaluation.metrics import auroc, bootstrap_ci

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    b = _load(bundle_dir)
    ds = _private.get("_dataset_cache") or _dataset(root)
    seed = int(b.model_card.training_data.get("seed", 0))
    seen_hash = mammo.training_hashes(b)
    seen_img = np.array([im["sha256"] in seen_hash for im in ds["images"]])
    n_all = len(ds["images"])
    scores = np.zeros(len(ds["hit"]))
    called = np.zeros(len(ds["hit"]), bool)
    notes: list[str] = []
    excluded: list[dict[str, Any]] = []
    if seen_img.all():
        split = "cross-validated"
        Cs = b.model_card.hyperparameters.get("C_grid", C_GRID)
        women_img = np.array([im["woman"] for im in ds["images"]])
        chosen = []
        for te_w in np.unique(women_img):
            te = ds["women_of_candidate"] == te_w
            W, bb, C, t = _fit(ds, ~te & ds["judgeable"], Cs, INNER_FOLDS)
            scores[te] = mammo.linear_proba(W, bb, ds["X"][te])
            called[te] = scores[te] >= t
            chosen.append(C)
        keep_img = np.ones(n_all, bool)
        notes.append("Every image is a training image: candidate scores are nested leave-one-woman-out "
                     f"cross-validated, with C and the {TARGET_FP_PER_IMAGE} FP/image threshold chosen inside each "
                     f"training part (chosen C: {sorted(set(chosen))}).")
        threshold_note = "per-fold thresholds"
    else:
        split = "unseen"
        W, bb = mammo.bundle_linear(b)
        t = float(b.model_card.threshold)
        scores = mammo.linear_proba(W, bb, ds["X"]) if len(ds["X"]) else scores
        called = scores >= t
        keep_img = ~seen_img
        excluded = [{"refnum": im["refnum"], "reason": "training image of this bundle"}
                    for im, s in zip(ds["images"], seen_img, strict=True) if s]
        if seen_img.any():
            notes.append(f"{int(seen_img.sum())} training images of this bundle left out.")
        threshold_note = f"card threshold {t:.6g}"
    keep_cand = keep_img[ds["img_index"]]
    img_ids = np.flatnonzero(keep_img)
    judge_imgs = np.array([k for k in img_ids if not ds["images"][k]["unmarked"]], dtype=int)
    women_img = np.array([ds["images"][k]["woman"] for k in range(n_all)])
    les_keep = np.array([keep_img[les["image"]] for les in ds["lesions"]], dtype=bool)
    les_hit = _lesion_hits(ds, called & keep_cand)[les_keep] if len(ds["lesions"]) else np.zeros(0, bool)
    les_women = np.array([les["woman"] for les in ds["lesions"]])[les_keep] if len(ds["lesions"]) else np.zeros(0)
    fp_img = _fp_per_image(ds, called & keep_cand, judge_imgs)
    img_score = np.array([scores[ds["img_index"] == k].max() if (ds["img_index"] == k).any() else 0.0
                          for k in img_ids])
    abnormal = np.array([ds["images"][k]["abnormal"] for k in img_ids], dtype=int)
    malignant = np.array([ds["images"][k]["malignant"] for k in img_ids], dtype=int)
    wi = women_img[img_ids]

    def mean(a: np.ndarray) -> float:
        return float(np.mean(a)) if len(a) else float("nan")

    metrics: dict[str, Any] = {}
    if len(les_hit):
        m = bootstrap_ci(mean, les_hit.astype(float), n_boot=n_boot, seed=seed, groups=les_women)
        metrics["lesion_sensitivity"] = round_metric({"value": m["value"], "ci95": m["ci95"]})
    if len(fp_img):
        m = bootstrap_ci(mean, fp_img.astype(float), n_boot=n_boot, seed=seed, groups=women_img[judge_imgs])
        metrics["fp_per_image"] = round_metric({"value": m["value"], "ci95": m["ci95"]})
    if 0 < abnormal.sum() < len(abnormal):
        m = bootstrap_ci(auroc, abnormal, img_score, n_boot=n_boot, seed=seed, groups=wi)
        metrics["auroc_abnormal_vs_normal"] = round_metric({"value": m["value"], "ci95": m["ci95"]})
    normal_or_m = (abnormal == 0) | (malignant == 1)
    if malignant.sum() > 0 and (abnormal == 0).sum() > 0:
        m = bootstrap_ci(auroc, malignant[normal_or_m], img_score[normal_or_m], n_boot=n_boot, seed=seed,
                         groups=wi[normal_or_m])
        metrics["auroc_malignant_vs_normal"] = round_metric({"value": m["value"], "ci95": m["ci95"]})
    for key, what in (("auroc_abnormal_vs_normal", "abnormal"), ("auroc_malignant_vs_normal", "malignant")):
        m = metrics.get(key)
        if m and m["ci95"][0] is not None and m["ci95"][0] <= 0.5 <= m["ci95"][1]:
            notes.append(f"{key}: the 95 % CI includes 0.5, so the top candidate score does not separate "
                         f"{what} from normal images on these data.")
    if not metrics:
        raise ParameterError("data_dir", f"{root}: no marked abnormality and no abnormal/normal contrast; "
                             "nothing to evaluate")
    # FROC on pooled scores of the judgeable kept candidates
    sel = keep_cand & ds["judgeable"]
    froc = []
    if len(judge_imgs) and len(ds["lesions"]) and les_keep.any():
        for fpi in FROC_POINTS:
            t_f = _fp_threshold(scores[sel], ds["hit"][sel], len(judge_imgs), fpi)
            s_f = _lesion_hits(ds, (scores >= t_f) & keep_cand)[les_keep].mean()
            fp_f = _fp_per_image(ds, (scores >= t_f) & keep_cand, judge_imgs).mean()
            froc.append({"fp_per_image": fpi, "actual_fp_per_image": round(float(fp_f), 4),
                         "sensitivity": round(float(s_f), 4), "threshold": round(float(t_f), 6)})
    by_class: dict[str, dict[str, int]] = {}
    for les, h in zip([les for les, k in zip(ds["lesions"], les_keep, strict=True) if k], les_hit, strict=True):
        c = by_class.setdefault(str(les["class"]), {"n": 0, "hit": 0})
        c["n"] += 1
        c["hit"] += int(h)
    n_unmarked = sum(1 for k in img_ids if ds["images"][k]["unmarked"])
    if n_unmarked:
        notes.append(f"{n_unmarked} image(s) with an abnormality without centre/radius (e.g. widely distributed "
                     "calcifications): in the image-level AUROC, not in lesion sensitivity or FP/image.")
    notes.append(f"Only {len(set(wi))} women and {int(les_keep.sum())} marked abnormalities: "
                 "every estimate here is very uncertain.")
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": display_path(root),
        "split": split,
        "split_rule": "cross-validated when every image's pixel SHA-256 is in the bundle's "
                      "configs/training_images.json, else the shipped model on the images not listed there",
        "n_cases": int(len(img_ids)),
        "n_patients": int(len(set(wi))),
        "n_lesions": int(les_keep.sum()),
        "n_abnormal_images": int(abnormal.sum()),
        "n_positive": int(abnormal.sum()),
        "metrics": metrics,
        "operating_point": {"threshold": threshold_note, "target_fp_per_image": TARGET_FP_PER_IMAGE,
                            "hit_rule": "candidate centre within the marked radius of the MIAS centre "
                                        "(row = image height - Y, col = X)"},
        "froc": froc,
        "by_class": by_class,
        "bootstrap": {"n_boot": int(n_boot), "unit": "woman", "seed": seed, "method": "percentile"},
        "notes": notes,
        "excluded": excluded,
        "evaluation_command": f"cds evaluate {NAME} --data {display_path(root)} --json",
        "cases": [{"refnum": ds["images"][k]["refnum"], "woman": str(ds["images"][k]["woman"]),
                   "abnormal": bool(ds["images"][k]["abnormal"]), "image_score": round(float(s), 4),
                   "n_called": int((called & (ds["img_index"] == k)).sum())}
                  for k, s in zip(img_ids, img_score, strict=True)],
    }


# ------------------------------------------------------------------------------------ inference
def predict(bundle: Any, image_array: Any, ehr: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scored candidates for one mammogram.

    Returns ``{"candidates": [{"row", "col", "radius", "score", "called"}, ...]`` (original pixel
    coordinates, best first), ``"image_score"`` (top score), ``"threshold"``, ``"n_called"``, and
    the breast-region facts. ``ehr['laterality']`` ("R"/"L"), if given, fixes the chest-wall side.
    """
    b = _load(bundle)
    lat = mammo.laterality_from_ehr(ehr)
    region, cands = _analyse(image_array, "image_array", lat)
    W, bb = mammo.bundle_linear(b)
    if W.shape[1] != len(FEATURE_NAMES):
        raise ModelInputError(str(b.path), f"bundle expects {W.shape[1]} features, this code makes {len(FEATURE_NAMES)}")
    t = float(b.model_card.threshold)
    s = mammo.linear_proba(W, bb, cands["X"]) if len(cands["X"]) else np.zeros(0)
    order = np.argsort(-s, kind="stable")
    out = [{"row": float(cands["rc_original"][i, 0]), "col": float(cands["rc_original"][i, 1]),
            "radius": float(cands["radius_original"][i]), "score": float(s[i]), "called": bool(s[i] >= t)}
           for i in order]
    return {"task": NAME, "model_id": b.model_id, "model_version": b.version, "candidates": out,
            "image_score": float(s.max()) if len(s) else 0.0, "threshold": t,
            "n_called": int((s >= t).sum()), "chest_wall": region.chest_wall,
            "pectoral_found": bool(region.pectoral.any())}


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str,
                series_uid: str | None = None, instance_uids: Any = (), ehr_inputs: dict[str, Any] | None = None
                ) -> list[Any]:
    """Findings (SNOMED 129714008 Mammography finding): one image-level Finding (top candidate
    score, no location) and one per called candidate (at most :data:`MAX_REPORTED`, best first)
    with a pixel-frame point ``Location("point", (col, row), frame="pixel")``."""
    from cds.finding import Finding, Location

    b = _load(bundle)
    if "candidates" not in pred or "image_score" not in pred:
        raise ParameterError("pred", "not a mammo-abnormality prediction (needs 'candidates' and 'image_score')")
    t = float(pred.get("threshold", b.model_card.threshold))
    uids = tuple(instance_uids or ())
    common = dict(patient_id=patient_id, study_uid=study_uid, code_system=SNOMED, code=CODE[0], display=CODE[1],
                  model_id=b.model_id, model_version=b.version, threshold=t, indeterminate=None,
                  series_uid=series_uid, instance_uids=uids, ehr_inputs=dict(ehr_inputs or {}))
    called = [c for c in pred["candidates"] if c["called"]][:MAX_REPORTED]
    out = [Finding(probability=float(pred["image_score"]),
                   explanation=f"{pred['n_called']} candidate region(s) at or above the operating threshold "
                               f"({TARGET_FP_PER_IMAGE} false positives per image on training data)",
                   extra={"level": "image", "n_called": pred["n_called"], "chest_wall": pred.get("chest_wall")},
                   **common)]
    sop = uids[0] if len(uids) == 1 else None
    for rank, c in enumerate(called, start=1):
        out.append(Finding(
            probability=float(c["score"]),
            location=Location("point", (c["col"], c["row"]), frame="pixel", sop_instance_uid=sop),
            explanation=f"candidate {rank}: bright blob, radius ~{c['radius']:.0f} px",
            extra={"level": "candidate", "rank": rank, "radius_px": c["radius"]}, **common))
    return out


# ---------------------------------------------------------------------------------------- the task
class MammoAbnormalityTask(TrainableTask):
    """MLO mammogram -> suspicious-region Findings."""

    name = NAME
    evaluate_options = ()

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on ``image.array`` then :func:`to_findings` with the image's identity."""
        ref = image_ref(image)
        return to_findings(bundle, predict(bundle, image.array, ehr), ref.patient_id, ref.study_uid,
                           ref.series_uid, ref.instance_uids, ehr)

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (options: none)."""
        return evaluate(data_dir, bundle_dir, n_boot=n_boot, **self.check_options(options))

    def training_images(self, data_dir: str | Path | None) -> Iterator[tuple[str, np.ndarray]]:
        """``(REFNUM, array)`` of every image in ``labels.csv`` (the training set: the shipped scorer is
        fitted on all of them), read by :func:`cds.models.tasks.mammo.read_mammogram`."""
        root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
        for ref in mammo.load_labels(root, required=("REFNUM", "CLASS")).drop_duplicates("REFNUM")["REFNUM"]:
            yield str(ref), mammo.read_mammogram(mammo.image_path(root, ref))


TASK = MammoAbnormalityTask()
"""The mammo-abnormality task object listed in :data:`cds.models.task_table.TASKS`."""
