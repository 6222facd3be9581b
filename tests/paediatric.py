"""A small paediatric test cohort: the population the ``pneumonia`` demo model is meant for.

The sample cohort's radiographs are adults' (Hannover, ages redacted), so the paediatric demo model
rightly gives them no answer. Tests that need the model to answer (GradCAM artifacts, the explorer's
heat-map overlays, ``cds run``) use this cohort instead: real PneumoniaMNIST validation images
(``sample_data/pneumoniamnist``, paediatric chest X-rays of children aged 1-5, CC BY 4.0) as PNG files,
each filed in FHIR R4 under a test Patient whose birth date makes the child 3 years old at the study.
The FHIR records are test fixtures written here, not data from any source.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from cds.codes import DCM, INSTANCE_LOCATION_URL, SNOMED, VIEW_POSITION_URL
from cds.locations import sample_data_file

__all__ = ["write_paediatric_cohort"]


def write_paediatric_cohort(root: Path, n: int = 4) -> Path:
    """Write ``n`` children (one AP radiograph each) under ``root``; returns ``root``."""
    data = np.load(sample_data_file("pneumoniamnist"))
    images = data["val_images"][:n]
    (root / "png").mkdir(parents=True, exist_ok=True)
    (root / "fhir").mkdir(exist_ok=True)
    for i, pixels in enumerate(images):
        pid = f"child-{i + 1}"
        png = root / "png" / f"{pid}.png"
        PILImage.fromarray(np.asarray(pixels, dtype=np.uint8)).save(png)
        study_uid = f"2.25.{1000 + i}"
        patient = {"resourceType": "Patient", "id": pid, "gender": "female" if i % 2 else "male",
                   "birthDate": "2017-03-01"}
        study = {
            "resourceType": "ImagingStudy", "id": f"{pid}-cxr", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "subject": {"reference": f"Patient/{pid}"}, "started": "2020-03-02",
            "modality": [{"system": DCM, "code": "CR"}],
            "series": [{
                "uid": f"{study_uid}.1", "number": 1, "modality": {"system": DCM, "code": "CR"},
                "bodySite": {"system": SNOMED, "code": "51185008", "display": "Thoracic structure"},
                "extension": [{"url": VIEW_POSITION_URL, "valueCode": "AP"}],
                "instance": [{"uid": f"{study_uid}.1.1",
                              "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.7"},
                              "extension": [{"url": INSTANCE_LOCATION_URL, "valueUrl": f"../png/{pid}.png"}]}],
            }],
        }
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"fullUrl": f"urn:uuid:{pid}", "resource": patient},
                            {"fullUrl": f"urn:uuid:{pid}-cxr", "resource": study}]}
        (root / "fhir" / f"{pid}.json").write_text(json.dumps(bundle, indent=1), encoding="utf-8")
    return root
