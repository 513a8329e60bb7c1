"""``p2es alerts ...``: check rules, run the alert service, acknowledge and silence alerts.

::

    p2es alerts check FILE
    p2es alerts run [--rules FILE] [--config FILE] [--broker URL] [--influx-url URL|none]
                    [--webhook URL ...] [--outbox-dir DIR] [--state-file FILE] ...
    p2es alerts ack --patient P --rule R [--by NAME] [--comment TEXT] [--broker URL]
    p2es alerts silence [--patient P] [--rule R] --for 30m [--comment TEXT] [--by NAME] [--id ID]
    p2es alerts unsilence ID
    p2es alerts new-secret

``ack``/``silence``/``unsilence`` publish one command on ``p2es/v1/alerts/ack`` (QoS 1) and
return once the broker has it (see :mod:`p2es.contracts.alerts` for the JSON).  Bad input anywhere
is one ``p2es: error: ...`` line and exit status 2; ``check`` prints one ``FILE:LINE: path: msg``
line per problem (exit 2) or a summary (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from p2es.errors import P2esError
from p2es.transport.settings import (
    SERVICE_FLAGS,
    add_broker_flags,
    add_service_flags,
    mqtt_tls_from_flags,
)
from p2es.transport.tls import redact_url

if TYPE_CHECKING:
    from alerts.service import AlertServiceConfig

__all__ = ["register"]

#: ``p2es alerts run`` flags, each named like the AlertServiceConfig field it sets
_RUN_FLAGS = (
    *SERVICE_FLAGS,
    "spool_dir",
    "rules",
    "outbox_dir",
    "state_file",
    "external_url",
    "backoff_base_s",
    "backoff_cap_s",
    "max_age_s",
    "tick_s",
    "health_port",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("alerts", help="rule-based alerts on the live vitals: check, run, ack, silence")
    asub = a.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND", parser_class=type(a))
    asub.required = True

    c = asub.add_parser("check", help="validate a rules file (line-precise errors, exit 2)")
    c.add_argument(
        "file", nargs="?", default=None, help="rules YAML (default: the shipped default_rules.yaml)"
    )
    c.set_defaults(func=check_main)

    r = asub.add_parser("run", help="run the alert service (stops cleanly on SIGINT/SIGTERM)")
    r.add_argument("--rules", help="rules YAML (default: the shipped default_rules.yaml)")
    r.add_argument("--config", help="YAML/JSON with AlertServiceConfig fields; flags override it")
    add_service_flags(r)
    r.add_argument("--spool-dir")
    r.add_argument(
        "--webhook",
        action="append",
        default=None,
        metavar="URL",
        help="webhook URL (repeatable); secret from --webhook-secret-file or env P2ES_WEBHOOK_SECRET",
    )
    r.add_argument("--webhook-secret-file", help="file holding the whsec_ secret for --webhook URLs")
    r.add_argument("--outbox-dir")
    r.add_argument("--state-file")
    r.add_argument("--external-url", help="base URL put into webhook bodies (externalURL, generatorURL)")
    r.add_argument("--backoff-base-s", type=float)
    r.add_argument("--backoff-cap-s", type=float)
    r.add_argument("--max-age-s", type=float, help="give a webhook notification up after this long")
    r.add_argument("--tick-s", type=float)
    r.add_argument("--health-port", type=int, help="serve /healthz and /metrics on 127.0.0.1:PORT (0 = off)")
    r.add_argument("--stats-every", type=float, default=30.0, help="log a summary every N s (0 = never)")
    r.set_defaults(func=run_main)

    def broker_args(p: argparse.ArgumentParser) -> None:
        add_broker_flags(
            p, broker_default=os.environ.get("P2ES_BROKER", "mqtt://127.0.0.1:1883"), version_default="5"
        )

    k = asub.add_parser("ack", help="acknowledge one firing alert (stops its repeats until it resolves)")
    k.add_argument("--patient", required=True)
    k.add_argument("--rule", required=True)
    k.add_argument("--by", default=None, help="who acknowledges (default: $USER)")
    k.add_argument("--comment")
    broker_args(k)
    k.set_defaults(func=ack_main)

    s = asub.add_parser("silence", help="suppress webhook notifications of matching alerts for a while")
    s.add_argument("--patient")
    s.add_argument("--rule")
    s.add_argument("--for", dest="duration", required=True, help="how long, e.g. 30m, 2h")
    s.add_argument("--comment")
    s.add_argument("--by", default=None)
    s.add_argument("--id", default=None, help="silence id (default: generated and printed)")
    broker_args(s)
    s.set_defaults(func=silence_main)

    u = asub.add_parser("unsilence", help="remove a silence by id")
    u.add_argument("id")
    u.add_argument("--by", default=None)
    broker_args(u)
    u.set_defaults(func=unsilence_main)

    n = asub.add_parser("new-secret", help="print a new random webhook secret (whsec_...)")
    n.set_defaults(func=new_secret_main)


# ------------------------------------------------------------------------------ check
def check_main(args: argparse.Namespace) -> int:
    from alerts.rules import (  # lazy: CLI start-up
        DEFAULT_RULES_PATH,
        RuleFileError,
        format_duration,
        load_rules,
    )

    path = args.file or str(DEFAULT_RULES_PATH)
    try:
        rf = load_rules(path)
    except RuleFileError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        return 2
    gated = [r.name for r in rf.rules if rf.gate_for(r) is not None]
    g = rf.defaults.gate
    print(
        f"{path}: {len(rf.rules)} rule(s) OK; gate uncertainty <= {g.max_uncertainty_mv:g} mV, "
        f"SQI >= {g.min_sqi:g}; default repeat {format_duration(rf.defaults.repeat)}"
    )
    for r in rf.rules:
        gate = rf.gate_for(r)
        gtxt = (
            (
                f" [gated {gate.max_uncertainty_mv:g} mV / SQI {gate.min_sqi:g}"
                + (f" / HR <= {gate.max_hr_bpm:g}" if gate.max_hr_bpm is not None else "")
                + "]"
            )
            if gate
            else ""
        )
        if r.rate_agreement is not None:
            gtxt += f" [ECG rate within {100 * r.rate_agreement:g} % of the PPG's]"
        clear = "" if r.clear_threshold is None else f", clear {r.clear_threshold:g}"
        print(
            f"  {r.name:<26} {r.priority:<6} {r.metric} {r.op} {r.threshold:g} for "
            f"{format_duration(r.for_)}{clear}{gtxt}"
        )
    if gated:
        print(f"  ({len(gated)} morphology/gated rule(s) evaluate only windows that pass the gate)")
    return 0


# ------------------------------------------------------------------------------ run
def load_service_config(args: argparse.Namespace) -> AlertServiceConfig:
    from alerts.service import AlertServiceConfig  # lazy: CLI start-up (aiomqtt, sink)
    from p2es.transport.settings import merge_flags, read_settings_file, validate  # lazy: CLI start-up

    data = merge_flags(read_settings_file(getattr(args, "config", None)), args, _RUN_FLAGS)
    if getattr(args, "webhook", None):
        hooks = list(data.get("webhooks") or [])
        for i, url in enumerate(args.webhook):
            h = {"name": f"cli-{i}", "url": url}
            if args.webhook_secret_file:
                h["secret_file"] = args.webhook_secret_file
            hooks.append(h)
        data["webhooks"] = hooks
    return validate(AlertServiceConfig, data, "alerts")


def run_main(args: argparse.Namespace) -> int:
    from alerts.service import AlertService  # lazy: CLI start-up (aiomqtt, sink)

    cfg = load_service_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("p2es.alerts")
    svc = AlertService(cfg)  # loads the rules and secrets: errors before anything starts

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await svc.start()
        log.info(
            "p2es alerts: %d rule(s), broker %s, influx %s, %d webhook(s)",
            len(svc.rules.rules),
            redact_url(cfg.broker),
            redact_url(cfg.influx_url) if cfg.influx_url else "off",
            len(cfg.webhooks),
        )
        every = float(args.stats_every or 0)
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), every if every > 0 else None)
                if every > 0 and not stop.is_set():
                    log.info("alerts: %s", json.dumps(svc.counters(), sort_keys=True, default=str))
        finally:
            log.info("p2es alerts: stopping (saving state, flushing the InfluxDB writer)")
            await svc.stop()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------------------ commands
def _publish_command(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    import aiomqtt  # lazy: CLI start-up

    from p2es.contracts.alerts import ACK_TOPIC, parse_command  # lazy: CLI start-up
    from p2es.transport.mqtt import MqttEndpoint  # lazy: CLI start-up

    body = json.dumps({k: v for k, v in payload.items() if v is not None}).encode()
    parsed = parse_command(body)  # the same validation the service applies
    if isinstance(parsed, str):
        raise P2esError(parsed.split(": ", 1)[-1])
    if not (args.broker.startswith("mqtt://") or args.broker.startswith("mqtts://")):
        raise P2esError(f"--broker must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {args.broker!r}")
    try:
        endpoint = MqttEndpoint.from_url(
            args.broker,
            username=args.mqtt_username or os.environ.get("P2ES_MQTT_USERNAME"),
            password=args.mqtt_password or os.environ.get("P2ES_MQTT_PASSWORD"),
            client_id=f"p2es-alerts-cli-{secrets.token_hex(4)}",
            version=args.mqtt_version,
            tls_context=mqtt_tls_from_flags(args),
        )
    except ValueError as e:
        raise P2esError(str(e)) from None

    async def go() -> None:
        async with endpoint.client(persistent=False) as client:
            await client.publish(ACK_TOPIC, body, qos=1, timeout=10)

    try:
        asyncio.run(go())
    except aiomqtt.MqttError as e:
        raise P2esError(f"cannot publish to {redact_url(args.broker)}: {e}") from None


def _who(by: str | None) -> str:
    return by or os.environ.get("USER") or "cli"


def ack_main(args: argparse.Namespace) -> int:
    _publish_command(
        args,
        {
            "action": "ack",
            "patient": args.patient,
            "rule": args.rule,
            "by": _who(args.by),
            "comment": args.comment,
        },
    )
    print(f"ack sent: {args.patient}/{args.rule}")
    return 0


def silence_main(args: argparse.Namespace) -> int:
    from alerts.rules import parse_duration  # lazy: CLI start-up

    if args.patient is None and args.rule is None:
        raise P2esError("a silence needs --patient and/or --rule")
    try:
        dur = parse_duration(args.duration)
    except ValueError as e:
        raise P2esError(f"--for: {e}") from None
    if dur <= 0:
        raise P2esError("--for must be > 0")
    sid = args.id or "s-" + secrets.token_hex(4)
    ends = time.time() + dur
    _publish_command(
        args,
        {
            "action": "silence",
            "id": sid,
            "patient": args.patient,
            "rule": args.rule,
            "ends_at": ends,
            "by": _who(args.by),
            "comment": args.comment,
        },
    )
    print(sid)
    return 0


def unsilence_main(args: argparse.Namespace) -> int:
    _publish_command(args, {"action": "unsilence", "id": args.id, "by": _who(args.by)})
    print(f"unsilence sent: {args.id}")
    return 0


def new_secret_main(args: argparse.Namespace) -> int:
    from alerts.webhook import generate_secret  # lazy: CLI start-up

    print(generate_secret())
    return 0
