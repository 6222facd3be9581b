"""Cohort inference on a Dask cluster: ``cds report --workers N`` (a LocalCluster) or ``--scheduler
tcp://HOST:PORT`` (an existing cluster; its workers need only ``pip install cds`` and the cohort's files).

Each worker process rebuilds the cohort and the model registry once from a :class:`CohortSpec`
(strings only, so any worker can) and keeps them, with the loaded networks, for every chunk it runs
(:func:`worker_state`). A chunk is a list of (study UID, series UID) keys of one model's eligible
rows; the worker runs them through :meth:`cds.models.registry.ModelRegistry.run` in one process
(no decode sub-processes). Results come back in submission order, so the concatenation is exactly
the single-process run (batched tasks pad every batch: an image's numbers do not depend on its
chunk). Tasks are pure: a worker that dies mid-run has its chunks re-run elsewhere (``retries``).

>>> CohortSpec("fhir_samples", False, "2026-01-01").source
'fhir_samples'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cds.errors import ParameterError

__all__ = ["CohortSpec", "worker_state", "run_chunk", "run_distributed", "local_cluster", "loads", "LOADS"]

#: Per worker process: cohort + registry loads and chunks run so far (tests read them with ``client.run(loads)``).
LOADS = {"cohort": 0, "chunks": 0}
_STATE: dict[CohortSpec, tuple[Any, Any]] = {}
#: Environment of LocalCluster workers: one BLAS / OpenMP thread each (torch threads are set in worker_state).
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True)
class CohortSpec:
    """What a worker needs to rebuild the same cohort and registry: the cohort source, validation,
    reference date, the user's model folders (empty: the worker's default, ``$CDS_MODELS_DIR`` or
    ``~/.cds/models``) and further :func:`cds.sources.cohort.load_cohort` keywords as ``(name, value)``
    pairs (strings, or tuples of strings for list arguments such as ``image_roots``). Hashable: the
    worker's cache key.

    >>> spec = CohortSpec("c", True, None, load_kwargs=(("image_roots", ("/data/img",)),))
    >>> spec.load_arguments()
    {'validate': True, 'reference_date': None, 'image_roots': ['/data/img']}
    """

    source: str
    validate: bool
    reference_date: str | None
    user_model_dirs: tuple[str, ...] = ()
    load_kwargs: tuple[tuple[str, Any], ...] = ()

    def load_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``load_cohort`` besides the source."""
        extra = {str(k): list(v) if isinstance(v, tuple) else v for k, v in self.load_kwargs}
        return {"validate": self.validate, "reference_date": self.reference_date, **extra}


def worker_state(spec: CohortSpec) -> tuple[Any, Any]:
    """(cohort, registry) for ``spec``, loaded once per worker process and kept (with the networks the
    registry loads as chunks run); torch is set to one thread, so every worker computes the same floats."""
    hit = _STATE.get(spec)
    if hit is None:
        import torch

        from cds.models.registry import ModelRegistry
        from cds.sources.cohort import load_cohort

        torch.set_num_threads(1)
        cohort = load_cohort(spec.source, **spec.load_arguments())
        registry = ModelRegistry(user_dirs=list(spec.user_model_dirs) or None)
        LOADS["cohort"] += 1
        hit = _STATE[spec] = (cohort, registry)
    return hit


def loads() -> dict[str, int]:
    """This worker process's cohort loads and chunks run (for ``client.run(loads)``).

    >>> sorted(loads())
    ['chunks', 'cohort']
    """
    return dict(LOADS)


def run_chunk(spec: CohortSpec, model_id: str, row_keys: Sequence[tuple[str, str]]) -> Any:
    """One model on the rows named by (study UID, series UID), in that order, on this worker."""
    cohort, registry = worker_state(spec)
    img = cohort.imaging
    by_key = dict(zip(_row_keys(img), img.index, strict=True))
    if len(by_key) != len(img):
        raise ParameterError("cohort", f"{spec.source}: imaging series (study UID, series UID) repeat; "
                                       "a cluster run needs them unique (run in one process)")
    missing = [k for k in row_keys if tuple(k) not in by_key]
    if missing:
        raise ParameterError("cohort", f"{spec.source}: the worker's cohort has no imaging series {missing[0]} "
                                       "(do all workers see the same cohort?)")
    rows = img.loc[[by_key[tuple(k)] for k in row_keys]]
    LOADS["chunks"] += 1
    return registry.run(model_id, cohort, studies=rows, workers=0)  # no decode sub-processes in a worker


def _row_keys(rows: Any) -> list[tuple[str, str]]:
    return [(str(s), str(r) if isinstance(r, str) else "") for s, r in zip(rows["study_uid"], rows["series_uid"],
                                                                            strict=True)]


