"""Chaos harness (issue #15, item 5): faults injected into real services, each promise measured.

    .venv/bin/python bench/chaos.py                  # every scenario at full length (~30 min)
    .venv/bin/python bench/chaos.py --short          # the short versions (tests/test_chaos.py)
    .venv/bin/python bench/chaos.py --scale 0.25     # the full plan with its times x 0.25
    .venv/bin/python bench/chaos.py --only engine_kill,clock_skew --markdown out/chaos.md

``make chaos`` runs the full plan.  It prints one row per scenario -- scenario | promise |
measured result | pass -- and exits 1 if any promise failed.

Everything is real: a private Mosquitto and InfluxDB started by ``scripts/mosquitto.sh`` and
``scripts/influxdb.sh`` on free ports under the work directory (the shared test services are
never touched), ``p2es run`` and ``p2es alerts run`` as child processes (``kill -9`` is
``SIGKILL``), simulated wearables publishing over MQTT at QoS 1 in real time, a verifying
webhook receiver (:class:`alerts.receiver.WebhookReceiver`), a tmpfs that really fills.  The
engine runs the light test settings (a tiny 2-step-trained checkpoint on torch, 2 sampler
steps, K = 1, one thread; ``--checkpoint shipped`` for the shipped set): what is measured is the
pipeline around the model.

Each scenario has a hard time bound (derived from its plan; it then fails as "timed out") and
restores in a ``finally`` whatever it stopped; the private services are stopped at the end, also
on failure or Ctrl-C.

Scenarios (``--only`` takes their names):

========================  =====================================================================
influx_outage             InfluxDB down 5 min under 20 patients -> zero points lost, spool
                          drained after, written in order (a recording proxy sees the order)
broker_restarts           Mosquitto restarted 3 times -> zero chunks lost at QoS 1 (persistent
                          sessions): an auditing subscriber and the engine's ECG both complete
engine_kill               ``kill -9`` of ``p2es run``, restart -> chunks sent while it was down
                          arrive, nothing written twice, the ECG gap measured at each point
                          of the hop (<= 2 hops + 1 chunk)
alerts_kill               ``kill -9`` of ``p2es alerts run`` twice, each while a webhook POST is
                          in flight -> no notification lost, the in-flight one re-sent with the
                          same webhook-id, so a receiver de-duplicating by id sees each once
webhook_500               the receiver answers 500 for 10 min -> all delivered afterwards, every
                          signature valid, in order per patient
spool_full                InfluxDB down and the spool's disk full -> one ERROR line,
                          ``p2es_spool_full`` = 1, vitals keep flowing on MQTT, no crash; back
                          to 0 once InfluxDB returns
clock_skew                device clocks +-1 h off (and one jumping there and back) -> dead
                          letters ``clock_skew`` beyond the tolerance (1800 s), nothing written
                          at a wrong time, no window across the jump
========================  =====================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from chaos_kit import (  # noqa: E402  (bench/chaos_kit.py)
    HOP,
    STEP_NS,
    Listener,
    Proc,
    Series,
    Services,
    T,
    Wearables,
    WriteRecorder,
    alerts_proc,
    ecg_span,
    engine_proc,
    expected_windows,
    fsize_limit,
    pct,
    tmpfs_prefix,
)

HOP_S = HOP / 128.0
WINDOW_S = T / 128.0
CHUNK_S = 1.0  # the simulated wearables' chunk length
CLOCK_TOLERANCE_S = 1800.0  # PipelineConfig.max_clock_skew_s default (p2es/contracts/ppg.py)


# ============================================================================ plan
@dataclass(frozen=True)
class Plan:
    """Every duration and size of one run (seconds unless named otherwise)."""

    outage_patients: int = 20
    outage_lead_s: float = 30.0
    outage_s: float = 300.0
    outage_tail_s: float = 30.0
    restart_patients: int = 10
    restart_signal_s: float = 120.0
    restarts: int = 3
    kill_patients: int = 10
    kill_before_s: float = 40.0
    kill_down_s: float = 20.0
    kill_between_s: float = 14.0  # after a restart, before the next kill (a window is written)
    kill_after_s: float = 40.0
    kill_phases: tuple[int, ...] = (0, 1, 2, 3)  # chunks past a window boundary at each kill
    alert_patients: int = 20
    webhook_patients: int = 10
    webhook_fail_s: float = 600.0
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_cap_s: float = 60.0
    full_patients: int = 5
    full_tmpfs_bytes: int = 1 << 20
    full_s: float = 90.0
    full_recover_s: float = 30.0
    skew_phase_s: float = 30.0
    skew_speed: float = 1.0

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def short(cls) -> Plan:
        """What tests/test_chaos.py runs (minutes in all on 2 busy cores)."""
        return cls(
            outage_patients=6,
            outage_lead_s=6.0,
            outage_s=12.0,
            outage_tail_s=6.0,
            restart_patients=4,
            restart_signal_s=24.0,
            kill_patients=4,
            kill_before_s=12.0,
            kill_down_s=5.0,
            kill_after_s=6.0,
            kill_phases=(1,),  # the worst case
            alert_patients=5,
            webhook_patients=3,
            webhook_fail_s=6.0,
            webhook_backoff_base_s=0.2,
            webhook_backoff_cap_s=1.0,
            full_patients=4,
            full_tmpfs_bytes=160 << 10,
            full_s=12.0,
            full_recover_s=8.0,
            skew_phase_s=20.0,
            skew_speed=4.0,
        )

    def scaled(self, f: float) -> Plan:
        """Times x ``f`` (patients and sizes unchanged); floors keep every scenario meaningful."""
        if f == 1.0:
            return self

        def s(v: float, lo: float) -> float:
            return max(lo, round(v * f, 1))

        return dataclasses.replace(
            self,
            outage_lead_s=s(self.outage_lead_s, 6),
            outage_s=s(self.outage_s, 10),
            outage_tail_s=s(self.outage_tail_s, 6),
            restart_signal_s=s(self.restart_signal_s, 24),
            kill_before_s=s(self.kill_before_s, 14),
            kill_down_s=s(self.kill_down_s, 5),
            kill_between_s=s(self.kill_between_s, 14),
            kill_after_s=s(self.kill_after_s, 14),
            webhook_fail_s=s(self.webhook_fail_s, 6),
            webhook_backoff_cap_s=s(self.webhook_backoff_cap_s, 1),
            full_s=s(self.full_s, 12),
            full_recover_s=s(self.full_recover_s, 8),
            skew_phase_s=s(self.skew_phase_s, 20),
        )


# ============================================================================ results
@dataclass
class Result:
    name: str
    fault: str
    promise: str
    measured: str
    passed: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    measured: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    svc: Services
    work: Path
    checkpoint: str
    plan: Plan
    tag: str  # unique prefix of this scenario's patients and client ids
    t0: float = field(default_factory=time.monotonic)

    name: str = ""

    def say(self, msg: str) -> None:
        print(f"  {self.name} [{time.monotonic() - self.t0:6.1f} s] {msg}", flush=True)


def table(results: list[Result]) -> str:
    """The markdown table: scenario | promise | measured result | pass."""
    rows = ["| scenario | promise | measured result | pass |", "| --- | --- | --- | --- |"]
    for r in results:
        cells = [f"**{r.name}**: {r.fault}", r.promise, r.measured, "yes" if r.passed else "**NO**"]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(rows)


# ============================================================================ helpers
def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


async def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def metric(proc: Proc, name: str, default: float = math.nan) -> float:
    return proc.metrics().get(name, default)


async def a_metric(proc: Proc, name: str, default: float = math.nan) -> float:
    return await asyncio.to_thread(metric, proc, name, default)


async def sleep_progress(ctx: Ctx, seconds: float, what: str, every: float = 60.0) -> None:
    """Sleep, saying how far along a long phase is."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, every))
        if end - time.monotonic() > 1:
            ctx.say(f"{what}: {seconds - (end - time.monotonic()):.0f} / {seconds:.0f} s")


