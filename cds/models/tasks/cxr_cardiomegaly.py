"""``cxr-cardiomegaly``: chest radiograph + age + sex -> probability of cardiomegaly (NIH CXR14 thumbnails).

This is the trainable **proxy** for Bhave et al. 2024 (chest X-ray -> echo-confirmed severe left
ventricular hypertrophy / dilated left ventricle): the labels are NIH ChestX-ray14's NLP-mined
"Cardiomegaly" on 64x64 thumbnails, not echocardiography.

Data layout (``shared/data/nih-cxr14-thumbs64``): ``labels.csv`` with columns ``image``,
``Patient ID``, ``Patient Age``, ``Patient Gender``, ``View Position``, ``Cardiomegaly``, and
``png/<image>``. Patients are split 50/20/30 % into train/val/test by hashing the patient id
within strata of patients with and without cardiomegaly (:func:`cds.models.tasks.inputs.stratified_hash_split`);
the tutorial's ``kcr_split`` column is ignored (it is not patient-disjoint).

The bundle stores the hashes of the training and validation image names and patient ids
(``configs/training_manifest.json``). ``evaluate(split="auto")`` scores the held-out test patients
when the folder overlaps that manifest, and every image of the folder when it does not (a folder
the model has never seen).

Commands::

    cds train cxr-cardiomegaly --data ../shared/data/nih-cxr14-thumbs64 --out cds/models/bundles/cxr-cardiomegaly
    cds evaluate cxr-cardiomegaly --data ../shared/data/nih-cxr14-thumbs64 --json

>>> from cds.models.tasks import cxr_cardiomegaly
>>> cxr_cardiomegaly.tabular_inputs(60, "female").tolist()
[0.0, -1.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import SNOMED
from cds.errors import ModelInputError
from cds.evaluation.metrics import binary_metrics
from cds.locations import display_path
from cds.models import BUNDLES_DIR
from cds.models.card_files import monai_metadata, write_performance
from cds.models.explain import gradcam_map
from cds.models.networks import predict_logits, sigmoid
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
    default_data_dir,
    name_hash,
    prepare_image,
    read_gray,
    read_table,
    stratified_hash_split,
)
from cds.models.training import band_around

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["NAME", "TASK", "train", "evaluate", "predict", "to_findings", "load_labels", "tabular_inputs"]

NAME = "cxr-cardiomegaly"
MODEL_ID = "cxr-cardiomegaly"
VERSION = "1.0.0"
DATA_SET = "nih-cxr14-thumbs64"
IMAGE_SIZE = 64
EPOCHS = 30
SPEC_TARGET = 0.73
FRACTIONS = (0.5, 0.2, 0.3)
SALT = "cxr-cardiomegaly-v1"
AGE_CENTER, AGE_SCALE = 60.0, 15.0
COLUMNS = ("image", "Patient ID", "Patient Age", "Patient Gender", "View Position", "Cardiomegaly")
EHR_INPUTS = [
    {"name": "age", "source": "patient.age_years", "unit": "a",
     "description": "age in years on the day of the radiograph"},
    {"name": "sex", "source": "patient.sex", "values": ["male", "female"],
     "description": "administrative sex (FHIR Patient.gender male/female; M/F accepted)"},
]
NETWORK = {"_target_": "cds.models.networks.tabular_cnn2d", "in_channels": 1, "n_tabular": 2, "width": 8,
           "n_stages": 4, "dropout": 0.2}


def default_bundle_dir() -> Path:
    """The shipped bundle folder, ``cds/models/bundles/cxr-cardiomegaly``."""
    return BUNDLES_DIR / MODEL_ID


def tabular_inputs(age: Any, sex: Any) -> np.ndarray:
    """The network's tabular vector: ``[(age - 60) / 15, +1 male / -1 female]``.

    Raises :class:`cds.errors.ModelInputError` naming ``age`` or ``sex`` for unusable values.

    >>> tabular_inputs(75, "M").tolist()
    [1.0, 1.0]
    """
    try:
        a = float(age)
    except (TypeError, ValueError):
        raise ModelInputError("age", f"age must be a number of years, got {age!r}") from None
    if not (0.0 <= a <= 120.0):
        raise ModelInputError("age", f"age {a} years is outside 0-120")
    s = str(sex).strip().lower() if sex is not None else ""
    if s in ("m", "male"):
        sx = 1.0
    elif s in ("f", "female"):
        sx = -1.0
    else:
        raise ModelInputError("sex", f"sex must be male/female (M/F) for this model, got {sex!r}")
    return np.array([(a - AGE_CENTER) / AGE_SCALE, sx], dtype=np.float32)


def load_labels(data_dir: str | Path | None) -> Any:
    """``labels.csv`` of a folder laid out like ``nih-cxr14-thumbs64`` (checked), with a ``path`` column."""
    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    if not root.is_dir():
        raise DataLayoutError(str(root), "not a folder (expected labels.csv and png/ inside)")
    df = read_table(root / "labels.csv", COLUMNS, dtype={"image": str, "Patient ID": str})
    png = root / "png"
    if not png.is_dir():
        raise DataLayoutError(str(png), "folder not found (images are read from png/<image>)")
    df = df.copy()
    df["path"] = [str(png / n) for n in df["image"]]
    df["Cardiomegaly"] = df["Cardiomegaly"].astype(int)
    if not set(df["Cardiomegaly"].unique()) <= {0, 1}:
        raise DataLayoutError(str(root / "labels.csv"), "column 'Cardiomegaly' must hold 0/1")
    return df.reset_index(drop=True)


def _images(df: Any) -> np.ndarray:
    if len(df) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return np.stack([prepare_image(read_gray(p), IMAGE_SIZE, where=p) for p in df["path"]])


def _tabular(df: Any) -> np.ndarray:
    rows = []
    for i, (age, sex) in enumerate(zip(df["Patient Age"], df["Patient Gender"], strict=True)):
        try:
            rows.append(tabular_inputs(age, sex))
        except ModelInputError as exc:
            raise DataLayoutError(f"labels.csv row {i + 2} ({df['image'].iloc[i]})", str(exc)) from None
    return np.stack(rows) if rows else np.zeros((0, 2), np.float32)


def split_patients(df: Any) -> Any:
    """The train/val/test label of each row (patient-level, stratified by patient cardiomegaly, hashed)."""
    pat_label = df.groupby("Patient ID")["Cardiomegaly"].max().to_dict()
    assign = stratified_hash_split(list(pat_label), pat_label, FRACTIONS, SALT)
    return df["Patient ID"].map(assign)


def _card(root: Path, df: Any, split: Any, threshold: float, band: list[float], epochs: int, seed: int,
          quick: bool, age_sex_coef: list[float]) -> dict[str, Any]:
    counts = {s: {"images": int((split == s).sum()), "patients": int(df.loc[split == s, "Patient ID"].nunique()),
                  "positive_images": int(df.loc[split == s, "Cardiomegaly"].sum()),
                  "positive_patients": int(df.loc[(split == s) & (df["Cardiomegaly"] == 1), "Patient ID"].nunique())}
              for s in ("train", "val", "test")}
    cds = {
        "model_id": MODEL_ID,
        "task": NAME,
        "modality": ["CR", "DX"],
        "body_site": "chest",
        "intended_use": ("Research demonstration: ranks adult frontal chest radiographs by the probability that "
                         "a radiology report would mention cardiomegaly, as a stand-in for the Bhave 2024 "
                         "task of flagging left-ventricular hypertrophy or dilatation for echocardiography. "
                         "Not for clinical use."),
        "proxy_for": ("Echocardiography-confirmed severe left ventricular hypertrophy or dilated left ventricle "
                      "(Bhave et al. 2024). This model is a PROXY: its labels are NLP-mined 'Cardiomegaly' "
                      "mentions in NIH ChestX-ray14 reports (about 90 % accurate) on 64x64-pixel thumbnails, "
                      "not echo-confirmed LV hypertrophy."),
        "limitations": [
            "Proxy labels (NLP-mined from reports), not echocardiography; cardiomegaly on a radiograph is a "
            "different and weaker target than LV hypertrophy.",
            "64x64-pixel thumbnails, far below diagnostic resolution.",
            f"Tiny data: {int(df['Cardiomegaly'].sum())} positive images from "
            f"{int(df.loc[df['Cardiomegaly'] == 1, 'Patient ID'].nunique())} patients in the whole folder "
            f"(test split: {counts['test']['positive_images']} positive images, "
            f"{counts['test']['positive_patients']} patients); two patients contribute 35 of the positive "
            "images. Confidence intervals are wide and the operating point is unstable.",
            "AP (bedside) films magnify the heart; view position is not an input and is a known confounder.",
            "Single source (NIH Clinical Center, 1992-2015); one hospital's population and equipment.",
            "Age and sex enter as inputs: scores of very young or very old patients extrapolate.",
        ],
        "inputs": {
            "image": {"kind": "frontal chest radiograph (PA or AP)", "channels": 1,
                      "spatial_shape": [IMAGE_SIZE, IMAGE_SIZE],
                      "preprocessing": "grey; bilinear resize to 64x64 (anti-aliased); 1-99 percentile range "
                                       "scaled to [0, 1] (cds.models.tasks.inputs.prepare_image)"},
            "ehr": EHR_INPUTS,
            "tabular_encoding": f"[(age - {AGE_CENTER:g}) / {AGE_SCALE:g}, +1 male / -1 female] (fixed, not fitted)",
        },
        "outputs": [{"code_system": SNOMED, "code": "8186001", "display": "Cardiomegaly", "kind": "probability"}],
        "threshold": threshold,
        "indeterminate": band,
        "operating_point": {
            "how_chosen": (f"threshold = the score giving {SPEC_TARGET:.0%} specificity (Bhave 2024's operating "
                           f"point) on the validation patients ({counts['val']['images']} images, "
                           f"{counts['val']['positive_images']} positive); indeterminate band = validation-score "
                           "ranks 5 % either side. The test patients were not used."),
            "data": "validation split",
            "specificity_target": SPEC_TARGET,
        },
        "prognostic": False,
        "explanation": "GradCAM (monai.visualize.GradCAM) on the last convolution stage",
        "training_data": {
            "name": "NIH ChestX-ray14 (Wang 2017; 2020 label revision), 64x64 thumbnails from the KCR 2019 tutorial",
            "path": display_path(root),
            "split": (f"patient-level {FRACTIONS[0]:.0%}/{FRACTIONS[1]:.0%}/{FRACTIONS[2]:.0%} train/val/test, "
                      f"ordered by sha256('{SALT}:<Patient ID>') within patients with / without cardiomegaly; "
                      "kcr_split ignored"),
            "counts": counts,
            "n": int(len(df)),
            "manifest": "configs/training_manifest.json (sha256[:16] of train+val image names and patient ids)",
            "training_command": f"cds train cxr-cardiomegaly --data {display_path(root)} --out cds/models/bundles/"
                                "cxr-cardiomegaly" + (" --quick" if quick else ""),
            "seed": seed,
            "epochs": epochs,
            "recipe": ("AdamW lr 2e-3, weight decay 1e-4, batch 32, cosine schedule; BCE with positive-class "
                       "weight n_neg/n_pos; shifts <= 4 px and gamma jitter (no flips: the heart is on the left); "
                       "deterministic torch kernels, 1 CPU thread"),
            "comparators": {"image_only": "same CNN without age/sex, same recipe (models/image_only.pt)",
                            "age_sex_only": f"logistic regression on the tabular vector, coef {age_sex_coef} "
                                            "(models/age_sex_only.pt)"},
        },
        "weights": "model.pt",
        "context": [
            "Bhave et al. 2024 (CXR 224 px + age + sex -> echo-confirmed severe LVH / dilated LV, n > 100k): "
            "AUROC 0.79 / 0.80 / 0.80 (composite); sensitivity 71 % vs radiologists' 66 % at 73 % specificity. "
            "Different labels, resolution and data size: not directly comparable.",
            "TorchXRayVision densenet121-res224-all: NIH cardiomegaly AUROC 0.88 (224 px, tens of thousands of "
            "training images, image-level split); an upper reference for this label at full data.",
        ],
    }
    return monai_metadata(
        version=VERSION, name="cxr-cardiomegaly (NIH CXR14 thumbnail proxy for LV abnormality)",
        task="binary classification", cds=cds,
        description="Small CNN (MONAI Convolution blocks) on a 64x64 frontal chest radiograph, fused with age "
                    "and sex, giving the probability of NLP-labelled cardiomegaly.",
        inputs={"image": {"type": "image", "format": "magnitude", "modality": "CR", "num_channels": 1,
                          "spatial_shape": [IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32", "value_range": [0, 1],
                          "is_patch_data": False, "channel_def": {"0": "image"}},
                "tab": {"type": "tabular", "format": "features", "num_channels": 2, "spatial_shape": [2],
                        "dtype": "float32", "value_range": [-5, 5], "is_patch_data": False,
                        "channel_def": {"0": "(age - 60) / 15", "1": "+1 male / -1 female"}}},
        outputs={"pred": {"type": "probabilities", "format": "classes", "num_channels": 1, "spatial_shape": [1],
                          "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                          "channel_def": {"0": "logit of cardiomegaly (apply sigmoid)"}}},
        data_source="NIH ChestX-ray14 (NIH Clinical Center), thumbnails from GitHub dinbe0527/kcr2019d1; labels "
                    "Data_Entry_2017_v2020 (torchxrayvision 1.5.7)",
        data_type="png 64x64",
        references=["Wang X. et al. ChestX-ray8. CVPR 2017",
                    "Bhave S. et al. Deep learning to detect left ventricular structural abnormalities in chest "
                    "X-rays. Eur Heart J 2024",
                    "Cohen J.P. et al. TorchXRayVision. MIDL 2022"],
        changelog={VERSION: "first release"},
    )


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          epochs: int = EPOCHS, quick: bool = False, threads: int = 1) -> Path:
    """Train the image+age+sex CNN (plus image-only and age+sex-only comparators) into a bundle.

    The threshold is set on the validation patients; the card's performance section is filled by
    :func:`evaluate` on the test patients. ``quick=True``: 1 epoch, a narrow network, 200 resamples.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from cds.evaluation.metrics import threshold_at_specificity
    from cds.models.bundle import save_bundle
    from cds.models.networks import tabular_cnn2d
    from cds.models.training import deterministic, train_network

    df = load_labels(data_dir)
    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    out = Path(out_dir) if out_dir is not None else default_bundle_dir()
    split = split_patients(df)
    tr, va = (split == "train").to_numpy(), (split == "val").to_numpy()
    y = df["Cardiomegaly"].to_numpy()
    if y[tr].sum() == 0 or y[va].sum() == 0:
        raise DataLayoutError(str(root / "labels.csv"), "need cardiomegaly-positive patients in train and val splits")
    x, tab = _images(df), _tabular(df)
    net_def = dict(NETWORK)
    if quick:
        epochs, net_def["width"], net_def["n_stages"] = 1, 4, 3
    kw = {k: v for k, v in net_def.items() if k != "_target_"}
    pos_weight = float((1 - y[tr]).sum() / y[tr].sum())
    fit_kw = {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "pos_weight": pos_weight, "max_shift": 4,
              "gamma": 0.2, "seed": seed}
    with deterministic(seed, threads):
        net = tabular_cnn2d(**kw)
        train_network(net, x[tr], y[tr], tab[tr], desc="cardiomegaly image+age+sex", **fit_kw)
        img_def = {**net_def, "n_tabular": 0}
        img_net = tabular_cnn2d(**{**kw, "n_tabular": 0})
        train_network(img_net, x[tr], y[tr], None, desc="cardiomegaly image only", **fit_kw)
        p_val = sigmoid(predict_logits(net, x[va], tab[va]))
    lr = LogisticRegression(C=1.0, class_weight="balanced").fit(tab[tr], y[tr])
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(lr.coef_, dtype=torch.float32))
        lin.bias.copy_(torch.tensor(lr.intercept_, dtype=torch.float32))
    t = round(threshold_at_specificity(y[va], p_val, SPEC_TARGET), 4)
    band = band_around(p_val, t, 0.05)
    meta = _card(root, df, split, t, band, epochs, seed, quick, [round(float(c), 4) for c in lr.coef_[0]])
    extra = {"comparators": {
        "image_only": {"network_def": img_def, "weights": "image_only.pt", "inputs": ["image"]},
        "age_sex_only": {"network_def": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
                         "weights": "age_sex_only.pt", "inputs": ["tab"]},
    }, "preprocessing": meta["cds"]["inputs"]["image"]["preprocessing"],
        "tabular_encoding": meta["cds"]["inputs"]["tabular_encoding"]}
    save_bundle(out, meta, net_def, net.state_dict(), inference_extra=extra)
    torch.save(img_net.state_dict(), out / "models" / "image_only.pt")
    torch.save(lin.state_dict(), out / "models" / "age_sex_only.pt")
    manifest = {"hash": "sha256(name)[:16]", "salt": SALT,
                "images": {s: sorted(name_hash(n) for n in df.loc[split == s, "image"]) for s in ("train", "val")},
                "patients": {s: sorted(name_hash(p) for p in df.loc[split == s, "Patient ID"].unique())
                             for s in ("train", "val")}}
    (out / "configs" / "training_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    result = evaluate(root, out, n_boot=200 if quick else 2000)
    write_performance(out, result)
    return out


def _manifest(bundle: Any) -> dict[str, set[str]]:
    p = bundle.path / "configs" / "training_manifest.json"
    if not p.is_file():
        return {"images": set(), "patients": set()}
    m = json.loads(p.read_text())
    return {k: set().union(*m[k].values()) for k in ("images", "patients")}


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             split: str = "auto") -> dict[str, Any]:
    """Metrics with 95 % patient-bootstrap CIs on a folder laid out like ``nih-cxr14-thumbs64``.

    ``split``: ``"auto"`` (default) = the held-out test patients when the folder overlaps the
    bundle's training manifest, else every image; ``"test"`` = images of patients not in the
    manifest; ``"all"`` = every image (flagged when it includes training images).

    ``metrics``: AUROC, sensitivity/specificity/accuracy at the card threshold and sensitivity at
    73 % specificity (Bhave 2024's operating point, threshold re-chosen on these data).
    ``comparisons``: the image-only CNN, the age+sex-only logistic model, and AUROC by view position.
    """
    check_choice(split, ("auto", "test", "all"), "split")
    df = load_labels(data_dir)
    root = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    b = as_bundle(bundle_dir if bundle_dir is not None else default_bundle_dir())
    man = _manifest(b)
    img_seen = df["image"].map(lambda n: name_hash(n) in man["images"]).to_numpy()
    pat_seen = df["Patient ID"].map(lambda p: name_hash(p) in man["patients"]).to_numpy()
    overlap = bool(img_seen.any() or pat_seen.any())
    used = ("test" if overlap else "all") if split == "auto" else split
    keep = ~pat_seen & ~img_seen if used == "test" else np.ones(len(df), bool)
    notes = []
    if used == "all" and overlap:
        notes.append(f"{int((img_seen | pat_seen).sum())} images belong to training/validation patients: optimistic.")
    if used == "test" and not overlap:
        notes.append("The folder does not overlap the training manifest: 'test' = every image.")
    sub = df.loc[keep].reset_index(drop=True)
    y, groups = sub["Cardiomegaly"].to_numpy(), sub["Patient ID"].to_numpy()
    x, tab = _images(sub), _tabular(sub)
    card = b.model_card
    p = sigmoid(predict_logits(b.network(), x, tab))
    metrics = binary_metrics(y, p, card.threshold, groups, n_boot=n_boot, spec_target=SPEC_TARGET)
    comparisons: dict[str, Any] = {}
    comps = b.inference.get("comparators", {})
    if "image_only" in comps:
        p_img = sigmoid(predict_logits(load_comparator(b, "image_only"), x))
        m = binary_metrics(y, p_img, None, groups, n_boot=n_boot, spec_target=SPEC_TARGET)
        comparisons["image_only"] = {"description": "same CNN and recipe without age/sex", "metrics": m}
    if "age_sex_only" in comps and len(tab):
        import torch

        with torch.inference_mode():
            p_as = sigmoid(load_comparator(b, "age_sex_only")(torch.from_numpy(tab))[:, 0].numpy())
        m = binary_metrics(y, p_as, None, groups, n_boot=n_boot, spec_target=SPEC_TARGET)
        comparisons["age_sex_only"] = {"description": "logistic regression on age and sex only", "metrics": m}
    by_view = {}
    for view in sorted(sub["View Position"].dropna().unique()):
        v = (sub["View Position"] == view).to_numpy()
        m = binary_metrics(y[v], p[v], None, groups[v], n_boot=n_boot)["auroc"]
        by_view[str(view)] = {"n_cases": int(v.sum()), "n_positive": int(y[v].sum()), "auroc": m}
    comparisons["by_view_position"] = by_view
    if y.sum() < 10:
        notes.append(f"Only {int(y.sum())} positive images: every estimate here is very uncertain.")
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": display_path(root),
        "split": used,
        "split_rule": ("auto: held-out test patients when the folder overlaps the training manifest, else all "
                       "images" if split == "auto" else f"{used} (asked)"),
        "n_cases": int(len(sub)),
        "n_patients": int(sub["Patient ID"].nunique()),
        "n_positive": int(y.sum()),
        "n_positive_patients": int(sub.loc[sub["Cardiomegaly"] == 1, "Patient ID"].nunique()),
        "threshold": card.threshold,
        "indeterminate": list(card.indeterminate) if card.indeterminate else None,
        "metrics": metrics,
        "comparisons": comparisons,
        "bootstrap": {"n_boot": n_boot, "unit": "patient", "seed": 0, "method": "percentile"},
        "notes": notes,
        "evaluation_command": f"cds evaluate cxr-cardiomegaly --data {display_path(root)} --json",
    }


