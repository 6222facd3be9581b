"""Model lab: train a 2D task model, evaluate it with CIs, calibrate it, look at its errors, ship it.

The steps of ``notebooks/model_lab.ipynb``, each a function over the task modules of
:mod:`cds.models` (so the numbers are the ones ``cds train`` / ``cds evaluate`` give):

1. :func:`train` -- ``<task module>.train(data_dir, out_dir, seed, quick, epochs)``: a MONAI bundle
   with its card (operating point chosen on tuning/validation data, performance from ``evaluate``).
2. :func:`evaluate` + :func:`metrics_table` -- the task module's ``evaluate``: AUROC, sensitivity,
   specificity, accuracy with 95 % bootstrap CIs (patient-level where the data have patient ids).
3. :func:`score_cases` -- per-case scores on two disjoint parts of the data the weights were not fitted
   on: ``calibration`` (to fit the calibrator) and ``test`` (to measure it). Which parts:

   ============================  ==========================================  ==============================
   task / data                   calibration part                            test part
   ============================  ==========================================  ==============================
   pneumonia, .npz with test_    ``val_`` arrays                             ``test_`` arrays
   pneumonia, .npz without test_ half of ``val_`` (class-stratified hash      the other half
                                 of the array index, salt ``cds-model-lab``)
   cxr-cardiomegaly, the         the validation patients of the bundle's     the held-out test patients
   training folder               ``configs/training_manifest.json``          (not in the manifest)
   cxr-cardiomegaly, another     half of the patients (stratified hash of     the other half
   folder                        the patient id)
   ============================  ==========================================  ==============================

4. :func:`fit_calibration` -- :func:`cds.evaluation.calibration.fit_calibrator` on the calibration part; judge it
   with :func:`cds.evaluation.calibration.calibration_table` / :func:`cds.evaluation.calibration.plot_reliability` on the
   test part.
5. :func:`misclassified` / :func:`gradcam_errors` / :func:`plot_gradcam_errors` -- GradCAM
   (``monai.visualize.GradCAM``) on the most confident errors of the test part.
6. :func:`export_bundle` -- a new bundle (own model id) whose ``network_def`` wraps the trained network
   in :func:`cds.evaluation.calibration.calibrated_network`, so every ``predict``/``evaluate``/registry run returns
   calibrated probabilities; threshold and indeterminate band are mapped through the calibrator (the
   same decisions); the card records the calibration (``cds.evaluation.calibration``, ``cds.calibrated``) and its
   performance is re-measured by the task module's ``evaluate``.
7. :func:`register` -- copy the bundle folder into a models directory (what
   :class:`cds.models.registry.ModelRegistry` scans: ``$CDS_MODELS_DIR`` or ``~/.cds/models``).

Only the 2D CNN tasks with GradCAM are supported: ``pneumonia`` and ``cxr-cardiomegaly``
(:data:`TASKS`). Training is from scratch (the task modules offer no fine-tuning entry point).

>>> TASKS
('pneumonia', 'cxr-cardiomegaly')
>>> check_task("cxr-icu")
Traceback (most recent call last):
...
cds.errors.ParameterError: task: 'cxr-icu' is not supported by the model lab; use one of pneumonia, cxr-cardiomegaly
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ParameterError
from cds.evaluation.calibration import METHODS, Calibrator, calibration_table, fit_calibrator
from cds.params import Param

__all__ = [
    "TASKS",
    "PARAMETERS",
    "CaseSet",
    "check_task",
    "task_module",
    "data_dir_for",
    "train",
    "training_summary",
    "evaluate",
    "metrics_table",
    "score_cases",
    "cases_summary",
    "fit_calibration",
    "calibration_checks",
    "misclassified",
    "gradcam_errors",
    "plot_gradcam_errors",
    "export_bundle",
    "card_summary",
    "register",
]

TASKS = ("pneumonia", "cxr-cardiomegaly")
_DATA_SETS = {"pneumonia": "medmnist", "cxr-cardiomegaly": "nih-cxr14-thumbs64"}
_SAMPLE_SETS = {"pneumonia": "pneumoniamnist"}  # shipped subsets (cds.locations.SAMPLE_DATA_FILES)
_SALT = "cds-model-lab"
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9\-.]{0,62}$")
LAB_KEY = "model_lab"

#: Parameters of notebooks/model_lab.ipynb (checked by :func:`cds.params.validate_parameters`).
PARAMETERS: dict[str, Param] = {
    "task": Param(str, "pneumonia", check=lambda v: v in TASKS, hint=f"one of {', '.join(TASKS)}"),
    "data_dir": Param(str, None, nullable=True, hint="a folder laid out like the task's shared data set"),
    "calibration_method": Param(str, "temperature", check=lambda v: v in METHODS, hint=f"one of {METHODS}"),
    "models_dir": Param(str, "out/model_lab/models"),
    "work_dir": Param(str, "out/model_lab"),
    "model_id": Param(str, None, nullable=True, check=lambda v: bool(_MODEL_ID.match(v)),
                      hint="lower-case letters, digits, '-' or '.'"),
    "seed": Param(int, 0, check=lambda v: v >= 0, hint=">= 0"),
    "quick": Param(bool, False),
    "epochs": Param(int, 2, check=lambda v: 1 <= v <= 200, hint="1-200 (ignored when quick=True)"),
    "n_boot": Param(int, 500, check=lambda v: 50 <= v <= 20000, hint="50-20000"),
    "n_gradcam": Param(int, 6, check=lambda v: 0 <= v <= 24, hint="0-24"),
}


def check_task(task: str) -> str:
    """``task`` if the model lab supports it, else :class:`ParameterError` naming ``task``."""
    if task not in TASKS:
        raise ParameterError("task", f"{task!r} is not supported by the model lab; use one of {', '.join(TASKS)}")
    return task


def task_module(task: str) -> Any:
    """The :mod:`cds.models.tasks` module of a supported task (``cxr-cardiomegaly`` -> ``cxr_cardiomegaly``).

    >>> task_module("pneumonia").__name__
    'cds.models.tasks.pneumonia'
    """
    from cds.models.task_table import TASK_MODULES

    return TASK_MODULES[check_task(task)]


def data_dir_for(task: str, data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else the task's shipped sample subset, else its shared data set.

    ``pneumonia`` ships a small PneumoniaMNIST subset (:func:`cds.locations.sample_data_file`) that only
    demonstrates the workflow; ``cxr-cardiomegaly`` ships none, so ``None`` means its set in
    ``$CDS_SHARED_DATA`` or ``<repo>/../shared/data``.

    >>> data_dir_for("pneumonia").name
    'pneumoniamnist_sample.npz'
    """
    from cds.models.tasks.inputs import default_data_dir

    check_task(task)
    if data_dir is None and task in _SAMPLE_SETS:
        from cds.locations import sample_data_file

        return sample_data_file(_SAMPLE_SETS[task])
    p = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(_DATA_SETS[task])
    if not p.exists():
        raise ParameterError("data_dir", f"{p} does not exist (expected a folder laid out like shared/data/"
                                         f"{_DATA_SETS[task]})")
    return p


