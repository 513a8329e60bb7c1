"""Paired PPG + 12-lead ECG synthesis, vectorised over records.

``synthesize`` returns the arrays of the ``.npz`` contract (README, "Simulator output"):
the ECG comes from a 3-D heart dipole (``heart``), the PPG from the *same* beats: each pulse
follows its R peak by the subject's pulse arrival time (pre-ejection period + pulse transit time
from height and pulse-wave velocity) with beat-to-beat variation, its amplitude set by the
preceding RR (Frank-Starling; weak or absent after a premature beat) and breathing.  Noise is
added to copies of both signals; the clean ECG target is always kept.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter

from p2es.leads import DERIVE, derive_12
from wearable.sim import heart, rates
from wearable.sim import rhythm as rh
from wearable.sim.demographics import Subjects, sample_subjects
from wearable.sim.kernels import Canvas, colored_noise

SUBJECT_ID_STRIDE = 1_000_000  # subject id = seed * stride + index: disjoint across seeds
CHUNK = 256  # records rendered at once
FRONTEND_ON = 0.5  # default fraction of records whose PPG passes a random sensor front-end

# PPG systolic wave: (x^k) exp(k(1-x)), x = tau / t_peak.  Its tangent-defined foot lies at
# (1 - 1/sqrt(k))^2 * t_peak after the pulse onset (max-slope tangent meets the baseline).


def _rhythm_hr(
    rng: np.random.Generator, rhythm: np.ndarray, hr_rest: np.ndarray, rate_profile: str = "v1"
) -> np.ndarray:
    """Heart rate of each record; the rate profile sets the ranges, never the draws' order."""
    n = int(rhythm.shape[0])
    ranges = rates.HR_RANGES[rate_profile]
    base = hr_rest + rng.normal(0.0, 4.0, n)
    hr = np.clip(base, 60.0, 99.0)
    hr = np.where(rhythm == "sinus_brady", rng.uniform(*ranges["sinus_brady"], n), hr)
    hr = np.where(rhythm == "sinus_tachy", rng.uniform(*ranges["sinus_tachy"], n), hr)
    hr = np.where(rhythm == "af", rng.uniform(*ranges["af"], n), hr)
    hr = np.where(np.isin(rhythm, ["pvc", "long_qt"]), np.clip(base, 55.0, 95.0), hr)
    hr = np.where(np.isin(rhythm, ["st_elevation", "st_depression"]), np.clip(base, 55.0, 105.0), hr)
    return hr


