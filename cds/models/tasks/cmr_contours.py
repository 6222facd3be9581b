"""Manual LV contours of a Sunnybrook-style cine folder and their Simpson's-disc volumes.

Layout (as in ``../shared/data/sunnybrook-cmr``)::

    DIR/dicoms/<patient_id>/<n>.dcm                 one cine short-axis series per patient
    DIR/contours/<original_id>/i-contours/IM-0001-<nnnn>-icontour-manual.txt   endocardium
    DIR/contours/<original_id>/o-contours/IM-0001-<nnnn>-ocontour-manual.txt   epicardium
    DIR/link.csv                                    patient_id,original_id
    DIR/patients.csv                                optional: age, sex, pathology

A contour file lists ``x y`` pixel coordinates (x = column, y = row) of the image ``<nnnn>.dcm``.
Endocardial contours exist on the end-diastolic (ED) and end-systolic (ES) phase, epicardial
ones on ED only; the ED phase is the one that carries the epicardium.

Reference volumes (:func:`contour_function`): per contoured slice the polygon area (shoelace
formula on the image grid, pixel spacing from the DICOM header) times the slice spacing (the
median step of ImagePositionPatient projected on the slice normal; SliceLocation is not used);
EDV, ESV, EF and ED LV mass = 1.05 g/mL x (epicardial - endocardial volume).

>>> square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
>>> polygon_area(square)
100.0
>>> f = polygon_fraction(square, (16, 16), supersample=4)   # pixel centres at integers
>>> float(f.sum()), float(f[5, 5]), float(f[0, 0])
(100.0, 1.0, 0.25)
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError, ParameterError

__all__ = [
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "is_contour_layout",
    "read_link",
    "read_contour",
    "polygon_area",
    "polygon_fraction",
    "load_case",
    "contour_function",
    "contour_targets",
]

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
_NAME = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


def is_contour_layout(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` is laid out like sunnybrook-cmr (``dicoms/``, ``contours/``, ``link.csv``).

    >>> import tempfile
    >>> is_contour_layout(tempfile.mkdtemp())
    False
    """
    d = Path(data_dir)
    return (d / "dicoms").is_dir() and (d / "contours").is_dir() and (d / "link.csv").is_file()