async def drain_engine(
    eng: Proc, timeout: float, want_windows: int | None = None, quiet_s: float = 4.0
) -> bool:
    """Until the engine has ``want_windows`` windows (or, when None, its window count stood
    still for ``quiet_s``) with its queues empty and its spool drained."""
    deadline = time.monotonic() + timeout
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        m = await asyncio.to_thread(eng.metrics)
        w = m.get("p2es_windows_total", -1.0)
        idle = (
            m.get('p2es_queue_depth{queue="ingest"}', 1) == 0
            and m.get('p2es_queue_depth{queue="batcher"}', 1) == 0
            and m.get("p2es_spool_batches", 1) == 0
            and m.get("p2es_influx_down", 1) == 0
        )
        if w != last:
            last, since = w, time.monotonic()
        if idle and (w >= want_windows if want_windows is not None else time.monotonic() - since > quiet_s):
            await asyncio.sleep(1.5)  # the last windows' points: one writer flush
            return True
        await asyncio.sleep(0.5)
    return False


async def make_patients(n: int, signal_s: float, prefix: str, seed: int) -> list[Any]:
    from wearable.publisher import make_patients as mk

    return await asyncio.to_thread(mk, n, seed=seed, duration_s=signal_s + 2, prefix=prefix)


def check_runs(svc: Services, pids: list[str], t_start: float, signal_s: float) -> dict[str, Any]:
    """Each patient's ECG: one gap-free run from ``t_start`` with every expected sample."""
    want = ecg_span(expected_windows(signal_s))
    got, bad = {}, {}
    for pid in pids:
        t, _ = svc.ecg(pid)
        s = Series.of(t)
        got[pid] = int(t.size)
        ok = len(s.runs) == 1 and s.off_grid == 0 and t.size == want and int(t[0]) == round(t_start * 1e9)
        if not ok:
            bad[pid] = {"points": int(t.size), "runs": len(s.runs), "off_grid": s.off_grid}
    return {"want_per_patient": want, "points": sum(got.values()), "want": want * len(pids), "bad": bad}


def vitals_json(pid: str, t: float, hr: float) -> bytes:
    from p2es.contracts.vitals import Vitals

    v = Vitals(patient=pid, t=t, hr_bpm=hr, hr_ppg_bpm=hr, sqi=0.95, uncertainty=0.02)
    return v.to_json().encode()


async def publish(url: str, msgs: list[tuple[str, bytes]]) -> None:
    """QoS 1, each acknowledged by the broker before the next."""
    from p2es.transport.mqtt import MqttEndpoint

    ep = MqttEndpoint.from_url(url, client_id=f"chaos-pub-{uuid.uuid4().hex[:8]}")
    async with ep.client(persistent=False) as c:
        for topic, payload in msgs:
            await c.publish(topic, payload, qos=1, timeout=10)


# ============================================================================ scenarios
async def influx_outage(ctx: Ctx) -> Outcome:
    from wearable.publisher import simulate_async

    p, svc = ctx.plan, ctx.svc
    n = p.outage_patients
    signal_s = p.outage_lead_s + p.outage_s + p.outage_tail_s
    rec = WriteRecorder(svc.influx_port).start()
    eng = engine_proc(
        ctx.work,
        "engine",
        broker=svc.mqtt_url,
        influx_url=rec.url,
        checkpoint=ctx.checkpoint,
        client_id=f"{ctx.tag}-engine",
        spool_dir=ctx.work / "spool",
    )
    down = False
    pub: asyncio.Task[dict[str, int]] | None = None
    try:
        pats = await make_patients(n, signal_s, ctx.tag, seed=11)
        eng.start()
        await eng.wait_ready()
        t_start = float(int(time.time()))
        pub = asyncio.create_task(
            simulate_async(svc.mqtt_url, pats, speed=1.0, duration_s=signal_s, t_start=t_start, seed=3)
        )
        ctx.say(f"engine up, {n} patients publishing; InfluxDB goes down in {p.outage_lead_s:.0f} s")
        await asyncio.sleep(p.outage_lead_s)
        await asyncio.to_thread(svc.stop_influx)
        down, t_down = True, time.monotonic()
        seen_down = await wait_until(lambda: metric(eng, "p2es_influx_down") == 1, 30)
        ctx.say(f"InfluxDB stopped; engine sees it down: {seen_down}")
        peak = 0.0
        while (left := p.outage_s - (time.monotonic() - t_down)) > 0:
            await asyncio.sleep(min(left, 2.0))
            peak = max(peak, await a_metric(eng, "p2es_spool_batches", 0))
            if int(time.monotonic() - t_down) % 60 < 2 and left > 5:
                ctx.say(
                    f"outage {time.monotonic() - t_down:.0f} / {p.outage_s:.0f} s, {peak:.0f} batches spooled"
                )
            if not eng.alive:
                raise RuntimeError(f"the engine died during the outage:\n{eng.tail()}")
        await asyncio.to_thread(svc.start_influx)
        down, t_up = False, time.monotonic()
        outage = t_up - t_down
        ctx.say(f"InfluxDB back after {outage:.0f} s; spool peak {peak:.0f} batches; draining")
        sent = await pub
        want_w = n * expected_windows(signal_s)
        drained = await drain_engine(eng, timeout=max(120.0, p.outage_s), want_windows=want_w)
        drain_s = time.monotonic() - t_up
        spool_end = await a_metric(eng, "p2es_spool_batches")
        rc = await asyncio.to_thread(eng.stop)
        pids = [x.id for x in pats]
        runs = await asyncio.to_thread(check_runs, svc, pids, t_start, signal_s)
        ooo = sum(rec.out_of_order.get(pid, 0) for pid in pids)
        lost = runs["want"] - runs["points"]
        ok = (
            seen_down
            and drained
            and rc == 0
            and peak > 0
            and spool_end == 0
            and not runs["bad"]
            and lost == 0
            and ooo == 0
            and sent["chunks"] == n * int(signal_s)
        )
        measured = (
            f"{n} patients, InfluxDB down {outage:.0f} s: {peak:.0f} batches spooled at the peak, "
            f"spool empty {drain_s:.0f} s after it returned; ECG {runs['points']:,}/{runs['want']:,} "
            f"points ({lost} lost, {len(runs['bad'])} patients with gaps); {ooo} ECG points written "
            f"out of order ({rec.resent_bodies} whole batches re-sent)"
        )
        return Outcome(
            measured,
            ok,
            dict(
                outage_s=outage,
                spool_peak=peak,
                drain_s=drain_s,
                runs=runs,
                out_of_order=ooo,
                resent_bodies=rec.resent_bodies,
                dropped_connections=rec.dropped_connections,
                publisher=sent,
                engine_rc=rc,
            ),
        )
    finally:
        if pub is not None and not pub.done():
            pub.cancel()
        if down:
            await asyncio.to_thread(svc.start_influx)
        await asyncio.to_thread(eng.stop)
        rec.stop()


