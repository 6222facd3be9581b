"""The worklist widget: studies by AI urgency (or by waiting time in reader studies), with filters.

Ordering and filtering live in :mod:`cds.review.worklist` (pandas in, pandas out); this widget only shows
them, in an accessible sortable grid (:class:`cds.explorer.widgets.grid.WorklistGrid`: click a column
header to sort by it, ↑/↓ and Enter to open a study with the keyboard); states are named by
:data:`cds.review.worklist.STATE_LABELS` and drawn as badges with an icon. Picking a row calls the
``on_select`` callbacks with ``(patient_id, study_uid)``.

>>> import pandas as pd
>>> imaging = pd.DataFrame({"patient_id": ["a"], "study_uid": ["1"], "imaging_study_id": ["s1"],
...     "modality": ["CR"], "description": ["Chest"], "started": pd.to_datetime(["2020-01-01"], utc=True)})
>>> w = WorklistWidget(imaging, [], now="2020-01-03")
>>> w.table.iloc[0]["waited_text"]
'2 d'
>>> [c["label"] for c in w.grid.columns][:4]
['patient', 'study date', 'modality', 'waited']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
import pandas as pd

from cds.explorer.widgets.grid import WorklistGrid
from cds.explorer.widgets.static import (
    STYLE,
    StaticFallback,
    esc,
    state_label,
    worklist_cells,
    worklist_columns,
    worklist_html,
)
from cds.explorer.widgets.theme import NON_ANSWERS, STATE_ICONS
from cds.finding import Failure
from cds.review.worklist import AI_STATES, REVIEW_STATES, STATE_LABELS, build_worklist, filter_worklist

__all__ = ["WorklistWidget", "row_label", "sort_worklist", "SORT_COLUMNS"]

_LABEL_WIDTH = max(len(state_label(s)) for s in (*STATE_LABELS, *NON_ANSWERS))
#: Grid column key -> the worklist column it sorts by (``ai``: the urgency order itself).
SORT_COLUMNS = {"patient": "patient_id", "started": "started", "modality": "modality", "waited": "waited",
                "ai": None, "finding": "finding", "score": "score", "review": "review_status"}


def sort_worklist(table: pd.DataFrame, key: str, descending: bool = False) -> pd.DataFrame:
    """``table`` sorted by a grid column (stable; missing values last); ``""`` or ``ai`` keep the worklist order.

    >>> t = pd.DataFrame({"patient_id": ["b", "a", "c"], "score": [0.2, None, 0.9]})
    >>> sort_worklist(t, "score", descending=True)["patient_id"].tolist()
    ['c', 'b', 'a']
    >>> sort_worklist(t, "ai", descending=True)["patient_id"].tolist()
    ['c', 'a', 'b']
    """
    if key not in ("", *SORT_COLUMNS):
        raise KeyError(f"no worklist column {key!r} to sort by (one of {', '.join(SORT_COLUMNS)})")
    col = SORT_COLUMNS.get(key)
    if col is None:
        return table.iloc[::-1] if descending and key else table
    return table.sort_values(col, ascending=not descending, kind="stable", na_position="last")


def row_label(r: Any, blind: bool = False) -> str:
    """One fixed-width line of the worklist (a study whose model could not run says so).

    >>> r = pd.Series({"patient_id": "p1", "started": pd.Timestamp("2020-04-01"), "modality": "CR",
    ...                "waited_text": "3 d", "ai_state": "positive", "finding": "Pneumonia", "score": 0.91,
    ...                "review_status": "unreviewed", "failure": ""})
    >>> row_label(r)
    '▲ AI positive                 | p1       | 2020-04-01 CR    | waited 3 d        | Pneumonia 0.910    | unreviewed'
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
    if state in NON_ANSWERS:
        what = str(r.get("failure") or "")
    elif state == "no-ai" and r.get("failure"):
        what = "model could not run"
    else:
        what = (finding + " " + score).strip()
    return (f"{STATE_ICONS.get(state, '·')} {state_label(state):<{_LABEL_WIDTH}} | {base} | "
            f"{what:<18} | {r['review_status']}")


