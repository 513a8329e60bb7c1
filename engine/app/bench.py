"""``p2es bench``: engine throughput, patients sustained in real time, end-to-end live latency.

Three measurements, all in one process so that their ratios are meaningful on a noisy machine:

1. **Engine** - every requested backend's ``run`` (:mod:`engine.serve.backends`) on realistic inputs
   (simulated PPG windows of the model's length through :func:`engine.serve.runtime.prepare_batch`),
   always with the torch-eager baseline (CPU: :class:`engine.serve.runtime.TorchBackend`; CUDA: the same
   in fp32 without CUDA graphs) in the same process.  Every (backend, batch size) is warmed up
   once (not timed: allocator, kernels, CUDA-graph capture, ONNX export/session); then
   ``repeats`` rounds run every batch size and, within it, every backend in turn (interleaved, so
   a burst of load elsewhere hits all alike).  Per row: windows/s from the median batch time,
   per-window latency p50/p99 (a window's latency is its batch's wall time), and the ratio to the
   baseline's windows/s at the same batch size.  FLOPs per window-step (one denoiser call + one
   DDIM step for one sample, batch 1) via ``torch.utils.flop_counter.FlopCounterMode`` (matmul /
   conv FLOPs, 2 per multiply-add; elementwise ops not counted) give achieved GFLOP/s per row and,
   with a known or given peak (``peak_tflops``), the fraction of the device's peak.
2. **Patients sustained** = best windows/s x ``hop_s`` (each patient needs one window per hop),
   per backend, for the given ``steps``/``k``/``threads``; the report also gives a recommended
   load with a 30 % safety margin (bursty arrivals, vitals/stitching/ingest overhead, other load).
3. **Live** - the real :class:`engine.app.pipeline.Pipeline` (no InfluxDB, the fastest backend, warm)
   fed by :func:`wearable.publisher.simulate_async` through an in-process amqtt broker
   (MQTT 3.1.1) at speed 1.0.  End-to-end latency is the pipeline's own ``e2e`` measure: wall
   time from the window's creation in ingest (the arrival of its last sample) to the end of its
   post-processing (stitched ECG emitted and vitals computed).  ``kept_up``: every expected
   window was processed, none was dropped, and the latency did not grow over the run (median of
   the last third of the windows at most max(hop_s / 2, 0.5 s) above that of the first third).
   Default load: half the sustained estimate, at least 1, at most ``LIVE_DEFAULT_CAP``.  The
   simulator and the broker share the pipeline's process and event loop, so the figures are
   conservative; with few windows the p99 is close to the maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from engine.app.demo import _start_broker, shutdown_live
from engine.app.pipeline import DrainWatch, Pipeline, PipelineConfig, new_client_id
from engine.model.checkpoint import DEFAULT_CHECKPOINT, Entry, load_model
from engine.serve.backends import CHOICES, available_backends, make_backend
from engine.serve.export import cpu_entry
from engine.serve.runtime import Backend, TorchBackend, WindowRequest, prepare_batch
from p2es.errors import P2esError
from wearable.publisher import simulate_async
from wearable.sim import record_profile, synthesize

__all__ = ["run_bench", "parse_batch_sizes", "parse_backends", "format_table", "SAFETY_MARGIN"]

SAFETY_MARGIN = 0.7  # recommended load = 70 % of the measured capacity
LIVE_DEFAULT_CAP = 200  # default live patients at most (simulator + broker share this process)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise P2esError(f"--batch-sizes must be comma-separated whole numbers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise P2esError(f"--batch-sizes must be whole numbers >= 1, got {text!r}")
    return sorted(set(vals))


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else math.nan


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name


def _requests(n: int, fs: float, window_s: float, seed: int) -> list[WindowRequest]:
    d = synthesize(n, seed, duration_s=window_s, fs=fs)
    return [
        WindowRequest(
            f"bench-{i:03d}",
            1.7e9 + i,
            fs,
            d["ppg"][i],
            record_profile(d, i),
            0.9,
        )
        for i in range(n)
    ]


def _flops(entry: Entry, steps: int, k: int) -> dict[str, float] | None:
    """FLOPs of the network passes for one window (batch 1) + the DDIM step's DCT matmuls."""
    try:
        model = cpu_entry(entry).model
        cfg = model.cfg
        g = torch.Generator().manual_seed(0)
        ppg = torch.randn(1, cfg.ppg_channels, cfg.T, generator=g)
        demo, mask = torch.zeros(1, cfg.n_demo), torch.ones(1, cfg.n_demo)
        with torch.no_grad():
            fc = FlopCounterMode(display=False)
            with fc:
                cond = model.encode(ppg, demo, mask)
            enc = float(fc.get_total_flops())
            fc = FlopCounterMode(display=False)
            with fc:
                model.denoise(torch.randn(1, cfg.n_leads, cfg.T, generator=g), torch.full((1,), 0.5), cond)
            den = float(fc.get_total_flops())
        kind = "none" if cfg.diffusion == "none" else getattr(entry.schedule, "kind", "none")
        step = 3 * 2.0 * cfg.n_leads * cfg.T * cfg.T if kind == "blur" else 0.0  # DCT, DCT, inverse DCT
        if kind == "none":
            per_window = enc + den
        else:
            per_window = enc + steps * k * den + (steps - 1) * k * step
        return (
            {
                "encode": enc,
                "denoise": den,
                "ddim_step": step,
                "window_step": den + step,
                "window": per_window,
            }
            if den > 0
            else None
        )
    except Exception:  # noqa: BLE001 - optional figure
        return None


