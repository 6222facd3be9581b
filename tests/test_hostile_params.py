"""Hostile parameters (issue 9, item 5): every option a user can get wrong is one line on stderr naming
the option (or the parameter it sets) and what to give, exit code 2, no traceback and no work done;
the correct invocation beside it still runs. Unexpected errors go through the last-resort handler of
``cds``: one line naming the log file, the traceback in a private log without secrets, exit code 1;
Ctrl-C exits 130.

The CLI runs in-process (``cds.cli.main``) with the expensive steps replaced by recorders: the report
notebook, the model tasks and the sample builder never start here, and a test fails if one would.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cds.cli import main

GOOD_SALT = "a-good-salt-of-more-than-16-bytes"
HANNOVER = "04a33bab"
SYNTHEA = "76bc2bcd-3074-46b9-bc18-18daf50825a2"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cohort(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Hannover patient with its radiographs and one Synthea patient."""
    d = tmp_path_factory.mktemp("hostile") / "cohort"
    (d / "hannover").mkdir(parents=True)
    (d / "synthea").mkdir()
    shutil.copy(samples_dir / "hannover" / f"{HANNOVER}.json", d / "hannover")
    shutil.copytree(samples_dir / "dicom" / "hannover" / HANNOVER, d / "dicom" / "hannover" / HANNOVER)
    shutil.copy(samples_dir / "synthea" / f"{SYNTHEA}.json", d / "synthea")
    return d


@pytest.fixture
def files(tmp_path: Path, cohort: Path) -> dict[str, str]:
    """Placeholders of the argument templates: an existing file, salt files, a DICOM file, the cohort."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty_salt").write_text("\n")
    (tmp_path / "short_salt").write_text("short-salt\n")  # 10 bytes
    (tmp_path / "good_salt").write_text(GOOD_SALT + "\n")
    (tmp_path / "latin1_salt").write_bytes(b"\xe9" * 20)
    (tmp_path / "params_list.json").write_text("[1, 2]")
    (tmp_path / "dirs").mkdir()
    return {"tmp": str(tmp_path), "file": str(tmp_path / "a_file"), "cohort": str(cohort),
            "dcm": str(next(cohort.rglob("*.dcm")))}


class Recorder:
    """Stands in for an expensive step; records its calls (the bad-parameter tests assert it was never called)."""

    def __init__(self, result: Any = None) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.result = result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if callable(self.result) else self.result


def _fake_notebook(name: str, out_dir: Any, params: dict[str, Any], **_: Any) -> dict[str, Any]:
    """What run_notebook leaves behind, without a kernel: the two outputs run_report reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"n_findings": 0, "n_failures": 0, "params": params}))
    (out / "results.fhir.json").write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}))
    return {"html": out / "report.html", "notebook": out / name}


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    """Replace every step that does real work by a recorder."""
    import cds.reports.notebook_run as notebook_run
    import cds.tooling.samples as samples
    from cds.models.task_table import TASKS

    rec = {"notebook": Recorder(_fake_notebook), "evaluate": Recorder({"auroc": 0.5}), "train": Recorder("bundle"),
           "samples": Recorder({"patients": 0})}
    monkeypatch.setattr(notebook_run, "run_notebook", rec["notebook"])
    task = type(TASKS["pneumonia"])
    monkeypatch.setattr(task, "evaluate", lambda self, *a, **k: rec["evaluate"](*a, **k))
    monkeypatch.setattr(task, "train", lambda self, *a, **k: rec["train"](*a, **k))
    monkeypatch.setattr(samples, "build_sample_cohort", rec["samples"])
    monkeypatch.delenv("CDS_REPORT_SALT", raising=False)
    return rec


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (a wrong type, an unknown option)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


R = ["report", "--out", "{tmp}/out", "--no-progress"]
RC = ["report", "--cohort", "{cohort}", "--out", "{tmp}/out", "--no-progress"]

