"""Sources: read FHIR (files, bulk ndjson, servers), validate as R4, build the cohort's tables."""
