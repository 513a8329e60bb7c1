"""The stack's Mosquitto password file + ACL on a REAL private Mosquitto (the installed 2.0.x
binary, a free 127.0.0.1 port): the accounts are made by deploy/mosquitto/add-device.sh, the
broker runs with the directives of deploy/mosquitto/mosquitto.conf (paths and port adapted) and
deploy/mosquitto/acl as it is.

A device may publish to its own patient's topics; what it publishes to another patient's topic
is not delivered; anonymous and wrong-password clients are refused.
"""

from __future__ import annotations

import asyncio
import re
import shutil
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
    port = _free_port()
    conf = []
    for ln in (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines():
        key = ln.split(" ", 1)[0]
        if key == "listener":
            ln = f"listener {port} 127.0.0.1"
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
        yield {"port": port, "accounts": accounts, "passwd": passwd}
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
