"""The wearable boundary: PPG chunk (JSON, binary), profile, window and dead-letter models,
and a parser that never raises.  Topics: :mod:`p2es.contracts.topics`.

Public MQTT contract (MQTT v5, QoS 1), ``{prefix}`` = ``p2es/v1``:

``p2es/v1/patients/{patient_id}/ppg`` - one PPG chunk as UTF-8 JSON::

    {"seq": 17, "t0": 1718000000.0, "fs": 100.0, "samples": [0.12, 0.13, ...], "device": "w-42"}

    * ``seq``: int >= 0 (< 2**64), increments by one per chunk of a device stream.  Used for
      re-ordering and duplicate removal (see :mod:`ingest.stream`).
    * ``t0``: Unix seconds (device clock) of the first sample, 2000-01-01 <= t0 < 2100-01-01.
    * ``fs``: sampling rate in Hz, 25 <= fs <= 1000.
    * ``samples``: 1 .. min(floor(10 s x fs), 10 000) JSON numbers (ints or floats, not bools
      or strings); every sample must be finite with |x| <= 1e9.  ``NaN``/``Infinity``
      (which Python's JSON reader accepts) reject the whole chunk (reason ``non_finite``): a
      partial chunk would silently break the sample clock, and the gap logic handles a chunk
      that never arrives.
    * ``device``: optional string (<= 128 chars), copied into the windows.
    * Unknown keys are **ignored** (forward compatibility: a device may add e.g. ``battery``
      without being dead-lettered); misspelt required keys still fail as missing.

``p2es/v1/patients/{patient_id}/ppg/bin`` - the same chunk, compact binary (see
:func:`decode_binary_chunk` for the exact layout; :func:`encode_binary_chunk` writes it).

``p2es/v1/patients/{patient_id}/profile`` - retained JSON demographics, all keys optional::

    {"age": 63, "sex": "F", "height_cm": 162.0, "weight_kg": 70.5}

    age 0-120 years, sex "F" | "M" | null, height 50-250 cm, weight 2-400 kg; missing or null =
    unknown.  Unknown keys are ignored.  An **empty** payload (how MQTT clears a retained
    message) clears the profile.  It may arrive before, after, or never.

``p2es/v1/deadletter`` - what the ingest service publishes (QoS 1, not retained) for every
message it cannot use: ``{"topic", "reason", "received_at", "payload_excerpt"}``.  ``reason``
is ``"<code>: <detail>"`` with a stable code (:data:`DEADLETTER_CODES`); ``payload_excerpt``
is the first 200 characters of the payload as text, or ``"base64:"`` + the first 96 bytes
when it is not UTF-8.

``patient_id`` matches ``[A-Za-z0-9_.-]{1,64}``.  Payloads over 256 KiB are rejected unread.

Device clock.  ``t0`` is trusted within a tolerance: the ingest service passes
``max_clock_skew_s`` (``StreamConfig.max_clock_skew_s``, default 1800 s) and a chunk whose last
sample (``t0 + n / fs``) is more than that ahead of, or behind, the time it was received is
dead-lettered with reason ``clock_skew`` -- never re-timed, never buffered, so no window mixes
two clocks and nothing is written at a wrong time.  A device whose clock is off by an hour
sends nothing usable until its clock is fixed; the dead letters and
``p2es_messages_invalid_total{reason="clock_skew"}`` say so.  Errors smaller than the tolerance
are not detected (the data is written at device time).  "Behind" includes a broker backlog: an
engine that was down for longer than the tolerance dead-letters the older part of what the
broker queued for it as ``clock_skew``.

Rate.  When the ingest's per-patient budget is on (``rate_limit_*`` settings, off by default;
:mod:`ingest.fairness`), a patient's messages beyond ``rate_limit_msgs_per_s`` (plus a burst)
and chunks beyond ``rate_limit_factor`` x their declared ``fs`` samples/s (plus a burst of
``rate_limit_burst_s`` seconds of signal) are dead-lettered whole with reason
``rate_limited``, e.g. ``"rate_limited: patient bed-7: 12800 samples/s over the budget of 512
samples/s (4 x fs 128, burst 10 s)"``; ``p2es_messages_invalid_total{reason="rate_limited"}``
counts them.  The parser itself has no state and never returns this code.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from p2es.contracts.topics import PATIENT_ID_RE, TOPIC_PREFIX, match_input_topic

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_CHUNK_SAMPLES",
    "MAX_CHUNK_S",
    "FS_MIN",
    "FS_MAX",
    "DEADLETTER_CODES",
    "BIN_MAGIC",
    "BIN_VERSION",
    "BIN_HEADER",
    "PpgChunk",
    "Profile",
    "GapInfo",
    "Window",
    "DeadLetter",
    "ParsedPpg",
    "ParsedProfile",
    "parse_message",
    "encode_binary_chunk",
    "decode_binary_chunk",
]

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_CHUNK_SAMPLES = 10_000
MAX_CHUNK_S = 10.0
FS_MIN, FS_MAX = 25.0, 1000.0
T0_MIN = 946_684_800.0  # 2000-01-01T00:00:00Z
T0_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MAX_ABS_SAMPLE = 1e9
EXCERPT_CHARS = 200

#: Stable reason codes (the part of ``DeadLetter.reason`` before the first colon).
DEADLETTER_CODES = (
    "oversized",  # payload > 256 KiB
    "bad_utf8",  # JSON topic, payload is not UTF-8
    "bad_json",  # not parseable JSON
    "unknown_topic",  # not one of the three patient topics
    "bad_patient_id",  # patient id outside [A-Za-z0-9_.-]{1,64}
    "invalid_ppg",  # schema/range violation in a PPG chunk (JSON or binary)
    "non_finite",  # NaN / +-inf sample(s)
    "invalid_profile",  # schema/range violation in a profile
    "bad_binary",  # binary framing: magic, version, encoding, length
    "clock_skew",  # device time of the chunk's end off its receive time by > max_clock_skew_s
    "rate_limited",  # the patient is over its budget of messages/s or samples/s (ingest.fairness)
    "internal_error",  # a bug in the parser (should never be seen)
)


# ------------------------------------------------------------------------------ samples
def _samples_in(v: Any) -> np.ndarray:
    """Samples of a chunk -> float64 [n].  JSON lists must hold numbers only (no bool/str)."""
    if isinstance(v, np.ndarray):
        if v.ndim != 1 or v.dtype.kind not in "fiu":
            raise PydanticCustomError("samples_type", "samples must be a 1-D numeric array")
        return np.asarray(v, dtype=np.float64)
    if not isinstance(v, list):
        raise PydanticCustomError("samples_type", "samples must be a list of numbers")
    for i, s in enumerate(v):
        t = type(s)
        if t is not float and t is not int:
            raise PydanticCustomError(
                "samples_type", "samples[{i}] is {t}, expected a number", {"i": i, "t": t.__name__}
            )
    try:
        return np.asarray(v, dtype=np.float64)
    except OverflowError:  # an int beyond float64
        raise PydanticCustomError("samples_type", "samples hold a number too large") from None


def _f32_in(v: Any) -> np.ndarray:
    """Window samples -> float32 [n] from an array, a list, or base64 of little-endian float32."""
    if isinstance(v, str):
        try:
            raw = base64.b64decode(v, validate=True)
        except ValueError as e:
            raise PydanticCustomError("samples_b64", "bad base64: {e}", {"e": str(e)}) from None
        if len(raw) % 4:
            raise PydanticCustomError("samples_b64", "base64 length is not a multiple of 4 bytes")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    a = np.asarray(v, dtype=np.float32)
    if a.ndim != 1:
        raise PydanticCustomError("samples_shape", "window samples must be 1-D")
    return np.ascontiguousarray(a)


def _f32_out(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


#: float32 [n] in Python; in JSON a base64 string of little-endian float32 (4 bytes/sample,
#: ~5.3 characters/sample instead of ~20 for a decimal list, and bit-exact).
Float32Array = Annotated[
    np.ndarray,
    PlainValidator(_f32_in),
    PlainSerializer(_f32_out, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "contentEncoding": "base64", "description": "little-endian float32 samples"}
    ),
]

SamplesArray = Annotated[
    np.ndarray,
    PlainValidator(_samples_in),
    PlainSerializer(lambda a: a.tolist(), return_type=list, when_used="json"),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]


# ------------------------------------------------------------------------------ models
class PpgChunk(BaseModel):
    """One validated chunk of a device's PPG stream (samples as float64 [n])."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    seq: StrictInt = Field(ge=0, lt=2**64)
    t0: float = Field(strict=True, ge=T0_MIN, lt=T0_MAX)
    fs: float = Field(strict=True, ge=FS_MIN, le=FS_MAX)
    samples: SamplesArray
    device: str | None = Field(default=None, max_length=128, strict=True)

    @model_validator(mode="after")
    def _check_samples(self) -> PpgChunk:
        x = self.samples
        n = int(x.size)
        n_max = min(MAX_CHUNK_SAMPLES, int(math.floor(MAX_CHUNK_S * self.fs + 1e-9)))
        if n < 1:
            raise PydanticCustomError("samples_len", "samples is empty")
        if n > n_max:
            raise PydanticCustomError(
                "samples_len",
                "{n} samples > {m} (10 s at {fs} Hz, at most 10000)",
                {"n": n, "m": n_max, "fs": f"{self.fs:g}"},
            )
        ok = np.isfinite(x)
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise PydanticCustomError(
                "non_finite",
                "{k} non-finite sample(s), first at index {i}",
                {"k": int(bad.size), "i": int(bad[0])},
            )
        if n and float(np.abs(x).max()) > MAX_ABS_SAMPLE:
            raise PydanticCustomError("samples_range", "a sample exceeds |x| <= 1e9")
        x.setflags(write=False)
        return self

    @property
    def n(self) -> int:
        return int(self.samples.size)

    @property
    def duration_s(self) -> float:
        return self.n / self.fs

    @property
    def t_end(self) -> float:
        """Device time just after the last sample (t0 + n / fs)."""
        return self.t0 + self.n / self.fs


