#!/usr/bin/env bash
# Start/stop every service the p2es tests need (Mosquitto + InfluxDB + a 3-node NATS cluster).
#
#   scripts/services.sh start|stop|status|restart
#
# See scripts/README.md for ports and environment variables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICES=(mosquitto influxdb nats)

case "${1:-}" in
    start | restart)
        for s in "${SERVICES[@]}"; do "$HERE/$s.sh" "$1"; done ;;
    stop)  # in parallel: each waits for its daemon to exit
        pids=()
        for s in "${SERVICES[@]}"; do "$HERE/$s.sh" stop & pids+=($!); done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=1; done
        exit "$rc" ;;
    status)
        rc=0
        for s in "${SERVICES[@]}"; do "$HERE/$s.sh" status || rc=$?; done
        exit "$rc" ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
