"""Writing a reference model's card files: MONAI ``metadata.json`` with its ``cds`` section, the
performance section copied from an ``evaluate`` result, and ``docs/README.md`` rendered from the card.

The card's numbers are therefore exactly what ``evaluate`` returned (:func:`write_performance`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["monai_metadata", "write_performance", "render_readme", "PERFORMANCE_KEYS"]


def monai_metadata(*, version: str, name: str, task: str, description: str, cds: dict[str, Any],
                   inputs: dict[str, Any], outputs: dict[str, Any], data_source: str, data_type: str,
                   references: list[str], changelog: dict[str, str]) -> dict[str, Any]:
    """MONAI ``metadata.json`` fields (network_data_format etc.) around the ``cds`` card section."""
    import monai
    import torch

    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": version,
        "changelog": changelog,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "name": name,
        "task": task,
        "description": description,
        "authors": "cds project",
        "copyright": "Copyright (c) cds project contributors; weights trained on the data sets named in data_source",
        "data_source": data_source,
        "data_type": data_type,
        "intended_use": cds.get("intended_use", ""),
        "references": references,
        "network_data_format": {"inputs": inputs, "outputs": outputs},
        "cds": cds,
    }


PERFORMANCE_KEYS = ("data", "split", "split_rule", "n_cases", "n_patients", "n_positive", "n_positive_patients",
                    "metrics", "comparisons", "bootstrap", "notes", "evaluation_command")


def write_performance(bundle_dir: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """Copy an ``evaluate`` result into the card's ``performance`` section (and MONAI ``eval_metrics``).

    The card numbers are therefore exactly what ``evaluate`` returned; ``docs/README.md`` is
    re-rendered from the updated card. Returns the updated metadata.
    """
    p = Path(bundle_dir) / "configs" / "metadata.json"
    meta = json.loads(p.read_text())
    meta["cds"]["performance"] = {k: result[k] for k in PERFORMANCE_KEYS if k in result}
    meta["eval_metrics"] = {k: v["value"] for k, v in result["metrics"].items()}
    p.write_text(json.dumps(meta, indent=2) + "\n")
    (Path(bundle_dir) / "docs").mkdir(exist_ok=True)
    (Path(bundle_dir) / "docs" / "README.md").write_text(render_readme(meta))
    return meta


def _fmt_metric(m: dict[str, Any]) -> str:
    v, ci = m.get("value"), m.get("ci95") or [None, None]
    if v is None:
        return "undefined"
    lo, hi = ("?" if c is None else f"{c:.3f}" for c in ci)
    return f"{v:.3f} (95 % CI {lo}-{hi})"


def render_readme(meta: dict[str, Any]) -> str:
    """The human-readable model card (markdown) from ``metadata.json``.

    >>> print(render_readme({"name": "toy", "version": "1", "cds": {"intended_use": "demo"}}).splitlines()[0])
    # toy (version 1)
    """
    c = meta.get("cds", {})
    lines = [f"# {meta.get('name', c.get('model_id', 'model'))} (version {meta.get('version', '?')})", ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    for key, title in (("intended_use", "Intended use"), ("proxy_for", "Proxy for")):
        if c.get(key):
            lines += [f"## {title}", "", str(c[key]), ""]
    if c.get("outputs"):
        lines += ["## Output", ""]
        for o in c["outputs"]:
            lines.append(f"- {o['display']} ({o['code_system']} {o['code']}), {o.get('kind', 'probability')}")
        lines.append(f"- threshold {c.get('threshold')}, indeterminate band {c.get('indeterminate')}: "
                     f"{c.get('operating_point', {}).get('how_chosen', '')}")
        lines.append("")
    inputs = c.get("inputs", {})
    if inputs:
        lines += ["## Inputs", ""]
        if inputs.get("image"):
            lines.append(f"- image: {json.dumps(inputs['image'])}")
        for e in inputs.get("ehr", []):
            lines.append(f"- {e['name']}: `{e['source']}` {e.get('description', '')}".rstrip())
        lines.append("")
    td = c.get("training_data")
    if td:
        lines += ["## Training data", "", "```json", json.dumps(td, indent=2), "```", ""]
    perf = c.get("performance")
    if perf:
        lines += ["## Performance", "", f"Data: {perf.get('data')} (split: {perf.get('split')}), "
                  f"{perf.get('n_cases')} cases, {perf.get('n_patients')} patients, "
                  f"{perf.get('n_positive')} positive.", ""]
        for k, m in perf.get("metrics", {}).items():
            lines.append(f"- {k}: {_fmt_metric(m)}")
        for name, comp in (perf.get("comparisons") or {}).items():
            if isinstance(comp, dict) and "metrics" in comp:
                auc = comp["metrics"].get("auroc")
                if auc:
                    lines.append(f"- comparison {name}: AUROC {_fmt_metric(auc)}")
        lines += ["", f"Reproduce: `{perf.get('evaluation_command')}`", ""]
        for n in perf.get("notes", []):
            lines.append(f"- note: {n}")
        lines.append("")
    if c.get("limitations"):
        lines += ["## Limitations", ""] + [f"- {x}" for x in c["limitations"]] + [""]
    if c.get("context"):
        lines += ["## Published context", ""] + [f"- {x}" for x in c["context"]] + [""]
    return "\n".join(lines)
