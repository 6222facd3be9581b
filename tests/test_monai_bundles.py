"""Every shipped bundle is a real MONAI bundle: metadata valid against MONAI's (vendored) schema, outputs
described truthfully, and ``python -m monai.bundle run`` runs it on its sample input. Plus the hand-written
metrics checked against scikit-learn and monai.metrics where they do the same job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cds.locations import BUNDLES_DIR
from cds.models.bundle import DEVICE_EXPR, BundleError, load_bundle, save_bundle
from cds.models.bundle_check import (
    INFERENCE_KEYS,
    SCHEMA_FILE,
    SCHEMA_SHA256,
    SCHEMA_URL,
    check_bundle,
    fix_bundle,
    main,
    normalise_metadata,
    validate_metadata,
)

BUNDLES = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())
RUN_LIMIT_S = 300  # per bundle, on 2 shared CPU cores


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation must never reach the network."""
    import monai.apps.utils as mu

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(mu, "_download_with_progress", refuse)


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


# --------------------------------------------------------------------------------------- schema
def test_vendored_schema_is_complete_pinned_and_attributed() -> None:
    import jsonschema

    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256
    schema = json.loads(raw)
    jsonschema.Draft201909Validator.check_schema(schema)
    assert {"schema", "version", "network_data_format", "required_packages_version"} <= set(schema["required"])
    assert SCHEMA_URL.endswith(SCHEMA_FILE.name)
    notes = (SCHEMA_FILE.parent / "README.md").read_text()
    assert "Apache License, Version 2.0" in notes and SCHEMA_SHA256 in notes and "MONAI Consortium" in notes


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_metadata_valid_and_inference_runnable(name: str) -> None:
    """In-flight bundles fail here until ``python -m cds.models.bundle_check --fix`` is run on them."""
    d = BUNDLES_DIR / name
    assert check_bundle(d) == []
    meta = json.loads((d / "configs" / "metadata.json").read_text())
    ndf = meta["network_data_format"]
    for key, out in ndf["outputs"].items():  # cds networks end without an activation
        assert out["type"] == "logits" and out["value_range"] == []
        assert ndf["post_processed_outputs"][key]["type"] == "probabilities"
    inf = json.loads((d / "configs" / "inference.json").read_text())
    assert inf["device"] == DEVICE_EXPR and inf["device"] != "cpu"


def test_validation_refuses_bad_metadata_without_downloading(tmp_path: Path) -> None:
    d = _copy("pneumonia", tmp_path)
    validate_metadata(d)
    meta_file = d / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "authors"}))
    with pytest.raises(BundleError, match="metadata.json: not valid against meta_schema_20240725.json.*authors"):
        validate_metadata(d)
    meta_file.write_text(json.dumps({**meta, "schema": "https://example.org/other.json"}))
    with pytest.raises(BundleError, match="schema is 'https://example.org/other.json'"):
        validate_metadata(d)
    meta_file.write_text(json.dumps({**meta, "network_data_format": {"inputs": {}, "outputs": {"pred": {"type": 1}}}}))
    assert any("not valid" in p for p in check_bundle(d))


