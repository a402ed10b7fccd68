"""The autoregressive WaveNet teacher: p(y | c) = prod_t p(y_t | y_<t, c).

y: (B, T) the signal the teacher models, in its *model domain*: the audio x itself, or with
`preemphasis` a, y_t = x_t - a x_(t-1) (`to_model_domain` / `to_audio` convert; the map has a unit
Jacobian, so log p(x) = log p(y) and NLLs compare across settings). mel: (B, n_mels, T / hop +
2 * mel_context) log-mel frames of x (with the context frames of `distill.data.datasets.SegmentDataset`).
The stack sees the input shifted right by one sample, so the parameters at t depend on y_<t only
(tested by perturbation and by gradients). With `linear_prediction`, the network's law is in units
of the expected residual g(t) and is mapped to the signal's: location = sum_k c_k(t) y_(t-k) +
g(t) location_net, log scale = log g(t) + log scale_net, with c(t) and g(t) computed from the mel
(`distill.nn.lpc.MelLPC`); still causal, still differentiable in y.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn

from distill.audio.mel import deemphasis, preemphasis, silence_value
from distill.config import FeatureConfig, from_dict, to_dict
from distill.errors import ConfigError
from distill.nn.conditioning import MelConditioned, MelUpsampler
from distill.nn.distributions import build_distribution
from distill.nn.layers import shift_right
from distill.nn.lpc import MelLPC, lp_predict
from distill.nn.pitch import check_f0_median, check_low_f0_voicing
from distill.nn.records import legacy_record, read_record
from distill.nn.wavenet import WaveNetStack


@dataclass
class LinearPredictionConfig:
    """Linear prediction from the mel (`distill.nn.lpc.MelLPC`); order 0 = off."""

    order: int = 0  # predictor taps (LPCNet and LP-WaveNet: 16)
    lag_window_hz: float = 60.0  # Gaussian lag window: smooths the envelope by about this bandwidth
    white_noise: float = 1e-4  # white-noise correction of lag 0 (a -40 dB floor): conditioning
    interpolate: bool = False  # False: hold each frame's coefficients over its hop; True: interpolate per sample

    def __post_init__(self) -> None:
        if self.order < 0:
            raise ConfigError(f"model.linear_prediction.order must be >= 0 (0 = off), got {self.order}")

    def predictor_arguments(self, features: FeatureConfig) -> dict | None:
        """`MelLPC.build`'s arguments: these settings plus the features the predictor inverts; None when off."""
        if self.order == 0:
            return None
        return {"order": self.order, **features.analysis(), "lag_window_hz": self.lag_window_hz,
                "white_noise": self.white_noise, "interpolate": self.interpolate}


@dataclass
class TeacherModelConfig:
    """A teacher's hyperparameters, in one place: the `model` section of a teacher config, the argument
    of `WaveNetTeacher` and what its checkpoint records (`WaveNetTeacher.record`). The mel's settings
    (n_mels, hop_length, pre-emphasis, the silence floor) are the features' (`FeatureConfig`)."""

    distribution: Literal["gaussian", "mol", "mulaw"] = "gaussian"
    distribution_args: dict[str, Any] = field(default_factory=dict)
    layers: int = 20
    cycle: int = 10
    kernel_size: int = 2
    residual_channels: int = 64
    gate_channels: int = 64
    skip_channels: int = 64
    upsample: Literal["stretch", "transposed", "repeat"] = "stretch"
    upsample_scales: list[int] = field(default_factory=lambda: [16, 16])
    num_speakers: int = 0  # in a config: 0 = the corpus's speaker count; in a model: its embedding table's rows
    speaker_dim: int = 16
    linear_prediction: LinearPredictionConfig = field(default_factory=LinearPredictionConfig)
    # True: the mel's pitch-synchronous source (F0 and voicing read from the mel, `distill.nn.pitch.MelPitch`:
    # pulse train, sine, cosine, voicing) joins the conditioning, so that a small teacher need not infer
    # the excitation's period of a voice it never heard from the mel bands alone
    pitch_source: bool = False
    # > 1 (odd, needs pitch_source): the source's F0 (and the period taps' period) is the running median of the
    # mel's frame-by-frame F0 over this many frames (`distill.nn.pitch.MelPitch`, f0_median)
    pitch_f0_median: int = 1
    # > 0 (needs pitch_source): added to the mel's voicing score where its F0 is at or below 75 Hz, falling to
    # 0 at 120 Hz (`distill.nn.pitch.MelPitch`, low_f0_voicing: a deep voice's harmonics the mel barely resolves)
    pitch_low_f0_voicing: float = 0.0
    # > 0 (odd, needs pitch_source): the signal one pitch period back, y(t - T(t) + o) for the `period_taps`
    # offsets o around 0 (T(t) = sample_rate / F0(t) from the mel, linearly interpolated), joins the
    # network's input beside y(t - 1): a periodic excitation becomes a copy from one period back instead of a
    # pattern the dilated stack must rebuild from its receptive field (`period_input`)
    period_taps: int = 0

    def __post_init__(self) -> None:
        if self.period_taps < 0 or (self.period_taps and self.period_taps % 2 == 0):
            raise ConfigError(f"model.period_taps must be 0 (off) or odd (taps centred on one period back), "
                              f"got {self.period_taps}")
        if self.period_taps and not self.pitch_source:
            raise ConfigError("model.period_taps reads the period from the mel's pitch: set model.pitch_source: true")
        check_f0_median(self.pitch_f0_median, self.pitch_source)
        check_low_f0_voicing(self.pitch_low_f0_voicing, self.pitch_source)


