"""Waveform discriminators for adversarial terms beside probability-density distillation (Yamamoto,
Song and Kim, Interspeech 2019, arXiv:1904.04472; docs/distill.md).

Every discriminator maps audio (B, T) to a list of (logits, features), one pair per sub-discriminator:
`logits` the real/fake score map (any shape with the batch first), `features` the hidden activations
that feature matching compares (`distill.nn.losses.feature_matching_loss`). The losses read that list
only, so the discriminators are interchangeable.

- `DilatedConvDiscriminator` (the default, cheap enough for a CPU): Parallel WaveGAN's (Yamamoto et
  al. 2020, arXiv:1910.11480): a stack of non-causal 1-D convolutions, the first undilated and the k-th
  hidden one dilated by k (linear growth), leaky ReLU 0.2 between them, weight norm on all, a score per
  sample. 10 layers of 64 channels, kernel 3: a receptive field of 77 samples, centred.
- `HiFiGANDiscriminator` (the heavier option): HiFi-GAN's (Kong et al. 2020, arXiv:2010.05646)
  multi-period discriminator (periods 2, 3, 5, 7, 11: the audio folded into (T / p, p) and scored by 2-D
  convolutions along time, one column per phase) beside its multi-scale one (raw, 2x and 4x average-
  pooled audio through strided grouped 1-D convolutions; spectral norm on the raw scale, weight norm
  elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

Scores = list[tuple[torch.Tensor, list[torch.Tensor]]]  # per sub-discriminator: (logits, hidden features)


class DilatedConvDiscriminator(nn.Module):
    """Parallel WaveGAN's discriminator: (B, T) -> [(logits (B, 1, T), features)] (module doc)."""

    def __init__(self, layers: int = 10, channels: int = 64, kernel_size: int = 3, negative_slope: float = 0.2):
        super().__init__()
        if layers < 2 or kernel_size % 2 == 0:
            raise ValueError(f"a dilated-conv discriminator needs >= 2 layers and an odd kernel, got {layers}, "
                             f"{kernel_size}")
        self.kernel_size, self.negative_slope = kernel_size, negative_slope
        self.dilations = [1] + list(range(1, layers - 1)) + [1]
        widths = [1] + [channels] * (layers - 1) + [1]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(widths[i], widths[i + 1], kernel_size, dilation=d,
                                  padding=(kernel_size - 1) // 2 * d))
            for i, d in enumerate(self.dilations))

    def receptive_field(self) -> int:
        """Samples each score depends on: (k - 1) * sum(dilations) + 1, centred on its own sample."""
        return (self.kernel_size - 1) * sum(self.dilations) + 1

    def forward(self, x: torch.Tensor) -> Scores:
        h, features = x[:, None, :], []
        for conv in self.convs[:-1]:
            h = F.leaky_relu(conv(h), self.negative_slope)
            features.append(h)
        return [(self.convs[-1](h), features)]


class PeriodDiscriminator(nn.Module):
    """One period p of HiFi-GAN's multi-period discriminator: the audio (reflect-padded to a multiple
    of p) folded into (B, 1, T / p, p), 2-D convolutions along time only (kernel (5, 1), stride 3)."""

    def __init__(self, period: int, negative_slope: float = 0.1):
        super().__init__()
        self.period, self.negative_slope = period, negative_slope
        widths = [1, 32, 128, 512, 1024, 1024]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i in range(5))
        self.post = weight_norm(nn.Conv2d(1024, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pad = (-x.shape[-1]) % self.period
        if pad:
            x = F.pad(x[:, None], (0, pad), mode="reflect")[:, 0]
        h, features = x.reshape(x.shape[0], 1, -1, self.period), []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), self.negative_slope)
            features.append(h)
        return self.post(h), features


class ScaleDiscriminator(nn.Module):
    """One scale of HiFi-GAN's multi-scale discriminator: strided, grouped 1-D convolutions."""

    def __init__(self, spectral: bool = False, negative_slope: float = 0.1):
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        self.negative_slope = negative_slope
        # (in, out, kernel, stride, groups)
        shapes = [(1, 16, 15, 1, 1), (16, 64, 41, 4, 4), (64, 256, 41, 4, 16), (256, 1024, 41, 4, 64),
                  (1024, 1024, 41, 4, 256), (1024, 1024, 5, 1, 1)]
        self.convs = nn.ModuleList(norm(nn.Conv1d(i, o, k, s, padding=k // 2, groups=g)) for i, o, k, s, g in shapes)
        self.post = norm(nn.Conv1d(1024, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, features = x[:, None, :], []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), self.negative_slope)
            features.append(h)
        return self.post(h), features


class HiFiGANDiscriminator(nn.Module):
    """HiFi-GAN's multi-period and multi-scale discriminators together: (B, T) -> one (logits, features)
    per period, then per scale (module doc)."""

    def __init__(self, periods: tuple[int, ...] | list[int] = (2, 3, 5, 7, 11), scales: int = 3):
        super().__init__()
        self.periods = nn.ModuleList(PeriodDiscriminator(p) for p in periods)
        self.scales = nn.ModuleList(ScaleDiscriminator(spectral=i == 0) for i in range(scales))

    def forward(self, x: torch.Tensor) -> Scores:
        scores = [d(x) for d in self.periods]
        for i, d in enumerate(self.scales):
            if i:  # each scale the one before, average-pooled by 2
                x = F.avg_pool1d(x[:, None], 4, 2, padding=2)[:, 0]
            scores.append(d(x))
        return scores


DISCRIMINATORS = {"dilated_conv": DilatedConvDiscriminator, "hifigan": HiFiGANDiscriminator}
