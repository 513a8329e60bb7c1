"""``p2es run``: the live pipeline (:mod:`engine.app.pipeline`).

Wire into the CLI with ``register_live(sub)``.  ``run`` stops cleanly on SIGINT/SIGTERM: it stops
ingest, finishes the windows it accepted, flushes the stitchers and the InfluxDB writer (what
cannot be written goes to the spool).  ``p2es simulate`` (the simulated wearables that feed it) is
registered next to its publisher, in :mod:`wearable.cli`.  Bad input is one line
(:class:`p2es.errors.P2esError`).  Secrets may come from the environment (``P2ES_MQTT_USERNAME``,
``P2ES_MQTT_PASSWORD``, ``P2ES_INFLUX_TOKEN``) instead of flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from p2es.errors import P2esError
from p2es.transport.settings import (
    SERVICE_FLAGS,
    add_service_flags,
    merge_flags,
    read_settings_file,
    validate,
)
from p2es.transport.tls import redact_url

if TYPE_CHECKING:
    from alerts.service import AlertServiceConfig
    from engine.app.pipeline import Pipeline, PipelineConfig

__all__ = ["register_live", "load_config", "run_main"]

#: ``p2es run`` flags, each named like the PipelineConfig field it sets
_RUN_FLAGS = (
    *SERVICE_FLAGS,
    "window_s",
    "hop_s",
    "backend",
    "device",
    "steps",
    "k",
    "max_batch",
    "max_wait_ms",
    "metrics_port",
    "checkpoint",
    "spool_dir",
    "bus",
    "shards",
    "bus_replicas",
    "replay_s",
    "bus_ca_file",
    "bus_cert_file",
    "bus_key_file",
)


def register_live(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("run", help="run the live pipeline: MQTT PPG -> 12-lead ECG -> InfluxDB")
    r.add_argument(
        "--config",
        default=None,
        help="YAML or JSON file with pipeline settings "
        "(fields of engine.app.pipeline.PipelineConfig); flags override it",
    )
    add_service_flags(r)
    r.add_argument("--window-s", type=float)
    r.add_argument("--hop-s", type=float)
    r.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "tensorrt"),
        help="inference backend (default auto: tensorrt on cuda if it imports, else onnxruntime on cpu if installed, else torch)",
    )
    r.add_argument("--device", help="cpu or cuda")
    r.add_argument("--steps", type=int)
    r.add_argument("--k", type=int)
    r.add_argument("--max-batch", type=int)
    r.add_argument("--max-wait-ms", type=float)
    r.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1 (0 = off)")
    r.add_argument("--checkpoint", help="checkpoint set (default: the shipped one)")
    r.add_argument("--spool-dir")
    r.add_argument(
        "--bus",
        help="scale-out mode: nats://HOST:PORT[,HOST:PORT...] (tls://... for TLS) of a NATS JetStream "
        "cluster; this process is one of N workers sharing the patients (docs/scaling.md); default: "
        "the MQTT --broker",
    )
    r.add_argument(
        "--bus-ca-file",
        metavar="PEM",
        help="TLS bus: CA certificate(s) the NATS servers' certificates must chain to (default: system "
        "trust store; with nats:// it turns TLS on); the servers need tls { handshake_first: true }",
    )
    r.add_argument(
        "--bus-cert-file", metavar="PEM", help="TLS bus: client certificate (listeners with verify)"
    )
    r.add_argument("--bus-key-file", metavar="PEM", help="TLS bus: the client certificate's private key")
    r.add_argument(
        "--shards", type=int, help="with --bus: patient partitions, fixed per deployment (default 128)"
    )
    r.add_argument("--bus-replicas", type=int, help="with --bus: replicas of the streams (default 3)")
    r.add_argument(
        "--replay-s", type=float, help="with --bus: seconds replayed on takeover (default window + 2 hops)"
    )
    r.add_argument(
        "--alerts",
        metavar="RULES",
        default=None,
        help="also run the alert service in this process on RULES ('default' = the shipped "
        "alerts/default_rules.yaml), with the pipeline's broker and InfluxDB; webhooks and "
        "the other alert settings: run `p2es alerts run` separately",
    )
    r.add_argument(
        "--alerts-dir",
        default=".run/alerts",
        help="state, outbox and spool of the in-process alert service (default .run/alerts)",
    )
    r.add_argument(
        "--stats-every", type=float, default=10.0, help="log a one-line summary every N seconds (0 = never)"
    )
    r.set_defaults(func=run_main)


def load_config(args: argparse.Namespace) -> PipelineConfig:
    """--config file + flags (flags win) -> PipelineConfig; any problem -> P2esError."""
    from engine.app.pipeline import PipelineConfig  # lazy: CLI start-up time (only `p2es run` needs it)

    data = merge_flags(read_settings_file(getattr(args, "config", None)), args, _RUN_FLAGS)
    return validate(PipelineConfig, data, "pipeline")  # influx_url "none": ServiceSettings reads it


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def alerts_config(cfg: PipelineConfig, rules: str, state_dir: str) -> AlertServiceConfig:
    """The in-process alert service of ``p2es run --alerts RULES``: same broker and InfluxDB."""
    from alerts.service import AlertServiceConfig  # lazy: CLI start-up time (only `p2es run --alerts`)

    d = Path(state_dir)
    return cfg.shared_with(
        AlertServiceConfig,
        "alerts",
        client_id=f"{cfg.client_id}-alerts",
        rules=None if rules == "default" else rules,
        spool_dir=str(d / "spool"),
        outbox_dir=str(d / "outbox"),
        state_file=str(d / "state.json"),
    )


async def _wait_bus(pipe: Pipeline, stop: asyncio.Event, timeout_s: float = 60.0) -> None:
    """Until the worker is set up on the bus; a setup failure or no bus -> one-line P2esError."""
    ing = pipe.ingest
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not ing.connected.is_set() and not stop.is_set():
        failed = getattr(ing, "failed", None)
        if failed or asyncio.get_running_loop().time() > deadline:
            await pipe.stop()
            bus = _redact_bus(pipe.config.bus or "")
            raise P2esError(failed or f"no NATS JetStream reachable at {bus} ({ing.last_error})")
        await asyncio.sleep(0.1)


def _redact_bus(bus: str) -> str:
    """A bus URL list as a log line may show it (no ``user:password@`` of any server)."""
    scheme, _, rest = bus.partition("://")
    return ",".join(redact_url(f"{scheme}://{part.strip().split('://')[-1]}") for part in rest.split(","))


def run_main(args: argparse.Namespace) -> int:
    from engine.app.pipeline import Pipeline  # lazy: CLI start-up time (only `p2es run` needs it)

    cfg = load_config(args)
    svc = None
    if getattr(args, "alerts", None):
        from alerts.service import AlertService  # lazy: CLI start-up time (only `p2es run --alerts`)

        svc = AlertService(alerts_config(cfg, args.alerts, args.alerts_dir))  # rules checked here
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("p2es.run")

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(stop)
        pipe = Pipeline(cfg)
        try:
            await pipe.start()
        except ValueError as e:  # bad URL etc. from a component
            raise P2esError(str(e)) from None
        if cfg.bus:  # scale-out: the streams and consumers must exist before this worker counts
            await _wait_bus(pipe, stop)
        if svc is not None:
            try:
                await svc.start()
            except BaseException:
                await pipe.stop()
                raise
        log.info(
            "p2es run: %s, influx %s, metrics port %s, alerts %s",
            f"bus {_redact_bus(cfg.bus)} ({cfg.shards} shards, worker {pipe.ingest.client_id})"
            if cfg.bus
            else f"broker {redact_url(cfg.broker)}",
            redact_url(cfg.influx_url) if cfg.influx_url else "off",
            cfg.metrics_port or "off",
            args.alerts or "off",
        )
        try:
            every = float(getattr(args, "stats_every", 0) or 0)
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), every if every > 0 else None)
                if every > 0 and not stop.is_set():
                    s = pipe.stats()
                    log.info(
                        "windows %d (%.2f/s), patients %d, queue %s, writer %s",
                        s["windows"],
                        s["windows_per_s"],
                        len(s["patients"]),
                        s["queue_depth"],
                        {k: s["writer"].get(k) for k in ("points_written", "db_down", "spool_records")}
                        if s["writer"]
                        else "off",
                    )
        finally:
            log.info("p2es run: stopping (flushing stitchers and the writer)")
            await pipe.stop()
            if svc is not None:  # after the pipeline: it takes the last vitals first
                await svc.stop()
            s = pipe.stats()
            log.info("p2es run: stopped after %d windows", s["windows"])

    asyncio.run(main())
    return 0
