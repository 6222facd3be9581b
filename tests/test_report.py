"""Cohort reports (cds.reports.report): parameter validation before any work, the triage simulation, metrics,
and whole runs of notebooks/cohort_report.ipynb on a small copy of the sample cohort: four outputs,
R4-valid FHIR results, identical reruns, listed per-study failures, de-identified outputs free of
names / ids / birth dates, the failing cell named, and POST to a local transaction server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ParameterError
from cds.reports import report as rp
from cds.reports.notebook_run import NotebookFailed
from tests.test_fhir_results import fhir_transaction_server

HANNOVER = ["04a33bab", "0664ee2b", "0f2b9fbd", "14d9761b", "177330aa"]  # 2 with an ICU stay, 3 without
SYNTHEA = ["76bc2bcd-3074-46b9-bc18-18daf50825a2", "9e2f7a3b-94df-4b3d-bee2-360881649fa5"]
MODELS = ["pneumonia", "cxr-icu", "cxr-cardiomegaly"]
FAST = {"models": MODELS, "reference_date": "2026-01-01", "n_boot": 200}
SALT = "report-test-salt-7f3a"
UNREADABLE = "dicom/hannover/0664ee2b/2ecd360d.dcm"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def small_cohort(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 Hannover bundles with their DICOM folders and 2 Synthea bundles, relative paths preserved."""
    d = tmp_path_factory.mktemp("small") / "cohort"
    (d / "hannover").mkdir(parents=True)
    (d / "synthea").mkdir()
    for pid in HANNOVER:
        shutil.copy(samples_dir / "hannover" / f"{pid}.json", d / "hannover")
        shutil.copytree(samples_dir / "dicom" / "hannover" / pid, d / "dicom" / "hannover" / pid)
    for pid in SYNTHEA:
        shutil.copy(samples_dir / "synthea" / f"{pid}.json", d / "synthea")
    (d / UNREADABLE).write_bytes(b"not a DICOM file")  # the last of 0664ee2b's 5 radiographs
    return d


def _secrets(cohort: Path) -> dict[str, set[str]]:
    """Identifying strings read straight from the bundles (independently of cds.reports.report)."""
    out: dict[str, set[str]] = {"id": set(), "name": set(), "birth_date": set(), "uid": set()}
    for f in cohort.rglob("*.json"):
        for e in json.loads(f.read_text())["entry"]:
            r = e["resource"]
            if r["resourceType"] == "Patient":
                out["id"].add(r["id"])
                out["id"].update(i["value"] for i in r.get("identifier", []) if len(i.get("value", "")) >= 6)
                for n in r.get("name", []):
                    out["name"].update([*n.get("given", []), n["family"]])
                if r.get("birthDate"):
                    out["birth_date"].add(r["birthDate"])
            elif r["resourceType"] == "ImagingStudy":
                out["id"].add(r["id"])
                out["uid"].update(se["uid"] for se in r.get("series", []))
                out["uid"].update(i["value"][8:] for i in r.get("identifier", []) if i["value"].startswith("urn:oid:"))
    return out


