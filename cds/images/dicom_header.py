"""Check a DICOM image's pixel description before a single pixel is decoded.

:func:`check_pixel_header` reads Rows, Columns, NumberOfFrames, SamplesPerPixel, BitsAllocated,
BitsStored, PixelRepresentation and PhotometricInterpretation, refuses nonsense with an
:class:`~cds.errors.ImageReadError` naming the file and the attribute, checks the decoded size they
claim against the pixel budget (:class:`cds.images.limits.ImageLimits`) and, for uncompressed pixel
data, that the stored bytes match the claim. A 4 kB file claiming 20000 x 20000 pixels is refused here,
whatever its transfer syntax, before a decoder is called.

:func:`safe_get` is ``Dataset.get`` for hostile files: pydicom converts a value on first access, so
``ds.get("NumberOfFrames")`` raises ValueError for ``IS "abc"``; here it gives the raw text instead.

>>> from pydicom.dataset import Dataset
>>> ds = Dataset()
>>> ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 20000, 20000, 1, 8
>>> ds.PhotometricInterpretation = "MONOCHROME2"
>>> check_pixel_header(ds, "big.dcm", pixels_read=False)
Traceback (most recent call last):
...
cds.errors.ImageReadError: big.dcm: 20000x20000 pixels (8 bits), 400.0 MB claimed; the limit is 268.4 MB per image (set CDS_MAX_IMAGE_BYTES, in bytes, or read_image(max_bytes=...) to raise it)
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UncompressedTransferSyntaxes

from cds.errors import ImageReadError
from cds.images.limits import ImageLimits, image_limits

__all__ = ["safe_get", "Garbled", "check_pixel_header", "PIXEL_KEYWORDS"]

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FLOAT_BITS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}
_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
    "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3, "HSV": 3,
}  # fmt: skip
_LUT_COLOURS = ("Red", "Green", "Blue")


class Garbled(str):
    """The raw text of a value pydicom could not convert (``IS "abc"``); a str so it prints as read."""


def safe_get(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``, but a value pydicom cannot convert comes back as :class:`Garbled` text.

    >>> safe_get(Dataset(), "Rows", 7)
    7
    """
    try:
        return ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - pydicom raises ValueError/TypeError/OverflowError... on conversion
        try:
            raw = ds.get_item(keyword)
            value = getattr(raw, "value", b"")
        except Exception:  # noqa: BLE001
            value = b""
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        return Garbled(text.strip(" \x00"))