# ------------------------------------------------------------------------------------------ training
def train(task: str, data_dir: str | Path | None, out_dir: str | Path, seed: int = 0, quick: bool = True,
          epochs: int | None = None) -> dict[str, Any]:
    """Train ``task`` from scratch into ``out_dir`` (a bundle folder). Returns path, seconds and settings.

    ``quick=True`` is the task module's test setting (1 epoch, narrow network); otherwise ``epochs``
    (None: the module's default).
    """
    mod = task_module(task)
    data = data_dir_for(task, data_dir)
    kwargs: dict[str, Any] = {"seed": int(seed), "quick": bool(quick)}
    if epochs is not None and not quick:
        kwargs["epochs"] = int(epochs)
    out = Path(out_dir)
    if out.exists():
        _remove_own_folder(out)
    t0 = time.perf_counter()
    path = Path(mod.train(data, out, **kwargs))
    seconds = round(time.perf_counter() - t0, 1)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["cds"][LAB_KEY] = {"role": "trained", "created_by": "cds.studies.model_lab.train", "seconds": seconds}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {"bundle": path, "seconds": seconds, "task": task, **kwargs}


def _remove_own_folder(path: Path) -> None:
    """Delete a bundle folder this lab wrote earlier (its card has a ``model_lab`` section); refuse anything else."""
    from cds.models.registry import BUILTIN_DIR

    meta = path / "configs" / "metadata.json"
    ok = False
    if meta.is_file() and BUILTIN_DIR.resolve() not in path.resolve().parents:
        try:
            card = json.loads(meta.read_text()).get("cds", {})
        except (OSError, ValueError):
            card = {}
        ok = LAB_KEY in card
    if not ok:
        raise ParameterError(str(path), "exists and was not written by the model lab; choose another folder "
                                        "or remove it yourself")
    shutil.rmtree(path)


