"""Asynchronous InfluxDB writer: batching, retry with backoff, on-disk spool, dead letters.

One path for every InfluxDB version: data is serialised once to line protocol
(:mod:`sink.lineprotocol`), batched by the :class:`Writer`, and handed to a :class:`Transport`
that only moves bytes -- :class:`V1Transport` (InfluxDB 1.x ``POST /write``, stdlib
``http.client``) or :class:`V2Transport` (InfluxDB 2.x/3.x through ``influxdb-client``'s
synchronous ``WriteApi``).

Delivery rules (what the tests check against a real InfluxDB):

* ``await writer.put(...)`` never waits for the database.  Lines collect into a batch that is
  sealed at ``batch_lines`` lines or ``flush_interval`` seconds; sealed batches wait in a bounded
  in-memory queue (``max_queue_batches``); when it is full, batches go to the spool instead.
* Batches are written one at a time, in order, in a worker thread (``asyncio.to_thread``).
* Connection errors, timeouts, HTTP 5xx and 429 are retried forever with exponential backoff
  and full jitter (``uniform(0, min(cap, base·2^attempt))``, base 0.5 s, cap 30 s); a
  ``Retry-After`` header is honoured (waited at least, up to ``max_retry_after``).  From the
  first such failure until a write succeeds the database counts as *down*: the failed batch,
  the in-memory queue and every new batch go to the spool, so they survive a crash.
* After a successful write the spool is drained, oldest first, before anything newer is sent:
  the global order is always spool, then in-flight, then memory queue.
* Any other 4xx (bad line protocol, field type conflict, 401/403/404, 413...) will never
  succeed (unless listed in ``retry_statuses``, e.g. ``{401, 403, 404}`` where credentials or
  the database may appear later): the batch is appended to the dead-letter file (``# p2es dead letter ...`` header
  line with the status and reason, then the batch's lines, ready to re-import once fixed),
  counted, and the writer goes on.  With InfluxDB 1.x a "partial write" 400 means some lines
  of the batch were stored; the whole batch is dead-lettered (replaying it is harmless).
* Replays never duplicate data: InfluxDB keeps one point per measurement + tag set +
  timestamp, so a batch written twice (after a lost acknowledgement, a crash before the spool
  cursor was saved, ...) leaves one copy.
* ``await writer.flush()`` returns once everything accepted before the call is written (or
  dead-lettered); ``await writer.close()`` tries that for ``timeout`` seconds (not at all while
  the database is down) and then persists whatever is left to the spool.  A new Writer on the
  same spool directory replays it.  Nothing accepted is lost, except what the spool's size
  bound drops (counted; see :mod:`sink.spool`).
* A spool the disk refuses (full, quota, I/O error; :class:`sink.spool.SpoolWriteError`): one
  ERROR line, ``spool_full`` = 1 (the ``p2es_spool_full`` gauge), and batches stay in memory
  instead -- after what the spool already holds, so the order is kept -- up to
  ``max_queue_batches``; beyond that the **oldest** batch in memory is dropped (counted in
  ``batches_dropped`` / ``points_dropped``, one WARNING per streak).  Every later batch tries the
  spool again, oldest first; ``spool_full`` stays 1 until everything held in memory is in the
  spool (or written), then one WARNING line.  A disk at the edge -- a small batch fits, the next
  does not -- therefore neither flips the gauge nor repeats the lines, and a new refusal within
  ``FULL_LOG_EVERY_S`` (10 min) of the last ERROR line is not logged again.  Nothing is raised
  to the caller: the engine keeps reconstructing and publishing vitals.

Counters for monitoring are plain attributes, gathered by :attr:`Writer.counters`.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import http.client
import json
import logging
import math
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from p2es.errors import P2esError
from p2es.transport.tls import client_context

from .lineprotocol import Point, to_lines
from .spool import DEFAULT_MAX_BYTES, Spool, SpoolPos, SpoolWriteError

#: a new "spool refused" ERROR line at most this often (a disk at the edge of full flaps)
FULL_LOG_EVERY_S = 600.0

__all__ = [
    "Writer",
    "Transport",
    "V1Transport",
    "V2Transport",
    "make_transport",
    "WriteError",
    "RetryableWriteError",
    "PermanentWriteError",
    "WriterClosedError",
    "DEFAULT_DATABASE",
]

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "p2es"


# ============================================================================ errors


class WriteError(P2esError):
    """A write that InfluxDB did not accept.  ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class RetryableWriteError(WriteError):
    """Worth retrying: unreachable, timeout, HTTP 5xx or 429."""


