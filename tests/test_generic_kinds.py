"""Generic kinds: a user's own MONAI bundle (plain MONAI networks, seeded weights) runs with no cds code."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cds.errors import ModelInputError, OutsideIntendedUseError, ParameterError
from cds.images.image import Image, index_to_lps
from cds.models.bundle import BundleError, save_bundle
from cds.models.generic import KINDS
from cds.models.registry import ModelRegistry

SNOMED = "http://snomed.info/sct"
# a rotated, shifted patient frame so a wrong LPS conversion cannot pass
DIRECTION = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]).T
ORIGIN = (-100.0, 50.0, 20.0)
SPACING3 = (2.0, 0.8, 0.5)


def _volume(shape: tuple[int, ...] = (8, 12, 16)) -> Image:
    rng = np.random.default_rng(3)
    return Image(rng.normal(0, 0.1, shape).astype(np.float32), SPACING3, ORIGIN, DIRECTION, "CT",
                 {"patient_id": "p-img", "study_uid": "1.2.9", "series_uid": "1.2.9.1", "patient_frame": True},
                 "memory")


def _write(root: Path, model_id: str, cds: dict, network_def: dict, net, **inference) -> Path:
    meta = {"name": model_id, "version": "0.3.0", "cds": {"model_id": model_id, **cds}}
    return save_bundle(root / model_id, meta, network_def, net.state_dict(), inference_extra=inference)


def _seeded(network_def: dict):
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    return ConfigParser({"net": network_def}).get_parsed_content("net")


DENSENET2D = {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
              "init_features": 4, "growth_rate": 4, "block_config": [1, 1]}
PRE2D = {"_target_": "Compose", "transforms": [{"_target_": "ScaleIntensity"},
                                               {"_target_": "Resize", "spatial_size": [32, 32]}]}
OUTPUTS2 = [{"code_system": SNOMED, "code": "17621005", "display": "Normal", "channel": 0},
            {"code_system": SNOMED, "code": "233604007", "display": "Pneumonia", "channel": 1}]


def test_classification_2d_gives_the_softmax_of_the_declared_channel(tmp_path: Path) -> None:
    import torch
    from monai.transforms import Resize, ScaleIntensity

    net = _seeded(DENSENET2D)
    _write(tmp_path, "my-cxr", {"kind": "classification-2d", "modality": ["CR"], "outputs": OUTPUTS2,
                                "threshold": 0.5, "indeterminate": [0.45, 0.55]}, DENSENET2D, net,
           preprocessing=PRE2D)
    reg = ModelRegistry(user_dirs=[tmp_path])
    assert reg.list_models().set_index("model_id").loc["my-cxr", "task"] == "classification-2d"
    pixels = np.random.default_rng(1).uniform(0, 4000, (50, 40)).astype(np.float32)
    image = Image(pixels, (0.2, 0.2), (0.0, 0.0, 0.0), np.eye(3), "CR", {"patient_id": "p1", "study_uid": "1.2"}, "a.dcm")
    found = reg.run_image("my-cxr", image)
    # the same network and transforms by hand
    x = Resize((32, 32))(ScaleIntensity()(torch.from_numpy(pixels[None])))
    with torch.inference_mode():
        expected = torch.softmax(net.eval()(torch.as_tensor(x)[None].float()), dim=1)[0].numpy()
    assert [f.code for f in found] == ["17621005", "233604007"]
    np.testing.assert_allclose([f.probability for f in found], expected, rtol=1e-5)
    pneu = found[1]
    assert (pneu.threshold, pneu.indeterminate, pneu.model_id, pneu.model_version) == (0.5, (0.45, 0.55), "my-cxr",
                                                                                         "0.3.0")
    assert (pneu.patient_id, pneu.study_uid) == ("p1", "1.2") and pneu.location is None
    assert pneu.extra["class_probabilities"]["Pneumonia"] == pytest.approx(float(expected[1]), abs=1e-6)
    with pytest.raises(ModelInputError, match="^image: a classification-2d model needs a 2D image"):
        reg.run_image("my-cxr", replace(_volume(), modality="CR"))  # a CR-labelled volume: past intended use
    with pytest.raises(OutsideIntendedUseError, match="modality CT; the model is for CR"):
        reg.run_image("my-cxr", _volume())


def test_classification_3d_with_one_sigmoid_output(tmp_path: Path) -> None:
    import torch

    netdef = {**DENSENET2D, "spatial_dims": 3, "out_channels": 1}
    net = _seeded(netdef)
    _write(tmp_path, "my-ct-net", {"kind": "classification-3d", "outputs": [{**OUTPUTS2[1], "channel": 0}],
                                    "threshold": 0.5}, netdef, net)
    image = _volume()
    (f,) = ModelRegistry(user_dirs=[tmp_path]).run_image("my-ct-net", image)
    with torch.inference_mode():
        logit = float(net.eval()(torch.from_numpy(image.array[None, None]))[0, 0])
    assert f.probability == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)
    assert f.interpretation == ("positive" if f.probability >= 0.5 else "negative")


# a 1x1x1 convolution with set weights: the answer is known voxel by voxel
CONV1 = {"_target_": "monai.networks.blocks.Convolution", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
         "kernel_size": 1, "conv_only": True}


def _conv(netdef: dict, weight: list[float], bias: list[float]):
    import torch

    net = _seeded(netdef)
    with torch.no_grad():
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
        conv.weight.copy_(torch.tensor(weight).reshape(conv.weight.shape))
        conv.bias.copy_(torch.tensor(bias))
    return net


def _blobs() -> tuple[Image, list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    image = _volume()
    boxes = [((1, 2, 3), (2, 4, 6)), ((5, 7, 9), (7, 10, 14))]  # inclusive voxel index boxes
    arr = image.array.copy()
    for lo, hi in boxes:
        arr[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = 1.0
    return Image(arr, image.spacing, image.origin, image.direction, "CT", image.meta, "memory"), boxes


def _lps_box(image: Image, lo, hi) -> list[float]:
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    pts = index_to_lps(image, corners)
    return [*pts.min(axis=0), *pts.max(axis=0)]


def test_segmentation_reports_each_present_label_with_volume_and_lps_box(tmp_path: Path) -> None:
    # channel 0 background (0), channel 1 = 4x - 2 (wins where x ~ 1), channel 2 never wins
    net = _conv(CONV1, [0.0, 4.0, -4.0], [0.0, -2.0, -9.0])
    outputs = [{"code_system": SNOMED, "code": "27925004", "display": "Nodule", "channel": 1},
               {"code_system": SNOMED, "code": "126906006", "display": "Neoplasm", "channel": 2}]
    _write(tmp_path, "my-seg", {"kind": "segmentation", "modality": "CT", "outputs": outputs}, CONV1, net)
    image, boxes = _blobs()
    (f,) = ModelRegistry(user_dirs=[tmp_path]).run_image("my-seg", image)
    n_vox = sum(np.prod(np.array(hi) - np.array(lo) + 1) for lo, hi in boxes)
    assert (f.code, f.unit, f.interpretation) == ("27925004", "mL", "measured")
    assert f.value == pytest.approx(n_vox * np.prod(SPACING3) / 1000.0)
    assert f.extra["volume_ml"] == f.value
    assert f.location.kind == "box" and f.location.frame == "LPS"
    np.testing.assert_allclose(f.location.coords, _lps_box(image, boxes[0][0], boxes[1][1]), atol=1e-4)


def test_unet_segmentation_runs_and_its_volumes_fit_the_image(tmp_path: Path) -> None:
    unet = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8], "strides": [2], "num_res_units": 0}
    outputs = [{"code_system": SNOMED, "code": "10200004", "display": "Liver", "channel": 1},
               {"code_system": SNOMED, "code": "64033007", "display": "Kidney", "channel": 2}]
    _write(tmp_path, "my-unet", {"kind": "segmentation", "outputs": outputs}, unet, _seeded(unet))
    image = _volume()
    found = ModelRegistry(user_dirs=[tmp_path]).run_image("my-unet", image)
    assert found, "a seeded random UNet labels some voxels 1 or 2"
    total_ml = image.array.size * np.prod(SPACING3) / 1000.0
    assert sum(f.value for f in found) <= total_ml + 1e-6
    assert all(f.code in {"10200004", "64033007"} and f.location.frame == "LPS" for f in found)


def test_box_detection_gives_one_lps_box_per_region_highest_first(tmp_path: Path) -> None:
    conv = {**CONV1, "out_channels": 1}
    net = _conv(conv, [6.0], [-3.0])  # sigmoid(6x - 3): 0.05 on background, 0.95 on the blobs
    _write(tmp_path, "my-det", {"kind": "box-detection", "modality": ["CT"], "threshold": 0.5,
                                "indeterminate": [0.4, 0.6],
                                "outputs": [{"code_system": SNOMED, "code": "27925004", "display": "Nodule"}]},
           conv, net)
    image, boxes = _blobs()
    arr = image.array.copy()
    arr[6, 8, 10] = 1.4  # the second blob holds the highest voxel: it comes first
    image = Image(arr, image.spacing, image.origin, image.direction, "CT", image.meta, "memory")
    found = ModelRegistry(user_dirs=[tmp_path]).run_image("my-det", image)
    assert len(found) == 2
    assert found[0].probability == pytest.approx(1 / (1 + np.exp(-(6 * 1.4 - 3))), rel=1e-4)
    assert found[0].probability > found[1].probability >= 0.6
    for f, (lo, hi) in zip(found, boxes[::-1], strict=True):
        np.testing.assert_allclose(f.location.coords, _lps_box(image, lo, hi), atol=1e-4)
        assert f.interpretation == "positive" and f.threshold == 0.5
        centre = index_to_lps(image, (np.array(lo) + np.array(hi)) / 2.0)
        np.testing.assert_allclose(f.extra["centre_lps"], centre, atol=1e-3)
        assert f.extra["volume_ml"] == pytest.approx(np.prod(np.array(hi) - np.array(lo) + 1) * np.prod(SPACING3) / 1000)


def test_a_generic_bundle_runs_on_a_cohort_through_registry_run(tmp_path: Path) -> None:
    from cds.images.nifti import write_nifti

    conv = {**CONV1, "out_channels": 1}
    _write(tmp_path / "models", "my-det", {"kind": "box-detection", "threshold": 0.5,
                                           "outputs": [{"code_system": SNOMED, "code": "27925004",
                                                        "display": "Nodule"}]}, conv, _conv(conv, [6.0], [-3.0]))
    image, boxes = _blobs()
    path = write_nifti(image, tmp_path / "ct.nii.gz")
    imaging = pd.DataFrame([{"patient_id": "p7", "study_uid": "1.7", "series_uid": "1.7.1", "instance_uids": [],
                             "modality": "CT", "pixel_location": str(path), "started": pd.Timestamp("2025-01-01"),
                             "imaging_study_id": "is7", "body_site": None}])
    cohort = SimpleNamespace(imaging=imaging)
    result = ModelRegistry(user_dirs=[tmp_path / "models"]).run("my-det", cohort)
    assert result.failures == [] and len(result.findings) == 2
    f = result.findings[0]
    assert (f.patient_id, f.study_uid, f.series_uid, f.imaging_study_id) == ("p7", "1.7", "1.7.1", "is7")
    expected = sorted((_lps_box(image, lo, hi) for lo, hi in boxes), key=lambda b: b[0])
    got = sorted((list(g.location.coords) for g in result.findings), key=lambda b: b[0])
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_bad_generic_cards_are_named(tmp_path: Path) -> None:
    conv = {**CONV1, "out_channels": 1}
    net = _conv(conv, [6.0], [-3.0])
    _write(tmp_path, "no-kind", {"outputs": OUTPUTS2}, conv, net)
    _write(tmp_path, "wrong-channel", {"kind": "segmentation", "outputs": OUTPUTS2}, conv, net)
    bad = tmp_path / "bad-band"
    _write(tmp_path, "bad-band", {"kind": "box-detection", "threshold": 0.5, "indeterminate": [0.7, 0.2]}, conv, net)
    reg = ModelRegistry(user_dirs=[tmp_path])
    assert "bad-band" not in reg.ids()
    assert any(str(bad / "configs" / "metadata.json") in e and "cds.indeterminate" in e for e in reg.errors)
    with pytest.raises(ParameterError, match="^kind: model 'no-kind' declares neither task nor kind; generic kinds: "):
        reg.run_image("no-kind", _volume())
    with pytest.raises(BundleError, match="output 'Pneumonia' reads channel 1 but the network gives 1 channel"):
        reg.run_image("wrong-channel", _volume())
    assert set(KINDS) == {"classification-2d", "classification-3d", "segmentation", "box-detection"}
    meta = json.loads((tmp_path / "no-kind" / "configs" / "metadata.json").read_text())
    assert meta["cds"]["model_id"] == "no-kind"
