"""cds.fhir (writer, resources, ids, post): Findings -> FHIR R4 transaction Bundle, POST to a FHIR server;
cds.reports.results_json."""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle as R4Bundle

import cds
from cds.codes import AI_CONFIDENCE_URL, LOCATION_URL
from cds.errors import CdsError, ParameterError
from cds.fhir.ids import device_id, model_card_id, observation_id, risk_assessment_id
from cds.fhir.post import FhirWriteError, post_transaction
from cds.fhir.writer import results_bundle
from cds.finding import Finding, Location
from cds.models.bundle import load_bundle
from cds.models.ehr_inputs import ehr_inputs_for
from cds.models.registry import with_study_context
from cds.privacy import pseudonymise_finding
from cds.reports.results_json import results_json
from cds.sources.fhir_validate import validate_resource

RECORDED = "2026-01-02T03:04:05Z"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
PID = "04a33bab"  # a Hannover patient of fhir_samples with a CR study and labs on the same day
STUDY = "1.2.826.0.1.3680043.8.498.67596563300387282997572471600429268194"
SERIES = "1.2.826.0.1.3680043.8.498.42499971167178794815585468111420000491"
IMAGING_STUDY_ID = "6b5af975"
CRP_OBS = "04a33bab-crp-20200401"
AIAST = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST")


@pytest.fixture(scope="module")
def cohort(samples_dir):
    return cds.load_cohort(samples_dir, reference_date="2026-01-01")


@pytest.fixture(scope="module")
def cards(repo) -> dict[str, Any]:
    icu = {"model_id": "cxr-icu", "version": "0.3.0", "prognostic": True, "body_site": "chest",
           "intended_use": "research demo of ICU-admission risk", "threshold": 0.5, "indeterminate": [0.45, 0.55],
           "horizon": {"low": 0, "high": 30, "unit": "d"},
           "outputs": [{"code_system": SNOMED, "code": "305351004", "display": "Admission to intensive care unit",
                        "kind": "probability"}],
           "inputs": {"ehr": [{"name": "crp", "source": "observation:1988-5"}, {"name": "age",
                                                                              "source": "patient.age_years"}]}}
    nodule = {"name": "ct-lung-nodule", "version": "0.2.0", "monai_version": "1.6.1",
              "cds": {"model_id": "ct-lung-nodule", "body_site": "chest", "threshold": 0.5,
                      "indeterminate": [0.3, 0.5], "limitations": ["synthetic training data"],
                      "performance": {"metrics": {"froc": {"value": 0.61, "ci95": [0.5, 0.7]}}}}}
    cmr = {"model_id": "cmr-function", "body_site": "heart", "intended_use": "LV function from cine SAX"}
    return {
        "cxr-cardiomegaly": load_bundle(repo / "cds" / "models" / "bundles" / "cxr-cardiomegaly"),
        "mammo-density": load_bundle(repo / "cds" / "models" / "bundles" / "mammo-density"),
        "cxr-icu": icu, "ct-lung-nodule": nodule, "cmr-function": cmr,
    }


