"""Baselines scored like the models: Griffin-Lim from the same mels (every report carries it), and on
request WORLD analysis-synthesis of the recording itself (`--systems ...,world`)."""

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


def world_resynthesis(audio: torch.Tensor, sample_rate: int, frame_period_ms: float = 5.0) -> torch.Tensor:
    """The recording (T,) analysed and resynthesised by the WORLD vocoder (`pyworld`, the eval extra):
    F0 by DIO refined by StoneMask (in the F0 metric's search range), the spectral envelope by
    CheapTrick (its window for the same lowest F0), the aperiodicity by D4C, then WORLD's synthesis -> audio (T,).

    Not from the mel: an oracle, a source-filter vocoder given the recording's own parameters (the
    classical baseline of WaveNet vocoder papers, here with analysis rather than predicted features).
    It says what a noise-and-pulse excitation scores on a voice when its parameters are right; a
    neural vocoder below it loses to its parameters, one near it to the excitation model."""
    import numpy as np
    import pyworld

    from eval.metrics import F0_CEIL, F0_FLOOR

    x = audio.detach().double().cpu().numpy()
    f0, times = pyworld.dio(x, sample_rate, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=frame_period_ms)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate, f0_floor=F0_FLOOR)
    aperiodicity = pyworld.d4c(x, f0, times, sample_rate)
    y = pyworld.synthesize(f0, envelope, aperiodicity, sample_rate, frame_period_ms)[: x.size]
    y = np.pad(y, (0, x.size - y.size))
    return torch.from_numpy(np.clip(y, -1.0, 1.0)).to(audio.dtype)