def synthesize(
    n_records: int,
    seed: int,
    *,
    duration_s: float = 8.0,
    fs: float = 128.0,
    n_subjects: int | None = None,
    rhythm_mix: str | dict[str, float] | None = None,
    hr_bpm: float | np.ndarray | None = None,
    noise: float = 1.0,
    noisy_ecg: bool = True,
    subjects: Subjects | None = None,
    ppg_frontend: float = FRONTEND_ON,
    rate_profile: str = rates.DEFAULT_RATE_PROFILE,
) -> dict[str, np.ndarray]:
    """Generate ``n_records`` paired records.  Same arguments -> the same arrays.

    Subjects are drawn from ``seed`` (ids ``seed * 1_000_000 + i``), so different seeds give
    disjoint subjects: use one seed per split for subject-disjoint train/val/test sets.
    ``hr_bpm`` forces the heart rate (sinus-family labels then follow the rate);
    ``noise`` scales all noise (0 = clean signals); ``subjects`` overrides the drawn subjects
    (one per record) for controlled experiments; ``ppg_frontend`` is the fraction of records
    whose PPG passes a random sensor front-end (AC coupling, low-pass, ADC clipping).
    ``rate_profile`` picks the heart-rate ranges and rate laws (``wearable.sim.rates``): ``"v1"``
    (default, unchanged) or ``"wide"`` (sinus 35-180 bpm, AF 50-170 bpm, rate-adapted QT, PR,
    HRV and pulse shape).
    """
    rates.check_profile(rate_profile)
    if n_records < 1:
        raise ValueError("need at least one record")
    if not (duration_s > 0):
        raise ValueError(f"duration must be positive, got {duration_s}")
    if fs < 50.0:
        raise ValueError(f"fs must be at least 50 Hz, got {fs}")
    if noise < 0:
        raise ValueError("noise must be >= 0")
    if not 0.0 <= ppg_frontend <= 1.0:
        raise ValueError("ppg_frontend must be within 0-1")
    mix = rh.parse_mix(rhythm_mix)
    n = int(n_records)
    t_len = int(round(duration_s * fs))
    if t_len < 2:
        raise ValueError(f"duration {duration_s} s at {fs} Hz gives fewer than 2 samples")
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x9E3779B1])
    ss_subj, ss_assign = ss.spawn(2)
    rng_subj, rng_assign = np.random.default_rng(ss_subj), np.random.default_rng(ss_assign)

    if subjects is None:
        s_count = int(n_subjects) if n_subjects else max(1, int(np.ceil(n / 4)))
        if s_count < 1:
            raise ValueError("need at least one subject")
        pool = sample_subjects(rng_subj, s_count)
        subj_idx = rng_assign.permutation(np.arange(n) % s_count)
    else:
        pool = subjects
        subj_idx = np.arange(n)
        if subjects.age.shape[0] != n:
            raise ValueError("subjects must have one entry per record")
    if hr_bpm is not None:
        hr_all = np.broadcast_to(np.asarray(hr_bpm, dtype=np.float64), (n,))
        if np.any(hr_all < 20) or np.any(hr_all > 250):
            raise ValueError("hr_bpm must be within 20-250")
    else:
        hr_all = None

    # Render in chunks: small working sets keep the rate high, and each chunk has its own
    # random stream, so results depend only on (seed, arguments).
    parts = []
    for k, start in enumerate(range(0, n, CHUNK)):
        sel = slice(start, min(n, start + CHUNK))
        rng_rec = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9E3779B1, k, 1])
        rng_noise = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x9E3779B1, k, 2])
        parts.append(
            _render(
                pool.take(subj_idx[sel]),
                subj_idx[sel],
                mix,
                rng_rec,
                rng_noise,
                t_len,
                duration_s,
                fs,
                None if hr_all is None else hr_all[sel],
                noise,
                noisy_ecg,
                ppg_frontend,
                rate_profile,
            )
        )
    out = _concat(parts)
    out["subject"] = (int(seed) * SUBJECT_ID_STRIDE + subj_idx).astype(np.int64)
    out["fs"] = np.float64(fs)  # type: ignore[assignment]  # a numpy scalar among the arrays (np.load returns it as a 0-d array)
    return out


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    out = {}
    for key in parts[0]:
        arrs = [p[key] for p in parts]
        if key in ("r_peaks", "beat_type"):
            width = max(a.shape[1] for a in arrs)
            arrs = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in arrs]
        out[key] = np.concatenate(arrs, axis=0)
    return out


