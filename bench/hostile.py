"""Hostile input at volume (issue #15, item 4): a live run through the real broker and engine.

    .venv/bin/python bench/hostile.py                       # 100,000 hostile messages (make hostile)
    .venv/bin/python bench/hostile.py --messages 5000 --json out/hostile.json

Two live runs of the real engine (``p2es run`` as a subprocess, or the same ``Pipeline`` in this
process with ``--engine inproc``) on the test services (Mosquitto 127.0.0.1:18830, InfluxDB
127.0.0.1:18086; scripts/services.sh), each into a fresh InfluxDB database, with the tests'
tiny checkpoint (``--checkpoint``, else trained once into .run/hostile/):

1. **baseline**: 10 normal simulated patients (``hn-000`` .. ``hn-009``, 7 JSON and 3 binary
   devices at 25-500 Hz, 1 s chunks from a fixed device time), nothing else;
2. **hostile**: the same patients, byte for byte, interleaved with ``--messages`` hostile
   messages published at QoS 1 by several concurrent clients: random bytes, lying binary
   headers, huge and empty arrays, NaN/Infinity, wrong types, JSON nested beyond the parser's
   limit, unicode and malformed patient ids, unknown topics, payloads over 256 KiB, t0 far in
   the past/future, and patient streams whose seq goes backwards (resends: duplicate / late;
   counter resets), whose fs changes mid-stream, whose t0 jumps or overlaps, with a rejected
   chunk between good ones; plus attacks on the normal patients' own topics (replayed chunks,
   NaN and clock-skewed chunks with the next seq, garbage, bad profiles).

The corpus is deterministic: episode ``k`` (one message, or one scripted stream published in
order on one connection) comes from ``random.Random(f"{seed}/{k}")`` alone, device times are
relative to the run's start.  Every message carries its expected outcome: a dead-letter reason
code, or what the patient's stream does with a valid chunk (used / duplicate / late /
overlap dropped), or a valid profile.  The bench then checks, per outcome, that

* sent == counted by the engine (Prometheus deltas: ``p2es_messages_invalid_total{reason}``,
  ``p2es_stream_events_total{event}``, ``p2es_messages_valid_total{kind}``), and for dead letters
  == seen on ``p2es/v1/deadletter`` with the same (topic, reason code), message for message;
* every message sent reached the engine (``p2es_messages_in_total``) and has exactly one outcome;
* the engine stayed up (process alive, /healthz 200, connected, no ``internal_error``, no window
  dropped, no ERROR/Traceback in its log, the broker dropped nothing for it);
* the normal patients' ``ecg`` (and ``ppg``, ``vitals``) series in InfluxDB are identical,
  timestamp for timestamp and bit for bit, to the baseline run (per-window noise is seeded by
  patient, window start and model; ``max_batch`` 1 keeps float32 rounding independent of who
  shares a batch: docs/pipeline.md "Output that does not depend on the batch").

Publishing is paced by the engine: at most ``--window`` messages are outstanding (sent but not yet
processed, or dead letters not yet received), because Mosquitto keeps at most 1,000 QoS 1
messages queued per subscriber (``max_queued_messages``) and silently drops the rest when the
engine falls behind a burst.  A ``rate_limited`` dead letter (per-patient budget, off by default)
is accepted as an accounted outcome.  Prints a table, exits 1 if anything does not add up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import services  # noqa: E402  (tests/services.py: ports of the test services)

from p2es.contracts.ppg import (  # noqa: E402
    BIN_HEADER,
    BIN_MAGIC,
    DEADLETTER_CODES,
    MAX_PAYLOAD_BYTES,
    T0_MAX,
    T0_MIN,
    DeadLetter,
    ParsedPpg,
    ParsedProfile,
    encode_binary_chunk,
    parse_message,
)
from p2es.contracts.topics import TOPIC_PREFIX, deadletter_topic, ppg_topic, profile_topic  # noqa: E402
from p2es.transport.metrics import parse_text  # noqa: E402

P = TOPIC_PREFIX
NORMAL_PREFIX = "hn"
NORMAL_FS = (25.0, 64.0, 100.0, 125.0, 128.0, 250.0, 500.0, 100.0, 128.0, 64.0)
NORMAL_BINARY = frozenset({7, 8, 9})
SKEW_S = 1800.0  # the engine's default max_clock_skew_s
FS_SET = (25.0, 50.0, 64.0, 100.0, 125.0, 128.0, 200.0, 250.0, 500.0, 1000.0)
#: what a valid chunk can become in its patient's stream (p2es_stream_events_total{event})
STREAM_OUTCOMES = {
    "used": "chunks_used",
    "duplicate": "duplicates",
    "late": "late",
    "overlap_dropped": "overlaps_dropped",
}
#: stream events that are not a message's outcome but are predicted too
EVENTS = ("seq_resets", "rate_changes", "breaks", "overlaps_trimmed")
OUTCOMES = tuple(dict.fromkeys((*DEADLETTER_CODES, "rate_limited", *STREAM_OUTCOMES, "profile")))
_CLI = "import sys; from p2es.cli import main; sys.exit(main(sys.argv[1:]))"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ============================================================================ the corpus
@dataclasses.dataclass(frozen=True)
class Msg:
    """One message and what must become of it."""

    topic: str
    payload: bytes
    outcome: str  # a dead-letter code, a STREAM_OUTCOMES key, or "profile"
    kind: str  # what the generator made (the "by kind" table)
    events: tuple[tuple[str, int], ...] = ()  # stream events it causes (EVENTS)


def _js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _samples(rng: random.Random, n: int) -> list[float]:
    return [round(rng.uniform(-1.0, 1.0), 4) for _ in range(n)]


class Hostile:
    """The hostile corpus: :meth:`episode` ``k`` is a pure function of (seed, k, t_base)."""

    #: (kind, weight per episode); stateless kinds are one message, the ``s_`` kinds a stream
    KINDS: tuple[tuple[str, float], ...] = (
        ("random_bytes", 8),
        ("random_binary", 5),
        ("bin_lying_n", 6),
        ("bin_bad_header", 4),
        ("bin_invalid", 4),
        ("bin_non_finite", 3),
        ("not_json", 8),
        ("deep_json", 2),
        ("deep_json_ok", 0.5),
        ("wrong_types", 12),
        ("huge_array", 1),
        ("empty_array", 3),
        ("nan_json", 6),
        ("t0_out_of_range", 3),
        ("t0_far_off", 5),
        ("bad_id", 8),
        ("unknown_topic", 5),
        ("oversized", 0.3),
        ("bad_profile", 5),
        ("ok_chunk", 2),
        ("ok_huge_chunk", 0.05),
        ("ok_profile", 2),
        ("s_duplicate", 0.3),
        ("s_late", 0.04),
        ("s_seq_reset", 0.2),
        ("s_fs_change", 0.2),
        ("s_overlap", 0.2),
        ("s_t0_jump", 0.2),
        ("s_reject_mid", 0.3),
        ("s_profiles", 0.2),
    )

    def __init__(self, seed: int, t_base: float) -> None:
        self.seed, self.t_base = int(seed), float(t_base)
        self._names = [k for k, _ in self.KINDS]
        self._weights = [w for _, w in self.KINDS]

    def episode(self, k: int) -> list[Msg]:
        rng = random.Random(f"{self.seed}/{k}")
        kind = rng.choices(self._names, self._weights)[0]
        out: list[Msg] = getattr(self, "_" + kind)(rng, k)
        return out

    # -- helpers ------------------------------------------------------------------------
    def _t0(self, rng: random.Random) -> float:
        return round(self.t_base + rng.uniform(-60.0, 60.0), 6)

    def _chunk(
        self, rng: random.Random, seq: int = 0, fs: float | None = None, dur: float | None = None
    ) -> dict[str, Any]:
        fs = rng.choice(FS_SET) if fs is None else fs
        n = max(1, int(round((rng.uniform(0.25, 2.0) if dur is None else dur) * fs)))
        return {"seq": seq, "t0": self._t0(rng), "fs": fs, "samples": _samples(rng, n)}

    @staticmethod
    def _bin(
        seq: int,
        t0: float,
        fs: float,
        n: int,
        *,
        enc: int = 0,
        scale: float = 1.0,
        offset: float = 0.0,
        version: int = 1,
        magic: bytes = BIN_MAGIC,
        body_n: int | None = None,
        rng: random.Random | None = None,
    ) -> bytes:
        head = BIN_HEADER.pack(magic, version, enc, n, seq, t0, fs, scale, offset)
        m = n if body_n is None else body_n
        size = 4 if enc == 0 else 2
        body = (
            (rng or random.Random(0)).randbytes(m * size)
            if enc != 0
            else struct.pack(f"<{m}f", *([0.25] * m))
        )
        return head + body

    # -- stateless: one message each ------------------------------------------------------
    def _random_bytes(self, rng: random.Random, k: int) -> list[Msg]:
        pid = f"hx{k:07d}"
        topic = rng.choice([ppg_topic(pid), profile_topic(pid)])
        return [Msg(topic, b"\xff" + rng.randbytes(rng.randint(0, 2000)), "bad_utf8", "random_bytes")]

    def _random_binary(self, rng: random.Random, k: int) -> list[Msg]:
        b = rng.randbytes(rng.randint(0, 400))
        if b[:4] == BIN_MAGIC:
            b = b"X" + b[1:]
        return [Msg(ppg_topic(f"hx{k:07d}", binary=True), b, "bad_binary", "random_binary")]

    def _bin_lying_n(self, rng: random.Random, k: int) -> list[Msg]:
        n = rng.randint(1, 2000)
        body = rng.choice([m for m in (rng.randint(0, 2 * n), 0, n - 1, n + 1) if m != n])
        enc = rng.choice([0, 1])
        p = self._bin(0, self._t0(rng), 100.0, n, enc=enc, body_n=body, rng=rng)
        return [Msg(ppg_topic(f"hx{k:07d}", binary=True), p, "bad_binary", "bin_lying_n")]

    def _bin_bad_header(self, rng: random.Random, k: int) -> list[Msg]:
        what = rng.choice(["version", "encoding", "scale", "offset"])
        kw: dict[str, Any] = {}
        if what == "version":
            kw["version"] = rng.choice([0, 2, 3, 255])
        elif what == "encoding":
            kw["enc"] = rng.randint(2, 255)
        elif what == "scale":
            kw["scale"] = rng.choice([0.0, math.nan, math.inf, -math.inf])
        else:
            kw["offset"] = rng.choice([math.nan, math.inf, -math.inf])
        n = rng.randint(1, 300)
        if "enc" in kw:  # the body length of an unknown encoding does not matter: refused first
            p = BIN_HEADER.pack(
                BIN_MAGIC, 1, kw["enc"], n, 0, self._t0(rng), 100.0, 1.0, 0.0
            ) + rng.randbytes(n * 4)
        else:
            p = self._bin(0, self._t0(rng), 100.0, n, rng=rng, **kw)
        return [Msg(ppg_topic(f"hx{k:07d}", binary=True), p, "bad_binary", "bin_bad_header")]

    def _bin_invalid(self, rng: random.Random, k: int) -> list[Msg]:
        what = rng.choice(["empty", "fs", "t0", "too_many", "range"])
        t0, fs, n = self._t0(rng), 100.0, rng.randint(1, 200)
        if what == "empty":
            p = self._bin(0, t0, fs, 0)
        elif what == "fs":
            p = self._bin(0, t0, rng.choice([0.0, 24.5, 1000.5, -100.0, math.nan, math.inf]), n)
        elif what == "t0":
            p = self._bin(0, rng.choice([0.0, -1e9, 5e9, math.nan, math.inf, -math.inf]), fs, n)
        elif what == "too_many":
            p = self._bin(0, t0, 25.0, rng.randint(251, 3000))
        else:  # int16 * scale beyond |x| <= 1e9
            p = self._bin(0, t0, fs, n, enc=1, scale=1e35, rng=random.Random(k))
            p = p[: BIN_HEADER.size] + struct.pack(f"<{n}h", *([1000] * n))
        return [Msg(ppg_topic(f"hx{k:07d}", binary=True), p, "invalid_ppg", "bin_invalid")]

    def _bin_non_finite(self, rng: random.Random, k: int) -> list[Msg]:
        n = rng.randint(1, 500)
        x = _samples(rng, n)
        for _ in range(rng.randint(1, 3)):
            x[rng.randrange(n)] = rng.choice([math.nan, math.inf, -math.inf])
        p = encode_binary_chunk(rng.randint(0, 10), self._t0(rng), 100.0, x)
        return [Msg(ppg_topic(f"hx{k:07d}", binary=True), p, "non_finite", "bin_non_finite")]

    def _not_json(self, rng: random.Random, k: int) -> list[Msg]:
        pid = f"hx{k:07d}"
        topic = rng.choice([ppg_topic(pid), profile_topic(pid)])
        good = _js(self._chunk(rng))
        forms: list[bytes] = [
            ("x" + "".join(rng.choice('abc{}[]:," 0123456789') for _ in range(rng.randint(0, 300)))).encode(),
            good[: rng.randint(1, len(good) - 1)],  # truncated
            b"\xef\xbb\xbf" + good,  # a UTF-8 byte order mark
            good + b" x",  # trailing garbage
            "ψ€𝄞 — ünïcödé ✓ 患者 🫀".encode(),
            b"{'seq': 0, 't0': 1.0}",
            b'{"seq": 0,}',
            b"NaNa",
        ]
        if topic.endswith("/ppg"):
            forms.append(b"")  # an empty payload clears a *profile*; on ppg it is no JSON
        return [Msg(topic, rng.choice(forms), "bad_json", "not_json")]

    def _deep_json(self, rng: random.Random, k: int) -> list[Msg]:
        d = rng.randint(3000, 20000)  # beyond the JSON reader's recursion limit (~1000)
        form = rng.choice(["list", "dict", "inside"])
        if form == "list":
            p = b"[" * d
        elif form == "dict":
            p = b'{"a":' * d + b"1" + b"}" * d
        else:
            c = self._chunk(rng, dur=0.25)
            p = _js(c)[:-1] + b', "x": ' + b"[" * d + b"]" * d + b"}"
        return [Msg(ppg_topic(f"hx{k:07d}"), p, "bad_json", "deep_json")]

    def _deep_json_ok(self, rng: random.Random, k: int) -> list[Msg]:
        d = rng.randint(20, 200)  # nested, but within the reader's limit: an ignored unknown key
        c = self._chunk(rng, dur=rng.uniform(0.25, 1.0))
        p = _js(c)[:-1] + b', "battery": ' + b"[" * d + b"{}" + b"]" * d + b"}"
        return [Msg(ppg_topic(f"hx{k:07d}"), p, "used", "deep_json_ok")]

    def _wrong_types(self, rng: random.Random, k: int) -> list[Msg]:
        c: Any = self._chunk(rng, dur=0.5)
        field = rng.choice(["seq", "t0", "fs", "samples", "device", "missing", "top"])
        if field == "seq":
            c["seq"] = rng.choice(["1", 1.5, 1.0, -1, 2**64, True, None, [], {}])
        elif field == "t0":
            c["t0"] = rng.choice(["now", str(c["t0"]), None, True, [c["t0"]], {}])
        elif field == "fs":
            c["fs"] = rng.choice(["100", True, None, [100.0], {}])
        elif field == "samples":
            c["samples"] = rng.choice(
                [
                    "0.1,0.2",
                    None,
                    {},
                    5,
                    [[0.1]],
                    [True],
                    ["0.1"],
                    [None],
                    c["samples"] + ["x"],
                    [0.1, {}],
                    [10**400],
                ]
            )
        elif field == "device":
            c["device"] = rng.choice([123, [], {}, True, "d" * 129, "é" * 200])
        elif field == "missing":
            del c[rng.choice(["seq", "t0", "fs", "samples"])]
        else:
            c = rng.choice([[c], "chunk", 42, None, True, []])
        return [Msg(ppg_topic(f"hx{k:07d}"), _js(c), "invalid_ppg", "wrong_types")]

    def _huge_array(self, rng: random.Random, k: int) -> list[Msg]:
        fs = rng.choice(FS_SET)
        n_max = min(10_000, int(math.floor(10 * fs + 1e-9)))
        n = rng.randint(n_max + 1, 60_000)  # "0.5," x 60,000 is 240 kB: under the 256 KiB limit
        p = (
            b'{"seq": 0, "t0": %r, "fs": %r, "samples": [' % (self._t0(rng), fs)
            + b",".join([b"0.5"] * n)
            + b"]}"
        )
        return [Msg(ppg_topic(f"hx{k:07d}"), p, "invalid_ppg", "huge_array")]

    def _empty_array(self, rng: random.Random, k: int) -> list[Msg]:
        c = self._chunk(rng)
        c["samples"] = []
        return [Msg(ppg_topic(f"hx{k:07d}"), _js(c), "invalid_ppg", "empty_array")]

    def _nan_json(self, rng: random.Random, k: int) -> list[Msg]:
        c = self._chunk(rng)
        x = c["samples"]
        tokens = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
        idx = {rng.randrange(len(x)) for _ in range(rng.randint(1, 4))}
        body = ",".join(rng.choice(tokens) if i in idx else repr(v) for i, v in enumerate(x))
        p = _js({**c, "samples": []}).replace(b'"samples": []', b'"samples": [' + body.encode() + b"]")
        return [Msg(ppg_topic(f"hx{k:07d}"), p, "non_finite", "nan_json")]

    def _t0_out_of_range(self, rng: random.Random, k: int) -> list[Msg]:
        c = self._chunk(rng)
        c["t0"] = rng.choice([0.0, -1.0, T0_MIN - 1.0, T0_MAX, 1e300, -1e300, 1e20, 5e9])
        return [Msg(ppg_topic(f"hx{k:07d}"), _js(c), "invalid_ppg", "t0_out_of_range")]

    def _t0_far_off(self, rng: random.Random, k: int) -> list[Msg]:
        c = self._chunk(rng)
        if rng.random() < 0.5:
            c["t0"] = rng.uniform(T0_MIN + 1.0, self.t_base - 4 * SKEW_S)
        else:
            c["t0"] = rng.uniform(self.t_base + 4 * SKEW_S, T0_MAX - 20.0)
        pid = f"hx{k:07d}"
        if rng.random() < 0.3:
            p = encode_binary_chunk(0, c["t0"], c["fs"], c["samples"])
            return [Msg(ppg_topic(pid, binary=True), p, "clock_skew", "t0_far_off")]
        return [Msg(ppg_topic(pid), _js(c), "clock_skew", "t0_far_off")]

    def _bad_id(self, rng: random.Random, k: int) -> list[Msg]:
        forms = [
            f"hx{k}é",
            f"患者{k}",
            f"hx{k}\U0001fac0",
            f"hx\u202e{k}",  # right-to-left override
            f"hx\u200b{k}",  # zero-width space
            f"hx{k}e\u0301",  # combining accent
            f"ｈｘ{k}",  # full-width letters
            f"hx {k}",
            f"hx{k} ",
            *(f"hx{c}{k}" for c in "$%@:!*&()=,;~'\"\\<>?|{}[]^`"),
            f"hx{k}" + "a" * rng.randint(56, 3000),  # longer than 64
            "",  # patients//ppg
        ]
        pid = rng.choice(forms)
        where = rng.choice(["ppg", "bin", "profile"])
        if where == "ppg":
            return [Msg(ppg_topic(pid), _js(self._chunk(rng)), "bad_patient_id", "bad_id")]
        if where == "bin":
            p = encode_binary_chunk(0, self._t0(rng), 100.0, [0.1] * 50)
            return [Msg(ppg_topic(pid, binary=True), p, "bad_patient_id", "bad_id")]
        return [Msg(profile_topic(pid), _js({"age": 40}), "bad_patient_id", "bad_id")]

    def _unknown_topic(self, rng: random.Random, k: int) -> list[Msg]:
        pid = f"hx{k:07d}"
        sub = rng.choice(
            [
                "ecg",
                "ppg/",
                "ppg/bin/x",
                "PPG",
                "Ppg/bin",
                "profile/x",
                "ppgbin",
                "ppg/json",
                "status",
                "ppg ",
                "vitals/x",
                "alerts/x",
                "ppg/bin/bin",
                "",
                None,
            ]
        )
        topic = f"{P}/patients/{pid}" if sub is None else f"{P}/patients/{pid}/{sub}"
        payload = rng.choice([_js(self._chunk(rng)), rng.randbytes(rng.randint(0, 100))])
        return [Msg(topic, payload, "unknown_topic", "unknown_topic")]

    def _oversized(self, rng: random.Random, k: int) -> list[Msg]:
        n = MAX_PAYLOAD_BYTES + rng.randint(1, 20_000)
        pid = f"hx{k:07d}"
        topic = rng.choice(
            [ppg_topic(pid), ppg_topic(pid, binary=True), profile_topic(pid), f"{P}/patients/{pid}/x"]
        )
        payload = rng.choice([b"[" + b"0.5," * (n // 4) + b"0.5]", rng.randbytes(n)])
        return [Msg(topic, payload, "oversized", "oversized")]

    def _bad_profile(self, rng: random.Random, k: int) -> list[Msg]:
        prof: Any = {"age": 50.0, "sex": "F", "height_cm": 170.0, "weight_kg": 70.0}
        field = rng.choice(["age", "sex", "height_cm", "weight_kg", "top"])
        bad = {
            "age": [-1, 121, 1e9, "63", True, [63], {}],
            "sex": ["X", "f", "male", 1, "", True, []],
            "height_cm": [10, 300, "x", False, [170]],
            "weight_kg": [0, 1000, "y", True],
        }
        if field == "top":
            prof = rng.choice([[prof], 5, "x", None, True, []])
        else:
            prof[field] = rng.choice(bad[field])
        return [Msg(profile_topic(f"hx{k:07d}"), _js(prof), "invalid_profile", "bad_profile")]

    def _ok_chunk(self, rng: random.Random, k: int) -> list[Msg]:
        # valid, from a patient nobody else uses; shorter than a window (no inference)
        pid = f"hx{k:07d}"
        c = self._chunk(rng)
        form = rng.choice(["json", "extras", "ints", "bigseq", "f32", "i16"])
        if form in ("f32", "i16"):
            p = encode_binary_chunk(0, c["t0"], c["fs"], c["samples"], encoding=form, scale=1 / 32767)
            return [Msg(ppg_topic(pid, binary=True), p, "used", "ok_chunk")]
        if form == "extras":
            c["device"] = "".join(rng.choice("wé患🫀\u202e-_ ") for _ in range(rng.randint(0, 128)))
            c["battery"] = rng.choice([0.5, "ü" * rng.randint(0, 20_000), None, {"a": [1, 2]}])
        elif form == "ints":
            c["samples"] = [rng.randint(-(10**6), 10**6) for _ in c["samples"]]
        elif form == "bigseq":  # not 0: held for re-ordering, released after reorder_wait_s
            c["seq"] = rng.choice([2**64 - 1, rng.randint(1, 2**63)])
        return [Msg(ppg_topic(pid), _js(c), "used", "ok_chunk")]

    def _ok_huge_chunk(self, rng: random.Random, k: int) -> list[Msg]:
        # the largest chunk the contract allows: 10 s at 1000 Hz (one window, inference included)
        x = [round(math.sin(2 * math.pi * 1.2 * i / 1000.0), 5) for i in range(10_000)]
        pid = f"hx{k:07d}"
        if rng.random() < 0.5:
            p = encode_binary_chunk(0, self._t0(rng), 1000.0, x, encoding="i16", scale=1 / 32767)
            return [Msg(ppg_topic(pid, binary=True), p, "used", "ok_huge_chunk")]
        return [
            Msg(
                ppg_topic(pid),
                _js({"seq": 0, "t0": self._t0(rng), "fs": 1000.0, "samples": x}),
                "used",
                "ok_huge_chunk",
            )
        ]

    def _ok_profile(self, rng: random.Random, k: int) -> list[Msg]:
        p = rng.choice(
            [
                b"",  # clears the retained profile
                b"{}",
                _js({"age": 0, "sex": None, "height_cm": 250.0, "weight_kg": 2.0}),
                _js({"age": 120, "sex": "M", "ward": "é" * 300, "extra": [1, {"a": None}]}),
                _js({"unknown": True}),
            ]
        )
        return [Msg(profile_topic(f"hx{k:07d}"), p, "profile", "ok_profile")]

    # -- stateful: one patient's scripted stream, published in order on one connection ----
    def _stream(
        self,
        rng: random.Random,
        m: int,
        *,
        fs: float | None = None,
        dur: float = 0.5,
        fs_each: list[float] | None = None,
    ) -> list[dict[str, Any]]:
        """``m`` contiguous valid chunks seq 0..m-1 (t0 continues exactly)."""
        fs = rng.choice((64.0, 100.0, 128.0, 200.0, 500.0)) if fs is None else fs
        t = self._t0(rng)
        out = []
        for j in range(m):
            f = fs_each[j] if fs_each else fs
            n = int(round(dur * f))
            out.append({"seq": j, "t0": t, "fs": f, "samples": _samples(rng, n)})
            t = t + n / f
        return out

    @staticmethod
    def _next(c: dict[str, Any], seq: int, rng: random.Random, *, shift: float = 0.0) -> dict[str, Any]:
        """A chunk like ``c`` that continues right after it (t0 + shift)."""
        n = len(c["samples"])
        return {"seq": seq, "t0": c["t0"] + n / c["fs"] + shift, "fs": c["fs"], "samples": _samples(rng, n)}

    def _s_duplicate(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        cs = self._stream(rng, rng.randint(2, 6))
        out = [Msg(t, _js(c), "used", "s_duplicate") for c in cs]
        for _ in range(rng.randint(1, 3)):  # a resend of one of the last 64: dropped as a duplicate
            out.append(Msg(t, _js(rng.choice(cs)), "duplicate", "s_duplicate"))
        return out

    def _s_late(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        m = rng.randint(66, 75)  # 0.1 s chunks: 7.5 s at most, shorter than a window
        cs = self._stream(rng, m, fs=rng.choice((50.0, 100.0, 128.0)), dur=0.1)
        out = [Msg(t, _js(c), "used", "s_late") for c in cs]
        for _ in range(rng.randint(1, 3)):  # seq older than the last 64 released: late
            out.append(Msg(t, _js(cs[rng.randrange(m - 64)]), "late", "s_late"))
        return out

    def _s_seq_reset(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        cs = self._stream(rng, rng.randint(2, 5))
        out = [Msg(t, _js(c), "used", "s_seq_reset") for c in cs]
        c = self._next(cs[-1], 0, rng)  # seq goes back to 0 with a newer t0: a device counter reset
        out.append(Msg(t, _js(c), "used", "s_seq_reset", (("seq_resets", 1),)))
        for j in range(1, rng.randint(1, 3)):
            c = self._next(c, j, rng)
            out.append(Msg(t, _js(c), "used", "s_seq_reset"))
        return out

    def _s_fs_change(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        fss = [rng.choice(FS_SET)]
        for _ in range(rng.randint(2, 7)):
            fss.append(rng.choice([f for f in FS_SET if f != fss[-1]]))
        cs = self._stream(rng, len(fss), fs_each=fss)
        return [
            Msg(t, _js(c), "used", "s_fs_change", (("rate_changes", 1),) if j else ())
            for j, c in enumerate(cs)
        ]

    def _s_overlap(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        m = rng.randint(3, 5)
        cs = self._stream(rng, m, fs=rng.choice((64.0, 100.0, 128.0, 200.0, 500.0)))
        out = [Msg(t, _js(c), "used", "s_overlap") for c in cs]
        again = {**self._next(cs[-3], m, rng)}  # t0 two chunks back: all of it is already there
        out.append(Msg(t, _js(again), "overlap_dropped", "s_overlap"))
        half = self._next(cs[-1], m + 1, rng, shift=-0.25)  # half of it overlaps: trimmed, used
        out.append(Msg(t, _js(half), "used", "s_overlap", (("overlaps_trimmed", 1),)))
        out.append(Msg(t, _js(self._next(half, m + 2, rng)), "used", "s_overlap"))
        return out

    def _s_t0_jump(self, rng: random.Random, k: int) -> list[Msg]:
        t = ppg_topic(f"hs{k:07d}")
        cs = self._stream(rng, rng.randint(2, 4))
        out = [Msg(t, _js(c), "used", "s_t0_jump") for c in cs]
        c = self._next(cs[-1], len(cs), rng, shift=round(rng.uniform(5.0, 600.0), 3))  # a long gap
        out.append(Msg(t, _js(c), "used", "s_t0_jump", (("breaks", 1),)))
        out.append(Msg(t, _js(self._next(c, len(cs) + 1, rng)), "used", "s_t0_jump"))
        return out

    def _s_reject_mid(self, rng: random.Random, k: int) -> list[Msg]:
        # a rejected chunk between good ones: the next good chunk with the same seq is used (had
        # the rejected one advanced the stream, it would be counted as a duplicate)
        pid = f"hs{k:07d}"
        t = ppg_topic(pid)
        cs = self._stream(rng, rng.randint(2, 4), fs=100.0)
        out = [Msg(t, _js(c), "used", "s_reject_mid") for c in cs]
        good = self._next(cs[-1], len(cs), rng)
        how = rng.choice(["nan", "skew", "empty", "bin"])
        if how == "nan":
            p = _js(good).replace(b"[", b"[NaN, ", 1)
            out.append(Msg(t, p, "non_finite", "s_reject_mid"))
        elif how == "skew":
            out.append(Msg(t, _js({**good, "t0": good["t0"] + 4 * SKEW_S}), "clock_skew", "s_reject_mid"))
        elif how == "empty":
            out.append(Msg(t, _js({**good, "samples": []}), "invalid_ppg", "s_reject_mid"))
        else:
            p = encode_binary_chunk(good["seq"], good["t0"], good["fs"], good["samples"])[:-4]
            out.append(Msg(ppg_topic(pid, binary=True), p, "bad_binary", "s_reject_mid"))
        out.append(Msg(t, _js(good), "used", "s_reject_mid"))
        out.append(Msg(t, _js(self._next(good, good["seq"] + 1, rng)), "used", "s_reject_mid"))
        return out

    def _s_profiles(self, rng: random.Random, k: int) -> list[Msg]:
        pid = f"hs{k:07d}"
        out = []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                out.append(
                    Msg(
                        profile_topic(pid),
                        _js({"age": rng.randint(0, 120), "sex": "F"}),
                        "profile",
                        "s_profiles",
                    )
                )
            elif rng.random() < 0.5:
                out.append(Msg(profile_topic(pid), b"", "profile", "s_profiles"))
            else:
                out.append(Msg(profile_topic(pid), _js({"age": -5}), "invalid_profile", "s_profiles"))
        out.append(Msg(ppg_topic(pid), _js(self._chunk(rng, dur=0.5)), "used", "s_profiles"))
        return out


class Normal:
    """The normal patients: chunk ``j`` of patient ``i`` is the same bytes in every run."""

    def __init__(self, n: int, seed: int, duration_s: float, t_base: float) -> None:
        from wearable.publisher import make_patients

        self.pats = make_patients(
            n, seed=seed, duration_s=duration_s, fs_list=NORMAL_FS[:n], prefix=NORMAL_PREFIX
        )
        self.seed, self.t_base = int(seed), float(t_base)
        self.ticks = int(duration_s)  # 1 s chunks
        self.duration_s = float(duration_s)
        self._cache: dict[tuple[int, int], bytes] = {}

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pats]

    def profiles(self) -> list[Msg]:
        return [Msg(profile_topic(p.id), _js(p.profile), "profile", "normal_profile") for p in self.pats]

    def _body(self, i: int, j: int) -> dict[str, Any]:
        p = self.pats[i]
        n = int(round(p.fs))
        x = [float(v) for v in p.ppg.take(range(j * n, (j + 1) * n), mode="wrap")]
        return {
            "seq": j,
            "t0": self.t_base + j,
            "fs": p.fs,
            "samples": [round(v, 6) for v in x],
            "device": f"sim-{p.id}",
        }

    def chunk(self, i: int, j: int) -> Msg:
        key = (i, j)
        if key not in self._cache:
            b = self._body(i, j)
            if i in NORMAL_BINARY:
                self._cache[key] = encode_binary_chunk(j, b["t0"], b["fs"], b["samples"])
            else:
                self._cache[key] = _js(b)
        return Msg(
            ppg_topic(self.pats[i].id, binary=i in NORMAL_BINARY), self._cache[key], "used", "normal_chunk"
        )

    def attacks(self, i: int, j: int) -> list[Msg]:
        """Hostile messages on normal patient ``i``'s own topics, sent right after its chunk
        ``j`` was acknowledged: none of them may change its output."""
        rng = random.Random(f"{self.seed}/normal/{i}/{j}")
        if rng.random() >= 0.5:
            return []
        pid = self.pats[i].id
        nxt = self._body(i, j + 1)  # what the device will send next
        how = rng.choice(
            ["replay", "replay", "nan", "skew", "bytes", "profile", "topic", "lying_bin", "huge"]
        )
        if how == "replay":  # a recent chunk again, byte for byte: a duplicate
            old = self.chunk(i, max(0, j - rng.randint(0, 5)))
            return [dataclasses.replace(old, outcome="duplicate", kind="normal_replay")]
        if how == "nan":
            p = _js(nxt).replace(b'"samples": [', b'"samples": [NaN, ', 1)
            return [Msg(ppg_topic(pid), p, "non_finite", "normal_next_seq_nan")]
        if how == "skew":
            return [
                Msg(
                    ppg_topic(pid),
                    _js({**nxt, "t0": nxt["t0"] + 4 * SKEW_S}),
                    "clock_skew",
                    "normal_next_seq_skewed",
                )
            ]
        if how == "bytes":
            return [
                Msg(
                    ppg_topic(pid), b"\xfe" + rng.randbytes(rng.randint(0, 500)), "bad_utf8", "normal_garbage"
                )
            ]
        if how == "profile":
            return [
                Msg(
                    profile_topic(pid), _js({"age": 200, "sex": "X"}), "invalid_profile", "normal_bad_profile"
                )
            ]
        if how == "topic":
            return [Msg(f"{P}/patients/{pid}/ppg/x", _js(nxt), "unknown_topic", "normal_unknown_topic")]
        if how == "lying_bin":
            p = encode_binary_chunk(nxt["seq"], nxt["t0"], nxt["fs"], nxt["samples"])
            p = p[:6] + struct.pack("<H", len(nxt["samples"]) + 1) + p[8:]
            return [Msg(ppg_topic(pid, binary=True), p, "bad_binary", "normal_lying_binary")]
        big = _js({**nxt, "samples": nxt["samples"] * 11})  # 11 s of samples
        return [Msg(ppg_topic(pid), big, "invalid_ppg", "normal_next_seq_too_long")]


def corpus(h: Hostile, n: int) -> Iterator[list[Msg]]:
    """Episodes 0, 1, ... until at least ``n`` messages."""
    k = sent = 0
    while sent < n:
        ep = h.episode(k)
        k += 1
        sent += len(ep)
        yield ep


def check_offline(episodes: list[list[Msg]], t_base: float) -> list[str]:
    """Run messages through the real parser and a real StreamRegistry (no broker): the
    generator's expectations must hold there already.  Returns the mismatches."""
    from ingest.stream import StreamConfig, StreamRegistry

    reg = StreamRegistry(StreamConfig(compute_sqi=False))
    bad: list[str] = []
    want: Counter[str] = Counter()
    for ep in episodes:
        for m in ep:
            res = parse_message(m.topic, m.payload, received_at=t_base + 1.0, max_clock_skew_s=SKEW_S)
            if isinstance(res, DeadLetter):
                got = res.code
            elif isinstance(res, ParsedPpg):
                got = "chunk"
                reg.push(res.patient_id, res.chunk, now=0.0)
            elif isinstance(res, ParsedProfile):
                got = "profile"
                reg.set_profile(res.patient_id, res.profile)
            exp = "chunk" if m.outcome in STREAM_OUTCOMES else m.outcome
            if got != exp and len(bad) < 20:
                bad.append(
                    f"{m.kind} on {m.topic[:80]!r}: expected {m.outcome}, parser says {getattr(res, 'reason', got)[:120]}"
                )
            if m.outcome in STREAM_OUTCOMES:
                want[STREAM_OUTCOMES[m.outcome]] += 1
            for ev, c in m.events:
                want[ev] += c
    reg.flush_stale(now=1e9)
    st = reg.stats()
    for key in (*STREAM_OUTCOMES.values(), *EVENTS):
        if st[key] != want[key]:
            bad.append(f"stream {key}: expected {want[key]}, a StreamRegistry counts {st[key]:g}")
    return bad