# (argv template, text the one stderr line must hold: the option or parameter named, and why)
BAD: list[Any] = [
    # cds report: output folder, models, dates, thresholds, counts, salt, cohort, parameter files
    pytest.param(["report", "--cohort", "{cohort}", "--out", "{file}"], "--out (out_dir): ", id="out-is-a-file"),
    pytest.param(["report", "--cohort", "{cohort}", "--out", "{file}/sub"], "is a file, not a folder",
                 id="out-under-a-file"),
    pytest.param(["report", "--cohort", "{cohort}", "--out", ""], "--out (out_dir): empty", id="out-empty"),
    pytest.param(["report", "--cohort", "{cohort}", "--out", "   "], "--out (out_dir): empty", id="out-blank"),
    pytest.param([*RC, "--models", ""], "--models (models): ", id="models-empty"),
    pytest.param([*RC, "--models", "pneumonia,,cxr-icu"], "--models (models): ", id="models-empty-item"),
    pytest.param([*RC, "--models", "pneumona"], "unknown model 'pneumona' (did you mean 'pneumonia'?)",
                 id="models-unknown"),
    pytest.param([*RC, "--models", "pneumonia,pneumonia"], "listed twice: pneumonia", id="models-duplicate"),
    pytest.param([*RC, "--reference-date", "notadate"], "--reference-date (reference_date): 'notadate' is not a date",
                 id="reference-date-garbage"),
    pytest.param([*RC, "--reference-date", "03/04/2020"], "--reference-date (reference_date): '03/04/2020' is ambiguous",
                 id="reference-date-us-style"),
    pytest.param([*RC, "--reference-date", "2020-02-30"], "is not a calendar date", id="reference-date-feb-30"),
    pytest.param([*RC, "--reference-date", "2020-4-3"], "--reference-date (reference_date): ", id="reference-date-short"),
    pytest.param([*RC, "--start", "04/01/2020"], "--start (start_date): '04/01/2020' is ambiguous", id="start-us-style"),
    pytest.param([*RC, "--end", "1.4.2020"], "--end (end_date): '1.4.2020' is ambiguous", id="end-dotted"),
    pytest.param([*RC, "--start=-3w"], "or -Nd for N days before", id="start-bad-relative"),
    pytest.param([*RC, "--start", "2020-04-05", "--end", "2020-04-01"], "end_date 2020-04-01 is before",
                 id="window-inverted"),
    pytest.param([*RC, "--threshold", "pneumonia=1.5", "--models", "pneumonia"], "out of range; give a number between 0 "
                 "and 1", id="threshold-above-1"),
    pytest.param([*RC, "--threshold", "pneumonia=-0.1", "--models", "pneumonia"], "thresholds['pneumonia']",
                 id="threshold-negative"),
    pytest.param([*RC, "--threshold", "pneumonia=nan", "--models", "pneumonia"], "not a finite number",
                 id="threshold-nan"),
    pytest.param([*RC, "--threshold", "pneumonia=inf", "--models", "pneumonia"], "not a finite number",
                 id="threshold-inf"),
    pytest.param([*RC, "--threshold", "pneumonia=high", "--models", "pneumonia"], "'high' is not a number",
                 id="threshold-text"),
    pytest.param([*RC, "--threshold", "pneumonia=0.4", "--threshold", "pneumonia=0.5", "--models", "pneumonia"],
                 "--threshold: 'pneumonia' is given twice", id="threshold-twice"),
    pytest.param([*RC, "--threshold", "0.4"], "--threshold: '0.4': expected MODEL=VALUE", id="threshold-no-model"),
    pytest.param([*RC, "--threshold", "cxr-icu=0.4", "--models", "pneumonia"], "is not one of the models run",
                 id="threshold-model-not-run"),
    pytest.param([*RC, "--n-boot", "-5"], "--n-boot (n_boot): ", id="n-boot-negative"),
    pytest.param([*RC, "--n-boot", "abc"], "argument --n-boot: invalid int value: 'abc'", id="n-boot-text"),
    pytest.param([*RC, "--minutes-per-study", "0"], "--minutes-per-study (minutes_per_study): ",
                 id="minutes-zero"),
    pytest.param([*RC, "--minutes-per-study", "nan"], "--minutes-per-study (minutes_per_study): ", id="minutes-nan"),
    pytest.param([*RC, "--deidentify"], "salt: deidentify=True needs a secret salt", id="deidentify-without-salt"),
    pytest.param([*RC, "--deidentify", "--salt-file", "{tmp}/short_salt"], "shorter than 16 bytes", id="salt-short"),
    pytest.param([*RC, "--deidentify", "--salt-file", "{tmp}/empty_salt"], "--salt-file: ", id="salt-file-empty"),
    pytest.param([*RC, "--deidentify", "--salt-file", "{tmp}/absent"], "--salt-file: ", id="salt-file-missing"),
    pytest.param([*RC, "--deidentify", "--salt-file", "{tmp}/dirs"], "is not a file", id="salt-file-a-folder"),
    pytest.param([*RC, "--deidentify", "--salt-file", "{tmp}/latin1_salt"], "is not UTF-8 text",
                 id="salt-file-not-text"),
    pytest.param([*RC, "--deidentify", "--param", "salt=short-salt"], "shorter than 16 bytes", id="salt-param-short"),
    pytest.param([*R, "--cohort", "{tmp}/absent"], "--cohort (cohort): ", id="cohort-missing"),
    pytest.param([*R, "--cohort", ""], "--cohort (cohort): empty", id="cohort-empty"),
    pytest.param([*RC, "--post"], "--fhir-base: --post needs", id="post-without-base"),
    pytest.param([*RC, "--fhir-base", "ftp://example.org"], "is not an http(s) FHIR base URL", id="fhir-base-not-http"),
    pytest.param([*RC, "--params", "{tmp}/absent.json"], "--params: ", id="params-file-missing"),
    pytest.param([*RC, "--params", "{tmp}/params_list.json"], "expected a JSON object", id="params-not-an-object"),
    pytest.param([*RC, "--param", "foo"], "--param: 'foo': expected NAME=VALUE", id="param-no-value"),
    pytest.param([*RC, "--param", "modles=[]"], "did you mean 'models'?", id="param-unknown-name"),
    pytest.param([*RC, "--param", "n_boot=1.5"], "n_boot: expected int", id="param-wrong-type"),
    pytest.param([*RC, "--param", "validate=yes"], "validate: expected bool", id="param-bool-as-text"),
    pytest.param([*RC, "--nope"], "unrecognized arguments: --nope", id="report-unknown-option"),
    # cds cohort summary
    pytest.param(["cohort", "summary", "{tmp}/absent"], "path: ", id="summary-path-missing"),
    pytest.param(["cohort", "summary", "{cohort}", "--reference-date", "03/04/2020"], "--reference-date: "
                 "'03/04/2020' is ambiguous", id="summary-date-us-style"),
    pytest.param(["cohort", "summary", "{cohort}", "--reference-date", "yesterday"], "--reference-date: 'yesterday' "
                 "is not a date", id="summary-date-word"),
    # cds overview
    pytest.param(["overview", "--cohort", "{cohort}", "--out", "{file}"], "--out: ", id="overview-out-a-file"),
    pytest.param(["overview", "--cohort", "{cohort}", "--out", ""], "--out: empty", id="overview-out-empty"),
    pytest.param(["overview", "--cohort", "{cohort}", "--out", "{tmp}/o", "--reference-date", "12/31/2020"],
                 "--reference-date: '12/31/2020' is ambiguous", id="overview-date-us-style"),
    pytest.param(["overview", "--cohort", "", "--out", "{tmp}/o"], "--cohort: empty", id="overview-cohort-empty"),
    # cds evaluate / train
    pytest.param(["evaluate", "pneumona", "--data", "{tmp}"], "task: unknown task 'pneumona' (did you mean "
                 "'pneumonia'?)", id="evaluate-task-unknown"),
    pytest.param(["evaluate", "pneumonia", "--data", "{tmp}", "--n-boot", "-1"], "--n-boot: -1 is out of range",
                 id="evaluate-n-boot-negative"),
    pytest.param(["evaluate", "pneumonia", "--data", "{tmp}", "--n-boot", "1.5"], "argument --n-boot: invalid int",
                 id="evaluate-n-boot-fraction"),
    pytest.param(["evaluate", "pneumonia", "--data", "{tmp}", "--bundle", "{tmp}/absent"], "--bundle: ",
                 id="evaluate-bundle-missing"),
    pytest.param(["evaluate", "pneumonia", "--data", ""], "--data: empty", id="evaluate-data-empty"),
    pytest.param(["evaluate", "pneumonia", "--data", "{tmp}", "--split", ""], "--split: empty",
                 id="evaluate-split-empty"),
    pytest.param(["evaluate", "pneumonia"], "the following arguments are required: --data", id="evaluate-no-data"),
    pytest.param(["train", "pneumonia", "--out", "{file}", "--quick"], "--out: ", id="train-out-a-file"),
    pytest.param(["train", "pneumonia", "--out", "{tmp}/b", "--seed", "-1"], "--seed: -1 is out of range",
                 id="train-seed-negative"),
    pytest.param(["train", "nope", "--out", "{tmp}/b"], "task: unknown task 'nope'", id="train-task-unknown"),
    # cds run / models
    pytest.param(["run", "nope", "{dcm}"], "unknown model 'nope'", id="run-model-unknown"),
    pytest.param(["run", "", "{dcm}"], "model: empty", id="run-model-empty"),
    pytest.param(["run", "pneumonia", ""], "path: empty", id="run-path-empty"),
    pytest.param(["run", "pneumonia", "{tmp}/absent.dcm"], "absent.dcm: no such file or folder", id="run-path-missing"),
    pytest.param(["run", "pneumonia", "{dcm}", "--series", ""], "--series: empty", id="run-series-empty"),
    pytest.param(["run", "pneumonia", "{dcm}", "--models-dir", "{tmp}/absent"], "--models-dir: ",
                 id="run-models-dir-missing"),
    pytest.param(["models", "--models-dir", "{file}"], "--models-dir: ", id="models-dir-a-file"),
    # cds samples build
    pytest.param(["samples", "build", "--synthea", "{tmp}/absent", "--hannover", "{tmp}", "--out", "{tmp}/s"],
                 "--synthea: ", id="samples-synthea-missing"),
    pytest.param(["samples", "build", "--synthea", "{tmp}", "--hannover", "{file}", "--out", "{tmp}/s"],
                 "--hannover: ", id="samples-hannover-a-file"),
    pytest.param(["samples", "build", "--synthea", "{tmp}", "--hannover", "{tmp}", "--out", "{file}"],
                 "--out: ", id="samples-out-a-file"),
    # cds explorer (its checks live in cds.explorer.app; cds shows them as one line like the others)
    pytest.param(["explorer", "--port", "99999"], "--port: ", id="explorer-port-too-big"),
    pytest.param(["explorer", "--port", "0"], "--port: ", id="explorer-port-zero"),
    # the command line itself
    pytest.param(["nosuchcommand"], "invalid choice: 'nosuchcommand'", id="unknown-subcommand"),
    pytest.param(["cohort"], "the following arguments are required: cohort_command", id="missing-subcommand"),
]


