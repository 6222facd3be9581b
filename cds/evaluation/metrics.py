"""Performance metrics with 95 % bootstrap confidence intervals (numpy-in, dict-out).

Every number in a model card comes from these functions via ``cds evaluate``.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
>>> p = np.array([0.1, 0.3, 0.8, 0.7, 0.2, 0.9, 0.6, 0.4])
>>> m = auroc_ci(y, p, n_boot=200, seed=0)
>>> round(m["value"], 3)
0.938
>>> 0.0 <= m["ci95"][0] <= m["value"] <= m["ci95"][1] <= 1.0
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "auroc",
    "auroc_ci",
    "binary_metrics",
    "bootstrap_ci",
    "format_ci",
    "metric_ci",
    "roc_points",
    "round_metric",
    "sensitivity_at_specificity",
    "sens_spec_at_threshold",
    "threshold_at_specificity",
]


def auroc(y: Sequence[int], p: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count one half)."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=float)
    pos, neg = p[y], p[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg = cum - (counts - 1) / 2.0
    ranks[order] = avg[inv]
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def bootstrap_ci(
    stat: Callable[..., float],
    *arrays: Sequence[Any],
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap 95 % CI of ``stat(*arrays)``.

    With ``groups`` (e.g. patient ids) whole groups are resampled, so images of one patient stay
    together. Resamples where the statistic is undefined (NaN) are dropped.
    """
    arrs = [np.asarray(a) for a in arrays]
    value = float(stat(*arrs))
    rng = np.random.default_rng(seed)
    n = len(arrs[0])
    if groups is not None:
        g = np.asarray(groups)
        uniq, idx = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(idx == k) for k in range(len(uniq))]
    boots = []
    for _ in range(n_boot):
        if groups is None:
            sel = rng.integers(0, n, n)
        else:
            pick = rng.integers(0, len(members), len(members))
            sel = np.concatenate([members[k] for k in pick])
        v = stat(*[a[sel] for a in arrs])
        if np.isfinite(v):
            boots.append(v)
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan")))
    return {"value": value, "ci95": [float(lo), float(hi)], "n_boot": len(boots)}


