"""Ingest: message parsing, per-patient streams (unit) and the MQTT service (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from fractions import Fraction

import aiomqtt
import numpy as np
import pytest
import services
from scipy.signal import resample_poly

from ingest import (
    IngestService,
    PatientStream,
    StreamConfig,
    StreamingResampler,
    StreamRegistry,
    signal_quality,
)
from ingest.stream import MAX_GAPS, MAX_SPANS
from p2es.contracts.ppg import (
    BIN_HEADER,
    MAX_PAYLOAD_BYTES,
    DeadLetter,
    ParsedPpg,
    ParsedProfile,
    PpgChunk,
    Profile,
    Window,
    decode_binary_chunk,
    encode_binary_chunk,
    parse_message,
)
from p2es.contracts.topics import DEADLETTER_TOPIC, ppg_topic, profile_topic
from wearable.sim import synthesize

T0 = 1_718_000_000.0
FS_MODEL = 128.0
HOP_N = 512


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _sim(seconds: float, fs: float = 1000.0, seed: int = 3, **kw) -> dict:
    return synthesize(1, seed, duration_s=seconds, fs=fs, rhythm_mix=kw.pop("rhythm", "sinus"), **kw)


_SIM_CACHE: dict[tuple, np.ndarray] = {}


def _ppg_at(fs: float, seconds: float = 60.0, seed: int = 3) -> np.ndarray:
    """The same simulated PPG at any device rate (anti-aliased from 1000 Hz, zero phase)."""
    key = (seconds, seed)
    if key not in _SIM_CACHE:
        _SIM_CACHE[key] = _sim(seconds, 1000.0, seed)["ppg"][0].astype(np.float64)
    x = _SIM_CACHE[key]
    fr = Fraction(fs).limit_denominator(1000) / 1000
    return x if fr == 1 else resample_poly(x, fr.numerator, fr.denominator)


def _chunks(x: np.ndarray, fs: float, sizes, *, t0: float = T0, seq0: int = 0) -> list[PpgChunk]:
    out, i, k = [], 0, 0
    sizes = list(sizes)
    while i < x.size:
        n = sizes[k % len(sizes)]
        out.append(PpgChunk(seq=seq0 + k, t0=t0 + i / fs, fs=fs, samples=x[i : i + n]))
        i += n
        k += 1
    return out


def _run(chunks, stream: PatientStream | None = None) -> list[Window]:
    st = stream or PatientStream("p1")
    out: list[Window] = []
    for c in chunks:
        out += st.push(c, now=0.0)
    return out


def _same_windows(a: list[Window], b: list[Window], atol: float = 0.0) -> None:
    assert len(a) == len(b) and a
    for p, q in zip(a, b):
        assert (p.segment, p.index, p.t0, p.seq_range, p.gaps) == (
            q.segment,
            q.index,
            q.t0,
            q.seq_range,
            q.gaps,
        )
        assert p.sqi == pytest.approx(q.sqi, abs=1e-6)
        np.testing.assert_allclose(p.samples, q.samples, rtol=0, atol=atol)


# ============================================================================ messages
def _json(**kw) -> bytes:
    base = {"seq": 0, "t0": T0, "fs": 100.0, "samples": [0.0, 1.0, 2.5]}
    base.update(kw)
    return json.dumps(base).encode()


def test_parse_valid_ppg_json_ignores_extra_keys() -> None:
    r = parse_message(
        "p2es/v1/patients/bed-7.A_1/ppg", _json(seq=5, device="w1", battery=0.8, samples=[1, 2.5, -3])
    )
    assert isinstance(r, ParsedPpg) and not r.binary
    assert r.patient_id == "bed-7.A_1"
    c = r.chunk
    assert (c.seq, c.t0, c.fs, c.device, c.n) == (5, T0, 100.0, "w1", 3)
    assert c.samples.dtype == np.float64 and c.samples.tolist() == [1.0, 2.5, -3.0]
    assert c.t_end == pytest.approx(T0 + 0.03)


def _nan_json() -> bytes:
    return b'{"seq": 1, "t0": 1718000000.0, "fs": 50, "samples": [1.0, NaN, 2.0]}'


@pytest.mark.parametrize(
    "topic, payload, code",
    [
        ("p2es/v1/patients/p1/ppg", b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized"),
        ("p2es/v1/patients/p1/ppg", b"\xff\xfe{}", "bad_utf8"),
        ("p2es/v1/patients/p1/ppg", b'{"seq": 1,', "bad_json"),
        ("p2es/v1/patients/p1/ppg", b"[1, 2]", "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(seq="1"), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(seq=True), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(seq=-1), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(t0="now"), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(t0=12.0), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(fs=24.9), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(fs=1001), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(samples=[]), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(samples=[1.0, "2"]), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(samples=[1.0, None]), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(samples=[0.0] * 1001), "invalid_ppg"),  # > 10 s at 100 Hz
        ("p2es/v1/patients/p1/ppg", _json(fs=1000, samples=[0.0] * 10_001), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(samples=[1e12]), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _json(device=5), "invalid_ppg"),
        ("p2es/v1/patients/p1/ppg", _nan_json(), "non_finite"),
        ("p2es/v1/patients/p1/ppg", _nan_json().replace(b"NaN", b"-Infinity"), "non_finite"),
        ("p2es/v1/patients/p1/profile", b'{"age": 130}', "invalid_profile"),
        ("p2es/v1/patients/p1/profile", b'{"sex": "X"}', "invalid_profile"),
        ("p2es/v1/patients/p1/profile", b'{"height_cm": "tall"}', "invalid_profile"),
        ("p2es/v1/patients/p1/profile", b"42", "invalid_profile"),
        ("p2es/v1/patients/p1/temperature", b"{}", "unknown_topic"),
        ("p2es/v1/patients/p1/ppg/extra", b"{}", "unknown_topic"),
        ("p2es/v2/patients/p1/ppg", _json(), "unknown_topic"),
        ("p2es/v1/patients/bad id!/ppg", _json(), "bad_patient_id"),
        ("p2es/v1/patients/" + "x" * 65 + "/ppg", _json(), "bad_patient_id"),
        ("p2es/v1/patients//ppg", _json(), "bad_patient_id"),
        ("p2es/v1/patients/p1/ppg/bin", b"P2PG", "bad_binary"),
        ("p2es/v1/patients/p1/ppg/bin", _json(), "bad_binary"),
    ],
)
def test_parse_rejects_with_reason(topic: str, payload: bytes, code: str) -> None:
    r = parse_message(topic, payload, received_at=123.5)
    assert isinstance(r, DeadLetter), r
    assert r.code == code, r.reason
    assert r.reason.startswith(code + ": ") and len(r.reason) > len(code) + 3
    assert (r.topic, r.received_at) == (topic, 123.5)
    assert len(r.payload_excerpt) <= 200
    assert set(json.loads(r.model_dump_json())) == {"topic", "reason", "received_at", "payload_excerpt"}


def test_parse_never_raises_on_garbage() -> None:
    rng = np.random.default_rng(0)
    topics = [
        "p2es/v1/patients/p1/ppg",
        "p2es/v1/patients/p1/ppg/bin",
        "p2es/v1/patients/p1/profile",
        "p2es/v1/patients/p1",
        "#",
        "",
    ]
    good_bin = encode_binary_chunk(1, T0, 100.0, np.arange(20.0))
    for i in range(600):
        kind = i % 3
        if kind == 0:
            payload = rng.bytes(int(rng.integers(0, 300)))
        else:  # corrupt valid payloads byte-wise
            b = bytearray(good_bin if kind == 1 else _json(samples=list(range(30))))
            for j in rng.integers(0, len(b), size=3):
                b[j] = int(rng.integers(0, 256))
            payload = bytes(b)
        r = parse_message(topics[i % len(topics)], payload)
        assert isinstance(r, (ParsedPpg, ParsedProfile, DeadLetter))
    assert isinstance(parse_message("p2es/v1/patients/p1/ppg", None), DeadLetter)
    dl = parse_message("p2es/v1/patients/p1/ppg", b"\xff" * 50)
    assert dl.payload_excerpt.startswith("base64:")


def test_profile_parse_partial_and_clear() -> None:
    r = parse_message(
        "p2es/v1/patients/p1/profile", b'{"age": 63, "sex": "F", "weight_kg": 70.5, "ward": "B"}'
    )
    assert isinstance(r, ParsedProfile)
    assert r.profile == Profile(age=63, sex="F", height_cm=None, weight_kg=70.5)
    assert r.profile.sex01 == 0
    r = parse_message("p2es/v1/patients/p1/profile", b'{"sex": null}')
    assert isinstance(r, ParsedProfile) and r.profile == Profile()
    r = parse_message("p2es/v1/patients/p1/profile", b"")  # retained message cleared
    assert isinstance(r, ParsedProfile) and r.profile is None


def test_binary_format_roundtrip_and_layout() -> None:
    x = np.array([0.5, -1.25, 3.0, 1e3])
    b = encode_binary_chunk(2**40, T0 + 0.125, 250.0, x)
    assert len(b) == BIN_HEADER.size + 4 * x.size == 52
    assert b[:4] == b"P2PG" and b[4] == 1 and b[5] == 0
    r = parse_message("p2es/v1/patients/p1/ppg/bin", b)
    assert isinstance(r, ParsedPpg) and r.binary
    assert (r.chunk.seq, r.chunk.t0, r.chunk.fs) == (2**40, T0 + 0.125, 250.0)
    np.testing.assert_array_equal(r.chunk.samples, x)
    # int16 with scale/offset: value = offset + scale * stored
    y = np.linspace(-2, 2, 101) + 1000.0
    b16 = encode_binary_chunk(7, T0, 100.0, y, encoding="i16", scale=1e-3, offset=1000.0)
    assert len(b16) == BIN_HEADER.size + 2 * y.size
    c = decode_binary_chunk(b16)
    np.testing.assert_allclose(c.samples, y, atol=1e-3)
    # framing and validation errors
    assert parse_message("p2es/v1/patients/p1/ppg/bin", b[:-1]).code == "bad_binary"
    assert parse_message("p2es/v1/patients/p1/ppg/bin", b"X" + b[1:]).code == "bad_binary"
    assert parse_message("p2es/v1/patients/p1/ppg/bin", b[:4] + b"\x02" + b[5:]).code == "bad_binary"
    nan = encode_binary_chunk(1, T0, 100.0, [1.0, np.nan])
    assert parse_message("p2es/v1/patients/p1/ppg/bin", nan).code == "non_finite"
    slow = encode_binary_chunk(1, T0, 10.0, [1.0])
    assert parse_message("p2es/v1/patients/p1/ppg/bin", slow).code == "invalid_ppg"


def test_window_json_roundtrip_is_bit_exact() -> None:
    ws = _run(_chunks(_ppg_at(100.0, 20.0), 100.0, [100]))
    w = ws[1]
    js = w.model_dump_json()
    assert len(js) < 4 * 1024 * 1.4 + 1000  # base64 float32, not a decimal list
    w2 = Window.model_validate_json(js)
    assert w2.samples.dtype == np.float32
    np.testing.assert_array_equal(w2.samples, w.samples)
    assert (w2.t0, w2.seq_range, w2.gaps, w2.sqi) == (w.t0, w.seq_range, w.gaps, w.sqi)
    w3 = Window.model_validate({**w.model_dump(), "samples": w.samples.tolist()})
    np.testing.assert_array_equal(w3.samples, w.samples)


# ============================================================================ stream
def test_windows_timestamps_exact_and_shape() -> None:
    ws = _run(_chunks(_ppg_at(100.0, 30.0), 100.0, [100]))
    assert [w.index for w in ws] == list(range(len(ws))) and len(ws) == 6  # [0,8) .. [20,28)
    for w in ws:
        assert w.t0 == T0 + w.index * HOP_N / FS_MODEL  # device clock, exact to the sample
        assert w.fs == FS_MODEL and w.samples.shape == (1024,) and w.samples.dtype == np.float32
        assert w.segment == 0 and w.gaps.filled == 0 and w.patient == "p1"
    assert ws[0].seq_range == (0, 7) and ws[1].seq_range == (4, 11)


def test_out_of_order_and_duplicates_give_identical_windows() -> None:
    x = _ppg_at(64.0, 40.0)
    ordered = _chunks(x, 64.0, [32, 16, 48])  # 0.25-0.75 s: swaps stay within 2 s
    ref = _run(ordered)
    rng = np.random.default_rng(1)
    shuffled = list(ordered)
    for i in range(0, len(shuffled) - 2, 3):  # local shuffles within the reorder budget
        j = i + int(rng.integers(1, 3))
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    noisy = []
    for c in shuffled:
        noisy.append(c)
        if rng.random() < 0.3:
            noisy.append(c)  # duplicate right away
    noisy[6:6] = [ordered[2], ordered[3]]  # late duplicates of released chunks
    st = PatientStream("p1")
    got = _run(noisy, st)
    _same_windows(got, ref)
    assert st.stats["duplicates"] >= 2 and st.stats["seq_skipped"] == 0
    # the first chunk arriving second still works (seq 0 is the start)
    first_swapped = [ordered[1], ordered[0]] + ordered[2:]
    _same_windows(_run(first_swapped), ref)


@pytest.mark.parametrize("rates", [(25.0, 64.0, 100.0, 125.0, 250.0, 500.0)])
def test_device_rates_agree_at_model_rate(rates) -> None:
    out = {}
    for fs in rates:
        x = _ppg_at(fs, 60.0)
        out[fs] = _run(_chunks(x, fs, [int(fs)]))
    ref = out[500.0]
    assert len(ref) >= 12
    for fs, ws in out.items():
        assert [w.t0 for w in ws] == [w.t0 for w in ref[: len(ws)]]
        assert len(ws) >= len(ref) - 1  # resampler latency differs by rate (< 1 s)
        for w, r in list(zip(ws, ref))[1:]:  # after the filter settles
            corr = np.corrcoef(w.samples, r.samples)[0, 1]
            assert corr > 0.99, (fs, w.index, corr)
        assert all(w.sqi > 0.7 for w in ws[1:])


def test_resampler_is_zero_delay_and_chunking_invariant() -> None:
    for fs_in in (25.0, 100.0, 99.97, 333.0, 1000.0):
        t = np.arange(int(20 * fs_in)) / fs_in
        x = np.sin(2 * np.pi * 1.7 * t) + 0.3 * np.sin(2 * np.pi * 5.3 * t + 1)
        one = StreamingResampler(fs_in, 128.0).push(x)
        rs = StreamingResampler(fs_in, 128.0)
        rng = np.random.default_rng(int(fs_in))
        parts, i = [], 0
        while i < x.size:
            n = int(rng.integers(1, 300))
            parts.append(rs.push(x[i : i + n]))
            i += n
        chunked = np.concatenate(parts)
        assert chunked.size == one.size > 0
        np.testing.assert_allclose(chunked, one, rtol=0, atol=1e-9)
        tj = np.arange(one.size) / 128.0
        truth = np.sin(2 * np.pi * 1.7 * tj) + 0.3 * np.sin(2 * np.pi * 5.3 * tj + 1)
        away = tj > 2.0  # away from the start
        assert np.abs(one[away] - truth[away]).max() < 2e-3, fs_in
        # bounded history whatever the input length
        assert rs.held() <= StreamingResampler.max_held(fs_in, 128.0, 16, 0.9)


def test_chunk_boundaries_do_not_change_windows() -> None:
    x = _ppg_at(250.0, 40.0)
    ref = _run(_chunks(x, 250.0, [2500]))  # 10 s chunks (the largest allowed)
    for sizes in ([1, 7, 250, 33, 1000, 2], [125], [2499, 3]):
        got = _run(_chunks(x, 250.0, sizes))
        for p, q in zip(got, ref):
            assert (p.t0, p.index) == (q.t0, q.index)
            np.testing.assert_allclose(p.samples, q.samples, rtol=0, atol=1e-6)
        assert len(got) == len(ref)


def _with_gap(gap_s: float, fs: float = 100.0):
    x = _ppg_at(fs, 40.0)
    cut_at, cut_n = int(15 * fs), int(round(gap_s * fs))
    chunks = []
    for c in _chunks(x, fs, [int(fs // 2)]):
        i = int(round((c.t0 - T0) * fs))
        if cut_at <= i < cut_at + cut_n:
            continue  # lost chunks (seq gap too)
        chunks.append(c)
    return chunks


def test_short_gap_is_filled_and_counted() -> None:
    ref = _run(_chunks(_ppg_at(100.0, 40.0), 100.0, [50]))
    chunks = _with_gap(0.5)  # one lost 0.5 s chunk ... plus shift to make it 0.3 s:
    # re-time the chunks after the hole 0.2 s earlier: 0.3 s of signal missing, clock continuous
    fixed = [c if c.t0 < T0 + 15 else c.model_copy(update={"t0": c.t0 - 0.2}) for c in chunks]
    st = PatientStream("p1")
    ws = _run(fixed, st)
    assert st.stats["gaps_filled"] == 1 and st.stats["filled_s"] == pytest.approx(0.3)
    assert st.stats["breaks"] == 0 and {w.segment for w in ws} == {0}
    assert [w.index for w in ws] == list(range(len(ws)))
    assert [w.t0 for w in ws] == [T0 + i * 4.0 for i in range(len(ws))]
    hit = [w for w in ws if w.gaps.filled]
    assert [w.index for w in hit] == [2, 3]  # [8, 16) and [12, 20) contain 15.0-15.3
    assert all(w.gaps.filled_s == pytest.approx(0.3) for w in hit)
    # untouched windows before the gap are identical to the gap-free stream
    _same_windows(ws[:2], ref[:2])


def test_long_gap_splits_the_stream() -> None:
    chunks = _with_gap(3.0)  # 15.0-18.0 s missing
    st = PatientStream("p1")
    ws = _run(chunks, st)
    assert st.stats["breaks"] == 1 and st.stats["gaps_filled"] == 0
    seg0 = [w for w in ws if w.segment == 0]
    seg1 = [w for w in ws if w.segment == 1]
    assert [w.index for w in seg0] == [0, 1] and seg1 and seg1[0].index == 0
    assert seg1[0].t0 == T0 + 18.0
    assert [w.t0 for w in seg1] == [T0 + 18.0 + 4.0 * i for i in range(len(seg1))]
    for w in ws:  # no window spans the hole
        assert w.t0 + 8.0 <= T0 + 15.0 or w.t0 >= T0 + 18.0


def test_rate_change_and_seq_reset_start_cleanly() -> None:
    a = _chunks(_ppg_at(100.0, 20.0), 100.0, [100])
    b = _chunks(_ppg_at(250.0, 20.0), 250.0, [250], t0=T0 + 20.0, seq0=0)  # reboot at 250 Hz
    st = PatientStream("p1")
    ws = _run(a + b, st)
    assert st.stats["seq_resets"] == 1 and st.stats["rate_changes"] == 1
    assert st.stats["late"] == 0 and st.stats["duplicates"] == 0
    assert {w.segment for w in ws} == {0, 1}
    assert [w.t0 for w in ws if w.segment == 1][:2] == [T0 + 20.0, T0 + 24.0]


def test_registry_idle_expiry_profiles_and_stale_flush() -> None:
    cfg = StreamConfig(idle_s=120.0, reorder_wait_s=2.0)
    reg = StreamRegistry(cfg)
    reg.set_profile("p1", Profile(age=70, sex="M"))
    chunks = _chunks(_ppg_at(100.0, 12.0), 100.0, [50])  # 24 x 0.5 s
    sent = chunks[:20] + chunks[21:23]  # seq 20 lost: 21 and 22 wait for it
    out = []
    for k, c in enumerate(sent):
        out += reg.push("p1", c, now=float(k))  # last push at t = 21
    st = reg.get("p1")
    assert st.pending_chunks == 2
    assert reg.flush_stale(now=22.0) == [] and st.pending_chunks == 2  # not stale yet
    out += reg.flush_stale(now=23.5)
    assert st.pending_chunks == 0 and st.stats["seq_skipped"] == 1 and st.stats["gaps_filled"] == 1
    assert out and all(w.demographics == Profile(age=70, sex="M") for w in out)
    reg.push("p2", chunks[0], now=100.0)
    assert reg.expire(now=100.0 + 119.0) == ["p1"]
    assert "p1" not in reg and "p2" in reg and len(reg) == 1
    assert reg.expire(now=100.0 + 120.0) == ["p2"] and len(reg) == 0
    assert reg.stats()["expired"] == 2 and reg.stats()["chunks_in"] == len(sent) + 1
    # the profile survives expiry; a returning patient starts a new stream with it
    w = []
    for c in _chunks(_ppg_at(100.0, 12.0), 100.0, [100], t0=T0 + 1000):
        w += reg.push("p1", c, now=500.0)
    assert w and w[0].demographics.age == 70 and w[0].t0 == T0 + 1000
    reg.set_profile("p1", None)
    assert reg.get("p1").profile is None


def test_registry_bounds_patients() -> None:
    reg = StreamRegistry(StreamConfig(), max_patients=3)
    c = _chunks(_ppg_at(100.0, 1.0), 100.0, [100])[0]
    for i in range(5):
        reg.push(f"p{i}", c, now=float(i))
    assert list(reg.streams) == ["p2", "p3", "p4"] and reg.evicted == 2


def test_memory_bound_holds_under_flood() -> None:
    st = PatientStream("p1")
    bound = st.max_held_samples
    assert bound < 30_000  # ~0.25 MB of float64
    rng = np.random.default_rng(7)
    t, seq = T0, 0
    for k in range(900):
        fs = 1000.0 if k < 600 else 25.0
        n = int(rng.choice([1, 10, 500, 10_000])) if fs == 1000 else int(rng.integers(1, 250))
        x = rng.standard_normal(n) * 100
        if rng.random() < 0.2:
            t += float(rng.choice([0.2, 0.7, 5.0]))  # gaps, short and long
        s = seq + int(rng.choice([0, 0, 0, 1, 3, 40]))  # skipped / far-future seqs
        if rng.random() < 0.1:
            s = max(0, seq - int(rng.integers(1, 30)))  # late / duplicate seqs
        st.push(PpgChunk(seq=s, t0=t, fs=fs, samples=x), now=float(k))
        t += n / fs
        seq = max(seq, s) + 1
        assert st.held_samples() <= bound
        assert st.pending_chunks <= st.config.reorder_max_chunks
        seg = st._seg
        if seg is not None:
            assert len(seg.spans) <= MAX_SPANS and len(seg.gaps) <= MAX_GAPS
    assert st.stats["windows"] > 0 and st.stats["chunks_in"] == 900


def test_signal_quality_index() -> None:
    d = synthesize(6, 11, duration_s=24, fs=FS_MODEL, rhythm_mix="sinus")
    clean = [signal_quality(d["ppg"][k, 1024:2048].astype(float), FS_MODEL)[0] for k in range(6)]
    assert np.median(clean) > 0.8 and min(clean) > 0.5
    rng = np.random.default_rng(0)
    noise = [signal_quality(rng.standard_normal(1024), FS_MODEL)[0] for _ in range(8)]
    assert np.median(noise) < 0.5
    assert signal_quality(np.full(1024, 3.0), FS_MODEL)[0] == 0.0  # flat line
    x = d["ppg"][0, 1024:2048].astype(float)
    lo, hi = np.percentile(x, [30, 70])
    q_clip, parts = signal_quality(np.clip(x, lo, hi), FS_MODEL)
    assert parts["artifact"] < 0.7 and q_clip < 0.5 * clean[0]
    inv = np.zeros(1024, dtype=bool)
    inv[:256] = True
    assert signal_quality(x, FS_MODEL, invalid=inv)[1]["artifact"] == pytest.approx(0.75)


# ============================================================================ service (MQTT)
def _svc(host: str, port: int, **kw) -> IngestService:
    kw.setdefault("session_expiry_s", 60)
    kw.setdefault("reconnect_min_s", 0.1)
    kw.setdefault("reconnect_max_s", 1.0)
    kw.setdefault("tick_s", 0.2)
    return IngestService(f"mqtt://{host}:{port}", client_id=f"p2es-test-ingest-{_uid()}", **kw)


def _pub_client(host: str, port: int) -> aiomqtt.Client:
    return aiomqtt.Client(
        host, port, identifier=f"p2es-test-pub-{_uid()}", protocol=aiomqtt.ProtocolVersion.V5
    )


async def _publish_chunks(client: aiomqtt.Client, pid: str, chunks, *, binary=False) -> None:
    for c in chunks:
        if binary:
            payload = encode_binary_chunk(c.seq, c.t0, c.fs, c.samples)
        else:
            payload = json.dumps(
                {"seq": c.seq, "t0": c.t0, "fs": c.fs, "samples": c.samples.tolist(), "device": "sim"}
            ).encode()
        await client.publish(ppg_topic(pid, binary=binary), payload, qos=1)


async def _collect(svc: IngestService, n: int, timeout: float, pred=lambda w: True) -> list[Window]:
    got: list[Window] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            w = await svc.windows.get()
            if pred(w):
                got.append(w)
    return got


def test_service_end_to_end_json_binary_profile(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    pa, pb = f"t-{_uid()}-a", f"t-{_uid()}-b"
    d = synthesize(1, 21, duration_s=30, fs=100.0, rhythm_mix="sinus")
    x = d["ppg"][0].astype(np.float64)
    age, sex = float(d["age"][0]), "M" if int(d["sex"][0]) == 1 else "F"
    profile = {
        "age": round(age, 1),
        "sex": sex,
        "height_cm": round(float(d["height_cm"][0]), 1),
        "weight_kg": round(float(d["weight_kg"][0]), 1),
    }
    t0 = time.time() - 40.0
    chunks = _chunks(x, 100.0, [100], t0=t0)  # 30 x 1 s
    expected = _run(_chunks(x, 100.0, [100], t0=t0))
    expected32 = _run(_chunks(x.astype(np.float32).astype(np.float64), 100.0, [100], t0=t0))

    async def main() -> tuple[list[Window], list[Window], dict]:
        async with _pub_client(host, port) as pub:
            # retained profile published before the service exists
            await pub.publish(profile_topic(pa), json.dumps(profile).encode(), qos=1, retain=True)
            try:
                async with _svc(host, port) as svc:
                    await svc.wait_connected()
                    await _publish_chunks(pub, pa, chunks)
                    await _publish_chunks(pub, pb, chunks, binary=True)
                    got = await _collect(svc, 12, 20.0, lambda w: w.patient in (pa, pb))
                    async with asyncio.timeout(10):  # the last chunks complete no window
                        while svc.counters()["ppg_json"] + svc.counters()["ppg_bin"] < 60:
                            await asyncio.sleep(0.02)
                    counters = svc.counters()
            finally:
                await pub.publish(profile_topic(pa), b"", qos=1, retain=True)  # clear
        return ([w for w in got if w.patient == pa], [w for w in got if w.patient == pb], counters)

    wa, wb, counters = asyncio.run(main())
    assert len(wa) == len(wb) == len(expected) == 6
    for a, b, e, e32 in zip(wa, wb, expected, expected32):
        assert a.t0 == b.t0 == e.t0 == t0 + a.index * 4.0
        np.testing.assert_array_equal(a.samples, e.samples)  # JSON floats round-trip exactly
        np.testing.assert_array_equal(b.samples, e32.samples)  # binary float32 samples
        assert a.demographics == Profile(**profile) and b.demographics is None
        assert a.device == "sim" and a.sqi > 0.5
    assert counters["ppg_json"] >= 30 and counters["ppg_bin"] >= 30
    assert counters["windows_out"] >= 12 and counters["invalid_total"] == 0
    assert counters["connected"] and 0 < counters["lag_s"][pa] < 60


def test_service_dead_letters_and_keeps_running(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    pid = f"t-{_uid()}"
    bad = [
        (ppg_topic(pid), b"{not json", "bad_json"),
        (ppg_topic(pid), b"[" + b"1.0," * (MAX_PAYLOAD_BYTES // 4) + b"1.0]", "oversized"),
        (ppg_topic(pid), b'{"seq": 0, "t0": 1718000000.0, "fs": 100, "samples": [NaN, NaN]}', "non_finite"),
        (
            ppg_topic(pid),
            json.dumps({"seq": "zero", "t0": T0, "fs": 100, "samples": [1.0]}).encode(),
            "invalid_ppg",
        ),
        (f"p2es/v1/patients/{pid}/temperature", b"{}", "unknown_topic"),
        (f"p2es/v1/patients/{pid} x/ppg", b"{}", "bad_patient_id"),
        (ppg_topic(pid, binary=True), b"P2PG\x01", "bad_binary"),
        (profile_topic(pid), b'{"age": -4}', "invalid_profile"),
    ]
    chunks = _chunks(_ppg_at(100.0, 20.0), 100.0, [100], t0=time.time() - 30)

    async def main():
        async with _pub_client(host, port) as pub, _pub_client(host, port) as watch:
            await watch.subscribe(DEADLETTER_TOPIC, qos=1)
            async with _svc(host, port) as svc:
                await svc.wait_connected()
                for topic, payload, _ in bad:
                    await pub.publish(topic, payload, qos=1)
                await _publish_chunks(pub, pid, chunks)
                letters = []
                async with asyncio.timeout(10):
                    async for m in watch.messages:
                        dl = json.loads(m.payload)
                        if pid in dl["topic"]:
                            letters.append(dl)
                        if len(letters) == len(bad):
                            break
                ws = await _collect(svc, 3, 10.0, lambda w: w.patient == pid)
                async with asyncio.timeout(10):  # the last PUBACK may trail its delivery
                    while svc.counters()["deadletters_published"] < len(bad):
                        await asyncio.sleep(0.02)
                return letters, ws, svc.counters(), svc.running

    letters, ws, counters, running = asyncio.run(main())
    assert running
    assert [dl["topic"] for dl in letters] == [t for t, _, _ in bad]  # QoS 1, in order
    for dl, (_, _, code) in zip(letters, bad):
        assert set(dl) == {"topic", "reason", "received_at", "payload_excerpt"}
        assert dl["reason"].startswith(code + ":"), dl["reason"]
        assert abs(dl["received_at"] - time.time()) < 60
    for code in {c for _, _, c in bad}:
        assert counters["invalid"].get(code, 0) >= 1
    assert counters["deadletters_published"] >= len(bad)
    assert [w.index for w in ws] == [0, 1, 2]


def test_service_reconnects_after_broker_restart(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    pid = f"t-{_uid()}"
    t0 = time.time() - 60
    chunks = _chunks(_ppg_at(100.0, 30.0), 100.0, [100], t0=t0)

    async def main():
        async with _svc(host, port) as svc:
            await svc.wait_connected()
            async with _pub_client(host, port) as pub:
                await _publish_chunks(pub, pid, chunks[:13])
            before = await _collect(svc, 2, 10.0, lambda w: w.patient == pid)
            await asyncio.to_thread(services.restart_mosquitto)
            # published while the service may still be reconnecting: the persistent session
            # (clean_start=False + session expiry) queues them for it
            async with _pub_client(host, port) as pub:
                await _publish_chunks(pub, pid, chunks[13:])
            after = await _collect(svc, 4, 20.0, lambda w: w.patient == pid)
            return before, after, svc.counters()

    before, after, counters = asyncio.run(main())
    ws = before + after
    assert [w.index for w in ws] == list(range(6)) and {w.segment for w in ws} == {0}
    assert [w.t0 for w in ws] == [t0 + 4.0 * i for i in range(6)]
    assert counters["connects"] >= 2 and counters["disconnects"] >= 1
    assert counters["stream"]["gaps_filled"] == 0 and counters["stream"]["breaks"] == 0


def test_service_session_keeps_messages_published_while_away(mqtt_broker: tuple[str, int]) -> None:
    """clean_start=False + session expiry: what is published while the service is down (or
    reconnecting) is delivered when it comes back under the same client id."""
    host, port = mqtt_broker
    pid = f"t-{_uid()}"
    client_id = f"p2es-test-ingest-{_uid()}"
    chunks = _chunks(_ppg_at(100.0, 14.0), 100.0, [100], t0=time.time() - 30)

    async def main():
        svc = IngestService(f"mqtt://{host}:{port}", client_id=client_id, session_expiry_s=60)
        async with svc:
            await svc.wait_connected()
        assert not svc.connected.is_set()
        async with _pub_client(host, port) as pub:  # nobody is connected as client_id now
            await _publish_chunks(pub, pid, chunks)
        svc2 = IngestService(f"mqtt://{host}:{port}", client_id=client_id, session_expiry_s=60)
        async with svc2:
            return await _collect(svc2, 2, 10.0, lambda w: w.patient == pid)

    ws = asyncio.run(main())
    assert [w.index for w in ws] == [0, 1]


def test_parse_url() -> None:
    from p2es.transport.mqtt import parse_url

    assert parse_url("mqtt://broker") == ("broker", 1883, False, None, None)
    assert parse_url("mqtts://u%40x:p%3Aw@b.example:9883") == ("b.example", 9883, True, "u@x", "p:w")
    with pytest.raises(ValueError):
        parse_url("http://broker")
    svc_tls = IngestService("mqtts://b.example", username="a", password="b")
    ep = svc_tls.endpoint
    assert ep.tls_context is not None and (ep.username, ep.port) == ("a", 8883)
