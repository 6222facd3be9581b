"""Type-checked notebook parameters: papermill only warns on unknown names and checks no types,
so every cds notebook validates its parameters here before doing any work.

>>> spec = {"threshold": Param(float, 0.5, check=lambda v: 0 <= v <= 1, hint="between 0 and 1")}
>>> validate_parameters({"threshold": 0.7}, spec)
{'threshold': 0.7}
>>> validate_parameters({"threshold": "high"}, spec)
Traceback (most recent call last):
...
cds.errors.ParameterError: threshold: expected float, got str 'high'
>>> validate_parameters({"treshold": 0.7}, spec)
Traceback (most recent call last):
...
cds.errors.ParameterError: treshold: unknown parameter (did you mean 'threshold'?); known: threshold
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cds.errors import ParameterError

__all__ = ["Param", "validate_parameters"]


@dataclass(frozen=True)
class Param:
    """One parameter: its type(s), default, an optional check and a hint shown when it fails."""

    types: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], bool] | None = None
    hint: str = ""
    nullable: bool = False


def _type_name(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def validate_parameters(values: Mapping[str, Any], spec: Mapping[str, Param]) -> dict[str, Any]:
    """Check ``values`` against ``spec``; return a full dict (defaults filled in).

    Raises :class:`ParameterError` naming the first bad parameter: an unknown name, a wrong type
    (ints are accepted for floats; bools are not accepted for numbers), or a failed check.
    """
    for name in values:
        if name not in spec:
            close = difflib.get_close_matches(name, list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParameterError(name, f"unknown parameter{hint}; known: {', '.join(spec)}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        v = values.get(name, p.default)
        if v is None and p.nullable:
            out[name] = None
            continue
        types = p.types if isinstance(p.types, tuple) else (p.types,)
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(v, types)
        if not ok:
            raise ParameterError(name, f"expected {_type_name(p.types)}, got {type(v).__name__} {v!r}")
        if p.check is not None and not p.check(v):
            raise ParameterError(name, f"invalid value {v!r}" + (f": {p.hint}" if p.hint else ""))
        out[name] = v
    return out
