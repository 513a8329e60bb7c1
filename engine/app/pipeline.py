"""The live pipeline: MQTT ingest -> micro-batched reconstruction -> stitching -> InfluxDB.

::

    pipe = Pipeline(PipelineConfig(broker="mqtt://127.0.0.1:1883", influx_url="http://127.0.0.1:8086"))
    await pipe.start()
    ...
    await pipe.stop()          # flushes stitchers and the writer; nothing accepted is lost

Data flow per window (one asyncio event loop):

* :class:`ingest.service.IngestService` emits :class:`p2es.contracts.ppg.Window` (already band-passed
  and resampled to the model rate; no extra filter is added here).
* Each window becomes a :class:`engine.serve.runtime.WindowRequest` and is submitted to the
  :class:`engine.serve.runtime.MicroBatcher` at once (windows of all patients are batched together).
* Results of one patient are consumed strictly in window order by a per-patient task, fed to
  that patient's :class:`engine.serve.runtime.PatientStitcher` (hop = ``hop_s * fs``), and written:

  - ``ecg``: every stitched sample exactly once;
  - ``ppg``: the window samples covering the same span (each window's first hop; the rest of
    the last window when a segment ends or at shutdown), each sample once;
  - ``vitals``: one point per window (at the window start).

  Timestamps: a stitcher (one per patient *segment*) converts its first window's ``t0`` to
  integer ns once; every block is written with ``start = sample index``, so all samples sit on
  one exact ``1/fs`` grid (see :func:`sink.lineprotocol.sample_times_ns`).  A new ingest
  segment (long gap, rate change, seq reset) flushes the old stitcher and starts a new one.

``influx_url=None`` runs without a sink (results go to ``stats()`` and to ``on_ecg`` /
``on_vitals`` callbacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from engine.app.metrics_http import PipelineMetrics
from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from engine.serve.backends import make_backend
from engine.serve.runtime import (
    Backend,
    EcgChunk,
    MicroBatcher,
    PatientStitcher,
    WindowResult,
    request_from_window,
    window_vitals,
)
from ingest.journal import Journal
from ingest.service import IngestService
from ingest.stream import StreamConfig
from p2es.contracts.influx import PIPELINE
from p2es.contracts.ppg import Window
from p2es.contracts.topics import vitals_topic
from p2es.contracts.vitals import Vitals
from p2es.errors import P2esError
from p2es.transport.settings import ServiceSettings, bus_tls_context, check_bus_tls
from sink.lineprotocol import ecg_lines, line, ppg_lines, sample_times_ns, vitals_line
from sink.writer import Writer

if TYPE_CHECKING:
    import ssl

    from ingest.bus import BusIngestService

log = logging.getLogger("p2es.pipeline")

__all__ = ["PipelineConfig", "Pipeline"]


class PipelineConfig(ServiceSettings):
    """Everything ``p2es run`` needs: the broker/InfluxDB/secrets of
    :class:`p2es.transport.settings.ServiceSettings` plus the engine's own settings."""

    client_id: str = "p2es-engine"
    window_s: float = Field(8.0, gt=0)
    hop_s: float = Field(4.0, gt=0)
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = (
        "auto"  # engine.serve.backends: tensorrt on CUDA if it imports, onnxruntime on CPU if installed, else torch
    )
    engine_cache_dir: str | None = None  # ONNX/TensorRT cache (None: $P2ES_CACHE_DIR or ~/.cache/p2es)
    device: str = "cpu"
    steps: int = Field(10, ge=1)
    k: int = Field(4, ge=1)
    seed: int = 0
    threads: int | None = None
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(50.0, ge=0)
    checkpoint: str | None = None
    spool_dir: str = ".run/spool"
    # accepted chunks on disk (ingest.journal): a restarted engine rebuilds each patient's stream
    # from its last replay_s seconds instead of leaving a gap (single-broker mode; the bus replays
    # from JetStream).  None: <spool_dir>/journal/<client_id>
    journal: bool = True
    journal_dir: str | None = None
    # ... and after a longer outage starts empty: old windows would come back as news
    journal_max_age_s: float = Field(600.0, gt=0)
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    writer_batch_lines: int = Field(5000, ge=1)
    writer_backoff_cap_s: float = Field(30.0, gt=0)
    stream_reorder_wait_s: float = Field(2.0, gt=0)
    # chunks whose device time is off their receive time by more: dead letter `clock_skew`
    max_clock_skew_s: float | None = Field(1800.0, gt=0)
    # per-patient budget (ingest.fairness, docs/operations.md "Per-patient budget"); None or 0: off.
    # Off by default: a time-lapse simulator (p2es simulate --speed 40) and a broker backlog
    # after an engine restart are floods by this measure.  Recommended: factor 4, 20 messages/s.
    # samples/s allowed as a multiple of the declared fs, plus a burst of burst_s of signal (>= 10 s)
    rate_limit_factor: float | None = Field(None, ge=0, allow_inf_nan=False)
    rate_limit_burst_s: float = Field(10.0, ge=10, allow_inf_nan=False)
    # messages/s allowed per patient (checked before parsing), plus a burst of msgs_burst messages
    rate_limit_msgs_per_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    rate_limit_msgs_burst: int = Field(100, ge=1)
    max_inflight: int = Field(256, ge=1)  # windows submitted but not yet written (back-pressure)
    idle_flush_s: float = Field(20.0, gt=0)  # flush a patient's stitcher after this long silent
    publish_vitals: bool = True  # vitals JSON on p2es/v1/patients/{id}/vitals (alerts consume it)
    health_interval_s: float = Field(10.0, ge=0)  # `pipeline` measurement every N s (0 = off)
    # scale-out mode (docs/scaling.md): PPG from NATS JetStream, patients partitioned across workers
    bus: str | None = None  # nats://h1:4222,h2:4222,... (None: the single MQTT broker of `broker`)
    shards: int = Field(128, ge=1, le=4096)  # fixed for a deployment: changing it moves every patient
    bus_replicas: int = Field(3, ge=1, le=5)  # replicas of the streams and the membership bucket
    bus_max_age_s: float = Field(120.0, gt=0)  # how long the stream keeps PPG (>= replay + failover)
    replay_s: float | None = Field(None, gt=0)  # replayed on takeover (None: window_s + 2 * hop_s)
    member_ttl_s: float = Field(2.0, gt=0)  # a worker silent this long is dead (membership TTL)
    # ... and missing from the bucket this much longer (None: member_ttl_s / 2): one partial read
    # of the bucket must not make a worker believe it is alone (p2es.transport.nats.LiveSet)
    member_grace_s: float | None = Field(None, ge=0)
    # tls:// bus (or nats:// with one of these): the CA of the NATS servers' certificates (None:
    # the system trust store), a client certificate + key for listeners with `verify` (deploy/tls.md)
    bus_ca_file: str | None = None
    bus_cert_file: str | None = None
    bus_key_file: str | None = None

    @field_validator("bus")
    @classmethod
    def _bus_url(cls, v: str | None) -> str | None:
        if v is None or v.lower() == "none":
            return None
        from p2es.transport.nats import parse_bus_url  # lazy: optional dependency nats-py (only --bus)

        parse_bus_url(v)  # ValueError -> one line
        return v

    @model_validator(mode="after")
    def _window_checks(self) -> PipelineConfig:
        if self.hop_s > self.window_s:
            raise ValueError("hop_s must be <= window_s")
        if self.bus and self.bus_max_age_s < self.effective_replay_s + 2 * self.member_ttl_s:
            raise ValueError("bus_max_age_s must be >= replay_s + 2 * member_ttl_s")
        self.bus_tls_context()  # bus TLS files load, and only with a bus (ValueError)
        return self

    def bus_tls_context(self) -> ssl.SSLContext | None:
        """The bus's verifying TLS context (None for a plain nats:// bus)."""
        return bus_tls_context(self.bus, self.bus_ca_file, self.bus_cert_file, self.bus_key_file)

    async def check_tls(self) -> None:
        """The broker's and InfluxDB's start-up check, and every NATS node of a TLS bus."""
        await super().check_tls()
        ctx = self.bus_tls_context()
        if self.bus and ctx is not None:
            await check_bus_tls(self.bus, ctx, ca_file=self.bus_ca_file)

    @property
    def effective_replay_s(self) -> float:
        """Seconds of a patient's PPG a new shard owner (bus mode) or a restarted engine (the
        journal) replays before its handover point: the previous owner's last written ECG lags
        its acknowledged chunks by up to a window and a hop plus latency."""
        return self.replay_s if self.replay_s is not None else self.window_s + 2 * self.hop_s


