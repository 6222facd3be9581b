"""12-month MACE risk from CMR function/strain Findings and FHIR clinical features (illustrative, NOT validated).

**What this is.** A Cox-form risk equation

    risk(12 months) = 1 - S0(12) ** exp(LP),    LP = sum_k beta_k (x_k - ref_k),    beta_k = ln(HR_k)

over LV global circumferential strain (GCS, from ``cmr-function`` Findings) and clinical features
read from the cohort's FHIR tables: age, sex, diabetes, prior myocardial infarction, cardiac
troponin and creatinine. MACE = all-cause death, reinfarction or new congestive heart failure
(the Backhaus 2022 endpoint).

**Where each number comes from** (:func:`default_model` holds them; ``Term.status`` says which):

=================  ==================================  ======================================================
term               hazard ratio                        source
=================  ==================================  ======================================================
GCS, per +1 %      1.07 (95 % CI 1.05-1.10)            **published**: Backhaus SJ et al. Sci Rep 2022;12:12220,
(less shortening)                                      fully automated GCS, n = 1,095 acute MI, 12-month MACE
GLS, per +1 %      1.12 (1.08-1.16)                    published (same paper), **not used**: cmr-function has
                                                       no long-axis views, so no GLS
age, per 10 y      1.30                                **assumed**
male sex           1.00 (no effect)                    **assumed**
diabetes           1.50                                **assumed**
prior MI           1.50                                **assumed**
troponin > URL     1.50                                **assumed** (URL = assay 99th percentile, assumed per
                                                       LOINC code, assay-dependent)
creatinine, per    1.20                                **assumed**
+1 mg/dL
S0(12 months)      0.9285 at the reference values      1 - 73/1,021: 12-month MACE rate of AMI survivors of
                                                       the same trial programme (AIDA STEMI / TATORT-NSTEMI
                                                       CMR, Sci Rep 2024;14:8951, Table 2); using a cohort's
                                                       marginal rate as baseline survival is an approximation
GCS reference      -24.2 %                             median GCS of that cohort (same table; feature tracking)
=================  ==================================  ======================================================

The GCS hazard ratio is a univariable estimate and the assumed ones are not fitted at all: the terms
are **not mutually adjusted**, so their sum double-counts shared information. The model is **NOT
validated on real outcomes** here, and the CMR inputs of the notebook are **phantom-derived**
(:mod:`cds.models.tasks.phantom` cines measured by ``cmr-function``; no real CMR exists in this project), whose
geometric mid-wall GCS is not interchangeable with the feature-tracking GCS of the published HR.
Use it to see how such a model is wired to FHIR, not to judge a patient.

Clinical features (:func:`clinical_features`) at an assessment time ``as_of``: age; sex; diabetes =
a Condition with onset <= ``as_of`` coded SNOMED 44054006 or one of the type 2 diabetes
complication codes Synthea writes (:data:`DIABETES_CODES`); prior MI = SNOMED 22298006 or
399211009 with onset before ``as_of``; troponin (:data:`TROPONIN_URL`) and creatinine
(:data:`CREATININE_CODES`) = the latest result in the 365 days up to ``as_of``. A missing
value is set to its reference (contribution 0) and listed as imputed in the output.

Output: FHIR R4 ``RiskAssessment`` resources (:func:`risk_assessment`, made by the results writer's
builder :func:`cds.fhir.resources.risk_assessment`): status ``preliminary``,
``meta.security`` AIAST, ``prediction.probabilityDecimal`` with ``whenRange`` 0-12 months,
``basis`` -> the CMR Observations (ids of :func:`cds.fhir.ids.observation_id`), the
Conditions and lab Observations used and the Patient; validated with ``fhir.resources.R4B``.

>>> m = default_model()
>>> r = m.assess({"gcs_pct": -24.2, "age_years": 60.0, "male": 0, "diabetes": 0, "prior_mi": 0,
...               "troponin_elevated": 0, "creatinine_mg_dl": 1.0})
>>> round(r["risk"], 4)          # every term at its reference: the baseline risk
0.0715
>>> r2 = m.assess({"gcs_pct": -14.2, "age_years": 60.0, "male": 0, "diabetes": 0, "prior_mi": 0,
...                "troponin_elevated": 0, "creatinine_mg_dl": 1.0})
>>> round(r2["hazard_ratio"], 3)  # 10 % less circumferential shortening: 1.07 ** 10
1.967
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cds.codes import CARDIAC_RISK_CODES, coding
from cds.errors import ParameterError
from cds.params import Param
from cds.sources.tables import age_years

__all__ = [
    "MODEL_NAME",
    "MODEL_VERSION",
    "HORIZON_MONTHS",
    "DIABETES_CODES",
    "PRIOR_MI_CODES",
    "TROPONIN_URL",
    "CREATININE_CODES",
    "PARAMETERS",
    "Term",
    "CoxRiskModel",
    "default_model",
    "select_patients",
    "assessment_time",
    "clinical_features",
    "phantom_cmr_findings",
    "cmr_features",
    "risk_assessment",
    "validate",
    "results_bundle",
    "plot_contributions",
    "assess_cohort",
]

MODEL_NAME = "cds-cardiac-risk"
MODEL_VERSION = "0.1.0"
HORIZON_MONTHS = 12
OUTCOME = coding(CARDIAC_RISK_CODES, "mace-12mo",
                 "Major adverse cardiac event (all-cause death, reinfarction or new congestive heart failure)")

#: SNOMED CT codes counted as diabetes: 44054006 and the type 2 diabetes complication codes
#: (descendants of 44054006) that Synthea's diabetes module writes; the first four occur in
#: shared/data/synthea-fhir-r4. Prediabetes (15777000) is not diabetes.
DIABETES_CODES: dict[str, str] = {
    "44054006": "Diabetes mellitus type 2",
    "422034002": "Diabetic retinopathy associated with type II diabetes mellitus",
    "1551000119108": "Nonproliferative diabetic retinopathy due to type 2 diabetes mellitus",
    "1501000119109": "Proliferative diabetic retinopathy due to type II diabetes mellitus",
    "97331000119101": "Macular edema and retinopathy due to type 2 diabetes mellitus",
    "60951000119105": "Blindness due to type 2 diabetes mellitus",
    "368581000119106": "Neuropathy due to type 2 diabetes mellitus",
    "90781000119102": "Microalbuminuria due to type 2 diabetes mellitus",
    "157141000119108": "Proteinuria due to type 2 diabetes mellitus",
}
PRIOR_MI_CODES: dict[str, str] = {"22298006": "Myocardial infarction",
                                  "399211009": "History of myocardial infarction"}
#: LOINC troponin codes -> (display, upper reference limit, its unit). URLs are ASSUMED typical
#: 99th-percentile limits; the true limit depends on the assay.
TROPONIN_URL: dict[str, tuple[str, float, str]] = {
    "6598-7": ("Troponin T.cardiac [Mass/volume] in Serum or Plasma", 0.01, "ng/mL"),
    "67151-1": ("Troponin T.cardiac [Mass/volume] in Serum or Plasma by High sensitivity method", 14.0, "ng/L"),
    "10839-9": ("Troponin I.cardiac [Mass/volume] in Serum or Plasma", 0.04, "ng/mL"),
    "42757-5": ("Troponin I.cardiac [Mass/volume] in Blood", 0.04, "ng/mL"),
    "89579-7": ("Troponin I.cardiac [Mass/volume] in Serum or Plasma by High sensitivity method", 26.0, "ng/L"),
}
CREATININE_CODES: dict[str, str] = {"2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
                                    "38483-4": "Creatinine [Mass/volume] in Blood"}
LAB_WINDOW_DAYS = 365

BACKHAUS_2022 = ("Backhaus SJ, Aldehayat H, Kowallick JT, et al. Artificial intelligence fully automated "
                 "myocardial strain quantification for risk stratification following acute myocardial "
                 "infarction. Sci Rep 2022;12:12220. doi:10.1038/s41598-022-16228-w")
COHORT_2024 = ("Sci Rep 2024;14:8951, doi:10.1038/s41598-024-59114-3 (PMC11026383), Table 2: 1,021 AMI "
               "survivors (AIDA STEMI / TATORT-NSTEMI CMR), 73 MACE in 12 months, GCS median -24.2 %")

#: Parameters of notebooks/cardiac_risk.ipynb.
PARAMETERS: dict[str, Param] = {
    "cohort": Param(str, "../fhir_samples"),
    "patients": Param((str, list), "mi-or-hf", hint="'mi-or-hf', 'all' or a list of patient ids"),
    "phantom_seed": Param(int, 500, check=lambda v: v >= 0, hint=">= 0; patient i gets seed phantom_seed + i"),
    "phantom_frames": Param(int, None, nullable=True, check=lambda v: 8 <= v <= 40,
                            hint="8-40, or None for the phantom's own 20-30 frames"),
    "cmr_bundle": Param(str, None, nullable=True, hint="a cmr-function bundle folder; None: the shipped one"),
    "horizon_months": Param(int, 12, check=lambda v: v == HORIZON_MONTHS, hint="12 (the model's only horizon)"),
    "include_assumed": Param(bool, True),
    "reference_date": Param(str, "2026-01-01"),
    "recorded": Param(str, "2026-01-01T00:00:00Z"),
    "out_dir": Param(str, "../out/cardiac_risk"),
}


# ------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Term:
    """One covariate of the risk equation: ``beta = ln(hr)`` per ``per`` units of ``feature`` above ``reference``."""

    feature: str
    label: str
    hr: float
    per: float
    unit: str
    reference: float
    status: str  # "published" | "assumed" | "not used"
    source: str
    hr_ci95: tuple[float, float] | None = None

    @property
    def beta(self) -> float:
        """Log hazard ratio per unit of the feature."""
        return math.log(self.hr) / self.per


@dataclass(frozen=True)
class CoxRiskModel:
    """``risk = 1 - S0 ** exp(sum beta (x - ref))`` over the terms whose status is not ``not used``."""

    terms: tuple[Term, ...]
    baseline_survival: float
    baseline_source: str
    horizon_months: int = HORIZON_MONTHS
    name: str = MODEL_NAME
    version: str = MODEL_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def used(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.status != "not used")

    def form(self) -> str:
        """The equation in words and numbers."""
        parts = " + ".join(f"{t.beta:.4f} * ({t.feature} {'-' if t.reference >= 0 else '+'} {abs(t.reference):g})"
                           for t in self.used)
        return (f"risk({self.horizon_months} months) = 1 - {self.baseline_survival:.4f} ** exp(LP), "
                f"LP = {parts}")

    def table(self) -> pd.DataFrame:
        """Every term: HR (CI), per, reference, beta, status, source."""
        rows = [{"term": t.label, "feature": t.feature,
                 "hazard_ratio": t.hr, "hr_ci95": list(t.hr_ci95) if t.hr_ci95 else None,
                 "per": f"{t.per:g} {t.unit}", "reference": t.reference,
                 "beta": round(t.beta, 5) if t.status != "not used" else None, "status": t.status, "source": t.source}
                for t in self.terms]
        rows.append({"term": f"baseline survival S0({self.horizon_months} mo)", "feature": None,
                     "hazard_ratio": None, "hr_ci95": None, "per": None, "reference": None,
                     "beta": None, "status": "published rate, used as an approximation",
                     "source": self.baseline_source})
        return pd.DataFrame(rows)

    def assess(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Risk for one patient's ``features`` (missing / None values are set to the reference).

        Returns ``risk``, ``linear_predictor``, ``hazard_ratio`` (exp LP), ``contributions`` (per
        feature, beta (x - ref)) and ``imputed`` (features set to their reference).
        """
        lp, contrib, imputed = 0.0, {}, []
        for t in self.used:
            v = features.get(t.feature)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                imputed.append(t.feature)
                contrib[t.feature] = 0.0
                continue
            c = t.beta * (float(v) - t.reference)
            contrib[t.feature] = round(c, 6)
            lp += c
        risk = 1.0 - self.baseline_survival ** math.exp(lp)
        return {"risk": risk, "linear_predictor": lp, "hazard_ratio": math.exp(lp), "contributions": contrib,
                "imputed": imputed}


