"""cds.studies.model_lab: train -> cases -> calibrate -> GradCAM -> export -> register, on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ParameterError
from cds.studies import model_lab as ml

# Tests that need ../shared/data take the shared_data fixture (it skips with the reason when absent);
# test_bad_parameters_name_themselves and the sample-data test run everywhere.


@pytest.fixture(scope="module")
def pneumonia_lab(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A quick pneumonia model (1 epoch, narrow), its scored parts and a temperature calibrator."""
    root = tmp_path_factory.mktemp("lab")
    trained = ml.train("pneumonia", shared_data / "medmnist", root / "trained", seed=0, quick=True)
    cases = ml.score_cases("pneumonia", shared_data / "medmnist", trained["bundle"])
    return {"root": root, "data": shared_data / "medmnist", "trained": trained, "cases": cases}


def test_parts_are_disjoint_halves_of_val_and_deterministic(pneumonia_lab: dict) -> None:
    cases = pneumonia_lab["cases"]
    cal, test = cases["calibration"], cases["test"]
    assert len(cal) + len(test) == 270
    assert not set(cal.ids) & set(test.ids)
    assert all(i.startswith("val_") for i in [*cal.ids, *test.ids])
    assert abs(cal.y.mean() - 0.5) < 0.02 and abs(test.y.mean() - 0.5) < 0.02  # class-stratified
    again = ml.score_cases("pneumonia", pneumonia_lab["data"], pneumonia_lab["trained"]["bundle"])
    assert np.array_equal(again["test"].ids, test.ids) and np.array_equal(again["test"].logits, test.logits)
    summary = ml.cases_summary(cases)
    assert summary.loc["test", "cases"] == len(test) and "salt 'cds-model-lab'" in summary.loc["test", "how"]


def test_case_scores_reproduce_the_task_modules_evaluate(pneumonia_lab: dict) -> None:
    from cds.evaluation.metrics import auroc

    res = ml.evaluate("pneumonia", pneumonia_lab["data"], pneumonia_lab["trained"]["bundle"], n_boot=50)
    cases = pneumonia_lab["cases"]
    y = np.concatenate([cases["calibration"].y, cases["test"].y])
    p = np.concatenate([cases["calibration"].p, cases["test"].p])
    assert res["split"] == "val_" and res["n_cases"] == 270
    assert round(auroc(y, p), 4) == res["metrics"]["auroc"]["value"]
    table = ml.metrics_table(res)
    assert {"auroc", "sensitivity", "specificity", "accuracy"} <= set(table.index)
    assert (table["ci95_low"] <= table["value"]).all() and (table["value"] <= table["ci95_high"]).all()
    summary = ml.training_summary(pneumonia_lab["trained"]["bundle"])
    assert summary.loc["epochs", "value"] == 1 and summary.loc["seed", "value"] == 0


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_export_builds_calibration_into_the_bundle(pneumonia_lab: dict, method: str) -> None:
    from cds.models.bundle import load_bundle
    from cds.models.tasks import pneumonia

    cases, trained = pneumonia_lab["cases"], pneumonia_lab["trained"]["bundle"]
    cal = ml.fit_calibration(cases, method)
    report = ml.calibration_report(cal, cases, n_boot=50)
    before = ml.evaluate("pneumonia", pneumonia_lab["data"], trained, n_boot=50)
    assert ml.calibration_checks(cal, cases, before["threshold"]) == {"auroc_unchanged": True,
                                                                      "decisions_unchanged": True}
    out = ml.export_bundle("pneumonia", trained, pneumonia_lab["root"] / "export", cal, f"pn-{method}",
                           pneumonia_lab["data"], n_boot=50, calibration_result=report, seed=0)
    b = load_bundle(out)
    card = b.card
    assert card["model_id"] == f"pn-{method}" and b.version == "0.1.0" and card["task"] == "pneumonia"
    assert card["calibrated"] is True and card["calibration"]["method"] == method
    assert card["calibration"]["threshold_before_calibration"] == before["threshold"]
    assert card["threshold"] == pytest.approx(cal.transform_threshold(before["threshold"]))
    assert card["calibration"]["evaluation_on_test_part"][1]["probabilities"] == "after"
    assert card["derived_from"]["model_id"] == "pneumonia"
    assert "## Calibration" in (out / "docs" / "README.md").read_text()
    inf = json.loads((out / "configs" / "inference.json").read_text())
    assert inf["network_def"]["_target_"] == "cds.evaluation.calibration.calibrated_network"
    # the card's performance was re-measured on the calibrated bundle: same decisions, same ranking
    perf = card["performance"]["metrics"]
    for k in ("auroc", "sensitivity", "specificity"):
        assert perf[k]["value"] == before["metrics"][k]["value"]
    # predict() of the task module now returns the calibrated probability
    test = cases["test"]
    img = pneumonia.load_split(pneumonia_lab["data"], "val")[0][int(test.ids[0].split("_")[1])]
    pred = pneumonia.predict(b, img, gradcam=False)
    assert pred["probability"] == pytest.approx(float(cal.transform(test.p[:1])[0]), abs=1e-5)


