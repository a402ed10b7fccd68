"""The models' input contract: the mel upsampler, the mel's pitch source and the speaker embedding.

`MelConditioned` (a mixin of teachers and students) turns a mel without context frames into the
conditioning every layer reads: digital silence beyond its ends (`pad_mel`), upsampled to the sample
rate (`MelUpsampler`), with the pitch-synchronous source of `distill.nn.pitch` appended when the model
has one, and a speaker's embedding (`with_speaker`). No caller pads a mel.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from distill.audio.mel import pad_mel
from distill.config import FeatureConfig
from distill.errors import ConfigError
from distill.nn.pitch import SOURCE_CHANNELS, MelPitch, pitch_arguments


@torch.compiler.disable  # inductor (torch 2.11) fails to lower its reshapes ("NotImplementedError: View"); runs eager
def _stretch(x: torch.Tensor, conv: nn.Conv1d, s: int) -> torch.Tensor:
    """`conv(x.repeat_interleave(s))` for a depthwise conv of width 2s+1 and padding s, computed in
    polyphase form: output phase r of step q only sees steps q-1, q, q+1 of x, with weights that are
    partial sums of the kernel. Same numbers, ~(2s+1)/3 times fewer multiplications.

    x: (B, C, L) -> (B, C, L * s).
    """
    weight = conv.weight[:, 0]  # (C, 2s+1)
    sums = F.pad(weight.cumsum(dim=1), (1, 0))  # sums[:, k] = w[0] + ... + w[k-1]
    r = torch.arange(s, device=x.device)
    before = sums[:, s - r]  # taps reading step q-1: w[0 .. s-r-1]
    now = sums[:, 2 * s - r] - sums[:, s - r]  # step q: w[s-r .. 2s-r-1]
    after = sums[:, 2 * s + 1 : 2 * s + 2] - sums[:, 2 * s - r]  # step q+1: w[2s-r .. 2s]
    poly = torch.stack([before, now, after], dim=-1).reshape(-1, 1, 3)  # (C * s, 1, 3)
    channels, length = x.shape[1], x.shape[-1]
    bias = cast(torch.Tensor, conv.bias)  # the stretch convs have one (torch types it Tensor | None)
    y = F.conv1d(x, poly, bias.repeat_interleave(s), padding=1, groups=channels)  # (B, C*s, L)
    return y.reshape(x.shape[0], channels, s, length).transpose(2, 3).reshape(x.shape[0], channels, length * s)


class MelUpsampler(nn.Module):
    """Log-mel frames -> per-sample conditioning; owns the model's input contract (`pad`: the context
    frames and their silence value).

    forward(mel: (B, n_mels, F + 2*context)) -> (B, n_mels, F * hop). The `context` frames on each
    side only feed the smoothing convolutions; the output covers exactly the F central frames.

    mode "stretch" (repeat + conv): for each scale s, repeat every step s times, then smooth with a
    learned depthwise conv of width 2s+1 (the product of the scales must equal hop);
    "transposed": a ConvTranspose1d (kernel 2s, stride s) per scale; "repeat": repetition only.
    """

    def __init__(self, n_mels: int, hop_length: int, scales: list[int], mode: str = "stretch", context: int = 2,
                 silence: float = math.log(1e-5)):
        super().__init__()
        self.silence = silence  # the log-mel of digital silence: what `pad` puts beyond the edges
        if mode not in ("stretch", "transposed", "repeat"):
            raise ConfigError(f"upsample mode '{mode}' is not one of stretch, transposed, repeat")
        if mode != "repeat" and math.prod(scales) != hop_length:
            raise ConfigError(f"upsample_scales {scales} multiply to {math.prod(scales)}, not hop_length {hop_length}")
        self.hop = hop_length
        self.scales = list(scales) if mode != "repeat" else [hop_length]
        self.mode = mode
        self.context = context
        self.convs = nn.ModuleList()
        conv: nn.Conv1d | nn.ConvTranspose1d
        for s in self.scales if mode != "repeat" else []:
            if mode == "stretch":
                conv = nn.Conv1d(n_mels, n_mels, 2 * s + 1, padding=s, groups=n_mels)
                nn.init.constant_(conv.weight, 1.0 / (2 * s + 1))  # starts as a moving average
                nn.init.zeros_(cast(torch.Tensor, conv.bias))
            else:
                # kernel 2s - (s mod 2) with padding s // 2: exactly L*s outputs, centred for odd s too
                conv = nn.ConvTranspose1d(n_mels, n_mels, 2 * s - s % 2, stride=s, padding=s // 2, groups=n_mels)
            self.convs.append(conv)
        needed = self.context_frames()
        if context < needed:
            raise ConfigError(
                f"the '{mode}' upsampler with scales {self.scales} reaches {needed} mel frames beyond a crop; "
                f"set data.mel_context >= {needed} (got {context})"
            )

    def context_frames(self) -> int:
        """Mel frames beyond each edge that the output can depend on (what `context` must cover)."""
        if self.mode == "repeat":
            return 0
        reach = 0  # in output samples
        for i, s in enumerate(self.scales):
            # stretch: a conv reaching s steps each way at this stage's output rate; transposed: one
            # input step, also s output steps. Each step is worth prod(later scales) final samples.
            reach += s * math.prod(self.scales[i + 1 :])
        return math.ceil(reach / self.hop)

    def pad(self, mels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Utterance mels -> this upsampler's input: `context` frames of silence on each side. mels: one
        (n_mels, F) or (B, n_mels, F) tensor, or a list of (n_mels, F_i) (each padded with silence to the
        longest first) -> (B, n_mels, F + 2 context); a lone (n_mels, F) gives B = 1."""
        if isinstance(mels, (list, tuple)):
            longest = max(m.shape[-1] for m in mels)
            mels = torch.stack([F.pad(m, (0, longest - m.shape[-1]), value=self.silence) for m in mels])
        elif mels.dim() == 2:
            mels = mels[None]
        return pad_mel(mels, self.context, self.silence)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        if self.mode == "repeat":
            x = x.repeat_interleave(self.hop, dim=-1)
        for s, conv in zip(self.scales, self.convs, strict=False):
            x = _stretch(x, cast(nn.Conv1d, conv), s) if self.mode == "stretch" else conv(x)
            x = F.leaky_relu(x, 0.4)
        cut = self.context * self.hop
        return x[..., cut : x.shape[-1] - cut] if cut else x


