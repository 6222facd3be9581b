"""cds.models.zoo: three MONAI Model Zoo bundles run unmodified from folders like a user's download.

The folders come from tests/zoo_fixtures.py: the zoo's configs with seeded random weights (the real
weights cannot be downloaded here), so these tests check the code path and the mapping to Findings
(geometry, scores, thresholds, units), not clinical quality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.images.image import Image, index_to_lps
from cds.images.nifti import read_nifti, write_nifti
from cds.images.read import read_image
from cds.models import zoo
from cds.models.bundle import BundleError
from tests.zoo_fixtures import torchvision_available, write_zoo_bundle

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

LUNG, BREAST, SAX = zoo.LUNG, zoo.BREAST, zoo.SAX
IDS = {"patient_id": "p1", "study_uid": "1.2.840.1", "series_uid": "1.2.840.1.2", "instance_uids": ["1.2.840.1.2.3"]}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    zoo.clear_cache()
    yield
    zoo.clear_cache()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The lung and ventricular bundles under folder names a user might choose (detection must not need them)."""
    root = tmp_path_factory.mktemp("models")
    return {LUNG: write_zoo_bundle(LUNG, root, folder="LungCT-downloaded"),
            SAX: write_zoo_bundle(SAX, root, folder="cmr seg")}


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _ct(shape=(8, 64, 72), spacing=(2.5, 0.9, 0.8), direction=None, seed=0, **meta) -> Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(-800, 120, shape).astype(np.int16)
    d = np.eye(3) if direction is None else direction
    return Image(arr, spacing, (-120.0, 35.0, -210.0), d, "CT", dict(meta), "synthetic-ct")


# ----------------------------------------------------------------------------------------- detection


def test_detect_by_metadata_not_folder_name(tmp_path: Path, bundles: dict[str, Path]) -> None:
    assert zoo.detect_zoo_bundle(bundles[LUNG]) == LUNG
    assert zoo.detect_zoo_bundle(bundles[SAX]) == SAX
    breast = write_zoo_bundle(BREAST, tmp_path, weights=False, folder="density")
    assert zoo.detect_zoo_bundle(breast) == BREAST
    # a folder named like a zoo bundle whose metadata is something else is not that bundle
    other = write_zoo_bundle(SAX, tmp_path, weights=False, folder=LUNG)
    meta = json.loads((other / "configs/metadata.json").read_text())
    meta.update(name="Spleen CT segmentation", task="Decathlon spleen segmentation", description="spleen")
    (other / "configs/metadata.json").write_text(json.dumps(meta))
    assert zoo.detect_zoo_bundle(other) is None
    # words alone are not enough: the network_data_format must agree too
    meta = json.loads((bundles[LUNG] / "configs/metadata.json").read_text())
    meta["network_data_format"]["inputs"]["image"]["modality"] = "MR"
    (other / "configs/metadata.json").write_text(json.dumps(meta))
    assert zoo.detect_zoo_bundle(other) is None
    assert zoo.detect_zoo_bundle(tmp_path / "nothing") is None
    (tmp_path / "empty").mkdir()
    assert zoo.detect_zoo_bundle(tmp_path / "empty") is None


def test_the_adapter_runs_the_configs_own_steps_without_file_io(bundles: dict[str, Path]) -> None:
    """cds instantiates the bundle's own preprocessing (minus LoadImage), inferer and postprocessing (minus SaveImage)."""
    loaded = zoo._loaded(bundles[SAX], "cpu")
    inference = json.loads((bundles[SAX] / "configs" / "inference.json").read_text())
    wanted = [t["_target_"] for t in inference["preprocessing"]["transforms"] if "LoadImage" not in t["_target_"]]
    assert [type(t).__name__ for t in loaded.pre] == wanted and wanted
    post = [t["_target_"] for t in inference["postprocessing"]["transforms"] if "SaveImage" not in t["_target_"]]
    assert [type(t).__name__ for t in loaded.post] == post
    assert type(loaded.inferer).__name__ == inference["inferer"]["_target_"]
    assert loaded.network is not None and not loaded.network.training


