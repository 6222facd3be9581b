"""Streaming, batched cohort inference: decode workers ahead of batched forward passes.

One model on many imaging series (:func:`stream_run`, what :meth:`cds.models.registry.ModelRegistry.run`
calls):

1. **Decode workers** (a PyTorch ``DataLoader`` over the rows, ``workers`` processes, at most
   ``prefetch`` prepared studies each waiting in its bounded queue) do all the per-study CPU work
   before the network: the record-only intended-use check, the EHR inputs, reading the pixels,
   the checks of :mod:`cds.models.vouch` (record identity, intended use, quality) and the task's
   :meth:`~cds.models.task.Task.prepare`. A study that must not or cannot be answered becomes a
   :class:`~cds.finding.Failure` there, and the run goes on.
2. **Batched forward passes** in the calling process: prepared studies are grouped
   :data:`BATCH_SIZE` at a time into :meth:`~cds.models.task.Task.predict_batch`. Batched tasks pad
   the last batch to the full size, so an image's numbers never depend on its batch companions
   (runs split across Dask workers, resumed from the cache or short of a failed study give the
   same bytes). A batch that fails is retried one study at a time, so only the bad study fails.
3. **Explanations only when asked**: ``explain="positives"`` (the report's default with an
   artifacts folder) computes GradCAM maps only for studies with a positive or indeterminate
   Finding; ``"all"`` for every study; ``"none"`` never.
4. **The result cache** (:class:`cds.inference.cache.ResultCache`): a study whose key (series,
   model id + version, hash of its pixel files, EHR inputs and record facts) is stored is not
   decoded again; every new answer is stored as soon as its batch is done, so a killed run
   resumes where it stopped.

Memory stays bounded whatever the cohort size: at most ``workers x prefetch`` prepared studies
plus one batch are held; only Findings (small) accumulate.

>>> BATCH_SIZE
16
>>> decode_workers(10), decode_workers(10_000, 3)
(0, 3)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.errors import CdsError, ModelInputError, NoAnswer, ParameterError

if TYPE_CHECKING:
    import pandas as pd

    from cds.finding import Failure, Finding
    from cds.images.image import Image

__all__ = ["BATCH_SIZE", "EXPLAIN_CHOICES", "stream_run", "decode_workers", "prepared_2d", "batch_probabilities",
           "StreamStats"]

log = logging.getLogger(__name__)

#: Studies per forward pass (batched tasks pad the last batch to this size).
BATCH_SIZE = 16
#: Prepared studies each decode worker may hold ready (the bounded queue).
PREFETCH = 4
#: Fewer rows than this run in the calling process (starting workers costs more than it saves).
MIN_ROWS_FOR_WORKERS = 32
EXPLAIN_CHOICES = ("none", "positives", "all")


def decode_workers(n_rows: int, workers: int | None = None) -> int:
    """Decode worker processes for ``n_rows`` studies: ``workers`` (default ``$CDS_DECODE_WORKERS`` or
    the CPU count, at most 8), none for a small run.

    >>> decode_workers(5, 4)
    0
    """
    if workers is None:
        env = os.environ.get("CDS_DECODE_WORKERS")
        try:
            workers = int(env) if env else min(8, os.cpu_count() or 1)
        except ValueError:
            raise ParameterError("CDS_DECODE_WORKERS", f"{env!r} is not a whole number") from None
    if workers < 0:
        raise ParameterError("workers", f"{workers}: expected >= 0 decode workers")
    return 0 if n_rows < MIN_ROWS_FOR_WORKERS else int(workers)


# ------------------------------------------------------------------------------ batched 2D helpers
def prepared_2d(image: Image, size: int, tabular: np.ndarray | None, ehr_used: dict[str, Any]) -> dict[str, Any]:
    """What a batched 2D classifier needs of one image: the ``size x size`` network input in [0, 1]
    (as the task's single-image ``predict`` makes it), its tabular inputs, the EHR values used and
    the image's identity (``ref``: patient, study, series, instance UIDs)."""
    from cds.models.task import image_ref
    from cds.models.tasks.inputs import check_image, prepare_image

    ref = image_ref(image)
    x = prepare_image(check_image(image.array), size)
    return {"x": np.ascontiguousarray(x, np.float32), "tab": None if tabular is None else np.asarray(tabular, np.float32),
            "ehr_used": ehr_used, "ref": (ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids)}


def batch_probabilities(bundle: Any, prepared: Sequence[dict[str, Any]], batch_size: int = BATCH_SIZE) -> list[float]:
    """Sigmoid probabilities of a one-logit network for :func:`prepared_2d` items, in fixed-size
    forward passes (the last padded by repeating its final item), so the result of an item does not
    depend on the others (checked in tests against one-at-a-time passes)."""
    from cds.models.networks import predict_logits, sigmoid
    from cds.models.tasks.common2d import as_bundle

    if not prepared:
        return []
    net = as_bundle(bundle).network()
    x = np.stack([p["x"] for p in prepared])
    tab = None if prepared[0]["tab"] is None else np.stack([p["tab"] for p in prepared])
    n = len(x)
    pad = (-n) % batch_size
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        tab = None if tab is None else np.concatenate([tab, np.repeat(tab[-1:], pad, axis=0)])
    logits = predict_logits(net, x, tab, batch_size=batch_size)[:n]
    return [float(v) for v in sigmoid(np.asarray(logits))]


# ------------------------------------------------------------------------------------ the pipeline
@dataclass
class StreamStats:
    """What one :func:`stream_run` did: studies, cache hits, seconds decoding (workers) and in the model."""

    studies: int = 0
    cached: int = 0
    computed: int = 0
    failed: int = 0
    batches: int = 0
    explained: int = 0
    workers: int = 0
    model_s: float = 0.0
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def studies_per_s(self) -> float:
        return self.studies / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Ready:
    """A study prepared for the model (made in a decode worker)."""

    index: int
    prepared: Any
    ehr: Any
    warnings: list[str]
    key: Any = None


@dataclass
class _Done:
    """A study answered without the model: a Failure, or the cache's entry."""

    index: int
    failure: Failure | None = None
    findings: list[Finding] | None = None


class _Studies:
    """The per-study work before the network, as a map-style dataset over the rows (see module docstring)."""

    def __init__(self, registry: Any, model_id: str, cohort: Any, rows: list[Any], limit: float | None,
                 keys: list[Any] | None) -> None:
        from cds.models.registry import _age_at, _birth_dates, _cohort_root, _dicom_ids
        from cds.models.vouch import read_id_map

        self.registry, self.model_id, self.cohort, self.rows, self.limit, self.keys = (
            registry, model_id, cohort, rows, limit, keys)
        self.bundle = registry.get(model_id)
        self.task = registry.task_for(model_id)
        self.id_map = read_id_map(_cohort_root(cohort))
        births = _birth_dates(cohort)
        self.ages = [_age_at(births, r) for r in rows]
        self.dicom_ids = _dicom_ids(cohort)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Ready | _Done:
        from cds.images.dicom import SeriesMismatchError
        from cds.images.read import read_image
        from cds.models.ehr_inputs import ehr_inputs_for
        from cds.models.registry import _deadline, _failure, _read_series, study_ref
        from cds.models.vouch import check_intended_use, facts_for

        r = self.rows[i]
        b = self.bundle
        try:
            with _deadline(self.limit, f"study {r.study_uid}"):
                if not isinstance(r.pixel_location, str) or not r.pixel_location:
                    raise ModelInputError("image", "the ImagingStudy says nowhere where its pixels are")
                facts = facts_for(r, self.id_map, self.ages[i], self.dicom_ids.get(str(r.patient_id), ()))
                check_intended_use(b.model_card, None, facts)  # the record alone: before reading pixels
                ehr = ehr_inputs_for(b.model_card, self.cohort, r.patient_id, r.started)
                image = _read_series(r, read_image, getattr(self.cohort, "pixel_access", None))
                ehr, warnings = self.registry.vouch(self.model_id, image, ehr, facts)
                prepared = self.task.prepare(b, image, ehr)
                return _Ready(i, (prepared, image, study_ref(r)), ehr, warnings,
                              self.keys[i] if self.keys else None)
        except NoAnswer as exc:
            return _Done(i, _failure(r, self.model_id, b.version, exc, exc.state))
        except SeriesMismatchError as exc:  # the file holds another series or modality than the record says
            return _Done(i, _failure(r, self.model_id, b.version, exc, "record-mismatch"))
        except CdsError as exc:
            return _Done(i, _failure(r, self.model_id, b.version, exc))
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop a cohort run
            log.warning("model %s failed on a study: %s", self.model_id, type(exc).__name__)
            return _Done(i, _failure(r, self.model_id, b.version, exc))


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _items(ds: _Studies, todo: list[int], workers: int, prefetch: int) -> Iterator[_Ready | _Done]:
    """The prepared studies of ``todo`` (row indices) in order, from ``workers`` processes (or here)."""
    if workers == 0 or len(todo) < 2:
        for i in todo:
            yield ds[i]
        return
    import torch
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(ds, todo), batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=prefetch, collate_fn=_identity, worker_init_fn=_worker_init,
                        multiprocessing_context=torch.multiprocessing.get_context("fork"))
    yield from loader


