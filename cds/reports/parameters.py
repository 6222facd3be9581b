"""The cohort report's parameters: their spec, validation before any work, and relative dates.

>>> spec = parameter_spec()
>>> sorted(spec)[:4]
['cohort', 'deidentify', 'end_date', 'minutes_per_study']
>>> resolve_date("-7d", "2026-01-08"), resolve_date(None, "2026-01-08")
('2026-01-01', None)
>>> public_parameters({"cohort": "x", "salt": "s", "out_dir": "o"})
{'cohort': 'x'}
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ParameterError
from cds.params import Param, validate_parameters

if TYPE_CHECKING:  # heavy modules are imported inside functions (``cds --help`` stays fast)


    pass


NOTEBOOK = "cohort_report.ipynb"
#: Environment variable holding the de-identification salt (kept out of every output).
SALT_ENV = "CDS_REPORT_SALT"
DEFAULT_MODELS = ("pneumonia", "cxr-icu", "cxr-cardiomegaly")
#: Names the report notebook itself assigns; every other global defined before the validation cell is
#: a parameter (papermill injects parameters as plain assignments and only warns on unknown ones).
NOTEBOOK_NAMES = frozenset({"rp", "params", "ctx", "written"})
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_RELATIVE = re.compile(r"^-(\d{1,5})d$")


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
        "cohort": Param(str, "", hint="a folder, a .json Bundle, an .ndjson file or a FHIR base URL http(s)://... "
                                       "('' = the shipped sample cohort)"),
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


def is_url(source: str) -> bool:
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
    from cds.locations import cohort_source

    src = out["cohort"] = cohort_source(out["cohort"])  # '' = the shipped sample cohort
    if not is_url(src) and not Path(src).exists():
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


def public_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """What results.json records: everything but the salt and the output folder (reruns elsewhere match)."""
    return {k: v for k, v in params.items() if k not in ("salt", "out_dir")}
