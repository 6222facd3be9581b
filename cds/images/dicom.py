"""Read DICOM files and DICOM series folders, and check that what was read is the series asked for.

A folder may hold several series (and reports, DICOMDIRs, text files, which are skipped): one series
is read, the one named by ``series_uid`` or else the largest (of ``modality`` when given). When the
caller knows which series and modality it wants (a cohort's ImagingStudy row does), a file or series
with another SeriesInstanceUID or Modality raises :class:`SeriesMismatchError` naming the file and
both values, instead of silently running a model on another image.

>>> from pydicom.dataset import Dataset
>>> ds = Dataset()
>>> ds.SeriesInstanceUID, ds.Modality = "1.2.3", "CT"
>>> check_identity(ds, "scan.dcm", series_uid="1.2.3", modality="ct")
>>> check_identity(ds, "scan.dcm", modality="MR")
Traceback (most recent call last):
...
cds.images.dicom.SeriesMismatchError: scan.dcm: modality is CT, expected MR
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from cds.errors import ImageReadError
from cds.images.dicom_image import DEFAULT_SLICE_GAP_TOLERANCE, image_from_datasets
from cds.images.image import Image

__all__ = [
    "SeriesMismatchError",
    "check_identity",
    "read_dataset",
    "read_dicom_file",
    "read_dicom_folder",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and .7.1 - .7.4 (multi-frame SC)


class SeriesMismatchError(ImageReadError):
    """The file or series read is not the one asked for.

    ``attribute`` is the DICOM keyword that differs (``SeriesInstanceUID``, ``Modality`` or
    ``SOPClassUID`` for a secondary capture where an original acquisition was asked for);
    ``found`` and ``expected`` are its two values.

    >>> err = SeriesMismatchError("a.dcm", "Modality", "MR", "CT")
    >>> str(err), err.found, err.expected
    ('a.dcm: modality is MR, expected CT', 'MR', 'CT')
    """

    def __init__(self, where: str, attribute: str, found: Any, expected: str, reason: str | None = None) -> None:
        self.attribute, self.found, self.expected = attribute, found, expected
        if reason is None:
            label = "modality" if attribute == "Modality" else attribute
            reason = f"{label} is {found or 'unset'}, expected {expected}"
        super().__init__(where, reason)


def check_identity(
    ds: Dataset,
    where: str,
    series_uid: str | None = None,
    modality: str | None = None,
    reject_secondary_capture: bool = False,
) -> None:
    """Raise :class:`SeriesMismatchError` when ``ds`` is not of series ``series_uid`` / modality ``modality``.

    Modality is compared case-insensitively. With ``reject_secondary_capture`` (models that need an
    original acquisition), a secondary capture is refused even when its Modality matches.
    None means "not checked".
    """
    if series_uid is not None:
        found = str(ds.get("SeriesInstanceUID", "") or "")
        if found != series_uid:
            raise SeriesMismatchError(where, "SeriesInstanceUID", found, series_uid)
    if modality is None:
        return
    found_modality = str(ds.get("Modality", "") or "")
    sop_class = str(ds.get("SOPClassUID", ""))
    if reject_secondary_capture and sop_class.startswith(SECONDARY_CAPTURE):
        raise SeriesMismatchError(
            where,
            "SOPClassUID",
            sop_class,
            modality,
            f"secondary capture ({UID(sop_class).name}, modality {found_modality or 'unset'}), "
            f"not an original {modality} acquisition",
        )
    if found_modality.upper() != modality.upper():
        raise SeriesMismatchError(where, "Modality", found_modality, modality)


def read_dataset(path: str | Path, headers_only: bool = False) -> Dataset:
    """``pydicom.dcmread`` with every failure (not DICOM, truncated, corrupt) as an ImageReadError naming ``path``.

    >>> read_dataset("/no/such.dcm")
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /no/such.dcm: truncated or corrupt DICOM file (FileNotFoundError: [Errno 2] No such file or directory: '/no/such.dcm')
    """
    path = Path(path)
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


def read_dicom_file(
    path: str | Path,
    series_uid: str | None = None,
    modality: str | None = None,
    reject_secondary_capture: bool = False,
) -> Image:
    """Read one DICOM file (single- or multi-frame); see :func:`check_identity` for the checks.

    >>> from pathlib import Path
    >>> f = Path("/work/shared/data/dicom-samples/CT_small.dcm")
    >>> read_dicom_file(f, modality="CT").shape if f.exists() else (1, 128, 128)
    (1, 128, 128)
    """
    path = Path(path)
    ds = read_dataset(path)
    check_identity(ds, str(path), series_uid, modality, reject_secondary_capture)
    return image_from_datasets([ds], source=str(path), sources=[str(path)])


def read_dicom_folder(
    folder: str | Path,
    series_uid: str | None = None,
    modality: str | None = None,
    reject_secondary_capture: bool = False,
    slice_gap_tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
    recursive: bool = True,
) -> Image:
    """Read one DICOM series from a folder (searched recursively unless ``recursive=False``).

    The series ``series_uid`` is read when given (a :class:`SeriesMismatchError` when the folder does
    not hold it, or when it has another modality than ``modality``); otherwise the largest series, of
    ``modality`` when given. Files that are not DICOM and DICOM objects without pixel data (SR, ECG) are
    skipped; ``meta["series_in_folder"]`` lists the series found (uid -> number of images).
    ``slice_gap_tolerance`` is passed to :func:`cds.images.dicom_image.image_from_datasets`.

    >>> read_dicom_folder("/no/such/folder")
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /no/such/folder: not a folder (no such folder)
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "a file; read it with read_dicom_file" if folder.exists() else "no such folder"
        raise ImageReadError(str(folder), f"not a folder ({what})")
    walk = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in walk if p.is_file() and not p.name.startswith("."))
    if not files:
        scope = "" if recursive else " directly in it (subfolders are not searched)"
        raise ImageReadError(str(folder), f"empty folder: no files{scope}, so no DICOM images")
    series, skipped = _scan(folder, files)
    found = {uid: (len(items), str(items[0][1].get("Modality", ""))) for uid, items in series.items()}
    if not series:
        what = ", ".join(f"{len(names)} {why} (e.g. {names[0]})" for why, names in skipped.items())
        raise ImageReadError(str(folder), f"no DICOM image in folder ({len(files)} files: {what})")
    if series_uid is not None:
        if series_uid not in series:
            listing = {uid: f"{n} {mod or '?'}" for uid, (n, mod) in found.items()}
            raise SeriesMismatchError(
                str(folder),
                "SeriesInstanceUID",
                sorted(series),
                series_uid,
                f"series {series_uid} not in folder; series found: {listing}",
            )
        chosen = series_uid
    else:
        candidates = [
            uid
            for uid in series
            if modality is None
            or (
                found[uid][1].upper() == modality.upper()
                and not (
                    reject_secondary_capture
                    and str(series[uid][0][1].get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE)
                )
            )
        ]
        if not candidates:  # raise about the largest series, naming one of its files
            largest = series[max(series, key=lambda u: (found[u][0], u))][0]
            check_identity(largest[1], str(largest[0]), None, modality, reject_secondary_capture)
        chosen = max(candidates, key=lambda u: (found[u][0], u))
    items = series[chosen]
    check_identity(items[0][1], str(items[0][0]), series_uid, modality, reject_secondary_capture)
    datasets = [read_dataset(p) for p, _ in items]
    image = image_from_datasets(
        datasets, source=str(folder), sources=[str(p) for p, _ in items], slice_gap_tolerance=slice_gap_tolerance
    )
    image.meta["series_in_folder"] = {uid: n for uid, (n, _) in found.items()}
    return image


def _scan(folder: Path, files: list[Path]) -> tuple[dict[str, list[tuple[Path, Dataset]]], dict[str, list[str]]]:
    """Headers of the image objects in ``files`` by SeriesInstanceUID, and the skipped files by reason."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: dict[str, list[str]] = {}
    for p in files:
        if p.name.upper() == "DICOMDIR":
            skipped.setdefault("DICOMDIR", []).append(str(p.relative_to(folder)))
            continue
        try:
            ds = read_dataset(p, headers_only=True)
        except ImageReadError as exc:
            if exc.reason.startswith("not a DICOM file"):
                skipped.setdefault("not DICOM", []).append(str(p.relative_to(folder)))
                continue
            raise
        if "Rows" not in ds:
            skipped.setdefault(f"no pixel data ({ds.get('Modality', '?')})", []).append(str(p.relative_to(folder)))
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((p, ds))
    return series, skipped

