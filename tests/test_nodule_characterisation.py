"""ct-nodule-characterisation: the per-candidate API, crop files through ``cds run``, Findings, and the card
against a rerun of its evaluation on the LIDC-IDRI crops (real-data tests skip without ../shared/data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ModelInputError, ParameterError
from cds.models.tasks import ct_nodule_characterisation as nch
from cds.models.tasks import nodule_crops as nc

DATA = "lidc-nodule-crops"


@pytest.fixture(scope="module")
def bundle():
    return nch.load_bundle()


def _sphere(diameter_mm: float, spacing: tuple[float, float, float], hu: float = 40.0,
            shape_mm: float = 60.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A solid sphere in lung-like background (-850 HU, mild noise) and its centre voxel."""
    n = [int(round(shape_mm / s)) for s in spacing]
    c = [(k - 1) / 2.0 for k in n]
    z, y, x = np.meshgrid(*[(np.arange(k) - ck) * s for k, ck, s in zip(n, c, spacing, strict=True)], indexing="ij")
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    # partial volume over one voxel edge
    frac = np.clip((diameter_mm / 2 - r) / max(spacing) + 0.5, 0, 1)
    vol = -850.0 + frac * (hu + 850.0) + np.random.default_rng(0).normal(0, 15, r.shape)
    return vol.astype(np.float32), tuple(c)


def test_size_bands_are_lung_rads_2022_solid_baseline() -> None:
    bands = [(3.0, "2"), (5.99, "2"), (6.0, "3"), (7.99, "3"), (8.0, "4A"), (14.99, "4A"), (15.0, "4B"), (40, "4B")]
    assert [nch.lung_rads_size_category(d) for d, _ in bands] == [b for _, b in bands]
    assert nch.lung_rads_size_category(None) is None


def test_task_is_registered() -> None:
    from cds.models.task_table import TASKS

    assert TASKS[nch.NAME] is nch.TASK


@pytest.mark.parametrize("slice_mm", [0.5, 1.25, 2.5, 5.0, 10.0])
def test_characterise_measures_a_sphere_at_any_slice_spacing(bundle, slice_mm: float) -> None:
    vol, c = _sphere(12.0, (slice_mm, 0.7, 0.7))
    r = nch.characterise(bundle, vol, (slice_mm, 0.7, 0.7), c)
    assert set(r) >= {"diameter_mm", "volume_mm3", "likelihood", "size_category"}
    assert r["found"]
    true_volume = np.pi / 6 * 12.0 ** 3
    assert r["size_category"] == nch.lung_rads_size_category(r["diameter_mm"])
    if slice_mm <= nch.MAX_VOUCHED_SLICE_MM:
        assert abs(r["diameter_mm"] - 12.0) < 1.5, r
        # linear interpolation of thicker slices widens the thresholded nodule along z (card limitation)
        assert 0.75 * true_volume < r["volume_mm3"] < (1.3 if slice_mm <= 1.25 else 1.5) * true_volume, r
        assert r["vouched"] and 0.0 <= r["likelihood"] <= 1.0
    else:  # thicker slices than any training scan: measured from the largest section, no likelihood
        assert abs(r["diameter_mm"] - 12.0) < (2.5 if slice_mm <= 5 else 5.0), r
        assert r["likelihood"] is None and not r["vouched"] and "thicker" in r["reasons"][0]


def test_bigger_spheres_measure_bigger_and_empty_lung_has_no_nodule(bundle) -> None:
    small = nch.characterise(bundle, *_swap(_sphere(6.0, (1.0, 0.7, 0.7)), (1.0, 0.7, 0.7)))
    big = nch.characterise(bundle, *_swap(_sphere(20.0, (1.0, 0.7, 0.7)), (1.0, 0.7, 0.7)))
    assert small["diameter_mm"] < 9 < 16 < big["diameter_mm"]
    assert small["size_category"] in ("2", "3") and big["size_category"] == "4B"
    lung = np.random.default_rng(1).normal(-850, 15, (40, 60, 60)).astype(np.float32)
    r = nch.characterise(bundle, lung, (1.25, 0.7, 0.7), (20, 30, 30))
    assert not r["found"] and r["diameter_mm"] is None and r["likelihood"] is None and r["reasons"]


def _swap(vc: tuple[np.ndarray, tuple], spacing: tuple) -> tuple:
    vol, c = vc
    return vol, spacing, c