def read_link(data_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``link.csv`` (``patient_id``, ``original_id``) joined with ``patients.csv`` when present."""
    d = Path(data_dir)
    path = d / "link.csv"
    try:
        with path.open(newline="") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except OSError as exc:
        raise ParameterError("data", f"{path}: cannot read ({exc})") from None
    if not rows or not {"patient_id", "original_id"} <= set(rows[0]):
        raise ParameterError("data", f"{path}: needs the columns patient_id,original_id")
    extra: dict[str, dict[str, str]] = {}
    if (d / "patients.csv").is_file():
        with (d / "patients.csv").open(newline="") as fh:
            extra = {r.get("patient_id", ""): dict(r) for r in csv.DictReader(fh)}
    return [{**extra.get(r["patient_id"], {}), **r} for r in rows]


def read_contour(path: str | Path) -> np.ndarray:
    """The ``(n, 2)`` float array of ``x y`` points of one contour file (>= 3 points).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "c.txt"
    >>> _ = p.write_text("1 2\\n3 4\\n5 0\\n")
    >>> read_contour(p).tolist()
    [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]
    """
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageReadError(str(p), f"cannot read contour file ({exc})") from None
    pts = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split()
        try:
            x, y = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise ImageReadError(str(p), f"line {i + 1} is not 'x y': {line!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ImageReadError(str(p), f"line {i + 1} holds a non-finite coordinate")
        pts.append((x, y))
    if len(pts) < 3:
        raise ImageReadError(str(p), f"a contour needs >= 3 points, found {len(pts)}")
    return np.asarray(pts, dtype=np.float64)


def polygon_area(xy: np.ndarray) -> float:
    """Area (pixel units) of a closed polygon by the shoelace formula."""
    x, y = np.asarray(xy, float).T
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_fraction(xy: np.ndarray, shape: tuple[int, int], supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel inside the polygon ``xy`` (x = column, y = row; pixel centres at integers)."""
    from matplotlib.path import Path as MplPath

    H, W = shape
    out = np.zeros((H, W), np.float32)
    xy = np.asarray(xy, float)
    c0, c1 = max(int(math.floor(xy[:, 0].min())) - 1, 0), min(int(math.ceil(xy[:, 0].max())) + 2, W)
    r0, r1 = max(int(math.floor(xy[:, 1].min())) - 1, 0), min(int(math.ceil(xy[:, 1].max())) + 2, H)
    if c1 <= c0 or r1 <= r0:
        return out
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    xs = (np.arange(c0, c1)[:, None] + off[None, :]).ravel()
    ys = (np.arange(r0, r1)[:, None] + off[None, :]).ravel()
    gx, gy = np.meshgrid(xs, ys)
    inside = MplPath(xy).contains_points(np.column_stack([gx.ravel(), gy.ravel()])).reshape(gy.shape)
    frac = inside.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    out[r0:r1, c0:c1] = frac
    return out


def _patient_dirs(data_dir: Path, patient_id: str) -> tuple[Path, Path, dict[str, str]]:
    rows = {r["patient_id"]: r for r in read_link(data_dir)}
    if patient_id not in rows:
        raise ParameterError("patient", f"{patient_id!r} is not in {data_dir / 'link.csv'} "
                                        f"(found: {', '.join(sorted(rows))})")
    row = rows[patient_id]
    dicoms, contours = data_dir / "dicoms" / patient_id, data_dir / "contours" / row["original_id"]
    for p in (dicoms, contours):
        if not p.is_dir():
            raise ParameterError("data", f"{p}: missing folder for patient {patient_id}")
    return dicoms, contours, row


def load_case(data_dir: str | Path, patient_id: str) -> dict[str, Any]:
    """One patient: the cine (:func:`cds.models.cine.read_cine`) and its contours on the cine grid.

    Returns ``image`` (the cine Image, ``(frames, slices, rows, cols)``), ``contours``
    ``{(frame, slice): {"i": xy, "o": xy}}``, ``ed_frame`` / ``es_frame`` (the phases holding
    epicardial contours / the other contoured phase; per slice the most common), ``patient``
    (the link.csv / patients.csv row) and ``geometry`` (as :func:`cds.models.tasks.cmr_function.predict`
    takes it, spacing from ImagePositionPatient).
    """
    from cds.models.cine import read_cine
    from cds.models.tasks.cmr_function import cine_geometry

    d = Path(data_dir)
    dicoms, cdir, row = _patient_dirs(d, patient_id)
    image = read_cine(dicoms)
    where = {}
    for s, names in enumerate(image.meta["source_files"]):
        for f, name in enumerate(names):
            where[Path(name).stem.lstrip("0") or "0"] = (f, s)
    contours: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    files = sorted(cdir.rglob("*contour-manual.txt"))
    if not files:
        raise ParameterError("data", f"{cdir}: no *contour-manual.txt files")
    for p in files:
        m = _NAME.search(p.name)
        if not m:
            continue
        n, kind = str(int(m.group(1))), m.group(2)
        if n not in where:
            raise ParameterError("data", f"{p}: names image {n}.dcm, which is not in {dicoms}")
        contours.setdefault(where[n], {})[kind] = read_contour(p)
    ed_frames = [f for (f, _), c in contours.items() if "o" in c]
    if not ed_frames:
        raise ParameterError("data", f"{cdir}: no epicardial (o-) contours, so the ED phase is unknown")
    ed = int(np.bincount(ed_frames).argmax())
    es_frames = [f for (f, _), c in contours.items() if "o" not in c and "i" in c and f != ed]
    if not es_frames:
        raise ParameterError("data", f"{cdir}: no endocardial contours outside the ED phase (no ES)")
    es = int(np.bincount(es_frames).argmax())
    return {"patient_id": patient_id, "patient": row, "image": image, "contours": contours,
            "ed_frame": ed, "es_frame": es, "geometry": cine_geometry(image), "folder": str(dicoms)}


def contour_function(case: dict[str, Any]) -> dict[str, Any]:
    """Simpson's-disc EDV, ESV, EF and ED LV mass of a :func:`load_case` case's manual contours.

    Each slice contributes its contour area at its own ED / ES phase: a contour in the ED phase or
    with an epicardial partner counts at ED, any other endocardial contour at ES. ``n_slices_ed`` / ``n_slices_es`` count the
    contoured slices; a slice without a contour counts zero.
    """
    g = case["geometry"]
    dy, dx = (float(v) for v in g["pixel_spacing_mm"])
    sp = float(g["spacing_between_slices_mm"])
    ed_i: dict[int, float] = {}
    ed_o: dict[int, float] = {}
    es_i: dict[int, float] = {}
    for (f, s), c in case["contours"].items():
        if "o" in c or f == case["ed_frame"]:
            if "o" in c:
                ed_o[s] = polygon_area(c["o"]) * dy * dx
            if "i" in c:
                ed_i[s] = polygon_area(c["i"]) * dy * dx
        elif "i" in c:
            es_i[s] = polygon_area(c["i"]) * dy * dx
    edv = sum(ed_i.values()) * sp / 1000.0
    esv = sum(es_i.values()) * sp / 1000.0
    epi = sum(ed_o.values()) * sp / 1000.0
    myo_slices = [s for s in ed_o if s in ed_i]
    mass = MYOCARDIAL_DENSITY_G_PER_ML * sum(ed_o[s] - ed_i[s] for s in myo_slices) * sp / 1000.0
    return {"edv_ml": edv, "esv_ml": esv, "sv_ml": edv - esv,
            "ef_pct": 100.0 * (edv - esv) / edv if edv > 0 else None,
            "lv_mass_g": mass, "epicardial_volume_ml": epi,
            "ed_frame": case["ed_frame"], "es_frame": case["es_frame"],
            "n_slices_ed": len(ed_i), "n_slices_es": len(es_i), "slice_spacing_mm": sp,
            "slices_ed": sorted(ed_i), "slices_es": sorted(es_i)}


def contour_targets(case: dict[str, Any], supersample: int = 4) -> list[dict[str, Any]]:
    """Training targets from the contours: one entry per contoured (frame, slice) image.

    Each entry: ``frame``, ``slice``, ``lv`` (endocardial fraction map), ``myo`` (epicardial minus
    endocardial fraction, or None where there is no epicardial contour) and ``kind``: ``"lv_myo"``
    (ED: cavity and wall known) or ``"lv"`` (ES: only the cavity known). Slices of the ED / ES
    phase outside the contoured range (e.g. above the base) are added as ``"lv_myo"`` / ``"lv"``
    with empty maps: the expert did not count LV there.
    """
    F, S, H, W = case["image"].array.shape
    out = []
    done = set()
    for (f, s), c in sorted(case["contours"].items()):
        lv = polygon_fraction(c["i"], (H, W), supersample) if "i" in c else None
        if "o" in c:
            epi = polygon_fraction(c["o"], (H, W), supersample)
            if lv is None:
                continue
            out.append({"frame": f, "slice": s, "lv": lv, "myo": np.clip(epi - lv, 0, 1), "kind": "lv_myo"})
        elif lv is not None:
            out.append({"frame": f, "slice": s, "lv": lv, "myo": None, "kind": "lv"})
        else:
            continue
        done.add((f, s))
    for frame, kind in ((case["ed_frame"], "lv_myo"), (case["es_frame"], "lv")):
        sl = sorted(s for (f, s) in done if f == frame)
        if not sl:
            continue
        for s in range(S):
            if s < sl[0] or s > sl[-1]:
                z = np.zeros((H, W), np.float32)
                out.append({"frame": frame, "slice": s, "lv": z, "myo": z if kind == "lv_myo" else None,
                            "kind": kind, "outside": True})
    return out
