"""The cohort result cache (cds.inference.cache): keys, round trips, corruption, crashes, concurrency."""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing as mp
import os
import pickle
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds.errors import ParameterError
from cds.finding import Failure, Finding, Location
from cds.inference.cache import (
    SCHEMA_VERSION,
    CacheKey,
    ResultCache,
    cacheable_failure,
    content_hash,
    file_fingerprint,
    input_hash,
)

SNOMED = "http://snomed.info/sct"


def key(series: str = "1.2.3.1", version: str = "1.0.0", inputs: str | None = None, study: str = "1.2.3",
        model: str = "pneumonia") -> CacheKey:
    return CacheKey(study, series, model, version, inputs or input_hash(b"px" + series.encode(), {"age": 70}))


def finding(series: str = "1.2.3.1", patient: str = "p1", study: str = "1.2.3", p: float = 0.8) -> Finding:
    return Finding(
        patient_id=patient, study_uid=study, code_system=SNOMED, code="233604007", display="Pneumonia",
        model_id="pneumonia", model_version="1.0.0", probability=p, threshold=0.5, indeterminate=(0.4, 0.6),
        location=Location("box", (1.0, 2.0, 3.0, 4.5, 5.5, 6.5), sop_instance_uid="1.2.3.1.7"),
        series_uid=series, instance_uids=("1.2.3.1.7",), ehr_inputs={"age": 70, "sex": "F"},
        explanation="GradCAM over the right lower zone", extra={"gradcam_peak_pixel": [12, 40],
                                                               "class_probabilities": {"a": 0.2, "b": 0.8}},
        imaging_study_id="ImagingStudy/9", study_started="2024-02-03T10:00:00+00:00",
        ehr_observation_ids=("Observation/1",))


def failure(state: str = "input-rejected", error: str = "InputQualityError", message: str = "blank image",
            series: str = "1.2.3.2") -> Failure:
    return Failure("p1", "1.2.3", "pneumonia", error, message, series_uid=series, state=state,
                   model_version="1.0.0", imaging_study_id="ImagingStudy/9")


@pytest.fixture
def cache(tmp_path: Path):
    with ResultCache(tmp_path / "sub" / "results.sqlite") as c:
        yield c


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


# ------------------------------------------------------------------------------------------------ keys


def test_input_hash_is_stable_and_sensitive() -> None:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 4096, size=(64, 64), dtype=np.uint16)
    ehr = {"age": 70, "sex": "F", "crp": 12.5, "born": dt.date(1950, 1, 1)}
    h = input_hash(px, ehr)
    assert h == input_hash(px.copy(), dict(ehr)) == input_hash(px, ehr)
    assert len(h) == 64 and int(h, 16) >= 0
    # layout, byte order and numeric type of equal values do not matter
    assert input_hash(np.asfortranarray(px), ehr) == h
    assert input_hash(px.astype(">u2"), ehr) == h
    assert input_hash(px, {**ehr, "age": np.int64(70), "crp": np.float32(12.5)}) == h
    assert input_hash(px, dict(reversed(list(ehr.items())))) == h
    # one pixel, one EHR value, the shape, the dtype or an option change it
    px2 = px.copy()
    px2[31, 17] += 1
    assert input_hash(px2, ehr) != h
    assert input_hash(px, {**ehr, "crp": 12.6}) != h
    assert input_hash(px, {**ehr, "sex": "M"}) != h
    assert input_hash(px.reshape(32, 128), ehr) != h
    assert input_hash(px.astype(np.int32), ehr) != h
    assert input_hash(px, ehr, {"threshold": 0.5}) != h
    assert input_hash(px, ehr, {"threshold": 0.5}) != input_hash(px, ehr, {"threshold": 0.6})
    # bytes, None and missing values are deterministic and distinct
    assert input_hash(b"abc", None) == input_hash(bytearray(b"abc"), None) != input_hash(b"abd", None)
    assert input_hash(None, None) != input_hash(b"", None)
    assert input_hash(None, {"x": float("nan")}) == input_hash(None, {"x": np.float64("nan")})
    assert input_hash(None, {"x": float("nan")}) != input_hash(None, {"x": None})
    assert input_hash(None, {"x": float("nan")}) != input_hash(None, {"x": "NaN"})


def test_input_hash_refuses_what_it_cannot_hash_deterministically() -> None:
    with pytest.raises(ParameterError, match="pixels"):
        input_hash([1, 2, 3], None)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="pixels"):
        input_hash(np.array([object()]), None)
    with pytest.raises(ParameterError, match=r"ehr\['obj'\]"):
        input_hash(None, {"obj": object()})


