"""``results.json``: the machine-readable sidecar of a cohort report (findings per study, failures, metrics).

Deterministic: the same input gives byte-identical ``json.dumps`` output (sorted keys, sorted
studies / findings / failures, non-finite numbers as ``null``). Findings are written with
:meth:`cds.finding.Finding.record_dict` (without the study-record context the FHIR writer reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from cds.fhir.writer import unique_findings
from cds.finding import Finding

__all__ = ["results_json", "SCHEMA"]

#: The ``schema`` value of results.json.
SCHEMA = "cds.results/1"


def _plain(x: Any) -> Any:
    """JSON-ready, key-sorted copy: numpy -> Python, non-finite floats -> None, Findings -> dicts."""
    if isinstance(x, Finding):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(x[k]) for k in sorted(x, key=str)}
    if isinstance(x, list | tuple | set | frozenset):
        items = [_plain(v) for v in x]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True)) if isinstance(x, set | frozenset) else items
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item") and callable(x.item):
        try:
            return _plain(x.item())
        except (TypeError, ValueError):
            pass
    if hasattr(x, "tolist") and callable(x.tolist):
        return _plain(x.tolist())
    if hasattr(x, "isoformat") and callable(x.isoformat):
        try:
            return x.isoformat()
        except ValueError:  # NaT
            return None
    return str(x)


def results_json(findings: Iterable[Finding], failures: Iterable[Mapping[str, Any]] = (),
                 cohort_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``results.json`` sidecar of a report: findings per study, failures and cohort metrics.

    Studies are sorted by (patient, study UID), findings by (model, version, code, id), failures by
    (patient, study, model, message); every dict has sorted keys and non-finite numbers become
    ``null``, so ``json.dumps`` of the result is byte-identical for the same input.

    >>> f = Finding("p1", "1.2", "s", "c", "d", "m", "1", probability=0.7, threshold=0.5)
    >>> r = results_json([f], [{"patient_id": "p2", "study_uid": "9", "error": "X", "message": "bad"}],
    ...                  {"auroc": 0.8})
    >>> r["n_findings"], r["studies"][0]["findings"][0]["interpretation"], r["metrics"]
    (1, 'positive', {'auroc': 0.8})
    """
    fs = unique_findings(findings)
    studies: dict[tuple[str, str], list[Finding]] = {}
    for f in fs:
        studies.setdefault((f.patient_id, f.study_uid), []).append(f)
    fails = [_plain(x.to_dict() if hasattr(x, "to_dict") else dict(x)) for x in failures]
    fails.sort(key=lambda d: tuple(str(d.get(k, "")) for k in ("patient_id", "study_uid", "model_id", "message")))
    out = {
        "schema": SCHEMA,
        "n_findings": len(fs),
        "n_studies": len(studies),
        "n_failures": len(fails),
        "studies": [{"patient_id": p, "study_uid": s,
                     "findings": [f.record_dict() for f in sorted(studies[(p, s)], key=lambda f: (
                         f.model_id, f.model_version, f.code_system, f.code, f.id))]}
                    for p, s in sorted(studies)],
        "failures": fails,
        "metrics": dict(cohort_metrics or {}),
    }
    return _plain(out)
