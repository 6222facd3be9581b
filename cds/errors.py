"""Errors a user can cause. Each names the file, resource or parameter and what to do.

>>> str(ImageReadError("scan.dcm", "no pixel data"))
'scan.dcm: no pixel data'
"""

from __future__ import annotations

__all__ = ["CdsError", "FhirInputError", "ImageReadError", "ParameterError", "ModelInputError", "NoAnswer",
           "RecordMismatchError", "InputQualityError", "OutsideIntendedUseError", "StudyTimeLimitError"]


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


class NoAnswer(ModelInputError):
    """A model must not answer for this input; ``state`` says which kind of refusal it is (the
    :attr:`cds.finding.Failure.state` and the worklist's AI state), ``where`` what was checked."""

    state = "failed"


class RecordMismatchError(NoAnswer):
    """The image is not the one its FHIR ImagingStudy describes (patient, study, series, instance or
    modality differ): it may be another patient's study.

    >>> e = RecordMismatchError("PatientID", "file says 'p2', the ImagingStudy's patient is 'p1'")
    >>> e.state, str(e)
    ('record-mismatch', "PatientID: file says 'p2', the ImagingStudy's patient is 'p1'")
    """

    state = "record-mismatch"


class InputQualityError(NoAnswer):
    """The pixels fail the input quality gate (blank, non-finite, impossible geometry, or out of the
    model's training distribution)."""

    state = "input-rejected"


class OutsideIntendedUseError(NoAnswer):
    """The study is outside the model card's intended population or inputs (age, view, modality,
    resolution, body part)."""

    state = "outside-intended-use"


class StudyTimeLimitError(_Located):
    """One study ran past the per-study time limit of a cohort run."""
