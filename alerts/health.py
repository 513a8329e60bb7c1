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

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["HealthServer"]


class _Collector:
    def __init__(self, counters: Callable[[], dict[str, Any]]) -> None:
        self.counters = counters

    def describe(self):
        return []

    def collect(self):
        c = self.counters()
        yield _gauge("p2es_alerts_mqtt_connected", "1 while connected to the broker", int(bool(c.get("connected"))))
        yield _gauge("p2es_alerts_firing", "alerts in state firing", c.get("alerts_firing", 0))
        yield _gauge("p2es_alerts_silences", "active silences", c.get("silences", 0))
        v = CounterMetricFamily("p2es_alerts_vitals", "vitals messages received")
        v.add_metric([], c.get("vitals_in", 0))
        yield v
        inv = CounterMetricFamily("p2es_alerts_invalid", "dead-lettered input", labels=["reason"])
        for reason, n in sorted((c.get("invalid") or {}).items()):
            inv.add_metric([reason], n)
        yield inv
        ev = CounterMetricFamily("p2es_alerts_events", "alert events")
        ev.add_metric([], (c.get("dispatch") or {}).get("events", 0))
        yield ev
        ob = c.get("outbox") or {}
        yield _gauge("p2es_alerts_outbox_pending", "webhook notifications not yet delivered", ob.get("pending", 0))
        dl = CounterMetricFamily("p2es_alerts_outbox_dead_letters", "webhook notifications given up")
        dl.add_metric([], ob.get("dead_letters", 0))
        yield dl


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    return g


class HealthServer:
    """``/healthz`` and ``/metrics`` on a daemon thread; :meth:`shutdown` stops it."""

    def __init__(self, counters: Callable[[], dict[str, Any]], port: int, addr: str = "127.0.0.1") -> None:
        registry = CollectorRegistry()
        registry.register(_Collector(counters))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    c = counters()
                    body = json.dumps(c, default=str, sort_keys=True).encode()
                    self._send(200 if c.get("connected") else 503, body, "application/json")
                elif path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer((addr, int(port)), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="p2es-alerts-health", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
