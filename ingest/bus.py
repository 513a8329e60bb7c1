"""Distributed ingest over NATS JetStream (``p2es run --bus nats://...``): the same output as
:class:`ingest.service.IngestService` (``windows``, ``connected``, ``publish``, ``counters``),
but each worker reads only the patients of the shards it owns.

::

    svc = BusIngestService(["nats://h1:4222", "nats://h2:4222"], BusLayout(shards=128), worker_id="w1")
    svc.start()
    window = await svc.windows.get()

What a worker does (the layout: :mod:`p2es.transport.nats`, the design: docs/scaling.md):

1. creates the PPG stream (partitioned onto P shards by patient), the profile stream, one pinned
   pull consumer per shard and the membership KV bucket, when missing (idempotent);
2. keeps its key in the membership bucket alive (``heartbeat_s``; the bucket's TTL ``member_ttl_s``
   drops a dead worker) and reads the live set every ``heartbeat_s``, with hysteresis (a key
   missing for ``member_grace_s`` of successful reads is gone: :class:`LiveSet`); the shards it owns are
   :func:`p2es.transport.nats.assign_shards` of the live set, the same on every worker;
3. per owned shard, pulls through the shard's consumer in the priority group: the server pins one
   client per shard, so two workers never both receive a shard.  When a worker gets a shard's
   pin (its first message with a new ``Nats-Pin-Id``), it first replays the shard's last
   ``replay_s`` seconds before the consumer's ack floor from the stream (the previous owner's
   window in flight: continuous ECG across a handover), then goes live;
4. every message goes through the per-patient budget (:mod:`ingest.fairness`, off by default;
   its clock is JetStream's stored time of each message, so a consumer backlog or a replay is
   judged by when it was published, not when it is delivered),
   :func:`p2es.contracts.ppg.parse_message` and the per-patient
   stream (ordering, de-duplication by ``seq``, a bounded re-order window), and is acknowledged
   once it is in the ring buffer; unusable ones are dead-lettered on ``p2es.v1.deadletter``;
5. a shard the worker no longer owns (a worker joined) is released: its patients' streams are
   dropped (``on_release`` tells the pipeline) and the pin is given up (UNPIN), so its new owner
   starts at once; a shard of a dead worker is unpinned by its new owner.

Profiles (retained on the MQTT side) come from the profile stream, last value per patient, to
every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from ingest.fairness import PatientBudget
from ingest.service import budget_patient, note_rate_limited
from ingest.stream import StreamConfig, StreamRegistry
from p2es.contracts.ppg import DeadLetter, ParsedPpg, ParsedProfile, Window, parse_message
from p2es.contracts.topics import (
    TOPIC_PREFIX,
    deadletter_topic,
    nats_subject,
    patient_from_nats_token,
    profile_topic,
)
from p2es.transport.nats import (
    BusLayout,
    JetStreamApi,
    JsApiError,
    LiveSet,
    PinnedPuller,
    assign_shards,
    parse_ack_subject,
)
from p2es.transport.tls import redact_url

__all__ = ["BusIngestService"]

log = logging.getLogger("p2es.ingest.bus")


def _parse_time(s: str) -> float | None:
    """RFC 3339 with up to nanoseconds (JetStream's ``last_active``) -> Unix seconds."""
    if not s or s.startswith("0001-"):
        return None
    head, _, frac = s.rstrip("Z").partition(".")
    try:
        t = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None
    digits = "".join(c for c in frac if c.isdigit())
    return t + (float("0." + digits) if digits else 0.0)


class BusIngestService:
    """NATS JetStream ingest of one worker (see the module docstring)."""

    def __init__(
        self,
        servers: list[str],
        layout: BusLayout,
        *,
        worker_id: str,
        username: str | None = None,
        password: str | None = None,
        stream_config: StreamConfig | None = None,
        queue_size: int = 1024,
        heartbeat_s: float = 0.5,
        member_ttl_s: float = 2.0,
        member_grace_s: float | None = None,
        replay_s: float = 16.0,
        pull_batch: int = 256,
        tick_s: float = 1.0,
        prefix: str = TOPIC_PREFIX,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.servers, self.layout, self.worker_id = list(servers), layout, worker_id
        self.tls_context = tls_context  # verifying (p2es.transport.tls); TLS before NATS's INFO
        self._where = ",".join(redact_url(s) for s in self.servers)  # for logs: no user:password@
        self.username, self.password = username, password
        self.prefix = prefix
        self.heartbeat_s, self.member_ttl_s = float(heartbeat_s), float(member_ttl_s)
        # a worker missing from the bucket counts as gone after this long (LiveSet: hysteresis)
        grace = self.member_ttl_s / 2 if member_grace_s is None else float(member_grace_s)
        self.members = LiveSet(worker_id, grace)
        self.replay_s, self.pull_batch, self.tick_s = float(replay_s), int(pull_batch), float(tick_s)
        self.registry = StreamRegistry(stream_config)
        self.windows: asyncio.Queue[Window] = asyncio.Queue(maxsize=queue_size)
        self.connected = asyncio.Event()
        self.ready = asyncio.Event()  # streams, consumers and membership set up (once)
        self.on_release: Callable[[list[str]], None] | None = None
        self.deadletter_subject = nats_subject(deadletter_topic(prefix))
        self.host = servers[0] if servers else ""
        self.client_id = worker_id
        self.nc: NatsClient | None = None
        self.api: JetStreamApi | None = None
        self.kv: KeyValue | None = None
        self.live: list[str] = []
        self.owned: dict[int, asyncio.Task[None]] = {}  # shard -> its pull task
        self._closing: dict[int, asyncio.Task[None]] = {}  # shard -> its cancelled task, releasing
        self.pinned: dict[int, float] = {}  # shard -> when this worker got its pin
        self._prev_assign: dict[int, str] = {}  # shard -> owner in the last view
        self._shard_patients: dict[int, set[str]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._c: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._lag: dict[str, float] = {}
        # per-patient budget (rate_limit_* of the stream config); its clock: the messages' stored time
        self.budget = PatientBudget.from_config(self.registry.config, max_patients=self.registry.max_patients)
        self.last_error: str | None = None
        self.failed: str | None = None  # set when the bus cannot be set up (run() has returned)

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> BusIngestService:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"bus-ingest:{self.worker_id}")
        return self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def stop(self) -> None:
        """Leave: release every shard (ack'd, unpinned), drop the membership key, close."""
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._connect()
            try:
                await self._setup()
            except (JsApiError, RuntimeError) as e:  # e.g. another stream holds the PPG subjects
                self.failed = self.last_error = f"bus setup failed: {e}"
                log.error("%s", self.failed)
                return
            tasks = [
                asyncio.create_task(self._membership(), name="bus-membership"),
                asyncio.create_task(self._profiles(), name="bus-profiles"),
                asyncio.create_task(self._housekeeping(), name="bus-housekeeping"),
            ]
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self._leave()

    async def _connect(self) -> None:
        async def disconnected() -> None:
            self.connected.clear()
            self._c["disconnects"] += 1

        async def reconnected() -> None:
            self.connected.set()
            self._c["connects"] += 1

        async def error(e: Exception) -> None:
            self.last_error = str(e)

        while True:
            self._c["connect_attempts"] += 1
            try:
                self.nc = await nats.connect(
                    self.servers,
                    name=self.worker_id,
                    user=self.username,
                    password=self.password,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    connect_timeout=2,
                    allow_reconnect=True,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                    tls=self.tls_context,
                    tls_handshake_first=self.tls_context is not None,
                )
                break
            except Exception as e:  # noqa: BLE001 - no server reachable yet: retry
                self.last_error = str(e)
                log.warning("bus %s unavailable (%s); retrying", self._where, e)
                await asyncio.sleep(1.0)
        self._c["connects"] += 1
        self.api = JetStreamApi(self.nc)

    async def _setup(self) -> None:
        """Streams, consumers and the KV bucket, created when missing (every worker does it)."""
        assert self.api is not None and self.nc is not None
        lay = self.layout
        for attempt in range(60):  # JetStream may still be electing leaders right after start
            try:
                await self.api.ensure_stream(lay.stream_config())
                await self.api.ensure_stream(lay.profile_stream_config())
                for s in range(lay.shards):
                    await self.api.ensure_consumer(lay.stream, lay.shard_consumer_config(s))
                js = self.nc.jetstream()
                try:
                    self.kv = await js.key_value(lay.kv_bucket)
                except Exception:  # noqa: BLE001 - missing bucket: create it
                    self.kv = await js.create_key_value(
                        bucket=lay.kv_bucket, ttl=self.member_ttl_s, replicas=lay.replicas, history=1
                    )
                # a bucket made under another member_ttl_s keeps its TTL unless told: a longer one
                # would slow every failover, a shorter one than the heartbeats allow would flap
                was = await self.api.ensure_max_age(f"KV_{lay.kv_bucket}", self.member_ttl_s)
                if was is not None:
                    log.warning(
                        "membership bucket %s: TTL %g s -> %g s (member_ttl_s)",
                        lay.kv_bucket,
                        was,
                        self.member_ttl_s,
                    )
                # on a fresh cluster, workers starting together race to create the bucket: its
                # stream may not answer yet (NoStreamResponseError), so the first put retries too
                await self._heartbeat()
                break
            except JsApiError as e:
                if e.code in (400,) and e.err_code not in (10058,):
                    raise
                log.warning("bus setup: %s (attempt %d)", e, attempt + 1)
                await asyncio.sleep(1.0)
            except NatsError as e:  # e.g. no response from a stream still being placed
                log.warning("bus setup: %s: %s (attempt %d)", type(e).__name__, e, attempt + 1)
                await asyncio.sleep(1.0)
        else:
            raise RuntimeError("JetStream did not become ready")
        self.ready.set()
        self.connected.set()  # set up and a member: windows may come from now on
        log.info("worker %s on bus %s: %d shards", self.worker_id, self._where, lay.shards)

    # -- membership -----------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        assert self.kv is not None
        await self.kv.put(self.worker_id, json.dumps({"t": time.time()}).encode())

    async def _live_workers(self) -> list[str]:
        """One read of the bucket through :class:`LiveSet` (a failed read raises and is not
        observed: the view stays as it was).  The read is the bucket stream's subject list, one
        request and no consumer (``kv.keys()`` creates an ordered consumer per call, which the
        server keeps for 5 minutes: 600 per worker at two reads a second)."""
        assert self.api is not None
        root = f"$KV.{self.layout.kv_bucket}."
        subjects = await self.api.stream_subjects(f"KV_{self.layout.kv_bucket}", root + ">")
        return self.members.observe([s[len(root) :] for s in subjects], time.monotonic())

    async def _membership(self) -> None:
        while True:
            try:
                await self._heartbeat()
                live = await self._live_workers()
                self._rebalance(live)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - bus trouble: keep what we own, retry
                self._c["membership_errors"] += 1
                self.last_error = str(e)
                log.warning("membership: %s", e)
            await asyncio.sleep(self.heartbeat_s)

    def _rebalance(self, live: list[str]) -> None:
        mine = set(assign_shards(self.layout.shards, live).get(self.worker_id, []))
        if live != self.live:
            log.info("live workers: %s (this one owns %d shards)", ",".join(live), len(mine))
        for s in sorted(set(self.owned) - mine):
            task = self.owned.pop(s)
            task.cancel()  # the task releases the shard (drop patients, unpin) on its way out
            self._closing[s] = task
        for s in sorted(mine - set(self.owned)):
            prev = self._prev_assign.get(s)
            dead_prev = prev is not None and prev != self.worker_id and prev not in live
            self.owned[s] = asyncio.create_task(
                self._shard(s, unpin_first=dead_prev, after=self._closing.pop(s, None)), name=f"bus-shard:{s}"
            )
        self.live = live
        self._prev_assign = {s: w for w, ss in assign_shards(self.layout.shards, live).items() for s in ss}

    # -- one shard ------------------------------------------------------------------------
    async def _shard(self, shard: int, *, unpin_first: bool, after: asyncio.Task[None] | None = None) -> None:
        assert self.nc is not None and self.api is not None
        if after is not None:  # the previous task of this shard is still releasing it
            await asyncio.wait([after])
        lay = self.layout
        name = lay.consumer_name(shard)
        puller = PinnedPuller(self.nc, lay.stream, name, group=lay.group)
        try:
            if unpin_first:  # its previous owner is gone: do not wait for the pin to time out
                with contextlib.suppress(JsApiError):
                    await self.api.unpin(lay.stream, name, lay.group)
                self._c["unpins_dead_owner"] += 1
            while True:
                try:
                    res = await puller.pull(self.pull_batch, 1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - connection trouble: retry
                    self.last_error = str(e)
                    await asyncio.sleep(0.2)
                    continue
                if res.status == 423:  # pinned to another client: we lost it, or never had it
                    if shard in self.pinned:
                        self._lost(shard, "pin taken by another client")
                    await asyncio.sleep(0.1)
                    continue
                if res.messages and shard not in self.pinned:
                    self.pinned[shard] = time.time()
                    self._c["shards_acquired"] += 1
                    log.info("shard %d acquired by %s at %.3f", shard, self.worker_id, self.pinned[shard])
                    await self._replay(shard)
                for m in res.messages:
                    await self._handle_msg(shard, m, ack=True)
                if res.status == 409:  # e.g. leadership change: back off a little
                    await asyncio.sleep(0.1)
        finally:
            if shard in self.pinned:
                self._lost(shard, "released")
                with contextlib.suppress(Exception):
                    await self.api.unpin(lay.stream, name, lay.group)
            with contextlib.suppress(Exception):
                await puller.close()

    def _lost(self, shard: int, why: str) -> None:
        """The shard is no longer ours: drop its patients' streams and tell the pipeline."""
        t = self.pinned.pop(shard, None)
        self._c["shards_released"] += 1
        log.info(
            "shard %d %s by %s at %.3f (held since %.3f)", shard, why, self.worker_id, time.time(), t or 0
        )
        pats = sorted(self._shard_patients.pop(shard, set()))
        for pid in pats:
            self.registry.streams.pop(pid, None)
            self._lag.pop(pid, None)
        self.budget.forget(pats)  # its new owner judges them afresh (replaying their recent chunks)
        if pats:
            keep = []
            while True:  # windows of these patients still queued are not ours to process any more
                try:
                    w = self.windows.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if w.patient not in pats:
                    keep.append(w)
            for w in keep:
                self.windows.put_nowait(w)
            if self.on_release is not None:
                self.on_release(pats)

    async def _replay(self, shard: int) -> None:
        """Rebuild the shard's patients from the stream: the last ``replay_s`` seconds before
        the consumer's ack floor (nothing when the consumer never acknowledged anything)."""
        assert self.api is not None and self.nc is not None
        lay = self.layout
        try:
            info = await self.api.consumer_info(lay.stream, lay.consumer_name(shard))
        except JsApiError as e:
            log.warning("shard %d: no consumer info for the replay: %s", shard, e)
            return
        floor = info.get("ack_floor") or {}
        t_floor = _parse_time(str(floor.get("last_active", "")))
        if not floor.get("stream_seq") or t_floor is None:
            return
        name = f"replay-{uuid.uuid4().hex[:12]}"
        t0 = time.monotonic()
        n = 0
        try:
            created = await self.api.create_replay_consumer(
                lay.stream, name, lay.shard_filter(shard), t_floor - self.replay_s
            )
            want = int(created.get("num_pending", 0))  # what the stream holds for the replay now
            rp = PinnedPuller(self.nc, lay.stream, name, group=None)
            deadline = time.monotonic() + 10.0
            try:
                while n < want and time.monotonic() < deadline:
                    # a status without messages (e.g. 409 leader change right after a node loss)
                    # is retried until every message counted at creation has been replayed
                    res = await rp.pull(min(1000, want - n), 1.0)
                    for m in res.messages:
                        await self._handle_msg(shard, m, ack=False)
                        n += 1
                    meta = parse_ack_subject(res.messages[-1].reply) if res.messages else None
                    if meta is not None and meta.pending == 0:
                        break
            finally:
                await rp.close()
            if n < want:
                self._c["replay_incomplete"] += 1
                log.warning("shard %d: replayed only %d of %d messages", shard, n, want)
        except JsApiError as e:
            log.warning("shard %d: replay failed: %s", shard, e)
        finally:
            with contextlib.suppress(Exception):
                await self.api.delete_consumer(lay.stream, name)
        self._c["replayed_messages"] += n
        log.info("shard %d: replayed %d messages in %.2f s", shard, n, time.monotonic() - t0)

    # -- messages -------------------------------------------------------------------------
    async def _handle_msg(self, shard: int, msg: Msg, *, ack: bool) -> None:
        parsed = self.layout.parse_shard_subject(msg.subject)
        topic = parsed[2] if parsed is not None else msg.subject
        self._c["messages_in"] += 1
        meta = parse_ack_subject(msg.reply) if msg.reply else None
        now = meta.timestamp_ns / 1e9 if meta is not None else time.time()  # when it was stored
        res: ParsedPpg | ParsedProfile | DeadLetter
        pid = budget_patient(topic, self.prefix) if parsed is not None and self.budget.msgs_per_s else None
        over = self.budget.admit_message(pid, now) if pid is not None else None
        if over is not None:  # over its message budget: refused unparsed
            if ack:  # replayed: its first owner logged and dead-lettered it already
                note_rate_limited(log, over)
            res = DeadLetter.of(topic, over.reason, msg.data)
        else:
            res = parse_message(
                topic, msg.data, prefix=self.prefix, max_clock_skew_s=self.registry.config.max_clock_skew_s
            )
        try:
            if isinstance(res, ParsedPpg):
                over = self.budget.admit_chunk(res.patient_id, res.chunk.n, res.chunk.fs, now)
                if over is not None:  # over its sample budget
                    if ack:
                        note_rate_limited(log, over)
                    res = DeadLetter.of(topic, over.reason, msg.data, res.received_at)
            if isinstance(res, DeadLetter):
                if ack:  # replayed messages were dead-lettered by their first owner already
                    await self._dead_letter(res)
            elif isinstance(res, ParsedPpg):
                self._c["ppg_bin" if res.binary else "ppg_json"] += 1
                self._shard_patients[shard].add(res.patient_id)
                self._emit(self.registry.push(res.patient_id, res.chunk))
        except Exception as e:  # noqa: BLE001 - a message must never stop the worker
            log.exception("bus ingest failed on a message of %s", topic)
            self._c["internal_errors"] += 1
            await self._dead_letter(
                DeadLetter(
                    topic=topic,
                    reason=f"internal_error: {type(e).__name__}: {e}"[:500],
                    received_at=time.time(),
                    payload_excerpt="",
                )
            )
        if ack and msg.reply and self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, b"+ACK")

    async def _profiles(self) -> None:
        """Every patient's last profile (the profile stream, last value per subject, then live)."""
        assert self.nc is not None
        js = self.nc.jetstream()

        async def on_msg(msg: Msg) -> None:
            token = msg.subject.split(".")[-2] if msg.subject.count(".") >= 2 else ""
            pid = patient_from_nats_token(token)
            res = parse_message(profile_topic(pid, prefix=self.prefix), msg.data, prefix=self.prefix)
            if isinstance(res, ParsedProfile):
                self._c["profiles"] += 1
                self.registry.set_profile(res.patient_id, res.profile)
            elif isinstance(res, DeadLetter):
                self._invalid[res.code] += 1

        sub = await js.subscribe(
            self.layout.profile_subject(),
            stream=self.layout.profile_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            cb=on_msg,
        )
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                now = time.monotonic()
                self._emit(self.registry.flush_stale(now))
                for pid in self.registry.expire(now):
                    self._lag.pop(pid, None)
                note_rate_limited(log, ended=self.budget.tick(time.time()))  # the budget's clock
            except Exception:  # noqa: BLE001 - never let housekeeping die
                log.exception("bus ingest housekeeping failed")
                self._c["internal_errors"] += 1

    async def _dead_letter(self, dl: DeadLetter) -> None:
        self._invalid[dl.code] += 1
        if not await self.publish_subject(self.deadletter_subject, dl.model_dump_json().encode()):
            self._c["deadletter_publish_errors"] += 1
        else:
            self._c["deadletters_published"] += 1

    async def publish_subject(self, subject: str, payload: bytes) -> bool:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.publish(subject, payload)
            return True
        except Exception as e:  # noqa: BLE001 - best effort, like the MQTT ingest's publish
            log.warning("could not publish on %s: %s", subject, e)
            return False

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False, timeout: float = 5.0
    ) -> bool:
        """Publish an MQTT topic's message on its NATS subject (vitals; MQTT subscribers of the
        NATS MQTT listener receive it).  Best effort: False (and a counter) on failure."""
        ok = await self.publish_subject(
            nats_subject(topic), payload.encode() if isinstance(payload, str) else payload
        )
        self._c["published" if ok else "publish_errors"] += 1
        return ok

    def _emit(self, windows: list[Window]) -> None:
        for w in windows:
            if self.windows.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.windows.get_nowait()
                    self._c["windows_dropped"] += 1
            self.windows.put_nowait(w)
            self._c["windows_out"] += 1
            self._lag[w.patient] = w.created_at - (w.t0 + w.duration_s)

    async def _leave(self) -> None:
        tasks = list(self.owned.values()) + list(self._closing.values())
        self.owned.clear()
        self._closing.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(self.worker_id)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        self.connected.clear()

    # -- metrics --------------------------------------------------------------------------
    def bus_counters(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "workers_live": len(self.live),
            "shards_owned": len(self.pinned),
            "shards_assigned": len(self.owned),
            "shards": sorted(self.pinned),
            "shards_acquired": self._c["shards_acquired"],
            "shards_released": self._c["shards_released"],
            "replayed_messages": self._c["replayed_messages"],
            "membership_errors": self._c["membership_errors"],
        }

    def counters(self) -> dict[str, Any]:
        """The counters of :meth:`ingest.service.IngestService.counters`, plus ``bus``."""
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
            "bus": self.bus_counters(),
        }