async def broker_restarts(ctx: Ctx) -> Outcome:
    from wearable.publisher import simulate_async

    p, svc = ctx.plan, ctx.svc
    n, signal_s = p.restart_patients, p.restart_signal_s
    eng = engine_proc(
        ctx.work,
        "engine",
        broker=svc.mqtt_url,
        influx_url=svc.influx_url,
        checkpoint=ctx.checkpoint,
        client_id=f"{ctx.tag}-engine",
        spool_dir=ctx.work / "spool",
    )
    audit = Listener(svc.mqtt_url, ["p2es/v1/patients/+/ppg"], client_id=f"{ctx.tag}-audit")
    pub: asyncio.Task[dict[str, int]] | None = None
    broker_down = False
    try:
        pats = await make_patients(n, signal_s, ctx.tag, seed=12)
        eng.start()
        await eng.wait_ready()
        await audit.start()
        t_start = float(int(time.time()))
        t_pub = time.monotonic()
        pub = asyncio.create_task(
            simulate_async(svc.mqtt_url, pats, speed=1.0, duration_s=signal_s, t_start=t_start, seed=4)
        )
        downs = []
        for k in range(p.restarts):
            at = (k + 1) * signal_s / (p.restarts + 1)
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t_pub)))
            t0 = time.monotonic()
            broker_down = True
            await asyncio.to_thread(svc.restart_broker)
            broker_down = False
            downs.append(time.monotonic() - t0)
            ctx.say(f"broker restart {k + 1}/{p.restarts} took {downs[-1]:.1f} s")
        sent = await pub
        pids = [x.id for x in pats]
        want = {(pid, j) for pid in pids for j in range(int(signal_s))}

        def audited() -> set[tuple[str, int]]:
            got = set()
            for _, topic, payload in audit.messages:
                pid = topic.split("/")[3]
                if pid.startswith(ctx.tag):
                    with contextlib.suppress(ValueError, KeyError):
                        got.add((pid, int(json.loads(payload)["seq"])))
            return got

        await wait_until(lambda: want <= audited(), 30)
        got = audited()
        drained = await drain_engine(eng, timeout=90, want_windows=n * expected_windows(signal_s))
        rc = await asyncio.to_thread(eng.stop)
        runs = await asyncio.to_thread(check_runs, svc, pids, t_start, signal_s)
        connects = eng.text().count("ingest connected")
        missing = len(want - got)
        ok = (
            missing == 0
            and drained
            and rc == 0
            and not runs["bad"]
            and runs["points"] == runs["want"]
            and connects >= p.restarts + 1
            and sent["chunks"] == len(want)
        )
        measured = (
            f"{p.restarts} restarts ({', '.join(f'{d:.1f}' for d in downs)} s each) under {n} patients: "
            f"{len(want & got)}/{len(want)} chunks reached the auditing subscriber, the engine "
            f"reconnected {connects - 1} times and wrote {runs['points']:,}/{runs['want']:,} ECG "
            f"points ({len(runs['bad'])} patients with gaps); the publisher reconnected {sent['reconnects']} times"
        )
        return Outcome(
            measured,
            ok,
            dict(restart_s=downs, missing=missing, runs=runs, publisher=sent, engine_connects=connects),
        )
    finally:
        if pub is not None and not pub.done():
            pub.cancel()
        if broker_down:
            await asyncio.to_thread(svc.start_broker)
        await audit.stop()
        await asyncio.to_thread(eng.stop)