@pytest.fixture(scope="module")
def findings(cards, cohort) -> list[Finding]:
    cm = cards["cxr-cardiomegaly"]
    md = cards["mammo-density"]
    cardio = Finding(PID, STUDY, SNOMED, "8186001", "Cardiomegaly", cm.model_id, cm.version, probability=0.81,
                     threshold=0.0865, indeterminate=(0.0654, 0.1137), series_uid=SERIES,
                     ehr_inputs={"age": 70.0, "patient.age_years": 70.0, "sex": "male", "patient.sex": "male"},
                     explanation="GradCAM over the cardiac silhouette")
    icu = Finding(PID, STUDY, SNOMED, "305351004", "Admission to intensive care unit", "cxr-icu", "0.3.0",
                  probability=0.63, threshold=0.5, indeterminate=(0.45, 0.55), series_uid=SERIES, prognostic=True,
                  ehr_inputs={"crp": 6.0, "observation:1988-5": 6.0, "age": 70.0, "patient.age_years": 70.0})
    ef = Finding("cmr-p1", "1.2.3.4.100", LOINC, "10230-1", "Left ventricular Ejection fraction", "cmr-function",
                 "0.1.0", value=42.0, unit="%", series_uid="1.2.3.4.100.1",
                 extra={"ef_category": "reduced", "reduced_below_pct": 45.0})
    nodule = Finding("ct-p1", "1.2.3.4.200", SNOMED, "27925004", "Nodule", "ct-lung-nodule", "0.2.0",
                     probability=0.7, threshold=0.5, indeterminate=(0.3, 0.5), series_uid="1.2.3.4.200.1",
                     location=Location("box", (-80.5, 20.0, -150.0, -70.5, 30.0, -140.0), frame="LPS",
                                       sop_instance_uid="1.2.3.4.200.1.77", ref="/data/ct-p1/mask.nii.gz"),
                     instance_uids=("1.2.3.4.200.1.76", "1.2.3.4.200.1.77"),
                     extra={"diameter_mm": 10.2, "volume_ml": 0.55,
                            "body_site": {"code_system": SNOMED, "code": "39607008", "display": "Lung structure"}})
    density = Finding("mg-p1", "1.2.3.4.300", "https://cds.example.org/fhir/CodeSystem/mias-background-tissue",
                      "D", "Dense-glandular", md.model_id, md.version, probability=0.62, threshold=0.5,
                      indeterminate=(0.0, 0.5), extra={"class_probabilities": {"F": 0.08, "G": 0.30, "D": 0.62},
                                                       "kind": "classification"})
    # the two findings of the cohort's study carry its facts, as ModelRegistry.run gives them
    row = next(cohort.imaging[cohort.imaging["study_uid"] == STUDY].itertuples(index=False))
    cardio, = with_study_context([cardio], row, {})
    crp_only = {"inputs": {"ehr": [{"name": "crp", "source": "observation:1988-5"}]}}
    icu, = with_study_context([icu], row, ehr_inputs_for(crp_only, cohort, PID, row.started))
    return [cardio, icu, ef, nodule, density]


def test_findings_carry_the_record_ids(findings):
    cardio, icu = findings[:2]
    assert icu.ehr_observation_ids == (CRP_OBS,) and cardio.ehr_observation_ids == ()
    assert cardio.imaging_study_id == IMAGING_STUDY_ID and cardio.study_started.startswith("2020-04-01")