def _explain_wanted(findings: list[Finding], explain: str) -> bool:
    if explain == "all":
        return bool(findings)
    if explain == "positives":
        return any(f.interpretation in ("positive", "indeterminate") for f in findings)
    return False


def stream_run(registry: Any, model_id: str, cohort: Any, rows: pd.DataFrame, *, progress: bool = False,
               artifacts_dir: str | Path | None = None, time_limit_s: float | None = None,
               batch_size: int = BATCH_SIZE, workers: int | None = None, prefetch: int = PREFETCH,
               explain: str | None = None, cache: Any = None, stats: StreamStats | None = None) -> Any:
    """Run one model on ``rows`` (already the model's eligible ``cohort.imaging`` rows); see the module docstring.

    Returns a :class:`cds.models.registry.RunResult` whose findings and failures are in row order, as
    the one-at-a-time loop gives them. ``explain`` defaults to ``"positives"`` with ``artifacts_dir``
    and ``"none"`` without; ``cache`` is a :class:`cds.inference.cache.ResultCache` or None.
    """
    from cds.models.registry import RunResult, _time_limit, with_study_context

    if explain is None:
        explain = "positives" if artifacts_dir is not None else "none"
    if explain not in EXPLAIN_CHOICES:
        raise ParameterError("explain", f"{explain!r}: expected one of {', '.join(EXPLAIN_CHOICES)}")
    if batch_size < 1:
        raise ParameterError("batch_size", f"{batch_size}: expected >= 1")
    if prefetch < 1:
        raise ParameterError("prefetch", f"{prefetch}: expected >= 1")
    t_start = time.perf_counter()
    st = stats if stats is not None else StreamStats()
    limit = _time_limit(time_limit_s)
    row_list = list(rows.itertuples(index=False))
    n = len(row_list)
    b = registry.get(model_id)
    task = registry.task_for(model_id)
    results: list[tuple[list[Finding], Failure | None] | None] = [None] * n
    keys = None
    if cache is not None:
        from cds.inference.keys import study_keys

        keys = study_keys(registry, model_id, cohort, row_list)
    ds = _Studies(registry, model_id, cohort, row_list, limit, keys)
    todo = []
    for i in range(n):
        hit = cache.get(keys[i]) if cache is not None and keys[i] is not None else None
        if hit is not None:
            results[i] = (list(hit.findings), hit.failure)
            st.cached += 1
        else:
            todo.append(i)
    n_workers = decode_workers(len(todo), workers)
    st.workers = n_workers
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=model_id, unit="study", initial=st.cached)

    def store(i: int, findings: list[Finding], failure: Failure | None, key: Any = None) -> None:
        results[i] = (findings, failure)
        if failure is not None:
            st.failed += 1
        if cache is not None and key is not None:
            from cds.inference.cache import cacheable_failure

            if failure is None or cacheable_failure(failure):
                cache.put(key, str(row_list[i].patient_id), findings, failure)
        if bar is not None:
            bar.update(1)
            if bar.format_dict.get("elapsed"):
                bar.set_postfix_str(f"{bar.n / max(bar.format_dict['elapsed'], 1e-9):.1f} studies/s", refresh=False)

    def finish(batch: list[_Ready]) -> None:
        from cds.models.registry import _deadline, _failure

        t0 = time.perf_counter()
        outs: list[list[Finding] | BaseException]
        try:
            with _deadline(limit * len(batch) if limit else None, f"a batch of {len(batch)} studies"):
                outs = list(task.predict_batch(b, [it.prepared[0] for it in batch]))
            if len(outs) != len(batch):
                raise RuntimeError(f"predict_batch gave {len(outs)} results for {len(batch)} studies")
        except Exception:  # noqa: BLE001 - retry one at a time: only the bad study fails
            outs = []
            for it in batch:
                try:
                    with _deadline(limit, f"study {row_list[it.index].study_uid}"):
                        outs.append(list(task.predict_batch(b, [it.prepared[0]]))[0])
                except Exception as exc:  # noqa: BLE001
                    outs.append(exc)
        st.model_s += time.perf_counter() - t0
        st.batches += 1
        for it, out in zip(batch, outs, strict=True):
            r = row_list[it.index]
            if isinstance(out, BaseException):
                if not isinstance(out, CdsError):
                    log.warning("model %s failed on a study: %s", model_id, type(out).__name__)
                store(it.index, [], _failure(r, model_id, b.version, out), it.key)
                continue
            found = out
            if it.warnings:
                found = [replace(f, extra={**f.extra, "warnings": [*f.extra.get("warnings", []), *it.warnings]})
                         for f in found]
            _, image, ref = it.prepared
            found = ref.stamp(found)
            found = with_study_context(found, r, it.ehr)
            if artifacts_dir is not None and _explain_wanted(found, explain):
                t1 = time.perf_counter()
                found = registry.attach_explanation(model_id, image, it.ehr, found, artifacts_dir)
                st.model_s += time.perf_counter() - t1
                st.explained += 1
            store(it.index, found, None, it.key)

    pending: list[_Ready] = []
    for item in _items(ds, todo, n_workers, prefetch):
        if isinstance(item, _Done):
            store(item.index, [], item.failure, keys[item.index] if keys else None)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            finish(pending)
            pending = []
    if pending:
        finish(pending)
    if bar is not None:
        bar.close()
    out = RunResult()
    for res in results:
        if res is None:  # pragma: no cover - every index is answered above
            continue
        findings, failure = res
        out.findings.extend(findings)
        if failure is not None:
            out.failures.append(failure)
    st.studies += n
    st.computed += len(todo)
    st.wall_s += time.perf_counter() - t_start
    return out
