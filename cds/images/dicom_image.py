"""Build an :class:`~cds.images.image.Image` from pydicom datasets of one series (files or WADO-RS).

Decoding (with a clear error for a missing codec), rescale slope/intercept, MONOCHROME1 inversion,
colour to grayscale, and the geometry of single slices, multi-frame objects and slice stacks
(sorted along the slice normal, gaps checked). :mod:`cds.images.dicom` (files and folders) and
:mod:`cds.images.dicomweb` (WADO-RS) both come here, so a series has one geometry wherever it is read.

>>> from pydicom.dataset import Dataset, FileMetaDataset
>>> ds = Dataset()
>>> ds.file_meta = FileMetaDataset()
>>> ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
>>> ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 2, 2, 16, 16, 0
>>> ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Modality = 1, "MONOCHROME2", "OT"
>>> ds.PixelData = bytes(8)
>>> image_from_datasets([ds], source="demo").shape
(2, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from cds.errors import ImageReadError, ParameterError
from cds.images.dicom_header import PIXEL_KEYWORDS, check_pixel_header
from cds.images.dicom_header import safe_get as _get
from cds.images.image import Image
from cds.images.limits import ImageLimits, image_limits

__all__ = ["image_from_datasets", "DEFAULT_SLICE_GAP_TOLERANCE"]

#: Largest relative difference between a slice gap and the median gap before a stack is refused.
DEFAULT_SLICE_GAP_TOLERANCE = 0.01


def _check_pixels(ds: Dataset, where: str) -> None:
    """Raise a clear ImageReadError when ``ds`` has no pixels or none of the installed codecs decodes them."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        sop = _get(ds, "SOPClassUID")
        what = UID(str(sop)).name if sop else "unknown SOP class"
        if what.endswith("Image Storage"):
            raise ImageReadError(
                where, f"no pixel data although it is a {what} object (a truncated or stripped file?)"
            )
        raise ImageReadError(
            where, f"no pixel data ({what}, modality {_get(ds, 'Modality', 'unset')}): not an image object"
        )
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds:
        return
    if not ts:
        raise ImageReadError(
            where, "the file meta information has no TransferSyntaxUID (0002,0010), so the pixel data's "
            "encoding is unknown",
        )
    if not isinstance(ts, str):  # e.g. several values
        raise ImageReadError(where, f"TransferSyntaxUID {str(ts)[:80]!r} is not one UID")
    ts = UID(ts)
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
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
    photometric = str(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = _palette(arr, ds, where)
    if _num(ds, "SamplesPerPixel", 1) > 1 or photometric == "PALETTE COLOR":
        arr = _luma(arr)
    return arr


def _palette(arr: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """PALETTE COLOR indices -> RGB through the file's lookup tables (ImageReadError when they are unusable)."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError/IndexError/... for a broken table
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(where, f"PALETTE COLOR lookup table cannot be applied: {reason}") from None
    descriptor = _floats(_get(ds, "RedPaletteColorLookupTableDescriptor"))
    if descriptor and len(descriptor) == 3 and descriptor[2] == 16:
        rgb = rgb / 257.0  # 16-bit LUT entries -> 0..255 like 8-bit colour images
    return rgb


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


def _num(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute already checked by :func:`check_pixel_header`; ``default`` when absent or empty."""
    value = _first_float(_get(ds, keyword))
    return int(value) if value is not None and np.isfinite(value) else default


def _first_float(value: Any) -> float | None:
    vals = _floats(value)
    return vals[0] if vals else None


def _item(ds: Dataset, group: str, keyword: str) -> Any:
    """``keyword`` from a functional-group item ``ds.<group>[0]`` or None."""
    seq = _get(ds, group)
    if not seq:
        return None
    return _get(seq[0], keyword)


def _frame_attr(ds: Dataset, frame: Dataset | None, group: str, keyword: str) -> Any:
    """Look up ``keyword`` in a per-frame functional group, then the shared group, then the top level."""
    if frame is not None:
        value = _item(frame, group, keyword)
        if value is not None:
            return value
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    if shared:
        value = _item(shared[0], group, keyword)
        if value is not None:
            return value
    return _get(ds, keyword)


#: Largest |value| a rescaled pixel may reach (float32 holds 3.4e38; beyond it values become inf).
_MAX_RESCALED = 1e38


def _rescale(
    raw: np.ndarray, ds: Dataset, frame: Dataset | None = None, where: str = ""
) -> tuple[np.ndarray, float, float]:
    """Apply MONOCHROME1 inversion (on the stored range) and rescale slope/intercept to one frame/slice.

    A non-finite slope/intercept, or one that sends stored values beyond float32, is an ImageReadError.
    """
    raw_slope = _frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    raw_intercept = _frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    for name, value in (("RescaleSlope", raw_slope), ("RescaleIntercept", raw_intercept)):
        if value is not None and value != "" and _floats(value) is None:  # 'steep', or Garbled text
            raise ImageReadError(where or "image", f"{name} is {str(value)[:40]!r}, not a number")
    slope, intercept = _first_float(raw_slope), _first_float(raw_intercept)
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    lo, hi = _stored_range(ds)
    reach = max(abs(lo), abs(hi)) * abs(slope) + abs(intercept)
    if not (np.isfinite(slope) and np.isfinite(intercept)) or (raw.dtype.kind in "iu" and reach > _MAX_RESCALED):
        raise ImageReadError(
            where or "image",
            f"RescaleSlope {slope} / RescaleIntercept {intercept} cannot be applied (not finite, or values "
            "beyond the float range)",
        )
    arr = raw
    if str(_get(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1" and arr.dtype.kind in "iu":
        lo, hi = _stored_range(ds)
        arr = (lo + hi) - arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)), slope, intercept
    if slope.is_integer() and intercept.is_integer() and reach < 2**62:
        out = arr.astype(np.int64) * int(slope) + int(intercept)
        return _smallest_int(out), slope, intercept
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)), slope, intercept


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = _num(ds, "BitsStored", _num(ds, "BitsAllocated", 16))
    if _num(ds, "PixelRepresentation", 0) == 1:
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
        _get(ds, "ImagerPixelSpacing"),
        _get(ds, "NominalScannedPixelSpacing"),
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
    if not np.isfinite(iop).all() or np.linalg.norm(iop[:3]) < 1e-6 or np.linalg.norm(iop[3:]) < 1e-6:
        return None  # (non-finite top-level values were refused by _check_geometry_values)
    return iop


