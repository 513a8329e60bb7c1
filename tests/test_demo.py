"""``p2es demo``: the live ward demo on the embedded broker (no services), and ``--offline``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from p2es.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_demo_ckpt(tiny_ckpt: str) -> Path:
    return Path(tiny_ckpt)


# Alert rules for the tiny (untrained) model: its ECG is noise, so the rules look at what does not
# depend on it.  hr_ppg_bpm is measured on the wearable's PPG by the engine, so every simulated
# patient (sinus, AF: 60-100 bpm) has a pulse above 20 bpm in every window: `pulse_seen` must fire
# exactly once per patient, at the second window (for: 4s = one window step), and then stay
# firing (repeat 10m); `pulse_impossible` can never fire.
DEMO_TEST_RULES = """\
version: 1
rules:
  - name: pulse_seen
    metric: hr_ppg_bpm
    op: ">"
    threshold: 20
    for: 4s
    priority: low
    summary: "Pulse {value:.0f} bpm from the PPG for {for}"
  - name: pulse_impossible
    metric: hr_ppg_bpm
    op: ">"
    threshold: 400
    priority: high
"""


def test_live_demo_embedded_broker(tiny_demo_ckpt, tmp_path, capsys):
    from engine.app.demo import run_demo

    out = tmp_path / "demo"
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEMO_TEST_RULES)
    # leftovers of an earlier run (state, outbox) must not leak into this one
    (out / ".alerts").mkdir(parents=True)
    (out / ".alerts" / "state.json").write_text("{not json")
    args = build_parser().parse_args(
        [
            "demo",
            "--patients",
            "2",
            "--duration",
            "20",
            "--speed",
            "10",
            "--checkpoint",
            str(tiny_demo_ckpt),
            "--steps",
            "2",
            "--k",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
            "--refresh",
            "0.5",
            "--rules",
            str(rules),
        ]
    )
    t0 = time.monotonic()
    s = run_demo(args, live=False)
    wall = time.monotonic() - t0
    assert not s.interrupted and wall < 45
    assert set(s.patients) == {"ward-000", "ward-001"}
    rhythms = {p.rhythm for p in s.patients.values()}
    assert len(rhythms) == 2  # mixed rhythms
    assert len({p.fs_device for p in s.patients.values()}) == 2  # mixed device rates
    for p in s.patients.values():
        assert p.windows >= 2, p.id  # every patient produced windows
        assert p.continuous, p.id  # stitched ECG: each chunk starts where the previous ended
        t0_, fs, ecg, std = p.stitched()
        assert ecg.shape[0] == 12 and ecg.shape[1] >= 10 * 128 and np.all(np.isfinite(ecg))
        assert std.shape == ecg.shape and np.all(std >= 0)
        assert p.png is not None and p.png.is_file() and p.png.stat().st_size > 10_000
        assert p.png.parent == out
    assert sorted(x.name for x in out.glob("*.png")) == ["ward-000.png", "ward-001.png"]
    text = capsys.readouterr().out
    assert "mean |HR_ecg - HR_ppg|" in text and "ward-001" in text
    assert "[" in text and "windows" in text  # compact progress lines when stdout is not a TTY

    # the alert leg: AlertService on the embedded broker -> MQTT alert messages + signed webhooks
    assert s.rules == f"rules {rules} (as given)"
    assert s.alert_stats["vitals_in"] == s.windows  # every vitals message reached the service
    assert s.alert_stats["invalid"] == {} and s.alert_stats.get("internal_errors", 0) == 0
    ev = s.alert_events
    assert {e.rule for e in ev} == {"pulse_seen"}, [e.message for e in ev]
    assert sorted((e.patient, e.state) for e in ev) == [("ward-000", "firing"), ("ward-001", "firing")]
    for e in ev:
        p = s.patients[e.patient]
        assert e.priority == "low" and e.metric == "hr_ppg_bpm" and 20 < e.value < 200
        assert e.message == f"Pulse {e.value:.0f} bpm from the PPG for 4s"
        assert e.t - p.t_start == pytest.approx(4.0, abs=0.6)  # event time: the second window
        assert p.alerts == {"pulse_seen": "low"}  # still firing at the end
    # every notification went through the outbox to the receiver, signed, and verified there
    wh = s.webhooks
    assert wh["received"] == wh["verified"] == wh["accepted"] == wh["delivered"] == wh["enqueued"] == 2, wh
    assert wh["pending"] == 0 and wh["dead_letters"] == 0
    assert "webhooks: 2 delivered, 2 verified" in text
    assert re.search(r"ward-001 \(af\)\s+firing\s+low\s+pulse_seen", text)
    assert "[pulse_seen]" in text  # the active alerts in the progress lines


def test_demo_missing_checkpoint_is_one_line(tmp_path, capsys):
    rc = main(["demo", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        f"p2es: error: checkpoint not found: {tmp_path / 'nope.pt'}"
    ]
    rc = main(["demo", "--speed", "0", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--speed" in capsys.readouterr().err
    rc = main(["demo", "--rules", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        f"p2es: error: rules file not found: {tmp_path / 'nope.yaml'}"
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    metric: hr\n    op: '>'\n    threshold: 1\n")
    rc = main(["demo", "--rules", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"p2es: error: {bad}:4: rules[0].metric"), err


def test_demo_timing_rules_shorten_durations_only():
    from alerts.rules import DEFAULT_RULES_PATH, load_rules
    from engine.app.demo import DEMO_TIMING_FACTOR, demo_timing_rules, load_demo_rules

    before = DEFAULT_RULES_PATH.read_bytes()
    shipped = load_rules()
    demo, label = load_demo_rules(None)
    assert "demo timing" in label and "default_rules.yaml" in label
    assert DEFAULT_RULES_PATH.read_bytes() == before  # the shipped file is never rewritten
    assert load_rules().by_name()["hr_high"].for_ == 30.0
    assert [r.name for r in demo.rules] == [r.name for r in shipped.rules]
    f = DEMO_TIMING_FACTOR
    assert demo.defaults.repeat == shipped.defaults.repeat / f
    assert demo.defaults.max_gap == shipped.defaults.max_gap  # data-gap tolerance: unchanged
    assert demo.defaults.gate == shipped.defaults.gate
    for a, b in zip(shipped.rules, demo.rules):
        assert b.for_ == a.for_ / f and b.clear_for == a.clear_for / f
        assert b.repeat == (None if a.repeat is None else a.repeat / f)
        same = ("metric", "op", "threshold", "clear_threshold", "priority", "labels", "summary", "gate")
        assert {k: getattr(b, k) for k in same} == {k: getattr(a, k) for k in same}
    assert demo.by_name()["hr_high"].for_ == 3.0
    assert demo_timing_rules(shipped, 2).by_name()["rr_irregular"].for_ == 60.0


def test_demo_sigterm_stops_cleanly_with_pictures(tiny_demo_ckpt, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2es.cli",
            "demo",
            "--patients",
            "2",
            "--duration",
            "600",
            "--speed",
            "10",
            "--checkpoint",
            str(tiny_demo_ckpt),
            "--steps",
            "2",
            "--k",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
            "--refresh",
            "0.5",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 40
        for line in proc.stdout:  # wait until both patients have reconstructed windows
            done = [int(x) for x in re.findall(r" w(\d+) ", line)]
            if len(done) == 2 and min(done) >= 2:
                break
            assert time.monotonic() < deadline, "no windows in time"
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in rest
    assert "interrupted" in rest
    assert sorted(x.name for x in out.glob("*.png")) == ["ward-000.png", "ward-001.png"]


def test_demo_offline_one_picture_per_rhythm(tmp_path, capsys):
    out = tmp_path / "offline"
    assert main(["demo", "--offline", "--records", "64", "--seed", "3", "--out", str(out)]) == 0
    data = np.load(out / "cohort.npz", allow_pickle=False)
    rhythms = {str(r) for r in data["rhythm"]}
    assert {p.stem for p in out.glob("*.png")} == rhythms and len(rhythms) >= 3
    assert f"wrote {len(rhythms)} pictures" in capsys.readouterr().out
