"""sink/: line-protocol serializer, spool and Writer, against the REAL InfluxDB of scripts/.

The service tests use the InfluxDB 1.6.7 started by `scripts/services.sh` (fixture
`influxdb`), write through the real `/write` endpoint and read back with InfluxQL. No test
fakes InfluxDB. Every test writes its own patient/measurement names (uuid), so runs do not see
each other's data. The outage test stops and restarts that InfluxDB (~40 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import services

from p2es.leads import LEADS
from sink import (
    PermanentWriteError,
    Point,
    RetryableWriteError,
    Spool,
    SpoolLockedError,
    V1Transport,
    V2Transport,
    Writer,
    WriterClosedError,
    ecg_lines,
    escape_measurement,
    escape_tag_value,
    format_field_value,
    line,
    make_transport,
    ppg_lines,
    sample_times_ns,
    to_lines,
    vitals_line,
)
from sink.lineprotocol import alert_line
from sink.writer import parse_retry_after

T0 = 1_700_000_000_000_000_000  # a device t0 in ns


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def ecg_block(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, size=(12, n)).astype(np.float32)


def ecg_rows(patient: str, measurement: str = "ecg") -> list[dict]:
    rows = services.influx_points(
        f"SELECT * FROM \"{measurement}\" WHERE patient='{patient}' ORDER BY time ASC"
    )
    return rows


def count_points(patient: str, measurement: str = "ecg", field: str = "I") -> int:
    rows = services.influx_points(f'SELECT count("{field}") FROM "{measurement}" WHERE patient=\'{patient}\'')
    return int(rows[0]["count"]) if rows else 0


def assert_ecg_exact(rows: list[dict], t0: int, fs: float, ecg: np.ndarray) -> None:
    """Every sample present exactly once, exact timestamps, float32 values bit-exact."""
    want_t = sample_times_ns(t0, fs, ecg.shape[1])
    got_t = np.array([r["time"] for r in rows], dtype=np.int64)
    assert len(got_t) == len(want_t)
    assert np.array_equal(got_t, want_t)
    for k, lead in enumerate(LEADS):
        got = np.array([r[lead] for r in rows], dtype=np.float64).astype(np.float32)
        assert np.array_equal(got, ecg[k]), lead


class RecordingV1(V1Transport):
    """The real V1 transport, remembering the bodies InfluxDB accepted (in order)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.accepted: list[bytes] = []

    def write(self, body: bytes) -> None:
        super().write(body)
        self.accepted.append(body)


def run(coro):
    return asyncio.run(coro)


# ============================================================================ serializer


def test_escaping_names_tags_and_fields():
    assert escape_measurement("ecg") == "ecg"
    assert escape_measurement("my m,x") == r"my\ m\,x"
    assert escape_measurement("a=b") == "a=b"  # '=' needs no escape in a measurement
    assert escape_tag_value('bed 7,ward=A"x') == r'bed\ 7\,ward\=A"x'
    assert escape_tag_value(r"C:\ward") == r"C:\ward"  # a lone backslash is literal
    assert format_field_value('say "hi" \\ bye\nnext') == r'"say \"hi\" \\ bye\\nnext"'
    assert format_field_value(True) == "true" and format_field_value(np.bool_(False)) == "false"
    assert format_field_value(5) == "5i" and format_field_value(np.int16(-3)) == "-3i"
    assert format_field_value(0.1) == "0.1" and format_field_value(np.float64(1e-300)) == "1e-300"
    assert format_field_value(np.float32(0.5)) == "0.5"
    assert format_field_value(float("nan")) is None and format_field_value(float("inf")) is None
    assert format_field_value(None) is None
    with pytest.raises(ValueError):
        format_field_value(2**63)
    with pytest.raises(TypeError):
        format_field_value([1])
    # tags sorted, empty/None tags left out, NaN fields left out, key escaping
    got = line(
        "m x", {"z": "1", "a b": "v=1", "e": "", "n": None}, {"f=1": 1.5, "nan": float("nan"), "s": "ok"}, 42
    )
    assert got == r'm\ x,a\ b=v\=1,z=1 f\=1=1.5,s="ok" 42'
    assert line("m", {"p": "x"}, {"a": float("nan")}, 1) == ""  # no field left: no line
    assert line("m", None, {"a": 1.0}) == "m a=1.0"  # no timestamp: server time
    for bad in ("", "a\nb", "end\\", "a\\,b", "a\\\\b", "cr\r"):
        with pytest.raises(ValueError):
            escape_tag_value(bad)
    with pytest.raises(ValueError):
        escape_measurement("#comment")
    with pytest.raises(TypeError):
        line("m", None, {"a": 1.0}, 1.5)  # timestamps are integer ns


def test_to_lines_accepts_text_points_and_mixtures():
    assert to_lines("") == ""
    assert to_lines("a v=1 1") == "a v=1 1\n"
    assert to_lines("a v=1 1\n\nb v=2 2\n") == "a v=1 1\nb v=2 2\n"
    assert to_lines(b"a v=1 1\n") == "a v=1 1\n"
    p = Point("m", {"v": 1.0}, {"patient": "p"}, 5)
    assert to_lines(p) == "m,patient=p v=1.0 5\n"
    assert to_lines(["a v=1 1\n", p, Point("m", {"v": None}, {}, 6)]) == "a v=1 1\nm,patient=p v=1.0 5\n"
    with pytest.raises(TypeError):
        to_lines([1.0])


