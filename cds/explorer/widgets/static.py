"""Static HTML pieces of the case explorer: patient header, lab trends, imaging timeline, findings panel.

Pure functions (pandas/numpy in, an HTML string out, no ipywidgets), used twice: inside the live
widgets (``ipywidgets.HTML``) and as the static fallback that papermill outputs, nbconvert exports and
``_repr_html_`` show where no widget frontend runs. Charts are hand-written inline SVG: no JavaScript,
no CDN, a few milliseconds per patient. Colours are classes of :data:`STYLE`, whose values are
JupyterLab theme variables (:mod:`cds.explorer.widgets.theme`), so light and dark themes both read.

>>> import pandas as pd
>>> obs = pd.DataFrame({"code": ["1988-5", "1988-5"], "display": ["CRP", "CRP"], "value": [6.0, 42.5],
...     "unit": ["mg/L", "mg/L"], "time": pd.to_datetime(["2020-04-01", "2020-04-03"], utc=True),
...     "category": ["laboratory", "laboratory"], "value_string": [None, None], "comparator": [None, None]})
>>> "42.5 mg/L" in trends_html(obs, [])
True
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cds.explorer.widgets.theme import NON_ANSWERS, STATE_ICONS, theme_css
from cds.finding import Failure
from cds.review.worklist import STATE_LABELS, failure_text

__all__ = [
    "STYLE",
    "esc",
    "error_html",
    "image_html",
    "patient_header_html",
    "latest_results",
    "trends_html",
    "timeline_html",
    "finding_card_html",
    "findings_html",
    "markdown_html",
    "worklist_html",
    "STATE_LABELS",
    "StaticFallback",
    "snapshot_html",
    "badge_html",
    "state_label",
    "WORKLIST_COLUMNS",
    "worklist_columns",
    "worklist_cells",
]

TREND_CATEGORIES = ("laboratory", "vital-signs")
#: On-screen names of the non-answer states, used until :data:`cds.review.worklist.STATE_LABELS` has them.
_LABELS_FALLBACK = {"record-mismatch": "image does not match record", "input-rejected": "input rejected (quality)",
                    "outside-intended-use": "outside intended use"}

#: The explorer's stylesheet: JupyterLab theme variables with light fallbacks (see :mod:`.theme`).
STYLE = f"<style>\n{theme_css()}\n</style>"
#: Hides static snapshots on any page where a live cds widget has rendered (CSS :has, no JavaScript).
SNAPSHOT_STYLE = "<style>body:has(.cds-live) .cds-snapshot {display: none}</style>"


def esc(value: Any) -> str:
    """HTML-escaped text; missing values become an empty string.

    >>> esc("<b>"), esc(None), esc(float("nan"))
    ('&lt;b&gt;', '', '')
    """
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return html.escape(str(value))


def error_html(text: Any, tag: str = "span", css_class: str = "cds-error") -> str:
    """``text`` (escaped) in the one colour every explorer message about a problem uses.

    >>> error_html("Not saved: <x>")
    '<span class="cds-error" role="alert">Not saved: &lt;x&gt;</span>'
    """
    cls = css_class if "cds-error" in css_class.split() else f"cds-error {css_class}"
    return f'<{tag} class="{cls}" role="alert">{esc(text)}</{tag}>'


def state_label(state: str) -> str:
    """The on-screen name of an AI state.

    >>> state_label("positive"), state_label("outside-intended-use")
    ('AI positive', 'outside intended use')
    """
    return STATE_LABELS.get(state) or _LABELS_FALLBACK.get(state, state)


def badge_html(state: str) -> str:
    """A status badge: icon and label on a tint of the state's theme colour (never colour alone).

    >>> badge_html("record-mismatch")
    '<span class="cds-badge cds-state-record-mismatch cds-badge-nonanswer"><span class="cds-icon" aria-hidden="true">≠</span>image does not match record</span>'
    """
    extra = " cds-badge-nonanswer" if state in NON_ANSWERS else ""
    return (f'<span class="cds-badge cds-state-{esc(state)}{extra}"><span class="cds-icon" aria-hidden="true">'
            f"{STATE_ICONS.get(state, '·')}</span>{esc(state_label(state))}</span>")


_badge = badge_html


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{float(v):.{digits}g}" if abs(float(v)) < 1000 else f"{float(v):.0f}"


def _date(t: Any) -> str:
    if t is None or pd.isna(t):
        return ""
    return pd.Timestamp(t).strftime("%Y-%m-%d")


def image_html(png: bytes | None, alt: str = "image", max_width: int = 512) -> str:
    """An ``<img>`` with the PNG inlined as a data URL (works in any exported HTML)."""
    if not png:
        return '<p class="cds-muted">(no image)</p>'
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<img class="cds-image" alt="{esc(alt)}" style="max-width:{max_width}px;width:100%" '
            f'src="data:image/png;base64,{b64}"/>')


# ---------------------------------------------------------------------------------------- header
def latest_results(observations: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The latest numeric result of each lab / vital-sign code, most frequently measured first."""
    cols = ["code", "display", "value", "unit", "time", "comparator", "n"]
    if observations is None or not len(observations):
        return pd.DataFrame(columns=cols)
    obs = observations[observations["category"].isin(TREND_CATEGORIES) & observations["value"].notna()]
    if not len(obs):
        return pd.DataFrame(columns=cols)
    obs = obs.sort_values("time", kind="stable")
    counts = obs.groupby("code").size().rename("n")
    last = obs.groupby("code").tail(1).set_index("code").join(counts).reset_index()
    last = last.sort_values(["n", "display"], ascending=[False, True], kind="stable")
    return last[cols].head(n).reset_index(drop=True)


