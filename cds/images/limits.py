"""What an image reader may open and how much it may decode: regular files only, under a root, within a budget.

Every reader (:mod:`cds.images.dicom`, :mod:`cds.images.nifti`, :mod:`cds.images.pictures`,
:mod:`cds.images.dicomweb` via :mod:`cds.images.dicom_image`) checks a file here *before* opening it and
checks the size the header claims *before* decoding a pixel, so a hostile or unlucky file fails fast
with an :class:`~cds.errors.ImageReadError` naming it:

- a FIFO, a device (``/dev/zero``), a socket or a link to one is refused from ``os.stat`` alone (never
  opened, so a FIFO cannot hang a run); an empty file is refused;
- with a ``root`` (the cohort root), a path that resolves outside it (``..``, a symlink pointing
  elsewhere) is refused, not followed;
- the decoded size a header claims (rows x columns x frames x samples x bytes) must fit the budget:
  :data:`DEFAULT_MAX_IMAGE_BYTES` per image object (a DICOM file or instance, a picture, a NIfTI file)
  and :data:`DEFAULT_MAX_SERIES_BYTES` per series, overridden by the environment variables
  ``CDS_MAX_IMAGE_BYTES`` / ``CDS_MAX_SERIES_BYTES`` or by ``read_image(max_bytes=..., max_series_bytes=...)``.

>>> limits = image_limits(max_bytes=1000)
>>> limits.check_object("a.dcm", (20000, 20000), 1)
Traceback (most recent call last):
...
cds.errors.ImageReadError: a.dcm: 20000x20000 pixels, 400.0 MB claimed; the limit is 1.0 kB per image (set CDS_MAX_IMAGE_BYTES, in bytes, or read_image(max_bytes=...) to raise it)
>>> check_file("/dev/null")
Traceback (most recent call last):
...
cds.errors.ImageReadError: /dev/null: a character device, not a regular file; refused without opening it
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cds.errors import ImageReadError, ParameterError

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_SERIES_BYTES",
    "ENV_MAX_IMAGE_BYTES",
    "ENV_MAX_SERIES_BYTES",
    "HEADER_SLACK_BYTES",
    "ImageLimits",
    "image_limits",
    "check_file",
    "check_under_root",
    "special_file_kind",
    "content_kind",
    "format_bytes",
    "read_head",
]

#: Largest decoded size (bytes) one image object may claim: a DICOM file or instance, a picture, a NIfTI
#: file. 256 MiB holds a 16-bit 8k x 8k radiograph and a 500-slice 512 x 512 CT volume in one object; a
#: 20000 x 20000 claim (400 MB at 8 bits) is refused.
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20
#: Largest decoded size (bytes) of all the slices of one series together (3000 CT slices of 512 x 512).
DEFAULT_MAX_SERIES_BYTES = 2 * 2**30
#: Environment variables overriding the two defaults (a number of bytes: ``4e8``, ``400MB``, ``1GiB``).
ENV_MAX_IMAGE_BYTES = "CDS_MAX_IMAGE_BYTES"
ENV_MAX_SERIES_BYTES = "CDS_MAX_SERIES_BYTES"
#: A file may be this much larger than its pixel budget (headers, overlays, private data) before it is
#: refused without reading it.
HEADER_SLACK_BYTES = 16 * 2**20

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def _parse_bytes(value: object, name: str) -> int:
    """A positive byte count from an int/float or a string like ``"4e8"``, ``"400MB"``, ``"1GiB"``.

    >>> _parse_bytes("400MB", "x"), _parse_bytes("1GiB", "x"), _parse_bytes(4e8, "x")
    (400000000, 1073741824, 400000000)
    >>> _parse_bytes("lots", "CDS_MAX_IMAGE_BYTES")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: CDS_MAX_IMAGE_BYTES: must be a positive number of bytes (e.g. 4e8, 400MB or 1GiB), got 'lots'
    """
    n: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        n = float(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m and m[2].lower() in _UNITS:
            n = float(m[1]) * _UNITS[m[2].lower()]
    if n is None or not math.isfinite(n) or n < 1:
        raise ParameterError(name, f"must be a positive number of bytes (e.g. 4e8, 400MB or 1GiB), got {value!r}")
    return int(n)


def format_bytes(n: float) -> str:
    """Decimal units with one decimal: ``3.0 GB``.

    >>> format_bytes(3e9), format_bytes(268435456), format_bytes(12)
    ('3.0 GB', '268.4 MB', '12 bytes')
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class ImageLimits:
    """The budgets and the root one read works under; make one with :func:`image_limits`."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_series_bytes: int = DEFAULT_MAX_SERIES_BYTES
    root: Path | None = None

    @property
    def max_file_bytes(self) -> int:
        """Largest file read at all: the per-image budget plus :data:`HEADER_SLACK_BYTES`."""
        return self.max_bytes + HEADER_SLACK_BYTES

    def check_object(
        self, where: str, shape: tuple[int, ...], bytes_per_pixel: float, detail: str = "", unit: str = "frames"
    ) -> int:
        """Raise ImageReadError when ``shape`` (rows, cols[, frames]) at ``bytes_per_pixel`` exceeds the
        per-image budget, naming the claimed size; returns the claimed bytes."""
        claimed = int(math.ceil(math.prod(int(n) for n in shape) * bytes_per_pixel))
        if claimed > self.max_bytes:
            dims = "x".join(str(int(n)) for n in shape[:2])
            more = "".join(f" x {int(n)} {unit}" for n in shape[2:])
            raise ImageReadError(
                where,
                f"{dims} pixels{more}{detail}, {format_bytes(claimed)} claimed; the limit is "
                f"{format_bytes(self.max_bytes)} per image (set {ENV_MAX_IMAGE_BYTES}, in bytes, or "
                "read_image(max_bytes=...) to raise it)",
            )
        return claimed

    def check_series(self, where: str, n_objects: int, claimed: int) -> None:
        """Raise ImageReadError when the ``claimed`` bytes of ``n_objects`` together exceed the series budget."""
        if claimed > self.max_series_bytes:
            raise ImageReadError(
                where,
                f"{n_objects} images, {format_bytes(claimed)} claimed together; the limit is "
                f"{format_bytes(self.max_series_bytes)} per series (set {ENV_MAX_SERIES_BYTES}, in bytes, or "
                "read_image(max_series_bytes=...) to raise it)",
            )

    def check_file_size(self, where: str, size: int) -> None:
        """Raise ImageReadError for a file too large to read at all under the per-image budget."""
        if size > self.max_file_bytes:
            raise ImageReadError(
                where,
                f"the file is {format_bytes(size)}, more than the {format_bytes(self.max_bytes)} per-image limit "
                f"allows (set {ENV_MAX_IMAGE_BYTES}, in bytes, or read_image(max_bytes=...) to raise it)",
            )


def image_limits(
    max_bytes: int | float | str | None = None,
    max_series_bytes: int | float | str | None = None,
    root: str | Path | None = None,
) -> ImageLimits:
    """The limits for one read: each argument, else its environment variable, else the module default.

    Raises :class:`~cds.errors.ParameterError` naming the keyword or variable for a value that is not a
    positive number of bytes.

    >>> image_limits(max_bytes="1GB").max_bytes
    1000000000
    """

    def pick(value: object, env: str, default: int, name: str) -> int:
        if value is not None:
            return _parse_bytes(value, name)
        text = os.environ.get(env, "").strip()
        return _parse_bytes(text, env) if text else default

    return ImageLimits(
        pick(max_bytes, ENV_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_BYTES, "max_bytes"),
        pick(max_series_bytes, ENV_MAX_SERIES_BYTES, DEFAULT_MAX_SERIES_BYTES, "max_series_bytes"),
        Path(os.path.realpath(root)) if root is not None and str(root) != "" else None,
    )


# ----------------------------------------------------------------------------------------- files


def special_file_kind(mode: int) -> str | None:
    """What a non-regular, non-directory ``st_mode`` is (``"a named pipe (FIFO)"``...); None for a regular file or a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def check_under_root(path: str | Path, root: Path | None) -> None:
    """Raise ImageReadError when ``path`` (links and ``..`` resolved, nothing opened) lies outside ``root``.

    >>> check_under_root("/etc/passwd", Path("/work"))
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /etc/passwd: outside the cohort root /work; images are read only from under it
    """
    if root is None:
        return
    real = Path(os.path.realpath(path))
    if real == root or real.is_relative_to(root):
        return
    text = str(path)
    via = f" (it resolves to {real})" if os.path.abspath(text) != str(real) else ""
    raise ImageReadError(
        text, f"outside the cohort root {root}{via}; images are read only from under it"
        + ("; links out of the root are not followed" if via else ""),
    )


