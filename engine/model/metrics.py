"""Reconstruction metrics: true vs reconstructed 12-lead ECG, pure numpy/scipy.

Inputs are arrays ``[N, 12, T]`` in mV (leads in ``p2es.leads.LEADS`` order) sampled at
``fs``; ``N`` windows.  Lead-wise metrics return :class:`LeadMetric` ``(per_lead [12], mean)``
where ``mean`` is the plain average of the 12 per-lead values (NaN leads ignored).

Definitions (``x`` true, ``y`` reconstruction, one lead):

* ``rmse``  sqrt(mean over all windows and samples of (x - y)^2)   (pooled per lead, as RDDM)
* ``mae``   mean over all windows and samples of |x - y|
* ``pearson``  Pearson r of x and y per window, then the mean over windows (windows where
  either signal is constant are left out)
* ``prd``   100 * sqrt(sum_t (x - y)^2 / sum_t x^2) per window (percent, x not mean-removed),
  then the mean over windows (windows with sum x^2 == 0 are left out)
* ``fd``    Fréchet distance as in RDDM (Shome et al., AAAI 2024; ``calculate_FD`` of their
  code): the lead's windows are concatenated and cut into non-overlapping 512-sample vectors
  (a remainder shorter than 512 is dropped; with T = 1024 that is 2 vectors per window), a
  Gaussian (mean, unbiased covariance) is fitted to the true and to the reconstructed vectors
  and FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).  ``fd_batch`` is the number of
  vectors per lead: FD depends on it (the covariance of few vectors is rank deficient), so
  only compare FDs of equal batch.  Computed in float64 as tr sqrt(S1 S2) = ||F1^T F2||_*
  (nuclear norm) for any factorisations S = F F^T, which equals the sum of the square roots
  of the (real, non-negative) eigenvalues of S1 S2 without forming a matrix square root.
* ``hr_mae_bpm``  R peaks by ``p2es.signal.detect_r_peaks`` on lead II of each window; HR =
  60 / mean RR (``heart_rate_bpm``).  A window whose reconstruction yields fewer than 2 beats
  (no HR) is a *failure*: it is counted in ``hr_fail_rate`` (fraction of windows) and left
  out of the MAE (RDDM does the same); windows whose *true* ECG yields no HR are left out of
  both.
* ``qrs_ms_mae`` / ``qt_ms_mae``  ``p2es.signal.delineate`` on the 12 leads of each window
  (one global QRS duration / QT interval per window, from the median beat); |true - recon|
  over windows where both are finite; ``*_valid`` = that fraction of windows.
* ``spectral_distance``  Welch power spectra (Hann, 2 s segments, 50 % overlap) of each window
  and lead, 10 log10(P + 1e-10 mV^2/Hz); mean |dB difference| over the bins in 0.5-40 Hz,
  then the mean over windows (per lead) and leads.
* ``einthoven_max_abs``  ``p2es.leads.einthoven_residual`` of the reconstruction (mV).

``window_errors`` gives the per-window absolute HR / QRS / QT errors behind those three MAEs
(NaN where a window is left out) and ``paired_difference`` the mean difference of two models'
errors over the windows both have, with a percentile-bootstrap 95 % interval over windows:
whether one model's lower MAE is more than the luck of these windows.

``paired_difference_clustered`` is the same difference with a cluster (subject) bootstrap:
windows of one subject are not independent, so whole subjects are resampled.

Beat level (against the simulator's *annotated* R peaks, not a detector on the true ECG):
``beat_metrics`` matches ``detect_r_peaks`` on lead II one-to-one to the annotations within
+-50 ms (greedy by distance, :func:`match_beats`), counting only beats at least 0.1 s from
both window ends (:func:`beat_counts`), and gives pooled sensitivity / PPV / F1 and
``hr_mae_ann_bpm`` (HR of the annotated beats vs HR of the detected beats, same formula and
edge rule).

``true_cache`` / ``recon_cache`` (from :func:`measure`) let callers reuse the per-window
R peaks / delineation of an array (the expensive part, ~10 ms per window) across models and
subsets.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import signal as sps

from p2es.leads import LEAD_INDEX, LEADS, einthoven_residual
from p2es.signal import delineate, detect_r_peaks, heart_rate_bpm

FD_DIM = 512
SPEC_BAND = (0.5, 40.0)
SPEC_FLOOR = 1e-10  # mV^2/Hz (-100 dB): keeps log10 finite for an all-zero band


class LeadMetric(NamedTuple):
    per_lead: np.ndarray  # [12]
    mean: float


class FDResult(NamedTuple):
    per_lead: np.ndarray  # [12]
    mean: float
    batch: int  # 512-sample vectors per lead (fd_batch)


class HRResult(NamedTuple):
    mae: float  # bpm, over windows where both HRs exist
    fail_rate: float  # fraction of windows (with a true HR) whose reconstruction has none
    n: int  # windows in the MAE


class IntervalResult(NamedTuple):
    mae: float  # ms
    valid: float  # fraction of windows where both are finite


def _check(true: npt.ArrayLike, recon: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(true, dtype=np.float64)
    y = np.asarray(recon, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"true and reconstruction must both be [N, L, T], got {x.shape} and {y.shape}")
    return x, y


def _lead(per_lead: np.ndarray) -> LeadMetric:
    per_lead = np.asarray(per_lead, dtype=np.float64)
    ok = np.isfinite(per_lead)
    return LeadMetric(per_lead, float(per_lead[ok].mean()) if ok.any() else math.nan)


def _nanmean0(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; all-NaN -> NaN (no warning)."""
    ok = np.isfinite(a)
    cnt = ok.sum(0)
    s = np.where(ok, a, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


# --------------------------------------------------------------------------- amplitude


def rmse(true: npt.ArrayLike, recon: npt.ArrayLike) -> LeadMetric:
    x, y = _check(true, recon)
    return _lead(np.sqrt(((x - y) ** 2).mean(axis=(0, 2))))


def mae(true: npt.ArrayLike, recon: npt.ArrayLike) -> LeadMetric:
    x, y = _check(true, recon)
    return _lead(np.abs(x - y).mean(axis=(0, 2)))


def pearson_windows(true: npt.ArrayLike, recon: npt.ArrayLike) -> np.ndarray:
    """Pearson r per window and lead [N, L] (NaN where either signal is constant)."""
    x, y = _check(true, recon)
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / den
    return np.where(den > 1e-20, np.clip(r, -1.0, 1.0), np.nan)


def pearson(true: npt.ArrayLike, recon: npt.ArrayLike) -> LeadMetric:
    return _lead(_nanmean0(pearson_windows(true, recon)))


def prd_windows(true: npt.ArrayLike, recon: npt.ArrayLike) -> np.ndarray:
    x, y = _check(true, recon)
    num = ((x - y) ** 2).sum(-1)
    den = (x**2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * np.sqrt(num / den), np.nan)


def prd(true: npt.ArrayLike, recon: npt.ArrayLike) -> LeadMetric:
    return _lead(_nanmean0(prd_windows(true, recon)))


# --------------------------------------------------------------------------- Fréchet distance


def _factor(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean [d], F [d, r], trace) with cov = F F^T (unbiased, like np.cov)."""
    m, d = v.shape
    mu = v.mean(0)
    a = (v - mu) / math.sqrt(m - 1)  # cov = a^T a
    if m <= d:
        f = a.T  # [d, m]
    else:
        w, q = np.linalg.eigh(a.T @ a)  # [d, d] PSD
        f = q * np.sqrt(np.clip(w, 0.0, None))[None, :]
    return mu, f, float((a * a).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to the rows of ``a`` [M1, d] and ``b`` [M2, d] (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [M, d] arrays of equal d, got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < 2:
        return math.nan
    mu1, f1, tr1 = _factor(a)
    mu2, f2, tr2 = _factor(b)
    tr_covmean = float(np.linalg.svd(f1.T @ f2, compute_uv=False).sum())
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean)


def fd_vectors(x: np.ndarray, dim: int = FD_DIM) -> np.ndarray:
    """One lead's windows [N, T] -> [M, dim]: concatenated, cut, remainder dropped (RDDM)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    m = flat.size // dim
    return flat[: m * dim].reshape(m, dim)


def fd(true: npt.ArrayLike, recon: npt.ArrayLike, dim: int = FD_DIM) -> FDResult:
    x, y = _check(true, recon)
    per = np.array(
        [frechet_distance(fd_vectors(x[:, ld], dim), fd_vectors(y[:, ld], dim)) for ld in range(x.shape[1])]
    )
    m = fd_vectors(x[:, 0], dim).shape[0] if x.shape[1] else 0
    r = _lead(per)
    return FDResult(r.per_lead, r.mean, int(m))


# --------------------------------------------------------------------------- measurements


def hr_windows(ecg: npt.ArrayLike, fs: float, lead: str = "II") -> np.ndarray:
    """HR (bpm) per window from R peaks on ``lead``; NaN with fewer than 2 beats."""
    e = np.asarray(ecg, dtype=np.float64)
    k = LEAD_INDEX[lead]
    return np.array([heart_rate_bpm(detect_r_peaks(e[i, k], fs), fs) for i in range(e.shape[0])])


def interval_windows(ecg: npt.ArrayLike, fs: float) -> dict[str, np.ndarray]:
    """QRS duration and QT interval (ms) per window from ``delineate`` on all 12 leads."""
    e = np.asarray(ecg, dtype=np.float64)
    qrs, qt = np.full(e.shape[0], np.nan), np.full(e.shape[0], np.nan)
    for i in range(e.shape[0]):
        if not np.isfinite(e[i]).all():
            continue
        d = delineate(e[i], fs)
        qrs[i], qt[i] = d.qrs_ms, d.qt_ms
    return {"qrs_ms": qrs, "qt_ms": qt}


def measure(ecg: npt.ArrayLike, fs: float) -> dict[str, np.ndarray]:
    """Per-window measurements of an ECG array (cache for the HR / interval metrics)."""
    return {"hr_bpm": hr_windows(ecg, fs), **interval_windows(ecg, fs)}


def subset(cache: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in cache.items()}


def hr_mae_bpm(
    true: npt.ArrayLike,
    recon: npt.ArrayLike,
    fs: float,
    *,
    true_cache: dict[str, np.ndarray] | None = None,
    recon_cache: dict[str, np.ndarray] | None = None,
) -> HRResult:
    ht = (true_cache or {}).get("hr_bpm")
    hr = (recon_cache or {}).get("hr_bpm")
    ht = hr_windows(true, fs) if ht is None else np.asarray(ht)
    hr = hr_windows(recon, fs) if hr is None else np.asarray(hr)
    has_true = np.isfinite(ht)
    ok = has_true & np.isfinite(hr)
    n_true = int(has_true.sum())
    fail = float((has_true & ~np.isfinite(hr)).sum() / n_true) if n_true else math.nan
    m = float(np.abs(ht[ok] - hr[ok]).mean()) if ok.any() else math.nan
    return HRResult(m, fail, int(ok.sum()))


def _interval_mae(
    key: str,
    true: npt.ArrayLike,
    recon: npt.ArrayLike,
    fs: float,
    true_cache: dict[str, np.ndarray] | None,
    recon_cache: dict[str, np.ndarray] | None,
) -> IntervalResult:
    a = (true_cache or {}).get(key)
    b = (recon_cache or {}).get(key)
    a = interval_windows(true, fs)[key] if a is None else np.asarray(a)
    b = interval_windows(recon, fs)[key] if b is None else np.asarray(b)
    ok = np.isfinite(a) & np.isfinite(b)
    m = float(np.abs(a[ok] - b[ok]).mean()) if ok.any() else math.nan
    return IntervalResult(m, float(ok.mean()) if ok.size else math.nan)


def qrs_ms_mae(
    true: npt.ArrayLike,
    recon: npt.ArrayLike,
    fs: float,
    *,
    true_cache: dict[str, np.ndarray] | None = None,
    recon_cache: dict[str, np.ndarray] | None = None,
) -> IntervalResult:
    return _interval_mae("qrs_ms", true, recon, fs, true_cache, recon_cache)


def qt_ms_mae(
    true: npt.ArrayLike,
    recon: npt.ArrayLike,
    fs: float,
    *,
    true_cache: dict[str, np.ndarray] | None = None,
    recon_cache: dict[str, np.ndarray] | None = None,
) -> IntervalResult:
    return _interval_mae("qt_ms", true, recon, fs, true_cache, recon_cache)


WINDOW_METRICS = {"hr_mae_bpm": "hr_bpm", "qrs_ms_mae": "qrs_ms", "qt_ms_mae": "qt_ms"}


def window_errors(
    true_cache: dict[str, np.ndarray], recon_cache: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-window |true - recon| of HR (bpm), QRS and QT (ms), keyed like the MAE metrics;
    NaN where either measurement is missing (the windows those MAEs leave out)."""
    return {
        m: np.abs(np.asarray(true_cache[k], np.float64) - np.asarray(recon_cache[k], np.float64))
        for m, k in WINDOW_METRICS.items()
    }


def paired_difference(
    err_a: npt.ArrayLike, err_b: npt.ArrayLike, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``err_a - err_b`` over windows where both are finite, with a 95 % percentile
    bootstrap interval (windows resampled with replacement, fixed ``seed``).

    ``{"diff", "ci95": [lo, hi], "n"}``; NaNs with fewer than 2 common windows.  An interval
    that excludes 0 means the difference is larger than the spread of these windows allows
    by chance (windows are treated as independent; they are separate records here).
    """
    a, b = np.asarray(err_a, np.float64), np.asarray(err_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: shapes differ {a.shape} vs {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size < 2:
        return {"diff": math.nan, "ci95": [math.nan, math.nan], "n": int(d.size)}
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(int(n_boot), d.size))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "n": int(d.size)}


# --------------------------------------------------------------------------- spectrum


def log_spectrum(
    ecg: npt.ArrayLike, fs: float, band: tuple[float, float] = SPEC_BAND
) -> tuple[np.ndarray, np.ndarray]:
    """(freqs [F], dB [..., F]) of Welch spectra along the last axis, bins inside ``band``."""
    x = np.asarray(ecg, dtype=np.float64)
    nper = min(x.shape[-1], int(round(2.0 * fs)))
    f, p = sps.welch(x, fs=fs, window="hann", nperseg=nper, noverlap=nper // 2, axis=-1)
    sel = (f >= band[0]) & (f <= band[1])
    return f[sel], 10.0 * np.log10(p[..., sel] + SPEC_FLOOR)


def spectral_distance(
    true: npt.ArrayLike, recon: npt.ArrayLike, fs: float, band: tuple[float, float] = SPEC_BAND
) -> LeadMetric:
    x, y = _check(true, recon)
    _, px = log_spectrum(x, fs, band)
    _, py = log_spectrum(y, fs, band)
    if px.shape[-1] == 0:
        return _lead(np.full(x.shape[1], np.nan))
    return _lead(np.abs(px - py).mean(-1).mean(0))


def einthoven_max_abs(recon: npt.ArrayLike) -> float:
    return einthoven_residual(np.asarray(recon), axis=-2)


# --------------------------------------------------------------------------- all at once

LEAD_METRICS = ("rmse", "mae", "pearson", "prd", "fd", "spectral_distance")


def compute_all(
    true: npt.ArrayLike,
    recon: npt.ArrayLike,
    fs: float,
    *,
    true_cache: dict[str, np.ndarray] | None = None,
    recon_cache: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every metric above as a flat dict of floats, plus ``per_lead`` {metric: {lead: v}}."""
    x, y = _check(true, recon)
    true_cache = measure(x, fs) if true_cache is None else true_cache
    recon_cache = measure(y, fs) if recon_cache is None else recon_cache
    lm = {"rmse": rmse(x, y), "mae": mae(x, y), "pearson": pearson(x, y), "prd": prd(x, y)}
    f = fd(x, y)
    sd = spectral_distance(x, y, fs)
    hr = hr_mae_bpm(x, y, fs, true_cache=true_cache, recon_cache=recon_cache)
    qrs = qrs_ms_mae(x, y, fs, true_cache=true_cache, recon_cache=recon_cache)
    qt = qt_ms_mae(x, y, fs, true_cache=true_cache, recon_cache=recon_cache)
    out: dict[str, Any] = {k: v.mean for k, v in lm.items()}
    out.update(
        fd=f.mean,
        fd_batch=f.batch,
        hr_mae_bpm=hr.mae,
        qrs_ms_mae=qrs.mae,
        qt_ms_mae=qt.mae,
        spectral_distance=sd.mean,
        einthoven_max_abs=einthoven_max_abs(y),
        hr_fail_rate=hr.fail_rate,
        qrs_valid=qrs.valid,
        qt_valid=qt.valid,
        n=int(x.shape[0]),
    )
    per: dict[str, LeadMetric | FDResult] = {**lm, "fd": f, "spectral_distance": sd}
    names = LEADS if x.shape[1] == 12 else tuple(str(i) for i in range(x.shape[1]))
    out["per_lead"] = {k: {n: float(v) for n, v in zip(names, per[k].per_lead)} for k in LEAD_METRICS}
    return out


# --------------------------------------------------------------------------- beats vs annotations

BEAT_TOL_S = 0.05  # match window: a detection within +-50 ms of an annotated R peak
BEAT_EDGE_S = 0.1  # beats closer than this to either window end are not counted
BEAT_LEAD = "II"


class BeatScores(NamedTuple):
    sensitivity: float  # TP / (TP + FN); NaN without counted annotations
    ppv: float  # TP / (TP + FP); NaN without counted detections (e.g. a flat output)
    f1: float  # 2 TP / (2 TP + FP + FN); NaN only when nothing is counted at all
    tp: int
    fn: int
    fp: int


def annotated_beats(r_peaks: Any, n: int) -> list[np.ndarray]:
    """Per-window annotated R peaks (sorted int64 sample indices) from the simulator's
    ``r_peaks`` [N, B] (padded with -1) or a sequence of N index arrays."""
    if isinstance(r_peaks, np.ndarray) and r_peaks.ndim == 2:
        rows: Any = list(r_peaks)
    else:
        rows = list(r_peaks)
    if len(rows) != n:
        raise ValueError(f"r_peaks has {len(rows)} windows, expected {n}")
    out = []
    for r in rows:
        a = np.asarray(r).reshape(-1)
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"r_peaks must be integer sample indices, got dtype {a.dtype}")
        out.append(np.sort(a[a >= 0].astype(np.int64)))
    return out


def detect_windows(ecg: npt.ArrayLike, fs: float, lead: str = BEAT_LEAD) -> list[np.ndarray]:
    """``detect_r_peaks`` on ``lead`` of every window [N, 12, T] (the detector behind ``hr_bpm``)."""
    e = np.asarray(ecg, dtype=np.float64)
    k = LEAD_INDEX[lead]
    return [detect_r_peaks(e[i, k], fs) for i in range(e.shape[0])]


def match_beats(ref: npt.ArrayLike, det: npt.ArrayLike, tol: int) -> np.ndarray:
    """One-to-one matching of reference beats to detections, greedy by distance.

    Every (reference, detection) pair with ``|ref - det| <= tol`` samples is a candidate; the
    closest pair is taken first (ties: earlier reference, then earlier detection), then the
    closest of the pairs whose beats are both still free, and so on.  Returns the matched
    index pairs ``[K, 2]`` (into ``ref`` and ``det``), sorted by reference index.
    """
    r = np.asarray(ref, dtype=np.int64).reshape(-1)
    d = np.asarray(det, dtype=np.int64).reshape(-1)
    if r.size == 0 or d.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    dist = np.abs(r[:, None] - d[None, :])
    i, j = np.nonzero(dist <= tol)
    order = np.lexsort((j, i, dist[i, j]))
    used_r = np.zeros(r.size, dtype=bool)
    used_d = np.zeros(d.size, dtype=bool)
    pairs = []
    for a, b in zip(i[order], j[order]):
        if not used_r[a] and not used_d[b]:
            used_r[a] = used_d[b] = True
            pairs.append((int(a), int(b)))
    out = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return out


def _inner(beats: np.ndarray, T: int, edge: int) -> np.ndarray:
    """Mask of the beats at least ``edge`` samples from both window ends (0 and T - 1)."""
    return (beats >= edge) & (beats <= T - 1 - edge)


def beat_counts(
    ann: list[np.ndarray],
    det: list[np.ndarray],
    T: int,
    fs: float,
    *,
    tol_s: float = BEAT_TOL_S,
    edge_s: float = BEAT_EDGE_S,
) -> np.ndarray:
    """Per-window (TP, FN, FP) [N, 3] of detections ``det`` against annotations ``ann``.

    Matching (:func:`match_beats`, +-``tol_s``) uses every beat of the window; the counts then
    keep only beats at least ``edge_s`` from both window ends: a match counts as TP and an
    unmatched annotation as FN when the *annotation* is inside, an unmatched detection as FP
    when the *detection* is inside.  So a beat cut by the window edge is never an error, and a
    detection just inside the edge that matches an annotation just outside it is not an FP.
    """
    if len(ann) != len(det):
        raise ValueError(f"{len(ann)} annotated windows vs {len(det)} detected")
    tol = int(round(tol_s * fs))
    edge = int(round(edge_s * fs))
    out = np.zeros((len(ann), 3), dtype=np.int64)
    for w, (a, d) in enumerate(zip(ann, det)):
        a = np.asarray(a, dtype=np.int64)
        d = np.asarray(d, dtype=np.int64)
        pairs = match_beats(a, d, tol)
        ma = np.zeros(a.size, dtype=bool)
        md = np.zeros(d.size, dtype=bool)
        ma[pairs[:, 0]] = True
        md[pairs[:, 1]] = True
        ia, idd = _inner(a, T, edge), _inner(d, T, edge)
        out[w] = (int((ma & ia).sum()), int((~ma & ia).sum()), int((~md & idd).sum()))
    return out


def beat_scores(counts: npt.ArrayLike) -> BeatScores:
    """Pooled sensitivity, PPV and F1 from per-window (TP, FN, FP) counts [N, 3]."""
    c = np.asarray(counts, dtype=np.int64).reshape(-1, 3)
    tp, fn, fp = (int(v) for v in c.sum(axis=0))

    def ratio(num: int, den: int) -> float:
        return num / den if den > 0 else math.nan

    return BeatScores(ratio(tp, tp + fn), ratio(tp, tp + fp), ratio(2 * tp, 2 * tp + fp + fn), tp, fn, fp)


def hr_from_beats(beats: list[np.ndarray], T: int, fs: float, *, edge_s: float = BEAT_EDGE_S) -> np.ndarray:
    """HR (bpm) per window, ``heart_rate_bpm`` (60 / mean RR) of the beats at least ``edge_s``
    from both window ends; NaN with fewer than 2 such beats."""
    edge = int(round(edge_s * fs))
    return np.array([heart_rate_bpm(b[_inner(np.asarray(b), T, edge)], fs) for b in beats], dtype=np.float64)


def beat_metrics(
    ann: list[np.ndarray],
    det: list[np.ndarray],
    T: int,
    fs: float,
    *,
    tol_s: float = BEAT_TOL_S,
    edge_s: float = BEAT_EDGE_S,
) -> dict[str, Any]:
    """Beat-level scores of detections against annotated R peaks, flat dict:

    ``beat_sensitivity``, ``beat_ppv``, ``beat_f1`` (pooled over windows, :func:`beat_counts`),
    ``beat_tp/fn/fp``; ``hr_mae_ann_bpm`` = mean over windows of |HR(annotations) -
    HR(detections)| (:func:`hr_from_beats`, same edge rule), over windows where both exist;
    ``hr_ann_fail_rate`` = fraction of windows with an annotated HR whose detections give none
    (left out of the MAE, as in ``hr_mae_bpm``); ``hr_ann_n`` = windows in the MAE.
    """
    s = beat_scores(beat_counts(ann, det, T, fs, tol_s=tol_s, edge_s=edge_s))
    ha = hr_from_beats(ann, T, fs, edge_s=edge_s)
    hd = hr_from_beats(det, T, fs, edge_s=edge_s)
    has = np.isfinite(ha)
    ok = has & np.isfinite(hd)
    n_has = int(has.sum())
    err = np.abs(ha - hd)
    return {
        "beat_sensitivity": s.sensitivity,
        "beat_ppv": s.ppv,
        "beat_f1": s.f1,
        "beat_tp": s.tp,
        "beat_fn": s.fn,
        "beat_fp": s.fp,
        "hr_mae_ann_bpm": float(err[ok].mean()) if ok.any() else math.nan,
        "hr_ann_fail_rate": float((has & ~np.isfinite(hd)).sum() / n_has) if n_has else math.nan,
        "hr_ann_n": int(ok.sum()),
    }


def hr_ann_window_errors(
    ann: list[np.ndarray], det: list[np.ndarray], T: int, fs: float, *, edge_s: float = BEAT_EDGE_S
) -> np.ndarray:
    """Per-window |HR(annotations) - HR(detections)| (bpm), NaN where either has no HR: the
    windows whose mean is ``hr_mae_ann_bpm`` of :func:`beat_metrics`."""
    err: np.ndarray = np.abs(
        hr_from_beats(ann, T, fs, edge_s=edge_s) - hr_from_beats(det, T, fs, edge_s=edge_s)
    )
    return err


# --------------------------------------------------------------------------- clustered bootstrap


def paired_difference_clustered(
    err_a: npt.ArrayLike,
    err_b: npt.ArrayLike,
    clusters: npt.ArrayLike,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`paired_difference` with a cluster (subject) bootstrap.

    Over the windows where both errors are finite, d = a - b; the point estimate is the mean
    of d over those windows (the same as :func:`paired_difference`).  Each bootstrap draw
    resamples the *clusters* with replacement (as many as there are) and takes all their
    windows; its statistic is sum(d) / count over the drawn windows.  95 % percentile
    interval, fixed ``seed``.  ``{"diff", "ci95", "n", "clusters"}``; NaN diff and interval with
    fewer than 2 windows or 2 clusters.  With every window its own cluster (ids in window order) it
    reproduces :func:`paired_difference` exactly.
    """
    a, b = np.asarray(err_a, np.float64), np.asarray(err_b, np.float64)
    c = np.asarray(clusters)
    if a.shape != b.shape or c.shape != a.shape:
        raise ValueError(f"paired_difference_clustered: shapes differ {a.shape}, {b.shape}, {c.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[ok]
    _, inv = np.unique(c[ok], return_inverse=True)
    k = int(inv.max()) + 1 if inv.size else 0
    if d.size < 2 or k < 2:  # no interval -> no estimate either (as paired_difference)
        return {"diff": math.nan, "ci95": [math.nan, math.nan], "n": int(d.size), "clusters": k}
    s = np.bincount(inv, weights=d, minlength=k)
    m = np.bincount(inv, minlength=k).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(int(n_boot), k))
    boot = s[idx].sum(axis=1) / m[idx].sum(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "n": int(d.size), "clusters": k}


def cluster_weights(clusters: npt.ArrayLike, *, n_boot: int, seed: int = 0) -> np.ndarray:
    """Window weights [n_boot, N] of a cluster bootstrap: each draw resamples the clusters
    (subjects) with replacement, as many as there are, and a window's weight is the number of
    times its cluster was drawn (0 = left out).  The same ``seed`` gives the same draws, so
    statistics computed from one matrix are paired draw by draw."""
    c = np.asarray(clusters)
    _, inv = np.unique(c, return_inverse=True)
    k = int(inv.max()) + 1 if inv.size else 0
    if k == 0:
        return np.zeros((int(n_boot), 0))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(int(n_boot), k))
    drawn = np.stack([np.bincount(row, minlength=k) for row in idx]).astype(np.float64)  # [n_boot, k]
    return drawn[:, inv]


def f1_weighted(counts: npt.ArrayLike, weights: npt.ArrayLike) -> np.ndarray:
    """Pooled beat F1 of per-window (TP, FN, FP) ``counts`` [N, 3] under window ``weights``
    [B, N] (one F1 per row; NaN where nothing is counted) - :func:`beat_scores` with
    weights; all-ones weights give its F1."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    tp, fn, fp = (w @ c).T
    den = 2.0 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2.0 * tp / np.where(den > 0, den, 1.0), np.nan)


def fd_weighted(
    true: npt.ArrayLike, recons: list[np.ndarray], weights: npt.ArrayLike, dim: int = FD_DIM
) -> np.ndarray:
    """FD (mean over leads, as :func:`fd`) of each of ``recons`` (each [N, L, T], the same
    windows as ``true``) under window ``weights`` [B, N]: [len(recons), B].

    A window of weight w counts as w copies of its ``T / dim`` vectors in the Gaussian fits
    (weighted mean, unbiased weighted covariance), so all-ones weights give :func:`fd`.  Needs
    ``T`` to be a multiple of ``dim`` (a vector must belong to one window).  tr sqrt(S1 S2) =
    ||A2 F1||_* for S1 = F1 F1^T (one factorisation of the true covariance per lead and draw)
    and S2 = A2^T A2 (A2 the weighted, centred vectors), summed from the eigenvalues of its Gram
    matrix; float64."""
    x = np.asarray(true, dtype=np.float64)
    ys = [np.asarray(y, dtype=np.float64) for y in recons]
    N, L, T = x.shape
    if T % dim:
        raise ValueError(f"fd_weighted: T = {T} is not a multiple of the FD vector length {dim}")
    for y in ys:
        if y.shape != x.shape:
            raise ValueError(f"fd_weighted: shapes differ {x.shape} vs {y.shape}")
    w_all = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    per = T // dim
    out = np.full((len(ys), w_all.shape[0], L), np.nan)

    def stats(v: np.ndarray, wv: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray, float]:
        mu = wv @ v / n
        a = (v - mu) * np.sqrt(wv / (n - 1.0))[:, None]  # cov = a^T a
        return mu, a, float((a * a).sum())

    for b, w in enumerate(w_all):
        keep = np.flatnonzero(w > 0)
        wv = np.repeat(w[keep], per)
        n = float(wv.sum())
        if n < 2:
            continue
        for ld in range(L):
            mu1, a1, tr1 = stats(x[keep, ld].reshape(-1, dim), wv, n)
            if a1.shape[0] <= dim:  # S1 = f f^T with f = a1^T [d, m]
                f1 = a1.T
            else:
                ev, q = np.linalg.eigh(a1.T @ a1)
                f1 = q * np.sqrt(np.clip(ev, 0.0, None))[None, :]
            for r, y in enumerate(ys):
                mu2, a2, tr2 = stats(y[keep, ld].reshape(-1, dim), wv, n)
                h = a2 @ f1  # tr sqrt(S1 S2) = tr sqrt(f^T S2 f) = ||a2 f||_*
                g = h.T @ h if h.shape[0] >= h.shape[1] else h @ h.T
                nuc = float(np.sqrt(np.clip(np.linalg.eigvalsh(g), 0.0, None)).sum())
                d = mu1 - mu2
                out[r, b, ld] = float(d @ d) + tr1 + tr2 - 2.0 * nuc
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(out)
        res: np.ndarray = np.where(
            ok.any(-1), np.where(ok, out, 0.0).sum(-1) / np.maximum(ok.sum(-1), 1), np.nan
        )
    return res


def boot_interval(diff: float, boot: npt.ArrayLike) -> dict[str, Any]:
    """``{"diff", "ci95", "n_boot"}``: the point estimate and the 95 % percentile interval of
    bootstrap draws of the same difference (NaN draws left out)."""
    bd = np.asarray(boot, dtype=np.float64)
    bd = bd[np.isfinite(bd)]
    if bd.size < 2 or not math.isfinite(diff):
        return {"diff": float(diff), "ci95": [math.nan, math.nan], "n_boot": int(bd.size)}
    lo, hi = np.percentile(bd, [2.5, 97.5])
    return {"diff": float(diff), "ci95": [float(lo), float(hi)], "n_boot": int(bd.size)}
