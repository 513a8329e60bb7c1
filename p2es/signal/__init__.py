"""Signal measurement shared by the simulator's realism tests, model evaluation and the engine.

* ``peaks``: R-peak detection (Pan-Tompkins-like), PPG feet / systolic peaks, HR, RR
  intervals and irregularity.
* ``delineate``: median beat and delineation (PR, QRS, QT/QTc, axis, ST, R/S amplitudes).

All functions are deterministic numpy/scipy and work at any sampling rate from 50 to 1000 Hz.
"""

from .delineate import Delineation, delineate, median_beat
from .peaks import (
    detect_ppg_beats,
    detect_r_peaks,
    heart_rate_bpm,
    rr_intervals_s,
    rr_irregularity,
)

__all__ = [
    "Delineation",
    "delineate",
    "median_beat",
    "detect_ppg_beats",
    "detect_r_peaks",
    "heart_rate_bpm",
    "rr_intervals_s",
    "rr_irregularity",
]
