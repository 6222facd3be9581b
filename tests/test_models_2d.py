"""The 2D reference models: pneumonia, cxr-cardiomegaly, cxr-icu (train, evaluate, predict, findings).

Quick trainings (tiny settings) run end to end into temporary folders; the shipped bundles are
loaded, run on real images, and their card numbers are checked against a fresh ``evaluate``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ModelInputError, ParameterError
from cds.finding import Finding
from cds.models.bundle import load_bundle
from cds.models.tasks import cxr_cardiomegaly, cxr_icu, pneumonia
from cds.models.tasks.inputs import DataLayoutError, read_gray

pytestmark = pytest.mark.shared

MODULES = {"pneumonia": pneumonia, "cxr-cardiomegaly": cxr_cardiomegaly, "cxr-icu": cxr_icu}
DATA = {"pneumonia": "medmnist", "cxr-cardiomegaly": "nih-cxr14-thumbs64", "cxr-icu": "hannover-covid19-cxr"}
SCHEMA = {"task", "model_id", "model_version", "data", "split", "n_cases", "n_patients", "metrics",
          "evaluation_command"}


def _check_schema(result: dict, task: str) -> None:
    assert SCHEMA <= set(result), SCHEMA - set(result)
    assert result["task"] == task
    json.dumps(result, allow_nan=False)  # JSON-ready, no NaN
    assert "auroc" in result["metrics"]
    for name, m in result["metrics"].items():
        if m["value"] is None:
            continue
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi, (name, m)
        assert 0.0 <= lo <= hi <= 1.0, (name, m)


@pytest.fixture(scope="module")
def quick_bundles(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {task: mod.train(shared_data / DATA[task], out / task, seed=0, quick=True) for task, mod in MODULES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(MODULES))
def test_quick_training_writes_a_bundle_whose_card_matches_evaluate(task: str, quick_bundles: dict, shared_data: Path):
    path = quick_bundles[task]
    b = load_bundle(path)
    card = b.card
    assert b.model_id == task and card["task"] == task
    for key in ("intended_use", "proxy_for", "limitations", "inputs", "outputs", "threshold", "indeterminate",
                "training_data", "performance"):
        assert card.get(key) not in (None, "", []), key
    lo, hi = card["indeterminate"]
    assert lo <= card["threshold"] <= hi
    assert b.network() is not None
    assert (path / "docs" / "README.md").read_text().count("Performance") == 1
    result = MODULES[task].evaluate(shared_data / DATA[task], path, n_boot=200)
    _check_schema(result, task)
    assert result["metrics"] == card["performance"]["metrics"]
    assert result["evaluation_command"].startswith(f"cds evaluate {task} --data ")


def test_quick_training_is_deterministic(shared_data: Path, tmp_path: Path, quick_bundles: dict):
    import torch

    again = pneumonia.train(shared_data / "medmnist", tmp_path / "again", seed=0, quick=True)
    a = torch.load(quick_bundles["pneumonia"] / "models" / "model.pt", weights_only=True)
    b = torch.load(again / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------- shipped bundles
RERUN_N_BOOT = 300
"""Resamples of the card rerun: the card used 2000; point estimates do not depend on it, CI ends do."""


def _card_equal_up_to_bootstrap(got: object, card: object, where: str = "performance") -> None:
    """``got`` equals ``card`` except bootstrap-dependent parts: ``n_boot`` (usable resamples) is the rerun's,
    and each ``ci95`` end may move by Monte Carlo error. The SD of a 2.5 % / 97.5 %
    percentile from B resamples is about 0.19 x (CI width) / sqrt(B / 200); 0.3 x width (plus rounding)
    is more than 4 SD at B = 300 and still catches a real change of the interval."""
    if isinstance(card, dict):
        assert isinstance(got, dict) and set(got) == set(card), (where, set(got) ^ set(card or {}))
        for k, v in card.items():
            if k == "n_boot":  # resamples with one class only are dropped: at most the requested number
                assert got[k] <= RERUN_N_BOOT and abs(got[k] / RERUN_N_BOOT - v / 2000) <= 0.1, (where, got[k], v)
            elif k == "ci95" and isinstance(v, list) and None not in v:
                tol = 0.3 * (v[1] - v[0]) + 2e-4
                assert all(abs(g - c) <= tol for g, c in zip(got[k], v, strict=True)), (where, got[k], v, tol)
            else:
                _card_equal_up_to_bootstrap(got[k], v, f"{where}.{k}")
    elif isinstance(card, list):
        assert isinstance(got, list) and len(got) == len(card), where
        for i, (g, c) in enumerate(zip(got, card, strict=True)):
            _card_equal_up_to_bootstrap(g, c, f"{where}[{i}]")
    else:
        assert got == card, (where, got, card)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(MODULES))
def test_shipped_card_numbers_equal_a_rerun_of_evaluate(task: str, shared_data: Path):
    mod = MODULES[task]
    b = load_bundle(mod.default_bundle_dir())
    perf = b.card["performance"]
    result = mod.evaluate(shared_data / DATA[task], n_boot=RERUN_N_BOOT)
    _check_schema(result, task)
    assert perf["bootstrap"]["n_boot"] == 2000 and result["bootstrap"]["n_boot"] == RERUN_N_BOOT
    rerun = {k: result.get(k) for k in perf if k != "bootstrap"}
    _card_equal_up_to_bootstrap(rerun, {k: v for k, v in perf.items() if k != "bootstrap"})
    assert (result["n_cases"], result["split"]) == (perf["n_cases"], perf["split"])
    assert result["evaluation_command"] == perf["evaluation_command"]


def test_the_card_comparison_catches_changes() -> None:
    card = {"auroc": {"value": 0.8, "ci95": [0.7, 0.9], "n_boot": 2000}}
    _card_equal_up_to_bootstrap({"auroc": {"value": 0.8, "ci95": [0.71, 0.89], "n_boot": RERUN_N_BOOT}}, card)
    for bad in ({"auroc": {"value": 0.8001, "ci95": [0.7, 0.9], "n_boot": RERUN_N_BOOT}},
                {"auroc": {"value": 0.8, "ci95": [0.6, 0.9], "n_boot": RERUN_N_BOOT}},
                {"auroc": {"value": 0.8, "ci95": [0.7, 0.9], "n_boot": RERUN_N_BOOT, "extra": 1}}):
        with pytest.raises(AssertionError):
            _card_equal_up_to_bootstrap(bad, card)


@pytest.mark.parametrize("task", list(MODULES))
def test_shipped_bundle_is_small_and_complete(task: str):
    path = MODULES[task].default_bundle_dir()
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (path / f).is_file(), f
    total = sum(p.stat().st_size for p in (path / "models").iterdir())
    assert total < 3_000_000
    card = load_bundle(path).card
    assert card["training_data"]["training_command"].startswith(f"cds train {task} ")
    assert "--quick" not in card["training_data"]["training_command"]


def test_pneumonia_predicts_a_real_image_with_gradcam(shared_data: Path):
    z = np.load(shared_data / "medmnist" / pneumonia.DATA_FILE)
    b = load_bundle(pneumonia.default_bundle_dir())
    pos = int(np.flatnonzero(z["val_labels"][:, 0] == 1)[0])
    neg = int(np.flatnonzero(z["val_labels"][:, 0] == 0)[0])
    p_pos = pneumonia.predict(b, z["val_images"][pos], {})
    p_neg = pneumonia.predict(b, z["val_images"][neg], {}, gradcam=False)
    assert p_pos["probability"] > p_neg["probability"]
    assert p_pos["gradcam"].shape == (28, 28) and 0.0 <= p_pos["gradcam"].min() <= p_pos["gradcam"].max() <= 1.0
    big = pneumonia.predict(b, np.kron(z["val_images"][pos], np.ones((8, 8), np.uint8)), None)
    assert big["gradcam"].shape == (224, 224)
    (f,) = pneumonia.to_findings(b, p_pos, "pat-1", "1.2.3", "1.2.3.4", ["1.2.3.4.5"])
    assert isinstance(f, Finding) and f.code == "233604007" and f.threshold == b.card["threshold"]
    assert f.interpretation in ("positive", "indeterminate")
    assert Finding.from_dict(json.loads(json.dumps(f.to_dict()))) == f


def test_cardiomegaly_predicts_with_age_and_sex(shared_data: Path):
    b = load_bundle(cxr_cardiomegaly.default_bundle_dir())
    img = read_gray(shared_data / "nih-cxr14-thumbs64" / "png" / "00000002_000.png")
    by_name = cxr_cardiomegaly.predict(b, img, {"age": 81, "sex": "male"})
    by_source = cxr_cardiomegaly.predict(b, img, {"patient.age_years": 81, "patient.sex": "M"}, gradcam=False)
    assert by_name["probability"] == pytest.approx(by_source["probability"])
    assert by_name["gradcam"].shape == img.shape
    assert by_name["ehr_used"] == {"age": 81, "sex": "male"}
    (f,) = cxr_cardiomegaly.to_findings(b, by_name, "p", "1.2", ehr_inputs=by_name["ehr_used"])
    assert (f.code, f.display, f.ehr_inputs["age"]) == ("8186001", "Cardiomegaly", 81)


def test_cardiomegaly_missing_ehr_input_is_named(shared_data: Path):
    b = load_bundle(cxr_cardiomegaly.default_bundle_dir())
    img = read_gray(shared_data / "nih-cxr14-thumbs64" / "png" / "00000002_000.png")
    with pytest.raises(ModelInputError, match="^sex: EHR input missing"):
        cxr_cardiomegaly.predict(b, img, {"age": 60})
    with pytest.raises(ModelInputError, match="^age:"):
        cxr_cardiomegaly.predict(b, img, {"sex": "F"})
    with pytest.raises(ModelInputError, match="^sex: sex must be male/female"):
        cxr_cardiomegaly.predict(b, img, {"age": 60, "sex": "unknown"})
    with pytest.raises(ModelInputError, match="^image_array:"):
        cxr_cardiomegaly.predict(b, np.zeros((4, 4, 2)), {"age": 60, "sex": "F"})


def _icu_ehr(card: dict) -> dict:
    return {e["name"]: None for e in card["inputs"]["ehr"]}


def test_icu_predicts_and_requires_every_declared_lab(shared_data: Path):
    b = load_bundle(cxr_icu.default_bundle_dir())
    card = b.card
    assert card["prognostic"] is True and card["outputs"][0]["code"] == "305351004"
    sources = {e["source"] for e in card["inputs"]["ehr"]}
    assert {"observation:1988-5", "observation:2532-0", "observation:11556-8"} <= sources
    img = read_gray(shared_data / "hannover-covid19-cxr" / "png" / "6b5af975.png")
    ehr = _icu_ehr(card) | {"crp": 6.0, "ldh": 295.0, "po2": 165.0, "d_dimer": ">35"}
    pred = cxr_icu.predict(b, img, ehr)
    assert 0.0 < pred["probability"] < 1.0 and pred["gradcam"] is None
    assert set(pred["contributions"]) == set(b.inference["feature_recipe"]["feature_names"])
    by_source = {f"observation:{e['code']}": ehr[e["name"]] for e in card["inputs"]["ehr"]}
    assert cxr_icu.predict(b, img, by_source)["probability"] == pytest.approx(pred["probability"])
    (f,) = cxr_icu.to_findings(b, pred, "p", "1.2", ehr_inputs=pred["ehr_used"])
    assert f.prognostic and f.code == "305351004" and f.threshold == 0.5
    assert f.explanation.startswith("Prognostic logistic model") and set(f.extra["contributions"]) == set(
        pred["contributions"])
    json.dumps(f.to_dict(), allow_nan=False)
    missing = {k: v for k, v in ehr.items() if k != "po2"}
    with pytest.raises(ModelInputError, match="^po2: EHR input missing"):
        cxr_icu.predict(b, img, missing)
    with pytest.raises(ModelInputError, match="^crp:"):
        cxr_icu.predict(b, img, ehr | {"crp": "high"})


# ---------------------------------------------------------------------- other folders / layouts
def test_pneumonia_evaluate_prefers_test_arrays(shared_data: Path, tmp_path: Path):
    z = np.load(shared_data / "medmnist" / pneumonia.DATA_FILE)
    f = tmp_path / "other.npz"
    np.savez(f, train_images=z["train_images"][:50], train_labels=z["train_labels"][:50],
             test_images=z["val_images"][:60], test_labels=z["val_labels"][:60])
    r = pneumonia.evaluate(f, n_boot=100)
    assert (r["split"], r["n_cases"]) == ("test_", 60)
    r = pneumonia.evaluate(f, n_boot=100, split="train")
    assert (r["split"], r["n_cases"]) == ("train_", 50)
    np.savez(tmp_path / "bad.npz", val_images=z["val_images"][:5])
    with pytest.raises(DataLayoutError, match="missing key 'val_labels'"):
        pneumonia.evaluate(tmp_path / "bad.npz")
    with pytest.raises(DataLayoutError, match="pneumoniamnist_balanced_subset_trainval.npz: file not found"):
        pneumonia.evaluate(tmp_path)
    with pytest.raises(ParameterError, match="^split:"):
        pneumonia.evaluate(f, split="holdout")


def _unseen_nih_folder(shared: Path, dst: Path, n_patients: int = 30) -> Path:
    import pandas as pd

    src = shared / "nih-cxr14-thumbs64"
    df = pd.read_csv(src / "labels.csv", dtype={"Patient ID": str})
    pats = sorted(df.loc[df["Cardiomegaly"] == 1, "Patient ID"].unique())[:4]
    pats += [p for p in sorted(df["Patient ID"].unique()) if p not in pats][: n_patients - len(pats)]
    sub = df[df["Patient ID"].isin(pats)].copy()
    (dst / "png").mkdir(parents=True)
    new_names = [f"unseen_{i:04d}.png" for i in range(len(sub))]
    for old, new in zip(sub["image"], new_names, strict=True):
        shutil.copy(src / "png" / old, dst / "png" / new)
    sub["image"] = new_names
    sub["Patient ID"] = "u" + sub["Patient ID"]
    sub.to_csv(dst / "labels.csv", index=False)
    return dst


def test_cardiomegaly_evaluates_every_image_of_an_unseen_folder(shared_data: Path, tmp_path: Path):
    folder = _unseen_nih_folder(shared_data, tmp_path / "nih")
    n = sum(1 for _ in (folder / "png").iterdir())
    r = cxr_cardiomegaly.evaluate(folder, n_boot=100)
    _check_schema(r, "cxr-cardiomegaly")
    assert (r["split"], r["n_cases"]) == ("all", n)
    assert {"image_only", "age_sex_only", "by_view_position"} <= set(r["comparisons"])
    assert "sensitivity_at_73_specificity" in r["metrics"]
    # the training folder itself is scored on its held-out test patients only
    card = load_bundle(cxr_cardiomegaly.default_bundle_dir()).card
    assert card["performance"]["split"] == "test"
    assert card["performance"]["n_cases"] == card["training_data"]["counts"]["test"]["images"]


def test_cardiomegaly_wrong_layout_names_file_and_column(shared_data: Path, tmp_path: Path):
    with pytest.raises(DataLayoutError, match="labels.csv: file not found"):
        cxr_cardiomegaly.evaluate(tmp_path)
    (tmp_path / "labels.csv").write_text("image,Patient ID,Patient Age,Patient Gender,View Position\na.png,1,50,F,PA\n")
    with pytest.raises(DataLayoutError, match="missing column.*'Cardiomegaly'"):
        cxr_cardiomegaly.evaluate(tmp_path)


def _unseen_hannover_folder(shared: Path, dst: Path, n_patients: int = 20) -> Path:
    import pandas as pd

    src = shared / "hannover-covid19-cxr"
    df = pd.read_csv(src / "data.csv", dtype={"patient_id": str, "image_id": str})
    pats = sorted(df["patient_id"].unique())[:n_patients]
    sub = df[df["patient_id"].isin(pats)].copy()
    (dst / "png").mkdir(parents=True)
    for img in sub["image_id"]:
        shutil.copy(src / "png" / f"{img}.png", dst / "png" / f"{img}.png")
    sub["patient_id"] = "new" + sub["patient_id"]
    sub.to_csv(dst / "data.csv", index=False)
    return dst


def test_icu_evaluates_an_unseen_folder_with_the_shipped_models(shared_data: Path, tmp_path: Path):
    folder = _unseen_hannover_folder(shared_data, tmp_path / "hannover")
    cohort, info = cxr_icu.load_cohort(folder)
    r = cxr_icu.evaluate(folder, n_boot=100)
    _check_schema(r, "cxr-icu")
    assert r["split"] == "all"
    assert r["n_cases"] == int((cohort["excluded"] == "").sum()) == len(cohort) - info["excluded"]["icu_before_first_radiograph"]
    assert {"image_only", "labs_only", "later_icu_only", "projection_ap_only"} <= set(r["comparisons"])
    card = load_bundle(cxr_icu.default_bundle_dir()).card
    assert card["performance"]["split"] == "cv"
    assert {"image_only", "labs_only"} <= set(card["performance"]["comparisons"])


def test_icu_cohort_rules(shared_data: Path):
    cohort, info = cxr_icu.load_cohort(shared_data / "hannover-covid19-cxr")
    assert len(cohort) == cohort["patient_id"].nunique()
    excluded = cohort[cohort["excluded"] != ""]
    assert (excluded["icu_day"] < 0).all() and (cohort.loc[cohort["excluded"] == "", "icu_day"].fillna(0) >= 0).all()
    labs = [lab["name"] for lab in cxr_icu.LABS]
    finite = cohort[labs].to_numpy(dtype=float)
    assert np.isinf(finite).any()  # detection limits are kept as +-inf until the recipe clips them


def test_icu_wrong_layout_names_file_and_column(shared_data: Path, tmp_path: Path):
    with pytest.raises(DataLayoutError, match="data.csv: file not found"):
        cxr_icu.evaluate(tmp_path)
    src = (shared_data / "hannover-covid19-cxr" / "data.csv").read_text().splitlines()
    header = src[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "po2_val"]
    (tmp_path / "data.csv").write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in src[:5]) + "\n")
    with pytest.raises(DataLayoutError, match="missing column 'po2_val'"):
        cxr_icu.evaluate(tmp_path)
