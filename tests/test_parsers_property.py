"""Property tests of every parser of untrusted input (issue #15, item 4, first half).

What a wearable, a compromised account or a stray client can put on the broker reaches these
parsers, all in ``p2es/contracts``:

* ``parse_message`` -- PPG chunks (JSON on ``.../ppg``, binary on ``.../ppg/bin``) and profiles
  (``.../profile``), read by ingest;
* ``parse_vitals`` -- vitals on ``.../vitals``, read by the alert service;
* ``parse_command`` -- ack/silence/unsilence on ``p2es/v1/alerts/ack``, read by the alert service;
* the topic matchers the services route with.

Properties, for any bytes, any JSON value, any object with the right keys and wrong values, any
binary header (lying about n, NaN/inf floats, wrong magic/version/encoding): the parser never
raises; it returns a valid message that satisfies the contract's invariants, or a rejection whose
reason is ``"<code>: <detail>"`` with ``code`` from the documented set
(``p2es.contracts.ppg.DEADLETTER_CODES``, ``p2es.contracts.validation.VITALS_REASON_CODES`` /
``COMMAND_REASON_CODES``), never ``internal_error``; a dead letter always serialises to JSON.

Hypothesis runs derandomized (a fixed seed: the same examples every run, no example database),
with example counts and a deadline sized for 2 busy CPU cores: the whole file takes ~15 s.
"""

from __future__ import annotations

import json
import math
import struct
from datetime import timedelta
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from p2es.contracts.alerts import AckCommand, SilenceCommand, UnsilenceCommand, parse_command
from p2es.contracts.ppg import (
    BIN_HEADER,
    BIN_MAGIC,
    DEADLETTER_CODES,
    FS_MAX,
    FS_MIN,
    MAX_CHUNK_S,
    MAX_CHUNK_SAMPLES,
    DeadLetter,
    ParsedPpg,
    ParsedProfile,
    encode_binary_chunk,
    parse_message,
)
from p2es.contracts.topics import match_input_topic, patient_from_vitals_topic
from p2es.contracts.validation import COMMAND_REASON_CODES, VITALS_REASON_CODES
from p2es.contracts.vitals import VITALS_METRICS, Vitals, parse_vitals

PROPS = settings(
    derandomize=True,  # a fixed seed: every run tries the same examples
    database=None,  # nothing written to .hypothesis/
    deadline=timedelta(seconds=2),  # generous: two busy cores
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FEW = settings(PROPS, max_examples=50)  # the costlier strategies (big arrays, deep JSON)

PID = "bed-7"
TOPIC = {
    "ppg": f"p2es/v1/patients/{PID}/ppg",
    "bin": f"p2es/v1/patients/{PID}/ppg/bin",
    "profile": f"p2es/v1/patients/{PID}/profile",
    "vitals": f"p2es/v1/patients/{PID}/vitals",
}
PPG_CODES = frozenset(DEADLETTER_CODES) - {"internal_error"}
T0 = 1_718_000_000.0

# ------------------------------------------------------------------------------ strategies
any_float = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    any_float,
    st.text(max_size=20),
)
#: any JSON value (Python's reader also yields NaN/Infinity, so those are in)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)
sample_lists = st.one_of(
    st.lists(st.floats(-2.0, 2.0), min_size=0, max_size=1200),
    st.lists(st.one_of(any_float, st.integers(-(10**12), 10**12), st.booleans(), st.text(max_size=3))),
    st.integers(2490, 10_050).map(lambda n: [0.25] * n),  # at/over 10 s at low fs, over 10,000
)


