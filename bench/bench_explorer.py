"""Benchmark: kernel-side time of the case explorer against reading the patient's tables.

Measured in one process, after a warm-up, as medians over patients / slices:

- baseline: ``cohort.patient(pid)`` (the patient's rows of every table; what any view needs);
- switch patient: ``CaseView.show(pid)`` = header, trends, timeline, image read (cache cleared),
  render, findings panel, actions; also with the image already cached;
- slice change: moving the viewer's slice slider on a 512x512 CT volume (the shared lung CT if
  present, else a synthetic volume), without and with an AI box + heatmap overlay;
- window change on a radiograph of the sample cohort.

Targets (issue): switch < 200 ms, slice change < 50 ms. Ratios are to the baseline of the same run.

    .venv/bin/python bench/bench_explorer.py [--cohort fhir_samples] [--findings-json F] [--patients 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CT_SERIES = REPO.parent / "shared" / "data" / "lung-pet-ct-dx" / "Lung_Dx-A0001" / "2.000000-5mm-40805"


def _ms(fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", default=str(REPO / "fhir_samples"))
    ap.add_argument("--findings-json", help="Findings to show (default: run the pneumonia model on the benchmarked "
                                            "patients' studies)")
    ap.add_argument("--patients", type=int, default=12, help="patients to switch between (default 12)")
    args = ap.parse_args()

    import cds
    from cds.explorer.app import load_findings
    from cds.explorer.widgets.case_view import CaseView
    from cds.explorer.widgets.viewer import ImageViewer
    from cds.images.image import Image
    from cds.images.read import read_image
    from cds.images.render import Overlay
    from cds.review.store import ReviewStore

    cohort = cds.load_cohort(args.cohort, validate=False, reference_date="2020-06-02")
    img_rows = cohort.imaging[cohort.imaging["pixel_location"].notna()]
    pids = list(dict.fromkeys(img_rows["patient_id"]))[: args.patients]
    if args.findings_json:
        findings, failures = load_findings(args.findings_json)
    else:
        import torch

        from cds.models.registry import ModelRegistry

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        result = ModelRegistry().run("pneumonia", cohort, studies=img_rows[img_rows["patient_id"].isin(pids)])
        findings, failures = result.findings, result.failures
        print(f"(pneumonia model on {len(findings)} studies of {len(pids)} patients: {time.perf_counter() - t0:.1f} s, "
              "not part of the timings)")
    with tempfile.TemporaryDirectory() as tmp:
        view = CaseView(cohort, findings, ReviewStore(Path(tmp) / "r.jsonl"), "bench", failures=failures)
        view.show(pids[0])  # warm-up: imports, codecs, first render
        cohort.patient(pids[0])

        base = statistics.median(_ms(lambda p=p: cohort.patient(p), repeat=5) for p in pids)
        cold, warm = [], []
        for p in pids:
            view._images.clear()
            cold.append(_ms(lambda p=p: view.show(p)))
            warm.append(_ms(lambda p=p: view.show(p)))
        switch_cold, switch_warm = statistics.median(cold), statistics.median(warm)

        # slice change on a 512x512 CT volume
        if CT_SERIES.is_dir():
            ct = read_image(CT_SERIES)
            ct_src = f"{CT_SERIES.name} {ct.shape}"
        else:
            rng = np.random.default_rng(0)
            ct = Image((rng.normal(-300, 400, (40, 512, 512))).astype(np.int16), (5.0, 0.8, 0.8), (0, 0, 0),
                       np.eye(3), "CT", {"patient_frame": True}, "synthetic")
            ct_src = f"synthetic {ct.shape} (shared CT absent)"
        viewer = ImageViewer()
        viewer.set_image(ct)
        n = ct.shape[0]

        def sweep() -> list[float]:
            out = []
            for i in range(1, min(n, 40)):
                t0 = time.perf_counter()
                viewer.slice.value = i
                out.append((time.perf_counter() - t0) * 1000.0)
            return out

        sweep()
        plain = statistics.median(sweep())
        yy, xx = np.mgrid[0:512, 0:512]
        heat = np.exp(-((yy - 250) ** 2 + (xx - 300) ** 2) / 8000.0).astype(np.float32)
        viewer.set_overlays([Overlay("heatmap", heat), Overlay("box", (200, 250, 300, 360), (0, n - 1))])
        overlay = statistics.median(sweep())
        render_only = viewer.last_render_ms

        cxr = read_image(img_rows.iloc[0]["pixel_location"])
        viewer.set_image(cxr)
        levels = np.linspace(viewer.level.min, viewer.level.max, 30)
        win = []
        for lv in levels:
            t0 = time.perf_counter()
            viewer.level.value = float(lv)
            win.append((time.perf_counter() - t0) * 1000.0)
        window = statistics.median(win)

    print(f"cohort: {args.cohort} ({len(cohort.patients)} patients); {len(pids)} patients switched; "
          f"{len(findings)} findings")
    print(f"{'measure':<52} {'median ms':>10} {'x baseline':>11}  target")
    rows = [
        ("baseline: cohort.patient(pid)", base, ""),
        ("switch patient (CaseView.show, image read)", switch_cold, "< 200 ms"),
        ("switch patient (image cached)", switch_warm, "< 200 ms"),
        (f"slice change, {ct_src}", plain, "< 50 ms"),
        ("slice change with heatmap + box overlay", overlay, "< 50 ms"),
        (f"window change, {cxr.modality} {cxr.shape}", window, "< 50 ms"),
    ]
    for name, ms, target in rows:
        print(f"{name:<52} {ms:>10.1f} {ms / base:>10.1f}x  {target}")
    print(f"(last overlay render alone: {render_only:.1f} ms)")
    ok = switch_cold < 200 and plain < 50 and overlay < 50
    print("targets met" if ok else "TARGETS MISSED on this machine")


if __name__ == "__main__":
    main()
