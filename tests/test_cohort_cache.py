"""The result cache in cohort runs: reuse, recompute only what changed, resume a killed run, the report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds.inference.cache import ResultCache
from cds.inference.stream import StreamStats
from cds.models.registry import ModelRegistry
from cds.sources.cohort import load_cohort

SAMPLES = Path(__file__).resolve().parents[1] / "fhir_samples"
MODEL = "cxr-icu"


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort") / "fhir_samples"
    shutil.copytree(SAMPLES, root)
    return root


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(user_dirs=[])


def dicts(res):
    return [f.to_dict() for f in res.findings], [f.to_dict() for f in res.failures]


def test_rerun_reuses_and_a_changed_image_is_recomputed(copy, registry, tmp_path) -> None:
    import pydicom

    cohort = load_cohort(copy, validate=False, reference_date="2026-01-01")
    cache = ResultCache(tmp_path / "c.sqlite")
    first = StreamStats()
    a = registry.run(MODEL, cohort, cache=cache, workers=0, stats=first)
    assert first.cached == 0 and len(a.findings) >= 100
    again = StreamStats()
    b = registry.run(MODEL, cohort, cache=cache, workers=0, stats=again)
    assert again.cached == len(a.findings) and again.computed == first.studies - again.cached
    assert dicts(b) == dicts(a)
    # one image file changes (a header element): only that study is computed again
    f0 = a.findings[0]
    loc = cohort.imaging.loc[cohort.imaging["series_uid"] == f0.series_uid, "pixel_location"].iloc[0]
    ds = pydicom.dcmread(loc)
    ds.SeriesDescription = "re-sent by the PACS"
    ds.save_as(loc)
    third = StreamStats()
    c = registry.run(MODEL, load_cohort(copy, validate=False, reference_date="2026-01-01"), cache=cache,
                     workers=0, stats=third)
    assert third.cached == again.cached - 1
    assert dicts(c) == dicts(a)
    cache.close()


def test_a_killed_run_resumes_where_it_stopped(copy, registry, tmp_path, monkeypatch) -> None:
    cohort = load_cohort(copy, validate=False, reference_date="2026-01-01")
    full = registry.run(MODEL, cohort, workers=0)
    task = registry.task_for(MODEL)
    original = type(task).predict_batch
    calls = {"n": 0}

    def dies_on_third_batch(self, bundle, prepared):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C / a killed process: not a per-study failure
        return original(self, bundle, prepared)

    monkeypatch.setattr(type(task), "predict_batch", dies_on_third_batch)
    cache = ResultCache(tmp_path / "c.sqlite")
    with pytest.raises(KeyboardInterrupt):
        registry.run(MODEL, cohort, cache=cache, workers=0)
    done = len(cache)
    assert done >= 2 * 16 - 5          # the first two batches are stored (a few failures are not cached)
    monkeypatch.setattr(type(task), "predict_batch", original)
    st = StreamStats()
    resumed = registry.run(MODEL, cohort, cache=cache, workers=0, stats=st)
    assert st.cached == done and st.computed == st.studies - done
    assert dicts(resumed) == dicts(full)
    cache.close()


def test_report_models_use_the_cache_in_the_output_folder(tmp_path) -> None:
    from cds.reports.model_runs import CACHE_FILE, run_models
    from cds.reports.parameters import validate_report_parameters
    from cds.reports.report import prepare

    params = validate_report_parameters({"cohort": str(SAMPLES), "models": [MODEL], "out_dir": str(tmp_path / "r"),
                                         "reference_date": "2026-01-01", "validate": False, "decode_workers": 0})
    ctx = prepare(params)
    run_models(ctx, progress=False)
    assert (tmp_path / "r" / CACHE_FILE).is_file()
    first = [f.to_dict() for f in ctx.findings]
    ctx2 = prepare(params)
    run_models(ctx2, progress=False)
    assert ctx2.run_stats[MODEL]["cached"] == len(first) and [f.to_dict() for f in ctx2.findings] == first
    off = prepare({**params, "cache": None})
    run_models(off, progress=False)
    assert off.run_stats[MODEL]["cached"] == 0 and [f.to_dict() for f in off.findings] == first


def test_deidentified_report_keeps_no_cache_in_its_output(tmp_path, monkeypatch) -> None:
    from cds.errors import ParameterError
    from cds.reports.model_runs import cache_path
    from cds.reports.parameters import validate_report_parameters
    from cds.reports.report import prepare

    monkeypatch.setenv("CDS_REPORT_SALT", "a-test-salt-of-enough-bytes")
    params = validate_report_parameters({"cohort": str(SAMPLES), "models": [MODEL], "out_dir": str(tmp_path / "r"),
                                         "reference_date": "2026-01-01", "validate": False, "deidentify": True})
    ctx = prepare(params)
    assert cache_path(ctx) is None
    ctx.params["cache"] = str(tmp_path / "r" / "mine.sqlite")
    with pytest.raises(ParameterError, match="cache"):
        cache_path(ctx)
    ctx.params["cache"] = str(tmp_path / "elsewhere.sqlite")
    assert cache_path(ctx) == tmp_path / "elsewhere.sqlite"


def test_workers_and_scheduler_together_are_refused() -> None:
    from cds.errors import ParameterError
    from cds.reports.parameters import validate_report_parameters

    with pytest.raises(ParameterError, match="scheduler"):
        validate_report_parameters({"workers": 2, "scheduler": "tcp://127.0.0.1:8786"})
    with pytest.raises(ParameterError, match="scheduler"):
        validate_report_parameters({"scheduler": "http://127.0.0.1:8786"})
