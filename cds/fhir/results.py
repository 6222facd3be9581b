"""AI results as FHIR R4: :class:`cds.finding.Finding` records -> a transaction Bundle an EHR can take.

The resource graph follows ``docs/AI-RESULTS-IN-FHIR.md``. For every *run* (one patient, one study,
one model id + version) :func:`results_bundle` writes

==========================  ===========================================================================
Observation (per Finding)   status ``preliminary``; category ``imaging``; code = the Finding's code;
                            value (below); interpretation POS / NEG / IND (v3-ObservationInterpretation);
                            components: model probability, decision threshold, indeterminate band,
                            per-class probabilities (``extra["class_probabilities"]``), nodule
                            diameter / volume (``extra["diameter_mm"]`` / ``["volume_ml"]``);
                            bodySite; derivedFrom -> ImagingStudy; device -> Device; confidence and
                            location extensions; ``identifier`` = the Finding id; note = explanation
RiskAssessment              one per *prognostic* Finding: prediction.outcome = the Finding's code;
                            ``probabilityDecimal`` only when the card says ``"calibrated": true``
                            (else ``qualitativeRisk`` high / moderate / low from POS / IND / NEG and the
                            raw score in ``rationale``); ``whenRange`` from the card's ``horizon``
                            (``{"low": 0, "high": 30, "unit": "d"}``) or ``horizon_days``; basis ->
                            ImagingStudy, the score Observation and the EHR Observations used
DiagnosticReport            status ``preliminary``; category RAD (v2-0074); code LOINC 18748-4
                            "Diagnostic imaging study"; subject; imagingStudy (when the cohort knows the
                            ImagingStudy id); result -> the Observations; conclusion (starts with
                            "AI-generated, preliminary"); conclusionCode = positive non-prognostic
                            findings;
                            presentedForm = the same text as Markdown
Provenance                  target -> every resource of the run plus its Device and model card;
                            recorded = ``recorded``; agent ``author`` -> the model Device, ``assembler``
                            -> cds (display only); entity ``source`` -> ImagingStudy, and when the
                            Finding used EHR inputs -> the Patient and the EHR Observations found
==========================  ===========================================================================

and once per model a **Device** (type text ``Artificial-Intelligence``; deviceName = model id;
version = model version, MONAI and PyTorch versions; properties for the decision threshold and the
indeterminate band; an extension pointing at its model card) and a **DocumentReference** holding the
model card rendered as Markdown (``text/markdown``, base64, with size and SHA-1).

A DiagnosticReport is made per study *and model run* (not per study): re-running one model on a
study then replaces only that model's report, never another model's results.

Values
------
* probability findings (classifiers, detectors): ``valueCodeableConcept`` = SNOMED Present
  (52101004) / Absent (2667000) / Indeterminate (82334004) from the Finding's interpretation; the
  probability itself is a component (code :data:`CDS_CODES` ``probability``, unit ``1``). No
  value[x] when the Finding has no threshold (interpretation ``measured``).
* measurements: ``valueQuantity`` with UCUM unit (``%``, ``mL``, ``mm`` ...). A measurement with a
  threshold is interpreted like a score; ``extra["ef_category"]`` (reduced / not reduced /
  indeterminate) becomes interpretation L / N / IND.

Codes and extensions chosen (none of the DICOM "DCM" codes of the research notes was confirmed:
DCM 122157 is "LV Findings" in DICOM PS3.16, not a probability, so it is NOT used):

* ``meta.security`` AIAST (v3-ObservationValue) on every resource this module makes except the
  pseudonymous Patient of de-identified mode (which carries PSEUDED instead);
* confidence: the AI Transparency IG extension :data:`AI_CONFIDENCE_URL` with ``valueDecimal`` =
  the model's probability that the coded finding is present (``Finding.probability``; for
  measurements ``extra["confidence"]`` when given, else no confidence);
* location: :data:`LOCATION_URL`, a complex extension with ``kind`` (point/box/mask), ``frame``
  (LPS/pixel), ``coordinate`` (repeated, in order: x, y, z or x0, y0, z0, x1, y1, z1 in mm),
  ``ref`` (mask file / SEG) and ``sopInstanceUid``;
* local codes for things no standard terminology names: :data:`CDS_CODES`.

De-identified mode
------------------
``deidentify=True`` (needs a secret ``salt``) replaces, before anything is built, the patient id
by ``HMAC-SHA256(salt, patient_id)`` (as a UUID) and every DICOM UID (study, series, instances,
location SOP instance) by ``2.25.<HMAC as integer>`` (see :func:`pseudonymise_finding`); all
resource ids therefore derive from pseudonyms and cannot be linked back to the identified bundle.
Removed: references to the EHR's Patient, ImagingStudy and Observation ids, study dates
(``effective``/``occurrence``), mask paths (``Location.ref``), and the EHR input values; the
bundle holds a stub Patient with only the pseudonymous id (no name, identifier, birth date,
gender). Kept: codes, scores, units, coordinates, the model card and the explanation text.

Examples
--------
>>> from cds.finding import Finding
>>> f = Finding("p1", "1.2.3", "http://snomed.info/sct", "8186001", "Cardiomegaly", "cxr", "1.0.0",
...             probability=0.81, threshold=0.5, indeterminate=(0.4, 0.6))
>>> card = {"model_id": "cxr", "intended_use": "demo", "threshold": 0.5}
>>> b = results_bundle([f], {"cxr": card}, recorded="2026-01-01T00:00:00Z")
>>> sorted({e["resource"]["resourceType"] for e in b["entry"]})
['Device', 'DiagnosticReport', 'DocumentReference', 'Observation', 'Provenance']
>>> obs = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation")
>>> obs["id"] == observation_id(f), obs["interpretation"][0]["coding"][0]["code"]
(True, 'POS')
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cds.errors import CdsError, ParameterError
from cds.finding import Finding, Location

__all__ = [
    "results_bundle", "results_json", "post_transaction", "observation_id", "device_id", "model_card_id",
    "report_id", "risk_assessment_id", "provenance_id", "pseudonymise_finding", "model_card_markdown",
    "FhirWriteError", "BODY_SITE_CODES", "AI_CONFIDENCE_URL", "LOCATION_URL", "CDS_CODES",
]

# ---------------------------------------------------------------------------------------------- codes
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3_OBS_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"

#: The AI Transparency on FHIR IG (STU1 ballot) confidence extension; valueDecimal 0..1.
AI_CONFIDENCE_URL = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AIconfidence"
_CDS_SD = "https://cds.example.org/fhir/StructureDefinition/"
#: Where the finding is in the patient (complex extension, see module docstring).
LOCATION_URL = _CDS_SD + "finding-location"
#: The DICOM Series Instance UID the finding comes from (valueOid).
SERIES_URL = _CDS_SD + "dicom-series-uid"
#: On Device: valueReference -> the DocumentReference holding the model card.
MODEL_CARD_URL = _CDS_SD + "model-card"
#: Observation.identifier system whose value is ``Finding.id``.
FINDING_ID_SYSTEM = "https://cds.example.org/fhir/finding-id"
#: Local code system for AI-result components no standard terminology names.
CDS_CODES = "https://cds.example.org/fhir/CodeSystem/ai-result"
DICOM_UID_SYSTEM = "urn:dicom:uid"

AIAST = {"system": V3_OBS_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}
PSEUDED = {"system": V3_OBS_VALUE, "code": "PSEUDED", "display": "pseudonymized"}
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY = {"system": V2_0074, "code": "RAD", "display": "Radiology"}
IMAGING = {"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}

_INTERPRETATION = {
    "positive": {"system": V3_INTERPRETATION, "code": "POS", "display": "Positive"},
    "negative": {"system": V3_INTERPRETATION, "code": "NEG", "display": "Negative"},
    "indeterminate": {"system": V3_INTERPRETATION, "code": "IND", "display": "Indeterminate"},
}
_CATEGORY_INTERPRETATION = {
    "reduced": {"system": V3_INTERPRETATION, "code": "L", "display": "Low"},
    "not reduced": {"system": V3_INTERPRETATION, "code": "N", "display": "Normal"},
    "indeterminate": _INTERPRETATION["indeterminate"],
}
_PRESENCE = {
    "positive": {"system": SNOMED, "code": "52101004", "display": "Present"},
    "negative": {"system": SNOMED, "code": "2667000", "display": "Absent"},
    "indeterminate": {"system": SNOMED, "code": "82334004", "display": "Indeterminate"},
}
_QUALITATIVE_RISK = {
    "positive": {"system": RISK_PROBABILITY, "code": "high", "display": "High likelihood"},
    "indeterminate": {"system": RISK_PROBABILITY, "code": "moderate", "display": "Moderate likelihood"},
    "negative": {"system": RISK_PROBABILITY, "code": "low", "display": "Low likelihood"},
}
_LOCAL = {
    "probability": "Model probability that the finding is present",
    "decision-threshold": "Decision threshold (operating point) used",
    "indeterminate-band": "Indeterminate band (scores reported as indeterminate)",
}
#: extra keys that become Observation components: key -> (system, code, display, UCUM unit).
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
_FINDING_BODY_SITE: dict[tuple[str, str], str] = {
    (SNOMED, "27925004"): "lung",  # nodule
    (SNOMED, "233604007"): "lung",  # pneumonia
    (SNOMED, "8186001"): "heart",  # cardiomegaly
    (LOINC, "10230-1"): "heart", (LOINC, "8811-2"): "heart",  # LV ejection fraction
    (LOINC, "75988-6"): "heart", (LOINC, "75989-4"): "heart",  # LV volumes
}
_UCUM = {"ml": "mL", "percent": "%", "pct": "%", "years": "a", "year": "a", "days": "d", "day": "d",
         "months": "mo", "month": "mo", "weeks": "wk", "week": "wk"}

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cds.example.org/fhir/ai-results")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


# ------------------------------------------------------------------------------------------------ ids
def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


def observation_id(finding: Finding) -> str:
    """The FHIR id of a Finding's Observation: ``uuid5(cds namespace, "Observation|" + Finding.id)``.

    Stable across runs (``Finding.id`` depends on patient, study, series, code, model id+version and
    location, not on the score), so review-status writers can target ``Observation/<id>``. For a
    de-identified bundle pass :func:`pseudonymise_finding` ``(finding, salt)``.

    >>> f = Finding("p", "1.2", "s", "c", "d", "m", "1", probability=0.3)
    >>> observation_id(f) == observation_id(replace(f, probability=0.9))
    True
    >>> len(observation_id(f))
    36
    """
    return _uuid("Observation", finding.id)


def risk_assessment_id(finding: Finding) -> str:
    """The FHIR id of a prognostic Finding's RiskAssessment (uuid5 of ``Finding.id``)."""
    return _uuid("RiskAssessment", finding.id)


