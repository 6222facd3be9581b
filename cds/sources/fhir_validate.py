"""Validate FHIR resources against the R4 models of ``fhir.resources.R4B`` at the cohort boundary.

Validation errors become short messages that name the field (``Encounter.class: ...``) instead of
a pydantic traceback.

>>> ok, msg = validate_resource({"resourceType": "Patient", "id": "p1", "gender": "female"})
>>> ok
True
>>> ok, msg = validate_resource({"resourceType": "Encounter", "status": "finished",
...                              "class": {"code": "AMB"}, "virtualService": [{}]})
>>> ok, msg
(False, 'Encounter.virtualService: not an R4 element (R5-only or misspelt)')
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["validate_resource", "format_errors"]


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def format_errors(resource_type: str, errors: list[dict[str, Any]], limit: int = 3) -> str:
    """Turn pydantic error dicts into ``Type.path: message`` lines (at most ``limit``)."""
    parts = []
    for err in errors[:limit]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("root", "__root__")]
        path = ".".join([resource_type, *loc]) if loc else resource_type
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "not an R4 element (R5-only or misspelt)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        parts.append(f"{path}: {msg}")
    more = len(errors) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def validate_resource(resource: dict[str, Any]) -> tuple[bool, str]:
    """Validate one resource dict as FHIR R4 (R4B models). Returns ``(ok, message)``."""
    from pydantic import ValidationError

    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False, "no resourceType"
    try:
        model = _model(rtype)
    except (ValueError, KeyError, AttributeError):
        return False, f"{rtype!r} is not an R4 resource type"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return False, format_errors(rtype, exc.errors())
    except RecursionError:
        return False, f"{rtype}: nested too deeply to validate"
    except Exception as exc:  # noqa: BLE001 - fhir.resources raises assorted errors on odd input
        return False, f"{rtype}: {exc}"
    return True, ""
