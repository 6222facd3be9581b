"""The case explorer widgets driven as ipywidgets objects (no browser), and the notebook's static output."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import cds
from cds.explorer.widgets.explorer import CaseExplorer
from cds.explorer.widgets.static import worklist_html
from cds.explorer.widgets.viewer import ImageViewer
from cds.finding import Failure, Finding, Location
from cds.images.image import Image
from cds.review.store import ReviewStore

SNOMED = "http://snomed.info/sct"


@pytest.fixture(scope="module")
def cohort(samples_dir: Path):
    return cds.load_cohort(samples_dir, validate=False, reference_date="2020-06-02")


def _hannover_patients(cohort, n: int) -> list[str]:
    img = cohort.imaging[cohort.imaging["pixel_location"].notna()]
    labs = set(cohort.observations.loc[cohort.observations["category"] == "laboratory", "patient_id"])
    counts = img.groupby("patient_id").size()
    return [p for p in counts.sort_values(ascending=False, kind="stable").index if p in labs][:n]


@pytest.fixture(scope="module")
def findings(cohort) -> list[Finding]:
    """Findings for three patients' studies: one positive with a box, one indeterminate, one negative."""
    out = []
    for pid, prob in zip(_hannover_patients(cohort, 3), (0.93, 0.55, 0.05), strict=True):
        rows = cohort.imaging[(cohort.imaging["patient_id"] == pid) & cohort.imaging["pixel_location"].notna()]
        r = rows.iloc[0]
        loc = Location("box", (100.0, 120.0, 220.0, 260.0), frame="pixel") if prob > 0.9 else None
        out.append(Finding(pid, r["study_uid"], SNOMED, "233604007", "Pneumonia", "pneumonia", "1.0.0",
                           probability=prob, threshold=0.5, indeterminate=(0.4, 0.6), location=loc,
                           series_uid=r["series_uid"], ehr_inputs={"age": 63.0}))
    return out


def _explorer(cohort, findings, tmp_path: Path, **kw) -> CaseExplorer:
    cards = {"pneumonia": {"name": "pneumonia demo", "version": "1.0.0", "html": "<h1>Pneumonia card</h1>",
                           "path": "/x/README.md"}}
    return CaseExplorer(cohort, findings, ReviewStore(tmp_path / "reviews.jsonl"), "dr-test", cards=cards, **kw)


def test_worklist_opens_the_most_urgent_case_and_picking_switches_patient(cohort, findings, tmp_path: Path) -> None:
    ex = _explorer(cohort, findings, tmp_path)
    top = ex.worklist.table.iloc[0]
    assert top["finding_id"] == findings[0].id and top["ai_state"] == "positive"
    assert ex.worklist.table.iloc[1]["ai_state"] == "indeterminate"
    assert ex.case.patient_id == findings[0].patient_id
    assert "0.930" in ex.case.findings_panel.value and "Pneumonia card" in ex.case.findings_panel.value
    assert "age = 63.0" in ex.case.findings_panel.value
    assert len(ex.case.viewer.overlays) == 1  # the box
    first_png = ex.case.viewer.image.value
    # pick the indeterminate study in the list, as a click would
    target = findings[1]
    ex.worklist.select.value = target.study_uid
    assert ex.case.patient_id == target.patient_id and ex.case.study_uid == target.study_uid
    rec = cohort.patient(target.patient_id)
    sex = rec.patient["sex"]
    assert f"Patient {target.patient_id}" in ex.case.header.value and f"<b>{sex}</b>" in ex.case.header.value
    crp = rec.observations[rec.observations["category"] == "laboratory"].sort_values("time").iloc[-1]
    assert f"{crp['value']:.4g}" in ex.case.header.value + ex.case.trends.value
    assert "AI indeterminate" in ex.case.findings_panel.value and "0.550" in ex.case.findings_panel.value
    assert "indeterminate between 0.4 and 0.6" in ex.case.findings_panel.value
    study_options = " ".join(label for label, _ in ex.case.study_select.options)
    assert "AI indeterminate" in study_options and "AI indeterminate" in ex.worklist.static_html()
    assert "uncertain" not in ex.case.findings_panel.value + ex.worklist.static_html() + study_options
    assert ex.case.viewer.image.value != first_png and ex.case.viewer.overlays == []
    assert "<svg" in ex.case.trends.value and "<svg" in ex.case.timeline.value
    # filters
    ex.worklist.ai_state.value = "negative"
    assert ex.worklist.table["finding_id"].tolist() == [findings[2].id]
    ex.worklist.ai_state.value = "all"
    ex.worklist.modality.value = "DX"
    assert set(ex.worklist.table["modality"]) <= {"DX"} and len(ex.worklist.table) > 0
    # another study of the same patient through the study dropdown
    opts = [v for _, v in ex.case.study_select.options]
    if len(opts) > 1:
        other = next(v for v in opts if v != target.study_uid)
        ex.case.study_select.value = other
        assert ex.case.study_uid == other and "No AI result" in ex.case.findings_panel.value


