"""The :class:`Image` record: pixels plus the geometry that places every voxel in the patient.

Every reader (:mod:`cds.images.dicom`, :mod:`cds.images.dicomweb`, :mod:`cds.images.nifti`,
:mod:`cds.images.pictures`) returns one, so models can report Findings in patient coordinates
(LPS millimetres, the DICOM patient coordinate system).

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

>>> img = Image(np.zeros((2, 3, 4), np.int16), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0), np.eye(3), "CT", {}, "demo")
>>> index_to_lps(img, (1, 2, 2)).tolist()
[-5.0, -19.0, 31.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cds.errors import ParameterError

__all__ = [
    "Image",
    "index_to_lps",
    "lps_to_index",
    "grid_index_to_lps",
    "grid_lps_to_index",
    "check_direction",
    "require_patient_frame",
]


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

    >>> Image(np.zeros((3, 4)), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "CR").shape
    (3, 4)
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
        """Number of array axes (2 or 3)."""
        return int(self.array.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array shape as plain ints."""
        return tuple(int(n) for n in self.array.shape)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        return (
            f"Image(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}), modality={self.modality!r}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------- checks


def check_direction(direction: Any, name: str = "direction") -> np.ndarray:
    """``direction`` as a float 3x3 array whose columns are finite unit vectors spanning 3D space.

    Columns need not be orthogonal (a CT series with gantry tilt has a slanted slice axis), but they
    must be unit length and independent. Raises :class:`~cds.errors.ParameterError` naming ``name``.

    >>> check_direction(np.eye(3)).shape
    (3, 3)
    >>> check_direction(2 * np.eye(3))
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: direction: columns must be unit vectors (LPS direction cosines), got lengths [2.0, 2.0, 2.0]
    """
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.isfinite(d).all():
        raise ParameterError(name, f"must be a finite 3x3 matrix (columns = LPS axes), got shape {d.shape}")
    lengths = np.linalg.norm(d, axis=0)
    if not np.allclose(lengths, 1.0, atol=1e-3):
        raise ParameterError(
            name, f"columns must be unit vectors (LPS direction cosines), got lengths {lengths.round(4).tolist()}"
        )
    if abs(np.linalg.det(d)) < 1e-6:
        raise ParameterError(name, "columns are not independent (a degenerate patient frame)")
    return d


def require_patient_frame(image: Image) -> None:
    """Raise :class:`~cds.errors.ParameterError` when ``image`` has no patient coordinate frame.

    >>> require_patient_frame(Image(np.zeros((2, 2)), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), meta={"patient_frame": False}, source="a.png"))
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: image: a.png has no patient coordinate frame (no ImagePositionPatient/ImageOrientationPatient, or frames are not spatial); use pixel coordinates (Location frame='pixel')
    """
    if not image.meta.get("patient_frame", True):
        raise ParameterError(
            "image",
            f"{image.source} has no patient coordinate frame (no ImagePositionPatient/ImageOrientationPatient, "
            "or frames are not spatial); use pixel coordinates (Location frame='pixel')",
        )


# --------------------------------------------------------------------------------------------- grid geometry


def grid_index_to_lps(index: Any, spacing: Sequence[float], origin: Sequence[float], direction: Any) -> np.ndarray:
    """Voxel indices (array axis order, may be fractional) of a grid -> LPS mm.

    ``lps = origin + (index * spacing) @ direction[:, :n].T`` where ``n = len(spacing)``; ``index`` has
    shape ``(..., n)`` and the result ``(..., 3)``.

    >>> axial = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])  # columns: normal (+z), column dir (+y), row dir (+x)
    >>> grid_index_to_lps([[0, 0, 0], [2, 0, 10]], (2.0, 0.5, 0.5), (-100.0, -50.0, 20.0), axial).tolist()
    [[-100.0, -50.0, 20.0], [-95.0, -50.0, 24.0]]
    """
    sp = np.asarray(spacing, dtype=np.float64)
    idx = np.asarray(index, dtype=np.float64)
    if idx.shape[-1:] != sp.shape:
        raise ParameterError("index", f"needs {sp.size} indices per point (array axis order), got shape {idx.shape}")
    d = check_direction(direction)[:, : sp.size]
    return np.asarray(origin, dtype=np.float64) + (idx * sp) @ d.T


def grid_lps_to_index(lps: Any, spacing: Sequence[float], origin: Sequence[float], direction: Any) -> np.ndarray:
    """LPS mm -> continuous voxel indices of a grid; the inverse of :func:`grid_index_to_lps`.

    For a 2D grid (two spacings) the point is projected onto the image plane (least squares).

    >>> axial = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    >>> grid_lps_to_index([[-95.0, -50.0, 24.0]], (2.0, 0.5, 0.5), (-100.0, -50.0, 20.0), axial).tolist()
    [[2.0, 0.0, 10.0]]
    """
    sp = np.asarray(spacing, dtype=np.float64)
    pts = np.asarray(lps, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise ParameterError("lps", f"needs 3 LPS coordinates per point, got shape {pts.shape}")
    d = check_direction(direction)
    rel = pts - np.asarray(origin, dtype=np.float64)
    if sp.size == 3:
        return (rel @ np.linalg.inv(d).T) / sp
    return rel @ np.linalg.pinv(d[:, : sp.size] * sp).T


# --------------------------------------------------------------------------------------------- Image geometry


def index_to_lps(image: Image, ijk: Any) -> np.ndarray:
    """Voxel index (array axis order, may be fractional) -> patient LPS mm; shape (..., ndim) -> (..., 3).

    >>> img = Image(np.zeros((4, 4)), (0.5, 2.0), (1.0, 2.0, 3.0), np.eye(3), "CT", {}, "demo")
    >>> index_to_lps(img, [[0, 0], [2, 1]]).tolist()
    [[1.0, 2.0, 3.0], [2.0, 4.0, 3.0]]
    """
    require_patient_frame(image)
    idx = np.asarray(ijk, dtype=np.float64)
    if idx.shape[-1:] != (image.ndim,):
        raise ParameterError(
            "ijk", f"needs {image.ndim} indices per point (array axis order), got shape {idx.shape}"
        )
    return grid_index_to_lps(idx, image.spacing[: image.ndim], image.origin, image.direction)


def lps_to_index(image: Image, xyz: Any) -> np.ndarray:
    """Patient LPS mm -> continuous voxel index (array axis order); inverse of :func:`index_to_lps`.

    For 2D images the point is projected onto the image plane (least squares).

    >>> img = Image(np.zeros((2, 3, 4)), (5.0, 0.5, 0.5), (-10.0, -20.0, 30.0), np.eye(3), "CT", {}, "demo")
    >>> lps_to_index(img, (-5.0, -19.0, 31.0)).tolist()
    [1.0, 2.0, 2.0]
    """
    require_patient_frame(image)
    pts = np.asarray(xyz, dtype=np.float64)
    if pts.shape[-1:] != (3,):
        raise ParameterError("xyz", f"needs 3 LPS coordinates per point, got shape {pts.shape}")
    return grid_lps_to_index(pts, image.spacing[: image.ndim], image.origin, image.direction)
