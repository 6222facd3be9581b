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

__all__ = ["read_picture", "PICTURE_SUFFIXES", "looks_like_picture"]

#: File name endings read as pictures.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def looks_like_picture(name: str, head: bytes) -> bool:
    """True for a PNG/JPEG signature in ``head`` (the first bytes of a file) or a picture file name ending.

    >>> looks_like_picture("x.dcm", b"\\x89PNG\\r\\n"), looks_like_picture("scan.dcm", bytes(132))
    (True, False)
    """
    return head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or name.lower().endswith(PICTURE_SUFFIXES)


def read_picture(path: str | Path) -> Image:
    """Read a PNG/JPEG/TIFF as a grayscale 2D image. Pixel spacing is unknown: 1.0 mm and ``spacing_known=False``."""
    from PIL import Image as PILImage

    path = Path(path)
    try:
        with PILImage.open(path) as pic:
            pic.load()
            mode = pic.mode
            if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(pic)
            else:
                arr = np.asarray(pic.convert("L"))
            fmt = pic.format
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/DecompressionBombError
        raise ImageReadError(str(path), f"not a readable picture ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise ImageReadError(str(path), f"unexpected picture shape {arr.shape} (mode {mode})")
    meta: dict[str, Any] = {"spacing_known": False, "patient_frame": False, "format": fmt, "mode": mode}
    if mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1"):
        meta["color_converted"] = f"{mode} -> L (ITU-R 601 luma)"
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return Image(np.ascontiguousarray(arr), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), None, meta, str(path))
