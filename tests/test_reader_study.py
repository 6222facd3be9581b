"""cds.studies.reader_study: simulated readers written through ReviewStore, and the before/after-AI analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cds.errors import ParameterError
from cds.finding import Finding
from cds.review.store import ReviewStore
from cds.studies import reader_study as rs


def _finding(i: int, p: float, threshold: float = 0.5) -> Finding:
    return Finding(f"p{i}", f"1.2.{i}", "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
                   probability=p, threshold=threshold)


def _hand_study(tmp_path: Path) -> tuple[Path, Path]:
    """4 cases (2 positive); the AI is right on cases 0-2 and wrong on case 3 (a positive it calls negative).

    dr-a reads before AI: present, absent, present(wrong), absent; after AI it follows the AI on every case.
    """
    store = ReviewStore(tmp_path / "reads.jsonl")
    truth = [1, 0, 0, 1]
    ai_p = [0.9, 0.2, 0.1, 0.3]
    pre = [(True, 80), (False, 60), (True, 40), (False, 20)]
    fs = [_finding(i, p) for i, p in enumerate(ai_p)]
    for f, (present, conf) in zip(fs, pre, strict=True):
        store.record_read(f, "dr-a", "pre-ai", present, conf)
        ai_present = f.probability >= 0.5
        store.record_read(f, "dr-a", "post-ai", ai_present, 90)
    pd.DataFrame({"finding_id": [f.id for f in fs], "truth": truth}).to_csv(tmp_path / "truth.csv", index=False)
    return tmp_path / "reads.jsonl", tmp_path / "truth.csv"


def test_per_reader_numbers_by_hand(tmp_path: Path) -> None:
    store, truth = _hand_study(tmp_path)
    reads = rs.load_reads(store)
    assert len(reads) == 8 and not reads["simulated"].any()
    truth_ids = rs.load_truth(truth)["finding_id"].tolist()
    pre_scores = reads[reads.phase == "pre-ai"].set_index("finding_id")["score"]
    assert pre_scores.loc[truth_ids].tolist() == [90.0, 20.0, 70.0, 40.0]
    paired = rs.paired_reads(reads, rs.load_truth(truth))
    assert len(paired) == 4 and paired["ai_correct"].sum() == 3
    assert rs.banner(paired) == "Reads recorded by clinicians in the review log."
    long = rs.per_reader(paired, n_boot=200).set_index("metric")
    # before: sensitivity 1/2 (case 3 missed), specificity 1/2 (case 2 false positive)
    assert long.loc["sensitivity", "pre"] == 0.5 and long.loc["specificity", "pre"] == 0.5
    # with AI (followed everywhere): case 3 missed, case 2 correct -> sens 1/2, spec 1
    assert long.loc["sensitivity", "post"] == 0.5 and long.loc["specificity", "post"] == 1.0
    assert long.loc["specificity", "change"] == 0.5
    # AUROC before from scores: positives 90, 40; negatives 20, 70 -> 3 of 4 pairs ordered
    assert long.loc["auroc", "pre"] == 0.75
    for row in long.itertuples():
        assert row.change_ci95[0] <= row.change <= row.change_ci95[1]
    assert (long["data"] == "real reads").all()
    rw = rs.ai_right_wrong(paired, n_boot=100).set_index(["reader", "ai"])
    assert rw.loc[("dr-a", "AI right"), "accuracy_before"] == round(2 / 3, 4)
    assert rw.loc[("dr-a", "AI right"), "accuracy_with_ai"] == 1.0
    assert rw.loc[("dr-a", "AI wrong"), "accuracy_before"] == 0.0  # case 3 was missed before too
    assert rw.loc[("dr-a", "AI right"), "moved_to_ai"] == 1.0


def test_no_change_gives_zero_change_with_a_zero_ci(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "r.jsonl")
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 30)
    fs = [_finding(i, float(rng.random())) for i in range(30)]
    for f, y in zip(fs, truth, strict=True):
        call = bool(rng.random() < (0.8 if y else 0.2))
        conf = int(rng.integers(0, 101))
        store.record_read(f, "dr-b", "pre-ai", call, conf)
        store.record_read(f, "dr-b", "post-ai", call, conf)
    pd.DataFrame({"finding_id": [f.id for f in fs], "truth": truth}).to_csv(tmp_path / "t.csv", index=False)
    paired = rs.paired_reads(rs.load_reads(tmp_path / "r.jsonl"), rs.load_truth(tmp_path / "t.csv"))
    long = rs.per_reader(paired, n_boot=100)
    assert (long["change"] == 0).all() and all(ci == [0.0, 0.0] for ci in long["change_ci95"])
    assert (long["pre_ci95"].map(lambda c: c[1] - c[0]) > 0).all()


def test_paired_reads_counts_what_it_leaves_out(tmp_path: Path) -> None:
    store, truth = _hand_study(tmp_path)
    s = ReviewStore(store)
    extra = _finding(9, 0.7)
    s.record_read(extra, "dr-a", "pre-ai", True, 50)  # no post-AI read, no truth
    t = rs.load_truth(truth).iloc[:3]
    paired = rs.paired_reads(rs.load_reads(store), t)
    assert len(paired) == 3
    assert paired.attrs["left_out"] == {"reads_without_partner_phase": 1, "reader_cases_without_truth": 1}


def test_load_truth_and_reads_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("finding_id,label\na,1\n")
    with pytest.raises(ParameterError, match="missing column 'truth'"):
        rs.load_truth(bad)
    bad.write_text("finding_id,truth\na,2\n")
    with pytest.raises(ParameterError, match="0/1"):
        rs.load_truth(bad)
    bad.write_text("finding_id,truth\na,1\na,0\n")
    with pytest.raises(ParameterError, match="appears twice"):
        rs.load_truth(bad)
    with pytest.raises(ParameterError, match="truth_path"):
        rs.load_truth(tmp_path / "none.csv")
    with pytest.raises(ParameterError, match="store_path"):
        rs.load_reads(tmp_path / "none.jsonl")


def test_simulated_reads_go_through_review_store_and_are_labelled(tmp_path: Path) -> None:
    cases = rs.simulated_cases(40, prevalence=0.4, ai_accuracy=0.8, seed=3)
    sim = rs.simulate_readers(cases, tmp_path / "sim.jsonl", n_readers=3, seed=3)
    assert sim.n_reads == 2 * 3 * 40
    lines = [json.loads(x) for x in (tmp_path / "sim.jsonl").read_text().splitlines()]
    assert len(lines) == sim.n_reads
    assert all(x["kind"] == "cds-review/1" and x["action"] == "read" for x in lines)
    assert all(x["comment"].startswith(rs.SIMULATED_TAG) for x in lines)
    assert {x["reviewer"]["reference"] for x in lines} == {f"Practitioner/sim-reader-0{i}" for i in (1, 2, 3)}
    store = ReviewStore(tmp_path / "sim.jsonl")
    truth = pd.read_csv(sim.truth_path, dtype={"finding_id": str})
    r = store.reads(truth["finding_id"].iloc[0], "sim-reader-02")
    assert r["pre-ai"]["read"]["phase"] == "pre-ai" and r["post-ai"]["read"]["phase"] == "post-ai"
    assert (sim.readers["data"] == rs.SIMULATED_LABEL).all()
    paired = rs.paired_reads(rs.load_reads(sim.store_path), rs.load_truth(sim.truth_path))
    assert rs.banner(paired).startswith("*** SIMULATED READERS")
    long = rs.per_reader(paired, n_boot=50)
    assert (long["data"] == rs.SIMULATED_LABEL).all()
    assert (rs.format_per_reader(long, "auroc")["data"] == rs.SIMULATED_LABEL).all()
    assert (rs.ai_right_wrong(paired, n_boot=50)["data"] == rs.SIMULATED_LABEL).all()
    assert (rs.spread(long, sim.readers)["data"] == rs.SIMULATED_LABEL).all()
    # identical seed -> identical reads (only the timestamps and record ids differ)
    sim2 = rs.simulate_readers(cases, tmp_path / "again.jsonl", n_readers=3, seed=3)
    p2 = rs.paired_reads(rs.load_reads(sim2.store_path), rs.load_truth(sim2.truth_path))
    cols = ["reader", "finding_id", "present_pre", "confidence_pre", "present_post", "confidence_post"]
    pd.testing.assert_frame_equal(paired[cols], p2[cols])


@pytest.mark.slow
def test_simulation_reproduces_yu_2024_qualitatively(tmp_path: Path) -> None:
    cases = rs.simulated_cases(300, prevalence=0.5, ai_accuracy=0.75, seed=1)
    sim = rs.simulate_readers(cases, tmp_path / "s.jsonl", n_readers=6, seed=1, susceptibility_range=(0.3, 1.0))
    paired = rs.paired_reads(rs.load_reads(sim.store_path), rs.load_truth(sim.truth_path))
    rw = rs.ai_right_wrong(paired, n_boot=200).set_index(["reader", "ai"])
    right, wrong = rw.loc[("all readers", "AI right")], rw.loc[("all readers", "AI wrong")]
    assert right["change"] > 0 and right["change_ci95"][0] > 0, "accurate AI helps"
    assert wrong["change"] < 0 and wrong["change_ci95"][1] < 0, "inaccurate AI hurts"
    # susceptibility 0: the AI changes nothing
    flat = rs.simulate_readers(cases, tmp_path / "flat.jsonl", n_readers=2, seed=1, susceptibility_range=(0.0, 0.0))
    fp = rs.paired_reads(rs.load_reads(flat.store_path), rs.load_truth(flat.truth_path))
    assert (fp["present_pre"] == fp["present_post"]).all() and (fp["confidence_pre"] == fp["confidence_post"]).all()


def test_spread_and_plot(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    cases = rs.simulated_cases(60, seed=2)
    sim = rs.simulate_readers(cases, tmp_path / "s.jsonl", n_readers=5, seed=2)
    paired = rs.paired_reads(rs.load_reads(sim.store_path), rs.load_truth(sim.truth_path))
    long = rs.per_reader(paired, n_boot=50)
    sp = rs.spread(long, sim.readers).set_index("metric")
    au = long[long.metric == "auroc"]
    assert sp.loc["auroc", "readers"] == 5
    assert sp.loc["auroc", "mean_change"] == pytest.approx(au["change"].mean(), abs=1e-4)
    assert sp.loc["auroc", "readers_helped"] == sum(c[0] > 0 for c in au["change_ci95"])
    assert -1 <= sp.loc["auroc", "rho_vs_experience"] <= 1 and 0 <= sp.loc["auroc", "p_vs_experience"] <= 1
    assert rs.spread(long)["rho_vs_experience"].isna().all()
    fig = rs.plot_spread(long, "auroc", sim.readers, rs.ai_right_wrong(paired, n_boot=50))
    assert fig._suptitle.get_text().startswith(rs.SIMULATED_LABEL)
    with pytest.raises(ParameterError, match="metric"):
        rs.format_per_reader(long, "ppv")


def test_a_store_with_real_actions_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    cases = rs.simulated_cases(10, seed=0)
    rs.simulate_readers(cases, path, n_readers=2, seed=0)
    with pytest.raises(ParameterError, match="exists; pass overwrite=True"):
        rs.simulate_readers(cases, path, n_readers=2, seed=0)
    rs.simulate_readers(cases, path, n_readers=2, seed=1, overwrite=True)  # simulated only: replaced
    assert len(ReviewStore(path)) == 2 * 2 * 10
    ReviewStore(path).accept(_finding(1, 0.9), "dr-real")
    before = path.read_bytes()
    with pytest.raises(ParameterError, match="not simulated reads"):
        rs.simulate_readers(cases, path, n_readers=2, seed=0, overwrite=True)
    assert path.read_bytes() == before
    s = ReviewStore(path)
    f = _finding(5, 0.4)
    s.record_read(f, "dr-real", "pre-ai", True, 70)
    s.record_read(f, "dr-real", "post-ai", True, 75)
    truth = pd.read_csv(rs.default_truth_path(path), dtype={"finding_id": str})
    truth = pd.concat([truth, pd.DataFrame({"finding_id": [f.id], "truth": [1]})])
    paired = rs.paired_reads(rs.load_reads(path), truth)
    assert rs.banner(paired).startswith("*** MIXED")


def test_simulated_cases_and_parameters() -> None:
    c = rs.simulated_cases(3000, prevalence=0.3, ai_accuracy=0.9, seed=4)
    assert abs(c["truth"].mean() - 0.3) < 0.03
    assert abs(((c.ai_probability >= 0.5) == c.truth).mean() - 0.9) < 0.02
    assert c["source"].iloc[0].startswith("SIMULATED cases")
    with pytest.raises(ParameterError, match="ai_accuracy"):
        rs.simulated_cases(10, ai_accuracy=1.0)
    with pytest.raises(ParameterError, match="cases"):
        rs.simulate_readers(c.drop(columns=["truth"]), "x.jsonl")


@pytest.mark.shared
def test_cases_from_the_pneumonia_model_include_every_ai_error(shared_data: Path) -> None:
    from cds.models.tasks import pneumonia

    cases = rs.cases_from_model("pneumonia", shared_data / "medmnist", n_cases=60, seed=0)
    assert len(cases) == 60 and cases["case_id"].is_unique
    _, labels, used, _ = pneumonia.load_split(shared_data / "medmnist")
    assert used == "val"
    idx = cases["case_id"].str.split("_").str[1].astype(int)
    assert (cases["truth"].to_numpy() == labels[idx]).all()
    wrong = (cases.ai_probability >= cases.ai_threshold) != cases.truth.astype(bool)
    assert wrong.sum() >= 5 and "enriched with all" in cases["source"].iloc[0]
    again = rs.cases_from_model("pneumonia", shared_data / "medmnist", n_cases=60, seed=0)
    pd.testing.assert_frame_equal(cases, again)
    plain = rs.cases_from_model("pneumonia", shared_data / "medmnist", n_cases=60, seed=0, enrich_ai_errors=False)
    assert plain["truth"].sum() == 30
