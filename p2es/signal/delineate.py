"""ECG delineation on the median beat: intervals (PR, QRS, QT/QTc), axis, ST and amplitudes.

Pipeline (``delineate``)
------------------------
1. R peaks: ``detect_r_peaks`` on the analysis leads unless given.
2. Pre-filter: zero-phase Butterworth high-pass 0.5 Hz (baseline wander; zero-phase filters
   up to 0.67 Hz keep ST levels, AHA/ACCF/HRS 2007 recommendations, Kligfield et al.,
   Circulation 115:1306) and low-pass 100 Hz (when below Nyquist).
3. Median beat: beats are aligned on R with sub-sample precision (parabolic peak of the
   cross-correlation of each beat's QRS with the integer-aligned median QRS) and resampled on
   a 1 kHz grid (cubic spline), whatever the input rate, so that every interval has ms
   resolution.  The median across beats removes noise and, because AF fibrillatory waves are
   not phase-locked to the QRS, removes them too.
4. QRS onset / offset from the spatial velocity ``V(t) = sum_l |dx_l/dt|`` over the analysis
   leads (the 8 independent leads I, II, V1-V6 of a 12-lead ECG), smoothed (8 ms, at least
   one input sample); see e.g. Sörnmo & Laguna, *Bioelectrical Signal Processing in Cardiac
   and Neurological Applications* (2005), ch. 7, for spatial-velocity delineation.
   a) Extent: the contiguous region around R (searched outward from R, gaps < 20 ms closed)
      where ``V > max(4 % of its QRS maximum, 2 x its floor)``; the floor is the lower
      quartile of V over the beat's cycle outside the QRS (noise + slow waves).
   b) Outermost waves: the first hump of V in that region (a local maximum, or a shoulder
      where dV/dt drops below 60 % of its running maximum and recovers) and, mirrored, the
      last one.  The onset (offset) is where V, going outward, falls below
      ``max(0.30 x hump, 1.5 x floor)``.  Using a fraction of the outermost wave rather than
      of the global maximum keeps small initial q / terminal s waves inside the QRS and makes
      the result independent of amplitude.  For a Gaussian wave (centre c, width s, hump of
      V at c -+ s) 0.446 would reproduce the signal's tangent-defined boundary c -+ 2s; 0.30
      gives c -+ 2.2s, a compromise closer to manufacturer measurements on real ECGs
      (pydicom's ``waveform_ecg.dcm``: 67-69 ms at 500-1000 Hz, 58 ms at 128 Hz, vs 75 ms
      in its annotations; the lower the rate, the more the QRS edges are smoothed).
5. Isoelectric level per lead: mean of the 16 ms window of lowest spatial velocity in the
   PR segment (50-5 ms before QRS onset).
6. T end: tangent method (Lepeschkin & Surawicz 1952, Circulation 6:378; Postema et al.
   2008, J Electrocardiol 41:75) applied to the RMS of the baseline-corrected analysis leads
   (sign-independent, uses every lead's T wave): tangent at the point of steepest descent
   after the T peak (searched up to min(R + 0.68 s, R + max(0.3 s, 0.8 RR))), intersected
   with the isoelectric RMS level.
7. P wave: the most prominent hump of the RMS curve 340-40 ms before QRS onset, computed on a
   median in which each beat's samples still inside the previous beat's T wave (short RR)
   are left out.  P is present when (i) its prominence exceeds 3 x the noise of the median
   beat (spread of the individual beats around it) and 4 % of the QRS RMS peak, (ii) the
   medians of the odd and even beats agree there (cosine > 0.3; a real P wave is phase-
   locked, a residue of fibrillatory waves is not) and (iii) it is a complete wave (onset
   inside the window, rise <= 80 ms).  P onset by the tangent at the steepest ascent before
   the P peak, intersected with the isoelectric level; ``PR = QRS onset - P onset``.
8. QT = T end - QRS onset; QTc by Bazett (QT / sqrt(RR)) and Fridericia (QT / RR^(1/3))
   with the mean RR; frontal QRS axis = atan2(net QRS area in aVF, net QRS area in I); ST
   level at J + 60 ms minus the isoelectric level; R / S amplitudes = largest positive /
   negative (as a depth >= 0) deflection inside the QRS relative to the isoelectric level.

Limits: below ~100 Hz the QRS is under-sampled and QRS / QT become unreliable (HR, PR, T end
remain usable); a small initial wave that merges into the main deflection without a hump or
shoulder of V is not separated (onset then refers to the main deflection); P waves fused
with the previous T wave (fast rates) are reported absent.
Any failure (flat signal, no beats, no T wave...) gives NaN fields, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.signal import find_peaks

from ..leads import INDEPENDENT, LEAD_INDEX, LEADS
from .peaks import _as_2d, _sos_filter, detect_r_peaks

__all__ = ["Delineation", "delineate", "median_beat"]

# tuning constants (see module docstring)
_FS_FINE = 1000.0  # grid of the median beat (Hz)
_LOWPASS_HZ = 100.0  # pre-filter low-pass (Hz; skipped when above 0.9 x Nyquist)
_BEFORE_S = 0.42  # median-beat window before R (s)
_AFTER_S = 0.70  # median-beat window after R (s)
_QRS_FRAC = 0.04  # QRS extent: spatial velocity > this fraction of its maximum
_QRS_FLOOR_K = 2.0  # ... and > this multiple of its floor
_HUMP_RATIO = 0.30  # QRS boundary: V below this fraction of the outermost hump
_FLOOR_K = 1.5  # ... but not below this multiple of its floor
_SHOULDER_DROP = 0.6  # shoulder: dV/dt falls below this fraction of its running max
_SHOULDER_PROM = 0.3  # ... and recovers by at least this fraction of it
_QRS_GAP_MS = 20  # gaps in the supra-threshold region closed (ms)
_V_SMOOTH_MS = 8  # smoothing before differentiation (ms; at least 1 input sample)
_RMS_SMOOTH_MS = 16  # smoothing of the RMS curve for T/P (ms)
_P_NOISE_K = 3.0  # P present: prominence > k x noise of the median beat
_P_QRS_FRAC = 0.04  # ... and > this fraction of the QRS RMS peak
_P_SPLIT_SIM = 0.3  # ... and odd/even-beat medians agree (cosine, >= 4 beats)


def _nan12() -> np.ndarray:
    return np.full(12, np.nan)


@dataclass(frozen=True, eq=False)
class Delineation:
    """Measurements of one ECG record / window (median beat).  Times in ms, levels in mV.

    Per-lead arrays are float[12] in ``p2es.leads.LEADS`` order (NaN for leads not given
    and not derivable).  Fiducials ``*_at_ms`` are relative to the R peak of the median beat.
    """

    hr_bpm: float = math.nan
    rr_s: float = math.nan
    pr_ms: float = math.nan
    p_present: bool = False
    qrs_ms: float = math.nan
    qt_ms: float = math.nan
    qtc_bazett_ms: float = math.nan
    qtc_fridericia_ms: float = math.nan
    axis_deg: float = math.nan
    st_mv: np.ndarray = field(default_factory=_nan12)
    r_amp_mv: np.ndarray = field(default_factory=_nan12)
    s_amp_mv: np.ndarray = field(default_factory=_nan12)
    n_beats: int = 0
    qrs_area_mv_ms: np.ndarray = field(default_factory=_nan12)
    p_onset_at_ms: float = math.nan
    qrs_onset_at_ms: float = math.nan
    qrs_offset_at_ms: float = math.nan
    t_end_at_ms: float = math.nan

    def __post_init__(self) -> None:
        for name in ("st_mv", "r_amp_mv", "s_amp_mv", "qrs_area_mv_ms"):
            a = np.array(getattr(self, name), dtype=np.float64)
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def as_dict(self) -> dict[str, Any]:
        """Plain-python dict (floats, bools, lists), e.g. for JSON or InfluxDB fields."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                d[k] = [float(e) for e in v]
            elif isinstance(v, (bool, np.bool_)):
                d[k] = bool(v)
            elif isinstance(v, (int, np.integer)):
                d[k] = int(v)
            else:
                d[k] = float(v)
        return d


