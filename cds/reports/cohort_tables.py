"""The report's cohort description: demographics, most frequent conditions, the cohort figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cds.reports.context import AGE_UNKNOWN, ReportContext

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd
    from matplotlib.figure import Figure



def population(ctx: ReportContext) -> pd.DataFrame:
    p = ctx.cohort.patients
    return p[p["patient_id"].isin(set(ctx.studies["patient_id"]))]


def demographics_table(ctx: ReportContext) -> pd.DataFrame:
    """Patients with a study in the window, by age band (at the reference date) and sex."""
    import pandas as pd

    from cds.reports.overview import age_band

    p = population(ctx)
    band = age_band(p["age_years"]).astype(object).where(p["age_years"].notna(), AGE_UNKNOWN)
    t = pd.crosstab(band.rename("age band"), p["sex"].fillna("unknown").rename("sex"), margins=True, margins_name="all")
    order = [b for b in ["0-17", "18-39", "40-64", "65-79", "80+", AGE_UNKNOWN, "all"] if b in t.index]
    return t.loc[order]


def conditions_table(ctx: ReportContext, n: int = 10) -> pd.DataFrame:
    """The ``n`` conditions held by most patients of the report population (patients, share)."""
    import pandas as pd

    pop = population(ctx)
    c = ctx.cohort.conditions
    c = c[c["patient_id"].isin(set(pop["patient_id"]))].dropna(subset=["display"])
    if c.empty:
        return pd.DataFrame({"condition": ["(no Condition resources for these patients)"], "code": [""],
                             "patients": [0], "share": [0.0]})
    t = (c.groupby(["display", "code"])["patient_id"].nunique().rename("patients")
         .sort_values(ascending=False, kind="stable").head(n).reset_index()
         .rename(columns={"display": "condition"}))
    t["share"] = (t["patients"] / max(len(pop), 1)).round(3)
    return t


def plot_cohort(ctx: ReportContext) -> Figure:
    """Age by sex, imaging studies per patient (and by modality), top conditions."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4), layout="constrained")
    a1, a2, a3 = fig.subplots(1, 3)
    p = population(ctx)
    known = p["age_years"].notna()
    for sex, grp in p[known].groupby(p["sex"].fillna("unknown")):
        a1.hist(grp["age_years"], bins=np.arange(0, 111, 10), alpha=0.6, label=f"{sex} (n={len(grp)})")
    a1.set(xlabel="age (years) at reference date", ylabel="patients", title="Age by sex")
    if (~known).any():
        a1.text(0.02, 0.95, f"age unknown: {int((~known).sum())} of {len(p)}\n(no birth date in the record)",
                transform=a1.transAxes, va="top", fontsize=8)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(fontsize=8)
    st = ctx.studies.drop_duplicates("study_uid")
    if len(st):
        per = st.groupby("patient_id").size()
        mods = ", ".join(f"{k} {v}" for k, v in st["modality"].fillna("?").value_counts().sort_index().items())
        a2.hist(per, bins=np.arange(0.5, per.max() + 1.5, 1), color="#4c72b0")
        a2.text(0.98, 0.95, f"studies by modality:\n{mods}", transform=a2.transAxes, ha="right", va="top", fontsize=8)
    a2.set(xlabel="imaging studies in the window", ylabel="patients", title="Studies per patient")
    top = conditions_table(ctx, 8).iloc[::-1]
    labels = [str(d) if len(str(d)) <= 34 else str(d)[:31] + "..." for d in top["condition"]]
    a3.barh(labels, top["patients"], color="#55a868")
    a3.set(xlabel="patients", title="Most frequent conditions")
    a3.tick_params(axis="y", labelsize=7)
    return fig
