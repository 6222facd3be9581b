"""A model answers only for input it can vouch for: image<->record, intended use, input quality.

Every case runs the real registry on a small cohort copied from fhir_samples/ (one Hannover patient
with its radiographs) with one file changed the way an unlucky hospital would: another patient's
radiograph, a CT slice in a CR study, a blank image, a scrambled raster. Each must become a Failure
with the right state and reason, never a Finding; the worklist shows the state without a score; the
FHIR output says "no answer" (cancelled Observation with a dataAbsentReason).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

import cds
from cds.errors import InputQualityError, OutsideIntendedUseError, RecordMismatchError
from cds.finding import Failure
from cds.images.image import Image
from cds.images.read import read_image
from cds.models.card import ModelCard
from cds.models.registry import ModelRegistry
from cds.models.vouch import (
    ID_MAP_FILE,
    StudyFacts,
    check_intended_use,
    check_quality,
    check_record,
    input_features,
    input_profile,
)
from cds.review.worklist import STATE_LABELS, build_worklist

SAMPLES = Path(__file__).resolve().parents[1] / "fhir_samples"
PATIENT = "850bf237"  # a Hannover patient with three radiographs (no age: the source redacts it)
OTHER = "0664ee2b"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(user_dirs=[])


def _cohort_copy(tmp: Path, patients: tuple[str, ...] = (PATIENT,)) -> Path:
    root = tmp / "cohort"
    (root / "hannover").mkdir(parents=True)
    for pid in patients:
        shutil.copy(SAMPLES / "hannover" / f"{pid}.json", root / "hannover" / f"{pid}.json")
        shutil.copytree(SAMPLES / "dicom" / "hannover" / pid, root / "dicom" / "hannover" / pid)
    return root


def _files(root: Path, pid: str = PATIENT) -> list[Path]:
    return sorted((root / "dicom" / "hannover" / pid).glob("*.dcm"))


def _edit_dicom(path: Path, **attrs: object) -> None:
    """Set DICOM attributes of one file in place (the hostile change a test makes)."""
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _run(registry: ModelRegistry, root: Path, model: str = "cxr-icu") -> tuple[cds.Cohort, object]:
    cohort = cds.load_cohort(root, reference_date="2026-01-01")
    return cohort, registry.run(model, cohort)


def _failure_for(result: object, path: Path) -> Failure:
    hits = [f for f in result.failures if path.name in f.message]  # type: ignore[attr-defined]
    assert hits, f"no failure names {path.name}: {[f.message for f in result.failures]}"  # type: ignore[attr-defined]
    return hits[0]


def test_untouched_copy_is_answered(registry: ModelRegistry, tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    cohort, result = _run(registry, root)
    n = len(cohort.imaging.dropna(subset=["pixel_location"]))
    assert n >= 2 and len(result.findings) == n and result.failures == []


def test_another_patients_radiograph_is_refused_as_record_mismatch(registry: ModelRegistry, tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path, (PATIENT, OTHER))
    target = _files(root)[0]
    # the other patient's radiograph copied over this patient's file (same path, other identity)
    shutil.copy(_files(root, OTHER)[0], target)
    cohort, result = _run(registry, root)
    fail = _failure_for(result, target)
    assert fail.state == "record-mismatch" and fail.error == "RecordMismatchError"
    assert OTHER in fail.message and "another patient" in fail.message
    study = cohort.imaging[cohort.imaging["pixel_location"].astype(str).str.endswith(target.name)].iloc[0]
    assert not [f for f in result.findings if f.study_uid == study["study_uid"]]
    # the worklist shows the state, its label, the reason, and no score
    wl = build_worklist(cohort.imaging, result.findings, failures=result.failures)
    row = wl[wl["study_uid"] == study["study_uid"]].iloc[0]
    assert row["ai_state"] == "record-mismatch" and np.isnan(row["score"]) and "another patient" in row["failure"]
    assert STATE_LABELS["record-mismatch"] == "image does not match record"


def test_only_the_patient_id_rewritten_is_refused_and_an_id_map_accepts_it(registry: ModelRegistry,
                                                                           tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    target = _files(root)[0]
    _edit_dicom(target, PatientID="ANON-0001")
    _, result = _run(registry, root)
    assert _failure_for(result, target).state == "record-mismatch"
    # the documented tolerance for de-identified sources: a mapping table in the cohort folder
    (root / ID_MAP_FILE).write_text(f"dicom_patient_id,patient_id\nANON-0001,{PATIENT}\n")
    cohort, result = _run(registry, root)
    assert result.failures == [] and len(result.findings) == len(cohort.imaging.dropna(subset=["pixel_location"]))


@pytest.mark.parametrize("attr, value, word", [
    ("StudyInstanceUID", "1.2.3.999", "StudyInstanceUID"),
    ("SOPInstanceUID", "1.2.3.998", "SOP instances"),
])
def test_study_or_instance_uid_that_differs_from_the_record_is_refused(registry: ModelRegistry, tmp_path: Path,
                                                                       attr: str, value: str, word: str) -> None:
    root = _cohort_copy(tmp_path)
    target = _files(root)[0]
    _edit_dicom(target, **{attr: value})
    _, result = _run(registry, root)
    fail = _failure_for(result, target)
    assert fail.state == "record-mismatch" and word in fail.message


def test_a_ct_slice_in_a_cr_study_is_refused_as_record_mismatch(registry: ModelRegistry, tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    target = _files(root)[0]
    _edit_dicom(target, Modality="CT")
    _, result = _run(registry, root)
    fail = _failure_for(result, target)
    assert fail.state == "record-mismatch" and "CT" in fail.message


def test_a_blank_image_is_rejected_by_the_quality_gate(registry: ModelRegistry, tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    target = _files(root)[0]
    _edit_dicom(target, RescaleSlope=0, RescaleIntercept=0)
    _, result = _run(registry, root)
    fail = _failure_for(result, target)
    assert fail.state == "input-rejected" and "blank" in fail.message


def test_refusals_reach_the_fhir_output_as_cancelled_observations_without_a_value(registry: ModelRegistry,
                                                                                 tmp_path: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle as FhirBundle

    from cds.fhir.writer import results_bundle

    root = _cohort_copy(tmp_path, (PATIENT, OTHER))
    target = _files(root)[0]
    shutil.copy(_files(root, OTHER)[0], target)
    _, result = _run(registry, root)
    cards = {"cxr-icu": registry.get("cxr-icu")}
    bundle = results_bundle(result.findings, cards, recorded="2026-01-01T00:00:00Z", failures=result.failures)
    FhirBundle.model_validate(bundle)
    cancelled = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
                 and e["resource"]["status"] == "cancelled"]
    assert len(cancelled) == len(result.failures) == 1
    obs = cancelled[0]
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert "image does not match record" in obs["dataAbsentReason"]["text"]
    assert not any(k.startswith("value") for k in obs) and "interpretation" not in obs
    # de-identified: no patient id, no file name in the text
    deid = results_bundle(result.findings, cards, recorded="2026-01-01T00:00:00Z", failures=result.failures,
                          deidentify=True, salt="a-secret-salt-of-32-characters!!")
    text = json.dumps(deid)
    assert PATIENT not in text and OTHER not in text and target.name not in text


def test_pneumonia_is_outside_intended_use_for_adult_radiographs_of_unknown_age(registry: ModelRegistry,
                                                                                tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    cohort, result = _run(registry, root, "pneumonia")
    assert result.findings == []
    assert {f.state for f in result.failures} == {"outside-intended-use"}
    assert "age is not recorded" in result.failures[0].message
    wl = build_worklist(cohort.imaging, result.findings, failures=result.failures)
    with_pixels = wl[wl["study_uid"].isin(cohort.imaging.dropna(subset=["pixel_location"])["study_uid"])]
    assert set(with_pixels["ai_state"]) == {"outside-intended-use"} and with_pixels["score"].isna().all()


def test_default_models_are_the_ones_meant_for_the_cohort(registry: ModelRegistry) -> None:
    cohort = cds.load_cohort(SAMPLES, reference_date="2026-01-01")
    chosen = registry.models_for(cohort)
    assert "pneumonia" not in chosen and "cxr-icu" in chosen
    assert not {"mammo-density", "mammo-abnormality", "ct-lung-nodule", "cmr-function"} & set(chosen)


# ------------------------------------------------------------------------------- unit checks
def _cxr() -> Image:
    return read_image(next((SAMPLES / "dicom" / "hannover" / PATIENT).glob("*.dcm")))


def test_intended_use_checks_age_view_body_part_size_and_slices() -> None:
    card = ModelCard.from_dict({"modality": ["CR", "DX"], "intended_for": {
        "age_years": [18, None], "age_unknown": "accept", "views": ["PA", "AP"], "body_parts": ["chest"],
        "min_size_px": 256}})
    img = _cxr()
    assert check_intended_use(card, img, StudyFacts(PATIENT, age_years=40.0)) == []
    assert "age not recorded" in check_intended_use(card, img, StudyFacts(PATIENT))[0]
    with pytest.raises(OutsideIntendedUseError, match="8 years old"):
        check_intended_use(card, img, StudyFacts(PATIENT, age_years=8.0))
    lateral = replace(img, meta={**img.meta, "view_position": "LL"})
    with pytest.raises(OutsideIntendedUseError, match="view LL"):
        check_intended_use(card, lateral, None)
    hand = replace(img, meta={**img.meta, "body_part": "HAND"})
    with pytest.raises(OutsideIntendedUseError, match="body part hand"):
        check_intended_use(card, hand, None)
    small = replace(img, array=img.array[:100, :100])
    with pytest.raises(OutsideIntendedUseError, match="at least 256"):
        check_intended_use(card, small, None)
    mg = replace(img, modality="MG")
    with pytest.raises(OutsideIntendedUseError, match="modality MG"):
        check_intended_use(card, mg, None)
    vol = ModelCard.from_dict({"modality": "CT", "intended_for": {"min_slices": 16}})
    ct = Image(np.random.default_rng(0).normal(size=(4, 32, 32)), (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3), "CT", {}, "ct")
    with pytest.raises(OutsideIntendedUseError, match="4 slice"):
        check_intended_use(vol, ct, None)
    # a DICOM PatientAge stands in when the record has no birth date
    child = replace(img, meta={**img.meta, "patient_age": "004Y"})
    with pytest.raises(OutsideIntendedUseError, match="4 years old"):
        check_intended_use(card, child, StudyFacts(PATIENT))


@pytest.mark.parametrize("change, reason", [
    (lambda im: replace(im, array=np.full(im.array.shape, 7.0)), "blank image"),
    (lambda im: replace(im, array=np.where(np.arange(im.array.size).reshape(im.array.shape) == 5, np.nan,
                                          im.array.astype(float))), "NaN or infinite"),
    (lambda im: replace(im, array=np.where(np.arange(im.array.size).reshape(im.array.shape) < 10, 1.0, 0.0)),
     "nearly blank"),
    (lambda im: replace(im, spacing=(0.0, 0.14)), "pixel spacing"),
    (lambda im: replace(im, spacing=(float("nan"), 0.14)), "pixel spacing"),
    (lambda im: replace(im, direction=np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], float),
                        meta={**im.meta, "patient_frame": True}), "orientation"),
    (lambda im: replace(im, array=np.zeros((0, 0))), "no pixels"),
])
def test_quality_gate_refuses_pixels_no_model_should_read(change: object, reason: str) -> None:
    img = _cxr()
    assert check_quality(None, img) == []
    with pytest.raises(InputQualityError, match=reason):
        check_quality(None, change(img))  # type: ignore[operator]


def test_input_profile_refuses_a_scrambled_raster_and_keeps_real_radiographs() -> None:
    files = sorted((SAMPLES / "dicom" / "hannover").glob("*/*.dcm"))
    fit, held = files[::2], files[1::2]
    profile = input_profile([input_features(read_image(f)) for f in fit], data="sample radiographs, even files")
    card = ModelCard.from_dict({"intended_for": {"input_profile": profile}})
    passed = 0
    for f in held[:20]:
        try:
            check_quality(card, read_image(f))
            passed += 1
        except InputQualityError:
            pass
    assert passed >= 18  # held-out real radiographs of the same source: nearly all pass
    img = read_image(held[0])
    swapped = replace(img, array=img.array.ravel().reshape(img.array.shape[1], img.array.shape[0]))
    with pytest.raises(InputQualityError, match="out of distribution"):
        check_quality(card, swapped)


def test_record_check_of_files_without_identity_and_a_picture_named_as_dicom(tmp_path: Path) -> None:
    png = Image(np.arange(64.0).reshape(8, 8), (1.0, 1.0), (0, 0, 0), np.eye(3), None, {"format": "PNG"},
                str(tmp_path / "x.png"))
    assert "identity not checked" in check_record(png, StudyFacts(PATIENT))[0]
    renamed = replace(png, source=str(tmp_path / "x.dcm"))
    with pytest.raises(RecordMismatchError, match="not DICOM"):
        check_record(renamed, StudyFacts(PATIENT, instance_uids=("1.2.3",)))


def test_a_study_past_the_time_limit_is_recorded_and_the_run_carries_on(registry: ModelRegistry, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    root = _cohort_copy(tmp_path)
    cohort = cds.load_cohort(root, reference_date="2026-01-01")
    task = registry.task_for("cxr-icu")
    real = task.prepare  # cxr-icu's per-study work (features, labs, score) runs in prepare
    calls = {"n": 0}

    def slow_first(bundle, image, ehr):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(5)
        return real(bundle, image, ehr)

    monkeypatch.setattr(task, "prepare", slow_first)
    result = registry.run("cxr-icu", cohort, time_limit_s=0.5, workers=0)
    assert len(result.failures) == 1 and result.failures[0].error == "StudyTimeLimitError"
    assert "time limit" in result.failures[0].message
    assert len(result.findings) == len(cohort.imaging.dropna(subset=["pixel_location"])) - 1


def test_retraining_keeps_the_cards_intended_use(tmp_path: Path) -> None:
    from cds.models.bundle import save_bundle

    net = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 2}
    first = {"version": "1", "cds": {"model_id": "m", "intended_use": "demo",
                                     "intended_for": {"age_years": [18, None]}, "threshold": 0.5}}
    save_bundle(tmp_path / "m", first, net, None)
    save_bundle(tmp_path / "m", {"version": "2", "cds": {"model_id": "m", "intended_use": "demo", "threshold": 0.4}},
                net, None)
    card = json.loads((tmp_path / "m" / "configs" / "metadata.json").read_text())["cds"]
    assert card["intended_for"] == {"age_years": [18, None]} and card["threshold"] == 0.4
    assert list(card) == ["model_id", "intended_use", "intended_for", "threshold"]


def test_no_model_card_names_a_patient_of_the_sample_cohort() -> None:
    ids = {p.stem for p in (SAMPLES / "hannover").glob("*.json")} | {p.stem for p in (SAMPLES / "synthea").glob("*.json")}
    bundles = Path(cds.__file__).parent / "models" / "bundles"
    for card in bundles.glob("*/configs/metadata.json"):
        text = card.read_text()
        assert not [i for i in ids if i in text], card


def test_a_file_swapped_for_a_link_out_of_the_cohort_after_loading_is_not_read(registry: ModelRegistry,
                                                                              tmp_path: Path) -> None:
    root = _cohort_copy(tmp_path)
    cohort = cds.load_cohort(root, reference_date="2026-01-01")
    target = _files(root)[0]
    outside = tmp_path / "elsewhere.dcm"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)
    result = registry.run("cxr-icu", cohort)
    fail = _failure_for(result, target)
    assert fail.error == "ImageReadError" and "outside the cohort root" in fail.message
    assert len(result.findings) == len(cohort.imaging.dropna(subset=["pixel_location"])) - 1


def test_fast_quality_statistics_match_numpy() -> None:
    """The blank-image share (_majority) and neighbour correlations equal np.unique / np.corrcoef."""
    from cds.models import vouch

    rng = np.random.default_rng(0)
    for t in range(120):
        x = rng.random((int(rng.integers(2, 50)), int(rng.integers(2, 50))))
        if t % 3 == 0:
            x = np.round(x * 3)
        if t % 5 == 0:
            x[:] = 1.0
            x[0, 0] = 0.0
        for ax in (0, 1):
            a = np.take(x, range(x.shape[ax] - 1), axis=ax).ravel()
            b = np.take(x, range(1, x.shape[ax]), axis=ax).ravel()
            ref = 1.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])
            assert abs(vouch._neighbour_corr(x, ax) - ref) < 1e-12
        values, counts = np.unique(x, return_counts=True)
        if counts.max() > x.size / 2:
            assert vouch._majority(x) == (float(values[counts.argmax()]), int(counts.max()))
        else:
            assert vouch._majority(x)[1] <= counts.max()
