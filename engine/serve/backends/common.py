"""What every runtime backend shares: model hash, cache directory, initial noise, the DDIM step
plan (the schedule's coefficients, precomputed), and the 8 -> 12 lead finish.

The sampling loop of the non-torch backends is the loop of :func:`engine.model.sampler.sample`
(deterministic DDIM, ``eta = 0``) written against precomputed coefficients:

* the coefficients ``alpha_{t,k}``, ``sigma_t`` of every step come from the schedule object
  itself (:meth:`engine.model.schedule.FrequencySchedule.alpha_k` / ``alpha_sigma``), evaluated once
  per step count, so there is one definition of the forward process;
* the update is the same per-frequency formula as :meth:`FrequencySchedule.step`
  (``eps = (u_t - a_t u0) / s_t``; ``u_s = a_s u0 + s_s eps``) in the same order of operations
  (ONNX Runtime: :func:`engine.serve.backends.ort.fuse_step`; torch/TensorRT:
  :class:`engine.serve.backends.torch_loop.GraphableLoop`);
* the initial noise is drawn exactly as the torch backend draws it on the CPU
  (``torch.randn`` with a generator seeded ``seed + call``), so torch and ONNX Runtime produce
  the same reconstruction for the same seed, and the parity check covers the whole loop.
* **per-window noise** (the live path: ``run(..., keys=[(patient, t0), ...])``): each window's
  x_T comes from its own generator, seeded by :func:`window_seed` from (backend seed, model,
  patient, window start), and is drawn on the CPU by :func:`window_noise` for every backend and
  device.  A window's reconstruction then depends on its own input only -- not on the other
  windows of its batch, the batch size, the order or the number of calls before it -- and every
  backend draws the same x_T for it.
* **temperature**: the checkpoint entry's ``sampler_config.temperature`` scales the drawn x_T
  (:func:`temper_noise`, float32, on the host for ONNX Runtime and TensorRT) before the loop,
  as :func:`engine.model.sampler.sample` does; at 1 the noise is left untouched, so the output
  is bit-identical to a model saved without a sampler config.  The noise keys stay the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import torch

from engine.model.config import to_dict
from p2es.errors import P2esError
from p2es.leads import DERIVE

if TYPE_CHECKING:
    from engine.model.checkpoint import Entry
    from engine.model.schedule import FrequencySchedule, Schedule

EXPORT_VERSION = 1  # bump when the exported graphs' interface changes (part of the model hash)
DEFAULT_CLIP_MV = 10.0  # engine.model.sampler.sample's default x0 clamp (+-clip mV)

#: what identifies one window for its noise: (patient id, window start in Unix seconds)
WindowKey: TypeAlias = tuple[str, float]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$P2ES_CACHE_DIR``, else ``~/.cache/p2es``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("P2ES_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "p2es"


def model_hash(entry: Entry, *, opset: int | None = None) -> str:
    """sha256 of the network weights + configs (+ export version and opset): the cache key."""
    h = hashlib.sha256()
    mc = to_dict(entry.model_config)
    for name in ("rpeak_head", "ppg_onset_channel"):  # opt-in switches added later: left out while
        if not mc.get(name):  # off, so the models from before them keep their cache keys
            mc.pop(name, None)
    h.update(
        json.dumps(
            {
                "model": mc,
                "schedule": to_dict(entry.schedule_config),
                "export_version": EXPORT_VERSION,
                "opset": opset,
            },
            sort_keys=True,
        ).encode()
    )
    for name, v in sorted(entry.model.state_dict().items()):
        h.update(name.encode())
        a = v.detach().cpu().contiguous()
        h.update(str(a.dtype).encode() + str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def draw_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """x_T exactly as :func:`engine.model.sampler.sample` draws it on the CPU for this seed."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32).numpy()


def temper_noise(x: np.ndarray, temperature: float) -> np.ndarray:
    """x_T at ``temperature``: ``x * temperature`` in float32 (as the sampler scales it), or
    ``x`` itself at temperature 1 (no multiply: bit-identical to the untempered draw)."""
    if temperature == 1.0:
        return x
    out: np.ndarray = np.multiply(x, np.float32(temperature), dtype=np.float32)
    return out


def model_key(entry: Entry) -> str:
    """16 hex digits identifying a model for its noise seeds: sha256 of the model and schedule
    configs and the weights (not the export version or opset: every backend of one checkpoint
    entry gets the same key)."""
    h = hashlib.sha256(
        json.dumps(
            {"model": to_dict(entry.model_config), "schedule": to_dict(entry.schedule_config)},
            sort_keys=True,
        ).encode()
    )
    for name, v in sorted(entry.model.state_dict().items()):
        a = v.detach().cpu().contiguous()
        h.update(name.encode() + str(a.dtype).encode() + str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:16]