def device_id(model_id: str, model_version: str) -> str:
    """The FHIR id of a model's Device (uuid5 of model id + version)."""
    return _uuid("Device", model_id, model_version)


def model_card_id(model_id: str, model_version: str) -> str:
    """The FHIR id of a model's model-card DocumentReference (uuid5 of model id + version)."""
    return _uuid("DocumentReference", model_id, model_version)


def report_id(patient_id: str, study_uid: str, model_id: str, model_version: str) -> str:
    """The FHIR id of the DiagnosticReport of one model run on one study."""
    return _uuid("DiagnosticReport", patient_id, study_uid, model_id, model_version)


def provenance_id(patient_id: str, study_uid: str, model_id: str, model_version: str) -> str:
    """The FHIR id of the Provenance of one model run on one study."""
    return _uuid("Provenance", patient_id, study_uid, model_id, model_version)


# ------------------------------------------------------------------------------------ pseudonymising
def _hmac(salt: str, value: str) -> bytes:
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).digest()


def _pseudo_patient(patient_id: str, salt: str) -> str:
    return str(uuid.UUID(bytes=_hmac(salt, "patient|" + patient_id)[:16], version=4))


def _pseudo_uid(uid: str | None, salt: str) -> str | None:
    if not uid:
        return uid
    return "2.25." + str(int.from_bytes(_hmac(salt, "uid|" + uid)[:16], "big"))


