"""Forward noise processes ("schedulers").  No trainable weights live here.

Blurring diffusion (Hoogeboom & Salimans, ICLR 2023) along the time axis of a signal
``x`` of length ``T``::

    x_t = alpha_t * V^T D_t V x_0 + sigma_t * eps            eps ~ N(0, I)

``V`` is the orthonormal DCT-II (a fixed matrix, so that ONNX/TensorRT see a MatMul and no
FFT op), ``D_t = diag(d_{t,k})`` a Gaussian blur written per frequency ``k``::

    d_{t,k}  = (1 - d_min) * exp(-lambda_k * tau_t) + d_min
    lambda_k = (pi k / T)^2                      (squared angular frequency, rad/sample)
    tau_t    = sigma_blur_max^2 / 2 * sin(pi t / 2)^p          p = ScheduleConfig.blur_power
    alpha_t  = (1 - eps) * cos(pi t / 2),  sigma_t = sqrt(1 - alpha_t^2)

``exp(-lambda_k tau)`` is the heat equation ``dx/dtau = d^2x/dn^2`` run for ``tau`` on the
DCT-II basis function ``cos(pi k (n + 1/2) / T)`` (reflecting / Neumann boundaries), i.e. a
Gaussian blur of std ``sqrt(2 tau)`` samples.  ``lambda_k`` is the continuous eigenvalue
``(pi k / T)^2``, as in the paper; the exact eigenvalue of the discrete second difference is
``4 sin^2(pi k / (2T))``, which agrees to ``O(k^4 / T^4)`` (tests/test_schedule_published.py).

``p = 4`` (the default) is the published schedule: ``sigma_B,t = sigma_B,max sin^2(pi t / 2)``
and ``tau_t = sigma_B,t^2 / 2``.  ``p = 2`` is the legacy schedule of checkpoint format
version 1, which blurs much earlier (at 128 Hz with ``sigma_blur_max = 20`` the gain at 10 Hz
drops below 10 % at t ~ 0.14 instead of ~ 0.31); engine.model.checkpoint loads version-1
files with ``p = 2`` so that they sample exactly as they were trained.

Since ``V`` is orthonormal, ``V eps`` is again white noise, so in frequency space
(``u = V x``) every coefficient is an independent Gaussian diffusion with signal scale
``alpha_{t,k} = alpha_t * d_{t,k}`` and noise scale ``sigma_t``.  Reverse steps are the
DDIM/DDPM update per frequency given a prediction of ``x_0`` (see :meth:`step`).

:class:`GaussianSchedule` is the same process with ``d == 1`` (cosine DDPM/DDIM), used by the
RDDM-like baseline and the "no blur" ablation.  Both share one API so the sampler and the
trainer never look at which one they hold.

The ``reference_*`` functions at the end are a plain float64 numpy re-statement (scipy's
DCT, no matrices, no torch) used by the tests as ground truth.
"""

from __future__ import annotations

import math
from typing import TypeAlias

import numpy as np
import torch
from scipy.fft import dct, idct

from engine.model.config import ScheduleConfig
from p2es.errors import P2esError


