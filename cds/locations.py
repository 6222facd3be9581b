"""Where cds finds its own files: shipped bundles, notebooks, the sample cohort, the team's data.

Everything is located relative to the installed package (``importlib.resources``), so a wheel
installed anywhere finds the same files as a checkout. Standard library only.

>>> BUNDLES_DIR.name, BUNDLES_DIR.parent.name
('bundles', 'models')
>>> notebook_file("cohort_overview.ipynb").name
'cohort_overview.ipynb'
>>> sample_data_file("pneumoniamnist").name
'pneumoniamnist_sample.npz'
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["PACKAGE_DIR", "REPO_ROOT", "BUNDLES_DIR", "SAMPLE_DATA_FILES", "notebooks_dir", "notebook_file",
           "sample_cohort_dir", "cohort_source", "sample_data_dir", "sample_data_file", "shared_data_dir",
           "display_path"]

PACKAGE_DIR = Path(str(resources.files("cds")))
"""The installed ``cds`` package folder."""

REPO_ROOT = PACKAGE_DIR.parent
"""The folder holding the package: the repository root in a checkout, ``site-packages`` in a wheel."""

BUNDLES_DIR = PACKAGE_DIR / "models" / "bundles"
"""The shipped reference bundles (``cds/models/bundles/<model-id>/``)."""

SAMPLE_DATA_FILES = {"pneumoniamnist": "pneumoniamnist_sample.npz"}
"""The shipped small data subsets (``sample_data/<name>/<file>``, each with a ``SOURCE.md``)."""


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
    # a wheel: cds/fhir_samples/ (a namespace package: no importlib.resources path); a checkout: ./fhir_samples
    cands = [PACKAGE_DIR / "fhir_samples", REPO_ROOT / "fhir_samples"]
    return next((c for c in cands if (c / "SOURCES.md").is_file()), None)


def cohort_source(cohort: str | Path | None) -> str:
    """A cohort parameter as :func:`cds.load_cohort` takes it: ``""`` or ``None`` mean the shipped sample cohort.

    Raises :class:`cds.errors.ParameterError` naming ``cohort`` when the sample cohort is asked for and
    this installation has none.

    >>> cohort_source("https://fhir.example.org/fhir")
    'https://fhir.example.org/fhir'
    >>> Path(cohort_source("")).name
    'fhir_samples'
    """
    if cohort is not None and str(cohort).strip():
        return str(cohort)
    sample = sample_cohort_dir()
    if sample is None:
        from cds.errors import ParameterError

        raise ParameterError("cohort", "no cohort given and this installation has no sample cohort "
                                       "(fhir_samples/); give a folder, Bundle .json, .ndjson or FHIR server URL")
    return str(sample)


def sample_data_dir(name: str = "") -> Path | None:
    """The shipped small data subsets (``sample_data/``), or one of them by name; ``None`` if absent.

    >>> sample_data_dir("pneumoniamnist").name
    'pneumoniamnist'
    """
    for c in (PACKAGE_DIR / "sample_data", REPO_ROOT / "sample_data"):  # a wheel: cds/sample_data/; a checkout
        d = c / name if name else c
        if d.is_dir() and any(d.rglob("SOURCE.md")):
            return d
    return None


def sample_data_file(name: str) -> Path:
    """The data file of one shipped subset (:data:`SAMPLE_DATA_FILES`), e.g. ``"pneumoniamnist"``.

    Raises :class:`cds.errors.ParameterError` (parameter ``data_dir``) when it is unknown or not installed.
    """
    from cds.errors import ParameterError

    if name not in SAMPLE_DATA_FILES:
        raise ParameterError("data_dir", f"no shipped sample data set {name!r}; known: {', '.join(SAMPLE_DATA_FILES)}")
    d = sample_data_dir(name)
    f = d / SAMPLE_DATA_FILES[name] if d is not None else None
    if f is None or not f.is_file():
        raise ParameterError("data_dir", f"the sample data set {name!r} ({SAMPLE_DATA_FILES[name]}) is not part of "
                                         "this installation; give a data folder")
    return f


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