def pseudonymise_finding(finding: Finding, salt: str) -> Finding:
    """A copy of a Finding with pseudonymous patient id and DICOM UIDs (keyed by ``salt``).

    The patient id becomes a UUID from HMAC-SHA256(salt, id); UIDs become ``2.25.<integer>``
    (the DICOM form for UUID-derived UIDs) from HMAC-SHA256(salt, uid); ``Location.ref`` (a file
    path) is dropped and the EHR input values are replaced by their names only. The same salt gives
    the same pseudonyms on every run.

    >>> f = Finding("p1", "1.2.3", "s", "c", "d", "m", "1", probability=0.5)
    >>> g = pseudonymise_finding(f, "secret")
    >>> g.patient_id != "p1" and g.study_uid.startswith("2.25.")
    True
    >>> g == pseudonymise_finding(f, "secret") and g != pseudonymise_finding(f, "other")
    True
    """
    if not salt:
        raise ParameterError("salt", "de-identification needs a non-empty secret salt (an unsalted hash "
                                     "of a patient id can be reversed by trying every id)")
    loc = finding.location
    if loc is not None:
        loc = Location(loc.kind, loc.coords, None, loc.frame, _pseudo_uid(loc.sop_instance_uid, salt))
    return replace(
        finding, patient_id=_pseudo_patient(finding.patient_id, salt),
        study_uid=_pseudo_uid(finding.study_uid, salt) or "", series_uid=_pseudo_uid(finding.series_uid, salt),
        instance_uids=tuple(_pseudo_uid(u, salt) or "" for u in finding.instance_uids), location=loc,
        ehr_inputs={k: "(removed)" for k in finding.ehr_inputs},
        imaging_study_id=None, study_started=None, ehr_observation_ids=(),  # record ids and dates: dropped
    )


# ------------------------------------------------------------------------------------------- helpers
def _urn(rid: str) -> str:
    return "urn:uuid:" + rid


def _meta(*security: dict[str, str]) -> dict[str, Any]:
    return {"security": [dict(s) for s in (security or (AIAST,))]}


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    c = {"system": system, "code": str(code)}
    if display:
        c["display"] = str(display)
    return c


def _concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    cc: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text or display:
        cc["text"] = str(text or display)
    return cc


def _local(code: str) -> dict[str, Any]:
    return _concept(CDS_CODES, code, _LOCAL[code])


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ucum(unit: str) -> str:
    u = unit.strip()
    return _UCUM.get(u.lower(), u)


def _quantity(value: float, unit: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if unit:
        code = _ucum(unit)
        q.update({"unit": unit, "system": UCUM, "code": code})
    return q


def _fhir_datetime(ts: Any) -> str | None:
    """A FHIR dateTime from a (UTC) timestamp; midnight becomes a plain date (day resolution)."""
    if ts is None:
        return None
    try:
        import pandas as pd

        if pd.isna(ts):
            return None
        t = pd.Timestamp(ts)
    except (TypeError, ValueError):
        return None
    if t.tzinfo is None:
        return t.strftime("%Y-%m-%d")
    t = t.tz_convert("UTC")
    if (t.hour, t.minute, t.second, t.microsecond) == (0, 0, 0, 0):
        return t.strftime("%Y-%m-%d")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.4g}"


def _b64(text: str) -> tuple[str, int, str]:
    data = text.encode("utf-8")
    return (base64.b64encode(data).decode("ascii"), len(data),
            base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"))  # noqa: S324 - FHIR Attachment.hash is SHA-1


# --------------------------------------------------------------------------------------- model cards
@dataclass(frozen=True)
class _Model:
    model_id: str
    version: str
    card: dict[str, Any]
    metadata: dict[str, Any]
    folder: str | None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.card.get("name") or self.model_id)


def _model_info(model_id: str, version: str, cards: Mapping[str, Any]) -> _Model:
    entry = cards.get(model_id)
    if entry is None:
        raise ParameterError("cards", f"no model card for model {model_id!r} (findings name it); pass "
                                      f"cards={{{model_id!r}: Bundle or metadata.json dict}}")
    folder = None
    if hasattr(entry, "card") and hasattr(entry, "metadata"):
        metadata = dict(entry.metadata)
        card = dict(entry.card)
        folder = getattr(getattr(entry, "path", None), "name", None)
    elif isinstance(entry, Mapping):
        if isinstance(entry.get("cds"), Mapping):
            metadata, card = dict(entry), dict(entry["cds"])
        else:
            metadata, card = {}, dict(entry)
    else:
        raise ParameterError(f"cards[{model_id!r}]", f"expected a cds.models.bundle.Bundle or a dict, got {type(entry).__name__}")
    card_version = metadata.get("version", card.get("version"))
    if card_version is not None and str(card_version) != str(version):
        raise ParameterError(f"cards[{model_id!r}]", f"model card is version {card_version} but the findings "
                                                     f"come from version {version}; pass the card of that version")
    return _Model(model_id, str(version), card, metadata, folder)


