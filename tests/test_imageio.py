"""cds.images (image, dicom, dicom_image, nifti, pictures, read): DICOM files/series, NIfTI, PNG/JPEG,
patient geometry, series selection and every bad-input case."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

from cds.errors import ImageReadError, ParameterError
from cds.images.dicom import SeriesMismatchError, read_dicom_folder
from cds.images.image import Image, check_direction, index_to_lps, lps_to_index
from cds.images.nifti import write_nifti
from cds.images.read import read_image

# ------------------------------------------------------------------------------------------ helpers


def _rotation(a: float, b: float) -> np.ndarray:
    """An oblique orthonormal frame: rotation about z by a, then about x by b (columns = axes)."""
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    return rx @ rz


def _ct_slice(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    frame: np.ndarray,
    *,
    series_uid: str,
    study_uid: str,
    instance: int,
    spacing: tuple[float, float] = (0.7, 0.8),
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> Dataset:
    """Write one uncompressed single-frame slice; ``frame`` columns = row cosine, column cosine, normal."""
    sop = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID, ds.Modality, ds.InstanceNumber = "SYN-1", modality, instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in (*frame[:, 0], *frame[:, 1])]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def _synthetic_series(folder: Path, n: int = 5, gap: float = 2.5, rows: int = 6, cols: int = 7, **kw) -> dict:
    """An oblique synthetic CT series written in shuffled file order with reversed instance numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = _rotation(0.3, 0.2)
    p0 = np.array([-100.5, 40.25, 12.0])
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    raws, positions = [], []
    for k in rng.permutation(n):
        raw = (np.arange(rows * cols).reshape(rows, cols) + 100 * k + 1000).astype(np.uint16)
        pos = p0 + k * gap * frame[:, 2]
        _ct_slice(folder / f"img{rng.integers(1e9)}.dcm", raw, pos, frame, series_uid=series,
                  study_uid=study, instance=n - k, **kw)  # fmt: skip
        raws.append((k, raw))
        positions.append((k, pos))
    return {
        "frame": frame,
        "p0": p0,
        "raw": np.stack([r for _, r in sorted(raws, key=lambda t: t[0])]),
        "series_uid": series,
        "gap": gap,
    }


def _expected_lps(
    p0: np.ndarray, frame: np.ndarray, gap: float, spacing: tuple[float, float], kji
) -> np.ndarray:
    """DICOM formula: IPP_k + c * PixelSpacing[1] * row_cos + r * PixelSpacing[0] * col_cos."""
    k, r, c = kji
    return p0 + k * gap * frame[:, 2] + c * spacing[1] * frame[:, 0] + r * spacing[0] * frame[:, 1]


# ------------------------------------------------------------------------------------------ synthetic series


def test_series_is_sorted_by_geometry_and_geometry_is_exact(tmp_path: Path) -> None:
    syn = _synthetic_series(tmp_path / "s")
    img = read_image(tmp_path / "s")
    assert img.shape == (5, 6, 7)
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, syn["raw"].astype(np.int32) - 1024)
    assert img.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert img.modality == "CT" and img.meta["patient_id"] == "SYN-1"
    for kji in [(0, 0, 0), (4, 0, 0), (2, 5, 6), (3, 1, 4)]:
        np.testing.assert_allclose(
            index_to_lps(img, kji), _expected_lps(syn["p0"], syn["frame"], 2.5, (0.7, 0.8), kji)
        )
    pts = np.array([[0, 0, 0], [4.5, 2.25, 6.0]])
    np.testing.assert_allclose(lps_to_index(img, index_to_lps(img, pts)), pts, atol=1e-9)
    assert img.meta["sop_instance_uids"][0] == pydicom.dcmread(img.meta["files"][0]).SOPInstanceUID
    assert img.meta["window_center"] == 40 and img.meta["window_width"] == 400


def test_missing_slice_is_inconsistent_spacing(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=6)
    victim = sorted(tmp_path.glob("s/*.dcm"), key=lambda p: pydicom.dcmread(p).InstanceNumber)[2]
    victim.unlink()
    with pytest.raises(ImageReadError, match="inconsistent slice spacing") as err:
        read_image(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value)


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=3)
    src = next(tmp_path.glob("s/*.dcm"))
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "s" / "copy.dcm")
    with pytest.raises(ImageReadError, match="share a position"):
        read_image(tmp_path / "s")


