"""The durable log of what clinicians did with AI results: accept, override, reader-study reads.

Every action is one line of an append-only JSON Lines file, written completely and ``fsync``-ed
the moment it is made (:mod:`cds.review.log_file`), so a kernel restart or a crash loses nothing that
was confirmed on screen. A write that fails (disk full, I/O error, short write, permission denied)
leaves the file as it was and raises :class:`ReviewNotSavedError`: the explorer then says "not
saved", never a confirmation. Nothing is ever deleted or rewritten: the latest action per finding is
what the explorer shows, the earlier ones stay as the audit trail.

Every access re-reads what was appended since the last one (one ``stat`` when nothing changed), so
two explorers (two store objects, two processes) on one log see each other's actions without a
restart; :meth:`ReviewStore.poll` also tells the ``on_change`` listeners about them.

Each line is checked against the record schema below. A line that is not a usable record (bad JSON,
a missing ``finding_id``, a wrong type, a status that does not fit the action, a cut-off last line
left by a crash) is reported in :attr:`ReviewStore.problems` with its line number and the reason and
skipped; the lines before and after it still count.

Each line is a FHIR-shaped dict::

    {"kind": "cds-review/1", "id": "<uuid>", "action": "accept" | "override" | "read",
     "finding_id": "<Finding.id>", "finding": {<snapshot: patient, study, code, model, score>},
     "status": "final" | "amended" | "entered-in-error" | null,      # resulting Observation status
     "reviewer": {"reference": "Practitioner/<id>"}, "recorded": "<ISO 8601 UTC>",
     "reason": {"coding": [{"system": OVERRIDE_REASON_SYSTEM, "code": ..., "display": ...}]} | null,
     "comment": "..." | null, "clinician_interpretation": "positive" | "negative" | null,
     "read": {"phase": "pre-ai" | "post-ai", "finding_present": bool, "confidence": 0..100} | null}

:func:`to_fhir` turns the log into FHIR R4 resources (the reviewed Observations with their new
status, Practitioners, and one Provenance per action with the Practitioner as ``verifier``),
validated with ``fhir.resources.R4B``. The reviewed Observation is made by the results writer's
builder (:mod:`cds.fhir.resources`) with the id of the AI Observation it reviews
(:func:`cds.fhir.ids.observation_id`), so writing it replaces the report's preliminary result.

>>> import tempfile, os
>>> from cds.finding import Finding
>>> f = Finding("p1", "1.2.3", "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
...             probability=0.8, threshold=0.5)
>>> path = os.path.join(tempfile.mkdtemp(), "reviews.jsonl")
>>> store = ReviewStore(path)
>>> store.override(f, "dr-a", "false-positive", comment="old scar")["status"]
'amended'
>>> ReviewStore(path).latest_review(f.id)["reason"]["coding"][0]["code"]
'false-positive'
>>> with open(path, "a") as fh:
...     _ = fh.write('{"kind": "cds-review/1", "action": "accept"}' + chr(10))
>>> print(store.problems[0].message)
not a usable review record: missing id, finding_id, finding, reviewer, recorded, status
>>> len(store)
1
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from cds.codes import FINDING_ID_SYSTEM, OVERRIDE_REASON_SYSTEM, REVIEWER_ID_SYSTEM, SURVEY, UCUM, coding
from cds.errors import ParameterError
from cds.fhir.ids import observation_id, read_observation_id
from cds.fhir.resources import (
    ModelInfo,
    RunContext,
    fhir_datetime,
    model_info,
    observation,
    review_provenance,
    study_reference,
)
from cds.finding import Finding
from cds.review.log_file import AppendLog, ReviewNotSavedError, ReviewStoreError

__all__ = [
    "ReviewStore",
    "ReviewStoreError",
    "ReviewNotSavedError",
    "StoreProblem",
    "OVERRIDE_REASON_SYSTEM",
    "OVERRIDE_REASONS",
    "ACTION_STATUS",
    "to_fhir",
    "to_fhir_bundle",
    "validate_fhir",
]

#: code -> display of every override reason a clinician can pick.
OVERRIDE_REASONS: dict[str, str] = {
    "false-positive": "AI finding is not present (false positive)",
    "false-negative": "Finding present but AI says negative (false negative)",
    "wrong-location": "Finding present but AI localised it wrongly",
    "poor-image-quality": "Image quality too poor for the AI result to be used",
    "clinical-context": "Clinical context makes the AI result irrelevant or misleading",
    "other": "Other reason (see comment)",
}
#: The Observation status an accept / override leaves the AI result in.
ACTION_STATUS = {"accept": "final", "override": "amended", "entered-in-error": "entered-in-error"}
#: What the clinician says the truth is, for override reasons that imply it.
_IMPLIED_TRUTH = {"false-positive": "negative", "false-negative": "positive", "wrong-location": "positive"}

log = logging.getLogger(__name__)
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RECORD_KIND = "cds-review/1"


@dataclass(frozen=True)
class StoreProblem:
    """A line of the log that could not be used (kept in the file, skipped on load).

    ``finding_id`` is the line's ``finding_id`` when it has a usable one (the explorer shows the
    problem beside that finding's history), else None.
    """

    path: str
    line: int
    message: str
    trailing: bool
    finding_id: str | None = None

    def __str__(self) -> str:
        where = "last line (a write was cut off?)" if self.trailing else f"line {self.line}"
        return f"{self.path}: {where}: {self.message}; skipped, earlier and later lines are kept"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finding_snapshot(finding: Finding | dict[str, Any]) -> dict[str, Any]:
    """The parts of a Finding the log keeps with each action, so the log alone rebuilds its FHIR Observation.

    The fields behind ``Finding.id`` (location included) and what the Observation shows; not the
    EHR input values, per-slice data or heat-map paths.

    >>> f = Finding("p1", "1.2", "s", "c", "d", "m", "1", probability=0.7, threshold=0.5)
    >>> snap = finding_snapshot(f)
    >>> snap["id"] == f.id, snap["interpretation"], "ehr_inputs" in snap
    (True, 'positive', False)
    """
    d = finding.to_dict() if isinstance(finding, Finding) else dict(finding)
    keys = ("id", "patient_id", "study_uid", "series_uid", "code_system", "code", "display", "model_id",
            "model_version", "probability", "value", "unit", "threshold", "indeterminate", "interpretation",
            "location", "explanation", "prognostic", "imaging_study_id", "study_started", "study_body_site")
    snap = {k: d.get(k) for k in keys}
    if snap["id"] is None:
        snap["id"] = Finding.from_dict(d).id
    return snap


# ------------------------------------------------------------------------------ record schema
def _iso_datetime(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO 8601 date-time") from None
    return text


_Text = Annotated[str, Field(min_length=1)]
_Number = Annotated[float, Field(allow_inf_nan=False)]
_Strict = ConfigDict(extra="allow", strict=True)


class _Location(BaseModel):
    model_config = _Strict
    kind: _Text
    coords: list[_Number] = []


class _Snapshot(BaseModel):
    """What :func:`finding_snapshot` keeps: enough to rebuild the Finding and its Observation."""

    model_config = _Strict
    id: _Text | None = None
    patient_id: _Text
    study_uid: _Text
    code_system: str
    code: str
    display: str
    model_id: _Text
    model_version: str
    probability: _Number | None = None
    value: _Number | None = None
    threshold: _Number | None = None
    indeterminate: Annotated[list[_Number], Field(min_length=2, max_length=2)] | None = None
    location: _Location | None = None
    unit: str | None = None
    interpretation: str | None = None
    series_uid: str | None = None


class _Reviewer(BaseModel):
    model_config = _Strict
    reference: Annotated[str, Field(pattern=r"^Practitioner/[A-Za-z0-9\-.]{1,64}$")]


class _Coding(BaseModel):
    model_config = _Strict
    code: _Text


class _Reason(BaseModel):
    model_config = _Strict
    coding: Annotated[list[_Coding], Field(min_length=1)]


class _Read(BaseModel):
    model_config = _Strict
    phase: Literal["pre-ai", "post-ai"]
    finding_present: bool
    confidence: Annotated[int, Field(ge=0, le=100)]


class _Record(BaseModel):
    model_config = _Strict
    kind: Literal["cds-review/1"]
    id: _Text
    finding_id: _Text
    finding: _Snapshot
    reviewer: _Reviewer
    recorded: Annotated[str, AfterValidator(_iso_datetime)]
    comment: str | None = None
    clinician_interpretation: Literal["positive", "negative"] | None = None

    @model_validator(mode="after")
    def _same_finding(self) -> _Record:
        if self.finding.id is not None and self.finding.id != self.finding_id:
            raise ValueError("finding.id differs from finding_id")
        return self


class _Accept(_Record):
    action: Literal["accept"]
    status: Literal["final"]
    reason: None = None
    read: None = None


class _Override(_Record):
    action: Literal["override"]
    status: Literal["amended", "entered-in-error"]
    reason: _Reason
    read: None = None


class _ReadAction(_Record):
    action: Literal["read"]
    status: None = None
    reason: None = None
    read: _Read


_RECORD = TypeAdapter(Annotated[_Accept | _Override | _ReadAction, Field(discriminator="action")])


def check_record(rec: Any) -> str | None:
    """Why ``rec`` (a parsed log line) is not a usable review record, or None when it is.

    >>> check_record({"kind": "cds-review/1", "action": "accept"}).startswith("missing id, finding_id")
    True
    >>> check_record([1, 2])
    'not a JSON object'
    """
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("kind") != RECORD_KIND:
        return f"not a cds review record (kind is not {RECORD_KIND!r})"
    try:
        _RECORD.validate_python(rec)
    except ValidationError as exc:
        return _schema_reason(exc)
    return None


def _schema_reason(exc: ValidationError) -> str:
    missing: list[str] = []
    other: list[str] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in ("accept", "override", "read"):  # the union's tag
            loc = loc[1:]
        where = ".".join(loc)
        if err["type"] == "union_tag_not_found":
            missing.append("action")
        elif err["type"] == "union_tag_invalid":
            other.append("action: not one of 'accept', 'override', 'read'")
        elif err["type"] == "missing":
            missing.append(where)
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            other.append(f"{where}: should be a JSON object")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            other.append(f"{where}: {msg}" if where else msg)
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + other[:3]
    if len(other) > 3:
        parts.append(f"{len(other) - 3} more")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------- the store
class ReviewStore:
    """An append-only JSON Lines log of review actions (see the module docstring).

    Parameters
    ----------
    path
        The ``.jsonl`` file; created (with its folder) on the first write. Existing lines are read now,
        lines appended later (by anyone) on the next access.

    Attributes
    ----------
    problems : list of StoreProblem
        Lines that are not usable records (reported, skipped, never removed), in file order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ParameterError("store_path", f"{self.path} is a folder; give a .jsonl file path")
        self._lock = threading.RLock()
        self._log = AppendLog(self.path)
        self._actions: list[dict[str, Any]] = []
        self._problems: list[StoreProblem] = []
        self._lines_of: dict[str, int] = {}  # action id -> its line
        self._torn: StoreProblem | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._notified = 0  # _actions[:_notified] went to the listeners (or were there before any listener)
        self._notified_ids: set[str] = set()
        self.reload()

    # ------------------------------------------------------------------------------------ reading
    def reload(self) -> list[dict[str, Any]]:
        """Re-read the whole file. Returns the actions (every access already picks up appended lines)."""
        with self._lock:
            self._log.forget()
            self._actions, self._problems, self._torn, self._lines_of = [], [], None, {}
            self._sync()
            if not self._listeners:
                self._mark_announced()
            else:
                self._notified = 0  # poll() announces only the ids not announced before
            return list(self._actions)

    def _mark_announced(self) -> None:
        """Count every action taken in so far as announced (they were there before anyone listened)."""
        self._notified = len(self._actions)
        self._notified_ids.update(a["id"] for a in self._actions)

    def _sync(self) -> None:
        """Take in the lines appended since the last look (by this object or any other writer)."""
        with self._lock:
            new = self._log.read_new()
            if new.reset:
                self._actions, self._problems, self._notified, self._lines_of = [], [], 0, {}
            for line_no, raw in new.lines:
                if raw.strip():
                    self._take(line_no, raw)
            self._torn = None
            if new.torn is not None:
                self._torn = StoreProblem(str(self.path), new.torn[0], "cut-off line (no newline after it)", True)

    def _take(self, line_no: int, raw: bytes) -> None:
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._problems.append(StoreProblem(str(self.path), line_no, f"not valid JSON ({str(exc)[:120]})", False))
            return
        except RecursionError:
            self._problems.append(StoreProblem(str(self.path), line_no, "not valid JSON (nested too deeply)", False))
            return
        why = check_record(rec)
        if why is None and rec["id"] in self._lines_of:
            why = f"the same action id as line {self._lines_of[rec['id']]} (a copied line?)"
        if why is None:
            self._lines_of[rec["id"]] = line_no
            self._actions.append(rec)
            return
        fid = rec.get("finding_id") if isinstance(rec, dict) else None
        self._problems.append(StoreProblem(str(self.path), line_no, f"not a usable review record: {why}", False,
                                           fid if isinstance(fid, str) and fid else None))

    @property
    def problems(self) -> list[StoreProblem]:
        """Lines that are not usable records, in file order (a cut-off last line last)."""
        with self._lock:
            self._sync()
            return [*self._problems, *([self._torn] if self._torn else [])]

    def poll(self) -> list[dict[str, Any]]:
        """Pick up appended lines and call the ``on_change`` listeners for each action not yet announced.

        Returns those actions (other explorers' and this object's own), in file order.
        """
        with self._lock:
            self._sync()
            fresh = [a for a in self._actions[self._notified:] if a["id"] not in self._notified_ids]
            self._notified = len(self._actions)
            self._notified_ids.update(a["id"] for a in fresh)
            listeners = list(self._listeners)
        for rec in fresh:
            for cb in listeners:
                try:
                    cb(rec)
                except Exception:  # a listener's bug must not turn a saved action into an error
                    log.exception("review log %s: a listener failed on a new action", self.path.name)
        return fresh

    def actions(self, finding_id: str | None = None) -> list[dict[str, Any]]:
        """All actions in file order (optionally of one finding)."""
        with self._lock:
            self._sync()
            return [a for a in self._actions if finding_id is None or a["finding_id"] == finding_id]

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return len(self._actions)

    def latest_review(self, finding_id: str) -> dict[str, Any] | None:
        """The latest accept/override of a finding (the one the explorer shows), or None."""
        for a in reversed(self.actions(finding_id)):
            if a["action"] in ("accept", "override"):
                return a
        return None

    def status_of(self, finding_id: str) -> str:
        """``preliminary`` (never reviewed) or the status the latest review left it in."""
        a = self.latest_review(finding_id)
        return a["status"] if a else "preliminary"

    def reads(self, finding_id: str, reviewer: str) -> dict[str, dict[str, Any] | None]:
        """The latest ``pre-ai`` and ``post-ai`` reader-study reads of one reviewer on one finding."""
        out: dict[str, dict[str, Any] | None] = {"pre-ai": None, "post-ai": None}
        ref = _reviewer_ref(reviewer)["reference"]
        for a in self.actions(finding_id):
            if a["action"] == "read" and a["reviewer"]["reference"] == ref:
                out[a["read"]["phase"]] = a
        return out

    def reviews_frame(self) -> pd.DataFrame:
        """The latest accept/override per finding as a table (what :mod:`cds.review.worklist` reads)."""
        cols = ["finding_id", "patient_id", "study_uid", "action", "status", "reviewer", "recorded",
                "reason_code", "comment"]
        latest: dict[str, dict[str, Any]] = {}
        for a in self.actions():
            if a["action"] in ("accept", "override"):
                latest[a["finding_id"]] = a
        rows = []
        for fid, a in latest.items():
            f = a["finding"]
            code = a["reason"]["coding"][0]["code"] if a.get("reason") else None
            rows.append({"finding_id": fid, "patient_id": f["patient_id"], "study_uid": f["study_uid"],
                         "action": a["action"], "status": a["status"],
                         "reviewer": a["reviewer"]["reference"].split("/")[-1],
                         "recorded": a["recorded"], "reason_code": code, "comment": a.get("comment")})
        return pd.DataFrame(rows, columns=cols)

    def on_change(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(record)`` for every new action: each one this object writes, and those other
        writers appended, as :meth:`poll` (called after each write) picks them up."""
        with self._lock:
            if not self._listeners:
                self._sync()
                self._mark_announced()
            self._listeners.append(callback)

    # ------------------------------------------------------------------------------------ writing
    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` durably (or raise :class:`ReviewNotSavedError`), then announce the new actions."""
        try:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            why = check_record(json.loads(line))
        except ValueError as exc:  # NaN / inf in the finding
            why = str(exc)
        if why is not None:  # never write a line the reader would refuse
            raise ReviewNotSavedError(str(self.path), f"the finding cannot be recorded ({why})")
        with self._lock:
            self._log.append(line)
        try:
            self.poll()
        except ReviewStoreError as exc:  # saved; only re-reading failed (the next access tries again)
            log.warning("review log %s: the action was saved but re-reading the log failed: %s", self.path.name,
                        exc)
        return record

    def _base(self, action: str, finding: Finding | dict[str, Any], reviewer: str) -> dict[str, Any]:
        snap = finding_snapshot(finding)
        return {"kind": RECORD_KIND, "id": uuid.uuid4().hex, "action": action, "finding_id": snap["id"],
                "finding": snap, "status": None, "reviewer": _reviewer_ref(reviewer), "recorded": _now_iso(),
                "reason": None, "comment": None, "clinician_interpretation": None, "read": None}

    def accept(self, finding: Finding | dict[str, Any], reviewer: str, comment: str | None = None) -> dict[str, Any]:
        """Record that ``reviewer`` accepts the AI result: its Observation becomes ``final``."""
        rec = self._base("accept", finding, reviewer)
        rec.update(status=ACTION_STATUS["accept"], comment=_clean_comment(comment),
                   clinician_interpretation=rec["finding"].get("interpretation"))
        return self._append(rec)

    def override(self, finding: Finding | dict[str, Any], reviewer: str, reason: str, comment: str | None = None,
                 entered_in_error: bool = False, clinician_interpretation: str | None = None) -> dict[str, Any]:
        """Record that ``reviewer`` overrides the AI result with a coded ``reason`` (see OVERRIDE_REASONS).

        The Observation becomes ``amended``, or ``entered-in-error`` with ``entered_in_error=True``
        (the AI result must not be used at all, e.g. wrong patient or unusable image). Reason ``other``
        needs a comment.
        """
        if reason not in OVERRIDE_REASONS:
            raise ParameterError("reason", f"{reason!r} is not an override reason; use one of "
                                           f"{', '.join(OVERRIDE_REASONS)} ({OVERRIDE_REASON_SYSTEM})")
        comment = _clean_comment(comment)
        if reason == "other" and not comment:
            raise ParameterError("comment", "override reason 'other' needs a comment saying why")
        if clinician_interpretation not in (None, "positive", "negative"):
            raise ParameterError("clinician_interpretation", f"{clinician_interpretation!r}: use 'positive' or "
                                                               "'negative'")
        rec = self._base("override", finding, reviewer)
        rec.update(status=ACTION_STATUS["entered-in-error" if entered_in_error else "override"],
                   reason={"coding": [{"system": OVERRIDE_REASON_SYSTEM, "code": reason,
                                       "display": OVERRIDE_REASONS[reason]}]},
                   comment=comment,
                   clinician_interpretation=clinician_interpretation or _IMPLIED_TRUTH.get(reason))
        return self._append(rec)

    def record_read(self, finding: Finding | dict[str, Any], reviewer: str, phase: str, finding_present: bool,
                    confidence: int, comment: str | None = None) -> dict[str, Any]:
        """Record a reader-study read: ``phase`` ``pre-ai`` (before the AI is shown) or ``post-ai``.

        A ``post-ai`` read needs this reviewer's ``pre-ai`` read of the same finding first, and a
        ``pre-ai`` read is refused once the reviewer has seen the AI (a post-AI read exists).
        """
        if phase not in ("pre-ai", "post-ai"):
            raise ParameterError("phase", f"{phase!r}: use 'pre-ai' or 'post-ai'")
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 100:
            raise ParameterError("confidence", f"{confidence!r}: give an integer from 0 to 100")
        if int(confidence) != confidence:
            raise ParameterError("confidence", f"{confidence!r}: give an integer from 0 to 100")
        snap = finding_snapshot(finding)
        prior = self.reads(snap["id"], reviewer)
        if phase == "post-ai" and prior["pre-ai"] is None:
            raise ParameterError("phase", "a post-AI read needs the reader's pre-AI read of this case first")
        if phase == "pre-ai" and prior["post-ai"] is not None:
            raise ParameterError("phase", "the reader has already seen the AI result of this case; a pre-AI read "
                                          "is no longer possible")
        rec = self._base("read", finding, reviewer)
        rec.update(comment=_clean_comment(comment),
                   read={"phase": phase, "finding_present": bool(finding_present), "confidence": int(confidence)})
        return self._append(rec)


def _reviewer_ref(reviewer: str) -> dict[str, str]:
    rid = str(reviewer or "").strip()
    if not _FHIR_ID.match(rid):
        raise ParameterError("reviewer", f"{reviewer!r} is not a usable reviewer id (1-64 letters, digits, '-' "
                                         "or '.'; it becomes Practitioner/<id>)")
    return {"reference": f"Practitioner/{rid}"}


def _clean_comment(comment: str | None) -> str | None:
    if comment is None:
        return None
    text = str(comment).strip()
    return text or None


# ---------------------------------------------------------------------------------------- FHIR
def _snapshot_finding(snap: dict[str, Any]) -> Finding:
    """The Finding a snapshot was taken of (as far as the snapshot holds it)."""
    keys = set(Finding.__dataclass_fields__)
    d = {k: v for k, v in snap.items() if k in keys and v is not None}
    return Finding.from_dict(d)


def _model(snap: dict[str, Any], cards: Mapping[str, Any] | None) -> ModelInfo:
    mid, ver = str(snap["model_id"]), str(snap["model_version"])
    if cards and mid in cards:
        return model_info(mid, ver, cards)
    return ModelInfo(mid, ver)


def _observation(snap: dict[str, Any], status: str, notes: list[dict[str, Any]],
                 cards: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reviewed AI Observation: the results writer's Observation of the Finding, with the review's status.

    Same builder and id (:func:`cds.fhir.ids.observation_id` of the Finding id) as the report's
    ``results.fhir.json``, so the PUT replaces the AI result it reviews.
    """
    f = _snapshot_finding(snap)
    run = RunContext(_model(snap, cards), {"reference": f"Patient/{f.patient_id}"},
                     study_reference(f.study_uid, f.imaging_study_id), fhir_datetime(f.study_started),
                     str(notes[-1]["time"]), f.study_body_site, in_bundle=False)
    obs = observation(f, run, status=status, notes=notes)
    if f.id != snap["id"]:  # an older log line without the location: keep the id it was logged under
        obs["id"] = observation_id(str(snap["id"]))
        obs["identifier"] = [{"system": FINDING_ID_SYSTEM, "value": str(snap["id"])}]
    return obs


def _read_observation(a: dict[str, Any]) -> dict[str, Any]:
    snap, read = a["finding"], a["read"]
    obs = {
        "resourceType": "Observation", "id": read_observation_id(str(a["id"])), "status": "final",
        "category": [{"coding": [dict(SURVEY)]}],
        "code": {"coding": [coding(snap["code_system"], snap["code"], snap["display"])],
                 "text": f"Reader-study read of {snap['display']} ({read['phase']})"},
        "subject": {"reference": f"Patient/{snap['patient_id']}"},
        "effectiveDateTime": a["recorded"], "performer": [dict(a["reviewer"])],
        "valueBoolean": bool(read["finding_present"]),
        "component": [{"code": {"text": "reader confidence (0-100)"},
                       "valueQuantity": {"value": int(read["confidence"]), "unit": "%", "system": UCUM, "code": "%"}}],
        "focus": [{"reference": f"Observation/{observation_id(str(a['finding_id']))}"}],
        "note": [{"text": f"phase: {read['phase']}"}],
    }
    if a.get("comment"):
        obs["note"].append({"text": a["comment"]})
    return obs


def to_fhir(actions: ReviewStore | Iterable[dict[str, Any]], cards: Mapping[str, Any] | None = None
            ) -> list[dict[str, Any]]:
    """FHIR R4 resources for a review log: Practitioners, the reviewed Observations and Provenances.

    Each reviewed AI Observation appears once, built by the results writer's Observation builder
    (:func:`cds.fhir.resources.observation`) with the id of the AI Observation it reviews
    (:func:`cds.fhir.ids.observation_id`), the status of its latest accept/override and a note per
    review. ``cards`` (model id -> Bundle or card dict, as for the writer) adds what only the card
    knows (class displays, the card's body site). Every action (earlier ones too) gets its own
    Provenance (:func:`cds.fhir.resources.review_provenance`) targeting ``Observation/<that id>``,
    with the Practitioner as ``verifier`` (``author`` for reader-study reads, which become
    Observations of their own that ``focus`` on the AI Observation).
    """
    items = actions.actions() if isinstance(actions, ReviewStore) else list(actions)
    practitioners: dict[str, dict[str, Any]] = {}
    observations: dict[str, dict[str, Any]] = {}
    notes: dict[str, list[dict[str, Any]]] = {}
    out_prov: list[dict[str, Any]] = []
    reads: list[dict[str, Any]] = []
    for a in items:
        ref = a["reviewer"]["reference"]
        pid = ref.split("/", 1)[1]
        practitioners.setdefault(pid, {"resourceType": "Practitioner", "id": pid,
                                       "identifier": [{"system": REVIEWER_ID_SYSTEM, "value": pid}]})
        ai_ref = f"Observation/{observation_id(str(a['finding_id']))}"
        if a["action"] == "read":
            robs = _read_observation(a)
            reads.append(robs)
            out_prov.append(review_provenance(a, f"Observation/{robs['id']}", source=ai_ref))
            continue
        fid = a["finding_id"]
        text = f"{a['action']} by {pid} at {a['recorded']}"
        if a.get("reason"):
            text += f": {a['reason']['coding'][0]['code']}"
        if a.get("comment"):
            text += f" ({a['comment']})"
        notes.setdefault(fid, []).append({"authorReference": dict(a["reviewer"]), "time": a["recorded"], "text": text})
        observations[fid] = _observation(a["finding"], a["status"], notes[fid], cards)
        out_prov.append(review_provenance(a, ai_ref))
    return [*practitioners.values(), *observations.values(), *reads, *out_prov]


def to_fhir_bundle(actions: ReviewStore | Iterable[dict[str, Any]], validate: bool = True,
                   cards: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``collection`` Bundle of :func:`to_fhir`; validated as R4 (R4B models) unless ``validate=False``."""
    resources = to_fhir(actions, cards)
    if validate:
        validate_fhir(resources)
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:cds:{r['resourceType']}/{r['id']}", "resource": r} for r in resources]}


def validate_fhir(resources: Iterable[dict[str, Any]]) -> None:
    """Validate each resource with ``fhir.resources.R4B``; raise :class:`ReviewStoreError` naming the first bad one."""
    from cds.sources.fhir_validate import validate_resource

    for r in resources:
        ok, msg = validate_resource(r)
        if not ok:
            raise ReviewStoreError(f"{r.get('resourceType')}/{r.get('id')}: not valid FHIR R4: {msg}")