async def engine_kill(ctx: Ctx) -> Outcome:
    """``kill -9`` at chosen points of the hop, each time restarted after ``kill_down_s``.

    ``Plan.kill_phases``: the stream the engine has received ends 0, 1, 2 or 3 s (chunks) past a
    window boundary of the current segment.  A kill loses what the engine held in memory: the
    stitcher's last hop, the window being filled, a window emitted but not yet written -- up to
    2 hops + 1 chunk of ECG.  The ingest journal (``ingest/journal.py``) has every accepted chunk
    on disk, and the restarted engine rebuilds each patient's stream from its last
    ``replay_s`` (16 s) before going live, so the promise is **no gap**: every patient's ECG is
    one run on the 1/128 s grid from the first sample to the last, and the points that change
    are only those of the replayed overlap (re-written at the same timestamps, with the
    rebuilt stream's windows).  Before the journal the gap was 1-2 hops + 1-3 chunks."""
    import numpy as np

    p, svc = ctx.plan, ctx.svc
    n = p.kill_patients
    hop = int(HOP_S)
    eng = engine_proc(
        ctx.work,
        "engine",
        broker=svc.mqtt_url,
        influx_url=svc.influx_url,
        checkpoint=ctx.checkpoint,
        client_id=f"{ctx.tag}-engine",
        spool_dir=ctx.work / "spool",
    )
    pub: asyncio.Task[int] | None = None
    stop = asyncio.Event()
    try:
        budget_s = (
            p.kill_before_s + len(p.kill_phases) * (p.kill_down_s + p.kill_between_s + 30) + p.kill_after_s
        )
        pats = await make_patients(n, budget_s, ctx.tag, seed=13)
        pids = [x.id for x in pats]
        eng.start()
        await eng.wait_ready()
        t_start = float(int(time.time()))
        wear = Wearables(svc.mqtt_url, pats, t_start, client_id=f"{ctx.tag}-wearables")
        pub = asyncio.create_task(wear.run(stop=stop))
        kills: list[dict[str, Any]] = []
        snapshots: list[dict[str, tuple[Any, Any]]] = []
        earliest, seg0 = p.kill_before_s, 0  # seg0: first chunk of the engine's current segment
        for phase in p.kill_phases:
            # the engine has chunks 0 .. ticks-1, i.e. the stream up to t_start + ticks
            at_kill = functools.partial(
                lambda e, ph, s0: wear.ticks >= e and (wear.ticks - s0) % hop == ph, earliest, phase, seg0
            )
            await wait_until(at_kill, 3600, 0.02)
            await asyncio.sleep(0.3)  # the last chunk is in the engine (and the next not yet sent)
            ticks = wear.ticks
            t_kill = await asyncio.to_thread(eng.kill9)
            ctx.say(
                f"engine killed (SIGKILL) with the stream {ticks} s long ({phase} s past a window boundary)"
            )
            await asyncio.sleep(1.0)  # a write the dead engine had on the wire lands (or not) now
            snapshots.append({pid: await asyncio.to_thread(svc.ecg, pid) for pid in pids})
            await asyncio.sleep(max(0.0, p.kill_down_s - 1.0))
            eng.start()
            await eng.wait_ready()
            t_back = time.time()
            kills.append(dict(phase=phase, device_end=t_start + ticks, down_s=t_back - t_kill, ticks=ticks))
            ctx.say(f"engine restarted, connected {t_back - t_kill:.1f} s after the kill")
            earliest, seg0 = wear.ticks + p.kill_between_s, ticks  # it resumes at chunk `ticks`
        await asyncio.sleep(p.kill_after_s)
        stop.set()
        ticks = await pub
        drained = await drain_engine(eng, timeout=90)
        rc = await asyncio.to_thread(eng.stop)
        end = t_start + ticks  # device time just after the last chunk
        replay_s = WINDOW_S + 2 * HOP_S  # PipelineConfig.effective_replay_s with the bench's window
        gaps: list[list[float]] = [[] for _ in kills]  # per kill: ECG missing around it, per patient
        depth: list[list[float]] = [[] for _ in kills]  # per kill: oldest re-written point, s before it
        rewritten, bad = 0, {}
        for pid in pids:
            t, v = await asyncio.to_thread(svc.ecg, pid)
            srs = Series.of(t)
            for i, snap in enumerate(snapshots):  # what was there at each kill: changed only in the replay
                tb, vb = snap[pid]
                pos = np.searchsorted(t, tb)
                there = (pos < t.size) & (t[np.minimum(pos, t.size - 1)] == tb)
                if not there.all():  # a point written before the kill is gone
                    bad[pid] = {"kill": i, "points_gone": int((~there).sum())}
                    break
                diff = v[pos] != vb
                if diff.any():
                    rewritten += int(diff.sum())
                    depth[i].append(kills[i]["device_end"] - tb[np.flatnonzero(diff)[0]] / 1e9)
            if pid in bad:
                continue
            if srs.off_grid:
                bad[pid] = {"off_grid": srs.off_grid}
                continue
            for i, k in enumerate(kills):  # the gap (if any) whose run ends nearest the kill
                end_ns = k["device_end"] * 1e9
                gaps[i].append(
                    max(
                        (g for (_, a1), g in zip(srs.runs, srs.gaps_s) if abs(a1 - end_ns) <= 30e9),
                        default=0.0,
                    )
                )
            if len(srs.runs) != 1:
                bad[pid] = {"runs": len(srs.runs)}
                continue
            # one run, complete: from the first chunk to the last window of the window grid the
            # last restart rebuilt (anchored at its first replayed chunk, replay_s before the kill)
            first, last = srs.runs[0]
            anchor = max(t_start, kills[-1]["device_end"] - replay_s) if kills else t_start
            want_last = int(anchor * 1e9) + (ecg_span(expected_windows(end - anchor)) - 1) * STEP_NS
            if first != int(t_start * 1e9) or last != want_last:
                bad[pid] = {"first": first, "last": last, "want_last": want_last}
        worst = max((max(g) for g in gaps if g), default=math.inf)
        deepest = max((max(d) for d in depth if d), default=0.0)
        for k, g, d in zip(kills, gaps, depth):
            k.update(gap_s=sorted(set(g)), rewritten_from_s=round(max(d, default=0.0), 3))
        ok = drained and rc == 0 and not bad and worst == 0.0 and deepest <= replay_s + CHUNK_S
        per_kill = ", ".join(
            f"{k['phase']} s past a boundary: {'/'.join(f'{x:g}' for x in k['gap_s'])} s" for k in kills
        )
        measured = (
            f"{n} patients, {len(kills)} x kill -9 (down {pct([k['down_s'] for k in kills], 50):.0f} s "
            f"each, restart included); ECG gap {per_kill} -- worst {worst:g} s; every patient's ECG one "
            f"run from the first sample to the last: {'yes' if not bad else 'NO'} (chunks sent while "
            f"it was down arrived); {rewritten} points re-written, all within the replayed "
            f"{replay_s:g} s before a kill: {'yes' if deepest <= replay_s + CHUNK_S else 'NO'} "
            f"(deepest {deepest:.1f} s)"
        )
        return Outcome(
            measured,
            ok,
            dict(kills=kills, rewritten=rewritten, rewritten_from_s=deepest, bad=bad, ticks=ticks),
        )
    finally:
        stop.set()
        if pub is not None and not pub.done():
            pub.cancel()
        await asyncio.to_thread(eng.stop)


ALERT_RULES = """
defaults: {repeat: 0}
rules:
  - {name: hr_high, metric: hr_bpm, op: ">", threshold: 120, for: 8s, clear_threshold: 110,
     clear_for: 4s, priority: high, summary: "HR {value:.0f} bpm"}
"""


def _episode(pids: list[str], t0: float, hr: float, first: int, count: int) -> list[tuple[str, bytes]]:
    """Vitals windows ``first .. first+count-1`` (4 s apart) of every patient at ``hr``."""
    return [
        (f"p2es/v1/patients/{pid}/vitals", vitals_json(pid, t0 + HOP_S * k, hr))
        for k in range(first, first + count)
        for pid in pids
    ]


