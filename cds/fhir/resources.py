"""FHIR R4 resource builders for AI results: Observation, RiskAssessment, DiagnosticReport, Device,
model-card DocumentReference and Provenance (of a model run, and of a clinician's review).

The one set of builders of the package: the results writer (:mod:`cds.fhir.writer`), the review
store (:mod:`cds.review.store`) and the cardiac-risk study (:mod:`cds.studies.cardiac_risk`) all
make their resources here, with the ids of :mod:`cds.fhir.ids` and the codes of :mod:`cds.codes`.
What each resource holds is described in :mod:`cds.fhir.writer`.

A :class:`RunContext` says who and what a model run is about (patient and ImagingStudy
references, effective time, ``recorded`` instant) and how other resources of the run are
referenced: ``urn:uuid:<id>`` inside a transaction Bundle, ``<Type>/<id>`` outside one (the
review store's Bundle, which points at resources the results Bundle already PUT on the server).

>>> from cds.finding import Finding
>>> f = Finding("p1", "1.2.3", "http://snomed.info/sct", "8186001", "Cardiomegaly", "cxr", "1.0.0",
...             probability=0.81, threshold=0.5)
>>> run = RunContext(ModelInfo("cxr", "1.0.0"), {"reference": "Patient/p1"}, study_reference("1.2.3", None),
...                  None, "2026-01-01T00:00:00Z", in_bundle=False)
>>> obs = observation(f, run, status="final")
>>> obs["status"], obs["device"]["reference"] == "Device/" + device_id("cxr", "1.0.0")
('final', True)
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds.codes import (
    AI_CONFIDENCE_URL,
    AIAST,
    BODY_SITE_CODES,
    CATEGORY_INTERPRETATION,
    CDS_CODES,
    DICOM_UID_SYSTEM,
    EXTRA_MEASUREMENTS,
    FINDING_BODY_SITE,
    FINDING_ID_SYSTEM,
    IMAGING,
    INTERPRETATION,
    LOCAL_DISPLAYS,
    LOCATION_URL,
    LUNG_RADS_SIZE_BAND_CODES,
    MODEL_CARD_URL,
    NO_ANSWER_REASON,
    NODULE_SUSPICION_CODES,
    PRESENCE,
    PROVENANCE_AGENT,
    QUALITATIVE_RISK,
    RADIOLOGY,
    REPORT_CODE,
    SERIES_URL,
    SNOMED,
    UCUM,
    UCUM_UNITS,
    V3_DATA_OPERATION,
    coding,
)
from cds.errors import ParameterError
from cds.fhir.ids import (
    device_id,
    model_card_id,
    no_answer_id,
    observation_id,
    provenance_id,
    report_id,
    review_provenance_id,
    risk_assessment_id,
    urn,
)
from cds.finding import FAILURE_LABELS, Failure, Finding, Location
from cds.models.card import ModelCard
from cds.models.card_markdown import model_card_markdown

__all__ = [
    "no_answer_observation",
    "ModelInfo", "RunContext", "model_info", "assembler_display", "meta", "concept", "quantity", "fhir_datetime",
    "study_reference", "device", "model_card_document", "observation", "risk_assessment", "finding_risk_assessment",
    "diagnostic_report", "run_provenance", "review_provenance",
]


# ------------------------------------------------------------------------------------------- helpers
def meta(*security: Mapping[str, str]) -> dict[str, Any]:
    """``meta`` with the security labels given (default: AIAST).

    >>> meta()["security"][0]["code"]
    'AIAST'
    """
    return {"security": [dict(s) for s in (security or (AIAST,))]}


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding; ``text`` defaults to the display.

    >>> concept("http://loinc.org", "1988-5", "CRP")
    {'coding': [{'system': 'http://loinc.org', 'code': '1988-5', 'display': 'CRP'}], 'text': 'CRP'}
    """
    cc: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text or display:
        cc["text"] = str(text or display)
    return cc


def _local(code: str) -> dict[str, Any]:
    return concept(CDS_CODES, code, LOCAL_DISPLAYS[code])


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _ucum(unit: str) -> str:
    u = unit.strip()
    return UCUM_UNITS.get(u.lower(), u)