class WaveNetTeacher(MelConditioned, nn.Module):
    def __init__(self, config: TeacherModelConfig | None = None, features: FeatureConfig | None = None,
                 mel_context: int = 2, pitch: dict | None = None):
        """config: the hyperparameters; features: the log-mel settings the teacher reads (and, with
        pre-emphasis, the domain it models); mel_context: context frames on each side of a crop's mel
        (`DataConfig.mel_context`); pitch: the pitch source's `MelPitch` arguments as a checkpoint
        recorded them (None: `distill.nn.pitch.pitch_arguments(features)`), used with config.pitch_source."""
        super().__init__()
        # own copies: a config changed after the model was built does not change what its checkpoint records
        config = TeacherModelConfig() if config is None else copy.deepcopy(config)
        features = FeatureConfig() if features is None else copy.deepcopy(features)
        self.config, self.features = config, features
        n_mels, hop_length, preemphasis = features.n_mels, features.hop_length, features.preemphasis
        linear_prediction = config.linear_prediction.predictor_arguments(features)
        num_speakers, speaker_dim = config.num_speakers, config.speaker_dim
        self.dist = build_distribution(config.distribution, **config.distribution_args)
        self.hop_length = hop_length
        self.mel_context = mel_context
        self.preemphasis = preemphasis
        self.lpc = None
        if linear_prediction:  # the MelLPC arguments (order, sample_rate, n_fft, f_min, f_max, ...)
            self.dist.location_slice()  # a head without a location (mu-law) is a one-line error here
            self.lpc = MelLPC.build(linear_prediction, hop_length, n_mels, preemphasis)
        self.upsampler = MelUpsampler(n_mels, hop_length, config.upsample_scales, config.upsample, mel_context,
                                      silence_value(features))
        self.speaker = nn.Embedding(num_speakers, speaker_dim) if num_speakers > 0 else None
        source_channels = self.build_pitch(config.pitch_source, pitch, config.pitch_f0_median,
                                           config.pitch_low_f0_voicing)
        self.period_taps = config.period_taps
        # the longest period the pitch tracker reports (its lowest candidate F0), in samples
        self.max_period = (math.ceil(features.sample_rate / 2 ** float(self.pitch.log2_cands[0]))
                           if self.pitch is not None else 0)
        self.stack = WaveNetStack(
            1 + self.period_taps, self.dist.num_params, config.layers, config.cycle, config.kernel_size,
            config.residual_channels, config.gate_channels, config.skip_channels,
            n_mels + (speaker_dim if num_speakers > 0 else 0) + source_channels,
        )
        self.stack.float32_layers = 2  # under bf16 autocast (see WaveNetStack.float32_layers)
        if self.lpc is not None:
            # start as the LP-only model (the network's law N(0, 1) in units of the expected residual)
            # instead of a random law several residuals wide
            last = cast(nn.Conv1d, self.stack.head[-1])
            bias = cast(torch.Tensor, last.bias)  # a conv with a bias (torch types it Tensor | None)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(bias)
            loc = self.dist.location_slice()
            if loc.stop - loc.start > 1:  # a mixture: identical components would get identical gradients forever
                with torch.no_grad():
                    bias[loc] = torch.linspace(-1.0, 1.0, loc.stop - loc.start)

    def record(self) -> dict:
        """A checkpoint's `model_args`: the hyperparameters, the mel context and, with a pitch source, its
        arguments (the checkpoint's own `features` holds the rest of what `from_record` needs)."""
        record = {"model": to_dict(self.config), "mel_context": self.mel_context}
        if self.pitch_args is not None:  # a teacher without a pitch source records what teachers always did
            record["pitch"] = self.pitch_args
        return record

    @staticmethod
    def record_config(payload: dict) -> TeacherModelConfig:
        """The hyperparameters a checkpoint records (`record`, or the flat arguments of older checkpoints)."""
        return _teacher_record(payload)[0]

    @classmethod
    def from_record(cls, payload: dict) -> WaveNetTeacher:
        """The teacher a checkpoint describes (`record`, or the flat constructor arguments of checkpoints
        written before models took their config), before its weights are loaded."""
        config, args, features = _teacher_record(payload)
        return cls(config, features, args["mel_context"], args.get("pitch"))

    def grown_from(self, state: dict) -> dict:
        """The state dict of a smaller teacher of the same depth -> this teacher's, computing what that
        one computes (`distill.nn.wavenet.WaveNetStack.grown_state`): new inputs are read with weight
        zero, new units keep their fresh initialisation. What it covers:

        - a teacher without a pitch source (the single-voice teacher, a run of the plain LP preset) or
          without period taps: each layer's conditioning 1x1 reads the source's channels (the last of the
          conditioning), the input 1x1 the taps (the last input channels), with weight zero;
        - a narrower teacher (fewer residual, gate or skip channels): the new channels and units.

        So this teacher starts as that one, draw for draw, and the new weights learn from there. Other
        states are returned as they are (a mismatch stays the loader's one-line error)."""
        prefix = "stack."
        stack = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        grown = self.stack.grown_state(stack)
        return {**{k: v for k, v in state.items() if not k.startswith(prefix)},
                **{prefix + k: v for k, v in grown.items()}}

    def receptive_field(self) -> int:
        """Past samples that the network's output at t depends on: y_{t-R} .. y_{t-1}. (With linear
        prediction the law also reaches p samples back: max(R, p) in all.) Period taps reach one longest
        period (`max_period`) and half the taps and one interpolation sample beyond the stack's field."""
        return self.stack.receptive_field() + (self.period_reach() if self.period_taps else 0)

    def period_reach(self) -> int:
        """How far before its own sample a period tap reads: the longest period, half the taps, one more
        for the interpolation."""
        return self.max_period + self.period_taps // 2 + 1

    def period(self, mel: torch.Tensor) -> torch.Tensor | None:
        """mel (B, n_mels, F + 2c) -> the pitch period of every sample in samples (B, F * hop) float64,
        sample_rate / F0 from the mel (`MelPitch.per_sample`; also in unvoiced frames, where the tracker
        reports its best candidate), kept within [period_taps // 2 + 2, max_period] so that every tap reads
        samples before t; None for a teacher without period taps."""
        if not self.period_taps:
            return None
        assert self.pitch is not None, "period taps need the pitch tracker (TeacherModelConfig checks it)"
        f0, _ = self.pitch.per_sample(mel, self.mel_context)
        return (self.features.sample_rate / f0).clamp(self.period_taps // 2 + 2, self.max_period)

    def stack_input(self, y: torch.Tensor, lag: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """The network's input (B, 1 + period_taps, T) for y (B, T): y(t - 1), then the period taps
        (`period_input`; lag: `period(mel)` for these samples). start: y's first sample's index in the
        utterance (a window of it), so that the taps interpolate at exactly the utterance's positions."""
        x = shift_right(y)[:, None, :]
        if not self.period_taps:
            return x
        if lag is None:
            raise ValueError("this teacher has period taps: pass lag=teacher.period(mel)")
        return torch.cat([x, period_input(y, lag, self.period_taps, start).to(x.dtype)], dim=1)

    def predictor(self, mel: torch.Tensor) -> torch.Tensor | None:
        """mel (B, n_mels, F + 2c) -> the linear predictor of every sample (B, 1 + p, F * hop) float32
        (row 0 the log gain, rows 1.. the coefficients; `distill.nn.lpc.MelLPC`), or None for a teacher
        without linear prediction."""
        return None if self.lpc is None else self.lpc.of_padded(mel, self.mel_context)

    def crop_warmup(self) -> int:
        """Leading samples of a training crop cut from inside an utterance whose law lacks the history
        every other step has: the linear predictor's p taps and pre-emphasis's x_(-1). Their residual is
        the signal itself, tens of expected residuals wide; the teacher's training loss leaves them out.
        Period taps lack their history for one period: the first `period_reach()` samples too."""
        lp = (self.lpc.order if self.lpc is not None else 0) + (1 if self.preemphasis else 0)
        return max(lp, self.period_reach() if self.period_taps else 0)

    def to_model_domain(self, x: torch.Tensor) -> torch.Tensor:
        """Audio (..., T) -> the signal the teacher models (pre-emphasised when `preemphasis` > 0)."""
        return preemphasis(x, self.preemphasis)

    def to_audio(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_model_domain` (de-emphasis)."""
        return deemphasis(y, self.preemphasis)

    def forward_cond(self, y: torch.Tensor, cond: torch.Tensor, lpc: torch.Tensor | None = None,
                     lag: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced parameters. y: (B, T), cond: (B, C, T), lpc: `predictor(mel)`, lag: `period(mel)`
        -> params (B, P, T)."""
        params = self.stack(self.stack_input(y, lag), cond)
        if self.lpc is None:
            return params
        if lpc is None:
            raise ValueError("this teacher uses linear prediction: pass lpc=teacher.predictor(mel)")
        if params.dtype in (torch.bfloat16, torch.float16):
            params = params.float()  # bf16 autocast output is too coarse for a location near sigma ~ 1e-3
        return self.dist.affine(params, lp_predict(y.to(params.dtype), lpc[:, 1:]), lpc[:, 0])

    def forward(self, y: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                mel_cond: torch.Tensor | None = None, lpc: torch.Tensor | None = None) -> torch.Tensor:
        """y: (B, T) in the model domain, mel: (B, n_mels, T / hop + 2c) -> params (B, P, T) of p(y_t | y_<t, c).
        mel_cond, lpc: `upsampler(mel)` and `predictor(mel)` when the caller has them already (distillation
        computes them once for teacher and student)."""
        return self.forward_cond(y, self.conditioning(mel, speaker, mel_cond),
                                 self.predictor(mel) if lpc is None else lpc, self.period(mel))

    def log_prob(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T) audio -> (B, T) log p(x_t | x_<t, c) per sample, nats (= log p(y_t | y_<t, c))."""
        y = self.to_model_domain(x)
        return self.dist.log_prob(self.forward(y, mel, speaker), y)

    def log_density(self, x: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """`log_prob` as a density, nats (a discretised head's bin probability over its bin width), so that
        teachers of every head, and students, compare in one unit."""
        y = self.to_model_domain(x)
        return self.dist.log_density(self.forward(y, mel, speaker), y)


def _teacher_record(payload: dict) -> tuple[TeacherModelConfig, dict, FeatureConfig]:
    """A teacher checkpoint's hyperparameters, its model record and its features, read once
    (`distill.nn.records.read_record`)."""
    args, features = read_record(payload, lambda flat, features: legacy_record(flat["model_args"], features))
    return from_dict(TeacherModelConfig, args["model"], "the checkpoint's model_args"), args, features


def period_offsets(taps: int) -> range:
    """The period taps' offsets around one period back: -(taps // 2) .. taps // 2."""
    return range(-(taps // 2), taps // 2 + 1)


def _interpolated(y: torch.Tensor, pos: torch.Tensor, start: int) -> torch.Tensor:
    """y (B, T) holding samples start .. start + T - 1 of an utterance, read at the float64 utterance
    positions pos (B, N), linearly between the two nearest samples; 0 before the utterance."""
    low = pos.floor()
    frac = (pos - low).to(y.dtype)
    index = low.long() - start
    a, b = (torch.where(i >= 0, y.gather(1, i.clamp(min=0)), y.new_zeros(())) for i in (index, index + 1))
    return a + frac * (b - a)


def period_input(y: torch.Tensor, lag: torch.Tensor, taps: int, start: int = 0) -> torch.Tensor:
    """y (B, T) model domain, lag (B, T) the period in samples (float64, >= taps // 2 + 2) -> (B, taps, T):
    channel k holds y(t - lag(t) + o_k) (`period_offsets`), linearly interpolated, 0 before the utterance;
    every tap reads samples before t, so the input stays causal. start: y's first sample's index in the
    utterance (see `WaveNetTeacher.stack_input`). Differentiable in y (distillation's gradient flows through)."""
    t = torch.arange(start, start + y.shape[-1], device=y.device, dtype=torch.float64)
    return torch.stack([_interpolated(y, t - lag + o, start) for o in period_offsets(taps)], dim=1)


def period_step(audio: torch.Tensor, lag: torch.Tensor, t: int, taps: int) -> torch.Tensor:
    """The period taps of step t from the samples before it, as `period_input` computes them in parallel.
    audio: (B, T) the utterance so far (model domain), lag: (B, T) `period(mel)` -> (B, taps)."""
    pos = torch.stack([t - lag[:, t] + o for o in period_offsets(taps)], dim=1)  # (B, taps) float64
    return _interpolated(audio, pos, 0)