def test_register_copies_into_the_models_dir_and_refuses_clobbering(pneumonia_lab: dict, tmp_path: Path) -> None:
    from cds.models.registry import ModelRegistry

    cases, trained = pneumonia_lab["cases"], pneumonia_lab["trained"]["bundle"]
    cal = ml.fit_calibration(cases, "none")
    out = ml.export_bundle("pneumonia", trained, tmp_path / "export", cal, "pn-plain", pneumonia_lab["data"],
                           n_boot=50)
    assert ml.card_summary(out)["calibrated"] is False
    models = tmp_path / "models"
    dst = ml.register(out, models)
    assert dst == models / "pn-plain"
    reg = ModelRegistry(user_dirs=[models])
    assert "pn-plain" in reg.ids() and "pneumonia" in reg.ids()
    assert reg.list_models().set_index("model_id").loc["pn-plain", "source"] == "user"
    with pytest.raises(ParameterError, match="exists; pass overwrite=True"):
        ml.register(out, models)
    assert ml.register(out, models, overwrite=True) == dst
    foreign = models / "pn-foreign"
    (foreign / "configs").mkdir(parents=True)
    (foreign / "configs" / "metadata.json").write_text(json.dumps({"cds": {"model_id": "pn-plain"}}))
    with pytest.raises(ParameterError, match="not written by the model lab"):
        ml._remove_own_folder(foreign)
    assert (foreign / "configs" / "metadata.json").exists()
    from cds.models.registry import BUILTIN_DIR

    with pytest.raises(ParameterError, match="not written by the model lab"):
        ml._remove_own_folder(BUILTIN_DIR / "pneumonia")  # what train() checks before writing to out_dir
    assert (BUILTIN_DIR / "pneumonia" / "models" / "model.pt").is_file()
    with pytest.raises(ParameterError, match="built-in model id"):
        ml.export_bundle("pneumonia", trained, tmp_path / "export", cal, "pneumonia", pneumonia_lab["data"])
    with pytest.raises(ParameterError, match="model_id"):
        ml.export_bundle("pneumonia", trained, tmp_path / "export", cal, "Bad Id!", pneumonia_lab["data"])


