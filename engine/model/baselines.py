"""Floor rows of ``p2es eval``: reconstructions any learned model must beat.

* ``zero``: an all-zero 12-lead output (mV).  Its RMSE is the RMS of the true ECG; Pearson r
  and HR are undefined for it (NaN / None in the report, never an error).
* ``template``: a population-mean 12-lead beat placed at the beats found in the PPG.

The template and the mean pulse arrival time come from the **train split only**:
``engine.model.data.fixed_set("train", records, seed)`` (simulator seed
``split_seed("train", seed, 0)`` = the first chunk of training seed ``seed``, generated with
the settings training uses: the window length and rate of the models, the default noise, and
``noisy_ecg=False``, and the heart-rate profile of the test records), never from the test split
that is being scored.

Build (:func:`build_template`):

1. every annotated R peak (``r_peaks``) of every training record whose window
   ``[-pre_s, +post_s]`` (default -0.25 .. +0.45 s) lies inside the record cuts one beat of the
   true ECG's 8 independent leads (I, II, V1..V6, mV); the beats are averaged (all rhythms,
   all beat types: a population mean), each end is tapered to 0 with a raised-cosine ramp of
   ``taper_s`` (0.05 s) so that overlapping copies add without steps, and the 12 leads are
   derived with ``p2es.leads.derive_12`` (Einthoven's and Goldberger's laws hold exactly);
2. pulse arrival time (PAT): ``p2es.signal.detect_ppg_beats`` on the same training records'
   (noisy) PPG gives the pulse feet; for each annotated R peak the first foot after it, when
   it comes within ``pat_max_s`` (0.6 s; a longer delay means that foot was missed), gives
   one delay; PAT = the mean of those delays.

Placement (:func:`template_ecg`): ``detect_ppg_beats`` on each test window's PPG; one copy of
the template is centred (its R sample) at ``foot - round(PAT * fs)`` for every foot, and
overlapping copies are **added** (overlap-add; at high rates the T wave of one copy meets the
tapered P wave of the next).  Copies are clipped at the window ends; beats whose foot the
detector does not report (a pulse cut by the window end, typically the last beat) get no copy:
no extrapolation.  A window without feet stays all zero.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.model import data as D
from p2es.errors import P2esError
from p2es.leads import derive_12, independent_of
from p2es.signal import detect_ppg_beats
from wearable.sim.rates import DEFAULT_RATE_PROFILE

FLOORS = ("zero", "template")
TEMPLATE_RECORDS = 256  # one training chunk
TEMPLATE_SEED = 0  # train seed: split_seed("train", 0, 0), the first chunk of training seed 0
PRE_S = 0.25
POST_S = 0.45
TAPER_S = 0.05
PAT_MAX_S = 0.6


@dataclass(frozen=True)
class Template:
    """A population-mean beat and the mean pulse arrival time (from the train split)."""

    beat12: np.ndarray = field(repr=False)  # [12, L] mV, R peak at index ``pre``
    pre: int  # samples before the R peak
    pat_s: float  # mean delay R peak -> next PPG foot (s)
    fs: float
    T: int
    records: int  # training records used
    n_beats: int  # beats averaged
    n_pat: int  # R -> foot delays averaged
    sim_seeds: tuple[int, ...]  # simulator seeds the training records came from
    split: str
    source: str
    rate_profile: str = DEFAULT_RATE_PROFILE

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (for the evaluation result)."""
        return {
            "split": self.split,
            "source": self.source,
            "rate_profile": self.rate_profile,
            "sim_seeds": list(self.sim_seeds),
            "records": self.records,
            "beats": self.n_beats,
            "window_s": [-self.pre / self.fs, (self.beat12.shape[-1] - 1 - self.pre) / self.fs],
            "pat_s": self.pat_s,
            "pat_beats": self.n_pat,
            "placement": "overlap-add at PPG foot - PAT (p2es.signal.detect_ppg_beats feet)",
        }


def zero_ecg(n: int, T: int) -> np.ndarray:
    """The ``zero`` floor: [n, 12, T] zeros (mV)."""
    return np.zeros((int(n), 12, int(T)), dtype=np.float64)


