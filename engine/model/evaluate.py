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
* every model samples at its own checkpoint entry's initial-noise temperature
  (``sampler_config``, :class:`engine.model.config.SamplerConfig`; 1 when the set has none),
  recorded per row as ``temperature`` (the base model's for the derived rows; the regression
  models have no initial noise, theirs is recorded as stored); the table's footer names the
  models whose temperature is not 1.
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
  if independent; same point estimates).  With annotated beats the comparison also covers
  ``hr_mae_ann_bpm`` (per-window |HR of the annotations - HR of the detections|) and
  ``beat_f1`` (F1(p2es) - F1(row): pooled F1 re-computed from the drawn windows' beat counts,
  > 0 = p2es better like the errors).  FD is a distribution distance with no per-window value:
  ``fd_interval=True`` adds ``"fd"`` (FD(row) - FD(p2es)) with a delete-one-subject jackknife
  interval that re-fits the Gaussians without each subject in turn (:func:`fd_paired`; costly,
  off by default).
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
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample every window in batches: (mean [N,12,T], std [N,12,T], seconds).  ``eta``,
    ``spacing`` and ``temperature``: the sampler's (:func:`engine.model.sampler.sample`; defaults = DDIM on the
    uniform grid, what ``p2es eval`` uses); ``temperature`` None = the entry's
    ``sampler_config.temperature``, an explicit value wins."""
    if temperature is None:
        temperature = entry.sampler_config.temperature
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
                temperature=temperature,
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


BEAT_COUNTS = "beat_counts"  # per-window (TP, FN, FP) [N, 3] in score()'s window evidence
PAIRED_WINDOW_METRICS = (*M.WINDOW_METRICS, "hr_mae_ann_bpm")


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
    labels: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score one model's reconstructions: (metrics row with ``per_rhythm``, per-window errors for
    the paired comparison).  ``true_cache`` = ``metrics.measure(true, fs)``; ``groups`` = the
    windows' :func:`rhythm_group`.  With the windows' annotated R peaks ``ann``
    (:func:`engine.model.metrics.annotated_beats`) the row (and each rhythm group) also gets
    the :data:`BEAT_METRICS` of lead II of ``recon`` against them, and with the windows' rhythm
    ``labels`` those per label too (``per_label``: the gates name sinus, bradycardia and
    tachycardia apart)."""
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
    werr = M.window_errors(true_cache, rc)
    if ann is not None:
        T = int(recon.shape[-1])
        det = M.detect_windows(recon, fs)
        beats = beat_scores(recon, ann, groups, fs, det=det, labels=labels)
        for g, v in beats.pop("per_rhythm").items():
            per_rhythm[g].update(v)
        row.update(beats)  # per_label (when labels are given) stays a key of the row
        werr["hr_mae_ann_bpm"] = M.hr_ann_window_errors(ann, det, T, fs)
        werr[BEAT_COUNTS] = M.beat_counts(ann, det, T, fs)
    row["per_rhythm"] = per_rhythm
    return row, werr


