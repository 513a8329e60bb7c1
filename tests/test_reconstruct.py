"""engine.model.reconstruct and ``p2es reconstruct``.

Mechanics (time axis, windows, stitching, NaN policy, errors) run against a tiny checkpoint
trained for two steps in a temp dir (seconds).  The acceptance test at the end runs the
SHIPPED checkpoint on heartpy's real PPG recordings and checks that the reconstructed lead II
beats at the pulse rate of the PPG.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import engine.model.reconstruct as rc
from engine.model import realppg
from engine.model.checkpoint import load_model
from engine.model.reconstruct import DEFAULT_CHECKPOINT, Reconstruction, plan_windows, reconstruct
from engine.model.train import TrainConfig, train
from p2es.cli import main
from p2es.errors import InputError, P2esError
from p2es.leads import LEADS, derive_12, einthoven_residual

T_MODEL, FS_MODEL = 1024, 128.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path, Entry) of a tiny p2es model (8 s windows at 128 Hz) trained for two steps."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    cfg = TrainConfig(
        variant="p2es",
        model=dict(widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8),
        steps=2,
        batch_size=4,
        lr=3e-3,
        warmup=1,
        data="fake",
        duration_s=8.0,
        fs=FS_MODEL,
        chunk_records=8,
        ckpt_every=0,
        group_refit_every=1,
        group_reservoir=16,
        log_every=1,
        progress=False,
        seed=0,
    )
    train(cfg, path)
    entry = load_model(path, "p2es")
    assert entry.model.cfg.T == T_MODEL and entry.model.cfg.fs == FS_MODEL
    return path, entry


def _ppg(fs: float, dur: float, seed: int = 0) -> np.ndarray:
    """A pulse-like test signal (1.1 Hz fundamental + harmonic + wander + noise)."""
    n = int(round(dur * fs))
    t = np.arange(n) / fs
    rng = np.random.default_rng(seed)
    return (
        np.sin(2 * np.pi * 1.1 * t)
        + 0.4 * np.sin(2 * np.pi * 2.2 * t + 1.0)
        + 0.3 * np.sin(2 * np.pi * 0.15 * t)
        + 0.02 * rng.standard_normal(n)
        + 500.0
    )


def _expected_len(n: int, fs: float) -> tuple[int, float]:
    r = Fraction(FS_MODEL / fs).limit_denominator(rc.MAX_DENOMINATOR)
    return -(-n * r.numerator // r.denominator), fs * r.numerator / r.denominator


# ------------------------------------------------------------------------------ mechanics


@pytest.mark.parametrize("dur", [8.0, 8.3, 60.0])
@pytest.mark.parametrize("fs", [25.0, 100.0, 117.0, 250.0, 1000.0, 127.9, 116.98775437704904])
def test_time_axis_and_windows(tiny, fs, dur):
    _, entry = tiny
    x = _ppg(fs, dur)
    res = reconstruct(x, fs, checkpoint=entry, steps=2, k=1, progress=False)
    n_out, fs_out = _expected_len(x.size, fs)
    assert isinstance(res, Reconstruction)
    assert res.ecg.shape == res.std.shape == (12, n_out) and res.time_s.shape == (n_out,)
    assert res.fs_model == FS_MODEL and abs(res.fs_out / FS_MODEL - 1) < 3e-5
    assert res.fs_out == pytest.approx(fs_out, rel=1e-12)
    assert res.time_s[0] == 0.0
    np.testing.assert_allclose(np.diff(res.time_s), 1.0 / fs_out, rtol=1e-9)
    assert x.size / fs - 1.0 / fs_out - 1e-9 <= res.time_s[-1] < x.size / fs  # spans the input
    assert res.duration_s == pytest.approx(x.size / fs)
    assert np.isfinite(res.ecg).all() and (res.std >= 0).all()
    # windows: the first at 0, hop 4 s, the last aligned to the end -> everything covered
    hop = 512
    w = res.windows
    assert w[0] == 0 and w[-1] + T_MODEL == n_out
    assert np.all(np.diff(w) > 0) and np.all(np.diff(w) <= hop)
    expect = len(range(0, n_out - T_MODEL + 1, hop)) + ((n_out - T_MODEL) % hop != 0)
    assert res.n_windows == expect
    assert res.nan_bridged_s == 0.0 and res.gaps == [] and res.nan_output_s == 0.0


def test_deterministic_for_a_seed_and_einthoven_exact(tiny):
    _, entry = tiny
    x = _ppg(100.0, 30.0)
    demo = {"age": 61, "sex": "M", "height_cm": 178, "weight_kg": 82}
    a = reconstruct(x, 100.0, checkpoint=entry, demographics=demo, steps=3, k=3, seed=7, progress=False)
    b = reconstruct(x, 100.0, checkpoint=entry, demographics=demo, steps=3, k=3, seed=7, progress=False)
    c = reconstruct(x, 100.0, checkpoint=entry, demographics=demo, steps=3, k=3, seed=8, progress=False)
    np.testing.assert_array_equal(a.ecg, b.ecg)
    np.testing.assert_array_equal(a.std, b.std)
    assert not np.array_equal(a.ecg, c.ecg)
    assert (a.std > 0).mean() > 0.9  # K = 3 samples spread
    # stitched limb leads obey Einthoven / Goldberger to float64 rounding
    assert einthoven_residual(a.ecg) < 1e-12
    assert np.isfinite(a.ecg).all()


# -- stitching with a stub model ----------------------------------------------------------


def _smooth8(t: np.ndarray) -> np.ndarray:
    """A known smooth 8-lead signal of absolute time [8, N]."""
    k = np.arange(8)[:, None]
    return 0.3 * np.sin(2 * np.pi * (0.2 + 0.05 * k) * t[None] + k) + 0.01 * k * t[None]


def _run_with_stub(monkeypatch, x, fs, entry, mean_fn, std_fn, **kw):
    """Run reconstruct with the model replaced by ``mean_fn(start) / std_fn(start)`` per window.

    Pass 1 (stub returning zeros) gives the window plan; pass 2 feeds each window, in the
    order the windows are sampled, the known signal at its absolute position."""

    def zeros(entry, feats, demo, *, steps, k, generator, temperature=None):
        z = np.zeros((feats.shape[0], 12, feats.shape[-1]))
        return z, z

    monkeypatch.setattr(rc, "sample_windows", zeros)
    plan = reconstruct(x, fs, checkpoint=entry, progress=False, **kw).windows
    it = iter(plan)

    def stub(entry, feats, demo, *, steps, k, generator, temperature=None):
        assert feats.shape[1:] == (3, T_MODEL)
        starts = [next(it) for _ in range(feats.shape[0])]
        return np.stack([mean_fn(s) for s in starts]), np.stack([std_fn(s) for s in starts])

    monkeypatch.setattr(rc, "sample_windows", stub)
    res = reconstruct(x, fs, checkpoint=entry, progress=False, **kw)
    np.testing.assert_array_equal(res.windows, plan)
    return res


@pytest.mark.parametrize("hop_s", [4.0, 3.0, 1.5, 8.0])
def test_stitching_reproduces_a_signal_present_in_every_window(tiny, monkeypatch, hop_s):
    _, entry = tiny
    fs = 100.0
    x = _ppg(fs, 61.3)
    x[int(30 * fs) : int(33 * fs)] = np.nan  # a gap: two stretches
    n_out, fs_out = _expected_len(x.size, fs)
    t = np.arange(n_out) / fs_out
    truth8 = _smooth8(t)
    truth_std = 0.05 + 0.02 * np.cos(2 * np.pi * 0.1 * t)[None].repeat(12, 0)

    def mean_fn(s):
        return derive_12(truth8[:, s : s + T_MODEL], axis=0)

    def std_fn(s):
        return truth_std[:, s : s + T_MODEL]

    res = _run_with_stub(monkeypatch, x, fs, entry, mean_fn, std_fn, hop_s=hop_s, batch=5)
    ok = np.isfinite(res.ecg[0])
    assert ok.mean() > 0.9 and np.isnan(res.ecg[:, ~ok]).all()
    np.testing.assert_allclose(res.ecg[:, ok], derive_12(truth8, axis=0)[:, ok], atol=1e-12)
    np.testing.assert_allclose(res.std[:, ok], truth_std[:, ok], atol=1e-12)
    assert einthoven_residual(res.ecg[:, ok]) < 1e-12


def test_stitching_cross_fades_without_seams(tiny, monkeypatch):
    """Window i returns the constant i: the stitched signal must move smoothly from one
    window's value to the next (no jump), stay within the neighbours' range, and be exactly
    the window's value where only that window covers the sample."""
    _, entry = tiny
    x = _ppg(250.0, 45.0)
    counter = iter(range(10_000))
    values: dict[int, float] = {}

    def mean_fn(s):
        values[s] = float(next(counter))
        return np.full((12, T_MODEL), values[s])

    res = _run_with_stub(monkeypatch, x, 250.0, entry, mean_fn, lambda s: np.zeros((12, T_MODEL)))
    lead = res.ecg[0]
    assert np.isfinite(lead).all()
    w = res.windows
    step = np.abs(np.diff(lead))
    # a seam would be a jump of ~0.5-1; on the regular grid (hop 4 s = T/2: sin^2 ramps of 512
    # samples) the cross-fade moves at most pi/(2*512) per sample; the last, end-aligned
    # window overlaps more, so its cross-fade is shorter, but still gradual
    assert step[: w[-1]].max() <= math.pi / (2 * 512) + 1e-12
    assert step.max() < 0.01
    assert np.all(np.diff(lead) >= -1e-12)  # monotone: 0, 1, 2, ...
    assert lead[0] == values[w[0]] and lead[-1] == values[w[-1]]
    # einthoven for the derived leads of a constant: III = II - I = 0
    assert np.abs(res.ecg[2]).max() < 1e-12


