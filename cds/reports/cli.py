"""``cds report``: the command-line options and their translation into report parameters."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
from cds.reports.parameters import DEFAULT_MODELS, SALT_ENV
from cds.reports.run import run_report

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)
    import argparse



def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``cds report`` options (stdlib only, so building the CLI stays fast)."""
    parser.add_argument("--cohort", help="folder, Bundle .json, .ndjson or FHIR server base URL "
                        "(default: the shipped sample cohort)")
    parser.add_argument("--out", help="output folder (default: out/report)")
    parser.add_argument("--models", help="comma-separated model ids (default: " + ",".join(DEFAULT_MODELS) + ")")
    parser.add_argument("--start", help="first study date YYYY-MM-DD, or --start=-Nd for N days before the "
                        "reference date")
    parser.add_argument("--end", help="last study date YYYY-MM-DD (inclusive), or --end=-Nd")
    parser.add_argument("--reference-date", help="date ages and the FHIR 'recorded' time refer to (default: today)")
    parser.add_argument("--threshold", action="append", metavar="MODEL=VALUE",
                        help="decision threshold replacing the model card's; repeatable")
    parser.add_argument("--minutes-per-study", type=float, help="reading minutes per study in the triage "
                        "simulation (default 5)")
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples for confidence intervals (default 2000)")
    parser.add_argument("--deidentify", action="store_true", help="pseudonymise; no names, ids or birth dates "
                        f"in any output (salt from ${SALT_ENV} or --salt-file)")
    parser.add_argument("--salt-file", help="file holding the de-identification salt (else $" + SALT_ENV + ")")
    parser.add_argument("--no-validate", action="store_true", help="skip FHIR R4 validation of the cohort")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="one notebook parameter; VALUE is read as JSON when it parses (numbers, true, "
                        "lists, objects), else as text; repeatable; checked before any work")
    parser.add_argument("--params", help="JSON file of notebook parameters (options given here win)")
    parser.add_argument("--post", action="store_true", help="POST results.fhir.json as a transaction to --fhir-base")
    parser.add_argument("--fhir-base", help="FHIR R4 server base URL for --post")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _cli_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if getattr(args, "params", None):
        try:
            loaded = json.loads(Path(args.params).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParameterError("--params", f"{args.params}: cannot read a JSON object: {exc}") from None
        if not isinstance(loaded, dict):
            raise ParameterError("--params", f"{args.params}: expected a JSON object of parameters")
        params.update(loaded)
    for item in getattr(args, "param", None) or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError("--param", f"{item!r}: expected NAME=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        params[name.strip()] = value
    if args.models:
        params["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.start:
        params["start_date"] = args.start
    if args.end:
        params["end_date"] = args.end
    if args.reference_date:
        params["reference_date"] = args.reference_date
    elif "reference_date" not in params:
        params["reference_date"] = date.today().isoformat()
    for item in args.threshold or []:
        mid, sep, val = item.partition("=")
        if not sep or not mid.strip():
            raise ParameterError("--threshold", f"{item!r}: expected MODEL=VALUE, e.g. cxr-icu=0.4")
        try:
            params.setdefault("thresholds", {})[mid.strip()] = float(val)
        except ValueError:
            raise ParameterError(f"thresholds[{mid.strip()!r}]", f"{val!r} is not a number") from None
    if args.minutes_per_study is not None:
        params["minutes_per_study"] = args.minutes_per_study
    if args.n_boot is not None:
        params["n_boot"] = args.n_boot
    if args.deidentify:
        params["deidentify"] = True
    if args.salt_file:
        try:
            params["salt"] = Path(args.salt_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ParameterError("--salt-file", f"{args.salt_file}: {exc.strerror}") from None
    if args.no_validate:
        params["validate"] = False
    return params


def main_report(args: argparse.Namespace) -> int:
    """``cds report``: run the report and print where its outputs are (errors propagate as CdsError)."""
    params = _cli_parameters(args)
    from cds.locations import cohort_source

    cohort = cohort_source(args.cohort or params.pop("cohort", None))  # none: the shipped sample cohort
    out = args.out or params.pop("out_dir", None) or "out/report"
    params.pop("cohort", None)
    params.pop("out_dir", None)
    result = run_report(cohort, out, params, post=args.post, fhir_base=args.fhir_base, progress=not args.no_progress)
    print(f"report: {result['html']}")
    print(f"executed notebook: {result['notebook']}")
    print(f"results: {result['results_json']} ({result['n_findings']} findings, {result['n_failures']} failed "
          "studies)")
    print(f"FHIR results: {result['results_fhir']}")
    if result.get("post_outcome"):
        print(f"POST outcome: {result['post_outcome']}")
    print(f"took {result['seconds']['total']:.1f} s")
    return 0
