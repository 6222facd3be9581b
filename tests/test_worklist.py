"""Worklist ordering (AI urgency, indeterminate band as its own state, waits) and filters."""

from __future__ import annotations

import pandas as pd
import pytest

from cds.errors import ParameterError
from cds.finding import Failure, Finding
from cds.review.worklist import (
    AI_STATES,
    STATE_LABELS,
    build_worklist,
    filter_worklist,
    finding_state,
    findings_frame,
    format_wait,
    worklist_for_cohort,
)


def _imaging() -> pd.DataFrame:
    rows = [  # patient, study, modality, started
        ("a", "s-pos-big", "CR", "2020-04-01"),
        ("b", "s-pos-small", "DX", "2020-04-02"),
        ("c", "s-unc", "CR", "2020-04-03"),
        ("d", "s-neg-close", "CR", "2020-04-04"),
        ("e", "s-neg-far", "CT", "2020-04-05"),
        ("f", "s-none-old", "US", "2020-03-01"),
        ("g", "s-none-new", "CR", "2020-04-06"),
        ("h", "s-measured", "MR", "2020-04-06"),
        ("a", "s-two", "CR", "2020-04-07"),
    ]
    df = pd.DataFrame(rows, columns=["patient_id", "study_uid", "modality", "started"])
    df["started"] = pd.to_datetime(df["started"], utc=True)
    df["imaging_study_id"] = df["study_uid"]
    df["description"] = "x"
    return df


def _f(pid: str, study: str, prob: float | None, model: str = "m", code: str = "c", display: str = "Pneumonia",
       value: float | None = None, threshold: float | None = 0.5) -> Finding:
    return Finding(pid, study, "http://snomed.info/sct", code, display, model, "1", probability=prob, value=value,
                   threshold=threshold, indeterminate=(0.4, 0.6) if threshold is not None else None)


def _findings() -> list[Finding]:
    return [
        _f("a", "s-pos-big", 0.95), _f("b", "s-pos-small", 0.65), _f("c", "s-unc", 0.59),
        _f("d", "s-neg-close", 0.39), _f("e", "s-neg-far", 0.02),
        _f("h", "s-measured", None, model="ef", display="LVEF", value=55.0, threshold=None),
        # a study with two findings: its most urgent one (indeterminate) decides its place
        _f("a", "s-two", 0.1, model="m1", display="Nodule"), _f("a", "s-two", 0.45, model="m2", display="Effusion"),
    ]


def test_order_positive_by_margin_then_indeterminate_measured_negative_no_ai() -> None:
    wl = build_worklist(_imaging(), _findings(), now="2020-04-08")
    assert wl["study_uid"].tolist() == ["s-pos-big", "s-pos-small", "s-unc", "s-two", "s-measured", "s-neg-close",
                                        "s-neg-far", "s-none-old", "s-none-new"]
    assert wl["ai_state"].tolist() == ["positive", "positive", "indeterminate", "indeterminate", "measured", "negative",
                                       "negative", "no-ai", "no-ai"]
    two = wl[wl["study_uid"] == "s-two"].iloc[0]
    assert two["finding"] == "Effusion" and two["n_findings"] == 2 and two["findings"] == ["Effusion", "Nodule"]
    assert two["margin"] == pytest.approx(-0.05)
    # waits measured to `now`, deterministic
    first = wl.iloc[0]
    assert first["waited"] == pd.Timedelta(days=7) and first["waited_text"] == "7 d"
    assert wl[wl["study_uid"] == "s-none-old"].iloc[0]["waited_text"] == "38 d"


def test_band_edges_are_indeterminate_and_ties_go_to_the_longest_wait() -> None:
    img = _imaging().iloc[:3].copy()
    fs = [_f("a", "s-pos-big", 0.6), _f("b", "s-pos-small", 0.6), _f("c", "s-unc", 0.4)]
    wl = build_worklist(img, fs, now="2020-04-10")
    assert wl["ai_state"].tolist() == ["indeterminate"] * 3
    assert wl["study_uid"].tolist() == ["s-pos-big", "s-pos-small", "s-unc"]  # equal margin: oldest first


def test_reviews_set_study_status_and_blind_mode_ignores_ai() -> None:
    fs = _findings()
    reviews = pd.DataFrame({"finding_id": [fs[0].id, fs[6].id], "status": ["final", "amended"]})
    wl = build_worklist(_imaging(), fs, reviews, now="2020-04-08")
    status = dict(zip(wl["study_uid"], wl["review_status"], strict=True))
    assert status["s-pos-big"] == "accepted"
    assert status["s-two"] == "partly reviewed"
    assert status["s-unc"] == "unreviewed" and status["s-none-new"] == "no AI result"
    reviews.loc[len(reviews)] = [fs[7].id, "final"]
    wl = build_worklist(_imaging(), fs, reviews, now="2020-04-08")
    assert wl[wl["study_uid"] == "s-two"].iloc[0]["review_status"] == "overridden"
    blind = build_worklist(_imaging(), fs, reviews, now="2020-04-08", blind=True)
    assert blind["study_uid"].tolist()[:2] == ["s-none-old", "s-pos-big"]  # waiting time only
    assert blind["waited"].is_monotonic_decreasing


