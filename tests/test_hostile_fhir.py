"""Hostile and impossible FHIR input: each case gives one exact outcome, and valid data beside it still loads.

A case writes something hostile next to ``good.json`` (Patient p1, Encounter e1, Observation o1)
into a cohort folder, loads the folder, and asserts the exact :class:`~cds.sources.records.Problem`
kind (with the file or resource it names) or the exact error class, then that p1, e1 and o1 loaded
unharmed. Cases that depend on R4 validation give the outcome with ``validate=True`` and with
``validate=False`` (the plausibility checks run on the raw JSON either way).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import cds
from cds.errors import FhirInputError, ParameterError
from cds.sources.records import PROBLEM_KINDS
from cds.sources.tables import INSTANCE_LOCATION_URL, age_years

pytestmark = pytest.mark.timeout(60)  # a FIFO that were opened would hang the loader: fail instead

REF = "2020-03-01"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-03-01"}
P2 = {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1960-05-05"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "subject": {"reference": "Patient/p1"},
             "period": {"start": "2020-01-01T08:00:00+00:00", "end": "2020-01-09T08:00:00+00:00"}}
E2 = dict(ENCOUNTER, id="e2", subject={"reference": "Patient/p2"})
OBS = {"resourceType": "Observation", "id": "o1", "status": "final",
       "code": {"coding": [{"system": "http://loinc.org", "code": "1988-5", "display": "CRP"}]},
       "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
       "effectiveDateTime": "2020-01-02T09:00:00+00:00",
       "valueQuantity": {"value": 42.5, "unit": "mg/L", "system": "http://unitsofmeasure.org", "code": "mg/L"}}
O2 = {k: v for k, v in OBS.items() if k != "encounter"} | {"id": "o2", "subject": {"reference": "Patient/p2"}}
COND = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "233604007"}]},
        "onsetDateTime": "2020-01-02"}
MED = {"resourceType": "MedicationRequest", "id": "m2", "status": "active", "intent": "order",
       "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                 "code": "1191"}]},
       "subject": {"reference": "Patient/p2"}, "authoredOn": "2020-01-02"}
DICOMWEB = "http://127.0.0.1:8042/dicom-web"
STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def study(location: str | None = None, endpoint: str | None = None, series_uid: str = SERIES_UID,
          **extra: Any) -> dict[str, Any]:
    """An ImagingStudy of p2 with one CR series: pixels at ``location`` (instance-location) or via ``endpoint``."""
    inst: dict[str, Any] = {"uid": "1.2.826.0.1.3680043.8.498.3",
                            "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.1"}}
    if location is not None:
        inst["extension"] = [{"url": INSTANCE_LOCATION_URL, "valueUrl": location}]
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": "s2", "status": "available", "subject": {"reference": "Patient/p2"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
        "series": [{"uid": series_uid, "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                    "code": "CR"}, "instance": [inst]}], **extra}
    if endpoint is not None:
        res["endpoint"] = [{"reference": "Endpoint/ep"}]
    return res


def endpoint(address: str) -> dict[str, Any]:
    return {"resourceType": "Endpoint", "id": "ep", "status": "active", "address": address,
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                               "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM"}]}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r.get('id')}", "resource": r} for r in resources]}


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


@dataclass(frozen=True)
class Expect:
    """The outcome of one case: the problem kind (per validate mode) and what it must name."""

    kind: str | None  # None: no problem at all
    names: str = ""  # file names (end of Problem.source, "|"-separated) or a resource id the problem must carry
    kind_unvalidated: str | None = "same"  # the kind with validate=False, when it differs

    def for_mode(self, validate: bool) -> str | None:
        return self.kind if validate or self.kind_unvalidated == "same" else self.kind_unvalidated


Case = Callable[[Path], dict[str, Any] | None]
"""Writes the hostile input into the cohort folder; returns extra ``load_cohort`` keyword arguments."""


def _fifo(name: str) -> Case:
    def make(d: Path) -> None:
        os.mkfifo(d / name)
    return make


def _socket(name: str) -> Case:
    def make(d: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / name))
        _OPEN_SOCKETS.append(s)
    return make


_OPEN_SOCKETS: list[socket.socket] = []


def _link(name: str, target: Callable[[Path], Path | str]) -> Case:
    def make(d: Path) -> None:
        (d / name).symlink_to(target(d))
    return make


def _outside_bundle(d: Path) -> Path:
    out = d.parent / "outside"
    out.mkdir(exist_ok=True)
    return write(out / "p2.json", bundle(P2))


def _outside_folder(d: Path) -> Path:
    _outside_bundle(d)
    return d.parent / "outside"


def _bytes(name: str, data: bytes, **load: Any) -> Case:
    def make(d: Path) -> dict[str, Any]:
        (d / name).write_bytes(data)
        return load
    return make


def _sparse(name: str, size: int) -> Case:
    """A file that claims ``size`` bytes without using the disk (a sparse file)."""
    def make(d: Path) -> None:
        with open(d / name, "wb") as fh:
            fh.truncate(size)
    return make


def _json(name: str, obj: object, **load: Any) -> Case:
    return _bytes(name, json.dumps(obj).encode(), **load)


def _resources(*res: dict[str, Any], **load: Any) -> Case:
    """Hostile resources in their own Bundle file ``bad.json`` (beside ``good.json``)."""
    return _json("bad.json", bundle(*res), **load)


def _nested_bundles(depth: int) -> dict[str, Any]:
    b: dict[str, Any] = bundle(P2)
    for _ in range(depth):
        b = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": b}]}
    return b


def _deep_extension(depth: int) -> dict[str, Any]:
    """Extensions inside extensions: within the JSON parser's limit, past Python's recursion limit in validation."""
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(depth):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    return ext


def _deep_contained(depth: int) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": "c"}
    for i in range(depth):
        res = {"resourceType": "Patient", "id": "p2" if i == depth - 1 else f"c{i}", "contained": [res]}
    return res


def _link_to_fifo(d: Path) -> None:
    os.mkfifo(d / "p")
    (d / "p.json").symlink_to(d / "p")


def _two_files(a: dict[str, Any], b: dict[str, Any]) -> Case:
    def make(d: Path) -> None:
        write(d / "a.json", a)
        write(d / "b.json", b)
    return make


def _loop(d: Path) -> None:
    (d / "a.json").symlink_to(d / "b.json")
    (d / "b.json").symlink_to(d / "a.json")


def _image_link(target: str) -> Case:
    def make(d: Path) -> None:
        (d / "img.dcm").symlink_to(target)
        write(d / "bad.json", bundle(P2, study("img.dcm")))
    return make


def _image_fifo(d: Path) -> None:
    os.mkfifo(d / "img.dcm")
    write(d / "bad.json", bundle(P2, study("img.dcm")))


def _env(var: str, value: str, case: Case) -> Case:
    def make(d: Path) -> dict[str, Any] | None:
        _ENV[var] = value
        return case(d)
    return make


_ENV: dict[str, str] = {}

TODAY_PLUS = str(pd.Timestamp.today().year + 5) + "-01-01"

CASES: list[Any] = [
    # --- files the loader must not open, or must not follow -------------------------------------
    pytest.param(_fifo("pipe.json"), Expect("not-regular-file", "pipe.json"), id="fifo-json"),
    pytest.param(_fifo("Patient.ndjson"), Expect("not-regular-file", "Patient.ndjson"), id="fifo-ndjson"),
    pytest.param(_socket("s.json"), Expect("not-regular-file", "s.json"), id="unix-socket"),
    pytest.param(_link("zero.json", lambda d: "/dev/zero"), Expect("outside-root", "zero.json"), id="link-dev-zero"),
    pytest.param(_link("null.ndjson", lambda d: "/dev/null"), Expect("outside-root", "null.ndjson"),
                 id="link-dev-null"),
    pytest.param(_link("tty.json", lambda d: "/dev/tty"), Expect("outside-root", "tty.json"), id="link-dev-tty"),
    pytest.param(_link("other.json", _outside_bundle), Expect("outside-root", "other.json"), id="link-file-outside"),
    pytest.param(_link("more", _outside_folder), Expect("outside-root", "more"), id="link-folder-outside"),
    pytest.param(_link_to_fifo, Expect("not-regular-file", "p.json"), id="link-to-fifo-inside"),
    pytest.param(_link("again", lambda d: d), Expect(None), id="link-folder-loop-inside-is-not-walked"),
    pytest.param(_link("gone.json", lambda d: d / "nowhere.json"), Expect("unreadable", "gone.json"),
                 id="broken-link"),
    pytest.param(_loop, Expect("unreadable", "a.json|b.json"), id="link-loop"),
    pytest.param(_bytes("big.json", json.dumps(bundle(P2)).encode() + b" " * 3000, max_file_mb=0.002),
                 Expect("too-large", "big.json"), id="too-large-json"),
    pytest.param(_bytes("big.ndjson", (json.dumps(P2) + "\n").encode() * 40, max_file_mb=0.002),
                 Expect("too-large", "big.ndjson"), id="too-large-ndjson"),
    pytest.param(_sparse("huge.json", 600_000_000), Expect("too-large", "huge.json"), id="sparse-600mb-default-limit"),
    pytest.param(_env("CDS_MAX_FHIR_FILE_MB", "0.002", _bytes("big.json", b" " * 3000 + b"{}")),
                 Expect("too-large", "big.json"), id="too-large-env-limit"),
    # --- bytes that are no FHIR JSON --------------------------------------------------------------
    pytest.param(_bytes("deep.json", b"[" * 5000 + b"]" * 5000), Expect("too-deep", "deep.json"), id="deep-arrays"),
    pytest.param(_bytes("deep.json", b'{"a":' * 3000 + b"1" + b"}" * 3000), Expect("too-deep", "deep.json"),
                 id="deep-objects"),
    pytest.param(_bytes("x.ndjson", json.dumps(P2).encode() + b"\n" + b"[" * 2000 + b"]" * 2000 + b"\n"),
                 Expect("too-deep", "x.ndjson"), id="deep-ndjson-line"),
    pytest.param(_json("nest.json", _nested_bundles(20)), Expect("too-deep", "nest.json"), id="nested-bundles"),
    pytest.param(_resources(dict(P2, extension=[_deep_extension(300)])), Expect("too-deep", "p2"),
                 id="deep-extension-recursion"),
    pytest.param(_resources(_deep_contained(200)), Expect("too-deep", "p2"), id="deep-contained-recursion"),
    pytest.param(_bytes("latin1.json", json.dumps(dict(P2, name=[{"family": "Müller"}]),
                                                  ensure_ascii=False).encode("latin-1")),
                 Expect("encoding", "latin1.json"), id="latin1-bytes"),
    pytest.param(_bytes("u16.json", json.dumps(bundle(P2)).encode("utf-16")), Expect("encoding", "u16.json"),
                 id="utf16-with-bom"),
    pytest.param(_bytes("x.ndjson", json.dumps(P2).encode() + b"\n" + b'{"resourceType": "Patient", "id": "\xff"}\n'),
                 Expect("encoding", "x.ndjson"), id="ndjson-line-not-utf8"),
    pytest.param(_bytes("t.json", json.dumps(bundle(P2)).encode()[:-7]), Expect("json", "t.json"), id="truncated"),
    pytest.param(_bytes("empty.json", b""), Expect("json", "empty.json"), id="empty-file"),
    pytest.param(_bytes("n.json", b'{"resourceType": "Observation", "valueQuantity": {"value": NaN}}'),
                 Expect("json", "n.json"), id="nan-literal"),
    pytest.param(_bytes("n.json", b'{"resourceType": "Observation", "valueQuantity": {"value": 1e400}}'),
                 Expect("json", "n.json"), id="infinite-number"),
    pytest.param(_bytes("s.json", b'{"resourceType": "Patient", "id": "\\ud800"}'), Expect("json", "s.json"),
                 id="lone-surrogate"),
    pytest.param(_json("null.json", None), Expect("not-fhir", "null.json"), id="json-null"),
    pytest.param(_json("rt.json", {"resourceType": 7, "id": "x"}), Expect("not-fhir", "rt.json"),
                 id="resource-type-number"),
    pytest.param(_json("e.json", {"resourceType": "Bundle", "type": "collection", "entry": {"resource": P2}}),
                 Expect("validation", "e.json"), id="bundle-entry-object"),
    pytest.param(_json("e.json", {"resourceType": "Bundle", "type": "collection", "entry": ["Patient/p2"]}),
                 Expect("not-fhir", "e.json"), id="bundle-entry-string"),
    # --- impossible records: kept, the impossible value left out ----------------------------------
    pytest.param(_resources(dict(P2, birthDate=TODAY_PLUS)), Expect("future-birth-date", "p2"),
                 id="birth-after-today"),
    pytest.param(_resources(dict(P2, birthDate="2020-12-24")), Expect("future-birth-date", "p2"),
                 id="birth-after-reference-date"),
    pytest.param(_resources(dict(P2, deceasedDateTime="1950-01-01")), Expect("death-before-birth", "p2"),
                 id="death-before-birth"),
    pytest.param(_resources(dict(P2, deceasedDateTime=TODAY_PLUS)), Expect("future-death-date", "p2"),
                 id="death-after-today"),
    pytest.param(_resources(dict(P2, gender="femal")), Expect("wrong-code", "p2"), id="gender-misspelt"),
    pytest.param(_resources(dict(P2, gender=1)), Expect("validation", "p2", "wrong-code"), id="gender-number"),
    pytest.param(_resources(dict(P2, birthDate="not-a-date")), Expect("validation", "p2", "unparseable-date"),
                 id="birth-not-a-date"),
    pytest.param(_resources(dict(P2, birthDate="1960-02-30")), Expect("validation", "p2", "unparseable-date"),
                 id="birth-february-30"),
    pytest.param(_resources(P2, dict(O2, effectiveDateTime="yesterday")),
                 Expect("validation", "o2", "unparseable-date"), id="effective-not-a-date"),
    pytest.param(_resources(P2, dict(E2, period={"start": "2020-02-01", "end": "2020-01-01"})),
                 Expect("end-before-start", "e2"), id="encounter-ends-before-start"),
    pytest.param(_resources(P2, dict(MED, authoredOn="01/02/2020")),
                 Expect("validation", "m2", "unparseable-date"), id="us-style-date"),
    # --- duplicate ids ----------------------------------------------------------------------------
    pytest.param(_resources(dict(PATIENT, id="p2", gender="male"), dict(P2, gender="female")),
                 Expect("conflicting-duplicate", "p2"), id="duplicate-patient-sex"),
    pytest.param(_two_files(bundle(P2), bundle(dict(P2, birthDate="1961-05-05"))),
                 Expect("conflicting-duplicate", "b.json"), id="duplicate-patient-birth-two-files"),
    pytest.param(_resources(P2, O2, dict(O2, valueQuantity={"value": 1.0})),
                 Expect("conflicting-duplicate", "o2"), id="duplicate-observation-value"),
    pytest.param(_two_files(bundle(P2), bundle(P2)),
                 Expect(None), id="identical-duplicate-is-no-problem"),
    # --- references across patients ---------------------------------------------------------------
    pytest.param(_resources(P2, dict(O2, encounter={"reference": "Encounter/e1"})),
                 Expect("cross-patient-reference", "o2"), id="observation-encounter-of-other-patient"),
    pytest.param(_resources(P2, study(encounter={"reference": "Encounter/e1"})),
                 Expect("cross-patient-reference", "s2"), id="imaging-encounter-of-other-patient"),
    pytest.param(_resources(P2, dict(COND, encounter={"reference": "Encounter/e1"})),
                 Expect("cross-patient-reference", "c2"), id="condition-encounter-of-other-patient"),
    pytest.param(_resources(P2, dict(MED, encounter={"reference": "Encounter/e1"})),
                 Expect("cross-patient-reference", "m2"), id="medication-encounter-of-other-patient"),
    pytest.param(_resources(dict(O2, subject={"reference": "Patient/ghost"})),
                 Expect("dangling-reference", "o2"), id="subject-missing"),
    pytest.param(_resources(dict(O2, subject={"reference": "Device/p1"})),
                 Expect("dangling-reference", "o2"), id="subject-device-with-a-patient-id"),
    pytest.param(_resources(P2, dict(O2, encounter={"reference": "Condition/e2"}), dict(E2)),
                 Expect("dangling-reference", "o2"), id="encounter-reference-of-another-type"),
    # --- values of the wrong JSON type ------------------------------------------------------------
    pytest.param(_resources(P2, dict(O2, valueQuantity={"value": "42.5", "unit": "mg/L"})),
                 Expect("wrong-type", "o2"), id="quantity-value-string"),
    pytest.param(_resources(P2, dict(O2, valueQuantity={"value": True})),
                 Expect("validation", "o2", "wrong-type"), id="quantity-value-boolean"),
    pytest.param(_resources(P2, dict(O2, valueQuantity=[{"value": 1}])),
                 Expect("validation", "o2", "wrong-type"), id="quantity-is-a-list"),
    pytest.param(_resources(P2, {k: v for k, v in O2.items() if k != "valueQuantity"}
                            | {"valueInteger": "5"}), Expect("wrong-type", "o2"), id="integer-as-string"),
    pytest.param(_resources(P2, {k: v for k, v in O2.items() if k != "valueQuantity"}
                            | {"valueString": 5}), Expect("validation", "o2", "wrong-type"), id="string-as-number"),
    pytest.param(_resources(P2, {k: v for k, v in O2.items() if k != "valueQuantity"}
                            | {"component": [{"code": {"text": "systolic"}, "valueQuantity": {"value": "120"}}]}),
                 Expect("wrong-type", "o2"), id="component-value-string"),
    pytest.param(_resources(dict(P2, id=17)), Expect("validation", "bad.json", "malformed"), id="id-is-a-number"),
    pytest.param(_resources(P2, study(series="CR")), Expect("validation", "s2", "malformed"), id="series-is-a-string"),
    # --- pixel locations: only under the cohort root or an allowed DICOMweb server ----------------
    pytest.param(_resources(P2, study("/etc/passwd")), Expect("location-refused", "s2"), id="location-etc-passwd"),
    pytest.param(_resources(P2, study("../../../../../../etc/passwd")), Expect("location-refused", "s2"),
                 id="location-dotdot-escape"),
    pytest.param(_resources(P2, study("file:///etc/passwd")), Expect("location-refused", "s2"),
                 id="location-file-url"),
    pytest.param(_resources(P2, study("file://evil.example/share/x.dcm")), Expect("location-refused", "s2"),
                 id="location-file-url-other-host"),
    pytest.param(_resources(P2, study("http://evil.example/dicom-web/studies/1/series/2")),
                 Expect("location-refused", "s2"), id="location-http-evil"),
    pytest.param(_resources(P2, study("ftp://evil.example/x.dcm")), Expect("location-refused", "s2"),
                 id="location-ftp"),
    pytest.param(_resources(P2, study("data:application/dicom;base64,AAAA")), Expect("location-refused", "s2"),
                 id="location-data-url"),
    pytest.param(_resources(P2, study("img\x00.dcm")), Expect("location-refused", "s2"),
                 id="location-nul-byte"),
    pytest.param(_image_link("/etc/passwd"), Expect("location-refused", "s2"), id="location-link-out-of-root"),
    pytest.param(_image_fifo, Expect("location-refused", "s2"), id="location-fifo"),
    pytest.param(_resources(P2, endpoint("http://evil.example/dicom-web"), study(endpoint="ep")),
                 Expect("location-refused", "ep"), id="endpoint-not-allowed"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1:8042/dicom-web"), study(endpoint="ep")),
                 Expect("location-refused", "ep"), id="endpoint-loopback-not-configured"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1.evil.example:8042/dicom-web"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-host-suffix"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1:8042.evil.example/dicom-web"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-port-not-a-number"),
    pytest.param(_resources(P2, endpoint("https://127.0.0.1:8042/dicom-web"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-other-scheme"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1:8042/dicom-webx"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-path-prefix-only"),
    pytest.param(_resources(P2, endpoint("http://admin:pw@127.0.0.1:8042/dicom-web"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"),
                 id="endpoint-with-credentials"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1:8042/dicom-web/../tools"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-dotdot"),
    pytest.param(_resources(P2, endpoint("http://127.0.0.1:9999/dicom-web"), study(endpoint="ep"),
                            dicomweb_hosts=[DICOMWEB]), Expect("location-refused", "ep"), id="endpoint-other-port"),
    pytest.param(_resources(P2, endpoint(DICOMWEB), study(endpoint="ep", series_uid="1.2/../../../tools"),
                            dicomweb_hosts=[DICOMWEB]), Expect("validation", "s2", "location-refused"),
                 id="series-uid-path"),
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("CDS_MAX_FHIR_FILE_MB", "CDS_DICOMWEB_HOSTS", "CDS_IMAGE_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    _ENV.clear()
    yield
    while _OPEN_SOCKETS:
        _OPEN_SOCKETS.pop().close()


def _load(tmp_path: Path, case: Case, validate: bool, monkeypatch: pytest.MonkeyPatch) -> cds.Cohort:
    d = tmp_path / "cohort"
    d.mkdir()
    write(d / "good.json", bundle(PATIENT, ENCOUNTER, OBS))
    load = case(d) or {}
    for var, value in _ENV.items():
        monkeypatch.setenv(var, value)
    return cds.load_cohort(d, validate=validate, reference_date=REF, **load)


def assert_good_data_loaded(c: cds.Cohort) -> None:
    """p1 with her encounter and CRP, exactly as in good.json."""
    p = c.patients.set_index("patient_id").loc["p1"]
    assert (p["sex"], p["age_years"], p["birth_date"]) == ("female", 70.0, pd.Timestamp("1950-03-01", tz="UTC"))
    o = c.observations.set_index("observation_id").loc["o1"]
    assert (o["patient_id"], o["value"], o["unit"], o["encounter_id"]) == ("p1", 42.5, "mg/L", "e1")
    e = c.encounters.set_index("encounter_id").loc["e1"]
    assert e["patient_id"] == "p1" and e["end"] == pd.Timestamp("2020-01-09T08:00:00Z")
    assert not any(p.source.endswith("good.json") for p in c.problems)


def test_every_case_is_distinct() -> None:
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)) >= 50


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "raw"])
@pytest.mark.parametrize(("case", "expect"), CASES)
def test_hostile_input_is_one_named_problem(case: Case, expect: Expect, validate: bool, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    c = _load(tmp_path, case, validate, monkeypatch)
    kind = expect.for_mode(validate)
    if kind is None:
        assert c.problems == []
    else:
        assert kind in {k for ks in PROBLEM_KINDS.values() for k in ks}
        assert {p.kind for p in c.problems} == {kind}, [str(p) for p in c.problems]
        for p in c.problems:
            file_name = Path(p.source).name.split("#")[0]  # a nested Bundle's source is file.json#entry0...
            assert file_name in expect.names.split("|") or p.resource_id == expect.names, str(p)
            assert "Traceback" not in p.message and p.message
    assert_good_data_loaded(c)


# --- what is kept of an impossible record ----------------------------------------------------------

def _cohort(tmp_path: Path, *res: dict[str, Any], **load: Any) -> cds.Cohort:
    d = tmp_path / "c"
    d.mkdir(parents=True)
    write(d / "good.json", bundle(PATIENT, ENCOUNTER, OBS))
    write(d / "bad.json", bundle(*res))
    c = cds.load_cohort(d, reference_date=REF, **load)
    assert_good_data_loaded(c)
    return c


def _p2(c: cds.Cohort) -> pd.Series:
    return c.patients.set_index("patient_id").loc["p2"]


def test_future_birth_keeps_the_patient_without_an_age(tmp_path: Path) -> None:
    p = _p2(_cohort(tmp_path, dict(P2, birthDate=TODAY_PLUS)))
    assert p["sex"] == "male" and pd.isna(p["birth_date"]) and pd.isna(p["age_years"])
    # born after the reference date (but before today): the birth date is kept, the age is not negative
    p = _p2(_cohort(tmp_path / "b", dict(P2, birthDate="2020-12-24")))
    assert p["birth_date"] == pd.Timestamp("2020-12-24", tz="UTC") and pd.isna(p["age_years"])
    assert age_years(p["birth_date"], pd.Timestamp("2020-06-01", tz="UTC")) is None


def test_death_before_birth_keeps_neither_date(tmp_path: Path) -> None:
    p = _p2(_cohort(tmp_path, dict(P2, deceasedDateTime="1950-01-01")))
    assert bool(p["deceased"]) and pd.isna(p["birth_date"]) and pd.isna(p["deceased_date"]) and pd.isna(p["age_years"])


def test_conflicting_patient_copies_keep_no_contested_value(tmp_path: Path) -> None:
    c = _cohort(tmp_path, P2, dict(P2, gender="female", birthDate="1961-01-01"))
    assert (c.patients["patient_id"] == "p2").sum() == 1
    p = _p2(c)
    assert pd.isna(p["sex"]) and pd.isna(p["birth_date"])
    [prob] = c.problems
    assert "birthDate" in prob.message and "gender" in prob.message and "1961" not in prob.message


def test_cross_patient_link_is_dropped_from_the_row(tmp_path: Path) -> None:
    c = _cohort(tmp_path, P2, study(encounter={"reference": "Encounter/e1"}),
                dict(O2, encounter={"reference": "Encounter/e1"}))
    img = c.imaging.set_index("imaging_study_id").loc["s2"]
    assert img["patient_id"] == "p2" and pd.isna(img["encounter_id"])
    assert pd.isna(c.observations.set_index("observation_id").loc["o2", "encounter_id"])
    assert c.summary()["implausible_values"] == 2 and c.summary()["invalid_resources"] == 0


def test_string_value_is_not_coerced(tmp_path: Path) -> None:
    c = _cohort(tmp_path, P2, dict(O2, valueQuantity={"value": "42.5", "unit": "mg/L"}))
    assert pd.isna(c.observations.set_index("observation_id").loc["o2", "value"])


def test_refused_location_leaves_the_row_without_pixels(tmp_path: Path) -> None:
    c = _cohort(tmp_path, P2, study("/etc/passwd"))
    row = c.imaging.set_index("imaging_study_id").loc["s2"]
    assert row["pixel_location"] is None and row["instance_locations"] == ()
    assert c.summary()["images_with_pixels"] == 0
    [p] = c.problems
    assert "outside the cohort root" in p.message


# --- allowed pixel locations still work --------------------------------------------------------------

def test_paths_inside_the_root_and_configured_servers_are_allowed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "c"
    (d / "dicom").mkdir(parents=True)
    (d / "dicom" / "x.dcm").write_bytes(b"DICM")
    (d / "bundles").mkdir()
    write(d / "bundles" / "b.json", bundle(P2, study("../dicom/x.dcm")))
    c = cds.load_cohort(d, reference_date=REF)
    assert c.problems == [] and c.imaging.loc[0, "pixel_location"] == str((d / "dicom" / "x.dcm").resolve())
    # the bundle alone: ../dicom is outside its folder, unless that folder is given as an image root
    single = cds.load_cohort(d / "bundles" / "b.json", reference_date=REF)
    assert [p.kind for p in single.problems] == ["location-refused"] and single.imaging.loc[0, "pixel_location"] is None
    ok = cds.load_cohort(d / "bundles" / "b.json", reference_date=REF, image_roots=[d / "dicom"])
    assert ok.problems == [] and ok.imaging.loc[0, "pixel_location"].endswith("x.dcm")
    # a DICOMweb server given by the caller (argument or environment): loopback works only when named
    e = tmp_path / "e"
    e.mkdir()
    write(e / "b.json", bundle(P2, endpoint(DICOMWEB + "/"), study(endpoint="ep")))
    url = f"{DICOMWEB}/studies/{STUDY_UID}/series/{SERIES_UID}"
    assert cds.load_cohort(e, reference_date=REF, dicomweb_hosts=[DICOMWEB]).imaging.loc[0, "pixel_location"] == url
    assert cds.load_cohort(e, reference_date=REF, dicomweb_hosts=["127.0.0.1:8042"]).problems == []
    monkeypatch.setenv("CDS_DICOMWEB_HOSTS", "https://pacs.example.org/wado, 127.0.0.1:8042")
    assert cds.load_cohort(e, reference_date=REF).imaging.loc[0, "pixel_location"] == url
    monkeypatch.setenv("CDS_DICOMWEB_HOSTS", "https://pacs.example.org/wado")
    refused = cds.load_cohort(e, reference_date=REF)
    assert [p.kind for p in refused.problems] == ["location-refused"] and refused.imaging.loc[0, "pixel_location"] is None


def test_sample_cohort_parts_keep_their_pixels(samples_dir: Path) -> None:
    """A part of the shipped sample cohort (its bundles point at ../dicom/) loads with every radiograph."""
    whole = cds.load_cohort(samples_dir, reference_date="2026-01-01")
    part = cds.load_cohort(samples_dir / "hannover", reference_date="2026-01-01")
    assert whole.problems == [] and part.problems == []
    assert part.summary()["images_with_pixels"] == whole.summary()["images_with_pixels"] == 188
    # the cohort keeps its policy, for a check right before a file is opened
    loc = whole.imaging["pixel_location"].dropna().iloc[0]
    assert whole.pixel_access.resolve(loc, "") == (loc, None)
    assert whole.pixel_access.resolve("/etc/passwd", "")[0] is None


# --- a source that cannot be read at all: FhirInputError naming it, never a hang --------------------

def _named_fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.json")
    return d / "pipe.json"


def _named_socket(d: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "s.json"))
    _OPEN_SOCKETS.append(s)
    return d / "s.json"


def _named_link_to_zero(d: Path) -> Path:
    (d / "zero.json").symlink_to("/dev/zero")
    return d / "zero.json"


@pytest.mark.parametrize(("make", "load", "error", "match"), [
    pytest.param(_named_fifo, {}, FhirInputError, "FIFO", id="source-fifo"),
    pytest.param(_named_socket, {}, FhirInputError, "socket", id="source-socket"),
    pytest.param(lambda d: Path("/dev/zero"), {}, FhirInputError, "character device", id="source-dev-zero"),
    pytest.param(_named_link_to_zero, {}, FhirInputError, "character device", id="source-link-to-dev-zero"),
    pytest.param(lambda d: write(d / "big.json", bundle(P2, *[dict(O2, id=f"o{i}") for i in range(50)])),
                 {"max_file_mb": 0.001}, FhirInputError, "over the 0.001 MB limit", id="source-too-large"),
    pytest.param(lambda d: d / "absent.json", {}, FhirInputError, "no such file", id="source-missing"),
    pytest.param(lambda d: d / "good.json", {"reference_date": "01/03/2020"}, ParameterError, "reference_date",
                 id="reference-date-us-style"),
    pytest.param(lambda d: d / "good.json", {"max_file_mb": -1}, ParameterError, "max_file_mb", id="limit-negative"),
    pytest.param(lambda d: d / "good.json", {"dicomweb_hosts": ["ftp://pacs/dicom-web"]}, ParameterError,
                 "dicomweb_hosts", id="allow-list-ftp"),
    pytest.param(lambda d: d / "good.json", {"dicomweb_hosts": DICOMWEB}, ParameterError, "dicomweb_hosts",
                 id="allow-list-a-string"),
])
def test_unreadable_source_is_a_named_error(make: Callable[[Path], Path], load: dict[str, Any],
                                            error: type[Exception], match: str, tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", bundle(PATIENT, ENCOUNTER, OBS))
    source = make(tmp_path)
    with pytest.raises(error, match=match) as exc:
        cds.load_cohort(source, **{"reference_date": REF, **load})
    assert type(exc.value) is error
    if error is FhirInputError:
        assert exc.value.where == str(source)
    assert_good_data_loaded(cds.load_cohort(good, reference_date=REF))  # the valid file beside it loads


def test_env_limit_that_is_no_number_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_MAX_FHIR_FILE_MB", "lots")
    good = write(tmp_path / "good.json", bundle(PATIENT, ENCOUNTER, OBS))
    with pytest.raises(ParameterError, match="CDS_MAX_FHIR_FILE_MB"):
        cds.load_cohort(good)


# --- a hostile FHIR server ----------------------------------------------------------------------------

@contextmanager
def _server(pages: dict[str, bytes]) -> Iterator[str]:
    """Serve fixed bodies by path on 127.0.0.1 (``{port}`` in a body becomes the server's port)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            body = pages.get(self.path.split("?")[0])
            if body is None:
                body = json.dumps(bundle()).encode()
            body = body.replace(b"{port}", str(self.server.server_address[1]).encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def _searchset(*res: dict[str, Any], next_url: str | None = None) -> bytes:
    b: dict[str, Any] = dict(bundle(*res), type="searchset")
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return json.dumps(b).encode()


def test_server_next_link_to_another_host_is_not_followed() -> None:
    pages = {"/fhir/Patient": _searchset(PATIENT, next_url="http://evil.example/fhir/Patient?page=2"),
             "/fhir/Encounter": _searchset(ENCOUNTER, next_url="http://127.0.0.1:{port}/fhir/Encounter2"),
             "/fhir/Encounter2": _searchset(E2 | {"subject": {"reference": "Patient/p1"}}),
             "/fhir/Observation": _searchset(OBS)}
    with _server(pages) as base:
        c = cds.load_cohort(base, reference_date=REF)
    [p] = c.problems
    assert p.kind == "location-refused" and "evil.example" in p.message and p.source == f"{base}/Patient"
    assert sorted(c.encounters["encounter_id"]) == ["e1", "e2"]  # a next link on the same server is followed
    assert_good_data_loaded(c)


@pytest.mark.parametrize(("body", "load", "match"), [
    pytest.param(b" " * 5000 + json.dumps(bundle(PATIENT)).encode(), {"max_file_mb": 0.004}, "over the 0.004 MB limit",
                 id="page-too-large"),
    pytest.param(b"[" * 3000, {}, "nested deeper", id="page-too-deep"),
    pytest.param(b"\xff\xfe{}", {}, "UTF-16", id="page-utf16"),
    pytest.param(b"<html>hello</html>", {}, "malformed JSON", id="page-html"),
])
def test_hostile_server_page_is_a_named_error(body: bytes, load: dict[str, Any], match: str, tmp_path: Path) -> None:
    with _server({"/fhir/Patient": body}) as base, pytest.raises(FhirInputError, match=match) as exc:
        cds.load_cohort(base, reference_date=REF, **load)
    assert exc.value.where.startswith(f"{base}/Patient")
    good = write(tmp_path / "good.json", bundle(PATIENT, ENCOUNTER, OBS))
    assert_good_data_loaded(cds.load_cohort(good, reference_date=REF))


def test_a_device_sharing_a_patient_id_is_not_that_patient(tmp_path: Path) -> None:
    c = _cohort(tmp_path, dict(O2, subject={"reference": "Device/p1"}))
    assert pd.isna(c.observations.set_index("observation_id").loc["o2", "patient_id"])
    assert list(c.patient("p1").observations["observation_id"]) == ["o1"]