def default_model(include_assumed: bool = True) -> CoxRiskModel:
    """The model of the module docstring; ``include_assumed=False`` keeps only the published GCS term."""
    s = "assumed" if include_assumed else "not used"
    terms = (
        Term("gcs_pct", "LV global circumferential strain (GCS)", 1.07, 1.0, "% (less negative = worse)", -24.2,
             "published", f"HR per 1 % from {BACKHAUS_2022} (automated GCS, univariable); reference = cohort "
             f"median from {COHORT_2024}", (1.05, 1.10)),
        Term("gls_pct", "LV global longitudinal strain (GLS)", 1.12, 1.0, "%", -16.5, "not used",
             f"HR published in {BACKHAUS_2022} (1.08-1.16) but cmr-function measures no GLS (no long-axis views)",
             (1.08, 1.16)),
        Term("age_years", "age", 1.30, 10.0, "years", 60.0, s, "assumed (not taken from a publication)"),
        Term("male", "male sex", 1.00, 1.0, "(1 = male)", 0.0, s, "assumed: no effect"),
        Term("diabetes", "diabetes mellitus", 1.50, 1.0, "(1 = present)", 0.0, s, "assumed"),
        Term("prior_mi", "prior myocardial infarction", 1.50, 1.0, "(1 = present)", 0.0, s, "assumed"),
        Term("troponin_elevated", "cardiac troponin above the assay URL", 1.50, 1.0, "(1 = above)", 0.0, s,
             "assumed; URLs assumed per LOINC code (assay-dependent)"),
        Term("creatinine_mg_dl", "creatinine", 1.20, 1.0, "mg/dL", 1.0, s, "assumed"),
    )
    return CoxRiskModel(
        terms=terms, baseline_survival=1.0 - 73.0 / 1021.0,
        baseline_source=f"1 - 73/1,021 from {COHORT_2024}",
        notes=("NOT validated on real outcomes in this project.",
               "Terms are not mutually adjusted (univariable or assumed hazard ratios); their sum double-counts.",
               "The published HRs are for feature-tracking CMR strain after acute MI; cmr-function's geometric "
               "mid-wall GCS is not interchangeable with it."))


