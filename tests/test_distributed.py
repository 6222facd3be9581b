"""Cohort inference on a Dask LocalCluster (cds.inference.distributed): same results as one process,
models loaded once per worker, a killed worker loses nothing, bad scheduler addresses named."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cds.errors import ParameterError
from cds.inference.distributed import CohortSpec, loads, local_cluster, run_distributed
from cds.models.registry import ModelRegistry
from cds.sources.cohort import load_cohort

SAMPLES = str(Path(__file__).resolve().parents[1] / "fhir_samples")
MODEL = "cxr-icu"  # answers the sample chest films (the paediatric-only models refuse most of them)
OTHER = "cxr-cardiomegaly"  # a second job: mostly refusals (failures), which must keep their order too
SPEC = CohortSpec(SAMPLES, False, "2026-01-01")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def serial():
    cohort = load_cohort(SAMPLES, validate=False, reference_date="2026-01-01")
    reg = ModelRegistry()
    rows = reg._eligible(reg.get(MODEL), cohort.imaging).iloc[:40]
    other = reg._eligible(reg.get(OTHER), cohort.imaging).iloc[40:60]
    jobs = [(MODEL, rows), (OTHER, other)]
    return jobs, [reg.run(mid, cohort, studies=r, workers=0) for mid, r in jobs]


def dicts(res):
    return [f.to_dict() for f in res.findings], [f.to_dict() for f in res.failures]


def all_dicts(results):
    return [dicts(r) for r in results]


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client

    c = local_cluster(2)
    client = Client(c)
    yield c, client
    client.close()
    c.close()


def test_two_workers_give_the_serial_results_and_load_once(cluster, serial) -> None:
    _, client = cluster
    jobs, ref = serial
    assert len(ref[0].findings) >= 30 and len(ref[1].failures) >= 1
    got = run_distributed(SPEC, jobs, client=client, chunk_size=16, progress=False)
    assert all_dicts(got) == all_dicts(ref)
    again = run_distributed(SPEC, jobs, client=client, chunk_size=16, progress=True)
    assert all_dicts(again) == all_dicts(ref)
    per_worker = client.run(loads)
    assert len(per_worker) == 2
    assert sum(w["chunks"] for w in per_worker.values()) == 2 * 5  # (3 + 2 chunks) x 2 runs
    assert max(w["chunks"] for w in per_worker.values()) >= 2
    assert all(w["cohort"] == (1 if w["chunks"] else 0) for w in per_worker.values())  # once, whatever the chunks


def test_a_killed_worker_loses_no_results(cluster, serial) -> None:
    import psutil

    _, client = cluster
    jobs, ref = serial
    killed = {}

    def kill_one(job: int, chunk: int) -> None:
        if killed:
            return
        busy = {a: keys for a, keys in client.processing().items() if keys}
        assert busy, "the run should still have chunks on the workers"
        addr = sorted(busy)[0]  # a worker with a chunk in hand (and maybe finished chunks not yet gathered)
        pid = client.run(os.getpid, workers=[addr])[addr]
        psutil.Process(pid).kill()
        killed["pid"] = pid

    got = run_distributed(SPEC, jobs, client=client, chunk_size=16, progress=False, on_chunk_done=kill_one)
    assert killed
    assert all_dicts(got) == all_dicts(ref)
    assert killed["pid"] not in client.run(os.getpid).values()  # that process is gone (the nanny restarted one)


def test_scheduler_address_and_bad_addresses(serial) -> None:
    jobs, ref = serial
    with local_cluster(1) as c:
        got = run_distributed(SPEC, jobs, scheduler=c.scheduler_address, progress=False)
        assert all_dicts(got) == all_dicts(ref)
        assert c.status.name == "running"  # an existing cluster is left running
    t0 = time.perf_counter()
    with pytest.raises(ParameterError, match="--scheduler.*cannot reach"):
        run_distributed(SPEC, jobs, scheduler="tcp://127.0.0.1:1", timeout_s=2, progress=False)
    assert time.perf_counter() - t0 < 15
    with pytest.raises(ParameterError, match="--scheduler"):
        run_distributed(SPEC, jobs, scheduler="http://127.0.0.1:8786", progress=False)
    with pytest.raises(ParameterError, match="--workers"):
        run_distributed(SPEC, jobs, progress=False)
    with pytest.raises(ParameterError, match="--workers"):
        run_distributed(SPEC, jobs, workers=2, scheduler="tcp://127.0.0.1:1", progress=False)


def test_workers_starts_and_closes_a_local_cluster(serial) -> None:
    jobs, ref = serial
    got = run_distributed(SPEC, jobs[1:], workers=1, progress=False)
    assert all_dicts(got) == all_dicts(ref[1:])


@pytest.mark.slow
def test_report_models_on_a_local_cluster_match_the_serial_report(tmp_path) -> None:
    """``cds report --workers 2``: the same Findings and failures, in the same order, as one process
    (so results.json is byte-identical); cached studies are not sent to the cluster."""
    from cds.reports.model_runs import run_models
    from cds.reports.parameters import validate_report_parameters
    from cds.reports.report import prepare

    base = {"cohort": SAMPLES, "models": [MODEL, "pneumonia"], "reference_date": "2026-01-01", "validate": False}
    one = prepare(validate_report_parameters({**base, "out_dir": str(tmp_path / "one"), "cache": None,
                                              "decode_workers": 0}))
    run_models(one, progress=False)
    two = prepare(validate_report_parameters({**base, "out_dir": str(tmp_path / "two"), "workers": 2}))
    run_models(two, progress=False)
    assert [f.to_dict() for f in two.findings] == [f.to_dict() for f in one.findings]
    assert [f.to_dict() for f in two.failures] == [f.to_dict() for f in one.failures]
    again = prepare(validate_report_parameters({**base, "out_dir": str(tmp_path / "two"), "workers": 2}))
    run_models(again, progress=False)
    assert again.run_stats[MODEL]["cached"] == len([f for f in one.findings if f.model_id == MODEL])
    assert [f.to_dict() for f in again.findings] == [f.to_dict() for f in one.findings]
