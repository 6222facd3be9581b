"""The report's performance section: each model against its FHIR outcome labels, with subgroups.

Metrics come from :mod:`cds.evaluation` (one binary-metrics block, one ECE, one CI formatter). A cohort
that lacks what a measurement needs never stops the report: :func:`evaluation_status` names what is
missing (no label source for the task, labels not derivable from the records, no labelled study, no
AI result on them, no positive or no negative) and the section says so instead of a number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.reports.context import AGE_UNKNOWN, ReportContext
from cds.reports.labels import LABEL_SOURCES, label_problem, study_labels
from cds.reports.model_runs import findings_frame, model_threshold

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd
    from matplotlib.figure import Figure



def _training_overlap(bundle: Any, patient_ids: Sequence[str]) -> dict[str, Any] | None:
    """How many of these patients are in the model's training manifest (sha256(patient_id)[:16] lists)."""
    import hashlib

    path = Path(bundle.path) / "configs" / "training_manifest.json"
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if man.get("hash") != "sha256(patient_id)[:16]" or not isinstance(man.get("patients"), list):
        return None
    train = set(man["patients"])
    hits = sum(hashlib.sha256(str(p).encode()).hexdigest()[:16] in train for p in set(patient_ids))
    return {"patients": len(set(patient_ids)), "in_training_set": int(hits)}


def _age_at_study(ctx: ReportContext, ev: pd.DataFrame) -> pd.Series:
    import pandas as pd

    birth = ev["patient_id"].map(dict(zip(ctx.cohort.patients["patient_id"], ctx.cohort.patients["birth_date"],
                                          strict=True)))
    from cds.sources.tables import age_years

    return age_years(pd.to_datetime(birth, utc=True), pd.to_datetime(ev["started"], utc=True))


def _binary_metrics(y: Any, p: Any, groups: Any, thr: float | None, n_boot: int) -> dict[str, Any]:
    """Case counts, then AUROC and sensitivity / specificity at ``thr`` from :func:`cds.evaluation.metrics.binary_metrics`."""
    import numpy as np

    from cds.evaluation.metrics import binary_metrics

    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(np.sum(y)), "n_patients": int(len(set(groups)))}
    m = binary_metrics(y, p, thr, groups=groups, n_boot=n_boot, seed=0, at_threshold=("sensitivity", "specificity"),
                       rounded=False)
    out["auroc"] = m["auroc"]
    if thr is not None:
        out["threshold"] = float(thr)
        for name in ("sensitivity", "specificity"):
            out[name] = {k: v for k, v in m[name].items() if k != "threshold"}
    return out


#: Status of an evaluation whose numbers are all defined.
EVALUATED = "evaluated"


def evaluation_status(res: dict[str, Any], problem: str | None = None) -> tuple[str, str | None]:
    """(status, note) of one model's evaluation: :data:`EVALUATED` and None when both classes were
    evaluated, else a short status and the sentence the report shows instead of the missing numbers.

    >>> evaluation_status({"n": 4, "n_positive": 1, "eligible_first_studies": 4})
    ('evaluated', None)
    >>> evaluation_status({"n": 3, "n_positive": 0, "eligible_first_studies": 3})[0]
    'label absent'
    >>> print(evaluation_status({"n": 0, "n_positive": 0, "eligible_first_studies": 2})[1])  # doctest: +ELLIPSIS
    none of the 2 labelled studies has an AI result ...
    """
    n, pos, elig = int(res["n"]), int(res["n_positive"]), int(res["eligible_first_studies"])
    if problem:
        return "labels not derivable", problem
    if elig == 0:
        return "no labelled studies", ("no study of this cohort has a known outcome label for this task (no first "
                                       "study in the window, or each was taken after the outcome): nothing to measure")
    if n == 0:
        return "no AI results", (f"none of the {elig} labelled studies has an AI result (each failed, was rejected "
                                 "or is outside the model's intended use): nothing to measure")
    if pos == 0:
        return "label absent", (f"the outcome is absent from this cohort: all {n} labelled studies are negative, so "
                                "AUROC and sensitivity are undefined; only specificity is shown")
    if pos == n:
        return "no negatives", (f"all {n} labelled studies are positive: AUROC and specificity are undefined; only "
                                "sensitivity is shown")
    return EVALUATED, None


