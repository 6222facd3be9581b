"""Reference models of cds, one module per task, each shipping a MONAI bundle under ``cds/models/bundles/``.

Every task module exposes the same functions, so the CLI can wire ``cds train TASK`` and
``cds evaluate TASK``:

- ``TASK``: the task name (``"pneumonia"``, ``"cxr-cardiomegaly"``, ``"cxr-icu"``, ...)
- ``train(data_dir, out_dir, seed=0, epochs=..., quick=False) -> Path``: write the bundle folder,
  its model card included, and fill the card's performance section by running ``evaluate``.
- ``evaluate(data_dir, bundle_dir=None, n_boot=2000, ...) -> dict``: metrics with 95 % bootstrap CIs.
- ``predict(bundle, image_array, ehr) -> dict`` for one case and ``to_findings(...)`` to turn the
  prediction into :class:`cds.finding.Finding` records.

Nothing heavy is imported here (torch and MONAI load inside the functions that need them).

>>> BUNDLES_DIR.name
'bundles'
"""

from __future__ import annotations

__all__ = ["BUNDLES_DIR"]

from cds.locations import BUNDLES_DIR  # noqa: E402

"""Folder holding the shipped bundle folders (``cds/models/bundles/<model-id>/``)."""
