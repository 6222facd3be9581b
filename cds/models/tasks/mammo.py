"""Shared mammogram helpers: read, check, breast region, orientation and pectoral muscle.

Used by :mod:`cds.models.tasks.mammo_density` and :mod:`cds.models.tasks.mammo_abnormality`. Everything here is
numpy-in / numpy-out and deterministic (no learned parameters).

The pipeline on one image (any size; mini-MIAS is 1024x1024, 200 µm pixels, 8-bit film scans):

1. :func:`to_unit` scales the pixels to [0, 1] (8-bit: /255, else robust min-max).
2. The image is reduced to a working grid whose longest side is :data:`WORK_SIZE` (512) pixels.
3. :func:`breast_mask` separates breast from background: a threshold between the film background
   and Otsu's level, an opening that cuts thin film edges and label strips off, the largest
   component, hole filling.
4. :func:`chest_wall_side` finds the chest wall (the side where the breast meets the image edge over
   the longest stretch); the working image is flipped so the chest wall is on the left.
5. :func:`pectoral_mask` finds the pectoral muscle of an MLO view: the bright region in the upper
   chest-wall corner, bounded by a straight line fitted to its edge.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((256, 256), np.uint8)
>>> rr, cc = np.ogrid[:256, :256]
>>> img[(rr - 128) ** 2 + cc ** 2 < 100 ** 2] = 150      # a half-disc "breast" on the left edge
>>> region = segment_breast(img)
>>> region.chest_wall
'left'
>>> bool(0.2 < region.breast.mean() < 0.3)
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cds.errors import ImageReadError, ModelInputError

__all__ = [
    "WORK_SIZE",
    "mias_bundle_provenance",
    "BreastRegion",
    "read_mammogram",
    "check_image",
    "to_unit",
    "image_sha256",
    "breast_mask",
    "chest_wall_side",
    "pectoral_mask",
    "segment_breast",
    "pectoral_line",
    "chest_wall_from_laterality",
    "load_labels",
    "woman_id",
    "image_path",
    "woman_folds",
    "fit_linear",
    "linear_proba",
    "cv_proba",
    "select_C",
    "linear_state_dict",
    "bundle_linear",
    "write_training_images",
    "training_hashes",
    "laterality_from_ehr",
]

WORK_SIZE = 512
"""Longest side, in pixels, of the working grid (mini-MIAS 1024² -> 512², 400 µm pixels)."""


# ----------------------------------------------------------------------------------------- input
def read_mammogram(path: str | Path) -> np.ndarray:
    """Read a grey-scale mammogram (PNG/PGM/TIFF/JPEG via Pillow) as a 2D array.

    Raises :class:`cds.errors.ImageReadError` naming the file when it is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(str(p), "file not found (expected a grey-scale mammogram image)")
    try:
        with Image.open(p) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(str(p), f"cannot read as an image: {exc}") from None
    return arr


