"""``p2es export``: the ONNX artefact of each model, verified against torch (and the TensorRT
engine build on top of it).

The graphs themselves (two passes, dynamic batch axis, DCT as ``MatMul``) and the on-demand
cache the backends load from are :mod:`engine.serve.onnx_graphs`.  Verification lives here, in
the export command, and nowhere else: a backend only loads an artefact.

Graphs are checked against torch on random inputs (a batch size other than the traced one, so
the dynamic axis is exercised) and the whole reconstruction (encode + every DDIM step + 12-lead
finish) of the ONNX Runtime backend against the torch backend; the relative errors go into
``meta.json`` / the export report.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.model.checkpoint import list_models, load_set
from engine.serve.backends import tensorrt as trtb
from engine.serve.backends.ort import OrtBackend, make_session
from engine.serve.onnx_graphs import (
    DEFAULT_OPSET,
    TRT_SUPPORTED_OPS,
    TRT_UNSUPPORTED_KNOWN,
    cpu_entry,
    ensure_onnx,
    example_inputs,
    export_artefact,
    export_graphs,
    inspect_graph,
    io_names,
    pass_modules,
)
from engine.serve.runtime import TorchBackend
from p2es.errors import P2esError

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry

__all__ = [
    "DEFAULT_OPSET",
    "TRT_SUPPORTED_OPS",
    "TRT_UNSUPPORTED_KNOWN",
    "check_passes",
    "check_reconstruction",
    "cpu_entry",
    "ensure_onnx",
    "export",
    "export_graphs",
    "export_model",
    "format_report",
    "inspect_graph",
    "io_names",
]


# ------------------------------------------------------------------------------ checks against torch
def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (b the torch reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b)) / den)


def check_passes(
    entry: Entry,
    model_dir: str | os.PathLike[str],
    *,
    batch: int = 3,
    threads: int | None = 1,
    seed: int = 1,
) -> dict[str, float]:
    """Both graphs vs torch on random inputs (batch != the traced one): relative errors."""
    model = cpu_entry(entry).model.eval()
    cfg = model.cfg
    names = io_names(cfg)
    enc, den = pass_modules(model)
    ppg, demo, mask = example_inputs(cfg, batch, seed)
    s_enc = make_session(Path(model_dir) / "encode.onnx", threads=threads)
    s_den = make_session(Path(model_dir) / "denoise.onnx", threads=threads)
    feed = {"ppg": ppg.numpy(), "demo": demo.numpy(), "demo_mask": mask.numpy()}
    want = {i.name for i in s_enc.get_inputs()}
    got = s_enc.run(names["encode_out"], {k: v for k, v in feed.items() if k in want})
    with torch.no_grad():
        ref = enc(ppg, demo, mask)
    errs = {f"encode.{n}": _rel_err(g, r.numpy()) for n, g, r in zip(names["encode_out"], got, ref)}
    g = torch.Generator().manual_seed(seed + 1)
    x_t = torch.randn(batch, cfg.n_leads, cfg.T, generator=g)
    t = torch.rand(batch, generator=g)
    cond_np = dict(zip(names["encode_out"], (r.numpy() for r in ref)))
    dfeed = dict(cond_np) if cfg.diffusion == "none" else {"x_t": x_t.numpy(), "t": t.numpy(), **cond_np}
    want = {i.name for i in s_den.get_inputs()}
    (x0,) = s_den.run(["x0"], {k: v for k, v in dfeed.items() if k in want})
    with torch.no_grad():
        x0_ref = den(*ref) if cfg.diffusion == "none" else den(x_t, t, *ref)
    errs["denoise.x0"] = _rel_err(x0, x0_ref.numpy())
    return errs


def check_reconstruction(
    entry: Entry,
    model_dir: str | os.PathLike[str],
    *,
    batch: int = 2,
    steps: int = 10,
    k: int = 2,
    seed: int = 0,
    threads: int | None = 1,
) -> dict[str, float]:
    """Whole reconstruction (same seed => same x_T): ONNX Runtime backend vs torch backend."""
    entry = cpu_entry(entry)
    cfg = entry.model.cfg
    ppg, demo, mask = (a.numpy() for a in example_inputs(cfg, batch, seed + 7))
    n_threads = torch.get_num_threads()  # TorchBackend sets the process-wide count: restore it
    try:
        tb = TorchBackend(entry, steps=steps, k=k, seed=seed, threads=threads)
        ob = OrtBackend(entry, steps=steps, k=k, seed=seed, threads=threads, model_dir=model_dir)
        m_ref, s_ref = tb.run(ppg, demo, mask)
        m, s = ob.run(ppg, demo, mask)
    finally:
        torch.set_num_threads(n_threads)
    out = {"mean": _rel_err(m, m_ref), "steps": steps, "k": k, "batch": batch}
    if k > 1:
        out["std"] = _rel_err(s, s_ref)
    return out


def export_model(
    entry: Entry,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    model_hash_: str | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Export + inspect (+ check) one model into ``out_dir``; returns its report (meta)."""
    t0 = time.monotonic()
    meta = export_artefact(entry, out_dir, opset=opset, model_hash_=model_hash_)
    del meta["seconds"]  # re-added last, over export and checks
    if check:
        meta["check_passes_rel_err"] = check_passes(entry, out_dir, threads=threads)
        meta["check_reconstruction_rel_err"] = check_reconstruction(entry, out_dir, threads=threads)
    meta["seconds"] = round(time.monotonic() - t0, 2)
    return meta


