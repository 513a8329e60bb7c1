"""Evaluation of a checkpoint set on held-out simulated subjects (``p2es eval``).

``evaluate(checkpoint, records, seed, ...)`` reconstructs the same ``records`` test windows
with every model of the set and scores them with :mod:`engine.model.metrics`:

* data: ``engine.model.data.fixed_set("test", records, seed)`` - simulator seeds of the test split,
  disjoint from every training seed (so held-out subjects); input = the *noisy* wearable PPG
  (+ demographics), target = the *clean* 12-lead ECG (mV).  ``data="fake"`` uses the
  stand-in generator, ``data=PATH.npz`` the first ``records`` records of a file with the
  simulator's keys.
* rows: every model in the set (single sample per window, ``k = 1``), and, when ``p2es`` is
  there, ``p2es_shuffled_demographics`` (p2es with each record's demographics replaced by
  another record's: a fixed derangement, same PPG, same noise) and ``p2es_mean_of_k`` (mean
  of ``k`` samples per window, drawn in one batch).
* floor rows (:mod:`engine.model.baselines`, last by default, also by name in ``models``):
  ``zero`` (all-zero output) and ``template`` (a population-mean beat built from the *train*
  split, overlap-added at each PPG foot minus the mean pulse arrival time); scored by the same
  :func:`score`; undefined metrics (Pearson r, HR of a flat output) are NaN -> null.
  ``"template"`` at the top level describes the build (split, simulator seeds, beats, PAT).
* beats vs annotations (when the test records carry the simulator's ``r_peaks``): each row
  gets :data:`BEAT_METRICS` (``detect_r_peaks`` on its lead II matched one-to-one within +-50 ms
  to the annotated R peaks, beats within 0.1 s of a window end not counted; sensitivity, PPV,
  F1, and ``hr_mae_ann_bpm`` = |HR(annotations) - HR(detections)|), overall and per rhythm;
  ``beat_ceiling_true_ecg`` = the same for the true ECG's lead II (what the detector reaches on
  the target itself).  ``hr_mae_bpm`` (detector on the true ECG as reference) is unchanged.
* every run starts from ``torch.Generator().manual_seed(seed)``: results are deterministic
  for given (checkpoint, records, seed, steps, k, batch, threads), and all rows share the
  initial noise (common random numbers: the shuffled row differs from ``p2es`` only by the
  demographics).
* uncertainty (diffusion models, ``k > 1``): ``k`` samples per window give a predicted std
  per sample; reported: ``uncertainty_mean_std`` (mV), ``uncertainty_error_corr`` (Pearson r
  over every window, lead and time sample between that std and the row's absolute error),
  ``uncertainty_window_corr`` (r over windows between mean std and RMSE) and
  ``band_coverage`` (fraction of true samples inside mean +- 2 std of the k samples).
  For the single-sample rows the std comes from a separate k-sample run (an independent
  draw), for ``p2es_mean_of_k`` from its own samples.
* paired comparison: every row except ``p2es`` gets ``paired_vs_p2es`` = {metric: {"diff",
  "ci95", "n"}} for HR, QRS and QT error: the mean over windows of (row's |error| - p2es's
  |error|) on the same windows, with a 95 % percentile-bootstrap interval that resamples
  *subjects* (the ``subject`` key; ~4 windows each) with all their windows
  (:func:`engine.model.metrics.paired_difference_clustered`; every window its own cluster when
  the data has no subject ids), also per rhythm group under ``"per_rhythm"``; the table prints
  the overall ones below the main table.  ``paired_vs_p2es_window`` keeps the earlier
  window-level interval (:func:`engine.model.metrics.paired_difference`, windows resampled as
  if independent; same point estimates).  FD is a
  distribution distance with no per-window value, so it has no such interval.
* ``train_seeds``: {model: training seed} for the models whose checkpoint meta records one
  (absent when none does); a model with seed replicas lists all their seeds.
* seed replicas: a model ``M`` with siblings ``M_seed1``, ``M_seed2``, ... in the set (the same
  recipe trained with other ``--seed``s, :func:`seed_replicas`) is one row: every replica samples
  the same windows from the same initial noise, the row holds the mean over the replicas of
  every number (nested per-rhythm / per-lead values too), ``<metric>_sd`` (sample sd over the
  replicas) for the top-level ones, and ``"seeds": {replica: its own headline metrics}``.  Its
  per-window errors for the paired comparison are the replicas' mean, so ``paired_vs_p2es``
  pairs every seed of a row with every seed of ``p2es`` on the same windows (the mean of the
  seed-pair differences equals the difference of the seed means) and resamples subjects.
  The derived rows (shuffled demographics, mean of k) and the k-sample uncertainty use the
  first replica (``M`` itself).  A replica can still be asked for by name as its own row.
* ``ms_per_window``: wall time of the sampling calls of that row (after one untimed warm-up
  call per model) divided by the windows, in this process with ``threads`` torch threads
  (recorded at the top level); ``p2es_mean_of_k`` times its k samples per window; floor rows
  time building their output (``template``: PPG feet + placement; the cached train-split
  build is not counted).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from engine.model import baselines as B
from engine.model import checkpoint as ckpt
from engine.model import metrics as M
from engine.model.checkpoint import DEFAULT_CHECKPOINT
from engine.model.config import VARIANTS
from engine.model.data import fixed_set, get_synthesize, load_npz, prepare, split_seed
from engine.model.sampler import sample
from p2es.errors import P2esError
from p2es.files import atomic_write_text
from wearable.sim.rates import DEFAULT_RATE_PROFILE

SHUFFLED = "p2es_shuffled_demographics"
MEAN_OF_K = "p2es_mean_of_k"
DERIVED = (SHUFFLED, MEAN_OF_K)
FLOORS = B.FLOORS  # ("zero", "template"): rows without a model, always available
HEADLINE = (
    "rmse",
    "mae",
    "pearson",
    "prd",
    "fd",
    "fd_batch",
    "hr_mae_bpm",
    "qrs_ms_mae",
    "qt_ms_mae",
    "spectral_distance",
    "einthoven_max_abs",
    "ms_per_window",
)
RHYTHM_GROUPS = {"sinus": ("sinus", "sinus_brady", "sinus_tachy"), "af": ("af",), "pvc": ("pvc",)}
GROUP_ORDER = ("sinus", "af", "pvc", "other")  # rhythm_group() values, in report order
RHYTHM_METRICS = (
    "n",
    "rmse",
    "mae",
    "pearson",
    "prd",
    "fd",
    "fd_batch",
    "hr_mae_bpm",
    "hr_fail_rate",
    "qrs_ms_mae",
    "qt_ms_mae",
    "spectral_distance",
)
BEAT_METRICS = (  # against the annotated R peaks (metrics.beat_metrics), overall and per rhythm
    "beat_sensitivity",
    "beat_ppv",
    "beat_f1",
    "beat_tp",
    "beat_fn",
    "beat_fp",
    "hr_mae_ann_bpm",
    "hr_ann_fail_rate",
    "hr_ann_n",
)
DISCLAIMER = "Reconstructed from PPG - not a diagnostic ECG"


# --------------------------------------------------------------------------- helpers


def rhythm_group(label: str) -> str:
    """sinus | af | pvc | other (long_qt, st_*, anything else)."""
    for g, members in RHYTHM_GROUPS.items():
        if label in members:
            return g
    return "other"


def _sha1(a: npt.ArrayLike) -> str:
    a = np.ascontiguousarray(np.asarray(a))
    return hashlib.sha1(a.tobytes()).hexdigest()[:16]


def _clean(v: Any) -> Any:
    """JSON-safe: numpy scalars -> python, NaN/inf -> None, recursively."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def derangement(n: int, seed: int) -> np.ndarray:
    """Index map ``src`` with ``src[i] != i`` for every i (n >= 2): record i gets the
    demographics of record ``src[i]``.  A random cycle, fixed by ``seed``."""
    p = np.random.default_rng([int(seed), 0xD3E0]).permutation(n)
    src = np.empty(n, dtype=np.int64)
    src[p] = np.roll(p, -1)
    return src