def test_sample_times_are_exact_integers():
    assert sample_times_ns(T0, 128, 4).tolist() == [T0, T0 + 7_812_500, T0 + 15_625_000, T0 + 23_437_500]
    assert sample_times_ns(0, 360, 4).tolist() == [0, 2_777_778, 5_555_556, 8_333_333]
    assert sample_times_ns(0, 62.5, 3).tolist() == [0, 16_000_000, 32_000_000]
    assert sample_times_ns(0, 360, 2, start=2).tolist() == [5_555_556, 8_333_333]
    big = sample_times_ns(T0, 128.0, 128 * 3600 * 24)  # a day at 128 Hz: no float drift
    assert int(big[-1]) == T0 + (128 * 3600 * 24 - 1) * 7_812_500
    with pytest.raises(ValueError):
        sample_times_ns(0, 0.0, 3)


def test_ecg_ppg_vitals_alert_lines():
    ecg = ecg_block(3)
    text = ecg_lines("bed 1", T0, 128.0, ecg)
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 3
    assert lines[1].startswith(r"ecg,patient=bed\ 1 I=")
    assert lines[1].endswith(f" {T0 + 7_812_500}")
    keys = [kv.split("=")[0] for kv in lines[0].split(" ")[2].split(",")]
    assert keys == list(LEADS)
    # float32 is written with 9 significant digits: reads back to the identical float32
    vals = [float(kv.split("=")[1]) for kv in lines[0].split(" ")[2].split(",")]
    assert np.array_equal(np.array(vals, dtype=np.float32), ecg[:, 0])
    # float64 with repr: reads back to the identical double
    e64 = ecg.astype(np.float64) / 3.0
    vals = [
        float(kv.split("=")[1])
        for kv in ecg_lines("p", T0, 128, e64).splitlines()[0].split(" ")[1].split(",")
    ]
    assert np.array_equal(np.array(vals), e64[:, 0])
    # NaN samples: the field is left out of the point; an all-NaN sample gives no point
    ecg[2, 1] = np.nan
    ecg[:, 2] = np.nan
    lines = ecg_lines("p", T0, 128.0, ecg).splitlines()
    assert len(lines) == 2 and "III=" not in lines[1] and "aVR=" in lines[1]
    with pytest.raises(ValueError):
        ecg_lines("p", T0, 128.0, np.zeros((8, 5)))
    assert ecg_lines("p", T0, 128.0, np.zeros((12, 0))) == ""
    assert ppg_lines("p", 0, 64.0, [1, 2.5]) == "ppg,patient=p value=1 0\nppg,patient=p value=2.5 15625000\n"
    assert ppg_lines("p", 0, 64.0, [3.0], start=2) == "ppg,patient=p value=3 31250000\n"
    v = vitals_line("p", 9, {"hr_bpm": 61, "qtc_ms": float("nan")}, sqi=np.float32(0.75), uncertainty=None)
    assert v == "vitals,patient=p hr_bpm=61.0,sqi=0.75 9\n"  # ints become floats, NaN omitted
    assert vitals_line("p", 9, hr_bpm=float("nan")) == ""
    a = alert_line("p", "brady", "high", 7, state="firing", value=38.0, message='HR "38"')
    assert (
        a == 'alerts,patient=p,priority=high,rule=brady state="firing",message="HR \\"38\\"",value=38.0 7\n'
    )


def test_escaped_names_round_trip_through_influxdb(influxdb):
    url, db = influxdb
    meas = uid("esc m,x")  # comma and space in a measurement
    tags = {"patient": 'bed 7,ward=A"q', "k=ey": r"C:\ward"}
    fields = {
        "f,i e=ld": 1.25,
        "s": 'quote " backslash \\ newline\nend',
        "i": 7,
        "b": True,
        "tiny": 5e-324,
        "big": 1.7976931348623157e308,
        "third": 1 / 3,
    }
    tr = V1Transport(url, db)
    try:
        tr.write((line(meas, tags, fields, T0) + "\n").encode())
    finally:
        tr.close()
    rows = services.influx_points(f'SELECT * FROM "{meas}"', db)
    assert len(rows) == 1
    r = rows[0]
    assert r["time"] == T0
    assert r["patient"] == tags["patient"] and r["k=ey"] == tags["k=ey"]
    for k, v in fields.items():
        if isinstance(v, str):
            v = v.replace("\n", "\\n")  # a line break is stored as the two characters \n
        assert r[k] == v, k


# ============================================================================ spool


def test_spool_order_cursor_restart_and_lock(tmp_path):
    d = tmp_path / "spool"
    sp = Spool(d, max_bytes=1 << 20, segment_bytes=200)
    for i in range(10):
        sp.append(f"rec {i}\n".encode() * 5, tag=i)
    with pytest.raises(SpoolLockedError):
        Spool(d)
    r = sp.peek()
    assert r.tag == 0 and sp.ack(r.pos)
    assert not sp.ack(r.pos)  # a stale position acknowledges nothing
    r = sp.peek()
    assert r.tag == 1 and sp.ack(r.pos)
    sp.close()
    sp = Spool(d, max_bytes=1 << 20, segment_bytes=200)  # the restart replays what is left
    assert [sp.peek().tag] == [2] and sp.pending_records == 8 and sp.max_tag() == 9
    got = []
    while (r := sp.peek()) is not None:
        got.append(r.tag)
        assert r.payload == f"rec {r.tag}\n".encode() * 5
        sp.ack(r.pos)
    assert got == list(range(2, 10))
    assert sp.empty and sp.disk_bytes == 0
    sp.close()
    assert [p.name for p in d.glob("*.seg")] == []  # read segments are deleted