def test_a_nodule_off_the_cut_centre_in_a_big_volume(bundle) -> None:
    """A 10 mm nodule 30 mm from the volume centre; the candidate centre is 2 mm off the nodule's."""
    vol = np.random.default_rng(2).normal(-850, 15, (80, 200, 200)).astype(np.float32)
    sph, _ = _sphere(10.0, (1.25, 0.7, 0.7), shape_mm=30.0)
    vol[10:10 + sph.shape[0], 20:20 + sph.shape[1], 100:100 + sph.shape[2]] = sph
    centre = (10 + (sph.shape[0] - 1) / 2, 20 + (sph.shape[1] - 1) / 2 + 2 / 0.7, 100 + (sph.shape[2] - 1) / 2)
    r = nch.characterise(bundle, vol, (1.25, 0.7, 0.7), centre)
    assert r["found"] and abs(r["diameter_mm"] - 10.0) < 1.5 and r["centre_offset_mm"] < 5


@pytest.mark.parametrize(("args", "named"), [
    ((np.zeros((10, 10)), (1, 1, 1), (5, 5, 5)), "volume_hu"),
    ((np.zeros((10, 10, 10)), (0, 1, 1), (5, 5, 5)), "spacing_zyx"),
    ((np.zeros((10, 10, 10)), (12.0, 0.7, 0.7), (5, 5, 5)), "spacing_zyx"),
    ((np.zeros((10, 10, 10)), (1, 1, 1), (5, 5, 50)), "centre_zyx"),
    ((np.zeros((10, 10, 10)), (1, 1), (5, 5, 5)), "spacing_zyx"),
])
def test_bad_input_names_the_parameter(bundle, args: tuple, named: str) -> None:
    with pytest.raises(ModelInputError, match=named):
        nch.characterise(bundle, *args)


