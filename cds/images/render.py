"""Kernel-side 2D rendering of images for the case explorer: window/level, zoom/pan, AI overlays -> PNG.

numpy + Pillow only, and fast: one 512x512 slice with a heatmap and a box renders to PNG in a few
milliseconds, so a slider move round-trips well inside 50 ms.

Conventions: a 2D image is ``(rows, cols)``; a volume ``(slices, rows, cols)`` (as :mod:`cds.images.image`).
Overlay positions are continuous array indices (row, col[, slice]); :func:`overlays_from_finding`
converts a Finding's location (patient LPS mm or image pixels) into them.

>>> import numpy as np
>>> arr = np.arange(100, dtype=np.int16).reshape(10, 10)
>>> apply_window(arr, center=50, width=20)[:, 0].tolist()  # 40 -> 0, 50 -> mid-grey, 60 -> 255
[0, 0, 0, 0, 0, 128, 255, 255, 255, 255]
>>> png = render_png(arr, (50, 20), overlays=[Overlay("box", (2, 2, 6, 6))])
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cds.errors import ParameterError

__all__ = [
    "CT_PRESETS",
    "Overlay",
    "apply_window",
    "window_presets",
    "default_preset",
    "view_box",
    "render_rgb",
    "render_png",
    "encode_png",
    "overlays_from_finding",
    "overlays_on_slice",
    "slice_of",
    "STATE_COLOURS",
]

log = logging.getLogger(__name__)

#: CT window (centre, width) in HU.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
#: Colours of AI states (worklist, findings panel, overlays).
STATE_COLOURS: dict[str, tuple[int, int, int]] = {
    "positive": (220, 50, 47), "indeterminate": (230, 160, 0), "measured": (38, 139, 210),
    "negative": (60, 160, 60), "no-ai": (140, 140, 140),
    # the non-answers (cds.review.worklist.REFUSAL_STATES), as cds.explorer.widgets.theme.STATE_VARS' fallbacks
    "record-mismatch": (183, 28, 28), "input-rejected": (230, 81, 0), "outside-intended-use": (0, 96, 100),
}
OverlayKind = Literal["box", "point", "mask", "heatmap"]


@dataclass
class Overlay:
    """One AI overlay on an image, in array-index coordinates.

    ``kind``: ``box`` (``data`` = (r0, c0, r1, c1)), ``point`` ((r, c)), ``mask`` (bool array, the
    slice's or the volume's shape) or ``heatmap`` (float array in [0, 1], slice or volume shape).
    ``slices`` = (first, last) slice the box/point is on (volumes; None = every slice).
    """

    kind: OverlayKind
    data: Any
    slices: tuple[int, int] | None = None
    colour: tuple[int, int, int] = (255, 60, 60)
    label: str = ""
    finding_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- windows
def apply_window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window/level to uint8: ``center - width/2`` -> 0, ``center + width/2`` -> 255.

    Integer images of up to 16 bits go through a lookup table (one table per window, cached), which
    is several times faster than float arithmetic on large images.
    """
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ParameterError("window", f"centre and width must be finite numbers, got ({center}, {width})")
    width = max(float(width), 1e-6)
    lo = float(center) - width / 2.0
    a = np.asarray(arr)
    if a.dtype in (np.uint8, np.uint16, np.int16, np.int8):
        info = np.iinfo(a.dtype)
        lut = _lut(int(info.min), int(info.max), lo, width)
        idx = a if info.min == 0 else (a.astype(np.int32) - int(info.min))
        return lut[idx]
    out = (a.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    np.clip(out, 0, 255, out=out)
    return (out + 0.5).astype(np.uint8)


@lru_cache(maxsize=64)
def _lut(vmin: int, vmax: int, lo: float, width: float) -> np.ndarray:
    values = np.arange(vmin, vmax + 1, dtype=np.float32)
    out = (values - np.float32(lo)) * np.float32(255.0 / width)
    np.clip(out, 0, 255, out=out)
    return (out + 0.5).astype(np.uint8)


def _percentile_window(arr: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    a = np.asarray(arr)
    step = max(1, int(np.ceil((a.size / 250_000) ** (1 / max(a.ndim, 1)))))
    sample = a[tuple(slice(None, None, step) for _ in range(a.ndim))].astype(np.float32).ravel()
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return float((lo + hi) / 2.0), float(hi - lo)


def window_presets(image: Any) -> dict[str, tuple[float, float]]:
    """Named (centre, width) presets for an image (a :class:`cds.images.image.Image` or an array).

    CT: lung, mediastinum, bone (HU). MG: mammo (0.5-99.5 percentiles of the breast, ignoring the
    background). CR/DX: cxr (the DICOM window if recorded, else the 0.5-99.5 percentiles). Every
    image also gets ``dicom`` (when recorded), ``auto`` (1-99 percentiles) and ``full`` (min-max).
    """
    arr = np.asarray(getattr(image, "array", image))
    modality = (getattr(image, "modality", None) or "").upper()
    meta = getattr(image, "meta", {}) or {}
    presets: dict[str, tuple[float, float]] = {}
    dicom = None
    if _usable_window(meta.get("window_center"), meta.get("window_width")):
        dicom = (float(meta["window_center"]), float(meta["window_width"]))
    if modality == "CT":
        presets.update(CT_PRESETS)
    elif modality == "MG":
        a = arr.astype(np.float32)
        fg = a[a > np.percentile(a[:: max(1, a.shape[0] // 256)], 20)] if a.size else a
        presets["mammo"] = _percentile_window(fg if fg.size else a, 0.5, 99.5)
    elif modality in ("CR", "DX"):
        presets["cxr"] = dicom or _percentile_window(arr, 0.5, 99.5)
    if dicom:
        presets["dicom"] = dicom
    presets["auto"] = _percentile_window(arr, 1.0, 99.0)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    full = ((lo + hi) / 2.0, max(hi - lo, 1.0))
    presets["full"] = full if _usable_window(*full) else presets["auto"]  # values near the float range
    return presets


def default_preset(image: Any) -> str:
    """The preset a viewer opens with: lung for CT, mammo for MG, cxr for CR/DX, else dicom or auto.

    >>> default_preset(np.zeros((4, 4)))
    'auto'
    """
    modality = (getattr(image, "modality", None) or "").upper()
    meta = getattr(image, "meta", {}) or {}
    first = {"CT": "lung", "MG": "mammo", "CR": "cxr", "DX": "cxr"}.get(modality)
    if first:
        return first
    return "dicom" if _usable_window(meta.get("window_center"), meta.get("window_width")) else "auto"


def _usable_window(center: Any, width: Any) -> bool:
    """A recorded DICOM window worth offering: a finite centre and a finite positive width.

    >>> _usable_window(40.0, 400.0), _usable_window(float("nan"), 400.0), _usable_window(40.0, 0.0)
    (True, False, False)
    """
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(c) and np.isfinite(w) and w > 0)


# --------------------------------------------------------------------------------------- geometry
def slice_of(array: np.ndarray, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a volume (clipped to range), or the image itself when 2D."""
    a = np.asarray(array)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ParameterError("image", f"expected a 2D or 3D array, got shape {a.shape}")
    return a[int(np.clip(index, 0, a.shape[0] - 1))]


def view_box(shape: tuple[int, int], zoom: float = 1.0, center: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int, int]:
    """The (r0, r1, c0, c1) crop shown at ``zoom`` (>= 1) around ``center`` (fractions of rows, cols).

    The box is kept inside the image, so panning stops at the edges.

    >>> view_box((100, 200), zoom=2.0, center=(0.5, 0.5))
    (25, 75, 50, 150)
    >>> view_box((100, 200), zoom=2.0, center=(0.0, 1.0))
    (0, 50, 100, 200)
    """
    rows, cols = int(shape[0]), int(shape[1])
    zoom = max(1.0, float(zoom))
    h, w = max(1, int(round(rows / zoom))), max(1, int(round(cols / zoom)))
    cr, cc = float(center[0]) * rows, float(center[1]) * cols
    r0 = int(round(np.clip(cr - h / 2.0, 0, rows - h)))
    c0 = int(round(np.clip(cc - w / 2.0, 0, cols - w)))
    return r0, r0 + h, c0, c0 + w


# ---------------------------------------------------------------------------------------- overlays
@lru_cache(maxsize=4)
def _heat_lut(name: str = "inferno") -> np.ndarray:
    """256x3 uint8 colour table of a matplotlib colormap (computed once)."""
    try:
        from matplotlib import colormaps

        return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    except Exception:  # noqa: BLE001 - matplotlib is optional here: fall back to a red ramp
        ramp = np.linspace(0, 255, 256).astype(np.uint8)
        return np.stack([ramp, ramp // 3, np.zeros_like(ramp)], axis=1)


def _resize_to(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if arr.shape == tuple(shape):
        return arr
    from PIL import Image as PILImage

    pic = PILImage.fromarray(arr.astype(np.float32), mode="F")
    return np.asarray(pic.resize((shape[1], shape[0]), PILImage.BILINEAR), dtype=np.float32)


def _on_slice(ov: Overlay, index: int) -> bool:
    return ov.slices is None or ov.slices[0] <= index <= ov.slices[1]


def overlays_on_slice(overlays: list[Overlay], index: int) -> list[Overlay]:
    """The overlays visible on slice ``index`` (2D images: pass 0)."""
    return [o for o in overlays if _on_slice(o, index)]


def _draw_box(rgb: np.ndarray, r0: float, c0: float, r1: float, c1: float, colour: tuple[int, int, int],
              thick: int) -> None:
    rows, cols = rgb.shape[:2]
    a, b = int(np.floor(min(r0, r1))), int(np.ceil(max(r0, r1)))
    c, d = int(np.floor(min(c0, c1))), int(np.ceil(max(c0, c1)))
    if b < 0 or d < 0 or a >= rows or c >= cols:
        return
    col = np.asarray(colour, dtype=np.uint8)
    segments = [
        (slice(max(a, 0), min(a + thick, rows)), slice(max(c, 0), min(d + 1, cols))),
        (slice(max(b - thick + 1, 0), min(b + 1, rows)), slice(max(c, 0), min(d + 1, cols))),
        (slice(max(a, 0), min(b + 1, rows)), slice(max(c, 0), min(c + thick, cols))),
        (slice(max(a, 0), min(b + 1, rows)), slice(max(d - thick + 1, 0), min(d + 1, cols))),
    ]
    edge_ok = [a >= 0, b < rows, c >= 0, d < cols]
    for (rs, cs), ok in zip(segments, edge_ok, strict=True):
        if ok:
            rgb[rs, cs] = col


def _draw_point(rgb: np.ndarray, r: float, c: float, colour: tuple[int, int, int], size: int, thick: int) -> None:
    """A square ring of half-size ``size`` with a cross at its centre."""
    ri, ci = int(round(r)), int(round(c))
    _draw_box(rgb, ri - size, ci - size, ri + size, ci + size, colour, thick)
    rows, cols = rgb.shape[:2]
    col = np.asarray(colour, dtype=np.uint8)
    if 0 <= ri < rows:
        rgb[ri, max(ci - size // 2, 0):min(ci + size // 2 + 1, cols)] = col
    if 0 <= ci < cols:
        rgb[max(ri - size // 2, 0):min(ri + size // 2 + 1, rows), ci] = col


def _overlay_plane(arr: np.ndarray, index: int, box: tuple[int, int, int, int], slice_shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(arr)
    plane = a if a.ndim == 2 else a[int(np.clip(index, 0, a.shape[0] - 1))]
    if plane.shape != slice_shape:
        plane = _resize_to(plane.astype(np.float32), slice_shape)
    r0, r1, c0, c1 = box
    return plane[r0:r1, c0:c1]


def render_rgb(array: np.ndarray, window: tuple[float, float], index: int = 0, zoom: float = 1.0,
               center: tuple[float, float] = (0.5, 0.5), overlays: list[Overlay] | None = None,
               opacity: float = 0.4, out_size: int | None = 512) -> np.ndarray:
    """Window, crop (zoom/pan), overlay and resize one slice.

    Returns ``(h, w)`` uint8 grey when no overlay is on this slice, else ``(h, w, 3)`` RGB.
    ``out_size`` is the longest side of the result (None = the crop's own size). Box and point
    outlines are drawn opaque at about 2 screen pixels; masks and heatmaps blend with ``opacity``.
    """
    plane = slice_of(array, index)
    box = view_box(plane.shape, zoom, center)
    r0, r1, c0, c1 = box
    grey = apply_window(plane[r0:r1, c0:c1], *window)
    scale = 1.0 if out_size is None else out_size / max(grey.shape)
    todo = overlays_on_slice(list(overlays or ()), index)
    if not todo:
        return _resize(grey, scale)
    op = float(np.clip(opacity, 0.0, 1.0))
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint16)
    for ov in todo:  # fills first (integer blending: x * (256 - a) + colour * a, / 256)
        if ov.kind == "heatmap":
            h = np.clip(np.nan_to_num(_overlay_plane(ov.data, index, box, plane.shape)), 0, 1)
            idx = (h * 255).astype(np.uint8)
            a = (idx.astype(np.uint16) * np.uint16(round(op * 256)) // 255)[:, :, None]
            rgb = (rgb * (256 - a) + np.take(_heat_lut(), idx, axis=0).astype(np.uint16) * a) >> 8
        elif ov.kind == "mask":
            m = _overlay_plane(ov.data, index, box, plane.shape) > 0.5
            col = np.asarray(ov.colour, dtype=np.uint16)
            a = np.uint16(round(op * 256))
            rgb[m] = (rgb[m] * (256 - a) + col * a) >> 8
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            rgb[edge] = col
    out = rgb.astype(np.uint8)
    thick = max(1, int(round(2.0 / scale)))
    for ov in todo:
        if ov.kind == "box":
            br0, bc0, br1, bc1 = ov.data
            _draw_box(out, br0 - r0, bc0 - c0, br1 - r0, bc1 - c0, ov.colour, thick)
        elif ov.kind == "point":
            pr, pc = ov.data[:2]
            _draw_point(out, pr - r0, pc - c0, ov.colour, max(4, 6 * thick), thick)
    return _resize(out, scale)


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return img
    from PIL import Image as PILImage

    h, w = img.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    resample = PILImage.BILINEAR if scale < 1 else PILImage.NEAREST
    return np.asarray(PILImage.fromarray(img).resize(size, resample))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a grey ``(h, w)`` or RGB ``(h, w, 3)`` uint8 array.

    A small encoder of its own: the PNG "Sub" filter in numpy, then zlib with the run-length strategy
    at ``level``. On a 512x419 radiograph that is ~2 ms against Pillow's ~25 ms (adaptive filters,
    full deflate) for a file about 10 % larger, which is what makes slider moves feel immediate.

    >>> import io
    >>> from PIL import Image as PILImage
    >>> a = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    >>> np.array_equal(np.asarray(PILImage.open(io.BytesIO(encode_png(a)))), a)
    True
    """
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 2:
        colour_type, bpp = 0, 1
    elif a.ndim == 3 and a.shape[2] == 3:
        colour_type, bpp = 2, 3
    else:
        raise ParameterError("img", f"expected (h, w) or (h, w, 3) uint8, got shape {a.shape}")
    h, w = a.shape[:2]
    flat = a.reshape(h, w * bpp)
    rows = np.empty((h, w * bpp + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to the left
    rows[:, 1:1 + bpp] = flat[:, :bpp]
    np.subtract(flat[:, bpp:], flat[:, :-bpp], out=rows[:, 1 + bpp:])
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = z.compress(rows.tobytes()) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def render_png(array: np.ndarray, window: tuple[float, float], index: int = 0, zoom: float = 1.0,
               center: tuple[float, float] = (0.5, 0.5), overlays: list[Overlay] | None = None,
               opacity: float = 0.4, out_size: int | None = 512) -> bytes:
    """:func:`render_rgb` encoded as PNG bytes (what ``ipywidgets.Image`` shows)."""
    return encode_png(render_rgb(array, window, index, zoom, center, overlays, opacity, out_size))


# ------------------------------------------------------------------------------ from Findings
def _to_index(image: Any, pts: np.ndarray, frame: str) -> np.ndarray:
    """Points (n, 2|3) in the Location's frame -> continuous array indices (n, ndim)."""
    nd = image.array.ndim
    if frame == "pixel":  # (x=col, y=row[, z=slice])
        if pts.shape[1] == 2:
            idx = np.stack([pts[:, 1], pts[:, 0]], axis=1)
            return idx if nd == 2 else np.concatenate([np.zeros((len(pts), 1)), idx], axis=1)
        idx = np.stack([pts[:, 2], pts[:, 1], pts[:, 0]], axis=1)
        return idx[:, 1:] if nd == 2 else idx
    from cds.images.image import lps_to_index

    return np.atleast_2d(lps_to_index(image, pts[:, :3]))


def _load_array(ref: Any, what: str) -> np.ndarray | None:
    if ref is None:
        return None
    if isinstance(ref, np.ndarray):
        return ref
    if isinstance(ref, list | tuple):
        return np.asarray(ref, dtype=np.float32)
    path = Path(str(ref))
    if not path.is_file():
        log.warning("%s %s: no such file; overlay skipped", what, path)
        return None
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z[z.files[0]]
    from cds.images.read import read_image

    return np.asarray(read_image(path).array)


def overlays_from_finding(finding: Any, image: Any, colour: tuple[int, int, int] | None = None) -> list[Overlay]:
    """The overlays a Finding carries, in ``image``'s array indices.

    - ``location`` ``box`` / ``point``: patient LPS mm (converted with :func:`cds.images.image.lps_to_index`)
      or image pixels (``frame="pixel"``: ``(x, y[, z])`` = column, row[, slice]; a 2D box is
      ``(x0, y0, x1, y1)``).
    - ``location`` ``mask``: ``ref`` names a mask file (``.npy``, NIfTI, DICOM, PNG) of the image's shape.
    - heatmap: ``extra["heatmap"]`` (a file as above, or nested lists), values scaled to [0, 1].
    - ``extra["gradcam_peak_pixel"]`` ``[row, col]``: a point labelled "GradCAM peak".

    A location that cannot be placed (e.g. LPS coordinates on an image without a patient frame) is
    skipped with a log warning, never drawn in the wrong place.
    """
    interp = getattr(finding, "interpretation", "positive")
    col = colour or STATE_COLOURS.get(interp, (255, 60, 60))
    fid = getattr(finding, "id", None)
    label = f"{getattr(finding, 'display', '')} ({getattr(finding, 'model_id', '')})"
    out: list[Overlay] = []
    nd = image.array.ndim
    loc = getattr(finding, "location", None)
    if loc is not None:
        try:
            if loc.kind in ("box", "point"):
                c = np.asarray(loc.coords, dtype=np.float64)
                if loc.kind == "box":
                    half = len(c) // 2
                    pts = np.stack([c[:half], c[half:]])
                else:
                    pts = c[None]
                idx = _to_index(image, pts, loc.frame)
                slices = None
                if nd == 3:
                    k = idx[:, 0]
                    slices = (int(np.floor(k.min() + 0.5)), int(np.floor(k.max() + 0.5)))
                    idx = idx[:, 1:]
                if loc.kind == "box":
                    lo, hi = idx.min(axis=0), idx.max(axis=0)
                    out.append(Overlay("box", (lo[0], lo[1], hi[0], hi[1]), slices, col, label, fid))
                else:
                    out.append(Overlay("point", (idx[0, 0], idx[0, 1]), slices, col, label, fid))
            elif loc.kind == "mask":
                m = _load_array(loc.ref, "mask")
                if m is not None:
                    out.append(Overlay("mask", _fit(m, image.array.shape), None, col, label, fid))
        except (ParameterError, ValueError) as exc:
            log.warning("finding %s: location not drawn: %s", fid, exc)
    extra = getattr(finding, "extra", {}) or {}
    if extra.get("heatmap") is not None:
        h = _load_array(extra["heatmap"], "heatmap")
        if h is not None:
            h = np.asarray(h, dtype=np.float32)
            lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
            h = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
            out.append(Overlay("heatmap", _fit(h, image.array.shape), None, col, "heatmap", fid))
    peak = extra.get("gradcam_peak_pixel")
    if peak is not None and len(peak) == 2 and nd == 2:
        out.append(Overlay("point", (float(peak[0]), float(peak[1])), None, (255, 200, 0), "GradCAM peak", fid))
    return out


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An overlay array on the image's grid: same shape kept; 2D maps resized to the slice shape."""
    a = np.asarray(arr)
    a = a.astype(np.float32) if a.dtype == bool else a
    if a.shape == tuple(shape):
        return a
    if a.ndim == 3 and len(shape) == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        return _resize_to(a.astype(np.float32), tuple(shape[-2:]))
    raise ParameterError("overlay", f"overlay shape {a.shape} does not fit image shape {tuple(shape)}")
