"""NATS JetStream for the scale-out mode (``p2es run --bus nats://...``): the bus layout (one stream
partitioned onto P shards by patient, a profile stream, the membership KV bucket), shard ->
worker assignment by rendezvous hashing, and the small part of the JetStream JSON API that
nats-py lacks: pull consumers with a ``pinned_client`` priority group.

The layout (see docs/scaling.md):

* stream ``P2ES_PPG`` stores the wearables' PPG subjects (``p2es.v1.patients.*.ppg`` and
  ``….ppg.bin``; NATS's MQTT listener maps ``/`` to ``.`` and a ``.`` inside a patient id to
  ``//``) under ``p2es.shard.<k>.<patient token>.<kind>``: a ``subject_transform`` with
  ``{{partition(P,1)}}`` puts every patient on one of P shards (FNV-1a of the token, modulo
  P: :func:`shard_of`), and leaves the original subjects untouched for other subscribers;
* one durable pull consumer per shard (``shard-<k>``) with the priority group ``p2es`` and
  ``priority_policy: pinned_client``: the server delivers a shard's messages to one pinned
  client only (:class:`JetStreamApi` ``pull``/``unpin``);
* stream ``P2ES_PROFILES``: the last retained profile per patient (``….profile``);
* KV bucket ``p2es_workers``: one key per live worker, refreshed well within its TTL.

Everything here is idempotent: workers create what is missing when they start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError

from p2es.contracts.topics import (
    TOPIC_PREFIX,
    nats_patient_inputs,
    nats_subject,
    patient_from_nats_token,
    ppg_topic,
    profile_topic,
)

__all__ = [
    "parse_bus_url",
    "shard_of",
    "rendezvous_owner",
    "assign_shards",
    "BusLayout",
    "JsApiError",
    "JsMeta",
    "parse_ack_subject",
    "PullResult",
    "JetStreamApi",
    "PinnedPuller",
    "PIN_HEADER",
]

#: the header carrying the pin id on messages of a pinned consumer (and in a pull request's "id")
PIN_HEADER = "Nats-Pin-Id"
_NS = 1_000_000_000


def parse_bus_url(url: str) -> list[str]:
    """``nats://h1:4222,h2:4222`` (or ``nats://h1,nats://h2``) -> one server URL per host.
    Raises ``ValueError`` with a one-line reason."""
    if not url.startswith(("nats://", "tls://")):
        raise ValueError(f"bus must be nats://HOST:PORT[,HOST:PORT...], got {url!r}")
    scheme = url.split("://", 1)[0]
    out = []
    for part in url.split("://", 1)[1].split(","):
        part = part.strip().removeprefix(f"{scheme}://")
        if not part:
            raise ValueError(f"empty server in bus URL {url!r}")
        u = urllib.parse.urlsplit(f"{scheme}://{part}")
        try:
            port = u.port or 4222
        except ValueError:
            raise ValueError(f"bad port in bus URL {url!r}") from None
        if not u.hostname:
            raise ValueError(f"no host in bus URL {url!r}")
        cred = f"{u.username}:{u.password}@" if u.username else ""
        out.append(f"{scheme}://{cred}{u.hostname}:{port}")
    return out


def shard_of(token: str, shards: int) -> int:
    """The shard nats-server's ``{{partition(shards,1)}}`` gives a subject token: FNV-1a (32 bit)
    of its bytes modulo ``shards``.  ``token`` is the patient as it appears in the NATS subject
    (a ``.`` of the id is ``//`` there)."""
    h = 0x811C9DC5
    for b in token.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % shards


def _score(shard: int, worker: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{shard}\0{worker}".encode(), digest_size=8).digest(), "big")


def rendezvous_owner(shard: int, workers: Iterable[str]) -> str | None:
    """The worker that owns ``shard`` among ``workers`` (highest random weight); None if none.
    Every worker computes the same answer from the same set, and a change of the set moves
    only the shards of the workers that came or went."""
    best: tuple[int, str] | None = None
    for w in workers:
        s = (_score(shard, w), w)
        if best is None or s > best:
            best = s
    return None if best is None else best[1]


def assign_shards(shards: int, workers: Iterable[str]) -> dict[str, list[int]]:
    """worker -> the shards it owns (every worker of ``workers`` present, maybe with none)."""
    ws = sorted(set(workers))
    out: dict[str, list[int]] = {w: [] for w in ws}
    for s in range(shards):
        owner = rendezvous_owner(s, ws)
        if owner is not None:
            out[owner].append(s)
    return out


class LiveSet:
    """The live workers as one worker sees them: the keys of the membership bucket, with
    hysteresis.  Pure (no I/O): feed it every successful read of the bucket with
    :meth:`observe`; a failed read is simply not fed.

    A key that appears counts at once (a joining worker takes its share without delay).  A key
    that disappears counts as gone only after it has been missing from every successful read
    for ``grace_s`` seconds: a listing of the bucket is not atomic (an entry that expires or is
    replaced while the listing runs can hide other keys for one read), and after a bus outage
    the others' heartbeats may not be back yet at the first read.  Without the hysteresis one
    such read makes a worker believe it is alone, claim every shard and unpin the others'
    (measured on the 3-node test cluster: one partial read when a dead worker's key expired, one
    "alone" read for every worker after a NATS node was killed).  A dead worker is therefore
    dropped ``ttl + grace_s`` after its last heartbeat.

    Memory: one float per worker key seen and not yet dropped.
    """

    def __init__(self, self_id: str, grace_s: float) -> None:
        self.self_id, self.grace_s = self_id, float(grace_s)
        self._absent_since: dict[str, float | None] = {}  # key -> first read it was missing from

    def observe(self, keys: Iterable[str], now: float) -> list[str]:
        present = set(keys) | {self.self_id}
        for k in present:
            self._absent_since[k] = None
        for k, since in list(self._absent_since.items()):
            if k in present:
                continue
            if since is None:
                self._absent_since[k] = since = now
            if now - since >= self.grace_s:
                del self._absent_since[k]
        return self.live

    @property
    def live(self) -> list[str]:
        return sorted(self._absent_since) if self._absent_since else [self.self_id]


@dataclass(frozen=True)
class BusLayout:
    """Names and configurations of the streams, consumers and KV bucket of one deployment.
    ``shards`` must never change once data flows (it moves every patient)."""

    shards: int = 128
    prefix: str = TOPIC_PREFIX
    replicas: int = 3
    max_age_s: float = 120.0  # >= window + hop + failover time: what a new owner replays
    stream: str = "P2ES_PPG"
    profile_stream: str = "P2ES_PROFILES"
    group: str = "p2es"
    kv_bucket: str = "p2es_workers"
    shard_root: str = "p2es.shard"
    ack_wait_s: float = 2.0  # a delivery lost with a node is redelivered after this (< re-order wait)
    pinned_ttl_s: float = 5.0  # a pinned worker silent this long loses its shard
    max_ack_pending: int = 20_000

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 4096:
            raise ValueError("shards must be within 1..4096")
        if not 1 <= self.replicas <= 5:
            raise ValueError("replicas must be within 1..5")

    # subjects
    def ppg_subjects(self) -> list[str]:
        """The wearables' PPG subjects on NATS (JSON and binary chunks, every patient)."""
        return [
            nats_subject(ppg_topic("*", prefix=self.prefix)),
            nats_subject(ppg_topic("*", binary=True, prefix=self.prefix)),
        ]

    def profile_subject(self) -> str:
        return nats_subject(profile_topic("*", prefix=self.prefix))

    def shard_filter(self, shard: int) -> str:
        return f"{self.shard_root}.{shard}.>"

    def consumer_name(self, shard: int) -> str:
        return f"shard-{shard:04d}"

    def parse_shard_subject(self, subject: str) -> tuple[int, str, str] | None:
        """``p2es.shard.<k>.<token>.ppg[.bin]`` -> (k, patient id, MQTT topic of the chunk)."""
        root = self.shard_root + "."
        if not subject.startswith(root):
            return None
        rest = subject[len(root) :].split(".")
        if len(rest) < 3 or not rest[0].isdigit():
            return None
        kind = ".".join(rest[2:])
        if kind not in ("ppg", "ppg.bin"):
            return None
        pid = patient_from_nats_token(rest[1])
        return int(rest[0]), pid, ppg_topic(pid, binary=kind == "ppg.bin", prefix=self.prefix)

    # configurations (the JetStream JSON API's field names)
    def stream_config(self) -> dict[str, Any]:
        src = nats_patient_inputs(self.prefix)  # the transform's source: one token per patient
        return {
            "name": self.stream,
            "subjects": self.ppg_subjects(),
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "max_age": int(self.max_age_s * _NS),
            "discard": "old",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_msgs_per_subject": -1,
            "compression": "none",
            "subject_transform": {
                "src": src,
                "dest": f"{self.shard_root}.{{{{partition({self.shards},1)}}}}.{{{{wildcard(1)}}}}.>",
            },
        }

    def profile_stream_config(self) -> dict[str, Any]:
        return {
            "name": self.profile_stream,
            "subjects": [self.profile_subject()],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "max_age": 0,
            "discard": "old",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_msgs_per_subject": 1,  # the last profile of each patient (an empty one clears it)
            "compression": "none",
        }

    def shard_consumer_config(self, shard: int) -> dict[str, Any]:
        return {
            "durable_name": self.consumer_name(shard),
            "name": self.consumer_name(shard),
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(self.ack_wait_s * _NS),
            "max_deliver": -1,
            "filter_subject": self.shard_filter(shard),
            "replay_policy": "instant",
            "max_ack_pending": self.max_ack_pending,
            "max_waiting": 64,
            "num_replicas": 0,  # the stream's
            "priority_groups": [self.group],
            "priority_policy": "pinned_client",
            "priority_timeout": int(self.pinned_ttl_s * _NS),
        }


class JsApiError(Exception):
    """A JetStream API error reply (``code`` HTTP-like, ``err_code`` JetStream's), or no reply."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{subject}: {code} {description} (err_code {err_code})")
        self.code, self.err_code, self.description = code, err_code, description


@dataclass(frozen=True)
class JsMeta:
    """What a JetStream message's ack subject says about it."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def parse_ack_subject(reply: str) -> JsMeta | None:
    """``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (v1) or the v2
    form with domain and account hash after ``$JS.ACK``; None for anything else."""
    t = reply.split(".")
    if len(t) < 9 or t[0] != "$JS" or t[1] != "ACK":
        return None
    if len(t) == 9:
        stream, consumer, nums = t[2], t[3], t[4:9]
    elif len(t) >= 12:
        stream, consumer, nums = t[4], t[5], t[6:11]
    else:
        return None
    try:
        d, s, c, ts, p = (int(x) for x in nums)
    except ValueError:
        return None
    return JsMeta(stream, consumer, d, s, c, ts, p)


@dataclass
class PullResult:
    """One pull request's outcome: the messages, the status that ended it (``None``: the batch
    was filled; 404 no messages, 408 expired, 409 e.g. leadership change, 423 the shard is
    pinned to another client) and the pin id the server gave this client."""

    messages: list[Msg] = field(default_factory=list)
    status: int | None = None
    description: str = ""
    pin_id: str | None = None


def _status(msg: Msg) -> tuple[int, str] | None:
    h = msg.headers or {}
    code = h.get("Status")
    if code is None or msg.data:
        return None
    try:
        return int(code), h.get("Description", "")
    except ValueError:
        return None


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JetStreamApi:
    """The JetStream JSON API requests p2es uses, over one nats-py connection."""

    def __init__(self, nc: NatsClient, *, timeout_s: float = 5.0, api_prefix: str = "$JS.API") -> None:
        self.nc, self.timeout_s, self.api = nc, float(timeout_s), api_prefix

    async def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API request; an error reply or no reply -> :class:`JsApiError`."""
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout_s)
        except NatsTimeoutError:
            raise JsApiError(subject, 408, 0, "no reply from JetStream") from None
        st = _status(msg)
        if st is not None:  # e.g. 503 no responders (JetStream not ready)
            raise JsApiError(subject, st[0], 0, st[1] or "status reply")
        try:
            data: dict[str, Any] = json.loads(msg.data)
        except ValueError:
            raise JsApiError(subject, 500, 0, "reply is not JSON") from None
        err = data.get("error")
        if isinstance(err, dict):
            raise JsApiError(
                subject, int(err.get("code", 500)), int(err.get("err_code", 0)), str(err.get("description"))
            )
        return data

    # streams
    async def ensure_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create the stream, or update it when it exists with another configuration."""
        name = config["name"]
        try:
            return await self.request(f"{self.api}.STREAM.CREATE.{name}", config)
        except JsApiError as e:
            if e.err_code != 10058:  # stream name already in use with a different configuration
                raise
        return await self.request(f"{self.api}.STREAM.UPDATE.{name}", config)

    async def stream_info(self, name: str) -> dict[str, Any]:
        return await self.request(f"{self.api}.STREAM.INFO.{name}")

    async def stream_subjects(self, name: str, subjects_filter: str) -> list[str]:
        """The subjects of ``name`` that hold messages now and match ``subjects_filter``: one
        snapshot of the stream's state per page (no consumer), e.g. the live keys of a KV
        bucket whose TTL removes dead entries."""
        out: list[str] = []
        while True:
            data = await self.request(
                f"{self.api}.STREAM.INFO.{name}", {"subjects_filter": subjects_filter, "offset": len(out)}
            )
            page = (data.get("state") or {}).get("subjects") or {}
            out.extend(page)
            if not page or len(out) >= int(data.get("total") or 0):
                return out

    async def ensure_max_age(self, stream: str, max_age_s: float) -> float | None:
        """Set an existing stream's ``max_age`` (e.g. a KV bucket's TTL, whose stream is
        ``KV_<bucket>``) when it differs: returns the previous value in seconds, or None when it
        already was ``max_age_s``.  The other settings stay as the stream has them."""
        config = dict((await self.stream_info(stream))["config"])
        before = int(config.get("max_age") or 0)
        want = int(round(max_age_s * _NS))
        if before == want:
            return None
        config["max_age"] = want
        if want and int(config.get("duplicate_window") or 0) > want:  # the server requires <=
            config["duplicate_window"] = want
        await self.request(f"{self.api}.STREAM.UPDATE.{stream}", config)
        return before / _NS

    # consumers
    async def ensure_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create or update a named consumer (``action`` create-or-update)."""
        name = config["name"]
        filt = config.get("filter_subject")
        subject = f"{self.api}.CONSUMER.CREATE.{stream}.{name}" + (f".{filt}" if filt else "")
        return await self.request(subject, {"stream_name": stream, "config": config, "action": ""})

    async def consumer_info(self, stream: str, consumer: str) -> dict[str, Any]:
        return await self.request(f"{self.api}.CONSUMER.INFO.{stream}.{consumer}")

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        await self.request(f"{self.api}.CONSUMER.DELETE.{stream}.{consumer}")

    async def unpin(self, stream: str, consumer: str, group: str) -> None:
        """Release the pin of ``group``: the next waiting pull request gets a new pin id."""
        await self.request(f"{self.api}.CONSUMER.UNPIN.{stream}.{consumer}", {"group": group})

    async def create_replay_consumer(
        self, stream: str, name: str, filter_subject: str, start_time: float, *, inactive_s: float = 30.0
    ) -> dict[str, Any]:
        """An ephemeral, unacknowledged consumer over ``filter_subject`` from ``start_time``
        (Unix seconds): what a new shard owner replays."""
        config = {
            "name": name,
            "deliver_policy": "by_start_time",
            "opt_start_time": _rfc3339(start_time),
            "ack_policy": "none",
            "filter_subject": filter_subject,
            "replay_policy": "instant",
            "inactive_threshold": int(inactive_s * _NS),
            "mem_storage": True,
            "num_replicas": 1,
        }
        return await self.ensure_consumer(stream, config)


class PinnedPuller:
    """Pull requests on one consumer through one reply inbox.  With ``group`` set the request
    names the priority group and, once the server pinned this client, the pin id; a 423 reply
    means another client holds the pin (``pin_id`` is forgotten then)."""

    def __init__(
        self, nc: NatsClient, stream: str, consumer: str, *, group: str | None, api: str = "$JS.API"
    ):
        self.nc, self.stream, self.consumer, self.group = nc, stream, consumer, group
        self.subject = f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.pin_id: str | None = None
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None

    async def _subscription(self) -> Subscription:
        if self._sub is None:
            self._sub = await self.nc.subscribe(self._inbox)
        return self._sub

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closing on a dead connection is fine
                pass

    async def pull(self, batch: int, expires_s: float, *, no_wait: bool = False) -> PullResult:
        """One pull request: up to ``batch`` messages within ``expires_s``."""
        sub = await self._subscription()
        body: dict[str, Any] = {"batch": int(batch), "expires": int(expires_s * _NS)}
        if no_wait:
            body["no_wait"] = True
        if self.group is not None:
            body["group"] = self.group
            if self.pin_id:
                body["id"] = self.pin_id
        await self.nc.publish(self.subject, json.dumps(body).encode(), reply=self._inbox)
        res = PullResult()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + expires_s + 1.0
        while len(res.messages) < batch:
            left = deadline - loop.time()
            if left <= 0:
                res.status, res.description = 408, "client timeout"
                break
            try:
                msg = await sub.next_msg(timeout=left)
            except NatsTimeoutError:
                res.status, res.description = 408, "client timeout"
                break
            st = _status(msg)
            if st is None:
                pin = (msg.headers or {}).get(PIN_HEADER)
                if pin:
                    self.pin_id = res.pin_id = pin
                res.messages.append(msg)
                continue
            if st[0] == 100:  # idle heartbeat
                continue
            res.status, res.description = st
            if st[0] == 423:
                self.pin_id = None
            break
        if res.pin_id is None:
            res.pin_id = self.pin_id
        return res
