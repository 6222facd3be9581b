"""The worklist widget: studies by AI urgency (or by waiting time in reader studies), with filters.

Ordering and filtering live in :mod:`cds.review.worklist` (pandas in, pandas out); this widget only shows
them; states are named by :data:`cds.review.worklist.STATE_LABELS`. Picking a row calls the
``on_select`` callbacks with ``(patient_id, study_uid)``.

>>> import pandas as pd
>>> imaging = pd.DataFrame({"patient_id": ["a"], "study_uid": ["1"], "imaging_study_id": ["s1"],
...     "modality": ["CR"], "description": ["Chest"], "started": pd.to_datetime(["2020-01-01"], utc=True)})
>>> w = WorklistWidget(imaging, [], now="2020-01-03")
>>> w.table.iloc[0]["waited_text"]
'2 d'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import pandas as pd

from cds.explorer.widgets.static import STYLE, StaticFallback, esc, worklist_html
from cds.finding import Failure
from cds.review.worklist import AI_STATES, REVIEW_STATES, STATE_LABELS, build_worklist, filter_worklist

__all__ = ["WorklistWidget", "row_label"]

_ICON = {"positive": "▲", "indeterminate": "◆", "measured": "●", "negative": "▽", "no-ai": "·"}
_LABEL_WIDTH = max(len(v) for v in STATE_LABELS.values())


def row_label(r: Any, blind: bool = False) -> str:
    """One fixed-width line of the worklist (a study whose model could not run says so).

    >>> r = pd.Series({"patient_id": "p1", "started": pd.Timestamp("2020-04-01"), "modality": "CR",
    ...                "waited_text": "3 d", "ai_state": "positive", "finding": "Pneumonia", "score": 0.91,
    ...                "review_status": "unreviewed", "failure": ""})
    >>> row_label(r)
    '▲ AI positive      | p1       | 2020-04-01 CR    | waited 3 d        | Pneumonia 0.910    | unreviewed'
    >>> failed = pd.Series({**r, "ai_state": "no-ai", "finding": None, "score": float("nan"), "failure": "m: x"})
    >>> row_label(failed).split(" | ")[4]
    'model could not run'
    """
    date = pd.Timestamp(r["started"]).strftime("%Y-%m-%d") if not pd.isna(r["started"]) else "no date   "
    pid = str(r["patient_id"])
    pid = pid if len(pid) <= 8 else pid[:7] + "…"
    base = f"{pid:<8} | {date} {str(r['modality'])[:5]:<5} | waited {r['waited_text']:<10}"
    if blind:
        return f"{base} | {r['review_status']}"
    state = r["ai_state"]
    score = "" if pd.isna(r["score"]) else f"{float(r['score']):.3f}"
    finding = "" if r["finding"] is None or pd.isna(r["finding"]) else str(r["finding"])[:12]
    what = "model could not run" if state == "no-ai" and r.get("failure") else (finding + " " + score).strip()
    return (f"{_ICON.get(state, '·')} {STATE_LABELS.get(state, state):<{_LABEL_WIDTH}} | {base} | "
            f"{what:<18} | {r['review_status']}")


class WorklistWidget(StaticFallback, W.VBox):
    """Filter dropdowns, a count, and a list of studies (see the module docstring).

    Parameters
    ----------
    imaging
        ``cohort.imaging``.
    findings
        The cohort's Findings (objects or a :func:`cds.review.worklist.findings_frame` table).
    reviews
        ``ReviewStore.reviews_frame()``.
    now
        The time waits are measured to (the explorer passes the cohort's reference date).
    blind
        Reader-study mode: no AI columns or AI filter; ordered by waiting time.
    failures
        :class:`cds.finding.Failure` records: a study whose model could not run says so.
    """

    def __init__(self, imaging: pd.DataFrame, findings: Sequence[Any] | pd.DataFrame, reviews: pd.DataFrame | None = None,
                 now: Any = None, blind: bool = False, rows: int = 10, failures: Sequence[Failure] = (),
                 **kwargs: Any) -> None:
        self.imaging = imaging
        self.findings = findings
        self.failures = list(failures)
        self.now = now
        self.blind = blind
        self._callbacks: list[Callable[[str, str], None]] = []
        self.full = build_worklist(imaging, findings, reviews, now=now, blind=blind, failures=self.failures)
        self.table = self.full
        dd = {"layout": W.Layout(width="220px"), "style": {"description_width": "70px"}}
        mods = sorted({m for ms in self.full["modality"] for m in str(ms).split("/") if m})
        finds = sorted({f for fs in self.full["findings"] for f in fs})
        self.modality = W.Dropdown(description="Modality", options=["all", *mods], value="all", **dd)
        self.finding = W.Dropdown(description="Finding", options=["all", *finds], value="all", **dd)
        self.review_status = W.Dropdown(description="Review", options=["all", *REVIEW_STATES], value="all", **dd)
        self.ai_state = W.Dropdown(description="AI", options=[("all", "all")] + [(STATE_LABELS[s], s) for s in AI_STATES],
                                   value="all", **dd)
        for w in (self.modality, self.finding, self.review_status, self.ai_state):
            w.observe(lambda _c: self.apply_filters(), "value")
        if blind:
            self.ai_state.layout.display = "none"
            self.finding.layout.display = "none"
        self.count = W.HTML()
        self.select = W.Select(options=[], rows=rows, layout=W.Layout(width="100%"))
        self.select.add_class("cds-worklist-select")
        self.select.observe(self._on_pick, "value")
        header = ("order: waiting time (reader study: AI hidden)" if blind else
                  f"order: {STATE_LABELS['positive']} by margin over threshold → {STATE_LABELS['indeterminate']} "
                  f"(inside the indeterminate band) → {STATE_LABELS['measured']} → {STATE_LABELS['negative']} → "
                  f"{STATE_LABELS['no-ai']}; then longest wait")
        super().__init__([W.HTML(STYLE + f"<b>Worklist</b> <span class='cds-muted'>{esc(header)}</span>"),
                          W.HBox([self.modality, self.finding, self.review_status, self.ai_state]),
                          self.count, self.select], **kwargs)
        self.add_class("cds-worklist")
        self.add_class("cds-live")
        self.apply_filters()

    def on_select(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(patient_id, study_uid)`` when a study is picked."""
        self._callbacks.append(callback)

    def apply_filters(self) -> None:
        """Re-filter the table from the dropdowns and refill the list (the selection is kept if visible)."""
        self.table = filter_worklist(self.full, modality=self.modality.value, finding=self.finding.value,
                                     review_status=self.review_status.value,
                                     ai_state=None if self.blind else self.ai_state.value)
        current = self.select.value
        opts = [(row_label(r, self.blind), r["study_uid"]) for _, r in self.table.iterrows()]
        self._quiet = True
        try:
            self.select.options = opts
            self.select.value = current if current in {v for _, v in opts} else None
        finally:
            self._quiet = False
        self.count.value = f"<span class='cds-muted'>{len(self.table)} of {len(self.full)} studies</span>"

    def refresh(self, findings: Sequence[Any] | pd.DataFrame | None = None, reviews: pd.DataFrame | None = None) -> None:
        """Rebuild from new findings and/or reviews (after an accept/override), keeping filters and selection."""
        if findings is not None:
            self.findings = findings
        self.full = build_worklist(self.imaging, self.findings, reviews, now=self.now, blind=self.blind,
                                   failures=self.failures)
        self.apply_filters()

    def _on_pick(self, change: dict[str, Any]) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self.pick(change["new"])

    def pick(self, study_uid: str) -> None:
        """Select a study (as a click would) and notify the callbacks."""
        hit = self.full[self.full["study_uid"] == study_uid]
        if not len(hit):
            raise KeyError(f"study {study_uid!r} is not in the worklist")
        if self.select.value != study_uid and study_uid in {v for _, v in self.select.options}:
            self._quiet = True
            try:
                self.select.value = study_uid
            finally:
                self._quiet = False
        pid = str(hit.iloc[0]["patient_id"])
        for cb in list(self._callbacks):
            cb(pid, study_uid)

    def static_html(self) -> str:
        """The first rows of the (filtered) worklist as an HTML table."""
        return worklist_html(self.table, blind=self.blind)
