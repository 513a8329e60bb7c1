"""The alert service: MQTT vitals and commands in, alert events out (MQTT, InfluxDB, webhooks).

::

    svc = AlertService(AlertServiceConfig(broker="mqtt://127.0.0.1:1883", rules="rules.yaml"))
    await svc.start()        # restores the state file, opens the outbox, connects
    ...
    await svc.stop()         # saves the state, flushes the InfluxDB writer, keeps the outbox

Data flow (one asyncio loop)::

    MQTT p2es/v1/patients/+/vitals --parse_vitals--> AlertEngine.observe(t = vitals.t, now)
    MQTT p2es/v1/alerts/ack        --parse_command-> engine.ack / add_silence / remove_silence
    every tick_s                   -----------------> AlertEngine.tick(now)      (no_data, expiry)
         -> [AlertEvent] -> Dispatcher -> MQTT p2es/v1/patients/{id}/alerts, InfluxDB `alerts`,
                                          outbox -> WebhookSender -> signed POSTs

Connection: like ingest -- MQTT v5 with ``clean_start=False`` and a session expiry under a
stable client id (``mqtt_version="3.1.1"``: a persistent session), QoS 1, so vitals and commands
published while the service is away are delivered when it returns; on any connection loss it
reconnects with exponential backoff (``reconnect_min_s`` doubling to ``reconnect_max_s``,
+-20 % jitter).  Outgoing alert messages wait in memory (bounded) while disconnected.

Invalid vitals and commands are counted, logged and dead-lettered on ``p2es/v1/deadletter``
(``{"topic", "reason", "received_at", "payload_excerpt"}``, as ingest does); nothing a client
sends stops the service.  The engine state (alerts, acks, silences, last-seen times) is saved
atomically to ``state_file`` after every transition or command and every
``state_save_interval_s`` otherwise, so a restart neither re-fires nor forgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alerts.delivery import Dispatcher, WebhookSender, WebhookTarget
from alerts.health import HealthServer
from alerts.outbox import Outbox
from alerts.rules import VITALS_METRICS, RuleFile, load_rules
from alerts.state import AlertEngine, AlertEvent, Silence, load_state, save_state
from alerts.webhook import MIN_KEY_BYTES, SECRET_PREFIX, check_url, decode_secret
from p2es.contracts.alerts import (
    AckCommand,
    SilenceCommand,
    UnsilenceCommand,
    parse_command,
)
from p2es.contracts.ppg import DeadLetter
from p2es.contracts.topics import ack_topic, deadletter_topic, vitals_subscription
from p2es.contracts.vitals import parse_vitals
from p2es.errors import P2esError
from p2es.transport.mqtt import Backoff, payload_bytes, run_reconnecting
from p2es.transport.settings import ServiceSettings
from p2es.transport.tls import client_context, redact_url
from sink.writer import Writer

__all__ = ["WebhookConfig", "AlertServiceConfig", "AlertService"]

log = logging.getLogger("p2es.alerts")


class WebhookConfig(BaseModel):
    """One webhook receiver.  The secret comes from ``secret``, else ``secret_file``, else the
    environment variable ``secret_env``, else ``P2ES_WEBHOOK_SECRET``.  An ``https://`` URL is
    verified (certificate and host name) against ``ca_file``, or the system trust store."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str
    secret: str | None = None
    secret_file: str | None = None
    secret_env: str | None = None
    timeout_s: float = Field(15.0, gt=0, le=120)
    ca_file: str | None = None  # https://: CA certificate(s) the receiver's must chain to

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v)  # scheme, host and port parsed fully: a bad URL fails at start-up

    @model_validator(mode="after")
    def _tls(self) -> WebhookConfig:
        self.tls_context()  # the CA file loads, and only with an https:// URL (ValueError)
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The verifying TLS context of an ``https://`` URL (None for ``http://``)."""
        if not self.url.startswith("https://"):
            if self.ca_file:
                raise ValueError(f"webhook {self.name}: ca_file needs an https:// url")
            return None
        return client_context(self.ca_file, options=(f"webhook {self.name}: ca_file", "", ""))

    def resolve_secret(self) -> str:
        if self.secret:
            s, src = self.secret, "secret"
        elif self.secret_file:
            try:
                s, src = Path(self.secret_file).read_text().strip(), f"secret_file {self.secret_file}"
            except OSError as e:
                raise P2esError(f"webhook {self.name}: cannot read secret_file: {e}") from None
        elif self.secret_env and os.environ.get(self.secret_env):
            s, src = os.environ[self.secret_env], f"env {self.secret_env}"
        elif os.environ.get("P2ES_WEBHOOK_SECRET"):
            s, src = os.environ["P2ES_WEBHOOK_SECRET"], "env P2ES_WEBHOOK_SECRET"
        else:
            raise P2esError(
                f"webhook {self.name} has no secret (set secret, secret_file, secret_env "
                "or env P2ES_WEBHOOK_SECRET; make one with 'p2es alerts new-secret')"
            )
        if not s.strip().startswith(SECRET_PREFIX):
            raise P2esError(
                f"webhook {self.name}: {src}: a webhook secret must start with {SECRET_PREFIX} "
                "(make one with 'p2es alerts new-secret')"
            )
        try:
            key = decode_secret(s)
        except ValueError as e:
            raise P2esError(f"webhook {self.name}: {src}: {e}") from None
        if len(key) < MIN_KEY_BYTES:
            raise P2esError(
                f"webhook {self.name}: {src}: the key must be at least {MIN_KEY_BYTES} bytes "
                f"(Standard Webhooks), got {len(key)}"
            )
        return s