def _all_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def posted_run(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("run") / "identified"
    with fhir_transaction_server() as srv:
        t0 = time.perf_counter()
        result = rp.run_report(small_cohort, out, FAST, post=True, fhir_base=srv.base, progress=False)
        result["wall_s"] = time.perf_counter() - t0
        result["store"] = dict(srv.store)
    return result


@pytest.fixture(scope="module")
def deid_runs(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    base = tmp_path_factory.mktemp("deid")
    old = os.environ.get(rp.SALT_ENV)
    os.environ[rp.SALT_ENV] = SALT
    try:
        return [rp.run_report(small_cohort, base / name, {**FAST, "deidentify": True}, progress=False)
                for name in ("first", "second")]
    finally:
        if old is None:
            os.environ.pop(rp.SALT_ENV, None)
        else:
            os.environ[rp.SALT_ENV] = old


# --------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params,where", [
    ({"n_boot": "many"}, "n_boot"),
    ({"models": "pneumonia"}, "models"),
    ({"models": ["pneumonia", "no-such-model"]}, "models"),
    ({"treshold": {"cxr-icu": 0.3}}, "treshold"),
    ({"thresholds": {"cxr-icu": 0.3}, "models": ["pneumonia"]}, "thresholds"),
    ({"thresholds": {"pneumonia": "high"}, "models": ["pneumonia"]}, "thresholds['pneumonia']"),
    ({"start_date": "2020-13-01"}, "start_date"),
    ({"start_date": "2020-04-05", "end_date": "2020-04-01"}, "end_date"),
    ({"deidentify": "yes"}, "deidentify"),
    ({"minutes_per_study": 0}, "minutes_per_study"),
])
def test_bad_parameters_fail_before_any_work(params, where, small_cohort, tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(ParameterError) as err:
        rp.run_report(small_cohort, out, {**FAST, **params}, progress=False)
    assert err.value.where == where
    assert str(err.value).startswith(f"{where}: ")
    assert not out.exists()  # nothing was written, no kernel was started
    assert time.perf_counter() - t0 < 10


def test_missing_cohort_and_salt_fail_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(ParameterError, match=r"^cohort: .*absent.* does not exist"):
        rp.run_report(tmp_path / "absent", out, FAST, progress=False)
    monkeypatch.delenv(rp.SALT_ENV, raising=False)
    with pytest.raises(ParameterError, match=rf"^salt: .*\${rp.SALT_ENV}"):
        rp.run_report(tmp_path, out, {**FAST, "deidentify": True}, progress=False)
    with pytest.raises(ParameterError, match="^fhir_base: "):
        rp.run_report(tmp_path, out, FAST, post=True, progress=False)
    assert not out.exists()


def test_validation_fills_defaults_and_resolves_relative_dates(tmp_path, monkeypatch):
    monkeypatch.setenv(rp.SALT_ENV, "from-env")
    p = rp.validate_report_parameters({"cohort": str(tmp_path), "start_date": "-7d", "deidentify": True,
                                       "reference_date": "2026-01-08", "thresholds": {"cxr-icu": 1}})
    assert p["models"] == list(rp.DEFAULT_MODELS) and p["minutes_per_study"] == 5.0
    assert p["salt"] == "from-env" and p["thresholds"] == {"cxr-icu": 1.0}
    assert rp.resolve_date(p["start_date"], p["reference_date"]) == "2026-01-01"
    assert set(p) == set(rp.PARAMETERS)
    # a FHIR server base URL is taken as it is (reachability is the loader's job, in the notebook)
    assert rp.validate_report_parameters({"cohort": "http://127.0.0.1:9/fhir"})["cohort"] == "http://127.0.0.1:9/fhir"


def test_notebook_parameters_match_the_spec_and_names(repo):
    """The notebook's parameters cell holds exactly the spec's parameters with its defaults, and every
    other name the notebook assigns is one the validation cell ignores."""
    import ast

    import nbformat

    nb = nbformat.read(str(repo / "notebooks" / rp.NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    ns: dict = {}
    exec(code[0].source, ns)  # noqa: S102 - our own notebook's literal assignments
    ns.pop("__builtins__")
    spec = rp.parameter_spec()
    assert list(ns) == list(spec)
    assert rp.validate_report_parameters({**ns, "cohort": str(repo / "fhir_samples")})["models"] == list(rp.DEFAULT_MODELS)
    assert "rp.check_notebook_parameters(" in code[1].source and "globals()" in code[1].source
    assigned = set()
    for c in code[1:]:
        for node in ast.walk(ast.parse(c.source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
    assert assigned <= rp.NOTEBOOK_NAMES


def test_notebook_validation_cell_names_the_parameter(tmp_path, small_cohort):
    """Run through papermill directly (no run_report pre-check): the cell after `parameters` fails."""
    with pytest.raises(NotebookFailed) as err:
        from cds.reports.notebook_run import run_notebook

        run_notebook(rp.NOTEBOOK, tmp_path, {"cohort": str(small_cohort), "out_dir": str(tmp_path),
                                             "modls": ["pneumonia"]}, progress=False)
    msg = str(err.value)
    assert "ParameterError" in msg and "modls: unknown parameter (did you mean 'models'?)" in msg
    assert re.search(r"cell \d+ failed", msg)
    assert not (tmp_path / "results.json").exists()


# ------------------------------------------------------------------------------------------- triage
def test_simulate_reading_backlog_and_arrivals():
    # backlog: all waiting at 0; priority order is the reading order
    finish, order = rp.simulate_reading([0, 0, 0], [3, 1, 2], 10)
    assert order.tolist() == [1, 2, 0] and finish.tolist() == [30.0, 10.0, 20.0]
    # the reader cannot read a study before it arrives, and idles until the next arrival
    finish, order = rp.simulate_reading([0, 100, 5], [9, 0, 1], 10)
    assert order.tolist() == [0, 2, 1] and finish.tolist() == [10.0, 110.0, 20.0]
    # a higher-priority arrival waits for the study being read (no pre-emption)
    finish, _ = rp.simulate_reading([0, 1], [1, 0], 10)
    assert finish.tolist() == [10.0, 20.0]
    with pytest.raises(ParameterError, match="minutes_per_study"):
        rp.simulate_reading([0], [0], 0)


def test_prioritising_positives_shortens_their_time_to_read():
    rng = np.random.default_rng(1)
    arrival = np.sort(rng.integers(0, 600, 200)).astype(float)
    positive = rng.random(200) < 0.2
    fcfs = np.lexsort((np.arange(200), arrival))
    fcfs_rank = np.empty(200)
    fcfs_rank[fcfs] = np.arange(200)
    ai_rank = np.where(positive, 0, 1) * 1000 + fcfs_rank  # positives first, then FCFS
    f_fin, _ = rp.simulate_reading(arrival, fcfs_rank, 5)
    a_fin, _ = rp.simulate_reading(arrival, ai_rank, 5)
    ttr_f, ttr_a = f_fin - arrival, a_fin - arrival
    assert ttr_a[positive].mean() < ttr_f[positive].mean()
    assert ttr_a[~positive].mean() > ttr_f[~positive].mean()
    assert math.isclose(ttr_a.sum(), ttr_f.sum(), rel_tol=0.5)  # same work, redistributed
    assert (ttr_f >= 5).all() and (ttr_a >= 5).all()


def test_calibration_error_and_roc():
    """The report uses the package's one ECE (cds.evaluation.calibration) and ROC points (cds.evaluation.metrics)."""
    from cds.evaluation import calibration, metrics

    assert rp.expected_calibration_error is calibration.expected_calibration_error
    assert rp.roc_points is metrics.roc_points
    y = np.array([0] * 50 + [1] * 50)
    assert rp.expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert rp.expected_calibration_error(y, np.where(y == 1, 0.95, 0.05)) == pytest.approx(0.05)
    assert rp.expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)
    fpr, tpr = rp.roc_points(y, np.where(y == 1, 0.9, 0.1))
    assert fpr.tolist() == [0.0, 0.0, 1.0] and tpr.tolist() == [0.0, 1.0, 1.0]


def test_cli_arguments(tmp_path, monkeypatch):
    parser = rp.add_report_arguments(argparse.ArgumentParser())
    pfile = tmp_path / "p.json"
    pfile.write_text(json.dumps({"n_boot": 100, "models": ["cxr-icu"], "cohort": "from-file"}))
    (tmp_path / "salt").write_text("s3cret\n")
    args = parser.parse_args(["--cohort", "c", "--models", "pneumonia, cxr-icu", "--threshold", "cxr-icu=0.4",
                              "--start=-7d", "--deidentify", "--salt-file", str(tmp_path / "salt"),
                              "--params", str(pfile), "--reference-date", "2026-02-01", "--no-validate"])
    p = rp._cli_parameters(args)
    assert p == {"n_boot": 100, "models": ["pneumonia", "cxr-icu"], "cohort": "from-file", "start_date": "-7d",
                 "reference_date": "2026-02-01", "thresholds": {"cxr-icu": 0.4}, "deidentify": True,
                 "salt": "s3cret", "validate": False}
    with pytest.raises(ParameterError, match="^--threshold: "):
        rp._cli_parameters(parser.parse_args(["--threshold", "0.4"]))
    with pytest.raises(ParameterError, match=r"^thresholds\['cxr-icu'\]: "):
        rp._cli_parameters(parser.parse_args(["--threshold", "cxr-icu=high"]))
    assert rp._cli_parameters(parser.parse_args([]))["reference_date"] == __import__("datetime").date.today().isoformat()


def test_anchors_hold_the_published_numbers():
    from cds.evaluation.anchors import ANCHORS, anchors_for, get_anchor

    assert [a.short for a in ANCHORS] == ["McKinney 2020", "Bhave 2024", "Backhaus 2022", "Yu 2024", "TorchXRayVision"]
    assert get_anchor("mckinney2020").numbers["auroc_uk"] == 0.966 and get_anchor("mckinney2020").numbers["auroc_us"] == 0.883
    bh = get_anchor("bhave2024").numbers
    assert (bh["auroc_composite"], bh["sensitivity_at_73_specificity"], bh["radiologists_sensitivity_at_73_specificity"]) \
        == (0.80, 0.71, 0.66)
    bk = get_anchor("backhaus2022").numbers
    assert (bk["gls_icc_vs_manual"], bk["gls_hazard_ratio_per_percent"], bk["c_statistic_automated"]) == (0.81, 1.12, 0.691)
    assert get_anchor("torchxrayvision").numbers == {"auroc_cardiomegaly_nih": 0.88, "auroc_nodule_nih": 0.69}
    assert all(a.caveats for a in ANCHORS)
    assert [a.key for a in anchors_for("cxr-cardiomegaly")] == ["bhave2024", "torchxrayvision"]


# ------------------------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_report_writes_all_outputs(posted_run):
    out = posted_run["out_dir"]
    for name in rp.OUTPUT_FILES:
        assert (out / name).stat().st_size > 1000, name
    for fig in ("cohort", "scores", "triage", "performance"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 5000
    html = _all_text(out / "report.html")
    assert "Cohort report" in html and html.count("data:image/png;base64") >= 4
    assert "rp.prepare(" not in html and "check_notebook_parameters" not in html  # no code cells
    for section in ("Findings per task", "Triage", "Performance against outcome labels", "published anchors",
                    "McKinney 2020", "Bhave 2024", "Backhaus 2022", "Yu 2024", "TorchXRayVision"):
        assert section in html, section
    print(f"\nreport on the small cohort: {posted_run['wall_s']:.1f} s ({posted_run['seconds']})")


def test_results_json_content(posted_run):
    res = json.loads((posted_run["out_dir"] / "results.json").read_text())
    m = res["metrics"]["models"]
    assert set(m) == set(MODELS)
    # 10 Hannover radiographs, one unreadable; the 2 Synthea studies have no pixels
    icu = m["cxr-icu"]
    assert icu["studies_with_findings"] == 9 and icu["failed_studies"] == 3
    assert icu["failures_by_error"] == {"ImageReadError": 1, "ModelInputError": 2}
    assert icu["no_answer_by_reason"] == {"failed": 3}
    # the paediatric demo model is not meant for these adults (no recorded age): no answer for any radiograph
    pneu = m["pneumonia"]
    assert pneu["findings"] == 0 and pneu["failed_studies"] == 12
    assert pneu["no_answer_by_reason"] == {"failed": 2, "outside-intended-use": 10}
    assert m["cxr-cardiomegaly"]["findings"] == 0 and m["cxr-cardiomegaly"]["failed_studies"] == 12
    perf = m["cxr-icu"]["performance"]
    assert (perf["n"], perf["n_positive"]) == (5, 2)  # first radiograph per Hannover patient; ICU for 2
    assert 0 <= perf["auroc"]["value"] <= 1 and 0 <= perf["ece"] <= 1
    assert perf["training_overlap"] == {"patients": 5, "in_training_set": 5}
    assert {s["group"] for s in perf["subgroups"] if s["variable"] == "age band"} == {"unknown"}
    assert m["pneumonia"]["performance"] is None
    tri = m["cxr-icu"]["triage"]
    assert tri["studies"] == 12 and tri["positives"] == 2 and "ICU admission" in tri["positive_definition"]
    assert "own positive call" in m["pneumonia"]["triage"]["positive_definition"]
    assert res["metrics"]["parameters"]["models"] == MODELS and "salt" not in res["metrics"]["parameters"]
    assert res["n_studies"] == 9 and res["n_findings"] == 9


def test_results_fhir_validates_as_r4(posted_run):
    from fhir.resources.R4B.bundle import Bundle

    bundle = json.loads((posted_run["out_dir"] / "results.fhir.json").read_text())
    Bundle.model_validate(bundle)
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Device", "DocumentReference", "Observation", "DiagnosticReport", "Provenance", "RiskAssessment"} <= types
    assert all(e["resource"].get("issued", "2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z" for e in bundle["entry"])
    assert bundle["timestamp"] == "2026-01-01T00:00:00Z"


def test_per_study_failures_are_listed(posted_run, small_cohort):
    res = json.loads((posted_run["out_dir"] / "results.json").read_text())
    fails = res["failures"]
    age = [f for f in fails if f["model_id"] == "cxr-cardiomegaly" and "needs EHR input 'age'" in f["message"]]
    assert {f["patient_id"] for f in age} == set(HANNOVER) and len(age) == 10
    no_pixels = [f for f in fails if "nowhere where its pixels are" in f["message"]]
    assert {f["patient_id"] for f in no_pixels} == set(SYNTHEA) and len(no_pixels) == 6  # 2 studies x 3 models
    unreadable = [f for f in fails if f["error"] == "ImageReadError"]
    assert {f["model_id"] for f in unreadable} == {"cxr-icu"}  # pneumonia refused it on the record alone
    assert all(UNREADABLE.split("/")[-1] in f["message"] and "not a DICOM file" in f["message"] for f in unreadable)
    html = _all_text(posted_run["out_dir"] / "report.html")
    assert "not a DICOM file" in html
    assert "needs EHR input &#x27;age&#x27;" in html or "needs EHR input 'age'" in html
    assert "nowhere where its pixels are" in html
    for pid in [*HANNOVER, *SYNTHEA]:
        assert pid in html  # identified mode lists the failed studies by patient


def test_post_writes_outcome_per_resource(posted_run):
    outcome = json.loads((posted_run["out_dir"] / "post_outcome.json").read_text())
    bundle = json.loads((posted_run["out_dir"] / "results.fhir.json").read_text())
    assert outcome["ok"] and outcome["entries"] == len(bundle["entry"]) == len(posted_run["post"])
    assert outcome["by_status"] == {"201 Created": len(bundle["entry"])}
    assert {f"{k[0]}/{k[1]}" for k in posted_run["store"]} == {e["request"]["url"] for e in bundle["entry"]}
    assert all(o["request"].startswith("PUT ") for o in outcome["outcome"])


@pytest.mark.slow
def test_rerun_gives_identical_results_and_ids(deid_runs):
    a, b = deid_runs
    assert (a["out_dir"] / "results.json").read_bytes() == (b["out_dir"] / "results.json").read_bytes()
    fa = (a["out_dir"] / "results.fhir.json").read_bytes()
    assert fa == (b["out_dir"] / "results.fhir.json").read_bytes()
    ids = [e["resource"]["id"] for e in json.loads(fa)["entry"]]
    assert len(ids) == len(set(ids)) > 20


@pytest.mark.slow
def test_identified_and_deidentified_ids_differ(posted_run, deid_runs):
    ident = {e["resource"]["id"] for e in json.loads((posted_run["out_dir"] / "results.fhir.json").read_text())["entry"]
             if e["resource"]["resourceType"] == "Observation"}
    pseudo = {e["resource"]["id"] for e in json.loads((deid_runs[0]["out_dir"] / "results.fhir.json").read_text())
              ["entry"] if e["resource"]["resourceType"] == "Observation"}
    # 9 cxr-icu results + one "no answer" Observation per study a model did not answer for (3 + 12 + 12)
    assert len(ident) == len(pseudo) == 9 + 27 and not ident & pseudo


@pytest.mark.slow
def test_deidentified_outputs_hold_no_names_ids_or_birth_dates(deid_runs, small_cohort):
    from fhir.resources.R4B.bundle import Bundle

    secrets = _secrets(small_cohort)
    assert {"Louis", "Erdman", "Chet", "Thompson"} <= secrets["name"] and len(secrets["birth_date"]) == 2
    assert set(HANNOVER) | set(SYNTHEA) <= secrets["id"] and len(secrets["uid"]) >= 12
    out = deid_runs[0]["out_dir"]
    for name in rp.OUTPUT_FILES:
        text = _all_text(out / name)
        for kind, values in secrets.items():
            for v in values:
                if kind == "name":
                    assert not re.search(rf"(?<![A-Za-z]){re.escape(v)}(?![A-Za-z])", text), f"{name}: a name"
                else:
                    assert v not in text, f"{name}: a {kind}"
        assert SALT not in text, f"{name}: the salt"
    fhir_text = (out / "results.fhir.json").read_text()
    Bundle.model_validate(json.loads(fhir_text))
    # the Findings' study facts (record ids, study dates, EHR Observation ids) are dropped, not written
    for fact in ("effectiveDateTime", "occurrenceDateTime", '"reference": "ImagingStudy/', '"reference": "Observation/',
                 '"reference": "Patient/'):
        assert fact not in fhir_text, fact
    res = json.loads((out / "results.json").read_text())
    assert res["n_findings"] == 9 and res["metrics"]["parameters"]["deidentify"] is True
    assert all("/" not in f["message"] for f in res["failures"])
    assert sum("[path removed]: not a DICOM file" in f["message"] for f in res["failures"]) == 1
    html = _all_text(out / "report.html")
    for text in ("needs EHR input", "nowhere where its pixels are", "not a DICOM file"):  # failures still listed
        assert text in html


def test_leak_check_catches_identifiers(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"note": "seen Louis Erdman, born 1989-07-27"}')
    ids = {"name": {"Louis", "Erdman"}, "birth_date": {"1989-07-27"}, "patient_id": {"76bc2bcd"}}
    with pytest.raises(rp.IdentifierLeak, match=r"x.json: 1 birth_date, 2 name") as err:
        rp.check_deidentified([f], ids, remove=True)
    assert "Louis" not in str(err.value) and not f.exists()
    g = tmp_path / "y.json"
    g.write_text('{"note": "Louisiana"}')
    rp.check_deidentified([g], ids)  # whole words only for names


@pytest.mark.slow
def test_failing_cell_is_named_and_exit_code_nonzero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "cds.reports.report", "--cohort", str(empty), "--out", str(tmp_path / "o"),
                        "--no-progress", "--models", "pneumonia"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert re.search(r"cohort_report.ipynb: cell \d+ failed: FhirInputError: .*empty", r.stderr), r.stderr[-2000:]
    assert not (tmp_path / "o" / "results.json").exists()


def test_threshold_override_and_date_window_in_process(small_cohort, tmp_path):
    """The module API without papermill: a threshold replaces the card's (band dropped, FHIR Device too)
    and the date window keeps only the studies that started in it."""
    params = rp.validate_report_parameters({**FAST, "cohort": str(small_cohort), "out_dir": str(tmp_path),
                                            "models": ["cxr-icu"], "thresholds": {"cxr-icu": 0.3},
                                            "start_date": "2020-04-02", "end_date": "2020-04-04", "n_boot": 50})
    ctx = rp.prepare(params)
    started = ctx.studies["started"].dt.strftime("%Y-%m-%d")
    assert started.between("2020-04-02", "2020-04-04").all() and ctx.scope["studies_in_window"] == len(ctx.studies) == 4
    assert ctx.scope["series_outside_window"] == 8
    rp.run_models(ctx, progress=False)
    assert ctx.findings and all(f.threshold == 0.3 and f.indeterminate is None for f in ctx.findings)
    table = rp.findings_table(ctx)
    assert table.loc["cxr-icu", "threshold from"] == "parameter" and table.loc["cxr-icu", "indeterminate band"] == "-"
    paths = rp.write_outputs(ctx)
    bundle = json.loads(paths["results_fhir"].read_text())
    device = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device")
    assert [p["valueQuantity"][0]["value"] for p in device["property"]] == [0.3]
    res = json.loads(paths["results_json"].read_text())
    assert res["metrics"]["models"]["cxr-icu"]["threshold_from"] == "parameter"


def test_importing_the_report_module_stays_light():
    """`cds report` builds its options from cds.reports.report: importing it must not pull in pandas or torch."""
    code = "import sys, cds.reports.report; print(sorted(m for m in ('pandas', 'numpy', 'torch', 'matplotlib') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_cli_param_name_value_is_type_checked_before_work(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cds.cli", "report", "--out", str(tmp_path / "o"),
                        "--param", "minutes_per_study=fast"], capture_output=True, text=True)
    assert r.returncode == 2 and "minutes_per_study" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "report.html").exists()
    r = subprocess.run([sys.executable, "-m", "cds.cli", "report", "--out", str(tmp_path / "o"),
                        "--param", "no_such_parameter=1"], capture_output=True, text=True)
    assert r.returncode == 2 and "no_such_parameter" in r.stderr


@pytest.mark.slow
def test_a_cohort_without_icu_stays_still_gets_a_report(samples_dir, tmp_path):
    """The shipped Synthea patients alone: no ICU Encounter anywhere (the ICU label step used to crash)."""
    cohort = tmp_path / "synthea"
    shutil.copytree(samples_dir / "synthea", cohort)
    result = rp.run_report(cohort, tmp_path / "out", FAST, progress=False)
    res = json.loads(Path(result["results_json"]).read_text())
    assert res["schema"] == "cds.results/1" and Path(result["html"]).is_file()
    # every Synthea ImagingStudy in the sample cohort is pixel-less: each eligible study is a recorded failure
    assert res["n_findings"] == 0 and all(f["model_id"] in MODELS for f in res["failures"])
