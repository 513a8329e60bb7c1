"""Shared helpers of the JSON parsers in :mod:`p2es.contracts` (reason codes, first error)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

__all__ = [
    "MAX_COMMAND_PAYLOAD",
    "VITALS_REASON_CODES",
    "COMMAND_REASON_CODES",
    "PayloadError",
    "decode_json",
    "first_error",
]

#: vitals and operator commands are small; anything larger is rejected unread
MAX_COMMAND_PAYLOAD = 64 * 1024

#: Stable reason codes of rejected vitals (``parse_vitals``; the alert service dead-letters them).
VITALS_REASON_CODES = (
    "oversized",  # payload > 64 KiB
    "bad_json",  # not UTF-8, or not parseable JSON
    "invalid_vitals",  # not an object, schema/range violation, patient differs from the topic
)
#: Stable reason codes of rejected operator commands on ``p2es/v1/alerts/ack``.
COMMAND_REASON_CODES = (
    "oversized",  # payload > 64 KiB
    "bad_json",  # not UTF-8, or not parseable JSON
    "invalid_ack",  # not an object, unknown action or key, schema violation (``parse_command``)
    "unknown_rule",  # names a rule the running rules file does not have (the alert service)
    "unknown_silence",  # unsilence of an id that is not an active silence (the alert service)
)


class PayloadError(Exception):
    """A payload rejected before validation: ``code`` is a stable reason code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def decode_json(payload: bytes, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"payload of {len(payload)} bytes > {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("bad_json", "payload is not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        # ValueError, not only JSONDecodeError: an integer of more than 4,300 digits raises a
        # plain ValueError (Python's int-conversion limit); found by tests/test_parsers_property.py
        raise PayloadError("bad_json", str(e)[:200]) from None


def first_error(e: ValidationError, skip: int = 0) -> str:
    """``"loc: message"`` of the first pydantic error (``skip`` leading loc parts)."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in tuple(err.get("loc", ()))[skip:])
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
