"""DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store): a thin layer over dicomweb-client.

Searches return tidy pandas DataFrames; series come back as :class:`cds.images.image.Image` through the same
geometry code as files, so a Cohort's imaging table can hold either a path or a DICOMweb series URL
(``read_image("http://host/dicom-web/studies/<uid>/series/<uid>")``). Every network or HTTP failure
becomes a :class:`DicomWebError` naming the URL and the HTTP status.

>>> src = DicomWebSource("http://127.0.0.1:8042/dicom-web/")
>>> src.series_url("1.2.3", "4.5.6")
'http://127.0.0.1:8042/dicom-web/studies/1.2.3/series/4.5.6'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import requests
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSdecimal, DSfloat, PersonName

from cds.errors import ImageReadError, ParameterError
from cds.images.dicom import check_identity, read_dataset
from cds.images.dicom_image import DEFAULT_SLICE_GAP_TOLERANCE, image_from_datasets
from cds.images.image import Image
from cds.images.limits import ImageLimits

__all__ = ["DicomWebError", "DicomWebSource"]

T = TypeVar("T")

#: WADO-RS frames as uncompressed little-endian bytes (Orthanc answers HTTP 400 without this, see STACK.md).
FRAME_MEDIA_TYPES = (("application/octet-stream", "1.2.840.10008.1.2.1"),)
#: Instances in the transfer syntax they were stored in; decoded locally (no server-side transcoding,
#: which Orthanc cannot do for e.g. JPEG 2000 and answers with HTTP 500).
ORIGINAL_SYNTAX = (("application/dicom", "*"),)

_STUDY_ALIASES = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "study_date": "StudyDate",
    "study_uid": "StudyInstanceUID",
    "accession_number": "AccessionNumber",
    "modality": "ModalitiesInStudy",
    "modalities": "ModalitiesInStudy",
    "study_description": "StudyDescription",
}
_STUDY_FIELDS = [
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
_SERIES_FIELDS = ["SeriesDescription", "BodyPartExamined", "NumberOfSeriesRelatedInstances", "SeriesDate"]
_INSTANCE_FIELDS = ["Rows", "Columns", "NumberOfFrames", "InstanceNumber"]
_STORE_BATCH = 32


class DicomWebError(ImageReadError):
    """A DICOMweb request failed; ``where`` is the URL, ``status`` the HTTP status (None: no answer)."""

    def __init__(self, where: str, reason: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(where, reason)


def _value(ds: Dataset, keyword: str) -> Any:
    """A tidy scalar for a QIDO attribute: str / int / float, a comma-joined str for multi-values, or None."""
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return None
    if isinstance(elem, MultiValue | list | tuple):
        return ",".join(str(v) for v in elem) or None
    if isinstance(elem, PersonName):
        return str(elem) or None
    if isinstance(elem, IS):
        return int(elem)
    if isinstance(elem, DSfloat | DSdecimal):
        return float(elem)
    return elem if isinstance(elem, int | float) else str(elem)


def _no_bulk_data(tag: str, vr: str, uri: str) -> None:
    """Metadata answers point at bulk data (pixels, big private tags) by URI; we never fetch those."""
    return None


def _to_dataset(item: dict[str, Any]) -> Dataset:
    return Dataset.from_json(item, bulk_data_uri_handler=_no_bulk_data)


def _server_detail(response: requests.Response | None) -> str:
    """A short explanation from the server's error body (Orthanc sends JSON with Message/Details)."""
    if response is None:
        return ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = "; ".join(str(body[k]) for k in ("Message", "Details") if body.get(k))
    else:
        text = (response.text or "").strip()
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")


