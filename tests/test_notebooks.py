"""Notebooks run under papermill with non-default parameters, and the overview CLI writes a report.

(nbval checks the committed outputs of the `# NBVAL_CHECK_OUTPUT` cells separately: see the
README's test command.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.test_fhir import ENCOUNTER, OBS, PATIENT, bundle


@pytest.fixture()
def tiny_cohort(tmp_path: Path) -> Path:
    d = tmp_path / "cohort"
    d.mkdir()
    p2 = dict(PATIENT, id="p2", gender="male", birthDate="1990-01-01")
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p2"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "22298006",
                                 "display": "Myocardial infarction"}]}, "onsetDateTime": "2019-05-01"}
    (d / "b.json").write_text(json.dumps(bundle(PATIENT, p2, ENCOUNTER, OBS, cond)))
    (d / "broken.json").write_text("{")
    return d


def _outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_overview_notebook_with_other_parameters(repo: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    import papermill as pm

    out_dir = tmp_path / "figs"
    executed = tmp_path / "executed.ipynb"
    pm.execute_notebook(str(repo / "notebooks" / "cohort_overview.ipynb"), str(executed),
                        parameters={"cohort": str(tiny_cohort), "out_dir": str(out_dir),
                                    "reference_date": "2020-03-01", "validate": False},
                        cwd=str(repo / "notebooks"), kernel_name="python3", progress_bar=False)
    nb = nbformat.read(str(executed), as_version=4)
    text = _outputs_text(nb)
    assert "patients: 2" in text and "invalid_resources: 1" in text
    assert "Myocardial infarction" in text and "1988-5" in text
    for name in ("demographics", "conditions", "labs", "imaging"):
        assert (out_dir / f"{name}.png").stat().st_size > 5000
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))


def test_overview_cli_writes_report_without_code(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "cds.cli", "overview", "--cohort", str(tiny_cohort), "--out", str(out),
                        "--reference-date", "2020-03-01"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert "Cohort overview" in html and "data:image/png;base64" in html
    assert "cds.load_cohort(" not in html  # code cells are hidden
    assert (out / "cohort_overview.ipynb").exists()


def test_overview_cli_names_the_failing_cell(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cds.cli", "overview", "--cohort", str(tmp_path / "absent"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "cell" in r.stderr and "FhirInputError" in r.stderr and "absent" in r.stderr
