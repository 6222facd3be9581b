"""Is a bundle folder a real MONAI bundle? Metadata valid against MONAI's schema, inference.json runnable.

``python -m cds.models.bundle_check BUNDLE_DIR...`` checks each folder and prints one line per problem
(exit status 1 when there is any); ``--fix`` first rewrites what can be derived (idempotent):

- ``configs/metadata.json`` is validated with ``monai.bundle.verify_metadata`` against the schema vendored
  in ``cds/models/schema/`` (:data:`SCHEMA_FILE`, pinned by :data:`SCHEMA_SHA256`): nothing is downloaded.
  :func:`normalise_metadata` fills the MONAI fields the schema requires and describes the network's
  outputs truthfully: every cds reference network ends *without* an activation (the task applies sigmoid
  or softmax), so ``outputs`` are ``logits`` and ``post_processed_outputs`` the probabilities.
- ``configs/inference.json`` must hold what ``python -m monai.bundle run`` needs (:data:`INFERENCE_KEYS`,
  written by :func:`cds.models.bundle.monai_inference`), with the device chosen at run time.
- ``configs/sample.json`` (the default input, :mod:`cds.models.bundle_run`) is written when missing and a
  sample fits the task (:func:`cds.models.bundle_run.default_sample`).

>>> meta = normalise_metadata({"version": "1.0", "task": "toy", "cds": {"task": "toy", "intended_use": "demo"},
...     "network_data_format": {"inputs": {"x": {"type": "vector", "num_channels": 2}},
...                             "outputs": {"pred": {"type": "probabilities", "num_channels": 1}}}})
>>> meta["schema"] == SCHEMA_URL, meta["network_data_format"]["outputs"]["pred"]["type"]
(True, 'logits')
>>> meta["network_data_format"]["post_processed_outputs"]["pred"]["type"], meta["intended_use"]
('probabilities', 'demo')
>>> normalise_metadata(meta) == meta
True
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cds.models.bundle import DEVICE_EXPR, BundleError, monai_inference

__all__ = ["SCHEMA_URL", "SCHEMA_FILE", "SCHEMA_SHA256", "INFERENCE_KEYS", "validate_metadata",
           "check_inference", "check_bundle", "macro_texts", "normalise_metadata", "fix_bundle", "main"]

SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"
"""The schema every cds bundle's metadata names (the one the MONAI Model Zoo uses)."""
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / SCHEMA_NAME
"""The vendored copy (see ``cds/models/schema/README.md`` for origin and licence)."""
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"

INFERENCE_KEYS = ("bundle_root", "device", "input", "output_dir", "network_def", "network", "preprocessing",
                  "inferer", "postprocessing", "run")
"""What ``monai.bundle run`` reads in a cds inference.json."""

_TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def validate_metadata(bundle_dir: str | Path) -> None:
    """Validate ``configs/metadata.json`` with ``monai.bundle.verify_metadata`` against the vendored schema.

    The metadata must name :data:`SCHEMA_URL`; MONAI then finds the schema already at ``filepath`` (checked
    against :data:`SCHEMA_SHA256`) and downloads nothing. Raises :class:`BundleError` naming the file.
    """
    from monai.bundle import verify_metadata

    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{meta_file}: missing") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_file}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if meta.get("schema") != SCHEMA_URL:
        raise BundleError(f"{meta_file}: schema is {meta.get('schema')!r}, not {SCHEMA_URL!r} (the schema cds "
                          "vendors; python -m cds.models.bundle_check --fix rewrites it)")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_FILE), create_dir=False,
                        hash_val=SCHEMA_SHA256, hash_type="sha256")
    except ValueError as exc:
        raise BundleError(f"{meta_file}: not valid against {SCHEMA_NAME}: {str(exc).strip()}") from None
    except RuntimeError as exc:  # monai's HashCheckError: the vendored copy was changed
        raise BundleError(f"{SCHEMA_FILE}: {exc}") from None


def check_inference(bundle_dir: str | Path) -> list[str]:
    """Problems of ``configs/inference.json`` for ``monai.bundle run`` (empty when none)."""
    p = Path(bundle_dir) / "configs" / "inference.json"
    try:
        inf = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{p}: cannot be read ({exc})"]
    problems = [f"{p}: no {k!r} entry (python -m cds.models.bundle_check --fix adds it)"
                for k in INFERENCE_KEYS if k not in inf]
    device = inf.get("device")
    if not (isinstance(device, str) and device.startswith("$") and "cuda" in device):
        problems.append(f"{p}: device is {device!r}; it must be chosen at run time ({DEVICE_EXPR})")
    return problems


