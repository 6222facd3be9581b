"""Shared helpers of the 2D classification models (pneumonia, cxr-cardiomegaly, cxr-icu).

What lives here, in the order a model uses it:

- reading folders laid out like ``shared/data`` sets (:func:`read_table`, :func:`read_gray`) with
  errors that name the missing file or column (:class:`DataLayoutError`);
- image preparation shared by training and inference (:func:`prepare_image`: grey, resize,
  1-99 percentile scaling to [0, 1]);
- deterministic, patient-level splits by hashing ids (:func:`stratified_hash_split`);
- a small MONAI CNN that can also take tabular inputs (:func:`tabular_cnn2d`, used as the bundle's
  ``network_def``), a deterministic training loop (:func:`train_network`), batch prediction and
  GradCAM maps (:func:`predict_logits`, :func:`gradcam_map`);
- operating points chosen on validation data (:func:`youden_threshold`, :func:`band_around`) and
  the metric block with 95 % bootstrap CIs every card and ``evaluate`` use (:func:`binary_metrics`);
- card plumbing: MONAI metadata, EHR inputs by name or source, Findings from a probability.

torch and MONAI are imported inside the functions that need them.

Examples
--------
>>> split = stratified_hash_split(["a", "b", "c", "d"], {"a": 1, "b": 0, "c": 0, "d": 1}, (0.5, 0.0, 0.5))
>>> sorted(split.values())
['test', 'test', 'train', 'train']
>>> prepare_image(np.arange(100, dtype=np.uint8).reshape(10, 10), 10).shape
(10, 10)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError, ModelInputError, ParameterError

__all__ = [
    "DataLayoutError",
    "REPO_ROOT",
    "SNOMED",
    "default_data_dir",
    "display_path",
    "stable_hash",
    "name_hash",
    "read_table",
    "read_gray",
    "check_image",
    "prepare_image",
    "stratified_hash_split",
    "tabular_cnn2d",
    "deterministic",
    "train_network",
    "predict_logits",
    "gradcam_map",
    "sigmoid",
    "youden_threshold",
    "band_around",
    "binary_metrics",
    "round_metric",
    "monai_metadata",
    "as_bundle",
    "load_comparator",
    "ehr_value",
    "findings_from_probability",
    "check_choice",
    "write_performance",
    "render_readme",
]

from cds.locations import REPO_ROOT, display_path, shared_data_dir  # noqa: E402  (one place locates files)

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


class DataLayoutError(ParameterError):
    """A data folder does not have the expected layout; the message names the missing file/column."""


# ------------------------------------------------------------------------------------------- paths
def default_data_dir(set_name: str) -> Path:
    """The team's copy of a data set: :func:`cds.locations.shared_data_dir`, resolved.

    >>> default_data_dir("medmnist").name
    'medmnist'
    """
    return shared_data_dir(set_name).resolve()


def stable_hash(text: str) -> str:
    """SHA-256 hex digest of a string (stable across runs and machines).

    >>> stable_hash("abc")[:8]
    'ba7816bf'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def name_hash(name: str) -> str:
    """The 16-hex-digit hash under which training manifests store image or patient names."""
    return stable_hash(name)[:16]


