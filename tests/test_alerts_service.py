"""The alert service end to end: real Mosquitto, real InfluxDB 1.6.7, a real local webhook server.

Vitals are derived honestly: each 8 s window is a simulator record (``wearable.sim.synthesize``
with the requested heart rate / rhythm) measured by the engine's own ``window_vitals`` on the true
12-lead ECG (Pan-Tompkins R peaks, delineation, ST per lead group), serialised by the engine's
``Vitals.to_json`` and published on ``p2es/v1/patients/{id}/vitals`` over the broker, windows 4 s
apart in device time but sent as fast as the broker takes them (rules run on event time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import time
import uuid

import numpy as np
import pytest
import services

from alerts.receiver import WebhookReceiver
from alerts.rules import load_rules_text
from alerts.service import AlertService, AlertServiceConfig, WebhookConfig
from alerts.webhook import generate_secret
from p2es.contracts.alerts import AlertMessage

pytestmark = pytest.mark.timeout(120)

T0 = 1_718_000_000.0
HOP = 4.0

RULES = """
defaults:
  gate: {max_uncertainty_mv: 0.05, min_sqi: 0.6}
  repeat: 40s
rules:
  - name: hr_high
    metric: hr_bpm
    op: ">"
    threshold: 120
    for: 20s
    clear_threshold: 110
    clear_for: 8s
    priority: medium
    labels: {unit: test}
    summary: "Tachycardia: HR {value:.0f} bpm > {threshold:g} bpm"
  - name: st_elevation_anterior
    metric: st_anterior_mv
    op: ">="
    threshold: 0.1
    for: 8s
    clear_threshold: 0.05
    priority: high
    summary: "ST {value:+.2f} mV anterior"