def _notifications(rx: Any) -> dict[str, list[str]]:
    """Patient -> statuses of its accepted (first time per webhook-id) notifications, in order."""
    out: dict[str, list[str]] = {}
    for r in rx.accepted:
        body = r.json()
        out.setdefault(body["alerts"][0]["labels"]["patient"], []).append(body["status"])
    return out


async def alerts_kill(ctx: Ctx) -> Outcome:
    from alerts.receiver import WebhookReceiver
    from alerts.webhook import generate_secret

    p, svc = ctx.plan, ctx.svc
    n = p.alert_patients
    pids = [f"{ctx.tag}-{i:03d}" for i in range(n)]
    secret = generate_secret()
    armed = [threading.Event(), threading.Event()]  # firing / resolved rows all in the outbox
    killed = [threading.Event(), threading.Event()]
    in_flight: list[str | None] = [None, None]
    seen: dict[str, set[str]] = {"firing": set(), "resolved": set()}
    k_at = max(2, n // 2)  # kill on the k-th distinct notification of each kind
    holder: dict[str, Proc] = {}

    def respond(_n: int, req: Any) -> int:
        status = req.json()["status"]
        phase = 0 if status == "firing" else 1
        if not armed[phase].wait(120):
            return 503
        seen[status].add(req.id)
        if len(seen[status]) == k_at and not killed[phase].is_set():
            in_flight[phase] = req.id
            holder["proc"].kill9()  # the POST is in flight: the service waits for this answer
            killed[phase].set()
        return 200

    rx = WebhookReceiver(secret, respond=respond).start()
    al = alerts_proc(
        ctx.work,
        "alerts",
        broker=svc.mqtt_url,
        client_id=f"{ctx.tag}-alerts",
        rules=ALERT_RULES,
        webhook_url=rx.url,
        secret=secret,
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
    )
    holder["proc"] = al
    t0 = time.time() - 120.0
    try:
        al.start()
        await al.wait_ready()
        await publish(svc.mqtt_url, _episode(pids, t0, 140.0, 0, 5))
        ok_a = await wait_until(
            lambda: (
                metric(al, "p2es_alerts_vitals_total", 0) >= 5 * n
                and metric(al, "p2es_alerts_events_total", 0) >= n
            ),
            30,
        )
        armed[0].set()
        k1 = await wait_until(killed[0].is_set, 60)
        ctx.say(
            f"alert service killed mid-notification {in_flight[0]} (all {n} firing events stored: {ok_a})"
        )
        await publish(svc.mqtt_url, _episode(pids, t0, 75.0, 5, 4))  # while it is down
        al.start()
        await al.wait_ready()
        ok_b = await wait_until(
            lambda: (
                metric(al, "p2es_alerts_vitals_total", 0) >= 4 * n
                and metric(al, "p2es_alerts_events_total", 0) >= n
            ),
            30,
        )
        armed[1].set()
        k2 = await wait_until(killed[1].is_set, 60)
        ctx.say(f"alert service killed mid-notification {in_flight[1]} (resolved events stored: {ok_b})")
        al.start()
        await al.wait_ready()
        delivered = await wait_until(lambda: len(rx.accepted) >= 2 * n, 60)
        await asyncio.sleep(1.0)  # nothing more should come
        rc = await asyncio.to_thread(al.stop)
        notes = _notifications(rx)
        complete = sum(1 for pid in pids if notes.get(pid) == ["firing", "resolved"])
        ok200 = [r for r in rx.received if 200 <= r.status < 300]
        ids = Counter(r.id for r in ok200)
        dup_ids = {i for i, c in ids.items() if c > 1}
        invalid = sum(1 for r in rx.received if not r.verified)
        ok = (
            ok_a
            and ok_b
            and k1
            and k2
            and delivered
            and rc == 0
            and complete == n
            and len(rx.accepted) == 2 * n
            and dup_ids == {i for i in in_flight if i}
            and all(ids[i] == 2 for i in dup_ids)
            and invalid == 0
        )
        resent = sum(1 for i in in_flight if i and ids[i] == 2)
        measured = (
            f"{n} patients, {sum(ev.is_set() for ev in killed)} x kill -9 while a POST was in flight: "
            f"{len(rx.accepted)}/{2 * n} notifications (firing + resolved) delivered, {complete}/{n} "
            f"patients complete and in order; {resent}/{len([i for i in in_flight if i])} POSTs in flight "
            f"at a kill re-sent after the restart with the same webhook-id, {len(dup_ids - set(in_flight))} "
            f"other ids seen twice, so the de-duplicating receiver saw each notification once; "
            f"{invalid} bad signatures"
        )
        return Outcome(
            measured,
            ok,
            dict(
                accepted=len(rx.accepted),
                received=len(rx.received),
                in_flight=in_flight,
                duplicates=sorted(dup_ids),
                complete=complete,
                invalid=invalid,
            ),
        )
    finally:
        for ev in (*armed, *killed):
            ev.set()
        await asyncio.to_thread(al.stop)
        rx.stop()


async def webhook_500(ctx: Ctx) -> Outcome:
    from alerts.receiver import WebhookReceiver
    from alerts.webhook import generate_secret

    p, svc = ctx.plan, ctx.svc
    n = p.webhook_patients
    pids = [f"{ctx.tag}-{i:03d}" for i in range(n)]
    secret = generate_secret()
    healthy = threading.Event()
    rx = WebhookReceiver(secret, respond=lambda _n, _r: 200 if healthy.is_set() else 500).start()
    al = alerts_proc(
        ctx.work,
        "alerts",
        broker=svc.mqtt_url,
        client_id=f"{ctx.tag}-alerts",
        rules=ALERT_RULES,
        webhook_url=rx.url,
        secret=secret,
        backoff_base_s=p.webhook_backoff_base_s,
        backoff_cap_s=p.webhook_backoff_cap_s,
    )
    t0 = time.time() - 120.0
    try:
        al.start()
        await al.wait_ready()
        await publish(svc.mqtt_url, _episode(pids, t0, 140.0, 0, 5) + _episode(pids, t0, 75.0, 5, 4))
        stored = await wait_until(lambda: metric(al, "p2es_alerts_events_total", 0) >= 2 * n, 30)
        first = await wait_until(lambda: len(rx.received) >= 1, 30)
        t_fail = time.monotonic()
        ctx.say(f"{2 * n} notifications stored; the receiver answers 500 for {p.webhook_fail_s:.0f} s")
        await sleep_progress(ctx, p.webhook_fail_s, "receiver failing")
        failed_attempts = len(rx.received)
        healthy.set()
        t_ok = time.monotonic()
        delivered = await wait_until(lambda: len(rx.accepted) >= 2 * n, p.webhook_backoff_cap_s + 60)
        took = time.monotonic() - t_ok
        pending = await a_metric(al, "p2es_alerts_outbox_pending")
        dead = await a_metric(al, "p2es_alerts_outbox_dead_letters_total")
        rc = await asyncio.to_thread(al.stop)
        notes = _notifications(rx)
        complete = sum(1 for pid in pids if notes.get(pid) == ["firing", "resolved"])
        invalid = sum(1 for r in rx.received if not r.verified)
        times = [r for r in rx.received if r.status == 500]
        ok = (
            stored
            and first
            and delivered
            and rc == 0
            and complete == n
            and len(rx.accepted) == 2 * n
            and invalid == 0
            and pending == 0
            and dead == 0
            and failed_attempts >= 2
        )
        measured = (
            f"receiver 500 for {t_ok - t_fail:.0f} s ({len(times)} attempts refused, backoff cap "
            f"{p.webhook_backoff_cap_s:g} s): {len(rx.accepted)}/{2 * n} notifications delivered "
            f"{took:.1f} s after it recovered, {complete}/{n} patients in order, "
            f"{len(rx.received) - invalid}/{len(rx.received)} requests with a valid signature, "
            f"{dead:.0f} given up"
        )
        return Outcome(
            measured,
            ok,
            dict(
                refused=len(times),
                accepted=len(rx.accepted),
                after_recovery_s=took,
                invalid=invalid,
                outbox_pending=pending,
                outbox_dead=dead,
            ),
        )
    finally:
        healthy.set()
        await asyncio.to_thread(al.stop)
        rx.stop()


async def spool_full(ctx: Ctx) -> Outcome:
    from wearable.publisher import simulate_async

    p, svc = ctx.plan, ctx.svc
    n = p.full_patients
    signal_s = 6.0 + p.full_s + p.full_recover_s + 30.0  # the last part: while the spool clears
    spool = ctx.work / "spool"
    prefix = tmpfs_prefix(spool, p.full_tmpfs_bytes)
    how = f"a {p.full_tmpfs_bytes >> 10} KiB tmpfs (ENOSPC)"
    pre = None
    if prefix is None:  # no user namespaces here: the file-size limit gives EFBIG instead
        prefix, pre = [], fsize_limit(p.full_tmpfs_bytes)
        how = f"RLIMIT_FSIZE {p.full_tmpfs_bytes >> 10} KiB (EFBIG)"
    eng = engine_proc(
        ctx.work,
        "engine",
        broker=svc.mqtt_url,
        influx_url=svc.influx_url,
        checkpoint=ctx.checkpoint,
        client_id=f"{ctx.tag}-engine",
        spool_dir=spool,
        prefix=prefix,
        preexec=pre,
        # the ingest journal elsewhere: this scenario is about the spool (on a full disk the journal
        # only warns, once, and a restart would then leave a gap)
        journal_dir=str(ctx.work / "journal"),
    )
    vit = Listener(svc.mqtt_url, ["p2es/v1/patients/+/vitals"], client_id=f"{ctx.tag}-vitals")
    pub: asyncio.Task[dict[str, int]] | None = None
    down = False
    try:
        pats = await make_patients(n, signal_s, ctx.tag, seed=14)
        pids = {x.id for x in pats}
        eng.start()
        await eng.wait_ready()
        await vit.start()
        t_start = float(int(time.time()))
        stop = asyncio.Event()
        pub = asyncio.create_task(
            simulate_async(
                svc.mqtt_url, pats, speed=1.0, duration_s=signal_s, t_start=t_start, seed=6, stop=stop
            )
        )
        await asyncio.sleep(6.0)
        await asyncio.to_thread(svc.stop_influx)
        down = True
        full = await wait_until(lambda: metric(eng, "p2es_spool_full") == 1, 60)
        t_full = time.time()
        w0 = await a_metric(eng, "p2es_windows_total", 0)
        ctx.say(f"InfluxDB down; spool on {how} full: {full}; {p.full_s:.0f} s like this")
        alive = True
        end = time.monotonic() + p.full_s
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            alive = alive and eng.alive
        t_full_end = time.time()
        w1 = await a_metric(eng, "p2es_windows_total", 0)
        gauge_during = await a_metric(eng, "p2es_spool_full")
        dropped = await a_metric(eng, "p2es_points_dropped_total", 0)
        await asyncio.to_thread(svc.start_influx)
        down = False
        cleared = await wait_until(
            lambda: metric(eng, "p2es_spool_full") == 0 and metric(eng, "p2es_influx_down") == 0,
            p.full_recover_s + 60,
        )
        t_clear = time.time() - t_full_end
        stop.set()
        await pub
        await drain_engine(eng, timeout=60)
        final = await asyncio.to_thread(eng.metrics)
        dropped = final.get("p2es_points_dropped_total", dropped)
        exported = {k for k in ("p2es_spool_full", "p2es_points_dropped_total") if k in final}
        rc = await asyncio.to_thread(eng.stop)
        log = eng.text()
        errors = [ln for ln in log.splitlines() if " ERROR " in ln]
        full_lines = [ln for ln in errors if "cannot be written" in ln]
        tracebacks = log.count("Traceback")
        during = [
            1
            for (rt, topic, _) in vit.messages
            if topic.split("/")[3] in pids and topic.endswith("/vitals") and t_full <= rt <= t_full_end
        ]
        expect = n * p.full_s / HOP_S
        ok = (
            full
            and gauge_during == 1
            and alive
            and rc == 0
            and len(errors) == 1
            and len(full_lines) == 1
            and tracebacks == 0
            and len(during) >= 0.75 * expect
            and w1 - w0 >= 0.75 * expect
            and cleared
            and len(exported) == 2
        )
        quote = full_lines[0].split(" ERROR ", 1)[-1].split(": ", 1)[-1] if full_lines else "-"
        quote = quote.replace(str(spool), "<spool>").split(": keeping")[0]
        measured = (
            f"InfluxDB down, spool on {how}: {len(errors)} ERROR line (`{quote}: keeping ... in "
            f"memory`), p2es_spool_full = "
            f"{gauge_during:.0f}; over {p.full_s:.0f} s {len(during)} vitals messages on MQTT "
            f"(~{expect:.0f} expected) and {w1 - w0:.0f} windows, engine {'alive' if alive else 'DIED'}, "
            f"{tracebacks} tracebacks; "
            f"{dropped:.0f} points dropped beyond memory (counted); gauge back to 0 {t_clear:.0f} s "
            f"after InfluxDB returned"
        )
        return Outcome(
            measured,
            ok,
            dict(
                how=how,
                error_lines=errors,
                vitals_during=len(during),
                vitals_expected=expect,
                windows_during=w1 - w0,
                points_dropped=dropped,
                metrics_exported=sorted(exported),
                cleared_after_s=t_clear,
                engine_rc=rc,
            ),
        )
    finally:
        if pub is not None and not pub.done():
            pub.cancel()
        if down:
            await asyncio.to_thread(svc.start_influx)
        await vit.stop()
        await asyncio.to_thread(eng.stop)


async def clock_skew(ctx: Ctx) -> Outcome:
    from wearable.publisher import make_patients as mk

    p, svc = ctx.plan, ctx.svc
    ph = p.skew_phase_s
    signal_s = 3 * ph
    roles = {"ok": 0.0, "ahead": 3600.0, "behind": -3600.0, "within": 600.0, "jump": 0.0}
    pats = await asyncio.to_thread(mk, len(roles), seed=15, duration_s=signal_s + 2, prefix=ctx.tag)
    who = {role: pat for role, pat in zip(roles, pats)}
    eng = engine_proc(
        ctx.work,
        "engine",
        broker=svc.mqtt_url,
        influx_url=svc.influx_url,
        checkpoint=ctx.checkpoint,
        client_id=f"{ctx.tag}-engine",
        spool_dir=ctx.work / "spool",
    )
    dl = Listener(svc.mqtt_url, ["p2es/v1/deadletter"], client_id=f"{ctx.tag}-dl")
    role_of = {pat.id: role for role, pat in who.items()}

    def offset(pid: str, j: int) -> float:
        role = role_of[pid]
        if role == "jump":
            return 3600.0 if ph <= j < 2 * ph else 0.0
        return roles[role]

    try:
        eng.start()
        await eng.wait_ready()
        await dl.start()
        t_start = float(int(time.time()))
        ctx.say(f"5 wearables: clocks right, +1 h, -1 h, +10 min, and one +1 h for {ph:.0f} s mid-stream")
        wear = Wearables(
            svc.mqtt_url, pats, t_start, speed=p.skew_speed, offset=offset, client_id=f"{ctx.tag}-w"
        )
        ticks = await wear.run(int(signal_s))
        sent_skewed = Counter(
            pat.id for pat in pats for j in range(ticks) if abs(offset(pat.id, j)) > CLOCK_TOLERANCE_S
        )
        want_dl = sum(sent_skewed.values())

        def skew_letters() -> Counter[str]:
            c: Counter[str] = Counter()
            for m in dl.json():
                pid = (m.get("topic", "").split("/")[3:4] or [""])[0]
                if m.get("reason", "").startswith("clock_skew") and pid.startswith(ctx.tag):
                    c[pid] += 1
            return c

        await wait_until(lambda: sum(skew_letters().values()) >= want_dl, 20)
        drained = await drain_engine(eng, timeout=60)
        counted = await a_metric(eng, 'p2es_messages_invalid_total{reason="clock_skew"}', 0)
        rc = await asyncio.to_thread(eng.stop)
        letters = skew_letters()
        res: dict[str, Any] = {}
        for role, pat in who.items():
            t, _ = await asyncio.to_thread(svc.ecg, pat.id)
            res[role] = Series.of(t)
        ok_full = ecg_span(expected_windows(signal_s))
        seg = ecg_span(expected_windows(ph))

        def starts(role: str, at: float) -> bool:
            return bool(res[role].runs) and res[role].runs[0][0] == round(at * 1e9)

        checks = {
            "ok complete": len(res["ok"].runs) == 1
            and res["ok"].times.size == ok_full
            and starts("ok", t_start),
            "within written at device time": len(res["within"].runs) == 1
            and res["within"].times.size == ok_full
            and starts("within", t_start + 600.0),
            "ahead nothing written": res["ahead"].times.size == 0,
            "behind nothing written": res["behind"].times.size == 0,
            "jump: two runs, none in the skewed part": len(res["jump"].runs) == 2
            and res["jump"].off_grid == 0
            and starts("jump", t_start)
            and res["jump"].runs[1][0] == round((t_start + 2 * ph) * 1e9)
            and all(b - a + STEP_NS == seg * STEP_NS for a, b in res["jump"].runs),
            "dead letters = skewed chunks": dict(letters) == dict(sent_skewed) and counted == want_dl,
        }
        log = eng.text()
        warn = [ln for ln in log.splitlines() if "device clock" in ln and "dead-lettered (clock_skew)" in ln]
        back = [ln for ln in log.splitlines() if "device clock back within the tolerance" in ln]
        checks["one log line per skewed device"] = len(warn) == 3 and len(back) == 1
        ok = drained and rc == 0 and all(checks.values())
        jump_runs = [(b - a) // STEP_NS + 1 for a, b in res["jump"].runs]
        skewed_part = [t for t in res["jump"].times if t_start + ph <= t / 1e9 < t_start + 2 * ph]
        measured = (
            f"{want_dl} chunks beyond the {CLOCK_TOLERANCE_S:.0f} s tolerance -> {sum(letters.values())} "
            f"`clock_skew` dead letters (metric {counted:.0f}); ±1 h devices: "
            f"{res['ahead'].times.size + res['behind'].times.size} points written; +10 min device: "
            f"{res['within'].times.size}/{ok_full} samples, from device time t0 + "
            f"{(res['within'].runs[0][0] / 1e9 - t_start) if res['within'].runs else math.nan:.0f} s; the "
            f"device that jumped +1 h for {ph:.0f} s: {len(jump_runs)} runs of {jump_runs} samples "
            f"(a full window run: {seg}), {len(skewed_part)} in the skewed part; {len(warn)} warning "
            f"lines for 3 skewed devices"
            + ("" if all(checks.values()) else f"; failed: {[k for k, v in checks.items() if not v]}")
        )
        return Outcome(
            measured,
            ok,
            dict(
                checks=checks,
                letters=dict(letters),
                sent_skewed=dict(sent_skewed),
                metric=counted,
                runs={k: [(a, b) for a, b in v.runs] for k, v in res.items()},
            ),
        )
    finally:
        await dl.stop()
        await asyncio.to_thread(eng.stop)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    promise: str
    run: Callable[[Ctx], Awaitable[Outcome]]
    budget: Callable[[Plan], float]  # hard time bound, seconds
    needs_influx: bool = True  # False: a broker is all it needs (the alert scenarios)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "influx_outage",
            "InfluxDB stopped for {p.outage_s:.0f} s under {p.outage_patients} patients",
            "zero points lost; spool drained afterwards; points written in order",
            influx_outage,
            lambda p: 240 + p.outage_lead_s + p.outage_s + p.outage_tail_s + max(120, p.outage_s),
        ),
        Scenario(
            "broker_restarts",
            "Mosquitto restarted {p.restarts} times under {p.restart_patients} patients",
            "zero chunks lost at QoS 1 (persistent sessions)",
            broker_restarts,
            lambda p: 300 + p.restart_signal_s,
        ),
        Scenario(
            "engine_kill",
            "`kill -9` of `p2es run` ({n_kills} times), restarted after {p.kill_down_s:.0f} s",
            "resumes: chunks sent while it was down arrive; one point per (series, timestamp); "
            "no gap in any patient's ECG (the ingest journal rebuilds each stream's last 16 s); "
            "only that replayed overlap is re-written",
            engine_kill,
            lambda p: (
                240
                + p.kill_before_s
                + len(p.kill_phases) * (p.kill_down_s + p.kill_between_s + 60)
                + p.kill_after_s
            ),
        ),
        Scenario(
            "alerts_kill",
            "`kill -9` of `p2es alerts run` mid-notification, twice",
            "no notification lost; each with a stable webhook-id, so a receiver de-duplicating "
            "by id sees it exactly once",
            alerts_kill,
            lambda p: 360.0,
            needs_influx=False,
        ),
        Scenario(
            "webhook_500",
            "webhook receiver answering 500 for {p.webhook_fail_s:.0f} s",
            "all delivered afterwards; every signature valid",
            webhook_500,
            lambda p: 240 + p.webhook_fail_s + p.webhook_backoff_cap_s,
            needs_influx=False,
        ),
        Scenario(
            "spool_full",
            "InfluxDB down and the spool's disk full",
            "one clear log line; Prometheus gauge `p2es_spool_full`; the engine keeps serving "
            "MQTT vitals; no crash",
            spool_full,
            lambda p: 360 + p.full_s + p.full_recover_s,
        ),
        Scenario(
            "clock_skew",
            "device clocks off by ±1 h (one jumping there and back)",
            "dead letter `clock_skew` beyond the documented tolerance (1800 s); no corrupted windows",
            clock_skew,
            lambda p: 300 + 3 * p.skew_phase_s / p.skew_speed,
        ),
    )
}


