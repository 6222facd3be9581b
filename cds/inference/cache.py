"""The cohort result cache: one SQLite file of model answers, keyed by what each answer depends on.

A cohort run (:meth:`cds.models.registry.ModelRegistry.run`) gives, per (imaging series, model), either a
list of :class:`~cds.finding.Finding` (possibly empty) or one :class:`~cds.finding.Failure`. The cache
stores that answer under a :class:`CacheKey`: study UID, series UID, model id, model version and
``inputs``, a hash of the pixel data and EHR inputs the model used (:func:`input_hash`). So

* a re-run reuses every stored answer;
* a changed image, EHR value or model version gives a new key: only that answer is computed again;
* a run killed half-way resumes: each answer is committed as it is put;
* a corrupt entry (its payload no longer matches its sha256 checksum, or cannot be decoded) is
  detected, deleted and recomputed, never served;
* several processes (decode workers, Dask workers on one machine) may write the same file.

The on-disk format (schema, key, checksum, schema version, concurrency, how to inspect it with the
``sqlite3`` command line) is documented in ``docs/result-cache.md``; the report, the explorer and the
CDS Hooks service read the same file through :meth:`ResultCache.for_patient` and
:meth:`ResultCache.for_study`.

>>> import tempfile, pathlib
>>> from cds.finding import Finding
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> key = CacheKey("1.2.3", "1.2.3.4", "pneumonia", "1.0.0", input_hash(b"pixels", {"age": 70}))
>>> f = Finding("p1", "1.2.3", "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
...             probability=0.8, threshold=0.5, series_uid="1.2.3.4")
>>> with ResultCache(tmp / "results.sqlite") as cache:
...     cache.put(key, "p1", [f], runtime_s=0.2)
...     entry = cache.get(key)
...     entry.findings == [f], entry.failure, len(cache), cache.stats["hits"]
(True, None, 1, 1)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

import numpy as np

from cds.errors import CdsError, ImageReadError, ParameterError
from cds.finding import Failure, Finding

__all__ = ["SCHEMA_VERSION", "APPLICATION_ID", "FORMAT_NAME", "CacheKey", "CacheEntry", "ResultCache",
           "input_hash", "file_fingerprint", "content_hash", "cacheable_failure", "canonical_json"]

log = logging.getLogger(__name__)

#: Version of the table layout and payload format; a file with a higher ``PRAGMA user_version`` is refused.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a cds result cache ("CDSR" as a big-endian 32-bit integer).
APPLICATION_ID = 0x43445352
#: The ``format`` value of the ``meta`` table.
FORMAT_NAME = "cds-result-cache"
#: Bytes read at a time by :func:`content_hash`.
CHUNK = 1 << 20

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key_digest    TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    series_uid    TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    model_version TEXT NOT NULL,
    inputs        TEXT NOT NULL,
    patient_id    TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('findings', 'failure')),
    n_findings    INTEGER NOT NULL,
    payload       TEXT NOT NULL,
    checksum      TEXT NOT NULL,
    created       TEXT NOT NULL,
    runtime_s     REAL
);
CREATE INDEX IF NOT EXISTS results_patient ON results (patient_id, model_id);
CREATE INDEX IF NOT EXISTS results_study ON results (study_uid, series_uid, model_id);
CREATE INDEX IF NOT EXISTS results_model ON results (model_id, model_version);
"""

_COLUMNS = ("key_digest, study_uid, series_uid, model_id, model_version, inputs, patient_id, kind, n_findings, "
            "payload, checksum, created, runtime_s")


# --------------------------------------------------------------------------------------------- hashing


