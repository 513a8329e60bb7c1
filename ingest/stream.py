"""Per-patient stream processing: reorder -> continuity -> resample -> windows (+ SQI).

Everything here is synchronous, deterministic numpy/scipy and knows nothing about MQTT, so it
is unit-testable on its own.  One :class:`PatientStream` per patient; a :class:`StreamRegistry`
holds them and expires idle ones.

Pipeline of one chunk (:meth:`PatientStream.push`)
--------------------------------------------------
1. **Reorder** by ``seq``.  A chunk is released when it is the next expected ``seq``; a
   missing ``seq`` is waited for until the held chunks exceed the budget (more than
   ``reorder_max_chunks`` chunks, ``reorder_max_samples`` samples, or ``reorder_max_s`` seconds
   of data beyond the stream's end), then skipped (``seq_skipped``).  Duplicates (a ``seq``
   held or recently released) and late chunks (older than what was released) are dropped.
   A stream's first chunk is released at once if its ``seq`` is 0, otherwise it waits for the
   budget (the missing predecessors may still come).  A ``seq`` lower than expected whose
   ``t0`` is newer than everything held is a device counter reset: held chunks are flushed
   and numbering restarts.  ``flush`` (called by the registry when a patient has sent nothing
   for ``reorder_wait_s`` of wall time) releases whatever is held.
2. **Continuity** from ``t0``/``fs``.  The stream clock is the sample count: sample ``k`` of a
   segment is at ``t0_segment + k / fs_device``.  A chunk whose ``t0`` is within
   ``max(time_tol_s, 0.5 / fs)`` of the expected continuation is contiguous (device timestamp
   jitter is ignored).  A later ``t0`` by at most ``max_fill_gap_s`` is a short gap: the
   missing ``round(gap * fs)`` samples are filled by linear interpolation and counted
   (``gaps_filled``; the window reports them in ``gaps``).  A longer gap, or a change of
   ``fs``, ends the segment: the stream restarts at the new chunk (new ``segment``, window
   index 0, fresh resampler), so **a window never spans a long gap**; the partial
   window before it is not emitted.  An earlier ``t0`` (overlap) trims the overlapping samples
   (or drops the chunk).
3. **Resample** to ``fs_model`` (128 Hz) with :class:`StreamingResampler`, a polyphase
   windowed-sinc interpolator that keeps its input history across chunks: output sample ``j``
   is the band-limited value of the device signal at exactly ``t0_segment + j / fs_model`` (no
   delay), and the output does not depend on how the input was chunked.
4. **No filtering here**: the window carries the resampled signal as it is.  The engine
   applies the model's one preprocessing path (``engine.model.preprocess.ppg_features``,
   zero-phase band-pass + z-scores) to the whole window, exactly as in training and offline
   reconstruction.  (Before p2es 0.2 this stage band-passed causally, and the engine filtered
   the window a second time.)
5. **Windows** of ``window_s`` (8 s) every ``hop_s`` (4 s): window ``m`` of a segment holds
   output samples ``[m * hop_n, m * hop_n + window_n)`` and ``t0 = t0_segment + m * hop_n /
   fs_model`` (device clock, exact to the sample, never arrival time).

Signal-quality index (:func:`signal_quality`), 0-1, per window
-------------------------------------------------------------
``sqi = q_artifact * q_rhythm * q_template`` where

* ``q_artifact`` = 1 - fraction of samples that are interpolated (filled gaps), flat (moving
  range over 0.25 s of the unfiltered signal <= 0.1 % of the window's 0.5-99.5 % range) or
  clipped (runs >= 60 ms within 0.2 % of the window's max or min of the unfiltered signal).
* ``q_rhythm`` = fraction of plausible beat intervals (0.27-2.0 s, i.e. 30-220 bpm, and
  0.5-1.9 x the window's median interval: a missed or extra beat fails) x coverage (the beats
  span the window: ``min(1, (last - first foot + 2 median intervals) / window)``).  Rhythm
  irregularity itself (atrial fibrillation) is *not* penalised: it is what the model must see.
* ``q_template`` = mean over complete beats of max(0, Pearson correlation) with the mean beat
  (segments from 0.1 median interval before each foot to 0.8 after).
Fewer than 4 detected pulse feet (``p2es.signal.detect_ppg_beats``) -> 0.

Memory bound per patient
------------------------
Between calls a :class:`PatientStream` holds at most ``reorder_max_samples`` (20 000) device
samples in the reorder buffer (and at most ``reorder_max_chunks`` chunks), the resampler's
history (< ``2 H + 3 + fs/fs_model`` samples, H = the kernel half-width in input samples: 139
at 1000 Hz), one float64 ring buffer of ``2 * window_n`` samples (2048):
:attr:`PatientStream.max_held_samples` = 22 337 samples (179 kB) with the defaults,
whatever the input (:meth:`PatientStream.held_samples` is the current count).  Bookkeeping
adds at most ``MAX_SPANS`` (512) chunk spans (for ``seq_range``; with chunks shorter than
~25 ms the oldest are dropped and ``seq_range[0]`` becomes approximate), ``MAX_GAPS`` (256)
filled-gap intervals (both trimmed to the current window) and 64 recent ``seq`` numbers:
about 0.3 MB per patient in the worst case.  During one ``push`` one more chunk (<= 10 000
samples) is held transiently.  The registry holds at most ``max_patients`` streams (least
recently active evicted first) and as many profiles.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage
from scipy import signal as sps

from ingest.fairness import PatientBudget
from p2es.contracts.ppg import FS_MAX, GapInfo, PpgChunk, Profile, Window
from p2es.signal import detect_ppg_beats

__all__ = [
    "StreamConfig",
    "StreamingResampler",
    "PatientStream",
    "StreamRegistry",
    "signal_quality",
    "MAX_SPANS",
    "MAX_GAPS",
]

MAX_SPANS = 512
TEMPLATE_CORR_LO, TEMPLATE_CORR_HI = 0.5, 0.9  # beat-to-template correlation -> 0 .. 1
MAX_GAPS = 256
_RECENT_SEQS = 64


@dataclass(frozen=True)
class StreamConfig:
    fs_model: float = 128.0
    window_s: float = 8.0
    hop_s: float = 4.0
    max_fill_gap_s: float = 0.5
    time_tol_s: float = 0.01
    reorder_max_chunks: int = 16
    reorder_max_s: float = 2.0
    reorder_max_samples: int = 20_000
    reorder_wait_s: float = 2.0
    band_hz: tuple[float, float] = (0.5, 8.0)
    resampler_zeros: int = 16
    resampler_beta: float = 8.0
    resampler_rolloff: float = 0.9
    idle_s: float = 120.0
    max_patients: int = 10_000
    compute_sqi: bool = True
    # a chunk whose end is off its receive time by more than this is dead-lettered `clock_skew`
    # by the ingest services (p2es.contracts.ppg); None: device time is trusted as it is
    max_clock_skew_s: float | None = 1800.0
    # per-patient budget of the ingest services (ingest.fairness; None or 0: off): samples/s as a
    # multiple of the declared fs plus a burst of rate_limit_burst_s seconds of signal, and
    # messages/s plus a burst of rate_limit_msgs_burst messages; the excess is dead-lettered
    # `rate_limited`
    rate_limit_factor: float | None = None
    rate_limit_burst_s: float = 10.0
    rate_limit_msgs_per_s: float | None = None
    rate_limit_msgs_burst: int = 100

    def __post_init__(self) -> None:
        if not (self.fs_model > 2 * self.band_hz[1]):
            raise ValueError("fs_model must exceed twice the band-pass upper edge")
        if self.window_n < 16 or self.hop_n < 1 or self.hop_n > self.window_n:
            raise ValueError("need window_s * fs_model >= 16 and 0 < hop_s <= window_s")
        if self.reorder_max_chunks < 1 or self.reorder_max_samples < 1:
            raise ValueError("reorder budget must be positive")
        if self.max_clock_skew_s is not None and not self.max_clock_skew_s > 0:
            raise ValueError("max_clock_skew_s must be > 0 (or None)")
        PatientBudget.from_config(self)  # the rate_limit_* settings: ValueError with one line

    @property
    def window_n(self) -> int:
        return int(round(self.window_s * self.fs_model))

    @property
    def hop_n(self) -> int:
        return int(round(self.hop_s * self.fs_model))


# ------------------------------------------------------------------------------ resampler
class StreamingResampler:
    """Streaming polyphase resampler, ``fs_in`` -> ``fs_out`` (any rates; rational ratio).

    The rates are made rational (``Fraction.limit_denominator(1000)``: error < 1e-6 Hz), so
    ``fs_in / fs_out = D / U``.  Output ``j`` sits at input position ``j * D / U``: integer part
    ``n_j`` and phase ``(j * D) mod U``.  It is the weighted sum of the inputs ``n_j - H ..
    n_j + H`` with a Kaiser-windowed sinc (``zeros`` zero crossings each side, cutoff
    ``rolloff * min(fs_in, fs_out) / 2``, weights normalised to unit DC gain), one weight row per
    phase (precomputed for ``U <= 4096`` phases, computed on demand otherwise).  It is
    zero-delay: ``y[j]`` estimates the input at time ``j / fs_out``; before the first sample
    the input is extended by repeating it.  An output is produced once its ``H`` right-hand
    inputs exist (latency ``H / fs_in``: 0.72 s at 25 Hz, 0.18 s at 100 Hz, 0.14 s at
    1000 Hz).  Because every
    output is computed from the same inputs with the same weights whatever the chunking, the
    result does not depend on how the input was split (bit-identical in practice).  A device
    already at the model rate passes through unchanged (no interpolation, latency 0), so the
    live path sees exactly the samples the offline path sees.
    """

    def __init__(
        self,
        fs_in: float,
        fs_out: float,
        *,
        zeros: int = 16,
        beta: float = 8.0,
        rolloff: float = 0.9,
        max_table_phases: int = 4096,
    ) -> None:
        ratio = Fraction(fs_in).limit_denominator(1000) / Fraction(fs_out).limit_denominator(1000)
        self.fs_in, self.fs_out = float(fs_in), float(fs_out)
        self.D, self.U = ratio.numerator, ratio.denominator
        self.cutoff = 0.5 * min(1.0, self.U / self.D) * rolloff  # cycles per input sample
        self.half_width = zeros / (2.0 * self.cutoff)  # input samples
        self.H = int(math.ceil(self.half_width))
        self.beta = float(beta)
        self._m = np.arange(-self.H, self.H + 1, dtype=np.float64)
        self._table = (
            self._weights(np.arange(self.U, dtype=np.float64) / self.U)
            if self.U <= max_table_phases
            else None
        )
        self._buf: np.ndarray | None = None
        self._base = 0  # absolute input index of _buf[0]
        self.n_in = 0
        self.n_out = 0

    def _weights(self, frac: np.ndarray) -> np.ndarray:
        tau = self._m[None, :] - frac[:, None]
        c = self.cutoff
        arg = np.clip(1.0 - (tau / self.half_width) ** 2, 0.0, None)
        w = 2 * c * np.sinc(2 * c * tau) * np.i0(self.beta * np.sqrt(arg))
        w[np.abs(tau) > self.half_width] = 0.0
        out: np.ndarray = w / w.sum(axis=1, keepdims=True)
        return out

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return np.zeros(0)
        if self.D == self.U:  # the model rate already: samples pass through, no delay, no filter
            self.n_in += x.size
            self.n_out += x.size
            return x.copy()
        if self._buf is None:
            self._buf = np.full(self.H, x[0])
            self._base = -self.H
        self._buf = np.concatenate([self._buf, x])
        self.n_in += x.size
        lim = self.n_in - self.H  # outputs need n_j <= lim - 1
        if lim <= 0:
            return np.zeros(0)
        j_end = (lim * self.U - 1) // self.D + 1
        if j_end <= self.n_out:
            return np.zeros(0)
        js = np.arange(self.n_out, j_end, dtype=np.int64)
        prod = js * self.D
        n, ph = prod // self.U, prod % self.U
        w = self._table[ph] if self._table is not None else self._weights(ph / self.U)
        idx = (n - self.H - self._base)[:, None] + np.arange(2 * self.H + 1)[None, :]
        y: np.ndarray = np.einsum("ij,ij->i", self._buf[idx], w)
        self.n_out = int(j_end)
        keep_from = (self.n_out * self.D) // self.U - self.H
        cut = keep_from - self._base
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base = keep_from
        return y

    def held(self) -> int:
        return 0 if self._buf is None else int(self._buf.size)

    @staticmethod
    def max_held(fs_in: float, fs_out: float, zeros: int, rolloff: float) -> int:
        """Upper bound of :meth:`held` between calls."""
        cutoff = 0.5 * min(1.0, fs_out / fs_in) * rolloff
        h = int(math.ceil(zeros / (2.0 * cutoff)))
        return 2 * h + 3 + int(math.ceil(fs_in / fs_out))


# ------------------------------------------------------------------------------ SQI
def _runs_at_least(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep only the True runs of ``mask`` that are at least ``n`` long."""
    if n <= 1 or not mask.any():
        return mask
    lab, k = ndimage.label(mask)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= n
    keep[0] = False
    out: np.ndarray = keep[lab]
    return out