def check_bundle(bundle_dir: str | Path) -> list[str]:
    """Every problem found: metadata against the schema, inference.json, and the metadata normalised."""
    problems: list[str] = []
    try:
        validate_metadata(bundle_dir)
    except BundleError as exc:
        problems.append(str(exc))
    problems += check_inference(bundle_dir)
    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    if meta_file.is_file():
        problems += [f"{meta_file}: {where} is {text!r}: MONAI's config parser reads a text starting with '%' as a "
                     "macro (a copy of the whole config), so monai.bundle run --meta_file never finishes; write it "
                     "another way" for where, text in macro_texts(json.loads(meta_file.read_text(encoding="utf-8")))]
    if meta_file.is_file() and not problems:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if normalise_metadata(meta) != meta:
            problems.append(f"{meta_file}: network_data_format or MONAI fields differ from their normal form "
                            "(python -m cds.models.bundle_check --fix)")
    return problems


def macro_texts(meta: Any, where: str = "") -> list[tuple[str, str]]:
    """``(id, text)`` of every text in ``meta`` that starts with MONAI's macro sign ``%``.

    >>> macro_texts({"cds": {"outputs": [{"unit": "%"}, {"unit": "mL"}]}})
    [('cds#outputs#0#unit', '%')]
    """
    if isinstance(meta, dict):
        return [x for k, v in meta.items() for x in macro_texts(v, f"{where}#{k}" if where else str(k))]
    if isinstance(meta, list):
        return [x for i, v in enumerate(meta) for x in macro_texts(v, f"{where}#{i}")]
    return [(where, meta)] if isinstance(meta, str) and meta.startswith("%") else []


# ---------------------------------------------------------------------------------- normal form
def _tensor(t: Any, default_format: str) -> Any:
    if not isinstance(t, dict):
        return t
    out = dict(t)
    names = out.pop("names", None)
    if "num_channels" not in out and isinstance(names, list):
        out["num_channels"] = len(names)
    n = out.get("num_channels", 1)
    out.setdefault("type", "tensor")
    out.setdefault("format", default_format)
    out.setdefault("num_channels", n)
    out.setdefault("spatial_shape", [n])
    out.setdefault("dtype", "float32")
    out.setdefault("value_range", [])
    out.setdefault("is_patch_data", False)
    if "channel_def" not in out:
        out["channel_def"] = {str(i): str(v) for i, v in enumerate(names)} if isinstance(names, list) else {}
    return out


def _meaning(d: Any) -> str:
    """A channel's meaning without the words about logits: ``'logit of X (apply sigmoid)'`` -> ``'X'``.

    >>> _meaning("logit of pneumonia (apply sigmoid)"), _meaning("F (raw score; softmax gives its probability)")
    ('pneumonia', 'F')
    """
    s = re.sub(r"^logit of ", "", str(d))
    return re.sub(r"\s*\((apply [a-z]+|raw score;[^)]*)\)$", "", s)


def _activation(t: dict[str, Any], card: dict[str, Any]) -> str:
    act = t.get("activation") or card.get("activation")
    if act in ("sigmoid", "softmax"):
        return act
    return "sigmoid" if int(t.get("num_channels", 1)) == 1 else "softmax"


