"""``cds run MODEL PATH``, the task table behind ``cds train`` / ``cds evaluate``, and the CLI task list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cds.cli import main
from cds.models.tasks import TASK_NAMES


@pytest.fixture(scope="module")
def radiograph(samples_dir: Path) -> Path:
    return sorted((samples_dir / "dicom" / "hannover").rglob("*.dcm"))[0]


def test_cli_task_names_equal_the_task_table() -> None:
    from cds.models.task import TrainableTask
    from cds.models.task_table import TASK_MODULES, TASKS

    assert tuple(TASKS) == TASK_NAMES
    for name, task in TASKS.items():
        assert isinstance(task, TrainableTask) and task.name == name
        assert TASK_MODULES[name].TASK is task  # one object per reference task, in its own module


def test_run_prints_findings_as_json_with_the_dicom_identity(radiograph: Path, capsys: pytest.CaptureFixture) -> None:
    import pydicom

    from cds.models.tasks import cxr_cardiomegaly

    assert main(["run", "cxr-cardiomegaly", str(radiograph), "--ehr", "age=61", "--ehr", "sex=female", "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    ds = pydicom.dcmread(radiograph)
    assert (rec["patient_id"], rec["study_uid"], rec["series_uid"]) == (ds.PatientID, ds.StudyInstanceUID,
                                                                         ds.SeriesInstanceUID)
    assert rec["instance_uids"] == [ds.SOPInstanceUID] and rec["ehr_inputs"] == {"age": 61.0, "sex": "female"}
    from cds.images.read import read_image

    direct = cxr_cardiomegaly.predict(cxr_cardiomegaly.default_bundle_dir(), read_image(radiograph).array,
                                      {"age": 61.0, "sex": "female"})
    assert rec["probability"] == pytest.approx(direct["probability"])


def test_run_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.paediatric import write_paediatric_cohort

    child = write_paediatric_cohort(tmp_path, n=1) / "png" / "child-1.png"
    assert main(["run", "pneumonia", str(child), "--age", "3"]) == 0
    head, row = capsys.readouterr().out.strip().splitlines()
    assert head.split()[:3] == ["code", "display", "probability"] and row.split()[:2] == ["233604007", "Pneumonia"]


@pytest.mark.parametrize(("extra", "named"), [
    ([], "the patient's age is not recorded; the model is for ages 1-5 years"),
    (["--age", "54"], "the patient is 54 years old; the model is for ages 1-5 years"),
    (["--age", "3", "--view", "LL"], "view LL; the model is for AP, PA views"),
])
def test_run_refuses_a_study_outside_the_models_intended_use(radiograph: Path, tmp_path: Path, extra: list[str],
                                                              named: str, capsys: pytest.CaptureFixture) -> None:
    from tests.paediatric import write_paediatric_cohort

    child = write_paediatric_cohort(tmp_path, n=1) / "png" / "child-1.png"
    assert main(["run", "pneumonia", str(child), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside intended use" in err and named in err, err
    # an adult's radiograph (the sample cohort's) is outside it too, whatever the age given
    assert main(["run", "pneumonia", str(radiograph), "--age", "40"]) == 2
    assert "40 years old" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "named"), [
    (["run", "nope", "{img}"], "unknown model 'nope'"),
    (["run", "pneumonia", "{tmp}/missing.dcm"], "missing.dcm: no such file or folder"),
    (["run", "cxr-cardiomegaly", "{img}", "--ehr", "sex=male"], "age: model 'cxr-cardiomegaly' needs EHR input 'age'"),
    (["run", "cxr-cardiomegaly", "{img}", "--ehr", "age"], "--ehr: 'age' is not NAME=VALUE"),
    (["run", "cmr-function", "{img}"], "a cine is a 4D NIfTI file"),
])
def test_run_errors_are_one_line_naming_the_input(argv: list[str], named: str, radiograph: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    argv = [a.format(img=radiograph, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cds: error: ") and named in err


def test_run_cmr_function_on_a_4d_nifti_equals_predict_on_the_cine(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                    ) -> None:
    import nibabel as nib

    from cds.models.tasks import cmr_function as cmr
    from cds.models.tasks.phantom import make_cine

    cine, truth = make_cine(920001, n_frames=8, supersample=2)
    g = truth["geometry"]
    (sr, sc), sz = g["pixel_spacing_mm"], g["slice_thickness_mm"] + g["slice_gap_mm"]
    # NIfTI (x = columns, y = rows, slice, time), spacing in the header; RAS axes flipped like a scanner's LPS
    affine = np.diag([-sc, -sr, sz, 1.0])
    path = tmp_path / "cine.nii.gz"
    img = nib.Nifti1Image(cine.transpose(3, 2, 1, 0).astype(np.float32), affine)
    img.header.set_zooms((sc, sr, sz, 30.0))
    nib.save(img, path)
    assert main(["run", "cmr-function", str(path), "--json"]) == 0
    got = {r["code"]: r["value"] for r in json.loads(capsys.readouterr().out)}
    # a NIfTI header records no slice thickness: the slice spacing stands in for it
    geometry = {"pixel_spacing_mm": [sr, sc], "slice_thickness_mm": sz, "spacing_between_slices_mm": sz}
    pred = cmr.predict(cmr.default_bundle_dir(), cine, geometry)
    want = {f.code: f.value for f in cmr.to_findings(cmr.default_bundle_dir(), pred, "", "", None, (), {})}
    assert got == want and "10230-1" in got  # LVEF
    assert abs(got["10230-1"] - truth["ef_pct"]) < 10


def test_train_and_evaluate_go_through_the_task_objects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from cds.models.task_table import TASKS

    calls = []
    task = TASKS["pneumonia"]
    monkeypatch.setattr(type(task), "evaluate", lambda self, data, **kw: calls.append(("evaluate", data, kw)) or {})
    monkeypatch.setattr(type(task), "train", lambda self, data, out, **kw: calls.append(("train", data, kw)) or out)
    assert main(["evaluate", "pneumonia", "--data", "d", "--n-boot", "50", "--split", "test"]) == 0
    assert main(["train", "pneumonia", "--data", "d", "--out", str(tmp_path / "b"), "--quick"]) == 0
    assert calls == [("evaluate", "d", {"bundle_dir": None, "n_boot": 50, "split": "test"}),
                     ("train", "d", {"seed": 0, "quick": True})]
    capsys.readouterr()
    assert main(["evaluate", "ct-lung-nodule", "--data", "d", "--split", "test"]) == 2
    assert "split: task 'ct-lung-nodule' takes no option 'split'" in capsys.readouterr().err
    assert main(["evaluate", "nope", "--data", "d"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_json_output_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    """``cds run ... --json | head -c 0``: the reader left before the output; cds exits 0 without a traceback."""
    import subprocess
    import sys

    from cds.locations import sample_cohort_dir

    dcm = next(sample_cohort_dir().rglob("*.dcm"))
    proc = subprocess.Popen([sys.executable, "-m", "cds.cli", "run", "cxr-cardiomegaly", str(dcm), "--ehr", "age=61",
                             "--ehr", "sex=female", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None
    proc.stdout.close()  # closed before the model has loaded: every write of the JSON hits a closed pipe
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
