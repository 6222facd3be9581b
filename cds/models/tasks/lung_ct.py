"""Chest-CT building blocks for the ``ct-lung-nodule`` model (numpy/scipy/skimage only).

The steps, each a function with one job::

    read_ct_series     a folder of CT DICOM files -> CtSeries (HU volume + geometry + UIDs)
    work_volume        full-resolution HU -> a coarser working grid (block means)
    lung_masks         working HU -> per-side lung masks + the candidate search region
    detect_candidates  working HU + masks -> candidate blobs with features (multi-scale LoG)
    insert_nodule      paste a synthetic ellipsoidal nodule into a full-resolution HU volume
    simulate_thick_slices  thin series -> a thick reconstruction (slab averaging along the slice normal)
    insert_crop        paste a real nodule (HU crop + mask, e.g. LIDC) into a HU volume at its spacing

Array and geometry conventions (the same as :mod:`cds.images.image`: everything per array axis):

* ``volume_hu`` is indexed ``[k, j, i]`` = (slice, row, column); slices are sorted by position
  along the slice normal, ascending.
* ``spacing`` is ``(sk, sj, si)`` in mm per array axis: slice spacing, row spacing, column spacing.
* ``origin`` is the LPS position (mm) of the centre of voxel ``[0, 0, 0]``.
* ``direction`` is a 3x3 matrix whose column ``a`` is the LPS unit vector along array axis ``a``
  (slice normal, column direction cosines, row direction cosines).
* ``LPS = origin + direction @ (spacing * [k, j, i])``; voxel indices are always in ``(k, j, i)`` order.

Series are read by the one DICOM reader, :func:`cds.images.dicom.read_dicom_folder`; voxel indices
become LPS with :func:`cds.images.image.grid_index_to_lps` (named ``index_to_lps`` here).

Examples
--------
>>> import numpy as np
>>> axial = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])  # columns: normal (+z), column dir (+y), row dir (+x)
>>> index_to_lps([[0, 0, 0], [2, 0, 10]], (2.0, 0.5, 0.5), (-100.0, -50.0, 20.0), axial).tolist()
[[-100.0, -50.0, 20.0], [-95.0, -50.0, 24.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cds.errors import ImageReadError, ModelInputError, ParameterError
from cds.images.dicom import SeriesMismatchError, read_dicom_folder
from cds.images.image import grid_index_to_lps as index_to_lps
from cds.images.image import grid_lps_to_index as lps_to_index

__all__ = [
    "CtSeries",
    "DetectorConfig",
    "LungMasks",
    "Candidate",
    "CANDIDATE_FEATURES",
    "read_ct_series",
    "find_series_folders",
    "index_to_lps",
    "lps_to_index",
    "work_factors",
    "work_volume",
    "WorkGrid",
    "work_grid",
    "box_weights",
    "simulate_thick_slices",
    "thick_series",
    "insert_crop",
    "write_thick_dicom",
    "lung_masks",
    "detect_candidates",
    "insert_nodule",
    "SLICE_GAP_TOLERANCE",
]

#: Relative slice-gap tolerance for chest CT series here (10 %, as this model was built with); the
#: generic reader's default is 1 % (:data:`cds.images.dicom_image.DEFAULT_SLICE_GAP_TOLERANCE`).
SLICE_GAP_TOLERANCE = 0.1

# ----------------------------------------------------------------------------------------------
# Reading a CT series
# ----------------------------------------------------------------------------------------------


@dataclass
class CtSeries:
    """One CT series as a HU volume with its patient geometry and identifiers."""

    volume_hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: list[str]
    files: list[Path]
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    slice_thickness: float | None = None
    folder: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.volume_hu.shape)  # type: ignore[return-value]


def _looks_like_dicom(p: Path) -> bool:
    if p.suffix.lower() in (".dcm", ".dicom"):
        return True
    if p.suffix:
        return False
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def find_series_folders(root: str | Path) -> list[Path]:
    """Folders under ``root`` (``root`` included) that directly hold DICOM files, sorted.

    Raises :class:`~cds.errors.ParameterError` when ``root`` is not a folder.
    """
    r = Path(root)
    if not r.is_dir():
        raise ParameterError("data_dir", f"{r} is not a folder (expected patient folders with CT series)")
    out = set()
    for p in r.rglob("*"):
        if p.is_file() and _looks_like_dicom(p):
            out.add(p.parent)
    return sorted(out)


def read_ct_series(folder: str | Path) -> CtSeries:
    """Read the CT series in ``folder`` (its files, not subfolders) into a :class:`CtSeries`.

    The one DICOM reader (:func:`cds.images.dicom.read_dicom_folder`) does the work: slices sorted
    by position along the slice normal, HU = stored value * RescaleSlope + RescaleIntercept, gaps
    checked with :data:`SLICE_GAP_TOLERANCE`. Errors name the folder or the offending file
    (:class:`ImageReadError`); a series of another modality says "this model needs CT".

    >>> read_ct_series("/no/such/series")
    Traceback (most recent call last):
    ...
    cds.errors.ImageReadError: /no/such/series: not a folder (no such folder)
    """
    d = Path(folder)
    try:
        image = read_dicom_folder(d, modality="CT", slice_gap_tolerance=SLICE_GAP_TOLERANCE, recursive=False)
    except SeriesMismatchError as exc:
        if exc.attribute != "Modality":
            raise
        raise ImageReadError(exc.where, f"{exc.reason}: this model needs CT") from None
    found = image.meta.get("series_in_folder", {})
    if len(found) > 1:
        raise ImageReadError(str(d), f"holds {len(found)} series ({found}); put each CT series in its own folder")
    if image.ndim != 3 or image.shape[0] < 2:
        raise ImageReadError(str(d), "only one slice: a 3D CT series is needed")
    if not image.meta.get("spacing_known") or not image.meta.get("patient_frame"):
        raise ImageReadError(
            image.meta["files"][0], "missing PixelSpacing: cannot place the slices in patient space"
        )
    m = image.meta
    return CtSeries(
        volume_hu=image.array.astype(np.float32),
        spacing=tuple(float(v) for v in image.spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.origin),  # type: ignore[arg-type]
        direction=np.asarray(image.direction, dtype=np.float64),
        sop_instance_uids=list(m["sop_instance_uids"]),
        files=[Path(f) for f in m["files"]],
        series_uid=m.get("series_uid") or "",
        study_uid=m.get("study_uid") or "",
        patient_id=m.get("patient_id") or "",
        slice_thickness=m.get("slice_thickness"),
        folder=d,
    )


# ----------------------------------------------------------------------------------------------
# Working grid
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorConfig:
    """Every number of the detection recipe (stored in the bundle's inference.json)."""

    work_pixel_mm: float = 1.5  # target in-plane spacing of the working grid
    work_slice_mm: float = 2.5  # slices thinner than this are averaged in pairs (or more)
    max_work_slice_mm: float = 5.0  # slices thicker than this are linearly interpolated (x2, x3..) along k
    air_hu: float = -400.0  # lung air / soft tissue split
    airway_hu: float = -950.0  # trachea / main bronchi lumen
    min_lung_ml: float = 50.0
    closing_mm: float = 5.0  # per-slice closing of each lung before filling holes
    band_mm: float = 25.0  # juxtapleural band: convex hull of a lung, within this distance of it
    min_hull_area_cm2: float = 2.0
    scales_mm: tuple[float, ...] = (2.0, 3.0, 4.5, 6.5, 9.5, 13.5, 19.0)  # LoG sigmas
    min_response: float = 150.0  # scale-normalised LoG response (HU)
    max_seeds: int = 1500  # strongest LoG maxima considered
    max_candidates: int = 1000  # strongest candidates kept after suppression
    solid_hu: float = -500.0  # candidate voxels: denser than this
    grow_factor: float = 1.5  # candidate region: within grow_factor * radius of the seed

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**kw)