def test_fix_is_idempotent_and_turns_an_old_bundle_into_a_valid_one(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy("pneumonia", tmp_path)
    inf = json.loads((d / "configs" / "inference.json").read_text())
    meta = json.loads((d / "configs" / "metadata.json").read_text())
    old_meta = {**meta, "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                                  "meta_schema_20220324.json",
                "network_data_format": {"inputs": meta["network_data_format"]["inputs"],
                                        "outputs": {"pred": {"type": "probabilities", "num_channels": 1}}}}
    old_meta.pop("required_packages_version")
    (d / "configs" / "metadata.json").write_text(json.dumps(old_meta))
    (d / "configs" / "inference.json").write_text(json.dumps({"bundle_root": ".", "device": "cpu",
                                                             "network_def": inf["network_def"]}))
    assert main([str(d)]) == 1
    assert len(check_bundle(d)) >= 2
    assert sorted(Path(f).name for f in fix_bundle(d)) == ["inference.json", "metadata.json"]
    assert check_bundle(d) == [] and fix_bundle(d) == []
    assert main(["--fix", str(d)]) == 0
    assert "ok (metadata valid" in capsys.readouterr().out
    fixed = json.loads((d / "configs" / "metadata.json").read_text())
    assert fixed["cds"] == meta["cds"]  # the card itself is never touched
    assert normalise_metadata(fixed) == fixed


def test_save_bundle_writes_what_monai_runs(tmp_path: Path) -> None:
    import torch

    card = {"name": "toy", "version": "0.1.0", "cds": {"model_id": "toy", "task": "toy", "intended_use": "test"},
            "network_data_format": {"inputs": {"x": {"type": "vector", "num_channels": 2}},
                                    "outputs": {"pred": {"type": "probabilities", "num_channels": 1}}}}
    p = save_bundle(tmp_path / "toy", card, {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
                    torch.nn.Linear(2, 1).state_dict(), inference_extra={"preprocessing": "a description"})
    inf = json.loads((p / "configs" / "inference.json").read_text())
    assert set(INFERENCE_KEYS) <= set(inf) and inf["preprocessing_description"] == "a description"
    assert inf["preprocessing"]["_target_"] == "Compose"
    validate_metadata(p)


def test_the_device_is_chosen_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    b = load_bundle(BUNDLES_DIR / "pneumonia")
    assert b.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_bundle(BUNDLES_DIR / "pneumonia").device.type == "cuda"


def test_outputs_are_logits_as_the_metadata_says() -> None:
    import torch

    net = load_bundle(BUNDLES_DIR / "pneumonia").network("cpu")
    with torch.no_grad():
        z = net(torch.rand(64, 1, 28, 28) * 4 - 2)
    assert float(z.min()) < 0.0 or float(z.max()) > 1.0  # not probabilities: the task applies the sigmoid


# ----------------------------------------------------------------------------- monai.bundle run
def _monai_run(bundle: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--meta_file", "configs/metadata.json", "--output_dir", str(out), *extra],
                       cwd=bundle, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "findings.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_monai_bundle_run_on_the_sample_input(name: str, tmp_path: Path) -> None:
    d = _copy(name, tmp_path)
    doc = _monai_run(d, tmp_path / "out")
    b = load_bundle(d)
    assert doc["model_id"] == b.model_id and doc["model_version"] == b.version
    assert doc["no_answer"] is None, doc["no_answer"]
    assert doc["findings"] and all(f["model_id"] == b.model_id for f in doc["findings"])


@pytest.mark.slow
def test_monai_run_equals_cds_run_and_input_can_be_overridden(tmp_path: Path) -> None:
    from cds.models.run_file import run_file

    d = _copy("pneumonia", tmp_path)
    doc = _monai_run(d, tmp_path / "out")
    sample = Path(doc["input"])
    assert sample.is_file()
    mine = run_file("pneumonia", sample, age_years=3, view="AP")
    assert doc["findings"][0]["probability"] == pytest.approx(mine[0].probability, abs=1e-6)
    # another input: the sample's stated age and view do not carry over, so the card's age check refuses it
    other = tmp_path / "other.png"
    shutil.copy(sample, other)
    doc2 = _monai_run(d, tmp_path / "out2", "--input", str(other))
    assert doc2["input"] == str(other) and doc2["findings"] == []
    assert doc2["no_answer"]["state"] == "outside-intended-use"
    doc3 = _monai_run(d, tmp_path / "out3", "--input", str(other), "--age_years", "3", "--view", "AP")
    assert doc3["findings"][0]["probability"] == pytest.approx(mine[0].probability, abs=1e-6)


# ------------------------------------------------------------------ metrics against sklearn / monai
def _cases(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.3, n), 0, 1), 2)  # rounded: many ties
    return y, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_sensitivity_specificity_match_sklearn_and_monai(seed: int) -> None:
    import torch
    from monai.metrics import compute_roc_auc
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score, roc_curve

    from cds.evaluation.metrics import auroc, binary_metrics, roc_points, sens_spec_at_threshold

    y, p = _cases(seed)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auroc(y, p) == pytest.approx(float(compute_roc_auc(torch.tensor(p), torch.tensor(y))), abs=1e-9)
    for t in (0.3, 0.5, 0.71):
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int)).ravel()
        assert sens_spec_at_threshold(y, p, t) == pytest.approx((tp / (tp + fn), tn / (tn + fp)), abs=1e-12)
        m = binary_metrics(y, p, t, n_boot=0, rounded=False)
        assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, (p >= t).astype(int)), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    mine_fpr, mine_tpr = roc_points(y, p)
    assert np.allclose(mine_fpr, fpr) and np.allclose(mine_tpr, tpr)


def test_specificity_threshold_brier_and_kappa_match_sklearn() -> None:
    from sklearn.metrics import brier_score_loss, cohen_kappa_score

    from cds.evaluation.calibration import brier_score
    from cds.evaluation.metrics import sens_spec_at_threshold, threshold_at_specificity
    from cds.models.tasks.mammo_density import kappa_linear

    y, p = _cases(4)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    for target in (0.5, 0.73, 0.9):
        t = threshold_at_specificity(y, p, target)
        spec = sens_spec_at_threshold(y, p, t)[1]
        assert spec >= target  # reaches the target ...
        lower = np.unique(p[y == 0])
        lower = lower[lower < t]
        if len(lower):  # ... and no lower negative score would
            assert sens_spec_at_threshold(y, p, float(lower[-1]))[1] < target
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert kappa_linear(a, b) == pytest.approx(cohen_kappa_score(a, b, weights="linear"), abs=1e-12)


def test_the_hand_written_dice_matches_monai() -> None:
    """cds/evaluation/metrics.py has no Dice; the one hand-written Dice (ct-nodule-characterisation's mask
    overlap) is checked against ``monai.metrics.DiceMetric``, empty masks included."""
    import torch
    from monai.metrics import DiceMetric

    mod = pytest.importorskip("cds.models.tasks.ct_nodule_characterisation")
    if not hasattr(mod, "_dice"):
        pytest.skip("ct_nodule_characterisation no longer has a hand-written _dice")
    rng = np.random.default_rng(6)
    dm = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    for a_frac, b_frac in ((0.5, 0.4), (0.1, 0.9), (0.0, 0.3)):
        a, b = rng.random((16, 16, 16)) < a_frac, rng.random((16, 16, 16)) < b_frac
        theirs = float(dm(torch.tensor(a[None, None]).float(), torch.tensor(b[None, None]).float()).mean())
        assert mod._dice(a, b) == pytest.approx(theirs, abs=1e-6)
