"""Tests of the ``ct-lung-nodule`` reference model (cds.models.tasks.ct_lung_nodule, cds.models.tasks.lung_ct).

The first group needs no data (synthetic phantoms, fake series); the second runs the shipped bundle
on the real Lung-PET-CT-Dx series in ../shared/data (skipped when absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.finding import Finding
from cds.models.tasks import ct_lung_nodule as M
from cds.models.tasks import lung_ct as L

SERIES = "lung-pet-ct-dx/Lung_Dx-A0001/2.000000-5mm-40805"
AXIAL = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])  # columns: slice normal (+z), column dir (+y), row dir (+x)


def _phantom(nodule_mm: float = 16.0, seed: int = 0) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """A chest-like HU volume: soft-tissue body in air, two ellipsoidal lungs, one nodule in the right lung.

    Returns (volume, spacing, origin, nodule centre (k, j, i)).
    """
    rng = np.random.default_rng(seed)
    nk, nj, ni = 24, 256, 256
    sp = (5.0, 0.8, 0.8)
    k, j, i = np.ogrid[:nk, :nj, :ni]
    vol = np.full((nk, nj, ni), -1000.0, np.float32)
    body = (((i - 128) * 0.8 / 90) ** 2 + ((j - 128) * 0.8 / 70) ** 2 <= 1)[0]
    vol[:, body] = 40.0
    for ci in (128 - 55, 128 + 55):
        lung = ((i - ci) * 0.8 / 35) ** 2 + ((j - 128) * 0.8 / 45) ** 2 + ((k - 12) * 5.0 / 55) ** 2 <= 1
        vol[lung] = -850.0
    centre = (12.0, 128.0, 128.0 - 55)  # patient right = smaller LPS x = smaller column index here
    r = nodule_mm / 2
    L.insert_nodule(vol, sp, centre, (r, r, r), hu=30.0, rng=rng, edge_mm=1.0)
    vol += rng.normal(0.0, 15.0, vol.shape).astype(np.float32)
    return vol, sp, (-102.0, -102.0, -60.0), centre


# ------------------------------------------------------------------------------------ no data needed


def test_geometry_round_trip_oblique() -> None:
    rot = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    idx = np.array([[0, 0, 0], [3.5, 10, 200], [63, 511, 0.25]])
    sp, org = (5.0, 0.84, 0.84), (-228.0, -93.0, -439.0)
    lps = L.index_to_lps(idx, sp, org, rot)
    assert np.allclose(L.lps_to_index(lps, sp, org, rot), idx)
    # one slice step moves 5 mm along the normal (direction column 0)
    assert np.allclose(lps[1] - L.index_to_lps([[2.5, 10, 200]], sp, org, rot)[0], 5.0 * rot[:, 0])


def test_insert_nodule_profile_and_partial_volume() -> None:
    vol = np.full((20, 64, 64), -850.0, np.float32)
    crop, p = L.insert_nodule(vol, (5.0, 1.0, 1.0), (10, 32, 32), (6, 6, 6), hu=20.0, edge_mm=1.0)
    assert vol[10, 32, 32] == pytest.approx(20.0, abs=1.0)
    assert vol[10, 32, 45] == pytest.approx(-850.0, abs=1.0)
    # the next slice is 5 mm away from a 6 mm-radius sphere: partly filled (partial volume)
    assert -850.0 < vol[11, 32, 32] < 20.0 and -850.0 < vol[9, 32, 32] < 20.0
    assert p.shape == vol[crop].shape and 0.0 <= p.min() and p.max() <= 1.0


def test_phantom_lung_masks_and_candidate() -> None:
    vol, sp, org, centre = _phantom()
    an = M.analyse_volume(vol, sp, AXIAL)
    expected_ml = 2 * 4 / 3 * np.pi * 35 * 45 * 55 / 1000.0  # two ellipsoids
    assert an.masks.volume_ml == pytest.approx(expected_ml, rel=0.15)
    right = an.masks.side == 1
    left = an.masks.side == 2
    assert right.any() and left.any()
    # patient right (side 1) lies at smaller column index for this geometry
    assert np.nonzero(right)[2].mean() < np.nonzero(left)[2].mean()
    # the nodule is inside the filled lung mask and found as a candidate
    assert an.masks.side[12, 64, 36] == 1
    cands = [M._to_full(an, c, sp, org, AXIAL) for c in an.candidates]
    want = L.index_to_lps([centre], sp, org, AXIAL)[0]
    d = [np.linalg.norm(np.asarray(c["centre_lps"]) - want) for c in cands]
    best = cands[int(np.argmin(d))]
    assert min(d) < 4.0
    assert 10.0 < best["diameter_mm"] < 22.0
    x0, y0, z0, x1, y1, z1 = best["box_lps"]
    assert x0 <= want[0] <= x1 and y0 <= want[1] <= y1 and z0 <= want[2] <= z1


def test_lesions_merge_and_hit_rule() -> None:
    import pandas as pd

    s = L.CtSeries(volume_hu=np.zeros((6, 8, 8), np.float32), spacing=(5.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=AXIAL, sop_instance_uids=[f"1.2.{k}" for k in range(6)],
                   files=[Path(f"f{k}.dcm") for k in range(6)])
    ann = pd.DataFrame({
        "sop_instance_uid": ["1.2.1", "1.2.2", "1.2.3", "1.2.5", "9.9.9"],
        "xmin": [10, 12, 11, 100, 0], "ymin": [20, 21, 22, 100, 0],
        "xmax": [30, 31, 29, 120, 1], "ymax": [40, 41, 39, 110, 1]})
    lesions, boxes, unmatched = M.load_lesions(s, ann)
    assert sorted(len(les.boxes) for les in lesions) == [1, 3]
    assert len(boxes) == 4 and unmatched == 1
    big = next(les for les in lesions if len(les.boxes) == 3)
    assert big.k_range == (1, 3) and big.box_voxel == [1, 20, 10, 3, 41, 31]
    hit = {"centre_voxel": [4.0, 30.0, 20.0], "box_voxel": [4, 28, 18, 4, 32, 22]}  # one slice past the end
    assert M.hits_lesion(hit, big)
    far_z = {"centre_voxel": [5.0, 30.0, 20.0], "box_voxel": [5, 28, 18, 5, 32, 22]}
    assert not M.hits_lesion(far_z, big)
    off_plane = {"centre_voxel": [2.0, 60.0, 60.0], "box_voxel": [2, 58, 58, 2, 62, 62]}
    assert not M.hits_lesion(off_plane, big)
    overlapping = {"centre_voxel": [2.0, 45.0, 20.0], "box_voxel": [1, 18, 8, 3, 44, 33]}  # centre outside, IoU high
    assert M.hits_lesion(overlapping, big)


def test_exact_intervals() -> None:
    lo, hi = M._clopper_pearson(1, 1)
    assert lo == pytest.approx(0.025) and hi == 1.0
    assert M._clopper_pearson(0, 4)[0] == 0.0
    lo, hi = M._poisson_rate_ci(5, 1)
    assert lo == pytest.approx(1.6235, abs=1e-3) and hi == pytest.approx(11.668, abs=1e-2)


def _two_series() -> list:
    return [M._SeriesResult("a", "1", np.array([0.9, 0.8, 0.3]), np.array([[False], [True], [False]]),
                            np.zeros((3, 0), bool), 0.0),
            M._SeriesResult("b", "2", np.array([0.95, 0.1]), np.array([[True], [False]]), np.zeros((2, 0), bool), 0.0)]


def test_froc_is_monais_and_metrics_agree_with_scipy_and_sklearn() -> None:
    from monai.metrics import compute_froc_curve_data, compute_froc_score
    from scipy.stats import binomtest, gamma
    from sklearn.metrics import recall_score

    res = _two_series()
    fr = M._froc(res)
    # the same inputs straight through MONAI: FP scores 0.9, 0.3, 0.1; lesion best-hit scores 0.8, 0.95
    fps, sens = compute_froc_curve_data(np.array([0.9, 0.3, 0.1]), np.array([0.8, 0.95]), 2, 2)
    assert fr["cpm"] == pytest.approx(compute_froc_score(fps, sens, M.FROC_RATES))
    assert fr["sensitivity_at_fp"]["0.5"] == pytest.approx(compute_froc_score(fps, sens, (0.5,)))
    # at threshold 0.8 both lesions are found with one FP (0.9) over two series: the curve holds (0.5, 1.0)
    assert {(p["fp_per_series"], p["sensitivity"]) for p in fr["points"]} >= {(0.5, 1.0), (0.0, 0.5)}
    assert fr["sensitivity_at_fp"]["0.25"] == pytest.approx(0.5)  # between (0, 0.5) and (0.5, 0.5)
    assert fr["sensitivity_at_fp"]["1"] == pytest.approx(1.0)
    assert fr["sensitivity_at_fp"]["10"] == 1.0
    m = M._metrics_at(res, 0.85, n_boot=200)
    # lesion sensitivity = recall over lesions (a: 0.8 < 0.85 missed, b: 0.95 found)
    assert m["lesion_sensitivity"]["value"] == recall_score([1, 1], [0, 1]) == 0.5
    assert m["fp_per_series"]["value"] == 0.5
    for k, n in ((0, 4), (1, 1), (3, 7), (11, 11)):
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert M._clopper_pearson(k, n) == pytest.approx([ci.low, ci.high])
    for count in (0, 1, 5, 40):  # Garwood interval through the gamma quantiles
        lo = 0.0 if count == 0 else gamma.ppf(0.025, count)
        assert M._poisson_rate_ci(count, 2) == pytest.approx([lo / 2, gamma.ppf(0.975, count + 1) / 2])
    empty = M._froc([])
    assert empty["points"] == [] and np.isnan(empty["cpm"])


def test_auroc_used_for_the_scorer_agrees_with_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from cds.evaluation.metrics import auroc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 2)  # ties included
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_predict_rejects_bad_inputs() -> None:
    vol = np.full((8, 32, 32), -1000.0, np.float32)
    with pytest.raises(ParameterError, match="volume_hu"):
        M.predict(None, vol[0], (5.0, 0.8, 0.8), (0, 0, 0), AXIAL)
    with pytest.raises(ParameterError, match="spacing"):
        M.predict(None, vol, (5.0, 0.8), (0, 0, 0), AXIAL)
    with pytest.raises(ParameterError, match="direction"):
        M.predict(None, vol, (5.0, 0.8, 0.8), (0, 0, 0), np.zeros((3, 3)))
    for thick in (10.5, 0.3):
        with pytest.raises(ModelInputError, match=r"slice spacing .* outside the supported 0.5-10.0 mm"):
            M.predict(None, vol, (thick, 0.8, 0.8), (0, 0, 0), AXIAL)
    with pytest.raises(ModelInputError, match="Hounsfield"):
        M.predict(None, np.zeros((8, 32, 32)), (5.0, 0.8, 0.8), (0, 0, 0), AXIAL)
    with pytest.raises(ModelInputError, match="lung"):  # CT-like values but no enclosed air at all
        body = np.full((8, 32, 32), 40.0, np.float32)
        body[0, 0, 0] = -1000.0
        M.predict(None, body, (5.0, 0.8, 0.8), (0, 0, 0), AXIAL)


def test_box_weights_and_thick_simulation_keep_the_mean() -> None:
    w = L.box_weights(64, 5.0, 8.0)
    assert w.shape == (40, 64) and np.allclose(w.sum(1), 1.0)  # complete 8 mm slabs of 320 mm
    assert np.allclose(w.sum(0)[:-1], 5.0 / 8.0)  # every thin slice counted once (the last falls out)
    vol = np.random.default_rng(0).normal(size=(40, 6, 6)).astype(np.float32)
    thick, w2 = L.simulate_thick_slices(vol, 2.5, 10.0)
    assert thick.shape == (10, 6, 6)
    assert np.allclose(thick[3], vol[12:16].mean(0), atol=1e-5)
    with pytest.raises(ParameterError, match="thickness_mm"):
        L.simulate_thick_slices(vol, 2.5, 1.0)
    partial = L.box_weights(3, 1.0, 2.0, phase_mm=0.5, complete=False)  # crops: partial end voxels kept
    assert np.allclose(partial.sum(), 1.5) and partial.shape == (3, 3)  # [-2, 0], [0, 2], [2, 4] mm


def test_insert_crop_keeps_the_nodule_volume_at_any_slice_thickness() -> None:
    m = np.zeros((20, 24, 24), bool)
    zz, yy, xx = np.mgrid[:20, :24, :24]
    m[((zz - 10) * 1.0) ** 2 + ((yy - 12) * 0.7) ** 2 + ((xx - 12) * 0.7) ** 2 <= 5.0**2] = True
    want_mm3 = m.sum() * 1.0 * 0.7 * 0.7
    for sz in (1.25, 5.0, 10.0):
        v = np.full((12, 40, 40), -850.0, np.float32)
        _, p = L.insert_crop(v, (sz, 0.8, 0.8), (6, 20, 20), np.full(m.shape, 40.0), m, (1.0, 0.7, 0.7),
                             phase_mm=(0.3, 0.1, 0.2))
        assert p.sum() * sz * 0.64 == pytest.approx(want_mm3, rel=1e-6)
        assert v.max() <= 40.0 + 1e-3 and v.min() >= -850.0 - 1e-3
        assert (p.max() > 0.95) == (sz < 10.0)  # a 10 mm nodule never fills a 10 mm slice with a random phase
    with pytest.raises(ParameterError, match="crop_mask"):
        L.insert_crop(v, (5.0, 0.8, 0.8), (6, 20, 20), np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1, 1))


def test_work_grid_of_thick_slices_maps_back() -> None:
    w, g = L.work_grid(np.arange(3.0)[:, None, None] * np.ones((3, 4, 4), np.float32), (8.0, 0.8, 0.8))
    assert g.spacing == (4.0, 1.6, 1.6) and w.shape == (5, 2, 2)
    assert w[:, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]  # linear along the slice normal
    assert g.to_full((4, 1, 1)) == (2.0, 2.5, 2.5)
    assert g.box_to_full((0, 0, 0, 4, 1, 1), (3, 4, 4)) == [0, 0, 0, 2, 3, 3]
    _, g5 = L.work_grid(np.zeros((4, 4, 4), np.float32), (1.25, 0.8, 0.8))
    assert g5.scale == (2.0, 2.0, 2.0) and g5.box_to_full((1, 0, 0, 1, 0, 0), (4, 4, 4)) == [2, 0, 0, 3, 1, 1]


def test_phantom_nodule_found_on_a_10mm_reconstruction() -> None:
    vol, sp, org, centre = _phantom(nodule_mm=18.0)
    thick, w = L.simulate_thick_slices(vol, sp[0], 10.0)
    tsp = (10.0, sp[1], sp[2])
    torg = (org[0], org[1], org[2] - sp[0] / 2 + 5.0)  # first slab's centre along +z
    cands = M.predict(None, thick, tsp, torg, AXIAL)
    want = L.index_to_lps([centre], sp, org, AXIAL)[0]
    d = [np.linalg.norm(np.asarray(c["centre_lps"]) - want) for c in cands]
    assert cands and min(d) < 6.0
    best = cands[int(np.argmin(d))]
    assert 0 <= best["box_voxel"][0] <= best["box_voxel"][3] < thick.shape[0]


def test_thick_lesions_follow_the_slabs() -> None:
    s = L.CtSeries(volume_hu=np.zeros((8, 4, 4), np.float32), spacing=(5.0, 1.0, 1.0), origin=(0.0, 0.0, -20.0),
                   direction=AXIAL, sop_instance_uids=[f"1.2.{k}" for k in range(8)], files=[], series_uid="1.2")
    ts, w = L.thick_series(s, 10.0)
    assert ts.spacing == (10.0, 1.0, 1.0) and ts.shape == (4, 4, 4) and ts.origin[2] == pytest.approx(-17.5)
    assert len(set(ts.sop_instance_uids)) == 4
    les = M.Lesion({2: (1, 1, 2, 2), 3: (0, 0, 3, 1), 4: (1, 1, 3, 3)})
    tl, tb = M.thick_lesions([les], [(2, (1, 1, 2, 2)), (4, (1, 1, 3, 3))], w)
    assert tl[0].boxes == {1: (0, 0, 3, 2), 2: (1, 1, 3, 3)} and tb == [(1, (1, 1, 2, 2)), (2, (1, 1, 3, 3))]


class _FakeCharacteriser:
    """Stands in for cds.models.tasks.ct_nodule_characterisation (same API), records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def load_bundle(self) -> str:
        return "fake-bundle"

    def characterise(self, bundle, volume_hu, spacing_zyx, centre_zyx):  # noqa: ANN001, ANN201
        self.calls.append((bundle, volume_hu.shape, tuple(spacing_zyx), tuple(centre_zyx)))
        if centre_zyx[0] < 0:
            raise ModelInputError("centre_zyx", "outside the volume")
        return {"diameter_mm": 11.5, "volume_mm3": 640.0, "likelihood": 0.42, "size_category": ">8 mm",
                "other": "ignored"}