def dct_matrix(T: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``V`` [T, T]: ``V @ x == scipy.fft.dct(x, type=2, norm="ortho")``.

    Built in float64, returned as float32.  ``V.T`` is the inverse (DCT-III).
    """
    n = np.arange(T, dtype=np.float64)
    k = n[:, None]
    m = np.cos(np.pi * (2.0 * n[None, :] + 1.0) * k / (2.0 * T)) * np.sqrt(2.0 / T)
    m[0, :] *= 1.0 / np.sqrt(2.0)
    return torch.from_numpy(m.astype(np.float32))


def _as_t(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Time as a float tensor of shape [B] on ``like``'s device (scalars are broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.float()


class FrequencySchedule:
    """Per-frequency Gaussian diffusion with signal scale ``alpha_t * d_{t,k}``.

    Subclasses define :meth:`blur` (``d_{t,k}``).  Tensors are ``[B, C, T]`` with time last;
    ``t`` is a float or a ``[B]`` tensor in [0, 1] (1 = pure noise).
    """

    kind = "?"

    def __init__(self, T: int, cfg: ScheduleConfig):
        self.T = int(T)
        self.cfg = cfg
        self._V: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        k = torch.arange(self.T, dtype=torch.float64)
        self._lam = ((math.pi * k / self.T) ** 2).float()  # lambda_k

    # -- coefficients ------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = (1.0 - self.cfg.eps) * torch.cos(0.5 * math.pi * t.clamp(0.0, 1.0))
        a = a.clamp(min=0.0)
        return a, torch.sqrt((1.0 - a * a).clamp(min=0.0))

    def blur(self, t: torch.Tensor) -> torch.Tensor:  # [B] -> [B, T]
        raise NotImplementedError

    def alpha_k(self, t: torch.Tensor) -> torch.Tensor:
        """Per-frequency signal scale ``alpha_t * d_{t,k}``, shape [B, T]."""
        a, _ = self.alpha_sigma(t)
        return a[:, None] * self.blur(t)

    # -- DCT ---------------------------------------------------------------------------
    def V(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._V:
            self._V[key] = dct_matrix(self.T).to(device=device, dtype=dtype)
        return self._V[key]

    def to_freq(self, x: torch.Tensor) -> torch.Tensor:
        """DCT-II along the last axis (``u = V x``)."""
        return x @ self.V(x.device, x.dtype).T

    def from_freq(self, u: torch.Tensor) -> torch.Tensor:
        """Inverse DCT along the last axis (``x = V^T u``)."""
        return u @ self.V(u.device, u.dtype)

    # -- forward process -----------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` with the given time-domain white ``noise``."""
        t = _as_t(t, x0)
        _, s = self.alpha_sigma(t)
        ak = self.alpha_k(t)[:, None, :].to(x0.dtype)
        return self.from_freq(ak * self.to_freq(x0)) + s[:, None, None].to(x0.dtype) * noise

    def step(
        self,
        x_t: torch.Tensor,
        x0_hat: torch.Tensor,
        t: float | torch.Tensor,
        s: float | torch.Tensor,
        *,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step from ``t`` to ``s < t`` given a prediction ``x0_hat``.

        Per frequency ``k`` (``u = V x``)::

            eps_hat = (u_t - alpha_{t,k} u0_hat) / sigma_t
            c_k     = eta * sigma_s/sigma_t * sqrt(sigma_t^2 - (alpha_{t,k}/alpha_{s,k})^2 sigma_s^2)
            u_s     = alpha_{s,k} u0_hat + sqrt(sigma_s^2 - c_k^2) eps_hat + c_k z

        ``eta = 0`` is deterministic DDIM, ``eta = 1`` the ancestral (DDPM posterior) step.
        ``z`` is ``noise`` if given (time domain), otherwise drawn with ``generator``.
        """
        t = _as_t(t, x_t)
        s = _as_t(s, x_t)
        _, sig_t = self.alpha_sigma(t)
        _, sig_s = self.alpha_sigma(s)
        at = self.alpha_k(t)[:, None, :]
        as_ = self.alpha_k(s)[:, None, :]
        sig_t = sig_t[:, None, None]
        sig_s = sig_s[:, None, None]
        u_t, u0 = self.to_freq(x_t), self.to_freq(x0_hat)
        eps_hat = (u_t - at * u0) / sig_t
        u_s = as_ * u0
        if eta > 0.0:
            ratio = at / as_.clamp(min=1e-12)
            var_ts = (sig_t**2 - ratio**2 * sig_s**2).clamp(min=0.0)
            c = torch.minimum(eta * torch.sqrt(var_ts) * sig_s / sig_t, sig_s)
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            u_s = u_s + torch.sqrt((sig_s**2 - c**2).clamp(min=0.0)) * eps_hat
            u_s = u_s + c * self.to_freq(noise)
        else:
            u_s = u_s + sig_s * eps_hat
        return self.from_freq(u_s)

    # -- sampling grid -----------------------------------------------------------------
    @staticmethod
    def timesteps(n_steps: int, spacing: float = 1.0) -> torch.Tensor:
        """``n_steps + 1`` times from 1 (noise) down to 0 (data): ``t_i = (1 - i/n)^spacing``.

        ``spacing`` 1 is the uniform grid (every model so far was sampled on it); > 1 puts the
        steps closer together at low t, where a blurring schedule brings back the high
        frequencies (QRS band): e.g. 2 gives 1, 0.81, 0.64, ..., 0.04, 0.01, 0 for 10 steps."""
        if n_steps < 1:
            raise P2esError(f"need at least one sampling step, got {n_steps}")
        if not spacing > 0 or not math.isfinite(spacing):
            raise P2esError(f"timestep spacing must be a positive number, got {spacing!r}")
        u = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
        return (u if spacing == 1.0 else u**spacing).float()

    def config(self) -> ScheduleConfig:
        return self.cfg


class BlurringSchedule(FrequencySchedule):
    """Blurring diffusion: Gaussian blur of growing width plus cosine-schedule noise."""

    kind = "blur"

    def blur(self, t: torch.Tensor) -> torch.Tensor:
        s = torch.sin(0.5 * math.pi * t.clamp(0.0, 1.0))
        tau = 0.5 * self.cfg.sigma_blur_max**2 * s**self.cfg.blur_power
        lam = self._lam.to(t.device)
        dmin = self.cfg.d_min
        return (1.0 - dmin) * torch.exp(-lam[None, :] * tau[:, None]) + dmin


class GaussianSchedule(FrequencySchedule):
    """Plain cosine DDPM/DDIM (``d == 1``).  Same API; skips the DCT since it cancels."""

    kind = "gaussian"

    def blur(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones(t.shape[0], self.T, device=t.device)

    def q_sample(self, x0: torch.Tensor, t: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = _as_t(t, x0)
        a, s = self.alpha_sigma(t)
        return a[:, None, None] * x0 + s[:, None, None] * noise

    def step(
        self,
        x_t: torch.Tensor,
        x0_hat: torch.Tensor,
        t: float | torch.Tensor,
        s: float | torch.Tensor,
        *,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t = _as_t(t, x_t)
        s = _as_t(s, x_t)
        a_t, sig_t = (v[:, None, None] for v in self.alpha_sigma(t))
        a_s, sig_s = (v[:, None, None] for v in self.alpha_sigma(s))
        eps_hat = (x_t - a_t * x0_hat) / sig_t
        x_s = a_s * x0_hat
        if eta > 0.0:
            var_ts = (sig_t**2 - (a_t / a_s.clamp(min=1e-12)) ** 2 * sig_s**2).clamp(min=0.0)
            c = torch.minimum(eta * torch.sqrt(var_ts) * sig_s / sig_t, sig_s)
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            return x_s + torch.sqrt((sig_s**2 - c**2).clamp(min=0.0)) * eps_hat + c * noise
        return x_s + sig_s * eps_hat


class NoDiffusion:
    """Placeholder schedule of the deterministic regression baseline (``kind == "none"``)."""

    kind = "none"

    def __init__(self, T: int, cfg: ScheduleConfig):
        self.T, self.cfg = int(T), cfg

    def config(self) -> ScheduleConfig:
        return self.cfg


#: Any schedule object of this module (what :func:`make_schedule` returns).
Schedule: TypeAlias = FrequencySchedule | NoDiffusion


def make_schedule(cfg: ScheduleConfig, T: int) -> Schedule:
    """Schedule object of a :class:`ScheduleConfig` for windows of ``T`` samples."""
    if cfg.kind == "blur":
        return BlurringSchedule(T, cfg)
    if cfg.kind == "gaussian":
        return GaussianSchedule(T, cfg)
    if cfg.kind == "none":
        return NoDiffusion(T, cfg)
    raise P2esError(f"unknown diffusion kind {cfg.kind!r}")


# ---------------------------------------------------------------------------------------
# float64 numpy reference (ground truth for tests; deliberately written out plainly)
# ---------------------------------------------------------------------------------------


def _ref_coeffs(t: float, T: int, cfg: ScheduleConfig, blur: bool) -> tuple[np.ndarray, float]:
    alpha = (1.0 - cfg.eps) * math.cos(math.pi * t / 2.0)
    alpha = max(alpha, 0.0)
    sigma = math.sqrt(max(1.0 - alpha * alpha, 0.0))
    d = np.ones(T)
    if blur:
        tau = cfg.sigma_blur_max**2 / 2.0 * math.sin(math.pi * t / 2.0) ** cfg.blur_power
        for k in range(T):
            lam = (math.pi * k / T) ** 2
            d[k] = (1.0 - cfg.d_min) * math.exp(-lam * tau) + cfg.d_min
    return alpha * d, sigma


def reference_q_sample(
    x0: np.ndarray, t: float, noise: np.ndarray, cfg: ScheduleConfig, blur: bool = True
) -> np.ndarray:
    """x_t for one signal ``x0`` [..., T] at scalar ``t`` (float64, scipy DCT)."""
    T = x0.shape[-1]
    ak, sigma = _ref_coeffs(t, T, cfg, blur)
    u0 = dct(np.asarray(x0, np.float64), type=2, norm="ortho", axis=-1)
    xt: np.ndarray = idct(ak * u0, type=2, norm="ortho", axis=-1) + sigma * np.asarray(noise, np.float64)
    return xt


def reference_step(
    x_t: np.ndarray,
    x0_hat: np.ndarray,
    t: float,
    s: float,
    cfg: ScheduleConfig,
    blur: bool = True,
    eta: float = 0.0,
    z: np.ndarray | None = None,
) -> np.ndarray:
    """Reverse step t -> s (float64, scipy DCT); ``z`` time-domain noise for ``eta > 0``."""
    T = x_t.shape[-1]
    at, sig_t = _ref_coeffs(t, T, cfg, blur)
    as_, sig_s = _ref_coeffs(s, T, cfg, blur)
    ut = dct(np.asarray(x_t, np.float64), type=2, norm="ortho", axis=-1)
    u0 = dct(np.asarray(x0_hat, np.float64), type=2, norm="ortho", axis=-1)
    eps_hat = (ut - at * u0) / sig_t
    if eta == 0.0:
        us = as_ * u0 + sig_s * eps_hat
    else:
        var_ts = np.maximum(sig_t**2 - (at / as_) ** 2 * sig_s**2, 0.0)
        c = np.minimum(eta * np.sqrt(var_ts) * sig_s / sig_t, sig_s)
        zf = dct(np.asarray(z, np.float64), type=2, norm="ortho", axis=-1)
        us = as_ * u0 + np.sqrt(np.maximum(sig_s**2 - c**2, 0.0)) * eps_hat + c * zf
    xs: np.ndarray = idct(us, type=2, norm="ortho", axis=-1)
    return xs