def patient_header_html(record: Any, reference_date: str = "", n_studies: int | None = None,
                        max_items: int = 6) -> str:
    """Patient id, sex, age, key (active) conditions, active medications and latest results.

    ``record`` is a :class:`cds.sources.cohort.PatientRecord`.
    """
    p = record.patient
    age = p.get("age_years")
    age_txt = (f"{float(age):.0f} y" + (f" (at {esc(reference_date)})" if reference_date else "")
               if age is not None and not pd.isna(age) else "unknown (no birth date in the record)")
    sex = esc(p.get("sex")) or "unknown"
    dead = " · <b>deceased</b> " + esc(_date(p.get("deceased_date"))) if bool(p.get("deceased")) else ""
    name = f" · {esc(p.get('name'))}" if esc(p.get("name")) else ""
    cond = record.conditions
    if len(cond):
        active = cond[(cond["clinical_status"].fillna("active") == "active") & cond["abatement"].isna()]
        active = active.sort_values("onset", ascending=False, kind="stable", na_position="last")
        conds = list(dict.fromkeys(active["display"].dropna().astype(str)))
    else:
        conds = []
    meds = record.medications
    if len(meds):
        m = meds[meds["status"] == "active"].sort_values("authored_on", ascending=False, kind="stable")
        med_names = list(dict.fromkeys(m["display"].dropna().astype(str)))
    else:
        med_names = []

    def _list(items: list[str], none: str) -> str:
        if not items:
            return f'<span class="cds-muted">{none}</span>'
        more = f' <span class="cds-muted">(+{len(items) - max_items} more)</span>' if len(items) > max_items else ""
        return "; ".join(esc(i) for i in items[:max_items]) + more

    latest = latest_results(record.observations)
    rows = "".join(
        f'<tr><td>{esc(r.display)}</td><td class="cds-lab-value"><b>{esc(r.comparator or "")}{_num(r.value, 4)}</b> '
        f"{esc(r.unit)}</td><td>{_date(r.time)}</td></tr>"
        for r in latest.itertuples())
    labs = (f"<table><tr><th>latest result</th><th>value</th><th>date</th></tr>{rows}</table>" if rows
            else '<span class="cds-muted">no lab or vital-sign results</span>')
    studies = f" · {n_studies} imaging stud{'y' if n_studies == 1 else 'ies'}" if n_studies is not None else ""
    return (f'<div class="cds-box cds-header"><h3>Patient {esc(record.patient_id)}{name}</h3>'
            '<div style="display:flex;flex-wrap:wrap;gap:8px 24px"><div style="flex:1 1 360px">'
            f'<div><span class="cds-sex">sex: <b>{sex}</b></span> · age: <b>{age_txt}</b>{dead}{studies}</div>'
            f"<div>Key conditions: {_list(conds, 'none recorded as active')}</div>"
            f"<div>Active medications: {_list(med_names, 'none recorded as active')}</div></div>"
            f'<div style="flex:1 1 480px">{labs}</div></div></div>')


# ---------------------------------------------------------------------------------------- trends
def _xscale(t0: pd.Timestamp, t1: pd.Timestamp, x0: float, x1: float) -> Any:
    span = max((t1 - t0).total_seconds(), 1.0)
    return lambda t: x0 + (pd.Timestamp(t) - t0).total_seconds() / span * (x1 - x0)


