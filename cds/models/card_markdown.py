"""A model card (a bundle's ``cds`` section plus its MONAI metadata) as Markdown.

The one renderer of model cards as text: the FHIR writer puts it in the model card's
DocumentReference (:mod:`cds.fhir.resources`) and every bundle's ``docs/README.md`` is the same
text (:func:`readme_for`, written by :func:`write_readme`; ``tests/test_model_cards.py`` checks
that the shipped READMEs equal it). Task-specific card fields (FROC points, confusion matrices,
measurement definitions, calibration, ...) are rendered from the card's data, so no task module
writes card text of its own. CIs are formatted by :func:`cds.evaluation.metrics.format_ci`.

>>> md = model_card_markdown("toy", "0.1.0", {"threshold": 0.5, "indeterminate": [0.4, 0.6]})
>>> "- indeterminate band: 0.4 to 0.6 (reported as indeterminate)" in md
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cds.evaluation.metrics import format_ci

__all__ = ["model_card_markdown", "readme_for", "write_readme", "AI_NOTICE"]

AI_NOTICE = "Results of this model are AI-generated and preliminary until a clinician reviews them."

# card keys with a section (or line) of their own; every other key is listed under "Method"
_OWN = {"model_id", "weights", "intended_use", "proxy_for", "task", "modality", "body_site", "prognostic",
        "explanation", "outputs", "coding_note", "code_note", "code_system_note", "threshold", "indeterminate",
        "operating_point", "threshold_rule", "ef_rule", "inputs", "training_data", "performance", "calibrated",
        "calibration", "derived_from", "limitations", "context", "intended_for"}
_PERF_HEAD = ("data", "split", "split_rule", "mode", "n_cases", "n_patients", "n_positive", "n_positive_patients",
              "n_lesions", "n_abnormal_images")
_PERF_OWN = {*_PERF_HEAD, "metrics", "comparisons", "notes", "caveats", "evaluation_command", "data_command"}


def _num(x: float) -> str:
    """Floats with 4 significant digits (``0.9772``, ``61.25``); non-finite as ``n/a``."""
    return f"{x:.4g}" if math.isfinite(x) else "n/a"


def _is_metric(v: Any) -> bool:
    return isinstance(v, Mapping) and "value" in v and ("ci95" in v or "note" in v)


def _metric(m: Mapping[str, Any]) -> str:
    return format_ci(m, label="95 % CI ")


def _scalar(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _flat(v: Any) -> bool:
    return not isinstance(v, (Mapping, list, tuple))


def _inline(v: Any) -> str:
    """One line: scalars, lists of scalars (comma-joined), flat mappings (``k v; k v``), metrics."""
    if _is_metric(v):
        return _metric(v)
    if isinstance(v, Mapping):
        return "; ".join(f"{k} {_inline(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_inline(x) for x in v) if all(_flat(x) for x in v) else json.dumps(v)
    return _scalar(v)


def _items(d: Mapping[str, Any], depth: int = 0) -> list[str]:
    """Nested bullet lines of a mapping; metrics via :func:`format_ci`, missing values (None) left out."""
    pad = "  " * depth
    out: list[str] = []
    for k, v in d.items():
        if v is None or v == [] or v == {}:
            continue
        if _is_metric(v) or _flat(v) or (isinstance(v, (list, tuple)) and all(_flat(x) for x in v)):
            out.append(f"{pad}- {k}: {_inline(v)}")
        elif (isinstance(v, Mapping) and all(_flat(x) or _is_metric(x) for x in v.values())
              and len(_inline(v)) <= 160):
            out.append(f"{pad}- {k}: {_inline(v)}")
        elif isinstance(v, Mapping):
            out += [f"{pad}- {k}:"] + _items(v, depth + 1)
        else:  # a list of mappings or lists
            out += [f"{pad}- {k}:"] + _list(v, depth + 1)
    return out


def _list(v: Sequence[Any], depth: int = 0) -> list[str]:
    """Bullet lines of a list: one line per item, nested bullets for items that hold mappings or lists."""
    pad = "  " * depth
    out: list[str] = []
    for i, x in enumerate(v, 1):
        if isinstance(x, Mapping) and not _is_metric(x) and not all(_flat(y) for y in x.values()):
            out += [f"{pad}- {i}:"] + _items(x, depth + 1)
        else:
            out.append(f"{pad}- {_inline(x)}")
    return out


def _cell(v: Any) -> str:
    return _inline(v).replace("|", "\\|")


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """A Markdown table of a list of flat mappings with the same keys, else None."""
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        return None
    cols = list(rows[0])
    if any(list(r) != cols for r in rows) or not all(_flat(x) for r in rows for x in r.values()):
        return None
    return (["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
            + ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows])


def _confusion(cm: Mapping[str, Any]) -> list[str]:
    labels = [str(x) for x in cm["labels"]]
    lines = [f"Rows = {cm.get('rows', 'truth')}, columns = {cm.get('columns', 'model')}.", "",
             "| | " + " | ".join(labels) + " |", "|" + " --- |" * (len(labels) + 1)]
    lines += [f"| {lab} | " + " | ".join(str(x) for x in row) + " |"
              for lab, row in zip(labels, cm["counts"], strict=True)]
    return lines


def _title(key: str) -> str:
    return {"froc": "FROC"}.get(key, key.replace("_", " ").capitalize())


def _detail(title: str, v: Any) -> list[str]:
    """A ``###`` subsection of one performance or calibration field."""
    if isinstance(v, Mapping) and "labels" in v and "counts" in v:
        body = _confusion(v)
    elif isinstance(v, (list, tuple)) and (t := _table(v)) is not None:
        body = t
    elif isinstance(v, Mapping):
        body = _items(v)
    elif isinstance(v, (list, tuple)):
        body = _list(v)
    else:
        body = [_scalar(v)]
    return [f"### {title}", "", *body, ""]


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""] if body else []


