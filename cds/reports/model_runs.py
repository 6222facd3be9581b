"""Running the report's models, and the tables and figures of their Findings and failures.

>>> from cds.finding import Finding
>>> f = Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.45, threshold=0.5, indeterminate=(0.4, 0.6))
>>> g, = apply_thresholds([f], {"m": 0.4})
>>> g.threshold, g.indeterminate, g.interpretation
(0.4, None, 'positive')
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cds.finding import FAILURE_LABELS, FAILURE_STATES
from cds.reports.context import ReportContext

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd
    from matplotlib.figure import Figure

    from cds.models.card import ModelCard



def eligible_studies(card: ModelCard, studies: pd.DataFrame) -> pd.DataFrame:
    """The studies of a modality the card declares (every study when it declares none)."""
    if card.modality:
        return studies[studies["modality"].isin(list(card.modality))]
    return studies


def apply_thresholds(findings: Sequence[Any], thresholds: Mapping[str, float]) -> list[Any]:
    """Findings with the decision threshold replaced for the models in ``thresholds`` (band dropped).

    >>> from cds.finding import Finding
    >>> f = Finding("p", "1", "s", "c", "d", "m", "1", probability=0.45, threshold=0.5, indeterminate=(0.4, 0.6))
    >>> g = apply_thresholds([f], {"m": 0.4})[0]
    >>> (f.interpretation, g.interpretation, g.indeterminate, g.id == f.id)
    ('indeterminate', 'positive', None, True)
    """
    return [replace(f, threshold=float(thresholds[f.model_id]), indeterminate=None) if f.model_id in thresholds
            else f for f in findings]


def run_models(ctx: ReportContext, progress: bool = True) -> None:
    """Run every model on its eligible studies in the window; collect findings and per-study failures."""
    import pandas as pd

    for mid in ctx.models:
        b = ctx.registry.get(mid)
        rows = eligible_studies(b.model_card, ctx.studies)
        t0 = time.perf_counter()
        res = ctx.registry.run(mid, ctx.cohort, studies=rows, progress=progress)
        ctx.timings[f"model:{mid}"] = time.perf_counter() - t0
        ctx.findings.extend(apply_thresholds(res.findings, ctx.params["thresholds"]))
        ctx.failures.extend(res.failures)
        states = pd.Series([f.state for f in res.failures], dtype=object).value_counts()
        why = ", ".join(f"{int(n)} {FAILURE_LABELS.get(st, st)}" for st, n in states.items())
        print(f"{mid} {b.version}: {rows['study_uid'].nunique()} eligible studies, {len(res.findings)} findings, "
              f"{len(res.failures)} without an answer{f' ({why})' if why else ''} "
              f"({ctx.timings[f'model:{mid}']:.1f} s)")
    ctx.cache.clear()


def card_for(ctx: ReportContext, mid: str) -> Any:
    """The model card as results_bundle takes it (threshold overridden when the parameters say so)."""
    b = ctx.registry.get(mid)
    if mid not in ctx.params["thresholds"]:
        return b
    card = dict(b.card, threshold=ctx.params["thresholds"][mid], indeterminate=None)
    return {**b.metadata, "cds": card}


def model_threshold(ctx: ReportContext, mid: str) -> tuple[Any, Any, str]:
    card = ctx.registry.get(mid).model_card
    if mid in ctx.params["thresholds"]:
        return ctx.params["thresholds"][mid], None, "parameter"
    return card.threshold, list(card.indeterminate) if card.indeterminate else None, "model card"


def findings_frame(ctx: ReportContext) -> pd.DataFrame:
    import pandas as pd

    if "findings" not in ctx.cache:
        cols = ["id", "patient_id", "study_uid", "model_id", "model_version", "code", "display", "probability",
                "value", "threshold", "interpretation", "score"]
        ctx.cache["findings"] = pd.DataFrame(
            [{**{k: f.to_dict()[k] for k in cols[:-1]}, "score": f.score} for f in ctx.findings], columns=cols)
    return ctx.cache["findings"]


def failures_frame(ctx: ReportContext) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([f.to_dict() for f in ctx.failures],
                        columns=["patient_id", "study_uid", "model_id", "error", "message", "state"])


def findings_table(ctx: ReportContext) -> pd.DataFrame:
    """Per model: threshold used, eligible studies, findings by interpretation, and the studies it gave no
    answer for, by reason (outside intended use, input rejected, image not matching its record, failed)."""
    import pandas as pd

    f = findings_frame(ctx)
    fails = failures_frame(ctx)
    rows = []
    for mid in ctx.models:
        b = ctx.registry.get(mid)
        thr, band, src = model_threshold(ctx, mid)
        ff = f[f["model_id"] == mid]
        counts = ff["interpretation"].value_counts()
        rows.append({"model": mid, "version": b.version, "task": ctx.registry.task_of(mid),
                     "threshold": thr, "threshold from": src,
                     "indeterminate band": "-" if not band else f"{band[0]:.3g} to {band[1]:.3g}",
                     "eligible studies": int(eligible_studies(b.model_card, ctx.studies)["study_uid"].nunique()),
                     "studies with findings": int(ff["study_uid"].nunique()),
                     **{k: int(counts.get(k, 0)) for k in ("positive", "indeterminate", "negative", "measured")},
                     **{FAILURE_LABELS[st]: int(((fails["model_id"] == mid) & (fails["state"] == st)).sum())
                        for st in FAILURE_STATES}})
    return pd.DataFrame(rows).set_index("model")


def plot_scores(ctx: ReportContext) -> Figure:
    """One panel per model: the distribution of its scores with the threshold and indeterminate band."""
    import numpy as np
    from matplotlib.figure import Figure

    n = len(ctx.models)
    fig = Figure(figsize=(4.2 * n, 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    f = findings_frame(ctx)
    fails = failures_frame(ctx)
    for ax, mid in zip(axes, ctx.models, strict=True):
        s = f.loc[f["model_id"] == mid, "score"].dropna().astype(float)
        thr, band, _ = model_threshold(ctx, mid)
        if len(s):
            prob = bool(f.loc[f["model_id"] == mid, "probability"].notna().all())
            bins = np.linspace(0, 1, 21) if prob else 20
            ax.hist(s, bins=bins, color="#4c72b0")
            if band:
                ax.axvspan(band[0], band[1], color="#dd8452", alpha=0.25, label="indeterminate band")
            if thr is not None:
                ax.axvline(float(thr), color="#c44e52", ls="--", label=f"threshold {float(thr):.3g}")
            ax.legend(fontsize=7)
            ax.set(xlabel="probability" if prob else "value", ylabel="findings")
        else:
            mine = fails[fails["model_id"] == mid]
            why = "\n".join(f"{n} {FAILURE_LABELS.get(st, st)}" for st, n in mine["state"].value_counts().items())
            ax.text(0.5, 0.5, "no findings" + (f"\n{why}" if why else ""), ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(mid, fontsize=10)
    return fig


def failure_summary(ctx: ReportContext) -> pd.DataFrame:
    """Studies without an answer grouped by model, reason (outside intended use, input rejected, image not
    matching its record, model could not run), error and message (scrubbed when de-identified)."""
    import pandas as pd

    fails = failures_frame(ctx)
    if fails.empty:
        return pd.DataFrame({"model": [], "no answer": [], "error": [], "message": [], "studies": []})
    fails = fails.assign(message=fails["message"].map(ctx.scrub),
                         reason=fails["state"].map(lambda s: FAILURE_LABELS.get(s, s)))
    t = fails.groupby(["model_id", "reason", "error", "message"]).size().rename("studies").reset_index()
    t = t.rename(columns={"reason": "no answer"})
    return t.rename(columns={"model_id": "model"}).sort_values(["model", "studies"], ascending=[True, False],
                                                                kind="stable").reset_index(drop=True)


def failures_table(ctx: ReportContext) -> pd.DataFrame:
    """Every study without an answer: model, patient (or pseudonym), study, reason, error, message."""
    fails = failures_frame(ctx)
    out = fails.assign(patient=fails["patient_id"].map(ctx.case), study=fails["study_uid"].map(ctx.study),
                       message=fails["message"].map(ctx.scrub),
                       **{"no answer": fails["state"].map(lambda s: FAILURE_LABELS.get(s, s))})
    return out[["model_id", "patient", "study", "no answer", "error", "message"]].rename(columns={"model_id": "model"}) \
        .sort_values(["model", "patient", "study"], kind="stable").reset_index(drop=True)


def show(df: pd.DataFrame, max_rows: int = 500) -> None:
    """Display a whole table (up to ``max_rows`` rows, full cell text) in the notebook."""
    import pandas as pd
    from IPython.display import display

    with pd.option_context("display.max_rows", max_rows, "display.min_rows", max_rows, "display.max_colwidth", None):
        display(df)
    if len(df) > max_rows:
        print(f"... {len(df) - max_rows} more rows in results.json")


def show_details(df: pd.DataFrame, summary: str, max_rows: int = 500) -> None:
    """Display a long table folded under a one-line summary (an HTML ``<details>`` element)."""
    import html

    from IPython.display import HTML, display

    more = f"<p>... {len(df) - max_rows} more rows in results.json</p>" if len(df) > max_rows else ""
    display(HTML(f"<details><summary>{html.escape(summary)} ({len(df)} rows)</summary>"
                 f"{df.head(max_rows).to_html(index=False)}{more}</details>"))
