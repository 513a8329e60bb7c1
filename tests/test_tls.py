"""TLS end to end, verified (issue #15, item 2): real Mosquitto and InfluxDB behind TLS, an HTTPS
webhook receiver, a throw-away CA made here (tests/tls_services.py).

* the simulator (client certificate, ``use_identity_as_username``), the engine (password over
  ``mqtts://``, InfluxDB over ``https://``) and the alert service (``mqtts://``, ``https://``
  InfluxDB and an ``https://`` webhook) work end to end with verification on;
* a wrong CA, a wrong host name or a missing client certificate is refused with one line;
* a device certificate is its identity: it may publish only its own patient's topics;
* no switch that turns verification off exists in the source tree;
* no password or webhook secret appears in the logs, the MQTT dead letters or the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest
import tls_services as ts
from services import REPO_ROOT

from alerts.receiver import WebhookReceiver
from alerts.webhook import generate_secret, post
from p2es.errors import P2esError
from p2es.transport.settings import ServiceSettings, validate
from p2es.transport.tls import check_server, client_context, redact_url, server_context

pytestmark = pytest.mark.timeout(150)

ENGINE_PW = "engine-" + secrets.token_hex(12)
ALERTS_PW = "alerts-" + secrets.token_hex(12)
MONITOR_PW = "monitor-" + secrets.token_hex(12)
DEMO_PW = "demo-" + secrets.token_hex(12)
DEVICE = "bed-000"  # the simulator's first patient with prefix "bed": the CN of its certificate


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ts.Pki:
    return ts.make_pki(tmp_path_factory.mktemp("pki"), clients=(DEVICE,))


@pytest.fixture(scope="module")
def broker(pki: ts.Pki, tmp_path_factory: pytest.TempPathFactory):
    """Mosquitto: password listener + client-certificate listener, the deploy ACL plus a test
    monitor account that may read everything."""
    m = ts.TlsMosquitto(
        tmp_path_factory.mktemp("mosquitto"),
        pki,
        {
            "p2es-engine": ENGINE_PW,
            "p2es-alerts": ALERTS_PW,
            "p2es-test-monitor": MONITOR_PW,
            "p2es-test-demo": DEMO_PW,
        },
        # the monitor reads everything; `p2es demo --broker` runs wearables, engine and alerts
        # under one account
        extra_acl="user p2es-test-monitor\ntopic read #\nuser p2es-test-demo\ntopic readwrite p2es/v1/#\n",
    ).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def influx(pki: ts.Pki, tmp_path_factory: pytest.TempPathFactory):
    i = ts.TlsInfluxd(tmp_path_factory.mktemp("influxd"), pki).start()
    yield i
    i.stop()


# ------------------------------------------------------------------------------ no switch-off
FORBIDDEN = [
    r"verify\s*=\s*False",
    r"CERT_NONE",
    r"check_hostname\s*=\s*False",
    r"_create_unverified_context",
    r"verify_ssl\s*=\s*False",
    r"tls_insecure(_set)?\s*[=(]\s*True",
    r"PYTHONHTTPSVERIFY",
    r"InsecureRequestWarning",
    r"--no-check-certificate",
    r"\bcurl\b[^\n]*\s(-k|--insecure)\b",
    r"\bmosquitto_(pub|sub)\b[^\n]*--insecure",
]
CODE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".conf", ".toml", ".cfg", ".ini", ".j2", ".env"}


def test_no_verification_switch_off_in_source_tree() -> None:
    """No code or config in the tree (tracked or new, docs excepted) turns certificate or
    host-name verification off."""
    rx = re.compile("|".join(FORBIDDEN))
    for sample in ("ctx.verify_mode = ssl.CERT_NONE", "requests.get(u, verify=False)", "curl -k https://x"):
        assert rx.search(sample), sample  # the patterns are not vacuous
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    me = Path(__file__).resolve()
    checked, hits = 0, []
    for name in files:
        p = REPO_ROOT / name
        if p.resolve() == me or not p.is_file():
            continue
        if p.suffix not in CODE_SUFFIXES and p.name not in ("Dockerfile", "Makefile", "run", "entrypoint.sh"):
            continue
        checked += 1
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if rx.search(line):
                hits.append(f"{name}:{n}: {line.strip()}")
    assert checked > 100, checked  # the whole tree was scanned
    assert not hits, "verification switched off:\n" + "\n".join(hits)


# ------------------------------------------------------------------------------ settings
def test_tls_settings_are_checked_when_loaded(pki: ts.Pki, tmp_path: Path) -> None:
    """TLS files only with mqtts:// / https://, files that exist and load; one line each."""
    ca = str(pki.ca)

    def err(**kw: object) -> str:
        with pytest.raises(P2esError) as e:
            validate(ServiceSettings, {"influx_url": "none", **kw}, "test")
        return str(e.value)

    assert "mqtt_ca_file needs an mqtts:// broker" in err(broker="mqtt://localhost:1883", mqtt_ca_file=ca)
    assert "mqtt_ca_file: no such file" in err(
        broker="mqtts://localhost", mqtt_ca_file=str(tmp_path / "nope")
    )
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert "no PEM CA certificate" in err(broker="mqtts://localhost", mqtt_ca_file=str(tmp_path / "junk.pem"))
    assert "mqtt_key_file needs mqtt_cert_file" in err(
        broker="mqtts://localhost", mqtt_key_file=str(pki.clients[DEVICE][1])
    )
    assert "cannot load the client certificate and its key" in err(
        broker="mqtts://localhost",
        mqtt_cert_file=str(pki.clients[DEVICE][0]),
        mqtt_key_file=str(pki.server_key),
    )
    assert "influx_ca_file needs an https:// influx_url" in err(
        influx_url="http://localhost:8086", influx_ca_file=ca
    )
    ok = validate(
        ServiceSettings,
        {
            "broker": "mqtts://localhost",
            "mqtt_ca_file": ca,
            "influx_url": "https://localhost",
            "influx_ca_file": ca,
        },
        "test",
    )
    ctx = ok.mqtt_endpoint().tls_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert redact_url("mqtts://dev:pw-123@localhost:8883") == "mqtts://***@localhost:8883"
    from alerts.service import WebhookConfig

    with pytest.raises(ValueError, match="ca_file needs an https:// url"):
        WebhookConfig(url="http://localhost/hook", ca_file=ca)


