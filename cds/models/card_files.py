"""Writing a reference model's card files: MONAI ``metadata.json`` with its ``cds`` section, the
performance section copied from an ``evaluate`` result, and ``docs/README.md`` rendered from the card by the
one model-card renderer (:func:`cds.models.card_markdown.write_readme`).

The card's numbers are therefore exactly what ``evaluate`` returned (:func:`write_performance`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cds.models.card_markdown import write_readme

__all__ = ["monai_metadata", "write_performance", "PERFORMANCE_KEYS"]


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


def write_performance(bundle_dir: str | Path, result: dict[str, Any], keys: Any = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy an ``evaluate`` result into the card's ``performance`` section (and MONAI ``eval_metrics``).

    ``keys`` are the result keys copied (default :data:`PERFORMANCE_KEYS`); ``extra`` entries are set
    on the performance section after them (a task's own facts, e.g. targets met). The card numbers are
    therefore exactly what ``evaluate`` returned; ``docs/README.md`` is re-rendered from the updated
    card. Returns the updated metadata.
    """
    p = Path(bundle_dir) / "configs" / "metadata.json"
    meta = json.loads(p.read_text())
    meta["cds"]["performance"] = {k: result[k] for k in (PERFORMANCE_KEYS if keys is None else keys) if k in result}
    meta["cds"]["performance"].update(extra or {})
    meta["eval_metrics"] = {k: v["value"] for k, v in result["metrics"].items()}
    p.write_text(json.dumps(meta, indent=2) + "\n")
    write_readme(bundle_dir)
    return meta