# dense peak throughput (FLOP/s) of known GPUs by precision; a name not listed -> no fraction
PEAK_FLOPS = {
    "H100 PCIe": {"fp32": 51e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12},
    "H100": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12, "fp16": 989e12},  # SXM
    "H200": {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12, "fp16": 989e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    "L4": {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_FLOPS[key].get(precision)
    return None


@overload
def bench_engine(
    backends: dict[str, Backend],
    *,
    batch_sizes: list[int],
    repeats: int,
    window_s: float,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]: ...


@overload
def bench_engine(
    backends: Backend,
    *,
    batch_sizes: list[int],
    repeats: int,
    window_s: float,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]: ...


def bench_engine(
    backends: dict[str, Backend] | Backend,
    *,
    batch_sizes: list[int],
    repeats: int,
    window_s: float,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]] | list[dict[str, Any]]:
    """``backends``: {label: backend} (or one backend).  Returns {label: rows} (or rows)."""
    single = not isinstance(backends, dict)
    bes: dict[str, Backend] = dict(backends) if isinstance(backends, dict) else {"_": backends}
    fs = next(iter(bes.values())).fs  # type: ignore[attr-defined]  # every backend has fs; Backend does not declare it
    reqs = _requests(max(batch_sizes), fs, window_s, seed)
    inputs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    prep_ms: dict[int, float] = {}
    for b in batch_sizes:
        t = time.perf_counter()
        inputs[b] = prepare_batch(reqs[:b])
        prep_ms[b] = (time.perf_counter() - t) * 1e3
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in bes for b in batch_sizes}
    total = len(bes) * len(batch_sizes) * (repeats + 1)
    with _bar(total, "engine", progress) as bar:
        for be in bes.values():  # warm-up (allocator, kernels, graphs, sessions): not timed
            for b in batch_sizes:
                be.run(*inputs[b])
                bar.update(1)
        for _ in range(repeats):
            for b in batch_sizes:
                for n, be in bes.items():
                    t = time.perf_counter()
                    be.run(*inputs[b])  # returns numpy: synchronous also on CUDA
                    times[(n, b)].append(time.perf_counter() - t)
                    bar.update(1)
    out: dict[str, list[dict[str, Any]]] = {}
    for n in bes:
        rows: list[dict[str, Any]] = []
        for b in batch_sizes:
            ts = times[(n, b)]
            med = float(np.median(ts))
            rows.append(
                {
                    "batch": b,
                    "windows_per_s": b / med,
                    "latency_ms_p50": _pct(ts, 50) * 1e3,
                    "latency_ms_p99": _pct(ts, 99) * 1e3,
                    "ms_per_window": med * 1e3 / b,
                    "prepare_ms": prep_ms[b],
                    "repeats": len(ts),
                }
            )
        out[n] = rows
    return out["_"] if single else out


class _bar:
    """tqdm on stderr (or nothing)."""

    def __init__(self, total: float, desc: str, enabled: bool, unit: str = "it") -> None:
        self.t: tqdm[Any] | None = None
        if enabled:
            self.t = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __enter__(self) -> _bar:
        return self

    def update(self, n: float = 1) -> None:
        if self.t is not None:
            self.t.update(n)

    def set_postfix_str(self, s: str) -> None:
        if self.t is not None:
            self.t.set_postfix_str(s, refresh=False)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.t is not None:
            self.t.close()