def test_characterisation_reaches_findings_and_fhir() -> None:
    from cds.fhir.writer import results_bundle
    from cds.models.bundle import load_bundle

    fake = _FakeCharacteriser()
    b = load_bundle(M.DEFAULT_BUNDLE)
    vol = np.zeros((4, 8, 8), np.float32)
    cands = [{"score": 0.99, "centre_voxel": [1.0, 2.0, 3.0], "box_voxel": [0, 1, 2, 2, 3, 4],
              "box_lps": [0, 0, 0, 5, 5, 5], "centre_lps": [2, 2, 2], "diameter_mm": 9.0, "volume_ml": 0.4,
              "side": "left", "features": {}},
             {"score": 0.98, "centre_voxel": [-1.0, 2.0, 3.0], "box_voxel": [0, 1, 2, 0, 3, 4],
              "box_lps": [0, 0, 0, 5, 5, 5], "centre_lps": [2, 2, 2], "diameter_mm": 5.0, "volume_ml": 0.1,
              "side": "left", "features": {}},
             {"score": 0.0, "centre_voxel": [1.0, 1.0, 1.0]}]
    out = M.characterise_candidates(cands, vol, (5.0, 0.8, 0.8), fake, min_score=0.5)
    assert [c[1:] for c in fake.calls] == [((4, 8, 8), (5.0, 0.8, 0.8), (1.0, 2.0, 3.0)),
                                           ((4, 8, 8), (5.0, 0.8, 0.8), (-1.0, 2.0, 3.0))]
    assert fake.calls[0][0] == "fake-bundle" and "characterisation" not in cands[0]  # input not changed
    assert out[0]["characterisation"] == {"diameter_mm": 11.5, "volume_mm3": 640.0, "likelihood": 0.42,
                                          "size_category": ">8 mm"}
    assert "outside the volume" in out[1]["characterisation"]["error"] and "characterisation" not in out[2]
    f0, f1 = M.to_findings(b, out[:2], "p1", "1.2.3", "1.2.3.4")
    assert f0.extra["characterisation"]["size_category"] == ">8 mm" and f0.extra["characterisation"]["likelihood"] == 0.42
    assert f0.extra["diameter_mm"] == 11.5 and f0.extra["volume_ml"] == pytest.approx(0.64)
    assert "size category >8 mm" in f0.explanation and "likelihood 0.42" in f0.explanation
    assert "not characterised: centre_zyx" in f1.explanation and f1.extra["diameter_mm"] == 5.0
    # a characteriser that finds no nodule, or does not vouch for the likelihood, says so
    unsure = dict(out[0], characterisation={"diameter_mm": 6.2, "volume_mm3": 120.0, "likelihood": None,
                                            "size_category": "3", "reasons": ["slices too thick"]})
    none = dict(out[0], characterisation={"diameter_mm": None, "volume_mm3": None, "likelihood": None,
                                          "size_category": None, "found": False})
    fu, fn = M.to_findings(b, [unsure, none], "p1", "1.2.3", "1.2.3.4")
    assert "likelihood not given (slices too thick)" in fu.explanation and fu.extra["diameter_mm"] == 6.2
    assert "no nodule segmented" in fn.explanation and fn.extra["diameter_mm"] == 9.0
    fb = results_bundle([f0], {b.model_id: b}, recorded="2026-01-01T00:00:00Z")
    obs = next(e["resource"] for e in fb["entry"] if e["resource"]["resourceType"] == "Observation")
    comps = {c["code"]["coding"][0]["display"]: c.get("valueQuantity", {}).get("value") for c in obs["component"]}
    assert comps["Diameter"] == 11.5 and comps["Volume"] == pytest.approx(0.64)
    assert "size category >8 mm" in obs["note"][0]["text"]
    assert comps["Likelihood radiologists rate the nodule suspicious (LIDC >= 4; not pathology)"] == 0.42
    assert not any("Lung-RADS" in k for k in comps)  # ">8 mm" is not a Lung-RADS size band: no coded band
    fb = results_bundle([fu], {b.model_id: b}, recorded="2026-01-01T00:00:00Z")
    obs = next(e["resource"] for e in fb["entry"] if e["resource"]["resourceType"] == "Observation")
    bands = [c for c in obs["component"] if "Lung-RADS" in c["code"]["coding"][0]["display"]]
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in bands] == ["3"]
    assert not any("suspicious" in c["code"]["coding"][0]["display"] for c in obs["component"])  # not vouched
    from fhir.resources.R4B.observation import Observation

    Observation.model_validate(obs)
    with pytest.raises(ParameterError, match="characteriser"):
        class Bad(_FakeCharacteriser):
            def characterise(self, *a):  # noqa: ANN002, ANN202
                return {"diameter_mm": 1.0}
        M.characterise_candidates(cands[:1], vol, (5.0, 0.8, 0.8), Bad())


