"""Simulated wearables: publish PPG of simulated patients over MQTT, per the ingest contract.

Each patient gets one long continuous record from :func:`wearable.sim.synthesize` (the whole run
at once, 128 Hz), resampled (``scipy.signal.resample_poly``) to the patient's device rate, drawn
from ``fs_choices``.  With ``duration_s=None`` (run until stopped) a ``loop_s`` record is
synthesised and replayed in a loop (the sample clock and ``seq`` keep running; there is a
waveform seam at each loop point).

Per patient: the retained profile (``p2es/v1/patients/{id}/profile``), then one chunk of
``chunk_s`` seconds every ``chunk_s / speed`` wall seconds on ``.../ppg`` (JSON) or
``.../ppg/bin`` (binary, with probability ``binary``), ``seq`` 0, 1, 2 ... and
``t0 = start + offset`` (device clock = wall clock at start, then the signal's own time).
``reorder`` (probability of swapping a chunk with the next one) and ``duplicate`` (probability
of sending a chunk twice) exercise the ingest's re-ordering.  A lost broker connection is
retried (with backoff) without losing chunks; SIGINT/SIGTERM stop after the chunk in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aiomqtt
import numpy as np
from scipy.signal import resample_poly

from p2es.contracts.ppg import encode_binary_chunk
from p2es.contracts.topics import ppg_topic, profile_topic
from p2es.transport.mqtt import Backoff, MqttEndpoint
from p2es.transport.tls import check_server
from wearable.sim import record_profile, synthesize

log = logging.getLogger("p2es.publisher")

__all__ = ["SimPatient", "make_patients", "simulate", "simulate_async"]

FS_CHOICES = (25, 64, 100, 125, 250, 500)


@dataclass
class SimPatient:
    id: str
    fs: float
    ppg: np.ndarray  # at fs
    profile: dict[str, Any]
    rhythm: str


def _resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    if fs_in == fs_out:
        return x.copy()
    r = Fraction(fs_out / fs_in).limit_denominator(1000)
    y: np.ndarray = resample_poly(x, r.numerator, r.denominator)
    return y


def make_patients(
    patients: int,
    *,
    seed: int = 0,
    duration_s: float = 60.0,
    fs_choices: Sequence[float] = FS_CHOICES,
    prefix: str = "sim",
    fs_list: Sequence[float] | None = None,
) -> list[SimPatient]:
    d = synthesize(int(patients), int(seed), duration_s=float(duration_s), fs=128.0)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(patients)):
        fs = float(fs_list[i % len(fs_list)]) if fs_list else float(rng.choice(list(fs_choices)))
        out.append(
            SimPatient(
                f"{prefix}-{i:03d}",
                fs,
                _resample(d["ppg"][i], 128.0, fs),
                record_profile(d, i),
                str(d["rhythm"][i]),
            )
        )
    return out


async def simulate_async(
    broker_url: str,
    patients: int | list[SimPatient] = 3,
    *,
    speed: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
    chunk_s: float = 1.0,
    fs_choices: Sequence[float] = FS_CHOICES,
    fs_list: Sequence[float] | None = None,
    prefix: str = "sim",
    binary: float = 0.0,
    reorder: float = 0.0,
    duplicate: float = 0.0,
    username: str | None = None,
    password: str | None = None,
    t_start: float | None = None,
    loop_s: float = 600.0,
    stop: asyncio.Event | None = None,
    mqtt_version: str = "5",
    tls_context: ssl.SSLContext | None = None,
    ca_file: str | None = None,
) -> dict[str, int]:
    """Publish until ``duration_s`` of signal is sent (or ``stop`` is set); returns counters.

    ``mqtts://``: verified with ``tls_context`` (:func:`p2es.transport.settings.mqtt_tls_context`;
    ``ca_file`` only names the CA file in messages).  A broker certificate that does not verify,
    or a client certificate the broker refuses -> :class:`p2es.errors.P2esError` (one line)
    before anything is published; a broker that does not answer is retried."""
    if speed <= 0 or chunk_s <= 0:
        raise ValueError("speed and chunk_s must be positive")
    endpoint = MqttEndpoint.from_url(
        broker_url,
        username=username or None,
        password=password or None,
        version=mqtt_version,
        tls_context=tls_context,
    )
    if endpoint.tls_context is not None:
        await check_server(
            endpoint.host,
            endpoint.port,
            endpoint.tls_context,
            what="MQTT broker",
            ca_option="--mqtt-ca-file",
            ca_file=ca_file,
        )
    if isinstance(patients, int):
        pats = make_patients(
            patients,
            seed=seed,
            duration_s=duration_s or loop_s,
            fs_choices=fs_choices,
            prefix=prefix,
            fs_list=fs_list,
        )
    else:
        pats = list(patients)
    stop = stop or asyncio.Event()
    rng = random.Random(seed)
    t_start = time.time() if t_start is None else float(t_start)
    counters = {"chunks": 0, "duplicates": 0, "swapped": 0, "reconnects": 0, "profiles": 0}

    # the message plan for one "tick" (chunk index) of every patient
    def chunk(p: SimPatient, j: int) -> tuple[str, bytes]:
        n = int(round(chunk_s * p.fs))
        a = (j * n) % p.ppg.size
        x = np.take(p.ppg, np.arange(a, a + n), mode="wrap")
        t0 = t_start + j * n / p.fs
        if binary and rng.random() < binary:
            return ppg_topic(p.id, binary=True), encode_binary_chunk(j, t0, p.fs, x)
        body = {
            "seq": j,
            "t0": t0,
            "fs": p.fs,
            "samples": [round(float(v), 6) for v in x],
            "device": f"sim-{p.id}",
        }
        return ppg_topic(p.id), json.dumps(body).encode()

    n_chunks = None if duration_s is None else int(duration_s // chunk_s)
    client: aiomqtt.Client | None = None
    stack = contextlib.AsyncExitStack()

    async def connect() -> aiomqtt.Client:
        nonlocal client
        backoff = Backoff(0.2, 5.0)
        while not stop.is_set():
            c = endpoint.client(persistent=False)
            fut = getattr(c, "_disconnected", None)  # aiomqtt sets an error here on a lost
            if isinstance(fut, asyncio.Future):  # connection; we handle it via publish()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                await stack.enter_async_context(c)
                client = c
                return c
            except aiomqtt.MqttError as e:
                log.warning("publisher: broker %s unavailable (%s); retrying", endpoint.address, e)
                await asyncio.sleep(backoff.next_delay())
        raise asyncio.CancelledError

    async def publish(topic: str, payload: bytes, retain: bool = False) -> None:
        nonlocal client
        while True:
            if client is None:
                client = await connect()
                counters["reconnects"] += 1
            try:
                await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
                return
            except aiomqtt.MqttError as e:
                log.warning("publisher: publish failed (%s); reconnecting", e)
                with contextlib.suppress(Exception):
                    await stack.aclose()
                client = None
                await asyncio.sleep(0.2)

    t_wall0 = time.monotonic()
    try:
        await connect()
        for p in pats:
            await publish(profile_topic(p.id), json.dumps(p.profile).encode(), retain=True)
            counters["profiles"] += 1
        held: dict[str, tuple[str, bytes]] = {}
        j = 0
        while not stop.is_set() and (n_chunks is None or j < n_chunks):
            due = t_wall0 + j * chunk_s / speed
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            last = n_chunks is not None and j == n_chunks - 1
            for p in pats:
                msg = chunk(p, j)
                if p.id in held:  # the swapped predecessor goes after this one
                    await publish(*msg)
                    await publish(*held.pop(p.id))
                    counters["chunks"] += 2
                elif reorder and not last and rng.random() < reorder:
                    held[p.id] = msg
                    counters["swapped"] += 1
                    continue
                else:
                    await publish(*msg)
                    counters["chunks"] += 1
                if duplicate and rng.random() < duplicate:
                    await publish(*msg)
                    counters["duplicates"] += 1
            j += 1
        for msg in held.values():
            await publish(*msg)
            counters["chunks"] += 1
        counters["ticks"] = j
    finally:
        with contextlib.suppress(Exception):
            await stack.aclose()
    return counters


def simulate(
    broker_url: str,
    patients: int = 3,
    speed: float = 1.0,
    seed: int = 0,
    duration_s: float | None = None,
    chunk_s: float = 1.0,
    fs_choices: Sequence[float] = FS_CHOICES,
    **kw: Any,
) -> dict[str, int]:
    """Blocking entry point; SIGINT/SIGTERM stop it cleanly (after the chunk in flight)."""

    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await simulate_async(
            broker_url,
            patients,
            speed=speed,
            seed=seed,
            duration_s=duration_s,
            chunk_s=chunk_s,
            fs_choices=fs_choices,
            stop=stop,
            **kw,
        )

    return asyncio.run(main())
