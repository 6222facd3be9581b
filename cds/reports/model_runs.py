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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
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


#: The result cache file a report keeps in its output folder (``cache="auto"``).
CACHE_FILE = "result-cache.sqlite"


def cache_path(ctx: ReportContext) -> Path | None:
    """Where the report's result cache lives: ``cache="auto"`` is :data:`CACHE_FILE` in the output folder
    (none for a de-identified report: its output folder holds only checked, de-identified files), None is
    no cache, else the path given (for a de-identified report, it must lie outside the output folder)."""
    value = ctx.params.get("cache", "auto")
    if value is None:
        return None
    if value == "auto":
        return None if ctx.deidentify else ctx.out_dir / CACHE_FILE
    p = Path(value).expanduser()
    if ctx.deidentify and p.resolve().is_relative_to(ctx.out_dir.resolve()):
        raise ParameterError("cache", f"{value}: a de-identified report's output folder holds only de-identified "
                                      "files; keep the result cache outside it")
    return p


def run_models(ctx: ReportContext, progress: bool = True) -> None:
    """Run every model on its eligible studies in the window; collect findings and per-study failures.

    Studies stream through :func:`cds.inference.stream.stream_run` (decode workers ahead of batched
    forward passes); answers already in the result cache (:func:`cache_path`) are reused and new ones
    stored as they are made, so a killed report resumes where it stopped. With ``workers`` or
    ``scheduler`` the models run on a Dask cluster (:mod:`cds.inference.distributed`), same results.
    """
    import pandas as pd

    from cds.inference.stream import StreamStats

    path = cache_path(ctx)
    cache = None
    if path is not None:
        from cds.inference.cache import ResultCache

        cache = ResultCache(path)
    try:
        jobs = [(mid, eligible_studies(ctx.registry.get(mid).model_card, ctx.studies)) for mid in ctx.models]
        distributed = bool(ctx.params.get("workers")) or bool(ctx.params.get("scheduler"))
        if distributed:
            results, stats = _run_distributed(ctx, jobs, cache, progress)
        for k, (mid, rows) in enumerate(jobs):
            b = ctx.registry.get(mid)
            t0 = time.perf_counter()
            if distributed:
                res, st = results[k], stats[k]
            else:
                st = StreamStats()
                res = ctx.registry.run(mid, ctx.cohort, studies=rows, progress=progress, cache=cache,
                                       workers=ctx.params.get("decode_workers"), stats=st)
            ctx.timings[f"model:{mid}"] = st.wall_s if distributed else time.perf_counter() - t0
            ctx.timings[f"model_compute:{mid}"] = st.model_s
            ctx.run_stats[mid] = {"studies": st.studies, "cached": st.cached, "computed": st.computed,
                                  "explained": st.explained, "decode_workers": st.workers}
            ctx.findings.extend(apply_thresholds(res.findings, ctx.params["thresholds"]))
            ctx.failures.extend(res.failures)
            states = pd.Series([f.state for f in res.failures], dtype=object).value_counts()
            why = ", ".join(f"{int(n)} {FAILURE_LABELS.get(st_, st_)}" for st_, n in states.items())
            reused = f", {st.cached} from the result cache" if st.cached else ""
            print(f"{mid} {b.version}: {rows['study_uid'].nunique()} eligible studies, {len(res.findings)} findings, "
                  f"{len(res.failures)} without an answer{f' ({why})' if why else ''}{reused} "
                  f"({ctx.timings[f'model:{mid}']:.1f} s)")
    finally:
        if cache is not None:
            cache.close()
    ctx.cache.clear()


def _run_distributed(ctx: ReportContext, jobs: list[tuple[str, Any]], cache: Any, progress: bool
                     ) -> tuple[list[Any], list[Any]]:
    """The jobs on a Dask cluster: cached studies answered here, the others sent to the workers (their
    answers stored in the cache as each chunk comes back), results merged back into row order."""
    from cds.inference.distributed import CohortSpec, run_distributed
    from cds.inference.stream import StreamStats
    from cds.models.registry import RunResult

    spec = CohortSpec(source=str(ctx.params["cohort"]), validate=bool(ctx.params["validate"]),
                      reference_date=ctx.params["reference_date"],
                      user_model_dirs=tuple(str(d) for d in getattr(ctx.registry, "user_dirs", []) or []))
    if ctx.deidentify:
        raise ParameterError("workers", "a de-identified report runs in one process (its workers would read the "
                                        "identified cohort); leave out workers / scheduler")
    todo, plans, stats = [], [], []
    for mid, rows in jobs:
        st = StreamStats()
        row_list = list(rows.itertuples(index=False))
        keys = hits = None
        if cache is not None:
            from cds.inference.keys import study_keys

            keys = study_keys(ctx.registry, mid, ctx.cohort, row_list)
            hits = {i: e for i, k in enumerate(keys) if k is not None and (e := cache.get(k)) is not None}
        miss = [i for i in range(len(row_list)) if not hits or i not in hits]
        st.studies, st.cached, st.computed = len(row_list), len(row_list) - len(miss), len(miss)
        todo.append((mid, rows.iloc[miss]))
        plans.append((row_list, keys, hits or {}, miss))
        stats.append(st)
    t0 = time.perf_counter()
    done = run_distributed(spec, todo, workers=ctx.params.get("workers") or None,
                           scheduler=ctx.params.get("scheduler"), progress=progress)
    wall = time.perf_counter() - t0
    results = []
    for (_mid, _), (row_list, keys, hits, miss), res, st in zip(jobs, plans, done, stats, strict=True):
        st.wall_s = wall / max(len(jobs), 1)
        per_row: dict[int, tuple[list[Any], Any]] = {i: (list(e.findings), e.failure) for i, e in hits.items()}
        by_study = _split_by_row(res, [row_list[i] for i in miss])
        for i, got in zip(miss, by_study, strict=True):
            per_row[i] = got
            if cache is not None and keys[i] is not None:
                from cds.inference.cache import cacheable_failure

                if got[1] is None or cacheable_failure(got[1]):
                    cache.put(keys[i], str(row_list[i].patient_id), got[0], got[1])
        out = RunResult()
        for i in range(len(row_list)):
            f, fail = per_row[i]
            out.findings.extend(f)
            if fail is not None:
                out.failures.append(fail)
        results.append(out)
    return results, stats


def _split_by_row(res: Any, rows: list[Any]) -> list[tuple[list[Any], Any]]:
    """A RunResult of ``rows`` (in order) back into per-row (findings, failure), by series then study UID."""
    def key(x: Any) -> tuple[str, str]:
        return (str(getattr(x, "study_uid", "")), str(getattr(x, "series_uid", "") or ""))

    f_by: dict[tuple[str, str], list[Any]] = {}
    for f in res.findings:
        f_by.setdefault(key(f), []).append(f)
    x_by: dict[tuple[str, str], list[Any]] = {}
    for x in res.failures:
        x_by.setdefault(key(x), []).append(x)
    out = []
    for r in rows:
        k = key(r)
        fails = x_by.get(k, [])
        out.append((f_by.pop(k, []) if not fails else [], fails.pop(0) if fails else None))
    return out


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
