"""Baselines every report carries, scored like the models: Griffin-Lim from the same mels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio

from distill.config import FeatureConfig


def griffin_lim(mel: torch.Tensor, features: FeatureConfig, n_iter: int = 60) -> torch.Tensor:
    """Invert a log-mel (n_mels, F) to audio (F * hop,) with torchaudio's inverse mel + Griffin-Lim.

    The mel is our magnitude mel (Slaney filters); Griffin-Lim frames are centred on i * hop while
    our frame i is centred on i * hop + hop / 2, so the output is delayed by hop / 2 to line up.
    """
    f = features
    inverse = torchaudio.transforms.InverseMelScale(
        n_stft=f.n_fft // 2 + 1, n_mels=f.n_mels, sample_rate=f.sample_rate, f_min=f.f_min, f_max=f.f_max,
        norm="slaney", mel_scale="slaney",
    )
    gl = torchaudio.transforms.GriffinLim(n_fft=f.n_fft, n_iter=n_iter, win_length=f.win_length,
                                          hop_length=f.hop_length, power=1.0)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)  # Griffin-Lim starts from random phases: make the baseline repeatable
    try:
        spec = inverse(mel.float().exp())
        audio = gl(spec)
    finally:
        torch.set_rng_state(generator_state)
    length = mel.shape[-1] * f.hop_length
    audio = F.pad(audio, (f.hop_length // 2, 0))[:length]
    return F.pad(audio, (0, length - audio.shape[-1])).clamp(-1, 1)
