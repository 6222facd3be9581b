"""An independent cine phantom generator for checking cmr-function (built without cds.models.tasks.phantom).

Differences from :mod:`cds.models.tasks.phantom` on purpose: a paraboloid LV (not an ellipsoid) with
elliptic and triangular in-plane shape harmonics, in-plane ring-area-preserving wall thickening, a
different contraction curve, a cine that starts at a random phase of the cycle, a 144 x 144 grid,
Gaussian (not Rician) noise on a smooth random background with a linear bias field, an RV crescent
and 6-10 mm slices. Truth EF / volumes / LV mass are Simpson's discs of the rendered partial-volume
maps (what a perfect segmentation gives); GCS / GRS come from the continuous contours, averaged over
each slab, on the mid-ventricular slices chosen by the same rule as the model (ED areas >= 10 % of the
largest, drop n // 3 per end).

>>> cine, truth = make(1, n_frames=6, size=64)
>>> cine.shape[0], cine.shape[2:], truth["ef_pct"] > 10
(6, (64, 64), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _params(seed: int) -> dict[str, Any]:
    r = np.random.default_rng([seed, 4242])
    return {
        "n_frames": int(r.integers(16, 31)), "px": float(r.uniform(1.3, 1.8)),
        "thick": float(r.uniform(6.0, 10.0)), "gap": float(r.choice([0.0, r.uniform(0.0, 2.0)])),
        "R": float(r.uniform(24.0, 33.0)), "L": float(r.uniform(70.0, 100.0)), "w": float(r.uniform(6.0, 12.0)),
        "e2": float(r.uniform(0.0, 0.12)), "e3": float(r.uniform(0.0, 0.05)), "phi": float(r.uniform(0, np.pi)),
        "k_es": float(r.uniform(0.55, 0.9)), "long_short": float(r.uniform(0.03, 0.15)),
        "t_es": float(r.uniform(0.28, 0.45)), "start": float(r.uniform(0.0, 1.0)),
        "noise": float(r.uniform(0.03, 0.10)), "center": [float(r.uniform(-15, 15)), float(r.uniform(-15, 15))],
        "i_myo": float(r.uniform(0.15, 0.3)), "bias": [float(r.uniform(-0.3, 0.3)), float(r.uniform(-0.3, 0.3))],
        "blobs": r.uniform(0, 1, size=(12, 4)).tolist(), "rv": float(r.uniform(0.8, 1.3)),
        "base_extra": float(r.uniform(-0.3, 0.6)), "apex_extra": float(r.uniform(0.0, 1.0)),
    }


def _contraction(t: np.ndarray, t_es: float) -> np.ndarray:
    """0 at ED, 1 at ES: sin^2 rise over systole, cos^2 fall over the first 60 % of diastole."""
    t = np.asarray(t) % 1.0
    up = np.sin(0.5 * np.pi * np.clip(t / t_es, 0, 1)) ** 2
    down = np.cos(0.5 * np.pi * np.clip((t - t_es) / (0.6 * (1 - t_es)), 0, 1)) ** 2
    return np.where(t <= t_es, up, down)


def _radii(p: dict[str, Any], a: float, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean endo / epi radii (mm) at heights z (apex 0) for contraction a; 0 where absent."""
    R = p["R"] * (1 - a * (1 - p["k_es"]))
    L = p["L"] * (1 - a * p["long_short"])
    z = np.asarray(z, float)
    endo = np.where((z > 0) & (z <= L), R * np.sqrt(np.clip(z / L, 0, 1)), 0.0)
    ring_ed = (p["R"] + p["w"]) ** 2 - p["R"] ** 2                  # ring area / pi at the base, kept over time
    g = np.sqrt(np.clip(z / L, 0, 1))
    epi_sq = endo**2 + ring_ed * np.maximum(g, 0.35)
    cap = (z <= 0) & (z > -p["w"])
    epi = np.where((z > 0) & (z <= L), np.sqrt(epi_sq), 0.0)
    epi = np.where(cap, math.sqrt(ring_ed * 0.35) * np.sqrt(np.clip(1 - (z / p["w"]) ** 2, 0, 1)), epi)
    return endo, epi


def _shape(p: dict[str, Any], th: np.ndarray) -> np.ndarray:
    return 1 + p["e2"] * np.cos(2 * (th - p["phi"])) + p["e3"] * np.cos(3 * th)


