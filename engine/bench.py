"""``p2es bench``: engine throughput, patients sustained in real time, end-to-end live latency.

Three measurements, all in one process so that their ratios are meaningful on a noisy machine:

1. **Engine** - :meth:`engine.runtime.TorchBackend.run` on realistic inputs (simulated PPG windows
   of the model's length through :func:`engine.runtime.prepare_batch`).  Every batch size is
   warmed up once (not timed); then ``repeats`` rounds run every batch size in turn (interleaved,
   so a burst of load elsewhere hits all sizes alike).  Per batch size: windows/s from the median
   batch time, and per-window latency p50/p99 (a window's latency is its batch's wall time).
   Optionally FLOPs of one window-step (one denoiser call, batch 1, k 1) via
   ``torch.utils.flop_counter.FlopCounterMode``.
2. **Patients sustained** = best windows/s x ``hop_s`` (each patient needs one window per hop),
   for the given ``steps``/``k``/``threads``; the report also gives a recommended load with a
   30 % safety margin (bursty arrivals, vitals/stitching/ingest overhead, other load).
3. **Live** - the real :class:`engine.pipeline.Pipeline` (no InfluxDB, the same warm backend)
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
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from p2es.errors import P2esError

__all__ = ["run_bench", "parse_batch_sizes", "format_table", "SAFETY_MARGIN"]

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


def _pct(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else math.nan


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return name


def _requests(n: int, fs: float, window_s: float, seed: int):
    from engine.runtime import WindowRequest
    from wearable.sim import synthesize

    d = synthesize(n, seed, duration_s=window_s, fs=fs)
    return [WindowRequest(f"bench-{i:03d}", 1.7e9 + i, fs, d["ppg"][i],
                          {"age": float(d["age"][i]), "sex": int(d["sex"][i]),
                           "height_cm": float(d["height_cm"][i]), "weight_kg": float(d["weight_kg"][i])},
                          0.9) for i in range(n)]


def _flops_per_window_step(backend, feats, demo, mask) -> float | None:
    """FLOPs of one denoiser call for one window (batch 1, k 1, one step); None if unavailable."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from engine import sampler

        dev = backend.device
        f = torch.as_tensor(feats[:1], dtype=torch.float32, device=dev)
        d = (torch.as_tensor(demo[:1], dtype=torch.float32, device=dev),
             torch.as_tensor(mask[:1], dtype=torch.float32, device=dev))
        fc = FlopCounterMode(display=False)
        with torch.no_grad(), fc:
            sampler.sample(backend.model, backend.schedule, f, d, steps=1, k=1,
                           generator=torch.Generator(device=dev.type).manual_seed(0), keep_samples=False)
        n = int(fc.get_total_flops())
        return float(n) if n > 0 else None
    except Exception:  # noqa: BLE001 - optional figure
        return None


def bench_engine(backend, *, batch_sizes: list[int], repeats: int, window_s: float, seed: int = 0,
                 progress: bool = True) -> list[dict[str, Any]]:
    from engine.runtime import prepare_batch

    reqs = _requests(max(batch_sizes), backend.fs, window_s, seed)
    inputs, prep_ms = {}, {}
    for b in batch_sizes:
        t = time.perf_counter()
        inputs[b] = prepare_batch(reqs[:b])
        prep_ms[b] = (time.perf_counter() - t) * 1e3
    times: dict[int, list[float]] = {b: [] for b in batch_sizes}
    total = len(batch_sizes) * (repeats + 1)
    with _bar(total, "engine", progress) as bar:
        for b in batch_sizes:  # warm-up (allocator, kernels, thread pool): not timed
            backend.run(*inputs[b])
            bar.update(1)
        for _ in range(repeats):
            for b in batch_sizes:
                t = time.perf_counter()
                backend.run(*inputs[b])  # returns numpy: synchronous also on CUDA
                times[b].append(time.perf_counter() - t)
                bar.update(1)
    rows = []
    for b in batch_sizes:
        med = float(np.median(times[b]))
        rows.append({"batch": b, "windows_per_s": b / med,
                     "latency_ms_p50": _pct(times[b], 50) * 1e3, "latency_ms_p99": _pct(times[b], 99) * 1e3,
                     "ms_per_window": med * 1e3 / b, "prepare_ms": prep_ms[b], "repeats": len(times[b])})
    return rows


class _bar:
    """tqdm on stderr (or nothing)."""

    def __init__(self, total: float, desc: str, enabled: bool, unit: str = "it") -> None:
        self.t = None
        if enabled:
            from tqdm import tqdm

            self.t = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                          dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n: float = 1) -> None:
        if self.t is not None:
            self.t.update(n)

    def set_postfix_str(self, s: str) -> None:
        if self.t is not None:
            self.t.set_postfix_str(s, refresh=False)

    def __exit__(self, *exc) -> None:
        if self.t is not None:
            self.t.close()


