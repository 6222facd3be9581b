"""Every code system, extension URL, identifier system and security label the package writes.

One place for the URIs, so the FHIR writer (:mod:`cds.fhir`), the review store, the cardiac-risk
study and the model tasks cannot drift apart. Plain strings and small ``{"system", "code",
"display"}`` codings only; nothing here builds resources.

Standard terminologies (SNOMED CT, LOINC, UCUM, HL7 terminology code systems), then the AI
Transparency on FHIR IG extension, then this package's local URIs (all under
``https://cds.example.org/fhir/``).

>>> AIAST["code"], PSEUDED["code"]
('AIAST', 'PSEUDED')
>>> LOCATION_URL.startswith(CDS_STRUCTURE_DEFINITION)
True
>>> INTERPRETATION["positive"]["code"], PRESENCE["negative"]["display"]
('POS', 'Absent')
"""

from __future__ import annotations

__all__ = [
    "SNOMED", "LOINC", "UCUM", "DCM", "DICOM_UID_SYSTEM", "DICOM_PATIENT_ID_SYSTEM", "URI_SYSTEM", "V3_OBS_VALUE", "V3_INTERPRETATION",
    "V3_ACT_CODE", "V2_0074", "OBS_CATEGORY", "DATA_ABSENT_REASON", "PROVENANCE_AGENT", "V3_DATA_OPERATION",
    "RISK_PROBABILITY", "AI_CONFIDENCE_URL", "CDS_BASE", "CDS_STRUCTURE_DEFINITION", "CDS_CODE_SYSTEM",
    "LOCATION_URL", "SERIES_URL", "MODEL_CARD_URL", "INSTANCE_LOCATION_URL", "VIEW_POSITION_URL",
    "FINDING_ID_SYSTEM", "REVIEWER_ID_SYSTEM", "CDS_CODES", "OVERRIDE_REASON_SYSTEM", "CARDIAC_RISK_CODES",
    "CMR_MEASURE_CODES", "MIAS_TISSUE_CODES", "NODULE_SUSPICION_CODES", "LUNG_RADS_SIZE_BAND_CODES", "BIRADS_DENSITY_SYSTEM", "SAX_STRUCTURE_SYSTEM", "AIAST", "PSEUDED", "REPORT_CODE", "RADIOLOGY", "IMAGING", "SURVEY",
    "INTERPRETATION", "CATEGORY_INTERPRETATION", "PRESENCE", "QUALITATIVE_RISK", "LOCAL_DISPLAYS", "coding",
    "EXTRA_MEASUREMENTS", "BODY_SITE_CODES", "FINDING_BODY_SITE", "UCUM_UNITS",
]

