"""The reading worklist: a cohort's imaging studies ordered by AI urgency, with filters (pandas in, pandas out).

Each study gets an AI state from its most urgent Finding, or, when no model answered for it, from
the reason (the most serious :class:`cds.finding.Failure` state):

==================== ================================================================ ====
state                meaning                                                          rank
==================== ================================================================ ====
positive             score at or above the model's threshold, outside the band        0
indeterminate        score inside the model's indeterminate band ("AI indeterminate") 1
measured             a measurement without a threshold (e.g. an ejection fraction)    2
negative             score below the threshold, outside the band                      3
record-mismatch      the image is not the one its ImagingStudy describes: no answer   4
input-rejected       the pixels failed the input quality gate: no answer              5
outside-intended-use the study is outside the model's intended use: no answer         6
no-ai                no AI result (not run, failed, not eligible)                     7
==================== ================================================================ ====

The first four are :attr:`cds.finding.Finding.interpretation` words (``indeterminate`` is FHIR's
``IND``); :data:`STATE_LABELS` names every state on screen. A study with no Finding carries the
reasons in ``failure``; the three refusal states never get a score, so they are never ranked as a
positive or negative call.

Inside a state, studies are ordered by margin (score minus threshold; largest first, so the most
certain positives lead and the negatives closest to the threshold come first), then by how long
they have waited (longest first). In reader-study mode (``blind=True``) the AI is not used at all:
the order is by waiting time only.

>>> import pandas as pd
>>> imaging = pd.DataFrame({"patient_id": ["a", "b", "c"], "study_uid": ["1", "2", "3"],
...     "imaging_study_id": ["s1", "s2", "s3"], "modality": ["CR", "CR", "CT"],
...     "description": ["", "", ""], "started": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"], utc=True)})
>>> findings = pd.DataFrame({"id": ["f1", "f2"], "patient_id": ["a", "b"], "study_uid": ["1", "2"],
...     "model_id": ["m", "m"], "model_version": ["1", "1"], "code": ["x", "x"], "display": ["X", "X"],
...     "probability": [0.2, 0.9], "value": [None, None], "unit": [None, None], "threshold": [0.5, 0.5],
...     "indeterminate_low": [0.4, 0.4], "indeterminate_high": [0.6, 0.6]})
>>> from cds.finding import Failure
>>> failed = [Failure("c", "3", "m", "ImageReadError", "a.dcm: truncated")]
>>> wl = build_worklist(imaging, findings, now="2020-01-04", failures=failed)
>>> wl[["study_uid", "ai_state", "waited_text", "failure"]].values.tolist()
[['2', 'positive', '2 d', ''], ['1', 'negative', '3 d', ''], ['3', 'no-ai', '1 d', 'm: a.dcm: truncated']]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ParameterError
from cds.finding import FAILURE_LABELS, Failure, Finding, interpret

__all__ = ["AI_STATES", "REFUSAL_STATES", "STATE_LABELS", "failure_state", "REVIEW_STATES", "findings_frame", "ai_state", "state_and_margin",
           "finding_state", "finding_urgency", "failure_text", "build_worklist", "filter_worklist", "format_wait",
           "worklist_for_cohort"]

#: AI states, most urgent first: the Finding interpretations, the refusals (no answer, and why), ``no-ai``.
AI_STATES = ("positive", "indeterminate", "measured", "negative", "record-mismatch", "input-rejected",
             "outside-intended-use", "no-ai")
#: The states of a study no model answered for because it must not (a :class:`Failure` state other than failed).
REFUSAL_STATES = ("record-mismatch", "input-rejected", "outside-intended-use")
#: How each AI state is named on screen (worklist, filters, badges, timelines, static HTML).
STATE_LABELS = {"positive": "AI positive", "indeterminate": "AI indeterminate", "measured": "AI measurement",
                "negative": "AI negative", **{s: FAILURE_LABELS[s] for s in REFUSAL_STATES}, "no-ai": "no AI result"}
_RANK = {s: i for i, s in enumerate(AI_STATES)}
_THRESHOLDED = ("positive", "indeterminate", "negative")
#: Study-level review states: none of its findings reviewed, all accepted, any overridden, some reviewed.
REVIEW_STATES = ("unreviewed", "accepted", "overridden", "partly reviewed", "no AI result")

FINDING_COLUMNS = ["id", "patient_id", "study_uid", "model_id", "model_version", "code", "display", "probability",
                   "value", "unit", "threshold", "indeterminate_low", "indeterminate_high"]
WORKLIST_COLUMNS = ["patient_id", "study_uid", "imaging_study_id", "modality", "description", "started", "waited",
                    "waited_text", "ai_state", "ai_rank", "margin", "score", "threshold", "finding", "model_id",
                    "finding_id", "n_findings", "findings", "review_status", "failure"]


def _missing(v: Any) -> bool:
    return v is None or bool(pd.isna(v))


def findings_frame(findings: Iterable[Any]) -> pd.DataFrame:
    """Findings (``cds.finding.Finding`` objects or their dicts) as the table :func:`build_worklist` reads."""
    rows = []
    for f in findings:
        d = f.to_dict() if hasattr(f, "to_dict") else dict(f)
        band = d.get("indeterminate") or (None, None)
        rows.append({**{k: d.get(k) for k in FINDING_COLUMNS[:-2]},
                     "indeterminate_low": band[0], "indeterminate_high": band[1]})
        if rows[-1]["id"] is None:
            rows[-1]["id"] = Finding.from_dict(d).id
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def ai_state(score: float | None, threshold: float | None, low: float | None = None,
             high: float | None = None) -> str:
    """``positive`` / ``indeterminate`` / ``measured`` / ``negative`` / ``no-ai`` for one score.

    :func:`cds.finding.interpret` of the score (missing values may be NaN, as in a table), and
    ``no-ai`` without a score.

    >>> ai_state(0.55, 0.5, 0.4, 0.6), ai_state(0.7, 0.5, 0.4, 0.6), ai_state(None, None)
    ('indeterminate', 'positive', 'no-ai')
    >>> ai_state(42.0, float("nan"))
    'measured'
    """
    if _missing(score):
        return "no-ai"
    band = None if _missing(low) or _missing(high) else (float(low), float(high))  # type: ignore[arg-type]
    return interpret(float(score), None if _missing(threshold) else float(threshold), band)  # type: ignore[arg-type]


def state_and_margin(score: float | None, threshold: float | None, low: float | None = None,
                     high: float | None = None) -> tuple[str, float]:
    """:func:`ai_state` and the margin (score minus threshold; NaN for ``measured`` and ``no-ai``).

    >>> state, margin = state_and_margin(0.45, 0.5, 0.4, 0.6)
    >>> state, round(margin, 3)
    ('indeterminate', -0.05)
    >>> state_and_margin(55.0, None)
    ('measured', nan)
    """
    state = ai_state(score, threshold, low, high)
    margin = float(score) - float(threshold) if state in _THRESHOLDED else np.nan  # type: ignore[arg-type]
    return state, margin


def _urgency(state: str, margin: float) -> tuple[int, float]:
    return _RANK[state], -(-np.inf if pd.isna(margin) else margin)


def finding_state(finding: Finding) -> tuple[str, float]:
    """:func:`state_and_margin` of one Finding (its score against its threshold and band).

    >>> finding_state(Finding("p", "1", "s", "c", "d", "m", "1", probability=0.9, threshold=0.5))
    ('positive', 0.4)
    """
    band = finding.indeterminate or (None, None)
    return state_and_margin(finding.score, finding.threshold, band[0], band[1])


def finding_urgency(finding: Finding) -> tuple[int, float]:
    """Sort key of one Finding, most urgent first: state rank, then the larger margin (the worklist's order).

    >>> hi = Finding("p", "1", "s", "c", "d", "m", "1", probability=0.9, threshold=0.5)
    >>> band = Finding("p", "1", "s", "c", "d", "m", "1", probability=0.55, threshold=0.5, indeterminate=(0.4, 0.6))
    >>> sorted([band, hi], key=finding_urgency) == [hi, band]
    True
    """
    return _urgency(*finding_state(finding))


def failure_text(failure: Failure) -> str:
    """The reason a study has no AI result from one model, as shown to a user: ``model: message``, with
    the kind of refusal named when the model must not answer (not when it failed).

    >>> failure_text(Failure("p1", "1.2.3", "pneumonia", "ImageReadError", "a.dcm: truncated"))
    'pneumonia: a.dcm: truncated'
    >>> failure_text(Failure("p1", "1.2.3", "m", "RecordMismatchError", "a.dcm: PatientID differs", state="record-mismatch"))
    'm (image does not match record): a.dcm: PatientID differs'
    """
    if failure.state in REFUSAL_STATES and FAILURE_LABELS[failure.state] not in failure.message:
        return f"{failure.model_id} ({FAILURE_LABELS[failure.state]}): {failure.message}"
    return f"{failure.model_id}: {failure.message}"


def failure_state(failures: Iterable[Failure]) -> str:
    """The AI state of a study no model answered for: its most serious refusal, else ``no-ai``.

    >>> failure_state([Failure("p", "1", "m", "E", "x"), Failure("p", "1", "n", "E", "y", state="outside-intended-use")])
    'outside-intended-use'
    >>> failure_state([])
    'no-ai'
    """
    states = {f.state for f in failures}
    return next((s for s in REFUSAL_STATES if s in states), "no-ai")


def format_wait(delta: pd.Timedelta | None) -> str:
    """A short waiting time: ``45 min``, ``5 h``, ``3 d 4 h``, ``2 y 10 d``; empty when unknown.

    >>> format_wait(pd.Timedelta(hours=76)), format_wait(pd.Timedelta(minutes=5)), format_wait(None)
    ('3 d 4 h', '5 min', '')
    """
    if delta is None or pd.isna(delta):
        return ""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 0:
        return "in future"
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 24:
        return f"{hours} h"
    days, hours = divmod(hours, 24)
    if days < 365:
        return f"{days} d {hours} h" if hours else f"{days} d"
    years, days = divmod(days, 365)
    return f"{years} y {days} d" if days else f"{years} y"


def _review_status(statuses: list[str | None]) -> str:
    if not statuses:
        return "no AI result"
    reviewed = [s for s in statuses if s]
    if not reviewed:
        return "unreviewed"
    if len(reviewed) < len(statuses):
        return "partly reviewed"
    return "overridden" if any(s != "final" for s in reviewed) else "accepted"


def build_worklist(imaging: pd.DataFrame, findings: pd.DataFrame | Iterable[Any] | None = None,
                   reviews: pd.DataFrame | None = None, now: Any = None, blind: bool = False,
                   failures: Iterable[Failure] = ()) -> pd.DataFrame:
    """One row per imaging study, most urgent first (see the module docstring for the order).

    Parameters
    ----------
    imaging
        ``cohort.imaging`` (one row per series; series of one study are merged).
    findings
        :func:`findings_frame` output, or Findings / their dicts.
    reviews
        ``ReviewStore.reviews_frame()``: latest review per finding (columns ``finding_id``, ``status``).
    now
        The time waits are measured to (default: the latest study start, so results are
        deterministic; pass the cohort's reference date for "as of" views).
    blind
        Reader-study mode: order by waiting time only (the AI must not steer the reader).
    failures
        :class:`cds.finding.Failure` records: a study's ``failure`` column says why its models gave no
        Finding (:func:`failure_text`, ``; ``-joined; empty when none failed).
    """
    need = {"patient_id", "study_uid", "modality", "started"}
    missing = need - set(imaging.columns)
    if missing:
        raise ParameterError("imaging", f"needs columns {sorted(need)}; missing {sorted(missing)}")
    if findings is None:
        fdf = pd.DataFrame(columns=FINDING_COLUMNS)
    elif isinstance(findings, pd.DataFrame):
        fdf = findings
    else:
        fdf = findings_frame(findings)
    started = pd.to_datetime(imaging["started"], utc=True)
    if now is None:
        now_ts = started.max() if len(started) and not pd.isna(started.max()) else pd.Timestamp.now(tz="UTC")
    else:
        now_ts = pd.Timestamp(now)
        now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")

    img = imaging.assign(started=started)
    agg = {"patient_id": "first", "modality": lambda s: "/".join(sorted({str(m) for m in s if isinstance(m, str)})),
           "started": "min"}
    for col in ("imaging_study_id", "description"):
        if col in img.columns:
            agg[col] = "first"
    studies = img.groupby("study_uid", sort=False, dropna=False).agg(agg).reset_index()
    for col in ("imaging_study_id", "description"):
        if col not in studies.columns:
            studies[col] = None

    status_of: dict[str, str] = {}
    if reviews is not None and len(reviews):
        status_of = dict(zip(reviews["finding_id"], reviews["status"], strict=False))
    failed: dict[str, list[str]] = {}
    failed_records: dict[str, list[Failure]] = {}
    for fl in failures:
        if fl.study_uid is not None:
            failed.setdefault(str(fl.study_uid), []).append(failure_text(fl))
            failed_records.setdefault(str(fl.study_uid), []).append(fl)

    best: dict[str, dict[str, Any]] = {}
    per_study: dict[str, list[dict[str, Any]]] = {}
    for r in fdf.to_dict("records"):
        score = r.get("probability")
        if score is None or pd.isna(score):
            score = r.get("value")
        state, margin = state_and_margin(score, r.get("threshold"), r.get("indeterminate_low"),
                                         r.get("indeterminate_high"))
        item = {**r, "score": score, "state": state, "margin": margin, "review": status_of.get(r["id"])}
        per_study.setdefault(str(r["study_uid"]), []).append(item)
        cur = best.get(str(r["study_uid"]))
        if cur is None or _urgency(state, margin) < _urgency(cur["state"], cur["margin"]):
            best[str(r["study_uid"])] = item

    rows = []
    for s in studies.to_dict("records"):
        uid = str(s["study_uid"])
        b = best.get(uid)
        items = per_study.get(uid, [])
        waited = now_ts - s["started"] if not pd.isna(s["started"]) else pd.NaT
        state = b["state"] if b else failure_state(failed_records.get(uid, []))
        rows.append({
            "patient_id": s["patient_id"], "study_uid": uid, "imaging_study_id": s["imaging_study_id"],
            "modality": s["modality"], "description": s["description"], "started": s["started"],
            "waited": waited, "waited_text": format_wait(waited),
            "ai_state": state, "ai_rank": _RANK[state],
            "margin": b["margin"] if b else np.nan, "score": b["score"] if b else np.nan,
            "threshold": b.get("threshold") if b else np.nan, "finding": b.get("display") if b else None,
            "model_id": b.get("model_id") if b else None, "finding_id": b.get("id") if b else None,
            "n_findings": len(items), "findings": sorted({str(i.get("display")) for i in items}),
            "review_status": _review_status([i["review"] for i in items]),
            "failure": "; ".join(dict.fromkeys(failed.get(uid, []))),
        })
    wl = pd.DataFrame(rows, columns=WORKLIST_COLUMNS)
    if not len(wl):
        return wl
    wl["waited"] = pd.to_timedelta(wl["waited"])
    wait_key = wl["waited"].fillna(pd.Timedelta(0))
    if blind:
        order = np.lexsort((wl["study_uid"].to_numpy(), -wait_key.dt.total_seconds().to_numpy()))
    else:
        margin_key = -wl["margin"].fillna(-np.inf).to_numpy(dtype=float)
        order = np.lexsort((wl["study_uid"].to_numpy(), -wait_key.dt.total_seconds().to_numpy(), margin_key,
                            wl["ai_rank"].to_numpy()))
    return wl.iloc[order].reset_index(drop=True)


def worklist_for_cohort(cohort: Any, findings: pd.DataFrame | Iterable[Any] | None = None,
                        reviews: pd.DataFrame | None = None, now: Any = None, blind: bool = False,
                        failures: Iterable[Failure] = ()) -> pd.DataFrame:
    """:func:`build_worklist` for a :class:`cds.sources.cohort.Cohort`; ``now`` defaults to its reference date."""
    when = now if now is not None else (cohort.reference_date or None)
    return build_worklist(cohort.imaging, findings, reviews, now=when, blind=blind, failures=failures)


def filter_worklist(worklist: pd.DataFrame, modality: str | Sequence[str] | None = None,
                    finding: str | Sequence[str] | None = None, review_status: str | Sequence[str] | None = None,
                    ai_state: str | Sequence[str] | None = None, patient_id: str | None = None) -> pd.DataFrame:
    """Rows matching every given filter (``None`` or ``"all"`` = no filter); the order is kept.

    ``modality`` matches any modality of a study; ``finding`` matches the display of any of its findings.

    >>> wl = pd.DataFrame({"modality": ["CR", "CT", "CR/DX"], "findings": [["A"], [], ["B"]],
    ...                    "review_status": ["unreviewed", "no AI result", "accepted"],
    ...                    "ai_state": ["positive", "no-ai", "negative"], "patient_id": ["a", "b", "c"]})
    >>> filter_worklist(wl, modality="DX").patient_id.tolist()
    ['c']
    >>> filter_worklist(wl, finding="A", review_status=["unreviewed", "accepted"]).patient_id.tolist()
    ['a']
    """
    def _set(v: str | Sequence[str] | None, name: str, allowed: Sequence[str] | None = None) -> set[str] | None:
        if v is None or v == "all":
            return None
        vals = {v} if isinstance(v, str) else set(v)
        if allowed is not None and vals - set(allowed):
            raise ParameterError(name, f"unknown value(s) {sorted(vals - set(allowed))}; use {', '.join(allowed)}")
        return vals

    mask = np.ones(len(worklist), dtype=bool)
    mods = _set(modality, "modality")
    if mods is not None:
        mask &= worklist["modality"].map(lambda m: bool(set(str(m).split("/")) & mods)).to_numpy(dtype=bool)
    fnd = _set(finding, "finding")
    if fnd is not None:
        mask &= worklist["findings"].map(lambda fs: bool(set(fs) & fnd)).to_numpy(dtype=bool)
    rev = _set(review_status, "review_status", REVIEW_STATES)
    if rev is not None:
        mask &= worklist["review_status"].isin(rev).to_numpy()
    st = _set(ai_state, "ai_state", AI_STATES)
    if st is not None:
        mask &= worklist["ai_state"].isin(st).to_numpy()
    if patient_id:
        mask &= (worklist["patient_id"] == patient_id).to_numpy()
    return worklist[mask]
