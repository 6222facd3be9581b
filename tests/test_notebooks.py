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


# ------------------------------------------------------------------ jupytext pairs and defaults
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PAIRED = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def _cells(path: Path) -> list[tuple[str, str, list[str]]]:
    import jupytext

    nb = jupytext.read(path)
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_has_its_percent_script() -> None:
    scripts = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.py") if not p.name.startswith("_"))
    assert PAIRED and scripts == PAIRED, "each notebooks/X.ipynb needs notebooks/X.py (tools/sync_notebooks.py)"


@pytest.mark.parametrize("name", PAIRED)
def test_notebook_and_script_hold_the_same_cells(name: str) -> None:
    ipynb, script = NOTEBOOK_DIR / f"{name}.ipynb", NOTEBOOK_DIR / f"{name}.py"
    assert _cells(ipynb) == _cells(script), (f"{ipynb.name} differs from {script.name}: edit the .py and run "
                                            f".venv/bin/python tools/sync_notebooks.py {name}")
    meta = nbformat.read(str(ipynb), as_version=4).metadata
    assert meta["jupytext"]["formats"] == "ipynb,py:percent"
    assert "formats: ipynb,py:percent" in script.read_text()


@pytest.mark.parametrize("name", PAIRED)
def test_only_check_cells_keep_outputs_and_one_parameters_cell(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    for c in nb.cells:
        if c.cell_type == "code" and c.outputs:
            assert c.source.startswith("# NBVAL_CHECK_OUTPUT"), c.source[:60]
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    defaults: dict = {}
    exec(params.source, defaults)  # literals only
    relative_up = {k: v for k, v in defaults.items() if isinstance(v, str) and v.startswith("..")}
    assert not relative_up, f"defaults must not depend on the current folder: {relative_up}"


@pytest.mark.slow
def test_overview_defaults_work_from_any_folder_without_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``papermill notebooks/cohort_overview.ipynb out.ipynb`` from an unrelated folder, no ../shared."""
    import papermill as pm

    monkeypatch.setenv("CDS_SHARED_DATA", str(tmp_path / "nonexistent"))
    monkeypatch.chdir(tmp_path)
    pm.execute_notebook(str(NOTEBOOK_DIR / "cohort_overview.ipynb"), "out.ipynb", kernel_name="python3",
                        progress_bar=False)
    text = _outputs_text(nbformat.read("out.ipynb", as_version=4))
    assert "patients: 55" in text
    assert (tmp_path / "out" / "overview" / "demographics.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reader_study", "model_lab", "cardiac_risk"])
def test_lab_notebook_defaults_work_without_shared(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab notebooks' defaults use the shipped sample subset / cohort: they run with no ../shared."""
    import papermill as pm

    monkeypatch.setenv("CDS_SHARED_DATA", str(tmp_path / "nonexistent"))
    monkeypatch.chdir(tmp_path)
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), "out.ipynb", kernel_name="python3", progress_bar=False)
    assert (tmp_path / "out" / name).is_dir()
