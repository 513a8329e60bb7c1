"""Live pipeline end to end against the REAL Mosquitto + InfluxDB (tiny model, few sampler steps).

Simulated wearables publish at high speed; the pipeline reconstructs, stitches and writes; the
tests read InfluxDB back and check every ECG sample is there exactly once on a continuous
1/128 s grid, PPG and vitals alongside, through dead letters, an InfluxDB outage and a broker
restart.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid

import numpy as np
import pytest
import services

pytestmark = pytest.mark.services

FS = 128.0
STEP_NS = 7_812_500  # 1e9 / 128
T, HOP = 1024, 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tiny_ckpt, influxdb, tmp_path, **kw):
    from engine.app.pipeline import PipelineConfig

    url, db = influxdb
    base = dict(
        broker=services.mqtt_url(),
        client_id=f"p2es-test-{uuid.uuid4().hex[:8]}",
        influx_url=url,
        influx_db=db,
        steps=2,
        k=1,
        max_batch=16,
        max_wait_ms=20,
        checkpoint=tiny_ckpt,
        spool_dir=str(tmp_path / "spool"),
        writer_batch_lines=2000,
        writer_flush_interval_s=0.3,
        writer_backoff_cap_s=1.0,
        threads=1,
        stream_reorder_wait_s=1.0,
    )
    base.update(kw)
    return PipelineConfig(**base)


def ecg_times(patient: str) -> np.ndarray:
    rows = services.influx_points(f"SELECT \"II\" FROM ecg WHERE patient='{patient}'")
    return np.array([r["time"] for r in rows], dtype=np.int64)


def count(meas: str, field: str, patient: str) -> int:
    rows = services.influx_points(f"SELECT count(\"{field}\") FROM {meas} WHERE patient='{patient}'")
    return int(rows[0]["count"]) if rows else 0


async def wait_for(pred, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def drain(pipe, n_patients: int, min_windows: int, timeout: float = 60.0) -> None:
    """Wait until every patient has min_windows windows and nothing is queued any more."""

    def done() -> bool:
        s = pipe.stats()
        ps = s["patients"]
        return (
            len(ps) >= n_patients
            and all(p["windows"] >= min_windows for p in ps.values())
            and s["queue_depth"]["ingest"] == 0
            and s["queue_depth"]["batcher"] == 0
            and all(p["pending"] == 0 for p in ps.values())
        )

    await wait_for(done, timeout)
    await asyncio.sleep(1.5)  # reorder flush / last windows


def expected_windows(duration_s: float) -> int:
    """Complete windows of a stream of duration_s: those ending before the last sample (the
    streaming resampler needs a little look-ahead, so the very last sample never comes out)."""
    return int(np.ceil((duration_s * FS - T) / HOP))


def check_patient(pipe_stats: dict, patient: str, t_start: float, *, windows: int) -> np.ndarray:
    """Everything the pipeline emitted for a patient is in InfluxDB exactly once, continuously."""
    p = pipe_stats["patients"][patient]
    nw = p["windows"]
    assert nw == windows, (patient, p)
    span = (nw - 1) * HOP + T
    assert p["ecg_samples"] == span, (patient, p)  # each stitched sample emitted once
    assert p["ppg_samples"] == span, (patient, p)
    t = ecg_times(patient)
    assert t.size == span, (patient, t.size, span)
    d = np.diff(t)
    assert np.all(d == STEP_NS), (patient, np.unique(d)[:10])
    assert t[0] == int(round(t_start * 1e9)), (patient, t[0])
    assert count("ppg", "value", patient) == span
    assert count("vitals", "sqi", patient) == nw
    return t


# ------------------------------------------------------------------------------------------ tests
def test_exactly_once_rates_out_of_order_dead_letters_and_metrics(tiny_ckpt, mqtt_broker, influxdb, tmp_path):
    """6 patients at 25/64/100/125/250/500 Hz, 64 s of signal at 40x; two of them out of order and
    duplicated; malformed messages on the side.  Same ECG timestamps for every rate, each once."""
    import aiomqtt

    from engine.app.pipeline import Pipeline
    from wearable.publisher import make_patients, simulate_async

    port = free_port()
    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))  # an integer second: on the 128 Hz ns grid
    rates = [25, 64, 100, 125, 250, 500]

    async def main():
        pipe = Pipeline(make_config(tiny_ckpt, influxdb, tmp_path, metrics_port=port, idle_flush_s=2.0))
        await pipe.start()
        await pipe.ingest.wait_connected(10)
        pats = make_patients(6, seed=3, duration_s=64, fs_list=rates, prefix=f"t1{tag}")
        in_order, shuffled = pats[:4], pats[4:]
        pub = [
            asyncio.create_task(
                simulate_async(
                    services.mqtt_url(),
                    in_order,
                    speed=40,
                    duration_s=64,
                    t_start=t_start,
                    seed=1,
                    binary=0.3,
                )
            ),
            asyncio.create_task(
                simulate_async(
                    services.mqtt_url(),
                    shuffled,
                    speed=40,
                    duration_s=64,
                    t_start=t_start,
                    seed=2,
                    reorder=0.3,
                    duplicate=0.3,
                )
            ),
        ]
        # malformed traffic while the real streams flow
        bad = [
            (f"p2es/v1/patients/x{tag}/ppg", b"{not json", "bad_json"),
            (f"p2es/v1/patients/x{tag}/ppg", b"x" * (256 * 1024 + 1), "oversized"),
            (
                f"p2es/v1/patients/x{tag}/ppg",
                b'{"seq": 0, "t0": 1.7e9, "fs": 100.0, "samples": [1.0, NaN, 2.0]}',
                "non_finite",
            ),
            (
                f"p2es/v1/patients/x{tag}/ppg",
                b'{"seq": "zero", "t0": 1.7e9, "fs": 100.0, "samples": [1.0, 2.0]}',
                "invalid_ppg",
            ),
            (
                f"p2es/v1/patients/x{tag}/ppg",
                b'{"seq": 0, "t0": 1.7e9, "fs": 100.0, "samples": ["a", 2.0]}',
                "invalid_ppg",
            ),
            (f"p2es/v1/patients/x{tag}/temperature", b'{"c": 37}', "unknown_topic"),
            (f"p2es/v1/patients/x{tag}/ppg/bin", b"P2PGjunk", "bad_binary"),
        ]
        async with aiomqtt.Client(
            services.HOST, services.mqtt_port(), protocol=aiomqtt.ProtocolVersion.V5
        ) as c:
            for topic, payload, _ in bad:
                await c.publish(topic, payload, qos=1)
        res = await asyncio.gather(*pub)
        await drain(pipe, 6, expected_windows(64))
        # the idle flush writes each silent patient's tail without waiting for stop()
        assert await wait_for(
            lambda: all(
                p["ecg_samples"] == (p["windows"] - 1) * HOP + T for p in pipe.stats()["patients"].values()
            ),
            15,
        )
        before_stop = pipe.stats()
        await pipe.stop()
        return pipe, pats, bad, res, before_stop

    t0 = time.monotonic()
    pipe, pats, bad, res, before = asyncio.run(main())
    assert res[1]["duplicates"] > 0 and res[1]["swapped"] > 0
    s = pipe.stats()
    times = [check_patient(s, p.id, t_start, windows=expected_windows(64)) for p in pats]
    n = min(x.size for x in times)
    for x in times[1:]:  # every device rate lands on the same timestamps
        assert np.array_equal(x[:n], times[0][:n])
    inv = s["ingest"]["invalid"]
    want: dict[str, int] = {}
    for *_, code in bad:
        want[code] = want.get(code, 0) + 1
    for code, k in want.items():
        assert inv.get(code, 0) == k, inv
    assert s["writer"]["dead_letters"] == 0 and s["writer"]["spool_records"] == 0
    assert s["batch_size_max"] >= 1 and s["windows"] == sum(p["windows"] for p in s["patients"].values())
    assert before["windows"] == s["windows"]  # stop() found nothing left to do
    assert time.monotonic() - t0 < 120


def test_metrics_endpoint(tiny_ckpt, mqtt_broker, influxdb, tmp_path):
    import aiomqtt

    from engine.app.pipeline import Pipeline
    from wearable.publisher import make_patients, simulate_async

    port = free_port()
    tag = uuid.uuid4().hex[:6]

    async def main():
        pipe = Pipeline(make_config(tiny_ckpt, influxdb, tmp_path, metrics_port=port))
        await pipe.start()
        try:
            await pipe.ingest.wait_connected(10)
            async with aiomqtt.Client(
                services.HOST, services.mqtt_port(), protocol=aiomqtt.ProtocolVersion.V5
            ) as c:
                await c.publish(f"p2es/v1/patients/m{tag}/ppg", b"[]", qos=1)
            pats = make_patients(1, seed=4, duration_s=16, fs_list=[100], prefix=f"m{tag}")
            await simulate_async(services.mqtt_url(), pats, speed=40, duration_s=16)
            await drain(pipe, 1, 2, timeout=30)
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            )
        finally:
            await pipe.stop()
        return body

    body = asyncio.run(main())
    assert 'p2es_messages_invalid_total{reason="invalid_ppg"} 1.0' in body
    assert "p2es_messages_in_total" in body and "p2es_windows_total" in body
    assert (
        "p2es_batch_size_bucket" in body
        and 'p2es_stage_latency_seconds_bucket{le="0.005",stage="compute"}' in body
    )
    assert "p2es_e2e_latency_seconds_count" in body and "p2es_spool_bytes" in body
    assert 'p2es_queue_depth{queue="ingest"}' in body


def test_influx_outage_loses_nothing(tiny_ckpt, mqtt_broker, influxdb, tmp_path):
    """InfluxDB down for OUTAGE_S (30 s) while data flows: the writer spools, then every point
    arrives (P2ES_TEST_OUTAGE_S shortens it, >= 10 s)."""
    from engine.app.pipeline import Pipeline
    from wearable.publisher import make_patients, simulate_async

    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))

    async def main():
        pipe = Pipeline(make_config(tiny_ckpt, influxdb, tmp_path))
        await pipe.start()
        await pipe.ingest.wait_connected(10)
        dur = 3 * (outage + 12)  # seconds of signal at speed 3: data flows before, during, after
        pats = make_patients(3, seed=5, duration_s=dur, fs_list=[64, 125, 250], prefix=f"t2{tag}")
        pub = asyncio.create_task(
            simulate_async(services.mqtt_url(), pats, speed=3, duration_s=dur, t_start=t_start)
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(services.stop_influx)
        down_at = time.monotonic()
        try:
            assert await wait_for(lambda: pipe.writer.counters["db_down"] == 1, 10)
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - down_at)))
            spooled = pipe.writer.counters["batches_spooled"]
        finally:
            await asyncio.to_thread(services.start_influx)
        await pub
        await drain(pipe, 3, min_w)
        await asyncio.wait_for(pipe.writer.flush(), 60)
        await pipe.stop()
        return pipe, pats, spooled

    import os

    outage = max(10.0, float(os.environ.get("P2ES_TEST_OUTAGE_S", "30")))
    min_w = expected_windows(3 * (outage + 12))
    pipe, pats, spooled = asyncio.run(main())
    assert spooled > 0
    s = pipe.stats()
    for p in pats:
        check_patient(s, p.id, t_start, windows=min_w)
    assert s["writer"]["dead_letters"] == 0 and s["writer"]["spool_records"] == 0


def test_broker_restart_recovers(tiny_ckpt, mqtt_broker, influxdb, tmp_path):
    """Mosquitto restarted mid-run: ingest and the publisher reconnect by themselves; the
    persistent session keeps the QoS 1 messages, so the ECG is still complete and continuous."""
    from engine.app.pipeline import Pipeline
    from wearable.publisher import make_patients, simulate_async

    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))

    async def main():
        pipe = Pipeline(make_config(tiny_ckpt, influxdb, tmp_path))
        await pipe.start()
        await pipe.ingest.wait_connected(10)
        pats = make_patients(2, seed=6, duration_s=64, fs_list=[100, 500], prefix=f"t3{tag}")
        pub = asyncio.create_task(
            simulate_async(services.mqtt_url(), pats, speed=8, duration_s=64, t_start=t_start)
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(services.restart_mosquitto)
        res = await pub
        assert await wait_for(lambda: pipe.ingest.connected.is_set(), 20)
        await drain(pipe, 2, expected_windows(64))
        await pipe.stop()
        return pipe, pats, res

    pipe, pats, res = asyncio.run(main())
    s = pipe.stats()
    assert s["ingest"]["connects"] >= 2 and s["ingest"]["disconnects"] >= 1
    assert res["reconnects"] >= 1  # the publisher saw the restart too
    for p in pats:
        check_patient(s, p.id, t_start, windows=expected_windows(64))


# ------------------------------------------------------------------------------------------ CLI
_CLI = """
import argparse, sys
import p2es.cli as c
from engine.app.cli_live import register_live
_orig = c.build_parser
def build():
    p = _orig()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "run" not in sub.choices:
        register_live(sub)
    return p
