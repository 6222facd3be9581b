"""Read images from where hospitals keep them: DICOM files, DICOM series folders, DICOMweb, NIfTI, PNG/JPEG.

Everything becomes one :class:`Image`: a numpy array plus the geometry that places every voxel in the
patient (LPS millimetres, the DICOM patient coordinate system), so that models can report Findings
in patient coordinates.

Conventions
-----------
- ``array`` is 2D ``(rows, cols)`` for projection images (CR, DX, MG, US, secondary captures, PNG) and
  3D ``(slices, rows, cols)`` for cross-sectional data: a series folder, a multi-frame object, a NIfTI
  volume, and also a single CT/MR slice that has ImagePositionPatient/ImageOrientationPatient (it is a
  one-slice volume, so its geometry stays exact).
- ``spacing[a]`` is the voxel size in mm along array axis ``a``; ``direction[:, a]`` is the LPS unit vector
  along array axis ``a``; ``origin`` is the LPS position of the centre of voxel ``(0, 0[, 0])``. So
  ``lps = origin + direction[:, :ndim] @ (spacing * index)``: see :func:`index_to_lps`.
- Slices of a series are sorted along the slice normal (row cosine x column cosine), ascending, so for
  an axial HFS CT slice 0 is the most inferior one.
- Values: DICOM rescale slope/intercept are applied (CT in HU); MONOCHROME1 is inverted so that high
  values are bright; colour images are converted to grayscale (ITU-R 601 luma) and flagged in ``meta``.

>>> import numpy as np
>>> img = Image(np.zeros((2, 3, 4), np.int16), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0), np.eye(3), "CT", {}, "demo")
>>> index_to_lps(img, (1, 2, 2)).tolist()
[-5.0, -19.0, 31.0]
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from cds.errors import ImageReadError, ParameterError

__all__ = [
    "Image",
    "read_image",
    "read_dicom_file",
    "read_dicom_folder",
    "image_from_datasets",
    "read_nifti",
    "read_picture",
    "write_nifti",
    "index_to_lps",
    "lps_to_index",
]

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and .7.1 - .7.4 (multi-frame SC)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DICOMWEB_SERIES = re.compile(
    r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$"
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(eq=False)
class Image:
    """Pixels plus patient geometry. See the module docstring for the conventions.

    Attributes
    ----------
    array : numpy.ndarray
        ``(rows, cols)`` or ``(slices, rows, cols)``.
    spacing : tuple of float
        mm per array axis.
    origin : tuple of float
        LPS mm of the centre of the first voxel.
    direction : numpy.ndarray
        3x3; column ``a`` is the LPS unit vector along array axis ``a`` (for 2D, column 2 is the normal).
    modality : str or None
        DICOM Modality (``"CT"``, ``"CR"``...); None for formats that do not record it (NIfTI, PNG).
    meta : dict
        ``patient_id``, ``study_uid``, ``series_uid``, ``sop_instance_uid(s)``,
        ``photometric_interpretation``, ``window_center``, ``window_width``, ``view_position``,
        ``body_part``, ``spacing_known`` (False when spacing was not recorded and 1.0 was used),
        ``patient_frame`` (False when origin/direction are placeholders), ...
    source : str
        The file, folder or URL read.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def ndim(self) -> int:
        return int(self.array.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return (
            f"Image(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}), modality={self.modality!r}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------- dispatch


def read_image(
    path_or_folder: str | Path,
    expect_modality: str | None = None,
    series_uid: str | None = None,
) -> Image:
    """Read a DICOM file or series folder, a DICOMweb series URL, a NIfTI file or a PNG/JPEG picture.

    Parameters
    ----------
    path_or_folder
        A file, a folder holding DICOM files (searched recursively), or a DICOMweb URL
        ``http(s)://host/dicom-web/studies/<uid>/series/<uid>``.
    expect_modality
        E.g. ``"CT"``: raise :class:`~cds.errors.ImageReadError` when a DICOM object has another modality
        or is a secondary capture. Formats without a modality (NIfTI, PNG) are not checked. In a folder
        with several series, only series of this modality are candidates.
    series_uid
        In a folder with several series, read this one instead of the largest.

    Returns
    -------
    Image

    Raises
    ------
    cds.errors.ImageReadError
        Naming the file and the reason: missing, truncated, not DICOM, no pixel data, no codec for the
        transfer syntax, wrong modality, empty folder, inconsistent slice spacing, HTTP errors.
    """
    text = str(path_or_folder)
    match = _DICOMWEB_SERIES.match(text)
    if match:
        from cds.images.dicomweb import DicomWebSource

        return DicomWebSource(match["base"]).read_series(
            match["study"], match["series"], expect_modality=expect_modality
        )
    if re.match(r"^https?://", text):
        raise ImageReadError(
            text, "a DICOMweb URL must name a series: http(s)://host/.../studies/<uid>/series/<uid>"
        )
    path = Path(path_or_folder)
    if path.is_dir():
        return read_dicom_folder(path, expect_modality=expect_modality, series_uid=series_uid)
    if not path.exists():
        raise ImageReadError(text, "no such file or folder")
    name = path.name.lower()
    if name.endswith(_NIFTI_SUFFIXES):
        return read_nifti(path)
    head = _head(path, 132)
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or name.endswith(_PICTURE_SUFFIXES):
        return read_picture(path)
    return read_dicom_file(path, expect_modality=expect_modality)


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot open ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path, headers_only: bool = False) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        raise ImageReadError(str(path), "not a DICOM file (no 'DICM' marker at byte 128)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageReadError(
            str(path), f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})"
        ) from None
    problem = _truncation(ds)
    if problem:
        raise ImageReadError(str(path), f"truncated or corrupt DICOM file ({problem})")
    return ds