def normalise_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the MONAI fields in their normal form (a new dict; idempotent).

    Fills what the schema requires (``schema``, versions, ``required_packages_version`` with ``cds``,
    ``task``, ``description``, ``authors``, ``copyright``, ``intended_use`` from the card), completes every
    tensor of ``network_data_format`` (type, format, num_channels, spatial_shape, dtype, value_range) and,
    for a cds card (``cds.task`` or ``cds.kind``), says what the network really returns: raw scores
    (``type: logits``, unbounded), with ``post_processed_outputs`` giving the probabilities after the
    activation the task applies (sigmoid for one channel, softmax for several, or the card's/tensor's
    ``activation``).
    """
    import monai
    import numpy as np
    import torch

    import cds

    m = copy.deepcopy(meta)
    card = m.get("cds") if isinstance(m.get("cds"), dict) else {}
    m["schema"] = SCHEMA_URL
    m["version"] = str(m.get("version", "0.0.0"))
    m.setdefault("monai_version", monai.__version__)
    m.setdefault("pytorch_version", torch.__version__.split("+")[0])
    m.setdefault("numpy_version", np.__version__)
    req = m.get("required_packages_version")
    m["required_packages_version"] = dict(req) if isinstance(req, dict) else {}
    if card:
        m["required_packages_version"].setdefault("cds", cds.__version__)
    m["task"] = str(m.get("task") or card.get("task") or card.get("kind") or "")
    m.setdefault("description", str(card.get("intended_use") or m.get("name") or m["task"]))
    m.setdefault("authors", "cds project")
    m.setdefault("copyright", "Copyright (c) cds project contributors; weights trained on the data sets named in "
                              "data_source")
    if "intended_use" not in m and card.get("intended_use"):
        m["intended_use"] = str(card["intended_use"])
    if isinstance(m.get("references"), str):
        m["references"] = [m["references"]]
    for key in ("image_classes", "label_classes", "pred_classes"):
        if key in m and not isinstance(m[key], str):
            m[key] = json.dumps(m[key])
    ndf = m.get("network_data_format") if isinstance(m.get("network_data_format"), dict) else {}
    ndf = dict(ndf)
    ndf["inputs"] = {k: _tensor(v, "features") for k, v in (ndf.get("inputs") or {}).items()}
    outputs = {k: _tensor(v, "classes") for k, v in (ndf.get("outputs") or {}).items()}
    if card.get("task") or card.get("kind"):
        post = dict(ndf.get("post_processed_outputs") or {})
        for k, t in outputs.items():
            if not isinstance(t, dict):
                continue
            act = _activation(t, card)
            if t["type"] != "logits":
                t["type"], t["value_range"] = "logits", []
                if t.get("format") == "logits":
                    t["format"] = "classes"
                t["channel_def"] = {c: (f"{d} (raw score; {act} gives its probability)"
                                        if "logit" not in str(d) else str(d))
                                    for c, d in (t.get("channel_def") or {}).items()}
            t.pop("activation", None)
            if k not in post:
                post[k] = {**t, "type": "probabilities", "value_range": [0, 1],
                           "channel_def": {c: f"probability ({act}): {_meaning(d)}"
                                           for c, d in (t.get("channel_def") or {}).items()},
                           "activation": act}
        ndf["post_processed_outputs"] = post
    ndf["outputs"] = outputs
    m["network_data_format"] = ndf
    return m


def fix_bundle(bundle_dir: str | Path) -> list[str]:
    """Rewrite ``metadata.json`` (normal form), ``inference.json`` (MONAI-runnable) and, when missing,
    ``sample.json`` of a bundle folder; returns the files changed (none on a second call)."""
    from cds.models.bundle_run import default_sample

    cfg = Path(bundle_dir) / "configs"
    changed: list[str] = []
    meta_file, inf_file, sample_file = cfg / "metadata.json", cfg / "inference.json", cfg / "sample.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        inf = json.loads(inf_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{cfg}: cannot read the bundle configs ({exc})") from None
    new_meta = normalise_metadata(meta)
    if new_meta != meta:
        meta_file.write_text(json.dumps(new_meta, indent=2) + "\n", encoding="utf-8")
        changed.append(str(meta_file))
    if "network_def" not in inf:
        raise BundleError(f"{inf_file}: no network_def, so it cannot be made runnable")
    card = new_meta.get("cds") or {}
    new_inf = monai_inference(inf["network_def"], {k: v for k, v in inf.items() if k != "network_def"},
                              generic=bool(card.get("kind") and not card.get("task")))
    if new_inf != inf:
        inf_file.write_text(json.dumps(new_inf, indent=2) + "\n", encoding="utf-8")
        changed.append(str(inf_file))
    spec = default_sample(card.get("task"), card.get("modality"))
    if not sample_file.exists() and spec is not None:
        sample_file.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        changed.append(str(sample_file))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.models.bundle_check [--fix] BUNDLE_DIR...``: 0 when every bundle passes, else 1."""
    ap = argparse.ArgumentParser(prog="python -m cds.models.bundle_check", description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+", help="bundle folders (holding configs/metadata.json)")
    ap.add_argument("--fix", action="store_true", help="rewrite what can be derived before checking")
    args = ap.parse_args(argv)
    bad = 0
    for d in args.bundles:
        if not (Path(d) / "configs").is_dir():
            print(f"{d}: not a bundle folder (no configs/)", file=sys.stderr)
            bad += 1
            continue
        try:
            if args.fix:
                for f in fix_bundle(d):
                    print(f"fixed {f}")
            problems = check_bundle(d)
        except BundleError as exc:
            problems = [str(exc)]
        for p in problems:
            print(p, file=sys.stderr)
        bad += bool(problems)
        if not problems:
            print(f"{d}: ok (metadata valid against {SCHEMA_NAME}; inference.json runnable by monai.bundle run)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
