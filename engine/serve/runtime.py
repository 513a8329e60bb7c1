"""Live-engine runtime: backends, a dynamic micro-batcher across patients, per-patient stitching.

Data flow (one process; stage boundaries are plain dataclasses so they can cross processes later)::

    WindowRequest (from ingest) -> MicroBatcher -> Backend.run(batch) -> WindowResult
        -> PatientStitcher (overlap-add, cross-fade, emit each sample once) -> EcgChunk
        -> window_vitals(...) -> Vitals

* ``Backend`` is the interface the runtime needs: ``run(feats [B,3,T], demo [B,5], mask [B,5],
  keys)`` -> ``(mean [B,12,T], std [B,12,T])`` in mV.  ``keys`` = ``[(patient, t0), ...]``, one
  per window: each window's noise is seeded from (backend seed, model, patient, window start)
  alone (:func:`engine.serve.backends.common.window_seed`), so a patient's ECG is the same
  whoever else shares the batch; without ``keys`` (offline benchmarks) a batch draws its noise
  from ``seed + call`` as before.  ``TorchBackend`` runs the sampler (CPU, or CUDA
  with bf16 autocast); other backends (ONNX Runtime, TensorRT) plug in behind the same method.
  For a model with ``ppg_onset_channel`` a backend appends the onset channel to 3-channel
  features itself (and takes [B,4,T] as they are).
* ``MicroBatcher`` is a dynamic batcher in the spirit of Triton's: a request waits at most
  ``max_wait_ms`` for others to join, a batch holds at most ``max_batch`` windows, and the
  backend runs in a worker thread so the event loop keeps ingesting.
* ``PatientStitcher`` turns overlapping windows (default 8 s every 4 s) into one continuous
  stream: windows are weighted by the same Tukey cross-fade as offline reconstruction and
  normalised by the summed weights; a sample is emitted once no later window can touch it, so the
  stored ECG has no seams and no duplicated samples.  Timestamps come from the device clock
  (``t0`` of each window), never from arrival time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from engine.model import sampler
from engine.model.data import demographics as demo_arrays
from engine.model.preprocess import complete_features, ppg_features
from engine.model.reconstruct import crossfade_weights
from engine.serve.backends.common import WindowKey, keyed_noise, model_key
from engine.serve.backends.torch_loop import CudaGraphRunner, GraphableLoop, default_buckets
from p2es.contracts.ppg import Window
from p2es.contracts.vitals import Vitals
from p2es.errors import P2esError
from p2es.leads import LEAD_INDEX, st_group_deviation
from p2es.signal import delineate, detect_ppg_beats, detect_r_peaks, heart_rate_bpm, rr_irregularity

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry


# ------------------------------------------------------------------------------ messages
@dataclass
class WindowRequest:
    """One PPG window of one patient, resampled to the model rate (not filtered: the backends
    apply :func:`engine.model.preprocess.ppg_features` through :func:`prepare_batch`)."""

    patient: str
    t0: float  # Unix seconds of the first sample (device clock)
    fs: float  # model rate (Hz)
    ppg: np.ndarray  # float [T]
    demographics: dict[str, Any] | None = None  # age, sex ("F"/"M"/0/1), height_cm, weight_kg
    sqi: float = float("nan")
    created: float = field(default_factory=time.monotonic)  # when the window became available


def request_from_window(w: Window) -> WindowRequest:
    """The engine's request for an ingest window (the live path's hand-over)."""
    demo = None
    if w.demographics is not None:
        demo = {k: v for k, v in w.demographics.model_dump().items() if v is not None}
    return WindowRequest(
        w.patient,
        float(w.t0),
        float(w.fs),
        np.asarray(w.samples, np.float64),
        demo,
        float(w.sqi),
        time.monotonic(),
    )


@dataclass
class WindowResult:
    request: WindowRequest
    ecg: np.ndarray  # [12, T] mV, mean of K samples
    std: np.ndarray  # [12, T] mV, spread of K samples (uncertainty)
    batch_size: int
    queued_s: float
    compute_s: float


@dataclass
class EcgChunk:
    """Final, stitched samples of one patient: emitted once, in order."""

    patient: str
    t0: float  # Unix seconds of ecg[:, 0]
    fs: float
    ecg: np.ndarray  # [12, n] mV
    std: np.ndarray  # [12, n] mV


# ------------------------------------------------------------------------------ backends
class Backend(Protocol):
    name: str

    def run(
        self, feats: np.ndarray, demo: np.ndarray, mask: np.ndarray, keys: Sequence[WindowKey] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """feats [B,3,T], demo/mask [B,5], keys [(patient, t0)] * B or None -> (mean, std)
        [B,12,T] mV."""
        ...


class TorchBackend:
    """The checkpoint's sampler in PyTorch.

    * CPU: :func:`engine.model.sampler.sample` as is (fp32; ``threads`` sets torch's intra-op threads).
    * CUDA: the same loop with precomputed step coefficients (:class:`engine.serve.backends.torch_loop.
      GraphableLoop`), the network passes under autocast ``precision`` ("bf16" default, "fp16",
      "fp32"; the DCT step stays fp32) and, with ``cuda_graphs`` (default), the whole loop captured
      in one CUDA graph per batch-size bucket (powers of two up to ``max_batch``; a batch is padded
      to its bucket).  ``bf16=False`` (the old switch) means ``precision="fp32"``.

    Both sample at the entry's ``sampler_config.temperature`` (x_T scaled before the loop; the
    CPU path hands it to the sampler, which skips the multiply at 1).
    """

    name = "torch"

    def __init__(
        self,
        entry: Entry,
        *,
        device: str = "cpu",
        steps: int = 10,
        k: int = 4,
        seed: int = 0,
        threads: int | None = None,
        bf16: bool = True,
        precision: str | None = None,
        cuda_graphs: bool = True,
        max_batch: int = 32,
        buckets: list[int] | None = None,
        **_ignored: Any,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise P2esError("backend device 'cuda' requested but no CUDA GPU is available")
        self.entry = entry
        self.model = entry.model.to(self.device).eval()
        self.schedule = entry.schedule
        if hasattr(self.schedule, "to"):
            self.schedule = self.schedule.to(self.device)
        self.steps, self.k, self.seed = int(steps), int(k), int(seed)
        self.temperature = float(entry.sampler_config.temperature)
        if precision is None:
            precision = "bf16" if bf16 else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise P2esError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        on_cuda = self.device.type == "cuda"
        self.precision = precision if on_cuda else "fp32"
        self.bf16 = self.precision == "bf16"
        self.cuda_graphs = bool(cuda_graphs) and on_cuda
        self.T = int(entry.model.cfg.T)
        self.fs = float(entry.model.cfg.fs)
        self._calls = 0
        self._model_key: str | None = None  # model_key(entry), on the first keyed run
        self._loop: GraphableLoop | None = None
        self._graphs: CudaGraphRunner | None = None
        if on_cuda:
            dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
            self._loop = GraphableLoop(
                self.model, self.schedule, steps=self.steps, k=self.k, device=self.device, autocast_dtype=dt
            )
            if self.cuda_graphs:
                cfg = entry.model.cfg
                self._graphs = CudaGraphRunner(
                    self._loop,
                    n_leads=cfg.n_leads,
                    T=cfg.T,
                    n_demo=cfg.n_demo,
                    ppg_channels=cfg.ppg_channels,
                    buckets=buckets or default_buckets(max_batch),
                )

    @property
    def label(self) -> str:
        if self.device.type != "cuda":
            return "torch"
        return f"torch-cuda-{self.precision}" + ("-graphs" if self.cuda_graphs else "")

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            self._model_key = model_key(self.entry)
        return self._model_key

    def run(
        self, feats: np.ndarray, demo: np.ndarray, mask: np.ndarray, keys: Sequence[WindowKey] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.entry.model.cfg.ppg_onset_channel:  # default 3-channel features + the onset channel
            feats = complete_features(feats, self.fs, onset=True)
        gen = torch.Generator(device=self.device.type).manual_seed(self.seed + self._calls)
        self._calls += 1
        cfg = self.entry.model.cfg
        f = torch.as_tensor(feats, dtype=torch.float32, device=self.device)
        d = (
            torch.as_tensor(demo, dtype=torch.float32, device=self.device),
            torch.as_tensor(mask, dtype=torch.float32, device=self.device),
        )
        noise = None
        if keys is not None:  # per-window noise (CPU-drawn, the same on every backend and device)
            shape = (cfg.n_leads, cfg.T)
            x_t = keyed_noise(
                keys, seed=self.seed, model=self.model_key, k=self.k, shape=shape, batch=f.shape[0]
            )
            noise = torch.as_tensor(x_t, dtype=torch.float32, device=self.device)
        if self._loop is not None:  # CUDA
            if noise is None:
                noise = torch.randn(
                    (f.shape[0] * self.k, cfg.n_leads, cfg.T), generator=gen, device=self.device
                )
            if self.temperature != 1.0:  # as the sampler scales x_T (1: untouched, bit-identical)
                noise = noise * self.temperature
            with torch.no_grad():
                fn = self._graphs if self._graphs is not None else self._loop
                mean, std = fn(f, d[0], d[1], noise)
            return mean.float().cpu().numpy(), std.float().cpu().numpy()
        with torch.no_grad():
            res = sampler.sample(
                self.model,
                self.schedule,
                f,
                d,
                steps=self.steps,
                k=self.k,
                generator=gen,
                keep_samples=False,
                noise=noise,
                temperature=self.temperature,
            )
        return res.mean.float().cpu().numpy(), res.std.float().cpu().numpy()


def prepare_batch(
    reqs: list[WindowRequest], *, ppg_onset: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window requests -> (feats [B,3,T], demo [B,5], mask [B,5]) exactly as in training
    (``ppg_onset``: [B,4,T] with the onset channel, a model's ``ppg_onset_channel``; the backends
    also complete 3-channel features for such a model themselves)."""
    fs = {float(r.fs) for r in reqs}
    if len(fs) != 1:
        raise ValueError(f"one batch must share one sampling rate, got {sorted(fs)}")
    x = np.stack([np.asarray(r.ppg, dtype=np.float64) for r in reqs])
    feats = ppg_features(x, fs.pop(), onset=ppg_onset)
    rows: list[tuple[Any, Any, Any, Any]] = []
    for r in reqs:
        d = r.demographics or {}
        sex = d.get("sex")
        if isinstance(sex, str):
            sex = {"F": 0, "M": 1}.get(sex.upper())
        rows.append((d.get("age"), sex, d.get("height_cm"), d.get("weight_kg")))

    def col(i: int) -> np.ndarray:
        return np.array([np.nan if v[i] is None else float(v[i]) for v in rows])

    demo, mask = demo_arrays(col(0), col(1), col(2), col(3))
    return feats.astype(np.float32), np.asarray(demo, np.float32), np.asarray(mask, np.float32)


