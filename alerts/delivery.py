"""Delivery of alert events: MQTT, InfluxDB and signed webhooks (through the durable outbox).

Data flow for every :class:`alerts.state.AlertEvent`::

    Dispatcher.dispatch(ev)
      -> MQTT   p2es/v1/patients/{id}/alerts   AlertMessage JSON, QoS 1  (every event; queued
                                                in memory while the broker is away)
      -> Influx measurement `alerts`           sink.lineprotocol.alert_line through sink.writer.Writer
                                                (every event; the Writer retries and spools)
      -> webhooks (only when ev.notify)        one outbox row per webhook, then WebhookSender

:class:`WebhookSender` runs one task per webhook: it takes the oldest pending row, signs it for
this attempt (fresh ``webhook-timestamp``, same ``webhook-id``) and POSTs it in a worker thread
(``urllib``), then applies the outbox rules (see :mod:`alerts.outbox`).  Every failure of an
attempt, whatever its type, is a failed attempt (counted, backed off, given up at ``max_age_s``);
nothing a receiver or a URL does can stall a worker.  At :meth:`WebhookSender.start` (a process
start) the head row of every webhook is attempted at once, whatever retry time was saved for
it, so a receiver that came back while the service was down gets it promptly; after that the
backoff applies again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from alerts.outbox import Outbox, OutboxRow, backoff_delay
from alerts.state import AlertEvent
from alerts.webhook import PostResult, alertmanager_body, event_message_id, post
from p2es.contracts.alerts import AlertMessage
from p2es.contracts.topics import alerts_topic
from sink.lineprotocol import alert_line
from sink.writer import Writer

__all__ = ["WebhookTarget", "WebhookSender", "Dispatcher", "alert_message"]

log = logging.getLogger("p2es.alerts.delivery")


@dataclass(frozen=True)
class WebhookTarget:
    """One receiver, only ever from the operator's configuration (``AlertServiceConfig.webhooks``):
    nothing that arrives over MQTT names a URL."""

    name: str
    url: str
    secret: str  # whsec_...
    timeout_s: float = 15.0
    tls_context: ssl.SSLContext | None = None  # https://: verifying (p2es.transport.tls); None: default


class WebhookSender:
    """Outbox -> HTTP, in order per webhook, with backoff, max age and dead letters."""

    def __init__(
        self,
        outbox: Outbox,
        targets: list[WebhookTarget],
        *,
        external_url: str = "",
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        max_age_s: float = 86400.0,
        rng: random.Random | None = None,
        poster: Callable[..., PostResult] = post,
    ) -> None:
        self.outbox = outbox
        self.targets = {t.name: t for t in targets}
        self.external_url = external_url
        self.base, self.cap, self.max_age = float(backoff_base_s), float(backoff_cap_s), float(max_age_s)
        self.rng = rng or random.Random()
        self._post = poster
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._resume: set[str] = set()  # webhooks whose head row is tried at once (after start)
        self.last_error: dict[str, str | None] = {t.name: None for t in targets}
        self.attempts = 0

    def enqueue(self, ev: AlertEvent, now: float | None = None) -> list[str]:
        """Store one row per webhook (committed before this returns); the webhook-ids.  The id is
        derived from the event (:func:`alerts.webhook.event_message_id`): an event stored before
        (the same id) is not stored twice."""
        ids = []
        for t in self.targets.values():
            msg_id = event_message_id(t.name, ev)
            body = alertmanager_body(ev, receiver=t.name, external_url=self.external_url)
            self.outbox.enqueue(t.name, msg_id, body, now)
            ids.append(msg_id)
            if t.name in self._wake:
                self._wake[t.name].set()
        return ids

    def start(self) -> None:
        for name in self.targets:
            self._wake[name] = asyncio.Event()
            self._resume.add(name)
            self._tasks.append(asyncio.create_task(self._worker(name), name=f"webhook:{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _sleep(self, name: str, delay: float) -> None:
        ev = self._wake[name]
        ev.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), max(0.0, delay))

    async def _worker(self, name: str) -> None:
        target = self.targets[name]
        errors = 0  # consecutive unexpected errors (the outbox itself failing, e.g. disk full)
        while True:
            try:
                row = self.outbox.head(name)
                if row is None:
                    self._resume.discard(name)
                    await self._sleep(name, 3600.0)
                    continue
                now = time.time()
                if row.next_attempt > now and name not in self._resume:
                    await self._sleep(name, row.next_attempt - now)
                    continue
                self._resume.discard(name)
                await self._attempt(target, row)
                errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the sender must never die
                errors += 1
                delay = min(30.0, 2.0 ** min(errors - 1, 5))
                if errors == 1:
                    log.exception("webhook %s: unexpected error; retrying in %.0f s", name, delay)
                else:
                    log.error(
                        "webhook %s: unexpected error again (%d in a row): %s: %s; retrying in %.0f s",
                        name,
                        errors,
                        type(e).__name__,
                        e,
                        delay,
                    )
                await asyncio.sleep(delay)

    async def _attempt(self, target: WebhookTarget, row: OutboxRow) -> None:
        self.attempts += 1
        try:
            tls = {"context": target.tls_context} if target.tls_context is not None else {}
            res = await asyncio.to_thread(
                self._post, target.url, row.body, row.msg_id, target.secret, timeout=target.timeout_s, **tls
            )
        except Exception as e:  # noqa: BLE001 - whatever the poster raises is a failed attempt
            res = PostResult(None, f"{type(e).__name__}: {e}")
        now = time.time()
        if res.ok:
            self.outbox.delivered(row)
            if self.last_error.get(target.name):
                log.warning("webhook %s: delivered again after failures", target.name)
            self.last_error[target.name] = None
            return
        err = res.error or "unknown error"
        self.last_error[target.name] = err
        if res.permanent:
            self.outbox.dead_letter(row, f"permanent failure: {err}", now, attempts=row.attempts + 1)
            log.error("webhook %s: %s rejected for good (%s); dead-lettered", target.name, row.msg_id, err)
            return
        if now - row.created >= self.max_age:
            self.outbox.dead_letter(
                row,
                f"gave up after {row.attempts + 1} attempts over {now - row.created:.0f} s: {err}",
                now,
                attempts=row.attempts + 1,
            )
            log.error(
                "webhook %s: gave up on %s after %.0f s (%s)", target.name, row.msg_id, now - row.created, err
            )
            return
        delay = backoff_delay(row.attempts, self.base, self.cap, self.rng, res.retry_after)
        delay = min(delay, max(0.0, row.created + self.max_age - now))
        self.outbox.failed(row, err, now + delay)
        log.warning(
            "webhook %s: attempt %d of %s failed (%s); retry in %.2f s",
            target.name,
            row.attempts + 1,
            row.msg_id,
            err,
            delay,
        )


def alert_message(ev: AlertEvent) -> AlertMessage:
    return AlertMessage(
        patient=ev.patient,
        rule=ev.rule,
        priority=ev.priority,
        state=ev.kind,
        t=ev.t,
        metric=ev.metric,
        op=ev.op,
        threshold=ev.threshold,
        value=ev.value,
        message=ev.message,
        starts_at=ev.starts_at,
        ends_at=ev.ends_at,
        fingerprint=ev.fingerprint,
        labels=ev.labels,
        gate=ev.gate,
        silenced_by=ev.silenced_by,
        acknowledged_by=ev.acknowledged_by,
    )


class Dispatcher:
    """Fan one event out to MQTT, InfluxDB and the webhook outbox."""

    def __init__(
        self,
        *,
        publish: Callable[[str, bytes], Awaitable[None]] | None,
        writer: Writer | None = None,
        sender: WebhookSender | None = None,
        prefix: str = "p2es/v1",
    ) -> None:
        self.publish, self.writer, self.sender, self.prefix = publish, writer, sender, prefix
        self.counts: dict[str, int] = {"events": 0, "mqtt": 0, "influx": 0, "webhook_rows": 0}

    async def dispatch(self, ev: AlertEvent) -> None:
        self.counts["events"] += 1
        log.info(
            "alert %s %s/%s: %s%s",
            ev.kind,
            ev.patient,
            ev.rule,
            ev.message,
            f" [silenced by {ev.silenced_by}]" if ev.silenced_by else "",
        )
        if self.sender is not None and ev.notify:  # durable first
            self.counts["webhook_rows"] += len(self.sender.enqueue(ev))
        if self.writer is not None:
            try:
                self.writer.put_nowait(
                    alert_line(
                        ev.patient,
                        ev.rule,
                        ev.priority,
                        int(round(ev.t * 1e9)),
                        state=ev.kind,
                        value=ev.value,
                        message=ev.message,
                    )
                )
                self.counts["influx"] += 1
            except Exception:  # noqa: BLE001 - a sink problem must not stop alerting
                log.exception("could not queue the alert for InfluxDB")
        if self.publish is not None:
            await self.publish(
                alerts_topic(ev.patient, prefix=self.prefix), alert_message(ev).model_dump_json().encode()
            )
            self.counts["mqtt"] += 1
