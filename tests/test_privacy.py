"""De-identification that holds (cds.privacy, ``cds report --deidentify``).

Identifiers are planted into a small cohort copied from fhir_samples/ (a name, an MRN, a birth date, an
address, a phone number, an e-mail, free-text notes and descriptions with a phone number, an e-mail
and the patient's name, one of them drawn into a chart); one de-identified report is run and every
output file (report.html, the executed notebook, results.json, results.fhir.json, figures/*.png,
any CSV) is searched for each planted value and the salt -- with HTML entities undone, JSON strings
decoded and the PNGs embedded in the HTML / notebook decoded with their text chunks -- independently
of :mod:`cds.privacy`. Unit tests cover the leak check, the scrubber, the figure check and the salt rule.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from cds import privacy
from cds.errors import ParameterError
from cds.privacy import (
    IdentifierLeak,
    Scrubber,
    check_deidentified,
    check_figure,
    check_salt,
    find_identifiers,
)
from cds.reports import report as rp
from cds.reports.notebook_run import NotebookFailed

SALT = "privacy-test-salt-5d1c9e0b"
HANNOVER = ["04a33bab", "0f2b9fbd"]
SYNTHEA = "76bc2bcd-3074-46b9-bc18-18daf50825a2"
FAST = {"models": ["pneumonia", "cxr-cardiomegaly"], "reference_date": "2026-01-01", "n_boot": 50}

#: What is planted into Patient/04a33bab and its resources, by kind.
PLANTED = {
    "given name": "Zebulon",
    "family name": "Quistgaard",
    "MRN": "MRN-7734219",
    "birth date": "1961-03-14",
    "birth date (DICOM form)": "19610314",
    "address line": "42 Larkspur Lane",
    "city": "Zellerfeld",
    "postal code": "38678",
    "phone": "+49 5323 718204",
    "e-mail": "zebulon.q@example.org",
    "phone in a note": "0171 5550199",
    "e-mail in a note": "night.nurse@example.net",
    "phone in a description": "0511 532-8888",
    "name in the DICOM header": "Vandersloot",
    "DICOM accession number": "ACC20200401X",
}
#: Free text planted: a Condition whose text (drawn as a chart label and listed in a table) names the
#: patient, a Condition and an Observation note with a phone number / e-mail, an ImagingStudy description.
CONDITION_TEXT = "Zebulon Quistgaard fell at home"
NOTE = "Daughter called from 0171 5550199, lives at 42 Larkspur Lane"


def _plant(cohort: Path) -> None:
    f = cohort / "hannover" / "04a33bab.json"
    b = json.loads(f.read_text())
    pat = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient")
    pat.update({
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:example:mrn", "value": PLANTED["MRN"]}],
        "name": [{"family": PLANTED["family name"], "given": [PLANTED["given name"]]}],
        "birthDate": PLANTED["birth date"],
        "address": [{"line": [PLANTED["address line"]], "city": PLANTED["city"], "postalCode": PLANTED["postal code"]}],
        "telecom": [{"system": "phone", "value": PLANTED["phone"]}, {"system": "email", "value": PLANTED["e-mail"]}],
    })
    study = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    series = study["series"][0]
    series["description"] = f"{series.get('description') or 'Chest'} for {PLANTED['given name']}, callback " \
                            f"{PLANTED['phone in a description']}"
    subject = {"reference": "Patient/04a33bab"}
    b["entry"] += [
        {"fullUrl": "urn:uuid:5a0f6a4e-0000-4000-8000-000000000001", "request": {"method": "PUT", "url": "Condition/c-fall"},
         "resource": {"resourceType": "Condition", "id": "c-fall", "subject": subject,
                      "code": {"coding": [{"system": "http://snomed.info/sct", "code": "217082002"}], "text": CONDITION_TEXT},
                      "note": [{"text": NOTE}], "onsetDateTime": "2020-03-30"}},
        {"fullUrl": "urn:uuid:5a0f6a4e-0000-4000-8000-000000000002", "request": {"method": "PUT", "url": "Observation/o-note"},
         "resource": {"resourceType": "Observation", "id": "o-note", "status": "final", "subject": subject,
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}], "text": "Body height"},
                      "valueQuantity": {"value": 181, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"},
                      "effectiveDateTime": "2020-03-30",
                      "note": [{"text": f"measured at home, results to {PLANTED['e-mail in a note']}"}]}},
    ]
    f.write_text(json.dumps(b))
    import pydicom

    dcm = next((cohort / "dicom" / "hannover" / "04a33bab").glob("*.dcm"))
    ds = pydicom.dcmread(dcm)
    ds.PatientName = f"{PLANTED['name in the DICOM header']}^Ingrid"
    ds.AccessionNumber = PLANTED["DICOM accession number"]
    ds.save_as(dcm)


@pytest.fixture(scope="module")
def planted_cohort(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("planted") / "cohort"
    (d / "hannover").mkdir(parents=True)
    (d / "synthea").mkdir()
    for pid in HANNOVER:
        shutil.copy(samples_dir / "hannover" / f"{pid}.json", d / "hannover")
        shutil.copytree(samples_dir / "dicom" / "hannover" / pid, d / "dicom" / "hannover" / pid)
    shutil.copy(samples_dir / "synthea" / f"{SYNTHEA}.json", d / "synthea")
    _plant(d)
    return d


# ------------------------------------------------------------------ searching outputs (independently)
def _png_texts(data: bytes) -> list[str]:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return [f"{k} {v}" for k, v in {**im.info, **getattr(im, "text", {})}.items() if isinstance(v, str | bytes)]


def _b64_pngs(text: str) -> list[bytes]:
    out = []
    for m in re.finditer(r"iVBORw0KGgo[A-Za-z0-9+/=\\n\s]+", text):
        blob = re.sub(r"\\n|\s", "", m.group(0))
        out.append(base64.b64decode(blob + "=" * (-len(blob) % 4)))
    return out


def _json_strings(x: object) -> list[str]:
    if isinstance(x, dict):
        return [s for k, v in x.items() for s in (str(k), *_json_strings(v))]
    if isinstance(x, list):
        return [s for v in x for s in _json_strings(v)]
    return [x] if isinstance(x, str) else []


def _searchable(path: Path) -> tuple[str, int]:
    """The file's text as a reader (or a decoder) sees it, and how many embedded PNGs were decoded."""
    data = path.read_bytes()
    if path.suffix == ".png":
        return "\n".join(_png_texts(data)), 1
    text = data.decode("utf-8", errors="replace")
    parts = [text, html.unescape(text)]
    if path.suffix in (".json", ".ipynb"):
        strings = _json_strings(json.loads(text))
        parts += strings + [html.unescape(s) for s in strings]
    pngs = [p for t in list(parts) for p in _b64_pngs(t)]
    parts += [t for p in pngs for t in _png_texts(p)]
    return "\n".join(parts), len(pngs)


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