class Profile(BaseModel):
    """Demographics of a patient; every field optional (None = unknown)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    age: float | None = Field(default=None, ge=0, le=120, strict=True)
    sex: Literal["F", "M"] | None = None
    height_cm: float | None = Field(default=None, ge=50, le=250, strict=True)
    weight_kg: float | None = Field(default=None, ge=2, le=400, strict=True)

    @property
    def sex01(self) -> int | None:
        """The simulator/engine convention: 0 = F, 1 = M, None = unknown."""
        return None if self.sex is None else int(self.sex == "M")


class GapInfo(BaseModel):
    """What inside a window is not measured signal."""

    model_config = ConfigDict(frozen=True)

    filled: int = Field(
        ge=0,
        description="short gaps (<= max_fill_gap_s) filled by linear interpolation that overlap the window",
    )
    filled_s: float = Field(ge=0, description="seconds of interpolated signal in the window")
    segment_start_s: float = Field(
        description="window start minus the start of its segment "
        "(seconds since the stream (re)started); small "
        "values mean the filters are still settling"
    )


class Window(BaseModel):
    """One model window: the resampled (not filtered) PPG of one patient at the model rate;
    the engine applies the model's one preprocessing path (engine.model.preprocess).

    ``t0`` is the device time of ``samples[0]``: ``segment t0 + index * hop / fs`` exactly.
    ``samples`` is float32 in Python and base64 little-endian float32 in JSON
    (``model_dump_json`` / ``model_validate_json`` round-trip bit-exactly).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    patient: str
    segment: int = Field(
        ge=0,
        description="stream segment; a new one starts after a long gap, "
        "a rate change, a seq reset or an idle expiry",
    )
    index: int = Field(ge=0, description="window number within the segment")
    t0: float
    fs: float
    samples: Float32Array
    sqi: float = Field(ge=0.0, le=1.0)
    gaps: GapInfo
    demographics: Profile | None = None
    seq_range: tuple[int, int]
    created_at: float
    device: str | None = None

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.fs