def test_monochrome1_and_fractional_rescale(tmp_path: Path) -> None:
    syn = _synthetic_series(tmp_path / "s", n=2, photometric="MONOCHROME1", slope=0.5, intercept=10.0)
    img = read_image(tmp_path / "s")
    assert img.array.dtype == np.float32
    expected = (4095 - syn["raw"].astype(np.float64)) * 0.5 + 10.0  # BitsStored 12 -> inverted on 0..4095
    np.testing.assert_allclose(img.array, expected)
    assert img.meta["inverted"] is True
    assert img.meta["window_center"] == pytest.approx(0.5 * 4095 + 2 * 10.0 - 40)


def test_folder_with_several_series_picks_largest_or_asked(tmp_path: Path) -> None:
    big = _synthetic_series(tmp_path / "mix" / "a", n=4)
    small = _synthetic_series(tmp_path / "mix" / "b", n=2, modality="MR", intercept=0.0)
    (tmp_path / "mix" / "notes.txt").write_text("not dicom")
    img = read_image(tmp_path / "mix")
    assert img.meta["series_uid"] == big["series_uid"] and img.shape[0] == 4
    assert img.meta["series_in_folder"] == {big["series_uid"]: 4, small["series_uid"]: 2}
    assert read_image(tmp_path / "mix", series_uid=small["series_uid"]).modality == "MR"
    assert read_image(tmp_path / "mix", modality="MR").meta["series_uid"] == small["series_uid"]
    with pytest.raises(ImageReadError, match="series 1.2.3 not in folder"):
        read_image(tmp_path / "mix", series_uid="1.2.3")
    with pytest.raises(ImageReadError, match="modality is CT, expected PT"):
        read_image(tmp_path / "mix", modality="PT")


def test_requested_series_is_read_even_when_smaller(tmp_path: Path) -> None:
    """A cohort row names its series: that one is read, not the folder's largest."""
    big = _synthetic_series(tmp_path / "study" / "a", n=5, rows=6, cols=7)
    small = _synthetic_series(tmp_path / "study" / "b", n=3, rows=4, cols=5, intercept=0.0)
    assert read_image(tmp_path / "study").meta["series_uid"] == big["series_uid"]  # no uid: the largest
    img = read_image(tmp_path / "study", series_uid=small["series_uid"], modality="CT")
    assert img.meta["series_uid"] == small["series_uid"] and img.shape == (3, 4, 5)
    np.testing.assert_array_equal(img.array, small["raw"])
    assert all(str(tmp_path / "study" / "b") in f for f in img.meta["files"])
    # the requested series exists but has another modality than the row says: the file and both values
    with pytest.raises(SeriesMismatchError, match="modality is CT, expected MR") as err:
        read_image(tmp_path / "study", series_uid=small["series_uid"], modality="MR")
    assert err.value.where in img.meta["files"]
    assert (err.value.attribute, err.value.found, err.value.expected) == ("Modality", "CT", "MR")
    # a series that is not in the folder: the folder, the uid asked and the uids found
    with pytest.raises(SeriesMismatchError, match="series 1.2.3 not in folder") as err:
        read_image(tmp_path / "study", series_uid="1.2.3")
    assert err.value.where == str(tmp_path / "study")
    assert big["series_uid"] in str(err.value) and small["series_uid"] in str(err.value)


