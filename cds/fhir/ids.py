"""The one FHIR id scheme of the package: ``uuid5(cds namespace, "<ResourceType>|<parts>")``.

Every resource the package writes gets its id here, so the cohort report's results, the review
store's reviewed Observations and Provenances and the cardiac-risk RiskAssessments point at each
other by the same ids. Ids depend on what the resource is about (a Finding's id, a model id and
version, a study), never on scores, so a rerun replaces resources instead of adding new ones.

>>> from cds.finding import Finding
>>> f = Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.3)
>>> observation_id(f) == observation_id(f.id)
True
>>> len(device_id("m", "1")), device_id("m", "1") != model_card_id("m", "1")
(36, True)
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cds.finding import Finding

__all__ = [
    "NAMESPACE", "resource_id", "urn", "observation_id", "risk_assessment_id", "device_id", "model_card_id",
    "report_id", "provenance_id", "review_provenance_id", "read_observation_id", "assessment_id", "bundle_id",
]

#: The uuid5 namespace of every id (derived from the package's FHIR base URL).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cds.example.org/fhir/ai-results")


def resource_id(*parts: str) -> str:
    """``uuid5(NAMESPACE, "|".join(parts))``: the id of the resource named by ``parts``.

    >>> resource_id("Observation", "abc") == resource_id("Observation", "abc") != resource_id("Observation", "abd")
    True
    """
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def urn(rid: str) -> str:
    """The ``urn:uuid:`` fullUrl of a resource id inside a Bundle.

    >>> urn("0f8fad5b-d9cb-469f-a165-70867728950e")
    'urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e'
    """
    return "urn:uuid:" + rid


def _finding_id(finding: Finding | str) -> str:
    return finding if isinstance(finding, str) else finding.id


def observation_id(finding: Finding | str) -> str:
    """The FHIR id of a Finding's Observation: ``uuid5(cds namespace, "Observation|" + Finding.id)``.

    Takes the Finding or its ``id``. Stable across runs (``Finding.id`` depends on patient, study,
    series, code, model id+version and location, not on the score), so the review store's
    reviewed Observation and Provenance target ``Observation/<id>`` of the report's result. For a
    de-identified bundle pass :func:`cds.reports.deid.pseudonymise_finding` ``(finding, salt)``.

    >>> from dataclasses import replace
    >>> from cds.finding import Finding
    >>> f = Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.3)
    >>> observation_id(f) == observation_id(replace(f, probability=0.9))
    True
    """
    return resource_id("Observation", _finding_id(finding))


def no_answer_id(patient_id: str, study_uid: str, series_uid: str | None, model_id: str, model_version: str) -> str:
    """The FHIR id of the Observation saying a model gave no answer for a series (a :class:`cds.finding.Failure`).

    >>> no_answer_id("p", "1.2", None, "m", "1") == no_answer_id("p", "1.2", None, "m", "1")
    True
    """
    return resource_id("Observation", "no-answer", patient_id, study_uid, series_uid or "", model_id, model_version)


def risk_assessment_id(finding: Finding | str) -> str:
    """The FHIR id of a prognostic Finding's RiskAssessment (uuid5 of ``Finding.id``).

    >>> risk_assessment_id("abc") != observation_id("abc")
    True
    """
    return resource_id("RiskAssessment", _finding_id(finding))


def assessment_id(model_id: str, model_version: str, patient_id: str, occurrence: str) -> str:
    """The FHIR id of a patient-level RiskAssessment of a model not tied to one Finding (cardiac risk).

    >>> assessment_id("m", "1", "p", "2026-01-01T00:00:00Z") == assessment_id("m", "1", "p", "2026-01-01T00:00:00Z")
    True
    """
    return resource_id("RiskAssessment", model_id, model_version, patient_id, occurrence)


def device_id(model_id: str, model_version: str) -> str:
    """The FHIR id of a model's Device (uuid5 of model id + version)."""
    return resource_id("Device", model_id, model_version)


def model_card_id(model_id: str, model_version: str) -> str:
    """The FHIR id of a model's model-card DocumentReference (uuid5 of model id + version)."""
    return resource_id("DocumentReference", model_id, model_version)


def report_id(patient_id: str, study_uid: str, model_id: str, model_version: str) -> str:
    """The FHIR id of the DiagnosticReport of one model run on one study."""
    return resource_id("DiagnosticReport", patient_id, study_uid, model_id, model_version)


def provenance_id(patient_id: str, study_uid: str, model_id: str, model_version: str) -> str:
    """The FHIR id of the Provenance of one model run on one study."""
    return resource_id("Provenance", patient_id, study_uid, model_id, model_version)


def review_provenance_id(action_id: str) -> str:
    """The FHIR id of the Provenance of one review-store action (accept, override, read).

    >>> review_provenance_id("a1") != provenance_id("a1", "", "", "")
    True
    """
    return resource_id("Provenance", "review", action_id)


def read_observation_id(action_id: str) -> str:
    """The FHIR id of the Observation of one reader-study read of the review store."""
    return resource_id("Observation", "read", action_id)


def bundle_id(full_urls: list[str]) -> str:
    """The id of a Bundle: uuid5 of its entries' fullUrls, in order."""
    return resource_id("Bundle", *full_urls)
