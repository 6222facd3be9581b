"""Models: MONAI bundle folders (:mod:`cds.models.bundle`) run by one task protocol (:mod:`cds.models.task`).

- :mod:`cds.models.registry`: which models are available (built-in ``cds/models/bundles/``, yours in
  ``$CDS_MODELS_DIR``) and running one on a cohort or on one image (:meth:`ModelRegistry.run_image`).
- :mod:`cds.models.task_table`: the reference tasks (one module each under :mod:`cds.models.tasks`,
  each with its ``TASK`` object: ``predict``, ``train``, ``evaluate``).
- :mod:`cds.models.generic`: generic kinds for your own bundles; :mod:`cds.models.zoo`: MONAI Model Zoo bundles.
- :mod:`cds.models.card`: the typed model card; :mod:`cds.models.ehr_inputs`: EHR values a card declares.

Nothing heavy is imported here (torch and MONAI load inside the functions that need them).

>>> from cds.models.bundle import load_bundle
>>> load_bundle(BUNDLES_DIR / "pneumonia").model_card.outputs[0].display
'Pneumonia'
"""

from __future__ import annotations

__all__ = ["BUNDLES_DIR"]

from cds.locations import BUNDLES_DIR  # noqa: E402

"""Folder holding the shipped bundle folders (``cds/models/bundles/<model-id>/``)."""
