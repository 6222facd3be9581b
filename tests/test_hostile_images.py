"""Hostile image input: every malformed, oversized or dangerous file is an ImageReadError naming it.

Each case of ``CASES`` builds one hostile file in ``tmp_path`` (with pydicom, numpy, Pillow, nibabel:
no binary fixtures are committed) next to a valid DICOM image, and asserts that

- :func:`cds.images.read.read_image` raises exactly :class:`cds.errors.ImageReadError` (not ValueError,
  RecursionError, MemoryError, a hang...), whose ``where`` names the file and whose reason says what is
  wrong, and
- the valid image beside it, in the same folder, still loads.

The pixel budget is checked from headers before decoding: ``test_huge_claims_are_refused_before_decoding``
makes every decoder fail if it is called (no timing involved). FIFOs and devices are refused from
``os.stat`` alone; the module timeout turns a hang into a failure.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pydicom.config
import pytest
from PIL import Image as PILImage
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cds.errors import ImageReadError, ParameterError
from cds.images.dicom import read_dicom_file
from cds.images.limits import DEFAULT_MAX_IMAGE_BYTES, ENV_MAX_IMAGE_BYTES, ENV_MAX_SERIES_BYTES, image_limits
from cds.images.nifti import read_nifti
from cds.images.pictures import read_picture
from cds.images.read import read_image

pytestmark = pytest.mark.timeout(60)  # a FIFO that were opened would block forever: fail instead


@pytest.fixture(autouse=True)
def _write_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let pydicom write the invalid values these tests need (reading keeps its default checks)."""
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    monkeypatch.delenv(ENV_MAX_IMAGE_BYTES, raising=False)
    monkeypatch.delenv(ENV_MAX_SERIES_BYTES, raising=False)


# ------------------------------------------------------------------------------------------ builders


