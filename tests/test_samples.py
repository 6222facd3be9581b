"""The embedded sample cohort ``fhir_samples/`` and its converter ``cds.tooling.samples``.

(a) The committed folder: valid R4, complete (49 Hannover patients, 188 radiographs), every
ImagingStudy pointing at a readable DICOM file with the same UIDs, labs coded and deduplicated,
dates anchored, sizes under the limits, licences present.
(b) Rebuilding from ``shared/data`` gives byte-identical files.
(c) The converter on small hand-made source folders: selection, trimming, bad input, no names in logs.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cds.errors import FhirInputError, ImageReadError, ParameterError
from cds.tooling import samples

N_HANNOVER_PATIENTS = 49
N_HANNOVER_IMAGES = 188
MB = 1_000_000
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


def _load(folder: Path) -> dict[Path, dict[str, Any]]:
    return {p: json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def synthea(samples_dir: Path) -> dict[Path, dict[str, Any]]:
    return _load(samples_dir / "synthea")


@pytest.fixture(scope="module")
def hannover(samples_dir: Path) -> dict[Path, dict[str, Any]]:
    return _load(samples_dir / "hannover")


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "reference" and isinstance(v, str)] + \
            [r for k, v in obj.items() if k != "contained" for r in _refs(v)]
    if isinstance(obj, list):
        return [r for x in obj for r in _refs(x)]
    return []


def _loinc_check_digit_ok(code: str) -> bool:
    """LOINC mod-10 check digit (the one that catches a mistyped code such as 27815-8)."""
    body, check = code.split("-")
    rev = body[::-1]
    odd, even = rev[0::2][::-1], rev[1::2][::-1]
    total = sum(int(c) for c in even + str(int(odd) * 2))
    return (10 - total % 10) % 10 == int(check)


# --- (a) the committed folder ----------------------------------------------------------------

def test_every_bundle_is_a_valid_r4_transaction(synthea: dict, hannover: dict) -> None:
    from fhir.resources.R4B.bundle import Bundle

    assert 6 <= len(synthea) <= 8
    assert len(hannover) == N_HANNOVER_PATIENTS
    for path, b in {**synthea, **hannover}.items():
        Bundle.model_validate(b)  # raises on anything not R4
        assert b["type"] == "transaction", path
        full_urls = [e["fullUrl"] for e in b["entry"]]
        assert len(set(full_urls)) == len(full_urls), path
        for e in b["entry"]:
            r = e["resource"]
            assert e["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}, path
            assert e["fullUrl"].startswith("urn:uuid:"), path


def test_references_resolve_inside_each_bundle(synthea: dict, hannover: dict) -> None:
    for path, b in {**synthea, **hannover}.items():
        targets = {e["fullUrl"] for e in b["entry"]}
        targets |= {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"]}
        for e in b["entry"]:
            for ref in _refs(e["resource"]):
                assert ref in targets, f"{path.name}: {e['resource']['resourceType']} -> {ref}"
    # Hannover uses Type/id references, Synthea its own urn:uuid ones
    some = next(iter(hannover.values()))
    assert all(r.startswith(("Patient/", "Encounter/")) for e in some["entry"] for r in _refs(e["resource"]))


def test_synthea_selection_covers_the_use_cases_without_billing(synthea: dict) -> None:
    flags = Counter(f for b in synthea.values() for f in samples.synthea_flags(b))
    for flag in ("myocardial_infarction", "heart_failure", "lung_cancer", "chest_xray"):
        assert flags[flag] >= 2, flag
    types = Counter(e["resource"]["resourceType"] for b in synthea.values() for e in b["entry"])
    assert not {"Claim", "ExplanationOfBenefit", "Coverage"} & set(types)
    assert {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "ImagingStudy"} <= set(types)
    for path, b in synthea.items():
        (patient,) = _resources(b, "Patient")
        assert path.name == f"{patient['id']}.json"


def test_every_radiograph_has_an_imaging_study_and_a_matching_dicom(hannover: dict) -> None:
    from pydicom import dcmread

    n = 0
    for path, b in hannover.items():
        (patient,) = _resources(b, "Patient")
        assert path.stem == patient["id"] and "name" not in patient and "birthDate" not in patient
        for st in _resources(b, "ImagingStudy"):
            n += 1
            (series,) = st["series"]
            (inst,) = series["instance"]
            (ext,) = [x for x in inst["extension"] if x["url"] == samples.INSTANCE_LOCATION_URL]
            dcm = (path.parent / ext["valueUrl"]).resolve()
            assert dcm.is_file(), dcm
            ds = dcmread(dcm)
            study_uid = st["identifier"][0]["value"].removeprefix("urn:oid:")
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == \
                (study_uid, series["uid"], inst["uid"])
            assert ds.SOPClassUID == inst["sopClass"]["code"].removeprefix("urn:oid:")
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Modality == series["modality"]["code"] == st["modality"][0]["code"]
            assert ds.Modality in ("CR", "DX")
            view = [x["valueCode"] for x in series["extension"] if x["url"] == samples.VIEW_POSITION_URL]
            assert [ds.ViewPosition] == view and series["description"] == f"Chest {ds.ViewPosition}"
            assert ds.ViewPosition in ("AP", "PA")
            assert series["bodySite"]["code"] == "51185008"
            assert ds.PatientID == patient["id"] and ds.PatientName == ""
            assert ds.PatientSex == {"male": "M", "female": "F"}[patient["gender"]]
            assert ds.StudyDate == st["started"].replace("-", "")
            assert ds.file_meta.TransferSyntaxUID in JPEG_LS
            assert (ds.PhotometricInterpretation, ds.BitsStored) == ("MONOCHROME2", 8)
            px = ds.pixel_array
            assert px.dtype == np.uint8 and max(px.shape) == 512 and px.shape == (ds.Rows, ds.Columns)
            assert px.std() > 10  # a radiograph, not a blank
    assert n == N_HANNOVER_IMAGES


def test_hannover_matches_the_source_rows(hannover: dict, shared_data: Path) -> None:
    with (shared_data / "hannover-covid19-cxr" / "data.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {p.stem for p in hannover} == {r["patient_id"] for r in rows}
    studies = {st["id"]: (p.stem, st) for p, b in hannover.items() for st in _resources(b, "ImagingStudy")}
    assert set(studies) == {r["image_id"] for r in rows}
    for r in rows:
        pid, st = studies[r["image_id"]]
        assert pid == r["patient_id"]
        assert st["modality"][0]["code"] == r["modality"]
        assert st["series"][0]["extension"][0]["valueCode"] == r["projection"].upper()
        exam = samples.exam_day(samples.HANNOVER_ANCHOR, int(r["admission_offset"]))
        assert st["started"] == exam.isoformat()


def test_labs_are_coded_deduplicated_and_never_invented(hannover: dict) -> None:
    by_code = {s.loinc: s for s in samples.LABS}
    assert all(_loinc_check_digit_ok(code) for code in by_code)
    n_absent = 0
    for path, b in hannover.items():
        keys = []
        for o in _resources(b, "Observation"):
            (coding,) = o["code"]["coding"]
            spec = by_code[coding["code"]]
            assert coding == {"system": "http://loinc.org", "code": spec.loinc, "display": spec.display}
            assert o["category"][0]["coding"][0]["code"] == "laboratory"
            if "valueQuantity" in o:
                q = o["valueQuantity"]
                assert (q["system"], q["code"]) == ("http://unitsofmeasure.org", spec.ucum)
                assert "dataAbsentReason" not in o
                keys.append((spec.loinc, o["effectiveDateTime"], q["value"]))
            else:
                n_absent += 1
                dar = o["dataAbsentReason"]["coding"][0]["code"]
                interp = o["interpretation"][0]["coding"][0]["code"]
                assert (dar, interp) in {("negative-infinity", "<"), ("positive-infinity", ">")}
                keys.append((spec.loinc, o["effectiveDateTime"], dar))
        assert len(keys) == len(set(keys)), f"{path.name}: duplicate lab values"
    assert n_absent >= 1


def test_dates_are_anchored_on_admission(hannover: dict) -> None:
    anchor = samples.HANNOVER_ANCHOR.isoformat()
    deceased = icu = 0
    for path, b in hannover.items():
        enc = {e["id"]: e for e in _resources(b, "Encounter")}
        hosp = enc[f"{path.stem}-hospital"]
        assert hosp["class"]["code"] == "IMP" and hosp["period"]["start"] == anchor
        if f"{path.stem}-icu" in enc:
            icu += 1
            period = enc[f"{path.stem}-icu"]["period"]
            assert anchor <= period["start"] <= period.get("end", "9999")
        (patient,) = _resources(b, "Patient")
        if "deceasedDateTime" in patient:
            deceased += 1
            assert patient["deceasedDateTime"] >= anchor
    assert (deceased, icu) == (3, 20)  # SOURCE.md: 3 deaths, 20 ICU admissions


def test_sizes_licences_and_sources(samples_dir: Path) -> None:
    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    assert size(samples_dir) < 20 * MB
    assert size(samples_dir / "dicom" / "hannover") < 10 * MB
    assert len(list((samples_dir / "dicom" / "hannover").glob("*/*.dcm"))) == N_HANNOVER_IMAGES
    assert (samples_dir / "synthea" / "LICENSE").read_text().startswith("Copyright 2018 Boston Children's")
    for lic in (samples_dir / "hannover" / "LICENSE", samples_dir / "dicom" / "hannover" / "LICENSE"):
        assert "Attribution 3.0 Unported" in lic.read_text()[:200]
    text = (samples_dir / "SOURCES.md").read_text()
    for needle in (samples.REBUILD_COMMAND, samples.HANNOVER_DOI, "CC BY 3.0", "Apache License 2.0",
                   "What was changed", "dataAbsentReason", "2020-04-01"):
        assert needle in text, needle


def test_licences_are_the_sources(samples_dir: Path, shared_data: Path) -> None:
    assert (samples_dir / "synthea" / "LICENSE").read_bytes() == \
        (shared_data / "synthea-fhir-r4" / "LICENSE").read_bytes()
    assert (samples_dir / "hannover" / "LICENSE").read_bytes() == \
        (shared_data / "hannover-covid19-cxr" / "LICENSE").read_bytes()


def test_the_table_builder_uses_the_same_extension() -> None:
    from cds.sources import tables

    assert samples.INSTANCE_LOCATION_URL == tables.INSTANCE_LOCATION_URL


# --- (b) rebuilt from shared/data: byte-identical --------------------------------------------

@pytest.mark.slow
@pytest.mark.shared
def test_rebuild_gives_byte_identical_files(samples_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fhir_samples"
    summary = samples.build_sample_cohort(shared_data / "synthea-fhir-r4", shared_data / "hannover-covid19-cxr",
                                          out, progress=False)
    assert summary["hannover"]["problems"] == []
    assert (summary["hannover"]["patients"], summary["dicom"]["files"]) == (N_HANNOVER_PATIENTS, N_HANNOVER_IMAGES)
    assert summary["dicom"]["max_abs_error"] <= 3
    built = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    committed = {p.relative_to(samples_dir) for p in samples_dir.rglob("*") if p.is_file()}
    assert built == committed
    differ = [str(p) for p in sorted(built) if (out / p).read_bytes() != (samples_dir / p).read_bytes()]
    assert differ == []


# --- (c) the converter on small hand-made sources ---------------------------------------------

SECRET_NAME = "Zelda Quibblesworth"
HEADER = ("patient_id,image_id,sex,age,size,weight,admission_offset,icu_admission_offset,icu_release_offset,"
          "death_offset,modality,projection,crp_offset,crp_val,d-dimer_offset,d-dimer_val,factor_xii_offset,"
          "factor_xii_val,ldh_offset,ldh_val,lymphocytes_offset,lymphocytes_val,neutrophils_offset,"
          "neutrophils_val,pco2_offset,pco2_val,po2_offset,po2_val")
ROWS = [  # patient aa11: two exams 2 days apart; the CRP of day -1 repeats on both rows
    "aa11,img00001,f,,,,0,0.0,5.0,,CR,ap,0.0,12.0,0.0,inf,,,,,,,,,,,,",
    "aa11,img00002,f,,,,-2,-2.0,3.0,,DX,pa,-2.0,12.0,-1.0,0.4,,,,,,,,,,,,",
    "bb22,img00003,m,,,,4,,,9.0,CR,ap,,,,,,,1.0,300.0,0.0,1.1,0.0,6.2,0.0,40.0,0.0,-inf",
]


def _condition(cid: str, code: str) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{cid}", "resource": {
        "resourceType": "Condition", "id": cid, "subject": {"reference": "urn:uuid:p-1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}},
        "request": {"method": "POST", "url": "Condition"}}


@pytest.fixture
def tiny_sources(tmp_path: Path) -> tuple[Path, Path]:
    syn = tmp_path / "synthea"
    (syn / "bundles").mkdir(parents=True)
    (syn / "LICENSE").write_text("Apache test licence\n")
    given, family = SECRET_NAME.split()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p-1", "resource": {"resourceType": "Patient", "id": "p-1", "gender": "female",
                                                 "name": [{"given": [given], "family": family}]},
         "request": {"method": "POST", "url": "Patient"}},
        _condition("c-1", "22298006"), _condition("c-2", "88805009"),
        {"fullUrl": "urn:uuid:claim-1", "resource": {"resourceType": "Claim", "id": "claim-1",
                                                     "patient": {"reference": "urn:uuid:p-1"}},
         "request": {"method": "POST", "url": "Claim"}},
    ]}
    (syn / "bundles" / f"{given}_{family}_1.json").write_text(json.dumps(bundle))
    han = tmp_path / "hannover"
    (han / "png").mkdir(parents=True)
    (han / "LICENSE").write_text("Creative Commons Attribution 3.0 Unported test\n")
    (han / "data.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(640, 600), (640, 700), (300, 200)], start=1):
        img = (np.linspace(0, 255, w)[None, :] * 0.7 + rng.integers(0, 60, (h, w))).astype(np.uint8)
        Image.fromarray(img, "L").save(han / "png" / f"img0000{i}.png")
    return syn, han


def test_tiny_build_maps_rows_and_is_deterministic(tiny_sources: tuple[Path, Path], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pydicom import dcmread

    syn, han = tiny_sources
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    (out1 / "synthea").mkdir(parents=True)
    (out1 / "synthea" / "stale.json").write_text("{}")
    with caplog.at_level(logging.DEBUG):
        assert samples.main(["--synthea", str(syn), "--hannover", str(han), "--out", str(out1),
                             "--no-progress", "--json"]) == 0
    printed = capsys.readouterr()
    assert SECRET_NAME.split()[1] not in printed.out + printed.err + caplog.text
    assert not (out1 / "synthea" / "stale.json").exists()  # a full build removes what it no longer writes
    samples.build_sample_cohort(syn, han, out2, progress=False)
    files = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert all((out1 / f).read_bytes() == (out2 / f).read_bytes() for f in files)

    (syn_b,) = _load(out1 / "synthea").values()
    assert [e["resource"]["resourceType"] for e in syn_b["entry"]] == ["Patient", "Condition", "Condition"]

    a = json.loads((out1 / "hannover" / "aa11.json").read_bytes())
    studies = {s["id"]: s for s in _resources(a, "ImagingStudy")}
    assert studies["img00001"]["started"] == "2020-04-01"
    assert studies["img00002"]["started"] == "2020-04-03"  # admission was 2 days before that exam
    icu = [e for e in _resources(a, "Encounter") if e["id"] == "aa11-icu"][0]
    assert icu["period"] == {"start": "2020-04-01", "end": "2020-04-06"}
    crp = [o for o in _resources(a, "Observation") if o["code"]["coding"][0]["code"] == "1988-5"]
    assert [(o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in crp] == [("2020-04-01", 12.0)]
    dd = {o["effectiveDateTime"]: o for o in _resources(a, "Observation") if o["code"]["coding"][0]["code"] == "48065-7"}
    assert dd["2020-04-01"]["dataAbsentReason"]["coding"][0]["code"] == "positive-infinity"
    assert dd["2020-04-01"]["interpretation"][0]["coding"][0]["code"] == ">"
    assert "valueQuantity" not in dd["2020-04-01"]
    assert dd["2020-04-02"]["valueQuantity"]["value"] == 0.4
    assert dd["2020-04-01"]["encounter"] == {"reference": "Encounter/aa11-icu"}

    b = json.loads((out1 / "hannover" / "bb22.json").read_bytes())
    (pb,) = _resources(b, "Patient")
    assert pb == {"resourceType": "Patient", "id": "bb22", "meta": pb["meta"], "gender": "male",
                  "deceasedDateTime": "2020-04-06"}  # exam 2020-03-28 (admission 4 days later) + 9
    (sb,) = _resources(b, "ImagingStudy")
    assert "encounter" not in sb  # the exam was before the admission
    ds = dcmread(out1 / "dicom" / "hannover" / "bb22" / "img00003.dcm")
    assert ds.pixel_array.shape == (200, 300)  # smaller than 512: not resampled
    dx = dcmread(out1 / "dicom" / "hannover" / "aa11" / "img00002.dcm")
    assert (dx.Modality, dx.ViewPosition, dx.SOPClassUID) == ("DX", "PA", samples.SOP_CLASS["DX"][0])
    assert max(dx.pixel_array.shape) == 512


def test_lossless_option_keeps_pixels(tiny_sources: tuple[Path, Path], tmp_path: Path) -> None:
    from pydicom import dcmread

    syn, han = tiny_sources
    s = samples.build_sample_cohort(syn, han, tmp_path / "o", jpegls_near=0, include_synthea=False,
                                    hannover_patients=["bb22"], progress=False)
    assert s["dicom"]["max_abs_error"] == 0 and "Lossless" in s["dicom"]["transfer_syntax"]
    ds = dcmread(tmp_path / "o" / "dicom" / "hannover" / "bb22" / "img00003.dcm")
    src = np.asarray(Image.open(han / "png" / "img00003.png"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert np.array_equal(ds.pixel_array, src)
    assert not (tmp_path / "o" / "hannover" / "aa11.json").exists()


def test_selection_rule_prefers_broad_then_small_bundles() -> None:
    def cand(pid: str, flags: set[str], size: int) -> samples.SyntheaCandidate:
        return samples.SyntheaCandidate(pid, Path(pid), frozenset(flags), 1, 1, size)

    pool = [cand("big-all", {"lung_cancer", "heart_failure", "chest_xray", "myocardial_infarction"}, 900),
            cand("mi", {"myocardial_infarction"}, 10), cand("mi2", {"myocardial_infarction"}, 20),
            cand("lc", {"lung_cancer"}, 500), cand("hf-cxr", {"heart_failure", "chest_xray"}, 50),
            cand("ctl-b", set(), 7), cand("ctl-a", set(), 7)]
    got = [(c.patient_id, why) for c, why in samples.select_synthea(pool, per_flag=2, n_controls=1)]
    assert [pid for pid, _ in got] == ["big-all", "hf-cxr", "mi", "lc", "ctl-a"]
    assert got[-1][1] == "control (no flag)"
    assert samples.select_synthea(list(reversed(pool))) == samples.select_synthea(pool)
    with pytest.raises(ParameterError, match="per_flag"):
        samples.select_synthea(pool, per_flag=-1)


def test_trimming_refuses_a_reference_to_a_removed_resource() -> None:
    b = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
        {"fullUrl": "urn:uuid:cov", "resource": {"resourceType": "Coverage", "id": "cov"}},
        {"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Observation", "id": "o",
                                               "focus": [{"reference": "urn:uuid:cov"}]}}]}
    with pytest.raises(FhirInputError, match=r"some\.json: Observation/o references 'urn:uuid:cov'"):
        samples.trim_synthea_bundle(b, "some.json")


def test_bad_source_folders_name_the_file_and_column(tiny_sources: tuple[Path, Path], tmp_path: Path) -> None:
    syn, han = tiny_sources
    text = (han / "data.csv").read_text().replace("po2_val", "po2_value")
    (han / "data.csv").write_text(text)
    with pytest.raises(FhirInputError, match=r"data\.csv: missing column\(s\): po2_val/po2_offset"):
        samples.build_sample_cohort(syn, han, tmp_path / "o", progress=False)
    (han / "data.csv").write_text(text.replace("po2_value", "po2_val").replace(",CR,ap,", ",MR,ap,", 1))
    with pytest.raises(FhirInputError, match=r"data\.csv line 2 modality: 'MR' is not CR or DX"):
        samples.hannover_bundles(han)
    (han / "data.csv").write_text(text.replace("po2_value", "po2_val"))
    (han / "png" / "img00003.png").unlink()
    with pytest.raises(ImageReadError, match=r"img00003\.png: missing"):
        samples.build_sample_cohort(syn, han, tmp_path / "o", include_synthea=False, progress=False)
    (syn / "LICENSE").unlink()
    with pytest.raises(FhirInputError, match=r"LICENSE: missing"):
        samples.build_sample_cohort(syn, han, tmp_path / "o", progress=False)
    with pytest.raises(ParameterError, match="hannover_patients"):
        samples.hannover_bundles(han, patients=["nobody"])


def test_rows_that_disagree_on_dates_are_reported(tiny_sources: tuple[Path, Path]) -> None:
    _, han = tiny_sources
    text = (han / "data.csv").read_text().replace("aa11,img00002,f,,,,-2,-2.0,3.0", "aa11,img00002,f,,,,-2,-1.0,3.0")
    (han / "data.csv").write_text(text)
    _, _, report = samples.hannover_bundles(han, anchor=date(2021, 1, 1))
    assert report["problems"] == ["patient aa11: rows disagree on ICU admission (2021-01-01, 2021-01-02)"]
