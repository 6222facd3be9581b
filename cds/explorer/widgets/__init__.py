"""Clinician case explorer widgets (ipywidgets 8): worklist, case view, image viewer, review actions.

Widgets read a :class:`cds.sources.cohort.Cohort` and :class:`cds.finding.Finding` records only; they never
parse FHIR or call a model. Every composite widget also renders as static HTML (for papermill
outputs, nbconvert exports and anything else without a live widget frontend). Colours come from
JupyterLab's theme variables (light and dark themes, WCAG AA contrast: :mod:`.theme`); the worklist is
an accessible sortable grid usable with the keyboard (:mod:`.grid`).

The submodules import ipywidgets; this package itself stays cheap to import.

>>> import cds.explorer.widgets
>>> sorted(cds.explorer.widgets.__all__)[:2]
['ActionsPanel', 'CaseExplorer']
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CaseExplorer": "cds.explorer.widgets.explorer",
    "CaseView": "cds.explorer.widgets.case_view",
    "ImageViewer": "cds.explorer.widgets.viewer",
    "ActionsPanel": "cds.explorer.widgets.actions",
    "WorklistWidget": "cds.explorer.widgets.worklist",
    "WorklistGrid": "cds.explorer.widgets.grid",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cds.explorer.widgets' has no attribute {name!r}")
