"""The vitals message: what the engine measures on each reconstructed window.

Published by the engine on ``p2es/v1/patients/{id}/vitals`` (QoS 1) once per window, written
to the InfluxDB ``vitals`` measurement (:mod:`p2es.contracts.influx`), read by the alert service
(its rules name these metrics) and shown by the dashboards.  This model is the one list of the
vitals fields: every producer builds it and every consumer parses with it.

JSON: ``{"patient", "t", <metric>: number | null, ...}``; ``null`` (or a missing key) = not
measurable in this window; a non-finite number is read as ``null``; unknown keys are ignored
(forward compatibility).  Numbers are written rounded to 6 decimals.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
)

from p2es.contracts.topics import PatientId, patient_from_vitals_topic
from p2es.contracts.validation import MAX_COMMAND_PAYLOAD, PayloadError, decode_json, first_error

__all__ = ["Vitals", "VITALS_METRICS", "MORPHOLOGY_METRICS", "UNITS", "parse_vitals"]

T_MIN, T_MAX = 946_684_800.0, 4_102_444_800.0  # 2000-01-01 .. 2100-01-01 (Unix seconds)


def _metric(unit: str, description: str, *, morphology: bool = False) -> Any:
    """A metric field; ``morphology``: it depends on fine ECG morphology, so alert rules on it
    are gated by the window's uncertainty and SQI."""
    return Field(None, description=description, json_schema_extra={"unit": unit, "morphology": morphology})


class Vitals(BaseModel):
    """One window's vitals."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    patient: PatientId
    t: float = Field(description="Unix seconds (device clock) of the window start")
    hr_bpm: float | None = _metric("bpm", "heart rate from the reconstructed lead II R peaks")
    hr_ppg_bpm: float | None = _metric("bpm", "pulse rate from the PPG's own pulse feet")
    qrs_ms: float | None = _metric("ms", "QRS duration of the reconstruction", morphology=True)
    qtc_ms: float | None = _metric("ms", "QT corrected (Fridericia) of the reconstruction", morphology=True)
    sqi: float | None = _metric("", "PPG signal-quality index 0-1 of the window")
    uncertainty: float | None = _metric("mV", "median per-sample std over the 12 leads")
    rr_irregularity: float | None = _metric("", "nRMSSD of the reconstructed lead II RR intervals")
    st_septal_mv: float | None = _metric("mV", "signed ST deviation, septal leads (V1-V2)", morphology=True)
    st_anterior_mv: float | None = _metric(
        "mV", "signed ST deviation, anterior leads (V3-V4)", morphology=True
    )
    st_lateral_mv: float | None = _metric(
        "mV", "signed ST deviation, lateral leads (I, aVL, V5-V6)", morphology=True
    )
    st_inferior_mv: float | None = _metric(
        "mV", "signed ST deviation, inferior leads (II, III, aVF)", morphology=True
    )

    @field_validator("t")
    @classmethod
    def _t(cls, v: float) -> float:
        if not (T_MIN <= v < T_MAX):
            raise ValueError("t must be Unix seconds between 2000 and 2100")
        return v

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    @field_serializer("*", when_used="json")
    def _round(self, v: Any, info: FieldSerializationInfo) -> Any:
        return round(v, 6) if isinstance(v, float) and info.field_name != "t" else v

    def value(self, metric: str) -> float | None:
        v = getattr(self, metric)
        return None if v is None else float(v)

    def metrics(self) -> dict[str, float | None]:
        """Metric name -> value (None = not measurable), in :data:`VITALS_METRICS` order."""
        return {k: getattr(self, k) for k in VITALS_METRICS}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))


def _extra(name: str) -> dict[str, Any]:
    """The ``json_schema_extra`` dict :func:`_metric` gave field ``name`` ({} for none)."""
    extra = Vitals.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


#: the metric fields, in order (everything but ``patient`` and ``t``)
VITALS_METRICS: tuple[str, ...] = tuple(k for k in Vitals.model_fields if k not in ("patient", "t"))
#: unit of each metric ("" = dimensionless)
UNITS: dict[str, str] = {k: str(_extra(k).get("unit", "")) for k in VITALS_METRICS}


#: metrics that depend on fine ECG morphology (alert rules on them are uncertainty/SQI-gated)
MORPHOLOGY_METRICS: frozenset[str] = frozenset(k for k in VITALS_METRICS if _extra(k).get("morphology"))


def parse_vitals(topic: str, payload: bytes) -> Vitals | str:
    """A valid :class:`Vitals`, or the reason (``"code: detail"``) it is not one."""
    pid = patient_from_vitals_topic(topic)
    try:
        data = decode_json(payload, MAX_COMMAND_PAYLOAD)
        if not isinstance(data, dict):
            raise PayloadError("invalid_vitals", "payload must be a JSON object")
        v = Vitals.model_validate(data)
    except PayloadError as e:
        return str(e)
    except ValidationError as e:
        return f"invalid_vitals: {first_error(e)}"
    if pid is not None and v.patient != pid:
        return f"invalid_vitals: patient {v.patient!r} does not match the topic's {pid!r}"
    return v
