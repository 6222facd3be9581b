"""The report's triage simulation: one reader, first-come-first-served against the AI worklist order.

See :func:`simulate_reading` and the module docstring of :mod:`cds.reports.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
from cds.reports.context import ReportContext
from cds.reports.labels import LABEL_SOURCES, label_problem, study_labels
from cds.reports.model_runs import eligible_studies

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure



def simulate_reading(arrival_min: Sequence[float], priority: Sequence[float], minutes_per_study: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One reader, one study at a time, ``minutes_per_study`` each, never idle while a study waits.

    Whenever the reader is free, the waiting (arrived, unread) study with the smallest ``priority``
    is read next; when none waits, the reader waits for the next arrival. Returns the finish time of
    every study (minutes, same clock as ``arrival_min``) and the reading order (indices).

    >>> finish, order = simulate_reading([0, 0, 0, 20], [2, 0, 1, 3], 5)
    >>> finish.tolist(), order.tolist()
    ([15.0, 5.0, 10.0, 25.0], [1, 2, 0, 3])
    """
    import heapq

    import numpy as np

    arr = np.asarray(arrival_min, dtype=float)
    pri = np.asarray(priority, dtype=float)
    if len(arr) != len(pri):
        raise ParameterError("priority", f"{len(pri)} priorities for {len(arr)} arrivals")
    if not minutes_per_study > 0:
        raise ParameterError("minutes_per_study", "must be > 0")
    by_arrival = np.lexsort((pri, arr))
    finish = np.full(len(arr), np.nan)
    order: list[int] = []
    heap: list[tuple[float, int]] = []
    t, i = -np.inf, 0
    while len(order) < len(arr):
        if not heap:
            t = max(t, arr[by_arrival[i]])
        while i < len(arr) and arr[by_arrival[i]] <= t:
            k = int(by_arrival[i])
            heapq.heappush(heap, (float(pri[k]), k))
            i += 1
        _, k = heapq.heappop(heap)
        t = t + minutes_per_study
        finish[k] = t
        order.append(k)
    return finish, np.asarray(order, dtype=int)


def model_findings(ctx: ReportContext, mid: str) -> list[Any]:
    return [f for f in ctx.findings if f.model_id == mid]


