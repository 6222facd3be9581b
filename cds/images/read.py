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

import logging
import re
from pathlib import Path

from cds.errors import CdsError, ImageReadError, ParameterError
from cds.images.dicom import DICOM_SUFFIXES, SeriesMismatchError, read_dicom_file, read_dicom_folder
from cds.images.dicom_image import DEFAULT_SLICE_GAP_TOLERANCE
from cds.images.dicomweb import DicomWebSource
from cds.images.image import Image
from cds.images.limits import ImageLimits, check_file, content_kind, image_limits, read_head
from cds.images.nifti import NIFTI_SUFFIXES, read_nifti
from cds.images.pictures import PICTURE_CONTENT, PICTURE_SUFFIXES, read_picture

__all__ = ["read_image"]

log = logging.getLogger(__name__)

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
    root: str | Path | None = None,
    max_bytes: int | float | str | None = None,
    max_series_bytes: int | float | str | None = None,
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
    root
        The cohort root: a local ``location`` (or a file in the folder) that resolves outside it, through
        ``..`` or a symlink, is refused. None: not checked. URLs are not affected.
    max_bytes, max_series_bytes
        The pixel budget: the decoded size (bytes) one image object and one series may claim in their
        headers; default ``$CDS_MAX_IMAGE_BYTES`` / ``$CDS_MAX_SERIES_BYTES`` or
        :data:`cds.images.limits.DEFAULT_MAX_IMAGE_BYTES` / ``DEFAULT_MAX_SERIES_BYTES``.

    Which reader: a folder is a DICOM series; a name ending ``.nii``/``.nii.gz`` is NIfTI, one ending
    ``.dcm``/``.dicom``/``.dic`` must hold DICOM (a PNG renamed ``.dcm`` is refused: "content is PNG,
    not DICOM"), a picture ending (``.png``, ``.jpg``...) is a picture; any other name is read by its
    content (PNG/JPEG/GIF/BMP/TIFF signature: a picture; else DICOM).

    Returns
    -------
    Image

    Raises
    ------
    cds.errors.ImageReadError
        Naming the file and the reason: missing, empty, not a regular file (FIFO, device, socket: refused
        without opening it), outside ``root``, truncated, not DICOM / other content than its name says, no
        pixel data, a pixel description that makes no sense, a claimed size over the budget, no codec
        for the transfer syntax, another series or modality than asked
        (:class:`~cds.images.dicom.SeriesMismatchError`), empty folder, inconsistent slice spacing,
        HTTP errors. Any other failure while reading is reported as an ImageReadError too.
    cds.errors.ParameterError
        ``series_uid`` or ``modality`` is neither None nor a non-empty string, or a budget is not a
        positive number of bytes.
    """
    series_uid = _wanted(series_uid, "series_uid")
    modality = _wanted(modality, "modality")
    limits = image_limits(max_bytes, max_series_bytes, root)
    text = str(location)
    try:
        return _read(text, location, series_uid, modality, reject_secondary_capture, slice_gap_tolerance, limits)
    except CdsError:
        raise
    except RecursionError:
        raise ImageReadError(text, "nested too deep to read (a corrupt or hostile file)") from None
    except Exception as exc:  # noqa: BLE001 - last resort: a reader defect on a hostile file is still named
        log.debug("unexpected failure reading an image", exc_info=True)
        raise ImageReadError(text, f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None


def _read(
    text: str,
    location: str | Path,
    series_uid: str | None,
    modality: str | None,
    reject_secondary_capture: bool,
    slice_gap_tolerance: float,
    limits: ImageLimits,
) -> Image:
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
            limits=limits,
        )
    if re.match(r"^https?://", text):
        raise ImageReadError(
            text, "a DICOMweb URL must name a series: http(s)://host/.../studies/<uid>/series/<uid>"
        )
    if not text.strip():
        raise ImageReadError(repr(text), "an empty location; give a file, a folder or a DICOMweb series URL")
    path = Path(location)
    check_file(path, limits.root, folder_ok=True)  # stat only: a FIFO or device is never opened
    if path.is_dir():
        return read_dicom_folder(
            path, series_uid, modality, reject_secondary_capture, slice_gap_tolerance=slice_gap_tolerance,
            limits=limits,
        )
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, limits=limits)
    if name.endswith(DICOM_SUFFIXES):
        return read_dicom_file(path, series_uid, modality, reject_secondary_capture, limits=limits)
    if name.endswith(PICTURE_SUFFIXES) or content_kind(read_head(path)) in PICTURE_CONTENT:
        return read_picture(path, limits=limits)
    return read_dicom_file(path, series_uid, modality, reject_secondary_capture, limits=limits)


def _wanted(value: object, name: str) -> str | None:
    """None, or a stripped non-empty string; anything else is a caller's mistake (ParameterError)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(name, f"must be None or a non-empty string, got {value!r}")
    return value.strip()