def test_filters_keep_order_and_refuse_unknown_states() -> None:
    wl = build_worklist(_imaging(), _findings(), now="2020-04-08")
    cr = filter_worklist(wl, modality="CR")
    assert cr["study_uid"].tolist() == ["s-pos-big", "s-unc", "s-two", "s-neg-close", "s-none-new"]
    assert filter_worklist(wl, modality=["DX", "CT"])["study_uid"].tolist() == ["s-pos-small", "s-neg-far"]
    assert filter_worklist(wl, finding="Nodule")["study_uid"].tolist() == ["s-two"]
    assert len(filter_worklist(wl, review_status="unreviewed")) == 7
    assert filter_worklist(wl, ai_state="indeterminate")["study_uid"].tolist() == ["s-unc", "s-two"]
    assert filter_worklist(wl, patient_id="a")["study_uid"].tolist() == ["s-pos-big", "s-two"]
    assert len(filter_worklist(wl, modality="all", finding=None)) == len(wl)
    with pytest.raises(ParameterError, match="ai_state"):
        filter_worklist(wl, ai_state="maybe")


def test_states_are_the_finding_interpretations_and_each_has_one_label() -> None:
    fs = _findings()
    for f in fs:
        assert finding_state(f)[0] == f.interpretation
    wl = build_worklist(_imaging(), [fs[2]], now="2020-04-08")
    assert wl.set_index("study_uid").loc["s-unc", "ai_state"] == fs[2].interpretation == "indeterminate"
    assert list(STATE_LABELS) == list(AI_STATES) and STATE_LABELS["indeterminate"] == "AI indeterminate"
    assert len(set(STATE_LABELS.values())) == len(AI_STATES)


def test_failures_give_the_reason_of_a_study_without_an_ai_result() -> None:
    fails = [Failure("f", "s-none-old", "pneumonia", "ImageReadError", "x.dcm: truncated"),
             Failure("f", "s-none-old", "pneumonia", "ImageReadError", "x.dcm: truncated"),  # reported twice
             Failure("f", "s-none-old", "cxr-icu", "ParameterError", "no CRP"),
             Failure("a", "s-pos-big", "cxr-icu", "ParameterError", "no CRP"),
             Failure("g", None, "cxr-icu", "ParameterError", "no study")]
    wl = build_worklist(_imaging(), _findings(), now="2020-04-08", failures=fails).set_index("study_uid")
    assert wl.loc["s-none-old", "failure"] == "pneumonia: x.dcm: truncated; cxr-icu: no CRP"
    assert wl.loc["s-none-old", "ai_state"] == "no-ai"
    # another model's finding still decides the study's state; the failure is kept beside it
    assert wl.loc["s-pos-big", "ai_state"] == "positive" and wl.loc["s-pos-big", "failure"] == "cxr-icu: no CRP"
    assert wl.loc["s-none-new", "failure"] == ""
    plain = build_worklist(_imaging(), _findings(), now="2020-04-08")
    assert plain["study_uid"].tolist() == wl.index.tolist()  # failures never change the order


def test_findings_frame_and_missing_columns() -> None:
    fs = _findings()
    ff = findings_frame(fs)
    assert ff["id"].tolist() == [f.id for f in fs] and ff["indeterminate_low"].iloc[0] == 0.4
    assert len(findings_frame([f.to_dict() for f in fs])) == len(fs)
    with pytest.raises(ParameterError, match="imaging"):
        build_worklist(pd.DataFrame({"patient_id": []}), fs)
    assert format_wait(pd.Timedelta(days=800)) == "2 y 70 d"
    assert format_wait(pd.Timedelta(hours=-3)) == "in future"


def test_worklist_of_the_sample_cohort_uses_its_reference_date(samples_dir) -> None:
    import cds

    cohort = cds.load_cohort(samples_dir, validate=False, reference_date="2020-06-02")
    wl = worklist_for_cohort(cohort, [])
    assert len(wl) == cohort.imaging["study_uid"].nunique()
    assert set(wl["ai_state"]) == {"no-ai"} and (wl["waited"] >= pd.Timedelta(days=1)).all()
    assert wl["waited"].is_monotonic_decreasing  # without AI, longest wait first