def dicom(rows: int = 8, cols: int = 8, *, bits: int = 16, position: float | None = None,
          series: str | None = None) -> Dataset:  # fmt: skip
    """A valid uncompressed MONOCHROME2 CT image (a slice of a volume when ``position`` is given)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series or "1.2.3.4"
    ds.PatientID, ds.Modality = "SYN-1", "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelSpacing = [0.7, 0.7]
    if position is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, position]
        ds.SliceThickness = 2.5
    dtype = {8: np.uint8, 16: np.uint16}[bits]
    n = rows * cols if rows * cols <= 2**22 else 64  # a huge claim holds only a few bytes
    ds.PixelData = (np.arange(n) % 200).astype(dtype).tobytes()
    return ds


def save(ds: Dataset, path: Path, *, implicit: bool = False) -> Path:
    """Write ``ds`` as a DICOM file with preamble and file meta, whatever its values."""
    ds.preamble = b"\0" * 128
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
    return path


def changed(path: Path, **attrs: Any) -> Callable[[Path], Path]:
    """A case builder: the valid image with ``attrs`` set (``None`` deletes an attribute)."""

    def build(tmp: Path) -> Path:
        ds = dicom()
        for key, value in attrs.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        return save(ds, tmp / path)

    return build


def compressed(name: str, syntax: str, rows: int, cols: int, fragment: bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        ds = dicom(rows, cols, bits=8)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([fragment])
        ds["PixelData"].VR = "OB"
        return save(ds, tmp / name)

    return build


def huge_multiframe(tmp: Path) -> Path:
    ds = dicom(1024, 1024)
    ds.NumberOfFrames = 1000
    ds.PixelData = bytes(1024)
    return save(ds, tmp / "frames.dcm")


def garbled_frames(tmp: Path) -> Path:
    """NumberOfFrames 'abc' in an implicit-VR file: pydicom raises ValueError when the value is accessed."""
    ds = dicom()
    ds.add(DataElement(0x00280008, "LO", "abc"))
    return save(ds, tmp / "frames_abc.dcm", implicit=True)


def garbled_slope(tmp: Path) -> Path:
    ds = dicom()
    del ds.RescaleSlope
    ds.add(DataElement(0x00281053, "LO", "steep"))
    return save(ds, tmp / "slope_word.dcm", implicit=True)


def deep_sequences(tmp: Path) -> Path:
    """Sequences nested 3000 deep (undefined lengths): pydicom's parser recurses past Python's limit."""
    path = save(dicom(), tmp / "deep.dcm")
    sq = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    path.write_bytes(path.read_bytes() + (sq + item) * 3000 + ends * 3000)
    return path


def corrupt_vr(tmp: Path) -> Path:
    """RescaleSlope written with an unknown VR 'Q\\0': pydicom fails when the value is first used."""
    path = save(dicom(), tmp / "vr.dcm")
    data = path.read_bytes()
    tag = struct.pack("<HH", 0x0028, 0x1053) + b"DS"
    assert tag in data
    path.write_bytes(data.replace(tag, struct.pack("<HH", 0x0028, 0x1053) + b"Q\0"))
    return path


def two_transfer_syntaxes(tmp: Path) -> Path:
    path = save(dicom(), tmp / "two_ts.dcm")
    data = path.read_bytes()
    old = ExplicitVRLittleEndian.encode() + b"\0"  # 19 characters padded to 20
    assert old in data
    return path.write_bytes(data.replace(old, b"1.2.3.4\\1.2.3.4.5.6\0")) and path


def palette_broken_lut(tmp: Path) -> Path:
    ds = dicom(bits=8)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 8])
        setattr(ds, f"{colour}PaletteColorLookupTableData", bytes(10))
    return save(ds, tmp / "palette_lut.dcm")


def short_pixels(tmp: Path) -> Path:
    ds = dicom()
    ds.PixelData = ds.PixelData[:50]
    return save(ds, tmp / "short.dcm")


def extra_frames(tmp: Path) -> Path:
    ds = dicom()
    ds.PixelData = ds.PixelData * 3
    return save(ds, tmp / "extra.dcm")


def cut(name: str, keep: int) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = save(dicom(64, 64), tmp / name)
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep > 0 else data[:keep])
        return path

    return build


def no_transfer_syntax(tmp: Path) -> Path:
    path = save(dicom(), tmp / "nots.dcm")
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def png_bytes(width: int, height: int, data: bytes = b"\0" * 100) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit grey) whatever the data hold."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def written(name: str, content: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content() if callable(content) else content)
        return path

    return build


def real_png() -> bytes:
    import io

    buf = io.BytesIO()
    PILImage.fromarray(np.full((16, 16), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def real_jpeg() -> bytes:
    import io

    buf = io.BytesIO()
    PILImage.fromarray(np.full((16, 16), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG start-of-frame header claiming width x height, and no scan."""
    return b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0]) + b"\xff\xd9"


def nifti_bytes(tmp: Path, data: np.ndarray | None = None) -> bytes:
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16) if data is None else data, np.eye(4))
    nib.save(img, tmp / "_scratch.nii")
    raw = (tmp / "_scratch.nii").read_bytes()
    (tmp / "_scratch.nii").unlink()
    return raw


def nifti_patched(name: str, offset: int, fmt: str, *values: Any) -> Callable[[Path], Path]:
    """A valid NIfTI-1 file with header bytes at ``offset`` overwritten."""

    def build(tmp: Path) -> Path:
        raw = bytearray(nifti_bytes(tmp))
        struct.pack_into(fmt, raw, offset, *values)
        (tmp / name).write_bytes(bytes(raw))
        return tmp / name

    return build


def nifti_of(name: str, data: np.ndarray) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_bytes(nifti_bytes(tmp, data))
        return tmp / name

    return build


def nifti_gzip_bomb(tmp: Path) -> Path:
    """A 100 kB .nii.gz whose header claims 2000 x 2000 x 200 voxels (800 MB of zeros)."""
    import gzip

    raw = bytearray(nifti_bytes(tmp, np.zeros((2, 2, 2), np.uint8)))
    struct.pack_into("<8h", raw, 40, 3, 2000, 2000, 200, 1, 1, 1, 1)
    with gzip.open(tmp / "bomb.nii.gz", "wb") as fh:
        fh.write(bytes(raw[:352]))
        fh.write(bytes(10_000_000))
    return tmp / "bomb.nii.gz"