c.build_parser = build
sys.exit(c.main(sys.argv[1:]))
"""


def p2es_cmd(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-c", _CLI, *args]


def test_cli_bad_input_is_one_line(repo_root):
    import subprocess

    for args, needle in [
        (("run", "--broker", "http://x:1"), "broker"),
        (("run", "--checkpoint", "/nonexistent.pt", "--influx-url", "none"), "checkpoint"),
        (("run", "--influx-url", "localhost:8086"), "influx_url"),
        (("simulate", "--patients", "0"), "--patients"),
    ]:
        p = subprocess.run(p2es_cmd(*args), cwd=repo_root, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("p2es: error:") and needle in lines[0], p.stderr


def test_cli_run_and_simulate_sigterm_flushes(tiny_ckpt, mqtt_broker, influxdb, tmp_path, repo_root):
    """`p2es run` + `p2es simulate` as processes; SIGTERM to run flushes everything it holds."""
    import signal
    import subprocess

    url, db = influxdb
    tag = f"c{uuid.uuid4().hex[:6]}"
    # the in-process alert service (--alerts): a rule on the PPG's own pulse rate, so the tiny
    # model's reconstruction cannot decide it; it must fire once per patient
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: pulse_seen\n    metric: hr_ppg_bpm\n    op: '>'\n"
        "    threshold: 20\n    for: 4s\n    priority: low\n"
    )
    run = subprocess.Popen(
        p2es_cmd(
            "run",
            "--broker",
            services.mqtt_url(),
            "--influx-url",
            url,
            "--influx-db",
            db,
            "--checkpoint",
            tiny_ckpt,
            "--steps",
            "2",
            "--k",
            "1",
            "--spool-dir",
            str(tmp_path / "sp"),
            "--client-id",
            f"p2es-{tag}",
            "--stats-every",
            "0",
            "--alerts",
            str(rules),
            "--alerts-dir",
            str(tmp_path / "alerts"),
        ),
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90  # torch import + model + subscribe before data is sent
        while not any("ingest connected" in ln for ln in list(lines)):
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        sim = subprocess.run(
            p2es_cmd(
                "simulate",
                "--patients",
                "2",
                "--broker",
                services.mqtt_url(),
                "--speed",
                "20",
                "--duration",
                "24",
                "--prefix",
                tag,
                "--seed",
                "9",
            ),
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sim.returncode == 0, sim.stderr
        assert json.loads(sim.stdout.strip().splitlines()[-1])["chunks"] == 2 * 24
        time.sleep(5)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        reader.join(10)
        out = "".join(lines)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out
    assert "stopped after" in out
    for i in range(2):
        pid = f"{tag}-{i:03d}"
        nw = count("vitals", "sqi", pid)
        assert nw == expected_windows(24), out
        t = ecg_times(pid)
        assert t.size == (nw - 1) * HOP + T and np.all(np.diff(t) == STEP_NS)
        rows = services.influx_points(
            f"SELECT state, priority FROM alerts WHERE patient='{pid}' AND rule='pulse_seen'"
        )
        assert [r["state"] for r in rows] == ["firing"], (rows, out)
    assert (tmp_path / "alerts" / "state.json").is_file()


# ------------------------------------------------------------------------------------------ no services
def test_config_env_secrets_and_file(tmp_path, monkeypatch):
    import argparse

    from engine.app.cli_live import load_config, register_live
    from engine.app.pipeline import PipelineConfig
    from p2es.errors import P2esError

    monkeypatch.setenv("P2ES_MQTT_USERNAME", "u")
    monkeypatch.setenv("P2ES_MQTT_PASSWORD", "pw")
    monkeypatch.setenv("P2ES_INFLUX_TOKEN", "tok")
    c = PipelineConfig(influx_api="v2", influx_org="o")
    assert (c.mqtt_username, c.mqtt_password, c.influx_token) == ("u", "pw", "tok")
    monkeypatch.delenv("P2ES_INFLUX_TOKEN")
    with pytest.raises(ValueError):
        PipelineConfig(influx_api="v2", influx_org="o")  # v2 without a token
    with pytest.raises(ValueError):
        PipelineConfig(hop_s=10)

    parser = argparse.ArgumentParser()
    register_live(parser.add_subparsers(dest="cmd"))
    f = tmp_path / "p.yaml"
    f.write_text("broker: mqtts://example:8883\nsteps: 3\nwindow_s: 8\ninflux_url: none\n")
    cfg = load_config(
        parser.parse_args(["run", "--config", str(f), "--steps", "5", "--metrics-port", "9100"])
    )
    assert cfg.broker == "mqtts://example:8883" and cfg.steps == 5 and cfg.metrics_port == 9100
    assert cfg.influx_url is None
    f.write_text("[1, 2]")
    with pytest.raises(P2esError, match="mapping"):
        load_config(parser.parse_args(["run", "--config", str(f)]))
    f.write_text("stepz: 3\n")
    with pytest.raises(P2esError, match="stepz"):
        load_config(parser.parse_args(["run", "--config", str(f)]))


def test_no_sink_mode_callbacks(tiny_ckpt, mqtt_broker, tmp_path):
    """influx_url=None: results go to callbacks and stats() (what the demo uses)."""
    from engine.app.pipeline import Pipeline, PipelineConfig
    from wearable.publisher import make_patients, simulate_async

    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))
    chunks, vitals = [], []

    async def main():
        cfg = PipelineConfig(
            broker=services.mqtt_url(),
            client_id=f"p2es-test-{tag}",
            influx_url=None,
            steps=2,
            k=1,
            checkpoint=tiny_ckpt,
            threads=1,
            max_wait_ms=10,
        )
        pipe = Pipeline(cfg, on_ecg=chunks.append, on_vitals=vitals.append)
        await pipe.start()
        await pipe.ingest.wait_connected(10)
        pats = make_patients(1, seed=8, duration_s=24, fs_list=[125], prefix=f"n{tag}")
        await simulate_async(services.mqtt_url(), pats, speed=40, duration_s=24, t_start=t_start)
        await drain(pipe, 1, 4, timeout=30)
        await pipe.stop()
        return pipe

    pipe = asyncio.run(main())
    s = pipe.stats()
    (p,) = s["patients"].values()
    assert (
        p["windows"] == expected_windows(24) and len(vitals) == p["windows"] and p["vitals"] == p["windows"]
    )
    n = sum(c.ecg.shape[1] for c in chunks)
    assert n == p["ecg_samples"] == (p["windows"] - 1) * HOP + T
    assert chunks[0].t0 == t_start
    for a, b in zip(chunks, chunks[1:]):  # contiguous, each sample once
        assert abs(b.t0 - (a.t0 + a.ecg.shape[1] / FS)) < 1e-6
    assert np.isfinite(p["hr_ppg_bpm"]) and np.isfinite(p["lag_s"])
    assert s["latency_s"]["compute"]["p50"] > 0


def test_cli_simulate_until_sigint(mqtt_broker, repo_root):
    import signal
    import subprocess

    import aiomqtt

    tag = f"s{uuid.uuid4().hex[:6]}"

    async def first_chunk(proc) -> None:
        async with aiomqtt.Client(
            services.HOST, services.mqtt_port(), protocol=aiomqtt.ProtocolVersion.V5
        ) as c:
            await c.subscribe(f"p2es/v1/patients/{tag}-000/ppg", qos=1)
            proc.start()
            async for _ in c.messages:
                return

    holder = {}

    class Start:
        def start(self):
            holder["p"] = subprocess.Popen(
                p2es_cmd(
                    "simulate",
                    "--patients",
                    "2",
                    "--broker",
                    services.mqtt_url(),
                    "--speed",
                    "10",
                    "--prefix",
                    tag,
                ),
                cwd=repo_root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    asyncio.run(asyncio.wait_for(first_chunk(Start()), 90))
    p = holder["p"]
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["chunks"] >= 2 and res["profiles"] == 2


def test_vitals_on_mqtt_and_health_measurement(tiny_ckpt, mqtt_broker, influxdb, tmp_path):
    """Each window's vitals go to p2es/v1/patients/{id}/vitals (the alerts' input) with every
    documented field, and the pipeline writes its own health to the `pipeline` measurement."""
    import aiomqtt

    from engine.app.pipeline import Pipeline
    from p2es.contracts.vitals import VITALS_METRICS
    from wearable.publisher import make_patients, simulate_async

    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))
    cfg = make_config(tiny_ckpt, influxdb, tmp_path, health_interval_s=1.0, idle_flush_s=2.0)
    got: list[dict] = []

    async def main():
        async with aiomqtt.Client(
            services.HOST, services.mqtt_port(), protocol=aiomqtt.ProtocolVersion.V5
        ) as sub:
            await sub.subscribe("p2es/v1/patients/+/vitals", qos=1)

            async def listen():
                async for m in sub.messages:
                    got.append({"topic": str(m.topic), **json.loads(m.payload)})

            lt = asyncio.create_task(listen())
            pipe = Pipeline(cfg)
            await pipe.start()
            await pipe.ingest.wait_connected(10)
            pats = make_patients(2, seed=5, duration_s=24, fs_list=[100, 125], prefix=f"v{tag}")
            await simulate_async(services.mqtt_url(), pats, speed=30, duration_s=24, t_start=t_start, seed=4)
            await drain(pipe, 2, expected_windows(24))
            await asyncio.sleep(1.5)
            await pipe.stop()
            lt.cancel()
            return pipe, pats

    pipe, pats = asyncio.run(main())
    s = pipe.stats()
    for p in pats:
        mine = [g for g in got if g["patient"] == p.id]
        assert len(mine) == s["patients"][p.id]["windows"] == expected_windows(24)
        assert all(g["topic"] == f"p2es/v1/patients/{p.id}/vitals" for g in mine)
        assert all(set(VITALS_METRICS) <= set(g) for g in mine)
        ts = [g["t"] for g in mine]
        assert ts == sorted(ts) and abs(ts[0] - t_start) < 1e-6
        assert all(g["sqi"] is None or 0.0 <= g["sqi"] <= 1.0 for g in mine)
        # the same fields land in InfluxDB (NaN ones omitted, never written as strings)
        assert count("vitals", "uncertainty", p.id) == len(mine)
    rows = services.influx_points(
        f"SELECT windows_total, queue_ingest, latency_e2e_p50_s FROM pipeline WHERE instance='{cfg.client_id}'"
    )
    assert rows, "no pipeline health point written"
    assert max(r["windows_total"] for r in rows) >= 1
