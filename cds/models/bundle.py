"""MONAI bundle folders: the one model format of cds.

A model is a folder laid out as a MONAI bundle::

    <model-id>/
        configs/metadata.json    the model card (MONAI metadata + a "cds" section, below)
        configs/inference.json   MONAI bundle config; its "network_def" builds the network, and it runs under
                                 ``python -m monai.bundle run`` (:func:`monai_inference`, :mod:`cds.models.bundle_run`)
        configs/sample.json      the default input of that run (optional)
        models/model.pt          the weights (a state_dict), unless the card says otherwise
        docs/README.md           the human-readable model card (optional)

The ``cds`` section of ``metadata.json`` holds what a clinician needs to judge a result (parsed once
into :class:`cds.models.card.ModelCard`, ``Bundle.model_card``)::

    "cds": {
      "model_id": "cxr-cardiomegaly", "task": "cxr-cardiomegaly",
      "modality": ["CR", "DX"], "body_site": "chest",
      "intended_use": "...", "proxy_for": "...", "limitations": ["..."],
      "inputs": {"image": {...}, "ehr": [{"name": "age", "source": "patient.age_years"},
                                         {"name": "sex", "source": "patient.sex"}]},
      "outputs": [{"code_system": "http://snomed.info/sct", "code": "8186001",
                   "display": "Cardiomegaly", "kind": "probability"}],
      "threshold": 0.5, "indeterminate": [0.4, 0.6],
      "training_data": {"name": "...", "path": "...", "split": "...", "n": 0},
      "performance": {"data": "...", "n_cases": 0, "metrics": {"auroc": {"value": 0.8,
                      "ci95": [0.7, 0.9]}}, "evaluation_command": "cds evaluate ..."}
    }

``task`` names a reference task (:data:`cds.models.task_table.TASKS`). A bundle of your own needs no cds
code when it declares a generic ``kind`` instead (:mod:`cds.models.generic`)::

    "cds": {"model_id": "my-cxr-net", "kind": "classification-2d", "modality": ["CR", "DX"],
            "outputs": [{"code_system": "http://snomed.info/sct", "code": "233604007",
                         "display": "Pneumonia", "channel": 1}],
            "activation": "softmax", "threshold": 0.5, "indeterminate": [0.4, 0.6]}

- ``kind``: ``classification-2d`` (one image ``(rows, cols)``), ``classification-3d`` (a volume
  ``(slices, rows, cols)``): the network returns ``(1, C)`` logits; one Finding per output with the
  probability of its ``channel``. ``segmentation``: ``(1, C, *spatial)`` logits, argmax labels; one
  measured Finding per output label (``channel`` = label value >= 1) that is present, with its volume
  (mL; mm^2 for 2D) and a box in LPS around it. ``box-detection``: ``(1, C, *spatial)`` per-voxel
  logits, sigmoid; each connected region at or above the lower edge of ``indeterminate`` (else
  ``threshold``) of an output's ``channel`` is one Finding: its highest probability, a box in LPS, its
  centre and volume; at most ``max_detections`` (default 20) per image, highest first.
- ``outputs[].channel``: the network output channel (default: the output's position in the list).
- ``activation``: ``softmax`` or ``sigmoid`` over channels (classification; default softmax for C > 1,
  sigmoid for C = 1; segmentation always softmax, box-detection always sigmoid).
- ``configs/inference.json``: ``network_def`` (any MONAI / torch network config), optionally
  ``preprocessing`` (a MONAI ``Compose`` of *array* transforms applied to the channel-first float32
  image ``(1, *spatial)`` in cds axis order, e.g. ``ScaleIntensity``, ``Resize``) and ``inferer``
  (e.g. ``SlidingWindowInferer``). Segmentation and detection outputs are resized back to the image grid.
  Boxes are in patient LPS mm when the image has a patient frame (DICOM, NIfTI), else pixel ``(x, y)``.

Examples
--------
>>> import tempfile, torch
>>> d = tempfile.mkdtemp()
>>> card = {"name": "toy", "version": "0.1.0", "cds": {"model_id": "toy", "task": "toy"}}
>>> net_def = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1}
>>> path = save_bundle(d + "/toy", card, net_def, torch.nn.Linear(2, 1).state_dict())
>>> b = load_bundle(path)
>>> b.model_id, b.version
('toy', '0.1.0')
>>> b.network().out_features
1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds.errors import CdsError
from cds.models.card import ModelCard

__all__ = ["Bundle", "load_bundle", "save_bundle", "BundleError", "monai_inference", "DEVICE_EXPR"]

DEVICE_EXPR = "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')"
"""The ``device`` of every inference.json cds writes: chosen when the bundle runs, never fixed to cpu."""


class BundleError(CdsError):
    """A model folder is not a usable bundle; the message names the folder and the file."""


@dataclass
class Bundle:
    """A MONAI bundle folder with its parsed model card and inference config."""

    path: Path
    metadata: dict[str, Any]
    inference: dict[str, Any]
    _network: Any = field(default=None, repr=False)
    _model_card: ModelCard | None = field(default=None, repr=False)

    @property
    def card(self) -> dict[str, Any]:
        """The ``cds`` section of the model card as a raw dict (empty for foreign bundles); prefer :attr:`model_card`."""
        return self.metadata.get("cds", {})

    @property
    def model_card(self) -> ModelCard:
        """The ``cds`` section parsed into a :class:`cds.models.card.ModelCard` (parsed once, then cached)."""
        if self._model_card is None:
            self._model_card = ModelCard.from_dict(self.card, where=str(self.path / "configs" / "metadata.json"))
        return self._model_card

    @property
    def model_id(self) -> str:
        """The card's ``model_id``, else MONAI's ``name``, else the folder name."""
        return self.model_card.model_id or self.metadata.get("name") or self.path.name

    @property
    def version(self) -> str:
        """MONAI ``version`` of the bundle (``"0"`` when absent)."""
        return str(self.metadata.get("version", "0"))

    @property
    def weights_path(self) -> Path:
        return self.path / "models" / self.model_card.weights

    def parser(self, overrides: dict[str, Any] | None = None) -> Any:
        """A ``monai.bundle.ConfigParser`` over inference.json (+ metadata) with overrides.

        Bundle configs are ``eval``'d by MONAI: load only bundles you trust.
        """
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.path / "configs" / "inference.json"))
        parser.read_meta(str(self.path / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.path)
        for k, v in (overrides or {}).items():
            parser[k] = v
        return parser

    @property
    def device(self) -> Any:
        """The ``torch.device`` inference.json's ``device`` gives now (``cuda`` when available for cds bundles);
        ``$CDS_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``) overrides it for every bundle."""
        import os

        import torch

        forced = os.environ.get("CDS_DEVICE")
        if forced:
            try:
                return torch.device(forced)
            except RuntimeError:
                raise BundleError(f"CDS_DEVICE={forced!r} is not a torch device (cpu, cuda, cuda:0 ...)") from None
        v = self.inference.get("device", "cpu")
        if isinstance(v, str) and v.startswith("$"):
            try:
                v = self.parser().get_parsed_content("device")
            except Exception as exc:  # noqa: BLE001 - name the bundle and the entry
                raise BundleError(f"{self.path}/configs/inference.json: cannot evaluate 'device': {exc}") from exc
        return torch.device(v)

    def network(self, device: Any = None) -> Any:
        """Build ``network_def`` and load ``models/model.pt`` into it (cached, eval mode) on ``device``
        (default: :attr:`device`, chosen at run time).

        On a GPU the network's inputs are moved to it and its outputs back to the CPU (forward hooks), so
        task code that feeds numpy-made CPU tensors and reads ``.numpy()`` runs unchanged.
        """
        if self._network is None:
            import torch

            dev = torch.device(device) if device is not None else self.device
            try:
                net = self.parser().get_parsed_content("network_def", instantiate=True)
            except Exception as exc:  # noqa: BLE001 - surface which bundle failed and why
                raise BundleError(f"{self.path}/configs/inference.json: cannot build network_def: {exc}") from exc
            if not self.weights_path.exists():
                raise BundleError(f"{self.weights_path}: weights file missing")
            try:
                state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise BundleError(f"{self.weights_path}: cannot load weights: {exc}") from exc
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            try:
                net.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001
                raise BundleError(f"{self.weights_path}: weights do not fit network_def: {exc}") from exc
            self._network = _on_device(net.eval(), dev)
        return self._network


def _to(v: Any, device: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, tuple | list):
        return type(v)(_to(x, device) for x in v)
    if isinstance(v, dict):
        return {k: _to(x, device) for k, x in v.items()}
    return v


def _on_device(net: Any, device: Any) -> Any:
    """``net`` moved to ``device``; off the CPU, hooks move its inputs there and its outputs back to the CPU."""
    if device.type == "cpu":
        return net
    net.to(device)
    net.register_forward_pre_hook(lambda mod, args, kwargs: (_to(args, device), _to(kwargs, device)),
                                  with_kwargs=True)
    net.register_forward_hook(lambda mod, args, out: _to(out, "cpu"))
    return net


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (a MONAI bundle needs configs/metadata.json and configs/inference.json)") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder's model card and inference config (weights load lazily)."""
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p}: not a folder (a model is a MONAI bundle folder)")
    meta = _read_json(p / "configs" / "metadata.json")
    inf = _read_json(p / "configs" / "inference.json")
    bundle = Bundle(path=p, metadata=meta, inference=inf)
    bundle.model_card  # noqa: B018 - a malformed card fails here, naming the file and the key
    return bundle


