"""Inverse autoregressive flow students (Parallel WaveNet: logistic; ClariNet: Gaussian).

z ~ p_Z (one value per output sample). Flow k is a WaveNet stack that sees only strictly earlier
samples of its input (shift by one):

    x^(k)_t = x^(k-1)_t * s^(k)_t + mu^(k)_t,   (mu^(k), log s^(k)) = WaveNet_k(x^(k-1)_<t, c)

Composed, every step is still one logistic/Gaussian given z_<t:
    s_tot = prod_k s^(k),   mu_tot = sum_k mu^(k) prod_(j>k) s^(j)
(in code: mu_tot = mu_tot * s + mu; log_s_tot += log_s). One parallel pass gives the sample x and
p_S(x_t | z_<t) = D(mu_tot_t, s_tot_t) for every t, and log p_S(x) = sum_t [log p_Z(z_t) - log s_tot_t].

With `linear_prediction` (the LP-WaveNet teacher's predictor, computed from the mel), the flows
produce an excitation e in units of the expected residual and the student's output is the all-pole
synthesis y_t = sum_k c_k(t) y_(t-k) + g(t) e_t (`distill.nn.lpc.lp_synthesis`). y_<t is a function of
z_<t, so each step is still one law: location sum_k c_k y_(t-k) + g mu_tot, log scale log g + log s_tot
(the Jacobian dy/dz stays lower triangular, its diagonal g s_tot): exactly the teacher's
parameterisation, so the student, like the teacher, only learns the excitation, not the envelope.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import nn

from distill.audio.mel import deemphasis, silence_value
from distill.config import FeatureConfig, from_dict, to_dict
from distill.errors import ConfigError
from distill.nn.conditioning import MelConditioned, MelUpsampler
from distill.nn.distributions import Gaussian, Logistic
from distill.nn.layers import shift_right
from distill.nn.lpc import MelLPC, lp_predict, lp_synthesis, synthesis_block
from distill.nn.pitch import check_f0_median, check_low_f0_voicing
from distill.nn.records import legacy_record, read_record
from distill.nn.wavenet import WaveNetStack
from teachers.wavenet import TeacherModelConfig


@dataclass
class StudentOutput:
    """x: (B, T) the sample; mu_tot, log_s_tot: (B, T) the per-step law of x_t given z_<t."""

    x: torch.Tensor
    mu_tot: torch.Tensor
    log_s_tot: torch.Tensor
    flow_log_scales: tuple = ()  # (B, T) log s^(k) of each flow, for monitoring

    @property
    def params(self) -> torch.Tensor:
        """(B, 2, T) in the layout of `distill.nn.distributions` (mu, log scale)."""
        return torch.stack([self.mu_tot, self.log_s_tot], dim=1)


@dataclass
class StudentModelConfig:
    """A student's hyperparameters, in one place: the `model` section of a student config, the argument of
    `IAFStudent` and what its checkpoint records (`IAFStudent.record`). The mel upsampler's mode and
    scales, the speakers and the linear predictor are its teacher's (`TeacherModelConfig`)."""

    distribution: Literal["gaussian", "logistic"] = "gaussian"
    flows: list[int] = field(default_factory=lambda: [6, 6, 6, 6])
    cycle: int = 10
    kernel_size: int = 3
    residual_channels: int = 32
    gate_channels: int = 32
    skip_channels: int = 32
    initial_scale: float = 0.05
    # True: the teacher's linear predictor from the mel (LP-WaveNet teachers): the flows learn only the
    # excitation, in units of the expected residual, and an all-pole filter makes the signal
    linear_prediction: bool = False
    # True: a pitch-synchronous source computed from the mel (F0 and voicing, distill.nn.pitch) joins the
    # flows' conditioning, so they need not learn to place the pitch pulses from the noise's past
    pitch_source: bool = False
    # > 1 (odd, needs pitch_source): the source's F0 is the running median of the mel's frame-by-frame F0 over
    # this many frames (`distill.nn.pitch.MelPitch`, f0_median: fewer isolated jumps on low voices)
    pitch_f0_median: int = 1
    # > 0 (needs pitch_source): added to the mel's voicing score where its F0 is at or below 75 Hz, falling to
    # 0 at 120 Hz (`distill.nn.pitch.MelPitch`, low_f0_voicing: a deep voice's harmonics the mel barely resolves)
    pitch_low_f0_voicing: float = 0.0
    upsampler_from_teacher: bool = True  # start from the teacher's upsampler weights (training only)
    train_upsampler: bool = False  # False: keep that copy frozen (training only)

    def __post_init__(self) -> None:
        check_f0_median(self.pitch_f0_median, self.pitch_source)
        check_low_f0_voicing(self.pitch_low_f0_voicing, self.pitch_source)