def beat_scores(
    ecg: np.ndarray,
    ann: list[np.ndarray],
    groups: np.ndarray,
    fs: float,
    *,
    det: list[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`engine.model.metrics.beat_metrics` of ``detect_r_peaks`` on lead II of ``ecg``
    [N, 12, T] against the annotated R peaks ``ann``, overall and ``per_rhythm`` (``det``: the
    detections when the caller has them); with the windows' rhythm ``labels`` also
    ``per_label`` ({label: metrics, "n": windows})."""
    T = int(ecg.shape[-1])
    det = M.detect_windows(ecg, fs) if det is None else det
    out = M.beat_metrics(ann, det, T, fs)
    per: dict[str, dict[str, Any]] = {}
    for g in GROUP_ORDER:
        idx = np.flatnonzero(groups == g)
        if idx.size:
            per[g] = M.beat_metrics([ann[i] for i in idx], [det[i] for i in idx], T, fs)
    out["per_rhythm"] = per
    if labels is not None:
        lab = np.asarray(labels).astype(str)
        out["per_label"] = {
            str(v): {
                **M.beat_metrics([ann[i] for i in idx], [det[i] for i in idx], T, fs),
                "n": int(idx.size),
            }
            for v in sorted(set(lab.tolist()))
            for idx in [np.flatnonzero(lab == v)]
        }
    return out


WindowEvidence = dict[str, np.ndarray]  # one replica's per-window errors (and beat counts) from score()


def _replicas(e: WindowEvidence | Sequence[WindowEvidence]) -> list[WindowEvidence]:
    return [e] if isinstance(e, dict) else list(e)


def paired_vs(
    ref: str,
    werr: dict[str, WindowEvidence] | dict[str, list[WindowEvidence]],
    groups: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
) -> dict[str, dict[str, Any]]:
    """For every other row: ``{metric: paired_difference(row, ref)}`` (> 0: ``ref`` better),
    plus ``"per_rhythm": {group: {metric: ...}}`` when the windows' rhythm ``groups`` are given.
    With ``clusters`` (one id per window, e.g. the subject) the interval resamples clusters
    (:func:`engine.model.metrics.paired_difference_clustered`), else windows.

    ``werr[name]`` is what :func:`score` returned for the row, or a list of them, one per seed
    replica: the window errors (:data:`PAIRED_WINDOW_METRICS` present in both rows) are
    averaged over the replicas, so every seed of the row is paired with every seed of ``ref``.
    When both rows have beat counts, ``"beat_f1"`` is F1(ref) - F1(row) (each the mean over its
    replicas of the pooled F1; > 0: ``ref`` better, like the errors) with the same bootstrap:
    clusters (or windows) resampled, F1 re-pooled from the drawn windows."""
    reps = {name: _replicas(e) for name, e in werr.items()}
    ref_reps = reps[ref]
    n = next(iter(ref_reps[0].values())).shape[0]
    cl = np.arange(n) if clusters is None else np.asarray(clusters)
    mean_err = {
        name: {m: _nanmean_rows([r[m] for r in rs]) for m in PAIRED_WINDOW_METRICS if all(m in r for r in rs)}
        for name, rs in reps.items()
    }

    def diff(a: np.ndarray, b: np.ndarray, sel: np.ndarray | None = None) -> dict[str, Any]:
        if sel is not None:
            a, b = a[sel], b[sel]
        if clusters is None:
            return M.paired_difference(a, b, n_boot=n_boot)
        return M.paired_difference_clustered(a, b, cl if sel is None else cl[sel], n_boot=n_boot)

    def f1_diff(rs: list[WindowEvidence], sel: np.ndarray) -> dict[str, Any]:
        w = M.cluster_weights(cl[sel], n_boot=n_boot, seed=0)
        one = np.ones((1, int(sel.size)))

        def f1(reps_: list[WindowEvidence], wts: np.ndarray) -> np.ndarray:
            vals: np.ndarray = np.mean([M.f1_weighted(r[BEAT_COUNTS][sel], wts) for r in reps_], axis=0)
            return vals

        point = float(f1(ref_reps, one)[0] - f1(rs, one)[0])
        return M.boot_interval(point, f1(ref_reps, w) - f1(rs, w))

    has_beats = all(BEAT_COUNTS in r for r in ref_reps)
    everything = np.arange(n)
    out: dict[str, dict[str, Any]] = {}
    for name, rs in reps.items():
        if name == ref:
            continue
        ms = [m for m in mean_err[name] if m in mean_err[ref]]
        beats = has_beats and all(BEAT_COUNTS in r for r in rs)
        row: dict[str, Any] = {m: diff(mean_err[name][m], mean_err[ref][m]) for m in ms}
        if beats:
            row["beat_f1"] = f1_diff(rs, everything)
        if groups is not None:
            per: dict[str, dict[str, Any]] = {}
            for g in GROUP_ORDER:
                sel = np.flatnonzero(groups == g)
                if sel.size == 0:
                    continue
                per[g] = {m: diff(mean_err[name][m], mean_err[ref][m], sel) for m in ms}
                if beats:
                    per[g]["beat_f1"] = f1_diff(rs, sel)
            row["per_rhythm"] = per
        out[name] = row
    return out


def fd_paired(
    ref: str,
    true: np.ndarray,
    recons: dict[str, list[np.ndarray]],
    fd_values: dict[str, float],
    clusters: np.ndarray,
    *,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Subject-level paired interval of FD against ``ref``: ``{row: {"diff", "ci95", "se",
    "method", "n_jack"}}`` with diff = FD(row) - FD(ref) (> 0: ``ref`` better), FD being the mean
    over a row's seed replicas (``recons[row]``, each [N, 12, T] on the same windows as
    ``true``) and ``fd_values`` the table's values (the point estimates).

    Delete-one-subject jackknife: each of the K subjects is left out once with all its windows,
    every row's Gaussians are re-fitted to the rest (:func:`engine.model.metrics.fd_weighted`),
    so the rows stay paired; se = sqrt((K-1)/K * sum (d_j - mean d)^2), interval diff +- 1.96 se.
    Not the cluster bootstrap of the per-window metrics: FD has no per-window value, and a
    bootstrap draw repeats windows, which shrinks the effective sample the covariances are fitted
    to and shifts FD itself (on the 512-record test split the percentile interval of the DDPM's FD
    gap did not even contain the gap).  Costly: ~20 ms per lead, replica and subject."""
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = int(inv.max()) + 1 if inv.size else 0
    names = list(recons)
    nan = {"diff": math.nan, "ci95": [math.nan, math.nan], "se": math.nan, "n_jack": k}
    if k < 2:
        return {nm: {**nan, "method": "subject jackknife"} for nm in names if nm != ref}
    flat = [r for nm in names for r in recons[nm]]
    w = (inv[None, :] != np.arange(k)[:, None]).astype(np.float64)  # [K, N]: subject j left out
    bar = tqdm(
        total=k, desc=f"FD jackknife ({len(flat)} reconstructions)", unit="subject", disable=not progress
    )
    parts = []
    for c in np.array_split(np.arange(k), max(1, k // 8)):  # chunks pace the progress bar
        parts.append(M.fd_weighted(true, flat, w[c]))
        bar.update(len(c))
    bar.close()
    jack = np.concatenate(parts, axis=1)  # [replicas, K]
    per_row: dict[str, np.ndarray] = {}
    i = 0
    for nm in names:
        per_row[nm] = jack[i : i + len(recons[nm])].mean(axis=0)
        i += len(recons[nm])
    out: dict[str, dict[str, Any]] = {}
    for nm in names:
        if nm == ref:
            continue
        d = per_row[nm] - per_row[ref]
        diff = float(fd_values[nm] - fd_values[ref])
        se = float(np.sqrt((k - 1) / k * ((d - d.mean()) ** 2).sum())) if np.isfinite(d).all() else math.nan
        out[nm] = {
            "diff": diff,
            "ci95": [diff - 1.96 * se, diff + 1.96 * se],
            "se": se,
            "method": "subject jackknife",
            "n_jack": k,
        }
    return out


# --------------------------------------------------------------------------- evaluate


def trained_rate_profile(entries: dict[str, ckpt.Entry]) -> str:
    """The simulator heart-rate profile the models were trained on (``train_config``'s
    ``sim_rate_profile``; ``p2es``'s when present): what a test split for them is drawn with.
    Models without a recorded profile (trained before it existed) count as the default."""
    names = (["p2es"] if "p2es" in entries else []) + [n for n in entries if n != "p2es"]
    for n in names:
        tc = entries[n].train_config or {}
        if tc.get("sim_rate_profile"):
            return str(tc["sim_rate_profile"])
    return DEFAULT_RATE_PROFILE


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
    rate_profile: str | None = None,
    fd_interval: bool = False,
) -> dict[str, Any]:
    """Score every model of a checkpoint set on ``records`` held-out test windows.

    Returns ``{"models": {name: {metric: value, ..., "per_lead": ..., "per_rhythm": ...}},
    "records": N, "seed": K, "steps", "k", "batch", "threads", "fs", "T", "fd_batch",
    "checkpoint", "data", "seconds"}`` (JSON-safe: NaN -> None).
    ``models``: names (list or comma string) to evaluate, default all + derived rows.
    ``uncertainty=False`` skips the extra k-sample runs of the non-p2es diffusion models.
    ``rate_profile``: the simulator's heart-rate profile of the test records (``"wide"``: the
    data of models trained with ``--sim-rate-profile wide``); None = the profile the set's
    models were trained on (:func:`trained_rate_profile`) for ``data="sim"``, the default otherwise.
    ``fd_interval``: also the paired subject-level interval of FD vs ``p2es`` (:func:`fd_paired`,
    a delete-one-subject jackknife: every row's Gaussians re-fitted once per subject, ~20 ms per
    lead, seed replica and subject); it lands in ``paired_vs_p2es[row]["fd"]``.
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
    if rate_profile is None:  # profiles are the simulator's; the stand-in and .npz files have none
        rate_profile = trained_rate_profile(entries) if data == "sim" else DEFAULT_RATE_PROFILE

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
        werr: dict[str, list[WindowEvidence]] = {}  # per row: one entry per seed replica
        recons: dict[str, list[np.ndarray]] = {}  # kept only for the FD bootstrap
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
            row, w = score(true, recon, fs, true_cache, groups, ann=ann, labels=labels)
            werr[name] = [w]
            if fd_interval:
                recons[name] = [recon]
            row["ms_per_window"] = 1000.0 * secs / n
            row.update(
                base_model=base,
                samples_per_window=samples,
                diffusion=entries[base].model_config.diffusion,
                temperature=entries[base].sampler_config.temperature,
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
                    fs,
                    T,
                    seed=B.TEMPLATE_SEED,
                    source=data if data in ("sim", "fake") else "sim",
                    rate_profile=rate_profile,
                )
                extra["template"] = tpl.describe()
                t0 = time.perf_counter()  # the build (train split, cached) is not per-window work
                recon = B.template_ecg(tpl, np.asarray(raw["ppg"]), fs)
            secs = time.perf_counter() - t0
            row, w = score(true, recon, fs, true_cache, groups, ann=ann, labels=labels)
            werr[name] = [w]
            if fd_interval:
                recons[name] = [recon]
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
                    r_row, r_werr = score(true, r_recon, fs, true_cache, groups, ann=ann, labels=labels)
                    r_row["ms_per_window"] = 1000.0 * r_secs / n
                    seed_rows[rep] = {**{m: r_row.pop(m) for m in HEADLINE}, **r_row}
                    werr[name].append(r_werr)
                    if fd_interval:
                        recons[name].append(r_recon)
                out_models[name] = seed_aggregate(seed_rows)
        if "p2es" in werr:
            for name, diffs in paired_vs("p2es", werr, groups, clusters).items():
                out_models[name]["paired_vs_p2es"] = diffs
            for name, diffs in paired_vs("p2es", werr, groups).items():
                out_models[name]["paired_vs_p2es_window"] = diffs
            if fd_interval and len(recons) > 1:
                fds = {nm: float(out_models[nm]["fd"]) for nm in recons}
                try:
                    fdp = fd_paired("p2es", true, recons, fds, clusters, progress=progress)
                except ValueError as exc:  # window length not a multiple of the FD vector
                    fdp = {
                        nm: {"diff": math.nan, "ci95": [math.nan, math.nan], "n_jack": 0, "error": str(exc)}
                        for nm in recons
                        if nm != "p2es"
                    }
                for name, d in fdp.items():
                    out_models[name]["paired_vs_p2es"]["fd"] = d
        if ann is not None:  # the same detector on the true lead II: what any row can reach
            extra["beat_ceiling_true_ecg"] = beat_scores(true, ann, groups, fs, labels=labels)
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
        "rate_profile": rate_profile,
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
            "fd": "delete-one-subject jackknife, diff +- 1.96 se (when fd_interval)" if fd_interval else None,
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
            "error (HR against the annotated beats, HR against the detector on the true ECG, QRS, "
            "QT), beat F1 as F1(p2es) - F1(model), FD as FD(model) - FD(p2es) (`-` when "
            "`--fd-interval` is off; its interval is a delete-one-subject jackknife, diff +- 1.96 se), "
            "[95 % subject-clustered bootstrap interval: subjects "
            "resampled with all their windows; rows with seed replicas: every seed pair on the same "
            "windows]; > 0 means p2es is better, an interval without 0 a difference beyond chance.",
            "",
            "| model | HR ann bpm | HR bpm | beat F1 | FD | QRS ms | QT ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for n, pv in paired:
            cells = []
            for m, nd in PAIRED_COLS:
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
    return "\n".join(lines) + foot + _temperature_note(models)


def _temperature_note(models: dict[str, Any]) -> str:
    """Footer sentence naming the rows sampled at an initial-noise temperature other than 1
    ("" when there are none, so a table of default-sampled models reads as before)."""
    odd = [
        f"{n} {r['temperature']:g}"
        for n, r in models.items()
        if isinstance(r.get("temperature"), (int, float)) and r["temperature"] != 1.0
    ]
    return f" Initial-noise temperature (saved with the model): {', '.join(odd)}." if odd else ""


PAIRED_COLS = (
    ("hr_mae_ann_bpm", 2),
    ("hr_mae_bpm", 2),
    ("beat_f1", 3),
    ("fd", 2),
    ("qrs_ms_mae", 1),
    ("qt_ms_mae", 1),
)


def _fmt(v: Any, nd: int) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _beat_cell(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return (
        f"{_fmt(d.get('beat_f1'), 3)} ({_fmt(d.get('beat_sensitivity'), 3)} / {_fmt(d.get('beat_ppv'), 3)})"
    )


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
        cells = [_beat_cell(d) for d in src]
        label = g if g == "all" else f"{g} ({counts.get(g, '?')})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        members = RHYTHM_GROUPS.get(g, ())
        if len(members) > 1:  # the sinus family label by label (bradycardia, tachycardia)
            for lab in members:
                sub = [((r.get("per_label") or {}).get(lab)) for _, r in cols]
                if not any(sub):
                    continue
                n_lab = next((d.get("n") for d in sub if d), "?")
                if isinstance(n_lab, float):  # a seed-replica row averages its counts too
                    n_lab = round(n_lab)
                cells = [_beat_cell(d) for d in sub]
                lines.append(f"| · {lab} ({n_lab}) | " + " | ".join(cells) + " |")
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
    rate_profile: str | None = None,
) -> Path:
    """True vs reconstructed 12-lead ECG of held-out record ``index`` on ECG paper, with the
    uncertainty band mean +- 2 std of ``k`` samples (the plotted trace is their mean).
    ``rate_profile``: as :func:`evaluate` (None: the data the model was trained on).  Sampled
    at the model's saved temperature (``sampler_config``)."""
    from p2es.plot import plot_ecg_paper  # lazy: p2es.plot imports matplotlib (heavy)

    checkpoint = DEFAULT_CHECKPOINT if checkpoint is None else checkpoint
    if index < 0 or steps < 1 or k < 1:
        raise P2esError("figure: index must be >= 0, steps and k >= 1")
    e = ckpt.load_model(checkpoint, model)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        prof = rate_profile
        if prof is None:
            prof = trained_rate_profile({model: e}) if data == "sim" else DEFAULT_RATE_PROFILE
        raw = load_test_data(data, index + 1, int(seed), e.model_config.T, e.model_config.fs, prof)
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
            temperature=e.sampler_config.temperature,
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