def triage(ctx: ReportContext, mid: str) -> dict[str, Any]:
    """The triage simulation for one model: per-study table and summary (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from cds.review.worklist import build_worklist

    key = f"triage:{mid}"
    if key in ctx.cache:
        return ctx.cache[key]
    rows = eligible_studies(ctx.registry.get(mid).model_card, ctx.studies)
    wl = build_worklist(rows, model_findings(ctx, mid), now=ctx.reference)
    if wl.empty:
        ctx.cache[key] = {"table": wl, "summary": {"model": mid, "studies": 0}}
        return ctx.cache[key]
    wl = wl.assign(ai_position=np.arange(1, len(wl) + 1))
    started = pd.to_datetime(wl["started"], utc=True)
    t0 = started.min()
    arrival = ((started - t0).dt.total_seconds() / 60.0).fillna(0.0).to_numpy()
    fcfs = np.lexsort((wl["study_uid"].to_numpy(), arrival))
    fcfs_pos = np.empty(len(wl), dtype=int)
    fcfs_pos[fcfs] = np.arange(1, len(wl) + 1)
    wl["fcfs_position"] = fcfs_pos
    wl["arrival_h"] = arrival / 60.0
    m = float(ctx.params["minutes_per_study"])
    fin_f, _ = simulate_reading(arrival, wl["fcfs_position"].to_numpy(), m)
    fin_a, _ = simulate_reading(arrival, wl["ai_position"].to_numpy(), m)
    wl["ttr_fcfs_min"] = fin_f - arrival
    wl["ttr_ai_min"] = fin_a - arrival
    labels = study_labels(ctx, mid)
    if labels is not None:
        lab = dict(zip(labels["study_uid"], labels["label"], strict=True))
        wl["positive"] = wl["study_uid"].map(lab).astype(float)
        problem = label_problem(ctx, mid)
        definition = f"no outcome label: {problem}; every study is unlabelled" if problem else \
            "outcome label: " + LABEL_SOURCES[ctx.registry.task_of(mid)][1]
    else:
        wl["positive"] = (wl["ai_state"] == "positive").astype(float).where(wl["ai_state"] != "no-ai")
        definition = ("the AI's own positive call (no outcome label in FHIR for this task: circular); studies "
                      "without an AI result are unlabelled")
    pos = wl[wl["positive"] == 1]
    neg = wl[wl["positive"] == 0]

    def _stat(s: pd.Series, how: str) -> float | None:
        return None if s.empty else float(getattr(s, how)())

    summary = {
        "model": mid, "studies": int(len(wl)), "positives": int(len(pos)), "negatives": int(len(neg)),
        "unlabelled": int(wl["positive"].isna().sum()), "positive_definition": definition,
        "no_ai_result": int((wl["ai_state"] == "no-ai").sum()), "minutes_per_study": m,
        "median_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "median"),
        "median_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "median"),
        "mean_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "mean"),
        "mean_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "mean"),
        "max_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "max"),
        "max_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "max"),
        "median_ttr_negatives_fcfs_min": _stat(neg["ttr_fcfs_min"], "median"),
        "median_ttr_negatives_ai_min": _stat(neg["ttr_ai_min"], "median"),
        "median_ttr_all_min": _stat(wl["ttr_fcfs_min"], "median"),
    }
    if summary["mean_ttr_positives_fcfs_min"]:
        summary["mean_ttr_positives_change_pct"] = 100.0 * (
            summary["mean_ttr_positives_ai_min"] / summary["mean_ttr_positives_fcfs_min"] - 1.0)
    else:
        summary["mean_ttr_positives_change_pct"] = None
    ctx.cache[key] = {"table": wl, "summary": summary}
    return ctx.cache[key]


def triage_definition(ctx: ReportContext) -> Any:
    """The simulation's definition, as Markdown shown in the report."""
    from IPython.display import Markdown

    m = ctx.params["minutes_per_study"]
    lines = [
        f"**Simulation.** One reader reads the studies of each model one at a time, **{m:g} minutes per "
        "study**, never idle while a study waits. A study arrives at its start time (day resolution in "
        "the sample cohort: a day's studies all arrive at 00:00). When the reader is free, "
        "*first-come-first-served* (FCFS) takes the waiting study that arrived first (ties: study UID); "
        "the *AI order* takes the waiting study highest on the AI worklist (positive, indeterminate, measured, "
        "negative, then studies without an AI result; by margin over the threshold, then waiting time). "
        "**Time-to-read** = end of its reading minus arrival.", "",
        "**Positives** per model:",
    ]
    for mid in ctx.models:
        lines.append(f"- `{mid}`: {triage(ctx, mid)['summary'].get('positive_definition', 'no studies')}")
    lines += ["", "Studies a model could not run on have no AI result and are read last in the AI order. "
              "Every study is read in both orders: the gain for positives is paid by the negatives."]
    return Markdown("\n".join(lines))


def triage_table(ctx: ReportContext) -> pd.DataFrame:
    """Per model: positives and the median / mean time-to-read of positives and negatives, FCFS vs AI."""
    import pandas as pd

    rows = []
    for mid in ctx.models:
        s = triage(ctx, mid)["summary"]

        def r(k: str, s: dict[str, Any] = s) -> float | None:
            return None if s.get(k) is None else round(s[k], 1)

        rows.append({"model": mid, "studies": s.get("studies", 0), "positives": s.get("positives", 0),
                     "negatives": s.get("negatives", 0), "unlabelled": s.get("unlabelled", 0),
                     "no AI result": s.get("no_ai_result", 0),
                     "positives: median min FCFS": r("median_ttr_positives_fcfs_min"),
                     "positives: median min AI": r("median_ttr_positives_ai_min"),
                     "positives: mean min FCFS": r("mean_ttr_positives_fcfs_min"),
                     "positives: mean min AI": r("mean_ttr_positives_ai_min"),
                     "positives: mean change %": r("mean_ttr_positives_change_pct"),
                     "negatives: median min FCFS": r("median_ttr_negatives_fcfs_min"),
                     "negatives: median min AI": r("median_ttr_negatives_ai_min")})
    return pd.DataFrame(rows).set_index("model")


