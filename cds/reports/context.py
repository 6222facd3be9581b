"""One report run's state (:class:`ReportContext`) and :func:`prepare`: load the cohort, select the studies
in the date window.

>>> ReportContext.__dataclass_fields__["recorded"].type
'str'
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
from cds.privacy import (
    Scrubber,
    check_deidentified,
    check_figure,
    check_salt,
    identifying_strings,
    pseudonyms,
)
from cds.reports.parameters import AUTO_MODELS, resolve_date

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)

    import pandas as pd
    from matplotlib.figure import Figure

    from cds.finding import Failure


#: The age band of a patient without a birth date.
AGE_UNKNOWN = "unknown"


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
    run_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    identifiers: dict[str, set[str]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    _scrubber: Scrubber | None = field(default=None, repr=False)

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
        return pseudonyms(str(patient_id), "", self.salt or "")[0][:8]

    def study(self, study_uid: str) -> str:
        """How a study is named in tables: the UID, or the last 10 digits of its pseudonymous UID."""
        if not self.deidentify:
            return str(study_uid)
        return "..." + pseudonyms("", str(study_uid), self.salt or "")[1][-10:]

    def scrub(self, text: Any) -> str:
        """A text safe to show: in de-identified mode file paths, e-mails, phone numbers, street addresses
        and the cohort's identifying strings (:attr:`identifiers`) are replaced (:class:`cds.privacy.Scrubber`)."""
        s = "" if text is None else str(text)
        if not self.deidentify:
            return s
        if self._scrubber is None:
            self._scrubber = Scrubber(self.identifiers)
        return self._scrubber(s)

    def figure(self, fig: Figure, name: str) -> Any:
        """Save ``fig`` as ``figures/<name>.png`` in the output folder; return the PNG for display (an
        ``IPython.display.Image``, so it shows as an image with or without a matplotlib backend).

        De-identified: the text the figure draws is checked before it is saved
        (:func:`cds.privacy.check_figure`; the data behind it was scrubbed in :func:`prepare`), the PNG
        gets no metadata (no Software chunk) and its text chunks are checked again after writing."""
        from IPython.display import Image

        d = self.out_dir / "figures"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.png"
        if not self.deidentify:
            fig.savefig(path, dpi=100)
            return Image(data=path.read_bytes(), format="png")
        check_figure(fig, self.identifiers, name)
        fig.savefig(path, dpi=100, metadata={"Software": None})
        check_deidentified([path], self.identifiers, remove=True)
        return Image(data=path.read_bytes(), format="png")


#: Free-text columns of the cohort tables (text from the source) scrubbed for a de-identified report.
FREE_TEXT_COLUMNS = {"conditions": ("display",), "observations": ("display", "value_string", "unit"),
                     "medications": ("display",), "encounters": ("type", "reason"),
                     "imaging": ("description", "body_site", "view")}


def deidentified_cohort(cohort: Any, scrub: Scrubber) -> Any:
    """A copy of the cohort for a de-identified report: patient names dropped and the free-text columns
    (:data:`FREE_TEXT_COLUMNS`) scrubbed, so every table and figure is drawn from scrubbed data. Ids,
    UIDs and file paths stay (the models need them; outputs pseudonymise them).

    >>> import pandas as pd
    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(patients=pd.DataFrame({"patient_id": ["p1"], "name": ["Louis Erdman"]}),
    ...                     conditions=pd.DataFrame({"display": ["Fall, call Louis at 555-250-5611"]}))
    >>> d = deidentified_cohort(c, Scrubber({"name": {"Louis"}}))
    >>> d.patients["name"].tolist(), d.conditions["display"].tolist(), c.patients["name"].tolist()
    ([None], ['Fall, call [name removed] at [phone removed]'], ['Louis Erdman'])
    """
    import dataclasses

    changes: dict[str, Any] = {}
    pat = cohort.patients.copy()
    if "name" in pat:
        pat["name"] = None
    changes["patients"] = pat
    for table, cols in FREE_TEXT_COLUMNS.items():
        df = getattr(cohort, table, None)
        if df is None:
            continue
        df = df.copy()
        for c in cols:
            if c in df:
                df[c] = df[c].map(lambda v: scrub(v) if isinstance(v, str) else v)
        changes[table] = df
    if dataclasses.is_dataclass(cohort):
        if "_groups" in {f.name for f in dataclasses.fields(cohort)}:
            changes["_groups"] = None
        return replace(cohort, **changes)
    import copy

    out = copy.copy(cohort)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


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
    if params["deidentify"]:
        check_salt(params.get("salt"))  # before any work; the message never holds the salt
    cohort = load_cohort(params["cohort"], validate=params["validate"], reference_date=params["reference_date"])
    identifiers: dict[str, set[str]] = {}
    if params["deidentify"]:
        identifiers = {**identifying_strings(params["cohort"], cohort), "salt": {str(params["salt"])}}
        cohort = deidentified_cohort(cohort, Scrubber(identifiers, paths=False))  # units like mg/dL stay
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
    registry = ModelRegistry()
    params = dict(params)
    if list(params["models"]) == [AUTO_MODELS]:  # the models meant for the cohort
        params["models"] = registry.models_for(cohort)
        print(f"models meant for this cohort's studies: {', '.join(params['models']) or 'none'}")
        stray = sorted(set(params["thresholds"]) - set(params["models"]))
        if stray:
            raise ParameterError("thresholds", f"{', '.join(map(repr, stray))} not among the models meant for this "
                                               f"cohort ({', '.join(params['models']) or 'none'}); name the models")
    ctx = ReportContext(params=params, cohort=cohort, registry=registry, out_dir=out, studies=studies,
                        scope=scope, recorded=f"{params['reference_date']}T00:00:00Z", start=start, end=end,
                        identifiers=identifiers)
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
