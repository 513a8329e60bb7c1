"""The P2Es reverse network: PPG (+ demographics) + noisy ECG x_t + t  ->  x_0 prediction.

One file, read top to bottom:

* ``ModelConfig``      - every architecture switch; saved with the checkpoint.
* ``MultiScaleConv``   - parallel depthwise branches spanning ~0.1 s (QRS), ~0.3 s (T wave)
                         and ~1 s (RR) *at the block's own sample rate* (kernel + dilation),
                         merged by a 1x1 conv.
* ``Block``            - GN -> SiLU -> 1x1 -> MultiScaleConv -> GN -> FiLM(emb) -> SiLU -> 1x1,
                         residual.
* ``PPGEncoder``       - PPG features [B,3,T] -> one feature map per UNet level (added to the
                         denoiser's maps) + a pooled summary for the GroupFinder.  It does not
                         depend on x_t or t, so the sampler runs it once per window.
* ``FrequencyDeblur``  - DCT (matrix) of the 8-lead output, learned per-frequency t-dependent
                         gain + small conv along frequency (both start as identity), inverse DCT.
* ``P2ES``             - 1-D UNet (3 levels: 128/64/32 Hz, widths 32/64/96) -> 8 leads ->
                         lead mixing (dynamic group affinity, or one matrix) -> deblur.
                         ``to_12`` expands to 12 leads in mV with the fixed DERIVE matrix
                         (multiply-and-add, no matmul/TF32), so Einthoven and Goldberger hold
                         by construction.

Tensors: x [B, 8, T] in target units (mV x ecg_scale), ppg [B, 3, T], t [B] in [0, 1],
demo / demo_mask [B, 5].  ``diffusion == "none"``: x_t is replaced by zeros and t by
``fixed_t`` (the deterministic regression baseline with the same backbone).

Opt-in beat-timing switches (both off by default: then the network, its parameters and its
outputs are exactly those of models trained before the switches existed):

* ``rpeak_head``        - a 1x1 conv on the decoder's last feature map -> R-peak heatmap logits
                          [B, T].  Training only: :meth:`P2ES.denoise_with_rpeak` returns them
                          next to the x_0 prediction; ``denoise`` / ``forward`` (the sampler,
                          the ONNX graphs) never run the head and are unchanged by it.
* ``rpeak_cond``        - :class:`BeatHead`: an R-peak heatmap predicted once per window from
                          all PPG-encoder levels (FiLM by the group embedding, so pulse arrival
                          time can follow age and height), trained with ``w_rpeak`` against the
                          annotated R peaks; its sigmoid enters the denoiser through a conv added
                          to the level-0 PPG features, so beat timing is an explicit input of
                          every reverse step.  The logits ride on ``Cond.rpeak`` (training).
* ``pat_align``         - :class:`PatHead`: the window's pulse arrival time predicted from the
                          demographics (field embeddings -> MLP, 0.05-0.35 s); a copy of the PPG
                          features shifted earlier by it (:func:`shift_earlier`, linear
                          interpolation, zeros past the end) enters the encoder through a second
                          stem (zero-initialised), so the pulses line up with the R peaks they
                          follow.  Trained with ``w_pat`` against the simulator's ``pat_ms``;
                          the prediction rides on ``Cond.pat``.
                          ``pat_mode "only"``: the shifted copy *replaces* the PPG input (no
                          second stem), so the network cannot place beats by the unshifted
                          pulses; ``pat_ppg``: the head also reads the PPG (strided convs,
                          mean over the window) - the rate, on which the pre-ejection period
                          depends, and the pulse shape.
* ``deblur_cond``       - the frequency stage's gain depends on the window's embedding (t +
                          group embedding), not on t alone.
* ``ppg_onset_channel`` - ppg [B, 4, T]: the default 3 channels + the pulse-onset channel
                          (:func:`engine.model.preprocess.onset_channel`).  ``encode`` also takes
                          the default 3-channel features and appends the onset channel itself
                          (on the host, from channel 0, bit-identical to ``ppg_features(...,
                          onset=True)``), so callers that build default features (offline
                          reconstruction, evaluation) work unchanged; the live backends and
                          training pass 4 channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.config import ModelConfig
from engine.model.groups import GroupFinder, LeadMixer
from engine.model.preprocess import complete_features
from engine.model.schedule import dct_matrix
from p2es.errors import P2esError
from p2es.leads import DERIVE


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


def branch_geometry(seconds: float, fs: float, max_kernel: int) -> tuple[int, int]:
    """(kernel, dilation) of a depthwise conv spanning about ``seconds`` at ``fs``."""
    span = max(3, int(round(seconds * fs)))
    span += 1 - span % 2  # odd
    if span <= max_kernel:
        return span, 1
    d = math.ceil((span - 1) / (max_kernel - 1))
    k = (span - 1) // d + 1
    k += 1 - k % 2
    return k, d


class MultiScaleConv(nn.Module):
    def __init__(self, c: int, fs: float, seconds: Sequence[float], max_kernel: int):
        super().__init__()
        self.geometry = [branch_geometry(s, fs, max_kernel) for s in seconds]
        self.branches = nn.ModuleList(
            nn.Conv1d(c, c, k, dilation=d, padding=d * (k - 1) // 2, groups=c) for k, d in self.geometry
        )
        self.merge = nn.Conv1d(c * len(self.branches), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.merge(torch.cat([b(x) for b in self.branches], dim=1))
        return out


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, fs: float, cfg: ModelConfig, film: bool = True):
        super().__init__()
        self.norm1 = _gn(c_in)
        self.proj = nn.Conv1d(c_in, c_out, 1)
        self.ms = MultiScaleConv(c_out, fs, cfg.branch_seconds, cfg.max_kernel)
        self.norm2 = _gn(c_out)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cfg.emb_dim, 2 * c_out)) if film else None
        if self.film is not None:
            lin = cast(nn.Linear, self.film[1])
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.out = nn.Conv1d(c_out, c_out, 1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ms(self.proj(F.silu(self.norm1(x))))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(emb).chunk(2, dim=-1)
            h = h * (1.0 + scale[..., None]) + shift[..., None]
        out: torch.Tensor = self.skip(x) + self.out(F.silu(h))
        return out


def _down(c_in: int, c_out: int) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, 4, stride=2, padding=1)


class _Up(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class PPGEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths
        self.stem = nn.Conv1d(cfg.ppg_channels, w[0], 7, padding=3)
        self.blocks = nn.ModuleList(
            Block(w[lvl], w[lvl], cfg.fs / 2**lvl, cfg, film=False) for lvl in range(len(w))
        )
        self.downs = nn.ModuleList(_down(w[lvl], w[lvl + 1]) for lvl in range(len(w) - 1))
        self.summary_dim = 2 * w[-1]

    def forward(
        self, ppg: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``extra`` [B, widths[0], T] is added after the stem (the aligned copy's own stem)."""
        feats: list[torch.Tensor] = []
        h: torch.Tensor = self.stem(ppg)
        if extra is not None:
            h = h + extra
        for lvl, blk in enumerate(self.blocks):
            h = blk(h)
            feats.append(h)
            if lvl < len(self.downs):
                h = self.downs[lvl](h)
        summary = torch.cat([h.mean(-1), h.std(-1)], dim=-1)
        return feats, summary


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 like DDPM step indices)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=-1)


