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
# # Model lab: train, evaluate, calibrate, explain, ship
#
# A thin walk through `cds.studies.model_lab`: train a 2D task model with its task module (`cds train`), evaluate it with 95 % bootstrap CIs (`cds evaluate`), calibrate it (temperature scaling or isotonic regression, `cds.evaluation.calibration`) on cases the weights never saw, look at GradCAM maps of its most confident errors, export a MONAI bundle whose network outputs calibrated probabilities and whose card records the calibration, and register it in a models directory the `ModelRegistry` scans.
#
# Defaults are small (2 epochs on 28x28 PneumoniaMNIST, about 20 s on 2 CPU cores). The models directory defaults to `out/model_lab/models` (relative to the current folder); set `models_dir = "~/.cds/models"` to register for yourself.
#
# **Data.** With `data_dir = None` the `pneumonia` task uses the small PneumoniaMNIST subset that ships with cds (`sample_data/pneumoniamnist`: 300 training and 200 validation images, CC BY 4.0; see its SOURCE.md). It only **demonstrates the workflow**: the numbers below are not the shipped model card's, which come from the full set (`data_dir = "../shared/data/medmnist"`, or any folder laid out like it). `cxr-cardiomegaly` ships no subset: its `None` means the team's `nih-cxr14-thumbs64` set.

# %% tags=["parameters"]
task = "pneumonia"  # "pneumonia" or "cxr-cardiomegaly"
data_dir = None  # None: the shipped sample subset (pneumonia) or the task's set in ../shared/data; or a same-layout folder
calibration_method = "temperature"  # "temperature", "isotonic" or "none"
models_dir = "out/model_lab/models"  # where the bundle is registered (NOT ~/.cds/models by default)
work_dir = "out/model_lab"  # trained and exported bundles
model_id = None  # None: '<task>-lab'
seed = 0
quick = False  # the task module's test setting (1 epoch, narrow network)
epochs = 2  # ignored when quick=True
n_boot = 500  # bootstrap resamples for every CI
n_gradcam = 6  # misclassified test cases shown with GradCAM

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from cds.evaluation.calibration import plot_reliability
from cds.models.registry import ModelRegistry
from cds.params import validate_parameters
from cds.studies import model_lab as ml

params = validate_parameters({k: globals()[k] for k in ml.PARAMETERS}, ml.PARAMETERS)
model_id = model_id or f"{task}-lab"
work = Path(work_dir)
pd.set_option("display.max_colwidth", 110)
pd.set_option("display.width", 160)

# %% [markdown]
# ## Data

# %%
# NBVAL_CHECK_OUTPUT
data = ml.data_dir_for(task, data_dir)
print(f"task: {task}\ndata: {data.name}\ncalibration: {calibration_method}\nmodel id: {model_id}")

# %% [markdown]
# ## Train
#
# The task module trains from scratch, chooses the operating point on its tuning / validation data and writes the bundle with its card.

# %%
trained = ml.train(task, data_dir, work / "trained" / task, seed=seed, quick=quick, epochs=epochs)
print(f"trained in {trained['seconds']} s -> {trained['bundle']}")
ml.training_summary(trained["bundle"])

# %% [markdown]
# ## Evaluate (95 % bootstrap CIs)
#
# The task module's `evaluate`: the numbers a card holds.

# %%
result = ml.evaluate(task, data_dir, trained["bundle"], n_boot=n_boot)
print(f"{result['split']}: {result['n_cases']} cases, {result['n_positive']} positive; "
      f"bootstrap unit: {result['bootstrap']['unit']}")
for note in result['notes']:
    print('note:', note)
ml.metrics_table(result)

# %% [markdown]
# ## Calibration
#
# The calibrator is fitted on the *calibration* part and judged on the *test* part; neither was used to fit the weights.

# %%
# NBVAL_CHECK_OUTPUT
cases = ml.score_cases(task, data_dir, trained["bundle"])
ml.cases_summary(cases)

# %%
cal = ml.fit_calibration(cases, calibration_method)
print(cal.method, cal.params if cal.method != 'isotonic' else f"{len(cal.params['x'])} breakpoints")
cal_table = ml.calibration_report(cal, cases, n_boot=n_boot, seed=seed)
cal_table

# %%
test = cases["test"]
fig = plot_reliability(test.y, {"before": test.p, f"after ({cal.method})": cal.transform(test.p)},
                       title=f"{task}: test part, {len(test)} cases")

# %% [markdown]
# Both calibration methods are strictly increasing maps, so the ranking (AUROC) and every decision at the mapped threshold stay the same:

# %%
# NBVAL_CHECK_OUTPUT
ml.calibration_checks(cal, cases, result["threshold"])

# %% [markdown]
# ## GradCAM on the most confident errors (test part)

# %%
t_cal = cal.transform_threshold(result["threshold"])
p_test = cal.transform(cases["test"].p)
errors = ml.misclassified(cases["test"], t_cal, p_test)
print(f"{len(errors)} of {len(cases['test'])} test cases misclassified at threshold {t_cal:.4f}")
errors.head(10)

# %%
items = ml.gradcam_errors(trained["bundle"], cases["test"], t_cal, k=n_gradcam, p=p_test)
fig = ml.plot_gradcam_errors(items)

# %% [markdown]
# ## Export the calibrated MONAI bundle
#
# The network is wrapped in `cds.evaluation.calibration.calibrated_network`, the threshold and band are mapped through the calibrator, the card records the calibration, and `evaluate` re-measures the performance.

# %%
exported = ml.export_bundle(task, trained["bundle"], work / "export", cal, model_id, data_dir,
                            n_boot=n_boot, calibration_result=cal_table, seed=seed)
print(exported)

# %%
# NBVAL_CHECK_OUTPUT
card = ml.card_summary(exported)
for key in ("model_id", "version", "task", "calibrated", "calibration_method", "derived_from"):
    print(f"{key:>20}: {card[key]}")

# %%
display(Markdown((exported / "docs" / "README.md").read_text()))

# %% [markdown]
# ## Register
#
# Registering = copying the bundle folder into a models directory (`$CDS_MODELS_DIR` or `~/.cds/models` for your own use).

# %%
registered = ml.register(exported, models_dir, overwrite=True)
print(registered)

# %%
# NBVAL_CHECK_OUTPUT
registry = ModelRegistry(user_dirs=[models_dir])
print(model_id in registry.ids())
print(registry.list_models().set_index("model_id").loc[model_id, ["task", "source"]].to_dict())

# %%
registry.list_models()[["model_id", "version", "task", "source", "threshold", "headline_metric", "headline_value"]]
