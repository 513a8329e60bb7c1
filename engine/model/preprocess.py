"""The one PPG preprocessing path: training, offline reconstruction and the live stream all
turn a window of resampled PPG into the network's input with :func:`ppg_features`.

The live path hands the engine the window exactly as resampled by the ingest stream (no
filtering there), so the network sees the same tensor as for the same signal offline
(tests/test_preprocess.py checks this through the real stream).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from p2es.errors import InputError

__all__ = ["BAND_HZ", "bandpass", "ppg_features"]

#: the PPG band kept by the model's input filter
BAND_HZ: tuple[float, float] = (0.5, 8.0)


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


def ppg_features(ppg: np.ndarray, fs: float) -> np.ndarray:
    """PPG windows [N, T] (or [T]) -> features [N, 3, T] float32: z(bp), z(d/dt), z(d2/dt2)."""
    x = np.asarray(ppg)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise InputError(f"PPG must be [N, T], got shape {x.shape}")
    z = _zscore(bandpass(x, fs))
    d1 = np.gradient(z, axis=-1)
    d2 = np.gradient(d1, axis=-1)
    return np.stack([z, _zscore(d1), _zscore(d2)], axis=1).astype(np.float32)
