"""A WaveNet stack's inference on the CPU as matrix products in time-major layout, in reused buffers.

`WaveNetStack.forward` runs convolutions on (B, C, T) tensors and allocates every intermediate; on a
CPU with glibc's default malloc settings each multi-megabyte buffer goes back to the kernel when it is
freed and is faulted back on the next call (on a 2-vCPU AMD EPYC a plain Python process
synthesised a paper-size student's second of audio ~2x slower than one with tuned malloc settings,
`distill.cli.allocator`). Here the stack runs on (rows, C) matrices, a row per time step:

    a = c V^T + b            (the conditioning projection and the conv bias, one product)
    a[s:] += h[:T-s] W_j^T   (tap j of the dilated conv, s = (k-1-j) d samples back: a row offset)
    z = tanh(a_f) sigmoid(a_g) in place;  o = z W_out^T + b_out;  h += o_res, h *= sqrt(1/2);  skip += o_skip

in buffers that are made once per thread (again only for a longer pass or other widths) and reused by
every layer, flow, chunk and call, so a call allocates nothing of the size of an activation. Same
numbers as `forward` to float rounding (the products' summation order differs; tested).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from distill.nn.layers import SQRT_HALF, gated_tanh_

if TYPE_CHECKING:
    from distill.nn.wavenet import WaveNetStack

_local = threading.local()  # buffers per thread: two threads never share one


def _buffers(length: int, widths: dict[str, int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """(length, width) buffers by name: the first `length` rows of this thread's set, which is kept
    between calls and made again only for new widths or dtype, or more rows (the chunks of one
    synthesis differ in length by their left context: they all reuse the set of the longest)."""
    key = (tuple(sorted(widths.items())), dtype)
    cached = getattr(_local, "buffers", None)
    if cached is None or cached[0] != key or cached[1] < length:
        rows = max(length, cached[1] if cached is not None and cached[0] == key else 0)
        cached = (key, rows, {name: torch.empty(rows, width, dtype=dtype) for name, width in widths.items()})
        _local.buffers = cached
    return {name: buf[:length] for name, buf in cached[2].items()}


def release_buffers() -> None:
    """Free this thread's buffers (the next call makes them again)."""
    _local.buffers = None


def supports(stack: WaveNetStack, x: torch.Tensor) -> bool:
    """Whether `stack_forward` covers this call: a CPU tensor, no float32 layers under autocast, not
    inside `torch.compile` (which fuses `forward`'s operations itself)."""
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()
            and not (stack.float32_layers and torch.is_autocast_enabled("cpu")))


@torch.no_grad()
def stack_forward(stack: WaveNetStack, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """`stack(x, c)` without autograd: x (B, in, T), c (B, C, T) or None -> (B, out, T), in the autocast
    dtype when autocast is on (as forward's convolutions would be), else in x's dtype.

    A batch is one matrix of B (P + T) rows: each item's T rows follow P rows of zeros, P the longest
    look-back of a tap, so that a tap's row offset never reaches the previous item (P = 0 at batch 1)."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    batch, length = x.shape[0], x.shape[-1]
    pad = 0 if batch == 1 else max((layer.kernel_size - 1) * layer.dilation for layer in stack.layers)
    rows = pad + length
    first = stack.layers[0]
    residual, skip = stack.input.out_channels, first.skip_channels
    head1, head2 = cast(nn.Conv1d, stack.head[1]), cast(nn.Conv1d, stack.head[3])
    widths = {"x": x.shape[1], "h": residual, "a": 2 * first.gate_channels, "o": residual + skip, "skips": skip,
              "hidden": head1.out_channels, "out": head2.out_channels}
    if c is not None:
        widths["c"] = c.shape[1]
    buf = _buffers(batch * rows, widths, dtype)
    items = {name: b.view(batch, rows, b.shape[-1]) for name, b in buf.items()}  # (B, P + T, width) views
    with torch.autocast("cpu", enabled=False):
        items["x"][:, pad:].copy_(x.transpose(1, 2))
        h, a, o, skips = buf["h"], buf["a"], buf["o"], buf["skips"]
        torch.addmm(_b(stack.input, dtype), buf["x"], _w(stack.input, dtype), out=h)
        h_items = items["h"][:, pad:]  # the rows the residual stream updates; the P rows stay zero
        items["h"][:, :pad].zero_()
        if c is not None:
            items["c"][:, pad:].copy_(c.transpose(1, 2))
        for i, layer in enumerate(stack.layers):
            conv, half = layer.conv, layer.gate_channels
            if layer.cond is not None and c is not None:
                torch.addmm(_b(conv, dtype), buf["c"], _w(layer.cond, dtype), out=a)
            else:
                a.copy_(_b(conv, dtype).expand_as(a))
            for tap in range(layer.kernel_size):
                back = (layer.kernel_size - 1 - tap) * layer.dilation
                if back < a.shape[0]:
                    a[back:].addmm_(h[: a.shape[0] - back], _w(conv, dtype, tap))
            filt, gate = a[:, :half], a[:, half:]
            z = gated_tanh_(filt, gate)
            torch.addmm(_b(layer.out, dtype), z, _w(layer.out, dtype), out=o)
            h_items.add_(items["o"][:, pad:, :residual]).mul_(SQRT_HALF)
            if i == 0:
                skips.copy_(o[:, residual:])
            else:
                skips.add_(o[:, residual:])
        skips.mul_(stack.skip_scale).relu_()
        hidden = torch.addmm(_b(head1, dtype), skips, _w(head1, dtype), out=buf["hidden"]).relu_()
        torch.addmm(_b(head2, dtype), hidden, _w(head2, dtype), out=buf["out"])
        return items["out"][:, pad:].transpose(1, 2).contiguous()


def _w(conv: nn.Conv1d, dtype: torch.dtype, tap: int = 0) -> torch.Tensor:
    """Tap `tap` of a conv's weight as an (in, out) matrix (a transposed view, no copy in float32)."""
    return conv.weight[:, :, tap].to(dtype).t()


def _b(conv: nn.Conv1d, dtype: torch.dtype) -> torch.Tensor:
    return cast(torch.Tensor, conv.bias).to(dtype)