class MelConditioned:
    """The conditioning every vocoder model here shares: `upsampler` (a `MelUpsampler`), `speaker` (an
    embedding table or None) and `pitch` (the mel's pitch-synchronous source, `distill.nn.pitch.MelPitch`,
    or None). Callers hand utterance mels to `pad_mels` and the result to the model."""

    upsampler: MelUpsampler
    speaker: nn.Embedding | None
    pitch: MelPitch | None
    pitch_args: dict | None  # the source's `MelPitch` arguments, as the model's checkpoint records them
    mel_context: int
    features: FeatureConfig  # the log-mel settings the model reads

    def build_pitch(self, enabled: bool, pitch: dict | None, f0_median: int = 1, low_f0_voicing: float = 0.0) -> int:
        """Set `pitch` and `pitch_args` for a model with (`enabled`) or without a pitch source; pitch: the
        `MelPitch` arguments a checkpoint recorded (None: `distill.nn.pitch.pitch_arguments(self.features)`
        with the config's `f0_median` and `low_f0_voicing`, which a recorded set must agree with). Returns
        the conditioning channels the source adds (0 without one)."""
        chosen = {"f0_median": f0_median, "low_f0_voicing": low_f0_voicing}
        if enabled and pitch is not None:
            defaults = pitch_arguments(self.features)  # what a record written before an argument existed meant
            for key, value in chosen.items():
                if pitch.get(key, defaults[key]) != value:
                    raise ConfigError(f"the recorded pitch source's {key} {pitch.get(key, defaults[key])} disagrees "
                                      f"with model.pitch_{key} {value}; use a checkpoint written by wavedistill")
        if not enabled:
            self.pitch_args = None
        else:
            self.pitch_args = dict(pitch) if pitch is not None else {**pitch_arguments(self.features), **chosen}
        differ = self.features.analysis_differences("pitch", self.pitch_args or {})
        if differ:
            raise ConfigError(f"the pitch source's arguments disagree with the features ({'; '.join(differ)})")
        self.pitch = (MelPitch.build(self.pitch_args, self.features.hop_length, self.features.n_mels)
                      if self.pitch_args is not None else None)
        # a median wider than 3 reaches further than the source always did (`MelPitch.context_frames`): it must
        # stay inside the crop's context, or crops and whole utterances would see different F0
        if self.pitch is not None and self.pitch.f0_median > 3 and self.mel_context < self.pitch.context_frames():
            needed = self.pitch.context_frames()
            raise ConfigError(f"model.pitch_f0_median {self.pitch.f0_median} reaches {needed} mel frames beyond a "
                              f"crop, data.mel_context is {self.mel_context}; set data.mel_context >= {needed} (a "
                              "student takes its teacher's) or model.pitch_f0_median <= 3")
        return SOURCE_CHANNELS if self.pitch is not None else 0

    def pad_mels(self, mels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Utterance mels (no context; see `MelUpsampler.pad`) -> the model's mel input."""
        return self.upsampler.pad(mels)

    def conditioning(self, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                     mel_cond: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, n_mels, F + 2c) [+ speaker ids (B,)] -> (B, cond_channels, F * hop): the upsampled mel,
        the speaker's embedding (multi-speaker models) and the mel's pitch-synchronous source (models with
        a pitch source: 4 channels, `distill.nn.pitch.MelPitch.source`), in that order. mel_cond:
        `upsampler(mel)` when the caller has it already (a frozen upsampler shared by teacher and
        student): not computed again."""
        cond = with_speaker(self.upsampler(mel) if mel_cond is None else mel_cond, self.speaker, speaker)
        if self.pitch is None:
            return cond
        return torch.cat([cond, self.pitch.source(mel, self.mel_context).to(cond.dtype)], dim=1)


def with_speaker(cond: torch.Tensor, table: nn.Embedding | None, speaker: torch.Tensor | None) -> torch.Tensor:
    """Per-sample conditioning (B, C, T) plus a multi-speaker model's speaker embedding, broadcast over
    time -> (B, C + speaker_dim, T); unchanged for a model without speakers (`table` None). Teachers and
    students condition the same way."""
    if table is None:
        if speaker is not None:
            raise ConfigError("this model has no speaker input; pass no speaker")
        return cond
    if speaker is None:
        raise ConfigError(f"this model is multi-speaker ({table.num_embeddings} speakers): pass speaker ids (B,)")
    emb = table(speaker.to(cond.device))[:, :, None].expand(-1, -1, cond.shape[-1])
    return torch.cat([cond, emb.to(cond.dtype)], dim=1)