class DeadLetter(BaseModel):
    """A message that could not be used, as published on ``p2es/v1/deadletter``."""

    model_config = ConfigDict(frozen=True)

    topic: str
    reason: str
    received_at: float
    payload_excerpt: str

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]

    @classmethod
    def of(cls, topic: str, reason: str, payload: bytes, received_at: float | None = None) -> DeadLetter:
        """The dead letter of ``payload`` (its excerpt as the contract defines it); ``reason``
        is ``"<code>: <detail>"``, cut to 500 characters."""
        return cls(
            topic=topic,
            reason=reason[:500],
            received_at=time.time() if received_at is None else received_at,
            payload_excerpt=_excerpt(payload),
        )


@dataclass(frozen=True)
class ParsedPpg:
    patient_id: str
    chunk: PpgChunk
    binary: bool
    received_at: float


@dataclass(frozen=True)
class ParsedProfile:
    patient_id: str
    profile: Profile | None  # None: the retained profile was cleared (empty payload)
    received_at: float


# ------------------------------------------------------------------------------ binary
BIN_MAGIC = b"P2PG"
BIN_VERSION = 1
BIN_HEADER = struct.Struct("<4sBBHQdfff")  # 36 bytes
_BIN_DTYPES: dict[int, np.dtype[Any]] = {0: np.dtype("<f4"), 1: np.dtype("<i2")}