# ------------------------------------------------------------------------------ the command
def export(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str = "onnx",
    models: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    max_batch: int = 32,
    opt_batch: int = 8,
    k: int = 2,
    fp16: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """``p2es export``: every requested model of a checkpoint set -> ``out_dir/<model>/``.

    ``fmt == "tensorrt"`` additionally builds the TensorRT engines (needs ``tensorrt`` and a GPU);
    the build plan (profile shapes, cache key inputs) is written even where it cannot be built.
    """
    if fmt not in ("onnx", "tensorrt"):
        raise P2esError(f"--format must be onnx or tensorrt, got {fmt!r}")
    if not 9 <= opset <= 20:
        raise P2esError(f"--opset must be within 9..20 (TensorRT 10's ONNX parser), got {opset}")
    if not 1 <= opt_batch <= max_batch:
        raise P2esError(f"need 1 <= --opt-batch <= --max-batch, got {opt_batch} and {max_batch}")
    if k < 1:
        raise P2esError(f"--k must be >= 1, got {k}")
    avail = list(list_models(checkpoint))
    names = avail if not models or models == ["all"] else models
    entries = load_set(checkpoint, names)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise P2esError(f"cannot create {out}: {e.strerror or e}") from None
    report: dict[str, Any] = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "format": fmt,
        "opset": opset,
        "models": {},
    }
    for name, entry in entries.items():
        d = out / name
        meta = export_model(entry, d, opset=opset, check=check, threads=threads)
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        report["models"][name] = meta
        if fmt == "tensorrt":
            plan = trtb.build_plan(
                entry,
                d,
                max_batch=max_batch,
                opt_batch=opt_batch,
                k=k,
                fp16=fp16,
                model_hash_=meta["model_hash"],
            )
            meta["tensorrt_plan"] = plan
            (d / "tensorrt_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    report_path = out / "export_report.json"
    if fmt == "tensorrt":
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        trtb.require_tensorrt(f"ONNX graphs and the build plan are in {out}")
        for name in entries:
            d = out / name
            meta = report["models"][name]
            meta["tensorrt"] = trtb.build_engines(d, meta["tensorrt_plan"], cache_dir=cache_dir)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report["report_path"] = str(report_path)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"p2es export ({report['format']}, opset {report['opset']}) -> {report.get('report_path', '')}"]
    for name, m in report["models"].items():
        ops = sorted(set(m["graphs"]["encode"]["op_types"]) | set(m["graphs"]["denoise"]["op_types"]))
        lines.append(
            f"{name}: hash {m['model_hash'][:12]}, encode {m['graphs']['encode']['nodes']} nodes, "
            f"denoise {m['graphs']['denoise']['nodes']} nodes, DCT as MatMul: "
            f"{m['graphs']['denoise']['dct_matmuls']} (FFT ops: {m['graphs']['denoise']['fft_ops'] or 'none'})"
        )
        lines.append(f"  op types: {', '.join(ops)}")
        bad = sorted(
            set(
                m["graphs"]["encode"]["trt_unsupported"]
                + m["graphs"]["denoise"]["trt_unsupported"]
                + m["graphs"]["encode"]["trt_unverified"]
                + m["graphs"]["denoise"]["trt_unverified"]
            )
        )
        lines.append(
            f"  TensorRT ONNX parser: {'all op types supported' if not bad else 'CHECK ' + ', '.join(bad)}"
        )
        if "check_passes_rel_err" in m:
            e = max(m["check_passes_rel_err"].values())
            r = m["check_reconstruction_rel_err"]
            lines.append(
                f"  vs torch (random inputs, fp32): passes max rel err {e:.2e}; whole reconstruction "
                f"(steps {r['steps']}, k {r['k']}) mean {r['mean']:.2e}"
                + (f", std {r['std']:.2e}" if "std" in r else "")
            )
        if "tensorrt" in m:
            lines.append(f"  TensorRT engines: {m['tensorrt']}")
    return "\n".join(lines)
