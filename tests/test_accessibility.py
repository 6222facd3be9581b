"""Accessible, theme-aware explorer widgets (issue 9, item 11).

- WCAG AA contrast (>= 4.5:1) of every text and status-badge colour pair, computed with the WCAG
  relative-luminance formula from the very CSS the widgets emit, resolved against the palettes of the
  JupyterLab Light and Dark themes as installed (``share/jupyter/lab/themes/@jupyterlab/theme-*-extension``);
- every state (the three refusals too) has a badge with an icon and a label, not colour alone;
- the widgets' stylesheet takes every colour from a ``--jp-*`` variable (a fallback only inside ``var()``);
- the worklist grid sorts, keeps the public API (``on_select``, ``pick``, ``refresh``, ``apply_filters``,
  ``static_html``) and shows the refusals with their reasons;
- in Chromium: the grid is driven with the keyboard only (Tab, arrows, Enter; Enter on a header sorts),
  and a dark-theme (and light-theme) screenshot is measured: badge text against badge background and
  body text against the page, from the pixels.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cds.explorer.widgets.grid import GRID_ESM
from cds.explorer.widgets.static import STYLE, badge_html, state_label, worklist_html
from cds.explorer.widgets.theme import (
    BACKGROUND,
    STATE_ICONS,
    STATE_VARS,
    SURFACE,
    badge_colours,
    contrast_ratio,
    jupyterlab_palette,
    resolve,
    text_colours,
    theme_css,
    theme_css_path,
)
from cds.explorer.widgets.worklist import WorklistWidget, row_label
from cds.finding import Failure, Finding
from cds.review.worklist import AI_STATES, STATE_LABELS

AA = 4.5
SNOMED = "http://snomed.info/sct"
REFUSALS = ("record-mismatch", "input-rejected", "outside-intended-use")


# ------------------------------------------------------------------------------ computed contrast
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_badge_and_text_colour_pair_meets_wcag_aa(theme: str) -> None:
    palette = jupyterlab_palette(theme)
    # the installed theme is the one whose values we expect (guards against reading the wrong file)
    assert resolve("var(--jp-layout-color0)", palette) == ((255.0,) * 3 if theme == "light" else (17.0,) * 3)
    ratios = {}
    for name, (fg, bg) in {**{f"badge {s}": v for s, v in badge_colours().items()}, **text_colours()}.items():
        back = resolve(bg, palette)
        ratios[name] = contrast_ratio(resolve(fg, palette, back), back)
    low = {k: round(v, 2) for k, v in ratios.items() if v < AA}
    assert not low, f"below WCAG AA 4.5:1 in JupyterLab {theme}: {low}"
    assert len(ratios) >= len(STATE_VARS) + 9


def test_the_old_fixed_colours_would_fail_on_the_dark_theme() -> None:
    """The check can fail: #222 body text (the old style) on the dark theme's page is far below AA."""
    dark = jupyterlab_palette("dark")
    assert contrast_ratio(resolve("#222", dark), resolve(BACKGROUND, dark)) < 1.5
    assert contrast_ratio((255, 255, 255), resolve("#e6a000", dark)) < AA  # white on the old amber badge


def test_every_state_has_a_badge_with_icon_and_label() -> None:
    assert set(AI_STATES) <= set(STATE_VARS) and set(REFUSALS) <= set(AI_STATES)
    icons = [STATE_ICONS[s] for s in AI_STATES]
    assert len(set(icons)) == len(icons)  # shapes differ, not only colours
    for s in AI_STATES:
        html = badge_html(s)
        assert f"cds-state-{s}" in html and STATE_ICONS[s] in html and STATE_LABELS[s] in html
        assert state_label(s) == STATE_LABELS[s]
    for s in REFUSALS:
        assert "cds-badge-nonanswer" in badge_html(s)  # dashed: a refusal is not a call


def test_the_stylesheet_takes_every_colour_from_jupyterlab_variables() -> None:
    css = theme_css()
    assert css in STYLE
    for var in ("--jp-ui-font-color0", "--jp-ui-font-color1", "--jp-ui-font-color2", "--jp-layout-color0",
                "--jp-layout-color1", "--jp-brand-color1", "--jp-error-color1", "--jp-warn-color1",
                "--jp-success-color1"):
        assert var in css
    # remove var(--jp-…, fallback) (nested ones too); no literal colour may be left outside a fallback
    stripped = css
    for _ in range(5):
        stripped = re.sub(r"var\(--[\w-]+(?:,(?:[^()]|\([^()]*\))*)?\)", "VAR", stripped)
    literal = re.findall(r"#[0-9a-fA-F]{3,8}\b|rgba?\(|(?<![\w-])(?:white|black|grey|gray)(?![\w-])", stripped)
    assert not literal, f"colours outside theme variables: {literal}"


