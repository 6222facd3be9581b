"""Helpers the 2D classifier tasks (pneumonia, cxr-cardiomegaly, cxr-icu) share at prediction time.

EHR inputs by name or source (:func:`ehr_value`), Findings from one probability with the card's
threshold and band (:func:`findings_from_probability`), comparator networks a bundle lists
(:func:`load_comparator`), and choice checks. The rest of what these tasks use has its own module:
inputs (:mod:`cds.models.tasks.inputs`), networks (:mod:`cds.models.networks`), training
(:mod:`cds.models.training`), GradCAM (:mod:`cds.models.explain`), metrics
(:mod:`cds.evaluation.metrics`) and card files (:mod:`cds.models.card_files`).

>>> check_choice("auto", ("auto", "all"), "split")
'auto'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cds.codes import LOINC, SNOMED  # re-exported: tasks and older bundles import them from here
from cds.errors import ModelInputError, ParameterError
from cds.models.networks import tabular_cnn2d  # noqa: F401 - bundles written before 2026-12 name it here

__all__ = ["SNOMED", "LOINC", "as_bundle", "load_comparator", "ehr_value", "findings_from_probability", "check_choice"]


def as_bundle(bundle: Any) -> Any:
    """A :class:`cds.models.bundle.Bundle` from a Bundle or a bundle folder path."""
    from cds.models.bundle import Bundle, load_bundle

    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def load_comparator(bundle: Any, key: str) -> Any:
    """Build and load an extra network listed under ``inference.json["comparators"][key]``."""
    import torch
    from monai.bundle import ConfigParser

    from cds.models.bundle import BundleError

    b = as_bundle(bundle)
    spec = b.inference.get("comparators", {}).get(key)
    if spec is None:
        raise BundleError(f"{b.path}/configs/inference.json: no comparator {key!r}")
    net = ConfigParser({"net": spec["network_def"]}).get_parsed_content("net", instantiate=True)
    w = b.path / "models" / spec["weights"]
    if not w.exists():
        raise BundleError(f"{w}: weights file missing")
    net.load_state_dict(torch.load(w, map_location="cpu", weights_only=True))
    return net.eval()


def ehr_value(ehr: dict[str, Any] | None, spec: dict[str, Any]) -> Any:
    """The value of one declared EHR input, looked up by its ``name`` or its ``source``.

    >>> ehr_value({"patient.age_years": 61}, {"name": "age", "source": "patient.age_years"})
    61
    >>> ehr_value({}, {"name": "age", "source": "patient.age_years"})
    Traceback (most recent call last):
    ...
    cds.errors.ModelInputError: age: EHR input missing (source patient.age_years); pass it in ehr['age']
    """
    ehr = ehr or {}
    for key in (spec["name"], spec.get("source")):
        if key is not None and key in ehr:
            return ehr[key]
    raise ModelInputError(spec["name"], f"EHR input missing (source {spec.get('source')}); "
                                        f"pass it in ehr['{spec['name']}']")


def _json_value(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        v = float(v)
        return v if np.isfinite(v) else (">" if v > 0 else "<") + "detection limit"
    if isinstance(v, np.integer):
        return int(v)
    return v


def findings_from_probability(
    bundle: Any,
    probability: float,
    patient_id: str,
    study_uid: str,
    series_uid: str | None,
    instance_uids: Sequence[str],
    ehr_inputs: dict[str, Any] | None,
    explanation: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Any]:
    """One :class:`cds.finding.Finding` per card output, with the card's threshold and band."""
    from cds.finding import Finding

    b = as_bundle(bundle)
    card = b.model_card
    out = []
    for o in card.outputs:
        out.append(Finding(
            patient_id=str(patient_id), study_uid=str(study_uid), code_system=o.code_system, code=o.code,
            display=o.display, model_id=b.model_id, model_version=b.version, probability=float(probability),
            threshold=card.threshold, indeterminate=card.indeterminate,
            series_uid=series_uid, instance_uids=tuple(str(u) for u in instance_uids),
            ehr_inputs={k: _json_value(v) for k, v in (ehr_inputs or {}).items()}, explanation=explanation,
            prognostic=card.prognostic, extra=dict(extra or {}),
        ))
    return out


def check_choice(value: str, choices: Sequence[str], parameter: str) -> str:
    """``value`` if it is one of ``choices``, else :class:`cds.errors.ParameterError` naming ``parameter``.

    >>> check_choice("all", ["auto", "all"], "split")
    'all'
    """
    if value not in choices:
        raise ParameterError(parameter, f"{value!r} is not one of {', '.join(map(repr, choices))}")
    return value