def test_spool_torn_last_record_is_dropped_cleanly(tmp_path):
    d = tmp_path / "spool"
    sp = Spool(d)
    for i in range(3):
        sp.append(f"good {i}\n".encode(), tag=i)
    sp.close()
    seg = sorted(d.glob("*.seg"))[-1]
    good_size = seg.stat().st_size
    # a crash mid-append: header promises 1000 bytes, 10 made it to disk
    with open(seg, "ab") as f:
        f.write(b"P2S1" + (1000).to_bytes(4, "little") + b"\0" * 12 + b"x" * 10)
    sp = Spool(d)
    assert sp.torn_records == 1 and sp.torn_bytes == 30
    assert seg.stat().st_size == good_size  # truncated back to the last whole record
    sp.append(b"after\n", tag=3)
    got = []
    while (r := sp.peek()) is not None:
        got.append(r.payload)
        sp.ack(r.pos)
    assert got == [b"good 0\n", b"good 1\n", b"good 2\n", b"after\n"]
    sp.close()
    # a complete-looking last record whose bytes are garbage (CRC mismatch) is dropped too
    sp = Spool(d)
    sp.append(b"keep\n", tag=1)
    sp.append(b"flip\n", tag=2)
    sp.close()
    seg = sorted(d.glob("*.seg"))[-1]
    raw = bytearray(seg.read_bytes())
    raw[-2] ^= 0xFF
    seg.write_bytes(bytes(raw))
    sp = Spool(d)
    assert sp.torn_records == 1 and sp.pending_records == 1 and sp.peek().payload == b"keep\n"
    sp.close()


def test_spool_bound_drops_oldest_and_counts(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=4000, segment_bytes=1000)
    payload = b"x" * 180  # 200 bytes with the header: 5 per segment
    for i in range(40):
        sp.append(payload, tag=i)
    assert sp.disk_bytes <= 4000
    assert sp.dropped_records == 40 - sp.pending_records > 0
    tags = []
    while (r := sp.peek()) is not None:
        tags.append(r.tag)
        sp.ack(r.pos)
    assert tags == list(range(40 - len(tags), 40))  # the newest survive, in order
    assert sp.append(b"y" * 5000) is None and sp.dropped_records == 40 - len(tags) + 1
    sp.close()


# ============================================================================ writer (no DB)


def test_backoff_and_retry_after(tmp_path):
    w = Writer(V1Transport("http://127.0.0.1:9"), tmp_path / "sp", rng=random.Random(1))
    d0 = [w.backoff_delay(0) for _ in range(200)]
    d3 = [w.backoff_delay(3) for _ in range(200)]
    d9 = [w.backoff_delay(9) for _ in range(200)]
    assert 0 <= min(d0) and max(d0) <= 0.5 and max(d0) > 0.4  # full jitter: uniform(0, 0.5)
    assert max(d3) <= 4.0 and min(d3) < 1.0
    assert max(d9) <= 30.0 and max(d9) > 25.0  # capped at 30 s
    assert w.backoff_delay(0, retry_after=45.0) == 45.0  # Retry-After is honoured
    assert w.backoff_delay(0, retry_after=1e6) == 300.0  # ... up to max_retry_after
    run(w.close())
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = time.time() + 20
    from email.utils import formatdate

    assert 15 < parse_retry_after(formatdate(when, usegmt=True)) <= 20


def test_put_batches_by_size_and_spools_when_queue_full(tmp_path):
    async def main():
        w = Writer(V1Transport(closed_port_url()), tmp_path / "sp", batch_lines=100, max_queue_batches=2)
        await w.put("".join(f"m v={i} {i}\n" for i in range(250)))
        assert [b.lines for b in w._mem] == [100, 100] and w.counters["pending_points"] == 50
        await w.put("".join(f"m v={i} {i}\n" for i in range(250, 300)))  # seals a third batch
        # queue full: nothing blocks or drops; everything moved to the spool, in order
        assert w.counters["queue_batches"] == 0 and w.counters["spool_records"] == 3
        await w.close()  # never started: all stays in the spool
        with pytest.raises(WriterClosedError):
            await w.put("m v=1 1")
        sp = Spool(tmp_path / "sp")
        got = []
        while (r := sp.peek()) is not None:
            got.append(r.payload.decode())
            sp.ack(r.pos)
        sp.close()
        assert "".join(got) == "".join(f"m v={i} {i}\n" for i in range(300))

    run(main())