def _resources(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", [])]


def _by_type(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _resources(bundle):
        out.setdefault(r["resourceType"], []).append(r)
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _obs_for(bundle: dict, f: Finding) -> dict:
    return next(r for r in _resources(bundle) if r["id"] == observation_id(f))


def _component(obs: dict, code: str) -> dict:
    return next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == code)


@pytest.fixture(scope="module")
def bundle(findings, cards) -> dict:
    return results_bundle(findings, cards, recorded=RECORDED)


# ------------------------------------------------------------------------------------ structure
def test_bundle_validates_as_r4_and_counts(bundle):
    R4Bundle.model_validate(bundle)
    for r in _resources(bundle):
        ok, msg = validate_resource(r)
        assert ok, msg
    counts = Counter(r["resourceType"] for r in _resources(bundle))
    # 5 models -> 5 Devices + 5 model cards; 5 runs (study x model) -> 5 reports + 5 provenances;
    # 5 findings -> 5 Observations; 1 prognostic finding -> 1 RiskAssessment
    assert counts == {"Device": 5, "DocumentReference": 5, "Observation": 5, "DiagnosticReport": 5,
                      "Provenance": 5, "RiskAssessment": 1}
    assert bundle["type"] == "transaction"
    for e in bundle["entry"]:
        r = e["resource"]
        assert e["fullUrl"] == f"urn:uuid:{r['id']}"
        assert e["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
    assert len({e["fullUrl"] for e in bundle["entry"]}) == len(bundle["entry"])


def test_every_resource_is_labelled_ai_asserted(bundle):
    for r in _resources(bundle):
        labels = {(s["system"], s["code"]) for s in r["meta"]["security"]}
        assert AIAST in labels, r["resourceType"]


def test_references_resolve(bundle, cohort, findings):
    full = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    # the cohort's patients, plus the made-up patients of studies outside the cohort (EHR ids as given)
    patients = set(cohort.patients["patient_id"]) | {f.patient_id for f in findings[2:]}
    studies = set(cohort.imaging["imaging_study_id"])
    ehr_obs = set(cohort.observations["observation_id"])
    n_internal = 0
    for r in _resources(bundle):
        for ref in _refs(r):
            if ref.startswith("urn:uuid:"):
                assert ref in full, f"{r['resourceType']}/{r['id']} -> {ref} does not resolve in the bundle"
                n_internal += 1
            else:  # relative references must point at the EHR's resources of this cohort
                rtype, rid = ref.split("/")
                assert rid in {"Patient": patients, "ImagingStudy": studies, "Observation": ehr_obs}[rtype], ref
    assert n_internal > 30


def test_graph_links(bundle, findings):
    res = {r["id"]: r for r in _resources(bundle)}
    types = _by_type(bundle)

    def target(ref: str) -> dict:
        return res[ref.removeprefix("urn:uuid:")]

    for rep in types["DiagnosticReport"]:
        assert rep["status"] == "preliminary"
        assert rep["category"][0]["coding"][0]["code"] == "RAD"
        assert rep["code"]["coding"][0]["code"] == "18748-4"
        assert rep["conclusion"].startswith("AI-generated, preliminary")
        obs = [target(x["reference"]) for x in rep["result"]]
        assert obs and all(o["resourceType"] == "Observation" and o["subject"] == rep["subject"] for o in obs)
        md = base64.b64decode(rep["presentedForm"][0]["data"]).decode()
        assert md.startswith("# AI result")
    for o in types["Observation"]:
        assert o["status"] == "preliminary"
        dev = target(o["device"]["reference"])
        assert dev["resourceType"] == "Device"
        assert dev["deviceName"][0]["name"] in o["device"]["display"]
        card = target(dev["extension"][0]["valueReference"]["reference"])
        assert card["resourceType"] == "DocumentReference"
        assert card["context"]["related"][0]["reference"] == f"urn:uuid:{dev['id']}"
        assert o["derivedFrom"][0]["identifier"]["system"] == "urn:dicom:uid"
    # each Provenance names its run: targets all its resources, agent = the run's model Device
    covered = set()
    for p in types["Provenance"]:
        assert p["recorded"] == RECORDED
        tg = [target(t["reference"]) for t in p["target"]]
        covered |= {r["id"] for r in tg}
        rep = next(r for r in tg if r["resourceType"] == "DiagnosticReport")
        assert {x["reference"] for x in rep["result"]} <= {t["reference"] for t in p["target"]}
        author = next(a for a in p["agent"] if a["type"]["coding"][0]["code"] == "author")
        assert target(author["who"]["reference"])["resourceType"] == "Device"
        assert p["entity"][0]["role"] == "source" and "ImagingStudy" in json.dumps(p["entity"][0])
    assert covered == set(res) - {p["id"] for p in types["Provenance"]}
    # only the cardiomegaly/ICU study is in the cohort: its report links the ImagingStudy
    linked = [r for r in types["DiagnosticReport"] if "imagingStudy" in r]
    codes = {c["coding"][0]["code"] for r in types["DiagnosticReport"] for c in r.get("conclusionCode", [])}
    assert codes == {"8186001", "27925004", "D"}  # positive, not prognostic (ICU admission is a prediction)
    assert len(linked) == 2 and all(r["imagingStudy"][0]["reference"] == f"ImagingStudy/{IMAGING_STUDY_ID}"
                                    for r in linked)


# ------------------------------------------------------------------------------------ contents
def test_classifier_observation(bundle, findings):
    cardio = findings[0]
    o = _obs_for(bundle, cardio)
    assert o["code"]["coding"][0] == {"system": SNOMED, "code": "8186001", "display": "Cardiomegaly"}
    assert o["valueCodeableConcept"]["coding"][0]["code"] == "52101004"  # present
    assert o["interpretation"][0]["coding"][0]["code"] == "POS"
    assert _component(o, "probability")["valueQuantity"]["value"] == 0.81
    assert _component(o, "probability")["valueQuantity"]["code"] == "1"
    assert _component(o, "decision-threshold")["valueQuantity"]["value"] == 0.0865
    band = _component(o, "indeterminate-band")["valueRange"]
    assert (band["low"]["value"], band["high"]["value"]) == (0.0654, 0.1137)
    conf = next(x for x in o["extension"] if x["url"] == AI_CONFIDENCE_URL)
    assert conf["valueDecimal"] == 0.81
    assert o["bodySite"]["coding"][0]["code"] == "80891009"  # heart, more precise than the card's chest
    assert o["derivedFrom"][0]["reference"] == f"ImagingStudy/{IMAGING_STUDY_ID}"
    assert o["subject"] == {"reference": f"Patient/{PID}"}
    assert o["effectiveDateTime"] == "2020-04-01" and o["issued"] == RECORDED
    assert o["identifier"][0]["value"] == cardio.id
    assert "GradCAM" in o["note"][0]["text"]


def test_negative_and_indeterminate_values(findings, cards):
    neg = replace(findings[0], probability=0.01)
    ind = replace(findings[0], probability=0.07)
    for f, value, interp in ((neg, "2667000", "NEG"), (ind, "82334004", "IND")):
        b = results_bundle([f], cards, recorded=RECORDED)
        o = _obs_for(b, f)
        assert o["valueCodeableConcept"]["coding"][0]["code"] == value
        assert o["interpretation"][0]["coding"][0]["code"] == interp
        assert f.interpretation.upper()[:3] in interp


def test_measurement_observation(bundle, findings):
    o = _obs_for(bundle, findings[2])
    assert o["valueQuantity"] == {"value": 42.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert o["interpretation"][0]["coding"][0]["code"] == "L"  # ef_category reduced
    assert "valueCodeableConcept" not in o and "component" not in o
    assert not any(x["url"] == AI_CONFIDENCE_URL for x in o.get("extension", []))
    assert o["bodySite"]["coding"][0]["code"] == "80891009"
    assert "reference" not in o["derivedFrom"][0]  # study not in the cohort: identifier only
    assert o["derivedFrom"][0]["identifier"]["value"] == "urn:oid:1.2.3.4.100"
    assert "effectiveDateTime" not in o  # a Finding without study facts has no effective time


def test_study_facts_come_from_the_finding(bundle, findings, cards):
    """No cohort: the ImagingStudy id, the study date and the body site are the Finding's own."""
    cardio = findings[0]
    o = _obs_for(bundle, cardio)
    assert o["effectiveDateTime"] == "2020-04-01"
    assert o["derivedFrom"][0]["reference"] == f"ImagingStudy/{IMAGING_STUDY_ID}"
    moved = replace(cardio, imaging_study_id="other-id", study_started="2021-02-03T10:20:00+00:00",
                    ehr_observation_ids=("obs-x",))
    b = results_bundle([moved], cards, recorded=RECORDED)
    o2 = _obs_for(b, moved)
    assert o2["id"] == o["id"]  # the record context is not part of the identity
    assert o2["effectiveDateTime"] == "2021-02-03T10:20:00Z"
    assert o2["derivedFrom"][0]["reference"] == "ImagingStudy/other-id"
    prov = _by_type(b)["Provenance"][0]
    assert {"role": "source", "what": {"reference": "Observation/obs-x"}} in prov["entity"]


def test_nodule_location_in_lps(bundle, findings):
    f = findings[3]
    o = _obs_for(bundle, f)
    loc = next(x for x in o["extension"] if x["url"] == LOCATION_URL)["extension"]
    assert [x["valueDecimal"] for x in loc if x["url"] == "coordinate"] == list(f.location.coords)
    assert {x["url"]: x.get("valueCode") for x in loc}["kind"] == "box"
    assert {x["url"]: x.get("valueCode") for x in loc}["frame"] == "LPS"
    assert {x["url"]: x.get("valueOid") for x in loc}["sopInstanceUid"] == "urn:oid:1.2.3.4.200.1.77"
    assert _component(o, "81827009")["valueQuantity"]["value"] == 10.2
    assert _component(o, "118565006")["valueQuantity"]["code"] == "mL"
    assert o["bodySite"]["coding"][0]["code"] == "39607008"


def test_density_class_probabilities(bundle, findings):
    o = _obs_for(bundle, findings[4])
    classes = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in o["component"]
               if c["code"]["coding"][0]["system"].endswith("mias-background-tissue")}
    assert classes == {"F": 0.08, "G": 0.30, "D": 0.62}
    assert math.isclose(sum(classes.values()), 1.0)
    assert _component(o, "F")["code"]["coding"][0]["display"] == "Fatty"  # display from the model card
    assert o["bodySite"]["coding"][0]["code"] == "76752008"  # breast, from the card's body_site


def test_device_and_model_card(bundle, cards):
    b = cards["cxr-cardiomegaly"]
    dev = next(r for r in _resources(bundle) if r["id"] == device_id(b.model_id, b.version))
    assert dev["type"]["text"] == "Artificial-Intelligence"
    assert dev["deviceName"][0] == {"name": "cxr-cardiomegaly", "type": "model-name"}
    versions = {v["type"]["text"]: v["value"] for v in dev["version"]}
    assert versions["model"] == "1.0.0" and versions["MONAI"] == "1.6.1"
    props = {p["type"]["coding"][0]["code"]: [q["value"] for q in p["valueQuantity"]] for p in dev["property"]}
    assert props == {"decision-threshold": [b.card["threshold"]], "indeterminate-band": list(b.card["indeterminate"])}
    doc = next(r for r in _resources(bundle) if r["id"] == model_card_id(b.model_id, b.version))
    att = doc["content"][0]["attachment"]
    assert att["contentType"] == "text/markdown"
    md = base64.b64decode(att["data"]).decode()
    assert att["size"] == len(md.encode())
    assert b.card["intended_use"] in md and "## Limitations" in md
    auroc = b.card["performance"]["metrics"]["auroc"]
    assert "| auroc |" in md and f"{auroc['ci95'][0]:.3g}" in md
    assert b.card["performance"]["evaluation_command"] in md


def test_risk_assessment_and_ehr_provenance(bundle, findings, cards):
    icu = findings[1]
    ra = next(r for r in _resources(bundle) if r["resourceType"] == "RiskAssessment")
    assert ra["id"] == risk_assessment_id(icu) and ra["status"] == "preliminary"
    pred = ra["prediction"][0]
    assert pred["outcome"]["coding"][0]["code"] == "305351004"
    assert "probabilityDecimal" not in pred  # the card does not declare calibration
    assert pred["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert (pred["whenRange"]["low"]["value"], pred["whenRange"]["high"]["value"]) == (0.0, 30.0)
    assert pred["whenRange"]["high"]["code"] == "d"
    basis = [x["reference"] for x in ra["basis"] if "reference" in x]
    assert f"urn:uuid:{observation_id(icu)}" in basis and f"Observation/{CRP_OBS}" in basis
    prov = next(p for p in _by_type(bundle)["Provenance"]
                if {"reference": f"urn:uuid:{ra['id']}"} in p["target"])
    whats = [json.dumps(e["what"]) for e in prov["entity"]]
    assert any(f"Patient/{PID}" in w for w in whats) and any(CRP_OBS in w for w in whats)
    # a calibrated card gives the probability itself
    cal = dict(cards, **{"cxr-icu": dict(cards["cxr-icu"], calibrated=True)})
    b2 = results_bundle([icu], cal, recorded=RECORDED)
    pred2 = next(r for r in _resources(b2) if r["resourceType"] == "RiskAssessment")["prediction"][0]
    assert pred2["probabilityDecimal"] == 0.63 and "qualitativeRisk" not in pred2
    # findings without EHR inputs: the Provenance names the study only
    b3 = results_bundle([findings[2]], cards, recorded=RECORDED)
    assert len(_by_type(b3)["Provenance"][0]["entity"]) == 1


# ------------------------------------------------------------------------------------ idempotency
def test_idempotent_and_order_independent(findings, cards, bundle):
    shuffled = list(findings)
    random.Random(3).shuffle(shuffled)
    again = results_bundle(shuffled + [findings[0]], cards, recorded=RECORDED)
    assert json.dumps(again) == json.dumps(bundle)
    # a different score keeps every id (a write-back updates, never duplicates)
    moved = [replace(f, probability=0.2) if f.probability is not None else f for f in findings]
    b2 = results_bundle(moved, cards, recorded=RECORDED)
    assert [e["fullUrl"] for e in b2["entry"]] == [e["fullUrl"] for e in bundle["entry"]]
    assert json.dumps(b2) != json.dumps(bundle)
    assert {observation_id(f) for f in findings} == {r["id"] for r in _by_type(bundle)["Observation"]}


# ------------------------------------------------------------------------------------ de-identified
def test_deidentified_bundle(findings, cards):
    b = results_bundle(findings, cards, recorded=RECORDED, deidentify=True, salt="s3cret")
    R4Bundle.model_validate(b)
    text = json.dumps(b)
    for f in findings:
        assert f.patient_id not in text and f.study_uid not in text
        assert all(u not in text for u in f.instance_uids) and (f.series_uid or "@@") not in text
    for secret in (IMAGING_STUDY_ID, CRP_OBS, "2020-04-01", "/data/ct-p1", "mask.nii.gz"):
        assert secret not in text
    full = {e["fullUrl"] for e in b["entry"]}
    for r in _resources(b):
        for ref in _refs(r):
            assert ref in full, f"de-identified bundle points outside itself: {ref}"
    patients = _by_type(b)["Patient"]
    assert len(patients) == 4 and all(set(p) == {"resourceType", "id", "meta"} for p in patients)
    assert all(p["meta"]["security"][0]["code"] == "PSEUDED" for p in patients)
    pseudo = [pseudonymise_finding(f, "s3cret") for f in findings]
    assert {observation_id(f) for f in pseudo} == {r["id"] for r in _by_type(b)["Observation"]}
    assert not {observation_id(f) for f in findings} & {r["id"] for r in _resources(b)}
    assert json.dumps(results_bundle(findings, cards, recorded=RECORDED, deidentify=True,
                                     salt="s3cret")) == text
    other = results_bundle(findings, cards, recorded=RECORDED, deidentify=True, salt="other")
    assert {r["id"] for r in _by_type(other)["Observation"]}.isdisjoint({r["id"] for r in _by_type(b)["Observation"]})
    with pytest.raises(ParameterError, match="salt"):
        results_bundle(findings, cards, recorded=RECORDED, deidentify=True)


# ------------------------------------------------------------------------------------ errors
def test_parameter_errors(findings, cards):
    with pytest.raises(ParameterError, match="cards.*cxr-icu"):
        results_bundle(findings, {k: v for k, v in cards.items() if k != "cxr-icu"}, recorded=RECORDED)
    with pytest.raises(ParameterError, match="version 0.3.0 but the findings come from version 9"):
        results_bundle([replace(findings[1], model_version="9")], cards, recorded=RECORDED)
    with pytest.raises(ParameterError, match="recorded"):
        results_bundle(findings, cards, recorded="2026-01-02 03:04")
    with pytest.raises(ParameterError, match="probability"):
        results_bundle([replace(findings[0], probability=float("nan"))], cards, recorded=RECORDED)
    with pytest.raises(ParameterError, match="share id"):
        results_bundle([findings[0], replace(findings[0], explanation="other")], cards, recorded=RECORDED)
    empty = results_bundle([], cards, recorded=RECORDED)
    assert "entry" not in empty
    R4Bundle.model_validate(empty)


# ------------------------------------------------------------------------------------ results.json
def test_results_json_deterministic(findings):
    failures = [{"patient_id": "z", "study_uid": "9", "model_id": "m", "error": "ModelInputError", "message": "b"},
                {"patient_id": "a", "study_uid": "1", "model_id": "m", "error": "ImageReadError", "message": "a"}]
    metrics = {"n": np.int64(5), "auroc": np.float64(0.8), "ci": np.array([0.7, 0.9]), "bad": float("nan")}
    r1 = results_json(findings, failures, metrics)
    shuffled = list(reversed(findings))
    r2 = results_json(shuffled, list(reversed(failures)), dict(reversed(list(metrics.items()))))
    s1 = json.dumps(r1)
    assert s1 == json.dumps(r2)
    json.loads(s1)  # valid JSON (no NaN)
    assert r1["metrics"] == {"auroc": 0.8, "bad": None, "ci": [0.7, 0.9], "n": 5}
    assert list(r1) == sorted(r1)
    assert [s["study_uid"] for s in r1["studies"]] == sorted(
        {f.study_uid for f in findings}, key=lambda u: next(f.patient_id for f in findings if f.study_uid == u))
    assert r1["n_findings"] == 5 and r1["n_studies"] == 4 and r1["failures"][0]["patient_id"] == "a"
    back = [Finding.from_dict(d) for s in r1["studies"] for d in s["findings"]]
    assert sorted(f.id for f in back) == sorted(f.id for f in findings)


# ------------------------------------------------------------------------------------ POST
@contextmanager
def fhir_transaction_server(mode: str = "ok") -> Iterator[Any]:
    """A tiny FHIR server on 127.0.0.1 taking transactions at /fhir (``mode``: ok, 400, 500, garbage)."""
    store: dict[tuple[str, str], int] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: Any, ctype: str = "application/fhir+json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _outcome(self, code: int, msg: str) -> None:
            self._send(code, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": msg, "expression": ["Bundle.entry[0]"]}]})

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/fhir":
                return self._outcome(404, f"unknown path {self.path}")
            if mode == "400":
                return self._outcome(400, "Observation.status: preliminary not allowed here")
            if mode == "500":
                return self._outcome(500, "database is down")
            if mode == "garbage":
                return self._send(200, b"<html>proxy login</html>", "text/html")
            if body.get("resourceType") != "Bundle" or body.get("type") != "transaction":
                return self._outcome(400, "not a transaction")
            full = {e["fullUrl"] for e in body["entry"]}
            for e in body["entry"]:
                for ref in _refs(e["resource"]):
                    if ref.startswith("urn:uuid:") and ref not in full:
                        return self._outcome(400, f"unresolved reference {ref}")
                r = e["resource"]
                if e["request"] != {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}:
                    return self._outcome(400, f"bad request line {e['request']}")
            out = []
            for e in body["entry"]:
                key = (e["resource"]["resourceType"], e["resource"]["id"])
                new = key not in store
                store[key] = store.get(key, 0) + 1
                out.append({"response": {"status": "201 Created" if new else "200 OK",
                                         "location": f"{key[0]}/{key[1]}/_history/{store[key]}",
                                         "etag": f'W/"{store[key]}"'}})
            self._send(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": out})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.store = store  # type: ignore[attr-defined]
    server.base = f"http://127.0.0.1:{server.server_address[1]}/fhir"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_post_transaction_roundtrip(bundle):
    with fhir_transaction_server() as srv:
        first = post_transaction(bundle, srv.base, timeout=10)
        assert len(first) == len(bundle["entry"])
        assert {o["status_code"] for o in first} == {201}
        assert first[0]["location"].startswith(bundle["entry"][0]["request"]["url"])
        assert first[0]["request"] == "PUT " + bundle["entry"][0]["request"]["url"]
        n = len(srv.store)
        again = post_transaction(copy.deepcopy(bundle), srv.base + "/", timeout=10)
        assert {o["status_code"] for o in again} == {200} and len(srv.store) == n  # no duplicates


@pytest.mark.parametrize("mode,status,text", [("400", 400, "preliminary not allowed"), ("500", 500, "database is down")])
def test_post_transaction_http_errors(bundle, mode, status, text):
    with fhir_transaction_server(mode) as srv:
        with pytest.raises(FhirWriteError) as exc:
            post_transaction(bundle, srv.base, timeout=10)
    assert exc.value.status == status and exc.value.url == srv.base
    assert srv.base in str(exc.value) and f"HTTP {status}" in str(exc.value) and text in str(exc.value)
    assert isinstance(exc.value, CdsError)


def test_post_transaction_bad_answer_and_unreachable(bundle):
    with fhir_transaction_server("garbage") as srv:
        with pytest.raises(FhirWriteError, match="not a transaction-response"):
            post_transaction(bundle, srv.base, timeout=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fhir"
    with pytest.raises(FhirWriteError, match=f"127.0.0.1:{port}/fhir: cannot reach"):
        post_transaction(bundle, url, timeout=5)
    with pytest.raises(ParameterError, match="bundle"):
        post_transaction({"resourceType": "Bundle", "type": "collection"}, url)
    with pytest.raises(ParameterError, match="base_url"):
        post_transaction(bundle, "ftp://x")
