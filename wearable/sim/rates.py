"""Heart-rate profiles: which rates each rhythm is drawn from, and how physiology follows the rate.

``"v1"`` (the default; what the models shipped until December 2026 were trained on) draws sinus
bradycardia at 42-57 bpm, sinus tachycardia at 102-150 and atrial fibrillation at 60-140, and
keeps its rate laws: QT by Fridericia (RR clipped to 0.3-2 s), PR shortening 0.8 ms/bpm (PR
0.10-0.24 s), a rate-independent PPG pulse shape and rate-independent HRV amplitudes.

``"wide"`` (opt-in; the shipped set's training data) extends the rates (bradycardia 35-57, tachycardia 102-180, AF 50-170 bpm)
and adds the rate dependence that keeps beats plausible at 180 bpm.  Each law below is the
identity at RR >= 0.6 s (<= 100 bpm), so the two profiles share their physiology at ordinary
rates and differ where ``v1`` was never meant to go:

* QT: Fridericia (RR^1/3) up to 100 bpm, steepening to Bazett's RR^1/2 law above (continuous at
  0.6 s), since QT at exercise rates shortens more than Fridericia predicts: QT ~230-290 ms at
  180 bpm, so the T wave ends before the next QRS (the next P wave may ride on the T wave, as it
  does in sinus tachycardia);
* PR: the 0.8 ms/bpm shortening levels off to 0.2 ms/bpm above 100 bpm, and that extra
  shortening stops at the P-wave duration + 10 ms (the P wave stays before the QRS);
* HRV: respiratory and Mayer-wave RR modulation fall with vagal withdrawal, from full amplitude
  at 100 bpm to 30 % at 180 bpm;
* PPG: the systolic wave (foot -> peak) contracts with the preceding RR as sqrt(RR / 0.6 s), as
  ejection time shortens with rate; the diastolic wave closes in on it (delay and width
  x RR / 0.6 s) and weakens (height x sqrt(RR / 0.6 s), the dicrotic notch fades), so each pulse
  stays within its own beat and the pulse train keeps one foot per beat at 180 bpm.  (With the
  "v1" pulse a young subject's diastolic wave merges with the next upstroke from ~150 bpm.)

``qtc_ms`` in the output stays the subject's rate-free QTc; above 100 bpm a Fridericia QTc measured
from the "wide" signal reads lower by (RR / 0.6 s)^1/6 (~9 % at 180 bpm).
"""

from __future__ import annotations

import numpy as np

RATE_PROFILES: tuple[str, ...] = ("v1", "wide")
DEFAULT_RATE_PROFILE = "v1"

#: Heart-rate ranges (bpm, uniform) per rhythm and profile; other rhythms follow the subject.
HR_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "v1": {"sinus_brady": (42.0, 57.0), "sinus_tachy": (102.0, 150.0), "af": (60.0, 140.0)},
    "wide": {"sinus_brady": (35.0, 57.0), "sinus_tachy": (102.0, 180.0), "af": (50.0, 170.0)},
}

RR_REF_S = 0.6  # 100 bpm: the "wide" laws below equal the "v1" ones at longer RR


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is a known rate profile, else raise ValueError."""
    if not isinstance(profile, str) or profile not in RATE_PROFILES:
        raise ValueError(f"unknown rate profile {profile!r} (choose from {', '.join(RATE_PROFILES)})")
    return profile


def qt_rr_factor_wide(rr: np.ndarray) -> np.ndarray:
    """QT / QTc for a preceding RR (s): RR^1/3 at RR >= 0.6 s, RR^1/2 * 0.6^-1/6 below."""
    r = np.clip(rr, 0.25, 2.0)
    out: np.ndarray = np.cbrt(r) * np.minimum(r / RR_REF_S, 1.0) ** (1.0 / 6.0)
    return out


def pr_wide(pr_rest: np.ndarray, p_dur: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """PR (s) of each record before clipping: the "v1" law up to 100 bpm, flatter above, and
    never below P duration + 10 ms because of the extra shortening."""
    pr100 = pr_rest - 0.0008 * (np.minimum(hr, 100.0) - 70.0)
    faster = pr100 - 0.0002 * np.maximum(hr - 100.0, 0.0)
    out: np.ndarray = np.maximum(faster, np.minimum(pr100, p_dur + 0.010))
    return out


def hrv_scale(hr: np.ndarray) -> np.ndarray:
    """Relative HRV amplitude: 1 up to 100 bpm, falling linearly to 0.3 at 180 bpm and beyond."""
    out: np.ndarray = np.clip(1.0 - 0.7 * (hr - 100.0) / 80.0, 0.3, 1.0)
    return out


def pulse_scales(rr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PPG pulse after a preceding RR (s), as factors on the subject's resting values, all 1 at
    RR >= 0.6 s: (systolic time course, sqrt(RR / 0.6); diastolic-wave delay and width,
    RR / 0.6; diastolic-wave height, sqrt(RR / 0.6))."""
    r = np.minimum(np.clip(rr, 0.25, None) / RR_REF_S, 1.0)
    root = np.sqrt(r)
    return root, r, root