def test_a_characteriser_without_its_bundle_is_reported_not_fatal() -> None:
    class NoBundle(_FakeCharacteriser):
        def load_bundle(self):  # noqa: ANN202
            raise ParameterError("bundle", "/x/ct-nodule-characterisation: no such bundle")

    out = M.characterise_candidates([{"score": 0.9, "centre_voxel": [0, 0, 0]}], np.zeros((2, 2, 2)), (5, 1, 1),
                                    NoBundle())
    assert out[0]["characterisation"]["error"].startswith("characterisation model unavailable: bundle")


def test_real_characterisation_module_on_the_phantom() -> None:
    """The task's default characteriser is cds.models.tasks.ct_nodule_characterisation (when its bundle ships)."""
    from cds.images.image import Image
    from cds.models.bundle import load_bundle

    ch = M.default_characteriser()
    assert ch is not None and ch.__name__ == M.CHARACTERISATION_MODULE
    if not (ch.DEFAULT_BUNDLE / "configs" / "metadata.json").is_file():
        pytest.skip(f"{ch.DEFAULT_BUNDLE} is not shipped yet")
    vol, sp, org, centre = _phantom(nodule_mm=16.0)
    image = Image(vol, tuple(sp), tuple(org), AXIAL, "CT", {"patient_frame": True}, "phantom")
    fs = M.TASK.predict(load_bundle(M.DEFAULT_BUNDLE), image, {})
    assert fs and all("characterisation" in f.extra for f in fs)
    want = L.index_to_lps([centre], sp, org, AXIAL)[0]
    near = min(fs, key=lambda f: np.linalg.norm(np.asarray(f.extra["centre_lps"]) - want))
    c = near.extra["characterisation"]
    assert "error" not in c and c["found"] and 10.0 < c["diameter_mm"] < 22.0 and c["size_category"] in ("4A", "4B")
    assert c["likelihood"] is None and "thicker" in " ".join(c["reasons"])  # 5 mm slices: no likelihood vouched
    assert "size category" in near.explanation