# ------------------------------------------------------------------------------ batching
class MicroBatcher:
    """Dynamic batching across patients: ``await submit(req)`` returns that window's result."""

    def __init__(
        self, backend: Backend, *, max_batch: int = 32, max_wait_ms: float = 50.0, max_queue: int = 4096
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.backend = backend
        self.max_batch, self.max_wait = int(max_batch), float(max_wait_ms) / 1e3
        self.queue: asyncio.Queue[tuple[WindowRequest, asyncio.Future[WindowResult]]] = asyncio.Queue(
            max_queue
        )
        self.stats = {"batches": 0, "windows": 0, "batch_size_sum": 0, "max_batch_seen": 0}

    async def submit(self, req: WindowRequest) -> WindowResult:
        fut: asyncio.Future[WindowResult] = asyncio.get_running_loop().create_future()
        await self.queue.put((req, fut))
        return await fut

    async def run(self) -> None:
        """Serve forever (cancel to stop); pending requests of a cancelled batcher get the error."""
        while True:
            first = await self.queue.get()
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[WindowRequest, asyncio.Future[WindowResult]]]) -> None:
        reqs = [r for r, _ in batch]
        t_start = time.monotonic()
        try:
            feats, demo, mask = prepare_batch(reqs)
            keys = [(r.patient, float(r.t0)) for r in reqs]  # per-window noise: batch-independent
            mean, std = await asyncio.to_thread(self.backend.run, feats, demo, mask, keys)
        except Exception as exc:  # noqa: BLE001 - hand the failure to every waiter
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        compute = time.monotonic() - t_start
        n = len(batch)
        self.stats["batches"] += 1
        self.stats["windows"] += n
        self.stats["batch_size_sum"] += n
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], n)
        for i, (req, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result(WindowResult(req, mean[i], std[i], n, t_start - req.created, compute))


# ------------------------------------------------------------------------------ stitching
class PatientStitcher:
    """Streaming overlap-add of one patient's windows (all of length ``T`` at ``fs``).

    After window i (start s_i) is added, samples before s_i + hop are final under the regular
    hop and are emitted.  A window that starts later than expected (a gap upstream) first flushes
    what is pending; a window overlapping already emitted samples contributes only after them,
    so no sample is ever emitted twice.
    """

    def __init__(self, patient: str, T: int, fs: float, hop: int) -> None:
        if not 0 < hop <= T:
            raise ValueError("hop must be within 1..T samples")
        self.patient, self.T, self.fs, self.hop = patient, int(T), float(fs), int(hop)
        self.w = crossfade_weights(self.T, self.T - self.hop)
        self.t_ref: float | None = None  # Unix time of sample index 0
        self.emitted = 0  # next sample index to emit
        self.pend_start = 0  # index of acc[0]
        self.acc = np.zeros((12, 0))
        self.sacc = np.zeros((12, 0))
        self.wsum = np.zeros(0)

    def _index(self, t0: float) -> int:
        assert self.t_ref is not None  # set by the first add()
        return int(round((t0 - self.t_ref) * self.fs))

    def add(self, t0: float, ecg: np.ndarray, std: np.ndarray) -> list[EcgChunk]:
        out: list[EcgChunk] = []
        if self.t_ref is None:
            self.t_ref, self.emitted, self.pend_start = float(t0), 0, 0
        s = self._index(t0)
        end = s + self.T
        if end <= self.emitted:
            return out  # entirely in the past (duplicate or very late): nothing new
        if s > self.pend_start + self.wsum.size:  # gap: flush everything pending first
            out += self._emit_until(self.pend_start + self.wsum.size)
            self.pend_start = self.emitted = s
            self.acc, self.sacc, self.wsum = np.zeros((12, 0)), np.zeros((12, 0)), np.zeros(0)
        # grow the pending buffers to cover [pend_start, end)
        need = end - self.pend_start
        if need > self.wsum.size:
            pad = need - self.wsum.size
            self.acc = np.concatenate([self.acc, np.zeros((12, pad))], axis=1)
            self.sacc = np.concatenate([self.sacc, np.zeros((12, pad))], axis=1)
            self.wsum = np.concatenate([self.wsum, np.zeros(pad)])
        lo = max(s, self.emitted)  # never touch emitted samples
        a, b = lo - self.pend_start, end - self.pend_start
        wv = self.w[lo - s :]
        self.acc[:, a:b] += ecg[:, lo - s :] * wv
        self.sacc[:, a:b] += std[:, lo - s :] * wv
        self.wsum[a:b] += wv
        out += self._emit_until(s + self.hop)
        return out

    def flush(self) -> list[EcgChunk]:
        """Emit everything pending (end of stream / idle patient / shutdown)."""
        return self._emit_until(self.pend_start + self.wsum.size)

    def _emit_until(self, stop: int) -> list[EcgChunk]:
        stop = min(stop, self.pend_start + self.wsum.size)
        if stop <= self.emitted:
            return []
        a, b = self.emitted - self.pend_start, stop - self.pend_start
        wsum = self.wsum[a:b]
        ok = wsum > 0
        ecg = np.full((12, b - a), np.nan)
        std = np.full((12, b - a), np.nan)
        ecg[:, ok] = self.acc[:, a:b][:, ok] / wsum[ok]
        std[:, ok] = self.sacc[:, a:b][:, ok] / wsum[ok]
        assert self.t_ref is not None  # set by the first add() (nothing is pending before it)
        chunk = EcgChunk(self.patient, self.t_ref + self.emitted / self.fs, self.fs, ecg, std)
        self.emitted = stop
        # drop what was emitted from the pending buffers
        self.acc, self.sacc, self.wsum = self.acc[:, b:], self.sacc[:, b:], self.wsum[b:]
        self.pend_start = stop
        return [chunk]


# ------------------------------------------------------------------------------ vitals
def window_vitals(res: WindowResult) -> Vitals:
    """Per-window vitals from the reconstruction (R peaks, QRS, QTc) and from the PPG itself."""
    req, fs = res.request, res.request.fs
    ii = res.ecg[LEAD_INDEX["II"]]
    r = detect_r_peaks(ii, fs)
    hr = heart_rate_bpm(r, fs)
    d = delineate(res.ecg, fs)
    feet = detect_ppg_beats(np.asarray(req.ppg, dtype=np.float64), fs)["feet"]
    hr_ppg = heart_rate_bpm(feet, fs)
    unc = float(np.median(res.std)) if np.isfinite(res.std).any() else math.nan
    st = st_group_deviation(d.st_mv)
    return Vitals(
        patient=req.patient,
        t=req.t0,
        hr_bpm=float(hr),
        hr_ppg_bpm=float(hr_ppg),
        qrs_ms=float(d.qrs_ms),
        qtc_ms=float(d.qtc_fridericia_ms),
        sqi=float(req.sqi),
        uncertainty=unc,
        rr_irregularity=float(rr_irregularity(r, fs)),
        st_septal_mv=st["septal"],
        st_anterior_mv=st["anterior"],
        st_lateral_mv=st["lateral"],
        st_inferior_mv=st["inferior"],
    )