# ------------------------------------------------------------------------------------ the grid
def _imaging(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "study_uid": [f"1.{i}" for i in range(n)],
                         "imaging_study_id": [f"s{i}" for i in range(n)], "modality": ["CR", "DX", "CR", "CT"][:n],
                         "description": [""] * n,
                         "started": pd.to_datetime([f"2020-01-0{i + 1}" for i in range(n)], utc=True)})


def _finding(i: int, prob: float) -> Finding:
    return Finding(f"p{i}", f"1.{i}", SNOMED, "233604007", "Pneumonia", "pneumonia", "1.0.0", probability=prob,
                   threshold=0.5, indeterminate=(0.4, 0.6))


def test_worklist_grid_sorts_picks_and_keeps_its_api() -> None:
    w = WorklistWidget(_imaging(), [_finding(0, 0.2), _finding(1, 0.95), _finding(2, 0.55)], now="2020-02-01")
    assert [c["label"] for c in w.grid.columns] == ["patient", "study date", "modality", "waited", "AI", "finding",
                                                    "score", "review"]
    assert [u for _, u in w.grid.options] == ["1.1", "1.2", "1.0", "1.3"]  # urgency order
    assert w.select is w.grid and len(w.grid.rows[0]["cells"]) == 8
    assert "cds-state-positive" in w.grid.rows[0]["cells"][4] and "0.950" in w.grid.rows[0]["cells"][6]
    picked: list[tuple[str, str]] = []
    w.on_select(lambda pid, uid: picked.append((pid, uid)))
    w.grid.value = "1.2"  # a click / Enter in the browser
    assert picked == [("p2", "1.2")]
    w.grid.sort_by, w.grid.sort_desc = "score", False  # a header click
    assert w.table["study_uid"].tolist() == ["1.0", "1.2", "1.1", "1.3"]  # missing score last
    assert [u for _, u in w.grid.options] == w.table["study_uid"].tolist() and w.grid.value == "1.2"
    w.grid.sort_desc = True
    assert w.table["study_uid"].tolist()[:3] == ["1.1", "1.2", "1.0"]
    w.grid.sort_by = "patient"
    assert w.table["patient_id"].tolist() == ["p3", "p2", "p1", "p0"]
    w.modality.value = "CR"
    assert w.table["study_uid"].tolist() == ["1.2", "1.0"] and w.grid.caption == "Worklist: 2 of 4 studies"
    w.refresh(findings=[_finding(0, 0.99)])
    assert w.table["study_uid"].tolist() == ["1.2", "1.0"] and w.grid.sort_by == "patient"
    w.pick("1.0")
    assert w.grid.value == "1.0" and picked[-1] == ("p0", "1.0")
    assert "<table" in w.static_html() and "cds-state-positive" in w.static_html()
    with pytest.raises(KeyError):
        w.pick("nope")


def test_reader_study_grid_has_no_ai_columns() -> None:
    w = WorklistWidget(_imaging(), [_finding(1, 0.95)], now="2020-02-01", blind=True)
    assert [c["key"] for c in w.grid.columns] == ["patient", "started", "modality", "waited", "review"]
    assert all(len(r["cells"]) == 5 and "cds-badge" not in "".join(r["cells"]) for r in w.grid.rows)


def test_refusals_show_their_badge_and_reason_in_grid_static_table_and_label() -> None:
    fails = [Failure("p1", "1.1", "pneumonia", "RecordMismatch", "PatientID x != p1", state="record-mismatch"),
             Failure("p2", "1.2", "pneumonia", "InputRejected", "blank image", state="input-rejected"),
             Failure("p3", "1.3", "pneumonia", "OutsideIntendedUse", "age 70 y above 18 y",
                     state="outside-intended-use")]
    w = WorklistWidget(_imaging(), [_finding(0, 0.9)], now="2020-02-01", failures=fails)
    rows = {r["uid"]: r for r in w.grid.rows}
    for fl in fails:
        r = rows[fl.study_uid]
        assert r["state"] == fl.state and f"cds-state-{fl.state}" in r["cells"][4]
        assert fl.message in r["cells"][5] and r["cells"][6] == ""  # the reason, never a score
        assert STATE_LABELS[fl.state] in r["label"] and fl.message in r["label"]
    html = worklist_html(w.full)
    assert all(STATE_LABELS[s] in html and STATE_ICONS[s] in html for s in REFUSALS)
    assert "age 70 y above 18 y" in html