def model_card_markdown(model_id: str, version: str, card: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> str:
    """The model card (the bundle's ``cds`` section plus MONAI metadata) as Markdown.

    Deterministic: the same card gives the same text.

    >>> md = model_card_markdown("toy", "0.1.0", {"intended_use": "demo", "limitations": ["tiny"]})
    >>> md.splitlines()[0], "- tiny" in md
    ('# Model card: toy 0.1.0', True)
    """
    meta = dict(metadata or {})
    lines = [f"# Model card: {model_id} {version}", ""]
    if meta.get("name") and meta["name"] != model_id:
        lines += [f"**{meta['name']}**", ""]
    lines += ["Results of this model are AI-generated and preliminary until a clinician reviews them.", ""]
    versions = [f"{k} {meta[v]}" for k, v in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version"))
                if meta.get(v)]
    if versions:
        lines += ["Software: " + ", ".join(versions), ""]
    if meta.get("description"):
        lines += [str(meta["description"]), ""]
    for title, key in (("Intended use", "intended_use"), ("Proxy for", "proxy_for")):
        if card.get(key) or (key == "intended_use" and meta.get(key)):
            lines += [f"## {title}", "", str(card.get(key) or meta.get(key)), ""]
    if card.get("outputs"):
        lines += ["## Outputs", ""]
        for o in card["outputs"]:
            lines.append(f"- {o.get('display', '')} ({o.get('code_system', '')}#{o.get('code', '')}), "
                         f"{o.get('kind', 'output')}")
        lines.append("")
    if card.get("threshold") is not None or card.get("indeterminate"):
        lines += ["## Operating point", ""]
        if card.get("threshold") is not None:
            lines.append(f"- decision threshold: {card['threshold']}")
        if card.get("indeterminate"):
            lo, hi = card["indeterminate"]
            lines.append(f"- indeterminate band: {lo} to {hi} (reported as indeterminate)")
        how = (card.get("operating_point") or {}).get("how_chosen")
        if how:
            lines.append(f"- how chosen: {how}")
        lines.append("")
    td = card.get("training_data")
    if isinstance(td, Mapping):
        lines += ["## Training data", ""]
        for k in ("name", "n", "n_patients", "split", "licence"):
            if td.get(k) is not None:
                lines.append(f"- {k}: {td[k]}")
        lines.append("")
    perf = card.get("performance")
    if isinstance(perf, Mapping):
        lines += ["## Measured performance", ""]
        for k in ("data", "split", "mode", "n_cases", "n_patients", "n_positive"):
            if perf.get(k) is not None:
                lines.append(f"- {k}: {perf[k]}")
        metrics = perf.get("metrics") or {}
        if metrics:
            lines += ["", "| metric | value | 95 % CI |", "| --- | --- | --- |"]
            for name, m in metrics.items():
                if isinstance(m, Mapping):
                    ci = m.get("ci95")
                    ci_s = f"{_fmt(ci[0])} to {_fmt(ci[1])}" if ci and None not in ci else "n/a"
                    val = _finite(m.get("value"))
                    lines.append(f"| {name} | {_fmt(val) if val is not None else 'n/a'} | {ci_s} |")
        if perf.get("evaluation_command"):
            lines += ["", f"Reproduce: `{perf['evaluation_command']}`"]
        lines.append("")
    if card.get("limitations"):
        lines += ["## Limitations", ""] + [f"- {x}" for x in card["limitations"]] + [""]
    if meta.get("references"):
        lines += ["## References", ""] + [f"- {x}" for x in meta["references"]] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _device(m: _Model, findings: Sequence[Finding]) -> dict[str, Any]:
    did, doc = device_id(m.model_id, m.version), model_card_id(m.model_id, m.version)
    names = [{"name": m.model_id, "type": "model-name"}]
    if m.name != m.model_id:
        names.append({"name": m.name, "type": "user-friendly-name"})
    versions = [{"type": {"text": "model"}, "value": m.version}]
    for label, key in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version")):
        if m.metadata.get(key):
            versions.append({"type": {"text": label}, "value": str(m.metadata[key])})
    thr = m.card.get("threshold", next((f.threshold for f in findings if f.threshold is not None), None))
    band = m.card.get("indeterminate") or next((f.indeterminate for f in findings if f.indeterminate), None)
    props = []
    if _finite(thr) is not None:
        props.append({"type": _local("decision-threshold"), "valueQuantity": [_quantity(_finite(thr))]})
    if band and all(_finite(b) is not None for b in band):
        props.append({"type": _local("indeterminate-band"),
                      "valueQuantity": [_quantity(_finite(band[0])), _quantity(_finite(band[1]))]})
    note = f"AI model {m.model_id} version {m.version}; model card: DocumentReference {doc} (Markdown)."
    if m.folder:
        note += f" MONAI bundle folder: {m.folder}."
    use = m.card.get("intended_use") or m.metadata.get("intended_use")
    if use:
        note += f" Intended use: {use}"
    dev: dict[str, Any] = {
        "resourceType": "Device", "id": did, "meta": _meta(),
        "extension": [{"url": MODEL_CARD_URL, "valueReference": {"reference": _urn(doc), "display": "model card"}}],
        "status": "active",
    }
    if isinstance(m.metadata.get("authors"), str):
        dev["manufacturer"] = m.metadata["authors"]
    dev.update({"deviceName": names, "type": {"text": "Artificial-Intelligence"}, "version": versions})
    if props:
        dev["property"] = props
    url = m.card.get("model_card_url") or m.metadata.get("url")
    if isinstance(url, str) and url:
        dev["url"] = url
    dev["note"] = [{"text": note}]
    return dev


def _model_card_doc(m: _Model) -> dict[str, Any]:
    data, size, sha1 = _b64(model_card_markdown(m.model_id, m.version, m.card, m.metadata))
    return {
        "resourceType": "DocumentReference", "id": model_card_id(m.model_id, m.version), "meta": _meta(),
        "status": "current",
        "type": {"text": "AI model card"},
        "description": f"Model card of AI model {m.model_id} {m.version}: intended use, training data, "
                       "measured performance, limitations",
        "content": [{"attachment": {"contentType": "text/markdown", "language": "en", "data": data,
                                    "size": size, "hash": sha1, "title": f"{m.model_id}-{m.version}-model-card.md"}}],
        "context": {"related": [{"reference": _urn(device_id(m.model_id, m.version)), "display": m.model_id}]},
    }


# --------------------------------------------------------------------------------------- study facts
@dataclass
class _Study:
    imaging_study_id: str | None = None
    started: Any = None
    body_site: str | None = None


def _study_facts(cohort: Any, patient_id: str, study_uid: str) -> _Study:
    if cohort is None:
        return _Study()
    img = cohort.imaging
    rows = img[(img["study_uid"] == study_uid) & (img["patient_id"] == patient_id)]
    if len(rows) == 0:
        rows = img[img["study_uid"] == study_uid]
    if len(rows) == 0:
        return _Study()
    r = rows.iloc[0]
    sid = r["imaging_study_id"] if isinstance(r["imaging_study_id"], str) else None
    site = r["body_site"] if isinstance(r["body_site"], str) else None
    return _Study(sid, r["started"], site)


def _ehr_observation_ids(finding: Finding, cohort: Any, started: Any) -> list[str]:
    """Ids of the cohort Observations behind ``observation:<code>`` EHR inputs (same code and value,
    closest to the study time)."""
    if cohort is None or not finding.ehr_inputs:
        return []
    import pandas as pd

    obs = cohort.observations
    obs = obs[obs["patient_id"] == finding.patient_id]
    out: list[str] = []
    for key, value in sorted(finding.ehr_inputs.items()):
        if not key.startswith("observation:"):
            continue
        rows = obs[obs["code"] == key.split(":", 1)[1]]
        v = _finite(value)
        if v is not None:
            rows = rows[(rows["value"] - v).abs() <= 1e-9 * max(1.0, abs(v))]
        if len(rows) == 0:
            continue
        if started is not None and not pd.isna(started):
            dist = (rows["time"] - pd.Timestamp(started)).abs()
            rows = rows.assign(_d=dist).sort_values(["_d", "observation_id"], kind="stable")
        else:
            rows = rows.sort_values("observation_id", kind="stable")
        oid = rows.iloc[0]["observation_id"]
        if isinstance(oid, str) and oid not in out:
            out.append(oid)
    return out


def _body_site(f: Finding, model: _Model, study: _Study, codes: Mapping[str, Mapping[str, str]]
               ) -> dict[str, Any] | None:
    bs = f.extra.get("body_site") if isinstance(f.extra, Mapping) else None
    if isinstance(bs, Mapping) and bs.get("code"):
        return _concept(str(bs.get("code_system", SNOMED)), str(bs["code"]), bs.get("display"))
    candidates = [_FINDING_BODY_SITE.get((f.code_system, f.code)), study.body_site, model.card.get("body_site")]
    if isinstance(bs, str):
        candidates.insert(0, bs)
    for text in candidates:
        if isinstance(text, str) and text.strip().lower() in codes:
            c = codes[text.strip().lower()]
            return _concept(c.get("code_system", SNOMED), c["code"], c.get("display"))
    return None


# ---------------------------------------------------------------------------------------- resources
@dataclass
class _Run:
    model: _Model
    patient_ref: dict[str, Any]
    study_ref: dict[str, Any]
    study: _Study
    effective: str | None
    recorded: str


def _study_reference(study_uid: str, imaging_study_id: str | None) -> dict[str, Any]:
    ref: dict[str, Any] = {}
    if imaging_study_id:
        ref["reference"] = f"ImagingStudy/{imaging_study_id}"
    else:
        ref["type"] = "ImagingStudy"
    ref["identifier"] = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}
    return ref


