"""The alert service's own messages: alert events and operator commands.

Topics (QoS 1, ``{prefix}`` = ``p2es/v1``):

* in  ``p2es/v1/patients/{patient_id}/vitals`` -- :class:`p2es.contracts.vitals.Vitals`, published
  by the engine once per reconstructed window; invalid ones are dead-lettered
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

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from p2es.contracts.topics import ACK_TOPIC, DEADLETTER_TOPIC, PatientId
from p2es.contracts.validation import MAX_COMMAND_PAYLOAD, PayloadError, decode_json, first_error

__all__ = [
    "ACK_TOPIC",
    "DEADLETTER_TOPIC",
    "AckCommand",
    "SilenceCommand",
    "UnsilenceCommand",
    "Command",
    "AlertMessage",
    "parse_command",
]


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


def parse_command(payload: bytes) -> AckCommand | SilenceCommand | UnsilenceCommand | str:
    """A valid command, or the reason (``"code: detail"``) it is not one."""
    try:
        data = decode_json(payload, MAX_COMMAND_PAYLOAD)
        if not isinstance(data, dict):
            raise PayloadError("invalid_ack", "payload must be a JSON object")
        return _COMMAND.validate_python(data)
    except PayloadError as e:
        return str(e)
    except ValidationError as e:
        return f"invalid_ack: {first_error(e, skip=1)}"