def _render(
    subj: Subjects,
    subj_idx: np.ndarray,
    mix: dict[str, float],
    rng_rec: np.random.Generator,
    rng_noise: np.random.Generator,
    t_len: int,
    duration_s: float,
    fs: float,
    hr_forced: np.ndarray | None,
    noise: float,
    noisy_ecg: bool,
    ppg_frontend: float = 0.0,
    rate_profile: str = rates.DEFAULT_RATE_PROFILE,
) -> dict[str, np.ndarray]:
    """Render one chunk of records (all per-record randomness comes from ``rng_rec``/``rng_noise``)."""
    n = int(subj.age.shape[0])
    names = list(mix)
    rhythm = np.array(names, dtype="U16")[rng_rec.choice(len(names), size=n, p=[mix[k] for k in names])]
    hr = _rhythm_hr(rng_rec, rhythm, subj.hr_rest, rate_profile)
    wide = rate_profile == "wide"  # "v1": none of the `if wide` branches below runs
    if hr_forced is not None:
        hr = np.array(hr_forced, dtype=np.float64)
        sinus_family = np.isin(rhythm, ["sinus", "sinus_brady", "sinus_tachy"])
        relabel = np.where(hr < 60, "sinus_brady", np.where(hr > 100, "sinus_tachy", "sinus"))
        rhythm = np.where(sinus_family, relabel, rhythm).astype("U16")
    resp_hz = rng_rec.uniform(0.2, 0.33, n)
    resp_ph = rng_rec.uniform(0.0, 2 * np.pi, n)

    rsa_amp, lf_amp = subj.rsa_amp, subj.lf_amp
    if wide:  # vagal withdrawal: less respiratory / Mayer-wave RR modulation at fast rates
        rsa_amp, lf_amp = rsa_amp * rates.hrv_scale(hr), lf_amp * rates.hrv_scale(hr)
    times, rr, btype, valid = rh.beat_times(rng_rec, rhythm, hr, rsa_amp, lf_amp, resp_hz, duration_s)
    b = times.shape[1]
    rr_prev = rr  # rr[:, k] is the interval that ends at beat k

    def resp_at(t: np.ndarray) -> np.ndarray:
        """Respiration phase signal (-1..1) of each record at times ``t`` [n, b] (s)."""
        phase: np.ndarray = np.sin(2 * np.pi * resp_hz[:, None] * t + resp_ph[:, None])
        return phase

    # ---- intervals per beat ----------------------------------------------------------------
    qtc = subj.qtc_s.copy()
    long_qt = rhythm == "long_qt"
    qtc[long_qt] = rng_rec.uniform(0.48, 0.56, int(long_qt.sum()))
    qrs = subj.qrs_s[:, None] * (1.0 + 0.02 * rng_rec.standard_normal((n, b)))
    if wide:  # Fridericia up to 100 bpm, steepening to Bazett above; PR shortening levels off
        qt = qtc[:, None] * rates.qt_rr_factor_wide(rr_prev)
        pr = rates.pr_wide(subj.pr_s, subj.p_dur_s, hr)[:, None]
    else:
        qt = qtc[:, None] * np.cbrt(np.clip(rr_prev, 0.3, 2.0))  # Fridericia
        pr = subj.pr_s[:, None] - 0.0008 * (hr[:, None] - 70.0)  # slight shortening with rate
    pr = np.broadcast_to(np.clip(pr, 0.10, 0.24), (n, b))

    # ---- dipole orientation and gains per record --------------------------------------------
    axis = subj.axis_deg + rng_rec.normal(0.0, 3.0, n)
    rot = heart.rot_frontal(heart.rotation_for_axis(axis)) @ heart.rot_horizontal(subj.horiz_deg)
    gain = subj.qrs_gain * np.exp(rng_rec.normal(0.0, 0.05, n))
    vec = {w: np.einsum("nij,j->ni", rot, heart.BASE[w]) for w in heart.BASE}
    beat_gain = 1.0 + 0.05 * resp_at(times) + 0.02 * rng_rec.standard_normal((n, b))

    canvas = Canvas(n, 3, t_len, fs)
    normal = valid & (btype == rh.BEAT_NORMAL)
    pvc = valid & (btype == rh.BEAT_PVC)
    rec_n, beat_n = np.nonzero(normal)
    tn, qn, qtn, gn = times[rec_n, beat_n], qrs[rec_n, beat_n], qt[rec_n, beat_n], beat_gain[rec_n, beat_n]
    g_rec = gain[rec_n] * gn

    # P waves (absent in AF)
    has_p = rhythm[rec_n] != "af"
    pr_, pd_ = pr[rec_n, beat_n][has_p], subj.p_dur_s[rec_n][has_p]
    p_on = tn[has_p] - qn[has_p] / 2.0 - pr_
    sig_p = pd_ / 4.0
    canvas.add(
        rec_n[has_p],
        p_on + 2.0 * sig_p,
        sig_p,
        sig_p,
        vec["P"][rec_n[has_p]] * subj.p_gain[rec_n[has_p], None],
    )
    # QRS
    for name, cf, sf in (
        ("Q", heart.Q_C, heart.Q_S),
        ("R", heart.R_C, heart.R_S),
        ("S", heart.S_C, heart.S_S),
    ):
        canvas.add(rec_n, tn + cf * qn, sf * qn, sf * qn, vec[name][rec_n] * g_rec[:, None])
    # T wave: end (tangent) = QRS onset + QT
    scale = qtn / 0.4
    sd, su = heart.T_SIG_DOWN * scale, heart.T_SIG_UP * scale
    t_amp = subj.t_gain[rec_n] * np.where(long_qt[rec_n], 0.75, 1.0)
    t_end = tn - qn / 2.0 + qtn
    t_c = t_end - 2.0 * sd
    canvas.add(rec_n, t_c, su, sd, vec["T"][rec_n] * (t_amp * gn)[:, None])

    # ST deviation (injury current) for ST records, in the territory's lead group
    st_territory = np.full(n, "none", dtype="U8")
    st_mv = np.zeros(n)
    transfer = heart.transfer_matrices(subj.transfer_jitter, subj.chest_gain)
    transfer = transfer * np.exp(rng_rec.normal(0.0, 0.02, (n, 8, 1)))  # per-record placement
    is_st = np.isin(rhythm, ["st_elevation", "st_depression"])
    if is_st.any():
        terr_names = np.array(list(heart.ST_TERRITORY))
        st_territory[is_st] = terr_names[rng_rec.integers(0, 3, int(is_st.sum()))]
        elev = rhythm == "st_elevation"
        st_mv[elev] = rng_rec.uniform(0.15, 0.45, int(elev.sum()))
        dep = rhythm == "st_depression"
        st_mv[dep] = -rng_rec.uniform(0.10, 0.30, int(dep.sum()))
        st_vec = np.zeros((n, 3))
        for name, v in heart.ST_TERRITORY.items():
            sel = st_territory == name
            if not sel.any():
                continue
            lead_gain = (DERIVE @ transfer[sel] @ v)[:, heart.ST_LEADS[name]]  # [n_sel, k]
            st_vec[sel] = (
                v[None, :]
                * (np.abs(st_mv[sel]) / lead_gain.max(axis=1))[:, None]
                * np.sign(st_mv[sel])[:, None]
            )
        sel_b = is_st[rec_n]
        j_pt = tn[sel_b] + qn[sel_b] / 2.0
        centre = (j_pt + t_c[sel_b]) / 2.0
        half = (t_c[sel_b] - j_pt) / 2.0 + 0.02
        canvas.add(rec_n[sel_b], centre, half, half, st_vec[rec_n[sel_b]], power=6.0, reach=1.6)

    # PVCs: wide bizarre QRS from an ectopic focus, discordant T, no P
    rec_p, beat_p = np.nonzero(pvc)
    if rec_p.size:
        tp = times[rec_p, beat_p]
        w = rng_rec.uniform(0.13, 0.18, rec_p.size)
        d1 = rng_rec.standard_normal((rec_p.size, 3))
        d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
        d2 = d1 + 0.8 * rng_rec.standard_normal((rec_p.size, 3))
        d2 /= np.linalg.norm(d2, axis=1, keepdims=True)
        amp = rng_rec.uniform(1.4, 2.4, rec_p.size)[:, None] * gain[rec_p, None]
        canvas.add(rec_p, tp - 0.2 * w, 0.15 * w, 0.15 * w, d1 * amp)
        canvas.add(rec_p, tp + 0.2 * w, 0.15 * w, 0.15 * w, d2 * amp * 0.6)
        qt_p = qt[rec_p, beat_p] + 0.04
        sd_p = heart.T_SIG_DOWN * qt_p / 0.4 * 1.2
        t_end_p = tp - w / 2.0 + qt_p
        canvas.add(rec_p, t_end_p - 2 * sd_p, sd_p * 1.8, sd_p, -(d1 + 0.6 * d2) * amp * 0.3)

    dipole = canvas.render()
    # AF fibrillatory waves (4-9 Hz, frequency- and amplitude-modulated), atrial direction
    is_af = rhythm == "af"
    if is_af.any():
        k = int(is_af.sum())
        tt = np.arange(t_len) / fs
        f0 = rng_rec.uniform(4.5, 8.5, (k, 1))
        fm = 1.0 + 0.08 * np.sin(2 * np.pi * 0.15 * tt + rng_rec.uniform(0, 2 * np.pi, (k, 1)))
        phase = 2 * np.pi * np.cumsum(f0 * fm, axis=1) / fs + rng_rec.uniform(0, 2 * np.pi, (k, 1))
        am = rng_rec.uniform(0.03, 0.12, (k, 1)) * (
            1.0 + 0.4 * np.sin(2 * np.pi * 0.3 * tt + rng_rec.uniform(0, 6.3, (k, 1)))
        )
        fw = am * (np.sin(phase) + 0.35 * np.sin(2 * phase + 0.7))
        dipole[is_af] += fw[:, None, :] * heart.AF_DIR[None, :, None]

    ecg = heart.project(dipole, transfer)  # [N, 12, T], mV, limb leads exact

    # ---- PPG from the same beats ------------------------------------------------------------
    hr_factor = 0.0004 * (hr - 70.0)  # PEP shortens with rate (s per bpm)
    path_m = 0.55 * subj.height_cm / 100.0  # heart -> finger arterial path, ~0.55 x height
    # PAT = PEP + PTT, kept within the 150-400 ms that finger PAT spans in adults at rest/stress
    pat0 = np.clip(np.clip(subj.pep_s - hr_factor, 0.06, 0.14) + path_m / subj.pwv_ms, 0.16, 0.39)
    pat_beat = (
        pat0[:, None]
        + 0.004 * rng_rec.standard_normal((n, b))
        + 0.005 * resp_at(times)
        + np.where(btype == rh.BEAT_PVC, rng_rec.uniform(0.03, 0.06, (n, b)), 0.0)
    )
    rr0 = 60.0 / hr
    amp = subj.ppg_amp[:, None] * (1.0 + subj.ppg_rr_gain[:, None] * (rr_prev - rr0[:, None]) / rr0[:, None])
    amp *= 1.0 + 0.08 * resp_at(times)  # respiration-induced amplitude variation
    amp = np.where(btype == rh.BEAT_PVC, amp * rng_rec.uniform(0.0, 0.25, (n, b)), amp)
    amp = np.clip(amp, 0.0, None)
    tpk = subj.ppg_tpeak_s[:, None] * np.ones((1, b))
    dt_dia = subj.ppg_dt_dia_s[:, None] * np.ones((1, b))
    dia_width = subj.ppg_dia_width_s[:, None] * np.ones((1, b))
    dia_ratio = subj.ppg_dia_ratio[:, None] * np.ones((1, b))
    if wide:  # the pulse's time course contracts with the RR, as ejection time does
        sys_scale, dia_scale, dia_amp = rates.pulse_scales(rr_prev)
        tpk, dt_dia, dia_width = tpk * sys_scale, dt_dia * dia_scale, dia_width * dia_scale
        dia_ratio = dia_ratio * dia_amp
    kk = subj.ppg_k[:, None] * np.ones((1, b))
    foot_off = (1.0 - 1.0 / np.sqrt(kk)) ** 2 * tpk  # onset -> tangent foot
    onset = times + pat_beat - foot_off

    rec_q, beat_q = np.nonzero(valid)
    w_len = int(np.ceil(1.2 * fs))
    tau = (np.arange(w_len) / fs)[None, :]
    start_idx = np.ceil(onset[rec_q, beat_q] * fs).astype(np.int64)
    tau = start_idx[:, None] / fs - onset[rec_q, beat_q][:, None] + tau  # exact onset offset
    x = np.maximum(tau / tpk[rec_q, beat_q][:, None], 0.0)
    k_q = kk[rec_q, beat_q][:, None]
    sys_w = x**k_q * np.exp(k_q * (1.0 - x))
    tp_q = tpk[rec_q, beat_q][:, None]
    dia_c = tp_q + dt_dia[rec_q, beat_q][:, None]
    dia_w = dia_width[rec_q, beat_q][:, None]
    dia = dia_ratio[rec_q, beat_q][:, None] * np.exp(-0.5 * ((tau - dia_c) / dia_w) ** 2)
    dia *= np.clip(tau / tp_q, 0.0, 1.0)  # the reflected wave cannot precede the upstroke
    taper = np.clip((1.2 - tau) / 0.25, 0.0, 1.0)  # smooth end of the evaluation window
    pulse = (sys_w + dia) * taper
    ppg_canvas = Canvas(n, 1, t_len, fs)
    ppg_canvas.add_shape(rec_q, start_idx, pulse, amp[rec_q, beat_q][:, None])
    ppg_clean = ppg_canvas.render()[:, 0, :]
    tt = np.arange(t_len) / fs
    ppg_clean += (
        0.12 * subj.ppg_amp[:, None] * np.sin(2 * np.pi * resp_hz[:, None] * tt + resp_ph[:, None] + 1.2)
    )

    # ---- noise ------------------------------------------------------------------------------
    if noise > 0:
        ppg = ppg_clean + noise * _ppg_noise(rng_noise, n, t_len, fs, subj.ppg_amp)
        ecg_noisy = ecg + noise * _ecg_noise(rng_noise, n, t_len, fs, resp_hz, resp_ph) if noisy_ecg else None
        if ppg_frontend > 0:
            ppg = _ppg_frontend(rng_noise, ppg, fs, ppg_frontend)
    else:
        ppg = ppg_clean.copy()
        ecg_noisy = ecg.copy() if noisy_ecg else None

    # ---- ground truth in record time ----------------------------------------------------------
    r_idx = np.rint(times * fs).astype(np.int64)
    in_win = valid & (r_idx >= 0) & (r_idx < t_len)
    counts = in_win.sum(axis=1)
    width = max(1, int(counts.max()))
    r_peaks = np.full((n, width), -1, dtype=np.int32)
    beat_type = np.full((n, width), -1, dtype=np.int8)
    order = np.argsort(~in_win, axis=1, kind="stable")[:, :width]
    take = np.take_along_axis(in_win, order, axis=1)
    r_peaks[take] = np.take_along_axis(r_idx, order, axis=1)[take]
    beat_type[take] = np.take_along_axis(btype, order, axis=1)[take]
    pat_win = np.where(in_win & (btype == rh.BEAT_NORMAL), pat_beat, np.nan)

    out: dict[str, np.ndarray] = {
        "ppg": ppg.astype(np.float32),
        "ecg": ecg.astype(np.float32),
        "age": subj.age.astype(np.float32),
        "sex": subj.sex.astype(np.int8),
        "height_cm": subj.height_cm.astype(np.float32),
        "weight_kg": subj.weight_kg.astype(np.float32),
        "rhythm": rhythm.astype("U16"),
        "r_peaks": r_peaks,
        "beat_type": beat_type,
        "ppg_clean": ppg_clean.astype(np.float32),
        "hr_bpm": hr.astype(np.float32),
        "pr_ms": np.where(rhythm == "af", np.nan, 1e3 * np.median(pr, axis=1)).astype(np.float32),
        "qrs_ms": (1e3 * subj.qrs_s).astype(np.float32),
        "qtc_ms": (1e3 * qtc).astype(np.float32),
        "axis_deg": axis.astype(np.float32),
        "pat_ms": (1e3 * np.nanmean(pat_win, axis=1)).astype(np.float32),
        "resp_hz": resp_hz.astype(np.float32),
        "st_territory": st_territory,
        "st_mv": st_mv.astype(np.float32),
    }
    if ecg_noisy is not None:
        out["ecg_noisy"] = ecg_noisy.astype(np.float32)
    return out


