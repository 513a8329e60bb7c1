"""ONNX export of the network passes (and the TensorRT engine build on top of it).

The network has two passes (:class:`engine.model.P2ES`), exported as two graphs with a dynamic
batch axis ``B`` on every input and output:

* ``encode.onnx``  - ``ppg [B,3,T], demo [B,5], demo_mask [B,5]`` -> ``feat0 .. feat{L-1}``
  (per-level PPG features) and, with demographic groups, ``gemb [B,E]`` (group embedding) and
  ``A [B,8,8]`` (the patient's lead affinity from the GroupFinder's soft assignment: the whole
  embedding -> softmax over the group bank -> affinity mix is inside this graph);
* ``denoise.onnx`` - ``x_t [B,8,T], t [B]`` + the conditioning above -> ``x0 [B,8,T]``
  (for the regression baseline, ``diffusion == "none"``, only the conditioning).

The DCT of the frequency-deblurring stage is a constant ``[T,T]`` matrix, so it is a ``MatMul``
(no DFT op); the report lists every op type and flags any TensorRT's ONNX parser does not take.
The schedule and the sampling loop are *not* in the graphs (see :mod:`engine.backends.common`).

Graphs are checked against torch on random inputs (a batch size other than the traced one, so
the dynamic axis is exercised) and the whole reconstruction (encode + every DDIM step + 12-lead
finish) of the ONNX Runtime backend against the torch backend; the relative errors go into
``meta.json`` / the export report.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.common import EXPORT_VERSION, cache_root, model_hash
from p2es.errors import P2esError

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; TensorRT 10 parses opsets 9..20

# ONNX ops the TensorRT 10 ONNX parser supports that can plausibly appear in these graphs
# (from onnx-tensorrt's operator support matrix).  Anything else is reported as unverified.
TRT_SUPPORTED_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Div Einsum Equal Erf Exp Expand Flatten Floor Gather
GatherElements Gemm GlobalAveragePool Greater GreaterOrEqual GroupNormalization Identity
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log MatMul Max
MaxPool Mean Min Mod Mul Neg Not Or Pad Pow Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Shape
Sigmoid Sign Sin Size Slice Softmax Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose
Unsqueeze Where Xor
""".split())
TRT_UNSUPPORTED_KNOWN = frozenset({"DFT", "STFT", "Loop", "SequenceAt", "SequenceConstruct",
                                   "SplitToSequence", "ConcatFromSequence", "Bernoulli",
                                   "RandomNormal", "RandomNormalLike", "RandomUniform"})


# ------------------------------------------------------------------------------ graph wrappers
def _torch():
    import torch

    return torch


def cpu_entry(entry):
    """``entry`` itself if its model is on the CPU, else a copy with a CPU copy of the model
    (export and checks must not move a model another backend is using on the GPU)."""
    import copy
    import dataclasses

    if all(p.device.type == "cpu" for p in entry.model.parameters()):
        return entry
    return dataclasses.replace(entry, model=copy.deepcopy(entry.model).cpu().eval())


def io_names(cfg) -> dict[str, list[str]]:
    """Input / output names of both graphs for a :class:`ModelConfig`."""
    L = len(cfg.widths)
    cond = [f"feat{l}" for l in range(L)] + (["gemb", "A"] if cfg.use_groups else [])
    den_in = ([] if cfg.diffusion == "none" else ["x_t", "t"]) + cond
    enc_in = ["ppg"] + (["demo", "demo_mask"] if cfg.use_groups else [])  # unused inputs are dropped
    return {"encode_in": enc_in, "encode_out": cond,
            "denoise_in": den_in, "denoise_out": ["x0"], "cond": cond}


def _wrappers(model):
    torch = _torch()
    from engine.model import Cond

    cfg = model.cfg
    L = len(cfg.widths)

    class Encode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, ppg, demo, demo_mask):
            c = self.m.encode(ppg, demo, demo_mask)
            return tuple(c.ppg) + ((c.gemb, c.A) if c.A is not None else ())

    class Denoise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *args):
            if cfg.diffusion == "none":
                x_t = t = None
                rest = args
            else:
                x_t, t, *rest = args
            feats = list(rest[:L])
            gemb, A = (rest[L], rest[L + 1]) if cfg.use_groups else (None, None)
            return self.m.denoise(x_t, t, Cond(feats, gemb, A, None, None))

    return Encode().eval(), Denoise().eval()


def _example_inputs(cfg, B: int, seed: int = 0):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    ppg = torch.randn(B, cfg.ppg_channels, cfg.T, generator=g)
    demo = torch.randn(B, cfg.n_demo, generator=g)
    mask = (torch.rand(B, cfg.n_demo, generator=g) > 0.3).float()
    return ppg, demo, mask