def test_file_of_another_series_or_modality_than_asked(tmp_path: Path) -> None:
    syn = _synthetic_series(tmp_path / "s", n=1)
    f = next((tmp_path / "s").glob("*.dcm"))
    assert read_image(f, series_uid=syn["series_uid"], modality="ct").meta["series_uid"] == syn["series_uid"]
    with pytest.raises(ImageReadError, match=f"SeriesInstanceUID is {syn['series_uid']}, expected 9.8.7") as err:
        read_image(f, series_uid="9.8.7")
    assert err.value.where == str(f)
    with pytest.raises(ImageReadError, match="modality is CT, expected DX") as err:
        read_image(f, series_uid=syn["series_uid"], modality="DX")
    assert err.value.where == str(f)
    # a DICOMweb URL names its series: another uid asked is refused before any request
    url = "http://127.0.0.1:1/dicom-web/studies/1.2/series/3.4"
    with pytest.raises(SeriesMismatchError, match="SeriesInstanceUID is 3.4, expected 5.6") as err:
        read_image(url, series_uid="5.6")
    assert err.value.where == url
    # NIfTI and pictures record neither; the request is not checked for them
    PILImage.fromarray(np.zeros((3, 4), np.uint8)).save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png", series_uid="9.8.7", modality="CR").shape == (3, 4)
    for bad in ("", 1.5, float("nan")):
        with pytest.raises(ParameterError, match="series_uid"):
            read_image(f, series_uid=bad)  # type: ignore[arg-type]


def test_slice_gap_tolerance_and_non_recursive_folder(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=4, gap=2.5)
    files = sorted((tmp_path / "s").glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    ds = pydicom.dcmread(files[-1])
    normal = np.cross(np.asarray(ds.ImageOrientationPatient[:3]), np.asarray(ds.ImageOrientationPatient[3:]))
    ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + 0.1 * normal]
    ds.save_as(files[-1])  # the last gap is 2.6 mm instead of 2.5: 4 % off
    with pytest.raises(ImageReadError, match="inconsistent slice spacing"):
        read_image(tmp_path / "s")
    assert read_image(tmp_path / "s", slice_gap_tolerance=0.05).shape[0] == 4
    with pytest.raises(ParameterError, match="slice_gap_tolerance"):
        read_image(tmp_path / "s", slice_gap_tolerance=1.5)
    with pytest.raises(ImageReadError, match="empty folder"):
        read_dicom_folder(tmp_path, recursive=False)  # the slices are one level down
    assert read_dicom_folder(tmp_path, slice_gap_tolerance=0.05).shape[0] == 4


def test_check_direction() -> None:
    assert check_direction(np.eye(3)).dtype == np.float64
    with pytest.raises(ParameterError, match="3x3"):
        check_direction(np.eye(2))
    with pytest.raises(ParameterError, match="unit vectors"):
        check_direction(np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(ParameterError, match="not independent"):
        check_direction(np.array([[1.0, 1.0, 0], [0, 0, 0], [0, 0, 1]]))
    img = Image(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.zeros((3, 3)), "CT", {}, "x")
    with pytest.raises(ParameterError, match="direction"):
        index_to_lps(img, (0, 0, 0))


# ------------------------------------------------------------------------------------------ bad input


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="empty folder") as err:
        read_image(tmp_path / "empty")
    assert err.value.where == str(tmp_path / "empty")
    with pytest.raises(ImageReadError, match="no such file or folder"):
        read_image(tmp_path / "nope.dcm")


def test_not_dicom(tmp_path: Path) -> None:
    f = tmp_path / "scan.dcm"
    f.write_bytes(b"hello, this is not DICOM" * 20)
    with pytest.raises(ImageReadError, match="not a DICOM file") as err:
        read_image(f)
    assert err.value.where == str(f)
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    with pytest.raises(ImageReadError, match=r"no DICOM image in folder \(1 files: 1 not DICOM \(e\.g\. a\.txt\)\)"):
        read_image(tmp_path / "only_text")


def test_truncated_files(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=3, rows=32, cols=32)
    files = sorted((tmp_path / "s").glob("*.dcm"))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 500])  # pixel data cut short
    with pytest.raises(ImageReadError, match="truncated or corrupt") as err:
        read_image(files[1])
    assert err.value.where == str(files[1])
    with pytest.raises(
        ImageReadError, match="truncated or corrupt"
    ) as err:  # inside a series: names the file
        read_image(tmp_path / "s")
    assert err.value.where == str(files[1])
    files[0].write_bytes(files[0].read_bytes()[:300])  # cut inside the header
    with pytest.raises(ImageReadError, match="truncated or corrupt") as err:
        read_image(files[0])
    assert err.value.where == str(files[0])


def test_no_pixel_data(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=1)
    f = next((tmp_path / "s").glob("*.dcm"))
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(tmp_path / "stripped.dcm")
    with pytest.raises(ImageReadError, match="no pixel data") as err:
        read_image(tmp_path / "stripped.dcm")
    assert err.value.where == str(tmp_path / "stripped.dcm")