# ---------------------------------------------------------------------------------------- features
def select_patients(cohort: Any, rule: str | Sequence[str] = "mi-or-hf") -> list[str]:
    """Patient ids: ``"mi-or-hf"`` (an MI code of :data:`PRIOR_MI_CODES` or a heart failure code
    88805009 / 84114007 / 42343007), ``"all"``, or an explicit list (checked against the cohort)."""
    ids = cohort.patients["patient_id"].astype(str)
    if isinstance(rule, str):
        if rule == "all":
            return sorted(ids)
        if rule != "mi-or-hf":
            raise ParameterError("patients", f"{rule!r}: use 'mi-or-hf', 'all' or a list of patient ids")
        codes = set(PRIOR_MI_CODES) | {"88805009", "84114007", "42343007"}
        c = cohort.conditions
        return sorted(set(c.loc[c["code"].astype(str).isin(codes), "patient_id"].astype(str)))
    missing = [p for p in rule if p not in set(ids)]
    if missing:
        raise ParameterError("patients", f"not in the cohort: {', '.join(missing[:5])}")
    return list(rule)


def assessment_time(cohort: Any, patient_id: str, reference_date: Any = None) -> pd.Timestamp:
    """When the (imagined) CMR and assessment happen: the patient's latest encounter that starts before
    death and before ``reference_date``; the reference date when there is none."""
    ref = pd.Timestamp(reference_date or cohort.reference_date or "2026-01-01")
    if ref.tzinfo is None:
        ref = ref.tz_localize("UTC")
    rec = cohort.patient(patient_id)
    limit = ref
    dd = rec.patient.get("deceased_date")
    if dd is not None and not pd.isna(dd):
        limit = min(limit, pd.Timestamp(dd))
    enc = rec.encounters
    starts = enc.loc[enc["start"] < limit, "start"] if len(enc) else pd.Series([], dtype="datetime64[ns, UTC]")
    return pd.Timestamp(starts.max()) if len(starts) else limit


