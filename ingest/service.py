"""The ingest service: MQTT in, validated per-patient streams, windows out on an asyncio.Queue.

::

    svc = IngestService("mqtt://127.0.0.1:1883", client_id="p2es-ingest-1")
    async with svc:                      # runs svc.run() in a task; cancels it on exit
        window = await svc.windows.get() # p2es.contracts.ppg.Window

Connection: MQTT v5, QoS 1, ``clean_start=False`` and a session expiry interval
(``session_expiry_s``, 1 h by default) under a stable ``client_id``, so the broker keeps the
subscription and queues QoS 1 messages while the service is away (broker restart, network
loss, service restart) and delivers them on reconnect.  ``mqtts://`` uses TLS (system CAs unless
``tls_context`` is given); user/password come from the arguments or the URL.  On any
connection loss the service reconnects by itself with exponential backoff
(``reconnect_min_s`` doubling to ``reconnect_max_s``, +-20 % jitter).

Subscription: ``p2es/v1/patients/#`` (QoS 1): the three contract topics, and anything else
under ``patients/`` is dead-lettered as ``unknown_topic`` rather than silently ignored.  Every
message goes through :func:`p2es.contracts.ppg.parse_message`; dead letters are counted by
reason code and published to ``p2es/v1/deadletter`` (QoS 1, in order) by their own task from a
bounded queue (``deadletter_queue_size``), so the message loop waits for a dead letter's PUBACK
only when that many are already waiting; nothing a client sends can stop the service (an
unexpected exception while processing a valid message is logged, counted as ``internal_error``
and dead-lettered too).

Back-pressure: ``windows`` is a bounded queue (``queue_size``).  When it is full the
**oldest** queued window is dropped to make room (counted in ``windows_dropped``): a live
monitor wants the freshest data, and blocking would stall every patient's ingest and, through
QoS 1 flow control, the broker.  The consumer sees gaps in ``(segment, index)`` when this
happens.

Per-patient budget (``StreamConfig.rate_limit_*``, off by default; :mod:`ingest.fairness`):
a patient's messages beyond ``rate_limit_msgs_per_s`` (checked before parsing) and chunks beyond
``rate_limit_factor`` x their declared fs (after parsing) are dead-lettered ``rate_limited``, so
a flooding device costs a topic match (or a parse) and a dead letter per refused message, not
windows and inference.  Time is the arrival time (monotonic): a backlog the broker delivers at once
after a restart counts as a burst.  One warning when a patient starts being limited and one
line when it stops.

Housekeeping (every ``tick_s``): reorder buffers of patients silent for ``reorder_wait_s`` are
flushed, streams idle for ``idle_s`` are expired, idle budget slots are dropped.

Shutdown: cancelling :meth:`run` (or leaving ``async with``) disconnects cleanly (the broker
session persists for the next start).  Windows already queued stay in ``windows``; partially
filled windows and chunks held for re-ordering are not emitted, and with a persistent session
the broker does not send them again (they were acknowledged).  With a ``journal``
(:mod:`ingest.journal`; the engine's default) every accepted chunk and profile is also on local
disk, and the next start first rebuilds each patient's stream from its last ``replay_s`` seconds
(default window + 2 hops), so neither a clean stop nor a ``kill -9`` leaves a gap; the replayed
windows re-write their overlap at the same timestamps.  Without one, a restart loses what the
stopped service held (up to ``window_s`` + ``reorder_max_s`` of signal per patient).

The PPG processing runs in the event loop (measured here: ~0.2 ms per 1 s chunk, ~2 ms per
emitted window, mostly the SQI); a large ward may shard patients across processes.  aiomqtt's
incoming queue is unbounded on purpose: bounding it would make paho discard messages it has
already acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import Counter
from typing import Any

import aiomqtt

from ingest.fairness import Episode, Limited, PatientBudget
from ingest.journal import Journal, replay_plan
from ingest.stream import StreamConfig, StreamRegistry
from p2es.contracts.ppg import DeadLetter, ParsedPpg, ParsedProfile, Window, parse_message
from p2es.contracts.topics import (
    PATIENT_ID_RE,
    TOPIC_PREFIX,
    deadletter_topic,
    is_output_topic,
    match_input_topic,
    subscription_topic,
)
from p2es.transport.mqtt import Backoff, MqttEndpoint, payload_bytes, run_reconnecting

__all__ = ["IngestService", "note_clock_skew", "note_rate_limited", "budget_patient"]

log = logging.getLogger("p2es.ingest")


def note_clock_skew(skewed: set[str], topic: str, res: ParsedPpg | DeadLetter, prefix: str) -> None:
    """One log line when a patient's chunks start being dead-lettered for ``clock_skew`` and one
    when its clock is back within the tolerance (not one per chunk); ``skewed`` is the set of
    patients currently off."""
    if isinstance(res, ParsedPpg):
        if res.patient_id in skewed:
            skewed.discard(res.patient_id)
            log.info(
                "patient %s: device clock back within the tolerance; its chunks are used again",
                res.patient_id,
            )
        return
    if res.code != "clock_skew":
        return
    matched = match_input_topic(topic, prefix)
    pid = matched[0] if matched else topic
    if pid not in skewed:
        if len(skewed) >= 10_000:  # bounded whatever devices send
            skewed.clear()
        skewed.add(pid)
        log.warning(
            "patient %s: %s; its chunks are dead-lettered (clock_skew) until it is fixed", pid, res.reason
        )


def budget_patient(topic: str, prefix: str) -> str | None:
    """The patient whose budget an input message counts against (None: not a patient topic, or
    an id the parser will refuse: no budget slot is made for it)."""
    m = match_input_topic(topic, prefix)
    return m[0] if m is not None and PATIENT_ID_RE.fullmatch(m[0]) else None


def note_rate_limited(
    logger: logging.Logger, limited: Limited | None = None, ended: list[Episode] | None = None
) -> None:
    """One log line when a patient starts being rate limited and one when it stops (see
    :mod:`ingest.fairness`: episodes, bounded memory), not one per message."""
    if limited is not None and limited.first:
        logger.warning("%s; its excess is dead-lettered (rate_limited) until it slows down", limited.detail)
    for e in ended or ():
        logger.info(
            "patient %s: back within its budget (limited for %.0f s; %d messages, %d samples refused)",
            e.patient,
            e.duration_s,
            e.messages,
            e.samples,
        )


class IngestService:
    """MQTT ingest (see the module docstring).  ``windows`` is the output queue."""

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "p2es-ingest",
        stream_config: StreamConfig | None = None,
        queue_size: int = 1024,
        session_expiry_s: int = 3600,
        keepalive_s: int = 30,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        tick_s: float = 1.0,
        tls_context: ssl.SSLContext | None = None,
        prefix: str = TOPIC_PREFIX,
        mqtt_version: str = "5",
        deadletter_queue_size: int = 1024,
        journal: Journal | None = None,
        replay_s: float = 16.0,
        replay_max_age_s: float = 600.0,
    ) -> None:
        self.endpoint = MqttEndpoint.from_url(
            url,
            username=username,
            password=password,
            client_id=client_id,
            version=mqtt_version,
            tls_context=tls_context,
            keepalive_s=int(keepalive_s),
            session_expiry_s=int(session_expiry_s),
        )
        self.host, self.port = self.endpoint.host, self.endpoint.port
        self.client_id = client_id
        self.prefix = prefix
        self.deadletter_topic = deadletter_topic(prefix)
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        self.tick_s = float(tick_s)
        self.registry = StreamRegistry(stream_config)
        self.windows: asyncio.Queue[Window] = asyncio.Queue(maxsize=queue_size)
        # dead letters waiting for their publish (bounded: when full, the message loop waits)
        self._dl_queue: asyncio.Queue[DeadLetter] = asyncio.Queue(maxsize=deadletter_queue_size)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._c: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._lag: dict[str, float] = {}
        self._skewed: set[str] = set()  # patients whose chunks are dead-lettered for clock_skew now
        # per-patient budget (rate_limit_* of the stream config; monotonic time)
        self.budget = PatientBudget.from_config(self.registry.config, max_patients=self.registry.max_patients)
        self.last_error: str | None = None
        # accepted chunks on disk; at start the last `replay_s` of each patient rebuild its stream
        self.journal, self.replay_s = journal, float(replay_s)
        # a journal older than this (the engine was down longer) is not replayed: the patients'
        # streams have moved on or ended, and their old windows would come back as news
        self.replay_max_age_s = float(replay_max_age_s)
        self.replayed: dict[str, Any] = {}  # what the start-up replay rebuilt (counters()["journal"])
        self._journal_failing = False

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> IngestService:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"ingest:{self.client_id}")
        return self._task

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.journal is not None:
            self.journal.close()

    @property
    def running(self) -> bool:
        """True while the task started by :meth:`start` is alive."""
        return self._task is not None and not self._task.done()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def run(self) -> None:
        """Connect, consume, reconnect forever (until cancelled)."""
        await self._replay_journal()
        house = asyncio.create_task(self._housekeeping())
        letters = asyncio.create_task(self._publish_dead_letters())
        try:
            await run_reconnecting(
                self._session,
                connected=self.connected,
                backoff=self.backoff,
                log=log,
                name=f"ingest {self.endpoint.address}",
                on_error=self._on_error,
                on_disconnect=self._on_disconnect,
            )
        finally:
            for t in (house, letters):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def _on_error(self, e: aiomqtt.MqttError) -> None:
        self.last_error = str(e)

    def _on_disconnect(self, was_connected: bool) -> None:
        if was_connected:
            self._c["disconnects"] += 1
        self._client = None

    async def _session(self) -> None:
        self._c["connect_attempts"] += 1
        client = self.endpoint.client(persistent=True)
        async with client:
            self._client = client
            await client.subscribe(subscription_topic(self.prefix), qos=1)
            self._c["connects"] += 1
            self.connected.set()
            log.info("ingest connected to %s as %s", self.endpoint.address, self.client_id)
            async for msg in client.messages:
                await self._handle(str(msg.topic), msg.payload)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                now = time.monotonic()
                self._emit(self.registry.flush_stale(now))
                for pid in self.registry.expire(now):
                    self._lag.pop(pid, None)
                note_rate_limited(log, ended=self.budget.tick(now))
            except Exception:  # noqa: BLE001 - never let housekeeping die
                log.exception("ingest housekeeping failed")
                self._c["internal_errors"] += 1

    # -- messages -------------------------------------------------------------------------
    async def _handle(self, topic: str, payload: Any) -> None:
        if is_output_topic(topic, self.prefix):  # our own vitals/alerts, not wearable input
            self._c["own_outputs_skipped"] += 1
            return
        self._c["messages_in"] += 1
        payload = payload_bytes(payload)
        now = time.monotonic()
        res: ParsedPpg | ParsedProfile | DeadLetter
        pid = budget_patient(topic, self.prefix) if self.budget.msgs_per_s else None
        over = self.budget.admit_message(pid, now) if pid is not None else None
        if over is not None:  # over its message budget: refused unparsed
            note_rate_limited(log, over)
            res = DeadLetter.of(topic, over.reason, payload)
        else:
            res = parse_message(
                topic, payload, prefix=self.prefix, max_clock_skew_s=self.registry.config.max_clock_skew_s
            )
        try:
            if isinstance(res, DeadLetter):
                note_clock_skew(self._skewed, topic, res, self.prefix)
                await self._dead_letter(res)
            elif isinstance(res, ParsedPpg):
                note_clock_skew(self._skewed, topic, res, self.prefix)
                over = self.budget.admit_chunk(res.patient_id, res.chunk.n, res.chunk.fs, now)
                if over is not None:  # over its sample budget
                    note_rate_limited(log, over)
                    await self._dead_letter(DeadLetter.of(topic, over.reason, payload, res.received_at))
                    return
                self._c["ppg_bin" if res.binary else "ppg_json"] += 1
                self._journal_append(topic, payload)
                self._emit(self.registry.push(res.patient_id, res.chunk))
            elif isinstance(res, ParsedProfile):
                self._c["profiles"] += 1
                self._journal_append(topic, payload)
                self.registry.set_profile(res.patient_id, res.profile)
        except Exception as e:  # noqa: BLE001 - a message must never stop the service
            log.exception("ingest failed on a message of %s", topic)
            self._c["internal_errors"] += 1
            await self._dead_letter(
                DeadLetter(
                    topic=topic,
                    reason=f"internal_error: {type(e).__name__}: {e}"[:500],
                    received_at=time.time(),
                    payload_excerpt="",
                )
            )

    # -- the journal (ingest.journal) ------------------------------------------------------
    def _journal_append(self, topic: str, payload: bytes) -> None:
        """Journal an accepted message; a failing disk costs the restart its rebuild, never the
        message (one warning when it starts failing, one line when it works again)."""
        if self.journal is None:
            return
        try:
            self.journal.append(topic, payload)
        except OSError as e:
            self._c["journal_errors"] += 1
            if not self._journal_failing:
                log.warning("journal: cannot write (%s); a restart now would leave a gap", e.strerror or e)
            self._journal_failing = True
            return
        if self._journal_failing:
            log.info("journal: writing again")
            self._journal_failing = False

    async def _replay_journal(self) -> None:
        """Before going live: rebuild each journaled patient's stream from its last ``replay_s``
        seconds (the previous run's accepted chunks), so a restart after ``kill -9`` leaves no
        gap.  Its windows are queued without dropping (the consumer runs already)."""
        if self.journal is None or self.replayed:
            return
        t = time.monotonic()
        try:
            records = await asyncio.to_thread(self.journal.read)
        except OSError as e:
            log.warning(
                "journal: cannot read %s (%s); starting with empty streams", self.journal.directory, e
            )
            self.replayed = {"patients": 0, "chunks": 0, "error": str(e)}
            return
        plan = replay_plan(
            records, self.replay_s, self.prefix, now=time.time(), max_age_s=self.replay_max_age_s
        )
        pids: set[str] = set()
        for r in plan.records:
            res = parse_message(r.topic, r.payload, prefix=self.prefix, max_clock_skew_s=None)
            if isinstance(res, ParsedProfile):
                self.registry.set_profile(res.patient_id, res.profile)
            elif isinstance(res, ParsedPpg):
                pids.add(res.patient_id)
                for w in self.registry.push(res.patient_id, res.chunk):
                    await self._emit_wait(w)
                await asyncio.sleep(0)  # let the consumer take windows
        for pid in sorted(pids):  # what waits for a predecessor that will not come: release it
            st = self.registry.get(pid)
            for w in st.flush() if st is not None else []:
                await self._emit_wait(w)
        spans = sorted(plan.span_s.values())
        self.replayed = {
            "patients": plan.patients,
            "chunks": plan.chunks,
            "profiles": plan.profiles,
            "records_read": len(records),
            "torn": self.journal.torn,
            "unusable": plan.unusable,
            "stale": plan.stale,
            "rebuilt_s_min": spans[0] if spans else 0.0,
            "seconds": time.monotonic() - t,
        }
        if plan.stale:
            log.info(
                "journal: %d records older than %g s not replayed (the engine was down longer)",
                plan.stale,
                self.replay_max_age_s,
            )
        if plan.patients:
            log.info(
                "journal: rebuilt %d patients' streams from %d chunks (%.0f-%.0f s of signal each) in %.1f s",
                plan.patients,
                plan.chunks,
                spans[0],
                spans[-1],
                self.replayed["seconds"],
            )

    async def _emit_wait(self, w: Window) -> None:
        await self.windows.put(w)
        self._c["windows_out"] += 1
        self._lag[w.patient] = w.created_at - (w.t0 + w.duration_s)

    async def _dead_letter(self, dl: DeadLetter) -> None:
        """Count it and queue it for :meth:`_publish_dead_letters`: the message loop does not wait
        for each dead letter's PUBACK (a flood of refused messages would otherwise hold up every
        other patient's messages for a broker round trip each); it waits only while the queue is
        full, so no dead letter is dropped."""
        self._invalid[dl.code] += 1
        await self._dl_queue.put(dl)

    async def _publish_dead_letters(self) -> None:
        """Publish the queued dead letters in order, QoS 1 (best effort: not connected -> counted;
        one log line when publishing starts failing, not one per letter)."""
        failing = False
        while True:
            dl = await self._dl_queue.get()
            client = self._client
            if client is None:
                self._c["deadletter_publish_errors"] += 1
                continue
            try:
                await client.publish(self.deadletter_topic, dl.model_dump_json().encode(), qos=1, timeout=5)
                self._c["deadletters_published"] += 1
                failing = False
            except Exception as e:  # noqa: BLE001 - MqttError, or a bug: this task must go on
                self._c["deadletter_publish_errors"] += 1
                if not failing:
                    log.warning("could not publish a dead letter: %s", e)
                failing = True

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish on the ingest's connection (vitals, alerts).  Best effort: False (and a
        counter) when not connected or the publish fails; never raises an MQTT error."""
        client = self._client
        if client is None:
            self._c["publish_errors"] += 1
            return False
        try:
            await client.publish(
                topic,
                payload.encode() if isinstance(payload, str) else payload,
                qos=qos,
                retain=retain,
                timeout=timeout,
            )
            self._c["published"] += 1
            return True
        except aiomqtt.MqttError as e:
            self._c["publish_errors"] += 1
            log.warning("could not publish on %s: %s", topic, e)
            return False

    def _emit(self, windows: list[Window]) -> None:
        for w in windows:
            if self.windows.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.windows.get_nowait()
                    self._c["windows_dropped"] += 1
            self.windows.put_nowait(w)
            self._c["windows_out"] += 1
            self._lag[w.patient] = w.created_at - (w.t0 + w.duration_s)

    # -- metrics --------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Counters for Prometheus (plain dict; monotonic counts unless noted).

        ``lag_s`` (gauge, per patient): wall time of the last window's creation minus the
        device time of its last sample (transport + buffering delay; includes any device
        clock offset).
        """
        c = self._c
        return {
            "messages_in": c["messages_in"],
            "ppg_json": c["ppg_json"],
            "ppg_bin": c["ppg_bin"],
            "profiles": c["profiles"],
            "invalid": dict(self._invalid),
            "invalid_total": sum(self._invalid.values()),
            "deadletters_published": c["deadletters_published"],
            "deadletter_publish_errors": c["deadletter_publish_errors"],
            "deadletters_queued": self._dl_queue.qsize(),  # gauge: waiting for their publish
            "published": c["published"],
            "publish_errors": c["publish_errors"],
            "windows_out": c["windows_out"],
            "windows_dropped": c["windows_dropped"],
            "queue_depth": self.windows.qsize(),
            "connect_attempts": c["connect_attempts"],
            "connects": c["connects"],
            "disconnects": c["disconnects"],
            "connected": self.connected.is_set(),
            "internal_errors": c["internal_errors"],
            "stream": self.registry.stats(),
            "lag_s": dict(self._lag),
            "budget": self.budget.stats(),
            "journal": {
                "appended": self.journal.appended if self.journal is not None else 0,
                "errors": c["journal_errors"],
                "replayed": dict(self.replayed),
            },
        }

    def counters_json(self) -> str:
        return json.dumps(self.counters(), sort_keys=True)