def window_seed(seed: int, model: str, patient: str, t0: float) -> int:
    """The noise seed (63 bits) of one window: sha256 of (backend seed, :func:`model_key`,
    patient, window start rounded to the microsecond).  Stable across processes, batches and
    platforms (no Python ``hash``)."""
    t_us = int(round(float(t0) * 1e6))
    msg = f"p2es-window-noise-v1\x00{int(seed)}\x00{model}\x00{patient}\x00{t_us}".encode()
    return int.from_bytes(hashlib.sha256(msg).digest()[:8], "little") >> 1


def window_noise(seeds: Sequence[int], k: int, shape: tuple[int, int]) -> np.ndarray:
    """x_T [len(seeds) * k, *shape] float32: window i's ``k`` samples (rows i*k .. i*k+k-1, the
    sampler's repeat-interleave order) from a CPU generator seeded ``seeds[i]`` alone."""
    if not seeds:
        return np.zeros((0, *shape), np.float32)
    return np.concatenate([draw_noise(s, (int(k), *shape)) for s in seeds])


def keyed_noise(
    keys: Sequence[WindowKey], *, seed: int, model: str, k: int, shape: tuple[int, int], batch: int
) -> np.ndarray:
    """:func:`window_noise` of the windows ``keys`` (one per batch row; ``batch`` is checked)."""
    if len(keys) != batch:
        raise ValueError(f"{len(keys)} window keys for a batch of {batch}")
    return window_noise([window_seed(seed, model, p, t0) for p, t0 in keys], k, shape)


@dataclass
class Step:
    t: float
    s: float
    a_t: np.ndarray  # [T] (blur) or [1] (gaussian): per-frequency signal scale at t
    a_s: np.ndarray
    sig_t: np.float32
    sig_s: np.float32


@dataclass
class StepPlan:
    """Coefficients of ``steps`` deterministic DDIM steps of one schedule (float32)."""

    kind: str  # "blur" (frequency domain, DCT), "gaussian" (time domain), "none"
    steps: list[Step]
    V: np.ndarray | None  # [T, T] orthonormal DCT-II (blur only)

    @classmethod
    def from_schedule(cls, schedule: Schedule, n_steps: int) -> StepPlan:
        kind = getattr(schedule, "kind", "none")
        if kind == "none":
            return cls("none", [], None)
        schedule = cast("FrequencySchedule", schedule)  # kind != "none": a frequency schedule
        ts = schedule.timesteps(n_steps).tolist()
        out = []
        for i in range(n_steps):
            t, s = ts[i], ts[i + 1]
            tt = torch.tensor([t], dtype=torch.float32)
            st = torch.tensor([s], dtype=torch.float32)
            if kind == "blur":
                a_t, a_s = schedule.alpha_k(tt)[0], schedule.alpha_k(st)[0]
            else:
                a_t, a_s = schedule.alpha_sigma(tt)[0], schedule.alpha_sigma(st)[0]
            sig_t = schedule.alpha_sigma(tt)[1][0]
            sig_s = schedule.alpha_sigma(st)[1][0]
            out.append(
                Step(
                    t,
                    s,
                    a_t.float().numpy(),
                    a_s.float().numpy(),
                    np.float32(sig_t.item()),
                    np.float32(sig_s.item()),
                )
            )
        V = schedule.V("cpu").numpy().copy() if kind == "blur" else None
        return cls(kind, out, V)

    def torch_tensors(self, device: torch.device | str, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The same coefficients as device tensors (for graph-captured torch/TensorRT loops)."""
        f = dtype or torch.float32
        d = {
            "a_t": [torch.as_tensor(s.a_t, dtype=f, device=device) for s in self.steps],
            "a_s": [torch.as_tensor(s.a_s, dtype=f, device=device) for s in self.steps],
            "sig_t": [float(s.sig_t) for s in self.steps],
            "sig_s": [float(s.sig_s) for s in self.steps],
            "V": None if self.V is None else torch.as_tensor(self.V, dtype=f, device=device),
        }
        return d


def derive_matrix() -> np.ndarray:
    return np.asarray(DERIVE, dtype=np.float32)


def finish(
    x0: np.ndarray, B: int, k: int, ecg_scale: float, derive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """x0 [B*k, 8, T] network units -> (mean, std) [B, 12, T] mV, as :func:`engine.model.sampler.sample`."""
    x = x0 / np.float32(ecg_scale)
    ecg = (derive[None, :, :, None] * x[:, None, :, :]).sum(2)  # [B*k, 12, T]
    ecg = ecg.reshape(B, k, 12, -1)
    mean = ecg.mean(1)
    std = ecg.std(1, ddof=1) if k > 1 else np.zeros_like(mean)
    return mean.astype(np.float32), std.astype(np.float32)


def check_run_args(steps: int, k: int) -> None:
    if steps < 1:
        raise P2esError(f"need at least one sampling step, got {steps}")
    if k < 1:
        raise P2esError(f"need at least one sample per window, got k={k}")
