"""cds.studies.mrmc: Obuchowski-Rockette MRMC analysis (Hillis ddf), checked against the published Van Dyke analysis.

The Van Dyke et al. (1993) ratings (tests/data/vandyke/VanDyke.lrc, GPL-3, see its SOURCE.md) are analysed
and every number is compared with the value RJafroc / MRMCaov print, to the precision printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cds.errors import ParameterError
from cds.studies import mrmc
from cds.studies import reader_study as rs

VANDYKE = Path(__file__).resolve().parent / "data" / "vandyke" / "VanDyke.lrc"


def read_lrc(path: Path) -> pd.DataFrame:
    """An OR-DBM MRMC ``.lrc`` file (two modalities) as a long table: reader, modality, case, truth, score."""
    lines = [x.strip() for x in path.read_text().splitlines()]
    modalities = [m.strip('"') for m in lines[2].split()]
    rows, reader, block, i = [], lines[1], 0, 4
    while lines[i] != "#":
        if lines[i] == "*":
            block += 1
            i += 1
            if block % 2 == 0 and lines[i] != "#":  # after a reader's diseased block: the next reader's id
                reader = lines[i]
                i += 1
            continue
        *ratings, case = lines[i].split()
        for m, r in zip(modalities, ratings, strict=True):
            rows.append({"reader": reader, "modality": m, "case": case, "truth": block % 2, "score": float(r)})
        i += 1
    return pd.DataFrame(rows)


def close(value: float, published: str) -> bool:
    """``value`` equals the printed number to the printed precision (half a unit in its last digit)."""
    digits = len(published.split(".")[1]) if "." in published else 0
    return abs(value - float(published)) <= 0.5 * 10.0 ** -digits + 1e-12


@pytest.fixture(scope="module")
def vandyke() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    # modality order ("1", "0"): differences are trt0 - trt1 (cine - spin echo), as RJafroc prints them
    s, y, mods, readers, cases, left = mrmc.ratings_array(read_lrc(VANDYKE), modalities=("1", "0"))
    assert s.shape == (2, 5, 114) and int(y.sum()) == 45 and left == {"cases_not_fully_crossed": 0}
    return s, y, mods, readers


def test_lrc_reader_reads_the_whole_file() -> None:
    d = read_lrc(VANDYKE)
    assert len(d) == 2 * 5 * 114
    assert sorted(d["reader"].unique()) == ["0", "1", "2", "3", "4"]
    assert d.groupby("case")["truth"].first().sum() == 45
    assert set(d["score"]) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_vandyke_jackknife_equals_rjafroc_or_analysis(vandyke) -> None:
    """RJafroc StSignificanceTesting(dataset02, FOM = "Wilcoxon", method = "OR"), as printed in the RJafroc book."""
    s, y, mods, readers = vandyke
    r = mrmc.or_analysis(s, y, mods, readers, cov="jackknife")
    # figures of merit (rows trt0, trt1; readers rdr0-rdr4)
    foms = {"0": ["0.91964573", "0.85877617", "0.90386473", "0.97310789", "0.82979066"],
            "1": ["0.94782609", "0.90531401", "0.92173913", "0.99935588", "0.92995169"]}
    for m, vals in foms.items():
        assert all(close(a, v) for a, v in zip(r.auc[m], vals, strict=True)), m
    c = r.components
    published = {"MS_T": "0.0047961705", "MS_R": "0.00383619999", "MS_TR": "0.00055103062", "VarR": "0.00153499935",
                 "VarTR": "0.00020040252", "Cov1": "0.00034661371", "Cov2": "0.00034407483", "Cov3": "0.00023902837",
                 "Var": "0.00080228827"}
    for k, v in published.items():
        assert close(c[k], v), (k, c[k], v)
    vc = r.variance_components().set_index("component")
    assert close(vc.loc["Cov1", "correlation"], "0.43203138") and close(vc.loc["Cov3", "correlation"], "0.29793328")

    t = r.test().set_index("analysis")
    rrrc, frrc, rrfc = t.loc["RRRC"], t.loc["FRRC"], t.loc["RRFC"]
    assert rrrc.comparison == "0 - 1"
    assert close(rrrc.estimate, "-0.043800322")
    assert close(rrrc.statistic, "4.4563187") and close(rrrc.ddf, "15.259675") and close(rrrc.p_value, "0.051665686")
    assert close(rrrc.global_p_value, "0.051665686") and close(frrc.global_p_value, "0.019279843")
    assert close(rrrc.ci_lower, "-0.087959499") and close(rrrc.ci_upper, "0.00035885444")
    assert close(rrrc.std_err ** 2 * len(readers) / 2, "0.0010762629")  # the F denominator (Error MS)
    assert close(frrc.statistic, "5.4759532") and close(frrc.p_value, "0.019279843")
    assert close(frrc.std_err, "0.018717483")
    assert close(frrc.ci_lower, "-0.080485914") and close(frrc.ci_upper, "-0.0071147303")
    assert close(rrfc.statistic, "8.704") and close(rrfc.p_value, "0.041958752") and rrfc.ddf == 4
    assert close(rrfc.std_err, "0.014846287")
    assert close(rrfc.ci_lower, "-0.085020224") and close(rrfc.ci_upper, "-0.0025804202")

    mt = r.modalities_table().set_index(["analysis", "modality"])
    for m, est, se, df, lo, hi, cov2 in (("0", "0.89703704", "0.033173597", "12.744648", "0.82522360", "0.96885048",
                                          "0.00048396180"),
                                         ("1", "0.94083736", "0.021566368", "12.710190", "0.89413783", "0.98753689",
                                          "0.00020418785")):
        row = mt.loc[("RRRC", m)]
        assert close(row.estimate, est) and close(row.std_err, se) and close(row.df, df)
        assert close(row.ci_lower, lo) and close(row.ci_upper, hi) and close(row.Cov2_i, cov2)
    assert close(mt.loc[("FRRC", "0"), "std_err"], "0.024289710") and close(mt.loc[("FRRC", "1"), "ci_lower"], "0.90795637")
    assert close(mt.loc[("RRFC", "0"), "std_err"], "0.024829936") and close(mt.loc[("RRFC", "1"), "ci_upper"], "0.98568536")
    assert close(mt.loc[("RRRC", "0"), "Var_i"], "0.00101410277") and close(mt.loc[("RRRC", "1"), "MS_R_i"], "0.0013046019")

    # reader-specific (FRRC) differences rdr0-rdr4: estimate, SE, p, CI
    rd = r.readers_table()
    published_readers = [("-0.028180354", "0.025512133", "0.269338854", "-0.078183215", "0.0218225068"),
                         ("-0.046537842", "0.026301827", "0.076831017", "-0.098088476", "0.0050127916"),
                         ("-0.017874396", "0.031209647", "0.566834139", "-0.079044180", "0.0432953879"),
                         ("-0.026247987", "0.017291289", "0.129017153", "-0.060138290", "0.0076423157"),
                         ("-0.100161031", "0.044057460", "0.023000993", "-0.186512066", "-0.0138099949")]
    for row, (est, se, p, lo, hi) in zip(rd.itertuples(index=False), published_readers, strict=True):
        assert close(row.change, est) and close(row.std_err, se) and close(row.p_value, p)
        assert close(row.ci_lower, lo) and close(row.ci_upper, hi)


def test_vandyke_delong_equals_mrmcaov(vandyke) -> None:
    """MRMCaov mrmc(empirical_auc(truth, rating), treatment, reader, case, data = VanDyke, cov = DeLong)."""
    s, y, mods, readers = vandyke
    r = mrmc.or_analysis(s, y, mods, readers, cov="delong")
    c = r.components
    for k, v in {"Var": "0.0007921325", "Cov1": "0.0003420090", "Cov2": "0.0003395265", "Cov3": "0.0002358497",
                 "VarR": "0.0015364254", "VarTR": "0.0002045840"}.items():
        assert close(c[k], v), (k, c[k], v)
    row = r.test().set_index("analysis").loc["RRRC"]
    assert close(row.statistic, "4.484854") and close(row.ddf, "15.06611") and close(row.p_value, "0.05123303")
    assert close(row.std_err, "0.0206825")
    assert close(row.ci_lower, "-0.0878671960") and close(row.ci_upper, "0.0002665519")
    mt = r.modalities_table().set_index(["analysis", "modality"]).loc[("RRRC", "0")]
    assert close(mt.std_err, "0.03307642") and close(mt.df, "12.59597") and close(mt.ci_lower, "0.8253461")


def test_empirical_auc_equals_sklearn_with_ties(vandyke) -> None:
    from sklearn.metrics import roc_auc_score

    s, y, _, _ = vandyke
    for t in range(2):
        for j in range(5):
            assert mrmc.empirical_auc(y, s[t, j]) == pytest.approx(roc_auc_score(y, s[t, j]), abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        yy = rng.integers(0, 2, 37)
        yy[:2] = [0, 1]
        ss = rng.integers(0, 6, 37).astype(float)  # many ties
        assert mrmc.empirical_auc(yy, ss) == pytest.approx(roc_auc_score(yy, ss), abs=1e-12)
    assert np.isnan(mrmc.empirical_auc([1, 1], [0.2, 0.3]))


def test_covariances_equal_their_definitions() -> None:
    """Jackknife: the leave-one-case-out AUROCs recomputed from scratch; DeLong: the full psi-matrix formula."""
    rng = np.random.default_rng(5)
    y = np.array([0] * 9 + [1] * 7)
    s = rng.integers(0, 5, (3, len(y))).astype(float) + y * rng.integers(0, 3, (3, len(y)))
    auc, jk = mrmc.auc_covariance(s, y, "jackknife")
    k = len(y)
    loo = np.array([[mrmc.empirical_auc(np.delete(y, i), np.delete(row, i)) for i in range(k)] for row in s])
    d = loo - loo.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(jk, (k - 1) / k * d @ d.T, rtol=1e-12, atol=1e-15)
    _, dl = mrmc.auc_covariance(s, y, "delong")
    pos, neg = s[:, y == 1], s[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    np.testing.assert_allclose(auc, psi.mean(axis=(1, 2)))
    np.testing.assert_allclose(dl, np.cov(v10) / 7 + np.cov(v01) / 9, rtol=1e-12)


def test_paired_reads_feed_the_same_analysis_and_incomplete_cases_are_counted() -> None:
    p = mrmc.simulate_paired_scores(4, 30, seed=2)
    res = mrmc.mrmc_paired(p)
    s = np.stack([p.pivot(index="reader", columns="finding_id", values=c).to_numpy() for c in ("score_pre", "score_post")])
    y = p.groupby("finding_id")["truth"].first().to_numpy()
    direct = mrmc.or_analysis(s, y, mrmc.PAIRED_MODALITIES, sorted(p.reader.unique()))
    pd.testing.assert_frame_equal(res.test(), direct.test())
    assert res.test().loc[0, "comparison"] == "with AI - without AI"
    # one reader skips one case: that case leaves the analysis (counted), nothing else changes shape
    dropped = p.drop(index=p.index[(p.reader == "sim-reader-02") & (p.finding_id == "sim-case-0003")])
    r2 = mrmc.mrmc_paired(dropped)
    assert r2.n_cases == 29 and r2.left_out == {"cases_not_fully_crossed": 1}


def test_bad_input_names_the_parameter() -> None:
    p = mrmc.simulate_paired_scores(2, 10, seed=0)
    with pytest.raises(ParameterError, match="score_post"):
        mrmc.mrmc_paired(p.drop(columns="score_post"))
    with pytest.raises(ParameterError, match="cov"):
        mrmc.mrmc_paired(p, cov="bootstrap")
    with pytest.raises(ParameterError, match="at least 2 of each"):
        mrmc.mrmc_paired(p.assign(truth=1))
    bad = p.copy()
    bad.loc[bad.index[0], "truth"] = 1 - bad.loc[bad.index[0], "truth"]
    with pytest.raises(ParameterError, match="more than one truth"):
        mrmc.mrmc_paired(bad)
    with pytest.raises(ParameterError, match="twice"):
        mrmc.mrmc_paired(pd.concat([p, p.iloc[:1]]))
    with pytest.raises(ParameterError, match="alpha"):
        mrmc.or_analysis(np.zeros((2, 2, 4)), [0, 0, 1, 1], alpha=1.5)
    with pytest.raises(ParameterError, match="auc_with"):
        mrmc.simulate_paired_scores(auc_with=1.2)


def test_simulated_true_gain_is_covered_and_no_effect_is_not_significant() -> None:
    """Known true AUROC change (Roe-Metz-type simulation): the RRRC 95 % CI covers it in most seeds; with
    no change the test is not significant in most seeds (12 seeds each; about 95 % expected)."""
    covered = not_significant = 0
    for seed in range(12):
        gain = mrmc.simulate_paired_scores(6, 80, auc_without=0.80, auc_with=0.86, seed=seed)
        row = mrmc.mrmc_paired(gain).test().set_index("analysis").loc["RRRC"]
        covered += row.ci_lower <= gain.attrs["true_change"] <= row.ci_upper
        null = mrmc.simulate_paired_scores(6, 80, auc_without=0.80, auc_with=0.80, seed=100 + seed)
        not_significant += mrmc.mrmc_paired(null).test().set_index("analysis").loc["RRRC", "p_value"] >= 0.05
    assert covered >= 10, covered
    assert not_significant >= 10, not_significant
    # a large effect on many cases is found
    big = mrmc.simulate_paired_scores(8, 300, auc_without=0.75, auc_with=0.90, seed=1)
    assert mrmc.mrmc_paired(big).test().set_index("analysis").loc["RRRC", "p_value"] < 0.01


def test_reader_study_mrmc_on_simulated_reads_from_the_review_log(tmp_path: Path) -> None:
    cases = rs.simulated_cases(80, ai_accuracy=0.8, seed=4)
    sim = rs.simulate_readers(cases, tmp_path / "s.jsonl", n_readers=4, seed=4, susceptibility_range=(0.3, 0.8))
    paired = rs.paired_reads(rs.load_reads(sim.store_path), rs.load_truth(sim.truth_path))
    t = rs.mrmc_auroc(paired)
    test = t["test"].set_index(["cases", "analysis"])
    assert (t["test"]["data"] == rs.SIMULATED_LABEL).all() and (t["readers"]["data"] == rs.SIMULATED_LABEL).all()
    assert set(t["test"]["cases"]) == {"all cases", "AI right", "AI wrong"}
    assert test.loc[("AI right", "RRRC"), "change"] > 0 > test.loc[("AI wrong", "RRRC"), "change"]
    n_right = int(paired.groupby("finding_id")["ai_correct"].first().sum())
    assert test.loc[("AI right", "RRRC"), "n_cases"] == n_right
    assert test.loc[("AI wrong", "RRRC"), "n_cases"] == 80 - n_right
    # one place: the MRMC reader AUROCs are per_reader's AUROCs (same score, same cases)
    long = rs.per_reader(paired, n_boot=20).query("metric == 'auroc'").set_index("reader")
    mine = t["readers"].query("cases == 'all cases'").set_index("reader")
    assert (mine["auroc_without_ai"] == long["pre"]).all() and (mine["auroc_with_ai"] == long["post"]).all()
    lo, hi = zip(*mine["change_ci95"], strict=True)
    assert (np.array(lo) <= mine["change"]).all() and (mine["change"] <= np.array(hi)).all()
    f = rs.format_mrmc(t)
    assert list(f.index) == ["all cases", "AI right", "AI wrong"] and (f["data"] == rs.SIMULATED_LABEL).all()
    assert f.loc["all cases", "test"].startswith("F(1, ")
    assert rs.format_mrmc(t, "FRRC").loc["all cases", "test"].startswith("chi2(1)")
    with pytest.raises(ParameterError, match="analysis"):
        rs.format_mrmc(t, "XYZ")


def test_reader_study_mrmc_without_any_ai_effect_and_with_an_unusable_subset(tmp_path: Path) -> None:
    cases = rs.simulated_cases(30, seed=6)
    sim = rs.simulate_readers(cases, tmp_path / "f.jsonl", n_readers=3, seed=6, susceptibility_range=(0.0, 0.0))
    paired = rs.paired_reads(rs.load_reads(sim.store_path), rs.load_truth(sim.truth_path))
    t = rs.mrmc_auroc(paired, cov="delong")
    rrrc = t["test"].set_index(["cases", "analysis"]).loc[("all cases", "RRRC")]
    assert rrrc["change"] == 0 and np.isnan(rrrc["p_value"]) and "identical reads" in rrrc["note"]
    # the AI wrong only on positive cases: that subset has no negatives and is reported, not analysed
    missed = paired.loc[paired.truth == 1, "finding_id"].unique()[:3]
    only_pos_wrong = paired.assign(ai_correct=~paired["finding_id"].isin(missed))
    t2 = rs.mrmc_auroc(only_pos_wrong)
    wrong = t2["test"][t2["test"]["cases"] == "AI wrong"].iloc[0]
    assert "not analysed" in wrong["note"] and "0 negative" in wrong["note"]
    assert "not analysed" in rs.format_mrmc(t2).loc["AI wrong", "note"]
    with pytest.raises(ParameterError, match="cov"):
        rs.mrmc_auroc(paired, cov="bad")
