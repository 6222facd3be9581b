"""Read and write NIfTI-1/2 files (``.nii``, ``.nii.gz``) as :class:`~cds.images.image.Image`.

NIfTI affines are in RAS; they are converted to LPS (negate x and y) and the axes reversed so that
axis 0 is the slice axis like DICOM volumes. ``write_nifti(read_nifti(f))`` reproduces ``f``'s geometry.

>>> import tempfile
>>> from pathlib import Path
>>> img = Image(np.zeros((2, 3, 4), np.int16), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0), np.eye(3), "CT", {}, "demo")
>>> with tempfile.TemporaryDirectory() as d:
...     back = read_nifti(write_nifti(img, Path(d) / "demo.nii.gz"))
>>> back.shape, back.spacing, back.origin
((2, 3, 4), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0))
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cds.errors import ImageReadError, ParameterError
from cds.images.image import Image
from cds.images.limits import ImageLimits, check_file, content_kind, image_limits, read_head

__all__ = ["read_nifti", "write_nifti", "NIFTI_SUFFIXES"]

#: File name endings read as NIfTI.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def read_nifti(path: str | Path, *, limits: ImageLimits | None = None) -> Image:
    """Read a 2D/3D NIfTI file; its RAS affine is converted to LPS and its axes reversed to (k, j, i).

    NIfTI stores the fastest axis first (i = columns); the array here is ``data.T`` so that axis 0 is the
    slice axis like DICOM volumes, and ``write_nifti(read_nifti(f))`` reproduces the file's geometry.

    Before the voxels are read, the header is checked: positive dimensions, a real-valued data type,
    a finite affine, the claimed size within ``limits`` (:func:`cds.images.limits.image_limits`) and,
    for an uncompressed file, data that the file really holds. Each failure is an
    :class:`~cds.errors.ImageReadError` naming the file.
    """
    import nibabel as nib

    path = Path(path)
    where = str(path)
    limits = limits or image_limits()
    st = check_file(path, limits.root)
    try:
        img = nib.load(str(path))
        header = img.header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        affine = np.asarray(img.affine, dtype=np.float64)
        codes = (int(header["sform_code"]), int(header["qform_code"]))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        kind = content_kind(read_head(path))
        what = f"; the content is {kind}" if kind and not kind.startswith(("NIfTI", "gzip")) else ""
        raise ImageReadError(where, f"not a readable NIfTI file ({type(exc).__name__}: {exc}){what}") from None
    _check_header(where, shape, dtype, affine, limits)
    if not path.name.lower().endswith(".gz"):
        offset = float(getattr(img.dataobj, "offset", header["vox_offset"]))
        need = (int(offset) if np.isfinite(offset) else 2**63) + math.prod(shape) * dtype.itemsize
        if st.st_size < need:
            raise ImageReadError(
                where, f"truncated NIfTI file: the header claims {need} bytes (shape {shape}, {dtype}), "
                f"the file has {st.st_size}",
            )
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt (gzip) data
        raise ImageReadError(where, f"NIfTI voxel data cannot be read ({type(exc).__name__}: {exc})") from None
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


def _check_header(where: str, shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, limits: ImageLimits) -> None:
    """Refuse a NIfTI header with non-positive dimensions, a non-real data type, a non-finite affine or a
    claimed size over the budget."""
    if not shape or any(n < 1 for n in shape):
        raise ImageReadError(where, f"NIfTI header dimensions {list(shape)} are not all positive")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ImageReadError(
            where, f"NIfTI data type {dtype} is not supported (real-valued grey levels only: no complex or RGB)"
        )
    if not np.isfinite(affine).all():
        raise ImageReadError(where, "NIfTI affine (sform/qform) holds non-finite values; the header is corrupt")
    squeezed = list(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) > 3:
        raise ImageReadError(where, f"{len(squeezed)}D NIfTI (shape {shape}) is not supported; expected 3D")
    limits.check_object(where, tuple(squeezed), dtype.itemsize, f" ({dtype})", unit="slices")


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
