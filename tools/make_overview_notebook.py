"""Write notebooks/cohort_overview.ipynb (kept as code so the notebook stays thin and reviewable).

Run: .venv/bin/python tools/make_overview_notebook.py
"""

from nbformat.v4 import new_code_cell, new_markdown_cell
from nbwrite import write_notebook

cells = [
    new_markdown_cell("# Cohort overview\n\nDemographics, conditions, lab distributions and imaging of a FHIR R4 "
                      "cohort loaded with `cds.load_cohort`. Run with papermill to change the parameters below."),
    new_code_cell('cohort = "../fhir_samples"  # Bundle file, ndjson, folder, or FHIR server base URL\n'
                  'out_dir = "../out/overview"  # where figures are written\n'
                  'reference_date = "2026-01-01"  # ages are computed at this date\n'
                  'validate = True  # validate every resource as FHIR R4 (fhir.resources.R4B)',
                  metadata={"tags": ["parameters"]}),
    new_code_cell("from pathlib import Path\n\nimport cds\nfrom cds.reports import overview as ov\n\n"
                  "out = Path(out_dir)\nout.mkdir(parents=True, exist_ok=True)\n"
                  "cohort_data = cds.load_cohort(cohort, validate=validate, reference_date=reference_date)"),
    new_markdown_cell("## The cohort in numbers"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nsummary = cohort_data.summary()\n"
                  "for key in ['patients', 'imaging_studies', 'images_with_pixels', 'observations', 'conditions',\n"
                  "            'medications', 'encounters', 'invalid_resources', 'dangling_references']:\n"
                  "    print(f'{key:>20}: {summary[key]}')"),
    new_markdown_cell("## Demographics"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nov.demographics(cohort_data)"),
    new_code_cell("fig = ov.plot_demographics(cohort_data)\nfig.savefig(out / 'demographics.png', dpi=100)\nfig"),
    new_markdown_cell("## Conditions (patients with each condition)"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nov.top_conditions(cohort_data, n=10)"),
    new_code_cell("fig = ov.plot_conditions(cohort_data)\nfig.savefig(out / 'conditions.png', dpi=100)\nfig"),
    new_markdown_cell("## Lab value distributions"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nov.lab_summary(cohort_data)"),
    new_code_cell("fig = ov.plot_labs(cohort_data)\nfig.savefig(out / 'labs.png', dpi=100)\nfig"),
    new_markdown_cell("## Imaging per patient"),
    new_code_cell("# NBVAL_CHECK_OUTPUT\nov.imaging_per_patient(cohort_data)"),
    new_code_cell("fig = ov.plot_imaging(cohort_data)\nfig.savefig(out / 'imaging.png', dpi=100)\nfig"),
    new_markdown_cell("## Input problems\n\nResources that failed FHIR R4 validation or point at missing "
                      "resources; everything else loaded."),
    new_code_cell("problems = cohort_data.problems_frame()\n"
                  "print(f'{len(problems)} problem(s)')\nproblems.head(20)"),
]
if __name__ == "__main__":
    import sys

    print(write_notebook("cohort_overview", cells, execute="--no-execute" not in sys.argv))
