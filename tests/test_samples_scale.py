"""cds.tooling.scale / `cds samples scale`: the sample cohort replicated N times with new ids and shared images."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cds.cli import main
from cds.errors import ParameterError, RecordMismatchError
from cds.images.read import read_image
from cds.models.vouch import check_record, facts_for, read_id_map
from cds.sources.cohort import load_cohort
from cds.tooling.scale import DICOM_PATIENT_ID_SYSTEM, SCALED_FILE, patient_identifiers, scale_cohort

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "fhir_samples"
FACTOR = 3
REF_DATE = "2026-01-01"

pytestmark = pytest.mark.skipif(not (SAMPLES / "SOURCES.md").is_file(), reason="no fhir_samples in this checkout")


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("scale") / "x3"
    return out, scale_cohort(SAMPLES, out, FACTOR)


@pytest.fixture(scope="module")
def original() -> Any:
    return load_cohort(SAMPLES, validate=True, reference_date=REF_DATE)


@pytest.fixture(scope="module")
def loaded(scaled: tuple[Path, dict[str, Any]]) -> Any:
    return load_cohort(scaled[0], validate=True, reference_date=REF_DATE)


def _bundles(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, json.loads(p.read_bytes())) for p in sorted(folder.rglob("*.json"))]


def _refs(x: Any) -> list[str]:
    if isinstance(x, dict):
        return [v for k, v in x.items() if k == "reference" and isinstance(v, str)] + \
            [r for v in x.values() for r in _refs(v)]
    if isinstance(x, list):
        return [r for v in x for r in _refs(v)]
    return []


def test_counts_are_factor_times_the_original(scaled: tuple[Path, dict[str, Any]], original: Any,
                                              loaded: Any) -> None:
    _, summary = scaled
    assert len(loaded.patients) == FACTOR * len(original.patients) == summary["n_patients"]
    assert len(loaded.imaging) == FACTOR * len(original.imaging)
    assert len(loaded.observations) == FACTOR * len(original.observations)
    assert loaded.imaging["pixel_location"].notna().sum() == FACTOR * original.imaging["pixel_location"].notna().sum()
    assert summary["factor"] == FACTOR and summary["images"] == "link" and summary["image_roots"] == []


def test_no_new_problems(original: Any, loaded: Any) -> None:
    want = Counter({k: FACTOR * n for k, n in Counter(p.kind for p in original.problems).items()})
    assert Counter(p.kind for p in loaded.problems) == want


def test_ids_unique_and_every_reference_resolves(scaled: tuple[Path, dict[str, Any]]) -> None:
    out, summary = scaled
    keys: Counter[tuple[str, str]] = Counter()
    n_refs = 0
    for path, bundle in _bundles(out):
        entries = bundle["entry"]
        full = {e["fullUrl"] for e in entries}
        local = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries}
        keys.update(local)
        assert len(full) == len(entries), path.name
        for e in entries:
            r = e["resource"]
            assert e["request"]["url"] == f"{r['resourceType']}/{r['id']}"
            for ref in _refs(r):
                n_refs += 1
                if ref.startswith("urn:uuid:"):
                    assert ref in full, (path.name, ref)
                else:
                    t, _, i = ref.partition("/")
                    assert (t, i) in local, (path.name, ref)
    assert n_refs > 1000
    assert sum(keys.values()) == summary["n_resources"]
    assert max(keys.values()) == 1  # every (type, id) once in the whole cohort
    all_full = [e["fullUrl"] for _, b in _bundles(out) for e in b["entry"]]
    assert len(set(all_full)) == len(all_full)


def test_replica_zero_is_the_original_and_uids_are_kept(scaled: tuple[Path, dict[str, Any]]) -> None:
    out, _ = scaled
    for p in sorted(SAMPLES.rglob("*.json")):
        assert (out / p.relative_to(SAMPLES)).read_bytes() == p.read_bytes()
    orig = json.loads((SAMPLES / "hannover" / "04a33bab.json").read_bytes())
    rep = json.loads((out / "hannover" / "04a33bab.r002.json").read_bytes())
    studies = [e["resource"] for e in orig["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    rstudies = [e["resource"] for e in rep["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert [s["identifier"] for s in studies] == [s["identifier"] for s in rstudies]
    assert [s["series"] for s in studies] == [s["series"] for s in rstudies]  # UIDs and locations unchanged
    assert {s["id"] for s in studies}.isdisjoint(s["id"] for s in rstudies)


def test_images_shared_not_copied(scaled: tuple[Path, dict[str, Any]]) -> None:
    out, _ = scaled
    dcm = sorted((SAMPLES / "dicom").rglob("*.dcm"))
    assert dcm
    for p in dcm[:20]:
        q = out / p.relative_to(SAMPLES)
        assert not q.is_symlink() and os.path.samefile(p, q)  # a hard link: the same file
    assert (out / SCALED_FILE).is_file()
    text = (out / SCALED_FILE).read_text()
    assert "Benchmark data" in text and "share the images" in text and f"**{FACTOR}**" in text


def test_identity_check_passes_for_a_replica_and_refuses_another_patient(scaled: tuple[Path, dict[str, Any]],
                                                                         loaded: Any) -> None:
    out, _ = scaled
    idents = patient_identifiers(out)
    id_map = read_id_map(out)
    img_rows = loaded.imaging[loaded.imaging["pixel_location"].notna()]
    replica = img_rows[img_rows["source"].str.contains(r"\.r001\.json$")]
    row = next(replica.itertuples())
    assert row.patient_id not in {str(x) for x in img_rows[~img_rows["source"].str.contains(r"\.r\d+\.json$")]
                                  ["patient_id"]}
    image = read_image(row.pixel_location)
    facts = dataclasses.replace(facts_for(row, id_map), patient_identifiers=idents.get(row.patient_id, ()))
    assert check_record(image, facts) == []
    # the same image, claimed by a replica patient of another source patient: refused
    dicom_pid = image.meta["patient_id"]
    other = next(r for r in replica.itertuples() if dicom_pid not in idents.get(r.patient_id, ()))
    other_facts = dataclasses.replace(facts_for(other, id_map), patient_identifiers=idents.get(other.patient_id, ()),
                                      study_uid=row.study_uid, series_uid=row.series_uid,
                                      instance_uids=row.instance_uids)
    with pytest.raises(RecordMismatchError, match="PatientID"):
        check_record(image, other_facts)
    # another replica's ImagingStudy row pointing at a different file: the file is not this row's
    with pytest.raises(RecordMismatchError):
        check_record(read_image(other.pixel_location), facts)


def test_replica_patients_get_new_identifiers(scaled: tuple[Path, dict[str, Any]]) -> None:
    out, _ = scaled
    name = next(p.name for p in sorted((SAMPLES / "synthea").glob("*.json")))
    orig = json.loads((SAMPLES / "synthea" / name).read_bytes())
    rep = json.loads((out / "synthea" / name.replace(".json", ".r001.json")).read_bytes())
    pat = next(e["resource"] for e in orig["entry"] if e["resource"]["resourceType"] == "Patient")
    rpat = next(e["resource"] for e in rep["entry"] if e["resource"]["resourceType"] == "Patient")
    assert rpat["id"] != pat["id"]
    assert {i["value"] for i in pat["identifier"]}.isdisjoint(i["value"] for i in rpat["identifier"])
    han = json.loads((out / "hannover" / "04a33bab.r001.json").read_bytes())
    hpat = next(e["resource"] for e in han["entry"] if e["resource"]["resourceType"] == "Patient")
    assert hpat["identifier"] == [{"use": "secondary", "system": DICOM_PATIENT_ID_SYSTEM, "value": "04a33bab"}]


def test_deterministic_and_cli(scaled: tuple[Path, dict[str, Any]], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out, summary = scaled
    again = tmp_path / "again"
    assert main(["samples", "scale", "--factor", str(FACTOR), "--out", str(again), "--source", str(SAMPLES)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_resources"] == summary["n_resources"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other_seed = scale_cohort(SAMPLES, tmp_path / "seed1", 2, seed=1)
    assert other_seed["n_resources"] == 2 * summary["n_resources"] // FACTOR
    assert (tmp_path / "seed1" / "hannover" / "04a33bab.r001.json").read_bytes() != \
        (out / "hannover" / "04a33bab.r001.json").read_bytes()


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "many"])
def test_bad_factor(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samples", "scale", "--factor", bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--factor" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_arguments_of_the_function(tmp_path: Path) -> None:
    for bad in (0, 2.5, True, "x"):
        with pytest.raises(ParameterError, match="^factor"):
            scale_cohort(SAMPLES, tmp_path / "o", bad)  # type: ignore[arg-type]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ParameterError, match="^out_dir.*not empty"):
        scale_cohort(SAMPLES, tmp_path / "full", 2)
    with pytest.raises(ParameterError, match="^out_dir.*outside"):
        scale_cohort(SAMPLES, SAMPLES / "scaled", 2)
    with pytest.raises(ParameterError, match="^source"):
        scale_cohort(tmp_path / "missing", tmp_path / "o2", 2)


def test_reference_mode_points_at_the_source(tmp_path: Path) -> None:
    out = tmp_path / "ref"
    s = scale_cohort(SAMPLES, out, 2, images="reference")
    assert s["images"] == "reference" and s["image_roots"] == [str(SAMPLES.resolve())]
    assert not list(out.rglob("*.dcm"))
    rep = json.loads((out / "hannover" / "04a33bab.r001.json").read_bytes())
    loc = next(x["valueUrl"] for e in rep["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
               for x in e["resource"]["series"][0]["instance"][0]["extension"])
    assert re.match(r"^(\.\./)+", loc)
    assert os.path.samefile(out / "hannover" / loc, SAMPLES / "dicom" / "hannover" / "04a33bab" / Path(loc).name)
    c = load_cohort(out, validate=False, reference_date=REF_DATE, image_roots=s["image_roots"])
    assert not [p for p in c.problems if p.kind == "location-refused"]
    assert c.imaging["pixel_location"].notna().sum() == 2 * 188
