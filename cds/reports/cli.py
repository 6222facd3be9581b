"""``cds report``: the command-line options and their translation into report parameters.

Every option becomes a report parameter (:func:`cds.reports.parameters.parameter_spec`) and is checked
there, before any work; an error about a parameter given as an option names both, e.g.
``--out (out_dir): '/tmp/x' is a file, not a folder; ...``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
from cds.params import non_empty, output_dir
from cds.reports.parameters import DEFAULT_MODELS, SALT_ENV
from cds.reports.run import run_report

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)
    import argparse

#: report parameter -> the ``cds report`` option that sets it (error messages name both).
OPTION_OF = {"cohort": "--cohort", "out_dir": "--out", "models": "--models", "start_date": "--start",
             "end_date": "--end", "reference_date": "--reference-date", "thresholds": "--threshold",
             "minutes_per_study": "--minutes-per-study", "n_boot": "--n-boot", "deidentify": "--deidentify",
             "salt": "--salt-file", "validate": "--no-validate", "fhir_base": "--fhir-base"}


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
    parser.add_argument("--cache", help="result cache file (SQLite; default: result-cache.sqlite in the output "
                                        "folder): studies already answered by the same model version on the same "
                                        "inputs are reused")
    parser.add_argument("--no-cache", action="store_true", help="compute everything again, store nothing")
    parser.add_argument("--workers", type=int, help="run the models on a local Dask cluster of N worker processes")
    parser.add_argument("--scheduler", help="run the models on an existing Dask cluster (tcp://HOST:PORT); its "
                                            "workers need only `pip install cds` and the cohort's files")
    parser.add_argument("--decode-workers", type=int, help="image decode processes ahead of each model "
                                                           "(default: the CPU count; 0: decode in line)")
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
    if args.models is not None:  # "" or "a,,b" is an error (models: a non-empty list of ids), not the default
        params["models"] = [m.strip() for m in args.models.split(",")]
    if args.start:
        params["start_date"] = args.start
    if args.end:
        params["end_date"] = args.end
    if args.reference_date:
        params["reference_date"] = args.reference_date
    elif "reference_date" not in params:
        params["reference_date"] = date.today().isoformat()
    seen: set[str] = set()  # a --params file's threshold may be replaced, a --threshold not repeated
    for item in args.threshold or []:
        mid, sep, val = item.partition("=")
        if not sep or not mid.strip():
            raise ParameterError("--threshold", f"{item!r}: expected MODEL=VALUE, e.g. cxr-icu=0.4")
        if mid.strip() in seen:
            raise ParameterError("--threshold", f"{mid.strip()!r} is given twice; give one threshold per model")
        seen.add(mid.strip())
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
    if args.salt_file is not None:
        params["salt"] = _read_salt(args.salt_file)
    if args.no_validate:
        params["validate"] = False
    if getattr(args, "no_cache", False):
        if args.cache:
            raise ParameterError("--no-cache", "give --cache FILE or --no-cache, not both")
        params["cache"] = None
    elif getattr(args, "cache", None) is not None:
        params["cache"] = args.cache
    if getattr(args, "workers", None) is not None:
        params["workers"] = args.workers
    if getattr(args, "scheduler", None) is not None:
        params["scheduler"] = args.scheduler
    if getattr(args, "decode_workers", None) is not None:
        params["decode_workers"] = args.decode_workers
    return params


def _read_salt(path: str) -> str:
    """The salt in a ``--salt-file`` (stripped); a missing, unreadable or empty file is a ParameterError.
    The salt itself never appears in a message."""
    where = "--salt-file"
    p = Path(non_empty(path, where, "the file holding the de-identification salt"))
    if not p.is_file():
        raise ParameterError(where, f"'{path}' is not a file; give the file holding the salt (or set ${SALT_ENV})")
    try:
        salt = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ParameterError(where, f"'{path}': {exc.strerror}; give a file you can read") from None
    except UnicodeDecodeError:
        raise ParameterError(where, f"'{path}' is not UTF-8 text; write the salt as text (e.g. "
                                    "python -c \"import secrets; print(secrets.token_hex(16))\")") from None
    if not salt:
        raise ParameterError(where, f"'{path}' is empty; write a secret of at least 16 bytes into it")
    return salt


def _given_options(args: argparse.Namespace) -> set[str]:
    """The report parameters set by an option on this command line (not by --param / --params)."""
    values = {name: getattr(args, opt[2:].replace("-", "_"), None) for name, opt in OPTION_OF.items()}
    return {name for name, v in values.items() if v is not None and v is not False and v != []}


def _named_for_the_cli(exc: ParameterError, given: set[str]) -> ParameterError:
    """``exc`` with the option that set the parameter in front: ``--out (out_dir): ...``."""
    base = exc.where.split("[", 1)[0]
    if base not in given or exc.where.startswith("-"):
        return exc
    return ParameterError(f"{OPTION_OF[base]} ({exc.where})", exc.reason)


def main_report(args: argparse.Namespace) -> int:
    """``cds report``: run the report and print where its outputs are (errors propagate as CdsError)."""
    given = _given_options(args)
    try:
        params = _cli_parameters(args)
        from cds.locations import cohort_source

        if args.out is not None:
            output_dir(args.out, "out_dir")  # "" would otherwise mean the current folder
        if args.post and not args.fhir_base:
            raise ParameterError("--fhir-base", "--post needs the FHIR server base URL (http(s)://...) to send "
                                                "the results to")
        if args.cohort is not None:
            non_empty(args.cohort, "cohort", "a folder, Bundle .json, .ndjson or FHIR server URL (or leave out "
                                             "--cohort for the shipped sample cohort)")
        cohort = cohort_source(args.cohort or params.pop("cohort", None))  # none: the shipped sample cohort
        out = args.out or params.pop("out_dir", None) or "out/report"
        params.pop("cohort", None)
        params.pop("out_dir", None)
        result = run_report(cohort, out, params, post=args.post, fhir_base=args.fhir_base,
                            progress=not args.no_progress)
    except ParameterError as exc:
        raise _named_for_the_cli(exc, given) from None
    print(f"report: {result['html']}")
    print(f"executed notebook: {result['notebook']}")
    print(f"results: {result['results_json']} ({result['n_findings']} findings, {result['n_failures']} failed "
          "studies)")
    print(f"FHIR results: {result['results_fhir']}")
    if result.get("post_outcome"):
        print(f"POST outcome: {result['post_outcome']}")
    print(f"took {result['seconds']['total']:.1f} s")
    return 0