class DicomWebSource:
    """A DICOMweb service (Orthanc, dcm4chee, Google Healthcare API, ...).

    Parameters
    ----------
    url
        Base URL, e.g. ``http://127.0.0.1:8042/dicom-web``.
    timeout
        Seconds per HTTP request.
    headers
        Extra HTTP headers, e.g. ``{"Authorization": "Bearer ..."}``.
    session
        A ``requests.Session`` to use (for auth, proxies, retries).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ParameterError(
                "url", f"a DICOMweb base URL must start with http:// or https://, got {url!r}"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = headers
        self._session = session
        self._client: Any = None

    def __repr__(self) -> str:
        return f"DicomWebSource({self.url!r})"

    @property
    def client(self) -> Any:
        """The underlying ``dicomweb_client.DICOMwebClient`` (created on first use)."""
        if self._client is None:
            from dicomweb_client import DICOMwebClient

            self._client = DICOMwebClient(
                self.url, session=self._session, headers=self._headers, timeout=self.timeout
            )
            # retry only what servers mean as "try again" (429/503...), and not for half a minute
            self._client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)
        return self._client

    # ----------------------------------------------------------------------------- URLs and errors

    def study_url(self, study_uid: str) -> str:
        return f"{self.url}/studies/{study_uid}"

    def series_url(self, study_uid: str, series_uid: str) -> str:
        """The URL ``read_image`` accepts for this series (store it in a Cohort's imaging table)."""
        return f"{self.study_url(study_uid)}/series/{series_uid}"

    def _call(self, what: str, url: str, fn: Callable[[], T]) -> T:
        """Run a dicomweb-client call; turn transport/HTTP failures into DicomWebError naming URL and status."""
        try:
            return fn()
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            where = response.url if response is not None and response.url else url
            reason = (
                f"{what} failed: HTTP {status} {response.reason if response is not None else ''}".rstrip()
            )
            detail = _server_detail(response)
            raise DicomWebError(where, f"{reason} ({detail})" if detail else reason, status) from None
        except requests.ConnectionError as exc:
            raise DicomWebError(
                url, f"{what} failed: cannot connect to the DICOMweb server ({type(exc).__name__})"
            ) from None
        except requests.Timeout:
            raise DicomWebError(url, f"{what} failed: no answer within {self.timeout} s") from None
        except requests.RequestException as exc:
            raise DicomWebError(url, f"{what} failed: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # malformed answers or UIDs rejected by dicomweb-client
            raise DicomWebError(url, f"{what} failed: {exc}") from None

    # ----------------------------------------------------------------------------- QIDO-RS

    def search_studies(self, *, limit: int | None = None, **filters: Any) -> pd.DataFrame:
        """QIDO-RS study search.

        Filters are DICOM keywords (``PatientID="P1"``, ``StudyDate="20070101-20071231"``,
        ``ModalitiesInStudy="CT"``) or the aliases ``patient_id``, ``patient_name``, ``study_date``,
        ``study_uid``, ``accession_number``, ``modality``, ``study_description``.

        Returns
        -------
        pandas.DataFrame
            One row per study: study_uid, patient_id, patient_name, patient_sex, patient_birth_date,
            study_date, study_time, accession_number, study_description, modalities (e.g. ``"CR,CT"``),
            n_series, n_instances, url.
        """
        search = {_STUDY_ALIASES.get(k, k): v for k, v in filters.items()}
        items = self._call(
            "QIDO-RS study search",
            f"{self.url}/studies",
            lambda: self.client.search_for_studies(search_filters=search, fields=_STUDY_FIELDS, limit=limit),
        )
        rows = []
        for ds in map(_to_dataset, items):
            uid = _value(ds, "StudyInstanceUID")
            rows.append(
                {
                    "study_uid": uid,
                    "patient_id": _value(ds, "PatientID"),
                    "patient_name": _value(ds, "PatientName"),
                    "patient_sex": _value(ds, "PatientSex"),
                    "patient_birth_date": _value(ds, "PatientBirthDate"),
                    "study_date": _value(ds, "StudyDate"),
                    "study_time": _value(ds, "StudyTime"),
                    "accession_number": _value(ds, "AccessionNumber"),
                    "study_description": _value(ds, "StudyDescription"),
                    "modalities": _value(ds, "ModalitiesInStudy"),
                    "n_series": _value(ds, "NumberOfStudyRelatedSeries"),
                    "n_instances": _value(ds, "NumberOfStudyRelatedInstances"),
                    "url": self.study_url(uid) if uid else None,
                }
            )
        return pd.DataFrame(rows, columns=list(_study_columns()))

    def search_series(self, study_uid: str | None = None, **filters: Any) -> pd.DataFrame:
        """QIDO-RS series search in one study (or all studies when ``study_uid`` is None).

        Returns one row per series: study_uid, series_uid, patient_id, modality, series_number,
        series_description, body_part, series_date, n_instances, url (readable by ``read_image``).
        """
        where = f"{self.study_url(study_uid)}/series" if study_uid else f"{self.url}/series"
        items = self._call(
            "QIDO-RS series search",
            where,
            lambda: self.client.search_for_series(
                study_instance_uid=study_uid, search_filters=filters or None, fields=_SERIES_FIELDS
            ),
        )
        rows = []
        for ds in map(_to_dataset, items):
            st, se = _value(ds, "StudyInstanceUID") or study_uid, _value(ds, "SeriesInstanceUID")
            rows.append(
                {
                    "study_uid": st,
                    "series_uid": se,
                    "patient_id": _value(ds, "PatientID"),
                    "modality": _value(ds, "Modality"),
                    "series_number": _value(ds, "SeriesNumber"),
                    "series_description": _value(ds, "SeriesDescription"),
                    "body_part": _value(ds, "BodyPartExamined"),
                    "series_date": _value(ds, "SeriesDate"),
                    "n_instances": _value(ds, "NumberOfSeriesRelatedInstances"),
                    "url": self.series_url(st, se) if st and se else None,
                }
            )
        return pd.DataFrame(rows, columns=list(_series_columns()))

    def search_instances(self, study_uid: str, series_uid: str) -> pd.DataFrame:
        """QIDO-RS instance search in one series: sop_instance_uid, sop_class_uid, instance_number,
        rows, columns, n_frames, study_uid, series_uid, sorted by instance_number."""
        items = self._call(
            "QIDO-RS instance search",
            f"{self.series_url(study_uid, series_uid)}/instances",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, fields=_INSTANCE_FIELDS
            ),
        )
        rows = []
        for ds in map(_to_dataset, items):
            rows.append(
                {
                    "sop_instance_uid": _value(ds, "SOPInstanceUID"),
                    "sop_class_uid": _value(ds, "SOPClassUID"),
                    "instance_number": _value(ds, "InstanceNumber"),
                    "rows": _value(ds, "Rows"),
                    "columns": _value(ds, "Columns"),
                    "n_frames": _value(ds, "NumberOfFrames"),
                    "study_uid": _value(ds, "StudyInstanceUID") or study_uid,
                    "series_uid": _value(ds, "SeriesInstanceUID") or series_uid,
                }
            )
        frame = pd.DataFrame(rows, columns=list(_instance_columns()))
        return frame.sort_values("instance_number", kind="stable", na_position="last").reset_index(drop=True)

    # ----------------------------------------------------------------------------- WADO-RS

    def retrieve_series(
        self, study_uid: str, series_uid: str, media_types: tuple = ORIGINAL_SYNTAX
    ) -> list[Dataset]:
        """WADO-RS: all instances of a series as pydicom Datasets (by default in their stored transfer
        syntax, decoded locally)."""
        url = self.series_url(study_uid, series_uid)
        datasets = self._call(
            "WADO-RS series retrieve",
            url,
            lambda: self.client.retrieve_series(study_uid, series_uid, media_types=media_types),
        )
        if not datasets:
            raise DicomWebError(url, "WADO-RS series retrieve returned no instances", 404)
        return list(datasets)

    def read_series(
        self,
        study_uid: str,
        series_uid: str,
        modality: str | None = None,
        reject_secondary_capture: bool = False,
        slice_gap_tolerance: float = DEFAULT_SLICE_GAP_TOLERANCE,
        limits: ImageLimits | None = None,
    ) -> Image:
        """WADO-RS retrieve + the same geometry code as DICOM files (:func:`cds.images.dicom_image.image_from_datasets`).

        Every instance must belong to ``series_uid`` and (when given) have Modality ``modality``
        (:func:`cds.images.dicom.check_identity`), else a
        :class:`~cds.images.dicom.SeriesMismatchError` names the instance URL and both values. Each
        instance's pixel description and claimed size are checked against ``limits`` (default
        :func:`cds.images.limits.image_limits`) before anything is decoded.
        """
        url = self.series_url(study_uid, series_uid)
        datasets = self.retrieve_series(study_uid, series_uid)
        sources = [f"{url}/instances/{ds.get('SOPInstanceUID', i)}" for i, ds in enumerate(datasets)]
        for ds, where in zip(datasets, sources, strict=True):
            check_identity(ds, where, series_uid, modality, reject_secondary_capture)
        return image_from_datasets(
            datasets, source=url, sources=sources, slice_gap_tolerance=slice_gap_tolerance, limits=limits
        )

    def retrieve_frames(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, frame_numbers: Sequence[int] = (1,)
    ) -> list[np.ndarray]:
        """WADO-RS frame retrieval: stored pixel values (no rescale, no inversion) of 1-based frames,
        each ``(rows, cols)`` or ``(rows, cols, samples)``, shaped with the instance's metadata."""
        url = f"{self.series_url(study_uid, series_uid)}/instances/{sop_instance_uid}"
        frames = list(frame_numbers)
        if not frames or any(int(n) < 1 for n in frames):
            raise ParameterError("frame_numbers", f"1-based frame numbers are needed, got {frames}")
        meta_items = self._call(
            "WADO-RS instance metadata",
            f"{url}/metadata",
            lambda: self.client.retrieve_instance_metadata(study_uid, series_uid, sop_instance_uid),
        )
        meta = _to_dataset(meta_items[0] if isinstance(meta_items, list) else meta_items)
        raw = self._call(
            "WADO-RS frame retrieve",
            f"{url}/frames/{','.join(str(n) for n in frames)}",
            lambda: self.client.retrieve_instance_frames(
                study_uid, series_uid, sop_instance_uid, frame_numbers=frames, media_types=FRAME_MEDIA_TYPES
            ),
        )
        return [
            _frame_array(meta, payload, f"{url}/frames/{n}") for n, payload in zip(frames, raw, strict=False)
        ]

    # ----------------------------------------------------------------------------- STOW-RS

    def store(self, datasets_or_paths: Iterable[Dataset | str | Path]) -> pd.DataFrame:
        """STOW-RS: store DICOM instances (Datasets or file paths), in batches of 32.

        Returns
        -------
        pandas.DataFrame
            One row per instance: sop_instance_uid, source, stored (bool), reason (None when stored), url.
        """
        items = list(datasets_or_paths)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(items), _STORE_BATCH):
            batch = items[start : start + _STORE_BATCH]
            datasets, sources = [], []
            for item in batch:
                if isinstance(item, Dataset):
                    datasets.append(item)
                    sources.append(str(item.get("SOPInstanceUID", "dataset")))
                else:
                    datasets.append(read_dataset(Path(item)))
                    sources.append(str(item))
            response = self._call(
                "STOW-RS store", f"{self.url}/studies", lambda ds=datasets: self.client.store_instances(ds)
            )
            rows.extend(_stow_rows(response, datasets, sources))
        return pd.DataFrame(rows, columns=["sop_instance_uid", "source", "stored", "reason", "url"])


