"""Write notebooks/model_lab.ipynb, reader_study.ipynb and cardiac_risk.ipynb (kept as code: thin, reviewable).

Run: .venv/bin/python tools/make_lab_notebooks.py [--no-execute] [NAME ...]

Each notebook is executed once with its default (small) parameters; only the outputs of cells that
start with ``# NBVAL_CHECK_OUTPUT`` are kept, so ``pytest --nbval-lax`` compares exactly those and the
committed notebooks stay small. Check cells print deterministic things only (counts, ids, tables built
from seeded numpy draws, booleans that hold by construction), never timings or float metrics of a
freshly trained network.
"""

import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell
from nbwrite import CHECK, write_notebook


def params_cell(text: str) -> nbformat.NotebookNode:
    return new_code_cell(text, metadata={"tags": ["parameters"]})


MODEL_LAB = [
    new_markdown_cell(
        "# Model lab: train, evaluate, calibrate, explain, ship\n\n"
        "A thin walk through `cds.studies.model_lab`: train a 2D task model with its task module (`cds train`), "
        "evaluate it with 95 % bootstrap CIs (`cds evaluate`), calibrate it (temperature scaling or isotonic "
        "regression, `cds.evaluation.calibration`) on cases the weights never saw, look at GradCAM maps of its most "
        "confident errors, export a MONAI bundle whose network outputs calibrated probabilities and whose card "
        "records the calibration, and register it in a models directory the `ModelRegistry` scans.\n\n"
        "Defaults are small (2 epochs on 28x28 PneumoniaMNIST, about 20 s on 2 CPU cores). The models directory "
        "defaults to `../out/model_lab/models`; set `models_dir = \"~/.cds/models\"` to register for yourself."),
    params_cell(
        'task = "pneumonia"  # "pneumonia" or "cxr-cardiomegaly"\n'
        "data_dir = None  # None: the task's data set in ../shared/data (or $CDS_SHARED_DATA); or a same-layout folder\n"
        'calibration_method = "temperature"  # "temperature", "isotonic" or "none"\n'
        'models_dir = "../out/model_lab/models"  # where the bundle is registered (NOT ~/.cds/models by default)\n'
        'work_dir = "../out/model_lab"  # trained and exported bundles\n'
        "model_id = None  # None: '<task>-lab'\n"
        "seed = 0\n"
        "quick = False  # the task module's test setting (1 epoch, narrow network)\n"
        "epochs = 2  # ignored when quick=True\n"
        "n_boot = 500  # bootstrap resamples for every CI\n"
        "n_gradcam = 6  # misclassified test cases shown with GradCAM"),
    new_code_cell(
        "from pathlib import Path\n\n"
        "import pandas as pd\n"
        "from IPython.display import Markdown, display\n\n"
        "from cds.studies import model_lab as ml\n"
        "from cds.evaluation.calibration import plot_reliability\n"
        "from cds.params import validate_parameters\n"
        "from cds.models.registry import ModelRegistry\n\n"
        "params = validate_parameters({k: globals()[k] for k in ml.PARAMETERS}, ml.PARAMETERS)\n"
        'model_id = model_id or f"{task}-lab"\n'
        "work = Path(work_dir)\n"
        'pd.set_option("display.max_colwidth", 110)\n'
        'pd.set_option("display.width", 160)'),
    new_markdown_cell("## Data"),
    new_code_cell(CHECK + "data = ml.data_dir_for(task, data_dir)\n"
                  'print(f"task: {task}\\ndata: {data.name}\\ncalibration: {calibration_method}\\nmodel id: {model_id}")'),
    new_markdown_cell("## Train\n\nThe task module trains from scratch, chooses the operating point on its tuning / "
                      "validation data and writes the bundle with its card."),
    new_code_cell('trained = ml.train(task, data_dir, work / "trained" / task, seed=seed, quick=quick, epochs=epochs)\n'
                  "print(f\"trained in {trained['seconds']} s -> {trained['bundle']}\")\n"
                  'ml.training_summary(trained["bundle"])'),
    new_markdown_cell("## Evaluate (95 % bootstrap CIs)\n\nThe task module's `evaluate`: the numbers a card holds."),
    new_code_cell('result = ml.evaluate(task, data_dir, trained["bundle"], n_boot=n_boot)\n'
                  "print(f\"{result['split']}: {result['n_cases']} cases, {result['n_positive']} positive; \"\n"
                  "      f\"bootstrap unit: {result['bootstrap']['unit']}\")\n"
                  "for note in result['notes']:\n    print('note:', note)\n"
                  "ml.metrics_table(result)"),
    new_markdown_cell("## Calibration\n\nThe calibrator is fitted on the *calibration* part and judged on the "
                      "*test* part; neither was used to fit the weights."),
    new_code_cell(CHECK + 'cases = ml.score_cases(task, data_dir, trained["bundle"])\nml.cases_summary(cases)'),
    new_code_cell("cal = ml.fit_calibration(cases, calibration_method)\n"
                  "print(cal.method, cal.params if cal.method != 'isotonic' else f\"{len(cal.params['x'])} breakpoints\")\n"
                  "cal_table = ml.calibration_report(cal, cases, n_boot=n_boot, seed=seed)\ncal_table"),
    new_code_cell('test = cases["test"]\n'
                  'fig = plot_reliability(test.y, {"before": test.p, f"after ({cal.method})": cal.transform(test.p)},\n'
                  '                       title=f"{task}: test part, {len(test)} cases")'),
    new_markdown_cell("Both calibration methods are strictly increasing maps, so the ranking (AUROC) and every "
                      "decision at the mapped threshold stay the same:"),
    new_code_cell(CHECK + 'ml.calibration_checks(cal, cases, result["threshold"])'),
    new_markdown_cell("## GradCAM on the most confident errors (test part)"),
    new_code_cell('t_cal = cal.transform_threshold(result["threshold"])\n'
                  'p_test = cal.transform(cases["test"].p)\n'
                  'errors = ml.misclassified(cases["test"], t_cal, p_test)\n'
                  "print(f\"{len(errors)} of {len(cases['test'])} test cases misclassified at threshold {t_cal:.4f}\")\n"
                  "errors.head(10)"),
    new_code_cell('items = ml.gradcam_errors(trained["bundle"], cases["test"], t_cal, k=n_gradcam, p=p_test)\n'
                  "fig = ml.plot_gradcam_errors(items)"),
    new_markdown_cell("## Export the calibrated MONAI bundle\n\nThe network is wrapped in "
                      "`cds.evaluation.calibration.calibrated_network`, the threshold and band are mapped through the "
                      "calibrator, the card records the calibration, and `evaluate` re-measures the performance."),
    new_code_cell('exported = ml.export_bundle(task, trained["bundle"], work / "export", cal, model_id, data_dir,\n'
                  "                            n_boot=n_boot, calibration_result=cal_table, seed=seed)\n"
                  "print(exported)"),
    new_code_cell(CHECK + "card = ml.card_summary(exported)\n"
                  'for key in ("model_id", "version", "task", "calibrated", "calibration_method", "derived_from"):\n'
                  '    print(f"{key:>20}: {card[key]}")'),
    new_code_cell('display(Markdown((exported / "docs" / "README.md").read_text()))'),
    new_markdown_cell("## Register\n\nRegistering = copying the bundle folder into a models directory "
                      "(`$CDS_MODELS_DIR` or `~/.cds/models` for your own use)."),
    new_code_cell("registered = ml.register(exported, models_dir, overwrite=True)\nprint(registered)"),
    new_code_cell(CHECK + "registry = ModelRegistry(user_dirs=[models_dir])\n"
                  "print(model_id in registry.ids())\n"
                  'print(registry.list_models().set_index("model_id").loc[model_id, ["task", "source"]].to_dict())'),
    new_code_cell('registry.list_models()[["model_id", "version", "task", "source", "threshold", "headline_metric", '
                  '"headline_value"]]'),
]