def _unit_factor(unit: str | None, target: str) -> float | None:
    u = (unit or "").replace("µ", "u").strip().lower()
    mass_ml = {"ng/ml": 1.0, "ug/l": 1.0}
    mass_l = {"ng/l": 1.0, "pg/ml": 1.0}
    if target == "ng/mL":
        return mass_ml.get(u) or (1e-3 if u in mass_l else None)
    if target == "ng/L":
        return mass_l.get(u) or (1e3 if u in mass_ml else None)
    if target == "mg/dL":
        return {"mg/dl": 1.0, "umol/l": 1.0 / 88.42}.get(u)
    return None


def clinical_features(cohort: Any, patient_id: str, as_of: Any) -> dict[str, Any]:
    """Age, sex, diabetes, prior MI, troponin and creatinine of one patient at ``as_of``.

    Returns ``{"values": {feature: value or None}, "evidence": [{feature, reference, display, value,
    time}]}``; ``evidence`` holds the FHIR ``Condition/<id>`` / ``Observation/<id>`` behind each value.
    """
    t = pd.Timestamp(as_of)
    rec = cohort.patient(patient_id)
    p = rec.patient
    values: dict[str, Any] = {}
    evidence: list[dict[str, Any]] = []
    birth = p.get("birth_date")
    values["age_years"] = age_years(birth, t)
    sex = p.get("sex") if isinstance(p.get("sex"), str) else None
    values["male"] = None if sex not in ("male", "female") else int(sex == "male")
    evidence.append({"feature": "age_years, male", "reference": f"Patient/{patient_id}",
                     "display": f"birth date {str(birth)[:10]}, sex {sex}", "value": None, "time": None})
    cond = rec.conditions
    cond = cond[cond["onset"].isna() | (cond["onset"] <= t)] if len(cond) else cond
    for feat, codes, strict in (("diabetes", DIABETES_CODES, False), ("prior_mi", PRIOR_MI_CODES, True)):
        hit = cond[cond["code"].astype(str).isin(codes)] if len(cond) else cond
        if strict and len(hit):
            hit = hit[hit["onset"].isna() | (hit["onset"] < t)]
        values[feat] = int(len(hit) > 0)
        for r in hit.itertuples(index=False):
            evidence.append({"feature": feat, "reference": f"Condition/{r.condition_id}", "display": r.display,
                             "value": r.code, "time": str(r.onset)[:10]})
    obs = rec.observations
    win = obs[(obs["time"] <= t) & (obs["time"] >= t - pd.Timedelta(days=LAB_WINDOW_DAYS))] if len(obs) else obs
    values["troponin_elevated"] = None
    trop = win[win["code"].astype(str).isin(TROPONIN_URL)].sort_values("time", kind="stable") if len(win) else win
    for r in trop.iloc[::-1].itertuples(index=False):
        disp, url, unit = TROPONIN_URL[str(r.code)]
        f = _unit_factor(r.unit, unit)
        if r.comparator == "<" and f is not None and r.value is not None:
            v = -np.inf
        elif r.comparator == ">":
            v = np.inf
        else:
            v = float(r.value) * f if f is not None and r.value is not None and not pd.isna(r.value) else None
        if v is None:
            continue
        values["troponin_elevated"] = int(v > url)
        evidence.append({"feature": "troponin_elevated", "reference": f"Observation/{r.observation_id}",
                         "display": f"{disp} (URL {url:g} {unit}, assumed)", "value": f"{r.value} {r.unit}",
                         "time": str(r.time)[:10]})
        break
    values["creatinine_mg_dl"] = None
    crea = win[win["code"].astype(str).isin(CREATININE_CODES)].sort_values("time", kind="stable") if len(win) else win
    for r in crea.iloc[::-1].itertuples(index=False):
        f = _unit_factor(r.unit, "mg/dL")
        if f is None or r.value is None or pd.isna(r.value):
            continue
        values["creatinine_mg_dl"] = round(float(r.value) * f, 3)
        evidence.append({"feature": "creatinine_mg_dl", "reference": f"Observation/{r.observation_id}",
                         "display": CREATININE_CODES[str(r.code)], "value": f"{r.value} {r.unit}",
                         "time": str(r.time)[:10]})
        break
    return {"values": values, "evidence": evidence}


