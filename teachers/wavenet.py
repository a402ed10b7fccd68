"""The autoregressive WaveNet teacher: p(x | c) = prod_t p(x_t | x_<t, c).

x: (B, T) float in [-1, 1]; mel: (B, n_mels, T / hop + 2 * mel_context) log-mel frames (with the
context frames of `distill.data.SegmentDataset`). The stack sees the input shifted right by one
sample, so the parameters at t depend on x_<t only (tested by perturbation and by gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from distill.checkpoint import remember_args
from distill.distributions import build_distribution
from distill.nn import MelUpsampler, WaveNetStack, shift_right


class WaveNetTeacher(nn.Module):
    @remember_args
    def __init__(
        self,
        distribution: str = "gaussian",
        distribution_args: dict | None = None,
        layers: int = 20,
        cycle: int = 10,
        kernel_size: int = 2,
        residual_channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 64,
        n_mels: int = 80,
        hop_length: int = 256,
        mel_context: int = 2,
        upsample: str = "stretch",
        upsample_scales: list | None = None,
        num_speakers: int = 0,
        speaker_dim: int = 16,
    ):
        super().__init__()
        self.dist = build_distribution(distribution, **(distribution_args or {}))
        self.hop_length = hop_length
        self.mel_context = mel_context
        self.upsampler = MelUpsampler(n_mels, hop_length, upsample_scales or [16, 16], upsample, mel_context)
        self.speaker = nn.Embedding(num_speakers, speaker_dim) if num_speakers > 0 else None
        cond = n_mels + (speaker_dim if num_speakers > 0 else 0)
        self.stack = WaveNetStack(
            1, self.dist.num_params, layers, cycle, kernel_size, residual_channels, gate_channels, skip_channels, cond
        )

    def receptive_field(self) -> int:
        """Past samples that p(x_t | x_<t) depends on: x_{t-R} .. x_{t-1}."""
        return self.stack.receptive_field()

    def conditioning(self, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, n_mels, F + 2c) [+ speaker (B,)] -> (B, cond_channels, F * hop)."""
        c = self.upsampler(mel)
        if self.speaker is not None:
            if speaker is None:
                raise ValueError("this teacher has speaker embeddings: pass speaker ids (B,)")
            emb = self.speaker(speaker)[:, :, None].expand(-1, -1, c.shape[-1])
            c = torch.cat([c, emb], dim=1)
        return c

    def forward_cond(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher-forced parameters. x: (B, T), cond: (B, C, T) -> params (B, P, T)."""
        return self.stack(shift_right(x)[:, None, :], cond)

    def forward(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T), mel: (B, n_mels, T / hop + 2c) -> params (B, P, T) of p(x_t | x_<t, c)."""
        return self.forward_cond(x, self.conditioning(mel, speaker))

    def log_prob(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) log p(x_t | x_<t, c) per sample, nats."""
        return self.dist.log_prob(self.forward(x, mel, speaker), x)