def _time_range(times: Iterable[Any]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    ts = [pd.Timestamp(t) for t in times if t is not None and not pd.isna(t)]
    if not ts:
        return None
    t0, t1 = min(ts), max(ts)
    if (t1 - t0) < pd.Timedelta(days=1):
        t0, t1 = t0 - pd.Timedelta(hours=12), t1 + pd.Timedelta(hours=12)
    pad = (t1 - t0) * 0.04
    return t0 - pad, t1 + pad


def trends_html(observations: pd.DataFrame, imaging_times: Sequence[Any], max_panels: int = 6,
                width: int = 300, height: int = 96) -> str:
    """Small-multiple SVG line charts of the most-measured lab / vital-sign codes.

    Every panel shares one time axis (the patient's observations and studies); dashed vertical lines
    mark the imaging dates. Each point has a tooltip with its value, unit and date.
    """
    latest = latest_results(observations, max_panels)
    if not len(latest):
        return '<div class="cds-box cds-trends-empty"><span class="cds-muted">No lab or vital-sign trends.</span></div>'
    obs = observations[observations["code"].isin(latest["code"]) & observations["value"].notna()]
    rng = _time_range([*obs["time"], *imaging_times])
    assert rng is not None
    t0, t1 = rng
    x0, x1, ytop, ybot = 34.0, width - 8.0, 24.0, height - 16.0
    sx = _xscale(t0, t1, x0, x1)
    panels = []
    for r in latest.itertuples():
        o = obs[obs["code"] == r.code].sort_values("time", kind="stable")
        v = o["value"].astype(float).to_numpy()
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        if hi - lo < 1e-9:
            d = abs(lo) * 0.1 or 1.0
            lo, hi = lo - d, hi + d
        pad = (hi - lo) * 0.1
        lo, hi = lo - pad, hi + pad

        def sy(val: float, lo: float = lo, hi: float = hi) -> float:
            return ybot - (val - lo) / (hi - lo) * (ybot - ytop)

        parts = [f'<svg class="cds-trend" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                 f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(r.display)} trend">']
        title = str(r.display)
        if len(title) > 38:
            title = title[:36] + "…"
        parts.append(f'<text x="4" y="13" font-size="11" fill="#333" class="cds-svg-text">{esc(title)}</text>')
        parts.append(f'<text x="{width - 4}" y="13" font-size="11" font-weight="bold" text-anchor="end" '
                     f'fill="#111" class="cds-svg-text">{esc(r.comparator or "")}{_num(r.value, 4)} {esc(r.unit)}</text>')
        for t in imaging_times:
            if t is None or pd.isna(t):
                continue
            x = sx(t)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ytop - 4}" y2="{ybot}" stroke="#7a5cc2" class="cds-svg-imaging" '
                         f'stroke-dasharray="3,2" stroke-width="1"><title>imaging {_date(t)}</title></line>')
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{ybot}" y2="{ybot}" stroke="#bbb" class="cds-svg-axis"/>')
        parts.append(f'<text x="{x0 - 3}" y="{ytop + 4}" font-size="9" text-anchor="end" fill="#666" class="cds-svg-muted">{_num(hi - pad)}</text>')
        parts.append(f'<text x="{x0 - 3}" y="{ybot}" font-size="9" text-anchor="end" fill="#666" class="cds-svg-muted">{_num(lo + pad)}</text>')
        pts = [(sx(t), sy(val)) for t, val in zip(o["time"], v, strict=True)]
        if len(pts) > 1:
            parts.append('<polyline fill="none" stroke="#268bd2" style="stroke:var(--jp-brand-color1, #1976d2)" stroke-width="1.5" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for (x, y), t, val in zip(pts, o["time"], v, strict=True):
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="#268bd2" class="cds-svg-score"><title>{_num(val, 4)} '
                         f'{esc(r.unit)} on {_date(t)}</title></circle>')
        parts.append(f'<text x="{x0}" y="{height - 3}" font-size="9" fill="#666" class="cds-svg-muted">{_date(t0)}</text>')
        parts.append(f'<text x="{x1}" y="{height - 3}" font-size="9" text-anchor="end" fill="#666" class="cds-svg-muted">{_date(t1)}</text>')
        parts.append("</svg>")
        panels.append("".join(parts))
    legend = ('<div class="cds-muted">Dashed blue lines: imaging studies. Hover a point for its value and date.'
              "</div>")
    return f'<div class="cds-box"><div class="cds-trends">{"".join(panels)}</div>{legend}</div>'