class WorklistWidget(StaticFallback, W.VBox):
    """Filter dropdowns, a count, and the grid of studies (see the module docstring).

    ``grid`` (also reachable as ``select``, its former name) is the :class:`WorklistGrid`: its ``value``
    is the picked study's uid, its ``options`` the ``(row label, uid)`` pairs on screen.

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
        self.ai_state = W.Dropdown(description="AI", options=[("all", "all")] + [(state_label(s), s) for s in AI_STATES],
                                   value="all", **dd)
        for w in (self.modality, self.finding, self.review_status, self.ai_state):
            w.observe(lambda _c: self.apply_filters(), "value")
        if blind:
            self.ai_state.layout.display = "none"
            self.finding.layout.display = "none"
        self.count = W.HTML()
        self.grid = WorklistGrid(columns=[{"key": k, "label": h} for k, h in worklist_columns(blind)],
                                 max_rows=rows, layout=W.Layout(width="100%"))
        self.select = self.grid  # the name of the former <select>: tests and notebooks set .value
        self.grid.observe(self._on_pick, "value")
        self.grid.observe(lambda _c: self.apply_filters(), ["sort_by", "sort_desc"])
        header = ("order: waiting time (reader study: AI hidden)" if blind else
                  f"order: {STATE_LABELS['positive']} by margin over threshold → {STATE_LABELS['indeterminate']} "
                  "(inside the indeterminate band) → "
                  + " → ".join(state_label(s) for s in AI_STATES if s not in ("positive", "indeterminate"))
                  + "; then longest wait")
        keys = "Click a column header to sort (again to reverse); ↑/↓ move between studies, Enter opens one."
        super().__init__([W.HTML(STYLE + f'<div class="cds-box"><b>Worklist</b> <span class="cds-muted">'
                                 f"{esc(header)}</span><br><span class=\"cds-muted\">{esc(keys)}</span></div>"),
                          W.HBox([self.modality, self.finding, self.review_status, self.ai_state]),
                          self.count, self.grid], **kwargs)
        self.add_class("cds-worklist")
        self.add_class("cds-live")
        self.apply_filters()

    def on_select(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(patient_id, study_uid)`` when a study is picked."""
        self._callbacks.append(callback)

    def apply_filters(self) -> None:
        """Re-filter (dropdowns) and re-sort (grid header) the table and refill the grid (the pick is kept if visible)."""
        table = filter_worklist(self.full, modality=self.modality.value, finding=self.finding.value,
                                review_status=self.review_status.value,
                                ai_state=None if self.blind else self.ai_state.value)
        self.table = sort_worklist(table, self.grid.sort_by, self.grid.sort_desc)
        current = self.grid.value
        rows = [{"uid": str(t.study_uid), "label": row_label(r, self.blind), "cells": worklist_cells(t, self.blind),
                 "state": "" if self.blind else str(t.ai_state)}
                for t, (_, r) in zip(self.table.itertuples(), self.table.iterrows(), strict=True)]
        self._quiet = True
        try:
            with self.grid.hold_sync():
                self.grid.rows = rows
                self.grid.value = current if current in {r["uid"] for r in rows} else None
                self.grid.caption = f"Worklist: {len(self.table)} of {len(self.full)} studies"
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
        if self.grid.value != study_uid and study_uid in {v for _, v in self.grid.options}:
            self._quiet = True
            try:
                self.grid.value = study_uid
            finally:
                self._quiet = False
        pid = str(hit.iloc[0]["patient_id"])
        for cb in list(self._callbacks):
            cb(pid, study_uid)

    def static_html(self) -> str:
        """The first rows of the (filtered, sorted) worklist as an HTML table."""
        return worklist_html(self.table, blind=self.blind)