@pytest.fixture(scope="module")
def deid_run(planted_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("deid") / "report"
    old = os.environ.get(rp.SALT_ENV)
    os.environ[rp.SALT_ENV] = SALT
    try:
        t0 = time.perf_counter()
        result = rp.run_report(planted_cohort, out, {**FAST, "deidentify": True}, progress=False)
        result["wall_s"] = time.perf_counter() - t0
        return result
    finally:
        if old is None:
            os.environ.pop(rp.SALT_ENV, None)
        else:
            os.environ[rp.SALT_ENV] = old


# --------------------------------------------------------------------------------- the whole report
@pytest.mark.slow
def test_planted_identifiers_are_in_no_output_of_a_deidentified_report(deid_run):
    out = Path(deid_run["out_dir"])
    files = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"report.html", rp.NOTEBOOK, "results.json", "results.fhir.json"} <= names
    assert {"cohort.png", "scores.png"} <= {p.name for p in (out / "figures").glob("*.png")}
    embedded = 0
    for p in files:
        text, n = _searchable(p)
        embedded += n if p.suffix != ".png" else 0
        digits = {_digits(m) for m in re.findall(r"[\d+(][\d ()./-]{5,}\d", text)}
        for what, value in PLANTED.items():
            assert value not in text, f"{p.name}: the planted {what}"
            if len(_digits(value)) >= 7 and what.startswith("phone"):
                assert _digits(value) not in digits, f"{p.name}: the planted {what} (other separators)"
        assert SALT not in text, f"{p.name}: the salt"
        assert "Software" not in text or p.suffix != ".png", f"{p.name}: PNG metadata"
    assert embedded >= 4  # the figures embedded in report.html and the notebook were decoded and searched
    # the planted free text reached the report scrubbed, not dropped silently: the chart label and the table
    report = html.unescape((out / "report.html").read_text())
    assert "[name removed] fell at home" in report
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["parameters"]["deidentify"] is True and "salt" not in res["metrics"]["parameters"]