def quantity(value: float, unit: str | None = None) -> dict[str, Any]:
    """A Quantity; with a unit, its UCUM code (card spellings such as ``ml`` or ``months`` mapped).

    >>> quantity(12, "months")
    {'value': 12, 'unit': 'months', 'system': 'http://unitsofmeasure.org', 'code': 'mo'}
    """
    q: dict[str, Any] = {"value": value}
    if unit:
        q.update({"unit": unit, "system": UCUM, "code": _ucum(unit)})
    return q


def fhir_datetime(ts: Any) -> str | None:
    """A FHIR dateTime from a (UTC) timestamp or ISO string; midnight becomes a plain date (day resolution).

    >>> fhir_datetime("2020-04-01T00:00:00+00:00"), fhir_datetime("2020-04-01T08:30:00+02:00"), fhir_datetime(None)
    ('2020-04-01', '2020-04-01T06:30:00Z', None)
    """
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


def assembler_display() -> str:
    """Who assembled the resources (Provenance agent ``assembler``): ``cds <version>``.

    >>> assembler_display().startswith("cds ")
    True
    """
    from cds import __version__

    return f"cds {__version__}"


# --------------------------------------------------------------------------------------- model cards
@dataclass(frozen=True)
class ModelInfo:
    """A model as the builders need it: id, version, its card (``cds`` section) and MONAI metadata.

    ``model_card`` is the card parsed (:class:`cds.models.card.ModelCard`; parsed from ``card`` when
    not given); the builders read it, the raw ``card`` only feeds the Markdown model card.

    >>> ModelInfo("m", "1", {"threshold": 0.5, "name": "Toy"}).model_card.threshold, ModelInfo("m", "1").name
    (0.5, 'm')
    """

    model_id: str
    version: str
    card: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None
    model_card: ModelCard = None  # type: ignore[assignment]  # parsed from ``card`` in __post_init__

    def __post_init__(self) -> None:
        if self.model_card is None:
            object.__setattr__(self, "model_card", ModelCard.from_dict(self.card))

    @property
    def name(self) -> str:
        """The human name (MONAI ``name``, card ``name``, else the id)."""
        return str(self.metadata.get("name") or self.model_card.name or self.model_id)

    @property
    def display(self) -> str:
        """``<model id> <version>``, the display of references to its Device."""
        return f"{self.model_id} {self.version}"


def model_info(model_id: str, version: str, cards: Mapping[str, Any]) -> ModelInfo:
    """The :class:`ModelInfo` of ``model_id`` from ``cards`` (a Bundle, a ``metadata.json`` dict or a ``cds`` dict).

    Raises :class:`~cds.errors.ParameterError` when the card is missing or of another version.

    >>> model_info("m", "1", {"m": {"version": "1", "cds": {"threshold": 0.5}}}).card
    {'threshold': 0.5}
    """
    entry = cards.get(model_id)
    if entry is None:
        raise ParameterError("cards", f"no model card for model {model_id!r} (findings name it); pass "
                                      f"cards={{{model_id!r}: Bundle or metadata.json dict}}")
    folder, parsed = None, None
    if hasattr(entry, "card") and hasattr(entry, "metadata"):
        metadata = dict(entry.metadata)
        card = dict(entry.card)
        folder = getattr(getattr(entry, "path", None), "name", None)
        parsed = getattr(entry, "model_card", None)  # a Bundle's card is parsed already
    elif isinstance(entry, Mapping):
        if isinstance(entry.get("cds"), Mapping):
            metadata, card = dict(entry), dict(entry["cds"])
        else:
            metadata, card = {}, dict(entry)
    else:
        raise ParameterError(f"cards[{model_id!r}]", f"expected a cds.models.bundle.Bundle or a dict, got {type(entry).__name__}")
    if not isinstance(parsed, ModelCard):
        parsed = ModelCard.from_dict(card, where=f"cards[{model_id!r}]")
    card_version = metadata.get("version", parsed.version)
    if card_version is not None and str(card_version) != str(version):
        raise ParameterError(f"cards[{model_id!r}]", f"model card is version {card_version} but the findings "
                                                     f"come from version {version}; pass the card of that version")
    return ModelInfo(model_id, str(version), card, metadata, folder, parsed)