def _ecg_noise(
    rng: np.random.Generator, n: int, t: int, fs: float, resp_hz: np.ndarray, resp_ph: np.ndarray
) -> np.ndarray:
    """Electrode-level noise -> 12 leads (exact limb identities kept).

    Nine electrodes (RA, LA, LL, V1..V6) each get baseline wander (< 0.5 Hz, plus a breathing
    component), EMG (band-limited 20 Hz - Nyquist), mains interference (50 or 60 Hz through
    unequal electrode impedances) and, sometimes, an electrode-motion transient.  Leads are
    then formed as the ECG amplifier does: I = LA - RA, II = LL - RA, Vi = Vi - WCT.
    """
    f = np.fft.rfftfreq(t, 1.0 / fs)
    bw_shape = 1.0 / (1.0 + (f / 0.25) ** 2)
    bw_shape[0] = 0.0
    emg_shape = ((f > 20.0) / (1.0 + (f / 60.0) ** 4)).astype(np.float64)
    bw_rms = rng.uniform(0.02, 0.15, (n, 1, 1))
    emg_rms = rng.uniform(0.002, 0.025, (n, 1, 1))
    bw_shape = bw_shape / np.sqrt(np.mean(bw_shape**2) + 1e-12)
    emg_shape = emg_shape / np.sqrt(np.mean(emg_shape**2) + 1e-12)
    spec = np.sqrt((bw_rms * bw_shape) ** 2 + (emg_rms * emg_shape) ** 2)  # [n,1,F]
    e = colored_noise(rng, (n, 9, t), fs, spec)
    e *= np.sqrt(np.mean(spec**2, axis=-1, keepdims=True)).astype(np.float32)
    tt = (np.arange(t) / fs).astype(np.float32)
    breath = np.sin(2 * np.pi * resp_hz[:, None] * tt + resp_ph[:, None]).astype(np.float32)  # [n, T]
    e += (rng.uniform(0.02, 0.10, (n, 1, 1)) * rng.uniform(-1.0, 1.0, (n, 9, 1))).astype(np.float32) * breath[
        :, None, :
    ]
    mains = np.where(rng.random(n) < 0.5, 50.0, 60.0)
    for hz in (50.0, 60.0):  # a*sin(wt+phi) = a*cos(phi)*sin(wt) + a*sin(phi)*cos(wt)
        sel = np.flatnonzero((mains == hz) & (hz < 0.45 * fs))
        if sel.size == 0:
            continue
        a = rng.uniform(0.0, 0.03, (sel.size, 1, 1)) * rng.uniform(0.0, 1.0, (sel.size, 9, 1))
        phi = rng.uniform(0, 2 * np.pi, (sel.size, 9, 1))
        w = 2 * np.pi * hz * tt
        e[sel] += (a * np.cos(phi)).astype(np.float32) * np.sin(w) + (a * np.sin(phi)).astype(
            np.float32
        ) * np.cos(w)
    moving = np.flatnonzero(rng.random(n) < 0.15)
    if moving.size:
        el = rng.integers(0, 9, moving.size)
        t0 = rng.uniform(0.0, t / fs, moving.size)
        step = rng.uniform(-0.6, 0.6, moving.size)
        decay = np.exp(-np.clip(tt[None, :] - t0[:, None], 0.0, None) / 0.4) * (tt[None, :] >= t0[:, None])
        e[moving, el, :] += (step[:, None] * decay).astype(np.float32)
    ra, la, ll, v = e[:, 0], e[:, 1], e[:, 2], e[:, 3:]
    wct = (ra + la + ll) / 3.0
    eight = np.concatenate([(la - ra)[:, None], (ll - ra)[:, None], v - wct[:, None, :]], axis=1)
    return derive_12(eight, axis=1)