def test_a_study_whose_model_failed_says_why_in_worklist_case_and_static_html(cohort, findings,
                                                                            tmp_path: Path) -> None:
    pid = _hannover_patients(cohort, 4)[3]
    uid = cohort.imaging.loc[cohort.imaging["patient_id"] == pid, "study_uid"].iloc[0]
    failed = Failure(pid, uid, "pneumonia", "ImageReadError", "x.dcm: <truncated>")
    ex = _explorer(cohort, findings, tmp_path, failures=[failed])
    assert "1 stud(ies) without an AI result" in ex.title.value and "pneumonia: x.dcm: &lt;truncated&gt;" in ex.title.value
    row = ex.worklist.full.set_index("study_uid").loc[uid]
    assert row["ai_state"] == "no-ai" and row["failure"] == "pneumonia: x.dcm: <truncated>"
    label = next(lbl for lbl, v in ex.worklist.select.options if v == uid)
    assert "model could not run" in label
    assert "could not run: pneumonia: x.dcm: &lt;truncated&gt;" in worklist_html(
        ex.worklist.full[ex.worklist.full["study_uid"] == uid])
    ex.worklist.pick(uid)
    assert ex.case.study_uid == uid
    assert "Model could not run: pneumonia: x.dcm: &lt;truncated&gt;" in ex.case.findings_panel.value
    # without the failure the same study is just "no AI result"
    plain = _explorer(cohort, findings, tmp_path)
    plain.worklist.pick(uid)
    assert "could not run" not in plain.case.findings_panel.value
    assert plain.worklist.full.set_index("study_uid").loc[uid, "failure"] == ""


def test_viewer_controls_change_the_image() -> None:
    vol = (np.arange(6 * 64 * 64) % 2000 - 1000).astype(np.int16).reshape(6, 64, 64)
    vol[3] = 50
    img = Image(vol, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "CT", {"patient_frame": True}, "vol")
    v = ImageViewer(out_size=128)
    v.set_image(img)
    assert v.preset.value == "lung" and v.slice.max == 5 and v.slice.value == 3
    assert v.slice.layout.display == "flex" and v.children == (v.tabs,)
    seen = {v.image.value}
    for change in (lambda: setattr(v.slice, "value", 1), lambda: setattr(v.preset, "value", "bone"),
                   lambda: setattr(v.level, "value", 300.0), lambda: setattr(v.zoom, "value", 3.0),
                   lambda: setattr(v.pan_x, "value", 0.0)):
        before = v.render_count
        change()
        assert v.render_count == before + 1  # exactly one render per control move
        assert v.image.value not in seen
        seen.add(v.image.value)
    assert v.preset.value is None  # a manual level is no longer the preset
    assert v.last_render_ms < 1000 and "slice 2/6" in v.info.value
    v.reset_view()
    assert v.zoom.value == 1.0 and v.preset.value == "lung"
    # the 3D tab builds an ipyniivue viewer from a NIfTI written on the fly
    nv = v.open_3d()
    assert nv is not None and len(nv.volumes) == 1 and Path(v._nifti).stat().st_size > 100
    # overlay on/off and opacity
    heat = np.zeros((64, 64), np.float32)
    heat[:32] = 1.0
    from cds.images.render import Overlay

    v.set_overlays([Overlay("heatmap", heat)])
    with_ov = v.image.value
    v.opacity.value = 0.9
    assert v.image.value != with_ov
    v.show_overlays.value = False
    assert v.image.value not in (with_ov,) and "AI overlay off" in v.info.value


