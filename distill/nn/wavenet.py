"""The gated residual WaveNet stack, used by the teacher (one stack) and by every student flow.

It is causal: output t depends on inputs <= t. Incremental (Fast WaveNet) evaluation:
`WaveNetStack.step` processes one time step with per-layer ring buffers holding the last (k-1)*d inputs
of each dilated conv, O(layers) work per sample, and gives the same numbers as the parallel forward pass
(tested in float64). On the CPU without autograd, `forward` runs `distill.nn.engine`.
"""

from __future__ import annotations

import contextlib
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.nn import engine
from distill.nn.layers import SQRT_HALF, GatedResidualLayer, _TimeMajorCond, gated_tanh, time_major


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
        # typed for mypy as the list of layers it holds (nn.ModuleList is not generic: its items are nn.Module)
        self.layers = cast("list[GatedResidualLayer]", nn.ModuleList(
            GatedResidualLayer(
                residual_channels, gate_channels, skip_channels, cond_channels, kernel_size, 2 ** (i % cycle)
            )
            for i in range(layers)
        ))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(), nn.Conv1d(skip_channels, out_channels, 1)
        )
        self.skip_scale = math.sqrt(1.0 / layers)

    def macs_per_sample(self) -> int:
        """Multiply-accumulates of one forward pass per time step (convs and 1x1s; biases, gates and
        the conditioning's upsampling left out). FLOPs = 2 x MACs."""
        residual = self.input.out_channels
        total = self.input.in_channels * residual
        for layer in self.layers:
            gates = 2 * layer.gate_channels
            total += layer.kernel_size * residual * gates + layer.gate_channels * (residual + layer.skip_channels)
            if layer.cond is not None:
                total += layer.cond.in_channels * gates
        head1, head2 = cast(nn.Conv1d, self.head[1]), cast(nn.Conv1d, self.head[3])
        return total + head1.in_channels * head1.out_channels + head2.in_channels * head2.out_channels

    def grown_state(self, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict (keys relative to the stack) of a stack like this one but narrower (fewer
        residual, gate or skip channels, fewer input or conditioning channels; the same layers, kernel
        and dilations) -> this stack's, computing the same function (Net2Net's function-preserving
        widening, in its zero-read form):

        - every new *input* channel of a weight (a column) reads with weight zero: the new residual
          channels into each dilated conv, the new gate units into each residual/skip 1x1, the new skip
          channels and head units into the head, new conditioning or input channels;
        - every new *output* channel (a row) keeps this stack's own initialisation and a zero bias (a
          fresh negative bias can leave a new head unit dead behind its ReLU), so the new units compute
          something and the zero columns reading them get gradients from the first step.

        The gate rows are two halves (filter, gate) and the 1x1 after the gate writes the residual
        channels then the skip channels: each part is embedded at its own offset. Not a growth, and left
        to the loader: another kernel, another output head (the last 1x1's rows are the law's
        parameters), more input channels than y(t - 1) alone (period taps sit at offsets around 0, so K
        taps do not embed in K' > K). Entries of `theirs`
        that already have this stack's shape, and anything else (a shape that does not fit, keys this
        stack does not have), are returned as they are, for the loader to accept or to refuse."""
        own = self.state_dict()
        grown = dict(theirs)
        residual = theirs.get("input.weight")
        if residual is None:
            return grown
        old_residual = residual.shape[0]
        for name, mine in own.items():
            old = theirs.get(name)
            if old is None or old.shape == mine.shape or old.dim() != mine.dim():
                continue
            if old.shape[2:] != mine.shape[2:] or any(o > m for o, m in zip(old.shape, mine.shape, strict=True)):
                continue  # another kernel, or wider than this stack: not a growth
            if name.startswith("head.3.") and old.shape[0] != mine.shape[0]:
                continue  # the output's rows are the law's parameters: another head is not a growth
            if name == "input.weight" and old.shape[1] not in (1, mine.shape[1]):
                continue  # inputs after y(t - 1) are period taps at offsets around 0: only 0 -> K taps grows
            rows: tuple[tuple[int, int], ...]  # (old, new) row counts of each part, in order
            if name.endswith(("conv.weight", "conv.bias", "cond.weight")):  # rows: [filter | gate]
                rows = ((old.shape[0] // 2, mine.shape[0] // 2),) * 2
            elif name.endswith(("out.weight", "out.bias")) and name.startswith("layers."):  # [residual | skip]
                rows = ((old_residual, self.input.out_channels),
                        (old.shape[0] - old_residual, mine.shape[0] - self.input.out_channels))
            else:
                rows = ((old.shape[0], mine.shape[0]),)
            new = mine.clone() if mine.dim() > 1 else torch.zeros_like(mine)  # new units' biases start at 0
            if new.dim() > 1:
                new[:, old.shape[1]:] = 0  # new inputs are read with weight zero
            columns = new[:, : old.shape[1]] if new.dim() > 1 else new  # a view: writes go into `new`
            start_old = start_new = 0
            for n_old, n_new in rows:
                columns[start_new : start_new + n_old] = old[start_old : start_old + n_old]
                start_old, start_new = start_old + n_old, start_new + n_new
            grown[name] = new
        return grown

    def receptive_field(self) -> int:
        """Inputs that output t depends on: (k-1) * sum(dilations) + 1 (the 1x1 convs add none)."""
        return sum((layer.kernel_size - 1) * layer.dilation for layer in self.layers) + 1

    def project_cond(self, c: torch.Tensor | None, budget_bytes: int = 16 << 20):
        """Each layer's conditioning projection V_l c (B, 2G, T), in the order of the layers (None each
        when the stack or the call has no conditioning). Consecutive layers are projected together in
        one matrix product as long as their projections fit `budget_bytes` (speed without holding
        every layer's projection of a long utterance at once); `c` is made contiguous once. 16 MB keeps
        each product below glibc's largest automatic mmap threshold (32 MB): a plain Python process then
        reuses freed projections from its heap instead of mapping and faulting in fresh pages every step
        (side by side on 2 cores, the tiny teacher's float32 training step without tuned malloc: 21.5k
        samples/s at 64 MB, 28-33k at 8-16 MB)."""
        if c is None or self.layers[0].cond is None:
            yield from (None for _ in self.layers)
            return
        c = c.contiguous()
        per_layer = c.shape[0] * c.shape[-1] * c.element_size() * 2 * self.layers[0].gate_channels
        group = max(1, budget_bytes // max(per_layer, 1))
        for start in range(0, len(self.layers), group):
            layers = self.layers[start : start + group]
            weight = torch.cat([cast(nn.Conv1d, layer.cond).weight for layer in layers])
            yield from F.conv1d(c, weight).split([2 * layer.gate_channels for layer in layers], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.infer(x, c)
        if time_major(x) and not self.hooked():
            return self.forward_time_major(x, c)
        return self.forward_channels_first(x, c)

    def hooked(self) -> bool:
        """Whether a conv of the stack has forward (pre-)hooks, e.g. torch.nn.utils.weight_norm's, which
        recomputes the weight in a pre-hook: `forward_time_major` reads the weights without calling the
        convs, so such a stack keeps the convolutional form."""
        return any(m._forward_pre_hooks or m._forward_hooks for m in self.modules() if isinstance(m, nn.Conv1d))

    def forward_channels_first(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` with autograd as convolutions on (B, C, T)."""
        with self.float32(x, 0):
            h = self.input(x)
        skips = 0
        for i, (layer, proj) in enumerate(zip(self.layers, self.project_cond(c), strict=False)):
            h, proj = self.precise_inputs(i, h, proj)
            with self.float32(x, i):
                h, s = layer(h, proj)
            skips = skips + s
        return self.head(skips * self.skip_scale)

    def forward_time_major(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` with autograd as matrix products in time-major layout (B, T, C): each dilated conv is
        one product per tap, the later taps added into the rows they reach; the 1x1s and the conditioning
        projection are products too. The same function as the convolutional form (tested to float64
        rounding, gradients included); on a CPU under bf16 autocast it is the faster of the two (see
        `time_major`). Under autocast, the float32 layers project the conditioning in float32 (the
        convolutional form rounds that projection to bf16 first: a difference within bf16 rounding)."""
        length = x.shape[-1]
        with self.float32(x, 0):
            h = F.linear(x.transpose(1, 2), self.input.weight[:, :, 0], self.input.bias)
        cond = _TimeMajorCond(c, x) if c is not None and self.layers[0].cond is not None else None
        skips: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            precise = self.precise(x, i)
            h, _ = self.precise_inputs(i, h, None)
            with self.float32(x, i):
                weight = layer.conv.weight  # (2G, R, k): tap k - 1 reads the current step
                k = layer.kernel_size
                a = F.linear(h, weight[:, :, k - 1], layer.conv.bias)
                for tap in range(k - 1):
                    shift = (k - 1 - tap) * layer.dilation
                    if shift < length:
                        a[:, shift:] += F.linear(h[:, : length - shift], weight[:, :, tap])
                if cond is not None:
                    a = a + F.linear(cond.get(precise), cast(nn.Conv1d, layer.cond).weight[:, :, 0])
                filt, gate = a.split(layer.gate_channels, dim=-1)
                # bf16: tanh * sigmoid (3 kernels, forward and backward, against gated_tanh's 5)
                z = torch.tanh(filt) * torch.sigmoid(gate) if a.dtype == torch.bfloat16 else gated_tanh(filt, gate)
                res, s = F.linear(z, layer.out.weight[:, :, 0], layer.out.bias).split(
                    [h.shape[-1], layer.skip_channels], dim=-1)
                h = (h + res) * SQRT_HALF
            skips = s if skips is None else skips + s
        head1, head2 = cast(nn.Conv1d, self.head[1]), cast(nn.Conv1d, self.head[3])
        y = F.relu(cast(torch.Tensor, skips) * self.skip_scale)
        y = F.relu(F.linear(y, head1.weight[:, :, 0], head1.bias))
        return F.linear(y, head2.weight[:, :, 0], head2.bias).transpose(1, 2).contiguous()

    # Under bf16 autocast, the input 1x1 and the first `float32_layers` gated layers run in float32: the
    # previous sample enters the stack there, and rounding it to bf16's 8 bits costs a teacher more than
    # the later layers do (the single-voice teacher's validation log density in bf16 autocast: -0.030
    # nats/sample against float32; input and first two layers in float32: -0.011). Teachers set 2.
    float32_layers = 0

    def precise(self, x: torch.Tensor, i: int) -> bool:
        """Whether layer i (the input conv with i = 0) runs in float32 under the autocast now in force."""
        return i < self.float32_layers and torch.is_autocast_enabled(x.device.type)

    def float32(self, x: torch.Tensor, i: int):
        """The autocast state for layer i (the input conv with i = 0): off for the float32 layers."""
        return torch.autocast(x.device.type, enabled=False) if self.precise(x, i) else contextlib.nullcontext()

    def precise_inputs(self, i: int, h: torch.Tensor, proj: torch.Tensor | None):
        """(h, proj) for layer i, in float32 for the float32 layers (proj was projected under autocast)."""
        if not self.precise(h, i):
            return h, proj
        return h.float(), None if proj is None else proj.float()

    def infer(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without autograd (what `forward` runs under no_grad / inference_mode): on a CPU as
        matrix products in reused buffers (`distill.nn.engine`), elsewhere `infer_in_place`."""
        if engine.supports(self, x):
            return engine.stack_forward(self, x, c)
        return self.infer_in_place(x, c)

    def infer_in_place(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without autograd: the same numbers from in-place operations
        (`GatedResidualLayer.infer`); a few buffers per layer."""
        with self.float32(x, 0):
            h = self.input(x)
        skips = None
        for i, (layer, proj) in enumerate(zip(self.layers, self.project_cond(c), strict=False)):
            h, proj = self.precise_inputs(i, h, proj)
            with self.float32(x, i):
                h, s = layer.infer(h, proj)
            skips = s.clone() if skips is None else skips.add_(s)
        z = cast(torch.Tensor, skips).mul_(self.skip_scale).relu_()
        return self.head[3](self.head[1](z).relu_())
