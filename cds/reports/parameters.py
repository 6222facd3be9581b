"""The cohort report's parameters: their spec, validation before any work, and relative dates.

>>> spec = parameter_spec()
>>> sorted(spec)[:4]
['cache', 'cohort', 'decode_workers', 'deidentify']
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
from typing import Any

from cds.errors import ParameterError
from cds.params import Param, iso_date, model_ids, output_dir, probability, validate_parameters

NOTEBOOK = "cohort_report.ipynb"
#: Environment variable holding the de-identification salt (kept out of every output).
SALT_ENV = "CDS_REPORT_SALT"
#: The default ``models``: the models meant for the cohort's studies, chosen once the cohort is loaded
#: (:meth:`cds.models.registry.ModelRegistry.models_for`: intended use and required EHR inputs).
AUTO_MODELS = "auto"
DEFAULT_MODELS = (AUTO_MODELS,)
#: Names the report notebook itself assigns; every other global defined before the validation cell is
#: a parameter (papermill injects parameters as plain assignments and only warns on unknown ones).
NOTEBOOK_NAMES = frozenset({"rp", "params", "ctx", "written"})
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_RELATIVE = re.compile(r"^-(\d{1,5})d$")


def _date_check(name: str) -> Any:
    """The check of a date parameter: ``YYYY-MM-DD``, and for the window's ends also ``-Nd``."""
    def check(v: str) -> bool:
        if name != "reference_date" and _RELATIVE.match(v):
            return True
        try:
            return iso_date(v, name) == v
        except ParameterError as exc:
            if name == "reference_date":
                raise
            raise ParameterError(name, f"{exc.reason}, or -Nd for N days before reference_date") from None
    return check


def parameter_spec() -> dict[str, Param]:
    """The report's parameters: type, default, check and hint (see the module docstring)."""
    return {
        "cohort": Param(str, "", hint="a folder, a .json Bundle, an .ndjson file or a FHIR base URL http(s)://... "
                                       "('' = the shipped sample cohort)"),
        "models": Param(list, list(DEFAULT_MODELS), check=lambda v: all(isinstance(x, str) for x in v),
                        hint="a non-empty list of model ids (strings), e.g. ['cxr-icu'], or ['auto'] (the default): "
                             "the models meant for the cohort's studies"),
        "start_date": Param(str, None, nullable=True, check=_date_check("start_date"),
                            hint="YYYY-MM-DD, or -Nd for N days before reference_date, or None"),
        "end_date": Param(str, None, nullable=True, check=_date_check("end_date"),
                          hint="YYYY-MM-DD (inclusive), or -Nd for N days before reference_date, or None"),
        "out_dir": Param(str, "../out/report", check=lambda v: output_dir(v, "out_dir") is not None,
                         hint="an output folder"),
        "deidentify": Param(bool, False),
        "salt": Param(str, None, nullable=True, check=lambda v: bool(v), secret=True,
                      hint=f"a secret of at least 16 bytes (better: set ${SALT_ENV} and leave salt None)"),
        "thresholds": Param(dict, {}, check=lambda v: all(isinstance(k, str) for k in v),
                            hint="model id -> decision threshold, e.g. {'cxr-icu': 0.4}"),
        "reference_date": Param(str, "2026-01-01", check=_date_check("reference_date"), hint="a date YYYY-MM-DD"),
        "minutes_per_study": Param(float, 5.0, check=lambda v: math.isfinite(v) and 0 < v <= 1440,
                                   hint="reading minutes per study, > 0 and <= 1440"),
        "n_boot": Param(int, 2000, check=lambda v: 0 <= v <= 100_000, hint="bootstrap resamples, 0..100000"),
        "validate": Param(bool, True),
        "cache": Param(str, "auto", nullable=True, check=lambda v: v == "auto" or bool(v.strip()),
                       hint="'auto' (result-cache.sqlite in out_dir), a .sqlite path, or None (no cache)"),
        "workers": Param(int, 0, check=lambda v: 0 <= v <= 256,
                         hint="Dask LocalCluster workers, 0..256 (0: run in this process)"),
        "scheduler": Param(str, None, nullable=True, check=lambda v: v.startswith(("tcp://", "tls://", "inproc://")),
                           hint="an existing Dask scheduler address tcp://HOST:PORT, or None"),
        "decode_workers": Param(int, None, nullable=True, check=lambda v: 0 <= v <= 64,
                                hint="image decode processes ahead of the model, 0..64 (None: the CPU count)"),
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
    a cohort path that does not exist, an output folder that is a file (or lies under one), an empty,
    duplicated or unknown model id, a threshold outside 0..1 or for a model not run, a date not
    written YYYY-MM-DD (``03/04/2020`` is refused as ambiguous) or an inverted window, or
    ``deidentify=True`` without a salt (parameter or ``$CDS_REPORT_SALT``).
    The returned ``salt`` is resolved from the environment when the parameter is None.

    >>> validate_report_parameters({"modles": ["pneumonia"]})
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: modles: unknown parameter (did you mean 'models'?); known: cohort, models, \
start_date, end_date, out_dir, deidentify, salt, thresholds, reference_date, minutes_per_study, n_boot, validate, \
cache, workers, scheduler, decode_workers
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
    if out["models"] == [AUTO_MODELS]:
        for mid, thr in out["thresholds"].items():  # which models run is known once the cohort is loaded
            model_ids([mid], f"thresholds[{mid!r}]", registry.ids())
            out["thresholds"][mid] = probability(thr, f"thresholds[{mid!r}]")
    else:
        out["models"] = model_ids(out["models"], "models", registry.ids())
    for mid, thr in out["thresholds"].items():
        if out["models"] != [AUTO_MODELS] and mid not in out["models"]:
            raise ParameterError("thresholds", f"{mid!r} is not one of the models run ({', '.join(out['models'])})")
        out["thresholds"][mid] = probability(thr, f"thresholds[{mid!r}]")
    start = resolve_date(out["start_date"], out["reference_date"])
    end = resolve_date(out["end_date"], out["reference_date"])
    if start and end and end < start:
        raise ParameterError("end_date", f"end_date {end} is before start_date {start}")
    if out["workers"] and out["scheduler"]:
        raise ParameterError("scheduler", "give workers (a local Dask cluster) or scheduler (an existing one), not both")
    if out["deidentify"]:
        salt = out["salt"] or os.environ.get(SALT_ENV) or None
        if not salt:
            raise ParameterError("salt", f"deidentify=True needs a secret salt: set ${SALT_ENV} (it then never "
                                         "appears in an output) or pass salt; keep it to get the same pseudonyms")
        out["salt"] = salt  # its length (>= 16 bytes) is checked by run_report and prepare (cds.privacy.check_salt)
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
