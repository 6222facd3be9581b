"""Read values out of raw FHIR JSON without trusting its types: references, codings, periods, strings.

Every helper takes whatever JSON is there (a resource loaded with ``validate=False`` may hold a number
where a string belongs, a string where a list belongs) and returns ``None`` or an empty list instead of
raising or coercing.

>>> coding({"coding": [{"system": "http://loinc.org", "code": "1988-5"}], "text": "CRP"})
('http://loinc.org', '1988-5', 'CRP')
>>> as_str(5), dicts(["x", {"a": 1}])
(None, [{'a': 1}])
"""

from __future__ import annotations

from typing import Any

from cds.codes import DICOM_UID_SYSTEM, URI_SYSTEM

__all__ = ["ref_id", "ref_type", "coding", "as_str", "as_list", "dicts", "first_display", "period", "patient_ref",
           "dicom_uid", "PATIENT_REF_FIELDS"]

#: The fields that name a resource's patient, in the order they are looked for.
PATIENT_REF_FIELDS = ("subject", "patient")


def ref_id(ref: Any) -> str | None:
    """The id a FHIR Reference points at: ``Patient/x``, ``urn:uuid:x``, or an absolute URL.

    >>> ref_id({"reference": "urn:uuid:abc"}), ref_id({"reference": "http://h/fhir/Patient/p1/_history/2"})
    ('abc', 'p1')
    """
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if not isinstance(r, str) or not r:
        return None
    if r.startswith("urn:uuid:") or r.startswith("urn:oid:"):
        return r.split(":", 2)[2]
    parts = r.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else None


def ref_type(ref: Any) -> str | None:
    """The resource type a FHIR Reference names (``Type/id``, a URL ending in it, or ``Reference.type``).

    >>> ref_type({"reference": "Device/p1"}), ref_type({"reference": "urn:uuid:abc"})
    ('Device', None)
    """
    if not isinstance(ref, dict):
        return None
    r = ref.get("reference")
    if isinstance(r, str) and r and not r.startswith(("urn:uuid:", "urn:oid:")):
        parts = r.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) >= 2:
            return parts[-2]
    return as_str(ref.get("type"))


def coding(cc: Any) -> tuple[str | None, str | None, str | None]:
    """First coding of a CodeableConcept as (system, code, display), display falling back to text."""
    if not isinstance(cc, dict):
        return None, None, None
    codings = cc.get("coding") or []
    c = codings[0] if isinstance(codings, list) and codings and isinstance(codings[0], dict) else {}
    return as_str(c.get("system")), as_str(c.get("code")), as_str(c.get("display")) or as_str(cc.get("text"))


def as_str(x: Any) -> str | None:
    """``x`` if it is a string (FHIR strings, codes, dates), else ``None``: other JSON types are not coerced."""
    return x if isinstance(x, str) else None


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def dicts(x: Any) -> list[dict[str, Any]]:
    return [d for d in as_list(x) if isinstance(d, dict)]


def first_display(ccs: Any) -> str | None:
    if isinstance(ccs, list) and ccs:
        return coding(ccs[0])[2]
    return None


def period(p: Any) -> tuple[Any, Any]:
    if not isinstance(p, dict):
        return None, None
    return p.get("start"), p.get("end")


def patient_ref(res: dict[str, Any]) -> str | None:
    for f in PATIENT_REF_FIELDS:
        if f in res:
            return ref_id(res[f])
    return None


def dicom_uid(identifiers: Any) -> str | None:
    for ident in dicts(identifiers):
        v = ident.get("value")
        if isinstance(v, str) and ident.get("system") in (DICOM_UID_SYSTEM, URI_SYSTEM):
            return v.removeprefix("urn:oid:")
    return None
