"""Rule files: validation with line numbers, the shipped defaults, and the CLI around them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from alerts.rules import DEFAULT_RULES_PATH, RuleFileError, load_rules, load_rules_text, parse_duration

REPO = DEFAULT_RULES_PATH.parent.parent

BAD = """\
version: 1
defaults:
  repeat: 10m
rules:
  - name: hr_high
    metric: hr_bpm
    op: ">"
    threshold: 120
    for: 30 seconds
  - name: hr_high
    metric: hr_bpm
    op: "<"
    threshold: 50
  - name: qt
    metric: qtc
    op: ">"
    threshold: 500
    colour: red
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as ei:
        load_rules_text(text, "r.yaml")
    return ei.value.lines


def test_shipped_default_rules_are_valid_and_gate_morphology():
    rf = load_rules()
    names = {r.name for r in rf.rules}
    assert {
        "hr_high",
        "hr_low",
        "qtc_long",
        "st_elevation_inferior",
        "st_depression_lateral",
        "rr_irregular",
        "signal_quality_low",
        "no_data",
        "reconstruction_uncertain",
    } <= names
    by = rf.by_name()
    assert by["qtc_long"].threshold == 500 and rf.gate_for(by["qtc_long"]) is not None
    assert (
        by["st_elevation_inferior"].threshold == 0.1 and rf.gate_for(by["st_elevation_inferior"]) is not None
    )
    assert rf.gate_for(by["hr_high"]) is None
    assert all(r.priority in ("high", "medium", "low") for r in rf.rules)
    text = DEFAULT_RULES_PATH.read_text()
    assert "Sandau" in text and "IEC 60601-2-27" in text and "IEC 60601-1-8" in text


def test_errors_name_the_yaml_line_of_the_offending_node():
    assert problems(BAD) == [
        "r.yaml:9: rules[0].for: bad duration '30 seconds': use e.g. 30s, 2m, 1h30m, 500ms",
        "r.yaml:15: rules[2].metric: got 'qtc'; expected one of 'hr_bpm', 'hr_ppg_bpm', 'qrs_ms', "
        "'qtc_ms', 'sqi', 'uncertainty', 'rr_irregularity', 'st_septal_mv', 'st_anterior_mv', "
        "'st_lateral_mv', 'st_inferior_mv' or 'no_data'",
        "r.yaml:18: rules[2].colour: unknown key",
    ]


def test_duplicate_names_hysteresis_side_templates_and_yaml_syntax():
    dup = (
        "rules:\n  - {name: a, metric: sqi, op: '<', threshold: 0.3}\n"
        "  - name: a\n    metric: sqi\n    op: '<'\n    threshold: 0.2\n"
    )
    assert problems(dup) == ["r.yaml:3: rules[1].name: duplicate rule name 'a' (first at rules[0])"]
    side = (
        "rules:\n  - name: a\n    metric: hr_bpm\n    op: '>'\n    threshold: 120\n    clear_threshold: 125\n"
    )
    assert problems(side) == [
        "r.yaml:6: rules[0].clear_threshold: clear_threshold 125 must be <= "
        "threshold 120 for op '>' (the safe side)"
    ]
    tmpl = "rules:\n  - name: a\n    metric: hr_bpm\n    op: '>'\n    threshold: 1\n    summary: 'HR {hr}'\n"
    (line,) = problems(tmpl)
    assert line.startswith("r.yaml:6: rules[0].summary: unknown placeholder {hr}")
    (line,) = problems("rules:\n  - name: a\n    metric: [\n")
    assert line.startswith("r.yaml:4: YAML syntax:")
    (line,) = problems("rules:\n  - name: a\n    name: b\n    metric: sqi\n    op: '<'\n    threshold: 1\n")
    assert line == "r.yaml:3: rules[0].name: duplicate key"
    (line,) = problems("rules:\n  - name: a\n    metric: no_data\n    op: '<'\n    threshold: 1\n")
    assert line.startswith("r.yaml:4: rules[0].op: op must be '>' or '>=' for a no_data rule")
    (line,) = problems("defaults: {}\n")
    assert line == "r.yaml:1: rules: missing required key"


