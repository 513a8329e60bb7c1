"""Physiological simulator of paired wearable PPG and 12-lead ECG (see README, "Simulator").

Modules follow the physiology: ``demographics`` (subjects and what their age, sex, height and
weight do to their physiology), ``rhythm`` (beat timing), ``heart`` (3-D dipole -> 12 leads),
``rates`` (heart-rate profiles and the rate dependence of QT, PR, HRV and the pulse), ``core``
(PPG from the same beats, noise, the output contract) and ``io`` (the ``.npz`` file).
"""

from wearable.sim.core import synthesize
from wearable.sim.demographics import record_profile
from wearable.sim.io import load_npz, save_npz
from wearable.sim.rates import DEFAULT_RATE_PROFILE, RATE_PROFILES
from wearable.sim.rhythm import DEFAULT_MIX, RHYTHMS, parse_mix

__all__ = [
    "synthesize",
    "record_profile",
    "save_npz",
    "load_npz",
    "RHYTHMS",
    "DEFAULT_MIX",
    "parse_mix",
    "RATE_PROFILES",
    "DEFAULT_RATE_PROFILE",
]
