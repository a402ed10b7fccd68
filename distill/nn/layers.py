"""The WaveNet's primitives: the causal shift, the gate, causal convolution and the gated residual layer.

Callers that must see only *strictly earlier* samples (the teacher's p(x_t | x_<t), each IAF flow)
shift their input by one sample first (`shift_right`). `time_major` decides where a forward runs as
matrix products in (B, T, C) layout (a CPU under bf16 autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT_HALF = math.sqrt(0.5)


def shift_right(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """(..., T) -> (..., T): y_t = x_{t-steps}, zeros at the start."""
    return F.pad(x, (steps, 0))[..., : x.shape[-1]]


def gated_tanh(filt: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """tanh(filt) * sigmoid(gate), with tanh(f) written as 2 sigmoid(2f) - 1.

    The same function (error <= 2e-7 in float32), but PyTorch's CPU tanh kernel is several times slower
    than its sigmoid kernel on long (B, C, T) tensors; this form halves the gate's cost in parallel
    synthesis on CPU (measured by `wavedistill bench`). The per-step incremental evaluator keeps torch.tanh.
    """
    return (torch.sigmoid(2 * filt) * 2 - 1) * torch.sigmoid(gate)


def gated_tanh_(filt: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`gated_tanh` in place (the same operations in the same order): the result in `filt`, `gate`
    overwritten. For inference only (autograd needs the inputs)."""
    return filt.mul_(2).sigmoid_().mul_(2).sub_(1).mul_(gate.sigmoid_())


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads (k-1)*d zeros on the left only: output t sees inputs t-(k-1)d .. t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class GatedResidualLayer(nn.Module):
    """z = tanh(W_f*x + V_f c) * sigmoid(W_g*x + V_g c); residual and skip 1x1 convs of z.

    `forward` takes this layer's conditioning projection V c (B, 2G, T) ready-made
    (`WaveNetStack.project_cond`).
    """

    def __init__(self, residual: int, gate: int, skip: int, cond: int, kernel_size: int, dilation: int):
        super().__init__()
        self.gate_channels = gate
        self.skip_channels = skip
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = CausalConv1d(residual, 2 * gate, kernel_size, dilation)
        self.cond = nn.Conv1d(cond, 2 * gate, 1, bias=False) if cond > 0 else None
        self.out = nn.Conv1d(gate, residual + skip, 1)  # residual and skip in one matmul

    def forward(self, x: torch.Tensor, cond_proj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv(x)
        if cond_proj is not None:
            a = a + cond_proj
        filt, gate = a.split(self.gate_channels, dim=1)
        z = gated_tanh(filt, gate)
        res, skip = self.out(z).split([x.shape[1], self.skip_channels], dim=1)
        return (x + res) * SQRT_HALF, skip

    def infer(self, x: torch.Tensor, cond_proj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` without autograd (off the CPU; the CPU runs `distill.nn.engine`): the same operations
        in the same order, done in place, so a layer allocates two buffers (the conv's and the 1x1's
        output) instead of ~10. The same numbers: bit for bit at batch 1 (tested); at batch > 1 the
        gate halves are strided views, whose row ends PyTorch computes with scalar kernels (a last-bit
        difference)."""
        a = self.conv(x)
        if cond_proj is not None:
            a.add_(cond_proj)
        filt, gate = a.split(self.gate_channels, dim=1)
        z = gated_tanh_(filt, gate)
        res, skip = self.out(z).split([x.shape[1], self.skip_channels], dim=1)
        if res.dtype != x.dtype:  # a float32 stream into a bf16 layer: the sum is float32, as in forward
            return (x + res) * SQRT_HALF, skip
        return res.add_(x).mul_(SQRT_HALF), skip


def time_major(x: torch.Tensor) -> bool:
    """Whether a forward with autograd runs `WaveNetStack.forward_time_major`: on a CPU under bf16 autocast,
    eager or compiled, where matrix products beat mkldnn's bf16 convolutions and the bf16 gate is cheaper
    as tanh * sigmoid (docs/benchmarks.md; in float32 the convolutions are faster)."""
    cpu = x.device.type == "cpu"
    return cpu and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class _TimeMajorCond:
    """One stack call's conditioning (B, C, T) in time-major layout, made once per precision: float32 for
    the float32 layers, the autocast dtype for the rest (autocast would cast it again at every layer)."""

    def __init__(self, c: torch.Tensor, x: torch.Tensor):
        self.c, self.device = c, x.device.type
        self.made: dict[torch.dtype, torch.Tensor] = {}

    def get(self, precise: bool) -> torch.Tensor:
        if precise:
            dtype = torch.float32
        elif torch.is_autocast_enabled(self.device):
            dtype = torch.get_autocast_dtype(self.device)
        else:
            dtype = self.c.dtype
        if dtype not in self.made:
            self.made[dtype] = self.c.transpose(1, 2).to(dtype).contiguous()
        return self.made[dtype]
