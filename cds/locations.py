"""Where cds finds its own files: shipped bundles, notebooks, the sample cohort, the team's data.

Everything is located relative to the installed package (``importlib.resources``), so a wheel
installed anywhere finds the same files as a checkout. Standard library only.

>>> BUNDLES_DIR.name, BUNDLES_DIR.parent.name
('bundles', 'models')
>>> notebook_file("cohort_overview.ipynb").name
'cohort_overview.ipynb'
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["PACKAGE_DIR", "REPO_ROOT", "BUNDLES_DIR", "notebooks_dir", "notebook_file", "sample_cohort_dir",
           "shared_data_dir", "display_path"]

PACKAGE_DIR = Path(str(resources.files("cds")))
"""The installed ``cds`` package folder."""

REPO_ROOT = PACKAGE_DIR.parent
"""The folder holding the package: the repository root in a checkout, ``site-packages`` in a wheel."""

BUNDLES_DIR = PACKAGE_DIR / "models" / "bundles"
"""The shipped reference bundles (``cds/models/bundles/<model-id>/``)."""


def notebooks_dir() -> Path:
    """The notebooks shipped with cds: ``$CDS_NOTEBOOKS`` or the package's ``cds.notebooks``."""
    env = os.environ.get("CDS_NOTEBOOKS")
    if env:
        return Path(env)
    return Path(str(resources.files("cds.notebooks")))


def notebook_file(name: str) -> Path:
    """One shipped notebook by file name (``"cohort_report.ipynb"``)."""
    return notebooks_dir() / name


def sample_cohort_dir() -> Path | None:
    """The embedded sample cohort (``fhir_samples/``) if this installation has it, else ``None``."""
    cands = [REPO_ROOT / "fhir_samples"]  # a checkout (also an editable install)
    try:
        cands.insert(0, Path(str(resources.files("cds.fhir_samples"))))  # a wheel: cds/fhir_samples/
    except (ModuleNotFoundError, TypeError):
        pass
    return next((c for c in cands if (c / "SOURCES.md").is_file()), None)


def shared_data_dir(set_name: str = "") -> Path:
    """``$CDS_SHARED_DATA/<set_name>`` or ``<repo>/../shared/data/<set_name>`` (may not exist).

    >>> shared_data_dir("medmnist").name
    'medmnist'
    """
    base = os.environ.get("CDS_SHARED_DATA")
    root = Path(base) if base else REPO_ROOT.parent / "shared" / "data"
    return (root / set_name) if set_name else root


def display_path(path: str | Path) -> str:
    """``path`` relative to the repository root when it is close by (``../shared/...``), else absolute.

    >>> display_path(REPO_ROOT / "cds")
    'cds'
    """
    p = Path(os.path.abspath(path))  # not resolve(): a symlinked ../shared keeps its short name
    rel = os.path.relpath(p, REPO_ROOT)
    return rel if rel.count("..") <= 2 else str(p)
