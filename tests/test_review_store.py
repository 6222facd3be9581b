"""The review log: durable appends, reload, corrupt lines, validation of actions, FHIR R4 output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cds.errors import ParameterError
from cds.fhir.ids import observation_id
from cds.fhir.writer import results_bundle
from cds.finding import Finding, Location
from cds.review.store import (
    OVERRIDE_REASON_SYSTEM,
    ReviewStore,
    ReviewStoreError,
    to_fhir,
    to_fhir_bundle,
    validate_fhir,
)


def _finding(pid: str = "p1", study: str = "1.2.3", prob: float = 0.8) -> Finding:
    return Finding(pid, study, "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
                   probability=prob, threshold=0.5, indeterminate=(0.4, 0.6), series_uid="1.2.3.4")


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().split("\n") if ln.strip()]


def test_every_action_is_fsynced_and_seen_by_a_new_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "reviews.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    f1, f2 = _finding(), _finding("p2", "9.9")
    store = ReviewStore(path)
    seen: list[str] = []
    store.on_change(lambda rec: seen.append(rec["action"]))
    store.accept(f1, "dr-a")
    n_after_first = len(synced)
    store.override(f2, "dr-a", "false-positive", comment="  old scar  ")
    store.override(f1, "dr-b", "wrong-location")
    assert n_after_first >= 1 and len(synced) >= 3  # the file on each write (+ the folder once)
    assert seen == ["accept", "override", "override"]
    assert len(_lines(path)) == 3

    again = ReviewStore(path)  # a restarted kernel
    assert len(again) == 3 and again.problems == []
    assert again.status_of(f1.id) == "amended"  # latest action wins ...
    assert [a["action"] for a in again.actions(f1.id)] == ["accept", "override"]  # ... nothing is lost
    assert again.latest_review(f2.id)["comment"] == "old scar"
    assert again.latest_review(f2.id)["clinician_interpretation"] == "negative"
    assert again.status_of(_finding("p9").id) == "preliminary"
    frame = again.reviews_frame()
    assert set(frame["finding_id"]) == {f1.id, f2.id}
    row = frame[frame["finding_id"] == f1.id].iloc[0]
    assert (row["status"], row["reviewer"], row["reason_code"]) == ("amended", "dr-b", "wrong-location")
    rec = json.loads(_lines(path)[1])
    assert rec["reason"]["coding"][0]["system"] == OVERRIDE_REASON_SYSTEM
    assert rec["reviewer"] == {"reference": "Practitioner/dr-a"} and rec["recorded"].endswith("Z")
    assert rec["finding"]["probability"] == 0.8 and rec["finding"]["study_uid"] == "9.9"


def test_cut_off_last_line_is_reported_and_skipped_and_later_writes_still_work(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    f = _finding()
    store.accept(f, "dr-a")
    store.override(f, "dr-a", "poor-image-quality", entered_in_error=True)
    good = path.read_bytes()
    with open(path, "ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"kind": "cds-review/1", "action": "acc')
    reopened = ReviewStore(path)
    assert len(reopened) == 2
    assert len(reopened.problems) == 1 and reopened.problems[0].trailing
    assert "last line" in str(reopened.problems[0]) and str(path) in str(reopened.problems[0])
    assert reopened.status_of(f.id) == "entered-in-error"
    reopened.accept(f, "dr-c")  # starts on a fresh line; the broken bytes stay (nothing is deleted)
    assert path.read_bytes().startswith(good)
    final = ReviewStore(path)
    assert len(final) == 3 and final.status_of(f.id) == "final"
    assert len(final.problems) == 1 and not final.problems[0].trailing and final.problems[0].line == 3


def test_garbage_in_the_middle_keeps_the_lines_around_it(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    store.accept(_finding("a"), "dr-a")
    with open(path, "ab") as fh:
        fh.write(b"not json\n[1, 2]\n")
    store.accept(_finding("b"), "dr-a")
    again = ReviewStore(path)
    assert len(again) == 2 and [p.line for p in again.problems] == [2, 3]


def test_two_store_objects_on_one_file_keep_both_writers_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    a, b = ReviewStore(path), ReviewStore(path)
    for i in range(5):
        a.accept(_finding(f"a{i}"), "dr-a")
        b.accept(_finding(f"b{i}"), "dr-b")
    assert len(_lines(path)) == 10
    assert len(a) == len(b) == 10  # each sees the other's lines without a reload
    assert len(a.reload()) == 10


def test_every_record_the_store_writes_passes_the_readers_check_and_older_lines_load(tmp_path: Path) -> None:
    from cds.review.store import check_record

    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    f = _finding()
    store.accept(f, "dr-a", comment="ok")
    store.override(f, "dr-a", "other", comment="see note", entered_in_error=True)
    store.override(f, "dr-b", "false-negative", clinician_interpretation="positive")
    store.record_read(f, "dr-c", "pre-ai", False, 0)
    store.record_read(f, "dr-c", "post-ai", True, 100)
    lines = [json.loads(ln) for ln in _lines(path)]
    assert [check_record(rec) for rec in lines] == [None] * 5
    older = {k: v for k, v in lines[0].items() if k not in ("comment", "clinician_interpretation", "reason", "read")}
    with open(path, "a") as fh:  # a line written before those optional keys existed
        fh.write(json.dumps({**older, "id": "older"}) + "\n")
    again = ReviewStore(path)
    assert len(again) == 6 and again.problems == [] and again.status_of(f.id) == "final"


def test_bad_actions_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    f = _finding()
    with pytest.raises(ParameterError, match="reason.*'typo' is not an override reason"):
        store.override(f, "dr-a", "typo")
    with pytest.raises(ParameterError, match="comment"):
        store.override(f, "dr-a", "other", comment="   ")
    with pytest.raises(ParameterError, match="reviewer"):
        store.accept(f, "dr a/../x")
    with pytest.raises(ParameterError, match="confidence"):
        store.record_read(f, "dr-a", "pre-ai", True, 101)
    with pytest.raises(ParameterError, match="needs the reader's pre-AI read"):
        store.record_read(f, "dr-a", "post-ai", True, 50)
    assert not path.exists()
    with pytest.raises(ParameterError, match="store_path"):
        ReviewStore(tmp_path)


def test_reader_study_reads_pre_then_post(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "r.jsonl")
    f = _finding()
    store.record_read(f, "dr-a", "pre-ai", False, 70)
    store.record_read(f, "dr-a", "post-ai", True, 85)
    with pytest.raises(ParameterError, match="already seen the AI"):
        store.record_read(f, "dr-a", "pre-ai", False, 10)
    reads = ReviewStore(store.path).reads(f.id, "dr-a")
    assert reads["pre-ai"]["read"] == {"phase": "pre-ai", "finding_present": False, "confidence": 70}
    assert reads["post-ai"]["read"]["confidence"] == 85
    assert ReviewStore(store.path).reads(f.id, "dr-b") == {"pre-ai": None, "post-ai": None}
    assert store.status_of(f.id) == "preliminary"  # reads are not reviews


def test_fhir_output_is_valid_r4_with_verifier_provenance(tmp_path: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle

    store = ReviewStore(tmp_path / "r.jsonl")
    f1, f2 = _finding(), _finding("p2", "7.7", prob=0.45)
    store.accept(f1, "dr-a", comment="agree")
    store.override(f1, "dr-b", "false-positive", comment="scar")
    store.override(f2, "dr-a", "poor-image-quality", entered_in_error=True)
    store.record_read(f2, "dr-c", "pre-ai", True, 40)
    resources = to_fhir(ReviewStore(store.path))
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    assert sorted(p["id"] for p in by_type["Practitioner"]) == ["dr-a", "dr-b", "dr-c"]
    obs = {o["id"]: o for o in by_type["Observation"]}
    o1, o2 = obs[observation_id(f1)], obs[observation_id(f2)]
    assert o1["status"] == "amended" and len(o1["note"]) == 2  # both reviews kept
    assert o2["status"] == "entered-in-error"
    assert o1["meta"]["security"][0]["code"] == "AIAST"
    read_obs = [o for o in by_type["Observation"] if o["category"][0]["coding"][0]["code"] == "survey"]
    assert read_obs[0]["valueBoolean"] is True and read_obs[0]["component"][0]["valueQuantity"]["value"] == 40
    assert read_obs[0]["focus"] == [{"reference": f"Observation/{observation_id(f2)}"}]
    provs = by_type["Provenance"]
    assert len(provs) == 4
    verifiers = [p for p in provs if p["agent"][0]["type"]["coding"][0]["code"] == "verifier"]
    assert len(verifiers) == 3
    assert {p["agent"][0]["who"]["reference"] for p in verifiers} == {"Practitioner/dr-a", "Practitioner/dr-b"}
    assert any(p.get("reason", [{}])[0].get("coding", [{}])[0].get("code") == "false-positive" for p in provs)
    bundle = to_fhir_bundle(store)  # validates each resource with R4B
    Bundle.model_validate(bundle)
    assert len(bundle["entry"]) == len(resources)


def test_fhir_validation_is_not_a_no_op() -> None:
    bad = {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "x"}, "valueBoolean": [1]}
    with pytest.raises(ReviewStoreError, match="Observation/x"):
        validate_fhir([bad])


@pytest.mark.parametrize("action", ["accept", "override"])
def test_reviewed_observation_has_the_id_of_the_ai_observation_it_reviews(tmp_path: Path, action: str) -> None:
    """One writer, one id scheme: the review's Observation replaces the report's AI Observation."""
    f = Finding("p9", "1.2.840.9", "http://snomed.info/sct", "27925004", "Nodule", "toy-detector", "2.0.0",
                probability=0.71, threshold=0.5, indeterminate=(0.3, 0.5), series_uid="1.2.840.9.1",
                location=Location("point", (-10.0, 20.0, 30.0)), imaging_study_id="is-9",
                study_started="2026-01-05T00:00:00+00:00", explanation="bright round blob")
    card = {"model_id": "toy-detector", "version": "2.0.0", "threshold": 0.5}
    written = results_bundle([f], {"toy-detector": card}, recorded="2026-01-06T00:00:00Z")
    ai_obs = next(e["resource"] for e in written["entry"] if e["resource"]["resourceType"] == "Observation")
    store = ReviewStore(tmp_path / "r.jsonl")
    if action == "accept":
        store.accept(f, "dr-a")
    else:
        store.override(f, "dr-a", "wrong-location", comment="left, not right")
    resources = to_fhir(ReviewStore(store.path), cards={"toy-detector": card})
    reviewed = next(r for r in resources if r["resourceType"] == "Observation")
    prov = next(r for r in resources if r["resourceType"] == "Provenance")
    assert reviewed["id"] == ai_obs["id"] == observation_id(f)
    assert prov["target"] == [{"reference": f"Observation/{ai_obs['id']}"}]
    assert reviewed["status"] == ("final" if action == "accept" else "amended") != ai_obs["status"]
    # the same builder: apart from status, issued, notes and the Device reference form, the resources agree
    ignore = {"status", "issued", "note", "device"}
    assert {k: v for k, v in reviewed.items() if k not in ignore} == {k: v for k, v in ai_obs.items()
                                                                      if k not in ignore}
    assert reviewed["device"]["reference"].split("/")[-1] == ai_obs["device"]["reference"].split(":")[-1]
    assert reviewed["note"][0] == ai_obs["note"][0] and reviewed["note"][1]["text"].startswith(action)
    to_fhir_bundle(store)  # and it is valid R4
