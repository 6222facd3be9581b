"""Multi-reader multi-case (MRMC) analysis of AUROC: Obuchowski-Rockette with Hillis's degrees of freedom.

The standard analysis of a reader study in which every reader reads every case in every modality
(here: without and with the AI). It is the method of the OR-DBM MRMC software, of RJafroc's
``StSignificanceTesting(dataset, FOM = "Wilcoxon", method = "OR")`` and of MRMCaov's ``mrmc()``:

- the figure of merit is each reader's empirical (trapezoidal, Wilcoxon) AUROC in each modality,
  ``theta[t, r]``, from the reader's scores of the cases (ties count one half);
- the case-sampling covariance of those AUROCs is estimated by the jackknife over cases (the
  default, as RJafroc and MRMCaov) or by DeLong's method, and averaged into the Obuchowski-Rockette
  error variance ``Var`` and covariances ``Cov1`` (same reader, different modality), ``Cov2``
  (different reader, same modality) and ``Cov3`` (different reader, different modality);
- the modality x reader ANOVA of ``theta`` gives ``MS(T)``, ``MS(R)`` and ``MS(T:R)``;
- **random readers and random cases** (RRRC; Obuchowski & Rockette 1995, Hillis 2007, Hillis et al.
  2008): ``F = MS(T) / (MS(T:R) + R max(Cov2 - Cov3, 0))`` on ``T - 1`` and the Hillis denominator
  degrees of freedom ``ddf = (MS(T:R) + R max(Cov2 - Cov3, 0))^2 / (MS(T:R)^2 / ((T - 1)(R - 1)))``;
  the CI of a difference of reader-averaged AUROCs is ``+/- t(ddf) sqrt(2 / R * denominator)``;
- **fixed readers, random cases** (FRRC): ``chi2 = (T - 1) MS(T) / (Var - Cov1 + (R - 1)
  max(Cov2 - Cov3, 0))`` with normal CIs, plus each reader's own change with its CI (from that
  reader's jackknife / DeLong variances): the reader-level effects, case-sampling noise included;
- **random readers, fixed cases** (RRFC): ``F = MS(T) / MS(T:R)`` on ``T - 1, (T - 1)(R - 1)``.

The reader x modality variance component ``VarTR = MS(T:R) - Var + Cov1 + Cov2 - Cov3`` is the
spread of the AI effect between readers net of case noise: with two modalities the SD of the
readers' true effects is ``sqrt(2 VarTR)`` (:attr:`MRMCResult.sd_effect_between_readers`).

Inputs: a long table (one row per reader, case and modality, :func:`ratings_array`) or the reader
study's paired reads (one row per reader and case with ``score_pre`` / ``score_post``,
:func:`from_paired_reads`, as :func:`cds.studies.reader_study.paired_reads` makes from the review
log); any source of reads in that shape can feed :func:`mrmc_paired`. Only cases read by every
reader in every modality enter (the factorial design the method needs); the rest are counted in
:attr:`MRMCResult.left_out`.

Checked (tests/test_mrmc.py) against the published analysis of the Van Dyke et al. (1993) data
(5 readers, 114 cases, cine vs spin-echo MRI), RJafroc ``dataset02`` / ``VanDyke.lrc``: difference
-0.04380032, F 4.456319, ddf 15.25967, p 0.05166569, 95 % CI -0.0879595 to 0.000358854.

References: Obuchowski N. A., Rockette H. E. Commun Stat Simul Comput 24:285-308 (1995); Hillis S. L.
Stat Med 26:596-619 (2007); Hillis S. L., Berbaum K. S., Metz C. E. Acad Radiol 15:647-661 (2008);
DeLong E. R. et al. Biometrics 44:837-845 (1988).

>>> truth = [0, 0, 0, 1, 1, 1]
>>> scores = [[[1, 2, 3, 2, 4, 5], [1, 3, 2, 3, 5, 4]],     # modality A: readers 1, 2
...           [[1, 1, 2, 3, 4, 5], [2, 1, 1, 4, 5, 3]]]     # modality B
>>> r = or_analysis(scores, truth, modalities=("A", "B"))
>>> r.auc.round(4).to_dict()
{'A': {'reader-1': 0.8333, 'reader-2': 0.9444}, 'B': {'reader-1': 1.0, 'reader-2': 1.0}}
>>> row = r.test().set_index("analysis").loc["RRRC"]
>>> round(float(row.estimate), 4), row.comparison
(0.1111, 'B - A')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ParameterError

__all__ = [
    "COV_METHODS",
    "PAIRED_MODALITIES",
    "MRMCResult",
    "empirical_auc",
    "auc_covariance",
    "ratings_array",
    "from_paired_reads",
    "or_analysis",
    "mrmc_paired",
    "simulate_paired_scores",
]

#: Covariance estimators of the reader AUROCs.
COV_METHODS = ("jackknife", "delong")
#: The two modalities of a before / after-AI reader study, in order (differences are "with - without").
PAIRED_MODALITIES = ("without AI", "with AI")


# --------------------------------------------------------------------------------- AUROC and its covariance
def _structural(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's structural components: ``v10`` per positive, ``v01`` per negative."""
    pos, neg = s[y], s[~y]
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, "left")
    tied = np.searchsorted(neg_sorted, pos, "right") - below
    v10 = (below + 0.5 * tied) / len(neg)
    above_lo = np.searchsorted(pos_sorted, neg, "right")
    tied0 = above_lo - np.searchsorted(pos_sorted, neg, "left")
    v01 = (len(pos) - above_lo + 0.5 * tied0) / len(pos)
    return float(v10.mean()), v10, v01