def export_graphs(entry, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                  trace_batch: int = 2) -> dict[str, Any]:
    """Write ``encode.onnx`` + ``denoise.onnx`` of one model into ``out_dir``; returns io info."""
    torch = _torch()
    model = cpu_entry(entry).model.eval()
    cfg = model.cfg
    names = io_names(cfg)
    enc, den = _wrappers(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ppg, demo, mask = _example_inputs(cfg, trace_batch)
    with torch.no_grad():
        cond = enc(ppg, demo, mask)
        x_t = torch.randn(trace_batch, cfg.n_leads, cfg.T)
        t = torch.full((trace_batch,), 0.5)
        den_args = tuple(cond) if cfg.diffusion == "none" else (x_t, t, *cond)
    dyn = lambda ns: {n: {0: "B"} for n in ns}  # noqa: E731
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(enc, (ppg, demo, mask), str(out / "encode.onnx"), dynamo=False,
                              opset_version=opset, input_names=["ppg", "demo", "demo_mask"],
                              output_names=names["encode_out"],
                              dynamic_axes=dyn(names["encode_in"] + names["encode_out"]),
                              do_constant_folding=True)
            torch.onnx.export(den, den_args, str(out / "denoise.onnx"), dynamo=False,
                              opset_version=opset, input_names=names["denoise_in"],
                              output_names=names["denoise_out"],
                              dynamic_axes=dyn(names["denoise_in"] + names["denoise_out"]),
                              do_constant_folding=True)
        except Exception as e:  # noqa: BLE001
            raise P2esError(f"ONNX export of {entry.name!r} failed: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    return names


def inspect_graph(path: str | os.PathLike, T: int) -> dict[str, Any]:
    """onnx.checker + op types + how the DCT appears + TensorRT parser compatibility."""
    import onnx

    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise P2esError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = tuple(a.t.dims)
    shapes = {**inits, **consts}
    ops: dict[str, int] = {}
    dct_matmuls = 0
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type == "MatMul" and any(shapes.get(i) == (T, T) for i in n.input):
            dct_matmuls += 1
    op_types = sorted(ops)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return {
        "file": Path(path).name, "bytes": Path(path).stat().st_size, "opset": m.opset_import[0].version,
        "inputs": {i.name: dims(i) for i in m.graph.input},
        "outputs": {o.name: dims(o) for o in m.graph.output},
        "op_types": op_types, "op_counts": ops, "nodes": len(m.graph.node),
        "dct_matmuls": dct_matmuls,
        "fft_ops": sorted(o for o in op_types if o in ("DFT", "STFT")),
        "trt_unsupported": sorted(o for o in op_types if o in TRT_UNSUPPORTED_KNOWN),
        "trt_unverified": sorted(o for o in op_types if o not in TRT_SUPPORTED_OPS
                                 and o not in TRT_UNSUPPORTED_KNOWN),
    }


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (b the torch reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b)) / den)


def check_passes(entry, model_dir: str | os.PathLike, *, batch: int = 3, threads: int | None = 1,
                 seed: int = 1) -> dict[str, float]:
    """Both graphs vs torch on random inputs (batch != the traced one): relative errors."""
    torch = _torch()
    from engine.backends.ort import make_session

    model = cpu_entry(entry).model.eval()
    cfg = model.cfg
    names = io_names(cfg)
    enc, den = _wrappers(model)
    ppg, demo, mask = _example_inputs(cfg, batch, seed)
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


def check_reconstruction(entry, model_dir: str | os.PathLike, *, batch: int = 2, steps: int = 10,
                         k: int = 2, seed: int = 0, threads: int | None = 1) -> dict[str, float]:
    """Whole reconstruction (same seed => same x_T): ONNX Runtime backend vs torch backend."""
    from engine.backends.ort import OrtBackend
    from engine.runtime import TorchBackend

    torch = _torch()
    entry = cpu_entry(entry)
    cfg = entry.model.cfg
    ppg, demo, mask = (a.numpy() for a in _example_inputs(cfg, batch, seed + 7))
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