async def _live(backend, *, patients: int, duration_s: float, window_s: float, hop_s: float,
                steps: int, k: int, threads: int | None, device: str, max_batch: int, seed: int,
                checkpoint: str | None, progress: bool) -> dict[str, Any]:
    from engine.demo import _start_broker, shutdown_live
    from engine.pipeline import Pipeline, PipelineConfig, is_busy, new_client_id
    from wearable.publisher import simulate_async

    for name in ("amqtt", "transitions", "passlib", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.ERROR)
    broker = pipe = sim_task = None
    expected = int((duration_s - window_s) // hop_s) + 1  # full windows per patient
    snaps: list[tuple[float, int]] = []
    try:
        broker, url = await _start_broker()
        try:
            cfg = PipelineConfig(broker=url, client_id=new_client_id("p2es-bench"), mqtt_version="3.1.1",
                                 influx_url=None, window_s=window_s, hop_s=hop_s, steps=steps, k=k,
                                 threads=threads, device=device, max_batch=max_batch, seed=seed,
                                 checkpoint=checkpoint, stream_reorder_wait_s=1.0)
        except ValueError as e:
            raise P2esError(str(e).splitlines()[0]) from None
        pipe = Pipeline(cfg, backend=backend)
        try:
            await pipe.start()
        except ValueError as e:
            raise P2esError(str(e)) from None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pipe.ingest.connected.wait()), 15.0)
        if not pipe.ingest.connected.is_set():
            raise P2esError(f"ingest could not connect to the embedded broker {url}")
        sim_stop = asyncio.Event()
        t0 = time.monotonic()
        # one extra second of signal: the streaming resampler holds back a few input samples
        sim_task = asyncio.create_task(simulate_async(
            url, patients, speed=1.0, seed=seed, duration_s=duration_s + 1.0, t_start=time.time(),
            stop=sim_stop, mqtt_version="3.1.1", prefix="bench"), name="p2es-bench-sim")
        t_sim_done = t_quiet = None
        last = -1
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
                if sim_task.done():
                    if sim_task.exception() is not None:
                        raise P2esError(f"simulated wearables failed: {sim_task.exception()}")
                    t_sim_done = t_sim_done or now
                    busy = is_busy(st)
                    if st["windows"] != last or busy:
                        last, t_quiet = st["windows"], now
                    if st["windows"] >= expected * patients or now - t_quiet > 3.0 \
                            or now - t_sim_done > max(30.0, 2 * hop_s):
                        break
        drain_s = time.monotonic() - t_sim_done
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
    kept_up = bool(e2e) and done >= expected * patients and dropped == 0 and errors == 0 \
        and growth <= max(0.5 * hop_s, 0.5)
    return {"patients": patients, "duration_s": duration_s,
            "e2e_latency_ms_p50": _pct(e2e, 50) * 1e3, "e2e_latency_ms_p99": _pct(e2e, 99) * 1e3,
            "e2e_latency_ms_max": (max(e2e) * 1e3) if e2e else math.nan,
            "kept_up": kept_up, "windows": done, "windows_expected": expected * patients,
            "windows_dropped": dropped, "errors": errors, "e2e_growth_ms": growth * 1e3,
            "drain_s": drain_s, "batch_size_mean": st["batch_size_mean"],
            "batch_size_max": st["batch_size_max"]}