# --------------------------------------------------------------------------------------------- CMR
def _uid(text: str) -> str:
    return "2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:30], 16))


def phantom_cmr_findings(patient_id: str, seed: int, bundle: Any = None, n_frames: int | None = None,
                         supersample: int = 4) -> tuple[list[Any], dict[str, Any]]:
    """PHANTOM-derived CMR Findings for a patient: a :mod:`cds.models.tasks.phantom` cine (``seed``) measured by
    ``cmr-function``. No real CMR exists: the numbers describe the phantom, not the patient.

    ``n_frames`` None keeps the phantom's own frame count (20-30, as in cmr-function's training and
    evaluation); fewer frames and a smaller ``supersample`` are faster (tests).

    Returns ``(findings, truth)``: the EF/EDV/ESV/GCS/GRS Findings (``extra["phantom_derived"]``
    True, ``extra["phantom_seed"]``) and the phantom's ground truth (EF, GCS, GRS, EDV, ESV).
    """
    from cds.models.tasks import cmr_function as cmr
    from cds.models.tasks.phantom import make_cine

    b = _cmr_bundle(bundle)
    cine, truth = make_cine(int(seed), n_frames=None if n_frames is None else int(n_frames),
                            supersample=int(supersample))
    pred = cmr.predict(b, cine, truth["geometry"])
    study = _uid(f"cds-phantom-cmr:{patient_id}:{seed}:{n_frames}:{supersample}")
    fs = cmr.to_findings(b, pred, patient_id, study, _uid(f"{study}:series"), ())
    note = (f"PHANTOM-derived: cds.models.tasks.phantom cine seed {seed} (phantom version {truth['params']['phantom_version']}), "
            "not a CMR of this patient")
    fs = [replace(f, extra={**f.extra, "phantom_derived": True, "phantom_seed": int(seed), "note": note}) for f in fs]
    t = {k: round(float(truth[k]), 2) for k in ("ef_pct", "gcs_pct", "grs_pct", "edv_ml", "esv_ml")}
    return fs, t