def evaluate(ctx: ReportContext, mid: str) -> dict[str, Any] | None:
    """Performance of one model against its FHIR outcome labels (None when its task has no labels).

    AUROC with a patient-level bootstrap 95 % CI, sensitivity and specificity at the operating point
    (the threshold used; scores in the indeterminate band count by the threshold and are reported),
    expected calibration error (10 equal-width bins) with the reliability bins, subgroups by sex and
    age band at the study (``unknown`` where the record has no birth date), and the overlap with
    the model's training patients where its bundle lists them.
    """
    from cds.reports.overview import age_band

    key = f"perf:{mid}"
    if key in ctx.cache:
        return ctx.cache[key]
    labels = study_labels(ctx, mid)
    if labels is None:
        ctx.cache[key] = None
        return None
    f = findings_frame(ctx)
    f = f[(f["model_id"] == mid) & f["probability"].notna()]
    score = f.groupby("study_uid")["probability"].max()
    ev_all = labels[labels["evaluate"]]
    ev = ev_all[ev_all["study_uid"].isin(score.index)].copy()
    ev["p"] = ev["study_uid"].map(score).astype(float)
    ev["y"] = ev["label"].astype(int)
    thr, band, src = model_threshold(ctx, mid)
    n_boot = int(ctx.params["n_boot"])
    y, p, g = ev["y"].to_numpy(), ev["p"].to_numpy(), ev["patient_id"].to_numpy()
    res: dict[str, Any] = {"model": mid, "label": LABEL_SOURCES[ctx.registry.task_of(mid)][1],
                           "evaluation_set": "first study per patient in the window with a known label",
                           "eligible_first_studies": int(len(ev_all)),
                           "without_ai_result": int(len(ev_all) - len(ev)), "threshold_from": src}
    res.update(_binary_metrics(y, p, g, thr, n_boot))
    res["status"], res["note"] = evaluation_status(res, label_problem(ctx, mid))
    if band and len(ev):
        res["in_indeterminate_band"] = int(((p >= band[0]) & (p <= band[1])).sum())
    if len(ev):
        from cds.evaluation.calibration import expected_calibration_error, reliability_curve
        from cds.evaluation.metrics import roc_points

        res["ece"] = expected_calibration_error(y, p)
        bins = reliability_curve(y, p).rename(columns={"observed": "observed_rate"})
        res["calibration_bins"] = bins.to_dict("records")
        fpr, tpr = roc_points(y, p)
        res["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    res["card_calibrated"] = bool(ctx.registry.get(mid).model_card.calibrated)
    res["training_overlap"] = _training_overlap(ctx.registry.get(mid), ev["patient_id"].tolist())
    sexes = ev["patient_id"].map(dict(zip(ctx.cohort.patients["patient_id"], ctx.cohort.patients["sex"],
                                          strict=True))).fillna("unknown")
    ages = _age_at_study(ctx, ev)
    bands = age_band(ages).astype(object).where(ages.notna(), AGE_UNKNOWN)
    subs = []
    for var, values in (("sex", sexes), ("age band", bands)):
        for level in sorted(values.unique(), key=str):
            sel = (values == level).to_numpy()
            m = _binary_metrics(y[sel], p[sel], g[sel], thr, min(n_boot, 1000))
            subs.append({"variable": var, "group": str(level), **m})
    res["subgroups"] = subs
    res["age_unknown"] = int(ages.isna().sum())
    ctx.cache[key] = res
    return res


def performance_definition(ctx: ReportContext) -> Any:
    """What the performance section measures, per model, and the caveats (Markdown)."""
    from IPython.display import Markdown

    lines = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            lines.append(f"- `{mid}`: no outcome label in FHIR for its task; no performance is computed here "
                         "(the model card's numbers are in the anchors table below).")
            continue
        txt = (f"- `{mid}`: label = {r['label']}. Evaluated on the {r['evaluation_set']} "
               f"({r['n']} studies, {r['n_positive']} positive")
        txt += f"; {r['without_ai_result']} first studies had no AI result)." if r["without_ai_result"] else ")."
        if r.get("note"):
            txt += f" **{'Not measured here' if not r['n'] else 'Note'}: {r['note']}.**"
        ov = r.get("training_overlap")
        if ov and ov["in_training_set"]:
            txt += (f" **{ov['in_training_set']} of {ov['patients']} evaluated patients were in this model's "
                    "training set: these numbers are in-sample and optimistic; the model card's "
                    "cross-validated figures are the honest estimate.**")
        if not r["card_calibrated"]:
            txt += " The card does not claim calibrated probabilities: the calibration curve shows how far off they are."
        if r.get("age_unknown"):
            txt += f" Age is unknown for {r['age_unknown']} of {r['n']} (no birth date in the record)."
        lines.append(txt)
    lines.append("\nAUROC: 95 % CI by bootstrap over patients. Sensitivity / specificity at the threshold in use "
                 "(score >= threshold is positive). ECE: 10 equal-width probability bins.")
    return Markdown("\n".join(lines))


def performance_table(ctx: ReportContext) -> pd.DataFrame:
    """Per labelled model: n, positives, AUROC (95 % CI), sensitivity and specificity at the threshold, ECE."""
    import pandas as pd

    from cds.evaluation.metrics import format_ci

    rows = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            rows.append({"model": mid, "n": 0, "positives": 0, "AUROC (95 % CI)": "no labels in FHIR",
                         "note": "no outcome label in FHIR for this task"})
            continue
        ov = r.get("training_overlap")
        rows.append({"model": mid, "n": r["n"], "positives": r["n_positive"], "AUROC (95 % CI)": format_ci(r["auroc"]),
                     "threshold": r.get("threshold"), "sensitivity (95 % CI)": format_ci(r.get("sensitivity")),
                     "specificity (95 % CI)": format_ci(r.get("specificity")),
                     "in indeterminate band": r.get("in_indeterminate_band", 0),
                     "ECE": None if r.get("ece") is None else round(r["ece"], 3),
                     "in training set": "unknown" if not ov else f"{ov['in_training_set']} of {ov['patients']}",
                     "note": "" if r.get("status") == EVALUATED else r.get("status", "")})
    return pd.DataFrame(rows).set_index("model")


def subgroup_table(ctx: ReportContext) -> pd.DataFrame:
    """Per labelled model: AUROC, sensitivity and specificity by sex and by age band."""
    import pandas as pd

    from cds.evaluation.metrics import format_ci

    rows = []
    unmeasured = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            continue
        if not r["n"]:
            unmeasured.append(f"{mid}: {r.get('status')}")
            continue
        for s in r["subgroups"]:
            rows.append({"model": mid, "variable": s["variable"], "group": s["group"], "n": s["n"],
                         "positives": s["n_positive"], "AUROC (95 % CI)": format_ci(s["auroc"]),
                         "sensitivity": format_ci(s.get("sensitivity")), "specificity": format_ci(s.get("specificity"))})
    if not rows:
        why = f"no labelled study with an AI result ({'; '.join(unmeasured)})" if unmeasured else \
            "no model in this report has outcome labels in FHIR"
        return pd.DataFrame({"note": [why]})
    return pd.DataFrame(rows)


def plot_performance(ctx: ReportContext) -> Figure:
    """Per labelled model: ROC curve with AUROC, and the reliability diagram with ECE."""
    import numpy as np
    from matplotlib.figure import Figure

    from cds.evaluation.metrics import format_ci

    results = [(m, evaluate(ctx, m)) for m in ctx.models]
    done = [(m, r) for m, r in results if r is not None and r.get("status") == EVALUATED and r.get("roc")]
    fig = Figure(figsize=(9, 3.8 * max(len(done), 1)), layout="constrained")
    if not done:
        ax = fig.subplots()
        why = [f"{m}: {r['status']}" for m, r in results if r is not None]
        ax.text(0.5, 0.5, "no model in this report could be measured against outcome labels\n" + (
            "\n".join(why) if why else "(no model in this report has outcome labels in FHIR)"), ha="center",
            va="center")
        ax.set_axis_off()
        return fig
    axes = np.atleast_2d(fig.subplots(len(done), 2))
    for (mid, r), (a1, a2) in zip(done, axes, strict=True):
        a1.plot(r["roc"]["fpr"], r["roc"]["tpr"], color="#c44e52", drawstyle="steps-post")
        a1.plot([0, 1], [0, 1], color="#999999", lw=0.8)
        if r.get("sensitivity", {}).get("value") is not None and r.get("specificity", {}).get("value") is not None:
            a1.scatter([1 - r["specificity"]["value"]], [r["sensitivity"]["value"]], color="black", zorder=3,
                       label=f"threshold {r['threshold']:.3g}")
            a1.legend(fontsize=7, loc="lower right")
        a1.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{mid}: ROC, AUROC {format_ci(r['auroc'])}")
        a1.title.set_fontsize(9)
        bins = [b for b in r["calibration_bins"] if b["n"]]
        a2.plot([0, 1], [0, 1], color="#999999", lw=0.8)
        a2.scatter([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins],
                   s=[20 + 8 * b["n"] for b in bins], color="#4c72b0", alpha=0.7)
        for b in bins:
            a2.annotate(str(b["n"]), (b["mean_predicted"], b["observed_rate"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        a2.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean predicted probability", ylabel="observed rate",
               title=f"{mid}: calibration, ECE {r['ece']:.3f} (numbers = studies per bin)")
        a2.title.set_fontsize(9)
    return fig
