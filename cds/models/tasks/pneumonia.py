"""``pneumonia``: a small demo CNN for pneumonia on 28x28 pediatric chest X-rays (PneumoniaMNIST).

Data: ``shared/data/medmnist/pneumoniamnist_balanced_subset_trainval.npz`` (keys ``train_*``,
``val_*``; label 1 = pneumonia). Training uses the ``train_`` arrays only: 85 % to fit the network,
15 % (a seeded, class-stratified draw) to choose the threshold and indeterminate band. ``evaluate``
scores any ``.npz`` with ``test_``, ``val_`` or ``train_`` arrays (in that order of preference)
and says which one it used.

Commands::

    cds train pneumonia --data ../shared/data/medmnist --out cds/models/bundles/pneumonia
    cds evaluate pneumonia --data ../shared/data/medmnist --json

Python::

    >>> from cds.models.tasks import pneumonia
    >>> from cds.models.task_table import TASKS
    >>> TASKS["pneumonia"] is pneumonia.TASK
    True
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import SNOMED
from cds.evaluation.metrics import binary_metrics
from cds.locations import display_path
from cds.models import BUNDLES_DIR
from cds.models.card_files import monai_metadata, write_performance
from cds.models.explain import gradcam_map
from cds.models.networks import predict_logits, sigmoid
from cds.models.task import TrainableTask, image_ref
from cds.models.tasks.common2d import as_bundle, check_choice, findings_from_probability
from cds.models.tasks.inputs import DataLayoutError, default_data_dir, prepare_image
from cds.models.training import band_around, youden_threshold

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cds.finding import Finding
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["NAME", "TASK", "train", "evaluate", "predict", "to_findings", "load_split"]

NAME = "pneumonia"
MODEL_ID = "pneumonia"
VERSION = "1.0.0"
DATA_SET = "medmnist"
DATA_FILE = "pneumoniamnist_balanced_subset_trainval.npz"
IMAGE_SIZE = 28
EPOCHS = 12
TUNE_FRACTION = 0.15
NETWORK = {"_target_": "cds.models.networks.tabular_cnn2d", "in_channels": 1, "n_tabular": 0, "width": 16,
           "n_stages": 3, "dropout": 0.2}
PREFERENCE = ("test", "val", "train")


def default_bundle_dir() -> Path:
    """The shipped bundle folder, ``cds/models/bundles/pneumonia``."""
    return BUNDLES_DIR / MODEL_ID


def _npz_path(data_dir: str | Path | None) -> Path:
    p = Path(data_dir) if data_dir is not None else default_data_dir(DATA_SET)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise DataLayoutError(str(p), "file not found (expected a MedMNIST-style .npz with train_/val_/test_ "
                              f"images and labels, e.g. {DATA_FILE})")
    return p


def load_split(data_dir: str | Path | None, split: str = "auto") -> tuple[np.ndarray, np.ndarray, str, Path]:
    """Images (N, 28, 28), labels (N,), the prefix used and the file, from a MedMNIST ``.npz``.

    ``split="auto"`` takes ``test_`` if present, else ``val_``, else ``train_``. Errors name the
    file and the missing key.
    """
    path = _npz_path(data_dir)
    check_choice(split, ("auto", *PREFERENCE), "split")
    try:
        z = np.load(path)
        keys = set(z.files)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a layout problem
        raise DataLayoutError(str(path), f"cannot read as .npz: {exc}") from None
    have = [s for s in PREFERENCE if f"{s}_images" in keys]
    if split == "auto":
        if not have:
            raise DataLayoutError(str(path), f"no test_images, val_images or train_images key; found {sorted(keys)}")
        split = have[0]
    for key in (f"{split}_images", f"{split}_labels"):
        if key not in keys:
            raise DataLayoutError(str(path), f"missing key {key!r}; found {sorted(keys)}")
    images = z[f"{split}_images"]
    labels = np.asarray(z[f"{split}_labels"]).reshape(-1).astype(int)
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.mean(axis=-1)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataLayoutError(str(path), f"{split}_images has shape {images.shape} and {split}_labels "
                              f"{len(labels)} entries; expected (N, H, W) and N")
    if not set(np.unique(labels)) <= {0, 1}:
        raise DataLayoutError(str(path), f"{split}_labels must be 0 (normal) / 1 (pneumonia)")
    return images, labels, split, path


def _prepare(images: np.ndarray) -> np.ndarray:
    return np.stack([prepare_image(a, IMAGE_SIZE) for a in images]) if len(images) else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _card(path: Path, n: int, n_fit: int, n_tune: int, n_pos: int, threshold: float, band: list[float],
          epochs: int, seed: int, quick: bool) -> dict[str, Any]:
    cds = {
        "model_id": MODEL_ID,
        "task": NAME,
        "modality": ["CR", "DX"],
        "body_site": "chest",
        "intended_use": ("Demonstration and pipeline testing only: flags pneumonia on a frontal pediatric chest "
                         "radiograph reduced to 28x28 pixels. Not for clinical use."),
        "proxy_for": "Radiologist-graded pneumonia (bacterial or viral) on pediatric chest X-rays (Kermany 2018).",
        "limitations": [
            "Trained on 28x28-pixel thumbnails: far below diagnostic resolution.",
            "Pediatric patients (1-5 years, Guangzhou Women and Children's Medical Center) only; adults untested.",
            "Balanced subset (50 % pneumonia): predictive values do not transfer to real prevalence.",
            "MedMNIST carries no patient ids: images are treated as independent and the train/val re-split may "
            "share patients, so the reported validation numbers may be optimistic.",
            "Does not distinguish bacterial from viral pneumonia; no localisation beyond a coarse GradCAM map.",
        ],
        "inputs": {
            "image": {"kind": "frontal chest radiograph", "channels": 1, "spatial_shape": [IMAGE_SIZE, IMAGE_SIZE],
                      "preprocessing": "grey; bilinear resize to 28x28 (anti-aliased); 1-99 percentile range "
                                       "scaled to [0, 1] (cds.models.tasks.inputs.prepare_image)"},
            "ehr": [],
        },
        "outputs": [{"code_system": SNOMED, "code": "233604007", "display": "Pneumonia", "kind": "probability"}],
        "threshold": threshold,
        "indeterminate": band,
        "operating_point": {
            "how_chosen": (f"threshold = Youden's J maximum on the tuning part of train_ ({n_tune} images); "
                           "indeterminate band = the tuning-score ranks 5 % either side of the threshold. "
                           "The evaluation arrays (val_/test_) were not used."),
            "data": "train_ tuning part",
        },
        "prognostic": False,
        "explanation": "GradCAM (monai.visualize.GradCAM) on the last convolution stage",
        "training_data": {
            "name": "PneumoniaMNIST balanced subset (MedMNIST v2; Kermany et al. 2018 pediatric CXR, CC BY 4.0)",
            "path": display_path(path),
            "sha256": _sha256(path),
            "split": (f"train_ arrays: {n_fit} images fit the network, {n_tune} (seeded class-stratified draw, "
                      f"{TUNE_FRACTION:.0%}) choose the operating point; val_/test_ arrays are never used"),
            "n": n,
            "n_positive": n_pos,
            "training_command": f"cds train pneumonia --data {display_path(path.parent)} --out cds/models/bundles/pneumonia"
                                + (" --quick" if quick else ""),
            "seed": seed,
            "epochs": epochs,
            "recipe": "AdamW lr 2e-3, weight decay 1e-4, batch 64, cosine schedule, BCE; shifts <= 2 px and "
                      "gamma jitter; deterministic torch kernels, 1 CPU thread",
        },
        "weights": "model.pt",
        "context": ["MedMNIST v2 benchmark (Yang 2023): PneumoniaMNIST test AUC about 0.95 for ResNet-18 at 28 px "
                    "on the official, unbalanced split; not comparable to this balanced subset."],
    }
    return monai_metadata(
        version=VERSION, name="pneumonia (PneumoniaMNIST demo)", task="binary classification",
        description="Small CNN (MONAI Convolution blocks) giving the probability of pneumonia on a 28x28 "
                    "pediatric chest radiograph.",
        cds=cds,
        inputs={"image": {"type": "image", "format": "magnitude", "modality": "CR", "num_channels": 1,
                          "spatial_shape": [IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32", "value_range": [0, 1],
                          "is_patch_data": False, "channel_def": {"0": "image"}}},
        outputs={"pred": {"type": "probabilities", "format": "classes", "num_channels": 1, "spatial_shape": [1],
                          "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                          "channel_def": {"0": "logit of pneumonia (apply sigmoid)"}}},
        data_source="PneumoniaMNIST (MedMNIST v2, CC BY 4.0), balanced subset from GitHub aksufatih/snn-medmnist",
        data_type="numpy uint8 28x28",
        references=["Yang J. et al. MedMNIST v2. Scientific Data 10:41 (2023)",
                    "Kermany D.S. et al. Cell 172(5):1122-1131 (2018)"],
        changelog={VERSION: "first release"},
    )


def train(data_dir: str | Path | None = None, out_dir: str | Path | None = None, seed: int = 0,
          epochs: int = EPOCHS, quick: bool = False, threads: int = 1) -> Path:
    """Train on the ``train_`` arrays, write the bundle to ``out_dir``, fill its card by ``evaluate``.

    ``quick=True`` trains 1 epoch of a narrow network on 300 images (for tests) and bootstraps
    200 times; the shipped bundle uses the defaults.
    """
    from cds.models.bundle import save_bundle
    from cds.models.networks import tabular_cnn2d
    from cds.models.training import deterministic, train_network

    images, labels, _, path = load_split(data_dir, "train")
    out = Path(out_dir) if out_dir is not None else default_bundle_dir()
    rng = np.random.default_rng(seed)
    tune = np.zeros(len(labels), bool)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        tune[rng.choice(idx, int(round(TUNE_FRACTION * len(idx))), replace=False)] = True
    fit = ~tune
    net_def = dict(NETWORK)
    if quick:
        fit &= np.isin(np.arange(len(labels)), rng.choice(len(labels), 300, replace=False))
        epochs, net_def["width"] = 1, 4
    x = _prepare(images)
    with deterministic(seed):
        net = tabular_cnn2d(**{k: v for k, v in net_def.items() if k != "_target_"})
        train_network(net, x[fit], labels[fit], epochs=epochs, batch_size=64, lr=2e-3, max_shift=2,
                      gamma=0.2, seed=seed, desc="pneumonia")
        p_tune = sigmoid(predict_logits(net, x[tune]))
    t = round(youden_threshold(labels[tune], p_tune), 4)
    band = band_around(p_tune, t, 0.05)
    meta = _card(path, len(labels), int(fit.sum()), int(tune.sum()), int(labels.sum()), t, band, epochs, seed, quick)
    save_bundle(out, meta, net_def, net.state_dict())
    result = evaluate(path, out, n_boot=200 if quick else 2000)
    write_performance(out, result)
    return out


def evaluate(data_dir: str | Path | None = None, bundle_dir: str | Path | None = None, n_boot: int = 2000,
             split: str = "auto") -> dict[str, Any]:
    """Metrics of the bundle on one part of a MedMNIST ``.npz`` (``test_`` > ``val_`` > ``train_``).

    Returns a JSON-ready dict: task, model id/version, data, split, counts, and ``metrics`` (AUROC,
    sensitivity, specificity, accuracy at the card threshold), each ``{"value", "ci95"}``.
    """
    images, labels, used, path = load_split(data_dir, split)
    b = as_bundle(bundle_dir if bundle_dir is not None else default_bundle_dir())
    card = b.model_card
    p = sigmoid(predict_logits(b.network(), _prepare(images))) if len(labels) else np.zeros(0)
    notes = ["MedMNIST has no patient ids: the bootstrap resamples images, not patients."]
    td = card.training_data
    if used == "train" and td.get("sha256") == _sha256(path):
        notes.append("These are the model's own training images: the numbers are optimistic.")
    if labels.min(initial=1) == labels.max(initial=0):
        notes.append("Only one class present: AUROC and one of sensitivity/specificity are undefined.")
    disp = display_path(path.parent if path.name == DATA_FILE else path)
    return {
        "task": NAME,
        "model_id": b.model_id,
        "model_version": b.version,
        "data": display_path(path),
        "split": f"{used}_",
        "split_rule": "test_ arrays if present, else val_, else train_" if split == "auto" else f"{split}_ (asked)",
        "n_cases": int(len(labels)),
        "n_patients": None,
        "n_positive": int(labels.sum()),
        "threshold": card.threshold,
        "indeterminate": list(card.indeterminate) if card.indeterminate else None,
        "metrics": binary_metrics(labels, p, card.threshold, None, n_boot=n_boot),
        "bootstrap": {"n_boot": n_boot, "unit": "image", "seed": 0, "method": "percentile"},
        "notes": notes,
        "evaluation_command": f"cds evaluate pneumonia --data {disp} --json",
    }


def predict(bundle: Any, image_array: Any, ehr: dict[str, Any] | None = None, gradcam: bool = True) -> dict[str, Any]:
    """Probability of pneumonia for ONE frontal chest radiograph (any size; no EHR inputs needed).

    Returns ``{"probability", "logit", "threshold", "indeterminate", "gradcam" (map in [0, 1] at the
    input image's shape, or None), "gradcam_layer", "ehr_used": {}}``.
    """
    from cds.models.tasks.inputs import check_image

    b = as_bundle(bundle)
    raw = check_image(image_array)
    x = prepare_image(raw, IMAGE_SIZE)
    net = b.network()
    logit = float(predict_logits(net, x[None])[0])
    cam = gradcam_map(net, x, None, out_shape=raw.shape) if gradcam else None
    return {"probability": float(sigmoid(np.array([logit]))[0]), "logit": logit,
            "threshold": b.model_card.threshold, "indeterminate": b.model_card.indeterminate,
            "gradcam": cam, "gradcam_layer": net.last_layer if gradcam else None, "ehr_used": {}}


def to_findings(bundle: Any, pred: dict[str, Any], patient_id: str, study_uid: str, series_uid: str | None = None,
                instance_uids: tuple[str, ...] | list[str] = (), ehr_inputs: dict[str, Any] | None = None) -> list[Any]:
    """:class:`cds.finding.Finding` records (one: SNOMED 233604007 Pneumonia) for a :func:`predict` result."""
    extra: dict[str, Any] = {}
    if pred.get("gradcam") is not None and float(np.max(pred["gradcam"])) > 0:
        r, c = np.unravel_index(int(np.argmax(pred["gradcam"])), pred["gradcam"].shape)
        extra = {"gradcam_peak_pixel": [int(r), int(c)], "gradcam_layer": pred.get("gradcam_layer")}
    return findings_from_probability(
        bundle, pred["probability"], patient_id, study_uid, series_uid, instance_uids,
        ehr_inputs if ehr_inputs is not None else pred.get("ehr_used"),
        explanation="28x28 demo CNN (PneumoniaMNIST, pediatric); GradCAM shows the image regions that raised "
                    "the score",
        extra=extra)


# ---------------------------------------------------------------------------------------- the task
class PneumoniaTask(TrainableTask):
    """PneumoniaMNIST demo CNN: one Pneumonia Finding per frontal radiograph, with GradCAM."""

    name = NAME
    evaluate_options = ("split",)

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`predict` on ``image.array`` then :func:`to_findings` with the image's identity."""
        ref = image_ref(image)
        return to_findings(bundle, predict(bundle, image.array, ehr, gradcam=True), ref.patient_id, ref.study_uid,
                           ref.series_uid, ref.instance_uids, ehr)

    def explain(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> np.ndarray | None:
        """The GradCAM map of :func:`predict` on the image's grid."""
        return predict(bundle, image.array, ehr)["gradcam"]

    def prepare(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> dict[str, Any]:
        """The network input of one image (see :func:`cds.inference.stream.prepared_2d`)."""
        from cds.inference.stream import prepared_2d

        return prepared_2d(image, IMAGE_SIZE, None, {})

    def predict_batch(self, bundle: Bundle, prepared: list[Any]) -> list[list[Finding]]:
        """Fixed-size batched forward passes (no GradCAM: it is made when asked, by :meth:`explain`)."""
        from cds.inference.stream import batch_probabilities

        return [to_findings(bundle, {"probability": p, "ehr_used": {}}, *it["ref"])
                for it, p in zip(prepared, batch_probabilities(bundle, prepared), strict=True)]

    def train(self, data_dir: str | Path | None, out_dir: str | Path, *, seed: int = 0, quick: bool = False) -> Path:
        """:func:`train`."""
        return train(data_dir, out_dir, seed=seed, quick=quick)

    def evaluate(self, data_dir: str | Path | None, *, bundle_dir: str | Path | None = None, n_boot: int = 2000,
                 **options: Any) -> dict[str, Any]:
        """:func:`evaluate` (options: split)."""
        return evaluate(data_dir, bundle_dir, n_boot=n_boot, **self.check_options(options))

    def training_images(self, data_dir: str | Path | None) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, 28x28 array)`` of the training split as :func:`load_split` reads it: the ``train_``
        arrays (the network's fitting part and its operating-point part); never ``val_`` or ``test_``."""
        images, _, _, _ = load_split(data_dir, "train")
        for i, a in enumerate(images):
            yield f"train_{i}", a


TASK = PneumoniaTask()
"""The pneumonia task object listed in :data:`cds.models.task_table.TASKS`."""
