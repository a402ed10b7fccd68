"""Building blocks: causal convolution, the gated residual WaveNet stack, the mel upsampler.

The WaveNet stack is used by the teacher (one stack) and by every student flow. It is causal: output
t depends on inputs <= t. Callers that must see only *strictly earlier* samples (the teacher's
p(x_t | x_<t), each IAF flow) shift their input by one sample first (`shift_right`).

Incremental (Fast WaveNet) evaluation: `WaveNetStack.step` processes one time step with per-layer
ring buffers holding the last (k-1)*d inputs of each dilated conv, O(layers) work per sample, and
gives the same numbers as the parallel forward pass (tested in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError

SQRT_HALF = math.sqrt(0.5)


def shift_right(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """(..., T) -> (..., T): y_t = x_{t-steps}, zeros at the start."""
    return F.pad(x, (steps, 0))[..., : x.shape[-1]]


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads (k-1)*d zeros on the left only: output t sees inputs t-(k-1)d .. t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class GatedResidualLayer(nn.Module):
    """z = tanh(W_f*x + V_f c) * sigmoid(W_g*x + V_g c); residual and skip 1x1 convs of z."""

    def __init__(self, residual: int, gate: int, skip: int, cond: int, kernel_size: int, dilation: int):
        super().__init__()
        self.gate_channels = gate
        self.skip_channels = skip
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = CausalConv1d(residual, 2 * gate, kernel_size, dilation)
        self.cond = nn.Conv1d(cond, 2 * gate, 1, bias=False) if cond > 0 else None
        self.out = nn.Conv1d(gate, residual + skip, 1)  # residual and skip in one matmul

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv(x)
        if self.cond is not None:
            a = a + self.cond(c)
        filt, gate = a.split(self.gate_channels, dim=1)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        res, skip = self.out(z).split([x.shape[1], self.skip_channels], dim=1)
        return (x + res) * SQRT_HALF, skip


@dataclass
class StackState:
    """Ring buffers of one incremental run: buffers[i] is (B, residual, span_i) for layer i."""

    buffers: list[torch.Tensor]
    position: int = 0


class WaveNetStack(nn.Module):
    """Input 1x1 conv -> L gated residual layers (dilation 2^(i mod cycle)) -> ReLU-1x1-ReLU-1x1 head.

    forward(x: (B, in_channels, T), c: (B, cond_channels, T) | None) -> (B, out_channels, T), causal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layers: int = 20,
        cycle: int = 10,
        kernel_size: int = 2,
        residual_channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 64,
        cond_channels: int = 0,
    ):
        super().__init__()
        if layers < 1 or cycle < 1 or kernel_size < 1:
            raise ConfigError(f"WaveNet needs layers, cycle, kernel_size >= 1 (got {layers}, {cycle}, {kernel_size})")
        self.input = nn.Conv1d(in_channels, residual_channels, 1)
        self.layers = nn.ModuleList(
            GatedResidualLayer(residual_channels, gate_channels, skip_channels, cond_channels, kernel_size, 2 ** (i % cycle))
            for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(), nn.Conv1d(skip_channels, out_channels, 1)
        )
        self.skip_scale = math.sqrt(1.0 / layers)

    def receptive_field(self) -> int:
        """Inputs that output t depends on: (k-1) * sum(dilations) + 1 (the 1x1 convs add none)."""
        return sum((l.kernel_size - 1) * l.dilation for l in self.layers) + 1

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(x)
        skips = 0
        for layer in self.layers:
            h, s = layer(h, c)
            skips = skips + s
        return self.head(skips * self.skip_scale)

    # ------------------------------------------------------------------ incremental evaluation
    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> StackState:
        residual = self.input.out_channels
        spans = [max(1, (l.kernel_size - 1) * l.dilation) for l in self.layers]
        return StackState([torch.zeros(batch, residual, s, device=device, dtype=dtype) for s in spans])

    def step(self, x_t: torch.Tensor, c_t: torch.Tensor | None, state: StackState) -> torch.Tensor:
        """One time step. x_t: (B, in_channels), c_t: (B, cond_channels) -> (B, out_channels).

        Equal to forward(...)[..., t] when called for t = 0, 1, 2, ... with the same inputs.
        """
        h = F.linear(x_t, self.input.weight[:, :, 0], self.input.bias)
        skips = 0
        pos = state.position
        for layer, buf in zip(self.layers, state.buffers):
            w = layer.conv.weight  # (2G, R, k): tap j multiplies input t - (k-1-j)*d
            k, d = layer.kernel_size, layer.dilation
            a = F.linear(h, w[:, :, k - 1], layer.conv.bias)
            span = buf.shape[-1]
            for j in range(k - 1):
                back = (k - 1 - j) * d  # how far back this tap looks
                a = a + F.linear(buf[:, :, (pos - back) % span], w[:, :, j])
            if layer.cond is not None:
                a = a + F.linear(c_t, layer.cond.weight[:, :, 0])
            if k > 1:
                buf[:, :, pos % span] = h
            filt, gate = a.split(layer.gate_channels, dim=1)
            z = torch.tanh(filt) * torch.sigmoid(gate)
            res, s = F.linear(z, layer.out.weight[:, :, 0], layer.out.bias).split([h.shape[1], layer.skip_channels], dim=1)
            h = (h + res) * SQRT_HALF
            skips = skips + s
        state.position = pos + 1
        out = skips * self.skip_scale
        head = self.head
        out = F.linear(torch.relu(out), head[1].weight[:, :, 0], head[1].bias)
        return F.linear(torch.relu(out), head[3].weight[:, :, 0], head[3].bias)