SEED_SUFFIX = re.compile(r"^(?P<base>.+)_seed(?P<k>[0-9]+)$")


def seed_replicas(available: Sequence[str]) -> dict[str, list[str]]:
    """``{M: [M, M_seed1, M_seed2, ...]}`` for every model ``M`` of ``available`` that has seed
    replicas (names ``M_seed<k>``, in the order of ``k``); models without replicas are absent."""
    names = set(available)
    out: dict[str, list[tuple[int, str]]] = {}
    for n in available:
        m = SEED_SUFFIX.match(n)
        if m and m["base"] in names:
            out.setdefault(m["base"], []).append((int(m["k"]), n))
    return {b: [b] + [n for _, n in sorted(v)] for b, v in out.items()}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _mean_tree(rows: Sequence[Any]) -> Any:
    """Element-wise mean of same-shaped nested dicts of numbers (NaN-aware: a value that is NaN
    in some replicas is the mean of the others); non-numbers come from the first."""
    first = rows[0]
    if isinstance(first, dict):
        return {k: _mean_tree([r.get(k) if isinstance(r, dict) else None for r in rows]) for k in first}
    if _is_num(first) and all(_is_num(r) for r in rows):
        a = np.asarray(rows, dtype=np.float64)
        return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan
    return first


def seed_aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row from replicas' rows: the mean of everything, ``<metric>_sd`` for the top-level
    numbers, ``"seeds"`` = each replica's top-level numbers."""
    vals = list(rows.values())
    agg: dict[str, Any] = _mean_tree(vals)
    for k in list(vals[0]):
        if all(_is_num(r.get(k)) for r in vals):
            a = np.asarray([r[k] for r in vals], dtype=np.float64)
            a = a[np.isfinite(a)]
            agg[f"{k}_sd"] = float(a.std(ddof=1)) if a.size > 1 else math.nan
    agg["seeds"] = {n: {k: v for k, v in r.items() if _is_num(v)} for n, r in rows.items()}
    return agg


