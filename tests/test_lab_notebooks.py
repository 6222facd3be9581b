"""The lab notebooks (model lab, reader study, cardiac risk) run under papermill with non-default parameters.

(Their pairing with the jupytext scripts and their defaults are tested in tests/test_notebooks.py.)

(nbval compares the committed `# NBVAL_CHECK_OUTPUT` outputs separately:
``pytest --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/<name>.ipynb``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest


def _run(repo: Path, name: str, out: Path, parameters: dict) -> nbformat.NotebookNode:
    import papermill as pm

    executed = out / f"{name}.executed.ipynb"
    pm.execute_notebook(str(repo / "notebooks" / f"{name}.ipynb"), str(executed), parameters=parameters,
                        cwd=str(repo / "notebooks"), kernel_name="python3", progress_bar=False)
    return nbformat.read(str(executed), as_version=4)


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells for o in c.get("outputs", []) if o.get("data", {}).get("image/png"))


def test_model_lab_names_the_shipped_sample_subset(repo: Path) -> None:
    """With data_dir=None the committed run used the shipped subset, and the notebook says it only demonstrates."""
    nb = nbformat.read(str(repo / "notebooks" / "model_lab.ipynb"), as_version=4)
    assert "data: pneumoniamnist_sample.npz" in _text(nb)
    assert "demonstrates the workflow" in nb.cells[0].source


@pytest.mark.slow
@pytest.mark.shared
def test_model_lab_cardiomegaly_isotonic(repo: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    nb = _run(repo, "model_lab", tmp_path, {
        "task": "cxr-cardiomegaly", "calibration_method": "isotonic", "quick": True, "n_boot": 100,
        "models_dir": str(models), "work_dir": str(tmp_path / "work"), "model_id": "cm-nbtest", "n_gradcam": 2,
        "seed": 1})
    text = _text(nb)
    assert "task: cxr-cardiomegaly" in text and "model id: cm-nbtest" in text
    assert "validation patients of the bundle's training manifest" in text
    assert "{'auroc_unchanged': True, 'decisions_unchanged': True}" in text
    assert "calibration_method: isotonic" in text and "calibrated: True" in text
    assert "True\n{'task': 'cxr-cardiomegaly', 'source': 'user'}" in text
    meta = json.loads((models / "cm-nbtest" / "configs" / "metadata.json").read_text())
    assert meta["cds"]["calibration"]["method"] == "isotonic" and meta["cds"]["training_data"]["seed"] == 1
    assert _images(nb) >= 2  # reliability diagram, GradCAM grid


@pytest.mark.slow
def test_reader_study_simulated_cases_then_the_written_store(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "rs"
    nb = _run(repo, "reader_study", tmp_path, {
        "case_source": "simulated", "n_readers": 3, "n_cases": 40, "ai_accuracy": 0.7, "n_boot": 100,
        "out_dir": str(out), "seed": 5})
    text = _text(nb)
    assert text.count("SIMULATED READERS") >= 6
    assert "readers: 3, cases: 40" in text and "sim-reader-03" in text
    assert "AI wrong" in text and "all readers" in text
    store = out / "simulated_reads.jsonl"
    assert len(store.read_text().splitlines()) == 2 * 3 * 40
    assert _images(nb) == 1
    # analysis-only run on the store just written (the path a real study takes)
    nb2 = _run(repo, "reader_study", tmp_path, {"store_path": str(store), "n_boot": 100})
    text2 = _text(nb2)
    assert "readers: 3, cases: 40" in text2 and "*** SIMULATED READERS" in text2
    assert len(store.read_text().splitlines()) == 2 * 3 * 40  # analysis never writes


@pytest.mark.slow
def test_cardiac_risk_one_patient_published_terms_only(repo: Path, tmp_path: Path) -> None:
    from cds.models.tasks import cmr_function

    if not (cmr_function.default_bundle_dir() / "configs" / "metadata.json").is_file():
        pytest.skip("shipped cmr-function bundle not present (`cds train cmr-function`)")
    out = tmp_path / "cr"
    nb = _run(repo, "cardiac_risk", tmp_path, {
        "patients": ["9df87ee4-4ade-45c5-8601-910e8ff9db99"], "phantom_seed": 7, "phantom_frames": 12,
        "include_assumed": False, "out_dir": str(out)})
    text = _text(nb)
    assert "1 RiskAssessment resource(s) valid under fhir.resources.R4B" in text
    assert "status: ['preliminary']" in text and "security: ['AIAST']" in text
    assert "not used" in text and "published" in text
    bundle = json.loads((out / "cardiac_risk_bundle.json").read_text())
    ras = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"]
    assert len(ras) == 1 and ras[0]["subject"]["reference"] == "Patient/9df87ee4-4ade-45c5-8601-910e8ff9db99"
    assert "age_years" not in ras[0]["method"]["text"]  # only the published GCS term
