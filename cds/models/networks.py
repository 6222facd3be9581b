"""Networks of the 2D reference models: a small MONAI CNN that can also take tabular inputs, batch logits.

:func:`tabular_cnn2d` is what the pneumonia and cxr-cardiomegaly bundles name as ``network_def``
(``"_target_": "cds.models.networks.tabular_cnn2d"``); torch and MONAI are imported inside the functions.

>>> sigmoid(np.array([0.0, 2.0])).round(4).tolist()
[0.5, 0.8808]
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["tabular_cnn2d", "predict_logits", "sigmoid"]


@functools.cache
def _tabular_cnn_class() -> type:
    from collections import OrderedDict

    import torch
    from monai.networks.blocks import Convolution
    from torch import nn

    class TabularCNN2d(nn.Module):
        """Conv stages (2 x conv-BN-ReLU, then 2x2 max-pool) -> global average -> [+ tabular] -> logit."""

        def __init__(self, in_channels: int = 1, n_tabular: int = 0, width: int = 16, n_stages: int = 3,
                     dropout: float = 0.2) -> None:
            super().__init__()
            self.n_tabular = int(n_tabular)
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            c_in = in_channels
            for s in range(n_stages):
                c = width * 2**s
                if s > 0:
                    layers[f"pool{s}"] = nn.MaxPool2d(2)
                layers[f"stage{s}"] = nn.Sequential(
                    Convolution(2, c_in, c, kernel_size=3, act="RELU", norm="BATCH"),
                    Convolution(2, c, c, kernel_size=3, act="RELU", norm="BATCH"),
                )
                c_in = c
            self.features = nn.Sequential(layers)
            self.last_layer = f"features.stage{n_stages - 1}"
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(c_in + self.n_tabular, 1)

        def forward(self, x: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
            f = self.pool(self.features(x)).flatten(1)
            if self.n_tabular:
                if tab is None:
                    raise ValueError(f"this network needs {self.n_tabular} tabular input(s) (argument tab)")
                f = torch.cat([f, tab.to(f.dtype)], dim=1)
            return self.head(self.drop(f))

    return TabularCNN2d


def tabular_cnn2d(in_channels: int = 1, n_tabular: int = 0, width: int = 16, n_stages: int = 3,
                  dropout: float = 0.2) -> Any:
    """A small 2D CNN built from MONAI ``Convolution`` blocks, optionally fused with tabular inputs.

    Used as a bundle's ``network_def`` (``"_target_": "cds.models.networks.tabular_cnn2d"``).
    ``forward(x, tab=None)`` returns one logit per image; the GradCAM layer is ``net.last_layer``.

    >>> import torch
    >>> net = tabular_cnn2d(n_tabular=2, width=4)
    >>> net(torch.zeros(3, 1, 28, 28), tab=torch.zeros(3, 2)).shape
    torch.Size([3, 1])
    """
    return _tabular_cnn_class()(in_channels, n_tabular, width, n_stages, dropout)


def predict_logits(net: Any, images: np.ndarray, tabular: np.ndarray | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Logits (N,) of a one-logit network on (N, H, W) images in [0, 1]."""
    import torch

    net.eval()
    out = []
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size, None], dtype=np.float32))
            kwargs = {}
            if tabular is not None:
                kwargs["tab"] = torch.from_numpy(np.asarray(tabular[start:start + batch_size],
                                                            dtype=np.float32)).to(device)
            out.append(net(xb.to(device), **kwargs)[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function.

    >>> sigmoid(np.array([0.0])).tolist()
    [0.5]
    """
    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
