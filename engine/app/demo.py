"""``p2es demo``: the live ward demo on an embedded default, needing no external services.

::

    p2es demo                      # in-process MQTT broker + simulated wearables + pipeline
    p2es demo --offline            # the old demo: simulate a cohort, one picture per rhythm

Without ``--broker`` an in-process `amqtt <https://github.com/Yakifo/amqtt>`_ broker is started
on ``127.0.0.1`` (a free port).  The simulated wearables (:func:`wearable.publisher.simulate_async`)
publish PPG of a handful of patients (mixed demographics, rhythms and device rates) and the live
:class:`engine.app.pipeline.Pipeline` (no InfluxDB unless ``--influx-url``) reconstructs the 12-lead
ECG.  A rich live table shows one row per patient (a compact line per refresh when stdout is not
a terminal).  At the end (or on Ctrl-C / SIGTERM) every patient's last seconds of stitched ECG
are drawn on ECG paper with the uncertainty band and the PPG under it.

Alerts: an in-process :class:`alerts.service.AlertService` consumes the engine's MQTT vitals (no
InfluxDB unless ``--influx-url``; state and outbox under ``<out>/.alerts``, fresh every run) and
delivers every alert event to MQTT ``p2es/v1/patients/{id}/alerts`` (the demo listens there, as a
ward display would) and, signed, to an in-process :class:`alerts.receiver.WebhookReceiver` on
127.0.0.1 that verifies every delivery.  Rules: ``--rules FILE`` as given, else the shipped
``alerts/default_rules.yaml`` at **demo timing** -- every ``for`` / ``clear_for`` / ``repeat``
divided by :data:`DEMO_TIMING_FACTOR` (thresholds unchanged), since the shipped durations (30 s to
2 min of event time) do not fit in the demo's 40 s of signal.  The shipped file is not changed.

amqtt speaks MQTT 3.1.1 only, so with the embedded broker ingest and the simulator are configured
with ``mqtt_version="3.1.1"`` (a persistent session instead of MQTT 5's session expiry); an
external ``--broker`` gets MQTT 5.

:func:`run_demo` returns a :class:`DemoSummary` (used by the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from alerts.rules import DEFAULT_RULES_PATH, RuleFile, load_rules
from alerts.webhook import generate_secret
from engine.model.checkpoint import DEFAULT_CHECKPOINT
from p2es.argtypes import finite_float as _float
from p2es.argtypes import positive_int as _positive_int
from p2es.contracts.alerts import AlertMessage
from p2es.contracts.topics import alerts_subscription
from p2es.errors import P2esError
from p2es.transport.mqtt import Backoff, run_reconnecting
from p2es.transport.settings import add_broker_flags, mqtt_tls_from_flags
from wearable.publisher import SimPatient, _resample, simulate_async
from wearable.sim import RHYTHMS, record_profile, save_npz, synthesize

if TYPE_CHECKING:
    from rich.console import JustifyMethod
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from alerts.receiver import WebhookReceiver
    from alerts.service import AlertService
    from engine.app.pipeline import Pipeline
    from engine.serve.runtime import EcgChunk
    from p2es.contracts.vitals import Vitals

log = logging.getLogger("p2es.demo")

__all__ = [
    "DemoPatient",
    "DemoSummary",
    "register_demo",
    "register_demo_args",
    "cmd_demo",
    "run_demo",
    "demo_patients",
    "demo_timing_rules",
    "DEMO_TIMING_FACTOR",
]

DEFAULT_RHYTHMS = (
    "sinus",
    "af",
    "sinus_tachy",
    "pvc",
    "sinus_brady",
    "long_qt",
    "st_elevation",
    "st_depression",
)
DEFAULT_RATES = (64.0, 100.0, 25.0, 250.0, 125.0, 500.0)
DISCLAIMER = "Reconstructed from PPG - not a diagnostic ECG"
#: the shipped rules' for / clear_for / repeat are divided by this in the demo ("demo timing")
DEMO_TIMING_FACTOR = 10.0
PRIORITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}
_PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}


# ------------------------------------------------------------------------------ results
@dataclass
class DemoPatient:
    id: str
    age: float
    sex: str
    rhythm: str
    fs_device: float
    ppg: np.ndarray  # the published signal, at fs_device
    t_start: float  # device time of ppg[0]
    windows: int = 0
    chunks: list[EcgChunk] = field(default_factory=list)  # in emission order
    hr_ecg: list[float] = field(default_factory=list)
    hr_ppg: list[float] = field(default_factory=list)
    uncertainty: float = math.nan
    sqi: float = math.nan
    png: Path | None = None
    alerts: dict[str, str] = field(default_factory=dict)  # rule -> priority of the alerts firing now

    def alert_names(self) -> list[str]:
        """Firing alerts, highest priority first."""
        return sorted(self.alerts, key=lambda r: (_PRIORITY_ORDER.get(self.alerts[r], 9), r))

    @property
    def ecg_samples(self) -> int:
        return int(sum(c.ecg.shape[1] for c in self.chunks))

    def stitched(self) -> tuple[float, float, np.ndarray, np.ndarray] | None:
        """(t0, fs, ecg [12,n], std [12,n]) of the last continuous run of emitted chunks."""
        if not self.chunks:
            return None
        fs = float(self.chunks[0].fs)
        run = [self.chunks[-1]]
        for c in reversed(self.chunks[:-1]):
            if abs(c.t0 + c.ecg.shape[1] / fs - run[0].t0) > 0.5 / fs:
                break
            run.insert(0, c)
        return (
            float(run[0].t0),
            fs,
            np.concatenate([c.ecg for c in run], axis=1),
            np.concatenate([c.std for c in run], axis=1),
        )

    @property
    def continuous(self) -> bool:
        """Every emitted chunk starts exactly where the previous one ended (no gap, no overlap)."""
        if not self.chunks:
            return False
        fs = float(self.chunks[0].fs)
        return all(
            abs(b.t0 - (a.t0 + a.ecg.shape[1] / fs)) <= 0.5 / fs for a, b in zip(self.chunks, self.chunks[1:])
        )

    @property
    def hr_error(self) -> float:
        """Mean |HR_ecg - HR_ppg| over the windows where both are known (bpm)."""
        d = [abs(e - p) for e, p in zip(self.hr_ecg, self.hr_ppg) if np.isfinite(e) and np.isfinite(p)]
        return float(np.mean(d)) if d else math.nan


@dataclass
class DemoSummary:
    patients: dict[str, DemoPatient]
    out: Path
    wall_s: float
    windows: int
    interrupted: bool
    broker: str
    stats: dict[str, Any]
    #: every alert event seen on MQTT p2es/v1/patients/+/alerts, in order
    alert_events: list[AlertMessage] = field(default_factory=list)
    #: webhook counts: sent side (enqueued, delivered, dead_letters, pending) and the receiver's
    #: (received, verified, accepted = verified + 2xx + first time per webhook-id)
    webhooks: dict[str, int] = field(default_factory=dict)
    rules: str = ""  # which rules ran (and whether at demo timing)
    alert_stats: dict[str, Any] = field(default_factory=dict)  # AlertService.counters()

    @property
    def pngs(self) -> list[Path]:
        return [p.png for p in self.patients.values() if p.png is not None]


#: the login and TLS flags of an external --broker (ServiceSettings fields of the same names)
_BROKER_FLAGS: tuple[str, ...] = (
    "mqtt_username",
    "mqtt_password",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
)


# ------------------------------------------------------------------------------ CLI
def register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``p2es demo`` (:func:`cmd_demo`)."""
    d = sub.add_parser(
        "demo",
        help="the live ward demo on an embedded default (no services needed); "
        "--offline: one 12-lead picture per simulated rhythm",
    )
    register_demo_args(d)
    d.set_defaults(func=cmd_demo)


