"""The out-of-distribution input profiles of the built-in 2D models, and the command that writes them.

A model card's ``intended_for.input_profile`` (:class:`cds.models.card.IntendedFor`) is the reference
:func:`cds.models.vouch.check_quality` compares every image with: the medians and MADs of simple
intensity and texture features (:func:`cds.models.vouch.input_features`) over the model's training
images, and the largest robust z-score accepted (:func:`cds.models.vouch.input_profile`). This module
computes it from the training split alone (each task's ``training_images``, read by the task's own
reader) and, for honesty, measures how often it flags other images::

    python -m cds.models.input_profiles MODEL --data DIR [--write] [--bundle DIR] [--margin X] [--json]

``--data`` is the model's training data folder (the card's ``training_data.path``); the other data
sets checked are looked up beside it (``DIR/../<set>``) and skipped, with a note, when absent. The
profile records ``command`` (this command line) and ``checked_on``: the fraction flagged of

- ``training images``: by construction at most ``1 - quantile`` (0.5 %), less with ``margin`` > 1
  (also ``training_flagged_fraction``);
- ``training images cross-validated``: 5 folds by patient (woman, image where there are no patient
  ids): a profile built on 4 folds flags this fraction of the 5th, i.e. of new images from the
  training population (the estimate for models without a held-out split);
- the held-out split the card's performance uses, where there is one (pneumonia ``val_``,
  cxr-cardiomegaly ``test`` patients; for cxr-icu the later radiographs of its patients);
- other data sets (adult / paediatric radiographs, mammograms, the sample cohort's DICOM files, and
  those files with rows and columns swapped);
- damaged copies of the training images: pixels scrambled by swapping rows and columns
  (``a.ravel().reshape(cols, rows)``, after cropping a square image to 3:4 so the swap changes it; the
  crop alone is checked too, as a control) and a blank image.

``--write`` stores the profile as ``cds.intended_for.input_profile`` in the bundle's
``configs/metadata.json`` (nothing else changes) and re-renders ``docs/README.md`` from it.
ct-lung-nodule (one training series) and cmr-function (synthetic phantoms only) have no profile.

>>> sorted(PROFILED)
['cxr-cardiomegaly', 'cxr-icu', 'mammo-abnormality', 'mammo-density', 'pneumonia']
>>> a = np.arange(12.0).reshape(3, 4)
>>> swapped(a).shape, bool(np.array_equal(swapped(a).ravel(), a.ravel()))
((4, 3), True)
>>> swapped(np.zeros((8, 8))).shape
(6, 8)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import CdsError, ParameterError
from cds.locations import BUNDLES_DIR, REPO_ROOT, display_path
from cds.models import vouch

__all__ = ["PROFILED", "NOT_PROFILED", "Spec", "build_profile", "write_profile", "swapped", "cropped", "main"]

#: Models without a profile and why (reported, not written).
NOT_PROFILED = {
    "ct-lung-nodule": "trained on synthetic nodules in ONE CT series: one series is no distribution to profile",
    "cmr-function": "trained on synthetic phantoms only: a profile of phantoms would refuse real cines and "
                    "vouch for nothing",
}

FOLDS = 5
Images = Iterable[np.ndarray]


@dataclass(frozen=True)
class Spec:
    """How one model's profile is built and checked."""

    task: str  #: module under cds.models.tasks
    data: str  #: what the profile's reference is (data set + split), stored as ``data``
    held_out: Callable[[Path], dict[str, Images]]  #: the card's held-out split(s), by name
    others: tuple[str, ...]  #: keys of :data:`OTHER_SETS` checked
    group: Callable[[str], str] = str  #: training image name -> patient, for the cross-validation
    unit: str = "image"  #: what :attr:`group` returns (the cross-validation's fold unit)


def _task(spec: Spec) -> Any:
    import importlib

    return importlib.import_module(f"cds.models.tasks.{spec.task}").TASK


# ------------------------------------------------------------------------------------ held-out splits
def _pneumonia_val(data: Path) -> dict[str, Images]:
    from cds.models.tasks.pneumonia import load_split

    images, _, _, _ = load_split(data, "val")
    return {f"held-out val_ arrays (card performance, {len(images)} images)": list(images)}


