"""Checks that a FHIR record could be true: dates that parse, births before today and before death,
one content per resource id, values of the type FHIR says.

These run on the raw JSON (with or without R4 validation) while the tables are built
(:func:`cds.sources.tables.build_tables`); each finding is a :class:`Problem` and the impossible
value is left out of the table, the rest of the resource is kept:

============================  =================================================================
kind                          what is kept
============================  =================================================================
``unparseable-date``          the resource; that date column is empty
``future-birth-date``         the patient; after today: ``birth_date`` empty; after the cohort's
                              reference date only: ``birth_date`` kept, ``age_years`` empty
``future-death-date``         the patient (``deceased`` true); ``deceased_date`` empty
``death-before-birth``        the patient (``deceased`` true); ``birth_date``, ``deceased_date``
                              and ``age_years`` empty
``conflicting-duplicate``     the first copy (files in sorted order); a Patient's fields that
                              differ between the copies (sex, birth date, death) are left empty
``wrong-type`` / ``wrong-code``  the resource; that value is empty (never coerced from a string)
============================  =================================================================

>>> fhir_date("2020-02-30")
(None, 'not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)')
>>> fhir_date("1950-06")
((1950, 6, 1), None)
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any

from cds.sources.records import Problem, RawResource, problem_for

__all__ = ["fhir_date", "deduplicate", "value_type_error", "GENDERS", "DEDUPLICATED_TYPES"]

GENDERS = ("male", "female", "other", "unknown")
DEDUPLICATED_TYPES = ("Patient", "Condition", "Observation", "MedicationRequest", "Encounter", "ImagingStudy",
                      "Endpoint")
_PATIENT_FIELDS = ("gender", "birthDate", "deceasedDateTime", "deceasedBoolean")
_IGNORED_IN_COMPARISON = ("meta", "text")

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?"
                   r"(?:Z|[+-]\d{2}:?\d{2})?)?)?)?$")
_BAD_DATE = "not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"


def fhir_date(value: Any) -> tuple[tuple[int, int, int] | None, str | None]:
    """The earliest calendar day a FHIR date/dateTime can mean, as ``(year, month, day)``, or ``(None, reason)``.

    >>> fhir_date("2020-04-01T08:00:00+02:00"), fhir_date(20200401)[1]
    (((2020, 4, 1), None), 'a number, not a date string')
    """
    if not isinstance(value, str):
        return None, ("a number, not a date string" if isinstance(value, (int, float)) else "not a date string")
    m = _DATE.match(value.strip())
    if not m:
        return None, _BAD_DATE
    y, mo, d = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
    try:
        date(y, mo, d)
        if m.group(4) is not None and (int(m.group(4)) > 23 or int(m.group(5)) > 59 or int(m.group(6) or 0) > 60):
            raise ValueError
    except ValueError:
        return None, _BAD_DATE
    return (y, mo, d), None


def _content(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k not in _IGNORED_IN_COMPARISON}


def deduplicate(resources: list[RawResource]) -> tuple[list[RawResource], list[Problem]]:
    """One copy per ``(type, id)`` of the tabled types: identical copies (as in overlapping exports)
    silently, different ones with a ``conflicting-duplicate`` problem on each later copy.

    A Patient whose copies disagree on sex, birth date or death keeps neither value: the first copy
    is kept with those fields removed (which is right cannot be known).
    """
    first: dict[tuple[str, str], int] = {}
    out: list[RawResource] = []
    problems: list[Problem] = []
    blank: dict[int, set[str]] = {}
    for rr in resources:
        rt, rid = rr.resource.get("resourceType"), rr.resource.get("id")
        if rt not in DEDUPLICATED_TYPES or not isinstance(rid, str):
            out.append(rr)
            continue
        key = (rt, rid)
        if key not in first:
            first[key] = len(out)
            out.append(rr)
            continue
        kept = out[first[key]]
        a, b = _content(kept.resource), _content(rr.resource)
        if a == b:
            continue
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        where = kept.source + (f" entry {kept.index}" if kept.index is not None else "")
        msg = f"{rt}/{rid} is also in {where} with different {', '.join(differ)}; this copy is left out"
        if rt == "Patient":
            contested = {k for k in differ if k in _PATIENT_FIELDS}
            if contested:
                blank.setdefault(first[key], set()).update(contested)
                msg += f" and the kept copy's {', '.join(sorted(contested))} left empty"
        problems.append(problem_for(rr, "conflicting-duplicate", msg))
    for i, fields in blank.items():
        rr = out[i]
        out[i] = RawResource({k: v for k, v in rr.resource.items() if k not in fields}, rr.source, rr.index,
                             rr.full_url)
    return out, problems


def _type_name(v: Any) -> str:
    return {str: "a string", bool: "a boolean", dict: "an object", list: "a list", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def value_type_error(res: dict[str, Any], where: str) -> str | None:
    """Why an Observation (or component) value does not have the JSON type FHIR R4 gives it, else ``None``.

    >>> value_type_error({"valueQuantity": {"value": "42.5"}}, "Observation")
    'Observation.valueQuantity.value is a string, not a JSON number'
    >>> value_type_error({"valueQuantity": {"value": 42.5}}, "Observation") is None
    True
    """
    if "valueQuantity" in res:
        q = res["valueQuantity"]
        if not isinstance(q, dict):
            return f"{where}.valueQuantity is {_type_name(q)}, not an object"
        v = q.get("value")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{where}.valueQuantity.value is {_type_name(v)}, not a JSON number"
        if isinstance(v, float) and not math.isfinite(v):
            return f"{where}.valueQuantity.value is not a finite number"
        for key in ("unit", "code", "comparator"):
            if key in q and not isinstance(q[key], str):
                return f"{where}.valueQuantity.{key} is {_type_name(q[key])}, not a string"
    checks = (("valueInteger", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              ("valueBoolean", lambda v: isinstance(v, bool), "true or false"),
              ("valueString", lambda v: isinstance(v, str), "a string"),
              ("valueCodeableConcept", lambda v: isinstance(v, dict), "an object"))
    for key, ok, expected in checks:
        if key in res and not ok(res[key]):
            return f"{where}.{key} is {_type_name(res[key])}, not {expected}"
    return None