def timeline_html(studies: pd.DataFrame, selected: str | None = None, width: int = 640, height: int = 64,
                  blind: bool = False) -> str:
    """An SVG timeline of one patient's imaging studies (dots coloured by AI state; the shown one ringed).

    ``studies`` has ``study_uid``, ``started``, ``modality`` and (unless ``blind``) ``ai_state``.
    """
    if studies is None or not len(studies):
        return '<div class="cds-box"><span class="cds-muted">No imaging studies.</span></div>'
    rng = _time_range(studies["started"])
    if rng is None:
        return '<div class="cds-box"><span class="cds-muted">Imaging studies have no dates.</span></div>'
    t0, t1 = rng
    x0, x1, y = 12.0, width - 12.0, 30.0
    sx = _xscale(t0, t1, x0, x1)
    parts = [f'<svg class="cds-timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{x0}" x2="{x1}" y1="{y}" y2="{y}" stroke="#999" stroke-width="1.5" class="cds-svg-axis"/>']
    for r in studies.itertuples():
        if pd.isna(r.started):
            continue
        x = sx(r.started)
        state = "no-ai" if blind else getattr(r, "ai_state", "no-ai")
        ring = (f'<circle cx="{x:.1f}" cy="{y}" r="10" fill="none" stroke="#111" stroke-width="2" class="cds-svg-ring"/>'
                if r.study_uid == selected else "")
        tip = f"{_date(r.started)} {r.modality}" + ("" if blind else f" · {state_label(state)}")
        parts.append(f'{ring}<circle cx="{x:.1f}" cy="{y}" r="6" fill="#757575" class="cds-dot cds-state-{esc(state)}"><title>{esc(tip)}</title></circle>'
                     f'<text x="{x:.1f}" y="{y - 12}" font-size="9" text-anchor="middle" fill="#444" class="cds-svg-text">'
                     f"{esc(r.modality)}</text>")
    parts.append(f'<text x="{x0}" y="{height - 6}" font-size="10" fill="#666" class="cds-svg-muted">{_date(t0)}</text>')
    parts.append(f'<text x="{x1}" y="{height - 6}" font-size="10" text-anchor="end" fill="#666" class="cds-svg-muted">{_date(t1)}</text>')
    parts.append("</svg>")
    return f'<div class="cds-box"><b>Imaging timeline</b><br>{"".join(parts)}</div>'


# -------------------------------------------------------------------------------------- findings
def markdown_html(text: str) -> str:
    """Markdown to HTML with raw HTML escaped (mistune, which Jupyter installs); ``<pre>`` without it."""
    try:
        import mistune

        return str(mistune.create_markdown(escape=True, plugins=["table"])(text))
    except ImportError:
        return f"<pre>{esc(text)}</pre>"


def _score_bar(score: float, threshold: float | None, band: Sequence[float] | None, width: int = 260) -> str:
    lo_v, hi_v = 0.0, 1.0
    if not 0.0 <= score <= 1.0:
        vals = [score, *(band or ()), *([threshold] if threshold is not None else [])]
        lo_v, hi_v = min(vals) - 1.0, max(vals) + 1.0

    def x(v: float) -> float:
        return 4 + (v - lo_v) / (hi_v - lo_v) * (width - 8)

    parts = [f'<svg class="cds-scorebar" width="{width}" height="26" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="4" y="8" width="{width - 8}" height="8" fill="#e8e8e8" rx="3" class="cds-svg-track"/>']
    if band:
        parts.append(f'<rect x="{x(band[0]):.1f}" y="6" width="{max(x(band[1]) - x(band[0]), 1):.1f}" height="12" '
                     f'class="cds-dot cds-state-indeterminate" fill="#f57c00" opacity="0.45"><title>indeterminate band {band[0]:.3g}–{band[1]:.3g}</title></rect>')
    if threshold is not None:
        parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="3" y2="21" stroke="#111" class="cds-svg-ring" '
                     f'stroke-width="2"><title>threshold {threshold:.3g}</title></line>')
    parts.append(f'<circle cx="{x(score):.1f}" cy="12" r="5" fill="#268bd2" class="cds-svg-score" stroke="#fff"><title>score '
                 f"{score:.3g}</title></circle></svg>")
    return "".join(parts)