def wrong_or_right(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(right, right, right, json_values)


chunk_objects = st.fixed_dictionaries(
    {},
    optional={
        "seq": wrong_or_right(st.integers(-5, 2**64 + 5)),
        "t0": wrong_or_right(st.one_of(st.floats(T0 - 1e10, T0 + 1e10), st.just(T0))),
        "fs": wrong_or_right(st.one_of(st.floats(0, 2000), st.sampled_from([25.0, 100.0, 1000.0, 24.9]))),
        "samples": wrong_or_right(sample_lists),
        "device": wrong_or_right(st.text(max_size=140)),
        "battery": json_values,  # unknown keys are ignored
    },
)
profile_objects = st.fixed_dictionaries(
    {},
    optional={
        "age": wrong_or_right(st.one_of(st.integers(-5, 130), st.floats(-5, 130))),
        "sex": wrong_or_right(st.sampled_from(["F", "M", "f", "X", ""])),
        "height_cm": wrong_or_right(st.floats(0, 300)),
        "weight_kg": wrong_or_right(st.floats(0, 500)),
        "ward": json_values,
    },
)
vitals_objects = st.fixed_dictionaries(
    {
        "patient": wrong_or_right(st.sampled_from([PID, "bed-8", "", "bed 7", "x" * 65])),
        "t": wrong_or_right(st.floats(T0 - 1e10, T0 + 1e10)),
    },
    optional={m: wrong_or_right(any_float) for m in VITALS_METRICS} | {"extra": json_values},
)
command_objects = st.fixed_dictionaries(
    {"action": wrong_or_right(st.sampled_from(["ack", "silence", "unsilence", "mute"]))},
    optional={
        "patient": wrong_or_right(st.sampled_from([PID, "bad id", ""])),
        "rule": wrong_or_right(st.text(max_size=10)),
        "id": wrong_or_right(st.sampled_from(["s-1", "bad id", "x" * 70])),
        "ends_at": wrong_or_right(any_float),
        "duration_s": wrong_or_right(st.floats(-10, 10 * 86400)),
        "by": wrong_or_right(st.text(max_size=130)),
        "comment": wrong_or_right(st.text(max_size=50)),
    },
)


def dumps(obj: Any) -> bytes:
    """JSON as a device might send it (Python writes NaN/Infinity, big ints stay exact)."""
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------ checks
def check_ppg_result(res: object, *, codes: frozenset[str] = PPG_CODES) -> None:
    assert isinstance(res, (ParsedPpg, ParsedProfile, DeadLetter)), type(res)
    if isinstance(res, DeadLetter):
        code, sep, detail = res.reason.partition(": ")
        assert sep and code in codes, res.reason
        json.loads(res.model_dump_json())  # what ingest publishes on p2es/v1/deadletter
        return
    if isinstance(res, ParsedPpg):
        c = res.chunk
        n_max = min(MAX_CHUNK_SAMPLES, math.floor(MAX_CHUNK_S * c.fs + 1e-9))
        assert 1 <= c.n <= n_max and FS_MIN <= c.fs <= FS_MAX and 946_684_800 <= c.t0 < 4_102_444_800
        assert np.all(np.isfinite(c.samples)) and 0 <= c.seq < 2**64
        assert c.device is None or (isinstance(c.device, str) and len(c.device) <= 128)


def check_reason(res: object, codes: frozenset[str]) -> None:
    assert isinstance(res, str), type(res)
    code, sep, _ = res.partition(": ")
    assert sep and code in codes, res


# ------------------------------------------------------------------------------ ingest
@PROPS
@given(kind=st.sampled_from(["ppg", "bin", "profile"]), payload=st.binary(max_size=600))
@example(kind="ppg", payload=b"1" * 5000)  # an integer of 5,000 digits (int-conversion limit)
@example(kind="profile", payload=b"[" * 100_000)  # nesting deeper than the JSON reader's recursion
@example(kind="bin", payload=BIN_MAGIC)
def test_parse_message_any_bytes(kind: str, payload: bytes) -> None:
    check_ppg_result(parse_message(TOPIC[kind], payload, received_at=T0))


@PROPS
@given(topic=st.text(max_size=120), payload=st.binary(max_size=64))
@example(topic="p2es/v1/patients/bed\x00/ppg", payload=b"{}")
@example(topic="p2es/v1/patients//ppg", payload=b"{}")
def test_parse_message_any_topic(topic: str, payload: bytes) -> None:
    res = parse_message(topic, payload, received_at=T0)
    check_ppg_result(res)
    if not isinstance(res, DeadLetter):
        assert match_input_topic(topic) is not None
    patient_from_vitals_topic(topic)  # the alert side's topic parser never raises either


@FEW
@given(kind=st.sampled_from(["ppg", "profile"]), obj=json_values)
def test_parse_message_any_json(kind: str, obj: Any) -> None:
    res = parse_message(TOPIC[kind], dumps(obj), received_at=T0)
    check_ppg_result(res)
    if not isinstance(obj, dict):
        assert isinstance(res, DeadLetter)


@FEW
@given(obj=chunk_objects)
@example(obj={"seq": 1, "t0": T0, "fs": 100.0, "samples": [1e308, -1e308]})
@example(obj={"seq": 1, "t0": T0, "fs": 100.0, "samples": [10**400]})
@example(obj={"seq": 1, "t0": T0, "fs": 100.0, "samples": [float("nan")]})
@example(obj={"seq": 2**64, "t0": T0, "fs": 100.0, "samples": [0.0]})
def test_json_chunk_is_valid_or_rejected_as_ppg(obj: dict[str, Any]) -> None:
    res = parse_message(TOPIC["ppg"], dumps(obj), received_at=T0)
    check_ppg_result(res, codes=frozenset({"invalid_ppg", "non_finite"}))


@FEW
@given(obj=profile_objects)
def test_profile_is_valid_or_rejected_as_profile(obj: dict[str, Any]) -> None:
    res = parse_message(TOPIC["profile"], dumps(obj), received_at=T0)
    check_ppg_result(res, codes=frozenset({"invalid_profile"}))
    if isinstance(res, ParsedProfile):
        p = res.profile
        assert p is not None and p.sex in (None, "F", "M")
        assert p.age is None or 0 <= p.age <= 120


header_fields = st.tuples(
    st.one_of(st.just(BIN_MAGIC), st.binary(min_size=4, max_size=4)),
    st.one_of(st.just(1), st.integers(0, 255)),  # version
    st.one_of(st.sampled_from([0, 1]), st.integers(0, 255)),  # encoding
    st.integers(0, 0xFFFF),  # n
    st.integers(0, 2**64 - 1),  # seq
    st.one_of(st.floats(T0 - 1e10, T0 + 1e10), any_float),  # t0
    st.one_of(st.floats(0, 2000, width=32), st.floats(width=32)),  # fs
    st.one_of(st.just(1.0), st.floats(width=32)),  # scale
    st.one_of(st.just(0.0), st.floats(width=32)),  # offset
)


@PROPS
@given(
    fields=header_fields,
    body=st.one_of(st.binary(max_size=400), st.integers(0, 3000).map(lambda n: b"\x00\x3f" * n)),
)
def test_binary_chunk_any_header_any_body(fields: tuple[Any, ...], body: bytes) -> None:
    """Headers that lie about n, NaN/inf t0/fs/scale/offset, wrong magic/version/encoding."""
    payload = BIN_HEADER.pack(*fields) + body
    res = parse_message(TOPIC["bin"], payload, received_at=T0)
    check_ppg_result(res, codes=frozenset({"bad_binary", "invalid_ppg", "non_finite"}))
    if isinstance(res, ParsedPpg):  # accepted: the header told the truth
        magic, version, enc, n, *_ = fields
        assert magic == BIN_MAGIC and version == 1 and enc in (0, 1)
        assert len(payload) == BIN_HEADER.size + n * (4 if enc == 0 else 2) and res.chunk.n == n


@PROPS
@given(
    seq=st.integers(0, 2**64 - 1),
    fs=st.sampled_from([25.0, 64.0, 100.0, 128.0, 250.0, 500.0, 1000.0]),
    x=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=250),
    enc=st.sampled_from(["f32", "i16"]),
)
def test_binary_round_trip(seq: int, fs: float, x: list[float], enc: str) -> None:
    payload = encode_binary_chunk(seq, T0, fs, x, encoding=enc, scale=0.05 if enc == "i16" else 1.0)
    res = parse_message(TOPIC["bin"], payload, received_at=T0)
    assert isinstance(res, ParsedPpg) and res.binary and res.chunk.seq == seq and res.chunk.n == len(x)
    tol = 0.025 + 1e-9 if enc == "i16" else 0.0
    assert np.max(np.abs(res.chunk.samples - np.asarray(x, np.float32))) <= tol + 1e-3 * (enc == "i16")


