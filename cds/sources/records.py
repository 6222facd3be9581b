"""The two records the FHIR layer passes around: a resource with its origin, and a problem found on input.

:class:`Problem` kinds, grouped by what happened to the data (see :data:`PROBLEM_KINDS`):

- the **file** (or, for ``too-deep`` and ``not-fhir``, the one entry or line) was not read: ``json``,
  ``not-fhir``, ``encoding``, ``too-deep``, ``too-large``, ``not-regular-file``, ``outside-root``, ``unreadable``;
- the **resource** was left out: ``validation``, ``malformed``, ``conflicting-duplicate``
  (a second, different copy of a resource id; the first copy is kept);
- a **reference** is not used: ``dangling-reference``, ``cross-patient-reference``;
- the resource is kept but one **value** is left empty: ``future-birth-date``, ``future-death-date``,
  ``death-before-birth``, ``unparseable-date``, ``end-before-start``, ``wrong-type``, ``wrong-code``,
  ``location-refused`` (a pixel location outside the cohort root or allow-listed DICOMweb hosts).

>>> str(Problem("b.json", 2, "Patient", "p1", "future-birth-date", "Patient.birthDate is after today"))
'b.json entry 2 Patient/p1: Patient.birthDate is after today'
>>> kind_group("too-large"), kind_group("wrong-type")
('file', 'value')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RawResource", "Problem", "PROBLEM_KINDS", "kind_group", "problem_for"]

#: Every Problem kind, by what happened to the data it names.
PROBLEM_KINDS: dict[str, tuple[str, ...]] = {
    "file": ("json", "not-fhir", "encoding", "too-deep", "too-large", "not-regular-file", "outside-root",
             "unreadable"),
    "resource": ("validation", "malformed", "conflicting-duplicate"),
    "reference": ("dangling-reference", "cross-patient-reference"),
    "value": ("future-birth-date", "future-death-date", "death-before-birth", "unparseable-date",
              "end-before-start", "wrong-type", "wrong-code", "location-refused"),
}


def kind_group(kind: str) -> str:
    """``file``, ``resource``, ``reference`` or ``value``: what a problem of this kind did to the data."""
    for group, kinds in PROBLEM_KINDS.items():
        if kind in kinds:
            return group
    raise KeyError(f"unknown problem kind {kind!r}")


@dataclass(frozen=True)
class RawResource:
    """One FHIR resource as parsed JSON, with its origin (file or URL, and entry/line index)."""

    resource: dict[str, Any]
    source: str
    index: int | None = None
    full_url: str | None = None


@dataclass(frozen=True)
class Problem:
    """A file, resource or value that could not be used (or was used only in part), and why.

    ``kind`` is one of :data:`PROBLEM_KINDS`; ``message`` names the field and never holds a
    patient's identifying values (names, birth dates).
    """

    source: str
    index: int | None
    resource_type: str | None
    resource_id: str | None
    kind: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = self.source + (f" entry {self.index}" if self.index is not None else "")
        what = "/".join(x for x in (self.resource_type, self.resource_id) if x)
        return f"{where}{' ' + what if what else ''}: {self.message}"


def problem_for(rr: RawResource, kind: str, message: str) -> Problem:
    """A problem naming ``rr``'s file, entry, type and id (an id that is not a string is shown as ``None``)."""
    rid = rr.resource.get("id")
    rt = rr.resource.get("resourceType")
    return Problem(rr.source, rr.index, rt if isinstance(rt, str) else None,
                   rid if isinstance(rid, str) else None, kind, message)
