"""``p2es dashboards push`` and ``p2es dashboards export``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from p2es.errors import P2esError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards: upload them or write them as files")
    dsub = p.add_subparsers(dest="dashboards_command", metavar="COMMAND")
    dsub.required = True

    push = dsub.add_parser("push", help="upload the dashboards to a Grafana (overwrites them)")
    push.add_argument("--grafana", required=True, metavar="URL", help="e.g. http://localhost:3000")
    push.add_argument(
        "--token", default=None, help="service-account token with the Editor role (default: $GRAFANA_TOKEN)"
    )
    push.add_argument(
        "--folder",
        default="p2es",
        metavar="NAME",
        help="folder title, created if missing (default: p2es; '' = General)",
    )
    push.add_argument(
        "--datasource-uid",
        default=None,
        metavar="UID",
        help="uid of the InfluxDB (InfluxQL) data source in that Grafana "
        "(default: p2es-influxdb, the provisioned one)",
    )
    push.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout, seconds")
    push.set_defaults(func=_push)

    exp = dsub.add_parser("export", help="write the dashboard JSON and Grafana provisioning files")
    exp.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="writes DIR/json/*.json and DIR/provisioning/{datasources,dashboards}/",
    )
    exp.set_defaults(func=_export)


def _push(args: argparse.Namespace) -> int:
    from dashboards.model import DATASOURCE_UID  # lazy: CLI start-up, loaded only for this command
    from dashboards.push import push  # lazy: CLI start-up; pulls in grafana-client

    token = args.token or os.environ.get("GRAFANA_TOKEN")
    if args.timeout <= 0:
        raise P2esError("--timeout must be > 0")
    for r in push(
        args.grafana,
        token,
        folder=args.folder,
        datasource_uid=args.datasource_uid or DATASOURCE_UID,
        timeout=args.timeout,
    ):
        print(f"pushed {r.uid}: {r.title} (version {r.version}) {r.url}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from dashboards.build import all_dashboards, export  # lazy: CLI start-up, loaded only for this command
    from dashboards.model import DATASOURCE_UID  # lazy: CLI start-up, loaded only for this command
    from dashboards.validate import problems  # lazy: CLI start-up, loaded only for this command

    for name, d in all_dashboards().items():
        errs = problems(d, DATASOURCE_UID)
        if errs:
            raise P2esError(f"dashboard {name} is invalid: {errs[0]}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise P2esError(f"--out {out} exists and is not a directory")
    try:
        paths = export(out)
    except OSError as e:
        raise P2esError(f"cannot write under {out}: {e.strerror or e}") from None
    for p in paths:
        print(p)
    return 0
