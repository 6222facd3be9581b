"""cds: imaging AI next to the patient record, in Jupyter.

The public API is imported lazily so that ``import cds`` and ``cds --help`` stay fast.

>>> import cds
>>> cds.__version__
'0.2.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"
"""The one version string: pyproject.toml reads it (`dynamic = ["version"]`), `cds --version` prints it."""

_LAZY = {
    "load_cohort": "cds.sources.cohort",
    "Cohort": "cds.sources.cohort",
    "Finding": "cds.finding",
    "Location": "cds.finding",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cds' has no attribute {name!r}")