# ============================================================================ the live side
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_checkpoint(dirpath: Path) -> str:
    """The tests' tiny checkpoint (tests/conftest.py ``tiny_ckpt``), trained once and reused."""
    path = dirpath / "tiny.pt"
    if path.exists():
        return str(path)
    from engine.model.train import train_tiny

    dirpath.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dirpath) as td:  # with its side files (lock, resume)
        tmp = Path(td) / "tiny.pt"
        train_tiny(tmp)
        tmp.replace(path)
    return str(path)


def scrape(port: int, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, str]:
    """(HTTP status, body) of the engine's metrics endpoint; (0, error) when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"


def parse_metrics(text: str) -> dict[str, float]:
    return parse_text(text)


def m_invalid(m: dict[str, float], code: str) -> float:
    return m.get(f'p2es_messages_invalid_total{{reason="{code}"}}', 0.0)


def m_invalid_all(m: dict[str, float]) -> Counter[str]:
    out: Counter[str] = Counter()
    for k, v in m.items():
        if k.startswith('p2es_messages_invalid_total{reason="'):
            out[k.split('"')[1]] = int(v)
    return out


def m_event(m: dict[str, float], ev: str) -> float:
    return m.get(f'p2es_stream_events_total{{event="{ev}"}}', 0.0)


def m_valid(m: dict[str, float], kind: str) -> float:
    return m.get(f'p2es_messages_valid_total{{kind="{kind}"}}', 0.0)


class DeadLetterListener:
    """Subscribes to ``p2es/v1/deadletter`` (QoS 1, its own thread) and counts (topic, code)."""

    def __init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client_id = f"hostile-dl-{uuid.uuid4().hex[:8]}"
        self._c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        self._c.on_message = self._on_message
        self._c.on_subscribe = lambda *a: self._subscribed.set()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.got: Counter[tuple[str, str]] = Counter()
        self.n = 0
        self.reasons: dict[str, str] = {}  # one full reason per code (for the report)
        self.bad = 0  # not a DeadLetter at all

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            d = json.loads(msg.payload)
            code = str(d["reason"]).split(":", 1)[0]
            key = (str(d["topic"]), code)
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.bad += 1
            return
        with self._lock:
            self.got[key] += 1
            self.n += 1
            self.reasons.setdefault(code, str(d["reason"])[:200])

    def start(self) -> None:
        self._c.connect(services.HOST, services.mqtt_port())
        self._c.subscribe(deadletter_topic(), qos=1)
        self._c.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("dead-letter subscription not acknowledged by the broker")

    def reset(self) -> None:
        with self._lock:
            self.got.clear()
            self.n = 0
            self.bad = 0

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.got)

    def stop(self) -> None:
        self._c.loop_stop()
        with contextlib.suppress(Exception):
            self._c.disconnect()


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}"[:300])


class Engine:
    """The engine under test: ``p2es run`` in a subprocess (``process``) or the same
    :class:`engine.app.pipeline.Pipeline` in this event loop (``inproc``)."""

    def __init__(self, mode: str, cfg: dict[str, Any], workdir: Path) -> None:
        self.mode, self.cfg, self.workdir = mode, cfg, workdir
        self.port = int(cfg["metrics_port"])
        self.client_id = str(cfg["client_id"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipe: Any = None
        self.log = workdir / f"{self.client_id}.log"
        self._errors = _ErrorLog()
        self.rc: int | None = None

    async def start(self, timeout: float = 180.0) -> None:
        if self.mode == "inproc":
            from engine.app.pipeline import Pipeline, PipelineConfig

            logging.getLogger("p2es").addHandler(self._errors)
            self.pipe = Pipeline(PipelineConfig(**self.cfg))
            await self.pipe.start_connected(self.cfg["broker"])
        else:
            cfg_file = self.workdir / f"{self.client_id}.json"
            cfg_file.write_text(json.dumps(self.cfg))
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(self.log, "ab") as f:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", _CLI, "run", "--config", str(cfg_file), "--stats-every", "10"],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=REPO,
                )
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(scrape, self.port, "/healthz", 2.0))[0] != 200:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"p2es run exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the engine did not become healthy in {timeout:.0f} s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.2)

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def alive(self) -> bool:
        if self.pipe is not None:
            return bool(self.pipe.ingest.running)
        return self.proc is not None and self.proc.poll() is None

    async def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM (or Pipeline.stop): the engine finishes what it accepted and flushes; 0 = clean."""
        if self.pipe is not None:
            try:
                await self.pipe.stop(timeout=timeout)
                self.rc = 0
            except Exception as e:  # noqa: BLE001 - reported
                self._errors.lines.append(f"Pipeline.stop raised {type(e).__name__}: {e}")
                self.rc = 1
            finally:
                logging.getLogger("p2es").removeHandler(self._errors)
        elif self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.rc = await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.rc = await asyncio.to_thread(self.proc.wait, 10)
        return int(self.rc if self.rc is not None else -1)

    def error_lines(self) -> list[str]:
        if self.pipe is not None:
            return list(self._errors.lines)
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [
            ln[:300] for ln in text.splitlines() if " ERROR " in ln or "CRITICAL" in ln or "Traceback" in ln
        ]