def local_cluster(workers: int, retries: int = 3) -> Any:
    """A ``dask.distributed.LocalCluster`` of ``workers`` single-threaded worker processes (one OpenMP /
    BLAS thread each) on 127.0.0.1, without a dashboard (its health endpoint on a free local port); a
    task whose worker dies is re-run up to ``retries`` times (the scheduler's ``allowed-failures``)."""
    import dask
    from dask.distributed import LocalCluster

    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise ParameterError("--workers", f"{workers!r}: expected a whole number of worker processes") from None
    if n < 1:
        raise ParameterError("--workers", f"{workers}: expected >= 1 worker processes")
    with dask.config.set({"distributed.scheduler.allowed-failures": max(int(retries), 1)}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, env=dict(_WORKER_ENV),
                            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})


def _client(workers: int | None, scheduler: str | None, timeout_s: float, retries: int) -> tuple[Any, Any]:
    """A Client to the cluster asked for, and the LocalCluster started for it (None for ``scheduler``)."""
    from dask.distributed import Client

    if (workers is None) == (scheduler is None):
        raise ParameterError("--workers", "give --workers N (a local cluster) or --scheduler tcp://HOST:PORT")
    if scheduler is not None:
        if not scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ParameterError("--scheduler", f"{scheduler!r}: expected a Dask scheduler address tcp://HOST:PORT")
        try:
            return Client(scheduler, timeout=timeout_s), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ParameterError("--scheduler", f"cannot reach the Dask scheduler at {scheduler} within "
                                                f"{timeout_s:g} s ({type(exc).__name__})") from None
    cluster = local_cluster(workers, retries)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise



def run_distributed(spec: CohortSpec, jobs: Sequence[tuple[str, Any]], *, workers: int | None = None,
                    scheduler: str | None = None, chunk_size: int = 16, retries: int = 3, progress: bool = True,
                    client: Any = None, on_chunk_done: Callable[[int, int], None] | None = None,
                    timeout_s: float = 10.0) -> list[Any]:
    """One :class:`~cds.models.registry.RunResult` per ``(model id, rows)`` job, in job order, each exactly
    what ``registry.run`` gives in one process.

    Exactly one of ``workers`` (start a LocalCluster of that many single-threaded worker processes on
    127.0.0.1, no dashboard, closed at the end), ``scheduler`` (``tcp://HOST:PORT`` of a running cluster,
    left running; unreachable within ``timeout_s`` seconds: :class:`~cds.errors.ParameterError` naming
    ``--scheduler``) or ``client`` (a :class:`dask.distributed.Client` the caller owns). Rows go to the
    workers as (study UID, series UID) keys, ``chunk_size`` per task (rounded up to a whole number of
    batches, :data:`cds.inference.stream.BATCH_SIZE`); a failed or lost task is re-run up to ``retries``
    times. ``on_chunk_done(job, chunk)`` is called as each chunk comes back (in completion order); the
    ``progress`` bar counts studies done (studies/s).
    """
    from dask.distributed import as_completed

    from cds.inference.stream import BATCH_SIZE
    from cds.models.registry import RunResult

    if chunk_size < 1:
        raise ParameterError("chunk_size", f"{chunk_size}: expected >= 1")
    chunk_size = -(-chunk_size // BATCH_SIZE) * BATCH_SIZE
    own, cluster = (client, None) if client is not None else _client(workers, scheduler, timeout_s, retries)
    bar = None
    try:
        futures: dict[Any, tuple[int, int, int]] = {}
        parts: list[list[Any]] = []
        n_rows = 0
        for j, (mid, rows) in enumerate(jobs):
            keys = _row_keys(rows)
            n_rows += len(keys)
            chunks = [keys[i:i + chunk_size] for i in range(0, len(keys), chunk_size)]
            parts.append([None] * len(chunks))
            for c, ch in enumerate(chunks):
                fut = own.submit(run_chunk, spec, mid, ch, retries=retries, pure=False, key=f"cds-{mid}-{j}-{c}-"
                                 f"{os.getpid()}-{time.time_ns()}")
                futures[fut] = (j, c, len(ch))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_rows, desc=f"dask ({len(futures)} chunks)", unit="study")
        for fut in as_completed(list(futures)):
            j, c, n = futures[fut]
            res = fut.result()
            parts[j][c] = res
            if on_chunk_done is not None:
                on_chunk_done(j, c)
            if bar is not None:
                bar.update(n)  # the rate shows as study/s
        out = []
        for chunks in parts:
            merged = RunResult()
            for res in chunks:
                merged.findings.extend(res.findings)
                merged.failures.extend(res.failures)
            out.append(merged)
        return out
    finally:
        if bar is not None:
            bar.close()
        if client is None:
            own.close()
            if cluster is not None:
                cluster.close()
