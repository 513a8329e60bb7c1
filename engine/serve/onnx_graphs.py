"""The ONNX artefact of a model: the network passes as two graphs, their inspection, the cache.

The network has two passes (:class:`engine.model.network.P2ES`), exported as two graphs with a dynamic
batch axis ``B`` on every input and output:

* ``encode.onnx``  - ``ppg [B,3,T], demo [B,5], demo_mask [B,5]`` -> ``feat0 .. feat{L-1}``
  (per-level PPG features) and, with demographic groups, ``gemb [B,E]`` (group embedding) and
  ``A [B,8,8]`` (the patient's lead affinity from the GroupFinder's soft assignment: the whole
  embedding -> softmax over the group bank -> affinity mix is inside this graph);
* ``denoise.onnx`` - ``x_t [B,8,T], t [B]`` + the conditioning above -> ``x0 [B,8,T]``
  (for the regression baseline, ``diffusion == "none"``, only the conditioning).

The DCT of the frequency-deblurring stage is a constant ``[T,T]`` matrix, so it is a ``MatMul``
(no DFT op); the inspection lists every op type and flags any TensorRT's ONNX parser does not take.
The schedule and the sampling loop are *not* in the graphs (see :mod:`engine.serve.backends.common`).

This module only produces and loads the artefact (what a backend needs: :func:`ensure_onnx` exports
on first use into the cache, unverified).  Checking the graphs against torch is the export
command's job (:mod:`engine.serve.export`, ``p2es export``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.model.network import P2ES, Cond
from engine.serve.backends.common import EXPORT_VERSION, cache_root, model_hash
from p2es.errors import P2esError

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry
    from engine.model.config import ModelConfig

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; TensorRT 10 parses opsets 9..20

# ONNX ops the TensorRT 10 ONNX parser supports that can plausibly appear in these graphs
# (from onnx-tensorrt's operator support matrix).  Anything else is reported as unverified.
TRT_SUPPORTED_OPS = frozenset(
    """
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Div Einsum Equal Erf Exp Expand Flatten Floor Gather
GatherElements Gemm GlobalAveragePool Greater GreaterOrEqual GroupNormalization Identity
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log MatMul Max
MaxPool Mean Min Mod Mul Neg Not Or Pad Pow Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Shape
Sigmoid Sign Sin Size Slice Softmax Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose
Unsqueeze Where Xor
""".split()
)
TRT_UNSUPPORTED_KNOWN = frozenset(
    {
        "DFT",
        "STFT",
        "Loop",
        "SequenceAt",
        "SequenceConstruct",
        "SplitToSequence",
        "ConcatFromSequence",
        "Bernoulli",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
    }
)


# ------------------------------------------------------------------------------ graph wrappers
def cpu_entry(entry: Entry) -> Entry:
    """``entry`` itself if its model is on the CPU, else a copy with a CPU copy of the model
    (export and checks must not move a model another backend is using on the GPU)."""
    if all(p.device.type == "cpu" for p in entry.model.parameters()):
        return entry
    return dataclasses.replace(entry, model=copy.deepcopy(entry.model).cpu().eval())


def io_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """Input / output names of both graphs for a :class:`ModelConfig`."""
    n_levels = len(cfg.widths)
    cond = [f"feat{lvl}" for lvl in range(n_levels)] + (["gemb", "A"] if cfg.use_groups else [])
    den_in = ([] if cfg.diffusion == "none" else ["x_t", "t"]) + cond
    enc_in = ["ppg"] + (["demo", "demo_mask"] if cfg.use_groups else [])  # unused inputs are dropped
    return {
        "encode_in": enc_in,
        "encode_out": cond,
        "denoise_in": den_in,
        "denoise_out": ["x0"],
        "cond": cond,
    }


class Encode(torch.nn.Module):
    """The ``encode`` pass as a module with flat tensor outputs (what gets traced)."""

    def __init__(self, model: P2ES) -> None:
        super().__init__()
        self.m = model

    def forward(
        self, ppg: torch.Tensor, demo: torch.Tensor, demo_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        c = self.m.encode(ppg, demo, demo_mask)
        if c.A is None:
            return tuple(c.ppg)
        assert c.gemb is not None  # built together with A (P2ES.encode)
        return (*c.ppg, c.gemb, c.A)


class Denoise(torch.nn.Module):
    """The ``denoise`` pass with the conditioning as flat tensor inputs (what gets traced)."""

    def __init__(self, model: P2ES) -> None:
        super().__init__()
        self.m = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        cfg = self.m.cfg
        n_levels = len(cfg.widths)
        x_t: torch.Tensor | None = None
        t: torch.Tensor | None = None
        rest = args
        if cfg.diffusion != "none":
            x_t, t, rest = args[0], args[1], args[2:]
        feats = list(rest[:n_levels])
        gemb, A = (rest[n_levels], rest[n_levels + 1]) if cfg.use_groups else (None, None)
        return self.m.denoise(x_t, t, Cond(feats, gemb, A, None, None))


def pass_modules(model: P2ES) -> tuple[Encode, Denoise]:
    """Both passes of ``model`` as modules in eval mode."""
    return Encode(model).eval(), Denoise(model).eval()


def example_inputs(
    cfg: ModelConfig, B: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(ppg, demo, demo_mask)`` of batch ``B`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    ppg = torch.randn(B, cfg.ppg_channels, cfg.T, generator=g)
    demo = torch.randn(B, cfg.n_demo, generator=g)
    mask = (torch.rand(B, cfg.n_demo, generator=g) > 0.3).float()
    return ppg, demo, mask


def export_graphs(
    entry: Entry, out_dir: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET, trace_batch: int = 2
) -> dict[str, list[str]]:
    """Write ``encode.onnx`` + ``denoise.onnx`` of one model into ``out_dir``; returns io info."""
    model = cpu_entry(entry).model.eval()
    cfg = model.cfg
    names = io_names(cfg)
    enc, den = pass_modules(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ppg, demo, mask = example_inputs(cfg, trace_batch)
    with torch.no_grad():
        cond = enc(ppg, demo, mask)
        x_t = torch.randn(trace_batch, cfg.n_leads, cfg.T)
        t = torch.full((trace_batch,), 0.5)
        den_args = tuple(cond) if cfg.diffusion == "none" else (x_t, t, *cond)

    def dyn(ns: list[str]) -> dict[str, dict[int, str]]:
        return {n: {0: "B"} for n in ns}

    with (
        warnings.catch_warnings(),
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
    ):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                enc,
                (ppg, demo, mask),
                str(out / "encode.onnx"),
                dynamo=False,
                opset_version=opset,
                input_names=["ppg", "demo", "demo_mask"],
                output_names=names["encode_out"],
                dynamic_axes=dyn(names["encode_in"] + names["encode_out"]),
                do_constant_folding=True,
            )
            torch.onnx.export(
                den,
                den_args,
                str(out / "denoise.onnx"),
                dynamo=False,
                opset_version=opset,
                input_names=names["denoise_in"],
                output_names=names["denoise_out"],
                dynamic_axes=dyn(names["denoise_in"] + names["denoise_out"]),
                do_constant_folding=True,
            )
        except Exception as e:  # noqa: BLE001 - any exporter failure becomes one line
            raise P2esError(
                f"ONNX export of {entry.name!r} failed: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ) from None
    return names


def inspect_graph(path: str | os.PathLike[str], T: int) -> dict[str, Any]:
    """onnx.checker + op types + how the DCT appears + TensorRT parser compatibility."""
    import onnx  # lazy: optional dependency (extra "onnx")

    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker failure becomes one line
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

    def dims(vi: Any) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return {
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "opset": m.opset_import[0].version,
        "inputs": {i.name: dims(i) for i in m.graph.input},
        "outputs": {o.name: dims(o) for o in m.graph.output},
        "op_types": op_types,
        "op_counts": ops,
        "nodes": len(m.graph.node),
        "dct_matmuls": dct_matmuls,
        "fft_ops": sorted(o for o in op_types if o in ("DFT", "STFT")),
        "trt_unsupported": sorted(o for o in op_types if o in TRT_UNSUPPORTED_KNOWN),
        "trt_unverified": sorted(
            o for o in op_types if o not in TRT_SUPPORTED_OPS and o not in TRT_UNSUPPORTED_KNOWN
        ),
    }


def export_artefact(
    entry: Entry,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    model_hash_: str | None = None,
) -> dict[str, Any]:
    """Export + inspect one model into ``out_dir`` (no check against torch); returns its meta."""
    import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

    t0 = time.monotonic()
    names = export_graphs(entry, out_dir, opset=opset)
    cfg = entry.model.cfg
    T = cfg.T
    graphs = {g: inspect_graph(Path(out_dir) / f"{g}.onnx", T) for g in ("encode", "denoise")}
    meta: dict[str, Any] = {
        "format": "p2es-onnx",
        "export_version": EXPORT_VERSION,
        "model": entry.name,
        "model_hash": model_hash_ or model_hash(entry, opset=opset),
        "opset": opset,
        "T": T,
        "fs": cfg.fs,
        "n_leads": cfg.n_leads,
        "diffusion": cfg.diffusion,
        "use_groups": cfg.use_groups,
        "use_deblur": cfg.use_deblur,
        "ecg_scale": cfg.ecg_scale,
        "io": names,
        "graphs": graphs,
        "onnxruntime": ort.__version__,
        "dct_as_matmul": graphs["denoise"]["dct_matmuls"] >= (2 if cfg.use_deblur else 0)
        and not graphs["denoise"]["fft_ops"],
        "trt_parser_ok": not any(g["trt_unsupported"] or g["trt_unverified"] for g in graphs.values()),
    }
    meta["seconds"] = round(time.monotonic() - t0, 2)
    return meta


# ------------------------------------------------------------------------------ cached export
def ensure_onnx(
    entry: Entry, cache_dir: str | os.PathLike[str] | None = None, *, opset: int = DEFAULT_OPSET
) -> Path:
    """Directory with this model's ``encode.onnx`` / ``denoise.onnx`` / ``meta.json``, exported
    on first use into ``<cache>/onnx/<model hash>/`` (atomic: a temp dir renamed into place).

    Loading only: the export is not checked against torch here (no other backend is built);
    ``p2es export`` (:func:`engine.serve.export.export`) is where graphs are verified."""
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
        meta = export_artefact(entry, tmp, opset=opset, model_hash_=h)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
