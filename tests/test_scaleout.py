"""Scale-out on NATS JetStream (issue #14) against the REAL 3-node NATS cluster of
scripts/nats.sh (MQTT listener on every node) and the real InfluxDB: `p2es run --bus` workers as
processes, simulated wearables over MQTT 3.1.1 into the NATS nodes.

The scenario test runs, on one clock: 3 workers, 30 patients publishing in real time; kill -9 of
a worker; a 4th worker joining; a NATS node killed and brought back.  It then checks, per patient,
that the ECG in InfluxDB is continuous to the sample over the whole run (nothing lost; one point
per timestamp), and from the workers' own logs that no shard was held by two workers at once,
that the dead worker's shards were taken over within 6 s and that the joining worker took its
share within 4 s (the target is 2 s).  Timing bounds are generous here (2 busy cores); bench/scaleout.py measures.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import services

pytestmark = [pytest.mark.services, pytest.mark.nats]

FS = 128.0
STEP_NS = 7_812_500
T, HOP = 1024, 512
SHARDS = 8
_CLI = "import sys; from p2es.cli import main; sys.exit(main(sys.argv[1:]))"
_EVENT = re.compile(r"shard (\d+) (acquired|released|pin taken by another client) by (\S+) at ([0-9.]+)")
_LIVE = re.compile(r"^(\S+ \S+) INFO p2es\.ingest\.bus: live workers: (\S+)")


# ----------------------------------------------------------------------------- pure functions
def test_shard_of_matches_fnv1a_and_rendezvous_is_stable() -> None:
    from p2es.contracts.topics import nats_subject, patient_from_nats_token
    from p2es.transport.nats import (
        assign_shards,
        parse_ack_subject,
        parse_bus_url,
        rendezvous_owner,
        shard_of,
    )

    # FNV-1a 32 reference values ("" -> offset basis; "a" -> 0xe40c292c)
    assert shard_of("", 1 << 16) == 0x811C9DC5 % (1 << 16)
    assert shard_of("a", 1000) == 0xE40C292C % 1000
    assert nats_subject("p2es/v1/patients/a.b/ppg/bin") == "p2es.v1.patients.a//b.ppg.bin"
    assert nats_subject("p2es/v1/patients/+/#") == "p2es.v1.patients.*.>"
    assert patient_from_nats_token("a//b//c") == "a.b.c"
    ws = [f"w{i}" for i in range(5)]
    a = assign_shards(128, ws)
    assert sorted(s for ss in a.values() for s in ss) == list(range(128))
    assert all(len(ss) > 10 for ss in a.values())  # every worker gets a share
    # a leaving worker moves only its own shards
    b = assign_shards(128, ws[:-1])
    for w in ws[:-1]:
        assert set(a[w]) <= set(b[w])
    assert rendezvous_owner(3, []) is None
    assert parse_bus_url("nats://h1:1,h2,nats://h3:3") == ["nats://h1:1", "nats://h2:4222", "nats://h3:3"]
    for bad in ("mqtt://h:1", "nats://", "nats://h:x"):
        with pytest.raises(ValueError):
            parse_bus_url(bad)
    m = parse_ack_subject("$JS.ACK.S.C.2.10.7.1700000000000000000.3")
    assert m is not None and (m.stream, m.consumer, m.delivered, m.stream_seq, m.pending) == (
        "S",
        "C",
        2,
        10,
        3,
    )
    assert parse_ack_subject("_INBOX.x") is None


def test_live_set_hysteresis() -> None:
    """A key missing from one read of the membership bucket is not gone (a listing is not
    atomic); missing for grace_s of successful reads it is; a new key counts at once."""
    from p2es.transport.nats import LiveSet

    m = LiveSet("w1", grace_s=1.0)
    assert m.live == ["w1"]
    assert m.observe(["w1", "w2", "w3"], 10.0) == ["w1", "w2", "w3"]
    assert m.observe(["w1"], 10.5) == ["w1", "w2", "w3"]  # a partial read: nobody dropped
    assert m.observe([], 10.9) == ["w1", "w2", "w3"]  # "alone" (e.g. after a node's loss)
    assert m.observe(["w2", "w3", "w4"], 11.0) == ["w1", "w2", "w3", "w4"]  # back; w4 at once
    assert m.observe(["w2", "w4"], 11.5) == ["w1", "w2", "w3", "w4"]  # w3 missing since 11.5
    assert m.observe(["w2", "w4"], 12.4) == ["w1", "w2", "w3", "w4"]
    assert m.observe(["w2", "w4"], 12.5) == ["w1", "w2", "w4"]  # 1.0 s of reads without w3
    assert m.observe(["w2", "w3", "w4"], 12.6) == ["w1", "w2", "w3", "w4"]  # w3 again: at once
    # the clock of absence starts at the first successful read without the key (a failed read is
    # not observed): a bus outage longer than grace_s drops nobody by itself
    assert m.observe(["w1", "w2", "w3", "w4"], 13.0) == ["w1", "w2", "w3", "w4"]
    assert m.observe(["w1"], 60.0) == ["w1", "w2", "w3", "w4"]
    assert m.observe(["w1", "w2", "w3"], 60.5) == ["w1", "w2", "w3", "w4"]
    assert m.observe(["w1", "w2", "w3"], 61.0) == ["w1", "w2", "w3"]
    assert LiveSet("w1", grace_s=0.0).observe(["w2"], 0.0) == ["w1", "w2"]


# ----------------------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def nats_cluster() -> list[str]:
    """The test cluster; started (missing nodes only) by scripts/nats.sh if needed."""
    nodes = range(1, services.nats_nodes() + 1)
    if not all(services.nats_healthy(i) for i in nodes):
        try:
            services.start_nats()
        except Exception as e:  # noqa: BLE001 - reported as a failure, never a skip
            pytest.fail(
                f"the NATS cluster is not running and scripts/nats.sh start failed: {e}", pytrace=False
            )
    return [f"nats://{services.HOST}:{services.nats_port(i)}" for i in nodes]


def test_jetstream_pinned_consumer_api(nats_cluster) -> None:
    """The JSON API module against the server: the transform puts a patient where shard_of
    says, one pinned client per shard (423 for another pin id), UNPIN hands the shard over."""
    import aiomqtt
    import nats

    from p2es.transport.nats import BusLayout, JetStreamApi, PinnedPuller, shard_of

    tag = uuid.uuid4().hex[:6]
    lay = BusLayout(shards=SHARDS, stream=f"T{tag}", shard_root=f"t{tag}.shard", replicas=3)
    pids = [f"api{tag}-{i}" for i in range(6)] + [f"api{tag}.dot"]

    async def main() -> None:
        nc = await nats.connect(nats_cluster)
        api = JetStreamApi(nc)
        cfg = lay.stream_config()
        cfg["subjects"] = [f"t{tag}.in.*.ppg"]  # its own subjects (the real stream has p2es.v1)
        cfg["subject_transform"]["src"] = f"t{tag}.in.*.>"
        try:
            await api.ensure_stream(cfg)
            await api.ensure_stream(cfg)  # idempotent
            for s in range(SHARDS):
                await api.ensure_consumer(lay.stream, lay.shard_consumer_config(s))
            async with aiomqtt.Client(
                services.HOST, services.nats_mqtt_port(2), protocol=aiomqtt.ProtocolVersion.V311
            ) as c:
                for pid in pids:
                    await c.publish(f"t{tag}/in/{pid}/ppg", b"{}", qos=1)
            by_shard: dict[int, set[str]] = {}
            for pid in pids:
                by_shard.setdefault(shard_of(pid.replace(".", "//"), SHARDS), set()).add(pid)
            for k, expected in by_shard.items():
                p1 = PinnedPuller(nc, lay.stream, lay.consumer_name(k), group=lay.group)
                got = await p1.pull(50, 1.0)
                assert p1.pin_id, got.status
                assert {lay.parse_shard_subject(m.subject)[1] for m in got.messages} == expected, k
                for m in got.messages:
                    await nc.publish(m.reply, b"+ACK")
                p2 = PinnedPuller(nc, lay.stream, lay.consumer_name(k), group=lay.group)
                p2.pin_id = "not-the-pin"
                r2 = await p2.pull(10, 0.5)
                assert r2.status == 423 and not r2.messages and p2.pin_id is None
                await api.unpin(lay.stream, lay.consumer_name(k), lay.group)
                info = await api.consumer_info(lay.stream, lay.consumer_name(k))
                assert not any(g.get("pinned_client_id") for g in info.get("priority_groups", []))
                await p1.close()
                await p2.close()
        finally:
            await api.request(f"$JS.API.STREAM.DELETE.{lay.stream}")
            await nc.close()

    asyncio.run(main())


def test_membership_bucket_ttl_follows_the_setting(nats_cluster) -> None:
    """A bucket made under another member_ttl_s gets this one's TTL (its stream's max_age),
    the rest of its configuration kept; a second call changes nothing."""
    import nats

    from p2es.transport.nats import JetStreamApi

    bucket = f"ttl{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        nc = await nats.connect(nats_cluster)
        api = JetStreamApi(nc)
        try:
            kv = await nc.jetstream().create_key_value(bucket=bucket, ttl=5.0, replicas=3, history=1)
            await kv.put("w1", b"{}")
            assert await api.ensure_max_age(f"KV_{bucket}", 2.0) == pytest.approx(5.0)
            assert await api.ensure_max_age(f"KV_{bucket}", 2.0) is None
            cfg = (await api.stream_info(f"KV_{bucket}"))["config"]
            assert cfg["max_age"] == 2_000_000_000 and cfg["num_replicas"] == 3
            assert cfg["max_msgs_per_subject"] == 1
            assert await api.stream_subjects(f"KV_{bucket}", f"$KV.{bucket}.>") == [f"$KV.{bucket}.w1"]
        finally:
            await api.request(f"$JS.API.STREAM.DELETE.KV_{bucket}")
            await nc.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- the scenario
def _worker(name: str, tiny_ckpt: str, cfg_file: Path, log: Path, tmp: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [
        "run",
        "--bus",
        services.nats_bus_url(),
        "--shards",
        str(SHARDS),
        "--config",
        str(cfg_file),
        "--client-id",
        name,
        "--checkpoint",
        tiny_ckpt,
        "--spool-dir",
        str(tmp / f"spool-{name}"),
        "--stats-every",
        "0",
    ]
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-c", _CLI, *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )


def _events(logs: dict[str, Path]) -> list[tuple[float, int, str, str]]:
    """(time, shard, what, worker) of every acquire/release line of every worker."""
    out = []
    for path in logs.values():
        for m in _EVENT.finditer(path.read_text(errors="replace")):
            out.append((float(m[4]), int(m[1]), "acquired" if m[2] == "acquired" else "released", m[3]))
    return sorted(out)


async def _follower_node(servers: list[str]) -> int:
    """A node (1-based) that is not the leader of the PPG stream."""
    import nats

    from p2es.transport.nats import BusLayout, JetStreamApi

    nc = await nats.connect(servers)
    try:
        info = await JetStreamApi(nc).stream_info(BusLayout().stream)
    finally:
        await nc.close()
    leader = info["cluster"]["leader"]  # server_name p2es-n<i> (scripts/nats.sh)
    return next(i for i in range(services.nats_nodes(), 0, -1) if leader != f"p2es-n{i}")


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def test_three_workers_failover_join_and_node_loss(nats_cluster, tiny_ckpt, influxdb, tmp_path) -> None:
    from p2es.transport.nats import assign_shards
    from wearable.publisher import make_patients, simulate_async

    url, db = influxdb
    while True:  # the joining worker must own some shard among 4 (rendezvous is deterministic)
        tag = uuid.uuid4().hex[:6]
        names = [f"w{tag}-{i}" for i in range(1, 5)]
        if assign_shards(SHARDS, names)[names[3]] and assign_shards(SHARDS, names[:3])[names[0]]:
            break
    cfg_file = tmp_path / "worker.yaml"
    cfg_file.write_text(
        f"influx_url: {url}\ninflux_db: {db}\nbackend: torch\nsteps: 2\nk: 1\nthreads: 1\n"
        "max_batch: 16\nmax_wait_ms: 20\nwriter_batch_lines: 2000\nwriter_flush_interval_s: 0.3\n"
        "writer_backoff_cap_s: 1.0\nstream_reorder_wait_s: 1.0\nidle_flush_s: 3.0\nbus_replicas: 3\n"
        "publish_vitals: false\nhealth_interval_s: 0\n"
    )
    logs = {n: tmp_path / f"{n}.log" for n in names}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    n_pat, duration = 30, 40.0
    marks: dict[str, float] = {}
    try:
        for n in names[:3]:
            procs[n] = _worker(n, tiny_ckpt, cfg_file, logs[n], tmp_path)
        _wait(
            lambda: all(",".join(sorted(names[:3])) in logs[n].read_text() for n in names[:3]),
            90,
            "3 workers to see each other",
        )
        t_start = float(int(time.time()) + 1)
        pats = make_patients(n_pat, seed=7, duration_s=duration, fs_list=[128.0], prefix=f"so{tag}")

        async def scenario() -> list[dict[str, int]]:
            stop = asyncio.Event()
            sims = [  # 10 patients per NATS node
                asyncio.create_task(
                    simulate_async(
                        f"mqtt://{services.HOST}:{services.nats_mqtt_port(i + 1)}",
                        pats[i * 10 : (i + 1) * 10],
                        duration_s=duration,
                        t_start=t_start,
                        mqtt_version="3.1.1",
                        stop=stop,
                    )
                )
                for i in range(3)
            ]
            await asyncio.sleep(max(0.0, t_start - time.time()) + 9)
            procs[names[0]].send_signal(signal.SIGKILL)  # a worker dies
            marks["kill"] = time.time()
            await asyncio.sleep(4)
            procs[names[3]] = _worker(names[3], tiny_ckpt, cfg_file, logs[names[3]], tmp_path)
            await asyncio.sleep(11)
            # a NATS node dies (one that does not lead the PPG stream: see docs/scaling.md for a
            # leader's loss) and comes back 4 s later; its publishers reconnect
            node = await _follower_node(nats_cluster)
            pid = services.nats_pid(node)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            marks["node_kill"] = time.time()
            await asyncio.sleep(4)
            await asyncio.to_thread(services.start_nats)
            marks["node_back"] = time.time()
            try:
                return list(await asyncio.wait_for(asyncio.gather(*sims), 60))
            finally:
                stop.set()

        counters = asyncio.run(scenario())
        assert sum(c["chunks"] for c in counters) == n_pat * int(duration)
        assert sum(c["reconnects"] for c in counters) >= 1, counters  # the killed node's publisher
        time.sleep(6)  # reorder + idle flush (3 s) of the last windows
        for n in names[1:]:
            procs[n].send_signal(signal.SIGTERM)  # flushes what it holds
        for n in names[1:]:
            assert procs[n].wait(60) == 0, logs[n].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if not all(services.nats_healthy(i) for i in range(1, services.nats_nodes() + 1)):
            services.start_nats()

    # 1. every patient's ECG is continuous to the sample over the whole run, each timestamp once
    #    (InfluxDB keeps one point per series + timestamp: a handover's overlap is re-written)
    nw = int(np.ceil((duration * FS - T) / HOP))
    span = (nw - 1) * HOP + T
    rows = services.influx_points(f'SELECT count("II") FROM ecg WHERE patient=~/^so{tag}-/ GROUP BY patient')
    assert len(rows) == n_pat, rows
    for p in pats:
        t = np.array(
            [r["time"] for r in services.influx_points(f"SELECT \"II\" FROM ecg WHERE patient='{p.id}'")],
            dtype=np.int64,
        )
        # at least the windows of one owner's grid, at most the signal sent (a new owner's window
        # grid starts at its replay, so its last window may end up to a hop later)
        assert span <= t.size <= duration * FS, (p.id, t.size, span)
        assert t[0] == int(t_start * 1e9), p.id
        assert np.all(np.diff(t) == STEP_NS), (p.id, np.unique(np.diff(t))[:5])

    # 2. no shard held by two workers at once (the dead worker's hold ends at the kill)
    ev = _events(logs)
    held: dict[int, tuple[str, float]] = {}
    intervals: dict[int, list[tuple[float, float, str]]] = {s: [] for s in range(SHARDS)}
    for t, s, what, w in ev:
        if what == "acquired":
            if s in held and held[s][0] == names[0] and t >= marks["kill"]:
                intervals[s].append((held[s][1], marks["kill"], names[0]))
                del held[s]
            assert s not in held, f"shard {s} acquired by {w} at {t:.3f} while {held.get(s)} holds it"
            held[s] = (w, t)
        elif s in held and held[s][0] == w:
            intervals[s].append((held[s][1], t, w))
            del held[s]

    # 3. the dead worker's shards resumed elsewhere within 6 s
    dead_shards = {
        s for s, iv in intervals.items() for (_a, b, w) in iv if w == names[0] and b == marks["kill"]
    }
    assert dead_shards, f"the killed worker held no shard; kill at {marks['kill']:.3f}; events {ev}"
    for s in dead_shards:
        after = [t for t, s2, what, w in ev if s2 == s and what == "acquired" and t >= marks["kill"]]
        assert after and after[0] - marks["kill"] < 6.0, (s, after[:1], marks["kill"])

    # 4. the joining worker took its share within 2 s of joining -- asserted generously here
    # (4 s: 4 workers, 3 nodes, 30 publishers and InfluxDB share the 2 cores of `make test`; a
    # quiet fresh-clone run once took 2.005 s); bench/scaleout.py measures it (1.0 s) and
    # reports it against the tight 2 s target
    text = logs[names[3]].read_text()
    joined = min(float(m[4]) for m in _EVENT.finditer(text) if m[2] == "acquired")
    first_live = next(m for m in (_LIVE.match(line) for line in text.splitlines()) if m)
    t_join = (
        time.mktime(time.strptime(first_live[1].split(",")[0], "%Y-%m-%d %H:%M:%S"))
        + int(first_live[1].split(",")[1]) / 1000
    )
    assert joined - t_join < 4.0, (joined, t_join)