# ------------------------------------------------------------------------------------------- context
@dataclass(frozen=True)
class RunContext:
    """One model run on one study: the model, subject and study references, times, body site.

    ``in_bundle`` True (the results writer) references the run's Device / Observations as
    ``urn:uuid:<id>`` (resolved by the transaction); False as ``<Type>/<id>`` (a Bundle that refers
    to resources already on the server).
    """

    model: ModelInfo
    patient_ref: dict[str, Any]
    study_ref: dict[str, Any]
    effective: str | None
    recorded: str
    body_site: str | None = None
    in_bundle: bool = True

    def ref(self, resource_type: str, rid: str, display: str | None = None) -> dict[str, Any]:
        """A Reference to another resource of the run (see the class docstring)."""
        r: dict[str, Any] = {"reference": urn(rid) if self.in_bundle else f"{resource_type}/{rid}"}
        if display:
            r["display"] = display
        return r

    def device_ref(self) -> dict[str, Any]:
        """The Reference to the model's Device."""
        m = self.model
        return self.ref("Device", device_id(m.model_id, m.version), m.display)


def study_reference(study_uid: str, imaging_study_id: str | None) -> dict[str, Any]:
    """A Reference to an ImagingStudy: by id when the record has one, always by its DICOM Study UID.

    >>> study_reference("1.2", None)
    {'type': 'ImagingStudy', 'identifier': {'system': 'urn:dicom:uid', 'value': 'urn:oid:1.2'}}
    """
    ref: dict[str, Any] = {}
    if imaging_study_id:
        ref["reference"] = f"ImagingStudy/{imaging_study_id}"
    else:
        ref["type"] = "ImagingStudy"
    ref["identifier"] = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}
    return ref


# --------------------------------------------------------------------------------- device and card
def device(m: ModelInfo, findings: Sequence[Finding]) -> dict[str, Any]:
    """The model's Device (AI model, version, operating point, link to its model card)."""
    did, doc = device_id(m.model_id, m.version), model_card_id(m.model_id, m.version)
    names = [{"name": m.model_id, "type": "model-name"}]
    if m.name != m.model_id:
        names.append({"name": m.name, "type": "user-friendly-name"})
    versions = [{"type": {"text": "model"}, "value": m.version}]
    for label, key in (("MONAI", "monai_version"), ("PyTorch", "pytorch_version")):
        if m.metadata.get(key):
            versions.append({"type": {"text": label}, "value": str(m.metadata[key])})
    c = m.model_card
    thr = c.threshold if c.threshold is not None else next((f.threshold for f in findings if f.threshold is not None), None)
    band = c.indeterminate or next((f.indeterminate for f in findings if f.indeterminate), None)
    props = []
    if _finite(thr) is not None:
        props.append({"type": _local("decision-threshold"), "valueQuantity": [quantity(_finite(thr))]})
    if band and all(_finite(b) is not None for b in band):
        props.append({"type": _local("indeterminate-band"),
                      "valueQuantity": [quantity(_finite(band[0])), quantity(_finite(band[1]))]})
    note = f"AI model {m.model_id} version {m.version}; model card: DocumentReference {doc} (Markdown)."
    if m.folder:
        note += f" MONAI bundle folder: {m.folder}."
    use = c.intended_use or m.metadata.get("intended_use")
    if use:
        note += f" Intended use: {use}"
    dev: dict[str, Any] = {
        "resourceType": "Device", "id": did, "meta": meta(),
        "extension": [{"url": MODEL_CARD_URL, "valueReference": {"reference": urn(doc), "display": "model card"}}],
        "status": "active",
    }
    if isinstance(m.metadata.get("authors"), str):
        dev["manufacturer"] = m.metadata["authors"]
    dev.update({"deviceName": names, "type": {"text": "Artificial-Intelligence"}, "version": versions})
    if props:
        dev["property"] = props
    url = c.model_card_url or m.metadata.get("url")
    if isinstance(url, str) and url:
        dev["url"] = url
    dev["note"] = [{"text": note}]
    return dev


