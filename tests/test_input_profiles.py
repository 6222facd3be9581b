"""The built-in cards' ``intended_for`` sections and their out-of-distribution input profiles.

Every card parses with its intended population and inputs; for each profiled model a real image
passes :func:`cds.models.vouch.check_quality`, while the same image with its rows and columns swapped
(a wrong header: scrambled pixels) and a blank copy are refused. CXR models use the sample cohort's
DICOM files, pneumonia the shipped PneumoniaMNIST sample, the mammography models mini-MIAS from
../shared/data (skipped, with the reason, when it is absent: no mammogram ships with cds).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cds.errors import InputQualityError, OutsideIntendedUseError
from cds.images.dicom import read_dicom_file
from cds.images.image import Image
from cds.locations import BUNDLES_DIR
from cds.models import input_profiles, vouch
from cds.models.bundle import load_bundle
from cds.models.card import ModelCard

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DICOM = sorted((REPO / "fhir_samples" / "dicom" / "hannover").glob("*/*.dcm"))[::3]  # 63 of 188
PNEUMONIA_SAMPLE = REPO / "sample_data" / "pneumoniamnist" / "pneumoniamnist_sample.npz"
BUILT_IN = sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/metadata.json"))
CXR = ("pneumonia", "cxr-cardiomegaly", "cxr-icu")
MAMMO = ("mammo-density", "mammo-abnormality")


def _card(model: str) -> ModelCard:
    return load_bundle(BUNDLES_DIR / model).model_card


def _picture(a: np.ndarray, modality: str = "CR", source: str = "x.png") -> Image:
    return Image(np.asarray(a), (0.2, 0.2), (0.0, 0.0, 0.0), np.eye(3), modality, {}, source)


def _swap(image: Image) -> Image:
    a = np.asarray(image.array)
    return dataclasses.replace(image, array=a.ravel().reshape(a.shape[1], a.shape[0]))


def _passes(card: ModelCard, image: Image) -> bool:
    try:
        vouch.check_quality(card, image)
    except InputQualityError:
        return False
    return True


@pytest.fixture(scope="module")
def sample_cxrs() -> list[Image]:
    assert len(SAMPLE_DICOM) >= 50, "the sample cohort's DICOM files are missing"
    return [read_dicom_file(f) for f in SAMPLE_DICOM]


# ------------------------------------------------------------------------------------ the cards
def test_every_built_in_card_declares_its_intended_use() -> None:
    assert len(BUILT_IN) >= 7
    for model in BUILT_IN:
        meta = json.loads((BUNDLES_DIR / model / "configs" / "metadata.json").read_text(encoding="utf-8"))
        assert "intended_for" in meta["cds"], model
        i = _card(model).intended_for
        assert i.declared and i.age_years is not None and i.body_parts, model
        assert i.age_unknown == "refuse" or i.age_unknown_reason, f"{model}: accepting unknown ages needs a reason"


@pytest.mark.parametrize(("model", "ages", "unknown", "views", "parts", "min_px", "min_slices"), [
    ("pneumonia", (1.0, 5.0), "refuse", ("AP", "PA"), ("chest",), 28, None),
    ("cxr-cardiomegaly", (18.0, None), "accept", ("PA", "AP"), ("chest",), 64, None),
    ("cxr-icu", (18.0, None), "accept", ("AP", "PA"), ("chest",), 256, None),
    ("mammo-density", (18.0, None), "accept", ("MLO",), ("breast",), 512, None),
    ("mammo-abnormality", (18.0, None), "accept", ("MLO",), ("breast",), 512, None),
    ("ct-lung-nodule", (18.0, None), "accept", (), ("chest",), 256, 16),
    ("cmr-function", (18.0, None), "accept", (), ("heart",), None, 6),
])
def test_card_values(model, ages, unknown, views, parts, min_px, min_slices) -> None:
    i = _card(model).intended_for
    assert (i.age_years, i.age_unknown, i.views, i.body_parts, i.min_size_px, i.min_slices) == (
        ages, unknown, views, parts, min_px, min_slices)


@pytest.mark.parametrize("model", sorted(input_profiles.PROFILED))
def test_profile_states_its_data_command_and_checks(model: str) -> None:
    p = _card(model).intended_for.input_profile
    assert set(p["features"]) == set(vouch.FEATURES)
    assert p["max_z"] > 0 and p["n"] >= 40 and "training" in p["data"]
    assert p["command"].startswith(f"python -m cds.models.input_profiles {model} --data ../shared/data/")
    assert p["command"].endswith("--write")
    checked = p["checked_on"]
    assert all(0.0 <= v <= 1.0 for v in checked.values())
    swapped = [v for k, v in checked.items() if k.startswith("training images with rows/columns swapped")]
    blank = [v for k, v in checked.items() if k.startswith("blank image")]
    assert swapped and swapped[0] >= 0.95 and blank == [1.0]
    held_out = [v for k, v in checked.items() if k.startswith("held-out")]
    assert all(v <= 0.05 for v in held_out), f"{model}: the profile refuses its own held-out split: {held_out}"


@pytest.mark.parametrize("model", sorted(input_profiles.NOT_PROFILED))
def test_models_without_a_profile(model: str) -> None:
    assert not _card(model).intended_for.input_profile
    assert input_profiles.main([model, "--data", str(REPO)]) == 2


# ------------------------------------------------------------------------------------ CXR models
@pytest.mark.parametrize("model", ["cxr-cardiomegaly", "cxr-icu", "pneumonia"])
def test_sample_cohort_radiographs_pass_and_their_damaged_copies_do_not(model: str, sample_cxrs) -> None:
    card = _card(model)
    passed = [_passes(card, im) for im in sample_cxrs]
    assert np.mean(passed) >= 0.95, f"{model}: {passed.count(False)} of the sample radiographs refused"
    # rows and columns swapped: scrambled wherever the image is clearly not square
    scrambled = [im for im in sample_cxrs if abs(im.array.shape[0] - im.array.shape[1]) >= 64]
    assert len(scrambled) >= 40
    for im in scrambled:
        with pytest.raises(InputQualityError, match="out of distribution"):
            vouch.check_quality(card, _swap(im))
    with pytest.raises(InputQualityError, match="blank image"):
        vouch.check_quality(card, dataclasses.replace(sample_cxrs[0], array=sample_cxrs[0].array * 0))


def test_pneumonia_sample_images_pass_and_damaged_copies_do_not() -> None:
    card = _card("pneumonia")
    with np.load(PNEUMONIA_SAMPLE) as z:
        images = list(z["val_images"])  # held out from training (the card's val_ arrays)
    assert np.mean([_passes(card, _picture(a)) for a in images]) >= 0.95
    for a in images[:50]:
        with pytest.raises(InputQualityError, match="out of distribution"):
            vouch.check_quality(card, _picture(input_profiles.swapped(a)))
    with pytest.raises(InputQualityError, match="blank image"):
        vouch.check_quality(card, _picture(images[0] * 0))


def test_intended_use_of_the_sample_cohort(sample_cxrs) -> None:
    """Adult radiographs without a recorded age: pneumonia (ages 1-5, unknown refused) refuses them,
    cardiomegaly accepts them with a warning, the mammography models refuse a CR."""
    cxr = sample_cxrs[0]
    with pytest.raises(OutsideIntendedUseError, match="age is not recorded"):
        vouch.check_intended_use(_card("pneumonia"), cxr)
    warnings = vouch.check_intended_use(_card("cxr-cardiomegaly"), cxr)
    assert any("age not recorded" in w for w in warnings)
    with pytest.raises(OutsideIntendedUseError, match="modality CR"):
        vouch.check_intended_use(_card("mammo-density"), cxr)
    small = dataclasses.replace(cxr, array=cxr.array[:200, :200])
    with pytest.raises(OutsideIntendedUseError, match="at least 256"):
        vouch.check_intended_use(_card("cxr-icu"), small)


# ------------------------------------------------------------------------------------ mammography
@pytest.mark.shared
@pytest.mark.parametrize("model", MAMMO)
def test_mias_images_pass_and_damaged_copies_do_not(model: str, shared_data: Path) -> None:
    from cds.models.tasks.mammo import read_mammogram

    card = _card(model)
    files = sorted((shared_data / "mini-mias" / "png").glob("*.png"))[:6]
    assert files
    for f in files:
        a = read_mammogram(f)
        assert _passes(card, _picture(a, "MG", str(f))), f
        with pytest.raises(InputQualityError, match="out of distribution"):
            vouch.check_quality(card, _picture(input_profiles.swapped(a), "MG", str(f)))
        with pytest.raises(InputQualityError, match="blank image"):
            vouch.check_quality(card, _picture(a * 0, "MG", str(f)))


# ------------------------------------------------------------------------------------ the command
def test_training_images_are_the_training_split_only() -> None:
    from cds.models.tasks.pneumonia import TASK

    names = [n for n, _ in TASK.training_images(PNEUMONIA_SAMPLE)]
    assert len(names) == 300 and all(n.startswith("train_") for n in names)


@pytest.mark.shared
def test_cardiomegaly_training_images_match_the_training_manifest(shared_data: Path) -> None:
    from cds.models.tasks.cxr_cardiomegaly import TASK
    from cds.models.tasks.inputs import name_hash

    manifest = json.loads((BUNDLES_DIR / "cxr-cardiomegaly" / "configs" / "training_manifest.json").read_text())
    names = {name_hash(n) for n, _ in TASK.training_images(shared_data / "nih-cxr14-thumbs64")}
    assert names == set(manifest["images"]["train"])


def test_command_writes_a_profile_the_card_loads(tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "pneumonia"
    shutil.copytree(BUNDLES_DIR / "pneumonia", bundle)
    before = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert input_profiles.main(["pneumonia", "--data", str(PNEUMONIA_SAMPLE), "--bundle", str(bundle),
                                "--write"]) == 0
    out = capsys.readouterr().out
    assert "held-out val_ arrays" in out and "blank image" in out
    after = json.loads((bundle / "configs" / "metadata.json").read_text())
    profile = after["cds"]["intended_for"].pop("input_profile")
    before["cds"]["intended_for"].pop("input_profile")
    assert after == before  # nothing else changed
    assert profile["n"] == 300 and "--bundle" in profile["command"] and profile["command"].endswith("--write")
    card = load_bundle(bundle).model_card
    with np.load(PNEUMONIA_SAMPLE) as z:
        a = z["val_images"][0]
    assert card.intended_for.input_profile["max_z"] == profile["max_z"]
    with pytest.raises(InputQualityError, match="out of distribution"):
        vouch.check_quality(card, _picture(input_profiles.swapped(a)))


def test_command_errors_are_named(capsys) -> None:
    assert input_profiles.main(["no-such-model", "--data", "."]) == 2
    assert "MODEL" in capsys.readouterr().err
    assert input_profiles.main(["pneumonia", "--data", "/nonexistent/medmnist"]) == 2
    assert "/nonexistent/medmnist" in capsys.readouterr().err
    assert input_profiles.main(["pneumonia", "--data", str(PNEUMONIA_SAMPLE), "--margin", "-1"]) == 2
    assert "--margin" in capsys.readouterr().err


@pytest.mark.shared
@pytest.mark.slow
def test_committed_pneumonia_profile_is_what_the_command_computes(shared_data: Path) -> None:
    stored = _card("pneumonia").intended_for.input_profile
    fresh = input_profiles.build_profile("pneumonia", shared_data / "medmnist", command=stored["command"])
    assert fresh["features"] == stored["features"] and fresh["max_z"] == stored["max_z"]
    assert fresh["checked_on"] == stored["checked_on"]
