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
p2es_batch_size                        histogram  windows per backend batch
p2es_queue_depth{queue}                gauge      ingest window queue / batcher queue
p2es_stage_latency_seconds{stage}      histogram  queue (wait for a batch), compute, sink
p2es_e2e_latency_seconds               histogram  window created by ingest -> written
p2es_spool_bytes / p2es_spool_batches  gauge      writer spool size (InfluxDB unreachable)
p2es_points_written_total              counter    points written to InfluxDB
p2es_influx_down                       gauge      1 while the writer considers InfluxDB down
p2es_mqtt_connected                    gauge      1 while the ingest is connected
=====================================  =========  =============================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["PipelineMetrics"]

_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Collector:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def describe(self):  # no describe-time collection (counters change under us)
        return []

    def collect(self):
        p = self.pipe
        ing = p.ingest.counters() if p.ingest is not None else {}
        c = CounterMetricFamily("p2es_messages_in", "MQTT messages received")
        c.add_metric([], ing.get("messages_in", 0))
        yield c
        inv = CounterMetricFamily("p2es_messages_invalid", "dead-lettered messages", labels=["reason"])
        for reason, n in sorted((ing.get("invalid") or {}).items()):
            inv.add_metric([reason], n)
        yield inv
        d = CounterMetricFamily("p2es_windows_dropped", "windows dropped by ingest back-pressure")
        d.add_metric([], ing.get("windows_dropped", 0))
        yield d
        q = GaugeMetricFamily("p2es_queue_depth", "queued windows", labels=["queue"])
        q.add_metric(["ingest"], ing.get("queue_depth", 0))
        q.add_metric(["batcher"], p.batcher.queue.qsize() if p.batcher is not None else 0)
        yield q
        g = GaugeMetricFamily("p2es_mqtt_connected", "1 while connected to the broker")
        g.add_metric([], 1 if ing.get("connected") else 0)
        yield g
        if p.writer is not None:
            w = p.writer.counters
            sb = GaugeMetricFamily("p2es_spool_bytes", "bytes in the writer spool")
            sb.add_metric([], w.get("spool_bytes", 0))
            yield sb
            sp = GaugeMetricFamily("p2es_spool_batches", "batches in the writer spool")
            sp.add_metric([], w.get("spool_records", 0))
            yield sp
            pw = CounterMetricFamily("p2es_points_written", "points written to InfluxDB")
            pw.add_metric([], w.get("points_written", 0))
            yield pw
            dn = GaugeMetricFamily("p2es_influx_down", "1 while InfluxDB is unreachable")
            dn.add_metric([], w.get("db_down", 0))
            yield dn


class PipelineMetrics:
    def __init__(self, pipe: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.windows = Counter("p2es_windows", "windows reconstructed", registry=self.registry)
        self.batch_size = Histogram("p2es_batch_size", "windows per backend batch",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.stage = Histogram("p2es_stage_latency_seconds", "per-stage latency", ["stage"],
                               buckets=_LAT_BUCKETS, registry=self.registry)
        self.e2e = Histogram("p2es_e2e_latency_seconds", "window created by ingest -> written",
                             buckets=_LAT_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(pipe))
        self._server = None
        self._thread = None
        self.port: int | None = None

    def observe_window(self, res: Any) -> None:
        self.windows.inc()
        self.batch_size.observe(res.batch_size)
        self.stage.labels("queue").observe(max(0.0, res.queued_s))
        self.stage.labels("compute").observe(max(0.0, res.compute_s))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(max(0.0, seconds))

    def observe_e2e(self, seconds: float) -> None:
        self.e2e.observe(max(0.0, seconds))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        res = start_http_server(port, addr=addr, registry=self.registry)
        if isinstance(res, tuple):
            self._server, self._thread = res
        self.port = port

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
