"""Tests of the mammography reference models (cds.models.tasks.mammo, mammo_density, mammo_abnormality).

Tests on real images use ../shared/data/mini-mias through the ``shared_data`` fixture (skipped with
the reason when absent). The two full evaluations (about 10 s and 30 s on one core) run once per
session and are shared by the schema and card tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cds.errors import CdsError, ImageReadError, ModelInputError, ParameterError
from cds.finding import Finding
from cds.models.tasks import mammo
from cds.models.tasks import mammo_abnormality as ma
from cds.models.tasks import mammo_density as md


@pytest.fixture(scope="module")
def mias(shared_data: Path) -> Path:
    d = shared_data / "mini-mias"
    if not (d / "labels.csv").is_file():
        pytest.skip(f"{d} has no labels.csv")
    return d


def _img(mias: Path, ref: str) -> np.ndarray:
    return mammo.read_mammogram(mias / "png" / f"{ref}.png")


@pytest.fixture(scope="module")
def density_eval(mias: Path) -> dict:
    return md.evaluate(mias)


@pytest.fixture(scope="module")
def abnormality_eval(mias: Path) -> dict:
    return ma.evaluate(mias)


# ------------------------------------------------------------------------------- breast region
def test_synthetic_half_disc_breast() -> None:
    img = np.zeros((300, 300), np.uint8)
    rr, cc = np.ogrid[:300, :300]
    img[(rr - 150) ** 2 + (cc - 299) ** 2 < 120**2] = 140  # chest wall on the right
    img[20:60, 20:60] = 250  # a film label far from the breast
    reg = mammo.segment_breast(img, mlo=False)
    assert reg.chest_wall == "right" and reg.flipped
    m = reg.mask_original("breast")
    assert not m[20:60, 20:60].any(), "the film label must not be part of the breast"
    assert abs(m.sum() / ((img == 140).sum()) - 1.0) < 0.05
    r, c = reg.to_original(*reg.to_work(150.0, 250.0))
    assert abs(r - 150.0) < 1e-6 and abs(c - 250.0) < 1e-6


def test_breast_mask_plausible_on_real_images(mias: Path) -> None:
    labels = mammo.load_labels(mias)
    img = _img(mias, "mdb011")
    m = mammo.segment_breast(img, "mdb011").mask_original("breast")
    assert 0.15 < m.mean() < 0.6
    label_pixels = np.zeros_like(m)
    label_pixels[37:205, 185:312] = img[37:205, 185:312] > 200  # the "L ML" film label of mdb011
    assert label_pixels.sum() > 1000 and not (m & label_pixels).any()
    # every marked abnormality centre lies inside the breast mask, and the chest wall side found
    # from the image agrees with the MIAS laterality convention (R: chest wall on the image's right)
    for ref, grp in labels.groupby("REFNUM"):
        reg = mammo.segment_breast(_img(mias, ref), ref)
        assert reg.chest_wall == mammo.chest_wall_from_laterality(grp["laterality"].iloc[0]), ref
        mask = reg.mask_original("breast")
        for row in grp.dropna(subset=["X", "Y"]).itertuples():
            assert mask[int(1024 - row.Y), int(row.X)], f"{ref}: marked centre outside the breast mask"


def test_pectoral_removed_on_known_image(mias: Path) -> None:
    img = _img(mias, "mdb019")  # right MLO: pectoral wedge in the upper right corner
    reg = mammo.segment_breast(img, "mdb019")
    frac = reg.pectoral.sum() / reg.breast.sum()
    assert 0.03 < frac < 0.35
    pect, tissue = reg.mask_original("pectoral"), reg.mask_original("tissue")
    edge = int(np.flatnonzero(reg.mask_original("breast")[50])[-1])
    assert pect[50, edge - 20] and not tissue[50, edge - 20]
    assert not (pect & tissue).any()
    assert img[pect].mean() > img[tissue].mean() + 10  # the muscle is brighter than the breast tissue
    # a breast without a muscle edge gets no pectoral mask
    flat = np.zeros((256, 256), np.uint8)
    flat[:, :180] = 120
    assert not mammo.segment_breast(flat).pectoral.any()


# --------------------------------------------------------------------------------------- density
def test_density_predictions_on_real_images(mias: Path) -> None:
    # training images of the shipped model: a sanity check that the model runs end to end and
    # separates clear-cut cases, not a performance estimate (that is evaluate's job)
    expected = {"mdb135": "F", "mdb151": "F", "mdb257": "D", "mdb288": "D", "mdb278": "G"}
    for ref, cls in expected.items():
        pred = md.predict(None, _img(mias, ref), {"laterality": None})
        assert pred["class"] == cls, (ref, pred["probabilities"])
        assert abs(sum(pred["probabilities"].values()) - 1.0) < 1e-9
        assert set(pred["features"]) == set(md.FEATURE_NAMES)
    f = md.to_findings(None, pred, "p1", "1.2.3", "1.2.3.4", ["1.2.3.4.5"], {})
    assert len(f) == 1 and f[0].code_system == md.CODE_SYSTEM and f[0].code == "G"
    assert set(f[0].extra["class_probabilities"]) == {"F", "G", "D"}
    assert f[0].interpretation in ("positive", "indeterminate")
    assert Finding.from_dict(json.loads(json.dumps(f[0].to_dict()))) == f[0]


@pytest.mark.slow
def test_density_evaluate_schema_and_card(density_eval: dict) -> None:
    r = density_eval
    assert r["task"] == "mammo-density" and r["split"] == "cross-validated"
    assert r["n_cases"] == 40 and r["n_patients"] == 20
    assert set(r["metrics"]) == {"accuracy", "kappa_linear", "balanced_accuracy"}
    for m in r["metrics"].values():
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    cm = np.array(r["confusion_matrix"]["counts"])
    assert cm.sum() == 40 and cm.trace() / 40 == pytest.approx(r["metrics"]["accuracy"]["value"], abs=1e-4)
    json.dumps(r)
    card = json.loads((md.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]
    perf = card["performance"]
    for k in ("metrics", "n_cases", "n_patients", "split", "confusion_matrix", "evaluation_command"):
        assert perf[k] == r[k], k
    assert perf["evaluation_command"] == "cds evaluate mammo-density --data ../shared/data/mini-mias --json"
    for key in ("intended_use", "proxy_for", "limitations", "outputs", "threshold", "training_data"):
        assert card[key], key


def test_kappa_linear_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    assert md.kappa_linear(y, y) == 1.0
    assert md.kappa_linear(y, 2 - y) < 0
    assert np.isnan(md.kappa_linear(np.zeros(4, int), np.zeros(4, int)))


# ---------------------------------------------------------------------------------- abnormality
def test_candidate_hits_marked_mass(mias: Path) -> None:
    img = _img(mias, "mdb202")  # spiculated malignant mass, MIAS centre (557, 772), radius 37
    t0 = time.process_time()
    pred = ma.predict(None, img, {"laterality": "L"})
    assert time.process_time() - t0 < 3.0, "more than 3 s of CPU for one 1024x1024 image"
    top = pred["candidates"][0]
    assert np.hypot(top["row"] - (1024 - 772), top["col"] - 557) <= 37
    assert top["called"] and pred["image_score"] == top["score"]
    fs = ma.to_findings(None, pred, "p1", "1.2.3", "1.2.3.4", ["1.2.3.4.5"], {})
    assert fs[0].location is None and fs[0].extra["level"] == "image"
    cand = fs[1]
    assert cand.code == "129714008" and cand.location.frame == "pixel"
    assert cand.location.coords == (top["col"], top["row"])
    assert len(fs) - 1 == min(pred["n_called"], ma.MAX_REPORTED)
    assert len({f.id for f in fs}) == len(fs)


@pytest.mark.slow
def test_abnormality_evaluate_schema_and_card(abnormality_eval: dict) -> None:
    r = abnormality_eval
    assert r["task"] == "mammo-abnormality" and r["split"] == "cross-validated"
    assert r["n_cases"] == 40 and r["n_patients"] == 20 and r["n_lesions"] == 15
    assert {"lesion_sensitivity", "fp_per_image", "auroc_abnormal_vs_normal"} <= set(r["metrics"])
    for m in r["metrics"].values():
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    sens = [p["sensitivity"] for p in r["froc"]]
    assert sens == sorted(sens) and [p["fp_per_image"] for p in r["froc"]] == list(ma.FROC_POINTS)
    assert sum(v["n"] for v in r["by_class"].values()) == 15
    json.dumps(r)
    card = json.loads((ma.DEFAULT_BUNDLE / "configs" / "metadata.json").read_text())["cds"]
    perf = card["performance"]
    for k in ("metrics", "froc", "by_class", "n_cases", "n_patients", "n_lesions", "split", "evaluation_command"):
        assert perf[k] == r[k], k
    assert card["outputs"][0]["code"] == "129714008"
    assert 0 < card["threshold"] < 1


def test_hits_marked_rule() -> None:
    pts = np.array([[100.0, 100.0], [100.0, 141.0]])
    assert ma.hits_marked(pts, [(100.0, 100.0, 40.0)]).tolist() == [True, False]
    assert ma.hits_marked(pts, []).tolist() == [False, False]


# ------------------------------------------------------------------- a folder the model has not seen
def test_unseen_and_mixed_folders(mias: Path, tmp_path: Path) -> None:
    from PIL import Image

    labels = pd.read_csv(mias / "labels.csv")
    refs = ["mdb011", "mdb012", "mdb201", "mdb202"]
    (tmp_path / "png").mkdir()
    for ref in refs:  # mirrored copies: new pixels, laterality then unknown
        Image.fromarray(np.ascontiguousarray(_img(mias, ref)[:, ::-1])).save(tmp_path / "png" / f"{ref}.png")
    sub = labels[labels["REFNUM"].isin(refs)].drop(columns=["laterality"]).copy()
    sub["X"] = 1023 - sub["X"]
    sub.to_csv(tmp_path / "labels.csv", index=False)
    r = md.evaluate(tmp_path, n_boot=50)
    assert r["split"] == "unseen" and r["n_cases"] == 4 and not r["excluded"]
    a = ma.evaluate(tmp_path, n_boot=50)
    assert a["split"] == "unseen" and a["n_lesions"] == 2
    # adding one training image: it is left out, the rest still uses the shipped model
    Image.open(mias / "png" / "mdb019.png").save(tmp_path / "png" / "mdb019.png")
    pd.concat([sub, labels[labels["REFNUM"] == "mdb019"]]).to_csv(tmp_path / "labels.csv", index=False)
    r2 = md.evaluate(tmp_path, n_boot=50)
    assert r2["split"] == "unseen" and r2["n_cases"] == 4
    assert r2["excluded"] == [{"refnum": "mdb019", "reason": "training image of this bundle"}]


def test_quick_train_writes_loadable_bundles(mias: Path, tmp_path: Path) -> None:
    from cds.models.bundle import load_bundle

    out = md.train(mias, tmp_path / "density", quick=True)
    b = load_bundle(out)
    assert b.card["training_data"]["n"] == 16 and b.card["performance"]["split"] == "cross-validated"
    assert (out / "docs" / "README.md").read_text().startswith("# mammo-density")
    W, bias = mammo.bundle_linear(b)
    assert W.shape == (3, len(md.FEATURE_NAMES)) and bias.shape == (3,)
    pred = md.predict(b, _img(mias, "mdb011"), None)
    assert pred["model_version"] == b.version


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad, msg", [
    (None, "no image given"),
    (np.zeros(100), "expected a 2D"),
    (np.zeros((10, 10)), "at least 64 pixels"),
    (np.full((128, 128), 7, np.uint8), "constant"),
    (np.full((128, 128), np.nan), "NaN"),
    (np.array([["a"] * 64] * 64), "not numeric"),
])
def test_bad_images_give_clear_errors(bad: object, msg: str) -> None:
    with pytest.raises(ModelInputError, match=msg) as exc:
        mammo.segment_breast(bad)
    assert str(exc.value).startswith("image_array:")


def test_no_breast_found() -> None:
    img = np.zeros((128, 128), np.uint8)
    img[60:62, 60:62] = 200
    with pytest.raises(ModelInputError, match="no breast region"):
        mammo.segment_breast(img)


def test_bad_files_and_folders_name_the_culprit(mias: Path, tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        mammo.read_mammogram(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="junk.png: cannot read"):
        mammo.read_mammogram(tmp_path / "junk.png")
    with pytest.raises(ParameterError, match="data_dir"):
        md.evaluate(tmp_path / "nope")
    with pytest.raises(ImageReadError, match="labels.csv missing"):
        ma.evaluate(tmp_path)
    (tmp_path / "labels.csv").write_text("REFNUM,CLASS\nmdb001,NORM\n")
    with pytest.raises(ImageReadError, match=r"missing column\(s\) \['BG'\]"):
        md.evaluate(tmp_path)
    (tmp_path / "labels.csv").write_text("REFNUM,BG,CLASS\nmdb999,F,NORM\n")
    with pytest.raises(ImageReadError, match=r"png/mdb999.png: image for labels.csv row REFNUM=mdb999"):
        md.evaluate(tmp_path)
    with pytest.raises(ParameterError, match="pred"):
        ma.to_findings(None, {"class": "F"}, "p", "1.2")
    with pytest.raises(ParameterError, match="pred"):
        md.to_findings(None, {"candidates": []}, "p", "1.2")
    assert issubclass(ImageReadError, CdsError)
