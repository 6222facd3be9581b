"""The cohort report on cohorts that lack something (issue 9, item 6): only Synthea patients, only
Hannover patients, no images at all, no model that applies, an outcome label absent (no positive),
no negative, labels that cannot be derived. Each gets a report, and the performance section says
what is missing instead of crashing or showing a number.

The report notebook's code cells run in-process (:func:`run_report_cells`: the same cells papermill
runs, every displayed value rendered as the notebook would), which keeps these tests quick; one test
runs ``cds report`` end to end.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cds.reports import report as rp

ICU_SAME_DAY = "04a33bab"  # one radiograph, ICU admission the same day: label 1
NO_ICU = ["0f2b9fbd", "19677c11"]  # one radiograph each, no ICU stay: label 0
SYNTHEA = "76bc2bcd-3074-46b9-bc18-18daf50825a2"
FAST = {"reference_date": "2026-01-01", "n_boot": 20, "validate": False}


# --------------------------------------------------------------------------------------- helpers
def make_cohort(root: Path, samples: Path, hannover: list[str] = (), synthea: list[str] = (),
                edit: Any = None) -> Path:
    """A cohort folder laid out like fhir_samples/ with the given patients (and their DICOM folders);
    ``edit(bundle) -> bundle`` changes each bundle on the way."""
    root.mkdir(parents=True)
    for group, ids in (("hannover", hannover), ("synthea", synthea)):
        for pid in ids:
            (root / group).mkdir(exist_ok=True)
            bundle = json.loads((samples / group / f"{pid}.json").read_text())
            (root / group / f"{pid}.json").write_text(json.dumps(edit(bundle) if edit else bundle))
            if group == "hannover":
                shutil.copytree(samples / "dicom" / "hannover" / pid, root / "dicom" / "hannover" / pid)
    return root


def without(*types: str) -> Any:
    def edit(bundle: dict[str, Any]) -> dict[str, Any]:
        bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] not in types]
        return bundle
    return edit


def _render(value: Any) -> str:
    """What the notebook would show for a cell's last value (its HTML / Markdown / PNG repr is produced)."""
    for name in ("_repr_html_", "_repr_markdown_", "_repr_png_"):
        r = getattr(value, name, None)
        if r is not None:
            out = r()
            if out is not None:
                break
    if hasattr(value, "to_string"):
        return value.to_string()
    return str(getattr(value, "data", value)) if not isinstance(getattr(value, "data", None), bytes) else "<png>"


def run_report_cells(cohort: Path, out: Path, **params: Any) -> dict[str, Any]:
    """Run the code cells of notebooks/cohort_report.ipynb in-process with these parameters (after its
    ``parameters`` cell, like papermill); return the namespace and the rendered value of each cell."""
    import nbformat

    from cds.locations import notebook_file

    nb = nbformat.read(str(notebook_file(rp.NOTEBOOK)), as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    ns: dict[str, Any] = {}
    exec(cells[0], ns)  # noqa: S102 - our own notebook's parameters cell
    ns.update({**FAST, "cohort": str(cohort), "out_dir": str(out), **params})
    shown: list[str] = []
    for i, src in enumerate(cells[1:], 1):
        tree = ast.parse(src)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, f"<cell {i}>", "exec"), ns)  # noqa: S102
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"<cell {i}>", "eval"), ns)  # noqa: S307
            shown.append("" if value is None else _render(value))
    return {"ns": ns, "ctx": ns["ctx"], "shown": "\n".join(shown), "out": out}


def _assert_a_report(run: dict[str, Any]) -> dict[str, Any]:
    out = run["out"]
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "cds.results/1"
    assert json.loads((out / "results.fhir.json").read_text())["resourceType"] == "Bundle"
    assert {p.name for p in (out / "figures").glob("*.png")} >= {"cohort.png", "scores.png", "triage.png",
                                                                  "performance.png"}
    return res


# ------------------------------------------------------------------------------------------ cohorts
def test_only_hannover_patients_both_classes_are_measured(samples_dir: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY, *NO_ICU])
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    res = _assert_a_report(run)
    perf = rp.evaluate(run["ctx"], "cxr-icu")
    assert (perf["status"], perf["note"], perf["n"], perf["n_positive"]) == ("evaluated", None, 3, 1)
    assert perf["auroc"]["value"] is not None
    assert res["metrics"]["models"]["cxr-icu"]["performance"]["status"] == "evaluated"


def test_only_synthea_patients_get_a_report_saying_what_was_not_measured(samples_dir: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "c", samples_dir, synthea=[SYNTHEA])
    run = run_report_cells(cohort, tmp_path / "out", models=["pneumonia", "cxr-icu"])
    res = _assert_a_report(run)
    assert res["n_findings"] == 0  # the Synthea ImagingStudies have no pixels
    perf = rp.evaluate(run["ctx"], "cxr-icu")
    assert perf["status"] in ("no AI results", "no labelled studies") and perf["n"] == 0
    assert "Not measured here: " in run["shown"] and perf["note"] in run["shown"]
    assert rp.evaluate(run["ctx"], "pneumonia") is None  # no label source for its task
    assert "no outcome label in FHIR for this task" in rp.performance_table(run["ctx"]).loc["pneumonia", "note"]