def _cmr_bundle(bundle: Any) -> Any:
    from cds.models.bundle import load_bundle
    from cds.models.tasks import cmr_function as cmr

    if bundle is not None and not isinstance(bundle, str | Path):
        return bundle
    path = Path(bundle) if bundle is not None else cmr.default_bundle_dir()
    if not (path / "configs" / "metadata.json").is_file():
        raise ParameterError("cmr_bundle", f"{path}: no cmr-function bundle there (train one with "
                                           f"`cds train cmr-function --out {path}`)")
    return load_bundle(path)


_CMR_CODES = {"10230-1": "ef_pct", "75988-6": "edv_ml", "75989-4": "esv_ml", "lv-gcs": "gcs_pct", "lv-grs": "grs_pct"}


def cmr_features(findings: Iterable[Any]) -> dict[str, Any]:
    """``{"values": {ef_pct, edv_ml, esv_ml, gcs_pct, grs_pct}, "evidence": [...]}`` from cmr-function Findings.

    Evidence references are ``Observation/<cds.fhir.ids.observation_id(finding)>``, the ids the
    results writer gives these Findings.
    """
    from cds.fhir.ids import observation_id

    values: dict[str, Any] = dict.fromkeys(_CMR_CODES.values())
    evidence = []
    for f in findings:
        key = _CMR_CODES.get(f.code)
        if key is None or f.value is None:
            continue
        values[key] = float(f.value)
        tag = " (PHANTOM-derived)" if f.extra.get("phantom_derived") else ""
        evidence.append({"feature": key, "reference": f"Observation/{observation_id(f)}",
                         "display": f"{f.display}{tag}", "value": f"{f.value} {f.unit}", "time": None})
    return {"values": values, "evidence": evidence}


