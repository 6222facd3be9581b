"""``read_image``: one call for any place pixels are kept — a DICOM file or series folder, a DICOMweb
series URL, a NIfTI file, a PNG/JPEG picture — dispatched to the reader for it.

When the caller knows which series it wants (a cohort's ImagingStudy row names its SeriesInstanceUID
and Modality), pass them: a folder holding several series then reads that one, and a file, folder
or URL holding another series or modality raises :class:`~cds.images.dicom.SeriesMismatchError`
(an :class:`~cds.errors.ImageReadError`) naming the file and both values.

>>> read_image("/no/such/scan.dcm")
Traceback (most recent call last):
...
cds.errors.ImageReadError: /no/such/scan.dcm: no such file or folder
"""

from __future__ import annotations

import re
from pathlib import Path

from cds.errors import ImageReadError, ParameterError
from cds.images.dicom import SeriesMismatchError, read_dicom_file, read_dicom_folder
from cds.images.dicom_image import DEFAULT_SLICE_GAP_TOLERANCE
from cds.images.dicomweb import DicomWebSource
from cds.images.image import Image
from cds.images.nifti import NIFTI_SUFFIXES, read_nifti
from cds.images.pictures import looks_like_picture, read_picture

__all__ = ["read_image"]

_DICOMWEB_SERIES = re.compile(
    r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$"
)


def read_image(
    location: str | Path,
    series_uid: str | None = None,
    modality: str | None = None,
    *,
    reject_secondary_capture: bool = False,
    slice_gap_tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
) -> Image:
    """Read a DICOM file or series folder, a DICOMweb series URL, a NIfTI file or a PNG/JPEG picture.

    Parameters
    ----------
    location
        A file, a folder holding DICOM files (searched recursively), or a DICOMweb URL
        ``http(s)://host/dicom-web/studies/<uid>/series/<uid>``.
    series_uid
        The SeriesInstanceUID wanted. In a folder with several series this one is read (instead of
        the largest); a file or URL of another series raises. NIfTI and pictures record no series
        and are not checked.
    modality
        E.g. ``"CT"`` (case-insensitive): a DICOM object of another Modality raises; in a folder with
        several series (and no ``series_uid``) only series of this modality are candidates. NIfTI and
        pictures record no modality and are not checked.
    reject_secondary_capture
        With ``modality``: also refuse secondary captures (for models that need an original acquisition).
    slice_gap_tolerance
        How much (relative) a slice gap may differ from the median gap of a series before it is refused.

    Returns
    -------
    Image

    Raises
    ------
    cds.errors.ImageReadError
        Naming the file and the reason: missing, truncated, not DICOM, no pixel data, no codec for the
        transfer syntax, another series or modality than asked (:class:`~cds.images.dicom.SeriesMismatchError`),
        empty folder, inconsistent slice spacing, HTTP errors.
    cds.errors.ParameterError
        ``series_uid`` or ``modality`` is neither None nor a non-empty string.
    """
    series_uid = _wanted(series_uid, "series_uid")
    modality = _wanted(modality, "modality")
    text = str(location)
    match = _DICOMWEB_SERIES.match(text)
    if match:
        if series_uid is not None and match["series"] != series_uid:
            raise SeriesMismatchError(text, "SeriesInstanceUID", match["series"], series_uid)
        return DicomWebSource(match["base"]).read_series(
            match["study"],
            match["series"],
            modality=modality,
            reject_secondary_capture=reject_secondary_capture,
            slice_gap_tolerance=slice_gap_tolerance,
        )
    if re.match(r"^https?://", text):
        raise ImageReadError(
            text, "a DICOMweb URL must name a series: http(s)://host/.../studies/<uid>/series/<uid>"
        )
    path = Path(location)
    if path.is_dir():
        return read_dicom_folder(
            path, series_uid, modality, reject_secondary_capture, slice_gap_tolerance=slice_gap_tolerance
        )
    if not path.exists():
        raise ImageReadError(text, "no such file or folder")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    if looks_like_picture(path.name, _head(path, 132)):
        return read_picture(path)
    return read_dicom_file(path, series_uid, modality, reject_secondary_capture)


def _wanted(value: object, name: str) -> str | None:
    """None, or a stripped non-empty string; anything else is a caller's mistake (ParameterError)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(name, f"must be None or a non-empty string, got {value!r}")
    return value.strip()


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot open ({exc.strerror or exc})") from None