@pytest.mark.parametrize(("template", "named"), BAD)
def test_a_bad_parameter_is_one_named_line_and_no_work(template: list[str], named: str, files: dict[str, str],
                                                       work: dict[str, Recorder],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(**files) for a in template]
    code, out, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("cds") and ": error: " in lines[0], err
    assert named in lines[0], err
    assert "Traceback" not in err + out
    assert GOOD_SALT not in err and "short-salt" not in err  # a salt never appears in a message
    assert all(not r.calls for r in work.values()), "work started despite a bad parameter"
    assert not (Path(files["tmp"]) / "out").exists()


def test_there_are_at_least_forty_distinct_cases() -> None:
    ids = [p.id for p in BAD]
    assert len(ids) == len(set(ids)) >= 40
    assert len({tuple(p.values[0]) for p in BAD}) == len(BAD)


# ------------------------------------------------------------------------- the correct invocations
def test_the_correct_report_invocation_beside_them_runs(files: dict[str, str], work: dict[str, Recorder],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(**files) for a in RC] + [
        "--models", "pneumonia,cxr-icu", "--reference-date", "2020-04-03", "--start", "2020-03-01", "--end=-0d",
        "--threshold", "pneumonia=0.4", "--threshold", "cxr-icu=1", "--n-boot", "0", "--minutes-per-study", "2.5",
        "--deidentify", "--salt-file", "{tmp}/good_salt".format(**files), "--param", "validate=false"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    ((args, kwargs),) = work["notebook"].calls
    params = args[2]
    assert params["models"] == ["pneumonia", "cxr-icu"] and params["thresholds"] == {"pneumonia": 0.4, "cxr-icu": 1.0}
    assert (params["reference_date"], params["start_date"], params["end_date"]) == ("2020-04-03", "2020-03-01", "-0d")
    assert params["n_boot"] == 0 and params["minutes_per_study"] == 2.5 and params["validate"] is False
    assert "salt" not in params and GOOD_SALT not in out + err  # the salt goes to the kernel's environment only
    assert out.splitlines()[0].startswith("report: ")


def test_the_correct_invocations_of_the_other_subcommands_run(files: dict[str, str], work: dict[str, Recorder],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    tmp = files["tmp"]
    code, out, err = _run(["cohort", "summary", files["cohort"], "--reference-date", "2020-04-03", "--json",
                           "--no-validate"], capsys)
    assert code == 0, err
    assert json.loads(out)["patients"] == 2
    assert _run(["evaluate", "pneumonia", "--data", tmp, "--n-boot", "0", "--json"], capsys)[0] == 0
    assert _run(["train", "pneumonia", "--out", f"{tmp}/new/bundle", "--seed", "3", "--quick"], capsys)[0] == 0
    assert work["evaluate"].calls[0][1]["n_boot"] == 0 and work["train"].calls[0][1]["seed"] == 3
    assert _run(["samples", "build", "--synthea", tmp, "--hannover", tmp, "--out", f"{tmp}/s"], capsys)[0] == 0
    assert _run(["overview", "--cohort", files["cohort"], "--out", f"{tmp}/ov", "--reference-date", "2020-04-03"],
                capsys)[0] == 0
    assert work["notebook"].calls[-1][0][2]["reference_date"] == "2020-04-03"
    code, out, err = _run(["models", "--models-dir", f"{tmp}/dirs", "--json"], capsys)
    assert code == 0 and {m["model_id"] for m in json.loads(out)} >= {"pneumonia", "cxr-icu"}, err


def test_run_with_a_correct_path_still_runs(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["run", "cxr-cardiomegaly", files["dcm"], "--ehr", "age=61", "--ehr", "sex=female",
                           "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["model_id"] == "cxr-cardiomegaly"


# ------------------------------------------------------------------------------ last-resort handler
def _boom(message: str) -> Any:
    def raise_it(*_: Any, **__: Any) -> Any:
        raise RuntimeError(message)
    return raise_it


def test_an_unexpected_error_is_one_line_and_a_private_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cds.models.registry import ModelRegistry

    logs = tmp_path / "logs"
    monkeypatch.setenv("CDS_LOG_DIR", str(logs))
    monkeypatch.setenv("CDS_REPORT_SALT", GOOD_SALT)
    monkeypatch.setattr(ModelRegistry, "list_models", _boom(f"unexpected state near {GOOD_SALT}"))
    code, out, err = _run(["models", "--json"], capsys)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("cds: internal error (RuntimeError); details written to ")
    log = Path(line.rsplit(" ", 1)[1])
    assert log.parent == logs and log.is_file()
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700 and stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: unexpected state near" in text
    assert "list_models" in text and "command: cds models; options given: --json" in text
    assert GOOD_SALT not in text and "[secret removed]" in text
    assert "Traceback" not in err + out


def test_the_log_holds_no_option_values_and_no_salt_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 files: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import cds.reports.cli as report_cli

    monkeypatch.setenv("CDS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("CDS_REPORT_SALT", raising=False)
    monkeypatch.setattr(report_cli, "run_report", _boom(f"salt was {GOOD_SALT}"))
    code, _, err = _run([a.format(**files) for a in RC] + ["--deidentify", "--salt-file", f"{files['tmp']}/good_salt",
                                                           "--reference-date", "2020-04-03"], capsys)
    assert code == 1, err
    text = Path(err.strip().rsplit(" ", 1)[1]).read_text()
    assert GOOD_SALT not in text and "2020-04-03" not in text.split("\n\n", 1)[0]
    assert "options given: --cohort --deidentify --no-progress --out --reference-date --salt-file" in text


def test_ctrl_c_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cds.models.registry import ModelRegistry

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelRegistry, "list_models", interrupted)
    code, out, err = _run(["models"], capsys)
    assert code == 130 and err.strip() == "cds: interrupted" and "Traceback" not in out


def test_an_unwritable_log_folder_still_gives_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from cds.models.registry import ModelRegistry

    (tmp_path / "blocker").write_text("a file where the log folder should be")
    monkeypatch.setenv("CDS_LOG_DIR", str(tmp_path / "blocker" / "logs"))
    monkeypatch.setattr(ModelRegistry, "list_models", _boom("x"))
    code, _, err = _run(["models"], capsys)
    (line,) = err.strip().splitlines()
    assert code == 1 and line.startswith("cds: internal error (RuntimeError); no log written") and "CDS_LOG_DIR" in line


# ------------------------------------------------------------------------------------ as a process
def test_bad_date_and_internal_error_through_a_real_process(tmp_path: Path, cohort: Path) -> None:
    env = {**os.environ, "CDS_LOG_DIR": str(tmp_path / "logs")}
    r = subprocess.run([sys.executable, "-m", "cds.cli", "cohort", "summary", str(cohort), "--reference-date",
                        "03/04/2020"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--reference-date: '03/04/2020' is ambiguous" in r.stderr and "ISO YYYY-MM-DD" in r.stderr
    code = ("import sys, cds.cli, cds.models.registry as r\n"
            "r.ModelRegistry.list_models = lambda self: {}['no-such-key']\n"
            "sys.exit(cds.cli.main(['models']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("cds: internal error (KeyError); details written to ")
    assert "KeyError: 'no-such-key'" in Path(r.stderr.strip().rsplit(" ", 1)[1]).read_text()
