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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "auroc",
    "auroc_ci",
    "bootstrap_ci",
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
