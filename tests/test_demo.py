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
def tiny_demo_ckpt(tmp_path_factory) -> Path:
    from engine.train import TrainConfig, train

    path = tmp_path_factory.mktemp("demo_ckpt") / "tiny.pt"
    train(TrainConfig(variant="p2es", model=dict(widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8),
                      steps=2, batch_size=4, data="fake", chunk_records=8, ckpt_every=0, group_refit_every=1,
                      group_reservoir=16, progress=False), path)
    return path


def test_live_demo_embedded_broker(tiny_demo_ckpt, tmp_path, capsys):
    from engine.demo import run_demo

    out = tmp_path / "demo"
    args = build_parser().parse_args(["demo", "--patients", "2", "--duration", "20", "--speed", "10",
                                      "--checkpoint", str(tiny_demo_ckpt), "--steps", "2", "--k", "2",
                                      "--threads", "1", "--out", str(out), "--refresh", "0.5"])
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


def test_demo_missing_checkpoint_is_one_line(tmp_path, capsys):
    rc = main(["demo", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"p2es: error: checkpoint not found: {tmp_path / 'nope.pt'}"]
    rc = main(["demo", "--speed", "0", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--speed" in capsys.readouterr().err


def test_demo_sigterm_stops_cleanly_with_pictures(tiny_demo_ckpt, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2es.cli", "demo", "--patients", "2", "--duration", "600", "--speed", "10",
         "--checkpoint", str(tiny_demo_ckpt), "--steps", "2", "--k", "1", "--threads", "1",
         "--out", str(out), "--refresh", "0.5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
