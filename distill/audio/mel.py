"""Log-mel features (torchaudio), pre-emphasis and the mel's padding.

Frame/sample alignment — the rule teacher conditioning relies on:

    A waveform of T samples is first trimmed to T' = (T // hop) * hop samples, then zero-padded by
    p = (n_fft - hop) / 2 samples on each side, and framed without centring. That gives exactly
    T // hop frames, and frame i is the window [i*hop - p, i*hop - p + n_fft): it is centred on the
    hop block [i*hop, (i+1)*hop), the block of samples it conditions. So `mel[:, i]` describes
    `audio[i*hop:(i+1)*hop]`, and the mel of a hop-aligned crop `audio[a*hop - p : b*hop + p]`
    (unpadded) equals `mel[:, a:b]` of the whole utterance.
"""

from __future__ import annotations

import math

import torch
import torchaudio

from distill.config import FeatureConfig


def num_frames(num_samples: int, hop_length: int) -> int:
    """Mel frames of a waveform of `num_samples` samples (see the alignment rule above)."""
    return num_samples // hop_length


def mel_filterbank(n_fft: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """The mel filterbank of every log-mel here: Slaney-normalised filters on the Slaney mel scale (as
    librosa and most vocoder code bases). -> (n_fft // 2 + 1, n_mels) float32."""
    return torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1, f_min=f_min, f_max=f_max, n_mels=n_mels, sample_rate=sample_rate,
        norm="slaney", mel_scale="slaney",
    )


class LogMel(torch.nn.Module):
    """Natural-log mel magnitude spectrogram with the alignment rule of this module.

    forward(x: (..., T) float) -> (..., n_mels, T // hop) float32.
    Magnitude (not power) STFT, Slaney-normalised mel filters on the Slaney mel scale (as librosa and
    most vocoder code bases), log(max(mel, log_floor)).
    """

    fbanks: torch.Tensor  # a buffer, typed (nn.Module's attribute lookup says Tensor | Module)

    def __init__(self, features: FeatureConfig):
        super().__init__()
        self.features = features
        self.pad = (features.n_fft - features.hop_length) // 2
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=features.n_fft,
            win_length=features.win_length,
            hop_length=features.hop_length,
            power=1.0,
            center=False,
        )
        fbanks = mel_filterbank(features.n_fft, features.f_min, features.f_max, features.n_mels, features.sample_rate)
        self.register_buffer("fbanks", fbanks, persistent=False)  # (n_freqs, n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hop = self.features.hop_length
        frames = num_frames(x.shape[-1], hop)
        lead = x.shape[:-1]
        if frames == 0:
            return x.new_zeros(*lead, self.features.n_mels, 0, dtype=torch.float32)
        x = x[..., : frames * hop].float().reshape(-1, frames * hop)
        x = torch.nn.functional.pad(x, (self.pad, self.pad))
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = self.spectrogram(x)  # (N, n_freqs, frames)
            mel = torch.matmul(spec.transpose(1, 2), self.fbanks).transpose(1, 2)
            logmel = torch.log(torch.clamp(mel, min=self.features.log_floor))
        return logmel.reshape(*lead, self.features.n_mels, frames)

    @property
    def silence_value(self) -> float:
        """The log-mel value of digital silence, used to pad mels at utterance edges."""
        return silence_value(self.features)


def silence_value(features: FeatureConfig) -> float:
    """The log-mel value of digital silence under `features` (every padding of a mel uses it)."""
    return math.log(features.log_floor)


def preemphasis(x: torch.Tensor, a: float) -> torch.Tensor:
    """y_t = x_t - a x_(t-1) with x_(-1) = 0. x: (..., T) -> (..., T). A unit lower-triangular map
    (log |det| = 0), so log p(x) = log p(y); differentiable."""
    if a == 0:
        return x
    return x - a * torch.nn.functional.pad(x, (1, 0))[..., :-1]


def deemphasis(y: torch.Tensor, a: float) -> torch.Tensor:
    """The inverse of `preemphasis`: x_t = y_t + a x_(t-1), x_(-1) = 0. y: (..., T) -> (..., T);
    differentiable (torchaudio's IIR filter, never clamped)."""
    if a == 0:
        return y
    shape, dtype = y.shape, y.dtype
    flat = y.reshape(-1, shape[-1]).to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    one = torch.ones((), dtype=flat.dtype, device=flat.device)
    b = torch.stack([one, torch.zeros_like(one)])
    den = torch.stack([one, -a * one])
    # outside autocast: lfilter's FIR step is a conv1d that autocast would hand its IIR loop in bf16,
    # which that loop (float32/float64 only) refuses
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torchaudio.functional.lfilter(flat, den, b, clamp=False).reshape(shape).to(dtype)


def pad_mel(mel: torch.Tensor, context: int, value: float) -> torch.Tensor:
    """Add `context` frames of `value` (silence) on both sides. mel: (..., n_mels, F) -> (..., n_mels, F + 2c)."""
    if context == 0:
        return mel
    return torch.nn.functional.pad(mel, (context, context), value=value)