# ------------------------------------------------------------------------------ alert service
@PROPS
@given(payload=st.binary(max_size=600))
@example(payload=b"1" * 5000)
@example(payload=b'{"patient": "bed-7", "t": 1718000000, "hr_bpm": ' + b"9" * 5000 + b"}")
@example(payload=b"[" * 100_000)
@example(payload=b"x" * (64 * 1024 + 1))
def test_parse_vitals_any_bytes(payload: bytes) -> None:
    res = parse_vitals(TOPIC["vitals"], payload)
    if not isinstance(res, Vitals):
        check_reason(res, VITALS_REASON_CODES)


@FEW
@given(obj=st.one_of(json_values, vitals_objects))
@example(obj={"patient": PID, "t": T0, "hr_bpm": 10**400})
@example(obj={"patient": PID, "t": T0, "hr_bpm": float("nan"), "sqi": float("inf")})
def test_parse_vitals_any_json(obj: Any) -> None:
    res = parse_vitals(TOPIC["vitals"], dumps(obj))
    if isinstance(res, Vitals):
        assert res.patient == PID and 946_684_800 <= res.t < 4_102_444_800
        for m in VITALS_METRICS:  # a rule sees a finite number or None, never NaN/inf
            v = res.value(m)
            assert v is None or math.isfinite(v)
        json.loads(res.to_json())  # the engine's own serialisation round-trips
    else:
        check_reason(res, VITALS_REASON_CODES)


