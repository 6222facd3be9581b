"""The review log's file I/O: checked, fsync-ed appends under a lock, and reading only what was added.

:class:`AppendLog` knows bytes and lines, not records (:mod:`cds.review.store` parses them).

Writing (:meth:`AppendLog.append`) takes an exclusive ``flock`` on the file, starts on a fresh line
if a crash left the last one cut off, writes *every* byte (``os.write`` may write fewer than asked:
it loops, and a write that makes no progress is a failure), ``fsync``-s the file (and the folder when
the file is new), and only then lets go of the lock. Any failure (disk full, I/O error, short write,
permission denied, fsync error) truncates the file back to the size it had before, so that no half
line and no unconfirmed record stays behind, and raises :class:`ReviewNotSavedError`: the caller must
tell the user the action was **not saved**.

Reading (:meth:`AppendLog.read_new`) is cheap when nothing changed (one ``stat``). When the file grew,
it reads from where it stopped last time, under a shared lock (so a write in progress is never seen
half done), and returns the new complete lines with their line numbers; bytes after the last newline
are a cut-off line (a crash or a write that could not be undone) and are returned apart, never as a
line. A file that was replaced, changed without growing, or changed just before the point already
read is read again from the start (``reset``); a file is trusted to be append-only beyond that.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
>>> writer, reader = AppendLog(path), AppendLog(path)
>>> writer.append(b'{"a": 1}')
>>> reader.read_new().lines
[(1, b'{"a": 1}')]
>>> writer.append(b'{"a": 2}')
>>> reader.read_new().lines, reader.read_new().lines
([(2, b'{"a": 2}')], [])
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from cds.errors import CdsError

__all__ = ["AppendLog", "NewLines", "ReviewNotSavedError", "ReviewStoreError"]

_CHECK_BYTES = 64  # bytes before the read offset compared on each read: catches a rewritten file
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EIO: "input/output error on the disk",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOLCK: "the file cannot be locked",
}


class ReviewStoreError(CdsError):
    """The review log cannot be opened, read or written; the message names the file."""


class ReviewNotSavedError(ReviewStoreError):
    """An action could not be written durably to the review log: it was NOT saved.

    ``where`` is the log file, ``reason`` what went wrong (``"the disk is full"``, ...).

    >>> str(ReviewNotSavedError("r.jsonl", "the disk is full"))
    'r.jsonl: the disk is full; the action was NOT saved, try again once that is fixed'
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{where}: {reason}; the action was NOT saved, try again once that is fixed")


class _ShortWrite(OSError):
    """``os.write`` accepted no more bytes although some were left."""


