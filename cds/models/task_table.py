"""The table of reference tasks: task name -> task object, built from real imports.

``ModelRegistry.run``, ``cds train`` and ``cds evaluate`` look a model card's ``cds.task`` up here
(generic kinds are in :data:`cds.models.generic.KINDS`), so go-to-definition follows
``registry.run -> TASKS[name].predict`` into the task's module.

>>> TASKS["ct-lung-nodule"].predict.__qualname__
'LungNoduleTask.predict'
>>> tuple(TASKS) == TASK_NAMES
True
"""

from __future__ import annotations

from types import ModuleType

from cds.models.task import TrainableTask
from cds.models.tasks import (
    TASK_NAMES,
    cmr_function,
    ct_lung_nodule,
    ct_nodule_characterisation,
    cxr_cardiomegaly,
    cxr_icu,
    mammo_abnormality,
    mammo_density,
    pneumonia,
)

__all__ = ["TASKS", "TASK_MODULES", "TASK_NAMES", "task"]

_MODULES: tuple[ModuleType, ...] = (pneumonia, cxr_cardiomegaly, cxr_icu, ct_lung_nodule, mammo_density,
                                    mammo_abnormality, cmr_function, ct_nodule_characterisation)

TASKS: dict[str, TrainableTask] = {m.TASK.name: m.TASK for m in _MODULES}
"""Reference task name -> its task object."""

TASK_MODULES: dict[str, ModuleType] = {m.TASK.name: m for m in _MODULES}
"""Reference task name -> its module (for callers that use a task's other functions, e.g. the model lab)."""


def task(name: str) -> TrainableTask:
    """The reference task called ``name``; an unknown name raises ParameterError listing the known ones.

    >>> task("nope")
    Traceback (most recent call last):
    ...
    cds.errors.ParameterError: task: unknown task 'nope'; choose one of: pneumonia, cxr-cardiomegaly, cxr-icu, ct-lung-nodule, mammo-density, mammo-abnormality, cmr-function, ct-nodule-characterisation
    """
    from cds.errors import ParameterError

    if name not in TASKS:
        raise ParameterError("task", f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
