"""Reports: papermill-run notebooks, the cohort overview and the scheduled cohort report."""
