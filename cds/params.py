"""Parameter checks in one place: the command line (:mod:`cds.cli`) and the notebooks use them.

Papermill only warns on unknown names and checks no types, so every cds notebook validates its
parameters here (:func:`validate_parameters`, :class:`Param`) before doing any work; the ``cds``
subcommands check their options with the same helpers (:func:`iso_date`, :func:`probability`,
:func:`count`, :func:`port`, :func:`output_dir`, :func:`existing_path`, :func:`model_ids`). Each raises
:class:`cds.errors.ParameterError` naming the parameter and what to give instead. Standard library
only (``cds --help`` stays fast).

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
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cds.errors import ParameterError

__all__ = ["Param", "validate_parameters", "iso_date", "is_iso_date", "probability", "count", "number", "port",
           "output_dir", "existing_path", "model_ids", "non_empty"]


@dataclass(frozen=True)
class Param:
    """One parameter: its type(s), default, an optional check and a hint shown when it fails.

    ``check`` returns False for a bad value or raises :class:`ParameterError` itself (with its own
    reason); ``secret`` keeps the value out of every message (a salt, a token).
    """

    types: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], bool] | None = None
    hint: str = ""
    nullable: bool = False
    secret: bool = False


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
        shown = "(hidden)" if p.secret else repr(v)
        if not ok:
            raise ParameterError(name, f"expected {_type_name(p.types)}, got {type(v).__name__} {shown}")
        if p.check is not None and not p.check(v):
            raise ParameterError(name, f"invalid value {shown}" + (f": {p.hint}" if p.hint else ""))
        out[name] = v
    return out


# ----------------------------------------------------------------------------- single-value checks
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")
_SLASHED = re.compile(r"\s*(\d{1,4})[/.](\d{1,2})[/.](\d{1,4})\s*")


def is_iso_date(value: Any) -> bool:
    """Whether ``value`` is a calendar date written ``YYYY-MM-DD``.

    >>> is_iso_date("2020-04-03"), is_iso_date("2020-02-30"), is_iso_date("03/04/2020"), is_iso_date(None)
    (True, False, False, False)
    """
    if not isinstance(value, str) or not _ISO.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def iso_date(value: Any, where: str) -> str:
    """``value`` when it is a ``YYYY-MM-DD`` calendar date; else :class:`ParameterError` naming ``where``.

    Slashed or dotted dates (``03/04/2020``: 3 April or 4 March?) are refused as ambiguous.

    >>> iso_date("2020-04-03", "--reference-date")
    '2020-04-03'
    >>> iso_date("03/04/2020", "--reference-date")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --reference-date: '03/04/2020' is ambiguous (day/month or month/day?); \
