"""TensorRT backend: engines built from the exported ONNX graphs, the loop in one CUDA graph.

NOT RUN in this repository's CI or on the machines it was written on (TensorRT cannot be
installed there, and no GPU machine with TensorRT was available).  Written against the TensorRT
10 Python API documentation; what is tested without TensorRT: the ONNX graphs (validity, op types
TensorRT's parser takes), the optimisation-profile shapes and the engine-cache keys.

Build (:func:`build_engines`), per graph (``encode``, ``denoise``):

* ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in TensorRT 10) ->
  ``trt.OnnxParser(network, logger).parse_from_file(path)`` (errors reported one line);
* ``IBuilderConfig``: ``BuilderFlag.FP16`` (I/O stay fp32), workspace limit, one optimisation
  profile with min/opt/max on the batch axis of every input (:func:`profile_shapes`: encode
  ``B`` in [1, max_batch]; denoise ``B*K`` in [1, max_batch*K], opt at ``opt_batch``);
* a timing cache per GPU + TensorRT version (``create_timing_cache`` from the saved bytes,
  ``set_timing_cache``, serialized back after the build);
* ``build_serialized_network`` -> ``<cache>/tensorrt/<key>.engine`` with ``key`` =
  sha256(model hash, graph, GPU name, compute capability, TensorRT version, precision, profile)
  (:func:`engine_cache_key`): a cached engine is reused, a changed model/GPU/TensorRT rebuilds.

Run (:class:`TensorRTBackend`): one execution context per graph and batch bucket (input shapes
set once with ``set_input_shape``), every I/O tensor bound to a torch CUDA buffer with
``set_tensor_address``, ``execute_async_v3`` on the capture stream; the whole sampling loop
(:class:`engine.serve.backends.torch_loop.GraphableLoop`: encode, K-repeat, steps x (denoise engine +
clamp + DDIM step in torch), 12-lead finish) captured in one CUDA graph per bucket after one
eager warm-up run (TensorRT's requirement: an ``enqueueV3`` before capture).  The initial noise
is drawn on the host like the CPU backends' and scaled there by the entry's sampler temperature
(:func:`engine.serve.backends.common.temper_noise`) before it is copied into the graph's buffer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.model.network import Cond
from engine.model.preprocess import complete_features
from engine.serve.backends.common import (
    WindowKey,
    cache_root,
    check_run_args,
    draw_noise,
    keyed_noise,
    model_hash,
    model_key,
    temper_noise,
)
from engine.serve.backends.torch_loop import CudaGraphRunner, GraphableLoop, default_buckets
from engine.serve.onnx_graphs import ensure_onnx, io_names
from p2es.errors import P2esError
from p2es.files import atomic_write_bytes

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry
    from engine.model.config import ModelConfig

WORKSPACE_BYTES = 2 << 30


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401 - only whether it imports  # lazy: optional dependency (TensorRT)
    except Exception:  # noqa: BLE001 - a stub/broken install counts as absent
        return False
    return True


def require_tensorrt(where: str = "") -> None:
    if not tensorrt_available():
        raise P2esError(
            "TensorRT is not installed (the Python package 'tensorrt' does not import; "
            "install it from NVIDIA's index on a CUDA machine)" + (f"; {where}" if where else "")
        )


# ------------------------------------------------------------------------------ pure parts (tested)
def profile_shapes(
    cfg: ModelConfig, *, max_batch: int, opt_batch: int, k: int
) -> dict[str, dict[str, list[list[int]]]]:
    """Optimisation profile (min, opt, max shapes) of every input of both graphs."""
    if not 1 <= opt_batch <= max_batch or k < 1:
        raise P2esError(f"need 1 <= opt_batch <= max_batch and k >= 1, got {opt_batch}, {max_batch}, {k}")
    names = io_names(cfg)
    T, n_levels = cfg.T, len(cfg.widths)
    per: dict[str, list[int]] = {
        "ppg": [cfg.ppg_channels, T],
        "demo": [cfg.n_demo],
        "demo_mask": [cfg.n_demo],
        "x_t": [cfg.n_leads, T],
        "t": [],
        "gemb": [cfg.emb_dim],
        "A": [cfg.n_leads, cfg.n_leads],
    }
    for lvl in range(n_levels):
        per[f"feat{lvl}"] = [cfg.widths[lvl], T // 2**lvl]

    def prof(inputs: list[str], lo: int, opt: int, hi: int) -> dict[str, list[list[int]]]:
        return {n: [[lo, *per[n]], [opt, *per[n]], [hi, *per[n]]] for n in inputs}

    return {
        "encode": prof(names["encode_in"], 1, opt_batch, max_batch),
        "denoise": prof(names["denoise_in"], 1, opt_batch * k, max_batch * k),
    }


def engine_cache_key(
    model_hash: str,
    graph: str,
    *,
    gpu: str,
    compute_capability: str,
    trt_version: str,
    precision: str,
    profile: dict[str, Any],
) -> str:
    """Key of one built engine: anything that changes the plan changes the key."""
    blob = json.dumps(
        {
            "model": model_hash,
            "graph": graph,
            "gpu": gpu,
            "cc": compute_capability,
            "trt": trt_version,
            "precision": precision,
            "profile": profile,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def timing_cache_name(gpu: str, compute_capability: str, trt_version: str) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in gpu)
    return f"timing-{safe}-sm{compute_capability}-trt{trt_version}.cache"


def build_plan(
    entry: Entry,
    model_dir: str | os.PathLike[str],
    *,
    max_batch: int = 32,
    opt_batch: int = 8,
    k: int = 2,
    fp16: bool = True,
    model_hash_: str | None = None,
) -> dict[str, Any]:
    """Everything the build needs, computable without TensorRT (written by ``p2es export``)."""
    return {
        "model_dir": str(Path(model_dir).resolve()),
        "model_hash": model_hash_ or model_hash(entry),
        "precision": "fp16" if fp16 else "fp32",
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "k": k,
        "profiles": profile_shapes(entry.model.cfg, max_batch=max_batch, opt_batch=opt_batch, k=k),
        "workspace_bytes": WORKSPACE_BYTES,
    }


def _gpu_identity() -> tuple[str, str]:
    if not torch.cuda.is_available():
        raise P2esError("building a TensorRT engine needs a CUDA GPU")
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return p.name, f"{p.major}{p.minor}"


# ------------------------------------------------------------------------------ build (needs TensorRT)
def build_engines(
    model_dir: str | os.PathLike[str],
    plan: dict[str, Any],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    verbose: bool = False,
) -> dict[str, str]:
    """Build (or reuse from the engine cache) ``encode`` and ``denoise`` engines; returns paths."""
    require_tensorrt()
    import tensorrt as trt  # lazy: optional dependency (TensorRT, CUDA machines only)

    gpu, cc = _gpu_identity()
    root = cache_root(cache_dir) / "tensorrt"
    root.mkdir(parents=True, exist_ok=True)
    tc_path = root / timing_cache_name(gpu, cc, trt.__version__)
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    out = {}
    for graph in ("encode", "denoise"):
        key = engine_cache_key(
            plan["model_hash"],
            graph,
            gpu=gpu,
            compute_capability=cc,
            trt_version=trt.__version__,
            precision=plan["precision"],
            profile=plan["profiles"][graph],
        )
        path = root / f"{key}.engine"
        if not path.is_file():
            _build_one(
                trt,
                logger,
                Path(model_dir) / f"{graph}.onnx",
                plan["profiles"][graph],
                fp16=plan["precision"] == "fp16",
                workspace=int(plan["workspace_bytes"]),
                timing_cache=tc_path,
                out=path,
            )
        out[graph] = str(path)
    return out


def _build_one(
    trt: ModuleType,
    logger: Any,  # trt.Logger (TensorRT is an optional, untyped dependency)
    onnx_path: Path,
    profile: dict[str, list[list[int]]],
    *,
    fp16: bool,
    workspace: int,
    timing_cache: Path,
    out: Path,
) -> None:
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise P2esError(
            f"TensorRT cannot parse {onnx_path}: {errs.splitlines()[0] if errs else 'unknown error'}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        prof.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(prof)
    blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise P2esError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    atomic_write_bytes(out, bytes(engine))
    tc = config.get_timing_cache()
    if tc is not None:
        atomic_write_bytes(timing_cache, bytes(tc.serialize()))


# ------------------------------------------------------------------------------ runtime (needs TensorRT)
class _TrtGraph:
    """One engine + one execution context per batch bucket, I/O bound to torch CUDA buffers."""

    def __init__(
        self, trt: ModuleType, runtime: Any, path: str, inputs: list[str], outputs: list[str]
    ) -> None:
        data = Path(path).read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise P2esError(f"TensorRT cannot load the engine {path} (rebuild it: delete the file)")
        self.trt, self.inputs, self.outputs = trt, inputs, outputs
        self.contexts: dict[int, Any] = {}

    def context(self, n: int, tensors: dict[str, torch.Tensor]) -> Any:
        """Execution context for batch ``n`` with every I/O name bound to ``tensors[name]``."""
        ctx = self.contexts.get(n)
        if ctx is None:
            ctx = self.engine.create_execution_context()
            for name in self.inputs:
                ctx.set_input_shape(name, tuple(tensors[name].shape))
            self.contexts[n] = ctx
        for name in self.inputs + self.outputs:
            ctx.set_tensor_address(name, tensors[name].data_ptr())
        return ctx


class TensorRTBackend:
    """:class:`engine.serve.runtime.Backend` on TensorRT engines (see the module docstring)."""

    name = "tensorrt"

    def __init__(
        self,
        entry: Entry,
        *,
        device: str = "cuda",
        steps: int = 10,
        k: int = 4,
        seed: int = 0,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        max_batch: int = 32,
        opt_batch: int = 8,
        fp16: bool = True,
        cuda_graphs: bool = True,
        buckets: list[int] | None = None,
        **_ignored: Any,
    ) -> None:
        require_tensorrt()
        import tensorrt as trt  # lazy: optional dependency (TensorRT, CUDA machines only)

        check_run_args(steps, k)
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise P2esError("backend tensorrt needs a CUDA GPU (--device cuda)")
        cfg = entry.model.cfg
        self.entry, self.cfg = entry, cfg
        self.steps, self.k, self.seed = int(steps), int(k), int(seed)
        self.temperature = float(entry.sampler_config.temperature)  # scales x_T on the host
        self.T, self.fs = int(cfg.T), float(cfg.fs)
        self.label = "tensorrt-fp16" if fp16 else "tensorrt-fp32"
        model_dir = ensure_onnx(entry, cache_dir)
        meta = json.loads((model_dir / "meta.json").read_text())
        self.buckets = buckets or default_buckets(max_batch)
        plan = build_plan(
            entry,
            model_dir,
            max_batch=max(self.buckets),
            opt_batch=min(opt_batch, max(self.buckets)),
            k=self.k,
            fp16=fp16,
            model_hash_=meta["model_hash"],
        )
        paths = build_engines(model_dir, plan, cache_dir=cache_dir)
        self.names = io_names(cfg)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.enc = _TrtGraph(
            trt, self._runtime, paths["encode"], self.names["encode_in"], self.names["encode_out"]
        )
        self.den = _TrtGraph(trt, self._runtime, paths["denoise"], self.names["denoise_in"], ["x0"])
        self._bufs: dict[tuple[str, int], dict[str, Any]] = {}
        self.loop = GraphableLoop(
            entry.model.to(self.device).eval(),
            entry.schedule,
            steps=self.steps,
            k=self.k,
            device=self.device,
            encode_fn=self._encode,
            denoise_fn=self._denoise,
        )
        self.runner = (
            CudaGraphRunner(
                self.loop,
                n_leads=cfg.n_leads,
                T=cfg.T,
                n_demo=cfg.n_demo,
                ppg_channels=cfg.ppg_channels,
                buckets=self.buckets,
            )
            if cuda_graphs
            else None
        )
        self._calls = 0
        self._model_key: str | None = None  # model_key(entry), on the first keyed run

    # Engine I/O lives in fixed buffers per batch size (CUDA graphs need stable addresses).
    def _buffers(self, graph: str, n: int) -> dict[str, torch.Tensor]:
        key = (graph, n)
        if key not in self._bufs:
            cfg, dev = self.cfg, self.device
            shapes = {
                name: [n, *s[0][1:]]
                for name, s in profile_shapes(cfg, max_batch=max(n, 1), opt_batch=1, k=1)[graph].items()
            }
            if graph == "encode":
                shapes.update({name: shapes_of_cond(cfg, n)[name] for name in self.names["encode_out"]})
            else:
                shapes["x0"] = [n, cfg.n_leads, cfg.T]
            self._bufs[key] = {
                name: torch.zeros(shape, device=dev, dtype=torch.float32) for name, shape in shapes.items()
            }
        return self._bufs[key]

    def _encode(self, feats: torch.Tensor, demo: torch.Tensor, mask: torch.Tensor) -> Cond:
        n = feats.shape[0]
        b = self._buffers("encode", n)
        b["ppg"].copy_(feats)
        if "demo" in b:  # graphs without demographic groups take the PPG only
            b["demo"].copy_(demo)
            b["demo_mask"].copy_(mask)
        ctx = self.enc.context(n, b)
        ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        feats_out = [b[f"feat{lvl}"] for lvl in range(len(self.cfg.widths))]
        return Cond(feats_out, b.get("gemb"), b.get("A"), None, None)

    def _denoise(self, x_t: torch.Tensor | None, t: torch.Tensor | None, cond: Cond) -> torch.Tensor:
        n = cond.ppg[0].shape[0]
        b = self._buffers("denoise", n)
        if x_t is not None:
            assert t is not None  # passed together with x_t (GraphableLoop)
            b["x_t"].copy_(x_t)
            b["t"].copy_(t)
        for lvl, f in enumerate(cond.ppg):
            b[f"feat{lvl}"].copy_(f)
        if cond.gemb is not None:
            assert cond.A is not None  # built together with gemb (P2ES.encode)
            b["gemb"].copy_(cond.gemb)
            b["A"].copy_(cond.A)
        ctx = self.den.context(n, b)
        ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream)
        return b["x0"].clone()

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            self._model_key = model_key(self.entry)
        return self._model_key

    def run(
        self, feats: np.ndarray, demo: np.ndarray, mask: np.ndarray, keys: Sequence[WindowKey] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`engine.serve.runtime.Backend`; ``keys``: per-window noise (module
        :mod:`engine.serve.backends.common`)."""
        if self.cfg.ppg_onset_channel:  # default 3-channel features + the onset channel
            feats = complete_features(feats, float(self.cfg.fs), onset=True)
        B = feats.shape[0]
        seed = self.seed + self._calls
        self._calls += 1
        shape = (self.cfg.n_leads, self.T)
        x_t = (
            keyed_noise(keys, seed=self.seed, model=self.model_key, k=self.k, shape=shape, batch=B)
            if keys is not None
            else draw_noise(seed, (B * self.k, *shape))
        )
        noise = torch.as_tensor(temper_noise(x_t, self.temperature), device=self.device)
        f = torch.as_tensor(feats, dtype=torch.float32, device=self.device)
        d = torch.as_tensor(demo, dtype=torch.float32, device=self.device)
        m = torch.as_tensor(mask, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            mean, std = (self.runner or self.loop)(f, d, m, noise)
        return mean.float().cpu().numpy(), std.float().cpu().numpy()


def shapes_of_cond(cfg: ModelConfig, n: int) -> dict[str, list[int]]:
    """Shapes of the encode outputs for batch ``n``."""
    out = {f"feat{lvl}": [n, w, cfg.T // 2**lvl] for lvl, w in enumerate(cfg.widths)}
    if cfg.use_groups:
        out.update(gemb=[n, cfg.emb_dim], A=[n, cfg.n_leads, cfg.n_leads])
    return out
