"""Cardiac electrical model: a 3-D heart dipole projected to the 12-lead ECG.

The heart vector (vectorcardiogram, Frank axes: X to the patient's left, Y to the feet, Z to the
back) is a sum of Gaussian waves per beat -- P, Q, R, S and an asymmetric T -- each with its own
3-D direction.  This is the 3-D dynamical-model family of ECGSYN (McSharry et al., "A dynamical
model for generating synthetic electrocardiogram signals", IEEE TBME 2003) as extended to three
dimensions by Sameni et al. ("Multichannel ECG and noise modeling: application to maternal and
fetal ECG signals", EURASIP JASP 2007), written in time rather than phase so that PR, QRS and QT
are explicit physiological intervals (QT adapts to the preceding RR by Fridericia's law).

The dipole is projected to the eight independent leads (I, II, V1..V6) with the Dower
transform (Dower et al., "On deriving the electrocardiogram from vectorcardiographic leads",
Clin Cardiol 1980; coefficients as tabulated by Edenbrandt & Pahlm, J Electrocardiol 1988),
perturbed per subject for electrode placement and torso geometry.  III, aVR, aVL and aVF are then
derived exactly (``p2es.leads.derive_12``).
"""

from __future__ import annotations

import numpy as np

from p2es.leads import derive_12

# Dower matrix, rows in p2es's independent-lead order I, II, V1..V6; columns X, Y, Z (Frank).
DOWER = np.array(
    [
        [0.632, -0.235, 0.059],  # I
        [0.235, 1.066, -0.132],  # II
        [-0.515, 0.157, -0.917],  # V1
        [0.044, 0.164, -1.387],  # V2
        [0.882, 0.098, -1.277],  # V3
        [1.213, 0.127, -0.601],  # V4
        [1.125, 0.127, -0.086],  # V5
        [0.831, 0.076, 0.230],  # V6
    ]
)

# Inverse Dower (Edenbrandt & Pahlm 1988): 8 leads (I, II, V1..V6) -> X, Y, Z.  Used by tests
# and by the VCG view of real recordings.
INVERSE_DOWER = np.array(
    [
        [0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194],
        [-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048],
        [0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108],
    ]
)

# Wave directions of a normal adult beat (mV, Frank axes) before the subject's rotation/gain.
# P: leftward-inferior; Q: septal, rightward-anterior; R: main left-inferior-posterior force;
# S: late rightward-superior-posterior; T: concordant with QRS, more anterior.
BASE = {
    "P": np.array([0.060, 0.100, -0.010]),
    "Q": np.array([-0.100, -0.030, -0.120]),
    "R": np.array([1.050, 0.800, 0.330]),
    "S": np.array([-0.250, -0.220, 0.550]),
    "T": np.array([0.280, 0.180, -0.180]),
}
# Widths as fractions of the QRS duration; centres chosen so that the tangent-defined QRS onset
# (Q centre - 2 sigma) is at -QRS/2 and the offset (S centre + 2 sigma) at +QRS/2 around R.
Q_C, Q_S = -0.30, 0.10
R_C, R_S = 0.0, 0.11
S_C, S_S = 0.28, 0.11
# T wave: asymmetric; the descending limb's tangent meets the baseline at centre + 2 sigma (T end).
T_SIG_DOWN, T_SIG_UP = 0.045, 0.075  # seconds at QT = 400 ms, scaled with QT

# Injury-current directions for ST deviation by territory (Frank axes, unit-ish vectors).
ST_TERRITORY = {
    "inferior": np.array([0.0, 1.0, 0.0]),  # II, III, aVF up; aVL down
    "anterior": np.array([0.25, 0.0, -1.0]),  # V1-V4 up
    "lateral": np.array([1.0, -0.35, 0.15]),  # I, aVL, V5, V6 up; III down
}
ST_LEADS = {  # leads (p2es 12-lead indices) where the territory's deviation is read
    "inferior": [1, 2, 5],
    "anterior": [6, 7, 8, 9],
    "lateral": [0, 4, 10, 11],
}
# AF fibrillatory-wave direction: strongest in V1 and the inferior leads.
AF_DIR = np.array([0.15, 0.45, -0.85]) / np.linalg.norm([0.15, 0.45, -0.85])


def rot_frontal(deg: np.ndarray) -> np.ndarray:
    """Rotation in the X-Y (frontal) plane, positive towards inferior: [..., 3, 3]."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    r = np.zeros(np.shape(a) + (3, 3))
    r[..., 0, 0], r[..., 0, 1] = c, -s
    r[..., 1, 0], r[..., 1, 1] = s, c
    r[..., 2, 2] = 1.0
    return r


def rot_horizontal(deg: np.ndarray) -> np.ndarray:
    """Rotation about the vertical (Y) axis in the X-Z plane: [..., 3, 3]."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    r = np.zeros(np.shape(a) + (3, 3))
    r[..., 0, 0], r[..., 0, 2] = c, -s
    r[..., 2, 0], r[..., 2, 2] = s, c
    r[..., 1, 1] = 1.0
    return r


def _net_qrs(rotation: np.ndarray) -> np.ndarray:
    """Net QRS area vector (Frank) of the base beat after ``rotation`` [...,3,3]."""
    area = BASE["Q"] * Q_S + BASE["R"] * R_S + BASE["S"] * S_S
    return rotation @ area


def _axis_of(vec: np.ndarray) -> np.ndarray:
    """Frontal axis (degrees) as a clinician reads it: atan2(aVF, I) of a Frank vector."""
    leads = vec @ DOWER[:2].T  # I, II
    i, ii = leads[..., 0], leads[..., 1]
    avf = ii - i / 2.0
    deg: np.ndarray = np.rad2deg(np.arctan2(avf, i))
    return deg


# Lookup from frontal rotation to the axis measured in leads I/aVF (the Dower projection is
# not isotropic, so rotating the dipole by d degrees does not move the lead axis by d degrees).
_ROT_GRID = np.linspace(-150.0, 150.0, 1201)
_AXIS_GRID = _axis_of(_net_qrs(rot_frontal(_ROT_GRID)))
_AXIS_GRID = np.unwrap(np.deg2rad(_AXIS_GRID))
_AXIS_GRID = np.rad2deg(_AXIS_GRID)


def rotation_for_axis(axis_deg: np.ndarray) -> np.ndarray:
    """Frontal rotation (deg) that puts the measured QRS axis at ``axis_deg``."""
    rot: np.ndarray = np.interp(axis_deg, _AXIS_GRID, _ROT_GRID)
    return rot


def transfer_matrices(jitter: np.ndarray, chest_gain: np.ndarray) -> np.ndarray:
    """Per-subject 8x3 lead-transfer matrices: Dower with placement/torso variation."""
    m = DOWER[None] * (1.0 + 0.07 * jitter) + 0.03 * np.roll(jitter, 1, axis=-1)
    m[:, 2:, :] *= chest_gain[:, None, None]
    return m


def project(dipole: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Dipole ``[N,3,T]`` through transfer ``[N,8,3]`` -> 12 leads ``[N,12,T]`` float32 (exact limb leads)."""
    eight = np.matmul(transfer.astype(np.float32), dipole.astype(np.float32, copy=False))
    return derive_12(eight, axis=1)
