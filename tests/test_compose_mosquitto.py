"""The stack's Mosquitto password file + ACL on a REAL private Mosquitto (the installed 2.0.x
binary, a free 127.0.0.1 port): the accounts are made by deploy/mosquitto/add-device.sh, the
broker runs with the directives of deploy/mosquitto/mosquitto.conf (paths and port adapted) and
deploy/mosquitto/acl as it is.

A device may publish to its own patient's topics; what it publishes to another patient's topic
is not delivered; anonymous and wrong-password clients are refused.  The TLS listeners run with
a CA, broker and device certificates made by deploy/tls/pki.sh: password login over TLS, a
device certificate as the login, and a rotated-out certificate refused once revoked and the
broker sent SIGHUP (deploy/tls.md).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_account(passwd: Path, name: str, password: str | None = None) -> str:
    args = ["bash", str(REPO / "deploy/mosquitto/add-device.sh"), name] + ([password] if password else [])
    r = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/sbin", "P2ES_MOSQUITTO_PASSWD": str(passwd)},
    )
    assert r.returncode == 0, r.stderr
    if password:
        return password
    m = re.search(r"password: (\S+)$", r.stdout.strip())
    assert m, r.stdout
    return m.group(1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto binary not found (scripts/services.sh installs it)")
    tmp = tmp_path_factory.mktemp("mosq")
    passwd = tmp / "passwd"
    accounts = {name: add_account(passwd, name) for name in ("ward7-bed1", "ward7-bed2", "p2es-engine")}
    port, tls_port, cert_port = _free_port(), _free_port(), _free_port()
    pki = tmp / "pki"
    pki_env = {"PATH": "/usr/bin:/bin:/usr/sbin", "P2ES_PKI_DIR": str(pki)}
    for args in (["init", "localhost"], ["device", "ward7-bed1"]):
        r = subprocess.run(
            ["bash", str(REPO / "deploy/tls/pki.sh"), *args], capture_output=True, text=True, env=pki_env
        )
        assert r.returncode == 0, r.stderr
    # the deploy listeners, in order: plain (health check), TLS + password, TLS + certificate
    ports = iter([port, tls_port, cert_port])
    secret_files = {"tls_ca": "tls_ca.pem", "mosquitto_cert": "mosquitto_cert.pem"}
    secret_files |= {"mosquitto_key": "mosquitto_key.pem", "tls_crl": "tls_crl.pem"}
    conf = []
    for ln in (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines():
        key = ln.split(" ", 1)[0]
        if key == "listener":
            ln = f"listener {next(ports)} 127.0.0.1"
        elif key in ("cafile", "certfile", "keyfile", "crlfile"):
            ln = f"{key} {pki / secret_files[ln.rsplit('/', 1)[1]]}"
        elif key == "password_file":
            ln = f"password_file {passwd}"
        elif key == "acl_file":
            ln = f"acl_file {REPO / 'deploy/mosquitto/acl'}"
        elif key in ("persistence", "persistence_location"):
            ln = "persistence false" if key == "persistence" else ""
        conf.append(ln)
    import getpass

    # run as the test's user (as root, mosquitto would switch to user "mosquitto", who cannot
    # read pytest's private tmp directory)
    text = "\n".join(conf) + f"\nuser {getpass.getuser()}\n"
    assert "allow_anonymous false" in text
    (tmp / "mosquitto.conf").write_text(text)
    log = open(tmp / "log", "w")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(tmp / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"private mosquitto did not start: {(tmp / 'log').read_text()}")
                time.sleep(0.05)
        yield {
            "port": port,
            "tls_port": tls_port,
            "cert_port": cert_port,
            "accounts": accounts,
            "passwd": passwd,
            "pki": pki,
            "pki_env": pki_env,
            "proc": proc,
        }
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_add_device_script(tmp_path):
    f = tmp_path / "pw"
    p1 = add_account(f, "bed-1")
    p2 = add_account(f, "bed-2", "chosen-password")
    assert len(p1) >= 20 and p2 == "chosen-password"
    lines = f.read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["bed-1", "bed-2"]
    assert "chosen-password" not in f.read_text()  # stored hashed
    add_account(f, "bed-1", "new")  # changing a password keeps one entry
    assert len(f.read_text().splitlines()) == 2
    r = subprocess.run(
        ["bash", str(REPO / "deploy/mosquitto/add-device.sh"), "bad/id"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "P2ES_MOSQUITTO_PASSWD": str(f)},
    )
    assert r.returncode == 2 and "not a valid patient id" in r.stderr


def test_device_writes_only_its_own_patient_topics(broker):
    import aiomqtt

    port, acc = broker["port"], broker["accounts"]

    def client(user, **kw):
        return aiomqtt.Client(
            "127.0.0.1",
            port,
            username=user,
            password=acc[user],
            protocol=aiomqtt.ProtocolVersion.V5,
            identifier=f"{user}-t",
            **kw,
        )

    async def main():
        got: list[tuple[str, bytes]] = []
        async with client("p2es-engine") as engine:
            await engine.subscribe("p2es/v1/patients/#", qos=1)
            async with client("ward7-bed1") as dev:
                await dev.publish("p2es/v1/patients/ward7-bed1/ppg", b"own-json", qos=1)
                await dev.publish("p2es/v1/patients/ward7-bed1/ppg/bin", b"own-bin", qos=1)
                await dev.publish("p2es/v1/patients/ward7-bed1/profile", b"own-profile", qos=1)
                await dev.publish("p2es/v1/patients/ward7-bed2/ppg", b"FORGED", qos=1)
                await dev.publish("p2es/v1/patients/ward7-bed1/vitals", b"FORGED-VITALS", qos=1)
                await dev.publish("p2es/v1/deadletter", b"FORGED-DL", qos=1)
            async with client("ward7-bed2") as dev2:
                await dev2.publish("p2es/v1/patients/ward7-bed2/ppg", b"bed2-own", qos=1)

            async def collect():
                async for m in engine.messages:
                    got.append((str(m.topic), bytes(m.payload)))
                    if m.payload == b"bed2-own":
                        return

            await asyncio.wait_for(collect(), 10)
            await asyncio.sleep(0.5)  # anything late would arrive now
        return got

    got = asyncio.run(main())
    payloads = [p for _, p in got]
    assert payloads == [b"own-json", b"own-bin", b"own-profile", b"bed2-own"], got
    assert not any(b"FORGED" in p for p in payloads)


def test_anonymous_and_wrong_password_are_refused(broker):
    import aiomqtt

    port = broker["port"]

    async def connect(**kw):
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5, **kw):
            pass

    for kw in ({}, {"username": "ward7-bed1", "password": "wrong"}, {"username": "nobody", "password": "x"}):
        with pytest.raises(aiomqtt.MqttError) as e:
            asyncio.run(connect(**kw))
        assert re.search(r"(?i)not authori[sz]ed|bad user ?name or password|refused", str(e.value)), (
            kw,
            e.value,
        )
    asyncio.run(
        connect(username="ward7-bed1", password=broker["accounts"]["ward7-bed1"])
    )  # the right one works


def test_deploy_conf_plain_listener_is_container_local_and_tls_is_published():
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    listeners = re.findall(r"^listener (.*)$", conf, re.M)
    assert listeners == ["1883 127.0.0.1", "8883", "8884"], listeners
    text = (REPO / "compose.yaml").read_text()
    import yaml

    ports = yaml.safe_load(text)["services"]["mosquitto"]["ports"]
    assert all(":1883" not in p for p in ports) and any(p.endswith(":8883") for p in ports), ports


def _tls(pki: Path, cert: str | None = None, key: str | None = None):
    from p2es.transport.tls import client_context

    return client_context(str(pki / "tls_ca.pem"), cert, key)


def test_password_login_over_tls(broker):
    """The engine's account over the TLS password listener: verified against tls_ca.pem."""
    import aiomqtt

    async def main():
        async with aiomqtt.Client(
            "localhost",
            broker["tls_port"],
            username="p2es-engine",
            password=broker["accounts"]["p2es-engine"],
            tls_context=_tls(broker["pki"]),
            timeout=5,
        ) as c:
            await c.publish("p2es/v1/patients/ward7-bed1/vitals", b"{}", qos=1, timeout=5)

    asyncio.run(main())