class IAFStudent(MelConditioned, nn.Module):
    def __init__(self, config: StudentModelConfig | None = None, teacher: TeacherModelConfig | None = None,
                 features: FeatureConfig | None = None, mel_context: int = 2, pitch: dict | None = None):
        """config: the hyperparameters (defaults: `StudentModelConfig`'s); teacher: its teacher's (the
        upsampler's mode and scales, the speakers, the linear predictor); features: the log-mel settings
        (and the pre-emphasis of the teacher's domain, which the flows produce); mel_context: context
        frames on each side of a crop's mel; pitch: the pitch source's `MelPitch` arguments as a
        checkpoint recorded them (None: `distill.nn.pitch.pitch_arguments(features)`), used with
        config.pitch_source."""
        super().__init__()
        # own copies: a config changed after the model was built does not change what its checkpoint records
        config = StudentModelConfig() if config is None else copy.deepcopy(config)
        teacher = TeacherModelConfig() if teacher is None else copy.deepcopy(teacher)
        features = FeatureConfig() if features is None else copy.deepcopy(features)
        self.config, self.teacher_config, self.features = config, teacher, features
        n_mels, hop_length, preemphasis = features.n_mels, features.hop_length, features.preemphasis
        num_speakers, speaker_dim = teacher.num_speakers, teacher.speaker_dim
        if config.distribution not in ("gaussian", "logistic"):
            raise ConfigError("student distribution must be 'gaussian' (ClariNet) or 'logistic' (Parallel WaveNet), "
                              f"got {config.distribution!r}")
        if not config.flows or min(config.flows) < 1:
            raise ConfigError(f"student flows must list >= 1 layers per flow, got {config.flows}")
        if not 0 < config.initial_scale <= 1:
            raise ConfigError(f"student initial_scale must be in (0, 1], got {config.initial_scale}")
        linear_prediction = teacher.linear_prediction.predictor_arguments(features)
        if config.linear_prediction and linear_prediction is None:
            raise ConfigError("model.linear_prediction: true needs a teacher with linear prediction "
                              "(model.linear_prediction.order > 0 in its config); set it to false for this teacher")
        self.dist = (Gaussian(log_scale_min=-math.inf) if config.distribution == "gaussian"
                     else Logistic(log_scale_min=-math.inf))
        self.mel_context = mel_context
        self.hop_length = hop_length
        self.preemphasis = preemphasis  # the teacher's: the flows produce its model domain
        self.upsampler = MelUpsampler(n_mels, hop_length, teacher.upsample_scales, teacher.upsample, mel_context,
                                      silence_value(features))
        self.lpc = None
        if config.linear_prediction and linear_prediction:  # the teacher's MelLPC arguments
            if linear_prediction.get("interpolate"):
                raise ConfigError("a linear-prediction student needs coefficients held over each hop; the teacher "
                                  "interpolates them (model.linear_prediction.interpolate: true); distil with "
                                  "model.linear_prediction: false")
            self.lpc = MelLPC.build(linear_prediction, hop_length, n_mels, preemphasis)
            self.lp_block = synthesis_block(hop_length, self.lpc.order)
            if self.lp_block < self.lpc.order:
                raise ConfigError(f"a linear-prediction student needs a hop ({hop_length}) of at least the predictor's "
                                  f"order ({self.lpc.order}); distil with model.linear_prediction: false")
        # a pitch-synchronous source from the mel (distill.nn.pitch), appended to the conditioning
        source_channels = self.build_pitch(config.pitch_source, pitch, config.pitch_f0_median,
                                           config.pitch_low_f0_voicing)
        # a multi-speaker student: its teacher's speakers, embedded and appended to the conditioning
        self.speaker = nn.Embedding(num_speakers, speaker_dim) if num_speakers > 0 else None
        cond_channels = n_mels + (speaker_dim if num_speakers > 0 else 0) + source_channels
        # typed for mypy as the list of flows it holds (nn.ModuleList is not generic: its items are nn.Module)
        self.flows = cast("list[WaveNetStack]", nn.ModuleList(
            WaveNetStack(1, 2, layers, min(config.cycle, layers), config.kernel_size, config.residual_channels,
                         config.gate_channels, config.skip_channels, cond_channels)
            for layers in config.flows
        ))
        # Start near identity with a small total scale: each flow's last conv is zero, its log-scale
        # bias log(initial_scale) / K, so s_tot = initial_scale and mu_tot = 0 at initialisation.
        for flow in self.flows:
            last = cast(nn.Conv1d, flow.head[-1])
            bias = cast(torch.Tensor, last.bias)  # a conv with a bias (torch types it Tensor | None)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(bias)
            with torch.no_grad():
                bias[1] = math.log(config.initial_scale) / len(self.flows)

    def record(self) -> dict:
        """A checkpoint's `model_args`: the hyperparameters, the teacher's, the mel context and the pitch
        source's arguments (the checkpoint's own `features` holds the rest of what `from_record` needs)."""
        return {"model": to_dict(self.config), "teacher": to_dict(self.teacher_config),
                "mel_context": self.mel_context, "pitch": self.pitch_args}

    @classmethod
    def from_record(cls, payload: dict) -> IAFStudent:
        """The student a checkpoint describes (`record`, or the flat constructor arguments of checkpoints
        written before models took their config), before its weights are loaded."""
        args, features = read_record(payload, legacy_student_record)
        return cls(from_dict(StudentModelConfig, args["model"], "the checkpoint's model_args"),
                   from_dict(TeacherModelConfig, args["teacher"], "the checkpoint's model_args.teacher"),
                   features, args["mel_context"], args["pitch"])

    def sample_noise(self, shape: tuple[int, ...], device=None, dtype=None) -> torch.Tensor:
        """z ~ N(0, 1) (gaussian) or Logistic(0, 1) (logistic), shape (B, T)."""
        zeros = torch.zeros(shape, device=device, dtype=dtype or torch.get_default_dtype())
        return self.dist.sample(torch.stack([zeros, zeros], dim=1))

    def forward(self, z: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                mel_cond: torch.Tensor | None = None, lpc: torch.Tensor | None = None) -> StudentOutput:
        """z: (B, T) noise, mel: (B, n_mels, T / hop + 2c) [, speaker ids (B,)] -> StudentOutput, all (B, T).
        mel_cond, lpc: `upsampler(mel)` and `predictor(mel)` when the caller has them already (a frozen
        upsampler shared with the teacher, the teacher's predictor): not computed again."""
        out = self.flow(z, self.conditioning(mel, speaker, mel_cond))
        if self.lpc is None:
            return out
        return self.through_predictor(out, self.lpc.of_padded(mel, self.mel_context) if lpc is None else lpc)

    def predictor(self, mel: torch.Tensor) -> torch.Tensor | None:
        """mel (B, n_mels, F + 2c) -> (B, 1 + p, F * hop) float32: log gain and coefficients per sample
        (`distill.nn.lpc.MelLPC`, the teacher's), or None for a student without linear prediction."""
        return None if self.lpc is None else self.lpc.of_padded(mel, self.mel_context)

    def excite(self, e: torch.Tensor, lpc: torch.Tensor, carry: str = "sequential",
               levels: int | None = None) -> torch.Tensor:
        """Excitation e (B, T) in units of the expected residual -> the signal y (B, T) in the model
        domain: all-pole synthesis of g e with the mel's predictor lpc (B, 1 + p, T). carry, levels:
        how the filter's state crosses blocks (`distill.nn.lpc.lp_synthesis`; "doubling" in an export)."""
        gain = torch.exp(lpc[:, 0]).to(e.dtype)
        return lp_synthesis(gain * e, lpc[:, 1:], self.lp_block, carry, levels)

    def through_predictor(self, out: StudentOutput, lpc: torch.Tensor) -> StudentOutput:
        """The flows' excitation and its law -> the signal and its per-step law (see the module doc)."""
        with torch.autocast(out.x.device.type, enabled=False):  # the teacher's location is float32 too
            y = self.excite(out.x, lpc)
            log_gain = lpc[:, 0].to(y.dtype)
            mu = lp_predict(y, lpc[:, 1:]) + torch.exp(log_gain) * out.mu_tot.to(y.dtype)
            return StudentOutput(y, mu, out.log_s_tot.to(y.dtype) + log_gain, out.flow_log_scales)

    def flow(self, z: torch.Tensor, cond: torch.Tensor) -> StudentOutput:
        """The flows on upsampled conditioning cond: (B, C, T)."""
        x = z
        mu_tot = torch.zeros_like(z)
        log_s_tot = torch.zeros_like(z)
        scales = []
        cond = cond.contiguous()  # once, not once per layer
        for flow in self.flows:
            out = flow(shift_right(x)[:, None, :], cond)  # strictly earlier samples of this flow's input
            mu, log_s = out[:, 0].to(z.dtype), out[:, 1].to(z.dtype)  # compose in z's precision, not bf16
            s = torch.exp(log_s)
            x = x * s + mu
            mu_tot = mu_tot * s + mu
            log_s_tot = log_s_tot + log_s
            scales.append(log_s)
        return StudentOutput(x, mu_tot, log_s_tot, tuple(scales))

    def receptive_fields(self) -> list[int]:
        """Samples of its input each flow's output depends on (the flow sees them shifted by one)."""
        return [flow.receptive_field() for flow in self.flows]

    def sample_chunked(self, z: torch.Tensor, cond: torch.Tensor, chunk: int) -> torch.Tensor:
        """x of `flow(z, cond)` computed `chunk` samples at a time per flow, each chunk with its flow's
        receptive field of left context: the same numbers, with memory bounded by the chunk length
        instead of the utterance (tested: chunked == whole at every seam)."""
        x = z
        length = z.shape[-1]
        for flow, reach in zip(self.flows, self.receptive_fields(), strict=True):
            shifted = shift_right(x)[:, None, :]
            out = torch.empty(z.shape[0], 2, length, device=z.device, dtype=z.dtype)
            for start in range(0, length, chunk):
                end, left = min(start + chunk, length), max(0, start - reach)
                out[..., start:end] = flow(shifted[..., left:end], cond[..., left:end])[..., start - left:].to(z.dtype)
            x = x * torch.exp(out[:, 1]) + out[:, 0]
        return x

    def to_audio(self, y: torch.Tensor) -> torch.Tensor:
        """The flows' output (the teacher's model domain) -> audio: de-emphasis when `preemphasis` > 0."""
        return deemphasis(y, self.preemphasis)

    def log_prob(self, out: StudentOutput, z: torch.Tensor) -> torch.Tensor:
        """log p_S(x) per sample (B, T): log p_Z(z_t) - log s_tot_t (change of variables)."""
        zeros = torch.zeros_like(z)
        return self.dist.log_prob(torch.stack([zeros, zeros], dim=1), z) - out.log_s_tot


