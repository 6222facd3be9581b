"""Every shipped model card says where its numbers come from, and every number carries its 95 % CI.

The per-task tests (tests/test_models_2d.py, test_mammo.py, test_cmr_function.py, test_ct_lung_nodule.py,
test_nodule_characterisation.py) rerun each card's ``evaluation_command`` and compare; this file checks the
shape every card shares, so a new bundle cannot ship a bare number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cds.models import BUNDLES_DIR
from cds.models.task_table import TASKS

BUNDLES = sorted(p.parent.parent for p in Path(BUNDLES_DIR).glob("*/configs/metadata.json"))


def _numbers_without_ci(x: Any, where: str = "") -> list[str]:
    """Paths of ``{"value": number}`` entries that have no ``ci95`` (or a CI that does not hold the value)."""
    bad: list[str] = []
    if isinstance(x, dict):
        v = x.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool):
            ci = x.get("ci95")
            if not (isinstance(ci, list) and len(ci) == 2):
                bad.append(where or ".")
            elif all(isinstance(c, int | float) for c in ci) and not (ci[0] - 1e-9 <= v <= ci[1] + 1e-9):
                bad.append(f"{where} (value {v} outside its CI {ci})")
        for k, sub in x.items():
            bad += _numbers_without_ci(sub, f"{where}.{k}")
    elif isinstance(x, list):
        for i, sub in enumerate(x):
            bad += _numbers_without_ci(sub, f"{where}[{i}]")
    return bad


def test_the_check_catches_a_bare_number() -> None:
    assert _numbers_without_ci({"metrics": {"auroc": {"value": 0.9}}}) == [".metrics.auroc"]
    assert _numbers_without_ci({"auroc": {"value": 0.9, "ci95": [0.91, 0.95]}})
    assert _numbers_without_ci({"auroc": {"value": 0.9, "ci95": [0.8, 0.95]}}) == []


def test_every_reference_task_ships_a_bundle() -> None:
    assert {b.name for b in BUNDLES} >= set(TASKS)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_card_numbers_have_cis_and_an_evaluation_command(bundle: Path) -> None:
    card = json.loads((bundle / "configs" / "metadata.json").read_text())["cds"]
    perf = card["performance"]
    sections = [perf] + [v for v in perf.values() if isinstance(v, dict) and "evaluation_command" in v]
    for sec in sections:
        cmd = sec.get("evaluation_command")
        assert isinstance(cmd, str) and cmd, f"{bundle.name}: a performance section without evaluation_command"
        assert cmd.startswith((f"cds evaluate {bundle.name} ", "python -m cds.")), (bundle.name, cmd)
    assert _numbers_without_ci(perf) == [], f"{bundle.name}: numbers without a 95 % CI"
    readme = (bundle / "docs" / "README.md").read_text()
    assert perf["evaluation_command"] in readme, f"{bundle.name}: the README does not name the evaluation command"
