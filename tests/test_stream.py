"""Streaming, batched cohort inference (cds.inference.stream) on the shipped sample cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds.inference import stream
from cds.inference.stream import StreamStats, batch_probabilities, prepared_2d
from cds.models.registry import ModelRegistry
from cds.sources.cohort import load_cohort

SAMPLES = Path(__file__).resolve().parents[1] / "fhir_samples"
MODEL = "cxr-cardiomegaly"


@pytest.fixture(scope="module")
def cohort():
    """The sample cohort with a birth date for everyone (its Hannover patients record none, and
    cxr-cardiomegaly needs the age)."""
    import dataclasses

    import pandas as pd

    c = load_cohort(SAMPLES, validate=False, reference_date="2026-01-01")
    born = c.patients.assign(birth_date=pd.Timestamp("1961-05-01", tz=c.patients["birth_date"].dt.tz))
    return dataclasses.replace(c, patients=born)


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(user_dirs=[])


@pytest.fixture(scope="module")
def rows(cohort, registry):
    r = registry._eligible(registry.get(MODEL), cohort.imaging)
    assert len(r) >= 40
    return r


def dicts(res):
    return [f.to_dict() for f in res.findings], [f.to_dict() for f in res.failures]


@pytest.fixture(scope="module")
def serial(registry, cohort, rows):
    return registry.run(MODEL, cohort, studies=rows, workers=0)


def test_batched_equals_one_image_predict(registry, cohort, serial) -> None:
    """The batched path gives the single-image predict's probability for every study (float32 noise only)."""
    from cds.images.read import read_image

    assert len(serial.findings) >= 30
    task = registry.task_for(MODEL)
    b = registry.get(MODEL)
    img_rows = cohort.imaging.set_index("study_uid")
    for f in serial.findings[:6]:
        loc = img_rows.loc[f.study_uid, "pixel_location"]
        loc = loc if isinstance(loc, str) else loc.iloc[0]
        one = task.predict(b, read_image(loc), f.ehr_inputs)
        assert abs(one[0].probability - f.probability) < 1e-5


def test_item_result_does_not_depend_on_batch_companions(registry) -> None:
    b = registry.get(MODEL)
    rng = np.random.default_rng(1)
    items = [{"x": rng.random((64, 64), dtype=np.float32), "tab": rng.random(2, dtype=np.float32)}
             for _ in range(21)]
    whole = batch_probabilities(b, items)
    assert len(whole) == 21
    parts = batch_probabilities(b, items[:5]) + batch_probabilities(b, items[5:])
    alone = [batch_probabilities(b, [it])[0] for it in items[::5]]
    assert parts == whole                          # bit for bit, whatever the split
    assert alone == whole[::5]


def test_split_runs_and_workers_give_the_same_bytes(registry, cohort, rows, serial) -> None:
    """Two halves (as Dask chunks or a resumed run make them) and decode workers: identical Findings."""
    half = len(rows) // 2 + 3                      # not a multiple of the batch size
    a = registry.run(MODEL, cohort, studies=rows.iloc[:half], workers=0)
    c = registry.run(MODEL, cohort, studies=rows.iloc[half:], workers=0)
    assert dicts(a)[0] + dicts(c)[0] == dicts(serial)[0]
    assert dicts(a)[1] + dicts(c)[1] == dicts(serial)[1]
    st = StreamStats()
    w = registry.run(MODEL, cohort, studies=rows, workers=2, stats=st)
    assert st.workers == 2 and st.studies == len(rows) and st.batches >= len(serial.findings) // stream.BATCH_SIZE
    assert dicts(w) == dicts(serial)


def test_one_bad_study_fails_alone(registry, cohort, rows, serial, monkeypatch) -> None:
    bad = rows.copy()
    bad.iloc[3, bad.columns.get_loc("pixel_location")] = str(SAMPLES / "no-such-file.dcm")
    res = registry.run(MODEL, cohort, studies=bad, workers=0)
    assert len(res.failures) == len(serial.failures) + 1
    assert len(res.findings) == len(serial.findings) - 1
    # a batch whose forward pass raises for one study: retried one by one, only that study fails
    task = registry.task_for(MODEL)
    original = type(task).predict_batch
    target = serial.findings[5].study_uid

    def flaky(self, bundle, prepared):
        if any(p["ref"][1] == target for p in prepared) and len(prepared) > 0:
            if len(prepared) == 1:
                raise RuntimeError("boom")
            raise RuntimeError("batch boom")
        return original(self, bundle, prepared)

    monkeypatch.setattr(type(task), "predict_batch", flaky)
    res = registry.run(MODEL, cohort, studies=rows, workers=0)
    failed = [f for f in res.failures if f.study_uid == target]
    assert len(failed) == 1 and failed[0].state == "failed"
    assert len(res.findings) == len(serial.findings) - 1
    assert {f.study_uid for f in res.findings} == {f.study_uid for f in serial.findings} - {target}


def test_explanations_only_for_positives(registry, cohort, rows, tmp_path) -> None:
    st = StreamStats()
    res = registry.run(MODEL, cohort, studies=rows.iloc[:40], workers=0, artifacts_dir=tmp_path, stats=st)
    flagged = [f for f in res.findings if f.interpretation in ("positive", "indeterminate")]
    others = [f for f in res.findings if f not in flagged]
    assert flagged and others
    assert all("heatmap" in f.extra and Path(f.extra["heatmap"]).is_file() for f in flagged)
    assert not any("heatmap" in f.extra for f in others)
    assert st.explained == len({f.study_uid for f in flagged})
    assert len(list(tmp_path.glob("*.npy"))) == len(flagged)
    every = registry.run(MODEL, cohort, studies=rows.iloc[:10], workers=0, artifacts_dir=tmp_path / "all",
                         explain="all")
    assert all("heatmap" in f.extra for f in every.findings)


def test_bad_parameters_are_named(registry, cohort, rows) -> None:
    from cds.errors import ParameterError

    with pytest.raises(ParameterError, match="explain"):
        registry.run(MODEL, cohort, studies=rows.iloc[:2], explain="sometimes")
    with pytest.raises(ParameterError, match="batch_size"):
        stream.stream_run(registry, MODEL, cohort, rows.iloc[:2], batch_size=0)
    with pytest.raises(ParameterError, match="workers"):
        stream.decode_workers(100, -1)


def test_progress_bar_reports_rate(registry, cohort, rows, capsys) -> None:
    registry.run(MODEL, cohort, studies=rows.iloc[:20], workers=0, progress=True)
    err = capsys.readouterr().err
    assert MODEL in err and "studies/s" in err and "20/20" in err


def test_prepared_2d_matches_the_task_input(registry, cohort, rows) -> None:
    from cds.images.read import read_image
    from cds.models.tasks.inputs import check_image, prepare_image

    img = read_image(rows.iloc[0]["pixel_location"])
    p = prepared_2d(img, 64, None, {})
    assert np.array_equal(p["x"], prepare_image(check_image(img.array), 64))
    assert p["ref"][1] == img.meta["study_uid"]
