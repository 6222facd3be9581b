"""Scheduled cohort reports: run models on a FHIR cohort, measure triage and performance, write FHIR results.

The report is the notebook ``notebooks/cohort_report.ipynb`` (thin: a ``parameters`` cell, then calls
into this module) run by :func:`run_report` through papermill; ``cds report`` is the command-line face
(:func:`main_report`). This module is the notebook's and the CLI's one entry point: it re-exports the
report's parts, one module per concern under :mod:`cds.reports`: ``parameters`` (spec, validation,
dates), ``context`` (:class:`ReportContext`, :func:`prepare`), ``cohort_tables``, ``model_runs``
(running the models, Findings and failures tables), ``labels`` (outcome labels from FHIR),
``triage`` (the reading simulation), ``performance`` (metrics from :mod:`cds.evaluation`),
``anchor_tables`` (published anchors), ``outputs`` (results.json, results.fhir.json), ``run``
(papermill, POST) and ``cli``; de-identification lives in :mod:`cds.privacy`. One run writes into its output folder

==========================  ========================================================================
``report.html``             the executed notebook without code cells (tables and matplotlib figures)
``cohort_report.ipynb``     the executed notebook
``results.json``            per-study findings, per-study failures, cohort metrics
                            (:func:`cds.reports.results_json.results_json`; byte-identical)
``results.fhir.json``       the R4 transaction Bundle of AI results (:func:`cds.fhir.writer.results_bundle`)
``figures/*.png``           the figures of the report
``post_outcome.json``       only with ``post=True``: the server's answer per resource
==========================  ========================================================================

Parameters (``PARAMETERS``, type-checked by :func:`validate_report_parameters` before any work):
``cohort`` (folder, Bundle/ndjson file or FHIR base URL), ``models`` (list of model ids),
``start_date``/``end_date`` (``YYYY-MM-DD`` or ``-Nd`` = N days before ``reference_date``; studies are
kept when their start lies in ``[start 00:00, end 24:00)`` UTC), ``out_dir``, ``deidentify`` + ``salt``
(the salt is best given in ``$CDS_REPORT_SALT`` so it never appears in an output), ``thresholds``
(model id -> decision threshold replacing the card's; the card's indeterminate band is then dropped,
since it was set around the card's threshold), ``reference_date`` (ages are computed at it and
the FHIR ``recorded`` instant is its midnight UTC, so reruns give the same bytes),
``minutes_per_study`` (triage simulation), ``n_boot`` (bootstrap resamples) and ``validate``.

Triage simulation (:func:`simulate_reading`): one reader reads the studies one at a time, a fixed
``minutes_per_study`` each, never idle while a study waits. Each study arrives at its start time
(the sample cohort has day resolution: all studies of a day arrive at 00:00). Whenever the reader is
free, first-come-first-served takes the waiting study that arrived first (ties: study UID), the AI
order takes the waiting study highest on the AI worklist (:func:`cds.review.worklist.build_worklist`:
positive, then indeterminate, measured, negative, no AI result; by margin over the threshold, then wait).
Time-to-read = end of its reading minus arrival. Positives are outcome labels from FHIR where the
model's task has a label source (ICU admission from Encounters for ``cxr-icu``), else the AI's own
positive call (circular: it shows how far the AI moves its own positives forward, not a benefit).

>>> spec = parameter_spec()
>>> sorted(spec)[:4]
['cache', 'cohort', 'decode_workers', 'deidentify']
>>> resolve_date("-7d", "2026-01-08"), resolve_date(None, "2026-01-08")
('2026-01-01', None)
"""

from __future__ import annotations

from typing import Any

