"""Inputs of the 2D reference models: data folders laid out like ``shared/data`` sets, grey images, splits.

Reading (:func:`read_table`, :func:`read_gray`) with errors that name the missing file or column
(:class:`DataLayoutError`); image preparation shared by training and inference (:func:`check_image`,
:func:`prepare_image`: grey, resize, 1-99 percentile scaling to [0, 1]); deterministic patient-level
splits by hashing ids (:func:`stratified_hash_split`, :func:`name_hash`).

>>> split = stratified_hash_split(["a", "b", "c", "d"], {"a": 1, "b": 0, "c": 0, "d": 1}, (0.5, 0.0, 0.5))
>>> sorted(split.values())
['test', 'test', 'train', 'train']
>>> prepare_image(np.arange(100, dtype=np.uint8).reshape(10, 10), 10).shape
(10, 10)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.locations import shared_data_dir

__all__ = ["DataLayoutError", "default_data_dir", "stable_hash", "name_hash", "read_table", "read_gray", "check_image",
           "prepare_image", "stratified_hash_split"]


class DataLayoutError(ParameterError):
    """A data folder does not have the expected layout; the message names the missing file/column."""


def default_data_dir(set_name: str) -> Path:
    """The team's copy of a data set: :func:`cds.locations.shared_data_dir`, resolved.

    >>> default_data_dir("medmnist").name
    'medmnist'
    """
    return shared_data_dir(set_name).resolve()


def stable_hash(text: str) -> str:
    """SHA-256 hex digest of a string (stable across runs and machines).

    >>> stable_hash("abc")[:8]
    'ba7816bf'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def name_hash(name: str) -> str:
    """The 16-hex-digit hash under which training manifests store image or patient names."""
    return stable_hash(name)[:16]


def read_table(path: str | Path, required: Sequence[str], dtype: dict[str, Any] | None = None) -> Any:
    """Read a CSV as a DataFrame and check its columns; errors name the file and the column.

    >>> read_table("/nonexistent/labels.csv", ["Image"])
    Traceback (most recent call last):
    ...
    cds.models.tasks.inputs.DataLayoutError: /nonexistent/labels.csv: file not found (a data folder needs it)
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataLayoutError(str(p), "file not found (a data folder needs it)")
    try:
        df = pd.read_csv(p, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a layout problem of this file
        raise DataLayoutError(str(p), f"cannot read as CSV: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLayoutError(str(p), f"missing column(s) {', '.join(map(repr, missing))}; "
                              f"found {', '.join(map(str, df.columns[:12]))}")
    return df


def read_gray(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/TIFF as a 2D grey-scale uint8/uint16 array; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(str(p), "file not found")
    try:
        with Image.open(p) as im:
            if im.mode not in ("L", "I", "I;16", "F"):
                im = im.convert("L")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(str(p), f"cannot read as an image: {exc}") from None


def check_image(image: Any, where: str = "image_array", min_side: int = 8) -> np.ndarray:
    """``image`` as a finite 2D float32 array, or :class:`cds.errors.ModelInputError` naming ``where``.

    Colour (trailing axis of 3/4) is averaged to grey; a leading or trailing axis of 1 is dropped.

    >>> check_image(np.zeros((4, 4, 2)))
    Traceback (most recent call last):
    ...
    cds.errors.ModelInputError: image_array: expected a 2D grey-scale image, got shape (4, 4, 2)
    """
    if image is None:
        raise ModelInputError(where, "no image given (expected a 2D grey-scale array)")
    arr = np.asarray(image)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ModelInputError(where, f"pixel type {arr.dtype} is not numeric")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise ModelInputError(where, f"expected a 2D grey-scale image, got shape {tuple(np.shape(image))}")
    if min(arr.shape) < min_side:
        raise ModelInputError(where, f"image is {arr.shape[0]}x{arr.shape[1]} pixels; need >= {min_side} per side")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ModelInputError(where, "image contains NaN or infinite pixels")
    return arr


def prepare_image(image: Any, size: int, where: str = "image_array") -> np.ndarray:
    """The model input: grey, resized to ``size`` x ``size`` (anti-aliased), 1-99 % range -> [0, 1].

    Training and inference use this same function, so a model sees every image the same way
    whatever its bit depth. A constant image becomes all zeros.

    >>> x = prepare_image(np.random.default_rng(0).integers(0, 4096, (300, 200)), 64)
    >>> x.shape, x.dtype, float(x.min()) >= 0.0, float(x.max()) <= 1.0
    ((64, 64), dtype('float32'), True, True)
    """
    arr = check_image(image, where)
    if arr.shape != (size, size):
        from skimage.transform import resize

        arr = resize(arr, (size, size), order=1, anti_aliasing=min(arr.shape) > size,
                     preserve_range=True).astype(np.float32)
    lo, hi = np.percentile(arr, [1.0, 99.0])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros((size, size), np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def stratified_hash_split(
    groups: Sequence[Any],
    group_label: dict[Any, int],
    fractions: tuple[float, float, float] = (0.5, 0.2, 0.3),
    salt: str = "cds-split-v1",
) -> dict[Any, str]:
    """Assign each group (patient) to ``train``/``val``/``test``, deterministically.

    Within each label stratum the groups are ordered by ``sha256(salt:group)`` and cut by
    ``fractions`` (rounded), so the split depends only on the ids and their labels, never on a
    random state or on file order.
    """
    uniq = sorted({str(g) for g in groups})
    labels = {str(k): int(v) for k, v in group_label.items()}
    out: dict[Any, str] = {}
    for lab in sorted({labels[g] for g in uniq}):
        members = sorted((g for g in uniq if labels[g] == lab), key=lambda g: stable_hash(f"{salt}:{g}"))
        n = len(members)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        for i, g in enumerate(members):
            out[g] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return {g: out[str(g)] for g in dict.fromkeys(groups)}
