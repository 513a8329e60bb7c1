"""The device ACL of the scale-out profile on the REAL 3-node NATS cluster of scripts/nats.sh,
whose account P2ES holds the users deploy/nats/add-user.sh makes (the script of the compose
profile, so the permissions tested here are the deployed ones).

A wearable may publish only its own patient's subjects (over MQTT, into any node): what it
publishes on another patient's subject, on vitals or on dead letters is acknowledged by the server
and delivered to nobody.  The engine's account runs a real worker (``ingest.bus``) end to end:
it sets up the streams and consumers, owns shards, receives the wearable's chunks, publishes
vitals and dead letters, and may neither publish PPG nor delete the stream.  Wrong passwords and
the wrong connection type are refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import services

pytestmark = [pytest.mark.services, pytest.mark.nats]

REPO = Path(__file__).resolve().parent.parent
ADD_USER = REPO / "deploy" / "nats" / "add-user.sh"
SHARDS = 8  # as tests/test_scaleout.py: the partition of the shared stream stays the same


def _add_user(
    file: Path, name: str, password: str | None = None, cost: int = 4
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "P2ES_NATS_USERS": str(file), "P2ES_NATS_BCRYPT_COST": str(cost)}
    return subprocess.run(
        ["bash", str(ADD_USER), name, *([password] if password else [])],
        capture_output=True,
        text=True,
        env=env,
    )


def test_add_user_script_writes_hashed_users_with_their_role(tmp_path) -> None:
    f = tmp_path / "users.conf"
    r = _add_user(f, "ward7.bed1")
    assert r.returncode == 0, r.stderr
    pw = re.search(r"password: (\S+)$", r.stdout.strip())
    assert pw and len(pw[1]) >= 20
    for name in ("p2es-engine", "p2es-alerts", "bed-2"):
        assert _add_user(f, name, "chosen-password").returncode == 0
    assert _add_user(f, "bed-2", "changed").returncode == 0  # a change keeps one entry
    text = f.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("{user:")]
    assert [re.match(r'\{user: "([^"]+)"', ln)[1] for ln in lines] == [  # type: ignore[index]  # matched above
        "ward7.bed1",
        "p2es-engine",
        "p2es-alerts",
        "bed-2",
    ]
    assert "chosen-password" not in text and pw[1] not in text  # stored hashed
    assert all(re.search(r'password: "\$2[abxy]\$04\$', ln) for ln in lines)
    dev = lines[0]
    # a `.` of the patient id is `//` in the NATS subject (its MQTT mapping); MQTT only
    assert '"p2es.v1.patients.ward7//bed1.ppg"' in dev and '["MQTT"]' in dev and "*" not in dev
    assert '["STANDARD"]' in lines[1] and '"p2es.v1.patients.*.vitals"' in lines[1]
    assert "patients.*.ppg" not in lines[1] and "STREAM.DELETE" not in lines[1]
    for bad in ("bad/id", "a*", "a>b", ""):
        r = _add_user(f, bad, "x")
        assert r.returncode == 2 and "not a valid patient id" in r.stderr, bad
    assert _add_user(f, "bed-3", 'a"b').returncode == 2
    # nats-server accepts the file inside an account (the way deploy/nats/nats.conf includes it)
    (tmp_path / "n.conf").write_text('accounts { P2ES { jetstream: enabled\ninclude "users.conf" } }\n')
    nats_server = REPO / ".venv" / "bin" / "nats-server"
    r2 = subprocess.run(
        [str(nats_server), "-t", "-c", str(tmp_path / "n.conf")], capture_output=True, text=True
    )
    assert r2.returncode == 0, r2.stdout + r2.stderr


@pytest.fixture(scope="module")
def nats_cluster() -> list[str]:
    """The test cluster; started (missing nodes only) by scripts/nats.sh if needed."""
    nodes = range(1, services.nats_nodes() + 1)
    if not all(services.nats_healthy(i) for i in nodes):
        try:
            services.start_nats()
        except Exception as e:  # noqa: BLE001 - reported as a failure, never a skip
            pytest.fail(
                f"the NATS cluster is not running and scripts/nats.sh start failed: {e}", pytrace=False
            )
    return [f"nats://{services.HOST}:{services.nats_port(i)}" for i in nodes]


def _mqtt(user: str | None, node: int, password: str | None = None):
    import aiomqtt

    return aiomqtt.Client(
        services.HOST,
        services.nats_mqtt_port(node),
        username=user,
        password=password if password is not None else (services.nats_password(user) if user else None),
        identifier=f"acl-{(user or 'anon').replace('.', '_')}-{time.monotonic_ns() % 10**9}",
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )


def _chunk(seq: int, t0: float) -> bytes:
    return json.dumps(
        {"seq": seq, "t0": t0, "fs": 128.0, "samples": [0.01 * (i % 50) for i in range(128)]}
    ).encode()


def test_device_acl_and_engine_account_on_the_cluster(nats_cluster) -> None:
    import aiomqtt
    import nats

    from ingest.bus import BusIngestService
    from p2es.contracts.topics import vitals_topic
    from p2es.transport.nats import BusLayout, JetStreamApi, JsApiError

    async def main() -> None:
        got: list[tuple[str, bytes]] = []
        admin = await nats.connect(nats_cluster)  # no credentials: the test cluster's admin user

        async def collect(m) -> None:
            got.append((m.subject, m.data))

        await admin.subscribe("p2es.v1.>", cb=collect)
        await admin.flush()
        svc = BusIngestService(
            nats_cluster,
            BusLayout(shards=SHARDS, replicas=3),
            worker_id=f"acl-worker-{time.monotonic_ns()}",
            username="p2es-engine",
            password=services.nats_password("p2es-engine"),
            replay_s=4.0,
        )
        svc.start()
        try:
            await asyncio.wait_for(svc.ready.wait(), 30)  # streams, 8 consumers, membership: allowed
            assert svc.failed is None, svc.failed
            t0 = float(int(time.time()) - 12)
            seq0 = int(t0)  # above any seq of an earlier run still in the stream
            async with _mqtt("acl-bed1", 2) as dev:
                for i in range(12):
                    await dev.publish("p2es/v1/patients/acl-bed1/ppg", _chunk(seq0 + i, t0 + i), qos=1)
                await dev.publish("p2es/v1/patients/acl-bed1/ppg", b"not json", qos=1)  # -> dead letter
                await dev.publish("p2es/v1/patients/acl-bed1/profile", b'{"age": 50}', qos=1, retain=True)
                # another patient's subjects and the engine's: acknowledged, never delivered
                await dev.publish("p2es/v1/patients/acl.bed2/ppg", b"FORGED-PPG", qos=1)
                await dev.publish("p2es/v1/patients/acl.bed2/profile", b"FORGED-PROFILE", qos=1, retain=True)
                await dev.publish("p2es/v1/patients/acl-bed1/vitals", b"FORGED-VITALS", qos=1)
                await dev.publish("p2es/v1/deadletter", b"FORGED-DL", qos=1)
                await dev.publish("p2es/v1/alerts/ack", b"FORGED-ACK", qos=1)
                # reading another patient's profile is refused (SUBACK failure)
                granted = await dev.subscribe("p2es/v1/patients/acl.bed2/profile", qos=1)
                assert list(granted) and all(int(getattr(g, "value", g)) == 0x80 for g in granted), granted
            async with _mqtt("acl.bed2", 3) as dev2:  # a `.` in the id: subject token `acl//bed2`
                await dev2.publish("p2es/v1/patients/acl.bed2/ppg", b"bed2-own", qos=1)

            # the worker (account p2es-engine) gets the chunks of its shards: a window of acl-bed1
            deadline = time.monotonic() + 30
            while True:
                w = await asyncio.wait_for(svc.windows.get(), max(0.1, deadline - time.monotonic()))
                if w.patient == "acl-bed1" and w.t0 >= t0 - 0.01:
                    break
            assert await svc.publish(vitals_topic("acl-bed1"), b'{"acl": "vitals-ok"}')
            # not allowed for the engine: a patient's PPG (dropped), deleting the stream (no reply)
            await svc.publish_subject("p2es.v1.patients.acl-bed1.ppg", b"ENGINE-FORGED")
            assert svc.nc is not None
            with pytest.raises(JsApiError):
                await JetStreamApi(svc.nc, timeout_s=1.0).request(
                    f"$JS.API.STREAM.DELETE.{svc.layout.stream}"
                )
            info = await JetStreamApi(admin).stream_info(svc.layout.stream)
            assert info["config"]["name"] == svc.layout.stream  # still there
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(b"vitals-ok" in d for _, d in got):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # anything late would arrive now
        finally:
            await svc.stop()
            await admin.close()

        subjects = [s for s, _ in got]
        payloads = [d for _, d in got]
        assert not any(b"FORGED" in d for d in payloads), [(s, d[:40]) for s, d in got if b"FORGED" in d]
        assert subjects.count("p2es.v1.patients.acl-bed1.ppg") == 13  # 12 chunks + the bad one
        assert ("p2es.v1.patients.acl-bed1.profile", b'{"age": 50}') in got
        assert ("p2es.v1.patients.acl//bed2.ppg", b"bed2-own") in got
        assert ("p2es.v1.patients.acl-bed1.vitals", b'{"acl": "vitals-ok"}') in got
        dls = [json.loads(d) for s, d in got if s == "p2es.v1.deadletter"]
        assert any(d.get("topic") == "p2es/v1/patients/acl-bed1/ppg" for d in dls), dls  # the engine's
        assert svc.bus_counters()["shards_acquired"] >= 1

    asyncio.run(main())

    # the alert service's account reads vitals, not PPG; wrong credentials are refused
    async def accounts() -> None:
        async with _mqtt("p2es-alerts", 1) as al:
            ok = await al.subscribe("p2es/v1/patients/+/vitals", qos=1)
            bad = await al.subscribe("p2es/v1/patients/+/ppg", qos=1)
        assert [int(getattr(g, "value", g)) for g in ok] == [1], ok
        assert [int(getattr(g, "value", g)) for g in bad] == [0x80], bad
        for user, pw in (("acl-bed1", "wrong"), ("nobody", "x")):
            with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori[sz]ed|bad user ?name|refused"):
                async with _mqtt(user, 1, pw):
                    pass
        with pytest.raises(Exception, match=r"(?i)authori[sz]ation"):  # a wearable on the NATS port
            await nats.connect(
                nats_cluster[:1],
                user="acl-bed1",
                password=services.nats_password("acl-bed1"),
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )

    asyncio.run(accounts())
