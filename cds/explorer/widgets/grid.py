"""An accessible, sortable data grid widget for the worklist (anywidget: the JavaScript is inline, no CDN).

It renders a real ``<table role="grid">`` in the page: column headers are buttons with ``aria-sort``
(click or Enter/Space sorts; again reverses), rows are focusable (roving ``tabindex``: Tab reaches the
grid, ↑/↓/Home/End/PageUp/PageDown move between rows, Enter or Space opens the row, a click does too),
each row carries an ``aria-label`` with its whole content, and the picked row has ``aria-selected``.
Colours come from JupyterLab CSS variables (:mod:`cds.explorer.widgets.theme`). Sorting itself happens
in Python (the owner listens to ``sort_by`` / ``sort_desc`` and sends rows back in the new order), so
the kernel's table is always the one on screen.

Why not ipydatagrid: it draws on a ``<canvas>`` (screen readers get nothing, colours do not follow CSS
variables), and it is not among the pinned packages; anywidget is already installed with ipyniivue.

>>> g = WorklistGrid(columns=[{"key": "patient", "label": "patient"}],
...                  rows=[{"uid": "1", "label": "p1", "cells": ["p1"], "state": "no-ai"}])
>>> g.options, g.value
([('p1', '1')], None)
"""

from __future__ import annotations

from typing import Any

import anywidget
import traitlets as T

from cds.explorer.widgets.theme import theme_css

__all__ = ["WorklistGrid", "GRID_ESM"]

