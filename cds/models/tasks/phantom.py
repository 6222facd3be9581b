"""Deforming-heart cine MRI phantoms with known LV volumes and strains.

No real cardiac MRI is available to this project, so the ``cmr-function`` model is trained and
validated on these phantoms. One phantom is a short-axis (SAX) cine stack shaped
``(frames, slices, rows, cols)`` with MR-like intensities (balanced-SSFP contrast: bright blood,
dark myocardium, bright fat, dark lung), coil shading, Rician noise, and partial volume from
rendering every pixel on a ``supersample`` x ``supersample`` sub-grid (through the slab thickness
the LV fractions are integrated exactly).

Geometry of the left ventricle (LV), in mm, z along the long axis (apex at z = 0, base up):

- endocardium: an ellipsoid with in-plane semi-axes ``a``, ``b`` (rotated by ``phi``) and long
  semi-axis ``c``, centred at z = c and truncated at the base plane z = c (1 + f);
- epicardium: the ellipsoid with semi-axes ``a + w``, ``b + w``, ``c + w_apex``, same centre and
  base plane (so the wall is ``w`` thick at the equator, ``w_apex`` at the apex);
- contraction: the apex stays put; from end-diastole (ED) to end-systole (ES) the long axis
  shortens by ``long_shortening`` (the base descends) and the in-plane endocardial semi-axes shrink
  so that the ES volume equals ``EDV * (1 - ef_target)``; the wall thickness at each frame is
  solved so that the myocardial volume changes by ``myo_volume_change`` (near-incompressible);
- a right ventricle (RV) beside the septum, a descending aorta, lungs, chest wall, fat and liver
  make the surroundings.

Ground truth (``truth`` dict), all exact for the continuous geometry:

- ``lv_volumes_ml`` per frame (closed-form truncated-ellipsoid volumes), ``edv_ml`` = max,
  ``esv_ml`` = min over frames, ``ef_pct`` = 100 (EDV - ESV) / EDV, ``ed_frame``, ``es_frame``;
- ``gcs_pct`` (global circumferential strain): 100 (sum C_ES - sum C_ED) / sum C_ED, where C is
  the mid-wall circumference (the curve halfway between endo- and epicardium along rays from the LV
  centre) of each mid-ventricular slice, averaged over the slab's thickness; negative = shortening;
- ``grs_pct`` (global radial strain): the same with the mean wall thickness (endo-to-epi distance
  along those rays); positive = thickening;
- mid-ventricular slices (``mid_slices``): of the slices whose true slab-averaged LV cavity area at
  ED is >= 10 % of the largest, drop ``n // 3`` at each end (the measurement code uses the same rule
  on its own areas), so the strains are Eulerian, measured in the fixed image planes;
- partial-volume fraction maps ``lv_frac``, ``myo_frac``, ``rv_frac`` (frames, slices, rows, cols)
  rendered with the image, and ``edv_disc_ml`` / ``esv_disc_ml``: Simpson's disc sums of those
  maps (what a perfect segmentation would give).

Varied per seed (:func:`sample_params`): 20-30 frames, pixel spacing 1.3-1.9 mm on a 128 x 128
grid, slice thickness 6-10 mm with no gap or a 0-2 mm gap, base/apex coverage margins, LV size
(EDV about 50-220 mL), in-plane eccentricity, long-axis length and truncation, wall thickness
6-12 mm, target EF 20-75 % with matching long-axis shortening, +-3 % myocardial volume change
(wall-thickening spread), RV size and EF, epicardial fat 1-6 mm, tissue contrasts (myocardium
0.20-0.34, mediastinal tissue 0.36-0.55, liver 0.28-0.42 of the blood signal), coil shading, noise
SD 2-8 % of blood, in-plane motion and slice misregistration. ``cycle_start`` (the cycle phase of
frame 0; default 0 = ED) is not drawn: training sets it so that ED can fall anywhere in the cine. Not modelled: papillary muscles,
trabeculation, LV outflow tract and atria in basal slices, flow and banding artefacts.

Everything is deterministic per ``seed``.

Examples
--------
>>> cine, truth = make_cine(3, n_frames=8, rows=64, cols=64, supersample=2)
>>> cine.ndim, cine.shape[0], cine.shape[2:]
(4, 8, (64, 64))
>>> 15.0 <= truth["ef_pct"] <= 80.0 and truth["gcs_pct"] < 0 < truth["grs_pct"]
True
>>> bool(np.array_equal(cine, make_cine(3, n_frames=8, rows=64, cols=64, supersample=2)[0]))
True
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import ImageReadError, ParameterError

__all__ = [
    "PHANTOM_VERSION",
    "sample_params",
    "make_cine",
    "activation",
    "mid_ventricular_slices",
    "save_cine_npz",
    "load_cine_npz",
    "generate_dataset",
    "list_cases",
    "main",
]

PHANTOM_VERSION = "1.0"
"""Bump when the rendering changes: a saved data set records the version that made it."""

INTENSITY_SCALE = 1000.0
"""Blood-pool signal before coil shading (the cine is stored as integers, like DICOM)."""

_FRAC_SCALE = 250.0  # fraction maps are stored in .npz files as uint8 0..250


# ------------------------------------------------------------------------------------ parameters
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_params(seed: int, **overrides: Any) -> dict[str, Any]:
    """All random choices of one phantom (a JSON-ready dict), drawn from ``seed``.

    Any key can be fixed through ``overrides`` (e.g. ``ef_target=0.6``, ``n_frames=20``,
    ``noise_level=0.0``); unknown keys raise :class:`cds.errors.ParameterError`.

    >>> p = sample_params(1, ef_target=0.55)
    >>> p["ef_target"], 6.0 <= p["slice_thickness"] <= 10.0
    (0.55, True)
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ParameterError("seed", f"must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), 20261128])
    p: dict[str, Any] = {"seed": int(seed), "phantom_version": PHANTOM_VERSION}
    # acquisition
    p["n_frames"] = int(rng.integers(20, 31))
    p["rows"] = 128
    p["cols"] = 128
    p["pixel_spacing"] = round(_u(rng, 1.3, 1.9), 3)
    p["slice_thickness"] = round(_u(rng, 6.0, 10.0), 2)
    p["slice_gap"] = round(float(rng.choice([0.0, _u(rng, 0.0, 2.0)])), 2)
    p["noise_level"] = _u(rng, 0.02, 0.08)           # noise SD relative to the blood signal
    p["base_margin"] = _u(rng, -0.25, 0.75)          # first slice centre above the ED base, in spacings
    p["apex_margin"] = _u(rng, 0.0, 1.0)             # extra coverage beyond the epicardial apex
    # LV shape and function
    p["a_ed"] = _u(rng, 20.0, 31.0)                  # endocardial in-plane semi-axis at ED (mm)
    p["b_ratio"] = _u(rng, 0.8, 1.0)                 # in-plane eccentricity b / a
    p["phi"] = _u(rng, 0.0, math.pi)                 # in-plane orientation
    p["c_ed"] = _u(rng, 58.0, 85.0)                  # long semi-axis (centre to apex) at ED (mm)
    p["f_trunc"] = _u(rng, 0.0, 0.35)                # base plane at c (1 + f) above the apex
    p["w_ed"] = _u(rng, 6.0, 12.0)                   # wall thickness at ED (mm)
    p["w_apex_ratio"] = _u(rng, 0.6, 1.0)
    p["ef_target"] = _u(rng, 0.20, 0.75)
    p["long_shortening"] = None                      # derived below unless overridden
    p["myo_volume_change"] = _u(rng, -0.03, 0.03)    # ES/ED myocardial volume - 1 (wall-thickening spread)
    p["t_es"] = _u(rng, 0.30, 0.42)                  # ES as a fraction of the R-R interval
    p["rr_ms"] = _u(rng, 700.0, 1100.0)
    p["center"] = [_u(rng, -8.0, 14.0), _u(rng, -10.0, 10.0)]
    p["motion"] = [_u(rng, -1.5, 1.5), _u(rng, -1.5, 1.5)]
    p["misregistration"] = rng.normal(0.0, 0.8, size=(40, 2)).round(3).tolist()
    # RV
    p["rv_angle"] = _u(rng, math.pi - 0.5, math.pi + 0.5)
    p["rv_ra"] = _u(rng, 11.0, 19.0)
    p["rv_rb"] = _u(rng, 28.0, 42.0)
    p["rv_len_frac"] = _u(rng, 0.6, 0.85)
    p["rv_ef"] = _u(rng, 0.30, 0.65)
    p["rv_wall"] = _u(rng, 2.0, 4.0)
    # fat around the LV
    p["fat_thickness"] = _u(rng, 1.0, 6.0)
    p["fat_phase"] = [_u(rng, 0.0, 2 * math.pi), _u(rng, 0.0, 2 * math.pi)]
    # intensities relative to blood = 1
    p["i_blood"] = _u(rng, 0.9, 1.1)
    p["i_myo"] = _u(rng, 0.20, 0.34)
    p["i_tissue"] = _u(rng, 0.36, 0.55)             # mediastinal soft tissue and chest wall
    p["i_fat"] = _u(rng, 0.7, 0.95)
    p["i_lung"] = _u(rng, 0.02, 0.08)
    p["i_liver"] = _u(rng, 0.28, 0.42)
    p["i_av"] = _u(rng, 0.35, 0.55)
    # body and background anatomy
    p["body"] = [_u(rng, 140.0, 175.0), _u(rng, 100.0, 125.0), _u(rng, -0.2, 0.2), _u(rng, -30.0, -10.0)]
    p["lungs"] = [_u(rng, -8.0, 3.0), _u(rng, 35.0, 55.0), _u(rng, 55.0, 80.0)]   # gap to heart, semi-axes
    p["aorta"] = [_u(rng, 30.0, 60.0), _u(rng, 9.0, 13.0), _u(rng, -0.8, -0.2)]
    p["liver_height"] = _u(rng, 5.0, 30.0)
    p["texture"] = rng.normal(0.0, 1.0, size=(6, 4)).round(4).tolist()
    p["coils"] = [[_u(rng, -80.0, 80.0), _u(rng, -140.0, -100.0)], [_u(rng, -80.0, 80.0), _u(rng, 100.0, 140.0)]]
    p["coil_sigma"] = _u(rng, 70.0, 120.0)
    p["cycle_start"] = 0.0                           # cycle phase of frame 0 (0 = ED); not drawn, set by training
    for k, v in overrides.items():
        if k not in p:
            raise ParameterError(k, f"not a phantom parameter; choose from {', '.join(sorted(p))}")
        p[k] = v
    if p["long_shortening"] is None:
        ef = float(p["ef_target"])
        p["long_shortening"] = float(np.clip(0.03 + 0.17 * (ef - 0.2) / 0.55 + rng.uniform(-0.025, 0.025),
                                             0.02, 0.22))
    _check_params(p)
    return p


def _check_params(p: dict[str, Any]) -> None:
    checks = {
        "n_frames": (4, 200), "rows": (32, 512), "cols": (32, 512), "pixel_spacing": (0.5, 4.0),
        "slice_thickness": (2.0, 20.0), "slice_gap": (0.0, 10.0), "ef_target": (0.02, 0.9),
        "noise_level": (0.0, 0.5), "long_shortening": (0.0, 0.4), "f_trunc": (0.0, 0.8),
        "cycle_start": (0.0, 1.0),
    }
    for k, (lo, hi) in checks.items():
        v = p[k]
        if not isinstance(v, int | float | np.integer | np.floating) or not lo <= float(v) <= hi:
            raise ParameterError(k, f"must be a number in [{lo}, {hi}], got {v!r}")


# --------------------------------------------------------------------------------------- motion
def activation(t: np.ndarray | float, t_es: float) -> np.ndarray:
    """Contraction state in [0, 1] over the cardiac cycle ``t`` in [0, 1): 0 at ED (t = 0), 1 at ES.

    Systole is a half-cosine up to ``t_es``; diastole has rapid filling, diastasis and an atrial
    kick back to 0.

    >>> activation(np.array([0.0, 0.35]), 0.35).round(3).tolist()
    [0.0, 1.0]
    """
    t = np.asarray(t, dtype=float) % 1.0
    sys = 0.5 * (1 - np.cos(np.pi * np.clip(t / t_es, 0, 1)))
    u = np.clip((t - t_es) / (1 - t_es), 0, 1)
    dia = 0.25 * 0.5 * (1 + np.cos(np.pi * u)) + 0.75 * 0.5 * (1 + np.cos(np.pi * np.minimum(u / 0.4, 1)))
    return np.where(t <= t_es, sys, dia)


def _ellipsoid_cap_volume(A: float, B: float, C: float, h: float) -> float:
    """Volume (mm^3) of the ellipsoid x^2/A^2 + y^2/B^2 + z^2/C^2 <= 1 below the plane z = h."""
    h = min(h, C)
    return math.pi * A * B * (h - h**3 / (3 * C * C) + 2 * C / 3)


def _lv_state(p: dict[str, Any], s: float) -> dict[str, float]:
    """LV (and RV) geometry at contraction state ``s`` (0 = ED, 1 = ES)."""
    a0, c0, f = p["a_ed"], p["c_ed"], p["f_trunc"]
    b0 = a0 * p["b_ratio"]
    ls = p["long_shortening"]
    k_es = math.sqrt((1 - p["ef_target"]) / (1 - ls))
    k = 1 - s * (1 - k_es)
    c = c0 * (1 - s * ls)
    a, b = a0 * k, b0 * k
    h = f * c                                          # base plane above the ellipsoid centre
    r_ap = p["w_apex_ratio"]

    def myo(w: float) -> float:
        return _ellipsoid_cap_volume(a + w, b + w, c + r_ap * w, h) - _ellipsoid_cap_volume(a, b, c, h)

    w0 = p["w_ed"]
    m_ed = (_ellipsoid_cap_volume(a0 + w0, b0 + w0, c0 + r_ap * w0, f * c0) - _ellipsoid_cap_volume(a0, b0, c0, f * c0))
    target = m_ed * (1 + s * p["myo_volume_change"])
    lo, hi = 0.1 * w0, 6.0 * w0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if myo(mid) < target else (lo, mid)
    w = 0.5 * (lo + hi)
    k_rv = math.sqrt(1 - s * p["rv_ef"])
    return {"a": a, "b": b, "c": c, "w": w, "w_ap": r_ap * w, "zc": c, "zb": c * (1 + f),
            "lv_vol": _ellipsoid_cap_volume(a, b, c, h), "myo_vol": myo(w),
            "rv_ra": p["rv_ra"] * k_rv, "rv_rb": p["rv_rb"] * k_rv}


def _slice_positions(p: dict[str, Any], ed: dict[str, float]) -> np.ndarray:
    """Slice centres (mm), base first, covering the LV at ED."""
    sp = p["slice_thickness"] + p["slice_gap"]
    z0 = ed["zb"] + p["base_margin"] * sp
    z_end = -ed["w_ap"] - p["apex_margin"] * sp
    n = int(math.floor((z0 - z_end) / sp)) + 1
    return z0 - sp * np.arange(max(n, 2))


def _sub_planes(z: float, p: dict[str, Any], n_sub: int) -> np.ndarray:
    th = p["slice_thickness"]
    return z - th / 2 + th * (np.arange(n_sub) + 0.5) / n_sub


# ------------------------------------------------------------------------------------- rendering
def _polar_radius(A: float, B: float, ang: np.ndarray) -> np.ndarray:
    """Radius of the ellipse with semi-axes A (along angle 0) and B along the ray at angle ``ang``."""
    return A * B / np.sqrt((B * np.cos(ang)) ** 2 + (A * np.sin(ang)) ** 2)


def _overlap(lo: np.ndarray | float, hi: np.ndarray | float, z0: float, z1: float) -> np.ndarray:
    """Length of [lo, hi] inside the slab [z0, z1], as a fraction of the slab."""
    return np.clip(np.minimum(hi, z1) - np.maximum(lo, z0), 0.0, None) / (z1 - z0)


def _heart_fractions(p: dict[str, Any], st: dict[str, float], z: float, cx: float, cy: float,
                     xs: np.ndarray, ys: np.ndarray, ss: int) -> dict[str, np.ndarray]:
    """Partial-volume fractions of the heart labels on the box grid (xs, ys: sub-pixel centres).

    Through the slab the fractions are exact: for each sub-pixel the LV occupies one z interval,
    whose overlap with the slab is computed in closed form. In-plane they come from the sub-grid.
    """
    th = p["slice_thickness"]
    z0, z1 = z - th / 2, z + th / 2
    a, b, c, w, w_ap, zc, zb = (st[k] for k in ("a", "b", "c", "w", "w_ap", "zc", "zb"))
    ce = c + w_ap
    dx = xs[None, :] - np.float32(cx)
    dy = ys[:, None] - np.float32(cy)
    cp, sp = np.float32(math.cos(p["phi"])), np.float32(math.sin(p["phi"]))
    u = dx * cp + dy * sp
    v = dy * cp - dx * sp
    uu, vv = u * u, v * v
    q_endo = uu / np.float32(a * a) + vv / np.float32(b * b)
    q_epi = uu / np.float32((a + w) ** 2) + vv / np.float32((b + w) ** 2)

    def frac(q: np.ndarray, C: float) -> np.ndarray:
        h = C * np.sqrt(np.clip(1 - q, 0, None))
        return _overlap(zc - h, np.minimum(zc + h, zb), z0, z1)

    f_endo = frac(q_endo, c)
    f_epi = frac(q_epi, ce)
    out: dict[str, np.ndarray] = {"lv": f_endo, "myo": f_epi - f_endo}
    ft = p["fat_thickness"]
    if ft > 0:       # epicardial fat: the epicardium dilated by an angle-dependent thickness
        r2 = uu + vv + np.float32(1e-6)
        c2, s2 = (uu - vv) / r2, 2 * u * v / r2
        c3 = (u / np.sqrt(r2)) * (4 * uu / r2 - 3)
        ph1, ph2 = p["fat_phase"]
        g = np.float32(ft / (a + w)) * np.clip(0.35 + 0.45 * (s2 * math.cos(ph1) + c2 * math.sin(ph1))
                                               + 0.3 * c3 * math.cos(ph2), 0.05, None)
        out["fat"] = frac(q_epi / (1 + g) ** 2, ce) - f_epi
    # atrioventricular tissue above the base plane (valve plane, atrial wall)
    if z1 > zb:
        rb2 = 1 - ((zb - zc) / ce) ** 2
        out["av"] = (q_epi <= rb2) * float(_overlap(zb, zb + 25.0, z0, z1))
    # RV at the slice centre (no through-plane partial volume: it only shapes the surroundings)
    l_rv = p["rv_len_frac"] * zb
    rho2 = 1 - ((z - zb) / l_rv) ** 2 if zb - l_rv < z <= zb else 0.0
    if rho2 > 0:
        rho = math.sqrt(rho2)
        t = p["rv_angle"]
        rho_epi = math.sqrt(max(1 - ((z - zc) / ce) ** 2, 0.0))
        r_epi = float(_polar_radius(a + w, b + w, np.array(t - p["phi"]))) * rho_epi
        ra, rb = st["rv_ra"] * rho, st["rv_rb"] * rho
        d = r_epi + 0.55 * ra
        ct, stt = np.float32(math.cos(t)), np.float32(math.sin(t))
        ddx, ddy = dx - np.float32(d * math.cos(t)), dy - np.float32(d * math.sin(t))
        u2, v2 = ddx * ct + ddy * stt, ddy * ct - ddx * stt
        uu2, vv2 = u2 * u2, v2 * v2
        rv_in = uu2 / np.float32(ra * ra) + vv2 / np.float32(rb * rb) <= 1
        rw = p["rv_wall"]
        rvo_in = uu2 / np.float32((ra + rw) ** 2) + vv2 / np.float32((rb + rw) ** 2) <= 1
        free = np.clip(1 - f_epi - out.get("av", 0.0), 0, None)
        out["rv"] = rv_in * free
        out["rvw"] = (rvo_in & ~rv_in) * free
        if "fat" in out:
            out["fat"] = out["fat"] * ~rvo_in
    h, wd = len(ys) // ss, len(xs) // ss
    return {k: np.asarray(v, np.float32).reshape(h, ss, wd, ss).mean(axis=(1, 3)) for k, v in out.items()}


def _background(p: dict[str, Any], z: float, x: np.ndarray, y: np.ndarray, zb_ed: float) -> np.ndarray:
    """Static surroundings of one slice (relative intensity, pixel grid)."""
    X, Y = np.meshgrid(x, y)
    ax, ay, ang, oy = p["body"]
    ca, sa = math.cos(ang), math.sin(ang)
    bx, by = X * ca + (Y - oy) * sa, -X * sa + (Y - oy) * ca
    q_body = (bx / ax) ** 2 + (by / ay) ** 2
    img = np.full(X.shape, p["i_tissue"])
    img[q_body > 1] = 0.0
    img[(q_body <= 1) & (q_body > (1 - 14 / ay) ** 2)] = p["i_fat"]        # subcutaneous fat
    gap, lrx, lry = p["lungs"]
    cx, cy = p["center"]
    r_lv = p["a_ed"] + p["w_ed"] + p["fat_thickness"]
    rv_reach = r_lv + 1.55 * p["rv_ra"] + p["rv_wall"]
    for lung_x in (cx + r_lv + gap + lrx, cx - rv_reach - gap - lrx):   # lateral to the LV, beyond the RV
        q = ((X - lung_x) / lrx) ** 2 + ((Y - cy) / lry) ** 2
        img[q <= 1] = p["i_lung"]
    if z < p["liver_height"]:                                                # liver below the apex
        q = ((X - cx - 40) / 90) ** 2 + ((Y - cy - 10) / 70) ** 2
        img[q <= 1] = p["i_liver"]
    dist, rad, ang_a = p["aorta"]
    r_lv = p["a_ed"] + p["w_ed"] + 10
    axx, ayy = cx + (r_lv + dist) * math.cos(ang_a + math.pi / 2), cy + (r_lv + dist) * math.sin(ang_a + math.pi / 2)
    img[(X - axx) ** 2 + (Y - ayy) ** 2 <= rad**2] = p["i_blood"] * 0.9
    tex = np.ones_like(X)
    for kx, ky, ph, amp in p["texture"]:
        tex += 0.02 * amp * np.cos(0.03 * (kx * X + ky * Y) + ph)
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, 0.6) * tex


