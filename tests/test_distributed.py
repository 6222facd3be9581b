"""Cohort inference on a Dask LocalCluster (cds.inference.distributed): same results as one process,
models loaded once per worker, a killed worker loses nothing, bad scheduler addresses named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cds.errors import ParameterError
from cds.inference.distributed import CohortSpec, loads, run_distributed
from cds.models.registry import ModelRegistry
from cds.sources.cohort import load_cohort

SAMPLES = str(Path(__file__).resolve().parents[1] / "fhir_samples")
MODEL = "cxr-icu"
SPEC = CohortSpec(SAMPLES, False, "2026-01-01")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def serial():
    cohort = load_cohort(SAMPLES, validate=False, reference_date="2026-01-01")
    reg = ModelRegistry()
    rows = reg._eligible(reg.get(MODEL), cohort.imaging).iloc[:80]
    return rows, reg.run(MODEL, cohort, studies=rows, workers=0)


def dicts(res):
    return [f.to_dict() for f in res.findings], [f.to_dict() for f in res.failures]


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client, LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                     env={"OMP_NUM_THREADS": "1"})
    client = Client(c)
    yield c, client
    client.close()
    c.close()


def test_two_workers_give_the_serial_results_and_load_once(cluster, serial) -> None:
    _, client = cluster
    rows, ref = serial
    (got,) = run_distributed(SPEC, [(MODEL, rows)], client=client, chunk_size=16, progress=False)
    assert dicts(got) == dicts(ref)
    (again,) = run_distributed(SPEC, [(MODEL, rows)], client=client, chunk_size=16, progress=False)
    assert dicts(again) == dicts(ref)
    per_worker = client.run(loads)
    assert len(per_worker) == 2 and all(n <= 1 for n in per_worker.values())   # once each, whatever the chunks
    assert sum(per_worker.values()) >= 1


def test_a_killed_worker_loses_no_results(cluster, serial) -> None:
    import psutil

    c, client = cluster
    rows, ref = serial
    killed = {}

    def kill_one(job: int, chunk: int) -> None:
        if killed:
            return
        info = client.scheduler_info()["workers"]
        addr = sorted(info)[0]
        pid = client.run(os.getpid, workers=[addr])[addr]
        psutil.Process(pid).kill()
        killed["pid"] = pid

    (got,) = run_distributed(SPEC, [(MODEL, rows)], client=client, chunk_size=16, progress=False,
                             on_chunk_done=kill_one)
    assert killed
    assert dicts(got) == dicts(ref)


def test_scheduler_address_and_bad_addresses(serial) -> None:
    from dask.distributed import LocalCluster

    rows, ref = serial
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        (got,) = run_distributed(SPEC, [(MODEL, rows.iloc[:20])], scheduler=c.scheduler_address, progress=False)
    assert dicts(got)[0] == dicts(ref)[0][:len(got.findings)] and len(got.findings) >= 15
    with pytest.raises(ParameterError, match="--scheduler"):
        run_distributed(SPEC, [(MODEL, rows)], scheduler="tcp://127.0.0.1:1", timeout_s=2, progress=False)
    with pytest.raises(ParameterError, match="--scheduler"):
        run_distributed(SPEC, [(MODEL, rows)], scheduler="http://127.0.0.1:8786", progress=False)
    with pytest.raises(ParameterError, match="--workers"):
        run_distributed(SPEC, [(MODEL, rows)], progress=False)


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
