"""``cxr-icu``: first chest radiograph + labs around it -> probability of ICU admission (COVID-19, Hannover).

A **prognostic** model trained on 47 of the 49 patients of ``shared/data/hannover-covid19-cxr``
(``data.csv`` + ``png/<image_id>.png``). With this few patients there is no network to learn:
the image enters as three fixed radiographic opacity features, the labs as values plus
missingness indicators, and a class-balanced L2 logistic regression combines them. The bundle is
still a MONAI bundle: ``network_def`` is a ``torch.nn.Linear`` over the standardised features and
``inference.json["feature_recipe"]`` records every step (zones, lab windows, transforms,
detection-limit clipping, imputation values, means and standard deviations).

Cohort rules (documented in the card):

- the first radiograph per patient is the one with the largest ``admission_offset`` (offsets are
  days from the exam to the event; the file lists each patient's exams in date order, and a tie
  on the same day goes to the first row);
- label = any ``icu_admission_offset`` for the patient; the ICU day relative to the first
  radiograph is ``icu_admission_offset - admission_offset + admission_offset(first)``;
- patients admitted to ICU **before** the day of the first radiograph are excluded (the outcome
  had already happened: label leakage); same-day ICU admissions are kept because the data's day
  resolution cannot order them, and the evaluation reports the later-ICU-only subset separately;
- labs: per lab, the value on the day closest to the radiograph within days -2..0 (no later
  values: they could follow the ICU admission), median of same-day values; ``-inf``/``inf``
  (below/above detection limit) become the lowest/highest finite training value; labs available
  for fewer than 20 % of patients are not used (an outcome-blind rule).

The reported AUROC comes from repeated stratified 5-fold cross-validation by patient (20 repeats,
the whole recipe refitted inside each fold), comparing image-only, labs-only and combined models.

>>> per_distinct_row(lambda z: z.sum(axis=1), np.array([[1.0, 2.0], [1.0, 2.0]])).tolist()
[3.0, 3.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import LOINC, SNOMED
from cds.errors import ModelInputError
from cds.evaluation.metrics import binary_metrics, round_metric
from cds.locations import display_path
from cds.models import BUNDLES_DIR
from cds.models.card_files import monai_metadata, write_performance
from cds.models.networks import sigmoid
from cds.models.task import TrainableTask, image_ref
from cds.models.tasks.common2d import (
    as_bundle,
    check_choice,
    ehr_value,
    findings_from_probability,
    load_comparator,
)
from cds.models.tasks.inputs import (
    DataLayoutError,
    check_image,
    default_data_dir,
    name_hash,
    prepare_image,
    read_gray,
    read_table,
)
from cds.models.training import band_around

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["NAME", "TASK", "LABS", "train", "evaluate", "predict", "to_findings", "load_cohort", "image_features"]

NAME = "cxr-icu"
MODEL_ID = "cxr-icu"
VERSION = "1.0.0"
DATA_SET = "hannover-covid19-cxr"
WINDOW_DAYS = (-2, 0)
MIN_AVAILABILITY = 0.20
C_REG = 0.3
N_SPLITS, N_REPEATS = 5, 20
THRESHOLD = 0.5
LABS = [
    {"name": "crp", "column": "crp", "loinc": "1988-5", "display": "C reactive protein [Mass/volume] in Serum or Plasma",
     "unit": "mg/L", "transform": "log1p"},
    {"name": "ldh", "column": "ldh", "loinc": "2532-0",
     "display": "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "unit": "U/L",
     "transform": "log1p"},
    {"name": "d_dimer", "column": "d-dimer", "loinc": "48065-7",
     "display": "Fibrin D-dimer FEU [Mass/volume] in Platelet poor plasma", "unit": "mg/L", "transform": "log1p"},
    {"name": "lymphocytes", "column": "lymphocytes", "loinc": "731-0",
     "display": "Lymphocytes [#/volume] in Blood by Automated count", "unit": "10*3/uL", "transform": "none"},
    {"name": "neutrophils", "column": "neutrophils", "loinc": "751-8",
     "display": "Neutrophils [#/volume] in Blood by Automated count", "unit": "10*3/uL", "transform": "none"},
    {"name": "pco2", "column": "pco2", "loinc": "11557-6", "display": "Carbon dioxide [Partial pressure] in Blood",
     "unit": "mm[Hg]", "transform": "none"},
    {"name": "po2", "column": "po2", "loinc": "11556-8", "display": "Oxygen [Partial pressure] in Blood",
     "unit": "mm[Hg]", "transform": "none"},
    {"name": "factor_xiii", "column": "factor_xii", "loinc": "27815-0", "display": "Coagulation factor XIII activity",
     "unit": "%", "transform": "none"},
]
IMAGE_SIZE = 256
ZONES = {"rows": [0.20, 0.80], "upper_rows": [0.20, 0.45], "lower_rows": [0.55, 0.80],
         "right_lung_cols": [0.12, 0.45], "left_lung_cols": [0.55, 0.88]}
IMAGE_FEATURES = ["lung_opacity", "basal_minus_apical", "left_right_asymmetry"]
COLUMNS = ["patient_id", "image_id", "admission_offset", "icu_admission_offset", "projection"]


def default_bundle_dir() -> Path:
    """The shipped bundle folder, ``cds/models/bundles/cxr-icu``."""
    return BUNDLES_DIR / MODEL_ID


# ------------------------------------------------------------------------------------------ cohort
def image_features(image: Any, where: str = "image_array") -> np.ndarray:
    """Three fixed opacity features of a frontal chest radiograph (no learned parameters).

    The image is resized to 256x256 and its 1-99 % range scaled to [0, 1]; on fixed boxes over the
    lung fields (fractions of height/width, :data:`ZONES`; image left = patient right):
    ``lung_opacity`` = mean brightness of both lung boxes, ``basal_minus_apical`` = lower minus
    upper zones, ``left_right_asymmetry`` = |right box - left box|.

    >>> f = image_features(np.tile(np.linspace(0, 1, 300), (300, 1)))
    >>> f.shape, round(float(f[1]), 3)
    ((3,), 0.0)
    """
    x = prepare_image(image, IMAGE_SIZE, where=where)

    def box(rows: list[float], cols: list[float]) -> np.ndarray:
        r0, r1 = (int(round(v * IMAGE_SIZE)) for v in rows)
        c0, c1 = (int(round(v * IMAGE_SIZE)) for v in cols)
        return x[r0:r1, c0:c1]

    right, left = box(ZONES["rows"], ZONES["right_lung_cols"]), box(ZONES["rows"], ZONES["left_lung_cols"])
    upper = np.concatenate([box(ZONES["upper_rows"], ZONES[k]).ravel() for k in ("right_lung_cols", "left_lung_cols")])
    lower = np.concatenate([box(ZONES["lower_rows"], ZONES[k]).ravel() for k in ("right_lung_cols", "left_lung_cols")])
    return np.array([(right.mean() + left.mean()) / 2, lower.mean() - upper.mean(), abs(right.mean() - left.mean())],
                    dtype=np.float64)


def _lab_columns(df: Any, path: Path) -> None:
    for lab in LABS:
        for suffix in ("_offset", "_val"):
            col = lab["column"] + suffix
            if col not in df.columns:
                raise DataLayoutError(str(path), f"missing column {col!r} (lab {lab['name']})")


def load_cohort(data_dir: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """One row per patient (first radiograph, label, ICU day, labs in the window) and a summary.

    Returns ``(cohort, info)``; ``cohort`` has ``patient_id``, ``image_id``, ``path``, ``projection``,
    ``icu`` (0/1), ``icu_day`` (relative to the first radiograph), ``excluded`` (reason or ""), and
    one column per lab (NaN = not measured in the window, +-inf = above/below detection limit).
    """
    import pandas as pd

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    if not root.is_dir():
        raise DataLayoutError(str(root), "not a folder (expected data.csv and png/ inside)")
    csv = root / "data.csv"
    df = read_table(csv, COLUMNS, dtype={"patient_id": str, "image_id": str})
    _lab_columns(df, csv)
    if not (root / "png").is_dir():
        raise DataLayoutError(str(root / "png"), "folder not found (images are read from png/<image_id>.png)")
    rows = []
    for pid, g in df.groupby("patient_id", sort=True):
        a = g["admission_offset"].to_numpy(dtype=float)
        first = int(np.flatnonzero(a == np.nanmax(a))[0])
        a0 = a[first]
        icu_days = (g["icu_admission_offset"].to_numpy(dtype=float) - a + a0)
        icu_days = icu_days[np.isfinite(icu_days)]
        icu = int(len(icu_days) > 0)
        icu_day = float(icu_days.min()) if icu else float("nan")
        rec = {"patient_id": str(pid), "image_id": str(g["image_id"].iloc[first]),
               "path": str(root / "png" / f"{g['image_id'].iloc[first]}.png"),
               "projection": str(g["projection"].iloc[first]).lower(), "icu": icu, "icu_day": icu_day,
               "excluded": "icu_before_first_radiograph" if icu and icu_day < 0 else ""}
        for lab in LABS:
            t = g[lab["column"] + "_offset"].to_numpy(dtype=float) - a + a0
            v = g[lab["column"] + "_val"].to_numpy(dtype=float)
            ok = np.isfinite(t) & ~np.isnan(v) & (t >= WINDOW_DAYS[0]) & (t <= WINDOW_DAYS[1])
            if ok.any():
                day = t[ok].max()  # the day closest to the radiograph (window ends at day 0)
                rec[lab["name"]] = float(np.median(v[ok & (t == day)]))
            else:
                rec[lab["name"]] = float("nan")
        rows.append(rec)
    cohort = pd.DataFrame(rows)
    info = {"n_patients_in_folder": int(len(cohort)), "n_icu_in_folder": int(cohort["icu"].sum()),
            # a count, never the patient ids: the card travels in every FHIR output, de-identified ones too
            "excluded": {"icu_before_first_radiograph": int((cohort["excluded"] != "").sum())},
            "icu_day_of_positives": {"same_day": int(((cohort["icu_day"] == 0) & (cohort["excluded"] == "")).sum()),
                                     "later": int((cohort["icu_day"] > 0).sum())}}
    return cohort, info


# ------------------------------------------------------------------------------------ the recipe
def _lab_transform(v: np.ndarray, transform: str) -> np.ndarray:
    return np.log1p(np.maximum(v, 0.0)) if transform == "log1p" else v


def fit_recipe(raw_labs: Any, img: np.ndarray, labs_used: list[str], kind: str) -> dict[str, Any]:
    """Fit clipping bounds, imputation values, means and stds on training rows only.

    ``raw_labs``: DataFrame of lab values (NaN missing, +-inf detection limits); ``img``: (N, 3).
    ``kind``: ``combined``, ``image_only`` or ``labs_only``. Returns the recipe dict stored in
    ``inference.json``.
    """
    labs = []
    if kind in ("combined", "labs_only"):
        for lab in LABS:
            if lab["name"] not in labs_used:
                continue
            v = raw_labs[lab["name"]].to_numpy(dtype=float)
            fin = v[np.isfinite(v)]
            lo, hi = (float(fin.min()), float(fin.max())) if len(fin) else (0.0, 0.0)
            tv = _lab_transform(np.clip(v[~np.isnan(v)], lo, hi), lab["transform"])
            labs.append({"name": lab["name"], "loinc": lab["loinc"], "transform": lab["transform"],
                         "clip": [lo, hi], "impute": float(np.median(tv)) if len(tv) else 0.0})
    rec = {"kind": kind, "image_features": IMAGE_FEATURES if kind in ("combined", "image_only") else [],
           "labs": labs}
    feats = _features(rec, raw_labs, img)
    mean, std = feats.mean(axis=0), feats.std(axis=0)
    rec["feature_names"] = _feature_names(rec)
    rec["mean"] = [float(m) for m in mean]
    rec["std"] = [float(s) if s > 1e-8 else 1.0 for s in std]
    return rec


def _feature_names(rec: dict[str, Any]) -> list[str]:
    names = list(rec["image_features"])
    names += [lab["name"] for lab in rec["labs"]]
    names += [f"{lab['name']}_missing" for lab in rec["labs"]]
    return names


def _features(rec: dict[str, Any], raw_labs: Any, img: np.ndarray) -> np.ndarray:
    cols: list[np.ndarray] = []
    if rec["image_features"]:
        cols += [img[:, i] for i in range(img.shape[1])]
    miss = []
    for lab in rec["labs"]:
        v = raw_labs[lab["name"]].to_numpy(dtype=float)
        m = np.isnan(v)
        t = _lab_transform(np.clip(np.where(m, 0.0, v), *lab["clip"]), lab["transform"])
        cols.append(np.where(m, lab["impute"], t))
        miss.append(m.astype(float))
    cols += miss
    return np.stack(cols, axis=1) if cols else np.zeros((len(img), 0))


def standardized(rec: dict[str, Any], raw_labs: Any, img: np.ndarray) -> np.ndarray:
    """The network input: recipe features minus training mean, over training std."""
    return (_features(rec, raw_labs, img) - np.asarray(rec["mean"])) / np.asarray(rec["std"])


def _fit_lr(z: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C_REG, class_weight="balanced", max_iter=5000).fit(z, y)


def _fit_predict(kind: str, tr_labs: Any, tr_img: np.ndarray, y: np.ndarray, te_labs: Any, te_img: np.ndarray,
                 labs_used: list[str]) -> np.ndarray:
    rec = fit_recipe(tr_labs, tr_img, labs_used, kind)
    lr = _fit_lr(standardized(rec, tr_labs, tr_img), y)
    return per_distinct_row(lambda z: lr.predict_proba(z)[:, 1], standardized(rec, te_labs, te_img))


def per_distinct_row(score: Any, z: np.ndarray) -> np.ndarray:
    """``score(z)`` computed once per distinct row of ``z``, so patients with the same inputs get
    bit-identical scores (a tie). Scoring every row lets BLAS round identical rows differently
    (by CPU kernel and row position), which breaks ties arbitrarily and makes AUROCs machine-dependent.

    >>> z = np.array([[1.0, 2.0], [0.5, 0.5], [1.0, 2.0]])
    >>> per_distinct_row(lambda a: a @ np.array([0.1, 0.2]), z).tolist()
    [0.5, 0.15000000000000002, 0.5]
    """
    rows, inverse = np.unique(np.asarray(z), axis=0, return_inverse=True)
    return np.asarray(score(rows)).reshape(-1)[inverse.reshape(-1)]


KINDS = ("combined", "image_only", "labs_only")


def cross_validate(cohort: Any, img: np.ndarray, labs_used: list[str], seed: int = 0,
                   n_repeats: int = N_REPEATS) -> dict[str, Any]:
    """Repeated stratified 5-fold CV by patient; out-of-fold probabilities averaged over repeats."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    from cds.evaluation.metrics import auroc

    y = cohort["icu"].to_numpy()
    rskf = RepeatedStratifiedKFold(n_splits=N_SPLITS, n_repeats=n_repeats, random_state=seed)
    sums = {k: np.zeros(len(y)) for k in KINDS}
    per_repeat = {k: [] for k in KINDS}
    oof = {k: np.zeros(len(y)) for k in KINDS}
    for i, (tr, te) in enumerate(rskf.split(np.zeros(len(y)), y)):
        for k in KINDS:
            oof[k][te] = _fit_predict(k, cohort.iloc[tr], img[tr], y[tr], cohort.iloc[te], img[te], labs_used)
        if (i + 1) % N_SPLITS == 0:
            for k in KINDS:
                sums[k] += oof[k]
                per_repeat[k].append(auroc(y, oof[k]))
    return {k: {"p": sums[k] / n_repeats, "auroc_per_repeat": per_repeat[k]} for k in KINDS}


