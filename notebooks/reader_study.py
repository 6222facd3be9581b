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
# # Reader study: reads before and after AI, reader by reader
#
# Following Yu et al. 2024 (Nat Med; 140 radiologists, 324 chest X-rays): the effect of AI assistance differs from reader to reader, is not predicted by experience, and depends on whether the AI is right (accurate AI helps, inaccurate AI hurts). This notebook analyses the explorer's review log (`cds.review.store.ReviewStore`: pre-AI and post-AI reads with a confidence 0-100) against a truth file.
#
# **By default there are no real reads: the notebook generates SIMULATED READERS** (`cds.studies.reader_study.simulate_readers`) on real cases: the shipped `pneumonia` model's predictions on real PneumoniaMNIST validation images (enriched with every image the AI gets wrong), and writes them through the same `ReviewStore` API the explorer uses. Every table and plot built from them says **SIMULATED READERS**; they show the simulation's assumptions, not evidence. Set `store_path` (and `truth_path`) to analyse a real reader study.
#
# **Data.** By default (`data_dir = None`) the cases come from the small PneumoniaMNIST subset that ships with cds (`sample_data/pneumoniamnist`, 200 validation images, CC BY 4.0; see its SOURCE.md): enough to demonstrate the workflow on any machine, not to measure anything. Point `data_dir` at the full set (e.g. `../shared/data/medmnist`) for more cases.

# %% tags=["parameters"]
store_path = None  # a review log (.jsonl) with reader-study reads; None: simulate one into out_dir
truth_path = None  # CSV with finding_id, truth (0/1); None: <store>.truth.csv
out_dir = "out/reader_study"  # simulated reads go here (relative to the current folder)
case_source = "pneumonia"  # simulation only: "pneumonia" (model on real images) or "simulated"
data_dir = None  # simulation with case_source='pneumonia': a MedMNIST-style folder or .npz (None: the shipped sample subset)
n_readers = 8  # simulation only
n_cases = 120  # simulation only
ai_accuracy = 0.8  # simulation with case_source='simulated' only
prevalence = 0.5  # simulation with case_source='simulated' only
n_boot = 500  # bootstrap resamples for every CI
seed = 0

# %%
import pandas as pd

from cds.params import validate_parameters
from cds.studies import reader_study as rs

params = validate_parameters({k: globals()[k] for k in rs.PARAMETERS}, rs.PARAMETERS)
pd.set_option("display.width", 180)
pd.set_option("display.max_colwidth", 60)

# %% [markdown]
# ## The reads

# %%
store, truth_file, readers = rs.study_inputs(store_path, truth_path, out_dir, case_source, data_dir, n_readers=n_readers,
                                             n_cases=n_cases, ai_accuracy=ai_accuracy, prevalence=prevalence, seed=seed)
print(store)

# %%
# NBVAL_CHECK_OUTPUT
reads = rs.load_reads(store)
truth = rs.load_truth(truth_file)
paired = rs.paired_reads(reads, truth)
print(rs.banner(paired))
n_wrong = paired.loc[~paired.ai_correct, 'finding_id'].nunique()
print(f"readers: {paired.reader.nunique()}, cases: {paired.finding_id.nunique()} "
      f"({paired.groupby('finding_id').truth.first().sum()} positive), AI wrong on {n_wrong} cases")
print('left out:', paired.attrs['left_out'])

# %%
# NBVAL_CHECK_OUTPUT
readers if readers is not None else 'no reader file'

# %% [markdown]
# ## Per reader: before vs with AI (95 % bootstrap CIs over cases, paired)
#
# AUROC uses the confidence as a score: 50 + confidence/2 for *present*, 50 - confidence/2 for *absent*.

# %%
long = rs.per_reader(paired, n_boot=n_boot, seed=seed)
print(rs.banner(paired))

# %%
# NBVAL_CHECK_OUTPUT
rs.format_per_reader(long, "sensitivity")

# %%
# NBVAL_CHECK_OUTPUT
rs.format_per_reader(long, "specificity")

# %%
# NBVAL_CHECK_OUTPUT
rs.format_per_reader(long, "auroc")

# %% [markdown]
# ## When the AI was right vs wrong
#
# Accuracy before vs with AI on the cases where the AI's call was right, and where it was wrong; `moved_to_ai` = of the reads that disagreed with the AI before, the fraction that agreed after.

# %%
# NBVAL_CHECK_OUTPUT
right_wrong = rs.ai_right_wrong(paired, n_boot=n_boot, seed=seed)
right_wrong[right_wrong.reader == "all readers"]

# %%
right_wrong

# %% [markdown]
# ## Spread across readers
#
# How much the effect differs between readers; `readers_helped` / `readers_hurt` count readers whose CI excludes 0. With few readers the rank correlations (`rho_*`) are noise; in the simulation experience is unrelated to the effect by construction.

# %%
# NBVAL_CHECK_OUTPUT
rs.spread(long, readers)

# %%
fig = rs.plot_spread(long, "auroc", readers, right_wrong)

# %% [markdown]
# ## Multi-reader multi-case (MRMC) analysis of the change in AUROC
#
# The standard analysis of a reader study: Obuchowski-Rockette with Hillis's denominator degrees of freedom (`cds.studies.mrmc`; the method of the OR-DBM MRMC software, RJafroc and MRMCaov, checked against the published Van Dyke analysis in `tests/test_mrmc.py`). The AUROC per reader uses the same score as above; covariances by the jackknife over cases. **RRRC** (readers and cases random, the primary analysis) asks whether the AI would help other readers on other cases; **FRRC** (readers fixed) speaks for these readers only. The same analysis on the cases where the AI was right and where it was wrong; `SD of effect between readers` is sqrt(2 VarTR), the spread of the readers' true effects net of case noise. Only cases read by every reader enter.

# %%
# NBVAL_CHECK_OUTPUT
mrmc_tables = rs.mrmc_auroc(paired)
print(rs.banner(paired))
rs.format_mrmc(mrmc_tables, "RRRC")

# %%
# NBVAL_CHECK_OUTPUT
rs.format_mrmc(mrmc_tables, "FRRC")

# %%
# NBVAL_CHECK_OUTPUT
mrmc_tables["readers"][mrmc_tables["readers"].cases == "all cases"]

# %%
mrmc_tables["test"]

# %%
mrmc_tables["components"]