def _output_line(o: Mapping[str, Any]) -> list[str]:
    head = f"- {o.get('display', '')} ({o.get('code_system', '')}#{o.get('code', '')})"
    extra = [_scalar(o[k]) for k in ("kind", "unit") if o.get(k) is not None]
    rest = {k: v for k, v in o.items() if k not in ("display", "code_system", "code", "kind", "unit")}
    return [head + (", " + ", ".join(extra) if extra else ""), *_items(rest, 1)]


def _performance(perf: Mapping[str, Any]) -> list[str]:
    lines = [f"- {k}: {_scalar(perf[k])}" for k in _PERF_HEAD if perf.get(k) is not None]
    metrics = perf.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value (95 % CI) | details |", "| --- | --- | --- |"]
        for name, m in metrics.items():
            if isinstance(m, Mapping):
                rest = {k: v for k, v in m.items() if k not in ("value", "ci95", "note")}
                lines.append(f"| {name} | {_cell(_metric(m))} | {_cell(rest) if rest else ''} |")
    lines.append("")
    if perf.get("comparisons"):
        lines += ["### Comparisons (baselines and subgroups)", "", *_items(perf["comparisons"]), ""]
    for k, v in perf.items():
        if k not in _PERF_OWN and v not in (None, [], {}):
            lines += _detail(_title(k), v)
    for key, title in (("notes", "Notes"), ("caveats", "Caveats")):
        if perf.get(key):
            lines += [f"### {title}", "", *[f"- {x}" for x in perf[key]], ""]
    if perf.get("data_command"):
        lines += [f"Regenerate the data: `{perf['data_command']}`", ""]
    if perf.get("evaluation_command"):
        lines += [f"Reproduce: `{perf['evaluation_command']}`", ""]
    return lines[:-1] if lines and lines[-1] == "" else lines


def _calibration(card: Mapping[str, Any]) -> list[str]:
    cal = dict(card.get("calibration") or {})
    lines = [f"- calibrated: {_scalar(card['calibrated'])}"] if card.get("calibrated") is not None else []
    tables = {k: v for k, v in cal.items() if isinstance(v, list) and _table(v) is not None}
    lines += _items({k: v for k, v in cal.items() if k not in tables})
    for k, v in tables.items():
        lines += ["", *_detail(_title(k), v)[:-1]]
    return lines


def _intended_for(v: Any) -> list[str]:
    """The card's ``intended_for`` as the people reading the card need it: who and what the model
    answers for, and the out-of-distribution reference (see :mod:`cds.models.vouch`)."""
    if not isinstance(v, Mapping) or not v:
        return []
    out: list[str] = []
    ages = v.get("age_years")
    if ages:
        lo, hi = ages
        span = (f"{_scalar(lo)} to {_scalar(hi)} years" if lo is not None and hi is not None
                else f"{_scalar(lo)} years and over" if lo is not None else f"up to {_scalar(hi)} years")
        unknown = ("refused (no answer)" if v.get("age_unknown", "refuse") == "refuse"
                   else "accepted with a warning" + (f": {v['age_unknown_reason']}" if v.get("age_unknown_reason") else ""))
        out += [f"- patient age: {span}; a study whose patient has no recorded age is {unknown}"]
    for key, label in (("views", "views"), ("body_parts", "body parts")):
        if v.get(key):
            out.append(f"- {label}: {', '.join(map(str, v[key]))} (an unrecorded one is accepted with a warning)")
    if v.get("min_size_px"):
        out.append(f"- image size: at least {v['min_size_px']} pixels per side")
    if v.get("min_slices"):
        out.append(f"- volume: at least {v['min_slices']} slices")
    prof = v.get("input_profile")
    if isinstance(prof, Mapping) and prof.get("features"):
        out += ["", "Input profile (out-of-distribution check): a study is refused as \"input rejected\" when one of "
                f"the features {', '.join(prof['features'])} lies more than {_scalar(prof.get('max_z'))} robust SDs "
                f"(|x - median| / (1.4826 MAD)) from the training images ({prof.get('data', 'training data')}, "
                f"n = {prof.get('n')})."]
        if prof.get("command"):
            out.append(f"Computed by `{prof['command']}`.")
        checked = prof.get("checked_on") or {}
        if checked:
            out += ["", "| images | fraction refused |", "| --- | --- |",
                    *[f"| {k} | {_scalar(x)} |" for k, x in checked.items()]]
    out += ["", "Outside these a model gives no answer: the study is recorded as \"outside intended use\" with "
            "the reason, never scored."]
    return out