# ------------------------------------------------------------------------------- standard systems
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
#: DICOM Controlled Terminology (PS3.16): modality codes of ImagingStudy.series.modality.
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: Identifier system of DICOM UIDs (values ``urn:oid:<uid>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: Patient.identifier system of the DICOM PatientID a patient's images carry (accepted by the record check)
DICOM_PATIENT_ID_SYSTEM = "urn:cds:identifier:dicom-patient-id"
#: RFC 3986 URI system (an ImagingStudy instance's sopClass ``urn:oid:<uid>``; read as a UID system too).
URI_SYSTEM = "urn:ietf:rfc:3986"
V3_OBS_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: HL7 v3 ActCode: Encounter.class (IMP, ACUTE).
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: HL7 data-absent-reason: why a value is missing (e.g. a censored lab value ``<x``).
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"

#: The AI Transparency on FHIR IG (STU1 ballot) confidence extension; valueDecimal 0..1.
AI_CONFIDENCE_URL = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AIconfidence"

# ------------------------------------------------------------------------------------ local URIs
CDS_BASE = "https://cds.example.org/fhir/"
CDS_STRUCTURE_DEFINITION = CDS_BASE + "StructureDefinition/"
CDS_CODE_SYSTEM = CDS_BASE + "CodeSystem/"
#: Where the finding is in the patient (complex extension: kind, frame, coordinate, ref, sopInstanceUid).
LOCATION_URL = CDS_STRUCTURE_DEFINITION + "finding-location"
#: The DICOM Series Instance UID the finding comes from (valueOid).
SERIES_URL = CDS_STRUCTURE_DEFINITION + "dicom-series-uid"
#: On Device: valueReference -> the DocumentReference holding the model card.
MODEL_CARD_URL = CDS_STRUCTURE_DEFINITION + "model-card"
#: On an ImagingStudy instance: where its pixels are (valueUrl, a path relative to the Bundle or a URL).
INSTANCE_LOCATION_URL = CDS_STRUCTURE_DEFINITION + "instance-location"
#: On an ImagingStudy series: the DICOM View Position (valueCode: AP, PA, LL, RL).
VIEW_POSITION_URL = CDS_STRUCTURE_DEFINITION + "view-position"
#: Observation.identifier system whose value is ``Finding.id``.
FINDING_ID_SYSTEM = CDS_BASE + "finding-id"
#: Practitioner.identifier system of the review store's reviewer ids.
REVIEWER_ID_SYSTEM = "https://cds.example.org/reviewer"
#: Local code system for AI-result components no standard terminology names.
CDS_CODES = CDS_CODE_SYSTEM + "ai-result"
#: Code system of the review store's override reasons.
OVERRIDE_REASON_SYSTEM = CDS_CODE_SYSTEM + "override-reason"
#: Local code system of the cardiac-risk study (outcome, method).
CARDIAC_RISK_CODES = CDS_CODE_SYSTEM + "cardiac-risk"
#: Local code system of the CMR measures no LOINC code names (strain): LOINC has echo-specific strain codes
#: only (e.g. 81401-2 "Left ventricular Maximum circumferential strain by US 2D"), none for CMR or method-neutral.
CMR_MEASURE_CODES = CDS_CODE_SYSTEM + "cmr-measures"
#: Local code system of the mini-MIAS background tissue classes (F, G, D) of the mammo-density task.
MIAS_TISSUE_CODES = CDS_CODE_SYSTEM + "mias-background-tissue"
#: Local code system of ct-nodule-characterisation's suspicion output (LIDC radiologists' rating >= 4 of 5; not pathology).
NODULE_SUSPICION_CODES = CDS_CODE_SYSTEM + "nodule-suspicion"
#: Local code system of the Lung-RADS v2022 baseline solid-nodule size bands ("2", "3", "4A", "4B"): a size
#: category only, deliberately not the Lung-RADS assessment category (which also needs type, growth, morphology).
LUNG_RADS_SIZE_BAND_CODES = CDS_CODE_SYSTEM + "lung-rads-2022-size-band"
#: Local code system of the ACR BI-RADS 5th edition breast composition categories (codes "A".."D"; Zoo adapter).
BIRADS_DENSITY_SYSTEM = "urn:cds:codesystem:acr-birads-breast-density"
#: Local code system of the Zoo ventricular bundle's structures; codes are its metadata ``channel_def`` names.
SAX_STRUCTURE_SYSTEM = "urn:cds:codesystem:monai-zoo-ventricular-short-axis-3label"


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    """A FHIR Coding dict (``display`` left out when empty).

    >>> coding(SNOMED, 52101004, "Present")
    {'system': 'http://snomed.info/sct', 'code': '52101004', 'display': 'Present'}
    """
    c = {"system": system, "code": str(code)}
    if display:
        c["display"] = str(display)
    return c


# -------------------------------------------------------------------------------------- codings
#: Security label on every AI-made resource.
AIAST = coding(V3_OBS_VALUE, "AIAST", "Artificial Intelligence asserted")
#: Security label of the pseudonymous Patient stub of de-identified output.
PSEUDED = coding(V3_OBS_VALUE, "PSEUDED", "pseudonymized")
REPORT_CODE = coding(LOINC, "18748-4", "Diagnostic imaging study")
RADIOLOGY = coding(V2_0074, "RAD", "Radiology")
IMAGING = coding(OBS_CATEGORY, "imaging", "Imaging")
SURVEY = coding(OBS_CATEGORY, "survey", "Survey")
#: Why a model gave no answer (a :class:`cds.finding.Failure` state) -> HL7 data-absent-reason.
NO_ANSWER_REASON = {
    "outside-intended-use": coding(DATA_ABSENT_REASON, "not-applicable", "Not Applicable"),
    "input-rejected": coding(DATA_ABSENT_REASON, "not-performed", "Not Performed"),
    "record-mismatch": coding(DATA_ABSENT_REASON, "not-performed", "Not Performed"),
    "failed": coding(DATA_ABSENT_REASON, "error", "Error"),
}

#: Finding interpretation -> v3 ObservationInterpretation.
INTERPRETATION: dict[str, dict[str, str]] = {
    "positive": coding(V3_INTERPRETATION, "POS", "Positive"),
    "negative": coding(V3_INTERPRETATION, "NEG", "Negative"),
    "indeterminate": coding(V3_INTERPRETATION, "IND", "Indeterminate"),
}
#: ``extra["ef_category"]`` of a measurement -> v3 ObservationInterpretation.
CATEGORY_INTERPRETATION: dict[str, dict[str, str]] = {
    "reduced": coding(V3_INTERPRETATION, "L", "Low"),
    "not reduced": coding(V3_INTERPRETATION, "N", "Normal"),
    "indeterminate": INTERPRETATION["indeterminate"],
}
#: Finding interpretation -> SNOMED CT presence value (Observation.valueCodeableConcept).
PRESENCE: dict[str, dict[str, str]] = {
    "positive": coding(SNOMED, "52101004", "Present"),
    "negative": coding(SNOMED, "2667000", "Absent"),
    "indeterminate": coding(SNOMED, "82334004", "Indeterminate"),
}
#: Finding interpretation -> RiskAssessment.prediction.qualitativeRisk (uncalibrated scores).
QUALITATIVE_RISK: dict[str, dict[str, str]] = {
    "positive": coding(RISK_PROBABILITY, "high", "High likelihood"),
    "indeterminate": coding(RISK_PROBABILITY, "moderate", "Moderate likelihood"),
    "negative": coding(RISK_PROBABILITY, "low", "Low likelihood"),
}
#: Codes of :data:`CDS_CODES` -> display.
LOCAL_DISPLAYS: dict[str, str] = {
    "probability": "Model probability that the finding is present",
    "decision-threshold": "Decision threshold (operating point) used",
    "indeterminate-band": "Indeterminate band (scores reported as indeterminate)",
}

#: ``Finding.extra`` keys that become Observation components: key -> (system, code, display, UCUM unit).
EXTRA_MEASUREMENTS: dict[str, tuple[str, str, str, str]] = {
    "diameter_mm": (SNOMED, "81827009", "Diameter", "mm"),
    "volume_ml": (SNOMED, "118565006", "Volume", "mL"),
}


def _sct(code: str, display: str) -> dict[str, str]:
    return {"code_system": SNOMED, "code": code, "display": display}


#: Body-site text (card ``body_site`` or the series' body site, lower case) -> SNOMED coding.
BODY_SITE_CODES: dict[str, dict[str, str]] = {
    "chest": _sct("51185008", "Thoracic structure"),
    "thorax": _sct("51185008", "Thoracic structure"),
    "thoracic structure": _sct("51185008", "Thoracic structure"),
    "lung": _sct("39607008", "Lung structure"),
    "lung structure": _sct("39607008", "Lung structure"),
    "breast": _sct("76752008", "Breast structure"),
    "breast structure": _sct("76752008", "Breast structure"),
    "heart": _sct("80891009", "Heart structure"),
    "heart structure": _sct("80891009", "Heart structure"),
}
#: Finding code -> body site, more precise than the card's region (cardiomegaly: heart, not chest).
FINDING_BODY_SITE: dict[tuple[str, str], str] = {
    (SNOMED, "27925004"): "lung",  # nodule
    (SNOMED, "233604007"): "lung",  # pneumonia
    (SNOMED, "8186001"): "heart",  # cardiomegaly
    (LOINC, "10230-1"): "heart", (LOINC, "8811-2"): "heart",  # LV ejection fraction
    (LOINC, "75988-6"): "heart", (LOINC, "75989-4"): "heart",  # LV volumes
}
#: Unit spellings of model cards -> UCUM code.
UCUM_UNITS: dict[str, str] = {"ml": "mL", "percent": "%", "pct": "%", "years": "a", "year": "a", "days": "d",
                              "day": "d", "months": "mo", "month": "mo", "weeks": "wk", "week": "wk"}
