"""Errors a user can cause. Each names the file, resource or parameter and what to do.

>>> str(ImageReadError("scan.dcm", "no pixel data"))
'scan.dcm: no pixel data'
"""

from __future__ import annotations

__all__ = ["CdsError", "FhirInputError", "ImageReadError", "ParameterError", "ModelInputError"]


class CdsError(Exception):
    """Base class for every error cds raises on purpose."""


class _Located(CdsError):
    def __init__(self, where: str, reason: str) -> None:
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class FhirInputError(_Located):
    """A FHIR source (file, folder, server) cannot be read at all."""


class ImageReadError(_Located):
    """An image (DICOM, NIfTI, PNG) cannot be read; ``where`` is the file or URL."""


class ParameterError(_Located):
    """A wrong parameter; ``where`` is the parameter name."""


class ModelInputError(_Located):
    """A model cannot run on a case: a declared input (image or EHR value) is missing."""
