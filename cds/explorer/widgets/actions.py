"""Clinician actions on one study's AI findings: accept, override with a coded reason, reader-study reads.

Every click writes to the :class:`cds.review.store.ReviewStore` at once (completely, fsync'ed) before
the screen says it was saved; a write that fails (disk full, I/O error, permission denied) shows
"Not saved: <reason>" and no confirmation. In reader-study mode the reader first records a read
(finding present yes/no and a confidence 0-100) with the AI hidden; saving it reveals the AI
(``on_reveal`` callbacks), then the reader records a second, post-AI read.

Actions other explorers append to the same log show up on :meth:`ActionsPanel.check_log` (the case
view calls it on a timer and on each study switch) and after this panel's own next write: the
history and reader-study state refresh and the ``on_action`` callbacks run. Log lines that are not
usable records are listed in the history of the finding they name.

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
>>> _ = ReviewStore(store.path).override(f, "dr-b", "false-positive")  # another explorer
>>> [r["action"] for r in panel.check_log()], "override" in panel.history.value
(['override'], True)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as W

from cds.errors import CdsError
from cds.explorer.widgets.static import error_html, esc
from cds.review.store import OVERRIDE_REASONS, ReviewNotSavedError, ReviewStore

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
        self._batching = False
        self._pending: list[dict[str, Any]] = []
        ref = weakref.WeakMethod(self._on_log_record)
        store.on_change(lambda rec: (m := ref()) is not None and m(rec))
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
        """Call ``callback(record)`` after each new action in the log: once per action this panel saves,
        and once per batch of actions other explorers saved (with the latest of the batch)."""
        self._on_action.append(callback)

    def on_reveal(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(revealed)`` whenever the AI becomes visible / hidden (reader-study mode)."""
        self._on_reveal.append(callback)

    # ------------------------------------------------------------------------------- the log
    def check_log(self) -> list[dict[str, Any]]:
        """Pick up actions other explorers appended to the log; refresh and notify if there are any.

        Returns the new actions (empty when nothing changed; then nothing is redrawn).
        """
        with self._batch():
            fresh = self.store.poll()
        return fresh

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """Collect the log's new actions while writing / polling; handle them once afterwards."""
        outer = self._batching
        self._batching = True
        try:
            yield
        finally:
            self._batching = outer
            if not outer:
                self._flush()

    def _on_log_record(self, rec: dict[str, Any]) -> None:
        self._pending.append(rec)
        if not self._batching:  # another panel on the same store object wrote, or someone polled
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        last, self._pending = self._pending[-1], []
        self._refresh(keep_inputs=True)
        for cb in list(self._on_action):
            cb(last)

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

    def _refresh(self, keep_inputs: bool = False) -> None:
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
            if not keep_inputs:
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
        bad = [p for p in self.store.problems if p.finding_id == f.id]
        problems = "".join(f'<li class="cds-error cds-problem-row">Review log line {p.line} names this finding but '
                           f"is not used: {esc(p.message)}</li>" for p in bad)
        if not acts:
            none = '<span class="cds-muted">No actions recorded for this finding yet.</span>'
            return none + (f'<ul class="cds-history-problems" style="margin:2px 0">{problems}</ul>' if bad else "")
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
                f'style="margin:2px 0">{older}{"".join(items)}{problems}</ul></div>')

    # ----------------------------------------------------------------------------------- actions
    def _done(self, text: str) -> None:
        """Confirm a saved action (the refresh and ``on_action`` callbacks ran as the log announced it)."""
        self.message.value = (f'<span class="cds-ok" role="status">✔ {esc(text)} (saved to '
                              f"{esc(self.store.path.name)})</span>")

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, ReviewNotSavedError):
            text = f"Not saved: {exc.reason} (review log {self.store.path.name}). Your action was not recorded."
        else:
            text = f"Not saved: {exc}"
        self.message.value = error_html(text, "div", "cds-not-saved")

    def _write(self, action: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one store write; on any cds error say "Not saved" and return None."""
        try:
            with self._batch():
                return action()
        except CdsError as exc:
            self._fail(exc)
            return None

    def accept(self) -> dict[str, Any] | None:
        """Accept the selected finding (status final)."""
        f = self.finding
        if f is None:
            return None
        rec = self._write(lambda: self.store.accept(f, self.reviewer, comment=self.comment.value))
        if rec is not None:
            self.comment.value = ""
            self._done(f"Accepted {f.display}")
        return rec

    def override(self) -> dict[str, Any] | None:
        """Override the selected finding with the chosen reason and comment (status amended)."""
        f = self.finding
        if f is None:
            return None
        reason = self.reason.value
        rec = self._write(lambda: self.store.override(f, self.reviewer, reason, comment=self.comment.value))
        if rec is not None:
            self.comment.value = ""
            self._done(f"Overrode {f.display}: {reason}")
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
        present, confidence = bool(self.present.value), int(self.confidence.value)
        rec = self._write(lambda: self.store.record_read(f, self.reviewer, phase, present, confidence))
        if rec is not None:
            self.present.value = None  # the next phase starts with empty inputs
            self.confidence.value = 50
            self._done(f"Saved your {phase} read")
        return rec