def encode_binary_chunk(
    seq: int,
    t0: float,
    fs: float,
    samples: Any,
    *,
    encoding: Literal["f32", "i16"] = "f32",
    scale: float = 1.0,
    offset: float = 0.0,
) -> bytes:
    """Build a ``ppg/bin`` payload (layout: :func:`decode_binary_chunk`).

    For ``"i16"`` the samples are stored as ``round((x - offset) / scale)`` clipped to int16.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if encoding == "f32":
        code, body = 0, x.astype("<f4").tobytes()
    elif encoding == "i16":
        q = np.clip(np.round((x - offset) / scale), -32768, 32767)
        code, body = 1, q.astype("<i2").tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    if x.size > 0xFFFF:
        raise ValueError("at most 65535 samples per binary chunk")
    return (
        BIN_HEADER.pack(
            BIN_MAGIC, BIN_VERSION, code, x.size, int(seq), float(t0), float(fs), float(scale), float(offset)
        )
        + body
    )


def decode_binary_chunk(payload: bytes) -> PpgChunk:
    """Decode a ``ppg/bin`` payload.  Raises ``ValueError`` (framing) or ``ValidationError``.

    Layout, all little-endian, 36-byte header then the samples::

        offset size type     field
         0      4   bytes    magic  b"P2PG"
         4      1   u8       version = 1
         5      1   u8       encoding: 0 = float32 samples, 1 = int16 samples
         6      2   u16      n, number of samples (>= 1)
         8      8   u64      seq
        16      8   f64      t0, Unix seconds of the first sample
        24      4   f32      fs, Hz
        28      4   f32      scale   } sample value = offset + scale * stored
        32      4   f32      offset  } (float32: write scale 1, offset 0)
        36   n*4|2  f32|i16  samples

    The payload length must be exactly ``36 + n * (4 | 2)``; ``scale`` must be finite and
    non-zero, ``offset`` finite.  The decoded chunk passes the same validation as JSON
    (``fs``, ``t0``, length, finiteness).  There is no ``device`` field.
    """
    if len(payload) < BIN_HEADER.size:
        raise ValueError(f"{len(payload)} bytes < the {BIN_HEADER.size}-byte header")
    magic, version, enc, n, seq, t0, fs, scale, offset = BIN_HEADER.unpack_from(payload)
    if magic != BIN_MAGIC:
        raise ValueError(f"magic {magic!r} != {BIN_MAGIC!r}")
    if version != BIN_VERSION:
        raise ValueError(f"unsupported version {version}")
    if enc not in _BIN_DTYPES:
        raise ValueError(f"unknown sample encoding {enc}")
    dt = _BIN_DTYPES[enc]
    want = BIN_HEADER.size + n * dt.itemsize
    if len(payload) != want:
        raise ValueError(f"length {len(payload)} != {want} for n={n} {dt.name} samples")
    if not (math.isfinite(scale) and scale != 0.0 and math.isfinite(offset)):
        raise ValueError(f"bad scale/offset {scale!r}/{offset!r}")
    raw = np.frombuffer(payload, dtype=dt, count=n, offset=BIN_HEADER.size)
    x = raw.astype(np.float64)
    if enc == 1 or scale != 1.0 or offset != 0.0:
        x = offset + scale * x
    return PpgChunk.model_validate({"seq": seq, "t0": t0, "fs": float(fs), "samples": x})


# ------------------------------------------------------------------------------ parsing
def _excerpt(payload: bytes) -> str:
    head = payload[: EXCERPT_CHARS * 4]
    try:
        return head.decode("utf-8")[:EXCERPT_CHARS]
    except UnicodeDecodeError:
        try:  # valid UTF-8 cut inside a multi-byte character
            return payload[:EXCERPT_CHARS].decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(payload[:96]).decode("ascii")


def _first_error(e: ValidationError) -> tuple[str, str]:
    """(error type, 'loc: message') of the first pydantic error."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid")
    return err.get("type", ""), (f"{loc}: {msg}" if loc else msg)