def _cardiomegaly_test(data: Path) -> dict[str, Images]:
    from cds.models.tasks.cxr_cardiomegaly import load_labels, split_patients
    from cds.models.tasks.inputs import read_gray

    df = load_labels(data)
    test = df[(split_patients(df) == "test").to_numpy()]
    return {f"held-out test patients (card performance, {len(test)} images)": [read_gray(p) for p in test["path"]]}


def _icu_later(data: Path) -> dict[str, Images]:
    from cds.models.tasks.cxr_icu import load_cohort
    from cds.models.tasks.inputs import read_gray

    cohort, _ = load_cohort(data)
    first = set(cohort["image_id"])
    later = sorted(p for p in (data / "png").glob("*.png") if p.stem not in first)
    return {f"later radiographs of the same patients (not fitted on; {len(later)} images)":
            [read_gray(p) for p in later]}


def _none(data: Path) -> dict[str, Images]:
    return {}


def _nih_patient(name: str) -> str:
    return name.split("_")[0]


def _woman(name: str) -> str:
    from cds.models.tasks.mammo import woman_id

    return woman_id(name)


# ------------------------------------------------------------------------------------ other data sets
def _pngs(folder: Path, reader: Callable[[Path], np.ndarray]) -> list[np.ndarray] | None:
    files = sorted(folder.glob("*.png"))
    return [reader(p) for p in files] if files else None


def _gray(p: Path) -> np.ndarray:
    from cds.models.tasks.inputs import read_gray

    return read_gray(p)


def _mammogram(p: Path) -> np.ndarray:
    from cds.models.tasks.mammo import read_mammogram

    return read_mammogram(p)


def _pneumoniamnist(shared: Path) -> list[np.ndarray] | None:
    f = shared / "medmnist" / "pneumoniamnist_balanced_subset_trainval.npz"
    if not f.is_file():
        return None
    with np.load(f) as z:
        return list(z["val_images"])


@functools.lru_cache(maxsize=1)
def _sample_dicom_arrays() -> tuple[np.ndarray, ...]:
    from cds.images.dicom import read_dicom_file

    files = sorted((REPO_ROOT / "fhir_samples" / "dicom" / "hannover").glob("*/*.dcm"))
    return tuple(np.asarray(read_dicom_file(f).array) for f in files)


def _sample_dicom(shared: Path) -> list[np.ndarray] | None:
    return list(_sample_dicom_arrays()) or None


def _sample_dicom_swapped(shared: Path) -> list[np.ndarray] | None:
    """The sample DICOM images with rows and columns swapped as a wrong header would (no crop: a
    nearly square image is only sheared, a square one unchanged, and both are counted)."""
    images = _sample_dicom(shared)
    return [a.ravel().reshape(a.shape[1], a.shape[0]) for a in images] if images else None


#: Other data sets: key -> (label, loader given the folder that holds the data sets, or None when absent).
OTHER_SETS: dict[str, tuple[str, Callable[[Path], list[np.ndarray] | None]]] = {
    "hannover": ("Hannover COVID-19 adult CXRs (PNG)", lambda s: _pngs(s / "hannover-covid19-cxr" / "png", _gray)),
    "sample-dicom": ("sample cohort Hannover CXRs (fhir_samples/dicom/hannover)", _sample_dicom),
    "sample-dicom-swapped": ("sample cohort Hannover CXRs, rows/columns swapped", _sample_dicom_swapped),
    "nih": ("NIH ChestX-ray14 adult CXR thumbnails (64 px)", lambda s: _pngs(s / "nih-cxr14-thumbs64" / "png", _gray)),
    "pneumoniamnist": ("PneumoniaMNIST paediatric CXRs (28 px, val_)", _pneumoniamnist),
    "mias": ("mini-MIAS mammograms", lambda s: _pngs(s / "mini-mias" / "png", _mammogram)),
}

_CXR_OTHERS = ("hannover", "sample-dicom", "sample-dicom-swapped", "nih", "pneumoniamnist", "mias")

