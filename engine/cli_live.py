"""``p2es run`` (the live pipeline) and ``p2es simulate`` (simulated wearables over MQTT).

Wire into the CLI with ``register_live(sub)``.  Both commands stop cleanly on SIGINT/SIGTERM:
``run`` stops ingest, finishes the windows it accepted, flushes the stitchers and the InfluxDB
writer (what cannot be written goes to the spool); ``simulate`` stops after the chunk in flight.
Bad input is one line (:class:`p2es.errors.P2esError`).  Secrets may come from the environment
(``P2ES_MQTT_USERNAME``, ``P2ES_MQTT_PASSWORD``, ``P2ES_INFLUX_TOKEN``) instead of flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from p2es.errors import P2esError

__all__ = ["register_live", "load_config", "run_main", "simulate_main"]

# flag -> PipelineConfig field
_RUN_FLAGS = {
    "broker": "broker", "mqtt_username": "mqtt_username", "mqtt_password": "mqtt_password", "mqtt_version": "mqtt_version",
    "client_id": "client_id", "influx_url": "influx_url", "influx_api": "influx_api",
    "influx_db": "influx_db", "influx_org": "influx_org", "influx_bucket": "influx_bucket",
    "influx_token": "influx_token", "window_s": "window_s", "hop_s": "hop_s", "backend": "backend",
    "device": "device", "steps": "steps", "k": "k", "max_batch": "max_batch",
    "max_wait_ms": "max_wait_ms", "metrics_port": "metrics_port", "checkpoint": "checkpoint",
    "spool_dir": "spool_dir",
}


def register_live(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the live pipeline: MQTT PPG -> 12-lead ECG -> InfluxDB")
    r.add_argument("--config", default=None, help="YAML or JSON file with pipeline settings "
                   "(fields of engine.pipeline.PipelineConfig); flags override it")
    r.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    r.add_argument("--mqtt-username")
    r.add_argument("--mqtt-password", help="(better: env P2ES_MQTT_PASSWORD)")
    r.add_argument("--mqtt-version", choices=("5", "3.1.1"), default=None,
                   help="MQTT protocol (default 5; 3.1.1 for brokers without MQTT 5)")
    r.add_argument("--client-id")
    r.add_argument("--influx-url", help="InfluxDB URL; 'none' runs without a sink")
    r.add_argument("--influx-api", choices=("v1", "v2"))
    r.add_argument("--influx-db")
    r.add_argument("--influx-org")
    r.add_argument("--influx-bucket")
    r.add_argument("--influx-token", help="(better: env P2ES_INFLUX_TOKEN)")
    r.add_argument("--window-s", type=float)
    r.add_argument("--hop-s", type=float)
    r.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="inference backend (default auto: tensorrt on cuda if it imports, else onnxruntime on cpu if installed, else torch)")
    r.add_argument("--device", help="cpu or cuda")
    r.add_argument("--steps", type=int)
    r.add_argument("--k", type=int)
    r.add_argument("--max-batch", type=int)
    r.add_argument("--max-wait-ms", type=float)
    r.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1 (0 = off)")
    r.add_argument("--checkpoint", help="checkpoint set (default: the shipped one)")
    r.add_argument("--spool-dir")
    r.add_argument("--alerts", metavar="RULES", default=None,
                   help="also run the alert service in this process on RULES ('default' = the shipped "
                   "alerts/default_rules.yaml), with the pipeline's broker and InfluxDB; webhooks and "
                   "the other alert settings: run `p2es alerts run` separately")
    r.add_argument("--alerts-dir", default=".run/alerts",
                   help="state, outbox and spool of the in-process alert service (default .run/alerts)")
    r.add_argument("--stats-every", type=float, default=10.0,
                   help="log a one-line summary every N seconds (0 = never)")
    r.set_defaults(func=run_main)

    s = sub.add_parser("simulate", help="publish simulated wearables' PPG over MQTT (real time x speed)")
    s.add_argument("--patients", type=int, default=3)
    s.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    s.add_argument("--speed", type=float, default=1.0, help="time-lapse factor (1 = real time)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--duration", type=float, default=None, help="seconds of signal (default: until stopped)")
    s.add_argument("--chunk-s", type=float, default=1.0)
    s.add_argument("--binary", type=float, default=0.0, help="fraction of chunks sent as ppg/bin")
    s.add_argument("--prefix", default="sim", help="patient ids are PREFIX-000, PREFIX-001, ...")
    s.add_argument("--mqtt-username")
    s.add_argument("--mqtt-password")
    s.set_defaults(func=simulate_main)


def load_config(args: argparse.Namespace):
    """--config file + flags (flags win) -> PipelineConfig; any problem -> P2esError."""
    from engine.pipeline import PipelineConfig
    from p2es.settings import merge_flags, read_settings_file, validate

    data = merge_flags(read_settings_file(getattr(args, "config", None)), args, _RUN_FLAGS)
    if str(data.get("influx_url", "")).lower() == "none":
        data["influx_url"] = None
    return validate(PipelineConfig, data, "pipeline")


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def alerts_config(cfg, rules: str, state_dir: str):
    """The in-process alert service of ``p2es run --alerts RULES``: same broker and InfluxDB."""
    from alerts.service import AlertServiceConfig
    from p2es.settings import validate

    d = Path(state_dir)
    data = dict(broker=cfg.broker, mqtt_username=cfg.mqtt_username, mqtt_password=cfg.mqtt_password,
                mqtt_version=cfg.mqtt_version, client_id=f"{cfg.client_id}-alerts",
                influx_url=cfg.influx_url, influx_api=cfg.influx_api, influx_db=cfg.influx_db,
                influx_org=cfg.influx_org, influx_bucket=cfg.influx_bucket, influx_token=cfg.influx_token,
                rules=None if rules == "default" else rules, spool_dir=str(d / "spool"),
                outbox_dir=str(d / "outbox"), state_file=str(d / "state.json"))
    return validate(AlertServiceConfig, data, "alerts")


def run_main(args: argparse.Namespace) -> int:
    from engine.pipeline import Pipeline

    cfg = load_config(args)
    svc = None
    if getattr(args, "alerts", None):
        from alerts.service import AlertService

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
        if svc is not None:
            try:
                await svc.start()
            except BaseException:
                await pipe.stop()
                raise
        log.info("p2es run: broker %s, influx %s, metrics port %s, alerts %s", cfg.broker,
                 cfg.influx_url or "off", cfg.metrics_port or "off", args.alerts or "off")
        try:
            every = float(getattr(args, "stats_every", 0) or 0)
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), every if every > 0 else None)
                if every > 0 and not stop.is_set():
                    s = pipe.stats()
                    log.info("windows %d (%.2f/s), patients %d, queue %s, writer %s", s["windows"],
                             s["windows_per_s"], len(s["patients"]), s["queue_depth"],
                             {k: s["writer"].get(k) for k in ("points_written", "db_down", "spool_records")}
                             if s["writer"] else "off")
        finally:
            log.info("p2es run: stopping (flushing stitchers and the writer)")
            await pipe.stop()
            if svc is not None:  # after the pipeline: it takes the last vitals first
                await svc.stop()
            s = pipe.stats()
            log.info("p2es run: stopped after %d windows", s["windows"])

    asyncio.run(main())
    return 0


def simulate_main(args: argparse.Namespace) -> int:
    from wearable.publisher import simulate

    if args.patients < 1:
        raise P2esError(f"--patients must be >= 1, got {args.patients}")
    if not args.speed > 0:
        raise P2esError(f"--speed must be > 0, got {args.speed}")
    if args.duration is not None and not args.duration >= args.chunk_s:
        raise P2esError(f"--duration must be >= --chunk-s ({args.chunk_s:g}), got {args.duration}")
    if not args.chunk_s > 0:
        raise P2esError(f"--chunk-s must be > 0, got {args.chunk_s}")
    if not 0 <= args.binary <= 1:
        raise P2esError("--binary must be within 0..1")
    from ingest.messages import PATIENT_ID_RE

    if not PATIENT_ID_RE.fullmatch(f"{args.prefix}-000"):
        raise P2esError(f"--prefix must match [A-Za-z0-9_.-], got {args.prefix!r}")
    if not (args.broker.startswith("mqtt://") or args.broker.startswith("mqtts://")):
        raise P2esError(f"--broker must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {args.broker!r}")
    import os

    res = simulate(args.broker, patients=args.patients, speed=args.speed, seed=args.seed,
                   duration_s=args.duration, chunk_s=args.chunk_s, binary=args.binary,
                   prefix=args.prefix,
                   username=args.mqtt_username or os.environ.get("P2ES_MQTT_USERNAME"),
                   password=args.mqtt_password or os.environ.get("P2ES_MQTT_PASSWORD"))
    print(json.dumps(res), file=sys.stdout)
    return 0
