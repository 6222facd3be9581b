"""Generic kinds: a MONAI bundle of your own runs through the registry with no cds code.

Its ``configs/metadata.json`` ``cds`` section declares a ``kind`` (instead of a reference ``task``),
the coded ``outputs`` and, for classifiers and detectors, the ``threshold`` and ``indeterminate``
band; ``configs/inference.json`` holds ``network_def`` and optionally ``preprocessing`` and
``inferer``. Every key is documented in :mod:`cds.models.bundle`. The kinds:

=====================  ======================================  ==========================================
kind                   network output                           Findings
=====================  ======================================  ==========================================
``classification-2d``  ``(1, C)`` logits of a ``(rows, cols)``  one per output: probability of its channel
``classification-3d``  ``(1, C)`` logits of a volume            one per output: probability of its channel
``segmentation``       ``(1, C, *spatial)`` logits              one per present label: volume, LPS box
``box-detection``      ``(1, C, *spatial)`` per-voxel logits    one per region >= floor: max probability,
                                                                LPS box, centre, volume
=====================  ======================================  ==========================================

>>> sorted(KINDS)
['box-detection', 'classification-2d', 'classification-3d', 'segmentation']
>>> KINDS["segmentation"].predict.__qualname__
'SegmentationKind.predict'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cds.errors import ModelInputError
from cds.finding import Finding, Location
from cds.models.bundle import BundleError
from cds.models.task import Task, image_ref

if TYPE_CHECKING:
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.card import ModelCard, OutputSpec
    from cds.models.ehr_inputs import EhrInputs

__all__ = ["KINDS", "ClassificationKind", "SegmentationKind", "BoxDetectionKind", "region_boxes"]


def _pixels(image: Image, ndim: int, kind: str) -> np.ndarray:
    arr = np.asarray(image.array)
    if arr.ndim != ndim:
        shape = "(rows, cols)" if ndim == 2 else "(slices, rows, cols)"
        raise ModelInputError("image", f"a {kind} model needs a {ndim}D image {shape}; {image.source or 'the image'} "
                                       f"has shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ModelInputError("image", f"{image.source or 'the image'} has NaN or infinite pixels")
    return arr.astype(np.float32)


def _preprocess(bundle: Bundle, x: np.ndarray) -> Any:
    """The channel-first tensor after the bundle's ``preprocessing`` (array transforms), batched."""
    import torch

    parser = bundle.parser()
    t: Any = torch.from_numpy(x[None])
    if "preprocessing" in parser:
        try:
            pre = parser.get_parsed_content("preprocessing")
        except Exception as exc:  # noqa: BLE001 - name the bundle, the key and the reason
            raise BundleError(f"{bundle.path}/configs/inference.json: cannot build 'preprocessing': {exc}") from exc
        t = pre(t)
    return torch.as_tensor(t, dtype=torch.float32)[None]


def _forward(bundle: Bundle, batch: Any) -> np.ndarray:
    """Logits of the network (through the bundle's ``inferer`` when it has one) as a numpy array."""
    import torch

    net = bundle.network()
    parser = bundle.parser()
    with torch.inference_mode():
        if "inferer" in parser:
            try:
                inferer = parser.get_parsed_content("inferer")
            except Exception as exc:  # noqa: BLE001
                raise BundleError(f"{bundle.path}/configs/inference.json: cannot build 'inferer': {exc}") from exc
            out = inferer(batch, net)
        else:
            out = net(batch)
    return np.asarray(torch.as_tensor(out).float().numpy())


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _channel(card: ModelCard, o: OutputSpec, n: int, bundle: Bundle) -> int:
    if o.channel >= n:
        raise BundleError(f"{bundle.path}/configs/metadata.json: output {o.display!r} reads channel {o.channel} "
                          f"but the network gives {n} channel(s)")
    return o.channel


