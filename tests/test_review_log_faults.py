"""Faults of the review log: short writes, disk full, I/O and fsync errors, permission denied, bad or
cut-off lines, and two explorers (two store objects, two processes) on one log.

The OS calls are faked only for the log file under test (the fake looks at ``/proc/self/fd``), so
pytest's own output is untouched.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cds.errors import CdsError
from cds.explorer.widgets.actions import ActionsPanel
from cds.finding import Finding
from cds.review import log_file
from cds.review.store import ReviewNotSavedError, ReviewStore, ReviewStoreError, check_record, to_fhir_bundle


def _finding(pid: str = "p1", study: str = "1.2.3", prob: float = 0.8) -> Finding:
    return Finding(pid, study, "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia", "1.0.0",
                   probability=prob, threshold=0.5, indeterminate=(0.4, 0.6), series_uid="1.2.3.4")


def _is_log(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


def _fake(monkeypatch: pytest.MonkeyPatch, name: str, path: Path, fake: Callable[..., object]) -> list[int]:
    """Replace ``os.<name>`` for calls on ``path``'s fd; returns the list of calls seen on it."""
    real = getattr(os, name)
    calls: list[int] = []

    def patched(fd: int, *args: object) -> object:
        if not _is_log(fd, path):
            return real(fd, *args)
        calls.append(fd)
        return fake(real, fd, *args)

    monkeypatch.setattr(os, name, patched)
    return calls


@pytest.fixture
def log(tmp_path: Path) -> tuple[Path, ReviewStore, bytes]:
    """A log with two saved actions, its store and its bytes."""
    path = tmp_path / "reviews.jsonl"
    store = ReviewStore(path)
    store.accept(_finding("a"), "dr-a")
    store.accept(_finding("b"), "dr-a")
    return path, store, path.read_bytes()


