"""The one Prometheus endpoint of p2es services: ``/metrics`` (text format, read from the
service's own registry at scrape time) and ``/healthz`` (200 with a JSON status while the
service is healthy, else 503), served by a daemon thread.  Also the small metric-family helpers
the services' collectors are written with.

Each service keeps its own :class:`prometheus_client.CollectorRegistry`, so several services
in one process (tests, ``p2es run --alerts``) do not collide.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["MetricsServer", "gauge", "counter", "labelled", "parse_text"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_text(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition as ``{'name{labels}': value}`` (comment lines
    and unparsable values skipped): what the benches and tests read back from ``/metrics``."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            k, _, v = ln.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                continue
    return out


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    return g


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``: the exposition adds it)."""
    c = CounterMetricFamily(name, doc)
    c.add_metric([], float(value))
    return c


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Iterable[tuple[str, float]],
) -> CounterMetricFamily | GaugeMetricFamily:
    """A family with one label, one sample per ``(label value, value)``."""
    m = kind(name, doc, labels=[label])
    for lv, v in values:
        m.add_metric([lv], float(v))
    return m


class MetricsServer:
    """``/metrics`` for ``registry`` and, when ``health`` is given, ``/healthz`` returning
    ``(healthy, status dict)``; :meth:`shutdown` stops it.  ``port`` 0 picks a free port
    (:attr:`port` tells which).  Raises ``OSError`` when the address cannot be bound."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        addr: str = "127.0.0.1",
        *,
        health: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
        name: str = "p2es-metrics",
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE)
                elif path == "/healthz" and health is not None:
                    ok, status = health()
                    body = json.dumps(status, default=str, sort_keys=True).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line
                pass

        self.httpd = ThreadingHTTPServer((addr, int(port)), Handler)
        self.port: int = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
