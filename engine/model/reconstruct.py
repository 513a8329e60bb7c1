"""Offline reconstruction: a PPG recording of any length and sampling rate -> 12-lead ECG (mV).

:func:`reconstruct` does, in order:

1. **Validate** the input: 1-D, not empty, not all NaN, ``fs`` finite and within
   25-2000 Hz (``InputError`` with one line otherwise; +-inf counts as NaN).
2. **NaN policy** (at the input rate): every NaN run is first filled by linear interpolation
   (constant at the recording's ends).  Runs of at most ``MAX_BRIDGE_S`` (1.0 s) stay filled:
   they are *bridged* and reported (``nan_bridged_s``, ``nan_bridged_runs``).  Longer runs are
   *gaps*: their fill only keeps the resampling filter calm; every model-rate sample lying
   strictly between the last valid sample before and the first valid sample after the gap is
   invalid, no window may overlap it, and its output is NaN (``gaps`` lists them in seconds).
3. **Resample** to the model rate ``cfg.fs`` with polyphase filtering
   (``scipy.signal.resample_poly``, ratio ``Fraction(cfg.fs / fs).limit_denominator(20000)``,
   ``padtype="line"``).  The ratio is exact for rates with up to two decimals and within
   2.5e-5 for any rate in range (a denominator limit of 1000 can be 5e-4 off near 128 Hz);
   the time axis uses the exact resulting rate ``fs * up / down``.  Even a 20000-denominator
   filter costs < 0.1 s for ten minutes of signal.
4. **Windows** of the model length ``cfg.T`` with hop ``hop_s`` tile every stretch of valid
   samples between gaps (the first starts at the stretch's start, the last is aligned to its
   end, so every valid sample is covered); stretches shorter than one window stay NaN.
5. **Sample**: each window is preprocessed exactly like training
   (:func:`engine.model.data.ppg_features`, zero-phase), then ``k`` reconstructions per window are
   drawn in batches of ``batch`` windows (:func:`engine.model.sampler.sample`, at the model's
   saved initial-noise temperature unless ``temperature`` is given); mean and std.
6. **Stitch** by weighted overlap-add: each window's weight is a Tukey taper (sin^2 ramps of
   ``min(T - hop, T/2)`` samples at both ends, never exactly 0, 1 in between) and the sum is
   divided by the summed weights, so overlapping windows cross-fade without seams and a
   signal present in every window is reproduced exactly.  The mean is stitched on the eight
   independent leads and expanded with :func:`p2es.leads.derive_12` in float64, so
   Einthoven/Goldberger hold to float64 rounding.  The std (all 12 leads) is stitched with
   the same weights (a weighted average of the per-window spreads, not a mixture std).

Deterministic for a given ``seed`` (and ``batch``): one ``torch.Generator`` seeded with
``seed`` feeds the batches in order.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.signal import resample_poly
from tqdm import tqdm

from engine.model import sampler
from engine.model.checkpoint import DEFAULT_CHECKPOINT, Entry, load_model
from engine.model.data import demographics as _demographics
from engine.model.preprocess import bandpass, ppg_features
from p2es.argtypes import finite_float as _num
from p2es.argtypes import positive_int as _pos_int
from p2es.errors import InputError, P2esError
from p2es.leads import LEADS, derive_12, independent_of
from wearable.readers import read_any

__all__ = [
    "Reconstruction",
    "reconstruct",
    "DEFAULT_CHECKPOINT",
    "plan_windows",
    "crossfade_weights",
    "sample_windows",
    "write_csv",
    "FS_MIN",
    "FS_MAX",
    "MAX_BRIDGE_S",
    "MAX_DENOMINATOR",
]

FS_MIN, FS_MAX = 25.0, 2000.0
MAX_BRIDGE_S = 1.0  # NaN runs up to this long are bridged by interpolation
MAX_DENOMINATOR = 20000  # rational approximation of the resampling ratio
DISCLAIMER = "Reconstructed from PPG - not a diagnostic ECG"
# plausible demographic ranges (outside: an input error, not a silent extrapolation)
_DEMO_RANGES = {
    "age": (0.0, 120.0),
    "height_cm": (50.0, 250.0),
    "weight_kg": (2.0, 400.0),
    "bmi": (5.0, 100.0),
}


@dataclass
class Reconstruction:
    time_s: np.ndarray  # [N] seconds from the first input sample (model rate)
    ecg: np.ndarray  # [12, N] mV, mean of the K samples, LEADS order; NaN = gap
    std: np.ndarray  # [12, N] mV, spread over the K samples (0 if K = 1)
    fs_model: float  # nominal model rate (cfg.fs)
    nan_bridged_s: float  # seconds of input NaN bridged by interpolation
    windows: np.ndarray  # [W] window start indices (model-rate samples)
    gaps: list[tuple[float, float]]  # long NaN runs (start_s, end_s) of the input, not reconstructed
    nan_bridged_runs: int = 0  # number of bridged NaN runs
    fs_in: float = math.nan  # input rate
    fs_out: float = math.nan  # exact rate of the resampled signal (fs_in * up / down)
    duration_s: float = 0.0  # input duration (n / fs_in)
    window_s: float = 0.0  # model window length (T / fs_model)
    hop_s: float = 0.0
    ppg: np.ndarray | None = None  # [N] resampled input PPG (bridged; NaN in gaps)
    model: str = ""
    steps: int = 0
    k: int = 0
    elapsed_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        return int(len(self.windows))

    @property
    def nan_output_s(self) -> float:
        """Seconds of output that are NaN (gaps and stretches shorter than one window)."""
        return float(np.isnan(self.ecg[1]).sum() / self.fs_out) if self.ecg.size else 0.0

    def _temperature_text(self) -> str:
        """``", temperature T"`` when the windows were sampled at T != 1, else ``""``."""
        t = self.meta.get("temperature", 1.0)
        return f", temperature {t:g}" if t != 1.0 else ""

    def summary(self, source: str = "") -> str:
        src = f" from {source}" if source else ""
        gaps = ""
        if self.gaps:
            gaps = (
                f", {len(self.gaps)} long NaN gap(s) not reconstructed "
                f"({self.nan_output_s:.1f} s of output left NaN)"
            )
        elif self.nan_output_s > 0:
            gaps = f", {self.nan_output_s:.1f} s of output left NaN"
        return (
            f"Reconstructed a 12-lead ECG{src}: {self.duration_s:.1f} s of PPG at "
            f"{self.fs_in:.6g} Hz resampled to {self.fs_model:g} Hz ({len(self.time_s)} samples), "
            f"{self.n_windows} window(s) of {self.window_s:g} s with hop {self.hop_s:g} s, model "
            f"{self.model!r} ({self.steps} steps, K={self.k}{self._temperature_text()}); NaN bridged: "
            f"{self.nan_bridged_s:.2f} s in {self.nan_bridged_runs} run(s){gaps}; "
            f"took {self.elapsed_s:.1f} s."
        )


# ---------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges [a, b) where ``mask`` is True."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(d[0::2], d[1::2])]


def plan_windows(valid: np.ndarray, T: int, hop: int) -> np.ndarray:
    """Window starts tiling each run of ``valid`` samples: hop ``hop``, the last window of a
    run aligned to its end; runs shorter than ``T`` get no window."""
    starts: list[int] = []
    for a, b in _runs(valid):
        if b - a < T:
            continue
        st = list(range(a, b - T + 1, hop))
        if st[-1] + T < b:
            st.append(b - T)
        starts += st
    return np.asarray(starts, dtype=np.int64)


def crossfade_weights(T: int, ramp: int) -> np.ndarray:
    """Tukey taper [T]: sin^2 ramps of ``ramp`` samples (never exactly 0), 1 in between."""
    w = np.ones(T, dtype=np.float64)
    ramp = int(min(max(ramp, 0), T // 2))
    if ramp > 0:
        r = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
        w[:ramp] = r
        w[T - ramp :] = np.minimum(w[T - ramp :], r[::-1])
    return w


def sample_windows(
    entry: Entry,
    feats: torch.Tensor,
    demo: sampler.Demo,
    *,
    steps: int,
    k: int,
    generator: torch.Generator,
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of windows through the model: (mean, std), each [B, 12, T] mV (numpy).
    ``temperature``: the initial-noise scale; None = the entry's ``sampler_config``."""
    res = sampler.sample(
        entry.model,
        entry.schedule,
        feats,
        demo,
        steps=steps,
        k=k,
        generator=generator,
        keep_samples=False,
        temperature=entry.sampler_config.temperature if temperature is None else temperature,
    )
    return res.mean.double().numpy(), res.std.double().numpy()