def register_demo_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    d.add_argument(
        "--offline",
        action="store_true",
        help="no live pipeline: simulate a cohort and draw one 12-lead picture per rhythm",
    )
    d.add_argument("--records", type=_positive_int, default=256, help="(--offline) cohort size")
    d.add_argument("--seed", type=int, default=2026)
    d.add_argument("--patients", type=_positive_int, default=4, help="simulated patients (default 4)")
    d.add_argument("--duration", type=_float, default=40.0, help="seconds of signal (default 40)")
    d.add_argument("--speed", type=_float, default=2.0, help="time-lapse factor (default 2)")
    add_broker_flags(
        d,
        broker_help="use this mqtt://HOST:PORT or mqtts://HOST:PORT broker instead of the embedded one "
        "(with the login and TLS flags below: one account that may publish and subscribe under p2es/v1/)",
    )
    d.add_argument("--influx-url", default=None, help="also write to this InfluxDB (default: no sink)")
    d.add_argument("--influx-db", default="p2es")
    d.add_argument("--checkpoint", default=None, help="checkpoint set (default: the shipped one)")
    d.add_argument("--steps", type=_positive_int, default=10, help="sampler steps (default 10)")
    d.add_argument("--k", type=_positive_int, default=2, help="samples per window (default 2)")
    d.add_argument("--threads", type=_positive_int, default=2, help="torch threads (default 2)")
    d.add_argument("--plot-s", type=_float, default=9.0, help="seconds of ECG per picture (default 9)")
    d.add_argument(
        "--refresh",
        type=_float,
        default=None,
        help="live view refresh interval in s (default 0.5; 2 when stdout is not a terminal)",
    )
    d.add_argument("--no-live", action="store_true", help="compact log lines instead of the live table")
    d.add_argument(
        "--rules",
        default=None,
        metavar="FILE",
        help="alert rules, used as given (default: the shipped alerts/default_rules.yaml "
        f"at demo timing: for / clear_for / repeat / {DEMO_TIMING_FACTOR:g})",
    )