#: what a patient's task takes from its queue: (window, its result to come, whether it holds an
#: in-flight slot), "flush" (idle: flush the stitcher) or None (end: flush and exit)
_Item = tuple[Window, "asyncio.Future[WindowResult]", bool] | Literal["flush"] | None


@dataclass
class _PatientState:
    patient: str
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)  # (Window, Task) in order
    task: asyncio.Task[None] | None = None
    stitcher: PatientStitcher | None = None
    segment: int | None = None
    t0_ns: int = 0
    t_ref: float = 0.0
    ppg_emitted: int = 0  # next PPG sample index (stitcher grid) not yet written
    last_win: tuple[int, np.ndarray] | None = None  # (start index, samples) of the last window
    windows: int = 0
    ecg_samples: int = 0
    ppg_samples: int = 0
    vitals: int = 0
    hr_ppg: float = math.nan
    hr_ecg: float = math.nan
    sqi: float = math.nan
    last_device_end: float | None = None  # device time just after the last emitted ECG sample
    errors: int = 0
    last_window_mono: float = 0.0
    flushed: bool = True  # nothing held in the stitcher since the last (idle) flush


class Pipeline:
    """Ingest -> engine -> sink (see the module docstring)."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        backend: Backend | None = None,
        on_ecg: Callable[[EcgChunk], None] | None = None,
        on_vitals: Callable[[Vitals], None] | None = None,
    ) -> None:
        self.config = config
        self.on_ecg, self.on_vitals = on_ecg, on_vitals
        self._backend = backend
        self.ingest: IngestService | BusIngestService = None  # type: ignore[assignment]  # set by start(); stats() copes before
        self.batcher: MicroBatcher = None  # type: ignore[assignment]  # set by start(); stats() copes before
        self.writer: Writer | None = None
        self.metrics: PipelineMetrics | None = None
        self._patients: dict[str, _PatientState] = {}
        self._released: set[asyncio.Task[None]] = set()  # tasks of patients handed to another worker
        self._tasks: list[asyncio.Task[None]] = []
        self._started_mono: float | None = None
        self._running = False
        self._windows_done = 0
        self._held: Window | None = None
        self._batch_sizes: deque[int] = deque(maxlen=1000)
        self._lat: dict[str, deque[float]] = {
            k: deque(maxlen=1000) for k in ("queue", "compute", "sink", "e2e")
        }
        self.fs = 128.0
        self.T = 1024
        self._vitals_q: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        self._vitals_dropped = 0  # vitals messages dropped because the publisher queue was full
        self._vitals_failed = 0  # vitals messages the broker did not take (not connected / error)
        self._rate_mark: tuple[float, int] | None = None  # (time, windows) at the last health point

    # ------------------------------------------------------------------ lifecycle
    def _make_backend(self) -> Backend:
        path = self.config.checkpoint or str(DEFAULT_CHECKPOINT)
        if not Path(path).exists():
            raise P2esError(f"checkpoint not found: {path}")
        try:
            entry = load_model(path, "p2es")
        except KeyError as e:
            raise P2esError(f"checkpoint {path} holds no 'p2es' model") from e
        return make_backend(
            self.config.backend,
            entry,
            device=self.config.device,
            steps=self.config.steps,
            k=self.config.k,
            seed=self.config.seed,
            threads=self.config.threads,
            max_batch=self.config.max_batch,
            cache_dir=self.config.engine_cache_dir,
        )

    async def start_connected(self, broker: str, timeout_s: float = 15.0) -> None:
        """:meth:`start`, then wait until the ingest is subscribed (so that nothing published
        from now on is missed); a bad setting or no connection -> one-line P2esError."""
        try:
            await self.start()
        except ValueError as e:
            raise P2esError(str(e)) from None
        assert self.ingest is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.ingest.connected.wait()), timeout_s)
        if not self.ingest.connected.is_set():
            raise P2esError(f"ingest could not connect to {broker}")

    async def start(self) -> None:
        cfg = self.config
        await cfg.check_tls()  # a certificate that does not verify: one line, before anything starts
        if self._backend is None:
            self._backend = self._make_backend()
        self.fs = float(getattr(self._backend, "fs", 128.0))
        self.T = int(getattr(self._backend, "T", round(cfg.window_s * self.fs)))
        if int(round(cfg.window_s * self.fs)) != self.T:
            raise P2esError(
                f"window_s={cfg.window_s:g} gives {round(cfg.window_s * self.fs)} samples "
                f"at {self.fs:g} Hz but the model takes T={self.T}"
            )
        self.hop = int(round(cfg.hop_s * self.fs))
        stream_config = StreamConfig(
            fs_model=self.fs,
            window_s=cfg.window_s,
            hop_s=cfg.hop_s,
            reorder_wait_s=cfg.stream_reorder_wait_s,
            max_clock_skew_s=cfg.max_clock_skew_s,
            rate_limit_factor=cfg.rate_limit_factor or None,
            rate_limit_burst_s=cfg.rate_limit_burst_s,
            rate_limit_msgs_per_s=cfg.rate_limit_msgs_per_s or None,
            rate_limit_msgs_burst=cfg.rate_limit_msgs_burst,
        )
        if cfg.bus:
            self.ingest = self._bus_ingest(stream_config)
        else:
            self.ingest = self._mqtt_ingest(stream_config)
        self.batcher = MicroBatcher(self._backend, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms)
        if cfg.metrics_port:
            self.metrics = PipelineMetrics(self)
            try:
                self.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
            except OSError as e:
                raise P2esError(
                    f"cannot serve metrics on {cfg.metrics_addr}:{cfg.metrics_port}: {e.strerror or e}"
                ) from None
        if cfg.influx_url:
            self.writer = cfg.influx_writer(
                cfg.spool_dir,
                batch_lines=cfg.writer_batch_lines,
                backoff_cap_s=max(cfg.writer_backoff_cap_s, 0.5),
            )
            self.writer.start()
        self._started_mono = time.monotonic()
        self._running = True
        self._inflight = asyncio.Semaphore(cfg.max_inflight)
        self._tasks = [
            asyncio.create_task(self.batcher.run(), name="p2es-batcher"),
            asyncio.create_task(self._consume(), name="p2es-consume"),
            asyncio.create_task(self._housekeeping(), name="p2es-housekeeping"),
        ]
        if cfg.publish_vitals:
            self._tasks.append(asyncio.create_task(self._publish_vitals(), name="p2es-vitals-publisher"))
        self.ingest.start()

    def _mqtt_ingest(self, stream_config: StreamConfig) -> IngestService:
        cfg = self.config
        return IngestService(
            cfg.broker,
            username=cfg.mqtt_username,
            password=cfg.mqtt_password,
            client_id=cfg.client_id,
            mqtt_version=cfg.mqtt_version,
            stream_config=stream_config,
            tls_context=cfg.mqtt_tls_context(),  # mqtts://: verifying (p2es.transport.tls)
            journal=self._journal(),
            replay_s=cfg.effective_replay_s,
            replay_max_age_s=cfg.journal_max_age_s,
        )

    def _journal(self) -> Journal | None:
        cfg = self.config
        if not cfg.journal:
            return None
        # one journal per MQTT session (client id): the broker continues that session's stream,
        # and engines sharing a spool directory must not rebuild each other's patients
        session = re.sub(r"[^A-Za-z0-9._-]", "_", cfg.client_id) or "_"
        where = Path(cfg.journal_dir) if cfg.journal_dir else Path(cfg.spool_dir) / "journal" / session
        try:  # kept: replay_s + the reorder budget + one file, so a replay always finds its span
            return Journal(where, segment_s=cfg.hop_s, retain_s=cfg.effective_replay_s + 2 * cfg.hop_s + 10)
        except OSError as e:
            raise P2esError(f"cannot use the journal directory {where}: {e.strerror or e}") from None

    def _bus_ingest(self, stream_config: StreamConfig) -> BusIngestService:
        """Scale-out mode: this worker's share of the patients, from NATS JetStream."""
        from ingest.bus import BusIngestService  # lazy: optional dependency nats-py (only p2es run --bus)
        from p2es.transport.nats import BusLayout, parse_bus_url  # lazy: optional dependency nats-py

        cfg = self.config
        assert cfg.bus is not None
        layout = BusLayout(shards=cfg.shards, replicas=cfg.bus_replicas, max_age_s=cfg.bus_max_age_s)
        # a chunk whose delivery was lost with a NATS node comes again after the consumer's ack
        # wait: the per-patient re-order window must outwait it, or the chunk arrives "late"
        stream_config = dataclasses.replace(
            stream_config, reorder_wait_s=max(stream_config.reorder_wait_s, 2 * layout.ack_wait_s + 0.5)
        )
        worker = cfg.client_id if cfg.client_id != "p2es-engine" else new_client_id()
        svc = BusIngestService(
            parse_bus_url(cfg.bus),
            layout,
            worker_id=worker,
            username=cfg.mqtt_username,
            password=cfg.mqtt_password,
            stream_config=stream_config,
            member_ttl_s=cfg.member_ttl_s,
            member_grace_s=cfg.member_grace_s,
            heartbeat_s=min(0.5, cfg.member_ttl_s / 4),
            replay_s=cfg.effective_replay_s,
            tls_context=cfg.bus_tls_context(),  # tls://: verifying, TLS first (p2es.transport.tls)
        )
        svc.on_release = self._release_patients
        return svc

    def _release_patients(self, patients: list[str]) -> None:
        """Patients handed over to another worker (scale-out mode): finish their windows in
        flight, flush their stitchers and forget them (their new owner replays their recent
        signal, and any overlap is re-written at the same timestamps)."""
        for pid in patients:
            st = self._patients.pop(pid, None)
            if st is not None and st.task is not None:
                st.queue.put_nowait(None)
                self._released.add(st.task)
                st.task.add_done_callback(self._released.discard)

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop ingest, finish every accepted window, flush the stitchers and the writer."""
        if not self._running:
            return
        self._running = False
        # vitals already queued still go out while the connection is up (bounded wait); those of
        # windows finished after ingest has stopped are in InfluxDB only
        deadline = time.monotonic() + min(5.0, timeout)
        while self._vitals_q.qsize() and self.ingest.connected.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.ingest.stop()
        for t in self._tasks[1:]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._held is not None:  # taken from ingest, waiting for room in the engine
            self._dispatch(self._held, acquired=False)
            self._held = None
        while True:  # windows already queued by ingest are still processed
            try:
                self._dispatch(self.ingest.windows.get_nowait(), acquired=False)
            except asyncio.QueueEmpty:
                break
        for st in self._patients.values():
            st.queue.put_nowait(None)  # end marker: the consumer flushes and exits
        pts = [st.task for st in self._patients.values() if st.task is not None] + list(self._released)
        if pts:
            done, pending = await asyncio.wait(pts, timeout=timeout)
            for t in pending:
                t.cancel()
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[0]
        if self.writer is not None:
            await self.writer.close(timeout=timeout)
        if self.metrics is not None:
            self.metrics.shutdown()

    # ------------------------------------------------------------------ per window
    async def _consume(self) -> None:
        while True:
            w = await self.ingest.windows.get()
            # back-pressure: while max_inflight windows are in the engine, ingest's bounded queue
            # fills (and drops its oldest windows) instead of memory growing here
            self._held = w
            await self._inflight.acquire()
            self._held = None
            self._dispatch(w)

    def _queue_vitals(self, topic: str, payload: str) -> None:
        """Hand a vitals message to the publisher task: a slow broker must never hold up
        stitching and the sink.  Bounded: when full, the oldest message is dropped (counted)."""
        q = self._vitals_q
        if q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
                self._vitals_dropped += 1
        q.put_nowait((topic, payload))

    async def _publish_vitals(self) -> None:
        """QoS 1 publisher of the vitals messages, in order, on the ingest's connection."""
        while True:
            topic, payload = await self._vitals_q.get()
            if not await self.ingest.publish(topic, payload, qos=1):
                self._vitals_failed += 1

    async def _housekeeping(self) -> None:
        """Flush the stitcher of a patient that has sent nothing for ``idle_flush_s``; write
        the ``pipeline`` health point every ``health_interval_s``."""
        next_health = time.monotonic() + self.config.health_interval_s
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.config.health_interval_s and now >= next_health and self.writer is not None:
                next_health = now + self.config.health_interval_s
                try:
                    await self.writer.put(self.health_line())
                except Exception:  # noqa: BLE001 - health reporting must never stop the pipeline
                    log.exception("could not write the pipeline health point")
            for st in self._patients.values():
                if not st.flushed and now - st.last_window_mono > self.config.idle_flush_s:
                    st.flushed = True
                    st.queue.put_nowait("flush")

    def _dispatch(self, w: Window, acquired: bool = True) -> None:
        st = self._patients.get(w.patient)
        if st is None:
            st = self._patients[w.patient] = _PatientState(w.patient)
            st.task = asyncio.create_task(self._patient_loop(st), name=f"p2es-patient:{w.patient}")
        req = request_from_window(w)
        st.last_window_mono = time.monotonic()
        st.flushed = False
        st.queue.put_nowait((w, asyncio.ensure_future(self.batcher.submit(req)), acquired))

    async def _patient_loop(self, st: _PatientState) -> None:
        while True:
            item = await st.queue.get()
            if item is None:
                await self._finish_segment(st)
                return
            if item == "flush":
                try:
                    await self._finish_segment(st)
                except Exception:  # noqa: BLE001 - a failed idle flush must not stop the patient
                    log.exception("idle flush failed for %s", st.patient)
                    st.errors += 1
                continue
            w, fut, acquired = item
            try:
                res = await fut
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one failed batch must not stop the patient
                log.exception("reconstruction failed for %s window %d", w.patient, w.index)
                st.errors += 1
                res = None
            try:
                if res is not None:
                    await self._on_result(st, w, res)
            except Exception:  # noqa: BLE001 - one window's post-processing must not stop the patient
                log.exception("post-processing failed for %s window %d", w.patient, w.index)
                st.errors += 1
            finally:
                if acquired:
                    self._inflight.release()

    async def _finish_segment(self, st: _PatientState) -> None:
        if st.stitcher is None:
            return
        chunks = st.stitcher.flush()
        await self._emit_ppg(st, until=None)
        await self._emit_ecg(st, chunks)

    async def _on_result(self, st: _PatientState, w: Window, res: WindowResult) -> None:
        if st.stitcher is None or w.segment != st.segment:
            await self._finish_segment(st)
            st.stitcher = PatientStitcher(st.patient, self.T, self.fs, self.hop)
            st.segment = w.segment
            st.t_ref = float(w.t0)
            st.t0_ns = int(round(st.t_ref * 1e9))
            st.ppg_emitted, st.last_win = 0, None
        s = int(round((float(w.t0) - st.t_ref) * self.fs))
        chunks = st.stitcher.add(float(w.t0), res.ecg, res.std)
        # PPG: what the previous window left before this one starts, then this window's first hop
        await self._emit_ppg(st, until=s)
        st.last_win = (s, np.asarray(w.samples))
        await self._emit_ppg(st, until=s + self.hop)
        await self._emit_ecg(st, chunks)
        try:
            v = window_vitals(res)
        except Exception:  # noqa: BLE001 - vitals of a garbage window are just missing
            v = None
        st.windows += 1
        st.sqi = float(w.sqi)
        self._windows_done += 1
        self._batch_sizes.append(res.batch_size)
        self._lat["queue"].append(res.queued_s)
        self._lat["compute"].append(res.compute_s)
        if self.metrics is not None:
            self.metrics.observe_window(res)
        if v is not None:
            st.hr_ppg = math.nan if v.hr_ppg_bpm is None else v.hr_ppg_bpm
            st.hr_ecg = math.nan if v.hr_bpm is None else v.hr_bpm
            fields = v.metrics()
            t_ns = int(sample_times_ns(st.t0_ns, self.fs, 1, s)[0])
            if self.writer is not None:
                ln = vitals_line(st.patient, t_ns, fields)
                if ln:
                    st.vitals += 1
                    await self.writer.put(ln)
            else:
                st.vitals += 1
            if self.config.publish_vitals:
                self._queue_vitals(vitals_topic(st.patient, prefix=self.ingest.prefix), v.to_json())
            if self.on_vitals is not None:
                self.on_vitals(v)
        e2e = time.time() - float(w.created_at)
        self._lat["e2e"].append(e2e)
        if self.metrics is not None:
            self.metrics.observe_e2e(e2e)

    async def _emit_ppg(self, st: _PatientState, until: int | None) -> None:
        if st.last_win is None:
            return
        s, x = st.last_win
        lo = max(st.ppg_emitted, s)
        hi = s + x.size if until is None else min(until, s + x.size)
        if hi <= lo:
            return
        if self.writer is not None:
            await self.writer.put(ppg_lines(st.patient, st.t0_ns, self.fs, x[lo - s : hi - s], start=lo))
        st.ppg_samples += hi - lo
        st.ppg_emitted = hi

    async def _emit_ecg(self, st: _PatientState, chunks: list[EcgChunk]) -> None:
        t_sink = time.monotonic()
        for c in chunks:
            n = c.ecg.shape[1]
            if n == 0:
                continue
            start = int(round((c.t0 - st.t_ref) * self.fs))
            if self.writer is not None:
                await self.writer.put(ecg_lines(st.patient, st.t0_ns, self.fs, c.ecg, start=start))
            st.ecg_samples += n
            st.last_device_end = st.t_ref + (start + n) / self.fs
            if self.on_ecg is not None:
                self.on_ecg(c)
        if chunks:
            dt = time.monotonic() - t_sink
            self._lat["sink"].append(dt)
            if self.metrics is not None:
                self.metrics.observe_stage("sink", dt)

    # ------------------------------------------------------------------ stats
    def health_fields(self) -> dict[str, float | int]:
        """One snapshot of pipeline health (the ``pipeline`` measurement; see the README)."""
        s = self.stats()
        ing, wr, lat = s["ingest"], s["writer"], s["latency_s"]
        now = time.monotonic()
        active = sum(1 for st in self._patients.values() if now - st.last_window_mono < 30.0)
        jn = ing.get("journal") or {}
        jr = jn.get("replayed") or {}
        return {
            "windows_total": int(s["windows"]),
            "windows_per_s": float(self._recent_rate(now)),
            "patients_active": int(active),
            "batch_size_mean": float(s["batch_size_mean"]),
            "queue_ingest": int(s["queue_depth"]["ingest"]),
            "queue_batcher": int(s["queue_depth"]["batcher"]),
            "latency_e2e_p50_s": float(lat["e2e"]["p50"]),
            "latency_e2e_p95_s": float(lat["e2e"]["p95"]),
            "latency_compute_p50_s": float(lat["compute"]["p50"]),
            "latency_queue_p50_s": float(lat["queue"]["p50"]),
            "messages_in_total": int(ing.get("messages_in", 0)),
            "deadletters_total": int(ing.get("invalid_total", 0)),
            "windows_dropped_total": int(ing.get("windows_dropped", 0)),
            "points_written_total": int(wr.get("points_written", 0)),
            "sink_deadletter_batches_total": int(wr.get("dead_letters", 0)),
            "spool_batches": int(wr.get("spool_records", 0) or 0),
            "spool_bytes": int(wr.get("spool_bytes", 0) or 0),
            "influx_down": int(wr.get("db_down", 0) or 0),
            "errors_total": int(sum(st.errors for st in self._patients.values())),
            "vitals_mqtt_dropped_total": int(self._vitals_dropped),
            "vitals_mqtt_failed_total": int(self._vitals_failed),
            # the start-up rebuild from the ingest journal (single-broker mode): patients whose
            # streams were rebuilt, and the shortest span rebuilt (>= 2 hops + a chunk: no gap)
            "journal_rebuilt_patients": int(jr.get("patients", 0)),
            "journal_rebuilt_s_min": float(jr.get("rebuilt_s_min", 0.0)),
            "journal_errors_total": int(jn.get("errors", 0)),
        }

    def _recent_rate(self, now: float) -> float:
        """Windows per second over the last health interval (whole uptime for the first)."""
        prev, self._rate_mark = self._rate_mark, (now, self._windows_done)
        if prev is None:
            up = now - (self._started_mono or now)
            return self._windows_done / up if up > 0 else 0.0
        dt = now - prev[0]
        return (self._windows_done - prev[1]) / dt if dt > 0 else 0.0

    def health_line(self, time_ns: int | None = None) -> str:
        t = time.time_ns() if time_ns is None else int(time_ns)
        fields = self.health_fields()
        PIPELINE.check_fields(fields)
        return line(PIPELINE.name, {"instance": self.config.client_id}, fields, t) + "\n"

    def stats(self) -> dict[str, Any]:
        now = time.time()
        up = (time.monotonic() - self._started_mono) if self._started_mono else 0.0

        def pct(xs: deque[float]) -> dict[str, float]:
            if not xs:
                return {"p50": math.nan, "p95": math.nan, "max": math.nan}
            a = np.asarray(xs)
            return {
                "p50": float(np.percentile(a, 50)),
                "p95": float(np.percentile(a, 95)),
                "max": float(a.max()),
            }

        patients = {
            p: {
                "windows": st.windows,
                "ecg_samples": st.ecg_samples,
                "ppg_samples": st.ppg_samples,
                "vitals": st.vitals,
                "hr_ppg_bpm": st.hr_ppg,
                "hr_ecg_bpm": st.hr_ecg,
                "sqi": st.sqi,
                "lag_s": (now - st.last_device_end) if st.last_device_end is not None else math.nan,
                "segment": st.segment,
                "pending": st.queue.qsize(),
                "errors": st.errors,
            }
            for p, st in self._patients.items()
        }
        bs = list(self._batch_sizes)
        return {
            "patients": patients,
            "windows": self._windows_done,
            "windows_per_s": self._windows_done / up if up > 0 else 0.0,
            "batch_size_mean": float(np.mean(bs)) if bs else math.nan,
            "batch_size_max": max(bs) if bs else 0,
            "queue_depth": {
                "ingest": self.ingest.windows.qsize() if self.ingest else 0,
                "batcher": self.batcher.queue.qsize() if self.batcher else 0,
            },
            "latency_s": {k: pct(v) for k, v in self._lat.items()},
            "ingest": self.ingest.counters() if self.ingest else {},
            "writer": self.writer.counters if self.writer is not None else {},
            "vitals_mqtt": {
                "queued": self._vitals_q.qsize(),
                "dropped": self._vitals_dropped,
                "failed": self._vitals_failed,
            },
        }