from cds.errors import CdsError
from cds.privacy import (  # noqa: F401
    IdentifierLeak,
    check_deidentified,
    find_identifiers,
    identifying_strings,
)
from cds.reports.anchor_tables import (  # noqa: F401
    anchor_caveats,
    anchor_rows,
    anchors_table,
)
from cds.reports.cli import (  # noqa: F401
    _cli_parameters,
    add_report_arguments,
    main_report,
)
from cds.reports.cohort_tables import (  # noqa: F401
    conditions_table,
    demographics_table,
    plot_cohort,
    population,
)
from cds.reports.context import (  # noqa: F401
    AGE_UNKNOWN,
    ReportContext,
    describe_scope,
    prepare,
)
from cds.reports.labels import (  # noqa: F401
    icu_labels,
    study_labels,
)
from cds.reports.model_runs import (  # noqa: F401
    apply_thresholds,
    card_for,
    eligible_studies,
    failure_summary,
    failures_frame,
    failures_table,
    findings_frame,
    findings_table,
    model_threshold,
    plot_scores,
    run_models,
    show,
    show_details,
)
from cds.reports.outputs import (  # noqa: F401
    cohort_metrics,
    write_outputs,
)
from cds.reports.parameters import (  # noqa: F401
    DEFAULT_MODELS,
    NOTEBOOK,
    NOTEBOOK_NAMES,
    PARAMETERS,
    SALT_ENV,
    check_notebook_parameters,
    is_url,
    parameter_spec,
    parameters_from_namespace,
    public_parameters,
    resolve_date,
    validate_report_parameters,
)
from cds.reports.performance import (  # noqa: F401
    evaluate,
    performance_definition,
    performance_table,
    plot_performance,
    subgroup_table,
)
from cds.reports.run import (  # noqa: F401
    OUTPUT_FILES,
    post_results,
    run_report,
)
from cds.reports.triage import (  # noqa: F401
    model_findings,
    plot_triage,
    simulate_reading,
    triage,
    triage_definition,
    triage_table,
    worklist_head,
)

__all__ = [
    "add_report_arguments",
    "AGE_UNKNOWN",
    "anchor_caveats",
    "anchor_rows",
    "anchors_table",
    "apply_thresholds",
    "card_for",
    "check_deidentified",
    "check_notebook_parameters",
    "cohort_metrics",
    "conditions_table",
    "DEFAULT_MODELS",
    "demographics_table",
    "describe_scope",
    "eligible_studies",
    "evaluate",
    "failure_summary",
    "failures_frame",
    "failures_table",
    "find_identifiers",
    "findings_frame",
    "findings_table",
    "icu_labels",
    "IdentifierLeak",
    "identifying_strings",
    "is_url",
    "main_report",
    "model_findings",
    "model_threshold",
    "NOTEBOOK",
    "NOTEBOOK_NAMES",
    "OUTPUT_FILES",
    "parameter_spec",
    "PARAMETERS",
    "parameters_from_namespace",
    "performance_definition",
    "performance_table",
    "plot_cohort",
    "plot_performance",
    "plot_scores",
    "plot_triage",
    "population",
    "post_results",
    "prepare",
    "public_parameters",
    "ReportContext",
    "resolve_date",
    "run_models",
    "run_report",
    "SALT_ENV",
    "show",
    "show_details",
    "simulate_reading",
    "study_labels",
    "subgroup_table",
    "triage",
    "triage_definition",
    "triage_table",
    "validate_report_parameters",
    "worklist_head",
    "write_outputs",
]


#: Names re-exported lazily (their modules import numpy, which ``cds --help`` must not load).
_LAZY = {"expected_calibration_error": "cds.evaluation.calibration", "reliability_curve": "cds.evaluation.calibration",
         "roc_points": "cds.evaluation.metrics", "binary_metrics": "cds.evaluation.metrics",
         "format_ci": "cds.evaluation.metrics"}


def __getattr__(name: str) -> Any:
    """The metrics the report uses (:data:`_LAZY`), imported on first access."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # python -m cds.reports.report ... (the same options as ``cds report``)
    import argparse as _argparse
    import sys

    _args = add_report_arguments(_argparse.ArgumentParser(prog="python -m cds.reports.report")).parse_args()
    try:
        sys.exit(main_report(_args))
    except CdsError as _exc:
        print(f"cds report: error: {_exc}", file=sys.stderr)
        sys.exit(2)