def test_device_certificate_login_rotation_and_revocation(broker):
    """A certificate from pki.sh is the device's login (CN = patient id, the ACL applies); after
    a rotation the old certificate still works until it is revoked and the broker gets SIGHUP."""
    import aiomqtt

    from p2es.errors import P2esError
    from p2es.transport.tls import check_server

    pki, dev = broker["pki"], broker["pki"] / "devices"
    old_cert, old_key = dev / "ward7-bed1.rotated.pem", dev / "ward7-bed1.rotated.key"
    shutil.copy(dev / "ward7-bed1.pem", old_cert)
    shutil.copy(dev / "ward7-bed1.key", old_key)

    def pki_sh(*args: str) -> None:
        r = subprocess.run(
            ["bash", str(REPO / "deploy/tls/pki.sh"), *args],
            capture_output=True,
            text=True,
            env=broker["pki_env"],
        )
        assert r.returncode == 0, r.stderr

    async def publish(cert: Path, key: Path) -> None:
        ctx = _tls(pki, str(cert), str(key))
        await check_server("localhost", broker["cert_port"], ctx, what="MQTT broker")
        async with aiomqtt.Client("localhost", broker["cert_port"], tls_context=ctx, timeout=5) as c:
            await c.publish("p2es/v1/patients/ward7-bed1/ppg", b"x", qos=1, timeout=5)

    asyncio.run(publish(old_cert, old_key))
    pki_sh("device", "ward7-bed1")  # rotation: a new certificate and key for the device
    new_cert, new_key = dev / "ward7-bed1.pem", dev / "ward7-bed1.key"
    asyncio.run(publish(new_cert, new_key))
    asyncio.run(publish(old_cert, old_key))  # still valid: not revoked yet
    pki_sh("revoke", str(old_cert))
    broker["proc"].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:  # the reload is asynchronous
        try:
            asyncio.run(publish(old_cert, old_key))
        except P2esError as e:
            assert "TLS handshake failed" in str(e) and "revoked" in str(e), e
            break
        except aiomqtt.MqttError:
            # a connection caught in the middle of the reload can hang and time out (seen once
            # in CI): neither accepted nor refused, so it decides nothing -- try again
            pass
        assert time.monotonic() < deadline, "revoked certificate still accepted after SIGHUP"
        time.sleep(0.2)
    asyncio.run(publish(new_cert, new_key))  # the new one is unaffected
