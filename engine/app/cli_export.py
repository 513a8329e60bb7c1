"""``p2es export``: the network passes as ONNX (checked against torch) and TensorRT engines.

Wire into the CLI with ``register_export(sub)``.  Bad input is one line (:class:`p2es.errors.P2esError`).
"""

from __future__ import annotations

import argparse
import importlib.util

from engine.model.checkpoint import DEFAULT_CHECKPOINT
from p2es.errors import P2esError

__all__ = ["register_export", "export_main"]


def register_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("export", help="export the network passes to ONNX (checked against torch) or TensorRT")
    e.add_argument("--checkpoint", default=None, help="checkpoint set (default: the shipped one)")
    e.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    e.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (one sub-directory per model)"
    )
    e.add_argument(
        "--models", default="p2es", help="comma-separated model names of the set, or 'all' (default p2es)"
    )
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    e.add_argument("--max-batch", type=int, default=32, help="TensorRT profile: largest batch (default 32)")
    e.add_argument(
        "--opt-batch", type=int, default=8, help="TensorRT profile: batch to optimise for (default 8)"
    )
    e.add_argument(
        "--k", type=int, default=2, help="samples per window (denoise batch = batch x k; default 2)"
    )
    e.add_argument("--fp32", action="store_true", help="TensorRT: build fp32 engines (default fp16)")
    e.add_argument("--no-check", action="store_true", help="skip the comparison against torch")
    e.add_argument("--cache-dir", default=None, help="TensorRT engine/timing cache (default ~/.cache/p2es)")
    e.add_argument("--threads", type=int, default=None, help="CPU threads for the checks (default 1)")
    e.set_defaults(func=export_main)


def export_main(args: argparse.Namespace) -> int:
    from engine.serve.export import (  # lazy: CLI start-up time (the export code loads only for `p2es export`)
        DEFAULT_OPSET,
        export,
        format_report,
    )

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise P2esError("p2es export needs the onnx and onnxruntime packages (pip install 'p2es[onnx]')")
    if args.threads is not None and args.threads < 1:
        raise P2esError(f"--threads must be >= 1, got {args.threads}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise P2esError("--models needs at least one model name (or 'all')")
    rep = export(
        args.checkpoint or DEFAULT_CHECKPOINT,
        args.out,
        fmt=args.format,
        models=models,
        opset=args.opset or DEFAULT_OPSET,
        check=not args.no_check,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        k=args.k,
        fp16=not args.fp32,
        cache_dir=args.cache_dir,
        threads=args.threads or 1,
    )
    print(format_report(rep))
    return 0
