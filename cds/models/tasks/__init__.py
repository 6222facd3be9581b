"""The reference tasks, one module each (``train``, ``evaluate``, ``predict``, ``to_findings`` and the
task object ``TASK``), plus the helpers they share (``common2d``, ``lung_ct``, ``mammo``, ``phantom``).

:data:`TASK_NAMES` is the standard-library-only list of their names, so ``cds --help`` can name them
without importing numpy or torch; :data:`cds.models.task_table.TASKS` maps the same names to the task
objects (a test checks the two agree).
"""

TASK_NAMES: tuple[str, ...] = ("pneumonia", "cxr-cardiomegaly", "cxr-icu", "ct-lung-nodule", "mammo-density",
                               "mammo-abnormality", "cmr-function", "ct-nodule-characterisation")