def test_v2_transport_builds_the_influxdb_client_write_call():
    """No InfluxDB 2.x/3.x server can be installed here and none is faked: this checks the
    influxdb-client call V2Transport makes (org, bucket, ns precision, our bytes unchanged),
    down to the WriteService request, and its error mapping on real HTTP answers."""
    from influxdb_client.domain.write_precision import WritePrecision

    body = ecg_lines("p 1", T0, 128.0, ecg_block(3)).encode()
    tr = V2Transport("http://127.0.0.1:9", "ward-org", "ward-bucket", "tok", timeout=2.0)
    calls = []
    real_write = tr._write_api.write
    tr._write_api.write = lambda **kw: calls.append(kw)
    tr.write(body)
    assert calls == [
        {"bucket": "ward-bucket", "org": "ward-org", "record": body, "write_precision": WritePrecision.NS}
    ]
    # one level down: influxdb-client passes the text through to POST /api/v2/write
    tr._write_api.write = real_write
    posted = []
    tr._write_api._write_service.post_write = lambda **kw: posted.append(kw)
    tr.write(body)
    assert len(posted) == 1
    p = posted[0]
    assert (p["org"], p["bucket"], p["precision"]) == ("ward-org", "ward-bucket", WritePrecision.NS)
    assert p["body"] == body and p["content_type"].startswith("text/plain")
    tr.close()
    t2 = make_transport("http://x:8086", token="t", org="o")
    assert isinstance(t2, V2Transport) and t2.bucket == "p2es"
    t2.close()
    assert isinstance(make_transport("http://x:8086"), V1Transport)


def test_v2_transport_error_mapping_on_real_http(influxdb):
    url, db = influxdb
    # InfluxDB 1.6.7 has no /api/v2/write: a real 404, which can never succeed -> permanent
    tr = V2Transport(url, "o", db, "tok", timeout=5.0)
    with pytest.raises(PermanentWriteError) as e:
        tr.write(b"v2probe v=1 1\n")
    assert e.value.status == 404
    tr.close()
    tr = V2Transport(closed_port_url(), "o", db, "tok", timeout=2.0)
    with pytest.raises(RetryableWriteError):
        tr.write(b"v2probe v=1 1\n")
    tr.close()


# ============================================================================ writer + InfluxDB