# ------------------------------------------------------------------------------ cached export
def ensure_onnx(entry, cache_dir: str | os.PathLike | None = None, *, opset: int = DEFAULT_OPSET,
                check: bool = True) -> Path:
    """Directory with this model's ``encode.onnx`` / ``denoise.onnx`` / ``meta.json``, exported
    on first use into ``<cache>/onnx/<model hash>/`` (atomic: a temp dir renamed into place)."""
    h = model_hash(entry, opset=opset)
    root = cache_root(cache_dir) / "onnx"
    final = root / h[:24]
    if (final / "meta.json").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    except OSError as e:
        raise P2esError(f"cannot write the ONNX cache under {root}: {e.strerror or e}") from None
    try:
        meta = export_model(entry, tmp, opset=opset, check=check, model_hash_=h)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def export_model(entry, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET, check: bool = True,
                 model_hash_: str | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Export + inspect (+ check) one model into ``out_dir``; returns its report (meta)."""
    import onnxruntime as ort

    t0 = time.monotonic()
    names = export_graphs(entry, out_dir, opset=opset)
    T = entry.model.cfg.T
    graphs = {g: inspect_graph(Path(out_dir) / f"{g}.onnx", T) for g in ("encode", "denoise")}
    meta: dict[str, Any] = {
        "format": "p2es-onnx", "export_version": EXPORT_VERSION, "model": entry.name,
        "model_hash": model_hash_ or model_hash(entry, opset=opset), "opset": opset,
        "T": T, "fs": entry.model.cfg.fs, "n_leads": entry.model.cfg.n_leads,
        "diffusion": entry.model.cfg.diffusion, "use_groups": entry.model.cfg.use_groups,
        "use_deblur": entry.model.cfg.use_deblur, "ecg_scale": entry.model.cfg.ecg_scale,
        "io": names, "graphs": graphs, "onnxruntime": ort.__version__,
        "dct_as_matmul": graphs["denoise"]["dct_matmuls"] >= (2 if entry.model.cfg.use_deblur else 0)
        and not graphs["denoise"]["fft_ops"],
        "trt_parser_ok": not any(g["trt_unsupported"] or g["trt_unverified"] for g in graphs.values()),
    }
    if check:
        meta["check_passes_rel_err"] = check_passes(entry, out_dir, threads=threads)
        meta["check_reconstruction_rel_err"] = check_reconstruction(entry, out_dir, threads=threads)
    meta["seconds"] = round(time.monotonic() - t0, 2)
    return meta


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, fmt: str = "onnx",
           models: list[str] | None = None, opset: int = DEFAULT_OPSET, check: bool = True,
           max_batch: int = 32, opt_batch: int = 8, k: int = 2, fp16: bool = True,
           cache_dir: str | os.PathLike | None = None, threads: int | None = 1) -> dict[str, Any]:
    """``p2es export``: every requested model of a checkpoint set -> ``out_dir/<model>/``.

    ``fmt == "tensorrt"`` additionally builds the TensorRT engines (needs ``tensorrt`` and a GPU);
    the build plan (profile shapes, cache key inputs) is written even where it cannot be built.
    """
    from engine.checkpoint import list_models, load_set

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
    report: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "format": fmt, "opset": opset,
                              "models": {}}
    for name, entry in entries.items():
        d = out / name
        meta = export_model(entry, d, opset=opset, check=check, threads=threads)
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        report["models"][name] = meta
        if fmt == "tensorrt":
            from engine.backends import tensorrt as trtb

            plan = trtb.build_plan(entry, d, max_batch=max_batch, opt_batch=opt_batch, k=k, fp16=fp16,
                                   model_hash_=meta["model_hash"])
            meta["tensorrt_plan"] = plan
            (d / "tensorrt_plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    report_path = out / "export_report.json"
    if fmt == "tensorrt":
        from engine.backends import tensorrt as trtb

        report_path.write_text(json.dumps(report, indent=2) + "\n")
        trtb.require_tensorrt(f"ONNX graphs and the build plan are in {out}")
        for name, entry in entries.items():
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
        lines.append(f"{name}: hash {m['model_hash'][:12]}, encode {m['graphs']['encode']['nodes']} nodes, "
                     f"denoise {m['graphs']['denoise']['nodes']} nodes, DCT as MatMul: "
                     f"{m['graphs']['denoise']['dct_matmuls']} (FFT ops: {m['graphs']['denoise']['fft_ops'] or 'none'})")
        lines.append(f"  op types: {', '.join(ops)}")
        bad = sorted(set(m["graphs"]["encode"]["trt_unsupported"] + m["graphs"]["denoise"]["trt_unsupported"]
                         + m["graphs"]["encode"]["trt_unverified"] + m["graphs"]["denoise"]["trt_unverified"]))
        lines.append(f"  TensorRT ONNX parser: {'all op types supported' if not bad else 'CHECK ' + ', '.join(bad)}")
        if "check_passes_rel_err" in m:
            e = max(m["check_passes_rel_err"].values())
            r = m["check_reconstruction_rel_err"]
            lines.append(f"  vs torch (random inputs, fp32): passes max rel err {e:.2e}; whole reconstruction "
                         f"(steps {r['steps']}, k {r['k']}) mean {r['mean']:.2e}"
                         + (f", std {r['std']:.2e}" if "std" in r else ""))
        if "tensorrt" in m:
            lines.append(f"  TensorRT engines: {m['tensorrt']}")
    return "\n".join(lines)