def test_task_predict_characterises_only_reported_candidates() -> None:
    from cds.images.image import Image
    from cds.models.bundle import load_bundle

    vol, sp, org, _ = _phantom()
    image = Image(vol, tuple(sp), tuple(org), AXIAL, "CT", {"patient_frame": True}, "phantom")
    fake = _FakeCharacteriser()
    b = load_bundle(M.DEFAULT_BUNDLE)
    fs = M.TASK.predict_with(b, image, {}, fake)
    assert fs and len(fake.calls) == len(fs)
    assert all(f.extra["characterisation"]["size_category"] == ">8 mm" for f in fs)
    assert all(c[2] == tuple(sp) and c[1] == vol.shape for c in fake.calls)


def _mr_file(path: Path) -> Path:
    """A small valid MR DICOM file written with pydicom (no data needed)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), generate_uid()
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_reader_and_evaluate_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a folder"):
        L.read_ct_series(tmp_path / "missing")
    with pytest.raises(ImageReadError, match="no DICOM"):
        L.read_ct_series(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(ImageReadError, match="x.dcm"):
        L.read_ct_series(tmp_path / "bad")
    mr = _mr_file(tmp_path / "pet" / "p1" / "s1" / "1-1.dcm")
    with pytest.raises(ImageReadError, match="needs CT") as ei:
        L.read_ct_series(mr.parent)
    assert str(mr) in str(ei.value)
    with pytest.raises(ParameterError, match="data_dir"):
        M.evaluate(tmp_path / "missing")
    with pytest.raises(ParameterError, match="annotations.csv"):
        M.evaluate(tmp_path / "pet")
    (tmp_path / "pet" / "annotations.csv").write_text("sop_instance_uid,xmin,ymin,xmax,ymax\n1.2.3,1,1,2,2\n")
    with pytest.raises(ImageReadError, match="no CT series"):
        M.evaluate(tmp_path / "pet")


def test_shipped_bundle_card() -> None:
    from cds.models.bundle import load_bundle

    b = load_bundle(M.DEFAULT_BUNDLE)
    c = b.card
    assert c["task"] == M.TASK.name == b.model_card.task and c["model_id"] == "ct-lung-nodule"
    assert c["outputs"][0]["code"] == "27925004"
    lo, hi = c["indeterminate"]
    assert 0.0 < lo <= c["threshold"] <= hi < 1.0
    assert b.inference["features"] == list(L.CANDIDATE_FEATURES)
    assert c["performance"]["n_lesions"] >= 1
    assert (b.path / "docs" / "README.md").read_text().count("synthetic") >= 2
    net = b.network()
    assert sum(p.numel() for p in net.parameters()) == 12 * 32 + 32 + 32 + 1


# ------------------------------------------------------------------------------------ real CT series


@pytest.fixture(scope="module")
def series(shared_data: Path) -> L.CtSeries:
    return L.read_ct_series(shared_data / SERIES)


@pytest.fixture(scope="module")
def real_masks(series: L.CtSeries) -> tuple[L.LungMasks, tuple[int, int, int]]:
    f = L.work_factors(series.spacing)
    w = L.work_volume(series.volume_hu, f)
    wsp = tuple(s * k for s, k in zip(series.spacing, f, strict=True))
    return L.lung_masks(w, wsp, series.direction), f


@pytest.fixture(scope="module")
def real_candidates(series: L.CtSeries) -> list[dict]:
    return M.predict(None, series.volume_hu, series.spacing, series.origin, series.direction)


@pytest.mark.shared
def test_real_series_geometry(series: L.CtSeries) -> None:
    assert series.volume_hu.shape == (64, 512, 512)
    assert series.spacing == pytest.approx((5.0, 0.841796875, 0.841796875))
    # ascending along the normal: the first slice is the most inferior (file 1-64.dcm, z = -439)
    assert series.origin[2] == pytest.approx(-439.0) and series.files[0].name == "1-64.dcm"
    assert series.volume_hu.min() == pytest.approx(-1024.0)


@pytest.mark.shared
def test_real_lung_mask_volume(real_masks: tuple, series: L.CtSeries) -> None:
    masks, _ = real_masks
    litres = masks.volume_ml / 1000.0
    assert 3.0 < litres < 8.0  # adult lungs at inspiration
    right = (masks.side == 1).sum() * np.prod(masks.spacing) / 1e6
    left = (masks.side == 2).sum() * np.prod(masks.spacing) / 1e6
    assert right > 1.0 and left > 1.0 and right > left * 0.8  # the right lung is usually the larger
    assert masks.region[masks.lung].all()  # the search region contains the lungs
    # the trachea (air at z = -154 mm, slice k = 57, rows 276-281, columns 256-261) is not lung
    assert series.volume_hu[57, 276:282, 256:262].mean() < -900
    assert not masks.lung[57, 138:141, 128:131].any()


@pytest.mark.slow
@pytest.mark.shared
def test_synthetic_sphere_in_real_ct_found_at_its_lps_position(series: L.CtSeries, real_masks: tuple) -> None:
    from scipy import ndimage as ndi

    masks, f = real_masks
    right = masks.side == 1
    dist = ndi.distance_transform_edt(right, sampling=masks.spacing)
    dist[40:, :, :] = 0  # stay well below the annotated lesion's slices (k 41..51)
    kw = np.unravel_index(int(np.argmax(dist)), dist.shape)
    centre = np.array([(kw[a] + 0.5) * f[a] - 0.5 for a in range(3)])
    vol = series.volume_hu.copy()
    L.insert_nodule(vol, series.spacing, centre, (8.0, 8.0, 8.0), hu=20.0, edge_mm=1.0, noise_hu=15.0,
                    rng=np.random.default_rng(0), slice_thickness=5.0)
    want = L.index_to_lps([centre], series.spacing, series.origin, series.direction)[0]
    cands = M.predict(None, vol, series.spacing, series.origin, series.direction)
    near = [c for c in cands if np.linalg.norm(np.asarray(c["centre_lps"]) - want) < 5.0]
    assert near, "no candidate within 5 mm of the inserted 16 mm sphere"
    best = max(near, key=lambda c: c["score"])
    threshold = json.loads((M.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]["threshold"]
    assert best["score"] >= threshold
    x0, y0, z0, x1, y1, z1 = best["box_lps"]
    assert x0 <= want[0] <= x1 and y0 <= want[1] <= y1 and z0 <= want[2] <= z1
    assert 12.0 < best["diameter_mm"] < 22.0


@pytest.mark.slow
@pytest.mark.shared
def test_predict_real_series_hits_the_annotated_mass(series: L.CtSeries, real_candidates: list, shared_data: Path) -> None:
    import pandas as pd

    ann = pd.read_csv(shared_data / "lung-pet-ct-dx" / "annotations.csv")
    lesions, boxes, unmatched = M.load_lesions(series, ann)
    assert len(lesions) == 1 and len(boxes) == 11 and unmatched == 0
    card = json.loads((M.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]
    hits = [c for c in real_candidates if M.hits_lesion(c, lesions[0]) and c["score"] >= card["threshold"]]
    assert hits, "no candidate at the operating point hits the annotated mass"
    # the mass is in the patient's left lung: positive LPS x
    assert hits[0]["centre_lps"][0] > 0 and hits[0]["side"] == "left"
    findings = M.to_findings(None, real_candidates, series.patient_id, series.study_uid, series.series_uid,
                             series.sop_instance_uids, {})
    assert findings and all(isinstance(f, Finding) for f in findings)
    assert all(f.location.kind == "box" and f.location.frame == "LPS" and len(f.location.coords) == 6
               for f in findings)
    assert all(f.code == "27925004" and f.interpretation in ("positive", "indeterminate") for f in findings)
    top = next(f for f in findings if f.probability == pytest.approx(hits[0]["score"]))
    assert top.location.sop_instance_uid in series.sop_instance_uids
    assert Finding.from_dict(json.loads(json.dumps(top.to_dict()))) == top


@pytest.mark.slow
@pytest.mark.shared
def test_evaluate_schema_and_card_numbers_reproduce(shared_data: Path) -> None:
    res = M.evaluate(shared_data / "lung-pet-ct-dx", n_boot=2000)
    json.dumps(res)  # JSON-ready
    assert res["task"] == "ct-lung-nodule" and res["n_series"] == 1 and res["n_lesions"] == 1
    assert res["n_boxes"] == 11 and res["n_boxes_unmatched"] == 0
    for k in ("lesion_sensitivity", "fp_per_series", "box_sensitivity"):
        m = res["metrics"][k]
        assert set(m) >= {"value", "ci95", "ci95_bootstrap"} and len(m["ci95"]) == 2
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    pts = res["froc"]["points"]
    assert all({"fp_per_series", "sensitivity", "threshold"} <= set(p) for p in pts)
    assert [p["threshold"] for p in pts] == sorted((p["threshold"] for p in pts), reverse=True)
    assert set(res["froc"]["sensitivity_at_fp"]) >= {"1", "2", "4", "8"}
    card = json.loads((M.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]["performance"]
    for k, m in card["metrics"].items():
        for field in ("value", "ci95", "ci95_bootstrap"):
            assert res["metrics"][k][field] == pytest.approx(m[field]), (k, field)
    assert res["froc"]["sensitivity_at_fp"] == pytest.approx(card["froc"]["sensitivity_at_fp"])
    assert res["froc"]["cpm"] == pytest.approx(card["froc"]["cpm"])
    # the simulated thick reconstructions: 8 and 10 mm from the 5 mm series, every number as in the card
    assert set(res["by_slice_thickness"]) == {"native", "8", "10"} == set(card["by_slice_thickness"])
    for key, got in res["by_slice_thickness"].items():
        want = card["by_slice_thickness"][key]
        assert got["n_lesions"] == want["n_lesions"] == 1
        for k, m in want["metrics"].items():
            for field in ("value", "ci95", "ci95_bootstrap"):
                assert got["metrics"][k][field] == pytest.approx(m[field]), (key, k, field)
        assert got["froc"]["sensitivity_at_fp"] == pytest.approx(want["froc"]["sensitivity_at_fp"])
        assert got["froc"]["cpm"] == pytest.approx(want["froc"]["cpm"])
        assert got["baseline_log_response"]["lesion_rank"] == want["baseline_log_response"]["lesion_rank"]
        assert got["lesion_rank"] == want["lesion_rank"]
        assert got["false_positives_scoring_above_lesion"] == want["false_positives_scoring_above_lesion"]
    assert card["evaluation_command"] == "cds evaluate ct-lung-nodule --data ../shared/data/lung-pet-ct-dx --json"
    assert card["slice_thickness_table"] == res["slice_thickness_table"]


@pytest.mark.slow
@pytest.mark.shared
def test_a_thick_dicom_folder_evaluates_like_the_simulation(shared_data: Path, tmp_path: Path) -> None:
    """A 10 mm DICOM copy written to disk is read, accepted and scored like the in-memory simulation."""
    import pandas as pd

    out = M.write_thick_copy(shared_data / "lung-pet-ct-dx", tmp_path / "thick", 10.0)
    s = L.read_ct_series(L.find_series_folders(out)[0])
    assert s.spacing[0] == pytest.approx(10.0) and s.shape == (32, 512, 512) and s.slice_thickness == 10.0
    ann = pd.read_csv(out / "annotations.csv")
    assert len(ann) == 11 and set(ann["sop_instance_uid"]) <= set(s.sop_instance_uids)
    res = M.evaluate(out, n_boot=200, thicknesses_mm=())
    assert res["n_boxes_unmatched"] == 0 and set(res["by_slice_thickness"]) == {"native"}
    assert res["per_series"][0]["slice_spacing_mm"] == pytest.approx(10.0)
    card = json.loads((M.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]["performance"]
    want = card["by_slice_thickness"]["10"]
    # stored values are HU rounded to integers: the same lesion outcome, scores within rounding
    assert res["metrics"]["lesion_sensitivity"]["value"] == want["metrics"]["lesion_sensitivity"]["value"]
    assert abs(res["metrics"]["fp_per_series"]["value"] - want["metrics"]["fp_per_series"]["value"]) <= 2
    with pytest.raises(ParameterError, match="thickness_mm"):
        M.write_thick_copy(shared_data / "lung-pet-ct-dx", tmp_path / "thin", 4.0)


@pytest.mark.shared
def test_evaluate_skips_non_ct_series(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = shared_data / "lung-pet-ct-dx"
    root = tmp_path / "data"
    shutil.copytree(src / "Lung_Dx-A0001", root / "Lung_Dx-A0001")
    shutil.copy(src / "annotations.csv", root / "annotations.csv")
    _mr_file(root / "Lung_Dx-A0001" / "9-MR" / "1-1.dcm")
    seen = []

    def no_candidates(bundle, volume_hu, spacing, origin, direction, min_score=0.0):  # noqa: ANN001, ANN202
        seen.append(volume_hu.shape)
        return []

    monkeypatch.setattr(M, "predict", no_candidates)  # the folder walk is under test, not the detector
    res = M.evaluate(root, n_boot=50)
    assert seen == [(64, 512, 512), (40, 512, 512), (32, 512, 512)]  # as read, then 8 and 10 mm slabs
    assert res["n_series"] == 1 and len(res["skipped"]) == 1 and "MR" in res["skipped"][0]["reason"]
    assert res["metrics"]["lesion_sensitivity"]["value"] == 0.0
    assert res["metrics"]["lesion_sensitivity"]["ci95"][1] == pytest.approx(0.975)
    assert res["metrics"]["fp_per_series"]["value"] == 0.0


@pytest.mark.slow
@pytest.mark.shared
def test_quick_training_on_real_lidc_nodules(shared_data: Path, tmp_path: Path) -> None:
    """``train(quick=True)``: LIDC crops of disjoint patient splits pasted in, 5 and 10 mm, card sections filled."""
    from cds.models.bundle import load_bundle

    out = M.train(shared_data / "lung-pet-ct-dx", tmp_path / "b", quick=True,
                  lidc_dir=shared_data / "lidc-nodule-crops")
    b = load_bundle(out)
    td = b.card["training_data"]
    assert td["slice_spacings_mm"] == [5.0, 10.0] and set(td["held_out_lidc_in_left_lung"]) == {"native", "10"}
    assert td["n_positive"] > 0 and td["n_negative"] > 10 * td["n_positive"]
    assert all(v > 50 for v in td["lidc_patients_by_split"].values())
    for d in td["held_out_lidc_in_left_lung"].values():
        assert d["n_nodules"] == 12 and 0 <= d["found_by_any_candidate"] <= 12
        s = d["sensitivity_at_threshold"]
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1]
    lo, hi = b.card["indeterminate"]
    assert 0.0 < lo <= b.card["threshold"] <= hi < 1.0
    assert set(b.card["performance"]["by_slice_thickness"]) == {"native", "8", "10"}
