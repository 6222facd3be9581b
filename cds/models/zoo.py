"""Run three public MONAI Model Zoo bundles, unmodified, and turn their outputs into Findings.

A user downloads a bundle on a machine with internet (``python -m monai.bundle download <name>
--bundle_dir <dir>``) and copies the folder into the models directory. cds never edits it: it reads
``configs/metadata.json`` and ``configs/inference.json`` with ``monai.bundle.ConfigParser``, overrides only
run-time keys at parse time, instantiates the config's own ``network_def``, pre-processing, inferer and
post-processing, loads ``models/model.pt`` and applies them to an image read by :mod:`cds.images.read`.

Supported bundles (recognised from metadata.json ``name``/``task``/``description`` together with
``network_data_format``, never from the folder name):

``lung_nodule_ct_detection``
    3D RetinaNet on CT. The config is run in its "raw image" mode (``whether_raw_luna16=true``,
    ``whether_resampled_luna16=false``), i.e. with its ``Spacingd`` to 0.703125 x 0.703125 x 1.25 mm.
    Its post-processing returns boxes in world coordinates, mode ``cccwhd``; with
    ``AffineBoxToWorldCoordinated(affine_lps_to_ras=true)`` on an image whose affine is RAS (what MONAI's
    loaders and cds give it) that world frame is **LPS**, the DICOM patient frame (as LUNA16's annotations).
    Each box becomes a Finding with the code ct-lung-nodule uses (SNOMED CT 27925004 "Nodule", one code
    for one concept whichever detector found it), ``probability`` =
    the box score, ``threshold`` = the bundle's ``score_thresh`` (0.02 in the zoo config), a ``box``
    Location ``[x0, y0, z0, x1, y1, z1]`` in LPS mm.
``breast_density_classification``
    Inception-v3 (``TorchVisionFCModel``; needs ``torchvision``) on a 2D mammogram resized to 299x299x3.
    One Finding: the BI-RADS density category (A-D, the argmax) in the local code system
    :data:`BIRADS_DENSITY_SYSTEM`, ``probability`` = that class's sigmoid output, all four class
    probabilities in ``extra``. The bundle's post-processing is a *sigmoid* per class, so the four values
    need not sum to 1. (LOINC answer codes for breast composition could not be verified offline.)
``ventricular_short_axis_3label``
    2D residual U-Net run slice by slice (``SliceInferer``) over a short-axis stack or cine: labels
    1 LV blood pool, 2 LV myocardium, 3 RV blood pool. For one Image: one measured Finding per structure,
    a volume in mL for a stack of slices (``meta["axis0"] == "space"``), else the largest area over frames
    in mm²; the per-plane areas are in ``extra``. For a cine stack (a list of per-slice cines): LV EF, EDV,
    ESV (LOINC 10230-1, 75988-6, 75989-4) and strains by :func:`cds.models.tasks.cmr_function.function_from_masks`,
    RV volumes per frame in ``extra``. With ``output_dir`` the label masks are written as NIfTI.

Run-time overrides (all other keys are the user's): ``bundle_root`` (the folder), ``device``; lung:
``whether_raw_luna16``/``whether_resampled_luna16``, ``amp`` = false; breast: ``network_def#pretrained``
= false (otherwise torchvision downloads ImageNet weights before ``model.pt`` replaces them).
The config's ``LoadImaged`` steps are not run: cds hands the transforms an already loaded image, built
exactly as MONAI's NIfTI/PIL readers would (array axes, RAS affine, channel metadata); ``SaveImaged``
steps are not run either (no files are written unless ``output_dir`` is given). The zoo ``scripts/``
(evaluators, savers, data-list helpers) and pytorch-ignite are not needed.

Bundle configs are evaluated as Python by MONAI: run only bundles you trust.

Examples
--------
>>> detect_zoo_bundle("/nonexistent") is None
True
>>> sorted(ZOO_BUNDLES)
['breast_density_classification', 'lung_nodule_ct_detection', 'ventricular_short_axis_3label']
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cds.codes import BIRADS_DENSITY_SYSTEM, SAX_STRUCTURE_SYSTEM, SNOMED
from cds.errors import ModelInputError, ParameterError
from cds.finding import Finding, Location
from cds.models.bundle import BundleError
from cds.models.task import Task, image_ref

if TYPE_CHECKING:
    from cds.images.image import Image
    from cds.models.bundle import Bundle
    from cds.models.ehr_inputs import EhrInputs

__all__ = [
    "ZOO_BUNDLES",
    "BIRADS_DENSITY_SYSTEM",
    "BIRADS_DENSITY",
    "SAX_STRUCTURE_SYSTEM",
    "SNOMED",
    "detect_zoo_bundle",
    "run_zoo_bundle",
    "lung_box_findings",
    "breast_density_finding",
    "sax_findings",
    "image_to_metatensor",
    "clear_cache",
    "ZooTask",
    "ZOO_TASKS",
]

LUNG = "lung_nodule_ct_detection"
BREAST = "breast_density_classification"
SAX = "ventricular_short_axis_3label"
ZOO_BUNDLES: tuple[str, ...] = (LUNG, BREAST, SAX)

PULMONARY_NODULE = ("27925004", "Nodule")  # the code of cds.models.tasks.ct_lung_nodule.OUTPUT_CODE (a test checks)
# BIRADS_DENSITY_SYSTEM (cds.codes): the ACR BI-RADS 5th edition breast composition categories "A".."D".
BIRADS_DENSITY = {
    "A": "The breasts are almost entirely fatty",
    "B": "Scattered areas of fibroglandular density",
    "C": "Heterogeneously dense",
    "D": "Extremely dense",
}
# SAX_STRUCTURE_SYSTEM (cds.codes): the ventricular bundle's structures, coded by its ``channel_def`` names.
_SAX_DISPLAY = {"lv_pool": "Left ventricular blood pool", "myocardium": "Left ventricular myocardium",
                "rv_pool": "Right ventricular blood pool"}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_EXPECTED_MODALITY = {LUNG: ("CT",), BREAST: ("MG",), SAX: ("MR",)}


# --------------------------------------------------------------------------------------------- detection


def _read_metadata(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _io_format(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ndf = meta.get("network_data_format") or {}
    image = ((ndf.get("inputs") or {}).get("image")) or {}
    pred = ((ndf.get("outputs") or {}).get("pred")) or {}
    return (image if isinstance(image, dict) else {}), (pred if isinstance(pred, dict) else {})


def _channel_names(spec: dict[str, Any]) -> list[str]:
    cdef = spec.get("channel_def") or {}
    if not isinstance(cdef, dict):
        return []
    try:
        return [str(cdef[k]) for k in sorted(cdef, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return [str(v) for v in cdef.values()]


def _identify(meta: dict[str, Any]) -> str | None:
    """Which zoo bundle a metadata.json describes: its words AND its network_data_format must agree."""
    text = " ".join(str(meta.get(k, "")) for k in ("name", "task", "description")).lower()
    image, pred = _io_format(meta)
    modality = str(image.get("modality", "")).lower()
    names = [n.lower() for n in _channel_names(pred)]
    if ("nodule" in text and "detect" in text and modality == "ct"
            and str(pred.get("format", "")).lower() == "dict"):
        return LUNG
    if "breast" in text and "density" in text and names == ["a", "b", "c", "d"]:
        return BREAST
    if "ventric" in text and {"lv_pool", "myocardium", "rv_pool"} <= set(names) and modality in ("mr", "mri"):
        return SAX
    return None


def detect_zoo_bundle(path: str | Path) -> str | None:
    """Name of the Model Zoo bundle in folder ``path`` (one of :data:`ZOO_BUNDLES`), or None.

    Decided from ``configs/metadata.json`` (name/task/description and network_data_format), not from
    the folder name; a folder without a readable metadata.json gives None. Use :func:`run_zoo_bundle`
    for errors that say what is missing.

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "my-renamed-folder"
    >>> (d / "configs").mkdir(parents=True)
    >>> _ = (d / "configs" / "metadata.json").write_text(json.dumps({
    ...     "task": "Segments the left and right ventricle in 2D short axis MR images",
    ...     "network_data_format": {"inputs": {"image": {"modality": "MR"}}, "outputs": {"pred": {
    ...         "channel_def": {"0": "background", "1": "lv_pool", "2": "myocardium", "3": "rv_pool"}}}}}))
    >>> detect_zoo_bundle(d)
    'ventricular_short_axis_3label'
    """
    p = Path(path)
    if not p.is_dir():
        return None
    meta = _read_metadata(p)
    return _identify(meta) if meta is not None else None


def _download_hint(name: str) -> str:
    return (f"download the bundle on a machine with internet with `python -m monai.bundle download {name} "
            f"--bundle_dir <dir>` and copy the folder <dir>/{name} unchanged into the models directory")


def _check_folder(path: Path) -> tuple[str, dict[str, Any]]:
    """(zoo name, metadata) or a BundleError naming the missing or wrong file."""
    guess = next((n for n in ZOO_BUNDLES if n in path.name), None)
    hint = _download_hint(guess or "<bundle name>")
    if not path.is_dir():
        raise BundleError(f"{path}: not a folder; {hint}")
    meta_file = path / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{meta_file}: missing, so this is not a complete MONAI bundle; {hint}")
    meta = _read_metadata(path)
    if meta is None:
        raise BundleError(f"{meta_file}: not valid JSON (a truncated copy?); {hint}")
    name = _identify(meta)
    if name is None:
        raise BundleError(
            f"{meta_file}: not one of the supported Model Zoo bundles {', '.join(ZOO_BUNDLES)} "
            f"(name/task {meta.get('name') or meta.get('task')!r} and network_data_format do not match)")
    hint = _download_hint(name)
    inference = path / "configs" / "inference.json"
    if not inference.is_file():
        raise BundleError(f"{inference}: missing; {hint}")
    weights = path / "models" / "model.pt"
    if not weights.is_file():
        extra = " (models/model.ts is there, but the bundle's inference config loads model.pt)" if (
            path / "models" / "model.ts").is_file() else ""
        raise BundleError(f"{weights}: missing, the weights were not downloaded{extra}; {hint}")
    return name, meta


# --------------------------------------------------------------------------------------------- loading


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a CUDA-only wheel next to a CPU torch raises RuntimeError, not ImportError
        return False
    return True


def _torchvision_free_detection() -> None:
    """Let MONAI build its RetinaNet feature extractor when torchvision cannot be imported.

    MONAI's ``resnet_fpn_feature_extractor`` borrows two small helpers from torchvision:
    ``_validate_trainable_layers`` (which backbone layers train; irrelevant at inference) and
    ``IntermediateLayerGetter`` (runs a backbone's children in order, returning the chosen ones).
    Where torchvision is importable nothing is changed. Otherwise equivalents written here take the place
    of MONAI's optional-import placeholders, with the same child names, so that ``model.pt`` keys match.
    """
    if _torchvision_importable():
        return
    from collections import OrderedDict
    from types import SimpleNamespace

    import monai.apps.detection.networks.retinanet_network as retina
    import monai.networks.blocks.backbone_fpn_utils as fpn_utils
    import torch

    class IntermediateLayers(torch.nn.ModuleDict):
        """Children of ``model`` up to the last one named in ``return_layers``; forward returns those."""

        def __init__(self, model: torch.nn.Module, return_layers: dict[str, str]) -> None:
            wanted = {str(k): str(v) for k, v in return_layers.items()}
            children = dict(model.named_children())
            missing = set(wanted) - set(children)
            if missing:
                raise ValueError(f"return_layers {sorted(missing)} are not children of the backbone")
            layers: OrderedDict[str, torch.nn.Module] = OrderedDict()
            remaining = set(wanted)
            for child_name, module in children.items():
                layers[child_name] = module
                remaining.discard(child_name)
                if not remaining:
                    break
            super().__init__(layers)
            self.return_layers = wanted

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out: OrderedDict[str, torch.Tensor] = OrderedDict()
            for child_name, module in self.items():
                x = module(x)
                if child_name in self.return_layers:
                    out[self.return_layers[child_name]] = x
            return out

    def trainable_layers(pretrained: bool, trainable: int | None, max_value: int, default_value: int) -> int:
        if not pretrained:
            return max_value
        value = default_value if trainable is None else int(trainable)
        if not 0 <= value <= max_value:
            raise ValueError(f"trainable layers should be in [0, {max_value}], got {value}")
        return value

    def placeholder(obj: Any) -> bool:  # what monai.utils.optional_import returns for a failed import
        return obj is None or type(obj).__name__.startswith("_Lazy")

    if placeholder(getattr(retina, "_validate_trainable_layers", None)):
        retina._validate_trainable_layers = trainable_layers
    if placeholder(getattr(fpn_utils, "torchvision_models", None)):
        getter = SimpleNamespace(IntermediateLayerGetter=IntermediateLayers)
        fpn_utils.torchvision_models = SimpleNamespace(_utils=getter)


def _device(device: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", str(device)):
        raise ParameterError("device", f"{device!r} is not a torch device name (cpu, cuda, cuda:N)")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ParameterError("device", f"{device!r} requested but torch sees no CUDA device; use 'cpu'")
    return str(device)


def _parser(path: Path, overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(path / "configs" / "inference.json"))
        parser.read_meta(str(path / "configs" / "metadata.json"))
    except Exception as exc:  # noqa: BLE001 - invalid JSON/YAML in the user's file
        raise BundleError(f"{path / 'configs' / 'inference.json'}: cannot be read ({exc})") from None
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _parse(parser: Any, key: str, path: Path) -> Any:
    if key not in parser:
        raise BundleError(f"{path / 'configs' / 'inference.json'}: has no {key!r} entry")
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:  # noqa: BLE001 - name the key and the reason
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cause = exc.__cause__
        if cause is not None:
            reason += f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
        raise BundleError(f"{path / 'configs' / 'inference.json'}: cannot build {key!r}: {reason}") from exc


def _build_network(parser: Any, path: Path, name: str) -> Any:
    """Instantiate the config's ``network`` (``network_def`` moved to ``device``), without weights."""
    if name == BREAST and not _torchvision_importable():
        import torch

        version = str(torch.__version__)
        major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
        match = f"torchvision 0.{minor + 15}" if major == 2 else "the matching torchvision"  # 2.N <-> 0.(N+15)
        raise BundleError(
            f"{path / 'configs' / 'inference.json'}: network_def is TorchVisionFCModel(inception_v3), which "
            f"needs the torchvision package, and `import torchvision` fails here. Install the build that "
            f"matches torch {version}: {match}"
            + (" from the PyTorch CPU wheel index (PyPI's Linux wheel is built for CUDA torch and does not "
               "import next to a CPU torch)" if "+cpu" in version else ""))
    return _parse(parser, "network", path)


def _load_weights(net: Any, weights: Path, device: str) -> None:
    import pickle

    import torch

    head = weights.read_bytes()[:64] if weights.stat().st_size < 4096 else b""
    if head.lstrip().startswith((b"<", b"version https://git-lfs")):
        raise BundleError(f"{weights}: is a web page or a Git LFS pointer, not PyTorch weights (the download did "
                          f"not complete); {_download_hint(weights.parent.parent.name)}")
    try:
        try:
            state = torch.load(weights, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            # A checkpoint that pickles more than tensors. The bundle config itself is evaluated as code,
            # so a trusted bundle's weights file is trusted alike.
            state = torch.load(weights, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files raise many types
        raise BundleError(f"{weights}: cannot load weights ({type(exc).__name__}: {exc}); "
                          f"{_download_hint(weights.parent.parent.name)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # CheckpointLoader's {"model": ...}
        state = state["model"]
    if not isinstance(state, dict):
        raise BundleError(f"{weights}: holds a {type(state).__name__}, not a state dict of network_def")
    try:
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0:3]
        raise BundleError(f"{weights}: weights do not fit the config's network_def: {' '.join(first)}") from None
    net.eval()


def _transforms(parser: Any, key: str, path: Path, skip: tuple[str, ...]) -> list[Any]:
    """The config's ``key`` Compose steps, instantiated one by one, without those whose target has ``skip``."""
    config = parser[key] if key in parser else None
    if not isinstance(config, dict) or not isinstance(config.get("transforms"), list):
        raise BundleError(f"{path / 'configs' / 'inference.json'}: {key!r} is not a Compose with a transforms list")
    out = []
    for i, item in enumerate(config["transforms"]):
        target = str(item.get("_target_", "")) if isinstance(item, dict) else ""
        if any(s in target for s in skip):
            continue
        t = _parse(parser, f"{key}#transforms#{i}", path)
        if t is not None:  # "_disabled_" steps instantiate to None
            out.append(t)
    return out


def _apply(transforms: Sequence[Any], data: dict[str, Any]) -> dict[str, Any]:
    for t in transforms:
        data = t(data)
    return data


@dataclass
class _Loaded:
    name: str
    path: Path
    meta: dict[str, Any]
    parser: Any
    network: Any
    device: str
    image_key: str
    pre: list[Any]
    post: list[Any]
    inferer: Any = None
    detector: Any = None


@functools.lru_cache(maxsize=4)
def _load(path_text: str, device: str, stamp: tuple[float, ...]) -> _Loaded:
    del stamp  # part of the cache key only: edited files reload
    path = Path(path_text)
    name, meta = _check_folder(path)
    overrides: dict[str, Any] = {"bundle_root": str(path), "device": f"$torch.device('{device}')"}
    if name == LUNG:
        overrides.update(whether_raw_luna16=True, whether_resampled_luna16=False, amp=False)
        _torchvision_free_detection()
    if name == BREAST:
        overrides["network_def#pretrained"] = False
    parser = _parser(path, overrides)
    if name == BREAST and not isinstance(parser.get("network_def"), dict):
        raise BundleError(f"{path / 'configs' / 'inference.json'}: network_def is not a component")
    network = _build_network(parser, path, name)
    _load_weights(network, path / "models" / "model.pt", device)
    image_key = str(parser.get_parsed_content("image_key")) if "image_key" in parser else "image"
    loaded = _Loaded(name, path, meta, parser, network, device, image_key,
                     pre=_transforms(parser, "preprocessing", path, skip=("LoadImage",)),
                     post=_transforms(parser, "postprocessing", path, skip=("SaveImage",)))
    if name == LUNG:
        loaded.detector = _parse(parser, "detector", path)
        _parse(parser, "detector_ops", path)
        loaded.detector.network = network
        loaded.detector.eval()
    else:
        loaded.inferer = _parse(parser, "inferer", path)
    return loaded


def _stamp(path: Path) -> tuple[float, ...]:
    files = [path / "configs" / "metadata.json", path / "configs" / "inference.json", path / "models" / "model.pt"]
    return tuple(f.stat().st_mtime if f.exists() else -1.0 for f in files)


def clear_cache() -> None:
    """Forget the bundles loaded so far (each keeps its network in memory; 4 are kept at most)."""
    _load.cache_clear()


def _loaded(bundle_path: str | Path, device: str) -> _Loaded:
    path = Path(bundle_path).expanduser().resolve()
    _check_folder(path)  # cheap; clear errors before the cache is consulted
    return _load(str(path), device, _stamp(path))


# --------------------------------------------------------------------------------------------- images


def _ras_affine(image: Any) -> np.ndarray:
    """4x4 RAS affine for the array transposed to (i, j, k) = (columns, rows, slices), as NIfTI readers give."""
    spacing = np.asarray(image.spacing, dtype=np.float64)
    direction = np.asarray(image.direction, dtype=np.float64)
    if image.ndim == 2:
        spacing = np.concatenate([[1.0], spacing])
        direction = np.column_stack([direction[:, 2], direction[:, 0], direction[:, 1]])
    columns = (direction * spacing)[:, ::-1]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_FROM_RAS @ columns
    affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(image.origin, dtype=np.float64)
    return affine


def image_to_metatensor(image: Any) -> Any:
    """A MONAI ``MetaTensor`` as ``LoadImage`` returns for this image written as NIfTI.

    The array is transposed to (i, j, k) (columns, rows, slices), the affine is RAS, and the meta says
    there is no channel axis, so the bundle's own transforms from ``EnsureChannelFirstd`` on apply unchanged.
    A 2D image becomes one slice.

    >>> import numpy as np
    >>> from cds.images.image import Image
    >>> mt = image_to_metatensor(Image(np.zeros((2, 3, 4)), (5.0, 0.5, 0.5), (10.0, 20.0, 30.0), np.eye(3), "CT"))
    >>> tuple(mt.shape), mt.affine[:3, 3].tolist()
    ((4, 3, 2), [-10.0, -20.0, 30.0])
    """
    import torch
    from monai.data import MetaTensor

    arr = np.asarray(image.array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ModelInputError("image", f"{image.source or 'image'}: expected a 2D or 3D array, got shape {arr.shape}")
    data = np.ascontiguousarray(arr.transpose(2, 1, 0)).astype(np.float32)
    affine = _ras_affine(image)
    meta = {"original_channel_dim": "no_channel", "spatial_shape": np.asarray(data.shape),
            "filename_or_obj": str(image.source or ""), "original_affine": affine.copy(), "space": "RAS"}
    return MetaTensor(torch.as_tensor(data), affine=torch.as_tensor(affine), meta=meta)


def _as_image(image: Any, name: str) -> Any:
    from cds.images.image import Image
    from cds.images.read import read_image

    if isinstance(image, Image):
        img = image
    elif isinstance(image, str | Path):  # NIfTI and pictures carry no modality and are not checked
        img = read_image(image, modality=_EXPECTED_MODALITY[name][0], reject_secondary_capture=True)
    else:
        raise ParameterError("image", f"expected a cds.images.image.Image or a path, got {type(image).__name__}")
    where = img.source or "image"
    modality = (img.modality or "").upper()
    if modality and modality not in _EXPECTED_MODALITY[name]:
        raise ModelInputError("image", f"{where}: modality {modality}; {name} needs "
                                       f"{' or '.join(_EXPECTED_MODALITY[name])}")
    if img.array.size == 0:
        raise ModelInputError("image", f"{where}: empty image (shape {img.shape})")
    return img


# --------------------------------------------------------------------------------------------- lung


def lung_box_findings(
    boxes_lps: np.ndarray,
    scores: np.ndarray,
    score_thresh: float,
    patient_id: str,
    study_uid: str,
    series_uid: str | None,
    instance_uids: Sequence[str],
    model_version: str,
    image: Any = None,
    labels: np.ndarray | None = None,
) -> list[Finding]:
    """One "Pulmonary nodule" Finding per box, highest score first.

    ``boxes_lps`` is (N, 6) ``[x0, y0, z0, x1, y1, z1]`` in patient LPS mm (any corner order). With
    ``image`` (a :class:`cds.images.image.Image` with DICOM UIDs) the Location names the slice nearest the box centre.

    >>> f = lung_box_findings(np.array([[10, -5, 3, 0, 5, -3.0]]), np.array([0.9]), 0.02, "p", "1.2", None, (), "0.6.8")
    >>> f[0].location.coords, f[0].interpretation
    ((0.0, -5.0, -3.0, 10.0, 5.0, 3.0), 'positive')
    """
    boxes = np.asarray(boxes_lps, dtype=np.float64).reshape(-1, 6)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ParameterError("scores", f"{len(scores)} scores for {len(boxes)} boxes")
    lo = np.minimum(boxes[:, :3], boxes[:, 3:])
    hi = np.maximum(boxes[:, :3], boxes[:, 3:])
    sops = list((image.meta.get("sop_instance_uids") or []) if image is not None else [])
    out = []
    for rank, i in enumerate(np.argsort(-scores, kind="stable")):
        centre = (lo[i] + hi[i]) / 2
        sop = None
        if sops and image is not None and image.ndim == 3:
            from cds.images.image import lps_to_index

            k = int(np.clip(np.rint(lps_to_index(image, centre)[0]), 0, len(sops) - 1))
            sop = str(sops[k])
        size = hi[i] - lo[i]
        out.append(Finding(
            patient_id=str(patient_id), study_uid=str(study_uid), code_system=SNOMED, code=PULMONARY_NODULE[0],
            display=PULMONARY_NODULE[1], model_id=LUNG, model_version=model_version,
            probability=float(scores[i]), threshold=float(score_thresh),
            location=Location("box", tuple(float(v) for v in (*lo[i], *hi[i])), frame="LPS", sop_instance_uid=sop),
            series_uid=series_uid, instance_uids=tuple(str(u) for u in instance_uids),
            explanation=(f"RetinaNet box score {scores[i]:.3f} (the bundle keeps boxes scoring >= {score_thresh:g}); "
                         f"box {size[0]:.1f} x {size[1]:.1f} x {size[2]:.1f} mm"),
            extra={"rank": rank + 1, "centre_lps": [round(float(c), 3) for c in centre],
                   "size_mm": [round(float(s), 3) for s in size],
                   "label": int(labels[i]) if labels is not None else 0,
                   "box_source": "zoo post-processing, world cccwhd (LPS) -> corners"},
        ))
    return out


def _affine_to_world(post: list[Any]) -> tuple[bool, bool]:
    """(whether post-processing maps boxes to world coordinates, whether that world is LPS)."""
    for t in post:
        if type(t).__name__ == "AffineBoxToWorldCoordinated":
            return True, bool(getattr(t, "affine_lps_to_ras", False))
    return False, False


def _box_mode_out(post: list[Any]) -> str:
    mode = "xyzxyz"
    for t in post:
        if type(t).__name__ == "ConvertBoxModed":
            converter = getattr(t, "converter", None)
            dst = getattr(converter, "dst_mode", None)
            if dst is not None:
                mode = dst if isinstance(dst, str) else getattr(dst, "get_name", lambda: "xyzxyz")()
    return str(mode)


def _lung_prepare(loaded: _Loaded, image: Any) -> Any:
    """The bundle's pre-processing applied to ``image``: a (1, X, Y, Z) RAS MetaTensor at the bundle's spacing."""
    data = _apply(loaded.pre, {loaded.image_key: image_to_metatensor(image)})
    return data[loaded.image_key]


def _lung_detect(loaded: _Loaded, tensor: Any) -> dict[str, Any]:
    import torch

    det = loaded.detector
    parser = loaded.parser
    roi = getattr(getattr(det, "inferer", None), "roi_size", None)
    window = int(np.prod(roi)) if roi is not None else None
    force = bool(parser.get_parsed_content("force_sliding_window")) if "force_sliding_window" in parser else False
    # The bundle's RetinaNetInferer rule: slide a window only when the image is at least as large as it.
    use_inferer = force or (window is not None and tensor[0].numel() >= window)
    with torch.inference_mode():
        out = det([tensor.to(loaded.device)], use_inferer=use_inferer)[0]
    return dict(out)


def _lung_postprocess(loaded: _Loaded, pred: dict[str, Any], tensor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 6) LPS corners, scores (N,), labels (N,) from the detector output, via the bundle's post-processing."""
    import torch
    from monai.data.box_utils import clip_boxes_to_image, convert_box_mode

    det = loaded.detector
    box_key = getattr(det, "target_box_key", "box")
    label_key = getattr(det, "target_label_key", "label")
    score_key = getattr(det, "pred_score_key", f"{label_key}_scores")
    boxes = torch.as_tensor(pred[box_key]).detach().float().cpu()
    scores = torch.as_tensor(pred[score_key]).detach().float().cpu()
    labels = torch.as_tensor(pred[label_key]).detach().cpu()
    # The zoo's ClipBoxToImaged drops empty boxes together with the labels only, not the scores: drop them
    # here first (with the scores) so that its step removes nothing and boxes and scores stay aligned.
    boxes, keep = clip_boxes_to_image(boxes, tensor.shape[1:], remove_empty=True)
    scores, labels = scores[keep], labels[keep]
    item = {box_key: boxes, label_key: labels, score_key: scores, loaded.image_key: tensor.cpu()}
    item = _apply(loaded.post, item)
    boxes = torch.as_tensor(item[box_key]).detach().double().reshape(-1, 6)
    if len(boxes) != len(scores):
        raise BundleError(f"{loaded.path / 'configs' / 'inference.json'}: post-processing changed the number of "
                          f"boxes ({len(scores)} -> {len(boxes)}) without their scores")
    corners = convert_box_mode(boxes, src_mode=_box_mode_out(loaded.post), dst_mode="xyzxyz").numpy()
    to_world, lps = _affine_to_world(loaded.post)
    if not to_world:  # boxes still in voxel (i, j, k) of the pre-processed image
        affine = np.asarray(tensor.affine, dtype=np.float64)
        pts = np.concatenate([corners[:, :3], corners[:, 3:]])
        world = pts @ affine[:3, :3].T + affine[:3, 3]
        corners = np.concatenate([world[: len(corners)], world[len(corners):]], axis=1)
    if not lps:  # the world frame is the affine's, RAS
        corners = corners * np.array([-1, -1, 1, -1, -1, 1], dtype=np.float64)
    return corners, scores.double().numpy(), labels.numpy()


def _score_thresh(loaded: _Loaded) -> float:
    selector = getattr(loaded.detector, "box_selector", None)
    value = getattr(selector, "score_thresh", None)
    if value is None:
        raise BundleError(f"{loaded.path / 'configs' / 'inference.json'}: detector_ops set no box selector "
                          "score_thresh")
    return float(value)


def _run_lung(loaded: _Loaded, image: Any, ids: dict[str, Any]) -> list[Finding]:
    where = image.source or "image"
    if image.ndim != 3 or min(image.shape) < 2:
        raise ModelInputError("image", f"{where}: {LUNG} needs a 3D CT volume (slices, rows, cols), got shape "
                                       f"{image.shape}")
    if not image.meta.get("patient_frame", True):
        raise ModelInputError("image", f"{where}: has no patient coordinate frame; {LUNG} resamples to mm and "
                                       "reports boxes in patient coordinates")
    tensor = _lung_prepare(loaded, image)
    pred = _lung_detect(loaded, tensor)
    boxes, scores, labels = _lung_postprocess(loaded, pred, tensor)
    return lung_box_findings(boxes, scores, _score_thresh(loaded), image=image, labels=labels,
                             model_version=str(loaded.meta.get("version", "0")), **ids)


# --------------------------------------------------------------------------------------------- breast


def breast_density_finding(
    probabilities: Sequence[float],
    classes: Sequence[str],
    patient_id: str,
    study_uid: str,
    series_uid: str | None,
    instance_uids: Sequence[str],
    model_version: str,
    extra: dict[str, Any] | None = None,
) -> Finding:
    """The BI-RADS density category with the highest probability, all class probabilities in ``extra``.

    >>> f = breast_density_finding([0.1, 0.2, 0.7, 0.3], "ABCD", "p", "1.2", None, (), "0.1.7")
    >>> f.code, f.display, f.extra["class_probabilities"]["D"]
    ('C', 'BI-RADS breast density C: Heterogeneously dense', 0.3)
    """
    probs = [float(p) for p in probabilities]
    classes = [str(c).upper() for c in classes]
    if len(probs) != len(classes) or not probs:
        raise ParameterError("probabilities", f"{len(probs)} probabilities for classes {classes}")
    best = int(np.argmax(probs))
    code = classes[best]
    return Finding(
        patient_id=str(patient_id), study_uid=str(study_uid), code_system=BIRADS_DENSITY_SYSTEM, code=code,
        display=f"BI-RADS breast density {code}: {BIRADS_DENSITY.get(code, code)}",
        model_id=BREAST, model_version=model_version, probability=probs[best],
        series_uid=series_uid, instance_uids=tuple(str(u) for u in instance_uids),
        explanation=f"category {code} has the highest of the four class outputs ({probs[best]:.3f})",
        extra={"class_probabilities": dict(zip(classes, [round(p, 6) for p in probs], strict=True)),
               "activation": "sigmoid per class (the bundle's post-processing); values need not sum to 1",
               "dense": code in ("C", "D"), **(extra or {})},
    )


def _run_breast(loaded: _Loaded, image: Any, ids: dict[str, Any]) -> list[Finding]:
    import torch
    from monai.data import MetaTensor

    where = image.source or "image"
    arr = np.asarray(image.array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ModelInputError("image", f"{where}: {BREAST} needs one 2D mammogram, got shape {image.shape}")
    # PIL-based loading gives (width, height, 3) for the zoo's JPEGs: transpose, copy grey into 3 channels.
    rgb = np.repeat(np.ascontiguousarray(arr.T, dtype=np.float32)[..., None], 3, axis=2)
    tensor = MetaTensor(torch.as_tensor(rgb), meta={"original_channel_dim": -1, "spatial_shape": arr.T.shape,
                                                      "filename_or_obj": str(image.source or "")})
    data = _apply(loaded.pre, {loaded.image_key: tensor})
    x = data[loaded.image_key]
    with torch.inference_mode():
        pred = loaded.inferer(x[None].to(loaded.device), loaded.network)
    out = _apply(loaded.post, {"pred": pred[0], loaded.image_key: x})
    probs = torch.as_tensor(out["pred"]).detach().float().cpu().reshape(-1).numpy()
    _, spec = _io_format(loaded.meta)
    classes = _channel_names(spec) or list("ABCD")
    view = {k: str(image.meta[k]) for k in ("laterality", "view_position") if image.meta.get(k)}
    return [breast_density_finding(probs, classes, model_version=str(loaded.meta.get("version", "0")),
                                   extra=view, **ids)]


# --------------------------------------------------------------------------------------------- ventricles


def sax_findings(
    labels: np.ndarray,
    image: Any,
    structures: dict[int, str],
    patient_id: str,
    study_uid: str,
    series_uid: str | None,
    instance_uids: Sequence[str],
    model_version: str,
    mask_ref: str | None = None,
) -> list[Finding]:
    """Measured Findings per structure from a label array shaped like ``image.array`` ((n,) rows, cols).

    A stack of slices (``image.meta["axis0"] == "space"``, n > 1) gives a volume in mL; frames of a cine
    (or one image) give the largest area over frames in mm². Per-plane areas are in ``extra``.

    >>> from cds.images.image import Image
    >>> lab = np.zeros((2, 4, 4), np.uint8); lab[:, :2, :2] = 1
    >>> img = Image(np.zeros((2, 4, 4)), (8.0, 1.5, 1.5), (0, 0, 0), np.eye(3), "MR", {"axis0": "space"})
    >>> f = sax_findings(lab, img, {1: "lv_pool"}, "p", "1.2", None, (), "0.3.4")[0]
    >>> f.value, f.unit, f.extra["area_mm2"]
    (0.144, 'mL', [9.0, 9.0])
    """
    lab = np.asarray(labels)
    arr_shape = tuple(image.shape)
    if lab.shape != arr_shape:
        raise ParameterError("labels", f"shape {lab.shape} differs from the image's {arr_shape}")
    planes = lab if lab.ndim == 3 else lab[None]
    spacing = tuple(float(s) for s in image.spacing)
    pixel_mm2 = spacing[-1] * spacing[-2]
    stack = lab.ndim == 3 and planes.shape[0] > 1 and image.meta.get("axis0", "space") == "space"
    out = []
    for value, code in structures.items():
        counts = (planes == value).reshape(planes.shape[0], -1).sum(axis=1)
        areas = counts * pixel_mm2
        extra: dict[str, Any] = {"label_value": int(value), "area_mm2": [round(float(a), 3) for a in areas],
                                 "pixel_spacing_mm": list(spacing[-2:])}
        if stack:
            measured, unit = float(areas.sum() * spacing[0] / 1000.0), "mL"
            what = "volume (sum over slices)"
            extra["slice_spacing_mm"] = spacing[0]
        else:
            best = int(np.argmax(areas))
            measured, unit = float(areas[best]), "mm2"
            what = "area (largest over frames)" if planes.shape[0] > 1 else "area"
            extra["frame_index_of_largest"] = best
            if code == "lv_pool" and planes.shape[0] > 1 and areas.max() > 0:
                extra["fractional_area_change"] = round(float((areas.max() - areas.min()) / areas.max()), 4)
        location = None
        if counts.sum() > 0:
            idx = np.argwhere(lab == value)
            lo, hi = idx.min(axis=0), idx.max(axis=0)
            coords: tuple[float, ...] = ()
            if image.meta.get("patient_frame", True):
                from cds.images.image import index_to_lps

                pts = index_to_lps(image, np.array([lo, hi], dtype=np.float64))
                coords = tuple(float(v) for v in (*pts.min(axis=0), *pts.max(axis=0)))
            location = Location("mask", coords, ref=mask_ref,
                                frame="LPS" if image.meta.get("patient_frame", True) else "pixel")
        out.append(Finding(
            patient_id=str(patient_id), study_uid=str(study_uid), code_system=SAX_STRUCTURE_SYSTEM, code=code,
            display=f"{_SAX_DISPLAY.get(code, code)} {what}", model_id=SAX, model_version=model_version,
            value=round(measured, 4), unit=unit, location=location, series_uid=series_uid,
            instance_uids=tuple(str(u) for u in instance_uids),
            explanation=f"{int(counts.sum())} pixels labelled {code} ({value}) by the zoo segmentation",
            extra=extra,
        ))
    return out


def _sax_labels(loaded: _Loaded, image: Any) -> np.ndarray:
    """Label array shaped like ``image.array`` from the bundle's pre-processing, SliceInferer and post-processing."""
    import torch

    data = _apply(loaded.pre, {loaded.image_key: image_to_metatensor(image)})
    x = data[loaded.image_key]
    with torch.inference_mode():
        pred = loaded.inferer(x[None].to(loaded.device), loaded.network)
    out = _apply(loaded.post, {"pred": pred[0], loaded.image_key: x})
    lab = torch.as_tensor(out["pred"]).detach().cpu().numpy()
    lab = lab[0] if lab.ndim == 4 else lab  # (1, X, Y, N) -> (X, Y, N)
    lab = np.rint(lab).astype(np.uint8).transpose(2, 1, 0)  # -> (N, rows, cols)
    return lab[0] if image.ndim == 2 else lab


def _run_sax(loaded: _Loaded, image: Any, ids: dict[str, Any], output_dir: Path | None) -> list[Finding]:
    where = image.source or "image"
    if image.ndim not in (2, 3):
        raise ModelInputError("image", f"{where}: {SAX} needs 2D short-axis images, got shape {image.shape}")
    lab = _sax_labels(loaded, image)
    _, spec = _io_format(loaded.meta)
    names = _channel_names(spec) or ["background", "lv_pool", "myocardium", "rv_pool"]
    structures = {i: n for i, n in enumerate(names) if i > 0}
    ref = None
    if output_dir is not None:
        from cds.images.image import Image
        from cds.images.nifti import write_nifti

        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(ids.get("series_uid") or ids.get("study_uid") or "image"))
        mask = Image(lab, image.spacing, image.origin, image.direction, image.modality, dict(image.meta), where)
        ref = str(write_nifti(mask, Path(output_dir) / f"{stem}_{SAX}.nii.gz"))
    return sax_findings(lab, image, structures, model_version=str(loaded.meta.get("version", "0")),
                        mask_ref=ref, **ids)


def _cine_geometry(images: Sequence[Any]) -> dict[str, Any]:
    """``function_from_masks`` geometry of a cine stack (one Image per slice position, sorted along the normal)."""
    first = images[0]
    normal = np.asarray(first.direction, dtype=np.float64)[:, 0]
    positions = [float(np.dot(np.asarray(im.origin, dtype=np.float64), normal)) for im in images]
    if len(images) > 1:
        gaps = np.diff(positions)
        if np.any(gaps <= 1e-3) or not np.allclose(gaps, gaps.mean(), rtol=0.05, atol=0.05):
            raise ModelInputError("image", f"cine slice positions along the normal are not evenly spaced: "
                                           f"{[round(p, 2) for p in positions]} mm")
        step = float(gaps.mean())
    else:
        step = float(first.spacing[0])
    thickness = float(first.meta.get("slice_thickness") or (first.spacing[0] if len(images) == 1 else step))
    return {"pixel_spacing_mm": [float(first.spacing[1]), float(first.spacing[2])],
            "slice_thickness_mm": thickness, "spacing_between_slices_mm": step,
            "slice_positions_mm": [round(p, 4) for p in positions]}


def _run_sax_cine(loaded: _Loaded, images: Sequence[Any], ids: dict[str, Any],
                  output_dir: Path | None) -> list[Finding]:
    """LV function Findings (EF, EDV, ESV, strains) of a cine stack via :func:`cds.models.tasks.cmr_function.function_from_masks`."""
    from cds.models.tasks import cmr_function

    imgs = [_as_image(im, SAX) for im in images]
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1 or imgs[0].ndim != 3 or imgs[0].shape[0] < 2:
        raise ModelInputError("image", f"a cine stack is one (frames, rows, cols) Image per slice position, all of "
                                       f"one shape with >= 2 frames; got shapes {sorted(shapes)}")
    normal = np.asarray(imgs[0].direction, dtype=np.float64)[:, 0]
    imgs.sort(key=lambda im: float(np.dot(np.asarray(im.origin, dtype=np.float64), normal)))
    geometry = _cine_geometry(imgs)
    labels = np.stack([_sax_labels(loaded, im) for im in imgs], axis=1)  # (frames, slices, rows, cols)
    result = cmr_function.function_from_masks((labels == 1).astype(np.float32), (labels == 2).astype(np.float32),
                                              geometry)
    row, col = geometry["pixel_spacing_mm"]
    rv_ml = ((labels == 3).sum(axis=(2, 3)) * row * col).sum(axis=1) * geometry["spacing_between_slices_mm"] / 1000
    context: dict[str, Any] = {
        "ed_frame": result.get("ed_frame"), "es_frame": result.get("es_frame"),
        "lv_volumes_ml": [round(float(v), 3) for v in result.get("lv_volumes_ml", [])],
        "rv_volumes_ml": [round(float(v), 3) for v in rv_ml], "mid_slices": result.get("mid_slices"),
        "warnings": list(result.get("warnings", [])), "slice_positions_mm": geometry["slice_positions_mm"],
        "segmentation": f"MONAI Model Zoo {SAX} {loaded.meta.get('version', '')}".strip(),
    }
    if output_dir is not None:
        from cds.images.image import Image
        from cds.images.nifti import write_nifti

        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(ids.get("series_uid") or ids.get("study_uid") or "cine"))
        context["mask_files"] = [
            str(write_nifti(Image(labels[:, s], im.spacing, im.origin, im.direction, im.modality, dict(im.meta),
                                  im.source), Path(output_dir) / f"{stem}_slice{s:02d}_{SAX}.nii.gz"))
            for s, im in enumerate(imgs)]
    return cmr_function.measurement_findings(
        result, model_id=SAX, model_version=str(loaded.meta.get("version", "0")), patient_id=ids["patient_id"],
        study_uid=ids["study_uid"], series_uid=ids["series_uid"], instance_uids=ids["instance_uids"],
        ehr_inputs=None, context=context,
        explanation=(f"{SAX} segmentation of every short-axis image; LV volumes by Simpson's discs and strains "
                     "from mid-ventricular contours (cds.models.tasks.cmr_function.function_from_masks)"))


# --------------------------------------------------------------------------------------------- entry point


def run_zoo_bundle(
    bundle_path: str | Path,
    image: Any,
    patient_id: str,
    study_uid: str,
    series_uid: str | None = None,
    instance_uids: Sequence[str] = (),
    *,
    device: str = "cpu",
    output_dir: str | Path | None = None,
) -> list[Finding]:
    """Run a downloaded Model Zoo bundle folder (unmodified) on one image and return its Findings.

    Parameters
    ----------
    bundle_path
        The bundle folder as ``monai.bundle download`` wrote it (any folder name).
    image
        A :class:`cds.images.image.Image` or anything :func:`cds.images.read.read_image` reads (CT series folder
        for the lung bundle, a mammogram for the breast bundle, short-axis MR for the ventricular bundle).
        For the ventricular bundle also a list of cines, one ``(frames, rows, cols)`` Image per slice
        position: the result is then LV function (EF, EDV, ESV, GCS, GRS) from
        :func:`cds.models.tasks.cmr_function.function_from_masks` on the zoo's LV pool and myocardium labels.
    patient_id, study_uid, series_uid, instance_uids
        Copied into every Finding (the inputs the model used).
    device
        ``"cpu"`` (default) or ``"cuda[:N]"``.
    output_dir
        Where the ventricular bundle writes its label mask (NIfTI); nothing is written without it.

    Raises
    ------
    cds.models.bundle.BundleError
        The folder is not one of the supported bundles or is incomplete (missing configs, missing or
        broken weights; the message says how to download it), or a needed package is missing.
    cds.errors.ModelInputError
        The image does not fit the bundle (modality, dimensions, no patient frame).
    """
    dev = _device(device)
    loaded = _loaded(bundle_path, dev)
    ids = {"patient_id": patient_id, "study_uid": study_uid, "series_uid": series_uid,
           "instance_uids": tuple(instance_uids)}
    out_dir = Path(output_dir) if output_dir is not None else None
    if isinstance(image, list | tuple):
        if loaded.name != SAX or not image:
            raise ParameterError("image", f"a list of images (a cine stack) is for {SAX} only, and not empty; "
                                          f"{loaded.name} takes one image")
        return _run_sax_cine(loaded, image, ids, out_dir)
    img = _as_image(image, loaded.name)
    if loaded.name == LUNG:
        return _run_lung(loaded, img, ids)
    if loaded.name == BREAST:
        return _run_breast(loaded, img, ids)
    return _run_sax(loaded, img, ids, out_dir)


class ZooTask(Task):
    """A downloaded MONAI Model Zoo bundle (one of :data:`ZOO_BUNDLES`), behind the same task protocol."""

    def __init__(self, name: str) -> None:
        self.name = name

    def predict(self, bundle: Bundle, image: Image, ehr: EhrInputs) -> list[Finding]:
        """:func:`run_zoo_bundle` on the bundle folder with the image's identity (the zoo models take no EHR)."""
        ref = image_ref(image)
        return run_zoo_bundle(bundle.path, image, ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_uids)


ZOO_TASKS: dict[str, Task] = {name: ZooTask(name) for name in ZOO_BUNDLES}
"""Zoo bundle name -> its task object (the registry's id for such a bundle is this name)."""
