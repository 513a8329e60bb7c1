"""Realism of the simulator, measured from the signals (not read back from its parameters).

Every check measures the generated waveforms with ``p2es.signal`` (R-peak detection, PPG
feet, median-beat delineation) and compares against published normal ranges, the direction of
each demographic effect, the labelled rhythms, and two real recordings that registry packages
ship: pydicom's 12-lead ``waveform_ecg.dcm`` and heartpy's PPG ``data.csv``.

Published adult normal ranges used (2.5-97.5 % or clinical limits):
* PR 120-200 ms, QRS 70-110 ms, QTc (Fridericia) 350-460 ms, frontal axis -30..+90 deg
  (Rijnbeek et al., J Electrocardiol 2014; Mason et al., J Electrocardiol 2007);
* finger pulse arrival time (R peak -> PPG foot) 150-400 ms (Smith et al., "Pulse transit time:
  an appraisal of potential clinical applications", Thorax 1999; Allen, Physiol Meas 2007).
The ranges are widened by the delineator's measurement error where stated.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from p2es.leads import LEAD_INDEX
from p2es.signal import delineate, detect_ppg_beats, detect_r_peaks, heart_rate_bpm, rr_irregularity
from wearable.sim import synthesize
from wearable.sim.demographics import physiology

FS = 128.0


def measure(ecg: np.ndarray, fs: float = FS):
    r = detect_r_peaks(ecg, fs)
    return r, delineate(ecg, fs, r_peaks=r)


def cohort(n: int, seed: int, *, age: float, sex: int, height: float, weight: float, **kw):
    """Records of ``n`` different subjects who share the given demographics."""
    rng = np.random.default_rng(seed)
    subj = physiology(
        rng, np.full(n, age), np.full(n, sex, dtype=np.int8), np.full(n, height), np.full(n, weight)
    )
    kw.setdefault("rhythm_mix", "sinus")
    return synthesize(n, seed, subjects=subj, noise=0.0, noisy_ecg=False, **kw)


def cohort_measures(d) -> dict[str, np.ndarray]:
    out: dict[str, list] = {k: [] for k in ("qrs", "pr", "qtc", "axis", "rv5", "sv1", "hr", "rmssd", "pat")}
    for i in range(d["ecg"].shape[0]):
        r, m = measure(d["ecg"][i])
        out["qrs"].append(m.qrs_ms)
        out["pr"].append(m.pr_ms)
        out["qtc"].append(m.qtc_fridericia_ms)
        out["axis"].append(m.axis_deg)
        out["rv5"].append(m.r_amp_mv[LEAD_INDEX["V5"]])
        out["sv1"].append(m.s_amp_mv[LEAD_INDEX["V1"]])
        out["hr"].append(heart_rate_bpm(r, FS))
        out["rmssd"].append(1e3 * np.sqrt(np.mean(np.diff(np.diff(r) / FS) ** 2)))
        out["pat"].append(pulse_arrival_ms(r, d["ppg_clean"][i]))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def pulse_arrival_ms(r: np.ndarray, ppg: np.ndarray, fs: float = FS) -> float:
    feet = detect_ppg_beats(ppg, fs)["feet"]
    pats = []
    for rp in r:
        f = feet[(feet > rp) & (feet < rp + 0.5 * fs)]
        if f.size:
            pats.append((f[0] - rp) / fs * 1e3)
    return float(np.median(pats)) if pats else np.nan


def pulse_shape(ppg: np.ndarray, fs: float) -> tuple[float, float]:
    """(rise time foot->systolic peak as a fraction of the beat interval, diastolic-wave
    prominence relative to the pulse height) of the median pulse."""
    b = detect_ppg_beats(ppg, fs)
    feet, peaks = b["feet"], b["peaks"]
    if feet.size < 3:
        return np.nan, np.nan
    ibi = float(np.median(np.diff(feet)))
    seg_len = int(0.9 * ibi)
    segs = []
    rises = []
    for f in feet:
        p = peaks[(peaks > f) & (peaks < f + 0.6 * ibi)]
        if p.size:
            rises.append((p[0] - f) / ibi)
        if f + seg_len <= ppg.size:
            s = ppg[f : f + seg_len] - ppg[f]
            if s.max() > 0:
                segs.append(s / s.max())
    med = np.median(np.asarray(segs), axis=0)
    tail = med[int(np.argmax(med)) :]
    prominence = float(np.max(tail - np.minimum.accumulate(tail)))
    return float(np.median(rises)), prominence


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hr", [40.0, 55.0, 72.0, 100.0, 130.0, 160.0])
def test_r_peak_hr_equals_requested_hr(hr):
    d = synthesize(12, seed=int(hr), rhythm_mix="sinus", hr_bpm=hr, noise=0.0, noisy_ecg=False)
    for i in range(12):
        r = detect_r_peaks(d["ecg"][i], FS)
        assert abs(heart_rate_bpm(r, FS) - hr) <= 2.0
        truth = d["r_peaks"][i][d["r_peaks"][i] >= 0]
        assert abs(heart_rate_bpm(truth, FS) - hr) <= 2.0


@pytest.fixture(scope="module")
def sinus_population():
    d = synthesize(160, seed=21, rhythm_mix="sinus", noise=0.0, noisy_ecg=False)
    return d, cohort_measures(d)


def test_sinus_intervals_in_published_normal_ranges(sinus_population):
    _, m = sinus_population
    frac = lambda x, lo, hi: np.mean((x >= lo) & (x <= hi))  # noqa: E731
    assert 70 <= np.median(m["qrs"]) <= 105
    assert frac(m["qrs"], 60, 120) >= 0.95
    assert (
        130 <= np.nanmedian(m["pr"]) <= 190 and frac(m["pr"], 100, 230) >= 0.95
    )  # NaN (no P found) counts as out
    assert 380 <= np.median(m["qtc"]) <= 440 and frac(m["qtc"], 340, 470) >= 0.95
    assert 20 <= np.median(m["axis"]) <= 75 and frac(m["axis"], -40, 110) >= 0.95
    assert 0.5 <= np.median(m["rv5"]) <= 2.5  # R in V5 (mV)
    assert 0.3 <= np.median(m["sv1"]) <= 1.8  # S in V1 (mV)
    assert 60 <= np.median(m["hr"]) <= 85


def test_pulse_arrival_time_in_range(sinus_population):
    _, m = sinus_population
    assert np.all((m["pat"] >= 150) & (m["pat"] <= 400)), (np.nanmin(m["pat"]), np.nanmax(m["pat"]))


def test_measured_intervals_track_the_generated_ones(sinus_population):
    d, m = sinus_population
    for key, truth in (("qrs", d["qrs_ms"]), ("pr", d["pr_ms"]), ("qtc", d["qtc_ms"])):
        ok = np.isfinite(m[key]) & np.isfinite(truth)
        assert ok.mean() > 0.95
        r = np.corrcoef(m[key][ok], truth[ok])[0, 1]
        assert r > 0.7, (key, r)


# --- demographics act in the published direction ----------------------------------------------
N = 60


@pytest.fixture(scope="module")
def groups():
    base = dict(height=170.0, weight=72.0)
    g = {
        "young_m": cohort(N, 101, age=25, sex=1, **base),
        "young_f": cohort(N, 102, age=25, sex=0, **base),
        "old_m": cohort(N, 103, age=75, sex=1, **base),
        "old_f": cohort(N, 104, age=75, sex=0, **base),
        "lean": cohort(N, 105, age=50, sex=1, height=175.0, weight=62.0),  # BMI 20
        "obese": cohort(N, 106, age=50, sex=1, height=175.0, weight=113.0),  # BMI 37
    }
    return {k: (v, cohort_measures(v)) for k, v in g.items()}


def mean(groups, name, key):
    return float(np.nanmean(groups[name][1][key]))


def test_qtc_longer_in_women(groups):
    for age in ("young", "old"):
        assert mean(groups, f"{age}_f", "qtc") - mean(groups, f"{age}_m", "qtc") >= 5.0


def test_pr_longer_with_age_and_in_men(groups):
    assert mean(groups, "old_m", "pr") - mean(groups, "young_m", "pr") >= 8.0
    assert mean(groups, "young_m", "pr") > mean(groups, "young_f", "pr")


def test_qrs_longer_in_men(groups):
    assert mean(groups, "young_m", "qrs") - mean(groups, "young_f", "qrs") >= 3.0


def test_axis_leftward_with_age_and_bmi(groups):
    assert mean(groups, "young_m", "axis") - mean(groups, "old_m", "axis") >= 10.0
    assert mean(groups, "lean", "axis") - mean(groups, "obese", "axis") >= 10.0


def test_voltage_lower_with_bmi_and_age_higher_in_young_men(groups):
    sokolow = lambda g: mean(groups, g, "rv5") + mean(groups, g, "sv1")  # noqa: E731
    assert sokolow("lean") > 1.15 * sokolow("obese")
    assert sokolow("young_m") > 1.15 * sokolow("old_m")
    assert sokolow("young_m") > 1.15 * sokolow("young_f")


def test_hrv_falls_with_age_and_hr_higher_in_women(groups):
    assert mean(groups, "young_m", "rmssd") > 1.3 * mean(groups, "old_m", "rmssd")
    assert mean(groups, "young_f", "hr") + mean(groups, "old_f", "hr") > mean(groups, "young_m", "hr") + mean(
        groups, "old_m", "hr"
    )


def test_pat_shorter_with_age(groups):
    assert mean(groups, "young_m", "pat") - mean(groups, "old_m", "pat") >= 20.0


def test_ppg_shape_changes_with_age(groups):
    def shape(name):
        d = groups[name][0]
        vals = np.array([pulse_shape(d["ppg_clean"][i], FS) for i in range(d["ppg"].shape[0])])
        amp = np.ptp(d["ppg_clean"], axis=1)
        return np.nanmean(vals[:, 0]), np.nanmean(vals[:, 1]), np.mean(amp)

    rise_y, prom_y, amp_y = shape("young_m")
    rise_o, prom_o, amp_o = shape("old_m")
    assert prom_y > 1.5 * prom_o  # dicrotic notch / diastolic wave fades with age
    assert rise_o > rise_y  # systolic peak later (stiffer arteries)
    assert amp_y > amp_o  # lower pulse amplitude with age


# --- rhythms --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rhythms():
    return synthesize(160, seed=33, rhythm_mix="sinus=1,af=1,pvc=1,long_qt=1", noise=0.0, noisy_ecg=False)


def test_af_irregular_without_p_waves(rhythms):
    d = rhythms
    irr = {"af": [], "sinus": []}
    p_present = {"af": [], "sinus": []}
    for i, name in enumerate(d["rhythm"]):
        if name in irr:
            r, m = measure(d["ecg"][i])
            irr[name].append(rr_irregularity(r, FS))
            p_present[name].append(m.p_present)
    assert np.median(irr["af"]) > 3 * np.median(irr["sinus"])
    assert np.mean(p_present["af"]) <= 0.15
    assert np.mean(p_present["sinus"]) >= 0.9


def test_pvc_wide_with_compensatory_pause_and_weak_pulse(rhythms):
    d = rhythms
    idx = np.flatnonzero(d["rhythm"] == "pvc")
    assert idx.size > 10
    widths, pulse_ratio = [], []
    for i in idx:
        rp, bt = d["r_peaks"][i], d["beat_type"][i]
        ok = rp >= 0
        rp, bt = rp[ok], bt[ok]
        pvc = np.flatnonzero(bt == 1)
        for k in pvc:
            if 1 <= k < rp.size - 1 and bt[k - 1] == 0 and bt[k + 1] == 0:
                coupling, pause = rp[k] - rp[k - 1], rp[k + 1] - rp[k]
                normal_rr = np.median(np.diff(rp)[(bt[1:] == 0) & (bt[:-1] == 0)])
                assert coupling < 0.75 * normal_rr
                assert abs((coupling + pause) / (2 * normal_rr) - 1.0) < 0.06
        m_pvc = delineate(d["ecg"][i], FS, r_peaks=rp[bt == 1])
        m_norm = delineate(d["ecg"][i], FS, r_peaks=rp[bt == 0])
        widths.append((m_pvc.qrs_ms, m_norm.qrs_ms))
        # pulse after a PVC vs after a normal beat: steepest PPG upstroke 100-450 ms after R
        # (a pulse's upstroke scales with its amplitude; no pulse, no upstroke)
        slope = np.diff(d["ppg_clean"][i]) * FS
        up = []
        for r in rp:
            seg = slope[r + int(0.10 * FS) : r + int(0.45 * FS)]
            up.append(max(float(seg.max()), 0.0) if seg.size > 10 else np.nan)
        up = np.asarray(up)
        pulse_ratio.append(np.nanmean(up[bt == 1]) / np.nanmean(up[bt == 0]))
    widths = np.asarray(widths)
    assert (
        np.nanmedian(widths[:, 0]) >= 120.0 and np.nanmedian(widths[:, 0]) > np.nanmedian(widths[:, 1]) + 25
    )
    assert np.nanmedian(pulse_ratio) < 0.6


def test_long_qt_prolonged(rhythms):
    d = rhythms
    q = {"long_qt": [], "sinus": []}
    for i, name in enumerate(d["rhythm"]):
        if name in q:
            q[name].append(measure(d["ecg"][i])[1].qtc_fridericia_ms)
    assert np.median(q["long_qt"]) >= 470.0
    assert np.median(q["long_qt"]) - np.median(q["sinus"]) >= 50.0


@pytest.mark.parametrize("kind, sign", [("st_elevation", 1.0), ("st_depression", -1.0)])
def test_st_deviation_in_territory_leads(kind, sign):
    from wearable.sim.heart import ST_LEADS

    d = synthesize(60, seed=44, rhythm_mix=kind, noise=0.0, noisy_ecg=False)
    base = synthesize(60, seed=45, rhythm_mix="sinus", noise=0.0, noisy_ecg=False)
    normal = np.array([measure(base["ecg"][i])[1].st_mv for i in range(60)])  # [60, 12]
    reference = np.nanmedian(normal, axis=0)  # a normal ECG's ST level per lead (V2-V3 slightly up)
    assert np.nanmedian(np.nanmax(np.abs(normal), axis=1)) < 0.1
    hits = []
    for i in range(60):
        terr = str(d["st_territory"][i])
        dev = measure(d["ecg"][i])[1].st_mv - reference
        in_terr = sign * dev[ST_LEADS[terr]]
        hits.append(np.nanmax(in_terr) >= 0.05 and np.nanmin(sign * dev) < np.nanmax(in_terr))
    assert np.mean(hits) >= 0.9, np.mean(hits)


# --- against real recordings -------------------------------------------------------------------
def _net_qrs(m, lead: str) -> tuple[float, float]:
    k = LEAD_INDEX[lead]
    return m.r_amp_mv[k], m.s_amp_mv[k]  # both magnitudes (mV)


def test_amplitude_scale_and_polarity_match_a_real_12_lead():
    pydicom_data = pytest.importorskip("pydicom.data")
    from wearable.readers import read_dicom

    real = read_dicom(pydicom_data.get_testdata_file("waveform_ecg.dcm"))
    _, m_real = measure(real.ecg, real.fs)
    d = synthesize(120, seed=55, rhythm_mix="sinus", noise=0.0, noisy_ecg=False)
    sims = [measure(d["ecg"][i])[1] for i in range(120)]
    for m in [m_real] + sims[:40]:
        r, s = _net_qrs(m, "aVR")
        assert s > r  # aVR negative
    for lead, cond in (("V1", "neg"), ("V5", "pos"), ("V6", "pos"), ("II", "pos")):
        r_real, s_real = _net_qrs(m_real, lead)
        frac_sim = np.mean([(_net_qrs(m, lead)[0] > _net_qrs(m, lead)[1]) for m in sims])
        if cond == "pos":
            assert r_real > s_real and frac_sim >= 0.85, (lead, frac_sim)
        else:
            assert s_real > r_real and frac_sim <= 0.15, (lead, frac_sim)
    # amplitude scale: simulated median peak-to-peak QRS per lead within a factor 2.5 of the real one
    p2p_real = m_real.r_amp_mv + m_real.s_amp_mv
    p2p_sim = np.median(np.array([m.r_amp_mv + m.s_amp_mv for m in sims]), axis=0)
    ratio = p2p_sim / p2p_real
    assert np.all((ratio > 0.4) & (ratio < 2.5)), dict(zip(LEAD_INDEX, np.round(ratio, 2)))
    assert 0.6 < np.median(ratio) < 1.6


def test_ppg_shape_matches_real_wearable_ppg():
    spec = importlib.util.find_spec("heartpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("heartpy (dev dependency) is not installed")
    from wearable.readers import read_csv

    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data.csv"
    real = read_csv(path, fs=100.0)
    from scipy.signal import butter, sosfiltfilt

    sos = butter(2, [0.5, 8.0], btype="band", fs=real.fs, output="sos")
    x = sosfiltfilt(sos, real.ppg)
    rise_real, prom_real = pulse_shape(x, real.fs)
    # heartpy's recording is of a young adult: compare with simulated adults aged 20-35
    rng = np.random.default_rng(66)
    n = 60
    sex = (rng.random(n) < 0.5).astype(np.int8)
    subj = physiology(
        rng, rng.uniform(20, 35, n), sex, np.where(sex == 1, 178.0, 165.0), np.where(sex == 1, 75.0, 60.0)
    )
    d = synthesize(n, 66, subjects=subj, rhythm_mix="sinus")
    sos_s = butter(2, [0.5, 8.0], btype="band", fs=FS, output="sos")
    sim = np.array([pulse_shape(sosfiltfilt(sos_s, d["ppg"][i]), FS) for i in range(n)])
    rise_sim = np.nanmedian(sim[:, 0])
    assert 0.08 < rise_real < 0.45 and 0.08 < rise_sim < 0.45
    assert 0.67 < rise_sim / rise_real < 1.5, (rise_sim, rise_real)
    # a clear diastolic wave in both, of the same size: the real pulse lies inside the simulated range
    lo, hi = np.nanpercentile(sim[:, 1], [5, 95])
    assert prom_real > 0.2 and lo - 0.1 <= prom_real <= hi + 0.1, (prom_real, lo, hi)
