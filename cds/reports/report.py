"""Scheduled cohort reports: run models on a FHIR cohort, measure triage and performance, write FHIR results.

The report is the notebook ``notebooks/cohort_report.ipynb`` (thin: a ``parameters`` cell, then calls
into this module) run by :func:`run_report` through papermill; ``cds report`` is the command-line face
(:func:`main_report`). One run writes into its output folder

==========================  ========================================================================
``report.html``             the executed notebook without code cells (tables and matplotlib figures)
``cohort_report.ipynb``     the executed notebook
``results.json``            per-study findings, per-study failures, cohort metrics
                            (:func:`cds.reports.results_json.results_json`; byte-identical)
``results.fhir.json``       the R4 transaction Bundle of AI results (:func:`cds.fhir.writer.results_bundle`)
``figures/*.png``           the figures of the report
``post_outcome.json``       only with ``post=True``: the server's answer per resource
==========================  ========================================================================

Parameters (``PARAMETERS``, type-checked by :func:`validate_report_parameters` before any work):
``cohort`` (folder, Bundle/ndjson file or FHIR base URL), ``models`` (list of model ids),
``start_date``/``end_date`` (``YYYY-MM-DD`` or ``-Nd`` = N days before ``reference_date``; studies are
kept when their start lies in ``[start 00:00, end 24:00)`` UTC), ``out_dir``, ``deidentify`` + ``salt``
(the salt is best given in ``$CDS_REPORT_SALT`` so it never appears in an output), ``thresholds``
(model id -> decision threshold replacing the card's; the card's indeterminate band is then dropped,
since it was set around the card's threshold), ``reference_date`` (ages are computed at it and
the FHIR ``recorded`` instant is its midnight UTC, so reruns give the same bytes),
``minutes_per_study`` (triage simulation), ``n_boot`` (bootstrap resamples) and ``validate``.

Triage simulation (:func:`simulate_reading`): one reader reads the studies one at a time, a fixed
``minutes_per_study`` each, never idle while a study waits. Each study arrives at its start time
(the sample cohort has day resolution: all studies of a day arrive at 00:00). Whenever the reader is
free, first-come-first-served takes the waiting study that arrived first (ties: study UID), the AI
order takes the waiting study highest on the AI worklist (:func:`cds.review.worklist.build_worklist`:
positive, then indeterminate, measured, negative, no AI result; by margin over the threshold, then wait).
Time-to-read = end of its reading minus arrival. Positives are outcome labels from FHIR where the
model's task has a label source (ICU admission from Encounters for ``cxr-icu``), else the AI's own
positive call (circular: it shows how far the AI moves its own positives forward, not a benefit).

>>> spec = parameter_spec()
>>> sorted(spec)[:4]
['cohort', 'deidentify', 'end_date', 'minutes_per_study']
>>> resolve_date("-7d", "2026-01-08"), resolve_date(None, "2026-01-08")
('2026-01-01', None)
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import CdsError, ParameterError
from cds.params import Param, validate_parameters

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)
    import argparse

    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from cds.finding import Failure

__all__ = [
    "NOTEBOOK", "SALT_ENV", "DEFAULT_MODELS", "NOTEBOOK_NAMES", "LABEL_SOURCES", "IdentifierLeak", "ReportContext",
    "parameter_spec", "validate_report_parameters", "check_notebook_parameters", "parameters_from_namespace",
    "resolve_date", "prepare", "run_models", "apply_thresholds", "simulate_reading", "icu_labels",
    "expected_calibration_error", "roc_points", "triage", "evaluate", "identifying_strings", "find_identifiers",
    "check_deidentified", "write_outputs", "run_report", "add_report_arguments", "main_report",
]

NOTEBOOK = "cohort_report.ipynb"
#: Environment variable holding the de-identification salt (kept out of every output).
SALT_ENV = "CDS_REPORT_SALT"
DEFAULT_MODELS = ("pneumonia", "cxr-icu", "cxr-cardiomegaly")
#: Names the report notebook itself assigns; every other global defined before the validation cell is
#: a parameter (papermill injects parameters as plain assignments and only warns on unknown ones).
NOTEBOOK_NAMES = frozenset({"rp", "params", "ctx", "written"})
OUTPUT_FILES = ("report.html", NOTEBOOK, "results.json", "results.fhir.json")
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_RELATIVE = re.compile(r"^-(\d{1,5})d$")
_AGE_UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------- parameters
def _is_iso_date(v: str) -> bool:
    try:
        date.fromisoformat(v)
    except ValueError:
        return False
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v))


def _date_or_relative(v: str) -> bool:
    return _is_iso_date(v) or bool(_RELATIVE.match(v))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def parameter_spec() -> dict[str, Param]:
    """The report's parameters: type, default, check and hint (see the module docstring)."""
    return {
        "cohort": Param(str, "../fhir_samples", check=lambda v: bool(v.strip()),
                        hint="a folder, a .json Bundle, an .ndjson file or a FHIR base URL http(s)://..."),
        "models": Param(list, list(DEFAULT_MODELS),
                        check=lambda v: len(v) > 0 and all(isinstance(x, str) and x for x in v),
                        hint="a non-empty list of model ids (strings), e.g. ['pneumonia', 'cxr-icu']"),
        "start_date": Param(str, None, nullable=True, check=_date_or_relative,
                            hint="YYYY-MM-DD, or -Nd for N days before reference_date, or None"),
        "end_date": Param(str, None, nullable=True, check=_date_or_relative,
                          hint="YYYY-MM-DD (inclusive), or -Nd for N days before reference_date, or None"),
        "out_dir": Param(str, "../out/report", check=lambda v: bool(v.strip()), hint="an output folder"),
        "deidentify": Param(bool, False),
        "salt": Param(str, None, nullable=True, check=lambda v: bool(v),
                      hint=f"a non-empty secret (better: set ${SALT_ENV} and leave salt None)"),
        "thresholds": Param(dict, {}, check=lambda v: all(isinstance(k, str) for k in v),
                            hint="model id -> decision threshold, e.g. {'cxr-icu': 0.4}"),
        "reference_date": Param(str, "2026-01-01", check=_is_iso_date, hint="a date YYYY-MM-DD"),
        "minutes_per_study": Param(float, 5.0, check=lambda v: math.isfinite(v) and 0 < v <= 1440,
                                   hint="reading minutes per study, > 0 and <= 1440"),
        "n_boot": Param(int, 2000, check=lambda v: 0 <= v <= 100_000, hint="bootstrap resamples, 0..100000"),
        "validate": Param(bool, True),
    }


PARAMETERS = tuple(parameter_spec())


def resolve_date(value: str | None, reference_date: str) -> str | None:
    """``YYYY-MM-DD`` as given, ``-Nd`` as N days before ``reference_date``, ``None`` as None.

    >>> resolve_date("2020-04-01", "2026-01-01"), resolve_date("-0d", "2026-01-01")
    ('2020-04-01', '2026-01-01')
    """
    if value is None:
        return None
    m = _RELATIVE.match(value)
    if m:
        return (date.fromisoformat(reference_date) - timedelta(days=int(m.group(1)))).isoformat()
    return date.fromisoformat(value).isoformat()


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def validate_report_parameters(values: Mapping[str, Any], registry: Any = None) -> dict[str, Any]:
    """Check every report parameter and return them all (defaults filled in); no work is done.

    Raises :class:`cds.errors.ParameterError` naming the parameter: an unknown name, a wrong type,
    a cohort path that does not exist, an unknown model id, a threshold for a model not run, a bad
    date or window, or ``deidentify=True`` without a salt (parameter or ``$CDS_REPORT_SALT``).
    The returned ``salt`` is resolved from the environment when the parameter is None.

    >>> validate_report_parameters({"modles": ["pneumonia"]})
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: modles: unknown parameter (did you mean 'models'?); known: cohort, models, \
start_date, end_date, out_dir, deidentify, salt, thresholds, reference_date, minutes_per_study, n_boot, validate
    """
    out = validate_parameters(values, parameter_spec())
    out["models"] = list(out["models"])
    out["thresholds"] = dict(out["thresholds"])
    src = out["cohort"]
    if not _is_url(src) and not Path(src).exists():
        raise ParameterError("cohort", f"{src!r} does not exist; give a folder, a .json Bundle, an .ndjson file "
                                       "or a FHIR server base URL (http(s)://...)")
    if registry is None:
        from cds.models.registry import ModelRegistry

        registry = ModelRegistry()
    known = registry.ids()
    dupes = sorted({m for m in out["models"] if out["models"].count(m) > 1})
    if dupes:
        raise ParameterError("models", f"model(s) listed twice: {', '.join(dupes)}")
    unknown = [m for m in out["models"] if m not in known]
    if unknown:
        raise ParameterError("models", f"unknown model(s) {', '.join(map(repr, unknown))}; available: "
                                       f"{', '.join(known)}")
    for mid, thr in out["thresholds"].items():
        if mid not in out["models"]:
            raise ParameterError("thresholds", f"{mid!r} is not one of the models run ({', '.join(out['models'])})")
        if not _number(thr):
            raise ParameterError(f"thresholds[{mid!r}]", f"expected a finite number, got {type(thr).__name__} {thr!r}")
        out["thresholds"][mid] = float(thr)
    start = resolve_date(out["start_date"], out["reference_date"])
    end = resolve_date(out["end_date"], out["reference_date"])
    if start and end and end < start:
        raise ParameterError("end_date", f"end_date {end} is before start_date {start}")
    if out["deidentify"]:
        salt = out["salt"] or os.environ.get(SALT_ENV) or None
        if not salt:
            raise ParameterError("salt", f"deidentify=True needs a secret salt: set ${SALT_ENV} (it then never "
                                         "appears in an output) or pass salt; keep it to get the same pseudonyms")
        out["salt"] = salt
    return out


