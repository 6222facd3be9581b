"""cds.evaluation.metrics: the one binary-metrics block, the one CI formatter, ROC points."""

from __future__ import annotations

import numpy as np
import pytest

from cds.evaluation.metrics import (
    auroc,
    binary_metrics,
    bootstrap_ci,
    format_ci,
    roc_points,
    sens_spec_at_threshold,
)


def _data(n: int = 80, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, p, rng.integers(0, n // 4, n)


def test_binary_metrics_values_are_the_direct_ones() -> None:
    y, p, g = _data()
    m = binary_metrics(y, p, 0.5, groups=g, n_boot=100, rounded=False)
    call = p >= 0.5
    assert m["auroc"]["value"] == pytest.approx(auroc(y, p))
    assert m["sensitivity"]["value"] == pytest.approx(call[y == 1].mean())
    assert m["specificity"]["value"] == pytest.approx((~call[y == 0]).mean())
    assert m["accuracy"]["value"] == pytest.approx((call == (y == 1)).mean())
    for name in ("sensitivity", "specificity", "accuracy"):
        assert m[name]["threshold"] == 0.5
        lo, hi = m[name]["ci95"]
        assert lo <= m[name]["value"] <= hi and hi > lo
    # the same bootstrap as bootstrap_ci with the same seed and groups
    ref = bootstrap_ci(lambda a, b: sens_spec_at_threshold(a, b, 0.5)[0], y, p, n_boot=100, seed=0, groups=g)
    assert m["sensitivity"]["ci95"] == ref["ci95"]


def test_binary_metrics_rounding_selection_and_undefined() -> None:
    y, p, _ = _data()
    r = binary_metrics(y, p, 0.5, n_boot=50, spec_target=0.8)
    assert r["auroc"]["value"] == round(auroc(y, p), 4) and "sensitivity_at_80_specificity" in r
    only = binary_metrics(y, p, 0.5, n_boot=0, at_threshold=("specificity",))
    assert set(only) == {"auroc", "specificity"} and only["specificity"]["ci95"] == [None, None]
    one = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5, n_boot=20)
    assert one["auroc"] == {"value": None, "ci95": [None, None], "note": "one class only"}
    assert one["specificity"]["value"] is None and one["sensitivity"]["value"] == pytest.approx(0.6667)
    assert "sensitivity" not in binary_metrics(y, p, None, n_boot=0)
    with pytest.raises(ValueError, match="ppv"):
        binary_metrics(y, p, 0.5, at_threshold=("ppv",))


def test_format_ci() -> None:
    assert format_ci({"value": 0.81234, "ci95": [0.7, 0.9]}) == "0.812 (0.700 to 0.900)"
    assert format_ci({"value": 0.8, "ci95": [float("nan"), float("nan")]}) == "0.800"
    assert format_ci(None) == "n/a" and format_ci({"value": None, "note": "one class only"}) == "n/a (one class only)"
    assert format_ci({"value": 0.5, "ci95": [0.25, 0.75]}, digits=2, sep="-", label="95 % CI ") == \
        "0.50 (95 % CI 0.25-0.75)"


def test_roc_points_trace_every_threshold() -> None:
    y, p, _ = _data(40)
    fpr, tpr = roc_points(y, p)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, p))  # no ties in p: the trapezoids are the AUROC