def test_compressed_without_codec_names_syntax_and_package(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here; the no-codec path cannot be exercised")
    _synthetic_series(tmp_path / "s", n=1)
    ds = pydicom.dcmread(next((tmp_path / "s").glob("*.dcm")))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpegll.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "jpegll.dcm")
    msg = str(err.value)
    assert str(tmp_path / "jpegll.dcm") in msg
    assert "1.2.840.10008.1.2.4.70" in msg and "JPEG Lossless" in msg
    assert "pylibjpeg-libjpeg" in msg and "gdcm" in msg


def test_wrong_modality(tmp_path: Path) -> None:
    _synthetic_series(tmp_path / "s", n=2, modality="MR", intercept=0.0)
    with pytest.raises(ImageReadError, match="modality is MR, expected CT"):
        read_image(tmp_path / "s", modality="CT")
    f = next((tmp_path / "s").glob("*.dcm"))
    with pytest.raises(ImageReadError, match="modality is MR, expected CT"):
        read_image(f, modality="CT")
    assert read_image(f, modality="mr").modality == "MR"


def test_dicomweb_url_must_name_a_series() -> None:
    with pytest.raises(ImageReadError, match="must name a series"):
        read_image("http://127.0.0.1:1/dicom-web/studies/1.2.3")


# ------------------------------------------------------------------------------------------ NIfTI


def _oblique_image() -> Image:
    frame = _rotation(0.4, -0.25)
    direction = np.column_stack([frame[:, 2], frame[:, 1], frame[:, 0]])  # array order: slices, rows, cols
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30
    return Image(arr, (2.5, 0.7, 0.8), (-100.5, 40.25, 12.0), direction, "CT", {"patient_frame": True}, "syn")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_geometry(tmp_path: Path, suffix: str) -> None:
    img = _oblique_image()
    out = write_nifti(img, tmp_path / f"vol{suffix}")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)
    corners = np.array([[0, 0, 0], [2, 3, 4], [1, 0, 4]])
    np.testing.assert_allclose(index_to_lps(back, corners), index_to_lps(img, corners), atol=1e-4)


def test_nifti_is_ras_on_disk(tmp_path: Path) -> None:
    """Independent check with nibabel: NIfTI voxel (i, j, k) maps to RAS = LPS with x, y negated."""
    import nibabel as nib

    img = _oblique_image()
    out = write_nifti(img, tmp_path / "vol.nii.gz")
    nii = nib.load(out)
    assert nii.shape == (5, 4, 3)
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
    for k, j, i in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        ras = nii.affine @ np.array([i, j, k, 1.0])
        lps = index_to_lps(img, (k, j, i))
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
        assert nii.get_fdata()[i, j, k] == img.array[k, j, i]
    np.testing.assert_allclose(nii.get_qform(), nii.affine, atol=1e-4)  # qform agrees with sform


def test_nifti_written_by_nibabel(tmp_path: Path) -> None:
    import nibabel as nib

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]  # RAS
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "x.nii")
    img = read_image(tmp_path / "x.nii")
    assert img.shape == (4, 3, 2) and img.modality is None
    assert img.spacing == pytest.approx((4.0, 3.0, 2.0))
    assert img.origin == pytest.approx((-10.0, -20.0, 30.0))
    np.testing.assert_allclose(img.direction, [[0, 0, -1], [0, -1, 0], [1, 0, 0]])
    assert img.array[3, 2, 1] == data[1, 2, 3]
    np.testing.assert_allclose(index_to_lps(img, (3, 2, 1)), [-(10 + 2 * 1), -(20 + 3 * 2), 30 + 4 * 3])


