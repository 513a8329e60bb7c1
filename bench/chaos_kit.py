"""The pieces bench/chaos.py builds its scenarios from: real services and real processes only.

* :class:`Services` -- a private Mosquitto and InfluxDB (``scripts/mosquitto.sh``,
  ``scripts/influxdb.sh`` with ``P2ES_RUN_DIR`` and the port variables pointing at a directory
  and free ports of our own), so a scenario may stop, restart or starve them without touching
  the shared test services of ``scripts/services.sh``.
* :class:`Proc` / :func:`engine_proc` / :func:`alerts_proc` -- ``p2es run`` and ``p2es alerts run``
  as child processes (``kill -9`` is a real ``SIGKILL``), their output copied to a log file by a
  thread (a pipe, so a file-size limit on the child never hits its log), Prometheus ``/metrics``
  read over HTTP.
* :class:`WriteRecorder` -- a transparent HTTP proxy in front of InfluxDB that notes, per
  patient, the order in which ECG timestamps reach ``/write`` (InfluxDB itself keeps no arrival
  order); while InfluxDB is down it drops each connection unanswered, as a dead server would.
* :class:`Listener` -- a QoS 1 MQTT subscriber with a persistent session that reconnects by itself.
* :func:`tmpfs_prefix` -- a command prefix that runs a process with a directory on a small
  tmpfs of its own (a user + mount namespace), so the disk really fills (``ENOSPC``).

Standard library plus what p2es itself depends on (aiomqtt, numpy).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from p2es.transport.metrics import parse_text

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
HOST = "127.0.0.1"
FS = 128.0  # the model rate: ECG samples per second
STEP_NS = 7_812_500  # 1e9 / 128
T, HOP = 1024, 512  # window and hop in samples (8 s, 4 s)
_CLI = "import sys; from p2es.cli import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def expected_windows(signal_s: float) -> int:
    """Complete windows of a stream of ``signal_s`` seconds (tests/test_pipeline.py)."""
    return max(0, int(np.ceil((signal_s * FS - T) / HOP)))


def ecg_span(windows: int) -> int:
    """ECG samples a segment of ``windows`` stitched windows covers."""
    return 0 if windows <= 0 else (windows - 1) * HOP + T


# ============================================================================ services
class Services:
    """A private Mosquitto + InfluxDB under ``run_dir`` on free ports (see the module doc)."""

    def __init__(self, run_dir: Path, *, influx: bool = True) -> None:
        self.run_dir = run_dir
        self.with_influx = influx
        self.mqtt_port = free_port()
        self.influx_port = free_port()
        self.influx_rpc_port = free_port()
        self.db = "p2es"
        self.env = dict(
            os.environ,
            P2ES_RUN_DIR=str(run_dir),
            P2ES_TEST_MQTT_PORT=str(self.mqtt_port),
            P2ES_TEST_INFLUX_PORT=str(self.influx_port),
            P2ES_TEST_INFLUX_RPC_PORT=str(self.influx_rpc_port),
            P2ES_TEST_INFLUX_DB=self.db,
        )

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def influx_url(self) -> str:
        return f"http://{HOST}:{self.influx_port}"

    def _script(self, name: str, action: str, timeout: float = 120.0) -> None:
        p = subprocess.run(
            ["bash", str(SCRIPTS / f"{name}.sh"), action],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if p.returncode != 0:
            raise RuntimeError(
                f"scripts/{name}.sh {action} failed (exit {p.returncode}): {p.stdout}{p.stderr}"
            )

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._script("mosquitto", "start")
        if self.with_influx:
            self._script("influxdb", "start")

    def stop(self) -> None:
        """Stop both (each attempted even if the other fails)."""
        errors = []
        for name in ("mosquitto", "influxdb") if self.with_influx else ("mosquitto",):
            try:
                self._script(name, "stop")
            except Exception as e:  # noqa: BLE001 - reported together below
                errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))

    def stop_influx(self) -> None:
        self._script("influxdb", "stop")

    def start_influx(self) -> None:
        """Start InfluxDB (idempotent: already running is fine)."""
        self._script("influxdb", "start")

    def restart_broker(self) -> None:
        self._script("mosquitto", "restart")

    def start_broker(self) -> None:
        self._script("mosquitto", "start")

    # ---------------------------------------------------------------- InfluxQL
    def query(self, q: str, *, timeout: float = 60.0) -> dict[str, Any]:
        data = urllib.parse.urlencode({"q": q, "db": self.db, "epoch": "ns"}).encode()
        req = urllib.request.Request(f"{self.influx_url}/query", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body: dict[str, Any] = json.load(r)
        for res in body.get("results", []):
            if "error" in res:
                raise RuntimeError(f"InfluxQL {q!r}: {res['error']}")
        return body

    def rows(self, q: str) -> list[dict[str, Any]]:
        res = self.query(q)["results"][0]
        out: list[dict[str, Any]] = []
        for s in res.get("series", []):
            for values in s["values"]:
                row = dict(zip(s["columns"], values))
                row.update(s.get("tags") or {})
                out.append(row)
        return out

    def ecg(self, patient: str, lead: str = "II") -> tuple[np.ndarray, np.ndarray]:
        """(time ns, values) of one lead of a patient's ECG, in time order."""
        rows = self.rows(f"SELECT \"{lead}\" FROM ecg WHERE patient='{patient}' ORDER BY time ASC")
        return (
            np.array([r["time"] for r in rows], dtype=np.int64),
            np.array([r[lead] for r in rows], dtype=np.float64),
        )

    def count(self, measurement: str, fld: str, patient: str) -> int:
        rows = self.rows(f'SELECT count("{fld}") FROM "{measurement}" WHERE patient=\'{patient}\'')
        return int(rows[0]["count"]) if rows else 0


