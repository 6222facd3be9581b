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
# # Case explorer
#
# The worklist orders the cohort's imaging studies by AI urgency (positive by margin over the model's threshold, then *AI indeterminate* inside the indeterminate band, then measurements, then negative, then studies no model answered for, with the reason: image does not match record, input rejected, outside intended use, no AI result). Pick a study to see the patient, the lab trends with the imaging dates, the image with the AI overlays, and the AI findings with their model card. **Accept** or **Override** (with a coded reason) is saved to the review log at once. In reader-study mode the AI stays hidden until your own read is saved.
#
# The cohort is loaded with FHIR validation on, as the report loads it (invalid resources are left out). Run it as an app with `cds explorer` (voila), or change the parameters below (papermill).

# %% tags=["parameters"]
cohort = ""  # Bundle file, ndjson, folder, or FHIR server base URL; "": the shipped sample cohort
models = None  # model ids run through the registry; None: the models meant for the cohort's studies
cohort_cache = None  # a validated cohort saved by `cds explorer` (faster page loads); None: load and validate
findings_json = None  # a Findings JSON (cds.explorer.app.save_findings) instead of running models
reader_id = "reader"  # your id: actions are recorded as Practitioner/<reader_id>
store_path = "out/reviews.jsonl"  # append-only review log; earlier actions are shown
reader_study = False  # reader-study mode: AI hidden until your own read is saved
reference_date = "2020-06-02"  # ages are computed and worklist waits measured at this date

# %%
from cds.explorer.app import build_explorer

explorer = build_explorer(cohort, models=models, reader_id=reader_id, store_path=store_path,
                          reader_study=reader_study, findings_json=findings_json,
                          reference_date=reference_date, cohort_cache=cohort_cache)
explorer
