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
from cds.images.image import Image

__all__ = ["image_from_datasets", "DEFAULT_SLICE_GAP_TOLERANCE"]

#: Largest relative difference between a slice gap and the median gap before a stack is refused.
DEFAULT_SLICE_GAP_TOLERANCE = 0.01
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


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
        "slice_thickness": _first_float(_frame_attr(ds, frame, "PixelMeasuresSequence", "SliceThickness")),
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
) -> Image:
    """Build an :class:`Image` from decoded pydicom datasets of ONE series (files or WADO-RS).

    One dataset: single- or multi-frame. Several: single-frame slices that are sorted along the
    normal and checked for consistent spacing: a gap may differ from the median gap by
    ``slice_gap_tolerance`` (relative) + 0.001 mm. ``sources`` names each dataset in error messages.
    """
    if not datasets:
        raise ImageReadError(source, "no DICOM instances")
    if not 0.0 <= slice_gap_tolerance < 1.0:
        raise ParameterError("slice_gap_tolerance", f"must be in [0, 1), got {slice_gap_tolerance}")
    sources = sources or [f"{source} (instance {i + 1})" for i in range(len(datasets))]
    if len(datasets) == 1:
        return _single(datasets[0], source, sources[0])
    return _series(datasets, source, sources, slice_gap_tolerance)


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


def _series(datasets: list[Dataset], source: str, sources: list[str], tolerance: float) -> Image:
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
    order, origin, direction, step = _stack_geometry(
        np.vstack(ipps), iops[0], source, _slice_gap(first), tolerance
    )
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
