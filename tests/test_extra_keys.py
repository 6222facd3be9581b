"""Every Finding the built-in models, Model Zoo adapters and generic kinds produce uses only the documented
``Finding.extra`` keys (:data:`cds.finding.EXTRA_KEYS`), and every documented key is written by someone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds.finding import EXTRA_KEYS, Finding

PRODUCED: dict[str, list[Finding]] = {}


@pytest.fixture(scope="module")
def radiograph(samples_dir: Path):
    from cds.images.read import read_image

    return read_image(sorted((samples_dir / "dicom" / "hannover").rglob("*.dcm"))[0])


def _check(source: str, findings: list[Finding]) -> None:
    assert findings, f"{source} produced no Finding to check"
    PRODUCED[source] = findings
    for f in findings:
        unknown = set(f.extra) - set(EXTRA_KEYS)
        assert not unknown, f"{source} writes undocumented Finding.extra keys {sorted(unknown)}"


def test_chest_radiograph_models(radiograph, tmp_path: Path) -> None:
    from cds.images.read import read_image
    from cds.models.registry import ModelRegistry
    from cds.models.vouch import StudyFacts
    from tests.paediatric import write_paediatric_cohort

    reg = ModelRegistry(user_dirs=[])
    ehr = {"cxr-cardiomegaly": {"age": 70.0, "sex": "male"}, "cxr-icu": {}}
    for model_id, values in ehr.items():
        _check(model_id, reg.run_image(model_id, radiograph, values, artifacts_dir=tmp_path))
    # the paediatric demo model, on a child's radiograph (an adult's is outside its intended use)
    child = read_image(write_paediatric_cohort(tmp_path / "children", n=1) / "png" / "child-1.png")
    _check("pneumonia", reg.run_image("pneumonia", child, {}, artifacts_dir=tmp_path,
                                      facts=StudyFacts("", age_years=3.0), check_identity=False))
    assert any("heatmap" in f.extra for f in PRODUCED["pneumonia"] + PRODUCED["cxr-cardiomegaly"])


def test_mammography_models(shared_data: Path) -> None:
    from cds.images.image import Image
    from cds.models.bundle import load_bundle
    from cds.models.registry import BUILTIN_DIR
    from cds.models.task_table import TASKS
    from cds.models.tasks import mammo

    png = shared_data / "mini-mias" / "png" / "mdb011.png"
    if not png.is_file():
        pytest.skip(f"{png} is absent")
    pixels = mammo.read_mammogram(png)
    image = Image(pixels, (0.2, 0.2), (0.0, 0.0, 0.0), np.eye(3), "MG", {"patient_frame": False}, str(png))
    for name in ("mammo-density", "mammo-abnormality"):
        _check(name, TASKS[name].predict(load_bundle(BUILTIN_DIR / name), image, {}))


def test_ct_lung_nodule_on_a_phantom_with_a_nodule() -> None:
    from cds.images.image import Image
    from cds.models.bundle import load_bundle
    from cds.models.registry import BUILTIN_DIR
    from cds.models.task_table import TASKS
    from tests.test_ct_lung_nodule import AXIAL, _phantom

    vol, sp, org, _ = _phantom()
    image = Image(vol, tuple(sp), tuple(org), AXIAL, "CT", {"patient_frame": True}, "phantom")
    _check("ct-lung-nodule", TASKS["ct-lung-nodule"].predict(load_bundle(BUILTIN_DIR / "ct-lung-nodule"), image, {}))


def test_cmr_function_on_a_phantom_cine() -> None:
    from cds.images.image import Image
    from cds.models.bundle import load_bundle
    from cds.models.registry import BUILTIN_DIR
    from cds.models.task_table import TASKS
    from cds.models.tasks.phantom import make_cine

    cine, truth = make_cine(920002, n_frames=8, supersample=2)
    g = truth["geometry"]
    spacing = (1.0, g["slice_thickness_mm"] + g["slice_gap_mm"], *g["pixel_spacing_mm"])
    image = Image(cine, spacing, (0.0, 0.0, 0.0), np.eye(3), "MR",
                  {"slice_thickness_mm": g["slice_thickness_mm"]}, "phantom")
    _check("cmr-function", TASKS["cmr-function"].predict(load_bundle(BUILTIN_DIR / "cmr-function"), image, {}))


def test_model_zoo_adapters() -> None:
    from cds.images.image import Image
    from cds.models import zoo

    _check("zoo lung", zoo.lung_box_findings(np.array([[10, -5, 3, 0, 5, -3.0]]), np.array([0.9]), 0.02, "p", "1.2",
                                             None, (), "0.6.8"))
    _check("zoo breast", [zoo.breast_density_finding([0.1, 0.2, 0.7, 0.3], "ABCD", "p", "1.2", None, (), "0.1.7")])
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[:, 2:5, 2:5] = 1
    img = Image(np.zeros((2, 8, 8)), (8.0, 1.5, 1.5), (0.0, 0.0, 0.0), np.eye(3), "MR", {"axis0": "space"}, "sax")
    _check("zoo sax", zoo.sax_findings(lab, img, {1: "lv_pool"}, "p", "1.2", None, (), "0.3.4"))


def test_model_zoo_ventricular_bundle_on_a_stack_and_a_cine(tmp_path: Path) -> None:
    from cds.models import zoo
    from tests.test_zoo import IDS, _phantom_cine_images, _sax
    from tests.zoo_fixtures import write_zoo_bundle

    folder = write_zoo_bundle(zoo.SAX, tmp_path / "models")
    images, _ = _phantom_cine_images(n_frames=4, size=48)
    try:
        _check("zoo sax cine", zoo.run_zoo_bundle(folder, images[3:7], output_dir=tmp_path, **IDS))
        _check("zoo sax frames", zoo.run_zoo_bundle(folder, _sax(n=5, axis0="frame"), **IDS))
    finally:
        zoo.clear_cache()


def test_generic_kinds(tmp_path: Path) -> None:
    from cds.models.registry import ModelRegistry
    from tests.test_generic_kinds import (
        CONV1,
        DENSENET2D,
        OUTPUTS2,
        PRE2D,
        SNOMED,
        _blobs,
        _conv,
        _seeded,
        _write,
    )

    _write(tmp_path, "cls", {"kind": "classification-2d", "outputs": OUTPUTS2, "threshold": 0.5}, DENSENET2D,
           _seeded(DENSENET2D), preprocessing=PRE2D)
    conv = {**CONV1, "out_channels": 1}
    nodule = [{"code_system": SNOMED, "code": "27925004", "display": "Nodule"}]
    _write(tmp_path, "det", {"kind": "box-detection", "threshold": 0.5, "outputs": nodule}, conv,
           _conv(conv, [6.0], [-3.0]))
    _write(tmp_path, "seg", {"kind": "segmentation", "outputs": [{**nodule[0], "channel": 1}]}, CONV1,
           _conv(CONV1, [0.0, 4.0, -4.0], [0.0, -2.0, -9.0]))
    reg = ModelRegistry(user_dirs=[tmp_path])
    image, _ = _blobs()
    _check("classification-2d", reg.run_image("cls", type(image)(image.array[0], image.spacing[1:], image.origin,
                                                                   image.direction, "CR", {}, "x")))
    _check("box-detection", reg.run_image("det", image))
    _check("segmentation", reg.run_image("seg", image))


def test_every_documented_key_is_written() -> None:
    """Runs last in this module: a documented key no producer writes is stale documentation."""
    if len(PRODUCED) < 14:
        pytest.skip(f"only {len(PRODUCED)} of 14 producers ran (shared data absent?)")
    written = {k for fs in PRODUCED.values() for f in fs for k in f.extra}
    assert set(EXTRA_KEYS) - written == set()