def _location_extension(loc: Location) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "kind", "valueCode": loc.kind}, {"url": "frame", "valueCode": loc.frame}]
    parts += [{"url": "coordinate", "valueDecimal": float(c)} for c in loc.coords]
    if loc.ref:
        parts.append({"url": "ref", "valueString": str(loc.ref)})
    if loc.sop_instance_uid:
        parts.append({"url": "sopInstanceUid", "valueOid": f"urn:oid:{loc.sop_instance_uid}"})
    return {"url": LOCATION_URL, "extension": parts}


def _prob_component(code: dict[str, Any], p: float) -> dict[str, Any]:
    return {"code": code, "valueQuantity": _quantity(p, "1")}


def _class_components(f: Finding, model: _Model) -> list[dict[str, Any]]:
    probs = f.extra.get("class_probabilities")
    if not isinstance(probs, Mapping):
        return []
    displays = {str(o.get("code")): o.get("display") for o in model.card.get("outputs", []) if isinstance(o, Mapping)}
    out = []
    for cls in sorted(probs, key=str):
        p = _finite(probs[cls])
        if p is None:
            continue
        disp = displays.get(str(cls)) or (f.display if str(cls) == f.code else None)
        text = f"Probability of class {cls}" + (f" ({disp})" if disp else "")
        out.append(_prob_component(_concept(f.code_system, str(cls), disp, text), p))
    return out


