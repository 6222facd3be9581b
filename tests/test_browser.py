"""The case explorer in a real browser (Debian Chromium + Python playwright), in voila and in JupyterLab.

For each frontend: open the explorer, pick a patient from the worklist, check that the case shows
that patient's real content (sex, a lab value from the FHIR record, the image, an AI finding with
its probability), override the finding with a coded reason and check the review log file, move
window/zoom controls and check the image bytes changed. Screenshots go to ``test-artifacts/``.

Servers run on 127.0.0.1 on free ports with a token and are stopped afterwards. Without
``/usr/bin/chromium`` the tests skip (or fail when ``CI`` is set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cds
from cds.explorer.app import free_port, load_findings, run_explorer, save_findings, write_notebook
from cds.explorer.widgets.static import _num, latest_results
from cds.explorer.widgets.worklist import row_label
from cds.review.store import OVERRIDE_REASONS
from cds.review.worklist import build_worklist

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
REFERENCE_DATE = "2020-06-02"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# fetch an <img>'s bytes inside the page and fingerprint them (length + a rolling hash)
IMG_FINGERPRINT = """async (img) => {
  const r = await fetch(img.src); const b = new Uint8Array(await r.arrayBuffer());
  let h = 0; for (let i = 0; i < b.length; i++) { h = (h * 31 + b[i]) | 0; }
  return [b.length, h];
}"""


@pytest.fixture(scope="module")
def case(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real cxr-icu findings (registry run: the model meant for these adults' radiographs with labs) for three
    Hannover patients; the patient the test picks."""
    import torch

    from cds.models.registry import ModelRegistry

    torch.set_num_threads(1)
    cohort = cds.load_cohort(samples_dir, validate=False, reference_date=REFERENCE_DATE)
    img = cohort.imaging[cohort.imaging["pixel_location"].notna()]
    labs = set(cohort.observations.loc[cohort.observations["category"] == "laboratory", "patient_id"])
    pids = [p for p in sorted(img["patient_id"].unique()) if p in labs][:3]
    result = ModelRegistry().run("cxr-icu", cohort, studies=img[img["patient_id"].isin(pids)])
    assert result.findings, result.failures
    path = save_findings(result.findings, tmp_path_factory.mktemp("findings") / "findings.json", result.failures)
    findings, _ = load_findings(path)
    wl = build_worklist(cohort.imaging, findings, now=REFERENCE_DATE)
    # pick the AI-scored study that is NOT opened first, of another patient than the first row
    first_pid = wl.iloc[0]["patient_id"]
    row = wl[(wl["patient_id"] != first_pid) & (wl["ai_state"] != "no-ai")].iloc[0]
    finding = next(f for f in findings if f.id == row["finding_id"])
    rec = cohort.patient(row["patient_id"])
    lab = latest_results(rec.observations).iloc[0]
    return {"findings_json": path, "row": row, "label": row_label(row), "finding": finding,
            "sex": rec.patient["sex"], "lab_value": f"{_num(lab['value'], 4)} {lab['unit']}",
            "lab_name": lab["display"], "first_pid": first_pid}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fingerprint(page: Any) -> tuple[int, int]:
    img = page.locator(".cds-viewer-image").first
    img.wait_for(state="visible")
    return tuple(img.evaluate(IMG_FINGERPRINT))


