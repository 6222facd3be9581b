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

import os
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from cds.errors import ImageReadError
from cds.images.dicom_header import check_pixel_header
from cds.images.dicom_image import DEFAULT_SLICE_GAP_TOLERANCE, image_from_datasets
from cds.images.image import Image
from cds.images.limits import (
    ImageLimits,
    check_file,
    check_under_root,
    content_kind,
    image_limits,
    read_head,
    special_file_kind,
)

__all__ = [
    "SeriesMismatchError",
    "check_identity",
    "read_dataset",
    "read_dicom_file",
    "read_dicom_folder",
    "DICOM_SUFFIXES",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and .7.1 - .7.4 (multi-frame SC)
#: File name endings that say "this is DICOM": such a file must hold DICOM, whatever else it looks like.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


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


def read_dataset(path: str | Path, headers_only: bool = False, limits: ImageLimits | None = None) -> Dataset:
    """``pydicom.dcmread`` with every failure (not DICOM, truncated, corrupt) as an ImageReadError naming ``path``.

    The file is checked first without opening it (:func:`cds.images.limits.check_file`: a regular,
    non-empty file, under ``limits.root`` when set, no larger than the per-image budget allows). A file
    with other content (PNG, JPEG, NIfTI...) is refused saying what it holds; sequences nested too deep
    for the parser are refused instead of raising RecursionError.

    >>> read_dataset("/no/such.dcm")
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /no/such.dcm: no such file or folder
    """
    path = Path(path)
    limits = limits or image_limits()
    where = str(path)
    st = check_file(path, limits.root)
    limits.check_file_size(where, st.st_size)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        kind = content_kind(read_head(path))
        if kind is not None:
            raise ImageReadError(where, f"not a DICOM file (content is {kind}, not DICOM)") from None
        raise ImageReadError(where, "not a DICOM file (no 'DICM' marker at byte 128)") from None
    except RecursionError:
        raise ImageReadError(where, "DICOM sequences nested too deep to read (a corrupt or hostile file)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises EOFError/OSError/ValueError/struct.error/...
        raise ImageReadError(where, f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    problem = _truncation(ds)  # before the conversion below: it reads the raw elements' lengths
    if problem:
        raise ImageReadError(where, f"truncated or corrupt DICOM file ({problem})")
    _convert_elements(ds, where)
    return ds


def _convert_elements(ds: Dataset, where: str) -> None:
    """Convert every top-level element now: pydicom does it on first access, so a corrupt one (an unknown
    VR, a UID that is not text) would otherwise raise later, from wherever the value is first used."""
    tag = None
    try:
        for dataset in (getattr(ds, "file_meta", None), ds):
            for tag in list(dataset.keys()) if dataset is not None else ():
                dataset[tag]
    except Exception as exc:  # noqa: BLE001 - NotImplementedError (unknown VR), TypeError, ValueError...
        name = f"{keyword_for_tag(tag) or 'element'} {tag}" if tag is not None else "an element"
        try:
            raw = getattr(dataset.get_item(tag), "value", None) if tag is not None else None
        except Exception:  # noqa: BLE001 - the raw element itself is unreadable
            raw = None
        shown = f" holds {raw[:40]!r}," if isinstance(raw, bytes) and len(raw) < 200 else ""
        raise ImageReadError(
            where, f"corrupt DICOM element: {name}{shown} which cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})",
        ) from None


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
    *,
    limits: ImageLimits | None = None,
) -> Image:
    """Read one DICOM file (single- or multi-frame); see :func:`check_identity` for the checks.

    ``limits`` (:func:`cds.images.limits.image_limits`): the pixel budget and cohort root; the pixel
    description is checked before decoding (:func:`cds.images.dicom_header.check_pixel_header`).

    >>> from pathlib import Path
    >>> f = Path("/work/shared/data/dicom-samples/CT_small.dcm")
    >>> read_dicom_file(f, modality="CT").shape if f.exists() else (1, 128, 128)
    (1, 128, 128)
    """
    path = Path(path)
    ds = read_dataset(path, limits=limits)
    check_identity(ds, str(path), series_uid, modality, reject_secondary_capture)
    return image_from_datasets([ds], source=str(path), sources=[str(path)], limits=limits)


def read_dicom_folder(
    folder: str | Path,
    series_uid: str | None = None,
    modality: str | None = None,
    reject_secondary_capture: bool = False,
    slice_gap_tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
    recursive: bool = True,
    *,
    limits: ImageLimits | None = None,
) -> Image:
    """Read one DICOM series from a folder (searched recursively unless ``recursive=False``).

    The series ``series_uid`` is read when given (a :class:`SeriesMismatchError` when the folder does
    not hold it, or when it has another modality than ``modality``); otherwise the largest series, of
    ``modality`` when given. Files that are not DICOM and DICOM objects without pixel data (SR, ECG) are
    skipped; ``meta["series_in_folder"]`` lists the series found (uid -> number of images).
    ``slice_gap_tolerance`` is passed to :func:`cds.images.dicom_image.image_from_datasets`.

    Nothing but regular files is opened: FIFOs, devices, sockets (and links to them) are skipped, links
    to subfolders are not followed, and with ``limits.root`` a link out of the root is refused. Each
    header's pixel description and claimed size are checked before the series is read in full, and the
    series' total against the series budget.

    >>> read_dicom_folder("/no/such/folder")
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /no/such/folder: not a folder (no such folder)
    """
    folder = Path(folder)
    limits = limits or image_limits()
    check_under_root(folder, limits.root)
    if not folder.is_dir():
        what = "a file; read it with read_dicom_file" if folder.exists() else "no such folder"
        raise ImageReadError(str(folder), f"not a folder ({what})")
    files, skipped = _list_files(folder, recursive, limits)
    if not files and not skipped:
        scope = "" if recursive else " directly in it (subfolders are not searched)"
        raise ImageReadError(str(folder), f"empty folder: no files{scope}, so no DICOM images")
    n_entries = len(files) + sum(len(names) for names in skipped.values())
    series = _scan(folder, files, skipped, limits)
    found = {uid: (len(items), str(items[0][1].get("Modality", ""))) for uid, items in series.items()}
    if not series:
        what = ", ".join(f"{len(names)} {why} (e.g. {names[0]})" for why, names in skipped.items())
        raise ImageReadError(str(folder), f"no DICOM image in folder ({n_entries} files: {what})")
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
    claimed = 0
    for p, ds in items:  # the header problems of the chosen series, before any pixel is read
        claimed += check_pixel_header(ds, str(p), limits, pixels_read=False)
    limits.check_series(str(folder), len(items), claimed)
    datasets = [read_dataset(p, limits=limits) for p, _ in items]
    image = image_from_datasets(
        datasets,
        source=str(folder),
        sources=[str(p) for p, _ in items],
        slice_gap_tolerance=slice_gap_tolerance,
        limits=limits,
    )
    image.meta["series_in_folder"] = {uid: n for uid, (n, _) in found.items()}
    return image


def _list_files(folder: Path, recursive: bool, limits: ImageLimits) -> tuple[list[Path], dict[str, list[str]]]:
    """The regular files in ``folder`` (hidden ones left out), and the entries skipped unopened, by reason.

    Uses ``lstat``/``stat`` only: a FIFO, device or socket, or a link to one, is skipped; a link whose
    target lies outside ``limits.root`` raises; links to folders are not followed (``os.walk``).
    """
    files: list[Path] = []
    skipped: dict[str, list[str]] = {}
    if recursive:
        entries = [
            Path(top) / name
            for top, dirs, names in os.walk(folder, followlinks=False)
            for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]
            if not name.startswith(".")
        ]
    else:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for p in sorted(entries):
        try:
            st = p.stat()
        except OSError:
            skipped.setdefault("broken links", []).append(str(p.relative_to(folder)))
            continue
        if p.is_dir():  # a subfolder is walked above when recursive; a link to one is not followed
            if p.is_symlink():
                skipped.setdefault("links to folders (not followed)", []).append(str(p.relative_to(folder)))
            continue
        if p.is_symlink():
            check_under_root(p, limits.root)
        kind = special_file_kind(st.st_mode)
        if kind is not None:
            skipped.setdefault(f"not a regular file ({kind}; not opened)", []).append(str(p.relative_to(folder)))
            continue
        if st.st_size == 0:
            skipped.setdefault("empty (0 bytes)", []).append(str(p.relative_to(folder)))
            continue
        files.append(p)
    return files, skipped


def _scan(
    folder: Path, files: list[Path], skipped: dict[str, list[str]], limits: ImageLimits
) -> dict[str, list[tuple[Path, Dataset]]]:
    """Headers of the image objects in ``files`` by SeriesInstanceUID; skipped files are added to ``skipped``."""
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for p in files:
        if p.name.upper() == "DICOMDIR":
            skipped.setdefault("DICOMDIR", []).append(str(p.relative_to(folder)))
            continue
        try:
            ds = read_dataset(p, headers_only=True, limits=limits)
        except ImageReadError as exc:
            if exc.reason.startswith("not a DICOM file"):
                skipped.setdefault("not DICOM", []).append(str(p.relative_to(folder)))
                continue
            raise
        if "Rows" not in ds:
            skipped.setdefault(f"no pixel data ({ds.get('Modality', '?')})", []).append(str(p.relative_to(folder)))
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((p, ds))
    return series
