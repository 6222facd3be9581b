"""Theme-aware colours of the explorer widgets, and the WCAG 2.x contrast maths that checks them.

Every colour the widgets use is a JupyterLab CSS variable (``--jp-ui-font-color*``, ``--jp-layout-color*``,
``--jp-brand-color*``, ``--jp-error-color*``, ``--jp-warn-color*``, ``--jp-success-color*``,
``--jp-info-color*``) with the JupyterLab Light value as the fallback (voila without a theme, a static
HTML export), so the widgets follow the light and the dark theme. A badge is a tint of its state's
colour over the page background (CSS ``color-mix``) with the page's strongest text colour on it, plus
an icon and its label (the state never rests on colour alone).

:func:`resolve` evaluates the CSS colour expressions used here against a theme palette
(:func:`jupyterlab_palette` reads the installed JupyterLab theme CSS), and :func:`contrast_ratio`
is the WCAG formula, so tests check the very CSS the widgets emit.

>>> light = jupyterlab_palette("light")
>>> round(contrast_ratio(resolve(TEXT, light), resolve(BACKGROUND, light)), 1)
21.0
>>> round(contrast_ratio((255, 255, 255), (118, 118, 118)), 2)
4.54
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "STATE_VARS", "STATE_ICONS", "TEXT", "BODY_TEXT", "MUTED_TEXT", "BACKGROUND", "SURFACE", "TINT",
    "state_colour", "badge_colours", "text_colours", "theme_css", "resolve", "contrast_ratio",
    "relative_luminance", "jupyterlab_palette", "theme_css_path",
]

RGB = tuple[float, float, float]

#: The colour of each AI state: (JupyterLab variable, its JupyterLab Light value as fallback).
STATE_VARS: dict[str, tuple[str, str]] = {
    "positive": ("--jp-error-color1", "#d32f2f"),
    "indeterminate": ("--jp-warn-color1", "#f57c00"),
    "measured": ("--jp-brand-color1", "#1976d2"),
    "negative": ("--jp-success-color1", "#388e3c"),
    "no-ai": ("--jp-layout-color4", "#757575"),
    "record-mismatch": ("--jp-error-color0", "#b71c1c"),
    "input-rejected": ("--jp-warn-color0", "#e65100"),
    "outside-intended-use": ("--jp-info-color0", "#006064"),
}
#: A text symbol per state, shown before its label (shape as well as colour).
STATE_ICONS: dict[str, str] = {
    "positive": "▲", "indeterminate": "◆", "measured": "●", "negative": "▽", "no-ai": "·",
    "record-mismatch": "≠", "input-rejected": "⊘", "outside-intended-use": "⊗",
}
#: States where the AI deliberately gave no answer (drawn with a dashed border besides icon and label).
NON_ANSWERS = ("record-mismatch", "input-rejected", "outside-intended-use")
#: Share of the state colour in a badge's background (the rest is the page background).
TINT = 22
TEXT = "var(--jp-ui-font-color0, #000)"
BODY_TEXT = "var(--jp-ui-font-color1, rgba(0, 0, 0, 0.87))"
MUTED_TEXT = "var(--jp-ui-font-color2, rgba(0, 0, 0, 0.54))"
BACKGROUND = "var(--jp-layout-color0, #fff)"
SURFACE = "var(--jp-layout-color1, #fff)"
BORDER = "var(--jp-border-color2, #e0e0e0)"


def state_colour(state: str) -> str:
    """``var(--jp-…, fallback)`` of a state (unknown states get the ``no-ai`` grey).

    >>> state_colour("positive")
    'var(--jp-error-color1, #d32f2f)'
    """
    var, fallback = STATE_VARS.get(state, STATE_VARS["no-ai"])
    return f"var({var}, {fallback})"


def _text_tone(colour: str, share: int = 72) -> str:
    """A state colour pulled towards the theme's text colour: dark on light themes, light on dark ones."""
    return f"color-mix(in srgb, {colour} {share}%, {TEXT})"


