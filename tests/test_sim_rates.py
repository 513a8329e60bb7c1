"""The simulator's heart-rate profiles (``wearable.sim.rates``): ``"v1"`` stays the default,
bit for bit, and ``"wide"`` reaches 35-180 bpm with beats that stay plausible at both ends.

Rates are measured from the annotated beats (``r_peaks``), never read back from ``hr_bpm``.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from engine.model import data as D
from engine.model.config import TrainConfig
from engine.model.train import add_train_arguments, config_from_args, make_stream
from p2es.cli import main
from p2es.errors import P2esError
from p2es.leads import LEAD_INDEX
from p2es.signal import detect_ppg_beats, heart_rate_bpm
from wearable.sim import RATE_PROFILES, synthesize
from wearable.sim import rates as R
from wearable.sim.demographics import sample_subjects

FS = 128.0
DUR = 8.0
T = int(DUR * FS)


def annotated(d: dict, i: int) -> np.ndarray:
    r = d["r_peaks"][i]
    return r[r >= 0]


def same_arrays(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k


# ---------------------------------------------------------------------------------------------
# the default does not move
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"hr_bpm": np.linspace(35.0, 180.0, 48)},
        {"noise": 0.0, "noisy_ecg": False, "rhythm_mix": "sinus_brady=1,sinus_tachy=1,af=1"},
    ],
    ids=["default", "forced-hr", "clean-fast-slow"],
)
def test_default_is_the_v1_profile_bit_for_bit(kw):
    same_arrays(synthesize(48, 5, **kw), synthesize(48, 5, rate_profile="v1", **kw))


def test_streams_default_to_v1():
    assert TrainConfig().sim_rate_profile == "v1" and R.DEFAULT_RATE_PROFILE == "v1"
    assert D.get_synthesize("sim") is synthesize and D.get_synthesize("sim", "v1") is synthesize
    kw = {"duration_s": 2.0, "noisy_ecg": False}
    same_arrays(D.fixed_set("val", 8, 1, **kw), synthesize(8, D.split_seed("val", 1, 0), **kw))
    assert make_stream(TrainConfig(), 2.0, 0).rate_profile == "v1"


def test_wide_equals_v1_at_ordinary_rates():
    """The wide profile's rate laws are the identity at <= 100 bpm (RR >= 0.6 s)."""
    kw = {"rhythm_mix": "sinus", "hr_bpm": 72.0, "noise": 0.0, "noisy_ecg": False}
    same_arrays(synthesize(16, 3, **kw), synthesize(16, 3, rate_profile="wide", **kw))


# ---------------------------------------------------------------------------------------------
# the wide profile
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_slow():
    """Clean brady / tachy / AF records of both profiles (the same seed)."""
    kw = {"rhythm_mix": "sinus_brady=1,sinus_tachy=1,af=1", "noise": 0.0, "noisy_ecg": False}
    return {p: synthesize(96, 7, rate_profile=p, **kw) for p in RATE_PROFILES}


def _hr_by_rhythm(d: dict) -> dict[str, np.ndarray]:
    hr = np.array([heart_rate_bpm(annotated(d, i), FS) for i in range(d["rhythm"].shape[0])])
    return {k: hr[d["rhythm"] == k] for k in ("sinus_brady", "sinus_tachy", "af")}


def test_wide_rates_span_35_to_180_from_the_annotated_beats(fast_slow):
    wide, v1 = _hr_by_rhythm(fast_slow["wide"]), _hr_by_rhythm(fast_slow["v1"])
    assert all(v.size >= 20 for v in wide.values())
    assert wide["sinus_tachy"].max() >= 170 and wide["sinus_tachy"].min() > 100
    assert wide["sinus_tachy"].max() <= 181
    assert wide["sinus_brady"].min() <= 38 and wide["sinus_brady"].min() >= 34
    assert wide["sinus_brady"].max() < 60
    assert wide["af"].max() > 150 and wide["af"].min() < 58 and 48 <= wide["af"].min()
    assert wide["af"].max() <= 172
    # v1 keeps its ranges
    assert v1["sinus_tachy"].max() <= 151 and v1["sinus_brady"].min() >= 41 and v1["af"].max() <= 141


