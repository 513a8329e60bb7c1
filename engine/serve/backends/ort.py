"""ONNX Runtime backend: the exported network passes + the sampling loop in numpy.

Per batch: one ``encode`` run (B windows), the conditioning repeated K times, then ``steps``
runs of *denoise + DDIM step*: the exported ``denoise.onnx`` with the schedule's step appended
in memory (:func:`fuse_step`: clamp, DCT MatMul, the per-frequency update of
:meth:`engine.model.schedule.FrequencySchedule.step` with ``eta = 0``, inverse DCT MatMul), its
coefficients fed per step from the schedule's :class:`StepPlan`.  The step runs inside ONNX
Runtime on purpose: done in numpy, OpenBLAS's threads and ORT's spin on the same cores and the
loop runs ~2x slower on a 2-core machine.  Same initial noise as
:class:`engine.serve.runtime.TorchBackend` on the CPU for the same seed and call number, scaled
by the entry's sampler temperature on the host (:func:`engine.serve.backends.common.temper_noise`),
so both give the same reconstruction (fp32, relative error ~1e-6).  The files on disk stay the network passes
only (what TensorRT gets).

Sessions: graph optimisation level ALL, ``intra_op_num_threads = threads``, sequential
execution.  The loop uses IOBinding: the conditioning is bound once per batch, ``x_t``/``t`` and
the coefficients per step, and the outputs go to preallocated, double-buffered arrays (no
allocation per step).
``device="cuda"`` uses the CUDA execution provider when onnxruntime-gpu provides it (then inputs
and outputs cross the bus each step; the step math stays on the host) - not run here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.model.preprocess import complete_features
from engine.serve.backends.common import (
    DEFAULT_CLIP_MV,
    StepPlan,
    WindowKey,
    check_run_args,
    derive_matrix,
    draw_noise,
    finish,
    keyed_noise,
    model_key,
    temper_noise,
)
from engine.serve.onnx_graphs import ensure_onnx, io_names
from p2es.errors import P2esError

if TYPE_CHECKING:
    import onnxruntime as ort

    from engine.model.checkpoint import Entry


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

    avail = ort.get_available_providers()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in avail:
            raise P2esError(
                "backend onnxruntime on cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                f"this onnxruntime has {', '.join(avail)}"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None, spinning: bool = False) -> ort.SessionOptions:
    """Level-ALL graph optimisation, ``threads`` intra-op threads, sequential, no spin-waiting.

    Spinning is off: on a small shared machine the spinning pool steals the cores the rest of the
    process (ingest, vitals, another backend in ``p2es bench``) needs; measured here it also made
    the ONNX Runtime loop itself no faster (2 cores, batch 1-32).
    """
    import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so


def make_session(
    model: str | os.PathLike[str] | bytes, *, threads: int | None = None, device: str = "cpu"
) -> ort.InferenceSession:
    """An InferenceSession (file path or serialized model) with p2es's settings."""
    import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(
            src, sess_options=session_options(threads), providers=providers_for(device)
        )
    except P2esError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure becomes one line
        what = "the fused denoise+step graph" if isinstance(model, bytes) else model
        raise P2esError(f"onnxruntime cannot load {what}: {str(e).strip().splitlines()[0]}") from None


