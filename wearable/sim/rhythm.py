"""Rhythms: beat timing and per-record findings.

Beat times are generated per record as RR series:

* sinus family: mean RR from the heart rate, modulated by respiratory sinus arrhythmia (at the
  record's breathing rate) and Mayer waves (~0.1 Hz), plus a little white variability -- the
  bimodal HRV spectrum of McSharry et al. (IEEE TBME 2003);
* atrial fibrillation: independent, log-normally distributed RR with a coefficient of variation
  of 12-25 % (irregularly irregular), no P waves, fibrillatory waves of 4-9 Hz;
* PVCs: sinus rhythm with 1-3 premature ventricular beats, each with a coupling interval of
  55-70 % of the RR and a full compensatory pause (coupling + pause = 2 RR).

The RR series is rescaled so that the mean RR of the beats inside the record window equals the
requested heart rate (what a clinician measures over the strip).
"""

from __future__ import annotations

import numpy as np

RHYTHMS: tuple[str, ...] = (
    "sinus",
    "sinus_brady",
    "sinus_tachy",
    "af",
    "pvc",
    "long_qt",
    "st_elevation",
    "st_depression",
)

DEFAULT_MIX: dict[str, float] = {
    "sinus": 0.38,
    "sinus_brady": 0.08,
    "sinus_tachy": 0.08,
    "af": 0.14,
    "pvc": 0.12,
    "long_qt": 0.06,
    "st_elevation": 0.07,
    "st_depression": 0.07,
}

BEAT_NORMAL, BEAT_PVC = 0, 1
PRE_ROLL_S = 1.5  # beats start this long before the window so T waves and pulses run in


def parse_mix(spec: str | dict[str, float] | None) -> dict[str, float]:
    """``"sinus=0.5,af=0.5"`` or a single rhythm name -> normalised mix.  ValueError on bad input."""
    if spec is None:
        return dict(DEFAULT_MIX)
    if isinstance(spec, str):
        items: dict[str, float] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, _, w = part.partition("=")
            name = name.strip()
            try:
                items[name] = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"bad weight {w!r} for rhythm {name!r}") from None
        spec = items
    unknown = sorted(set(spec) - set(RHYTHMS))
    if unknown:
        raise ValueError(f"unknown rhythm {unknown[0]!r} (choose from {', '.join(RHYTHMS)})")
    total = float(sum(spec.values()))
    if not spec or total <= 0 or any(v < 0 for v in spec.values()):
        raise ValueError("rhythm mix needs non-negative weights with a positive sum")
    return {k: float(v) / total for k, v in spec.items()}


def beat_times(
    rng: np.random.Generator,
    rhythm: np.ndarray,
    hr: np.ndarray,
    rsa_amp: np.ndarray,
    lf_amp: np.ndarray,
    resp_hz: np.ndarray,
    duration_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """R-peak times ``[N, B]`` (s, may start before 0), RR preceding each beat, beat type, valid mask."""
    n = int(hr.shape[0])
    rr0 = 60.0 / hr
    min_rr = float(np.min(rr0)) * 0.5
    b = int(np.ceil((duration_s + PRE_ROLL_S + 1.0) / min_rr)) + 2
    k = np.arange(b)[None, :]
    t_approx = -PRE_ROLL_S + k * rr0[:, None]
    ph1, ph2 = rng.uniform(0, 2 * np.pi, (2, n, 1))
    mod = (
        rsa_amp[:, None] * np.sin(2 * np.pi * resp_hz[:, None] * t_approx + ph1)
        + lf_amp[:, None] * np.sin(2 * np.pi * 0.1 * t_approx + ph2)
        + 0.006 * rng.standard_normal((n, b))
    )
    rr = rr0[:, None] * (1.0 + mod)

    is_af = rhythm == "af"
    if is_af.any():
        cv = rng.uniform(0.12, 0.25, (int(is_af.sum()), 1))
        ln = rng.standard_normal((int(is_af.sum()), b)) * cv
        rr[is_af] = rr0[is_af, None] * np.exp(ln - cv**2 / 2.0)
    rr = np.maximum(rr, 0.28)

    btype = np.zeros((n, b), dtype=np.int8)
    is_pvc = np.flatnonzero(rhythm == "pvc")
    for i in is_pvc:  # few records, few beats: a short loop is clearer than masks here
        n_pvc = int(rng.integers(1, 4))
        first = int(np.ceil(PRE_ROLL_S / rr0[i])) + 1  # first beat inside the window (approx.)
        last = first + int(duration_s / rr0[i]) - 2
        cand = np.arange(first, max(first + 1, last))
        rng.shuffle(cand)
        chosen: list[int] = []
        for c in cand:
            if all(abs(c - o) >= 3 for o in chosen):
                chosen.append(int(c))
            if len(chosen) == n_pvc:
                break
        for beat in chosen:
            coupling = rng.uniform(0.55, 0.70) * rr0[i]
            if beat + 1 < b:
                rr[i, beat + 1] = 2.0 * rr0[i] - coupling  # compensatory pause after the PVC
            rr[i, beat] = coupling
            btype[i, beat] = BEAT_PVC

    start = -PRE_ROLL_S - rng.uniform(0.0, 1.0, n) * rr0
    for _ in range(3):  # rescale so the in-window mean RR is exactly 60/hr
        times = start[:, None] + np.cumsum(rr, axis=1) - rr[:, :1]
        inside = (times >= 0.0) & (times < duration_s)
        pair = inside[:, 1:] & inside[:, :-1]
        n_pairs = pair.sum(axis=1)
        mean_rr = np.where(
            n_pairs > 0, (np.diff(times, axis=1) * pair).sum(axis=1) / np.maximum(n_pairs, 1), rr0
        )
        rr *= (rr0 / mean_rr)[:, None]
    times = start[:, None] + np.cumsum(rr, axis=1) - rr[:, :1]
    valid = times < duration_s + 1.0
    return times, rr, btype, valid
