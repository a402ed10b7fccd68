"""Training the teacher: maximum likelihood (NLL per sample) on aligned (audio, mel) crops."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import torch
import torch.nn.functional as F

from distill.audio.mel import LogMel
from distill.audio.plots import mel_figure
from distill.config import DataConfig, FeatureConfig, TrainConfig
from distill.data.datasets import corpus_speakers, corpus_voices, speaker_batch, voice_order
from distill.errors import CheckpointError, ConfigError
from distill.train.distributed import unwrap
from distill.train.logger import RunLogger
from distill.train.task import Task
from teachers.sampling import fastest_method, generate
from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig, WaveNetTeacher

__all__ = ["LinearPredictionConfig", "TeacherConfig", "TeacherModelConfig", "TeacherTask", "build_teacher"]


@dataclass
class TeacherValidConfig:
    max_utterances: int = 4  # validation NLL over the first N validation utterances
    sample_seconds: float = 1.0  # length of the clip synthesised (incremental AR) at each validation; 0 = none
    temperature: float = 1.0  # the teacher's synthesis temperature: that clip's, and `wavedistill eval`'s default
    # > 0 (a teacher with a pitch source): voiced speech's temperature, `temperature` staying unvoiced speech's
    # (`teachers.sampling.step_temperatures`); 0: `temperature` everywhere
    voiced_temperature: float = 0.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(t) and t >= 0 for t in (self.temperature, self.voiced_temperature)):
            raise ConfigError(f"valid.temperature and valid.voiced_temperature must be finite and >= 0, got "
                              f"{self.temperature} and {self.voiced_temperature}")
        if self.voiced_temperature > 0 and self.temperature == 0:
            raise ConfigError("valid.voiced_temperature > 0 needs valid.temperature > 0 (unvoiced speech's); "
                              "or set valid.voiced_temperature: 0")

    def voiced(self) -> float | None:
        """The voiced temperature `generate` takes (None: none)."""
        return self.voiced_temperature if self.voiced_temperature > 0 else None


@dataclass
class TeacherConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    valid: TeacherValidConfig = field(default_factory=TeacherValidConfig)


def build_teacher(cfg: TeacherConfig, num_speakers: int | None = None) -> WaveNetTeacher:
    """The teacher a config describes; num_speakers: the corpus's speaker count
    (`distill.data.datasets.corpus_speakers`), overriding model.num_speakers."""
    model = cfg.model if num_speakers is None else replace(cfg.model, num_speakers=num_speakers)
    return WaveNetTeacher(model, cfg.features, cfg.data.mel_context)


class TeacherTask(Task):
    name = "teacher"

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        self.logmel = LogMel(config.features)
        self.speakers = corpus_speakers(config.data)
        self.voices = corpus_voices(config.data)  # the voices it trains on (checkpoint_extra, validate)
        declared = config.model.num_speakers
        if self.speakers is None and declared > 0:
            raise ConfigError(f"model.num_speakers {declared} needs speaker ids from the corpus: set data.speakers to "
                              "folder (one folder per speaker) or column (a speaker column in metadata.csv)")
        if self.speakers is not None and declared not in (0, len(self.speakers)):
            raise ConfigError(f"model.num_speakers {declared} differs from the {len(self.speakers)} speakers of the "
                              f"training split ({', '.join(list(self.speakers)[:8])}); "
                              "set it to 0 (taken from the corpus)")

        if config.valid.voiced_temperature > 0 and not config.model.pitch_source:
            raise ConfigError("valid.voiced_temperature follows the voicing of the teacher's pitch source: set "
                              "model.pitch_source: true, or valid.voiced_temperature: 0")

    def build_model(self) -> WaveNetTeacher:
        return build_teacher(self.config, len(self.speakers) if self.speakers is not None else None)

    def initial_weights(self, model, payload: dict) -> dict:
        """A teacher can start from a smaller one: without a pitch source or period taps, or narrower
        (`WaveNetTeacher.grown_from`), of the same depth, dilations and kernel; another of those is a
        one-line CheckpointError (the state dict alone cannot tell a dilation cycle)."""
        teacher = cast(WaveNetTeacher, model)
        if "model_args" in payload and "features" in payload:
            theirs = WaveNetTeacher.record_config(payload)
            shape = ("layers", "cycle", "kernel_size")
            if any(getattr(theirs, k) != getattr(teacher.config, k) for k in shape):
                def describe(c: TeacherModelConfig) -> str:
                    return f"{c.layers} layers, dilation cycle {c.cycle}, kernel {c.kernel_size}"
                raise CheckpointError(f"--init: the checkpoint's teacher has {describe(theirs)}, this config "
                                      f"{describe(teacher.config)}; a teacher grows in width only: set "
                                      "model.layers, model.cycle and model.kernel_size to the checkpoint's")
        return teacher.grown_from(payload["model"])

    def checkpoint_extra(self) -> dict:
        return {**({"speakers": self.speakers} if self.speakers is not None else {}),
                **({"voices": self.voices} if self.voices else {})}

    def training_step(self, model, batch, step):
        teacher = unwrap(model)
        y = teacher.to_model_domain(batch["audio"])  # the crop's first sample takes x_(-1) = 0
        params = model(y, batch["mel"], batch.get("speaker"))
        # the likelihood is computed in float32 even under bf16 autocast
        skip = teacher.crop_warmup()
        nll = -teacher.dist.log_prob(params.float(), y.float())[:, skip:].mean()
        return {"loss": nll, "loss/nll": nll, "train/bits_per_sample": nll / math.log(2)}

    def flops_per_sample(self, model) -> float:
        # forward 2 FLOPs per MAC, backward twice that
        return 6 * cast(WaveNetTeacher, unwrap(model)).stack.macs_per_sample()

    def validate(self, model, valid_data, logger: RunLogger, step: int) -> dict[str, float]:
        cfg, feats = self.config, self.config.features
        device = next(model.parameters()).device
        total, count = 0.0, 0
        groups: dict[str, list[float]] = {}  # group -> [nats, samples]
        # a multi-voice split is read one voice at a time, so that the first N cover every voice
        order = voice_order([item.utt.speaker for item in valid_data.store.items])
        for i in order[: min(cfg.valid.max_utterances, len(valid_data))]:
            item = valid_data[i]
            audio = item["audio"][None].to(device)
            mel = cast(WaveNetTeacher, unwrap(model)).pad_mels(item["mel"]).to(device)
            speaker = speaker_batch(item, device)
            # float32 even when training runs under bf16 autocast: the NLL logged is the one that
            # sampling and distillation (float32 teachers) see
            with torch.autocast(device_type=device.type, enabled=False):
                logp = model.log_prob(audio.float(), mel.float(), speaker)
            total += float(-logp.sum())
            count += audio.numel()
            if item["voice"] and self.voices:
                group = groups.setdefault(voice_group(item["voice"], self.voices), [0.0, 0])
                group[0] += float(-logp.sum())
                group[1] += audio.numel()
        nll = total / max(count, 1)
        results = {"loss/nll": nll, "bits_per_sample": nll / math.log(2)}
        # the NLL of the voices it trains on and of the ones it never heard, where the split has both kinds
        results.update({f"nll_{name}": nats / samples for name, (nats, samples) in groups.items()})
        frames = int(cfg.valid.sample_seconds * feats.sample_rate) // feats.hop_length
        if frames > 0 and logger.enabled:
            item = valid_data[0]
            frames = min(frames, item["mel"].shape[-1])
            mel = cast(WaveNetTeacher, unwrap(model)).pad_mels(item["mel"][:, :frames]).to(device)
            with torch.autocast(device_type=device.type, enabled=False):
                method = fastest_method(model, device)  # a monitoring sample: the fastest sampler
                audio = generate(model.float(), mel.float(), method, temperature=cfg.valid.temperature,
                                 speaker=speaker_batch(item, device), voiced_temperature=cfg.valid.voiced())[0].cpu()
            reference = item["audio"][: frames * feats.hop_length]
            logger.audio("valid/sample", audio, feats.sample_rate, step)
            logger.audio("valid/reference", reference, feats.sample_rate, step)
            fig = mel_figure([self.logmel(reference), self.logmel(audio)],
                             ["reference", f"teacher sample, step {step}"], feats.hop_length, feats.sample_rate)
            logger.figure("valid/mel", fig, step)
            results["sample_mel_l1"] = float(F.l1_loss(self.logmel(audio), self.logmel(reference)))
        return results


def voice_group(voice: str, trained: list[str]) -> str:
    """'training_voices' for a voice among `trained`, else 'held_out_voices' (a validation tag's suffix)."""
    return "training_voices" if voice in trained else "held_out_voices"
