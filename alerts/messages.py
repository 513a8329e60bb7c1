"""The MQTT boundary of the alert service: what it reads and what it publishes.

Topics (QoS 1, ``{prefix}`` = ``p2es/v1``):

* in  ``p2es/v1/patients/{patient_id}/vitals`` -- :class:`VitalsMessage`, published by the engine
  once per reconstructed window.  Numbers or ``null`` (= not measurable in this window); unknown
  keys are ignored.  Invalid messages are counted, logged and dead-lettered
  (``invalid_vitals``), never fatal.
* in  ``p2es/v1/alerts/ack`` -- :data:`Command`: ``ack``, ``silence`` or ``unsilence`` (below).
  Invalid commands are dead-lettered on ``p2es/v1/deadletter`` with a reason
  (``bad_json``, ``invalid_ack``, ``unknown_rule``, ``unknown_silence``).
* out ``p2es/v1/patients/{patient_id}/alerts`` -- :class:`AlertMessage`, one per alert event
  (``firing``, ``repeat``, ``resolved``, ``acknowledged``); not retained.

Commands on ``p2es/v1/alerts/ack`` (JSON, unknown keys rejected)::

    {"action": "ack", "patient": "bed-7", "rule": "hr_high", "by": "nurse-3", "comment": "seen"}
    {"action": "silence", "id": "s-1a2b3c4d", "patient": "bed-7", "rule": null,
     "ends_at": 1718003600.0, "by": "nurse-3", "comment": "transport to CT"}
    {"action": "silence", "patient": "bed-7", "duration_s": 1800}      # ends_at = arrival + 1800 s
    {"action": "unsilence", "id": "s-1a2b3c4d"}

A silence needs at least one matcher (``patient`` and/or ``rule``) and exactly one of
``ends_at`` (Unix seconds) or ``duration_s``; ``id`` is chosen by the sender (the CLI prints it)
or generated.  An ack names one alert (patient + rule) and lasts until that alert resolves.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from alerts.rules import VITALS_METRICS
from ingest.messages import PATIENT_ID_RE, TOPIC_PREFIX, alerts_topic, vitals_topic

__all__ = [
    "TOPIC_PREFIX",
    "ACK_TOPIC",
    "DEADLETTER_TOPIC",
    "VITALS_SUBSCRIPTION",
    "PATIENT_ID_RE",
    "VitalsMessage",
    "AckCommand",
    "SilenceCommand",
    "UnsilenceCommand",
    "Command",
    "AlertMessage",
    "parse_vitals",
    "parse_command",
    "vitals_topic",
    "alerts_topic",
    "patient_from_topic",
]

ACK_TOPIC = f"{TOPIC_PREFIX}/alerts/ack"
DEADLETTER_TOPIC = f"{TOPIC_PREFIX}/deadletter"
VITALS_SUBSCRIPTION = f"{TOPIC_PREFIX}/patients/+/vitals"
MAX_PAYLOAD = 64 * 1024
_VITALS_TOPIC_RE = re.compile(r"^(?P<prefix>.+)/patients/(?P<pid>[^/]+)/vitals$")

Number = float | None


def _patient_id(v: str) -> str:
    if not PATIENT_ID_RE.fullmatch(v):
        raise ValueError("patient must match [A-Za-z0-9_.-]{1,64}")
    return v


PatientId = Annotated[str, AfterValidator(_patient_id)]  # the ingest contract's patient id


def patient_from_topic(topic: str) -> str | None:
    m = _VITALS_TOPIC_RE.match(topic)
    return m["pid"] if m else None


class VitalsMessage(BaseModel):
    """One window's vitals (the engine's ``vitals_json``)."""

    model_config = ConfigDict(extra="ignore")

    patient: PatientId
    t: float  # Unix seconds of the window start (device clock)
    hr_bpm: Number = None
    hr_ppg_bpm: Number = None
    qrs_ms: Number = None
    qtc_ms: Number = None
    sqi: Number = None
    uncertainty: Number = None
    rr_irregularity: Number = None
    st_septal_mv: Number = None
    st_anterior_mv: Number = None
    st_lateral_mv: Number = None
    st_inferior_mv: Number = None

    @field_validator("t")
    @classmethod
    def _t(cls, v: float) -> float:
        if not (946684800.0 <= v < 4102444800.0):
            raise ValueError("t must be Unix seconds between 2000 and 2100")
        return v

    @field_validator(*VITALS_METRICS)
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(None, max_length=128)
    comment: str | None = Field(None, max_length=1000)


class AckCommand(_Cmd):
    action: Literal["ack"]
    patient: PatientId
    rule: str


class SilenceCommand(_Cmd):
    action: Literal["silence"]
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    patient: PatientId | None = None
    rule: str | None = None
    ends_at: float | None = None
    duration_s: float | None = Field(None, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _check(self) -> SilenceCommand:
        if self.patient is None and self.rule is None:
            raise ValueError("a silence needs a patient and/or a rule matcher")
        if (self.ends_at is None) == (self.duration_s is None):
            raise ValueError("give exactly one of ends_at (Unix seconds) or duration_s")
        if self.ends_at is not None and not math.isfinite(self.ends_at):
            raise ValueError("ends_at must be finite")
        return self


class UnsilenceCommand(_Cmd):
    action: Literal["unsilence"]
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")


Command = Annotated[AckCommand | SilenceCommand | UnsilenceCommand, Field(discriminator="action")]
_COMMAND = TypeAdapter(Command)


class AlertMessage(BaseModel):
    """What is published on ``p2es/v1/patients/{id}/alerts`` for every alert event."""

    patient: str
    rule: str
    priority: Literal["high", "medium", "low"]
    state: Literal["firing", "repeat", "resolved", "acknowledged"]
    t: float  # Unix seconds of the event (device clock for vitals rules, wall clock for no_data/acks)
    metric: str
    op: str
    threshold: float
    value: float | None
    message: str
    starts_at: float  # when the alert started firing
    ends_at: float | None  # when it resolved (resolved events only)
    fingerprint: str
    labels: dict[str, str]
    # uncertainty, max_uncertainty_mv, sqi, min_sqi [, hr_bpm, max_hr_bpm]
    # [, hr_ecg_bpm, hr_ppg_bpm, rate_agreement] -- what the rule's gate checked
    gate: dict[str, float | None] | None = None
    silenced_by: str | None = None  # id of the silence that suppressed the webhook, if any
    acknowledged_by: str | None = None


def _first_error(e: ValidationError, skip: int = 0) -> str:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in tuple(err.get("loc", ()))[skip:])
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _decode(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise _Bad("oversized", f"payload of {len(payload)} bytes > {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("bad_json", "payload is not UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Bad("bad_json", str(e)) from None


class _Bad(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def parse_vitals(topic: str, payload: bytes) -> VitalsMessage | str:
    """A valid :class:`VitalsMessage`, or the reason (``"code: detail"``) it is not one."""
    pid = patient_from_topic(topic)
    try:
        data = _decode(payload)
        if not isinstance(data, dict):
            raise _Bad("invalid_vitals", "payload must be a JSON object")
        v = VitalsMessage.model_validate(data)
    except _Bad as e:
        return str(e)
    except ValidationError as e:
        return f"invalid_vitals: {_first_error(e)}"
    if pid is not None and v.patient != pid:
        return f"invalid_vitals: patient {v.patient!r} does not match the topic's {pid!r}"
    return v


def parse_command(payload: bytes) -> AckCommand | SilenceCommand | UnsilenceCommand | str:
    """A valid command, or the reason (``"code: detail"``) it is not one."""
    try:
        data = _decode(payload)
        if not isinstance(data, dict):
            raise _Bad("invalid_ack", "payload must be a JSON object")
        return _COMMAND.validate_python(data)
    except _Bad as e:
        return str(e)
    except ValidationError as e:
        return f"invalid_ack: {_first_error(e, skip=1)}"


def now() -> float:
    return time.time()