@pytest.mark.slow
def test_the_leak_check_covers_every_output_file(deid_run, planted_cohort):
    """Put one planted value back into a CSV, a figure's PNG text chunk and the notebook: the check
    cds runs after the report finds each one."""
    from PIL import Image, PngImagePlugin

    out = Path(deid_run["out_dir"])
    ids = privacy.identifying_strings(planted_cohort)
    csv = out / "extra.csv"
    csv.write_text(f"case,note\n1,{PLANTED['e-mail in a note']}\n")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", CONDITION_TEXT)
    png = out / "figures" / "planted.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    nb = out / "copy.ipynb"
    nb.write_text(json.dumps({"cells": [{"outputs": [{"text": f"born {PLANTED['birth date']}"}]}]}))
    for f, kind in ((csv, "free_text"), (png, "name"), (nb, "birth_date")):
        with pytest.raises(IdentifierLeak, match=rf"{f.name}: .*{kind}") as err:
            check_deidentified([f], ids)
        assert not any(v in str(err.value) for v in PLANTED.values())
    check_deidentified([out / "results.json", out / "report.html", out / rp.NOTEBOOK], ids)  # the real ones are clean


# ---------------------------------------------------------------------------------------- the salt
@pytest.mark.parametrize("salt", ["s3cret", "fifteen-bytes!!", "äöüäöüä"])  # 6, 15, 14 bytes
def test_a_short_salt_is_refused_without_being_echoed(salt, planted_cohort, tmp_path, monkeypatch):
    monkeypatch.delenv(rp.SALT_ENV, raising=False)
    out = tmp_path / "out"
    with pytest.raises(ParameterError) as err:
        rp.run_report(planted_cohort, out, {**FAST, "deidentify": True, "salt": salt}, progress=False)
    assert err.value.where == "salt" and str(err.value).startswith("salt: ") and salt not in str(err.value)
    assert "16 bytes" in str(err.value) and not out.exists()
    monkeypatch.setenv(rp.SALT_ENV, salt)  # the same from the environment
    with pytest.raises(ParameterError, match="^salt: .*16 bytes") as err:
        rp.run_report(planted_cohort, out, {**FAST, "deidentify": True}, progress=False)
    assert salt not in str(err.value) and not out.exists()


def test_salt_rule_in_process_and_at_the_boundary(planted_cohort, tmp_path, monkeypatch):
    assert check_salt("x" * 16) == "x" * 16
    assert check_salt("ä" * 8) == "ä" * 8  # 16 bytes in UTF-8
    for bad in ("", None, "x" * 15):
        with pytest.raises(ParameterError, match="^salt: "):
            check_salt(bad)
    with pytest.raises(ParameterError, match="^--salt-file: "):
        check_salt("short", where="--salt-file")
    monkeypatch.setenv(rp.SALT_ENV, SALT)
    params = rp.validate_report_parameters({"cohort": str(planted_cohort), "out_dir": str(tmp_path / "o"),
                                            "deidentify": True, **FAST})
    with pytest.raises(ParameterError, match="^salt: ") as err:  # the notebook's path: prepare() refuses it
        rp.prepare({**params, "salt": "too-short"})
    assert "too-short" not in str(err.value) and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------- the leak check, unit
def test_identifying_strings_cover_addresses_telecom_and_free_text(planted_cohort):
    ids = privacy.identifying_strings(planted_cohort)
    assert {PLANTED["given name"], PLANTED["family name"], "Zebulon Quistgaard", "Louis", "Erdman"} <= ids["name"]
    assert PLANTED["MRN"] in ids["identifier"] and "999-16-9721" in ids["identifier"]  # Louis Erdman's SSN
    assert {PLANTED["birth date"], PLANTED["birth date (DICOM form)"], "14.03.1961", "03/14/1961"} <= ids["birth_date"]
    assert {PLANTED["address line"], PLANTED["city"], PLANTED["postal code"], "675 Kunde Route", "Chicopee"} \
        <= ids["address"]
    assert {PLANTED["phone"], _digits(PLANTED["phone"]), PLANTED["e-mail"], "555-124-4931"} <= ids["telecom"]
    assert {PLANTED["phone in a note"], PLANTED["e-mail in a note"], PLANTED["phone in a description"],
            PLANTED["address line"]} <= ids["free_text"]
    assert set(HANNOVER) | {SYNTHEA} <= ids["patient_id"]
    assert PLANTED["name in the DICOM header"] not in ids["name"]  # DICOM headers: read when files are given
    files = [str(p) for p in planted_cohort.rglob("*") if p.is_file()]
    with_files = privacy.identifying_strings(planted_cohort, files=files)
    assert {PLANTED["name in the DICOM header"], "Ingrid"} <= with_files["name"]
    assert PLANTED["DICOM accession number"] in with_files["identifier"] and set(files) <= with_files["path"]
    assert not any(len(v) < 3 for vs in ids.values() for v in vs)