# ------------------------------------------------------------------------------------ in Chromium
def _all_states_frame() -> pd.DataFrame:
    states = list(AI_STATES)
    n = len(states)
    return pd.DataFrame({
        "patient_id": [f"pat{i}" for i in range(n)], "study_uid": [f"2.{i}" for i in range(n)],
        "started": pd.to_datetime(["2020-03-01"] * n, utc=True), "modality": ["CR"] * n,
        "waited": pd.to_timedelta(range(n), unit="D"), "waited_text": [f"{i} d" for i in range(n)],
        "ai_state": states, "score": [0.9, 0.5, 12.0, 0.1, None, None, None, None],
        "finding": ["Pneumonia", "Pneumonia", "LVEF", "Pneumonia", None, None, None, None],
        "review_status": ["unreviewed"] * n,
        "failure": ["", "", "", "", "pneumonia: PatientID differs", "pneumonia: constant image",
                    "pneumonia: adult study, paediatric model", ""]})


def _grid_state(frame: pd.DataFrame) -> dict[str, Any]:
    from cds.explorer.widgets.static import worklist_cells, worklist_columns

    rows = [{"uid": t.study_uid, "label": row_label(r), "cells": worklist_cells(t), "state": t.ai_state}
            for t, (_, r) in zip(frame.itertuples(), frame.iterrows(), strict=True)]
    return {"columns": [{"key": k, "label": h} for k, h in worklist_columns()], "rows": rows, "value": None,
            "sort_by": "", "sort_desc": False, "caption": f"{len(rows)} studies", "max_rows": 12}


#: Renders the grid's ESM with a stand-in for the widget model (get/set/on/off/save_changes).
MOUNT = """async ({esm, state}) => {
  const listeners = {};
  window.__saved = [];
  const model = {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; for (const f of listeners['change:' + k] || []) f(); },
    save_changes: () => window.__saved.push(JSON.parse(JSON.stringify(state))),
    on: (e, f) => { (listeners[e] = listeners[e] || []).push(f); },
    off: (e, f) => { listeners[e] = (listeners[e] || []).filter((g) => g !== f); },
  };
  window.__state = state;
  const url = URL.createObjectURL(new Blob([esm], {type: 'text/javascript'}));
  const mod = await import(url);
  mod.default.render({model, el: document.getElementById('grid')});
}"""


