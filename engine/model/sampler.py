"""Sampling loop: K reconstructions per window in one batch, mean and spread as uncertainty.

The loop only talks to the model through ``encode`` / ``denoise`` / ``to_12`` and to the
schedule through ``timesteps`` / ``step``, so any schedule of engine.model.schedule works with
any network of engine.model.network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

import torch

from p2es.errors import P2esError

if TYPE_CHECKING:
    from engine.model.network import P2ES
    from engine.model.schedule import FrequencySchedule, Schedule

#: demographics as ``(values, mask)``, one tensor with NaN for unknown, or None
Demo: TypeAlias = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor] | None


@dataclass
class SampleResult:
    mean: torch.Tensor  # [B, 12, T] mV
    std: torch.Tensor  # [B, 12, T] mV, spread over the K samples (0 if K = 1)
    samples: torch.Tensor | None  # [B, K, 12, T] mV (None for the regression baseline)


def split_demo(demo: Demo, n_demo: int = 5) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``demo`` as ``(values, mask)``, a tensor with NaN for unknown, or None -> (values, mask)."""
    if demo is None:
        return None, None
    if isinstance(demo, (tuple, list)):
        v, m = demo
        return v, m
    m = torch.isfinite(demo).float()
    return torch.nan_to_num(demo), m


@torch.no_grad()
def sample(
    model: P2ES,
    schedule: Schedule,
    ppg_feats: torch.Tensor,
    demo: Demo = None,
    *,
    steps: int = 10,
    k: int = 1,
    eta: float = 0.0,
    spacing: float = 1.0,
    generator: torch.Generator | None = None,
    keep_samples: bool = True,
    clip: float | None = 10.0,
    noise: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> SampleResult:
    """Reconstruct 12-lead ECGs (mV) for a batch of PPG windows.

    ``ppg_feats`` [B, 3, T] from :func:`engine.model.data.ppg_features`; ``demo`` see
    :func:`split_demo` (normalised values from :func:`engine.model.data.demographics`).
    ``steps`` reverse steps from t = 1 to 0 (the last one returns the x0 prediction);
    ``eta`` 0 = deterministic DDIM, 1 = ancestral; ``spacing`` the time grid
    (:meth:`engine.model.schedule.FrequencySchedule.timesteps`: 1 uniform, > 1 denser at low t).  All ``k`` samples of a window run in one
    batch (repeat-interleave).  With a fixed ``generator`` the output is reproducible.
    ``clip``: the x0 prediction is clamped to +-clip mV (None: no clamp).
    ``noise``: the initial x_T [B*k, n_leads, T] (window i's samples at rows i*k .. i*k+k-1)
    instead of drawing it from ``generator``: the live runtime seeds each window's noise on its
    own, so a window's output does not depend on the rest of the batch (with ``eta`` > 0 the
    per-step noise still comes from ``generator``).
    ``temperature``: scales the initial x_T (and, with ``eta`` > 0, every step's fresh noise);
    1 samples the learned distribution, < 1 draws nearer its centre (less spread between
    samples, e.g. in beat timing), 0 is the deterministic all-zero start.
    """
    if k < 1:
        raise P2esError(f"need at least one sample per window, got k={k}")
    if not 0.0 <= temperature <= 1.0:
        raise P2esError(f"temperature must be in [0, 1], got {temperature}")
    was_training = model.training
    model.eval()
    try:
        cfg = model.cfg
        dv, dm = split_demo(demo, cfg.n_demo)
        cond = model.encode(ppg_feats, dv, dm)
        B, T = ppg_feats.shape[0], ppg_feats.shape[-1]
        lim = None if clip is None else clip * cfg.ecg_scale
        if cfg.diffusion == "none" or getattr(schedule, "kind", "none") == "none":
            x0 = model.denoise(None, None, cond)
            if lim is not None:
                x0 = x0.clamp(-lim, lim)
            ecg = model.to_12(x0)
            return SampleResult(ecg, torch.zeros_like(ecg), None)
        schedule = cast("FrequencySchedule", schedule)  # kind != "none": a frequency schedule
        if schedule.kind != cfg.diffusion:
            raise P2esError(
                f"model was trained with {cfg.diffusion!r} diffusion, schedule is {schedule.kind!r}"
            )
        if k > 1:
            cond = cond.repeat_interleave(k)
        ts = schedule.timesteps(steps, spacing).tolist()
        if noise is not None:
            if tuple(noise.shape) != (B * k, cfg.n_leads, T):
                raise P2esError(f"noise must be [{B * k}, {cfg.n_leads}, {T}], got {list(noise.shape)}")
            x = noise.to(device=ppg_feats.device, dtype=ppg_feats.dtype)
        else:
            x = torch.randn(
                (B * k, cfg.n_leads, T), generator=generator, device=ppg_feats.device, dtype=ppg_feats.dtype
            )
        if temperature != 1.0:
            x = x * temperature
        x0 = x
        for i in range(steps):
            t, s = ts[i], ts[i + 1]
            x0 = model.denoise(x, torch.full((B * k,), t, device=x.device), cond)
            if lim is not None:
                x0 = x0.clamp(-lim, lim)
            if s <= 0.0:
                break
            z = None
            if eta > 0.0 and temperature != 1.0:
                z = temperature * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = schedule.step(x, x0, t, s, eta=eta, noise=z, generator=generator)
        ecg = model.to_12(x0).reshape(B, k, 12, T)
        mean = ecg.mean(1)
        # sample std (K is small, 4-8: the population std would understate the spread); 0 for K = 1
        std = ecg.std(1, unbiased=True) if k > 1 else torch.zeros_like(mean)
        return SampleResult(mean, std, ecg if keep_samples else None)
    finally:
        model.train(was_training)