def test_override_is_stored_and_shown_and_bad_input_is_refused(cohort, findings, tmp_path: Path) -> None:
    ex = _explorer(cohort, findings, tmp_path)
    panel = ex.case.actions
    panel.reason.value = "other"
    panel.comment.value = ""
    panel.override_button.click()
    assert "Not saved" in panel.message.value and len(ex.store) == 0
    panel.reason.value = "false-positive"
    panel.comment.value = "calcified granuloma"
    panel.override_button.click()
    lines = (tmp_path / "reviews.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"false-positive"' in lines[0] and "calcified granuloma" in lines[0]
    assert "overridden" in ex.case.findings_panel.value and "false-positive" in ex.case.findings_panel.value
    assert ex.worklist.full.set_index("finding_id").loc[findings[0].id, "review_status"] == "overridden"
    assert "saved to reviews.jsonl" in panel.message.value and "false-positive" in panel.history.value
    panel.accept_button.click()
    assert ex.store.status_of(findings[0].id) == "final"
    # a restarted kernel: a new explorer on the same file shows the earlier actions
    again = _explorer(cohort, findings, tmp_path)
    assert "2 earlier actions" in again.title.value
    again.open_patient(findings[0].patient_id, findings[0].study_uid)
    assert "accepted" in again.case.findings_panel.value and "false-positive" in again.case.actions.history.value


def test_reader_study_hides_the_ai_until_the_pre_ai_read_is_saved(cohort, findings, tmp_path: Path) -> None:
    ex = _explorer(cohort, findings, tmp_path, reader_study=True)
    assert ex.worklist.blind and "AI positive" not in ex.worklist.static_html()
    ex.open_patient(findings[0].patient_id, findings[0].study_uid)
    panel = ex.case.actions
    assert "AI results hidden" in ex.case.findings_panel.value and "0.930" not in ex.case.findings_panel.value
    assert ex.case.viewer.overlays == [] and panel.review_box.layout.display == "none"
    assert "0.930" not in ex.static_html() and "AI positive" not in ex.static_html()
    panel.read_button.click()  # nothing chosen yet
    assert "Choose" in panel.message.value and len(ex.store) == 0
    panel.present.value = True
    panel.confidence.value = 70
    panel.read_button.click()
    assert "0.930" in ex.case.findings_panel.value and len(ex.case.viewer.overlays) == 1
    assert "AFTER" in panel.read_title.value
    panel.present.value = False
    panel.confidence.value = 35
    panel.read_button.click()
    reads = ex.store.reads(findings[0].id, "dr-test")
    assert reads["pre-ai"]["read"]["confidence"] == 70 and reads["post-ai"]["read"]["finding_present"] is False
    assert panel.review_box.layout.display == "flex" and panel.read_button.disabled


def test_static_fallback_shows_the_case(cohort, findings, tmp_path: Path) -> None:
    ex = _explorer(cohort, findings, tmp_path)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert f"Patient {findings[0].patient_id}" in html and "data:image/png;base64," in html
    assert "0.930" in html and "Worklist" in html and "<svg" in html
    assert "data:image/png;base64," in ex.case.viewer._repr_mimebundle_()["text/html"]


@pytest.mark.slow
def test_notebook_runs_under_papermill_and_exports_the_case_as_html(repo: Path, samples_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The real path: the notebook runs the registry's cxr-icu model (meant for these adults' first
    radiographs with labs) on a two-patient cohort."""
    import shutil

    import nbformat
    import papermill as pm

    from cds.reports.notebook_run import to_html

    full = cds.load_cohort(samples_dir, validate=False)
    pids = _hannover_patients(full, 6)[-2:]  # two patients with few studies: a quick model run
    sub = tmp_path / "cohort"
    for pid in pids:
        (sub / "hannover").mkdir(parents=True, exist_ok=True)
        shutil.copy(samples_dir / "hannover" / f"{pid}.json", sub / "hannover")
        shutil.copytree(samples_dir / "dicom" / "hannover" / pid, sub / "dicom" / "hannover" / pid)
    executed = tmp_path / "out.ipynb"
    pm.execute_notebook(str(repo / "notebooks" / "case_explorer.ipynb"), str(executed),
                        parameters={"cohort": str(sub), "models": ["cxr-icu"], "reader_id": "dr-nb",
                                    "store_path": str(tmp_path / "reviews.jsonl"), "reference_date": "2020-06-02"},
                        cwd=str(repo / "notebooks"), kernel_name="python3", progress_bar=False)
    html = to_html(executed, tmp_path / "report.html").read_text()
    nb = nbformat.read(str(executed), as_version=4)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in nb.cells
               for o in c.get("outputs", []))
    shown = re.search(r"<h3>Patient (\w+)", html)
    assert shown and shown.group(1) in pids
    rec = full.patient(shown.group(1))
    assert f"<b>{rec.patient['sex']}</b>" in html
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html)
    assert re.search(r'class="cds-probability">0\.\d{3}<', html)  # a probability from the real model run
    assert "cxr-icu (Hannover COVID-19" in html and "Loading widget" not in html
    assert "build_explorer(" not in html  # code hidden