def training_summary(bundle_dir: str | Path) -> pd.DataFrame:
    """What the card says about training: data, split, counts, epochs, seed, recipe, command."""
    from cds.models.bundle import load_bundle

    td = load_bundle(bundle_dir).model_card.training_data
    keys = ("name", "path", "split", "n", "n_positive", "epochs", "seed", "recipe", "training_command")
    return pd.DataFrame({"value": [td.get(k) for k in keys]}, index=list(keys))


def evaluate(task: str, data_dir: str | Path | None, bundle_dir: str | Path, n_boot: int = 1000) -> dict[str, Any]:
    """The task module's ``evaluate`` (the numbers a card holds) on ``data_dir``."""
    return task_module(task).evaluate(data_dir_for(task, data_dir), bundle_dir, n_boot=int(n_boot))


def metrics_table(result: dict[str, Any]) -> pd.DataFrame:
    """An ``evaluate`` result's metrics as rows: value, 95 % CI, threshold.

    >>> metrics_table({"metrics": {"auroc": {"value": 0.9, "ci95": [0.8, 0.95]}}})
           value  ci95_low  ci95_high threshold
    auroc    0.9       0.8       0.95      None
    """
    rows = {}
    for name, m in result["metrics"].items():
        ci = m.get("ci95") or [None, None]
        rows[name] = {"value": m.get("value"), "ci95_low": ci[0], "ci95_high": ci[1], "threshold": m.get("threshold")}
    return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class CaseSet:
    """Cases of one part of a data set with the model's logits (images prepared as the model sees them)."""

    name: str
    how: str
    ids: np.ndarray
    y: np.ndarray
    images: np.ndarray
    tabular: np.ndarray | None = None
    groups: np.ndarray | None = None
    logits: np.ndarray | None = None

    @property
    def p(self) -> np.ndarray:
        """Model probabilities (sigmoid of the logits)."""
        from cds.models.networks import sigmoid

        if self.logits is None:
            raise ParameterError("cases", f"part {self.name!r} has not been scored (use score_cases)")
        return sigmoid(self.logits)

    def __len__(self) -> int:
        return len(self.y)


def _hash_halves(ids: list[str], labels: dict[str, int]) -> dict[str, str]:
    from cds.models.tasks.inputs import stratified_hash_split

    split = stratified_hash_split(ids, labels, (0.5, 0.0, 0.5), salt=_SALT)
    return {k: ("calibration" if v == "train" else "test") for k, v in split.items()}