TEACHER_KEYS = ("upsample", "upsample_scales", "num_speakers", "speaker_dim")  # a student's copies of its teacher's


def legacy_student_record(payload: dict, features: FeatureConfig) -> dict:
    """`IAFStudent.record` for a student checkpoint written before models took their config: its flat
    constructor arguments split into its own section and its teacher's, its training-only flags from the
    run's config. The teacher's other hyperparameters come from the record of the teacher it names; a
    checkpoint that names none records the config's defaults for them (they build nothing in a student)."""
    flat = legacy_record(payload["model_args"], features)
    own = flat["model"]
    teacher = {key: own.pop(key) for key in TEACHER_KEYS if key in own}
    if "linear_prediction" in own:  # the teacher's predictor settings
        teacher["linear_prediction"] = own.pop("linear_prediction")
    pitch = own.pop("pitch_source", None)
    own.update(linear_prediction=flat["linear_prediction"] is not None, pitch_source=pitch is not None)
    if "flows" in own and not own["flows"]:
        own["flows"] = [10] * 6  # the old constructor's default for none
    config, extra = payload.get("config"), payload.get("extra")
    run_model = config.get("model") if isinstance(config, dict) else None
    if isinstance(run_model, dict):
        own.update({key: run_model[key] for key in ("upsampler_from_teacher", "train_upsampler") if key in run_model})
    named = extra.get("teacher") if isinstance(extra, dict) else None
    named = named.get("model_args") if isinstance(named, dict) else None
    if isinstance(named, dict):
        named = named if "model" in named else legacy_record(named, features, "its teacher's model arguments")
        teacher = {**named["model"], **teacher}
    return {"model": own, "teacher": teacher, "mel_context": flat["mel_context"], "pitch": pitch}