"""


# ------------------------------------------------------------------ vitals from the simulator
@functools.cache
def _vitals_cached(
    patient: str, hrs: tuple[float, ...], seed: int, rhythm: str | None, uncertainty: float
) -> tuple[str, ...]:
    from engine.serve.runtime import WindowRequest, WindowResult, window_vitals
    from ingest.stream import signal_quality
    from wearable.sim import synthesize

    n = len(hrs)
    if rhythm is None:
        rec = synthesize(
            n, seed, hr_bpm=np.asarray(hrs, float), rhythm_mix="sinus", noise=0.0, ppg_frontend=0.0
        )
        idx = list(range(n))
    else:  # e.g. anterior ST elevation: draw records until enough of that territory
        rec = synthesize(12 * n, seed, rhythm_mix=rhythm, noise=0.0, ppg_frontend=0.0)
        idx = [i for i in range(12 * n) if rec["st_territory"][i] == "anterior"][:n]
        assert len(idx) == n
    fs = float(rec["fs"])
    out = []
    for k, i in enumerate(idx):
        ppg = rec["ppg"][i].astype(np.float64)
        req = WindowRequest(patient, T0 + HOP * k, fs, ppg, sqi=float(signal_quality(ppg, fs)[0]))
        ecg = rec["ecg"][i].astype(np.float64)
        res = WindowResult(req, ecg, np.full_like(ecg, uncertainty), 1, 0.0, 0.0)
        out.append(window_vitals(res).to_json())
    return tuple(out)


def sim_vitals(
    patient: str, hrs, *, seed: int = 3, rhythm: str | None = None, uncertainty: float = 0.02, start: int = 0
) -> list[str]:
    msgs = _vitals_cached("P", tuple(float(h) for h in hrs), seed, rhythm, float(uncertainty))
    out = []
    for k, m in enumerate(msgs):  # re-label and shift in time without re-measuring
        d = json.loads(m)
        d["patient"], d["t"] = patient, T0 + HOP * (start + k)
        out.append(json.dumps(d))
    return out


# ------------------------------------------------------------------ MQTT helpers
class Bus:
    """A test MQTT client: publishes vitals/commands, records alert and dead-letter messages."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.alerts: list[AlertMessage] = []
        self.deadletters: list[dict] = []
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.client = None

    async def __aenter__(self) -> Bus:
        import aiomqtt

        async def run() -> None:
            async with aiomqtt.Client(
                self.host,
                self.port,
                identifier=f"test-bus-{uuid.uuid4().hex[:8]}",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as c:
                self.client = c
                await c.subscribe("p2es/v1/patients/+/alerts", qos=1)
                await c.subscribe("p2es/v1/deadletter", qos=1)
                self._ready.set()
                async for m in c.messages:
                    if str(m.topic).endswith("/alerts"):
                        self.alerts.append(AlertMessage.model_validate_json(m.payload))
                    else:
                        self.deadletters.append(json.loads(m.payload))

        self._task = asyncio.create_task(run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def vitals(self, msgs: list[str]) -> None:
        for m in msgs:
            pid = json.loads(m)["patient"]
            await self.client.publish(f"p2es/v1/patients/{pid}/vitals", m.encode(), qos=1)

    async def raw(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    def of(self, patient: str, state: str | None = None, rule: str | None = "hr_high") -> list[AlertMessage]:
        """Alert messages of one patient (by default of the HR rule only: at 140 bpm the true
        ECG's ST measurement can cross 0.1 mV, which the ST rule rightly reports)."""
        return [
            a
            for a in self.alerts
            if a.patient == patient
            and (state is None or a.state == state)
            and (rule is None or a.rule == rule)
        ]


async def wait_for(cond, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(tmp_path, mqtt_broker, *, influx=None, hooks=(), client_id=None, **kw) -> AlertServiceConfig:
    host, port = mqtt_broker
    return AlertServiceConfig(
        broker=f"mqtt://{host}:{port}",
        client_id=client_id or f"p2es-alerts-test-{uuid.uuid4().hex[:8]}",
        session_expiry_s=120,
        influx_url=influx[0] if influx else None,
        influx_db=influx[1] if influx else "p2es",
        spool_dir=str(tmp_path / "spool"),
        writer_flush_interval_s=0.2,
        webhooks=list(hooks),
        outbox_dir=str(tmp_path / "outbox"),
        state_file=str(tmp_path / "state.json"),
        external_url="http://p2es.test",
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
        tick_s=0.2,
        **kw,
    )


def hook(url: str, secret: str) -> WebhookConfig:
    return WebhookConfig(name="ward", url=url, secret=secret)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ tests
def test_tachycardia_fires_once_repeats_resolves_everywhere_and_a_down_webhook_catches_up(
    tmp_path, mqtt_broker, influxdb
):
    """Sustained tachycardia: one firing after `for`, repeats every 40 s, resolved after the
    hysteresis; a brief spike fires nothing; MQTT, InfluxDB and a webhook that was down all
    get the transitions (valid signatures, the same webhook-id on every retry)."""
    secret = generate_secret()
    port = free_port()  # the receiver is down (nothing listens) until later
    tachy, spike = uid("tachy"), uid("spike")
    rules = load_rules_text(RULES)
    hrs = [75] * 5 + [140] * 30 + [75] * 5  # breach from t = 20 s to 136 s (event time)
    stream = sim_vitals(tachy, hrs, seed=11)
    spikes = sim_vitals(spike, [75] * 5 + [140] * 3 + [75] * 8, seed=12)  # 3 windows = 8 s < for
    assert [round(json.loads(m)["hr_bpm"]) for m in stream[3:7]] == [75, 75, 140, 140]

    async def main():
        svc = AlertService(
            config(
                tmp_path, mqtt_broker, influx=influxdb, hooks=[hook(f"http://127.0.0.1:{port}/hook", secret)]
            ),
            rules=rules,
        )
        async with Bus(*mqtt_broker) as bus:
            await svc.start()
            try:
                await svc.wait_connected()
                await bus.vitals(stream)
                await bus.vitals(spikes)
                await wait_for(lambda: bus.of(tachy, "resolved"), what="resolved on MQTT")
                await asyncio.sleep(0.3)  # webhook attempts keep failing meanwhile
                assert svc.outbox.counters()["failed_attempts"] >= 2 and svc.outbox.pending() == 4
                rx = WebhookReceiver(secret, port=port, respond=lambda n, r: 503 if n < 2 else 200).start()
                try:
                    await wait_for(lambda: len(rx.accepted) == 4, what="4 webhook deliveries")
                    await asyncio.sleep(0.3)
                finally:
                    rx.stop()
                counters = svc.counters()
            finally:
                await svc.stop()  # flushes the InfluxDB writer
        return bus, rx, counters

    bus, rx, counters = asyncio.run(main())
    # MQTT: exactly one firing, two repeats 40 s apart, one resolved; nothing for the spike
    got = [(a.state, a.t - T0) for a in bus.of(tachy)]
    assert got == [("firing", 40.0), ("repeat", 80.0), ("repeat", 120.0), ("resolved", 148.0)]
    assert bus.of(spike, rule=None) == []
    f = bus.of(tachy, "firing")[0]
    assert f.rule == "hr_high" and f.priority == "medium" and f.labels["unit"] == "test"
    assert f.message.startswith("Tachycardia: HR 14") and f.value > 130 and f.starts_at == T0 + 40
    assert bus.of(tachy, "resolved")[0].ends_at == T0 + 148
    # webhooks: every transition once, in order, signed; the 503s were retries of the same id
    kinds = [r.json()["alerts"][0]["annotations"]["p2es_event"] for r in rx.accepted]
    assert kinds == ["firing", "repeat", "repeat", "resolved"]
    assert all(r.verified for r in rx.received) and not any(r.duplicate for r in rx.received)
    assert {r.id for r in rx.received if r.status == 503} == {rx.accepted[0].id}
    body = rx.accepted[0].json()
    assert body["status"] == "firing" and body["groupLabels"] == {"alertname": "hr_high", "patient": tachy}
    assert rx.accepted[-1].json()["status"] == "resolved"
    assert counters["engine"]["observed"] == len(stream) + len(spikes)
    # InfluxDB: the transitions with tags patient, rule, priority and fields state, value, message
    rows = services.influx_points(f"SELECT * FROM alerts WHERE patient = '{tachy}' AND rule = 'hr_high'")
    assert [(r["state"], (r["time"] - int(T0 * 1e9)) / 1e9) for r in rows] == got
    assert {(r["rule"], r["priority"]) for r in rows} == {("hr_high", "medium")}
    assert rows[0]["message"] == f.message and rows[0]["value"] == pytest.approx(f.value)
    assert services.influx_points(f"SELECT * FROM alerts WHERE patient = '{spike}'") == []


def test_ack_over_mqtt_via_the_cli_stops_repeats_and_silence_expires(tmp_path, mqtt_broker):
    """`p2es alerts ack` silences the repeats of one alert until it resolves; `p2es alerts
    silence --for` suppresses webhooks until it expires; bad commands are dead-lettered."""
    from p2es.cli import main as cli

    secret = generate_secret()
    p_ack, p_sil = uid("ack"), uid("sil")
    broker = f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}"
    rules = load_rules_text(RULES)

    async def main():
        with WebhookReceiver(secret) as rx:
            svc = AlertService(config(tmp_path, mqtt_broker, hooks=[hook(rx.url, secret)]), rules=rules)
            async with Bus(*mqtt_broker) as bus:
                await svc.start()
                try:
                    await svc.wait_connected()
                    # --- ack
                    await bus.vitals(sim_vitals(p_ack, [140] * 8, seed=21))
                    await wait_for(lambda: bus.of(p_ack, "firing"), what="firing")
                    rc = await asyncio.to_thread(
                        cli,
                        [
                            "alerts",
                            "ack",
                            "--patient",
                            p_ack,
                            "--rule",
                            "hr_high",
                            "--by",
                            "nurse-7",
                            "--broker",
                            broker,
                        ],
                    )
                    assert rc == 0
                    await wait_for(lambda: bus.of(p_ack, "acknowledged"), what="acknowledged")
                    # 100 s more of tachycardia (2.5 repeat intervals), then recovery
                    await bus.vitals(sim_vitals(p_ack, [140] * 25 + [75] * 3, seed=22, start=8))
                    await wait_for(lambda: bus.of(p_ack, "resolved"), what="resolved")
                    # --- silence with expiry (wall clock)
                    sil_s = 1.5
                    rc = await asyncio.to_thread(
                        cli,
                        [
                            "alerts",
                            "silence",
                            "--patient",
                            p_sil,
                            "--for",
                            f"{sil_s}s",
                            "--comment",
                            "transport",
                            "--id",
                            "s-test",
                            "--broker",
                            broker,
                        ],
                    )
                    assert rc == 0
                    await wait_for(lambda: "s-test" in svc.engine.silences, what="silence")
                    t_sil = time.monotonic()
                    await bus.vitals(sim_vitals(p_sil, [140] * 8, seed=23))
                    await wait_for(lambda: bus.of(p_sil, "firing"), what="silenced firing")
                    n_hooks_silenced = len(
                        [r for r in rx.accepted if r.json()["groupLabels"]["patient"] == p_sil]
                    )
                    assert n_hooks_silenced == 0  # the silence holds the webhook back
                    await asyncio.sleep(max(0.0, sil_s + 0.3 - (time.monotonic() - t_sil)))
                    await bus.vitals(sim_vitals(p_sil, [140] * 2, seed=24, start=8))
                    await wait_for(lambda: len(bus.of(p_sil, "firing")) == 2, what="firing after expiry")
                    await wait_for(
                        lambda: any(
                            r.json()["groupLabels"] == {"alertname": "hr_high", "patient": p_sil}
                            for r in rx.accepted
                        ),
                        what="webhook after expiry",
                    )
                    # --- bad commands and an unknown silence
                    await bus.raw("p2es/v1/alerts/ack", b'{"action": "ack", "patient": "x"}')
                    await bus.raw("p2es/v1/alerts/ack", b"not json")
                    await bus.raw(
                        "p2es/v1/alerts/ack",
                        json.dumps({"action": "ack", "patient": p_ack, "rule": "nope"}).encode(),
                    )
                    rc = await asyncio.to_thread(
                        cli, ["alerts", "unsilence", "s-missing", "--broker", broker]
                    )
                    assert rc == 0
                    await bus.raw(f"p2es/v1/patients/{p_ack}/vitals", b'{"patient": "other", "t": 1}')
                    await wait_for(lambda: len(bus.deadletters) >= 5, what="dead letters")
                    await asyncio.sleep(0.2)
                finally:
                    await svc.stop()
            return bus, rx, svc

    bus, rx, svc = asyncio.run(main())
    states = [a.state for a in bus.of(p_ack)]
    assert states == ["firing", "acknowledged", "resolved"]  # no repeat after the ack
    assert bus.of(p_ack, "acknowledged")[0].acknowledged_by == "nurse-7"
    hooks_ack = [
        r.json()["alerts"][0]["annotations"]["p2es_event"]
        for r in rx.accepted
        if r.json()["groupLabels"] == {"alertname": "hr_high", "patient": p_ack}
    ]
    assert hooks_ack == ["firing", "resolved"]
    # silence: the first firing was recorded on MQTT (flagged) but not sent; after expiry it was
    s1, s2 = bus.of(p_sil, "firing")
    assert s1.silenced_by == "s-test" and s2.silenced_by is None
    hooks_sil = [
        r.json() for r in rx.accepted if r.json()["groupLabels"] == {"alertname": "hr_high", "patient": p_sil}
    ]
    assert len(hooks_sil) == 1 and hooks_sil[0]["alerts"][0]["startsAt"] == "2024-06-10T06:13:40.000Z"
    assert s2.starts_at == s1.starts_at == T0 + 20  # the episode began under the silence
    reasons = [d["reason"].split(":")[0] for d in bus.deadletters]
    assert reasons.count("invalid_ack") == 1 and reasons.count("bad_json") == 1
    assert "unknown_rule" in reasons and "unknown_silence" in reasons and "invalid_vitals" in reasons
    assert svc.counters()["invalid"]["invalid_ack"] == 1


def test_st_rule_is_gated_by_uncertainty(tmp_path, mqtt_broker):
    """Anterior ST elevation (simulated, measured on the true ECG): no alert while the
    reconstruction uncertainty is above the bound; an alert that states the gate below it.
    (This service talks MQTT 3.1.1, the option for brokers without MQTT 5.)"""
    hi, lo = uid("st-hi"), uid("st-lo")
    rules = load_rules_text(RULES)

    async def main():
        svc = AlertService(
            config(tmp_path, mqtt_broker, mqtt_version="3.1.1", health_port=free_port()), rules=rules
        )
        async with Bus(*mqtt_broker) as bus:
            await svc.start()
            try:
                await svc.wait_connected()
                await bus.vitals(sim_vitals(hi, [0] * 6, rhythm="st_elevation", seed=31, uncertainty=0.2))
                await bus.vitals(sim_vitals(lo, [0] * 6, rhythm="st_elevation", seed=31, uncertainty=0.02))
                await wait_for(lambda: bus.of(lo, "firing", rule=None), what="ST firing")
                await asyncio.sleep(0.3)
                health = await asyncio.to_thread(http_get, svc.health.port, "/healthz")
                metrics = await asyncio.to_thread(http_get, svc.health.port, "/metrics")
            finally:
                await svc.stop()
        return bus, svc, health, metrics

    bus, svc, health, metrics = asyncio.run(main())
    # the health endpoint the compose stack probes: 200 while connected, counters as JSON
    assert health[0] == 200 and json.loads(health[1])["connected"] is True
    assert "p2es_alerts_mqtt_connected 1.0" in metrics[1] and "p2es_alerts_firing 1.0" in metrics[1]
    assert "p2es_alerts_vitals_total 12.0" in metrics[1]
    assert bus.of(hi, rule=None) == []
    (f,) = bus.of(lo, "firing", rule=None)
    assert f.rule == "st_elevation_anterior" and f.value >= 0.1 and f.priority == "high"
    assert "; gated: uncertainty 0.020 ≤ 0.05 mV, SQI " in f.message and f.message.startswith("ST +0.")
    assert f.gate["uncertainty"] == pytest.approx(0.02) and f.gate["max_uncertainty_mv"] == 0.05
    assert svc.engine.stats["gated_out"] >= 6


def test_restart_keeps_state_and_redelivers_from_the_outbox_with_the_same_id(tmp_path, mqtt_broker):
    """AlertService 1 cannot deliver (receiver answers 503) and stops; AlertService 2 on the same
    state file and outbox delivers that notification with the same webhook-id and does not
    fire the still-firing alert again."""
    secret = generate_secret()
    pid = uid("restart")
    rules = load_rules_text(RULES)
    client_id = f"p2es-alerts-test-{uuid.uuid4().hex[:8]}"

    async def first():
        with WebhookReceiver(secret, respond=lambda n, r: 503) as rx:
            svc = AlertService(
                config(tmp_path, mqtt_broker, hooks=[hook(rx.url, secret)], client_id=client_id), rules=rules
            )
            async with Bus(*mqtt_broker) as bus:
                await svc.start()
                try:
                    await svc.wait_connected()
                    await bus.vitals(sim_vitals(pid, [140] * 8, seed=41))
                    await wait_for(lambda: len(rx.received) >= 2, what="failed attempts")
                finally:
                    await svc.stop()
        return rx

    rx1 = asyncio.run(first())
    ids1 = {r.id for r in rx1.received}
    assert len(ids1) == 1

    async def second():
        with WebhookReceiver(secret) as rx:
            svc = AlertService(
                config(tmp_path, mqtt_broker, hooks=[hook(rx.url, secret)], client_id=client_id), rules=rules
            )
            async with Bus(*mqtt_broker) as bus:
                await svc.start()
                try:
                    await svc.wait_connected()
                    await wait_for(lambda: len(rx.accepted) == 1, what="redelivery")
                    await bus.vitals(sim_vitals(pid, [140] * 4 + [75] * 3, seed=42, start=8))
                    await wait_for(lambda: bus.of(pid, "resolved"), what="resolved")
                    await wait_for(lambda: len(rx.accepted) == 2, what="resolved webhook")
                finally:
                    await svc.stop()
        return rx, bus

    rx2, bus2 = asyncio.run(second())
    assert rx2.accepted[0].id in ids1 and rx2.accepted[0].verified
    assert [r.json()["status"] for r in rx2.accepted] == ["firing", "resolved"]
    assert [a.state for a in bus2.of(pid)] == ["resolved"]  # no second firing after the restart
    # the resolved notification says it resolved, with the resolving value, and what had fired
    # (the firing value came through the state file)
    summary = rx2.accepted[1].json()["alerts"][0]["annotations"]["summary"]
    assert summary.startswith("resolved: hr_bpm 7") and "; had fired: Tachycardia: HR 14" in summary
    assert bus2.of(pid)[0].message == summary


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
