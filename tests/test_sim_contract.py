"""The simulator's output contract, reproducibility and subject-disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest

from p2es.leads import LEADS, einthoven_residual
from wearable.sim import RHYTHMS, load_npz, save_npz, synthesize


@pytest.fixture(scope="module")
def batch():
    return synthesize(96, seed=7)


def test_contract_shapes_and_dtypes(batch):
    n, t = 96, 1024
    assert batch["ppg"].shape == (n, t) and batch["ppg"].dtype == np.float32
    assert batch["ecg"].shape == (n, 12, t) and batch["ecg"].dtype == np.float32
    assert float(batch["fs"]) == 128.0
    for key, dtype in (("subject", np.int64), ("sex", np.int8)):
        assert batch[key].shape == (n,) and batch[key].dtype == dtype
    for key in ("age", "height_cm", "weight_kg"):
        assert batch[key].shape == (n,) and np.all(np.isfinite(batch[key]))
    assert set(np.unique(batch["sex"])) <= {0, 1}
    assert set(batch["rhythm"]) <= set(RHYTHMS)
    rp = batch["r_peaks"]
    assert rp.dtype == np.int32 and rp.shape[0] == n
    valid = rp >= 0
    assert np.all(rp[valid] < t)
    assert np.all(valid.sum(axis=1) >= 3)  # 8 s always holds several beats
    # padded with -1 only at the end, increasing before that
    for row, ok in zip(rp, valid):
        k = ok.sum()
        assert ok[:k].all() and not ok[k:].any()
        assert np.all(np.diff(row[:k]) > 0)
    assert np.all(np.isfinite(batch["ecg"])) and np.all(np.isfinite(batch["ppg"]))


def test_einthoven_goldberger_identities_exact(batch):
    for key in ("ecg", "ecg_noisy"):
        x = batch[key].astype(np.float64)
        # exact in float64 before storage; float32 storage rounds each lead once
        assert einthoven_residual(x, axis=1) <= 4 * np.finfo(np.float32).eps * np.abs(x).max()
        i, ii, iii, avr, avl, avf = (x[:, k] for k in range(6))
        np.testing.assert_allclose(iii, ii - i, atol=1e-6)
        np.testing.assert_allclose(avr, -(i + ii) / 2, atol=1e-6)
        np.testing.assert_allclose(avl, i - ii / 2, atol=1e-6)
        np.testing.assert_allclose(avf, ii - i / 2, atol=1e-6)


def test_clean_copy_kept_and_noise_present(batch):
    d = batch["ecg_noisy"] - batch["ecg"]
    assert np.std(d) > 0.005  # noise was added to the copy...
    clean = synthesize(96, seed=7, noise=0.0)
    np.testing.assert_array_equal(clean["ecg"], batch["ecg"])  # ...never to the target
    np.testing.assert_array_equal(clean["ppg"], clean["ppg_clean"])


def test_reproducible_and_seed_dependent():
    a, b = synthesize(16, seed=3), synthesize(16, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = synthesize(16, seed=4)
    assert not np.allclose(a["ecg"], c["ecg"])


def test_subject_disjoint_splits_by_seed():
    train, val, test = (synthesize(64, seed=s, noisy_ecg=False) for s in (1, 2, 3))
    s1, s2, s3 = (set(d["subject"].tolist()) for d in (train, val, test))
    assert not (s1 & s2) and not (s1 & s3) and not (s2 & s3)
    # several records per subject by default, demographics constant within a subject
    subj = train["subject"]
    assert len(set(subj.tolist())) == 16
    for s in set(subj.tolist()):
        sel = subj == s
        for key in ("age", "sex", "height_cm", "weight_kg"):
            assert np.unique(train[key][sel]).size == 1


def test_same_demographics_differ_individually():
    d = synthesize(200, seed=11, n_subjects=200, rhythm_mix="sinus", noise=0.0, noisy_ecg=False)
    # two subjects' ECGs differ even after normalising rate: compare median-beat amplitudes
    amp = np.abs(d["ecg"]).max(axis=2)  # [N, 12]
    assert np.std(amp[:, 1]) / np.mean(amp[:, 1]) > 0.1


def test_options_duration_fs_subjects_mix():
    d = synthesize(10, seed=1, duration_s=4.0, fs=250.0, n_subjects=2, rhythm_mix="af=1", noisy_ecg=False)
    assert d["ppg"].shape == (10, 1000) and d["ecg"].shape == (10, 12, 1000)
    assert len(set(d["subject"].tolist())) == 2
    assert set(d["rhythm"]) == {"af"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rhythm_mix="sinus,vfib"), "unknown rhythm 'vfib'"),
        (dict(duration_s=-1.0), "duration"),
        (dict(fs=40.0), "at least 50 Hz"),
        (dict(rhythm_mix="sinus=-1"), "non-negative"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthesize(4, seed=0, **kwargs)


def test_npz_round_trip(tmp_path, batch):
    path = save_npz(tmp_path / "x.npz", batch)
    back = load_npz(path)
    assert set(back) == set(batch)
    for k in batch:
        np.testing.assert_array_equal(back[k], batch[k])
    assert tuple(LEADS) == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def test_ppg_sensor_front_ends():
    plain = synthesize(64, seed=9, ppg_frontend=0.0, noisy_ecg=False)
    dev = synthesize(64, seed=9, ppg_frontend=1.0, noisy_ecg=False)
    np.testing.assert_array_equal(plain["ecg"], dev["ecg"])  # only the device PPG changes
    np.testing.assert_array_equal(plain["ppg_clean"], dev["ppg_clean"])
    assert np.all(np.any(plain["ppg"] != dev["ppg"], axis=1))
    # AC coupling removes the pulse's DC level (mean near 0 relative to the pulse height)
    rel_mean = np.abs(dev["ppg"].mean(axis=1)) / np.ptp(dev["ppg"], axis=1)
    assert np.median(rel_mean) < np.median(np.abs(plain["ppg"].mean(axis=1)) / np.ptp(plain["ppg"], axis=1))
    # ADC saturation: some records have flat tops (many samples at the maximum)
    at_max = (dev["ppg"] >= dev["ppg"].max(axis=1, keepdims=True) - 1e-7).sum(axis=1)
    assert np.mean(at_max > 10) > 0.2
    with pytest.raises(ValueError, match="ppg_frontend"):
        synthesize(2, seed=0, ppg_frontend=1.5)
