"""Outcome labels from the FHIR record for the report's evaluation (ICU admission from Encounters)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cds.reports.context import ReportContext
from cds.reports.model_runs import eligible_studies

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd



def icu_labels(cohort: Any, studies: pd.DataFrame) -> pd.DataFrame:
    """ICU-admission labels from FHIR Encounters, per study (day resolution).

    An ICU stay is an Encounter whose type says "intensive care" (SNOMED 305351004 "Admission to
    intensive care unit" in the sample cohort). Per study: ``label`` 1 when the patient's first ICU
    stay starts on or after the study's day, 0 when the patient has no ICU stay, missing when the ICU
    stay began before the study's day (already admitted: not a prediction). ``evaluate`` marks the
    first study of each patient in scope (the model card's population: the first radiograph), when
    its label is known.

    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> enc = pd.DataFrame({"patient_id": ["a", "b"], "class": ["ACUTE", "ACUTE"],
    ...     "type": ["Admission to intensive care unit"] * 2,
    ...     "start": pd.to_datetime(["2020-04-02", "2020-04-01"], utc=True)})
    >>> st = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "study_uid": ["1", "2", "3", "4"],
    ...     "started": pd.to_datetime(["2020-04-01", "2020-04-03", "2020-04-02", "2020-04-01"], utc=True)})
    >>> icu_labels(SimpleNamespace(encounters=enc), st)[["study_uid", "label", "evaluate"]].values.tolist()
    [['1', 1.0, True], ['2', nan, False], ['3', nan, False], ['4', 0.0, True]]

    A cohort without any ICU stay (e.g. Synthea only) labels every first study 0:

    >>> none = SimpleNamespace(encounters=enc.assign(type="General examination"))
    >>> icu_labels(none, st)["label"].tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    import numpy as np
    import pandas as pd

    enc = cohort.encounters
    is_icu = enc["type"].astype(str).str.contains("intensive care", case=False, na=False) | \
        enc["class"].astype(str).str.fullmatch("ICU", case=False, na=False)
    icu = enc[is_icu].dropna(subset=["start"])
    first_icu = pd.to_datetime(icu["start"], utc=True).dt.normalize().groupby(icu["patient_id"]).min()
    s = studies.drop_duplicates("study_uid")[["patient_id", "study_uid", "started"]].copy()
    day = pd.to_datetime(s["started"], utc=True).dt.normalize()
    icu_day = pd.to_datetime(s["patient_id"].map(first_icu.to_dict()), utc=True)  # datetime even with no ICU stay at all
    label = np.where(icu_day.isna(), 0.0, np.where(icu_day >= day, 1.0, np.nan))
    label = np.where(day.isna() & icu_day.notna(), np.nan, label)
    s["label"] = label
    s["icu_day_offset"] = (icu_day - day).dt.days
    order = s.assign(_t=day).sort_values(["patient_id", "_t", "study_uid"], kind="stable", na_position="last")
    first = set(order.drop_duplicates("patient_id")["study_uid"])
    s["evaluate"] = s["study_uid"].isin(first) & s["label"].notna()
    return s.sort_values("study_uid", kind="stable").reset_index(drop=True)


#: task -> (label function, one-line description of the label). Tasks without an entry have no outcome
#: label in FHIR: their triage positives are the AI's own positive calls and no performance is computed.
LABEL_SOURCES: dict[str, tuple[Any, str]] = {
    "cxr-icu": (icu_labels, "ICU admission (an Encounter typed 'intensive care') on or after the day of the "
                            "radiograph; studies taken after the ICU admission are unlabelled"),
}


#: The columns of a labels table (:func:`icu_labels`); an empty one stands in when no label could be derived.
LABEL_COLUMNS = ("patient_id", "study_uid", "started", "label", "icu_day_offset", "evaluate")


def study_labels(ctx: ReportContext, mid: str) -> pd.DataFrame | None:
    """Outcome labels for a model's eligible studies, or None when its task has no label source.

    When the label step cannot derive labels from this cohort's records (a table or a field it needs is
    absent or malformed) the report goes on: the labels are an empty table and :func:`label_problem`
    says why (the performance section shows it instead of numbers).
    """
    key = f"labels:{mid}"
    if key not in ctx.cache:
        src = LABEL_SOURCES.get(ctx.registry.task_of(mid))
        if src is None:
            ctx.cache[key] = None
        else:
            try:
                ctx.cache[key] = src[0](ctx.cohort, eligible_studies(ctx.registry.get(mid).model_card, ctx.studies))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                import pandas as pd

                ctx.cache[f"label_problem:{mid}"] = (f"the outcome label could not be derived from this cohort's "
                                                     f"records ({type(exc).__name__}: {ctx.scrub(exc)})")
                dtypes = {"label": float, "icu_day_offset": float, "evaluate": bool}
                ctx.cache[key] = pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, object)) for c in LABEL_COLUMNS})
    return ctx.cache[key]


def label_problem(ctx: ReportContext, mid: str) -> str | None:
    """Why :func:`study_labels` found no labels for ``mid`` in this cohort's records, or None."""
    study_labels(ctx, mid)
    return ctx.cache.get(f"label_problem:{mid}")