class FrequencyDeblur(nn.Module):
    """u = DCT(y); u *= exp(basis(emb_t) @ log_gain); u += conv_freq(u); y = IDCT(u)."""

    V: torch.Tensor  # buffer: DCT-II matrix [T, T]

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("V", dct_matrix(cfg.T), persistent=False)
        self.basis = nn.Linear(cfg.emb_dim, cfg.deblur_basis)
        self.log_gain = nn.Parameter(torch.zeros(cfg.deblur_basis, cfg.T))
        k = cfg.deblur_kernel
        self.freq_conv = nn.Conv1d(cfg.n_leads, cfg.n_leads, k, padding=k // 2)
        nn.init.zeros_(self.freq_conv.weight)
        assert self.freq_conv.bias is not None  # Conv1d is built with bias=True
        nn.init.zeros_(self.freq_conv.bias)

    def forward(self, y: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(y.device.type):
            # Under bf16/fp16 autocast the T-term DCT sums (and the per-frequency gain) would
            # keep ~3 significant digits: run the whole stage in float32, hand back y's dtype.
            with torch.autocast(y.device.type, enabled=False):
                return self._deblur(y.float(), temb.float()).to(y.dtype)
        return self._deblur(y, temb)  # no autocast: the plain float32 path, unchanged

    def _deblur(self, y: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        u: torch.Tensor = y @ self.V.T
        gain = torch.exp((self.basis(temb) @ self.log_gain).clamp(-4.0, 4.0))
        u = u * gain[:, None, :]
        u = u + self.freq_conv(u)
        return u @ self.V


PAT_PRIOR_S = 0.2  # centre of PatHead's output range (adult finger PAT at rest ~0.15-0.35 s)


class PatHead(nn.Module):
    """Pulse arrival time [B] (s) from the demographics (``ModelConfig.pat_align``).

    Each field f contributes ``v_f W_f + b_f`` if known, a learned vector ``M_f`` if not; the sum
    goes through LayerNorm -> SiLU -> Linear -> SiLU -> Linear(1) (zero-initialised) and
    ``PAT_PRIOR_S + 0.15 tanh(.)``: a fresh head predicts 0.2 s for everyone."""

    def __init__(self, cfg: ModelConfig, hidden: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(cfg.n_demo, hidden, generator=g) * 0.5)
        self.b = nn.Parameter(torch.zeros(cfg.n_demo, hidden))
        self.missing = nn.Parameter(torch.randn(cfg.n_demo, hidden, generator=g) * 0.1)
        last = nn.Linear(hidden, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), last)
        # pat_ppg: three strided convs (stride 4 each, ~1.3 s receptive field) averaged over the
        # window -> one more summand of the field sum; the rate and the pulse shape enter here.
        self.ppg_net: nn.Sequential | None = None
        if cfg.pat_ppg:
            c = cfg.ppg_channels
            self.ppg_net = nn.Sequential(
                nn.Conv1d(c, 16, 9, stride=4, padding=4),
                nn.SiLU(),
                nn.Conv1d(16, 32, 9, stride=4, padding=4),
                nn.SiLU(),
                nn.Conv1d(32, hidden, 9, stride=4, padding=4),
            )

    def forward(
        self, demo: torch.Tensor, mask: torch.Tensor, ppg: torch.Tensor | None = None
    ) -> torch.Tensor:
        m = mask[..., None]
        e = (m * (demo[..., None] * self.w + self.b) + (1.0 - m) * self.missing).sum(1)
        if self.ppg_net is not None:
            assert ppg is not None  # P2ES.encode passes it whenever the head reads the PPG
            e = e + self.ppg_net(ppg).mean(-1)
        return PAT_PRIOR_S + 0.15 * torch.tanh(self.mlp(e)[:, 0])


def shift_earlier(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``y[b, c, i] = x[b, c, i + shift[b]]`` (samples, fractional: linear interpolation; zeros
    past either end).  Differentiable in ``x`` and ``shift``."""
    B, C, T = x.shape
    pos = torch.arange(T, device=x.device, dtype=x.dtype)[None, :] + shift.to(x.dtype)[:, None]
    i0 = torch.floor(pos)
    frac = (pos - i0)[:, None, :]
    i0l = i0.long()
    out = x.new_zeros(B, C, T)
    for off, wgt in ((0, 1.0 - frac), (1, frac)):
        idx = i0l + off
        ok = ((idx >= 0) & (idx < T)).to(x.dtype)[:, None, :]
        g = torch.gather(x, 2, idx.clamp(0, T - 1)[:, None, :].expand(B, C, T))
        out = out + g * ok * wgt
    return out


class BeatHead(nn.Module):
    """R-peak heatmap logits [B, T] from every PPG-encoder level (``ModelConfig.rpeak_cond``).

    Deeper levels are projected to ``widths[0]`` and upsampled (nearest) to the full rate, summed
    with level 0, modulated by the group embedding (FiLM, zero-initialised) when there is one,
    then GN -> SiLU -> conv (9 taps, ~70 ms).  ``inject`` maps the heatmap (sigmoid) back to a
    level-0 feature map (zero-initialised, so a fresh model starts as the plain one)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w = cfg.widths
        self.lift = nn.ModuleList(nn.Conv1d(w[lvl], w[0], 1) for lvl in range(len(w)))
        self.film = nn.Linear(cfg.emb_dim, 2 * w[0]) if cfg.use_groups else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.norm = _gn(w[0])
        self.out = nn.Conv1d(w[0], 1, 9, padding=4)
        assert self.out.bias is not None  # Conv1d is built with bias=True
        nn.init.constant_(self.out.bias, math.log(0.05 / 0.95))  # prior: ~5 % of samples near a peak
        self.inject = nn.Conv1d(1, w[0], 9, padding=4)
        nn.init.zeros_(self.inject.weight)
        assert self.inject.bias is not None
        nn.init.zeros_(self.inject.bias)

    def forward(self, feats: Sequence[torch.Tensor], gemb: torch.Tensor | None) -> torch.Tensor:
        T = feats[0].shape[-1]
        h = self.lift[0](feats[0])
        for lvl in range(1, len(feats)):
            h = h + F.interpolate(self.lift[lvl](feats[lvl]), size=T, mode="nearest")
        h = self.norm(h)
        if self.film is not None and gemb is not None:
            scale, shift = self.film(F.silu(gemb)).chunk(2, dim=-1)
            h = h * (1.0 + scale[..., None]) + shift[..., None]
        logits: torch.Tensor = self.out(F.silu(h))[:, 0]
        return logits


@dataclass
class Cond:
    """Everything the denoiser needs that does not depend on (x_t, t)."""

    ppg: list[torch.Tensor]  # per-level PPG features
    gemb: torch.Tensor | None  # group/demographic embedding [B, emb_dim]
    A: torch.Tensor | None  # lead affinity [B, 8, 8] (None: single LeadMixer)
    z: torch.Tensor | None  # group embedding [B, group_dim] (contrastive loss)
    w: torch.Tensor | None  # soft group assignment [B, G]
    rpeak: torch.Tensor | None = None  # BeatHead logits [B, T] (rpeak_cond; training loss only)
    pat: torch.Tensor | None = None  # PatHead prediction [B] s (pat_align)

    def repeat_interleave(self, k: int) -> Cond:
        def r(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat_interleave(k, dim=0)

        return Cond(
            [p.repeat_interleave(k, dim=0) for p in self.ppg],
            r(self.gemb),
            r(self.A),
            r(self.z),
            r(self.w),
            r(self.rpeak),
            r(self.pat),
        )


class P2ES(nn.Module):
    groups: GroupFinder | None  # None: the "no groups" ablation (then ``mixer`` is set)
    group_mlp: nn.Sequential | None
    mixer: LeadMixer | None
    deblur: FrequencyDeblur | None
    rpeak: nn.Conv1d | None  # R-peak heatmap head (ModelConfig.rpeak_head), else None
    beat: BeatHead | None  # beat map as conditioning (ModelConfig.rpeak_cond), else None
    pat: PatHead | None  # demographic alignment (ModelConfig.pat_align), else None
    pat_stem: nn.Conv1d | None  # stem of the aligned PPG copy (pat_align)
    derive: torch.Tensor  # buffer: DERIVE [12, 8]

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.T % 2 ** (len(cfg.widths) - 1):
            raise ValueError(f"T={cfg.T} must be divisible by {2 ** (len(cfg.widths) - 1)}")
        self.cfg = cfg
        w, E, L = cfg.widths, cfg.emb_dim, len(cfg.widths)
        fs = [cfg.fs / 2**lvl for lvl in range(L)]
        self.ppg_enc = PPGEncoder(cfg)
        self.time_mlp = nn.Sequential(nn.Linear(64, E), nn.SiLU(), nn.Linear(E, E))
        if cfg.use_groups:
            self.groups = GroupFinder(
                cfg.n_demo,
                self.ppg_enc.summary_dim,
                dim=cfg.group_dim,
                n_groups=cfg.n_groups,
                n_leads=cfg.n_leads,
                tau=cfg.group_tau,
            )
            self.group_mlp = nn.Sequential(
                nn.Linear(cfg.group_dim + cfg.n_groups, E), nn.SiLU(), nn.Linear(E, E)
            )
            self.mixer = None
        else:
            self.groups, self.group_mlp = None, None
            self.mixer = LeadMixer(cfg.n_leads)
        self.inp = nn.Conv1d(cfg.n_leads, w[0], 3, padding=1)
        self.ppg_in = nn.ModuleList(nn.Conv1d(w[lvl], w[lvl], 1) for lvl in range(L))
        self.enc = nn.ModuleList(Block(w[lvl], w[lvl], fs[lvl], cfg) for lvl in range(L))
        self.downs = nn.ModuleList(_down(w[lvl], w[lvl + 1]) for lvl in range(L - 1))
        self.mid = Block(w[-1], w[-1], fs[-1], cfg)
        self.ups = nn.ModuleList(_Up(w[lvl + 1], w[lvl]) for lvl in range(L - 1))
        self.dec = nn.ModuleList(Block(2 * w[lvl], w[lvl], fs[lvl], cfg) for lvl in range(L - 1))
        self.head = nn.Sequential(_gn(w[0]), nn.SiLU(), nn.Conv1d(w[0], cfg.n_leads, 3, padding=1))
        self.deblur = FrequencyDeblur(cfg) if cfg.use_deblur else None
        self.register_buffer("derive", torch.tensor(DERIVE, dtype=torch.float32), persistent=False)
        self.rpeak = None
        if cfg.rpeak_head:  # built last: a model without it has exactly the parameters it always had
            self.rpeak = nn.Conv1d(w[0], 1, 1)
            assert self.rpeak.bias is not None  # Conv1d is built with bias=True
            nn.init.constant_(self.rpeak.bias, math.log(0.05 / 0.95))  # prior: ~5 % of samples near a peak
        self.beat = BeatHead(cfg) if cfg.rpeak_cond else None  # also built after every older part
        self.pat, self.pat_stem = None, None
        if cfg.pat_align:
            self.pat = PatHead(cfg)
            if cfg.pat_mode == "add":  # "only" feeds the shifted copy through the encoder's own stem
                self.pat_stem = nn.Conv1d(cfg.ppg_channels, w[0], 7, padding=3)
                nn.init.zeros_(self.pat_stem.weight)
                assert self.pat_stem.bias is not None  # Conv1d is built with bias=True
                nn.init.zeros_(self.pat_stem.bias)

    # -- conditioning (once per window) --------------------------------------------------
    def encode(
        self,
        ppg: torch.Tensor,
        demo: torch.Tensor | None = None,
        demo_mask: torch.Tensor | None = None,
        shift_pat: torch.Tensor | None = None,
    ) -> Cond:
        """Everything that does not depend on (x_t, t).  ``shift_pat`` [B] s (training only,
        ``TrainConfig.pat_teacher``): shift the aligned copy by it instead of the PAT head's
        prediction where it is finite (``Cond.pat`` stays the prediction)."""
        if self.cfg.ppg_onset_channel and ppg.shape[1] == self.cfg.ppg_channels - 1:
            ppg = self._with_onset(ppg)
        B = ppg.shape[0]
        if demo is None:
            demo = ppg.new_zeros(B, self.cfg.n_demo)
            demo_mask = ppg.new_zeros(B, self.cfg.n_demo)
        elif demo_mask is None:
            demo_mask = torch.isfinite(demo).float()
        demo = torch.where(demo_mask > 0, demo, torch.zeros_like(demo))  # drops NaN of unknowns
        pat: torch.Tensor | None = None
        extra: torch.Tensor | None = None
        if self.pat is not None:
            pat = self.pat(demo, demo_mask, ppg)
            used = pat
            if shift_pat is not None:
                sp = shift_pat.to(pat.dtype)
                used = torch.where(torch.isfinite(sp), sp, pat)
            shifted = shift_earlier(ppg, used * self.cfg.fs)
            if self.pat_stem is None:  # pat_mode "only": the aligned copy is the input
                ppg = shifted
            else:
                extra = self.pat_stem(shifted)
        feats, summary = self.ppg_enc(ppg, extra)
        if self.groups is None:
            return self._with_beats(Cond(feats, None, None, None, None, pat=pat))
        z, wgt, A = self.groups(demo, demo_mask, summary)
        assert self.group_mlp is not None  # built together with self.groups
        gemb = self.group_mlp(torch.cat([z, wgt], dim=-1))
        return self._with_beats(Cond(feats, gemb, A, z, wgt, pat=pat))

    def _with_beats(self, cond: Cond) -> Cond:
        """``rpeak_cond``: predict the beat map and add it to the level-0 PPG features."""
        if self.beat is None:
            return cond
        logits = self.beat(cond.ppg, cond.gemb)
        feats = list(cond.ppg)
        feats[0] = feats[0] + self.beat.inject(torch.sigmoid(logits)[:, None, :])
        return Cond(feats, cond.gemb, cond.A, cond.z, cond.w, logits, cond.pat)

    def _with_onset(self, ppg: torch.Tensor) -> torch.Tensor:
        """Default features [B, 3, T] -> [B, 4, T] with the pulse-onset channel (host numpy)."""
        f = complete_features(ppg.detach().float().cpu().numpy(), self.cfg.fs, onset=True)
        return torch.from_numpy(f).to(device=ppg.device, dtype=ppg.dtype)

    # -- one denoiser evaluation ------------------------------------------------------
    def denoise(self, x_t: torch.Tensor | None, t: torch.Tensor | float | None, cond: Cond) -> torch.Tensor:
        """x_0 prediction of the 8 independent leads [B, 8, T] (network units)."""
        h, temb = self._trunk(x_t, t, cond)
        return self._output(h, temb, cond)

    def denoise_with_rpeak(
        self, x_t: torch.Tensor | None, t: torch.Tensor | float | None, cond: Cond
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(denoise(x_t, t, cond), R-peak heatmap logits [B, T])`` in one pass (training;
        needs ``ModelConfig.rpeak_head``).  The x_0 prediction is exactly ``denoise``'s."""
        if self.rpeak is None:
            raise P2esError("this model has no R-peak head (ModelConfig.rpeak_head is off)")
        h, temb = self._trunk(x_t, t, cond)
        logits: torch.Tensor = self.rpeak(h)[:, 0]
        return self._output(h, temb, cond), logits

    def _trunk(
        self, x_t: torch.Tensor | None, t: torch.Tensor | float | None, cond: Cond
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet up to the decoder's last feature map: ``(h [B, widths[0], T], temb)``."""
        B = cond.ppg[0].shape[0]
        if self.cfg.diffusion == "none" or x_t is None:
            x_t = cond.ppg[0].new_zeros(B, self.cfg.n_leads, self.cfg.T)
            t = torch.full((B,), self.cfg.fixed_t, device=x_t.device)
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(B)
        temb = self.time_mlp(timestep_embedding(t, 64))
        emb = temb if cond.gemb is None else temb + cond.gemb
        h: torch.Tensor = self.inp(x_t)
        skips: list[torch.Tensor] = []
        L = len(self.enc)
        for lvl in range(L):
            h = self.enc[lvl](h + self.ppg_in[lvl](cond.ppg[lvl]), emb)
            if lvl < L - 1:
                skips.append(h)
                h = self.downs[lvl](h)
        h = self.mid(h, emb)
        for lvl in reversed(range(L - 1)):
            h = self.dec[lvl](torch.cat([self.ups[lvl](h), skips[lvl]], dim=1), emb)
        return h, temb

    def _output(self, h: torch.Tensor, temb: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Decoder feature map -> 8 leads -> lead mixing -> deblur."""
        y: torch.Tensor = self.head(h)
        if cond.A is not None:
            y = GroupFinder.mix(y, cond.A)
        else:
            assert self.mixer is not None  # no groups (then encode() leaves A None): one LeadMixer
            y = self.mixer(y)
        if self.deblur is not None:
            demb = temb + cond.gemb if self.cfg.deblur_cond and cond.gemb is not None else temb
            y = self.deblur(y, demb)
        return y

    def forward(
        self,
        x_t: torch.Tensor | None,
        t: torch.Tensor | float | None,
        ppg: torch.Tensor,
        demo: torch.Tensor | None = None,
        demo_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_0 prediction [B, 8, T] (network units); encode + denoise in one call."""
        return self.denoise(x_t, t, self.encode(ppg, demo, demo_mask))

    def to_12(self, x8: torch.Tensor) -> torch.Tensor:
        """[..., 8, T] network units -> [..., 12, T] mV via DERIVE (elementwise, exact)."""
        x = x8 / self.cfg.ecg_scale
        return (self.derive[:, :, None] * x.unsqueeze(-3)).sum(-2)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
