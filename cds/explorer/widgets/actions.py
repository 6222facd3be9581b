"""Clinician actions on one study's AI findings: accept, override with a coded reason, reader-study reads.

Every click writes to the :class:`cds.review.store.ReviewStore` at once (fsync'ed) before the screen
says it was saved. In reader-study mode the reader first records a read (finding present yes/no and
a confidence 0-100) with the AI hidden; saving it reveals the AI (``on_reveal`` callbacks), then the
reader records a second, post-AI read.

>>> from cds.finding import Finding
>>> from cds.review.store import ReviewStore
>>> import tempfile, os
>>> store = ReviewStore(os.path.join(tempfile.mkdtemp(), "r.jsonl"))
>>> f = Finding("p1", "1.2", "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
...             probability=0.9, threshold=0.5)
>>> panel = ActionsPanel(store, "dr-a")
>>> panel.set_findings([f])
>>> panel.accept_button.click()
>>> store.status_of(f.id)
'final'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W

from cds.errors import CdsError
from cds.explorer.widgets.static import error_html, esc
from cds.review.store import OVERRIDE_REASONS, ReviewStore

__all__ = ["ActionsPanel"]


class ActionsPanel(W.VBox):
    """Accept / override / reader-study controls for the findings of one study.

    Parameters
    ----------
    store
        Where every action is written.
    reviewer
        The clinician's id (becomes ``Practitioner/<id>``).
    reader_study
        Reader-study mode: pre-AI read first, AI hidden until it is saved.
    """

    def __init__(self, store: ReviewStore, reviewer: str, reader_study: bool = False, **kwargs: Any) -> None:
        self.store = store
        self.reviewer = reviewer
        self.reader_study = reader_study
        self.findings: list[Any] = []
        self._on_action: list[Callable[[dict[str, Any]], None]] = []
        self._on_reveal: list[Callable[[bool], None]] = []
        self.finding_select = W.Dropdown(description="Finding", options=[], layout=W.Layout(width="360px"),
                                         style={"description_width": "60px"})
        self.finding_select.observe(lambda _c: self._refresh(), "value")
        # accept / override
        self.accept_button = W.Button(description="Accept AI result", button_style="success",
                                      layout=W.Layout(width="160px"))
        self.reason = W.Dropdown(description="Reason", options=[(f"{code}: {disp}", code) for code, disp in
                                                                OVERRIDE_REASONS.items()],
                                 layout=W.Layout(width="360px"), style={"description_width": "60px"})
        self.comment = W.Textarea(description="Comment", placeholder="optional (required for 'other')",
                                  layout=W.Layout(width="360px", height="52px"), style={"description_width": "60px"})
        self.override_button = W.Button(description="Override", button_style="danger", layout=W.Layout(width="160px"))
        self.accept_button.add_class("cds-accept")
        self.override_button.add_class("cds-override")
        self.reason.add_class("cds-reason")
        self.comment.add_class("cds-comment")
        self.accept_button.on_click(lambda _b: self.accept())
        self.override_button.on_click(lambda _b: self.override())
        self.review_box = W.VBox([W.HTML("<b>Review the AI result</b>"), self.accept_button, self.reason, self.comment,
                                  self.override_button])
        # reader study
        self.present = W.RadioButtons(options=[("finding present", True), ("finding absent", False)], value=None,
                                      description="Your read", style={"description_width": "70px"})
        self.confidence = W.IntSlider(description="Confidence", min=0, max=100, value=50,
                                      style={"description_width": "70px"}, layout=W.Layout(width="340px"))
        self.read_button = W.Button(description="Save read before AI", button_style="primary",
                                    layout=W.Layout(width="200px"))
        self.present.add_class("cds-read-present")
        self.read_button.add_class("cds-save-read")
        self.read_button.on_click(lambda _b: self.save_read())
        self.read_title = W.HTML()
        self.read_box = W.VBox([self.read_title, self.present, self.confidence, self.read_button])
        self.message = W.HTML()
        self.message.add_class("cds-action-message")
        self.history = W.HTML()
        super().__init__([self.finding_select, self.read_box, self.review_box, self.message, self.history], **kwargs)
        self.add_class("cds-actions")
        self._refresh()

    # ------------------------------------------------------------------------------ callbacks
    def on_action(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(record)`` after each saved action."""
        self._on_action.append(callback)

    def on_reveal(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(revealed)`` whenever the AI becomes visible / hidden (reader-study mode)."""
        self._on_reveal.append(callback)

    # ------------------------------------------------------------------------------------ state
    @property
    def finding(self) -> Any | None:
        """The finding the controls act on."""
        fid = self.finding_select.value
        return next((f for f in self.findings if f.id == fid), None)

    def set_findings(self, findings: Sequence[Any]) -> None:
        """Show the controls for a study's findings (most urgent first)."""
        self.findings = list(findings)
        opts = [(f"{f.display} · {f.model_id} {f.model_version}", f.id) for f in self.findings]
        self.finding_select.options = opts
        self.finding_select.value = opts[0][1] if opts else None
        self.finding_select.layout.display = "flex" if len(opts) > 1 else "none"
        self.comment.value = ""
        self.message.value = ""
        self._refresh()

    def ai_revealed(self) -> bool:
        """Whether the AI may be shown: always outside reader studies; after the pre-AI read inside."""
        if not self.reader_study:
            return True
        f = self.finding
        if f is None:
            return True
        return self.store.reads(f.id, self.reviewer)["pre-ai"] is not None

    def _refresh(self) -> None:
        f = self.finding
        if f is None:
            self.read_box.layout.display = "none"
            self.review_box.layout.display = "none"
            self.history.value = '<span class="cds-muted">No AI result to review for this study.</span>'
            self._notify_reveal()
            return
        reads = self.store.reads(f.id, self.reviewer) if self.reader_study else {"pre-ai": None, "post-ai": None}
        if self.reader_study:
            self.read_box.layout.display = "flex"
            if reads["pre-ai"] is None:
                self.read_title.value = "<b>Reader study: your read BEFORE seeing the AI</b>"
                self.read_button.description = "Save read before AI"
                self.read_button.disabled = False
                self.review_box.layout.display = "none"
            elif reads["post-ai"] is None:
                self.read_title.value = "<b>Reader study: your read AFTER seeing the AI</b>"
                self.read_button.description = "Save read after AI"
                self.read_button.disabled = False
                self.review_box.layout.display = "none"
            else:
                self.read_title.value = "<b>Reader study: both reads saved</b>"
                self.read_button.disabled = True
                self.review_box.layout.display = "flex"
            self.present.value = None
            self.confidence.value = 50
        else:
            self.read_box.layout.display = "none"
            self.review_box.layout.display = "flex"
        self.history.value = self._history_html(f)
        self._notify_reveal()

    def _notify_reveal(self) -> None:
        revealed = self.ai_revealed()
        for cb in list(self._on_reveal):
            cb(revealed)

    def _history_html(self, f: Any) -> str:
        acts = self.store.actions(f.id)
        if not acts:
            return '<span class="cds-muted">No actions recorded for this finding yet.</span>'
        items = []
        for a in acts[-6:]:
            who = (a.get("reviewer") or {}).get("reference", "").split("/")[-1]
            if a["action"] == "read":
                r = a["read"]
                what = (f"read {r['phase']}: {'present' if r['finding_present'] else 'absent'}, "
                        f"confidence {r['confidence']}")
            else:
                code = ((a.get("reason") or {}).get("coding") or [{}])[0].get("code")
                what = f"{a['action']} → {a['status']}" + (f" ({code})" if code else "")
            items.append(f"<li>{esc(a['recorded'])} · {esc(who)} · {esc(what)}"
                         + (f" · “{esc(a['comment'])}”" if a.get("comment") else "") + "</li>")
        older = f"<li>… {len(acts) - 6} earlier</li>" if len(acts) > 6 else ""
        return (f'<div class="cds-history"><b>Saved actions</b> (latest wins, nothing is deleted)<ul '
                f'style="margin:2px 0">{older}{"".join(items)}</ul></div>')

    # ----------------------------------------------------------------------------------- actions
    def _done(self, rec: dict[str, Any], text: str) -> None:
        self.message.value = f'<span style="color:#2a7a2a">✔ {esc(text)} (saved to {esc(self.store.path.name)})</span>'
        self._refresh()
        for cb in list(self._on_action):
            cb(rec)

    def _fail(self, exc: Exception) -> None:
        self.message.value = error_html(f"Not saved: {exc}")

    def accept(self) -> dict[str, Any] | None:
        """Accept the selected finding (status final)."""
        f = self.finding
        if f is None:
            return None
        try:
            rec = self.store.accept(f, self.reviewer, comment=self.comment.value)
        except CdsError as exc:
            self._fail(exc)
            return None
        self.comment.value = ""
        self._done(rec, f"Accepted {f.display}")
        return rec

    def override(self) -> dict[str, Any] | None:
        """Override the selected finding with the chosen reason and comment (status amended)."""
        f = self.finding
        if f is None:
            return None
        try:
            rec = self.store.override(f, self.reviewer, self.reason.value, comment=self.comment.value)
        except CdsError as exc:
            self._fail(exc)
            return None
        self.comment.value = ""
        self._done(rec, f"Overrode {f.display}: {self.reason.value}")
        return rec

    def save_read(self) -> dict[str, Any] | None:
        """Save the reader-study read for the current phase (pre-AI, then post-AI)."""
        f = self.finding
        if f is None:
            return None
        if self.present.value is None:
            self.message.value = error_html('Choose "finding present" or "finding absent" first.')
            return None
        phase = "pre-ai" if self.store.reads(f.id, self.reviewer)["pre-ai"] is None else "post-ai"
        try:
            rec = self.store.record_read(f, self.reviewer, phase, bool(self.present.value), int(self.confidence.value))
        except CdsError as exc:
            self._fail(exc)
            return None
        self._done(rec, f"Saved your {phase} read")
        return rec
