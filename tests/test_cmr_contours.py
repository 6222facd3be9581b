"""Cine DICOM reading (IPP vs SliceLocation), Sunnybrook-style contours and their Simpson's volumes."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from cds.errors import ImageReadError, ParameterError
from cds.models.cine import read_cine
from cds.models.tasks import cmr_contours as C
from cds.models.tasks import cmr_function as cmr

N_SLICES, N_FRAMES, SIZE, STEP_MM, PX_MM = 4, 6, 48, 10.0, 1.5
ED, ES = N_FRAMES - 1, 2        # ED is the LAST frame of the cine: the cycle starts after ED
IOP = [0.8, 0.6, 0.0, 0.0, 0.0, -1.0]            # oblique rows, columns along -z


def _radius(frame: int, s: int) -> float:
    """LV cavity radius (px): largest at ED, smallest at ES, tapering towards slice 0."""
    phase = ((frame - ED) % N_FRAMES) / N_FRAMES
    return (6.0 + 1.5 * s) * (1 - 0.3 * math.sin(math.pi * min(phase / 0.5, 1.0)))


def _write_cine(root: Path, pid: str = "P001") -> Path:
    """A small cine series: files numbered by acquisition, SliceLocation steps 6.7 mm, IPP steps 10 mm."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = root / "dicoms" / pid
    folder.mkdir(parents=True)
    row, col = np.array(IOP[:3]), np.array(IOP[3:])
    normal = np.cross(row, col)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    series = "1.2.826.0.1.3680043.8.498.0105"        # a leading-zero component, as on real scanners
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*VR UI.*")     # the leading-zero UIDs, on purpose
        n = 0
        for s in range(N_SLICES):
            for f in range(N_FRAMES):
                n += 1
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
                meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.0{n}"
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = FileDataset(str(folder / f"{n}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
                ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
                ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = "MR", series, "1.2.3", pid
                ds.ImageOrientationPatient = IOP
                ds.ImagePositionPatient = [float(v) for v in (np.array([10.0, -5.0, 40.0]) + s * STEP_MM * normal)]
                ds.SliceLocation = -20.0 + 6.7 * s            # disagrees with the IPP spacing, as in Sunnybrook
                ds.SliceThickness = 8.0
                ds.TriggerTime = 30.0 * f + 0.5 * s           # per-slice jitter, as in real cines
                ds.InstanceNumber = n
                ds.PixelSpacing = [PX_MM, PX_MM]
                ds.Rows = ds.Columns = SIZE
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
                r = np.hypot(yy - 24.0, xx - 22.0)
                rc = _radius(f, s)
                img = np.where(r <= rc, 1000, np.where(r <= rc + 4, 250, 400)).astype(np.uint16)
                img[0, 0] = n                                   # identifies the file after reading
                ds.PixelData = img.tobytes()
                ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    return folder


def _circle(cx: float, cy: float, r: float, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def _write_layout(root: Path, pid: str = "P001", oid: str = "SC-X-1") -> dict[str, float]:
    """Cine + contours (slices 1..3 contoured; slice 0 not) + link.csv; returns the expected volumes."""
    _write_cine(root, pid)
    for kind in ("i", "o"):
        (root / "contours" / oid / f"{kind}-contours").mkdir(parents=True)
    ed_i = es_i = ed_o = 0.0
    for s in range(1, N_SLICES):
        for f in (ED, ES):
            n = s * N_FRAMES + f + 1
            endo = np.round(_circle(22.0, 24.0, _radius(f, s)), 2)
            np.savetxt(root / "contours" / oid / "i-contours" / f"IM-0001-{n:04d}-icontour-manual.txt", endo, "%.2f")
            if f == ED:
                epi = np.round(_circle(22.0, 24.0, _radius(f, s) + 4), 2)
                np.savetxt(root / "contours" / oid / "o-contours" / f"IM-0001-{n:04d}-ocontour-manual.txt", epi, "%.2f")
                ed_i += C.polygon_area(endo)
                ed_o += C.polygon_area(epi)
            else:
                es_i += C.polygon_area(endo)
    (root / "link.csv").write_text(f"patient_id,original_id\n{pid},{oid}\n")
    (root / "patients.csv").write_text(f"patient_id,original_id,sex,age,pathology\n{pid},{oid},Male,50,Test\n")
    k = PX_MM * PX_MM * STEP_MM / 1000.0
    return {"edv": ed_i * k, "esv": es_i * k, "mass": 1.05 * (ed_o - ed_i) * k}


def test_dicom_cine_uses_ipp_not_slice_location(tmp_path) -> None:
    folder = _write_cine(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_cine(folder)
    assert not [w for w in caught if "VR UI" in str(w.message)]      # counted, not printed
    assert img.meta["invalid_uid_values"] > 0
    assert img.shape == (N_FRAMES, N_SLICES, SIZE, SIZE)
    assert img.spacing[1] == pytest.approx(STEP_MM, abs=1e-3)        # not the 6.7 mm of SliceLocation
    assert img.spacing[2:] == (PX_MM, PX_MM) and img.spacing[0] == pytest.approx(30.0)
    assert img.meta["slice_positions_mm"] == pytest.approx([0, 10, 20, 30], abs=1e-3)
    # frames by TriggerTime, slices along the normal: file n sits at (frame, slice) of its acquisition
    ids = img.array[:, :, 0, 0].astype(int)
    assert ids.tolist() == [[s * N_FRAMES + f + 1 for s in range(N_SLICES)] for f in range(N_FRAMES)]
    assert img.meta["source_files"][1][2] == f"{N_FRAMES + 3}.dcm"
    g = cmr.cine_geometry(img)
    assert g["spacing_between_slices_mm"] == pytest.approx(STEP_MM, abs=1e-3) and g["slice_thickness_mm"] == 8.0


def test_incomplete_cine_is_refused(tmp_path) -> None:
    folder = _write_cine(tmp_path)
    (folder / "3.dcm").unlink()
    with pytest.raises(ImageReadError, match="different frame counts"):
        read_cine(folder)


def test_contour_volumes_by_simpson_from_ipp(tmp_path) -> None:
    expected = _write_layout(tmp_path)
    assert C.is_contour_layout(tmp_path) and not C.is_contour_layout(tmp_path / "dicoms")
    case = C.load_case(tmp_path, "P001")
    assert case["ed_frame"] == ED and case["es_frame"] == ES
    assert case["patient"]["pathology"] == "Test"
    ref = C.contour_function(case)
    assert ref["edv_ml"] == pytest.approx(expected["edv"], rel=1e-9)
    assert ref["esv_ml"] == pytest.approx(expected["esv"], rel=1e-9)
    assert ref["lv_mass_g"] == pytest.approx(expected["mass"], rel=1e-9)
    assert ref["ef_pct"] == pytest.approx(100 * (expected["edv"] - expected["esv"]) / expected["edv"])
    assert ref["slice_spacing_mm"] == pytest.approx(STEP_MM, abs=1e-3)
    assert ref["slices_ed"] == [1, 2, 3] and ref["n_slices_es"] == 3
    # raster fractions agree with the polygon areas; slice 0 (beyond the contours) is an empty target
    targets = C.contour_targets(case)
    ed_t = [t for t in targets if t["frame"] == ED and not t.get("outside")]
    assert sum(float(t["lv"].sum()) for t in ed_t) * PX_MM**2 * STEP_MM / 1000 == pytest.approx(expected["edv"], rel=0.01)
    outside = [t for t in targets if t.get("outside")]
    assert {(t["frame"], t["slice"]) for t in outside} == {(ED, 0), (ES, 0)}
    assert all(t["lv"].sum() == 0 for t in outside)
    assert {t["kind"] for t in targets if t["frame"] == ES} == {"lv"}


def test_contour_files_and_layout_errors(tmp_path) -> None:
    bad = tmp_path / "c.txt"
    bad.write_text("1 2\n3 x\n")
    with pytest.raises(ImageReadError, match="c.txt: line 2"):
        C.read_contour(bad)
    bad.write_text("1 2\n3 4\n")
    with pytest.raises(ImageReadError, match=">= 3 points"):
        C.read_contour(bad)
    _write_layout(tmp_path / "d")
    with pytest.raises(ParameterError, match="'P9' is not in"):
        C.load_case(tmp_path / "d", "P9")
    (tmp_path / "d" / "link.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ParameterError, match="patient_id,original_id"):
        C.read_link(tmp_path / "d")


def test_polygon_helpers() -> None:
    sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    assert C.polygon_area(sq) == 16.0 and C.polygon_area(sq[::-1]) == 16.0
    circ = _circle(20, 20, 8, 256)
    assert C.polygon_fraction(circ, (40, 40)).sum() == pytest.approx(C.polygon_area(circ), rel=0.01)
    assert C.polygon_fraction(circ + 100, (40, 40)).sum() == 0


@pytest.mark.parametrize("start", [0, 3, 7, 11, 19])
def test_ed_es_found_wherever_the_cycle_starts(start: int) -> None:
    """The cine may start anywhere in the cycle (ED can be the last frame); noise must not flip ED."""
    from cds.models.tasks.phantom import activation

    n = 20
    t = (np.arange(n) / n + start / n) % 1.0
    vols = 150 - 60 * activation(t, 0.35) + np.random.default_rng(start).normal(0, 1.0, n)
    ed, es = cmr.ed_es_frames(vols)
    true_ed, true_es = (-start) % n, (7 - start) % n

    def cyc(a: int, b: int) -> int:
        return min((a - b) % n, (b - a) % n)

    assert cyc(ed, true_ed) <= 1 and cyc(es, true_es) <= 1


def test_evaluate_on_a_contour_folder(tmp_path) -> None:
    """`cds evaluate` detects the contour layout and scores the bundle against the contours' volumes."""
    _write_layout(tmp_path)
    r = cmr.TASK.evaluate(tmp_path, n_boot=50)
    assert r["split"].startswith("all patients") and r["n_patients"] == 1
    row = r["cases"][0]
    assert row["patient_id"] == "P001" and row["ed_frame"][0] == ED
    assert set(r["metrics"]) >= {"ef_mae", "edv_mae", "esv_mae", "lv_mass_mae"}
    assert r["metrics"]["edv_mae"]["value"] == pytest.approx(abs(row["edv_error"]), abs=1e-3)
    json.dumps(r)
    with pytest.raises(ParameterError, match="split"):
        cmr.TASK.evaluate(tmp_path, split="test")


def test_cds_run_on_a_dicom_cine_folder_reports_lv_mass_and_frames(tmp_path) -> None:
    from cds.images.image import Image
    from cds.models.bundle import load_bundle

    folder = _write_cine(tmp_path)
    img = read_cine(folder)
    b = load_bundle(cmr.default_bundle_dir())
    pred = cmr.predict(b, img.array, cmr.cine_geometry(img))
    fs = cmr.to_findings(b, pred, "P001", "1.2.3", None, [], {})
    codes = {f.code for f in fs}
    assert "lv-mass" in codes or pred["lv_mass_g"] is None
    assert all("ed_frame" in f.extra and "es_frame" in f.extra for f in fs)
    assert isinstance(img, Image)


@pytest.mark.shared
def test_sunnybrook_contour_volumes(shared_data) -> None:
    """The 3 real patients: contour EF about 26, 25, 22 % and ED at the end of the cine (frames 18-19)."""
    d = shared_data / "sunnybrook-cmr"
    out = {}
    for r in C.read_link(d):
        case = C.load_case(d, r["patient_id"])
        out[r["patient_id"]] = C.contour_function(case)
        assert case["image"].meta["invalid_uid_values"] > 0
    assert [round(v["ef_pct"]) for v in out.values()] == [26, 25, 22]
    assert [v["ed_frame"] for v in out.values()] == [18, 19, 19]
    assert all(v["slice_spacing_mm"] in (8.0, 10.0) for v in out.values())
    assert all(100 < v["edv_ml"] < 300 and 80 < v["lv_mass_g"] < 200 for v in out.values())