PROFILED: dict[str, Spec] = {
    "pneumonia": Spec("pneumonia", "PneumoniaMNIST balanced subset, train_ arrays (the training split)",
                      _pneumonia_val, ("hannover", "sample-dicom", "sample-dicom-swapped", "nih", "mias"),
                      unit="image (MedMNIST has no patient ids)"),
    "cxr-cardiomegaly": Spec("cxr_cardiomegaly", "NIH ChestX-ray14 64 px thumbnails, train patients (the training "
                             "split)", _cardiomegaly_test, _CXR_OTHERS, _nih_patient, "patient"),
    "cxr-icu": Spec("cxr_icu", "Hannover COVID-19 CXRs, first radiograph of the 47 eligible patients (the training "
                    "set)", _icu_later, _CXR_OTHERS, unit="patient (one radiograph each)"),
    "mammo-density": Spec("mammo_density", "mini-MIAS, all 40 images (the training set)", _none,
                          ("hannover", "sample-dicom", "nih", "pneumoniamnist"), _woman, "woman"),
    "mammo-abnormality": Spec("mammo_abnormality", "mini-MIAS, all 40 images (the training set)", _none,
                              ("hannover", "sample-dicom", "nih", "pneumoniamnist"), _woman, "woman"),
}


# ------------------------------------------------------------------------------------ damaged copies
def cropped(a: np.ndarray) -> np.ndarray:
    """A square image cropped to 3:4 (columns), so that swapping rows and columns scrambles it; others as is."""
    a = np.asarray(a)
    return a[:, : max(2, (3 * a.shape[1]) // 4)] if a.shape[0] == a.shape[1] else a


def swapped(a: np.ndarray) -> np.ndarray:
    """The raster read with rows and columns swapped (a header whose Rows/Columns are exchanged):
    ``a.ravel().reshape(cols, rows)`` of :func:`cropped` ``a``."""
    c = cropped(a)
    return c.ravel().reshape(c.shape[1], c.shape[0])


# ------------------------------------------------------------------------------------ measuring
def _flagged(profile: dict[str, Any], features: Sequence[dict[str, float]]) -> float:
    if not features:
        return float("nan")
    z = np.array([vouch.profile_distance(profile, f)[0] for f in features])
    return round(float(np.mean(z > float(profile["max_z"]))), 4)


def _features(images: Images) -> list[dict[str, float]]:
    return [vouch.input_features(np.asarray(a)) for a in images]


def _cross_validated(features: list[dict[str, float]], groups: list[str], margin: float) -> float:
    """Fraction flagged of each fold by a profile built on the other folds (folds by group, hashed)."""
    from cds.models.tasks.inputs import stable_hash

    uniq = sorted(set(groups), key=lambda g: stable_hash(f"input-profile:{g}"))
    fold_of = {g: i % FOLDS for i, g in enumerate(uniq)}
    hits = 0
    for k in range(FOLDS):
        fit = [f for f, g in zip(features, groups, strict=True) if fold_of[g] != k]
        test = [f for f, g in zip(features, groups, strict=True) if fold_of[g] == k]
        if not test or not fit:
            continue
        prof = vouch.input_profile(fit, data="fold", margin=margin)
        hits += sum(vouch.profile_distance(prof, f)[0] > prof["max_z"] for f in test)
    return round(hits / len(features), 4)


def command_line(model: str, data: str | Path, *, write: bool = False, bundle: str | Path | None = None,
                 margin: float | None = None) -> str:
    """The command that (re)builds a profile, as stored in its ``command``.

    >>> command_line("pneumonia", "../shared/data/medmnist", write=True)
    'python -m cds.models.input_profiles pneumonia --data ../shared/data/medmnist --write'
    """
    parts = ["python -m cds.models.input_profiles", model, "--data", display_path(data)]
    if bundle is not None:
        parts += ["--bundle", display_path(bundle)]
    if margin is not None:
        parts += ["--margin", f"{margin:g}"]
    return " ".join(parts + (["--write"] if write else []))


def _spec(model: str) -> Spec:
    if model in NOT_PROFILED:
        raise ParameterError("MODEL", f"{model} gets no input profile: {NOT_PROFILED[model]}")
    if model not in PROFILED:
        raise ParameterError("MODEL", f"{model!r} is not a built-in profiled model; choose one of {', '.join(PROFILED)}")
    return PROFILED[model]


def build_profile(model: str, data_dir: str | Path, *, margin: float | None = None, command: str | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The ``input_profile`` of ``model`` from its training images in ``data_dir``, with ``command`` and
    ``checked_on`` (fraction flagged per data set; see the module docstring)."""
    spec = _spec(model)
    data = Path(data_dir)
    say = log or (lambda _m: None)
    names, train = [], []
    for name, a in _task(spec).training_images(data):
        names.append(name)
        train.append(np.asarray(a))
    feats = _features(train)
    if len(feats) < 2 * FOLDS:
        raise ParameterError("--data", f"{display_path(data)}: only {len(feats)} training images; a profile needs "
                                       f"at least {2 * FOLDS}")
    kw = {} if margin is None else {"margin": float(margin)}
    profile = vouch.input_profile(feats, data=f"{spec.data}, {len(feats)} images", **kw)
    profile["command"] = command or command_line(model, data, margin=margin)
    say(f"{model}: profile of {len(feats)} training images, max_z {profile['max_z']}")
    checked: dict[str, float] = {f"training images ({len(feats)})": profile["training_flagged_fraction"]}
    checked[f"training images cross-validated, {FOLDS} folds by {spec.unit} ({len(feats)})"] = _cross_validated(
        feats, [spec.group(n) for n in names], profile["margin"])
    for label, images in spec.held_out(data).items():
        checked[label] = _flagged(profile, _features(images))
    shared = data.parent if data.is_dir() else data.parent.parent
    for key in spec.others:
        label, load = OTHER_SETS[key]
        images = load(shared)
        if images is None:
            say(f"  {label}: not found beside {display_path(data)}; skipped")
            continue
        checked[f"{label} ({len(images)})"] = _flagged(profile, _features(images))
    checked[f"training images cropped to 3:4, control ({len(train)})"] = _flagged(
        profile, _features(cropped(a) for a in train))
    checked[f"training images with rows/columns swapped ({len(train)})"] = _flagged(
        profile, _features(swapped(a) for a in train))
    checked["blank image (1)"] = _flagged(profile, _features([np.zeros_like(train[0])]))
    profile["checked_on"] = checked
    return profile


def write_profile(bundle_dir: str | Path, profile: dict[str, Any]) -> Path:
    """Store ``profile`` as ``cds.intended_for.input_profile`` of the bundle's ``configs/metadata.json``
    (every other key unchanged) and re-render ``docs/README.md``; returns the metadata path."""
    from cds.models.card import ModelCard
    from cds.models.card_markdown import write_readme

    path = Path(bundle_dir) / "configs" / "metadata.json"
    if not path.is_file():
        raise ParameterError("--bundle", f"{display_path(path)} not found (expected a bundle folder)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.setdefault("cds", {}).setdefault("intended_for", {})["input_profile"] = profile
    ModelCard.from_dict(meta["cds"], where=str(path))  # refuse to write a card that would not load
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_readme(path.parent.parent)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cds.models.input_profiles``: print the flagged fractions; ``--write`` stores the profile."""
    ap = argparse.ArgumentParser(prog="python -m cds.models.input_profiles", description=__doc__.splitlines()[0])
    ap.add_argument("model", metavar="MODEL", help=f"one of {', '.join(PROFILED)}")
    ap.add_argument("--data", required=True, help="the model's training data folder (card training_data.path)")
    ap.add_argument("--bundle", default=None, help="bundle folder to write (default: the shipped one)")
    ap.add_argument("--margin", type=float, default=None, help="max_z = margin x the 99.5 %% training quantile "
                                                                "(default: cds.models.vouch.input_profile's)")
    ap.add_argument("--write", action="store_true", help="store the profile in the bundle's metadata.json")
    ap.add_argument("--json", action="store_true", help="print the profile as JSON")
    args = ap.parse_args(argv)
    try:
        if args.margin is not None and not (np.isfinite(args.margin) and args.margin > 0):
            raise ParameterError("--margin", f"must be a positive number, got {args.margin}")
        bundle = Path(args.bundle) if args.bundle else BUNDLES_DIR / args.model
        cmd = command_line(args.model, args.data, write=args.write, bundle=args.bundle, margin=args.margin)
        prof = build_profile(args.model, args.data, margin=args.margin, command=cmd,
                             log=lambda m: print(m, file=sys.stderr))
        if args.json:
            print(json.dumps(prof, indent=2))
        else:
            print(f"{args.model}: max robust z accepted {prof['max_z']} (margin {prof['margin']}); fraction flagged:")
            for name, frac in prof["checked_on"].items():
                print(f"  {frac:7.4f}  {name}")
        if args.write:
            print(f"wrote {display_path(write_profile(bundle, prof))}")
    except CdsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

