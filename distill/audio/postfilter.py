"""A mel post-filter: give a vocoder's audio the band energies of the mel it was asked to render.

Why: a parallel student trained for minutes renders the mel's envelope loosely (its log-mel L1 to the
recording is 0.36-0.40 where Griffin-Lim's, which copies every frame's magnitudes, is 0.13-0.15), and
wideband PESQ, which compares loudness per band and frame, punishes that more than it rewards the
student's phase (docs/universal.md). The mel the vocoder was given fixes those band energies, so they
can be imposed afterwards without learning anything:

    the audio's log-mel (the model's own features) -> per frame and mel band, the log gain to the target
    log-mel, clamped to +-`max_log_gain` -> per STFT bin, the mean of its bands' log gains weighted by
    the filterbank -> the audio's STFT (the mel's window, hop and frame centres) times those gains ->
    inverse STFT.

Each iteration is one such correction; the inverse STFT's overlap-add blurs the gains a little, so a
second iteration brings the mel closer still. The bands are 37 Hz apart at the bottom and several hundred
at the top, so the harmonics inside a band, the phase and the timing within a frame stay the vocoder's:
what this changes is the envelope, not the excitation. A multiplicative gain cannot create energy: where
the audio is silent and the mel is not, it stays silent.
"""

from __future__ import annotations

import torch

from distill.audio.mel import LogMel, mel_filterbank, num_frames
from distill.config import FeatureConfig
from distill.errors import ConfigError

# what an evaluation calls a system's audio after the filter: "<system> + post-filter"
POST_FILTERED = " + post-filter"


class MelPostFilter(torch.nn.Module):
    """forward(audio (..., T), logmel (..., n_mels, F)) -> audio (..., T) with its first F * hop samples'
    log-mel moved to `logmel` (module doc); samples past F * hop are kept as they are.

    iterations: corrections applied one after the other (0: the audio unchanged); max_log_gain: the
    largest change of a band's log magnitude per iteration (3 = about 26 dB)."""

    weights: torch.Tensor  # a buffer, typed (nn.Module's attribute lookup says Tensor | Module)
    window: torch.Tensor

    def __init__(self, features: FeatureConfig, iterations: int = 2, max_log_gain: float = 3.0):
        super().__init__()
        if iterations < 0:
            raise ConfigError(f"the mel post-filter's iterations must be >= 0, got {iterations}")
        if not max_log_gain > 0:
            raise ConfigError(f"the mel post-filter's max_log_gain must be > 0, got {max_log_gain}")
        self.features, self.iterations, self.max_log_gain = features, iterations, max_log_gain
        self.logmel = LogMel(features)
        f = features
        bank = mel_filterbank(f.n_fft, f.f_min, f.f_max, f.n_mels, f.sample_rate)  # (n_freqs, n_mels)
        # each bin's share of every band; a bin no band covers (beyond f_max) keeps a zero log gain
        self.register_buffer("weights", bank / bank.sum(1, keepdim=True).clamp(min=1e-12), persistent=False)
        self.register_buffer("window", torch.hann_window(f.win_length), persistent=False)

    def forward(self, audio: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        f = self.features
        if logmel.shape[-2] != f.n_mels or logmel.shape[:-2] != audio.shape[:-1]:
            raise ConfigError(f"the mel post-filter needs audio (..., T) and its mel (..., {f.n_mels}, F) with the "
                              f"same leading shape, got {tuple(audio.shape)} and {tuple(logmel.shape)}")
        frames = min(logmel.shape[-1], num_frames(audio.shape[-1], f.hop_length))
        if self.iterations == 0 or frames == 0:
            return audio
        length = frames * f.hop_length
        lead = audio.shape[:-1]
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = audio[..., :length].float().reshape(-1, length)
            target = logmel[..., :frames].float().reshape(-1, f.n_mels, frames)
            for _ in range(self.iterations):
                x = self._correct(x, target)
            out = x.reshape(*lead, length).to(audio.dtype)
        return torch.cat([out, audio[..., length:]], dim=-1)

    def _correct(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One correction of x (N, F * hop) towards the log-mel target (N, n_mels, F)."""
        f = self.features
        log_gain = (target - self.logmel(x)).clamp(-self.max_log_gain, self.max_log_gain)
        bin_gain = torch.exp(self.weights @ log_gain)  # (N, n_freqs, F)
        # frame i of the log-mel is centred on sample i hop + hop / 2, and an STFT frame with center=True on
        # sample j hop of its input: with hop / 2 zeros in front, STFT frame i + 1 is mel frame i's, and frame
        # 0 (centred hop / 2 before the audio) takes mel frame 0's gains, so every sample is filtered
        shift = f.hop_length // 2
        z = torch.nn.functional.pad(x, (shift, 0))
        # zero padding at the edges, as the log-mel's (reflect padding would also need more than n_fft / 2 samples)
        spec = torch.stft(z, f.n_fft, f.hop_length, f.win_length, self.window, center=True, pad_mode="constant",
                          return_complex=True)
        gain = torch.cat([bin_gain[..., :1], bin_gain], dim=-1)[..., : spec.shape[-1]]
        z = torch.istft(spec * gain, f.n_fft, f.hop_length, f.win_length, self.window, center=True,
                        length=z.shape[-1])
        return z[:, shift:].clamp(-1, 1)
