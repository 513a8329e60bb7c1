"""``p2es data ...``: the contract on disk and one clear line for every bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2es.cli import main
from p2es.leads import einthoven_residual
from wearable.sim import load_npz


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_synth_writes_the_contract(tmp_path, capsys):
    out = tmp_path / "x.npz"
    rc, stdout, _ = run(capsys, "data", "synth", "--records", "512", "--seed", "7", "--out", str(out))
    assert rc == 0 and "512 records" in stdout
    d = load_npz(out)
    assert d["ppg"].shape == (512, 1024) and d["ppg"].dtype == np.float32
    assert d["ecg"].shape == (512, 12, 1024) and d["ecg"].dtype == np.float32
    assert float(d["fs"]) == 128.0
    for k in ("subject", "age", "sex", "height_cm", "weight_kg", "rhythm", "r_peaks"):
        assert d[k].shape[0] == 512
    assert einthoven_residual(d["ecg"].astype(np.float64), axis=1) < 1e-6


def test_synth_options(tmp_path, capsys):
    out = tmp_path / "y.npz"
    rc, _, _ = run(
        capsys,
        "data",
        "synth",
        "--records",
        "8",
        "--seed",
        "1",
        "--out",
        str(out),
        "--duration",
        "10",
        "--fs",
        "250",
        "--subjects",
        "2",
        "--rhythm",
        "af=1,pvc=1",
        "--no-noisy-ecg",
    )
    assert rc == 0
    d = load_npz(out)
    assert d["ecg"].shape == (8, 12, 2500) and "ecg_noisy" not in d
    assert set(d["rhythm"]) <= {"af", "pvc"} and len(set(d["subject"].tolist())) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--rhythm", "sinus,torsades"], "unknown rhythm 'torsades'"),
        (["--duration", "-3"], "--duration must be positive"),
        (["--fs", "40"], "--fs must be at least 50 Hz"),
        (["--fs", "abc"], "expected a number"),
        (["--records", "0"], "must be at least 1"),
        (["--hr", "400"], "--hr must be within"),
    ],
)
def test_synth_bad_input_one_line(tmp_path, capsys, args, needle):
    rc, _, err = run(capsys, "data", "synth", "--records", "4", "--out", str(tmp_path / "z.npz"), *args)
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_wfdb_one_line(tmp_path, capsys):
    hea = tmp_path / "broken.hea"
    hea.write_text("this is not a header\n")
    rc, _, err = run(capsys, "data", "read", str(hea))
    assert rc == 2 and "broken" in err and err.count("\n") == 1 and "Traceback" not in err
    rc, _, err = run(capsys, "data", "read", str(tmp_path / "missing.hea"))
    assert rc == 2 and err.count("\n") == 1


def test_plot_and_its_errors(tmp_path, capsys):
    npz = tmp_path / "d.npz"
    assert run(capsys, "data", "synth", "--records", "3", "--out", str(npz))[0] == 0
    png = tmp_path / "p.png"
    rc, out, _ = run(capsys, "data", "plot", str(npz), "--index", "2", "--out", str(png))
    assert rc == 0 and png.stat().st_size > 10_000
    rc, _, err = run(capsys, "data", "plot", str(npz), "--index", "9", "--out", str(png))
    assert rc == 2 and "out of range" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "data", "plot", str(tmp_path / "nope.npz"), "--out", str(png))
    assert rc == 2 and "no such file" in err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    rc, _, err = run(capsys, "data", "plot", str(bad), "--out", str(png))
    assert rc == 2 and "not a readable .npz" in err


def test_console_script_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("p2es")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "p2es.cli"]
    p = subprocess.run(
        cmd + ["data", "synth", "--records", "2", "--out", str(tmp_path / "a.npz"), "--rhythm", "vt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "p2es: error: unknown rhythm 'vt' (choose from sinus, sinus_brady, sinus_tachy, af, pvc, long_qt, "
        "st_elevation, st_depression)"
    )
