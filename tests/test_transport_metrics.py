"""p2es.transport.metrics.parse_text reads back what the metrics server writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from p2es.transport.metrics import counter, gauge, labelled, parse_text


class _Collector:
    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        yield gauge("p2es_x", "a gauge", 2.5)
        yield counter("p2es_n", "a counter", 7)
        yield labelled(
            GaugeMetricFamily, "p2es_by", "by reason", "reason", [("bad_json", 3), ("clock_skew", 1)]
        )


def test_parse_text_reads_back_the_exposition() -> None:
    reg = CollectorRegistry()
    reg.register(_Collector())
    got = parse_text(generate_latest(reg).decode())
    assert got["p2es_x"] == 2.5
    assert got["p2es_n_total"] == 7.0
    assert got['p2es_by{reason="bad_json"}'] == 3.0
    assert got['p2es_by{reason="clock_skew"}'] == 1.0
    assert not any(k.startswith("#") for k in got)


def test_parse_text_skips_comments_and_garbage() -> None:
    assert parse_text("# HELP a b\n# TYPE a gauge\na 1\nb notanumber\n\nc 2e3\n") == {"a": 1.0, "c": 2000.0}
