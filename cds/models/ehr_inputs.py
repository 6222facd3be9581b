"""The EHR values a model card declares, pulled from the cohort's FHIR tables for one study.

:func:`ehr_inputs_for` returns an :class:`EhrInputs`: a dict of values keyed by the input's name
*and* its source (what task code reads), plus the ids of the FHIR Observations the values came from
(what the FHIR writer cites), so nobody has to find them again by matching values.

>>> e = EhrInputs({"crp": 6.0, "observation:1988-5": 6.0}, observation_ids={"observation:1988-5": "o1"})
>>> e["crp"], e.observation_ids
(6.0, {'observation:1988-5': 'o1'})
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cds.errors import ModelInputError, ParameterError
from cds.models.card import ModelCard
from cds.sources.tables import age_years

__all__ = ["EhrInputs", "ehr_inputs_for"]


class EhrInputs(dict):
    """Input values (``name`` and ``source`` keys) plus ``observation_ids``: source -> Observation id."""

    def __init__(self, *args: Any, observation_ids: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.observation_ids: dict[str, str] = dict(observation_ids or {})


def ehr_inputs_for(card: ModelCard | dict[str, Any], cohort: Any, patient_id: str, when: Any) -> EhrInputs:
    """The EHR values a model card declares, for one patient at one time (the study time).

    Sources: ``patient.age_years`` (age at ``when``), ``patient.sex``, and
    ``observation:<LOINC>`` (the result closest to ``when`` inside the input's ``window_days``
    ``[before, after]``, default ``[-2, 2]``). Values are keyed by the input's name *and* source.
    A required input with no value raises :class:`ModelInputError` naming it.
    """
    typed = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
    specs = typed.ehr_inputs
    model_id = typed.model_id
    out = EhrInputs()
    if not specs:
        return out
    if hasattr(cohort, "patient_row"):  # indexed once per cohort: a cohort run stays linear in its size
        prow = cohort.patient_row(patient_id)
    else:
        pat = cohort.patients[cohort.patients["patient_id"] == patient_id]
        prow = pat.iloc[0] if len(pat) else None
    obs = None
    for spec in specs:
        name, source = spec["name"], str(spec.get("source", ""))
        value: Any = None
        if source == "patient.age_years" and prow is not None:
            value = age_years(prow["birth_date"], when)
        elif source == "patient.sex" and prow is not None:
            value = prow["sex"] if isinstance(prow["sex"], str) else None
        elif source.startswith("observation:"):
            code = source.split(":", 1)[1]
            if obs is None:
                obs = _observation_arrays(cohort.patient_rows("observations", patient_id) if hasattr(
                    cohort, "patient_rows") else cohort.patient(patient_id).observations)
            lo, hi = spec.get("window_days", [-2, 2])
            if obs["n"] and not pd.isna(when):
                hit = np.flatnonzero(obs["code"] == code)
                if len(hit):
                    dt = (obs["time"][hit] - pd.Timestamp(when).to_datetime64()) / np.timedelta64(1, "s") / 86400.0
                    keep = (dt >= lo) & (dt <= hi)            # NaT compares False: left out
                    hit, dt = hit[keep], dt[keep]
                    for j in hit[np.argsort(np.abs(dt), kind="stable")]:
                        v, comp = obs["value"][j], obs["comparator"][j]
                        if pd.notna(v):
                            value = float(v)
                        elif comp in ("<", ">"):  # off scale: below / above the detection limit
                            value = -np.inf if comp == "<" else np.inf
                        else:
                            continue
                        oid = obs["observation_id"][j]
                        if isinstance(oid, str):
                            out.observation_ids[source] = oid
                        break
        else:
            raise ParameterError(f"{model_id}: inputs.ehr[{name}].source",
                                 f"unknown EHR source {source!r}")
        if value is None:
            if spec.get("required", True):
                raise ModelInputError(name, f"model {model_id!r} needs EHR input {name!r} "
                                            f"({source}) but patient has none"
                                      + (f" within {spec.get('window_days', [-2, 2])} days of the study"
                                         if source.startswith("observation:") else ""))
            out[name] = None  # optional input: the model imputes it (see the card's "missing")
            if source:
                out[source] = None
            continue
        out[name] = value
        if source:
            out[source] = value
    return out


def _observation_arrays(obs: pd.DataFrame) -> dict[str, Any]:
    """One patient's observations as numpy columns (code, UTC time, value, comparator, id): the EHR
    lookups of a cohort run select from them without building DataFrames per input."""
    t = pd.to_datetime(obs["time"], utc=True) if len(obs) else pd.Series([], dtype="datetime64[ns, UTC]")
    return {"n": len(obs), "code": obs["code"].to_numpy(dtype=object),
            "time": t.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"),
            "value": obs["value"].to_numpy(dtype=object), "comparator": obs["comparator"].to_numpy(dtype=object),
            "observation_id": obs["observation_id"].to_numpy(dtype=object)}