READER_STUDY = [
    new_markdown_cell(
        "# Reader study: reads before and after AI, reader by reader\n\n"
        "Following Yu et al. 2024 (Nat Med; 140 radiologists, 324 chest X-rays): the effect of AI assistance "
        "differs from reader to reader, is not predicted by experience, and depends on whether the AI is right "
        "(accurate AI helps, inaccurate AI hurts). This notebook analyses the explorer's review log "
        "(`cds.review.store.ReviewStore`: pre-AI and post-AI reads with a confidence 0-100) against a truth file.\n\n"
        "**By default there are no real reads: the notebook generates SIMULATED READERS** "
        "(`cds.studies.reader_study.simulate_readers`) on real cases: the shipped `pneumonia` model's predictions on real "
        "PneumoniaMNIST validation images (enriched with every image the AI gets wrong), and writes them through "
        "the same `ReviewStore` API the explorer uses. Every table and plot built from them says "
        "**SIMULATED READERS**; they show the simulation's assumptions, not evidence. Set `store_path` (and "
        "`truth_path`) to analyse a real reader study."),
    params_cell(
        "store_path = None  # a review log (.jsonl) with reader-study reads; None: simulate one into out_dir\n"
        "truth_path = None  # CSV with finding_id, truth (0/1); None: <store>.truth.csv\n"
        'out_dir = "../out/reader_study"\n'
        'case_source = "pneumonia"  # simulation only: "pneumonia" (model on real images) or "simulated"\n'
        "data_dir = None  # simulation with case_source='pneumonia': a MedMNIST-style folder (None: shared data)\n"
        "n_readers = 8  # simulation only\n"
        "n_cases = 120  # simulation only\n"
        "ai_accuracy = 0.8  # simulation with case_source='simulated' only\n"
        "prevalence = 0.5  # simulation with case_source='simulated' only\n"
        "n_boot = 500  # bootstrap resamples for every CI\n"
        "seed = 0"),
    new_code_cell(
        "from pathlib import Path\n\n"
        "import pandas as pd\n\n"
        "from cds.studies import reader_study as rs\n"
        "from cds.params import validate_parameters\n\n"
        "params = validate_parameters({k: globals()[k] for k in rs.PARAMETERS}, rs.PARAMETERS)\n"
        'pd.set_option("display.width", 180)\n'
        'pd.set_option("display.max_colwidth", 60)'),
    new_markdown_cell("## The reads"),
    new_code_cell(
        "readers = None\n"
        "if store_path is None:\n"
        "    out = Path(out_dir)\n"
        "    out.mkdir(parents=True, exist_ok=True)\n"
        '    if case_source == "pneumonia":\n'
        "        cases = rs.cases_from_model(\"pneumonia\", data_dir, n_cases=n_cases, seed=seed)\n"
        "    else:\n"
        "        cases = rs.simulated_cases(n_cases, prevalence=prevalence, ai_accuracy=ai_accuracy, seed=seed)\n"
        '    sim = rs.simulate_readers(cases, out / "simulated_reads.jsonl", n_readers=n_readers, seed=seed,\n'
        "                              overwrite=True)\n"
        "    store, truth_file, readers = sim.store_path, sim.truth_path, sim.readers\n"
        "else:\n"
        "    store = Path(store_path)\n"
        "    truth_file = Path(truth_path) if truth_path else rs.default_truth_path(store)\n"
        '    readers_file = store.with_name(store.stem + ".readers.csv")\n'
        "    readers = pd.read_csv(readers_file) if readers_file.is_file() else None\n"
        "print(store)"),
    new_code_cell(
        CHECK + "reads = rs.load_reads(store)\n"
        "truth = rs.load_truth(truth_file)\n"
        "paired = rs.paired_reads(reads, truth)\n"
        "print(rs.banner(paired))\n"
        "n_wrong = paired.loc[~paired.ai_correct, 'finding_id'].nunique()\n"
        "print(f\"readers: {paired.reader.nunique()}, cases: {paired.finding_id.nunique()} \"\n"
        "      f\"({paired.groupby('finding_id').truth.first().sum()} positive), AI wrong on {n_wrong} cases\")\n"
        "print('left out:', paired.attrs['left_out'])"),
    new_code_cell(CHECK + "readers if readers is not None else 'no reader file'"),
    new_markdown_cell("## Per reader: before vs with AI (95 % bootstrap CIs over cases, paired)\n\n"
                      "AUROC uses the confidence as a score: 50 + confidence/2 for *present*, 50 - confidence/2 "
                      "for *absent*."),
    new_code_cell("long = rs.per_reader(paired, n_boot=n_boot, seed=seed)\nprint(rs.banner(paired))"),
    new_code_cell(CHECK + 'rs.format_per_reader(long, "sensitivity")'),
    new_code_cell(CHECK + 'rs.format_per_reader(long, "specificity")'),
    new_code_cell(CHECK + 'rs.format_per_reader(long, "auroc")'),
    new_markdown_cell("## When the AI was right vs wrong\n\nAccuracy before vs with AI on the cases where the AI's "
                      "call was right, and where it was wrong; `moved_to_ai` = of the reads that disagreed with the "
                      "AI before, the fraction that agreed after."),
    new_code_cell(CHECK + "right_wrong = rs.ai_right_wrong(paired, n_boot=n_boot, seed=seed)\n"
                  'right_wrong[right_wrong.reader == "all readers"]'),
    new_code_cell("right_wrong"),
    new_markdown_cell("## Spread across readers\n\nHow much the effect differs between readers; `readers_helped` / "
                      "`readers_hurt` count readers whose CI excludes 0. With few readers the rank correlations "
                      "(`rho_*`) are noise; in the simulation experience is unrelated to the effect by construction."),
    new_code_cell(CHECK + "rs.spread(long, readers)"),
    new_code_cell('fig = rs.plot_spread(long, "auroc", readers, right_wrong)'),
]