def test_plan_windows_tiles_each_valid_stretch():
    valid = np.ones(5000, dtype=bool)
    valid[2000:2100] = False
    valid[4100:4150] = False
    valid[4550:] = False  # 400-sample stretch 4150..4550
    starts = plan_windows(valid, 1024, 512)
    cover = np.zeros(5000, dtype=int)
    for s in starts:
        assert valid[s : s + 1024].all()  # no window touches a gap
        cover[s : s + 1024] += 1
    assert (cover[:2000] > 0).all() and (cover[2100:4100] > 0).all()
    assert (cover[4100:] == 0).all()  # shorter than one window
    assert list(starts) == [0, 512, 976, 2100, 2612, 3076]


# -- NaN policy -----------------------------------------------------------------------------


def test_nan_runs_bridged_or_left_as_gaps(tiny):
    _, entry = tiny
    fs = 100.0
    x = _ppg(fs, 70.0)
    x[:30] = np.nan  # 0.3 s at the start: bridged (held)
    x[1000:1050] = np.nan  # 0.5 s: bridged
    x[2000:2100] = np.inf  # 1.0 s (inf counts as NaN): bridged
    x[3500:3800] = np.nan  # 3.0 s: a gap
    x[5000:5003] = np.nan  # 0.03 s: bridged
    res = reconstruct(x, fs, checkpoint=entry, steps=2, k=1, progress=False)
    assert res.nan_bridged_runs == 4
    assert res.nan_bridged_s == pytest.approx(1.83)
    assert res.gaps == [pytest.approx((35.0, 38.0))]
    t = res.time_s
    in_gap = (t > 34.99) & (t < 38.0)
    assert np.isnan(res.ecg[:, in_gap]).all() and np.isnan(res.std[:, in_gap]).all()
    assert np.isfinite(res.ecg[:, ~in_gap]).all()
    assert res.nan_output_s == pytest.approx(3.0, abs=0.02)
    assert np.isnan(res.ppg[in_gap]).all() and np.isfinite(res.ppg[~in_gap]).all()
    for s in res.windows:  # no window overlaps the gap
        assert not in_gap[s : s + T_MODEL].any()
    assert "bridged: 1.83 s in 4 run(s)" in res.summary()
    assert "1 long NaN gap" in res.summary()