# -------------------------------------------------------------------------------------------- FHIR
def _fhir_time(t: Any) -> str:
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def risk_assessment(patient_id: str, as_of: Any, result: Mapping[str, Any], evidence: Sequence[Mapping[str, Any]],
                    model: CoxRiskModel, phantom: bool = True) -> dict[str, Any]:
    """A FHIR R4 ``RiskAssessment`` (status preliminary, AIAST) for one :meth:`CoxRiskModel.assess` result.

    Built by the results writer's RiskAssessment builder (:func:`cds.fhir.resources.risk_assessment`),
    id :func:`cds.fhir.ids.assessment_id` (model, version, patient, time); ``basis`` -> the evidence
    references (the CMR Observations by :func:`cds.fhir.ids.observation_id`, Conditions, labs).
    """
    from cds.fhir.ids import assessment_id
    from cds.fhir.resources import quantity
    from cds.fhir.resources import risk_assessment as build

    occ = _fhir_time(as_of)
    contrib = ", ".join(f"{k} {v:+.3f}" for k, v in result["contributions"].items())
    rationale = (f"Cox-form model {model.name} {model.version}: LP = {result['linear_predictor']:.3f} "
                 f"(HR {result['hazard_ratio']:.2f} vs reference); contributions: {contrib}")
    if result["imputed"]:
        rationale += f"; set to reference (missing): {', '.join(result['imputed'])}"
    basis, seen = [], set()
    for e in evidence:
        if e["reference"] in seen:
            continue
        seen.add(e["reference"])
        basis.append({"reference": e["reference"], "display": str(e["display"])[:200]})
    notes = ["AI-generated, preliminary; not reviewed by a clinician. NOT validated on real outcomes: "
             "illustrative model with published (GCS, Backhaus 2022) and assumed hazard ratios."]
    if phantom:
        notes.append("The CMR strain/function inputs are PHANTOM-derived (synthetic cine measured by "
                     "cmr-function); they do not describe this patient's heart.")
    return build(
        rid=assessment_id(model.name, model.version, patient_id, occ),
        code={"coding": [dict(OUTCOME)], "text": f"{model.horizon_months}-month MACE risk"},
        subject={"reference": f"Patient/{patient_id}"},
        method={"coding": [coding(CARDIAC_RISK_CODES, f"{model.name}-{model.version}")], "text": model.form()},
        occurrence=occ,
        basis=basis,
        prediction={
            "outcome": {"coding": [dict(OUTCOME)], "text": OUTCOME["display"]},
            "probabilityDecimal": round(float(result["risk"]), 4),
            "whenRange": {"low": quantity(0, "mo"), "high": quantity(model.horizon_months, "mo")},
            "rationale": rationale,
        },
        notes=notes,
    )


def validate(resources: Iterable[Mapping[str, Any]]) -> int:
    """Validate resources with ``fhir.resources.R4B``; raise :class:`ParameterError` naming the first bad one."""
    from cds.sources.fhir_validate import validate_resource

    n = 0
    for r in resources:
        ok, msg = validate_resource(dict(r))
        if not ok:
            raise ParameterError(f"{r.get('resourceType')}/{r.get('id')}", f"not valid FHIR R4: {msg}")
        n += 1
    return n


def results_bundle(cmr_findings: Sequence[Any], risk_assessments: Sequence[Mapping[str, Any]], cmr_bundle: Any,
                   cohort: Any = None, recorded: str = "") -> dict[str, Any]:
    """One transaction Bundle: the CMR results (:func:`cds.fhir.writer.results_bundle`) plus the
    RiskAssessments (``PUT RiskAssessment/<id>``), so every basis reference to a CMR Observation resolves.

    ``cohort`` is not read (the Findings carry their study facts); it stays in the signature for
    callers that pass it positionally.
    """
    from cds.fhir.writer import entry
    from cds.fhir.writer import results_bundle as write

    del cohort
    b = _cmr_bundle(cmr_bundle)
    bundle = write(cmr_findings, {b.model_id: b}, recorded=recorded)
    bundle["entry"] = list(bundle.get("entry", [])) + [entry(ra) for ra in risk_assessments]
    return bundle


