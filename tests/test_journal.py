"""The ingest journal (ingest/journal.py): records on disk, rotation, pruning, torn tails, the
replay plan (unit), and a restarted IngestService rebuilding its streams from it (real
Mosquitto): the windows after the restart cover the signal up to the last accepted chunk, with
no gap, before any new chunk arrives."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ingest.journal import Journal, Record, replay_plan
from ingest.service import IngestService
from p2es.contracts.ppg import encode_binary_chunk
from p2es.contracts.topics import TOPIC_PREFIX, ppg_topic, profile_topic

T0 = 1_718_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _chunk(pid: str, seq: int, t0: float, n: int = 128, fs: float = 128.0) -> tuple[str, bytes]:
    x = np.sin(np.arange(n) / 7.0 + seq)
    body = {"seq": seq, "t0": t0, "fs": fs, "samples": [round(float(v), 6) for v in x]}
    return ppg_topic(pid), json.dumps(body).encode()


def test_append_read_rotate_and_prune(tmp_path: Path) -> None:
    clk = Clock(1_000.0)
    j = Journal(tmp_path, segment_s=4.0, retain_s=10.0, clock=clk)
    for k in range(12):  # 12 s, one record a second: 3 files
        clk.t = 1_000.0 + k
        j.append(*_chunk("p1", k, 1_000.0 + k))
    j.append("p2es/v1/patients/p1/ppg/bin", encode_binary_chunk(12, 1_012.0, 128.0, np.zeros(4)))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 3, files
    # raw patient PPG: owner-only files
    assert all((tmp_path / f).stat().st_mode & 0o077 == 0 for f in files)
    recs = j.read()
    assert [json.loads(r.payload)["seq"] for r in recs[:-1]] == list(range(12))
    assert recs[-1].topic.endswith("/ppg/bin") and recs[-1].received_at == clk.t
    assert j.torn == 0 and j.appended == 13
    # files last written more than retain_s ago go (by their mtime), never the open one
    old = tmp_path / files[0]
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert j.prune(now=time.time()) == 1 and not old.exists()
    assert j.prune(now=time.time() + 3600) == 1  # the second file; the open third stays
    assert len(os.listdir(tmp_path)) == 1
    # a restarted journal continues after the highest file number (names stay ordered)
    j.close()
    j2 = Journal(tmp_path, segment_s=4.0, retain_s=10.0, clock=clk)
    j2.append(*_chunk("p1", 13, 1_013.0))
    assert sorted(os.listdir(tmp_path))[-1].endswith("-000004.wal")
    assert [json.loads(r.payload)["seq"] for r in j2.read() if not r.topic.endswith("/bin")] == [
        8,
        9,
        10,
        11,
        13,
    ]


def test_a_torn_or_damaged_tail_ends_the_file_and_is_counted(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_s=100.0, retain_s=100.0)
    for k in range(5):
        j.append(*_chunk("p1", k, 1_000.0 + k))
    j.close()
    (f,) = tmp_path.iterdir()
    data = f.read_bytes()
    f.write_bytes(data[:-7])  # kill -9 in the middle of the last write
    r = Journal(tmp_path, segment_s=100.0, retain_s=100.0)
    assert [json.loads(x.payload)["seq"] for x in r.read()] == [0, 1, 2, 3] and r.torn == 1
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0xFF  # a flipped byte inside record 2: CRC
    f.write_bytes(bytes(bad))
    r = Journal(tmp_path, segment_s=100.0, retain_s=100.0)
    assert [json.loads(x.payload)["seq"] for x in r.read()] == [0, 1] and r.torn == 1
    with pytest.raises(ValueError):
        Journal(tmp_path, segment_s=5.0, retain_s=1.0)


def test_replay_plan_keeps_each_patients_last_seconds_and_profile(tmp_path: Path) -> None:
    recs: list[Record] = []
    prof = json.dumps({"age": 61, "sex": "F", "height_cm": 160, "weight_kg": 60}).encode()
    recs.append(Record(profile_topic("a"), prof, 0.0))
    for k in range(30):
        recs.append(Record(*_chunk("a", k, T0 + k), 0.0))
        if k >= 20:
            recs.append(Record(*_chunk("b", k, T0 + 500 + k), 0.0))
    recs.append(Record("p2es/v1/patients/a/ppg", b"not json", 0.0))
    plan = replay_plan(recs, 16.0, TOPIC_PREFIX)
    assert plan.patients == 2 and plan.profiles == 1 and plan.unusable == 1
    assert plan.records[0].topic == profile_topic("a")  # the profile before the chunks
    seqs_a = [json.loads(r.payload)["seq"] for r in plan.records if r.topic == ppg_topic("a")]
    assert seqs_a == list(range(14, 30))  # chunks ending less than 16 s before the newest end
    assert len([r for r in plan.records if r.topic == ppg_topic("b")]) == 10
    assert plan.chunks == 26
    assert plan.span_s == {"a": 16.0, "b": 10.0}
    assert replay_plan([], 16.0, TOPIC_PREFIX).patients == 0
    # records received longer ago than max_age_s are history: skipped and counted
    young = [Record(r.topic, r.payload, 1_000.0 if r.topic == ppg_topic("b") else 0.0) for r in recs]
    fresh = replay_plan(young, 16.0, TOPIC_PREFIX, now=1_300.0, max_age_s=600.0)
    assert fresh.patients == 1 and fresh.chunks == 10 and fresh.profiles == 0
    assert fresh.stale == len(recs) - 10 and fresh.span_s == {"b": 10.0}


@pytest.mark.services
def test_restarted_service_rebuilds_streams_from_the_journal(mqtt_broker, tmp_path: Path) -> None:
    """A service that stopped (as after kill -9: nothing flushed) and a new one on the same journal:
    before any new chunk, the new one emits windows that reach the end of the last accepted
    chunk; without the journal it emits nothing until a whole new window has arrived."""
    import aiomqtt

    host, port = mqtt_broker
    pid = f"j-{uuid.uuid4().hex[:8]}"
    t0 = float(int(time.time()) - 120)
    n_chunks = 27  # 27 s: windows end at 8, 12, ..., 24 s; 3 s of signal after the last one

    def svc(journal: Journal | None) -> IngestService:
        return IngestService(
            f"mqtt://{host}:{port}",
            client_id=f"p2es-test-journal-{uuid.uuid4().hex[:8]}",
            session_expiry_s=60,
            tick_s=0.2,
            journal=journal,
            replay_s=16.0,
        )

    async def main() -> tuple[list, list, dict]:
        first = svc(Journal(tmp_path, segment_s=4.0, retain_s=60.0))
        async with first:
            await first.wait_connected()
            async with aiomqtt.Client(host, port, identifier=f"p2es-test-pub-{uuid.uuid4().hex[:8]}") as pub:
                for k in range(n_chunks):
                    await pub.publish(*_chunk(pid, k, t0 + k), qos=1)
            deadline = time.monotonic() + 10
            while first.counters()["ppg_json"] < n_chunks and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        assert first.counters()["journal"]["appended"] >= n_chunks  # (and what else the broker holds)
        before = []
        while not first.windows.empty():
            before.append(first.windows.get_nowait())
        second = svc(Journal(tmp_path, segment_s=4.0, retain_s=60.0))
        async with second:
            await second.wait_connected()
            await asyncio.sleep(0.5)
            after = []
            while not second.windows.empty():
                after.append(second.windows.get_nowait())
            replayed = second.counters()["journal"]["replayed"]
        empty = svc(None)
        async with empty:
            await empty.wait_connected()
            await asyncio.sleep(0.3)
            assert empty.windows.empty()
        return before, after, replayed

    before, after, replayed = asyncio.run(main())
    mine = [w for w in before if w.patient == pid]
    assert [w.t0 - t0 for w in mine] == [0.0, 4.0, 8.0, 12.0, 16.0]
    rebuilt = [w for w in after if w.patient == pid]
    assert replayed["patients"] >= 1 and replayed["chunks"] >= 16 and replayed["rebuilt_s_min"] <= 16.0
    # the rebuilt stream starts 16 s before the newest end (t0 + 27) and emits its windows at once:
    # the last one ends with the last accepted chunk, so the 3 s the first service held but had
    # not emitted are in a window again, and the rebuilt windows overlap what it had emitted
    assert rebuilt and rebuilt[0].t0 == pytest.approx(t0 + 11.0, abs=1e-6)
    assert [w.t0 - rebuilt[0].t0 for w in rebuilt] == [0.0, 4.0, 8.0]
    assert rebuilt[-1].t0 + rebuilt[-1].duration_s == pytest.approx(t0 + n_chunks, abs=1e-6)
    assert rebuilt[0].t0 < mine[-1].t0 + mine[-1].duration_s
    # same samples where both lives saw the same stretch (the device clock is the stream clock)
    a = next(w for w in mine if w.t0 == pytest.approx(t0 + 12.0, abs=1e-6))
    b = next(w for w in rebuilt if w.t0 == pytest.approx(t0 + 15.0, abs=1e-6))
    off = int(round((b.t0 - a.t0) * 128))
    np.testing.assert_allclose(b.samples[: 1024 - off], a.samples[off:], atol=1e-5)
