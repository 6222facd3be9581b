"""Cohort-scale inference: streaming decode ahead of batched models (:mod:`cds.inference.stream`), the
result cache (:mod:`cds.inference.cache`) and Dask clusters (:mod:`cds.inference.distributed`)."""
