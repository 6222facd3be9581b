"""Benchmark: cohort throughput of the streaming pipeline against the decode-bound limit, the cached
re-run against the first run, the report against its models' inference time, and Dask workers.

Every ratio compares two things measured in this run, on this machine:

- **throughput / decode limit**: studies/s through ``ModelRegistry.run`` (cache off: decode workers,
  the safety checks, batched forward passes, Findings) over studies/s of a plain ``read_image`` loop
  over the same files with the same number of worker processes (target >= 50 % for the 2D models);
  the CT and CMR models: one series each (``../shared`` data, when present) the same way;
- **cached re-run / first run** of the same models on the same studies with a result cache (target <= 10 %);
- **report / model inference**: ``cds report`` wall time (cache off) over the sum of its models'
  inference time measured here (target <= 1.5x; the notebook, figures and bootstrap CIs are the rest);
- **Dask**: studies/s on a LocalCluster of 1 and 2 workers, and the efficiency per worker.

The sample cohort's Hannover patients record no birth date, so ``cxr-cardiomegaly`` (which needs the
age) would refuse them all: the benchmark gives every patient one (1961-05-01) in memory.

    .venv/bin/python bench/bench_cohort_throughput.py [--cohort DIR] [--workers 2] [--repeat 1]
        [--models cxr-icu,cxr-cardiomegaly] [--no-report] [--no-dask] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDS_SHARED_DATA", REPO.parent / "shared" / "data"))


def aged(cohort: Any) -> Any:
    import pandas as pd

    tz = cohort.patients["birth_date"].dt.tz
    born = cohort.patients.assign(birth_date=cohort.patients["birth_date"].fillna(pd.Timestamp("1961-05-01", tz=tz)))
    return dataclasses.replace(cohort, patients=born)


def _read(loc: str) -> int:
    from cds.images.read import read_image

    try:
        return int(read_image(loc).array.size)
    except Exception:  # noqa: BLE001 - a file the pipeline also fails on
        return 0


class _Files:
    def __init__(self, locs: list[str]) -> None:
        self.locs = locs

    def __len__(self) -> int:
        return len(self.locs)

    def __getitem__(self, i: int) -> int:
        return _read(self.locs[i])


def decode_rate(locs: list[str], workers: int) -> float:
    """Files/s of a plain decode of ``locs`` with ``workers`` processes (a DataLoader, as the pipeline)."""
    import torch
    from torch.utils.data import DataLoader

    from cds.inference.stream import _worker_init

    t = time.perf_counter()
    if workers == 0:
        for loc in locs:
            _read(loc)
    else:
        for _ in DataLoader(_Files(locs), batch_size=None, num_workers=workers, prefetch_factor=4,
                            worker_init_fn=_worker_init, multiprocessing_context=torch.multiprocessing.get_context("fork")):
            pass
    return len(locs) / (time.perf_counter() - t)


def pipeline_rate(reg: Any, mid: str, cohort: Any, rows: Any, workers: int, cache: Any = None) -> tuple[float, Any]:
    from cds.inference.stream import StreamStats

    st = StreamStats()
    t = time.perf_counter()
    reg.run(mid, cohort, studies=rows, workers=workers, cache=cache, stats=st)
    return len(rows) / (time.perf_counter() - t), st


def one_series(reg: Any, mid: str, loc: Path, repeat: int) -> tuple[float, float]:
    """(seconds to decode, seconds through the model) of one CT / CMR series (a cine folder is read
    as ``cds run cmr-function`` reads it)."""
    from cds.images.read import read_image

    if mid == "cmr-function":
        from cds.models.cine import read_cine as read_image  # noqa: F811 - one frame per file per slice

    t = time.perf_counter()
    for _ in range(repeat):
        read_image(loc)
    dec = (time.perf_counter() - t) / repeat
    t = time.perf_counter()
    for _ in range(repeat):
        reg.run_image(mid, read_image(loc), {})
    return dec, (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", default=str(REPO / "fhir_samples"))
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decode worker processes")
    ap.add_argument("--models", default="cxr-icu,cxr-cardiomegaly")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--memory", action="store_true", help="also: peak RSS of a run on the 1x and 10x scaled cohort")
    ap.add_argument("--device", default=None, help="torch device for the networks (cpu, cuda); $CDS_DEVICE")
    args = ap.parse_args()
    if args.device:
        os.environ["CDS_DEVICE"] = args.device
    import torch

    torch.set_num_threads(1)
    from cds.inference.cache import ResultCache
    from cds.inference.stream import BATCH_SIZE as BATCH
    from cds.models.registry import ModelRegistry
    from cds.sources.cohort import load_cohort

    reg = ModelRegistry()
    cohort = aged(load_cohort(args.cohort, validate=False, reference_date="2026-01-01"))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"cohort {args.cohort}: {len(cohort.imaging)} imaging series; decode workers {args.workers}; "
          f"device {os.environ.get('CDS_DEVICE', 'cpu')}; torch threads 1")
    print("\n## throughput (cache off) against the decode-bound limit")
    model_s = {}
    for mid in models:
        rows = reg._eligible(reg.get(mid), cohort.imaging).dropna(subset=["pixel_location"])
        locs = [str(v) for v in rows["pixel_location"]]
        reg.run(mid, cohort, studies=rows.head(2 * BATCH), workers=0)  # warm-up: network load, first forward
        limit = max(decode_rate(locs, args.workers) for _ in range(args.repeat))
        runs = [pipeline_rate(reg, mid, cohort, rows, args.workers) for _ in range(args.repeat)]
        rate, st = max(runs, key=lambda r: r[0])
        model_s[mid] = len(rows) / rate
        print(f"{mid:18s} {len(rows):5d} studies  decode {limit:7.1f}/s  pipeline {rate:7.1f}/s  "
              f"ratio {rate / limit:5.2f} (target >= 0.50)  [{st.batches} batches, {st.failed} no answer]")
    for mid, kind in (("ct-lung-nodule", "lung-pet-ct-dx"), ("cmr-function", "sunnybrook-cmr")):
        base = SHARED / kind
        loc = next(iter(sorted(base.glob("*/*/"))), None) if kind == "lung-pet-ct-dx" else (
            next(iter(sorted((base / "dicoms").glob("*"))), None))
        if loc is None:
            print(f"{mid:18s} skipped: no {base}")
            continue
        try:
            dec, run = one_series(reg, mid, loc, args.repeat)
            print(f"{mid:18s}     1 series   decode {1 / dec:7.2f}/s  pipeline {1 / run:7.2f}/s  ratio {dec / run:5.2f}")
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{mid:18s} failed: {type(exc).__name__}: {exc}")

    print("\n## cached re-run against the first run")
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResultCache(Path(tmp) / "c.sqlite")
        for mid in models:
            rows = reg._eligible(reg.get(mid), cohort.imaging)
            t = time.perf_counter()
            reg.run(mid, cohort, studies=rows, workers=args.workers, cache=cache)
            first = time.perf_counter() - t
            t = time.perf_counter()
            reg.run(mid, cohort, studies=rows, workers=args.workers, cache=cache)
            again = time.perf_counter() - t
            print(f"{mid:18s} first {first:6.2f} s  cached {again:6.2f} s  ratio {again / first:5.3f} (target <= 0.10)")
        cache.close()

    if not args.no_report:
        print("\n## cds report against its models' inference time (cache off)")
        from cds.reports.run import run_report

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = run_report(args.cohort, Path(tmp) / "r", {"reference_date": "2026-01-01", "n_boot": 200,
                                                              "cache": None}, progress=False)
            wall = time.perf_counter() - t
        used = [m for m in res.get("models", models)] if isinstance(res.get("models"), list) else models
        inf = 0.0
        for mid in used:
            rows = reg._eligible(reg.get(mid), load_cohort(args.cohort, validate=False,
                                                           reference_date="2026-01-01").imaging)
            t = time.perf_counter()
            reg.run(mid, load_cohort(args.cohort, validate=False, reference_date="2026-01-01"), studies=rows,
                    workers=args.workers)
            inf += time.perf_counter() - t
        print(f"report wall {wall:6.1f} s  model inference {inf:6.2f} s ({', '.join(used)})  ratio {wall / inf:5.2f} "
              "(target <= 1.5)")

    if args.memory:
        print("\n## peak memory of a cohort run against the cohort size (cache off, fresh process each)")
        import subprocess

        from cds.tooling.scale import scale_cohort

        base = Path(tempfile.gettempdir()) / "cds-bench-throughput"
        for factor in (1, 10):
            folder = base / f"x{factor}"
            if not folder.is_dir():
                scale_cohort(args.cohort, folder, factor)
            code = ("import resource, psutil, time, torch; torch.set_num_threads(1);"
                    "from cds.sources.cohort import load_cohort; from cds.models.registry import ModelRegistry;"
                    f"c = load_cohort({str(folder)!r}, validate=False, reference_date='2026-01-01'); r = ModelRegistry();"
                    "base = psutil.Process().memory_info().rss; t = time.perf_counter();"
                    f"res = r.run({models[0]!r}, c, workers={args.workers});"
                    "dt = time.perf_counter() - t; peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024;"
                    "print(len(c.imaging), len(res.findings), base, peak, dt)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            n, nf, base_rss, peak, dt = int(out[0]), int(out[1]), int(out[2]), int(out[3]), float(out[4])
            print(f"x{factor:<3d} {n:6d} studies  {nf:6d} findings  {n / dt:6.1f} studies/s  RSS after load "
                  f"{base_rss / 2**20:6.0f} MiB  peak during run {peak / 2**20:6.0f} MiB  (+{(peak - base_rss) / 2**20:5.0f} MiB)")

    if not args.no_dask:
        print("\n## Dask LocalCluster (cache off)")
        try:
            from cds.inference.distributed import CohortSpec, run_distributed
        except ImportError as exc:
            print(f"skipped: {exc}")
        else:
            mid = models[0]
            rows = reg._eligible(reg.get(mid), cohort.imaging)
            spec = CohortSpec(source=args.cohort, validate=False, reference_date="2026-01-01")
            rates = {}
            for n in (1, 2):
                t = time.perf_counter()
                run_distributed(spec, [(mid, rows)], workers=n, progress=False)
                rates[n] = len(rows) / (time.perf_counter() - t)
                print(f"{mid:18s} {n} worker(s) {rates[n]:7.1f} studies/s (cluster start included)  "
                      f"efficiency per worker {rates[n] / (n * rates[1]):5.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
