"""The typed model card: the ``cds`` section of a bundle's ``configs/metadata.json``, parsed once.

:class:`ModelCard` is what code reads (``bundle.model_card.threshold``) instead of digging in the raw
dict; a malformed card fails here, once, with a :class:`cds.models.bundle.BundleError` naming the file
and the key. The keys are documented in :mod:`cds.models.bundle`.

>>> card = ModelCard.from_dict({"model_id": "toy", "task": "toy", "modality": "CR", "threshold": 0.5,
...                             "indeterminate": [0.4, 0.6],
...                             "outputs": [{"code_system": "http://snomed.info/sct", "code": "8186001",
...                                          "display": "Cardiomegaly"}]})
>>> card.modality, card.indeterminate, card.outputs[0].display, card.outputs[0].channel
(('CR',), (0.4, 0.6), 'Cardiomegaly', 0)
>>> ModelCard.from_dict({"threshold": "high"}, where="x/metadata.json")
Traceback (most recent call last):
...
cds.models.bundle.BundleError: x/metadata.json: cds.threshold: expected a number, got 'high'

Keys some cards carry (a derived, calibrated model; a prognostic one; the cards' published context):

>>> c = ModelCard.from_dict({"name": "Toy", "version": "1.0", "calibrated": True, "horizon_days": 30,
...                          "model_card_url": "https://example.org/card", "context": ["Bhave 2024"],
...                          "hyperparameters": {"C_grid": [0.1, 1.0]}, "calibration": {"method": "temperature"},
...                          "derived_from": {"model_id": "pneumonia", "version": "1.0.0"}})
>>> c.name, c.version, c.calibrated, c.horizon_days, c.model_card_url, c.context, c.hyperparameters["C_grid"]
('Toy', '1.0', True, 30.0, 'https://example.org/card', ('Bhave 2024',), [0.1, 1.0])
>>> c.calibration["method"], c.derived_from["model_id"]
('temperature', 'pneumonia')
>>> ModelCard.from_dict({}).calibrated is None, ModelCard.from_dict({}).horizon
(True, None)
>>> ModelCard.from_dict({"calibrated": "yes"})
Traceback (most recent call last):
...
cds.models.bundle.BundleError: configs/metadata.json: cds.calibrated: expected true or false, got 'yes'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCard", "OutputSpec", "IntendedFor"]


def _error(where: str, key: str, reason: str) -> Exception:
    from cds.models.bundle import BundleError

    return BundleError(f"{where}: cds.{key}: {reason}")


def _number(d: dict[str, Any], key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _error(where, key, f"expected a number, got {v!r}")
    return float(v)


def _band(d: dict[str, Any], where: str) -> tuple[float, float] | None:
    v = d.get("indeterminate")
    if v is None:
        return None
    if (not isinstance(v, list | tuple) or len(v) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v) or v[0] > v[1]):
        raise _error(where, "indeterminate", f"expected [low, high] with low <= high, got {v!r}")
    return float(v[0]), float(v[1])


def _mapping(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _error(where, key, f"expected an object, got {v!r}")
    return dict(v)


def _texts(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    return (str(v),) if isinstance(v, str) else tuple(str(x) for x in v)


@dataclass(frozen=True)
class OutputSpec:
    """One coded output of a model: the concept a Finding carries, and the network channel it reads."""

    code_system: str
    code: str
    display: str
    kind: str = "probability"
    channel: int = 0
    unit: str | None = None

    @classmethod
    def from_dict(cls, d: Any, index: int, where: str) -> OutputSpec:
        """Parse ``outputs[index]``; ``channel`` defaults to ``index``; a unit word maps to UCUM (``percent`` -> ``%``).

        >>> OutputSpec.from_dict({"code_system": "s", "code": "c", "display": "EF", "unit": "percent"}, 0, "card").unit
        '%'
        """
        if not isinstance(d, dict):
            raise _error(where, f"outputs[{index}]", f"expected an object, got {d!r}")
        missing = [k for k in ("code_system", "code", "display") if not d.get(k)]
        if missing:
            raise _error(where, f"outputs[{index}]", f"missing {', '.join(missing)}")
        channel = d.get("channel", index)
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
            raise _error(where, f"outputs[{index}].channel", f"expected a channel index >= 0, got {channel!r}")
        unit = d.get("unit")
        if isinstance(unit, str):  # cards spell "%" as "percent": MONAI's config parser reads "%..." as a macro
            from cds.codes import UCUM_UNITS

            unit = UCUM_UNITS.get(unit.lower(), unit)
        return cls(str(d["code_system"]), str(d["code"]), str(d["display"]), str(d.get("kind", "probability")),
                   channel, unit)


@dataclass(frozen=True)
class IntendedFor:
    """The card's ``intended_for`` section: the population and inputs a model may answer for.

    ``age_years`` is ``[min, max]`` (either may be null: open-ended); ``age_unknown`` says what to do
    when a study's patient has no recorded age: ``"refuse"`` (the default: the model cannot vouch for
    the study) or ``"accept"`` (the card states why, in ``age_unknown_reason``). ``views`` are DICOM
    ViewPosition values (``AP``, ``PA``, ``MLO``...); ``body_parts`` lower-case words a study's DICOM
    BodyPartExamined or FHIR bodySite (text, display or code) must match; ``min_size_px`` the smallest
    accepted image side (in-plane for volumes), ``min_slices`` the fewest slices of a volume.
    ``input_profile`` is the out-of-distribution reference (:mod:`cds.models.vouch`): feature medians
    and MADs of the training images and the largest robust z-score accepted.

    >>> i = IntendedFor.from_dict({"age_years": [0, 17], "views": ["AP", "PA"], "min_size_px": 28})
    >>> i.age_years, i.age_unknown, i.views, i.min_size_px
    ((0.0, 17.0), 'refuse', ('AP', 'PA'), 28)
    >>> IntendedFor.from_dict({"age_years": [18]}, where="m.json")
    Traceback (most recent call last):
    ...
    cds.models.bundle.BundleError: m.json: cds.intended_for.age_years: expected [min, max] (null for open), got [18]
    """

    age_years: tuple[float | None, float | None] | None = None
    age_unknown: str = "refuse"
    age_unknown_reason: str | None = None
    views: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    min_size_px: int | None = None
    min_slices: int | None = None
    input_profile: dict[str, Any] = field(default_factory=dict)

    @property
    def declared(self) -> bool:
        """Whether the card declares anything to check beyond the modality."""
        return bool(self.age_years or self.views or self.body_parts or self.min_size_px or self.min_slices
                    or self.input_profile)

    @classmethod
    def from_dict(cls, d: Any, where: str = "configs/metadata.json") -> IntendedFor:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise _error(where, "intended_for", f"expected an object, got {d!r}")
        ages = d.get("age_years")
        if ages is not None:
            if (not isinstance(ages, list | tuple) or len(ages) != 2
                    or not all(a is None or (isinstance(a, int | float) and not isinstance(a, bool)) for a in ages)
                    or (ages[0] is not None and ages[1] is not None and ages[0] > ages[1])):
                raise _error(where, "intended_for.age_years", f"expected [min, max] (null for open), got {ages!r}")
            ages = tuple(None if a is None else float(a) for a in ages)
        unknown = d.get("age_unknown", "refuse")
        if unknown not in ("refuse", "accept"):
            raise _error(where, "intended_for.age_unknown", f"expected 'refuse' or 'accept', got {unknown!r}")
        ints = {}
        for key in ("min_size_px", "min_slices"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise _error(where, f"intended_for.{key}", f"expected a whole number >= 1, got {v!r}")
            ints[key] = v
        profile = d.get("input_profile") or {}
        if not isinstance(profile, dict):
            raise _error(where, "intended_for.input_profile", f"expected an object, got {profile!r}")
        return cls(age_years=ages, age_unknown=unknown, age_unknown_reason=d.get("age_unknown_reason"),
                   views=tuple(str(v).upper() for v in _texts(d.get("views"))),
                   body_parts=tuple(str(v).lower() for v in _texts(d.get("body_parts"))),
                   min_size_px=ints["min_size_px"], min_slices=ints["min_slices"], input_profile=dict(profile))


@dataclass(frozen=True)
class ModelCard:
    """The ``cds`` section of ``metadata.json`` (see :mod:`cds.models.bundle` for every key)."""

    model_id: str | None = None
    task: str | None = None
    kind: str | None = None
    modality: tuple[str, ...] = ()
    body_site: Any = None
    threshold: float | None = None
    indeterminate: tuple[float, float] | None = None
    outputs: tuple[OutputSpec, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    intended_use: str | None = None
    proxy_for: str | None = None
    limitations: tuple[str, ...] = ()
    prognostic: bool = False
    training_data: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)
    weights: str = "model.pt"
    activation: str | None = None
    max_detections: int = 20
    name: str | None = None
    version: str | None = None
    calibrated: bool | None = None
    horizon: dict[str, Any] | None = None
    horizon_days: float | None = None
    model_card_url: str | None = None
    context: tuple[str, ...] = ()
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    derived_from: dict[str, Any] = field(default_factory=dict)
    intended_for: IntendedFor = field(default_factory=IntendedFor)

    @property
    def ehr_inputs(self) -> list[dict[str, Any]]:
        """The declared EHR inputs (``inputs.ehr``): name, source, window_days, required, ..."""
        return list(self.inputs.get("ehr") or [])

    @property
    def headline_metric(self) -> tuple[str | None, dict[str, Any]]:
        """The first performance metric (name, {value, ci95, ...}), or (None, {})."""
        metrics = self.performance.get("metrics") or {}
        name = next(iter(metrics), None)
        return name, (metrics.get(name) or {}) if name else {}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "configs/metadata.json") -> ModelCard:
        """Parse a card section; an empty or missing one (a foreign bundle) gives an empty card."""
        d = dict(d or {})
        if not isinstance(d.get("inputs", {}), dict):
            raise _error(where, "inputs", f"expected an object, got {d['inputs']!r}")
        outputs = d.get("outputs") or []
        if not isinstance(outputs, list):
            raise _error(where, "outputs", f"expected a list, got {outputs!r}")
        act = d.get("activation")
        if act not in (None, "softmax", "sigmoid"):
            raise _error(where, "activation", f"expected 'softmax' or 'sigmoid', got {act!r}")
        max_det = d.get("max_detections", 20)
        if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
            raise _error(where, "max_detections", f"expected a whole number >= 1, got {max_det!r}")
        calibrated = d.get("calibrated")
        if calibrated is not None and not isinstance(calibrated, bool):
            raise _error(where, "calibrated", f"expected true or false, got {calibrated!r}")
        url = d.get("model_card_url")
        if url is not None and not isinstance(url, str):
            raise _error(where, "model_card_url", f"expected a text, got {url!r}")
        horizon = d.get("horizon")
        return cls(
            model_id=d.get("model_id"), task=d.get("task"), kind=d.get("kind"),
            modality=_texts(d.get("modality")), body_site=d.get("body_site"),
            threshold=_number(d, "threshold", where), indeterminate=_band(d, where),
            outputs=tuple(OutputSpec.from_dict(o, i, where) for i, o in enumerate(outputs)),
            inputs=dict(d.get("inputs") or {}), intended_use=d.get("intended_use"), proxy_for=d.get("proxy_for"),
            limitations=_texts(d.get("limitations")), prognostic=bool(d.get("prognostic", False)),
            training_data=dict(d.get("training_data") or {}), performance=dict(d.get("performance") or {}),
            weights=str(d.get("weights", "model.pt")), activation=act, max_detections=max_det,
            name=None if d.get("name") is None else str(d["name"]),
            version=None if d.get("version") is None else str(d["version"]),
            calibrated=calibrated, horizon=None if horizon is None else _mapping(d, "horizon", where),
            horizon_days=_number(d, "horizon_days", where), model_card_url=url,
            context=_texts(d.get("context")), hyperparameters=_mapping(d, "hyperparameters", where),
            calibration=_mapping(d, "calibration", where), derived_from=_mapping(d, "derived_from", where),
            intended_for=IntendedFor.from_dict(d.get("intended_for"), where),
        )