def _truncation(ds: Dataset) -> str | None:
    """pydicom reads a cut-off file silently; spot the two signs: a short last value, a missing SOP class."""
    tags = sorted(ds.keys())
    if tags:
        last = ds.get_item(tags[-1])
        length = getattr(last, "length", None)
        value = getattr(last, "value", None)
        if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
            return f"the file ends inside element {tags[-1]}: {len(value)} of {length} bytes"
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and meta is not None and meta.get("MediaStorageSOPClassUID"):
        return "the data set ends before its SOP Class UID"
    return None


def read_dicom_file(path: str | Path, expect_modality: str | None = None) -> Image:
    """Read one DICOM file (single- or multi-frame).

    >>> from pathlib import Path
    >>> f = Path("/work/shared/data/dicom-samples/CT_small.dcm")
    >>> read_dicom_file(f).shape if f.exists() else (1, 128, 128)
    (1, 128, 128)
    """
    path = Path(path)
    ds = _dcmread(path)
    _check_modality(ds, expect_modality, str(path))
    return image_from_datasets([ds], source=str(path), sources=[str(path)])


def _check_modality(ds: Dataset, expect: str | None, where: str) -> None:
    if not expect:
        return
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if sop_class.startswith(_SECONDARY_CAPTURE):
        raise ImageReadError(
            where,
            f"secondary capture ({UID(sop_class).name}, modality {modality or 'unset'}), "
            f"not an original {expect} acquisition",
        )
    if modality.upper() != expect.upper():
        raise ImageReadError(where, f"modality is {modality or 'unset'}, expected {expect}")