class MelUpsampler(nn.Module):
    """Log-mel frames -> per-sample conditioning.

    forward(mel: (B, n_mels, F + 2*context)) -> (B, n_mels, F * hop). The `context` frames on each
    side only feed the smoothing convolutions; the output covers exactly the F central frames.

    mode "stretch" (repeat + conv): for each scale s, repeat every step s times, then smooth with a
    learned depthwise conv of width 2s+1 (the product of the scales must equal hop);
    "transposed": a ConvTranspose1d (kernel 2s, stride s) per scale; "repeat": repetition only.
    """

    def __init__(self, n_mels: int, hop_length: int, scales: list[int], mode: str = "stretch", context: int = 2):
        super().__init__()
        if mode not in ("stretch", "transposed", "repeat"):
            raise ConfigError(f"upsample mode '{mode}' is not one of stretch, transposed, repeat")
        if mode != "repeat" and math.prod(scales) != hop_length:
            raise ConfigError(f"upsample_scales {scales} multiply to {math.prod(scales)}, not hop_length {hop_length}")
        self.hop = hop_length
        self.scales = list(scales) if mode != "repeat" else [hop_length]
        self.mode = mode
        self.context = context
        self.convs = nn.ModuleList()
        for s in self.scales if mode != "repeat" else []:
            if mode == "stretch":
                conv = nn.Conv1d(n_mels, n_mels, 2 * s + 1, padding=s, groups=n_mels)
                nn.init.constant_(conv.weight, 1.0 / (2 * s + 1))  # starts as a moving average
                nn.init.zeros_(conv.bias)
            else:
                conv = nn.ConvTranspose1d(n_mels, n_mels, 2 * s, stride=s, padding=s // 2, groups=n_mels)
            self.convs.append(conv)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        if self.mode == "repeat":
            x = x.repeat_interleave(self.hop, dim=-1)
        for s, conv in zip(self.scales, self.convs):
            if self.mode == "stretch":
                x = conv(x.repeat_interleave(s, dim=-1))
            else:
                x = conv(x)[..., : x.shape[-1] * s]
            x = F.leaky_relu(x, 0.4)
        cut = self.context * self.hop
        return x[..., cut : x.shape[-1] - cut] if cut else x