def badge_colours() -> dict[str, tuple[str, str]]:
    """state -> (text colour, background) CSS expressions of its badge."""
    return {s: (TEXT, f"color-mix(in srgb, {state_colour(s)} {TINT}%, {BACKGROUND})") for s in STATE_VARS}


def text_colours() -> dict[str, tuple[str, str]]:
    """Each kind of text the widgets show -> (text colour, the background it sits on)."""
    out: dict[str, tuple[str, str]] = {}
    for bg_name, bg in (("page", BACKGROUND), ("surface", SURFACE)):
        out[f"body on {bg_name}"] = (BODY_TEXT, bg)
        out[f"muted on {bg_name}"] = (MUTED_TEXT, bg)
        out[f"error on {bg_name}"] = (_text_tone(state_colour("positive")), bg)
        out[f"ok on {bg_name}"] = (_text_tone(state_colour("negative")), bg)
    sel = f"color-mix(in srgb, var(--jp-brand-color1, #1976d2) 18%, {BACKGROUND})"
    out["selected worklist row"] = (TEXT, sel)
    for style, colour in BUTTON_VARS.items():
        out[f"{style} button"] = (TEXT, _button_background(colour))
    return out


#: ipywidgets' button styles used by the explorer -> their JupyterLab colour (white text on these fails AA).
BUTTON_VARS = {"success": "var(--jp-success-color1, #388e3c)", "danger": "var(--jp-error-color1, #d32f2f)",
               "primary": "var(--jp-brand-color1, #1976d2)", "warning": "var(--jp-warn-color1, #f57c00)"}


def _button_background(colour: str) -> str:
    return f"color-mix(in srgb, {colour} 30%, {BACKGROUND})"


