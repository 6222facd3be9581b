"""Benchmark: each reference model's per-study inference time on this CPU, and its ratio to the
bare network forward pass on the same input size (how much the pipeline adds: reading the image,
preprocessing, features, GradCAM, Findings).

Both are measured in the same run, after one warm-up call, as the median of ``--repeat`` runs with
``torch.set_num_threads(2)``.

    .venv/bin/python bench/bench_models.py [--repeat 5] [--models pneumonia cxr-icu ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDS_SHARED_DATA", REPO.parent / "shared" / "data"))


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bare_input(bundle: Any, net: Any) -> tuple[Any, ...]:
    """A random input of the network's own input size (from its network_def / card)."""
    import torch

    nd = bundle.inference["network_def"]
    target = nd.get("_target_", "")
    if target.endswith("tabular_cnn2d"):
        s = bundle.card["inputs"]["image"]["spatial_shape"]
        x = torch.rand(1, nd.get("in_channels", 1), *s)
        return (x, torch.rand(1, nd["n_tabular"])) if nd.get("n_tabular") else (x,)
    if target.endswith("Linear"):
        return (torch.rand(1, nd["in_features"]),)
    if target.endswith("FullyConnectedNet"):
        return (torch.rand(1, nd["in_channels"]),)
    if target.endswith("UNet"):  # cmr-function: one pass over every frame x slice of a phantom cine
        from cds.models.tasks.phantom import make_cine

        cine, _ = make_cine(seed=12345)
        f, s, h, w = cine.shape
        pad = int(bundle.inference.get("pad_multiple", 16))
        return (torch.rand(f * s, nd["in_channels"], -(-h // pad) * pad, -(-w // pad) * pad),)
    shape = bundle.card.get("inputs", {}).get("image", {}).get("network_input_shape")
    if shape:
        return (torch.rand(*shape),)
    raise SystemExit(f"{bundle.model_id}: cannot tell the network's input size from network_def {target}")


def pipeline_cases() -> dict[str, Callable[[Any, Any], Callable[[], Any]]]:
    """model id -> (registry, bundle) -> a callable running one study end to end."""
    import cds
    from cds.images.read import read_image
    from cds.models.registry import ehr_inputs_for

    cohort = cds.load_cohort(REPO / "fhir_samples", validate=False, reference_date="2026-01-01")
    cxr = cohort.imaging.dropna(subset=["pixel_location"]).iloc[0]

    def cxr_case(reg: Any, b: Any) -> Callable[[], Any]:
        def run() -> Any:
            image = read_image(cxr["pixel_location"])
            if b.model_id == "cxr-cardiomegaly":  # the sample's Hannover patients have no age: supply one
                ehr = {"age": 61.0, "sex": "male"}
            else:
                ehr = ehr_inputs_for(b.model_card, cohort, cxr["patient_id"], cxr["started"])
            return reg.run_image(b.model_id, image, ehr)
        return run

    def ct_case(reg: Any, b: Any) -> Callable[[], Any]:
        series = next((SHARED / "lung-pet-ct-dx").glob("*/*/"))

        def run() -> Any:
            return reg.run_image(b.model_id, read_image(series))
        return run

    def mammo_case(reg: Any, b: Any) -> Callable[[], Any]:
        png = sorted((SHARED / "mini-mias" / "png").glob("*.png"))[0]

        def run() -> Any:
            return reg.run_image(b.model_id, read_image(png))
        return run

    def cmr_case(reg: Any, b: Any) -> Callable[[], Any]:
        import numpy as np

        from cds.images.image import Image
        from cds.models.tasks.phantom import make_cine

        cine, truth = make_cine(seed=12345)
        g = truth["geometry"]
        image = Image(cine, (1.0, g["slice_thickness_mm"] + g["slice_gap_mm"], *g["pixel_spacing_mm"]), (0.0, 0.0, 0.0),
                      np.eye(3), "MR", {"slice_thickness_mm": g["slice_thickness_mm"]}, "phantom")

        def run() -> Any:
            return reg.run_image(b.model_id, image)
        return run

    return {"pneumonia": cxr_case, "cxr-cardiomegaly": cxr_case, "cxr-icu": cxr_case,
            "ct-lung-nodule": ct_case, "mammo-density": mammo_case, "mammo-abnormality": mammo_case,
            "cmr-function": cmr_case}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", nargs="*", help="model ids (default: all built-in)")
    args = ap.parse_args()
    import torch

    from cds.models.registry import ModelRegistry

    torch.set_num_threads(2)
    reg = ModelRegistry(user_dirs=[])
    cases = pipeline_cases()
    rows = []
    for mid in args.models or reg.ids():
        if mid not in cases:
            continue
        b = reg.get(mid)
        net = b.network()
        x = bare_input(b, net)
        with torch.inference_mode():
            bare = median_time(lambda net=net, x=x: net(*x), args.repeat)
        try:
            full = median_time(cases[mid](reg, b), args.repeat)
        except (StopIteration, FileNotFoundError, IndexError) as exc:
            print(f"{mid}: skipped ({exc or 'input data missing'})")
            continue
        rows.append({"model": mid, "pipeline_s": full, "bare_forward_s": bare, "ratio": full / bare})
    print(f"{'model':<20}{'pipeline s':>12}{'forward s':>12}{'ratio':>10}")
    for r in rows:
        print(f"{r['model']:<20}{r['pipeline_s']:>12.4f}{r['bare_forward_s']:>12.2e}{r['ratio']:>10.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