def test_stretch_shorter_than_a_window_stays_nan(tiny):
    _, entry = tiny
    fs = 50.0
    x = _ppg(fs, 30.0)
    x[200:300] = np.nan  # 4-6 s gap: the first 4 s are too short
    res = reconstruct(x, fs, checkpoint=entry, steps=2, k=1, progress=False)
    t = res.time_s
    assert np.isnan(res.ecg[:, t < 6.0]).all() and np.isfinite(res.ecg[:, t >= 6.0]).all()
    assert res.windows[0] == np.searchsorted(t, 6.0 - 1e-9)
    assert res.nan_output_s == pytest.approx(6.0, abs=0.02)


# -- input errors (API) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ppg,fs,kw,match",
    [
        (np.ones(2000), 10.0, {}, "25-2000 Hz"),
        (np.ones(2000), 2500.0, {}, "25-2000 Hz"),
        (np.ones(2000), float("nan"), {}, "25-2000 Hz"),
        (np.ones(2000), float("inf"), {}, "25-2000 Hz"),
        (np.ones(2000), "fast", {}, "not a number"),
        (np.zeros(0), 100.0, {}, "empty"),
        (np.full(2000, np.nan), 100.0, {}, "all NaN"),
        (np.ones((2, 2000)), 100.0, {}, "one channel"),
        (np.ones(799), 100.0, {}, "at least one 8 s window"),
        (np.ones(2000), 100.0, {"hop_s": 0.0}, "hop must be"),
        (np.ones(2000), 100.0, {"hop_s": 9.0}, "hop"),
        (np.ones(2000), 100.0, {"demographics": {"age": 300}}, "age"),
        (np.ones(2000), 100.0, {"demographics": {"sex": "X"}}, "sex"),
        (np.ones(2000), 100.0, {"demographics": {"shoe": 42}}, "unknown demographic"),
        (np.ones(2000), 100.0, {"k": 0}, ">= 1"),
        (np.r_[np.ones(500), np.full(300, np.nan), np.ones(500)], 100.0, {}, "no stretch of valid"),
    ],
)
def test_bad_inputs_raise_one_line(tiny, ppg, fs, kw, match):
    _, entry = tiny
    with pytest.raises(InputError, match=match) as e:
        reconstruct(ppg, fs, checkpoint=entry, progress=False, **kw)
    assert "\n" not in str(e.value)