def test_gradcam_on_the_most_confident_errors(pneumonia_lab: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    test = pneumonia_lab["cases"]["test"]
    t = float(np.median(test.p))
    errs = ml.misclassified(test, t)
    wrong = (test.p >= t) != test.y.astype(bool)
    assert len(errs) == int(wrong.sum()) > 0
    assert errs["margin"].is_monotonic_decreasing
    assert set(errs["error"]) <= {"false positive", "false negative"}
    fp = errs[errs["error"] == "false positive"]
    assert (fp["truth"] == 0).all() and (fp["probability"] >= round(t, 4) - 1e-4).all()
    items = ml.gradcam_errors(pneumonia_lab["trained"]["bundle"], test, t, k=3)
    assert [i["id"] for i in items] == errs["id"].head(3).tolist()
    for it in items:
        assert it["cam"].shape == (28, 28) and 0.0 <= it["cam"].min() and it["cam"].max() <= 1.0
    fig = ml.plot_gradcam_errors(items)
    assert len([a for a in fig.axes if a.images]) == 2 * len(items)


def test_cardiomegaly_parts_follow_the_training_manifest(shared_data: Path, tmp_path: Path) -> None:
    from cds.models.tasks import cxr_cardiomegaly as cm

    data = shared_data / "nih-cxr14-thumbs64"
    trained = ml.train("cxr-cardiomegaly", data, tmp_path / "cm", seed=0, quick=True)
    cases = ml.score_cases("cxr-cardiomegaly", data, trained["bundle"])
    split = cm.split_patients(cm.load_labels(data))
    df = cm.load_labels(data).assign(split=split)
    val_patients = set(df.loc[df.split == "val", "Patient ID"])
    test_patients = set(df.loc[df.split == "test", "Patient ID"])
    assert set(cases["calibration"].groups) == val_patients
    assert set(cases["test"].groups) == test_patients
    assert cases["test"].tabular.shape == (len(cases["test"]), 2)
    res = ml.evaluate("cxr-cardiomegaly", data, trained["bundle"], n_boot=50)
    from cds.evaluation.metrics import auroc

    assert res["n_cases"] == len(cases["test"])
    assert round(auroc(cases["test"].y, cases["test"].p), 4) == res["metrics"]["auroc"]["value"]


def test_bad_parameters_name_themselves(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="task: 'cxr-icu'"):
        ml.check_task("cxr-icu")
    with pytest.raises(ParameterError, match="data_dir"):
        ml.data_dir_for("pneumonia", tmp_path / "absent")
    from cds.params import validate_parameters

    with pytest.raises(ParameterError, match="calibration_method"):
        validate_parameters({"calibration_method": "platt"}, ml.PARAMETERS)
    assert validate_parameters({}, ml.PARAMETERS)["models_dir"] == "out/model_lab/models"


def test_pneumonia_defaults_to_the_shipped_sample_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data_dir and no ../shared: the lab scores the shipped subset's val_ arrays (200 images, in two halves)."""
    from cds.models.tasks import pneumonia

    monkeypatch.setenv("CDS_SHARED_DATA", str(tmp_path / "nonexistent"))
    assert ml.data_dir_for("pneumonia").name == "pneumoniamnist_sample.npz"
    cases = ml.score_cases("pneumonia", None, pneumonia.default_bundle_dir())
    assert len(cases["calibration"]) + len(cases["test"]) == 200
    assert set(cases["calibration"].ids).isdisjoint(cases["test"].ids)
    with pytest.raises(ParameterError, match="data_dir"):
        ml.data_dir_for("cxr-cardiomegaly")  # ships no subset: its shared set is absent here


def test_calibration_checks_see_decisions_just_below_the_threshold() -> None:
    """A flat isotonic step (slope ~1e-3 after blending): a score 1e-7 below the threshold stays below."""
    from types import SimpleNamespace

    from cds.evaluation.calibration import Calibrator

    cal = Calibrator("isotonic", {"x": [0.4, 0.6], "y": [0.3, 0.3], "blend": 1e-3})
    p = np.array([0.5 - 1e-7, 0.5, 0.5 + 1e-7, 0.45, 0.55])
    cases = {"test": SimpleNamespace(p=p, y=np.array([0, 1, 1, 0, 1]))}
    assert ml.calibration_checks(cal, cases, 0.5) == {"auroc_unchanged": True, "decisions_unchanged": True}
