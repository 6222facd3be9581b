"""cds.studies.cardiac_risk: the Cox-form model, FHIR clinical features, phantom CMR inputs, RiskAssessment output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

import cds
from cds.errors import ParameterError
from cds.fhir.ids import assessment_id
from cds.finding import Finding
from cds.studies import cardiac_risk as cr

REFERENCE = {"gcs_pct": -24.2, "age_years": 60.0, "male": 0, "diabetes": 0, "prior_mi": 0, "troponin_elevated": 0,
             "creatinine_mg_dl": 1.0}


def _res(rtype: str, rid: str, **kw: object) -> dict:
    return {"resourceType": rtype, "id": rid, **kw}


def _cond(rid: str, pid: str, code: str, display: str, onset: str) -> dict:
    return _res("Condition", rid, subject={"reference": f"Patient/{pid}"}, onsetDateTime=onset,
                code={"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]})


def _obs(rid: str, pid: str, code: str, value: float, unit: str, when: str) -> dict:
    return _res("Observation", rid, status="final", subject={"reference": f"Patient/{pid}"},
                code={"coding": [{"system": "http://loinc.org", "code": code}]}, effectiveDateTime=when,
                valueQuantity={"value": value, "unit": unit})


def _enc(rid: str, pid: str, start: str) -> dict:
    return _res("Encounter", rid, status="finished", subject={"reference": f"Patient/{pid}"},
                **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
                period={"start": start, "end": start})


@pytest.fixture()
def tiny_cohort(tmp_path: Path) -> object:
    res = [
        _res("Patient", "pa", gender="male", birthDate="1950-01-01", deceasedDateTime="2021-06-01T00:00:00+00:00"),
        _enc("ea1", "pa", "2020-01-10T10:00:00+00:00"), _enc("ea2", "pa", "2021-03-01T10:00:00+00:00"),
        _enc("ea3", "pa", "2021-07-01T10:00:00+00:00"),  # after death (Synthea writes such encounters)
        _cond("ca1", "pa", "44054006", "Diabetes", "2015-05-01T00:00:00+00:00"),
        _cond("ca2", "pa", "22298006", "Myocardial infarction", "2021-03-01T10:00:00+00:00"),  # the index event
        _obs("oa1", "pa", "67151-1", 30.0, "ng/L", "2021-02-20T00:00:00+00:00"),
        _obs("oa2", "pa", "2160-0", 132.6, "umol/L", "2021-02-20T00:00:00+00:00"),
        _obs("oa3", "pa", "2160-0", 0.8, "mg/dL", "2019-01-01T00:00:00+00:00"),  # outside the 365-day window
        _res("Patient", "pb", gender="female", birthDate="1980-06-01"),
        _enc("eb1", "pb", "2025-05-01T10:00:00+00:00"),
        _cond("cb1", "pb", "15777000", "Prediabetes", "2020-01-01T00:00:00+00:00"),
        _cond("cb2", "pb", "399211009", "History of myocardial infarction", "2010-01-01T00:00:00+00:00"),
        _obs("ob1", "pb", "10839-9", 0.01, "ng/mL", "2025-04-01T00:00:00+00:00"),
        _res("Patient", "pc", gender="female", birthDate="1990-01-01"),
    ]
    b = {"resourceType": "Bundle", "type": "collection",
         "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in res]}
    (tmp_path / "b.json").write_text(json.dumps(b))
    return cds.load_cohort(tmp_path, validate=True, reference_date="2026-01-01")


def test_reference_values_give_the_baseline_risk_and_gcs_follows_backhaus() -> None:
    m = cr.default_model()
    assert m.assess(REFERENCE)["risk"] == pytest.approx(73 / 1021, abs=1e-6)
    worse = m.assess({**REFERENCE, "gcs_pct": -14.2})
    assert worse["hazard_ratio"] == pytest.approx(1.07 ** 10)
    assert worse["risk"] == pytest.approx(1 - (1 - 73 / 1021) ** (1.07 ** 10), abs=1e-6)
    risks = [m.assess({**REFERENCE, "gcs_pct": g})["risk"] for g in (-30, -24, -18, -10, -2)]
    assert risks == sorted(risks) and len(set(risks)) == 5
    old = m.assess({**REFERENCE, "age_years": 80.0, "diabetes": 1})
    assert old["hazard_ratio"] == pytest.approx(1.3 ** 2 * 1.5)
    only_gcs = cr.default_model(include_assumed=False)
    assert only_gcs.assess({**REFERENCE, "age_years": 90.0, "diabetes": 1})["risk"] == pytest.approx(73 / 1021)
    assert [t.feature for t in only_gcs.used] == ["gcs_pct"]


def test_missing_features_are_set_to_reference_and_listed() -> None:
    r = cr.default_model().assess({"gcs_pct": -20.0, "age_years": 70.0})
    assert set(r["imputed"]) == {"male", "diabetes", "prior_mi", "troponin_elevated", "creatinine_mg_dl"}
    assert r["contributions"]["diabetes"] == 0.0
    assert r["linear_predictor"] == pytest.approx(math.log(1.07) * 4.2 + math.log(1.3) * 1.0)
    assert "gcs_pct" in cr.default_model().assess({"gcs_pct": float("nan")})["imputed"]


def test_the_model_states_its_form_and_sources() -> None:
    m = cr.default_model()
    form = m.form()
    assert form.startswith("risk(12 months) = 1 - 0.9285 ** exp(LP)") and "(gcs_pct + 24.2)" in form
    t = m.table().set_index("feature")
    assert t.loc["gcs_pct", "status"] == "published" and t.loc["gcs_pct", "hazard_ratio"] == 1.07
    assert t.loc["gcs_pct", "hr_ci95"] == [1.05, 1.10] and "Backhaus" in t.loc["gcs_pct", "source"]
    assert t.loc["gls_pct", "status"] == "not used" and pd.isna(t.loc["gls_pct", "beta"])
    assert t.loc["gls_pct", "hazard_ratio"] == 1.12 and t.loc["gls_pct", "hr_ci95"] == [1.08, 1.16]
    assumed = t[t["status"] == "assumed"].index.tolist()
    assert assumed == ["age_years", "male", "diabetes", "prior_mi", "troponin_elevated", "creatinine_mg_dl"]
    assert all("assumed" in s for s in t.loc[assumed, "source"])
    assert any("NOT validated" in n for n in m.notes)


def test_clinical_features_from_fhir(tiny_cohort: object) -> None:
    as_of = cr.assessment_time(tiny_cohort, "pa")
    assert as_of == pd.Timestamp("2021-03-01T10:00:00+00:00")  # last encounter before death, not after
    f = cr.clinical_features(tiny_cohort, "pa", as_of)
    v = f["values"]
    assert v["age_years"] == pytest.approx(71.2, abs=0.05) and v["male"] == 1
    assert v["diabetes"] == 1 and v["prior_mi"] == 0  # MI at as_of is the index event, not prior
    assert v["troponin_elevated"] == 1  # 30 ng/L > 14 ng/L
    assert v["creatinine_mg_dl"] == pytest.approx(132.6 / 88.42, abs=1e-3)
    refs = {e["reference"] for e in f["evidence"]}
    assert {"Patient/pa", "Condition/ca1", "Observation/oa1", "Observation/oa2"} <= refs
    assert "Observation/oa3" not in refs and "Condition/ca2" not in refs
    g = cr.clinical_features(tiny_cohort, "pb", cr.assessment_time(tiny_cohort, "pb"))["values"]
    assert g["diabetes"] == 0 and g["prior_mi"] == 1 and g["troponin_elevated"] == 0 and g["male"] == 0
    assert g["creatinine_mg_dl"] is None
    assert cr.assessment_time(tiny_cohort, "pc") == pd.Timestamp("2026-01-01", tz="UTC")


def test_select_patients(tiny_cohort: object) -> None:
    assert cr.select_patients(tiny_cohort, "mi-or-hf") == ["pa", "pb"]
    assert cr.select_patients(tiny_cohort, "all") == ["pa", "pb", "pc"]
    assert cr.select_patients(tiny_cohort, ["pc"]) == ["pc"]
    with pytest.raises(ParameterError, match="patients: not in the cohort: zz"):
        cr.select_patients(tiny_cohort, ["zz"])
    with pytest.raises(ParameterError, match="patients"):
        cr.select_patients(tiny_cohort, "everyone")


def _cmr_findings(pid: str) -> list[Finding]:
    common = {"patient_id": pid, "study_uid": "2.25.1", "model_id": "cmr-function", "model_version": "1.0.0",
              "extra": {"phantom_derived": True}}
    local = "https://cds.example.org/fhir/CodeSystem/cmr-measures"
    return [Finding(code_system="http://loinc.org", code="10230-1", display="LV EF", value=45.0, unit="%", **common),
            Finding(code_system=local, code="lv-gcs", display="LV GCS", value=-15.0, unit="%", **common),
            Finding(code_system=local, code="lv-grs", display="LV GRS", value=25.0, unit="%", **common)]


def test_cmr_features_reference_the_results_writer_ids() -> None:
    from cds.fhir.ids import observation_id

    fs = _cmr_findings("pa")
    c = cr.cmr_features(fs)
    assert c["values"]["gcs_pct"] == -15.0 and c["values"]["ef_pct"] == 45.0 and c["values"]["edv_ml"] is None
    assert [e["reference"] for e in c["evidence"]] == [f"Observation/{observation_id(f)}" for f in fs]
    assert all("PHANTOM-derived" in e["display"] for e in c["evidence"])


def test_risk_assessment_is_valid_r4_and_carries_what_it_must(tiny_cohort: object) -> None:
    m = cr.default_model()
    as_of = cr.assessment_time(tiny_cohort, "pa")
    clin = cr.clinical_features(tiny_cohort, "pa", as_of)
    cmr = cr.cmr_features(_cmr_findings("pa"))
    res = m.assess({**clin["values"], **cmr["values"]})
    ra = cr.risk_assessment("pa", as_of, res, cmr["evidence"] + clin["evidence"], m)
    assert cr.validate([ra]) == 1
    assert ra["status"] == "preliminary" and ra["meta"]["security"][0]["code"] == "AIAST"
    assert ra["subject"] == {"reference": "Patient/pa"} and ra["occurrenceDateTime"] == "2021-03-01T10:00:00Z"
    pred = ra["prediction"][0]
    assert pred["probabilityDecimal"] == round(res["risk"], 4) and 0 < pred["probabilityDecimal"] < 1
    assert pred["whenRange"]["high"] == {"value": 12, "unit": "mo", "system": "http://unitsofmeasure.org",
                                         "code": "mo"}
    refs = [b["reference"] for b in ra["basis"]]
    assert "Condition/ca1" in refs and "Observation/oa1" in refs and len(refs) == len(set(refs))
    notes = " ".join(n["text"] for n in ra["note"])
    assert "NOT validated" in notes and "PHANTOM-derived" in notes
    assert ra == cr.risk_assessment("pa", as_of, res, cmr["evidence"] + clin["evidence"], m)  # stable id
    # the package's one id scheme: model, version, patient and assessment time
    assert ra["id"] == assessment_id(m.name, m.version, "pa", "2021-03-01T10:00:00Z")
    assert ra["id"] != cr.risk_assessment("pb", as_of, res, [], m)["id"]
    bad = dict(ra, subject="Patient/pa")  # a string where R4 wants a Reference
    with pytest.raises(ParameterError, match=f"RiskAssessment/{ra['id']}: not valid FHIR R4"):
        cr.validate([bad])


def test_missing_cmr_bundle_names_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="cmr_bundle.*cds train cmr-function"):
        cr.phantom_cmr_findings("p", 1, tmp_path / "none")


@pytest.fixture(scope="module")
def cmr_bundle() -> Path:
    from cds.models.tasks import cmr_function

    path = cmr_function.default_bundle_dir()
    if not (path / "configs" / "metadata.json").is_file():
        pytest.skip(f"shipped cmr-function bundle not present at {path} (`cds train cmr-function`)")
    return path


@pytest.mark.slow
def test_phantom_cmr_to_risk_assessments_on_the_sample_cohort(cmr_bundle: Path, samples_dir: Path) -> None:
    cohort = cds.load_cohort(samples_dir / "synthea", validate=False, reference_date="2026-01-01")
    out = cr.assess_cohort(cohort, "mi-or-hf", phantom_seed=500, cmr_bundle=cmr_bundle, phantom_frames=12,
                           phantom_supersample=2)
    ids = cr.select_patients(cohort, "mi-or-hf")
    assert out["features"]["patient_id"].tolist() == ids and len(ids) >= 2
    assert out["features"]["phantom_seed"].tolist() == list(range(500, 500 + len(ids)))
    assert out["features"]["prior_mi"].sum() >= 1
    for f in out["findings"]:
        assert f.extra["phantom_derived"] is True and f.model_id == "cmr-function"
    truth = out["phantom_truth"]
    assert (truth["gcs_pct_measured"] < 0).all() and (truth["gcs_pct_truth"] < 0).all()
    assert ((truth["ef_pct_measured"] - truth["ef_pct_truth"]).abs() < 15).all()
    assert len(out["resources"]) == len(ids) and cr.validate(out["resources"]) == len(ids)
    bundle = cr.results_bundle(out["findings"], out["resources"], cmr_bundle, cohort, "2026-01-01T00:00:00Z")
    assert cr.validate([bundle]) == 1
    obs_ids = {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    for ra in out["resources"]:
        cmr_refs = [b["reference"].split("/", 1)[1] for b in ra["basis"] if "PHANTOM" in b["display"]]
        assert cmr_refs and set(cmr_refs) <= obs_ids  # every CMR basis reference resolves inside the bundle
    again = cr.assess_cohort(cohort, "mi-or-hf", phantom_seed=500, cmr_bundle=cmr_bundle, phantom_frames=12,
                             phantom_supersample=2)
    pd.testing.assert_frame_equal(out["risks"], again["risks"])
