"""Scale-out bench (issue #14, docs/scaling.md): what this machine measures for the capacity plan.

    .venv/bin/python bench/scaleout.py            # the long version (>= 5 min), prints the table
    .venv/bin/python bench/scaleout.py --quick    # a smoke run (~3 min)
    .venv/bin/python bench/scaleout.py --markdown out/scaleout.md

Measured, in one run (ratios are taken within the run):

1. **broker** messages/s of 1 KB MQTT 3.1.1 QoS 1 publishes, and each broker's CPU per message
   (from /proc): the test Mosquitto (scripts/services.sh, 127.0.0.1:18830) with one QoS 1
   subscriber, vs a private 3-node NATS cluster (scripts/nats.sh on other ports, MQTT listeners,
   the R3 file stream ``P2ES_PPG`` of the deployment storing every message);
2. **engine workers**: patients sustained with 1, 2, 3 ``p2es run --bus`` workers (the light test
   backend: the tiny checkpoint on torch, 2 sampler steps, K = 1, one thread: the pipeline, not
   the model, is measured).  Per worker count: real-time steps of 1.4x more patients until one
   is not sustained (window rate >= 90 % of patients / hop, no window dropped, e2e p95 <= 5 s);
3. **failover** (``kill -9`` of a worker -> its last shard acquired elsewhere) and **rebalance**
   (a joining worker -> its first and last shard), from the workers' own log lines;
4. **InfluxDB 1.x** (the test instance, 127.0.0.1:18086) points/s of the engine's ECG lines
   (12 fields a point) in 5,000-line batches, into a database made and dropped by the bench;
5. **alerts**: vitals/s one ``p2es alerts run`` process takes (Mosquitto, default rules, no
   webhooks) -> patients at one vitals message per hop.

Everything runs on this machine: publishers, brokers, workers, InfluxDB and whatever else runs
(training jobs) share its cores, so every figure is a lower bound for a dedicated machine, and the
worker curve flattens once the cores are busy.  The private NATS cluster, the bench database and
the processes are removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import services  # noqa: E402  (tests/services.py: ports of the test services)

from p2es.transport.metrics import parse_text  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
HOP_S = 4.0
SHARDS = 16
_CLI = "import sys; from p2es.cli import main; sys.exit(main(sys.argv[1:]))"
_EVENT = re.compile(r"shard (\d+) (acquired|released|pin taken by another client) by (\S+) at ([0-9.]+)")
_LIVE = re.compile(r"^(\S+ \S+),(\d+) INFO p2es\.ingest\.bus: live workers: (\S+)", re.M)


# ----------------------------------------------------------------------------- small helpers
def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def pid_file(path: Path) -> int:
    return int(path.read_text().strip())


@dataclasses.dataclass
class Row:
    what: str
    value: str
    note: str = ""


# ----------------------------------------------------------------------------- the private NATS cluster
class BenchCluster:
    """A private 3-node NATS cluster from scripts/nats.sh on its own ports and run dir (the test
    cluster stays untouched); it has the device ACL of deploy/nats/add-user.sh."""

    def __init__(self, base: int) -> None:
        self.run_dir = REPO / ".run" / "bench-scaleout"
        self.env = dict(
            os.environ,
            P2ES_RUN_DIR=str(self.run_dir),
            P2ES_TEST_NATS_PORT=str(base),
            P2ES_TEST_NATS_CLUSTER_PORT=str(base + 100),
            P2ES_TEST_NATS_HTTP_PORT=str(base + 200),
            P2ES_TEST_NATS_MQTT_PORT=str(base + 300),
        )
        self.base = base

    def _script(self, action: str) -> None:
        r = subprocess.run(
            ["bash", str(REPO / "scripts" / "nats.sh"), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"scripts/nats.sh {action}: {r.stdout}{r.stderr}")

    def start(self) -> None:
        shutil.rmtree(self.run_dir / "nats", ignore_errors=True)  # a fresh store every run
        self._script("start")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._script("stop")
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.base + i}" for i in range(3)]

    def bus_url(self) -> str:
        return "nats://" + ",".join(f"127.0.0.1:{self.base + i}" for i in range(3))

    def mqtt_port(self, node: int) -> int:
        return self.base + 300 + node - 1

    def pids(self) -> list[int]:
        return [pid_file(self.run_dir / "nats" / f"n{i}" / "nats-server.pid") for i in (1, 2, 3)]


async def _js(servers: list[str], fn: Any) -> Any:
    import nats

    from p2es.transport.nats import JetStreamApi

    nc = await nats.connect(servers)  # no credentials: the cluster's admin (no_auth_user)
    try:
        return await fn(JetStreamApi(nc, timeout_s=10.0))
    finally:
        await nc.close()


def js(servers: list[str], fn: Any) -> Any:
    return asyncio.run(_js(servers, fn))


# ----------------------------------------------------------------------------- 1. brokers
def _publisher(port: int, topics: list[str], seconds: float, window: int, out: Any) -> None:
    """One MQTT 3.1.1 QoS 1 publisher process: publishes 1 KB as fast as the broker acknowledges
    (at most ``window`` unacknowledged); puts the count of acknowledged messages."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(window)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = (b'{"bench": "' + b"x" * 1000 + b'"}')[:1024]
    infos: list[Any] = []
    n, i = 0, 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        infos.append(c.publish(topics[i % len(topics)], payload, qos=1))
        i += 1
        if len(infos) >= window:
            for inf in infos[: window // 2]:
                inf.wait_for_publish(5)
                n += int(inf.is_published())
            del infos[: window // 2]
    for inf in infos:
        inf.wait_for_publish(5)
        n += int(inf.is_published())
    c.loop_stop()
    c.disconnect()
    out.put(n)


def _subscriber(port: int, topic: str, ready: Any, stop: Any, out: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    count = [0]
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-sub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )

    def on_msg(_c: Any, _u: Any, _m: Any) -> None:
        count[0] += 1

    c.on_message = on_msg
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    time.sleep(0.5)
    ready.set()
    stop.wait()
    last = -1
    while count[0] != last:  # until the broker's queue to us is drained
        last = count[0]
        time.sleep(1.0)
    c.loop_stop()
    c.disconnect()
    out.put(count[0])


def _broker_round(
    ports: list[int], topics: list[str], seconds: float, publishers: int, pids: list[int]
) -> tuple[int, float, float]:
    """Publishers spread over ``ports``: (acknowledged, seconds, broker CPU seconds)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_publisher, args=(ports[k % len(ports)], topics[k::publishers], seconds, 200, q))
        for k in range(publishers)
    ]
    c0 = sum(cpu_s(p) for p in pids)
    t0 = time.monotonic()
    for p in procs:
        p.start()
    acked = sum(q.get(timeout=seconds + 60) for _ in procs)
    dt = time.monotonic() - t0
    for p in procs:
        p.join(10)
    return acked, dt, sum(cpu_s(p) for p in pids) - c0


def bench_brokers(cluster: BenchCluster, seconds: float, publishers: int) -> list[Row]:
    from p2es.transport.nats import BusLayout

    tag = uuid.uuid4().hex[:6]
    rows: list[Row] = []
    # Mosquitto: the test broker, one QoS 1 subscriber that receives everything (like the engine)
    mosq_pid = pid_file(Path(os.environ.get("P2ES_RUN_DIR", REPO / ".run")) / "mosquitto" / "mosquitto.pid")
    ctx = mp.get_context("spawn")
    q, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    sub = ctx.Process(target=_subscriber, args=(services.mqtt_port(), f"p2esbench/{tag}/#", ready, stop, q))
    sub.start()
    ready.wait(20)
    topics = [f"p2esbench/{tag}/patients/b{i:03d}/ppg" for i in range(100)]
    acked, dt, cpu = _broker_round([services.mqtt_port()], topics, seconds, publishers, [mosq_pid])
    stop.set()
    received = q.get(timeout=30)
    sub.join(10)
    m_rate, m_us = acked / dt, 1e6 * cpu / max(acked, 1)
    say(
        f"mosquitto: {m_rate:,.0f} msg/s acknowledged, {received:,} of {acked:,} received, {m_us:.1f} µs CPU/msg"
    )

    # NATS: MQTT into the 3 nodes, every message stored by the R3 file stream P2ES_PPG
    lay = BusLayout(shards=SHARDS, replicas=3)
    js(cluster.servers(), lambda api: api.ensure_stream(lay.stream_config()))
    before = js(cluster.servers(), lambda api: api.stream_info(lay.stream))["state"]["messages"]
    topics = [f"p2es/v1/patients/bench{tag}-{i:03d}/ppg" for i in range(100)]
    ports = [cluster.mqtt_port(n) for n in (1, 2, 3)]
    acked_n, dt_n, cpu_n = _broker_round(ports, topics, seconds, publishers, cluster.pids())
    time.sleep(1.0)
    stored = js(cluster.servers(), lambda api: api.stream_info(lay.stream))["state"]["messages"] - before
    js(cluster.servers(), lambda api: api.request(f"$JS.API.STREAM.PURGE.{lay.stream}", {}))
    n_rate, n_us = acked_n / dt_n, 1e6 * cpu_n / max(acked_n, 1)
    say(
        f"nats: {n_rate:,.0f} msg/s acknowledged, {stored:,} of {acked_n:,} stored, {n_us:.1f} µs CPU/msg (3 nodes)"
    )
    rows += [
        Row(
            "Mosquitto 2.0, MQTT QoS 1, 1 KB",
            f"{m_rate:,.0f} msg/s",
            f"{m_us:.0f} µs broker CPU/msg -> {1e6 / m_us:,.0f} msg/s per broker core; "
            f"{received:,}/{acked:,} delivered to the subscriber",
        ),
        Row(
            "NATS 3 nodes, MQTT QoS 1 into R3 stream, 1 KB",
            f"{n_rate:,.0f} msg/s",
            f"{n_us:.0f} µs CPU/msg (sum of 3 nodes) -> {1e6 / n_us:,.0f} msg/s per core of cluster; "
            f"{stored:,}/{acked_n:,} stored",
        ),
        Row(
            "NATS / Mosquitto, same run",
            f"{n_us / m_us:.1f}x CPU per msg",
            f"rate {n_rate / m_rate:.2f}x ({publishers} publisher processes; client-bound when the "
            "rate is the same)",
        ),
    ]
    return rows


# ----------------------------------------------------------------------------- 2-3. engine workers
def tiny_checkpoint(dirpath: Path) -> str:
    """The tests' tiny checkpoint (tests/conftest.py tiny_ckpt): cheap to run, its ECG is noise."""
    from engine.model.train import train_tiny

    path = dirpath / "tiny.pt"
    train_tiny(path)
    return str(path)


class Workers:
    """``p2es run --bus`` worker processes (account p2es-engine) with their logs and metrics."""

    def __init__(self, cluster: BenchCluster, ckpt: str, db: str, tmp: Path) -> None:
        self.cluster, self.ckpt, self.tmp = cluster, ckpt, tmp
        self.cfg = tmp / "worker.yaml"
        self.cfg.write_text(
            f"influx_url: {services.influx_url()}\ninflux_db: {db}\nbackend: torch\nsteps: 2\nk: 1\n"
            "threads: 1\nmax_batch: 32\nmax_wait_ms: 50\nwriter_batch_lines: 5000\n"
            "writer_flush_interval_s: 0.5\nwriter_backoff_cap_s: 2.0\nstream_reorder_wait_s: 1.0\n"
            "idle_flush_s: 3.0\nbus_replicas: 3\npublish_vitals: false\nhealth_interval_s: 0\n"
            "mqtt_username: p2es-engine\n"
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str) -> None:
        port = free_port()
        log = self.tmp / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", P2ES_MQTT_PASSWORD=services.nats_password("p2es-engine"))
        args = [
            "run",
            "--bus",
            self.cluster.bus_url(),
            "--shards",
            str(SHARDS),
            "--config",
            str(self.cfg),
            "--client-id",
            name,
            "--checkpoint",
            self.ckpt,
            "--spool-dir",
            str(self.tmp / f"spool-{name}"),
            "--metrics-port",
            str(port),
            "--stats-every",
            "0",
        ]
        with open(log, "ab") as f:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-c", _CLI, *args], stdout=f, stderr=subprocess.STDOUT, env=env
            )
        self.ports[name], self.logs[name] = port, log

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def wait_members(self, names: list[str], timeout: float = 120.0) -> None:
        """Until every one of ``names`` logged a live set of exactly ``names`` (and serves metrics)."""
        want = ",".join(sorted(names))
        deadline = time.monotonic() + timeout
        while True:
            ok = all(
                any(m[3] == want for m in _LIVE.finditer(self.logs[n].read_text(errors="replace")))
                for n in names
            )
            if ok and all(self.metrics(n) for n in names):
                return
            for n in names:
                if self.procs[n].poll() is not None:
                    raise RuntimeError(f"worker {n} exited: {self.logs[n].read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {want} did not see each other in {timeout:.0f} s")
            time.sleep(0.3)

    def metrics(self, name: str) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return parse_text(text)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def stop_all(self) -> None:
        for n in list(self.procs):
            if self.procs[n].poll() is None:
                self.procs[n].send_signal(signal.SIGTERM)
        for n in list(self.procs):
            self.stop(n)

    def events(self) -> list[tuple[float, int, str, str]]:
        out = []
        for path in self.logs.values():
            for m in _EVENT.finditer(path.read_text(errors="replace")):
                out.append((float(m[4]), int(m[1]), "acquired" if m[2] == "acquired" else "released", m[3]))
        return sorted(out)

    def live_line_times(self, name: str) -> list[float]:
        out = []
        for m in _LIVE.finditer(self.logs[name].read_text(errors="replace")):
            t = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            out.append(t)
        return out


def _sim_process(url: str, pats: list[Any], duration: float, t_start: float) -> None:
    from wearable.publisher import simulate_async

    asyncio.run(simulate_async(url, pats, duration_s=duration, t_start=t_start, mqtt_version="3.1.1"))


def make_sim(n: int, tag: str, seed: int) -> list[Any]:
    """``n`` simulated patients at 128 Hz (30 s of PPG each, looped by the publisher)."""
    from wearable.publisher import SimPatient, make_patients

    base = make_patients(min(n, 40), seed=seed, duration_s=30.0, fs_list=[128.0], prefix=tag)
    return [
        SimPatient(f"{tag}-{i:04d}", b.fs, b.ppg, b.profile, b.rhythm)
        for i, b in ((i, base[i % len(base)]) for i in range(n))
    ]


class Publishers:
    """Simulated wearables in real time, one process per NATS node (MQTT 3.1.1, QoS 1)."""

    def __init__(self, cluster: BenchCluster, pats: list[Any], duration: float) -> None:
        ctx = mp.get_context("spawn")
        self.t_start = float(int(time.time()) + 2)
        self.procs = [
            ctx.Process(
                target=_sim_process,
                args=(f"mqtt://127.0.0.1:{cluster.mqtt_port(k + 1)}", pats[k::3], duration, self.t_start),
                daemon=True,
            )
            for k in range(3)
        ]
        for p in self.procs:
            p.start()

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(10)


def _sum(ms: list[dict[str, float]], key: str) -> float:
    return sum(m.get(key, 0.0) for m in ms)


def _hist(ms: list[dict[str, float]], name: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for m in ms:
        for k, v in m.items():
            if k.startswith(name + "_bucket{"):
                le = k.split('le="', 1)[1].split('"', 1)[0]
                b = math.inf if le == "+Inf" else float(le)
                out[b] = out.get(b, 0.0) + v
    return out


def _p95(h0: dict[float, float], h1: dict[float, float]) -> float:
    """Upper bucket bound holding the 95th percentile of the observations between two scrapes."""
    d = {b: h1.get(b, 0.0) - h0.get(b, 0.0) for b in h1}
    total = d.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    for b in sorted(d):
        if d[b] >= 0.95 * total:
            return b
    return math.inf


def load_step(
    workers: Workers, cluster: BenchCluster, names: list[str], n: int, seconds: float, warm: float, tag: str
) -> dict[str, float]:
    """``n`` patients in real time for ``warm + seconds``; measured over the last ``seconds``."""
    pats = make_sim(n, tag, seed=n)
    pub = Publishers(cluster, pats, warm + seconds + 5)
    try:
        time.sleep(max(0.0, pub.t_start - time.time()) + warm)
        m0 = [workers.metrics(w) for w in names]
        t0 = time.monotonic()
        c0 = os.times()
        time.sleep(seconds)
        m1 = [workers.metrics(w) for w in names]
        dt = time.monotonic() - t0
        c1 = os.times()
    finally:
        pub.stop()
    rate = (_sum(m1, "p2es_windows_total") - _sum(m0, "p2es_windows_total")) / dt
    chunks = (_sum(m1, "p2es_messages_in_total") - _sum(m0, "p2es_messages_in_total")) / dt
    handovers = _sum(m1, "p2es_bus_shards_acquired_total") - _sum(m0, "p2es_bus_shards_acquired_total")
    replayed = _sum(m1, "p2es_bus_replayed_messages_total") - _sum(m0, "p2es_bus_replayed_messages_total")
    drops = _sum(m1, "p2es_windows_dropped_total") - _sum(m0, "p2es_windows_dropped_total")
    p95 = _p95(_hist(m0, "p2es_e2e_latency_seconds"), _hist(m1, "p2es_e2e_latency_seconds"))
    return {
        "patients": n,
        "windows_per_s": rate,
        "chunks_per_s": chunks,
        "handovers": handovers,
        "replayed": replayed,
        "expected_per_s": n / HOP_S,
        "drops": drops,
        "e2e_p95_s": p95,
        "load": loadavg(),
        "bench_cpu": (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system),
    }


def drain(
    workers: Workers, cluster: BenchCluster, names: list[str], quiet_s: float = 3.0, max_s: float = 60
) -> None:
    """Purge the PPG stream (a step's backlog) and wait until the workers are idle."""
    js(cluster.servers(), lambda api: api.request("$JS.API.STREAM.PURGE.P2ES_PPG", {}))
    last, t_quiet = -1.0, time.monotonic()
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        w = _sum([workers.metrics(n) for n in names], "p2es_windows_total")
        if w != last:
            last, t_quiet = w, time.monotonic()
        elif time.monotonic() - t_quiet > quiet_s:
            return
        time.sleep(0.5)


def bench_workers(
    cluster: BenchCluster,
    workers: Workers,
    counts: list[int],
    start: int,
    factor: float,
    max_steps: int,
    seconds: float,
) -> list[Row]:
    """Per worker count, real-time steps of more and more patients until one is not sustained
    (window rate >= 90 % of patients / hop, no window dropped, e2e p95 <= 5 s)."""
    seconds = HOP_S * max(1, round(seconds / HOP_S))
    rows: list[Row] = []
    running: list[str] = []
    first_ok = 0.0
    prev_ok = 0
    for w in counts:
        while len(running) < w:
            name = f"bw{len(workers.procs) + 1}"
            workers.start(name)
            running.append(name)
        workers.wait_members(running)
        time.sleep(2.0)  # every shard pinned
        n = max(start, int(0.8 * prev_ok))
        last_ok: dict[str, float] | None = None
        failed: dict[str, float] | None = None
        for _ in range(max_steps):
            say(f"{w} worker(s): {n} patients for {seconds:.0f} s")
            # every patient starts together, so windows come in bursts every hop (from 8 s on,
            # plus latency): measure a whole number of hops, from half a hop after a burst
            r = load_step(workers, cluster, running, n, seconds, 14.5, f"s{w}{uuid.uuid4().hex[:4]}")
            ok = r["windows_per_s"] >= 0.9 * r["expected_per_s"] and r["drops"] == 0 and r["e2e_p95_s"] <= 5.0
            say(
                f"  {r['windows_per_s']:.1f} of {r['expected_per_s']:.1f} windows/s, chunks in "
                f"{r['chunks_per_s']:.0f}/s of {n} ({r['replayed']:.0f} replayed, {r['handovers']:.0f} shard "
                f"handovers), e2e p95 <= {r['e2e_p95_s']:g} s, drops {r['drops']:.0f}, "
                f"load {r['load']:.1f}: {'sustained' if ok else 'NOT sustained'}"
            )
            drain(workers, cluster, running)
            if not ok:
                failed = r
                break
            last_ok = r
            n = int(n * factor)
        n_ok = int(last_ok["patients"]) if last_ok else 0
        first_ok = first_ok or n_ok
        prev_ok = n_ok
        note = (
            f"sustained {n_ok}: {last_ok['windows_per_s']:.1f} windows/s, e2e p95 <= {last_ok['e2e_p95_s']:g} s"
            if last_ok
            else f"not even {start} sustained"
        )
        if failed:
            note += (
                f"; not at {failed['patients']:.0f}: {failed['windows_per_s']:.1f} of "
                f"{failed['expected_per_s']:.1f} windows/s, e2e p95 <= {failed['e2e_p95_s']:g} s, "
                f"{failed['drops']:.0f} dropped"
            )
        else:
            note += f"; no failure up to {n_ok} (the ceiling is higher)"
        ratio = f" ({n_ok / first_ok:.2f}x)" if first_ok else ""
        rows.append(
            Row(
                f"patients sustained, {w} worker(s) (tiny model)",
                f"{'>= ' if not failed else ''}{n_ok}{ratio}",
                note,
            )
        )
    return rows


def bench_failover(cluster: BenchCluster, workers: Workers, reps: int, patients: int) -> list[Row]:
    """kill -9 of a worker -> its shards elsewhere; a new worker -> its share (from the logs)."""
    running = workers.alive()
    while len(running) < 3:
        name = f"bw{len(workers.procs) + 1}"
        workers.start(name)
        running.append(name)
    workers.wait_members(running)
    pats = make_sim(patients, f"f{uuid.uuid4().hex[:4]}", seed=3)
    pub = Publishers(cluster, pats, 3600)
    failover: list[float] = []
    join_first: list[float] = []
    join_all: list[float] = []
    try:
        time.sleep(10)
        for _ in range(reps):
            victim = running[0]
            held = {ev[1] for ev in _held(workers.events(), victim)}
            t_kill = time.time()
            workers.procs[victim].send_signal(signal.SIGKILL)
            workers.procs[victim].wait(10)
            running.remove(victim)
            deadline = time.monotonic() + 30
            taken: dict[int, float] = {}
            while time.monotonic() < deadline and set(taken) != held:
                for t, s, what, _w in workers.events():
                    if what == "acquired" and s in held and t >= t_kill and s not in taken:
                        taken[s] = t
                time.sleep(0.2)
            if held and set(taken) == held:
                failover.append(max(taken.values()) - t_kill)
                say(f"failover: {len(held)} shards of {victim} taken over in {failover[-1]:.2f} s")
            else:
                say(f"failover: {victim} held {sorted(held)}, taken over within 30 s: {sorted(taken)}")
            # a new worker joins: its first / last shard after it saw itself in the live set
            name = f"bw{len(workers.procs) + 1}"
            workers.start(name)
            running.append(name)
            workers.wait_members(running)
            deadline = time.monotonic() + 20
            mine: list[float] = []
            want = 0
            from p2es.transport.nats import assign_shards

            want = len(assign_shards(SHARDS, running)[name])
            while time.monotonic() < deadline and len(mine) < want:
                mine = [t for t, s, what, w in workers.events() if w == name and what == "acquired"]
                time.sleep(0.2)
            t_join = min((t for t in workers.live_line_times(name)), default=math.nan)
            if mine and len(mine) >= want:
                join_first.append(min(mine) - t_join)
                join_all.append(sorted(mine)[want - 1] - t_join)
                say(
                    f"join: {name} took its {want} shards {join_first[-1]:.2f}-{join_all[-1]:.2f} s after joining"
                )
            else:
                say(f"join: {name} acquired {len(mine)} of its {want} shards within 20 s")
            time.sleep(5)
    finally:
        pub.stop()

    def span(xs: list[float]) -> str:
        return f"{min(xs):.1f}-{max(xs):.1f} s (n={len(xs)})" if xs else "n/a"

    def target(xs: list[float], bound: float) -> str:
        # the tight form of the proof test's bounds (the test in `make test` allows more)
        return f"target < {bound:g} s: " + ("met" if xs and max(xs) < bound else "NOT met")

    return [
        Row(
            "failover: kill -9 -> all its shards acquired",
            span(failover),
            f"membership TTL 2 s + grace 1 s, {patients} patients; {target(failover, 6.0)}",
        ),
        Row(
            "rebalance: new worker joined -> first shard",
            span(join_first),
            f"joined = its first live-set line; {target(join_first, 2.0)}",
        ),
        Row("rebalance: new worker joined -> all its shards", span(join_all), f"P = {SHARDS} shards"),
    ]


def _held(events: list[tuple[float, int, str, str]], worker: str) -> list[tuple[float, int, str, str]]:
    """The shards ``worker`` holds at the end of ``events``."""
    held: dict[int, tuple[float, int, str, str]] = {}
    for ev in events:
        t, s, what, w = ev
        if w != worker:
            continue
        if what == "acquired":
            held[s] = ev
        else:
            held.pop(s, None)
    return list(held.values())


# ----------------------------------------------------------------------------- 4. InfluxDB
def influx_db_create(db: str) -> None:
    services.influx_query(f'CREATE DATABASE "{db}"', db="")


def influx_db_drop(db: str) -> None:
    with contextlib.suppress(Exception):
        services.influx_query(f'DROP DATABASE "{db}"', db="")


def bench_influx(db: str, seconds: float, writers: int) -> list[Row]:
    import numpy as np

    from sink.lineprotocol import ecg_lines

    fs, n = 128.0, 5000
    ecg = np.random.default_rng(0).normal(0, 0.3, (12, n)).astype(np.float32)
    template = ecg_lines("PATIENTXXXX", 1_700_000_000_000_000_000, fs, ecg).encode()
    lines_per_batch = template.count(b"\n") + (0 if template.endswith(b"\n") else 1)
    pid = _influx_pid()
    qs = urllib.parse.urlencode({"db": db, "precision": "ns"})
    counter = [0, 0]  # batches ok, errors
    lock = threading.Lock()
    stop = threading.Event()

    def writer(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", services.influx_port(), timeout=60)
        i = 0
        while not stop.is_set():
            body = template.replace(b"PATIENTXXXX", f"w{k}b{i:07d}".encode())
            i += 1
            try:
                conn.request("POST", f"/write?{qs}", body)
                r = conn.getresponse()
                r.read()
                with lock:
                    counter[0 if r.status == 204 else 1] += 1
            except (OSError, http.client.HTTPException):
                with lock:
                    counter[1] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", services.influx_port(), timeout=60)

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(writers)]
    c0 = cpu_s(pid) if pid else 0.0
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    dt = time.monotonic() - t0
    cpu = (cpu_s(pid) - c0) if pid else math.nan
    pts = counter[0] * lines_per_batch / dt
    say(f"influxdb: {pts:,.0f} points/s ({counter[1]} failed batches), {cpu / dt:.2f} cores")
    return [
        Row(
            "InfluxDB 1.x, one node: ECG points (12 fields each)",
            f"{pts:,.0f} points/s",
            f"= {pts * 12:,.0f} field values/s = ECG of {pts / fs:,.0f} patients at 128 Hz; "
            f"{writers} writers, {lines_per_batch}-line batches, influxd {cpu / dt:.2f} cores, "
            f"{counter[1]} failed batches",
        )
    ]


def _influx_pid() -> int | None:
    run = Path(os.environ.get("P2ES_RUN_DIR", REPO / ".run")) / "influxdb"
    for name in ("influxd.pid", "influxdb.pid"):
        with contextlib.suppress(OSError, ValueError):
            return pid_file(run / name)
    return None


# ----------------------------------------------------------------------------- 5. alerts
def _vitals_publisher(
    port: int, prefix: str, patients: list[int], rate: float, seconds: float, out: Any
) -> None:
    """Vitals of ``patients`` round robin, QoS 1, paced at ``rate`` messages/s for ``seconds``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-vit-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.time() - 3600
    last: Any = None
    i, start = 0, time.monotonic()
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate)
        while i < due:
            p, k = patients[i % len(patients)], i // len(patients)
            body = {
                "patient": f"al{p:05d}",
                "t": t0 + k * HOP_S,
                "hr_bpm": 72.0 + (p % 7),
                "hr_ppg_bpm": 72.0 + (p % 7),
                "sqi": 0.9,
                "uncertainty": 0.02,
                "rr_irregularity": 0.03,
                "qrs_ms": 95.0,
                "qtc_ms": 420.0,
            }
            last = c.publish(f"{prefix}/patients/al{p:05d}/vitals", json.dumps(body).encode(), qos=1)
            i += 1
        time.sleep(0.01)
    if last is not None:
        last.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()
    out.put(i)


def bench_alerts(tmp: Path, seconds: float, patients: int, rates: list[float]) -> list[Row]:
    """Offered vitals/s in steps; the highest step the service keeps up with (processes >= 95 %
    of what is offered, with no backlog left 3 s after the step)."""
    port = free_port()
    prefix = f"p2esbench{uuid.uuid4().hex[:6]}/v1"
    cfg = tmp / "alerts.yaml"
    cfg.write_text(
        f"broker: mqtt://127.0.0.1:{services.mqtt_port()}\ninflux_url: none\nprefix: {prefix}\n"
        f"health_port: {port}\nspool_dir: {tmp}/al-spool\noutbox_dir: {tmp}/al-outbox\n"
        f"state_file: {tmp}/al-state.json\nclient_id: bench-alerts-{uuid.uuid4().hex[:6]}\n"
    )
    log = tmp / "alerts.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CLI, "alerts", "run", "--config", str(cfg), "--stats-every", "0"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def counters() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError):
            return {}

    best: tuple[float, float] | None = None  # (rate, cores)
    failed: tuple[float, float] | None = None  # (offered, processed)
    npub = 3
    try:
        deadline = time.monotonic() + 60
        while not counters().get("connected"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alert service did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        ctx = mp.get_context("spawn")
        for rate in rates:
            q = ctx.Queue()
            pubs = [
                ctx.Process(
                    target=_vitals_publisher,
                    args=(
                        services.mqtt_port(),
                        prefix,
                        list(range(k, patients, npub)),
                        rate / npub,
                        seconds,
                        q,
                    ),
                )
                for k in range(npub)
            ]
            c0, t0, cpu0 = counters().get("vitals_in", 0), time.monotonic(), cpu_s(proc.pid)
            for p in pubs:
                p.start()
            sent = sum(q.get(timeout=seconds + 60) for _ in pubs)
            for p in pubs:
                p.join(10)
            time.sleep(3.0)  # what is still queued for the service arrives now
            c1, dt, cpu1 = counters().get("vitals_in", 0), time.monotonic() - t0, cpu_s(proc.pid)
            got = c1 - c0
            say(
                f"alerts: offered {sent / seconds:,.0f} vitals/s, processed {got:,} of {sent:,}, {(cpu1 - cpu0) / dt:.2f} cores"
            )
            if got >= 0.95 * sent and sent >= 0.9 * rate * seconds:
                best = (sent / seconds, (cpu1 - cpu0) / seconds)
            else:
                failed = (sent / seconds, got / seconds)
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if best is None:
        return [
            Row(
                "alerts: one `p2es alerts run` process keeps up with",
                "n/a",
                f"not even {rates[0]:g} vitals/s",
            )
        ]
    rate, cores = best
    note = (
        f"{rate:,.0f} vitals/s kept up with ({patients} patients, default rules, no webhooks, "
        f"{cores:.2f} cores) x hop {HOP_S:g} s"
    )
    if failed:
        note += f"; at {failed[0]:,.0f} offered it processed {failed[1]:,.0f}/s"
    else:
        note += "; no higher step tried (the ceiling is higher)"
    return [
        Row(
            "alerts: one `p2es alerts run` process keeps up with",
            f"{'>= ' if not failed else ''}{rate * HOP_S:,.0f} patients",
            note,
        )
    ]


# ----------------------------------------------------------------------------- main
def table(rows: list[Row]) -> str:
    out = ["| what | measured | how / notes |", "| --- | --- | --- |"]
    out += [f"| {r.what} | {r.value} | {r.note} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: short steps, 1 and 2 workers, 1 failover"
    )
    ap.add_argument(
        "--nats-base-port", type=int, default=24222, help="the private cluster's ports start here"
    )
    ap.add_argument("--start", type=int, help="patients of the first worker step (default 40 quick, 60 long)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    ap.add_argument("--markdown", help="also write the table (and the run's conditions) to this file")
    ap.add_argument(
        "--only", default="brokers,influx,alerts,workers,failover", help="comma-separated parts to run"
    )
    args = ap.parse_args(argv)
    q = args.quick
    parts = set(args.only.split(","))
    for ok, what in (
        (services.port_open(services.HOST, services.mqtt_port()), "Mosquitto"),
        (services.influx_ping(), "InfluxDB"),
    ):
        if not ok:
            print(f"bench/scaleout.py: {what} is not running: scripts/services.sh start", file=sys.stderr)
            return 2
    t_begin = time.monotonic()
    load0 = loadavg()
    rows: list[Row] = []
    db = f"p2es_bench_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="p2es-scaleout-"))
    cluster = BenchCluster(args.nats_base_port)
    workers: Workers | None = None
    try:
        say("starting the private NATS cluster")
        cluster.start()
        influx_db_create(db)
        if "brokers" in parts:
            rows += bench_brokers(cluster, 5.0 if q else 20.0, 2)
        if "influx" in parts:
            rows += bench_influx(db, 5.0 if q else 20.0, 2)
        if "alerts" in parts:
            rows += bench_alerts(
                tmp, 5.0 if q else 15.0, 20_000, [1000, 2000] if q else [1000, 2000, 3000, 4500, 6000]
            )
        if parts & {"workers", "failover"}:
            say("building the tiny checkpoint")
            ckpt = tiny_checkpoint(tmp)
            workers = Workers(cluster, ckpt, db, tmp)
            if "workers" in parts:
                rows += bench_workers(
                    cluster,
                    workers,
                    [1, 2] if q else [1, 2, 3],
                    start=args.start or (40 if q else 60),
                    factor=1.4,
                    max_steps=2 if q else 6,
                    seconds=12.0 if q else 32.0,
                )
            if "failover" in parts:
                rows += bench_failover(cluster, workers, 1 if q else 3, 30)
    finally:
        if workers is not None:
            workers.stop_all()
        cluster.stop()
        influx_db_drop(db)
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    minutes = (time.monotonic() - t_begin) / 60
    cond = (
        f"{'quick' if q else 'long'} run, {minutes:.1f} min, {os.cpu_count()} CPU cores, load average "
        f"{load0:.1f} at the start and {loadavg():.1f} at the end, {time.strftime('%Y-%m-%d')}"
    )
    text = table(rows)
    print()
    print(cond)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(cond + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