def test_file_fingerprint_and_content_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    a.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one 1 MiB chunk
    b.write_bytes(b"other")
    fp, ch = file_fingerprint([a, b]), content_hash([a, b])
    assert fp == file_fingerprint([str(a), str(b)]) and ch == content_hash([str(a), str(b)])
    assert content_hash([a, b]) != content_hash([b, a])
    # a copy has the same content hash but another fingerprint (another path)
    c = tmp_path / "c.dcm"
    c.write_bytes(a.read_bytes())
    assert content_hash([c, b]) == ch and file_fingerprint([c, b]) != fp
    # rewriting one byte (same size) changes the content hash; a new mtime changes the fingerprint
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    a.write_bytes(bytes(data))
    os.utime(a, ns=(1_000_000_000, 1_000_000_000))
    assert content_hash([a, b]) != ch and file_fingerprint([a, b]) != fp
    with pytest.raises(Exception, match="missing.dcm"):
        content_hash([tmp_path / "missing.dcm"])
    with pytest.raises(Exception, match="missing.dcm"):
        file_fingerprint([tmp_path / "missing.dcm"])


def test_cache_key_digest_and_validation() -> None:
    k = key()
    assert k.digest() == key().digest() and len(k.digest()) == 64
    assert len({key(version="1.0.1").digest(), key(series="x").digest(), key(model="m2").digest(), k.digest(),
                key(inputs="f" * 64).digest(), key(study="9.9").digest()}) == 6
    with pytest.raises(ParameterError, match="model_version"):
        CacheKey("1.2", "1.2.3", "m", 1, "ab")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="inputs"):
        CacheKey("1.2", "1.2.3", "m", "1", "")


# ----------------------------------------------------------------------------------------- round trip


def test_round_trip_of_findings_failures_and_empty_answers(cache: ResultCache, tmp_path: Path) -> None:
    f1, f2 = finding(), finding(p=0.3)
    cache.put(key(), "p1", [f1, f2], runtime_s=1.25)
    e = cache.get(key())
    assert e is not None
    assert e.findings == [f1, f2] and e.failure is None and e.patient_id == "p1" and e.key == key()
    assert e.findings[0].location == f1.location and e.findings[0].extra == f1.extra
    assert e.findings[0].ehr_observation_ids == ("Observation/1",) and e.findings[0].id == f1.id
    assert e.runtime_s == 1.25
    created = dt.datetime.fromisoformat(e.created)
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)

    fail = failure()
    cache.put(key(series="1.2.3.2"), "p1", failure=fail)
    e2 = cache.get(key(series="1.2.3.2"))
    assert e2 is not None and e2.failure == fail and e2.findings == [] and e2.runtime_s is None

    cache.put(key(series="1.2.3.3"), "p1", [])  # the model ran and found nothing: a stored, empty answer
    e3 = cache.get(key(series="1.2.3.3"))
    assert e3 is not None and e3.findings == [] and e3.failure is None
    assert len(cache) == 3 and cache.stats["hits"] == 3 and cache.stats["puts"] == 3 and cache.stats["misses"] == 0

    # numpy values in extra come back as plain numbers
    fn = finding(series="1.2.3.4")
    fn = Finding(**{**fn.__dict__, "extra": {"volume_ml": np.float32(2.5), "rank": np.int64(1),
                                             "area_mm2": np.array([1.0, 2.0])}})
    cache.put(key(series="1.2.3.4"), "p1", [fn])
    got = cache.get(key(series="1.2.3.4"))
    assert got is not None and got.findings[0].extra == {"volume_ml": 2.5, "rank": 1, "area_mm2": [1.0, 2.0]}

    # the file survives closing and is found again by a new object
    cache.close()
    with ResultCache(tmp_path / "sub" / "results.sqlite", readonly=True) as ro:
        again = ro.get(key())
        assert again is not None and again.findings == [f1, f2]
        with pytest.raises(ParameterError, match="read-only"):
            ro.put(key(), "p1", [f1])


def test_put_replaces_and_checks_its_arguments(cache: ResultCache) -> None:
    cache.put(key(), "p1", [finding(p=0.1)])
    cache.put(key(), "p1", [finding(p=0.9)])
    e = cache.get(key())
    assert e is not None and [f.probability for f in e.findings] == [0.9] and len(cache) == 1
    with pytest.raises(ParameterError, match="failure"):
        cache.put(key(), "p1", [finding()], failure())
    with pytest.raises(ParameterError, match="findings"):
        cache.put(key(), "p1", [{"code": "x"}])  # type: ignore[list-item]
    with pytest.raises(ParameterError, match="key"):
        cache.put(("a", "b"), "p1", [])  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="patient_id"):
        cache.put(key(), "", [])