async def _live(
    backend: Backend,
    *,
    patients: int,
    duration_s: float,
    window_s: float,
    hop_s: float,
    steps: int,
    k: int,
    threads: int | None,
    device: str,
    max_batch: int,
    seed: int,
    checkpoint: str | None,
    progress: bool,
    backend_name: str = "torch",
) -> dict[str, Any]:
    for name in ("amqtt", "transitions", "passlib", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.ERROR)
    broker: Any = None  # amqtt's Broker
    pipe: Pipeline | None = None
    sim_task: asyncio.Task[Any] | None = None
    expected = int((duration_s - window_s) // hop_s) + 1  # full windows per patient
    snaps: list[tuple[float, int]] = []
    try:
        broker, url = await _start_broker()
        try:
            cfg = PipelineConfig(
                broker=url,
                client_id=new_client_id("p2es-bench"),
                mqtt_version="3.1.1",
                influx_url=None,
                window_s=window_s,
                hop_s=hop_s,
                steps=steps,
                k=k,
                threads=threads,
                device=device,
                max_batch=max_batch,
                seed=seed,
                checkpoint=checkpoint,
                stream_reorder_wait_s=1.0,
                backend=backend_name,
            )
        except ValueError as e:
            raise P2esError(str(e).splitlines()[0]) from None
        pipe = Pipeline(cfg, backend=backend)
        await pipe.start_connected(f"the embedded broker {url}")
        sim_stop = asyncio.Event()
        t0 = time.monotonic()
        # one extra second of signal: the streaming resampler holds back a few input samples
        sim_task = asyncio.create_task(
            simulate_async(
                url,
                patients,
                speed=1.0,
                seed=seed,
                duration_s=duration_s + 1.0,
                t_start=time.time(),
                stop=sim_stop,
                mqtt_version="3.1.1",
                prefix="bench",
            ),
            name="p2es-bench-sim",
        )
        watch = DrainWatch(quiet_s=3.0, max_s=max(30.0, 2 * hop_s))
        with _bar(round(duration_s), "live", progress, unit="s") as bar:
            shown = 0
            while True:
                await asyncio.sleep(0.25)
                now = time.monotonic()
                st = pipe.stats()
                snaps.append((now - t0, st["windows"]))
                el = min(int(now - t0), round(duration_s))
                if el > shown:
                    bar.update(el - shown)
                    shown = el
                    bar.set_postfix_str(f"windows {st['windows']}/{expected * patients}")
                if watch.done(sim_task, st, now, complete=st["windows"] >= expected * patients):
                    break
        assert watch.t_sim_done is not None  # the loop above only ends once the simulator is done
        drain_s = time.monotonic() - watch.t_sim_done
        e2e = list(pipe._lat["e2e"])  # in completion order (seconds)
        await pipe.stop(timeout=30.0)
        st = pipe.stats()
    finally:
        await shutdown_live(sim_task, pipe, broker)
    done = int(st["windows"])
    dropped = int(st["ingest"].get("windows_dropped", 0) or 0)
    errors = sum(int(v.get("errors", 0)) for v in st["patients"].values())
    # latency trend: last third vs first third of the windows (a growing backlog shows here)
    m = max(1, len(e2e) // 3)
    growth = float(np.median(e2e[-m:]) - np.median(e2e[:m])) if e2e else math.nan
    kept_up = (
        bool(e2e)
        and done >= expected * patients
        and dropped == 0
        and errors == 0
        and growth <= max(0.5 * hop_s, 0.5)
    )
    return {
        "patients": patients,
        "duration_s": duration_s,
        "e2e_latency_ms_p50": _pct(e2e, 50) * 1e3,
        "e2e_latency_ms_p99": _pct(e2e, 99) * 1e3,
        "e2e_latency_ms_max": (max(e2e) * 1e3) if e2e else math.nan,
        "kept_up": kept_up,
        "windows": done,
        "windows_expected": expected * patients,
        "windows_dropped": dropped,
        "errors": errors,
        "e2e_growth_ms": growth * 1e3,
        "drain_s": drain_s,
        "batch_size_mean": st["batch_size_mean"],
        "batch_size_max": st["batch_size_max"],
    }


def _bench_backends(
    entry: Entry,
    names: list[str],
    *,
    device: str,
    steps: int,
    k: int,
    seed: int,
    threads: int | None,
    max_batch: int,
    cache_dir: str | None,
) -> list[tuple[str, str, str, Backend]]:
    """[(label, backend name, precision, backend)], the torch-eager baseline first."""
    cuda = device.startswith("cuda")
    base = TorchBackend(
        entry,
        device=device,
        steps=steps,
        k=k,
        seed=seed,
        threads=threads,
        precision="fp32",
        cuda_graphs=False,
    )
    out: list[tuple[str, str, str, Backend]] = [("torch-eager" if cuda else "torch", "torch", "fp32", base)]
    if names == ["all"] or names == ["auto"]:
        names = available_backends(device)
    for n in names:
        if n == "torch" and not cuda:
            continue  # the baseline is the CPU torch backend
        be = make_backend(
            n,
            entry,
            device=device,
            steps=steps,
            k=k,
            seed=seed,
            threads=threads,
            max_batch=max_batch,
            cache_dir=cache_dir,
        )
        label = getattr(be, "label", n)
        prec = getattr(be, "precision", "fp16" if "fp16" in label else "fp32")
        out.append((label, n, prec, be))
    return out


def run_bench(
    checkpoint: str | None = None,
    *,
    backend: str | list[str] = "all",
    device: str = "cpu",
    threads: int | None = None,
    steps: int = 10,
    k: int = 2,
    batch_sizes: Sequence[int] = (1, 4, 16, 32),
    repeats: int = 5,
    window_s: float = 8.0,
    hop_s: float = 4.0,
    live_patients: int | None = None,
    live_duration: float = 40.0,
    seed: int = 0,
    progress: bool = True,
    flops: bool = True,
    peak_tflops: float | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """All three measurements -> the JSON-ready result (see the module docstring)."""
    names = parse_backends(backend)
    _validate(
        backend=names,
        threads=threads,
        steps=steps,
        k=k,
        batch_sizes=batch_sizes,
        repeats=repeats,
        window_s=window_s,
        hop_s=hop_s,
        live_patients=live_patients,
        live_duration=live_duration,
    )
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise P2esError(f"--peak-tflops must be > 0, got {peak_tflops}")
    path = str(checkpoint or DEFAULT_CHECKPOINT)
    if not Path(path).is_file():
        raise P2esError(f"checkpoint not found: {path}")
    try:
        entry = load_model(path, "p2es")
    except KeyError:
        raise P2esError(f"checkpoint {path} holds no 'p2es' model") from None
    fs, T = float(entry.model.cfg.fs), int(entry.model.cfg.T)
    T_win = int(round(window_s * fs))
    if T_win != T:
        raise P2esError(
            f"--window-s {window_s:g} gives {T_win} samples at {fs:g} Hz "
            f"but the model takes T={T} ({T / fs:g} s)"
        )
    sizes = sorted(set(int(b) for b in batch_sizes))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise P2esError("--device cuda requested but no CUDA GPU is available")
    t_all = time.monotonic()
    bes = _bench_backends(
        entry,
        names,
        device=device,
        steps=steps,
        k=k,
        seed=seed,
        threads=threads,
        max_batch=max(sizes),
        cache_dir=cache_dir,
    )
    base_label = bes[0][0]
    rows_by = bench_engine(
        {lab: be for lab, _, _, be in bes},
        batch_sizes=sizes,
        repeats=repeats,
        window_s=window_s,
        seed=seed,
        progress=progress,
    )
    fl = _flops(entry, steps, k) if flops else None
    dev_name = _device_name(device)
    base_rows = {r["batch"]: r for r in rows_by[base_label]}
    per_backend = []
    for label, name, prec, _be in bes:
        rows = rows_by[label]
        peak = (
            (peak_tflops * 1e12)
            if peak_tflops
            else (peak_flops(dev_name, prec) if device.startswith("cuda") else None)
        )
        for r in rows:
            r["backend"] = label
            r["ratio_vs_baseline"] = r["windows_per_s"] / base_rows[r["batch"]]["windows_per_s"]
            if fl:
                r["achieved_gflops_per_s"] = fl["window"] * r["windows_per_s"] / 1e9
                r["fraction_of_peak"] = (fl["window"] * r["windows_per_s"] / peak) if peak else None
        best = max(rows, key=lambda r: r["windows_per_s"])
        sustained = int(math.floor(best["windows_per_s"] * hop_s))
        per_backend.append(
            {
                "backend": label,
                "name": name,
                "precision": prec,
                "engine": rows,
                "patients_sustained": sustained,
                "recommended": int(math.floor(sustained * SAFETY_MARGIN)),
                "best_batch": best["batch"],
                "best_windows_per_s": best["windows_per_s"],
                "best_ratio_vs_baseline": best["windows_per_s"]
                / max(base_rows.values(), key=lambda r: r["windows_per_s"])["windows_per_s"],
                "peak_flops": peak,
            }
        )
    primary = max(per_backend, key=lambda d: d["best_windows_per_s"])
    prim_be = next(be for lab, _, _, be in bes if lab == primary["backend"])
    sustained = primary["patients_sustained"]
    out: dict[str, Any] = {
        "device": device,
        "device_name": dev_name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if not device.startswith("cuda") else threads,
        "backend": primary["backend"],
        "baseline": base_label,
        "steps": steps,
        "k": k,
        "window_s": window_s,
        "hop_s": hop_s,
        "engine": primary["engine"],
        "backends": per_backend,
        "flops": fl,
        "flops_per_window_step": fl["window_step"] if fl else None,
        "flops_per_window": fl["window"] if fl else None,
        "patients_sustained": sustained,
        "patients_sustained_detail": {
            "backend": primary["backend"],
            "best_batch": primary["best_batch"],
            "best_windows_per_s": primary["best_windows_per_s"],
            "formula": "best windows/s x hop_s",
            "recommended": primary["recommended"],
            "note": (
                f"capacity of the fastest backend ({primary['backend']}) at steps={steps}, k={k}, "
                f"threads={out_threads(device, threads)}; plan for at most "
                f"{int(SAFETY_MARGIN * 100)}% of it (bursty arrivals, ingest/stitching/vitals "
                "overhead, other load on the machine); batches only fill up to the best size "
                "when that many patients' windows arrive together"
            ),
        },
        "live": None,
        "checkpoint": str(Path(path).resolve()),
        "torch": torch.__version__,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime  # lazy: optional dependency (extra "onnx")

        out["onnxruntime"] = onnxruntime.__version__
    n_live = live_patients if live_patients is not None else min(LIVE_DEFAULT_CAP, max(1, sustained // 2))
    if n_live > 0:
        out["live"] = asyncio.run(
            _live(
                prim_be,
                patients=n_live,
                duration_s=live_duration,
                window_s=window_s,
                hop_s=hop_s,
                steps=steps,
                k=k,
                threads=threads,
                device=device,
                max_batch=max(sizes),
                seed=seed,
                checkpoint=checkpoint,
                progress=progress,
                backend_name=primary["name"],
            )
        )
        out["live"]["patients_default"] = live_patients is None
        out["live"]["backend"] = primary["backend"]
    out["seconds"] = time.monotonic() - t_all
    return out


def parse_backends(text: str | Sequence[str]) -> list[str]:
    vals = [
        v.strip() for v in (text if isinstance(text, (list, tuple)) else str(text).split(",")) if v.strip()
    ]
    if not vals:
        raise P2esError("--backends needs at least one backend")
    bad = [v for v in vals if v not in CHOICES + ("all",)]
    if bad:
        raise P2esError(
            f"--backends: unknown backend(s) {', '.join(bad)} (choose from all, {', '.join(CHOICES)})"
        )
    if ("all" in vals or "auto" in vals) and len(vals) > 1:
        raise P2esError("--backends all/auto cannot be combined with other names")
    return vals


def out_threads(device: str, threads: int | None) -> int | None:
    return torch.get_num_threads() if not str(device).startswith("cuda") else threads


def _validate(
    *,
    backend: list[str],
    threads: int | None,
    steps: int,
    k: int,
    batch_sizes: Sequence[int],
    repeats: int,
    window_s: float,
    hop_s: float,
    live_patients: int | None,
    live_duration: float,
) -> None:
    if threads is not None and threads < 1:
        raise P2esError(f"--threads must be >= 1, got {threads}")
    if steps < 1:
        raise P2esError(f"--steps must be >= 1, got {steps}")
    if k < 1:
        raise P2esError(f"--k must be >= 1, got {k}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise P2esError(f"--batch-sizes must be whole numbers >= 1, got {list(batch_sizes)}")
    if repeats < 1:
        raise P2esError(f"--repeats must be >= 1, got {repeats}")
    if not (math.isfinite(window_s) and window_s > 0):
        raise P2esError(f"--window-s must be > 0, got {window_s}")
    if not (math.isfinite(hop_s) and 0 < hop_s <= window_s):
        raise P2esError(f"--hop-s must be within (0, --window-s={window_s:g}], got {hop_s}")
    if live_patients is not None and live_patients < 0:
        raise P2esError(f"--live-patients must be >= 0 (0 skips the live run), got {live_patients}")
    if live_patients != 0 and not (math.isfinite(live_duration) and live_duration >= window_s + hop_s):
        raise P2esError(
            f"--live-duration must be >= --window-s + --hop-s ({window_s + hop_s:g} s) "
            f"so that at least two windows complete, got {live_duration}"
        )


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    base = res.get("baseline", "torch")
    lines = [
        f"p2es bench: {res['device']} ({res['device_name']}), {res['cpu_count']} CPUs, "
        f"threads {res['threads']}, steps {res['steps']}, k {res['k']}, "
        f"window {res['window_s']:g} s / hop {res['hop_s']:g} s; baseline {base} (eager)"
    ]
    bes = res.get("backends") or [
        {
            "backend": res.get("backend", "torch"),
            "engine": res["engine"],
            "patients_sustained": res["patients_sustained"],
        }
    ]
    w = max(7, max(len(b["backend"]) for b in bes))
    fl = res.get("flops_per_window")
    lines.append(
        f"{'backend':<{w}}  {'batch':>5}  {'windows/s':>10}  {'lat p50 ms':>10}  {'lat p99 ms':>10}  "
        f"{'ms/window':>9}  {'x ' + base:>{len(base) + 2}}" + ("  GFLOP/s" if fl else "")
    )
    for r in sorted((r for b in bes for r in b["engine"]), key=lambda r: r["batch"]):
        lines.append(
            f"{r.get('backend', bes[0]['backend']):<{w}}  {r['batch']:>5}  {r['windows_per_s']:>10.2f}  "
            f"{r['latency_ms_p50']:>10.1f}  {r['latency_ms_p99']:>10.1f}  {r['ms_per_window']:>9.1f}  "
            f"{_f(r.get('ratio_vs_baseline'), '.2f'):>{len(base) + 2}}"
            + (f"  {_f(r.get('achieved_gflops_per_s'), '.1f'):>8}" if fl else "")
            + (f" ({100 * r['fraction_of_peak']:.2f}% of peak)" if r.get("fraction_of_peak") else "")
        )
    if res.get("flops_per_window_step"):
        lines.append(
            f"FLOPs per window-step (one denoiser call + one DDIM step, k=1): "
            f"{res['flops_per_window_step'] / 1e9:.3f} GFLOP; per window (steps x k + encode): "
            f"{res['flops_per_window'] / 1e9:.2f} GFLOP"
        )
    d = res["patients_sustained_detail"]
    per = ", ".join(f"{b['backend']} {b['patients_sustained']}" for b in bes)
    lines.append(
        f"patients sustained in real time: {res['patients_sustained']} with {d.get('backend', bes[0]['backend'])} "
        f"(= {d['best_windows_per_s']:.2f} windows/s at batch {d['best_batch']} x hop {res['hop_s']:g} s); "
        f"recommended <= {d['recommended']} ({int(SAFETY_MARGIN * 100)}% margin); per backend: {per}"
    )
    lv = res.get("live")
    if lv:
        lines.append(
            f"live ({lv.get('backend', res.get('backend', 'torch'))}): {lv['patients']} patient(s) x "
            f"{lv['duration_s']:g} s at speed 1: "
            f"e2e p50 {_f(lv['e2e_latency_ms_p50'], '.0f')} ms, p99 {_f(lv['e2e_latency_ms_p99'], '.0f')} ms, "
            f"windows {lv['windows']}/{lv['windows_expected']}, dropped {lv['windows_dropped']}, "
            f"latency growth {_f(lv['e2e_growth_ms'], '.0f')} ms -> "
            f"{'kept up' if lv['kept_up'] else 'did NOT keep up'}"
        )
    else:
        lines.append("live: skipped")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def save_json(res: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(res), indent=2) + "\n")
    return p
