"""The FHIR layer: loaders, validation, tables, problems on bad input, REST server, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest

import cds
from cds.errors import FhirInputError
from tests.fhir_server import serve_fhir

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-03-01"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "subject": {"reference": "Patient/p1"},
             "period": {"start": "2020-04-01T08:00:00+00:00", "end": "2020-04-09T08:00:00+00:00"}}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final",
       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                 "code": "laboratory"}]}],
       "code": {"coding": [{"system": "http://loinc.org", "code": "1988-5", "display": "CRP"}]},
       "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
       "effectiveDateTime": "2020-04-02T09:00:00+00:00",
       "valueQuantity": {"value": 42.5, "unit": "mg/L", "system": "http://unitsofmeasure.org", "code": "mg/L"}}


def bundle(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- loading what users have -------------------------------------------------------------------

def test_bundle_file_builds_tidy_tables(tmp_path: Path) -> None:
    f = write(tmp_path / "b.json", bundle(PATIENT, ENCOUNTER, OBS))
    c = cds.load_cohort(f, reference_date="2020-03-01")
    assert c.problems == []
    p = c.patients.iloc[0]
    assert (p["patient_id"], p["sex"], p["age_years"], bool(p["deceased"])) == ("p1", "female", 70.0, False)
    o = c.observations.iloc[0]
    assert (o["code"], o["value"], o["unit"], o["encounter_id"]) == ("1988-5", 42.5, "mg/L", "e1")
    assert o["time"] == pd.Timestamp("2020-04-02T09:00:00Z")
    assert c.encounters.iloc[0]["class"] == "IMP"
    rec = c.patient("p1")
    assert len(rec.observations) == 1 and len(rec.encounters) == 1
    with pytest.raises(KeyError, match="nope"):
        c.patient("nope")


def test_age_stops_at_death(tmp_path: Path) -> None:
    dead = dict(PATIENT, deceasedDateTime="2000-03-01T00:00:00+00:00")
    c = cds.load_cohort(write(tmp_path / "b.json", bundle(dead)), reference_date="2020-01-01")
    assert c.patients.iloc[0]["age_years"] == 50.0
    assert bool(c.patients.iloc[0]["deceased"])


def test_blood_pressure_components_become_rows(tmp_path: Path) -> None:
    bp = {"resourceType": "Observation", "id": "bp", "status": "final",
          "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
          "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2020-01-01",
          "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                         "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
                        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                         "valueQuantity": {"value": 80, "unit": "mm[Hg]"}}]}
    c = cds.load_cohort(write(tmp_path / "b.json", bundle(PATIENT, bp)))
    assert sorted(zip(c.observations["code"], c.observations["value"], strict=True)) == [
        ("8462-4", 80.0), ("8480-6", 120.0)]


def test_ndjson_bulk_export(tmp_path: Path) -> None:
    for rtype, res in (("Patient", PATIENT), ("Encounter", ENCOUNTER), ("Observation", OBS)):
        (tmp_path / f"{rtype}.ndjson").write_text(json.dumps(res) + "\n\n")
    c = cds.load_cohort(tmp_path)
    assert (len(c.patients), len(c.encounters), len(c.observations), len(c.problems)) == (1, 1, 1, 0)


def test_files_starting_with_a_utf8_bom_load(tmp_path: Path) -> None:
    """Windows tools often write a byte order mark first: the JSON after it is valid and loads."""
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(bundle(PATIENT, ENCOUNTER)).encode())
    (tmp_path / "Observation.ndjson").write_bytes(b"\xef\xbb\xbf" + json.dumps(OBS).encode() + b"\n")
    c = cds.load_cohort(tmp_path)
    assert (len(c.patients), len(c.encounters), len(c.observations), len(c.problems)) == (1, 1, 1, 0)


def test_an_ndjson_line_holding_a_bundle_is_expanded(tmp_path: Path) -> None:
    """A Bundle on one ndjson line gives its entries (it used to vanish without a problem recorded)."""
    lines = [json.dumps(bundle(PATIENT, ENCOUNTER)), json.dumps(OBS)]
    (tmp_path / "export.ndjson").write_text("\n".join(lines) + "\n")
    c = cds.load_cohort(tmp_path)
    assert (len(c.patients), len(c.encounters), len(c.observations), len(c.problems)) == (1, 1, 1, 0)


def test_single_resource_file_is_accepted(tmp_path: Path) -> None:
    write(tmp_path / "patient.json", PATIENT)
    assert list(cds.load_cohort(tmp_path).patients["patient_id"]) == ["p1"]


# --- bad input: clear errors or recorded problems, never a pydantic traceback --------------------

def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FhirInputError, match="no such file"):
        cds.load_cohort(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FhirInputError, match="holds no FHIR files") as exc:
        cds.load_cohort(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(exc.value)


def test_malformed_json_is_recorded_and_the_rest_loads(tmp_path: Path) -> None:
    write(tmp_path / "good.json", bundle(PATIENT))
    (tmp_path / "broken.json").write_text('{"resourceType": "Bundle", "entry": [')
    c = cds.load_cohort(tmp_path)
    assert len(c.patients) == 1
    [p] = c.invalid_resources
    assert p.kind == "json" and p.source.endswith("broken.json") and "malformed JSON" in p.message


def test_malformed_ndjson_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_text(json.dumps(PATIENT) + "\n{oops\n")
    c = cds.load_cohort(tmp_path)
    [p] = c.invalid_resources
    assert (p.kind, p.index) == ("json", 2) and "line 2" in p.message


def test_non_fhir_json_is_recorded(tmp_path: Path) -> None:
    write(tmp_path / "good.json", bundle(PATIENT))
    write(tmp_path / "list.json", [1, 2, 3])
    write(tmp_path / "obj.json", {"patients": []})
    c = cds.load_cohort(tmp_path)
    kinds = sorted((Path(p.source).name, p.kind) for p in c.invalid_resources)
    assert kinds == [("list.json", "not-fhir"), ("obj.json", "not-fhir")]


def test_r5_only_field_is_reported_with_file_entry_type_and_field(tmp_path: Path) -> None:
    r5 = dict(ENCOUNTER, id="e2", virtualService=[{"channelType": {"code": "zoom"}}])
    r5["class"] = [{"coding": [{"code": "AMB"}]}]  # R5: class is a list of CodeableConcepts
    f = write(tmp_path / "mixed.json", bundle(PATIENT, ENCOUNTER, r5, OBS))
    c = cds.load_cohort(f)
    assert list(c.encounters["encounter_id"]) == ["e1"] and len(c.observations) == 1
    [p] = c.invalid_resources
    assert (p.kind, p.index, p.resource_type, p.resource_id) == ("validation", 2, "Encounter", "e2")
    assert p.source == str(f)
    assert "Encounter.virtualService" in p.message and "Encounter.class" in p.message
    assert "pydantic" not in p.message and "Traceback" not in p.message
    # validation off: the tables are built from the raw JSON, nothing is reported
    assert len(cds.load_cohort(f, validate=False).encounters) == 2


def test_wrong_value_type_is_reported(tmp_path: Path) -> None:
    bad = dict(PATIENT, id="p2", birthDate="not-a-date")
    c = cds.load_cohort(write(tmp_path / "b.json", bundle(PATIENT, bad)))
    [p] = c.invalid_resources
    assert p.resource_id == "p2" and p.message.startswith("Patient.birthDate")


def test_unknown_resource_type_is_reported(tmp_path: Path) -> None:
    c = cds.load_cohort(write(tmp_path / "b.json", bundle(PATIENT, {"resourceType": "Spaceship", "id": "s"})))
    [p] = c.invalid_resources
    assert "not an R4 resource type" in p.message


def test_dangling_reference_is_recorded(tmp_path: Path) -> None:
    orphan = dict(OBS, id="o2", subject={"reference": "Patient/ghost"}, encounter={"reference": "Encounter/none"})
    c = cds.load_cohort(write(tmp_path / "b.json", bundle(PATIENT, ENCOUNTER, OBS, orphan)))
    msgs = [p.message for p in c.dangling_references]
    assert any("Patient/ghost" in m for m in msgs) and any("Encounter/none" in m for m in msgs)
    assert c.summary()["dangling_references"] == 2 and c.summary()["invalid_resources"] == 0


# --- FHIR server --------------------------------------------------------------------------------

def test_fhir_server_rest_search_matches_file_load(tmp_path: Path) -> None:
    obs = [dict(OBS, id=f"o{i}", valueQuantity=dict(OBS["valueQuantity"], value=float(i))) for i in range(7)]
    write(tmp_path / "b.json", bundle(PATIENT, ENCOUNTER, *obs))
    from_file = cds.load_cohort(tmp_path, reference_date="2021-01-01")
    with serve_fhir(tmp_path) as base:
        from cds.sources import fhir_read

        res, probs = fhir_read.read_server(base, page_size=3)  # forces paging over "next" links
        assert len(res) == 9 and probs == []
        from_server = cds.load_cohort(base, reference_date="2021-01-01")
    for name in ("patients", "observations", "encounters"):
        a = from_file.tables()[name].drop(columns=["source"], errors="ignore")
        b = from_server.tables()[name].drop(columns=["source"], errors="ignore")
        pd.testing.assert_frame_equal(a, b)


def test_fhir_server_unreachable_names_the_url() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(FhirInputError, match=f"127.0.0.1:{port}"):
        cds.load_cohort(f"http://127.0.0.1:{port}/fhir")


def test_fhir_server_http_error_names_status(tmp_path: Path) -> None:
    write(tmp_path / "b.json", bundle(PATIENT))
    with serve_fhir(tmp_path) as base, pytest.raises(FhirInputError, match="HTTP 404"):
        cds.load_cohort(base.replace("/fhir", "/nothing"))


# --- real data ----------------------------------------------------------------------------------

def test_sample_cohort_has_every_hannover_patient_and_radiograph(samples_dir: Path, shared_data: Path) -> None:
    c = cds.load_cohort(samples_dir, reference_date="2026-01-01")
    assert c.invalid_resources == [] and c.dangling_references == []
    src = pd.read_csv(shared_data / "hannover-covid19-cxr" / "data.csv")
    assert set(src["patient_id"]) <= set(c.patients["patient_id"])
    img = c.imaging[c.imaging["patient_id"].isin(set(src["patient_id"]))]
    assert len(img) == len(src) == img["imaging_study_id"].nunique()
    assert img["pixel_location"].map(lambda p: Path(p).is_file()).all()
    assert set(img["modality"]) == {"CR", "DX"}
    labs = c.observations[c.observations["patient_id"].isin(set(src["patient_id"]))]
    assert {"1988-5", "2532-0"} <= set(labs["code"])


def test_whole_synthea_folder(shared_data: Path) -> None:
    folder = shared_data / "synthea-fhir-r4" / "bundles"
    c = cds.load_cohort(folder, reference_date="2026-01-01")
    index = pd.read_csv(shared_data / "synthea-fhir-r4" / "index.csv")
    assert c.invalid_resources == []
    assert sorted(c.patients["patient_id"]) == sorted(index["patient_id"])
    merged = c.patients.merge(index.rename(columns={"deceased": "index_deceased"}), on="patient_id")
    assert (merged["sex"] == merged["gender"]).all()
    assert (merged["deceased"] == merged["index_deceased"].notna()).all()
    mi = c.conditions[c.conditions["display"].str.contains("Myocardial Infarction", case=False, na=False)]
    assert mi["patient_id"].nunique() == int(index["myocardial_infarction"].sum())
    assert len(c.observations) > 1000 and len(c.imaging) == 50


def test_synthea_as_ndjson_equals_bundles(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "synthea-fhir-r4" / "bundles"
    files = sorted(folder.glob("*.json"))[:4]
    by_type: dict[str, list[bytes]] = {}
    for f in files:
        for e in orjson.loads(f.read_bytes())["entry"]:
            by_type.setdefault(e["resource"]["resourceType"], []).append(orjson.dumps(e["resource"]))
    out = tmp_path / "bulk"
    out.mkdir()
    for t, lines in by_type.items():
        (out / f"{t}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    bdir = tmp_path / "bundles"
    bdir.mkdir()
    for f in files:
        (bdir / f.name).write_bytes(f.read_bytes())
    a = cds.load_cohort(bdir, validate=False, reference_date="2026-01-01")
    b = cds.load_cohort(out, validate=False, reference_date="2026-01-01")
    for name in ("patients", "conditions", "observations", "medications", "encounters", "imaging"):
        x = a.tables()[name].drop(columns=["source"], errors="ignore")
        y = b.tables()[name].drop(columns=["source"], errors="ignore")
        pd.testing.assert_frame_equal(x, y, check_like=True)


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_cohort_summary_json(tmp_path: Path) -> None:
    write(tmp_path / "b.json", bundle(PATIENT, ENCOUNTER, OBS))
    (tmp_path / "bad.json").write_text("{")
    r = subprocess.run([sys.executable, "-m", "cds.cli", "cohort", "summary", str(tmp_path), "--json"],
                       capture_output=True, text=True, check=True)
    s = json.loads(r.stdout)
    assert {"patients", "imaging_studies", "observations", "conditions", "invalid_resources"} <= set(s)
    assert (s["patients"], s["observations"], s["invalid_resources"]) == (1, 1, 1)


def test_cli_error_is_one_clear_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cds.cli", "cohort", "summary", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("cds: error:") and "nope" in r.stderr and "Traceback" not in r.stderr


def test_cli_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, time; t = time.perf_counter(); import cds.cli\n"
            "try:\n    cds.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'monai', 'pandas', 'fhir.resources', 'pydicom') if m in sys.modules]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "[]"
