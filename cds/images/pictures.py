"""Read PNG/JPEG/BMP/TIFF pictures as 2D grayscale :class:`~cds.images.image.Image` (no patient frame).

>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image as PILImage
>>> with tempfile.TemporaryDirectory() as d:
...     PILImage.new("L", (4, 3), 7).save(Path(d) / "p.png")
...     img = read_picture(Path(d) / "p.png")
>>> img.shape, int(img.array.max()), img.meta["spacing_known"]
((3, 4), 7, False)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError
from cds.images.image import Image
from cds.images.limits import ImageLimits, check_file, content_kind, image_limits, read_head

__all__ = ["read_picture", "PICTURE_SUFFIXES", "PICTURE_CONTENT", "looks_like_picture"]

#: File name endings read as pictures.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: What :func:`cds.images.limits.content_kind` calls the formats read as pictures.
PICTURE_CONTENT = ("PNG", "JPEG", "GIF", "BMP", "TIFF")
_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I", "F")
_BYTES_PER_BAND = {"1": 0.125, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


def looks_like_picture(name: str, head: bytes) -> bool:
    """True for a picture file name ending, or PNG/JPEG/GIF/BMP/TIFF content in ``head`` (the first bytes).

    >>> looks_like_picture("x", b"\\x89PNG\\r\\n\\x1a\\n"), looks_like_picture("scan", bytes(132))
    (True, False)
    """
    return name.lower().endswith(PICTURE_SUFFIXES) or content_kind(head) in PICTURE_CONTENT


def _png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR chunk, read before Pillow sees the file."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def read_picture(path: str | Path, *, limits: ImageLimits | None = None) -> Image:
    """Read a PNG/JPEG/TIFF as a grayscale 2D image. Pixel spacing is unknown: 1.0 mm and ``spacing_known=False``.

    The file is checked before it is opened (:func:`cds.images.limits.check_file`) and the size its
    header claims (width x height x bands) against ``limits`` before the pixels are decoded.
    """
    from PIL import Image as PILImage

    path = Path(path)
    where = str(path)
    limits = limits or image_limits()
    st = check_file(path, limits.root)
    limits.check_file_size(where, st.st_size)
    head = read_head(path)
    size = _png_size(head)
    if size is not None:
        limits.check_object(where, (size[1], size[0]), 1, " (PNG header)")
    try:
        with PILImage.open(path) as pic:
            mode = pic.mode
            bands = len(pic.getbands())
            limits.check_object(
                where, (pic.size[1], pic.size[0]), bands * _BYTES_PER_BAND.get(mode, 1), f" ({mode})"
            )
            pic.load()
            if mode in _GREY_MODES:
                arr = np.asarray(pic)
            else:
                arr = np.asarray(pic.convert("L"))
            fmt = pic.format
    except ImageReadError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise ImageReadError(where, f"the picture claims too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/SyntaxError/...
        kind = content_kind(head)
        what = f"; the content is {kind}" if kind and kind not in PICTURE_CONTENT else ""
        raise ImageReadError(where, f"not a readable picture ({type(exc).__name__}: {exc}){what}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(where, f"unexpected picture shape {arr.shape} (mode {mode})")
    meta: dict[str, Any] = {"spacing_known": False, "patient_frame": False, "format": fmt, "mode": mode}
    if mode not in (*_GREY_MODES, "1"):
        meta["color_converted"] = f"{mode} -> L (ITU-R 601 luma)"
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return Image(np.ascontiguousarray(arr), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), None, meta, where)