def _taper(length: int, ramp: int) -> np.ndarray:
    w = np.ones(length)
    ramp = min(max(ramp, 0), length // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        w[:ramp] = r
        w[length - ramp :] = r[::-1]
    return w


def train_records(
    records: int, seed: int, T: int, fs: float, source: str = "sim", rate_profile: str = DEFAULT_RATE_PROFILE
) -> dict[str, Any]:
    """The training records the template is built from (train split only; ``rate_profile``:
    the simulator's heart-rate profile, that of the test records being scored)."""
    if not (0 <= int(seed) < 100):
        raise P2esError(f"template train seed must be in 0..99, got {seed}")
    kw: dict[str, Any] = {"duration_s": T / fs, "fs": fs}
    if source == "sim" and "noisy_ecg" in inspect.signature(D.get_synthesize("sim")).parameters:
        kw["noisy_ecg"] = False
    if rate_profile != DEFAULT_RATE_PROFILE:  # the default keeps the stand-in's call unchanged
        kw["rate_profile"] = rate_profile
    return D.fixed_set("train", int(records), int(seed), source=source, **kw)


def _build(
    raw: dict[str, Any], fs: float, T: int, pre_s: float, post_s: float, taper_s: float, pat_max_s: float
) -> tuple[np.ndarray, int, float, int, int]:
    ecg = np.asarray(raw["ecg"], dtype=np.float64)
    if ecg.ndim != 3 or ecg.shape[1] != 12 or ecg.shape[-1] != T:
        raise P2esError(f"training ECG has shape {ecg.shape}, want [N, 12, {T}]")
    if raw.get("r_peaks") is None:
        raise P2esError("training records have no annotated 'r_peaks'; cannot build the template")
    ecg8 = independent_of(ecg, axis=1)
    ann = [np.sort(r[r >= 0].astype(np.int64)) for r in np.asarray(raw["r_peaks"])]
    pre, post = int(round(pre_s * fs)), int(round(post_s * fs))
    offs = np.arange(-pre, post + 1)
    total = np.zeros((8, offs.size))
    n_beats = 0
    delays: list[np.ndarray] = []
    ppg = np.asarray(raw["ppg"], dtype=np.float64)
    for i, r in enumerate(ann):
        full = r[(r - pre >= 0) & (r + post < T)]
        if full.size:
            total += ecg8[i][:, full[:, None] + offs[None, :]].sum(axis=1)
            n_beats += int(full.size)
        feet = detect_ppg_beats(ppg[i], fs)["feet"]
        if feet.size and r.size:
            j = np.searchsorted(feet, r, side="right")
            has = j < feet.size
            dl = (feet[j[has]] - r[has]) / fs
            delays.append(dl[dl <= pat_max_s])
    if n_beats == 0:
        raise P2esError("no complete annotated beat in the training records")
    dl_all = np.concatenate(delays) if delays else np.zeros(0)
    if dl_all.size == 0:
        raise P2esError("no R peak -> PPG foot delay found in the training records")
    beat8 = total / n_beats * _taper(offs.size, int(round(taper_s * fs)))[None, :]
    return derive_12(beat8, axis=0), pre, float(dl_all.mean()), n_beats, int(dl_all.size)


@lru_cache(maxsize=4)
def build_template(
    fs: float,
    T: int,
    *,
    seed: int = 0,
    records: int = TEMPLATE_RECORDS,
    source: str = "sim",
    pre_s: float = PRE_S,
    post_s: float = POST_S,
    taper_s: float = TAPER_S,
    pat_max_s: float = PAT_MAX_S,
    rate_profile: str = DEFAULT_RATE_PROFILE,
) -> Template:
    """Population-mean 12-lead beat and mean PAT from ``records`` training records of train
    seed ``seed`` (see the module docstring), drawn with the simulator's ``rate_profile`` (that
    of the test records: a floor built at other rates would be a weaker floor).  Cached (4
    entries) by its arguments; the returned arrays are read-only."""
    raw = train_records(records, seed, T, fs, source, rate_profile)
    beat12, pre, pat, nb, npat = _build(raw, float(fs), int(T), pre_s, post_s, taper_s, pat_max_s)
    beat12 = np.ascontiguousarray(beat12, dtype=np.float64)
    beat12.setflags(write=False)
    return Template(
        beat12=beat12,
        pre=pre,
        pat_s=pat,
        fs=float(fs),
        T=int(T),
        records=int(np.asarray(raw["ecg"]).shape[0]),
        n_beats=nb,
        n_pat=npat,
        sim_seeds=(D.split_seed("train", seed, 0),),
        split="train",
        source=source,
        rate_profile=rate_profile,
    )


def place_template(tpl: Template, r_est: npt.ArrayLike, T: int) -> np.ndarray:
    """One window [12, T]: the template overlap-added with its R sample at each of ``r_est``."""
    out = np.zeros((12, int(T)))
    L = tpl.beat12.shape[-1]
    for r in np.asarray(r_est, dtype=np.int64).reshape(-1):
        s = int(r) - tpl.pre
        a, b = max(0, s), min(int(T), s + L)
        if a < b:
            out[:, a:b] += tpl.beat12[:, a - s : b - s]
    return out


def template_ecg(tpl: Template, ppg: npt.ArrayLike, fs: float) -> np.ndarray:
    """The ``template`` floor for PPG windows [N, T]: [N, 12, T] mV (see the module docstring)."""
    x = np.asarray(ppg, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ppg must be [N, T], got {x.shape}")
    if not math.isclose(float(fs), tpl.fs):
        raise P2esError(f"template built at {tpl.fs:g} Hz, PPG at {fs:g} Hz")
    shift = int(round(tpl.pat_s * fs))
    out = np.zeros((x.shape[0], 12, x.shape[1]))
    for i in range(x.shape[0]):
        feet = detect_ppg_beats(x[i], fs)["feet"]
        out[i] = place_template(tpl, feet - shift, x.shape[1])
    return out
