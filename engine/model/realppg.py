"""Real-PPG check: does reconstructed lead II beat with the PPG's own pulse?

No recording with simultaneous PPG and 12-lead ECG can be obtained here, so on real wearable
PPG (the recordings heartpy ships, ``heartpy/data/*.csv``) the one thing that can be checked
is rhythm: per 8 s window, the heart rate of the reconstructed lead II against the PPG's own
pulse rate.  Used by ``tests/test_reconstruct.py`` (the acceptance test) and by
``bench/real_ppg.py`` (the same table over several seeds).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.checkpoint import Entry
from engine.model.preprocess import bandpass
from engine.model.reconstruct import reconstruct
from p2es.errors import P2esError
from p2es.leads import LEADS
from p2es.signal import detect_ppg_beats, detect_r_peaks, heart_rate_bpm
from wearable.readers import read_csv

# Recordings: (file, fs passed to the reader, first second, last second).  data2.csv starts
# with ~46 s without sensor contact (flat line, a stretch of zeros, then handling motion: no
# pulse at all), so its 60 s from 46 s on are used; the others from their start.
REAL = [("data.csv", 100.0, 0.0, None), ("data2.csv", None, 46.0, 106.0), ("data3.csv", 100.42, 0.0, 60.0)]
HR_TOL_BPM = 3.0
MIN_KEPT = 0.70  # of all windows; and at least half of each recording's


def heartpy_data() -> Path:
    """Folder of heartpy's example recordings (heartpy is a dev dependency; not imported:
    it needs pkg_resources)."""
    spec = importlib.util.find_spec("heartpy")
    if spec is None or not spec.submodule_search_locations:
        raise P2esError("heartpy (a dev dependency) is not installed: its PPG recordings are needed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def ppg_window_quality(pk: np.ndarray, yb: np.ndarray, lo: int, hi: int, fs: float) -> tuple[bool, str]:
    """Signal-quality rule for one PPG window [lo, hi) -- PPG only, never the reconstruction.

    After Orphanidou et al. (2015, IEEE JBHI 19:832, PPG SQI), with a stricter regularity test:
      Q1  >= 4 pulses, pulse rate 40-180 bpm, and no pulse-free stretch > 2 s (window edges
          included): the sensor sees a pulse throughout;
      Q2  every pulse interval within 25 % of the window's median interval: no missed or
          spurious (motion) pulse -- sinus arrhythmia at rest stays well inside;
      Q3  mean correlation of the pulses with the window's median pulse >= 0.86: the pulse
          shape is not distorted by motion.
    ``pk``: systolic peaks of the whole band-passed PPG ``yb``.
    """
    p = pk[(pk >= lo) & (pk < hi)]
    if p.size < 4:
        return False, f"Q1: {p.size} pulses"
    ibi = np.diff(p) / fs
    rate = 60.0 / ibi.mean()
    edges = max((p[0] - lo) / fs, (hi - 1 - p[-1]) / fs, ibi.max())
    if not 40.0 <= rate <= 180.0 or edges > 2.0:
        return False, f"Q1: rate {rate:.0f} bpm, longest pulse-free stretch {edges:.1f} s"
    med = float(np.median(ibi))
    dev = float(np.max(np.abs(ibi - med)) / med)
    if dev > 0.25:
        return False, f"Q2: pulse interval off the median by {100 * dev:.0f} %"
    a, b = int(0.4 * med * fs), int(0.6 * med * fs)
    beats = np.array([yb[s - a : s + b] for s in p if s - a >= 0 and s + b <= yb.size])
    tmpl = np.median(beats, axis=0)
    cc = float(np.mean([np.corrcoef(s, tmpl)[0, 1] for s in beats]))
    if cc < 0.86:
        return False, f"Q3: template correlation {cc:.2f}"
    return True, "ok"


def pulse_arrival_lag(r: np.ndarray, p: np.ndarray, fs: float) -> float:
    """Median delay (s) from an R peak to the next PPG systolic peak (0 if unknown)."""
    if r.size < 3 or p.size < 3:
        return 0.0
    j = np.searchsorted(r, p, side="right") - 1
    d = (p[j >= 0] - r[j[j >= 0]]) / fs
    d = d[(d > 0.05) & (d < 0.8)]
    return float(np.median(d)) if d.size >= 3 else 0.0


def hr_table(
    entry: Entry, *, k: int = 4, steps: int = 10, seed: int = 0, hop_s: float = 4.0
) -> list[dict[str, Any]]:
    """Per recording and per non-overlapping 8 s window: PPG quality, HR from the PPG's
    pulses and HR from the R peaks of reconstructed lead II (``engine.model.reconstruct`` with
    the given ``k``, ``steps``, ``seed``, ``hop_s``).

    Both detectors run on the whole signal; a window takes the PPG pulses in [lo, hi) and the
    R peaks in [lo - lag, hi - lag), lag = the recording's median R-to-pulse delay (pulse
    arrival time), so both HRs count the same heart beats.  HR = 60 / mean interval."""
    d = heartpy_data()
    rows = []
    for name, fs_in, t0, t1 in REAL:
        rec = read_csv(d / name, fs=fs_in)
        assert rec.ppg is not None  # heartpy's recordings are single-column PPG
        x = rec.ppg[int(round(t0 * rec.fs)) : None if t1 is None else int(round(t1 * rec.fs))]
        res = reconstruct(
            x, rec.fs, checkpoint=entry, k=k, steps=steps, seed=seed, hop_s=hop_s, progress=False
        )
        fs, T = res.fs_model, int(round(res.window_s * res.fs_model))
        assert res.ppg is not None  # reconstruct() always returns its resampled input
        yb = bandpass(res.ppg, fs)  # the resampled input, band-passed
        pk = detect_ppg_beats(yb, fs)["peaks"]
        rp = detect_r_peaks(res.ecg[LEADS.index("II")], fs)
        lag = int(round(pulse_arrival_lag(rp, pk, fs) * fs))
        for w in range(len(res.time_s) // T):
            lo, hi = w * T, (w + 1) * T
            keep, why = ppg_window_quality(pk, yb, lo, hi, fs)
            hr_ppg = heart_rate_bpm(pk[(pk >= lo) & (pk < hi)], fs)
            hr_ecg = heart_rate_bpm(rp[(rp >= lo - lag) & (rp < hi - lag)], fs)
            rows.append(
                dict(
                    rec=name,
                    t0=t0 + lo / fs,
                    keep=keep,
                    why=why,
                    hr_ppg=hr_ppg,
                    hr_ecg=hr_ecg,
                    d=hr_ecg - hr_ppg,
                    lag_s=lag / fs,
                    elapsed=res.elapsed_s,
                )
            )
    return rows


def off_windows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kept windows whose lead-II HR is more than HR_TOL_BPM off (NaN = no beats: off too)."""
    return [r for r in rows if r["keep"] and not abs(r["d"]) <= HR_TOL_BPM]


def format_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for name, *_ in REAL:
        mine = [r for r in rows if r["rec"] == name]
        d = np.array([abs(r["d"]) for r in mine if r["keep"]])
        stats = (
            f"max |dHR| {np.nanmax(d):.1f} bpm, median {np.nanmedian(d):.1f} bpm"
            if d.size and np.isfinite(d).any()
            else "no HR"
        )
        out.append(
            f"{name}: {d.size}/{len(mine)} windows kept, {stats}, "
            f"{int((~(d <= HR_TOL_BPM)).sum())} over {HR_TOL_BPM:g} bpm"
        )
    for r in rows:
        out.append(
            f"{r['rec']:>9} {r['t0']:6.1f}s  ppg {r['hr_ppg']:6.1f}  ecg {r['hr_ecg']:6.1f}  "
            f"d {r['d']:+6.1f}  {'kept' if r['keep'] else 'excluded (' + r['why'] + ')'}"
        )
    return "\n".join(out)
