"""The report's anchors section: published results beside this report's and the model cards' numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cds.reports.context import ReportContext
from cds.reports.performance import EVALUATED, evaluate

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd

    from cds.models.card import ModelCard



def _card_number(card: ModelCard, names: Sequence[str]) -> tuple[str | None, Mapping[str, Any] | None]:
    metrics = card.performance.get("metrics") or {}
    for n in names:
        if isinstance(metrics.get(n), Mapping):
            return n, metrics[n]
    return None, None


def anchor_rows(ctx: ReportContext) -> list[dict[str, Any]]:
    """Our numbers next to the published anchors (:mod:`cds.evaluation.anchors`), one row per anchor and model."""
    from cds.evaluation.anchors import ANCHORS
    from cds.evaluation.metrics import format_ci

    installed = set(ctx.registry.ids())
    rows: list[dict[str, Any]] = []

    def ours(mid: str, metric_names: Sequence[str]) -> dict[str, Any]:
        if mid not in installed:
            return {"our model": mid, "our number (model card)": "model not installed",
                    "our number (this report)": "-"}
        card = ctx.registry.get(mid).model_card
        name, m = _card_number(card, metric_names)
        perf = card.performance
        card_txt = "-" if m is None else f"{name} {format_ci(m)} on {perf.get('data', '?')} " \
                                         f"(n={perf.get('n_cases', '?')}, split {perf.get('split', '?')})"
        rep = evaluate(ctx, mid) if mid in ctx.models else None
        rep_txt = "not run in this report" if mid not in ctx.models else \
            "no labels in this cohort" if rep is None else \
            f"not measured ({rep['status']}; n={rep['n']}, {rep['n_positive']} positive)" \
            if rep.get("status", EVALUATED) != EVALUATED else \
            f"auroc {format_ci(rep['auroc'])} (n={rep['n']}, {rep['n_positive']} positive)"
        return {"our model": mid, "our number (model card)": card_txt, "our number (this report)": rep_txt}

    for a in ANCHORS:
        mids = a.our_models or ("(readers)",)
        for mid in mids:
            base = {"anchor": a.short, "published": a.published, "task": a.task}
            if mid == "(readers)":
                row = {**base, "our model": "-", "our number (model card)": "not measured (standalone AI only)",
                       "our number (this report)": "not measured"}
            else:
                row = {**base, **ours(mid, a.our_metrics)}
            row["caveats"] = " ".join(a.caveats)
            rows.append(row)
    anchored = {m for a in ANCHORS for m in a.our_models}
    for mid in ctx.models:
        if mid in anchored:
            continue
        ctxt = ctx.registry.get(mid).model_card.context
        note = ctxt[0] if ctxt else "no published anchor in docs/STACK.md"
        rows.append({"anchor": "(none in STACK.md)", "published": "-", "task": ctx.registry.task_of(mid),
                     **ours(mid, ("auroc",)), "caveats": f"Model card context: {note}"})
    return rows


def anchors_table(ctx: ReportContext) -> pd.DataFrame:
    """:func:`anchor_rows` as a table."""
    import pandas as pd

    return pd.DataFrame(anchor_rows(ctx))


def anchor_caveats(ctx: ReportContext) -> Any:
    """General caveats of the comparison (Markdown)."""
    from IPython.display import Markdown

    from cds.evaluation.anchors import GENERAL_CAVEATS

    return Markdown("\n".join(f"- {c}" for c in GENERAL_CAVEATS))
