"""Write notebooks/case_explorer.ipynb (kept as code so the notebook stays thin and reviewable).

Run: .venv/bin/python tools/make_case_explorer_notebook.py

The notebook is committed without outputs (its widget state would be large and change every run).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell(
        "# Case explorer\n\n"
        "The worklist orders the cohort's imaging studies by AI urgency (positive by margin over the model's "
        "threshold, then *AI uncertain* inside the indeterminate band, then negative, then studies without an AI "
        "result). Pick a study to see the patient, the lab trends with the imaging dates, the image with the AI "
        "overlays, and the AI findings with their model card. **Accept** or **Override** (with a coded reason) is "
        "saved to the review log at once. In reader-study mode the AI stays hidden until your own read is saved.\n\n"
        "Run it as an app with `cds explorer` (voila), or change the parameters below (papermill)."),
    new_code_cell(
        'cohort = "../fhir_samples"  # Bundle file, ndjson, folder, or FHIR server base URL\n'
        'models = ["pneumonia"]  # model ids run through the registry (ignored when findings_json is set)\n'
        "findings_json = None  # a Findings JSON (cds.explorer.app.save_findings) instead of running models\n"
        'reader_id = "reader"  # your id: actions are recorded as Practitioner/<reader_id>\n'
        'store_path = "../out/reviews.jsonl"  # append-only review log; earlier actions are shown\n'
        "reader_study = False  # reader-study mode: AI hidden until your own read is saved\n"
        'reference_date = "2020-06-02"  # ages are computed and worklist waits measured at this date',
        metadata={"tags": ["parameters"]}),
    new_code_cell(
        "from cds.explorer.app import build_explorer\n\n"
        "explorer = build_explorer(cohort, models=models, reader_id=reader_id, store_path=store_path,\n"
        "                          reader_study=reader_study, findings_json=findings_json,\n"
        "                          reference_date=reference_date)\n"
        "explorer"),
]
nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
for i, c in enumerate(nb.cells):
    c["id"] = f"cell-{i:02d}"
out = Path(__file__).resolve().parents[1] / "notebooks" / "case_explorer.ipynb"
nbformat.write(nb, str(out))
print(out)
