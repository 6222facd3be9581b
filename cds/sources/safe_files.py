"""Find and open FHIR files without trusting the folder: stat before open, regular files only, inside the root.

A FIFO, device or socket named ``*.json`` is refused without being opened (opening a FIFO would wait
for a writer forever; ``/dev/zero`` never ends); a symbolic link is followed only when its target
lies inside the cohort root; a file larger than the limit (default 512 MB, ``max_file_mb=`` or
``$CDS_MAX_FHIR_FILE_MB``) is refused before it is read. Every refusal is a :class:`Problem`
naming the file; nothing here raises on a bad file.

>>> import os, tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> os.mkfifo(d / "pipe.json")
>>> files, problems = find_files(d)
>>> real, problem = check_file(files[0], d.resolve(), 1000)
>>> real is None, problem.kind
(True, 'not-regular-file')
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cds.errors import ParameterError
from cds.sources.records import Problem

__all__ = ["DEFAULT_MAX_FILE_MB", "ENV_MAX_FILE_MB", "max_file_bytes", "is_under", "find_files", "check_file",
           "open_checked", "read_limited", "Refused", "FHIR_SUFFIXES"]

DEFAULT_MAX_FILE_MB = 512
ENV_MAX_FILE_MB = "CDS_MAX_FHIR_FILE_MB"
FHIR_SUFFIXES = (".json", ".ndjson")


def max_file_bytes(max_file_mb: float | None = None) -> int:
    """The per-file size limit in bytes: ``max_file_mb``, else ``$CDS_MAX_FHIR_FILE_MB``, else 512 MB.

    >>> max_file_bytes(1)
    1000000
    >>> max_file_bytes(0)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: max_file_mb: must be a positive number of megabytes, got 0
    """
    name, value = "max_file_mb", max_file_mb
    if value is None and os.environ.get(ENV_MAX_FILE_MB):
        name, value = ENV_MAX_FILE_MB, os.environ[ENV_MAX_FILE_MB]
    if value is None:
        value = DEFAULT_MAX_FILE_MB
    try:
        mb = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a positive number of megabytes, got {value!r}") from None
    if not mb > 0 or mb == float("inf"):
        raise ParameterError(name, f"must be a positive number of megabytes, got {value!r}")
    return int(mb * 1_000_000)


def is_under(path: Path, root: Path) -> bool:
    """Whether the (resolved) ``path`` is ``root`` or lies inside it.

    >>> is_under(Path("/a/b/c"), Path("/a/b")), is_under(Path("/a/bc"), Path("/a/b"))
    (True, False)
    """
    return path == root or root in path.parents


def _what(mode: int) -> str | None:
    """A name for a file type that is not read, ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _problem(path: Path, kind: str, message: str) -> Problem:
    return Problem(str(path), None, None, None, kind, message)


def find_files(folder: Path) -> tuple[list[Path], list[Problem]]:
    """``*.json`` / ``*.ndjson`` entries under ``folder`` (recursively, sorted), and problems met on the way.

    Links to folders are not followed (one whose target is outside ``folder`` is a problem); entries
    are returned whatever their type, for :func:`check_file` to refuse.
    """
    root = folder.resolve()
    files: list[Path] = []
    problems: list[Problem] = []

    def unreadable(exc: OSError) -> None:
        problems.append(_problem(Path(exc.filename or folder), "unreadable",
                                 f"folder cannot be listed ({exc.strerror or exc}); its files were not read"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=False):
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink():
                try:
                    inside = is_under(p.resolve(strict=True), root)
                except (OSError, RuntimeError):
                    inside = True  # a broken link to a folder holds nothing to read
                if not inside:
                    problems.append(_problem(p, "outside-root", "a link to a folder outside the cohort root "
                                             f"{folder}; not followed (copy the files into the cohort folder)"))
        files.extend(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in FHIR_SUFFIXES)
    return sorted(files), problems


def check_file(path: Path, root: Path | None, limit: int) -> tuple[Path | None, Problem | None]:
    """The real path of a FHIR file that may be opened, or ``(None, problem)``; the file is never opened.

    ``root`` (resolved) is where links may lead; ``None`` accepts any target (a file the user named).
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            why = "a loop of links"
        elif path.is_symlink():
            why = "a link that points nowhere"
        else:
            why = getattr(exc, "strerror", None) or str(exc)
        return None, _problem(path, "unreadable", f"cannot be read ({why})")
    if root is not None and not is_under(real, root):
        return None, _problem(path, "outside-root", f"a link to a file outside the cohort root {root}; "
                                                    "not followed (copy the file into the cohort folder)")
    try:
        st = os.stat(real)
    except OSError as exc:
        return None, _problem(path, "unreadable", f"cannot be read ({exc.strerror or exc})")
    what = _what(st.st_mode)
    if what is not None:
        return None, _problem(path, "not-regular-file", f"is {what}, not a regular file; it was not opened")
    if st.st_size > limit:
        return None, _too_large(path, st.st_size, limit)
    return real, None


def _too_large(path: Path, size: int, limit: int) -> Problem:
    return _problem(path, "too-large", f"file is {size / 1e6:.4g} MB, over the {limit / 1e6:.4g} MB limit for "
                                       f"one FHIR file; split it or raise max_file_mb / ${ENV_MAX_FILE_MB}")


class Refused(Exception):
    """Raised by :func:`open_checked` when the file changed into something not to read; ``.problem`` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


@contextmanager
def open_checked(shown: Path, real: Path, limit: int) -> Iterator[BinaryIO]:
    """Open ``real`` (from :func:`check_file`) for reading without following links or blocking, and check
    again on the open file that it is a regular file within the limit (it may have been swapped).

    Raises :class:`Refused` (with the problem, naming ``shown``) instead of opening anything else.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise Refused(_problem(shown, "unreadable", f"cannot be opened ({exc.strerror or exc})")) from None
    try:
        st = os.fstat(fd)
        what = _what(st.st_mode)
        if what is not None:
            raise Refused(_problem(shown, "not-regular-file", f"is {what}, not a regular file; it was not read"))
        if st.st_size > limit:
            raise Refused(_too_large(shown, st.st_size, limit))
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_limited(fh: BinaryIO, shown: Path, limit: int) -> bytes:
    """All of ``fh``, refusing (:class:`Refused`) a file that grew past ``limit`` while being read."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise Refused(_too_large(shown, len(data), limit))
    return data