def _page_html(theme: str, body: str) -> str:
    """A page styled like JupyterLab's ``theme``: its installed CSS variables, its page colours."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cds {theme}</title>"
            f"<style>{theme_css_path(theme).read_text(encoding='utf-8')}</style>"
            "<style>body {background: var(--jp-layout-color0); color: var(--jp-ui-font-color1); margin: 12px;"
            " font-family: var(--jp-ui-font-family)}</style>"
            f"{STYLE}</head><body data-jp-theme-light='{str(theme == 'light').lower()}'>{body}</body></html>")




def _open(browser: Any, tmp_path: Path, theme: str, scale: int = 1) -> Any:
    frame = _all_states_frame()
    body = ('<div class="cds-box" id="text"><h3>Case explorer</h3><p>Body text of the explorer.</p>'
            '<span class="cds-muted">muted note about waits</span></div>'
            f'{worklist_html(frame)}<div id="grid"></div>')
    page_path = tmp_path / f"{theme}.html"
    page_path.write_text(_page_html(theme, body), encoding="utf-8")
    page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=scale)
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(("file:", "blob:", "data:", "about:"))
            else outside.append(r.url))
    page.goto(page_path.as_uri())
    page.evaluate(MOUNT, {"esm": GRID_ESM, "state": _grid_state(frame)})
    page.locator("#grid tbody tr").first.wait_for()
    assert not outside, outside
    return page


@pytest.mark.browser
def test_worklist_grid_works_with_the_keyboard_alone(browser: Any, tmp_path: Path) -> None:
    page = _open(browser, tmp_path, "light")
    try:
        grid = page.locator("#grid table[role=grid]")
        assert grid.count() == 1
        assert page.locator("#grid th[aria-sort]").count() == 8
        rows = page.locator("#grid tbody tr")
        assert rows.count() == len(AI_STATES)
        # Tab from the page start reaches the header buttons, then the (one) focusable row
        page.locator("body").focus()
        for _ in range(8 + 1):
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.dataset.uid") == "2.0"
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.dataset.uid") == "2.2"
        page.keyboard.press("End")
        page.keyboard.press("ArrowUp")
        assert page.evaluate("document.activeElement.dataset.uid") == f"2.{len(AI_STATES) - 2}"
        page.keyboard.press("Enter")  # opens the study: the model's value is sent to the kernel
        saved = page.evaluate("window.__saved")
        assert saved and saved[-1]["value"] == f"2.{len(AI_STATES) - 2}"
        sel = page.locator("#grid tr[aria-selected=true]")
        assert sel.count() == 1 and sel.get_attribute("data-uid") == f"2.{len(AI_STATES) - 2}"
        assert "outside intended use" in sel.get_attribute("aria-label")
        page.keyboard.press("Home")
        page.keyboard.press(" ")
        assert page.evaluate("window.__saved")[-1]["value"] == "2.0"
        # sort from the keyboard: focus the "score" header button and press Enter, twice
        page.locator("#grid th[data-key=score] button").focus()
        page.keyboard.press("Enter")
        assert page.evaluate("window.__saved")[-1]["sort_by"] == "score"
        assert page.locator("#grid th[data-key=score]").get_attribute("aria-sort") == "ascending"
        page.keyboard.press("Enter")  # the focus stayed on the header: again reverses
        assert page.evaluate("window.__saved")[-1]["sort_desc"] is True
        assert page.locator("#grid th[data-key=score]").get_attribute("aria-sort") == "descending"
        # a mouse click picks too
        rows.nth(3).click()
        assert page.evaluate("window.__saved")[-1]["value"] == "2.3"
    finally:
        page.close()


def _measure(png: bytes, box: dict[str, float], scale: int, inset: int = 3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(background, text) colours inside ``box``: the commonest pixel, and the one of highest contrast to it."""
    from PIL import Image as PILImage

    img = np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"))
    x0, y0 = int((box["x"] + inset) * scale), int((box["y"] + inset / 2) * scale)
    x1, y1 = int((box["x"] + box["width"] - inset) * scale), int((box["y"] + box["height"] - inset / 2) * scale)
    px = img[y0:y1, x0:x1].reshape(-1, 3)
    colours, counts = np.unique(px, axis=0, return_counts=True)
    bg = tuple(int(c) for c in colours[counts.argmax()])
    text = max((tuple(int(c) for c in col) for col in colours), key=lambda c: contrast_ratio(c, bg))
    return bg, text