def _plain(obj: Any, where: str, arrays: str) -> Any:
    """``obj`` as JSON types, the same for equal values whatever their Python/numpy/pandas type.

    ``arrays="hash"`` stands an ndarray in by its dtype, shape and sha256 (for keys); ``"list"`` by its values.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, enum.Enum):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, np.generic):
        if isinstance(obj, np.datetime64):
            return None if np.isnat(obj) else str(np.datetime_as_string(obj))
        if isinstance(obj, np.timedelta64):
            return None if np.isnat(obj) else {"__timedelta_ns__": int(obj.astype("timedelta64[ns]").astype(np.int64))}
        return _plain(obj.item(), where, arrays)
    if type(obj).__name__ in ("NaTType", "NAType"):  # pandas missing values, without importing pandas
        return None
    if isinstance(obj, _dt.timedelta):  # also pandas.Timedelta
        return {"__timedelta_ns__": round(obj.total_seconds() * 1e9) if not hasattr(obj, "value") else int(obj.value)}
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):  # also pandas.Timestamp
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where, arrays)
    if isinstance(obj, decimal.Decimal):
        return {"__decimal__": str(obj)}
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"__bytes_sha256__": hashlib.sha256(bytes(obj)).hexdigest()}
    if isinstance(obj, np.ndarray):
        if arrays == "list":
            return _plain(obj.tolist(), where, arrays)
        return {"__ndarray_sha256__": _array_digest(obj, where)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]", arrays) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        items = [_plain(v, where, arrays) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, allow_nan=True))
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", arrays) for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), where, arrays)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict(), where, arrays)
    raise ParameterError(where, f"a {type(obj).__name__} value cannot be written as canonical JSON")


def canonical_json(obj: Any, where: str = "value", *, arrays: str = "hash") -> str:
    """``obj`` as canonical JSON: sorted keys, no spaces, numpy scalars as Python numbers, dates as ISO
    text, pandas NaT/NA as null, NaN as ``NaN`` (deterministic, never equal to a string), sets sorted.

    >>> canonical_json({"b": np.float32(0.5), "a": [1, float("nan")], "d": _dt.date(2020, 1, 2)})
    '{"a":[1,NaN],"b":0.5,"d":"2020-01-02"}'
    """
    return json.dumps(_plain(obj, where, arrays), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True)


def _frame(h: Any, tag: bytes, data: bytes | memoryview, size: int | None = None) -> None:
    """Feed one tagged, length-prefixed part to ``h`` (so no two different inputs share a byte stream)."""
    n = len(data) if size is None else size
    h.update(tag + b"\0" + str(n).encode() + b"\0")
    h.update(data)


def _array_header(arr: np.ndarray, where: str) -> tuple[np.ndarray, bytes]:
    if arr.dtype.hasobject:
        raise ParameterError(where, "an object array cannot be hashed; pass a numeric array or its bytes")
    if arr.dtype.fields is None and arr.dtype.byteorder != "|":
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # equal values give equal bytes
        descr = arr.dtype.str
    else:
        descr = arr.dtype.str if arr.dtype.fields is None else repr(arr.dtype.descr)
    arr = np.ascontiguousarray(arr)
    header = json.dumps({"dtype": descr, "shape": list(arr.shape)}, sort_keys=True).encode()
    return arr, header


def _update_array(h: Any, arr: np.ndarray) -> None:
    try:
        _frame(h, b"data", arr.data, arr.nbytes)
    except (TypeError, ValueError):  # dtypes without a buffer format (datetime64)
        _frame(h, b"data", arr.tobytes())


def _array_digest(arr: np.ndarray, where: str) -> str:
    arr, header = _array_header(arr, where)
    h = hashlib.sha256()
    _frame(h, b"array", header)
    _update_array(h, arr)
    return h.hexdigest()


def input_hash(pixels: np.ndarray | bytes | None, ehr: Mapping[str, Any] | None,
               extra: Mapping[str, Any] | None = None) -> str:
    """The sha256 (hex) of a model's inputs: the ``inputs`` part of a :class:`CacheKey`.

    Hashed in order: the pixel array's dtype (little-endian), shape and C-contiguous bytes (or raw
    ``bytes``; nothing for None), then the canonical JSON (:func:`canonical_json`) of ``ehr``, then
    of ``extra`` (thresholds, options, the digests of the pixel files...). Equal values give equal
    hashes whatever the memory layout or byte order of the array and whatever the numeric type
    (``numpy.int64(70)`` or ``70``) of an EHR value.

    >>> a = np.zeros((2, 3), np.uint8)
    >>> h = input_hash(a, {"age": 70, "sex": "F"})
    >>> len(h), h == input_hash(np.asfortranarray(a), {"sex": "F", "age": np.int64(70)})
    (64, True)
    >>> b = a.copy(); b[1, 2] = 1
    >>> input_hash(b, {"age": 70, "sex": "F"}) == h, input_hash(a, {"age": 71, "sex": "F"}) == h
    (False, False)
    >>> input_hash(a, {"age": 70, "sex": "F"}, {"threshold": 0.5}) == h
    False
    """
    h = hashlib.sha256(b"cds-input-hash/1\0")
    if pixels is None:
        _frame(h, b"none", b"")
    elif isinstance(pixels, np.ndarray):
        arr, header = _array_header(pixels, "pixels")
        _frame(h, b"array", header)
        _update_array(h, arr)
    elif isinstance(pixels, (bytes, bytearray, memoryview)):
        _frame(h, b"bytes", bytes(pixels))
    else:
        raise ParameterError("pixels", f"expected a numpy array, bytes or None, got a {type(pixels).__name__}")
    _frame(h, b"ehr", canonical_json(dict(ehr) if ehr is not None else None, "ehr").encode())
    _frame(h, b"extra", canonical_json(dict(extra) if extra is not None else None, "extra").encode())
    return h.hexdigest()


def file_fingerprint(paths: Sequence[str | Path]) -> str:
    """A cheap "has any of these files changed?" key: sha256 over each file's resolved path, size and
    ``mtime_ns``, in the order given. It does not read the files, so a file rewritten with the same
    size and mtime is not noticed; the content hash is :func:`content_hash` (file bytes) or
    :func:`input_hash` (decoded pixels).

    >>> file_fingerprint([]) == file_fingerprint([])
    True
    """
    h = hashlib.sha256(b"cds-file-fingerprint/1\0")
    for p in paths:
        q = Path(p).resolve()
        try:
            st = q.stat()
        except OSError as exc:
            raise ImageReadError(str(p), f"cannot stat the file to key it ({exc.strerror or exc})") from exc
        _frame(h, b"file", json.dumps([str(q), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def content_hash(paths: Sequence[str | Path]) -> str:
    """sha256 over the bytes of each file, in the order given, read :data:`CHUNK` (1 MiB) at a time.
    Names and times do not count: a copied or touched file hashes the same.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.dcm"; _ = p.write_bytes(b"DICM")
    >>> content_hash([p]) == content_hash([str(p)]), content_hash([p]) == content_hash([])
    (True, False)
    """
    h = hashlib.sha256(b"cds-content-hash/1\0")
    for p in paths:
        try:
            with open(p, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                h.update(b"file\0" + str(size).encode() + b"\0")
                n = 0
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                h.update(b"\0end\0" + str(n).encode() + b"\0")  # a file that grew while read hashes differently
        except OSError as exc:
            raise ImageReadError(str(p), f"cannot read the file to hash it ({exc.strerror or exc})") from exc
    return h.hexdigest()


# --------------------------------------------------------------------------------------- what is cached

#: ``Failure.error`` names that, with state ``failed``, are outcomes of the inputs alone (cacheable).
DETERMINISTIC_ERRORS = frozenset({"ImageReadError", "ModelInputError", "FhirInputError", "ParameterError",
                                  "NoAnswer"})
#: Words in ``Failure.error`` / ``Failure.message`` that suggest a cause outside the inputs (not cacheable).
TRANSIENT_HINTS = ("timeout", "timed out", "time limit", "connection", "connect", "oserror", "ioerror",
                   "brokenpipe", "broken pipe", "reset by peer", "temporarily", "try again", "unavailable",
                   "unreachable", "network", "socket", "errno", "permission denied", "out of memory",
                   "memoryerror", "outofmemory", "interrupted", "cancelled", "http 5", "http 429", "too many",
                   "database is locked", "resource busy", "no space left")


def cacheable_failure(failure: Failure) -> bool:
    """Whether a Failure is a deterministic outcome of its inputs, so may be stored and reused.

    ``record-mismatch``, ``input-rejected`` and ``outside-intended-use`` are decided by the pixels and
    the record (both in the key): True. A ``failed`` study is cacheable only when its error is one of
    :data:`DETERMINISTIC_ERRORS` (an unreadable file, a missing declared input) and neither error nor
    message suggests a transient cause (:data:`TRANSIENT_HINTS`: timeouts, OSError, connection or
    memory errors). Anything else (a bug, a GPU error) is computed again on the next run.

    >>> cacheable_failure(Failure("p", "1.2", "m", "InputQualityError", "blank image", state="input-rejected"))
    True
    >>> cacheable_failure(Failure("p", "1.2", "m", "StudyTimeLimitError", "1.2: ran past 60 s"))
    False
    >>> cacheable_failure(Failure("p", "1.2", "m", "ImageReadError", "a.dcm: connection reset by peer"))
    False
    >>> cacheable_failure(Failure("p", "1.2", "m", "ImageReadError", "a.dcm: no pixel data"))
    True
    """
    if failure.state != "failed":
        return True
    if failure.error not in DETERMINISTIC_ERRORS:
        return False
    text = f"{failure.error} {failure.message}".lower()
    return not any(hint in text for hint in TRANSIENT_HINTS)


@dataclass(frozen=True)
class CacheKey:
    """What one answer depends on: the series, the model id and version, and ``inputs``
    (:func:`input_hash` of the pixels and EHR values used).

    >>> k = CacheKey("1.2", "1.2.3", "pneumonia", "1.0.0", "ab" * 32)
    >>> len(k.digest()), k.digest() == CacheKey("1.2", "1.2.3", "pneumonia", "1.0.1", "ab" * 32).digest()
    (64, False)
    """

    study_uid: str
    series_uid: str
    model_id: str
    model_version: str
    inputs: str

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, str):
                raise ParameterError(f"CacheKey.{f.name}", f"expected text, got a {type(v).__name__}")
        for name in ("study_uid", "model_id", "model_version", "inputs"):
            if not getattr(self, name):
                raise ParameterError(f"CacheKey.{name}", "must not be empty")

    def as_list(self) -> list[str]:
        """The five fields in order (the ``key`` of a stored payload)."""
        return [self.study_uid, self.series_uid, self.model_id, self.model_version, self.inputs]

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON list of the five fields: the row's primary key."""
        return hashlib.sha256(json.dumps(self.as_list(), separators=(",", ":")).encode()).hexdigest()


