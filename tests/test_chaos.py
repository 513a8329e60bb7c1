"""The chaos harness in short (bench/chaos.py, issue #15 item 5), and the clock-skew contract.

The service tests run five of ``bench/chaos.py``'s seven scenarios with ``Plan.short()``
durations, all at once, each on its own private Mosquitto (and InfluxDB where it needs one) started by
``scripts/mosquitto.sh`` / ``scripts/influxdb.sh`` on free ports under pytest's temporary
directory -- never the shared test services, which other tests use while these stop, restart
and starve theirs.  The engine and the alert service are real ``p2es run`` / ``p2es alerts
run`` processes (``kill -9`` is SIGKILL), the webhook receiver a real HTTP server that verifies
every signature, the full disk a real tmpfs (or, where namespaces are not allowed, a file-size
limit).  ``make chaos`` runs the same scenarios at full length (5 min outage, 10 min of HTTP
500, ...) and prints the table of docs/reliability.md.

The other two run in short elsewhere already, so they are not repeated here (the suite has
15 minutes on 2 cores): an InfluxDB outage under load -- ``test_pipeline.py::
test_influx_outage_loses_nothing`` (30 s, every ECG sample once) and ``test_sink.py::
test_influxdb_outage_loses_nothing_and_keeps_order`` (the write order); a broker restart --
``test_pipeline.py::test_broker_restart_recovers``.  ``python bench/chaos.py --short`` runs all
seven.

Each test reads one scenario's measured details and checks its promise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2es.contracts.ppg import DeadLetter, ParsedPpg, encode_binary_chunk, parse_message

REPO = Path(__file__).resolve().parent.parent
TOPIC = "p2es/v1/patients/bed-1/ppg"


def _load_chaos() -> Any:
    spec = importlib.util.spec_from_file_location("p2es_bench_chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ the clock-skew contract
def _json_chunk(t0: float, n: int = 100, fs: float = 100.0) -> bytes:
    import json

    return json.dumps({"seq": 1, "t0": t0, "fs": fs, "samples": [0.1] * n}).encode()


NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("t0", "ok", "side"),
    [
        (NOW - 1.0, True, None),  # the chunk's end (t0 + 1 s) is the receive time
        (NOW + 600.0, True, None),  # 10 min ahead: within the tolerance, used at device time
        (NOW - 1801.0, True, None),  # its end exactly 1800 s behind: still within
        (NOW - 1.0 + 1800.5, False, "ahead of"),
        (NOW + 3600.0, False, "ahead of"),
        (NOW - 3600.0, False, "behind"),
    ],
)
def test_clock_skew_beyond_the_tolerance_is_a_dead_letter(t0: float, ok: bool, side: str | None) -> None:
    for topic, payload in (
        (TOPIC, _json_chunk(t0)),
        (TOPIC + "/bin", encode_binary_chunk(1, t0, 100.0, np.full(100, 0.1))),
    ):
        res = parse_message(topic, payload, received_at=NOW, max_clock_skew_s=1800.0)
        if ok:
            assert isinstance(res, ParsedPpg) and res.chunk.t0 == t0  # never re-timed
        else:
            assert isinstance(res, DeadLetter) and res.code == "clock_skew"
            assert side in res.reason and "tolerance 1800 s" in res.reason
            assert res.received_at == NOW and res.topic == topic


def test_no_tolerance_trusts_the_device_clock() -> None:
    res = parse_message(TOPIC, _json_chunk(NOW + 7200.0), received_at=NOW, max_clock_skew_s=None)
    assert isinstance(res, ParsedPpg) and res.chunk.t0 == NOW + 7200.0
    res = parse_message(TOPIC, _json_chunk(NOW + 7200.0), received_at=NOW)  # the parser's default
    assert isinstance(res, ParsedPpg)


def test_other_reasons_come_before_the_clock() -> None:
    """A chunk that is invalid anyway keeps its own reason (the clock is checked last)."""
    bad = b'{"seq": 1, "t0": %.1f, "fs": 100.0, "samples": [1e999]}' % (NOW + 3600.0)
    res = parse_message(TOPIC, bad, received_at=NOW, max_clock_skew_s=1800.0)
    assert isinstance(res, DeadLetter) and res.code == "non_finite"


def test_the_tolerance_is_one_setting_with_one_default() -> None:
    from engine.app.pipeline import PipelineConfig
    from ingest.stream import StreamConfig

    assert PipelineConfig().max_clock_skew_s == StreamConfig().max_clock_skew_s == 1800.0
    assert PipelineConfig(max_clock_skew_s=None).max_clock_skew_s is None
    with pytest.raises(ValueError):
        StreamConfig(max_clock_skew_s=0.0)
    with pytest.raises(ValueError):
        PipelineConfig(max_clock_skew_s=-1.0)


def test_a_skewed_device_is_logged_once_not_per_chunk(caplog: pytest.LogCaptureFixture) -> None:
    from ingest.service import note_clock_skew

    caplog.set_level(logging.INFO, logger="p2es.ingest")
    skewed: set[str] = set()
    for k in range(5):
        res = parse_message(TOPIC, _json_chunk(NOW + 3600.0 + k), received_at=NOW, max_clock_skew_s=1800.0)
        note_clock_skew(skewed, TOPIC, res, "p2es/v1")
    assert skewed == {"bed-1"}
    ok = parse_message(TOPIC, _json_chunk(NOW), received_at=NOW, max_clock_skew_s=1800.0)
    note_clock_skew(skewed, TOPIC, ok, "p2es/v1")
    assert skewed == set()
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "dead-lettered (clock_skew)" in m]) == 1
    assert len([m for m in msgs if "back within the tolerance" in m]) == 1


# ------------------------------------------------------------------ the harness, short
IN_SUITE = ("engine_kill", "alerts_kill", "webhook_500", "spool_full", "clock_skew")


@pytest.fixture(scope="module")
def chaos() -> Any:
    return _load_chaos()


@pytest.fixture(scope="module")
def short(chaos: Any, tiny_ckpt: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every scenario of bench/chaos.py with Plan.short(), at once (each on its own services)."""
    work = tmp_path_factory.mktemp("chaos")
    results = asyncio.run(chaos.run_all(list(IN_SUITE), chaos.Plan.short(), work, tiny_ckpt, parallel=True))
    print("\n" + chaos.table(results))
    return {r.name: r for r in results}


