"""The image viewer widget: window/level presets, slice slider, zoom/pan, AI overlays; optional 3D tab.

Rendering happens in the kernel (:mod:`cds.images.render`) and reaches the browser as a PNG in an
``ipywidgets.Image``; a control change re-renders one slice (a few ms for 512x512). Volumes get a
"3D" tab with ipyniivue (its viewer JavaScript ships inside the wheel, so it works offline); it is
built only when the tab is opened.

>>> import numpy as np
>>> from cds.images.image import Image
>>> v = ImageViewer()
>>> v.set_image(Image(np.arange(64, dtype=np.int16).reshape(8, 8), (1.0, 1.0), (0, 0, 0), np.eye(3), "CR"))
>>> v.image.value[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np

from cds.explorer.widgets.static import StaticFallback, image_html
from cds.images import render

__all__ = ["ImageViewer"]


class ImageViewer(StaticFallback, W.VBox):
    """2D viewer of a :class:`cds.images.image.Image` with overlays (see the module docstring).

    Attributes
    ----------
    image : ipywidgets.Image
        The rendered PNG.
    preset, level, width, slice, zoom, pan_x, pan_y, show_overlays, opacity
        The controls (public so that tests and notebooks can drive them).
    last_render_ms : float
        Kernel time of the latest render (window, overlays, PNG encode).
    """

    def __init__(self, out_size: int = 512, **kwargs: Any) -> None:
        self.out_size = out_size
        self.img: Any = None
        self.overlays: list[render.Overlay] = []
        self.presets: dict[str, tuple[float, float]] = {}
        self.last_render_ms = 0.0
        self.render_count = 0
        self._hold = False
        self._nifti: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        cont = {"continuous_update": True}

        def slider() -> dict[str, Any]:  # a Layout per widget: a shared one would hide all when one hides
            return {"layout": W.Layout(width="250px"), "style": {"description_width": "52px"}}

        self.image = W.Image(format="png", layout=W.Layout(width=f"{out_size}px", max_width="100%",
                                                            border="1px solid var(--jp-border-color1, #bdbdbd)"))
        self.image.add_class("cds-viewer-image")
        self.preset = W.Dropdown(description="Window", options=[], layout=W.Layout(width="200px"),
                                 style={"description_width": "52px"})
        self.level = W.FloatSlider(description="Level", **cont, **slider(), readout_format=".0f")
        self.width = W.FloatSlider(description="Width", min=1, **cont, **slider(), readout_format=".0f")
        self.slice = W.IntSlider(description="Slice", min=0, max=0, **cont, **slider())
        self.zoom = W.FloatSlider(description="Zoom", min=1.0, max=8.0, step=0.25, value=1.0, **cont, **slider())
        self.pan_x = W.FloatSlider(description="Pan ↔", min=0.0, max=1.0, step=0.01, value=0.5, **cont, **slider())
        self.pan_y = W.FloatSlider(description="Pan ↕", min=0.0, max=1.0, step=0.01, value=0.5, **cont, **slider())
        self.show_overlays = W.Checkbox(description="AI overlay", value=True, indent=False,
                                        layout=W.Layout(width="110px"))
        self.opacity = W.FloatSlider(description="Opacity", min=0.0, max=1.0, step=0.05, value=0.4, **cont, **slider())
        self.reset = W.Button(description="Reset view", layout=W.Layout(width="110px", margin="0 0 0 40px"))
        self.info = W.HTML()
        for w in (self.preset, self.level, self.width, self.slice, self.zoom, self.pan_x, self.pan_y, self.opacity,
                  self.show_overlays, self.reset):
            w.add_class("cds-viewer-control")
        self.slice.add_class("cds-slice")
        self.level.add_class("cds-level")
        self.preset.observe(self._on_preset, "value")
        for w in (self.level, self.width, self.slice, self.zoom, self.pan_x, self.pan_y, self.opacity,
                  self.show_overlays):
            w.observe(self._on_control, "value")
        self.reset.on_click(lambda _b: self.reset_view())
        self.controls = W.VBox([
            W.HBox([self.preset, self.reset]),
            W.HBox([self.level, self.width]),
            W.HBox([self.slice, self.zoom]),
            W.HBox([self.pan_x, self.pan_y]),
            W.HBox([self.show_overlays, self.opacity]),
        ])
        self.view2d = W.VBox([self.controls, self.image, self.info])
        self.view3d = W.VBox([W.HTML("<i>Open this tab to load the volume in the 3D viewer (ipyniivue).</i>")])
        self.tabs = W.Tab(children=[self.view2d, self.view3d], titles=("2D", "3D"))
        self.tabs.observe(self._on_tab, "selected_index")
        super().__init__([self.view2d], **kwargs)
        self.add_class("cds-viewer")
        self.add_class("cds-live")

    # ---------------------------------------------------------------------------------- state
    @contextmanager
    def _batch(self) -> Any:
        """Change several controls with one render at the end."""
        self._hold = True
        try:
            yield
        finally:
            self._hold = False

    def set_image(self, img: Any, overlays: list[render.Overlay] | None = None) -> None:
        """Show a new image (a :class:`cds.images.image.Image`): presets, slider ranges, middle slice, render."""
        self.img = img
        self.overlays = list(overlays or [])
        self.presets = render.window_presets(img)
        arr = np.asarray(img.array)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        lvl = [c for c, _ in self.presets.values()]
        wid = [w for _, w in self.presets.values()]
        with self._batch():
            self.level.min, self.level.max = -1e9, 1e9  # widen first so min <= max holds while updating
            self.level.min, self.level.max = min(lo, *lvl), max(hi, *lvl)
            self.level.step = max((self.level.max - self.level.min) / 500.0, 1e-3)
            self.width.max = max(2.0 * (hi - lo), *wid, 2.0)
            self.width.min = 1e-3 if arr.dtype.kind == "f" and hi - lo < 10 else 1.0
            self.width.step = max(self.width.max / 1000.0, 1e-3)
            n = arr.shape[0] if arr.ndim == 3 else 1
            self.slice.max = max(n - 1, 0)
            self.slice.value = n // 2 if n > 1 else 0
            self.slice.layout.display = "flex" if n > 1 else "none"
            self.zoom.value, self.pan_x.value, self.pan_y.value = 1.0, 0.5, 0.5
            self.show_overlays.disabled = not self.overlays
            self.opacity.disabled = not self.overlays
            self.preset.options = list(self.presets)
            self.preset.value = render.default_preset(img) if render.default_preset(img) in self.presets else "auto"
            c, w = self.presets[self.preset.value]
            self.level.value, self.width.value = c, w
        self.children = [self.tabs] if n > 1 else [self.view2d]
        if n > 1:
            self.tabs.selected_index = 0
            self.view3d.children = [W.HTML("<i>Open this tab to load the volume in the 3D viewer (ipyniivue).</i>")]
            self._nifti = None
        self.render()

    def set_overlays(self, overlays: list[render.Overlay]) -> None:
        """Replace the AI overlays (e.g. when the AI is revealed in a reader study) and re-render."""
        self.overlays = list(overlays)
        self.show_overlays.disabled = not self.overlays
        self.opacity.disabled = not self.overlays
        self.render()

    def reset_view(self) -> None:
        with self._batch():
            self.zoom.value, self.pan_x.value, self.pan_y.value = 1.0, 0.5, 0.5
            if self.img is not None:
                self.preset.value = None
                self.preset.value = render.default_preset(self.img) if render.default_preset(self.img) in \
                    self.presets else "auto"
        self.render()

    def _on_preset(self, change: dict[str, Any]) -> None:
        name = change["new"]
        if name is None or name not in self.presets:
            return
        c, w = self.presets[name]
        hold = self._hold
        self._hold = True
        try:
            self.level.value, self.width.value = c, w
        finally:
            self._hold = hold
        if not hold:
            self.render()

    def _on_control(self, change: dict[str, Any]) -> None:
        if self._hold:
            return
        if change["owner"] in (self.level, self.width) and self.preset.value is not None:
            c, w = self.presets.get(self.preset.value, (np.nan, np.nan))
            # the browser snaps slider values to the step and echoes them back: within a step is the preset
            if abs(self.level.value - c) > self.level.step or abs(self.width.value - w) > self.width.step:
                self._hold = True
                try:
                    self.preset.value = None  # a manual window is no longer the preset
                finally:
                    self._hold = False
        self.render()

    # --------------------------------------------------------------------------------- render
    def render_bytes(self) -> bytes:
        """PNG of the current view (what :meth:`render` shows)."""
        if self.img is None:
            return b""
        ovs = self.overlays if self.show_overlays.value else []
        return render.render_png(self.img.array, (self.level.value, self.width.value), self.slice.value,
                                 self.zoom.value, (self.pan_y.value, self.pan_x.value), ovs, self.opacity.value,
                                 self.out_size)

    def render(self) -> None:
        """Re-render the current slice into :attr:`image` and record the time taken."""
        if self.img is None or self._hold:
            return
        t0 = time.perf_counter()
        png = self.render_bytes()
        self.last_render_ms = (time.perf_counter() - t0) * 1000.0
        self.render_count += 1
        self.image.value = png
        n = self.img.array.shape[0] if self.img.array.ndim == 3 else 1
        on_slice = render.overlays_on_slice(self.overlays, self.slice.value)
        ov_txt = (f" · {len(on_slice)} AI overlay(s) on this slice" if self.overlays and self.show_overlays.value
                  else (" · AI overlay off" if self.overlays else ""))
        sl = f"slice {self.slice.value + 1}/{n} · " if n > 1 else ""
        self.info.value = (f'<span class="cds-muted">{self.img.modality or ""} {self.img.shape} · {sl}'
                           f"L {self.level.value:.0f} W {self.width.value:.0f} · zoom {self.zoom.value:g}{ov_txt}"
                           f" · rendered in {self.last_render_ms:.1f} ms</span>")

    # ------------------------------------------------------------------------------------ 3D
    def _on_tab(self, change: dict[str, Any]) -> None:
        if change["new"] == 1:
            self.open_3d()

    def open_3d(self) -> Any:
        """Build the ipyniivue 3D view of the current volume (written to a temporary NIfTI file)."""
        if self.img is None or self.img.array.ndim != 3:
            return None
        if self._nifti is not None and self.view3d.children and not isinstance(self.view3d.children[0], W.HTML):
            return self.view3d.children[0]
        try:
            from ipyniivue import NiiVue

            from cds.images.nifti import write_nifti
        except ImportError as exc:
            self.view3d.children = [W.HTML(f"<b>3D view unavailable:</b> {exc} (install ipyniivue==2.4.4)")]
            return None
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="cds-3d-")
        self._nifti = write_nifti(self.img, Path(self._tmpdir.name) / "volume.nii.gz")
        nv = NiiVue(height=420)
        c, w = self.level.value, self.width.value
        nv.load_volumes([{"path": str(self._nifti), "cal_min": c - w / 2, "cal_max": c + w / 2}])
        self.view3d.children = [nv]
        return nv

    # -------------------------------------------------------------------------------- static
    def static_html(self) -> str:
        """The current view as an inlined PNG."""
        return image_html(self.image.value, "image")