def _observation(f: Finding, run: _Run, body_codes: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    m = run.model
    interp = f.interpretation
    ext: list[dict[str, Any]] = []
    confidence = _finite(f.probability) if f.probability is not None else _finite(f.extra.get("confidence"))
    if confidence is not None and 0.0 <= confidence <= 1.0:
        ext.append({"url": AI_CONFIDENCE_URL, "valueDecimal": confidence})
    if f.location is not None:
        ext.append(_location_extension(f.location))
    if f.series_uid:
        ext.append({"url": SERIES_URL, "valueOid": f"urn:oid:{f.series_uid}"})
    obs: dict[str, Any] = {"resourceType": "Observation", "id": observation_id(f), "meta": _meta()}
    if ext:
        obs["extension"] = ext
    obs.update({
        "identifier": [{"system": FINDING_ID_SYSTEM, "value": f.id}],
        "status": "preliminary",
        "category": [{"coding": [dict(IMAGING)]}],
        "code": _concept(f.code_system, f.code, f.display),
        "subject": dict(run.patient_ref),
    })
    if run.effective:
        obs["effectiveDateTime"] = run.effective
    obs["issued"] = run.recorded
    obs["device"] = {"reference": _urn(device_id(m.model_id, m.version)), "display": f"{m.model_id} {m.version}"}
    components: list[dict[str, Any]] = []
    if f.probability is not None:
        p = _finite(f.probability)
        if p is None or not 0.0 <= p <= 1.0:
            raise ParameterError("findings", f"finding {f.id} ({f.display}, study {f.study_uid}): probability "
                                             f"{f.probability!r} is not a number in [0, 1]")
        if interp in _PRESENCE:
            obs["valueCodeableConcept"] = {"coding": [dict(_PRESENCE[interp])], "text": _PRESENCE[interp]["display"]}
        components.append(_prob_component(_local("probability"), p))
    elif f.value is not None:
        v = _finite(f.value)
        if v is None:
            raise ParameterError("findings", f"finding {f.id} ({f.display}, study {f.study_uid}): value "
                                             f"{f.value!r} is not a finite number")
        obs["valueQuantity"] = _quantity(v, f.unit)
    if interp in _INTERPRETATION:
        obs["interpretation"] = [{"coding": [dict(_INTERPRETATION[interp])]}]
    elif isinstance(f.extra.get("ef_category"), str) and f.extra["ef_category"] in _CATEGORY_INTERPRETATION:
        obs["interpretation"] = [{"coding": [dict(_CATEGORY_INTERPRETATION[f.extra["ef_category"]])],
                                  "text": f"ejection fraction {f.extra['ef_category']}"}]
    score_unit = None if f.probability is not None else f.unit
    if _finite(f.threshold) is not None:
        components.append({"code": _local("decision-threshold"),
                           "valueQuantity": _quantity(_finite(f.threshold), score_unit or ("1" if f.probability
                                                                                            is not None else None))})
    if f.indeterminate and all(_finite(b) is not None for b in f.indeterminate):
        unit = score_unit or ("1" if f.probability is not None else None)
        components.append({"code": _local("indeterminate-band"),
                           "valueRange": {"low": _quantity(_finite(f.indeterminate[0]), unit),
                                          "high": _quantity(_finite(f.indeterminate[1]), unit)}})
    components += _class_components(f, m)
    for key, (system, code, display, unit) in EXTRA_MEASUREMENTS.items():
        v = _finite(f.extra.get(key))
        if v is not None:
            components.append({"code": _concept(system, code, display), "valueQuantity": _quantity(v, unit)})
    site = _body_site(f, m, run.study, body_codes)
    if site:
        obs["bodySite"] = site
    if f.explanation:
        obs["note"] = [{"text": f"AI-generated, preliminary. {f.explanation}"}]
    obs["derivedFrom"] = [dict(run.study_ref)]
    if components:
        obs["component"] = components
    return obs


def _horizon(card: Mapping[str, Any]) -> dict[str, Any] | None:
    h = card.get("horizon")
    if isinstance(h, Mapping) and _finite(h.get("high")) is not None:
        unit = str(h.get("unit", "d"))
        return {"low": _quantity(_finite(h.get("low")) or 0.0, unit), "high": _quantity(_finite(h["high"]), unit)}
    days = _finite(card.get("horizon_days"))
    if days is not None:
        return {"low": _quantity(0.0, "d"), "high": _quantity(days, "d")}
    return None


def _risk_assessment(f: Finding, run: _Run, ehr_obs: list[str]) -> dict[str, Any]:
    m = run.model
    interp = f.interpretation
    score = f.score
    pred: dict[str, Any] = {"outcome": _concept(f.code_system, f.code, f.display)}
    calibrated = m.card.get("calibrated") is True
    p = _finite(f.probability)
    if calibrated and p is not None:
        pred["probabilityDecimal"] = p
    elif interp in _QUALITATIVE_RISK:
        pred["qualitativeRisk"] = {"coding": [dict(_QUALITATIVE_RISK[interp])]}
    when = _horizon(m.card)
    if when:
        pred["whenRange"] = when
    rationale = f"AI model {m.model_id} {m.version}: score {_fmt(score) if score is not None else 'n/a'}"
    if f.threshold is not None:
        rationale += f" against threshold {_fmt(f.threshold)} ({interp})"
    rationale += ("; calibrated probability" if calibrated else
                  "; the score is not a calibrated probability (the model card does not declare calibration)")
    pred["rationale"] = rationale
    basis = [dict(run.study_ref), {"reference": _urn(observation_id(f)), "display": "AI score"}]
    basis += [{"reference": f"Observation/{o}"} for o in ehr_obs]
    ra: dict[str, Any] = {
        "resourceType": "RiskAssessment", "id": risk_assessment_id(f), "meta": _meta(),
        "status": "preliminary",
        "method": {"text": f"AI model {m.model_id} {m.version}"},
        "code": _concept(f.code_system, f.code, f.display, f"Risk of {f.display}"),
        "subject": dict(run.patient_ref),
    }
    if run.effective:
        ra["occurrenceDateTime"] = run.effective
    ra.update({
        "performer": {"reference": _urn(device_id(m.model_id, m.version)), "display": f"{m.model_id} {m.version}"},
        "basis": basis,
        "prediction": [pred],
        "note": [{"text": "AI-generated, preliminary; not reviewed by a clinician."}],
    })
    return ra


def _summary(f: Finding) -> str:
    if f.probability is not None:
        s = f"{f.display}: {f.interpretation} (probability {_fmt(f.probability)}"
        if f.threshold is not None:
            s += f", threshold {_fmt(f.threshold)}"
        s += ")"
    elif f.value is not None:
        s = f"{f.display}: {_fmt(f.value)}{(' ' + f.unit) if f.unit else ''}"
        if f.interpretation != "measured":
            s += f" ({f.interpretation}, threshold {_fmt(f.threshold)})"
        elif isinstance(f.extra.get("ef_category"), str):
            s += f" ({f.extra['ef_category']})"
    else:
        s = f"{f.display}: reported"
    if f.prognostic:
        s += " [prognostic]"
    return s


def _report(key: tuple[str, str, str, str], fs: list[Finding], run: _Run) -> dict[str, Any]:
    m = run.model
    pid, suid = key[0], key[1]
    head = (f"AI-generated, preliminary result (not reviewed by a clinician) of model {m.model_id} {m.version} "
            f"on study {suid}.")
    pos = [f for f in fs if f.interpretation == "positive"]
    ind = [f for f in fs if f.interpretation == "indeterminate"]
    counts = f" {len(fs)} finding(s): {len(pos)} positive, {len(ind)} indeterminate."
    conclusion = head + counts + " " + "; ".join(_summary(f) for f in fs) + "."
    md = "\n".join([f"# AI result: {m.model_id} {m.version}", "", head, "", *[f"- {_summary(f)}" for f in fs], "",
                    "See the model card (DocumentReference) for intended use, performance and limitations.", ""])
    data, size, sha1 = _b64(md)
    rep: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report_id(pid, suid, m.model_id, m.version), "meta": _meta(),
        "status": "preliminary",
        "category": [{"coding": [dict(RADIOLOGY)]}],
        "code": {"coding": [dict(REPORT_CODE)], "text": f"AI analysis ({m.model_id} {m.version})"},
        "subject": dict(run.patient_ref),
    }
    if run.effective:
        rep["effectiveDateTime"] = run.effective
    rep["issued"] = run.recorded
    if "reference" in run.study_ref:
        rep["imagingStudy"] = [{"reference": run.study_ref["reference"]}]
    rep["result"] = [{"reference": _urn(observation_id(f)), "display": f.display} for f in fs]
    rep["conclusion"] = conclusion
    codes = []
    for f in pos:
        if f.prognostic:  # a predicted outcome is not a conclusion about the images
            continue
        c = _concept(f.code_system, f.code, f.display)
        if c not in codes:
            codes.append(c)
    if codes:
        rep["conclusionCode"] = codes
    rep["presentedForm"] = [{"contentType": "text/markdown", "language": "en", "data": data, "size": size,
                             "hash": sha1, "title": "AI result (preliminary)"}]
    return rep


def _provenance(key: tuple[str, str, str, str], fs: list[Finding], run: _Run, targets: list[str],
                ehr_obs: list[str]) -> dict[str, Any]:
    m = run.model
    entity = [{"role": "source", "what": dict(run.study_ref)}]
    if any(f.ehr_inputs for f in fs):
        entity.append({"role": "source", "what": dict(run.patient_ref)})
        entity += [{"role": "source", "what": {"reference": f"Observation/{o}"}} for o in ehr_obs]
    from cds import __version__

    return {
        "resourceType": "Provenance", "id": provenance_id(*key), "meta": _meta(),
        "target": [{"reference": t} for t in targets],
        "recorded": run.recorded,
        "activity": {"coding": [_coding(V3_DATA_OPERATION, "CREATE", "create")]},
        "agent": [
            {"type": {"coding": [_coding(PROVENANCE_AGENT, "author", "Author")]},
             "who": {"reference": _urn(device_id(m.model_id, m.version)), "display": f"{m.model_id} {m.version}"}},
            {"type": {"coding": [_coding(PROVENANCE_AGENT, "assembler", "Assembler")]},
             "who": {"display": f"cds {__version__} (cds.fhir.results)"}},
        ],
        "entity": entity,
    }


