"""The reference tasks and the module implementing each (``train``, ``evaluate``, ``predict``,
``to_findings``). Standard library only, so the CLI can list them without heavy imports.

>>> TASK_MODULES["pneumonia"]
'cds.models.pneumonia'
"""

TASK_MODULES: dict[str, str] = {
    "pneumonia": "cds.models.pneumonia",
    "cxr-cardiomegaly": "cds.models.cxr_cardiomegaly",
    "cxr-icu": "cds.models.cxr_icu",
    "ct-lung-nodule": "cds.models.ct_lung_nodule",
    "mammo-density": "cds.models.mammo_density",
    "mammo-abnormality": "cds.models.mammo_abnormality",
    "cmr-function": "cds.models.cmr_function",
}
