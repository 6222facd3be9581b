"""Explanations: GradCAM maps of a 2D CNN on the input image's grid (what :meth:`cds.models.task.Task.explain`
returns for pneumonia and cxr-cardiomegaly, and what the registry saves as ``Finding.extra["heatmap"]``)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

__all__ = ["gradcam_map"]


def gradcam_map(net: Any, image01: np.ndarray, tabular: np.ndarray | None = None,
                layer: str | None = None, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """GradCAM (``monai.visualize.GradCAM``) of the logit for one prepared image, scaled to [0, 1].

    Runs on a copy of ``net`` so the hooks GradCAM registers never pile up on a cached network.
    ``out_shape`` resizes the map (e.g. to the original image) for overlays.
    """
    import torch
    from monai.visualize import GradCAM

    work = copy.deepcopy(net).eval()
    cam = GradCAM(nn_module=work, target_layers=layer or work.last_layer)
    x = torch.from_numpy(np.ascontiguousarray(image01[None, None], dtype=np.float32))
    kwargs = {"tab": torch.from_numpy(np.asarray(tabular, np.float32)[None])} if tabular is not None else {}
    with torch.enable_grad():
        m = cam(x, class_idx=0, **kwargs)
    cam_map = m[0, 0].detach().cpu().numpy().astype(np.float32)
    if out_shape is not None and tuple(out_shape) != cam_map.shape:
        from skimage.transform import resize

        cam_map = resize(cam_map, out_shape, order=1, preserve_range=True).astype(np.float32)
    return cam_map