def fuse_step(denoise_path: str | os.PathLike[str], plan: StepPlan, lim: float | None) -> bytes:
    """``denoise.onnx`` + clamp + one deterministic DDIM step, as one serialized model.

    Extra inputs: ``a_t``, ``a_s`` ([T] per-frequency scales for blur, [1] for gaussian),
    ``sig_t``, ``sig_s`` ([1]).  Outputs: ``x0`` (clamped prediction) and ``x_next``.  Blur::

        u_t = x_t V^T;  u0 = x0 V^T;  eps = (u_t - a_t u0) / sig_t;  x_next = (a_s u0 + sig_s eps) V

    exactly :meth:`FrequencySchedule.step` (``eta = 0``); gaussian: the same in the time domain.
    """
    import onnx  # lazy: optional dependency (extra "onnx")
    from onnx import TensorProto, helper, numpy_helper  # lazy: optional dependency (extra "onnx")

    m = onnx.load(str(denoise_path))
    g = m.graph
    for node in g.node:
        for i, o in enumerate(node.output):
            if o == "x0":
                node.output[i] = "x0_net"
    out_dims = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    del g.output[:]
    F = TensorProto.FLOAT
    V = plan.V if plan.kind == "blur" else None  # the DCT (blur plans only)
    n_coef = V.shape[0] if V is not None else 1
    for name, dims in (("a_t", [n_coef]), ("a_s", [n_coef]), ("sig_t", [1]), ("sig_s", [1])):
        g.input.append(helper.make_tensor_value_info(name, F, dims))
    nodes = []
    x0 = "x0_net"
    if lim is not None:
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array(-lim, np.float32), "p2es_clip_lo"),
                numpy_helper.from_array(np.array(lim, np.float32), "p2es_clip_hi"),
            ]
        )
        nodes.append(helper.make_node("Clip", ["x0_net", "p2es_clip_lo", "p2es_clip_hi"], ["x0"]))
    else:
        nodes.append(helper.make_node("Identity", ["x0_net"], ["x0"]))
    x0 = "x0"
    if V is not None:
        g.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(V.T), "p2es_dct_VT"),
                numpy_helper.from_array(np.ascontiguousarray(V), "p2es_dct_V"),
            ]
        )
        nodes += [
            helper.make_node("MatMul", ["x_t", "p2es_dct_VT"], ["s_ut"]),
            helper.make_node("MatMul", [x0, "p2es_dct_VT"], ["s_u0"]),
        ]
        a, b = "s_ut", "s_u0"
    else:
        a, b = "x_t", x0
    nodes += [
        helper.make_node("Mul", ["a_t", b], ["s_atu0"]),
        helper.make_node("Sub", [a, "s_atu0"], ["s_diff"]),
        helper.make_node("Div", ["s_diff", "sig_t"], ["s_eps"]),
        helper.make_node("Mul", ["a_s", b], ["s_asu0"]),
        helper.make_node("Mul", ["sig_s", "s_eps"], ["s_seps"]),
        helper.make_node("Add", ["s_asu0", "s_seps"], ["s_us" if plan.kind == "blur" else "x_next"]),
    ]
    if plan.kind == "blur":
        nodes.append(helper.make_node("MatMul", ["s_us", "p2es_dct_V"], ["x_next"]))
    g.node.extend(nodes)
    for name in ("x0", "x_next"):
        g.output.append(helper.make_tensor_value_info(name, F, out_dims))
    onnx.checker.check_model(m)
    out: bytes = m.SerializeToString()
    return out


