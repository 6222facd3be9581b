"""Cine inputs for cmr-function: a 4D image ``(frames, slices, rows, cols)`` from a file or a folder.

:func:`read_cine` reads a 4D NIfTI ``(x, y, slice, time)`` — its spacing and orientation from the header —
or a folder holding one cine short-axis DICOM series (one file per slice position and frame; slices
ordered along the slice normal — ImagePositionPatient projected on the normal of
ImageOrientationPatient, never SliceLocation, which some scanners step differently — frames by
TriggerTime, else InstanceNumber; the slice spacing is the median step of those projections). The result is a
:class:`cds.images.image.Image` whose ``spacing`` is ``(frame interval ms or 1.0, slice, row, col)``,
``direction``/``origin`` describe the spatial axes ``(slices, rows, cols)``, and ``meta`` holds
``slice_thickness_mm``, ``slice_positions_mm`` (along the normal, first slice 0), ``frame_times_ms``,
``source_files`` (file name per slice and frame) and the DICOM identity, as :func:`cds.models.tasks.cmr_function.cine_geometry` reads.

>>> import tempfile, nibabel as nib
>>> path = tempfile.mkdtemp() + "/cine.nii.gz"
>>> affine = np.diag([1.5, 1.5, 8.0, 1.0])
>>> nib.save(nib.Nifti1Image(np.zeros((12, 10, 3, 5), np.float32), affine), path)
>>> img = read_cine(path)
>>> img.shape, img.spacing
((5, 3, 10, 12), (1.0, 8.0, 1.5, 1.5))
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError

__all__ = ["read_cine", "is_nifti"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def is_nifti(path: str | Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``).

    >>> is_nifti("a/cine.nii.gz"), is_nifti("a/folder")
    (True, False)
    """
    name = str(path).lower()
    return name.endswith((".nii", ".nii.gz"))