def os_reason(exc: OSError) -> str:
    """A short, plain reason for an OS error (no path; the caller names the file).

    >>> os_reason(OSError(28, "No space left on device"))
    'the disk is full (No space left on device)'
    """
    text = exc.strerror or str(exc) or type(exc).__name__
    plain = None if isinstance(exc, _ShortWrite) else _REASONS.get(exc.errno or -1)
    return f"{plain} ({text})" if plain else text


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``; ``os.write`` may write fewer, so loop until done.

    Raises :class:`OSError` (``ENOSPC``, ``EIO``, ... as the OS reports them, or a short write that
    makes no progress) when not all bytes could be written.
    """
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            n = os.write(fd, view[done:])
        except InterruptedError:
            continue
        if n is None or n <= 0:
            raise _ShortWrite(errno.EIO, f"short write: only {done} of {len(view)} bytes were written (the disk "
                                         "accepted no more)")
        done += n


@dataclass
class NewLines:
    """What :meth:`AppendLog.read_new` found since the last call."""

    reset: bool = False  #: the file was read again from its start: forget what earlier calls returned
    lines: list[tuple[int, bytes]] = field(default_factory=list)  #: (1-based line number, line without newline)
    torn: tuple[int, bytes] | None = None  #: a cut-off last line (no newline after it), not part of ``lines``


class AppendLog:
    """One append-only lines file: durable appends and incremental reads (see the module docstring)."""

    #: Seconds to wait for another writer's lock before giving up (a write: not saved; a read: read anyway).
    lock_timeout = 10.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0  # bytes consumed, always just after a newline
        self._line_no = 0  # newlines consumed
        self._check = b""  # the bytes just before _offset when they were read
        self._sig: tuple[int, int, int, int] | None = None  # dev, ino, size, mtime_ns of the last read
        self._torn: tuple[int, bytes] | None = None

    def forget(self) -> None:
        """Make the next :meth:`read_new` read the whole file again."""
        self._offset, self._line_no, self._check, self._sig, self._torn = 0, 0, b"", None, None

    # ------------------------------------------------------------------------------------- read
    def read_new(self) -> NewLines:
        """Complete lines appended since the last call (all lines on the first call)."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            had = self._sig is not None
            self.forget()
            return NewLines(reset=had)
        except OSError as exc:
            raise ReviewStoreError(f"{self.path}: cannot read the review log ({os_reason(exc)})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ReviewStoreError(f"{self.path}: the review log is not a regular file; give a .jsonl file path")
        if self._sig == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            return NewLines(torn=self._torn)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise ReviewStoreError(f"{self.path}: cannot read the review log ({os_reason(exc)})") from None
        try:
            # a writer holds LOCK_EX until its line is complete and synced; if it never lets go (a hung
            # disk) or the file system has no locks, read anyway: a line being written then shows as
            # cut off until it is complete (it is never taken as a record)
            _lock(fd, fcntl.LOCK_SH, self.lock_timeout)
            return self._read_from(fd)
        except OSError as exc:
            raise ReviewStoreError(f"{self.path}: cannot read the review log ({os_reason(exc)})") from None
        finally:
            os.close(fd)  # also releases the shared lock

    def _read_from(self, fd: int) -> NewLines:
        st = os.fstat(fd)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        reset = False
        old = self._sig
        if old is not None and (old[:2] != sig[:2]  # another file now has the name (replaced, restored)
                                or st.st_size <= old[2]  # changed without growing: not an append
                                or os.pread(fd, len(self._check), self._offset - len(self._check)) != self._check):
            self.forget()
            reset = True
        data = _read_all(fd, self._offset, st.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        lines = []
        for i, raw in enumerate(data[:end].split(b"\n")[:-1]):
            lines.append((self._line_no + i + 1, raw))
        if end:
            self._line_no += data.count(b"\n", 0, end)
            self._offset += end
            n = min(_CHECK_BYTES, self._offset)
            self._check = os.pread(fd, n, self._offset - n)
        rest = data[end:]
        self._torn = (self._line_no + 1, rest) if rest.strip() else None
        self._sig = sig
        return NewLines(reset=reset, lines=lines, torn=self._torn)

    # ------------------------------------------------------------------------------------ write
    def append(self, line: bytes) -> None:
        """Append ``line`` (no newline in it) durably, or raise :class:`ReviewNotSavedError`."""
        if b"\n" in line:
            raise ValueError("a log line must not contain a newline")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise ReviewNotSavedError(str(self.path), f"cannot open the review log for writing: {os_reason(exc)}") \
                from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ReviewNotSavedError(str(self.path), "the review log is not a regular file")
            try:
                locked = _lock(fd, fcntl.LOCK_EX, self.lock_timeout)
            except OSError as exc:
                raise ReviewNotSavedError(str(self.path), f"cannot lock the review log: {os_reason(exc)}") from None
            if not locked:
                raise ReviewNotSavedError(str(self.path), f"another writer has held the review log locked for over "
                                                          f"{self.lock_timeout:g} s")
            self._append_locked(fd, line, new)
        finally:
            os.close(fd)  # releases the lock

    def _append_locked(self, fd: int, line: bytes, new: bool) -> None:
        size = os.fstat(fd).st_size
        try:
            # a crash may have left a cut-off last line: ours starts on a fresh line
            prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            write_all(fd, prefix + line + b"\n")
            os.fsync(fd)
            if new:  # make the new directory entry durable too
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            reason = os_reason(exc)
            if not _undo(fd, size):
                reason += ("; the log could not be cut back either, so part of the line may remain (it is "
                           "listed as a problem line if cut off)")
            raise ReviewNotSavedError(str(self.path), reason) from None


def _lock(fd: int, kind: int, timeout: float) -> bool:
    """``flock`` ``kind`` within ``timeout`` seconds: True when held, False when still taken by another.

    A read's lock on a file system without locks counts as not held (False); a write's raises.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except OSError:
            if kind == fcntl.LOCK_SH:
                return False
            raise


def _undo(fd: int, size: int) -> bool:
    """Cut the file back to ``size`` (the caller holds the exclusive lock); False if that fails too."""
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
            os.fsync(fd)
        return True
    except OSError:
        return False


def _read_all(fd: int, offset: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        n -= len(chunk)
    return b"".join(chunks)
