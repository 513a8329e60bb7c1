"""Every MQTT topic of p2es, built in one place (``{prefix}`` = ``p2es/v1``).

=====================================================  =========  ============================
topic                                                  direction  payload (p2es.contracts.*)
=====================================================  =========  ============================
``{prefix}/patients/{id}/ppg``                         in         ``ppg.PpgChunk`` (JSON)
``{prefix}/patients/{id}/ppg/bin``                     in         ``ppg.PpgChunk`` (binary)
``{prefix}/patients/{id}/profile``  (retained)         in         ``ppg.Profile``
``{prefix}/patients/{id}/vitals``                      engine     ``vitals.Vitals``
``{prefix}/patients/{id}/alerts``                      alerts     ``alerts.AlertMessage``
``{prefix}/alerts/ack``                                in         ``alerts.Command``
``{prefix}/deadletter``                                out        ``ppg.DeadLetter``
=====================================================  =========  ============================

A patient id matches ``[A-Za-z0-9_.-]{1,64}`` (:data:`PATIENT_ID_RE`, :data:`PatientId`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = [
    "TOPIC_PREFIX",
    "DEADLETTER_TOPIC",
    "ACK_TOPIC",
    "PATIENT_ID_RE",
    "PATIENT_ID_PATTERN",
    "PatientId",
    "INPUT_KINDS",
    "OUTPUT_SUBTOPICS",
    "ppg_topic",
    "profile_topic",
    "vitals_topic",
    "alerts_topic",
    "ack_topic",
    "deadletter_topic",
    "subscription_topic",
    "vitals_subscription",
    "alerts_subscription",
    "match_input_topic",
    "is_output_topic",
    "patient_from_vitals_topic",
    "nats_subject",
    "patient_from_nats_token",
    "nats_patient_inputs",
]

TOPIC_PREFIX = "p2es/v1"
PATIENT_ID_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
PATIENT_ID_RE = re.compile(PATIENT_ID_PATTERN)

#: the sub-topics a wearable publishes under ``patients/{id}/``
INPUT_KINDS: tuple[str, ...] = ("ppg", "ppg/bin", "profile")
#: sub-topics p2es itself publishes under ``patients/{id}/`` (vitals from the engine, alert
#: transitions from alerts/): the ingest sees them through its wildcard and skips them.
OUTPUT_SUBTOPICS: tuple[str, ...] = ("vitals", "alerts")


def _patient_id(v: str) -> str:
    if not PATIENT_ID_RE.fullmatch(v):
        raise ValueError("patient must match [A-Za-z0-9_.-]{1,64}")
    return v


#: a patient id as a pydantic type (fullmatch: a trailing newline is rejected too)
PatientId = Annotated[str, AfterValidator(_patient_id)]


def ppg_topic(patient_id: str, *, binary: bool = False, prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/patients/{patient_id}/ppg" + ("/bin" if binary else "")


def profile_topic(patient_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/patients/{patient_id}/profile"


def vitals_topic(patient_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where the engine publishes a patient's per-window vitals."""
    return f"{prefix}/patients/{patient_id}/vitals"


def alerts_topic(patient_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where the alert service publishes a patient's alert events."""
    return f"{prefix}/patients/{patient_id}/alerts"


def ack_topic(prefix: str = TOPIC_PREFIX) -> str:
    """Where operators send ack / silence / unsilence commands."""
    return f"{prefix}/alerts/ack"


def deadletter_topic(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/deadletter"


ACK_TOPIC = ack_topic()
DEADLETTER_TOPIC = deadletter_topic()


def subscription_topic(prefix: str = TOPIC_PREFIX) -> str:
    """What the ingest subscribes to: everything under ``patients/`` (a superset of the input
    topics, so that unknown sub-topics can be dead-lettered instead of ignored)."""
    return f"{prefix}/patients/#"


def vitals_subscription(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/patients/+/vitals"


def alerts_subscription(prefix: str = TOPIC_PREFIX) -> str:
    return f"{prefix}/patients/+/alerts"


_INPUT_RE = re.compile(r"^(?P<prefix>.+)/patients/(?P<pid>[^/]*)/(?P<kind>ppg|ppg/bin|profile)$")
_OUTPUT_RE = re.compile(r"^(?P<prefix>.+)/patients/[^/]*/(?:" + "|".join(OUTPUT_SUBTOPICS) + r")$")
_VITALS_RE = re.compile(r"^(?P<prefix>.+)/patients/(?P<pid>[^/]+)/vitals$")


def match_input_topic(topic: str, prefix: str = TOPIC_PREFIX) -> tuple[str, str] | None:
    """``(patient id as written, kind)`` of a wearable input topic, or None.  The id is not
    checked here (the parser dead-letters a bad one with its own reason)."""
    m = _INPUT_RE.match(topic)
    if m is None or m["prefix"] != prefix:
        return None
    return m["pid"], m["kind"]


def is_output_topic(topic: str, prefix: str = TOPIC_PREFIX) -> bool:
    """True for p2es's own output topics (``patients/{id}/vitals``, ``patients/{id}/alerts``)."""
    m = _OUTPUT_RE.match(str(topic))
    return m is not None and m["prefix"] == prefix


def patient_from_vitals_topic(topic: str) -> str | None:
    m = _VITALS_RE.match(topic)
    return m["pid"] if m else None


# ------------------------------------------------------------------------------ NATS
# NATS's MQTT listener maps an MQTT topic to a NATS subject: ``/`` -> ``.``, a ``.`` inside a
# level -> ``//``; filters: ``+`` -> ``*``, ``#`` -> ``>``.  The scale-out mode (p2es run --bus)
# reads the wearables' MQTT publishes under these subjects (docs/scaling.md).


def nats_subject(topic: str) -> str:
    """The NATS subject of an MQTT topic (or filter) of p2es (no empty levels)."""
    return ".".join({"+": "*", "#": ">"}.get(level, level.replace(".", "//")) for level in topic.split("/"))


def patient_from_nats_token(token: str) -> str:
    """A patient id from its NATS subject token (``//`` stands for a ``.`` of the id)."""
    return token.replace("//", ".")


def nats_patient_inputs(prefix: str = TOPIC_PREFIX) -> str:
    """Every subject under one patient on NATS: ``p2es.v1.patients.*.>``."""
    return nats_subject(f"{prefix}/patients/+/#")