# --------------------------------------------------------------------------- median beat


def _valid_peaks(r_peaks: npt.ArrayLike | None, n: int, nb: int, na: int) -> np.ndarray:
    r = np.asarray(r_peaks if r_peaks is not None else [], dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    r = np.unique(np.round(r).astype(np.int64))
    return r[(r - nb >= 0) & (r + na < n)]


def median_beat(
    ecg: np.ndarray, r_peaks: np.ndarray, fs: float, before_s: float = 0.30, after_s: float = 0.70
) -> np.ndarray:
    """Median beat ``[L, W]`` (``[W]`` for a 1-D input) aligned on the R peaks.

    ``W = round(before_s * fs) + round(after_s * fs) + 1``; sample ``round(before_s * fs)`` is
    the R peak.  Beats whose window does not fit in the record are dropped; with no beat
    left the result is all NaN.  No filtering is done here (integer-sample alignment at the
    input rate; ``delineate`` uses a sub-sample aligned 1 kHz version).
    """
    x = np.asarray(ecg, dtype=np.float64)
    one = x.ndim == 1
    x2 = x[None] if one else x
    nb, na = int(round(before_s * fs)), int(round(after_s * fs))
    r = _valid_peaks(r_peaks, x2.shape[1], nb, na)
    w = nb + na + 1
    if r.size == 0:
        out = np.full((x2.shape[0], w), np.nan)
    else:
        idx = r[:, None] + np.arange(-nb, na + 1)[None, :]
        out = np.median(x2[:, idx], axis=1)
    return out[0] if one else out


def _fine_beats(
    x: np.ndarray, r_all: np.ndarray, fs: float, ana: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Beats [L, B, W] on the 1 kHz grid, sub-sample aligned.

    Returns (beats, tau_ms, prev_rr_ms[B]); the RR before the first detected beat is taken
    as the median RR (NaN with a single beat).
    """
    n = x.shape[1]
    nb, na = int(math.ceil(_BEFORE_S * fs)) + 2, int(math.ceil(_AFTER_S * fs)) + 2
    keep = (r_all - nb >= 0) & (r_all + na < n)
    r = r_all[keep]
    prev = np.diff(r_all, prepend=np.nan).astype(np.float64)
    if r_all.size > 1:
        prev[0] = np.median(np.diff(r_all))
    prev_rr = prev[keep] * (1000.0 / fs)
    tau = np.arange(-round(_BEFORE_S * _FS_FINE), round(_AFTER_S * _FS_FINE) + 1)  # ms
    if r.size == 0:
        return None, tau, prev_rr
    # integer template over the QRS region (+-60 ms) of the analysis leads
    h = max(2, int(round(0.06 * fs)))
    offs = np.arange(-h, h + 1)
    xa = x[ana]
    seg0 = xa[:, r[:, None] + offs[None, :]]  # [A, B, 2h+1]
    tmpl = np.median(seg0, axis=1)  # [A, 2h+1]
    if r.size > 1:
        c = np.stack(
            [np.einsum("abk,ak->b", xa[:, r[:, None] + offs[None, :] + k], tmpl) for k in (-1, 0, 1)], axis=1
        )  # [B, 3]
        den = c[:, 0] - 2 * c[:, 1] + c[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(den < 0, 0.5 * (c[:, 0] - c[:, 2]) / den, 0.0)
        delta = np.clip(np.nan_to_num(delta), -1.0, 1.0)
    else:
        delta = np.zeros(1)
    pos = (r + delta)[:, None] + tau[None, :] * (fs / _FS_FINE)  # [B, W] (input samples)
    t0 = int(max(0, math.floor(pos.min()) - 3))
    t1 = int(min(n, math.ceil(pos.max()) + 4))
    if fs >= _FS_FINE:
        # already fine: linear interpolation is enough (signal low-passed at 40 Hz)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
        fr = pos - lo
        beats = x[:, lo] * (1 - fr) + x[:, lo + 1] * fr
    else:
        cs = CubicSpline(np.arange(t0, t1), x[:, t0:t1], axis=1)
        beats = cs(pos)  # [L, B, W]
    return beats, tau, prev_rr


# --------------------------------------------------------------------------- delineation


def _resolve_leads(x: np.ndarray, leads: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the input rows onto the 12 standard leads; return (x12, available, analysis)."""
    nl = x.shape[0]
    if leads is None:
        if nl == 12:
            leads = LEADS
        elif nl == 8:
            leads = INDEPENDENT
        elif nl == 1:
            leads = ("II",)
        else:
            raise ValueError(f"{nl} leads given: pass leads=[...] with their names")
    leads = tuple(leads)
    if len(leads) != nl:
        raise ValueError(f"{len(leads)} lead names for {nl} leads")
    unknown = [n for n in leads if n not in LEAD_INDEX]
    if unknown or len(set(leads)) != nl:
        raise ValueError(f"bad lead names {list(leads)} (expected names from {LEADS})")
    x12 = np.full((12, x.shape[1]), np.nan)
    for i, name in enumerate(leads):
        x12[LEAD_INDEX[name]] = x[i]
    have = {n for n in leads}
    if {"I", "II"} <= have:  # Einthoven / Goldberger: derive the missing limb leads
        i, ii = x12[0], x12[1]
        for name, val in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
            if name not in have:
                x12[LEAD_INDEX[name]] = val
    avail = np.flatnonzero(np.all(np.isfinite(x12), axis=1))
    if set(INDEPENDENT) <= have:
        ana = np.array([LEAD_INDEX[n] for n in INDEPENDENT])
    else:
        ana = np.array(sorted(LEAD_INDEX[n] for n in leads))
    return x12, avail, ana


def _nanmedian1(a: np.ndarray) -> np.ndarray:
    """Median over axis 1 ignoring NaN (fast for small arrays; all-NaN -> NaN)."""
    nan = np.isnan(a)
    if not nan.any():
        med: np.ndarray = np.median(a, axis=1)
        return med
    srt = np.sort(a, axis=1)  # NaN sorted last
    cnt = (~nan).sum(axis=1, keepdims=True)  # [A, 1, S]
    lo = np.clip((cnt - 1) // 2, 0, None)
    hi = np.clip(cnt // 2, 0, None)
    m = 0.5 * (np.take_along_axis(srt, lo, axis=1) + np.take_along_axis(srt, hi, axis=1))[:, 0]
    return np.where(cnt[:, 0] > 0, m, np.nan)


def _split_half_similarity(pb: np.ndarray, k0: int, k1: int, bwin: slice) -> float:
    """Cosine similarity of the odd- and even-beat medians of ``pb[:, :, k0:k1]``.

    ``pb`` is [A, B, S] (NaN = masked sample); each half-median is referred to its own mean
    over ``bwin`` (the isoelectric window).  A real P wave is phase-locked to the QRS and
    reproduces in both halves; the residue of fibrillatory waves in a median does not.
    NaN with fewer than 4 beats.
    """
    if pb.shape[1] < 4 or k1 - k0 < 5:
        return math.nan
    halves = []
    with np.errstate(all="ignore"):
        for part in (pb[:, 0::2], pb[:, 1::2]):
            m = _nanmedian1(part[:, :, k0:k1])
            b = _nanmedian1(part[:, :, bwin]).mean(axis=1, keepdims=True)
            halves.append(m - b)
    a, b = halves
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else math.nan


def _outer_onset(seg: np.ndarray, ia: int, thr: float, vfloor: float) -> float:
    """Fractional onset index of the first wave of a rising spatial-velocity segment.

    ``seg`` runs from before the QRS to R, ``ia`` is where it first exceeds ``thr``.  The
    first hump is the first local maximum of ``seg`` (prominence >= thr / 2, above thr) or
    the first shoulder (above 2 thr; dV/dt falls below 60 % of its running maximum, then
    recovers by 30 % of it), whichever comes first; the onset is where ``seg`` falls below
    ``max(_HUMP_RATIO x hump, _FLOOR_K x vfloor)``.
    """
    n = seg.size
    if n < 4:
        return 0.0
    cands = []
    pk, _ = find_peaks(seg, prominence=0.5 * thr)
    pk = pk[(pk >= ia - 10) & (seg[pk] > thr)]
    if pk.size:
        cands.append(int(pk[0]))
    dv = np.gradient(seg)
    sh, props = find_peaks(-dv, prominence=0.0)
    if sh.size:
        runmax = np.maximum.accumulate(dv)[sh]
        ok = (
            (sh >= ia - 10)
            & (dv[sh] >= 0)
            & (dv[sh] <= _SHOULDER_DROP * runmax)
            & (props["prominences"] >= _SHOULDER_PROM * runmax)
            & (seg[sh] > 2.0 * thr)
        )
        if ok.any():
            cands.append(int(sh[ok][0]))
    top = min(cands) if cands else int(np.argmax(seg))
    level = max(_HUMP_RATIO * seg[top], _FLOOR_K * vfloor)
    below = np.flatnonzero(seg[: top + 1] < level)
    if below.size == 0:
        return 0.0
    on = int(below[-1]) + 1
    if on >= n:
        return float(n - 1)
    frac = (seg[on] - level) / max(seg[on] - seg[on - 1], 1e-300)
    return float(on - min(max(frac, 0.0), 1.0))


def _tangent_cross(y: np.ndarray, i0: int, i1: int, level: float, *, descending: bool) -> float:
    """Tangent at the steepest descent (ascent) of y in [i0, i1) crossing ``level``.

    Returns the (fractional) index, or NaN.  ``y`` is on a 1-sample = 1 ms grid.
    """
    i0, i1 = max(i0, 1), min(i1, y.size - 1)
    if i1 - i0 < 3:
        return math.nan
    d = np.gradient(y)[i0:i1]
    k = int(np.argmin(d) if descending else np.argmax(d))
    s = d[k]
    if (descending and s >= 0) or (not descending and s <= 0):
        return math.nan
    t = i0 + k
    return float(t + (level - y[t]) / s)


def delineate(
    ecg: np.ndarray,
    fs: float,
    r_peaks: np.ndarray | None = None,
    *,
    leads: Sequence[str] | None = None,
    to_mv: float = 1.0,
) -> Delineation:
    """Delineate an ECG record or window; see the module docstring for the method.

    Parameters
    ----------
    ecg : [L, T] array, leads in ``p2es.leads.LEADS`` order for L = 12 (default), the
        8 independent leads I, II, V1..V6 for L = 8, or any leads named by ``leads``; a 1-D
        array is lead II.  Missing limb leads are derived from I and II when both are given.
        The analysis leads (spatial velocity, RMS) are I, II, V1..V6 when available, else
        the given leads.
    fs : sampling rate (Hz), 50-1000 (others work too).
    r_peaks : R-peak sample indices; detected with ``detect_r_peaks`` when None.
    leads : names of the rows of ``ecg`` (from ``LEADS``).
    to_mv : factor taking the input unit to mV (1e-3 for µV); only amplitudes use it.

    Returns a ``Delineation``; fields that cannot be measured are NaN (no exception for a
    flat or beat-less signal).  Shape / lead-name errors raise ``ValueError``.
    """
    fs = float(fs)
    x = _as_2d(ecg)
    x12, avail, ana = _resolve_leads(x, leads)
    empty = Delineation()
    n = x12.shape[1]
    if not np.isfinite(fs) or fs <= 0 or n < int(0.5 * fs):
        return empty
    rows = avail
    xs = np.full_like(x12, np.nan)
    xs[rows] = _sos_filter(_sos_filter(x12[rows], fs, 0.5, None), fs, None, _LOWPASS_HZ)
    if r_peaks is None:
        r = detect_r_peaks(x12[ana], fs)
    else:
        r = np.asarray(r_peaks, dtype=np.float64).ravel()
        r = r[np.isfinite(r)]
        r = np.unique(np.round(r).astype(np.int64))
        r = r[(r >= 0) & (r < n)]
    rr = np.diff(r) / fs
    rr_s = float(np.mean(rr)) if rr.size else math.nan
    hr = 60.0 / rr_s if rr_s > 0 else math.nan
    base = Delineation(hr_bpm=hr, rr_s=rr_s)
    if r.size == 0:
        return base
    # beats of the available rows only; ``ana`` re-indexed into those rows
    ana_pos = np.searchsorted(rows, ana)
    beats, tau, prev_rr = _fine_beats(xs[rows], r, fs, ana_pos)
    if beats is None:
        return base
    try:
        return _delineate_beats(beats, tau, prev_rr, ana, ana_pos, rows, hr, rr_s, to_mv, fs)
    except (ValueError, IndexError, FloatingPointError, ZeroDivisionError):  # pragma: no cover
        return Delineation(hr_bpm=hr, rr_s=rr_s, n_beats=int(beats.shape[1]))


def _delineate_beats(
    beats_rows: np.ndarray,
    tau: np.ndarray,
    prev_rr: np.ndarray,
    ana: np.ndarray,
    ana_pos: np.ndarray,
    rows: np.ndarray,
    hr: float,
    rr_s: float,
    to_mv: float,
    fs: float,
) -> Delineation:
    nbeats = beats_rows.shape[1]
    beats = beats_rows[ana_pos]  # [A, B, W] analysis leads
    med = np.median(beats_rows, axis=1)  # [R, W]
    m12 = np.full((12, tau.size), np.nan)
    m12[rows] = med
    ma = m12[ana]  # [A, W]
    i_r = int(np.flatnonzero(tau == 0)[0])
    w = tau.size
    out: dict[str, Any] = dict(hr_bpm=hr, rr_s=rr_s, n_beats=int(nbeats))

    # noise of the median beat per analysis lead (spread of the beats around it)
    if nbeats >= 3:
        resid = beats[:, :, ::4] - ma[:, None, ::4]
        mad = np.median(np.abs(resid - np.median(resid, axis=1, keepdims=True)), axis=1)
        sd = 1.4826 * np.median(mad, axis=1)  # [A]
        noise = 1.2533 * sd / math.sqrt(nbeats)
    else:
        d = np.diff(ma, axis=1)
        noise = 1.4826 * np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1)
        noise = noise * math.sqrt(_FS_FINE / 250.0)  # crude: per-sample diff at 1 kHz
    noise_rms = float(np.sqrt(np.mean(noise**2)))

    # spatial velocity
    sm = ndimage.uniform_filter1d(ma, max(_V_SMOOTH_MS, int(round(1000.0 / fs))), axis=1, mode="nearest")
    v = np.abs(np.gradient(sm, axis=1)).sum(axis=0)
    q0, q1 = i_r - 60, i_r + 61
    vmax = float(v[q0:q1].max())
    if not np.isfinite(vmax) or vmax <= 0:
        return Delineation(**out)
    # 1) extent: contiguous region around R above a low threshold (gaps closed)
    # floor: lower quartile of V over the beat's own cycle (R -+ RR/2, QRS core excluded)
    half = int(min(500, 0.5 * rr_s * 1000)) if np.isfinite(rr_s) else 400
    cyc = np.r_[v[max(0, i_r - half) : max(0, i_r - 80)], v[i_r + 80 : i_r + half]]
    vfloor = float(np.percentile(cyc if cyc.size > 20 else v, 25))
    thr = max(_QRS_FRAC * vmax, _QRS_FLOOR_K * vfloor)
    lo, hi = max(1, i_r - 200), min(w - 2, i_r + 200)
    above = v[lo:hi] > thr
    above = ndimage.binary_closing(above, structure=np.ones(_QRS_GAP_MS, bool))
    above[0] = above[-1] = False
    lab, _ = ndimage.label(above)
    k = lab[q0 - lo + int(np.argmax(v[q0:q1]))]
    if k == 0:
        return Delineation(**out)
    idx = np.flatnonzero(lab == k) + lo
    a, b = int(idx[0]), int(idx[-1])
    # 2) outermost waves: first (last) hump of V inside the extent - a local maximum of V or
    #    a shoulder (dV/dt dropping below half of its preceding maximum and rising again);
    #    onset (offset) where V falls below 0.30 of the hump (see module docstring)
    s0, s1 = max(1, a - 40), min(w - 2, b + 40)
    on_f = s0 + _outer_onset(v[s0 : i_r + 1], a - s0, thr, vfloor)
    off_f = s1 - _outer_onset(v[i_r : s1 + 1][::-1], s1 - b, thr, vfloor)
    on, off = int(math.ceil(on_f)), int(math.floor(off_f))
    out.update(
        qrs_ms=off_f - on_f, qrs_onset_at_ms=float(tau[0] + on_f), qrs_offset_at_ms=float(tau[0] + off_f)
    )

    # isoelectric level (PR segment): 16 ms window of lowest spatial velocity in [on-50, on-5]
    b0, b1 = max(0, on - 50), max(1, on - 5)
    if b1 - b0 >= 16:
        vv = ndimage.uniform_filter1d(v[b0:b1], 16, mode="nearest")
        c = b0 + int(np.argmin(vv[8:-8] if b1 - b0 > 16 else vv)) + (8 if b1 - b0 > 16 else 0)
        bw = slice(max(0, c - 8), c + 8)
    else:
        bw = slice(max(0, on - 20), max(1, on - 4))
    bl12 = np.mean(m12[:, bw], axis=1)  # [12] (NaN: lead not given)
    mc12 = m12 - bl12[:, None]

    # per-lead QRS measurements
    qs = mc12[:, on : off + 1]
    out["r_amp_mv"] = np.maximum(qs.max(axis=1), 0.0) * to_mv
    out["s_amp_mv"] = np.maximum(-qs.min(axis=1), 0.0) * to_mv
    out["qrs_area_mv_ms"] = qs.sum(axis=1) * to_mv  # 1 ms grid
    j60 = off + 60
    out["st_mv"] = (mc12[:, j60] if j60 < w else _nan12()) * to_mv
    a_i, a_f = out["qrs_area_mv_ms"][LEAD_INDEX["I"]], out["qrs_area_mv_ms"][LEAD_INDEX["aVF"]]
    if np.isfinite(a_i) and np.isfinite(a_f) and (a_i != 0 or a_f != 0):
        out["axis_deg"] = float(np.degrees(np.arctan2(a_f, a_i)))

    # RMS curve of the baseline-corrected analysis leads (T and P)
    rms = np.sqrt(np.mean(mc12[ana] ** 2, axis=0))
    rms = ndimage.uniform_filter1d(rms, _RMS_SMOOTH_MS, mode="nearest")
    level = float(np.mean(rms[bw]))
    qrs_peak = float(rms[on : off + 1].max())

    # T wave
    t_lim = w - 10
    if np.isfinite(rr_s):
        t_lim = min(t_lim, i_r + int(max(300, 0.8 * rr_s * 1000)))
    t0 = off + 40
    t_end = math.nan
    if t_lim - t0 > 40:
        tp = t0 + int(np.argmax(rms[t0:t_lim]))
        t_amp = rms[tp] - level
        if t_amp > max(3 * noise_rms, 0.02 * qrs_peak) and tp < t_lim - 5:
            te = _tangent_cross(rms, tp, t_lim, level, descending=True)
            if np.isfinite(te):
                t_end = float(np.clip(te, tp, t_lim))
    if np.isfinite(t_end):
        qt = t_end - on_f
        out.update(qt_ms=qt, t_end_at_ms=float(tau[0] + t_end))
        if np.isfinite(rr_s) and rr_s > 0:
            out["qtc_bazett_ms"] = qt / math.sqrt(rr_s)
            out["qtc_fridericia_ms"] = qt / rr_s ** (1.0 / 3.0)

    # P wave: on a median of the P region in which, per beat, the samples still inside the
    # previous beat's T wave (short RR) are left out
    p0, p1, p2 = max(8, on - 340), on - 40, on - 5
    if p1 - p0 > 30:
        pb = beats[:, :, p0:p2]  # [A, B, S]
        if np.isfinite(t_end):
            start = i_r + (t_end - i_r) + 20 - np.nan_to_num(prev_rr, nan=np.inf)  # [B]
            valid = np.arange(p0, p2)[None, :] >= start[:, None]  # [B, S]
            need = max(2, math.ceil(0.5 * pb.shape[1]))
            ok = valid.sum(axis=0) >= need
            bad = np.flatnonzero(~ok)
            first = int(bad[-1]) + 1 if bad.size else 0
            if not valid.all():
                pb = np.where(valid[None], pb, np.nan)
            pb, valid, p0 = pb[:, :, first:], valid[:, first:], p0 + first
        else:
            valid = np.ones(pb.shape[1:], bool)
    if p1 - p0 > 30:
        mp = _nanmedian1(pb) - bl12[ana][:, None]
        prms = np.sqrt(np.mean(mp**2, axis=0))
        seg = ndimage.uniform_filter1d(prms, _RMS_SMOOTH_MS, mode="nearest")
        kp = int(np.argmax(seg[: p1 - p0]))
        left = float(seg[: kp + 1].min())
        right = float(seg[kp:].min())
        prom = seg[kp] - max(left, right)
        p_thr = max(_P_NOISE_K * noise_rms, _P_QRS_FRAC * qrs_peak)
        sim = _split_half_similarity(
            pb, max(0, kp - 60), min(kp + 60, p2 - p0), slice(bw.start - p0, bw.stop - p0)
        )
        if 0 < kp < p1 - p0 - 1 and prom > p_thr and not sim < _P_SPLIT_SIM:
            pon = _tangent_cross(seg, 0, kp, level, descending=False)
            # a complete wave: onset inside the search window, rise time <= 80 ms
            if np.isfinite(pon) and 0 < pon < kp and kp - pon <= 80:
                pon = p0 + pon
                out.update(p_present=True, pr_ms=on_f - pon, p_onset_at_ms=float(tau[0] + pon))
    return Delineation(**out)