def test_findings_of_a_crop_and_the_cds_run_command(bundle, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import nibabel as nib

    from cds.cli import main

    vol, _ = _sphere(9.0, (1.25, 0.7, 0.7), shape_mm=32.0)
    path = tmp_path / "crop.nii.gz"
    aff = np.diag([-0.7, -0.7, 1.25, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)).astype(np.int16), aff), str(path))
    assert main(["run", nch.NAME, str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    findings = out if isinstance(out, list) else out["findings"]
    by_unit = {f["unit"]: f for f in findings if f.get("unit")}
    assert 7.5 < by_unit["mm"]["value"] < 10.5 and by_unit["mm"]["interpretation"] == "measured"
    assert "not a full Lung-RADS assessment" in by_unit["mm"]["explanation"]
    band = [f for f in findings if f["code_system"].endswith("lung-rads-2022-size-band")]
    assert [f["code"] for f in band] == [nch.lung_rads_size_category(by_unit["mm"]["value"])]
    assert "not a full Lung-RADS assessment" in band[0]["display"] and band[0]["interpretation"] == "measured"
    assert by_unit["mm3"]["value"] > 0
    susp = [f for f in findings if f["probability"] is not None]
    assert len(susp) == 1 and "not pathology" in susp[0]["display"]
    assert susp[0]["threshold"] == bundle.model_card.threshold


def test_to_findings_without_a_nodule_is_empty(bundle) -> None:
    assert nch.to_findings(bundle, {"found": False}, "p", "s") == []


def test_card_declares_intended_use_and_suspicion_not_pathology(bundle) -> None:
    card = bundle.model_card
    assert card.modality == ("CT",) and card.intended_for.body_parts == ("chest",)
    assert card.intended_for.age_years == (18.0, None)
    assert "not pathology" in card.proxy_for.lower()
    perf = card.performance
    m = perf["metrics"]
    for k in ("auroc", "auroc_size_only", "auroc_minus_size_only", "diameter_mae_mm", "volume_median_abs_rel_error",
              "dice_mean"):
        assert len(m[k]["ci95"]) == 2, k
    assert perf["evaluation_command"] == f"cds evaluate {nch.NAME} --data ../shared/data/{DATA} --json"
    assert perf["targets"]["diameter_mae_mm"]["met"] == (m["diameter_mae_mm"]["value"] <= 1.5)
    assert perf["targets"]["auroc"]["met"] == (m["auroc"]["value"] >= 0.94)
    assert bundle.weights_path.stat().st_size < 3 * 1024 * 1024


def test_training_patients_are_stored_hashed_and_disjoint(bundle) -> None:
    d = json.loads((bundle.path / "configs" / "training_patients.json").read_text())
    assert d["train"] and d["val"] and not set(d["train"]) & set(d["val"])
    assert all(len(h) == 16 for h in d["train"] + d["val"])
    assert bundle.card["training_data"]["n_patients"]["train"] == len(d["train"])


def test_patient_split_is_a_hash_of_the_id() -> None:
    ids = [f"LIDC-IDRI-{i:04d}" for i in range(200)]
    lab = {p: int(i % 3 == 0) for i, p in enumerate(ids)}
    a = nc.patient_split(ids, lab)
    assert a == nc.patient_split(list(reversed(ids)), lab)
    assert 0.5 < sum(v == "train" for v in a.values()) / 200 < 0.7


# ------------------------------------------------------------------------------------ real data
@pytest.mark.shared
@pytest.mark.slow
def test_card_equals_a_rerun_of_the_evaluation_command(bundle, shared_data: Path) -> None:
    r = nch.evaluate(shared_data / DATA, bundle.path, n_boot=bundle.card["performance"]["bootstrap"]["n_boot"])
    perf = bundle.card["performance"]
    assert r["evaluation_command"] == perf["evaluation_command"]
    assert r["metrics"] == perf["metrics"]
    assert (r["n_cases"], r["n_patients"], r["n_positive"], r["notes"]) == (perf["n_cases"], perf["n_patients"],
                                                                            perf["n_positive"], perf["notes"])
    assert r["targets"] == perf["targets"]
    assert r["n_excluded_patients"] == sum(bundle.card["training_data"]["n_patients"][s] for s in ("train", "val"))


def _folder(src: Path, dst: Path, patients: set[str]) -> Path:
    import pandas as pd

    df = pd.read_csv(src / "nodules.csv", dtype={"patient_id": str})
    df = df[df["patient_id"].isin(patients)]
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for p, n in zip(df["patient_id"], df["nodule_id"], strict=True):
        for sub in ("images", "masks"):
            f = src / sub / nc.crop_name(p, n)
            if f.is_file():
                shutil.copy(f, dst / sub / f.name)
    df.to_csv(dst / "nodules.csv", index=False)
    return dst


@pytest.mark.shared
def test_a_held_back_folder_counts_every_patient_and_a_training_folder_is_refused(bundle, shared_data: Path,
                                                                                  tmp_path: Path) -> None:
    from cds.models.tasks.inputs import name_hash

    src = shared_data / DATA
    df = nc.load_table(src)
    seen = json.loads((bundle.path / "configs" / "training_patients.json").read_text())
    seen_ids = set(seen["train"]) | set(seen["val"])
    test_ids = sorted({p for p in df["patient_id"] if name_hash(p) not in seen_ids})[:6]
    train_ids = sorted({p for p in df["patient_id"] if name_hash(p) in set(seen["train"])})[:3]
    held = _folder(src, tmp_path / "held", set(test_ids))
    r = nch.evaluate(held, bundle.path, n_boot=50)
    assert r["n_excluded_patients"] == 0 and r["n_patients"] == len(test_ids)
    mixed = _folder(src, tmp_path / "mixed", set(test_ids) | set(train_ids))
    r2 = nch.evaluate(mixed, bundle.path, n_boot=50)
    assert r2["n_excluded_patients"] == len(train_ids) and r2["n_patients"] == len(test_ids)
    assert r2["metrics"]["diameter_mae_mm"] == r["metrics"]["diameter_mae_mm"]
    only_train = _folder(src, tmp_path / "train", set(train_ids))
    with pytest.raises(ParameterError, match="every patient is a training or validation patient"):
        nch.evaluate(only_train, bundle.path, n_boot=50)


@pytest.mark.shared
@pytest.mark.slow
def test_quick_training_writes_a_loadable_bundle(shared_data: Path, tmp_path: Path) -> None:
    path = nch.train(shared_data / DATA, tmp_path / "b", quick=True)
    b = nch.load_bundle(path)
    assert b.card["task"] == nch.NAME and b.card["training_data"]["segmenter"]["epochs"] == 2
    assert (path / "configs" / "training_patients.json").is_file() and (path / "docs" / "README.md").is_file()


def test_a_cut_reaching_past_the_volume_edge_is_padded_like_training(bundle) -> None:
    """A 30 mm volume is smaller than the 48 mm cut: the rest is filled with lung HU, not air."""
    vol, c = _sphere(10.0, (1.25, 0.7, 0.7), shape_mm=30.0)
    r = nch.characterise(bundle, vol, (1.25, 0.7, 0.7), c)
    assert r["found"] and abs(r["diameter_mm"] - 10.0) < 1.5 and r["volume_mm3"] < 1000