def finding_card_html(finding: Any, card: dict[str, Any] | None = None, review: dict[str, Any] | None = None) -> str:
    """One Finding: what, score against threshold and band, interpretation, model + card, EHR inputs, review.

    ``card`` is the model card as shown (``{"name", "version", "html", "path"}``, see
    :func:`cds.explorer.app.model_cards`), not the ``metadata.json`` section.
    """
    f = finding
    interp = f.interpretation
    score = f.score
    if f.probability is not None:
        what = f'probability <b class="cds-probability">{f.probability:.3f}</b>'
    elif f.value is not None:
        what = f'value <b class="cds-probability">{_num(f.value, 4)}</b> {esc(f.unit)}'
    else:
        what = "no score"
    thr = f" · threshold {f.threshold:.3g}" if f.threshold is not None else ""
    band = (f" · indeterminate between {f.indeterminate[0]:.3g} and {f.indeterminate[1]:.3g}"
            if f.indeterminate else "")
    bar = _score_bar(float(score), f.threshold, f.indeterminate) if score is not None else ""
    shown = card or {}
    model_name = shown.get("name") or f.model_id
    card_body = shown.get("html") or ""
    card_link = (f'<details class="cds-model-card"><summary>model card</summary><div style="max-height:320px;'
                 f'overflow:auto;border:1px solid var(--jp-border-color2, #e0e0e0);padding:4px;background:var(--jp-layout-color1, #fff)">{card_body}'
                 f'<div class="cds-muted">{esc(shown.get("path", ""))}</div></div></details>' if card_body
                 else '<span class="cds-muted">(no model card found)</span>')
    ehr = {k: v for k, v in (f.ehr_inputs or {}).items() if ":" not in k and "." not in k}
    ehr_txt = (", ".join(f"{esc(k)} = {esc(v)}" for k, v in ehr.items()) if ehr
               else "none (image only)")
    expl = f"<div>Explanation: {esc(f.explanation)}</div>" if f.explanation else ""
    if review:
        coding = ((review.get("reason") or {}).get("coding") or [{}])[0]
        who = (review.get("reviewer") or {}).get("reference", "").split("/")[-1]
        done = {"accept": "accepted", "override": "overridden"}.get(review["action"], review["action"])
        rtxt = (f"<b>{esc(done)}</b> by {esc(who)} at {esc(review.get('recorded'))} "
                f"(status {esc(review.get('status'))})" + (f", reason {esc(coding.get('code'))}" if coding.get("code")
                                                              else "")
                + (f": “{esc(review.get('comment'))}”" if review.get("comment") else ""))
    else:
        rtxt = "not reviewed yet (status preliminary)"
    return (f'<div class="cds-finding" data-finding-id="{esc(f.id)}">'
            f"<div><b>{esc(f.display)}</b> {_badge(interp)}</div>"
            f"<div>{what}{thr}{band}</div>{bar}"
            f'<div>Model: <b class="cds-model">{esc(model_name)}</b> version {esc(f.model_version)} {card_link}</div>'
            f"<div>EHR inputs used: {ehr_txt}</div>{expl}"
            f'<div class="cds-review">Review: {rtxt}</div></div>')


def findings_html(findings: Sequence[Any], cards: dict[str, dict[str, Any]] | None = None,
                  reviews: dict[str, dict[str, Any] | None] | None = None, hidden_reason: str | None = None,
                  failures: Sequence[Failure] = ()) -> str:
    """The AI findings panel of one study (or why it is hidden, e.g. before a reader-study read).

    ``failures`` are the study's :class:`cds.finding.Failure` records: why a model gave no Finding (could
    not run, or refused: a badge of the refusal and its reason).

    >>> from cds.finding import Failure
    >>> "pneumonia: a.dcm: truncated" in findings_html([], failures=[Failure("p", "1", "pneumonia", "E", "a.dcm: truncated")])
    True
    """
    if hidden_reason:
        return f'<div class="cds-box cds-ai-hidden"><b>AI results hidden</b><br>{esc(hidden_reason)}</div>'
    failed = "".join(
        error_html(f"Model could not run: {failure_text(fl)}", "div", "cds-failure")
        if getattr(fl, "state", "failed") not in NON_ANSWERS else
        f'<div class="cds-refusal">{badge_html(fl.state)} {esc(failure_text(fl))}</div>' for fl in failures)
    if not findings:
        return (f'<div class="cds-box"><b>AI findings</b><br><span class="cds-muted">No AI result for this study.'
                f"</span>{failed}</div>")
    cards, reviews = cards or {}, reviews or {}
    body = "".join(finding_card_html(f, cards.get(f.model_id), reviews.get(f.id)) for f in findings)
    return f'<div class="cds-box cds-findings"><b>AI findings</b>{body}{failed}</div>'