def nifti_truncated(tmp: Path) -> Path:
    (tmp / "cut.nii").write_bytes(nifti_bytes(tmp)[:-100])
    return tmp / "cut.nii"


def fifo(name: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        os.mkfifo(tmp / name)
        return tmp / name

    return build


def link(name: str, target: str | Callable[[Path], Path]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).symlink_to(target(tmp) if callable(target) else target)
        return tmp / name

    return build


def outside_file(tmp: Path) -> Path:
    """A valid DICOM file outside the cohort root (tmp/cohort)."""
    (tmp / "elsewhere").mkdir(exist_ok=True)
    return save(dicom(), tmp / "elsewhere" / "secret.dcm")


def unix_socket(tmp: Path) -> Path:
    path = tmp / "s.dcm"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:  # e.g. a tmp path longer than a socket address allows
        sock.close()
        pytest.skip(f"cannot create a unix socket at {path}: {exc}")
    sock.close()  # the socket file stays
    return path


def folder_of(*builders: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A folder (tmp/series) holding what ``builders`` build in it."""

    def build(tmp: Path) -> Path:
        folder = tmp / "series"
        folder.mkdir()
        for b in builders:
            b(folder)
        return folder

    return build


def slices(n: int, rows: int = 8) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        for k in range(n):
            save(dicom(rows, rows, position=2.5 * k, series="9.9"), folder / f"s{k}.dcm")
        return folder

    return build


def huge_slice(folder: Path) -> Path:
    ds = dicom(20000, 20000, position=2.5 * 3, series="9.9")
    ds.PixelData = bytes(64)
    return save(ds, folder / "s3.dcm")


# ------------------------------------------------------------------------------------------ the corpus


@dataclass
class Case:
    """One hostile input: how to build it, what the error must say, which file it must name."""

    name: str
    build: Callable[[Path], Path]
    reason: str  # a regex the ImageReadError's reason must match
    where: Callable[[Path, Path], str] | None = None  # (tmp, built path) -> the path the error names
    reader: Callable[..., Any] = read_image
    kwargs: Callable[[Path], dict[str, Any]] = field(default=lambda tmp: {})


def _in_series(file: str) -> Callable[[Path, Path], str]:
    return lambda tmp, built: str(built / file)


_ROOTED = lambda tmp: {"root": tmp / "cohort"}  # noqa: E731

CASES = [
    # --- DICOM pixel description (checked before any decoding)
    Case("palette-colour-without-lut", changed("palette.dcm", PhotometricInterpretation="PALETTE COLOR"),
         r"PALETTE COLOR image without its colour lookup table"),
    Case("palette-colour-broken-lut", palette_broken_lut, r"PALETTE COLOR lookup table cannot be applied"),
    Case("rows-zero", changed("rows0.dcm", Rows=0), r"Rows is 0"),
    Case("rows-missing", changed("norows.dcm", Rows=None), r"Rows is missing"),
    Case("columns-zero", changed("cols0.dcm", Columns=0), r"Columns is 0"),
    Case("bits-allocated-12", changed("bits12.dcm", BitsAllocated=12), r"BitsAllocated is 12"),
    Case("bits-allocated-0", changed("bits0.dcm", BitsAllocated=0), r"BitsAllocated is 0"),
    Case("bits-allocated-64-integer", changed("bits64.dcm", BitsAllocated=64), r"BitsAllocated is 64"),
    Case("bits-stored-over-allocated", changed("stored.dcm", BitsStored=40), r"BitsStored is 40"),
    Case("frames-zero", changed("f0.dcm", NumberOfFrames=0), r"NumberOfFrames is 0"),
    Case("frames-negative", changed("fneg.dcm", NumberOfFrames=-4), r"NumberOfFrames is -4"),
    Case("frames-not-a-number", garbled_frames, r"NumberOfFrames is 'abc', not an integer"),
    Case("samples-per-pixel-2", changed("spp2.dcm", SamplesPerPixel=2), r"SamplesPerPixel is 2"),
    Case("samples-per-pixel-missing", changed("spp.dcm", SamplesPerPixel=None), r"SamplesPerPixel is missing"),
    Case("pixel-representation-2", changed("pr2.dcm", PixelRepresentation=2), r"PixelRepresentation must be 0"),
    Case("photometric-unknown", changed("pi.dcm", PhotometricInterpretation="PURPLE"),
         r"PhotometricInterpretation 'PURPLE' is not one of"),
    Case("photometric-missing", changed("nopi.dcm", PhotometricInterpretation=None),
         r"PhotometricInterpretation is missing"),
    Case("rgb-with-one-sample", changed("rgb1.dcm", PhotometricInterpretation="RGB"),
         r"RGB needs SamplesPerPixel 3, but it is 1"),
    Case("monochrome-with-three-samples", changed("mono3.dcm", SamplesPerPixel=3, PlanarConfiguration=0),
         r"MONOCHROME2 needs SamplesPerPixel 1, but it is 3"),
    Case("native-pixel-data-too-short", short_pixels, r"PixelData holds 50 bytes but .* claims 128"),
    Case("native-pixel-data-holds-extra-frames", extra_frames, r"room for 3 frames, but NumberOfFrames says 1"),
    Case("rescale-slope-nan", changed("slope_nan.dcm", RescaleSlope="nan"), r"RescaleSlope nan .* cannot be applied"),
    Case("rescale-slope-1e300", changed("slope_big.dcm", RescaleSlope="1e300"), r"beyond the float range"),
    Case("rescale-slope-a-word", garbled_slope, r"RescaleSlope is 'steep', not a number"),
    Case("orientation-nan", changed("iop.dcm", ImageOrientationPatient=["nan"] * 6, ImagePositionPatient=[0, 0, 0]),
         r"ImageOrientationPatient holds a non-finite value"),
    Case("position-inf", changed("ipp.dcm", ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=["inf", 0, 0]),
         r"ImagePositionPatient holds a non-finite value"),
    # --- the pixel budget (header claims far beyond the bytes in the file)
    Case("huge-claim-jpeg-ls", compressed("huge_jpegls.dcm", JPEGLSLossless, 20000, 20000, b"\xff\xd8" + bytes(2000) + b"\xff\xd9"),
         r"20000x20000 pixels \(8 bits\), 400\.0 MB claimed; the limit is .*\(set CDS_MAX_IMAGE_BYTES"),
    Case("huge-claim-rle", compressed("huge_rle.dcm", RLELossless, 30000, 30000, bytes(64)),
         r"30000x30000 pixels \(8 bits\), 900\.0 MB claimed"),
    Case("huge-claim-native", changed("huge_native.dcm", Rows=20000, Columns=20000, PixelData=bytes(100)),
         r"20000x20000 pixels \(16 bits\), 800\.0 MB claimed"),
    Case("huge-claim-multiframe", huge_multiframe, r"1024x1024 pixels x 1000 frames \(16 bits\), 2\.1 GB claimed"),
    Case("huge-claim-in-a-series-folder", folder_of(slices(3), huge_slice), r"20000x20000 pixels",
         where=_in_series("s3.dcm")),
    Case("series-over-the-series-budget", folder_of(slices(4, rows=64)),
         r"4 images, 32\.8 kB claimed together; the limit is 20\.0 kB per series .*CDS_MAX_SERIES_BYTES",
         kwargs=lambda tmp: {"max_series_bytes": 20_000}),
    Case("over-a-budget-given-as-keyword", changed("kw.dcm"), r"8x8 pixels \(16 bits\), 128 bytes claimed; the limit is 100 bytes",
         kwargs=lambda tmp: {"max_bytes": 100}),
    # --- transfer syntax and encoding
    Case("unknown-transfer-syntax", compressed("ts.dcm", "1.2.3.4.5.6", 8, 8, bytes(64)),
         r"transfer syntax 1\.2\.3\.4\.5\.6 .* not supported"),
    Case("no-transfer-syntax", no_transfer_syntax, r"no TransferSyntaxUID"),
    Case("rle-garbage-fragments", compressed("rle.dcm", RLELossless, 8, 8, bytes(10)), r"pixel data cannot be decoded"),
    Case("deep-sequences", deep_sequences, r"sequences nested too deep"),
    Case("unknown-value-representation", corrupt_vr,
         r"corrupt DICOM element: RescaleSlope \(0028,1053\).*Unknown Value Representation"),
    Case("two-transfer-syntaxes", two_transfer_syntaxes, r"TransferSyntaxUID .* is not one UID"),
    Case("cut-inside-the-header", cut("cut_header.dcm", 300), r"truncated"),
    Case("cut-inside-the-pixels", cut("cut_pixels.dcm", -500), r"truncated or corrupt"),
    # --- content that is not what the name says
    Case("png-named-dcm", written("png.dcm", real_png), r"not a DICOM file \(content is PNG, not DICOM\)"),
    Case("jpeg-named-dcm", written("jpeg.dcm", real_jpeg), r"content is JPEG, not DICOM"),
    Case("pdf-named-dcm", written("report.dcm", b"%PDF-1.4\n" + bytes(300)), r"content is PDF, not DICOM"),
    Case("json-named-dcm", written("bundle.dcm", b'{"resourceType": "Bundle"}' + b" " * 200), r"content is JSON, not DICOM"),
    Case("nifti-named-dcm", lambda tmp: written("vol.dcm", nifti_bytes(tmp))(tmp), r"content is NIfTI-1, not DICOM"),
    Case("text-named-dcm", written("notes.dcm", b"just some words " * 20), r"no 'DICM' marker"),
    Case("no-name-no-dicom", written("blob", bytes(range(256)) * 2), r"not a DICOM file"),
    Case("dicom-named-png", lambda tmp: save(dicom(), tmp / "scan.png"), r"not a readable picture .*content is DICOM"),
    Case("zero-byte-dcm", written("empty.dcm", b""), r"empty file \(0 bytes\)"),
    Case("zero-byte-png", written("empty.png", b""), r"empty file \(0 bytes\)"),
    Case("folder-where-a-file-is-expected", lambda tmp: (tmp / "dir.dcm").mkdir() or tmp / "dir.dcm",
         r"a folder where a file was expected", reader=read_dicom_file),
    # --- pictures
    Case("png-claiming-30000x30000", written("bomb.png", lambda: png_bytes(30000, 30000)),
         r"30000x30000 pixels \(PNG header\), 900\.0 MB claimed"),
    Case("jpeg-claiming-60000x60000", written("bomb.jpg", lambda: jpeg_claiming(60000, 60000)),
         r"claims too many pixels"),
    Case("png-zero-size", written("zero.png", lambda: png_bytes(0, 0)), r"not a readable picture"),
    Case("png-truncated", written("cut.png", lambda: real_png()[:40]), r"not a readable picture"),
    Case("png-over-a-keyword-budget", written("small.png", real_png), r"16x16 pixels \(PNG header\), 256 bytes claimed",
         reader=read_picture, kwargs=lambda tmp: {"limits": image_limits(max_bytes=200)}),
    # --- NIfTI headers
    Case("nifti-negative-dim", nifti_patched("neg.nii", 40, "<8h", 3, 4, -5, 6, 1, 1, 1, 1), r"dimensions \[4, -5, 6\] are not all positive"),
    Case("nifti-zero-dim", nifti_patched("zero.nii", 40, "<8h", 3, 4, 0, 6, 1, 1, 1, 1), r"not all positive"),
    Case("nifti-huge-dims", nifti_patched("huge.nii", 40, "<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1),
         r"30000x30000 pixels x 30000 slices \(int16\), 54\.0 TB claimed"),
    Case("nifti-gzip-bomb", nifti_gzip_bomb, r"2000x2000 pixels x 200 slices \(uint8\), 800\.0 MB claimed"),
    Case("nifti-nan-affine", nifti_patched("nan.nii", 280, "<4f", float("nan"), 0, 0, 0),
         r"affine .* non-finite"),
    Case("nifti-complex", nifti_of("cplx.nii", np.zeros((4, 5, 6), np.complex64)), r"data type complex64 is not supported"),
    Case("nifti-rgb", nifti_of("rgb.nii", np.zeros((4, 5, 6), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
         r"is not supported \(real-valued"),
    Case("nifti-4d", nifti_of("t.nii", np.zeros((2, 2, 2, 3), np.float32)), r"4D NIfTI"),
    Case("nifti-truncated", nifti_truncated, r"truncated NIfTI file: the header claims 592 bytes"),
    Case("nifti-bad-datatype", nifti_patched("dt.nii", 70, "<h", 9999), r"not a readable NIfTI file"),
    Case("nifti-junk-gz", written("junk.nii.gz", b"\x1f\x8b garbage"), r"not a readable NIfTI file"),
    Case("nifti-png-inside", written("pic.nii", real_png), r"not a readable NIfTI file .*content is PNG"),
    Case("nifti-zero-byte", written("empty.nii.gz", b""), r"empty file"),
    # --- files that must never be opened, and paths out of the cohort root
    Case("fifo-named-dcm", fifo("pipe.dcm"), r"a named pipe \(FIFO\), not a regular file; refused without opening it"),
    Case("fifo-named-nii", fifo("pipe.nii"), r"a named pipe \(FIFO\)"),
    Case("fifo-named-png", fifo("pipe.png"), r"a named pipe \(FIFO\)"),
    Case("fifo-without-suffix", fifo("pipe"), r"a named pipe \(FIFO\)"),
    Case("symlink-to-dev-zero", link("zero.dcm", "/dev/zero"), r"a character device \(a link to /dev/zero\)"),
    Case("symlink-to-a-fifo", link("via.dcm", fifo("hidden_pipe")), r"a named pipe \(FIFO\) \(a link to"),
    Case("unix-socket", unix_socket, r"a socket, not a regular file"),
    Case("dangling-symlink", link("gone.dcm", "/nonexistent/scan.dcm"), r"a link to a missing file"),
    Case("symlink-out-of-the-cohort-root",
         lambda tmp: (tmp / "cohort").mkdir() or link("cohort/x.dcm", outside_file)(tmp),
         r"outside the cohort root .* resolves to .*elsewhere/secret\.dcm.*links out of the root are not followed",
         kwargs=_ROOTED),
    Case("dotdot-out-of-the-cohort-root",
         lambda tmp: (tmp / "cohort").mkdir() or outside_file(tmp) and tmp / "cohort" / ".." / "elsewhere" / "secret.dcm",
         r"outside the cohort root", kwargs=_ROOTED),
    Case("folder-link-out-of-the-cohort-root",
         lambda tmp: (tmp / "cohort" / "series").mkdir(parents=True) or
         (link("s0.dcm", lambda _: outside_file(tmp))(tmp / "cohort" / "series").parent),
         r"outside the cohort root", where=lambda tmp, built: str(built / "s0.dcm"), kwargs=_ROOTED),
    Case("folder-of-only-fifos-and-devices", folder_of(fifo("a.dcm"), link("b.dcm", "/dev/zero")),
         r"no DICOM image in folder \(2 files: 1 not a regular file \(a named pipe \(FIFO\); not opened\) \(e\.g\. a\.dcm\), "
         r"1 not a regular file \(a character device; not opened\)"),
]


def test_the_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_image_is_a_named_error_and_its_neighbour_loads(case: Case, tmp_path: Path) -> None:
    good = save(dicom(), tmp_path / "good.dcm")
    built = case.build(tmp_path)
    with pytest.raises(ImageReadError) as err:
        case.reader(built, **case.kwargs(tmp_path))
    assert type(err.value) is ImageReadError, f"{type(err.value).__name__}: {err.value}"
    expected_where = case.where(tmp_path, built) if case.where else str(built)
    assert err.value.where == expected_where
    assert str(err.value).startswith(f"{expected_where}: ")
    assert re.search(case.reason, err.value.reason), err.value.reason
    image = read_image(good)  # the valid image in the same folder still loads
    assert image.shape == (8, 8) and image.source == str(good)


# ------------------------------------------------------------------------------------------ budget details


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every pixel decoder fail loudly; returns the list of decoders that were called."""
    called: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            called.append(name)
            raise AssertionError(f"{name} was called: pixels decoded before the budget check")

        return fail

    monkeypatch.setattr(Dataset, "pixel_array", property(refuse("Dataset.pixel_array")))
    monkeypatch.setattr(Dataset, "convert_pixel_data", refuse("Dataset.convert_pixel_data"))
    monkeypatch.setattr("pydicom.pixels.utils.pixel_array", refuse("pydicom.pixels.pixel_array"))
    monkeypatch.setattr("cds.images.dicom_image._decode", refuse("cds decode"))
    monkeypatch.setattr(PILImage.Image, "load", refuse("PIL load"))
    monkeypatch.setattr(PILImage.Image, "convert", refuse("PIL convert"))
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse("nibabel read"))
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", refuse("nibabel read"))
    return called


@pytest.mark.parametrize(
    "name", ["huge-claim-jpeg-ls", "huge-claim-rle", "huge-claim-native", "huge-claim-multiframe",
             "huge-claim-in-a-series-folder", "png-claiming-30000x30000", "nifti-huge-dims", "nifti-gzip-bomb"],
)  # fmt: skip
def test_huge_claims_are_refused_before_decoding(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = next(c for c in CASES if c.name == name)
    built = case.build(tmp_path)
    called = _no_decoding(monkeypatch)
    with pytest.raises(ImageReadError, match="claimed"):
        read_image(built)
    assert called == []


def test_the_decoder_guard_would_notice_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard above is not vacuous: reading a valid image with it in place fails in a decoder."""
    good = save(dicom(), tmp_path / "good.dcm")
    called = _no_decoding(monkeypatch)
    with pytest.raises(ImageReadError):  # the last-resort handler names the file
        read_image(good)
    assert called


def test_budget_from_environment_and_keyword(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = save(dicom(1200, 1200), tmp_path / "big.dcm")  # 2.9 MB of 16-bit pixels
    assert read_image(big).shape == (1200, 1200)  # within the default budget
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "1MB")
    with pytest.raises(ImageReadError, match=r"1200x1200 pixels \(16 bits\), 2\.9 MB claimed; the limit is 1\.0 MB") as err:
        read_image(big)
    assert err.value.where == str(big) and ENV_MAX_IMAGE_BYTES in err.value.reason
    assert read_image(big, max_bytes=3e6).shape == (1200, 1200)  # the keyword wins over the environment
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "lots")
    with pytest.raises(ParameterError, match=ENV_MAX_IMAGE_BYTES):
        read_image(big)
    monkeypatch.delenv(ENV_MAX_IMAGE_BYTES)
    with pytest.raises(ParameterError, match="max_bytes"):
        read_image(big, max_bytes=-1)
    assert image_limits().max_bytes == DEFAULT_MAX_IMAGE_BYTES


def test_file_larger_than_the_budget_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(dicom(), tmp_path / "padded.dcm")
    with open(path, "ab") as fh:
        fh.truncate(path.stat().st_size + 40 * 2**20)  # a sparse 40 MB tail
    monkeypatch.setattr("pydicom.dcmread", lambda *a, **k: pytest.fail("the oversized file was parsed"))
    with pytest.raises(ImageReadError, match=r"the file is 41\.\d MB, more than the 1\.0 kB per-image limit"):
        read_image(path, max_bytes=1000)


# ------------------------------------------------------------------------------------------ what still loads


def test_valid_inputs_still_load_under_a_root(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    (root / "series").mkdir(parents=True)
    slices(3)(root / "series")
    save(dicom(), root / "one.dcm")
    (root / "alias.dcm").symlink_to(root / "one.dcm")  # a link inside the root is followed
    os.mkfifo(root / "series" / "pipe")  # skipped unopened beside a valid series
    (root / "series" / "empty").write_bytes(b"")
    PILImage.fromarray(np.full((5, 6), 3, np.uint8)).save(root / "pic", format="PNG")  # a PNG without a suffix: by content
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.int16), np.eye(4)), root / "vol.nii.gz")
    assert read_image(root / "series", root=root).shape == (3, 8, 8)
    assert read_image(root / "one.dcm", root=root).shape == (8, 8)
    assert read_image(root / "alias.dcm", root=root).shape == (8, 8)
    assert read_image(root / "pic", root=root).shape == (5, 6)
    assert read_image(root / "vol.nii.gz", root=root).shape == (5, 4, 3)
    assert read_nifti(root / "vol.nii.gz").shape == (5, 4, 3)


def test_odd_sized_native_pixel_data_with_one_padding_byte_loads(tmp_path: Path) -> None:
    ds = dicom(3, 3, bits=8)
    path = save(ds, tmp_path / "odd.dcm")  # 9 bytes stored as 10 (even length)
    assert len(pydicom.dcmread(path).PixelData) == 10
    assert read_image(path).shape == (3, 3)


# ------------------------------------------------------------------------------------------ DICOMweb frames, viewers


@pytest.mark.parametrize(
    ("attrs", "payload", "reason"),
    [
        ({"Rows": 0, "Columns": 4, "BitsAllocated": 8}, bytes(16), r"no usable frame: Rows 0"),
        ({"Rows": 4, "Columns": 4, "BitsAllocated": 12}, bytes(32), r"BitsAllocated 12"),
        ({"Rows": 4, "Columns": 4, "BitsAllocated": 1}, bytes(1), r"frame has 1 bytes, expected 2"),
        ({"Rows": 40000, "Columns": 40000, "BitsAllocated": 16}, bytes(64), r"frame has 64 bytes, expected 3200000000"),
        ({"Rows": 4, "BitsAllocated": 8}, bytes(16), r"lacks the pixel description"),
    ],
    ids=["rows-zero", "bits-12", "bits-1-short", "huge-claim", "no-columns"],
)
def test_dicomweb_frame_with_a_hostile_description_is_named(attrs: dict, payload: bytes, reason: str) -> None:
    from cds.images.dicomweb import DicomWebError, _frame_array

    meta = Dataset()
    for key, value in attrs.items():
        setattr(meta, key, value)
    where = "http://127.0.0.1:1/dicom-web/studies/1/series/2/instances/3/frames/1"
    with pytest.raises(DicomWebError, match=reason) as err:
        _frame_array(meta, payload, where)
    assert err.value.where == where
    good = Dataset()
    good.Rows, good.Columns, good.BitsAllocated = 2, 2, 8
    assert _frame_array(good, bytes([1, 2, 3, 4]), where).tolist() == [[1, 2], [3, 4]]


def test_viewer_windows_ignore_a_corrupt_dicom_window() -> None:
    from cds.errors import ParameterError as WindowError
    from cds.images.image import Image
    from cds.images.render import apply_window, default_preset, window_presets

    arr = np.arange(16, dtype=np.int16).reshape(4, 4)
    img = Image(arr, (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "CR", {"window_center": float("nan"), "window_width": 0.0})
    presets = window_presets(img)
    assert "dicom" not in presets and all(np.isfinite(presets["cxr"]))
    assert default_preset(Image(arr, (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "OT", dict(img.meta))) == "auto"
    with pytest.raises(WindowError, match="finite"):
        apply_window(arr, float("nan"), 10.0)


def test_cine_readers_refuse_a_fifo_and_a_huge_claim_before_reading(tmp_path: Path) -> None:
    """cmr-function's cine reader (its own NIfTI / DICOM-folder paths) is under the same rules."""
    import os

    import nibabel as nib

    from cds.models.cine import read_cine

    fifo = tmp_path / "cine.nii"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="cine.nii"):
        read_cine(fifo)
    huge = tmp_path / "huge.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 64, 64))
    hdr.set_data_dtype(np.int16)
    with open(huge, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
    with pytest.raises(ImageReadError, match="claimed together; the limit is"):
        read_cine(huge)