# -------------------------------------------------------------------------------------- training
def _linear_state(lr: Any) -> dict[str, Any]:
    import torch

    return {"weight": torch.tensor(lr.coef_, dtype=torch.float32),
            "bias": torch.tensor(lr.intercept_, dtype=torch.float32)}


def _image_matrix(cohort: Any) -> np.ndarray:
    if len(cohort) == 0:
        return np.zeros((0, len(IMAGE_FEATURES)))
    return np.stack([image_features(read_gray(p), where=p) for p in cohort["path"]])


def _card(root: Path, info: dict[str, Any], cohort: Any, labs_used: list[str], availability: dict[str, float],
          band: list[float], coefs: dict[str, float], quick: bool) -> dict[str, Any]:
    ehr = [{"name": lab["name"], "source": f"observation:{lab['loinc']}", "code_system": LOINC, "code": lab["loinc"],
            "display": lab["display"], "unit": lab["unit"], "window_days": list(WINDOW_DAYS),
            "window_reference": "date of the radiograph (day resolution)",
            "selection": "value on the day closest to the radiograph within the window (median of that day)",
            "required": False,
            "missing": "pass None when not measured in the window: imputed with the training median and flagged "
                       "by a missingness indicator; +-inf (or '<x' / '>x') = below/above detection limit"}
           for lab in LABS if lab["name"] in labs_used]
    n, n_pos = int(len(cohort)), int(cohort["icu"].sum())
    cds = {
        "model_id": MODEL_ID,
        "task": NAME,
        "modality": ["CR", "DX"],
        "body_site": "chest",
        "prognostic": True,
        "intended_use": ("Research demonstration of imaging + EHR fusion: estimates, at a COVID-19 patient's first "
                         "chest radiograph, the probability of (subsequent or same-day) ICU admission from simple "
                         "radiographic opacity features and the labs drawn on that day or the two days before. Not for "
                         "clinical use, triage or resource allocation."),
        "proxy_for": "ICU admission during the hospital stay (a care decision, not a disease state).",
        "limitations": [
            f"Trained on {n} patients ({n_pos} ICU) from one German university hospital (2020-2021): "
            "estimates are very uncertain and will not transfer without local validation.",
            f"{info['icu_day_of_positives']['same_day']} of {n_pos} ICU patients were admitted to ICU on the day "
            "of their first radiograph; at day resolution the image may have been taken on the ICU. The model "
            "then partly recognises ICU care (bedside AP films, lines, monitoring leads, arterial blood gases) "
            "rather than predicting deterioration. See comparisons.later_icu_only and "
            "comparisons.projection_ap_only in the performance section.",
            f"Patients admitted to ICU before the day of their first radiograph ({info['excluded']['icu_before_first_radiograph']}) "
            "were excluded (label leakage); the model says nothing about them.",
            "Image features are fixed boxes over the lung fields (no segmentation) and depend on exposure, "
            "projection (AP vs PA) and post-processing.",
            "pCO2/pO2 may be venous or arterial in the source data (not recorded); the LOINC codes without a "
            "sample type (11557-6 pCO2, 11556-8 pO2 in blood) are used for lookup. The presence of a blood gas itself signals the care setting.",
            "Labs with < 20 % availability were not used (outcome-blind rule): "
            + ", ".join(f"{k} ({v:.0%})" for k, v in availability.items() if k not in labs_used) + ".",
            "Age, weight and comorbidities are redacted in the source and are not inputs.",
        ],
        "inputs": {
            "image": {"kind": "first frontal chest radiograph of the admission (AP or PA)", "channels": 1,
                      "features": IMAGE_FEATURES,
                      "preprocessing": "grey; resize to 256x256; 1-99 percentile range scaled to [0, 1]; fixed "
                                       f"lung-field boxes {ZONES}"},
            "ehr": ehr,
        },
        "outputs": [{"code_system": SNOMED, "code": "305351004", "display": "Admission to intensive care unit",
                     "kind": "probability"}],
        "threshold": THRESHOLD,
        "indeterminate": band,
        "operating_point": {
            "how_chosen": ("threshold 0.5 fixed a priori (class-balanced logistic regression, no data left to tune "
                           "it on); indeterminate band = the cross-validated out-of-fold score ranks 5 % either "
                           "side of 0.5. Sensitivity/specificity at 0.5 are out-of-fold."),
            "data": "out-of-fold predictions of the repeated cross-validation",
        },
        "explanation": "per-feature contributions (coefficient x standardised value) of the logistic model",
        "training_data": {
            "name": "Hannover Medical School COVID-19 CXR repository (CC BY 3.0, doi 10.6084/m9.figshare.12275009)",
            "path": display_path(root),
            "n": n,
            "n_positive": n_pos,
            "cohort": ("first radiograph per patient; label = any ICU admission; patients with ICU admission before "
                       "the first radiograph's day excluded"),
            "excluded": info["excluded"],
            "icu_day_of_positives": info["icu_day_of_positives"],
            "lab_availability": availability,
            "split": f"shipped model fitted on all {n} eligible patients; performance from repeated stratified "
                     f"{N_SPLITS}-fold cross-validation by patient ({N_REPEATS} repeats)",
            "model": f"L2 logistic regression (C={C_REG}, class_weight=balanced) on standardised features",
            "coefficients": coefs,
            "manifest": "configs/training_manifest.json (sha256[:16] of patient ids)",
            "training_command": f"cds train cxr-icu --data {display_path(root)} --out cds/models/bundles/cxr-icu"
                                + (" --quick" if quick else ""),
        },
        "weights": "model.pt",
        "context": ["Published CXR+lab COVID-19 ICU/severity models report AUROCs around 0.75-0.90 on hundreds to "
                    "thousands of patients; with 47 patients this model is a pipeline demonstration, not a "
                    "competitor."],
    }
    nf = len(coefs)
    return monai_metadata(
        version=VERSION, name="cxr-icu (Hannover COVID-19: first CXR + labs -> ICU admission)",
        task="binary classification (prognostic)", cds=cds,
        description="Logistic model (torch.nn.Linear) over 3 radiographic opacity features and lab values with "
                    "missingness indicators, giving the probability of ICU admission.",
        inputs={"features": {"type": "tabular", "format": "features", "num_channels": nf, "spatial_shape": [nf],
                             "dtype": "float32", "value_range": [-10, 10], "is_patch_data": False,
                             "channel_def": {str(i): k for i, k in enumerate(coefs)}}},
        outputs={"pred": {"type": "probabilities", "format": "classes", "num_channels": 1, "spatial_shape": [1],
                          "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                          "channel_def": {"0": "logit of ICU admission (apply sigmoid)"}}},
        data_source="Hannover Medical School COVID-19 image repository (GitHub ml-workgroup/covid-19-image-"
                    "repository, CC BY 3.0)",
        data_type="png + csv",
        references=["Winther H.B. et al. COVID-19 image repository. figshare, doi 10.6084/m9.figshare.12275009"],
        changelog={VERSION: "first release"},
    )


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          epochs: int = 0, quick: bool = False) -> Path:
    """Fit the combined, image-only and labs-only models on every eligible patient; write the bundle.

    ``epochs`` is accepted for a uniform interface and unused (logistic models). The card's
    performance section is filled by :func:`evaluate` (cross-validation). ``quick=True`` uses 2
    CV repeats and 200 bootstrap resamples.
    """
    import torch

    from cds.models.bundle import save_bundle

    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    out = Path(out_dir) if out_dir is not None else default_bundle_dir()
    cohort_all, info = load_cohort(root)
    cohort = cohort_all[cohort_all["excluded"] == ""].reset_index(drop=True)
    y = cohort["icu"].to_numpy()
    if y.sum() < 2 or (1 - y).sum() < 2:
        raise DataLayoutError(str(root / "data.csv"), "need at least 2 ICU and 2 non-ICU eligible patients")
    availability = {lab["name"]: round(float(cohort[lab["name"]].notna().mean()), 3) for lab in LABS}
    labs_used = [k for k, v in availability.items() if v >= MIN_AVAILABILITY]
    img = _image_matrix(cohort)
    recipes, states = {}, {}
    for kind in KINDS:
        rec = fit_recipe(cohort, img, labs_used, kind)
        lr = _fit_lr(standardized(rec, cohort, img), y)
        recipes[kind], states[kind] = rec, _linear_state(lr)
    cv = cross_validate(cohort, img, labs_used, seed, n_repeats=2 if quick else N_REPEATS)
    band = band_around(cv["combined"]["p"], THRESHOLD, 0.05)
    names = recipes["combined"]["feature_names"]
    coefs = {k: round(float(w), 4) for k, w in zip(names, states["combined"]["weight"][0].tolist(), strict=True)}
    meta = _card(root, info, cohort, labs_used, availability, band, coefs, quick)

    def lin(n: int) -> dict[str, Any]:
        return {"_target_": "torch.nn.Linear", "in_features": n, "out_features": 1}

    extra = {
        "feature_recipe": {**recipes["combined"], "image": {"size": IMAGE_SIZE, "zones": ZONES},
                           "window_days": list(WINDOW_DAYS)},
        "comparators": {k: {"network_def": lin(len(recipes[k]["feature_names"])), "weights": f"{k}.pt",
                            "feature_recipe": recipes[k]} for k in ("image_only", "labs_only")},
        "cv": {"n_splits": N_SPLITS, "n_repeats": 2 if quick else N_REPEATS, "seed": seed},
    }
    save_bundle(out, meta, lin(len(names)), states["combined"], inference_extra=extra)
    for k in ("image_only", "labs_only"):
        torch.save(states[k], out / "models" / f"{k}.pt")
    manifest = {"hash": "sha256(patient_id)[:16]", "patients": sorted(name_hash(p) for p in cohort_all["patient_id"])}
    (out / "configs" / "training_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    result = evaluate(root, out, n_boot=200 if quick else 2000)
    write_performance(out, result)
    return out


# ------------------------------------------------------------------------------------ evaluation
def _predict_recipe(net: Any, rec: dict[str, Any], labs: Any, img: np.ndarray) -> np.ndarray:
    import torch

    def score(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return sigmoid(net(torch.from_numpy(z))[:, 0].numpy())

    return per_distinct_row(score, standardized(rec, labs, img).astype(np.float32))


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             split: str = "auto", seed: int = 0) -> dict[str, Any]:
    """AUROC (and sensitivity/specificity/accuracy at 0.5) with 95 % CIs for combined, image-only, labs-only.

    ``split``: ``"auto"`` = ``"cv"`` when the folder's patients overlap the training manifest,
    else ``"all"``; ``"cv"`` = repeated stratified 5-fold cross-validation of the bundle's recipe
    on the folder (out-of-fold probabilities averaged over repeats; bootstrap over patients);
    ``"all"`` = the shipped models on every eligible patient (an external check).
    """
    check_choice(split, ("auto", "cv", "all"), "split")
    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    b = as_bundle(bundle_dir if bundle_dir is not None else default_bundle_dir())
    cohort_all, info = load_cohort(root)
    cohort = cohort_all[cohort_all["excluded"] == ""].reset_index(drop=True)
    man_p = b.path / "configs" / "training_manifest.json"
    seen = set(json.loads(man_p.read_text())["patients"]) if man_p.is_file() else set()
    overlap = bool(cohort_all["patient_id"].map(lambda p: name_hash(p) in seen).any())
    used = ("cv" if overlap else "all") if split == "auto" else split
    y = cohort["icu"].to_numpy()
    img = _image_matrix(cohort)
    recipe = b.inference["feature_recipe"]
    labs_used = [lab["name"] for lab in recipe["labs"]]
    notes = []
    extra_cv: dict[str, Any] = {}
    if used == "cv":
        cvs = b.inference.get("cv", {})
        cv = cross_validate(cohort, img, labs_used, cvs.get("seed", seed), cvs.get("n_repeats", N_REPEATS))
        probs = {k: cv[k]["p"] for k in KINDS}
        for k in KINDS:
            r = np.asarray(cv[k]["auroc_per_repeat"], dtype=float)
            extra_cv[k] = round_metric({"mean": float(np.nanmean(r)), "min": float(np.nanmin(r)),
                                        "max": float(np.nanmax(r))})
        notes.append("Cross-validated: each patient's probability comes from models that did not see them "
                     "(recipe refitted in every fold); the CI covers patient sampling, not refitting variance "
                     "(see auroc_per_repeat).")
    else:
        probs = {"combined": _predict_recipe(b.network(), recipe, cohort, img)}
        for k in ("image_only", "labs_only"):
            spec = b.inference["comparators"][k]
            probs[k] = _predict_recipe(load_comparator(b, k), spec["feature_recipe"], cohort, img)
        if overlap:
            notes.append("The folder includes training patients: 'all' numbers are optimistic.")
    thr = b.model_card.threshold if b.model_card.threshold is not None else THRESHOLD
    metrics = binary_metrics(y, probs["combined"], thr, None, n_boot=n_boot)
    comparisons: dict[str, Any] = {}
    for k in ("image_only", "labs_only"):
        comparisons[k] = {"metrics": binary_metrics(y, probs[k], thr, None, n_boot=n_boot)}
    later = (y == 0) | (cohort["icu_day"].to_numpy() > 0)
    comparisons["later_icu_only"] = {
        "description": "combined model; positives restricted to ICU admission after the radiograph's day",
        "n_positive": int(y[later].sum()),
        "metrics": {"auroc": binary_metrics(y[later], probs["combined"][later], None, None, n_boot=n_boot)["auroc"]}}
    ap = (cohort["projection"] == "ap").to_numpy().astype(float)
    comparisons["projection_ap_only"] = {
        "description": "acquisition confound check: score = 1 for an AP (bedside) first radiograph, else 0",
        "metrics": {"auroc": binary_metrics(y, ap, None, None, n_boot=n_boot)["auroc"]}}
    if extra_cv:
        comparisons["auroc_per_repeat"] = extra_cv
    if y.sum() < 10:
        notes.append(f"Only {int(y.sum())} ICU patients: every estimate is very uncertain.")
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": display_path(root),
        "split": used,
        "split_rule": ("auto: repeated cross-validation when the folder overlaps the training patients, else the "
                       "shipped model on all eligible patients" if split == "auto" else f"{used} (asked)"),
        "n_cases": int(len(cohort)),
        "n_patients": int(len(cohort)),
        "n_positive": int(y.sum()),
        "excluded": info["excluded"],
        "threshold": thr,
        "indeterminate": list(b.model_card.indeterminate) if b.model_card.indeterminate else None,
        "metrics": metrics,
        "comparisons": comparisons,
        "bootstrap": {"n_boot": n_boot, "unit": "patient", "seed": 0, "method": "percentile"},
        "notes": notes,
        "evaluation_command": f"cds evaluate cxr-icu --data {display_path(root)} --json",
    }


# ------------------------------------------------------------------------------------ one case
def _lab_input(value: Any, name: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("<"):
            return float("-inf")
        if s.startswith(">"):
            return float("inf")
        value = s
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelInputError(name, f"lab value must be a number, None, or '<x'/'>x', got {value!r}") from None
    return v


def predict(bundle: Any, image_array: Any, ehr: dict[str, Any] | None) -> dict[str, Any]:
    """Probability of ICU admission for ONE patient's first radiograph plus labs.

    ``ehr`` must hold every lab the card declares, by name (``crp``) or source
    (``observation:1988-5``); ``None`` means "not measured within days -2..0" and is handled by
    imputation + missingness indicator. A lab key that is absent raises
    :class:`cds.errors.ModelInputError` naming it (so a forgotten lookup is never silently imputed).
    Returns ``{"probability", "logit", "threshold", "indeterminate", "image_features",
    "contributions", "gradcam": None, "ehr_used"}``.
    """
    import pandas as pd

    b = as_bundle(bundle)
    recipe = b.inference["feature_recipe"]
    specs = b.model_card.ehr_inputs
    used = {s["name"]: ehr_value(ehr, s) for s in specs}
    labs = pd.DataFrame([{k: _lab_input(v, k) for k, v in used.items()}])
    raw = check_image(image_array, min_side=32)
    img = image_features(raw)[None]
    z = standardized(recipe, labs, img)[0]
    net = b.network()
    w = net.weight.detach().cpu().numpy()[0].astype(float)
    logit = float(z @ w + float(net.bias.detach().cpu().numpy()[0]))
    contrib = {n: round(float(c), 4) for n, c in zip(recipe["feature_names"], z * w, strict=True)}
    return {"probability": float(sigmoid(np.array([logit]))[0]), "logit": logit,
            "threshold": b.model_card.threshold, "indeterminate": b.model_card.indeterminate,
            "image_features": dict(zip(IMAGE_FEATURES, (round(float(v), 4) for v in img[0]), strict=True)),
            "contributions": contrib, "gradcam": None, "ehr_used": used}


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str, series_uid: str | None = None,
                instance_uids: tuple[str, ...] | list[str] = (), ehr_inputs: dict[str, Any] | None = None) -> list[Any]:
    """:class:`cds.finding.Finding` records (one, prognostic: SNOMED 305351004) for a :func:`predict` result."""
    top = sorted(pred.get("contributions", {}).items(), key=lambda kv: -abs(kv[1]))[:3]
    n = as_bundle(bundle).model_card.training_data.get("n", "?")
    expl = (f"Prognostic logistic model ({n} patients, cross-validated); largest contributions: "
            + ", ".join(f"{k} {v:+.2f}" for k, v in top)) if top else None
    return findings_from_probability(
        bundle, pred["probability"], patient_id, study_uid, series_uid, instance_uids,
        ehr_inputs if ehr_inputs is not None else pred.get("ehr_used"), explanation=expl,
        extra={"contributions": pred.get("contributions", {}), "image_features": pred.get("image_features", {})})


# ---------------------------------------------------------------------------------------- the task
class IcuAdmissionTask(TrainableTask):
    """First CXR + labs -> one prognostic ICU-admission Finding."""

    name = NAME
    evaluate_options = ("split", "seed")

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on ``image.array`` then :func:`to_findings` with the image's identity."""
        ref = image_ref(image)
        return to_findings(bundle, predict(bundle, image.array, ehr), ref.patient_id, ref.study_uid,
                           ref.series_uid, ref.instance_uids, ehr)

    def prepare(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> dict[str, Any]:
        """All of :func:`predict` (image features, labs, the linear score): it is CPU work on one image,
        done in the decode workers; :meth:`predict_batch` only makes the Findings."""
        ref = image_ref(image)
        return {"pred": predict(bundle, image.array, ehr), "ehr": ehr,
                "ref": (ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids)}

    def predict_batch(self, bundle: Bundle, prepared: list[Any]) -> list[list[Finding]]:
        """The Findings of each :meth:`prepare` result (the per-image score needs no batch)."""
        return [to_findings(bundle, p["pred"], *p["ref"], p["ehr"]) for p in prepared]

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (options: split, seed)."""
        return evaluate(data_dir, bundle_dir, n_boot=n_boot, **self.check_options(options))

    def training_images(self, data_dir: str | Path | None) -> Iterator[tuple[str, np.ndarray]]:
        """``(image id, grey array)`` of the first radiograph of every eligible patient (:func:`load_cohort`,
        the images the shipped model was fitted on), read as training reads them; never the excluded
        patients or the later radiographs."""
        cohort, _ = load_cohort(data_dir)
        eligible = cohort[cohort["excluded"] == ""]
        for image_id, path in zip(eligible["image_id"], eligible["path"], strict=True):
            yield str(image_id), read_gray(path)


TASK = IcuAdmissionTask()
"""The cxr-icu task object listed in :data:`cds.models.task_table.TASKS`."""
