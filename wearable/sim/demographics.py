"""Subjects: demographics and the individual physiology they imply.

Each subject gets age, sex, height and weight, and from them (plus individual random effects, so
that the same demographics do not give the same ECG) the parameters the cardiac and vascular
models use.  Every effect and its direction comes from the literature cited next to it; the
numbers are population means with individual spread, not fits to any one dataset.

Sources (by name; see the README's physiology section):

* Umetani et al., "Twenty-four hour time domain heart rate variability and heart rate: relations
  to age and gender over nine decades", JACC 1998 -- HR slightly higher in women, HRV falls with age.
* Rijnbeek et al., "Normal values of the electrocardiogram for ages 16-90 years",
  J Electrocardiol 2014; Mason et al., "Electrocardiographic reference ranges derived from
  79,743 ambulatory subjects", J Electrocardiol 2007 -- PR longer with age and in men, QRS
  longer in men, QTc longer in women and with age, axis shifts leftward with age, voltages
  higher in young men and lower with age.
* Rautaharju et al., AHA/ACCF/HRS recommendations part IV (ST/T/QT), Circulation 2009 --
  QTc sex difference (~10-20 ms), Bazett/Fridericia corrections.
* Fraley et al., "Obesity and the electrocardiogram", Obes Rev 2005 -- leftward axis, lower
  QRS voltage and longer PR/QRS/QTc with BMI.
* The Reference Values for Arterial Stiffness' Collaboration, Eur Heart J 2010 -- pulse wave
  velocity rises with age (~5-6 m/s at 20 to ~10-12 m/s at 70+), so pulse arrival time falls.
* Millasseau et al., "Determination of age-related increases in large artery stiffness by
  digital pulse contour analysis", Clin Sci 2002 -- stiffness index height/dT rises with age,
  the diastolic wave approaches the systolic one and the dicrotic notch fades.
* Allen, "Photoplethysmography and its application in clinical physiological measurement",
  Physiol Meas 2007 -- PPG amplitude falls with age and poor perfusion.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class Subjects:
    """Per-subject arrays (length S).  Times in seconds, amplitudes in mV unless noted."""

    age: np.ndarray
    sex: np.ndarray  # 0 = female, 1 = male
    height_cm: np.ndarray
    weight_kg: np.ndarray
    # cardiac
    hr_rest: np.ndarray  # bpm
    rsa_amp: np.ndarray  # relative RR modulation by respiration
    lf_amp: np.ndarray  # relative RR modulation by Mayer waves (~0.1 Hz)
    pr_s: np.ndarray
    p_dur_s: np.ndarray
    qrs_s: np.ndarray
    qtc_s: np.ndarray  # Fridericia-corrected QT of the subject
    axis_deg: np.ndarray  # frontal QRS axis the dipole is rotated to
    horiz_deg: np.ndarray  # rotation about the vertical axis (precordial transition)
    qrs_gain: np.ndarray
    t_gain: np.ndarray
    p_gain: np.ndarray
    chest_gain: np.ndarray  # attenuation of the precordial leads (breast tissue, BMI)
    transfer_jitter: np.ndarray  # [S, 8, 3] electrode-placement / torso variation
    # vascular / PPG
    pep_s: np.ndarray  # pre-ejection period at 70 bpm
    pwv_ms: np.ndarray  # pulse wave velocity, m/s
    ppg_tpeak_s: np.ndarray  # foot -> systolic peak
    ppg_dt_dia_s: np.ndarray  # systolic -> diastolic peak (height / stiffness index)
    ppg_dia_ratio: np.ndarray  # diastolic / systolic wave height
    ppg_dia_width_s: np.ndarray
    ppg_k: np.ndarray  # systolic wave shape exponent (larger = sharper)
    ppg_amp: np.ndarray  # a.u.
    ppg_rr_gain: np.ndarray  # amplitude sensitivity to the preceding RR (Frank-Starling)

    def take(self, idx: np.ndarray) -> Subjects:
        return Subjects(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @property
    def bmi(self) -> np.ndarray:
        return self.weight_kg / (self.height_cm / 100.0) ** 2


def sample_demographics(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """Age, sex, height, weight of ``n`` ward patients (adults, skewed older)."""
    sex = (rng.random(n) < 0.5).astype(np.int8)
    age = np.clip(rng.normal(58.0, 17.0, n), 18.0, 95.0)
    # height: sex-specific, a little lower in older cohorts
    h_mean = np.where(sex == 1, 177.0, 164.0) - 0.06 * (age - 40.0)
    height = np.clip(rng.normal(h_mean, np.where(sex == 1, 7.0, 6.5)), 140.0, 205.0)
    bmi = np.clip(np.exp(rng.normal(np.log(26.5), 0.17, n)), 16.0, 50.0)
    weight = bmi * (height / 100.0) ** 2
    return age, sex, height, weight


def physiology(
    rng: np.random.Generator,
    age: np.ndarray,
    sex: np.ndarray,
    height_cm: np.ndarray,
    weight_kg: np.ndarray,
) -> Subjects:
    """Individual physiology from demographics plus individual random effects."""
    n = int(age.shape[0])
    age = np.asarray(age, dtype=np.float64)
    sex = np.asarray(sex, dtype=np.int8)
    height_cm = np.asarray(height_cm, dtype=np.float64)
    weight_kg = np.asarray(weight_kg, dtype=np.float64)
    male = (sex == 1).astype(np.float64)
    female = 1.0 - male
    bmi = weight_kg / (height_cm / 100.0) ** 2
    da, db, dh = age - 50.0, bmi - 25.0, height_cm - 170.0

    def z() -> np.ndarray:
        """Individual random effect."""
        return rng.standard_normal(n)

    def ln(s: float) -> np.ndarray:
        """Log-normal individual factor."""
        return np.exp(s * z())

    hr_rest = np.clip(68.0 + 3.0 * female - 0.05 * da + 0.3 * db + 7.0 * z(), 52.0, 95.0)
    rsa_amp = 0.045 * np.exp(-(age - 20.0) / 40.0) * ln(0.3)
    lf_amp = 0.025 * np.exp(-(age - 20.0) / 50.0) * ln(0.3)

    pr_ms = np.clip(152.0 + 0.35 * da + 5.0 * male + 0.4 * db + 14.0 * z(), 115.0, 205.0)
    p_dur_ms = np.clip(95.0 + 0.15 * da + 0.3 * db + 8.0 * z(), 70.0, 118.0)
    qrs_ms = np.clip(90.0 + 7.0 * male + 0.06 * da + 0.35 * db + 0.1 * dh + 6.0 * z(), 72.0, 112.0)
    qtc_ms = np.clip(408.0 + 13.0 * female + 0.35 * da + 0.5 * db + 12.0 * z(), 365.0, 455.0)
    # Frontal axis: leftward with age and BMI, more vertical in tall slim people.
    axis = np.clip(55.0 - 0.45 * da - 1.3 * db + 0.25 * dh + 16.0 * z(), -25.0, 95.0)
    horiz = 12.0 * z()
    young_male = male / (1.0 + np.exp((age - 40.0) / 8.0))
    qrs_gain = (1.0 + 0.25 * young_male) * (1.0 - 0.005 * da) * np.exp(-0.025 * db) * ln(0.18)
    t_gain = (1.0 - 0.004 * da) * (1.0 - 0.08 * female) * np.exp(-0.015 * db) * ln(0.2)
    p_gain = ln(0.2)
    chest_gain = (1.0 - 0.12 * female) * np.exp(-0.01 * db)
    transfer_jitter = rng.standard_normal((n, 8, 3))

    pep_s = np.clip(0.100 + 0.01 * z(), 0.08, 0.13)
    pwv = np.clip(5.5 + 0.085 * (age - 20.0) + 0.05 * db + 0.8 * z(), 4.5, 14.0)
    tpeak = np.clip(0.13 + 0.0012 * (age - 20.0) + 0.012 * z(), 0.09, 0.28)
    stiffness = np.clip(5.8 + 0.08 * (age - 20.0) + 0.6 * z(), 4.5, 16.0)  # m/s
    dt_dia = np.clip((height_cm / 100.0) / stiffness, 0.10, 0.40)
    dia_ratio = np.clip(0.78 - 0.0065 * (age - 20.0) + 0.08 * z(), 0.05, 0.95)
    dia_width = np.clip(0.055 + 0.0005 * (age - 20.0) + 0.007 * z(), 0.04, 0.12)
    # systolic wave sharpness: a narrow, fast-decaying systolic wave in compliant young arteries
    ppg_k = np.clip(4.6 - 0.025 * (age - 20.0) + 0.3 * z(), 2.2, 6.0)
    ppg_amp = np.clip((1.0 - 0.006 * da) * np.exp(-0.02 * db) * ln(0.3), 0.1, 5.0)
    ppg_rr_gain = np.clip(0.8 + 0.15 * z(), 0.3, 1.3)

    return Subjects(
        age=age,
        sex=sex,
        height_cm=height_cm,
        weight_kg=weight_kg,
        hr_rest=hr_rest,
        rsa_amp=rsa_amp,
        lf_amp=lf_amp,
        pr_s=pr_ms / 1e3,
        p_dur_s=p_dur_ms / 1e3,
        qrs_s=qrs_ms / 1e3,
        qtc_s=qtc_ms / 1e3,
        axis_deg=axis,
        horiz_deg=horiz,
        qrs_gain=qrs_gain,
        t_gain=t_gain,
        p_gain=p_gain,
        chest_gain=chest_gain,
        transfer_jitter=transfer_jitter,
        pep_s=pep_s,
        pwv_ms=pwv,
        ppg_tpeak_s=tpeak,
        ppg_dt_dia_s=dt_dia,
        ppg_dia_ratio=dia_ratio,
        ppg_dia_width_s=dia_width,
        ppg_k=ppg_k,
        ppg_amp=ppg_amp,
        ppg_rr_gain=ppg_rr_gain,
    )


def sample_subjects(rng: np.random.Generator, n: int) -> Subjects:
    return physiology(rng, *sample_demographics(rng, n))


def record_profile(records: dict[str, np.ndarray], i: int) -> dict[str, float | str]:
    """Record ``i``'s demographics as a patient profile (what a wearable registers and the live
    engine passes on): age, sex ``"M"``/``"F"`` (the simulator's 1 = male), height, weight."""
    return {
        "age": float(records["age"][i]),
        "sex": "M" if int(records["sex"][i]) == 1 else "F",
        "height_cm": float(records["height_cm"][i]),
        "weight_kg": float(records["weight_kg"][i]),
    }