def make(seed: int, n_frames: int | None = None, size: int = 144, ss: int = 3, n_sub: int = 6
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """``(cine (frames, slices, size, size) float32, truth)`` of one independent phantom."""
    p = _params(seed)
    nf = n_frames or p["n_frames"]
    px, sp = p["px"], p["thick"] + p["gap"]
    L = p["L"]
    z_top = L + p["base_extra"] * sp
    z_bot = -p["w"] - p["apex_extra"] * sp
    zs = np.arange(z_top, z_bot, -sp)
    phase = (np.arange(nf) / nf + p["start"]) % 1.0
    act = _contraction(phase, p["t_es"])
    c = (np.arange(size) - (size - 1) / 2) * px
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * px
    fine = (c[:, None] + off[None, :]).ravel()
    X, Y = np.meshgrid(fine - p["center"][0], fine - p["center"][1])
    rad, th = np.hypot(X, Y), np.arctan2(Y, X)
    shp = _shape(p, th)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    bg = 0.5 + 0.1 * (p["bias"][0] * xx + p["bias"][1] * yy) / (size * px)
    for bx, by, bs, bi in p["blobs"]:
        bg += (bi - 0.5) * 0.3 * np.exp(-((xx - (bx - 0.5) * size * px) ** 2 + (yy - (by - 0.5) * size * px) ** 2)
                                        / (2 * (10 + 30 * bs) ** 2))
    bias = 1 + p["bias"][0] * xx / (size * px) + p["bias"][1] * yy / (size * px)
    rng = np.random.default_rng([seed, 99])
    cine = np.zeros((nf, len(zs), size, size), np.float32)
    lv = np.zeros_like(cine)
    myo = np.zeros_like(cine)
    for f in range(nf):
        for s, z in enumerate(zs):
            sub = z - p["thick"] / 2 + p["thick"] * (np.arange(n_sub) + 0.5) / n_sub
            fl = np.zeros_like(rad)
            fm = np.zeros_like(rad)
            for zz in sub:
                e, o = _radii(p, float(act[f]), np.array([zz]))
                fl += rad <= e[0] * shp
                fm += (rad > e[0] * shp) & (rad <= o[0] * shp)
            fl = (fl / n_sub).reshape(size, ss, size, ss).mean(axis=(1, 3))
            fm = (fm / n_sub).reshape(size, ss, size, ss).mean(axis=(1, 3))
            # RV crescent: a disc beside the LV (blood), outside the LV epicardium
            e_mid, o_mid = _radii(p, float(act[f]), np.array([min(max(z, 1.0), L)]))
            rv_c = (p["center"][0] - (o_mid[0] + 10) * 0.9, p["center"][1] + 4)
            rv = ((np.hypot(xx - rv_c[0], yy - rv_c[1]) <= 14 * p["rv"] * (1 - 0.3 * act[f]))
                  & (z > 0.2 * L) & (fl + fm < 0.01)).astype(float)
            img = bg * (1 - fl - fm - rv) + 1.0 * fl + p["i_myo"] * fm + 0.95 * rv
            cine[f, s] = img * bias
            lv[f, s], myo[f, s] = fl, fm
    cine = (cine + rng.normal(0, p["noise"], cine.shape)).clip(0, None) * 800
    vol = lv.sum(axis=(2, 3)) * px * px * sp / 1000.0
    vols = vol.sum(axis=1)
    ed, es = int(np.argmax(vols)), int(np.argmin(vols))
    areas_ed = lv[ed].sum(axis=(1, 2))
    idx = np.flatnonzero(areas_ed >= 0.1 * areas_ed.max())
    k = (idx.max() - idx.min() + 1) // 3
    mid = list(range(int(idx.min()) + k, int(idx.max()) - k + 1))
    ang = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    sh = _shape(p, ang)

    def contour(f: int, z: float) -> tuple[float, float]:
        cs, ts = [], []
        for zz in z - p["thick"] / 2 + p["thick"] * (np.arange(24) + 0.5) / 24:
            e, o = _radii(p, float(act[f]), np.array([zz]))
            if e[0] <= 0:
                continue
            rm = 0.5 * (e[0] + o[0]) * sh
            drm = (np.roll(rm, -1) - np.roll(rm, 1)) / (2 * (ang[1] - ang[0]))
            cs.append(float(np.sum(np.hypot(rm, drm)) * (ang[1] - ang[0])))
            ts.append(float(np.mean((o[0] - e[0]) * sh)))
        return float(np.mean(cs)), float(np.mean(ts))

    ced = [contour(ed, float(zs[s])) for s in mid]
    ces = [contour(es, float(zs[s])) for s in mid]
    gcs = 100 * (sum(c[0] for c in ces) - sum(c[0] for c in ced)) / sum(c[0] for c in ced)
    grs = 100 * (sum(c[1] for c in ces) - sum(c[1] for c in ced)) / sum(c[1] for c in ced)
    truth = {"edv_ml": float(vols[ed]), "esv_ml": float(vols[es]), "ef_pct": float(100 * (vols[ed] - vols[es]) / vols[ed]),
             "lv_mass_g": float(1.05 * myo[ed].sum() * px * px * sp / 1000.0), "gcs_pct": float(gcs),
             "grs_pct": float(grs), "ed_frame": ed, "es_frame": es, "mid_slices": mid, "params": p,
             "lv_volumes_ml": [float(v) for v in vols],
             "geometry": {"pixel_spacing_mm": [px, px], "slice_thickness_mm": p["thick"], "slice_gap_mm": p["gap"]}}
    return cine.astype(np.float32), truth