# ============================================================================ processes
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    """One child process, restartable; its output goes to ``log`` (appended across restarts)."""

    name: str
    argv: list[str]
    log: Path
    ready_marker: str  # a log line that says the process is up
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ, PYTHONUNBUFFERED="1"))
    preexec: Callable[[], None] | None = None
    p: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _reader: threading.Thread | None = None
    _start_offset: int = 0

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as f:
            f.write(f"===== chaos: start #{self.starts} of {self.name} at {time.time():.3f}\n".encode())
            self._start_offset = f.tell()
        pre = self.preexec

        def preexec() -> None:
            _die_with_parent()
            if pre is not None:
                pre()

        self.p = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        self._reader = threading.Thread(target=self._copy, args=(self.p,), daemon=True)
        self._reader.start()

    def _copy(self, p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        with self.log.open("ab") as f:
            for chunk in iter(lambda: p.stdout.readline(), b""):  # type: ignore[union-attr]
                f.write(chunk)
                f.flush()

    @property
    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def text(self, *, since_start: bool = False) -> str:
        """The log (all runs, or the current run only)."""
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[self._start_offset if since_start else 0 :].decode(errors="replace")

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the ready marker appears in this run's log; RuntimeError if it exits first."""
        deadline = time.monotonic() + timeout
        while self.ready_marker not in self.text(since_start=True):
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def kill9(self) -> float:
        """SIGKILL and reap; returns the time of the kill."""
        assert self.p is not None
        t = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(30)
        if self._reader is not None:
            self._reader.join(5)
        return t

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); the exit status (None: was not running)."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return self.p.returncode

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {'name{labels}': value}; {} when it does not answer."""
        if not self.metrics_port:
            return {}
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return {}
        return parse_text(text)


def _yaml(d: dict[str, Any]) -> str:
    """A flat YAML mapping (JSON values are valid YAML)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in d.items())


def engine_proc(
    work: Path,
    name: str,
    *,
    broker: str,
    influx_url: str | None,
    checkpoint: str,
    client_id: str,
    spool_dir: Path,
    prefix: Sequence[str] = (),
    preexec: Callable[[], None] | None = None,
    **settings: Any,
) -> Proc:
    """``p2es run`` with the bench's light engine settings (torch, 2 sampler steps, K = 1, one
    thread: the pipeline is exercised, not the model), its own metrics port and spool."""
    port = free_port()
    cfg = {
        "broker": broker,
        "influx_url": influx_url or "none",
        "influx_db": "p2es",
        "client_id": client_id,
        "checkpoint": checkpoint,
        "backend": "torch",
        "steps": 2,
        "k": 1,
        "threads": 1,
        "max_batch": 32,
        "max_wait_ms": 50,
        "spool_dir": str(spool_dir),
        "metrics_port": port,
        "writer_flush_interval_s": 0.5,
        "writer_backoff_cap_s": 2.0,
        "stream_reorder_wait_s": 1.0,
        "health_interval_s": 2.0,
        **settings,
    }
    path = work / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml(cfg))
    argv = [*prefix, sys.executable, "-c", _CLI, "run", "--config", str(path), "--stats-every", "0"]
    return Proc(name, argv, work / f"{name}.log", "ingest connected", port, preexec=preexec)


