"""HTTP health and metrics of ``p2es alerts run`` (``health_port``; off by default).

* ``GET /healthz``: 200 with the counters as JSON while the service is connected to the broker,
  503 otherwise (what the compose health check and an orchestrator probe).
* ``GET /metrics``: Prometheus text format, read from :meth:`AlertService.counters` at scrape
  time (own registry, so several services in one process do not collide).

=====================================  =========  ==========================================
metric                                 type       meaning
=====================================  =========  ==========================================
p2es_alerts_mqtt_connected             gauge      1 while connected to the broker
p2es_alerts_firing                     gauge      alerts in state firing
p2es_alerts_silences                   gauge      active silences
p2es_alerts_vitals_total               counter    vitals messages received
p2es_alerts_invalid_total{reason}      counter    dead-lettered input by reason
p2es_alerts_events_total               counter    alert events (firing, repeat, resolved, ack)
p2es_alerts_outbox_pending             gauge      webhook notifications not yet delivered
p2es_alerts_outbox_dead_letters_total  counter    webhook notifications given up
=====================================  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from p2es.transport.metrics import MetricsServer, counter, gauge, labelled

__all__ = ["HealthServer"]


class _Collector:
    def __init__(self, counters: Callable[[], dict[str, Any]]) -> None:
        self.counters = counters

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.counters()
        ob = c.get("outbox") or {}
        yield gauge(
            "p2es_alerts_mqtt_connected", "1 while connected to the broker", int(bool(c.get("connected")))
        )
        yield gauge("p2es_alerts_firing", "alerts in state firing", c.get("alerts_firing", 0))
        yield gauge("p2es_alerts_silences", "active silences", c.get("silences", 0))
        yield counter("p2es_alerts_vitals", "vitals messages received", c.get("vitals_in", 0))
        yield labelled(
            CounterMetricFamily,
            "p2es_alerts_invalid",
            "dead-lettered input",
            "reason",
            sorted((c.get("invalid") or {}).items()),
        )
        yield counter("p2es_alerts_events", "alert events", (c.get("dispatch") or {}).get("events", 0))
        yield gauge(
            "p2es_alerts_outbox_pending", "webhook notifications not yet delivered", ob.get("pending", 0)
        )
        yield counter(
            "p2es_alerts_outbox_dead_letters", "webhook notifications given up", ob.get("dead_letters", 0)
        )


class HealthServer(MetricsServer):
    """``/healthz`` (200 while connected to the broker) and ``/metrics`` of the alert service."""

    def __init__(self, counters: Callable[[], dict[str, Any]], port: int, addr: str = "127.0.0.1") -> None:
        registry = CollectorRegistry()
        registry.register(_Collector(counters))

        def health() -> tuple[bool, dict[str, Any]]:
            c = counters()
            return bool(c.get("connected")), c

        super().__init__(registry, port, addr, health=health, name="p2es-alerts-health")