@pytest.mark.browser
@pytest.mark.parametrize("theme", ["dark", "light"])
def test_screenshot_contrast_of_badges_and_text(browser: Any, tmp_path: Path, theme: str) -> None:
    """Screenshot the static worklist, the grid and body text; measure the contrast from the pixels."""
    scale = 2
    page = _open(browser, tmp_path, theme, scale=scale)
    try:
        shot = tmp_path / f"explorer-{theme}.png"
        png = page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        palette = jupyterlab_palette(theme)
        expected_bg = {s: resolve(bg, palette) for s, (_fg, bg) in badge_colours().items()}
        badges = page.locator(".cds-badge")
        n = badges.count()
        assert n == 2 * len(AI_STATES)  # static table + grid
        measured: dict[str, float] = {}
        for i in range(n):
            b = badges.nth(i)
            state = next(c[len("cds-state-"):] for c in b.get_attribute("class").split() if c.startswith("cds-state-"))
            bg, text = _measure(png, b.bounding_box(), scale)
            # the badge really is painted with the theme's colours (CSS variables + color-mix applied)
            assert max(abs(a - e) for a, e in zip(bg, expected_bg[state], strict=True)) <= 3, (state, bg)
            measured[f"{state} #{i}"] = contrast_ratio(text, bg)
        low = {k: round(v, 2) for k, v in measured.items() if v < AA}
        assert not low, f"badges below 4.5:1 on the {theme} screenshot: {low}"
        for sel in ("#text p", "#text .cds-muted", "#grid tbody td"):
            bg, text = _measure(png, page.locator(sel).first.bounding_box(), scale, inset=0)
            ratio = contrast_ratio(text, bg)
            assert ratio >= AA, f"{sel} on the {theme} screenshot: {ratio:.2f}:1 ({text} on {bg})"
            if sel == "#text p":
                assert bg == tuple(int(round(c)) for c in resolve(BACKGROUND, palette))
        (tmp_path / f"contrast-{theme}.json").write_text(json.dumps(measured, indent=1))
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.slow
def test_voila_app_in_the_dark_theme_keyboard_and_screenshot_contrast(browser: Any, samples_dir: Path,
                                                                       tmp_path: Path) -> None:
    """The real app (``cds explorer --theme dark``): open a study with the keyboard, sort through the kernel,
    and measure the badges and the body text on a screenshot."""
    import cds
    from cds.explorer.app import run_explorer, save_findings

    cohort = cds.load_cohort(samples_dir, validate=False, reference_date="2020-06-02")
    img = cohort.imaging[cohort.imaging["pixel_location"].notna()]
    pids = sorted(img["patient_id"].unique())[:4]
    first = [img[img["patient_id"] == p].iloc[0] for p in pids]
    fs = [Finding(r.patient_id, r.study_uid, SNOMED, "233604007", "Pneumonia", "pneumonia", "1.0.0",
                  probability=p, threshold=0.5, indeterminate=(0.4, 0.6), series_uid=r.series_uid)
          for r, p in zip(first[:3], (0.93, 0.55, 0.05), strict=True)]
    refused = Failure(first[3].patient_id, first[3].study_uid, "pneumonia", "OutsideIntendedUse",
                      "adult radiograph, paediatric model", state="outside-intended-use")
    path = save_findings(fs, tmp_path / "findings.json", [refused])
    server = run_explorer(samples_dir, findings_json=path, reader_id="dr-a11y", store=tmp_path / "reviews.jsonl",
                          reference_date="2020-06-02", workdir=tmp_path / "app", block=False, quiet=True,
                          theme="dark")
    scale = 2
    page = browser.new_page(viewport={"width": 1400, "height": 1400}, device_scale_factor=scale)
    try:
        page.goto(server.url)
        rows = page.locator(".cds-worklist-grid tbody tr")
        rows.first.wait_for(timeout=120_000)
        page.locator(".cds-case-header").first.wait_for(timeout=60_000)
        # keyboard only: Tab into the grid's row, ↓ to the indeterminate study, Enter opens it
        page.locator(".cds-worklist-grid th button").last.focus()
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.dataset.uid") == fs[0].study_uid
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        page.wait_for_function("pid => [...document.querySelectorAll('.cds-case-header')].some("
                               "e => e.innerText.includes('Patient ' + pid))", arg=fs[1].patient_id, timeout=30_000)
        # sorting goes through the kernel and comes back in the new order
        page.locator(".cds-worklist-grid th[data-key=score] button").click()
        page.wait_for_function("uid => document.querySelector('.cds-worklist-grid tbody tr').dataset.uid === uid",
                               arg=fs[2].study_uid, timeout=30_000)
        assert page.locator(".cds-worklist-grid th[data-key=score]").get_attribute("aria-sort") == "ascending"
        page.locator(".cds-worklist-grid th[data-key=ai] button").click()
        page.wait_for_function("uid => document.querySelector('.cds-worklist-grid tbody tr').dataset.uid === uid",
                               arg=fs[0].study_uid, timeout=30_000)
        page.wait_for_timeout(500)
        shot = tmp_path / "voila-dark.png"
        png = page.screenshot(path=str(shot))
        dark = jupyterlab_palette("dark")
        dark_bgs = {tuple(int(round(c)) for c in resolve(v, dark)) for v in (BACKGROUND, SURFACE)}
        ratios: dict[str, float] = {}
        # the grid's first rows (further rows scroll inside it), the findings panel, the refusal summary
        badges = page.locator(".cds-worklist-grid tbody tr:nth-child(-n+5) .cds-badge, "
                              ".cds-findings-panel .cds-badge, .cds-explorer summary .cds-badge")
        seen = set()
        for i in range(badges.count()):
            b = badges.nth(i)
            box = b.bounding_box()
            assert box and box["y"] + box["height"] < 1400
            state = next(c[len("cds-state-"):] for c in b.get_attribute("class").split() if c.startswith("cds-state-"))
            bg, text = _measure(png, box, scale)
            ratios[f"{state} #{i}"] = contrast_ratio(text, bg)
            seen.add(state)
        assert {"positive", "indeterminate", "negative", "outside-intended-use", "no-ai"} <= seen, seen
        for sel in (".cds-case-header h3", ".cds-worklist-grid tbody td"):
            bg, text = _measure(png, page.locator(sel).first.bounding_box(), scale, inset=0)
            assert bg in dark_bgs, (sel, bg, dark_bgs)  # the dark theme is on (voila's page: layout-color1)
            ratios[sel] = contrast_ratio(text, bg)
        low = {k: round(v, 2) for k, v in ratios.items() if v < AA}
        (tmp_path / "contrast-voila-dark.json").write_text(json.dumps(ratios, indent=1))
        assert not low, f"below 4.5:1 on the voila dark screenshot ({shot}): {low}"
    finally:
        page.close()
        server.stop()