# ------------------------------------------------------------------------------------------- bundle
def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    rid = resource["id"]
    return {"fullUrl": _urn(rid), "resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{rid}"}}


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    seen: dict[str, Finding] = {}
    for i, f in enumerate(findings):
        if not isinstance(f, Finding):
            raise ParameterError(f"findings[{i}]", f"expected a cds.finding.Finding, got {type(f).__name__}")
        prev = seen.get(f.id)
        if prev is not None and prev.to_dict() != f.to_dict():
            raise ParameterError("findings", f"two different findings share id {f.id} (same patient, study, series, "
                                             f"code {f.code}, model {f.model_id} {f.model_version} and location)")
        seen.setdefault(f.id, f)
    return list(seen.values())


def results_bundle(
    findings: Iterable[Finding],
    cards: Mapping[str, Any],
    cohort: Any = None,
    *,
    recorded: str,
    deidentify: bool = False,
    salt: str | None = None,
    body_site_codes: Mapping[str, Mapping[str, str]] = BODY_SITE_CODES,
) -> dict[str, Any]:
    """AI Findings as a FHIR R4 ``transaction`` Bundle (see the module docstring for the graph).

    Parameters
    ----------
    findings
        The Findings (any order; the output is sorted, so order does not matter).
    cards
        ``model_id -> cds.models.bundle.Bundle`` or a dict (a whole ``metadata.json``, or just its ``cds``
        section) for every model the findings name. The card's version must match the findings'.
    cohort
        A :class:`cds.sources.cohort.Cohort` (optional): gives the ImagingStudy id, the study date, the
        series body site and the ids of the EHR Observations used as model inputs.
    recorded
        The FHIR instant of the run (``2026-01-01T12:00:00Z``), used for ``issued`` and
        ``Provenance.recorded``. Fixed by the caller so that reruns give identical bytes.
    deidentify, salt
        Pseudonymise patient and DICOM identifiers with the secret ``salt`` (see module docstring).
    body_site_codes
        Lower-case body-site text -> ``{"code_system", "code", "display"}`` (default
        :data:`BODY_SITE_CODES`).

    Returns
    -------
    dict
        The Bundle as plain JSON-ready dicts. Every entry has ``fullUrl`` ``urn:uuid:<id>`` and a
        ``PUT <Type>/<id>`` request; ids are uuid5 values of Finding ids / model id+version / study.
    """
    if not isinstance(recorded, str) or not _INSTANT.match(recorded):
        raise ParameterError("recorded", f"{recorded!r} is not a FHIR instant; give e.g. '2026-01-01T12:00:00Z'")
    if deidentify and not salt:
        raise ParameterError("salt", "deidentify=True needs a non-empty secret salt (keep it; the same salt "
                                     "gives the same pseudonyms)")
    unique = _unique(findings)
    models: dict[tuple[str, str], _Model] = {}
    for f in unique:
        k = (f.model_id, f.model_version)
        if k not in models:
            models[k] = _model_info(f.model_id, f.model_version, cards)
    # facts from the identified record, looked up before pseudonymising
    facts: dict[tuple[str, str], _Study] = {}
    ehr: dict[str, list[str]] = {}
    for f in unique:
        sk = (f.patient_id, f.study_uid)
        if sk not in facts:
            facts[sk] = _study_facts(cohort, *sk)
    if deidentify:
        assert salt is not None
        pairs = [(pseudonymise_finding(f, salt), facts[(f.patient_id, f.study_uid)]) for f in unique]
    else:
        pairs = [(f, facts[(f.patient_id, f.study_uid)]) for f in unique]
        for f in unique:
            ehr[f.id] = _ehr_observation_ids(f, cohort, facts[(f.patient_id, f.study_uid)].started)
    runs: dict[tuple[str, str, str, str], list[Finding]] = {}
    run_facts: dict[tuple[str, str, str, str], _Study] = {}
    for f, st in pairs:
        key = (f.patient_id, f.study_uid, f.model_id, f.model_version)
        runs.setdefault(key, []).append(f)
        run_facts[key] = st

    entries: list[dict[str, Any]] = []
    for (mid, ver) in sorted(models):
        m = models[(mid, ver)]
        mf = [f for f, _ in pairs if (f.model_id, f.model_version) == (mid, ver)]
        entries.append(_entry(_device(m, mf)))
        entries.append(_entry(_model_card_doc(m)))
    patients_done: set[str] = set()
    for key in sorted(runs):
        pid, suid, mid, ver = key
        fs = sorted(runs[key], key=lambda f: (f.code_system, f.code, f.id))
        st = run_facts[key]
        if deidentify:
            if pid not in patients_done:
                entries.append(_entry({"resourceType": "Patient", "id": pid, "meta": _meta(PSEUDED)}))
                patients_done.add(pid)
            patient_ref = {"reference": _urn(pid)}
            study_ref = _study_reference(suid, None)
            effective = None
        else:
            patient_ref = {"reference": f"Patient/{pid}"}
            study_ref = _study_reference(suid, st.imaging_study_id)
            effective = _fhir_datetime(st.started)
        run = _Run(models[(mid, ver)], patient_ref, study_ref, st, effective, recorded)
        made: list[dict[str, Any]] = [_observation(f, run, body_site_codes) for f in fs]
        run_ehr: list[str] = []
        for f in fs:
            for o in ehr.get(f.id, []):
                if o not in run_ehr:
                    run_ehr.append(o)
        made += [_risk_assessment(f, run, ehr.get(f.id, [])) for f in fs if f.prognostic]
        made.append(_report(key, fs, run))
        targets = [_urn(r["id"]) for r in made] + [_urn(device_id(mid, ver)), _urn(model_card_id(mid, ver))]
        made.append(_provenance(key, fs, run, targets, run_ehr))
        entries += [_entry(r) for r in made]

    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": _uuid("Bundle", *[e["fullUrl"] for e in entries]),
        "meta": _meta(),
        "type": "transaction",
        "timestamp": recorded,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