def _check_truth(truth: Any, where: str = "truth") -> np.ndarray:
    y = np.asarray(truth)
    if y.ndim != 1 or not np.isin(y, [0, 1]).all():
        raise ParameterError(where, "must be a 1-D array of 0/1")
    y = y.astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 < 2 or n0 < 2:
        raise ParameterError(where, f"{n1} positive and {n0} negative case(s); the MRMC analysis needs at least 2 of each")
    return y


def empirical_auc(truth: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Empirical (trapezoidal, Wilcoxon) AUROC; ties between a positive and a negative count one half.

    >>> empirical_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])
    0.875
    """
    y = np.asarray(truth).astype(bool)
    s = np.asarray(scores, dtype=float)
    if not y.any() or y.all():
        return float("nan")
    return _structural(y, s)[0]


def auc_covariance(scores: np.ndarray | Sequence[Sequence[float]], truth: Sequence[int] | np.ndarray,
                   method: str = "jackknife") -> tuple[np.ndarray, np.ndarray]:
    """``(auc, cov)``: the empirical AUROC of each row of ``scores`` (``M x K``, one row per reader and
    modality, the same ``K`` cases) and their ``M x M`` case-sampling covariance.

    ``jackknife``: ``(K - 1) / K * sum_k (theta_(k) - mean)(theta'_(k) - mean')`` over the ``K``
    leave-one-case-out AUROCs (RJafroc's and MRMCaov's ``jackknife``); ``delong``: ``S10 / n1 +
    S01 / n0`` from the structural components (DeLong et al. 1988).

    >>> auc, cov = auc_covariance([[1, 2, 3, 4], [1, 3, 2, 4]], [0, 0, 1, 1], "delong")
    >>> auc.tolist(), cov.shape
    ([1.0, 0.75], (2, 2))
    """
    if method not in COV_METHODS:
        raise ParameterError("cov", f"{method!r}: use one of {', '.join(COV_METHODS)}")
    y = _check_truth(truth)
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] != len(y):
        raise ParameterError("scores", f"shape {s.shape}: expected (readers x modalities, {len(y)} cases)")
    if not np.isfinite(s).all():
        raise ParameterError("scores", "holds missing or non-finite scores")
    n1, n0 = int(y.sum()), int((~y).sum())
    parts = [_structural(y, row) for row in s]
    auc = np.array([p[0] for p in parts])
    if method == "delong":
        v10 = np.stack([p[1] for p in parts])
        v01 = np.stack([p[2] for p in parts])
        cov = np.atleast_2d(np.cov(v10)) / n1 + np.atleast_2d(np.cov(v01)) / n0
        return auc, cov
    k = len(y)
    jk = np.empty_like(s)
    for m, (a, v10, v01) in enumerate(parts):
        jk[m, y] = (n1 * a - v10) / (n1 - 1)
        jk[m, ~y] = (n0 * a - v01) / (n0 - 1)
    d = jk - jk.mean(axis=1, keepdims=True)
    return auc, (k - 1) / k * (d @ d.T)


# ------------------------------------------------------------------------------------------------- inputs
def ratings_array(long: pd.DataFrame, *, truth: str = "truth", score: str = "score", reader: str = "reader",
                  case: str = "case", modality: str = "modality", modalities: Sequence[str] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, int]]:
    """``(scores[T, R, K], truth[K], modalities, readers, cases, left_out)`` from a long table.

    One row per reader, case and modality. Cases not read by every reader in every modality are left
    out (counted in ``left_out["cases_not_fully_crossed"]``); a case's truth must be the same in all
    its rows. ``modalities`` fixes their order (differences are later minus earlier); default: sorted.

    >>> long = pd.DataFrame({"reader": ["a"] * 4 + ["b"] * 4, "case": ["c1", "c2"] * 4,
    ...                      "modality": (["m1"] * 2 + ["m2"] * 2) * 2, "truth": [0, 1] * 4,
    ...                      "score": [1, 2, 1, 3, 2, 2, 1, 5]})
    >>> s, y, mods, readers, cases, left = ratings_array(long)
    >>> s.shape, y.tolist(), mods, readers, left
    ((2, 2, 2), [0, 1], ('m1', 'm2'), ('a', 'b'), {'cases_not_fully_crossed': 0})
    """
    for col in (truth, score, reader, case, modality):
        if col not in long.columns:
            raise ParameterError("long", f"missing column {col!r}")
    d = long[[reader, case, modality, truth, score]].copy()
    d[[reader, case, modality]] = d[[reader, case, modality]].astype(str)
    mods = tuple(str(m) for m in modalities) if modalities is not None else tuple(sorted(d[modality].unique()))
    unknown = sorted(set(d[modality]) - set(mods))
    if unknown:
        raise ParameterError("modalities", f"{unknown} in column {modality!r} are not among {list(mods)}")
    if len(mods) < 2:
        raise ParameterError("modalities", f"{list(mods)}: an MRMC comparison needs at least 2 modalities")
    if d.duplicated([reader, case, modality]).any():
        r0 = d[d.duplicated([reader, case, modality])].iloc[0]
        raise ParameterError("long", f"reader {r0[reader]!r} read case {r0[case]!r} in {r0[modality]!r} twice")
    t_per_case = d.groupby(case)[truth].nunique()
    if (t_per_case > 1).any():
        raise ParameterError("long", f"case {t_per_case[t_per_case > 1].index[0]!r} has more than one truth value")
    readers = tuple(sorted(d[reader].unique()))
    n_cells = d.groupby(case).size()
    full = n_cells.index[n_cells == len(readers) * len(mods)]
    cases = tuple(sorted(full))
    wide = d[d[case].isin(full)].pivot(index=[modality, reader], columns=case, values=score)
    idx = pd.MultiIndex.from_product([mods, readers])
    s = wide.reindex(index=idx, columns=list(cases)).to_numpy(float).reshape(len(mods), len(readers), len(cases))
    y = d.groupby(case)[truth].first().reindex(list(cases)).to_numpy().astype(int)
    return s, y, mods, readers, cases, {"cases_not_fully_crossed": int(len(n_cells) - len(full))}


def from_paired_reads(paired: pd.DataFrame) -> pd.DataFrame:
    """The reader study's paired reads (one row per reader and case: ``reader``, ``finding_id``,
    ``truth``, ``score_pre``, ``score_post``) as a long table for :func:`ratings_array`, modalities
    :data:`PAIRED_MODALITIES`.

    >>> p = pd.DataFrame({"reader": ["a"], "finding_id": ["f1"], "truth": [1], "score_pre": [40.0],
    ...                   "score_post": [70.0]})
    >>> from_paired_reads(p)[["modality", "score"]].to_dict("list")
    {'modality': ['without AI', 'with AI'], 'score': [40.0, 70.0]}
    """
    need = ["reader", "finding_id", "truth", "score_pre", "score_post"]
    missing = [c for c in need if c not in paired.columns]
    if missing:
        raise ParameterError("paired", f"missing column(s) {', '.join(missing)} (use reader_study.paired_reads)")
    base = paired[["reader", "finding_id", "truth"]].rename(columns={"finding_id": "case"})
    parts = [base.assign(modality=mod, score=paired[col].to_numpy(float))
             for mod, col in zip(PAIRED_MODALITIES, ("score_pre", "score_post"), strict=True)]
    out = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(PAIRED_MODALITIES)}
    out = out.sort_values(["reader", "case"], kind="stable").sort_values("modality", key=lambda c: c.map(order),
                                                                         kind="stable")
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- analysis
def _mean_pairs(cov: np.ndarray, t_idx: np.ndarray, r_idx: np.ndarray, same_t: bool, same_r: bool) -> float:
    mask = (t_idx[:, None] == t_idx[None, :]) == same_t
    mask &= (r_idx[:, None] == r_idx[None, :]) == same_r
    if same_t and same_r:
        return float(np.diag(cov).mean())
    return float(cov[mask].mean()) if mask.any() else 0.0


@dataclass(frozen=True)
class MRMCResult:
    """Everything the Obuchowski-Rockette analysis computes; tables via :meth:`test`, :meth:`modalities_table`,
    :meth:`readers_table` and :meth:`variance_components`."""

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    n_cases: int
    n_positive: int
    cov_method: str
    alpha: float
    auc: pd.DataFrame  # readers x modalities
    cov: np.ndarray  # (T*R) x (T*R), modality-major
    components: dict[str, float]
    left_out: dict[str, int] = field(default_factory=dict)

    # -- derived pieces
    @property
    def n_readers(self) -> int:
        """Number of readers."""
        return len(self.readers)

    @property
    def sd_effect_between_readers(self) -> float:
        """SD of the readers' true change between two modalities, ``sqrt(2 max(VarTR, 0))`` (OR model)."""
        return float(np.sqrt(2.0 * max(self.components["VarTR"], 0.0)))

    def _cov_block(self, t: int, t2: int) -> np.ndarray:
        r = self.n_readers
        return self.cov[t * r:(t + 1) * r, t2 * r:(t2 + 1) * r]

    def _cov2_i(self, t: int) -> float:
        b = self._cov_block(t, t)
        r = self.n_readers
        return float((b.sum() - np.trace(b)) / (r * (r - 1))) if r > 1 else 0.0

    def _ms_r_i(self, t: int) -> float:
        th = self.auc.iloc[:, t].to_numpy(float)
        return float(th.var(ddof=1)) if len(th) > 1 else float("nan")

    # -- tables
    def test(self) -> pd.DataFrame:
        """One row per analysis (RRRC, FRRC, RRFC) and modality pair: the change in reader-averaged
        AUROC (later - earlier modality), its SE, CI and p (``t`` on ``df``, or normal), and the global
        test of equal modalities (``statistic``, ``ndf``, ``ddf``, ``global_p_value``); with two
        modalities the pair's p is the global p."""
        from scipy import stats

        c = self.components
        t_n, r_n = len(self.modalities), self.n_readers
        means = self.auc.mean(axis=0).to_numpy(float)
        z = stats.norm.ppf(1 - self.alpha / 2)
        rows: list[dict[str, Any]] = []
        cov_gap = max(c["Cov2"] - c["Cov3"], 0.0)
        ndf = t_n - 1

        def pair_rows(analysis: str, se: float, df: float, stat_name: str, statistic: float, ddf: float,
                      p: float, note: str) -> None:
            for a, b in combinations(range(t_n), 2):
                est = float(means[b] - means[a])
                if np.isfinite(se) and se > 0:
                    q = z if not np.isfinite(df) else stats.t.ppf(1 - self.alpha / 2, df)
                    lo, hi = est - q * se, est + q * se
                    dist = stats.norm if not np.isfinite(df) else stats.t(df)
                    p_pair = float(2 * dist.sf(abs(est) / se))
                else:
                    lo = hi = p_pair = float("nan")
                rows.append({"analysis": analysis, "comparison": f"{self.modalities[b]} - {self.modalities[a]}",
                             "estimate": est, "std_err": se, "df": df, "ci_lower": lo, "ci_upper": hi,
                             "p_value": p_pair, "statistic_name": stat_name, "statistic": statistic, "ndf": ndf,
                             "ddf": ddf, "global_p_value": p, "note": note})

        # random readers, random cases (Hillis ddf)
        den = c["MS_TR"] + r_n * cov_gap
        if r_n < 2:
            pair_rows("RRRC", float("nan"), float("nan"), "F", float("nan"), float("nan"), float("nan"),
                      "needs at least 2 readers")
        elif den <= 0:
            pair_rows("RRRC", 0.0, float("nan"), "F", float("nan"), float("nan"), float("nan"),
                      "no variation between modalities (identical reads)")
        else:
            ddf = den ** 2 / (c["MS_TR"] ** 2 / ((t_n - 1) * (r_n - 1))) if c["MS_TR"] > 0 else float("inf")
            f = c["MS_T"] / den
            p = float(stats.f.sf(f, ndf, ddf)) if np.isfinite(ddf) else float(stats.chi2.sf(f * ndf, ndf))
            pair_rows("RRRC", float(np.sqrt(2.0 * den / r_n)), ddf, "F", float(f), float(ddf), p, "")
        # fixed readers, random cases
        den_f = c["Var"] - c["Cov1"] + (r_n - 1) * cov_gap
        if den_f <= 0:
            pair_rows("FRRC", 0.0, float("inf"), "chi2", float("nan"), float("inf"), float("nan"),
                      "no variation between modalities (identical reads)")
        else:
            chi = ndf * c["MS_T"] / den_f
            pair_rows("FRRC", float(np.sqrt(2.0 * den_f / r_n)), float("inf"), "chi2", float(chi), float("inf"),
                      float(stats.chi2.sf(chi, ndf)), "")
        # random readers, fixed cases
        ddf_c = float((t_n - 1) * (r_n - 1))
        if r_n < 2:
            pair_rows("RRFC", float("nan"), float("nan"), "F", float("nan"), float("nan"), float("nan"),
                      "needs at least 2 readers")
        elif c["MS_TR"] <= 0:
            pair_rows("RRFC", 0.0, ddf_c, "F", float("nan"), ddf_c, float("nan"),
                      "no reader x modality variation")
        else:
            f = c["MS_T"] / c["MS_TR"]
            pair_rows("RRFC", float(np.sqrt(2.0 * c["MS_TR"] / r_n)), ddf_c, "F", float(f), ddf_c,
                      float(stats.f.sf(f, ndf, ddf_c)), "")
        return pd.DataFrame(rows)

    def modalities_table(self) -> pd.DataFrame:
        """Reader-averaged AUROC of each modality with its CI under each analysis (RRRC: Hillis df
        ``(R - 1) (MS(R)_i + R max(Cov2_i, 0))^2 / MS(R)_i^2``; FRRC: normal; RRFC: ``R - 1`` df)."""
        from scipy import stats

        r_n = self.n_readers
        rows = []
        for t, mod in enumerate(self.modalities):
            est = float(self.auc.iloc[:, t].mean())
            ms_r, cov2 = self._ms_r_i(t), max(self._cov2_i(t), 0.0)
            var_i = float(np.diag(self._cov_block(t, t)).mean())
            out: list[tuple[str, float, float]] = []
            if r_n >= 2 and ms_r + r_n * cov2 > 0:
                den = ms_r + r_n * cov2
                df = den ** 2 / ms_r ** 2 * (r_n - 1) if ms_r > 0 else float("inf")
                out.append(("RRRC", float(np.sqrt(den / r_n)), df))
            out.append(("FRRC", float(np.sqrt((var_i + (r_n - 1) * cov2) / r_n)), float("inf")))
            if r_n >= 2:
                out.append(("RRFC", float(np.sqrt(ms_r / r_n)), float(r_n - 1)))
            for analysis, se, df in out:
                q = stats.norm.ppf(1 - self.alpha / 2) if not np.isfinite(df) else stats.t.ppf(1 - self.alpha / 2, df)
                rows.append({"analysis": analysis, "modality": mod, "estimate": est, "std_err": se, "df": df,
                             "ci_lower": est - q * se, "ci_upper": est + q * se, "Var_i": var_i,
                             "Cov2_i": self._cov2_i(t), "MS_R_i": ms_r})
        return pd.DataFrame(rows)

    def readers_table(self) -> pd.DataFrame:
        """Each reader's AUROC per modality and change (later - earlier) with its SE, normal CI and p
        from that reader's own case-sampling (co)variances (the FRRC reader-specific analysis)."""
        from scipy import stats

        z = stats.norm.ppf(1 - self.alpha / 2)
        r_n = self.n_readers
        rows = []
        for j, reader in enumerate(self.readers):
            for a, b in combinations(range(len(self.modalities)), 2):
                ia, ib = a * r_n + j, b * r_n + j
                var = self.cov[ia, ia] + self.cov[ib, ib] - 2.0 * self.cov[ia, ib]
                se = float(np.sqrt(max(var, 0.0)))
                est = float(self.auc.iloc[j, b] - self.auc.iloc[j, a])
                p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else float("nan")
                rows.append({"reader": reader, "comparison": f"{self.modalities[b]} - {self.modalities[a]}",
                             f"auroc_{self.modalities[a]}": float(self.auc.iloc[j, a]),
                             f"auroc_{self.modalities[b]}": float(self.auc.iloc[j, b]),
                             "change": est, "std_err": se, "ci_lower": est - z * se if se > 0 else est,
                             "ci_upper": est + z * se if se > 0 else est, "p_value": p})
        return pd.DataFrame(rows)

    def variance_components(self) -> pd.DataFrame:
        """The OR error variance and covariances (with correlations ``Cov_i / Var``), the reader and
        reader x modality variance components and the ANOVA mean squares."""
        c = self.components
        rows = [(k, c[k], c[k] / c["Var"] if k.startswith("Cov") and c["Var"] > 0 else float("nan"))
                for k in ("Var", "Cov1", "Cov2", "Cov3", "VarR", "VarTR", "MS_T", "MS_R", "MS_TR")]
        return pd.DataFrame(rows, columns=["component", "estimate", "correlation"])