def run_bench(checkpoint: str | None = None, *, backend: str = "torch", device: str = "cpu",
              threads: int | None = None, steps: int = 10, k: int = 2,
              batch_sizes: list[int] = (1, 4, 16, 32), repeats: int = 5, window_s: float = 8.0,
              hop_s: float = 4.0, live_patients: int | None = None, live_duration: float = 40.0,
              seed: int = 0, progress: bool = True, flops: bool = True) -> dict[str, Any]:
    """All three measurements -> the JSON-ready result (see the module docstring)."""
    _validate(backend=backend, threads=threads, steps=steps, k=k, batch_sizes=batch_sizes, repeats=repeats,
              window_s=window_s, hop_s=hop_s, live_patients=live_patients, live_duration=live_duration)
    import torch

    from engine.checkpoint import load_model
    from engine.reconstruct import DEFAULT_CHECKPOINT
    from engine.runtime import TorchBackend

    path = str(checkpoint or DEFAULT_CHECKPOINT)
    if not Path(path).is_file():
        raise P2esError(f"checkpoint not found: {path}")
    try:
        entry = load_model(path, "p2es")
    except KeyError:
        raise P2esError(f"checkpoint {path} holds no 'p2es' model") from None
    be = TorchBackend(entry, device=device, steps=steps, k=k, seed=seed, threads=threads)
    T_win = int(round(window_s * be.fs))
    if T_win != be.T:
        raise P2esError(f"--window-s {window_s:g} gives {T_win} samples at {be.fs:g} Hz "
                        f"but the model takes T={be.T} ({be.T / be.fs:g} s)")
    batch_sizes = sorted(set(int(b) for b in batch_sizes))
    t_all = time.monotonic()
    rows = bench_engine(be, batch_sizes=batch_sizes, repeats=repeats, window_s=window_s, seed=seed,
                        progress=progress)
    fl = None
    if flops:
        from engine.runtime import prepare_batch

        fl = _flops_per_window_step(be, *prepare_batch(_requests(1, be.fs, window_s, seed)))
    best = max(rows, key=lambda r: r["windows_per_s"])
    sustained = int(math.floor(best["windows_per_s"] * hop_s))
    out: dict[str, Any] = {
        "device": device, "device_name": _device_name(device), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if be.device.type == "cpu" else threads,
        "backend": backend, "steps": steps, "k": k, "window_s": window_s, "hop_s": hop_s,
        "engine": rows,
        "flops_per_window_step": fl,
        "flops_per_window": fl * steps * k if fl else None,  # steps x k denoiser calls per window
        "patients_sustained": sustained,
        "patients_sustained_detail": {
            "best_batch": best["batch"], "best_windows_per_s": best["windows_per_s"],
            "formula": "best windows/s x hop_s",
            "recommended": int(math.floor(sustained * SAFETY_MARGIN)),
            "note": (f"capacity at steps={steps}, k={k}, threads={out_threads(be, threads)}; plan for at most "
                     f"{int(SAFETY_MARGIN * 100)}% of it (bursty arrivals, ingest/stitching/vitals "
                     "overhead, other load on the machine); batches only fill up to the best size "
                     "when that many patients' windows arrive together")},
        "live": None,
        "checkpoint": str(Path(path).resolve()),
        "torch": torch.__version__,
    }
    n_live = live_patients if live_patients is not None else min(LIVE_DEFAULT_CAP, max(1, sustained // 2))
    if n_live > 0:
        out["live"] = asyncio.run(_live(
            be, patients=n_live, duration_s=live_duration, window_s=window_s, hop_s=hop_s, steps=steps,
            k=k, threads=threads, device=device, max_batch=max(batch_sizes), seed=seed,
            checkpoint=checkpoint, progress=progress))
        out["live"]["patients_default"] = live_patients is None
    out["seconds"] = time.monotonic() - t_all
    return out


def out_threads(be, threads: int | None):
    import torch

    return torch.get_num_threads() if be.device.type == "cpu" else threads


def _validate(*, backend, threads, steps, k, batch_sizes, repeats, window_s, hop_s, live_patients,
              live_duration) -> None:
    if backend != "torch":
        raise P2esError(f"--backend must be torch, got {backend!r}")
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
        raise P2esError(f"--live-duration must be >= --window-s + --hop-s ({window_s + hop_s:g} s) "
                        f"so that at least two windows complete, got {live_duration}")


def _f(x, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(res: dict[str, Any]) -> str:
    lines = [f"p2es bench: {res['device']} ({res['device_name']}), {res['cpu_count']} CPUs, "
             f"threads {res['threads']}, steps {res['steps']}, k {res['k']}, "
             f"window {res['window_s']:g} s / hop {res['hop_s']:g} s",
             f"{'batch':>5}  {'windows/s':>10}  {'lat p50 ms':>10}  {'lat p99 ms':>10}  {'ms/window':>9}"]
    for r in res["engine"]:
        lines.append(f"{r['batch']:>5}  {r['windows_per_s']:>10.2f}  {r['latency_ms_p50']:>10.1f}  "
                     f"{r['latency_ms_p99']:>10.1f}  {r['ms_per_window']:>9.1f}")
    if res.get("flops_per_window_step"):
        lines.append(f"FLOPs per window-step (k=1): {res['flops_per_window_step'] / 1e9:.3f} GFLOP")
    d = res["patients_sustained_detail"]
    lines.append(f"patients sustained in real time: {res['patients_sustained']} "
                 f"(= {d['best_windows_per_s']:.2f} windows/s at batch {d['best_batch']} x hop {res['hop_s']:g} s); "
                 f"recommended <= {d['recommended']} ({int(SAFETY_MARGIN * 100)}% margin)")
    lv = res.get("live")
    if lv:
        lines.append(f"live: {lv['patients']} patient(s) x {lv['duration_s']:g} s at speed 1: "
                     f"e2e p50 {_f(lv['e2e_latency_ms_p50'], '.0f')} ms, p99 {_f(lv['e2e_latency_ms_p99'], '.0f')} ms, "
                     f"windows {lv['windows']}/{lv['windows_expected']}, dropped {lv['windows_dropped']}, "
                     f"latency growth {_f(lv['e2e_growth_ms'], '.0f')} ms -> "
                     f"{'kept up' if lv['kept_up'] else 'did NOT keep up'}")
    else:
        lines.append("live: skipped")
    return "\n".join(lines)


def _jsonable(x):
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