def _study_columns() -> tuple[str, ...]:
    return (
        "study_uid", "patient_id", "patient_name", "patient_sex", "patient_birth_date", "study_date",
        "study_time", "accession_number", "study_description", "modalities", "n_series", "n_instances", "url",
    )  # fmt: skip


def _series_columns() -> tuple[str, ...]:
    return (
        "study_uid", "series_uid", "patient_id", "modality", "series_number", "series_description",
        "body_part", "series_date", "n_instances", "url",
    )  # fmt: skip


def _instance_columns() -> tuple[str, ...]:
    return (
        "sop_instance_uid", "sop_class_uid", "instance_number", "rows", "columns", "n_frames",
        "study_uid", "series_uid",
    )  # fmt: skip


def _frame_array(meta: Dataset, payload: bytes, where: str) -> np.ndarray:
    try:
        rows, cols = int(meta.Rows), int(meta.Columns)
        bits = int(meta.BitsAllocated)
        samples = int(meta.get("SamplesPerPixel", 1))
        signed = int(meta.get("PixelRepresentation", 0)) == 1
        planar = int(meta.get("PlanarConfiguration", 0) or 0)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise DicomWebError(where, f"instance metadata lacks the pixel description ({exc})") from None
    if rows < 1 or cols < 1 or samples not in (1, 3) or bits not in (1, 8, 16, 32):
        raise DicomWebError(
            where, f"instance metadata describes no usable frame: Rows {rows}, Columns {cols}, "
            f"SamplesPerPixel {samples}, BitsAllocated {bits}",
        )
    count = rows * cols * samples
    need = (count + 7) // 8 if bits == 1 else count * bits // 8
    if len(payload) < need:
        raise DicomWebError(where, f"frame has {len(payload)} bytes, expected {need}")
    if bits == 1:
        arr = np.unpackbits(np.frombuffer(payload, np.uint8, count=need), bitorder="little")[:count]
    else:
        dtype = np.dtype({8: "u1", 16: "u2", 32: "u4"}[bits]).newbyteorder("<")
        if signed:
            dtype = np.dtype(dtype.str.replace("u", "i"))
        arr = np.frombuffer(payload, dtype, count=count)
    shape = (rows, cols, samples) if samples > 1 else (rows, cols)
    if planar == 1 and samples > 1:
        return arr.reshape(samples, rows, cols).transpose(1, 2, 0).copy()
    return arr.reshape(shape).copy()


def _stow_rows(response: Dataset, datasets: list[Dataset], sources: list[str]) -> list[dict[str, Any]]:
    ok = {str(it.get("ReferencedSOPInstanceUID")): it for it in response.get("ReferencedSOPSequence", [])}
    failed = {str(it.get("ReferencedSOPInstanceUID")): it for it in response.get("FailedSOPSequence", [])}
    rows = []
    for ds, src in zip(datasets, sources, strict=True):
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in ok:
            rows.append({"sop_instance_uid": uid, "source": src, "stored": True, "reason": None,
                         "url": str(ok[uid].get("RetrieveURL", "")) or None})  # fmt: skip
        elif uid in failed:
            code = failed[uid].get("FailureReason")
            reason = f"failure reason 0x{int(code):04X}" if code is not None else "failed"
            rows.append(
                {"sop_instance_uid": uid, "source": src, "stored": False, "reason": reason, "url": None}
            )
        else:
            rows.append({"sop_instance_uid": uid, "source": src, "stored": False,
                         "reason": "not listed in the STOW-RS response", "url": None})  # fmt: skip
    return rows