@lru_cache(maxsize=32)
def _bandpass_sos(fs: float, lo: float, hi: float, order: int) -> np.ndarray:
    sos: np.ndarray = sps.butter(order, [lo, min(hi, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    return sos


def signal_quality(
    raw: np.ndarray,
    fs: float,
    *,
    invalid: np.ndarray | None = None,
    band_hz: tuple[float, float] = (0.5, 8.0),
) -> tuple[float, dict[str, float]]:
    """SQI of one PPG window (see the module docstring).

    ``raw``: the window before the band-pass (resampled, unfiltered): flat lines and clipping
    are judged on it; beats and pulse shapes on its zero-phase 0.5-8 Hz band-pass (the causal
    filter's phase distortion makes the dicrotic wave look like a beat at slow rates).
    ``invalid``: samples known not to be measured (interpolated).  Returns
    ``(sqi, {"artifact", "rhythm", "template", "beats"})``.
    """
    r = np.asarray(raw, dtype=np.float64)
    t = r.size
    parts = {"artifact": 0.0, "rhythm": 0.0, "template": 0.0, "beats": 0.0}
    if t < 32 or not np.isfinite(r).all():
        return 0.0, parts
    bad = np.zeros(t, dtype=bool) if invalid is None else np.asarray(invalid, dtype=bool).copy()
    lo_p, med, hi_p = np.percentile(r, [0.5, 50, 99.5])
    amp = hi_p - lo_p
    eps = 1e-9 * (1.0 + abs(med))
    k = max(2, int(round(0.25 * fs)))
    mrange = ndimage.maximum_filter1d(r, k) - ndimage.minimum_filter1d(r, k)
    bad |= mrange <= 1e-3 * amp + eps
    rmax, rmin = r.max(), r.min()
    full = rmax - rmin
    if full > eps:
        n_clip = max(2, int(round(0.06 * fs)))
        tol = 2e-3 * full
        bad |= _runs_at_least(r >= rmax - tol, n_clip) | _runs_at_least(r <= rmin + tol, n_clip)
    q_art = 1.0 - float(bad.mean())
    parts["artifact"] = q_art
    if q_art <= 0.0:
        return 0.0, parts

    x = sps.sosfiltfilt(_bandpass_sos(float(fs), band_hz[0], band_hz[1], 2), r)
    feet = detect_ppg_beats(x, fs)["feet"]
    parts["beats"] = float(feet.size)
    if feet.size < 4:
        return 0.0, parts
    ibi = np.diff(feet) / fs
    med_ibi = float(np.median(ibi))
    rel = ibi / med_ibi
    plausible = (ibi >= 0.27) & (ibi <= 2.0) & (rel >= 0.5) & (rel <= 1.9)
    coverage = min(1.0, ((feet[-1] - feet[0]) / fs + 2 * med_ibi) / (t / fs))
    q_rhythm = float(plausible.mean()) * coverage
    parts["rhythm"] = q_rhythm

    pre = int(round(0.1 * med_ibi * fs))
    post = int(round(0.8 * med_ibi * fs))
    starts = feet - pre
    ok = (starts >= 0) & (feet + post <= t)
    if ok.sum() < 3 or pre + post < 4:
        return 0.0, parts
    segs = x[starts[ok][:, None] + np.arange(pre + post)[None, :]]
    segs = segs - segs.mean(axis=1, keepdims=True)
    n_seg = segs.shape[0]
    tpl = (segs.sum(axis=0)[None, :] - segs) / (n_seg - 1)  # leave-one-out templates
    den = np.linalg.norm(segs, axis=1) * np.linalg.norm(tpl, axis=1)
    corr = np.where(den > 0, np.einsum("ij,ij->i", segs, tpl) / np.maximum(den, 1e-300), 0.0)
    parts["template_corr"] = float(corr.mean())
    q_tpl = float(np.clip((corr - TEMPLATE_CORR_LO) / (TEMPLATE_CORR_HI - TEMPLATE_CORR_LO), 0.0, 1.0).mean())
    parts["template"] = q_tpl
    sqi = float(np.clip(q_art * q_rhythm * q_tpl, 0.0, 1.0))
    return sqi, parts


# ------------------------------------------------------------------------------ stream
class _Ring:
    """Fixed-capacity ring buffer addressed by absolute sample index."""

    def __init__(self, capacity: int) -> None:
        self.a = np.zeros(capacity, dtype=np.float64)
        self.end = 0  # absolute index of the next write

    def write(self, x: np.ndarray) -> None:
        cap, n = self.a.size, x.size
        if n > cap:
            raise ValueError("write larger than the ring")
        pos = self.end % cap
        first = min(n, cap - pos)
        self.a[pos : pos + first] = x[:first]
        self.a[: n - first] = x[first:]
        self.end += n

    def read(self, start: int, n: int) -> np.ndarray:
        if start < self.end - self.a.size or start + n > self.end:
            raise IndexError("ring read outside the retained range")
        return self.a[(start + np.arange(n)) % self.a.size]


@dataclass
class _Segment:
    id: int
    t0: float
    fs_in: float
    resampler: StreamingResampler
    raw: _Ring
    n_in: int = 0  # device-rate samples (including filled ones)
    last: float = 0.0  # last device sample value
    next_win: int = 0
    # (t_start, t_end), s relative to the segment start
    gaps: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_GAPS))
    # (seq, t_s, t_e), s relative to the segment start
    spans: deque[tuple[int, float, float]] = field(default_factory=lambda: deque(maxlen=MAX_SPANS))


_STAT_KEYS = (
    "chunks_in",
    "chunks_used",
    "duplicates",
    "late",
    "seq_skipped",
    "seq_resets",
    "gaps_filled",
    "filled_s",
    "breaks",
    "rate_changes",
    "overlaps_trimmed",
    "overlaps_dropped",
    "windows",
)


class PatientStream:
    """Bounded, synchronous per-patient state (see the module docstring).

    ``push(chunk)`` returns the windows that became complete.  ``profile`` (settable) is
    attached to every window emitted from then on.
    """

    def __init__(
        self,
        patient_id: str,
        config: StreamConfig | None = None,
        *,
        profile: Profile | None = None,
        now: float | None = None,
    ) -> None:
        self.patient_id = patient_id
        self.config = config or StreamConfig()
        self.profile = profile
        self.stats: dict[str, float] = dict.fromkeys(_STAT_KEYS, 0)
        self.last_push = time.monotonic() if now is None else now
        self.device: str | None = None
        self._pending: dict[int, PpgChunk] = {}
        self._pending_samples = 0
        self._next_seq: int | None = None
        self._recent: deque[int] = deque(maxlen=_RECENT_SEQS)
        self._last_released_t0 = -math.inf
        self._seg: _Segment | None = None
        self._n_segments = 0

    # -- public -------------------------------------------------------------------------
    @property
    def segment(self) -> int | None:
        return None if self._seg is None else self._seg.id

    @property
    def pending_chunks(self) -> int:
        return len(self._pending)

    def push(self, chunk: PpgChunk, now: float | None = None) -> list[Window]:
        """Add one chunk (any order); return the windows completed by it."""
        self.last_push = time.monotonic() if now is None else now
        self.stats["chunks_in"] += 1
        s = chunk.seq
        if s in self._pending:
            self.stats["duplicates"] += 1
            return []
        out: list[Window] = []
        if self._next_seq is not None and s < self._next_seq:
            newest = max([self._expected_t()] + [c.t_end for c in self._pending.values()])
            if (
                chunk.t0 >= newest - self.config.time_tol_s
                and chunk.t0 > self._last_released_t0 + self.config.time_tol_s
            ):
                out += self.flush()  # device counter reset: old numbering first
                self._next_seq = None
                self._recent.clear()
                self.stats["seq_resets"] += 1
            else:
                self.stats["duplicates" if s in self._recent else "late"] += 1
                return out
        self._pending[s] = chunk
        self._pending_samples += chunk.n
        out += self._release(force=False)
        return out

    def flush(self) -> list[Window]:
        """Release every held chunk in ``seq`` order (missing ones are given up)."""
        return self._release(force=True)

    def held_samples(self) -> int:
        """Samples held now (reorder buffer + resampler history + ring buffers)."""
        n = self._pending_samples
        if self._seg is not None:
            n += self._seg.resampler.held() + self._seg.raw.a.size
        return n

    @property
    def max_held_samples(self) -> int:
        """Bound of :meth:`held_samples` between calls, for any device rate."""
        cfg = self.config
        return (
            cfg.reorder_max_samples
            + StreamingResampler.max_held(FS_MAX, cfg.fs_model, cfg.resampler_zeros, cfg.resampler_rolloff)
            + self._ring_capacity()
        )

    # -- reorder ------------------------------------------------------------------------
    def _expected_t(self) -> float:
        seg = self._seg
        return -math.inf if seg is None else seg.t0 + seg.n_in / seg.fs_in

    def _over_budget(self) -> bool:
        cfg = self.config
        if len(self._pending) > cfg.reorder_max_chunks:
            return True
        if self._pending_samples > cfg.reorder_max_samples:
            return True
        ref = self._expected_t()
        if self._next_seq is None or not math.isfinite(ref):
            ref = min(c.t0 for c in self._pending.values())
        return max(c.t_end for c in self._pending.values()) - ref > cfg.reorder_max_s

    def _release(self, *, force: bool) -> list[Window]:
        out: list[Window] = []
        while self._pending:
            lo = min(self._pending)
            expected = 0 if self._next_seq is None else self._next_seq
            if lo != expected and not force and not self._over_budget():
                break
            if self._next_seq is not None and lo > self._next_seq:
                self.stats["seq_skipped"] += lo - self._next_seq
            c = self._pending.pop(lo)
            self._pending_samples -= c.n
            self._next_seq = lo + 1
            self._recent.append(lo)
            self._last_released_t0 = c.t0
            out += self._ingest(c)
        return out

    # -- continuity, resampling, filtering ------------------------------------------------
    def _ring_capacity(self) -> int:
        return 2 * self.config.window_n

    def _start_segment(self, chunk: PpgChunk) -> _Segment:
        cfg = self.config
        rs = StreamingResampler(
            chunk.fs,
            cfg.fs_model,
            zeros=cfg.resampler_zeros,
            beta=cfg.resampler_beta,
            rolloff=cfg.resampler_rolloff,
        )
        cap = self._ring_capacity()
        seg = _Segment(id=self._n_segments, t0=chunk.t0, fs_in=chunk.fs, resampler=rs, raw=_Ring(cap))
        self._n_segments += 1
        self._seg = seg
        return seg

    def _ingest(self, chunk: PpgChunk) -> list[Window]:
        cfg = self.config
        seg = self._seg
        x = chunk.samples
        if seg is not None and abs(chunk.fs - seg.fs_in) > 1e-9 * seg.fs_in:
            self.stats["rate_changes"] += 1
            seg = None
        fill: np.ndarray | None = None
        if seg is not None:
            gap = chunk.t0 - (seg.t0 + seg.n_in / seg.fs_in)
            tol = max(cfg.time_tol_s, 0.5 / seg.fs_in)
            if gap > tol:
                if gap <= cfg.max_fill_gap_s:
                    n_miss = int(round(gap * seg.fs_in))
                    ramp = np.arange(1, n_miss + 1) / (n_miss + 1)
                    fill = seg.last + (x[0] - seg.last) * ramp
                    seg.gaps.append((seg.n_in / seg.fs_in, (seg.n_in + n_miss) / seg.fs_in))
                    self.stats["gaps_filled"] += 1
                    self.stats["filled_s"] += n_miss / seg.fs_in
                else:
                    self.stats["breaks"] += 1
                    seg = None
            elif gap < -tol:
                n_over = int(round(-gap * seg.fs_in))
                if n_over >= x.size:
                    self.stats["overlaps_dropped"] += 1
                    return []
                x = x[n_over:]
                self.stats["overlaps_trimmed"] += 1
        if seg is None:
            seg = self._start_segment(chunk)
        self.stats["chunks_used"] += 1
        if chunk.device is not None:
            self.device = chunk.device
        if fill is not None and fill.size:
            x = np.concatenate([fill, x])
            t_s = (seg.n_in + fill.size) / seg.fs_in
        else:
            t_s = seg.n_in / seg.fs_in
        seg.n_in += x.size
        seg.last = float(x[-1])
        seg.spans.append((chunk.seq, t_s, seg.n_in / seg.fs_in))
        y = seg.resampler.push(x)
        return self._consume(seg, y)

    def _consume(self, seg: _Segment, y: np.ndarray) -> list[Window]:
        out: list[Window] = []
        if y.size == 0:
            return out
        cfg = self.config
        wn, hn = cfg.window_n, cfg.hop_n
        for a in range(0, y.size, wn):
            seg.raw.write(y[a : a + wn])
            while seg.next_win * hn + wn <= seg.raw.end:
                out.append(self._window(seg, seg.next_win))
                seg.next_win += 1
        # forget what no future window can touch
        t_next = seg.next_win * hn / cfg.fs_model
        while seg.gaps and seg.gaps[0][1] <= t_next:
            seg.gaps.popleft()
        while len(seg.spans) > 1 and seg.spans[0][2] <= t_next:
            seg.spans.popleft()
        return out

    def _window(self, seg: _Segment, m: int) -> Window:
        cfg = self.config
        fs = cfg.fs_model
        wn = cfg.window_n
        start = m * cfg.hop_n
        t_rel = start / fs
        t_end = t_rel + wn / fs
        raw = seg.raw.read(start, wn)
        invalid = np.zeros(wn, dtype=bool)
        n_filled, filled_s = 0, 0.0
        for g0, g1 in seg.gaps:
            if g1 > t_rel and g0 < t_end:
                n_filled += 1
                filled_s += min(g1, t_end) - max(g0, t_rel)
                i0 = max(0, int(math.ceil((g0 - t_rel) * fs - 1e-9)))
                i1 = min(wn, int(math.ceil((g1 - t_rel) * fs - 1e-9)))
                invalid[i0:i1] = True
        if cfg.compute_sqi:
            sqi, _ = signal_quality(raw, fs, invalid=invalid, band_hz=cfg.band_hz)
        else:
            sqi = 0.0
        seqs = [s for s, a, b in seg.spans if b > t_rel and a < t_end]
        seq_range = (seqs[0], seqs[-1]) if seqs else (-1, -1)
        self.stats["windows"] += 1
        return Window(
            patient=self.patient_id,
            segment=seg.id,
            index=m,
            t0=seg.t0 + start / fs,
            fs=fs,
            samples=raw.astype(np.float32),
            sqi=sqi,
            gaps=GapInfo(filled=n_filled, filled_s=round(filled_s, 9), segment_start_s=t_rel),
            demographics=self.profile,
            seq_range=seq_range,
            created_at=time.time(),
            device=self.device,
        )


# ------------------------------------------------------------------------------ registry
class StreamRegistry:
    """All patients' streams (bounded), their profiles, idle expiry.

    ``now`` arguments are ``time.monotonic()`` seconds (injectable for tests).  A stream idle
    for ``idle_s`` is dropped (its partial window is lost; a later chunk starts a new stream);
    its profile is kept (retained profiles are only re-sent on subscribe).  At most
    ``max_patients`` streams and profiles are held; beyond that the least recently active
    is evicted.
    """

    def __init__(
        self,
        config: StreamConfig | None = None,
        *,
        idle_s: float | None = None,
        max_patients: int | None = None,
    ) -> None:
        self.config = config or StreamConfig()
        self.idle_s = self.config.idle_s if idle_s is None else float(idle_s)
        self.max_patients = self.config.max_patients if max_patients is None else max_patients
        self.streams: OrderedDict[str, PatientStream] = OrderedDict()
        self.profiles: OrderedDict[str, Profile] = OrderedDict()
        self.expired = 0
        self.evicted = 0
        self._retired_stats: dict[str, float] = dict.fromkeys(_STAT_KEYS, 0)
        # stats() runs in the metrics server's thread too: a stream is retired (removed and its
        # counts moved to _retired_stats) under this lock, so a scrape sees it in one place
        self._retire_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.streams)

    def __contains__(self, patient_id: object) -> bool:
        return patient_id in self.streams

    def get(self, patient_id: str) -> PatientStream | None:
        return self.streams.get(patient_id)

    def push(self, patient_id: str, chunk: PpgChunk, now: float | None = None) -> list[Window]:
        now = time.monotonic() if now is None else now
        st = self.streams.get(patient_id)
        if st is None:
            while len(self.streams) >= self.max_patients:
                with self._retire_lock:
                    _, old = self.streams.popitem(last=False)
                    self._retire(old)
                self.evicted += 1
            st = PatientStream(patient_id, self.config, profile=self.profiles.get(patient_id), now=now)
            self.streams[patient_id] = st
        else:
            self.streams.move_to_end(patient_id)
        return st.push(chunk, now)

    def set_profile(self, patient_id: str, profile: Profile | None) -> None:
        if profile is None:
            self.profiles.pop(patient_id, None)
        else:
            self.profiles[patient_id] = profile
            self.profiles.move_to_end(patient_id)
            while len(self.profiles) > self.max_patients:
                self.profiles.popitem(last=False)
        st = self.streams.get(patient_id)
        if st is not None:
            st.profile = profile

    def flush_stale(self, now: float | None = None) -> list[Window]:
        """Release the reorder buffers of patients silent for ``reorder_wait_s``."""
        now = time.monotonic() if now is None else now
        out: list[Window] = []
        for st in self.streams.values():
            if st.pending_chunks and now - st.last_push >= self.config.reorder_wait_s:
                out += st.flush()
        return out

    def expire(self, now: float | None = None) -> list[str]:
        """Drop streams idle for ``idle_s``; return their patient ids."""
        now = time.monotonic() if now is None else now
        gone = [pid for pid, st in self.streams.items() if now - st.last_push >= self.idle_s]
        for pid in gone:
            with self._retire_lock:
                self._retire(self.streams.pop(pid))
            self.expired += 1
        return gone

    def _retire(self, st: PatientStream) -> None:
        for k, v in st.stats.items():
            self._retired_stats[k] += v

    def stats(self) -> dict[str, Any]:
        """Stream counters summed over all patients (current and retired).  Safe to call from
        another thread (the metrics server) while the event loop adds and expires streams."""
        with self._retire_lock:
            tot = dict(self._retired_stats)
            streams = list(self.streams.values())  # one C-level copy: no mutation during it
        for st in streams:
            for k, v in st.stats.items():
                tot[k] += v
        tot.update(
            patients=len(self.streams),
            profiles=len(self.profiles),
            expired=self.expired,
            evicted=self.evicted,
        )
        return tot
