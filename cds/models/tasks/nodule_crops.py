"""Reading a folder laid out like ``shared/data/lidc-nodule-crops`` and resampling CT to a working grid.

The layout (see that folder's ``SOURCE.md``)::

    nodules.csv          one row per nodule: patient_id, nodule_id, diameter_mm, Malignancy_value (1-5), ...
    images/<patient_id>_R_<nodule_id>.nii.gz   a crop around the nodule in HU, native spacing in the affine
    masks/<same name>                          the nodule segmentation, same grid

:func:`load_table` reads and checks ``nodules.csv`` and keeps the rows whose crop exists;
:func:`read_crop` gives a crop as ``(z, y, x)`` HU with its spacing; :func:`resample` brings a volume to
isotropic working voxels; :func:`patient_split` assigns patients to train / val / test by a hash of the
patient id (deterministic, never by file order or a random state).

>>> v = np.zeros((4, 8, 8), np.float32); v[2, 4, 4] = 100.0
>>> resample(v, (2.0, 0.5, 0.5), 1.0).shape
(8, 4, 4)
>>> patient_split(["LIDC-IDRI-0001", "LIDC-IDRI-0002"], {"LIDC-IDRI-0001": 1, "LIDC-IDRI-0002": 0})["LIDC-IDRI-0001"]
'train'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError, ModelInputError
from cds.models.tasks.inputs import DataLayoutError, read_table, stratified_hash_split

__all__ = ["REQUIRED_COLUMNS", "SPLIT_FRACTIONS", "SPLIT_SALT", "crop_name", "load_table", "read_crop",
           "resample", "patient_split", "suspicion_label"]

REQUIRED_COLUMNS = ("patient_id", "nodule_id", "diameter_mm", "Malignancy_value")
#: train / validation / test fractions of patients (within each stratum: patient has a nodule rated >= 4 or not)
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SALT = "cds-nodule-split-v1"


def crop_name(patient_id: str, nodule_id: Any) -> str:
    """The file name of a nodule's crop.

    >>> crop_name("LIDC-IDRI-0001", 1)
    'LIDC-IDRI-0001_R_1.nii.gz'
    """
    return f"{patient_id}_R_{int(nodule_id)}.nii.gz"


def suspicion_label(malignancy: Any) -> int | None:
    """Radiologists' suspicion by the usual LIDC convention: 1 for Malignancy >= 4, 0 for <= 2, None for 3.

    >>> [suspicion_label(m) for m in (1, 2, 3, 4, 5)]
    [0, 0, None, 1, 1]
    """
    m = float(malignancy)
    if np.isnan(m) or m == 3:
        return None
    return 1 if m >= 4 else 0


def load_table(data_dir: str | Path, need_masks: bool = False) -> Any:
    """``nodules.csv`` of ``data_dir`` with the columns ``file`` (crop path), ``mask`` (mask path or None) and
    ``label`` (:func:`suspicion_label`); rows whose crop is missing are dropped and counted in
    ``df.attrs["missing_crops"]``. A folder without ``nodules.csv``, ``images/`` or any crop raises
    :class:`cds.models.tasks.inputs.DataLayoutError` naming it.

    >>> load_table("/nonexistent")
    Traceback (most recent call last):
    ...
    cds.models.tasks.inputs.DataLayoutError: /nonexistent/nodules.csv: file not found (a data folder needs it)
    """
    import pandas as pd

    root = Path(data_dir)
    df = read_table(root / "nodules.csv", REQUIRED_COLUMNS, dtype={"patient_id": str})
    if not (root / "images").is_dir():
        raise DataLayoutError(str(root / "images"), "folder not found (crops are images/<patient>_R_<nodule>.nii.gz)")
    files, masks = [], []
    for p, n in zip(df["patient_id"], df["nodule_id"], strict=True):
        f = root / "images" / crop_name(p, n)
        m = root / "masks" / crop_name(p, n)
        files.append(str(f) if f.is_file() else None)
        masks.append(str(m) if m.is_file() else None)
    df = df.assign(file=files, mask=masks)
    missing = int(df["file"].isna().sum())
    df = df[df["file"].notna()].reset_index(drop=True)
    if need_masks:
        no_mask = df["mask"].isna()
        if no_mask.any():
            raise DataLayoutError(str(root / "masks"), f"{int(no_mask.sum())} crop(s) have no mask, e.g. "
                                                       f"{Path(df.loc[no_mask, 'file'].iloc[0]).name}")
    if df.empty:
        raise DataLayoutError(str(root / "images"), "no crop named in nodules.csv is present")
    df["label"] = pd.Series([suspicion_label(m) for m in df["Malignancy_value"]], index=df.index, dtype=object)
    df.attrs["missing_crops"] = missing
    return df


def read_crop(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A crop (or mask) file as a float32 ``(z, y, x)`` array and its spacing in mm, read by
    :func:`cds.images.read.read_image` (so the axes are the ones ``cds run`` sees)."""
    from cds.images.read import read_image

    img = read_image(str(path))
    arr = np.asarray(img.array, dtype=np.float32)
    if arr.ndim != 3:
        raise ImageReadError(str(path), f"expected a 3D volume, got shape {arr.shape}")
    return arr, tuple(float(s) for s in img.spacing)  # type: ignore[return-value]


def resample(volume: np.ndarray, spacing_zyx: Sequence[float], target_mm: float, order: int = 1,
             cval: float = -1000.0) -> np.ndarray:
    """``volume`` on an isotropic grid of ``target_mm`` voxels covering the same extent (linear for
    ``order=1``; 0 for masks). Voxel centres are aligned at the volume's centre."""
    from scipy import ndimage as ndi

    sp = np.asarray(spacing_zyx, float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ModelInputError("spacing_zyx", f"expected three positive spacings in mm, got {tuple(spacing_zyx)}")
    shape_in = np.asarray(volume.shape, float)
    extent = shape_in * sp
    shape_out = np.maximum(1, np.round(extent / target_mm)).astype(int)
    # output voxel centre i (mm from the centre) -> input index
    coords = []
    for a in range(3):
        mm = (np.arange(shape_out[a]) - (shape_out[a] - 1) / 2.0) * target_mm
        coords.append(mm / sp[a] + (shape_in[a] - 1) / 2.0)
    grid = np.meshgrid(*coords, indexing="ij")
    out = ndi.map_coordinates(np.asarray(volume, np.float32), grid, order=order, mode="nearest", cval=cval)
    return out.astype(np.float32)


def patient_split(patients: Sequence[str], patient_label: dict[str, int]) -> dict[str, str]:
    """``train`` / ``val`` / ``test`` per patient by a hash of the id (:data:`SPLIT_SALT`), stratified by
    ``patient_label`` (1 when the patient has a nodule rated suspicious), :data:`SPLIT_FRACTIONS`."""
    return stratified_hash_split(list(patients), patient_label, SPLIT_FRACTIONS, salt=SPLIT_SALT)