def test_changed_model_version_or_inputs_is_a_miss(cache: ResultCache) -> None:
    cache.put(key(), "p1", [finding()])
    assert cache.get(key(version="1.0.1")) is None
    assert cache.get(key(inputs=input_hash(b"other pixels", {"age": 70}))) is None
    assert cache.get(key(model="cxr-cardiomegaly")) is None
    assert cache.get(key()) is not None
    assert cache.stats["misses"] == 3 and cache.stats["hits"] == 1
    assert key() in cache and key(version="1.0.1") not in cache


def test_put_many_is_one_transaction(cache: ResultCache) -> None:
    items = [(key(series=f"1.2.3.{i}"), "p1", [finding(series=f"1.2.3.{i}")], None, 0.1) for i in range(20)]
    items.append((key(series="1.2.3.99"), "p1", [], failure(), None))
    cache.put_many(items)
    assert len(cache) == 21 and cache.stats["puts"] == 21
    # a bad item anywhere stores nothing of the batch
    bad = [(key(series="9.1"), "p1", [finding()], None, None), (key(series="9.2"), "p1", ["x"], None, None)]
    with pytest.raises(ParameterError):
        cache.put_many(bad)  # type: ignore[arg-type]
    assert len(cache) == 21 and cache.get(key(series="9.1")) is None


# ------------------------------------------------------------------------------------------ failures


def test_cacheable_failure() -> None:
    for state, err in [("record-mismatch", "RecordMismatchError"), ("input-rejected", "InputQualityError"),
                       ("outside-intended-use", "OutsideIntendedUseError")]:
        assert cacheable_failure(failure(state, err, "x"))
    assert cacheable_failure(failure("failed", "ImageReadError", "a.dcm: no pixel data"))
    assert cacheable_failure(failure("failed", "ModelInputError", "age: missing"))
    for err, msg in [("StudyTimeLimitError", "1.2.3: ran past 60 s"), ("TimeoutError", "read"),
                     ("OSError", "[Errno 5] Input/output error"), ("ConnectionError", "refused"),
                     ("ImageReadError", "https://pacs/x: connection reset by peer"),
                     ("ImageReadError", "a.dcm: timed out"), ("OutOfMemoryError", "CUDA out of memory"),
                     ("RuntimeError", "shape mismatch")]:
        assert not cacheable_failure(failure("failed", err, msg)), err


def test_transient_failures_are_not_stored(cache: ResultCache) -> None:
    cache.put(key(), "p1", failure=failure("failed", "TimeoutError", "timed out"))
    assert len(cache) == 0 and cache.stats["skipped"] == 1 and cache.stats["puts"] == 0
    cache.put(key(), "p1", failure=failure("record-mismatch", "RecordMismatchError", "PatientID differs"))
    e = cache.get(key())
    assert e is not None and e.failure is not None and e.failure.state == "record-mismatch"


# ---------------------------------------------------------------------------------------- corruption


def _corrupt(path: Path, sql: str, *params: object) -> None:
    with raw(path) as c:
        assert c.execute(sql, params).rowcount == 1


@pytest.mark.parametrize("how", ["flip-byte", "truncated", "garbage-blob", "truncated-rechecksummed",
                                 "wrong-key-rechecksummed", "checksum"])