def model_card_document(m: ModelInfo) -> dict[str, Any]:
    """The DocumentReference holding the model card as Markdown (base64, size, SHA-1)."""
    data, size, sha1 = _b64(model_card_markdown(m.model_id, m.version, m.card, m.metadata))
    return {
        "resourceType": "DocumentReference", "id": model_card_id(m.model_id, m.version), "meta": meta(),
        "status": "current",
        "type": {"text": "AI model card"},
        "description": f"Model card of AI model {m.model_id} {m.version}: intended use, training data, "
                       "measured performance, limitations",
        "content": [{"attachment": {"contentType": "text/markdown", "language": "en", "data": data,
                                    "size": size, "hash": sha1, "title": f"{m.model_id}-{m.version}-model-card.md"}}],
        "context": {"related": [{"reference": urn(device_id(m.model_id, m.version)), "display": m.model_id}]},
    }


# ------------------------------------------------------------------------------------- observation
def _body_site(f: Finding, run: RunContext, codes_: Mapping[str, Mapping[str, str]]) -> dict[str, Any] | None:
    bs = f.extra.get("body_site") if isinstance(f.extra, Mapping) else None
    if isinstance(bs, Mapping) and bs.get("code"):
        return concept(str(bs.get("code_system", SNOMED)), str(bs["code"]), bs.get("display"))
    candidates = [FINDING_BODY_SITE.get((f.code_system, f.code)), run.body_site, run.model.model_card.body_site]
    if isinstance(bs, str):
        candidates.insert(0, bs)
    for text in candidates:
        if isinstance(text, str) and text.strip().lower() in codes_:
            c = codes_[text.strip().lower()]
            return concept(c.get("code_system", SNOMED), c["code"], c.get("display"))
    return None


def _location_extension(loc: Location) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "kind", "valueCode": loc.kind}, {"url": "frame", "valueCode": loc.frame}]
    parts += [{"url": "coordinate", "valueDecimal": float(c)} for c in loc.coords]
    if loc.ref:
        parts.append({"url": "ref", "valueString": str(loc.ref)})
    if loc.sop_instance_uid:
        parts.append({"url": "sopInstanceUid", "valueOid": f"urn:oid:{loc.sop_instance_uid}"})
    return {"url": LOCATION_URL, "extension": parts}


def _prob_component(code: dict[str, Any], p: float) -> dict[str, Any]:
    return {"code": code, "valueQuantity": quantity(p, "1")}


def _class_components(f: Finding, model: ModelInfo) -> list[dict[str, Any]]:
    probs = f.extra.get("class_probabilities")
    if not isinstance(probs, Mapping):
        return []
    displays = {o.code: o.display for o in model.model_card.outputs}
    out = []
    for cls in sorted(probs, key=str):
        p = _finite(probs[cls])
        if p is None:
            continue
        disp = displays.get(str(cls)) or (f.display if str(cls) == f.code else None)
        text = f"Probability of class {cls}" + (f" ({disp})" if disp else "")
        out.append(_prob_component(concept(f.code_system, str(cls), disp, text), p))
    return out