# ------------------------------------------------------------------------------ webhook HTTPS
def test_webhook_https_verified(pki: ts.Pki) -> None:
    """post() to an HTTPS receiver: delivered with the right CA; the system trust store or a
    host name the certificate does not list is a failed attempt with one clear line."""
    secret = generate_secret()
    sctx = server_context(str(pki.server_cert), str(pki.server_key))
    with WebhookReceiver(secret, ssl_context=sctx, server_name=ts.SERVER_NAME) as rx:
        assert rx.url.startswith("https://localhost:")
        good = post(rx.url, b"{}", "msg_1", secret, timeout=5, context=client_context(str(pki.ca)))
        assert good.ok, good
        untrusted = post(rx.url, b"{}", "msg_2", secret, timeout=5)  # system trust store
        assert untrusted.status is None and untrusted.error is not None
        assert "TLS certificate refused" in untrusted.error and "system trust store" in untrusted.error
        by_ip = rx.url.replace("localhost", "127.0.0.1")
        wrong_host = post(by_ip, b"{}", "msg_3", secret, timeout=5, context=client_context(str(pki.ca)))
        assert wrong_host.error is not None and "does not name '127.0.0.1'" in wrong_host.error
        for r in (untrusted, wrong_host):
            assert "\n" not in (r.error or "") and secret not in (r.error or "")
        assert [r.id for r in rx.accepted] == ["msg_1"]  # nothing else got through


