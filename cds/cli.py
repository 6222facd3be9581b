"""The ``cds`` command: a thin layer over the Python API. Heavy modules are imported lazily so
``cds --help`` answers in well under a second.

>>> build_parser().parse_args(["cohort", "summary", "fhir_samples", "--json"]).json
True
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

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

    if not args.cohort and not any(str(p).startswith("cohort=") for p in args.param or []) and not args.params:
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

    findings = run_file(args.model, args.path, args.ehr or [], models_dir=args.models_dir, series_uid=args.series)
    if args.json:
        print(json.dumps([f.record_dict() for f in findings], indent=2, default=str))
    else:
        print(findings_table(findings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cds", description="Imaging AI next to the patient record: FHIR cohorts, "
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cds`` console command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from cds.errors import CdsError
    from cds.extras import install_hint

    try:
        return int(args.func(args) or 0)
    except CdsError as exc:
        print(f"cds: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency (torch, papermill, voila, ...): one line, no traceback
        hint = install_hint(exc)
        if hint is None:
            raise
        print(f"cds: error: {args.command}: {hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cds run ... --json | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
