"""Result-cache keys of cohort studies: what a model's answer for one imaging series depends on.

A key (:class:`cds.inference.cache.CacheKey`) names the study and series, the model id and version,
and ``inputs``: a hash of the bytes of the series' pixel files, the EHR inputs the card takes, the
record facts the safety checks read (patient, UIDs, modality, view, body site, age, accepted DICOM
PatientIDs) and the cds version (its checks decide when a model may answer). So a changed image,
EHR value, record or model version gives a new key and is computed again; anything else is reused.

A DICOMweb series is keyed by its URL and the record's instance UIDs (its bytes are not fetched
to make the key: a PACS does not change a stored instance under the same UID).

>>> pixel_files("/no/such/file.dcm")
[]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pixel_files", "study_keys"]

#: Files of a folder location hashed at most (a larger folder is keyed by names, sizes and mtimes).
MAX_HASHED_FILES = 4000


def pixel_files(location: str) -> list[Path]:
    """The files a pixel location names: the file itself, or every file under a folder (sorted)."""
    p = Path(location)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file())
    return []


def _pixels_digest(location: str, instance_uids: tuple[str, ...]) -> str:
    from cds.inference.cache import content_hash, file_fingerprint, input_hash

    if location.startswith(("http://", "https://")):
        return input_hash(None, {"url": location, "instances": list(instance_uids)})
    files = pixel_files(location)
    if not files:
        return input_hash(None, {"missing": location})
    if len(files) > MAX_HASHED_FILES:
        return file_fingerprint(files)
    return content_hash(files)


def study_keys(registry: Any, model_id: str, cohort: Any, rows: list[Any]) -> list[Any]:
    """One :class:`~cds.inference.cache.CacheKey` per ``cohort.imaging`` row (None where the row cannot
    be keyed, e.g. it names no pixels: such a study is always run, and fails as it should)."""
    import cds
    from cds.inference.cache import CacheKey, input_hash
    from cds.models.ehr_inputs import ehr_inputs_for
    from cds.models.registry import _age_at, _birth_dates, _cohort_root, _dicom_ids
    from cds.models.vouch import facts_for, read_id_map

    b = registry.get(model_id)
    id_map = read_id_map(_cohort_root(cohort))
    births = _birth_dates(cohort)
    dicom_ids = _dicom_ids(cohort)
    keys: list[Any] = []
    for r in rows:
        loc = r.pixel_location
        if not isinstance(loc, str) or not loc:
            keys.append(None)
            continue
        try:
            facts = facts_for(r, id_map, _age_at(births, r), dicom_ids.get(str(r.patient_id), ()))
            ehr = ehr_inputs_for(b.model_card, cohort, r.patient_id, r.started)
        except Exception:  # noqa: BLE001 - the run reports the error for this study
            keys.append(None)
            continue
        digest = input_hash(None, dict(ehr), {
            "pixels": _pixels_digest(loc, facts.instance_uids), "facts": _facts_dict(facts),
            "observations": dict(getattr(ehr, "observation_ids", {}) or {}), "cds": cds.__version__,
            "row": {k: str(getattr(r, k, None)) for k in ("imaging_study_id", "started", "body_site")}})
        keys.append(CacheKey(str(r.study_uid), str(r.series_uid or ""), model_id, str(b.version), digest))
    return keys


def _facts_dict(facts: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(facts).items()}