def _check_fs(fs: Any) -> float:  # any user value: checked here
    try:
        f = float(fs)
    except (TypeError, ValueError):
        raise InputError(f"sampling rate {fs!r} is not a number") from None
    if not math.isfinite(f) or not FS_MIN <= f <= FS_MAX:
        raise InputError(f"PPG sampling rate must be within {FS_MIN:g}-{FS_MAX:g} Hz, got {fs!r}")
    return f


def _check_ppg(ppg: npt.ArrayLike) -> np.ndarray:
    try:
        x = np.array(ppg, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"PPG is not numeric ({type(e).__name__})") from None
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise InputError(f"PPG must be one channel [T], got shape {list(x.shape)}")
    if x.size == 0:
        raise InputError("PPG is empty")
    x[~np.isfinite(x)] = np.nan
    if np.isnan(x).all():
        raise InputError("PPG has no valid samples (all NaN)")
    return x


def _demo_arrays(d: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """demographics dict -> (values [1,5], mask [1,5]) tensors, or None when empty."""
    if not d:
        return None
    allowed = {"age", "sex", "height_cm", "weight_kg", "bmi"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InputError(
            f"unknown demographic field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )
    vals: dict[str, float | None] = {}
    for key in ("age", "height_cm", "weight_kg", "bmi"):
        v = d.get(key)
        if v is None:
            vals[key] = None
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{key} must be a number, got {v!r}") from None
        lo, hi = _DEMO_RANGES[key]
        if not (math.isfinite(f) and lo <= f <= hi):
            raise InputError(f"{key}={v!r} is outside the plausible range {lo:g}-{hi:g}")
        vals[key] = f
    sex = d.get("sex")
    if sex is not None:
        s = str(sex).strip().upper()
        sexmap = {"F": 0, "FEMALE": 0, "0": 0, "M": 1, "MALE": 1, "1": 1}
        if s not in sexmap:
            raise InputError(f"sex must be F or M, got {sex!r}")
        sex = sexmap[s]
    v, m = _demographics(vals["age"], sex, vals["height_cm"], vals["weight_kg"], vals["bmi"], n=1)
    return torch.from_numpy(v), torch.from_numpy(m)


def _load_entry(checkpoint: Entry | str | os.PathLike[str] | None, model: str) -> Entry:
    if isinstance(checkpoint, Entry):
        return checkpoint
    path = DEFAULT_CHECKPOINT if checkpoint is None else Path(os.fspath(checkpoint))
    if checkpoint is None and not path.exists():
        raise P2esError(
            f"the shipped checkpoint set {path} is missing (train it with "
            "scripts/train_shipped.sh, or pass --checkpoint)"
        )
    return load_model(path, model)


# ---------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------


def reconstruct(
    ppg: npt.ArrayLike,
    fs: float,
    *,
    demographics: dict[str, Any] | None = None,
    checkpoint: Entry | str | os.PathLike[str] | None = None,
    model: str = "p2es",
    steps: int = 10,
    k: int = 4,
    hop_s: float = 4.0,
    batch: int = 32,
    seed: int = 0,
    progress: bool = True,
    temperature: float | None = None,
) -> Reconstruction:
    """Reconstruct a 12-lead ECG (mV) from a PPG recording ``ppg`` [T] sampled at ``fs`` Hz.

    ``demographics``: optional dict with ``age`` (years), ``sex`` ("F"/"M" or 0/1),
    ``height_cm``, ``weight_kg`` (``bmi`` derived unless given); missing keys are unknown.
    ``checkpoint``: path of a checkpoint set (default: the shipped
    ``engine/weights/p2es_set.pt``) or an already loaded :class:`engine.model.checkpoint.Entry`;
    ``model``: the name in the set.  ``steps`` reverse steps, ``k`` samples per window,
    ``hop_s`` window hop (0 < hop <= window length), ``batch`` windows per model call.
    ``temperature``: initial-noise scale in [0, 1]; None = the one saved with the model
    (``sampler_config``; 1 for sets without one).
    See the module docstring for the NaN policy, resampling and stitching.
    """
    t0 = time.perf_counter()
    fs = _check_fs(fs)
    x = _check_ppg(ppg)
    demo = _demo_arrays(demographics)
    if int(steps) < 1 or int(k) < 1 or int(batch) < 1:
        raise InputError(f"steps, k and batch must be >= 1 (got {steps}, {k}, {batch})")
    steps, k, batch = int(steps), int(k), int(batch)

    entry = _load_entry(checkpoint, model)
    temp = entry.sampler_config.temperature if temperature is None else temperature
    if not (isinstance(temp, (int, float)) and 0.0 <= temp <= 1.0):
        raise InputError(f"temperature must be in [0, 1], got {temp!r}")
    cfg = entry.model.cfg
    T, fs_model = int(cfg.T), float(cfg.fs)
    win_s = T / fs_model
    try:
        hop_s = float(hop_s)
    except (TypeError, ValueError):
        raise InputError(f"hop must be a number of seconds, got {hop_s!r}") from None
    hop = int(round(hop_s * fs_model)) if math.isfinite(hop_s) else 0
    if not 1 <= hop <= T:
        raise InputError(f"hop must be > 0 and at most one window ({win_s:g} s), got {hop_s!r} s")

    n = x.size
    ratio = Fraction(fs_model / fs).limit_denominator(MAX_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    fs_out = fs * up / down
    n_out = -(-n * up // down)  # ceil: resample_poly's output length
    if n_out < T:
        raise InputError(
            f"the recording is {n / fs:.3g} s long; the model needs at least one "
            f"{win_s:g} s window ({T} samples at {fs_model:g} Hz)"
        )

    # -- NaN policy (input rate) -----------------------------------------------------------
    nan = np.isnan(x)
    bridged_n, bridged_runs, gaps_idx = 0, 0, []
    if nan.any():
        good = np.flatnonzero(~nan)
        x = np.interp(np.arange(n), good, x[good])  # constant beyond the ends
        max_run = MAX_BRIDGE_S * fs + 1e-9
        for a, b in _runs(nan):
            if b - a <= max_run:
                bridged_n += b - a
                bridged_runs += 1
            else:
                gaps_idx.append((a, b))
    gaps = [(a / fs, b / fs) for a, b in gaps_idx]

    # -- resample (polyphase) ----------------------------------------------------------------
    if up == down:
        y = x.copy()
    else:
        c = float(np.median(x))
        y = resample_poly(x - c, up, down, padtype="line") + c
    y = y[:n_out]
    time_s = np.arange(n_out) / fs_out
    valid = np.ones(n_out, dtype=bool)
    for a, b in gaps_idx:
        lo = (a - 1) / fs if a > 0 else -np.inf
        hi = b / fs if b < n else np.inf
        valid &= ~((time_s > lo) & (time_s < hi))
    y[~valid] = np.nan

    starts = plan_windows(valid, T, hop)
    if starts.size == 0:
        raise InputError(f"no stretch of valid PPG between NaN gaps is as long as one {win_s:g} s window")

    # -- sample in batches and stitch ----------------------------------------------------------
    w = crossfade_weights(T, min(T - hop, T // 2))
    num8 = np.zeros((8, n_out))
    num_std = np.zeros((12, n_out))
    den = np.zeros(n_out)
    gen = torch.Generator().manual_seed(int(seed))

    def demo_b(B: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if demo is None:
            return None
        return demo[0].expand(B, -1).contiguous(), demo[1].expand(B, -1).contiguous()

    bar = _progress(len(starts), progress)
    try:
        for b0 in range(0, len(starts), batch):
            st = starts[b0 : b0 + batch]
            win = np.stack([y[s : s + T] for s in st])
            feats = torch.from_numpy(ppg_features(win, fs_model))
            mean, std = sample_windows(
                entry, feats, demo_b(len(st)), steps=steps, k=k, generator=gen, temperature=temp
            )
            mean8 = independent_of(np.asarray(mean, dtype=np.float64), axis=1)
            std = np.asarray(std, dtype=np.float64)
            for j, s in enumerate(st):
                num8[:, s : s + T] += w * mean8[j]
                num_std[:, s : s + T] += w * std[j]
                den[s : s + T] += w
            if bar is not None:
                bar.update(len(st))
    finally:
        if bar is not None:
            bar.close()
    covered = den > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ecg8 = np.where(covered, num8 / den, np.nan)
        std12 = np.where(covered, num_std / den, np.nan)
    ecg = derive_12(ecg8, axis=0).astype(np.float64)

    return Reconstruction(
        time_s=time_s,
        ecg=ecg,
        std=std12,
        fs_model=fs_model,
        nan_bridged_s=bridged_n / fs,
        windows=starts,
        gaps=gaps,
        nan_bridged_runs=bridged_runs,
        fs_in=fs,
        fs_out=fs_out,
        duration_s=n / fs,
        window_s=win_s,
        hop_s=hop / fs_model,
        ppg=y,
        model=entry.name,
        steps=steps,
        k=k,
        elapsed_s=time.perf_counter() - t0,
        meta={
            "resample": (up, down),
            "batch": batch,
            "seed": int(seed),
            "diffusion": cfg.diffusion,
            "temperature": float(temp),
        },
    )


def _progress(total: int, enabled: bool) -> tqdm[Any] | None:
    if not enabled:
        return None
    return tqdm(total=total, desc="reconstruct", unit="window", file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------
# files and plot
# ---------------------------------------------------------------------------------------


def write_csv(path: str | os.PathLike[str], time_s: np.ndarray, leads12: np.ndarray) -> Path:
    """``time,I,...,V6`` CSV: time (s, 7 decimals), values in mV with 4 decimals (NaN: nan)."""
    p = Path(path)
    data = np.column_stack([time_s, np.asarray(leads12).T])
    try:
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(
            p,
            data,
            delimiter=",",
            header="time," + ",".join(LEADS),
            comments="",
            fmt=["%.7f"] + ["%.4f"] * 12,
        )
    except OSError as e:
        raise P2esError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def plot_first_window(res: Reconstruction, out: str | Path, *, title: str = "", subtitle: str = "") -> Path:
    """The first reconstructed window on ECG paper, band mean +- 2 std, PPG under it."""
    from p2es.plot import plot_ecg_paper  # lazy: p2es.plot imports matplotlib (heavy)

    s = int(res.windows[0])
    T = int(round(res.window_s * res.fs_model))
    sl = slice(s, s + T)
    e, sd = res.ecg[:, sl], res.std[:, sl]
    assert res.ppg is not None  # reconstruct() always returns its resampled input
    ppg = bandpass(res.ppg[sl], res.fs_model)
    try:
        return plot_ecg_paper(
            e,
            res.fs_model,
            out,
            ppg=ppg,
            band=(e - 2 * sd, e + 2 * sd),
            title=title,
            subtitle=subtitle,
            disclaimer=DISCLAIMER,
        )
    except OSError as exc:
        raise P2esError(f"cannot write {out}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------
# command line: p2es reconstruct
# ---------------------------------------------------------------------------------------


def add_reconstruct_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ppg",
        required=True,
        metavar="FILE",
        help="PPG recording: CSV (one PPG column, header optional; or time + ppg "
        "columns) or a WFDB record with a PLETH/PPG channel",
    )
    p.add_argument(
        "--fs",
        type=_num,
        default=None,
        metavar="HZ",
        help="PPG sampling rate (needed for CSVs without a time column; 25-2000 Hz)",
    )
    p.add_argument("--age", type=_num, default=None, metavar="Y")
    p.add_argument("--sex", type=lambda s: s.strip().upper(), choices=["F", "M"], default=None)
    p.add_argument("--height-cm", type=_num, default=None, metavar="H")
    p.add_argument("--weight-kg", type=_num, default=None, metavar="W")
    p.add_argument(
        "--out", required=True, metavar="OUT.csv", help="output CSV: time,I,II,III,aVR,aVL,aVF,V1..V6 (s, mV)"
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="OUT.png",
        help="draw the first window on ECG paper with the uncertainty band",
    )
    p.add_argument(
        "--std-out",
        default=None,
        metavar="STD.csv",
        help="also write the per-sample spread over the K samples (mV)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help=f"checkpoint set (default: the shipped {DEFAULT_CHECKPOINT.name})",
    )
    p.add_argument("--model", default="p2es", help="model name in the set (default p2es)")
    p.add_argument("--steps", type=_pos_int, default=10, help="reverse diffusion steps (default 10)")
    p.add_argument("--k", type=_pos_int, default=4, help="samples per window (default 4)")
    p.add_argument("--hop-s", type=_num, default=4.0, help="window hop in seconds (default 4)")
    p.add_argument("--batch", type=_pos_int, default=32, help="windows per model call (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_pos_int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_writable(path: str | os.PathLike[str]) -> None:
    parent = Path(path).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise P2esError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    if Path(path).is_dir():
        raise P2esError(f"{path} is a folder, expected a file name")
    if not os.access(parent, os.W_OK):
        raise P2esError(f"cannot write to {parent}")


def reconstruct_main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fs is not None:
        _check_fs(args.fs)
    for out in (args.out, args.std_out, args.plot):  # fail before the work, not after it
        if out:
            _check_writable(out)
    rec = read_any(args.ppg, fs=args.fs)
    if rec.ppg is None:
        raise InputError(
            f"{args.ppg}: no PPG channel found (channels: "
            f"{', '.join(map(str, rec.meta.get('channels') or [])) or 'none'})"
        )
    demo = {"age": args.age, "sex": args.sex, "height_cm": args.height_cm, "weight_kg": args.weight_kg}
    demo = {key: v for key, v in demo.items() if v is not None}
    res = reconstruct(
        rec.ppg,
        rec.fs,
        demographics=demo or None,
        checkpoint=args.checkpoint,
        model=args.model,
        steps=args.steps,
        k=args.k,
        hop_s=args.hop_s,
        batch=args.batch,
        seed=args.seed,
        progress=not args.no_progress,
    )
    written = [str(write_csv(args.out, res.time_s, res.ecg))]
    if args.std_out:
        written.append(str(write_csv(args.std_out, res.time_s, res.std)))
    if args.plot:
        who = (
            ", ".join(
                f"{key.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{key} {v}"
                for key, v in demo.items()
            )
            or "demographics unknown"
        )
        s = float(res.time_s[res.windows[0]])
        written.append(
            str(
                plot_first_window(
                    res,
                    args.plot,
                    title=f"P2Es reconstruction of {Path(args.ppg).name}",
                    subtitle=f"{s:.1f}-{s + res.window_s:.1f} s; {who}; model {res.model}, "
                    f"{res.steps} steps, K={res.k}; band = mean +- 2 std",
                )
            )
        )
    print(res.summary(str(args.ppg)) + " Wrote " + ", ".join(written) + ".")
    return 0
