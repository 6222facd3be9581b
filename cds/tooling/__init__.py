"""Build-time tools (the sample cohort generator); never imported at run time."""