CHUNK_ROWS = 65536  # batch x samples per pass that keep a flow's activations near the CPU caches
GPU_CHUNK_ROWS = 1 << 21  # on a GPU: whole passes up to 2M batch x samples (~2 min of audio), a few GB


def auto_chunk(student: IAFStudent, batch: int, device_type: str = "cpu") -> int:
    """Samples per pass for `synthesize`: about CHUNK_ROWS / batch on a CPU (GPU_CHUNK_ROWS / batch on
    a GPU, which wants large passes and only needs its memory bounded), and at least 4 receptive
    fields of left context per chunk (so the overlap costs < 25%). On the 2-core CPU this made a
    paper-size student's 10 s utterance ~3x faster and 16 x 1 s ~3x faster; 1 s at batch 1 is one pass."""
    rows = CHUNK_ROWS if device_type == "cpu" else GPU_CHUNK_ROWS
    return max(rows // max(batch, 1), 4 * max(student.receptive_fields()))


def _flows_x(student: IAFStudent, z: torch.Tensor, cond: torch.Tensor, chunk: int) -> torch.Tensor:
    return student.sample_chunked(z, cond, chunk) if 0 < chunk < z.shape[-1] else student.flow(z, cond).x


def compiled_flows(student: IAFStudent, mode: str | None = None):
    """`_flows_x` for this student under `torch.compile` (inductor: the gate's elementwise ops fused
    into one kernel per layer), made once per student and mode and reused. mode None picks
    "reduce-overhead" on CUDA (the whole synthesis replayed as CUDA graphs: no per-kernel launch cost)
    and the default elsewhere. Compiling takes seconds on a CPU, longer on a GPU; each new input
    shape compiles again, so it pays for repeated synthesis of similar lengths."""
    if mode is None:
        mode = "reduce-overhead" if next(student.parameters()).is_cuda else "default"
    # kept on the student, so it goes when the student goes (the compiled function refers to it)
    per_mode = student.__dict__.setdefault("_compiled_synthesis", {})
    if mode not in per_mode:
        # Dynamo keeps one cache per code object, shared by every student: each student, input shape
        # and autocast dtype is an entry; the default limit of 8 would silently fall back to eager code
        # in the benchmark (2 students x 3 shapes x 2 dtypes on a GPU).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        per_mode[mode] = torch.compile(functools.partial(_flows_x, student), mode=mode)
    return per_mode[mode]


@torch.inference_mode()
def synthesize(
    student: IAFStudent,
    mel: torch.Tensor,
    temperature: float = 1.0,
    z: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    chunk: int | None = None,
    compile: bool = False,
    speaker: torch.Tensor | None = None,
) -> torch.Tensor:
    """Parallel synthesis, no teacher needed. mel: (B, n_mels, F + 2c) -> audio (B, F * hop) in [-1, 1]
    (de-emphasised when the student works on pre-emphasised audio; through the mel's all-pole filter
    when it uses linear prediction).

    z: the noise (B, F * hop) to use (default: fresh draws, scaled by `temperature`). autocast_dtype:
    run the convolutions under autocast in that dtype (torch.bfloat16 on CUDA, or on CPUs with
    AVX512-BF16); the flow composition stays in float32. chunk: synthesise that many samples at a
    time per flow (exact seams, tested); None (default) picks `auto_chunk`, 0 runs the whole length in
    one pass. compile: run the flows through `compiled_flows` (same numbers to float tolerance, tested).
    speaker: ids (B,) for a multi-speaker student.
    """
    dtype = mel.dtype if autocast_dtype is None else torch.float32  # of z and the composition
    with torch.autocast(mel.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        cond = student.conditioning(mel, speaker)
        if z is None:
            z = student.sample_noise((mel.shape[0], cond.shape[-1]), cond.device, dtype) * temperature
        z = z.to(dtype)
        if chunk is None:
            chunk = auto_chunk(student, z.shape[0], z.device.type)
        x = compiled_flows(student)(z, cond, chunk) if compile else _flows_x(student, z, cond, chunk)
    if student.lpc is not None:  # the flows gave the excitation; the filter runs in z's dtype, not bf16
        x = student.excite(x, student.lpc.of_padded(mel, student.mel_context))  # student.predictor(mel)
    # de-emphasis over the whole length (exact across chunk seams), in float32 outside autocast
    return student.to_audio(x).clamp(-1, 1)  # a new tensor: never a CUDA graph's output buffer
