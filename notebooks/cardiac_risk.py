# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Cardiac risk: 12-month MACE from CMR strain and the FHIR record
#
# An **illustrative, NOT validated** Cox-form model (`cds.studies.cardiac_risk`): risk = 1 - S0(12 mo)^exp(LP). The only published coefficient is GCS (Backhaus 2022, automated CMR strain after acute MI: GCS HR 1.07 per %, 95 % CI 1.05-1.10; GLS HR 1.12 per % (1.08-1.16) is shown but not used because `cmr-function` has no long-axis views). All clinical coefficients are **assumed**. No real cardiac MRI exists here: each selected patient gets a **phantom** cine (`cds.models.tasks.phantom`, seed `phantom_seed + i`) measured by `cmr-function`, so the strain and EF inputs are **phantom-derived** and say nothing about the patient's heart. The outputs are FHIR R4 `RiskAssessment` resources (status preliminary, AIAST security label, basis references), validated with `fhir.resources.R4B`.

# %% tags=["parameters"]
cohort = ""  # Bundle file, ndjson, folder or FHIR server base URL; "": the shipped sample cohort
patients = "mi-or-hf"  # "mi-or-hf", "all" or a list of patient ids
phantom_seed = 500  # patient i gets the phantom cine of seed phantom_seed + i
phantom_frames = None  # frames per phantom cine; None: the phantom's own 20-30
cmr_bundle = None  # a cmr-function bundle folder; None: the shipped cds/models/bundles/cmr-function
horizon_months = 12  # the model's horizon (12 months only)
include_assumed = True  # False: only the published GCS term
reference_date = "2026-01-01"  # assessments happen at the last encounter before this date (and death)
recorded = "2026-01-01T00:00:00Z"  # FHIR instant stamped on the results Bundle
out_dir = "out/cardiac_risk"  # the results Bundle goes here (relative to the current folder)

# %%
import json

import pandas as pd

import cds
from cds.locations import cohort_source
from cds.params import validate_parameters
from cds.studies import cardiac_risk as cr

params = validate_parameters({k: globals()[k] for k in cr.PARAMETERS}, cr.PARAMETERS)
pd.set_option("display.width", 200)
pd.set_option("display.max_colwidth", 70)
cohort_data = cds.load_cohort(cohort_source(cohort), validate=False, reference_date=reference_date)
model = cr.default_model(include_assumed=include_assumed)

# %% [markdown]
# ## The model: form, coefficients and where they come from

# %%
# NBVAL_CHECK_OUTPUT
print(model.form())
for note in model.notes:
    print('-', note)

# %%
# NBVAL_CHECK_OUTPUT
model.table()[["term", "hazard_ratio", "hr_ci95", "per", "reference", "beta", "status"]]

# %%
model.table()[["term", "source"]]

# %% [markdown]
# ## Patients, phantom CMR and features

# %%
out = cr.assess_cohort(cohort_data, patients, phantom_seed=phantom_seed, cmr_bundle=cmr_bundle,
                       model=model, phantom_frames=phantom_frames, reference_date=reference_date)

# %%
# NBVAL_CHECK_OUTPUT
clinical = ["patient_id", "as_of", "phantom_seed", "age_years", "male", "diabetes", "prior_mi",
            "troponin_elevated", "creatinine_mg_dl"]
out["features"][clinical]

# %% [markdown]
# CMR inputs: **PHANTOM-derived** (`cmr-function` measurements of synthetic cines), next to the phantoms' ground truth:

# %%
out["phantom_truth"]

# %%
out["evidence"]

# %% [markdown]
# ## Risks (illustrative, NOT validated)

# %%
out["risks"]

# %%
fig = cr.plot_contributions(out["risks"])

# %% [markdown]
# ## FHIR RiskAssessment resources

# %%
# NBVAL_CHECK_OUTPUT
ras = out["resources"]
print(f"{cr.validate(ras)} RiskAssessment resource(s) valid under fhir.resources.R4B")
print("status:", sorted({r["status"] for r in ras}))
print("security:", sorted({s["code"] for r in ras for s in r["meta"]["security"]}))
print("horizon:", sorted({r["prediction"][0]["whenRange"]["high"]["value"] for r in ras}), "months")
print("basis per resource:", [len(r["basis"]) for r in ras])

# %%
print(json.dumps(ras[0], indent=1))

# %%
bundle = cr.results_bundle(out["findings"], ras, out["cmr_bundle"], cohort_data, recorded)
path = cr.write_results(out_dir, bundle)
print(f"{len(bundle['entry'])} entries (CMR results + RiskAssessments) -> {path}")