def or_analysis(scores: np.ndarray | Sequence[Any], truth: Sequence[int] | np.ndarray,
                modalities: Sequence[str] | None = None, readers: Sequence[str] | None = None,
                cov: str = "jackknife", alpha: float = 0.05, left_out: dict[str, int] | None = None) -> MRMCResult:
    """Obuchowski-Rockette MRMC analysis of ``scores[T, R, K]`` (modality, reader, case) against ``truth[K]``.

    ``cov``: ``jackknife`` (default) or ``delong``. See the module docstring for the formulas.
    """
    if not 0.0 < alpha < 1.0:
        raise ParameterError("alpha", f"{alpha!r}: use a number between 0 and 1")
    s = np.asarray(scores, dtype=float)
    if s.ndim != 3:
        raise ParameterError("scores", f"shape {s.shape}: expected (modalities, readers, cases)")
    t_n, r_n, k = s.shape
    if t_n < 2:
        raise ParameterError("scores", "needs at least 2 modalities")
    if r_n < 1:
        raise ParameterError("scores", "no readers")
    mods = tuple(str(m) for m in modalities) if modalities is not None else tuple(f"modality-{i + 1}" for i in range(t_n))
    rdrs = tuple(str(r) for r in readers) if readers is not None else tuple(f"reader-{j + 1}" for j in range(r_n))
    if len(mods) != t_n or len(rdrs) != r_n:
        raise ParameterError("modalities", f"{len(mods)} modality / {len(rdrs)} reader names for scores of shape {s.shape}")
    y = _check_truth(truth)
    if len(y) != k:
        raise ParameterError("truth", f"{len(y)} values for {k} cases")
    auc_flat, cv = auc_covariance(s.reshape(t_n * r_n, k), y, cov)
    theta = auc_flat.reshape(t_n, r_n)
    t_idx = np.repeat(np.arange(t_n), r_n)
    r_idx = np.tile(np.arange(r_n), t_n)
    var = _mean_pairs(cv, t_idx, r_idx, True, True)
    cov1 = _mean_pairs(cv, t_idx, r_idx, False, True)
    cov2 = _mean_pairs(cv, t_idx, r_idx, True, False)
    cov3 = _mean_pairs(cv, t_idx, r_idx, False, False)
    grand = theta.mean()
    mt, mr = theta.mean(axis=1), theta.mean(axis=0)
    ms_t = r_n * float(((mt - grand) ** 2).sum()) / (t_n - 1)
    ms_r = t_n * float(((mr - grand) ** 2).sum()) / (r_n - 1) if r_n > 1 else float("nan")
    resid = theta - mt[:, None] - mr[None, :] + grand
    ms_tr = float((resid ** 2).sum()) / ((t_n - 1) * (r_n - 1)) if r_n > 1 else float("nan")
    var_tr = ms_tr - var + cov1 + cov2 - cov3
    var_r = (ms_r - var_tr - var - (t_n - 1) * cov1 + cov2 + (t_n - 1) * cov3) / t_n
    comps = {"Var": var, "Cov1": cov1, "Cov2": cov2, "Cov3": cov3, "VarR": float(var_r), "VarTR": float(var_tr),
             "MS_T": ms_t, "MS_R": ms_r, "MS_TR": ms_tr}
    auc = pd.DataFrame(theta.T, index=pd.Index(rdrs, name="reader"), columns=list(mods))
    return MRMCResult(mods, rdrs, int(k), int(y.sum()), cov, float(alpha), auc, cv, comps, dict(left_out or {}))