def test_durations():
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5 and parse_duration(15) == 15.0
    for bad in ("30", "3x", "-1s", "1m 30s", True, "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _p2es(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "p2es.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60, **kw
    )


def test_cli_check_prints_one_line_per_problem_and_exits_2(tmp_path, capsys, monkeypatch):
    from p2es.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - {name: a, metric: qtc_ms, op: '>', threshold: 500, for: 2m}\n")
    p = _p2es("alerts", "check", str(bad))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert [ln.split(": ", 1)[0] for ln in lines] == [f"{bad}:9", f"{bad}:15", f"{bad}:18"]
    assert "Traceback" not in p.stderr and p.stdout == ""
    p = _p2es("alerts", "check", str(good))
    assert p.returncode == 0 and "1 rule(s) OK" in p.stdout and "[gated 0.05 mV / SQI 0.6]" in p.stdout
    # the same entry point in-process (no second interpreter start): one line, exit 2
    monkeypatch.delenv("P2ES_WEBHOOK_SECRET", raising=False)
    for argv, start in (
        (["alerts", "run", "--rules", str(bad), "--influx-url", "none"], f"p2es: error: {bad}:9: "),
        (
            ["alerts", "run", "--webhook", "http://127.0.0.1:9/x", "--influx-url", "none"],
            "p2es: error: webhook cli-0 has no secret",
        ),
        (
            ["alerts", "run", "--broker", "http://x", "--influx-url", "none"],
            "p2es: error: bad alerts setting broker",
        ),
        (
            ["alerts", "silence", "--patient", "bed-1", "--for", "ten minutes"],
            "p2es: error: --for: bad duration",
        ),
        (["alerts", "silence", "--for", "5m"], "p2es: error: a silence needs --patient and/or --rule"),
        (["alerts", "ack", "--patient", "bed 1", "--rule", "r"], "p2es: error: patient: patient must match"),
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, (argv, err)


def test_cli_run_stops_cleanly_on_sigterm_and_flushes_influx(tmp_path, mqtt_broker, influxdb):
    """`p2es alerts run` as a process: vitals in over MQTT, SIGTERM, exit 0, alerts in InfluxDB."""
    import asyncio

    import aiomqtt
    import services

    host, port = mqtt_broker
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: sqi_low, metric: sqi, op: '<', threshold: 0.3, for: 8s}\n")
    pid = f"cli-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2es.cli",
            "alerts",
            "run",
            "--rules",
            str(rules),
            "--broker",
            f"mqtt://{host}:{port}",
            "--influx-url",
            influxdb[0],
            "--influx-db",
            influxdb[1],
            "--client-id",
            f"p2es-alerts-cli-{uuid.uuid4().hex[:6]}",
            "--state-file",
            str(tmp_path / "s.json"),
            "--spool-dir",
            str(tmp_path / "spool"),
            "--stats-every",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        state = tmp_path / "s.json"

        async def publish() -> None:
            async with aiomqtt.Client(host, port, identifier=f"t-{uuid.uuid4().hex[:6]}") as c:
                for i in range(4):
                    msg = {"patient": pid, "t": 1_718_000_000.0 + 4 * i, "hr_bpm": 70.0, "sqi": 0.1}
                    await c.publish(f"p2es/v1/patients/{pid}/vitals", json.dumps(msg).encode(), qos=1)

        # the service's subscription must exist before we publish: wait for its connect line
        lines: list[str] = []
        while time.monotonic() < deadline:
            ln = proc.stdout.readline()
            lines.append(ln)
            if "alerts connected" in ln or not ln:
                break
        assert any("alerts connected" in ln for ln in lines), "".join(lines)
        asyncio.run(publish())
        while time.monotonic() < deadline and not (
            state.exists() and pid in state.read_text() and '"firing"' in state.read_text()
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "Traceback" not in out
    rows = services.influx_points(f"SELECT * FROM alerts WHERE patient = '{pid}'")
    assert [(r["state"], r["rule"], r["priority"]) for r in rows] == [("firing", "sqi_low", "medium")]