# ------------------------------------------------------------------------------ device identity
def test_device_certificate_is_its_identity(pki: ts.Pki, broker: ts.TlsMosquitto) -> None:
    """On the client-certificate listener the CN is the username: the device writes its own
    patient's topic, not another's; a certificate of another CA or none at all is refused."""
    cert, key = pki.clients[DEVICE]
    dev_ctx = client_context(str(pki.ca), str(cert), str(key))

    async def go() -> list[str]:
        got: list[str] = []
        mon_ctx = client_context(str(pki.ca))
        async with aiomqtt.Client(
            ts.SERVER_NAME,
            broker.port,
            username="p2es-test-monitor",
            password=MONITOR_PW,
            tls_context=mon_ctx,
        ) as mon:
            await mon.subscribe("p2es/v1/patients/+/ppg", qos=1)
            async with aiomqtt.Client(ts.SERVER_NAME, broker.cert_port, tls_context=dev_ctx) as dev:
                await dev.publish(f"p2es/v1/patients/{DEVICE}/ppg", b"own", qos=1)
                await dev.publish("p2es/v1/patients/bed-999/ppg", b"other", qos=1)
                await dev.publish(f"p2es/v1/patients/{DEVICE}/ppg", b"end", qos=1)

            async def collect() -> None:
                async for m in mon.messages:
                    got.append(f"{m.topic}={m.payload!r}")
                    if m.payload == b"end":
                        return

            await asyncio.wait_for(collect(), 10)
        for ctx, why in (
            (client_context(str(pki.ca), *map(str, pki.rogue[DEVICE])), "does not trust the CA"),
            (client_context(str(pki.ca)), "wants a client certificate"),
        ):
            with pytest.raises(P2esError, match=why):
                await check_server(ts.SERVER_NAME, broker.cert_port, ctx, what="MQTT broker")
        return got

    got = asyncio.run(go())
    assert got == [f"p2es/v1/patients/{DEVICE}/ppg=b'own'", f"p2es/v1/patients/{DEVICE}/ppg=b'end'"], got


# ------------------------------------------------------------------------------ CLIs: one line
def test_cli_wrong_ca_host_or_certificate_is_one_line(
    pki: ts.Pki,
    broker: ts.TlsMosquitto,
    influx: ts.TlsInfluxd,
    tiny_ckpt: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """p2es simulate / run / alerts run refuse a wrong CA, a host name the certificate does not
    list and a missing client certificate with one line (``p2es: error: ...``, exit 2); the
    right settings work.  The password (given by environment) appears in no output.  One case
    runs as its own process (the whole path to stderr); the others through ``p2es.cli.main``."""
    from p2es.cli import main

    ca, wrong = str(pki.ca), str(pki.wrong_ca)
    cert, key = map(str, pki.clients[DEVICE])
    mq, mq_ip, mq_cert = broker.url(), broker.url("127.0.0.1"), broker.url(cert_listener=True)
    sim = ["simulate", "--patients", "1", "--prefix", "bed", "--duration", "2", "--speed", "20"]
    monkeypatch.setenv("P2ES_MQTT_PASSWORD", ENGINE_PW)
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2es.cli", *sim, "--broker", mq, "--mqtt-ca-file", wrong],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cases = {
            "wrong_host": (sim + ["--broker", mq_ip, "--mqtt-ca-file", ca], "does not name '127.0.0.1'"),
            "no_cert": (sim + ["--broker", mq_cert, "--mqtt-ca-file", ca], "wants a client certificate"),
            "run_influx_host": (
                ["run", "--broker", mq, "--mqtt-ca-file", ca, "--mqtt-username", "p2es-engine"]
                + ["--checkpoint", tiny_ckpt, "--spool-dir", str(tmp_path / "sp")]
                + ["--influx-url", influx.url("127.0.0.1"), "--influx-ca-file", ca],
                "InfluxDB 127.0.0.1:",
            ),
            "alerts_wrong_ca": (
                ["alerts", "run", "--broker", mq, "--mqtt-ca-file", wrong, "--mqtt-username", "p2es-alerts"]
                + ["--influx-url", "none", "--state-file", str(tmp_path / "st.json")],
                "not signed by the CA in mqtt_ca_file",
            ),
            "device_ok": (
                sim
                + [
                    "--broker",
                    mq_cert,
                    "--mqtt-ca-file",
                    ca,
                    "--mqtt-cert-file",
                    cert,
                    "--mqtt-key-file",
                    key,
                ],
                None,
            ),
        }
        out: dict[str, tuple[int, str, str]] = {}
        for k, (argv, _) in cases.items():
            rc = main(argv)
            o, e = capsys.readouterr()
            out[k] = (rc, o, e)
        o, e = proc.communicate(timeout=90)
        out["wrong_ca (process)"] = (proc.returncode, o, e)
        cases["wrong_ca (process)"] = ([], "not signed by the CA in --mqtt-ca-file")
    finally:
        if proc.poll() is None:
            proc.kill()
    for k, (_, expect) in cases.items():
        rc, stdout, stderr = out[k]
        assert ENGINE_PW not in stdout + stderr, k
        if expect is None:
            assert rc == 0, (k, stderr[-2000:])
            assert json.loads(stdout.strip().splitlines()[-1])["chunks"] == 2, (k, stdout)
            continue
        line = ts.assert_one_line_error(k, rc, stdout, stderr, expect, ENGINE_PW)
        assert "TLS" in line, (k, line)