def _check_pixels(ds: Dataset, where: str) -> None:
    """Raise a clear ImageReadError when ``ds`` has no pixels or none of the installed codecs decodes them."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        what = UID(str(sop)).name if sop else "unknown SOP class"
        raise ImageReadError(
            where, f"no pixel data ({what}, modality {ds.get('Modality', 'unset')}): not an image object"
        )
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or "PixelData" not in ds:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageReadError(
            where, f"transfer syntax {ts} ({ts.name}) is not supported by pydicom's pixel decoders"
        ) from None
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a plugin for it"
        raise ImageReadError(
            where,
            f"pixel data are compressed as {ts.name} (transfer syntax {ts}) and no installed package "
            f"decodes it; install one of: {options}",
        )


def _decode(ds: Dataset, where: str) -> np.ndarray:
    """Stored pixel values, colour converted to grayscale; (rows, cols) or (frames, rows, cols)."""
    _check_pixels(ds, where)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(
            where, f"pixel data cannot be decoded (truncated or corrupt?): {reason}"
        ) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        descriptor = _floats(ds.get("RedPaletteColorLookupTableDescriptor"))
        if descriptor and len(descriptor) == 3 and int(descriptor[2]) == 16:
            arr = arr / 257.0  # 16-bit LUT entries -> 0..255 like 8-bit colour images
    if int(ds.get("SamplesPerPixel", 1)) > 1 or photometric == "PALETTE COLOR":
        arr = _luma(arr)
    return arr


def _luma(rgb: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (rgb[..., :3].astype(np.float32) @ weights).astype(np.float32)


def _floats(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    seq = value if isinstance(value, list | tuple | MultiValue) else [value]
    try:
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def _first_float(value: Any) -> float | None:
    vals = _floats(value)
    return vals[0] if vals else None


def _item(ds: Dataset, group: str, keyword: str) -> Any:
    """``keyword`` from a functional-group item ``ds.<group>[0]`` or None."""
    seq = ds.get(group)
    if not seq:
        return None
    return seq[0].get(keyword)


def _frame_attr(ds: Dataset, frame: Dataset | None, group: str, keyword: str) -> Any:
    """Look up ``keyword`` in a per-frame functional group, then the shared group, then the top level."""
    if frame is not None:
        value = _item(frame, group, keyword)
        if value is not None:
            return value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        value = _item(shared[0], group, keyword)
        if value is not None:
            return value
    return ds.get(keyword)


def _rescale(raw: np.ndarray, ds: Dataset, frame: Dataset | None = None) -> tuple[np.ndarray, float, float]:
    """Apply MONOCHROME1 inversion (on the stored range) and rescale slope/intercept to one frame/slice."""
    slope = _first_float(_frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_float(_frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    arr = raw
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" and arr.dtype.kind in "iu":
        lo, hi = _stored_range(ds)
        arr = (lo + hi) - arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)), slope, intercept
    if slope.is_integer() and intercept.is_integer():
        out = arr.astype(np.int64) * int(slope) + int(intercept)
        return _smallest_int(out), slope, intercept
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)), slope, intercept


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _smallest_int(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        return arr.astype(np.int16)
    lo, hi = int(arr.min()), int(arr.max())
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype)
    return arr


def _pixel_spacing(ds: Dataset, frame: Dataset | None = None) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm, or None when absent or zero."""
    for value in (
        _frame_attr(ds, frame, "PixelMeasuresSequence", "PixelSpacing"),
        ds.get("ImagerPixelSpacing"),
        ds.get("NominalScannedPixelSpacing"),
    ):
        vals = _floats(value)
        if vals and len(vals) >= 2 and vals[0] > 0 and vals[1] > 0:
            return vals[0], vals[1]
    return None


def _slice_gap(ds: Dataset, frame: Dataset | None = None) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _first_float(_frame_attr(ds, frame, "PixelMeasuresSequence", keyword))
        if value and value > 0:
            return value
    return None