def parameters_from_namespace(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters among a notebook's globals: every name not starting with ``_`` that is not a
    module, an IPython name or a name the report notebook assigns itself (:data:`NOTEBOOK_NAMES`).

    >>> import math as m
    >>> parameters_from_namespace({"cohort": "x", "_": 1, "rp": None, "m": m, "In": []})
    {'cohort': 'x'}
    """
    import types

    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and k not in _IPYTHON_NAMES and k not in NOTEBOOK_NAMES
            and not isinstance(v, types.ModuleType)}


def check_notebook_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's first cell after ``parameters``: validate its globals (see :func:`parameters_from_namespace`)."""
    params = validate_report_parameters(parameters_from_namespace(namespace))
    public = {k: ("(secret)" if k == "salt" and v else v) for k, v in params.items()}
    for k, v in public.items():
        print(f"{k:>18}: {v!r}")
    return params


def _public_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """What results.json records: everything but the salt and the output folder (reruns elsewhere match)."""
    return {k: v for k, v in params.items() if k not in ("salt", "out_dir")}


# ------------------------------------------------------------------------------------------- context
@dataclass
class ReportContext:
    """Everything one report run holds: parameters, cohort, studies in scope, findings and failures."""

    params: dict[str, Any]
    cohort: Any
    registry: Any
    out_dir: Path
    studies: Any
    scope: dict[str, Any]
    recorded: str
    start: Any = None
    end: Any = None
    findings: list[Any] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    identifiers: dict[str, set[str]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def deidentify(self) -> bool:
        return bool(self.params["deidentify"])

    @property
    def salt(self) -> str | None:
        return self.params.get("salt")

    @property
    def models(self) -> list[str]:
        return list(self.params["models"])

    @property
    def reference(self) -> Any:
        import pandas as pd

        return pd.Timestamp(self.params["reference_date"], tz="UTC")

    def case(self, patient_id: str) -> str:
        """How a patient is named in tables: the id, or the first 8 characters of its pseudonym."""
        if not self.deidentify:
            return str(patient_id)
        return _pseudonyms(str(patient_id), "", self.salt or "")[0][:8]

    def study(self, study_uid: str) -> str:
        """How a study is named in tables: the UID, or the last 10 digits of its pseudonymous UID."""
        if not self.deidentify:
            return str(study_uid)
        return "..." + _pseudonyms("", str(study_uid), self.salt or "")[1][-10:]

    def scrub(self, text: Any) -> str:
        """A message safe to show: in de-identified mode identifiers and file paths become ``[removed]``."""
        s = "" if text is None else str(text)
        if not self.deidentify:
            return s
        s = re.sub(r"(?:[A-Za-z]:\\|/)[^\s'\":,;()]+", "[path removed]", s)
        for kind in ("uid", "patient_id", "resource_id", "identifier", "birth_date", "name"):
            for ident in sorted(self.identifiers.get(kind, ()), key=len, reverse=True):
                if ident and ident in s:
                    s = _replace_ident(s, ident, kind)
        return s

    def figure(self, fig: Figure, name: str) -> Any:
        """Save ``fig`` as ``figures/<name>.png`` in the output folder; return the PNG for display (an
        ``IPython.display.Image``, so it shows as an image with or without a matplotlib backend)."""
        from IPython.display import Image

        d = self.out_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.png"
        fig.savefig(path, dpi=100)
        return Image(data=path.read_bytes(), format="png")


def _replace_ident(text: str, ident: str, kind: str) -> str:
    if kind == "name":
        return re.sub(rf"(?<![A-Za-z]){re.escape(ident)}(?![A-Za-z])", "[removed]", text)
    return text.replace(ident, "[removed]")


def _pseudonyms(patient_id: str, study_uid: str, salt: str) -> tuple[str, str]:
    """The patient pseudonym and study UID pseudonym :mod:`cds.privacy` gives for this salt."""
    from cds.privacy import pseudonyms

    return pseudonyms(patient_id, study_uid, salt)


def _window(imaging: pd.DataFrame, start: str | None, end: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    import pandas as pd

    started = pd.to_datetime(imaging["started"], utc=True)
    keep = pd.Series(True, index=imaging.index)
    no_time = started.isna()
    if start:
        keep &= started >= pd.Timestamp(start, tz="UTC")
    if end:
        keep &= started < pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1)
    if start or end:
        keep &= ~no_time
    counts = {"series_total": int(len(imaging)), "series_in_window": int(keep.sum()),
              "series_without_time_excluded": int((no_time & ~keep).sum()) if (start or end) else 0,
              "series_outside_window": int((~keep & ~no_time).sum())}
    return imaging[keep.to_numpy()], counts


def prepare(params: Mapping[str, Any]) -> ReportContext:
    """Load the cohort and select the imaging studies in the date window (``params`` already validated)."""
    from cds.models.registry import ModelRegistry
    from cds.sources.cohort import load_cohort

    t0 = time.perf_counter()
    cohort = load_cohort(params["cohort"], validate=params["validate"], reference_date=params["reference_date"])
    start = resolve_date(params["start_date"], params["reference_date"])
    end = resolve_date(params["end_date"], params["reference_date"])
    studies, counts = _window(cohort.imaging, start, end)
    out = Path(params["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    scope = {"patients_in_cohort": int(len(cohort.patients)),
             "patients_with_studies_in_window": int(studies["patient_id"].nunique()),
             "studies_in_window": int(studies["study_uid"].nunique()), **counts,
             "window_start": start, "window_end": end,
             "invalid_resources": len(cohort.invalid_resources), "dangling_references": len(cohort.dangling_references)}
    ctx = ReportContext(params=dict(params), cohort=cohort, registry=ModelRegistry(), out_dir=out, studies=studies,
                        scope=scope, recorded=f"{params['reference_date']}T00:00:00Z", start=start, end=end)
    if ctx.deidentify:
        ctx.identifiers = identifying_strings(params["cohort"], cohort)
    ctx.timings["load_s"] = time.perf_counter() - t0
    return ctx


def describe_scope(ctx: ReportContext) -> None:
    """Print the report's population: patients, studies in the window, what was left out."""
    s = ctx.scope
    window = f"{s['window_start'] or 'any time'} to {s['window_end'] or 'any time'}"
    lines = [("patients in cohort", s["patients_in_cohort"]), ("study date window", window),
             ("studies in window", s["studies_in_window"]),
             ("patients with a study in window", s["patients_with_studies_in_window"]),
             ("series outside the window", s["series_outside_window"]),
             ("series without a time (left out)", s["series_without_time_excluded"]),
             ("invalid FHIR resources (left out)", s["invalid_resources"]),
             ("dangling references", s["dangling_references"])]
    for k, v in lines:
        print(f"{k:>34}: {v}")


# --------------------------------------------------------------------------------- cohort description
def _population(ctx: ReportContext) -> pd.DataFrame:
    p = ctx.cohort.patients
    return p[p["patient_id"].isin(set(ctx.studies["patient_id"]))]


def demographics_table(ctx: ReportContext) -> pd.DataFrame:
    """Patients with a study in the window, by age band (at the reference date) and sex."""
    import pandas as pd

    from cds.reports.overview import age_band

    p = _population(ctx)
    band = age_band(p["age_years"]).astype(object).where(p["age_years"].notna(), _AGE_UNKNOWN)
    t = pd.crosstab(band.rename("age band"), p["sex"].fillna("unknown").rename("sex"), margins=True, margins_name="all")
    order = [b for b in ["0-17", "18-39", "40-64", "65-79", "80+", _AGE_UNKNOWN, "all"] if b in t.index]
    return t.loc[order]


def conditions_table(ctx: ReportContext, n: int = 10) -> pd.DataFrame:
    """The ``n`` conditions held by most patients of the report population (patients, share)."""
    import pandas as pd

    pop = _population(ctx)
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
    p = _population(ctx)
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


# ------------------------------------------------------------------------------------------ running
def _eligible(card: Mapping[str, Any], studies: pd.DataFrame) -> pd.DataFrame:
    mods = card.get("modality")
    if mods:
        mods = [mods] if isinstance(mods, str) else list(mods)
        return studies[studies["modality"].isin(mods)]
    return studies


def apply_thresholds(findings: Sequence[Any], thresholds: Mapping[str, float]) -> list[Any]:
    """Findings with the decision threshold replaced for the models in ``thresholds`` (band dropped).

    >>> from cds.finding import Finding
    >>> f = Finding("p", "1", "s", "c", "d", "m", "1", probability=0.45, threshold=0.5, indeterminate=(0.4, 0.6))
    >>> g = apply_thresholds([f], {"m": 0.4})[0]
    >>> (f.interpretation, g.interpretation, g.indeterminate, g.id == f.id)
    ('indeterminate', 'positive', None, True)
    """
    return [replace(f, threshold=float(thresholds[f.model_id]), indeterminate=None) if f.model_id in thresholds
            else f for f in findings]


def run_models(ctx: ReportContext, progress: bool = True) -> None:
    """Run every model on its eligible studies in the window; collect findings and per-study failures."""
    for mid in ctx.models:
        b = ctx.registry.get(mid)
        rows = _eligible(b.card, ctx.studies)
        t0 = time.perf_counter()
        res = ctx.registry.run(mid, ctx.cohort, studies=rows, progress=progress)
        ctx.timings[f"model:{mid}"] = time.perf_counter() - t0
        ctx.findings.extend(apply_thresholds(res.findings, ctx.params["thresholds"]))
        ctx.failures.extend(res.failures)
        print(f"{mid} {b.version}: {rows['study_uid'].nunique()} eligible studies, {len(res.findings)} findings, "
              f"{len(res.failures)} failed studies ({ctx.timings[f'model:{mid}']:.1f} s)")
    ctx.cache.clear()


def _card_for(ctx: ReportContext, mid: str) -> Any:
    """The model card as results_bundle takes it (threshold overridden when the parameters say so)."""
    b = ctx.registry.get(mid)
    if mid not in ctx.params["thresholds"]:
        return b
    card = dict(b.card, threshold=ctx.params["thresholds"][mid], indeterminate=None)
    return {**b.metadata, "cds": card}


def _threshold(ctx: ReportContext, mid: str) -> tuple[Any, Any, str]:
    card = ctx.registry.get(mid).card
    if mid in ctx.params["thresholds"]:
        return ctx.params["thresholds"][mid], None, "parameter"
    return card.get("threshold"), card.get("indeterminate"), "model card"


def _findings_frame(ctx: ReportContext) -> pd.DataFrame:
    import pandas as pd

    if "findings" not in ctx.cache:
        cols = ["id", "patient_id", "study_uid", "model_id", "model_version", "code", "display", "probability",
                "value", "threshold", "interpretation", "score"]
        ctx.cache["findings"] = pd.DataFrame(
            [{**{k: f.to_dict()[k] for k in cols[:-1]}, "score": f.score} for f in ctx.findings], columns=cols)
    return ctx.cache["findings"]


def _failures_frame(ctx: ReportContext) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([f.to_dict() for f in ctx.failures],
                        columns=["patient_id", "study_uid", "model_id", "error", "message"])


def findings_table(ctx: ReportContext) -> pd.DataFrame:
    """Per model: threshold used, eligible studies, findings by interpretation, failed studies."""
    import pandas as pd

    f = _findings_frame(ctx)
    fails = _failures_frame(ctx)
    rows = []
    for mid in ctx.models:
        b = ctx.registry.get(mid)
        thr, band, src = _threshold(ctx, mid)
        ff = f[f["model_id"] == mid]
        counts = ff["interpretation"].value_counts()
        rows.append({"model": mid, "version": b.version, "task": ctx.registry.task_of(mid),
                     "threshold": thr, "threshold from": src,
                     "indeterminate band": "-" if not band else f"{band[0]:.3g} to {band[1]:.3g}",
                     "eligible studies": int(_eligible(b.card, ctx.studies)["study_uid"].nunique()),
                     "studies with findings": int(ff["study_uid"].nunique()),
                     **{k: int(counts.get(k, 0)) for k in ("positive", "indeterminate", "negative", "measured")},
                     "failed studies": int((fails["model_id"] == mid).sum())})
    return pd.DataFrame(rows).set_index("model")


def plot_scores(ctx: ReportContext) -> Figure:
    """One panel per model: the distribution of its scores with the threshold and indeterminate band."""
    import numpy as np
    from matplotlib.figure import Figure

    n = len(ctx.models)
    fig = Figure(figsize=(4.2 * n, 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    f = _findings_frame(ctx)
    fails = _failures_frame(ctx)
    for ax, mid in zip(axes, ctx.models, strict=True):
        s = f.loc[f["model_id"] == mid, "score"].dropna().astype(float)
        thr, band, _ = _threshold(ctx, mid)
        if len(s):
            prob = bool(f.loc[f["model_id"] == mid, "probability"].notna().all())
            bins = np.linspace(0, 1, 21) if prob else 20
            ax.hist(s, bins=bins, color="#4c72b0")
            if band:
                ax.axvspan(band[0], band[1], color="#dd8452", alpha=0.25, label="indeterminate band")
            if thr is not None:
                ax.axvline(float(thr), color="#c44e52", ls="--", label=f"threshold {float(thr):.3g}")
            ax.legend(fontsize=7)
            ax.set(xlabel="probability" if prob else "value", ylabel="findings")
        else:
            nf = int((fails["model_id"] == mid).sum())
            ax.text(0.5, 0.5, f"no findings\n({nf} studies failed)", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(mid, fontsize=10)
    return fig


def failure_summary(ctx: ReportContext) -> pd.DataFrame:
    """Failed studies grouped by model, error and message (the message scrubbed when de-identified)."""
    import pandas as pd

    fails = _failures_frame(ctx)
    if fails.empty:
        return pd.DataFrame({"model": [], "error": [], "message": [], "studies": []})
    fails = fails.assign(message=fails["message"].map(ctx.scrub))
    t = fails.groupby(["model_id", "error", "message"]).size().rename("studies").reset_index()
    return t.rename(columns={"model_id": "model"}).sort_values(["model", "studies"], ascending=[True, False],
                                                                kind="stable").reset_index(drop=True)


def failures_table(ctx: ReportContext) -> pd.DataFrame:
    """Every failed study: model, patient (or pseudonym), study, error, message."""
    fails = _failures_frame(ctx)
    out = fails.assign(patient=fails["patient_id"].map(ctx.case), study=fails["study_uid"].map(ctx.study),
                       message=fails["message"].map(ctx.scrub))
    return out[["model_id", "patient", "study", "error", "message"]].rename(columns={"model_id": "model"}) \
        .sort_values(["model", "patient", "study"], kind="stable").reset_index(drop=True)


def show(df: pd.DataFrame, max_rows: int = 500) -> None:
    """Display a whole table (up to ``max_rows`` rows, full cell text) in the notebook."""
    import pandas as pd
    from IPython.display import display

    with pd.option_context("display.max_rows", max_rows, "display.min_rows", max_rows, "display.max_colwidth", None):
        display(df)
    if len(df) > max_rows:
        print(f"... {len(df) - max_rows} more rows in results.json")


def show_details(df: pd.DataFrame, summary: str, max_rows: int = 500) -> None:
    """Display a long table folded under a one-line summary (an HTML ``<details>`` element)."""
    import html

    from IPython.display import HTML, display

    more = f"<p>... {len(df) - max_rows} more rows in results.json</p>" if len(df) > max_rows else ""
    display(HTML(f"<details><summary>{html.escape(summary)} ({len(df)} rows)</summary>"
                 f"{df.head(max_rows).to_html(index=False)}{more}</details>"))


# ------------------------------------------------------------------------------------------- labels
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
    icu_day = s["patient_id"].map(first_icu)
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


def study_labels(ctx: ReportContext, mid: str) -> pd.DataFrame | None:
    """Outcome labels for a model's eligible studies, or None when its task has no label source."""
    key = f"labels:{mid}"
    if key not in ctx.cache:
        src = LABEL_SOURCES.get(ctx.registry.task_of(mid))
        ctx.cache[key] = None if src is None else \
            src[0](ctx.cohort, _eligible(ctx.registry.get(mid).card, ctx.studies))
    return ctx.cache[key]


# ------------------------------------------------------------------------------------------- triage
def simulate_reading(arrival_min: Sequence[float], priority: Sequence[float], minutes_per_study: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One reader, one study at a time, ``minutes_per_study`` each, never idle while a study waits.

    Whenever the reader is free, the waiting (arrived, unread) study with the smallest ``priority``
    is read next; when none waits, the reader waits for the next arrival. Returns the finish time of
    every study (minutes, same clock as ``arrival_min``) and the reading order (indices).

    >>> finish, order = simulate_reading([0, 0, 0, 20], [2, 0, 1, 3], 5)
    >>> finish.tolist(), order.tolist()
    ([15.0, 5.0, 10.0, 25.0], [1, 2, 0, 3])
    """
    import heapq

    import numpy as np

    arr = np.asarray(arrival_min, dtype=float)
    pri = np.asarray(priority, dtype=float)
    if len(arr) != len(pri):
        raise ParameterError("priority", f"{len(pri)} priorities for {len(arr)} arrivals")
    if not minutes_per_study > 0:
        raise ParameterError("minutes_per_study", "must be > 0")
    by_arrival = np.lexsort((pri, arr))
    finish = np.full(len(arr), np.nan)
    order: list[int] = []
    heap: list[tuple[float, int]] = []
    t, i = -np.inf, 0
    while len(order) < len(arr):
        if not heap:
            t = max(t, arr[by_arrival[i]])
        while i < len(arr) and arr[by_arrival[i]] <= t:
            k = int(by_arrival[i])
            heapq.heappush(heap, (float(pri[k]), k))
            i += 1
        _, k = heapq.heappop(heap)
        t = t + minutes_per_study
        finish[k] = t
        order.append(k)
    return finish, np.asarray(order, dtype=int)


def _model_findings(ctx: ReportContext, mid: str) -> list[Any]:
    return [f for f in ctx.findings if f.model_id == mid]


def triage(ctx: ReportContext, mid: str) -> dict[str, Any]:
    """The triage simulation for one model: per-study table and summary (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from cds.review.worklist import build_worklist

    key = f"triage:{mid}"
    if key in ctx.cache:
        return ctx.cache[key]
    rows = _eligible(ctx.registry.get(mid).card, ctx.studies)
    wl = build_worklist(rows, _model_findings(ctx, mid), now=ctx.reference)
    if wl.empty:
        ctx.cache[key] = {"table": wl, "summary": {"model": mid, "studies": 0}}
        return ctx.cache[key]
    wl = wl.assign(ai_position=np.arange(1, len(wl) + 1))
    started = pd.to_datetime(wl["started"], utc=True)
    t0 = started.min()
    arrival = ((started - t0).dt.total_seconds() / 60.0).fillna(0.0).to_numpy()
    fcfs = np.lexsort((wl["study_uid"].to_numpy(), arrival))
    fcfs_pos = np.empty(len(wl), dtype=int)
    fcfs_pos[fcfs] = np.arange(1, len(wl) + 1)
    wl["fcfs_position"] = fcfs_pos
    wl["arrival_h"] = arrival / 60.0
    m = float(ctx.params["minutes_per_study"])
    fin_f, _ = simulate_reading(arrival, wl["fcfs_position"].to_numpy(), m)
    fin_a, _ = simulate_reading(arrival, wl["ai_position"].to_numpy(), m)
    wl["ttr_fcfs_min"] = fin_f - arrival
    wl["ttr_ai_min"] = fin_a - arrival
    labels = study_labels(ctx, mid)
    if labels is not None:
        lab = dict(zip(labels["study_uid"], labels["label"], strict=True))
        wl["positive"] = wl["study_uid"].map(lab).astype(float)
        definition = "outcome label: " + LABEL_SOURCES[ctx.registry.task_of(mid)][1]
    else:
        wl["positive"] = (wl["ai_state"] == "positive").astype(float).where(wl["ai_state"] != "no-ai")
        definition = ("the AI's own positive call (no outcome label in FHIR for this task: circular); studies "
                      "without an AI result are unlabelled")
    pos = wl[wl["positive"] == 1]
    neg = wl[wl["positive"] == 0]

    def _stat(s: pd.Series, how: str) -> float | None:
        return None if s.empty else float(getattr(s, how)())

    summary = {
        "model": mid, "studies": int(len(wl)), "positives": int(len(pos)), "negatives": int(len(neg)),
        "unlabelled": int(wl["positive"].isna().sum()), "positive_definition": definition,
        "no_ai_result": int((wl["ai_state"] == "no-ai").sum()), "minutes_per_study": m,
        "median_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "median"),
        "median_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "median"),
        "mean_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "mean"),
        "mean_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "mean"),
        "max_ttr_positives_fcfs_min": _stat(pos["ttr_fcfs_min"], "max"),
        "max_ttr_positives_ai_min": _stat(pos["ttr_ai_min"], "max"),
        "median_ttr_negatives_fcfs_min": _stat(neg["ttr_fcfs_min"], "median"),
        "median_ttr_negatives_ai_min": _stat(neg["ttr_ai_min"], "median"),
        "median_ttr_all_min": _stat(wl["ttr_fcfs_min"], "median"),
    }
    if summary["mean_ttr_positives_fcfs_min"]:
        summary["mean_ttr_positives_change_pct"] = 100.0 * (
            summary["mean_ttr_positives_ai_min"] / summary["mean_ttr_positives_fcfs_min"] - 1.0)
    else:
        summary["mean_ttr_positives_change_pct"] = None
    ctx.cache[key] = {"table": wl, "summary": summary}
    return ctx.cache[key]


def triage_definition(ctx: ReportContext) -> Any:
    """The simulation's definition, as Markdown shown in the report."""
    from IPython.display import Markdown

    m = ctx.params["minutes_per_study"]
    lines = [
        f"**Simulation.** One reader reads the studies of each model one at a time, **{m:g} minutes per "
        "study**, never idle while a study waits. A study arrives at its start time (day resolution in "
        "the sample cohort: a day's studies all arrive at 00:00). When the reader is free, "
        "*first-come-first-served* (FCFS) takes the waiting study that arrived first (ties: study UID); "
        "the *AI order* takes the waiting study highest on the AI worklist (positive, indeterminate, measured, "
        "negative, then studies without an AI result; by margin over the threshold, then waiting time). "
        "**Time-to-read** = end of its reading minus arrival.", "",
        "**Positives** per model:",
    ]
    for mid in ctx.models:
        lines.append(f"- `{mid}`: {triage(ctx, mid)['summary'].get('positive_definition', 'no studies')}")
    lines += ["", "Studies a model could not run on have no AI result and are read last in the AI order. "
              "Every study is read in both orders: the gain for positives is paid by the negatives."]
    return Markdown("\n".join(lines))


def triage_table(ctx: ReportContext) -> pd.DataFrame:
    """Per model: positives and the median / mean time-to-read of positives and negatives, FCFS vs AI."""
    import pandas as pd

    rows = []
    for mid in ctx.models:
        s = triage(ctx, mid)["summary"]

        def r(k: str, s: dict[str, Any] = s) -> float | None:
            return None if s.get(k) is None else round(s[k], 1)

        rows.append({"model": mid, "studies": s.get("studies", 0), "positives": s.get("positives", 0),
                     "negatives": s.get("negatives", 0), "unlabelled": s.get("unlabelled", 0),
                     "no AI result": s.get("no_ai_result", 0),
                     "positives: median min FCFS": r("median_ttr_positives_fcfs_min"),
                     "positives: median min AI": r("median_ttr_positives_ai_min"),
                     "positives: mean min FCFS": r("mean_ttr_positives_fcfs_min"),
                     "positives: mean min AI": r("mean_ttr_positives_ai_min"),
                     "positives: mean change %": r("mean_ttr_positives_change_pct"),
                     "negatives: median min FCFS": r("median_ttr_negatives_fcfs_min"),
                     "negatives: median min AI": r("median_ttr_negatives_ai_min")})
    return pd.DataFrame(rows).set_index("model")


def worklist_head(ctx: ReportContext, n: int = 10) -> pd.DataFrame:
    """The top ``n`` of each model's AI worklist with their FCFS position (patients pseudonymised when
    de-identified)."""
    import pandas as pd

    parts = []
    for mid in ctx.models:
        t = triage(ctx, mid)["table"]
        if t.empty:
            continue
        h = t.head(n)
        when = {} if ctx.deidentify else {"study date": pd.to_datetime(h["started"], utc=True).dt.strftime("%Y-%m-%d")}
        parts.append(pd.DataFrame({
            "model": mid, "AI position": h["ai_position"], "FCFS position": h["fcfs_position"],
            "patient": h["patient_id"].map(ctx.case), **when, "AI state": h["ai_state"], "score": h["score"].astype(float).round(3),
            "positive": h["positive"].map({1.0: "yes", 0.0: "no"}).fillna("unlabelled"),
            "time-to-read FCFS (min)": h["ttr_fcfs_min"].round(0),
            "time-to-read AI (min)": h["ttr_ai_min"].round(0)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_triage(ctx: ReportContext) -> Figure:
    """Per model: positives read over time (FCFS vs AI), time-to-read of positives, AI vs FCFS position."""
    import numpy as np
    from matplotlib.figure import Figure

    n = len(ctx.models)
    fig = Figure(figsize=(13, 3.3 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 3))
    for row, mid in zip(axes, ctx.models, strict=True):
        tri = triage(ctx, mid)
        t, s = tri["table"], tri["summary"]
        a1, a2, a3 = row
        pos = t[t["positive"] == 1] if not t.empty else t
        if t.empty or pos.empty:
            msg = "no studies" if t.empty else f"no AI results ({s['no_ai_result']} studies failed)" \
                if s["no_ai_result"] == s["studies"] else "no positives to compare"
            for ax in row:
                ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            a1.set_title(f"{mid}", fontsize=10)
            continue
        for col, label, color in (("ttr_fcfs_min", "first come, first served", "#8c8c8c"),
                                  ("ttr_ai_min", "AI worklist order", "#c44e52")):
            ttr = np.sort(pos[col].to_numpy())
            a1.step(np.concatenate([[0], ttr]), np.arange(len(ttr) + 1) / len(ttr), where="post", label=label,
                    color=color)
        a1.set(xlabel="minutes from arrival to read", ylabel="share of positives read",
               title=f"{mid}: positives read within x minutes (n={len(pos)})")
        a1.title.set_fontsize(9)
        a1.legend(fontsize=7, loc="lower right")
        a2.boxplot([pos["ttr_fcfs_min"], pos["ttr_ai_min"]], widths=0.5, showfliers=False)
        a2.set_xticks([1, 2], ["FCFS", "AI order"])
        rng = np.random.default_rng(0)
        for k, col in ((1, "ttr_fcfs_min"), (2, "ttr_ai_min")):
            a2.scatter(k + rng.uniform(-0.12, 0.12, len(pos)), pos[col], s=8, alpha=0.6, color="#4c72b0")
        a2.set(ylabel="time-to-read of positives (min)", title=f"median {s['median_ttr_positives_fcfs_min']:.0f} "
               f"vs {s['median_ttr_positives_ai_min']:.0f} min")
        colors = np.where(t["positive"] == 1, "#c44e52", np.where(t["positive"] == 0, "#4c72b0", "#bbbbbb"))
        a3.scatter(t["fcfs_position"], t["ai_position"], c=colors, s=10)
        lim = len(t) + 1
        a3.plot([0, lim], [0, lim], color="#999999", lw=0.8)
        a3.set(xlabel="FCFS position", ylabel="AI worklist position",
               title="order (red positive, blue negative, grey unlabelled)")
        a3.title.set_fontsize(9)
    return fig


# ------------------------------------------------------------------------------------------ metrics
def roc_points(y: Sequence[int], p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of the ROC curve, from (0, 0) to (1, 1).

    >>> fpr, tpr = roc_points([0, 1, 1, 0], [0.1, 0.9, 0.6, 0.6])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    import numpy as np

    yy = np.asarray(y).astype(bool)
    pp = np.asarray(p, dtype=float)
    ts = np.unique(pp)[::-1]
    npos, nneg = max(int(yy.sum()), 1), max(int((~yy).sum()), 1)
    tpr = [0.0] + [float((pp[yy] >= t).sum() / npos) for t in ts]
    fpr = [0.0] + [float((pp[~yy] >= t).sum() / nneg) for t in ts]
    return np.asarray(fpr), np.asarray(tpr)


def expected_calibration_error(y: Sequence[int], p: Sequence[float], n_bins: int = 10
                               ) -> tuple[float, pd.DataFrame]:
    """Expected calibration error over ``n_bins`` equal-width probability bins, and the bins.

    ECE = sum over bins of (cases in bin / all cases) x |mean predicted - observed rate|.

    >>> ece, bins = expected_calibration_error([0, 0, 1, 1], [0.1, 0.1, 0.9, 0.7], n_bins=5)
    >>> round(ece, 3), bins["n"].tolist()
    (0.15, [2, 0, 0, 1, 1])
    """
    import numpy as np
    import pandas as pd

    yy = np.asarray(y, dtype=float)
    pp = np.asarray(p, dtype=float)
    idx = np.clip((pp * n_bins).astype(int), 0, n_bins - 1)
    rows = []
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        mp = float(pp[sel].mean()) if n else float("nan")
        obs = float(yy[sel].mean()) if n else float("nan")
        if n:
            ece += n / len(pp) * abs(mp - obs)
        rows.append({"bin_low": b / n_bins, "bin_high": (b + 1) / n_bins, "n": n, "mean_predicted": mp,
                     "observed_rate": obs})
    return (float(ece) if len(pp) else float("nan")), pd.DataFrame(rows)


def _ci(stat: Any, y: Any, p: Any, groups: Any, n_boot: int) -> dict[str, Any]:
    from cds.evaluation.metrics import bootstrap_ci

    if n_boot <= 0:
        return {"value": float(stat(y, p)), "ci95": [None, None], "n_boot": 0}
    return bootstrap_ci(stat, y, p, n_boot=n_boot, seed=0, groups=groups)


def _training_overlap(bundle: Any, patient_ids: Sequence[str]) -> dict[str, Any] | None:
    """How many of these patients are in the model's training manifest (sha256(patient_id)[:16] lists)."""
    import hashlib

    path = Path(bundle.path) / "configs" / "training_manifest.json"
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if man.get("hash") != "sha256(patient_id)[:16]" or not isinstance(man.get("patients"), list):
        return None
    train = set(man["patients"])
    hits = sum(hashlib.sha256(str(p).encode()).hexdigest()[:16] in train for p in set(patient_ids))
    return {"patients": len(set(patient_ids)), "in_training_set": int(hits)}


def _age_at_study(ctx: ReportContext, ev: pd.DataFrame) -> pd.Series:
    import pandas as pd

    birth = ev["patient_id"].map(dict(zip(ctx.cohort.patients["patient_id"], ctx.cohort.patients["birth_date"],
                                          strict=True)))
    from cds.sources.tables import age_years

    return age_years(pd.to_datetime(birth, utc=True), pd.to_datetime(ev["started"], utc=True))


def _binary_metrics(y: Any, p: Any, groups: Any, thr: float | None, n_boot: int) -> dict[str, Any]:
    import numpy as np

    from cds.evaluation.metrics import auroc, sens_spec_at_threshold

    out: dict[str, Any] = {"n": int(len(y)), "n_positive": int(np.sum(y)), "n_patients": int(len(set(groups)))}
    if out["n_positive"] == 0 or out["n_positive"] == out["n"]:
        out["auroc"] = {"value": None, "ci95": [None, None], "note": "one class only"}
    else:
        out["auroc"] = _ci(auroc, y, p, groups, n_boot)
    if thr is not None:
        out["threshold"] = float(thr)
        out["sensitivity"] = _ci(lambda a, b: sens_spec_at_threshold(a, b, thr)[0], y, p, groups, n_boot) \
            if out["n_positive"] else {"value": None, "ci95": [None, None]}
        out["specificity"] = _ci(lambda a, b: sens_spec_at_threshold(a, b, thr)[1], y, p, groups, n_boot) \
            if out["n_positive"] < out["n"] else {"value": None, "ci95": [None, None]}
    return out


def evaluate(ctx: ReportContext, mid: str) -> dict[str, Any] | None:
    """Performance of one model against its FHIR outcome labels (None when its task has no labels).

    AUROC with a patient-level bootstrap 95 % CI, sensitivity and specificity at the operating point
    (the threshold used; scores in the indeterminate band count by the threshold and are reported),
    expected calibration error (10 equal-width bins) with the reliability bins, subgroups by sex and
    age band at the study (``unknown`` where the record has no birth date), and the overlap with
    the model's training patients where its bundle lists them.
    """
    from cds.reports.overview import age_band

    key = f"perf:{mid}"
    if key in ctx.cache:
        return ctx.cache[key]
    labels = study_labels(ctx, mid)
    if labels is None:
        ctx.cache[key] = None
        return None
    f = _findings_frame(ctx)
    f = f[(f["model_id"] == mid) & f["probability"].notna()]
    score = f.groupby("study_uid")["probability"].max()
    ev_all = labels[labels["evaluate"]]
    ev = ev_all[ev_all["study_uid"].isin(score.index)].copy()
    ev["p"] = ev["study_uid"].map(score).astype(float)
    ev["y"] = ev["label"].astype(int)
    thr, band, src = _threshold(ctx, mid)
    n_boot = int(ctx.params["n_boot"])
    y, p, g = ev["y"].to_numpy(), ev["p"].to_numpy(), ev["patient_id"].to_numpy()
    res: dict[str, Any] = {"model": mid, "label": LABEL_SOURCES[ctx.registry.task_of(mid)][1],
                           "evaluation_set": "first study per patient in the window with a known label",
                           "eligible_first_studies": int(len(ev_all)),
                           "without_ai_result": int(len(ev_all) - len(ev)), "threshold_from": src}
    res.update(_binary_metrics(y, p, g, thr, n_boot))
    if band and len(ev):
        res["in_indeterminate_band"] = int(((p >= band[0]) & (p <= band[1])).sum())
    if len(ev):
        ece, bins = expected_calibration_error(y, p)
        res["ece"] = ece
        res["calibration_bins"] = bins.to_dict("records")
        fpr, tpr = roc_points(y, p)
        res["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    card = ctx.registry.get(mid).card
    res["card_calibrated"] = bool(card.get("calibrated"))
    res["training_overlap"] = _training_overlap(ctx.registry.get(mid), ev["patient_id"].tolist())
    sexes = ev["patient_id"].map(dict(zip(ctx.cohort.patients["patient_id"], ctx.cohort.patients["sex"],
                                          strict=True))).fillna("unknown")
    ages = _age_at_study(ctx, ev)
    bands = age_band(ages).astype(object).where(ages.notna(), _AGE_UNKNOWN)
    subs = []
    for var, values in (("sex", sexes), ("age band", bands)):
        for level in sorted(values.unique(), key=str):
            sel = (values == level).to_numpy()
            m = _binary_metrics(y[sel], p[sel], g[sel], thr, min(n_boot, 1000))
            subs.append({"variable": var, "group": str(level), **m})
    res["subgroups"] = subs
    res["age_unknown"] = int(ages.isna().sum())
    ctx.cache[key] = res
    return res


def _fmt_ci(m: Mapping[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "n/a" + (f" ({m['note']})" if m and m.get("note") else "")
    lo, hi = (m.get("ci95") or [None, None])[:2]
    v = f"{m['value']:.3f}"
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return v
    return f"{v} ({lo:.3f} to {hi:.3f})"


def performance_definition(ctx: ReportContext) -> Any:
    """What the performance section measures, per model, and the caveats (Markdown)."""
    from IPython.display import Markdown

    lines = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            lines.append(f"- `{mid}`: no outcome label in FHIR for its task; no performance is computed here "
                         "(the model card's numbers are in the anchors table below).")
            continue
        txt = (f"- `{mid}`: label = {r['label']}. Evaluated on the {r['evaluation_set']} "
               f"({r['n']} studies, {r['n_positive']} positive")
        txt += f"; {r['without_ai_result']} first studies had no AI result)." if r["without_ai_result"] else ")."
        ov = r.get("training_overlap")
        if ov and ov["in_training_set"]:
            txt += (f" **{ov['in_training_set']} of {ov['patients']} evaluated patients were in this model's "
                    "training set: these numbers are in-sample and optimistic; the model card's "
                    "cross-validated figures are the honest estimate.**")
        if not r["card_calibrated"]:
            txt += " The card does not claim calibrated probabilities: the calibration curve shows how far off they are."
        if r.get("age_unknown"):
            txt += f" Age is unknown for {r['age_unknown']} of {r['n']} (no birth date in the record)."
        lines.append(txt)
    lines.append("\nAUROC: 95 % CI by bootstrap over patients. Sensitivity / specificity at the threshold in use "
                 "(score >= threshold is positive). ECE: 10 equal-width probability bins.")
    return Markdown("\n".join(lines))


def performance_table(ctx: ReportContext) -> pd.DataFrame:
    """Per labelled model: n, positives, AUROC (95 % CI), sensitivity and specificity at the threshold, ECE."""
    import pandas as pd

    rows = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            rows.append({"model": mid, "n": 0, "positives": 0, "AUROC (95 % CI)": "no labels in FHIR"})
            continue
        ov = r.get("training_overlap")
        rows.append({"model": mid, "n": r["n"], "positives": r["n_positive"], "AUROC (95 % CI)": _fmt_ci(r["auroc"]),
                     "threshold": r.get("threshold"), "sensitivity (95 % CI)": _fmt_ci(r.get("sensitivity")),
                     "specificity (95 % CI)": _fmt_ci(r.get("specificity")),
                     "in indeterminate band": r.get("in_indeterminate_band", 0),
                     "ECE": None if r.get("ece") is None else round(r["ece"], 3),
                     "in training set": "unknown" if not ov else f"{ov['in_training_set']} of {ov['patients']}"})
    return pd.DataFrame(rows).set_index("model")


def subgroup_table(ctx: ReportContext) -> pd.DataFrame:
    """Per labelled model: AUROC, sensitivity and specificity by sex and by age band."""
    import pandas as pd

    rows = []
    for mid in ctx.models:
        r = evaluate(ctx, mid)
        if r is None:
            continue
        for s in r["subgroups"]:
            rows.append({"model": mid, "variable": s["variable"], "group": s["group"], "n": s["n"],
                         "positives": s["n_positive"], "AUROC (95 % CI)": _fmt_ci(s["auroc"]),
                         "sensitivity": _fmt_ci(s.get("sensitivity")), "specificity": _fmt_ci(s.get("specificity"))})
    if not rows:
        return pd.DataFrame({"note": ["no model in this report has outcome labels in FHIR"]})
    return pd.DataFrame(rows)


def plot_performance(ctx: ReportContext) -> Figure:
    """Per labelled model: ROC curve with AUROC, and the reliability diagram with ECE."""
    import numpy as np
    from matplotlib.figure import Figure

    done = [(m, evaluate(ctx, m)) for m in ctx.models]
    done = [(m, r) for m, r in done if r is not None and r.get("roc")]
    fig = Figure(figsize=(9, 3.8 * max(len(done), 1)), layout="constrained")
    if not done:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no model in this report has outcome labels in FHIR", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = np.atleast_2d(fig.subplots(len(done), 2))
    for (mid, r), (a1, a2) in zip(done, axes, strict=True):
        a1.plot(r["roc"]["fpr"], r["roc"]["tpr"], color="#c44e52", drawstyle="steps-post")
        a1.plot([0, 1], [0, 1], color="#999999", lw=0.8)
        if r.get("sensitivity", {}).get("value") is not None and r.get("specificity", {}).get("value") is not None:
            a1.scatter([1 - r["specificity"]["value"]], [r["sensitivity"]["value"]], color="black", zorder=3,
                       label=f"threshold {r['threshold']:.3g}")
            a1.legend(fontsize=7, loc="lower right")
        a1.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{mid}: ROC, AUROC {_fmt_ci(r['auroc'])}")
        a1.title.set_fontsize(9)
        bins = [b for b in r["calibration_bins"] if b["n"]]
        a2.plot([0, 1], [0, 1], color="#999999", lw=0.8)
        a2.scatter([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins],
                   s=[20 + 8 * b["n"] for b in bins], color="#4c72b0", alpha=0.7)
        for b in bins:
            a2.annotate(str(b["n"]), (b["mean_predicted"], b["observed_rate"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        a2.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean predicted probability", ylabel="observed rate",
               title=f"{mid}: calibration, ECE {r['ece']:.3f} (numbers = studies per bin)")
        a2.title.set_fontsize(9)
    return fig


# ------------------------------------------------------------------------------------------ anchors
def _card_number(card: Mapping[str, Any], names: Sequence[str]) -> tuple[str | None, Mapping[str, Any] | None]:
    metrics = (card.get("performance") or {}).get("metrics") or {}
    for n in names:
        if isinstance(metrics.get(n), Mapping):
            return n, metrics[n]
    return None, None


def anchor_rows(ctx: ReportContext) -> list[dict[str, Any]]:
    """Our numbers next to the published anchors (:mod:`cds.evaluation.anchors`), one row per anchor and model."""
    from cds.evaluation.anchors import ANCHORS

    installed = set(ctx.registry.ids())
    rows: list[dict[str, Any]] = []

    def ours(mid: str, metric_names: Sequence[str]) -> dict[str, Any]:
        if mid not in installed:
            return {"our model": mid, "our number (model card)": "model not installed",
                    "our number (this report)": "-"}
        card = ctx.registry.get(mid).card
        name, m = _card_number(card, metric_names)
        perf = card.get("performance") or {}
        card_txt = "-" if m is None else f"{name} {_fmt_ci(m)} on {perf.get('data', '?')} " \
                                         f"(n={perf.get('n_cases', '?')}, split {perf.get('split', '?')})"
        rep = evaluate(ctx, mid) if mid in ctx.models else None
        rep_txt = "not run in this report" if mid not in ctx.models else \
            "no labels in this cohort" if rep is None else \
            f"auroc {_fmt_ci(rep['auroc'])} (n={rep['n']}, {rep['n_positive']} positive)"
        return {"our model": mid, "our number (model card)": card_txt, "our number (this report)": rep_txt}

    for a in ANCHORS:
        mids = a.our_models or ("(readers)",)
        for mid in mids:
            base = {"anchor": a.short, "published": a.published, "task": a.task}
            if mid == "(readers)":
                row = {**base, "our model": "-", "our number (model card)": "not measured (standalone AI only)",
                       "our number (this report)": "not measured"}
            else:
                row = {**base, **ours(mid, a.our_metrics)}
            row["caveats"] = " ".join(a.caveats)
            rows.append(row)
    anchored = {m for a in ANCHORS for m in a.our_models}
    for mid in ctx.models:
        if mid in anchored:
            continue
        ctxt = ctx.registry.get(mid).card.get("context") or []
        note = ctxt[0] if isinstance(ctxt, list) and ctxt else "no published anchor in docs/STACK.md"
        rows.append({"anchor": "(none in STACK.md)", "published": "-", "task": ctx.registry.task_of(mid),
                     **ours(mid, ("auroc",)), "caveats": f"Model card context: {note}"})
    return rows


def anchors_table(ctx: ReportContext) -> pd.DataFrame:
    """:func:`anchor_rows` as a table."""
    import pandas as pd

    return pd.DataFrame(anchor_rows(ctx))


def anchor_caveats(ctx: ReportContext) -> Any:
    """General caveats of the comparison (Markdown)."""
    from IPython.display import Markdown

    from cds.evaluation.anchors import GENERAL_CAVEATS

    return Markdown("\n".join(f"- {c}" for c in GENERAL_CAVEATS))


# ------------------------------------------------------------------------------------ de-identification
class IdentifierLeak(CdsError):
    """A de-identified output still contains an identifying string; the message names the file and the
    kind of identifier, never the identifier itself."""


def identifying_strings(source: str | Path, cohort: Any = None) -> dict[str, set[str]]:
    """Strings that identify the cohort's patients, by kind, for scrubbing and leak checks.

    From the FHIR source: Patient ids, identifier values, names (each given / family name and the full
    name), birth dates; resource ids of ImagingStudy and Encounter; DICOM UIDs of studies, series
    and instances. From the cohort tables (when given): image file paths and FHIR file names.
    Strings shorter than 4 characters (6 for identifier values) are left out: they would match anywhere.
    """
    from cds.sources.fhir_read import read_resources, read_server

    src = str(source)
    resources, _ = read_server(src) if _is_url(src) else read_resources(src)
    out: dict[str, set[str]] = {k: set() for k in ("patient_id", "identifier", "name", "birth_date", "resource_id",
                                                   "uid", "path")}
    for rr in resources:
        r = rr.resource
        rt = r.get("resourceType")
        if rt == "Patient":
            if r.get("id"):
                out["patient_id"].add(str(r["id"]))
            for ident in r.get("identifier") or []:
                if isinstance(ident, dict) and ident.get("value"):
                    out["identifier"].add(str(ident["value"]))
            for nm in r.get("name") or []:
                if not isinstance(nm, dict):
                    continue
                parts = [*(nm.get("given") or []), nm.get("family")]
                out["name"].update(str(x) for x in parts if x)
                if nm.get("text"):
                    out["name"].add(str(nm["text"]))
            if r.get("birthDate"):
                out["birth_date"].add(str(r["birthDate"]))
        elif rt in ("ImagingStudy", "Encounter") and r.get("id"):
            out["resource_id"].add(str(r["id"]))
        if rt == "ImagingStudy":
            for ident in r.get("identifier") or []:
                v = str((ident or {}).get("value") or "")
                if v.startswith("urn:oid:"):
                    out["uid"].add(v[8:])
            for se in r.get("series") or []:
                if se.get("uid"):
                    out["uid"].add(str(se["uid"]))
                for inst in se.get("instance") or []:
                    if inst.get("uid"):
                        out["uid"].add(str(inst["uid"]))
    if cohort is not None:
        img = cohort.imaging
        out["uid"].update(str(u) for u in img["study_uid"].dropna())
        out["uid"].update(str(u) for u in img["series_uid"].dropna())
        for col in ("pixel_location", "source"):
            out["path"].update(str(v) for v in img[col].dropna() if isinstance(v, str))
        for n in cohort.patients["name"].dropna():
            out["name"].add(str(n))
    minimum = {"identifier": 6}
    return {k: {s for s in v if len(s) >= minimum.get(k, 4)} for k, v in out.items()}


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


def _scan_text(path: Path) -> str:
    """A file's text with base64 runs (embedded images, attachments) decoded where they are text, or dropped."""
    import base64

    raw = path.read_text(encoding="utf-8", errors="replace")
    decoded: list[str] = []

    def repl(m: re.Match[str]) -> str:
        blob = m.group(0)
        try:
            txt = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return " "
        decoded.append(txt)
        return " "

    return _BASE64_RUN.sub(repl, raw) + "\n" + "\n".join(decoded)


def find_identifiers(text: str, identifiers: Mapping[str, set[str]]) -> dict[str, int]:
    """How many distinct identifying strings of each kind occur in ``text`` (names: whole words only).

    >>> find_identifiers("Patient Judson, born 1982-07-29", {"name": {"Judson", "Jud"}, "birth_date": {"1982-07-29"}})
    {'name': 1, 'birth_date': 1}
    """
    hits: dict[str, int] = {}
    for kind, values in identifiers.items():
        n = 0
        for v in values:
            if v not in text:
                continue
            if kind == "name" and not re.search(rf"(?<![A-Za-z]){re.escape(v)}(?![A-Za-z])", text):
                continue
            n += 1
        if n:
            hits[kind] = n
    return hits


def check_deidentified(paths: Sequence[str | Path], identifiers: Mapping[str, set[str]],
                       remove: bool = False) -> None:
    """Raise :class:`IdentifierLeak` when any file holds an identifying string (optionally removing the
    leaking files first). The message names the files and the kinds, never the identifiers."""
    leaks = []
    for p in map(Path, paths):
        if not p.is_file():
            continue
        hits = find_identifiers(_scan_text(p), identifiers)
        if hits:
            leaks.append((p, hits))
    if not leaks:
        return
    if remove:
        for p, _ in leaks:
            p.unlink()
    detail = "; ".join(f"{p.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(h.items())) for p, h in leaks)
    raise IdentifierLeak(f"de-identified output still contains identifying strings ({detail})"
                         + ("; those files were removed" if remove else ""))


# ------------------------------------------------------------------------------------------- outputs
def _model_metrics(ctx: ReportContext, mid: str) -> dict[str, Any]:
    import numpy as np

    b = ctx.registry.get(mid)
    thr, band, src = _threshold(ctx, mid)
    f = _findings_frame(ctx)
    ff = f[f["model_id"] == mid]
    fails = _failures_frame(ctx)
    fm = fails[fails["model_id"] == mid]
    s = ff["score"].dropna().astype(float).to_numpy()
    perf = evaluate(ctx, mid)
    if perf is not None:
        perf = {k: v for k, v in perf.items() if k != "roc"}
    tri = triage(ctx, mid)["summary"]
    return {
        "version": b.version, "task": ctx.registry.task_of(mid), "threshold": thr, "threshold_from": src,
        "indeterminate": band, "eligible_studies": int(_eligible(b.card, ctx.studies)["study_uid"].nunique()),
        "findings": int(len(ff)), "studies_with_findings": int(ff["study_uid"].nunique()),
        "failed_studies": int(len(fm)),
        "failures_by_error": {str(k): int(v) for k, v in fm["error"].value_counts().sort_index().items()},
        "interpretations": {str(k): int(v) for k, v in ff["interpretation"].value_counts().sort_index().items()},
        "score_quantiles": None if not len(s) else
        dict(zip(["min", "q25", "median", "q75", "max"], np.quantile(s, [0, 0.25, 0.5, 0.75, 1]).round(6).tolist(),
                 strict=True)),
        "performance": perf, "triage": tri,
    }


def _rounded(x: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits`` decimals, recursively (numbers in results.json stay readable and
    do not differ in the last bits between machines)."""
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v, digits) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, str):
        try:
            return _rounded(x.item(), digits)
        except (TypeError, ValueError):
            return x
    return x


def cohort_metrics(ctx: ReportContext) -> dict[str, Any]:
    """The ``metrics`` section of results.json: parameters, scope, demographics, per-model numbers, anchors."""
    pop = _population(ctx)
    return _rounded({
        "parameters": _public_parameters(ctx.params), "recorded": ctx.recorded,
        "cohort": {**ctx.scope, "sex": {str(k): int(v) for k, v in pop["sex"].fillna("unknown").value_counts()
                                        .sort_index().items()},
                   "age_known": int(pop["age_years"].notna().sum())},
        "models": {mid: _model_metrics(ctx, mid) for mid in ctx.models},
        "anchors": anchor_rows(ctx),
    })


def _output_findings(ctx: ReportContext) -> list[Any]:
    if not ctx.deidentify:
        return list(ctx.findings)
    from cds.privacy import pseudonymise_finding

    return [pseudonymise_finding(f, ctx.salt or "") for f in ctx.findings]


def _output_failures(ctx: ReportContext) -> list[dict[str, Any]]:
    if not ctx.deidentify:
        return [x.to_dict() for x in ctx.failures]
    out = []
    for x in (f.to_dict() for f in ctx.failures):
        pid, suid = _pseudonyms(str(x["patient_id"]), str(x["study_uid"] or ""), ctx.salt or "")
        out.append({**x, "patient_id": pid, "study_uid": suid, "series_uid": None,
                    "message": ctx.scrub(x.get("message"))})
    return out


def write_outputs(ctx: ReportContext) -> dict[str, Path]:
    """Write ``results.json`` and ``results.fhir.json`` (R4 transaction Bundle) into the output folder.

    In de-identified mode both are pseudonymised and then searched for every identifying string of
    the cohort (:func:`check_deidentified`); a hit removes them and raises :class:`IdentifierLeak`.
    """
    from cds.fhir.writer import results_bundle
    from cds.reports.results_json import results_json

    res = results_json(_output_findings(ctx), _output_failures(ctx), cohort_metrics(ctx))
    cards = {mid: _card_for(ctx, mid) for mid in ctx.models}
    bundle = results_bundle(ctx.findings, cards, recorded=ctx.recorded, deidentify=ctx.deidentify,
                            salt=ctx.salt if ctx.deidentify else None)
    paths = {"results_json": ctx.out_dir / "results.json", "results_fhir": ctx.out_dir / "results.fhir.json"}
    paths["results_json"].write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["results_fhir"].write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if ctx.deidentify:
        check_deidentified(list(paths.values()), ctx.identifiers, remove=True)
    n_entries = len(bundle.get("entry") or [])
    print(f"results.json: {res['n_studies']} studies, {res['n_findings']} findings, {res['n_failures']} failed "
          f"studies")
    print(f"results.fhir.json: transaction Bundle with {n_entries} entries (recorded {ctx.recorded})")
    if ctx.deidentify:
        print("de-identified: pseudonymous ids (salted HMAC); no names, identifiers or birth dates found")
    return paths


# --------------------------------------------------------------------------------------- run_report
@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _absolute(source: str) -> str:
    return source if _is_url(source) else str(Path(source).expanduser().resolve())


def run_report(cohort: str | Path, out_dir: str | Path, params: Mapping[str, Any] | None = None, post: bool = False,
               fhir_base: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the cohort report notebook through papermill and write its outputs into ``out_dir``.

    Parameters
    ----------
    cohort
        Folder, Bundle ``.json``, ``.ndjson`` or FHIR server base URL.
    out_dir
        Output folder (created): ``report.html``, ``cohort_report.ipynb``, ``results.json``,
        ``results.fhir.json``, ``figures/``, and with ``post`` ``post_outcome.json``.
    params
        Other notebook parameters (see :func:`parameter_spec`); ``salt`` is passed to the kernel
        through ``$CDS_REPORT_SALT``, never as a notebook parameter.
    post, fhir_base
        POST ``results.fhir.json`` as a transaction to this FHIR base URL after the run; the
        per-resource outcome goes to ``post_outcome.json`` and the console.
    progress
        Papermill's progress bar.

    Returns
    -------
    dict
        Paths of the outputs, the POST outcome (or None), and timings in seconds.

    Raises
    ------
    cds.errors.ParameterError
        A bad parameter, before any work (nothing is written).
    cds.reports.notebook_run.NotebookFailed
        A notebook cell failed; the message names the cell and the error.
    IdentifierLeak
        De-identified output still holds an identifying string (the leaking files are removed).
    cds.fhir.post.FhirWriteError
        The FHIR server did not take the transaction (``post_outcome.json`` says why).
    """
    t0 = time.perf_counter()
    given = dict(params or {})
    given["cohort"] = _absolute(str(cohort))
    given["out_dir"] = str(Path(out_dir).expanduser().resolve())
    full = validate_report_parameters(given)
    if post and not fhir_base:
        raise ParameterError("fhir_base", "post=True needs the FHIR server base URL to send the results to")
    if fhir_base is not None and not _is_url(str(fhir_base)):
        raise ParameterError("fhir_base", f"{fhir_base!r} is not an http(s) FHIR base URL")
    from cds.reports.notebook_run import run_notebook

    out = Path(given["out_dir"])
    nb_params = {k: full[k] for k in given if k != "salt"}
    with _env(SALT_ENV, full["salt"] if full["deidentify"] else None):
        result = run_notebook(NOTEBOOK, out, nb_params, progress=progress)
    t1 = time.perf_counter()
    paths = {"html": result["html"], "notebook": result["notebook"], "results_json": out / "results.json",
             "results_fhir": out / "results.fhir.json"}
    for key in ("results_json", "results_fhir"):
        if not paths[key].is_file():
            raise CdsError(f"{paths[key]}: the notebook finished without writing it (is the notebook the cds "
                           "report notebook?)")
    if full["deidentify"]:
        ids = identifying_strings(full["cohort"])
        check_deidentified([paths["html"], paths["notebook"], paths["results_json"], paths["results_fhir"]], ids,
                           remove=True)
    t2 = time.perf_counter()
    outcome = None
    if post:
        outcome = post_results(paths["results_fhir"], str(fhir_base), out / "post_outcome.json")
        paths["post_outcome"] = out / "post_outcome.json"
    summary = json.loads(paths["results_json"].read_text())
    return {"out_dir": out, **paths, "post": outcome,
            "n_findings": summary["n_findings"], "n_failures": summary["n_failures"],
            "seconds": {"notebook": round(t1 - t0, 2), "checks": round(t2 - t1, 2),
                        "total": round(time.perf_counter() - t0, 2)}}


def post_results(fhir_json: str | Path, fhir_base: str, outcome_path: str | Path) -> list[dict[str, Any]]:
    """POST a results Bundle file as a transaction; write and print the per-resource outcome."""
    from cds.fhir.post import FhirWriteError, post_transaction

    bundle = json.loads(Path(fhir_json).read_text(encoding="utf-8"))
    try:
        outcome = post_transaction(bundle, fhir_base)
    except FhirWriteError as exc:
        Path(outcome_path).write_text(json.dumps({"fhir_base": fhir_base, "ok": False, "error": str(exc),
                                                  "status": exc.status}, indent=1) + "\n")
        print(f"POST {fhir_base}: FAILED: {exc}")
        raise
    by_status: dict[str, int] = {}
    for o in outcome:
        by_status[o["status"]] = by_status.get(o["status"], 0) + 1
    Path(outcome_path).write_text(json.dumps({"fhir_base": fhir_base, "ok": True, "entries": len(outcome),
                                              "by_status": by_status, "outcome": outcome}, indent=1) + "\n")
    for o in outcome:
        print(f"  {o['status'] or '?':<14} {o['request']}" + (f"  {o['message']}" if o.get("message") else ""))
    print(f"POST {fhir_base}: {len(outcome)} resources: "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    return outcome


# ---------------------------------------------------------------------------------------------- CLI
def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``cds report`` options (stdlib only, so building the CLI stays fast)."""
    parser.add_argument("--cohort", help="folder, Bundle .json, .ndjson or FHIR server base URL "
                        "(default: fhir_samples)")
    parser.add_argument("--out", help="output folder (default: out/report)")
    parser.add_argument("--models", help="comma-separated model ids (default: " + ",".join(DEFAULT_MODELS) + ")")
    parser.add_argument("--start", help="first study date YYYY-MM-DD, or --start=-Nd for N days before the "
                        "reference date")
    parser.add_argument("--end", help="last study date YYYY-MM-DD (inclusive), or --end=-Nd")
    parser.add_argument("--reference-date", help="date ages and the FHIR 'recorded' time refer to (default: today)")
    parser.add_argument("--threshold", action="append", metavar="MODEL=VALUE",
                        help="decision threshold replacing the model card's; repeatable")
    parser.add_argument("--minutes-per-study", type=float, help="reading minutes per study in the triage "
                        "simulation (default 5)")
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples for confidence intervals (default 2000)")
    parser.add_argument("--deidentify", action="store_true", help="pseudonymise; no names, ids or birth dates "
                        f"in any output (salt from ${SALT_ENV} or --salt-file)")
    parser.add_argument("--salt-file", help="file holding the de-identification salt (else $" + SALT_ENV + ")")
    parser.add_argument("--no-validate", action="store_true", help="skip FHIR R4 validation of the cohort")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="one notebook parameter; VALUE is read as JSON when it parses (numbers, true, "
                        "lists, objects), else as text; repeatable; checked before any work")
    parser.add_argument("--params", help="JSON file of notebook parameters (options given here win)")
    parser.add_argument("--post", action="store_true", help="POST results.fhir.json as a transaction to --fhir-base")
    parser.add_argument("--fhir-base", help="FHIR R4 server base URL for --post")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _cli_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if getattr(args, "params", None):
        try:
            loaded = json.loads(Path(args.params).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParameterError("--params", f"{args.params}: cannot read a JSON object: {exc}") from None
        if not isinstance(loaded, dict):
            raise ParameterError("--params", f"{args.params}: expected a JSON object of parameters")
        params.update(loaded)
    for item in getattr(args, "param", None) or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError("--param", f"{item!r}: expected NAME=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        params[name.strip()] = value
    if args.models:
        params["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.start:
        params["start_date"] = args.start
    if args.end:
        params["end_date"] = args.end
    if args.reference_date:
        params["reference_date"] = args.reference_date
    elif "reference_date" not in params:
        params["reference_date"] = date.today().isoformat()
    for item in args.threshold or []:
        mid, sep, val = item.partition("=")
        if not sep or not mid.strip():
            raise ParameterError("--threshold", f"{item!r}: expected MODEL=VALUE, e.g. cxr-icu=0.4")
        try:
            params.setdefault("thresholds", {})[mid.strip()] = float(val)
        except ValueError:
            raise ParameterError(f"thresholds[{mid.strip()!r}]", f"{val!r} is not a number") from None
    if args.minutes_per_study is not None:
        params["minutes_per_study"] = args.minutes_per_study
    if args.n_boot is not None:
        params["n_boot"] = args.n_boot
    if args.deidentify:
        params["deidentify"] = True
    if args.salt_file:
        try:
            params["salt"] = Path(args.salt_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ParameterError("--salt-file", f"{args.salt_file}: {exc.strerror}") from None
    if args.no_validate:
        params["validate"] = False
    return params


def main_report(args: argparse.Namespace) -> int:
    """``cds report``: run the report and print where its outputs are (errors propagate as CdsError)."""
    params = _cli_parameters(args)
    cohort = args.cohort or params.pop("cohort", None) or "fhir_samples"
    out = args.out or params.pop("out_dir", None) or "out/report"
    params.pop("cohort", None)
    params.pop("out_dir", None)
    result = run_report(cohort, out, params, post=args.post, fhir_base=args.fhir_base, progress=not args.no_progress)
    print(f"report: {result['html']}")
    print(f"executed notebook: {result['notebook']}")
    print(f"results: {result['results_json']} ({result['n_findings']} findings, {result['n_failures']} failed "
          "studies)")
    print(f"FHIR results: {result['results_fhir']}")
    if result.get("post_outcome"):
        print(f"POST outcome: {result['post_outcome']}")
    print(f"took {result['seconds']['total']:.1f} s")
    return 0


if __name__ == "__main__":  # python -m cds.reports.report ... (the same options as ``cds report``)
    import argparse as _argparse
    import sys

    _args = add_report_arguments(_argparse.ArgumentParser(prog="python -m cds.reports.report")).parse_args()
    try:
        sys.exit(main_report(_args))
    except CdsError as _exc:
        print(f"cds report: error: {_exc}", file=sys.stderr)
        sys.exit(2)
