"""Beat detection for ECG (R peaks) and PPG (pulse feet and systolic peaks).

Everything here is deterministic numpy/scipy, works for any sampling rate from 50 to 1000 Hz
and on windows as short as a few beats (the live engine's 8 s windows) as well as on minutes
of signal.  Indices returned are integer sample positions into the input.

Algorithms
----------
R peaks
    Pan & Tompkins (1985), "A real-time QRS detection algorithm", IEEE TBME 32(3):230-236,
    in a zero-phase, vectorised form: band-pass 5-20 Hz (Butterworth, ``sosfiltfilt``), first
    derivative, squaring, centred moving-window integration (150 ms).  With several leads the
    per-lead energies are normalised (robust 99th percentile) and summed, so that every lead
    votes equally whatever its amplitude or polarity.  Candidates are local maxima of the
    integrated energy at least 250 ms apart (``scipy.signal.find_peaks``: the larger wins,
    i.e. the refractory period; up to 240 bpm).  The adaptive threshold of Pan & Tompkins
    (running signal/noise peak levels) is replaced by a non-causal equivalent in two passes.
    First pass: a candidate is a beat when its height exceeds 25 % of the largest
    (artefact-clipped) candidate within +-2.5 s and 20 % of the record's typical beat height
    (85th percentile of the candidate heights).  Second pass, Pan & Tompkins' levels: SPK =
    mean height of the first pass's beats within +-2.5 s, NPK = median height of the other
    candidates there, threshold NPK + 0.25 (SPK - NPK) (and >= 20 % of the typical beat
    height), so that one tall narrow complex does not hide its smaller neighbours.  A record
    whose largest candidate is not 6 x above the noise floor (10th percentile of the
    integrated energy) has no beats, and each beat must exceed 4.5 x that floor.
    As in Pan & Tompkins, a beat within 360 ms of the previous one with less than half its
    energy is taken for a T wave, and a search-back with half the threshold fills RR gaps
    longer than 1.66 x the median RR, again after each beat it finds (a run of small
    complexes is filled, not only its largest one).  bench/r_peaks.py scores the detector
    against the simulator's annotated beats.  Each detection is finally refined to the largest
    absolute deflection of the QRS within +-60 ms of the (baseline-removed, 0.5-40 Hz) ECG:
    for one lead the extremum of the polarity that dominates the record's QRS complexes
    (so negative-QRS leads such as aVR work and R/S do not alternate), for several leads the
    maximum of the spatial magnitude ``sqrt(sum_l x_l**2)``.
PPG beats
    Band-pass 0.5-8 Hz, first derivative; the maximal upslope of each pulse (a peak of the
    derivative, refractory 0.3 s, first pass and search-back of the selection above)
    anchors the beat.  The systolic peak is the maximum of the band-passed pulse between
    that upslope and the next one (at most 0.5 s later).  A pulse much weaker (upslope x
    amplitude < 60 %) than a neighbour closer than 0.7 x the typical beat interval is a
    dicrotic/reflected wave and is dropped.  The foot (onset) is given by the
    intersecting-tangent method
    (tangent at the maximal upslope intersected with the horizontal line through the
    preceding minimum; Chiu et al. 1991, Am Heart J 121:1460, as used for pulse transit
    time), clipped to lie between that minimum and the upslope.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.signal import butter, find_peaks, sosfiltfilt

__all__ = [
    "detect_r_peaks",
    "detect_ppg_beats",
    "heart_rate_bpm",
    "rr_intervals_s",
    "rr_irregularity",
]

_EMPTY = np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- helpers


def _as_2d(x: np.ndarray, lead_axis: int = 0) -> np.ndarray:
    """Return a float64 [L, T] copy; non-finite samples are linearly interpolated per lead
    (a lead without any finite sample becomes flat zero)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim == 2:
        a = np.moveaxis(a, lead_axis, 0)
    else:
        raise ValueError(f"expected a [T] or [L, T] signal, got shape {a.shape}")
    a = np.array(a, dtype=np.float64, copy=True)
    bad = ~np.isfinite(a)
    if bad.any():
        t = np.arange(a.shape[1])
        for i in np.flatnonzero(bad.any(axis=1)):
            ok = ~bad[i]
            a[i] = np.interp(t, t[ok], a[i, ok]) if ok.any() else 0.0
    return a


@lru_cache(maxsize=64)
def _butter_sos(order: int, lo: float | None, hi: float | None, fs: float) -> np.ndarray:
    sos: np.ndarray
    if lo is not None and hi is not None:
        sos = butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")
    elif lo is not None:
        sos = butter(order, lo, btype="highpass", fs=fs, output="sos")
    else:
        sos = butter(order, hi, btype="lowpass", fs=fs, output="sos")
    return sos


