"""The incremental evaluator of a WaveNet stack and the weight layout every teacher sampler reads.

`StackStepper` folds the stack's weights once (taps of each dilated conv side by side, residual
scaling and the skip sum folded in, all skip projections as one matrix, the head's two 1x1 convs as
matrices): the incremental sampler steps with them, the CUDA-graph sampler (`graph.py`) runs the same
recursion from static buffers with them, and the C loop (`fastloop.py`) passes them to C. Only teachers
sample step by step, so it lives here, not in the shared layers (`distill.nn`).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from distill.nn.layers import SQRT_HALF
from distill.nn.wavenet import WaveNetStack


class StackStepper:
    """Fast WaveNet: evaluates a `WaveNetStack` one time step at a time.

    Each dilated conv keeps a ring of its last (k-1)*d inputs (a Python list of tensors, so pushing
    is free); the conditioning projections of all layers (with the conv biases folded in) are
    computed for `chunk` steps at once; residual scaling and the skip sum are folded into
    pre-arranged weights; the skip outputs of all layers are one matmul at the end. About seven
    tensor ops per layer and step, O(layers) work per sample, batch > 1.

    cond: (B, cond_channels, T) or None. `step(x_t: (B, in_channels)) -> (B, out_channels)` equals
    `stack(x, cond)[..., t]` for t = 0, 1, 2, ... (tested in float64).
    """

    def __init__(self, stack: WaveNetStack, cond: torch.Tensor | None, batch: int | None = None, chunk: int = 1024):
        ref = stack.input.weight
        self.stack = stack
        self.cond = cond
        rows = cond.shape[0] if cond is not None else batch
        if rows is None:
            raise ValueError("pass cond or batch")
        self.batch: int = rows
        self.chunk = chunk
        self.position = 0
        self._cond_chunk: list[tuple[torch.Tensor, ...]] = []  # loaded by the first step
        self.w_in = ref[:, :, 0].t().contiguous()  # (in, R)
        # the stack's convs all have a bias (torch types Conv1d.bias as Tensor | None), the cond projections aside
        self.b_in = cast(torch.Tensor, stack.input.bias)
        layers = stack.layers
        residual = stack.input.out_channels
        self.taps: list[list[int]] = []
        self.w_tap: list[torch.Tensor] = []
        self.w_res: list[torch.Tensor] = []
        self.b_res: list[torch.Tensor] = []
        self.gate: list[int] = []
        self.rings: list[list[torch.Tensor]] = []
        self.spans: list[int] = []
        for layer in layers:
            k, d = layer.kernel_size, layer.dilation
            w = layer.conv.weight  # (2G, R, k); tap j multiplies input t - (k-1-j)*d
            self.w_tap.append(w.permute(2, 1, 0).reshape(k * residual, -1).contiguous())  # (k*R, 2G)
            self.taps.append([(k - 1 - j) * d for j in range(k - 1)])
            span = max(1, (k - 1) * d)
            self.spans.append(span)
            self.rings.append([ref.new_zeros(self.batch, residual)] * span)
            out_w = layer.out.weight[:, :, 0]
            self.w_res.append((out_w[:residual] * SQRT_HALF).t().contiguous())  # (G, R)
            self.b_res.append(cast(torch.Tensor, layer.out.bias)[:residual] * SQRT_HALF)
            self.gate.append(layer.gate_channels)
        scale = stack.skip_scale
        self.w_skip = torch.cat([layer.out.weight[residual:, :, 0].t() for layer in layers], dim=0) * scale  # (L*G, S)
        self.b_skip = cast(torch.Tensor, sum(cast(torch.Tensor, layer.out.bias)[residual:] for layer in layers)) * scale
        self.conv_bias = torch.stack([cast(torch.Tensor, layer.conv.bias) for layer in layers])  # (L, 2G)
        self.has_cond = layers[0].cond is not None
        if self.has_cond:
            self.w_cond = torch.stack([cast(nn.Conv1d, layer.cond).weight[:, :, 0] for layer in layers])  # (L, 2G, C)
        head1, head2 = cast(nn.Conv1d, stack.head[1]), cast(nn.Conv1d, stack.head[3])
        self.h1 = (head1.weight[:, :, 0].t().contiguous(), cast(torch.Tensor, head1.bias))
        self.h2 = (head2.weight[:, :, 0].t().contiguous(), cast(torch.Tensor, head2.bias))

    def _load_chunk(self) -> None:
        t0 = self.position
        if self.has_cond:
            assert self.cond is not None, "a conditioned stack steps with its cond"
            c = self.cond[:, :, t0 : t0 + self.chunk]  # (B, C, n)
            proj = torch.einsum("lgc,bcn->nlbg", self.w_cond, c) + self.conv_bias[None, :, None, :]
        else:
            n = self.chunk
            proj = self.conv_bias[None, :, None, :].expand(n, -1, self.batch, -1)
        self._cond_chunk = [step.unbind(0) for step in proj.unbind(0)]  # [n][L] -> (B, 2G)

    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        i = self.position % self.chunk
        if i == 0:
            self._load_chunk()
        cond_t = self._cond_chunk[i]
        pos = self.position
        h = torch.addmm(self.b_in, x_t, self.w_in)
        zs = []
        for li in range(len(self.w_tap)):
            ring, span = self.rings[li], self.spans[li]
            taps = [ring[(pos - back) % span] for back in self.taps[li]]
            a = torch.addmm(cond_t[li], torch.cat(taps + [h], dim=1) if taps else h, self.w_tap[li])
            if taps:
                ring[pos % span] = h
            filt, gate = a.split(self.gate[li], dim=1)
            z = torch.tanh(filt) * torch.sigmoid(gate)
            zs.append(z)
            h = torch.addmm(self.b_res[li], z, self.w_res[li]).add_(h, alpha=SQRT_HALF)
        self.position = pos + 1
        skips = torch.addmm(self.b_skip, torch.cat(zs, dim=1), self.w_skip)
        out = torch.addmm(self.h1[1], torch.relu(skips), self.h1[0])
        return torch.addmm(self.h2[1], torch.relu(out), self.h2[0])
