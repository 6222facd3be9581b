"""Training of the 2D reference models: a deterministic loop and operating points chosen on validation data.

:func:`deterministic` pins seeds and threads, :func:`train_network` fits a network with light
augmentation, :func:`youden_threshold` and :func:`band_around` choose the threshold and the
indeterminate band a card declares.

>>> band_around([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], 0.5, frac=0.2)
[0.2956, 0.6156]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["deterministic", "train_network", "youden_threshold", "band_around"]


@contextlib.contextmanager
def deterministic(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed python/numpy/torch, force deterministic torch kernels and ``threads`` CPU threads.

    The previous thread count and determinism flag are restored on exit.
    """
    import random

    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _augment(x: Any, rng: np.random.Generator, max_shift: int, gamma: float) -> Any:
    """Random translation (edge-replicated, up to ``max_shift`` px) and gamma jitter, per image."""
    import torch
    import torch.nn.functional as F

    if max_shift <= 0 and gamma <= 0:
        return x
    out = x
    if max_shift > 0:
        s = max_shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        h, w = x.shape[-2:]
        shifts = rng.integers(0, 2 * s + 1, size=(x.shape[0], 2))
        out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])
    if gamma > 0:
        g = torch.from_numpy(np.exp(rng.uniform(-gamma, gamma, size=(x.shape[0], 1, 1, 1))).astype(np.float32))
        out = out.clamp(0.0, 1.0) ** g
    return out


def train_network(
    net: Any,
    images: np.ndarray,
    labels: np.ndarray,
    tabular: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    pos_weight: float = 1.0,
    max_shift: int = 2,
    gamma: float = 0.2,
    seed: int = 0,
    desc: str = "training",
) -> list[float]:
    """Train ``net`` (binary, one logit) with AdamW + cosine schedule; returns the loss per epoch.

    ``images`` is (N, H, W) in [0, 1]; ``tabular`` (N, K) or None. Batches are drawn from a numpy
    generator seeded with ``seed``; call inside :func:`deterministic` for bit-reproducible weights.
    """
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.ascontiguousarray(images[:, None], dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32)[:, None])
    t = torch.from_numpy(np.asarray(tabular, dtype=np.float32)) if tabular is not None else None
    n = len(x)
    n_batches = max(1, int(np.ceil(n / batch_size)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * n_batches))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(pos_weight)]))
    losses: list[float] = []
    net.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=None):
        total = 0.0
        for idx in np.array_split(rng.permutation(n), n_batches):
            xb = _augment(x[idx], rng, max_shift, gamma)
            kwargs = {"tab": t[idx]} if t is not None else {}
            opt.zero_grad()
            loss = loss_fn(net(xb, **kwargs), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    net.eval()
    return losses


def youden_threshold(y: Sequence[int], p: Sequence[float]) -> float:
    """The score ``t`` (``p >= t`` positive) that maximises sensitivity + specificity - 1.

    Ties go to the lowest such score.

    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.35
    """
    from cds.evaluation.metrics import sens_spec_at_threshold

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    best_t, best_j = float(np.min(p)), -np.inf
    for t in np.unique(p):
        se, sp = sens_spec_at_threshold(y, p, t)
        if se + sp - 1 > best_j + 1e-12:
            best_t, best_j = float(t), se + sp - 1
    return best_t


def band_around(p_val: Sequence[float], t: float, frac: float = 0.05) -> list[float]:
    """Indeterminate band: scores from ``frac`` below to ``frac`` above ``t`` in the validation ranks.

    About ``2 * frac`` of validation cases (those nearest the threshold in rank) fall inside.

    >>> band_around(np.linspace(0, 1, 101), 0.5, 0.1)
    [0.395, 0.595]
    """
    p = np.sort(np.asarray(p_val, dtype=float))
    q = float(np.mean(p < t))
    lo = float(np.quantile(p, max(q - frac, 0.0)))
    hi = float(np.quantile(p, min(q + frac, 1.0)))
    return [round(min(lo, t), 4), round(max(hi, t), 4)]
