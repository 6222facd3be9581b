"""The reference tasks and the module implementing each (``train``, ``evaluate``, ``predict``,
``to_findings``). Standard library only, so the CLI can list them without heavy imports.

>>> TASK_MODULES["pneumonia"]
'cds.models.tasks.pneumonia'
"""

TASK_MODULES: dict[str, str] = {
    "pneumonia": "cds.models.tasks.pneumonia",
    "cxr-cardiomegaly": "cds.models.tasks.cxr_cardiomegaly",
    "cxr-icu": "cds.models.tasks.cxr_icu",
    "ct-lung-nodule": "cds.models.tasks.ct_lung_nodule",
    "mammo-density": "cds.models.tasks.mammo_density",
    "mammo-abnormality": "cds.models.tasks.mammo_abnormality",
    "cmr-function": "cds.models.tasks.cmr_function",
}