# ============================================================================ running
async def run_scenario(sc: Scenario, svc: Services, work: Path, checkpoint: str, plan: Plan) -> Result:
    """One scenario under its hard time bound; a failure or a timeout is a failed result."""
    tag = f"cx{uuid.uuid4().hex[:6]}"
    sdir = work / sc.name
    sdir.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(svc, sdir, checkpoint, plan, tag, name=sc.name)
    fault = sc.fault.format(p=plan, n_kills=len(plan.kill_phases))
    budget = sc.budget(plan)
    print(f"== {sc.name}: {fault} (bound {budget:.0f} s)", flush=True)
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(svc.start)  # whatever a previous scenario left down comes back
        out = await asyncio.wait_for(sc.run(ctx), budget)
    except TimeoutError:
        out = Outcome(f"timed out after {budget:.0f} s (the scenario's hard bound)", False)
    except Exception as e:  # noqa: BLE001 - one failed scenario must not stop the others
        out = Outcome(f"failed: {type(e).__name__}: {first_line(e)[:300]}", False, {"error": str(e)})
    took = time.monotonic() - t0
    print(f"   {'PASS' if out.passed else 'FAIL'} in {took:.0f} s: {out.measured}", flush=True)
    return Result(sc.name, fault, sc.promise, out.measured, out.passed, took, out.details)