class AlertServiceConfig(ServiceSettings):
    """Everything ``p2es alerts run`` needs: the broker/InfluxDB/secrets of
    :class:`p2es.transport.settings.ServiceSettings` plus the alert service's own settings
    (webhook secrets also from ``P2ES_WEBHOOK_SECRET``)."""

    client_id: str = "p2es-alerts"
    spool_dir: str = ".run/alerts/spool"
    rules: str | None = None  # rules file; None = the shipped alerts/default_rules.yaml
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    outbox_dir: str = ".run/alerts/outbox"
    state_file: str = ".run/alerts/state.json"
    external_url: str = ""
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_cap_s: float = Field(300.0, gt=0)
    max_age_s: float = Field(86400.0, gt=0)  # give a notification up (dead letter) after this long
    tick_s: float = Field(1.0, gt=0)
    state_save_interval_s: float = Field(5.0, gt=0)
    max_backlog: int = Field(10000, ge=1)  # outgoing MQTT messages kept while disconnected
    prefix: str = "p2es/v1"
    health_port: int = Field(0, ge=0, le=65535)  # /healthz + /metrics over HTTP (0 = off)
    health_addr: str = "127.0.0.1"

    @field_validator("influx_url")
    @classmethod
    def _influx_url_parsed(cls, v: str | None) -> str | None:
        # runs after the base's check (which maps "none" to None): host and port parsed fully
        return None if v is None else check_url(v, "influx_url")

    @model_validator(mode="after")
    def _alert_checks(self) -> AlertServiceConfig:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError("webhook names must be unique")
        return self


