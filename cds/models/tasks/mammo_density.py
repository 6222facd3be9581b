"""``mammo-density``: mammogram -> MIAS background-tissue class (F fatty, G fatty-glandular, D dense).

A reference model, not a product: 18 hand-made features of the breast region (intensity percentiles
and moments, the dense-tissue fraction above an adaptive (Otsu) threshold inside the breast, texture
from a grey-level co-occurrence matrix and local contrast, breast size) feed a multinomial logistic
regression (a ``torch.nn.Linear`` ``network_def`` with the feature standardisation folded into its
weights). The L2 penalty is chosen by cross-validation by woman; performance is the nested,
leave-one-woman-out cross-validated agreement with the MIAS ``BG`` label.

MIAS F/G/D is *not* BI-RADS a-d. Classes are coded in a local code system
(:data:`CODE_SYSTEM`), documented in the model card.

Examples
--------
>>> import numpy as np
>>> kappa_linear(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3) > 0.6
True
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import MIAS_TISSUE_CODES as CODE_SYSTEM  # the task's local code system, named here too
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
    "CLASSES",
    "CODE_SYSTEM",
    "FEATURE_NAMES",
    "DEFAULT_BUNDLE",
    "density_features",
    "kappa_linear",
    "train",
    "evaluate",
    "predict",
    "to_findings",
]

NAME = "mammo-density"
MODEL_ID = "mammo-density"
MODEL_VERSION = "0.1.0"
CLASSES = ("F", "G", "D")
DISPLAYS = {"F": "Fatty", "G": "Fatty-glandular", "D": "Dense-glandular"}
DATA_SET = "mini-mias"
DEFAULT_BUNDLE = BUNDLES_DIR / MODEL_ID
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
INNER_FOLDS = 5

FEATURE_NAMES = (
    "p10", "p25", "p50", "p75", "p90",
    "mean", "std", "skewness", "kurtosis",
    "otsu_level", "dense_fraction_otsu",
    "glcm_contrast", "glcm_homogeneity", "glcm_energy", "glcm_correlation",
    "local_std", "dog_std", "breast_area_fraction",
)


# -------------------------------------------------------------------------------------- features
def density_features(region: mammo.BreastRegion) -> np.ndarray:
    """The 18 :data:`FEATURE_NAMES` of one segmented breast (working grid, pectoral excluded).

    The region is eroded by 8 working pixels (3.2 mm on mini-MIAS) so the skin-line fall-off of
    film does not count as fat. Intensities are in [0, 1].
    """
    from scipy import ndimage as ndi
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import threshold_otsu

    w = region.work
    t = ndi.binary_erosion(region.tissue, iterations=8)
    if t.sum() < 500:
        t = region.tissue
    v = w[t].astype(np.float64)
    if v.size < 50:
        raise ModelInputError("image_array", "breast region too small to measure density")
    q = np.percentile(v, [10, 25, 50, 75, 90])
    mean, std = float(v.mean()), float(v.std()) + 1e-9
    skew = float(((v - mean) ** 3).mean() / std**3)
    kurt = float(((v - mean) ** 4).mean() / std**4)
    otsu = float(threshold_otsu(v))
    dense = float((v > otsu).mean())
    # grey-level co-occurrence inside the breast: level 0 marks outside and is dropped
    qimg = np.where(t, 1 + np.clip((w * 31).astype(int), 0, 30), 0).astype(np.uint8)
    glcm = graycomatrix(qimg, [2, 4], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True)
    glcm = glcm[1:, 1:].astype(np.float64)
    glcm /= np.maximum(glcm.sum(axis=(0, 1), keepdims=True), 1.0)
    props = [float(graycoprops(glcm, p).mean()) for p in ("contrast", "homogeneity", "energy", "correlation")]
    local_sd = np.sqrt(np.maximum(ndi.uniform_filter(w * w, 7) - ndi.uniform_filter(w, 7) ** 2, 0))
    dog = ndi.gaussian_filter(w, 1.0) - ndi.gaussian_filter(w, 4.0)
    area = float(region.tissue.mean())
    return np.array([*q, mean, std, skew, kurt, otsu, dense, *props, float(local_sd[t].mean()),
                     float(dog[t].std()), area], dtype=np.float64)


def kappa_linear(y: np.ndarray, p: np.ndarray, k: int = 3) -> float:
    """Cohen's kappa with linear weights for ordinal labels ``0..k-1`` (NaN if undefined).

    >>> kappa_linear(np.array([0, 1, 2]), np.array([0, 1, 2]))
    1.0
    """
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=int)
    if y.size == 0:
        return float("nan")
    obs = np.zeros((k, k))
    np.add.at(obs, (y, p), 1.0)
    obs /= obs.sum()
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((k, k))
    wgt = np.abs(i - j) / (k - 1)
    den = (wgt * exp).sum()
    if den <= 0:
        return float("nan")
    return float(1.0 - (wgt * obs).sum() / den)


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.asarray(y) == np.asarray(p))) if len(y) else float("nan")


def _balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    rec = [np.mean(p[y == c] == c) for c in range(len(CLASSES)) if np.any(y == c)]
    return float(np.mean(rec)) if rec else float("nan")


# ------------------------------------------------------------------------------------ data sets
def _dataset(data_dir: str | Path, limit_women: int | None = None) -> dict[str, Any]:
    """Features, labels, women and pixel hashes of every image in a mini-MIAS style folder."""
    from tqdm.auto import tqdm

    df = mammo.load_labels(data_dir)
    rows = df.drop_duplicates("REFNUM").reset_index(drop=True)
    for ref, grp in df.groupby("REFNUM"):
        if grp["BG"].nunique() > 1:
            raise ParameterError("labels.csv", f"REFNUM {ref} has conflicting BG values {sorted(grp['BG'].unique())}")
    if limit_women is not None:
        keep = sorted(rows["woman"].unique())[:limit_women]
        rows = rows[rows["woman"].isin(keep)].reset_index(drop=True)
    feats, hashes, excluded = [], [], []
    labels, women, refs = [], [], []
    for r in tqdm(list(rows.itertuples()), desc=f"{NAME} features", disable=None):
        path = mammo.image_path(data_dir, r.REFNUM)
        img = mammo.read_mammogram(path)
        lat = getattr(r, "laterality", None)
        lat = lat if isinstance(lat, str) else None
        if r.BG not in CLASSES:
            excluded.append({"refnum": r.REFNUM, "reason": f"BG={r.BG!r} is not one of F, G, D"})
            continue
        region = mammo.segment_breast(img, str(path), chest_wall=mammo.chest_wall_from_laterality(lat))
        feats.append(density_features(region))
        hashes.append(mammo.image_sha256(img))
        labels.append(CLASSES.index(r.BG))
        women.append(r.woman)
        refs.append(r.REFNUM)
    if not refs:
        raise ParameterError("data_dir", f"{data_dir}: no image with a BG label of F, G or D")
    return {"X": np.array(feats), "y": np.array(labels), "women": np.array(women), "refs": refs,
            "hashes": hashes, "excluded": excluded}


def _nested_cv(X: np.ndarray, y: np.ndarray, women: np.ndarray, Cs: Any, k_inner: int) -> tuple[np.ndarray, list[float]]:
    """Leave-one-woman-out probabilities; C chosen inside each training part (inner CV by woman)."""
    probs = np.zeros((len(y), len(CLASSES)))
    chosen = []
    for te in mammo.woman_folds(women):
        tr = np.setdiff1d(np.arange(len(y)), te)
        C, _ = mammo.select_C(X[tr], y[tr], women[tr], Cs, len(CLASSES), k_inner)
        W, b = mammo.fit_linear(X[tr], y[tr], C, len(CLASSES))
        probs[te] = mammo.linear_proba(W, b, X[te])
        chosen.append(C)
    return probs, chosen


# -------------------------------------------------------------------------------------- bundles
def _load(bundle: Any) -> Any:
    from cds.models.bundle import Bundle, load_bundle

    if isinstance(bundle, Bundle):
        return bundle
    return load_bundle(DEFAULT_BUNDLE if bundle is None else bundle)


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          quick: bool = False) -> Path:
    """Fit the density classifier on a mini-MIAS style folder and write a MONAI bundle.

    The penalty ``C`` is chosen by 5-fold cross-validation by woman on all images; the shipped
    model is then fitted on all images. The model card's performance section is the output of
    :func:`evaluate` on the same folder (nested leave-one-woman-out CV). ``quick`` uses the first
    8 women, 3 penalties and 200 bootstrap resamples (for tests; not a model to ship).
    Training is deterministic; ``seed`` is recorded and seeds the bootstrap.
    """
    from cds.models.bundle import save_bundle

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_BUNDLE
    ds = _dataset(root, limit_women=8 if quick else None)
    Cs = (0.03, 0.3, 3.0) if quick else C_GRID
    C, _ = mammo.select_C(ds["X"], ds["y"], ds["women"], Cs, len(CLASSES), INNER_FOLDS)
    W, b = mammo.fit_linear(ds["X"], ds["y"], C, len(CLASSES))
    n_women = len(set(ds["women"]))
    card = _card(root, len(ds["y"]), n_women, C, Cs, quick, seed,
                 {CLASSES[k]: int((ds["y"] == k).sum()) for k in range(len(CLASSES))})
    net_def = {"_target_": "torch.nn.Linear", "in_features": len(FEATURE_NAMES), "out_features": len(CLASSES)}
    out = save_bundle(out_dir, card, net_def, mammo.linear_state_dict(W, b))
    mammo.write_training_images(out, ds["refs"], ds["hashes"])
    res = evaluate(root, out, n_boot=200 if quick else 2000, _dataset_cache=ds)
    write_performance(out, res, PERFORMANCE_KEYS)
    return out


PERFORMANCE_KEYS = ("data", "split", "split_rule", "n_cases", "n_patients", "metrics", "confusion_matrix",
                    "class_counts", "bootstrap", "notes", "evaluation_command")


def _card(data_dir: Path, n: int, n_women: int, C: float, Cs: Any, quick: bool, seed: int,
          counts: dict[str, int]) -> dict[str, Any]:

    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: "first reference model (hand-made features + multinomial logistic regression)"},
        "name": "mammo-density",
        "task": "Mammogram background-tissue (density) class, MIAS F/G/D",
        "description": "Breast region (Otsu-based, labels/film edges removed), pectoral muscle removed (MLO), "
                       "18 intensity/texture features, multinomial logistic regression.",
        **mammo.mias_bundle_provenance(),
        "label_classes": "F (fatty), G (fatty-glandular), D (dense-glandular)",
        "pred_classes": "softmax probabilities for F, G, D",
        "eval_metrics": {},
        "intended_use": "Research and teaching only: a transparent baseline for the cds notebooks.",
        "references": [
            "Suckling J et al. The Mammographic Image Analysis Society Digital Mammogram Database. "
            "Excerpta Medica ICS 1069:375-378, 1994.",
        ],
        "network_data_format": {
            "inputs": {"features": {
                "type": "tabular", "format": "features", "num_channels": len(FEATURE_NAMES),
                "spatial_shape": [len(FEATURE_NAMES)], "dtype": "float32", "value_range": [],
                "is_patch_data": False,
                "channel_def": {str(i): n for i, n in enumerate(FEATURE_NAMES)},
            }},
            "outputs": {"pred": {
                "type": "probabilities", "format": "logits", "num_channels": len(CLASSES),
                "spatial_shape": [len(CLASSES)], "dtype": "float32", "value_range": [],
                "is_patch_data": False, "channel_def": {str(i): c for i, c in enumerate(CLASSES)},
            }},
        },
        "cds": {
            "model_id": MODEL_ID,
            "task": NAME,
            "modality": ["MG"],
            "body_site": "breast",
            "intended_use": (
                "Research/teaching reference: estimate the MIAS background-tissue class of one "
                "digitised-film MLO mammogram, to demonstrate density-aware reporting in cds. "
                "Not for clinical use, not a BI-RADS density assessment, not for screening decisions."),
            "proxy_for": (
                "A stand-in for a breast-density model (e.g. BI-RADS a-d density classifiers such as "
                "the MONAI 'breast_density_classification' bundle). MIAS F/G/D is a 3-level "
                "background-tissue label from 1990s UK film, not BI-RADS; numbers do not transfer."),
            "limitations": [
                f"Trained and evaluated on {n} images of {n_women} women (mini-MIAS subset): "
                "confidence intervals are wide; the model has never met an image from another source.",
                "Digitised film, 200 um pixels, 8-bit, MLO only; full-field digital mammograms, CC views, "
                "other scanners and processing will shift the intensity features.",
                "MIAS labels are one reader's background-tissue impression; both breasts of a woman carry "
                "the same label, so images are not independent (handled by CV and bootstrap by woman).",
                "The feature list was designed after viewing mean feature values per class on these 40 "
                "images; only the penalty and weights are chosen inside the cross-validation.",
                "Images must be bright = dense (cds.images.dicom_image inverts MONOCHROME1 DICOM; raw arrays are not checked).",
            ],
            "inputs": {
                "image": {"modality": "MG", "view": "MLO", "channels": 1, "dtype": "uint8 preferred",
                          "spatial": "any size; reduced to 512 px longest side (mini-MIAS: 1024x1024, 200 um)",
                          "orientation": "any; chest-wall side from ehr['laterality'] (R/L, optional) when "
                                         "given, else found from the image"},
                "ehr": [],
            },
            "outputs": [
                {"code_system": CODE_SYSTEM, "code": c, "display": DISPLAYS[c], "kind": "class-probability"}
                for c in CLASSES
            ],
            "code_system_note": (
                "Local code system for the MIAS 'character of background tissue' (F, G, D) as defined "
                "in the MIAS README; deliberately not mapped to BI-RADS density (a-d) or a LOINC answer "
                "list because the categories are not equivalent."),
            "threshold": 0.5,
            "indeterminate": [0.0, 0.5],
            "operating_point": {"how_chosen": "the Finding is the argmax class; its probability <= 0.5 "
                                              "is reported as indeterminate (fixed rule, not tuned)"},
            "context": [
                "McKinney 2020 (Nature): AI breast-cancer screening AUC 0.966 (UK) / 0.883 (US) on large "
                "screening cohorts; this density model is not comparable (different task, 40 film images).",
                "The full MIAS database has 322 images of 161 women; this baseline sees 40 images of 20.",
            ],
            "features": list(FEATURE_NAMES),
            "hyperparameters": {"C": C, "C_grid": list(Cs), "inner_cv": f"{INNER_FOLDS}-fold by woman",
                                "penalty": "L2", "standardisation": "folded into the Linear weights"},
            "training_data": {
                "name": "mini-MIAS" + (" (quick: first 8 women)" if quick else ""),
                "path": display_path(data_dir), "split": "all images; performance by nested leave-one-woman-out CV",
                "n": n, "n_patients": n_women, "class_counts": counts, "seed": seed,
                "licence": "MIAS licence: research use only; do not rent, lease or sell; cite Suckling 1994.",
                "image_hashes": "configs/training_images.json",
            },
            "performance": {},
        },
    }


# ----------------------------------------------------------------------------------- evaluation
def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             **_private: Any) -> dict[str, Any]:
    """Agreement with the MIAS ``BG`` label on a mini-MIAS style folder (JSON-ready dict).

    Split rule: if every image of the folder is a training image of the bundle (same pixel SHA-256
    as in ``configs/training_images.json``), the predictions are the nested leave-one-woman-out
    cross-validated ones (``split = "cross-validated"``: the shipped model has seen these images).
    Otherwise the shipped model is applied to every image it was not trained on
    (``split = "unseen"``); training images in the folder, if any, are left out and listed under
    ``excluded``. Metrics: accuracy, Cohen's kappa with linear weights, balanced accuracy, with 95 %
    percentile-bootstrap CIs resampling women.
    """
    from cds.evaluation.metrics import bootstrap_ci

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    b = _load(bundle_dir)
    ds = _private.get("_dataset_cache") or _dataset(root)
    seed = int(b.model_card.training_data.get("seed", 0))
    train_hashes = mammo.training_hashes(b)
    seen = np.array([h in train_hashes for h in ds["hashes"]])
    excluded = list(ds["excluded"])
    notes = []
    if seen.all():
        split = "cross-validated"
        Cs = b.model_card.hyperparameters.get("C_grid", C_GRID)
        probs, chosen = _nested_cv(ds["X"], ds["y"], ds["women"], Cs, INNER_FOLDS)
        keep = np.ones(len(ds["y"]), bool)
        notes.append("Every image is a training image: predictions are nested leave-one-woman-out "
                     f"cross-validated (penalty C chosen per fold by {INNER_FOLDS}-fold CV by woman; "
                     f"chosen C per fold: {sorted(set(chosen))}).")
    else:
        split = "unseen"
        W, bb = mammo.bundle_linear(b)
        keep = ~seen
        probs = np.zeros((len(ds["y"]), len(CLASSES)))
        probs[keep] = mammo.linear_proba(W, bb, ds["X"][keep])
        excluded += [{"refnum": r, "reason": "training image of this bundle"}
                     for r, s in zip(ds["refs"], seen, strict=True) if s]
        if seen.any():
            notes.append(f"{int(seen.sum())} training images of this bundle left out.")
    y, women, probs = ds["y"][keep], ds["women"][keep], probs[keep]
    pred = probs.argmax(axis=1)
    refs = [r for r, k in zip(ds["refs"], keep, strict=True) if k]
    metrics = {}
    for name, fn in (("accuracy", _accuracy), ("kappa_linear", lambda a, p: kappa_linear(a, p, len(CLASSES))),
                     ("balanced_accuracy", _balanced_accuracy)):
        m = bootstrap_ci(fn, y, pred, n_boot=n_boot, seed=seed, groups=women)
        metrics[name] = round_metric({"value": m["value"], "ci95": m["ci95"]})
    cm = np.zeros((len(CLASSES), len(CLASSES)), int)
    np.add.at(cm, (y, pred), 1)
    if len(set(women)) < 30:
        notes.append(f"Only {len(set(women))} women: every estimate here is very uncertain.")
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": display_path(root),
        "split": split,
        "split_rule": "cross-validated when every image's pixel SHA-256 is in the bundle's "
                      "configs/training_images.json, else the shipped model on the images not listed there",
        "n_cases": int(len(y)),
        "n_patients": int(len(set(women))),
        "metrics": metrics,
        "confusion_matrix": {"labels": list(CLASSES), "rows": "MIAS BG label", "columns": "model",
                             "counts": cm.tolist()},
        "class_counts": {c: int((y == k).sum()) for k, c in enumerate(CLASSES)},
        "bootstrap": {"n_boot": int(n_boot), "unit": "woman", "seed": seed, "method": "percentile"},
        "notes": notes,
        "excluded": excluded,
        "evaluation_command": f"cds evaluate {NAME} --data {display_path(root)} --json",
        "cases": [{"refnum": r, "woman": str(w), "label": CLASSES[t], "pred": CLASSES[p],
                   "probabilities": {c: round(float(x), 4) for c, x in zip(CLASSES, pr, strict=True)}}
                  for r, w, t, p, pr in zip(refs, women, y, pred, probs, strict=True)],
    }


# ------------------------------------------------------------------------------------ inference
def predict(bundle: Any, image_array: Any, ehr: dict[str, Any] | None = None) -> dict[str, Any]:
    """Density class probabilities for one mammogram.

    Parameters
    ----------
    bundle : Bundle, path or None
        The ``mammo-density`` bundle (None: the one shipped in ``cds/models/bundles``).
    image_array : array-like
        2D grey-scale mammogram (bright = dense).
    ehr : dict, optional
        ``laterality`` ("R"/"L") fixes the chest-wall side; else it is found from the image.
    """
    b = _load(bundle)
    lat = mammo.laterality_from_ehr(ehr)
    region = mammo.segment_breast(image_array, "image_array", chest_wall=mammo.chest_wall_from_laterality(lat))
    x = density_features(region)
    W, bb = mammo.bundle_linear(b)
    if W.shape[1] != x.size:
        raise ModelInputError(str(b.path), f"bundle expects {W.shape[1]} features, this code makes {x.size}")
    p = mammo.linear_proba(W, bb, x[None])[0]
    k = int(np.argmax(p))
    return {
        "task": NAME, "model_id": b.model_id, "model_version": b.version,
        "class": CLASSES[k], "display": DISPLAYS[CLASSES[k]], "probability": float(p[k]),
        "probabilities": {c: float(v) for c, v in zip(CLASSES, p, strict=True)},
        "features": {n: float(v) for n, v in zip(FEATURE_NAMES, x, strict=True)},
        "chest_wall": region.chest_wall, "pectoral_found": bool(region.pectoral.any()),
        "breast_fraction": float(region.breast.mean()),
    }


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str,
                series_uid: str | None = None, instance_uids: Any = (), ehr_inputs: dict[str, Any] | None = None
                ) -> list[Any]:
    """One classification :class:`cds.finding.Finding`: the predicted class, its probability
    against the card's threshold (0.5; <= 0.5 indeterminate), all class probabilities in ``extra``."""
    from cds.finding import Finding

    b = _load(bundle)
    if "class" not in pred or "probabilities" not in pred or pred["class"] not in CLASSES:
        raise ParameterError("pred", "not a mammo-density prediction (needs 'class' and 'probabilities')")
    card = b.model_card
    return [Finding(
        patient_id=patient_id, study_uid=study_uid, code_system=CODE_SYSTEM, code=pred["class"],
        display=DISPLAYS[pred["class"]], model_id=b.model_id, model_version=b.version,
        probability=float(pred["probability"]), threshold=card.threshold,
        indeterminate=card.indeterminate, series_uid=series_uid,
        instance_uids=tuple(instance_uids or ()), ehr_inputs=dict(ehr_inputs or {}),
        explanation=(f"MIAS background tissue {DISPLAYS[pred['class']]} (p={pred['probability']:.2f}); "
                     "features: " + ", ".join(f"{k}={v:.2f}" for k, v in (pred.get("features") or {}).items()
                                              if k in ("dense_fraction_otsu", "p90", "glcm_contrast"))),
        extra={"class_probabilities": pred["probabilities"],
               "chest_wall": pred.get("chest_wall"), "pectoral_found": pred.get("pectoral_found")},
    )]


# ---------------------------------------------------------------------------------------- the task
class MammoDensityTask(TrainableTask):
    """MLO mammogram -> one MIAS background-tissue Finding."""

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
        """``(REFNUM, array)`` of every image with a BG label of F, G or D (the training set: the shipped
        model is fitted on all of them), read by :func:`cds.models.tasks.mammo.read_mammogram`."""
        root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
        rows = mammo.load_labels(root).drop_duplicates("REFNUM")
        for ref in rows.loc[rows["BG"].isin(CLASSES), "REFNUM"]:
            yield str(ref), mammo.read_mammogram(mammo.image_path(root, ref))


TASK = MammoDensityTask()
"""The mammo-density task object listed in :data:`cds.models.task_table.TASKS`."""