def auroc_ci(y: Sequence[int], p: Sequence[float], n_boot: int = 2000, seed: int = 0,
             groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """AUROC with a bootstrap 95 % CI."""
    return bootstrap_ci(auroc, y, p, n_boot=n_boot, seed=seed, groups=groups)


def threshold_at_specificity(y: Sequence[int], p: Sequence[float], specificity: float) -> float:
    """The lowest threshold whose specificity (on negatives, ``p < t`` is negative) is >= target."""
    y = np.asarray(y).astype(bool)
    neg = np.sort(np.asarray(p, dtype=float)[~y])
    if len(neg) == 0:
        return float("nan")
    k = int(np.ceil(specificity * len(neg)))
    k = min(max(k, 0), len(neg))
    if k == 0:
        return float(neg[0])
    t = neg[k - 1]
    return float(np.nextafter(t, np.inf))


def sens_spec_at_threshold(y: Sequence[int], p: Sequence[float], t: float) -> tuple[float, float]:
    """(sensitivity, specificity) with ``p >= t`` called positive.

    >>> sens_spec_at_threshold([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.6], 0.5)
    (0.5, 0.5)
    """
    y = np.asarray(y).astype(bool)
    call = np.asarray(p, dtype=float) >= t
    sens = float(call[y].mean()) if y.any() else float("nan")
    spec = float((~call[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def sensitivity_at_specificity(y: Sequence[int], p: Sequence[float], specificity: float = 0.73,
                               n_boot: int = 2000, seed: int = 0,
                               groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Sensitivity at the threshold that gives ``specificity`` on these data, with bootstrap CI."""

    def stat(yy: np.ndarray, pp: np.ndarray) -> float:
        t = threshold_at_specificity(yy, pp, specificity)
        return sens_spec_at_threshold(yy, pp, t)[0]

    out = bootstrap_ci(stat, y, p, n_boot=n_boot, seed=seed, groups=groups)
    out["specificity_target"] = specificity
    out["threshold"] = threshold_at_specificity(y, p, specificity)
    return out


def metric_ci(stat: Callable[..., float], y: Sequence[int], p: Sequence[float], *, n_boot: int = 2000,
              seed: int = 0, groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """:func:`bootstrap_ci` of ``stat(y, p)``; with ``n_boot <= 0`` the point value alone (CI ``[None, None]``).

    >>> metric_ci(auroc, [0, 1, 1], [0.2, 0.9, 0.1], n_boot=0)
    {'value': 0.5, 'ci95': [None, None], 'n_boot': 0}
    """
    if n_boot <= 0:
        return {"value": float(stat(np.asarray(y), np.asarray(p))), "ci95": [None, None], "n_boot": 0}
    return bootstrap_ci(stat, y, p, n_boot=n_boot, seed=seed, groups=groups)


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        v = float(v)
        return round(v, 4) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def round_metric(m: dict[str, Any]) -> dict[str, Any]:
    """A metric dict with values rounded to 4 decimals (NaN -> None), JSON-ready.

    >>> round_metric({"value": 0.123456, "ci95": [0.1, float("nan")], "n_boot": 10})
    {'value': 0.1235, 'ci95': [0.1, None], 'n_boot': 10}
    """
    return {k: _clean(v) for k, v in m.items()}


AT_THRESHOLD = ("sensitivity", "specificity", "accuracy")
"""The metrics :func:`binary_metrics` computes at a threshold, in this order."""


def binary_metrics(
    y: Sequence[int],
    p: Sequence[float],
    threshold: float | None,
    groups: Sequence[Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    spec_target: float | None = None,
    at_threshold: Sequence[str] = AT_THRESHOLD,
    rounded: bool = True,
) -> dict[str, dict[str, Any]]:
    """AUROC, and sensitivity / specificity / accuracy at ``threshold`` (``p >= t`` positive), each with a 95 % CI.

    The one binary-metrics block of the package: model cards (``cds evaluate``) and cohort reports
    both use it. ``groups`` (patient ids) makes the bootstrap resample whole patients; ``n_boot <= 0``
    gives point values only. Each thresholded metric carries its ``threshold``. A metric undefined
    on these cases (AUROC with one class only, sensitivity without positives, specificity without
    negatives) is ``{"value": None, "ci95": [None, None]}`` (AUROC adds ``note: "one class only"``).
    ``at_threshold`` picks which of :data:`AT_THRESHOLD` to compute; with ``spec_target`` the
    sensitivity at that specificity (threshold re-chosen in every resample) is added as
    ``sensitivity_at_<NN>_specificity``. ``rounded`` applies :func:`round_metric` (4 decimals,
    NaN -> None).

    >>> m = binary_metrics([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.7, 0.9, 0.6, 0.4], 0.5, n_boot=50)
    >>> m["auroc"]["value"], m["sensitivity"]["value"], m["specificity"]["value"], m["accuracy"]["threshold"]
    (0.8889, 0.6667, 0.6667, 0.5)
    >>> binary_metrics([1, 1], [0.2, 0.9], 0.5, n_boot=0, at_threshold=("sensitivity", "specificity"))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'auroc': {'value': None, 'ci95': [None, None], 'note': 'one class only'},
     'sensitivity': {'value': 0.5, 'ci95': [None, None], 'n_boot': 0, 'threshold': 0.5},
     'specificity': {'value': None, 'ci95': [None, None], 'threshold': 0.5}}
    """
    unknown = set(at_threshold) - set(AT_THRESHOLD)
    if unknown:
        raise ValueError(f"at_threshold: unknown metric(s) {sorted(unknown)}; known: {list(AT_THRESHOLD)}")
    yy = np.asarray(y).astype(int)
    pp = np.asarray(p, dtype=float)
    n_pos = int(yy.sum())
    has_pos, has_neg = n_pos > 0, n_pos < len(yy)
    finish = round_metric if rounded else dict

    def ci(stat: Callable[..., float]) -> dict[str, Any]:
        return finish(metric_ci(stat, yy, pp, n_boot=n_boot, seed=seed, groups=groups))

    out: dict[str, dict[str, Any]] = {}
    out["auroc"] = ci(auroc) if has_pos and has_neg else {"value": None, "ci95": [None, None],
                                                          "note": "one class only"}
    if threshold is not None:
        t = float(threshold)

        def sens(a: np.ndarray, b: np.ndarray) -> float:
            return sens_spec_at_threshold(a, b, t)[0]

        def spec(a: np.ndarray, b: np.ndarray) -> float:
            return sens_spec_at_threshold(a, b, t)[1]

        def acc(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.mean((b >= t) == a.astype(bool)))

        stats = {"sensitivity": (sens, has_pos), "specificity": (spec, has_neg), "accuracy": (acc, len(yy) > 0)}
        for name in (n for n in AT_THRESHOLD if n in at_threshold):
            fn, defined = stats[name]
            m = ci(fn) if defined else {"value": None, "ci95": [None, None]}
            m["threshold"] = round(t, 6) if rounded else t
            out[name] = m
    if spec_target is not None:
        key = f"sensitivity_at_{int(round(spec_target * 100))}_specificity"
        out[key] = finish(sensitivity_at_specificity(yy, pp, spec_target, n_boot=n_boot, seed=seed, groups=groups))
    return out


def format_ci(m: Mapping[str, Any] | None, digits: int = 3, sep: str = " to ", label: str = "") -> str:
    """``value (lo to hi)`` of a ``{"value", "ci95"}`` metric; ``n/a`` (with its note) when undefined.

    The one CI formatter of the package (reports, anchors, model cards): ``digits`` decimals,
    ``sep`` between the bounds, ``label`` before them (e.g. ``"95 % CI "``). Without both bounds
    only the value is given.

    >>> format_ci({"value": 0.91234, "ci95": [0.85, 0.95]})
    '0.912 (0.850 to 0.950)'
    >>> format_ci({"value": 0.9, "ci95": [None, None]}), format_ci({"value": None, "note": "one class only"})
    ('0.900', 'n/a (one class only)')
    >>> format_ci({"value": 0.9, "ci95": [0.8, 1.0]}, sep="-", label="95 % CI ")
    '0.900 (95 % CI 0.800-1.000)'
    """
    if not m or m.get("value") is None:
        return "n/a" + (f" ({m['note']})" if m and m.get("note") else "")
    lo, hi = (m.get("ci95") or [None, None])[:2]
    v = f"{m['value']:.{digits}f}"
    if lo is None or hi is None or (isinstance(lo, float) and np.isnan(lo)):
        return v
    return f"{v} ({label}{lo:.{digits}f}{sep}{hi:.{digits}f})"


def roc_points(y: Sequence[int], p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of the ROC curve, from (0, 0) to (1, 1).

    One point per distinct score, called positive at ``p >= score``.

    >>> fpr, tpr = roc_points([0, 1, 1, 0], [0.1, 0.9, 0.6, 0.6])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    yy = np.asarray(y).astype(bool)
    pp = np.asarray(p, dtype=float)
    ts = np.unique(pp)[::-1]
    npos, nneg = max(int(yy.sum()), 1), max(int((~yy).sum()), 1)
    tpr = [0.0] + [float((pp[yy] >= t).sum() / npos) for t in ts]
    fpr = [0.0] + [float((pp[~yy] >= t).sum() / nneg) for t in ts]
    return np.asarray(fpr), np.asarray(tpr)
