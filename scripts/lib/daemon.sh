# Shared by the scripts that start a private test daemon (scripts/mosquitto.sh,
# scripts/influxdb.sh): logging, install, pid check, wait, stop, status, lock and the
# start|stop|status|restart dispatch.  Source it after setting:
#   NAME COMM PKG BIN_FALLBACK RUN_DIR PIDFILE LOG PORT START_TIMEOUT STOP_WAIT_S
# and define healthy, check_port_matches and start.
# shellcheck shell=bash

say() { echo "$NAME: $*"; }
die() { echo "$NAME: ERROR: $*" >&2; exit 1; }

find_bin() {
    command -v "$COMM" 2>/dev/null || { [ -x "$BIN_FALLBACK" ] && echo "$BIN_FALLBACK"; } || true
}

# The daemon's binary, installing its Debian package when it is missing.
need_bin() {
    local bin
    bin="$(find_bin)"
    if [ -z "$bin" ]; then install_pkg "$PKG"; bin="$(find_bin)"; fi
    [ -n "$bin" ] || die "$COMM binary not found after install"
    echo "$bin"
}

install_pkg() {  # install_pkg PACKAGE
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "$1 is not installed and we are not root: apt-get install $1"
        sudo=(sudo)
    fi
    say "installing Debian package $1 ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$1" >&2; then
        say "install failed; running apt-get update and retrying" >&2
        "${sudo[@]}" apt-get update -q >&2
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "$1" >&2
    fi
}

# pid of our daemon if it is alive, else nothing.
our_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 0
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$COMM" ]; then
        echo "$pid"
    fi
}

port_open() { timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# wait_healthy [PID]: until `healthy`, or die with the log tail (also if PID exits).
wait_healthy() {
    local pid="${1:-}" deadline=$((SECONDS + START_TIMEOUT))
    until healthy; do
        if { [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; } || [ "$SECONDS" -ge "$deadline" ]; then
            echo "---- tail of $LOG ----" >&2; tail -n 20 "$LOG" >&2 || true
            if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then die "$COMM exited during startup"; fi
            die "not healthy on 127.0.0.1:$PORT after ${START_TIMEOUT}s"
        fi
        sleep 0.1
    done
}

stop() {
    local pid i
    pid="$(our_pid)"
    if [ -z "$pid" ]; then say "not running"; rm -f "$PIDFILE"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do  # then SIGKILL
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    say "stopped (pid $pid)"
}

status() {
    local pid
    pid="$(our_pid)"
    [ -z "$pid" ] || check_port_matches "$pid"
    if [ -n "$pid" ] && healthy; then say "running (pid $pid) on 127.0.0.1:$PORT"; return 0; fi
    if [ -n "$pid" ]; then say "process $pid alive but not answering on 127.0.0.1:$PORT"; return 1; fi
    say "not running"; return 3
}

# Serialise start/stop/restart (e.g. parallel pytest workers starting services).
lock() { mkdir -p "$RUN_DIR"; exec 9>"$RUN_DIR/.lock"; flock -w 60 9 || die "could not lock $RUN_DIR/.lock"; }

dispatch() {
    case "${1:-}" in
        start) lock; start ;;
        stop) lock; stop ;;
        restart) lock; stop; start ;;
        status) status ;;
        *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
    esac
}
