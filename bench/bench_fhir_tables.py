"""Benchmark: FHIR folder -> cohort tables, against a plain ``orjson.loads`` of the same files.

Each variant runs in its own subprocess (so peak memory is its own), ``--repeat`` times; the
median wall time and the peak RSS are printed with their ratios to the baseline measured in the
same run. Targets (issue 2): tables for the 36 MB Synthea folder in seconds and well under 1 GB.

    .venv/bin/python bench/bench_fhir_tables.py [FOLDER] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthea-fhir-r4" / "bundles"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
folder, variant = sys.argv[1], sys.argv[2]
import orjson
if variant != "orjson":
    import cds.sources.cohort, cds.sources.fhir_validate, pandas  # imports are not part of the timing
    from fhir.resources.R4B import get_fhir_model_class
t = time.perf_counter()
if variant == "orjson":
    docs = [orjson.loads(p.read_bytes()) for p in sorted(Path(folder).rglob("*.json"))]
    n = sum(len(d.get("entry", [])) for d in docs)
else:
    c = cds.sources.cohort.load_cohort(folder, validate=(variant == "tables+validation"), reference_date="2026-01-01")
    n = sum(len(df) for df in c.tables().values())
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n": n}))
"""


def run(folder: Path, variant: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), variant], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = Path(args.folder)
    mb = sum(p.stat().st_size for p in folder.rglob("*.json")) / 1e6
    print(f"folder: {folder} ({mb:.1f} MB)")
    results = {}
    for variant in ("orjson", "tables", "tables+validation"):
        runs = [run(folder, variant) for _ in range(args.repeat)]
        results[variant] = {"seconds": statistics.median(r["seconds"] for r in runs),
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "n": runs[0]["n"]}
    base = results["orjson"]
    print(f"{'variant':<20}{'median s':>10}{'x orjson':>10}{'peak MB':>10}{'x orjson':>10}")
    for name, r in results.items():
        print(f"{name:<20}{r['seconds']:>10.2f}{r['seconds'] / base['seconds']:>10.1f}"
              f"{r['peak_rss_mb']:>10.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>10.2f}")
    print(json.dumps({"folder_mb": round(mb, 1), **results}))


if __name__ == "__main__":
    main()
