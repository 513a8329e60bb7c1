"""Helpers for tests that use the real Mosquitto/InfluxDB/NATS of scripts/services.sh.

Ports come from the same environment variables as the scripts
(P2ES_TEST_MQTT_PORT, P2ES_TEST_INFLUX_PORT, P2ES_TEST_INFLUX_DB, P2ES_TEST_NATS_*), so a test and
the scripts always agree. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts"
HOST = "127.0.0.1"


def mqtt_port() -> int:
    return int(os.environ.get("P2ES_TEST_MQTT_PORT", "18830"))


def influx_port() -> int:
    return int(os.environ.get("P2ES_TEST_INFLUX_PORT", "18086"))


def influx_db() -> str:
    return os.environ.get("P2ES_TEST_INFLUX_DB", "p2es")


def nats_nodes() -> int:
    return int(os.environ.get("P2ES_TEST_NATS_NODES", "3"))


def nats_port(node: int = 1) -> int:
    """Client port of NATS node ``node`` (1-based) of scripts/nats.sh."""
    return int(os.environ.get("P2ES_TEST_NATS_PORT", "14222")) + node - 1


def nats_mqtt_port(node: int = 1) -> int:
    """MQTT listener of NATS node ``node``."""
    return int(os.environ.get("P2ES_TEST_NATS_MQTT_PORT", "11883")) + node - 1


def nats_http_port(node: int = 1) -> int:
    return int(os.environ.get("P2ES_TEST_NATS_HTTP_PORT", "18222")) + node - 1


def nats_bus_url() -> str:
    """``nats://h1:p1,h2:p2,h3:p3`` of the whole test cluster (``p2es run --bus``)."""
    return "nats://" + ",".join(f"{HOST}:{nats_port(i)}" for i in range(1, nats_nodes() + 1))


def nats_password(user: str) -> str:
    """Password of a user of the test cluster's account P2ES (scripts/nats.sh makes p2es-engine,
    p2es-alerts, p2es-operator, p2es-admin and the wearables acl-bed1 and acl.bed2)."""
    return f"test-pw-{user}"


def nats_healthy(node: int, timeout: float = 1.0) -> bool:
    """True when node's monitoring endpoint answers GET /healthz with 200 (JetStream current)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{nats_http_port(node)}/healthz", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def nats_pid(node: int) -> int | None:
    run_dir = Path(os.environ.get("P2ES_RUN_DIR", str(REPO_ROOT / ".run")))
    try:
        return int((run_dir / "nats" / f"n{node}" / "nats-server.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def start_nats() -> None:
    """Start the NATS nodes that are down; returns once every node is healthy."""
    _script("nats", "start")


def mqtt_url() -> str:
    return f"mqtt://{HOST}:{mqtt_port()}"


def influx_url() -> str:
    return f"http://{HOST}:{influx_port()}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    """Wait until a TCP connect to host:port succeeds; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} not accepting connections after {timeout:.0f}s")
        time.sleep(0.05)


def influx_ping(timeout: float = 1.0) -> bool:
    """True when InfluxDB answers GET /ping with 204."""
    try:
        with urllib.request.urlopen(f"{influx_url()}/ping", timeout=timeout) as r:
            return r.status == 204
    except (OSError, urllib.error.URLError):
        return False


def influx_query(q: str, db: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """Run InfluxQL via POST /query; returns the decoded JSON.

    Raises RuntimeError if InfluxDB reports an error for the statement.
    """
    params = {"q": q, "epoch": "ns"}
    if db is None:
        db = influx_db()
    if db:
        params["db"] = db
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{influx_url()}/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"InfluxQL {q!r} -> HTTP {e.code}: {e.read()[:500]!r}") from e
    for res in body.get("results", []):
        if "error" in res:
            raise RuntimeError(f"InfluxQL {q!r} -> {res['error']}")
    return body


def influx_points(q: str, db: str | None = None) -> list[dict[str, Any]]:
    """Run a SELECT and flatten the first statement's series into row dicts."""
    res = influx_query(q, db)["results"][0]
    rows: list[dict[str, Any]] = []
    for s in res.get("series", []):
        for values in s["values"]:
            row = dict(zip(s["columns"], values))
            row.update(s.get("tags") or {})
            rows.append(row)
    return rows


def influx_write(
    lines: str | list[str], db: str | None = None, precision: str = "ns", *, timeout: float = 10.0
) -> None:
    """Write line protocol via POST /write (expects 204)."""
    body = lines if isinstance(lines, str) else "\n".join(lines)
    qs = urllib.parse.urlencode({"db": db or influx_db(), "precision": precision})
    req = urllib.request.Request(f"{influx_url()}/write?{qs}", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 204:
                raise RuntimeError(f"/write -> HTTP {r.status}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"/write -> HTTP {e.code}: {e.read()[:500]!r}") from e


def _script(name: str, action: str, timeout: float = 60.0) -> None:
    """Run scripts/NAME.sh ACTION; raise with its output if it fails."""
    p = subprocess.run(
        ["bash", str(SCRIPTS / f"{name}.sh"), action],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if p.returncode != 0:
        raise RuntimeError(f"scripts/{name}.sh {action} failed (exit {p.returncode}):\n{p.stdout}{p.stderr}")


def start_services() -> None:
    """scripts/services.sh start (installs packages on first use, so allow time)."""
    _script("services", "start", timeout=600.0)


def stop_influx() -> None:
    """Stop InfluxDB and return once it is gone (the HTTP port refuses)."""
    _script("influxdb", "stop")


def start_influx() -> None:
    """Start InfluxDB and return once /ping answers 204 and the database exists."""
    _script("influxdb", "start")


def stop_mosquitto() -> None:
    _script("mosquitto", "stop")


def start_mosquitto() -> None:
    _script("mosquitto", "start")


def restart_mosquitto() -> None:
    """Stop and start the broker; returns once it accepts MQTT connections again.

    Sessions and retained/queued QoS>0 messages survive (persistence is on).
    """
    _script("mosquitto", "restart")