def alerts_proc(
    work: Path,
    name: str,
    *,
    broker: str,
    client_id: str,
    rules: str,
    webhook_url: str,
    secret: str,
    **settings: Any,
) -> Proc:
    """``p2es alerts run`` with one webhook, its state and outbox under ``work``, no InfluxDB."""
    port = free_port()
    rules_path = work / f"{name}.rules.yaml"
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules)
    cfg: dict[str, Any] = {
        "broker": broker,
        "client_id": client_id,
        "influx_url": "none",
        "rules": str(rules_path),
        "outbox_dir": str(work / f"{name}-outbox"),
        "state_file": str(work / f"{name}-state.json"),
        "spool_dir": str(work / f"{name}-spool"),
        "health_port": port,
        "tick_s": 0.2,
        **settings,
    }
    path = work / f"{name}.yaml"
    # the webhook list is the one nested value; JSON is YAML
    path.write_text(_yaml(cfg) + "webhooks: " + json.dumps([{"name": "ward", "url": webhook_url}]) + "\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", P2ES_WEBHOOK_SECRET=secret)
    argv = [sys.executable, "-c", _CLI, "alerts", "run", "--config", str(path), "--stats-every", "0"]
    return Proc(name, argv, work / f"{name}.log", "alerts connected", port, env=env)


# ============================================================================ disk full
def tmpfs_prefix(directory: Path, size_bytes: int) -> list[str] | None:
    """``unshare`` + ``mount`` prefix that runs a command with ``directory`` on a private tmpfs
    of ``size_bytes`` (visible to that process only, gone with it); None when this machine
    does not allow user + mount namespaces."""
    directory.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o size="$1" p2es-chaos "$2" && shift 2 && exec "$@"'
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c", script, "sh"]
    probe = [*prefix, str(size_bytes), str(directory), "sh", "-c", 'df -k "$0" | tail -n 1', str(directory)]
    try:
        p = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0 or "p2es-chaos" not in p.stdout:
        return None
    return [*prefix, str(size_bytes), str(directory)]