def test_corrupt_entry_is_detected_deleted_and_never_served(tmp_path: Path, how: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResultCache(path)
    cache.put(key(), "patient-secret-42", [finding(patient="patient-secret-42")])
    cache.put(key(series="1.2.3.9"), "patient-secret-42", [finding(series="1.2.3.9", patient="patient-secret-42")])
    d = key().digest()
    if how == "flip-byte":  # one character of the JSON changed: 0.8 -> 0.9
        (payload,) = raw(path).execute("SELECT payload FROM results WHERE key_digest = ?", (d,)).fetchone()
        i = payload.index('"probability":0.8') + len('"probability":0.')
        _corrupt(path, "UPDATE results SET payload = ? WHERE key_digest = ?", payload[:i] + "9" + payload[i + 1:], d)
    elif how == "truncated":
        _corrupt(path, "UPDATE results SET payload = substr(payload, 1, 40) WHERE key_digest = ?", d)
    elif how == "garbage-blob":
        _corrupt(path, "UPDATE results SET payload = ? WHERE key_digest = ?", b"\xff\xfe\x00garbage", d)
    elif how == "truncated-rechecksummed":  # checksum made to match: the decode must still catch it
        import hashlib

        bad = '{"v":1,"key":['
        _corrupt(path, "UPDATE results SET payload = ?, checksum = ? WHERE key_digest = ?", bad,
                 hashlib.sha256(bad.encode()).hexdigest(), d)
    elif how == "wrong-key-rechecksummed":  # another row's payload under this key
        import hashlib

        (other,) = raw(path).execute("SELECT payload FROM results WHERE key_digest = ?",
                                     (key(series="1.2.3.9").digest(),)).fetchone()
        _corrupt(path, "UPDATE results SET payload = ?, checksum = ? WHERE key_digest = ?", other,
                 hashlib.sha256(other.encode()).hexdigest(), d)
    else:
        _corrupt(path, "UPDATE results SET checksum = ? WHERE key_digest = ?", "0" * 64, d)

    with caplog.at_level(logging.WARNING, logger="cds.inference.cache"):
        assert cache.get(key()) is None
    assert cache.stats["corrupt"] == 1 and cache.stats["hits"] == 0 and cache.stats["misses"] == 1
    assert raw(path).execute("SELECT count(*) FROM results WHERE key_digest = ?", (d,)).fetchone()[0] == 0
    assert len(cache) == 1 and cache.get(key(series="1.2.3.9")) is not None  # the sound entry stays
    assert "corrupt" in caplog.text and "patient-secret-42" not in caplog.text and "1.2.3" not in caplog.text
    # recomputed and stored again, it is served
    cache.put(key(), "patient-secret-42", [finding(patient="patient-secret-42")])
    assert cache.get(key()) is not None
    cache.close()


def test_lookups_skip_and_delete_corrupt_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ResultCache(path) as cache:
        cache.put(key(), "p1", [finding()])
        cache.put(key(series="1.2.3.5"), "p1", [finding(series="1.2.3.5")])
        _corrupt(path, "UPDATE results SET payload = 'x' WHERE key_digest = ?", key().digest())
        got = cache.for_patient("p1")
        assert [e.key.series_uid for e in got] == ["1.2.3.5"] and cache.stats["corrupt"] == 1 and len(cache) == 1


# -------------------------------------------------------------------------------------- the file itself


def test_refuses_a_sqlite_file_of_another_program(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with raw(other) as c:
        c.execute("CREATE TABLE patients (id TEXT)")
    with pytest.raises(ParameterError, match="other.db.*not a cds result cache"):
        ResultCache(other)
    assert raw(other).execute("SELECT name FROM sqlite_master").fetchall() == [("patients",)]  # untouched


def test_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a database, it is a text file of some length " * 20)
    with pytest.raises(ParameterError, match="notes.txt"):
        ResultCache(junk)
    with pytest.raises(ParameterError, match="folder"):
        ResultCache(tmp_path)
    with pytest.raises(ParameterError, match="missing.sqlite"):
        ResultCache(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_refuses_a_newer_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    ResultCache(path).close()
    with raw(path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ParameterError, match=rf"new.sqlite.*newer cds.*version {SCHEMA_VERSION + 1}"):
        ResultCache(path)
    with pytest.raises(ParameterError, match="new.sqlite"):
        ResultCache(path, readonly=True)


def test_new_file_is_wal_with_header_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "r.sqlite"
    cache = ResultCache(path)
    c = raw(path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("PRAGMA application_id").fetchone()[0] == 0x43445352
    meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    assert meta["format"] == "cds-result-cache" and meta["schema_version"] == str(SCHEMA_VERSION)
    assert cache._db().execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    # an empty file (e.g. made by touch) becomes a cache
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with ResultCache(empty) as e:
        assert len(e) == 0
    cache.close()
    cache.close()


def test_pickles_to_another_process(tmp_path: Path) -> None:
    with ResultCache(tmp_path / "r.sqlite") as cache:
        cache.put(key(), "p1", [finding()])
        clone = pickle.loads(pickle.dumps(cache))
        assert clone.path == cache.path and clone.get(key()) is not None
        clone.close()


# ------------------------------------------------------------------------------ lookups and invalidation


def test_for_patient_and_for_study(cache: ResultCache) -> None:
    cache.put(key(series="s1", version="1.0.0"), "p1", [finding(series="s1", p=0.1)])
    cache.put(key(series="s1", version="1.1.0"), "p1", [finding(series="s1", p=0.7)])  # newer: wins
    cache.put(key(series="s2"), "p1", failure=failure(series="s2"))
    cache.put(key(series="s1", model="cxr-cardiomegaly"), "p1", [])
    cache.put(key(study="7.7", series="t1"), "p2", [finding(series="t1", patient="p2", study="7.7")])

    p1 = cache.for_patient("p1")
    assert [(e.key.series_uid, e.key.model_id, e.key.model_version) for e in p1] == [
        ("s1", "cxr-cardiomegaly", "1.0.0"), ("s1", "pneumonia", "1.1.0"), ("s2", "pneumonia", "1.0.0")]
    assert p1[1].findings[0].probability == 0.7 and p1[2].failure is not None
    assert len(cache.for_patient("p1", latest=False)) == 4
    assert [e.key.model_id for e in cache.for_patient("p1", "cxr-cardiomegaly")] == ["cxr-cardiomegaly"]
    assert [e.patient_id for e in cache.for_patient("p2")] == ["p2"]
    assert cache.for_patient("nobody") == []

    st = cache.for_study("1.2.3")
    assert {e.patient_id for e in st} == {"p1"} and len(st) == 3
    assert [e.key.series_uid for e in cache.for_study("7.7")] == ["t1"]
    assert len(cache.for_study("1.2.3", "pneumonia")) == 2


def test_invalidate(cache: ResultCache) -> None:
    cache.put(key(series="s1"), "p1", [finding()])
    cache.put(key(series="s2", version="2.0.0"), "p1", [finding()])
    cache.put(key(series="s1", model="other"), "p1", [])
    assert cache.invalidate("pneumonia", "2.0.0") == 1
    assert cache.invalidate("pneumonia") == 1 and len(cache) == 1
    assert cache.invalidate() == 1 and len(cache) == 0 and cache.invalidate() == 0


# -------------------------------------------------------------------------------- crashes and processes


N_WRITES = 150


def _put_then_die(path: str, n: int) -> None:
    c = ResultCache(path)
    for i in range(n):
        c.put(key(series=f"s{i}"), "p1", [finding(series=f"s{i}")])
    os._exit(3)  # killed: no close, no checkpoint, no atexit


def _writer(path: str, tag: str, n: int, go: Any) -> None:  # go: a multiprocessing Event
    c = ResultCache(path, timeout_s=20)
    go.wait(60)  # both processes write at the same time
    for i in range(n):
        c.put(key(series=f"{tag}-{i}"), "p1", [finding(series=f"{tag}-{i}")])
        c.put(key(series="shared"), "p1", [finding(series="shared", p=(i % 10) / 10)])  # both write one row
        if i % 10 == 0:
            c.put_many([(key(series=f"{tag}-many-{i}-{j}"), "p2", [], None, None) for j in range(5)])
    c.close()


def test_killed_run_keeps_what_it_committed(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    p = mp.get_context("spawn").Process(target=_put_then_die, args=(str(path), 7))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    with ResultCache(path) as c:
        assert len(c) == 7
        assert all(c.get(key(series=f"s{i}")) is not None for i in range(7))
        assert c.stats["corrupt"] == 0


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    ctx = mp.get_context("spawn")
    ResultCache(path).close()
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), tag, N_WRITES, go)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0, 0]
    with ResultCache(path) as c:
        assert len(c) == 2 * N_WRITES + 2 * (N_WRITES // 10) * 5 + 1
        for tag in ("a", "b"):
            for i in range(N_WRITES):
                e = c.get(key(series=f"{tag}-{i}"))
                assert e is not None and e.findings[0].series_uid == f"{tag}-{i}"
        assert c.get(key(series="shared")) is not None and c.stats["corrupt"] == 0
        assert raw(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_locked_file_is_waited_for_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    cache = ResultCache(path, timeout_s=0.3)
    holder = raw(path)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for longer than busy_timeout
    threading.Timer(0.45, lambda: holder.execute("COMMIT")).start()
    t0 = time.monotonic()
    cache.put(key(), "p1", [finding()])  # busy_timeout (0.3 s), then the retries, then it gets through
    assert time.monotonic() - t0 >= 0.4 and cache.get(key()) is not None
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            cache.put(key(series="s2"), "p1", [])  # never released: gives up after about 2 x timeout_s
    finally:
        holder.execute("ROLLBACK")
    cache.close()