def predict(bundle: Any, image_array: Any, ehr: dict[str, Any] | None, gradcam: bool = True) -> dict[str, Any]:
    """Probability of cardiomegaly for ONE frontal chest radiograph plus ``ehr`` age and sex.

    ``ehr`` holds ``age`` (years) and ``sex`` (male/female), by name or by source
    (``patient.age_years``, ``patient.sex``); a missing one raises
    :class:`cds.errors.ModelInputError` naming it. Returns ``{"probability", "logit", "threshold",
    "indeterminate", "gradcam", "gradcam_layer", "ehr_used"}``.
    """
    from cds.models.tasks.inputs import check_image

    b = as_bundle(bundle)
    specs = b.model_card.ehr_inputs or EHR_INPUTS
    used = {s["name"]: ehr_value(ehr, s) for s in specs}
    tab = tabular_inputs(used["age"], used["sex"])
    raw = check_image(image_array)
    x = prepare_image(raw, IMAGE_SIZE)
    net = b.network()
    logit = float(predict_logits(net, x[None], tab[None])[0])
    cam = gradcam_map(net, x, tab, out_shape=raw.shape) if gradcam else None
    return {"probability": float(sigmoid(np.array([logit]))[0]), "logit": logit,
            "threshold": b.model_card.threshold, "indeterminate": b.model_card.indeterminate,
            "gradcam": cam, "gradcam_layer": net.last_layer if gradcam else None, "ehr_used": used}


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str, series_uid: str | None = None,
                instance_uids: tuple[str, ...] | list[str] = (), ehr_inputs: dict[str, Any] | None = None) -> list[Any]:
    """:class:`cds.finding.Finding` records (one: SNOMED 8186001 Cardiomegaly) for a :func:`predict` result."""
    extra: dict[str, Any] = {"proxy_for": "echo-confirmed LV hypertrophy / dilatation (Bhave 2024)"}
    if pred.get("gradcam") is not None and float(np.max(pred["gradcam"])) > 0:
        r, c = np.unravel_index(int(np.argmax(pred["gradcam"])), pred["gradcam"].shape)
        extra.update({"gradcam_peak_pixel": [int(r), int(c)], "gradcam_layer": pred.get("gradcam_layer")})
    return findings_from_probability(
        bundle, pred["probability"], patient_id, study_uid, series_uid, instance_uids,
        ehr_inputs if ehr_inputs is not None else pred.get("ehr_used"),
        explanation="64x64 CNN + age + sex trained on NLP-mined NIH labels (proxy, not echo-confirmed); "
                    "GradCAM shows the image regions that raised the score",
        extra=extra)