def test_demo_on_a_tls_broker_with_login(
    pki: ts.Pki,
    broker: ts.TlsMosquitto,
    tiny_ckpt: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``p2es demo --broker mqtts://...`` with a CA file and a login: wearables, engine, alert
    service and listener all connect verified, windows and vitals flow; a wrong CA, or TLS
    flags without ``--broker``, is one line; the password appears in no output."""
    from engine.app.demo import run_demo
    from p2es.cli import build_parser, main

    monkeypatch.setenv("P2ES_MQTT_PASSWORD", DEMO_PW)
    base = ["demo", "--patients", "1", "--duration", "12", "--speed", "8", "--checkpoint", tiny_ckpt]
    base += ["--steps", "2", "--k", "1", "--threads", "1", "--out", str(tmp_path / "demo"), "--no-live"]
    login = ["--broker", broker.url(), "--mqtt-username", "p2es-test-demo"]
    s = run_demo(build_parser().parse_args(base + login + ["--mqtt-ca-file", str(pki.ca)]), live=False)
    (p,) = s.patients.values()
    assert not s.interrupted and p.windows >= 2 and p.continuous, (p.windows, s.stats)
    assert s.alert_stats["vitals_in"] == s.windows  # the alert service got every vitals message
    text = capsys.readouterr().out
    assert DEMO_PW not in text and s.broker == broker.url()
    for argv, expect in (
        (base + login + ["--mqtt-ca-file", str(pki.wrong_ca)], "not signed by the CA"),
        (base + ["--mqtt-ca-file", str(pki.ca)], "--mqtt-ca-file needs --broker"),
    ):
        rc = main(argv)
        o, e = capsys.readouterr()
        line = ts.assert_one_line_error(argv[-1], rc, o, e, expect, DEMO_PW)
        assert line.startswith("p2es: error:"), line


# ------------------------------------------------------------------------------ end to end
RULES = """
rules:
  - name: seen
    metric: sqi
    op: ">="
    threshold: 0
    priority: low
    summary: "window seen, SQI {value:.2f}"
"""


def test_end_to_end_over_tls_and_no_secret_in_logs_or_dead_letters(
    pki: ts.Pki,
    broker: ts.TlsMosquitto,
    influx: ts.TlsInfluxd,
    tiny_ckpt: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Device (client certificate) -> engine (password over mqtts, InfluxDB over https) ->
    vitals -> alert service (mqtts, https InfluxDB, https webhook, signature verified).  Then
    every log record (DEBUG, all loggers), every MQTT dead letter and the outbox are searched
    for the passwords and the webhook secret."""
    from alerts.rules import load_rules_text
    from alerts.service import AlertService, AlertServiceConfig, WebhookConfig
    from engine.app.pipeline import Pipeline, PipelineConfig
    from wearable.publisher import simulate_async

    caplog.set_level(logging.DEBUG)
    ca = str(pki.ca)
    secret = generate_secret()
    sctx = server_context(str(pki.server_cert), str(pki.server_key))
    tag = uuid.uuid4().hex[:6]
    pipe_cfg = PipelineConfig(
        broker=broker.url(),
        mqtt_username="p2es-engine",
        mqtt_password=ENGINE_PW,
        mqtt_ca_file=ca,
        client_id=f"p2es-tls-{tag}",
        influx_url=influx.url(),
        influx_ca_file=ca,
        steps=2,
        k=1,
        max_batch=8,
        max_wait_ms=20,
        checkpoint=tiny_ckpt,
        spool_dir=str(tmp_path / "spool"),
        writer_flush_interval_s=0.3,
        threads=1,
        stream_reorder_wait_s=0.5,
        idle_flush_s=2.0,
    )
    dead: list[bytes] = []

    async def go(rx: WebhookReceiver, reject: WebhookReceiver) -> tuple[AlertService, Pipeline]:
        svc = AlertService(
            AlertServiceConfig(
                broker=broker.url(),
                mqtt_username="p2es-alerts",
                mqtt_password=ALERTS_PW,
                mqtt_ca_file=ca,
                client_id=f"p2es-alerts-tls-{tag}",
                influx_url=influx.url(),
                influx_ca_file=ca,
                webhooks=[
                    WebhookConfig(name="ward", url=rx.url, secret=secret, ca_file=ca),
                    WebhookConfig(name="reject", url=reject.url, secret=secret, ca_file=ca),
                ],
                spool_dir=str(tmp_path / "a_spool"),
                outbox_dir=str(tmp_path / "outbox"),
                state_file=str(tmp_path / "state.json"),
                writer_flush_interval_s=0.3,
            ),
            rules=load_rules_text(RULES),
        )
        pipe = Pipeline(pipe_cfg)
        await pipe.start()
        await svc.start()
        try:
            await pipe.ingest.wait_connected(10)
            await svc.wait_connected(10)
            async with aiomqtt.Client(
                ts.SERVER_NAME,
                broker.port,
                username="p2es-test-monitor",
                password=MONITOR_PW,
                tls_context=client_context(ca),
            ) as mon:
                await mon.subscribe("p2es/v1/deadletter", qos=1)
                cert, key = map(str, pki.clients[DEVICE])
                res = await simulate_async(
                    broker.url(cert_listener=True),
                    1,
                    prefix="bed",
                    speed=8,
                    duration_s=16,
                    tls_context=client_context(ca, cert, key),
                )
                assert res["chunks"] == 16, res
                # a malformed chunk from the device: dead-lettered by the engine
                async with aiomqtt.Client(
                    ts.SERVER_NAME, broker.cert_port, tls_context=client_context(ca, cert, key)
                ) as dev:
                    await dev.publish(f"p2es/v1/patients/{DEVICE}/ppg", b"{not json", qos=1)

                async def one_dead_letter() -> None:
                    async for m in mon.messages:
                        dead.append(bytes(m.payload))  # type: ignore[arg-type]  # bytes from the broker
                        return

                await asyncio.wait_for(one_dead_letter(), 15)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (rx.accepted and reject.received):
                await asyncio.sleep(0.2)
            while time.monotonic() < deadline and influx.count("alerts", "value") == 0:
                await asyncio.sleep(0.3)
        finally:
            await svc.stop()
            await pipe.stop()
        return svc, pipe

    with (
        WebhookReceiver(secret, ssl_context=sctx, server_name=ts.SERVER_NAME) as rx,
        WebhookReceiver(
            secret, ssl_context=sctx, server_name=ts.SERVER_NAME, respond=lambda n, r: 400
        ) as reject,
    ):
        svc, pipe = asyncio.run(go(rx, reject))

    # it all went over TLS, verified, end to end
    s = pipe.stats()
    assert s["patients"][DEVICE]["windows"] >= 2, s["patients"]
    assert influx.count("ecg", "II") >= 1024  # the engine's writes over https
    assert influx.count("alerts", "value") >= 1  # the alert service's writes over https
    assert rx.accepted and all(r.verified for r in rx.accepted), rx.received
    assert json.loads(rx.accepted[0].body)["commonLabels"]["alertname"] == "seen"
    assert reject.received and reject.received[0].status == 400
    assert dead and json.loads(dead[0])["reason"], dead

    # no secret anywhere: logs (every record, every logger), dead letters, outbox, state
    key_b64 = secret.removeprefix("whsec_")
    needles = {ENGINE_PW, ALERTS_PW, MONITOR_PW, secret, key_b64, base64.b64decode(key_b64).hex()}
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "ingest connected to" in text and "alerts connected to" in text  # the logs were captured
    stored = b"".join(dead) + b"".join(
        p.read_bytes() for p in (tmp_path / "outbox").rglob("*") if p.is_file()
    )
    stored += (tmp_path / "state.json").read_bytes()
    assert b"permanent failure: HTTP 400" in stored  # the outbox holds the dead-lettered row
    for n in needles:
        assert n not in text, "a secret is in the logs"
        assert n.encode() not in stored, "a secret is in a dead letter, the outbox or the state"
