"""Fairness under floods (issue #15, item 3): the per-patient budget of :mod:`ingest.fairness`.

* the buckets, pure, on an explicit clock: refill, burst, whole-message refusal, episodes, the
  memory bound, off;
* the settings: bad values are one line;
* the MQTT ingest against the real Mosquitto: a flooder's excess is dead-lettered
  ``rate_limited`` with a reason that says by how much, counted, logged once; a message flood is
  refused before parsing; a normal patient's windows are untouched;
* the scale-out ingest against the real NATS cluster: the same, on JetStream's stored time;
* the live pipeline (real Mosquitto, real InfluxDB, the tiny model): 20 patients without, with
  and again without one device (its own process) publishing 100x its rate, in the same test:
  the 20 patients' ECG is identical, their p95 end-to-end latency within 20 % (with a floor),
  the flooder bounded by its budget.  About 40 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import tracemalloc
import urllib.request
import uuid

import aiomqtt
import numpy as np
import pytest
import services
from test_scaleout import nats_cluster  # noqa: F401 - the fixture (the real NATS cluster)

from ingest import IngestService, PatientStream, StreamConfig
from ingest.fairness import MIN_BURST_S, Episode, PatientBudget, TokenBucket
from ingest.service import note_rate_limited
from p2es.contracts.ppg import DEADLETTER_CODES, PpgChunk, Window
from p2es.contracts.topics import DEADLETTER_TOPIC, ppg_topic


def _uid() -> str:
    return uuid.uuid4().hex[:8]


# ============================================================================ the buckets (pure)
def test_token_bucket_refill_burst_and_clock() -> None:
    b = TokenBucket(rate=2.0, capacity=10.0, now=100.0)
    assert b.full(100.0)
    assert b.take(10.0, 100.0)  # the whole burst at once
    assert not b.take(1.0, 100.0) and b.tokens == 0.0  # refused: nothing taken
    assert not b.take(1.0, 100.4)  # 0.8 tokens
    assert b.take(1.0, 100.5)  # 1.0 token after 0.5 s at 2/s
    assert not b.take(0.5, 100.5)
    assert b.refill(1000.0) == 10.0  # never above the capacity
    assert b.take(4.0, 1000.0) and b.refill(999.0) == pytest.approx(6.0)  # an earlier now: no refill
    assert b.refill(1001.0) == pytest.approx(8.0)
    for bad in ((0.0, 1.0), (1.0, 0.0), (float("inf"), 1.0), (1.0, float("nan"))):
        with pytest.raises(ValueError):
            TokenBucket(*bad, now=0.0)


def test_samples_budget_relative_to_fs_with_burst() -> None:
    """factor 4, burst 10 s: a 128 Hz patient gets 10 s of signal at once, then 4 s per second
    (512 samples/s), whatever it offers; a 1000 Hz patient gets 4000 samples/s."""
    bud = PatientBudget(factor=4.0, burst_s=10.0)
    got = {128.0: 0, 1000.0: 0}
    refused = []
    for fs in got:
        pid = f"p{fs:g}"
        t, admitted = 0.0, 0
        for k in range(100 * 20):  # 100 one-second chunks per second for 20 s: 100 x its rate
            now = k / 100.0
            r = bud.admit_chunk(pid, int(fs), fs, now)
            if r is None:
                admitted += int(fs)
            else:
                refused.append(r)
            t = now
        got[fs] = admitted
        # the bound of the module docstring, and tight: no more than one chunk below it
        bound = (10.0 + 4.0 * t) * fs
        assert bound - fs <= admitted <= bound, (fs, admitted, bound)
    assert all(r.reason.startswith("rate_limited: ") for r in refused)
    assert "rate_limited" in DEADLETTER_CODES
    first = [r for r in refused if r.first]
    assert [r.patient for r in first] == ["p128", "p1000"]  # one episode each, not one per chunk
    # the reason says by how much: ~100 x 128 offered against 4 x 128 allowed
    d = refused[-1].detail
    assert (
        d.startswith("patient p1000: ") and "over the budget of 4000 samples/s (4 x fs 1000, burst 10 s)" in d
    )
    offered = float(d.split(": ")[1].split(" ")[0])
    assert 90_000 <= offered <= 101_000, d
    u = bud.usage("p128")
    assert u is not None and u["admitted_samples"] == got[128.0] and u["refused_samples"] > 0
    assert bud.stats()["refused_samples"] == u["refused_samples"] + bud.usage("p1000")["refused_samples"]


def test_a_normal_rate_is_never_refused_and_episodes_end() -> None:
    bud = PatientBudget(factor=4.0, burst_s=10.0, msgs_per_s=20.0, msgs_burst=100, quiet_s=5.0)
    for k in range(600):  # 10 min at 1x, 1 s chunks at 250 Hz, with a 2 s jitter now and then
        now = k + (2.0 if k % 50 == 0 else 0.0)
        assert bud.admit_message("n", now) is None
        assert bud.admit_chunk("n", 250, 250.0, now) is None
    # a 10-minute backlog delivered at once: the burst passes, the rest is refused
    ok = sum(bud.admit_chunk("n", 250, 250.0, 700.0) is None for _ in range(600))
    assert ok == 10
    assert bud.limited() == ["n"]
    assert bud.tick(703.0) == []  # refused 3 s ago: still limited
    (ep,) = bud.tick(705.0)
    assert ep == Episode("n", 0.0, 590, 590 * 250) and bud.limited() == []
    # a new refusal starts a new episode (logged again)
    for _ in range(200):
        r = bud.admit_message("n", 800.0)
    assert r is not None and r.first is False  # the first of them was the 'first'
    assert "messages/s over the budget of 20 messages/s (burst 100)" in r.detail


def test_memory_is_bounded_and_idle_slots_are_dropped() -> None:
    bud = PatientBudget(factor=4.0, burst_s=10.0, msgs_per_s=20.0, msgs_burst=100, max_patients=1000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(50_000):  # 50 000 patient ids (a client cycling through ids)
            bud.admit_message(f"pat-{i:06d}", i * 1e-4)
            bud.admit_chunk(f"pat-{i:06d}", 128, 128.0, i * 1e-4)
            assert len(bud) <= 1000
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(bud) == 1000 and bud.evicted == 49_000
    assert held / 1000 < 1000, held  # bytes per patient (the docstring says about 0.5 kB)
    # a limited patient is kept; the others refill within burst / factor = 2.5 s and are dropped
    for _ in range(12):
        bud.admit_chunk("flood", 128, 128.0, 5.0)
    assert bud.limited() == ["flood"]
    assert bud.tick(7.9) == [] and len(bud) == 1  # refilled: dropped, they carry nothing
    assert bud.tick(30.0) == [Episode("flood", 0.0, 2, 256)] and len(bud) == 0
    # an evicted limited patient's episode is reported at the next tick
    small = PatientBudget(factor=1.0, burst_s=10.0, max_patients=1)
    for _ in range(11):
        small.admit_chunk("a", 100, 100.0, 0.0)
    small.admit_chunk("b", 100, 100.0, 0.0)
    assert small.tick(0.0) == [Episode("a", 0.0, 1, 100)] and small.evicted == 1


def test_off_holds_nothing_and_bad_settings_are_one_line() -> None:
    from engine.app.pipeline import PipelineConfig
    from p2es.errors import P2esError
    from p2es.transport.settings import validate

    for bud in (
        PatientBudget(),
        PatientBudget(factor=0, msgs_per_s=0),
        PatientBudget.from_config(StreamConfig()),
    ):
        assert not bud.enabled
        for _ in range(1000):
            assert bud.admit_message("p", 0.0) is None and bud.admit_chunk("p", 10_000, 25.0, 0.0) is None
        assert len(bud) == 0 and bud.tick(1.0) == []
    assert PipelineConfig().rate_limit_factor is None  # off by default (see docs/operations.md)
    for kw in (
        {"rate_limit_factor": 4.0, "rate_limit_burst_s": 5.0},  # shorter than the longest chunk
        {"rate_limit_factor": float("inf")},
        {"rate_limit_msgs_per_s": -1.0},
        {"rate_limit_msgs_per_s": 20.0, "rate_limit_msgs_burst": 0},
    ):
        with pytest.raises(ValueError) as e:
            StreamConfig(**kw)
        assert "\n" not in str(e.value) and "rate_limit" in str(e.value)
    assert MIN_BURST_S == 10.0
    for data, needle in (
        ({"rate_limit_burst_s": 5}, "rate_limit_burst_s"),
        ({"rate_limit_factor": -4}, "rate_limit_factor"),
        ({"rate_limit_msgs_burst": 0}, "rate_limit_msgs_burst"),
    ):
        with pytest.raises(P2esError) as pe:
            validate(PipelineConfig, {"influx_url": "none", **data}, "pipeline")
        msg = str(pe.value)
        assert "\n" not in msg and msg.startswith("bad pipeline setting") and needle in msg, msg


def test_log_lines_one_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("p2es.test.fairness")
    bud = PatientBudget(factor=1.0, burst_s=10.0, quiet_s=2.0)
    with caplog.at_level(logging.INFO, logger="p2es.test.fairness"):
        for k in range(50):
            note_rate_limited(log, bud.admit_chunk("bed-3", 100, 100.0, k * 0.01))
            note_rate_limited(log, ended=bud.tick(k * 0.01))
        note_rate_limited(log, ended=bud.tick(10.0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert (
        lines[0].startswith("patient bed-3: ") and "over the budget of 100 samples/s (1 x fs 100" in lines[0]
    )
    assert "dead-lettered (rate_limited)" in lines[0]
    assert lines[1].startswith("patient bed-3: back within its budget") and "40 messages" in lines[1]


# ============================================================================ MQTT ingest (real Mosquitto)
def _chunks(fs: float, n_chunks: int, n: int, t0: float, seed: int = 0) -> list[PpgChunk]:
    rng = np.random.default_rng(seed)
    t = np.arange(n_chunks * n) / fs
    x = np.sin(2 * np.pi * 1.2 * t) + 0.05 * rng.standard_normal(t.size)
    return [
        PpgChunk(seq=k, t0=t0 + k * n / fs, fs=fs, samples=np.round(x[k * n : (k + 1) * n], 6))
        for k in range(n_chunks)
    ]


def _payload(c: PpgChunk) -> bytes:
    return json.dumps({"seq": c.seq, "t0": c.t0, "fs": c.fs, "samples": c.samples.tolist()}).encode()


def test_ingest_dead_letters_the_excess_and_keeps_the_others(
    mqtt_broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """One service, both buckets on (1 x fs with a 10 s burst; 5 messages/s with a burst of 100):
    F floods 1 s chunks (samples), M floods 1-sample chunks and junk (messages), N sends 10 s."""
    host, port = mqtt_broker
    tag = _uid()
    pf, pm, pn = f"fl-{tag}-F", f"fl-{tag}-M", f"fl-{tag}-N"
    t0 = float(int(time.time())) - 60.0
    cfg = StreamConfig(
        rate_limit_factor=1.0, rate_limit_burst_s=10.0, rate_limit_msgs_per_s=5.0, rate_limit_msgs_burst=100
    )
    flood = _chunks(100.0, 40, 100, t0, seed=1)
    tiny = _chunks(100.0, 150, 1, t0, seed=2)
    normal = _chunks(100.0, 10, 100, t0, seed=3)
    total = len(flood) + len(tiny) + 1 + len(normal)
    expected = PatientStream(pn, cfg).push  # the same chunks offline
    want: list[Window] = []
    for c in normal:
        want += expected(c, now=0.0)
    assert len(want) == 1

    async def main() -> tuple[list[dict], list[Window], dict, float]:
        svc = IngestService(
            f"mqtt://{host}:{port}", client_id=f"p2es-test-fair-{tag}", stream_config=cfg, session_expiry_s=60
        )
        async with (
            aiomqtt.Client(
                host, port, identifier=f"p2es-test-pub-{tag}", protocol=aiomqtt.ProtocolVersion.V5
            ) as pub,
            aiomqtt.Client(
                host, port, identifier=f"p2es-test-dl-{tag}", protocol=aiomqtt.ProtocolVersion.V5
            ) as dl,
        ):
            await dl.subscribe(DEADLETTER_TOPIC, qos=1)
            async with svc:
                await svc.wait_connected()
                t_first = time.monotonic()
                for c in flood:
                    await pub.publish(ppg_topic(pf), _payload(c), qos=1)
                for c in tiny:
                    await pub.publish(ppg_topic(pm), _payload(c), qos=1)
                await pub.publish(ppg_topic(pm), b"{not json", qos=1)  # over budget: refused unparsed
                for c in normal:
                    await pub.publish(ppg_topic(pn), _payload(c), qos=1)
                spent = time.monotonic() - t_first

                def pending() -> bool:
                    c = svc.counters()
                    return c["ppg_json"] + c["invalid"].get("rate_limited", 0) < total or (
                        c["deadletters_published"] < c["invalid_total"]
                    )

                async with asyncio.timeout(15):
                    while pending():
                        await asyncio.sleep(0.02)
                n_limited = svc.counters()["invalid"]["rate_limited"]
                letters: list[dict] = []
                async with asyncio.timeout(10):
                    async for m in dl.messages:
                        d = json.loads(m.payload)
                        if tag in d["topic"]:
                            letters.append(d)
                        if len(letters) >= n_limited:
                            break
                got: list[Window] = []
                async with asyncio.timeout(10):
                    while not got:
                        w = await svc.windows.get()
                        if w.patient == pn:
                            got.append(w)
                return letters, got, svc.counters(), spent

    with caplog.at_level(logging.INFO, logger="p2es.ingest"):
        letters, got, counters, spent = asyncio.run(main())
    usage_note = f"published in {spent:.2f} s"
    by_pid = {p: [d for d in letters if p in d["topic"]] for p in (pf, pm, pn)}
    assert by_pid[pn] == [], by_pid[pn]  # the normal patient: nothing refused
    # F: 40 s of signal offered at once; at most 10 s + 1 s per second admitted
    nf = len(by_pid[pf])
    admitted_f = 40 - nf
    assert 10 <= admitted_f <= 10 + spent + 1, (admitted_f, usage_note)
    for d in by_pid[pf]:
        assert d["reason"].startswith(f"rate_limited: patient {pf}: ")
        assert "samples/s over the budget of 100 samples/s (1 x fs 100, burst 10 s)" in d["reason"]
        assert d["payload_excerpt"].startswith('{"seq": ')
    # M: 151 messages at once; 100 (the burst) + 5 per second admitted, the junk among the refused
    nm = len(by_pid[pm])
    assert 151 - 100 - 5 * spent - 1 <= nm <= 51, (nm, usage_note)
    assert all("messages/s over the budget of 5 messages/s (burst 100)" in d["reason"] for d in by_pid[pm])
    assert by_pid[pm][-1]["payload_excerpt"] == "{not json"
    assert counters["invalid"]["rate_limited"] == nf + nm
    assert counters["budget"]["refused_messages"] == nf + nm
    assert counters["budget"]["patients_limited"] == 2
    # N's window is the offline one, bit for bit
    (w,) = got
    assert (w.t0, w.index, w.seq_range) == (want[0].t0, want[0].index, want[0].seq_range)
    np.testing.assert_array_equal(w.samples, want[0].samples)
    # one warning per limited patient, not one per message
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and tag in r.getMessage()]
    assert sorted(m.split(":")[0] for m in warn) == sorted([f"patient {pf}", f"patient {pm}"]), warn


# ============================================================================ bus ingest (real NATS)
@pytest.mark.nats
def test_bus_ingest_budget_on_stored_time(nats_cluster) -> None:  # noqa: F811 - the imported fixture
    """The scale-out ingest (its own layout on the real 3-node cluster): the budget's clock is
    JetStream's stored time, so chunks published at once are a burst whenever they are
    delivered; the excess is dead-lettered on NATS, the normal patient is untouched."""
    import nats

    from ingest.bus import BusIngestService
    from p2es.contracts.topics import deadletter_topic, nats_subject
    from p2es.transport.nats import BusLayout, JetStreamApi

    tag = _uid()
    prefix = f"f{tag}/v1"
    lay = BusLayout(
        shards=2,
        prefix=prefix,
        replicas=1,
        stream=f"FAIR_{tag}",
        profile_stream=f"FAIRP_{tag}",
        kv_bucket=f"fair_{tag}",
        shard_root=f"f{tag}.shard",
        max_age_s=60,
    )
    cfg = StreamConfig(rate_limit_factor=1.0, rate_limit_burst_s=10.0)
    pf, pn = f"bf-{tag}-F", f"bf-{tag}-N"
    t0 = float(int(time.time())) - 60.0
    flood, normal = _chunks(100.0, 40, 100, t0, seed=4), _chunks(100.0, 10, 100, t0, seed=5)
    want: list[Window] = []
    ref = PatientStream(pn, cfg)
    for c in normal:
        want += ref.push(c, now=0.0)

    async def main() -> tuple[dict, list[Window], list[dict], float]:
        nc = await nats.connect(nats_cluster)
        letters: list[dict] = []

        async def on_letter(m) -> None:
            letters.append(json.loads(m.data))

        sub = await nc.subscribe(nats_subject(deadletter_topic(prefix)), cb=on_letter)
        svc = BusIngestService(nats_cluster, lay, worker_id=f"fair-{tag}", stream_config=cfg, prefix=prefix)
        try:
            svc.start()
            async with asyncio.timeout(60):
                await svc.ready.wait()
            js = nc.jetstream()
            t_pub = time.monotonic()
            for c in flood:
                await js.publish(nats_subject(ppg_topic(pf, prefix=prefix)), _payload(c))
            for c in normal:
                await js.publish(nats_subject(ppg_topic(pn, prefix=prefix)), _payload(c))
            spent = time.monotonic() - t_pub
            got: list[Window] = []
            async with asyncio.timeout(30):
                while not got:
                    w = await svc.windows.get()
                    if w.patient == pn:
                        got.append(w)
                while svc.counters()["messages_in"] < len(flood) + len(normal) or len(
                    letters
                ) < svc.counters()["invalid"].get("rate_limited", 0):
                    await asyncio.sleep(0.05)
            return svc.counters(), got, letters, spent
        finally:
            await svc.stop()
            await sub.unsubscribe()
            api = JetStreamApi(nc)
            for name in (lay.stream, lay.profile_stream, f"KV_{lay.kv_bucket}"):
                with contextlib.suppress(Exception):
                    await api.request(f"$JS.API.STREAM.DELETE.{name}")
            await nc.close()

    counters, got, letters, spent = asyncio.run(main())
    refused = counters["invalid"].get("rate_limited", 0)
    assert 40 - 10 - spent - 1 <= refused <= 30, (refused, spent)  # 10 s burst + 1 s per second
    assert counters["budget"]["refused_messages"] == refused and counters["budget"]["patients_limited"] == 1
    assert len(letters) == refused and all(pf in d["topic"] for d in letters)
    assert letters[0]["reason"].startswith(f"rate_limited: patient {pf}: ")
    assert "over the budget of 100 samples/s (1 x fs 100, burst 10 s)" in letters[0]["reason"]
    (w,) = got
    assert (w.t0, w.index) == (want[0].t0, want[0].index)
    np.testing.assert_array_equal(w.samples, want[0].samples)


# ============================================================================ the live pipeline
N_NORMAL = 20  # patients at a normal rate
FS = 128.0  # every device at the model rate: a window's last chunk is known exactly (no resampler delay)
SPEED = 2.0  # the normal patients publish 2 s of signal per second (within the budget of 4)
SIGNAL_S = 20.0  # 10 s of wall time per run
NW = 4  # windows per patient: at the model rate the window ending with the last sample is complete
FLOOD_X = 100.0  # the flooder: 100 s of signal per second, 100 x its declared rate
BUDGET = dict(  # the recommended production values (docs/operations.md)
    rate_limit_factor=4.0, rate_limit_burst_s=10.0, rate_limit_msgs_per_s=20.0, rate_limit_msgs_burst=100
)
#: p95 latency tolerance: 20 %, but at least this many seconds -- see the comment at the assertion
LATENCY_FLOOR_S = 0.05
#: sampler steps and draws of the tiny model: ~50 windows/s on one busy core, so the normal load
#: (10 windows/s) leaves room while an unlimited flood (+25 windows/s) does not
STEPS, K = 4, 2

#: the flooding device, a process of its own (as a device is: its publishing must not share the
#: pipeline's event loop), at nice +10 (a device's CPU is not the engine's: on the test machine's
#: cores it must not compete with the system under test as an equal); it imports, says "ready",
#: floods from "go" until SIGTERM, and prints its counters
_FLOODER = """
import json, os, sys
os.nice(10)
from wearable.publisher import make_patients, simulate
url, prefix, t_start, speed = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
pats = make_patients(1, seed=12, duration_s=60, fs_list=[128.0], prefix=prefix)
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(simulate(url, pats, speed=speed, t_start=t_start, seed=2)), flush=True)
"""


def _backend(tiny_ckpt: str):
    """One warm backend shared by the runs, so that none pays a cold start in its tail."""
    from engine.model.checkpoint import load_model
    from engine.serve.backends import make_backend

    b = make_backend("auto", load_model(tiny_ckpt, "p2es"), steps=STEPS, k=K, seed=0, threads=1, max_batch=16)
    for n in (1, 4, 16, 3, 1):
        b.run(
            np.zeros((n, 3, 1024), np.float32),
            np.zeros((n, 5), np.float32),
            np.zeros((n, 5), np.float32),
            [("warm-up", float(i)) for i in range(n)],
        )
    return b


async def _ward(tiny_ckpt, influxdb, tmp_path, backend, *, tag: str, t_start: float, flooder=None) -> dict:
    """One run: 20 patients at SPEED (and, given ``flooder``, its process at FLOOD_X) through the
    whole pipeline.  The normal patients' ECG and end-to-end latencies, the flooder's numbers."""
    import signal
    from collections import defaultdict

    from test_pipeline import free_port, make_config, wait_for

    from engine.app.pipeline import Pipeline, is_busy
    from wearable.publisher import make_patients, simulate_async

    port = free_port()
    cfg = make_config(
        tiny_ckpt,
        influxdb,
        tmp_path / ("flood" if flooder else "base"),
        client_id=f"p2es-test-fair-{tag}",  # the same session in every run
        journal=False,  # ... each a fresh start: run 3 must not rebuild run 1's streams
        metrics_port=port,
        steps=STEPS,
        k=K,
        **BUDGET,  # idle_flush_s stays 20 s: the tails are flushed by stop(), the same in every run
    )
    ecg: dict[str, list[np.ndarray]] = defaultdict(list)
    done_at: dict[tuple[str, float], float] = {}
    pipe = Pipeline(
        cfg,
        backend=backend,
        on_ecg=lambda c: ecg[c.patient].append(np.array(c.ecg)),
        on_vitals=lambda v: done_at.setdefault((v.patient, round(v.t - t_start, 3)), time.time()),
    )
    await pipe.start()
    await pipe.ingest.wait_connected(10)
    pats = make_patients(N_NORMAL, seed=11, duration_s=SIGNAL_S, fs_list=[FS], prefix=f"fair{tag}")
    fid = f"flood{tag}-000"
    flood: dict = {"sent": 0, "s": 0.0}
    if flooder is not None:
        flooder.stdin.write("go\n")
        flooder.stdin.flush()
        assert await wait_for(lambda: fid in pipe.ingest.registry, 30, 0.02), "no flood"
        t_flood0 = time.time()
    t_pub0 = time.time()
    await simulate_async(services.mqtt_url(), pats, speed=SPEED, duration_s=SIGNAL_S, t_start=t_start, seed=1)
    t_pubs = time.time() - t_pub0
    if flooder is not None:
        flooder.send_signal(signal.SIGTERM)
        out = await asyncio.to_thread(flooder.communicate, timeout=30)
        flood = {"sent": json.loads(out[0].strip().splitlines()[-1])["chunks"], "s": time.time() - t_flood0}
    # every message handled (the budget forgets a slot 10 s after its last refusal)
    seen = -1
    while seen != pipe.ingest.counters()["messages_in"]:
        seen = pipe.ingest.counters()["messages_in"]
        await asyncio.sleep(0.3)
    usage = pipe.ingest.budget.usage(fid)
    limited = pipe.ingest.budget.limited()
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    # the normal patients' windows all out (the flooder's admitted chunks beyond its burst are
    # isolated by long gaps: they complete no window, so it is not waited for)
    assert await wait_for(
        lambda: (
            all(pipe.stats()["patients"].get(p.id, {}).get("windows", 0) >= NW for p in pats)
            and not is_busy(pipe.stats())
        ),
        60,
    )
    print(
        f"run flood={flooder is not None}: published in {t_pubs:.1f} s, drained at {time.time() - t_pub0:.1f} s"
    )
    stats = pipe.stats()
    await pipe.stop()
    # end to end: window m (t0 = t_start + 4 m) is complete with chunk 4 m + 7, which the
    # simulator publishes at t_pub0 + (4 m + 7) / SPEED; done = its vitals handed out
    lat = [
        t_done - (t_pub0 + (round(dt / 4.0) * 4 + 7) / SPEED)
        for (pid, dt), t_done in done_at.items()
        if pid.startswith(f"fair{tag}")
    ]
    return {
        "ecg": {p.id: np.concatenate(ecg[p.id], axis=1) for p in pats},
        "windows": {p.id: stats["patients"][p.id]["windows"] for p in pats},
        "latency": np.array(lat),
        "flood_sent": flood["sent"],
        "flood_s": flood["s"],
        "usage": usage,
        "limited": limited,
        "invalid": stats["ingest"]["invalid"],
        "metrics": body,
        "flooder": fid,
        "patients": [p.id for p in pats],
    }


def _without_with_without(tiny_ckpt, influxdb, tmp_path, repo_root, backend, tag: str, t_start: float):
    """The three runs (no flood, flood, no flood) and their wall time."""
    import subprocess
    import sys

    flooder = subprocess.Popen(  # device clock 600 s behind: within the clock_skew tolerance all along
        [
            sys.executable,
            "-c",
            _FLOODER,
            services.mqtt_url(),
            f"flood{tag}",
            str(t_start - 600),
            str(FLOOD_X),
        ],
        cwd=repo_root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert flooder.stdout is not None and flooder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        runs = [
            asyncio.run(_ward(tiny_ckpt, influxdb, tmp_path, backend, tag=tag, t_start=t_start, flooder=f))
            for f in (None, flooder, None)
        ]
        return runs, time.monotonic() - t0
    finally:
        if flooder.poll() is None:
            flooder.kill()


def test_flood_leaves_the_others_identical_and_on_time(
    tiny_ckpt, mqtt_broker, influxdb, tmp_path, repo_root
) -> None:
    """20 patients at 2x real time without the flood, with one device at 100x (128 Hz, 1 s chunks,
    100 messages/s), and without it again; the recommended budget on in every run."""
    import re

    from test_pipeline import HOP, T

    tag = _uid()
    t_start = float(int(time.time()))  # the same device time in every run: the same noise seeds
    backend = _backend(tiny_ckpt)
    span = (NW - 1) * HOP + T
    for attempt in (1, 2):
        runs, took = _without_with_without(tiny_ckpt, influxdb, tmp_path, repo_root, backend, tag, t_start)
        base, fl = runs[0], runs[1]

        # 1. the others' output is identical (values handed to the sink, bit for bit) and complete
        for pid in base["patients"]:
            assert [r["windows"][pid] for r in runs] == [NW] * 3, pid
            assert base["ecg"][pid].shape == (12, span), (pid, base["ecg"][pid].shape)
            for r in runs[1:]:
                np.testing.assert_array_equal(r["ecg"][pid], base["ecg"][pid], err_msg=pid)
        rows = services.influx_points(
            f'SELECT count("II") FROM ecg WHERE patient =~ /^fair{tag}-/ GROUP BY patient'
        )
        assert sorted(r["patient"] for r in rows) == sorted(base["patients"])
        assert all(r["count"] == span for r in rows), rows  # one point per sample (the same every run)

        # 2. the flooder is bounded: what it got <= burst + factor x fs x duration (+1 s: the
        # flood is seen a little after it starts and delivered a little after it stops)
        u = fl["usage"]
        assert u is not None
        assert fl["flood_sent"] * FS >= 25 * FS * fl["flood_s"]  # >= 25 x its rate even on a busy machine
        bound = (BUDGET["rate_limit_burst_s"] + BUDGET["rate_limit_factor"] * (fl["flood_s"] + 1.0)) * FS
        assert BUDGET["rate_limit_burst_s"] * FS <= u["admitted_samples"] <= bound, (u, bound)  # not a block
        assert fl["flood_sent"] == u["refused_messages"] + u["admitted_samples"] / FS  # each chunk: in or out
        # of this test's patients only the flooder was limited (other tests may share the broker)
        assert [p for p in fl["limited"] if tag in p] == [fl["flooder"]]
        assert not [p for r in runs[::2] for p in r["limited"] if tag in p]

        # its refusals are dead letters, counted in Prometheus
        def metric(body: str, name: str) -> float:
            m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
            assert m is not None, name
            return float(m.group(1))

        assert fl["invalid"].get("rate_limited", 0) >= u["refused_messages"] > 0.8 * fl["flood_sent"]
        assert (
            metric(fl["metrics"], 'p2es_messages_invalid_total{reason="rate_limited"}')
            >= u["refused_messages"]
        )
        assert metric(fl["metrics"], "p2es_samples_rate_limited_total") >= u["refused_samples"] > 0
        assert metric(fl["metrics"], "p2es_patients_rate_limited") >= 1

        # 3. the others' p95 end-to-end latency (publish -> reconstructed window out) within 20 %
        # of the runs without the flood.  The baseline is measured before and after the flood run
        # and pooled, so that a drift of the machine's background load is not taken for the flood's
        # doing.  The floor: on 2 shared CPU cores a p95 of 0.1-0.5 s varies by tens of ms between
        # identical runs, so the tolerance is max(20 %, 50 ms).  On a machine overloaded by other
        # jobs a load spike can still land on the flood run alone: then the three runs are repeated
        # once, and the repeat must pass.  Without the budget the flooder's 100 s of signal per
        # second (25 windows/s through the model) multiplies the p95 (measured: ~1 s -> 5-6 s;
        # docs/operations.md), so neither attempt could pass.
        assert all(r["latency"].size == N_NORMAL * NW for r in runs)
        p95_base = float(np.percentile(np.concatenate([runs[0]["latency"], runs[2]["latency"]]), 95))
        p95_flood = float(np.percentile(fl["latency"], 95))
        each = ", ".join(f"{np.percentile(r['latency'], 95) * 1e3:.0f}" for r in runs[::2])
        print(
            f"\nfairness (attempt {attempt}): p95 e2e {p95_base * 1e3:.0f} ms without the flood ({each}), "
            f"{p95_flood * 1e3:.0f} ms with it; flooder sent {fl['flood_sent']} chunks "
            f"({fl['flood_sent'] * FS:.0f} samples) in {fl['flood_s']:.1f} s, {u['admitted_samples']} "
            f"samples admitted (bound {bound:.0f}); took {took:.0f} s"
        )
        assert took < 60
        ok = p95_flood <= max(1.2 * p95_base, p95_base + LATENCY_FLOOR_S)
        if ok or attempt == 2:
            break
    assert ok, (p95_base, p95_flood)