def _num(x: float | None) -> float:
    """A vitals value as a float (None, i.e. not measurable, as NaN)."""
    return math.nan if x is None else float(x)


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "offline", False):
        return cmd_demo_offline(args)
    s = run_demo(args)
    return 130 if s.interrupted else 0


def cmd_demo_offline(args: argparse.Namespace) -> int:
    """Simulate a small ward cohort and draw one 12-lead picture per rhythm."""
    from p2es.plot import plot_ecg_paper, record_header  # lazy: heavy dependency (matplotlib)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = synthesize(args.records, args.seed)
    path = save_npz(out / "cohort.npz", data)
    print(f"simulated {args.records} records in {time.perf_counter() - t0:.2f} s -> {path}")
    n = 0
    for name in tqdm(RHYTHMS, desc="plotting one record per rhythm", unit="fig"):
        idx = np.flatnonzero(data["rhythm"] == name)
        if idx.size == 0:
            continue
        i = int(idx[0])
        title, subtitle = record_header(data, i)
        plot_ecg_paper(
            data["ecg"][i],
            float(data["fs"]),
            out / f"{name}.png",
            ppg=data["ppg"][i],
            title=title,
            subtitle=subtitle,
            disclaimer="Simulated waveform - not a diagnostic ECG",
        )
        n += 1
    print(f"wrote {n} pictures to {out}/ (one 12-lead ECG on 25 mm/s, 10 mm/mV paper per rhythm)")
    return 0