GRID_ESM = r"""
const NAV = {ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10};

function render({ model, el }) {
  const wrap = document.createElement("div");
  wrap.className = "cds-grid-wrap";
  wrap.setAttribute("data-lm-suppress-shortcuts", "true");  // JupyterLab: arrows/Enter stay ours
  const table = document.createElement("table");
  table.className = "cds-grid";
  table.setAttribute("role", "grid");
  const caption = document.createElement("caption");
  caption.className = "cds-sr-only";  // the table's name for screen readers; the count is shown above
  const thead = document.createElement("thead");
  const tbody = document.createElement("tbody");
  table.append(caption, thead, tbody);
  wrap.append(table);
  el.append(wrap);
  let active = null;  // uid of the row that Tab reaches

  function rows() { return model.get("rows") || []; }

  function pick(uid) {
    active = uid;
    model.set("value", uid);
    model.save_changes();
  }

  function focusRow(uid) {
    const tr = tbody.querySelector(`tr[data-uid="${CSS.escape(uid)}"]`);
    if (!tr) return;
    for (const other of tbody.querySelectorAll("tr")) other.tabIndex = -1;
    tr.tabIndex = 0;
    active = uid;
    tr.focus();
    tr.scrollIntoView({block: "nearest"});
  }

  function drawHead() {
    const sortBy = model.get("sort_by"), desc = model.get("sort_desc");
    const focused = thead.contains(document.activeElement) ? document.activeElement.closest("th") : null;
    const focusKey = focused ? focused.dataset.key : null;  // keep the focus on a header sorted by keyboard
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    for (const col of model.get("columns") || []) {
      const th = document.createElement("th");
      th.scope = "col";
      th.setAttribute("role", "columnheader");
      th.dataset.key = col.key;
      const on = sortBy === col.key;
      th.setAttribute("aria-sort", on ? (desc ? "descending" : "ascending") : "none");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "cds-sort";
      b.title = `Sort by ${col.label}` + (on ? (desc ? " (now descending)" : " (now ascending)") : "");
      b.textContent = col.label;
      if (on) {
        const arrow = document.createElement("span");
        arrow.setAttribute("aria-hidden", "true");
        arrow.textContent = desc ? " ▼" : " ▲";
        b.append(arrow);
      }
      b.addEventListener("click", () => {
        const again = model.get("sort_by") === col.key;
        model.set("sort_by", col.key);
        model.set("sort_desc", again ? !model.get("sort_desc") : false);
        model.save_changes();
      });
      th.append(b);
      tr.append(th);
    }
    thead.replaceChildren(tr);
    if (focusKey !== null) {
      const again = thead.querySelector(`th[data-key="${CSS.escape(focusKey)}"] button`);
      if (again) again.focus();
    }
  }

  function drawBody() {
    const hadFocus = tbody.contains(document.activeElement);
    const value = model.get("value"), list = rows();
    if (active === null || !list.some(r => r.uid === active)) active = value;
    if (!list.some(r => r.uid === active)) active = list.length ? list[0].uid : null;
    const frag = document.createDocumentFragment();
    list.forEach((r, i) => {
      const tr = document.createElement("tr");
      tr.setAttribute("role", "row");
      tr.setAttribute("aria-rowindex", String(i + 2));
      tr.setAttribute("aria-selected", r.uid === value ? "true" : "false");
      tr.setAttribute("aria-label", r.label);
      tr.dataset.uid = r.uid;
      tr.dataset.state = r.state || "";
      tr.tabIndex = r.uid === active ? 0 : -1;
      for (const html of r.cells) {
        const td = document.createElement("td");
        td.setAttribute("role", "gridcell");
        td.innerHTML = html;  // built and escaped in Python
        tr.append(td);
      }
      frag.append(tr);
    });
    tbody.replaceChildren(frag);
    table.setAttribute("aria-rowcount", String(list.length + 1));
    caption.textContent = model.get("caption");
    wrap.style.maxHeight = `${model.get("max_rows") * 30 + 34}px`;
    if (hadFocus && active !== null) focusRow(active);
  }

  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-uid]");
    if (!tr) return;
    focusRow(tr.dataset.uid);
    pick(tr.dataset.uid);
  });
  tbody.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-uid]");
    if (!tr) return;
    const uids = rows().map(r => r.uid);
    const i = uids.indexOf(tr.dataset.uid);
    let next = null;
    if (e.key in NAV) next = Math.max(0, Math.min(uids.length - 1, i + NAV[e.key]));
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = uids.length - 1;
    else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      e.stopPropagation();
      pick(tr.dataset.uid);
      return;
    } else return;
    e.preventDefault();
    e.stopPropagation();
    focusRow(uids[next]);
  });

  const redraw = () => { drawHead(); drawBody(); };
  const handlers = [["change:columns", redraw], ["change:sort_by", drawHead], ["change:sort_desc", drawHead],
                    ["change:rows", drawBody], ["change:value", drawBody], ["change:caption", drawBody],
                    ["change:max_rows", drawBody]];
  for (const [evt, fn] of handlers) model.on(evt, fn);
  redraw();
  return () => { for (const [evt, fn] of handlers) model.off(evt, fn); };
}

export default { render };
"""


class WorklistGrid(anywidget.AnyWidget):
    """The grid (see the module docstring): ``columns`` ``[{key, label}]``, ``rows`` ``[{uid, label, cells, state}]``.

    ``value`` is the picked row's ``uid`` (set by a click or Enter/Space, or from Python);
    ``sort_by`` / ``sort_desc`` are the column the reader asked to sort by (``""``: the owner's order).
    """

    _esm = GRID_ESM
    _css = theme_css()
    columns = T.List(T.Dict()).tag(sync=True)
    rows = T.List(T.Dict()).tag(sync=True)
    value = T.Unicode(None, allow_none=True).tag(sync=True)
    sort_by = T.Unicode("").tag(sync=True)
    sort_desc = T.Bool(False).tag(sync=True)
    caption = T.Unicode("").tag(sync=True)
    max_rows = T.Int(10).tag(sync=True)

    @property
    def options(self) -> list[tuple[str, str]]:
        """``(row label, uid)`` in screen order (the accessible name of each row)."""
        return [(r["label"], r["uid"]) for r in self.rows]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("cds-worklist-grid")