# ---------------------------------------------------------------------------------------- reading
def read_table(path: str | Path, required: Sequence[str], dtype: dict[str, Any] | None = None) -> Any:
    """Read a CSV as a DataFrame and check its columns; errors name the file and the column.

    >>> read_table("/nonexistent/labels.csv", ["Image"])
    Traceback (most recent call last):
    ...
    cds.models.tasks.common2d.DataLayoutError: /nonexistent/labels.csv: file not found (a data folder needs it)
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataLayoutError(str(p), "file not found (a data folder needs it)")
    try:
        df = pd.read_csv(p, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a layout problem of this file
        raise DataLayoutError(str(p), f"cannot read as CSV: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLayoutError(str(p), f"missing column(s) {', '.join(map(repr, missing))}; "
                              f"found {', '.join(map(str, df.columns[:12]))}")
    return df


def read_gray(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/TIFF as a 2D grey-scale uint8/uint16 array; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(str(p), "file not found")
    try:
        with Image.open(p) as im:
            if im.mode not in ("L", "I", "I;16", "F"):
                im = im.convert("L")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(str(p), f"cannot read as an image: {exc}") from None


# ---------------------------------------------------------------------------------- preprocessing
def check_image(image: Any, where: str = "image_array", min_side: int = 8) -> np.ndarray:
    """``image`` as a finite 2D float32 array, or :class:`cds.errors.ModelInputError` naming ``where``.

    Colour (trailing axis of 3/4) is averaged to grey; a leading or trailing axis of 1 is dropped.

    >>> check_image(np.zeros((4, 4, 2)))
    Traceback (most recent call last):
    ...
    cds.errors.ModelInputError: image_array: expected a 2D grey-scale image, got shape (4, 4, 2)
    """
    if image is None:
        raise ModelInputError(where, "no image given (expected a 2D grey-scale array)")
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ModelInputError(where, f"pixel type {arr.dtype} is not numeric")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise ModelInputError(where, f"expected a 2D grey-scale image, got shape {tuple(np.shape(image))}")
    if min(arr.shape) < min_side:
        raise ModelInputError(where, f"image is {arr.shape[0]}x{arr.shape[1]} pixels; need >= {min_side} per side")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ModelInputError(where, "image contains NaN or infinite pixels")
    return arr


def prepare_image(image: Any, size: int, where: str = "image_array") -> np.ndarray:
    """The model input: grey, resized to ``size`` x ``size`` (anti-aliased), 1-99 % range -> [0, 1].

    Training and inference use this same function, so a model sees every image the same way
    whatever its bit depth. A constant image becomes all zeros.

    >>> x = prepare_image(np.random.default_rng(0).integers(0, 4096, (300, 200)), 64)
    >>> x.shape, x.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0
    ((64, 64), dtype('float32'), True, True)
    """
    arr = check_image(image, where)
    if arr.shape != (size, size):
        from skimage.transform import resize

        arr = resize(arr, (size, size), order=1, anti_aliasing=min(arr.shape) > size,
                     preserve_range=True).astype(np.float32)
    lo, hi = np.percentile(arr, [1.0, 99.0])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros((size, size), np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ split
def stratified_hash_split(
    groups: Sequence[Any],
    group_label: dict[Any, int],
    fractions: tuple[float, float, float] = (0.5, 0.2, 0.3),
    salt: str = "cds-split-v1",
) -> dict[Any, str]:
    """Assign each group (patient) to ``train``/``val``/``test``, deterministically.

    Within each label stratum the groups are ordered by ``sha256(salt:group)`` and cut by
    ``fractions`` (rounded), so the split depends only on the ids and their labels, never on a
    random state or on file order.
    """
    uniq = sorted({str(g) for g in groups})
    labels = {str(k): int(v) for k, v in group_label.items()}
    out: dict[Any, str] = {}
    for lab in sorted({labels[g] for g in uniq}):
        members = sorted((g for g in uniq if labels[g] == lab), key=lambda g: stable_hash(f"{salt}:{g}"))
        n = len(members)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        for i, g in enumerate(members):
            out[g] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return {g: out[str(g)] for g in dict.fromkeys(groups)}


# ---------------------------------------------------------------------------------------- network
@functools.cache
def _tabular_cnn_class() -> type:
    from collections import OrderedDict

    import torch
    from monai.networks.blocks import Convolution
    from torch import nn

    class TabularCNN2d(nn.Module):
        """Conv stages (2 x conv-BN-ReLU, then 2x2 max-pool) -> global average -> [+ tabular] -> logit."""

        def __init__(self, in_channels: int = 1, n_tabular: int = 0, width: int = 16, n_stages: int = 3,
                     dropout: float = 0.2) -> None:
            super().__init__()
            self.n_tabular = int(n_tabular)
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            c_in = in_channels
            for s in range(n_stages):
                c = width * 2**s
                if s > 0:
                    layers[f"pool{s}"] = nn.MaxPool2d(2)
                layers[f"stage{s}"] = nn.Sequential(
                    Convolution(2, c_in, c, kernel_size=3, act="RELU", norm="BATCH"),
                    Convolution(2, c, c, kernel_size=3, act="RELU", norm="BATCH"),
                )
                c_in = c
            self.features = nn.Sequential(layers)
            self.last_layer = f"features.stage{n_stages - 1}"
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(c_in + self.n_tabular, 1)

        def forward(self, x: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
            f = self.pool(self.features(x)).flatten(1)
            if self.n_tabular:
                if tab is None:
                    raise ValueError(f"this network needs {self.n_tabular} tabular input(s) (argument tab)")
                f = torch.cat([f, tab.to(f.dtype)], dim=1)
            return self.head(self.drop(f))

    return TabularCNN2d


def tabular_cnn2d(in_channels: int = 1, n_tabular: int = 0, width: int = 16, n_stages: int = 3,
                  dropout: float = 0.2) -> Any:
    """A small 2D CNN built from MONAI ``Convolution`` blocks, optionally fused with tabular inputs.

    Used as a bundle's ``network_def`` (``"_target_": "cds.models.tasks.common2d.tabular_cnn2d"``).
    ``forward(x, tab=None)`` returns one logit per image; the GradCAM layer is ``net.last_layer``.

    >>> import torch
    >>> net = tabular_cnn2d(n_tabular=2, width=4)
    >>> net(torch.zeros(3, 1, 28, 28), tab=torch.zeros(3, 2)).shape
    torch.Size([3, 1])
    """
    return _tabular_cnn_class()(in_channels, n_tabular, width, n_stages, dropout)


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed python/numpy/torch, force deterministic torch kernels and ``threads`` CPU threads.

    The previous thread count and determinism flag are restored on exit.
    """
    import random

    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _augment(x: Any, rng: np.random.Generator, max_shift: int, gamma: float) -> Any:
    """Random translation (edge-replicated, up to ``max_shift`` px) and gamma jitter, per image."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0 and gamma <= 0:
        return x
    out = x
    if max_shift > 0:
        s = max_shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        h, w = x.shape[-2:]
        shifts = rng.integers(0, 2 * s + 1, size=(x.shape[0], 2))
        out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])
    if gamma > 0:
        g = torch.from_numpy(np.exp(rng.uniform(-gamma, gamma, size=(x.shape[0], 1, 1, 1))).astype(np.float32))
        out = out.clamp(0.0, 1.0) ** g
    return out


def train_network(
    net: Any,
    images: np.ndarray,
    labels: np.ndarray,
    tabular: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    pos_weight: float = 1.0,
    max_shift: int = 2,
    gamma: float = 0.2,
    seed: int = 0,
    desc: str = "training",
) -> list[float]:
    """Train ``net`` (binary, one logit) with AdamW + cosine schedule; returns the loss per epoch.

    ``images`` is (N, H, W) in [0, 1]; ``tabular`` (N, K) or None. Batches are drawn from a numpy
    generator seeded with ``seed``; call inside :func:`deterministic` for bit-reproducible weights.
    """
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.ascontiguousarray(images[:, None], dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32)[:, None])
    t = torch.from_numpy(np.asarray(tabular, dtype=np.float32)) if tabular is not None else None
    n = len(x)
    n_batches = max(1, int(np.ceil(n / batch_size)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(pos_weight)]))
    losses: list[float] = []
    net.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=None):
        total = 0.0
        for idx in np.array_split(rng.permutation(n), n_batches):
            xb = _augment(x[idx], rng, max_shift, gamma)
            kwargs = {"tab": t[idx]} if t is not None else {}
            opt.zero_grad()
            loss = loss_fn(net(xb, **kwargs), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    net.eval()
    return losses


def predict_logits(net: Any, images: np.ndarray, tabular: np.ndarray | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Logits (N,) of a one-logit network on (N, H, W) images in [0, 1]."""
    import torch

    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size, None], dtype=np.float32))
            kwargs = {}
            if tabular is not None:
                kwargs["tab"] = torch.from_numpy(np.asarray(tabular[start:start + batch_size], dtype=np.float32))
            out.append(net(xb, **kwargs)[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def gradcam_map(net: Any, image01: np.ndarray, tabular: np.ndarray | None = None,
                layer: str | None = None, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """GradCAM (``monai.visualize.GradCAM``) of the logit for one prepared image, scaled to [0, 1].

    Runs on a copy of ``net`` so the hooks GradCAM registers never pile up on a cached network.
    ``out_shape`` resizes the map (e.g. to the original image) for overlays.
    """
    import torch
    from monai.visualize import GradCAM

    work = copy.deepcopy(net).eval()
    cam = GradCAM(nn_module=work, target_layers=layer or work.last_layer)
    x = torch.from_numpy(np.ascontiguousarray(image01[None, None], dtype=np.float32))
    kwargs = {"tab": torch.from_numpy(np.asarray(tabular, np.float32)[None])} if tabular is not None else {}
    with torch.enable_grad():
        m = cam(x, class_idx=0, **kwargs)
    cam_map = m[0, 0].detach().cpu().numpy().astype(np.float32)
    if out_shape is not None and tuple(out_shape) != cam_map.shape:
        from skimage.transform import resize

        cam_map = resize(cam_map, out_shape, order=1, preserve_range=True).astype(np.float32)
    return cam_map


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function.

    >>> sigmoid(np.array([0.0])).tolist()
    [0.5]
    """
    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


# ------------------------------------------------------------------------------ operating points
def youden_threshold(y: Sequence[int], p: Sequence[float]) -> float:
    """The score ``t`` (``p >= t`` positive) that maximises sensitivity + specificity - 1.

    Ties go to the lowest such score.

    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.35
    """
    from cds.evaluation.metrics import sens_spec_at_threshold

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    best_t, best_j = float(np.min(p)), -np.inf
    for t in np.unique(p):
        se, sp = sens_spec_at_threshold(y, p, t)
        if se + sp - 1 > best_j + 1e-12:
            best_t, best_j = float(t), se + sp - 1
    return best_t


def band_around(p_val: Sequence[float], t: float, frac: float = 0.05) -> list[float]:
    """Indeterminate band: scores from ``frac`` below to ``frac`` above ``t`` in the validation ranks.

    About ``2 * frac`` of validation cases (those nearest the threshold in rank) fall inside.

    >>> band_around(np.linspace(0, 1, 101), 0.5, 0.1)
    [0.395, 0.595]
    """
    p = np.sort(np.asarray(p_val, dtype=float))
    q = float(np.mean(p < t))
    lo = float(np.quantile(p, max(q - frac, 0.0)))
    hi = float(np.quantile(p, min(q + frac, 1.0)))
    return [round(min(lo, t), 4), round(max(hi, t), 4)]


# ---------------------------------------------------------------------------------------- metrics
def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        v = float(v)
        return round(v, 4) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def round_metric(m: dict[str, Any]) -> dict[str, Any]:
    """A metric dict with values rounded to 4 decimals (NaN -> None), JSON-ready.

    >>> round_metric({"value": 0.123456, "ci95": [0.1, float("nan")], "n_boot": 10})
    {'value': 0.1235, 'ci95': [0.1, None], 'n_boot': 10}
    """
    return {k: _clean(v) for k, v in m.items()}


def binary_metrics(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float | None,
    groups: Sequence[Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    spec_target: float | None = None,
) -> dict[str, dict[str, Any]]:
    """AUROC, and sensitivity / specificity / accuracy at ``threshold``, each with a 95 % bootstrap CI.

    ``groups`` (patient ids) makes the bootstrap resample whole patients. With ``spec_target`` the
    sensitivity at that specificity (threshold re-chosen in every resample) is added as
    ``sensitivity_at_<NN>_specificity``.

    >>> m = binary_metrics([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.7, 0.9, 0.6, 0.4], 0.5, n_boot=50)
    >>> m["auroc"]["value"], m["sensitivity"]["value"], m["specificity"]["value"]
    (0.8889, 0.6667, 0.6667)
    """
    from cds.evaluation.metrics import (
        auroc_ci,
        bootstrap_ci,
        sens_spec_at_threshold,
        sensitivity_at_specificity,
    )

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    out: dict[str, dict[str, Any]] = {"auroc": round_metric(auroc_ci(y, p, n_boot=n_boot, seed=seed, groups=groups))}
    if threshold is not None:
        t = float(threshold)

        def sens(yy: np.ndarray, pp: np.ndarray) -> float:
            return sens_spec_at_threshold(yy, pp, t)[0]

        def spec(yy: np.ndarray, pp: np.ndarray) -> float:
            return sens_spec_at_threshold(yy, pp, t)[1]

        def acc(yy: np.ndarray, pp: np.ndarray) -> float:
            return float(np.mean((pp >= t) == yy.astype(bool)))

        for name, fn in (("sensitivity", sens), ("specificity", spec), ("accuracy", acc)):
            m = round_metric(bootstrap_ci(fn, y, p, n_boot=n_boot, seed=seed, groups=groups))
            m["threshold"] = round(t, 6)
            out[name] = m
    if spec_target is not None:
        key = f"sensitivity_at_{int(round(spec_target * 100))}_specificity"
        out[key] = round_metric(sensitivity_at_specificity(y, p, spec_target, n_boot=n_boot, seed=seed,
                                                           groups=groups))
    return out


# ------------------------------------------------------------------------------------- card / I/O
def monai_metadata(*, version: str, name: str, task: str, description: str, cds: dict[str, Any],
                   inputs: dict[str, Any], outputs: dict[str, Any], data_source: str, data_type: str,
                   references: list[str], changelog: dict[str, str]) -> dict[str, Any]:
    """MONAI ``metadata.json`` fields (network_data_format etc.) around the ``cds`` card section."""
    import monai
    import torch

    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": version,
        "changelog": changelog,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "name": name,
        "task": task,
        "description": description,
        "authors": "cds project",
        "copyright": "Copyright (c) cds project contributors; weights trained on the data sets named in data_source",
        "data_source": data_source,
        "data_type": data_type,
        "intended_use": cds.get("intended_use", ""),
        "references": references,
        "network_data_format": {"inputs": inputs, "outputs": outputs},
        "cds": cds,
    }


def as_bundle(bundle: Any) -> Any:
    """A :class:`cds.models.bundle.Bundle` from a Bundle or a bundle folder path."""
    from cds.models.bundle import Bundle, load_bundle

    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def load_comparator(bundle: Any, key: str) -> Any:
    """Build and load an extra network listed under ``inference.json["comparators"][key]``."""
    import torch
    from monai.bundle import ConfigParser

    from cds.models.bundle import BundleError

    b = as_bundle(bundle)
    spec = b.inference.get("comparators", {}).get(key)
    if spec is None:
        raise BundleError(f"{b.path}/configs/inference.json: no comparator {key!r}")
    net = ConfigParser({"net": spec["network_def"]}).get_parsed_content("net", instantiate=True)
    w = b.path / "models" / spec["weights"]
    if not w.exists():
        raise BundleError(f"{w}: weights file missing")
    net.load_state_dict(torch.load(w, map_location="cpu", weights_only=True))
    return net.eval()


def ehr_value(ehr: dict[str, Any] | None, spec: dict[str, Any]) -> Any:
    """The value of one declared EHR input, looked up by its ``name`` or its ``source``.

    >>> ehr_value({"patient.age_years": 61}, {"name": "age", "source": "patient.age_years"})
    61
    >>> ehr_value({}, {"name": "age", "source": "patient.age_years"})
    Traceback (most recent call last):
    ...
    cds.errors.ModelInputError: age: EHR input missing (source patient.age_years); pass it in ehr['age']
    """
    ehr = ehr or {}
    for key in (spec["name"], spec.get("source")):
        if key is not None and key in ehr:
            return ehr[key]
    raise ModelInputError(spec["name"], f"EHR input missing (source {spec.get('source')}); "
                                        f"pass it in ehr['{spec['name']}']")


def _json_value(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        v = float(v)
        return v if np.isfinite(v) else (">" if v > 0 else "<") + "detection limit"
    if isinstance(v, np.integer):
        return int(v)
    return v


def findings_from_probability(
    bundle: Any,
    probability: float,
    patient_id: str,
    study_uid: str,
    series_uid: str | None,
    instance_uids: Sequence[str],
    ehr_inputs: dict[str, Any] | None,
    explanation: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Any]:
    """One :class:`cds.finding.Finding` per card output, with the card's threshold and band."""
    from cds.finding import Finding

    b = as_bundle(bundle)
    card = b.card
    band = card.get("indeterminate")
    out = []
    for o in card.get("outputs", []):
        out.append(Finding(
            patient_id=str(patient_id), study_uid=str(study_uid), code_system=o["code_system"], code=o["code"],
            display=o["display"], model_id=b.model_id, model_version=b.version, probability=float(probability),
            threshold=card.get("threshold"), indeterminate=tuple(band) if band else None,
            series_uid=series_uid, instance_uids=tuple(str(u) for u in instance_uids),
            ehr_inputs={k: _json_value(v) for k, v in (ehr_inputs or {}).items()}, explanation=explanation,
            prognostic=bool(card.get("prognostic", False)), extra=dict(extra or {}),
        ))
    return out


def check_choice(value: str, choices: Sequence[str], parameter: str) -> str:
    """``value`` if it is one of ``choices``, else :class:`cds.errors.ParameterError` naming ``parameter``.

    >>> check_choice("all", ["auto", "all"], "split")
    'all'
    """
    if value not in choices:
        raise ParameterError(parameter, f"{value!r} is not one of {', '.join(map(repr, choices))}")
    return value



PERFORMANCE_KEYS = ("data", "split", "split_rule", "n_cases", "n_patients", "n_positive", "n_positive_patients",
                    "metrics", "comparisons", "bootstrap", "notes", "evaluation_command")


def write_performance(bundle_dir: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """Copy an ``evaluate`` result into the card's ``performance`` section (and MONAI ``eval_metrics``).

    The card numbers are therefore exactly what ``evaluate`` returned; ``docs/README.md`` is
    re-rendered from the updated card. Returns the updated metadata.
    """
    p = Path(bundle_dir) / "configs" / "metadata.json"
    meta = json.loads(p.read_text())
    meta["cds"]["performance"] = {k: result[k] for k in PERFORMANCE_KEYS if k in result}
    meta["eval_metrics"] = {k: v["value"] for k, v in result["metrics"].items()}
    p.write_text(json.dumps(meta, indent=2) + "\n")
    (Path(bundle_dir) / "docs").mkdir(exist_ok=True)
    (Path(bundle_dir) / "docs" / "README.md").write_text(render_readme(meta))
    return meta


def _fmt_metric(m: dict[str, Any]) -> str:
    v, ci = m.get("value"), m.get("ci95") or [None, None]
    if v is None:
        return "undefined"
    lo, hi = ("?" if c is None else f"{c:.3f}" for c in ci)
    return f"{v:.3f} (95 % CI {lo}-{hi})"


def render_readme(meta: dict[str, Any]) -> str:
    """The human-readable model card (markdown) from ``metadata.json``.

    >>> print(render_readme({"name": "toy", "version": "1", "cds": {"intended_use": "demo"}}).splitlines()[0])
    # toy (version 1)
    """
    c = meta.get("cds", {})
    lines = [f"# {meta.get('name', c.get('model_id', 'model'))} (version {meta.get('version', '?')})", ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    for key, title in (("intended_use", "Intended use"), ("proxy_for", "Proxy for")):
        if c.get(key):
            lines += [f"## {title}", "", str(c[key]), ""]
    if c.get("outputs"):
        lines += ["## Output", ""]
        for o in c["outputs"]:
            lines.append(f"- {o['display']} ({o['code_system']} {o['code']}), {o.get('kind', 'probability')}")
        lines.append(f"- threshold {c.get('threshold')}, indeterminate band {c.get('indeterminate')}: "
                     f"{c.get('operating_point', {}).get('how_chosen', '')}")
        lines.append("")
    inputs = c.get("inputs", {})
    if inputs:
        lines += ["## Inputs", ""]
        if inputs.get("image"):
            lines.append(f"- image: {json.dumps(inputs['image'])}")
        for e in inputs.get("ehr", []):
            lines.append(f"- {e['name']}: `{e['source']}` {e.get('description', '')}".rstrip())
        lines.append("")
    td = c.get("training_data")
    if td:
        lines += ["## Training data", "", "```json", json.dumps(td, indent=2), "```", ""]
    perf = c.get("performance")
    if perf:
        lines += ["## Performance", "", f"Data: {perf.get('data')} (split: {perf.get('split')}), "
                  f"{perf.get('n_cases')} cases, {perf.get('n_patients')} patients, "
                  f"{perf.get('n_positive')} positive.", ""]
        for k, m in perf.get("metrics", {}).items():
            lines.append(f"- {k}: {_fmt_metric(m)}")
        for name, comp in (perf.get("comparisons") or {}).items():
            if isinstance(comp, dict) and "metrics" in comp:
                auc = comp["metrics"].get("auroc")
                if auc:
                    lines.append(f"- comparison {name}: AUROC {_fmt_metric(auc)}")
        lines += ["", f"Reproduce: `{perf.get('evaluation_command')}`", ""]
        for n in perf.get("notes", []):
            lines.append(f"- note: {n}")
        lines.append("")
    if c.get("limitations"):
        lines += ["## Limitations", ""] + [f"- {x}" for x in c["limitations"]] + [""]
    if c.get("context"):
        lines += ["## Published context", ""] + [f"- {x}" for x in c["context"]] + [""]
    return "\n".join(lines)
