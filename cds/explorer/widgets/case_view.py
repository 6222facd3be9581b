"""The case view: one patient's header, trends, imaging timeline, image viewer, AI findings and actions.

Built from a :class:`cds.sources.cohort.Cohort` (``cohort.patient(pid)``) and the Findings of the patient's
studies. Switching patient re-renders HTML pieces and one image; nothing is recomputed for the cohort.

Other explorers on the same review log: on each study switch, and every ``watch_seconds`` while the
kernel's event loop runs (Jupyter, voila), :meth:`CaseView.check_log` picks up the actions they
appended (one ``stat`` when nothing changed) and redraws the findings, the history and, through the
actions panel's ``on_action`` callbacks, the worklist. Log lines that are not usable records are
listed above the actions (line number and reason); a failed write says "Not saved".

>>> import cds  # doctest: +SKIP
>>> view = CaseView(cds.load_cohort("fhir_samples"), findings=[], store=ReviewStore("r.jsonl"),
...                 reviewer="dr-a")  # doctest: +SKIP
>>> view.show("04a33bab")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import pandas as pd

from cds.errors import CdsError
from cds.explorer.widgets.actions import ActionsPanel
from cds.explorer.widgets.static import (
    STYLE,
    StaticFallback,
    error_html,
    esc,
    findings_html,
    image_html,
    patient_header_html,
    timeline_html,
    trends_html,
)
from cds.explorer.widgets.viewer import ImageViewer
from cds.finding import Failure
from cds.images import render
from cds.review.store import ReviewStore
from cds.review.worklist import AI_STATES, STATE_LABELS, finding_state, finding_urgency

__all__ = ["CaseView", "group_findings"]

log = logging.getLogger(__name__)
_NO_AI = (AI_STATES.index("no-ai"), 0.0)


def group_findings(findings: Sequence[Any]) -> dict[str, list[Any]]:
    """Findings by study UID, most urgent first within each study (the worklist's order).

    >>> from cds.finding import Finding
    >>> lo = Finding("p", "1", "s", "c", "Low", "m", "1", probability=0.1, threshold=0.5)
    >>> hi = Finding("p", "1", "s", "c", "High", "m2", "1", probability=0.9, threshold=0.5)
    >>> [f.display for f in group_findings([lo, hi])["1"]]
    ['High', 'Low']
    """
    out: dict[str, list[Any]] = {}
    for f in findings:
        out.setdefault(str(f.study_uid), []).append(f)
    for uid in out:
        out[uid].sort(key=finding_urgency)
    return out


class CaseView(StaticFallback, W.VBox):
    """One patient at a time (see the module docstring).

    Parameters
    ----------
    cohort
        The :class:`cds.sources.cohort.Cohort`.
    findings
        Findings of the cohort's studies (any subset; studies without one show "no AI result").
    store, reviewer, reader_study
        Passed to the :class:`~cds.explorer.widgets.actions.ActionsPanel`.
    cards
        model id -> ``{"name", "version", "html", "path"}`` (see :func:`cds.explorer.app.model_cards`).
    failures
        :class:`cds.finding.Failure` records: the findings panel of a study says which model could not run.
    watch_seconds
        How often to look for other explorers' actions while an event loop runs (None: only on study
        switches and :meth:`check_log` calls).
    """

    def __init__(self, cohort: Any, findings: Sequence[Any], store: ReviewStore, reviewer: str,
                 reader_study: bool = False, cards: dict[str, dict[str, Any]] | None = None,
                 image_cache: int = 8, failures: Sequence[Failure] = (), watch_seconds: float | None = 5.0,
                 **kwargs: Any) -> None:
        self.cohort = cohort
        self.by_study = group_findings(findings)
        self.failures_by_study: dict[str, list[Failure]] = {}
        for fl in failures:
            if fl.study_uid is not None:
                self.failures_by_study.setdefault(str(fl.study_uid), []).append(fl)
        self.store = store
        self.reviewer = reviewer
        self.reader_study = reader_study
        self.cards = cards or {}
        self.patient_id: str | None = None
        self.study_uid: str | None = None
        self.record: Any = None
        self.studies = pd.DataFrame()
        self.timings: dict[str, float] = {}
        self._images: OrderedDict[str, Any] = OrderedDict()
        self._image_cache = image_cache
        self._revealed = not reader_study
        self.header = W.HTML()
        self.header.add_class("cds-case-header")
        self.study_select = W.Dropdown(description="Study", options=[], layout=W.Layout(width="460px"),
                                       style={"description_width": "50px"})
        self.study_select.add_class("cds-study-select")
        self.study_select.observe(self._on_study, "value")
        self.viewer = ImageViewer()
        self.image_message = W.HTML()
        self.findings_panel = W.HTML()
        self.findings_panel.add_class("cds-findings-panel")
        self.actions = ActionsPanel(store, reviewer, reader_study=reader_study)
        self.actions.on_reveal(self._on_reveal)
        self.actions.on_action(lambda _rec: self._update_findings_panel())
        self.log_status = W.HTML()
        self.log_status.add_class("cds-log-status")
        self._watch: asyncio.TimerHandle | None = None
        self.timeline = W.HTML()
        self.trends = W.HTML()
        left = W.VBox([self.study_select, self.image_message, self.viewer], layout=W.Layout(min_width="540px"))
        right = W.VBox([self.findings_panel, self.log_status, self.actions],
                       layout=W.Layout(width="420px", margin="0 0 0 12px"))
        super().__init__([W.HTML(STYLE), self.header, W.HBox([left, right], layout=W.Layout(flex_flow="row wrap")),
                          self.timeline, W.HTML("<b>Lab and vital-sign trends</b>"), self.trends], **kwargs)
        self.add_class("cds-case-view")
        self.add_class("cds-live")
        self._update_log_status()
        if watch_seconds:
            self.watch_log(watch_seconds)

    # ------------------------------------------------------------------------------ review log
    def check_log(self) -> list[dict[str, Any]]:
        """Show the actions other explorers appended to the review log since the last look.

        Returns them (empty when nothing changed). An unreadable log is said above the actions.
        """
        try:
            fresh = self.actions.check_log()
        except CdsError as exc:
            self.log_status.value = error_html(f"Review log not readable: {exc}", "div")
            return []
        self._update_log_status()
        return fresh

    def watch_log(self, seconds: float) -> bool:
        """Call :meth:`check_log` every ``seconds`` on the running event loop; False when none runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self.stop_watching()

        def tick() -> None:
            try:
                self.check_log()
            finally:
                self._watch = loop.call_later(seconds, tick)

        self._watch = loop.call_later(seconds, tick)
        return True

    def stop_watching(self) -> None:
        """Stop the :meth:`watch_log` timer."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def close(self) -> None:
        """Stop watching the log and close the widget."""
        self.stop_watching()
        super().close()

    def _update_log_status(self) -> None:
        try:
            problems = self.store.problems
        except CdsError as exc:
            self.log_status.value = error_html(f"Review log not readable: {exc}", "div")
            return
        if not problems:
            self.log_status.value = ""
            return
        rows = "".join(f'<li class="cds-error cds-problem-row">{esc(f"line {p.line}: {p.message}")}</li>'
                       for p in problems[-20:])
        more = f"<li>… {len(problems) - 20} earlier</li>" if len(problems) > 20 else ""
        self.log_status.value = (f'<details class="cds-box"><summary class="cds-error">Review log: {len(problems)} '
                                 f"line(s) not used (kept in {esc(self.store.path.name)}, skipped; the other actions "
                                 f"count)</summary><ul>{more}{rows}</ul></details>")

    # ------------------------------------------------------------------------------------- show
    def show(self, patient_id: str, study_uid: str | None = None) -> None:
        """Show a patient and one of their studies: the given one, else the most urgent (reader study: the latest)."""
        t0 = time.perf_counter()
        rec = self.cohort.patient(patient_id)
        t1 = time.perf_counter()
        self.patient_id, self.record = patient_id, rec
        img = rec.imaging.copy()
        img["started"] = pd.to_datetime(img["started"], utc=True)
        studies = img.sort_values("started", kind="stable").groupby("study_uid", sort=False).first().reset_index()
        top = {u: self.by_study[u][0] for u in studies["study_uid"] if u in self.by_study}
        studies["ai_state"] = [finding_state(top[u])[0] if u in top else "no-ai" for u in studies["study_uid"]]
        self.studies = studies
        self.header.value = patient_header_html(rec, self.cohort.reference_date, n_studies=len(studies))
        self.trends.value = trends_html(rec.observations, list(studies["started"]))
        t2 = time.perf_counter()
        if study_uid is None and len(studies):
            if self.reader_study:  # the AI must not choose what the reader sees first: the latest study
                study_uid = studies.iloc[-1]["study_uid"]
            else:
                ranked = sorted(studies.itertuples(), key=lambda r: (
                    *(finding_urgency(top[r.study_uid]) if r.study_uid in top else _NO_AI),
                    -r.started.value if not pd.isna(r.started) else 0))
                study_uid = ranked[0].study_uid
        opts = []
        for r in studies.itertuples():
            d = r.started.strftime("%Y-%m-%d") if not pd.isna(r.started) else "no date"
            state = "" if self.reader_study else f" · {STATE_LABELS[r.ai_state]}"
            opts.append((f"{d} · {r.modality} · {r.description or ''}{state}", r.study_uid))
        self._quiet = True
        try:
            self.study_select.options = opts
            self.study_select.value = study_uid if study_uid in {v for _, v in opts} else None
        finally:
            self._quiet = False
        self.show_study(study_uid)
        t3 = time.perf_counter()
        self.timings = {"patient_tables_ms": (t1 - t0) * 1000, "header_trends_ms": (t2 - t1) * 1000,
                        "study_ms": (t3 - t2) * 1000, "total_ms": (t3 - t0) * 1000}

    def _on_study(self, change: dict[str, Any]) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self.show_study(change["new"])

    def _image_of(self, row: Any) -> Any:
        from cds.images.read import read_image

        key = str(row.pixel_location)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        access = getattr(self.cohort, "pixel_access", None)
        if access is not None:
            access.require(key)  # checked again just before opening
        image = read_image(key)
        self._images[key] = image
        while len(self._images) > self._image_cache:
            self._images.popitem(last=False)
        return image

    def show_study(self, study_uid: str | None) -> None:
        """Show one of the current patient's studies: image, findings, actions, timeline ring."""
        self.check_log()
        self.study_uid = study_uid
        self.timeline.value = timeline_html(self.studies, study_uid, blind=self.reader_study)
        findings = self.by_study.get(str(study_uid), []) if study_uid else []
        self.image = None
        self.current_findings = findings
        self.actions.set_findings(findings)  # fires on_reveal -> findings panel (+ overlays of a shown image)
        if study_uid is None:
            self.image_message.value = '<span class="cds-muted">This patient has no imaging study.</span>'
            self.viewer.layout.display = "none"
            return
        rows = self.record.imaging
        rows = rows[(rows["study_uid"] == study_uid) & rows["pixel_location"].notna()]
        if not len(rows):
            self.image_message.value = ('<span class="cds-muted">The ImagingStudy does not say where its pixels are: '
                                        "no image to show.</span>")
            self.viewer.layout.display = "none"
            return
        row = next(rows.itertuples())
        try:
            image = self._image_of(row)
        except CdsError as exc:
            self.image_message.value = error_html(f"Image not readable: {exc}")
            self.viewer.layout.display = "none"
            return
        self.image = image
        self.image_message.value = ""
        self.viewer.layout.display = "flex"
        self.viewer.set_image(image, self._overlays(image, findings, row.series_uid))

    def _overlays(self, image: Any, findings: Sequence[Any], series_uid: str | None) -> list[render.Overlay]:
        if not self._revealed:
            return []
        out: list[render.Overlay] = []
        for f in findings:
            if f.series_uid and series_uid and f.series_uid != series_uid:
                continue
            out.extend(render.overlays_from_finding(f, image))
        return out

    def _on_reveal(self, revealed: bool) -> None:
        changed = revealed != self._revealed
        self._revealed = revealed
        self._update_findings_panel()
        if changed and getattr(self, "image", None) is not None:
            rows = self.record.imaging
            series = rows[rows["study_uid"] == self.study_uid]["series_uid"]
            self.viewer.set_overlays(self._overlays(self.image, self.current_findings,
                                                    series.iloc[0] if len(series) else None))

    def _update_findings_panel(self) -> None:
        findings = getattr(self, "current_findings", [])
        hidden = None
        if not self._revealed:
            hidden = ("Reader study: record your own read (finding present or absent, and your confidence) below; "
                      "the AI result appears once it is saved.")
        failed = self.failures_by_study.get(str(self.study_uid), []) if self.study_uid else []
        self.findings_panel.value = findings_html(findings, self.cards,
                                                  {f.id: self.store.latest_review(f.id) for f in findings}, hidden,
                                                  failures=failed)

    # ------------------------------------------------------------------------------- static
    def static_html(self) -> str:
        """The current case as self-contained HTML (image inlined as a PNG data URL)."""
        img = image_html(self.viewer.image.value, f"image of study {self.study_uid}") \
            if getattr(self, "image", None) is not None else self.image_message.value
        return (f'{STYLE}<div class="cds-static cds-case-static">{self.header.value}'
                f'<div style="display:flex;flex-wrap:wrap;gap:12px"><div>{img}</div>'
                f'<div style="max-width:440px">{self.findings_panel.value}</div></div>'
                f"{self.timeline.value}<b>Lab and vital-sign trends</b>{self.trends.value}</div>")
