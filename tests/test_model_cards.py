"""One model-card renderer: shipped bundle READMEs and FHIR model-card DocumentReferences are the
same text, :func:`cds.models.card_markdown.model_card_markdown` of the bundle's ``metadata.json``."""

from __future__ import annotations

import base64
import json

import pytest

from cds.fhir.resources import model_card_document, model_info
from cds.locations import BUNDLES_DIR
from cds.models import card_files
from cds.models.bundle import load_bundle
from cds.models.card_markdown import AI_NOTICE, model_card_markdown, readme_for, write_readme

SHIPPED = sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/metadata.json"))


def test_bundles_are_shipped() -> None:
    assert len(SHIPPED) >= 7 and "cxr-cardiomegaly" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_readme_is_the_renderer_output(name: str) -> None:
    bundle = BUNDLES_DIR / name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    readme = (bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert readme == readme_for(meta), f"{name}: run .venv/bin/python tools/write_bundle_readmes.py"


@pytest.mark.parametrize("name", SHIPPED)
def test_fhir_model_card_is_the_same_text(name: str) -> None:
    b = load_bundle(BUNDLES_DIR / name)
    doc = model_card_document(model_info(b.model_id, b.version, {b.model_id: b}))
    att = doc["content"][0]["attachment"]
    text = base64.b64decode(att["data"]).decode("utf-8")
    assert text == model_card_markdown(b.model_id, b.version, b.card, b.metadata)
    assert text == (b.path / "docs" / "README.md").read_text(encoding="utf-8")
    assert att["size"] == len(text.encode("utf-8"))


def test_renderer_covers_every_section(tmp_path) -> None:
    meta = {
        "name": "Toy model", "version": "2.0", "description": "A toy.", "monai_version": "1.6.1",
        "pytorch_version": "2.5.0", "references": ["Someone 2024"], "changelog": {"2.0": "second"},
        "cds": {
            "model_id": "toy", "intended_use": "demo only", "proxy_for": "a real reader",
            "outputs": [{"code_system": "http://snomed.info/sct", "code": "1", "display": "Thing",
                         "kind": "probability"}],
            "threshold": 0.5, "indeterminate": [0.4, 0.6], "operating_point": {"how_chosen": "Youden"},
            "inputs": {"image": {"channels": 1}, "ehr": [{"name": "crp", "source": "observation:1988-5"}]},
            "training_data": {"name": "toy set", "n": 10, "licence": "CC0"},
            "features": ["a", "b"],
            "performance": {
                "data": "toy", "split": "test", "n_cases": 10, "n_patients": 5, "n_positive": None,
                "metrics": {"auroc": {"value": 0.91234, "ci95": [0.85, 0.95]},
                            "sensitivity": {"value": None, "ci95": [None, None], "note": "one class only"}},
                "comparisons": {"image_only": {"metrics": {"auroc": {"value": 0.8, "ci95": [0.7, 0.9]}}}},
                "froc": [{"fp_per_image": 1, "sensitivity": 0.5}, {"fp_per_image": 2, "sensitivity": 0.75}],
                "confusion_matrix": {"labels": ["A", "B"], "counts": [[1, 2], [3, 4]]},
                "notes": ["small"], "evaluation_command": "cds evaluate toy --json",
            },
            "calibrated": True,
            "calibration": {"method": "temperature", "params": {"temperature": 1.5},
                            "evaluation_on_test_part": [{"probabilities": "raw", "ece": 0.1}]},
            "limitations": ["tiny"], "context": ["nothing comparable"],
        },
    }
    md = readme_for(meta)
    for heading in ("# toy 2.0: model card", "## Intended use", "## Proxy for", "## Outputs", "## Operating point",
                    "## Inputs", "## Method", "## Training data", "## Performance", "### Comparisons",
                    "### FROC", "### Confusion matrix", "### Notes", "## Calibration", "## Limitations",
                    "## Published context", "## References", "## Software", "## Version history"):
        assert heading in md, heading
    assert AI_NOTICE in md and "**Toy model**" in md
    assert "| auroc | 0.912 (95 % CI 0.850 to 0.950) |" in md
    assert "| sensitivity | n/a (one class only) |" in md
    assert "image_only" in md and "0.800 (95 % CI 0.700 to 0.900)" in md
    assert "n_positive" not in md and "None" not in md  # missing values are left out, not printed
    assert "- indeterminate band: 0.4 to 0.6 (reported as indeterminate)" in md
    assert "Reproduce: `cds evaluate toy --json`" in md and "- MONAI: 1.6.1" in md
    assert md.count("Performance") == 1
    assert md == model_card_markdown("toy", "2.0", meta["cds"], meta)  # readme_for only calls the renderer
    assert md == readme_for(json.loads(json.dumps(meta)))  # deterministic

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert write_readme(tmp_path).read_text(encoding="utf-8") == md


def test_no_second_renderer() -> None:
    assert not hasattr(card_files, "render_readme")
