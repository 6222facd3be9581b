"""The report's machine-readable outputs: ``results.json`` and ``results.fhir.json`` (de-identified on request)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.privacy import check_deidentified, pseudonyms, scrub_finding
from cds.reports.anchor_tables import anchor_rows
from cds.reports.cohort_tables import population
from cds.reports.context import ReportContext
from cds.reports.model_runs import card_for, eligible_studies, failures_frame, findings_frame, model_threshold
from cds.reports.parameters import public_parameters
from cds.reports.performance import evaluate
from cds.reports.triage import triage

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)


    pass


def _model_metrics(ctx: ReportContext, mid: str) -> dict[str, Any]:
    import numpy as np

    b = ctx.registry.get(mid)
    thr, band, src = model_threshold(ctx, mid)
    f = findings_frame(ctx)
    ff = f[f["model_id"] == mid]
    fails = failures_frame(ctx)
    fm = fails[fails["model_id"] == mid]
    s = ff["score"].dropna().astype(float).to_numpy()
    perf = evaluate(ctx, mid)
    if perf is not None:
        perf = {k: v for k, v in perf.items() if k != "roc"}
    tri = triage(ctx, mid)["summary"]
    return {
        "version": b.version, "task": ctx.registry.task_of(mid), "threshold": thr, "threshold_from": src,
        "indeterminate": band, "eligible_studies": int(eligible_studies(b.model_card, ctx.studies)["study_uid"].nunique()),
        "findings": int(len(ff)), "studies_with_findings": int(ff["study_uid"].nunique()),
        "failed_studies": int(len(fm)),
        "failures_by_error": {str(k): int(v) for k, v in fm["error"].value_counts().sort_index().items()},
        "no_answer_by_reason": {str(k): int(v) for k, v in fm["state"].value_counts().sort_index().items()},
        "interpretations": {str(k): int(v) for k, v in ff["interpretation"].value_counts().sort_index().items()},
        "score_quantiles": None if not len(s) else
        dict(zip(["min", "q25", "median", "q75", "max"], np.quantile(s, [0, 0.25, 0.5, 0.75, 1]).round(6).tolist(),
                 strict=True)),
        "performance": perf, "triage": tri,
    }


def _rounded(x: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits`` decimals, recursively (numbers in results.json stay readable and
    do not differ in the last bits between machines)."""
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v, digits) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, str):
        try:
            return _rounded(x.item(), digits)
        except (TypeError, ValueError):
            return x
    return x


def cohort_metrics(ctx: ReportContext) -> dict[str, Any]:
    """The ``metrics`` section of results.json: parameters, scope, demographics, per-model numbers, anchors."""
    pop = population(ctx)
    return _rounded({
        "parameters": public_parameters(ctx.params), "recorded": ctx.recorded,
        "cohort": {**ctx.scope, "sex": {str(k): int(v) for k, v in pop["sex"].fillna("unknown").value_counts()
                                        .sort_index().items()},
                   "age_known": int(pop["age_years"].notna().sum())},
        "models": {mid: _model_metrics(ctx, mid) for mid in ctx.models},
        "anchors": anchor_rows(ctx),
    })


def _scrubbed_findings(ctx: ReportContext) -> list[Any]:
    """The Findings with their free text (explanation, body site, extra) scrubbed when de-identified; ids
    still real (results_bundle pseudonymises them itself)."""
    if not ctx.deidentify:
        return list(ctx.findings)
    return [scrub_finding(f, ctx.scrub) for f in ctx.findings]


def _output_findings(ctx: ReportContext) -> list[Any]:
    if not ctx.deidentify:
        return list(ctx.findings)
    from cds.privacy import pseudonymise_finding

    return [pseudonymise_finding(f, ctx.salt or "") for f in _scrubbed_findings(ctx)]


def _output_failures(ctx: ReportContext) -> list[dict[str, Any]]:
    if not ctx.deidentify:
        return [x.record_dict() for x in ctx.failures]
    out = []
    for x in (f.record_dict() for f in ctx.failures):  # record ids and dates: not in the record form
        pid, suid = pseudonyms(str(x["patient_id"]), str(x["study_uid"] or ""), ctx.salt or "")
        out.append({**x, "patient_id": pid, "study_uid": suid, "series_uid": None,
                    "message": ctx.scrub(x.get("message"))})
    return out


def write_outputs(ctx: ReportContext) -> dict[str, Path]:
    """Write ``results.json`` and ``results.fhir.json`` (R4 transaction Bundle) into the output folder.

    In de-identified mode both are pseudonymised (free text scrubbed: failure messages, the Findings'
    explanation, body site and extra values) and then searched for every identifying string of the
    cohort and the salt (:func:`check_deidentified`); a hit removes them and raises :class:`IdentifierLeak`.
    """
    from cds.fhir.writer import results_bundle
    from cds.reports.results_json import results_json

    res = results_json(_output_findings(ctx), _output_failures(ctx), cohort_metrics(ctx))
    cards = {mid: card_for(ctx, mid) for mid in ctx.models}
    bundle = results_bundle(_scrubbed_findings(ctx), cards, recorded=ctx.recorded, deidentify=ctx.deidentify,
                            salt=ctx.salt if ctx.deidentify else None,
                            failures=[f for f in ctx.failures if f.model_id in cards])
    paths = {"results_json": ctx.out_dir / "results.json", "results_fhir": ctx.out_dir / "results.fhir.json"}
    paths["results_json"].write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["results_fhir"].write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if ctx.deidentify:
        check_deidentified(list(paths.values()), ctx.identifiers, remove=True)
    n_entries = len(bundle.get("entry") or [])
    print(f"results.json: {res['n_studies']} studies, {res['n_findings']} findings, {res['n_failures']} failed "
          f"studies")
    print(f"results.fhir.json: transaction Bundle with {n_entries} entries (recorded {ctx.recorded})")
    if ctx.deidentify:
        print("de-identified: pseudonymous ids (salted HMAC); no names, identifiers, birth dates, addresses, "
              "phone numbers or e-mails found")
    return paths