def test_ecg_round_trip_every_sample_once(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("rt")
    ecg = ecg_block(3000, seed=1)
    ppg = np.random.default_rng(2).normal(size=640)

    async def main():
        async with Writer(V1Transport(url, db), tmp_path / "sp", batch_lines=1000, flush_interval=0.2) as w:
            # three overlapping windows, as the engine emits them: overlap rewrites, not duplicates
            for start in (0, 1000, 1500):
                await w.put(ecg_lines(pid, T0, 128.0, ecg[:, start : start + 1500], start=start))
            await w.put(ppg_lines(pid, T0, 64.0, ppg))
            await w.put(vitals_line(pid, T0, hr_bpm=72.5, qtc_ms=float("nan"), sqi=0.9))
            await w.flush(timeout=30)
            c = w.counters
            assert c["points_written"] == c["points_accepted"] == 3 * 1500 + 640 + 1
            assert c["batches_retried"] == 0 and c["dead_letters"] == 0
        return c

    run(main())
    assert_ecg_exact(ecg_rows(pid), T0, 128.0, ecg)
    prow = ecg_rows(pid, "ppg")
    assert [r["time"] for r in prow] == sample_times_ns(T0, 64.0, 640).tolist()
    assert [r["value"] for r in prow] == ppg.tolist()
    vrow = ecg_rows(pid, "vitals")
    assert (
        len(vrow) == 1
        and vrow[0]["hr_bpm"] == 72.5
        and vrow[0].get("qtc_ms") is None
        and vrow[0]["sqi"] == 0.9
    )


def test_same_batch_twice_leaves_one_copy(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("dup")
    ecg = ecg_block(500, seed=3)
    text = ecg_lines(pid, T0, 128.0, ecg)
    tr = V1Transport(url, db)
    tr.write(text.encode())
    tr.write(text.encode())
    tr.close()

    async def main():
        async with Writer(V1Transport(url, db), tmp_path / "sp") as w:
            await w.put(text)
            await w.flush(timeout=20)
            await w.put(text)  # a replay through the writer, too

    run(main())
    assert count_points(pid) == 500
    assert_ecg_exact(ecg_rows(pid), T0, 128.0, ecg)


def test_bad_request_goes_to_dead_letter_and_writer_keeps_going(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("dl")

    async def main():
        async with Writer(V1Transport(url, db), tmp_path / "sp", flush_interval=0.1) as w:
            await w.put(vitals_line(pid, T0, hr_bpm=60.0))
            await w.flush(timeout=20)
            # hr_bpm is a float field now: a string is a field type conflict -> HTTP 400
            await w.put(f'vitals,patient={pid} hr_bpm="sixty" {T0 + 1}\n')
            await w.flush(timeout=20)
            await w.put(vitals_line(pid, T0 + 2, hr_bpm=61.0))
            await w.flush(timeout=20)
            return w.counters

    c = run(main())
    assert c["dead_letters"] == 1 and c["dead_letter_points"] == 1 and c["batches_retried"] == 0
    dead = (tmp_path / "sp" / "dead-letter.lp").read_text()
    head, body = dead.splitlines()
    assert head.startswith("# p2es dead letter ") and "status=400" in head
    assert "field type conflict" in head
    assert body == f'vitals,patient={pid} hr_bpm="sixty" {T0 + 1}'
    assert [r["hr_bpm"] for r in ecg_rows(pid, "vitals")] == [60.0, 61.0]


def test_process_crash_leaves_spool_that_a_new_writer_delivers(influxdb, tmp_path):
    """A writer process that cannot reach InfluxDB spools its batches and dies without
    close(); a new Writer on the same spool dir delivers them."""
    url, db = influxdb
    pid = uid("crash")
    spool = tmp_path / "sp"
    ecg = ecg_block(2000, seed=4)
    np.save(tmp_path / "ecg.npy", ecg)
    child = textwrap.dedent(f"""
        import asyncio, os, sys, numpy as np
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from sink import Writer, V1Transport, ecg_lines
        async def main():
            w = Writer(V1Transport({closed_port_url()!r}, "p2es", timeout=1), {str(spool)!r},
                       batch_lines=300, backoff_base=0.1, backoff_cap=0.2)
            w.start()
            await w.put(ecg_lines({pid!r}, {T0}, 128.0, np.load({str(tmp_path / "ecg.npy")!r})))
            while w.counters["spool_records"] < 7 or w.counters["pending_points"]:
                await asyncio.sleep(0.05)
            os._exit(0)  # crash: no close(), no fsync
        asyncio.run(main())
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)

    async def main():
        async with Writer(V1Transport(url, db), spool, batch_lines=300) as w:
            assert w.counters["spool_records"] == 7
            await w.flush(timeout=30)
            return w.counters

    c = run(main())
    assert c["batches_replayed"] == 7 and c["points_written"] == 2000
    assert_ecg_exact(ecg_rows(pid), T0, 128.0, ecg)


def test_torn_spool_record_then_replay_to_influxdb(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("torn")
    ecg = ecg_block(600, seed=5)
    text = ecg_lines(pid, T0, 128.0, ecg)
    lines = text.splitlines(keepends=True)
    sp = Spool(tmp_path / "sp")
    sp.append("".join(lines[:300]).encode(), tag=1)
    sp.append("".join(lines[300:]).encode(), tag=2)
    sp.close()
    seg = sorted((tmp_path / "sp").glob("*.seg"))[-1]
    with open(seg, "r+b") as f:  # the second record was only half written
        f.truncate(seg.stat().st_size - 5000)

    async def main():
        async with Writer(V1Transport(url, db), tmp_path / "sp") as w:
            assert w.counters["spool_torn_records"] == 1 and w.counters["spool_records"] == 1
            await w.flush(timeout=20)

    run(main())
    assert_ecg_exact(ecg_rows(pid), T0, 128.0, ecg[:, :300])


def test_influxdb_outage_loses_nothing_and_keeps_order(influxdb, tmp_path, caplog):
    """InfluxDB is stopped for ~30 s while data keeps coming; after it returns, flush() ->
    every point present exactly once with its exact timestamp, delivered in order."""
    caplog.set_level(logging.WARNING, logger="sink")
    url, db = influxdb
    pid = uid("outage")
    fs, chunk = 128.0, 64  # 0.5 s of one patient's ECG per put
    n_chunks = 0
    blocks: list[np.ndarray] = []
    tr = RecordingV1(url, db, timeout=2.0)
    timeline: dict[str, float] = {}

    async def main():
        nonlocal n_chunks
        w = Writer(
            tr,
            tmp_path / "sp",
            batch_lines=256,
            flush_interval=0.2,
            backoff_base=0.1,
            backoff_cap=2.0,
            rng=random.Random(7),
        )
        w.start()
        stop = asyncio.Event()

        async def producer():
            nonlocal n_chunks
            while not stop.is_set():
                blk = ecg_block(chunk, seed=100 + n_chunks)
                blocks.append(blk)
                await w.put(ecg_lines(pid, T0, fs, blk, start=n_chunks * chunk))
                n_chunks += 1
                await asyncio.sleep(0.05)  # 1280 points/s

        prod = asyncio.create_task(producer())
        t_start = time.monotonic()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(services.stop_influx)
        timeline["stopped"] = time.monotonic() - t_start
        try:
            await asyncio.sleep(28.0)
            assert w.outage, "the writer should see the database down"
            down = w.counters
            assert down["spool_records"] > 0 and down["queue_batches"] == 0
        finally:
            await asyncio.to_thread(services.start_influx)
        timeline["started"] = time.monotonic() - t_start
        await asyncio.sleep(1.0)
        stop.set()
        await prod
        await w.flush(timeout=30)
        timeline["flushed"] = time.monotonic() - t_start
        c = w.counters
        await w.close()
        return down, c

    down, c = run(main())
    ecg = np.concatenate(blocks, axis=1)
    assert c["points_accepted"] == c["points_written"] == ecg.shape[1]
    assert c["batches_retried"] > 0 and c["batches_replayed"] > 0 and c["spool_records"] == 0
    assert c["dead_letters"] == 0 and c["spool_dropped_records"] == 0
    assert_ecg_exact(ecg_rows(pid), T0, fs, ecg)
    # order: accepted bodies follow the stream (a body re-sent as a whole is allowed)
    prev_first = prev_last = -1
    for body in tr.accepted:
        ts = [int(ln.rsplit(b" ", 1)[1]) for ln in body.splitlines()]
        assert ts == sorted(ts)
        if (ts[0], ts[-1]) != (prev_first, prev_last):
            assert ts[0] > prev_last
        prev_first, prev_last = ts[0], ts[-1]
    print(
        f"\noutage test timeline (s): {json.dumps({k: round(v, 1) for k, v in timeline.items()})}; "
        f"down: {down['spool_records']} spooled batches; after: {c}"
    )


def test_writer_closed_while_db_down_new_writer_delivers(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("closed")
    ecg = ecg_block(1000, seed=6)
    spool = tmp_path / "sp"

    async def while_down():
        w = Writer(V1Transport(url, db, timeout=2.0), spool, batch_lines=300)
        w.start()
        await w.put(ecg_lines(pid, T0, 128.0, ecg))
        t = time.monotonic()
        await w.close(timeout=10)  # the DB is down: close() does not wait out the backoff
        assert time.monotonic() - t < 5
        return w.counters

    services.stop_influx()
    try:
        down = run(while_down())
    finally:
        services.start_influx()
    assert down["spool_records"] == 4 and down["points_written"] == 0

    async def after():
        async with Writer(V1Transport(url, db), spool) as w:
            await w.flush(timeout=30)
            return w.counters

    c = run(after())
    assert c["batches_replayed"] == 4 and c["points_written"] == 1000 and c["spool_records"] == 0
    assert_ecg_exact(ecg_rows(pid), T0, 128.0, ecg)


class GatedV1(RecordingV1):
    """The real V1 transport whose writes wait for `gate` (to hold a batch in flight)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        import threading

        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, body: bytes) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RetryableWriteError("gate never opened")
        super().write(body)


def test_queue_overflow_while_a_batch_is_in_flight_keeps_order_without_duplicates(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("inflight")
    texts = [ecg_lines(pid, T0, 128.0, ecg_block(100, seed=10 + i), start=100 * i) for i in range(4)]
    tr = GatedV1(url, db)

    async def main():
        async with Writer(tr, tmp_path / "sp", batch_lines=100, max_queue_batches=1) as w:
            await w.put(texts[0])
            await asyncio.to_thread(tr.entered.wait, 10)  # batch 1 is in flight
            await w.put(texts[1])  # queued in memory
            await w.put(texts[2])  # queue full: in-flight copy, queue and this go to the spool
            assert w.counters["spool_records"] == 3 and w.counters["queue_batches"] == 0
            tr.gate.set()
            await w.flush(timeout=20)
            await w.put(texts[3])  # spool drained: back to the memory path
            await w.flush(timeout=20)
            return w.counters

    c = run(main())
    assert [b.decode() for b in tr.accepted] == texts  # in order, each exactly once
    assert c["batches_written"] == 4 and c["spool_records"] == 0 and c["batches_spooled"] == 3


def test_cancelled_writer_task_spools_the_batch_in_flight(influxdb, tmp_path):
    url, db = influxdb
    pid = uid("cancel")
    text = ecg_lines(pid, T0, 128.0, ecg_block(50, seed=20))
    tr = GatedV1(url, db)

    async def main():
        w = Writer(tr, tmp_path / "sp", batch_lines=50)
        task = w.start()
        await w.put(text)  # one full batch: sealed and taken at once
        await asyncio.to_thread(tr.entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert w.counters["spool_records"] == 1
        await w.close()
        tr.gate.set()

    run(main())
    sp = Spool(tmp_path / "sp")
    assert sp.peek().payload.decode() == text
    sp.close()


def test_missing_database_404_dead_letters_or_waits_when_asked(influxdb, tmp_path):
    """InfluxDB 1.x answers 404 "database not found": by default a dead letter (4xx); with
    retry_statuses={404} the writer spools and retries until the database exists."""
    url, _ = influxdb
    db = "p2es_" + uuid.uuid4().hex[:8]
    line1 = f"probe,patient=p v=1.0 {T0}\n"

    async def main():
        async with Writer(V1Transport(url, db), tmp_path / "a", flush_interval=0.1) as w:
            await w.put(line1)
            await w.flush(timeout=20)
            assert w.counters["dead_letters"] == 1
        async with Writer(
            V1Transport(url, db),
            tmp_path / "b",
            flush_interval=0.1,
            backoff_base=0.1,
            backoff_cap=0.3,
            retry_statuses={404},
        ) as w:
            await w.put(line1)
            with pytest.raises(TimeoutError):
                await w.flush(timeout=1.0)
            assert w.outage and w.counters["spool_records"] == 1 and w.counters["dead_letters"] == 0
            await asyncio.to_thread(services.influx_query, f'CREATE DATABASE "{db}"', "")
            await w.flush(timeout=20)
            return w.counters

    try:
        c = run(main())
    finally:
        services.influx_query(f'DROP DATABASE "{db}"', "")
    assert c["points_written"] == 1 and c["batches_replayed"] == 1
    assert "status=404" in (tmp_path / "a" / "dead-letter.lp").read_text()


# ============================================================================ a disk that refuses
# The file system's own refusal, not a mock: a child process whose file-size limit
# (RLIMIT_FSIZE, with SIGXFSZ ignored) makes write(2) fail with EFBIG once a spool segment
# reaches it -- what a full disk (ENOSPC) or an exhausted quota (EDQUOT) looks like to the
# spool.  Raising the soft limit again is "space freed".  bench/chaos.py fills a real tmpfs.
_FSIZE_PRELUDE = """
import errno, json, logging, resource, signal, sys
sys.path.insert(0, {repo!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
log_lines = []
class _Keep(logging.Handler):
    def emit(self, record):
        log_lines.append((record.levelname, record.getMessage()))
logging.getLogger().addHandler(_Keep())
logging.getLogger().setLevel(logging.INFO)
def limit(n):
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.RLIM_INFINITY))
"""


def _run_child(body: str, timeout: float = 60) -> dict:
    repo = str(Path(__file__).resolve().parent.parent)
    code = _FSIZE_PRELUDE.format(repo=repo) + textwrap.dedent(body)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_spool_append_the_disk_refuses_keeps_nothing_and_the_spool_stays_readable(tmp_path):
    """An append that the file system refuses half way raises SpoolWriteError (errno kept),
    leaves no partial record behind (the segment is cut back), changes nothing the reader
    sees; a reopened spool has no torn record; once space is back, appends work again, in
    order."""
    res = _run_child(
        f"""
        from sink.spool import HEADER_SIZE, Spool, SpoolWriteError
        d = {str(tmp_path / "sp")!r}
        sp = Spool(d, segment_bytes=16 << 20)
        limit(10_000)
        ok, errs, sizes = [], [], []
        for i in range(40):  # 700-byte records: the 14th crosses the limit half written
            try:
                sp.append(bytes([65 + i % 26]) * 700, tag=i + 1)
                ok.append(i + 1)
            except SpoolWriteError as e:
                errs.append(e.errno)
                sizes.append(sp.disk_bytes)
        seg = sorted(__import__("pathlib").Path(d).glob("*.seg"))[-1]
        on_disk = seg.stat().st_size
        pending = sp.pending_records
        write_errors = sp.stats()["spool_write_errors"]
        sp.close()
        sp = Spool(d, segment_bytes=16 << 20)  # a restart reads the same records, none torn
        torn = sp.torn_records
        tags = []
        while (r := sp.peek()) is not None:
            tags.append(r.tag)
            sp.ack(r.pos)
        limit(resource.RLIM_INFINITY)  # space freed
        sp.append(b"after", tag=99)
        after = sp.peek().tag
        sp.close()
        print(json.dumps(dict(ok=ok, errs=errs, sizes=sizes, on_disk=on_disk, pending=pending,
                              write_errors=write_errors, torn=torn, tags=tags, after=after,
                              efbig=errno.EFBIG, header=HEADER_SIZE)))
        """
    )
    n_ok = len(res["ok"])
    assert 0 < n_ok < 40 and res["ok"] == list(range(1, n_ok + 1))
    assert res["errs"] and set(res["errs"]) == {res["efbig"]}
    assert res["write_errors"] == len(res["errs"]) == 40 - n_ok
    record = 700 + res["header"]
    assert res["on_disk"] == n_ok * record  # the half-written record was cut off again
    assert set(res["sizes"]) == {n_ok * record} and res["pending"] == n_ok
    assert res["torn"] == 0 and res["tags"] == res["ok"] and res["after"] == 99


def test_writer_on_a_disk_that_refuses_the_spool(influxdb, tmp_path):
    """InfluxDB unreachable and the spool's disk refusing: one ERROR line, ``spool_full`` = 1,
    batches kept in memory up to ``max_queue_batches`` -- the oldest of them dropped beyond
    that, counted, one WARNING -- and nothing raised to the producer.  Space back: the spool
    takes the memory batches (``spool_full`` = 0); InfluxDB back: everything not dropped is
    written exactly once, in order."""
    url, db = influxdb
    pid = uid("full")
    res = _run_child(
        f"""
        import asyncio
        import numpy as np
        from sink import Writer, V1Transport, ecg_lines
        class Recording(V1Transport):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.accepted = []
            def write(self, body):
                super().write(body)
                self.accepted.append(body)
        def block(i):
            return np.random.default_rng(i).normal(0, 0.5, (12, 100)).astype(np.float32)
        async def main():
            w = Writer(V1Transport({closed_port_url()!r}, "p2es", timeout=1), {str(tmp_path / "sp")!r},
                       batch_lines=100, flush_interval=0.05, max_queue_batches=4,
                       backoff_base=0.05, backoff_cap=0.1, spool_segment_bytes=16 << 20)
            w.start()
            i = 0
            async def put():
                nonlocal i
                await w.put(ecg_lines({pid!r}, {T0}, 128.0, block(i), start=100 * i))
                i += 1
                await asyncio.sleep(0.01)
            await put()
            while not w.outage:
                await asyncio.sleep(0.02)
            limit(w.spool.disk_bytes + 100)  # no room for another batch (the next is cut at 100 B)
            while not w.spool_full:
                await put()
            first_full = i - 1  # the batch the disk refused
            for _ in range(7):  # 4 stay in memory, the 4 oldest of the 8 in memory are dropped
                await put()
            full = dict(w.counters)
            limit(resource.RLIM_INFINITY)  # space freed
            await put()
            freed = dict(w.counters)
            w.transport = Recording({url!r}, {db!r})  # InfluxDB back
            await w.flush(timeout=30)
            done = dict(w.counters)
            bodies = [b.decode() for b in w.transport.accepted]
            await w.close()
            return first_full, i, full, freed, done, bodies
        first_full, n, full, freed, done, bodies = asyncio.run(main())
        print(json.dumps(dict(first_full=first_full, n=n, full=full, freed=freed, done=done,
                              bodies=bodies, logs=log_lines)))
        """
    )
    full, freed, done = res["full"], res["freed"], res["done"]
    k, n = res["first_full"], res["n"]
    assert full["spool_full"] == 1 and full["spool_write_errors"] >= 1
    assert full["queue_batches"] == 4 and full["batches_dropped"] == 4 and full["points_dropped"] == 400
    assert full["spool_records"] == k  # batches 0..k-1 went to the spool before it was refused
    errors = [m for lvl, m in res["logs"] if lvl == "ERROR"]
    assert len(errors) == 1 and "cannot be written" in errors[0] and "p2es_spool_full" in errors[0]
    warn_drop = [m for lvl, m in res["logs"] if lvl == "WARNING" and "dropping the oldest" in m]
    assert len(warn_drop) == 1  # one line per streak, not one per batch
    assert freed["spool_full"] == 0 and freed["queue_batches"] == 0
    assert freed["spool_records"] == k + 4 + 1
    assert any("takes batches again" in m for lvl, m in res["logs"] if lvl == "WARNING")
    assert done["points_written"] == 100 * (n - 4) and done["spool_records"] == 0
    # exactly the 4 oldest batches kept in memory were lost: k .. k+3
    kept = [i for i in range(n) if not (k <= i < k + 4)]
    t = np.array([r["time"] for r in ecg_rows(pid)], dtype=np.int64)
    want = np.concatenate([sample_times_ns(T0, 128.0, 100, start=100 * i) for i in kept])
    assert np.array_equal(t, want)
    # written in order: every body's timestamps after the previous body's
    last = -1
    for body in res["bodies"]:
        ts = [int(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()]
        assert ts == sorted(ts) and ts[0] > last
        last = ts[-1]


def test_a_disk_at_the_edge_of_full_does_not_flap(influxdb, tmp_path):
    """Regression (bench/chaos.py spool_full, full length): with the disk nearly full a small
    batch fits while the next does not.  That used to clear ``spool_full`` and log the ERROR
    line again each time; now the gauge stays 1 while memory holds refused batches, there is
    one ERROR line and one "takes batches again" once memory is in the spool, and every point
    is written or counted as dropped."""
    url, db = influxdb
    pid = uid("edge")
    res = _run_child(
        f"""
        import asyncio
        import numpy as np
        from sink import Writer, V1Transport, ecg_lines
        def block(i, n):
            return np.random.default_rng(i).normal(0, 0.5, (12, n)).astype(np.float32)
        async def main():
            w = Writer(V1Transport({closed_port_url()!r}, "p2es", timeout=1), {str(tmp_path / "sp")!r},
                       batch_lines=100, flush_interval=0.05, max_queue_batches=2,
                       backoff_base=0.05, backoff_cap=0.1, spool_segment_bytes=16 << 20)
            w.start()
            start = 0
            gauge = []
            async def put(n):
                nonlocal start
                await w.put(ecg_lines({pid!r}, {T0}, 128.0, block(start, n), start=start))
                start += n
                while w.counters["pending_points"]:
                    await asyncio.sleep(0.02)  # sealed (a short batch by the flush interval)
                await asyncio.sleep(0.05)
                gauge.append(w.spool_full)
            await put(100)
            while not w.outage:
                await asyncio.sleep(0.02)
            limit(w.spool.disk_bytes + 2_000)  # room for a 1-line batch, not for a 100-line one
            await put(100)  # refused: memory [A]
            await put(1)    # memory [A, s]
            await put(100)  # memory [A, s, B] -> A dropped: [s, B]
            await put(100)  # s fits the spool, B does not: [B, C]
            await put(100)  # [B, C, D] -> B dropped
            edge = dict(w.counters)
            limit(resource.RLIM_INFINITY)
            await put(100)  # all of memory goes to the spool
            w.transport = V1Transport({url!r}, {db!r})
            await w.flush(timeout=30)
            done = dict(w.counters)
            await w.close()
            return gauge, edge, done
        gauge, edge, done = asyncio.run(main())
        print(json.dumps(dict(gauge=gauge, edge=edge, done=done, logs=log_lines)))
        """
    )
    gauge, edge, done = res["gauge"], res["edge"], res["done"]
    assert gauge == [False, True, True, True, True, True, False]  # no flip while memory holds batches
    assert edge["spool_full"] == 1 and edge["batches_dropped"] == 2 and edge["points_dropped"] == 200
    assert edge["spool_records"] == 2  # the first batch and the 1-line one that fitted
    errors = [m for lvl, m in res["logs"] if lvl == "ERROR"]
    back = [m for lvl, m in res["logs"] if "takes batches again" in m]
    assert len(errors) == 1 and "cannot be written" in errors[0]
    assert len(back) == 1
    assert done["points_written"] + done["points_dropped"] == done["points_accepted"] == 601
    assert done["spool_full"] == 0 and count_points(pid) == 401
