"""Preprocessing shared by training, evaluation and live inference, and the data sources.

Network inputs (all float32):

* ``ppg``  [N, 3, T]: the PPG band-passed 0.5-8 Hz (zero-phase offline, causal live), then
  z-scored per window, with its 1st and 2nd time derivative, each z-scored per window too
  (the derivatives carry the dicrotic notch / upstroke timing; unit scale keeps them usable).
* ``demo`` [N, 5] and ``demo_mask`` [N, 5] (1 = known): age/100, sex (F -1, M +1),
  (height_cm - 170)/10, (weight_kg - 75)/15, (BMI - 25)/5.  Unknown (NaN, or sex not 0/1)
  -> value 0 and mask 0.  BMI is computed from height and weight when both are known.
* ``x0``   [N, 8, T]: target = the 8 independent leads (I, II, V1..V6) in mV times
  ``ecg_scale`` (ModelConfig.ecg_scale, 2.0 by default: typical ECG std ~0.25 mV becomes
  ~0.5, the scale diffusion noise schedules are designed for; a power of two so that
  dividing back to mV is exact).  The network returns 12 leads in mV.

Opt-in training targets from the simulator's annotated R peaks (``r_peaks`` [N, W] sample
indices, -1 padded; built only when asked for, see :func:`prepare`):

* ``qrs_mask``    [N, T]: 1 within +-60 ms (``QRS_HALF_S``) of an annotated R peak, else 0
  (TrainConfig.w_qrs).
* ``rpeak_heat``  [N, T]: Gaussian bumps (std 20 ms, ``RPEAK_SIGMA_S``, peak 1, values in [0, 1],
  max where bumps overlap) at the annotated R peaks (TrainConfig.w_rpeak).

With ``ppg_onset=True`` the ``ppg`` input gains the pulse-onset channel [N, 4, T]
(:func:`engine.model.preprocess.onset_channel`; ModelConfig.ppg_onset_channel).

Sources: :class:`SimStream` (simulator on the fly, endless), :class:`ArrayStream` (arrays,
e.g. loaded from ``.npz`` with the simulator's keys), :func:`fixed_set` (a val/test set).
Train/val/test are subject-disjoint because they use disjoint simulator seeds
(:func:`split_seed`).  :func:`fake_synthesize` is a tiny stand-in with the simulator's dict
interface (Gaussian bumps), used by tests.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import torch

from engine.model.preprocess import event_train, gaussian_kernel, ppg_features
from p2es.errors import InputError, P2esError
from p2es.leads import derive_12, independent_of
from wearable.sim import synthesize
from wearable.sim.rates import DEFAULT_RATE_PROFILE, RATE_PROFILES

DEMO_FIELDS = ("age", "sex", "height", "weight", "bmi")
N_DEMO = len(DEMO_FIELDS)
PPG_CHANNELS = 3
# Keys of a raw record dict (simulator output / .npz).  Only "ppg" is mandatory for inference.
RAW_KEYS = (
    "ppg",
    "ppg_clean",
    "ecg",
    "fs",
    "subject",
    "age",
    "sex",
    "height_cm",
    "weight_kg",
    "rhythm",
    "r_peaks",
)
SPLIT_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000}
#: half-width (s) of the QRS region weighted by TrainConfig.w_qrs around each annotated R peak
QRS_HALF_S = 0.06
#: std (s) of the Gaussian bump at each annotated R peak in the R-peak heatmap target
RPEAK_SIGMA_S = 0.02


def demographics(
    age: npt.ArrayLike | None = None,
    sex: npt.ArrayLike | None = None,
    height_cm: npt.ArrayLike | None = None,
    weight_kg: npt.ArrayLike | None = None,
    bmi: npt.ArrayLike | None = None,
    *,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised demographics ``(values [N, 5], mask [N, 5])``; missing -> 0 with mask 0.

    Each argument is an array [N], a scalar, or None (unknown).  ``sex``: 0 = F, 1 = M
    (anything else = unknown).  ``bmi`` defaults to weight / (height/100)^2.
    """
    cols = [age, sex, height_cm, weight_kg, bmi]
    if n is None:
        n = max((np.size(c) for c in cols if c is not None), default=1)

    def col(v: npt.ArrayLike | None) -> np.ndarray:
        if v is None:
            return np.full(n, np.nan)
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        return np.broadcast_to(a, (n,)).copy() if a.size in (1, n) else _bad(a.size, n)

    age_, sex_, h, w, b = (col(c) for c in cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(np.isfinite(b), b, w / (h / 100.0) ** 2)
        sexv = np.where(sex_ == 1, 1.0, np.where(sex_ == 0, -1.0, np.nan))
        vals = np.stack([age_ / 100.0, sexv, (h - 170.0) / 10.0, (w - 75.0) / 15.0, (b - 25.0) / 5.0], axis=1)
    mask = np.isfinite(vals)
    return np.where(mask, vals, 0.0).astype(np.float32), mask.astype(np.float32)


def _bad(got: int, n: int) -> NoReturn:
    raise InputError(f"demographic column has {got} values for {n} records")


def ecg_target(ecg12: np.ndarray, ecg_scale: float) -> np.ndarray:
    """12-lead ECG [N, 12, T] in mV -> network target [N, 8, T] (independent leads x scale)."""
    return (independent_of(np.asarray(ecg12), axis=1) * ecg_scale).astype(np.float32)


def qrs_mask(r_peaks: np.ndarray, T: int, fs: float, half_s: float = QRS_HALF_S) -> np.ndarray:
    """Annotated R peaks [N, W] (-1 padded) -> [N, T] float32: 1 where a sample lies within
    ``round(half_s * fs)`` samples of an R peak, else 0."""
    h = int(round(half_s * fs))
    return event_train(r_peaks, T, np.ones(2 * h + 1))


def rpeak_heatmap(r_peaks: np.ndarray, T: int, fs: float, sigma_s: float = RPEAK_SIGMA_S) -> np.ndarray:
    """Annotated R peaks [N, W] (-1 padded) -> [N, T] float32 heatmap in [0, 1]: a Gaussian bump
    (std ``sigma_s``, peak 1) at each R peak, the max where bumps overlap."""
    return event_train(r_peaks, T, gaussian_kernel(sigma_s, fs))


def prepare(
    raw: dict[str, Any],
    ecg_scale: float = 2.0,
    *,
    ppg_onset: bool = False,
    qrs: bool = False,
    rpeak: bool = False,
    pat: bool = False,
) -> dict[str, torch.Tensor]:
    """Raw record dict (simulator / .npz keys) -> dict of tensors the engine consumes.

    Returns ``ppg`` [N,3,T], ``demo``/``demo_mask`` [N,5], and if the raw dict holds an ECG,
    ``x0`` [N,8,T] (scaled target) and ``ecg12`` [N,12,T] (mV); ``subject`` [N] if present.
    Opt-in (all off by default): ``ppg_onset`` -> ``ppg`` [N,4,T] with the pulse-onset channel;
    ``qrs`` -> ``qrs_mask`` [N,T], ``rpeak`` -> ``rpeak_heat`` [N,T] from ``raw["r_peaks"]``;
    ``pat`` -> ``pat`` [N] seconds from ``raw["pat_ms"]`` (the window's mean pulse arrival time
    of its normal beats; NaN where it has none).
    """
    if "ppg" not in raw:
        raise InputError("records have no 'ppg'")
    fs = float(np.asarray(raw.get("fs", 128.0)).reshape(-1)[0])
    ppg = np.asarray(raw["ppg"])
    out: dict[str, torch.Tensor] = {"ppg": torch.from_numpy(ppg_features(ppg, fs, onset=ppg_onset))}
    n = out["ppg"].shape[0]
    d, m = demographics(
        raw.get("age"), raw.get("sex"), raw.get("height_cm"), raw.get("weight_kg"), raw.get("bmi"), n=n
    )
    out["demo"], out["demo_mask"] = torch.from_numpy(d), torch.from_numpy(m)
    if raw.get("ecg") is not None:
        ecg = np.asarray(raw["ecg"], dtype=np.float32)
        if ecg.shape[0] != n or ecg.shape[1] != 12 or ecg.shape[-1] != ppg.shape[-1]:
            raise InputError(f"ECG shape {ecg.shape} does not match PPG {ppg.shape} (want [N,12,T])")
        out["x0"] = torch.from_numpy(ecg_target(ecg, ecg_scale))
        out["ecg12"] = torch.from_numpy(ecg)
    if raw.get("subject") is not None:
        out["subject"] = torch.as_tensor(np.asarray(raw["subject"]).astype(np.int64))
    if pat:
        if raw.get("pat_ms") is None:
            raise InputError("records have no 'pat_ms' (needed for the PAT target)")
        out["pat"] = torch.from_numpy(np.asarray(raw["pat_ms"], dtype=np.float32).reshape(n) / 1000.0)
    if qrs or rpeak:
        if raw.get("r_peaks") is None:
            raise InputError("records have no 'r_peaks' (needed for the QRS / R-peak targets)")
        rp = np.asarray(raw["r_peaks"]).reshape(n, -1)
        T = ppg.shape[-1]
        if qrs:
            out["qrs_mask"] = torch.from_numpy(qrs_mask(rp, T, fs))
        if rpeak:
            out["rpeak_heat"] = torch.from_numpy(rpeak_heatmap(rp, T, fs))
    return out


# ---------------------------------------------------------------------------------------
# raw sources
# ---------------------------------------------------------------------------------------


def split_seed(split: str, seed: int, chunk: int = 0) -> int:
    """Simulator seed of chunk ``chunk`` of a split: train/val/test never share a seed
    (so never a subject) as long as ``chunk < 100_000`` and ``seed < 100``."""
    if split not in SPLIT_BASE:
        raise P2esError(f"unknown split {split!r} (train, val, test)")
    return SPLIT_BASE[split] + 100_000 * int(seed) + int(chunk)


def get_synthesize(
    kind: str = "sim", rate_profile: str = DEFAULT_RATE_PROFILE
) -> Callable[..., dict[str, Any]]:
    """The record generator: the real simulator (``"sim"``) or the stand-in (``"fake"``).

    ``rate_profile`` is the simulator's heart-rate profile (``wearable.sim.rates``: ``"v1"``,
    the default, or ``"wide"``); the stand-in has the default one only."""
    if rate_profile not in RATE_PROFILES:
        raise P2esError(f"unknown simulator rate profile {rate_profile!r} ({', '.join(RATE_PROFILES)})")
    if kind == "fake":
        if rate_profile != DEFAULT_RATE_PROFILE:
            raise P2esError(f"the stand-in simulator ('fake') has no rate profile {rate_profile!r}")
        return fake_synthesize
    if rate_profile != DEFAULT_RATE_PROFILE:
        return functools.partial(synthesize, rate_profile=rate_profile)
    return synthesize


def _generator(source: str, rate_profile: str) -> Callable[..., dict[str, Any]]:
    """``get_synthesize`` for a source and profile; the default profile keeps the one-argument call."""
    if rate_profile == DEFAULT_RATE_PROFILE:
        return get_synthesize(source)
    return get_synthesize(source, rate_profile)


def load_npz(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Records from an ``.npz`` with the simulator's keys (``ppg`` mandatory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / format errors
        raise InputError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if "ppg" not in raw:
        raise InputError(f"{path} has no 'ppg' array (keys: {', '.join(sorted(raw)) or 'none'})")
    if raw["ppg"].ndim != 2:
        raise InputError(f"{path}: 'ppg' must be [N, T], got {raw['ppg'].shape}")
    return raw


def save_npz(path: str | os.PathLike[str], raw: dict[str, Any]) -> None:
    arrays = {k: np.asarray(v) for k, v in raw.items() if v is not None}
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: a key could be "allow_pickle"


def fixed_set(
    split: str,
    n: int,
    seed: int = 0,
    *,
    source: str = "sim",
    rate_profile: str = DEFAULT_RATE_PROFILE,
    **sim_kwargs: Any,
) -> dict[str, Any]:
    """A fixed val/test set of ``n`` records (raw dict) from the split's own seed
    (``rate_profile``: the simulator's heart-rate profile, see :func:`get_synthesize`)."""
    return _generator(source, rate_profile)(n, split_seed(split, seed, 0), **sim_kwargs)


class SimStream(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """Endless prepared training batches generated on the fly by the simulator.

    Batch ``b`` comes from simulator chunk ``b // per_chunk`` (seed ``split_seed(split, seed,
    chunk)``, ``chunk_records`` records, shuffled with the same seed) so the stream is a pure
    function of ``(seed, start_batch)``: a resumed run continues with exactly the batches it
    would have seen.  With DataLoader workers, worker ``w`` takes chunks ``w, w+W, ...``.
    ``rate_profile`` is the simulator's heart-rate profile (default ``"v1"``).
    ``prepare_kwargs`` go to :func:`prepare` (the opt-in ``ppg_onset`` / ``qrs`` / ``rpeak``).
    """

    def __init__(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        split: str = "train",
        source: str = "sim",
        chunk_records: int = 256,
        ecg_scale: float = 2.0,
        start_batch: int = 0,
        sim_kwargs: dict[str, Any] | None = None,
        rate_profile: str = DEFAULT_RATE_PROFILE,
        prepare_kwargs: dict[str, bool] | None = None,
    ):
        super().__init__()
        if rate_profile != DEFAULT_RATE_PROFILE:
            _generator(source, rate_profile)  # an unknown profile fails here, not in a worker
        if chunk_records < batch_size:
            chunk_records = batch_size
        self.batch_size, self.seed, self.split, self.source = batch_size, seed, split, source
        self.chunk_records, self.ecg_scale, self.start_batch = chunk_records, ecg_scale, start_batch
        self.sim_kwargs = dict(sim_kwargs or {})
        self.rate_profile = rate_profile
        self.prepare_kwargs = dict(prepare_kwargs or {})
        self.per_chunk = chunk_records // batch_size

    def chunk(self, i: int) -> dict[str, torch.Tensor]:
        seed = split_seed(self.split, self.seed, i)
        raw = _generator(self.source, self.rate_profile)(self.chunk_records, seed, **self.sim_kwargs)
        data = prepare(raw, self.ecg_scale, **self.prepare_kwargs)
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(self.chunk_records))
        return {k: v[perm] for k, v in data.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        c0, skip = divmod(self.start_batch, self.per_chunk)
        c = c0 + wid
        while True:
            data = self.chunk(c)
            first = skip if c == c0 else 0
            for j in range(first, self.per_chunk):
                sl = slice(j * self.batch_size, (j + 1) * self.batch_size)
                yield {k: v[sl] for k, v in data.items()}
            c += nw


class ArrayStream(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """Endless random batches (epoch permutations, seeded) from prepared tensors, e.g. an .npz."""

    def __init__(
        self, data: dict[str, torch.Tensor], batch_size: int, *, seed: int = 0, start_batch: int = 0
    ):
        super().__init__()
        self.data, self.batch_size, self.seed, self.start_batch = data, batch_size, seed, start_batch
        self.n = next(iter(data.values())).shape[0]
        if self.n < batch_size:
            raise P2esError(f"dataset has {self.n} windows, fewer than batch size {batch_size}")
        self.per_epoch = self.n // batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        e, j0 = divmod(self.start_batch, self.per_epoch)
        while True:
            perm = torch.from_numpy(np.random.default_rng([self.seed, e]).permutation(self.n))
            for j in range(j0, self.per_epoch):
                idx = perm[j * self.batch_size : (j + 1) * self.batch_size]
                yield {k: v[idx] for k, v in self.data.items()}
            e, j0 = e + 1, 0


# ---------------------------------------------------------------------------------------
# stand-in simulator (fast tests)
# ---------------------------------------------------------------------------------------

# amplitude (mV) of P, QRS(R), T waves on the 8 independent leads I, II, V1..V6
_P = np.array([0.08, 0.12, 0.05, 0.06, 0.07, 0.08, 0.08, 0.07])
_R = np.array([0.6, 1.0, -0.6, -0.4, 0.4, 1.1, 1.3, 1.0])
_T = np.array([0.2, 0.3, -0.1, 0.3, 0.45, 0.4, 0.3, 0.25])


def fake_synthesize(
    n_records: int,
    seed: int,
    *,
    duration_s: float = 8.0,
    fs: float = 128.0,
    n_subjects: int | None = None,
    rhythm_mix: object = None,  # accepted like the simulator's; the stand-in has sinus only
    hr_bpm: float | None = None,
    noise: float = 1.0,
) -> dict[str, Any]:
    """Gaussian-bump ECG/PPG with the simulator's dict interface.  Not physiology: only a
    learnable, demographics-dependent mapping PPG -> ECG for fast tests."""
    rng = np.random.default_rng(seed)
    T = int(round(duration_s * fs))
    n_subj = n_subjects or max(1, n_records // 4)
    s_age = rng.uniform(20, 85, n_subj)
    s_sex = rng.integers(0, 2, n_subj)
    s_h = rng.normal(170 + 8 * (s_sex - 0.5), 8, n_subj)
    s_w = rng.normal(75 + 8 * (s_sex - 0.5), 12, n_subj)
    s_gain = 1.0 + 0.3 * (s_sex - 0.5) - 0.004 * (s_age - 50)
    s_hr = rng.uniform(55, 95, n_subj) if hr_bpm is None else np.full(n_subj, float(hr_bpm))
    subject = rng.integers(0, n_subj, n_records)
    tt = np.arange(T) / fs
    ecg8 = np.zeros((n_records, 8, T))
    ppg_clean = np.zeros((n_records, T))
    max_beats = int(duration_s * 200 / 60) + 2
    r_peaks = np.full((n_records, max_beats), -1, dtype=np.int32)
    for i in range(n_records):
        s = subject[i]
        rr = 60.0 / s_hr[s]
        beats = np.arange(rng.uniform(0, rr), duration_s, rr)
        ptt = 0.18 + 0.002 * s_age[s]
        for j, b in enumerate(beats):
            ecg8[i] += s_gain[s] * (
                _P[:, None] * np.exp(-0.5 * ((tt - b + 0.16) / 0.025) ** 2)
                + _R[:, None] * np.exp(-0.5 * ((tt - b) / 0.012) ** 2)
                + _T[:, None] * np.exp(-0.5 * ((tt - b - 0.28) / 0.05) ** 2)
            )
            ppg_clean[i] += np.exp(-0.5 * ((tt - b - ptt) / 0.09) ** 2) + 0.3 * np.exp(
                -0.5 * ((tt - b - ptt - 0.3) / 0.07) ** 2
            )
            if j < max_beats:
                r_peaks[i, j] = int(round(b * fs))
    ppg = (
        ppg_clean
        + noise * 0.05 * rng.standard_normal((n_records, T))
        + 0.2 * np.sin(2 * math.pi * 0.2 * tt + rng.uniform(0, 6.3, (n_records, 1)))
    )
    ecg = derive_12(ecg8, axis=1)
    return {
        "ppg": ppg.astype(np.float32),
        "ppg_clean": ppg_clean.astype(np.float32),
        "ecg": ecg.astype(np.float32),
        "fs": float(fs),
        "subject": subject.astype(np.int64),
        "age": s_age[subject],
        "sex": s_sex[subject].astype(np.int64),
        "height_cm": s_h[subject],
        "weight_kg": s_w[subject],
        "rhythm": np.array(["sinus"] * n_records),
        "r_peaks": r_peaks,
        "pat_ms": (1000.0 * (0.18 + 0.002 * s_age[subject])).astype(np.float32),  # R -> pulse centre
    }