def _ppg_noise(rng: np.random.Generator, n: int, t: int, fs: float, amp: np.ndarray) -> np.ndarray:
    """Wearable PPG noise: sensor noise, slow baseline drift, and motion-artefact bursts."""
    f = np.fft.rfftfreq(t, 1.0 / fs)
    drift = 1.0 / (1.0 + (f / 0.1) ** 2)
    drift[0] = 0.0
    out = colored_noise(rng, (n, t), fs, drift) * (amp * rng.uniform(0.05, 0.3, n))[:, None]
    out += rng.standard_normal((n, t), dtype=np.float32) * (amp * rng.uniform(0.005, 0.04, n))[:, None]
    moving = np.flatnonzero(rng.random(n) < 0.25)
    if moving.size:
        band = ((f > 0.3) & (f < 4.0)).astype(np.float64)
        burst = colored_noise(rng, (moving.size, t), fs, band)
        tt = np.arange(t) / fs
        c = rng.uniform(0.0, t / fs, moving.size)[:, None]
        d = rng.uniform(0.5, 2.5, moving.size)[:, None]
        env = np.clip(1.0 - np.abs(tt[None, :] - c) / d, 0.0, None) ** 2
        out[moving] += burst * env * (amp[moving] * rng.uniform(0.3, 2.0, moving.size))[:, None]
    return out


