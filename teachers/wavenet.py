"""The autoregressive WaveNet teacher: p(y | c) = prod_t p(y_t | y_<t, c).

y: (B, T) the signal the teacher models, in its *model domain*: the audio x itself, or with
`preemphasis` a, y_t = x_t - a x_(t-1) (`to_model_domain` / `to_audio` convert; the map has a unit
Jacobian, so log p(x) = log p(y) and NLLs compare across settings). mel: (B, n_mels, T / hop +
2 * mel_context) log-mel frames of x (with the context frames of `distill.data.SegmentDataset`).
The stack sees the input shifted right by one sample, so the parameters at t depend on y_<t only
(tested by perturbation and by gradients). With `linear_prediction`, the network's law is in units
of the expected residual g(t) and is mapped to the signal's: location = sum_k c_k(t) y_(t-k) +
g(t) location_net, log scale = log g(t) + log scale_net, with c(t) and g(t) computed from the mel
(`distill.lpc.MelLPC`); still causal, still differentiable in y.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from distill.audio import deemphasis, preemphasis
from distill.checkpoint import remember_args
from distill.distributions import build_distribution
from distill.lpc import MelLPC, lp_predict
from distill.nn import MelConditioned, MelUpsampler, WaveNetStack, shift_right


class WaveNetTeacher(MelConditioned, nn.Module):
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
        preemphasis: float = 0.0,
        linear_prediction: dict | None = None,
        mel_silence: float = math.log(1e-5),
    ):
        super().__init__()
        self.dist = build_distribution(distribution, **(distribution_args or {}))
        self.hop_length = hop_length
        self.mel_context = mel_context
        self.preemphasis = preemphasis
        self.lpc = None
        if linear_prediction:  # the MelLPC arguments (order, sample_rate, n_fft, f_min, f_max, ...)
            self.dist.location_slice()  # a head without a location (mu-law) is a one-line error here
            self.lpc = MelLPC.build(linear_prediction, hop_length, n_mels, preemphasis)
        self.upsampler = MelUpsampler(n_mels, hop_length, upsample_scales or [16, 16], upsample, mel_context,
                                      mel_silence)
        self.speaker = nn.Embedding(num_speakers, speaker_dim) if num_speakers > 0 else None
        self.stack = WaveNetStack(
            1, self.dist.num_params, layers, cycle, kernel_size, residual_channels, gate_channels, skip_channels,
            n_mels + (speaker_dim if num_speakers > 0 else 0),
        )
        self.stack.float32_layers = 2  # under bf16 autocast (see WaveNetStack.float32_layers)
        if self.lpc is not None:
            # start as the LP-only model (the network's law N(0, 1) in units of the expected residual)
            # instead of a random law several residuals wide
            last = cast(nn.Conv1d, self.stack.head[-1])
            bias = cast(torch.Tensor, last.bias)  # a conv with a bias (torch types it Tensor | None)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(bias)
            loc = self.dist.location_slice()
            if loc.stop - loc.start > 1:  # a mixture: identical components would get identical gradients forever
                with torch.no_grad():
                    bias[loc] = torch.linspace(-1.0, 1.0, loc.stop - loc.start)

    def receptive_field(self) -> int:
        """Past samples that the network's output at t depends on: y_{t-R} .. y_{t-1}. (With linear
        prediction the law also reaches p samples back: max(R, p) in all.)"""
        return self.stack.receptive_field()

    def predictor(self, mel: torch.Tensor) -> torch.Tensor | None:
        """mel (B, n_mels, F + 2c) -> the linear predictor of every sample (B, 1 + p, F * hop) float32
        (row 0 the log gain, rows 1.. the coefficients; `distill.lpc.MelLPC`), or None for a teacher
        without linear prediction."""
        return None if self.lpc is None else self.lpc.of_padded(mel, self.mel_context)

    def crop_warmup(self) -> int:
        """Leading samples of a training crop cut from inside an utterance whose law lacks the history
        every other step has: the linear predictor's p taps and pre-emphasis's x_(-1). Their residual is
        the signal itself, tens of expected residuals wide; the teacher's training loss leaves them out."""
        return (self.lpc.order if self.lpc is not None else 0) + (1 if self.preemphasis else 0)

    def to_model_domain(self, x: torch.Tensor) -> torch.Tensor:
        """Audio (..., T) -> the signal the teacher models (pre-emphasised when `preemphasis` > 0)."""
        return preemphasis(x, self.preemphasis)

    def to_audio(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_model_domain` (de-emphasis)."""
        return deemphasis(y, self.preemphasis)

    def forward_cond(self, y: torch.Tensor, cond: torch.Tensor, lpc: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced parameters. y: (B, T), cond: (B, C, T), lpc: `predictor(mel)` -> params (B, P, T)."""
        params = self.stack(shift_right(y)[:, None, :], cond)
        if self.lpc is None:
            return params
        if lpc is None:
            raise ValueError("this teacher uses linear prediction: pass lpc=teacher.predictor(mel)")
        if params.dtype in (torch.bfloat16, torch.float16):
            params = params.float()  # bf16 autocast output is too coarse for a location near sigma ~ 1e-3
        return self.dist.affine(params, lp_predict(y.to(params.dtype), lpc[:, 1:]), lpc[:, 0])

    def forward(self, y: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                mel_cond: torch.Tensor | None = None, lpc: torch.Tensor | None = None) -> torch.Tensor:
        """y: (B, T) in the model domain, mel: (B, n_mels, T / hop + 2c) -> params (B, P, T) of p(y_t | y_<t, c).
        mel_cond, lpc: `upsampler(mel)` and `predictor(mel)` when the caller has them already (distillation
        computes them once for teacher and student)."""
        return self.forward_cond(y, self.conditioning(mel, speaker, mel_cond),
                                 self.predictor(mel) if lpc is None else lpc)

    def log_prob(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T) audio -> (B, T) log p(x_t | x_<t, c) per sample, nats (= log p(y_t | y_<t, c))."""
        y = self.to_model_domain(x)
        return self.dist.log_prob(self.forward(y, mel, speaker), y)

    def log_density(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """`log_prob` as a density, nats (a discretised head's bin probability over its bin width), so that
        teachers of every head, and students, compare in one unit."""
        y = self.to_model_domain(x)
        return self.dist.log_density(self.forward(y, mel, speaker), y)
