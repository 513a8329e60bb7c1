"""Prometheus metrics of the live pipeline, served over HTTP (``/metrics``).

Own registry per pipeline (several pipelines in one process, e.g. tests, do not collide).
Counters kept by the ingest service and the writer are read at scrape time by a collector;
histograms are observed by the pipeline as results arrive.

=====================================  =========  =============================================
metric                                 type       meaning
=====================================  =========  =============================================
p2es_messages_in_total                 counter    MQTT messages received
p2es_messages_invalid_total{reason}    counter    dead-lettered messages by reason code
p2es_windows_total                     counter    windows reconstructed
p2es_windows_dropped_total             counter    windows dropped by ingest back-pressure
p2es_messages_valid_total{kind}        counter    messages that passed validation: ppg_json, ppg_bin, profile
p2es_stream_events_total{event}        counter    per-patient streams (ingest.stream): chunks_in, chunks_used,
                                                  duplicates, late, overlaps_dropped, seq_resets, rate_changes, ...
p2es_batch_size                        histogram  windows per backend batch
p2es_queue_depth{queue}                gauge      ingest window queue / batcher queue
p2es_stage_latency_seconds{stage}      histogram  queue (wait for a batch), compute, sink
p2es_e2e_latency_seconds               histogram  window created by ingest -> written
p2es_spool_bytes / p2es_spool_batches  gauge      writer spool size (InfluxDB unreachable)
p2es_points_written_total              counter    points written to InfluxDB
p2es_influx_down                       gauge      1 while the writer considers InfluxDB down
p2es_spool_full                        gauge      1 while the disk refuses the spool (batches kept in memory)
p2es_points_dropped_total              counter    points neither the spool nor memory could keep
p2es_mqtt_connected                    gauge      1 while the ingest is connected
p2es_patients_rate_limited             gauge      patients over their budget now (ingest.fairness)
p2es_samples_rate_limited_total        counter    samples refused by the per-patient budget
p2es_bus_shards_owned                  gauge      scale-out mode: shards this worker holds (pinned)
p2es_bus_shard_owned{shard}            gauge      1 for each shard this worker holds
p2es_bus_workers_live                  gauge      workers in the membership bucket
p2es_bus_shards_acquired_total         counter    shards taken over (failover, rebalance, start)
p2es_bus_shards_released_total         counter    shards handed over
p2es_bus_replayed_messages_total       counter    PPG chunks replayed on takeover
=====================================  =========  =============================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from p2es.transport.metrics import MetricsServer, counter, gauge, labelled

if TYPE_CHECKING:
    from engine.serve.runtime import WindowResult

__all__ = ["PipelineMetrics"]

#: the pipeline as this module sees it (``engine.app.pipeline.Pipeline``: ``ingest``, ``batcher``,
#: ``writer``), untyped here because the pipeline imports this module
Pipeline = Any

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: the counters of ``ingest.stream`` exported as ``p2es_stream_events_total{event}``: every valid
#: chunk is in ``chunks_in`` and, once its patient's stream has taken it, in exactly one of
#: ``chunks_used``, ``duplicates``, ``late``, ``overlaps_dropped``; the others count events
STREAM_EVENTS = (
    "chunks_in",
    "chunks_used",
    "duplicates",
    "late",
    "overlaps_dropped",
    "overlaps_trimmed",
    "seq_skipped",
    "seq_resets",
    "gaps_filled",
    "breaks",
    "rate_changes",
)


class _Collector:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    def describe(self) -> list[Metric]:  # no describe-time collection (counters change under us)
        return []

    def collect(self) -> Iterator[Metric]:
        p = self.pipe
        ing = p.ingest.counters() if p.ingest is not None else {}
        yield counter("p2es_messages_in", "MQTT messages received", ing.get("messages_in", 0))
        yield labelled(
            CounterMetricFamily,
            "p2es_messages_invalid",
            "dead-lettered messages",
            "reason",
            sorted((ing.get("invalid") or {}).items()),
        )
        yield counter(
            "p2es_windows_dropped", "windows dropped by ingest back-pressure", ing.get("windows_dropped", 0)
        )
        yield labelled(
            CounterMetricFamily,
            "p2es_messages_valid",
            "input messages that passed validation, by kind",
            "kind",
            [
                ("ppg_json", ing.get("ppg_json", 0)),
                ("ppg_bin", ing.get("ppg_bin", 0)),
                ("profile", ing.get("profiles", 0)),
            ],
        )
        stream = ing.get("stream") or {}  # what the per-patient streams did with the valid chunks
        yield labelled(
            CounterMetricFamily,
            "p2es_stream_events",
            "per-patient stream events (ingest.stream): chunks in and used, duplicates, late, ...",
            "event",
            [(k, stream.get(k, 0)) for k in STREAM_EVENTS],
        )
        yield labelled(
            GaugeMetricFamily,
            "p2es_queue_depth",
            "queued windows",
            "queue",
            [
                ("ingest", ing.get("queue_depth", 0)),
                ("batcher", p.batcher.queue.qsize() if p.batcher is not None else 0),
            ],
        )
        yield gauge(
            "p2es_mqtt_connected", "1 while connected to the broker", 1 if ing.get("connected") else 0
        )
        budget = ing.get("budget") or {}  # their messages: p2es_messages_invalid{reason="rate_limited"}
        yield gauge(
            "p2es_patients_rate_limited", "patients over their budget now", budget.get("patients_limited", 0)
        )
        yield counter(
            "p2es_samples_rate_limited",
            "samples refused by the per-patient budget",
            budget.get("refused_samples", 0),
        )
        bus = ing.get("bus")
        if bus:
            yield gauge("p2es_bus_shards_owned", "shards this worker holds", bus["shards_owned"])
            yield labelled(
                GaugeMetricFamily,
                "p2es_bus_shard_owned",
                "1 for each shard this worker holds",
                "shard",
                [(str(s), 1) for s in bus["shards"]],
            )
            yield gauge("p2es_bus_workers_live", "workers in the membership bucket", bus["workers_live"])
            yield counter("p2es_bus_shards_acquired", "shards taken over", bus["shards_acquired"])
            yield counter("p2es_bus_shards_released", "shards handed over", bus["shards_released"])
            yield counter(
                "p2es_bus_replayed_messages", "PPG chunks replayed on takeover", bus["replayed_messages"]
            )
        if p.writer is not None:
            w = p.writer.counters
            yield gauge("p2es_spool_bytes", "bytes in the writer spool", w.get("spool_bytes", 0))
            yield gauge("p2es_spool_batches", "batches in the writer spool", w.get("spool_records", 0))
            yield counter("p2es_points_written", "points written to InfluxDB", w.get("points_written", 0))
            yield gauge("p2es_influx_down", "1 while InfluxDB is unreachable", w.get("db_down", 0))
            yield gauge(
                "p2es_spool_full", "1 while the disk refuses the writer spool", w.get("spool_full", 0)
            )
            yield counter(
                "p2es_points_dropped",
                "points neither the spool nor memory could keep",
                w.get("points_dropped", 0),
            )


class PipelineMetrics:
    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.registry = CollectorRegistry(auto_describe=False)
        self.windows = Counter("p2es_windows", "windows reconstructed", registry=self.registry)
        self.batch_size = Histogram(
            "p2es_batch_size", "windows per backend batch", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.stage = Histogram(
            "p2es_stage_latency_seconds",
            "per-stage latency",
            ["stage"],
            buckets=_LAT_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "p2es_e2e_latency_seconds",
            "window created by ingest -> written",
            buckets=_LAT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(pipe))
        self._server: MetricsServer | None = None
        self.port: int | None = None

    def observe_window(self, res: WindowResult) -> None:
        self.windows.inc()
        self.batch_size.observe(res.batch_size)
        self.stage.labels("queue").observe(max(0.0, res.queued_s))
        self.stage.labels("compute").observe(max(0.0, res.compute_s))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(max(0.0, seconds))

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(max(0.0, seconds))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """``/metrics`` on ``addr:port`` (and ``/healthz``: 200 while the ingest is connected)."""

        def health() -> tuple[bool, dict[str, Any]]:
            ing = self.pipe.ingest.counters() if self.pipe.ingest is not None else {}
            return bool(ing.get("connected")), {"connected": bool(ing.get("connected"))}

        self._server = MetricsServer(self.registry, port, addr, health=health, name="p2es-engine-metrics")
        self.port = self._server.port

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