def theme_css() -> str:
    """The widgets' stylesheet (without ``<style>`` tags): text, boxes, badges, the worklist grid."""
    tc = text_colours()
    lines = [
        f".cds-static, .cds-box, .cds-grid {{font-family: var(--jp-ui-font-family, system-ui, sans-serif); "
        f"font-size: 13px; color: {BODY_TEXT}}}",
        ".cds-static h3, .cds-box h3 {margin: 4px 0 6px 0; font-size: 16px}",
        ".cds-static table, .cds-box table {border-collapse: collapse; font-size: 12px}",
        f".cds-static td, .cds-static th, .cds-box td, .cds-box th {{border-bottom: 1px solid {BORDER}; "
        "padding: 2px 6px; text-align: left !important; vertical-align: top}",
        f".cds-muted {{color: {MUTED_TEXT}; font-size: 12px}}",
        f".cds-error, .cds-failure {{color: {state_colour('positive')}; color: {tc['error on page'][0]}}}",
        f".cds-ok {{color: {state_colour('negative')}; color: {tc['ok on page'][0]}}}",
        f".cds-finding {{border: 1px solid {BORDER}; border-radius: 6px; padding: 6px 8px; margin: 4px 0; "
        f"background: {SURFACE}}}",
        ".cds-trends {display: flex; flex-wrap: wrap; gap: 6px}",
        f".cds-trend {{background: {BACKGROUND}; border: 1px solid {BORDER}; border-radius: 4px}}",
        f".cds-svg-text {{fill: {BODY_TEXT}}} .cds-svg-muted {{fill: {MUTED_TEXT}}}",
        f".cds-svg-axis {{stroke: {MUTED_TEXT}}} .cds-svg-ring {{stroke: {TEXT}}}",
        ".cds-svg-track {fill: var(--jp-layout-color2, #eee)}",
        ".cds-svg-imaging {stroke: var(--jp-brand-color2, #64b5f6)} .cds-svg-score {fill: var(--jp-brand-color1, #1976d2)}",
        f".cds-badge {{display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 12px; "
        f"font-weight: 600; white-space: nowrap; color: {TEXT}; border: 1px solid var(--cds-state); "
        f"background: {BACKGROUND}; background: color-mix(in srgb, var(--cds-state) {TINT}%, {BACKGROUND})}}",
        ".cds-badge-nonanswer {border-style: dashed}",
        ".cds-badge .cds-icon {margin-right: 4px}",
        ".cds-dot {fill: var(--cds-state)}",
        *(f".cds-live .jupyter-button.mod-{st} {{color: {TEXT}; background: {_button_background(c)}; "
          f"border: 1px solid {c}}}" for st, c in BUTTON_VARS.items()),
        *(f".cds-state-{s} {{--cds-state: {state_colour(s)}}}" for s in STATE_VARS),
        # the worklist grid
        ".cds-grid-wrap {overflow: auto; border: 1px solid " + BORDER + "; border-radius: 4px}",
        f".cds-grid {{border-collapse: collapse; width: 100%; background: {BACKGROUND}}}",
        f".cds-grid th {{position: sticky; top: 0; background: {SURFACE}; text-align: left; padding: 0; "
        f"border-bottom: 2px solid {BORDER}}}",
        f".cds-grid th button {{all: unset; box-sizing: border-box; width: 100%; padding: 4px 6px; cursor: pointer; "
        f"font-weight: 600; color: {TEXT}}}",
        ".cds-grid th button:focus-visible, .cds-grid tr:focus-visible {outline: 2px solid "
        "var(--jp-brand-color1, #1976d2); outline-offset: -2px}",
        f".cds-grid td {{padding: 3px 6px; border-bottom: 1px solid {BORDER}; color: {BODY_TEXT}; "
        "vertical-align: top}",
        ".cds-grid tbody tr {cursor: pointer}",
        f".cds-grid tbody tr:hover {{background: {SURFACE}}}",
        f".cds-grid tr[aria-selected='true'] {{background: {tc['selected worklist row'][1]}; "
        f"box-shadow: inset 4px 0 0 var(--jp-brand-color1, #1976d2)}}",
        f".cds-grid tr[aria-selected='true'] td {{color: {TEXT}}}",
        ".cds-grid .cds-num {font-variant-numeric: tabular-nums}",
        ".cds-sr-only {position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); "
        "white-space: nowrap}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- colour maths
_NAMED = {"white": (255.0, 255.0, 255.0, 1.0), "black": (0.0, 0.0, 0.0, 1.0), "transparent": (0.0, 0.0, 0.0, 0.0)}
RGBA = tuple[float, float, float, float]


def _split_args(body: str) -> list[str]:
    """Split ``a, b(c, d), e`` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    out.append(cur.strip())
    return out


def _parse_plain(text: str) -> RGBA:
    t = text.strip().lower()
    if t in _NAMED:
        return _NAMED[t]
    if t.startswith("#"):
        h = t[1:]
        if len(h) in (3, 4):
            h = "".join(c * 2 for c in h)
        vals = [int(h[i:i + 2], 16) for i in range(0, len(h), 2)]
        return (float(vals[0]), float(vals[1]), float(vals[2]), vals[3] / 255.0 if len(vals) == 4 else 1.0)
    m = re.fullmatch(r"rgba?\((.*)\)", t)
    if m:
        parts = [p for p in re.split(r"[\s,/]+", m.group(1)) if p]
        r, g, b = (float(p) for p in parts[:3])
        a = parts[3] if len(parts) > 3 else "1"
        return (r, g, b, float(a[:-1]) / 100 if a.endswith("%") else float(a))
    raise ValueError(f"cannot read the CSS colour {text!r}")


def resolve(expr: str, palette: Mapping[str, str], backdrop: RGB | None = None) -> RGB:
    """The sRGB colour (0..255 floats) of a CSS colour expression under ``palette`` (variable -> value).

    Understands hex, ``rgb()``/``rgba()``, ``white``/``black``, ``var(--x, fallback)`` and
    ``color-mix(in srgb, A p%, B)``; a translucent colour is composited over ``backdrop`` (default:
    the palette's ``--jp-layout-color0``).

    >>> resolve("color-mix(in srgb, var(--a, #000) 50%, #fff)", {})
    (127.5, 127.5, 127.5)
    >>> resolve("var(--t)", {"--t": "rgba(0,0,0,.5)", "--jp-layout-color0": "white"})
    (127.5, 127.5, 127.5)
    """
    r, g, b, a = _resolve_rgba(expr, palette, 0)
    if a >= 1.0:
        return (r, g, b)
    if backdrop is None:
        backdrop = resolve(palette.get("--jp-layout-color0", "#fff"), palette, (255.0, 255.0, 255.0))
    return (r * a + backdrop[0] * (1 - a), g * a + backdrop[1] * (1 - a), b * a + backdrop[2] * (1 - a))


def _resolve_rgba(expr: str, palette: Mapping[str, str], depth: int) -> RGBA:
    if depth > 20:
        raise ValueError(f"CSS variables nest too deep in {expr!r}")
    e = expr.strip()
    m = re.fullmatch(r"var\((.*)\)", e, flags=re.S)
    if m:
        args = _split_args(m.group(1))
        name = args[0]
        if name in palette:
            return _resolve_rgba(palette[name], palette, depth + 1)
        if len(args) < 2:
            raise ValueError(f"{name} is not in the palette and has no fallback")
        return _resolve_rgba(", ".join(args[1:]), palette, depth + 1)
    m = re.fullmatch(r"color-mix\((.*)\)", e, flags=re.S)
    if m:
        space, first, second = _split_args(m.group(1))
        if space.strip() != "in srgb":
            raise ValueError(f"only 'in srgb' mixing is understood, not {space!r}")
        c1, p1 = _colour_and_share(first, palette, depth)
        c2, p2 = _colour_and_share(second, palette, depth)
        if p1 is None and p2 is None:
            p1 = p2 = 0.5
        elif p1 is None:
            p1 = 1 - p2  # type: ignore[operator]
        elif p2 is None:
            p2 = 1 - p1
        total = p1 + p2  # type: ignore[operator]
        w1, w2 = p1 / total, p2 / total  # type: ignore[operator]
        a = c1[3] * w1 + c2[3] * w2
        if a == 0:
            return (0.0, 0.0, 0.0, 0.0)
        # premultiplied interpolation (CSS Color 5), then un-premultiply
        rgb = [(c1[i] * c1[3] * w1 + c2[i] * c2[3] * w2) / a for i in range(3)]
        return (rgb[0], rgb[1], rgb[2], a)
    return _parse_plain(e)


def _colour_and_share(arg: str, palette: Mapping[str, str], depth: int) -> tuple[RGBA, float | None]:
    m = re.fullmatch(r"(.*?)\s+([\d.]+)%", arg.strip(), flags=re.S)
    if m:
        return _resolve_rgba(m.group(1), palette, depth + 1), float(m.group(2)) / 100.0
    return _resolve_rgba(arg, palette, depth + 1), None


def relative_luminance(rgb: RGB) -> float:
    """WCAG 2.x relative luminance of an sRGB colour given as 0..255 channels.

    >>> relative_luminance((255, 255, 255)), relative_luminance((0, 0, 0))
    (1.0, 0.0)
    """
    def lin(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: RGB, b: RGB) -> float:
    """WCAG contrast ratio ``(L1 + 0.05) / (L2 + 0.05)`` of two colours (1 .. 21)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


# ----------------------------------------------------------------------------- JupyterLab themes
def theme_css_path(theme: str) -> Path:
    """The installed ``index.css`` of ``@jupyterlab/theme-<theme>-extension`` (``light`` or ``dark``)."""
    from jupyter_core.paths import jupyter_path

    rel = Path("lab", "themes", "@jupyterlab", f"theme-{theme}-extension", "index.css")
    for base in [Path(sys.prefix, "share", "jupyter"), *map(Path, jupyter_path())]:
        if (base / rel).is_file():
            return base / rel
    raise FileNotFoundError(f"JupyterLab's {theme} theme CSS ({rel}) is not installed (pip install jupyterlab)")


def jupyterlab_palette(theme: str) -> dict[str, str]:
    """The ``--jp-*`` custom properties of an installed JupyterLab theme (``light`` or ``dark``), as written.

    >>> jupyterlab_palette("dark")["--jp-layout-color0"]
    '#111'
    """
    css = theme_css_path(theme).read_text(encoding="utf-8")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"(--jp-[\w-]+)\s*:\s*([^;}]+)[;}]", css)}