def _sos_filter(x: np.ndarray, fs: float, lo: float | None, hi: float | None, order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth filter along the last axis; cut-offs clipped to the Nyquist range.

    Signals too short for ``sosfiltfilt``'s padding are returned mean-removed (high-pass) or
    unchanged.
    """
    nyq = 0.5 * fs
    if hi is not None and hi >= 0.9 * nyq:
        hi = None
    if lo is not None and lo <= 0:
        lo = None
    if lo is None and hi is None:
        return x.copy()
    sos = _butter_sos(order, lo, hi, float(fs)).copy()  # cached design; sosfilt wants it writable
    n = x.shape[-1]
    padlen = 3 * (2 * len(sos) + 1)
    if n <= padlen:
        return x - x.mean(axis=-1, keepdims=True) if lo is not None else x.copy()
    # pad with up to ~1 s of signal (odd extension) to tame edge transients
    padlen = int(min(n - 1, max(padlen, round(fs))))
    y: np.ndarray = sosfiltfilt(sos, x, axis=-1, padlen=padlen)
    return y


def _moving_average(x: np.ndarray, width: int, axis: int = -1) -> np.ndarray:
    """Centred moving average (``width`` samples, at least 1)."""
    width = max(1, int(width))
    if width == 1:
        return x
    y: np.ndarray = ndimage.uniform_filter1d(x, size=width, axis=axis, mode="nearest")
    return y


def _window_mean(
    pos: np.ndarray, val: np.ndarray, at: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``val`` (at sorted positions ``pos``) within +-``half`` samples of each ``at``,
    and how many values that mean took (0 -> mean 0)."""
    c = np.concatenate([[0.0], np.cumsum(val)])
    lo = np.searchsorted(pos, at - half, side="left")
    hi = np.searchsorted(pos, at + half, side="right")
    cnt = hi - lo
    return (c[hi] - c[lo]) / np.maximum(cnt, 1), cnt


def _window_median(pos: np.ndarray, val: np.ndarray, at: np.ndarray, half: int) -> np.ndarray:
    """Median of ``val`` (at sorted positions ``pos``) within +-``half`` samples of each ``at``
    (0 where there is none)."""
    lo = np.searchsorted(pos, at - half, side="left")
    hi = np.searchsorted(pos, at + half, side="right")
    return np.array([float(np.median(val[a:b])) if b > a else 0.0 for a, b in zip(lo, hi)])


def _select_beats(
    sig: np.ndarray,
    fs: float,
    refractory_s: float,
    *,
    rel_local: float = 0.25,
    rel_global: float = 0.2,
    snr: float = 6.0,
    t_wave_s: float | None = 0.36,
    window_s: float = 2.5,
    levels: bool = False,
) -> np.ndarray:
    """Adaptive, non-causal selection of beat peaks in a non-negative detection signal.

    Shared by the ECG (integrated QRS energy) and PPG (upslope) detectors; see the module
    docstring.  Returns sorted integer indices.
    """
    n = sig.shape[0]
    dist = max(1, int(round(refractory_s * fs)))
    cand: np.ndarray
    cand, _ = find_peaks(sig, distance=dist)
    if cand.size == 0:
        return _EMPTY
    h = sig[cand]
    top = float(np.max(h))
    if not np.isfinite(top) or top <= 0:
        return _EMPTY
    # typical beat height: upper part of the candidate heights (beats are >= ~20 % of them)
    level = float(np.percentile(h, 85))
    level = max(level, 1e-12 * top)
    # noise floor: lower decile of the detection signal (the quiet part of each cycle)
    floor = float(np.percentile(sig, 10))
    # local reference: largest candidate within +-window_s, artefacts clipped at 2.5 x level
    hc = np.minimum(h, 2.5 * level)
    z = np.zeros(n)
    z[cand] = hc
    w = int(round(2 * window_s * fs)) + 1
    local = ndimage.maximum_filter1d(z, size=min(w, 2 * n + 1), mode="constant")[cand]
    thr = np.maximum(rel_local * local, rel_global * level)
    # noise gate: the record must hold at least one clear beat (snr x floor); each beat must
    # still clear 3/4 of that.  (A per-beat gate of snr x floor would lose wide-complex
    # tachycardias, whose integrated energy never gets quiet.)
    if top <= snr * floor:
        return _EMPTY
    thr = np.maximum(thr, 0.75 * snr * floor)
    keep = h > thr
    if levels and keep.any():
        # Pan & Tompkins' signal / noise peak levels, non-causal: SPK = mean height of the
        # beats of the first pass within +-window_s (artefacts clipped), NPK = median height
        # of the other candidates there (a median: small beats the first pass missed are
        # among them and must not raise the noise level); threshold
        # NPK + rel_local * (SPK - NPK).  A mean, not the largest beat, so one tall narrow
        # complex does not hide its smaller neighbours.
        half = int(round(window_s * fs))
        spk, ns = _window_mean(cand[keep], hc[keep], cand, half)
        npk = _window_median(cand[~keep], h[~keep], cand, half)
        spk = np.where(ns > 0, spk, local)
        thr2 = npk + rel_local * np.maximum(spk - npk, 0.0)
        thr2 = np.maximum(thr2, rel_global * level)
        thr = np.maximum(thr2, 0.75 * snr * floor)
        keep = h > thr
    beats: np.ndarray = cand[keep]
    hb = h[keep]
    # T-wave rejection (Pan & Tompkins): close and much weaker than the previous beat
    if t_wave_s is not None and beats.size > 1:
        close = np.diff(beats) < t_wave_s * fs
        weak = hb[1:] < 0.5 * hb[:-1]
        drop = np.concatenate([[False], close & weak])
        beats, hb = beats[~drop], hb[~drop]
    # search-back in long gaps with half the threshold, repeated until no gap is left that
    # holds a candidate (as Pan & Tompkins go on from each beat found in a search-back; one
    # pass would fill only one beat of a run of weak ones).  The typical RR is the first
    # pass's median; the T-wave test applies to what the search-back finds too.
    if beats.size >= 3:
        med = float(np.median(np.diff(beats)))
        ok = (h > 0.5 * thr) & (h > 0.75 * snr * floor)
        for _ in range(cand.size):  # each round adds >= 1 beat or stops
            rr = np.diff(beats)
            gaps = np.flatnonzero(rr > 1.66 * med)
            extra = []
            for g in gaps:  # loops only over (rare) gaps
                a, b = beats[g] + dist, beats[g + 1] - dist
                m = (cand > a) & (cand < b) & ok
                if t_wave_s is not None:
                    m &= ~((cand - beats[g] < t_wave_s * fs) & (h < 0.5 * sig[beats[g]]))
                if m.any():
                    idx = np.flatnonzero(m)
                    extra.append(cand[idx[np.argmax(h[idx])]])
            if not extra:
                break
            beats = np.sort(np.concatenate([beats, np.asarray(extra, dtype=beats.dtype)]))
    return beats.astype(np.int64)


def _refine(ref: np.ndarray, beats: np.ndarray, half: int) -> np.ndarray:
    """Move each beat to the argmax of ``ref`` within +-half samples (vectorised)."""
    if beats.size == 0:
        return _EMPTY
    n = ref.shape[0]
    offs = np.arange(-half, half + 1)
    idx = np.clip(beats[:, None] + offs[None, :], 0, n - 1)
    out: np.ndarray = idx[np.arange(beats.size), np.argmax(ref[idx], axis=1)]
    return out.astype(np.int64)


def _dedupe(beats: np.ndarray, score: np.ndarray, min_dist: int) -> np.ndarray:
    """Sort, make unique and enforce a minimum distance (keeping the larger ``score``)."""
    if beats.size < 2:
        return beats.astype(np.int64)
    beats = np.unique(beats)
    while beats.size > 1:
        d = np.diff(beats)
        bad = np.flatnonzero(d < min_dist)
        if bad.size == 0:
            break
        i = bad[0]
        drop = i if score[beats[i]] < score[beats[i + 1]] else i + 1
        beats = np.delete(beats, drop)
    return beats.astype(np.int64)


# --------------------------------------------------------------------------- ECG


def detect_r_peaks(ecg: np.ndarray, fs: float, *, lead_axis: int = 0) -> np.ndarray:
    """Detect R peaks (QRS complexes) in one lead ``[T]`` or several leads ``[L, T]``.

    Pan-Tompkins-like detector (Pan & Tompkins 1985), zero-phase and vectorised; see the
    module docstring for every step.  ``lead_axis`` is the lead axis of a 2-D input.

    Returns sorted, unique int64 sample indices (empty for a flat, too short or beat-less
    signal).  The refractory period is 250 ms (up to 240 bpm).
    """
    fs = float(fs)
    x = _as_2d(ecg, lead_axis)
    n = x.shape[1]
    if n < max(8, int(0.5 * fs)) or not np.isfinite(fs) or fs <= 0:
        return _EMPTY
    # 1) band-pass 5-20 Hz, derivative, squaring
    bp = _sos_filter(x, fs, 5.0, 20.0, order=2)
    e = np.gradient(bp, axis=1) ** 2
    # 2) per-lead normalisation (robust), skip flat leads, sum
    scale = np.percentile(e, 99, axis=1)
    ok = scale > 1e-12 * max(float(scale.max()), 1e-300)
    if not ok.any() or scale.max() <= 0:
        return _EMPTY
    e = (e[ok] / scale[ok, None]).sum(axis=0)
    # 3) centred moving-window integration, 150 ms
    mwi = _moving_average(e, int(round(0.15 * fs)))
    # 4) adaptive selection with refractory period
    beats = _select_beats(mwi, fs, 0.25, levels=True)
    if beats.size == 0:
        return _EMPTY
    # 5) refinement to the largest absolute deflection within +-60 ms
    clean = _sos_filter(x[ok], fs, 0.5, 40.0, order=2)
    half = max(1, int(round(0.06 * fs)))
    if clean.shape[0] == 1:
        c = clean[0]
        offs = np.arange(-half, half + 1)
        idx = np.clip(beats[:, None] + offs[None, :], 0, n - 1)
        seg = c[idx]
        pos = np.median(seg.max(axis=1))
        neg = -np.median(seg.min(axis=1))
        ref = c if pos >= neg else -c
    else:
        ref = np.sqrt(np.sum(clean**2, axis=0))
    r = _refine(ref, beats, half)
    return _dedupe(r, ref, int(round(0.2 * fs)))


# --------------------------------------------------------------------------- PPG


def _drop_secondary(beats: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Drop secondary (dicrotic / reflected-wave) pulses.

    A candidate is dropped when a neighbouring candidate closer than 0.7 x the typical
    inter-beat interval is more than 1/0.6 times stronger.  The typical interval is
    the median interval between the strong candidates (>= 60 % of the 75th percentile).
    """
    if beats.size < 3:
        return beats
    strong = beats[h >= 0.6 * np.percentile(h, 75)]
    if strong.size < 2:
        return beats
    ibi = float(np.median(np.diff(strong)))
    d = np.diff(beats).astype(np.float64)
    inf = np.array([np.inf])
    hinf = np.array([0.0])
    dp, dn = np.concatenate([inf, d]), np.concatenate([d, inf])
    hp_, hn = np.concatenate([hinf, h[:-1]]), np.concatenate([h[1:], hinf])
    drop = ((dp < 0.7 * ibi) & (h < 0.6 * hp_)) | ((dn < 0.7 * ibi) & (h < 0.6 * hn))
    return beats[~drop]


def detect_ppg_beats(ppg: np.ndarray, fs: float) -> dict[str, np.ndarray]:
    """Detect PPG pulse feet (onsets) and systolic peaks.

    ``ppg`` is one channel ``[T]`` oriented so that systole goes up (blood volume, not
    light intensity).  Band-pass 0.5-8 Hz internally; beats are anchored on the maximal
    upslope (refractory 0.3 s, i.e. up to 200 bpm); feet by the intersecting-tangent method;
    see the module docstring.

    Returns ``{"feet": int64[N], "peaks": int64[N]}`` (same length, beat-aligned, sorted;
    empty arrays when no pulse is found).  Feet and peaks index the input samples.
    """
    fs = float(fs)
    x = _as_2d(ppg)
    if x.shape[0] != 1:
        raise ValueError("detect_ppg_beats expects one PPG channel [T]")
    x = x[0]
    n = x.shape[0]
    empty = {"feet": _EMPTY.copy(), "peaks": _EMPTY.copy()}
    if n < max(8, int(1.0 * fs)) or not np.isfinite(fs) or fs <= 0:
        return empty
    y = _sos_filter(x[None], fs, 0.5, 8.0, order=2)[0]
    d = np.gradient(y) * fs
    up = np.maximum(d, 0.0)
    if not np.any(up > 0):
        return empty
    ups = _select_beats(up, fs, 0.3, rel_local=0.3, rel_global=0.25, snr=0.0, t_wave_s=None)
    if ups.size == 0:
        return empty
    # strength of each pulse = upslope x amplitude (dicrotic / reflected waves are weak in
    # both); drop secondary waves, then recompute the points without them
    peaks, tmin, ymin = _ppg_points(y, ups, fs, bounded=False)
    strength = up[ups] * np.maximum(y[peaks] - ymin, 0.0)
    ups = _drop_secondary(ups, strength)
    peaks, tmin, ymin = _ppg_points(y, ups, fs)
    slope = d[ups] / fs  # per sample
    with np.errstate(divide="ignore", invalid="ignore"):
        foot = ups - (y[ups] - ymin) / slope
    foot = np.where(np.isfinite(foot), foot, tmin)
    foot = np.clip(np.round(foot), tmin, ups).astype(np.int64)
    good = (peaks > ups) | (y[peaks] > y[ups])
    # drop incomplete edge beats: foot at the very start or peak at the very end
    good &= (tmin > 0) & (peaks < n - 1)
    return {"feet": foot[good], "peaks": peaks[good].astype(np.int64)}


def _ppg_points(
    y: np.ndarray, ups: np.ndarray, fs: float, bounded: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Systolic peak, preceding minimum (index, value) for each maximal upslope.

    The minimum is searched in the 0.5 s before the upslope, after the previous systolic
    peak when ``bounded``.
    """
    n = y.shape[0]
    # systolic peak: max of y between this upslope and min(next upslope, +0.5 s)
    nxt = np.concatenate([ups[1:], [n]])
    lim = np.minimum(nxt, ups + int(round(0.5 * fs)))
    w = int(round(0.5 * fs)) + 1
    offs = np.arange(w)
    idx = np.clip(ups[:, None] + offs[None, :], 0, n - 1)
    vals = np.where(idx < lim[:, None], y[idx], -np.inf)
    peaks = idx[np.arange(ups.size), np.argmax(vals, axis=1)]
    # foot region: minimum of y in the 0.5 s before the upslope (after the previous peak)
    prv = np.concatenate([[-1], peaks[:-1]]) if bounded else np.full(ups.shape, -1)
    lo = np.maximum(prv + 1, ups - w + 1)
    idx2 = np.clip(ups[:, None] - offs[None, ::-1], 0, n - 1)
    vals2 = np.where(idx2 >= lo[:, None], y[idx2], np.inf)
    jmin = np.argmin(vals2, axis=1)
    tmin = idx2[np.arange(ups.size), jmin]
    ymin = vals2[np.arange(ups.size), jmin]
    ymin = np.where(np.isfinite(ymin), ymin, y[ups])
    return peaks, tmin, ymin


# --------------------------------------------------------------------------- rhythm


def rr_intervals_s(peaks: np.ndarray, fs: float) -> np.ndarray:
    """RR (or pulse-to-pulse) intervals in seconds from sorted beat indices."""
    p = np.asarray(peaks, dtype=np.float64).ravel()
    if p.size < 2:
        return np.zeros(0)
    return np.diff(np.sort(p)) / float(fs)


def heart_rate_bpm(peaks: np.ndarray, fs: float, *, method: str = "mean") -> float:
    """Heart rate in bpm from beat indices.

    ``method="mean"``: 60 / mean RR (= beats per minute over the span of the beats);
    ``"median"``: 60 / median RR (robust to one missed or extra beat).
    NaN with fewer than 2 beats.
    """
    rr = rr_intervals_s(peaks, fs)
    if rr.size == 0:
        return float("nan")
    if method == "mean":
        m = float(np.mean(rr))
    elif method == "median":
        m = float(np.median(rr))
    else:
        raise ValueError(f"method must be 'mean' or 'median', got {method!r}")
    return 60.0 / m if m > 0 else float("nan")


def rr_irregularity(peaks: np.ndarray, fs: float, *, method: str = "nrmssd") -> float:
    """RR irregularity (dimensionless), NaN with fewer than 4 beats.

    ``method="nrmssd"`` (default): normalised RMSSD = sqrt(mean(diff(RR)**2)) / mean(RR), the
    successive-difference measure used for atrial-fibrillation screening (e.g. Dash et al.
    2009, Ann Biomed Eng 37:1701).  Sinus rhythm at rest gives ~0.02-0.08; AF typically
    > 0.1-0.15.  ``method="cv"``: coefficient of variation std(RR) / mean(RR) (also counts
    slow trends, so less specific to AF).
    """
    rr = rr_intervals_s(peaks, fs)
    if rr.size < 3:
        return float("nan")
    m = float(np.mean(rr))
    if m <= 0:
        return float("nan")
    if method == "nrmssd":
        return float(np.sqrt(np.mean(np.diff(rr) ** 2)) / m)
    if method == "cv":
        return float(np.std(rr) / m)
    raise ValueError(f"method must be 'nrmssd' or 'cv', got {method!r}")