def observation(f: Finding, run: RunContext, body_site_codes: Mapping[str, Mapping[str, str]] = BODY_SITE_CODES,
                status: str = "preliminary", notes: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The Observation of one Finding (id :func:`cds.fhir.ids.observation_id`).

    ``status`` is ``preliminary`` for an unreviewed AI result; the review store passes the status
    a review left it in (``final``, ``amended``, ``entered-in-error``) and its review ``notes``
    (added after the explanation note).
    """
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
    obs: dict[str, Any] = {"resourceType": "Observation", "id": observation_id(f), "meta": meta()}
    if ext:
        obs["extension"] = ext
    obs.update({
        "identifier": [{"system": FINDING_ID_SYSTEM, "value": f.id}],
        "status": status,
        "category": [{"coding": [dict(IMAGING)]}],
        "code": concept(f.code_system, f.code, f.display),
        "subject": dict(run.patient_ref),
    })
    if run.effective:
        obs["effectiveDateTime"] = run.effective
    obs["issued"] = run.recorded
    obs["device"] = run.device_ref()
    components: list[dict[str, Any]] = []
    if f.probability is not None:
        p = _finite(f.probability)
        if p is None or not 0.0 <= p <= 1.0:
            raise ParameterError("findings", f"finding {f.id} ({f.display}, study {f.study_uid}): probability "
                                             f"{f.probability!r} is not a number in [0, 1]")
        if interp in PRESENCE:
            obs["valueCodeableConcept"] = {"coding": [dict(PRESENCE[interp])], "text": PRESENCE[interp]["display"]}
        components.append(_prob_component(_local("probability"), p))
    elif f.value is not None:
        v = _finite(f.value)
        if v is None:
            raise ParameterError("findings", f"finding {f.id} ({f.display}, study {f.study_uid}): value "
                                             f"{f.value!r} is not a finite number")
        obs["valueQuantity"] = quantity(v, f.unit)
    if interp in INTERPRETATION:
        obs["interpretation"] = [{"coding": [dict(INTERPRETATION[interp])]}]
    elif isinstance(f.extra.get("ef_category"), str) and f.extra["ef_category"] in CATEGORY_INTERPRETATION:
        obs["interpretation"] = [{"coding": [dict(CATEGORY_INTERPRETATION[f.extra["ef_category"]])],
                                  "text": f"ejection fraction {f.extra['ef_category']}"}]
    score_unit = None if f.probability is not None else f.unit
    if _finite(f.threshold) is not None:
        components.append({"code": _local("decision-threshold"),
                           "valueQuantity": quantity(_finite(f.threshold), score_unit or ("1" if f.probability
                                                                                          is not None else None))})
    if f.indeterminate and all(_finite(b) is not None for b in f.indeterminate):
        unit = score_unit or ("1" if f.probability is not None else None)
        components.append({"code": _local("indeterminate-band"),
                           "valueRange": {"low": quantity(_finite(f.indeterminate[0]), unit),
                                          "high": quantity(_finite(f.indeterminate[1]), unit)}})
    components += _class_components(f, m)
    for key, (system, code, display, unit) in EXTRA_MEASUREMENTS.items():
        v = _finite(f.extra.get(key))
        if v is not None:
            components.append({"code": concept(system, code, display), "valueQuantity": quantity(v, unit)})
    components += characterisation_components(f.extra.get("characterisation"))
    site = _body_site(f, run, body_site_codes)
    if site:
        obs["bodySite"] = site
    note = [{"text": f"AI-generated, preliminary. {f.explanation}"}] if f.explanation else []
    note += [dict(n) for n in notes]
    if note:
        obs["note"] = note
    obs["derivedFrom"] = [dict(run.study_ref)]
    if components:
        obs["component"] = components
    return obs


def characterisation_components(ch: Any) -> list[dict[str, Any]]:
    """Observation components for a detected nodule's characterisation (``Finding.extra["characterisation"]``,
    written by ct-lung-nodule from ct-nodule-characterisation): the Lung-RADS v2022 size band (a size category
    only: "2", "3", "4A" or "4B") and the likelihood that radiologists rate the nodule suspicious (not
    pathology). Diameter and volume
    travel as the Finding's own ``diameter_mm`` / ``volume_ml`` components. Nothing for an error or no answer.

    >>> [c["code"]["coding"][0]["code"] for c in characterisation_components(
    ...     {"diameter_mm": 9.1, "volume_mm3": 390.0, "likelihood": 0.41, "size_category": "4A"})]
    ['4A', 'radiologist-suspicious']
    >>> characterisation_components({"error": "characterisation model unavailable"})
    []
    """
    if not isinstance(ch, dict) or "error" in ch:
        return []
    out: list[dict[str, Any]] = []
    band = ch.get("size_category")
    if band in ("2", "3", "4A", "4B"):
        out.append({"code": concept(LUNG_RADS_SIZE_BAND_CODES, band, f"Lung-RADS v2022 size category {band} "
                                                                     "(size category only)"),
                    "valueCodeableConcept": concept(LUNG_RADS_SIZE_BAND_CODES, band,
                                                    f"Lung-RADS v2022 size category {band}")})
    p = _finite(ch.get("likelihood"))
    if p is not None:
        out.append({"code": concept(NODULE_SUSPICION_CODES, "radiologist-suspicious",
                                    "Likelihood radiologists rate the nodule suspicious (LIDC >= 4; not pathology)"),
                    "valueQuantity": quantity(p, "1")})
    return out


# ---------------------------------------------------------------------------------- risk assessment
def no_answer_observation(failure: Failure, run: RunContext, with_reason: bool = True) -> dict[str, Any]:
    """The Observation saying that a model gave NO answer for a series, and why: status ``cancelled``,
    code = the model's (first) output, no value but ``dataAbsentReason`` (HL7 data-absent-reason:
    ``not-applicable`` outside intended use, ``not-performed`` for a rejected input or an image that
    does not match its record, ``error`` when the model failed) with the reason as text. An EHR thus
    sees that the study was seen and not answered, never a result. ``with_reason`` False (de-identified
    output) keeps only the kind of refusal, not the message (which names files).

    >>> from cds.finding import Failure
    >>> m = ModelInfo("m", "1", {"outputs": [{"code_system": "http://snomed.info/sct", "code": "233604007",
    ...                                       "display": "Pneumonia"}]})
    >>> run = RunContext(m, {"reference": "Patient/p"}, study_reference("1.2", None), None, "2026-01-01T00:00:00Z")
    >>> o = no_answer_observation(Failure("p", "1.2", "m", "OutsideIntendedUseError", "a.dcm: outside intended use: age",
    ...                                   state="outside-intended-use"), run)
    >>> o["status"], o["dataAbsentReason"]["coding"][0]["code"], "valueCodeableConcept" in o
    ('cancelled', 'not-applicable', False)
    """
    m = run.model
    outputs = m.model_card.outputs
    code = (concept(outputs[0].code_system, outputs[0].code, outputs[0].display) if outputs
            else {"text": f"{m.model_id} result"})
    label = FAILURE_LABELS.get(failure.state, failure.state)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": no_answer_id(failure.patient_id, str(failure.study_uid), failure.series_uid, m.model_id, m.version),
        "meta": meta(),
    }
    if failure.series_uid:
        obs["extension"] = [{"url": SERIES_URL, "valueOid": f"urn:oid:{failure.series_uid}"}]
    obs.update({
        "status": "cancelled",
        "category": [{"coding": [dict(IMAGING)]}],
        "code": code,
        "subject": dict(run.patient_ref),
    })
    if run.effective:
        obs["effectiveDateTime"] = run.effective
    obs["issued"] = run.recorded
    obs["device"] = run.device_ref()
    reason = NO_ANSWER_REASON.get(failure.state, NO_ANSWER_REASON["failed"])
    obs["dataAbsentReason"] = {"coding": [dict(reason)],
                               "text": f"AI {label}" + (f": {failure.message}" if with_reason else "")}
    obs["derivedFrom"] = [dict(run.study_ref)]
    return obs


def _horizon(card: ModelCard) -> dict[str, Any] | None:
    h = card.horizon
    if h is not None and _finite(h.get("high")) is not None:
        unit = str(h.get("unit", "d"))
        return {"low": quantity(_finite(h.get("low")) or 0.0, unit), "high": quantity(_finite(h["high"]), unit)}
    days = _finite(card.horizon_days)
    if days is not None:
        return {"low": quantity(0.0, "d"), "high": quantity(days, "d")}
    return None


def risk_assessment(*, rid: str, code: Mapping[str, Any], subject: Mapping[str, Any], method: Mapping[str, Any],
                    prediction: Mapping[str, Any], basis: Sequence[Mapping[str, Any]],
                    performer: Mapping[str, Any] | None = None, occurrence: str | None = None,
                    notes: Sequence[str] = ("AI-generated, preliminary; not reviewed by a clinician.",)
                    ) -> dict[str, Any]:
    """A RiskAssessment (status preliminary, AIAST): the one RiskAssessment builder of the package.

    ``prediction`` is one ``RiskAssessment.prediction`` (outcome, probabilityDecimal or
    qualitativeRisk, whenRange, rationale); ``notes`` become ``note`` texts.

    >>> ra = risk_assessment(rid="r1", code={"text": "risk"}, subject={"reference": "Patient/p"},
    ...                      method={"text": "m"}, prediction={"probabilityDecimal": 0.2}, basis=[])
    >>> ra["status"], ra["meta"]["security"][0]["code"], "performer" in ra
    ('preliminary', 'AIAST', False)
    """
    ra: dict[str, Any] = {
        "resourceType": "RiskAssessment", "id": rid, "meta": meta(),
        "status": "preliminary",
        "method": dict(method),
        "code": dict(code),
        "subject": dict(subject),
    }
    if occurrence:
        ra["occurrenceDateTime"] = occurrence
    if performer is not None:
        ra["performer"] = dict(performer)
    ra.update({
        "basis": [dict(b) for b in basis],
        "prediction": [dict(prediction)],
        "note": [{"text": t} for t in notes],
    })
    return ra


def finding_risk_assessment(f: Finding, run: RunContext, ehr_observation_ids: Sequence[str] = ()) -> dict[str, Any]:
    """The RiskAssessment of a prognostic Finding (id :func:`cds.fhir.ids.risk_assessment_id`).

    ``probabilityDecimal`` only when the card declares ``"calibrated": true``, else
    ``qualitativeRisk`` from the interpretation; basis -> ImagingStudy, the score Observation and
    the EHR Observations used.
    """
    m = run.model
    interp = f.interpretation
    score = f.score
    pred: dict[str, Any] = {"outcome": concept(f.code_system, f.code, f.display)}
    calibrated = m.model_card.calibrated is True
    p = _finite(f.probability)
    if calibrated and p is not None:
        pred["probabilityDecimal"] = p
    elif interp in QUALITATIVE_RISK:
        pred["qualitativeRisk"] = {"coding": [dict(QUALITATIVE_RISK[interp])]}
    when = _horizon(m.model_card)
    if when:
        pred["whenRange"] = when
    rationale = f"AI model {m.model_id} {m.version}: score {_fmt(score) if score is not None else 'n/a'}"
    if f.threshold is not None:
        rationale += f" against threshold {_fmt(f.threshold)} ({interp})"
    rationale += ("; calibrated probability" if calibrated else
                  "; the score is not a calibrated probability (the model card does not declare calibration)")
    pred["rationale"] = rationale
    basis = [dict(run.study_ref), run.ref("Observation", observation_id(f), "AI score")]
    basis += [{"reference": f"Observation/{o}"} for o in ehr_observation_ids]
    return risk_assessment(rid=risk_assessment_id(f), code=concept(f.code_system, f.code, f.display,
                                                                   f"Risk of {f.display}"),
                           subject=run.patient_ref, method={"text": f"AI model {m.model_id} {m.version}"},
                           prediction=pred, basis=basis, performer=run.device_ref(), occurrence=run.effective)


# --------------------------------------------------------------------------------- diagnostic report
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


def diagnostic_report(patient_id: str, study_uid: str, fs: Sequence[Finding], run: RunContext) -> dict[str, Any]:
    """The DiagnosticReport of one model run on one study (id :func:`cds.fhir.ids.report_id`)."""
    m = run.model
    head = (f"AI-generated, preliminary result (not reviewed by a clinician) of model {m.model_id} {m.version} "
            f"on study {study_uid}.")
    pos = [f for f in fs if f.interpretation == "positive"]
    ind = [f for f in fs if f.interpretation == "indeterminate"]
    counts = f" {len(fs)} finding(s): {len(pos)} positive, {len(ind)} indeterminate."
    conclusion = head + counts + " " + "; ".join(_summary(f) for f in fs) + "."
    md = "\n".join([f"# AI result: {m.model_id} {m.version}", "", head, "", *[f"- {_summary(f)}" for f in fs], "",
                    "See the model card (DocumentReference) for intended use, performance and limitations.", ""])
    data, size, sha1 = _b64(md)
    rep: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report_id(patient_id, study_uid, m.model_id, m.version),
        "meta": meta(),
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
    rep["result"] = [run.ref("Observation", observation_id(f), f.display) for f in fs]
    rep["conclusion"] = conclusion
    concl = []
    for f in pos:
        if f.prognostic:  # a predicted outcome is not a conclusion about the images
            continue
        c = concept(f.code_system, f.code, f.display)
        if c not in concl:
            concl.append(c)
    if concl:
        rep["conclusionCode"] = concl
    rep["presentedForm"] = [{"contentType": "text/markdown", "language": "en", "data": data, "size": size,
                             "hash": sha1, "title": "AI result (preliminary)"}]
    return rep


# ---------------------------------------------------------------------------------------- provenance
def _agent(role: str, who: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": {"coding": [coding(PROVENANCE_AGENT, role, role.capitalize())]}, "who": dict(who)}


def run_provenance(patient_id: str, study_uid: str, fs: Sequence[Finding], run: RunContext, targets: Sequence[str],
                   ehr_observation_ids: Sequence[str] = ()) -> dict[str, Any]:
    """The Provenance of one model run (id :func:`cds.fhir.ids.provenance_id`).

    target -> ``targets`` (references); agent ``author`` = the model Device, ``assembler`` = cds;
    entity ``source`` -> the ImagingStudy, and when a Finding used EHR inputs the Patient and the
    EHR Observations.
    """
    m = run.model
    entity = [{"role": "source", "what": dict(run.study_ref)}]
    if any(f.ehr_inputs for f in fs):
        entity.append({"role": "source", "what": dict(run.patient_ref)})
        entity += [{"role": "source", "what": {"reference": f"Observation/{o}"}} for o in ehr_observation_ids]
    return {
        "resourceType": "Provenance", "id": provenance_id(patient_id, study_uid, m.model_id, m.version),
        "meta": meta(),
        "target": [{"reference": t} for t in targets],
        "recorded": run.recorded,
        "activity": {"coding": [coding(V3_DATA_OPERATION, "CREATE", "create")]},
        "agent": [_agent("author", run.device_ref()), _agent("assembler", {"display": assembler_display()})],
        "entity": entity,
    }


def review_provenance(action: Mapping[str, Any], target: str, source: str | None = None) -> dict[str, Any]:
    """The Provenance of one review-store action (id :func:`cds.fhir.ids.review_provenance_id`).

    ``target`` is the reference written (the reviewed AI ``Observation/<id>``, or a read's own
    Observation); agent ``verifier`` (accept / override) or ``author`` (reader-study read) = the
    reviewer; entity ``source`` -> ``source`` (default: ``target``); ``reason`` = the override reason.

    >>> a = {"id": "a1", "action": "accept", "recorded": "2026-01-01T00:00:00Z",
    ...      "reviewer": {"reference": "Practitioner/dr-a"}}
    >>> p = review_provenance(a, "Observation/o1")
    >>> p["target"], p["agent"][0]["type"]["coding"][0]["code"]
    ([{'reference': 'Observation/o1'}], 'verifier')
    """
    kind = action["action"]
    role = "verifier" if kind in ("accept", "override") else "author"
    prov: dict[str, Any] = {
        "resourceType": "Provenance", "id": review_provenance_id(str(action["id"])),
        "target": [{"reference": target}], "recorded": action["recorded"],
        "activity": {"coding": [coding(V3_DATA_OPERATION, "UPDATE" if kind != "read" else "CREATE")],
                     "text": kind if kind != "read" else f"reader-study read ({action['read']['phase']})"},
        "agent": [_agent(role, action["reviewer"])],
        "entity": [{"role": "source", "what": {"reference": source or target}}],
    }
    if action.get("reason"):
        prov["reason"] = [dict(action["reason"])]
    return prov