def check_image(image: Any, where: str = "image_array") -> np.ndarray:
    """Return ``image`` as a finite 2D float array or raise :class:`cds.errors.ModelInputError`.

    A trailing channel axis of size 1, 3 or 4 is reduced to grey (mean of the colour channels).

    >>> check_image(np.ones((3, 3)))
    Traceback (most recent call last):
    ...
    cds.errors.ModelInputError: image_array: image is 3x3 pixels; a mammogram needs at least 64 pixels per side
    """
    if image is None:
        raise ModelInputError(where, "no image given (expected a 2D grey-scale mammogram array)")
    try:
        arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise ModelInputError(where, f"not an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ModelInputError(where, f"pixel type {arr.dtype} is not numeric")
    if arr.ndim == 3 and arr.shape[0] == 1:  # a one-frame stack
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., :3].mean(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.ndim != 2:
        raise ModelInputError(where, f"expected a 2D grey-scale image, got shape {tuple(arr.shape)}")
    if min(arr.shape) < 64:
        raise ModelInputError(
            where, f"image is {arr.shape[0]}x{arr.shape[1]} pixels; a mammogram needs at least 64 pixels per side"
        )
    arr = arr.astype(np.float32) if arr.dtype != np.uint8 else arr
    if arr.dtype != np.uint8 and not np.all(np.isfinite(arr)):
        raise ModelInputError(where, "image contains NaN or infinite pixels")
    if float(arr.max()) == float(arr.min()):
        raise ModelInputError(where, "image is constant (blank); nothing to segment")
    return arr


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale pixels to float32 in [0, 1]: 8-bit images by /255, others by their 0.1-99.9 % range.

    >>> to_unit(np.array([[0, 255]], np.uint8)).tolist()
    [[0.0, 1.0]]
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    a = image.astype(np.float32)
    lo, hi = np.percentile(a, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def image_sha256(image: np.ndarray) -> str:
    """SHA-256 of the pixel values (shape, dtype and bytes), independent of the file encoding.

    >>> image_sha256(np.zeros((2, 2), np.uint8))[:12]
    '6b1c6e21d8e4'
    """
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- breast mask
def _largest_component(mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    lab = label(mask, connectivity=1)
    if lab.max() == 0:
        return mask.copy()
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def breast_mask(work: np.ndarray) -> np.ndarray:
    """Breast (incl. pectoral muscle) vs background, labels and film edges, on a [0, 1] image.

    The threshold sits a quarter of the way from the film background level (the 5th percentile of
    the pixels below Otsu's level) to Otsu's level, so the faint skin-line fall-off stays inside.
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk, opening

    g = gaussian(work, sigma=1.0, preserve_range=True)
    t_otsu = float(threshold_otsu(g))
    dark = g[g < t_otsu]
    bg = float(np.percentile(dark, 50)) if dark.size else 0.0
    t = bg + 0.25 * (t_otsu - bg)
    m = g > t
    r = max(2, round(min(work.shape) / 100))
    m = opening(m, disk(r))
    m = _largest_component(m)
    m = ndi.binary_fill_holes(m)
    return m.astype(bool)


def _edge_coverage(mask: np.ndarray) -> tuple[float, float]:
    """Fraction of rows the breast covers in its 3 leftmost and 3 rightmost columns."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size < 6:
        return 0.0, 0.0
    c0, c1 = int(cols[0]), int(cols[-1])
    return float(mask[:, c0:c0 + 3].mean()), float(mask[:, c1 - 2:c1 + 1].mean())


def chest_wall_side(mask: np.ndarray, work: np.ndarray | None = None) -> Literal["left", "right"]:
    """The image side the chest wall is on.

    The chest wall is where the breast is cut straight by the film edge, so its outermost columns
    cover many rows, while the skin line on the other side is curved. When both sides cover
    similar heights (a large breast cut on both sides) and ``work`` is given, the side with the
    stronger pectoral-muscle edge (:func:`pectoral_line`) wins.

    >>> m = np.zeros((10, 10), bool); m[2:8, 6:] = True; m[4:6, 4:6] = True
    >>> chest_wall_side(m)
    'right'
    """
    left, right = _edge_coverage(mask)
    if abs(left - right) >= 0.25 or work is None:
        return "left" if left >= right else "right"
    s_left = pectoral_line(work, mask)[0]
    s_right = pectoral_line(work[:, ::-1], mask[:, ::-1])[0]
    return "left" if s_left >= s_right else "right"


def pectoral_line(work: np.ndarray, breast: np.ndarray) -> tuple[float, float, float, float, int, int]:
    """Best straight pectoral edge of a breast whose chest wall is on the LEFT.

    Every line from the top of the breast (row ``r0``, column ``c_left + a``) to the chest wall
    (row ``r0 + b``, column ``c_left``), on a 30 x 30 grid of ``a`` and ``b``, is scored by the mean
    intensity step across it: smoothed image 4 working pixels inside (corner side) minus 4 pixels
    outside, over the samples where both lie in the breast (at least 60 % of them).

    Returns ``(step, fraction_of_samples_stepping_down, a, b, r0, c_left)``; ``step`` is ``-inf``
    when no line fits.
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian

    h, w = breast.shape
    none = (-np.inf, 0.0, 0.0, 0.0, 0, 0)
    rows = np.flatnonzero(breast.any(axis=1))
    if rows.size < 20:
        return none
    r0, r1 = int(rows[0]), int(rows[-1])
    left_edge = np.where(breast.any(axis=1), np.argmax(breast, axis=1), w)
    c_left = int(np.min(left_edge[r0:r1 + 1]))
    top_cols = np.flatnonzero(breast[min(r0 + 1, h - 1)])
    if top_cols.size == 0:
        return none
    width_top, height = int(top_cols[-1]) - c_left, r1 - r0
    if width_top < 10 or height < 20:
        return none
    g = gaussian(work, sigma=2.0, preserve_range=True)
    bm = breast.astype(np.float32)
    a_grid = np.linspace(0.08, 0.95, 30) * width_top
    b_grid = np.linspace(0.10, 0.85, 30) * height
    A, B = (x.ravel() for x in np.meshgrid(a_grid, b_grid, indexing="ij"))
    t = np.linspace(0.05, 0.95, 48)
    # line from p0 = (r0, c_left + a) to p1 = (r0 + b, c_left); unit normal away from the corner
    vr, vc = B, -A
    norm = np.hypot(vr, vc)
    nr, nc = -vc / norm, vr / norm  # (a, b) / |.|: points down-right, away from the corner
    pr = r0 + t[None, :] * vr[:, None]
    pc = c_left + A[:, None] + t[None, :] * vc[:, None]
    d = 4.0
    rin, cin = pr - d * nr[:, None], pc - d * nc[:, None]
    rout, cout = pr + d * nr[:, None], pc + d * nc[:, None]
    ok = (ndi.map_coordinates(bm, [rin.ravel(), cin.ravel()], order=0, mode="constant") > 0) & (
        ndi.map_coordinates(bm, [rout.ravel(), cout.ravel()], order=0, mode="constant") > 0)
    diff = (ndi.map_coordinates(g, [rin.ravel(), cin.ravel()], order=1, mode="nearest")
            - ndi.map_coordinates(g, [rout.ravel(), cout.ravel()], order=1, mode="nearest"))
    ok, diff = ok.reshape(pr.shape), diff.reshape(pr.shape)
    n_ok = ok.sum(axis=1)
    valid = n_ok >= 0.6 * t.size
    if not valid.any():
        return none
    score = np.where(valid, (diff * ok).sum(axis=1) / np.maximum(n_ok, 1), -np.inf)
    k = int(np.argmax(score))
    frac_pos = float(((diff[k] > 0) & ok[k]).sum() / max(n_ok[k], 1))
    return float(score[k]), frac_pos, float(A[k]), float(B[k]), r0, c_left


def pectoral_mask(work: np.ndarray, breast: np.ndarray, min_contrast: float = 0.02) -> np.ndarray:
    """Pectoral muscle of an MLO view whose chest wall is on the LEFT; empty if none is found.

    The muscle is a bright wedge in the upper chest-wall corner with a nearly straight edge
    (:func:`pectoral_line`). The wedge is kept if the step across its edge is at least
    ``min_contrast`` (image in [0, 1]), at least 75 % of the edge samples step down, and it holds
    0.5-40 % of the breast.
    """
    out = np.zeros_like(breast)
    score, frac_pos, a, b, r0, c_left = pectoral_line(work, breast)
    if not np.isfinite(score) or score < min_contrast or frac_pos < 0.75:
        return out
    h, w = breast.shape
    rgrid, cgrid = np.mgrid[0:h, 0:w]
    wedge = ((rgrid - r0) / b + (cgrid - c_left) / a <= 1.0) & breast
    frac = wedge.sum() / max(breast.sum(), 1)
    if not 0.005 <= frac <= 0.40:
        return out
    return wedge


def chest_wall_from_laterality(laterality: str | None) -> Literal["left", "right"] | None:
    """Chest-wall side of a view stored in the usual display orientation (MIAS does so).

    Right-breast views face left (chest wall on the image's right), left-breast views face right.

    >>> chest_wall_from_laterality("R"), chest_wall_from_laterality("left"), chest_wall_from_laterality(None)
    ('right', 'left', None)
    """
    if laterality is None:
        return None
    s = str(laterality).strip().upper()
    if s in ("R", "RIGHT"):
        return "right"
    if s in ("L", "LEFT"):
        return "left"
    return None


# --------------------------------------------------------------------------------- the pipeline
@dataclass
class BreastRegion:
    """The result of :func:`segment_breast`, on the working grid, chest wall on the left.

    ``work`` is the [0, 1] image (flipped if ``flipped``), ``breast`` the breast mask including the
    pectoral muscle, ``pectoral`` the muscle, ``tissue`` = breast minus muscle. ``scale`` is the
    number of original pixels per working pixel; use :meth:`to_original` to map points back.
    """

    work: np.ndarray
    breast: np.ndarray
    pectoral: np.ndarray
    tissue: np.ndarray
    scale: float
    flipped: bool
    chest_wall: Literal["left", "right"]
    original_shape: tuple[int, int]

    def to_original(self, row: float, col: float) -> tuple[float, float]:
        """Working-grid (row, col) -> original image (row, col), undoing the flip and the scaling."""
        w = self.work.shape[1]
        c = (w - 1 - col) if self.flipped else col
        return ((row + 0.5) * self.scale - 0.5, (c + 0.5) * self.scale - 0.5)

    def to_work(self, row: float, col: float) -> tuple[float, float]:
        """Original image (row, col) -> working grid (row, col)."""
        r = (row + 0.5) / self.scale - 0.5
        c = (col + 0.5) / self.scale - 0.5
        if self.flipped:
            c = self.work.shape[1] - 1 - c
        return (r, c)

    def mask_original(self, which: str = "tissue") -> np.ndarray:
        """A mask (``breast``, ``pectoral`` or ``tissue``) on the original pixel grid."""
        from skimage.transform import resize

        m = getattr(self, which)
        if self.flipped:
            m = m[:, ::-1]
        return resize(m.astype(np.float32), self.original_shape, order=0, anti_aliasing=False) > 0.5


def segment_breast(image: Any, where: str = "image_array", mlo: bool = True,
                   chest_wall: Literal["left", "right"] | None = None) -> BreastRegion:
    """Breast region, orientation and (for MLO views) pectoral muscle of one mammogram.

    Parameters
    ----------
    image : array-like
        A 2D grey-scale mammogram (any size, 8-bit or wider).
    where : str
        Name used in error messages (a file path or parameter name).
    mlo : bool
        Remove the pectoral muscle (mediolateral-oblique view). mini-MIAS is MLO only.
    chest_wall : {"left", "right"}, optional
        Known chest-wall side (e.g. from laterality, :func:`chest_wall_from_laterality`); found
        from the image (:func:`chest_wall_side`) when not given.
    """
    from skimage.transform import resize

    arr = check_image(image, where)
    unit = to_unit(arr)
    h, w = unit.shape
    scale = max(h, w) / WORK_SIZE
    if scale > 1.0:
        shape = (max(1, round(h / scale)), max(1, round(w / scale)))
        work = resize(unit, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
        scale = h / shape[0]
    else:
        work, scale = unit, 1.0
    breast = breast_mask(work)
    if breast.sum() < 0.02 * breast.size:
        raise ModelInputError(where, "no breast region found (less than 2 % of the image is tissue); "
                              "is this a mammogram with a dark background?")
    side = chest_wall if chest_wall is not None else chest_wall_side(breast, work)
    flipped = side == "right"
    if flipped:
        work, breast = work[:, ::-1].copy(), breast[:, ::-1].copy()
    pect = pectoral_mask(work, breast) if mlo else np.zeros_like(breast)
    tissue = breast & ~pect
    return BreastRegion(work=work, breast=breast, pectoral=pect, tissue=tissue, scale=float(scale),
                        flipped=flipped, chest_wall=side, original_shape=(h, w))


# ------------------------------------------------------------------------------------ data sets
def woman_id(refnum: str) -> str:
    """MIAS woman id from a reference number: films come in (right = odd, left = even) pairs.

    >>> woman_id("mdb011"), woman_id("mdb012"), woman_id("mdb013")
    ('w006', 'w006', 'w007')
    """
    digits = "".join(ch for ch in str(refnum) if ch.isdigit())
    if not digits:
        return str(refnum)
    return f"w{(int(digits) + 1) // 2:03d}"


def _pair_id(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"w{int(f):03d}" if f == int(f) else str(v)


def load_labels(data_dir: str | Path, required: tuple[str, ...] = ("REFNUM", "BG")) -> Any:
    """Read ``<data_dir>/labels.csv`` (mini-MIAS layout) as a pandas DataFrame, checked.

    Needs the ``required`` columns; CLASS, SEVERITY, X, Y, RADIUS, laterality are used when
    present. The woman is the ``patient_id`` column, else ``patient_pair``, else derived from
    REFNUM by the MIAS numbering rule (:func:`woman_id`). Raises
    :class:`cds.errors.ImageReadError` / ``ParameterError`` naming the file or parameter.
    """
    import pandas as pd

    from cds.errors import ParameterError

    d = Path(data_dir)
    if not d.is_dir():
        raise ParameterError("data_dir", f"{d} is not a folder (expected a mini-MIAS style folder "
                             "with labels.csv and png/<REFNUM>.png)")
    f = d / "labels.csv"
    if not f.is_file():
        raise ImageReadError(str(f), "labels.csv missing (expected columns REFNUM, BG, CLASS, SEVERITY, X, Y, RADIUS)")
    try:
        df = pd.read_csv(f, dtype={"REFNUM": str, "BG": str, "CLASS": str, "SEVERITY": str})
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise ImageReadError(str(f), f"cannot parse as CSV: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ImageReadError(str(f), f"missing column(s) {missing}; found {list(df.columns)}")
    if df.empty:
        raise ImageReadError(str(f), "no rows")
    for c in ("CLASS", "SEVERITY"):
        if c not in df.columns:
            df[c] = pd.NA
    for c in ("X", "Y", "RADIUS"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan
    df["REFNUM"] = df["REFNUM"].astype(str).str.strip()
    df["BG"] = df["BG"].astype(str).str.strip().str.upper() if "BG" in df.columns else ""
    if "patient_id" in df.columns and df["patient_id"].notna().all():
        df["woman"] = df["patient_id"].astype(str)
    elif "patient_pair" in df.columns and df["patient_pair"].notna().all():
        df["woman"] = [_pair_id(v) for v in df["patient_pair"]]
    else:
        df["woman"] = [woman_id(r) for r in df["REFNUM"]]
    return df


def image_path(data_dir: str | Path, refnum: str) -> Path:
    """``<data_dir>/png/<REFNUM>.png`` (or ``.pgm``), or raise ImageReadError naming the file."""
    d = Path(data_dir)
    for ext in (".png", ".pgm"):
        p = d / "png" / f"{refnum}{ext}"
        if p.is_file():
            return p
    raise ImageReadError(str(d / "png" / f"{refnum}.png"), f"image for labels.csv row REFNUM={refnum} not found")


# ------------------------------------------------------------------------------- learning helpers
def woman_folds(groups: Any, k: int | None = None) -> list[np.ndarray]:
    """Test-index arrays of a cross-validation by woman (group): one fold per woman when ``k`` is
    None, else ``k`` folds with women assigned round-robin in sorted order (deterministic).

    >>> [f.tolist() for f in woman_folds(["a", "b", "a", "c"], k=2)]
    [[0, 2, 3], [1]]
    """
    g = np.asarray(groups)
    uniq = np.unique(g)
    if k is None or k >= len(uniq):
        return [np.flatnonzero(g == u) for u in uniq]
    fold_of = {u: i % k for i, u in enumerate(uniq)}
    f = np.array([fold_of[x] for x in g])
    return [np.flatnonzero(f == i) for i in range(k)]


def _newton_logistic(Z: np.ndarray, Y: np.ndarray, C: float, max_iter: int = 100) -> np.ndarray:
    """Penalised maximum likelihood of a softmax (K >= 2 outputs) or sigmoid (K = 1) model.

    Minimises ``sum(cross-entropy) + ||W||^2 / (2 C)`` (intercepts unpenalised, as in
    scikit-learn's ``LogisticRegression``) by Newton's method with step halving. ``Z`` is n x d,
    ``Y`` is n x K one-hot (K = 1: the 0/1 target). Returns theta of shape K x (d + 1), intercept
    last.
    """
    n, d = Z.shape
    K = Y.shape[1]
    Xa = np.hstack([Z, np.ones((n, 1))])
    pen = np.full(d + 1, 1.0 / C)
    pen[-1] = 1e-8
    theta = np.zeros((K, d + 1))

    def probs(th: np.ndarray) -> np.ndarray:
        z = Xa @ th.T
        if K == 1:
            return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def objective(th: np.ndarray) -> float:
        P = np.clip(probs(th), 1e-15, 1.0)
        if K == 1:
            ll = -(Y * np.log(P) + (1 - Y) * np.log(np.clip(1 - P, 1e-15, 1.0))).sum()
        else:
            ll = -(Y * np.log(P)).sum()
        return float(ll + 0.5 * (pen[None, :] * th**2).sum())

    f = objective(theta)
    for _ in range(max_iter):
        P = probs(theta)
        G = (P - Y).T @ Xa + pen[None, :] * theta  # K x (d+1)
        H = np.zeros((K * (d + 1), K * (d + 1)))
        for k in range(K):
            for m in range(K):
                w = P[:, k] * ((k == m) - P[:, m]) if K > 1 else P[:, 0] * (1 - P[:, 0])
                H[k * (d + 1):(k + 1) * (d + 1), m * (d + 1):(m + 1) * (d + 1)] = (Xa * w[:, None]).T @ Xa
        H += np.diag(np.tile(pen, K)) + 1e-10 * np.eye(K * (d + 1))
        step = np.linalg.solve(H, G.ravel()).reshape(K, d + 1)
        t = 1.0
        while t > 1e-8:
            cand = theta - t * step
            fc = objective(cand)
            if fc <= f:
                break
            t *= 0.5
        theta, f_old, f = cand, f, fc
        if abs(f_old - f) < 1e-10 * max(1.0, abs(f)):
            break
    return theta


def fit_linear(X: np.ndarray, y: np.ndarray, C: float, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-penalised logistic regression on standardised features, folded back to raw features.

    Returns ``(W, b)`` with ``logits = X @ W.T + b``: shape ``(1, d)`` for two classes (logit of
    class 1), ``(n_classes, d)`` for multinomial (softmax). Classes absent from ``y`` get no
    weights and bias -20. Deterministic (Newton's method, no random state).

    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([0, 0, 1, 1])
    >>> W, b = fit_linear(X, y, C=1.0, n_classes=2)
    >>> p = linear_proba(W, b, np.array([[0.0], [3.0]]))
    >>> bool(W[0, 0] > 0), bool(p[0] < 0.5 < p[1])
    (True, True)
    """
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd < 1e-9] = 1.0
    Z = (X - mu) / sd
    y = np.asarray(y, dtype=int)
    present = np.unique(y)
    d = X.shape[1]
    n_out = 1 if n_classes == 2 else n_classes
    Wz = np.zeros((n_out, d))
    bz = np.full(n_out, -20.0)
    if present.size == 1:  # degenerate fold: predict the one class seen
        if n_classes == 2:
            bz[:] = 20.0 if present[0] == 1 else -20.0
        else:
            bz[int(present[0])] = 20.0
    elif n_classes == 2:
        th = _newton_logistic(Z, (y == 1).astype(float)[:, None], C)
        Wz, bz = th[:, :d], th[:, d]
    else:
        Y = (y[:, None] == present[None, :]).astype(float)
        th = _newton_logistic(Z, Y, C)
        for row, cls in enumerate(present):
            Wz[int(cls)], bz[int(cls)] = th[row, :d], th[row, d]
    W = Wz / sd[None, :]
    b = bz - (Wz * (mu / sd)[None, :]).sum(axis=1)
    return W, b


def linear_proba(W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Probabilities of a linear model: sigmoid for one output (P(class 1)), else softmax.

    >>> linear_proba(np.zeros((1, 2)), np.zeros(1), np.ones((1, 2))).tolist()
    [0.5]
    """
    z = X @ W.T + b
    if W.shape[0] == 1:
        return 1.0 / (1.0 + np.exp(-z[:, 0]))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    eps = 1e-6
    if p.ndim == 1:
        p = np.clip(p, eps, 1 - eps)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def cv_proba(X: np.ndarray, y: np.ndarray, groups: Any, C: float, n_classes: int,
             k: int | None = None) -> np.ndarray:
    """Out-of-fold probabilities of :func:`fit_linear` with folds by woman (:func:`woman_folds`)."""
    out = np.zeros(len(y)) if n_classes == 2 else np.zeros((len(y), n_classes))
    for te in woman_folds(groups, k):
        tr = np.setdiff1d(np.arange(len(y)), te)
        W, b = fit_linear(X[tr], y[tr], C, n_classes)
        out[te] = linear_proba(W, b, X[te])
    return out


def select_C(X: np.ndarray, y: np.ndarray, groups: Any, Cs: Any, n_classes: int,
             k: int | None = 5) -> tuple[float, np.ndarray]:
    """The penalty ``C`` with the lowest out-of-fold log-loss (cross-validation by woman).

    Returns ``(C, out_of_fold_probabilities_at_C)``. Ties go to the smaller ``C`` (stronger penalty).
    """
    best: tuple[float, float, np.ndarray] | None = None
    for C in sorted(Cs):
        p = cv_proba(X, y, groups, C, n_classes, k)
        ll = _log_loss(y, p)
        if best is None or ll < best[0] - 1e-12:
            best = (ll, float(C), p)
    assert best is not None
    return best[1], best[2]


def linear_state_dict(W: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """``torch.nn.Linear`` state dict (float32) for weights ``W`` (out x in) and bias ``b``."""
    import torch

    return {"weight": torch.tensor(np.asarray(W), dtype=torch.float32),
            "bias": torch.tensor(np.asarray(b), dtype=torch.float32)}


def bundle_linear(bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a bundle whose ``network_def`` is a ``torch.nn.Linear`` (loaded via MONAI)."""
    import torch

    net = bundle.network()
    with torch.no_grad():
        return net.weight.detach().cpu().double().numpy(), net.bias.detach().cpu().double().numpy()


# ----------------------------------------------------------------------------------- bundle I/O
def write_training_images(bundle_dir: str | Path, refs: Any, hashes: Any) -> Path:
    """Write ``configs/training_images.json``: REFNUM -> pixel SHA-256 of every training image."""
    import json

    p = Path(bundle_dir) / "configs" / "training_images.json"
    p.write_text(json.dumps({
        "note": "SHA-256 of the pixel values of every training image (cds.models.tasks.mammo.image_sha256). "
                "evaluate() uses cross-validated predictions when every image of a folder is listed here, "
                "and leaves listed images out otherwise.",
        "sha256": dict(zip(refs, hashes, strict=True))}, indent=1) + "\n")
    return p


def training_hashes(bundle: Any) -> set[str]:
    """The pixel hashes in a bundle's ``configs/training_images.json`` (empty set if none)."""
    import json

    p = Path(bundle.path) / "configs" / "training_images.json"
    if not p.is_file():
        return set()
    return set(json.loads(p.read_text()).get("sha256", {}).values())


def laterality_from_ehr(ehr: dict[str, Any] | None) -> str | None:
    """The view laterality ("R"/"L") from ``ehr['laterality']`` or ``ehr['ImageLaterality']``.

    >>> laterality_from_ehr({"ImageLaterality": "L"}), laterality_from_ehr(None)
    ('L', None)
    """
    for key in ("laterality", "ImageLaterality", "image.laterality"):
        v = (ehr or {}).get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def mias_bundle_provenance() -> dict[str, Any]:
    """The MONAI metadata fields both mammography bundles share (authors, licence, versions, data).

    >>> mias_bundle_provenance()["data_type"]
    'png'
    """
    import platform

    import monai
    import torch

    return {
        "authors": "cds project",
        "copyright": "cds project; trained on MIAS (research use only, see training_data.licence)",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "required_packages_version": {},
        "data_source": "mini-MIAS (J Suckling et al. 1994), 40 images of 20 women in this copy",
        "data_type": "png",
        "image_classes": "single-channel mammogram (digitised film, MLO view), 8-bit",
    }
