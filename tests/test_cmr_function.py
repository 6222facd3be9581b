"""cds.models.tasks.phantom (deforming-heart cine phantoms) and cds.models.tasks.cmr_function (LV volumes, EF, strain)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cds.codes import CMR_MEASURE_CODES
from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.models.tasks import cmr_function as cmr
from cds.models.tasks.phantom import (
    activation,
    generate_dataset,
    list_cases,
    load_cine_npz,
    make_cine,
    mid_ventricular_slices,
    sample_params,
    save_cine_npz,
)

SMALL = {"n_frames": 6, "rows": 64, "cols": 64, "supersample": 2}


def _ed_es_frames(seed: int) -> list[int]:
    p = sample_params(seed)
    return [0, int(np.argmax(activation(np.arange(p["n_frames"]) / p["n_frames"], p["t_es"])))]


# ------------------------------------------------------------------------------------------- phantom
def test_phantom_is_deterministic_per_seed() -> None:
    a, ta = make_cine(7, **SMALL)
    b, tb = make_cine(7, **SMALL)
    c, tc = make_cine(8, **SMALL)
    assert np.array_equal(a, b) and np.array_equal(ta["lv_frac"], tb["lv_frac"])
    assert ta["ef_pct"] == tb["ef_pct"] and ta["gcs_pct"] == tb["gcs_pct"]
    assert a.shape[0] == 6 and a.shape[2:] == (64, 64) and a.dtype == np.float32
    assert not np.array_equal(a[:, :1], c[:, :1]) or ta["ef_pct"] != tc["ef_pct"]


def test_phantom_parameters_vary_in_the_documented_ranges() -> None:
    ps = [sample_params(s) for s in range(60)]
    th = [p["slice_thickness"] for p in ps]
    ef = [p["ef_target"] for p in ps]
    nf = [p["n_frames"] for p in ps]
    assert 6.0 <= min(th) and max(th) <= 10.0 and max(th) - min(th) > 2.5
    assert 0.2 <= min(ef) < 0.3 and 0.65 < max(ef) <= 0.75
    assert 20 <= min(nf) and max(nf) <= 30
    assert any(p["slice_gap"] == 0 for p in ps) and any(p["slice_gap"] > 0 for p in ps)


@pytest.mark.parametrize("seed", [3, 12, 41])
def test_phantom_truth_is_self_consistent(seed: int) -> None:
    frames = _ed_es_frames(seed)
    cine, t = make_cine(seed, frames=frames)
    assert t["ed_frame"] == frames[0] and t["es_frame"] == frames[1]
    assert math.isclose(t["ef_pct"], 100 * (t["edv_ml"] - t["esv_ml"]) / t["edv_ml"])
    assert max(t["lv_volumes_ml"]) == pytest.approx(t["edv_ml"]) and min(t["lv_volumes_ml"]) == pytest.approx(t["esv_ml"])
    assert t["gcs_pct"] < 0 < t["grs_pct"]
    # the rendered partial-volume masks measure the stated EF (Simpson's discs) within 1 point and
    # the stated strains within 0.5 strain points
    m = cmr.function_from_masks(t["lv_frac"], t["myo_frac"], t["geometry"])
    assert abs(m["ef_pct"] - t["ef_pct"]) <= 1.0
    assert abs(m["gcs_pct"] - t["gcs_pct"]) <= 0.5 and abs(m["grs_pct"] - t["grs_pct"]) <= 0.5
    assert m["mid_slices"] == t["mid_slices"]
    # without a slice gap, Simpson's discs on the fractions are exact up to the supersampling
    if t["params"]["slice_gap"] == 0:
        assert abs(t["edv_disc_ml"] - t["edv_ml"]) < 0.01 * t["edv_ml"]


def test_gap_free_phantom_disc_volume_is_exact() -> None:
    frames = _ed_es_frames(5)
    _, t = make_cine(5, frames=frames, slice_gap=0.0)
    assert abs(t["edv_disc_ml"] - t["edv_ml"]) < 0.005 * t["edv_ml"]
    assert abs(t["esv_disc_ml"] - t["esv_ml"]) < 0.005 * t["esv_ml"]


def test_phantom_overrides_and_errors() -> None:
    _, t = make_cine(2, frames=[0], ef_target=0.6, long_shortening=0.1, supersample=1)
    assert 57.0 < t["ef_pct"] <= 60.0      # the frames sample the cycle, so ES may miss the exact minimum
    with pytest.raises(ParameterError, match="not_a_key"):
        sample_params(1, not_a_key=3)
    with pytest.raises(ParameterError, match="ef_target"):
        sample_params(1, ef_target=2.0)
    with pytest.raises(ParameterError, match="seed"):
        sample_params(-1)
    with pytest.raises(ParameterError, match="frames"):
        make_cine(1, frames=[99], **SMALL)


def test_mid_ventricular_rule() -> None:
    assert mid_ventricular_slices([0, 5, 80, 100, 95, 70, 30, 9, 0]) == [3, 4, 5]
    assert mid_ventricular_slices([0, 50, 0]) == [1]
    assert mid_ventricular_slices([0, 0]) == []


def test_npz_round_trip_and_dataset(tmp_path) -> None:
    out = generate_dataset(tmp_path / "ds", 2, 123, **SMALL)
    files = list_cases(out)
    assert [f.name for f in files] == ["case_0000123.npz", "case_0000124.npz"]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["seeds"] == [123, 124] and manifest["phantom_version"]
    cine, geom, truth = load_cine_npz(files[0])
    ref, tref = make_cine(123, **SMALL)
    assert np.array_equal(cine, ref) and geom == tref["geometry"]
    assert truth["ef_pct"] == tref["ef_pct"] and np.abs(truth["lv_frac"] - tref["lv_frac"]).max() <= 0.0021
    # a cine without truth
    p = save_cine_npz(tmp_path / "bare.npz", ref, tref["geometry"])
    assert load_cine_npz(p)[2] == {}


def test_file_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="missing.npz: file not found"):
        load_cine_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ImageReadError, match="bad.npz"):
        load_cine_npz(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ImageReadError, match="not a cds cine file"):
        load_cine_npz(tmp_path / "other.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParameterError, match="no \\*.npz cases"):
        list_cases(tmp_path / "empty")
    with pytest.raises(ParameterError, match="not a folder"):
        list_cases(tmp_path / "nowhere")
    with pytest.raises(ParameterError, match="cine"):
        save_cine_npz(tmp_path / "x.npz", np.zeros((4, 4)), {})


# --------------------------------------------------------------------------------- measurement code
def test_bad_inputs_give_clear_errors() -> None:
    geom = {"pixel_spacing_mm": [1.5, 1.5], "slice_thickness_mm": 8.0, "slice_gap_mm": 2.0}
    with pytest.raises(ModelInputError, match="cine: expected a 4D array"):
        cmr.check_cine(np.zeros((10, 64, 64)))
    with pytest.raises(ModelInputError, match="need >= 2 frames"):
        cmr.check_cine(np.zeros((1, 3, 64, 64)))
    with pytest.raises(ModelInputError, match="NaN"):
        cmr.check_cine(np.full((2, 1, 32, 32), np.nan))
    with pytest.raises(ModelInputError, match="not numeric"):
        cmr.check_cine(np.array([["a"]], dtype=object))
    with pytest.raises(ModelInputError, match="geometry: missing 'slice_thickness_mm'"):
        cmr.check_geometry({"pixel_spacing_mm": 1.5, "slice_gap_mm": 0})
    with pytest.raises(ModelInputError, match="slice_gap_mm' or 'spacing_between_slices_mm"):
        cmr.check_geometry({"pixel_spacing_mm": 1.5, "slice_thickness_mm": 8})
    with pytest.raises(ModelInputError, match="pixel_spacing_mm"):
        cmr.check_geometry({**geom, "pixel_spacing_mm": [1.5, -1]})
    with pytest.raises(ModelInputError, match="geometry: expected a dict"):
        cmr.check_geometry(None)
    with pytest.raises(ModelInputError, match="slice_positions_mm"):
        cmr.check_geometry({**geom, "slice_positions_mm": [0, 10]}, n_slices=3)
    g = cmr.check_geometry({**geom, "spacing_between_slices_mm": 9.0})
    assert g["spacing"] == 9.0 and g["pixel_spacing"] == (1.5, 1.5)
    lv = np.zeros((3, 2, 32, 32))
    with pytest.raises(ModelInputError, match="myo_masks: shape"):
        cmr.function_from_masks(lv, np.zeros((3, 2, 32, 31)), geom)
    with pytest.raises(ModelInputError, match="lv_masks: values must be"):
        cmr.function_from_masks(lv + 2, lv, geom)
    with pytest.raises(ModelInputError, match="no LV cavity"):
        cmr.function_from_masks(lv, lv, geom)
    with pytest.raises(ModelInputError, match="cine: expected a 4D"):
        cmr.predict(None, np.zeros((3, 64, 64)), geom)
    with pytest.raises(ModelInputError, match="geometry"):
        cmr.predict(None, np.zeros((3, 2, 64, 64)), {"pixel_spacing_mm": 1.5})


def test_function_from_masks_on_binary_masks() -> None:
    """Binary masks (e.g. a Model Zoo segmentation) work; partial basal slices cost EF accuracy."""
    frames = _ed_es_frames(21)
    _, t = make_cine(21, frames=frames, supersample=2)
    lv = t["lv_frac"] >= 0.5
    myo = (t["lv_frac"] + t["myo_frac"] >= 0.5) & ~lv
    m = cmr.function_from_masks(lv, myo, t["geometry"])
    assert m["ed_frame"] == 0 and m["es_frame"] == 1
    assert abs(m["ef_pct"] - t["ef_pct"]) < 10 and abs(m["gcs_pct"] - t["gcs_pct"]) < 2.0
    assert set(m) >= {"edv_ml", "esv_ml", "ef_pct", "gcs_pct", "grs_pct", "lv_volumes_ml", "warnings"}


# ---------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def bundle():
    from cds.models.bundle import load_bundle

    path = cmr.default_bundle_dir()
    if not (path / "models" / "model.pt").exists():
        pytest.fail(f"shipped bundle missing: {path} (run `cds train cmr-function`)")
    return load_bundle(path)


def test_card_states_validation_and_matches_targets(bundle) -> None:
    card = bundle.card
    text = json.dumps(card).lower()
    assert "3 real patients" in text and "heart failure with infarct" in text and "leave-one-patient-out" in text
    assert "strains are validated on phantoms only" in text or "validated on synthetic phantoms only" in text
    assert "backhaus" in text and "0.81" in text and "1.12" in text
    perf = card["performance"]
    assert perf["n_cases"] == cmr.EVAL_N and f"seed={cmr.EVAL_SEED}" in perf["data"]
    for k, target in cmr.TARGETS.items():
        assert perf["targets_met"][k] == (perf["metrics"][f"{k}_mae"]["value"] <= target)
    assert (bundle.weights_path.stat().st_size) < 5 * 1024 * 1024
    assert bundle.metadata["eval_metrics"]["ef_mae"] == perf["metrics"]["ef_mae"]["value"]


@pytest.mark.slow
def test_predict_meets_targets_on_held_out_phantoms(bundle) -> None:
    """Three evaluation-range seeds (disjoint from training): GCS within its target, EF and GRS bounded."""
    errs: dict[str, list[float]] = {"ef_pct": [], "gcs_pct": [], "grs_pct": []}
    for seed in (920001, 920002, 920003):       # never used in training, development or the card
        cine, t = make_cine(seed)
        pred = cmr.predict(bundle, cine, t["geometry"])
        assert pred["masks"].shape == cine.shape and pred["masks"].dtype == np.uint8
        assert pred["runtime_s"] < 30.0
        for k in errs:
            errs[k].append(abs(pred[k] - t[k]))
        assert abs(pred["edv_ml"] - t["edv_ml"]) < 0.12 * t["edv_ml"]
    # 1.1.0 on these three: EF errors 6.9, 0.3, 4.2 (MAE 3.8; the card's 30 phantoms: EF MAE 2.2): fine-tuning on
    # real contours costs phantom accuracy (1.0.0, phantom-only: card EF MAE 0.6). Bounded, not held to the target.
    assert np.mean(errs["ef_pct"]) <= 5.0
    assert np.mean(errs["gcs_pct"]) <= cmr.TARGETS["gcs"]
    # 1.1.0 (fine-tuned on real contours) misses the 1.5-point GRS target on phantoms (card: GRS MAE 2.8);
    # held to a regression bound, the card states the miss (targets_met.grs is False)
    assert np.mean(errs["grs_pct"]) <= 4.0


def test_to_findings(bundle) -> None:
    from cds.finding import Finding

    pred = {"ef_pct": 41.237, "edv_ml": 150.0, "esv_ml": 88.2, "gcs_pct": -12.5, "grs_pct": None,
            "ed_frame": 0, "es_frame": 9, "mid_slices": [4, 5, 6], "warnings": []}
    fs = cmr.to_findings(bundle, pred, "p1", "1.2.3", "1.2.3.4", ["1.2.3.4.5"], {})
    codes = {f.code: f for f in fs}
    assert set(codes) == {"10230-1", "75988-6", "75989-4", "lv-gcs"}     # GRS missing -> left out
    ef = codes["10230-1"]
    assert ef.code_system == "http://loinc.org" and ef.unit == "%" and ef.value == 41.24
    assert ef.extra["ef_category"] == "reduced" and ef.interpretation == "measured"
    assert codes["lv-gcs"].code_system == CMR_MEASURE_CODES and codes["75988-6"].unit == "mL"
    assert all(f.model_id == "cmr-function" for f in fs)
    assert Finding.from_dict(ef.to_dict()) == ef
    assert [cmr.ef_category(v) for v in (44.9, 45.0, 55.0, 55.1)] == ["reduced", "indeterminate", "indeterminate",
                                                                       "not reduced"]


@pytest.mark.slow
def test_evaluate_schema(bundle, tmp_path) -> None:
    generate_dataset(tmp_path, 2, 900040)
    r = cmr.evaluate(tmp_path, n_boot=50)
    assert r["task"] == "cmr-function" and r["n_cases"] == 2 and len(r["cases"]) == 2
    for k in ("ef", "edv", "esv", "gcs", "grs"):
        for suffix in ("mae", "bias", "within_target"):
            m = r["metrics"][f"{k}_{suffix}"]
            assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    assert r["metrics"]["ef_mae"]["target"] == 3.0
    json.dumps(r)


@pytest.mark.slow
def test_card_numbers_equal_a_rerun(bundle, tmp_path) -> None:
    """Regenerate the card's 30 evaluation phantoms and rerun evaluate: the card's metrics come back."""
    generate_dataset(tmp_path, cmr.EVAL_N, cmr.EVAL_SEED)
    r = cmr.evaluate(tmp_path, bundle.path, n_boot=bundle.card["performance"]["bootstrap"]["n_boot"])
    card = bundle.card["performance"]["metrics"]
    assert set(card) == set(r["metrics"])
    for k, m in card.items():
        assert m["value"] == pytest.approx(r["metrics"][k]["value"], abs=2e-4), k
        assert m["ci95"] == pytest.approx(r["metrics"][k]["ci95"], abs=2e-3), k


@pytest.mark.slow
def test_quick_train_writes_a_loadable_bundle(tmp_path) -> None:
    from cds.models.bundle import load_bundle

    path = cmr.train(None, tmp_path / "b", quick=True)
    b = load_bundle(path)
    assert b.card["task"] == "cmr-function" and b.card["training_data"]["n_cases"] == 4
    assert b.card["performance"]["n_cases"] == 2 and "ef_mae" in b.metadata["eval_metrics"]
    assert (path / "docs" / "README.md").read_text().count("3 real patients") >= 1
    assert (path / "models" / cmr.BASE_WEIGHTS).is_file()
    cine, t = make_cine(920010, n_frames=4, supersample=1)
    assert cmr.predict(b, cine, t["geometry"])["masks"].shape == cine.shape


def test_card_reports_real_data_leave_one_patient_out(bundle) -> None:
    """The card's real-data section: LOPO on 3 Sunnybrook patients, with its command and the baseline."""
    real = bundle.card["performance"]["real_data_lopo"]
    assert real["split"] == "leave-one-patient-out" and real["n_patients"] == 3
    assert real["pathology"] == ["Heart failure with infarct"]
    assert real["evaluation_command"] == "cds evaluate cmr-function --data <DIR> --split lopo --json"
    assert set(real["metrics"]) >= {"ef_mae", "edv_mae", "esv_mae", "lv_mass_mae"}
    for m in real["metrics"].values():
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    assert {c["patient_id"] for c in real["cases"]} == {"SCD0000101", "SCD0000201", "SCD0000301"}
    assert all(f["trained_on_patients"] == sorted(set(real["folds"]) - {p}) for p, f in real["folds"].items())
    assert "ef_mae" in real["comparisons"]["phantom_only_baseline"]
    assert any("CIs are wide" in n for n in real["notes"])
    readme = (bundle.path / "docs" / "README.md").read_text()
    assert "Real data lopo" in readme and "--split lopo" in readme
    assert (bundle.path / "models" / cmr.BASE_WEIGHTS).stat().st_size < 3 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.shared