@pytest.mark.parametrize("profile", RATE_PROFILES)
@pytest.mark.parametrize("hr, label", [(35.0, "sinus_brady"), (180.0, "sinus_tachy")])
def test_forced_extreme_rates_give_that_many_beats(profile, hr, label):
    d = synthesize(16, 2, rhythm_mix="sinus", hr_bpm=hr, rate_profile=profile, noise=0.0, noisy_ecg=False)
    assert np.all(d["rhythm"] == label)  # sinus records are relabelled by the forced rate
    for i in range(16):
        r = annotated(d, i)
        assert abs(r.size - DUR * hr / 60.0) <= 1.0
        assert abs(heart_rate_bpm(r, FS) - hr) <= 1.0


@pytest.fixture(scope="module")
def at_180():
    """Clean sinus records at 180 bpm, wide profile; P waves switched off so that the stretch
    between a T wave and the next QRS holds that T wave alone."""
    n = 32
    subj = sample_subjects(np.random.default_rng(11), n)
    subj = dataclasses.replace(subj, p_gain=np.zeros(n))
    kw = {"rhythm_mix": "sinus", "hr_bpm": 180.0, "noise": 0.0, "noisy_ecg": False}
    return synthesize(n, 11, subjects=subj, rate_profile="wide", **kw)


def test_t_wave_ends_before_the_next_qrs_at_180(at_180):
    d = at_180
    lead_ii = d["ecg"][:, LEAD_INDEX["II"]]
    worst = 0.0
    for i in range(lead_ii.shape[0]):
        r = annotated(d, i)
        half_qrs = d["qrs_ms"][i] / 2e3 * FS
        for a, b in zip(r[:-1], r[1:]):
            seg = lead_ii[i, int(a + half_qrs + 0.04 * FS) : int(b - half_qrs)]  # J + 40 ms .. next QRS onset
            k = int(np.argmax(np.abs(seg)))
            peak = abs(float(seg[k]))
            assert peak > 0.02  # the T wave is there (mV)
            worst = max(worst, float(np.min(np.abs(seg[k:]))) / peak)  # back to baseline before the QRS
    assert worst < 0.05, worst


@pytest.mark.parametrize("hr", [35.0, 180.0])
def test_one_ppg_foot_per_beat(hr, at_180):
    """Every annotated beat has a pulse foot of its own at R + PAT; at 180 bpm no other feet.
    (At slow rates p2es.signal's detector also counts a very large diastolic wave as a beat in
    ~1 % of subjects -- already so in "v1" at 42-55 bpm -- so extra feet are not checked there.)"""
    if hr == 180.0:
        d = at_180
    else:
        kw = {"rhythm_mix": "sinus", "hr_bpm": hr, "noise": 0.0, "noisy_ecg": False}
        d = synthesize(32, 12, rate_profile="wide", **kw)
    for i in range(d["ppg_clean"].shape[0]):
        feet = detect_ppg_beats(d["ppg_clean"][i], FS)["feet"]
        expect = annotated(d, i) + d["pat_ms"][i] * FS / 1e3  # R peak + pulse arrival time
        inner = expect[(expect > 0.5 * FS) & (expect < T - 0.5 * FS)]
        assert inner.size >= (2 if hr < 60 else 15)
        err = np.abs(inner[:, None] - feet[None, :])
        assert np.all(err.min(axis=1) <= 0.05 * FS), (i, err.min(axis=1).max() / FS)  # each beat a foot
        assert np.unique(err.argmin(axis=1)).size == inner.size  # ... of its own
        if hr > 100:
            found = feet[(feet > 0.55 * FS) & (feet < T - 0.55 * FS)]
            assert found.size <= inner.size  # and no extra ones


