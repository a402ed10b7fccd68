"""The base of the mel analyses that run in float64 (`distill.nn.lpc.MelLPC`, `distill.nn.pitch.MelPitch`).

Both are parameter-free modules whose buffers (a filterbank's pseudo-inverse, pitch templates) and
arithmetic are float64: Levinson-Durbin on a resonant frame, and a phase summed over minutes of
samples, lose what matters in float32. Two things keep them float64 wherever the model goes:

- `Float64Analysis._apply` keeps a float64 buffer float64 when its owner is cast (`model.float()`,
  `model.half()`): the cast model still analyses the mel as trained (a float32 round trip of the
  pseudo-inverse moves a resonant frame's reflection coefficients by ~1e-5), and moves to a device as usual.
- `exact(value, like)`: a Python number for that arithmetic, as a float64 tensor while an export traces
  it. PyTorch computes `x * 1.0001` in float64 either way, but the ONNX exporter turns a Python number
  into a float32 constant cast to the tensor's type (1.0001 -> 1.00010001659...), by which an exported
  graph would disagree with PyTorch (tested in tests/students/test_export.py). Outside an export it is
  the number itself: a tensor made from a number on a GPU is a blocking copy, and the training step
  never waits for the device.
"""

from __future__ import annotations

import torch
from torch import nn


def exact(value: float, like: torch.Tensor) -> torch.Tensor | float:
    """`value` as a 0-d tensor of `like`'s dtype and device (float64 in the analyses) while an export
    traces the code (`torch.compiler.is_exporting`), else `value` itself."""
    if torch.compiler.is_exporting():
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    return value


class Float64Analysis(nn.Module):
    """A module whose float64 buffers stay float64 under a cast of the model that owns it."""

    def _apply(self, fn, recurse=True):
        kept = {name: buf for name, buf in self._buffers.items() if buf is not None and buf.dtype == torch.float64}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after is not None and after.dtype != torch.float64:  # cast: the original values, moved
                self._buffers[name] = before.to(after.device)
        return self