@PROPS
@given(payload=st.binary(max_size=600))
@example(payload=b"1" * 5000)
@example(payload=b"[" * 100_000)
def test_parse_command_any_bytes(payload: bytes) -> None:
    res = parse_command(payload)
    if not isinstance(res, (AckCommand, SilenceCommand, UnsilenceCommand)):
        check_reason(res, COMMAND_REASON_CODES)


@FEW
@given(obj=st.one_of(json_values, command_objects))
@example(obj={"action": "silence", "patient": PID, "ends_at": 10**400})
@example(obj={"action": "silence", "rule": "r", "duration_s": float("nan")})
def test_parse_command_any_json(obj: Any) -> None:
    res = parse_command(dumps(obj))
    if isinstance(res, SilenceCommand):
        assert res.patient is not None or res.rule is not None
        assert (res.ends_at is None) != (res.duration_s is None)
        assert res.ends_at is None or math.isfinite(res.ends_at)
        assert res.duration_s is None or 0 < res.duration_s <= 7 * 86400
    elif not isinstance(res, (AckCommand, UnsilenceCommand)):
        check_reason(res, COMMAND_REASON_CODES)


def test_reason_code_sets_are_documented() -> None:
    """The code sets the properties check are the ones docs/contracts.md lists."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "contracts.md").read_text()
    for codes in (DEADLETTER_CODES, VITALS_REASON_CODES, COMMAND_REASON_CODES):
        assert all(f"`{c}`" in text for c in codes), codes
    assert struct.calcsize(BIN_HEADER.format) == 36
