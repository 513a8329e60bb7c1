"""Discriminators of the CardioGAN-style baseline (training only; inference never sees them).

CardioGAN (Sarkar & Etemad, "CardioGAN: Attentive Generative Adversarial Network with Dual
Discriminators for Synthesis of ECG from PPG", AAAI 2021) judges the generated ECG twice: in
the time domain and in the frequency domain (a spectrogram).  Our baseline keeps that idea on
our backbone: the generator is the same 1-D UNet as ``unet_regression`` (``diffusion ==
"none"``), trained with the same paired loss plus least-squares adversarial terms (Mao et
al. 2017) from

* :class:`TimeDiscriminator`  - 1-D PatchGAN on [PPG features (3) ; 8 leads], conditioned on
  the PPG as in pix2pix (Isola et al. 2017), receptive field ~1 s;
* :class:`FreqDiscriminator`  - 2-D PatchGAN on the log-magnitude STFT of the 8 leads
  (0.5 s Hann windows, hop 125 ms at 128 Hz).

Our windows are paired (PPG and ECG of the same heart), so the paired loss replaces
CardioGAN's cycle consistency; the attention gates of its generator are not used (the
backbone is shared with the other models, same width).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _block1d(c_in: int, c_out: int, k: int, stride: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2)]
    if norm:
        layers.append(nn.GroupNorm(min(8, c_out), c_out))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class TimeDiscriminator(nn.Module):
    def __init__(self, n_leads: int = 8, ppg_channels: int = 3, width: int = 32):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            *_block1d(n_leads + ppg_channels, c, 15, 2, False),
            *_block1d(c, 2 * c, 15, 2, True),
            *_block1d(2 * c, 4 * c, 15, 2, True),
            nn.Conv1d(4 * c, 1, 15, padding=7),
        )

    def forward(self, ecg8: torch.Tensor, ppg: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([ecg8, ppg], dim=1))
        return out


class FreqDiscriminator(nn.Module):
    window: torch.Tensor  # buffer (Hann window of the STFT)

    def __init__(self, n_leads: int = 8, fs: float = 128.0, width: int = 32):
        super().__init__()
        self.n_fft = max(16, int(round(0.5 * fs)))
        self.hop = max(4, self.n_fft // 4)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        c = width
        self.net = nn.Sequential(
            nn.Conv2d(n_leads, c, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )

    def spectrogram(self, ecg8: torch.Tensor) -> torch.Tensor:
        B, L, T = ecg8.shape
        s = torch.stft(
            ecg8.reshape(B * L, T).float(), self.n_fft, self.hop, window=self.window, return_complex=True
        )
        return torch.log1p(s.abs()).reshape(B, L, s.shape[-2], s.shape[-1])

    def forward(self, ecg8: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.spectrogram(ecg8))
        return out


class Discriminators(nn.Module):
    """Both discriminators; least-squares GAN losses."""

    def __init__(self, n_leads: int = 8, ppg_channels: int = 3, fs: float = 128.0):
        super().__init__()
        self.time = TimeDiscriminator(n_leads, ppg_channels)
        self.freq = FreqDiscriminator(n_leads, fs)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, ppg: torch.Tensor) -> torch.Tensor:
        fake = fake.detach()
        loss: torch.Tensor | float = 0.0
        for r, f in ((self.time(real, ppg), self.time(fake, ppg)), (self.freq(real), self.freq(fake))):
            loss = loss + 0.5 * (F.mse_loss(r, torch.ones_like(r)) + F.mse_loss(f, torch.zeros_like(f)))
        assert isinstance(loss, torch.Tensor)  # the loop above always runs (two discriminators)
        return loss

    def g_loss(self, fake: torch.Tensor, ppg: torch.Tensor) -> torch.Tensor:
        a, b = self.time(fake, ppg), self.freq(fake)
        return F.mse_loss(a, torch.ones_like(a)) + F.mse_loss(b, torch.ones_like(b))
