"""Probability calibration of binary classifiers: temperature scaling, isotonic regression, reliability.

A model whose AUROC is good can still be badly *calibrated*: among cases it scores 0.8, far more or
far fewer than 80 % may be positive. This module fits a monotone map from the model's score to a
calibrated probability on cases the model was not trained on, and measures calibration:

- :func:`fit_calibrator` with ``method``:

  * ``"temperature"`` (Guo et al. 2017): ``p' = sigmoid(logit(p) / T)``, one parameter ``T > 0``
    fitted by minimising the negative log-likelihood. Keeps the ranking (AUROC) and, with the
    threshold mapped through the same function, every decision.
  * ``"isotonic"`` (Zadrozny & Elkan 2002): the non-decreasing step function of ``p`` that best
    fits the labels (``sklearn.isotonic.IsotonicRegression``), linearly interpolated between its
    breakpoints. Plain isotonic maps have flat steps that tie cases and change the AUROC; here the
    map is blended with the identity, ``p' = (1 - eps) iso(p) + eps p`` (``eps = 1e-3``), so it is
    strictly increasing: the ranking (AUROC) and every decision at a mapped threshold are kept,
    and gradients (GradCAM) still flow.
  * ``"none"``: the identity (a baseline).

- :func:`reliability_curve`, :func:`expected_calibration_error` (ECE, equal-width bins: the
  case-weighted mean gap between mean predicted probability and observed frequency),
  :func:`brier_score`, :func:`calibration_table` (before / after with bootstrap 95 % CIs) and
  :func:`plot_reliability` (the reliability diagram).
- :func:`calibrated_network`: a torch module wrapping a one-logit network so that its output logit
  is already calibrated. A bundle whose ``network_def`` is this wrapper gives calibrated
  probabilities through every existing ``predict``/``evaluate``; its card records the calibrator
  (:meth:`Calibrator.to_dict`).

numpy and scikit-learn only; torch is imported inside :func:`calibrated_network`, matplotlib inside
:func:`plot_reliability`.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> true_logit = rng.normal(0.0, 1.5, 4000)
>>> y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
>>> p_over = 1 / (1 + np.exp(-2.5 * true_logit))       # an over-confident model: logits 2.5x too large
>>> cal = fit_calibrator("temperature", y, p_over)
>>> round(cal.params["temperature"], 1)
2.5
>>> expected_calibration_error(y, cal.transform(p_over)) < expected_calibration_error(y, p_over)
True
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ParameterError

__all__ = [
    "METHODS",
    "Calibrator",
    "fit_calibrator",
    "fit_temperature",
    "logit",
    "reliability_curve",
    "expected_calibration_error",
    "brier_score",
    "calibration_table",
    "plot_reliability",
    "calibrated_network",
]

METHODS = ("none", "temperature", "isotonic")
#: Probabilities are clipped to [EPS, 1 - EPS] before taking logits.
EPS = 1e-7
#: Weight of the identity in the blended isotonic map (keeps it strictly increasing).
ISOTONIC_BLEND = 1e-3


def logit(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.

    >>> logit([0.5, 0.9]).round(4).tolist()
    [0.0, 2.1972]
    """
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_labels_scores(y: Any, p: Any, where: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(yy) != len(pp):
        raise ParameterError(where, f"{len(pp)} scores for {len(yy)} labels")
    if len(yy) == 0:
        raise ParameterError(where, "no cases")
    if not np.all(np.isin(yy, (0, 1))):
        raise ParameterError("labels", "labels must be 0/1")
    if not np.all(np.isfinite(pp)) or pp.min() < 0.0 or pp.max() > 1.0:
        raise ParameterError(where, "probabilities must be finite numbers in [0, 1]")
    return yy.astype(int), pp


def fit_temperature(y: Sequence[int], logits: Sequence[float]) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``sigmoid(logits / T)``.

    Searched over ``log T`` in [-5, 5] (bounded scalar minimisation), so ``T`` lies in
    [0.0067, 148].

    >>> fit_temperature([0, 1, 0, 1], [-1.0, 1.0, 1.0, -1.0]) > 100   # uninformative scores: flatten
    True
    """
    from scipy.optimize import minimize_scalar

    yy = np.asarray(y, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        # log(1 + exp(-s)) for y = 1, log(1 + exp(s)) for y = 0, computed stably
        return float(np.mean(np.logaddexp(0.0, -s) * yy + np.logaddexp(0.0, s) * (1.0 - yy)))

    res = minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map from a model probability to a calibrated probability.

    ``params``: ``{}`` for ``none``; ``{"temperature": T}``; or ``{"x": [...], "y": [...],
    "blend": eps}`` (isotonic breakpoints). ``fit`` describes the data it was fitted on.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def transform(self, p: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities for model probabilities ``p`` (any shape)."""
        pp = np.asarray(p, dtype=np.float64)
        if self.method == "none":
            return pp.copy()
        if self.method == "temperature":
            return _sigmoid(logit(pp) / float(self.params["temperature"]))
        if self.method == "isotonic":
            xs, ys = np.asarray(self.params["x"], float), np.asarray(self.params["y"], float)
            eps = float(self.params.get("blend", ISOTONIC_BLEND))
            return (1.0 - eps) * np.interp(pp, xs, ys) + eps * pp
        raise ParameterError("method", f"unknown calibration method {self.method!r}; use one of {METHODS}")

    def transform_threshold(self, t: float | None) -> float | None:
        """The threshold on calibrated probabilities that makes the same decisions as ``t`` did."""
        if t is None:
            return None
        return float(self.transform(np.array([float(t)]))[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in a model card's ``cds.evaluation.calibration``)."""
        return {"method": self.method, "params": _plain(self.params), "fit": _plain(self.fit)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """Inverse of :meth:`to_dict`.

        >>> c = Calibrator("temperature", {"temperature": 2.0})
        >>> Calibrator.from_dict(c.to_dict()).transform([0.9]).round(3).tolist()
        [0.75]
        """
        method = d.get("method")
        if method not in METHODS:
            raise ParameterError("calibration.method", f"{method!r}: use one of {', '.join(METHODS)}")
        return cls(str(method), dict(d.get("params") or {}), dict(d.get("fit") or {}))


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_plain(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x)
    return x


def fit_calibrator(method: str, y: Sequence[int], p: Sequence[float], description: str = "",
                   logits: Sequence[float] | None = None) -> Calibrator:
    """Fit ``method`` (``none``, ``temperature``, ``isotonic``) on labels ``y`` and model probabilities ``p``.

    Fit it on cases the model was NOT trained on and report its effect on yet other cases.
    ``description`` (what the fitting data were) is kept in :attr:`Calibrator.fit`. ``logits``
    (the network's raw outputs, when known) are used by temperature scaling instead of
    ``logit(p)``, which saturates for probabilities within 1e-7 of 0 or 1.

    >>> fit_calibrator("platt", [0, 1], [0.2, 0.8])
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: calibration_method: 'platt' is not a calibration method; use none, temperature, isotonic
    """
    if method not in METHODS:
        raise ParameterError("calibration_method", f"{method!r} is not a calibration method; use "
                                                   f"{', '.join(METHODS)}")
    yy, pp = _check_labels_scores(y, p)
    fit = {"n": int(len(yy)), "n_positive": int(yy.sum()), "description": description}
    if method == "none":
        return Calibrator("none", {}, fit)
    if yy.min() == yy.max():
        raise ParameterError("calibration data", f"all {len(yy)} calibration cases have label {yy[0]}; "
                                                 "need both classes")
    if method == "temperature":
        z = logit(pp) if logits is None else np.asarray(logits, dtype=np.float64).reshape(-1)
        if len(z) != len(yy) or not np.all(np.isfinite(z)):
            raise ParameterError("logits", f"need {len(yy)} finite logits, got {len(z)}")
        return Calibrator("temperature", {"temperature": round(fit_temperature(yy, z), 6)}, fit)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(pp, yy)
    xs = np.asarray(iso.X_thresholds_, float)
    ys = np.asarray(iso.y_thresholds_, float)
    return Calibrator("isotonic", {"x": [round(float(v), 8) for v in xs], "y": [round(float(v), 8) for v in ys],
                                   "blend": ISOTONIC_BLEND}, fit)


# ------------------------------------------------------------------------------- measuring calibration
def reliability_curve(y: Sequence[int], p: Sequence[float], n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of ``p`` over [0, 1]: cases, mean predicted probability, observed positive fraction.

    Empty bins are kept (``n`` = 0, NaN means) so curves of different models line up.

    >>> reliability_curve([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)[["n", "mean_predicted", "observed"]]
       n  mean_predicted  observed
    0  2            0.15       0.0
    1  2            0.80       1.0
    """
    yy, pp = _check_labels_scores(y, p)
    if int(n_bins) < 1:
        raise ParameterError("n_bins", f"must be >= 1, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.searchsorted(edges, pp, side="right") - 1, 0, int(n_bins) - 1)
    rows = []
    for b in range(int(n_bins)):
        m = idx == b
        n = int(m.sum())
        rows.append({"bin_low": float(edges[b]), "bin_high": float(edges[b + 1]), "n": n,
                     "mean_predicted": float(pp[m].mean()) if n else float("nan"),
                     "observed": float(yy[m].mean()) if n else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(y: Sequence[int], p: Sequence[float], n_bins: int = 10) -> float:
    """ECE: ``sum_b (n_b / N) |observed_b - mean_predicted_b|`` over equal-width bins.

    >>> expected_calibration_error([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    0.175
    """
    curve = reliability_curve(y, p, n_bins)
    c = curve[curve["n"] > 0]
    return round(float(np.sum(c["n"] / c["n"].sum() * np.abs(c["observed"] - c["mean_predicted"]))), 12)


def brier_score(y: Sequence[int], p: Sequence[float]) -> float:
    """Mean squared difference between probability and label (lower is better).

    >>> brier_score([0, 1], [0.2, 0.6])
    0.1
    """
    yy, pp = _check_labels_scores(y, p)
    return round(float(np.mean((pp - yy) ** 2)), 12)


def calibration_table(y: Sequence[int], probabilities: Mapping[str, Sequence[float]], n_bins: int = 10,
                      n_boot: int = 1000, seed: int = 0, groups: Sequence[Any] | None = None) -> pd.DataFrame:
    """ECE and Brier score (each with a bootstrap 95 % CI) and the AUROC of each named set of probabilities.

    All columns are computed on the same cases ``y``; ``groups`` (patient ids) makes the bootstrap
    resample whole patients. Rows are named by the keys of ``probabilities`` (e.g. ``before`` /
    ``after``).
    """
    from cds.evaluation.metrics import auroc, bootstrap_ci

    yy = np.asarray(y).astype(int)
    rows = []
    for name, p in probabilities.items():
        _check_labels_scores(yy, p, where=f"probabilities[{name!r}]")
        pp = np.asarray(p, dtype=np.float64)
        ece = bootstrap_ci(lambda a, b: expected_calibration_error(a, b, n_bins), yy, pp, n_boot=n_boot, seed=seed,
                           groups=groups)
        bri = bootstrap_ci(brier_score, yy, pp, n_boot=n_boot, seed=seed, groups=groups)
        rows.append({"probabilities": name, "n": int(len(yy)), "ece": round(ece["value"], 4),
                     "ece_ci95": [round(v, 4) for v in ece["ci95"]], "brier": round(bri["value"], 4),
                     "brier_ci95": [round(v, 4) for v in bri["ci95"]], "auroc": round(auroc(yy, pp), 4),
                     "mean_predicted": round(float(pp.mean()), 4), "observed_rate": round(float(yy.mean()), 4)})
    return pd.DataFrame(rows).set_index("probabilities")


def plot_reliability(y: Sequence[int], probabilities: Mapping[str, Sequence[float]], n_bins: int = 10,
                     title: str = "Reliability diagram", ax: Any = None) -> Any:
    """Reliability diagram (observed vs predicted per bin, marker area ~ cases) with ECE in the legend.

    Returns the matplotlib Figure; a histogram of the scores sits under the curves.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, (ax, hax) = plt.subplots(2, 1, figsize=(5.2, 6.0), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig, hax = ax.figure, None
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for name, p in probabilities.items():
        curve = reliability_curve(y, p, n_bins)
        c = curve[curve["n"] > 0]
        ece = expected_calibration_error(y, p, n_bins)
        line = ax.plot(c["mean_predicted"], c["observed"], marker="o", ms=0, lw=1.5,
                       label=f"{name} (ECE {ece:.3f})")[0]
        ax.scatter(c["mean_predicted"], c["observed"], s=12 + 200 * c["n"] / max(1, c["n"].max()),
                   color=line.get_color(), zorder=3)
        if hax is not None:
            hax.hist(np.asarray(p, float), bins=np.linspace(0, 1, n_bins + 1), histtype="step", lw=1.5,
                     color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed fraction positive")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    if hax is not None:
        hax.set_xlabel("predicted probability")
        hax.set_ylabel("cases")
    else:
        ax.set_xlabel("predicted probability")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- calibrated network
@functools.cache
def _calibrated_class() -> type:
    import torch
    from torch import nn

    class CalibratedNetwork(nn.Module):
        """A one-logit network followed by a calibration map; outputs the calibrated logit."""

        def __init__(self, base: nn.Module, method: str, params: dict[str, Any]) -> None:
            super().__init__()
            if method not in METHODS:
                raise ParameterError("calibration.method", f"{method!r}: use one of {', '.join(METHODS)}")
            self.base = base
            self.method = method
            self.params = dict(params)
            base_layer = getattr(base, "last_layer", None)
            self.last_layer = f"base.{base_layer}" if base_layer else None
            self.n_tabular = getattr(base, "n_tabular", 0)
            if method == "isotonic":
                self.register_buffer("iso_x", torch.tensor(params["x"], dtype=torch.float64), persistent=False)
                self.register_buffer("iso_y", torch.tensor(params["y"], dtype=torch.float64), persistent=False)

        def _isotonic(self, p: torch.Tensor) -> torch.Tensor:
            xs, ys = self.iso_x, self.iso_y
            if len(xs) == 1:
                q = ys.expand_as(p)
            else:
                pc = p.clamp(float(xs[0]), float(xs[-1]))
                i = torch.searchsorted(xs, pc.contiguous(), right=True).clamp(1, len(xs) - 1)
                x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
                w = torch.where(x1 > x0, (pc - x0) / (x1 - x0), torch.zeros_like(pc))
                q = y0 + w * (y1 - y0)
            eps = float(self.params.get("blend", ISOTONIC_BLEND))
            return (1.0 - eps) * q + eps * p

        def forward(self, x: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
            z = self.base(x) if tab is None else self.base(x, tab=tab)
            if self.method == "none":
                return z
            if self.method == "temperature":
                return z / float(self.params["temperature"])
            # float64 output: the blended map's identity term (slope 1e-3) must not be lost to float32 rounding
            p = torch.sigmoid(z.to(torch.float64))
            q = self._isotonic(p).clamp(EPS, 1.0 - EPS)
            return torch.log(q) - torch.log1p(-q)

    return CalibratedNetwork


def calibrated_network(base: Any, method: str, params: dict[str, Any]) -> Any:
    """Wrap a one-logit torch network so that its output is the *calibrated* logit.

    Used as a bundle's ``network_def``::

        {"_target_": "cds.evaluation.calibration.calibrated_network", "method": "temperature",
         "params": {"temperature": 1.8}, "base": {<the original network_def>}}

    MONAI's config parser builds ``base`` first; the weights (``state_dict``) are the base
    network's under the prefix ``base.``. ``forward(x, tab=None)`` passes ``tab`` on, and
    ``last_layer`` points GradCAM at the base network's layer. The isotonic output is float64 (its
    strictly increasing identity term would be lost to float32 rounding).

    >>> import torch
    >>> lin = torch.nn.Linear(1, 1)
    >>> net = calibrated_network(lin, "temperature", {"temperature": 2.0})
    >>> bool(torch.allclose(net(torch.ones(1, 1)), lin(torch.ones(1, 1)) / 2))
    True
    """
    return _calibrated_class()(base, method, params)