def _coil_shading(p: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    X, Y = np.meshgrid(x, y)
    s = np.full(X.shape, 0.35)
    for px, py in p["coils"]:
        s += np.exp(-((X - px) ** 2 + (Y - py) ** 2) / (2 * p["coil_sigma"] ** 2))
    cx, cy = p["center"]
    at_heart = 0.35 + sum(math.exp(-((cx - px) ** 2 + (cy - py) ** 2) / (2 * p["coil_sigma"] ** 2))
                          for px, py in p["coils"])
    return s / at_heart


def mid_ventricular_slices(areas_ed: Sequence[float] | np.ndarray) -> list[int]:
    """Mid-ventricular slices: of the slices with ED cavity area >= 10 % of the largest, drop n // 3 per end.

    The one rule shared by the phantom truth and the measurement code (``cds.models.tasks.cmr_function``).

    >>> mid_ventricular_slices([0, 5, 80, 100, 95, 70, 30, 9, 0])
    [3, 4, 5]
    """
    areas_ed = np.asarray(areas_ed, dtype=float)
    if areas_ed.size == 0 or not np.isfinite(areas_ed).all() or areas_ed.max() <= 0:
        return []
    idx = np.flatnonzero(areas_ed >= 0.1 * areas_ed.max())
    lo, hi = int(idx.min()), int(idx.max())
    k = (hi - lo + 1) // 3
    return list(range(lo + k, hi - k + 1))


def _contour_truth(p: dict[str, Any], st: dict[str, float], z: float, n_sub: int = 24,
                   n_ang: int = 720) -> tuple[float, float]:
    """(mid-wall circumference, mean wall thickness) in mm of one slice, averaged over its slab."""
    ang = np.linspace(0, 2 * np.pi, n_ang, endpoint=False)
    circ, thick = [], []
    for zj in _sub_planes(z, p, n_sub):
        if zj > st["zb"]:
            continue
        re2 = 1 - ((zj - st["zc"]) / st["c"]) ** 2
        rp2 = 1 - ((zj - st["zc"]) / (st["c"] + st["w_ap"])) ** 2
        if re2 <= 0 or rp2 <= 0:
            continue
        r_endo = _polar_radius(st["a"], st["b"], ang) * math.sqrt(re2)
        r_epi = _polar_radius(st["a"] + st["w"], st["b"] + st["w"], ang) * math.sqrt(rp2)
        rm = 0.5 * (r_endo + r_epi)
        drm = (np.roll(rm, -1) - np.roll(rm, 1)) / (2 * (2 * np.pi / n_ang))
        circ.append(float(np.sum(np.sqrt(rm**2 + drm**2)) * 2 * np.pi / n_ang))
        thick.append(float(np.mean(r_epi - r_endo)))
    if not circ:
        return float("nan"), float("nan")
    return float(np.mean(circ)), float(np.mean(thick))


def make_cine(
    seed: int,
    *,
    n_frames: int | None = None,
    rows: int | None = None,
    cols: int | None = None,
    supersample: int = 4,
    frames: Sequence[int] | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one phantom cine; returns ``(cine, truth)``.

    Parameters
    ----------
    seed
        Selects every random choice (see :func:`sample_params`); the same seed gives the same cine.
    n_frames, rows, cols
        Override the sampled number of frames / image size.
    supersample
        In-plane sub-pixels per pixel side for partial volume (the high-resolution render).
    frames
        Render only these frame indices (training uses a few per case); truth scalars always
        describe the whole cycle.
    **overrides
        Any other :func:`sample_params` key.

    Returns
    -------
    cine
        float32 ``(frames, slices, rows, cols)``, integer-valued MR-like intensities.
    truth
        Ground truth (see module docstring) plus ``geometry`` (``pixel_spacing_mm`` [row, col],
        ``slice_thickness_mm``, ``slice_gap_mm``, ``slice_positions_mm``, ``frame_times_ms``) and
        ``params``.
    """
    if int(supersample) < 1:
        raise ParameterError("supersample", f"must be >= 1, got {supersample!r}")
    supersample = int(supersample)
    for k, v in (("n_frames", n_frames), ("rows", rows), ("cols", cols)):
        if v is not None:
            overrides[k] = int(v)
    p = sample_params(seed, **overrides)
    nf, H, W, ds = p["n_frames"], p["rows"], p["cols"], p["pixel_spacing"]
    t = (np.arange(nf) / nf + float(p["cycle_start"])) % 1.0   # cycle phase of each frame
    s_t = activation(t, p["t_es"])
    states = [_lv_state(p, float(s)) for s in s_t]
    ed = _lv_state(p, 0.0)
    zs = _slice_positions(p, ed)
    ns = len(zs)
    sp = p["slice_thickness"] + p["slice_gap"]
    frame_idx = list(range(nf)) if frames is None else [int(f) for f in frames]
    if any(not 0 <= f < nf for f in frame_idx):
        raise ParameterError("frames", f"indices must lie in [0, {nf - 1}]")

    x = (np.arange(W) - (W - 1) / 2) * ds
    y = (np.arange(H) - (H - 1) / 2) * ds
    # the high-resolution box around the heart (fixed for the whole cine): LV disc + RV ellipse
    cx0, cy0 = p["center"]
    slack = abs(p["motion"][0]) + abs(p["motion"][1]) + 3.0 + 2 * ds
    r_lv = p["a_ed"] + p["w_ed"] + 1.2 * p["fat_thickness"] + slack
    t_rv = p["rv_angle"]
    d_rv = p["a_ed"] + p["w_ed"] + 0.55 * p["rv_ra"]
    ea, eb = p["rv_ra"] + p["rv_wall"], p["rv_rb"] + p["rv_wall"]
    hx = math.hypot(ea * math.cos(t_rv), eb * math.sin(t_rv)) + slack
    hy = math.hypot(ea * math.sin(t_rv), eb * math.cos(t_rv)) + slack
    rx, ry = cx0 + d_rv * math.cos(t_rv), cy0 + d_rv * math.sin(t_rv)
    xlo, xhi = min(cx0 - r_lv, rx - hx), max(cx0 + r_lv, rx + hx)
    ylo, yhi = min(cy0 - r_lv, ry - hy), max(cy0 + r_lv, ry + hy)
    c0, c1 = max(int(np.searchsorted(x, xlo)) - 1, 0), min(int(np.searchsorted(x, xhi)) + 1, W)
    r0, r1 = max(int(np.searchsorted(y, ylo)) - 1, 0), min(int(np.searchsorted(y, yhi)) + 1, H)
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    xs = (x[c0:c1, None] + off[None, :] * ds).ravel().astype(np.float32)
    ys = (y[r0:r1, None] + off[None, :] * ds).ravel().astype(np.float32)

    bgs = [_background(p, float(z), x, y, ed["zb"]) for z in zs]
    shade = _coil_shading(p, x, y)
    mis = np.asarray(p["misregistration"])[:ns]
    intens = {"lv": p["i_blood"], "myo": p["i_myo"], "rv": p["i_blood"], "rvw": p["i_myo"], "fat": p["i_fat"],
              "av": p["i_av"]}
    clean = np.empty((len(frame_idx), ns, H, W), np.float32)
    fr = {k: np.zeros((len(frame_idx), ns, H, W), np.float32) for k in ("lv", "myo", "rv")}
    for fi, f in enumerate(frame_idx):
        st = states[f]
        mx = p["motion"][0] * math.sin(2 * math.pi * t[f])
        my = p["motion"][1] * math.sin(2 * math.pi * t[f])
        for si, z in enumerate(zs):
            fracs = _heart_fractions(p, st, float(z), cx0 + mx + mis[si, 0], cy0 + my + mis[si, 1],
                                     xs, ys, supersample)
            img = bgs[si].copy()
            box = img[r0:r1, c0:c1]
            heart = sum(fracs.values())
            box *= 1 - heart
            for k, v in fracs.items():
                box += v * intens[k]
            clean[fi, si] = img * shade
            for k in fr:
                if k in fracs:
                    fr[k][fi, si, r0:r1, c0:c1] = fracs[k]
    noise_rng = np.random.default_rng([int(seed), 7, *frame_idx[:3]])
    sigma = p["noise_level"]
    n1 = noise_rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    n2 = noise_rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    cine = np.sqrt((clean + n1) ** 2 + n2**2) * INTENSITY_SCALE
    cine = np.round(cine).astype(np.float32)

    # ground truth
    vols = np.array([s_["lv_vol"] for s_ in states]) / 1000.0
    ed_f, es_f = int(np.argmax(vols)), int(np.argmin(vols))
    edv, esv = float(vols[ed_f]), float(vols[es_f])
    thr_ed = [_slab_area(p, states[ed_f], float(z)) for z in zs]
    mid = mid_ventricular_slices(thr_ed)
    c_ed, t_ed, c_es, t_es = [], [], [], []
    for i in mid:
        ce, te = _contour_truth(p, states[ed_f], float(zs[i]))
        cs, ts = _contour_truth(p, states[es_f], float(zs[i]))
        if np.isfinite([ce, te, cs, ts]).all():
            c_ed.append(ce)
            t_ed.append(te)
            c_es.append(cs)
            t_es.append(ts)
    gcs = 100.0 * (sum(c_es) - sum(c_ed)) / sum(c_ed)
    grs = 100.0 * (sum(t_es) - sum(t_ed)) / sum(t_ed)
    px_ml = ds * ds * sp / 1000.0
    disc = {f: float(fr["lv"][fi].sum() * px_ml) for fi, f in enumerate(frame_idx)}
    geometry = {
        "pixel_spacing_mm": [ds, ds],
        "slice_thickness_mm": p["slice_thickness"],
        "slice_gap_mm": p["slice_gap"],
        "slice_positions_mm": [round(float(z), 4) for z in zs],
        "frame_times_ms": [round(float(f * p["rr_ms"] / nf), 3) for f in frame_idx],
        "frames": frame_idx,
    }
    truth = {
        "edv_ml": edv, "esv_ml": esv, "sv_ml": edv - esv, "ef_pct": 100.0 * (edv - esv) / edv,
        "gcs_pct": float(gcs), "grs_pct": float(grs), "ed_frame": ed_f, "es_frame": es_f,
        "lv_mass_g": 1.05 * states[ed_f]["myo_vol"] / 1000.0,
        "lv_volumes_ml": vols.round(6).tolist(),
        "edv_disc_ml": disc.get(ed_f), "esv_disc_ml": disc.get(es_f),
        "mid_slices": mid,
        "mid_wall_circumference_mm": {"ed": c_ed, "es": c_es},
        "wall_thickness_mm": {"ed": t_ed, "es": t_es},
        "wall_thickness_ed_mm": float(ed["w"]), "wall_thickness_es_mm": float(states[es_f]["w"]),
        "geometry": geometry,
        "params": p,
        "lv_frac": fr["lv"], "myo_frac": fr["myo"], "rv_frac": fr["rv"],
    }
    return cine, truth


def _slab_area(p: dict[str, Any], st: dict[str, float], z: float) -> float:
    """Exact slab-averaged LV cavity area (mm^2) of the slice centred at ``z`` (closed form)."""
    th = p["slice_thickness"]
    lo, hi = max(z - th / 2, st["zc"] - st["c"]), min(z + th / 2, st["zb"])
    if hi <= lo:
        return 0.0

    def prim(zz: float) -> float:
        return zz - (zz - st["zc"]) ** 3 / (3 * st["c"] ** 2)

    return float(math.pi * st["a"] * st["b"] * (prim(hi) - prim(lo)) / th)


# ------------------------------------------------------------------------------------------ files
_SCALARS = ("edv_ml", "esv_ml", "sv_ml", "ef_pct", "gcs_pct", "grs_pct", "ed_frame", "es_frame", "lv_mass_g",
            "edv_disc_ml", "esv_disc_ml")


def save_cine_npz(path: str | Path, cine: np.ndarray, geometry: dict[str, Any],
                  truth: dict[str, Any] | None = None) -> Path:
    """Write one case as a compressed ``.npz`` (cine as uint16, fraction maps as uint8, JSON metadata).

    >>> import tempfile
    >>> cine, truth = make_cine(5, n_frames=6, rows=48, cols=48, supersample=2)
    >>> f = save_cine_npz(tempfile.mkdtemp() + "/case.npz", cine, truth["geometry"], truth)
    >>> c2, g2, t2 = load_cine_npz(f)
    >>> bool(np.array_equal(c2, cine)), g2 == truth["geometry"], t2["ef_pct"] == truth["ef_pct"]
    (True, True, True)
    """
    p = Path(path)
    cine = np.asarray(cine)
    if cine.ndim != 4:
        raise ParameterError("cine", f"expected (frames, slices, rows, cols), got shape {cine.shape}")
    arrays: dict[str, np.ndarray] = {"cine": np.clip(np.round(cine), 0, 65535).astype(np.uint16)}
    meta_truth: dict[str, Any] = {}
    if truth is not None:
        meta_truth = {k: v for k, v in truth.items() if not isinstance(v, np.ndarray) and k != "geometry"}
        for k in ("lv_frac", "myo_frac", "rv_frac"):
            if k in truth:
                arrays[k] = np.round(np.clip(truth[k], 0, 1) * _FRAC_SCALE).astype(np.uint8)
    arrays["geometry_json"] = np.array(json.dumps(geometry))
    arrays["truth_json"] = np.array(json.dumps(meta_truth))
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(p, **arrays)
    return p


def load_cine_npz(path: str | Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Read a case written by :func:`save_cine_npz`: ``(cine float32, geometry, truth)``.

    ``truth`` is empty for a file without ground truth; its fraction maps come back as float32.
    Errors name the file (:class:`cds.errors.ImageReadError`).
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(str(p), "file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "cine" not in z.files or "geometry_json" not in z.files:
                raise ImageReadError(str(p), f"not a cds cine file (arrays {', '.join(z.files)}; need 'cine' "
                                             "and 'geometry_json', see cds.models.tasks.phantom.save_cine_npz)")
            cine = z["cine"].astype(np.float32)
            geometry = json.loads(str(z["geometry_json"]))
            truth = json.loads(str(z["truth_json"])) if "truth_json" in z.files else {}
            for k in ("lv_frac", "myo_frac", "rv_frac"):
                if k in z.files:
                    truth[k] = z[k].astype(np.float32) / _FRAC_SCALE
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/json/format problems all mean an unreadable case
        raise ImageReadError(str(p), f"cannot read as a cine .npz: {exc}") from None
    return cine, geometry, truth


def list_cases(data_dir: str | Path) -> list[Path]:
    """The ``*.npz`` cases of a folder, sorted; :class:`cds.errors.ParameterError` if there are none."""
    d = Path(data_dir)
    if not d.is_dir():
        raise ParameterError("data_dir", f"{d}: not a folder (expected a folder of .npz cine cases)")
    files = sorted(d.glob("*.npz"))
    if not files:
        raise ParameterError("data_dir", f"{d}: no *.npz cases (make some with cds.models.tasks.phantom.generate_dataset "
                                         f"or `python -m cds.models.tasks.phantom --out {d} --n 30 --seed 900000`)")
    return files


def generate_dataset(out_dir: str | Path, n: int, seed: int, **kwargs: Any) -> Path:
    """Write ``n`` phantom cases ``case_<seed>.npz`` (seeds ``seed .. seed + n - 1``) and ``dataset.json``.

    ``kwargs`` go to :func:`make_cine` (e.g. ``supersample``). Existing case files are overwritten.
    """
    from tqdm.auto import tqdm

    if int(n) < 1:
        raise ParameterError("n", f"need at least one case, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(int(seed), int(seed) + int(n)))
    for s in tqdm(seeds, desc="phantoms", leave=False, disable=None):
        cine, truth = make_cine(s, **kwargs)
        save_cine_npz(out / f"case_{s:07d}.npz", cine, truth["geometry"], truth)
    manifest = {"generator": "cds.models.tasks.phantom.generate_dataset", "phantom_version": PHANTOM_VERSION,
                "seed": int(seed), "n": int(n), "seeds": seeds,
                "options": {k: v for k, v in kwargs.items() if isinstance(v, int | float | str | bool)},
                "command": f"python -m cds.models.tasks.phantom --out {out} --n {int(n)} --seed {int(seed)}"}
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.models.tasks.phantom --out DIR --n 30 --seed 900000``: write a folder of phantom cases."""
    ap = argparse.ArgumentParser(prog="python -m cds.models.tasks.phantom", description=main.__doc__)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--n", type=int, default=30, help="number of cases (default 30)")
    ap.add_argument("--seed", type=int, default=900000, help="first seed (default 900000, the evaluation range)")
    args = ap.parse_args(argv)
    out = generate_dataset(args.out, args.n, args.seed)
    print(f"wrote {args.n} cases to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
