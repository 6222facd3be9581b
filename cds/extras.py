"""Optional dependencies: which ``pip install "cds[extra]"`` brings a missing package.

The core (FHIR cohorts, tables, Findings) needs only the base dependencies; models need the
``imaging`` extra (torch, MONAI, ...), notebooks, reports and the explorer the ``notebooks`` extra
(papermill, voila, ipywidgets, ...). Code that imports such a package lazily calls :func:`require`,
and the CLI turns any :class:`ModuleNotFoundError` for a known optional package into one line with
the hint (:func:`install_hint`) instead of a traceback. Standard library only.

>>> install_hint(ModuleNotFoundError("No module named 'torch'", name="torch"))
'the optional package torch is not installed: pip install "cds[imaging]"'
>>> install_hint(ModuleNotFoundError("No module named 'nope'", name="nope")) is None
True
>>> require("json", "reading JSON").__name__
'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cds.errors import CdsError

__all__ = ["OPTIONAL_PACKAGES", "MissingDependency", "extra_for", "install_hint", "require"]

#: Top-level import name -> the extra of ``pyproject.toml`` that installs it.
OPTIONAL_PACKAGES: dict[str, str] = {
    "torch": "imaging",
    "monai": "imaging",
    "nibabel": "imaging",
    "skimage": "imaging",
    "sklearn": "imaging",
    "scipy": "imaging",
    "highdicom": "imaging",
    "dicomweb_client": "imaging",
    "papermill": "notebooks",
    "nbformat": "notebooks",
    "nbconvert": "notebooks",
    "nbclient": "notebooks",
    "ipykernel": "notebooks",
    "IPython": "notebooks",
    "ipywidgets": "notebooks",
    "voila": "notebooks",
    "ipyniivue": "notebooks",
    "jupyterlab": "notebooks",
    "jupytext": "notebooks",
}


class MissingDependency(CdsError):
    """An optional package is not installed; the message names it and the ``pip install`` that brings it."""


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted import name is looked up by its top level), else ``None``.

    >>> extra_for("monai.networks"), extra_for("pandas")
    ('imaging', None)
    """
    if not module:
        return None
    return OPTIONAL_PACKAGES.get(module.split(".")[0])


def install_hint(exc: ModuleNotFoundError) -> str | None:
    """One line saying which extra brings the missing module of ``exc``; ``None`` if it is not an optional one."""
    extra = extra_for(exc.name)
    if extra is None:
        return None
    return f'the optional package {exc.name.split(".")[0]} is not installed: pip install "cds[{extra}]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` saying that ``purpose`` needs it and how to install it.

    >>> require("torch_that_is_not_there", "training")
    Traceback (most recent call last):
    ...
    cds.extras.MissingDependency: training needs the package torch_that_is_not_there, which is not installed
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        extra = extra_for(exc.name or module)
        how = f': pip install "cds[{extra}]"' if extra else ""
        raise MissingDependency(f"{purpose} needs the package {exc.name or module}, which is not installed{how}") from None