def test_rate_laws():
    rr = np.array([0.25, 0.3333, 0.45, 0.6, 1.0, 1.7])
    qt = R.qt_rr_factor_wide(rr)
    assert np.allclose(qt[3:], np.cbrt(rr[3:]))  # Fridericia at <= 100 bpm
    assert np.allclose(qt[:3], np.sqrt(rr[:3]) * 0.6 ** (-1 / 6))  # Bazett-shaped above
    assert np.all(0.4 * qt[1] < rr[1] - 0.05)  # QTc 400 ms at 180 bpm: QT ends > 50 ms before the RR
    hr = np.array([35.0, 70.0, 100.0, 140.0, 180.0])
    pr_rest, p_dur = np.full(5, 0.16), np.full(5, 0.10)
    pr = R.pr_wide(pr_rest, p_dur, hr)
    assert np.allclose(pr[:3], pr_rest[:3] - 0.0008 * (hr[:3] - 70.0)) and np.all(np.diff(pr) < 0)
    # the shortening above 100 bpm stops at P duration + 10 ms (0.116 s at 100 bpm -> 0.110 s)
    assert np.isclose(R.pr_wide(np.array([0.14]), np.array([0.10]), np.array([180.0]))[0], 0.11)
    assert np.allclose(R.hrv_scale(hr), [1, 1, 1, 0.65, 0.3])
    s, dd, da = R.pulse_scales(rr)
    assert np.all(s[3:] == 1) and np.all(dd[3:] == 1) and np.all(da[3:] == 1)
    assert (
        np.all(np.diff(s) >= 0) and np.all(dd <= s) and np.allclose(dd[:3], np.clip(rr[:3], 0.25, None) / 0.6)
    )


# ---------------------------------------------------------------------------------------------
# options and their errors
# ---------------------------------------------------------------------------------------------
def test_invalid_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown rate profile 'fast'"):
        synthesize(4, 0, rate_profile="fast")
    with pytest.raises(P2esError, match="sim-rate-profile must be 'v1' or 'wide'"):
        TrainConfig(sim_rate_profile="fast")
    with pytest.raises(P2esError, match="needs data 'sim'"):
        TrainConfig(data="fake", sim_rate_profile="wide")
    with pytest.raises(P2esError, match="unknown simulator rate profile"):
        D.fixed_set("val", 4, 0, rate_profile="fast")
    with pytest.raises(P2esError, match="has no rate profile"):
        D.SimStream(4, source="fake", rate_profile="wide")
    for p in RATE_PROFILES:  # the configuration's list is the simulator's
        TrainConfig(sim_rate_profile=p)


def test_wide_threads_through_fixed_set_stream_and_train_flags():
    kw = {"duration_s": 2.0, "noisy_ecg": False, "rhythm_mix": "sinus_tachy"}
    want = synthesize(8, D.split_seed("val", 0, 0), rate_profile="wide", **kw)
    same_arrays(D.fixed_set("val", 8, 0, rate_profile="wide", **kw), want)
    stream = D.SimStream(8, split="val", chunk_records=8, rate_profile="wide", sim_kwargs=kw)
    batch = next(iter(stream))
    perm = np.random.default_rng(D.split_seed("val", 0, 0)).permutation(8)
    assert np.array_equal(batch["ecg12"].numpy(), want["ecg"][perm])
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    cfg = config_from_args(p.parse_args(["--out", "x.pt", "--sim-rate-profile", "wide"]))
    assert cfg.sim_rate_profile == "wide" and make_stream(cfg, 2.0, 0).rate_profile == "wide"


def test_data_synth_rate_profile_flag(tmp_path, capsys):
    args = ["data", "synth", "--records", "4", "--seed", "3", "--duration", "2", "--rhythm", "sinus_tachy"]
    for profile in RATE_PROFILES:
        out = tmp_path / f"{profile}.npz"
        assert main([*args, "--out", str(out), "--rate-profile", profile]) == 0
        with np.load(out) as z:
            got = z["ecg"]
        want = synthesize(4, 3, duration_s=2.0, rhythm_mix="sinus_tachy", rate_profile=profile)["ecg"]
        assert np.array_equal(got, want)
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x.npz"), "--rate-profile", "fast"])
    assert "invalid choice" in capsys.readouterr().err
