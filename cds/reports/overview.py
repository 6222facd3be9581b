"""Cohort overview: the tables and figures the overview notebook shows (numbers and matplotlib).

All functions take a :class:`cds.sources.cohort.Cohort` and return a DataFrame or a matplotlib Figure,
so the notebook is only calls and displays.

>>> import pandas as pd
>>> age_band(pd.Series([5.0, 47.0, 81.0])).tolist()
['0-17', '40-64', '80+']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cds.sources.cohort import Cohort

__all__ = ["age_band", "demographics", "top_conditions", "lab_summary", "imaging_per_patient",
           "plot_demographics", "plot_conditions", "plot_labs", "plot_imaging", "KEY_LABS"]

_BANDS = [0, 18, 40, 65, 80, np.inf]
_BAND_LABELS = ["0-17", "18-39", "40-64", "65-79", "80+"]

#: LOINC codes of labs the overview plots first when present (else the most frequent labs).
KEY_LABS = ["1988-5", "2532-0", "48065-7", "731-0", "751-8", "11557-6", "11556-8", "27815-0",
            "2160-0", "2093-3", "4548-4", "6690-2", "718-7"]


def age_band(age: pd.Series) -> pd.Series:
    """Age in years → clinical age band."""
    return pd.cut(age, _BANDS, right=False, labels=_BAND_LABELS)


def demographics(cohort: Cohort) -> pd.DataFrame:
    """Patients by sex and age band (ages unknown when the source redacts birth dates)."""
    p = cohort.patients.assign(age_band=age_band(cohort.patients["age_years"]).astype(object).fillna("unknown"))
    table = pd.crosstab(p["age_band"], p["sex"].fillna("unknown"), margins=True, margins_name="all")
    order = [b for b in [*_BAND_LABELS, "unknown", "all"] if b in table.index]
    return table.loc[order]


def top_conditions(cohort: Cohort, n: int = 15) -> pd.DataFrame:
    """The ``n`` conditions held by most patients (patients, not records)."""
    c = cohort.conditions.dropna(subset=["display"])
    counts = (c.groupby(["code", "display"])["patient_id"].nunique().rename("patients")
              .sort_values(ascending=False, kind="stable").head(n).reset_index())
    counts["share"] = (counts["patients"] / max(len(cohort.patients), 1)).round(3)
    return counts


def _lab_codes(cohort: Cohort, n: int) -> list[str]:
    obs = cohort.observations.dropna(subset=["value"])
    present = set(obs["code"])
    codes = [c for c in KEY_LABS if c in present]
    if len(codes) < n:
        lab = obs[obs["category"] == "laboratory"]
        frequent = lab["code"].value_counts().index.tolist()
        codes += [c for c in frequent if c not in codes]
    return codes[:n]


def lab_summary(cohort: Cohort, n: int = 8) -> pd.DataFrame:
    """Distribution of the key numeric labs: patients, results, median and IQR, unit."""
    obs = cohort.observations.dropna(subset=["value"])
    rows = []
    for code in _lab_codes(cohort, n):
        o = obs[obs["code"] == code]
        q = o["value"].quantile([0.25, 0.5, 0.75])
        rows.append({"code": code, "display": o["display"].mode().iat[0], "unit": o["unit"].mode().iat[0]
                     if o["unit"].notna().any() else None, "patients": o["patient_id"].nunique(),
                     "results": len(o), "median": q[0.5], "q1": q[0.25], "q3": q[0.75]})
    cols = ["code", "display", "unit", "patients", "results", "median", "q1", "q3"]
    return pd.DataFrame(rows, columns=cols).round(2)


def imaging_per_patient(cohort: Cohort) -> pd.DataFrame:
    """Imaging series per patient by modality, and how many have pixels available."""
    img = cohort.imaging
    if img.empty:
        return pd.DataFrame(columns=["modality", "patients", "series", "with_pixels", "series_per_patient"])
    g = img.groupby("modality")
    out = pd.DataFrame({"patients": g["patient_id"].nunique(), "series": g.size(),
                        "with_pixels": g["pixel_location"].apply(lambda s: int(s.notna().sum()))})
    out["series_per_patient"] = (out["series"] / out["patients"]).round(2)
    return out.reset_index()


def _fig(ncols: int = 1, width: float = 9.0, height: float = 3.6) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_demographics(cohort: Cohort) -> Figure:
    """Age histogram by sex, and patient counts by sex and vital status."""
    fig, (a1, a2) = _fig(2)
    p = cohort.patients
    for sex, grp in p.groupby(p["sex"].fillna("unknown")):
        ages = grp["age_years"].dropna()
        if len(ages):
            a1.hist(ages, bins=np.arange(0, 111, 10), alpha=0.6, label=f"{sex} (n={len(ages)})")
    a1.set(xlabel="age (years) at reference date or death", ylabel="patients", title="Age by sex")
    if a1.get_legend_handles_labels()[0]:
        a1.legend()
    status = p.assign(status=np.where(p["deceased"], "deceased", "alive"))
    ct = pd.crosstab(status["sex"].fillna("unknown"), status["status"])
    ct.plot.bar(ax=a2, stacked=True, rot=0)
    a2.set(xlabel="sex", ylabel="patients", title="Sex and vital status")
    return fig


def plot_conditions(cohort: Cohort, n: int = 12) -> Figure:
    """Horizontal bars: patients per condition (top ``n``)."""
    top = top_conditions(cohort, n).iloc[::-1]
    fig, ax = _fig(1, height=max(2.5, 0.3 * len(top) + 1))
    labels = [d if len(d) <= 45 else d[:42] + "..." for d in top["display"]]
    ax.barh(labels, top["patients"], color="#4c72b0")
    ax.set(xlabel="patients", title=f"Most frequent conditions (top {len(top)})")
    return fig


def plot_labs(cohort: Cohort, n: int = 8) -> Figure:
    """One box plot per key lab (values on each lab's own scale)."""
    codes = _lab_codes(cohort, n)
    obs = cohort.observations.dropna(subset=["value"])
    ncols = max(1, min(4, len(codes)))
    nrows = max(1, int(np.ceil(len(codes) / ncols)))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * ncols, 2.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, code in zip(axes, codes, strict=False):
        o = obs[obs["code"] == code]
        ax.boxplot(o["value"], vert=True, widths=0.5)
        unit = o["unit"].mode().iat[0] if o["unit"].notna().any() else ""
        name = str(o["display"].mode().iat[0])
        ax.set_title(name if len(name) <= 28 else name[:25] + "...", fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks([1], [f"n={len(o)}"])
    for ax in axes[len(codes):]:
        ax.axis("off")
    fig.suptitle("Lab value distributions")
    return fig


def plot_imaging(cohort: Cohort) -> Figure:
    """Imaging series per patient (histogram) and series by modality."""
    fig, (a1, a2) = _fig(2)
    img = cohort.imaging
    per = img.groupby("patient_id").size().reindex(cohort.patients["patient_id"], fill_value=0)
    a1.hist(per, bins=np.arange(0, max(per.max(), 1) + 2) - 0.5, color="#55a868")
    a1.set(xlabel="imaging series per patient", ylabel="patients", title="Imaging per patient")
    mod = img["modality"].value_counts().sort_index()
    a2.bar(mod.index.astype(str), mod.values, color="#c44e52")
    a2.set(xlabel="modality", ylabel="series", title="Series by modality")
    return fig