def _position(ds: Dataset, frame: Dataset | None = None) -> np.ndarray | None:
    vals = _floats(_frame_attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient"))
    if not vals or len(vals) != 3 or not np.isfinite(vals).all():
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
    ts = _get(meta_ts, "TransferSyntaxUID") if meta_ts is not None else None
    centre, width = _window(ds, frame)
    return {
        "patient_id": _text(_get(ds, "PatientID")),
        "study_uid": _text(_get(ds, "StudyInstanceUID")),
        "series_uid": _text(_get(ds, "SeriesInstanceUID")),
        "sop_instance_uid": _text(_get(ds, "SOPInstanceUID")),
        "sop_class_uid": _text(_get(ds, "SOPClassUID")),
        "frame_of_reference_uid": _text(_get(ds, "FrameOfReferenceUID")),
        "transfer_syntax": _text(ts),
        "photometric_interpretation": _text(_get(ds, "PhotometricInterpretation")),
        "window_center": centre,
        "window_width": width,
        "view_position": _text(_get(ds, "ViewPosition")),
        "body_part": _text(_get(ds, "BodyPartExamined")),
        "laterality": _text(_get(ds, "ImageLaterality") or _get(ds, "Laterality")),
        "patient_position": _text(_get(ds, "PatientPosition")),
        "study_date": _text(_get(ds, "StudyDate")),
        "series_description": _text(_get(ds, "SeriesDescription")),
        "series_number": _text(_get(ds, "SeriesNumber")),
        "slice_thickness": _first_float(_frame_attr(ds, frame, "PixelMeasuresSequence", "SliceThickness")),
        "manufacturer": _text(_get(ds, "Manufacturer")),
        "patient_sex": _text(_get(ds, "PatientSex")),
        "patient_age": _text(_get(ds, "PatientAge")),
    }


def _finish_meta(meta: dict[str, Any], ds: Dataset, slope: float, intercept: float) -> dict[str, Any]:
    meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept
    meta["inverted"] = str(_get(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if meta["inverted"] and meta.get("window_center") is not None:
        # window centre is in rescaled units; mirror it like the values: y' = s*(lo+hi) + 2b - y
        lo, hi = _stored_range(ds)
        meta["window_center"] = slope * (lo + hi) + 2 * intercept - meta["window_center"]
    if _num(ds, "SamplesPerPixel", 1) > 1 or meta.get("photometric_interpretation") == "PALETTE COLOR":
        meta["color_converted"] = f"{meta.get('photometric_interpretation')} -> grayscale (ITU-R 601 luma)"
    return meta


def _stack_geometry(
    positions: np.ndarray,
    iop: np.ndarray,
    where: str,
    gap: float | None,
    tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Sort slices along the normal and derive (order, origin, direction, slice spacing).

    Raises ImageReadError when two slices share a position or a gap differs from the median gap by
    more than ``tolerance * median + 0.001`` mm.
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
        if abs(steps[worst] - median) > tolerance * median + 1e-3:
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


def image_from_datasets(
    datasets: list[Dataset],
    source: str,
    sources: list[str] | None = None,
    slice_gap_tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
    limits: ImageLimits | None = None,
) -> Image:
    """Build an :class:`Image` from decoded pydicom datasets of ONE series (files or WADO-RS).

    One dataset: single- or multi-frame. Several: single-frame slices that are sorted along the
    normal and checked for consistent spacing: a gap may differ from the median gap by
    ``slice_gap_tolerance`` (relative) + 0.001 mm. ``sources`` names each dataset in error messages.
    Before any pixel is decoded, every dataset's pixel description and claimed size are checked
    (:func:`cds.images.dicom_header.check_pixel_header`) against ``limits`` (default:
    :func:`cds.images.limits.image_limits`), and their sum against the series budget.
    """
    if not datasets:
        raise ImageReadError(source, "no DICOM instances")
    if not 0.0 <= slice_gap_tolerance < 1.0:
        raise ParameterError("slice_gap_tolerance", f"must be in [0, 1), got {slice_gap_tolerance}")
    limits = limits or image_limits()
    sources = sources or [f"{source} (instance {i + 1})" for i in range(len(datasets))]
    claimed = 0
    for ds, where in zip(datasets, sources, strict=True):
        if not any(k in ds for k in PIXEL_KEYWORDS):
            _check_pixels(ds, where)  # raises: no pixel data
        claimed += check_pixel_header(ds, where, limits)
        _check_geometry_values(ds, where)
    if len(datasets) == 1:
        return _single(datasets[0], source, sources[0])
    limits.check_series(source, len(datasets), claimed)
    return _series(datasets, source, sources, slice_gap_tolerance)


_GEOMETRY_KEYWORDS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "ImagerPixelSpacing",
                      "SliceThickness", "SpacingBetweenSlices")  # fmt: skip


def _check_geometry_values(ds: Dataset, where: str) -> None:
    """Refuse geometry attributes holding NaN/inf (a corrupt header); implausible but finite ones are kept."""
    for keyword in _GEOMETRY_KEYWORDS:
        vals = _floats(_get(ds, keyword))
        if vals and not all(np.isfinite(vals)):
            raise ImageReadError(where, f"{keyword} holds a non-finite value ({vals}); the header is corrupt")


def _single(ds: Dataset, source: str, where: str) -> Image:
    raw = _decode(ds, where)
    frames = _num(ds, "NumberOfFrames", 1)
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    meta = _meta(ds, per_frame[0] if per_frame else None)
    modality = _text(_get(ds, "Modality"))
    if frames > 1 or raw.ndim == 3:
        if raw.ndim == 2:
            raw = raw[None]
        items: list[Dataset | None] = (
            list(per_frame) if per_frame and len(per_frame) == raw.shape[0] else [None] * raw.shape[0]
        )
        values, slopes = [], []
        for k in range(raw.shape[0]):
            v, s, b = _rescale(raw[k], ds, items[k], where)
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
    arr, slope, intercept = _rescale(raw, ds, where=where)
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


def _series(datasets: list[Dataset], source: str, sources: list[str], tolerance: float) -> Image:
    first = datasets[0]
    n = len(datasets)
    for ds, where in zip(datasets, sources, strict=True):
        if _num(ds, "NumberOfFrames", 1) > 1:
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
        if (_get(ds, "Rows"), _get(ds, "Columns")) != (_get(first, "Rows"), _get(first, "Columns")):
            raise ImageReadError(
                where,
                f"size {_get(ds, 'Rows')}x{_get(ds, 'Columns')} differs from {_get(first, 'Rows')}x{_get(first, 'Columns')}",
            )
        a, b = _pixel_spacing(ds), _pixel_spacing(first)
        if (a is None) != (b is None) or (a and b and not np.allclose(a, b, rtol=1e-4)):
            raise ImageReadError(where, f"pixel spacing {a} differs from the first slice's {b}")
    order, origin, direction, step = _stack_geometry(
        np.vstack(ipps), iops[0], source, _slice_gap(first), tolerance
    )
    values, rescales = [], []
    for i in order:
        v, s, b = _rescale(_decode(datasets[i], sources[i]), datasets[i], where=sources[i])
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
        sop_instance_uids=[_text(_get(datasets[i], "SOPInstanceUID")) for i in order],
        files=[sources[i] for i in order],
        rescale_varies=len(set(rescales)) > 1,
    )
    sp = spacing2 or (1.0, 1.0)
    return Image(
        arr,
        (step, *sp),
        tuple(float(x) for x in origin),
        direction,
        _text(_get(first, "Modality")),
        meta,
        source,
    )