# ----------------------------------------------------------------------------------------- errors


def test_incomplete_folders_say_how_to_download(tmp_path: Path, bundles: dict[str, Path]) -> None:
    no_weights = write_zoo_bundle(SAX, tmp_path, weights=False, folder="sax-no-weights")
    with pytest.raises(BundleError, match=r"model\.pt: missing.*python -m monai\.bundle download "
                                          r"ventricular_short_axis_3label"):
        zoo.run_zoo_bundle(no_weights, _ct(), **IDS)
    (no_weights / "models" / "model.ts").write_bytes(b"x")
    with pytest.raises(BundleError, match="model.ts is there"):
        zoo.run_zoo_bundle(no_weights, _ct(), **IDS)

    no_inference = tmp_path / "sax-no-inference"
    shutil.copytree(bundles[SAX], no_inference)
    (no_inference / "configs" / "inference.json").unlink()
    with pytest.raises(BundleError, match=r"inference\.json: missing.*monai\.bundle download"):
        zoo.run_zoo_bundle(no_inference, _ct(), **IDS)

    only_weights = tmp_path / LUNG
    (only_weights / "models").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"metadata\.json: missing.*download lung_nodule_ct_detection"):
        zoo.run_zoo_bundle(only_weights, _ct(), **IDS)
    with pytest.raises(BundleError, match="not a folder"):
        zoo.run_zoo_bundle(tmp_path / "absent", _ct(), **IDS)

    html = tmp_path / "sax-html-weights"
    shutil.copytree(bundles[SAX], html)
    (html / "models" / "model.pt").write_text("<!DOCTYPE html><html>Google Drive - virus scan warning</html>")
    with pytest.raises(BundleError, match="web page or a Git LFS pointer"):
        zoo.run_zoo_bundle(html, _ct(), **IDS)

    wrong = tmp_path / "sax-wrong-weights"
    shutil.copytree(bundles[SAX], wrong)
    torch.save({"conv.weight": torch.zeros(1)}, wrong / "models" / "model.pt")
    with pytest.raises(BundleError, match="do not fit the config's network_def"):
        zoo.run_zoo_bundle(wrong, _ct(), **IDS)

    broken = tmp_path / "sax-broken-config"
    shutil.copytree(bundles[SAX], broken)
    cfg = json.loads((broken / "configs/inference.json").read_text())
    cfg["network_def"]["_target_"] = "NoSuchNetwork"
    (broken / "configs/inference.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="cannot build 'network'"):
        zoo.run_zoo_bundle(broken, _ct(), **IDS)


def test_image_that_does_not_fit(bundles: dict[str, Path]) -> None:
    with pytest.raises(ModelInputError, match="modality CT; ventricular_short_axis_3label needs MR"):
        zoo.run_zoo_bundle(bundles[SAX], _ct(), **IDS)
    flat = Image(np.zeros((64, 64), np.int16), (0.8, 0.8), (0.0, 0.0, 0.0), np.eye(3), "CT", {}, "one.dcm")
    with pytest.raises(ModelInputError, match="needs a 3D CT volume"):
        zoo.run_zoo_bundle(bundles[LUNG], flat, **IDS)
    frameless = _ct(patient_frame=False)
    with pytest.raises(ModelInputError, match="no patient coordinate frame"):
        zoo.run_zoo_bundle(bundles[LUNG], frameless, **IDS)
    with pytest.raises(ParameterError, match="image"):
        zoo.run_zoo_bundle(bundles[SAX], np.zeros((4, 4)), **IDS)
    with pytest.raises(ParameterError, match="device"):
        zoo.run_zoo_bundle(bundles[SAX], _ct(), device="gpu0", **IDS)


# ----------------------------------------------------------------------------------------- loading


def test_metatensor_matches_monai_loader_on_nifti(tmp_path: Path) -> None:
    """cds skips the config's LoadImaged; what it hands over must equal what LoadImaged gives for the NIfTI."""
    from monai.transforms import LoadImage

    img = _ct(shape=(5, 7, 9), direction=_rotation(20.0) @ np.diag([1.0, -1.0, -1.0]))
    path = write_nifti(img, tmp_path / "ct.nii.gz")
    loaded = LoadImage(image_only=True)(str(path))
    mine = zoo.image_to_metatensor(img)
    assert tuple(mine.shape) == tuple(loaded.shape) == (9, 7, 5)
    np.testing.assert_allclose(mine.numpy(), loaded.numpy())
    np.testing.assert_allclose(mine.affine.numpy(), loaded.affine.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------- lung


def test_lung_box_geometry_through_the_zoo_postprocessing(bundles: dict[str, Path]) -> None:
    """A box drawn around a marker in the bundle's resampled RAS grid comes back around the marker in LPS."""
    direction = _rotation(15.0) @ np.diag([1.0, -1.0, -1.0])  # oblique, prone-like axes
    img = _ct(shape=(10, 40, 44), spacing=(2.5, 0.9, 0.8), direction=direction)
    img.array[:] = -1000
    marker = (5, 17, 25)
    k, j, i = marker
    img.array[k - 1:k + 2, j - 2:j + 3, i - 2:i + 3] = 400
    loaded = zoo._loaded(bundles[LUNG], "cpu")
    tensor = zoo._lung_prepare(loaded, img)
    assert tensor.shape[0] == 1
    np.testing.assert_allclose(np.linalg.norm(tensor.affine.numpy()[:3, :3], axis=0), [0.703125, 0.703125, 1.25],
                               rtol=1e-4)
    vol = tensor[0].numpy()
    peak = np.argwhere(vol > 0.9 * vol.max())
    centre = (peak.min(axis=0) + peak.max(axis=0)) / 2
    box = torch.tensor([[*(centre - 3), *(centre + 3)]], dtype=torch.float32)
    pred = {"box": box, "label": torch.tensor([0]), "label_scores": torch.tensor([0.7])}
    corners, scores, labels = zoo._lung_postprocess(loaded, pred, tensor)
    got = (corners[0, :3] + corners[0, 3:]) / 2
    want = index_to_lps(img, marker)
    np.testing.assert_allclose(got, want, atol=1.3)  # within a resampled voxel
    assert scores.tolist() == pytest.approx([0.7]) and labels.tolist() == [0]
    # the same box read as RAS would sit mirrored in x and y: the check above can tell the frames apart
    assert np.linalg.norm(got * [-1, -1, 1] - want) > 10


def test_lung_findings_from_known_boxes() -> None:
    img = _ct(sop_instance_uids=[f"1.2.3.{n}" for n in range(8)])
    k3 = index_to_lps(img, (3, 10, 10))
    boxes = np.array([[*(k3 + 4), *(k3 - 4)], [0, 0, -200, 2, 2, -198.0]])
    found = zoo.lung_box_findings(boxes, np.array([0.05, 0.8]), 0.02, image=img, model_version="0.6.8",
                                  labels=np.array([0, 0]), **IDS)
    assert [f.probability for f in found] == [0.8, 0.05]
    first, second = found
    from cds.models.tasks.ct_lung_nodule import OUTPUT_CODE

    assert (first.code_system, first.code, first.display) == (OUTPUT_CODE["code_system"], OUTPUT_CODE["code"],
                                                              OUTPUT_CODE["display"])
    assert second.location.kind == "box" and second.location.frame == "LPS"
    np.testing.assert_allclose(second.location.coords, [*(k3 - 4), *(k3 + 4)])  # min corner first
    assert second.location.sop_instance_uid == "1.2.3.3"
    assert second.extra["size_mm"] == [8.0, 8.0, 8.0] and second.extra["rank"] == 2
    assert all(f.threshold == 0.02 and f.interpretation == "positive" for f in found)
    assert len({f.id for f in found}) == 2
    with pytest.raises(ParameterError, match="scores"):
        zoo.lung_box_findings(boxes, np.array([0.5]), 0.02, model_version="1", **IDS)


def test_lung_bundle_end_to_end(bundles: dict[str, Path]) -> None:
    img = _ct(sop_instance_uids=[f"1.2.3.{n}" for n in range(8)])
    found = zoo.run_zoo_bundle(bundles[LUNG], img, **IDS)
    assert found, "the fixture's random head scores around the threshold: some boxes pass"
    assert zoo._score_thresh(zoo._loaded(bundles[LUNG], "cpu")) == 0.02  # from the config's detector_ops
    probs = [f.probability for f in found]
    assert probs == sorted(probs, reverse=True) and min(probs) >= 0.02 and len(found) <= 300
    corners = index_to_lps(img, np.array(np.meshgrid(*[[0, n - 1] for n in img.shape])).reshape(3, -1).T)
    lo, hi = corners.min(axis=0) - 1.5, corners.max(axis=0) + 1.5
    for f in found:
        c = np.array(f.location.coords)
        assert np.all(c[:3] <= c[3:]) and np.all(c[:3] >= lo) and np.all(c[3:] <= hi), c
        assert f.location.sop_instance_uid in img.meta["sop_instance_uids"]
        assert f.model_id == LUNG and f.model_version == "0.6.8" and f.series_uid == IDS["series_uid"]
    again = zoo.run_zoo_bundle(bundles[LUNG], img, **IDS)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in found]


@pytest.mark.shared
def test_lung_bundle_on_real_ct_crop(bundles: dict[str, Path], shared_data: Path) -> None:
    series = read_image(shared_data / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805", modality="CT")
    k0, j0, i0 = 8, 300, 280
    arr = series.array[k0:k0 + 8, j0:j0 + 80, i0:i0 + 80]
    crop = Image(arr, series.spacing, tuple(index_to_lps(series, (k0, j0, i0))), series.direction, "CT",
                 {**series.meta, "sop_instance_uids": series.meta["sop_instance_uids"][k0:k0 + 8]}, series.source)
    found = zoo.run_zoo_bundle(bundles[LUNG], crop, **IDS)
    assert found
    ends = index_to_lps(crop, [(0, 0, 0), (7, 79, 79)])
    lo, hi = ends.min(axis=0) - 2.6, ends.max(axis=0) + 2.6
    for f in found:
        c = np.array(f.location.coords)
        assert np.all(c[:3] >= lo) and np.all(c[3:] <= hi)
        assert f.location.sop_instance_uid in crop.meta["sop_instance_uids"]


# ----------------------------------------------------------------------------------------- breast


class _MeanNet(torch.nn.Module):
    """Stands in for Inception-v3 where torchvision cannot be imported: logits from channel means."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-8.0, 0, 0], [-2.0, 0, 0], [2.0, 0, 0], [8.0, 0, 0]]))
            self.fc.bias.copy_(torch.tensor([2.0, 0.5, -0.5, -2.0]))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fc(x.mean(dim=(2, 3)))


def test_breast_density_path_with_a_stand_in_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zoo config's pre/post-processing and the Finding mapping, with a small network in Inception's place."""
    net = _MeanNet()
    folder = write_zoo_bundle(BREAST, tmp_path, weights=False)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    monkeypatch.setattr(zoo, "_build_network", lambda parser, path, name: net)
    zoo.clear_cache()
    try:
        mammo = np.zeros((400, 300), np.uint16)
        mammo[:100, :] = 4000  # bright top rows: after the PIL-like transpose, the first columns of axis 1
        found = zoo.run_zoo_bundle(folder, Image(mammo, (0.1, 0.1), (0, 0, 0), np.eye(3), "MG",
                                                 {"laterality": "L", "view_position": "MLO"}, "m.dcm"), **IDS)
    finally:
        zoo.clear_cache()
    (x,) = net.seen
    assert tuple(x.shape) == (1, 3, 299, 299) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[0, 0], x[0, 2])  # grey copied to 3 channels
    assert float(x[0, 0, :, :60].mean()) > 0.9 and float(x[0, 0, :, 90:].mean()) < 0.05
    mean = float(x[0, 0].mean())
    expected = torch.sigmoid(net.fc(torch.tensor([[mean] * 3])))[0].tolist()
    (f,) = found
    assert f.code_system == zoo.BIRADS_DENSITY_SYSTEM and f.code == "ABCD"[int(np.argmax(expected))]
    assert list(f.extra["class_probabilities"]) == ["A", "B", "C", "D"]
    np.testing.assert_allclose(list(f.extra["class_probabilities"].values()), expected, atol=1e-4)
    assert f.probability == pytest.approx(max(expected), abs=1e-4)
    assert f.extra["laterality"] == "L" and f.extra["view_position"] == "MLO"
    assert f.interpretation == "measured" and f.display.startswith(f"BI-RADS breast density {f.code}")
    with pytest.raises(ModelInputError, match="needs MG"):
        zoo.run_zoo_bundle(folder, _ct(), **IDS)


def test_breast_density_finding_mapping() -> None:
    f = zoo.breast_density_finding([0.9, 0.2, 0.1, 0.05], ["A", "B", "C", "D"], model_version="0.1.7", **IDS)
    assert (f.code, f.probability, f.extra["dense"]) == ("A", 0.9, False)
    d = zoo.breast_density_finding([0.1, 0.2, 0.3, 0.95], "abcd", model_version="0.1.7", **IDS)
    assert d.code == "D" and d.extra["dense"] and "Extremely dense" in d.display
    with pytest.raises(ParameterError):
        zoo.breast_density_finding([0.5, 0.5], "ABCD", model_version="0.1.7", **IDS)


@pytest.mark.skipif(torchvision_available(), reason="torchvision imports here; the message is for machines without it")
def test_breast_bundle_without_torchvision_says_what_to_install(tmp_path: Path) -> None:
    folder = write_zoo_bundle(BREAST, tmp_path, weights=False)
    (folder / "models" / "model.pt").write_bytes(b"\0" * 5000)
    with pytest.raises(BundleError, match="needs the torchvision package"):
        zoo.run_zoo_bundle(folder, Image(np.zeros((50, 40)), (0.1, 0.1), (0, 0, 0), np.eye(3), "MG"), **IDS)


@pytest.mark.skipif(not torchvision_available(), reason="torchvision cannot be imported (CPU torch with a "
                                                        "CUDA-only torchvision wheel, or none installed)")
def test_breast_bundle_end_to_end_with_inception(tmp_path: Path) -> None:
    folder = write_zoo_bundle(BREAST, tmp_path)
    found = zoo.run_zoo_bundle(folder, Image(np.random.default_rng(1).random((320, 240)), (0.1, 0.1), (0, 0, 0),
                                             np.eye(3), "MG"), **IDS)
    (f,) = found
    assert f.code in "ABCD" and 0 <= f.probability <= 1 and len(f.extra["class_probabilities"]) == 4


# ----------------------------------------------------------------------------------------- ventricles


def _sax(n=4, axis0="space", rows=70, cols=90) -> Image:
    arr = np.random.default_rng(2).normal(200, 40, (n, rows, cols)).astype(np.float32)
    return Image(arr, (8.0, 1.5, 1.25), (-50.0, 20.0, 10.0), _rotation(30.0), "MR", {"axis0": axis0}, "sax")


def test_sax_bundle_stack_and_mask_file(bundles: dict[str, Path], tmp_path: Path) -> None:
    img = _sax()
    found = zoo.run_zoo_bundle(bundles[SAX], img, output_dir=tmp_path, **IDS)
    assert [f.code for f in found] == ["lv_pool", "myocardium", "rv_pool"]
    mask = read_nifti(tmp_path / f"{IDS['series_uid']}_{SAX}.nii.gz")
    assert mask.shape == img.shape
    np.testing.assert_allclose(mask.origin, img.origin, atol=1e-4)
    labels = mask.array
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    for value, f in enumerate(found, start=1):
        areas = (labels == value).reshape(len(labels), -1).sum(axis=1) * 1.5 * 1.25
        assert f.extra["area_mm2"] == pytest.approx(areas.tolist())
        assert f.unit == "mL" and f.value == pytest.approx(areas.sum() * 8.0 / 1000, abs=1e-3)
        assert f.interpretation == "measured" and f.code_system == zoo.SAX_STRUCTURE_SYSTEM
        if f.location is not None:
            assert f.location.kind == "mask" and f.location.ref == str(tmp_path / f"{IDS['series_uid']}_{SAX}.nii.gz")


def _threshold_sax(bundles: dict[str, Path], folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the SAX bundle whose network labels LV pool (1) where the scaled intensity > 0.5."""
    conv = torch.nn.Conv2d(1, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0] = 20.0
        conv.bias[1] = -10.0
    shutil.copytree(bundles[SAX], folder)
    torch.save(conv.state_dict(), folder / "models" / "model.pt")
    monkeypatch.setattr(zoo, "_build_network", lambda parser, path, name: conv)
    zoo.clear_cache()
    return folder


def test_sax_cine_frames_give_areas(bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _threshold_sax(bundles, tmp_path / "sax", monkeypatch)
    img = _sax(n=5, axis0="frame")
    img.array[:] = 0
    sides = [20, 16, 12, 16, 20]  # a bright square that shrinks and grows over the frames
    for f, side in enumerate(sides):
        img.array[f, 10:10 + side, 20:20 + side] = 100
    try:
        lv = zoo.run_zoo_bundle(folder, img, **IDS)[0]
    finally:
        zoo.clear_cache()
    areas = [side * side * 1.5 * 1.25 for side in sides]
    assert lv.unit == "mm2" and lv.extra["area_mm2"] == pytest.approx(areas)
    assert lv.value == pytest.approx(max(areas)) and lv.extra["frame_index_of_largest"] == 0
    assert lv.extra["fractional_area_change"] == pytest.approx((max(areas) - min(areas)) / max(areas), abs=1e-4)


def test_sax_label_orientation_with_a_threshold_network(bundles: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels come back on the input's own pixels (transposes and Invertd undone), checked with a 1x1 conv."""
    folder = _threshold_sax(bundles, tmp_path / "sax", monkeypatch)
    img = _sax(n=3, rows=60, cols=80)
    img.array[:] = 0
    img.array[1, 5:25, 40:70] = 100  # a 20 x 30 bright rectangle on slice 1 only
    try:
        loaded = zoo._loaded(folder, "cpu")
        labels = zoo._sax_labels(loaded, img)
        found = zoo.run_zoo_bundle(folder, img, **IDS)
    finally:
        zoo.clear_cache()
    expected = np.zeros(img.shape, np.uint8)
    expected[1, 5:25, 40:70] = 1
    np.testing.assert_array_equal(labels, expected)
    lv = found[0]
    assert lv.extra["area_mm2"] == pytest.approx([0.0, 600 * 1.5 * 1.25, 0.0])
    np.testing.assert_allclose(lv.location.coords[:3], index_to_lps(img, [(1, 5, 40), (1, 24, 69)]).min(axis=0))


def _phantom_cine_images(n_frames: int = 6, size: int = 64):
    from cds.models.tasks.phantom import make_cine

    cine, truth = make_cine(3, n_frames=n_frames, rows=size, cols=size, supersample=2)
    g = truth["geometry"]
    direction = np.column_stack([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # axis 0 = slice normal z
    images = [Image(cine[:, s], (g["slice_thickness_mm"], *g["pixel_spacing_mm"]), (-40.0, -30.0, float(z)),
                    direction, "MR", {"axis0": "frame"}, f"slice-{s}")
              for s, z in enumerate(g["slice_positions_mm"])]
    return images, truth


def test_sax_cine_stack_gives_lv_function(bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """A list of per-slice cines -> zoo labels (here the phantom's truth) -> cmr_function EF/EDV/ESV Findings."""
    from cds.models.tasks.cmr_function import function_from_masks

    images, truth = _phantom_cine_images()
    labels = np.zeros(truth["lv_frac"].shape, np.uint8)
    for value, key in ((3, "rv_frac"), (2, "myo_frac"), (1, "lv_frac")):
        labels[truth[key] >= 0.5] = value
    monkeypatch.setattr(zoo, "_sax_labels", lambda loaded, image: labels[:, int(image.source.split("-")[1])])
    shuffled = images[1::2] + images[0::2]
    found = zoo.run_zoo_bundle(bundles[SAX], shuffled, output_dir=tmp_path, **IDS)
    want = function_from_masks((labels == 1).astype(np.float32), (labels == 2).astype(np.float32), truth["geometry"])
    by_code = {f.code: f for f in found}
    assert by_code["10230-1"].value == pytest.approx(want["ef_pct"], abs=0.01)
    assert by_code["75988-6"].value == pytest.approx(want["edv_ml"], abs=0.01)
    assert by_code["75989-4"].value == pytest.approx(want["esv_ml"], abs=0.01)
    assert abs(by_code["10230-1"].value - truth["ef_pct"]) < 5  # binary labels of the phantom truth
    ef = by_code["10230-1"]
    assert ef.unit == "%" and ef.model_id == SAX and ef.extra["ef_category"] in ("reduced", "indeterminate",
                                                                                  "not reduced")
    g = truth["geometry"]
    rv = (labels == 3).sum(axis=(2, 3)).sum(axis=1) * np.prod(g["pixel_spacing_mm"]) * (
        g["slice_thickness_mm"] + g["slice_gap_mm"]) / 1000
    assert ef.extra["rv_volumes_ml"] == pytest.approx(rv.tolist(), abs=1e-3)
    assert len(ef.extra["mask_files"]) == len(images)
    with pytest.raises(ModelInputError, match="not evenly spaced"):
        zoo.run_zoo_bundle(bundles[SAX], images[:3] + images[4:], **IDS)


def test_sax_cine_stack_with_the_bundle_network(bundles: dict[str, Path]) -> None:
    images, _ = _phantom_cine_images(n_frames=4, size=48)
    found = zoo.run_zoo_bundle(bundles[SAX], images[3:7], **IDS)
    codes = [f.code for f in found]
    assert codes[:3] == ["10230-1", "75988-6", "75989-4"] and all(np.isfinite(f.value) for f in found)
    with pytest.raises(ParameterError, match="cine stack"):
        zoo.run_zoo_bundle(bundles[LUNG], images, **IDS)
    with pytest.raises(ModelInputError, match=">= 2 frames"):
        zoo.run_zoo_bundle(bundles[SAX], [_sax(n=1, axis0="frame")], **IDS)


@pytest.mark.shared
def test_sax_bundle_on_a_real_mr_file(bundles: dict[str, Path], shared_data: Path) -> None:
    found = zoo.run_zoo_bundle(bundles[SAX], shared_data / "dicom-samples" / "MR_small.dcm", **IDS)
    assert [f.unit for f in found] == ["mm2", "mm2", "mm2"]
    with pytest.raises(ImageReadError, match="modality is CT, expected MR"):
        zoo.run_zoo_bundle(bundles[SAX], shared_data / "dicom-samples" / "CT_small.dcm", **IDS)