# ------------------------------------------------------------------------------ pieces
def demo_patients(n: int, *, seed: int, duration_s: float) -> list[SimPatient]:
    """``n`` simulated wearables with mixed rhythms, demographics and device rates."""
    pats = []
    for i in range(n):
        rhythm = DEFAULT_RHYTHMS[i % len(DEFAULT_RHYTHMS)]
        d = synthesize(
            1, seed + 7919 * i, duration_s=float(duration_s), fs=128.0, rhythm_mix=rhythm, noisy_ecg=False
        )
        fs = DEFAULT_RATES[i % len(DEFAULT_RATES)]
        pats.append(
            SimPatient(
                f"ward-{i:03d}",
                fs,
                _resample(d["ppg"][0], 128.0, fs),
                record_profile(d, 0),
                str(d["rhythm"][0]),
            )
        )
    return pats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_broker() -> tuple[Any, str]:
    """An in-process amqtt broker on 127.0.0.1:<free port>; returns (broker, url)."""
    try:
        from amqtt.broker import Broker  # lazy: heavy dependency, only the embedded broker needs it
    except ImportError as e:  # pragma: no cover
        raise P2esError("the embedded broker needs amqtt (pip install amqtt), or pass --broker") from e
    for logger in ("amqtt", "transitions", "passlib"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    last: Exception | None = None
    for _ in range(5):
        port = _free_port()
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        try:
            await broker.start()
            return broker, f"mqtt://127.0.0.1:{port}"
        except Exception as e:  # noqa: BLE001 - port taken in between: try another
            last = e
    raise P2esError(f"cannot start the embedded MQTT broker: {last}")


# ------------------------------------------------------------------------------ alerts
def demo_timing_rules(rules: RuleFile | None = None, factor: float = DEMO_TIMING_FACTOR) -> RuleFile:
    """The rules (default: the shipped ``alerts/default_rules.yaml``) with every ``for``,
    ``clear_for`` and ``repeat`` (also the file default) divided by ``factor``.

    Thresholds, hysteresis, gates, priorities, ``max_gap`` and ``forget_after`` are unchanged;
    ``no_data`` keeps its threshold (seconds of wall clock without vitals).  Demo timing only:
    the shipped file itself is not touched."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    base = rules if rules is not None else load_rules()
    data = base.model_dump(by_alias=True)
    data["defaults"]["repeat"] = base.defaults.repeat / factor
    for r in data["rules"]:
        r["for"] = r["for"] / factor
        r["clear_for"] = r["clear_for"] / factor
        if r["repeat"] is not None:
            r["repeat"] = r["repeat"] / factor
    return RuleFile.model_validate(data)


def load_demo_rules(path: str | None) -> tuple[RuleFile, str]:
    """(RuleFile, label): ``path`` as given, else the shipped defaults at demo timing."""
    if path:
        return load_rules(path), f"rules {path} (as given)"
    try:
        shown = DEFAULT_RULES_PATH.relative_to(Path.cwd())
    except ValueError:
        shown = DEFAULT_RULES_PATH
    return demo_timing_rules(), (
        f"shipped rules {shown} at demo timing: for / clear_for / repeat "
        f"/ {DEMO_TIMING_FACTOR:g} (30s -> 3s, 2m -> 12s), thresholds unchanged"
    )


class _DemoAlerts:
    """The alert leg of the demo, all in-process: the AlertService on the broker, a verifying
    webhook receiver on 127.0.0.1 and an MQTT listener on ``p2es/v1/patients/+/alerts``."""

    def __init__(
        self,
        mqtt: dict[str, Any],
        rules: RuleFile,
        out: Path,
        *,
        influx_url: str | None,
        influx_db: str,
        on_event: Callable[[AlertMessage], None],
    ) -> None:
        # broker settings (ServiceSettings fields: broker, mqtt_version, login, TLS files)
        self.mqtt, self.url, self.rules, self.dir = mqtt, str(mqtt["broker"]), rules, out / ".alerts"
        self.influx_url, self.influx_db, self.on_event = influx_url, influx_db, on_event
        self.svc: AlertService | None = None
        self.rx: WebhookReceiver | None = None
        self.events: list[AlertMessage] = []
        self.active: dict[tuple[str, str], str] = {}  # (patient, rule) -> priority, firing now
        self.listening = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self.final: dict[str, Any] = {}

    async def start(self) -> None:
        from alerts.receiver import WebhookReceiver  # lazy: CLI start-up time (only `p2es demo` runs it)
        from alerts.service import (  # lazy: CLI start-up time (only `p2es demo` runs it)
            AlertService,
            AlertServiceConfig,
            WebhookConfig,
        )
        from engine.app.pipeline import new_client_id  # lazy: CLI start-up time (only `p2es demo` runs it)

        # a fresh ward every run: no state or undelivered webhooks (signed with another run's
        # secret, for another run's receiver) from a previous demo
        shutil.rmtree(self.dir, ignore_errors=True)
        secret = generate_secret()
        self.rx = WebhookReceiver(secret).start()
        cfg = AlertServiceConfig(
            **self.mqtt,
            client_id=new_client_id("p2es-demo-alerts"),
            session_expiry_s=0,
            influx_url=self.influx_url,
            influx_db=self.influx_db,
            spool_dir=str(self.dir / "spool"),
            outbox_dir=str(self.dir / "outbox"),
            state_file=str(self.dir / "state.json"),
            external_url="http://127.0.0.1/p2es-demo",
            webhooks=[WebhookConfig(name="demo", url=self.rx.url, secret=secret, timeout_s=5.0)],
            backoff_base_s=0.2,
            backoff_cap_s=2.0,
        )
        self.svc = AlertService(cfg, rules=self.rules)
        await self.svc.start()
        self._listener = asyncio.create_task(self._listen(), name="p2es-demo-alert-listener")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self.svc.connected.wait(), self.listening.wait()), 15.0)
        if not (self.svc.connected.is_set() and self.listening.is_set()):
            raise P2esError(f"the alert service could not connect to the broker {self.url}")

    async def _listen(self) -> None:
        from engine.app.pipeline import new_client_id  # lazy: CLI start-up time (only `p2es demo` runs it)

        assert self.svc is not None  # started by start() once the service runs
        prefix = self.svc.config.prefix
        endpoint = self.svc.config.mqtt_endpoint(new_client_id("p2es-demo-view"))

        async def session() -> None:
            async with endpoint.client(persistent=False) as client:
                await client.subscribe(alerts_subscription(prefix), qos=1)
                self.listening.set()
                async for msg in client.messages:
                    try:
                        ev = AlertMessage.model_validate_json(msg.payload)
                    except ValueError as e:
                        log.warning("demo: bad alert message on %s: %s", msg.topic, e)
                        continue
                    self.events.append(ev)
                    if ev.state in ("firing", "repeat"):
                        self.active[(ev.patient, ev.rule)] = ev.priority
                    elif ev.state == "resolved":
                        self.active.pop((ev.patient, ev.rule), None)
                    self.on_event(ev)

        await run_reconnecting(
            session, connected=self.listening, backoff=Backoff(0.5, 0.5), log=log, name="demo alert listener"
        )

    def webhooks(self) -> dict[str, int]:
        d = {k: 0 for k in ("enqueued", "delivered", "dead_letters", "pending")}
        svc = self.svc
        if svc is not None and svc.outbox is not None and not svc.outbox.closed:
            ob = svc.outbox.counters()
            d.update({k: int(ob.get(k, 0)) for k in d})
        elif self.final:
            d.update(self.final)
        rx = list(self.rx.received) if self.rx is not None else []
        d["received"] = len(rx)
        d["verified"] = sum(1 for r in rx if r.verified)
        d["accepted"] = len(self.rx.accepted) if self.rx is not None else 0
        return d

    async def drain(self, vitals: int, timeout: float) -> bool:
        """Wait until the service has taken ``vitals`` messages, the listener has every alert
        message it published and the outbox is empty (or ``timeout``); True when all done."""
        svc = self.svc
        if svc is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            c = svc.counters()
            done: bool = (
                c.get("vitals_in", 0) >= vitals
                and c["mqtt_backlog"] == 0
                and len(self.events) >= c.get("dispatch", {}).get("mqtt", 0)
                and c.get("outbox", {}).get("pending", 0) == 0
            )
            if done or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the service (saves its state), the listener and the receiver; never raises."""
        if self.svc is not None:
            with contextlib.suppress(Exception):
                self.final = {
                    k: v
                    for k, v in self.webhooks().items()
                    if k in ("enqueued", "delivered", "dead_letters", "pending")
                }
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.svc.stop(timeout=5.0), 10.0)
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self.rx is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.rx.stop)