def _keep_intended_for(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the ``cds.intended_for`` of the card already at ``path`` when the new one has none:
    retraining (``cds train``) rewrites the card but must not drop its intended use or input profile
    (which depend on the training data, not the weights; ``python -m cds.models.input_profiles`` renews it)."""
    card = metadata.get("cds")
    if not isinstance(card, dict) or "intended_for" in card or not path.is_file():
        return metadata
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("cds") or {}
    except (OSError, ValueError):
        return metadata
    if "intended_for" not in old:
        return metadata
    keys = list(card)
    at = keys.index("intended_use") + 1 if "intended_use" in keys else len(keys)
    merged = dict(list(card.items())[:at] + [("intended_for", old["intended_for"])] + list(card.items())[at:])
    return {**metadata, "cds": merged}


def monai_inference(network_def: dict[str, Any], extra: dict[str, Any] | None = None,
                    generic: bool = False) -> dict[str, Any]:
    """The inference.json of a cds bundle: ``network_def`` plus what ``python -m monai.bundle run`` runs
    (the components of :mod:`cds.models.bundle_run`), then the task's own entries ``extra``.

    A text ``preprocessing`` in ``extra`` (a description, as older bundles had) moves to
    ``preprocessing_description``. With ``generic`` (a card with a ``kind``, :mod:`cds.models.generic`)
    ``preprocessing`` and ``inferer`` are the kind's own array transforms and MONAI inferer (default: none, and
    ``SimpleInferer``), which its task applies inside ``task_inferer``; otherwise pipeline entries in ``extra``
    are replaced (idempotent).

    >>> inf = monai_inference({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1}, {"cv": 5})
    >>> inf["device"] == DEVICE_EXPR, inf["run"], inf["cv"]
    (True, ['$@postprocessing(@inferer(@preprocessing(@input)))'], 5)
    >>> monai_inference(inf["network_def"], inf) == inf
    True
    """
    extra = dict(extra or {})
    if isinstance(extra.get("preprocessing"), str):
        extra["preprocessing_description"] = extra.pop("preprocessing")
    pipeline: dict[str, Any] = {
        "imports": ["$import cds.models.bundle_run as bundle_run"],
        "bundle_root": ".",
        "device": DEVICE_EXPR,
        "output_dir": "$@bundle_root + '/eval'",
        "input": "$bundle_run.sample_input(@bundle_root, @output_dir)",
        "sample": "$bundle_run.sample_facts(@bundle_root, @input)",
        "ehr": "$@sample.get('ehr', {})",
        "age_years": "$@sample.get('age_years')",
        "view": "$@sample.get('view')",
        "bundle": "$bundle_run.open_bundle(@bundle_root)",
        "network_def": network_def,
        "network": "$@bundle.network(@device)",
        "read_study": {"_target_": "cds.models.bundle_run.ReadStudy", "bundle": "@bundle", "ehr": "@ehr",
                       "age_years": "@age_years", "view": "@view"},
        "task_inferer": {"_target_": "cds.models.bundle_run.TaskInferer", "bundle": "@bundle", "network": "@network",
                         "device": "@device"},
        "preprocessing": {"_target_": "Compose", "transforms": ["@read_study"]},
        "inferer": "@task_inferer",
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "cds.models.bundle_run.WriteFindings", "output_dir": "@output_dir", "bundle": "@bundle"}]},
        "run": ["$@postprocessing(@inferer(@preprocessing(@input)))"],
    }
    if generic:  # a generic kind applies preprocessing (array transforms) and inferer inside its predict
        pipeline["run"] = ["$@postprocessing(@task_inferer(@read_study(@input)))"]
        pipeline["preprocessing"] = extra.pop("preprocessing", {"_target_": "Compose", "transforms": []})
        pipeline["inferer"] = extra.pop("inferer", {"_target_": "SimpleInferer"})
    return {**pipeline, **{k: v for k, v in extra.items() if k not in pipeline}}


def save_bundle(
    path: str | Path,
    metadata: dict[str, Any],
    network_def: dict[str, Any],
    state_dict: dict[str, Any] | None,
    inference_extra: dict[str, Any] | None = None,
    readme: str | None = None,
) -> Path:
    """Write a bundle folder; returns its path. ``network_def`` is a MONAI config dict.

    ``inference.json`` is :func:`monai_inference` (runnable by ``python -m monai.bundle run``) and
    ``metadata.json`` is put in the normal form of :func:`cds.models.bundle_check.normalise_metadata`
    (valid against MONAI's schema, outputs described as the logits they are); a default
    ``configs/sample.json`` is written when the folder has none and one fits the task.
    """
    import torch

    from cds.models.bundle_check import normalise_metadata
    from cds.models.bundle_run import default_sample

    p = Path(path)
    (p / "configs").mkdir(parents=True, exist_ok=True)
    (p / "models").mkdir(parents=True, exist_ok=True)
    metadata = normalise_metadata(_keep_intended_for(p / "configs" / "metadata.json", metadata))
    card = metadata.get("cds") or {}
    inference = monai_inference(network_def, inference_extra, generic=bool(card.get("kind") and not card.get("task")))
    (p / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
    sample = default_sample(card.get("task"), card.get("modality"))
    if sample is not None and not (p / "configs" / "sample.json").exists():
        (p / "configs" / "sample.json").write_text(json.dumps(sample, indent=2) + "\n")
    (p / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
    if state_dict is not None:
        torch.save(state_dict, p / "models" / "model.pt")
    if readme is not None:
        (p / "docs").mkdir(exist_ok=True)
        (p / "docs" / "README.md").write_text(readme)
    return p