def _result(short: dict[str, Any], name: str) -> dict[str, Any]:
    r = short[name]
    assert r.passed, f"{name}: {r.measured}\n{r.details}"
    return r.details


@pytest.mark.services
@pytest.mark.timeout(900)
def test_engine_kill_resumes_with_no_gap_and_rewrites_only_the_replay(short: dict[str, Any]) -> None:
    d = _result(short, "engine_kill")
    (k,) = d["kills"]
    # the worst phase before the journal (a gap of 2 hops + 1 chunk); bench/chaos.py runs them all
    assert k["phase"] == 1
    assert (
        k["gap_s"] == [0.0] and not d["bad"]
    )  # one complete run per patient: chunks sent while down arrived
    assert d["rewritten_from_s"] <= 17.0  # only the replayed 16 s (+ a chunk) before the kill changed


@pytest.mark.services
@pytest.mark.timeout(900)
def test_alert_service_kill_mid_notification_loses_none_and_resends_the_same_id(
    short: dict[str, Any],
) -> None:
    d = _result(short, "alerts_kill")
    assert d["accepted"] == 2 * 5 and d["complete"] == 5 and d["invalid"] == 0
    assert None not in d["in_flight"] and sorted(d["in_flight"]) == d["duplicates"]


@pytest.mark.services
@pytest.mark.timeout(900)
def test_webhook_500_then_everything_delivered_with_valid_signatures(short: dict[str, Any]) -> None:
    d = _result(short, "webhook_500")
    assert d["refused"] >= 2 and d["accepted"] == 2 * 3 and d["invalid"] == 0
    assert d["outbox_pending"] == 0 and d["outbox_dead"] == 0


@pytest.mark.services
@pytest.mark.timeout(900)
def test_spool_disk_full_one_line_a_gauge_and_vitals_keep_flowing(short: dict[str, Any]) -> None:
    d = _result(short, "spool_full")
    assert len(d["error_lines"]) == 1 and "cannot be written" in d["error_lines"][0]
    assert d["vitals_during"] >= 0.75 * d["vitals_expected"] > 0
    assert d["metrics_exported"] == ["p2es_points_dropped_total", "p2es_spool_full"]
    assert d["engine_rc"] == 0


@pytest.mark.services
@pytest.mark.timeout(900)
def test_device_clock_off_by_an_hour_is_dead_lettered_and_no_window_is_corrupted(
    short: dict[str, Any],
) -> None:
    d = _result(short, "clock_skew")
    assert all(d["checks"].values()), d["checks"]
    assert d["letters"] == d["sent_skewed"] and sum(d["sent_skewed"].values()) == d["metric"] > 0