# ---------------------------------------------------------------------------------------- the task
class CardiomegalyTask(TrainableTask):
    """CXR + age + sex -> one Cardiomegaly Finding, with GradCAM."""

    name = NAME
    evaluate_options = ("split",)

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on ``image.array`` then :func:`to_findings` with the image's identity."""
        ref = image_ref(image)
        return to_findings(bundle, predict(bundle, image.array, ehr), ref.patient_id, ref.study_uid,
                           ref.series_uid, ref.instance_uids, ehr)

    def explain(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> np.ndarray | None:
        """The GradCAM map of :func:`predict` on the image's grid."""
        return predict(bundle, image.array, ehr)["gradcam"]

    def prepare(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> dict[str, Any]:
        """The network input (image and age / sex) of one image (:func:`cds.inference.stream.prepared_2d`)."""
        from cds.inference.stream import prepared_2d
        from cds.models.tasks.common2d import as_bundle

        specs = as_bundle(bundle).model_card.ehr_inputs or EHR_INPUTS
        used = {s["name"]: ehr_value(ehr, s) for s in specs}
        return prepared_2d(image, IMAGE_SIZE, tabular_inputs(used["age"], used["sex"]), used)

    def predict_batch(self, bundle: Bundle, prepared: list[Any]) -> list[list[Finding]]:
        """Fixed-size batched forward passes (no GradCAM: it is made when asked, by :meth:`explain`)."""
        from cds.inference.stream import batch_probabilities

        return [to_findings(bundle, {"probability": p, "ehr_used": it["ehr_used"]}, *it["ref"], it["ehr_used"])
                for it, p in zip(prepared, batch_probabilities(bundle, prepared), strict=True)]

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (options: split)."""
        return evaluate(data_dir, bundle_dir, n_boot=n_boot, **self.check_options(options))

    def training_images(self, data_dir: str | Path | None) -> Iterator[tuple[str, np.ndarray]]:
        """``(image name, grey array)`` of the ``train`` patients (:func:`split_patients`), read as training
        reads them (:func:`cds.models.tasks.inputs.read_gray`); never the val (operating point) or test
        (card performance) patients."""
        df = load_labels(data_dir)
        train = df[(split_patients(df) == "train").to_numpy()]
        for name, path in zip(train["image"], train["path"], strict=True):
            yield str(name), read_gray(path)


TASK = CardiomegalyTask()
"""The cxr-cardiomegaly task object listed in :data:`cds.models.task_table.TASKS`."""
