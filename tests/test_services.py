"""Round trips against the real Mosquitto and InfluxDB of scripts/services.sh (no mocks)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiomqtt
import pytest
import services


def _uid() -> str:
    return uuid.uuid4().hex[:12]


async def _mqtt_roundtrip(host: str, port: int, topic: str, payload: bytes) -> bytes:
    async with asyncio.timeout(10):
        async with aiomqtt.Client(host, port=port, identifier=f"p2es-test-{_uid()}") as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, payload, qos=1)
            async for message in client.messages:
                assert str(message.topic) == topic
                assert message.qos == 1
                return bytes(message.payload)
    raise AssertionError("unreachable")


def test_mqtt_publish_subscribe_qos1(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    topic = f"p2es/test/{_uid()}/ppg"
    payload = bytes(range(256)) * 4  # binary-safe
    assert asyncio.run(_mqtt_roundtrip(host, port, topic, payload)) == payload


def test_mqtt_survives_broker_restart(mqtt_broker: tuple[str, int]) -> None:
    host, port = mqtt_broker
    t0 = time.monotonic()
    services.restart_mosquitto()
    assert time.monotonic() - t0 < 15
    topic = f"p2es/test/{_uid()}/after-restart"
    assert asyncio.run(_mqtt_roundtrip(host, port, topic, b"ok")) == b"ok"


def _write_three(measurement: str, t0: int) -> None:
    services.influx_write(
        [
            f"{measurement},device=w1,lead=II value=0.5,seq=1i {t0}",
            f"{measurement},device=w1,lead=II value=-1.25,seq=2i {t0 + 2_000_000}",
            f"{measurement},device=w1,lead=II value=3.0e-3,seq=3i {t0 + 4_000_000}",
        ]
    )


def _expected(t0: int) -> list[tuple[int, float, int]]:
    return [(t0, 0.5, 1), (t0 + 2_000_000, -1.25, 2), (t0 + 4_000_000, 3.0e-3, 3)]


def _read(measurement: str) -> list[tuple[int, float, int]]:
    rows = services.influx_points(f'SELECT "value", "seq" FROM "{measurement}" ORDER BY time')
    return [(r["time"], r["value"], r["seq"]) for r in rows]


def test_influx_write_and_query(influxdb: tuple[str, str]) -> None:
    m = f"t_ecg_{_uid()}"
    t0 = time.time_ns()
    _write_three(m, t0)
    assert _read(m) == _expected(t0)
    rows = services.influx_points(f'SELECT count("value") FROM "{m}" WHERE "lead" = \'II\'')
    assert rows[0]["count"] == 3


def test_influx_same_series_and_timestamp_is_one_point(influxdb: tuple[str, str]) -> None:
    m = f"t_dup_{_uid()}"
    t0 = time.time_ns()
    _write_three(m, t0)
    _write_three(m, t0)  # a replayed batch: same series + timestamps
    assert _read(m) == _expected(t0)
    # A rewrite with a new value at the same key overwrites, still one point.
    services.influx_write(f"{m},device=w1,lead=II value=9.0,seq=1i {t0}")
    rows = services.influx_points(f'SELECT "value" FROM "{m}" WHERE time = {t0}')
    assert [r["value"] for r in rows] == [9.0]


def test_influx_data_survives_restart(influxdb: tuple[str, str]) -> None:
    m = f"t_persist_{_uid()}"
    t0 = time.time_ns()
    _write_three(m, t0)
    try:
        t = time.monotonic()
        services.stop_influx()
        stop_s = time.monotonic() - t
        assert not services.influx_ping()
        assert not services.port_open(services.HOST, services.influx_port())
        with pytest.raises(OSError):
            services.influx_query("SHOW DATABASES", db="", timeout=2)
    finally:
        t = time.monotonic()
        services.start_influx()
        start_s = time.monotonic() - t
    assert services.influx_ping()
    assert _read(m) == _expected(t0)
    assert stop_s < 15 and start_s < 20, (stop_s, start_s)
