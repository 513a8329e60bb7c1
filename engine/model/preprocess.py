"""The one PPG preprocessing path: training, offline reconstruction and the live stream all
turn a window of resampled PPG into the network's input with :func:`ppg_features`.

The live path hands the engine the window exactly as resampled by the ingest stream (no
filtering there), so the network sees the same tensor as for the same signal offline
(tests/test_preprocess.py checks this through the real stream).

Opt-in 4th channel (``ModelConfig.ppg_onset_channel``): ``ppg_features(..., onset=True)`` appends
:func:`onset_channel`, a smooth impulse train at the PPG pulse feet (``p2es.signal.
detect_ppg_beats`` on channel 0, the band-passed z-scored window as float32, so the channel can be
recomputed from the default 3-channel features bit for bit: :func:`complete_features`).  The
default (``onset=False``) features are unchanged: 3 channels.
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from p2es.errors import InputError
from p2es.signal import detect_ppg_beats

__all__ = [
    "BAND_HZ",
    "ONSET_SIGMA_S",
    "bandpass",
    "complete_features",
    "event_train",
    "gaussian_kernel",
    "onset_channel",
    "ppg_features",
]

#: the PPG band kept by the model's input filter
BAND_HZ: tuple[float, float] = (0.5, 8.0)
#: std (s) of the Gaussian bump at each PPG pulse foot in the onset channel
ONSET_SIGMA_S = 0.03


def bandpass(ppg: np.ndarray, fs: float, lo: float = BAND_HZ[0], hi: float = BAND_HZ[1]) -> np.ndarray:
    """2nd-order Butterworth band-pass, zero phase (forward-backward ``sosfiltfilt``) along
    the last axis; NaN -> 0 first."""
    x = np.nan_to_num(np.asarray(ppg, dtype=np.float64))
    sos = sps.butter(2, [lo, min(hi, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    return np.asarray(sps.sosfiltfilt(sos, x, axis=-1))


def _zscore(x: np.ndarray) -> np.ndarray:
    m = x.mean(axis=-1, keepdims=True)
    s = x.std(axis=-1, keepdims=True)
    return np.asarray((x - m) / np.maximum(s, 1e-6))


def ppg_features(ppg: np.ndarray, fs: float, *, onset: bool = False) -> np.ndarray:
    """PPG windows [N, T] (or [T]) -> features [N, 3, T] float32: z(bp), z(d/dt), z(d2/dt2);
    ``onset=True`` appends :func:`onset_channel` of channel 0 -> [N, 4, T]."""
    x = np.asarray(ppg)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise InputError(f"PPG must be [N, T], got shape {x.shape}")
    z = _zscore(bandpass(x, fs))
    d1 = np.gradient(z, axis=-1)
    d2 = np.gradient(d1, axis=-1)
    feats = np.stack([z, _zscore(d1), _zscore(d2)], axis=1).astype(np.float32)
    if onset:
        return complete_features(feats, fs, onset=True)
    return feats


def gaussian_kernel(sigma_s: float, fs: float, *, width_sigmas: float = 4.0) -> np.ndarray:
    """exp(-t^2 / (2 sigma^2)) on the odd sample grid |t| <= width_sigmas * sigma (peak 1)."""
    sig = float(sigma_s) * float(fs)
    h = max(1, int(np.ceil(width_sigmas * sig)))
    o = np.arange(-h, h + 1, dtype=np.float64)
    return np.exp(-0.5 * (o / sig) ** 2)


def event_train(events: np.ndarray, T: int, kernel: np.ndarray) -> np.ndarray:
    """Event positions [N, W] (sample indices; entries outside 0..T-1, e.g. -1, are padding)
    -> [N, T] float32: at each sample the max over events of ``kernel`` (odd length, centred on
    the event).  A kernel with peak 1 gives values in [0, 1] that are exactly 1 at the events."""
    ev = np.asarray(events, dtype=np.int64)
    if ev.ndim == 1:
        ev = ev[None]
    k = np.asarray(kernel, dtype=np.float64).reshape(-1)
    if k.size % 2 != 1:
        raise ValueError("event_train: the kernel must have an odd length")
    h = k.size // 2
    n = ev.shape[0]
    hit = np.zeros((n, T + 2 * h), dtype=bool)  # hit[:, e + h]: an event at sample e
    rows, cols = np.nonzero((ev >= 0) & (ev < T))
    hit[rows, ev[rows, cols] + h] = True
    out = np.zeros((n, T), dtype=np.float64)
    for j in range(k.size):  # offset o = j - h: sample t gets k[j] from an event at t - o
        o = j - h
        np.maximum(out, np.where(hit[:, h - o : h - o + T], k[j], 0.0), out=out)
    return out.astype(np.float32)


def onset_channel(z: np.ndarray, fs: float, sigma_s: float = ONSET_SIGMA_S) -> np.ndarray:
    """Band-passed PPG windows [N, T] (channel 0 of :func:`ppg_features`) -> [N, T] float32:
    Gaussian bumps (std ``sigma_s``, peak 1, values in [0, 1]) at the pulse feet that
    ``p2es.signal.detect_ppg_beats`` finds in each window (all zeros where it finds none)."""
    x = np.asarray(z, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    feet = [detect_ppg_beats(row, fs)["feet"] for row in x]
    width = max(1, max((f.size for f in feet), default=0))
    ev = np.full((x.shape[0], width), -1, dtype=np.int64)
    for i, f in enumerate(feet):
        ev[i, : f.size] = f
    return event_train(ev, x.shape[-1], gaussian_kernel(sigma_s, fs))


def complete_features(feats: np.ndarray, fs: float, *, onset: bool) -> np.ndarray:
    """Features of the default 3 channels [N, 3, T] -> what a model with ``ppg_onset_channel``
    (``onset``) takes: [N, 4, T] with :func:`onset_channel` of channel 0 appended (exactly what
    ``ppg_features(..., onset=True)`` returns).  Anything else is returned unchanged."""
    if not onset or feats.ndim != 3 or feats.shape[1] != 3:
        return feats
    f = np.asarray(feats, dtype=np.float32)
    return np.concatenate([f, onset_channel(f[:, 0], fs)[:, None]], axis=1)
