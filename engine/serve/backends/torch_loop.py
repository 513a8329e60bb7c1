"""The sampling loop in torch with precomputed step coefficients: capturable in a CUDA graph.

:func:`engine.model.sampler.sample` calls ``schedule.step(x, x0, t, s)``, which builds its
coefficients from Python floats on every call (host -> device copies: not allowed while a CUDA
stream is being captured).  :class:`GraphableLoop` runs the same loop - ``encode`` once, the
conditioning repeated K times, ``denoise`` + clamp + the DDIM update per step, then the 12-lead
mean/std - with every coefficient a device tensor made before capture and the initial noise read
from a static buffer.  The update is :meth:`FrequencySchedule.step` (``eta = 0``) term for term, so
on the same device it reproduces :func:`engine.model.sampler.sample` given the same ``x_T`` (tested on
the CPU).  The network passes can be swapped (``encode_fn`` / ``denoise_fn``): the TensorRT
backend runs its engines through the same loop.

Autocast (bf16/fp16) wraps only the network passes; the DCT step and the finish stay in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import torch

from engine.model.network import P2ES, Cond
from engine.serve.backends.common import DEFAULT_CLIP_MV, StepPlan

if TYPE_CHECKING:
    from engine.model.schedule import Schedule

#: ``encode(feats, demo, mask) -> Cond`` and ``denoise(x_t, t, cond) -> x0`` (None, None: regression)
EncodeFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Cond]
DenoiseFn: TypeAlias = Callable[[torch.Tensor | None, torch.Tensor | None, Cond], torch.Tensor]
#: one captured graph: (graph, static feats, demo, mask, noise, mean, std)
Captured: TypeAlias = tuple[
    torch.cuda.CUDAGraph,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]


class GraphableLoop:
    def __init__(
        self,
        model: P2ES,
        schedule: Schedule,
        *,
        steps: int,
        k: int,
        device: torch.device | str,
        clip: float | None = DEFAULT_CLIP_MV,
        autocast_dtype: torch.dtype | None = None,
        encode_fn: EncodeFn | None = None,
        denoise_fn: DenoiseFn | None = None,
    ) -> None:
        self.model = model
        self.cfg = model.cfg
        self.k, self.steps = int(k), int(steps)
        self.device = torch.device(device)
        self.kind = "none" if self.cfg.diffusion == "none" else getattr(schedule, "kind", "none")
        self.plan = StepPlan.from_schedule(schedule, self.steps) if self.kind != "none" else None
        self.coef: dict[str, Any] = self.plan.torch_tensors(self.device) if self.plan else {}
        self.lim = None if clip is None else float(clip * self.cfg.ecg_scale)
        self.autocast_dtype = autocast_dtype
        self.encode_fn: EncodeFn = encode_fn or self._encode
        self.denoise_fn: DenoiseFn = denoise_fn or self._denoise
        self.derive = model.derive.to(self.device)

    # -- network passes (torch) -----------------------------------------------------------
    def _ctx(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def _encode(self, feats: torch.Tensor, demo: torch.Tensor, mask: torch.Tensor) -> Cond:
        with self._ctx():
            return self.model.encode(feats, demo, mask)

    def _denoise(self, x_t: torch.Tensor | None, t: torch.Tensor | None, cond: Cond) -> torch.Tensor:
        with self._ctx():
            return self.model.denoise(x_t, t, cond).float()

    # -- the loop ---------------------------------------------------------------------------
    @overload
    @staticmethod
    def _repeat(x: torch.Tensor, k: int) -> torch.Tensor: ...

    @overload
    @staticmethod
    def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None: ...

    @staticmethod
    def _repeat(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
        """repeat_interleave(k, dim=0) as expand + reshape (no host sync, capturable)."""
        if x is None or k == 1:
            return x
        return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).reshape(x.shape[0] * k, *x.shape[1:])

    def _to_freq(self, x: torch.Tensor) -> torch.Tensor:
        V: torch.Tensor = self.coef["V"]
        return x @ V.T

    def _from_freq(self, u: torch.Tensor) -> torch.Tensor:
        V: torch.Tensor = self.coef["V"]
        return u @ V

    def _step(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        c = self.coef
        a_t: torch.Tensor = c["a_t"][i]
        a_s: torch.Tensor = c["a_s"][i]
        sig_t: float = c["sig_t"][i]
        sig_s: float = c["sig_s"][i]
        if self.kind == "blur":
            u_t, u0 = self._to_freq(x), self._to_freq(x0)
            eps = (u_t - a_t * u0) / sig_t
            return self._from_freq(a_s * u0 + sig_s * eps)
        eps = (x - a_t * x0) / sig_t
        return a_s * x0 + sig_s * eps

    def __call__(
        self, feats: torch.Tensor, demo: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B,3,T], demo/mask [B,5], noise [B*k,8,T] (unused by the regression baseline)
        -> (mean, std) [B,12,T] mV (fp32)."""
        B, T = feats.shape[0], feats.shape[-1]
        cond = self.encode_fn(feats, demo, mask)
        if self.plan is None:  # kind "none"
            x0 = self.denoise_fn(None, None, cond).float()
            if self.lim is not None:
                x0 = x0.clamp(-self.lim, self.lim)
            ecg = self._to_12(x0)
            return ecg, torch.zeros_like(ecg)
        k = self.k
        if k > 1:
            cond = Cond(
                [self._repeat(p, k) for p in cond.ppg],
                self._repeat(cond.gemb, k),
                self._repeat(cond.A, k),
                None,
                None,
            )
        x = noise
        x0 = x
        n = B * k
        for i, st in enumerate(self.plan.steps):
            t = torch.full((n,), st.t, device=x.device, dtype=torch.float32)
            x0 = self.denoise_fn(x, t, cond).float()
            if self.lim is not None:
                x0 = x0.clamp(-self.lim, self.lim)
            if st.s <= 0.0:
                break
            x = self._step(i, x, x0)
        ecg = self._to_12(x0).reshape(B, k, 12, T)
        mean = ecg.mean(1)
        std = ecg.std(1, unbiased=True) if k > 1 else torch.zeros_like(mean)
        return mean, std

    def _to_12(self, x8: torch.Tensor) -> torch.Tensor:
        x = x8 / self.cfg.ecg_scale
        return (self.derive[:, :, None] * x.unsqueeze(-3)).sum(-2)