def mrmc_paired(paired: pd.DataFrame, cov: str = "jackknife", alpha: float = 0.05) -> MRMCResult:
    """:func:`or_analysis` of paired before / with-AI reads (:func:`from_paired_reads`); the change is
    ``with AI - without AI``. Cases not read by every reader are left out (``result.left_out``)."""
    s, y, mods, readers, _, left = ratings_array(from_paired_reads(paired), modalities=PAIRED_MODALITIES)
    if s.shape[2] == 0:
        raise ParameterError("paired", "no case was read by every reader (the MRMC analysis needs a fully crossed set)")
    return or_analysis(s, y, mods, readers, cov=cov, alpha=alpha, left_out=left)


# ------------------------------------------------------------------------------------------------ simulation
def simulate_paired_scores(n_readers: int = 6, n_cases: int = 100, auc_without: float = 0.80,
                           auc_with: float = 0.85, prevalence: float = 0.5, reader_sd: float = 0.25,
                           case_sd: float = 0.7, seed: int = 0) -> pd.DataFrame:
    """SIMULATED paired reads with a known true AUROC change (a Roe-Metz-type model), for checking the analysis.

    Score of reader ``r``, case ``k``, modality ``t``: ``mu_tr y_k + c_k + e_trk`` with a case effect
    ``c_k ~ N(0, case_sd)`` shared by both modalities and all readers, ``e ~ N(0, 1)`` and
    ``mu_tr = mu_t + delta_r``, ``delta_r ~ N(0, reader_sd)`` (reader skill). Reader ``r``'s true AUROC
    is ``Phi(mu_tr / sqrt(2 (1 + case_sd^2)))``; ``mu_t`` is set so the reader-population mean AUROC
    (Gauss-Hermite over ``delta``) equals ``auc_without`` / ``auc_with``. Columns as
    :func:`cds.studies.reader_study.paired_reads` needs for :func:`mrmc_paired`, ``simulated=True``;
    ``df.attrs["true_change"] = auc_with - auc_without``.

    >>> p = simulate_paired_scores(3, 20, seed=1)
    >>> len(p), p.attrs["true_change"], bool(p["simulated"].all())
    (60, 0.05, True)
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    for name, v in (("auc_without", auc_without), ("auc_with", auc_with)):
        if not 0.5 <= v < 1.0:
            raise ParameterError(name, f"{v!r}: use 0.5 to < 1")
    if not 0.0 < prevalence < 1.0:
        raise ParameterError("prevalence", f"{prevalence!r}: use a number between 0 and 1")
    if n_readers < 1 or n_cases < 4:
        raise ParameterError("n_cases", "needs at least 1 reader and 4 cases")
    scale = np.sqrt(2.0 * (1.0 + case_sd ** 2))
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()

    def mean_auc(mu: float) -> float:
        return float((weights * norm.cdf((mu + reader_sd * nodes) / scale)).sum())

    mu = [brentq(lambda m, a=a: mean_auc(m) - a, -20.0, 40.0) for a in (auc_without, auc_with)]
    rng = np.random.default_rng([seed, 17])
    n_pos = max(2, min(n_cases - 2, int(round(prevalence * n_cases))))
    y = np.zeros(n_cases, int)
    y[rng.permutation(n_cases)[:n_pos]] = 1
    c = rng.normal(0.0, case_sd, n_cases)
    delta = rng.normal(0.0, reader_sd, n_readers)
    rows = []
    for r in range(n_readers):
        s0 = (mu[0] + delta[r]) * y + c + rng.normal(0.0, 1.0, n_cases)
        s1 = (mu[1] + delta[r]) * y + c + rng.normal(0.0, 1.0, n_cases)
        for k in range(n_cases):
            rows.append({"reader": f"sim-reader-{r + 1:02d}", "finding_id": f"sim-case-{k:04d}", "truth": int(y[k]),
                         "score_pre": float(s0[k]), "score_post": float(s1[k]), "simulated": True})
    out = pd.DataFrame(rows)
    out.attrs["true_change"] = round(auc_with - auc_without, 12)
    out.attrs["true_auc"] = {PAIRED_MODALITIES[0]: auc_without, PAIRED_MODALITIES[1]: auc_with}
    return out