def worklist_head(ctx: ReportContext, n: int = 10) -> pd.DataFrame:
    """The top ``n`` of each model's AI worklist with their FCFS position (patients pseudonymised when
    de-identified)."""
    import pandas as pd

    parts = []
    for mid in ctx.models:
        t = triage(ctx, mid)["table"]
        if t.empty:
            continue
        h = t.head(n)
        when = {} if ctx.deidentify else {"study date": pd.to_datetime(h["started"], utc=True).dt.strftime("%Y-%m-%d")}
        parts.append(pd.DataFrame({
            "model": mid, "AI position": h["ai_position"], "FCFS position": h["fcfs_position"],
            "patient": h["patient_id"].map(ctx.case), **when, "AI state": h["ai_state"], "score": h["score"].astype(float).round(3),
            "positive": h["positive"].map({1.0: "yes", 0.0: "no"}).fillna("unlabelled"),
            "time-to-read FCFS (min)": h["ttr_fcfs_min"].round(0),
            "time-to-read AI (min)": h["ttr_ai_min"].round(0)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_triage(ctx: ReportContext) -> Figure:
    """Per model: positives read over time (FCFS vs AI), time-to-read of positives, AI vs FCFS position."""
    import numpy as np
    from matplotlib.figure import Figure

    n = len(ctx.models)
    fig = Figure(figsize=(13, 3.3 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 3))
    for row, mid in zip(axes, ctx.models, strict=True):
        tri = triage(ctx, mid)
        t, s = tri["table"], tri["summary"]
        a1, a2, a3 = row
        pos = t[t["positive"] == 1] if not t.empty else t
        if t.empty or pos.empty:
            msg = "no studies" if t.empty else f"no AI results ({s['no_ai_result']} studies failed)" \
                if s["no_ai_result"] == s["studies"] else "no positives to compare"
            for ax in row:
                ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            a1.set_title(f"{mid}", fontsize=10)
            continue
        for col, label, color in (("ttr_fcfs_min", "first come, first served", "#8c8c8c"),
                                  ("ttr_ai_min", "AI worklist order", "#c44e52")):
            ttr = np.sort(pos[col].to_numpy())
            a1.step(np.concatenate([[0], ttr]), np.arange(len(ttr) + 1) / len(ttr), where="post", label=label,
                    color=color)
        a1.set(xlabel="minutes from arrival to read", ylabel="share of positives read",
               title=f"{mid}: positives read within x minutes (n={len(pos)})")
        a1.title.set_fontsize(9)
        a1.legend(fontsize=7, loc="lower right")
        a2.boxplot([pos["ttr_fcfs_min"], pos["ttr_ai_min"]], widths=0.5, showfliers=False)
        a2.set_xticks([1, 2], ["FCFS", "AI order"])
        rng = np.random.default_rng(0)
        for k, col in ((1, "ttr_fcfs_min"), (2, "ttr_ai_min")):
            a2.scatter(k + rng.uniform(-0.12, 0.12, len(pos)), pos[col], s=8, alpha=0.6, color="#4c72b0")
        a2.set(ylabel="time-to-read of positives (min)", title=f"median {s['median_ttr_positives_fcfs_min']:.0f} "
               f"vs {s['median_ttr_positives_ai_min']:.0f} min")
        colors = np.where(t["positive"] == 1, "#c44e52", np.where(t["positive"] == 0, "#4c72b0", "#bbbbbb"))
        a3.scatter(t["fcfs_position"], t["ai_position"], c=colors, s=10)
        lim = len(t) + 1
        a3.plot([0, lim], [0, lim], color="#999999", lw=0.8)
        a3.set(xlabel="FCFS position", ylabel="AI worklist position",
               title="order (red positive, blue negative, grey unlabelled)")
        a3.title.set_fontsize(9)
    return fig