def test_real_card_numbers_equal_a_lopo_rerun(bundle, shared_data, tmp_path) -> None:
    """Rerun the committed LOPO evaluation (3 fold fine-tunes, ~20 min on one thread): the card's numbers come back."""
    real = bundle.card["performance"]["real_data_lopo"]
    r = cmr.lopo(shared_data / "sunnybrook-cmr", bundle_dir=bundle.path, n_boot=real["bootstrap"]["n_boot"])
    for k, m in real["metrics"].items():
        assert m["value"] == pytest.approx(r["metrics"][k]["value"], abs=2e-3), k


def test_phantom_cycle_start_moves_ed() -> None:
    frames = list(range(0, 20, 1))
    _, t = make_cine(4, n_frames=20, rows=48, cols=48, supersample=1, frames=frames, cycle_start=0.5)
    assert t["ed_frame"] == 10 and t["params"]["cycle_start"] == 0.5
    _, t0 = make_cine(4, n_frames=20, rows=48, cols=48, supersample=1, frames=[0])
    assert t0["ed_frame"] == 0 and t0["edv_ml"] == pytest.approx(t["edv_ml"])
    with pytest.raises(ParameterError, match="cycle_start"):
        sample_params(4, cycle_start=1.5)


def test_masked_loss_uses_only_the_known_classes() -> None:
    import torch

    logits = torch.randn(3, 4, 8, 8, requires_grad=True)
    t = torch.zeros(3, 4, 8, 8)
    t[:, 1, 2:5, 2:5] = 1.0
    t[:, 0] = 1 - t[:, 1]
    kinds = torch.tensor([cmr.KIND_FULL, cmr.KIND_LV_MYO, cmr.KIND_LV])
    cmr._masked_loss(logits, t, kinds).backward()
    g = logits.grad
    # an ES image (LV only) gives no gradient that moves probability between background, myocardium and RV
    p = torch.softmax(logits, 1)[2].detach()
    rest = g[2, [0, 2, 3]]
    assert torch.allclose(rest / p[[0, 2, 3]], (rest / p[[0, 2, 3]])[:1].expand_as(rest), atol=1e-5)
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0