async def run_all(
    names: list[str], plan: Plan, work: Path, checkpoint: str, *, parallel: bool = False
) -> list[Result]:
    """Start private services under ``work``, run the scenarios, stop the services.

    In order on one Mosquitto + InfluxDB by default; ``parallel``: all at once, each on its own
    (every engine subscribes to every patient, so scenarios sharing a broker would see each
    other's traffic) -- shorter, but the machine is busier, so the timings are less clean."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64))
    if not parallel:
        svc = Services(work / "run")
        await asyncio.to_thread(svc.start)
        try:
            return [await run_scenario(SCENARIOS[n], svc, work, checkpoint, plan) for n in names]
        finally:
            await asyncio.to_thread(svc.stop)

    async def one(name: str) -> Result:
        sc = SCENARIOS[name]
        own = Services(work / name / "run", influx=sc.needs_influx)
        try:
            return await run_scenario(sc, own, work, checkpoint, plan)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(own.stop)

    return list(await asyncio.gather(*(one(n) for n in names)))


def tiny_checkpoint(dirpath: Path) -> str:
    """The tests' tiny checkpoint (tests/conftest.py ``tiny_ckpt``): cheap to run, its ECG is noise."""
    from engine.model.train import train_tiny

    path = dirpath / "tiny.pt"
    train_tiny(path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="the short versions (what the tests run)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the plan's times (floors apply)")
    ap.add_argument(
        "--only", default="", help=f"comma-separated scenarios (default: all): {','.join(SCENARIOS)}"
    )
    ap.add_argument(
        "--checkpoint", default="tiny", help="tiny (default: trained here in seconds), shipped, or a path"
    )
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one, removed after)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--json", default=None, help="also write every result with its details as JSON")
    ap.add_argument(
        "--parallel", action="store_true", help="run the scenarios at once, each on its own broker/InfluxDB"
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if not args.scale > 0:
        ap.error("--scale must be > 0")
    plan = (Plan.short() if args.short else Plan.full()).scaled(args.scale)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="p2es-chaos-"))
    work.mkdir(parents=True, exist_ok=True)

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    logging.getLogger("p2es.publisher").setLevel(logging.ERROR)  # its retries during restarts
    t0 = time.monotonic()
    try:
        if args.checkpoint == "tiny":
            print("training the tiny checkpoint (2 steps) ...", flush=True)
            ckpt = tiny_checkpoint(work)
        elif args.checkpoint == "shipped":
            from engine.model.checkpoint import DEFAULT_CHECKPOINT

            ckpt = str(DEFAULT_CHECKPOINT)
        else:
            ckpt = args.checkpoint
        results = asyncio.run(run_all(names, plan, work, ckpt, parallel=args.parallel))
    except KeyboardInterrupt:
        print("chaos: interrupted; services stopped", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, not a traceback (e.g. a service that will not start)
        print(f"chaos: error: {type(e).__name__}: {first_line(e)[:500]}", file=sys.stderr)
        return 2
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    md = table(results)
    mode = "--short" if args.short else "full" + (f" x{args.scale:g}" if args.scale != 1.0 else "")
    print(f"\nchaos ({mode}, {time.monotonic() - t0:.0f} s):\n\n{md}\n")
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(
            json.dumps([dataclasses.asdict(r) for r in results], indent=1, default=str) + "\n"
        )
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
