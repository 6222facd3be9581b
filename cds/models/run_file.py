"""One model on one image file, DICOM folder or series, outside any cohort: what ``cds run`` does.

>>> parse_ehr(["age=63", "sex=female", "crp=<5"])
{'age': 63.0, 'sex': 'female', 'crp': '<5'}
>>> parse_ehr(["age"])
Traceback (most recent call last):
...
cds.errors.ParameterError: --ehr: 'age' is not NAME=VALUE
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cds.errors import ImageReadError, ParameterError

if TYPE_CHECKING:
    from cds.finding import Finding

__all__ = ["run_file", "parse_ehr", "findings_table", "read_model_input"]


def parse_ehr(pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings -> {name: value}; numbers become floats, ``none`` / empty becomes None."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ParameterError("--ehr", f"{pair!r} is not NAME=VALUE")
        text = value.strip()
        if text.lower() in ("", "none", "null"):
            out[name.strip()] = None
            continue
        try:
            out[name.strip()] = float(text)
        except ValueError:
            out[name.strip()] = text
    return out


def read_model_input(task_name: str, path: str | Path, series_uid: str | None = None) -> Any:
    """The Image a task reads from ``path``: a cine ``(frames, slices, rows, cols)`` for cmr-function
    (:func:`cds.models.cine.read_cine`), else :func:`cds.images.read.read_image`."""
    text = str(path)
    if not text.startswith(("http://", "https://")) and not Path(text).exists():
        raise ImageReadError(text, "no such file or folder")
    if task_name == "cmr-function":
        from cds.models.cine import read_cine

        return read_cine(text, series_uid=series_uid)
    from cds.images.read import read_image

    return read_image(text, series_uid=series_uid)


def run_file(model_id: str, path: str | Path, ehr: Sequence[str] | dict[str, Any] = (),
             models_dir: Sequence[str | Path] | None = None, series_uid: str | None = None,
             age_years: float | None = None, view: str | None = None) -> list[Finding]:
    """Run model ``model_id`` (built-in or in ``models_dir``) on the image at ``path`` with EHR inputs
    (``NAME=VALUE`` strings or a dict); the Findings carry the image's own identity (DICOM header, or the
    file name). An unknown model, unreadable path or missing EHR input raises a :class:`cds.errors.CdsError`
    naming it.

    The model answers only inside its intended use (:mod:`cds.models.vouch`): ``age_years`` and ``view``
    tell it the patient's age and the view when the file does not (a DICOM PatientAge / ViewPosition is
    read from the file); a study outside raises :class:`cds.errors.OutsideIntendedUseError`, pixels that
    fail the quality gate :class:`cds.errors.InputQualityError`."""
    from cds.models.registry import ModelRegistry
    from cds.models.vouch import StudyFacts

    reg = ModelRegistry(user_dirs=list(models_dir) if models_dir else None)
    reg.get(model_id)  # unknown model: named before any image is read
    values = dict(ehr) if isinstance(ehr, dict) else parse_ehr(ehr)
    image = read_model_input(reg.task_of(model_id), path, series_uid)
    if age_years is not None and (not isinstance(age_years, int | float) or not 0 <= float(age_years) <= 130):
        raise ParameterError("--age", f"{age_years!r}: expected the patient's age in years, 0 to 130")
    facts = StudyFacts("", age_years=None if age_years is None else float(age_years), view=view)
    return reg.run_image(model_id, image, values, facts=facts, check_identity=False)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def findings_table(findings: Sequence[Finding]) -> str:
    """A plain-text table of Findings (code, display, probability, value, unit, interpretation, location).

    >>> from cds.finding import Finding, Location
    >>> print(findings_table([Finding("p", "1.2", "http://snomed.info/sct", "27925004", "Nodule", "m", "1",
    ...                               probability=0.91, threshold=0.5, location=Location("box", (1, 2, 3, 4, 5, 6)))]))
    code      display  probability  value  unit  interpretation  location
    27925004  Nodule   0.91         -      -     positive        box LPS [1, 2, 3, 4, 5, 6]
    >>> findings_table([])
    'no findings'
    """
    if not findings:
        return "no findings"
    head = ["code", "display", "probability", "value", "unit", "interpretation", "location"]
    rows = []
    for f in findings:
        loc = (f"{f.location.kind} {f.location.frame} [{', '.join(f'{c:g}' for c in f.location.coords)}]"
               if f.location else "-")
        rows.append([f.code, f.display, _cell(f.probability), _cell(f.value), _cell(f.unit), f.interpretation, loc])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows])