give the date as ISO YYYY-MM-DD, e.g. 2020-04-03 or 2020-03-04
    >>> iso_date("2020-02-30", "start_date")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: start_date: '2020-02-30' is not a calendar date; give it as YYYY-MM-DD (e.g. 2026-01-01)
    """
    if is_iso_date(value):
        return value
    m = _SLASHED.fullmatch(value) if isinstance(value, str) else None
    if m:
        a, b, c = m.groups()
        if len(a) == 4:
            guess = f"{a}-{int(b):02d}-{int(c):02d}"
        else:
            year = c if len(c) == 4 else "YYYY"
            guess = f"{year}-{int(b):02d}-{int(a):02d} or {year}-{int(a):02d}-{int(b):02d}"
        raise ParameterError(where, f"{value!r} is ambiguous (day/month or month/day?); give the date as ISO "
                                    f"YYYY-MM-DD, e.g. {guess}")
    what = "is not a calendar date" if isinstance(value, str) and _ISO.fullmatch(value) else "is not a date"
    raise ParameterError(where, f"{value!r} {what}; give it as YYYY-MM-DD (e.g. 2026-01-01)")


def number(value: Any, where: str, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``); text is parsed.

    >>> number("2.5", "--minutes-per-study", 0, 1440, low_open=True)
    2.5
    >>> number("nan", "--minutes-per-study", 0, 1440)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --minutes-per-study: 'nan' is not a finite number; give a number between 0 and 1440
    """
    rng = _range_text(low, high, low_open)
    if isinstance(value, bool):
        raise ParameterError(where, f"expected a number, got {value!r}{rng}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParameterError(where, f"{value!r} is not a number{rng}") from None
    if not math.isfinite(x):
        raise ParameterError(where, f"{value!r} is not a finite number{rng}")
    if (low is not None and (x < low or (low_open and x == low))) or (high is not None and x > high):
        raise ParameterError(where, f"{value!r} is out of range{rng}")
    return x


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"; give a number {'above' if low_open else 'between'} {low:g}{' and at most' if low_open else ' and'} " \
               f"{high:g}"
    if low is not None:
        return f"; give a number {'>' if low_open else '>='} {low:g}"
    return ""


def probability(value: Any, where: str) -> float:
    """A decision threshold / probability: a finite number in 0..1 (text is parsed).

    >>> probability("0.4", "--threshold cxr-icu")
    0.4
    >>> probability(1.5, "thresholds['cxr-icu']")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: thresholds['cxr-icu']: 1.5 is out of range; give a number between 0 and 1
    """
    return number(value, where, 0.0, 1.0)


def count(value: Any, where: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number ``>= minimum`` (and ``<= maximum``); text is parsed, bools and fractions refused.

    >>> count("3", "--n-boot", 0)
    3
    >>> count(-5, "--n-boot", 0, 100_000)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --n-boot: -5 is out of range; give a whole number from 0 to 100000
    """
    rng = f"; give a whole number from {minimum}" + (f" to {maximum}" if maximum is not None else " or more")
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ParameterError(where, f"{value!r} is not a whole number{rng}")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(where, f"{value!r} is not a whole number{rng}") from None
    if n < minimum or (maximum is not None and n > maximum):
        raise ParameterError(where, f"{value!r} is out of range{rng}")
    return n


def port(value: Any, where: str = "--port") -> int:
    """A TCP port number, 1..65535.

    >>> port("8866")
    8866
    >>> port(99999)
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --port: 99999 is out of range; give a whole number from 1 to 65535 (or omit it for a free port)
    """
    try:
        return count(value, where, 1, 65535)
    except ParameterError as exc:
        raise ParameterError(where, f"{exc.reason} (or omit it for a free port)") from None


def non_empty(value: Any, where: str, what: str) -> str:
    """``value`` when it is a non-blank string; else :class:`ParameterError` asking for ``what``.

    >>> non_empty(" ", "--out", "an output folder")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --out: empty; give an output folder
    """
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(where, f"{'empty' if isinstance(value, str) else repr(value)}; give {what}")
    return value


def output_dir(value: Any, where: str) -> Path:
    """A folder outputs can be written to: not blank, not an existing file, no file on the way to it, and
    the nearest existing folder writable. Nothing is created.

    >>> output_dir("", "--out")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --out: empty; give an output folder (it is created if needed)
    >>> output_dir(__file__, "--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --out: '...params.py' is a file, not a folder; give a folder (it is created if needed)
    """
    path = Path(non_empty(value, where, "an output folder (it is created if needed)")).expanduser()
    probe = path
    while True:
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                what = f"'{value}' is a file" if probe == path else f"'{probe}' (on the way to '{value}') is a file"
                raise ParameterError(where, f"{what}, not a folder; give a folder (it is created if needed)")
            if not os.access(probe, os.W_OK | os.X_OK):
                raise ParameterError(where, f"cannot write into '{probe}' (permission denied); give a folder you "
                                            "can write to")
            return path
        if probe.parent == probe:
            return path
        probe = probe.parent


def existing_path(value: Any, where: str, kind: str = "any", what: str = "") -> Path:
    """``value`` as a path that exists: ``kind`` ``"file"``, ``"dir"`` or ``"any"``; ``what`` says what to give.

    >>> existing_path("/no/such/place", "--data", "dir", "the data folder")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --data: '/no/such/place' does not exist; give the data folder
    """
    hint = what or {"file": "an existing file", "dir": "an existing folder"}.get(kind, "an existing file or folder")
    path = Path(non_empty(value, where, hint)).expanduser()
    if not path.exists():
        raise ParameterError(where, f"'{value}' does not exist; give {hint}")
    if kind == "file" and not path.is_file():
        raise ParameterError(where, f"'{value}' is not a file; give {hint}")
    if kind == "dir" and not path.is_dir():
        raise ParameterError(where, f"'{value}' is not a folder; give {hint}")
    return path


def model_ids(values: Sequence[Any] | str, where: str, known: Iterable[str]) -> list[str]:
    """A non-empty list of distinct, known model ids (a comma-separated string is split).

    >>> model_ids("pneumonia, cxr-icu", "--models", ["pneumonia", "cxr-icu"])
    ['pneumonia', 'cxr-icu']
    >>> model_ids("pneumona", "--models", ["pneumonia", "cxr-icu"])
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: --models: unknown model 'pneumona' (did you mean 'pneumonia'?); available: cxr-icu, pneumonia
    """
    known = sorted(known)
    items = [m.strip() for m in values.split(",")] if isinstance(values, str) else list(values)
    if not items or any(not isinstance(m, str) or not m.strip() for m in items):
        raise ParameterError(where, f"{values!r}: give one or more model ids separated by commas, e.g. "
                                    f"{','.join(known[:2])} (see `cds models`)")
    items = [m.strip() for m in items]
    dupes = sorted({m for m in items if items.count(m) > 1})
    if dupes:
        raise ParameterError(where, f"model(s) listed twice: {', '.join(dupes)}; list each once")
    unknown = [m for m in items if m not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(where, f"unknown model{'s' if len(unknown) > 1 else ''} "
                                    f"{', '.join(map(repr, unknown))}{hint}; available: {', '.join(known)}")
    return items