# -------------------------------------------------------------------------------------- worklist
#: The worklist's columns ``(key, header)``, in the grid and in the static table alike.
WORKLIST_COLUMNS = (("patient", "patient"), ("started", "study date"), ("modality", "modality"),
                    ("waited", "waited"), ("ai", "AI"), ("finding", "finding"), ("score", "score"),
                    ("review", "review"))
_AI_COLUMNS = ("ai", "finding", "score")


def worklist_columns(blind: bool = False) -> list[tuple[str, str]]:
    """The columns shown: all of :data:`WORKLIST_COLUMNS`, or those without AI in reader-study mode.

    >>> [k for k, _ in worklist_columns(blind=True)]
    ['patient', 'started', 'modality', 'waited', 'review']
    """
    return [(k, h) for k, h in WORKLIST_COLUMNS if not (blind and k in _AI_COLUMNS)]


def worklist_cells(r: Any, blind: bool = False) -> list[str]:
    """The HTML of one worklist row's cells (a ``itertuples`` row), in :func:`worklist_columns` order.

    A study without an AI answer says why: the model could not run (``no-ai`` with a failure), or the
    reason it was refused (``record-mismatch``, ``input-rejected``, ``outside-intended-use``).
    """
    cells = [esc(r.patient_id), _date(r.started), esc(r.modality), esc(r.waited_text)]
    if not blind:
        state = r.ai_state
        failure = getattr(r, "failure", "") or ""
        if state in NON_ANSWERS:
            what = f'<span class="cds-reason">{esc(failure)}</span>'
        elif state == "no-ai" and failure:
            what = f'<span class="cds-failure">could not run: {esc(failure)}</span>'
        else:
            what = esc(r.finding)
        score = "" if pd.isna(r.score) else f'<span class="cds-num">{float(r.score):.3f}</span>'
        cells += [badge_html(state), what, score]
    cells.append(esc(r.review_status))
    return cells


def worklist_html(worklist: pd.DataFrame, n: int = 25, blind: bool = False) -> str:
    """The first ``n`` worklist rows as an HTML table (the static fallback of the worklist grid)."""
    if worklist is None or not len(worklist):
        return '<div class="cds-box"><b>Worklist</b><br><span class="cds-muted">No studies.</span></div>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for _, h in worklist_columns(blind))
    rows = ["<tr>" + "".join(f"<td>{c}</td>" for c in worklist_cells(r, blind)) + "</tr>"
            for r in worklist.head(n).itertuples()]
    more = f'<div class="cds-muted">{len(worklist) - n} more studies</div>' if len(worklist) > n else ""
    return (f'<div class="cds-box cds-worklist-static"><b>Worklist</b> ({len(worklist)} studies)'
            f'<table class="cds-grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"{more}</div>")


# ------------------------------------------------------------------------------ static fallback
def snapshot_html(body: str) -> str:
    """Wrap static HTML as a snapshot: shown where no widget frontend runs, hidden next to a live widget."""
    return f'{SNAPSHOT_STYLE}<div class="cds-snapshot cds-static">{STYLE}{body}</div>'


class StaticFallback:
    """Mixin for the composite ipywidgets: a static HTML twin of the live widget.

    ``display(widget)`` emits two outputs: the live widget view, and a snapshot (``static_html()``)
    that a CSS rule hides as soon as a live cds widget is on the page. Where no widget frontend runs
    (papermill output, nbconvert/HTML export, a notebook viewer) the widget view cannot render (or is
    skipped by nbconvert) and the snapshot shows the case. ``_repr_mimebundle_`` also carries the
    snapshot as ``text/html`` for tools that pick one representation.
    """

    def static_html(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return snapshot_html(self.static_html())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(super()._repr_mimebundle_(**kwargs) or {})  # type: ignore[misc]
        bundle["text/html"] = self._repr_html_()
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import display

        live = dict(super()._repr_mimebundle_() or {})  # type: ignore[misc]
        display(live, raw=True)
        display({"text/html": self._repr_html_(), "text/plain": f"<static snapshot of {type(self).__name__}>"},
                raw=True)
