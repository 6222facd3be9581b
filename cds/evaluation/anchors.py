"""Published anchors: the numbers our models and reports are put next to, with the caveats that go with them.

The list is the one in the project's stack notes (``docs/STACK.md``, "Published anchors"). Each
:class:`Anchor` names the related task, the published figures as data and text, which of our models
it is the nearest published reference for, and why the comparison is only indicative. Reports show
these side by side with our own measured numbers (:func:`cds.reports.report.anchors_table`); nothing here is
ever used to compute or adjust a result.

>>> [a.key for a in ANCHORS]
['mckinney2020', 'bhave2024', 'backhaus2022', 'yu2024', 'torchxrayvision']
>>> anchors_for("cxr-cardiomegaly")[0].key
'bhave2024'
>>> anchors_frame().loc[0, "published"]
'AUC 0.966 (UK) / 0.883 (US), cancer at follow-up'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Anchor", "ANCHORS", "GENERAL_CAVEATS", "anchors_for", "anchors_frame", "get_anchor"]


@dataclass(frozen=True)
class Anchor:
    """One published result.

    ``numbers`` holds the published figures as data (metric name -> value, proportions in 0..1);
    ``published`` is the same in one line of text. ``our_models`` are the model ids of this suite that
    address the nearest task, and ``our_metrics`` the model-card metric names that come closest to the
    published one (first present wins). ``caveats`` say why the numbers do not transfer.
    """

    key: str
    short: str
    citation: str
    task: str
    population: str
    inputs: str
    published: str
    numbers: dict[str, float]
    our_models: tuple[str, ...] = ()
    our_metrics: tuple[str, ...] = ()
    caveats: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "short": self.short, "citation": self.citation, "task": self.task,
                "population": self.population, "inputs": self.inputs, "published": self.published,
                "numbers": dict(self.numbers), "our_models": list(self.our_models),
                "our_metrics": list(self.our_metrics), "caveats": list(self.caveats)}


ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        key="mckinney2020", short="McKinney 2020",
        citation="McKinney SM et al. International evaluation of an AI system for breast cancer screening. "
                 "Nature 2020;577:89-94.",
        task="screening mammography: breast cancer within follow-up",
        population="screening exams, UK and US cohorts (tens of thousands of women)",
        inputs="all four standard mammography views, deep learning",
        published="AUC 0.966 (UK) / 0.883 (US), cancer at follow-up",
        numbers={"auroc_uk": 0.966, "auroc_us": 0.883, "auroc_gain_vs_mean_of_6_readers": 0.115,
                 "second_reader_workload_reduction": 0.88},
        our_models=("mammo-abnormality", "mammo-density"),
        our_metrics=("auroc_malignant_vs_normal", "auroc_abnormal_vs_normal", "balanced_accuracy"),
        caveats=(
            "Different task: our mammography models score image-level abnormality (mini-MIAS marks) or "
            "background tissue density, not cancer confirmed at follow-up.",
            "Different scale: 40 digitised 1990s film images of 20 women against large screening cohorts; "
            "no prior or contralateral views.",
            "The 11.5-point AUC gain over readers and the 88 % lower second-reader workload come from a "
            "reader comparison and a simulated double-reading workflow that this suite does not reproduce.",
        ),
    ),
    Anchor(
        key="bhave2024", short="Bhave 2024",
        citation="Bhave S et al., European Heart Journal 2024 (deep learning on chest X-rays to detect left "
                 "ventricular structural abnormalities), as summarised in docs/STACK.md.",
        task="chest radiograph -> echo-confirmed severe LV hypertrophy / dilated LV",
        population="chest radiographs with paired echocardiograms (more than 100,000 studies)",
        inputs="CXR 224x224 + age + sex",
        published="AUROC 0.79 / 0.80 / 0.80 (composite); sensitivity 71 % vs radiologists' 66 % at 73 % "
                  "specificity",
        numbers={"auroc_slvh": 0.79, "auroc_dlv": 0.80, "auroc_composite": 0.80,
                 "sensitivity_at_73_specificity": 0.71, "radiologists_sensitivity_at_73_specificity": 0.66,
                 "specificity": 0.73},
        our_models=("cxr-cardiomegaly",),
        our_metrics=("auroc", "sensitivity_at_73_specificity"),
        caveats=(
            "Our cxr-cardiomegaly is a proxy: NLP-mined 'Cardiomegaly' labels (NIH ChestX-ray14, about 90 % "
            "accurate) on 64x64 thumbnails, not echo-confirmed LV structure.",
            "Our card's test split has 5 positive images: its confidence intervals span most of 0..1.",
            "Same inputs in kind (image + age + sex), so the model cannot run where the record lacks a birth "
            "date (e.g. the Hannover patients).",
        ),
    ),
    Anchor(
        key="backhaus2022", short="Backhaus 2022",
        citation="Backhaus SJ et al., 2022 (fully automated CMR feature-tracking strain after acute myocardial "
                 "infarction, n=1,095), as summarised in docs/STACK.md.",
        task="automated CMR strain after myocardial infarction; prognosis (12-month MACE)",
        population="1,095 patients after acute myocardial infarction",
        inputs="cine CMR (automated feature tracking)",
        published="GLS ICC 0.81 vs manual; GLS HR 1.12 per % (1.08-1.16) for 12-month MACE; C-statistic "
                  "0.691 automated vs 0.693 manual",
        numbers={"gls_icc_vs_manual": 0.81, "gls_hazard_ratio_per_percent": 1.12, "gls_hr_ci_low": 1.08,
                 "gls_hr_ci_high": 1.16, "c_statistic_automated": 0.691, "c_statistic_manual": 0.693},
        our_models=("cmr-function",),
        our_metrics=("ef_icc", "icc", "ef_mae", "dice_lv"),
        caveats=(
            "Our cmr-function measures volumes / ejection fraction from short-axis segmentation, not strain; "
            "agreement with manual contours is a different statistic from a prognostic C-statistic.",
            "No MACE outcomes exist in the sample cohort: prognostic value cannot be measured here.",
        ),
    ),
    Anchor(
        key="yu2024", short="Yu 2024",
        citation="Yu F et al., Nature Medicine 2024 (heterogeneity of the effects of AI assistance on "
                 "radiologists), as summarised in docs/STACK.md.",
        task="effect of AI assistance on radiologists reading chest radiographs",
        population="140 radiologists, 324 chest radiograph cases",
        inputs="reader study (with and without AI assistance)",
        published="effect of AI assistance varies by reader and is not predicted by experience; accurate AI "
                  "helps, inaccurate AI hurts",
        numbers={"radiologists": 140, "cases": 324},
        our_models=(),
        caveats=(
            "Every number in this report is standalone AI performance or a simulated reading order; the "
            "effect on readers (who may follow a wrong AI) is not measured.",
            "A triage gain in the simulation is an upper bound on operational benefit, not evidence of "
            "better diagnoses.",
        ),
    ),
    Anchor(
        key="torchxrayvision", short="TorchXRayVision",
        citation="Cohen JP et al. TorchXRayVision: a library of chest X-ray datasets and models. MIDL 2022 "
                 "(model densenet121-res224-all).",
        task="chest radiograph multi-label classification (NIH ChestX-ray14 labels)",
        population="NIH ChestX-ray14 (image-level evaluation)",
        inputs="CXR 224x224",
        published="NIH cardiomegaly AUC 0.88; NIH nodule AUC 0.69",
        numbers={"auroc_cardiomegaly_nih": 0.88, "auroc_nodule_nih": 0.69},
        our_models=("cxr-cardiomegaly",),
        our_metrics=("auroc",),
        caveats=(
            "Same label source as our cxr-cardiomegaly (NIH NLP labels) but 224 px images and tens of "
            "thousands of training images against our 64 px thumbnails and small training set.",
            "Image-level splits can put one patient's images on both sides; our card splits by patient.",
        ),
    ),
)

#: Caveats that hold for every comparison in a cohort report.
GENERAL_CAVEATS: tuple[str, ...] = (
    "Published figures come from other data, labels, populations and prevalences; a difference in AUROC "
    "between studies is not a test of which model is better.",
    "Where our number comes from this report, it is measured on the report's cohort (often small, with "
    "wide intervals); where it comes from a model card, it is the card's evaluation data.",
)


def get_anchor(key: str) -> Anchor:
    """The anchor with this key (``KeyError`` naming the known keys otherwise)."""
    for a in ANCHORS:
        if a.key == key:
            return a
    raise KeyError(f"unknown anchor {key!r}; known: {', '.join(a.key for a in ANCHORS)}")


def anchors_for(model_id: str) -> list[Anchor]:
    """The anchors whose nearest model of ours is ``model_id`` (possibly none)."""
    return [a for a in ANCHORS if model_id in a.our_models]


def anchors_frame() -> Any:
    """All anchors as a pandas DataFrame (one row each; caveats joined)."""
    import pandas as pd

    return pd.DataFrame([{"anchor": a.short, "task": a.task, "published": a.published, "population": a.population,
                          "inputs": a.inputs, "our_models": ", ".join(a.our_models) or "-",
                          "caveats": " ".join(a.caveats), "citation": a.citation} for a in ANCHORS])
