"""Hostile input at volume (issue #15, item 4), the short version of ``bench/hostile.py``.

The live test runs the bench's own code with 3,000 hostile messages instead of 100,000: the real
Mosquitto (a private one from scripts/mosquitto.sh, so that nothing else mixes with the counts),
the real ``Pipeline`` writing to the real InfluxDB, the tests' tiny checkpoint.  It asserts what
the bench asserts: every hostile message accounted for (dead-lettered with its reason -- counted
in ``p2es_messages_invalid_total`` and seen on ``p2es/v1/deadletter`` with the same topic -- or
counted by the streams as used / duplicate / late / overlap dropped), the engine up and clean,
and the 10 normal patients' ECG, PPG and vitals in InfluxDB bit-identical to a run without the
hostile traffic.  ``make hostile`` runs the 100,000-message version.

Also here, without services: the corpus behaves offline (real parser, real StreamRegistry) as it
says, and two regression tests of defects the bench found (the stream counters read from the
metrics thread; the broker's per-subscriber queue).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("p2es_bench_hostile", REPO / "bench" / "hostile.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


hostile = _load_bench()
T_BASE = 1_750_000_000.0


def test_corpus_is_deterministic_and_behaves_offline_as_it_says():
    from p2es.contracts.ppg import DEADLETTER_CODES

    h = hostile.Hostile(seed=3, t_base=T_BASE)
    heps = list(hostile.corpus(h, 4000))
    normal = hostile.Normal(10, 3, 12.0, T_BASE)
    eps = heps + [[normal.chunk(i, j), *normal.attacks(i, j)] for j in range(normal.ticks) for i in range(10)]
    assert hostile.check_offline(eps, T_BASE) == []
    msgs = [m for ep in eps for m in ep]
    outcomes = Counter(m.outcome for m in msgs)
    # every reason code of the parser (not internal_error; rate_limited is the per-patient budget's,
    # off by default) and every stream outcome is exercised
    assert set(DEADLETTER_CODES) - {"internal_error", "rate_limited"} <= set(outcomes), outcomes
    assert set(hostile.STREAM_OUTCOMES) | {"profile"} <= set(outcomes), outcomes
    events = Counter()
    for m in msgs:
        events.update(dict(m.events))
    assert all(events[e] > 0 for e in hostile.EVENTS), events
    assert any(m.kind.startswith("normal_") and m.outcome == "duplicate" for m in msgs)  # replays
    # the same seed gives the same bytes; another seed does not
    again = [m.payload for ep in hostile.corpus(hostile.Hostile(3, T_BASE), 4000) for m in ep]
    assert again == [m.payload for ep in heps for m in ep]
    other = [m.payload for ep in hostile.corpus(hostile.Hostile(4, T_BASE), 4000) for m in ep]
    assert other != again
    # the check can fail: a wrong expectation is reported
    first = heps[0][0]
    wrong = [[dataclasses.replace(first, outcome="used" if first.outcome == "bad_json" else "bad_json")]]
    assert hostile.check_offline(wrong, T_BASE)


def test_stream_stats_read_from_another_thread_while_patients_come_and_go():
    """Regression: the Prometheus endpoint reads ``StreamRegistry.stats()`` in its own thread; a
    hostile client spraying patient ids made it raise "OrderedDict mutated during iteration"
    (the scrape failed) and retiring streams could make a counter go backwards."""
    from ingest.stream import StreamConfig, StreamRegistry
    from p2es.contracts.ppg import PpgChunk

    reg = StreamRegistry(StreamConfig(compute_sqi=False), idle_s=50)
    chunk = PpgChunk(seq=0, t0=T_BASE, fs=100.0, samples=np.zeros(10))
    errors: list[str] = []
    backwards = [0]
    calls = [0]
    stop = threading.Event()

    def scrape() -> None:
        last = 0.0
        while not stop.is_set():
            try:
                n = reg.stats()["chunks_in"]
            except RuntimeError as e:
                errors.append(str(e))
                continue
            calls[0] += 1
            backwards[0] += n < last
            last = n

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the race shows within a second
    t = threading.Thread(target=scrape)
    t.start()
    try:
        i, t_end = 0, time.monotonic() + 1.5
        while time.monotonic() < t_end:
            reg.push(f"p{i}", chunk, now=float(i))
            i += 1
            if i % 100 == 0:
                reg.expire(now=float(i))
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert reg.expired > 0 and calls[0] > 100
    assert errors == [] and backwards[0] == 0, (errors[:3], backwards[0])
    assert reg.stats()["chunks_in"] == i


@pytest.mark.services
def test_broker_keeps_a_backlog_of_a_burst_for_the_engine(mqtt_broker, tmp_path):
    """Regression: with Mosquitto's default ``max_queued_messages`` (1000) a burst the engine had
    not read yet -- a flood, or a restart -- was silently dropped by the broker, every patient's
    messages with it.  scripts/mosquitto.sh (and deploy/mosquitto) now keep 100,000."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    n = 3000
    with hostile.PrivateBroker(tmp_path / "broker") as pb:
        got: list[int] = []

        def engine(clean: bool) -> mqtt.Client:
            c = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id="burst-engine",
                protocol=mqtt.MQTTv5,
            )
            c.on_message = lambda _c, _u, m: got.append(int(m.payload))
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
            c.connect("127.0.0.1", pb.port, clean_start=clean, properties=props)
            return c

        sub = engine(True)  # subscribes, then is away (a persistent session keeps queueing)
        sub.subscribe("p2es/v1/patients/#", qos=1)
        sub.loop_start()
        time.sleep(0.3)
        sub.loop_stop()
        sub.disconnect()
        pub = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="burst-pub", protocol=mqtt.MQTTv5
        )
        pub.connect("127.0.0.1", pb.port)
        pub.loop_start()
        infos = [pub.publish(f"p2es/v1/patients/b{i % 10}/ppg", str(i).encode(), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        sub = engine(False)  # back: the broker delivers the backlog
        sub.loop_start()
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        sub.loop_stop()
        sub.disconnect()
    assert sorted(got) == list(range(n)), f"{len(got)} of {n} delivered"
    deploy = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "max_queued_messages 100000" in deploy.splitlines()


@pytest.mark.services
def test_hostile_messages_accounted_for_and_normal_patients_untouched(
    tiny_ckpt, mqtt_broker, influxdb, tmp_path, one_torch_thread
):
    import asyncio

    t0 = time.monotonic()
    rep = asyncio.run(
        hostile.run_bench(
            3000,
            seed=7,
            normal_seconds=24.0,
            checkpoint=tiny_ckpt,
            engine="inproc",
            workdir=tmp_path,
            progress_s=0,
            self_check=0,
            broker="private",
        )
    )
    text = rep.tables()
    print(text, f"\n({time.monotonic() - t0:.0f} s)")
    assert rep.ok, text
    rows = {r["outcome"]: r for r in rep.outcomes}
    # the volume and the variety are there, and each row adds up on its own
    assert rep.summary["hostile_sent"] >= 3000
    for code in ("bad_utf8", "bad_json", "bad_binary", "invalid_ppg", "non_finite", "bad_patient_id"):
        r = rows[f"dead letter {code}"]
        assert r["sent (hostile)"] > 0 and r["engine metrics"] == r["sent (hostile)"] + r["sent (normal)"], r
        assert r["dead-letter topic"] == str(r["engine metrics"]), r
    assert rows["dead letter internal_error"]["engine metrics"] == 0
    assert (
        rows["valid chunk: duplicate"]["engine metrics"]
        == rows["valid chunk: duplicate"]["sent (hostile)"]
        > 0
    )
    total = rows["TOTAL (each message exactly one outcome)"]
    assert total["ok"] == "yes", total
    # the normal patients' output: the same points, bit for bit
    ident = {r["measurement"]: r for r in rep.identity}
    n_ecg = ident["ecg"]["points"].split(" / ")
    assert n_ecg[0] == n_ecg[1] and int(n_ecg[0]) >= 10 * 14 * 128, ident["ecg"]
    for r in ident.values():
        eq, n = r["values bitwise equal"].split("/")
        assert eq == n and r["max |diff|"] == "0", r