async def shutdown_live(
    sim_task: asyncio.Task[Any] | None,
    pipe: Pipeline | None,
    broker: Any,
    alerts: _DemoAlerts | None = None,
) -> None:
    """Cancel the simulated wearables, stop the pipeline, the alert service (with its webhook
    receiver) and the embedded broker; never raises."""
    if sim_task is not None and not sim_task.done():
        sim_task.cancel()
        with contextlib.suppress(BaseException):
            await sim_task
    if pipe is not None:
        with contextlib.suppress(Exception):
            await pipe.stop(timeout=5.0)
    if alerts is not None:
        with contextlib.suppress(Exception):
            await alerts.stop()
    if broker is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), 5.0)


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, spec)


class _View:
    """The live view: a rich table on a terminal, a compact line per refresh otherwise."""

    def __init__(
        self, live: bool, speed: float, t_start: float, duration: float, alerts: _DemoAlerts | None = None
    ) -> None:
        self.live_mode = live
        self.speed, self.t_start, self.duration = speed, t_start, duration
        self.alerts = alerts
        self._live: Live | None = None

    def lag(self, p: DemoPatient) -> float:
        if not p.chunks:
            return math.nan
        c = p.chunks[-1]
        end: float = c.t0 + c.ecg.shape[1] / c.fs - self.t_start  # signal seconds reconstructed
        return time.time() - (self.t_start + end / self.speed)  # wall s since the wearable sent it

    def table(self, pats: dict[str, DemoPatient], st: dict[str, Any], elapsed: float) -> Table:
        from rich import box  # lazy: CLI start-up time (only the live view needs rich's table)
        from rich.table import Table  # lazy: CLI start-up time (only the live view needs rich's table)

        t = Table(
            title=f"p2es live ward demo - {elapsed:5.1f} s (speed x{self.speed:g})",
            caption=self.footer(st),
            expand=False,
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        columns: list[tuple[str, JustifyMethod]] = [
            ("patient", "left"),
            ("age/sex", "left"),
            ("rhythm", "left"),
            ("HRppg", "right"),
            ("HRecg", "right"),
            ("SQI", "right"),
            ("unc mV", "right"),
            ("lag s", "right"),
            ("win", "right"),
        ]
        for col, j in columns:
            t.add_column(col, justify=j, no_wrap=True)
        if self.alerts is not None:
            t.add_column("alerts", justify="left", no_wrap=False, min_width=10)
        for p in pats.values():
            row: list[str | Text] = [
                p.id,
                f"{p.age:.0f}/{p.sex}",
                p.rhythm,
                _fmt(p.hr_ppg[-1] if p.hr_ppg else math.nan),
                _fmt(p.hr_ecg[-1] if p.hr_ecg else math.nan),
                _fmt(p.sqi, ".2f"),
                _fmt(p.uncertainty, ".3f"),
                _fmt(self.lag(p), ".1f"),
                str(p.windows),
            ]
            if self.alerts is not None:
                row.append(self.alert_cell(p))
            t.add_row(*row)
        return t

    @staticmethod
    def alert_cell(p: DemoPatient) -> Text:
        from rich.text import Text  # lazy: CLI start-up time (only the live view needs rich)

        cell = Text()
        for i, r in enumerate(p.alert_names()):
            if i:
                cell.append("\n")
            cell.append(f"\u25b2 {r}", style=PRIORITY_STYLE.get(p.alerts[r], ""))
        return cell if cell.plain else Text("-", style="dim")

    def footer(self, st: dict[str, Any]) -> str:
        q = st.get("queue_depth", {})
        text = (
            f"windows {st.get('windows', 0)} ({st.get('windows_per_s', 0.0):.2f}/s) | "
            f"batch mean {_fmt(st.get('batch_size_mean', math.nan), '.1f')} "
            f"max {st.get('batch_size_max', 0)} | queue ingest {q.get('ingest', 0)} "
            f"engine {q.get('batcher', 0)}"
        )
        if self.alerts is not None:
            wh = self.alerts.webhooks()
            n = len(self.alerts.events)
            text += (
                f" | alerts: {len(self.alerts.active)} firing, {n} event{'' if n == 1 else 's'} | "
                f"webhooks: {wh['delivered']} delivered, {wh['verified']} verified"
            )
        return text

    def line(self, pats: dict[str, DemoPatient], st: dict[str, Any], elapsed: float) -> str:
        parts = [
            f"{p.id} {p.rhythm} w{p.windows} "
            f"hr {_fmt(p.hr_ppg[-1] if p.hr_ppg else math.nan)}/"
            f"{_fmt(p.hr_ecg[-1] if p.hr_ecg else math.nan)} lag {_fmt(self.lag(p), '.1f')}"
            + (f" [{','.join(p.alert_names())}]" if p.alerts else "")
            for p in pats.values()
        ]
        return f"[{elapsed:5.1f}s] " + "; ".join(parts) + " | " + self.footer(st)

    def __enter__(self) -> _View:
        if self.live_mode:
            from rich.live import Live  # lazy: CLI start-up time (only the live view needs rich)

            self._live = Live(refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def update(self, pats: dict[str, DemoPatient], st: dict[str, Any], elapsed: float) -> None:
        if self._live is not None:
            self._live.update(self.table(pats, st, elapsed))
        else:
            print(self.line(pats, st, elapsed), flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None


def _draw(p: DemoPatient, out: Path, plot_s: float) -> Path | None:
    from p2es.plot import plot_ecg_paper  # lazy: heavy dependency (matplotlib)

    s = p.stitched()
    if s is None:
        return None
    t0, fs, ecg, std = s
    n = min(ecg.shape[1], int(round(plot_s * fs)))
    ecg, std = ecg[:, -n:], std[:, -n:]
    total = s[2].shape[1]
    t = t0 + np.arange(total - n, total) / fs
    tp = p.t_start + np.arange(p.ppg.size) / p.fs_device
    ppg = np.interp(t, tp, p.ppg, left=np.nan, right=np.nan)
    ppg = np.where(np.isfinite(ppg), ppg, np.nanmean(ppg) if np.isfinite(ppg).any() else 0.0)
    he = p.hr_ecg[-1] if p.hr_ecg else math.nan
    hp = p.hr_ppg[-1] if p.hr_ppg else math.nan
    title = f"{p.id} - {p.age:.0f} y {p.sex} - simulated rhythm: {p.rhythm}"
    sub = (
        f"last {n / fs:.1f} s of the live stitched ECG; HR ecg {_fmt(he)} / ppg {_fmt(hp)} bpm; "
        f"device {p.fs_device:g} Hz; band = mean +/- 2 sd of the model's samples"
    )
    return plot_ecg_paper(
        ecg,
        fs,
        out / f"{p.id}.png",
        ppg=ppg,
        band=(ecg - 2 * std, ecg + 2 * std),
        title=title,
        subtitle=sub,
        disclaimer=DISCLAIMER,
    )


# ------------------------------------------------------------------------------ run
def _validate(args: argparse.Namespace) -> None:
    if not args.speed > 0:
        raise P2esError(f"--speed must be > 0, got {args.speed:g}")
    if not args.duration >= 8.0:
        raise P2esError(f"--duration must be >= 8 s (one model window), got {args.duration:g}")
    if not args.plot_s > 0:
        raise P2esError(f"--plot-s must be > 0, got {args.plot_s:g}")
    if args.refresh is not None and not args.refresh > 0:
        raise P2esError(f"--refresh must be > 0, got {args.refresh:g}")
    ckpt = Path(args.checkpoint) if args.checkpoint else Path(DEFAULT_CHECKPOINT)
    if not ckpt.is_file():
        raise P2esError(f"checkpoint not found: {ckpt}")
    if args.broker and not (args.broker.startswith("mqtt://") or args.broker.startswith("mqtts://")):
        raise P2esError(f"--broker must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {args.broker!r}")
    if not args.broker:
        given = [f"--{k.replace('_', '-')}" for k in _BROKER_FLAGS if getattr(args, k, None)]
        if getattr(args, "mqtt_version", None) == "5":
            given.append("--mqtt-version 5")
        if given:
            raise P2esError(
                f"{given[0]} needs --broker (the embedded broker has no login or TLS, MQTT 3.1.1 only)"
            )
    else:
        mqtt_tls_from_flags(args)  # files that do not load, or TLS files for mqtt://: one line
    if args.influx_url and not (
        args.influx_url.startswith("http://") or args.influx_url.startswith("https://")
    ):
        raise P2esError(f"--influx-url must be http(s)://HOST:PORT, got {args.influx_url!r}")
    rules = getattr(args, "rules", None)
    if rules and not Path(rules).is_file():
        raise P2esError(f"rules file not found: {rules}")


def run_demo(args: argparse.Namespace, *, live: bool | None = None) -> DemoSummary:
    """Run the live demo (blocking); SIGINT/SIGTERM end it early, cleanly, with the pictures."""
    _validate(args)
    if live is None:
        live = sys.stdout.isatty() and not getattr(args, "no_live", False)
    if args.refresh is None:
        args.refresh = 0.5 if live else 2.0
    rules, rules_label = load_demo_rules(getattr(args, "rules", None))  # a bad file: one-line error
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(_run(args, live, rules, rules_label))


def _print_alerts(
    events: list[AlertMessage],
    webhooks: dict[str, int],
    rules_label: str,
    t_start: float,
    url: str | None,
    pats: dict[str, DemoPatient],
) -> None:
    """The alert part of the end summary (t = signal seconds of the window that caused it)."""
    print(
        f"alerts ({rules_label}): {len(events)} event(s); from the reconstructed ECG, not "
        "diagnostic - the simulated rhythm is shown to judge them"
    )
    for e in events:
        v = "-" if e.value is None else f"{e.value:.4g}"
        who = f"{e.patient} ({pats[e.patient].rhythm if e.patient in pats else '?'})"
        print(
            f"  t={e.t - t_start:5.1f} s  {who:<24s} {e.state:<8s} {e.priority:<6s} "
            f"{e.rule:<22s} value {v:<7s} {e.message}"
        )
    print(
        f"webhooks: {webhooks.get('delivered', 0)} delivered, {webhooks.get('verified', 0)} verified "
        f"(of {webhooks.get('received', 0)} received; Standard Webhooks signatures checked by the "
        f"receiver{' at ' + url if url else ''}"
        + (f"; {webhooks['dead_letters']} dead-lettered" if webhooks.get("dead_letters") else "")
        + (f"; {webhooks['pending']} still pending" if webhooks.get("pending") else "")
        + ")"
    )


async def _run(args: argparse.Namespace, live: bool, rules: RuleFile, rules_label: str) -> DemoSummary:
    from engine.app.pipeline import (  # lazy: CLI start-up time (only `p2es demo` runs it)
        DrainWatch,
        Pipeline,
        PipelineConfig,
        new_client_id,
    )

    wall0 = t_view = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    # one extra second of signal: the streaming resampler holds back a few input samples, so
    # the window ending exactly at --duration needs a little more to be complete
    sims = demo_patients(args.patients, seed=args.seed, duration_s=args.duration + 2.0)
    t_start = time.time()
    pats = {
        s.id: DemoPatient(s.id, float(s.profile["age"]), s.profile["sex"], s.rhythm, s.fs, s.ppg, t_start)
        for s in sims
    }

    def on_ecg(c: EcgChunk) -> None:
        p = pats.get(c.patient)
        if p is not None:
            p.chunks.append(c)

    def on_vitals(v: Vitals) -> None:
        p = pats.get(v.patient)
        if p is not None:
            p.windows += 1
            p.hr_ecg.append(_num(v.hr_bpm))
            p.hr_ppg.append(_num(v.hr_ppg_bpm))
            p.uncertainty, p.sqi = _num(v.uncertainty), _num(v.sqi)

    def on_alert(e: AlertMessage) -> None:  # from MQTT
        p = pats.get(e.patient)
        if p is None:
            return
        if e.state in ("firing", "repeat"):
            p.alerts[e.rule] = e.priority
        elif e.state == "resolved":
            p.alerts.pop(e.rule, None)

    broker: Any = None  # amqtt's Broker
    pipe: Pipeline | None = None
    alerts: _DemoAlerts | None = None
    rx_url: str | None = None
    sim_task: asyncio.Task[Any] | None = None
    interrupted = False
    stats: dict[str, Any] = {}
    # the embedded amqtt broker speaks MQTT 3.1.1 only; an external broker gets MQTT 5 by default
    mqtt_version = getattr(args, "mqtt_version", None) or ("5" if args.broker else "3.1.1")
    try:
        if args.broker:
            url = args.broker
        else:
            broker, url = await _start_broker()
        # one set of broker settings for the engine, the alert service, the listener and the
        # wearables (a password not given falls back to P2ES_MQTT_PASSWORD, as in the services)
        mqtt: dict[str, Any] = {"broker": url, "mqtt_version": mqtt_version}
        mqtt.update({k: getattr(args, k) for k in _BROKER_FLAGS if getattr(args, k, None)})
        try:
            cfg = PipelineConfig(
                **mqtt,
                client_id=new_client_id("p2es-demo"),
                influx_url=args.influx_url,
                influx_db=args.influx_db,
                checkpoint=args.checkpoint,
                steps=args.steps,
                k=args.k,
                threads=args.threads,
                max_wait_ms=100.0,
                seed=args.seed,
                stream_reorder_wait_s=1.0,
                spool_dir=str(out / ".spool"),
                journal=False,  # every demo is a fresh session: nothing of an earlier run to rebuild
            )
        except ValueError as e:
            raise P2esError(str(e).splitlines()[0]) from None
        pipe = Pipeline(cfg, on_ecg=on_ecg, on_vitals=on_vitals)
        # the wearables start once ingest listens, so no chunk is published before
        await pipe.start_connected(f"the broker {url}")
        # the alert service (and the listener) subscribe before the first vitals can exist
        alerts = _DemoAlerts(
            mqtt,
            rules,
            out,
            influx_url=args.influx_url,
            influx_db=args.influx_db,
            on_event=on_alert,
        )
        await alerts.start()
        rx_url = alerts.rx.url if alerts.rx is not None else None  # set by start()
        print(f"alerts: {rules_label}; signed webhooks -> verifying receiver {rx_url}", flush=True)
        sim_stop = asyncio.Event()
        sim_task = asyncio.create_task(
            simulate_async(
                url,
                sims,
                speed=args.speed,
                seed=args.seed,
                duration_s=args.duration + 1.0,
                t_start=t_start,
                stop=sim_stop,
                mqtt_version=mqtt_version,
                username=cfg.mqtt_username,
                password=cfg.mqtt_password,
                tls_context=cfg.mqtt_tls_context(),
            ),
            name="p2es-demo-sim",
        )
        expected = int((args.duration - 8.0) // 4.0) + 1  # at most, full windows per patient
        watch = DrainWatch(quiet_s=2.5, max_s=30.0)
        with _View(live, args.speed, t_start, args.duration, alerts) as view:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.refresh if not watch.t_sim_done else 0.25)
                st = pipe.stats()
                now = time.monotonic()
                if now - t_view >= args.refresh or stop.is_set():
                    view.update(pats, st, now - wall0)
                    t_view = now
                if stop.is_set():
                    interrupted = True
                    break
                # all published: done once every window is in, or nothing moved for a while
                if watch.done(sim_task, st, now, complete=all(p.windows >= expected for p in pats.values())):
                    break
            sim_stop.set()
            if sim_task is not None and not sim_task.done():
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(sim_task, 5.0)
            await pipe.stop(timeout=10.0 if interrupted else 30.0)
            stats = pipe.stats()
            # the last vitals through the alert service, its events to MQTT and the webhooks
            await alerts.drain(sum(p.windows for p in pats.values()), 1.0 if interrupted else 5.0)
            view.update(pats, stats, time.monotonic() - wall0)
    finally:
        await shutdown_live(sim_task, pipe, broker, alerts)
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    # pictures + summary (also after Ctrl-C: what was reconstructed so far)
    for p in pats.values():
        try:
            p.png = await asyncio.to_thread(_draw, p, out, args.plot_s)
        except Exception as e:  # noqa: BLE001 - one bad picture must not hide the others
            log.warning("cannot draw %s: %s", p.id, e)
    wall = time.monotonic() - wall0
    print(
        f"p2es demo: {'interrupted' if interrupted else 'done'} in {wall:.1f} s, "
        f"{stats.get('windows', 0)} windows ({stats.get('windows_per_s', 0.0):.2f}/s), "
        f"broker {'embedded ' if broker is not None else ''}{url}"
    )
    for p in pats.values():
        print(
            f"  {p.id}  {p.age:3.0f}/{p.sex}  {p.rhythm:<14s} windows {p.windows:3d}  "
            f"ECG {p.ecg_samples / 128.0:5.1f} s  mean |HR_ecg - HR_ppg| {_fmt(p.hr_error, '.1f')} bpm"
            f"  -> {p.png if p.png else 'no picture (no ECG yet)'}"
        )
    events = list(alerts.events) if alerts is not None else []
    webhooks = alerts.webhooks() if alerts is not None else {}
    if alerts is not None:
        _print_alerts(events, webhooks, rules_label, t_start, rx_url, pats)
    return DemoSummary(
        pats,
        out,
        wall,
        int(stats.get("windows", 0)),
        interrupted,
        url,
        stats,
        alert_events=events,
        webhooks=webhooks,
        rules=rules_label,
        alert_stats=alerts.svc.counters() if alerts is not None and alerts.svc else {},
    )