def work_factors(spacing: Sequence[float], cfg: DetectorConfig | None = None) -> tuple[int, int, int]:
    """Integer block factors ``(fk, fj, fi)`` that bring the grid near the working spacing.

    >>> work_factors((5.0, 0.84, 0.84))
    (1, 2, 2)
    >>> work_factors((1.25, 0.7, 0.7))
    (2, 2, 2)
    """
    cfg = cfg or DetectorConfig()
    fk = max(1, int(math.floor(cfg.work_slice_mm / spacing[0] + 0.5)))
    fj = max(1, int(math.floor(cfg.work_pixel_mm / spacing[1] + 0.5)))
    fi = max(1, int(math.floor(cfg.work_pixel_mm / spacing[2] + 0.5)))
    return fk, fj, fi


def work_volume(volume: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Block-mean downsampling by integer ``factors`` (edges padded by repetition).

    >>> work_volume(np.arange(16.0).reshape(1, 4, 4), (1, 2, 2))[0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    v = np.asarray(volume, dtype=np.float32)
    pads = [(0, (-n) % f) for n, f in zip(v.shape, factors, strict=True)]
    if any(p[1] for p in pads):
        v = np.pad(v, pads, mode="edge")
    fk, fj, fi = factors
    k, j, i = (s // f for s, f in zip(v.shape, factors, strict=True))
    return v.reshape(k, fk, j, fj, i, fi).mean(axis=(1, 3, 5), dtype=np.float32)


@dataclass(frozen=True)
class WorkGrid:
    """The working grid of one volume and its map back to full-resolution voxel indices.

    Working voxel ``w`` along axis ``a`` has its centre at full-resolution index
    ``scale[a] * w + offset[a]`` and covers ``scale[a]`` full-resolution voxels. Block means by an
    integer factor ``f`` give ``scale = f, offset = (f - 1) / 2``; ``u``-fold linear interpolation of
    thick slices gives ``scale = 1 / u, offset = 0``.

    >>> g = WorkGrid(scale=(0.5, 2.0, 2.0), offset=(0.0, 0.5, 0.5), spacing=(4.0, 1.68, 1.68))
    >>> g.to_full((3, 10, 10))
    (1.5, 20.5, 20.5)
    >>> g.box_to_full((2, 10, 10, 3, 11, 11), (20, 512, 512))
    [1, 20, 20, 2, 23, 23]
    """

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    spacing: tuple[float, float, float]

    def to_full(self, kji: Sequence[float]) -> tuple[float, float, float]:
        """Full-resolution (continuous) index of working index ``kji``."""
        return tuple(float(self.scale[a] * kji[a] + self.offset[a]) for a in range(3))  # type: ignore[return-value]

    def box_to_full(self, box: Sequence[int], shape: Sequence[int]) -> list[int]:
        """Inclusive working box ``[k0, j0, i0, k1, j1, i1]`` -> the full-resolution voxels it covers."""
        lo, hi = [], []
        for a in range(3):
            lower = self.scale[a] * box[a] + self.offset[a] - self.scale[a] / 2
            upper = self.scale[a] * box[a + 3] + self.offset[a] + self.scale[a] / 2
            a0 = min(max(int(math.floor(lower + 0.5 + 1e-6)), 0), shape[a] - 1)
            a1 = min(max(int(math.ceil(upper - 0.5 - 1e-6)), a0), shape[a] - 1)
            lo.append(a0)
            hi.append(a1)
        return lo + hi


def work_grid(volume: np.ndarray, spacing: Sequence[float],
              cfg: DetectorConfig | None = None) -> tuple[np.ndarray, WorkGrid]:
    """The detector's working grid of a full-resolution HU volume: ``(work_hu, grid)``.

    In-plane and for thin slices: block means by :func:`work_factors`. Slices thicker than
    ``cfg.max_work_slice_mm`` (e.g. a routine 8 or 10 mm reconstruction) are linearly interpolated
    along ``k`` by the smallest integer factor that brings them to at most that spacing (8 mm -> 4 mm,
    10 mm -> 5 mm), so the LoG scales and the neighbourhoods of the detector see similar grids.

    >>> w, g = work_grid(np.zeros((3, 8, 8), np.float32), (10.0, 0.8, 0.8))
    >>> w.shape, g.spacing, g.scale
    ((5, 4, 4), (5.0, 1.6, 1.6), (0.5, 2.0, 2.0))
    """
    cfg = cfg or DetectorConfig()
    f = work_factors(spacing, cfg)
    u = max(1, int(math.ceil(float(spacing[0]) / cfg.max_work_slice_mm - 1e-9)))
    if u > 1:
        f = (1, f[1], f[2])
    w = work_volume(volume, f)
    if u > 1 and w.shape[0] > 1:
        pos = np.arange((w.shape[0] - 1) * u + 1) / u
        k0 = np.minimum(np.floor(pos).astype(int), w.shape[0] - 2)
        t = (pos - k0).astype(np.float32)[:, None, None]
        w = (1.0 - t) * w[k0] + t * w[k0 + 1]
        scale_k, off_k = 1.0 / u, 0.0
    else:
        scale_k, off_k = float(f[0]), (f[0] - 1) / 2.0
    grid = WorkGrid(scale=(scale_k, float(f[1]), float(f[2])),
                    offset=(off_k, (f[1] - 1) / 2.0, (f[2] - 1) / 2.0),
                    spacing=(float(spacing[0]) * scale_k, float(spacing[1]) * f[1], float(spacing[2]) * f[2]))
    return np.ascontiguousarray(w, dtype=np.float32), grid


# ----------------------------------------------------------------------------------------------
# Thick-slice reconstructions and real nodule crops
# ----------------------------------------------------------------------------------------------


def box_weights(n_src: int, src_mm: float, dst_mm: float, phase_mm: float = 0.0,
                complete: bool = True) -> np.ndarray:
    """Overlap weights ``W (n_dst, n_src)`` that box-average a 1D grid of ``src_mm`` voxels into ``dst_mm`` ones.

    Source voxel ``k`` covers ``[k * src_mm - src_mm / 2, k * src_mm + src_mm / 2]``; destination voxel
    ``m`` covers ``dst_mm`` starting at ``-src_mm / 2 + phase_mm + m * dst_mm``. Each row is divided by
    ``dst_mm`` (the mean over the destination voxel). ``complete``: keep only destination voxels
    fully inside the source extent (a reconstruction); otherwise also partial ones at both ends
    (a crop padded with zero, used for masks and mask-weighted HU).

    >>> box_weights(4, 5.0, 10.0).round(2).tolist()
    [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    >>> box_weights(3, 5.0, 8.0).round(3).tolist()
    [[0.625, 0.375, 0.0]]
    """
    if n_src < 1 or src_mm <= 0 or dst_mm <= 0:
        raise ParameterError("spacing", f"need a positive grid, got {n_src} voxels of {src_mm} mm -> {dst_mm} mm")
    start = -src_mm / 2 + phase_mm
    end = n_src * src_mm - src_mm / 2
    if complete:
        n_dst = int(math.floor((end - start) / dst_mm + 1e-9))
        first = 0
    else:
        first = -int(math.ceil(phase_mm / dst_mm - 1e-9)) if phase_mm > 0 else 0
        n_dst = int(math.ceil((end - start) / dst_mm - 1e-9)) - first
    src_lo = np.arange(n_src) * src_mm - src_mm / 2
    src_hi = src_lo + src_mm
    lo = start + (np.arange(n_dst) + first)[:, None] * dst_mm
    hi = lo + dst_mm
    w = np.clip(np.minimum(hi, src_hi[None]) - np.maximum(lo, src_lo[None]), 0.0, None) / dst_mm
    return w


def simulate_thick_slices(volume_hu: np.ndarray, slice_mm: float, thickness_mm: float,
                          phase_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A thick reconstruction of a thinner contiguous series: ``(thick volume, W)``.

    Each thick slice is the mean of the thin volume over a ``thickness_mm`` slab along the slice
    normal (how thick reconstructions are made, up to the scanner's slice profile), slabs
    contiguous (spacing = thickness), only complete slabs kept. ``W`` is :func:`box_weights` (thick
    slices x thin slices). Raises :class:`~cds.errors.ParameterError` when ``thickness_mm`` is below the
    source slice spacing (a thinner series cannot be made from a thick one).

    >>> v = np.arange(4.0)[:, None, None] * np.ones((1, 2, 2))
    >>> thick, w = simulate_thick_slices(v, 5.0, 10.0)
    >>> thick[:, 0, 0].tolist()
    [0.5, 2.5]
    """
    if thickness_mm < slice_mm - 1e-6:
        raise ParameterError("thickness_mm", f"{thickness_mm} mm is thinner than the source slices ({slice_mm} mm)")
    w = box_weights(volume_hu.shape[0], slice_mm, thickness_mm, phase_mm)
    if w.shape[0] < 2:
        raise ParameterError("thickness_mm", f"{thickness_mm} mm leaves fewer than 2 slices of {volume_hu.shape[0]}")
    thick = np.tensordot(w.astype(np.float32), np.asarray(volume_hu, np.float32), axes=(1, 0))
    return thick.astype(np.float32), w


def thick_series(series: CtSeries, thickness_mm: float, phase_mm: float = 0.0) -> tuple[CtSeries, np.ndarray]:
    """:func:`simulate_thick_slices` of a whole :class:`CtSeries` with its geometry: ``(thick series, W)``.

    The thick series keeps the patient frame (origin moved to the centre of the first slab), its
    slices get made-up SOP Instance UIDs ``<series uid>.thick<mm>.<m>`` and ``files`` empty; ``W``
    maps thin slice ``k`` to thick slice ``argmax(W[:, k])``.
    """
    vol, w = simulate_thick_slices(series.volume_hu, series.spacing[0], thickness_mm, phase_mm)
    shift = -series.spacing[0] / 2 + phase_mm + thickness_mm / 2  # mm along the normal from slice 0's centre
    origin = tuple(float(v) for v in np.asarray(series.origin) + np.asarray(series.direction)[:, 0] * shift)
    tag = f"{thickness_mm:g}".replace(".", "p")
    uids = [f"{series.series_uid or 'series'}.thick{tag}.{m}" for m in range(vol.shape[0])]
    out = CtSeries(volume_hu=vol, spacing=(float(thickness_mm), series.spacing[1], series.spacing[2]),
                   origin=origin, direction=series.direction, sop_instance_uids=uids, files=[],
                   series_uid=f"{series.series_uid}.thick{tag}", study_uid=series.study_uid,
                   patient_id=series.patient_id, slice_thickness=float(thickness_mm), folder=series.folder)
    return out, w


def write_thick_dicom(series: CtSeries, out_folder: str | Path, thickness_mm: float,
                      phase_mm: float = 0.0) -> tuple[CtSeries, np.ndarray]:
    """Write :func:`thick_series` of ``series`` as a DICOM CT series in ``out_folder``: ``(thick series, W)``.

    Each thick slice takes the header of the thin file nearest its slab centre (patient, study,
    scanner, orientation) with a new Series / SOP Instance UID (derived from the old ones, so reruns
    give the same UIDs), ImagePositionPatient at the slab centre, SliceThickness and
    SpacingBetweenSlices = ``thickness_mm``, the stored values = HU through the source's rescale,
    uncompressed. The returned series' ``sop_instance_uids`` are the UIDs written.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not series.files:
        raise ParameterError("series", "has no source DICOM files to take headers from")
    ts, w = thick_series(series, thickness_mm, phase_mm)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{thickness_mm:g}mm"
    new_series = generate_uid(entropy_srcs=[series.series_uid, tag, f"{phase_mm:g}"])
    uids = []
    for m in range(ts.volume_hu.shape[0]):
        k = int(np.argmax(w[m]))
        ds = pydicom.dcmread(series.files[k])
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
        dtype = np.int16 if signed else np.uint16
        info = np.iinfo(dtype)
        stored = np.clip(np.round((ts.volume_hu[m] - inter) / slope), info.min, info.max).astype(dtype)
        uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), tag, f"{phase_mm:g}"])
        pos = np.asarray(ts.origin) + np.asarray(ts.direction)[:, 0] * thickness_mm * m
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = new_series
        ds.SeriesDescription = f"{getattr(ds, 'SeriesDescription', '')} simulated {tag} slab average".strip()
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SliceThickness = f"{thickness_mm:g}"
        ds.SpacingBetweenSlices = f"{thickness_mm:g}"
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{pos[2]:.4f}"
        ds.InstanceNumber = m + 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelData = stored.tobytes()
        ds.save_as(out / f"{m + 1:04d}.dcm", enforce_file_format=True)
        uids.append(uid)
    ts.sop_instance_uids = uids
    ts.series_uid = new_series
    ts.files = [out / f"{m + 1:04d}.dcm" for m in range(len(uids))]
    return ts, w


def insert_crop(volume_hu: np.ndarray, spacing: Sequence[float], centre_kji: Sequence[float],
                crop_hu: np.ndarray, crop_mask: np.ndarray, crop_spacing: Sequence[float],
                phase_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[tuple[slice, ...], np.ndarray]:
    """Paste a real nodule (HU crop and its mask, ``(k, j, i)`` at ``crop_spacing``) into ``volume_hu`` in place.

    The mask and the mask-weighted HU are box-averaged (:func:`box_weights`) from the crop's grid
    onto the volume's grid along every axis, so a thin-slice nodule gets the partial volume of the
    volume's slices: new HU = (1 - p) * old + mean(mask * crop HU), with ``p`` the averaged mask.
    Only the nodule (mask) is pasted, not the crop's surroundings. The mask's centroid lands on
    ``centre_kji``. Returns ``(crop slices, p)`` like :func:`insert_nodule`.

    >>> v = np.full((10, 40, 40), -850.0, np.float32)
    >>> m = np.zeros((12, 20, 20), bool); m[1:11, 5:15, 5:15] = True
    >>> sl, p = insert_crop(v, (5.0, 1.0, 1.0), (5, 20, 20), np.full(m.shape, 30.0), m, (1.0, 1.0, 1.0))
    >>> round(float(v[5, 20, 20])), round(float(p.max()), 2), round(float(v[0, 0, 0]))
    (30, 1.0, -850)
    """
    m = np.asarray(crop_mask) > 0
    if m.shape != np.shape(crop_hu) or not m.any():
        raise ParameterError("crop_mask", f"needs a non-empty mask of the crop's shape {np.shape(crop_hu)}, got {m.shape}")
    num = np.where(m, np.asarray(crop_hu, np.float64), 0.0)
    den = m.astype(np.float64)
    for a in range(3):
        w = box_weights(m.shape[a], float(crop_spacing[a]), float(spacing[a]), float(phase_mm[a]), complete=False)
        num = np.moveaxis(np.tensordot(w, np.moveaxis(num, a, 0), axes=(1, 0)), 0, a)
        den = np.moveaxis(np.tensordot(w, np.moveaxis(den, a, 0), axes=(1, 0)), 0, a)
    c = np.array(ndi.center_of_mass(den))
    start = [int(round(centre_kji[a] - c[a])) for a in range(3)]
    src, dst = [], []
    for a in range(3):
        s0, s1 = start[a], start[a] + den.shape[a]
        d0, d1 = max(s0, 0), min(s1, volume_hu.shape[a])
        if d1 <= d0:
            raise ParameterError("centre_kji", f"{tuple(centre_kji)} puts the crop outside the volume {volume_hu.shape}")
        src.append(slice(d0 - s0, d1 - s0))
        dst.append(slice(d0, d1))
    p = np.clip(den[tuple(src)], 0.0, 1.0).astype(np.float32)
    q = num[tuple(src)].astype(np.float32)
    sl = tuple(dst)
    volume_hu[sl] = (1.0 - p) * volume_hu[sl] + q
    return sl, p


# ----------------------------------------------------------------------------------------------
# Lung masks
# ----------------------------------------------------------------------------------------------


@dataclass
class LungMasks:
    """Lung masks on the working grid.

    ``side``: 0 outside, 1 patient-right lung, 2 patient-left lung (aerated lung, holes filled per
    slice, so vessels and nodules surrounded by lung are inside). ``region``: where candidates are
    searched = ``side > 0`` plus the juxtapleural band (convex hull of each lung per slice, limited to
    ``band_mm`` from the lung). ``spacing`` is the working spacing per array axis (sk, sj, si).
    """

    side: np.ndarray
    region: np.ndarray
    spacing: tuple[float, float, float]
    n_air_components: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def lung(self) -> np.ndarray:
        return self.side > 0

    @property
    def volume_ml(self) -> float:
        """Volume of both lungs in millilitres."""
        return float(self.lung.sum() * np.prod(self.spacing) / 1000.0)


def _disk(radius_px: Sequence[float]) -> np.ndarray:
    ry, rx = (max(1, int(round(r))) for r in radius_px)
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0


def _near_in_slice(mask: np.ndarray, spacing_ji: Sequence[float], dist_mm: float) -> np.ndarray:
    """Voxels within ``dist_mm`` (in-plane) of ``mask`` on their own slice.

    One 3D distance transform whose slice step is made huge, so the nearest mask voxel is always
    found on the same slice (slices without mask get no voxel).
    """
    big = 1e3 * (dist_mm + 1.0) * max(mask.shape)
    d = ndi.distance_transform_edt(~mask, sampling=(big, spacing_ji[0], spacing_ji[1]))
    return d <= dist_mm


def _split_sides(lung: np.ndarray, lps_x_of_i: np.ndarray) -> np.ndarray:
    """Label lung voxels 1 (patient right) or 2 (patient left) from in-plane-eroded seeds."""
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    eroded = lung.copy()
    seeds = None
    for _ in range(12):
        lab, n = ndi.label(eroded)
        if n >= 2:
            sizes = np.bincount(lab.ravel())[1:]
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= 0.15 * sizes[order[0]]:
                seeds = (lab, order[0] + 1, order[1] + 1)
                break
        eroded = ndi.binary_erosion(eroded, st)
        if not eroded.any():
            break
    side = np.zeros(lung.shape, np.uint8)
    if seeds is None:  # one lung only (or lungs not separable): split at the lung mid-point in x
        xs = lps_x_of_i[np.nonzero(lung)[2]]
        mid = float(np.median(xs)) if xs.size else 0.0
        side[lung] = np.where(lps_x_of_i[np.nonzero(lung)[2]] > mid, 2, 1)
        return side
    lab, a, b = seeds
    xa = lps_x_of_i[np.nonzero(lab == a)[2]].mean()
    xb = lps_x_of_i[np.nonzero(lab == b)[2]].mean()
    left, right = (a, b) if xa > xb else (b, a)
    bb = ndi.find_objects(lung.astype(np.uint8))[0]
    seed = np.zeros(lung[bb].shape, np.uint8)
    seed[lab[bb] == right] = 1
    seed[lab[bb] == left] = 2
    _, idx = ndi.distance_transform_edt(seed == 0, return_indices=True)
    nearest = seed[idx[0], idx[1], idx[2]]
    sub = side[bb]
    sub[lung[bb]] = nearest[lung[bb]]
    return side


def _airways(
    v: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    lps_x_of_i: np.ndarray,
    superior_last: bool,
    cfg: DetectorConfig,
) -> np.ndarray:
    """Trachea and main bronchi: the near-pure-air (< ``cfg.airway_hu``) component of the lung air
    that reaches highest, lies within 35 mm of the lungs' mid-line and is 2..300 ml (else none)."""
    sz, sy, sx = spacing
    core = (v < cfg.airway_hu) & lung
    lab, n = ndi.label(core)
    if n == 0:
        return np.zeros(v.shape, bool)
    vox_ml = sx * sy * sz / 1000.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * vox_ml
    objs = ndi.find_objects(lab)
    xs = lps_x_of_i[np.nonzero(lung)[2]]
    mid = 0.5 * (float(xs.min()) + float(xs.max()))
    best, best_top = 0, -1
    for lbl in range(1, n + 1):
        if not 2.0 <= sizes[lbl] <= 300.0:
            continue
        sl = objs[lbl - 1]
        top = sl[0].stop - 1 if superior_last else v.shape[0] - sl[0].start
        ii = np.nonzero(lab[sl] == lbl)[2] + sl[2].start
        if abs(float(lps_x_of_i[ii].mean()) - mid) > 35.0:
            continue
        if top > best_top:
            best, best_top = lbl, top
    if best == 0:
        return np.zeros(v.shape, bool)
    st = np.zeros((3, 3, 3), bool)
    st[1] = True
    return ndi.binary_dilation(lab == best, st) & lung


def lung_masks(
    work_hu: np.ndarray,
    spacing: Sequence[float],
    direction: Any = None,
    cfg: DetectorConfig | None = None,
) -> LungMasks:
    """Segment the lungs on a working-grid HU volume.

    Air (``< cfg.air_hu``) connected in 3D and not touching the in-plane border of the volume (outside
    air, air under the table) is lung (plus airways); components smaller than ``cfg.min_lung_ml`` or
    than a fifth of the largest (bowel gas) are dropped. The lungs are split into patient right / left,
    closed and hole-filled per slice, and the candidate search region adds a juxtapleural band: the
    per-slice convex hull of each lung, limited to ``cfg.band_mm`` from the aerated lung, so that a
    mass in a concavity of the lung (against chest wall or mediastinum) is searched too.

    Raises :class:`~cds.errors.ModelInputError` when no lung air is found (not a chest CT).
    """
    from skimage.morphology import convex_hull_image

    cfg = cfg or DetectorConfig()
    sz, sy, sx = (float(s) for s in spacing)
    direction = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]) if direction is None else np.asarray(direction, float)
    v = np.asarray(work_hu)
    air = v < cfg.air_hu
    lab, n = ndi.label(air)
    if n == 0:
        raise ModelInputError("volume_hu", "no air below the lung threshold: is this a chest CT in HU?")
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                                       lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(float)
    sizes[0] = 0
    sizes[border] = 0
    vox_ml = sx * sy * sz / 1000.0
    if sizes.max() * vox_ml < cfg.min_lung_ml:
        raise ModelInputError("volume_hu", "no enclosed air region as large as a lung: is this a chest CT?")
    keep = np.flatnonzero((sizes * vox_ml >= cfg.min_lung_ml) & (sizes >= 0.2 * sizes.max()))
    lung = np.isin(lab, keep)
    lps_x_of_i = direction[0, 2] * sx * np.arange(v.shape[2])  # LPS x grows to patient left
    superior_last = float(direction[2, 0]) >= 0  # slices ascend along the normal; +z is superior
    airway = _airways(v, lung, (sz, sy, sx), lps_x_of_i, superior_last, cfg)
    if airway.any():
        lung &= ~airway
        lab2, n2 = ndi.label(lung)
        sizes2 = np.bincount(lab2.ravel(), minlength=n2 + 1).astype(float)
        sizes2[0] = 0
        keep2 = np.flatnonzero((sizes2 * vox_ml >= cfg.min_lung_ml) & (sizes2 >= 0.2 * sizes2.max()))
        lung = np.isin(lab2, keep2)
    side = _split_sides(lung, lps_x_of_i)

    filled = np.zeros_like(side)
    region = np.zeros(v.shape, bool)
    disk = _disk((cfg.closing_mm / sy, cfg.closing_mm / sx))
    pad = max(disk.shape)
    min_px = cfg.min_hull_area_cm2 * 100.0 / (sx * sy)
    for k in range(v.shape[0]):
        for s in (1, 2):
            m = side[k] == s
            if not m.any():
                continue
            m = ndi.binary_closing(np.pad(m, pad), disk)[pad:-pad, pad:-pad]
            m = ndi.binary_fill_holes(m) & ~(filled[k] > 0)
            filled[k][m] = s
    region = filled > 0
    for s in (1, 2):
        m = filled == s
        if not m.any():
            continue
        bb = ndi.find_objects(m.astype(np.uint8))[0]
        near = np.zeros(m.shape, bool)  # within band_mm of this lung in the same slice
        near[bb] = _near_in_slice(m[bb], (sy, sx), cfg.band_mm)
        for k in range(bb[0].start, bb[0].stop):
            comps, nc = ndi.label(m[k])
            for c in range(1, nc + 1):
                cc = comps == c
                if cc.sum() < min_px:
                    continue
                region[k] |= convex_hull_image(cc) & near[k]
    return LungMasks(side=filled, region=region, spacing=(sz, sy, sx), n_air_components=len(keep))


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------

CANDIDATE_FEATURES: tuple[str, ...] = (
    "log_response",  # log of the scale-normalised LoG response at the seed (HU)
    "radius_mm",  # LoG scale of the seed as a sphere radius (sigma * sqrt(3))
    "log_volume_ml",  # log of the candidate region volume (ml)
    "hu_mean",  # mean HU in the region
    "hu_std",  # HU standard deviation in the region
    "sphericity",  # pi^(1/3) (6V)^(2/3) / A with A from exposed voxel faces (1 = ball, smaller = branched)
    "elongation",  # sqrt(lambda1 / lambda2) of the region's coordinate covariance (mm)
    "fill_ratio",  # region volume / volume of its covariance ellipsoid
    "dist_pleura_mm",  # distance of the seed to the edge of the (filled) lung; 0 outside it
    "frac_outside_lung",  # fraction of the region outside the filled lung (juxtapleural part)
    "blobness",  # |l_min| / |l_max| of the Hessian at the seed at its scale (1 blob, 0 tube/plate)
    "tubeness",  # |l_mid| / |l_max| (1 for tubes and blobs, 0 for plates)
)


@dataclass
class Candidate:
    """One candidate on the working grid: a seed, a region, its box and its features."""

    seed_kji: tuple[int, int, int]
    radius_mm: float
    response: float
    box_kji: tuple[int, int, int, int, int, int]  # k0, j0, i0, k1, j1, i1 (inclusive), working grid
    centroid_kji: tuple[float, float, float]
    volume_ml: float
    side: int  # 1 right, 2 left, 0 unknown
    features: dict[str, float]


def _hessian_ratios(
    img: np.ndarray, seed: Sequence[int], sigma_vox: Sequence[float], step_mm: Sequence[float]
) -> tuple[float, float]:
    """(|l_min|/|l_max|, |l_mid|/|l_max|) of the Hessian (mm^-2) of the Gaussian-smoothed image at ``seed``.

    One smoothing of a local crop, then central differences; ``sigma_vox`` and ``step_mm`` are per
    array axis (k, j, i).
    """
    half = [int(math.ceil(3 * s)) + 2 for s in sigma_vox]
    sl = tuple(slice(max(0, c - h), c + h + 1) for c, h in zip(seed, half, strict=True))
    g = ndi.gaussian_filter(img[sl].astype(np.float32), sigma_vox, mode="nearest")
    g = np.pad(g, 1, mode="edge")
    c = tuple(x - s.start + 1 for x, s in zip(seed, sl, strict=True))
    h = np.zeros((3, 3))
    e = np.eye(3, dtype=int)
    for a in range(3):
        pa, ma = tuple(np.add(c, e[a])), tuple(np.subtract(c, e[a]))
        h[a, a] = (g[pa] - 2 * g[c] + g[ma]) / step_mm[a] ** 2
        for b in range(a + 1, 3):
            pp = tuple(np.add(c, e[a] + e[b]))
            pm = tuple(np.add(c, e[a] - e[b]))
            mp = tuple(np.add(c, -e[a] + e[b]))
            mm = tuple(np.add(c, -e[a] - e[b]))
            h[a, b] = h[b, a] = (g[pp] - g[pm] - g[mp] + g[mm]) / (4 * step_mm[a] * step_mm[b])
    ev = np.sort(np.abs(np.linalg.eigvalsh(h)))
    if ev[2] <= 1e-9:
        return 0.0, 0.0
    return float(ev[0] / ev[2]), float(ev[1] / ev[2])


def _surface_area(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Area (mm^2) of the exposed voxel faces of a boolean (k, j, i) mask."""
    sz, sy, sx = spacing
    m = np.pad(mask, 1)
    fk = np.count_nonzero(m[1:] != m[:-1])
    fj = np.count_nonzero(m[:, 1:] != m[:, :-1])
    fi = np.count_nonzero(m[:, :, 1:] != m[:, :, :-1])
    return float(fk * sx * sy + fj * sx * sz + fi * sy * sz)


def _region_features(
    region: np.ndarray, hu: np.ndarray, spacing: Sequence[float], offset: Sequence[int]
) -> dict[str, Any]:
    sz, sy, sx = spacing
    idx = np.nonzero(region)
    n = idx[0].size
    vol_mm3 = n * sx * sy * sz
    vals = hu[idx]
    pts = np.stack([idx[2] * sx, idx[1] * sy, idx[0] * sz], axis=1)
    cov = np.cov(pts.T) if n > 1 else np.zeros((3, 3))
    cov = cov + np.diag([sx * sx, sy * sy, sz * sz]) / 12.0  # voxel extent, keeps single slices finite
    lam = np.sort(np.linalg.eigvalsh(cov))[::-1]
    lam = np.maximum(lam, 1e-6)
    ell_vol = 4.0 / 3.0 * math.pi * float(np.prod(np.sqrt(5.0 * lam)))
    area = _surface_area(region, spacing)
    sph = math.pi ** (1 / 3) * (6 * vol_mm3) ** (2 / 3) / area if area > 0 else 0.0
    k0, j0, i0 = (int(a.min()) for a in idx)
    k1, j1, i1 = (int(a.max()) for a in idx)
    ok, oj, oi = offset
    return {
        "volume_ml": vol_mm3 / 1000.0,
        "hu_mean": float(vals.mean()),
        "hu_std": float(vals.std()),
        "sphericity": float(sph),
        "elongation": float(math.sqrt(lam[0] / lam[1])),
        "fill_ratio": float(min(vol_mm3 / ell_vol, 2.0)),
        "box": (k0 + ok, j0 + oj, i0 + oi, k1 + ok, j1 + oj, i1 + oi),
        "centroid": (float(idx[0].mean() + ok), float(idx[1].mean() + oj), float(idx[2].mean() + oi)),
    }


def _laplacian_mm(g: np.ndarray, step_mm: Sequence[float]) -> np.ndarray:
    """Sum of central second differences along each axis, in HU / mm^2 (edges replicated)."""
    out = np.zeros_like(g)
    for ax, h in enumerate(step_mm):
        a = np.moveaxis(g, ax, 0)
        o = np.moveaxis(out, ax, 0)
        w = 1.0 / (h * h)
        o[1:-1] += (a[2:] - 2 * a[1:-1] + a[:-2]) * w
        o[0] += (a[1] - a[0]) * w
        o[-1] += (a[-2] - a[-1]) * w
    return out


def detect_candidates(
    work_hu: np.ndarray,
    masks: LungMasks,
    cfg: DetectorConfig | None = None,
) -> list[Candidate]:
    """Multi-scale Laplacian-of-Gaussian blob candidates inside the lung search region.

    The HU image is clipped to [-1000, 100] and set to -1000 outside ``masks.region`` (so chest wall
    and mediastinum do not respond), filtered with scale-normalised LoG at ``cfg.scales_mm``; seeds are
    3D local maxima above ``cfg.min_response``, thinned by non-maximum suppression within the radius of
    a stronger seed. Each seed's region is the connected set of voxels denser than ``cfg.solid_hu``
    inside the search region and within ``cfg.grow_factor`` x radius of the seed.
    """
    cfg = cfg or DetectorConfig()
    sz, sy, sx = masks.spacing
    spacing = (sz, sy, sx)
    hu = np.asarray(work_hu, dtype=np.float32)
    img = np.clip(hu, -1000.0, 100.0)
    img[~masks.region] = -1000.0
    best = np.full(hu.shape, -np.inf, np.float32)
    best_s = np.zeros(hu.shape, np.uint8)
    for si, s in enumerate(cfg.scales_mm):
        r = -(s * s) * _laplacian_mm(ndi.gaussian_filter(img, (s / sz, s / sy, s / sx), mode="nearest"),
                                     (sz, sy, sx))
        better = r > best
        best[better] = r[better]
        best_s[better] = si
    peaks = (best == ndi.maximum_filter(best, size=(3, 5, 5), mode="nearest")) & (best >= cfg.min_response)
    peaks &= masks.region & (hu > cfg.solid_hu)
    kk, jj, ii = np.nonzero(peaks)
    resp = best[kk, jj, ii]
    top = np.argsort(resp, kind="stable")[::-1][: cfg.max_seeds]
    kk, jj, ii, resp = kk[top], jj[top], ii[top], resp[top]
    radii = np.asarray(cfg.scales_mm)[best_s[kk, jj, ii]] * math.sqrt(3.0)
    # Largest scale first (then strongest): a seed inside the core of a larger candidate's region is
    # texture or edge of that same object, not a new candidate.
    order = np.lexsort((-resp, -radii))
    claimed = np.zeros(hu.shape, bool)

    lung_filled = masks.side > 0
    dist_pleura = ndi.distance_transform_edt(lung_filled, sampling=(sz, sy, sx))
    solid = (hu > cfg.solid_hu) & masks.region
    out: list[Candidate] = []
    for o in order:
        seed = (int(kk[o]), int(jj[o]), int(ii[o]))
        if claimed[seed]:
            continue
        rad = float(radii[o])
        reach = cfg.grow_factor * rad + 1.0
        half = (int(math.ceil(reach / sz)), int(math.ceil(reach / sy)), int(math.ceil(reach / sx)))
        sl = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(seed, half, hu.shape, strict=True))
        off = tuple(s.start for s in sl)
        gk, gj, gi = np.ogrid[sl]
        ball_d2 = ((gk - seed[0]) * sz) ** 2 + ((gj - seed[1]) * sy) ** 2 + ((gi - seed[2]) * sx) ** 2
        local = solid[sl] & (ball_d2 <= reach**2)
        lab, _ = ndi.label(local)
        lseed = tuple(c - s for c, s in zip(seed, off, strict=True))
        if lab[lseed] == 0:
            continue
        reg = lab == lab[lseed]
        claimed[sl] |= reg & (ball_d2 <= rad * rad)
        f = _region_features(reg, hu[sl], spacing, off)
        sig = rad / math.sqrt(3.0)
        blob, tube = _hessian_ratios(img, seed, (sig / sz, sig / sy, sig / sx), (sz, sy, sx))
        inside = lung_filled[sl][reg]
        side_vals = masks.side[sl][reg]
        side_vals = side_vals[side_vals > 0]
        side = int(np.bincount(side_vals).argmax()) if side_vals.size else 0
        feats = {
            "log_response": math.log(max(float(best[seed]), 1.0)),
            "radius_mm": rad,
            "log_volume_ml": math.log(f["volume_ml"] + 1e-3),
            "hu_mean": f["hu_mean"],
            "hu_std": f["hu_std"],
            "sphericity": f["sphericity"],
            "elongation": f["elongation"],
            "fill_ratio": f["fill_ratio"],
            "dist_pleura_mm": float(dist_pleura[seed]),
            "frac_outside_lung": float(1.0 - inside.mean()),
            "blobness": blob,
            "tubeness": tube,
        }
        out.append(Candidate(seed_kji=seed, radius_mm=rad, response=float(best[seed]), box_kji=f["box"],
                             centroid_kji=f["centroid"], volume_ml=f["volume_ml"], side=side, features=feats))
    out.sort(key=lambda c: -c.response)
    return out[: cfg.max_candidates]


# ----------------------------------------------------------------------------------------------
# Synthetic nodules
# ----------------------------------------------------------------------------------------------


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def insert_nodule(
    volume_hu: np.ndarray,
    spacing: Sequence[float],
    centre_kji: Sequence[float],
    semi_axes_mm: Sequence[float],
    hu: float = 20.0,
    rng: np.random.Generator | None = None,
    rotation: np.ndarray | None = None,
    edge_mm: float = 1.0,
    noise_hu: float = 0.0,
    slice_thickness: float | None = None,
    lobes: int = 0,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Paste a soft-edged ellipsoid of density ``hu`` into ``volume_hu`` in place.

    Returns ``(crop, p)``: the index slices of the touched crop and the occupancy map ``p`` there.

    The nodule occupancy ``p`` (0..1) is a logistic edge of width ``edge_mm`` around the ellipsoid
    surface, averaged over the slice thickness (partial volume); new HU = (1 - p) * old + p * (hu +
    noise). ``lobes`` adds smaller ellipsoids on the surface (lobulated outline). Only a crop around
    the nodule is touched.

    >>> v = np.full((20, 40, 40), -850.0, np.float32)
    >>> crop, p = insert_nodule(v, (2.0, 1.0, 1.0), (10, 20, 20), (5, 5, 5), hu=30.0)
    >>> round(float(v[10, 20, 20])), round(float(v[10, 20, 35]))
    (30, -850)
    """
    rng = rng or np.random.default_rng(0)
    sz, sy, sx = (float(s) for s in spacing)
    thick = float(slice_thickness or sz)
    rot = _rotation(rng) if rotation is None else np.asarray(rotation, float)
    axes = np.asarray(semi_axes_mm, float)
    parts = [(np.zeros(3), axes, rot)]
    for _ in range(int(lobes)):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        shift = rot @ (d * axes * 0.8)
        parts.append((shift, axes * rng.uniform(0.35, 0.6), _rotation(rng)))
    reach = max(float(np.max(axes)) * 1.6 + 3 * edge_mm + thick, 3.0)
    c = np.asarray(centre_kji, float)
    half = (int(math.ceil(reach / sz)) + 1, int(math.ceil(reach / sy)) + 1, int(math.ceil(reach / sx)) + 1)
    sl = tuple(slice(max(0, int(round(ci)) - h), min(n, int(round(ci)) + h + 1))
               for ci, h, n in zip(c, half, volume_hu.shape, strict=True))
    gk, gj, gi = np.meshgrid(*[np.arange(s.start, s.stop, dtype=float) for s in sl], indexing="ij")
    p = np.zeros(gk.shape, np.float32)
    offsets = np.linspace(-0.4, 0.4, 5) * thick  # partial volume across the slice thickness
    for dz in offsets:
        xyz = np.stack([(gi - c[2]) * sx, (gj - c[1]) * sy, (gk - c[0]) * sz + dz], axis=-1)
        occ = np.zeros(gk.shape, np.float32)
        for shift, ax, r in parts:
            local = (xyz - shift) @ r  # coordinates in the ellipsoid frame
            rho = np.sqrt(((local / ax) ** 2).sum(-1))
            dist_mm = (rho - 1.0) * float(np.min(ax))
            occ = np.maximum(occ, 1.0 / (1.0 + np.exp(np.clip(dist_mm / max(edge_mm, 1e-3) * 1.7, -30, 30))))
        p += occ / len(offsets)
    val = hu + (rng.normal(0.0, noise_hu, p.shape) if noise_hu > 0 else 0.0)
    crop = volume_hu[sl]
    crop[...] = (1.0 - p) * crop + p * val
    return sl, p
