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
# # Cohort report: imaging AI on a FHIR cohort
#
# Runs the selected models on every eligible imaging study of the cohort in the date window, then reports the findings per task, the studies the models could not read, a **triage** simulation (AI worklist order against first-come-first-served), **performance** where FHIR holds outcome labels, and our numbers next to **published anchors**. All results are AI-generated and preliminary. Outputs: `report.html`, `results.json` and `results.fhir.json` (FHIR R4 transaction Bundle) in `out_dir`.
#
# Run it on a schedule with `cds report` (or `cds.reports.report.run_report`); parameters are below.

# %% tags=["parameters"]
cohort = ""  # folder, Bundle .json, .ndjson file, or FHIR server base URL; "": the shipped sample cohort
models = ["auto"]  # model ids (see `cds models`); ["auto"]: the models meant for the cohort's studies
start_date = None  # first study date YYYY-MM-DD, or -7d for 7 days before reference_date; None: no limit
end_date = None  # last study date (inclusive), same forms
out_dir = "out/report"  # results.json, results.fhir.json and figures/ go here
deidentify = False  # pseudonymise: no names, identifiers or birth dates in any output
salt = None  # de-identification secret; better leave None and set $CDS_REPORT_SALT
thresholds = {}  # model id -> decision threshold replacing the model card threshold, e.g. {"cxr-icu": 0.4}
reference_date = "2026-01-01"  # ages are computed at this date; FHIR recorded time: its midnight UTC
minutes_per_study = 5.0  # triage simulation: reading minutes per study
n_boot = 2000  # bootstrap resamples for 95 % confidence intervals
validate = True  # validate every FHIR resource as R4 (fhir.resources.R4B)
cache = "auto"  # result cache: "auto" (result-cache.sqlite in out_dir), a .sqlite path, or None (recompute all)
workers = 0  # Dask LocalCluster worker processes for the models (0: in this process)
scheduler = None  # or an existing Dask cluster, "tcp://HOST:PORT"
decode_workers = None  # image decode processes ahead of each model (None: the CPU count; 0: in line)

# %%
# NBVAL_CHECK_OUTPUT
# Parameters are type-checked and validated before any work (cohort "": the shipped sample cohort).
from cds import locations
from cds.reports import report as rp

params = rp.check_notebook_parameters({**globals(), "cohort": locations.cohort_source(cohort)})

# %% [markdown]
# ## Cohort
#
# Patients with at least one imaging study in the date window (ages at the reference date; unknown where the record has no birth date).

# %%
# NBVAL_CHECK_OUTPUT
ctx = rp.prepare(params)
rp.describe_scope(ctx)

# %%
# NBVAL_CHECK_OUTPUT
rp.demographics_table(ctx)

# %%
# NBVAL_CHECK_OUTPUT
rp.conditions_table(ctx)

# %%
ctx.figure(rp.plot_cohort(ctx), "cohort")

# %% [markdown]
# ## Running the models
#
# Each model runs on the studies of its modalities; a study it cannot read (no pixels, unreadable image, missing EHR input) is recorded as a failure and the run goes on.

# %%
rp.run_models(ctx, progress=False)  # one line per model when it is done

# %% [markdown]
# ## Findings per task

# %%
# NBVAL_CHECK_OUTPUT
rp.findings_table(ctx)

# %%
ctx.figure(rp.plot_scores(ctx), "scores")

# %% [markdown]
# ### Studies the models gave no answer for
#
# A model answers only for input it can vouch for. "outside intended use": the study is outside the
# population or inputs its card declares (age, view, modality, resolution, body part); "input rejected
# (quality)": blank, non-finite, impossible geometry or out of the training images' range; "image does
# not match record": the file's patient, study, series or modality differ from its ImagingStudy;
# "model could not run": an unreadable file or a missing EHR input. None of these gets a score.

# %%
# NBVAL_CHECK_OUTPUT
rp.show(rp.failure_summary(ctx))

# %%
rp.show_details(rp.failures_table(ctx), "Every study a model gave no answer for")

# %% [markdown]
# ## Triage: AI worklist order against first-come-first-served

# %%
rp.triage_definition(ctx)

# %%
# NBVAL_CHECK_OUTPUT
rp.triage_table(ctx)

# %%
ctx.figure(rp.plot_triage(ctx), "triage")

# %% [markdown]
# Top of each model's AI worklist, with where first-come-first-served would have put the study:

# %%
rp.worklist_head(ctx, n=10)

# %% [markdown]
# ## Performance against outcome labels from FHIR

# %%
rp.performance_definition(ctx)

# %%
# NBVAL_CHECK_OUTPUT
rp.performance_table(ctx)

# %%
ctx.figure(rp.plot_performance(ctx), "performance")

# %% [markdown]
# ### Subgroups (sex, age band at the study)

# %%
rp.subgroup_table(ctx)

# %% [markdown]
# ## Our numbers next to published anchors
#
# Published figures (docs/STACK.md) beside the nearest model of this suite: its model card's number and, where this cohort has labels, the number measured in this report.

# %%
rp.show(rp.anchors_table(ctx))

# %%
rp.anchor_caveats(ctx)

# %% [markdown]
# ## Outputs

# %%
# NBVAL_CHECK_OUTPUT
written = rp.write_outputs(ctx)