def fsize_limit(size_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` limiting the size of every file the child writes (EFBIG, SIGXFSZ
    ignored): the fallback where namespaces are not allowed."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, resource.RLIM_INFINITY))

    return apply


# ============================================================================ write-order proxy
_ECG_LINE = re.compile(rb"^ecg,patient=((?:[^,\\ ]|\\.)+)[, ].* (\d+)$")


class WriteRecorder:
    """HTTP proxy ``127.0.0.1:<port>`` -> InfluxDB that checks, per patient, that ECG timestamps
    reach ``/write`` in increasing order (a body InfluxDB accepted before, re-sent whole, is
    a harmless retry and is only counted).  While InfluxDB does not answer, the proxy closes
    the client's connection without a reply."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.last: dict[str, int] = {}
        self.points: dict[str, int] = {}
        self.out_of_order: dict[str, int] = {}
        self.bodies = 0
        self.resent_bodies = 0
        self.dropped_connections = 0
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _record(self, body: bytes) -> None:
        digest = hashlib.sha1(body).digest()
        with self._lock:
            self.bodies += 1
            if digest in self._seen:
                self.resent_bodies += 1
                return
            self._seen.add(digest)
            for ln in body.splitlines():
                m = _ECG_LINE.match(ln)
                if m is None:
                    continue
                pid, ts = m[1].decode(), int(m[2])
                if ts <= self.last.get(pid, -1):
                    self.out_of_order[pid] = self.out_of_order.get(pid, 0) + 1
                self.last[pid] = max(ts, self.last.get(pid, -1))
                self.points[pid] = self.points.get(pid, 0) + 1

    def start(self) -> WriteRecorder:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                try:
                    up = http.client.HTTPConnection(HOST, rec.upstream_port, timeout=30)
                    up.request(self.command, self.path, body=body or None, headers=headers)
                    r = up.getresponse()
                    data = r.read()
                    status, rh = r.status, r.getheaders()
                    up.close()
                except OSError:
                    with rec._lock:
                        rec.dropped_connections += 1
                    self.close_connection = True  # like a dead server: no answer at all
                    return
                if self.command == "POST" and self.path.startswith("/write") and status == 204:
                    rec._record(body)
                self.send_response(status)
                for k, v in rh:
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _forward  # noqa: N815 - the name http.server dispatches to
            do_GET = _forward  # noqa: N815

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="chaos-proxy").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# ============================================================================ MQTT
class Listener:
    """QoS 1 subscriber with a persistent session under a fixed client id: what the broker gave
    it, in order, across broker restarts (it reconnects by itself)."""

    def __init__(self, url: str, topics: Sequence[str], client_id: str) -> None:
        from p2es.transport.mqtt import MqttEndpoint

        self.endpoint = MqttEndpoint.from_url(url, client_id=client_id, session_expiry_s=3600)
        self.topics = list(topics)
        self.messages: list[tuple[float, str, bytes]] = []  # (time received, topic, payload)
        self.connects = 0
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with self.endpoint.client(persistent=True) as c:
                    for t in self.topics:
                        await c.subscribe(t, qos=1)
                    self.connects += 1
                    self.ready.set()
                    async for m in c.messages:
                        self.messages.append((time.time(), str(m.topic), bytes(m.payload)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    async def start(self, timeout: float = 20.0) -> Listener:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), timeout)
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def json(self, topic_suffix: str = "") -> list[dict[str, Any]]:
        out = []
        for _, topic, payload in self.messages:
            if topic.endswith(topic_suffix):
                with contextlib.suppress(ValueError):
                    out.append({"topic": topic, **json.loads(payload)})
        return out


class Wearables:
    """Simulated wearables (:func:`wearable.publisher.make_patients` signals): every tick, one
    1 s JSON chunk per patient (``seq`` = tick) at QoS 1, each acknowledged by the broker
    before the next; the device clock of a chunk is ``t_start + tick + offset(patient, tick)``.
    ``ticks`` counts the ticks fully published, so a scenario can act at an exact point of the
    stream (the engine has then received chunks ``0 .. ticks-1``)."""

    def __init__(
        self,
        url: str,
        patients: Sequence[Any],
        t_start: float,
        *,
        speed: float = 1.0,
        offset: Callable[[str, int], float] | None = None,
        client_id: str | None = None,
    ) -> None:
        from p2es.transport.mqtt import MqttEndpoint

        self.endpoint = MqttEndpoint.from_url(url, client_id=client_id or f"chaos-wear-{os.getpid()}")
        self.patients = list(patients)
        self.t_start, self.speed = float(t_start), float(speed)
        self.offset = offset or (lambda _pid, _j: 0.0)
        self.ticks = 0

    def payload(self, pat: Any, j: int) -> bytes:
        m = int(round(pat.fs))
        x = np.take(pat.ppg, np.arange(j * m, (j + 1) * m), mode="wrap")
        t0 = self.t_start + j + self.offset(pat.id, j)
        body = {"seq": j, "t0": t0, "fs": pat.fs, "samples": [round(float(v), 6) for v in x]}
        return json.dumps(body).encode()

    async def run(self, n_ticks: int | None = None, stop: asyncio.Event | None = None) -> int:
        """Publish ticks in real time / ``speed`` until ``n_ticks`` or ``stop``; the ticks sent."""
        t_wall = time.monotonic()
        async with self.endpoint.client(persistent=False) as c:
            j = 0
            while (n_ticks is None or j < n_ticks) and not (stop is not None and stop.is_set()):
                await asyncio.sleep(max(0.0, t_wall + j / self.speed - time.monotonic()))
                for pat in self.patients:
                    await c.publish(f"p2es/v1/patients/{pat.id}/ppg", self.payload(pat, j), qos=1, timeout=10)
                j += 1
                self.ticks = j
        return self.ticks


# ============================================================================ analysis
@dataclass
class Series:
    """What one patient's ECG in InfluxDB looks like: continuous runs on the 1/128 s grid."""

    times: np.ndarray
    runs: list[tuple[int, int]]  # (first ns, last ns) of each gap-free run
    off_grid: int  # steps that are not a positive multiple of 1/128 s (overlap, duplicate)

    @classmethod
    def of(cls, t: np.ndarray) -> Series:
        if t.size == 0:
            return cls(t, [], 0)
        d = np.diff(t)
        off = int(np.count_nonzero((d <= 0) | (d % STEP_NS != 0)))
        cuts = np.flatnonzero(d != STEP_NS)
        starts = np.concatenate([[0], cuts + 1])
        ends = np.concatenate([cuts, [t.size - 1]])
        return cls(t, [(int(t[a]), int(t[b])) for a, b in zip(starts, ends)], off)

    @property
    def gaps_s(self) -> list[float]:
        """Seconds missing between consecutive runs."""
        return [(b0 - a1 - STEP_NS) / 1e9 for (_, a1), (b0, _) in zip(self.runs, self.runs[1:])]


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else float("nan")
