"""The ``cds`` command: a thin layer over the Python API. Heavy modules are imported lazily so
``cds --help`` answers in well under a second.

Errors: a mistake in the command line or in a parameter is one line on stderr naming the option and
what to give instead, exit code 2 (argparse's own errors too: :class:`OneLineParser`); every option
is checked before any work (:func:`check_arguments`, with the helpers of :mod:`cds.params`). Any other
exception is caught by a last-resort handler: one line ``cds: internal error (<class>); details
written to <log>``, the traceback in a private log file (:func:`crash_log_dir`: ``$CDS_LOG_DIR`` or
``~/.cache/cds/logs``, mode 0700; no command-line values, secrets removed), exit code 1.
Ctrl-C is ``cds: interrupted``, exit code 130.

>>> build_parser().parse_args(["cohort", "summary", "fhir_samples", "--json"]).json
True
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["main", "build_parser", "check_arguments", "crash_log_dir", "write_crash_log", "OneLineParser"]

from cds.models.tasks import TASK_NAMES as TASKS


def _cmd_cohort_summary(args: argparse.Namespace) -> int:
    from cds.sources.cohort import load_cohort

    cohort = load_cohort(args.path, validate=not args.no_validate, reference_date=args.reference_date)
    summary = cohort.summary()
    if args.problems:
        summary["problems"] = [p.to_dict() for p in cohort.problems]
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for k, v in summary.items():
            print(f"{k:>20}: {v}")
        for p in cohort.problems[:20]:
            print(f"  problem: {p}")
    return 0


def _cmd_samples_build(args: argparse.Namespace) -> int:
    from cds.tooling.samples import build_sample_cohort

    summary = build_sample_cohort(args.synthea, args.hannover, args.out)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_samples_scale(args: argparse.Namespace) -> int:
    from cds.errors import ParameterError
    from cds.params import count, output_dir
    from cds.tooling.scale import MAX_FACTOR, scale_cohort

    factor = count(args.factor, "--factor", 1, MAX_FACTOR)
    seed = count(args.seed, "--seed", 0)
    output_dir(args.out, "--out")
    try:
        summary = scale_cohort(args.source, args.out, factor, seed=seed)
    except ParameterError as exc:  # name the option, not the function's parameter
        option = {"out_dir": "--out", "source": "--source"}.get(exc.where)
        if option is None:
            raise
        raise ParameterError(option, exc.reason) from None
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_overview(args: argparse.Namespace) -> int:
    from cds.locations import cohort_source
    from cds.reports.notebook_run import run_notebook

    cohort = cohort_source(args.cohort)  # none given: the shipped sample cohort (exit 2 if there is none)
    if not cohort.startswith(("http://", "https://")):
        cohort = str(Path(cohort).resolve())
    params = {"cohort": cohort, "out_dir": str(Path(args.out).resolve())}
    if args.reference_date:
        params["reference_date"] = args.reference_date
    result = run_notebook("cohort_overview.ipynb", args.out, params)
    print(f"report: {result['html']}")
    print(f"executed notebook: {result['notebook']}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from cds.models.registry import ModelRegistry

    reg = ModelRegistry(user_dirs=args.models_dir or None)
    table = reg.list_models()
    if args.json:
        print(table.to_json(orient="records", indent=2))
    else:
        cols = ["model_id", "version", "task", "modality", "headline_metric", "headline_value", "headline_ci95", "source"]
        print(table[cols].to_string(index=False) if len(table) else "no models found")
    for err in reg.errors:
        print(f"warning: {err}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cds.locations import cohort_source
    from cds.reports.report import main_report

    if args.cohort is None and not any(str(p).startswith("cohort=") for p in args.param or []) and not args.params:
        args.cohort = cohort_source(None)  # the shipped sample cohort, or exit 2 before any model runs
    return main_report(args)


def _task(name: str):  # noqa: ANN202 - a cds.models.task.TrainableTask (imported lazily)
    from cds.models.task_table import task

    return task(name)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    task = _task(args.task)
    result = task.evaluate(args.data, bundle_dir=args.bundle, n_boot=args.n_boot, split=args.split)
    print(json.dumps(result, indent=2 if not args.json else None, default=str))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    path = _task(args.task).train(args.data, args.out, seed=args.seed, quick=args.quick)
    print(f"bundle written: {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from cds.models.run_file import findings_table, run_file

    findings = run_file(args.model, args.path, args.ehr or [], models_dir=args.models_dir, series_uid=args.series,
                        age_years=args.age, view=args.view)
    if args.json:
        print(json.dumps([f.record_dict() for f in findings], indent=2, default=str))
    else:
        print(findings_table(findings))
    return 0


class OneLineParser(argparse.ArgumentParser):
    r"""An ArgumentParser whose errors are one line on stderr (no usage block), exit code 2.

    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     try:
    ...         OneLineParser(prog="cds x").parse_args(["--nope"])
    ...     except SystemExit as e:
    ...         print(e.code)
    2
    >>> err.getvalue()
    'cds x: error: unrecognized arguments: --nope (see cds x --help)\n'
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="cds", description="Imaging AI next to the patient record: FHIR cohorts, "
                                "MONAI-bundle models, Findings, widgets and reports.")
    from cds import __version__

    p.add_argument("--version", action="version", version=f"cds {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    cohort = sub.add_parser("cohort", help="load and inspect a FHIR cohort")
    csub = cohort.add_subparsers(dest="cohort_command", required=True)
    s = csub.add_parser("summary", help="counts of patients, studies, observations, problems")
    s.add_argument("path", help="Bundle .json, .ndjson, a folder of them, or a FHIR server base URL")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--no-validate", action="store_true", help="skip R4 validation (faster)")
    s.add_argument("--problems", action="store_true", help="include every problem in the output")
    s.add_argument("--reference-date", help="date ages are computed at (YYYY-MM-DD; default today)")
    s.set_defaults(func=_cmd_cohort_summary)

    samples = sub.add_parser("samples", help="the embedded sample cohort")
    ssub = samples.add_subparsers(dest="samples_command", required=True)
    b = ssub.add_parser("build", help="rebuild fhir_samples/ from the public source folders")
    b.add_argument("--synthea", required=True, help="folder laid out like shared/data/synthea-fhir-r4")
    b.add_argument("--hannover", required=True, help="folder laid out like shared/data/hannover-covid19-cxr")
    b.add_argument("--out", required=True, help="output folder (e.g. fhir_samples)")
    b.set_defaults(func=_cmd_samples_build)
    sc = ssub.add_parser("scale", help="write a benchmark cohort: the sample cohort replicated N times (shared images)")
    sc.add_argument("--factor", required=True, help="number of replicas, a whole number >= 1")
    sc.add_argument("--out", required=True, help="output folder (new or empty)")
    sc.add_argument("--source", help="cohort folder to replicate (default: the shipped sample cohort, fhir_samples)")
    sc.add_argument("--seed", default="0", help="seed of the replicas' ids (default 0)")
    sc.set_defaults(func=_cmd_samples_scale)

    o = sub.add_parser("overview", help="run the cohort overview notebook and write an HTML report")
    o.add_argument("--cohort", help="cohort source (default: the shipped sample cohort, fhir_samples)")
    o.add_argument("--out", default="out/overview", help="output folder (default: out/overview)")
    o.add_argument("--reference-date", help="date ages are computed at (YYYY-MM-DD)")
    o.set_defaults(func=_cmd_overview)

    from cds.reports.report import add_report_arguments

    r = sub.add_parser("report", help="scheduled cohort report: models, triage, performance -> HTML, "
                       "results.json, FHIR results")
    add_report_arguments(r)
    r.set_defaults(func=_cmd_report)

    e = sub.add_parser("evaluate", help="compute a model's card metrics with 95%% CIs on a data folder")
    e.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    e.add_argument("--data", required=True, help="folder laid out like the matching shared/data set")
    e.add_argument("--bundle", help="model bundle folder (default: the built-in one)")
    e.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    e.add_argument("--split", help="which cases to score, where the task supports it (e.g. auto, all, test)")
    e.add_argument("--json", action="store_true", help="print one compact JSON object")
    e.set_defaults(func=_cmd_evaluate)

    from cds.explorer.app import add_explorer_parser

    add_explorer_parser(sub)

    m = sub.add_parser("models", help="list the available models (built-in and your models directory)")
    m.add_argument("--models-dir", action="append", help="a models directory (default $CDS_MODELS_DIR or "
                   "~/.cds/models); repeatable")
    m.add_argument("--json", action="store_true", help="print JSON records")
    m.set_defaults(func=_cmd_models)

    r = sub.add_parser("run", help="run one model on one image file, DICOM folder or series and print its Findings")
    r.add_argument("model", help="a model id (see `cds models`)")
    r.add_argument("path", help="image file (DICOM, NIfTI, PNG), DICOM series folder or DICOMweb series URL; for "
                   "cmr-function a cine series folder or a 4D NIfTI (x, y, slice, time)")
    r.add_argument("--ehr", action="append", metavar="NAME=VALUE", help="an EHR input the model card declares "
                   "(e.g. --ehr age=63 --ehr sex=female); repeatable")
    r.add_argument("--series", help="SeriesInstanceUID, when the folder holds several series")
    r.add_argument("--age", type=float, help="the patient's age in years, when the file does not record it (the "
                   "model answers only inside its card's intended ages)")
    r.add_argument("--view", help="the view (AP, PA, LL, MLO...), when the file does not record it")
    r.add_argument("--models-dir", action="append", help="a models directory (default $CDS_MODELS_DIR or "
                   "~/.cds/models); repeatable")
    r.add_argument("--json", action="store_true", help="print the Findings as JSON records")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("train", help="train a reference model into a MONAI bundle folder")
    t.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    t.add_argument("--data", help="training data folder (as in shared/data)")
    t.add_argument("--out", required=True, help="bundle folder to write")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quick", action="store_true", help="tiny settings (for tests)")
    t.set_defaults(func=_cmd_train)
    return p


# ------------------------------------------------------------------------------ argument checks
def _check_cohort_summary(args: argparse.Namespace) -> None:
    from cds.params import existing_path, iso_date

    if not str(args.path).startswith(("http://", "https://")):
        existing_path(args.path, "path", what="a Bundle .json, an .ndjson file, a folder of them or a FHIR "
                                                "server base URL (http(s)://...)")
    if args.reference_date is not None:
        iso_date(args.reference_date, "--reference-date")


def _check_samples_build(args: argparse.Namespace) -> None:
    from cds.params import existing_path, output_dir

    existing_path(args.synthea, "--synthea", "dir", "a folder laid out like shared/data/synthea-fhir-r4")
    existing_path(args.hannover, "--hannover", "dir", "a folder laid out like shared/data/hannover-covid19-cxr")
    output_dir(args.out, "--out")


def _check_overview(args: argparse.Namespace) -> None:
    from cds.params import iso_date, non_empty, output_dir

    if args.cohort is not None:  # a path that does not exist is the loader's error, named in the notebook
        non_empty(args.cohort, "--cohort", "a cohort folder, Bundle .json, .ndjson or FHIR server URL (or leave "
                                           "out --cohort for the shipped sample cohort)")
    output_dir(args.out, "--out")
    if args.reference_date is not None:
        iso_date(args.reference_date, "--reference-date")


def _check_task(args: argparse.Namespace) -> None:
    from cds.errors import ParameterError

    if args.task not in TASKS:
        import difflib

        close = difflib.get_close_matches(args.task, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError("task", f"unknown task {args.task!r}{hint}; choose one of: {', '.join(TASKS)}")


def _check_evaluate(args: argparse.Namespace) -> None:
    from cds.params import count, existing_path, non_empty

    _check_task(args)  # --data: the task names a missing or malformed data set itself (it knows the layout)
    non_empty(args.data, "--data", "the data folder (or file) laid out like the matching shared/data set")
    if args.bundle is not None:
        existing_path(args.bundle, "--bundle", "dir", "a model bundle folder (or leave out --bundle for the "
                                                      "built-in one)")
    count(args.n_boot, "--n-boot", 0, 100_000)
    if args.split is not None:
        non_empty(args.split, "--split", "a split name, e.g. auto, all or test")


def _check_train(args: argparse.Namespace) -> None:
    from cds.params import count, non_empty, output_dir

    _check_task(args)
    if args.data is not None:  # a missing or malformed data set is named by the task (it knows the layout)
        non_empty(args.data, "--data", "the training data folder (as in shared/data)")
    output_dir(args.out, "--out")
    count(args.seed, "--seed", 0, 2**32 - 1)


def _check_models_dirs(args: argparse.Namespace) -> None:
    from cds.params import existing_path

    for d in args.models_dir or []:
        existing_path(d, "--models-dir", "dir", "a models directory (a folder of MONAI bundles)")


def _check_run(args: argparse.Namespace) -> None:
    from cds.params import non_empty

    non_empty(args.model, "model", "a model id (see `cds models`)")
    non_empty(args.path, "path", "an image file, DICOM folder or DICOMweb series URL")
    if args.series is not None:
        non_empty(args.series, "--series", "a SeriesInstanceUID")
    _check_models_dirs(args)


#: subcommand -> the check of its options, run before any work (``cds report`` checks its parameters
#: through the report's parameter spec, ``cds explorer`` in :func:`cds.explorer.app.run_explorer`).
_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "cohort summary": _check_cohort_summary, "samples build": _check_samples_build, "overview": _check_overview,
    "evaluate": _check_evaluate, "train": _check_train, "models": _check_models_dirs, "run": _check_run,
}


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def check_arguments(args: argparse.Namespace) -> None:
    """Check the parsed options of the subcommand before any work; :class:`cds.errors.ParameterError`
    names the first bad one.

    >>> check_arguments(build_parser().parse_args(["evaluate", "pneumonia", "--data", ".", "--n-boot", "-1"]))
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --n-boot: -1 is out of range; give a whole number from 0 to 100000
    """
    check = _CHECKS.get(_command_name(args))
    if check is not None:
        check(args)


# ------------------------------------------------------------------------------ last-resort handler
#: Environment variable naming the folder of crash logs (default ``~/.cache/cds/logs``).
LOG_DIR_ENV = "CDS_LOG_DIR"


def crash_log_dir() -> Path:
    """Where crash logs go: ``$CDS_LOG_DIR``, else ``$XDG_CACHE_HOME/cds/logs``, else ``~/.cache/cds/logs``.

    >>> old = os.environ.get("CDS_LOG_DIR")
    >>> os.environ["CDS_LOG_DIR"] = "/tmp/cds-logs-doctest"
    >>> str(crash_log_dir())
    '/tmp/cds-logs-doctest'
    >>> _ = os.environ.pop("CDS_LOG_DIR") if old is None else os.environ.update(CDS_LOG_DIR=old)
    """
    env = os.environ.get(LOG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cds" / "logs"


def _secrets(argv: Sequence[str]) -> list[str]:
    """Secret values a crash log must not hold: the de-identification salt (environment, ``--salt-file``,
    ``--param salt=``) and explorer tokens (environment, ``--token``)."""
    found = [os.environ.get(k, "") for k in ("CDS_REPORT_SALT", "CDS_EXPLORER_TOKEN")]
    argv = list(argv)
    for i, a in enumerate(argv):
        name, sep, value = a.partition("=")
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if name in ("--token", "--salt-file", "--token-file"):
            v = value if sep else nxt
            found.append(v)
            if name != "--token":
                try:
                    found.append(Path(v).read_text(encoding="utf-8", errors="replace").strip())
                except OSError:
                    pass
        if a == "--param" and nxt.startswith("salt="):
            found.append(nxt[5:])
        if a.startswith("--param=salt="):
            found.append(a[13:])
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def write_crash_log(exc: BaseException, command: str, argv: Sequence[str]) -> Path:
    """Write ``exc``'s traceback to a new private file in :func:`crash_log_dir` (folder 0700, file 0600)
    and return its path. The log holds the cds and Python versions, the subcommand and the option
    names given (never their values), and the traceback with every secret (:func:`_secrets`) removed.
    """
    import datetime
    import platform
    import traceback

    from cds import __version__

    d = crash_log_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_uid == os.getuid():
        d.chmod(0o700)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = d / f"cds-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for secret in _secrets(argv):
        text = text.replace(secret, "[secret removed]")
    options = sorted({a.split("=", 1)[0] for a in argv if a.startswith("-")})
    head = (f"cds {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
            f"command: cds {command}; options given: {' '.join(options) or '(none)'}\n\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(head + text)
    return path


def _one_line(message: object) -> str:
    r"""A message as one line (a user error is one line on stderr).

    >>> _one_line("a\n  b\n")
    'a; b'
    """
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _internal_error(exc: BaseException, command: str, argv: Sequence[str]) -> int:
    try:
        path = write_crash_log(exc, command, argv)
        where = f"details written to {path}"
    except Exception as log_exc:  # noqa: BLE001 - the handler itself must not fail
        where = f"no log written ({type(log_exc).__name__}: set ${LOG_DIR_ENV} to a folder you can write to)"
    print(f"cds: internal error ({type(exc).__name__}); {where}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cds`` console command: the exit code (0 done, 1 internal error, 2 a user
    error named on one line, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "?"
    try:
        args = build_parser().parse_args(argv)
        command = _command_name(args)
        return _dispatch(args)
    except KeyboardInterrupt:
        print("cds: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last-resort handler: never a traceback on the terminal
        return _internal_error(exc, command, argv)


def _dispatch(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from cds.errors import CdsError
    from cds.extras import install_hint

    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except CdsError as exc:
        print(f"cds: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency (torch, papermill, voila, ...): one line, no traceback
        hint = install_hint(exc)
        if hint is None:
            raise
        print(f"cds: error: {args.command}: {hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cds run ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
