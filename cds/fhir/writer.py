"""THE results writer: :class:`cds.finding.Finding` records -> a FHIR R4 transaction Bundle an EHR can take.

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
                            "Diagnostic imaging study"; subject; imagingStudy (when the Finding carries
                            its ImagingStudy id); result -> the Observations; conclusion (starts with
                            "AI-generated, preliminary"); conclusionCode = positive non-prognostic
                            findings;
                            presentedForm = the same text as Markdown
Provenance                  target -> every resource of the run plus its Device and model card;
                            recorded = ``recorded``; agent ``author`` -> the model Device, ``assembler``
                            -> cds (display only); entity ``source`` -> ImagingStudy, and when the
                            Finding used EHR inputs -> the Patient and the EHR Observations it names
==========================  ===========================================================================

For every study a model gave **no answer** for (a :class:`cds.finding.Failure`: outside its intended
use, input rejected by the quality gate, image not matching its record, or failed), when ``failures``
are passed: one Observation with status ``cancelled``, the model's output code, no value and a
``dataAbsentReason`` (:func:`cds.fhir.resources.no_answer_observation`), so the EHR sees the study
was not answered and why — never a positive or negative call.

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
  probability itself is a component (code :data:`cds.codes.CDS_CODES` ``probability``, unit ``1``). No
  value[x] when the Finding has no threshold (interpretation ``measured``).
* measurements: ``valueQuantity`` with UCUM unit (``%``, ``mL``, ``mm`` ...). A measurement with a
  threshold is interpreted like a score; ``extra["ef_category"]`` (reduced / not reduced /
  indeterminate) becomes interpretation L / N / IND.

Codes and extensions chosen (none of the DICOM "DCM" codes of the research notes was confirmed:
DCM 122157 is "LV Findings" in DICOM PS3.16, not a probability, so it is NOT used):

* ``meta.security`` AIAST (v3-ObservationValue) on every resource this module makes except the
  pseudonymous Patient of de-identified mode (which carries PSEUDED instead);
* confidence: the AI Transparency IG extension :data:`cds.codes.AI_CONFIDENCE_URL` with ``valueDecimal`` =
  the model's probability that the coded finding is present (``Finding.probability``; for
  measurements ``extra["confidence"]`` when given, else no confidence);
* location: :data:`cds.codes.LOCATION_URL`, a complex extension with ``kind`` (point/box/mask), ``frame``
  (LPS/pixel), ``coordinate`` (repeated, in order: x, y, z or x0, y0, z0, x1, y1, z1 in mm),
  ``ref`` (mask file / SEG) and ``sopInstanceUid``;
* local codes for things no standard terminology names: :data:`cds.codes.CDS_CODES`.

Study facts come from the Findings themselves (``imaging_study_id``, ``study_started``,
``study_body_site``, ``ehr_observation_ids``, set by :meth:`cds.models.registry.ModelRegistry.run`):
the writer never looks at the cohort. A Finding without them still makes a valid Bundle: the
ImagingStudy is referenced by its DICOM UID only and no effective time is written.

Ids are those of :mod:`cds.fhir.ids`, resources come from :mod:`cds.fhir.resources`, so the review
store's reviewed Observations and the cardiac-risk RiskAssessments point at the same ids.

De-identified mode
------------------
``deidentify=True`` (needs a secret ``salt``) replaces, before anything is built, the patient id
by ``HMAC-SHA256(salt, patient_id)`` (as a UUID) and every DICOM UID (study, series, instances,
location SOP instance) by ``2.25.<HMAC as integer>`` (see :func:`cds.privacy.pseudonymise_finding`); all
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
>>> obs["id"] == observation_id(f), obs["interpretation"][0]["coding"][0]["code"], "effectiveDateTime" in obs
(True, 'POS', False)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from cds.codes import BODY_SITE_CODES, PSEUDED
from cds.errors import ParameterError
from cds.fhir import resources as res
from cds.fhir.ids import bundle_id, device_id, model_card_id, observation_id, urn
from cds.finding import Failure, Finding
from cds.privacy import pseudonymise_finding, pseudonyms

__all__ = ["results_bundle", "entry", "unique_findings", "observation_id"]

_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def entry(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A transaction entry for a resource: fullUrl ``urn:uuid:<id>``, request ``PUT <Type>/<id>``.

    >>> entry({"resourceType": "Observation", "id": "abc"})["request"]
    {'method': 'PUT', 'url': 'Observation/abc'}
    """
    rid = resource["id"]
    return {"fullUrl": urn(rid), "resource": dict(resource),
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{rid}"}}


def unique_findings(findings: Iterable[Finding]) -> list[Finding]:
    """The Findings with duplicates (same id, same content) dropped; two different Findings sharing an id,
    or anything that is not a Finding, raise :class:`~cds.errors.ParameterError`."""
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


def _ehr_ids(fs: Iterable[Finding]) -> list[str]:
    out: list[str] = []
    for f in fs:
        for o in f.ehr_observation_ids:
            if o not in out:
                out.append(o)
    return out


def results_bundle(
    findings: Iterable[Finding],
    cards: Mapping[str, Any],
    *,
    recorded: str,
    deidentify: bool = False,
    salt: str | None = None,
    body_site_codes: Mapping[str, Mapping[str, str]] = BODY_SITE_CODES,
    failures: Iterable[Failure] = (),
) -> dict[str, Any]:
    """AI Findings as a FHIR R4 ``transaction`` Bundle (see the module docstring for the graph).

    Parameters
    ----------
    findings
        The Findings (any order; the output is sorted, so order does not matter). Their study facts
        (``imaging_study_id``, ``study_started``, ``study_body_site``, ``ehr_observation_ids``) give
        the ImagingStudy reference, the effective time, the body site and the EHR Observations cited.
    cards
        ``model_id -> cds.models.bundle.Bundle`` or a dict (a whole ``metadata.json``, or just its ``cds``
        section) for every model the findings name. The card's version must match the findings'.
    recorded
        The FHIR instant of the run (``2026-01-01T12:00:00Z``), used for ``issued`` and
        ``Provenance.recorded``. Fixed by the caller so that reruns give identical bytes.
    deidentify, salt
        Pseudonymise patient and DICOM identifiers with the secret ``salt`` (see module docstring).
    body_site_codes
        Lower-case body-site text -> ``{"code_system", "code", "display"}`` (default
        :data:`cds.codes.BODY_SITE_CODES`).
    failures
        The studies the models gave no answer for (:class:`cds.finding.Failure`): each becomes a
        ``cancelled`` Observation with a ``dataAbsentReason`` (see the module docstring). A Failure
        without ``model_version`` takes its card's version.

    Returns
    -------
    dict
        The Bundle as plain JSON-ready dicts. Every entry has ``fullUrl`` ``urn:uuid:<id>`` and a
        ``PUT <Type>/<id>`` request; ids are those of :mod:`cds.fhir.ids`.
    """
    if not isinstance(recorded, str) or not _INSTANT.match(recorded):
        raise ParameterError("recorded", f"{recorded!r} is not a FHIR instant; give e.g. '2026-01-01T12:00:00Z'")
    if deidentify and not salt:
        raise ParameterError("salt", "deidentify=True needs a non-empty secret salt (keep it; the same salt "
                                     "gives the same pseudonyms)")
    unique = unique_findings(findings)
    models: dict[tuple[str, str], res.ModelInfo] = {}
    for f in unique:
        k = (f.model_id, f.model_version)
        if k not in models:
            models[k] = res.model_info(f.model_id, f.model_version, cards)
    refused = _unique_failures(failures, cards)
    for fl in refused:
        k = (fl.model_id, str(fl.model_version))
        if k not in models:
            models[k] = res.model_info(fl.model_id, str(fl.model_version), cards)
    if deidentify:
        assert salt is not None
        unique = [pseudonymise_finding(f, salt) for f in unique]  # drops record ids, dates, EHR Observation ids
        refused = [_pseudonymise_failure(fl, salt) for fl in refused]
    runs: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in unique:
        runs.setdefault((f.patient_id, f.study_uid, f.model_id, f.model_version), []).append(f)

    entries: list[dict[str, Any]] = []
    for (mid, ver) in sorted(models):
        m = models[(mid, ver)]
        mf = [f for f in unique if (f.model_id, f.model_version) == (mid, ver)]
        entries.append(entry(res.device(m, mf)))
        entries.append(entry(res.model_card_document(m)))
    patients_done: set[str] = set()
    for key in sorted(runs):
        pid, suid, mid, ver = key
        fs = sorted(runs[key], key=lambda f: (f.code_system, f.code, f.id))
        first = fs[0]
        if deidentify:
            if pid not in patients_done:
                entries.append(entry({"resourceType": "Patient", "id": pid, "meta": res.meta(PSEUDED)}))
                patients_done.add(pid)
            patient_ref = {"reference": urn(pid)}
        else:
            patient_ref = {"reference": f"Patient/{pid}"}
        run = res.RunContext(models[(mid, ver)], patient_ref, res.study_reference(suid, first.imaging_study_id),
                             res.fhir_datetime(first.study_started), recorded, first.study_body_site)
        made: list[dict[str, Any]] = [res.observation(f, run, body_site_codes) for f in fs]
        made += [res.finding_risk_assessment(f, run, f.ehr_observation_ids) for f in fs if f.prognostic]
        made.append(res.diagnostic_report(pid, suid, fs, run))
        targets = [urn(r["id"]) for r in made] + [urn(device_id(mid, ver)), urn(model_card_id(mid, ver))]
        made.append(res.run_provenance(pid, suid, fs, run, targets, _ehr_ids(fs)))
        entries += [entry(r) for r in made]
    for fl in sorted(refused, key=lambda x: (x.patient_id, str(x.study_uid), x.series_uid or "", x.model_id)):
        if deidentify:
            if fl.patient_id not in patients_done:
                entries.append(entry({"resourceType": "Patient", "id": fl.patient_id, "meta": res.meta(PSEUDED)}))
                patients_done.add(fl.patient_id)
            patient_ref = {"reference": urn(fl.patient_id)}
        else:
            patient_ref = {"reference": f"Patient/{fl.patient_id}"}
        run = res.RunContext(models[(fl.model_id, str(fl.model_version))], patient_ref,
                             res.study_reference(str(fl.study_uid), fl.imaging_study_id),
                             res.fhir_datetime(fl.study_started), recorded)
        entries.append(entry(res.no_answer_observation(fl, run, with_reason=not deidentify)))

    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": bundle_id([e["fullUrl"] for e in entries]),
        "meta": res.meta(),
        "type": "transaction",
        "timestamp": recorded,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def _unique_failures(failures: Iterable[Failure], cards: Mapping[str, Any]) -> list[Failure]:
    """Failures with a model version (the card's when not recorded), one per (patient, study, series, model)."""
    from dataclasses import replace

    seen: dict[tuple[str, str, str, str], Failure] = {}
    for i, fl in enumerate(failures):
        if not isinstance(fl, Failure):
            raise ParameterError(f"failures[{i}]", f"expected a cds.finding.Failure, got {type(fl).__name__}")
        if fl.study_uid is None:
            continue
        if fl.model_version is None:
            card = cards.get(fl.model_id)
            version = getattr(card, "version", None) or (card.get("version") if isinstance(card, Mapping) else None)
            if version is None:
                raise ParameterError("failures", f"failure of model {fl.model_id!r} records no model version and its "
                                                 "card gives none")
            fl = replace(fl, model_version=str(version))
        seen.setdefault((fl.patient_id, str(fl.study_uid), fl.series_uid or "", fl.model_id), fl)
    return list(seen.values())


def _pseudonymise_failure(fl: Failure, salt: str) -> Failure:
    """The Failure with pseudonymous patient / study / series ids and no record ids, dates or message."""
    from dataclasses import replace

    patient, study = pseudonyms(fl.patient_id, str(fl.study_uid), salt)
    series = pseudonyms(fl.patient_id, fl.series_uid, salt)[1] if fl.series_uid else None
    return replace(fl, patient_id=patient, study_uid=study, series_uid=series, imaging_study_id=None,
                   study_started=None, message="")