def _int(ds: Dataset, keyword: str, where: str, default: int | None = None) -> int:
    """``keyword`` as an int; ImageReadError naming it when absent (no ``default``), empty or not an integer."""
    value = safe_get(ds, keyword)
    if value is None or value == "":
        if default is None:
            raise ImageReadError(where, f"{keyword} is missing, so the pixel data cannot be interpreted")
        return default
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(where, f"{keyword} is {str(value)[:40]!r}, not an integer") from None


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = safe_get(meta, "TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else None


def check_pixel_header(
    ds: Dataset, where: str, limits: ImageLimits | None = None, *, pixels_read: bool = True
) -> int:
    """Check the pixel description of ``ds`` and its claimed decoded size; return the claimed bytes.

    ``pixels_read=False`` for a header read without the pixel data (a folder scan): then the stored
    pixel data are not compared with the claim. Raises :class:`~cds.errors.ImageReadError` naming
    ``where`` for: Rows/Columns missing or not positive, NumberOfFrames not a positive integer,
    SamplesPerPixel other than 1 or 3, BitsAllocated other than 1, 8, 16, 32 (32/64 for float pixel
    data), BitsStored outside 1..BitsAllocated, PixelRepresentation other than 0/1, a missing or unknown
    PhotometricInterpretation or one inconsistent with SamplesPerPixel, PALETTE COLOR without its
    lookup tables, a claim over the budget, and uncompressed pixel data shorter than the claim (or
    holding whole extra frames).
    """
    limits = limits or image_limits()
    rows = _int(ds, "Rows", where)
    cols = _int(ds, "Columns", where)
    for name, n in (("Rows", rows), ("Columns", cols)):
        if not 1 <= n <= 65535:
            raise ImageReadError(where, f"{name} is {n}; an image needs 1 to 65535")
    frames = _int(ds, "NumberOfFrames", where, default=1)
    if frames < 1:
        raise ImageReadError(where, f"NumberOfFrames is {frames}; it must be a positive integer")
    samples = _int(ds, "SamplesPerPixel", where)
    if samples not in (1, 3):
        raise ImageReadError(where, f"SamplesPerPixel is {samples}; only 1 (grey/palette) or 3 (colour) are supported")
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    bits = _int(ds, "BitsAllocated", where)
    allowed = (_FLOAT_BITS[keyword],) if keyword in _FLOAT_BITS else (1, 8, 16, 32)
    if bits not in allowed:
        raise ImageReadError(
            where, f"BitsAllocated is {bits}; {keyword or 'PixelData'} needs {' or '.join(map(str, allowed))}"
        )
    stored = _int(ds, "BitsStored", where, default=bits)
    if not 1 <= stored <= bits:
        raise ImageReadError(where, f"BitsStored is {stored}; it must be 1 to BitsAllocated ({bits})")
    if _int(ds, "PixelRepresentation", where, default=0) not in (0, 1):
        raise ImageReadError(where, "PixelRepresentation must be 0 (unsigned) or 1 (signed)")
    _check_photometric(ds, where, samples)
    detail = f" ({bits} bits x {samples} samples)" if samples > 1 else f" ({bits} bits)"
    shape = (rows, cols, frames) if frames > 1 else (rows, cols)
    claimed = limits.check_object(where, shape, samples * bits / 8, detail)
    if pixels_read and keyword is not None:
        _check_native_length(ds, where, keyword, claimed, rows * cols * samples * bits / 8, frames)
    return claimed


def _check_photometric(ds: Dataset, where: str, samples: int) -> None:
    value = safe_get(ds, "PhotometricInterpretation")
    if not value:
        raise ImageReadError(where, "PhotometricInterpretation is missing, so the pixel values cannot be interpreted")
    photometric = str(value).strip().upper()
    if photometric not in _SAMPLES:
        raise ImageReadError(
            where, f"PhotometricInterpretation {str(value)[:40]!r} is not one of {', '.join(_SAMPLES)}"
        )
    if _SAMPLES[photometric] != samples:
        raise ImageReadError(
            where, f"PhotometricInterpretation {photometric} needs SamplesPerPixel {_SAMPLES[photometric]}, "
            f"but it is {samples}",
        )
    if photometric == "PALETTE COLOR":
        missing = [
            c
            for c in _LUT_COLOURS
            if f"{c}PaletteColorLookupTableDescriptor" not in ds
            or (f"{c}PaletteColorLookupTableData" not in ds and f"Segmented{c}PaletteColorLookupTableData" not in ds)
        ]
        if missing:
            raise ImageReadError(
                where, f"PALETTE COLOR image without its colour lookup table ({', '.join(missing)} "
                "PaletteColorLookupTableDescriptor/Data missing), so its pixel values have no colours",
            )


def _check_native_length(
    ds: Dataset, where: str, keyword: str, claimed: int, frame_bytes: float, frames: int
) -> None:
    """Uncompressed pixel data must hold the claimed bytes (one padding byte allowed; not whole extra frames)."""
    ts = _transfer_syntax(ds)
    if keyword == "PixelData" and ts is not None and ts not in UncompressedTransferSyntaxes:
        return  # encapsulated: the decoder checks the fragments
    try:
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - a value pydicom cannot even load
        raise ImageReadError(where, f"{keyword} cannot be read") from None
    if not isinstance(value, bytes | bytearray):
        return
    held = len(value)
    if held < claimed:
        raise ImageReadError(
            where, f"{keyword} holds {held} bytes but Rows x Columns x frames x samples x bits claims {claimed} "
            "(truncated, or wrong Rows/Columns/BitsAllocated?)",
        )
    excess = held - claimed  # one byte pads an odd length to even
    extra_frames = int(excess // frame_bytes) if excess > 1 and frame_bytes > 0 else 0
    if extra_frames >= 1:
        raise ImageReadError(
            where, f"{keyword} holds {held} bytes, room for {frames + extra_frames} frames, but NumberOfFrames "
            f"says {frames} (wrong Rows/Columns or NumberOfFrames?)",
        )