def _pneumonia_parts(data: Path) -> dict[str, CaseSet]:
    from cds.models.tasks import pneumonia
    from cds.models.tasks.inputs import DataLayoutError, prepare_image

    loaded = {}
    for split in ("val", "test"):
        try:
            loaded[split] = pneumonia.load_split(data, split)
        except DataLayoutError:
            continue

    def load(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        imgs, y, used, _ = loaded[split]
        x = np.stack([prepare_image(a, pneumonia.IMAGE_SIZE) for a in imgs])
        return x, y, np.array([f"{used}_{i:05d}" for i in range(len(y))])

    if "test" in loaded and "val" in loaded:
        xc, yc, ic = load("val")
        xt, yt, it = load("test")
        return {"calibration": CaseSet("calibration", "val_ arrays", ic, yc, xc),
                "test": CaseSet("test", "test_ arrays", it, yt, xt)}
    if "val" not in loaded:
        raise ParameterError("data_dir", f"{data}: needs val_ (or val_ and test_) arrays; train_ alone holds the "
                                         "model's own training images")
    split = "val"
    x, y, ids = load(split)
    half = _hash_halves(list(ids), dict(zip(ids, y.tolist(), strict=True)))
    out = {}
    for part in ("calibration", "test"):
        m = np.array([half[i] == part for i in ids])
        how = (f"{'one' if part == 'calibration' else 'the other'} half of the {split}_ arrays (class-stratified "
               f"sha256 hash of the array index, salt {_SALT!r})")
        out[part] = CaseSet(part, how, ids[m], y[m], x[m])
    return out


def _cardiomegaly_parts(data: Path, bundle_dir: Path) -> dict[str, CaseSet]:
    from cds.models.tasks import cxr_cardiomegaly as cm
    from cds.models.tasks.inputs import name_hash, prepare_image, read_gray

    df = cm.load_labels(data)
    man_path = Path(bundle_dir) / "configs" / "training_manifest.json"
    man = json.loads(man_path.read_text()) if man_path.is_file() else {"patients": {}, "images": {}}
    pat = df["Patient ID"].map(name_hash)
    train_p, val_p = set(man["patients"].get("train", [])), set(man["patients"].get("val", []))
    overlap = bool(pat.isin(train_p | val_p).any())
    if overlap:
        part = np.where(pat.isin(val_p), "calibration", np.where(pat.isin(train_p), "", "test"))
        how = {"calibration": "validation patients of the bundle's training manifest (used for the threshold, "
                              "not for the weights)",
               "test": "held-out test patients (in neither training nor validation)"}
    else:
        pat_label = df.groupby("Patient ID")["Cardiomegaly"].max().to_dict()
        half = _hash_halves(list(pat_label), pat_label)
        part = df["Patient ID"].map(half).to_numpy()
        how = {p: f"{'one' if p == 'calibration' else 'the other'} half of the patients (stratified sha256 hash "
                  f"of the patient id, salt {_SALT!r})" for p in ("calibration", "test")}
    out = {}
    for name in ("calibration", "test"):
        sub = df[part == name].reset_index(drop=True)
        x = (np.stack([prepare_image(read_gray(p), cm.IMAGE_SIZE, where=p) for p in sub["path"]])
             if len(sub) else np.zeros((0, cm.IMAGE_SIZE, cm.IMAGE_SIZE), np.float32))
        tab = (np.stack([cm.tabular_inputs(a, s) for a, s in zip(sub["Patient Age"], sub["Patient Gender"],
                                                                  strict=True)])
               if len(sub) else np.zeros((0, 2), np.float32))
        out[name] = CaseSet(name, how[name], sub["image"].to_numpy(), sub["Cardiomegaly"].to_numpy().astype(int),
                            x, tab, sub["Patient ID"].to_numpy())
    return out


def score_cases(task: str, data_dir: str | Path | None, bundle_dir: str | Path) -> dict[str, CaseSet]:
    """The ``calibration`` and ``test`` parts (see the module docstring) with the bundle's logits."""
    from cds.models.bundle import load_bundle
    from cds.models.networks import predict_logits

    data = data_dir_for(task, data_dir)
    parts = _pneumonia_parts(data) if check_task(task) == "pneumonia" else _cardiomegaly_parts(data, Path(bundle_dir))
    net = load_bundle(bundle_dir).network()
    out = {}
    for name, cs in parts.items():
        if len(cs) == 0:
            raise ParameterError("data_dir", f"{data}: the {name} part ({cs.how}) is empty")
        out[name] = replace(cs, logits=predict_logits(net, cs.images, cs.tabular).astype(np.float64))
    return out


def cases_summary(cases: dict[str, CaseSet]) -> pd.DataFrame:
    """Cases, positives and patients per part, and how each part was chosen."""
    rows = {}
    for name, cs in cases.items():
        rows[name] = {"cases": len(cs), "positive": int(cs.y.sum()),
                      "patients": int(len(np.unique(cs.groups))) if cs.groups is not None else None, "how": cs.how}
    return pd.DataFrame.from_dict(rows, orient="index")


# ------------------------------------------------------------------------------------- calibration
def fit_calibration(cases: dict[str, CaseSet], method: str) -> Calibrator:
    """Fit ``method`` on the ``calibration`` part (logits for temperature scaling)."""
    cs = cases["calibration"]
    return fit_calibrator(method, cs.y, cs.p, description=f"{cs.name} part: {cs.how}", logits=cs.logits)


def calibration_checks(cal: Calibrator, cases: dict[str, CaseSet], threshold: float | None) -> dict[str, Any]:
    """On the test part: AUROC before == after (ranking kept) and the same decisions at the mapped threshold."""
    from cds.evaluation.metrics import auroc

    t = cases["test"]
    before, after = t.p, cal.transform(t.p)
    out = {"auroc_unchanged": bool(abs(auroc(t.y, before) - auroc(t.y, after)) < 1e-9)}
    if threshold is not None:
        t2 = cal.transform_threshold(threshold)
        # a few ulps of slack only: a wider one (1e-9) flips cases within ~1e-6 of the threshold, since the
        # blended isotonic map has slope ~1e-3 on its flat steps
        out["decisions_unchanged"] = bool(np.array_equal(before >= threshold, after >= t2 - 1e-13))
    return out


def calibration_report(cal: Calibrator, cases: dict[str, CaseSet], n_bins: int = 10, n_boot: int = 500,
                       seed: int = 0) -> pd.DataFrame:
    """ECE, Brier (bootstrap 95 % CIs) and AUROC on the test part, before and after calibration."""
    t = cases["test"]
    return calibration_table(t.y, {"before": t.p, "after": cal.transform(t.p)}, n_bins=n_bins, n_boot=n_boot,
                             seed=seed, groups=t.groups)


# ---------------------------------------------------------------------------------------- GradCAM
def misclassified(cs: CaseSet, threshold: float, p: np.ndarray | None = None) -> pd.DataFrame:
    """Errors at ``threshold``: false positives and negatives, most confident first (ties by id)."""
    prob = cs.p if p is None else np.asarray(p, float)
    call = prob >= threshold
    wrong = call != cs.y.astype(bool)
    df = pd.DataFrame({"id": cs.ids, "truth": cs.y, "probability": prob.round(4), "index": np.arange(len(cs))})
    df = df[wrong].assign(error=np.where(call[wrong], "false positive", "false negative"),
                          margin=np.abs(prob[wrong] - threshold).round(4))
    return df.sort_values(["margin", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def gradcam_errors(bundle_dir: str | Path, cs: CaseSet, threshold: float, k: int = 6,
                   p: np.ndarray | None = None) -> list[dict[str, Any]]:
    """GradCAM maps (``cds.models.explain.gradcam_map``) of the ``k`` most confident errors."""
    from cds.models.bundle import load_bundle
    from cds.models.explain import gradcam_map

    net = load_bundle(bundle_dir).network()
    errs = misclassified(cs, threshold, p).head(int(k))
    out = []
    for r in errs.itertuples(index=False):
        tab = cs.tabular[r.index] if cs.tabular is not None else None
        cam = gradcam_map(net, cs.images[r.index], tab)
        out.append({"id": r.id, "truth": int(r.truth), "probability": float(r.probability), "error": r.error,
                    "image": cs.images[r.index], "cam": cam, "cam_empty": bool(np.max(cam) <= 0.0)})
    return out


def plot_gradcam_errors(items: list[dict[str, Any]], ncols: int = 3, title: str = "") -> Any:
    """For each error (``gradcam_errors``): the image as the model sees it, and its GradCAM overlay
    (colour scale 0-1: red = regions that raised the score most)."""
    import matplotlib.pyplot as plt

    n = max(1, len(items))
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2.2 * 2 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    im = None
    for k, it in enumerate(items):
        r, c = divmod(k, ncols)
        a0, a1 = axes[r, 2 * c], axes[r, 2 * c + 1]
        a0.imshow(it["image"], cmap="gray", vmin=0, vmax=1)
        a0.set_title(f"{it['id']}\n{it['error']}, p={it['probability']:.2f}", fontsize=8)
        a1.imshow(it["image"], cmap="gray", vmin=0, vmax=1)
        im = a1.imshow(it["cam"], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        a1.set_title("GradCAM" + (" (empty)" if it.get("cam_empty") else ""), fontsize=8)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no errors at the threshold", ha="center", va="center")
    fig.suptitle(title or "GradCAM on misclassified test cases", fontsize=10)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="GradCAM")
    return fig


# ------------------------------------------------------------------------------------ export/register
def export_bundle(task: str, trained_dir: str | Path, out_root: str | Path, cal: Calibrator, model_id: str,
                  data_dir: str | Path | None = None, n_boot: int = 1000, version: str = "0.1.0",
                  calibration_result: pd.DataFrame | None = None, seed: int | None = None) -> Path:
    """Write ``out_root/<model_id>``: the trained bundle with the calibrator built into its network.

    The card gets ``model_id``, ``version``, ``calibrated`` (True unless the method is ``none``),
    ``calibration`` (method, parameters, fitting data, test-part ECE/Brier before and after, where it
    is applied), the threshold and band mapped through the calibrator, ``derived_from``, and a
    performance section re-measured by the task module's ``evaluate`` on ``data_dir``. An existing
    folder is replaced only if the model lab wrote it.
    """
    import torch

    from cds.locations import display_path
    from cds.models.bundle import load_bundle
    from cds.models.card_files import write_performance
    from cds.models.registry import ModelRegistry

    check_task(task)
    if not _MODEL_ID.match(model_id):
        raise ParameterError("model_id", f"{model_id!r}: use lower-case letters, digits, '-' or '.'")
    if model_id in ModelRegistry(user_dirs=[]).ids():
        raise ParameterError("model_id", f"{model_id!r} is a built-in model id; choose another (e.g. "
                                         f"'{model_id}-lab') so the registry does not hide your model")
    src = load_bundle(trained_dir)
    dst = Path(out_root) / model_id
    if dst.exists():
        _remove_own_folder(dst)
    shutil.copytree(src.path, dst)
    inf = json.loads((dst / "configs" / "inference.json").read_text())
    base_def = inf["network_def"]
    inf["network_def"] = {"_target_": "cds.evaluation.calibration.calibrated_network", "method": cal.method,
                          "params": cal.to_dict()["params"], "base": base_def}
    (dst / "configs" / "inference.json").write_text(json.dumps(inf, indent=2) + "\n")
    state = torch.load(src.weights_path, map_location="cpu", weights_only=True)
    torch.save({f"base.{k}": v for k, v in state.items()}, dst / "models" / src.model_card.weights)

    meta = json.loads((dst / "configs" / "metadata.json").read_text())
    card = meta["cds"]
    t_old, band_old = src.model_card.threshold, src.model_card.indeterminate  # dst is a copy of src
    band_old = list(band_old) if band_old else None
    card["model_id"] = model_id
    card["threshold"] = cal.transform_threshold(t_old)
    if band_old:
        card["indeterminate"] = [cal.transform_threshold(v) for v in band_old]
    card["calibrated"] = cal.method != "none"
    evaluation = None
    if calibration_result is not None:
        evaluation = json.loads(calibration_result.reset_index().to_json(orient="records"))
    card["calibration"] = {
        **cal.to_dict(),
        "applied_in": "configs/inference.json network_def (cds.evaluation.calibration.calibrated_network): predict(), "
                      "evaluate() and registry runs return calibrated probabilities",
        "threshold_before_calibration": t_old,
        "indeterminate_before_calibration": band_old,
        "mapping_note": "threshold and band are mapped through the same monotone map: decisions are unchanged",
        "evaluation_on_test_part": evaluation,
        "metric_definitions": "ECE: equal-width 10 bins, case-weighted |observed - mean predicted|; Brier: mean "
                              "squared error; 95 % percentile bootstrap CIs",
    }
    card["derived_from"] = {"model_id": src.model_id, "version": src.version, "task": task,
                            "trained_bundle": display_path(src.path)}
    card[LAB_KEY] = {"role": "export", "created_by": "cds.studies.model_lab.export_bundle", "seed": seed,
                     "notebook": "notebooks/model_lab.ipynb"}
    meta["name"] = f"{model_id} ({task}, {cal.method} calibration, model lab)"
    meta["version"] = version
    meta["changelog"] = {version: f"model lab export of {src.model_id} {src.version} with {cal.method} calibration"}
    (dst / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    result = evaluate(task, data_dir, dst, n_boot=n_boot)
    write_performance(dst, result)  # docs/README.md, its Calibration section included, from the one card renderer
    return dst


def card_summary(bundle_dir: str | Path) -> dict[str, Any]:
    """The card fields a reviewer looks at first (id, task, calibration, operating point, data, metrics)."""
    from cds.models.bundle import load_bundle

    b = load_bundle(bundle_dir)
    c = b.model_card
    cal, perf = c.calibration, c.performance
    return {
        "model_id": b.model_id, "version": b.version, "task": c.task, "calibrated": c.calibrated,
        "calibration_method": cal.get("method"),
        "temperature": (cal.get("params") or {}).get("temperature"),
        "threshold": c.threshold, "indeterminate": list(c.indeterminate) if c.indeterminate else None,
        "derived_from": f"{c.derived_from.get('model_id')} {c.derived_from.get('version')}",
        "performance_data": perf.get("data"), "performance_split": perf.get("split"),
        "auroc": (perf.get("metrics") or {}).get("auroc"),
        "limitations": len(c.limitations),
    }


def register(bundle_dir: str | Path, models_dir: str | Path, overwrite: bool = False) -> Path:
    """Copy a bundle folder into ``models_dir`` and check :class:`cds.models.registry.ModelRegistry` lists it.

    ``overwrite=True`` replaces an earlier folder of the same name only if the model lab wrote it.
    Returns the registered folder.
    """
    from cds.models.bundle import load_bundle
    from cds.models.registry import ModelRegistry

    b = load_bundle(bundle_dir)
    root = Path(models_dir).expanduser()
    dst = root / b.path.name
    if dst.resolve() == b.path.resolve():
        raise ParameterError("models_dir", f"{root} already holds this bundle folder; register from another folder")
    if dst.exists():
        if not overwrite:
            raise ParameterError("models_dir", f"{dst} exists; pass overwrite=True to replace it")
        _remove_own_folder(dst)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(b.path, dst)
    reg = ModelRegistry(user_dirs=[root])
    if b.model_id not in reg.ids():
        raise ParameterError("models_dir", f"{dst}: copied, but the registry does not list {b.model_id!r}: "
                                           + "; ".join(reg.errors))
    return dst