class PermanentWriteError(WriteError):
    """Will never succeed as is (HTTP 4xx other than 429): the batch is dead-lettered."""


class WriterClosedError(P2esError):
    """``put`` after ``close``."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        sec = float(value)
        return max(0.0, sec) if math.isfinite(sec) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_for_status(
    status: int, reason: str, retry_after: str | None = None, *, where: str = "InfluxDB"
) -> WriteError:
    """The error for a non-2xx answer: 429 and 5xx retryable, everything else permanent."""
    msg = f"{where} answered HTTP {status}: {reason}".rstrip(": ")
    if status == 429 or status >= 500:
        return RetryableWriteError(msg, status=status, retry_after=parse_retry_after(retry_after))
    return PermanentWriteError(msg, status=status)


def _reason(body: bytes | str | None, header: str | None = None) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = (body or "").strip()
    if text:
        try:
            d = json.loads(text)
            if isinstance(d, dict):
                text = str(d.get("error") or d.get("message") or text)
        except ValueError:
            pass
    elif header:
        text = header
    return " ".join(text.split())[:1000]


# ============================================================================ transports


@runtime_checkable
class Transport(Protocol):
    """Moves one batch of line protocol (UTF-8 bytes, ns timestamps) to InfluxDB.

    ``write`` blocks (the Writer calls it in a thread, one call at a time) and returns on
    success; it raises :class:`RetryableWriteError` or :class:`PermanentWriteError` otherwise.
    """

    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


class V1Transport:
    """InfluxDB 1.x: ``POST {url}/write?db=DB&precision=ns`` with the stdlib ``http.client``.

    Keeps one keep-alive connection; a connection that went stale (server restarted) is
    replaced and the request sent once more at once.  ``username``/``password`` go as HTTP Basic
    auth (never in the URL).  ``url`` may carry a path prefix (``http://proxy/influx``).
    ``https://`` verifies the server's certificate and host name with ``ssl_context`` (default:
    :func:`p2es.transport.tls.client_context`, the system trust store).
    """

    def __init__(
        self,
        url: str,
        db: str = DEFAULT_DATABASE,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"InfluxDB URL must be http(s)://host[:port][/prefix], got {url!r}")
        if not db:
            raise ValueError("database name must not be empty")
        self.url = url
        self.db = db
        self.timeout = float(timeout)
        self._https = u.scheme == "https"
        self._ssl = (ssl_context or client_context()) if self._https else None
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._path = u.path.rstrip("/") + "/write?" + urllib.parse.urlencode({"db": db, "precision": "ns"})
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username is not None:
            cred = f"{username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _new_conn(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _post(self, body: bytes) -> tuple[int, bytes, http.client.HTTPResponse]:
        assert self._conn is not None
        self._conn.request("POST", self._path, body=body, headers=self._headers)
        resp = self._conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self._drop_conn()
        return resp.status, data, resp

    def write(self, body: bytes) -> None:
        with self._lock:
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._new_conn()
            try:
                try:
                    status, data, resp = self._post(body)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    if not reused:
                        raise
                    self._drop_conn()  # stale keep-alive connection: one immediate fresh try
                    self._conn = self._new_conn()
                    status, data, resp = self._post(body)
            except (OSError, http.client.HTTPException) as e:
                self._drop_conn()
                raise RetryableWriteError(f"InfluxDB {self.url} unreachable: {type(e).__name__}: {e}") from e
            if 200 <= status < 300:
                return
            raise error_for_status(
                status,
                _reason(data, resp.getheader("X-Influxdb-Error")),
                resp.getheader("Retry-After"),
                where=f"InfluxDB {self.url}",
            )

    def close(self) -> None:
        with self._lock:
            self._drop_conn()

    def __repr__(self) -> str:
        return f"V1Transport({self.url!r}, db={self.db!r})"


class V2Transport:
    """InfluxDB 2.x / 3.x through ``influxdb-client``: ``WriteApi.write`` in synchronous mode.

    The already-serialised line protocol is passed through unchanged as ``bytes`` with
    ``write_precision=ns``; ``influxdb-client``'s own retries are off (the Writer retries).

    Tested only up to the ``influxdb-client`` call and its HTTP request: no InfluxDB 2.x/3.x
    server can be installed in the test environment (only 1.6.7, which has no
    ``/api/v2/write``), and the tests do not fake one.
    """

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str = DEFAULT_DATABASE,
        token: str = "",
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # lazy: heavy, only for 2.x/3.x
        from influxdb_client.client.write_api import SYNCHRONOUS  # lazy: heavy, only for 2.x/3.x

        if not bucket:
            raise ValueError("bucket must not be empty")
        self.url = url
        self.org = org
        self.bucket = bucket
        self.timeout = float(timeout)
        self._client = InfluxDBClient(
            url=url,
            token=token,
            org=org,
            timeout=int(self.timeout * 1000),
            retries=False,
            verify_ssl=True,  # certificate and host name; https:// only
            ssl_ca_cert=ca_file,  # None: the system trust store
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        import urllib3  # lazy: influxdb-client's HTTP layer, used only by this transport
        from influxdb_client.client.exceptions import InfluxDBError  # lazy: heavy, only for 2.x/3.x
        from influxdb_client.domain.write_precision import WritePrecision  # lazy: heavy, only for 2.x/3.x
        from influxdb_client.rest import ApiException  # lazy: heavy, only for 2.x/3.x

        try:
            self._write_api.write(
                bucket=self.bucket,
                org=self.org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # influxdb-client types its own str constants as WritePrecision
            )
        except ApiException as e:
            if not e.status:
                raise RetryableWriteError(f"InfluxDB {self.url}: {e.reason}") from e
            headers: Any = e.headers or {}  # urllib3 HTTPHeaderDict, or a list of pairs
            retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
            err = error_for_status(
                int(e.status), _reason(e.body, e.reason), retry_after, where=f"InfluxDB {self.url}"
            )
            raise err from e
        except InfluxDBError as e:  # raised without a response
            raise RetryableWriteError(f"InfluxDB {self.url}: {e}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise RetryableWriteError(f"InfluxDB {self.url} unreachable: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        try:
            self._write_api.close()  # type: ignore[no-untyped-call]  # influxdb-client leaves close() unannotated
        finally:
            self._client.close()  # type: ignore[no-untyped-call]  # influxdb-client leaves close() unannotated

    def __repr__(self) -> str:
        return f"V2Transport({self.url!r}, org={self.org!r}, bucket={self.bucket!r})"


def make_transport(
    url: str,
    *,
    version: int | None = None,
    database: str = DEFAULT_DATABASE,
    org: str | None = None,
    bucket: str | None = None,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
    ca_file: str | None = None,
) -> Transport:
    """V2Transport when ``version == 2`` (or a token/org is given), else V1Transport.

    ``bucket`` defaults to ``database`` (both ``p2es``).  ``ca_file``: for ``https://``, the CA
    certificate(s) InfluxDB's certificate must chain to (None: the system trust store); a bad
    file -> ``ValueError`` naming ``influx_ca_file``.
    """
    if version is None:
        version = 2 if (token or org) else 1
    https = url.startswith("https://")
    if version == 1:
        ctx = client_context(ca_file, options=("influx_ca_file", "", "")) if https else None
        return V1Transport(url, database, username, password, timeout, ssl_context=ctx)
    if version in (2, 3):
        if ca_file is not None:
            client_context(ca_file, options=("influx_ca_file", "", ""))  # the file loads (ValueError)
        return V2Transport(url, org or "", bucket or database, token or "", timeout, ca_file=ca_file)
    raise ValueError(f"unknown InfluxDB version {version!r} (1, 2 or 3)")


# ============================================================================ writer


@dataclass(slots=True)
class _Batch:
    seq: int
    payload: bytes
    lines: int
    source: str  # "mem" or "spool"
    pos: SpoolPos | None = None  # where a copy sits in the spool
    spooled: bool = False


def _nth_newline(text: str, n: int) -> int:
    """Index of the n-th '\\n' (n >= 1) in text."""
    i = -1
    for _ in range(n):
        i = text.index("\n", i + 1)
    return i


class Writer:
    """Batching, retrying, spooling InfluxDB writer; run :meth:`run` as an asyncio task::

        async with Writer(V1Transport("http://127.0.0.1:8086", "p2es"), "/var/spool/p2es") as w:
            await w.put(ecg_lines("bed-7", t0_ns, 128.0, ecg, start=first_sample_index))

    Use from one event loop (``put`` is not thread-safe).  See the module doc for the rules.
    """

    def __init__(
        self,
        transport: Transport,
        spool_dir: str | os.PathLike[str] | Spool,
        *,
        batch_lines: int = 5000,
        flush_interval: float = 1.0,
        max_queue_batches: int = 64,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 300.0,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_segment_bytes: int | None = None,
        dead_letter_path: str | os.PathLike[str] | None = None,
        retry_statuses: Collection[int] = (),
        rng: random.Random | None = None,
    ) -> None:
        if batch_lines < 1 or max_queue_batches < 1:
            raise ValueError("batch_lines and max_queue_batches must be >= 1")
        if flush_interval <= 0 or backoff_base <= 0 or backoff_cap < backoff_base:
            raise ValueError("need flush_interval > 0 and 0 < backoff_base <= backoff_cap")
        self.transport = transport
        self.spool = (
            spool_dir
            if isinstance(spool_dir, Spool)
            else Spool(spool_dir, max_bytes=spool_max_bytes, segment_bytes=spool_segment_bytes)
        )
        self.dead_letter_path = (
            Path(dead_letter_path) if dead_letter_path is not None else self.spool.dir / "dead-letter.lp"
        )
        self.batch_lines = int(batch_lines)
        self.flush_interval = float(flush_interval)
        self.max_queue_batches = int(max_queue_batches)
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.max_retry_after = float(max_retry_after)
        self.retry_statuses = frozenset(int(x) for x in retry_statuses)
        self._rng = rng or random.Random()

        self._pending: list[str] = []
        self._pending_lines = 0
        self._pending_since: float | None = None
        self._mem: deque[_Batch] = deque()
        self._inflight: _Batch | None = None
        self._seq = self.spool.max_tag() or 0  # batch numbers keep growing across restarts
        self._attempt = 0
        self.outage = False
        self._closing = False
        self._abort = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._abort_event = asyncio.Event()

        # counters
        self.points_accepted = 0
        self.points_written = 0
        self.batches_written = 0
        self.batches_retried = 0  # failed attempts that were (or will be) retried
        self.batches_spooled = 0
        self.batches_replayed = 0  # written from the spool
        self.dead_letters = 0
        self.dead_letter_points = 0
        self.batches_dropped = 0  # neither the spool (disk refused) nor memory could keep them
        self.points_dropped = 0
        self.spool_full = False  # batches are held in memory because the disk refused the spool
        self._dropping = False  # a drop streak is logged once
        self._full_logged_at: float | None = None  # monotonic time of the last "refused" ERROR line
        self._full_announced = False  # that ERROR line still waits for its "takes batches again"
        self.last_error: str | None = None

    # ------------------------------------------------------------------ public API
    @property
    def counters(self) -> dict[str, int]:
        """Snapshot of the counters (for Prometheus): monotonic totals and current gauges."""
        d = {
            "points_accepted": self.points_accepted,
            "points_written": self.points_written,
            "batches_written": self.batches_written,
            "batches_retried": self.batches_retried,
            "batches_spooled": self.batches_spooled,
            "batches_replayed": self.batches_replayed,
            "dead_letters": self.dead_letters,
            "dead_letter_points": self.dead_letter_points,
            "queue_batches": len(self._mem),
            "pending_points": self._pending_lines,
            "db_down": int(self.outage),
            "spool_full": int(self.spool_full),
            "batches_dropped": self.batches_dropped,
            "points_dropped": self.points_dropped,
        }
        d.update(self.spool.stats())
        return d

    def start(self) -> asyncio.Task[None]:
        """Create the writer task on the running loop (same as ``create_task(writer.run())``)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="p2es-sink-writer")
        return self._task

    async def __aenter__(self) -> Writer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def put_nowait(self, data: str | bytes | Point | Any) -> None:
        """Accept line protocol / points; never blocks (see :meth:`put`)."""
        if self._closing:
            raise WriterClosedError("the InfluxDB writer is closed")
        text = to_lines(data)
        if not text:
            return
        n = text.count("\n")
        self.points_accepted += n
        while n:
            room = self.batch_lines - self._pending_lines
            if n <= room:
                head, take, text = text, n, ""
            else:
                cut = _nth_newline(text, room)
                head, take, text = text[: cut + 1], room, text[cut + 1 :]
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(head)
            self._pending_lines += take
            n -= take
            if self._pending_lines >= self.batch_lines:
                self._seal()

    async def put(self, data: str | bytes | Point | Any) -> None:
        """Accept newline-separated line protocol, a :class:`Point`, or an iterable of either.

        Returns at once: the data joins the current batch; sealed batches wait in memory or,
        when the queue is full or the database is down, in the spool.
        """
        self.put_nowait(data)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything accepted so far is written (or dead-lettered).

        Raises ``TimeoutError`` after ``timeout`` seconds (the data stays queued/spooled) and
        ``RuntimeError`` if the writer task is not running while data is outstanding.
        """
        self._seal()
        target = self._seq
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._oldest_outstanding() <= target:
            if self._task is None or self._task.done():
                raise RuntimeError("the writer task is not running (call start() or run())")
            self._changed.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"InfluxDB writer: flush timed out with {self._describe()}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued for up to ``timeout`` s (none while the database is down),
        then persist the rest to the spool and release it.  Idempotent."""
        if self._closed:
            return
        self._closing = True
        self._seal()
        task = self._task
        try:
            if task is not None and not task.done():
                self._wake.set()
                if not self.outage:
                    try:
                        await asyncio.wait_for(asyncio.shield(task), timeout)
                    except TimeoutError:
                        pass
                if not task.done():
                    self._abort = True
                    self._abort_event.set()
                    self._wake.set()
                    # the sender stops after its current attempt (bounded by the transport timeout)
                    await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    log.error("InfluxDB writer task failed", exc_info=task.exception())
        finally:
            self._spill()
            self._requeue_inflight()
            left = self.spool.pending_records
            if self._mem:
                lost = sum(b.lines for b in self._mem)
                self.batches_dropped += len(self._mem)
                self.points_dropped += lost
                log.error(
                    "InfluxDB writer closed with %d batch(es), %d points that the spool %s could not take: lost",
                    len(self._mem),
                    lost,
                    self.spool.dir,
                )
                self._mem.clear()
            self.spool.close()
            try:
                self.transport.close()
            finally:
                self._closed = True
                self._changed.set()
            if left:
                log.warning(
                    "InfluxDB writer closed with %d batch(es) in the spool %s; "
                    "a new writer on it will deliver them",
                    left,
                    self.spool.dir,
                )

    # ------------------------------------------------------------------ batching
    def _describe(self) -> str:
        return (
            f"{self.spool.pending_records} spooled, {len(self._mem)} queued, "
            f"{'1' if self._inflight else '0'} in flight batch(es); last error: {self.last_error}"
        )

    def _oldest_outstanding(self) -> float:
        cands: list[int] = []
        h = self.spool.head_tag()
        if h is not None:
            cands.append(h)
        if self._inflight is not None:
            cands.append(self._inflight.seq)
        if self._mem:
            cands.append(self._mem[0].seq)
        return min(cands) if cands else math.inf

    def _seal(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        lines = self._pending_lines
        self._pending = []
        self._pending_lines = 0
        self._pending_since = None
        self._seq += 1
        self._enqueue(_Batch(self._seq, text.encode("utf-8"), lines, "mem"))

    def _enqueue(self, b: _Batch) -> None:
        if self._closed:
            raise WriterClosedError("the InfluxDB writer is closed")
        if self.outage or not self.spool.empty or len(self._mem) >= self.max_queue_batches:
            if not self.outage and self.spool.empty:
                log.warning(
                    "InfluxDB writer queue full (%d batches): spooling to %s", len(self._mem), self.spool.dir
                )
            if not self._spill() or not self._spool(b):  # the disk refused: memory, after the rest
                self._keep_in_memory(b)
        else:
            self._mem.append(b)
        self._wake.set()
        self._changed.set()

    def _spool(self, b: _Batch) -> bool:
        """Append ``b`` to the spool; False (and ``spool_full``) when the disk refuses it."""
        try:
            b.pos = self.spool.append(b.payload, b.seq)
        except SpoolWriteError as e:
            if not self.spool_full:
                self.spool_full = True
                now = time.monotonic()
                if self._full_logged_at is None or now - self._full_logged_at >= FULL_LOG_EVERY_S:
                    self._full_logged_at, self._full_announced = now, True
                    log.error(
                        "InfluxDB writer: the spool %s cannot be written (%s): keeping up to %d batches "
                        "in memory, dropping the oldest beyond that (p2es_spool_full = 1)",
                        self.spool.dir,
                        e.strerror,
                        self.max_queue_batches,
                    )
                else:
                    log.debug(
                        "InfluxDB writer: the spool %s is refused again (%s)", self.spool.dir, e.strerror
                    )
            return False
        b.spooled = True
        self.batches_spooled += 1
        return True

    def _spool_ok(self) -> None:
        """Nothing is held in memory for want of disk space any more: ``spool_full`` = 0."""
        if not self.spool_full:
            return
        self.spool_full = self._dropping = False
        if self._full_announced:
            self._full_announced = False
            log.warning(
                "InfluxDB writer: the spool %s takes batches again (%d batch(es), %d points dropped so far)",
                self.spool.dir,
                self.batches_dropped,
                self.points_dropped,
            )

    def _keep_in_memory(self, b: _Batch, *, first: bool = False) -> None:
        """The spool cannot take ``b``: keep it in memory (``first``: it is the oldest, e.g. a
        failed in-flight batch), bounded by ``max_queue_batches`` (oldest dropped, counted)."""
        if first:
            self._mem.appendleft(b)
        else:
            self._mem.append(b)
        while len(self._mem) > self.max_queue_batches:
            lost = self._mem.popleft()
            self.batches_dropped += 1
            self.points_dropped += lost.lines
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "InfluxDB writer: memory full too (%d batches) with the spool refused: dropping "
                    "the oldest batches (counted in p2es_points_dropped_total)",
                    self.max_queue_batches,
                )

    def _spill(self) -> bool:
        """Move the in-flight batch (if it came from memory) and the memory queue to the spool.

        Order is kept: the in-flight batch was taken from memory only while the spool was
        empty, and anything appended since went through here, after it.  When the disk refuses
        a batch, it and everything after it stay in memory (the in-flight batch is put back by
        the caller once its attempt is over: :meth:`_requeue_inflight`).  True when nothing
        older than a new batch is left outside the spool.
        """
        inf = self._inflight
        if inf is not None and inf.source == "mem" and not inf.spooled:
            if not self._spool(inf):
                return False
        while self._mem:
            if not self._spool(self._mem[0]):
                return False
            self._mem.popleft()
        self._spool_ok()
        return True

    def _requeue_inflight(self) -> None:
        """After a failed attempt: an in-flight batch from memory that the spool could not take
        goes back to the head of the memory queue (it is older than everything there)."""
        inf, self._inflight = self._inflight, None
        if inf is not None and inf.source == "mem" and not inf.spooled:
            self._keep_in_memory(inf, first=True)

    # ------------------------------------------------------------------ sending
    def _take(self) -> _Batch | None:
        if not self.spool.empty:
            rec = self.spool.peek()
            if rec is not None:
                return _Batch(rec.tag, rec.payload, rec.payload.count(b"\n"), "spool", rec.pos, spooled=True)
        if self._mem:
            return self._mem.popleft()
        return None

    async def run(self) -> None:
        """The writer loop; returns after :meth:`close`."""
        if self._task is None:
            self._task = asyncio.current_task()
        ticker = asyncio.get_running_loop().create_task(self._tick(), name="p2es-sink-ticker")
        try:
            while not self._abort:
                b = self._take()
                if b is None:
                    if self._closing:
                        return
                    self._wake.clear()
                    if not self.spool.empty or self._mem or self._closing or self._abort:
                        continue
                    await self._wake.wait()
                    continue
                await self._send(b)
                if self._closing and self.outage:
                    return  # closing while the database is down: the spool keeps the rest
        except asyncio.CancelledError:
            self._spill()  # an in-flight batch from memory must not be lost
            self._requeue_inflight()
            raise
        finally:
            ticker.cancel()
            self._changed.set()

    async def _send(self, b: _Batch) -> None:
        self._inflight = b
        err: WriteError
        try:
            await asyncio.to_thread(self.transport.write, b.payload)
        except PermanentWriteError as e:
            if e.status in self.retry_statuses:
                err = RetryableWriteError(str(e), status=e.status)
                return await self._retry_later(err)
            self._inflight = None
            self._dead_letter(b, e)
            if b.pos is not None:
                self.spool.ack(b.pos)
            self._recovered()
            return
        except RetryableWriteError as e:
            err = e
        except Exception as e:  # noqa: BLE001 - unknown failure: keep the data and retry
            log.exception("InfluxDB writer: unexpected error from %r", self.transport)
            err = RetryableWriteError(f"{type(e).__name__}: {e}")
        else:
            self._inflight = None
            if b.pos is not None:
                self.spool.ack(b.pos)
            self.points_written += b.lines
            self.batches_written += 1
            if b.source == "spool":
                self.batches_replayed += 1
            self._recovered()
            return
        await self._retry_later(err)

    async def _retry_later(self, err: WriteError) -> None:
        self.batches_retried += 1
        self.last_error = str(err)
        if not self.outage:
            log.warning("InfluxDB write failed (%s); spooling to %s and retrying", err, self.spool.dir)
            self.outage = True
        else:
            log.debug("InfluxDB write retry %d failed: %s", self._attempt, err)
        self._spill()
        self._requeue_inflight()
        self._changed.set()
        delay = self.backoff_delay(self._attempt, err.retry_after)
        self._attempt = min(self._attempt + 1, 60)
        if self._closing:
            return
        try:
            await asyncio.wait_for(self._abort_event.wait(), delay)
        except TimeoutError:
            pass

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): full jitter, at least Retry-After."""
        delay = self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2.0**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def _recovered(self) -> None:
        if self.outage:
            log.warning(
                "InfluxDB reachable again; replaying %d spooled batch(es)", self.spool.pending_records
            )
        self.outage = False
        self._attempt = 0
        if self.spool_full and self.spool.empty and not self._mem:
            self.spool_full = self._dropping = self._full_announced = False
            log.warning(
                "InfluxDB writer: everything kept in memory is written (%d batch(es), %d points dropped "
                "while the spool %s was refused); p2es_spool_full = 0",
                self.batches_dropped,
                self.points_dropped,
                self.spool.dir,
            )
        self._changed.set()

    def _dead_letter(self, b: _Batch, err: WriteError) -> None:
        reason = " ".join(str(err).split())
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        head = f"# p2es dead letter {stamp} status={err.status} lines={b.lines} reason={reason}\n"
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter_path, "ab") as f:
            f.write(head.encode("utf-8"))
            f.write(b.payload if b.payload.endswith(b"\n") else b.payload + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.dead_letters += 1
        self.dead_letter_points += b.lines
        self.last_error = reason
        log.error(
            "InfluxDB rejected a batch of %d line(s) for good (%s); kept in %s",
            b.lines,
            reason,
            self.dead_letter_path,
        )

    async def _tick(self) -> None:
        period = max(0.01, min(self.flush_interval / 2, 0.25))
        while True:
            await asyncio.sleep(period)
            try:
                if (
                    self._pending
                    and self._pending_since is not None
                    and time.monotonic() - self._pending_since >= self.flush_interval
                ):
                    self._seal()
                if self.spool.dirty:
                    await asyncio.to_thread(self.spool.sync)
            except Exception:  # noqa: BLE001 - keep ticking; the next tick tries again
                log.exception("InfluxDB writer: periodic seal/fsync failed")