def _dead(topic: str, code: str, detail: str, payload: bytes, received_at: float) -> DeadLetter:
    return DeadLetter(
        topic=topic, reason=f"{code}: {detail}", received_at=received_at, payload_excerpt=_excerpt(payload)
    )


def _ppg_dead(topic: str, e: ValidationError, payload: bytes, at: float) -> DeadLetter:
    etype, detail = _first_error(e)
    return _dead(topic, "non_finite" if etype == "non_finite" else "invalid_ppg", detail, payload, at)


def _clock_checked(
    res: ParsedPpg, topic: str, payload: bytes, max_skew_s: float | None
) -> ParsedPpg | DeadLetter:
    """``res``, or a ``clock_skew`` dead letter when its end is off its receive time by more
    than ``max_skew_s`` (positive skew: the device clock is ahead)."""
    if max_skew_s is None:
        return res
    skew = res.chunk.t_end - res.received_at
    if abs(skew) <= max_skew_s:
        return res
    side = "ahead of" if skew > 0 else "behind"
    return _dead(
        topic,
        "clock_skew",
        f"device clock {abs(skew):.0f} s {side} the receive time (tolerance {max_skew_s:g} s)",
        payload,
        res.received_at,
    )


def parse_message(
    topic: str,
    payload: bytes | bytearray | memoryview | str | None,
    *,
    received_at: float | None = None,
    prefix: str = TOPIC_PREFIX,
    max_clock_skew_s: float | None = None,
) -> ParsedPpg | ParsedProfile | DeadLetter:
    """Parse one MQTT message.  Never raises: anything unusable becomes a :class:`DeadLetter`.

    ``max_clock_skew_s``: a PPG chunk whose end (device clock) is further than this from
    ``received_at`` is a ``clock_skew`` dead letter (see the module docstring; None: no check)."""
    at = time.time() if received_at is None else float(received_at)
    try:
        if payload is None:
            payload = b""
        elif isinstance(payload, str):
            payload = payload.encode("utf-8", errors="surrogatepass")
        elif not isinstance(payload, bytes):
            payload = bytes(payload)
        topic = str(topic)
        if len(payload) > MAX_PAYLOAD_BYTES:
            return _dead(topic, "oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", payload, at)
        matched = match_input_topic(topic, prefix)
        if matched is None:
            return _dead(
                topic, "unknown_topic", "not a p2es/v1 patient ppg, ppg/bin or profile topic", payload, at
            )
        pid, kind = matched
        if not PATIENT_ID_RE.fullmatch(pid):
            return _dead(
                topic, "bad_patient_id", f"{pid[:80]!r} does not match [A-Za-z0-9_.-]{{1,64}}", payload, at
            )

        if kind == "ppg/bin":
            try:
                chunk = decode_binary_chunk(payload)
            except ValidationError as e:
                return _ppg_dead(topic, e, payload, at)
            except (ValueError, struct.error) as e:
                return _dead(topic, "bad_binary", str(e), payload, at)
            return _clock_checked(ParsedPpg(pid, chunk, True, at), topic, payload, max_clock_skew_s)

        if kind == "profile" and len(payload) == 0:
            return ParsedProfile(pid, None, at)  # retained message cleared
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return _dead(topic, "bad_utf8", str(e), payload, at)
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            return _dead(topic, "bad_json", str(e)[:200], payload, at)
        if not isinstance(obj, dict):
            code = "invalid_ppg" if kind == "ppg" else "invalid_profile"
            return _dead(topic, code, f"expected a JSON object, got {type(obj).__name__}", payload, at)
        if kind == "ppg":
            try:
                ok = ParsedPpg(pid, PpgChunk.model_validate(obj), False, at)
            except ValidationError as e:
                return _ppg_dead(topic, e, payload, at)
            return _clock_checked(ok, topic, payload, max_clock_skew_s)
        try:
            return ParsedProfile(pid, Profile.model_validate(obj), at)
        except ValidationError as e:
            return _dead(topic, "invalid_profile", _first_error(e)[1], payload, at)
    except Exception as e:  # noqa: BLE001 - the contract: never raise
        b = payload if isinstance(payload, bytes) else b""
        return _dead(str(topic), "internal_error", f"{type(e).__name__}: {e}", b, at)