def _to_grid(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(C, *spatial)`` probabilities resized (linear) to the image grid ``shape`` when they differ."""
    if tuple(prob.shape[1:]) == tuple(shape):
        return prob
    import torch
    import torch.nn.functional as F  # noqa: N812

    mode = "bilinear" if len(shape) == 2 else "trilinear"
    t = F.interpolate(torch.from_numpy(prob[None].astype(np.float32)), size=tuple(shape), mode=mode,
                      align_corners=False)
    return t[0].numpy()


def _common(bundle: Bundle, image: Image, o: OutputSpec, ehr: EhrInputs) -> dict[str, Any]:
    card = bundle.model_card
    ref = image_ref(image)
    return dict(patient_id=ref.patient_id, study_uid=ref.study_uid, code_system=o.code_system, code=o.code,
                display=o.display, model_id=bundle.model_id, model_version=bundle.version,
                series_uid=ref.series_uid, instance_uids=ref.instance_uids, ehr_inputs=dict(ehr or {}),
                prognostic=card.prognostic)


def region_boxes(image: Image, index_lo: np.ndarray, index_hi: np.ndarray) -> Location:
    """The Location box around voxels ``index_lo..index_hi`` (array axis order, inclusive): LPS mm over the
    voxel centres when the image has a patient frame, else pixel ``(x, y) = (col, row)``.

    >>> from cds.images.image import Image
    >>> img = Image(np.zeros((4, 6, 8)), (2.0, 0.5, 0.5), (10.0, 20.0, 30.0), np.eye(3), "CT", {}, "demo")
    >>> region_boxes(img, np.array([1, 2, 3]), np.array([2, 4, 5])).coords
    (12.0, 21.0, 31.5, 14.0, 22.0, 32.5)
    """
    from cds.images.image import index_to_lps

    lo, hi = np.asarray(index_lo, dtype=float), np.asarray(index_hi, dtype=float)
    if image.meta.get("patient_frame", True):
        corners = np.array(np.meshgrid(*[(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"))
        pts = index_to_lps(image, corners.reshape(len(lo), -1).T)
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
        return Location("box", tuple(round(float(v), 4) for v in box), frame="LPS")
    if len(lo) != 2:
        raise ModelInputError("image", f"{image.source or 'the image'} has no patient frame; a 3D box needs one")
    return Location("box", (float(lo[1]), float(lo[0]), float(hi[1]), float(hi[0])), frame="pixel")


def _voxel_ml(image: Image) -> float:
    """Volume of one voxel in mL (area in mm^2 for a 2D image)."""
    v = float(np.prod([float(s) for s in image.spacing[: image.ndim]]))
    return v / 1000.0 if image.ndim == 3 else v


class ClassificationKind(Task):
    """``classification-2d`` / ``classification-3d``: one Finding per declared output, its channel's probability."""

    def __init__(self, name: str, ndim: int) -> None:
        self.name, self.ndim = name, ndim

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """Preprocess, forward, activation over channels; one Finding per ``outputs`` entry."""
        card = bundle.model_card
        logits = _forward(bundle, _preprocess(bundle, _pixels(image, self.ndim, self.name)))
        logits = logits.reshape(logits.shape[0], -1)[0]
        act = card.activation or ("softmax" if logits.size > 1 else "sigmoid")
        prob = _softmax(logits, 0) if act == "softmax" else _sigmoid(logits)
        extra = ({"class_probabilities": {o.display: round(float(prob[_channel(card, o, prob.size, bundle)]), 6)
                                          for o in card.outputs}} if act == "softmax" and len(card.outputs) > 1 else {})
        return [Finding(probability=float(prob[_channel(card, o, prob.size, bundle)]), threshold=card.threshold,
                        indeterminate=card.indeterminate, extra=dict(extra), **_common(bundle, image, o, ehr))
                for o in card.outputs]


class SegmentationKind(Task):
    """``segmentation``: one measured Finding per present output label (volume, LPS box, mean probability)."""

    name = "segmentation"

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """Softmax over channels, argmax labels on the image grid; one Finding per present ``outputs`` label."""
        card = bundle.model_card
        arr = np.asarray(image.array)
        if arr.ndim not in (2, 3):
            raise ModelInputError("image", f"a segmentation model needs a 2D or 3D image; {image.source or 'the image'} "
                                           f"has shape {arr.shape}")
        logits = _forward(bundle, _preprocess(bundle, _pixels(image, arr.ndim, self.name)))[0]
        prob = _to_grid(_softmax(logits, 0), arr.shape)
        labels = prob.argmax(axis=0)
        out = []
        for o in card.outputs:
            c = _channel(card, o, prob.shape[0], bundle)
            mask = labels == c
            if c == 0 or not mask.any():
                continue
            idx = np.argwhere(mask)
            volume = float(mask.sum()) * _voxel_ml(image)
            out.append(Finding(value=round(volume, 4), unit="mL" if arr.ndim == 3 else "mm2",
                               probability=None, location=region_boxes(image, idx.min(axis=0), idx.max(axis=0)),
                               explanation=f"{int(mask.sum())} voxels labelled {o.display}; mean probability "
                                           f"{float(prob[c][mask].mean()):.2f}",
                               extra={"volume_ml": round(volume, 4)} if arr.ndim == 3 else {},
                               **_common(bundle, image, o, ehr)))
        return out


class BoxDetectionKind(Task):
    """``box-detection``: connected regions of each output channel's probability map become boxes."""

    name = "box-detection"

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """Sigmoid per voxel; regions >= the floor; one Finding per region, highest first, at most ``max_detections``."""
        from scipy import ndimage

        from cds.images.image import index_to_lps

        card = bundle.model_card
        if card.threshold is None:
            raise BundleError(f"{bundle.path}/configs/metadata.json: cds.threshold: a box-detection model needs one")
        arr = np.asarray(image.array)
        if arr.ndim not in (2, 3):
            raise ModelInputError("image", f"a box-detection model needs a 2D or 3D image; "
                                           f"{image.source or 'the image'} has shape {arr.shape}")
        prob = _to_grid(_sigmoid(_forward(bundle, _preprocess(bundle, _pixels(image, arr.ndim, self.name)))[0]),
                        arr.shape)
        floor = card.indeterminate[0] if card.indeterminate else card.threshold
        found: list[tuple[float, Finding]] = []
        for o in card.outputs:
            p = prob[_channel(card, o, prob.shape[0], bundle)]
            lab, n = ndimage.label(p >= floor)
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                region = lab[sl] == k
                score = float(p[sl][region].max())
                lo = np.array([s.start for s in sl])
                hi = np.array([s.stop - 1 for s in sl])
                centre = np.argwhere(region).mean(axis=0) + lo
                extra: dict[str, Any] = {"volume_ml": round(float(region.sum()) * _voxel_ml(image), 4)} \
                    if arr.ndim == 3 else {}
                if image.meta.get("patient_frame", True):
                    extra["centre_lps"] = [round(float(v), 4) for v in index_to_lps(image, centre)]
                found.append((score, Finding(probability=score, threshold=card.threshold,
                                             indeterminate=card.indeterminate,
                                             location=region_boxes(image, lo, hi), extra=extra,
                                             **_common(bundle, image, o, ehr))))
        found.sort(key=lambda sf: -sf[0])
        return [f for _, f in found[: card.max_detections]]


KINDS: dict[str, Task] = {t.name: t for t in (ClassificationKind("classification-2d", 2),
                                              ClassificationKind("classification-3d", 3),
                                              SegmentationKind(), BoxDetectionKind())}
"""Generic kind name (a card's ``cds.kind``) -> its task object."""