def test_a_cohort_without_any_image_gets_a_report(samples_dir: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[NO_ICU[0]], synthea=[SYNTHEA],
                         edit=without("ImagingStudy"))
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu", "cxr-cardiomegaly"])
    res = _assert_a_report(run)
    ctx = run["ctx"]
    assert ctx.scope["studies_in_window"] == 0 and res["n_findings"] == res["n_failures"] == 0
    assert rp.evaluate(ctx, "cxr-icu")["status"] == "no labelled studies"
    assert "no labelled study with an AI result (cxr-icu: no labelled studies)" in rp.subgroup_table(ctx).to_string()
    assert rp.worklist_head(ctx).empty


def test_no_model_that_applies_to_the_cohort_still_gets_a_report(samples_dir: Path, tmp_path: Path) -> None:
    """Only mammography models on a chest radiograph cohort: no study is theirs; nothing is scored."""
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY, NO_ICU[0]])
    run = run_report_cells(cohort, tmp_path / "out", models=["mammo-density", "mammo-abnormality"])
    res = _assert_a_report(run)
    assert res["n_findings"] == 0
    ctx = run["ctx"]
    assert all(rp.triage(ctx, m)["summary"]["studies"] == 0 for m in ctx.models)  # no study is theirs
    table = rp.performance_table(ctx)
    assert set(table.index) == {"mammo-density", "mammo-abnormality"} and (table["n"] == 0).all()
    assert "no model in this report has outcome labels in FHIR" in rp.subgroup_table(ctx).to_string()


def test_an_absent_outcome_label_is_said_not_computed(samples_dir: Path, tmp_path: Path) -> None:
    """No ICU admission anywhere in the cohort: every label 0; AUROC and sensitivity are undefined."""
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=NO_ICU)
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    _assert_a_report(run)
    perf = rp.evaluate(run["ctx"], "cxr-icu")
    assert (perf["status"], perf["n"], perf["n_positive"]) == ("label absent", 2, 0)
    assert "the outcome is absent from this cohort" in run["shown"]
    assert rp.performance_table(run["ctx"]).loc["cxr-icu", "note"] == "label absent"


def test_a_cohort_without_encounters_has_the_label_absent(samples_dir: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY], edit=without("Encounter"))
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    _assert_a_report(run)
    assert rp.evaluate(run["ctx"], "cxr-icu")["status"] == "label absent"


def test_only_positives_is_said(samples_dir: Path, tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY])
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    _assert_a_report(run)
    perf = rp.evaluate(run["ctx"], "cxr-icu")
    assert (perf["status"], perf["n"], perf["n_positive"]) == ("no negatives", 1, 1)
    assert "AUROC and specificity are undefined" in run["shown"]


def test_every_study_after_the_outcome_leaves_nothing_labelled(samples_dir: Path, tmp_path: Path) -> None:
    def icu_before(bundle: dict[str, Any]) -> dict[str, Any]:
        for e in bundle["entry"]:
            if e["resource"]["resourceType"] == "Encounter":
                e["resource"]["period"] = {"start": "2020-03-01", "end": "2020-03-02"}
        return bundle

    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY], edit=icu_before)
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    _assert_a_report(run)
    assert rp.evaluate(run["ctx"], "cxr-icu")["status"] == "no labelled studies"


def test_labels_that_cannot_be_derived_do_not_stop_the_report(samples_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cds.reports import labels

    def broken(cohort: Any, studies: Any) -> Any:
        return cohort.encounters["no_such_column"]

    monkeypatch.setitem(labels.LABEL_SOURCES, "cxr-icu", (broken, "a label from a field this cohort lacks"))
    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=[ICU_SAME_DAY, NO_ICU[0]])
    run = run_report_cells(cohort, tmp_path / "out", models=["cxr-icu"])
    _assert_a_report(run)
    perf = rp.evaluate(run["ctx"], "cxr-icu")
    assert perf["status"] == "labels not derivable" and "KeyError" in perf["note"]
    assert "could not be derived from this cohort's records" in run["shown"]
    summary = rp.triage(run["ctx"], "cxr-icu")["summary"]
    assert summary["studies"] == 2 and summary["unlabelled"] == 2
    assert summary["positive_definition"].startswith("no outcome label: the outcome label could not be derived")


@pytest.mark.slow
def test_cds_report_on_a_cohort_without_images_writes_the_html(samples_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cds.cli import main

    cohort = make_cohort(tmp_path / "c", samples_dir, hannover=NO_ICU, edit=without("ImagingStudy"))
    code = main(["report", "--cohort", str(cohort), "--out", str(tmp_path / "out"), "--models", "cxr-icu",
                 "--reference-date", "2026-01-01", "--n-boot", "20", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Performance against outcome labels" in html and "Not measured here" in html