def test_find_identifiers_sees_through_encodings_and_formats(tmp_path):
    ids = {"name": {"Müller", "O'Brien"}, "telecom": {"+49 5323 718204"}, "birth_date": {"14.03.1961"},
           "address": {"38678"}}
    assert find_identifiers("Dr. Müllerová, Louisiana O'Briens", ids) == {}  # whole words only
    assert find_identifiers("0.38678 and 138678 are numbers", ids) == {}
    assert find_identifiers("call +49-5323-718204", {"telecom": {"+49 5323 718204"}}) == {"telecom": 1}
    assert find_identifiers("call +49 5323 718205, 2020-04-01", {"telecom": {"+49 5323 718204"}}) == {}
    assert find_identifiers("call +49 (5323) 718204", ids) == {"telecom": 1}
    long = "x " * 15_000  # long texts get a quicker first look: it must find the same
    for text, kind in (("Müller", "name"), ("Louis204", "name"), ("Patient/04a33bab-hospital", "patient_id"),
                       ("urn:oid:1.2.3.4.5", "uid"), ("+49-5323-718204", "telecom"), ("tel 495323718204", "telecom"),
                       ("PLZ 38678.", "address"), ("/data/04a33bab/1.dcm", "path")):
        ids2 = {"name": {"Müller", "Louis"}, "patient_id": {"04a33bab"}, "uid": {"1.2.3.4.5"},
                "telecom": {"+49 5323 718204", "495323718204"}, "address": {"38678"}, "path": {"/data/04a33bab/1.dcm"}}
        assert kind in find_identifiers(f"{long} {text} {long}", ids2), text
        assert find_identifiers(f"{long} {text} {long}", ids2) == find_identifiers(text, ids2), text
    cases = {
        "a.ipynb": json.dumps({"cells": [{"source": "seen by Müller"}]}, ensure_ascii=True),  # "M\u00fcller"
        "b.html": "<td>O&#x27;Brien</td>",
        "c.json": json.dumps({"note": "born 14.03.1961"}),
        "d.html": '<img src="data:image/png;base64,' + base64.b64encode(_png_with_text("Author", "Müller")).decode()
                  + '">',
        "e.png": _png_with_text("Comment", "postal code 38678", compressed=True),
    }
    for name, content in cases.items():
        f = tmp_path / name
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(IdentifierLeak, match=rf"\({re.escape(name)}: 1 \w+\)"):
            check_deidentified([f], ids)
    clean = tmp_path / "clean.png"
    clean.write_bytes(_png_with_text("Title", "scores"))
    check_deidentified([clean], ids)