def plot_contributions(risks: pd.DataFrame, title: str = "") -> Any:
    """Stacked bars of each patient's linear-predictor contributions (``contrib_*`` columns of
    :func:`assess_cohort`'s ``risks``), with the 12-month risk written above each bar."""
    import matplotlib.pyplot as plt

    cols = [c for c in risks.columns if c.startswith("contrib_")]
    fig, ax = plt.subplots(figsize=(1.6 * len(risks) + 3.5, 4.0))
    x = np.arange(len(risks))
    pos = np.zeros(len(risks))
    neg = np.zeros(len(risks))
    for c in cols:
        v = risks[c].to_numpy(float)
        base = np.where(v >= 0, pos, neg)
        ax.bar(x, v, bottom=base, label=c.removeprefix("contrib_"))
        pos += np.clip(v, 0, None)
        neg += np.clip(v, None, 0)
    for i, r in enumerate(risks.itertuples(index=False)):
        ax.text(i, pos[i] + 0.05, f"{r.risk_12mo:.1%}", ha="center", fontsize=9)
    ax.axhline(0, color="0.3", lw=1)
    lo, hi = float(min(neg.min(), 0.0)), float(max(pos.max(), 0.0))
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.2 * (hi - lo + 1e-9) + 0.1)
    ax.set_xticks(x, [str(p)[:8] for p in risks["patient_id"]])
    ax.set_ylabel("contribution to LP (log hazard)")
    ax.set_title(title or "12-month MACE risk: what drives it (illustrative, NOT validated; CMR phantom-derived)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- cohort
def assess_cohort(cohort: Any, patients: str | Sequence[str] = "mi-or-hf", phantom_seed: int = 500,
                  cmr_bundle: Any = None, model: CoxRiskModel | None = None, phantom_frames: int | None = None,
                  reference_date: Any = None, phantom_supersample: int = 4) -> dict[str, Any]:
    """Features, risks and validated RiskAssessments for the selected patients.

    Patient ``i`` (in the order of :func:`select_patients`) gets phantom seed ``phantom_seed + i``.
    Returns ``features`` (one row per patient), ``evidence`` (rows, ``used_by_model`` marks those
    that became the RiskAssessment's ``basis``), ``findings`` (all CMR Findings), ``phantom_truth``
    (rows), ``risks`` (one row per patient) and ``resources``.
    """
    model = model or default_model()
    ids = select_patients(cohort, patients)
    if not ids:
        raise ParameterError("patients", "no patient selected (the cohort has no MI or heart failure condition)")
    b = _cmr_bundle(cmr_bundle)
    feat_rows, ev_rows, risk_rows, truth_rows, findings, resources = [], [], [], [], [], []
    for i, pid in enumerate(ids):
        as_of = assessment_time(cohort, pid, reference_date)
        clin = clinical_features(cohort, pid, as_of)
        fs, truth = phantom_cmr_findings(pid, phantom_seed + i, b, n_frames=phantom_frames,
                                         supersample=phantom_supersample)
        cmr_f = cmr_features(fs)
        values = {**clin["values"], **cmr_f["values"]}
        res = model.assess(values)
        used = {t.feature for t in model.used}
        evidence = [{**e, "used_by_model": any(f in used for f in e["feature"].split(", "))}
                    for e in cmr_f["evidence"] + clin["evidence"]]
        basis = [e for e in evidence if e["used_by_model"]]
        resources.append(risk_assessment(pid, as_of, res, basis, model, phantom=True))
        findings.extend(fs)
        feat_rows.append({"patient_id": pid, "as_of": str(as_of.date()), "phantom_seed": phantom_seed + i, **values})
        truth_rows.append({"patient_id": pid, "phantom_seed": phantom_seed + i,
                           **{f"{k}_truth": v for k, v in truth.items()},
                           **{f"{k}_measured": cmr_f["values"].get(k) for k in truth}})
        ev_rows += [{"patient_id": pid, **e} for e in evidence]
        risk_rows.append({"patient_id": pid, "as_of": str(as_of.date()), "risk_12mo": round(res["risk"], 4),
                          "hazard_ratio": round(res["hazard_ratio"], 3),
                          "linear_predictor": round(res["linear_predictor"], 3),
                          "imputed": ", ".join(res["imputed"]) or "-",
                          **{f"contrib_{k}": round(v, 3) for k, v in res["contributions"].items()}})
    validate(resources)
    return {"features": pd.DataFrame(feat_rows), "evidence": pd.DataFrame(ev_rows), "findings": findings,
            "phantom_truth": pd.DataFrame(truth_rows), "risks": pd.DataFrame(risk_rows), "resources": resources,
            "model": model, "cmr_bundle": b}


def write_results(out_dir: str | Path, bundle: Mapping[str, Any], name: str = "cardiac_risk_bundle.json") -> Path:
    """Validate the results Bundle (:func:`results_bundle`) and write it as ``out_dir/name``; return the path.

    >>> import json
    >>> b = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    >>> p = write_results(getfixture("tmp_path") / "out", b)
    >>> json.loads(p.read_text())["type"]
    'transaction'
    """
    import json

    validate([bundle])
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    target = path / name
    target.write_text(json.dumps(bundle, indent=1))
    return target