def test_bad_nifti(tmp_path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(ImageReadError, match="4D NIfTI"):
        read_image(tmp_path / "t.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImageReadError, match="not a readable NIfTI") as err:
        read_image(tmp_path / "junk.nii.gz")
    assert err.value.where == str(tmp_path / "junk.nii.gz")


# ------------------------------------------------------------------------------------------ PNG / JPEG


def test_png_gray_16bit_rgb_and_jpeg(tmp_path: Path) -> None:
    gray = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(img.array, gray)
    assert img.spacing == (1.0, 1.0) and img.meta["spacing_known"] is False and img.modality is None
    with pytest.raises(ParameterError, match="no patient coordinate frame"):
        index_to_lps(img, (1, 1))

    deep = (np.arange(20 * 30) * 97 % 65535).astype(np.uint16).reshape(20, 30)
    PILImage.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png").array, deep)

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    PILImage.fromarray(rgb).save(tmp_path / "red.png")
    red = read_image(tmp_path / "red.png")
    assert red.shape == (4, 4) and int(red.array[0, 0]) == 76  # ITU-R 601: 0.299 * 255
    assert "color_converted" in red.meta

    PILImage.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    jpg = read_image(tmp_path / "g.jpg")
    assert jpg.shape == (20, 30) and np.abs(jpg.array.astype(int) - gray).mean() < 8


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    PILImage.fromarray(noise).save(tmp_path / "n.png")
    data = (tmp_path / "n.png").read_bytes()
    (tmp_path / "n.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="not a readable picture") as err:
        read_image(tmp_path / "n.png")
    assert err.value.where == str(tmp_path / "n.png")


# ------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def lung_ct(shared_data: Path) -> Path:
    folder = shared_data / "lung-pet-ct-dx" / "Lung_Dx-A0001"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> Path:
    folder = shared_data / "dicom-samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.mark.shared
def test_real_ct_series(lung_ct: Path) -> None:
    img = read_image(lung_ct, modality="CT")
    assert img.shape == (64, 512, 512)
    assert img.array.dtype == np.int16
    assert (int(img.array.min()), int(img.array.max())) == (-1024, 2976)
    assert img.spacing == pytest.approx((5.0, 0.841796875, 0.841796875))
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(lung_ct.rglob("*.dcm"))}
    lowest = min(headers, key=lambda p: float(headers[p].ImagePositionPatient[2]))
    highest = max(headers, key=lambda p: float(headers[p].ImagePositionPatient[2]))
    np.testing.assert_allclose(
        index_to_lps(img, (0, 0, 0)), [float(v) for v in headers[lowest].ImagePositionPatient]
    )
    np.testing.assert_allclose(
        index_to_lps(img, (63, 0, 0)), [float(v) for v in headers[highest].ImagePositionPatient]
    )
    assert img.meta["sop_instance_uids"][0] == headers[lowest].SOPInstanceUID
    # voxel values: slice 0 is the lowest file's pixels in HU; column c moves along +x (L), row r along +y (P)
    ds = pydicom.dcmread(lowest)
    np.testing.assert_array_equal(img.array[0], ds.pixel_array.astype(np.int32) * 1 - 1024)
    np.testing.assert_allclose(
        index_to_lps(img, (0, 10, 20)) - index_to_lps(img, (0, 0, 0)), [20 * 0.841796875, 10 * 0.841796875, 0]
    )
    assert img.meta["patient_id"] == "Lung_Dx-A0001" and img.meta["window_center"] == -600
    assert img.meta["series_uid"] == ds.SeriesInstanceUID
    # a single slice of it is a one-slice volume at the same place
    one = read_image(lowest)
    assert one.shape == (1, 512, 512)
    np.testing.assert_allclose(one.origin, img.origin)


@pytest.mark.shared
def test_real_ct_nifti_round_trip(lung_ct: Path, tmp_path: Path) -> None:
    img = read_image(lung_ct)
    slab = Image(
        img.array[:3], img.spacing, img.origin, img.direction, img.modality, dict(img.meta), img.source
    )
    back = read_image(write_nifti(slab, tmp_path / "slab.nii.gz"))
    np.testing.assert_array_equal(back.array, slab.array)
    np.testing.assert_allclose(back.spacing, slab.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, slab.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, slab.direction, atol=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize(
    "name, shape, modality, patient_frame",
    [
        ("CT_small.dcm", (1, 128, 128), "CT", True),
        ("MR_small.dcm", (1, 64, 64), "MR", True),
        ("MR2_J2KR.dcm", (1, 1024, 1024), "MR", True),
        ("explicit_VR-UN.dcm", (1, 512, 512), "CT", True),
        ("eCT_Supplemental.dcm", (2, 512, 512), "CT", True),
        ("emri_small.dcm", (10, 64, 64), "MR", False),
        ("liver.dcm", (3, 512, 512), "SEG", True),
        ("RG1_J2KI.dcm", (1955, 1841), "CR", False),
        ("RG3_J2KR.dcm", (1760, 1760), "CR", False),
        ("US1_J2KR.dcm", (480, 640), "US", False),
        ("OBXXXX1A.dcm", (600, 800), "US", False),
        ("NM1_uncompressed.dcm", (1024, 256), "NM", False),
    ],
)
def test_real_samples(samples: Path, name: str, shape: tuple, modality: str, patient_frame: bool) -> None:
    img = read_image(samples / name)
    assert img.shape == shape and img.modality == modality
    assert img.meta["patient_frame"] is patient_frame
    assert img.source == str(samples / name)
    assert np.isfinite(img.array).all() and img.array.std() > 0


@pytest.mark.shared
def test_real_samples_values(samples: Path) -> None:
    ct = read_image(samples / "CT_small.dcm")
    ds = pydicom.dcmread(samples / "CT_small.dcm")
    np.testing.assert_array_equal(
        ct.array[0], ds.pixel_array * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    )
    np.testing.assert_allclose(ct.origin, [float(v) for v in ds.ImagePositionPatient])
    assert ct.spacing[1:] == pytest.approx([float(v) for v in ds.PixelSpacing])

    cr = read_image(samples / "RG1_J2KI.dcm")  # MONOCHROME1, BitsStored 15, PixelSpacing 0\0
    raw = pydicom.dcmread(samples / "RG1_J2KI.dcm").pixel_array
    np.testing.assert_array_equal(cr.array, 32767 - raw.astype(np.int32))
    assert cr.meta["inverted"] and cr.meta["spacing_known"] is False and cr.spacing == (1.0, 1.0)
    assert cr.meta["view_position"] == "PA" and cr.meta["body_part"] == "CHEST"

    nm = read_image(samples / "NM1_uncompressed.dcm")
    assert nm.spacing == pytest.approx((2.26, 2.26)) and nm.meta["spacing_known"] is True

    us = read_image(samples / "US1_J2KR.dcm")
    assert "color_converted" in us.meta and 0 <= us.array.min() and us.array.max() <= 255

    ect = read_image(samples / "eCT_Supplemental.dcm")  # IOP (-1,0,0 / 0,1,0): normal is -z
    assert ect.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    np.testing.assert_allclose(ect.direction[:, 0], [0, 0, -1])
    np.testing.assert_allclose(index_to_lps(ect, (1, 0, 0)), [99.5, -301.5, -159.0])

    seg = read_image(samples / "liver.dcm")
    assert set(np.unique(seg.array)) == {0, 1}
    np.testing.assert_allclose(index_to_lps(seg, (2, 0, 0)), [-235.2, -226.8, -126.69])


@pytest.mark.shared
@pytest.mark.parametrize("name", ["test-SR.dcm", "reportsi.dcm", "waveform_ecg.dcm"])
def test_real_objects_without_pixels(samples: Path, name: str) -> None:
    with pytest.raises(ImageReadError, match="no pixel data") as err:
        read_image(samples / name)
    assert err.value.where == str(samples / name)


@pytest.mark.shared
def test_real_secondary_capture_refused_when_modality_expected(samples: Path) -> None:
    with pytest.raises(ImageReadError, match="secondary capture"):
        read_image(samples / "NM1_uncompressed.dcm", modality="NM", reject_secondary_capture=True)
    with pytest.raises(ImageReadError, match="modality is CR, expected CT"):
        read_image(samples / "RG1_J2KI.dcm", modality="CT")


@pytest.mark.shared
def test_real_folder_skips_reports(samples: Path, tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "test-SR.dcm", "SOURCE.md"):
        shutil.copy(samples / name, tmp_path / name)
    img = read_image(tmp_path)
    assert img.shape == (1, 128, 128) and img.modality == "CT"
    (tmp_path / "CT_small.dcm").unlink()
    with pytest.raises(ImageReadError, match=r"no DICOM image in folder .*no pixel data \(SR\)"):
        read_image(tmp_path)
