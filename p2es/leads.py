"""Lead conventions shared by every package.

The 12 standard leads are stored in this order everywhere (files, tensors, InfluxDB fields)::

    I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6

Only eight are independent (I, II, V1..V6).  The four others follow *exactly* from
Einthoven's and Goldberger's laws::

    III = II - I      aVR = -(I + II)/2      aVL = I - II/2      aVF = II - I/2
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
INDEPENDENT: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}

# 12x8 matrix taking the independent leads (I, II, V1..V6) to the 12 leads.
DERIVE = np.zeros((12, 8), dtype=np.float64)
DERIVE[0, 0] = 1.0  # I
DERIVE[1, 1] = 1.0  # II
DERIVE[2, 0], DERIVE[2, 1] = -1.0, 1.0  # III = II - I
DERIVE[3, 0], DERIVE[3, 1] = -0.5, -0.5  # aVR = -(I + II) / 2
DERIVE[4, 0], DERIVE[4, 1] = 1.0, -0.5  # aVL = I - II / 2
DERIVE[5, 0], DERIVE[5, 1] = -0.5, 1.0  # aVF = II - I / 2
for _k in range(6):
    DERIVE[6 + _k, 2 + _k] = 1.0  # V1..V6


def derive_12(independent: np.ndarray, axis: int = -2) -> np.ndarray:
    """Expand eight independent leads (I, II, V1..V6 along ``axis``) to the 12 standard leads."""
    x = np.asarray(independent)
    if x.shape[axis] != 8:
        raise ValueError(f"expected 8 independent leads on axis {axis}, got {x.shape[axis]}")
    shape = list(x.shape)
    shape[axis] = 12
    out = np.empty(shape, dtype=np.result_type(x.dtype, np.float32))
    xv, ov = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    i, ii = xv[0], xv[1]
    ov[0] = i
    ov[1] = ii
    np.subtract(ii, i, out=ov[2])  # III = II - I
    np.multiply(np.add(i, ii, out=ov[3]), -0.5, out=ov[3])  # aVR = -(I + II) / 2
    np.subtract(i, ii * 0.5, out=ov[4])  # aVL = I - II / 2
    np.subtract(ii, i * 0.5, out=ov[5])  # aVF = II - I / 2
    ov[6:] = xv[2:]
    return out


def independent_of(ecg12: np.ndarray, axis: int = -2) -> np.ndarray:
    """Pick the eight independent leads (I, II, V1..V6) out of 12 standard leads."""
    idx = [LEAD_INDEX[n] for n in INDEPENDENT]
    return np.take(ecg12, idx, axis=axis)


def einthoven_residual(ecg12: np.ndarray, axis: int = -2) -> float:
    """Largest absolute violation of the four limb-lead identities (same unit as the input)."""
    x = np.moveaxis(np.asarray(ecg12, dtype=np.float64), axis, -1)
    i, ii, iii, avr, avl, avf = (x[..., k] for k in range(6))
    res = [
        iii - (ii - i),
        avr + (i + ii) / 2,
        avl - (i - ii / 2),
        avf - (ii - i / 2),
    ]
    return float(max(np.max(np.abs(r)) if r.size else 0.0 for r in res))


# Contiguous lead groups used for ST monitoring (the usual territories of a 12-lead read-out).
ST_GROUPS: dict[str, tuple[str, ...]] = {
    "septal": ("V1", "V2"),
    "anterior": ("V3", "V4"),
    "lateral": ("I", "aVL", "V5", "V6"),
    "inferior": ("II", "III", "aVF"),
}


def st_group_deviation(st_mv: npt.ArrayLike) -> dict[str, float]:
    """Signed ST deviation per lead group, requiring agreement of two leads of the group.

    ``st_mv``: ST level per lead (float[12] in :data:`LEADS` order, mV, NaN = unmeasured).
    Per group: ``hi`` = the 2nd-highest level (>= it in at least two leads), ``lo`` = the
    2nd-lowest; the group value is ``hi`` if ``|hi| >= |lo|`` else ``lo``.  So a group reads
    +0.15 mV only when two of its leads are elevated by at least 0.15 mV (the "two contiguous
    leads" of the STEMI criteria), and one noisy lead cannot move it.  NaN when fewer than two
    of the group's leads were measured.
    """
    st = np.asarray(st_mv, dtype=np.float64).reshape(-1)
    out: dict[str, float] = {}
    for g, names in ST_GROUPS.items():
        v = np.sort(st[[LEAD_INDEX[n] for n in names]])
        v = v[np.isfinite(v)]
        if v.size < 2:
            out[g] = float("nan")
            continue
        hi, lo = float(v[-2]), float(v[1])
        out[g] = hi if abs(hi) >= abs(lo) else lo
    return out
