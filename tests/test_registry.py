"""The model registry: listing built-in, user and Model Zoo bundles, EHR inputs, cohort runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cds
from cds.errors import ModelInputError, ParameterError
from cds.models.registry import BUILTIN_DIR, ModelRegistry, ehr_inputs_for

BUILTIN = {"pneumonia", "cxr-cardiomegaly", "cxr-icu", "ct-lung-nodule", "mammo-density", "mammo-abnormality",
           "cmr-function", "ct-nodule-characterisation"}


@pytest.fixture(scope="module")
def cohort(samples_dir: Path) -> cds.Cohort:
    return cds.load_cohort(samples_dir, reference_date="2026-01-01")


def test_builtin_models_are_listed_with_their_cards() -> None:
    reg = ModelRegistry(user_dirs=[])
    present = {p.name for p in BUILTIN_DIR.iterdir() if (p / "configs" / "metadata.json").exists()}
    assert set(reg.ids()) == present and present <= BUILTIN
    table = reg.list_models()
    assert set(table["source"]) == {"built-in"}
    assert table["headline_ci95"].map(lambda ci: isinstance(ci, list) and len(ci) == 2).all()
    with pytest.raises(ParameterError, match="unknown model 'nope'; available: .*pneumonia"):
        reg.get("nope")


def test_user_models_dir_and_half_copied_folder(tmp_path: Path) -> None:
    user = tmp_path / "models"
    shutil.copytree(BUILTIN_DIR / "pneumonia", user / "my-pneumonia")
    meta = json.loads((user / "my-pneumonia" / "configs" / "metadata.json").read_text())
    meta["cds"]["model_id"] = "my-pneumonia"
    (user / "my-pneumonia" / "configs" / "metadata.json").write_text(json.dumps(meta))
    (user / "broken" / "models").mkdir(parents=True)
    reg = ModelRegistry(user_dirs=[user])
    assert "my-pneumonia" in reg.ids()
    assert reg.list_models().set_index("model_id").loc["my-pneumonia", "source"] == "user"
    assert any("broken" in e and "metadata.json missing" in e for e in reg.errors)


def test_zoo_bundle_in_user_dir_is_recognised(tmp_path: Path) -> None:
    from tests.zoo_fixtures import write_zoo_bundle

    write_zoo_bundle("ventricular_short_axis_3label", tmp_path, folder="downloaded-heart-model")
    reg = ModelRegistry(user_dirs=[tmp_path])
    assert "ventricular_short_axis_3label" in reg.ids()
    assert reg.list_models().set_index("model_id").loc["ventricular_short_axis_3label", "source"] == "zoo"


def test_ehr_inputs_come_from_fhir_and_missing_ones_are_refused(cohort: cds.Cohort) -> None:
    card = {"model_id": "m", "inputs": {"ehr": [{"name": "age", "source": "patient.age_years"},
                                                {"name": "sex", "source": "patient.sex"}]}}
    synthea = cohort.patients.dropna(subset=["birth_date"]).iloc[0]
    when = pd.Timestamp("2020-01-01", tz="UTC")
    got = ehr_inputs_for(card, cohort, synthea["patient_id"], when)
    expected_age = round((when - synthea["birth_date"]).days / 365.2425, 1)
    assert got["age"] == expected_age and got["sex"] == synthea["sex"]
    hannover = cohort.patients[cohort.patients["birth_date"].isna()].iloc[0]["patient_id"]
    with pytest.raises(ModelInputError, match="^age: model 'm' needs EHR input 'age'"):
        ehr_inputs_for(card, cohort, hannover, when)


def test_lab_inputs_use_the_window_around_the_study(cohort: cds.Cohort) -> None:
    obs = cohort.observations[cohort.observations["code"] == "1988-5"].dropna(subset=["value"]).iloc[0]
    card = {"model_id": "m", "inputs": {"ehr": [{"name": "crp", "source": "observation:1988-5",
                                                 "window_days": [-2, 0]}]}}
    got = ehr_inputs_for(card, cohort, obs["patient_id"], obs["time"] + pd.Timedelta(days=1))
    assert got["crp"] == obs["value"]
    with pytest.raises(ModelInputError, match="within"):
        ehr_inputs_for(card, cohort, obs["patient_id"], obs["time"] - pd.Timedelta(days=30))
    card["inputs"]["ehr"][0]["required"] = False
    assert ehr_inputs_for(card, cohort, obs["patient_id"], obs["time"] - pd.Timedelta(days=30))["crp"] is None


def test_cohort_run_records_failures_and_carries_on(cohort: cds.Cohort, tmp_path: Path) -> None:
    reg = ModelRegistry(user_dirs=[])
    rows = cohort.imaging.dropna(subset=["pixel_location"]).head(3).copy()
    rows.iloc[1, rows.columns.get_loc("pixel_location")] = str(tmp_path / "missing.dcm")
    result = reg.run("cxr-icu", cohort, rows)
    assert len(result.findings) == 2 and len(result.failures) == 1
    fail = result.failures_frame().iloc[0]
    assert fail["error"] == "ImageReadError" and "missing.dcm" in fail["message"] and fail["state"] == "failed"
    f = result.findings[0]
    assert f.model_id == "cxr-icu" and 0.0 <= f.probability <= 1.0 and f.study_uid == rows.iloc[0]["study_uid"]
    assert f.interpretation in {"positive", "negative", "indeterminate"}
    # the paediatric demo model is not meant for these adults' radiographs: no answer, and why
    result = reg.run("pneumonia", cohort, rows.iloc[[0]])
    assert result.findings == [] and result.failures[0].state == "outside-intended-use"
    # cardiomegaly needs age, which the Hannover source redacts: refused per study, with the reason
    result = reg.run("cxr-cardiomegaly", cohort, rows.iloc[[0]])
    assert result.findings == [] and "needs EHR input 'age'" in result.failures[0].message


def test_icu_model_runs_on_sample_cohort_with_fhir_labs(cohort: cds.Cohort) -> None:
    reg = ModelRegistry(user_dirs=[])
    rows = cohort.imaging.dropna(subset=["pixel_location"]).head(4)
    result = reg.run("cxr-icu", cohort, rows)
    assert result.failures == [] and len(result.findings) == 4
    assert all(f.prognostic and f.ehr_inputs for f in result.findings)


def test_cli_models_list() -> None:
    r = subprocess.run([sys.executable, "-m", "cds.cli", "models", "--json"], capture_output=True, text=True,
                       check=True)
    ids = {m["model_id"] for m in json.loads(r.stdout)}
    assert {"pneumonia", "cxr-icu"} <= ids


def test_gradcam_maps_are_saved_as_artifacts(tmp_path: Path) -> None:
    import numpy as np

    from tests.paediatric import write_paediatric_cohort

    cohort = cds.load_cohort(write_paediatric_cohort(tmp_path / "children", n=6), reference_date="2026-01-01")
    tmp_path = tmp_path / "maps"
    reg = ModelRegistry(user_dirs=[])
    rows = cohort.imaging
    result = reg.run("pneumonia", cohort, rows, artifacts_dir=tmp_path)
    with_maps = [f for f in result.findings if "heatmap" in f.extra]
    assert result.failures == [] and len(result.findings) == len(rows)
    assert with_maps, "no GradCAM map was saved for any of the radiographs"
    for f in with_maps:
        cam = np.load(f.extra["heatmap"])
        assert cam.max() > 0 and cam.ndim == 2
    # a map that is zero everywhere (nothing raised the score) is not saved
    assert len(with_maps) == len(list(tmp_path.glob("*.npy")))


def test_every_model_runs_through_a_task_object(tmp_path: Path) -> None:
    from cds.models.task_table import TASKS
    from cds.models.zoo import ZOO_TASKS
    from tests.zoo_fixtures import write_zoo_bundle

    write_zoo_bundle("ventricular_short_axis_3label", tmp_path, folder="heart")
    user = tmp_path / "bad"
    shutil.copytree(BUILTIN_DIR / "pneumonia", user / "renamed")
    meta = json.loads((user / "renamed" / "configs" / "metadata.json").read_text())
    meta["cds"].update(model_id="renamed", task="pneumonia-v2")
    (user / "renamed" / "configs" / "metadata.json").write_text(json.dumps(meta))
    reg = ModelRegistry(user_dirs=[tmp_path, user])
    for mid in BUILTIN:
        assert reg.task_for(mid) is TASKS[mid]
    assert reg.task_for("ventricular_short_axis_3label") is ZOO_TASKS["ventricular_short_axis_3label"]
    with pytest.raises(ParameterError, match="^task: model 'renamed' declares unknown task 'pneumonia-v2'"):
        reg.task_for("renamed")