# Front-ends of real PPG sensors differ: many are AC-coupled (a hardware high-pass with a time
# constant of ~0.1-2 s that turns the pulse into a sharp peak with an undershoot, e.g. the
# common "Pulse Sensor" and heartpy's recordings), low-pass filter at 3-15 Hz, and saturate
# the ADC on strong pulses.  FRONTEND_ON is the default fraction of records with such a front-end.
def _ppg_frontend(rng: np.random.Generator, x: np.ndarray, fs: float, fraction: float) -> np.ndarray:
    """Apply random device front-ends (AC coupling, low-pass, ADC clipping) to some records."""
    n = int(x.shape[0])
    out = x.copy()
    on = rng.random(n) < fraction
    hp_hz = np.array([0.3, 0.7, 1.2, 2.0])  # AC-coupling corner frequencies (first order)
    hp = rng.integers(0, hp_hz.size, n)
    for j, fc in enumerate(hp_hz):
        sel = np.flatnonzero(on & (hp == j))
        if sel.size:
            b, a = butter(1, fc, btype="high", fs=fs)
            # start the causal filter in its steady state for the record's first value
            pad = int(3 * fs / fc)
            seg = np.concatenate([np.repeat(out[sel, :1], pad, axis=1), out[sel]], axis=1)
            out[sel] = lfilter(b, a, seg, axis=1)[:, pad:]
    lp = on & (rng.random(n) < 0.5)
    if lp.any():
        b, a = butter(2, min(rng.uniform(3.0, 15.0), 0.45 * fs), btype="low", fs=fs)
        out[lp] = lfilter(b, a, out[lp], axis=1)
    clip = np.flatnonzero(on & (rng.random(n) < 0.4))
    if clip.size:  # saturate the top (and sometimes the bottom) 5-30 % of the pulse range
        lo, hi = np.percentile(out[clip], [2, 98], axis=1)
        top = hi - rng.uniform(0.05, 0.3, clip.size) * (hi - lo)
        bottom = np.where(rng.random(clip.size) < 0.3, lo + 0.1 * (hi - lo), -np.inf)
        out[clip] = np.clip(out[clip], bottom[:, None], top[:, None])
    return out