class AlertService:
    """See the module docstring."""

    def __init__(self, config: AlertServiceConfig, *, rules: RuleFile | None = None) -> None:
        self.config = config
        self.rules = rules if rules is not None else load_rules(config.rules)
        self.engine = AlertEngine(self.rules)
        self.targets = [
            WebhookTarget(w.name, w.url, w.resolve_secret(), w.timeout_s, w.tls_context())
            for w in config.webhooks
        ]
        self.ack_topic = ack_topic(config.prefix)
        self.deadletter_topic = deadletter_topic(config.prefix)
        self.vitals_subscription = vitals_subscription(config.prefix)
        self.connected = asyncio.Event()
        self.outbox: Outbox | None = None
        self.sender: WebhookSender | None = None
        self.writer: Writer | None = None
        self.dispatcher: Dispatcher | None = None
        self._client: aiomqtt.Client | None = None
        self._backlog: deque[tuple[str, bytes]] = deque()
        self._backlog_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_save = 0.0
        self.health: HealthServer | None = None  # when health_port is set
        self.c: Counter[str] = Counter()
        self.invalid: Counter[str] = Counter()
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.config
        await cfg.check_tls()  # a certificate that does not verify: one line, before anything starts
        if load_state(self.engine, cfg.state_file, time.time()):
            log.info(
                "alerts: restored %d alert(s), %d silence(s) from %s",
                len(self.engine.alerts),
                len(self.engine.silences),
                cfg.state_file,
            )
        if self.targets:
            self.outbox = Outbox(cfg.outbox_dir)
            self.sender = WebhookSender(
                self.outbox,
                self.targets,
                external_url=cfg.external_url,
                backoff_base_s=cfg.backoff_base_s,
                backoff_cap_s=cfg.backoff_cap_s,
                max_age_s=cfg.max_age_s,
            )
            self.sender.start()
        if cfg.influx_url:
            self.writer = cfg.influx_writer(cfg.spool_dir, batch_lines=1000, backoff_cap_s=30.0)
            self.writer.start()
        self.dispatcher = Dispatcher(
            publish=self._publish, writer=self.writer, sender=self.sender, prefix=cfg.prefix
        )
        if cfg.health_port:
            try:
                self.health = HealthServer(self.counters, cfg.health_port, cfg.health_addr)
            except OSError as e:
                raise P2esError(
                    f"cannot serve health on {cfg.health_addr}:{cfg.health_port}: {e.strerror or e}"
                ) from None
        self._tasks = [
            asyncio.create_task(self._mqtt_loop(), name="alerts:mqtt"),
            asyncio.create_task(self._publisher(), name="alerts:publisher"),
            asyncio.create_task(self._ticker(), name="alerts:tick"),
        ]
        self.started = True

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming, publish what is queued (briefly), save the state, flush the writer."""
        if not self.started:
            return
        self.started = False
        mqtt_task, pub_task, tick_task = self._tasks
        tick_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick_task
        deadline = time.monotonic() + min(2.0, timeout)
        while self._backlog and self._client is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in (mqtt_task, pub_task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self._save(force=True)
        if self.sender is not None:
            await self.sender.stop()
        if self.writer is not None:
            await self.writer.close(timeout=timeout)
        if self.outbox is not None:
            self.outbox.close()
        if self.health is not None:
            self.health.shutdown()
            self.health = None
        if self._backlog:
            log.warning(
                "alerts: %d MQTT alert message(s) not published at shutdown (InfluxDB and "
                "webhooks have them)",
                len(self._backlog),
            )

    async def __aenter__(self) -> AlertService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ MQTT
    async def _mqtt_loop(self) -> None:
        cfg = self.config
        endpoint = cfg.mqtt_endpoint()

        async def session() -> None:
            self.c["connect_attempts"] += 1
            async with endpoint.client(persistent=True) as client:
                await client.subscribe(self.vitals_subscription, qos=1)
                await client.subscribe(self.ack_topic, qos=1)
                self._client = client
                self.connected.set()
                self.c["connects"] += 1
                self._backlog_wake.set()
                log.info("alerts connected to %s as %s", redact_url(cfg.broker), cfg.client_id)
                async for msg in client.messages:
                    await self._handle(str(msg.topic), msg.payload)

        def disconnected(_was_connected: bool) -> None:
            self._client = None

        await run_reconnecting(
            session,
            connected=self.connected,
            backoff=Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s),
            log=log,
            name=f"alerts {endpoint.address}",
            on_disconnect=disconnected,
        )

    async def _publish(self, topic: str, payload: bytes) -> None:
        if len(self._backlog) >= self.config.max_backlog:
            self._backlog.popleft()
            self.c["mqtt_backlog_dropped"] += 1
        self._backlog.append((topic, payload))
        self._backlog_wake.set()

    async def _publisher(self) -> None:
        """Publish the backlog in order whenever connected."""
        while True:
            self._backlog_wake.clear()
            client = self._client
            if not self._backlog or client is None:
                await self._backlog_wake.wait()
                continue
            topic, payload = self._backlog[0]
            try:
                await client.publish(topic, payload, qos=1, timeout=5)
                self._backlog.popleft()
                self.c["published"] += 1
            except (TimeoutError, aiomqtt.MqttError, OSError) as e:
                self.c["publish_errors"] += 1
                log.warning("alerts: publish on %s failed (%s); keeping it queued", topic, e)
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - never let the publisher die
                self.c["publish_errors"] += 1
                log.exception("alerts: unexpected publish failure on %s; keeping it queued", topic)
                await asyncio.sleep(0.5)

    async def _dead_letter(self, topic: str, reason: str, payload: bytes) -> None:
        code = reason.split(":", 1)[0]
        self.invalid[code] += 1
        log.warning("alerts: dead letter from %s: %s", topic, reason)
        dl = DeadLetter.of(topic, reason, payload)
        await self._publish(self.deadletter_topic, dl.model_dump_json().encode())

    async def _handle(self, topic: str, payload: Any) -> None:
        payload = payload_bytes(payload)
        try:
            if topic == self.ack_topic:
                await self._on_command(topic, payload)
            else:
                await self._on_vitals(topic, payload)
        except Exception as e:  # noqa: BLE001 - a message must never stop the service
            log.exception("alerts: failed on a message of %s", topic)
            self.c["internal_errors"] += 1
            with contextlib.suppress(Exception):
                await self._dead_letter(topic, f"internal_error: {type(e).__name__}: {e}", payload)

    async def _on_vitals(self, topic: str, payload: bytes) -> None:
        self.c["vitals_in"] += 1
        v = parse_vitals(topic, payload)
        if isinstance(v, str):
            await self._dead_letter(topic, v, payload)
            return
        values = {k: v.value(k) for k in self.rules_metrics()}
        events = self.engine.observe(v.patient, v.t, values, time.time())
        await self._emit(events)

    def rules_metrics(self) -> tuple[str, ...]:
        return VITALS_METRICS

    async def _on_command(self, topic: str, payload: bytes) -> None:
        self.c["commands_in"] += 1
        cmd = parse_command(payload)
        if isinstance(cmd, str):
            await self._dead_letter(topic, cmd, payload)
            return
        now = time.time()
        if isinstance(cmd, AckCommand):
            if not self.engine.has_rule(cmd.rule):
                await self._dead_letter(topic, f"unknown_rule: no rule named {cmd.rule!r}", payload)
                return
            ev = self.engine.ack(cmd.patient, cmd.rule, now, cmd.by)
            self.c["acks"] += 1
            if ev is None:
                log.info("alerts: ack of %s/%s ignored: not firing", cmd.patient, cmd.rule)
            await self._emit([ev] if ev else [], force_save=True)
        elif isinstance(cmd, SilenceCommand):
            if cmd.rule is not None and not self.engine.has_rule(cmd.rule):
                await self._dead_letter(topic, f"unknown_rule: no rule named {cmd.rule!r}", payload)
                return
            sid = cmd.id or "s-" + secrets.token_hex(4)
            ends = cmd.ends_at if cmd.ends_at is not None else now + float(cmd.duration_s or 0)
            self.engine.add_silence(Silence(sid, ends, cmd.patient, cmd.rule, now, cmd.by, cmd.comment))
            self.c["silences"] += 1
            log.info(
                "alerts: silence %s (patient=%s rule=%s) until %.0f by %s: %s",
                sid,
                cmd.patient,
                cmd.rule,
                ends,
                cmd.by,
                cmd.comment or "",
            )
            self._save(force=True)
        elif isinstance(cmd, UnsilenceCommand):
            if not self.engine.remove_silence(cmd.id):
                await self._dead_letter(topic, f"unknown_silence: no active silence {cmd.id!r}", payload)
                return
            log.info("alerts: silence %s removed", cmd.id)
            self._save(force=True)

    async def _emit(self, events: list[AlertEvent], *, force_save: bool = False) -> None:
        assert self.dispatcher is not None
        for ev in events:
            await self.dispatcher.dispatch(ev)
        self._save(force=force_save or bool(events))

    def _save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.engine.dirty:
            return
        if force or now - self._last_save >= self.config.state_save_interval_s:
            try:
                save_state(self.engine, self.config.state_file)
                self._last_save = now
            except OSError:
                self.c["state_save_errors"] += 1
                log.exception("alerts: could not save the state file %s", self.config.state_file)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            try:
                await self._emit(self.engine.tick(time.time()))
                self._save()
            except Exception:  # noqa: BLE001 - never let the ticker die
                log.exception("alerts: tick failed")
                self.c["internal_errors"] += 1

    # ------------------------------------------------------------------ metrics
    def counters(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.c)
        d["invalid"] = dict(self.invalid)
        d["engine"] = dict(self.engine.stats)
        d["alerts_firing"] = sum(1 for a in self.engine.alerts.values() if a.state == "firing")
        d["silences"] = len(self.engine.silences)
        d["mqtt_backlog"] = len(self._backlog)
        d["connected"] = self.connected.is_set()
        if self.dispatcher is not None:
            d["dispatch"] = dict(self.dispatcher.counts)
        if self.outbox is not None and not self.outbox.closed:
            d["outbox"] = self.outbox.counters()
        if self.writer is not None:
            d["writer"] = self.writer.counters
        return d