def check_file(path: str | Path, root: Path | None = None, *, folder_ok: bool = False) -> os.stat_result:
    """``os.stat`` of ``path`` after checking it may be read: under ``root`` (when given), existing, a regular
    non-empty file (or a folder with ``folder_ok``). Nothing is opened. Raises ImageReadError naming ``path``."""
    text = str(path)
    check_under_root(path, root)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(text, f"a link to a missing file ({os.readlink(path)})") from None
        raise ImageReadError(text, "no such file or folder") from None
    except OSError as exc:
        raise ImageReadError(text, f"cannot be examined ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        if folder_ok:
            return st
        raise ImageReadError(text, "a folder where a file was expected")
    kind = special_file_kind(st.st_mode)
    if kind is not None:
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise ImageReadError(text, f"{kind}{link}, not a regular file; refused without opening it")
    if st.st_size == 0:
        raise ImageReadError(text, "empty file (0 bytes)")
    return st


# ----------------------------------------------------------------------------------------- content

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF8", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (0, b"BM", "BMP"),
    (0, b"RIFF", "RIFF (WebP/AVI/WAV)"),
    (0, b"%PDF", "PDF"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (344, b"n+1\x00", "NIfTI-1"),
    (344, b"ni1\x00", "NIfTI-1 header"),
    (4, b"n+2\x00", "NIfTI-2"),
)


def content_kind(head: bytes) -> str | None:
    """The format the first bytes of a file show (``"DICOM"``, ``"PNG"``, ``"JPEG"``, ``"NIfTI-1"``...), or None.

    >>> content_kind(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)), content_kind(bytes(128) + b"DICM"), content_kind(b"??")
    ('PNG', 'DICOM', None)
    """
    if head[128:132] == b"DICM":
        return "DICOM"
    for offset, magic, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    text = head[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "JSON"
    if text[:1] == b"<":
        return "XML/HTML"
    return None


def read_head(path: str | Path, n: int = 512) -> bytes:
    """The first ``n`` bytes of a file that :func:`check_file` has passed (ImageReadError when it cannot be opened)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot open ({exc.strerror or exc})") from None
