"""Degraded mels for `wavedistill eval --degrade-mels`: how each system falls off when the mel is not the
recording's own, as a stand-in for a TTS model's predictions (over-smoothed in time and across bands, and
not exact).

A degradation acts on the log-mel (`distill.audio.mel.LogMel`: natural log of the mel magnitude), in this
order: Gaussian smoothing across frames (standard deviation `time`, in frames), Gaussian smoothing across
mel bands (`freq`, in bands), each kernel cut at 3 standard deviations with the edge frames and bands
replicated; then Gaussian noise of standard deviation `noise` (nats) added to every value, drawn from a
seeded generator per clip (the same clips and seed give the same mels). Every system synthesises from the
degraded mel; the reference stays the recording, so every intrusive metric (PESQ, MCD, F0, log-mel L1)
still measures the distance to the truth.

A spec is "light", "medium", "strong" (the set strengths below, not calibrated to any TTS model) or
"time=T,freq=F,noise=N" with any of the three; "" or "none" is the recording's mel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from distill.errors import ConfigError

LEVELS = {"light": (1.0, 1.0, 0.1), "medium": (2.0, 2.0, 0.25), "strong": (3.0, 3.0, 0.5)}


@dataclass(frozen=True)
class MelDegradation:
    time: float = 0.0  # std of the smoothing across frames, frames
    freq: float = 0.0  # std of the smoothing across mel bands, bands
    noise: float = 0.0  # std of the Gaussian noise added to the log-mel, nats

    @classmethod
    def parse(cls, spec: str) -> MelDegradation:
        """A spec (module doc) -> the degradation, or one ConfigError line naming the fix."""
        text = spec.strip().lower()
        if text in ("", "none"):
            return cls()
        if text in LEVELS:
            return cls(*LEVELS[text])
        values = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip()
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if key not in ("time", "freq", "noise") or key in values or not math.isfinite(number) or number < 0:
                raise ConfigError(f"--degrade-mels {spec!r}: use {', '.join(LEVELS)}, none, or time=T,freq=F,noise=N "
                                  "(each a number >= 0, each at most once; e.g. time=2,noise=0.2)")
            values[key] = number
        return cls(**values)

    def __bool__(self) -> bool:
        return bool(self.time or self.freq or self.noise)

    def describe(self) -> str:
        """One line for the report."""
        if not self:
            return "none (the recordings' mels)"
        return (f"time smoothing std {self.time:g} frames, band smoothing std {self.freq:g} bands, "
                f"noise std {self.noise:g} nats (log-mel)")

    def record(self) -> dict:
        return asdict(self)

    def apply(self, mel: torch.Tensor, seed: int) -> torch.Tensor:
        """(n_mels, F) log-mel -> the degraded log-mel, same shape and dtype."""
        out = mel
        if self.time:
            out = _smooth(out, self.time)
        if self.freq:
            out = _smooth(out.T, self.freq).T
        if self.noise:
            generator = torch.Generator().manual_seed(seed)
            out = out + self.noise * torch.randn(out.shape, generator=generator, dtype=out.dtype)
        return out.contiguous()


def _smooth(x: torch.Tensor, std: float) -> torch.Tensor:
    """Gaussian smoothing of each row of x (rows, n) along its last axis, edges replicated."""
    radius = max(1, math.ceil(3 * std))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / std) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    padded = F.pad(x[:, None, :], (radius, radius), mode="replicate")
    return F.conv1d(padded, kernel.view(1, 1, -1))[:, 0]
