"""torch-CUDA backend: eager vs CUDA graphs vs bf16, at several batch sizes (run by bench/gpu.sh).

Usage:  python bench/gpu_bench.py [--batch-sizes 1,8,32,128] [--steps 10] [--k 2] [--repeats 5]
                                  [--checkpoint PATH] [--json OUT.json] [--device cuda]

Needs only torch (+ this repository's own dependencies).  Four variants of
:class:`engine.serve.runtime.TorchBackend`, all the same sampling loop: fp32 eager (the baseline),
fp32 + CUDA graphs, bf16 eager, bf16 + CUDA graphs.  Every (variant, batch) is warmed up once (the
graph capture happens there), then ``repeats`` interleaved rounds; the table gives windows/s of the
median, p50/p99 batch latency, the ratio to fp32 eager at the same batch size, the achieved
TFLOP/s (FLOPs per window from torch's FlopCounterMode) and, on known GPUs, the fraction of the
dense peak for that precision; plus max |mean - fp32 eager mean| in mV (the same initial noise).
``--device cpu`` runs the eager variants only (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from engine.app.bench import _device_name, _flops, _requests, parse_batch_sizes, peak_flops
    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.serve.runtime import TorchBackend, prepare_batch

    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    sizes = parse_batch_sizes(a.batch_sizes)
    ck = a.checkpoint or DEFAULT_CHECKPOINT
    variants = [
        ("fp32 eager", "fp32", False),
        ("fp32 graphs", "fp32", True),
        ("bf16 eager", "bf16", False),
        ("bf16 graphs", "bf16", True),
    ]
    if not cuda:
        variants = [v for v in variants if not v[2] and v[1] == "fp32"]
    bes = {}
    for name, prec, graphs in variants:
        bes[name] = TorchBackend(
            load_model(ck, "p2es"),
            device=a.device,
            steps=a.steps,
            k=a.k,
            seed=0,
            precision=prec,
            cuda_graphs=graphs,
            max_batch=max(sizes),
        )
    fs = next(iter(bes.values())).fs
    inputs = {b: prepare_batch(_requests(b, fs, 8.0, 0)) for b in sizes}
    fl = _flops(load_model(ck, "p2es"), a.steps, a.k)
    dev = _device_name(a.device)
    times = {(n, b): [] for n in bes for b in sizes}
    ref, err = {}, {}
    t0 = time.monotonic()
    for n, be in bes.items():
        for b in sizes:
            be._calls = 0  # same seed -> same x_T for every variant
            mean, _ = be.run(*inputs[b])
            if n == "fp32 eager":
                ref[b] = mean
            err[(n, b)] = float(np.max(np.abs(mean - ref[b])))
    for _ in range(a.repeats):
        for b in sizes:
            for n, be in bes.items():
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                be.run(*inputs[b])
                times[(n, b)].append(time.perf_counter() - t)
    rows = []
    for b in sizes:
        base = b / float(np.median(times[("fp32 eager", b)]))
        for n, prec, _ in variants:
            ts = times[(n, b)]
            wps = b / float(np.median(ts))
            tflops = fl["window"] * wps / 1e12 if fl else None
            peak = peak_flops(dev, prec) if cuda else None
            rows.append(
                {
                    "variant": n,
                    "batch": b,
                    "windows_per_s": wps,
                    "latency_ms_p50": float(np.percentile(ts, 50)) * 1e3,
                    "latency_ms_p99": float(np.percentile(ts, 99)) * 1e3,
                    "ratio_vs_fp32_eager": wps / base,
                    "tflops": tflops,
                    "fraction_of_peak": (tflops * 1e12 / peak) if (tflops and peak) else None,
                    "max_abs_diff_mv": err[(n, b)],
                }
            )
    print(
        f"gpu_bench: {dev}, torch {torch.__version__}, steps {a.steps}, k {a.k}, "
        f"{fl['window'] / 1e9:.2f} GFLOP per window"
        if fl
        else ""
    )
    print(
        f"{'variant':<12} {'batch':>5} {'windows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'x eager':>7} "
        f"{'TFLOP/s':>8} {'%peak':>6} {'max|d| mV':>9}"
    )
    for r in rows:
        pk = f"{100 * r['fraction_of_peak']:.2f}" if r["fraction_of_peak"] else "-"
        tf = f"{r['tflops']:.2f}" if r["tflops"] else "-"
        print(
            f"{r['variant']:<12} {r['batch']:>5} {r['windows_per_s']:>10.1f} {r['latency_ms_p50']:>8.1f} "
            f"{r['latency_ms_p99']:>8.1f} {r['ratio_vs_fp32_eager']:>7.2f} {tf:>8} {pk:>6} "
            f"{r['max_abs_diff_mv']:>9.2e}"
        )
    print(f"({time.monotonic() - t0:.0f} s)")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "device": dev,
                    "torch": torch.__version__,
                    "steps": a.steps,
                    "k": a.k,
                    "flops": fl,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
