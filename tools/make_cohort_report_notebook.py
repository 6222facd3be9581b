"""Write notebooks/cohort_report.ipynb (kept as code so the notebook stays thin and reviewable).

Run: .venv/bin/python tools/make_cohort_report_notebook.py [--no-execute]

The notebook only calls into ``cds.reports.report``; it assigns no names but those in
``cds.reports.report.NOTEBOOK_NAMES`` (everything else defined before the validation cell is a parameter).
"""

import sys

from nbformat.v4 import new_code_cell, new_markdown_cell
from nbwrite import CHECK, write_notebook

cells = [
    new_markdown_cell(
        "# Cohort report: imaging AI on a FHIR cohort\n\n"
        "Runs the selected models on every eligible imaging study of the cohort in the date window, then "
        "reports the findings per task, the studies the models could not read, a **triage** simulation "
        "(AI worklist order against first-come-first-served), **performance** where FHIR holds outcome "
        "labels, and our numbers next to **published anchors**. All results are AI-generated and "
        "preliminary. Outputs: `report.html`, `results.json` and `results.fhir.json` (FHIR R4 transaction "
        "Bundle) in `out_dir`.\n\n"
        "Run it on a schedule with `cds report` (or `cds.reports.report.run_report`); parameters are below."),
    new_code_cell(
        'cohort = "../fhir_samples"  # folder, Bundle .json, .ndjson file, or FHIR server base URL\n'
        'models = ["pneumonia", "cxr-icu", "cxr-cardiomegaly"]  # model ids (see `cds models`)\n'
        "start_date = None  # first study date YYYY-MM-DD, or -7d for 7 days before reference_date; None: no limit\n"
        "end_date = None  # last study date (inclusive), same forms\n"
        'out_dir = "../out/report"  # results.json, results.fhir.json and figures/ go here\n'
        "deidentify = False  # pseudonymise: no names, identifiers or birth dates in any output\n"
        "salt = None  # de-identification secret; better leave None and set $CDS_REPORT_SALT\n"
        'thresholds = {}  # model id -> decision threshold replacing the model card threshold, e.g. {"cxr-icu": 0.4}\n'
        'reference_date = "2026-01-01"  # ages are computed at this date; FHIR recorded time: its midnight UTC\n'
        "minutes_per_study = 5.0  # triage simulation: reading minutes per study\n"
        "n_boot = 2000  # bootstrap resamples for 95 % confidence intervals\n"
        "validate = True  # validate every FHIR resource as R4 (fhir.resources.R4B)",
        metadata={"tags": ["parameters"]}),
    new_code_cell(CHECK + "# Parameters are type-checked and validated before any work.\n"
                  "from cds.reports import report as rp\n\nparams = rp.check_notebook_parameters(globals())"),
    new_markdown_cell("## Cohort\n\nPatients with at least one imaging study in the date window (ages at the "
                      "reference date; unknown where the record has no birth date)."),
    new_code_cell(CHECK + "ctx = rp.prepare(params)\nrp.describe_scope(ctx)"),
    new_code_cell(CHECK + "rp.demographics_table(ctx)"),
    new_code_cell(CHECK + "rp.conditions_table(ctx)"),
    new_code_cell('ctx.figure(rp.plot_cohort(ctx), "cohort")'),
    new_markdown_cell("## Running the models\n\nEach model runs on the studies of its modalities; a study it "
                      "cannot read (no pixels, unreadable image, missing EHR input) is recorded as a failure and "
                      "the run goes on."),
    new_code_cell("rp.run_models(ctx, progress=False)  # one line per model when it is done"),
    new_markdown_cell("## Findings per task"),
    new_code_cell(CHECK + "rp.findings_table(ctx)"),
    new_code_cell('ctx.figure(rp.plot_scores(ctx), "scores")'),
    new_markdown_cell("### Studies the models could not run on"),
    new_code_cell(CHECK + "rp.show(rp.failure_summary(ctx))"),
    new_code_cell('rp.show_details(rp.failures_table(ctx), "Every study a model could not run on")'),
    new_markdown_cell("## Triage: AI worklist order against first-come-first-served"),
    new_code_cell("rp.triage_definition(ctx)"),
    new_code_cell(CHECK + "rp.triage_table(ctx)"),
    new_code_cell('ctx.figure(rp.plot_triage(ctx), "triage")'),
    new_markdown_cell("Top of each model's AI worklist, with where first-come-first-served would have put the study:"),
    new_code_cell("rp.worklist_head(ctx, n=10)"),
    new_markdown_cell("## Performance against outcome labels from FHIR"),
    new_code_cell("rp.performance_definition(ctx)"),
    new_code_cell(CHECK + "rp.performance_table(ctx)"),
    new_code_cell('ctx.figure(rp.plot_performance(ctx), "performance")'),
    new_markdown_cell("### Subgroups (sex, age band at the study)"),
    new_code_cell("rp.subgroup_table(ctx)"),
    new_markdown_cell("## Our numbers next to published anchors\n\nPublished figures (docs/STACK.md) beside the "
                      "nearest model of this suite: its model card's number and, where this cohort has labels, "
                      "the number measured in this report."),
    new_code_cell("rp.show(rp.anchors_table(ctx))"),
    new_code_cell("rp.anchor_caveats(ctx)"),
    new_markdown_cell("## Outputs"),
    new_code_cell(CHECK + "written = rp.write_outputs(ctx)"),
]
if __name__ == "__main__":
    print(write_notebook("cohort_report", cells, execute="--no-execute" not in sys.argv))
