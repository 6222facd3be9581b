"""cmr-function on phantoms written independently of cds.models.tasks.phantom (tests/indep_phantom.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cds.models.tasks import cmr_function as cmr
from tests.indep_phantom import make

INDEP_SEEDS = (11, 12, 13, 14, 15, 16)


def independent_errors(bundle, seeds=INDEP_SEEDS) -> dict[str, list[float]]:
    """Per seed: model minus independent-phantom truth for EF, GCS, GRS (points) and EDV (mL)."""
    out: dict[str, list[float]] = {"ef_pct": [], "gcs_pct": [], "grs_pct": [], "edv_ml": [], "ed_vol_frac": []}
    for s in seeds:
        cine, t = make(s)
        p = cmr.predict(bundle, cine, t["geometry"])
        for k in ("ef_pct", "gcs_pct", "grs_pct", "edv_ml"):
            out[k].append(float(p[k]) - t[k] if p[k] is not None else float("nan"))
        # the diastasis is a plateau, so the ED frame itself is ambiguous: score the true volume of the chosen frame
        out["ed_vol_frac"].append(t["lv_volumes_ml"][p["ed_frame"]] / t["edv_ml"])
    return out


def test_independent_generator_is_deterministic_and_sane() -> None:
    a, ta = make(3, n_frames=8, size=64, ss=2, n_sub=3)
    b, tb = make(3, n_frames=8, size=64, ss=2, n_sub=3)
    assert np.array_equal(a, b) and ta["ef_pct"] == tb["ef_pct"]
    assert ta["gcs_pct"] < 0 < ta["grs_pct"] and 10 < ta["ef_pct"] < 80
    assert 6.0 <= ta["geometry"]["slice_thickness_mm"] <= 10.0
    # the cine starts at a random phase, so ED is not always frame 0
    assert {make(s, n_frames=8, size=48, ss=1, n_sub=2)[1]["ed_frame"] for s in range(6)} != {0}


@pytest.mark.slow
def test_shipped_model_on_independent_phantoms() -> None:
    """Independent phantoms (other shapes, Gaussian noise, 144 x 144, 6-10 mm slices, random cycle start).

    Measured with the shipped 1.2.0 model (1.1.0 weights): EF MAE 1.82, GCS MAE 0.45, GRS MAE 7.3 points (GRS misses its
    1.5-point target: the model overestimates wall thickening on these phantoms). EF and GCS are held to
    their targets; GRS only to a regression bound.
    """
    from cds.models.bundle import load_bundle

    e = independent_errors(load_bundle(cmr.default_bundle_dir()))
    assert min(e["ed_vol_frac"]) >= 0.98                       # ED at the right end of the cycle
    assert np.mean(np.abs(e["ef_pct"])) <= cmr.TARGETS["ef"]
    assert np.mean(np.abs(e["gcs_pct"])) <= cmr.TARGETS["gcs"]
    assert np.mean(np.abs(e["grs_pct"])) <= 9.0
