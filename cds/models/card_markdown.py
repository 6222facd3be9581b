"""A model card (a bundle's ``cds`` section plus its MONAI metadata) as Markdown.

The one renderer of model cards as text: the FHIR writer puts it in the model card's
DocumentReference (:mod:`cds.fhir.resources`), and bundle READMEs can use it too.

>>> md = model_card_markdown("toy", "0.1.0", {"threshold": 0.5, "indeterminate": [0.4, 0.6]})
>>> "- indeterminate band: 0.4 to 0.6 (reported as indeterminate)" in md
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["model_card_markdown"]


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: float) -> str:
    """3 significant digits below 1, else 4 (``0.912``, ``61.25``)."""
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"


def model_card_markdown(model_id: str, version: str, card: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> str:
    """The model card (the bundle's ``cds`` section plus MONAI metadata) as Markdown.

    Deterministic: the same card gives the same text.

    >>> md = model_card_markdown("toy", "0.1.0", {"intended_use": "demo", "limitations": ["tiny"]})
    >>> md.splitlines()[0], "- tiny" in md
    ('# Model card: toy 0.1.0', True)
    """
    meta = dict(metadata or {})
    lines = [f"# Model card: {model_id} {version}", ""]
    if meta.get("name") and meta["name"] != model_id:
        lines += [f"**{meta['name']}**", ""]
    lines += ["Results of this model are AI-generated and preliminary until a clinician reviews them.", ""]
    versions = [f"{k} {meta[v]}" for k, v in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version"))
                if meta.get(v)]
    if versions:
        lines += ["Software: " + ", ".join(versions), ""]
    if meta.get("description"):
        lines += [str(meta["description"]), ""]
    for title, key in (("Intended use", "intended_use"), ("Proxy for", "proxy_for")):
        if card.get(key) or (key == "intended_use" and meta.get(key)):
            lines += [f"## {title}", "", str(card.get(key) or meta.get(key)), ""]
    if card.get("outputs"):
        lines += ["## Outputs", ""]
        for o in card["outputs"]:
            lines.append(f"- {o.get('display', '')} ({o.get('code_system', '')}#{o.get('code', '')}), "
                         f"{o.get('kind', 'output')}")
        lines.append("")
    if card.get("threshold") is not None or card.get("indeterminate"):
        lines += ["## Operating point", ""]
        if card.get("threshold") is not None:
            lines.append(f"- decision threshold: {card['threshold']}")
        if card.get("indeterminate"):
            lo, hi = card["indeterminate"]
            lines.append(f"- indeterminate band: {lo} to {hi} (reported as indeterminate)")
        how = (card.get("operating_point") or {}).get("how_chosen")
        if how:
            lines.append(f"- how chosen: {how}")
        lines.append("")
    td = card.get("training_data")
    if isinstance(td, Mapping):
        lines += ["## Training data", ""]
        for k in ("name", "n", "n_patients", "split", "licence"):
            if td.get(k) is not None:
                lines.append(f"- {k}: {td[k]}")
        lines.append("")
    perf = card.get("performance")
    if isinstance(perf, Mapping):
        lines += ["## Measured performance", ""]
        for k in ("data", "split", "mode", "n_cases", "n_patients", "n_positive"):
            if perf.get(k) is not None:
                lines.append(f"- {k}: {perf[k]}")
        metrics = perf.get("metrics") or {}
        if metrics:
            lines += ["", "| metric | value | 95 % CI |", "| --- | --- | --- |"]
            for name, m in metrics.items():
                if isinstance(m, Mapping):
                    ci = m.get("ci95")
                    ci_s = f"{_fmt(ci[0])} to {_fmt(ci[1])}" if ci and None not in ci else "n/a"
                    val = _finite(m.get("value"))
                    lines.append(f"| {name} | {_fmt(val) if val is not None else 'n/a'} | {ci_s} |")
        if perf.get("evaluation_command"):
            lines += ["", f"Reproduce: `{perf['evaluation_command']}`"]
        lines.append("")
    if card.get("limitations"):
        lines += ["## Limitations", ""] + [f"- {x}" for x in card["limitations"]] + [""]
    if meta.get("references"):
        lines += ["## References", ""] + [f"- {x}" for x in meta["references"]] + [""]
    return "\n".join(lines).rstrip() + "\n"