def _parse_models(models: str | Sequence[str] | None) -> list[str] | None:
    if models is None:
        return None
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",")]
    out = [m for m in models if m]
    if not out:
        raise P2esError("no model names given")
    return list(dict.fromkeys(out))


def plan_rows(available: Sequence[str], models: str | Sequence[str] | None = None) -> list[str]:
    """Row names in report order; unknown names -> P2esError.  The floor rows ``zero`` and
    ``template`` (:mod:`engine.model.baselines`) come last by default and can always be asked
    for (a model of the set with either name is ignored)."""
    avail = [n for n in available if n not in FLOORS]
    replicas = {r for v in seed_replicas(avail).values() for r in v[1:]}
    listed = [n for n in avail if n not in replicas]  # replicas report inside their model's row
    order = [n for n in VARIANTS if n in listed] + [n for n in listed if n not in VARIANTS]
    derived_ok = "p2es" in avail
    want = _parse_models(models)
    if want is None:
        rows = list(order)
        if derived_ok:
            i = rows.index("p2es") + 1
            rows[i:i] = list(DERIVED)
        if not rows:
            raise P2esError("the checkpoint set holds no models")
        return rows + list(FLOORS)
    known = set(avail) | (set(DERIVED) if derived_ok else set()) | set(FLOORS)
    bad = [m for m in want if m not in known]
    if bad:
        hint = f" ({', '.join(DERIVED)} need 'p2es' in the set)" if any(b in DERIVED for b in bad) else ""
        raise P2esError(
            f"unknown model(s) {', '.join(bad)}; the checkpoint has: "
            f"{', '.join(order + (list(DERIVED) if derived_ok else []))}; floor rows: "
            f"{', '.join(FLOORS)}{hint}"
        )
    return want


def load_test_data(
    data: str, records: int, seed: int, T: int, fs: float, rate_profile: str = DEFAULT_RATE_PROFILE
) -> dict[str, Any]:
    """Raw test records (simulator / stand-in / .npz) with windows of ``T`` samples at ``fs``;
    ``rate_profile``: the simulator's heart-rate profile (``"v1"`` or ``"wide"``)."""
    if data in ("sim", "fake"):
        kw: dict[str, Any] = {"duration_s": T / fs, "fs": fs}
        if data == "sim":
            if "noisy_ecg" in inspect.signature(get_synthesize("sim")).parameters:
                kw["noisy_ecg"] = False
        raw = fixed_set("test", records, seed, source=data, rate_profile=rate_profile, **kw)
        desc = {"source": data, "split": "test", "sim_seed": split_seed("test", seed, 0)}
        if rate_profile != DEFAULT_RATE_PROFILE:
            desc["rate_profile"] = rate_profile
    else:
        if rate_profile != DEFAULT_RATE_PROFILE:
            raise P2esError(f"--rate-profile applies to simulated test data, not to {data!r}")
        raw = load_npz(data)
        n = raw["ppg"].shape[0]
        if n < records:
            raise P2esError(f"{data} holds {n} records, fewer than --records {records}")
        raw = {
            k: (v[:records] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v)
            for k, v in raw.items()
        }
        desc = {"source": os.fspath(data), "split": "file"}
    if raw.get("ecg") is None:
        raise P2esError(f"test data {data!r} has no 'ecg' target")
    f = float(np.asarray(raw.get("fs", fs)).reshape(-1)[0])
    if raw["ppg"].shape[-1] != T or abs(f - fs) > 1e-6:
        raise P2esError(
            f"test windows are {raw['ppg'].shape[-1]} samples at {f:g} Hz; the models expect {T} at {fs:g} Hz"
        )
    raw["_desc"] = desc
    return raw


def sample_windows(
    entry: ckpt.Entry,
    ppg: torch.Tensor,
    demo: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    k: int,
    batch: int,
    seed: int,
    desc: str,
    progress: bool,
    eta: float = 0.0,
    spacing: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample every window in batches: (mean [N,12,T], std [N,12,T], seconds).  ``eta`` and
    ``spacing``: the sampler's (:func:`engine.model.sampler.sample`; defaults = DDIM on the
    uniform grid, what ``p2es eval`` uses)."""
    n = ppg.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    means, stds, secs = [], [], 0.0
    bar = tqdm(total=n, desc=desc, unit="win", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for s in range(0, n, batch):
            sl = slice(s, min(n, s + batch))
            t0 = time.perf_counter()
            r = sample(
                entry.model,
                entry.schedule,
                ppg[sl],
                (demo[sl], mask[sl]),
                steps=steps,
                k=k,
                eta=eta,
                spacing=spacing,
                generator=gen,
                keep_samples=False,
            )
            secs += time.perf_counter() - t0
            means.append(r.mean.numpy())
            stds.append(r.std.numpy())
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    return np.concatenate(means), np.concatenate(stds), secs


def _nanmean_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over replicas of per-window errors; NaN only where every replica is NaN."""
    a = np.stack([np.asarray(x, dtype=np.float64) for x in arrays])
    cnt = np.isfinite(a).sum(0)
    tot = np.where(np.isfinite(a), a, 0.0).sum(0)
    out: np.ndarray = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else math.nan