# ------------------------------------------------------------------------------ checked writes
def test_short_writes_are_completed(log: tuple[Path, ReviewStore, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path, store, before = log
    calls = _fake(monkeypatch, "write", path, lambda real, fd, data: real(fd, bytes(data[:7])))
    store.override(_finding("a"), "dr-b", "false-positive", comment="scar " * 20)
    assert len(calls) > 20  # the line went out 7 bytes at a time
    monkeypatch.undo()
    assert path.read_bytes().startswith(before) and path.read_bytes().endswith(b"\n")
    again = ReviewStore(path)
    assert len(again) == 3 and again.problems == [] and again.status_of(_finding("a").id) == "amended"
    assert again.latest_review(_finding("a").id)["comment"] == ("scar " * 20).strip()


def _writes_then(n_ok: int, fail: Callable[[], object]) -> Callable[..., object]:
    """A fake os.write: ``n_ok`` bytes go to the file, then ``fail()`` (returns a count or raises)."""
    state = {"left": n_ok}

    def fake(real: Callable[..., int], fd: int, data: bytes) -> object:
        if state["left"] > 0:
            n = real(fd, bytes(data[:state["left"]]))
            state["left"] -= n
            return n
        return fail()

    return fake


def _enospc() -> object:
    raise OSError(errno.ENOSPC, "No space left on device")


def _eio() -> object:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize(("fail", "reason"), [
    (lambda: 0, "short write: only 10 of"),
    (_enospc, "the disk is full (No space left on device)"),
    (_eio, "input/output error on the disk"),
], ids=["no-progress", "ENOSPC", "EIO"])
def test_a_write_that_cannot_complete_is_not_saved_and_leaves_the_log_as_it_was(
        log: tuple[Path, ReviewStore, bytes], monkeypatch: pytest.MonkeyPatch, fail: Callable[[], object],
        reason: str) -> None:
    path, store, before = log
    seen: list[str] = []
    store.on_change(lambda rec: seen.append(rec["id"]))
    _fake(monkeypatch, "write", path, _writes_then(10, fail))
    with pytest.raises(ReviewNotSavedError, match="NOT saved") as info:
        store.accept(_finding("c"), "dr-a")
    assert isinstance(info.value, CdsError) and reason in info.value.reason and info.value.where == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the 10 bytes that did reach the file were cut off again
    assert len(store) == 2 and seen == [] and store.status_of(_finding("c").id) == "preliminary"
    assert ReviewStore(path).problems == []
    store.accept(_finding("c"), "dr-a")  # the disk has room again
    assert len(ReviewStore(path)) == 3 and seen != []


@pytest.mark.parametrize("errno_", [errno.EIO, errno.ENOSPC])
def test_an_fsync_error_is_not_saved_and_the_unsynced_line_is_removed(
        log: tuple[Path, ReviewStore, bytes], monkeypatch: pytest.MonkeyPatch, errno_: int) -> None:
    path, store, before = log
    state = {"n": 0}

    def fsync(real: Callable[[int], None], fd: int) -> None:
        state["n"] += 1
        if state["n"] == 1:  # the write's fsync fails; the undo's fsync works
            raise OSError(errno_, os.strerror(errno_))
        real(fd)

    _fake(monkeypatch, "fsync", path, fsync)
    with pytest.raises(ReviewNotSavedError, match=os.strerror(errno_)):
        store.override(_finding("a"), "dr-a", "wrong-location")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(store) == 2 and len(ReviewStore(path)) == 2 and store.status_of(_finding("a").id) == "final"


def test_a_cut_off_line_that_cannot_be_undone_is_a_problem_never_a_record(
        log: tuple[Path, ReviewStore, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    path, store, before = log
    _fake(monkeypatch, "write", path, _writes_then(40, _enospc))
    _fake(monkeypatch, "ftruncate", path, lambda real, fd, size: _eio())
    with pytest.raises(ReviewNotSavedError, match="could not be cut back either"):
        store.accept(_finding("c"), "dr-a")
    monkeypatch.undo()
    assert len(path.read_bytes()) == len(before) + 40  # the torn bytes stayed
    other = ReviewStore(path)
    assert len(other) == 2 and [(p.line, p.trailing) for p in other.problems] == [(3, True)]
    assert len(store) == 2 and store.problems[0].trailing and "last line" in str(store.problems[0])
    store.accept(_finding("d"), "dr-a")  # the next append starts on a fresh line
    lines = path.read_bytes().split(b"\n")
    assert lines[3].startswith(b'{"kind":"cds-review/1"') and json.loads(lines[3])["finding_id"] == _finding("d").id
    for s in (store, other, ReviewStore(path)):
        assert len(s) == 3 and s.status_of(_finding("d").id) == "final"
        assert s.status_of(_finding("c").id) == "preliminary"
        assert [(p.line, p.trailing) for p in s.problems] == [(3, False)]


def test_permission_denied_and_a_missing_folder_are_not_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reviews.jsonl"
    real_open = os.open

    def denied(p: object, flags: int, *args: object) -> int:
        if str(p) == str(path) and (flags & (os.O_WRONLY | os.O_RDWR)):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    store = ReviewStore(path)
    with pytest.raises(ReviewNotSavedError, match="permission denied") as info:
        store.accept(_finding(), "dr-a")
    assert "cannot open the review log for writing" in info.value.reason
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ReviewNotSavedError, match="NOT saved"):
        ReviewStore(blocker / "sub" / "r.jsonl").accept(_finding(), "dr-a")
    assert len(store) == 0 and not path.exists()


def test_a_finding_that_cannot_be_written_is_not_saved(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "r.jsonl")
    with pytest.raises(ReviewNotSavedError, match="cannot be recorded"):
        store.accept(_finding(prob=float("nan")), "dr-a")
    assert not store.path.exists()


def test_the_explorer_says_not_saved_and_confirms_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reviews.jsonl"
    store = ReviewStore(path)
    panel = ActionsPanel(store, "dr-a")
    panel.set_findings([_finding()])
    actions: list[dict] = []
    panel.on_action(actions.append)
    _fake(monkeypatch, "fsync", path, lambda real, fd: _eio())
    panel.comment.value = "checked"
    panel.accept_button.click()
    assert "Not saved: input/output error on the disk" in panel.message.value
    assert "not recorded" in panel.message.value and "saved to" not in panel.message.value
    assert "✔" not in panel.message.value and actions == [] and len(store) == 0
    assert panel.comment.value == "checked"  # nothing the clinician typed is lost
    _fake(monkeypatch, "write", path, lambda real, fd, data: _enospc())
    panel.override_button.click()
    assert "Not saved: the disk is full" in panel.message.value and len(store) == 0
    monkeypatch.undo()
    panel.accept_button.click()
    assert "saved to reviews.jsonl" in panel.message.value and len(actions) == 1 and len(store) == 1


def test_reader_study_read_not_saved_keeps_the_ai_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reviews.jsonl"
    panel = ActionsPanel(ReviewStore(path), "dr-a", reader_study=True)
    panel.set_findings([_finding()])
    _fake(monkeypatch, "write", path, _writes_then(5, lambda: 0))
    panel.present.value = True
    panel.confidence.value = 80
    panel.read_button.click()
    assert "Not saved: short write" in panel.message.value and not panel.ai_revealed()
    assert panel.present.value is True and panel.confidence.value == 80  # the read can be saved again
    monkeypatch.undo()
    assert path.read_bytes() == b""
    panel.read_button.click()
    assert panel.ai_revealed() and "pre-ai read" in panel.message.value


# --------------------------------------------------------------------------------- bad records
def _good(fid_source: str = "x") -> dict:
    """A valid accept record, as another writer could have written it."""
    f = _finding(fid_source)
    return {"kind": "cds-review/1", "id": f"id-{fid_source}", "action": "accept", "finding_id": f.id,
            "finding": {**f.to_dict(), "id": f.id}, "status": "final",
            "reviewer": {"reference": "Practitioner/dr-z"}, "recorded": "2026-01-02T03:04:05.000Z", "reason": None,
            "comment": None, "clinician_interpretation": "positive", "read": None}


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BAD_LINES: dict[str, tuple[Callable[[dict], object], str]] = {
    "missing-finding_id": (lambda g: _without(g, "finding_id"), "missing finding_id"),
    "missing-reviewer": (lambda g: _without(g, "reviewer"), "missing reviewer"),
    "missing-action": (lambda g: _without(g, "action"), "missing action"),
    "bad-json": (lambda g: '{"kind": "cds-review/1", "action": ', "not valid JSON"),
    "json-array": (lambda g: [g], "not a JSON object"),
    "json-string": (lambda g: json.dumps("just text"), "not a JSON object"),
    "finding_id-int": (lambda g: {**g, "finding_id": 42}, "finding_id: Input should be a valid string"),
    "finding_id-empty": (lambda g: {**g, "finding_id": ""}, "finding_id"),
    "unknown-action": (lambda g: {**g, "action": "delete"}, "action: not one of"),
    "status-not-fitting": (lambda g: {**g, "status": "amended"}, "status"),
    "override-without-reason": (lambda g: {**g, "action": "override", "status": "amended"}, "reason: should be a JSON object"),
    "read-without-read": (lambda g: {**g, "action": "read", "status": None}, "read: should be a JSON object"),
    "read-confidence-bool": (lambda g: {**g, "action": "read", "status": None,
                                        "read": {"phase": "pre-ai", "finding_present": True, "confidence": True}},
                             "read.confidence"),
    "reviewer-not-practitioner": (lambda g: {**g, "reviewer": {"reference": "Patient/p1"}}, "reviewer.reference"),
    "reviewer-string": (lambda g: {**g, "reviewer": "dr-a"}, "reviewer"),
    "recorded-not-a-date": (lambda g: {**g, "recorded": "yesterday"}, "recorded: not an ISO 8601"),
    "snapshot-missing-patient": (lambda g: {**g, "finding": _without(g["finding"], "patient_id")},
                                 "missing finding.patient_id"),
    "probability-string": (lambda g: {**g, "finding": {**g["finding"], "probability": "0.9"}},
                           "finding.probability"),
    "probability-nan": (lambda g: json.dumps({**g, "finding": {**g["finding"], "probability": 1}}).replace(
        '"probability": 1', '"probability": NaN'), "finding.probability: Input should be a finite number"),
    "finding-id-mismatch": (lambda g: {**g, "finding": {**g["finding"], "id": "other"}},
                            "finding.id differs from finding_id"),
    "wrong-kind": (lambda g: {**g, "kind": "something-else/2"}, "not a cds review record"),
    "comment-number": (lambda g: {**g, "comment": 7}, "comment: Input should be a valid string"),
    "deeply-nested": (lambda g: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "not-utf8": (lambda g: json.dumps(g).replace("dr-z", "dr-\udcff"), "not valid JSON"),
    "huge-int": (lambda g: json.dumps({**g, "recorded": 1}).replace('"recorded": 1', '"recorded": ' + "9" * 5000),
                 "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_record_is_a_problem_row_and_the_records_around_it_count(tmp_path: Path, case: str) -> None:
    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    store.accept(_finding("before"), "dr-a")
    make, reason = BAD_LINES[case]
    bad = make(_good())
    with open(path, "ab") as fh:  # surrogateescape: "\udcff" becomes the byte 0xff (not UTF-8)
        fh.write(((bad if isinstance(bad, str) else json.dumps(bad)) + "\n").encode("utf-8", "surrogateescape"))
    store.override(_finding("after"), "dr-a", "false-positive")
    for s in (store, ReviewStore(path)):  # the writer's own object and a fresh one
        assert [p.line for p in s.problems] == [2], s.problems
        assert reason in s.problems[0].message and not s.problems[0].trailing
        assert f"{path}: line 2: " in str(s.problems[0])
        assert len(s) == 2 and s.status_of(_finding("after").id) == "amended"
        assert sorted(s.reviews_frame()["status"]) == ["amended", "final"]
        to_fhir_bundle(s)  # the FHIR output of the valid records still builds and validates


def test_a_good_record_passes_the_check() -> None:
    assert check_record(_good()) is None  # the schema is not refusing everything
    store_made = {**_good(), "action": "override", "status": "entered-in-error",
                  "reason": {"coding": [{"system": "s", "code": "poor-image-quality", "display": "d"}]}}
    assert check_record(store_made) is None


def test_the_problem_row_is_shown_beside_the_finding_it_names(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    f = _finding("x")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(_without(_good("x"), "reviewer")) + "\n")
        fh.write(json.dumps(_without(_good("y"), "finding_id")) + "\n")
    store = ReviewStore(path)
    assert [p.finding_id for p in store.problems] == [f.id, None]
    panel = ActionsPanel(store, "dr-a")
    panel.set_findings([f])  # opens, no KeyError
    assert "cds-problem-row" in panel.history.value and "line 1" in panel.history.value
    assert "missing reviewer" in panel.history.value and "line 2" not in panel.history.value
    panel.accept_button.click()
    assert store.status_of(f.id) == "final" and "line 1" in panel.history.value


# ----------------------------------------------------------------------- two explorers, one log
def test_two_store_objects_see_each_others_actions_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    a, b = ReviewStore(path), ReviewStore(path)
    f = _finding()
    heard_a: list[str] = []
    heard_b: list[str] = []
    a.on_change(lambda rec: heard_a.append(rec["action"]))
    b.on_change(lambda rec: heard_b.append(rec["action"]))
    a.accept(f, "dr-a")
    assert b.status_of(f.id) == "final" and len(b) == 1  # no reload() call
    assert heard_a == ["accept"] and heard_b == []  # b is told on its next poll
    assert [r["action"] for r in b.poll()] == ["accept"] and heard_b == ["accept"]
    assert b.poll() == [] and heard_b == ["accept"]  # told once
    b.override(f, "dr-b", "false-positive")
    assert a.latest_review(f.id)["reviewer"] == {"reference": "Practitioner/dr-b"}
    b.record_read(f, "dr-c", "pre-ai", True, 60)
    assert a.reads(f.id, "dr-c")["pre-ai"] is not None
    a.accept(f, "dr-a")  # a's own write also tells a about b's two actions first, in file order
    assert heard_a == ["accept", "override", "read", "accept"] and heard_b == ["accept", "override", "read"]
    assert list(a.reviews_frame()["status"]) == list(b.reviews_frame()["status"]) == ["final"]
    with open(path, "a") as fh:  # another explorer's line with a missing field shows up as a problem
        fh.write(json.dumps(_without(_good(), "finding_id")) + "\n")
    assert [p.line for p in b.problems] == [5] and len(b) == 4


def test_a_reader_waits_for_a_write_in_progress_instead_of_seeing_half_a_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer, reader = ReviewStore(path), ReviewStore(path)
    writer.accept(_finding("a"), "dr-a")
    assert len(reader) == 1
    line = json.dumps({**_good("b"), "id": "slow"}).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    seen: list[tuple[int, list]] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer in the middle of its line
        os.write(fd, line[:30])
        t = threading.Thread(target=lambda: seen.append((len(reader), reader.problems)))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and seen == []  # the reader waits for the line, it does not take half of it
        os.write(fd, line[30:])
    finally:
        os.close(fd)
    t.join(5)
    assert seen == [(2, [])]


def test_a_lock_held_too_long_is_not_saved_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer, reader = ReviewStore(path), ReviewStore(path)
    writer.accept(_finding("a"), "dr-a")
    writer._log.lock_timeout = reader._log.lock_timeout = 0.1
    line = json.dumps({**_good("b"), "id": "stuck"}).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer stuck in the middle of its line (hung disk)
        os.write(fd, line[:30])
        with pytest.raises(ReviewNotSavedError, match="held the review log locked for over 0.1 s"):
            writer.accept(_finding("c"), "dr-a")
        assert len(reader) == 1 and [p.trailing for p in reader.problems] == [True]  # half a line: no record
        os.write(fd, line[30:])
    finally:
        os.close(fd)
    assert len(reader) == 2 and reader.problems == [] and len(writer) == 2


def test_a_copied_line_is_a_problem_not_a_second_action(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = ReviewStore(path)
    store.override(_finding(), "dr-a", "false-positive")
    with open(path, "ab") as fh:
        fh.write(path.read_bytes())
    for s in (store, ReviewStore(path)):
        assert len(s) == 1 and [(p.line, "same action id as line 1" in p.message) for p in s.problems] == [(2, True)]
    to_fhir_bundle(store)


def test_a_log_replaced_under_a_reader_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store, watcher = ReviewStore(path), ReviewStore(path)
    for p in "abc":
        store.accept(_finding(p), "dr-a")
    assert len(watcher) == 3
    first = path.read_bytes().split(b"\n")[0] + b"\n"
    tmp = tmp_path / "new.jsonl"
    tmp.write_bytes(first)
    os.replace(tmp, path)  # e.g. restored from a backup
    assert len(watcher) == 1
    path.write_bytes(first.replace(b"Practitioner/dr-a", b"Practitioner/dr-q"))  # rewritten in place, same size
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert watcher.actions()[0]["reviewer"]["reference"] == "Practitioner/dr-q"
    path.unlink()
    assert len(watcher) == 0 and watcher.problems == []


def _append_many(path: str, tag: str, n: int, start: mp.synchronize.Event) -> None:
    store = ReviewStore(path)
    start.wait(10)
    for i in range(n):
        store.accept(_finding(f"{tag}{i}"), f"dr-{tag}")


def test_two_processes_append_concurrently_and_a_third_follows_live(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    n = 40
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(path), tag, n, start)) for tag in ("a", "b")]
    follower = ReviewStore(path)
    heard: list[str] = []
    follower.on_change(lambda rec: heard.append(rec["id"]))
    for p in procs:
        p.start()
    start.set()
    sizes = []
    while any(p.is_alive() for p in procs):
        follower.poll()
        sizes.append(len(follower))
        assert follower.problems == []  # never half a line, even mid-write
        time.sleep(0.005)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    follower.poll()
    assert len(follower) == 2 * n and len(heard) == 2 * n == len(set(heard))
    assert sorted(sizes) == sizes  # it only ever grew
    lines = [ln for ln in path.read_bytes().split(b"\n") if ln]
    assert len(lines) == 2 * n and all(check_record(json.loads(ln)) is None for ln in lines)
    assert {a["finding_id"] for a in follower.actions()} == {_finding(f"{t}{i}").id for t in "ab" for i in range(n)}


def _append_forever(path: str, confirmed: str) -> None:
    store = ReviewStore(path)
    fd = os.open(confirmed, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    i = 0
    while True:
        rec = store.accept(_finding(f"k{os.getpid()}-{i}"), "dr-k")
        os.write(fd, rec["id"].encode() + b"\n")  # told to the user only after accept() returned
        i += 1


def test_sigkilled_writers_lose_nothing_that_was_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    confirmed = tmp_path / "confirmed.txt"
    ctx = mp.get_context("fork")
    for k in range(6):
        p = ctx.Process(target=_append_forever, args=(str(path), str(confirmed)))
        p.start()
        time.sleep(0.1 + 0.03 * k)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    text = confirmed.read_text()
    ids = set(text[:text.rfind("\n")].split("\n")) if "\n" in text else set()
    store = ReviewStore(path)
    logged = {a["id"] for a in store.actions()}
    assert ids and ids <= logged  # every confirmed action is in the log
    assert all(p.trailing or "not valid JSON" in p.message for p in store.problems)  # only cut-off lines, if any
    store.accept(_finding("after"), "dr-a")
    assert ReviewStore(path).status_of(_finding("after").id) == "final"


def test_an_unreadable_log_is_a_named_error(tmp_path: Path) -> None:
    fifo = tmp_path / "r.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ReviewStoreError, match="not a regular file"):
        ReviewStore(fifo)
    assert issubclass(log_file.ReviewNotSavedError, ReviewStoreError)


# ------------------------------------------------------------------------ the explorer, two of them
@pytest.fixture(scope="module")
def cohort(samples_dir: Path):
    import cds

    return cds.load_cohort(samples_dir, validate=False, reference_date="2020-06-02")


@pytest.fixture(scope="module")
def cohort_findings(cohort) -> list[Finding]:
    """A Finding on the first imaged study of two patients."""
    img = cohort.imaging[cohort.imaging["pixel_location"].notna()].drop_duplicates("patient_id")
    return [Finding(r.patient_id, r.study_uid, "http://snomed.info/sct", "233604007", "Pneumonia", "pneumonia",
                    "1.0.0", probability=p, threshold=0.5, series_uid=r.series_uid)
            for r, p in zip(img.head(2).itertuples(), (0.9, 0.2), strict=True)]


def _explorer(cohort, findings: list[Finding], path: Path, reviewer: str):
    from cds.explorer.widgets.explorer import CaseExplorer

    return CaseExplorer(cohort, findings, ReviewStore(path), reviewer)


def _review_status(ex, finding: Finding) -> str:
    return ex.worklist.full.set_index("finding_id").loc[finding.id, "review_status"]


def test_two_explorers_on_one_log_see_each_others_actions(cohort, cohort_findings: list[Finding],
                                                           tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    a = _explorer(cohort, cohort_findings, path, "dr-a")
    b = _explorer(cohort, cohort_findings, path, "dr-b")
    f = cohort_findings[0]
    assert a.case.actions.finding.id == b.case.actions.finding.id == f.id
    a.case.actions.accept_button.click()
    assert "accepted" in a.case.findings_panel.value and _review_status(a, f) != "unreviewed"
    assert "accepted" not in b.case.findings_panel.value  # b has not looked yet
    assert [r["action"] for r in b.case.check_log()] == ["accept"]
    assert "accepted" in b.case.findings_panel.value and "dr-a" in b.case.actions.history.value
    assert _review_status(b, f) == _review_status(a, f)  # b's worklist was refreshed
    assert b.case.check_log() == []
    b.case.actions.reason.value = "false-positive"
    b.case.actions.override_button.click()
    a.open_patient(cohort_findings[1].patient_id)  # switching study also looks at the log
    a.open_patient(f.patient_id, f.study_uid)
    assert "overridden" in a.case.findings_panel.value and "false-positive" in a.case.actions.history.value
    assert _review_status(a, f) == _review_status(b, f) == "overridden"


def test_the_explorer_opens_on_a_log_with_a_record_missing_finding_id(cohort, cohort_findings: list[Finding],
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    store = ReviewStore(path)
    store.accept(cohort_findings[1], "dr-a")
    good = json.loads(path.read_text().splitlines()[0])
    with open(path, "a") as fh:
        fh.write(json.dumps(_without(good, "finding_id")) + "\n")
        fh.write(json.dumps({**good, "id": "x2", "finding_id": cohort_findings[0].id, "status": 3}) + "\n")
    ex = _explorer(cohort, cohort_findings, path, "dr-b")  # no KeyError
    assert len(ex.store) == 1 and [p.line for p in ex.store.problems] == [2, 3]
    assert "line 2" in ex.case.log_status.value and "missing finding_id" in ex.case.log_status.value
    assert "2 line(s) not used" in ex.case.log_status.value
    assert ex.case.actions.finding.id == cohort_findings[0].id
    assert "cds-problem-row" in ex.case.actions.history.value and "line 3" in ex.case.actions.history.value
    assert _review_status(ex, cohort_findings[1]) == "accepted"  # the valid record beside them counts
    with open(path, "a") as fh:  # a problem appearing while the explorer is open is shown too
        fh.write("{cut off")
    ex.case.check_log()
    assert "3 line(s) not used" in ex.case.log_status.value and "cut-off line" in ex.case.log_status.value


def test_an_open_explorer_picks_up_others_actions_by_itself(cohort, cohort_findings: list[Finding],
                                                           tmp_path: Path) -> None:
    """In Jupyter / voila an event loop runs: the case view looks at the log on a timer."""
    import asyncio

    path = tmp_path / "reviews.jsonl"
    f = cohort_findings[0]

    async def scenario() -> tuple[bool, str, str]:
        ex = _explorer(cohort, cohort_findings, path, "dr-b")
        assert ex.case._watch is not None  # watching started by itself (every 5 s)
        ex.case.watch_log(0.05)
        ReviewStore(path).override(f, "dr-a", "wrong-location", comment="left lobe")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "left lobe" in ex.case.actions.history.value:
                break
        status = _review_status(ex, f)
        ex.case.close()
        return ex.case._watch is None, ex.case.actions.history.value, status

    stopped, history, status = asyncio.run(scenario())
    assert "left lobe" in history and "wrong-location" in history and status == "overridden" and stopped