def read_cine(path: str | Path, series_uid: str | None = None) -> Any:
    """A cine Image ``(frames, slices, rows, cols)`` from a 4D NIfTI file or a cine DICOM series folder.

    Raises :class:`cds.errors.ImageReadError` naming the path when it is missing, not 4D, or the series
    is incomplete (slice positions with different frame counts).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(str(p), "no such file or folder")
    if p.is_file() and is_nifti(p):
        return _nifti_cine(p)
    if p.is_dir():
        return _dicom_cine(p, series_uid)
    raise ImageReadError(str(p), "a cine is a 4D NIfTI file (.nii, .nii.gz) or a folder of one cine DICOM series")


def _nifti_cine(path: Path) -> Any:
    import nibabel as nib

    from cds.images.image import Image
    from cds.images.limits import check_file, image_limits

    check_file(path)  # a regular file: no FIFO or device behind the name
    limits = image_limits()
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.header.get_data_shape())
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ImageReadError(str(path), f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if any(n < 1 for n in shape):
        raise ImageReadError(str(path), f"NIfTI header claims an empty or negative shape {shape}")
    # the decoded float32 cine, checked from the header before any voxel is read
    limits.check_series(str(path), 1, int(np.prod([float(n) for n in shape])) * 4)
    try:
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        codes = (int(img.header["sform_code"]), int(img.header["qform_code"]))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ImageReadError(str(path), f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim != 4:
        raise ImageReadError(str(path), f"a cine NIfTI is 4D (x, y, slice, time); this one has shape {data.shape}")
    lps = _LPS_FROM_RAS @ affine[:3, :3]
    columns = lps[:, ::-1]  # spatial array axis a <-> NIfTI axis 2 - a
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ImageReadError(str(path), f"degenerate affine (zero voxel size): {affine.tolist()}")
    frame = zooms[3] if len(zooms) > 3 and zooms[3] > 0 else 1.0
    arr = np.ascontiguousarray(data.transpose(3, 2, 1, 0)).astype(np.float32)
    meta = {"patient_frame": max(codes) > 0, "spacing_known": True, "axis0": "time",
            "slice_thickness_mm": float(spacing[0])}
    return Image(arr, (frame, *(float(s) for s in spacing)), tuple(float(x) for x in _LPS_FROM_RAS @ affine[:3, 3]),
                 columns / spacing, "MR", meta, str(path))


def _floats(v: Any, n: int, where: str, keyword: str) -> np.ndarray:
    try:
        out = np.asarray([float(x) for x in v], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,):
        raise ImageReadError(where, f"{keyword} is missing or malformed ({v!r}); a cine series needs it")
    return out


def _dicom_cine(folder: Path, series_uid: str | None) -> Any:
    """:func:`_read_dicom_cine` with pydicom's invalid-UID warnings counted, not printed.

    Real scanners write UIDs with a leading-zero component (``...99.0105...``, e.g. the Sunnybrook
    cines); pydicom warns once per value. The UIDs still identify the series, so the count goes to
    ``meta["invalid_uid_values"]``; any other warning passes through.
    """
    import logging

    class _UidFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:  # pydicom also logs each invalid UID
            return "VR UI" not in record.getMessage()

    log = logging.getLogger("pydicom")
    uid_filter = _UidFilter()
    log.addFilter(uid_filter)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = _read_dicom_cine(folder, series_uid)
    finally:
        log.removeFilter(uid_filter)
    bad = 0
    for w in caught:
        if "VR UI" in str(w.message):
            bad += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    image.meta["invalid_uid_values"] = bad
    return image


def _read_dicom_cine(folder: Path, series_uid: str | None) -> Any:

    from cds.images.dicom import read_dataset
    from cds.images.dicom_header import check_pixel_header
    from cds.images.image import Image
    from cds.images.limits import image_limits

    limits = image_limits(root=folder)
    items = []
    claimed = 0
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and not q.is_symlink()):
        try:
            ds = read_dataset(f, limits=limits)
        except ImageReadError:  # not DICOM (or not a regular file under the folder): skipped, like other readers
            continue
        if "PixelData" not in ds:
            continue
        claimed += check_pixel_header(ds, str(f), limits)  # budget and pixel description, before decoding
        limits.check_series(str(folder), len(items) + 1, claimed)
        items.append((f, ds))
    if not items:
        raise ImageReadError(str(folder), "holds no DICOM images")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in items})
    if series_uid is not None:
        items = [(f, ds) for f, ds in items if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        if not items:
            raise ImageReadError(str(folder), f"has no series {series_uid!r} (found: {', '.join(series)})")
    elif len(series) > 1:
        raise ImageReadError(str(folder), f"holds {len(series)} series ({', '.join(series)}); pass the cine's "
                                          "series UID")
    f0, ds0 = items[0]
    iop = _floats(ds0.get("ImageOrientationPatient"), 6, str(f0), "ImageOrientationPatient")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    px = _floats(ds0.get("PixelSpacing"), 2, str(f0), "PixelSpacing")
    groups: dict[float, list[tuple[float, np.ndarray, np.ndarray, str]]] = {}
    thick = float(ds0.get("SliceThickness", 0) or 0)
    tol = max(0.25 * thick, 0.5)  # positions closer than this along the normal are one slice
    for f, ds in items:
        pos = _floats(ds.get("ImagePositionPatient"), 3, str(f), "ImagePositionPatient")
        when = ds.get("TriggerTime")
        key = float(when) if when not in (None, "") else float(ds.get("InstanceNumber", 0) or 0)
        pixels = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) \
            + float(ds.get("RescaleIntercept", 0) or 0)
        level = float(pos @ normal)
        near = [z for z in groups if abs(z - level) <= tol]
        groups.setdefault(near[0] if near else round(level, 3), []).append((key, pixels, pos, f.name))
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        raise ImageReadError(str(folder), f"slice positions have different frame counts ({sorted(counts)}); "
                                          "an incomplete cine series")
    levels = sorted(groups)
    stacks = [sorted(groups[z], key=lambda t: t[0]) for z in levels]
    shapes = {s[1].shape for stack in stacks for s in stack}
    if len(shapes) != 1:
        raise ImageReadError(str(folder), f"images of different sizes {sorted(shapes)} in one cine series")
    arr = np.stack([np.stack([s[1] for s in stack]) for stack in stacks], axis=1)  # (frames, slices, rows, cols)
    gap = float(np.median(np.diff(levels))) if len(levels) > 1 else float(ds0.get("SliceThickness", 1.0) or 1.0)
    times = [t[0] for t in stacks[0]]
    frame = float(np.median(np.diff(times))) if len(times) > 1 and ds0.get("TriggerTime") not in (None, "") else 1.0
    meta = {"patient_frame": True, "spacing_known": True, "axis0": "time",
            "slice_thickness_mm": float(ds0.get("SliceThickness", gap) or gap),
            "slice_positions_mm": [round(z - levels[0], 4) for z in levels],
            "frame_times_ms": [round(float(t), 3) for t in times],
            "source_files": [[t[3] for t in stack] for stack in stacks],

            "patient_id": str(ds0.get("PatientID", "")) or None, "study_uid": str(ds0.get("StudyInstanceUID", "")) or None,
            "series_uid": str(ds0.get("SeriesInstanceUID", "")) or None}
    direction = np.column_stack([normal, col_dir, row_dir])
    return Image(arr, (frame, gap, float(px[0]), float(px[1])), tuple(float(x) for x in stacks[0][0][2]),
                 direction, str(ds0.get("Modality", "MR")), meta, str(folder))