def bucket_for(n: int, buckets: list[int]) -> int:
    """Smallest bucket >= n (batches larger than the largest bucket are split by the caller)."""
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def default_buckets(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (plus ``max_batch`` itself)."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    out.append(int(max_batch))
    return out


class CudaGraphRunner:
    """One CUDA graph of the whole loop per batch-size bucket (static inputs, padded batch).

    Capture follows the torch.cuda.graphs rules: warm up on a side stream, capture on it, then
    only ``copy_`` into the static inputs and ``replay()``.  A batch is padded to its bucket with
    copies of its first window (results of the padding are discarded).
    """

    def __init__(
        self,
        loop: GraphableLoop,
        *,
        n_leads: int,
        T: int,
        n_demo: int,
        ppg_channels: int,
        buckets: list[int],
        warmup: int = 2,
    ) -> None:
        self.loop, self.buckets, self.warmup = loop, sorted(set(int(b) for b in buckets)), int(warmup)
        self.shape = dict(n_leads=n_leads, T=T, n_demo=n_demo, ppg_channels=ppg_channels)
        self.graphs: dict[int, Captured] = {}

    def _capture(self, b: int) -> Captured:
        dev, s, k = self.loop.device, self.shape, self.loop.k
        feats = torch.zeros(b, s["ppg_channels"], s["T"], device=dev)
        demo = torch.zeros(b, s["n_demo"], device=dev)
        mask = torch.zeros(b, s["n_demo"], device=dev)
        noise = torch.zeros(b * k, s["n_leads"], s["T"], device=dev)
        side = torch.cuda.Stream(device=dev)  # type: ignore[no-untyped-call]  # torch: Stream.__new__ is unannotated
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.loop(feats, demo, mask, noise)
        torch.cuda.current_stream(dev).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g, stream=side):
            mean, std = self.loop(feats, demo, mask, noise)
        self.graphs[b] = (g, feats, demo, mask, noise, mean, std)
        return self.graphs[b]

    def __call__(
        self, feats: torch.Tensor, demo: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = feats.shape[0]
        top = self.buckets[-1]
        if n > top:  # split: graphs exist only up to the largest bucket
            k = self.loop.k
            parts = [
                self(feats[i : i + top], demo[i : i + top], mask[i : i + top], noise[i * k : (i + top) * k])
                for i in range(0, n, top)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        b = bucket_for(n, self.buckets)
        g, sf, sd, sm, sn, mean, std = self.graphs.get(b) or self._capture(b)
        k = self.loop.k
        sf[:n].copy_(feats)
        sd[:n].copy_(demo)
        sm[:n].copy_(mask)
        sn[: n * k].copy_(noise)
        if n < b:  # pad with the first window (keeps GroupNorm etc. finite; results dropped)
            sf[n:].copy_(feats[:1].expand(b - n, *feats.shape[1:]))
            sd[n:].copy_(demo[:1].expand(b - n, *demo.shape[1:]))
            sm[n:].copy_(mask[:1].expand(b - n, *mask.shape[1:]))
            sn[n * k :].copy_(noise[:1].expand(b * k - n * k, *noise.shape[1:]))
        g.replay()
        return mean[:n], std[:n]