def _png_with_text(key: str, value: str, compressed: bool = False) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if compressed:
        info.add_itxt(key, value, zip=True)
    else:
        info.add_itxt(key, value)
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_leak_check_removes_leaking_files_and_names_no_identifier(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("pseudonym,score\nx1,0.5\n")
    b.write_text("name,phone\nZebulon,0171 5550199\n")
    ids = {"name": {"Zebulon"}, "free_text": {"0171 5550199"}}
    with pytest.raises(IdentifierLeak, match=r"b.csv: 1 free_text, 1 name\); those files were removed") as err:
        check_deidentified([a, b], ids, remove=True)
    assert "Zebulon" not in str(err.value) and "5550199" not in str(err.value)
    assert a.exists() and not b.exists()


@pytest.mark.parametrize("text,expected", [
    ("Zebulon Quistgaard fell at home", "[name removed] [name removed] fell at home"),
    ("call 0171 5550199 or (555) 250-5611", "call [phone removed] or [phone removed]"),
    ("mail zebulon.q@example.org now", "mail [e-mail removed] now"),
    ("lives at 42 Larkspur Lane, Zellerfeld 38678", "lives at [address removed], [address removed] [address removed]"),
    ("wohnt Bahnhofstraße 12a, Hannover", "wohnt [address removed], Hannover"),
    ("/data/04a33bab/x.dcm: not a DICOM file", "[path removed]: not a DICOM file"),
    ("born 1961-03-14 (19610314)", "born [date removed] ([date removed])"),
    ("seen 2020-04-01, UID 1.2.840.10008.5.1, 0.999 and 12 of 300", None),  # nothing identifying: unchanged
])
def test_scrubber(text, expected):
    ids = {"name": {"Zebulon", "Quistgaard"}, "address": {"Zellerfeld", "38678"},
           "birth_date": {"1961-03-14", "19610314"}, "patient_id": {"04a33bab"}}
    assert Scrubber(ids)(text) == (text if expected is None else expected)


def test_figures_are_checked_before_they_are_saved(tmp_path):
    from matplotlib.figure import Figure

    ids = {"name": {"Quistgaard"}}
    fig = Figure()
    ax = fig.subplots()
    ax.barh(["COVID-19", "Quistgaard fell"], [3, 1])  # a category label: drawn as a tick label
    with pytest.raises(IdentifierLeak, match=r"^figure cohort: .*1 name"):
        check_figure(fig, ids, "cohort")
    fig2 = Figure()
    fig2.subplots().plot([0, 1], [0, 1], label="call 0171 5550199")
    fig2.axes[0].legend()
    with pytest.raises(IdentifierLeak, match="telecom pattern"):
        check_figure(fig2, {}, "scores")
    ok = Figure()
    ok.subplots().hist([0.1, 0.5, 0.9], bins=5)
    ok.axes[0].set(title="pneumonia", xlabel="probability")
    check_figure(ok, ids, "scores")


def test_a_deidentified_context_draws_from_scrubbed_data(planted_cohort, tmp_path, monkeypatch):
    """In process (no papermill): the cohort figure of a de-identified report shows the planted condition
    scrubbed; the identified one would have drawn the name (so the check can fail)."""
    monkeypatch.setenv(rp.SALT_ENV, SALT)
    base = {"cohort": str(planted_cohort), **FAST}
    ident = rp.prepare(rp.validate_report_parameters({**base, "out_dir": str(tmp_path / "i")}))
    assert any(PLANTED["family name"] in t for t in privacy.figure_texts(rp.plot_cohort(ident)))
    ctx = rp.prepare(rp.validate_report_parameters({**base, "out_dir": str(tmp_path / "d"), "deidentify": True}))
    assert ctx.cohort.patients["name"].isna().all()
    assert PLANTED["name in the DICOM header"] in ctx.identifiers["name"] and SALT in ctx.identifiers["salt"]
    assert CONDITION_TEXT not in set(ctx.cohort.conditions["display"])
    assert "mg/dL" in set(ctx.cohort.observations["unit"])  # ordinary text is left as it is
    assert "[name removed] fell at home" in set(rp.conditions_table(ctx)["condition"])
    desc = ctx.cohort.imaging.loc[ctx.cohort.imaging["patient_id"] == "04a33bab", "description"].iat[0]
    assert desc.endswith(" for [name removed], callback [phone removed]")
    assert ident.cohort.patients["name"].notna().any()  # the identified cohort was not changed
    img = ctx.figure(rp.plot_cohort(ctx), "cohort")
    png = (tmp_path / "d" / "figures" / "cohort.png").read_bytes()
    assert png == img.data and not privacy.png_text(png)  # no Software (or any other) text chunk
    check_deidentified([tmp_path / "d" / "figures" / "cohort.png"], ctx.identifiers)


@pytest.mark.slow
def test_a_failed_deidentified_run_leaves_no_identifier_behind(planted_cohort, tmp_path, monkeypatch):
    """A notebook that shows a planted name and then fails on an error naming the patient: the executed
    notebook is removed and the error the user sees is scrubbed (and never holds the salt)."""
    import nbformat

    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}, "language_info": {"name": "python"}})
    params = nbformat.v4.new_code_cell("cohort = ''\nout_dir = ''\ndeidentify = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"print({CONDITION_TEXT!r})"),
                nbformat.v4.new_code_cell(f"raise ValueError('no image for {PLANTED['family name']}, "
                                          f"call {PLANTED['phone in a note']}')")]
    nbformat.write(nb, str(nbdir / rp.NOTEBOOK))
    monkeypatch.setenv("CDS_NOTEBOOKS", str(nbdir))
    monkeypatch.setenv(rp.SALT_ENV, SALT)
    out = tmp_path / "out"
    with pytest.raises(NotebookFailed) as err:
        rp.run_report(planted_cohort, out, {"deidentify": True, "models": ["pneumonia"]}, progress=False)
    msg = str(err.value)
    assert "cell" in msg and "ValueError" in msg and "removed" in msg, msg
    assert not any(v in msg for v in (PLANTED["family name"], PLANTED["phone in a note"], SALT)), msg
    for p in (x for x in out.rglob("*") if x.is_file()):
        text, _ = _searchable(p)
        assert PLANTED["family name"] not in text and SALT not in text, p.name
    assert not (out / rp.NOTEBOOK).exists()