def _wait_changed(page: Any, before: tuple[int, int], what: str, timeout: float = 15.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _fingerprint(page)
        if now != before:
            return now
        page.wait_for_timeout(150)
    raise AssertionError(f"the image did not change after {what}")


def _wait_file(path: Path, needles: list[str], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if all(n in text for n in needles):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{path} never got {needles}; it holds: {path.read_text() if path.exists() else '(none)'}")


def exercise_explorer(page: Any, case: dict[str, Any], store: Path, name: str) -> None:
    """Pick a patient, check the case content, override, move controls; screenshots along the way."""
    ARTIFACTS.mkdir(exist_ok=True)
    header = page.locator(".cds-case-header").first
    header.wait_for(state="visible", timeout=120_000)
    assert f"Patient {case['first_pid']}" in header.inner_text()
    # pick the patient from the worklist grid with the keyboard
    row = page.locator(f".cds-worklist-grid tr[data-uid='{case['row']['study_uid']}']").first
    row.focus()
    row.press("Enter")
    pid = case["row"]["patient_id"]
    page.wait_for_function("pid => [...document.querySelectorAll('.cds-case-header')].some("
                           "e => e.innerText.includes('Patient ' + pid))", arg=pid, timeout=20_000)
    text = header.inner_text()
    assert f"sex: {case['sex']}" in text
    assert case["lab_name"] in text and case["lab_value"] in text.replace("\n", " ").replace("\t", " ")
    panel = page.locator(".cds-findings-panel").first
    prob = f"{case['finding'].probability:.3f}"
    page.wait_for_function("p => [...document.querySelectorAll('.cds-findings-panel')].some("
                           "e => e.innerText.includes(p))", arg=prob, timeout=20_000)
    ptext = panel.inner_text()
    assert "Admission to intensive care unit" in ptext and "cxr-icu (Hannover COVID-19" in ptext and "1.0.0" in ptext
    before = _fingerprint(page)
    assert before[0] > 10_000  # a real radiograph PNG, not a placeholder
    page.locator(".cds-case-view").first.screenshot(path=str(ARTIFACTS / f"{name}-case.png"))
    # override with a coded reason: it must reach the review log file
    page.locator(".cds-reason select").first.select_option(value=f"false-positive: {OVERRIDE_REASONS['false-positive']}")
    page.locator(".cds-comment textarea").first.fill(f"browser test via {name}")
    page.locator("button.cds-override").first.click()
    text = _wait_file(store, [case["finding"].id, '"false-positive"', f"browser test via {name}"])
    last = json.loads(text.strip().splitlines()[-1])
    assert last["action"] == "override" and last["status"] == "amended"
    page.wait_for_function("() => [...document.querySelectorAll('.cds-findings-panel')].some("
                           "e => e.innerText.includes('overridden'))", timeout=15_000)
    # window preset, then a key press on the level slider, then zoom: each must change the image
    presets = page.locator(".cds-viewer-control select").first
    presets.select_option(value="full")
    after_preset = _wait_changed(page, before, "choosing the 'full' window preset")
    handle = page.locator(".cds-level .noUi-handle").first
    handle.focus()
    for _ in range(4):
        handle.press("PageUp")
    after_level = _wait_changed(page, after_preset, "PageUp on the level slider")
    zoom = page.locator(".cds-viewer-control.widget-slider", has_text="Zoom").locator(".noUi-handle").first
    zoom.focus()
    for _ in range(3):
        zoom.press("ArrowRight")
    _wait_changed(page, after_level, "ArrowRight on the zoom slider")
    page.wait_for_timeout(300)
    page.locator(".cds-case-view").first.screenshot(path=str(ARTIFACTS / f"{name}-after-controls.png"))
    page.screenshot(path=str(ARTIFACTS / f"{name}-page.png"))


def test_voila_app(browser: Any, case: dict[str, Any], samples_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "reviews.jsonl"
    server = run_explorer(samples_dir, findings_json=case["findings_json"], reader_id="dr-voila", store=store,
                          reference_date=REFERENCE_DATE, workdir=tmp_path / "app", block=False, quiet=True)
    try:
        assert server.url.startswith("http://127.0.0.1:") and f"token={server.token}" in server.url
        # without the (right) token the app is not served: voila redirects to its login page
        for url in (f"http://127.0.0.1:{server.port}/", f"http://127.0.0.1:{server.port}/?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.build_opener(_NoRedirect).open(url, timeout=10)
            assert err.value.code == 302 and err.value.headers["Location"].startswith("/login")
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        try:
            page.goto(server.url)
            exercise_explorer(page, case, store, "voila")
        finally:
            page.close()
    finally:
        server.stop()
    assert server.process.poll() is not None


@pytest.fixture()
def jupyterlab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab on 127.0.0.1 (free port, token, no news / update checks, private settings)."""
    port, token = free_port(), "cds-browser-test-token"
    root = tmp_path / "lab"
    root.mkdir()
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news toast over the page
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers often run as root
        cmd.append("--allow-root")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root), env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.3)
        yield {"port": port, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_jupyterlab_notebook(browser: Any, case: dict[str, Any], samples_dir: Path, jupyterlab: dict[str, Any],
                             tmp_path: Path) -> None:
    store = tmp_path / "reviews.jsonl"
    write_notebook({"cohort": str(samples_dir), "findings_json": str(case["findings_json"]), "models": [],
                    "reader_id": "dr-lab", "store_path": str(store), "reference_date": REFERENCE_DATE},
                   jupyterlab["root"] / "case_explorer.ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(f"http://127.0.0.1:{jupyterlab['port']}/lab/tree/case_explorer.ipynb?reset&token="
                  f"{jupyterlab['token']}")
        page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
        select_kernel = page.locator(".jp-Dialog button", has_text="Select")
        try:
            select_kernel.first.click(timeout=3_000)
        except Exception:  # noqa: BLE001 - the dialog only appears when Lab cannot pick the kernel itself
            pass
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        page.locator(".jp-OutputArea-output .cds-case-header").first.wait_for(timeout=120_000)
        exercise_explorer(page, case, store, "jupyterlab")
        loading = page.locator(".jp-OutputArea-output", has_text="Loading widget")
        assert loading.count() == 0
        # the static snapshot output is in the page but hidden next to the live widget
        snap = page.locator(".cds-snapshot")
        assert snap.count() >= 1 and not snap.first.is_visible()
    finally:
        page.close()
    shutil.rmtree(jupyterlab["root"] / ".ipynb_checkpoints", ignore_errors=True)
