"""Running the cohort report notebook through papermill (:func:`run_report`) and posting its FHIR results."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import CdsError, ParameterError
from cds.privacy import (
    IdentifierLeak,
    Scrubber,
    check_deidentified,
    check_salt,
    identifying_strings,
    output_files,
)
from cds.reports.parameters import NOTEBOOK, SALT_ENV, is_url, validate_report_parameters

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)


    pass


#: The files every report run writes into its output folder (besides ``figures/``).
OUTPUT_FILES = ("report.html", NOTEBOOK, "results.json", "results.fhir.json")


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _absolute(source: str) -> str:
    return source if is_url(source) else str(Path(source).expanduser().resolve())


def run_report(cohort: str | Path, out_dir: str | Path, params: Mapping[str, Any] | None = None, post: bool = False,
               fhir_base: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the cohort report notebook through papermill and write its outputs into ``out_dir``.

    Parameters
    ----------
    cohort
        Folder, Bundle ``.json``, ``.ndjson`` or FHIR server base URL.
    out_dir
        Output folder (created): ``report.html``, ``cohort_report.ipynb``, ``results.json``,
        ``results.fhir.json``, ``figures/``, and with ``post`` ``post_outcome.json``.
    params
        Other notebook parameters (see :func:`parameter_spec`); ``salt`` is passed to the kernel
        through ``$CDS_REPORT_SALT``, never as a notebook parameter; a salt shorter than 16 bytes
        is refused (:func:`cds.privacy.check_salt`).
    post, fhir_base
        POST ``results.fhir.json`` as a transaction to this FHIR base URL after the run; the
        per-resource outcome goes to ``post_outcome.json`` and the console.
    progress
        Papermill's progress bar.

    Returns
    -------
    dict
        Paths of the outputs, the POST outcome (or None), and timings in seconds.

    Raises
    ------
    cds.errors.ParameterError
        A bad parameter, before any work (nothing is written).
    cds.reports.notebook_run.NotebookFailed
        A notebook cell failed; the message names the cell and the error.
    IdentifierLeak
        De-identified output (any file in ``out_dir``: HTML, notebook, JSON, CSV, PNG with its text
        chunks and the images embedded in HTML / notebook) still holds an identifying string or the
        salt (the leaking files are removed).
    cds.fhir.post.FhirWriteError
        The FHIR server did not take the transaction (``post_outcome.json`` says why).
    """
    t0 = time.perf_counter()
    given = dict(params or {})
    from cds.locations import cohort_source

    given["cohort"] = _absolute(cohort_source(str(cohort) if cohort is not None else None))
    given["out_dir"] = str(Path(out_dir).expanduser().resolve())
    full = validate_report_parameters(given)
    if full["deidentify"]:
        check_salt(full["salt"])  # at least 16 bytes, before any work; never echoed
    if post and not fhir_base:
        raise ParameterError("fhir_base", "post=True needs the FHIR server base URL to send the results to")
    if fhir_base is not None and not is_url(str(fhir_base)):
        raise ParameterError("fhir_base", f"{fhir_base!r} is not an http(s) FHIR base URL")
    from cds.reports.notebook_run import NotebookFailed, run_notebook

    out = Path(given["out_dir"])
    nb_params = {k: full[k] for k in given if k != "salt"}

    try:
        with _env(SALT_ENV, full["salt"] if full["deidentify"] else None):
            result = run_notebook(NOTEBOOK, out, nb_params, progress=progress)
    except NotebookFailed as exc:
        if not full["deidentify"]:
            raise
        try:
            ids = _output_identifiers(full, out)
        except CdsError:  # the source itself is unreadable (what the notebook failed on): the salt at least
            ids = {"salt": {str(full["salt"])}}
        removed = ""
        try:  # the executed notebook of a failed de-identified run may hold what a later cell would have caught
            check_deidentified(output_files(out), ids, remove=True)
        except IdentifierLeak:
            removed = " (output files holding identifying strings were removed)"
        raise NotebookFailed(Scrubber(ids, paths=False)(str(exc)) + removed) from None
    t1 = time.perf_counter()
    paths = {"html": result["html"], "notebook": result["notebook"], "results_json": out / "results.json",
             "results_fhir": out / "results.fhir.json"}
    for key in ("results_json", "results_fhir"):
        if not paths[key].is_file():
            raise CdsError(f"{paths[key]}: the notebook finished without writing it (is the notebook the cds "
                           "report notebook?)")
    if full["deidentify"]:  # every file: html, notebook, json, csv, png
        check_deidentified(output_files(out), _output_identifiers(full, out), remove=True)
    t2 = time.perf_counter()
    outcome = None
    if post:
        outcome = post_results(paths["results_fhir"], str(fhir_base), out / "post_outcome.json")
        paths["post_outcome"] = out / "post_outcome.json"
    summary = json.loads(paths["results_json"].read_text())
    return {"out_dir": out, **paths, "post": outcome,
            "n_findings": summary["n_findings"], "n_failures": summary["n_failures"],
            "seconds": {"notebook": round(t1 - t0, 2), "checks": round(t2 - t1, 2),
                        "total": round(time.perf_counter() - t0, 2)}}


def _output_identifiers(full: Mapping[str, Any], out: Path) -> dict[str, set[str]]:
    """What no de-identified output may hold: the source's identifying strings, its files' paths and DICOM
    headers' patient fields, the salt."""
    return {**identifying_strings(full["cohort"], files=sorted(_cohort_files(full["cohort"], out))),
            "salt": {str(full["salt"])}}


def _cohort_files(source: str, out: Path, limit: int = 100_000) -> set[str]:
    """Paths of the files of a local cohort source (outside the output folder), as the outputs could name them."""
    if is_url(source):
        return set()
    root = Path(source)
    if root.is_file():
        return {str(root)}
    files: set[str] = set()
    for p in root.rglob("*"):
        if len(files) >= limit:
            break
        if p.is_file() and not p.is_relative_to(out):
            files.add(str(p))
    return files


def post_results(fhir_json: str | Path, fhir_base: str, outcome_path: str | Path) -> list[dict[str, Any]]:
    """POST a results Bundle file as a transaction; write and print the per-resource outcome."""
    from cds.fhir.post import FhirWriteError, post_transaction

    bundle = json.loads(Path(fhir_json).read_text(encoding="utf-8"))
    try:
        outcome = post_transaction(bundle, fhir_base)
    except FhirWriteError as exc:
        Path(outcome_path).write_text(json.dumps({"fhir_base": fhir_base, "ok": False, "error": str(exc),
                                                  "status": exc.status}, indent=1) + "\n")
        print(f"POST {fhir_base}: FAILED: {exc}")
        raise
    by_status: dict[str, int] = {}
    for o in outcome:
        by_status[o["status"]] = by_status.get(o["status"], 0) + 1
    Path(outcome_path).write_text(json.dumps({"fhir_base": fhir_base, "ok": True, "entries": len(outcome),
                                              "by_status": by_status, "outcome": outcome}, indent=1) + "\n")
    for o in outcome:
        print(f"  {o['status'] or '?':<14} {o['request']}" + (f"  {o['message']}" if o.get("message") else ""))
    print(f"POST {fhir_base}: {len(outcome)} resources: "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    return outcome