class OrtBackend:
    """:class:`engine.serve.runtime.Backend` on ONNX Runtime (see the module docstring).

    Loads ``model_dir``, else this model's cached export (:func:`engine.serve.onnx_graphs.ensure_onnx`,
    exported on a cache miss).  It verifies nothing: the check against torch is ``p2es export``'s.
    """

    name = "onnxruntime"
    label = "onnxruntime"

    def __init__(
        self,
        entry: Entry,
        *,
        device: str = "cpu",
        steps: int = 10,
        k: int = 4,
        seed: int = 0,
        threads: int | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        clip: float | None = DEFAULT_CLIP_MV,
        **_ignored: Any,
    ) -> None:
        check_run_args(steps, k)
        self.entry = entry
        cfg = entry.model.cfg
        self.cfg = cfg
        self.device = str(device)
        self.steps, self.k, self.seed = int(steps), int(k), int(seed)
        self.temperature = float(entry.sampler_config.temperature)  # scales x_T (module docstring)
        self.threads = threads
        self.T, self.fs = int(cfg.T), float(cfg.fs)
        self.model_dir = Path(model_dir) if model_dir else ensure_onnx(entry, cache_dir)
        self.names = io_names(cfg)
        self.kind = "none" if cfg.diffusion == "none" else getattr(entry.schedule, "kind", "none")
        if self.kind != "none" and self.kind != cfg.diffusion:
            raise P2esError(f"model was trained with {cfg.diffusion!r} diffusion, schedule is {self.kind!r}")
        self.lim = None if clip is None else np.float32(clip * cfg.ecg_scale)
        self.plan = StepPlan.from_schedule(entry.schedule, self.steps) if self.kind != "none" else None
        self.enc = make_session(self.model_dir / "encode.onnx", threads=threads, device=self.device)
        if self.plan is None:  # kind "none"
            self.den = make_session(self.model_dir / "denoise.onnx", threads=threads, device=self.device)
        else:
            fused = fuse_step(
                self.model_dir / "denoise.onnx", self.plan, None if self.lim is None else float(self.lim)
            )
            self.den = make_session(fused, threads=threads, device=self.device)
        self._enc_in = {i.name for i in self.enc.get_inputs()}
        self._den_in = {i.name for i in self.den.get_inputs()}
        self._coef = [
            {
                "a_t": np.ascontiguousarray(st.a_t, np.float32).reshape(-1),
                "a_s": np.ascontiguousarray(st.a_s, np.float32).reshape(-1),
                "sig_t": np.array([st.sig_t], np.float32),
                "sig_s": np.array([st.sig_s], np.float32),
            }
            for st in (self.plan.steps if self.plan else [])
        ]
        self.derive = derive_matrix()
        self._calls = 0
        self._model_key: str | None = None  # model_key(entry), on the first keyed run
        self._cpu = not self.device.startswith("cuda")

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
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        B = feats.shape[0]
        seed = self.seed + self._calls
        self._calls += 1
        feed = {
            "ppg": feats,
            "demo": np.ascontiguousarray(demo, np.float32),
            "demo_mask": np.ascontiguousarray(mask, np.float32),
        }
        cond = self.enc.run(self.names["encode_out"], {n: v for n, v in feed.items() if n in self._enc_in})
        if self.plan is None:  # kind "none"
            (x0,) = self.den.run(
                ["x0"], {n: c for n, c in zip(self.names["cond"], cond) if n in self._den_in}
            )
            if self.lim is not None:
                np.clip(x0, -self.lim, self.lim, out=x0)
            m, _ = finish(x0, B, 1, self.cfg.ecg_scale, self.derive)
            return m, np.zeros_like(m)
        k = self.k
        if k > 1:
            cond = [np.repeat(c, k, axis=0) for c in cond]
        n = B * k
        if keys is not None:
            shape = (self.cfg.n_leads, self.T)
            x = keyed_noise(keys, seed=self.seed, model=self.model_key, k=k, shape=shape, batch=B)
        else:
            x = draw_noise(seed, (n, self.cfg.n_leads, self.T))
        x = temper_noise(x, self.temperature)
        x_next = np.empty_like(x)
        x0 = np.empty_like(x)
        t_buf = np.empty((n,), np.float32)
        io = self.den.io_binding()
        for name, c in zip(self.names["cond"], cond):
            if name in self._den_in:
                self._bind_in(io, name, np.ascontiguousarray(c))
        for i, st in enumerate(self.plan.steps):
            t_buf.fill(np.float32(st.t))
            self._bind_in(io, "t", t_buf)
            self._bind_in(io, "x_t", x)
            for name, v in self._coef[i].items():
                self._bind_in(io, name, v)
            if self._cpu:
                io.bind_output("x0", "cpu", 0, np.float32, list(x0.shape), x0.ctypes.data)
                io.bind_output("x_next", "cpu", 0, np.float32, list(x.shape), x_next.ctypes.data)
                self.den.run_with_iobinding(io)
            else:
                io.bind_output("x0", "cpu")
                io.bind_output("x_next", "cpu")
                self.den.run_with_iobinding(io)
                x0, x_next = io.copy_outputs_to_cpu()
            if st.s <= 0.0:
                break
            x, x_next = x_next, x  # double buffer: the next step reads what this one wrote
        return finish(x0, B, k, self.cfg.ecg_scale, self.derive)

    def _bind_in(self, io: ort.IOBinding, name: str, arr: np.ndarray) -> None:
        if self._cpu:
            io.bind_cpu_input(name, arr)
        else:
            import onnxruntime as ort  # lazy: optional dependency (extra "onnx")

            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