# ------------------------------------------------------------------------------------- results.json
def _plain(x: Any) -> Any:
    """JSON-ready, key-sorted copy: numpy -> Python, non-finite floats -> None, Findings -> dicts."""
    if isinstance(x, Finding):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(x[k]) for k in sorted(x, key=str)}
    if isinstance(x, list | tuple | set | frozenset):
        items = [_plain(v) for v in x]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True)) if isinstance(x, set | frozenset) else items
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item") and callable(x.item):
        try:
            return _plain(x.item())
        except (TypeError, ValueError):
            pass
    if hasattr(x, "tolist") and callable(x.tolist):
        return _plain(x.tolist())
    if hasattr(x, "isoformat") and callable(x.isoformat):
        try:
            return x.isoformat()
        except ValueError:  # NaT
            return None
    return str(x)


def results_json(findings: Iterable[Finding], failures: Iterable[Mapping[str, Any]] = (),
                 cohort_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``results.json`` sidecar of a report: findings per study, failures and cohort metrics.

    Studies are sorted by (patient, study UID), findings by (model, version, code, id), failures by
    (patient, study, model, message); every dict has sorted keys and non-finite numbers become
    ``null``, so ``json.dumps`` of the result is byte-identical for the same input.

    >>> f = Finding("p1", "1.2", "s", "c", "d", "m", "1", probability=0.7, threshold=0.5)
    >>> r = results_json([f], [{"patient_id": "p2", "study_uid": "9", "error": "X", "message": "bad"}],
    ...                  {"auroc": 0.8})
    >>> r["n_findings"], r["studies"][0]["findings"][0]["interpretation"], r["metrics"]
    (1, 'positive', {'auroc': 0.8})
    """
    fs = _unique(findings)
    studies: dict[tuple[str, str], list[Finding]] = {}
    for f in fs:
        studies.setdefault((f.patient_id, f.study_uid), []).append(f)
    fails = [_plain(x.to_dict() if hasattr(x, "to_dict") else dict(x)) for x in failures]
    fails.sort(key=lambda d: tuple(str(d.get(k, "")) for k in ("patient_id", "study_uid", "model_id", "message")))
    out = {
        "schema": "cds.results/1",
        "n_findings": len(fs),
        "n_studies": len(studies),
        "n_failures": len(fails),
        "studies": [{"patient_id": p, "study_uid": s,
                     "findings": [f.record_dict() for f in sorted(studies[(p, s)], key=lambda f: (
                         f.model_id, f.model_version, f.code_system, f.code, f.id))]}
                    for p, s in sorted(studies)],
        "failures": fails,
        "metrics": dict(cohort_metrics or {}),
    }
    return _plain(out)


# ------------------------------------------------------------------------------------------- posting
class FhirWriteError(CdsError):
    """A FHIR server did not take a transaction; the message names the URL and the HTTP status."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        super().__init__(f"{url}: {reason}")


def _outcome_message(outcome: Any) -> str | None:
    if not isinstance(outcome, Mapping) or outcome.get("resourceType") != "OperationOutcome":
        return None
    msgs = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            where = ", ".join(issue.get("expression") or issue.get("location") or [])
            msgs.append(f"{issue.get('severity', 'error')}: {text}" + (f" ({where})" if where else ""))
    return "; ".join(msgs) or None


def post_transaction(bundle: Mapping[str, Any], base_url: str, timeout: float = 30,
                     session: Any = None) -> list[dict[str, Any]]:
    """POST a transaction (or batch) Bundle to a FHIR R4 server's base URL; per-entry outcomes.

    Returns one dict per request entry, in order: ``index``, ``request`` (``PUT Observation/<id>``),
    ``status`` (``"201 Created"``), ``status_code`` (201), ``location``, ``etag`` and ``message``
    (the entry's OperationOutcome text, if any). ``session`` is an optional ``requests.Session``
    (authentication headers, retries); without one a plain ``requests.post`` is made.

    Raises
    ------
    FhirWriteError
        The server cannot be reached, times out, answers an HTTP error (its OperationOutcome is
        quoted) or answers something that is not a transaction-response Bundle.
    ParameterError
        ``bundle`` is not a transaction/batch Bundle or ``base_url`` is not http(s).
    """
    import requests

    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle" \
            or bundle.get("type") not in ("transaction", "batch"):
        raise ParameterError("bundle", "expected a FHIR Bundle of type 'transaction' or 'batch' "
                                       "(make one with results_bundle)")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ParameterError("base_url", f"{base_url!r} is not an http(s) FHIR base URL")
    url = base_url.rstrip("/")
    body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {"Content-Type": "application/fhir+json; charset=utf-8", "Accept": "application/fhir+json"}
    http = session if session is not None else requests
    try:
        resp = http.post(url, data=body, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise FhirWriteError(url, f"no answer within {timeout} s") from None
    except requests.RequestException as exc:
        raise FhirWriteError(url, f"cannot reach FHIR server: {type(exc).__name__}: {exc}") from None
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if resp.status_code >= 400:
        detail = _outcome_message(answer) or (resp.text or "").strip()[:300] or resp.reason or "no detail"
        raise FhirWriteError(url, f"FHIR server answered HTTP {resp.status_code}: {detail}", resp.status_code)
    kind = f"{bundle.get('type')}-response"
    if not isinstance(answer, Mapping) or answer.get("resourceType") != "Bundle" or answer.get("type") != kind:
        raise FhirWriteError(url, f"HTTP {resp.status_code} but the answer is not a {kind} Bundle: "
                                  f"{(resp.text or '')[:200]!r}", resp.status_code)
    requests_sent = list(bundle.get("entry") or [])
    answers = list(answer.get("entry") or [])
    if len(answers) != len(requests_sent):
        raise FhirWriteError(url, f"{kind} has {len(answers)} entries for {len(requests_sent)} requests",
                             resp.status_code)
    out = []
    for i, (req, ans) in enumerate(zip(requests_sent, answers, strict=True)):
        r = (ans or {}).get("response") or {}
        status = str(r.get("status", ""))
        head = status.split(" ", 1)[0]
        rq = req.get("request") or {}
        out.append({
            "index": i,
            "request": f"{rq.get('method', '')} {rq.get('url', '')}".strip(),
            "status": status,
            "status_code": int(head) if head.isdigit() else None,
            "location": r.get("location"),
            "etag": r.get("etag"),
            "message": _outcome_message(r.get("outcome")),
        })
    return out
