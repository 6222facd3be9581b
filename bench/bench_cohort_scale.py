"""Benchmark: ``load_cohort`` time and peak memory on the sample cohort scaled 1x, 10x, 100x, and whether
they grow linearly with the cohort (ratios measured in the same run).

Each cohort is written once by :func:`cds.tooling.scale.scale_cohort` (hard-linked images) into a cache
folder (default ``$TMPDIR/cds-bench-cohort-scale``; reused while the source files and the scaler are
unchanged), then loaded in a fresh Python subprocess per factor, so each peak RSS (``ru_maxrss`` of the
child) is that load's own. A subprocess that only imports the loader gives the baseline interpreter RSS.

The ratio columns divide by the factor: ``time x/1x`` = (seconds at factor F / seconds at 1x) / F and
``RSS x/1x`` = ((peak - baseline) at F / (peak - baseline) at 1x) / F; 1.0 is linear growth, below 1.0
better than linear.

    .venv/bin/python bench/bench_cohort_scale.py [--factors 1,10,100] [--validate | --no-validate]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "fhir_samples"

_CHILD = r"""
import json, resource, sys, time
from cds.sources.cohort import load_cohort
if sys.argv[1] == "-":
    print(json.dumps({"rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    raise SystemExit
t = time.perf_counter()
c = load_cohort(sys.argv[1], validate=sys.argv[2] == "1", reference_date="2026-01-01")
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "patients": len(c.patients), "imaging": len(c.imaging), "problems": len(c.problems),
                  "timings": c.timings}))
"""


def fingerprint() -> str:
    """Changes when a source FHIR file or the scaler changes (then the cached cohorts are rebuilt)."""
    h = hashlib.sha256((REPO / "cds" / "tooling" / "scale.py").read_bytes())
    for p in sorted(SOURCE.rglob("*.json")):
        st = p.stat()
        h.update(f"{p.relative_to(SOURCE)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cohort(cache: Path, factor: int) -> tuple[Path, dict[str, Any], bool]:
    """The scaled cohort folder, its summary and whether it came from the cache."""
    from cds.tooling.scale import scale_cohort

    folder = cache / f"x{factor}"
    meta = cache / f"x{factor}.json"
    fp = fingerprint()
    if meta.is_file() and folder.is_dir():
        summary = json.loads(meta.read_text())
        if summary.get("fingerprint") == fp:
            return folder, summary, True
    shutil.rmtree(folder, ignore_errors=True)
    summary = scale_cohort(SOURCE, folder, factor)
    summary["fingerprint"] = fp
    meta.write_text(json.dumps(summary))
    return folder, summary, False


def child(*args: str) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"load failed ({' '.join(args)}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factors", default="1,10,100", help="comma-separated factors (default 1,10,100; 1 is added)")
    ap.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                    help="validate every resource with fhir.resources (default) or not")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cds-bench-cohort-scale",
                    help="folder the scaled cohorts are kept in between runs")
    args = ap.parse_args()
    try:
        factors = sorted({1, *(int(f) for f in args.factors.split(",") if f.strip())})
    except ValueError:
        raise SystemExit(f"--factors: {args.factors!r} is not a comma-separated list of whole numbers") from None
    if factors[0] < 1:
        raise SystemExit("--factors: every factor must be >= 1")
    args.cache.mkdir(parents=True, exist_ok=True)
    base = child("-")["rss_kib"] / 1024
    rows = []
    for f in factors:
        t = time.perf_counter()
        folder, summary, cached = cohort(args.cache, f)
        gen = time.perf_counter() - t
        r = child(str(folder), "1" if args.validate else "0")
        rows.append({"factor": f, "resources": summary["n_resources"], "patients": r["patients"],
                     "imaging_rows": r["imaging"], "problems": r["problems"], "seconds": r["seconds"],
                     "peak_rss_mib": r["rss_kib"] / 1024, "generate_s": None if cached else round(gen, 2),
                     "timings": r["timings"]})
    one = rows[0]
    print(f"load_cohort(validate={args.validate}); baseline interpreter RSS {base:.0f} MiB (imports only)")
    print(f"{'factor':>7}{'resources':>11}{'seconds':>9}{'peak MiB':>10}{'s/1000 res':>12}{'KiB/res':>9}"
          f"{'time x/1x':>11}{'RSS x/1x':>10}{'gen s':>8}")
    for r in rows:
        above = r["peak_rss_mib"] - base
        r["s_per_1000_resources"] = 1000 * r["seconds"] / r["resources"]
        r["kib_per_resource"] = 1024 * above / r["resources"]
        r["time_ratio_per_factor"] = r["seconds"] / one["seconds"] / r["factor"]
        one_above = one["peak_rss_mib"] - base
        r["rss_ratio_per_factor"] = above / one_above / r["factor"] if one_above > 0 else float("nan")
        gen = "cached" if r["generate_s"] is None else f"{r['generate_s']:.1f}"
        print(f"{r['factor']:>7}{r['resources']:>11}{r['seconds']:>9.2f}{r['peak_rss_mib']:>10.0f}"
              f"{r['s_per_1000_resources']:>12.3f}{r['kib_per_resource']:>9.1f}{r['time_ratio_per_factor']:>11.2f}"
              f"{r['rss_ratio_per_factor']:>10.2f}{gen:>8}")
    print("ratios are per factor: 1.00 = linear, < 1 better than linear")
    print(json.dumps({"baseline_rss_mib": base, "validate": args.validate, "rows": rows}))


if __name__ == "__main__":
    main()
