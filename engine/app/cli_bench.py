"""``p2es bench``: engine throughput, patients sustained in real time, end-to-end live latency.

Wire into the CLI with ``register_bench(sub)``.  Bad input is one line (:class:`p2es.errors.P2esError`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from p2es.errors import P2esError

__all__ = ["register_bench", "bench_main"]


def register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "bench", help="benchmark the engine: windows/s, patients sustained, live end-to-end latency"
    )
    b.add_argument("--json", required=True, metavar="OUT.json", help="write the full result here")
    b.add_argument("--checkpoint", default=None, help="checkpoint set (default: the shipped one)")
    b.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        default="all",
        help="comma-separated: torch, onnxruntime, tensorrt, or all (default: every backend "
        "available on --device); the torch-eager baseline always runs",
    )
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak in TFLOP/s for the fraction-of-peak column (default: known GPUs only)",
    )
    b.add_argument(
        "--cache-dir", default=None, help="ONNX/TensorRT cache (default $P2ES_CACHE_DIR or ~/.cache/p2es)"
    )
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--steps", type=int, default=10, help="reverse diffusion steps (default 10)")
    b.add_argument("--k", type=int, default=2, help="samples per window (default 2)")
    b.add_argument("--batch-sizes", default="1,4,16,32", help="comma-separated (default 1,4,16,32)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (default 5)")
    b.add_argument("--window-s", type=float, default=8.0)
    b.add_argument("--hop-s", type=float, default=4.0)
    b.add_argument(
        "--live-patients",
        type=int,
        default=None,
        help="patients in the live run (default: half the sustained estimate, at least 1; 0 skips it)",
    )
    b.add_argument("--live-duration", type=float, default=40.0, help="seconds of live signal (default 40)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=bench_main)


def bench_main(args: argparse.Namespace) -> int:
    from engine.app.bench import (  # lazy: CLI start-up time (the serving stack loads only for `p2es bench`)
        format_table,
        parse_batch_sizes,
        run_bench,
        save_json,
    )

    out = Path(args.json)
    if out.exists() and out.is_dir():
        raise P2esError(f"--json must be a file path, got the directory {out}")
    if not out.parent.exists():  # fail before the run, not after it
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise P2esError(f"cannot create {out.parent}: {e.strerror or e}") from None
    res = run_bench(
        args.checkpoint,
        backend=args.backends,
        device=args.device,
        threads=args.threads,
        steps=args.steps,
        k=args.k,
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        repeats=args.repeats,
        window_s=args.window_s,
        hop_s=args.hop_s,
        live_patients=args.live_patients,
        live_duration=args.live_duration,
        seed=args.seed,
        progress=not args.no_progress,
        flops=not args.no_flops,
        peak_tflops=args.peak_tflops,
        cache_dir=args.cache_dir,
    )
    print(format_table(res))
    try:
        print(f"wrote {save_json(res, out)}")
    except OSError as e:
        raise P2esError(f"cannot write {out}: {e.strerror or e}") from None
    return 0