def _orientation(ds: Dataset, frame: Dataset | None = None) -> np.ndarray | None:
    vals = _floats(_frame_attr(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"))
    if not vals or len(vals) != 6:
        return None
    iop = np.asarray(vals, dtype=np.float64)
    if np.linalg.norm(iop[:3]) < 1e-6 or np.linalg.norm(iop[3:]) < 1e-6:
        return None
    return iop


def _position(ds: Dataset, frame: Dataset | None = None) -> np.ndarray | None:
    vals = _floats(_frame_attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient"))
    if not vals or len(vals) != 3:
        return None
    return np.asarray(vals, dtype=np.float64)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _window(ds: Dataset, frame: Dataset | None) -> tuple[float | None, float | None]:
    centre = _first_float(_frame_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first_float(_frame_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    return centre, width


def _meta(ds: Dataset, frame: Dataset | None = None) -> dict[str, Any]:
    meta_ts = getattr(ds, "file_meta", None)
    ts = meta_ts.get("TransferSyntaxUID") if meta_ts is not None else None
    centre, width = _window(ds, frame)
    return {
        "patient_id": _text(ds.get("PatientID")),
        "study_uid": _text(ds.get("StudyInstanceUID")),
        "series_uid": _text(ds.get("SeriesInstanceUID")),
        "sop_instance_uid": _text(ds.get("SOPInstanceUID")),
        "sop_class_uid": _text(ds.get("SOPClassUID")),
        "frame_of_reference_uid": _text(ds.get("FrameOfReferenceUID")),
        "transfer_syntax": _text(ts),
        "photometric_interpretation": _text(ds.get("PhotometricInterpretation")),
        "window_center": centre,
        "window_width": width,
        "view_position": _text(ds.get("ViewPosition")),
        "body_part": _text(ds.get("BodyPartExamined")),
        "laterality": _text(ds.get("ImageLaterality") or ds.get("Laterality")),
        "patient_position": _text(ds.get("PatientPosition")),
        "study_date": _text(ds.get("StudyDate")),
        "series_description": _text(ds.get("SeriesDescription")),
        "series_number": _text(ds.get("SeriesNumber")),
        "manufacturer": _text(ds.get("Manufacturer")),
        "patient_sex": _text(ds.get("PatientSex")),
        "patient_age": _text(ds.get("PatientAge")),
    }


def _finish_meta(meta: dict[str, Any], ds: Dataset, slope: float, intercept: float) -> dict[str, Any]:
    meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept
    meta["inverted"] = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if meta["inverted"] and meta.get("window_center") is not None:
        # window centre is in rescaled units; mirror it like the values: y' = s*(lo+hi) + 2b - y
        lo, hi = _stored_range(ds)
        meta["window_center"] = slope * (lo + hi) + 2 * intercept - meta["window_center"]
    if int(ds.get("SamplesPerPixel", 1)) > 1 or meta.get("photometric_interpretation") == "PALETTE COLOR":
        meta["color_converted"] = f"{meta.get('photometric_interpretation')} -> grayscale (ITU-R 601 luma)"
    return meta


def _stack_geometry(
    positions: np.ndarray, iop: np.ndarray, where: str, gap: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Sort slices along the normal and derive (order, origin, direction, slice spacing).

    Raises ImageReadError when two slices share a position or the gaps between slices differ.
    """
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    n = len(order)
    if n == 1:
        axis0, step = normal, (gap or 1.0)
    else:
        steps = np.diff(along[order])
        if np.any(steps < 1e-3):
            dup = int(np.sum(steps < 1e-3))
            raise ImageReadError(
                where,
                f"{dup + 1} slices share a position along the slice normal (several acquisitions, "
                "phases or echoes in one series?); cannot stack them into one volume",
            )
        median = float(np.median(steps))
        worst = int(np.argmax(np.abs(steps - median)))
        if abs(steps[worst] - median) > 0.01 * median + 1e-3:
            a, b = along[order][worst], along[order][worst + 1]
            raise ImageReadError(
                where,
                f"inconsistent slice spacing: gaps range {steps.min():.3f}-{steps.max():.3f} mm (median "
                f"{median:.3f}); e.g. {steps[worst]:.3f} mm between slices at {a:.2f} and {b:.2f} mm along "
                "the normal (missing or extra slice?)",
            )
        span = positions[order[-1]] - positions[order[0]]
        step = float(np.linalg.norm(span)) / (n - 1)
        axis0 = span / np.linalg.norm(span)  # exact even with gantry tilt
    direction = np.column_stack([axis0, col, row])
    return order, positions[order[0]], direction, float(step)


def image_from_datasets(datasets: list[Dataset], source: str, sources: list[str] | None = None) -> Image:
    """Build an :class:`Image` from decoded pydicom datasets of ONE series (files or WADO-RS).

    One dataset: single- or multi-frame. Several: single-frame slices that are sorted along the
    normal and checked for consistent spacing. ``sources`` names each dataset in error messages.
    """
    if not datasets:
        raise ImageReadError(source, "no DICOM instances")
    sources = sources or [f"{source} (instance {i + 1})" for i in range(len(datasets))]
    if len(datasets) == 1:
        return _single(datasets[0], source, sources[0])
    return _series(datasets, source, sources)


def _single(ds: Dataset, source: str, where: str) -> Image:
    raw = _decode(ds, where)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    meta = _meta(ds, per_frame[0] if per_frame else None)
    modality = _text(ds.get("Modality"))
    if frames > 1 or raw.ndim == 3:
        if raw.ndim == 2:
            raw = raw[None]
        items: list[Dataset | None] = (
            list(per_frame) if per_frame and len(per_frame) == raw.shape[0] else [None] * raw.shape[0]
        )
        values, slopes = [], []
        for k in range(raw.shape[0]):
            v, s, b = _rescale(raw[k], ds, items[k])
            values.append(v)
            slopes.append((s, b))
        arr = _stack_values(values)
        meta = _finish_meta(meta, ds, *slopes[0])
        positions = [_position(ds, it) for it in items] if per_frame else []
        iop = _orientation(ds, items[0])
        spacing2 = _pixel_spacing(ds, items[0])
        meta["frames"] = raw.shape[0]
        if positions and all(p is not None for p in positions) and iop is not None:
            try:
                order, origin, direction, step = _stack_geometry(
                    np.vstack(positions), iop, where, _slice_gap(ds, items[0])
                )
            except ImageReadError:
                order = None  # frames share positions (cine, multi-echo, multi-segment): keep frame order
            if order is not None:
                meta.update(
                    patient_frame=True,
                    spacing_known=spacing2 is not None,
                    axis0="space",
                    frame_order=[int(i) + 1 for i in order],
                )
                sp = spacing2 or (1.0, 1.0)
                return Image(
                    arr[order],
                    (step, *sp),
                    tuple(float(x) for x in origin),
                    direction,
                    modality,
                    meta,
                    source,
                )
        meta.update(
            patient_frame=False,
            spacing_known=spacing2 is not None,
            axis0="frame",
            frame_order=list(range(1, raw.shape[0] + 1)),
        )
        sp = spacing2 or (1.0, 1.0)
        gap = _slice_gap(ds, items[0]) or 1.0
        origin = _position(ds, items[0])
        if iop is not None:
            direction = np.column_stack([np.cross(iop[:3], iop[3:]), iop[3:], iop[:3]])
        else:
            direction = np.eye(3)
        return Image(
            arr,
            (gap, *sp),
            tuple(float(x) for x in (origin if origin is not None else (0, 0, 0))),
            direction,
            modality,
            meta,
            source,
        )
    arr, slope, intercept = _rescale(raw, ds)
    meta = _finish_meta(meta, ds, slope, intercept)
    spacing2 = _pixel_spacing(ds)
    meta["spacing_known"] = spacing2 is not None
    sp = spacing2 or (1.0, 1.0)
    iop, ipp = _orientation(ds), _position(ds)
    if iop is not None and ipp is not None:  # a slice of a volume: keep it 3D so its geometry is exact
        _, origin, direction, step = _stack_geometry(ipp[None], iop, where, _slice_gap(ds))
        meta.update(patient_frame=True, axis0="space", sop_instance_uids=[meta["sop_instance_uid"]])
        return Image(
            arr[None], (step, *sp), tuple(float(x) for x in origin), direction, modality, meta, source
        )
    meta["patient_frame"] = False
    return Image(arr, sp, (0.0, 0.0, 0.0), np.eye(3), modality, meta, source)


def _stack_values(values: list[np.ndarray]) -> np.ndarray:
    arr = np.stack(values)
    return _smallest_int(arr) if arr.dtype.kind in "iu" else arr.astype(np.float32, copy=False)


def _series(datasets: list[Dataset], source: str, sources: list[str]) -> Image:
    first = datasets[0]
    n = len(datasets)
    for ds, where in zip(datasets, sources, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ImageReadError(
                where, "a multi-frame instance inside a multi-instance series; read the files one by one"
            )
    iops = [_orientation(ds) for ds in datasets]
    ipps = [_position(ds) for ds in datasets]
    missing = [w for w, a, b in zip(sources, iops, ipps, strict=True) if a is None or b is None]
    if missing:
        raise ImageReadError(
            source,
            f"{len(missing)} of {n} images have no ImagePositionPatient/ImageOrientationPatient (projection "
            f"images?), so they cannot be stacked into a volume; read them one by one (first: {missing[0]})",
        )
    for ds, iop, where in zip(datasets, iops, sources, strict=True):
        if not np.allclose(iop, iops[0], atol=1e-4):
            raise ImageReadError(
                where,
                f"ImageOrientationPatient {iop.tolist()} differs from the first slice's {iops[0].tolist()}",
            )
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise ImageReadError(
                where,
                f"size {ds.get('Rows')}x{ds.get('Columns')} differs from {first.get('Rows')}x{first.get('Columns')}",
            )
        a, b = _pixel_spacing(ds), _pixel_spacing(first)
        if (a is None) != (b is None) or (a and b and not np.allclose(a, b, rtol=1e-4)):
            raise ImageReadError(where, f"pixel spacing {a} differs from the first slice's {b}")
    order, origin, direction, step = _stack_geometry(np.vstack(ipps), iops[0], source, _slice_gap(first))
    values, rescales = [], []
    for i in order:
        v, s, b = _rescale(_decode(datasets[i], sources[i]), datasets[i])
        values.append(v)
        rescales.append((s, b))
    arr = _stack_values(values)
    lead = datasets[order[0]]
    meta = _finish_meta(_meta(lead), lead, *rescales[0])
    spacing2 = _pixel_spacing(first)
    meta.update(
        patient_frame=True,
        axis0="space",
        spacing_known=spacing2 is not None,
        sop_instance_uids=[_text(datasets[i].get("SOPInstanceUID")) for i in order],
        files=[sources[i] for i in order],
        rescale_varies=len(set(rescales)) > 1,
    )
    sp = spacing2 or (1.0, 1.0)
    return Image(
        arr,
        (step, *sp),
        tuple(float(x) for x in origin),
        direction,
        _text(first.get("Modality")),
        meta,
        source,
    )


def read_dicom_folder(
    folder: str | Path, expect_modality: str | None = None, series_uid: str | None = None
) -> Image:
    """Read one DICOM series from a folder (searched recursively).

    The largest series is read unless ``series_uid`` names another; with ``expect_modality`` only series
    of that modality (and not secondary captures) are candidates. Files that are not DICOM and DICOM
    objects without pixel data (SR, ECG) are skipped; ``meta["series_in_folder"]`` lists what was found.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ImageReadError(str(folder), "empty folder (no files)")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: Counter[str] = Counter()
    for p in files:
        if p.name.upper() == "DICOMDIR":
            skipped["DICOMDIR"] += 1
            continue
        try:
            ds = _dcmread(p, headers_only=True)
        except ImageReadError as exc:
            if exc.reason.startswith("not a DICOM file"):
                skipped["not DICOM"] += 1
                continue
            raise
        if "Rows" not in ds:
            skipped[f"no pixel data ({ds.get('Modality', '?')})"] += 1
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((p, ds))
    found = {uid: (len(items), str(items[0][1].get("Modality", ""))) for uid, items in series.items()}
    if not series:
        what = ", ".join(f"{n} {k}" for k, n in skipped.items())
        raise ImageReadError(str(folder), f"no DICOM image in folder ({len(files)} files: {what})")
    if series_uid is not None:
        if series_uid not in series:
            raise ImageReadError(str(folder), f"series {series_uid} not in folder; series found: {found}")
        chosen = series_uid
    else:
        candidates = list(series)
        if expect_modality:
            candidates = [
                uid
                for uid in series
                if found[uid][1].upper() == expect_modality.upper()
                and not str(series[uid][0][1].get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE)
            ]
            if not candidates:
                only = series[max(series, key=lambda u: found[u][0])]
                _check_modality(only[0][1], expect_modality, str(only[0][0]))
        chosen = max(candidates, key=lambda u: (found[u][0], u))
    items = series[chosen]
    _check_modality(items[0][1], expect_modality, str(items[0][0]))
    datasets = [_dcmread(p) for p, _ in items]
    image = image_from_datasets(datasets, source=str(folder), sources=[str(p) for p, _ in items])
    image.meta["series_in_folder"] = {uid: n for uid, (n, _) in found.items()}
    return image


# --------------------------------------------------------------------------------------------- NIfTI


def read_nifti(path: str | Path) -> Image:
    """Read a 2D/3D NIfTI file; its RAS affine is converted to LPS and its axes reversed to (k, j, i).

    NIfTI stores the fastest axis first (i = columns); the array here is ``data.T`` so that axis 0 is the
    slice axis like DICOM volumes, and ``write_nifti(read_nifti(f))`` reproduces the file's geometry.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        codes = (int(img.header["sform_code"]), int(img.header["qform_code"]))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ImageReadError(str(path), f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise ImageReadError(
            str(path), f"{data.ndim}D NIfTI (shape {data.shape}) is not supported; expected 3D"
        )
    lps = _LPS_FROM_RAS @ affine[:3, :3]
    columns = lps[:, ::-1]  # array axis a <-> NIfTI axis 2 - a
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ImageReadError(str(path), f"degenerate affine (zero voxel size): {affine.tolist()}")
    direction = columns / spacing
    origin = _LPS_FROM_RAS @ affine[:3, 3]
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    arr = np.ascontiguousarray(data.transpose(2, 1, 0))
    meta = {"patient_frame": max(codes) > 0, "spacing_known": True, "axis0": "space", "nifti_codes": codes}
    return Image(
        arr,
        tuple(float(s) for s in spacing),
        tuple(float(x) for x in origin),
        direction,
        None,
        meta,
        str(path),
    )


def write_nifti(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with an LPS->RAS converted sform and qform.

    2D images are written as one slice ``(cols, rows, 1)``. Returns the path written.
    """
    import nibabel as nib

    path = Path(path)
    arr = image.array
    spacing = np.asarray(image.spacing, dtype=np.float64)
    direction = np.asarray(image.direction, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
        spacing = np.concatenate([[1.0], spacing])
        direction = np.column_stack([direction[:, 2], direction[:, 0], direction[:, 1]])
    if arr.ndim != 3:
        raise ParameterError("image", f"cannot write a {arr.ndim}D array as NIfTI (source {image.source})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    columns = (direction * spacing)[:, ::-1]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_FROM_RAS @ columns
    affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(image.origin, dtype=np.float64)
    nii = nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), affine)
    code = 1 if image.meta.get("patient_frame", True) else 2  # 1 scanner, 2 aligned
    nii.set_sform(affine, code=code)
    nii.set_qform(affine, code=code)
    nii.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        nib.save(nii, str(path))
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(str(path), f"cannot write NIfTI ({type(exc).__name__}: {exc})") from None
    return path


# --------------------------------------------------------------------------------------------- PNG / JPEG


def read_picture(path: str | Path) -> Image:
    """Read a PNG/JPEG/TIFF as a grayscale 2D image. Pixel spacing is unknown: 1.0 mm and ``spacing_known=False``."""
    from PIL import Image as PILImage

    path = Path(path)
    try:
        with PILImage.open(path) as pic:
            pic.load()
            mode = pic.mode
            if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(pic)
            else:
                arr = np.asarray(pic.convert("L"))
            fmt = pic.format
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/DecompressionBombError
        raise ImageReadError(str(path), f"not a readable picture ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise ImageReadError(str(path), f"unexpected picture shape {arr.shape} (mode {mode})")
    meta: dict[str, Any] = {"spacing_known": False, "patient_frame": False, "format": fmt, "mode": mode}
    if mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1"):
        meta["color_converted"] = f"{mode} -> L (ITU-R 601 luma)"
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return Image(np.ascontiguousarray(arr), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), None, meta, str(path))


# --------------------------------------------------------------------------------------------- geometry


def _require_frame(image: Image) -> None:
    if not image.meta.get("patient_frame", True):
        raise ParameterError(
            "image",
            f"{image.source} has no patient coordinate frame (no ImagePositionPatient/ImageOrientationPatient, "
            "or frames are not spatial); use pixel coordinates (Location frame='pixel')",
        )


def _matrix(image: Image) -> np.ndarray:
    nd = image.ndim
    return (
        np.asarray(image.direction, dtype=np.float64)[:, :nd]
        * np.asarray(image.spacing, dtype=np.float64)[:nd]
    )


def index_to_lps(image: Image, ijk: Any) -> np.ndarray:
    """Voxel index (array axis order, may be fractional) -> patient LPS mm; shape (..., ndim) -> (..., 3).

    >>> img = Image(np.zeros((4, 4)), (0.5, 2.0), (1.0, 2.0, 3.0), np.eye(3), "CT", {}, "demo")
    >>> index_to_lps(img, [[0, 0], [2, 1]]).tolist()
    [[1.0, 2.0, 3.0], [2.0, 4.0, 3.0]]
    """
    _require_frame(image)
    idx = np.asarray(ijk, dtype=np.float64)
    if idx.shape[-1] != image.ndim:
        raise ParameterError(
            "ijk", f"needs {image.ndim} indices per point (array axis order), got shape {idx.shape}"
        )
    return np.asarray(image.origin, dtype=np.float64) + idx @ _matrix(image).T


def lps_to_index(image: Image, xyz: Any) -> np.ndarray:
    """Patient LPS mm -> continuous voxel index (array axis order); inverse of :func:`index_to_lps`.

    For 2D images the point is projected onto the image plane (least squares).

    >>> img = Image(np.zeros((2, 3, 4)), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0), np.eye(3), "CT", {}, "demo")
    >>> lps_to_index(img, (-5.0, -19.0, 31.0)).tolist()
    [1.0, 2.0, 2.0]
    """
    _require_frame(image)
    pts = np.asarray(xyz, dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ParameterError("xyz", f"needs 3 LPS coordinates per point, got shape {pts.shape}")
    rel = pts - np.asarray(image.origin, dtype=np.float64)
    return rel @ np.linalg.pinv(_matrix(image)).T
