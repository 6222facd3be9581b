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
# # Cohort overview
#
# Demographics, conditions, lab distributions and imaging of a FHIR R4 cohort loaded with `cds.load_cohort`. Run with papermill to change the parameters below.

# %% tags=["parameters"]
cohort = ""  # Bundle file, ndjson, folder, or FHIR server base URL; "": the shipped sample cohort
out_dir = "out/overview"  # where figures are written (relative to the current folder)
reference_date = "2026-01-01"  # ages are computed at this date
validate = True  # validate every resource as FHIR R4 (fhir.resources.R4B)

# %%
from pathlib import Path

import cds
from cds.locations import cohort_source
from cds.reports import overview as ov

out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
cohort_data = cds.load_cohort(cohort_source(cohort), validate=validate, reference_date=reference_date)

# %% [markdown]
# ## The cohort in numbers

# %%
# NBVAL_CHECK_OUTPUT
summary = cohort_data.summary()
for key in ['patients', 'imaging_studies', 'images_with_pixels', 'observations', 'conditions',
            'medications', 'encounters', 'invalid_resources', 'dangling_references']:
    print(f'{key:>20}: {summary[key]}')

# %% [markdown]
# ## Demographics

# %%
# NBVAL_CHECK_OUTPUT
ov.demographics(cohort_data)

# %%
fig = ov.plot_demographics(cohort_data)
fig.savefig(out / 'demographics.png', dpi=100)
fig

# %% [markdown]
# ## Conditions (patients with each condition)

# %%
# NBVAL_CHECK_OUTPUT
ov.top_conditions(cohort_data, n=10)

# %%
fig = ov.plot_conditions(cohort_data)
fig.savefig(out / 'conditions.png', dpi=100)
fig

# %% [markdown]
# ## Lab value distributions

# %%
# NBVAL_CHECK_OUTPUT
ov.lab_summary(cohort_data)

# %%
fig = ov.plot_labs(cohort_data)
fig.savefig(out / 'labs.png', dpi=100)
fig

# %% [markdown]
# ## Imaging per patient

# %%
# NBVAL_CHECK_OUTPUT
ov.imaging_per_patient(cohort_data)

# %%
fig = ov.plot_imaging(cohort_data)
fig.savefig(out / 'imaging.png', dpi=100)
fig

# %% [markdown]
# ## Input problems
#
# Resources that failed FHIR R4 validation or point at missing resources; everything else loaded.

# %%
problems = cohort_data.problems_frame()
print(f'{len(problems)} problem(s)')
problems.head(20)