async def forget_session(client_id: str) -> None:
    """Remove the engine's persistent session from the broker (it would queue every later
    message for a client that never comes back)."""
    from p2es.transport.mqtt import MqttEndpoint

    ep = MqttEndpoint.from_url(services.mqtt_url(), client_id=client_id)
    with contextlib.suppress(Exception):
        async with ep.client(persistent=False):
            pass


class PrivateBroker:
    """A Mosquitto of its own (scripts/mosquitto.sh: the test broker's configuration, on a free
    port and run directory) so that nothing else on the machine -- other tests' engines, their
    simulated patients, retained messages -- mixes with the counts.  While it runs, the test
    services' helpers (tests/services.py) point at it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self._saved: dict[str, str | None] = {}

    def _script(self, action: str) -> None:
        env = dict(os.environ, P2ES_RUN_DIR=str(self.run_dir), P2ES_TEST_MQTT_PORT=str(self.port))
        r = subprocess.run(
            ["bash", str(REPO / "scripts" / "mosquitto.sh"), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"scripts/mosquitto.sh {action} (private broker) failed:\n{r.stdout}{r.stderr}"
            )

    def __enter__(self) -> PrivateBroker:
        self._script("start")
        for k, v in (("P2ES_TEST_MQTT_PORT", str(self.port)), ("P2ES_HOSTILE_BROKER_DIR", str(self.run_dir))):
            self._saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc: object) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(Exception):
            self._script("stop")
        shutil.rmtree(self.run_dir, ignore_errors=True)


def broker_log() -> Path:
    run_dir = (
        os.environ.get("P2ES_HOSTILE_BROKER_DIR") or os.environ.get("P2ES_RUN_DIR") or str(REPO / ".run")
    )
    return Path(run_dir) / "mosquitto" / "mosquitto.log"


@dataclasses.dataclass
class RunResult:
    label: str
    db: str
    engine_mode: str
    broker: str = "private"
    sent: Counter[str] = dataclasses.field(default_factory=Counter)  # by outcome
    sent_hostile: Counter[str] = dataclasses.field(default_factory=Counter)
    kinds: Counter[str] = dataclasses.field(default_factory=Counter)  # by generator kind
    kind_outcomes: dict[str, Counter[str]] = dataclasses.field(default_factory=dict)
    events: Counter[str] = dataclasses.field(default_factory=Counter)
    expected_dl: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    n_hostile: int = 0
    n_normal: int = 0
    base: dict[str, float] = dataclasses.field(default_factory=dict)
    final: dict[str, float] = dataclasses.field(default_factory=dict)
    dl_got: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    dl_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    dl_not_json: int = 0
    health: dict[str, Any] = dataclasses.field(default_factory=dict)
    series: dict[tuple[str, str], tuple[list[str], list[list[Any]]]] = dataclasses.field(default_factory=dict)
    topics: set[str] = dataclasses.field(default_factory=set)  # every topic published to
    publish_s: float = 0.0
    total_s: float = 0.0
    scrape_failures: list[str] = dataclasses.field(default_factory=list)

    def record(self, m: Msg, hostile: bool) -> None:
        self.topics.add(m.topic)
        self.sent[m.outcome] += 1
        self.kinds[m.kind] += 1
        self.kind_outcomes.setdefault(m.kind, Counter())[m.outcome] += 1
        for ev, c in m.events:
            self.events[ev] += c
        if m.outcome not in STREAM_OUTCOMES and m.outcome != "profile":
            self.expected_dl[(m.topic, m.outcome)] += 1
        if hostile:
            self.n_hostile += 1
            self.sent_hostile[m.outcome] += 1
        else:
            self.n_normal += 1

    def delta(self, key: str) -> float:
        return self.final.get(key, 0.0) - self.base.get(key, 0.0)


class _Pace:
    """At most ``window`` messages outstanding: sent but not processed by the engine, or dead
    letters made but not yet received (the broker queues at most 1,000 per subscriber)."""

    def __init__(self, window: int, dl: DeadLetterListener, stall_s: float) -> None:
        self.window, self.dl, self.stall_s = int(window), dl, float(stall_s)
        self.sent = 0
        self.engine_in = 0.0
        self.dl_made = 0.0
        self.last_move = time.monotonic()
        self.metrics: dict[str, float] = {}

    def outstanding(self) -> float:
        return max(self.sent - self.engine_in, self.dl_made - self.dl.n)

    async def take(self) -> None:
        while self.outstanding() >= self.window:
            if time.monotonic() - self.last_move > self.stall_s:
                raise RuntimeError(
                    f"the engine took nothing for {self.stall_s:.0f} s with {self.outstanding():.0f} "
                    f"messages outstanding (sent {self.sent}, processed {self.engine_in:.0f})"
                )
            await asyncio.sleep(0.003)
        self.sent += 1


async def live_run(
    label: str,
    *,
    normal: Normal,
    hostile: Hostile | None,
    n_hostile: int,
    ckpt: str,
    workdir: Path,
    engine_mode: str = "process",
    window: int = 400,
    publishers: int = 6,
    max_batch: int = 1,
    progress_s: float = 5.0,
    keep_db: bool = False,
    drain_timeout_s: float = 180.0,
    broker: str = "private",
) -> RunResult:
    """One live run (see the module docstring); hostile=None is the baseline."""
    from p2es.transport.mqtt import MqttEndpoint

    t_run = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    db = f"p2es_hostile_{label}_{tag}"
    res = RunResult(label, db, engine_mode, broker)
    services.influx_query(f'CREATE DATABASE "{db}"', db="")
    cfg = dict(
        broker=services.mqtt_url(),
        client_id=f"p2es-hostile-{label}-{tag}",
        influx_url=services.influx_url(),
        influx_db=db,
        steps=2,
        k=1,
        threads=1,
        max_batch=max_batch,
        max_wait_ms=5.0,
        checkpoint=ckpt,
        spool_dir=str(workdir / f"spool-{label}-{tag}"),
        metrics_port=free_port(),
        writer_batch_lines=5000,
        writer_flush_interval_s=0.5,
        health_interval_s=0.0,
    )
    blog = broker_log()
    blog_at = blog.stat().st_size if blog.exists() else 0
    dl = DeadLetterListener()
    dl.start()
    eng = Engine(engine_mode, cfg, workdir)
    say(f"{label}: starting the engine ({engine_mode}, database {db})")
    try:
        await eng.start()
        # retained messages of earlier runs arrive right after the subscription: let them pass
        last, stable_since = -1.0, time.monotonic()
        while time.monotonic() - stable_since < 1.0:
            code, text = await asyncio.to_thread(scrape, eng.port)
            cur = parse_metrics(text).get("p2es_messages_in_total", -1.0) if code == 200 else -2.0
            if cur != last:
                last, stable_since = cur, time.monotonic()
            await asyncio.sleep(0.2)
        res.base = parse_metrics((await asyncio.to_thread(scrape, eng.port))[1])
        dl.reset()
        base_invalid = sum(m_invalid_all(res.base).values())
        pace = _Pace(window, dl, stall_s=60.0)
        stop_poll = asyncio.Event()

        async def poll() -> None:
            while not stop_poll.is_set():
                code, text = await asyncio.to_thread(scrape, eng.port)
                if code == 200:
                    m = parse_metrics(text)
                    pace.metrics = m
                    engine_in = m.get("p2es_messages_in_total", 0.0) - res.base.get(
                        "p2es_messages_in_total", 0.0
                    )
                    if engine_in != pace.engine_in:
                        pace.last_move = time.monotonic()
                    pace.engine_in = engine_in
                    pace.dl_made = sum(m_invalid_all(m).values()) - base_invalid
                elif len(res.scrape_failures) < 20:
                    res.scrape_failures.append(f"HTTP {code}: {text[:200]}")
                else:
                    res.scrape_failures.append("...")
                await asyncio.sleep(0.05)

        def client(name: str) -> Any:
            return MqttEndpoint.from_url(services.mqtt_url(), client_id=f"hostile-{name}-{tag}").client(
                persistent=False
            )

        hostile_done = asyncio.Event()
        if hostile is None:
            hostile_done.set()
        episodes = corpus(hostile, n_hostile) if hostile is not None else iter(())

        async def hostile_worker(w: int) -> None:
            async with client(f"pub{w}") as c:
                for ep in episodes:  # shared: each episode goes to one worker, in order on it
                    for m in ep:
                        await pace.take()
                        await c.publish(m.topic, m.payload, qos=1, timeout=60)
                        res.record(m, hostile=True)

        async def normal_publisher() -> None:
            async with client("normal") as c:
                for m in normal.profiles():
                    await pace.take()
                    await c.publish(m.topic, m.payload, qos=1, timeout=60)
                    res.record(m, hostile=False)
                last_tick = time.monotonic()
                for j in range(normal.ticks):
                    # spread over the flood, but never slower than real time (no idle flush)
                    while not (
                        hostile_done.is_set()
                        or res.n_hostile >= j * n_hostile / normal.ticks
                        or time.monotonic() - last_tick >= 1.0
                    ):
                        await asyncio.sleep(0.01)
                    last_tick = time.monotonic()
                    for i in range(len(normal.pats)):
                        m = normal.chunk(i, j)
                        await pace.take()
                        await c.publish(m.topic, m.payload, qos=1, timeout=60)
                        res.record(m, hostile=False)
                        if hostile is not None:  # after the chunk's PUBACK: the engine has it first
                            for a in normal.attacks(i, j):
                                await pace.take()
                                await c.publish(a.topic, a.payload, qos=1, timeout=60)
                                res.record(a, hostile=True)

        async def show() -> None:
            t0, last_n = time.monotonic(), 0
            while True:
                await asyncio.sleep(progress_s)
                m = pace.metrics
                rate = (pace.sent - last_n) / progress_s
                last_n = pace.sent
                say(
                    f"{label}: sent {res.n_hostile}/{n_hostile} hostile + {res.n_normal} normal "
                    f"({rate:.0f} msg/s), engine took {pace.engine_in:.0f}, dead letters "
                    f"{dl.n}/{sum(res.expected_dl.values())}, windows "
                    f"{m.get('p2es_windows_total', 0) - res.base.get('p2es_windows_total', 0):.0f}, "
                    f"{time.monotonic() - t0:.0f} s"
                )

        poller = asyncio.create_task(poll())
        shower = asyncio.create_task(show()) if progress_s > 0 else None
        t_pub = time.monotonic()
        try:
            normal_task = asyncio.create_task(normal_publisher())
            if hostile is not None:
                await asyncio.gather(*(hostile_worker(w) for w in range(publishers)))
                hostile_done.set()
            await normal_task
            res.publish_s = time.monotonic() - t_pub
            say(
                f"{label}: published {res.n_hostile} hostile + {res.n_normal} normal in {res.publish_s:.1f} s; draining"
            )

            # drain: every message processed, every dead letter received, no chunk held back
            def drained() -> bool:
                m = pace.metrics
                if pace.engine_in < pace.sent:
                    return False
                got = dl.snapshot()
                if any(got[k] < v for k, v in res.expected_dl.items()):
                    return False
                held = m_event(m, "chunks_in") - sum(m_event(m, e) for e in STREAM_OUTCOMES.values())
                base_held = m_event(res.base, "chunks_in") - sum(
                    m_event(res.base, e) for e in STREAM_OUTCOMES.values()
                )
                return held - base_held <= 0

            deadline = time.monotonic() + drain_timeout_s
            while not drained() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            res.health["drained"] = drained()
            await asyncio.sleep(1.0)  # late extras (an unexpected dead letter) show up too
        finally:
            stop_poll.set()
            await poller
            if shower is not None:
                shower.cancel()
        code, text = await asyncio.to_thread(scrape, eng.port)
        res.final = parse_metrics(text) if code == 200 else pace.metrics
        res.health["alive"] = eng.alive()
        res.health["healthz"] = (await asyncio.to_thread(scrape, eng.port, "/healthz"))[0]
        res.health["connected"] = res.final.get("p2es_mqtt_connected", 0.0)
    finally:
        t_stop = time.monotonic()
        rc = await eng.stop()
        res.health["stop_rc"] = rc
        res.health["stop_s"] = round(time.monotonic() - t_stop, 1)
        dl.stop()
        res.dl_got, res.dl_reasons, res.dl_not_json = dl.snapshot(), dict(dl.reasons), dl.bad
        spool = Path(str(cfg["spool_dir"]))
        if spool.is_dir() and not any(p.is_file() for p in spool.rglob("*")):
            shutil.rmtree(spool, ignore_errors=True)  # nothing spooled: InfluxDB took it all
        await forget_session(eng.client_id)
    res.health["error_lines"] = eng.error_lines()
    text = blog.read_bytes()[blog_at:].decode(errors="replace") if blog.exists() else ""
    res.health["broker_drops"] = [
        ln for ln in text.splitlines() if "dropped" in ln and (eng.client_id in ln or dl.client_id in ln)
    ]
    for pid in normal.ids:
        for meas in ("ecg", "ppg", "vitals"):
            body = services.influx_query(f'SELECT * FROM "{meas}" WHERE "patient"=\'{pid}\'', db)
            series = body["results"][0].get("series") or [{"columns": [], "values": []}]
            res.series[(pid, meas)] = (series[0]["columns"], series[0]["values"])
    if not keep_db:
        services.influx_query(f'DROP DATABASE "{db}"', db="")
    res.total_s = time.monotonic() - t_run
    return res


# ============================================================================ the report
@dataclasses.dataclass
class Report:
    ok: bool
    outcomes: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    identity: list[dict[str, Any]]
    kinds: dict[str, dict[str, int]]
    summary: dict[str, Any]

    def tables(self) -> str:
        def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
            cells = [[str(r.get(c, "")) for c in cols] for r in rows]
            w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
            fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w[i]}}}" for i in range(len(cols)))
            return "\n".join(
                [fmt.format(*cols), fmt.format(*("-" * x for x in w)), *(fmt.format(*x) for x in cells)]
            )

        s = self.summary
        parts = [
            f"hostile run: {s['hostile_sent']} hostile + {s['normal_sent']} normal messages, published in "
            f"{s['publish_s']:.1f} s ({s['hostile_rate']:.0f} hostile msg/s), run {s['total_s']:.0f} s; "
            f"baseline run {s['baseline_total_s']:.0f} s; engine {s['engine']}",
            "",
            "what was sent, by kind (kind: messages -> expected outcomes):",
            *(
                f"  {k:<26} {sum(v.values()):>7}  -> "
                + ", ".join(f"{o} {n}" for o, n in sorted(v.items(), key=lambda x: -x[1]))
                for k, v in self.kinds.items()
            ),
            "",
            "every message's outcome (sent = what the corpus says must happen):",
            table(
                self.outcomes,
                ["outcome", "sent (hostile)", "sent (normal)", "engine metrics", "dead-letter topic", "ok"],
            ),
            "",
            table(self.checks, ["check", "expected", "measured", "ok"]),
            "",
            "normal patients' output, hostile run vs baseline (InfluxDB):",
            table(
                self.identity,
                [
                    "measurement",
                    "patients",
                    "points",
                    "timestamps equal",
                    "values bitwise equal",
                    "max |diff|",
                    "ok",
                ],
            ),
            "",
            "RESULT: " + ("PASS" if self.ok else "FAIL"),
        ]
        return "\n".join(parts)


def compare_series(base: RunResult, hot: RunResult, ids: list[str]) -> list[dict[str, Any]]:
    rows = []
    for meas in ("ecg", "ppg", "vitals"):
        n_points = n_t_eq = n_v_eq = n_vals = 0
        max_d, min_pts, ok = 0.0, math.inf, True
        for pid in ids:
            cb, vb = base.series[(pid, meas)]
            ch, vh = hot.series[(pid, meas)]
            min_pts = min(min_pts, len(vb))
            n_points += len(vh)
            if cb != ch or len(vb) != len(vh):
                ok = False
            for rb, rh in zip(vb, vh, strict=False):
                n_t_eq += rb[0] == rh[0]
                for a, b in zip(rb[1:], rh[1:], strict=False):
                    n_vals += 1
                    if a == b:
                        n_v_eq += 1
                    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
                        max_d = max(max_d, abs(float(a) - float(b)))
                    else:
                        max_d = math.inf
        n_base = sum(len(base.series[(pid, meas)][1]) for pid in ids)
        ok = ok and n_points == n_base and n_t_eq == n_points and n_v_eq == n_vals and min_pts > 0
        rows.append(
            {
                "measurement": meas,
                "patients": len(ids),
                "points": f"{n_base} / {n_points}",
                "timestamps equal": f"{n_t_eq}/{n_points}",
                "values bitwise equal": f"{n_v_eq}/{n_vals}",
                "max |diff|": f"{max_d:.3g}",
                "ok": "yes" if ok else "NO",
                "_ok": ok,
            }
        )
    return rows


def reconcile(base: RunResult, hot: RunResult, normal: Normal) -> Report:
    rows: list[dict[str, Any]] = []
    ok_all = True
    inv = {c: int(hot.delta(f'p2es_messages_invalid_total{{reason="{c}"}}')) for c in OUTCOMES}
    for c, v in m_invalid_all(hot.final).items():
        inv[c] = v - int(m_invalid(hot.base, c))
    rate_limited = inv.get("rate_limited", 0)
    got_mine = Counter({k: v for k, v in hot.dl_got.items() if k[0] in hot.topics})
    foreign = sum(v for k, v in hot.dl_got.items() if k[0] not in hot.topics)
    matched: Counter[str] = Counter()
    for k, v in hot.expected_dl.items():
        matched[k[1]] += min(v, got_mine[k])
    unexpected: Counter[str] = Counter()
    for k, v in got_mine.items():
        extra = v - hot.expected_dl.get(k, 0)
        if extra > 0:
            unexpected[k[1]] += extra
    dl_codes = [
        c
        for c in (*DEADLETTER_CODES, "rate_limited")
        if hot.sent[c] or inv.get(c) or unexpected[c] or c == "internal_error"
    ]
    for c in sorted(
        set(dl_codes) | {c for c in inv if inv[c]}, key=lambda c: OUTCOMES.index(c) if c in OUTCOMES else 99
    ):
        seen = matched[c] + unexpected[c]
        if c == "rate_limited":  # not in the corpus: any is accounted for when both sides agree
            ok = inv[c] == seen
        elif rate_limited:  # some of this class may have been refused by the budget instead
            ok = inv.get(c, 0) <= hot.sent[c] and matched[c] == inv.get(c, 0) and not unexpected[c]
        else:
            ok = hot.sent[c] == inv.get(c, 0) == matched[c] and not unexpected[c]
        ok_all &= ok
        rows.append(
            {
                "outcome": f"dead letter {c}",
                "sent (hostile)": hot.sent_hostile[c],
                "sent (normal)": hot.sent[c] - hot.sent_hostile[c],
                "engine metrics": inv.get(c, 0),
                "dead-letter topic": f"{matched[c]}"
                + (f" (+{unexpected[c]} unexpected)" if unexpected[c] else ""),
                "ok": "yes" if ok else "NO",
            }
        )
    for out, ev in STREAM_OUTCOMES.items():
        got = int(hot.delta(f'p2es_stream_events_total{{event="{ev}"}}'))
        ok = got == hot.sent[out] if not rate_limited else got <= hot.sent[out]
        ok_all &= ok
        rows.append(
            {
                "outcome": f"valid chunk: {out.replace('_', ' ')}",
                "sent (hostile)": hot.sent_hostile[out],
                "sent (normal)": hot.sent[out] - hot.sent_hostile[out],
                "engine metrics": got,
                "dead-letter topic": "-",
                "ok": "yes" if ok else "NO",
            }
        )
    got_prof = int(hot.delta('p2es_messages_valid_total{kind="profile"}'))
    ok = got_prof == hot.sent["profile"] if not rate_limited else got_prof <= hot.sent["profile"]
    ok_all &= ok
    rows.append(
        {
            "outcome": "valid profile",
            "sent (hostile)": hot.sent_hostile["profile"],
            "sent (normal)": hot.sent["profile"] - hot.sent_hostile["profile"],
            "engine metrics": got_prof,
            "dead-letter topic": "",
            "ok": "yes" if ok else "NO",
        }
    )
    total_sent = hot.n_hostile + hot.n_normal
    messages_in = int(hot.delta("p2es_messages_in_total"))
    counted = (
        sum(v for v in inv.values())
        + sum(int(hot.delta(f'p2es_stream_events_total{{event="{e}"}}')) for e in STREAM_OUTCOMES.values())
        + got_prof
    )
    ok = total_sent == messages_in == counted
    ok_all &= ok
    rows.append(
        {
            "outcome": "TOTAL (each message exactly one outcome)",
            "sent (hostile)": hot.n_hostile,
            "sent (normal)": hot.n_normal,
            "engine metrics": f"{counted} (messages in: {messages_in})",
            "dead-letter topic": f"{sum(matched.values()) + sum(unexpected.values())} of {sum(hot.expected_dl.values())}",
            "ok": "yes" if ok else "NO",
        }
    )

    checks: list[dict[str, Any]] = []

    def check(name: str, expected: Any, measured: Any, ok: bool) -> None:
        nonlocal ok_all
        ok_all &= ok
        checks.append(
            {"check": name, "expected": expected, "measured": measured, "ok": "yes" if ok else "NO"}
        )

    for ev in EVENTS:
        got = int(hot.delta(f'p2es_stream_events_total{{event="{ev}"}}'))
        check(
            f"stream event {ev}",
            hot.events[ev],
            got,
            got == hot.events[ev] or bool(rate_limited and got <= hot.events[ev]),
        )
    held = int(hot.delta('p2es_stream_events_total{event="chunks_in"}')) - sum(
        int(hot.delta(f'p2es_stream_events_total{{event="{e}"}}')) for e in STREAM_OUTCOMES.values()
    )
    check("valid chunks still held for re-ordering", 0, held, held == 0)
    for r in (base, hot):
        h = r.health
        check(f"{r.label}: engine process alive after the run", True, h.get("alive"), bool(h.get("alive")))
        check(f"{r.label}: /healthz", 200, h.get("healthz"), h.get("healthz") == 200)
        check(f"{r.label}: connected to the broker", 1, h.get("connected"), h.get("connected") == 1.0)
        check(
            f"{r.label}: drained (all processed, all dead letters seen)",
            True,
            h.get("drained"),
            bool(h.get("drained")),
        )
        check(f"{r.label}: clean stop (exit status)", 0, h.get("stop_rc"), h.get("stop_rc") == 0)
        n_err = len(h.get("error_lines", []))
        check(f"{r.label}: ERROR / Traceback lines in the engine log", 0, n_err, n_err == 0)
        nd = len(h.get("broker_drops", []))
        check(f"{r.label}: broker dropped messages for the engine / listener", 0, nd, nd == 0)
        wd = int(r.delta("p2es_windows_dropped_total"))
        check(f"{r.label}: windows dropped by back-pressure", 0, wd, wd == 0)
        check(f"{r.label}: metrics scrapes that failed", 0, len(r.scrape_failures), not r.scrape_failures)
    b_inv = sum(m_invalid_all(base.final).values()) - sum(m_invalid_all(base.base).values())
    check("baseline: dead letters", 0, b_inv, b_inv == 0)
    b_sent = base.n_normal
    b_in = int(base.delta("p2es_messages_in_total"))
    check("baseline: messages in == sent", b_sent, b_in, b_in == b_sent)
    for e in ("duplicates", "late", "overlaps_dropped", "seq_resets", "rate_changes", "breaks"):
        v = int(base.delta(f'p2es_stream_events_total{{event="{e}"}}'))
        check(f"baseline: stream {e}", 0, v, v == 0)
    check("dead letters that are not JSON", 0, hot.dl_not_json, hot.dl_not_json == 0)
    if hot.broker == "private":  # nobody else publishes there
        check("dead letters on topics this run did not publish", 0, foreign, foreign == 0)
    w_base = int(base.delta("p2es_windows_total"))
    check(
        "baseline: windows reconstructed (10 patients)",
        f">= {len(normal.pats)}",
        w_base,
        w_base >= len(normal.pats),
    )
    min_ecg = min(len(base.series[(pid, "ecg")][1]) for pid in normal.ids)
    want_ecg = int((normal.duration_s - 10) * 128)
    check("baseline: ECG points per normal patient", f">= {want_ecg}", min_ecg, min_ecg >= want_ecg)

    identity = compare_series(base, hot, normal.ids)
    for r in identity:
        ok_all &= bool(r.pop("_ok"))
    kinds = {k: dict(hot.kind_outcomes[k]) for k in sorted(hot.kinds)}
    summary = {
        "hostile_sent": hot.n_hostile,
        "normal_sent": hot.n_normal,
        "publish_s": hot.publish_s,
        "hostile_rate": hot.n_hostile / hot.publish_s if hot.publish_s else 0.0,
        "total_s": hot.total_s,
        "baseline_total_s": base.total_s,
        "engine": hot.engine_mode,
        "dead_letter_reasons": hot.dl_reasons,
        "error_lines": {"baseline": base.health.get("error_lines"), "hostile": hot.health.get("error_lines")},
        "broker_drops": {
            "baseline": base.health.get("broker_drops"),
            "hostile": hot.health.get("broker_drops"),
        },
        "scrape_failures": {"baseline": base.scrape_failures, "hostile": hot.scrape_failures},
        "stop_s": {"baseline": base.health.get("stop_s"), "hostile": hot.health.get("stop_s")},
    }
    return Report(ok_all, rows, checks, identity, kinds, summary)


async def run_bench(
    messages: int,
    *,
    seed: int = 0,
    normal_patients: int = 10,
    normal_seconds: float = 180.0,
    checkpoint: str | None = None,
    engine: str = "process",
    window: int = 400,
    publishers: int = 6,
    max_batch: int = 1,
    workdir: Path | None = None,
    progress_s: float = 5.0,
    self_check: int = 2000,
    keep_db: bool = False,
    broker: str = "private",
) -> Report:
    """The baseline and the hostile run, reconciled (what ``main`` prints).  ``broker``:
    "private" (a Mosquitto of its own, see :class:`PrivateBroker`) or "shared" (the test
    services' broker, where other clients' traffic may disturb the counts)."""
    if not services.port_open(services.HOST, services.mqtt_port()) or not services.influx_ping():
        say("starting the test services (scripts/services.sh start)")
        await asyncio.to_thread(services.start_services)
    workdir = workdir or (REPO / ".run" / "hostile")
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("P2ES_CACHE_DIR", str(workdir / "cache"))
    ckpt = checkpoint or await asyncio.to_thread(tiny_checkpoint, workdir)
    t_base = round(time.time(), 3)  # the device clock of the normal patients, in both runs
    hostile = Hostile(seed, t_base)
    normal = Normal(normal_patients, seed, normal_seconds, t_base)
    if self_check:
        eps = list(corpus(hostile, min(self_check, messages)))
        bad = check_offline(eps, t_base)
        if bad:
            raise RuntimeError("the corpus does not match the parser offline:\n" + "\n".join(bad))
        say(f"corpus self-check: {sum(map(len, eps))} messages behave offline as expected")
    kw: dict[str, Any] = dict(
        ckpt=ckpt,
        workdir=workdir,
        engine_mode=engine,
        window=window,
        publishers=publishers,
        max_batch=max_batch,
        progress_s=progress_s,
        keep_db=keep_db,
        broker=broker,
    )
    private = PrivateBroker(workdir / f"broker-{uuid.uuid4().hex[:6]}") if broker == "private" else None
    with private or contextlib.nullcontext():
        if private is not None:
            say(f"private Mosquitto on 127.0.0.1:{private.port} (scripts/mosquitto.sh)")
        base = await live_run("baseline", normal=normal, hostile=None, n_hostile=0, **kw)
        hot = await live_run("hostile", normal=normal, hostile=hostile, n_hostile=messages, **kw)
    return reconcile(base, hot, normal)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=100_000, help="hostile messages (default 100000)")
    ap.add_argument("--json", default=None, help="write the tables and counts as JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--normal-seconds", type=float, default=180.0, help="seconds of signal per normal patient"
    )
    ap.add_argument(
        "--checkpoint", default=None, help="checkpoint set (default: the tests' tiny one, trained once)"
    )
    ap.add_argument("--engine", choices=("process", "inproc"), default="process")
    ap.add_argument(
        "--window", type=int, default=400, help="messages outstanding at most (< the broker's 1000)"
    )
    ap.add_argument("--publishers", type=int, default=6, help="concurrent hostile MQTT clients")
    ap.add_argument("--max-batch", type=int, default=1, help="engine max_batch (1: bitwise identity)")
    ap.add_argument("--keep-db", action="store_true", help="keep the two InfluxDB databases")
    ap.add_argument(
        "--broker",
        choices=("private", "shared"),
        default="private",
        help="private: a Mosquitto of its own from scripts/mosquitto.sh (default); shared: the test services' one",
    )
    ap.add_argument("--self-check", type=int, default=2000, help="messages checked offline first (0 = none)")
    args = ap.parse_args(argv)
    if args.messages < 1:
        ap.error("--messages must be >= 1")
    t0 = time.monotonic()
    rep = asyncio.run(
        run_bench(
            args.messages,
            seed=args.seed,
            normal_seconds=args.normal_seconds,
            checkpoint=args.checkpoint,
            engine=args.engine,
            window=args.window,
            publishers=args.publishers,
            max_batch=args.max_batch,
            self_check=args.self_check,
            keep_db=args.keep_db,
            broker=args.broker,
        )
    )
    print()
    print(
        f"$ bench/hostile.py {' '.join(argv if argv is not None else sys.argv[1:])}   ({time.monotonic() - t0:.0f} s)"
    )
    print(rep.tables())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dataclasses.asdict(rep), indent=1, default=str))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
