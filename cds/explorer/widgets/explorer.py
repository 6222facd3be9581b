"""The case explorer: the worklist on top, the picked study's case view below.

It reads a Cohort and a list of Findings (computed by the notebook/app through the model registry,
or loaded from a findings JSON) and writes every clinician action to a review store. It opens the
worklist's first study, so that a static export (papermill, nbconvert) shows a real case.

>>> import cds  # doctest: +SKIP
>>> app = CaseExplorer(cds.load_cohort("fhir_samples"), findings, ReviewStore("reviews.jsonl"),
...                    reviewer="dr-a")  # doctest: +SKIP
>>> app  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as W

from cds.explorer.widgets.case_view import CaseView
from cds.explorer.widgets.static import (
    STYLE,
    StaticFallback,
    badge_html,
    error_html,
    esc,
    state_label,
    worklist_html,
)
from cds.explorer.widgets.theme import NON_ANSWERS
from cds.explorer.widgets.worklist import WorklistWidget
from cds.finding import Failure
from cds.review.store import ReviewStore
from cds.review.worklist import failure_text

__all__ = ["CaseExplorer"]


class CaseExplorer(StaticFallback, W.VBox):
    """Worklist + case view + review store (see the module docstring).

    Parameters
    ----------
    cohort
        A :class:`cds.sources.cohort.Cohort`.
    findings
        :class:`cds.finding.Finding` records of the cohort's studies.
    store
        A :class:`~cds.review.store.ReviewStore` (or a path to its ``.jsonl`` file).
    reviewer
        The clinician's id.
    reader_study
        Reader-study mode: the AI is hidden (worklist order, findings, overlays) until the reader's
        pre-AI read of a case is saved.
    cards
        model id -> model-card info (see :func:`cds.explorer.app.model_cards`).
    now
        The time worklist waits are measured to (default: the cohort's reference date).
    failures
        :class:`cds.finding.Failure` records of studies a model gave no answer for: could not run, or
        refused (record mismatch, input rejected, outside intended use); a count per kind with the reasons
        at the top; the worklist row and the study's findings panel say so too.
    open_first
        Open the first worklist study right away (default True).
    """

    def __init__(self, cohort: Any, findings: Sequence[Any], store: ReviewStore | str, reviewer: str,
                 reader_study: bool = False, cards: dict[str, dict[str, Any]] | None = None, now: Any = None,
                 failures: Sequence[Failure] | None = None, open_first: bool = True, **kwargs: Any) -> None:
        self.cohort = cohort
        self.findings = list(findings)
        self.store = store if isinstance(store, ReviewStore) else ReviewStore(store)
        self.reviewer = reviewer
        self.reader_study = reader_study
        self.now = now if now is not None else (cohort.reference_date or None)
        self.failures = list(failures or [])
        self.worklist = WorklistWidget(cohort.imaging, self.findings, self.store.reviews_frame(), now=self.now,
                                       blind=reader_study, failures=self.failures)
        self.case = CaseView(cohort, self.findings, self.store, reviewer, reader_study=reader_study, cards=cards,
                             failures=self.failures)
        self.worklist.on_select(self._open)
        self.case.actions.on_action(lambda _rec: self.worklist.refresh(reviews=self.store.reviews_frame()))
        self.switch_ms: list[float] = []
        mode = "reader study (AI hidden until your read is saved)" if reader_study else "clinical review"
        problems = ""
        if self.store.problems:
            problems = "".join(error_html(f"Review log: {p}", "div") for p in self.store.problems)
        fail = "".join(self._failure_summary(state) for state in ("failed", *NON_ANSWERS))
        self.title = W.HTML(
            f'{STYLE}<div class="cds-box"><h3>Case explorer</h3><span class="cds-muted">reviewer '
            f"<b>{esc(reviewer)}</b> · mode: {esc(mode)} · {len(cohort.patients)} patients, "
            f"{len(self.worklist.full)} studies, {len(self.findings)} AI findings · review log "
            f"{esc(self.store.path)} ({len(self.store)} earlier actions) · waits measured to {esc(self.now)}</span>"
            f"{problems}{fail}</div>")
        super().__init__([self.title, self.worklist, self.case], **kwargs)
        self.add_class("cds-explorer")
        self.add_class("cds-live")
        if open_first and len(self.worklist.table):
            self.worklist.pick(self.worklist.table.iloc[0]["study_uid"])

    def _failure_summary(self, state: str) -> str:
        """A folded list of the studies without an AI answer of one kind (``failed`` or a refusal), by reason."""
        failures = [fl for fl in self.failures if getattr(fl, "state", "failed") == state]
        if not failures:
            return ""
        reasons: dict[str, int] = {}
        for fl in failures:
            key = failure_text(fl)
            reasons[key] = reasons.get(key, 0) + 1
        items = "".join(f"<li>{esc(k)} ({n})</li>" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        why = ("because the model could not run" if state == "failed"
               else f"because the AI must not answer: {state_label(state)}")
        badge = "" if state == "failed" else badge_html(state) + " "
        return (f'<details><summary class="cds-muted">{badge}{len(failures)} stud(ies) without an AI result {esc(why)}'
                f"</summary><ul>{items}</ul></details>")

    def _open(self, patient_id: str, study_uid: str) -> None:
        t0 = time.perf_counter()
        if patient_id == self.case.patient_id:
            self.case.study_select.value = study_uid
        else:
            self.case.show(patient_id, study_uid)
        self.switch_ms.append((time.perf_counter() - t0) * 1000.0)

    def open_patient(self, patient_id: str, study_uid: str | None = None) -> None:
        """Open a patient (and study) as if picked in the worklist."""
        if study_uid is None:
            rows = self.worklist.full[self.worklist.full["patient_id"] == patient_id]
            if not len(rows):
                self.case.show(patient_id)
                return
            study_uid = str(rows.iloc[0]["study_uid"])
        self.worklist.pick(study_uid)

    # ------------------------------------------------------------------------------- static
    def static_html(self) -> str:
        """Worklist table and the open case as self-contained HTML."""
        return (f'{self.title.value}<div class="cds-static">{worklist_html(self.worklist.table, blind=self.reader_study)}'
                f"</div>{self.case.static_html()}")