def model_card_markdown(model_id: str, version: str, card: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> str:
    """The model card (the bundle's ``cds`` section plus MONAI metadata) as Markdown.

    The one model-card renderer: FHIR model-card DocumentReferences and bundle READMEs
    (:func:`readme_for`) are both this text. Deterministic: the same card gives the same text.

    >>> md = model_card_markdown("toy", "0.1.0", {"intended_use": "demo", "limitations": ["tiny"]})
    >>> md.splitlines()[0], "- tiny" in md
    ('# toy 0.1.0: model card', True)
    >>> perf = {"n_cases": 3, "n_positive": None, "metrics": {"auroc": {"value": 0.9, "ci95": [0.8, 1.0]}}}
    >>> md = model_card_markdown("toy", "1", {"performance": perf})
    >>> "- n_cases: 3" in md, "n_positive" in md, "| auroc | 0.900 (95 % CI 0.800 to 1.000) |  |" in md
    (True, False, True)
    """
    meta = dict(metadata or {})
    lines = [f"# {model_id} {version}: model card", ""]
    if meta.get("name") and meta["name"] != model_id:
        lines += [f"**{meta['name']}**", ""]
    lines += [AI_NOTICE, ""]
    if meta.get("description"):
        lines += [str(meta["description"]), ""]
    for title, key in (("Intended use", "intended_use"), ("Proxy for", "proxy_for")):
        text = card.get(key) or (meta.get(key) if key == "intended_use" else None)
        lines += _section(title, [str(text)] if text else [])
    lines += _section("Intended population and inputs", _intended_for(card.get("intended_for")))
    lines += _section("Task", [f"- {k}: {_inline(card[k])}" for k in ("task", "modality", "body_site", "prognostic",
                                                                      "explanation") if card.get(k) is not None])
    out = [x for o in card.get("outputs") or [] for x in _output_line(o)]
    notes = [str(card[k]) for k in ("coding_note", "code_note", "code_system_note") if card.get(k)]
    lines += _section("Outputs", out + ([""] + notes if out and notes else notes))
    op: list[str] = []
    if card.get("threshold") is not None:
        op.append(f"- decision threshold: {_scalar(card['threshold'])}")
    if card.get("indeterminate"):
        lo, hi = card["indeterminate"]
        op.append(f"- indeterminate band: {_scalar(lo)} to {_scalar(hi)} (reported as indeterminate)")
    op += _items({**(card.get("operating_point") or {}), "threshold_rule": card.get("threshold_rule"),
                  "ef_rule": card.get("ef_rule")})
    lines += _section("Operating point", op)
    lines += _section("Inputs", _items(card.get("inputs") or {}))
    lines += _section("Method", _items({k: v for k, v in card.items() if k not in _OWN}))
    td = card.get("training_data")
    lines += _section("Training data", _items(td) if isinstance(td, Mapping) else ([str(td)] if td else []))
    perf = card.get("performance")
    lines += _section("Performance", _performance(perf) if isinstance(perf, Mapping) and perf else [])
    if card.get("calibration") or card.get("calibrated") is not None:
        lines += _section("Calibration", _calibration(card))
    lines += _section("Derived from", _items(card.get("derived_from") or {}))
    lines += _section("Limitations", [f"- {x}" for x in card.get("limitations") or []])
    lines += _section("Published context", [f"- {x}" for x in card.get("context") or []])
    lines += _section("References", [f"- {x}" for x in meta.get("references") or []])
    versions = [f"- {k}: {meta[v]}" for k, v in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version"),
                                                 ("NumPy", "numpy_version"), ("Python", "python_version"))
                if meta.get(v)]
    lines += _section("Software", versions)
    lines += _section("Version history", [f"- {k}: {v}" for k, v in (meta.get("changelog") or {}).items()])
    return "\n".join(lines).rstrip() + "\n"


def readme_for(meta: Mapping[str, Any]) -> str:
    """A bundle's ``docs/README.md`` from its ``metadata.json``: :func:`model_card_markdown` with the
    model id and version a loaded :class:`cds.models.bundle.Bundle` reports (no second renderer).

    >>> readme_for({"name": "toy", "version": "1", "cds": {"intended_use": "demo"}}).splitlines()[0]
    '# toy 1: model card'
    """
    card = meta.get("cds") or {}
    return model_card_markdown(str(card.get("model_id") or meta.get("name") or "model"), str(meta.get("version", "0")),
                               card, meta)


def write_readme(bundle_dir: str | Path) -> Path:
    """(Re)write ``bundle_dir/docs/README.md`` from ``configs/metadata.json`` (deterministic; no retraining)."""
    p = Path(bundle_dir)
    meta = json.loads((p / "configs" / "metadata.json").read_text(encoding="utf-8"))
    (p / "docs").mkdir(exist_ok=True)
    out = p / "docs" / "README.md"
    out.write_text(readme_for(meta), encoding="utf-8")
    return out