@dataclass
class CacheEntry:
    """One stored answer: Findings (possibly none) or a Failure, with who it is for and when it was made."""

    key: CacheKey
    patient_id: str
    findings: list[Finding]
    failure: Failure | None
    created: str
    runtime_s: float | None = None


class _Corrupt(Exception):
    """A row whose payload does not verify (internal)."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


# ------------------------------------------------------------------------------------------ the cache


class ResultCache:
    """The result cache file (see the module docstring and ``docs/result-cache.md``).

    ``path`` is created (with its parent folder) when missing. ``readonly=True`` opens an existing file
    without writing (a corrupt row is then skipped, not deleted). ``timeout_s`` is how long a write
    waits for another process's lock (SQLite ``busy_timeout``) before it is retried, with backoff,
    for about as long again. ``stats`` counts this object's ``hits``, ``misses`` (which include
    ``corrupt`` entries found by :meth:`get`), ``corrupt``, ``puts`` and ``skipped`` (transient
    failures not stored, see :func:`cacheable_failure`).

    A ResultCache may be used from several threads, pickled to another process (it reopens the file
    there) and used after a fork (it reopens the file in the child).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout_s: float = 30.0) -> None:
        if not isinstance(path, (str, PurePath)) or not str(path):
            raise ParameterError("path", f"expected a file path, got {path!r}")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ParameterError("timeout_s", f"{timeout_s!r}: expected a positive number of seconds")
        self.path = Path(path).expanduser()
        self.readonly = bool(readonly)
        self.timeout_s = float(timeout_s)
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "corrupt": 0, "puts": 0, "skipped": 0}
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._open()

    # -- opening

    def _refuse(self, reason: str) -> ParameterError:
        return ParameterError("path", f"{self.path}: {reason}")

    def _open(self) -> None:
        if self.path.is_dir():
            raise self._refuse("is a folder, expected a result cache file")
        if self.readonly:
            if not self.path.is_file():
                raise self._refuse("no such result cache (opened read-only, so it is not created)")
            target, uri = self.path.resolve().as_uri() + "?mode=ro", True
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._refuse(f"cannot create its folder ({exc.strerror or exc})") from exc
            target, uri = str(self.path), False
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._refuse(f"cannot open it as SQLite ({exc})") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            self._retry(lambda: self._check_or_create(conn))
            if not self.readonly:
                self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._refuse(f"not a cds result cache ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()

    def _check_or_create(self, conn: sqlite3.Connection) -> None:
        app, version = self._header(conn)
        if app == APPLICATION_ID:
            self._check_version(conn, version)
            return
        n_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app != 0 or version != 0 or n_objects:
            raise self._refuse(f"not a cds result cache (SQLite application_id {app:#x}, {n_objects} tables "
                               "or indexes of another program); choose another file")
        if self.readonly:
            raise self._refuse("an empty SQLite file, not a cds result cache (opened read-only)")
        conn.execute("BEGIN IMMEDIATE")
        try:
            app, version = self._header(conn)  # another process may have created it meanwhile
            if app == 0 and not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(stmt)
                import cds

                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [
                    ("format", FORMAT_NAME), ("schema_version", str(SCHEMA_VERSION)), ("created", _utc_now()),
                    ("cds_version", cds.__version__), ("docs", "docs/result-cache.md")])
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        app, version = self._header(conn)
        if app != APPLICATION_ID:
            raise self._refuse("not a cds result cache (another program wrote it while it was being created)")
        self._check_version(conn, version)

    @staticmethod
    def _header(conn: sqlite3.Connection) -> tuple[int, int]:
        return (int(conn.execute("PRAGMA application_id").fetchone()[0]),
                int(conn.execute("PRAGMA user_version").fetchone()[0]))

    def _check_version(self, conn: sqlite3.Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise self._refuse(f"written by a newer cds (result cache schema version {version}, this cds reads "
                               f"up to {SCHEMA_VERSION}); upgrade cds or use another cache file")
        if version < SCHEMA_VERSION:
            raise self._refuse(f"result cache schema version {version} is older than {SCHEMA_VERSION} and cannot "
                               "be upgraded; delete the file (it is only a cache) or use another one")
        row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or row[0] != FORMAT_NAME:
            raise self._refuse("not a cds result cache (its meta table does not name the format)")

    # -- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CdsError(f"{self.path}: the result cache is closed")
        if self._pid != os.getpid():  # forked: a SQLite connection must not cross a fork
            self._conn = None
            self._open()
        assert self._conn is not None
        return self._conn

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying with jittered backoff while the file is locked by another process."""
        deadline: float | None = None  # set by the first "locked": busy_timeout has been waited once already
        delay = 0.02
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.timeout_s
                elif now > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self.readonly:
            raise ParameterError("readonly", f"{self.path}: the result cache was opened read-only")
        with self._lock:
            conn = self._db()

            def attempt() -> _T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return out

            return self._retry(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._db()
            return self._retry(lambda: conn.execute(sql, params).fetchall())

    # -- encoding

    @staticmethod
    def _payload(key: CacheKey, patient_id: str, findings: Sequence[Finding], failure: Failure | None,
                 created: str, runtime_s: float | None) -> tuple[str, str]:
        body = {"v": SCHEMA_VERSION, "key": key.as_list(), "patient_id": patient_id,
                "findings": [f.to_dict() for f in findings], "failure": failure.to_dict() if failure else None,
                "created": created, "runtime_s": runtime_s}
        text = canonical_json(body, "findings", arrays="list")
        return text, hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _decode(self, row: tuple[Any, ...]) -> CacheEntry:
        (digest, study, series, model, version, inputs, patient, kind, n_findings, payload, checksum,
         _created, _runtime) = row
        data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != checksum:
            raise _Corrupt("checksum mismatch")
        try:
            body = json.loads(data.decode("utf-8"))
            key = CacheKey(*body["key"])
            if (key.digest() != digest or key.as_list() != [study, series, model, version, inputs]
                    or body["patient_id"] != patient or body["v"] != SCHEMA_VERSION):
                raise _Corrupt("payload does not match its row")
            findings = [Finding.from_dict(d) for d in body["findings"]]
            failure = Failure.from_dict(body["failure"]) if body["failure"] is not None else None
            if len(findings) != n_findings or kind != ("failure" if failure else "findings"):
                raise _Corrupt("payload does not match its row")
            runtime = body.get("runtime_s")
            return CacheEntry(key, patient, findings, failure, str(body["created"]),
                              float(runtime) if runtime is not None else None)
        except _Corrupt:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, ParameterError) as exc:
            raise _Corrupt(f"undecodable payload ({type(exc).__name__})") from exc

    def _verify(self, rows: Iterable[tuple[Any, ...]]) -> list[CacheEntry]:
        """The entries of rows that verify; the others are counted, logged and deleted."""
        good: list[CacheEntry] = []
        for row in rows:
            try:
                good.append(self._decode(row))
            except _Corrupt as exc:
                self._drop(row[0], row[10], row[3], str(exc))
        return good

    def _drop(self, digest: str, checksum: Any, model_id: Any, reason: str) -> None:
        self.stats["corrupt"] += 1
        # no patient id or UID in the log: the key digest names the row
        log.warning("result cache %s: entry %s (model %s) is corrupt (%s); it is %s and will be recomputed",
                    self.path.name, str(digest)[:16], model_id, reason,
                    "skipped" if self.readonly else "deleted")
        if not self.readonly:
            self._write(lambda c: c.execute("DELETE FROM results WHERE key_digest = ? AND checksum IS ?",
                                            (digest, checksum)))

    # -- public API

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The stored answer for ``key``, or None (a miss, or a corrupt entry, which is deleted)."""
        if not isinstance(key, CacheKey):
            raise ParameterError("key", f"expected a CacheKey, got a {type(key).__name__}")
        rows = self._read(f"SELECT {_COLUMNS} FROM results WHERE key_digest = ?", (key.digest(),))
        entries = self._verify(rows)
        if entries and entries[0].key == key:
            self.stats["hits"] += 1
            return entries[0]
        self.stats["misses"] += 1
        return None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, CacheKey):
            return False
        return bool(self._read("SELECT 1 FROM results WHERE key_digest = ?", (key.digest(),)))

    def _row(self, key: CacheKey, patient_id: str, findings: Sequence[Finding], failure: Failure | None,
             runtime_s: float | None) -> tuple[Any, ...] | None:
        if not isinstance(key, CacheKey):
            raise ParameterError("key", f"expected a CacheKey, got a {type(key).__name__}")
        if not isinstance(patient_id, str) or not patient_id:
            raise ParameterError("patient_id", "expected a non-empty text")
        findings = list(findings)
        bad = [type(f).__name__ for f in findings if not isinstance(f, Finding)]
        if bad:
            raise ParameterError("findings", f"expected Findings, got {', '.join(sorted(set(bad)))}")
        if failure is not None and not isinstance(failure, Failure):
            raise ParameterError("failure", f"expected a Failure or None, got a {type(failure).__name__}")
        if failure is not None and findings:
            raise ParameterError("failure", "an answer is either Findings or one Failure, not both")
        if runtime_s is not None and not (isinstance(runtime_s, (int, float)) and math.isfinite(runtime_s)):
            raise ParameterError("runtime_s", f"{runtime_s!r}: expected seconds or None")
        if failure is not None and not cacheable_failure(failure):
            self.stats["skipped"] += 1
            log.debug("result cache: a transient %s failure of model %s is not stored", failure.error, key.model_id)
            return None
        runtime = float(runtime_s) if runtime_s is not None else None
        created = _utc_now()
        payload, checksum = self._payload(key, patient_id, findings, failure, created, runtime)
        return (key.digest(), *key.as_list(), patient_id, "failure" if failure else "findings", len(findings),
                payload, checksum, created, runtime)

    _UPSERT = (f"INSERT INTO results ({_COLUMNS}) VALUES ({', '.join('?' * 13)}) ON CONFLICT (key_digest) DO UPDATE "
               "SET patient_id = excluded.patient_id, kind = excluded.kind, n_findings = excluded.n_findings, "
               "payload = excluded.payload, checksum = excluded.checksum, created = excluded.created, "
               "runtime_s = excluded.runtime_s")

    def put(self, key: CacheKey, patient_id: str, findings: Sequence[Finding] = (), failure: Failure | None = None,
            runtime_s: float | None = None) -> None:
        """Store (replace) the answer for ``key``, committed before this returns. A Failure that
        :func:`cacheable_failure` calls transient is not stored (``stats["skipped"]``)."""
        row = self._row(key, patient_id, findings, failure, runtime_s)
        if row is None:
            return
        self._write(lambda c: c.execute(self._UPSERT, row))
        self.stats["puts"] += 1

    def put_many(self, items: Iterable[tuple[CacheKey, str, Sequence[Finding], Failure | None, float | None]]) -> None:
        """:meth:`put` of many ``(key, patient_id, findings, failure, runtime_s)`` in one transaction."""
        rows = [r for r in (self._row(*item) for item in items) if r is not None]
        if rows:
            self._write(lambda c: c.executemany(self._UPSERT, rows))
            self.stats["puts"] += len(rows)

    def _latest(self, where: str, params: Sequence[Any], latest: bool) -> list[CacheEntry]:
        rows = self._read(f"SELECT {_COLUMNS} FROM results WHERE {where} "
                          "ORDER BY study_uid, series_uid, model_id, created DESC, rowid DESC", params)
        entries = self._verify(rows)
        if not latest:
            return entries
        seen: set[tuple[str, str, str]] = set()
        out = []
        for e in entries:
            group = (e.key.study_uid, e.key.series_uid, e.key.model_id)
            if group not in seen:
                seen.add(group)
                out.append(e)
        return out

    def for_patient(self, patient_id: str, model_id: str | None = None, *, latest: bool = True) -> list[CacheEntry]:
        """A patient's stored answers, the newest per (study, series, model) unless ``latest=False``;
        ordered by study, series and model. Corrupt rows are left out (and deleted)."""
        if model_id is None:
            return self._latest("patient_id = ?", (patient_id,), latest)
        return self._latest("patient_id = ? AND model_id = ?", (patient_id, model_id), latest)

    def for_study(self, study_uid: str, model_id: str | None = None, *, latest: bool = True) -> list[CacheEntry]:
        """A study's stored answers, the newest per (series, model) unless ``latest=False``."""
        if model_id is None:
            return self._latest("study_uid = ?", (study_uid,), latest)
        return self._latest("study_uid = ? AND model_id = ?", (study_uid, model_id), latest)

    def invalidate(self, model_id: str | None = None, model_version: str | None = None) -> int:
        """Delete the entries of ``model_id`` (of one ``model_version`` if given), or all; returns how many."""
        clauses, params = [], []
        if model_id is not None:
            clauses.append("model_id = ?")
            params.append(model_id)
        if model_version is not None:
            clauses.append("model_version = ?")
            params.append(model_version)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return int(self._write(lambda c: c.execute(f"DELETE FROM results{where}", params).rowcount))

    def __len__(self) -> int:
        return int(self._read("SELECT count(*) FROM results")[0][0])

    def close(self) -> None:
        """Close the file (a last writer checkpoints the WAL into it). Safe to call twice."""
        with self._lock:
            if self._conn is not None:
                if self._pid == os.getpid():
                    self._conn.close()
                self._conn = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "readonly": self.readonly, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], readonly=state["readonly"], timeout_s=state["timeout_s"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ResultCache({str(self.path)!r}{', readonly=True' if self.readonly else ''})"