def test_exactly_one_window_is_enough(tiny):
    _, entry = tiny
    res = reconstruct(np.sin(np.arange(800) / 10.0), 100.0, checkpoint=entry, steps=1, k=1, progress=False)
    assert res.ecg.shape == (12, 1024) and list(res.windows) == [0]


# ------------------------------------------------------------------------------ CLI


def _run_cli(argv, capsys):
    rc_ = main(argv)
    out, err = capsys.readouterr()
    return rc_, out, err


def _write_csv_ppg(path: Path, x: np.ndarray, header: str | None = None) -> Path:
    lines = ([header] if header else []) + ["nan" if not np.isfinite(v) else f"{v:.5f}" for v in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_csv_end_to_end(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    x = _ppg(250.0, 20.0)
    x[1000:1100] = np.nan
    f = _write_csv_ppg(tmp_path / "ppg.csv", x, header="ppg")
    out, std, png = tmp_path / "o" / "ecg.csv", tmp_path / "std.csv", tmp_path / "ecg.png"
    rc_, so, se = _run_cli(
        [
            "reconstruct",
            "--ppg",
            str(f),
            "--fs",
            "250",
            "--age",
            "44",
            "--sex",
            "f",
            "--height-cm",
            "165",
            "--weight-kg",
            "60",
            "--out",
            str(out),
            "--plot",
            str(png),
            "--std-out",
            str(std),
            "--checkpoint",
            str(ckpt),
            "--steps",
            "2",
            "--k",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ],
        capsys,
    )
    assert rc_ == 0, se
    lines = out.read_text().splitlines()
    assert lines[0] == "time," + ",".join(LEADS) == "time,I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6"
    n_out, fs_out = _expected_len(x.size, 250.0)
    assert len(lines) == 1 + n_out
    data = np.loadtxt(out, delimiter=",", skiprows=1)
    np.testing.assert_allclose(data[:, 0], np.arange(n_out) / fs_out, atol=1e-7)
    assert all(len(v.split(".")[1]) == 4 for v in lines[1].split(",")[1:])
    assert np.isfinite(data).all()
    sd = np.loadtxt(std, delimiter=",", skiprows=1)
    assert sd.shape == data.shape and (sd[:, 1:] >= 0).all()
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "20.0 s of PPG at 250 Hz" in so and "4 window(s)" in so and "bridged: 0.40 s in 1 run" in so
    assert "took" in so and str(out) in so


def test_cli_wfdb_without_fs(tiny, tmp_path, capsys):
    import wfdb

    ckpt, _ = tiny
    x = _ppg(125.0, 12.0)
    wfdb.wrsamp(
        "rec",
        fs=125,
        units=["NU"],
        sig_name=["PLETH"],
        p_signal=x[:, None],
        fmt=["16"],
        write_dir=str(tmp_path),
    )
    out = tmp_path / "ecg.csv"
    rc_, so, se = _run_cli(
        [
            "reconstruct",
            "--ppg",
            str(tmp_path / "rec.hea"),
            "--out",
            str(out),
            "--checkpoint",
            str(ckpt),
            "--steps",
            "1",
            "--k",
            "1",
            "--no-progress",
        ],
        capsys,
    )
    assert rc_ == 0, se
    assert "at 125 Hz" in so
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (_expected_len(x.size, 125.0)[0], 13)


def _bad_inputs(tmp_path: Path, ckpt: Path):
    good = _write_csv_ppg(tmp_path / "good.csv", _ppg(100.0, 10.0))
    short = _write_csv_ppg(tmp_path / "short.csv", _ppg(100.0, 5.0))
    allnan = _write_csv_ppg(tmp_path / "nan.csv", np.full(1000, np.nan))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    import wfdb

    wfdb.wrsamp(
        "ecgonly",
        fs=100,
        units=["mV"],
        sig_name=["II"],
        p_signal=_ppg(100.0, 10.0)[:, None] - 500,
        fmt=["16"],
        write_dir=str(tmp_path),
    )
    base = ["--checkpoint", str(ckpt), "--steps", "1", "--k", "1", "--no-progress"]
    return {
        "no PPG channel": (["--ppg", str(tmp_path / "ecgonly.hea"), *base], "no PPG channel"),
        "output is a folder": (
            ["--ppg", str(good), "--fs", "100", *base, "--out", str(tmp_path)],
            "is a folder",
        ),
        "missing checkpoint": (
            ["--ppg", str(good), "--fs", "100", "--checkpoint", str(tmp_path / "none.pt")],
            "checkpoint not found",
        ),
        "corrupt checkpoint": (["--ppg", str(good), "--fs", "100", "--checkpoint", str(corrupt)], "corrupt"),
        "model not in set": (["--ppg", str(good), "--fs", "100", "--model", "ddpm", *base], "not in"),
        "missing ppg file": (["--ppg", str(tmp_path / "nope.csv"), "--fs", "100", *base], "no such file"),
        "binary ppg file": (["--ppg", str(binary), "--fs", "100", *base], "bin.csv"),
        "empty ppg file": (["--ppg", str(empty), "--fs", "100", *base], "empty"),
        "no fs for a single column": (["--ppg", str(good), *base], "pass fs"),
        "fs too low": (["--ppg", str(good), "--fs", "10", *base], "25-2000 Hz"),
        "fs too high": (["--ppg", str(good), "--fs", "5000", *base], "25-2000 Hz"),
        "shorter than a window": (["--ppg", str(short), "--fs", "100", *base], "at least one 8 s window"),
        "all NaN": (["--ppg", str(allnan), "--fs", "100", *base], "all NaN"),
        "unknown file type": (["--ppg", str(ckpt), "--fs", "100", *base], "unknown file type"),
        "bad hop": (["--ppg", str(good), "--fs", "100", "--hop-s", "20", *base], "hop"),
    }


def test_cli_bad_inputs_one_line_exit_2(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    cases = _bad_inputs(tmp_path, ckpt)
    for name, (args, match) in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.csv"
        if "--out" not in args:
            args = [*args, "--out", str(out)]
        rc_, so, se = _run_cli(["reconstruct", *args], capsys)
        lines = se.strip().splitlines()
        assert rc_ == 2, (name, se)
        assert len(lines) == 1 and lines[0].startswith("p2es: error: "), (name, se)
        assert match in lines[0], (name, lines[0])
        assert "Traceback" not in se and not out.exists(), name


def test_default_checkpoint_is_the_shipped_set(tmp_path, monkeypatch, capsys):
    repo = Path(__file__).resolve().parent.parent
    assert DEFAULT_CHECKPOINT == repo / "engine" / "weights" / "p2es_set.pt"
    assert rc.DEFAULT_CHECKPOINT is DEFAULT_CHECKPOINT  # one definition (engine.model.checkpoint)
    monkeypatch.setattr(rc, "DEFAULT_CHECKPOINT", tmp_path / "weights" / "p2es_set.pt")
    f = _write_csv_ppg(tmp_path / "p.csv", _ppg(100.0, 9.0))
    rc_, so, se = _run_cli(
        ["reconstruct", "--ppg", str(f), "--fs", "100", "--out", str(tmp_path / "o.csv")], capsys
    )
    assert rc_ == 2 and se.count("\n") == 1 and "shipped checkpoint set" in se


# ------------------------------------------------------------------------------ real PPG


#: Seeds of the test, and the most kept windows (share, pooled over them) whose lead-II rate may
#: miss the pulse rate: the previous shipped set's measured rate over ten seeds (8 of 160, 5 %,
#: docs/model.md "Real data") -- the shipped model must be no worse than what it replaced.  The
#: model issue's target (at most 1 window in 100 over >= 10 seeds) is NOT met yet: the shipped
#: set has 6 of 160 (3.8 %, `python bench/real_ppg.py --seeds 10`), which the README states.
REAL_PPG_SEEDS = (0, 1, 2)
REAL_PPG_MAX_OFF = 0.05


def test_real_ppg_lead_ii_follows_pulse_rate():
    """The shipped model on real wearable PPG: in the 8 s windows that pass the PPG quality
    rule, the HR of reconstructed lead II is within 3 bpm of the PPG's pulse rate in at least
    95 % of them, pooled over three sampling seeds (``p2es reconstruct``'s defaults: K = 4, 10
    steps, hop 4 s).  How often a window is off over ten seeds: bench/real_ppg.py."""
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"shipped checkpoint {DEFAULT_CHECKPOINT} not trained yet")
    entry = load_model(DEFAULT_CHECKPOINT, "p2es")
    bad, kept_all, tables = [], 0, []
    for seed in REAL_PPG_SEEDS:
        try:
            rows = realppg.hr_table(entry, k=4, steps=10, seed=seed)
        except P2esError as e:
            pytest.fail(str(e))
        table = realppg.format_table(rows)
        tables.append(f"seed {seed}:\n{table}")
        kept = [r for r in rows if r["keep"]]
        assert len(kept) >= realppg.MIN_KEPT * len(rows), (
            f"only {len(kept)}/{len(rows)} windows pass the PPG SQI\n{table}"
        )
        for name, *_ in realppg.REAL:
            mine = [r for r in rows if r["rec"] == name]
            assert sum(r["keep"] for r in mine) >= 0.5 * len(mine), f"{name}: too many excluded\n{table}"
        kept_all += len(kept)
        bad += [(seed, r) for r in realppg.off_windows(rows)]  # NaN (no beats found) is off too
    print("\n" + "\n".join(tables))
    assert len(bad) <= REAL_PPG_MAX_OFF * kept_all, (
        f"{len(bad)}/{kept_all} kept windows off by more than {realppg.HR_TOL_BPM} bpm over seeds "
        f"{REAL_PPG_SEEDS} (model steps {entry.meta.get('steps')}): "
        + ", ".join(f"seed {s} {r['rec']} {r['t0']:.0f} s ({r['d']:+.1f} bpm)" for s, r in bad)
    )


def test_reconstruct_samples_at_the_saved_temperature(tiny, tmp_path):
    """A set whose p2es was saved at temperature 0.6 (``p2es set-sampler``): reconstruct samples
    at 0.6 (recorded in meta and the summary), an explicit ``temperature`` wins, and at the
    default it is exactly the set without a sampler config."""
    import shutil

    from engine.model.checkpoint import set_sampler
    from engine.model.config import SamplerConfig

    path, entry = tiny
    cool = tmp_path / "cool.pt"
    shutil.copyfile(path, cool)
    rc_ = main(["set-sampler", "--checkpoint", str(cool), "--temperature", "0.6"])
    assert rc_ == 0
    x = _ppg(100.0, 16.0)
    kw = dict(steps=2, k=2, seed=3, progress=False)
    a = reconstruct(x, 100.0, checkpoint=cool, **kw)
    b = reconstruct(x, 100.0, checkpoint=path, **kw)
    c = reconstruct(x, 100.0, checkpoint=path, temperature=0.6, **kw)
    d = reconstruct(x, 100.0, checkpoint=cool, temperature=1.0, **kw)
    assert a.meta["temperature"] == 0.6 and b.meta["temperature"] == 1.0
    assert "temperature 0.6" in a.summary() and "temperature" not in b.summary()
    np.testing.assert_array_equal(a.ecg, c.ecg)
    np.testing.assert_array_equal(b.ecg, d.ecg)
    assert np.nanmax(np.abs(a.ecg - b.ecg)) > 1e-3 and np.nanmean(a.std) < np.nanmean(b.std)
    with pytest.raises(InputError, match="temperature"):
        reconstruct(x, 100.0, checkpoint=entry, temperature=1.5, **kw)
    set_sampler(cool, "p2es", SamplerConfig(1.0))  # back to 1: bit-identical to no sampler config
    np.testing.assert_array_equal(reconstruct(x, 100.0, checkpoint=cool, **kw).ecg, b.ecg)
