"""What ``python -m monai.bundle run`` executes in a cds bundle: the config components of ``inference.json``.

Every reference bundle's ``configs/inference.json`` (written by :func:`cds.models.bundle.monai_inference`)
runs under MONAI's own runner, from the bundle folder::

    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json
    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --input /path/to/image.dcm --output_dir /tmp/out

and writes ``<output_dir>/findings.json`` (default ``output_dir``: ``<bundle_root>/eval``). The config's
``run`` is ``@postprocessing(@inferer(@preprocessing(@input)))`` with these components:

- ``preprocessing``: a MONAI ``Compose`` of :class:`ReadStudy` (the file, DICOM folder, NIfTI or PNG read
  by cds's readers into a :class:`cds.images.image.Image`, with the EHR values and study facts),
- ``network_def`` / ``network``: the network of the bundle with ``models/model.pt`` loaded, on ``device``
  (``cuda`` when available, chosen at run time),
- ``inferer``: :class:`TaskInferer`: the checks of :mod:`cds.models.vouch` (intended use, input quality),
  then the task's ``predict`` (:data:`cds.models.task_table.TASKS`), which feeds ``network`` — the same
  code path as ``cds run``,
- ``postprocessing``: a ``Compose`` of :class:`WriteFindings` (the Findings, or why the model did not
  answer, as JSON).

The default ``input`` is the bundle's sample (``configs/sample.json``, :func:`sample_input`): small, built
from data committed with cds (or synthetic), its licence in :data:`SAMPLE_SOURCES`.

>>> sorted(SAMPLE_KINDS)
['fhir_samples', 'phantom_cine', 'pixels', 'pneumoniamnist', 'synthetic_ct', 'synthetic_mammogram']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cds.errors import CdsError, NoAnswer, ParameterError

__all__ = ["open_bundle", "sample_input", "sample_facts", "ReadStudy", "TaskInferer", "WriteFindings",
           "SAMPLE_KINDS", "SAMPLE_SOURCES", "default_sample", "write_sample_image"]

SAMPLE_KINDS = ("pneumoniamnist", "fhir_samples", "pixels", "synthetic_mammogram", "phantom_cine", "synthetic_ct")
"""The kinds of ``configs/sample.json`` :func:`sample_input` understands."""

SAMPLE_SOURCES = {
    "pneumoniamnist": "sample_data/pneumoniamnist (PneumoniaMNIST, MedMNIST v2, CC BY 4.0; see its SOURCE.md)",
    "fhir_samples": "fhir_samples (Hannover Medical School COVID-19 CXR, CC BY 3.0; see fhir_samples/SOURCES.md)",
    "pixels": "pixels stored in configs/sample.json itself (its 'source' says where from and under which licence)",
    "synthetic_mammogram": "synthetic: drawn by cds.models.bundle_run (no patient data)",
    "phantom_cine": "synthetic: cds.models.tasks.phantom.make_cine (no patient data)",
    "synthetic_ct": "synthetic: drawn by cds.models.bundle_run (no patient data)",
}
"""Where each kind of sample comes from and under which licence."""


def open_bundle(bundle_root: str | Path) -> Any:
    """The :class:`cds.models.bundle.Bundle` at ``bundle_root`` (what the config's ``bundle`` entry is)."""
    from cds.models.bundle import load_bundle

    return load_bundle(Path(bundle_root).resolve())


# ------------------------------------------------------------------------------------------ samples
def _read_sample(bundle_root: str | Path) -> dict[str, Any]:
    p = Path(bundle_root) / "configs" / "sample.json"
    try:
        spec = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParameterError("input", f"{p}: missing, so this bundle has no default sample; pass --input PATH "
                                      "(or write one: python -m cds.models.bundle_check --fix BUNDLE_DIR)") from None
    except json.JSONDecodeError as exc:
        raise ParameterError("input", f"{p}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if spec.get("kind") not in SAMPLE_KINDS:
        raise ParameterError("input", f"{p}: kind {spec.get('kind')!r} is not one of {', '.join(SAMPLE_KINDS)}")
    return spec


def _save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image as PILImage

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _synthetic_mammogram(seed: int, size: int = 1024) -> np.ndarray:
    """A synthetic MLO-like picture (breast against the left edge, pectoral triangle, soft texture), uint8."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:size, 0:size].astype(np.float64) / size
    breast = ((c / 0.62) ** 2 + ((r - 0.55) / 0.45) ** 2) <= 1.0
    texture = gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 12) * 6.0
    depth = np.clip(1.0 - c / 0.62, 0.0, 1.0) ** 0.5
    img = np.where(breast, 70.0 + 90.0 * depth + 25.0 * texture, 4.0)
    pectoral = (c < 0.28 - 0.45 * r) & breast
    img = np.where(pectoral, 200.0 + 10.0 * texture, img)
    blob = ((r - 0.5) ** 2 + (c - 0.3) ** 2) <= 0.02 ** 2
    img = np.where(blob & breast, img + 45.0, img)
    return np.clip(gaussian_filter(img, 1.0) + rng.normal(0.0, 2.0, img.shape), 0, 255).astype(np.uint8)


def _synthetic_ct(seed: int, path: Path) -> Path:
    """A synthetic chest CT (NIfTI, HU): body, two lungs, airway, one 8 mm solid nodule in the right lung."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    n, rows, cols, px, sl = 40, 384, 384, 0.8, 2.5
    k, j, i = np.mgrid[0:n, 0:rows, 0:cols].astype(np.float64)
    x, y, z = (i - cols / 2) * px, (j - rows / 2) * px, (k - n / 2) * sl
    vol = np.full((n, rows, cols), -1000.0)
    vol[((x / 150) ** 2 + (y / 110) ** 2) <= 1] = 40.0
    for cx in (-70.0, 70.0):
        vol[(((x - cx) / 55) ** 2 + (y / 80) ** 2 + (z / 70) ** 2) <= 1] = -850.0
    vol[(x ** 2 + (y + 20) ** 2) <= 8 ** 2] = -1000.0
    vol[((x + 70) ** 2 + (y - 10) ** 2 + z ** 2) <= 4 ** 2] = 30.0
    vol += rng.normal(0.0, 15.0, vol.shape)
    # NIfTI axes (i, j, k) = (column, row, slice); RAS affine of an LPS grid (x = -R, y = -A)
    affine = np.diag([-px, -px, sl, 1.0])
    img = nib.Nifti1Image(vol.transpose(2, 1, 0).astype(np.int16), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _phantom_cine(seed: int, path: Path) -> Path:
    """A phantom cine (``cds.models.tasks.phantom.make_cine``) as a 4D NIfTI (x, y, slice, time)."""
    import nibabel as nib

    from cds.models.tasks.phantom import make_cine

    cine, truth = make_cine(seed, n_frames=10, rows=96, cols=96, supersample=2)
    g = truth["geometry"]
    px = float(g["pixel_spacing_mm"][0])
    step = float(g["slice_thickness_mm"]) + float(g["slice_gap_mm"])
    affine = np.diag([-px, -px, step, 1.0])
    img = nib.Nifti1Image(np.asarray(cine, np.float32).transpose(3, 2, 1, 0), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    times = g.get("frame_times_ms") or []
    img.header.set_zooms((px, px, step, float(times[1] - times[0]) if len(times) > 1 else 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_sample_image(spec: dict[str, Any], out_dir: str | Path) -> Path:
    """Write (or find) the input file a ``configs/sample.json`` spec names; returns its path.

    >>> import tempfile
    >>> p = write_sample_image({"kind": "pixels", "rows": 2, "cols": 2, "pixels": [0, 64, 128, 255]}, tempfile.mkdtemp())
    >>> p.name
    'sample_input.png'
    """
    from cds.locations import sample_cohort_dir, sample_data_file

    out = Path(out_dir)
    kind = spec.get("kind")
    if kind == "pneumoniamnist":
        with np.load(sample_data_file("pneumoniamnist")) as z:
            images = z[f"{spec.get('part', 'val')}_images"]
        return _save_png(out / "sample_input.png", images[int(spec.get("index", 0))])
    if kind == "fhir_samples":
        root = sample_cohort_dir()
        if root is None:
            raise ParameterError("input", "the sample cohort (fhir_samples) is not installed; pass --input PATH")
        return root / spec["image"]
    if kind == "pixels":
        arr = np.asarray(spec["pixels"], dtype=np.uint8).reshape(int(spec["rows"]), int(spec["cols"]))
        return _save_png(out / "sample_input.png", arr)
    if kind == "synthetic_mammogram":
        return _save_png(out / "sample_input.png", _synthetic_mammogram(int(spec.get("seed", 0))))
    if kind == "phantom_cine":
        return _phantom_cine(int(spec.get("seed", 0)), out / "sample_input.nii.gz")
    if kind == "synthetic_ct":
        return _synthetic_ct(int(spec.get("seed", 0)), out / "sample_input.nii.gz")
    raise ParameterError("input", f"sample kind {kind!r} is not one of {', '.join(SAMPLE_KINDS)}")


def sample_input(bundle_root: str | Path, output_dir: str | Path) -> str:
    """The path of the bundle's default sample input (what ``input`` is unless ``--input`` is given).

    Samples built from a file are written to ``<output_dir>/sample/``; a committed file is used in place.
    """
    spec = _read_sample(bundle_root)
    return str(write_sample_image(spec, Path(output_dir) / "sample"))


def sample_facts(bundle_root: str | Path, input_path: str | Path) -> dict[str, Any]:
    """The EHR values, age and view that go with the bundle's sample — only when ``input_path`` is that sample.

    Values come from the sample spec (``ehr``, ``age_years``, ``view``, each with the ``source`` it names) or,
    for ``fhir_samples``, from the patient's committed FHIR record (:func:`cds.models.ehr_inputs.ehr_inputs_for`
    at the ImagingStudy's time). Any other input gets ``{}``: give its facts with ``--ehr``, ``--age_years``,
    ``--view``.
    """
    p = Path(bundle_root) / "configs" / "sample.json"
    if not p.is_file():
        return {}
    spec = _read_sample(bundle_root)
    name = Path(str(input_path)).name
    if spec["kind"] == "fhir_samples":
        if Path(str(input_path)).resolve() != write_sample_image(spec, ".").resolve():
            return {}
        return _fhir_facts(bundle_root, spec)
    if not name.startswith("sample_input") or Path(str(input_path)).parent.name != "sample":
        return {}
    return {"ehr": dict(spec.get("ehr") or {}), "age_years": spec.get("age_years"), "view": spec.get("view")}


def _fhir_facts(bundle_root: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    import cds
    from cds.locations import sample_cohort_dir
    from cds.models.ehr_inputs import ehr_inputs_for

    root = sample_cohort_dir()
    cohort = cds.load_cohort(root / spec["bundle"])
    image = str((root / spec["image"]).resolve())
    rows = cohort.imaging[[str(Path(str(loc)).resolve()) == image if isinstance(loc, str) else False
                           for loc in cohort.imaging["pixel_location"]]]
    if not len(rows):
        raise ParameterError("input", f"{spec['bundle']}: no ImagingStudy points at {spec['image']}")
    r = rows.iloc[0]
    card = open_bundle(bundle_root).model_card
    ehr = ehr_inputs_for(card, cohort, r["patient_id"], r["started"])
    return {"ehr": dict(ehr), "age_years": spec.get("age_years"), "view": spec.get("view")}


# ------------------------------------------------------------------------------------ components
@dataclass
class ReadStudy:
    """Preprocessing: a path -> ``{"input", "image", "ehr", "facts"}`` (the image read by cds's readers).

    ``ehr`` are the card's EHR inputs by name (e.g. ``{"age": 61, "sex": "female"}``), ``age_years`` and
    ``view`` what the file does not record (as ``cds run --age --view``).
    """

    bundle: Any
    ehr: dict[str, Any] | None = None
    age_years: float | None = None
    view: str | None = None
    series_uid: str | None = None

    def __call__(self, path: str | Path) -> dict[str, Any]:
        from cds.models.run_file import read_model_input
        from cds.models.vouch import StudyFacts

        task = self.bundle.model_card.task or self.bundle.model_card.kind or ""
        image = read_model_input(task, path, self.series_uid)
        age = None if self.age_years is None else float(self.age_years)
        return {"input": str(path), "image": image, "ehr": dict(self.ehr or {}),
                "facts": StudyFacts("", age_years=age, view=self.view)}


@dataclass
class TaskInferer:
    """Inference: the vouch checks, then the task's ``predict`` with ``network`` -> ``{"findings", "no_answer"}``.

    ``network`` is the config's ``network`` (``network_def`` with the weights, on ``device``); the task
    reads it through the bundle (``bundle.network()`` returns this same object).
    """

    bundle: Any
    network: Any = None
    device: Any = None

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from cds.models.registry import ModelRegistry

        b = self.bundle
        if self.network is not None:
            b._network = self.network  # the config's network is the one the task runs
        reg = ModelRegistry(user_dirs=[])
        reg._bundles[b.model_id] = b  # this folder's bundle, not a built-in of the same id
        out: dict[str, Any] = {"input": data["input"], "findings": [], "no_answer": None,
                               "device": str(self.device) if self.device is not None else None}
        try:
            out["findings"] = reg.run_image(b.model_id, data["image"], data["ehr"], facts=data["facts"],
                                            check_identity=False)
        except NoAnswer as exc:
            out["no_answer"] = {"state": exc.state, "reason": str(exc)}
        except CdsError as exc:  # the input cannot be used: recorded, as a cohort run records a Failure
            out["no_answer"] = {"state": "failed", "reason": str(exc)}
        return out


@dataclass
class WriteFindings:
    """Postprocessing: write ``<output_dir>/findings.json``; returns its path."""

    output_dir: str | Path
    bundle: Any = None
    filename: str = "findings.json"
    written: list[Path] = field(default_factory=list)

    def __call__(self, result: dict[str, Any]) -> Path:
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        b = self.bundle
        doc = {"model_id": b.model_id if b is not None else None, "model_version": b.version if b is not None else None,
               "input": result["input"], "device": result.get("device"),
               "findings": [f.to_dict() for f in result["findings"]], "no_answer": result["no_answer"]}
        path = out / self.filename
        path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n", encoding="utf-8")
        self.written.append(path)
        return path


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# --------------------------------------------------------------------------- default samples per task
def default_sample(task: str | None, modality: Any = ()) -> dict[str, Any] | None:
    """The ``configs/sample.json`` a bundle of ``task`` gets when it has none (synthetic or committed data),
    or None when no sample fits (the task's bundle then needs ``--input``).

    >>> default_sample("cmr-function")["kind"], default_sample("unknown-task", ["CT"])["kind"]
    ('phantom_cine', 'synthetic_ct')
    >>> default_sample("unknown-task", ["US"]) is None
    True
    """
    mods = {str(m).upper() for m in ([modality] if isinstance(modality, str) else (modality or ()))}
    if task == "cmr-function":
        return {"kind": "phantom_cine", "seed": 0,
                "note": "synthetic phantom cine (cds.models.tasks.phantom.make_cine, seed 0): no patient data"}
    if task in ("mammo-density", "mammo-abnormality") or "MG" in mods:
        return {"kind": "synthetic_mammogram", "seed": 0, "view": "MLO",
                "note": "synthetic MLO-like picture drawn by cds.models.bundle_run; mini-MIAS images may not "
                        "ship in a product (research use only), so none is copied"}
    if (task or "").startswith("ct-") or "CT" in mods:
        return {"kind": "synthetic_ct", "seed": 0,
                "note": "synthetic chest CT drawn by cds.models.bundle_run (one 8 mm solid nodule in the right "
                        "lung): no patient data"}
    return None