def new_client_id(prefix: str = "p2es-engine") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class DrainWatch:
    """When a live run with simulated wearables is over: once the simulator has finished, done
    when every expected window is in (``complete``), or nothing moved for ``quiet_s`` while
    nothing was in flight, or ``max_s`` after the simulator finished.  Used by the demo and the
    bench (their thresholds differ)."""

    def __init__(self, quiet_s: float, max_s: float) -> None:
        self.quiet_s, self.max_s = float(quiet_s), float(max_s)
        self.t_sim_done: float | None = None  # when the simulator finished
        self._t_quiet = 0.0  # when the window count last moved (set before its first use)
        self._last = -1

    def done(self, sim_task: asyncio.Task[Any], stats: dict[str, Any], now: float, *, complete: bool) -> bool:
        if not sim_task.done():
            return False
        if sim_task.exception() is not None:
            raise P2esError(f"simulated wearables failed: {sim_task.exception()}")
        self.t_sim_done = self.t_sim_done or now
        if stats["windows"] != self._last or is_busy(stats):
            self._last, self._t_quiet = stats["windows"], now
        return complete or now - self._t_quiet > self.quiet_s or now - self.t_sim_done > self.max_s


def is_busy(stats: dict[str, Any]) -> bool:
    """True while work is still in flight: windows queued in ingest or the batcher, or
    windows taken but not yet stitched (``stats`` is :meth:`Pipeline.stats`)."""
    return bool(
        stats["queue_depth"]["ingest"]
        or stats["queue_depth"]["batcher"]
        or any(v["pending"] for v in stats["patients"].values())
        or stats.get("vitals_mqtt", {}).get("queued")
    )