def uncertainty_stats(
    true: np.ndarray, recon: np.ndarray, mean_k: np.ndarray, std_k: np.ndarray
) -> dict[str, float]:
    err = np.abs(recon.astype(np.float64) - true)
    win_rmse = np.sqrt((err**2).mean(axis=(1, 2)))
    win_std = std_k.astype(np.float64).mean(axis=(1, 2))
    return {
        "uncertainty_mean_std": float(std_k.mean()),
        "uncertainty_error_corr": _corr(std_k, err),
        "uncertainty_window_corr": _corr(win_std, win_rmse) if true.shape[0] > 1 else math.nan,
        "band_coverage": float((np.abs(true - mean_k) <= 2.0 * std_k).mean()),
    }


def score(
    true: np.ndarray,
    recon: np.ndarray,
    fs: float,
    true_cache: dict[str, np.ndarray],
    groups: np.ndarray,
    *,
    ann: list[np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score one model's reconstructions: (metrics row with ``per_rhythm``, per-window errors for
    the paired comparison).  ``true_cache`` = ``metrics.measure(true, fs)``; ``groups`` = the
    windows' :func:`rhythm_group`.  With the windows' annotated R peaks ``ann``
    (:func:`engine.model.metrics.annotated_beats`) the row (and each rhythm group) also gets
    the :data:`BEAT_METRICS` of lead II of ``recon`` against them."""
    rc = M.measure(recon, fs)
    row = M.compute_all(true, recon, fs, true_cache=true_cache, recon_cache=rc)
    per_rhythm = {}
    for g in GROUP_ORDER:
        idx = np.flatnonzero(groups == g)
        if idx.size == 0:
            continue
        sub = M.compute_all(
            true[idx], recon[idx], fs, true_cache=M.subset(true_cache, idx), recon_cache=M.subset(rc, idx)
        )
        per_rhythm[g] = {m: sub[m] for m in RHYTHM_METRICS}
    if ann is not None:
        beats = beat_scores(recon, ann, groups, fs)
        for g, v in beats.pop("per_rhythm").items():
            per_rhythm[g].update(v)
        row.update(beats)
    row["per_rhythm"] = per_rhythm
    return row, M.window_errors(true_cache, rc)


def beat_scores(ecg: np.ndarray, ann: list[np.ndarray], groups: np.ndarray, fs: float) -> dict[str, Any]:
    """:func:`engine.model.metrics.beat_metrics` of ``detect_r_peaks`` on lead II of ``ecg``
    [N, 12, T] against the annotated R peaks ``ann``, overall and ``per_rhythm``."""
    T = int(ecg.shape[-1])
    det = M.detect_windows(ecg, fs)
    out = M.beat_metrics(ann, det, T, fs)
    per: dict[str, dict[str, Any]] = {}
    for g in GROUP_ORDER:
        idx = np.flatnonzero(groups == g)
        if idx.size:
            per[g] = M.beat_metrics([ann[i] for i in idx], [det[i] for i in idx], T, fs)
    out["per_rhythm"] = per
    return out


def paired_vs(
    ref: str,
    werr: dict[str, dict[str, np.ndarray]],
    groups: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """For every other row: ``{metric: paired_difference(row, ref)}`` (> 0: ``ref`` better),
    plus ``"per_rhythm": {group: {metric: ...}}`` when the windows' rhythm ``groups`` are given.
    With ``clusters`` (one id per window, e.g. the subject) the interval resamples clusters
    (:func:`engine.model.metrics.paired_difference_clustered`), else windows."""

    def diff(a: np.ndarray, b: np.ndarray, sel: np.ndarray | None = None) -> dict[str, Any]:
        if sel is not None:
            a, b = a[sel], b[sel]
        if clusters is None:
            return M.paired_difference(a, b)
        return M.paired_difference_clustered(a, b, clusters if sel is None else clusters[sel])

    out: dict[str, dict[str, Any]] = {}
    for name, e in werr.items():
        if name == ref:
            continue
        row: dict[str, Any] = {m: diff(e[m], werr[ref][m]) for m in M.WINDOW_METRICS}
        if groups is not None:
            row["per_rhythm"] = {
                g: {m: diff(e[m], werr[ref][m], groups == g) for m in M.WINDOW_METRICS}
                for g in GROUP_ORDER
                if (groups == g).any()
            }
        out[name] = row
    return out


# --------------------------------------------------------------------------- evaluate


def evaluate(
    checkpoint: str | os.PathLike[str] | None = None,
    records: int = 512,
    seed: int = 0,
    steps: int = 10,
    k: int = 4,
    batch: int = 64,
    models: str | Sequence[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    data: str = "sim",
    uncertainty: bool = True,
    rate_profile: str = DEFAULT_RATE_PROFILE,
) -> dict[str, Any]:
    """Score every model of a checkpoint set on ``records`` held-out test windows.

    Returns ``{"models": {name: {metric: value, ..., "per_lead": ..., "per_rhythm": ...}},
    "records": N, "seed": K, "steps", "k", "batch", "threads", "fs", "T", "fd_batch",
    "checkpoint", "data", "seconds"}`` (JSON-safe: NaN -> None).
    ``models``: names (list or comma string) to evaluate, default all + derived rows.
    ``uncertainty=False`` skips the extra k-sample runs of the non-p2es diffusion models.
    ``rate_profile``: the simulator's heart-rate profile of the test records (``"wide"``: the
    data of models trained with ``--sim-rate-profile wide``).
    """
    checkpoint = DEFAULT_CHECKPOINT if checkpoint is None else checkpoint
    for name, v, lo in (("records", records, 1), ("steps", steps, 1), ("k", k, 1), ("batch", batch, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise P2esError(f"{name} must be an integer >= {lo}, got {v!r}")
    if threads is not None and threads < 1:
        raise P2esError(f"threads must be >= 1, got {threads}")
    if data in ("sim", "fake") and not (0 <= int(seed) < 100):
        raise P2esError(f"seed must be in 0..99 (test-split seeds stay disjoint from training), got {seed}")
    t_start = time.perf_counter()
    available = list(ckpt.list_models(checkpoint))  # missing / corrupt -> P2esError
    rows = plan_rows(available, models)
    bases = list(dict.fromkeys("p2es" if r in DERIVED else r for r in rows if r not in FLOORS))
    reps = {b: v for b, v in seed_replicas(available).items() if b in rows}
    to_load = list(dict.fromkeys(bases + [r for v in reps.values() for r in v[1:]]))
    # floor rows alone still take the window size from the set (its first model)
    entries = ckpt.load_set(checkpoint, to_load or available[:1])
    cfgs = {(e.model_config.T, e.model_config.fs) for e in entries.values()}
    if len(cfgs) != 1:
        raise P2esError(f"models of the set use different window sizes {sorted(cfgs)}")
    T, fs = cfgs.pop()

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        raw = load_test_data(data, int(records), int(seed), T, fs, rate_profile)
        n = raw["ppg"].shape[0]
        prep = prepare(raw)
        ppg, demo, mask = prep["ppg"], prep["demo"], prep["demo_mask"]
        true = np.asarray(raw["ecg"], dtype=np.float64)
        labels = np.asarray(raw.get("rhythm", np.array(["?"] * n))).astype(str)
        groups = np.array([rhythm_group(s) for s in labels])
        true_cache = M.measure(true, fs)
        src = derangement(n, seed) if n > 1 else np.arange(n)
        demo_sh, mask_sh = demo[src], mask[src]
        ann = M.annotated_beats(raw["r_peaks"], n) if raw.get("r_peaks") is not None else None
        subj = raw.get("subject")
        subj = None if subj is None or np.shape(subj) != (n,) else np.asarray(subj)
        clusters = subj if subj is not None else np.arange(n)  # no subject ids: every window alone
        extra: dict[str, Any] = {}

        for e in (entries[b] for b in bases):  # untimed warm-up (first-call allocations, kernel selection)
            sample(
                e.model,
                e.schedule,
                ppg[:1],
                (demo[:1], mask[:1]),
                steps=1,
                k=1,
                generator=torch.Generator().manual_seed(0),
                keep_samples=False,
            )

        out_models: dict[str, dict[str, Any]] = {}
        werr: dict[str, dict[str, np.ndarray]] = {}
        kruns: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}

        def krun(name: str) -> tuple[np.ndarray, np.ndarray, float]:
            if name not in kruns:
                kruns[name] = sample_windows(
                    entries[name],
                    ppg,
                    demo,
                    mask,
                    steps=steps,
                    k=k,
                    batch=batch,
                    seed=seed,
                    desc=f"{name} k={k}",
                    progress=progress,
                )
            return kruns[name]

        def finish(
            name: str,
            base: str,
            recon: np.ndarray,
            secs: float,
            samples: int,
            dm: torch.Tensor,
            unc: dict[str, float] | None = None,
        ) -> None:
            row, werr[name] = score(true, recon, fs, true_cache, groups, ann=ann)
            row["ms_per_window"] = 1000.0 * secs / n
            row.update(
                base_model=base,
                samples_per_window=samples,
                diffusion=entries[base].model_config.diffusion,
                targets_sha1=_sha1(true.astype(np.float32)),
                ppg_sha1=_sha1(ppg.numpy()),
                demo_sha1=_sha1(dm.numpy()),
            )
            if unc is not None:
                row.update(unc)
            # headline metrics first, then the rest
            out_models[name] = {**{m: row.pop(m) for m in HEADLINE}, **row}

        def floor(name: str) -> None:
            t0 = time.perf_counter()
            if name == "zero":
                recon = B.zero_ecg(n, T)
            else:
                tpl = B.build_template(
                    fs, T, seed=B.TEMPLATE_SEED, source=data if data in ("sim", "fake") else "sim"
                )
                extra["template"] = tpl.describe()
                t0 = time.perf_counter()  # the build (train split, cached) is not per-window work
                recon = B.template_ecg(tpl, np.asarray(raw["ppg"]), fs)
            secs = time.perf_counter() - t0
            row, werr[name] = score(true, recon, fs, true_cache, groups, ann=ann)
            row["ms_per_window"] = 1000.0 * secs / n
            row.update(
                base_model=None,
                floor=True,
                samples_per_window=1,
                diffusion="none",
                targets_sha1=_sha1(true.astype(np.float32)),
                ppg_sha1=_sha1(ppg.numpy()),
            )
            out_models[name] = {**{m: row.pop(m) for m in HEADLINE}, **row}

        for name in rows:
            if name in FLOORS:
                floor(name)
                continue
            if name == MEAN_OF_K:
                mk, sk, secs = krun("p2es")
                unc = uncertainty_stats(true, mk, mk, sk) if k > 1 else None
                finish(name, "p2es", mk, secs, k, demo, unc)
                continue
            base = "p2es" if name == SHUFFLED else name
            e = entries[base]
            dv, dm = (demo_sh, mask_sh) if name == SHUFFLED else (demo, mask)
            recon, _, secs = sample_windows(
                e, ppg, dv, dm, steps=steps, k=1, batch=batch, seed=seed, desc=name, progress=progress
            )
            unc = None
            if (
                e.model_config.diffusion != "none"
                and k > 1
                and name != SHUFFLED
                and (uncertainty or base == "p2es")
            ):
                mk, sk, _ = krun(base)
                unc = uncertainty_stats(true, recon, mk, sk)
            finish(name, base, recon, secs, 1, dv, unc)
            if name in reps:  # the same recipe, other training seeds: one row, mean and sd
                seed_rows = {name: out_models[name]}
                seed_werr = [werr[name]]
                for rep in reps[name][1:]:
                    r_recon, _, r_secs = sample_windows(
                        entries[rep],
                        ppg,
                        demo,
                        mask,
                        steps=steps,
                        k=1,
                        batch=batch,
                        seed=seed,
                        desc=rep,
                        progress=progress,
                    )
                    r_row, r_werr = score(true, r_recon, fs, true_cache, groups, ann=ann)
                    r_row["ms_per_window"] = 1000.0 * r_secs / n
                    seed_rows[rep] = {**{m: r_row.pop(m) for m in HEADLINE}, **r_row}
                    seed_werr.append(r_werr)
                out_models[name] = seed_aggregate(seed_rows)
                werr[name] = {m: _nanmean_rows([w[m] for w in seed_werr]) for m in seed_werr[0]}
        if "p2es" in werr:
            for name, diffs in paired_vs("p2es", werr, groups, clusters).items():
                out_models[name]["paired_vs_p2es"] = diffs
            for name, diffs in paired_vs("p2es", werr, groups).items():
                out_models[name]["paired_vs_p2es_window"] = diffs
        if ann is not None:  # the same detector on the true lead II: what any row can reach
            extra["beat_ceiling_true_ecg"] = beat_scores(true, ann, groups, fs)
    finally:
        torch.set_num_threads(old_threads)

    fd_batch = next(iter(out_models.values()))["fd_batch"] if out_models else 0
    result = {
        "models": out_models,
        "records": int(n),
        "seed": int(seed),
        "steps": int(steps),
        "k": int(k),
        "batch": int(batch),
        "threads": int(threads if threads is not None else old_threads),
        "fs": float(fs),
        "T": int(T),
        "fd_batch": int(fd_batch),
        "checkpoint": os.fspath(checkpoint),
        "data": raw["_desc"],
        "rhythm_counts": {g: int((groups == g).sum()) for g in GROUP_ORDER},
        "demographics_permutation": "derangement (random cycle), seed-fixed",
        "checkpoint_meta": {
            b: _clean({kk: entries[b].meta.get(kk) for kk in ("steps", "variant") if kk in entries[b].meta})
            for b in bases
        },
        "beat_matching": None
        if ann is None
        else {
            "annotations": "r_peaks of the test records (simulator's annotated beats, sample indices)",
            "detector": "p2es.signal.detect_r_peaks on lead II",
            "tolerance_s": M.BEAT_TOL_S,
            "edge_s": M.BEAT_EDGE_S,
            "matching": "one-to-one, greedy by distance; counted only beats >= edge_s from both ends",
            "hr": "60 / mean RR of the counted beats (annotations vs detections)",
        },
        "paired_bootstrap": {
            "paired_vs_p2es": f"cluster bootstrap: {'subjects' if subj is not None else 'windows'} "
            "resampled with replacement, all their windows taken",
            "paired_vs_p2es_window": "window bootstrap (windows resampled independently), as before",
            "clusters": int(np.unique(clusters).size),
            "n_boot": 2000,
        },
        **extra,
        "seconds": time.perf_counter() - t_start,
    }
    seeds: dict[str, Any] = {
        b: entries[b].meta["seed"] for b in bases if isinstance(entries[b].meta.get("seed"), int)
    }
    for b, members in reps.items():
        seeds[b] = [entries[r].meta.get("seed") for r in members]
    if seeds:
        result["train_seeds"] = seeds
    cleaned: dict[str, Any] = _clean(result)
    return cleaned


# --------------------------------------------------------------------------- reporting

_COLS = (
    ("rmse", "RMSE mV", -1, 4),
    ("mae", "MAE mV", -1, 4),
    ("pearson", "Pearson r", 1, 3),
    ("prd", "PRD %", -1, 1),
    ("fd", "FD", -1, 2),
    ("hr_mae_bpm", "HR MAE bpm", -1, 2),
    ("hr_mae_ann_bpm", "HR MAE ann bpm", -1, 2),
    ("beat_f1", "beat F1", 1, 3),
    ("qrs_ms_mae", "QRS MAE ms", -1, 1),
    ("qt_ms_mae", "QT MAE ms", -1, 1),
    ("spectral_distance", "spec dB", -1, 2),
    ("ms_per_window", "ms/window", -1, 1),
)


def markdown_table(result: dict[str, Any]) -> str:
    """One row per model, the headline columns; best value of each column in bold."""
    models = result.get("models", {})
    best = {}
    for key, _, sign, _ in _COLS:
        vals = [r.get(key) for r in models.values() if isinstance(r.get(key), (int, float))]
        best[key] = (max(vals) if sign > 0 else min(vals)) if vals else None
    head = "| model | " + " | ".join(c[1] for c in _COLS) + " |"
    sep = "|---|" + "|".join("---:" for _ in _COLS) + "|"
    lines = [head, sep]
    for name, r in models.items():
        cells = []
        for key, _, _, nd in _COLS:
            v = r.get(key)
            if not isinstance(v, (int, float)):
                cells.append("-")
                continue
            s = f"{v:.{nd}f}"
            cells.append(f"**{s}**" if best[key] is not None and f"{best[key]:.{nd}f}" == s else s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeded = [(n, r) for n, r in models.items() if r.get("seeds")]
    if seeded:
        lines += [
            "",
            "Rows trained with several seeds show the mean over the seeds above; their sd over the "
            "seeds (the JSON has every seed's numbers under `seeds`, the seeds under `train_seeds`):",
            "",
            "| model (seeds) | " + " | ".join(c[1] for c in _COLS) + " |",
            "|---|" + "|".join("---:" for _ in _COLS) + "|",
        ]
        tseeds = result.get("train_seeds") or {}
        for n, r in seeded:
            got = tseeds.get(n)
            ids = got if isinstance(got, list) else list(r["seeds"])
            cells = [_fmt(r.get(f"{key}_sd"), nd + 1) for key, _, _, nd in _COLS]
            lines.append(f"| {n} ({', '.join(str(i) for i in ids)}) | " + " | ".join(cells) + " |")
    paired = [(n, r["paired_vs_p2es"]) for n, r in models.items() if r.get("paired_vs_p2es")]
    if paired:
        lines += [
            "",
            "Paired vs p2es on the same windows: mean (model - p2es) of the per-window absolute "
            "error, [95 % subject-clustered bootstrap interval: subjects resampled with all their "
            "windows; rows with seed replicas: every seed pair on the same windows]; > 0 means p2es "
            "is better, an interval without 0 a difference beyond chance.",
            "",
            "| model | HR bpm | QRS ms | QT ms |",
            "|---|---:|---:|---:|",
        ]
        for n, pv in paired:
            cells = []
            for m, nd in (("hr_mae_bpm", 2), ("qrs_ms_mae", 1), ("qt_ms_mae", 1)):
                d = pv.get(m) or {}
                v, (lo, hi) = d.get("diff"), (d.get("ci95") or [None, None])
                ok = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (v, lo, hi))
                cells.append(f"{v:+.{nd}f} [{lo:+.{nd}f}, {hi:+.{nd}f}]" if ok else "-")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += _beat_table(result)
    foot = (
        f"\n{result.get('records')} held-out records (seed {result.get('seed')}), {result.get('steps')} steps, "
        f"k = {result.get('k')}, FD batch {result.get('fd_batch')} x 512 samples, "
        f"{result.get('threads')} thread(s)."
    )
    return "\n".join(lines) + foot


def _fmt(v: Any, nd: int) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _beat_table(result: dict[str, Any]) -> list[str]:
    """Beat F1 per rhythm group (rows) for every model and the detector ceiling (columns)."""
    ceil = result.get("beat_ceiling_true_ecg")
    if not ceil:
        return []
    cols = [(n, r) for n, r in result.get("models", {}).items() if "beat_f1" in r] + [("true ECG", ceil)]
    m = result.get("beat_matching") or {}
    lines = [
        "",
        "Beats vs the simulator's annotated R peaks: detect_r_peaks on lead II, one-to-one match "
        f"within +-{1000 * m.get('tolerance_s', M.BEAT_TOL_S):.0f} ms, beats within "
        f"{m.get('edge_s', M.BEAT_EDGE_S):g} s of a window end not counted; F1 (sensitivity / PPV). "
        "`true ECG` = the same detector on the true lead II (the ceiling).",
        "",
        "| rhythm | " + " | ".join(n for n, _ in cols) + " |",
        "|---|" + "|".join("---:" for _ in cols) + "|",
    ]
    counts = result.get("rhythm_counts", {})
    for g in ("all", *GROUP_ORDER):
        src = [r if g == "all" else (r.get("per_rhythm") or {}).get(g) for _, r in cols]
        if not any(src):
            continue
        cells = [
            f"{_fmt(d.get('beat_f1'), 3)} ({_fmt(d.get('beat_sensitivity'), 3)} / {_fmt(d.get('beat_ppv'), 3)})"
            if d
            else "-"
            for d in src
        ]
        label = g if g == "all" else f"{g} ({counts.get(g, '?')})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    hr = ceil.get("hr_mae_ann_bpm")
    lines += ["", f"Detector ceiling on the true lead II: HR MAE vs annotations {_fmt(hr, 2)} bpm."]
    return lines


def save_json(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps(result, indent=2, allow_nan=False) + "\n")
    except OSError as e:
        raise P2esError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def figure(
    checkpoint: str | os.PathLike[str] | None = None,
    out_png: str | Path = "eval.png",
    seed: int = 0,
    *,
    index: int = 0,
    model: str = "p2es",
    steps: int = 10,
    k: int = 4,
    data: str = "sim",
    threads: int | None = None,
) -> Path:
    """True vs reconstructed 12-lead ECG of held-out record ``index`` on ECG paper, with the
    uncertainty band mean +- 2 std of ``k`` samples (the plotted trace is their mean)."""
    from p2es.plot import plot_ecg_paper  # lazy: p2es.plot imports matplotlib (heavy)

    checkpoint = DEFAULT_CHECKPOINT if checkpoint is None else checkpoint
    if index < 0 or steps < 1 or k < 1:
        raise P2esError("figure: index must be >= 0, steps and k >= 1")
    e = ckpt.load_model(checkpoint, model)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        raw = load_test_data(data, index + 1, int(seed), e.model_config.T, e.model_config.fs)
        d = prepare({kk: v for kk, v in raw.items() if kk != "_desc"})
        sl = slice(index, index + 1)
        r = sample(
            e.model,
            e.schedule,
            d["ppg"][sl],
            (d["demo"][sl], d["demo_mask"][sl]),
            steps=steps,
            k=k,
            generator=torch.Generator().manual_seed(int(seed)),
            keep_samples=False,
        )
    finally:
        torch.set_num_threads(old)
    mean, std = r.mean[0].numpy().astype(np.float64), r.std[0].numpy().astype(np.float64)
    true = np.asarray(raw["ecg"][index], dtype=np.float64)
    band = (mean - 2 * std, mean + 2 * std) if e.model_config.diffusion != "none" and k > 1 else None

    def meta(key: str, fmt: str = "{}") -> str | None:
        v = raw.get(key)
        return None if v is None else fmt.format(np.asarray(v)[index])

    bits = [
        meta("rhythm", "rhythm {}"),
        meta("age", "age {:.0f}"),
        None
        if raw.get("sex") is None
        else ("sex " + {0: "F", 1: "M"}.get(int(np.asarray(raw["sex"])[index]), "?")),
        meta("height_cm", "{:.0f} cm"),
        meta("weight_kg", "{:.0f} kg"),
    ]
    fs = e.model_config.fs
    sub = ", ".join(b for b in bits if b)
    sub += (
        f"  |  RMSE {float(np.sqrt(((mean - true) ** 2).mean())):.3f} mV, band = mean +- 2 std of {k} samples"
    )
    return plot_ecg_paper(
        mean,
        fs,
        out_png,
        reference=true,
        band=band,
        ppg=np.asarray(raw["ppg"][index]),
        title=f"{model}: held-out record {index} (test seed {seed})",
        subtitle=sub,
        disclaimer=DISCLAIMER,
    )
