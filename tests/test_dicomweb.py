"""cds.images.dicomweb against a REAL Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``), plus offline unit tests.

The Orthanc tests (marker ``orthanc``) skip when Orthanc is not installed, and fail when ``CI`` is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cds.errors import ImageReadError, ParameterError
from cds.images.dicomweb import DicomWebError, DicomWebSource, _frame_array
from cds.images.read import read_image
from tests import orthanc as orthanc_helper
from tests.orthanc import OrthancStartError, free_port, orthanc_session, running_orthanc

CT_PATIENT = "Lung_Dx-A0001"


@pytest.fixture(scope="session")
def orthanc_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from orthanc_session(tmp_path_factory)


@pytest.fixture(scope="module")
def stored(orthanc_url: str, shared_data: Path) -> dict:
    """STOW the real 64-slice CT series and a real CR (JPEG 2000, MONOCHROME1) once per module."""
    ct_folder = shared_data / "lung-pet-ct-dx" / "Lung_Dx-A0001"
    cr_file = shared_data / "dicom-samples" / "RG1_J2KI.dcm"
    if not ct_folder.is_dir() or not cr_file.is_file():
        pytest.skip("the lung-pet-ct-dx CT series or dicom-samples/RG1_J2KI.dcm is absent")
    ct_files = sorted(ct_folder.rglob("*.dcm"))
    src = DicomWebSource(orthanc_url)
    outcome = src.store([*ct_files, cr_file])
    return {"src": src, "outcome": outcome, "ct_files": ct_files, "ct_folder": ct_folder, "cr_file": cr_file}


# ------------------------------------------------------------------------------------------ Orthanc


@pytest.mark.orthanc
def test_stow_reports_every_instance(stored: dict) -> None:
    outcome = stored["outcome"]
    assert list(outcome.columns) == ["sop_instance_uid", "source", "stored", "reason", "url"]
    assert len(outcome) == 65 and outcome["stored"].all() and outcome["reason"].isna().all()
    first = pydicom.dcmread(stored["ct_files"][0], stop_before_pixels=True)
    row = outcome[outcome["source"] == str(stored["ct_files"][0])].iloc[0]
    assert row["sop_instance_uid"] == first.SOPInstanceUID
    assert row["url"].endswith(f"/instances/{first.SOPInstanceUID}")
    again = stored["src"].store([first.filename])  # storing the same instance again is accepted
    assert again["stored"].tolist() == [True]


@pytest.mark.orthanc
def test_qido_finds_studies_by_patient_and_modality(stored: dict) -> None:
    src: DicomWebSource = stored["src"]
    ct = src.search_studies(patient_id=CT_PATIENT)
    assert len(ct) == 1
    assert ct.loc[0, "modalities"] == "CT" and ct.loc[0, "n_instances"] == 64 and ct.loc[0, "n_series"] == 1
    assert ct.loc[0, "study_date"] == "20070404" and ct.loc[0, "study_description"] == "Chest"
    cr = src.search_studies(modality="CR")
    assert cr["patient_id"].tolist() == ["9RG1"]
    by_keyword = src.search_studies(PatientID="9RG1")
    assert by_keyword["study_uid"].tolist() == cr["study_uid"].tolist()
    none = src.search_studies(patient_id="nobody")
    assert none.empty and "study_uid" in none.columns
    assert len(src.search_studies()) == 2


@pytest.mark.orthanc
def test_qido_series_and_instances(stored: dict) -> None:
    src: DicomWebSource = stored["src"]
    study_uid = src.search_studies(patient_id=CT_PATIENT).loc[0, "study_uid"]
    series = src.search_series(study_uid)
    assert len(series) == 1 and series.loc[0, "modality"] == "CT" and series.loc[0, "n_instances"] == 64
    assert series.loc[0, "url"] == src.series_url(study_uid, series.loc[0, "series_uid"])
    assert src.search_series(Modality="CR")["patient_id"].tolist() == ["9RG1"]
    inst = src.search_instances(study_uid, series.loc[0, "series_uid"])
    assert len(inst) == 64 and inst["instance_number"].tolist() == list(range(1, 65))
    assert set(inst["rows"]) == {512}
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in stored["ct_files"]}
    assert set(inst["sop_instance_uid"]) == uids


@pytest.mark.orthanc
def test_wado_series_equals_files_and_geometry(stored: dict) -> None:
    src: DicomWebSource = stored["src"]
    series = src.search_series(src.search_studies(patient_id=CT_PATIENT).loc[0, "study_uid"])
    url = series.loc[0, "url"]
    from_web = read_image(url, series_uid=series.loc[0, "series_uid"], modality="CT")  # dispatches DICOMweb URLs
    from_files = read_image(stored["ct_folder"])
    assert from_web.source == url
    np.testing.assert_array_equal(from_web.array, from_files.array)
    assert from_web.array.dtype == from_files.array.dtype
    assert from_web.spacing == from_files.spacing and from_web.origin == from_files.origin
    np.testing.assert_array_equal(from_web.direction, from_files.direction)
    assert from_web.meta["sop_instance_uids"] == from_files.meta["sop_instance_uids"]
    # raw datasets: pixel arrays equal the originals
    datasets = src.retrieve_series(series.loc[0, "study_uid"], series.loc[0, "series_uid"])
    originals = {(ds := pydicom.dcmread(f)).SOPInstanceUID: ds for f in stored["ct_files"][:5]}
    for ds in datasets:
        if ds.SOPInstanceUID in originals:
            np.testing.assert_array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)


@pytest.mark.orthanc
def test_wado_cr_jpeg2000_equals_file(stored: dict) -> None:
    src: DicomWebSource = stored["src"]
    row = src.search_series(Modality="CR").iloc[0]
    (ds,) = src.retrieve_series(row["study_uid"], row["series_uid"])
    original = pydicom.dcmread(stored["cr_file"])
    assert (
        ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    )  # stored syntax, no transcoding
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
    web, local = src.read_series(row["study_uid"], row["series_uid"]), read_image(stored["cr_file"])
    np.testing.assert_array_equal(web.array, local.array)
    assert web.meta["inverted"] and web.meta["view_position"] == "PA" and web.shape == (1955, 1841)
    with pytest.raises(ImageReadError, match="modality is CR, expected CT") as err:
        src.read_series(row["study_uid"], row["series_uid"], modality="CT")
    assert row["series_uid"] in str(err.value) and "/instances/" in err.value.where  # names the instance
    with pytest.raises(ImageReadError, match="modality is CR, expected DX") as err:
        read_image(row["url"], series_uid=row["series_uid"], modality="DX")  # a cohort row that says DX
    assert err.value.where.startswith(row["url"])


@pytest.mark.orthanc
def test_wado_frames_are_the_stored_pixels(stored: dict) -> None:
    src: DicomWebSource = stored["src"]
    ds = pydicom.dcmread(stored["ct_files"][10])
    (frame,) = src.retrieve_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1])
    assert frame.shape == (512, 512)
    np.testing.assert_array_equal(frame, ds.pixel_array)


@pytest.mark.orthanc
def test_http_errors_name_url_and_status(orthanc_url: str) -> None:
    src = DicomWebSource(orthanc_url)
    missing = f"{orthanc_url}/studies/1.2.3/series/4.5.6"
    with pytest.raises(DicomWebError) as err:
        read_image(missing)
    assert err.value.status == 404 and err.value.where == missing and "HTTP 404" in str(err.value)
    wrong_root = orthanc_url.replace("/dicom-web", "/no-such-root")
    with pytest.raises(DicomWebError, match="HTTP 404") as err:
        DicomWebSource(wrong_root).search_studies()
    assert err.value.where.startswith(wrong_root)
    no_uids = Dataset()
    no_uids.file_meta = FileMetaDataset()
    no_uids.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    no_uids.PatientID = "x"
    with pytest.raises(DicomWebError, match="HTTP 400") as err:  # Orthanc refuses an instance without UIDs
        src.store([no_uids])
    assert err.value.status == 400 and orthanc_url in err.value.where
    with pytest.raises(DicomWebError, match="HTTP 404"):
        src.retrieve_frames("1.2.3", "4.5.6", "7.8.9")


# ------------------------------------------------------------------------------------------ offline


def test_connection_refused_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError, match="cannot connect") as err:
        DicomWebSource(url, timeout=2).search_studies(patient_id="x")
    assert err.value.status is None and err.value.where == f"{url}/studies"
    assert isinstance(err.value, ImageReadError)


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="url"):
        DicomWebSource("ftp://example/dicom-web")
    src = DicomWebSource(f"http://127.0.0.1:{free_port()}/dicom-web/")
    assert src.url.endswith("/dicom-web") and src.series_url("1", "2").endswith(
        "/dicom-web/studies/1/series/2"
    )
    with pytest.raises(ParameterError, match="frame_numbers"):
        src.retrieve_frames("1", "2", "3", [0])
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(ImageReadError, match="not a DICOM file") as err:
        src.store([tmp_path / "x.dcm"])
    assert err.value.where == str(tmp_path / "x.dcm")


def test_frame_array_layouts() -> None:
    meta = Dataset()
    meta.Rows, meta.Columns, meta.BitsAllocated, meta.PixelRepresentation, meta.SamplesPerPixel = (
        2,
        3,
        16,
        1,
        1,
    )
    values = np.array([[-5, 0, 7], [1000, -1000, 2]], dtype="<i2")
    np.testing.assert_array_equal(_frame_array(meta, values.tobytes(), "u"), values)
    meta.BitsAllocated, meta.PixelRepresentation = 1, 0
    bits = np.array([[1, 0, 1], [1, 1, 0]], dtype=np.uint8)
    packed = np.packbits(bits.ravel(), bitorder="little").tobytes()
    np.testing.assert_array_equal(_frame_array(meta, packed, "u"), bits)
    meta.BitsAllocated, meta.SamplesPerPixel, meta.PlanarConfiguration = 8, 3, 1
    planes = np.arange(18, dtype=np.uint8).reshape(3, 2, 3)
    np.testing.assert_array_equal(_frame_array(meta, planes.tobytes(), "u"), planes.transpose(1, 2, 0))
    meta.BitsAllocated, meta.SamplesPerPixel = 16, 1
    with pytest.raises(DicomWebError, match="expected 12"):
        _frame_array(meta, b"\x00" * 4, "u")


def test_orthanc_start_failure_shows_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if orthanc_helper.dicomweb_plugin() is None:
        pytest.skip("the Orthanc DICOMweb plugin is not installed")
    monkeypatch.setattr(orthanc_helper, "orthanc_binary", lambda: "/bin/false")
    with pytest.raises(OrthancStartError, match="exited with code 1"):
        with running_orthanc(tmp_path, timeout=5, attempts=1):
            pass