CARDIAC_RISK = [
    new_markdown_cell(
        "# Cardiac risk: 12-month MACE from CMR strain and the FHIR record\n\n"
        "An **illustrative, NOT validated** Cox-form model (`cds.studies.cardiac_risk`): "
        "risk = 1 - S0(12 mo)^exp(LP). The only published coefficient is GCS (Backhaus 2022, automated CMR "
        "strain after acute MI: GCS HR 1.07 per %, 95 % CI 1.05-1.10; GLS HR 1.12 per % (1.08-1.16) is shown but "
        "not used because `cmr-function` has no long-axis views). All clinical coefficients are **assumed**. "
        "No real cardiac MRI exists here: each selected patient gets a **phantom** cine (`cds.models.tasks.phantom`, seed "
        "`phantom_seed + i`) measured by `cmr-function`, so the strain and EF inputs are **phantom-derived** and "
        "say nothing about the patient's heart. The outputs are FHIR R4 `RiskAssessment` resources (status "
        "preliminary, AIAST security label, basis references), validated with `fhir.resources.R4B`."),
    params_cell(
        'cohort = "../fhir_samples"  # Bundle file, ndjson, folder or FHIR server base URL\n'
        'patients = "mi-or-hf"  # "mi-or-hf", "all" or a list of patient ids\n'
        "phantom_seed = 500  # patient i gets the phantom cine of seed phantom_seed + i\n"
        "phantom_frames = None  # frames per phantom cine; None: the phantom's own 20-30\n"
        "cmr_bundle = None  # a cmr-function bundle folder; None: the shipped cds/models/bundles/cmr-function\n"
        "horizon_months = 12  # the model's horizon (12 months only)\n"
        "include_assumed = True  # False: only the published GCS term\n"
        'reference_date = "2026-01-01"  # assessments happen at the last encounter before this date (and death)\n'
        'recorded = "2026-01-01T00:00:00Z"  # FHIR instant stamped on the results Bundle\n'
        'out_dir = "../out/cardiac_risk"'),
    new_code_cell(
        "import json\nfrom pathlib import Path\n\n"
        "import pandas as pd\n\n"
        "import cds\n"
        "from cds.studies import cardiac_risk as cr\n"
        "from cds.params import validate_parameters\n\n"
        "params = validate_parameters({k: globals()[k] for k in cr.PARAMETERS}, cr.PARAMETERS)\n"
        'pd.set_option("display.width", 200)\n'
        'pd.set_option("display.max_colwidth", 70)\n'
        "cohort_data = cds.load_cohort(cohort, validate=False, reference_date=reference_date)\n"
        "model = cr.default_model(include_assumed=include_assumed)"),
    new_markdown_cell("## The model: form, coefficients and where they come from"),
    new_code_cell(CHECK + "print(model.form())\nfor note in model.notes:\n    print('-', note)"),
    new_code_cell(CHECK + 'model.table()[["term", "hazard_ratio", "hr_ci95", "per", "reference", "beta", "status"]]'),
    new_code_cell('model.table()[["term", "source"]]'),
    new_markdown_cell("## Patients, phantom CMR and features"),
    new_code_cell("out = cr.assess_cohort(cohort_data, patients, phantom_seed=phantom_seed, cmr_bundle=cmr_bundle,\n"
                  "                       model=model, phantom_frames=phantom_frames, reference_date=reference_date)"),
    new_code_cell(CHECK + 'clinical = ["patient_id", "as_of", "phantom_seed", "age_years", "male", "diabetes", '
                  '"prior_mi",\n            "troponin_elevated", "creatinine_mg_dl"]\nout["features"][clinical]'),
    new_markdown_cell("CMR inputs: **PHANTOM-derived** (`cmr-function` measurements of synthetic cines), next to "
                      "the phantoms' ground truth:"),
    new_code_cell('out["phantom_truth"]'),
    new_code_cell('out["evidence"]'),
    new_markdown_cell("## Risks (illustrative, NOT validated)"),
    new_code_cell('out["risks"]'),
    new_code_cell("fig = cr.plot_contributions(out[\"risks\"])"),
    new_markdown_cell("## FHIR RiskAssessment resources"),
    new_code_cell(CHECK + 'ras = out["resources"]\n'
                  'print(f"{cr.validate(ras)} RiskAssessment resource(s) valid under fhir.resources.R4B")\n'
                  'print("status:", sorted({r["status"] for r in ras}))\n'
                  'print("security:", sorted({s["code"] for r in ras for s in r["meta"]["security"]}))\n'
                  'print("horizon:", sorted({r["prediction"][0]["whenRange"]["high"]["value"] for r in ras}), "months")\n'
                  'print("basis per resource:", [len(r["basis"]) for r in ras])'),
    new_code_cell('print(json.dumps(ras[0], indent=1))'),
    new_code_cell("bundle = cr.results_bundle(out[\"findings\"], ras, out[\"cmr_bundle\"], cohort_data, recorded)\n"
                  "cr.validate([bundle])\n"
                  "path = Path(out_dir)\npath.mkdir(parents=True, exist_ok=True)\n"
                  '(path / "cardiac_risk_bundle.json").write_text(json.dumps(bundle, indent=1))\n'
                  "print(f\"{len(bundle['entry'])} entries (CMR results + RiskAssessments) -> {path / 'cardiac_risk_bundle.json'}\")"),
]

NOTEBOOKS = {"model_lab": MODEL_LAB, "reader_study": READER_STUDY, "cardiac_risk": CARDIAC_RISK}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name in args or list(NOTEBOOKS):
        if name not in NOTEBOOKS:
            raise SystemExit(f"unknown notebook {name!r}; choose from {', '.join(NOTEBOOKS)}")
        path = write_notebook(name, NOTEBOOKS[name], execute="--no-execute" not in sys.argv)
        print(path, "(executed; kept outputs of NBVAL_CHECK_OUTPUT cells)" if "--no-execute" not in sys.argv else "")
