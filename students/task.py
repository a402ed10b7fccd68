"""Probability-density distillation: train an IAF student against a frozen teacher.

Per batch: z ~ p_Z; the student gives x and its per-step law (mu_tot, log_s_tot) in one parallel
pass; the frozen teacher runs once, teacher-forced on x (gradients flow through x into the student,
none reach the teacher's weights), giving p_T(x_t | x_<t) for every t; the KL between the two per-step
laws is the main loss. Closed form when teacher and student are Gaussian (ClariNet), Monte Carlo
otherwise (Parallel WaveNet). Loss weights are keyed by their TensorBoard tags (`loss/kl`, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch

from distill.audio.mel import LogMel
from distill.audio.plots import mel_figure
from distill.config import DataConfig, FeatureConfig, TrainConfig, to_dict
from distill.data.datasets import corpus_voices, speaker_batch
from distill.errors import ConfigError
from distill.nn.discriminators import DISCRIMINATORS, DilatedConvDiscriminator
from distill.nn.distributions import Gaussian
from distill.nn.losses import (
    discriminator_loss,
    gaussian_kl,
    generator_adversarial_losses,
    log_scale_regulariser,
    mel_loss,
    monte_carlo_kl,
    power_loss,
    stft_loss,
)
from distill.train.distributed import unwrap
from distill.train.logger import RunLogger
from distill.train.task import Task
from students.iaf import IAFStudent, StudentModelConfig, StudentOutput
from teachers.pretrained import demo_teacher_path, file_sha256, load_teacher
from teachers.wavenet import TeacherModelConfig

__all__ = ["DistillTask", "StudentConfig", "StudentModelConfig", "build_student"]

LOSS_TERMS = ("loss/kl", "loss/kl_reg", "loss/stft", "loss/mel", "loss/power", "loss/contrastive", "loss/adv",
              "loss/fm")


@dataclass
class DistillLossConfig:
    # weight of each term, keyed by its TensorBoard tag; 0 switches a term off
    weights: dict[str, float] = field(default_factory=lambda: {"loss/kl": 1.0, "loss/kl_reg": 4.0, "loss/stft": 0.0,
                                                                "loss/power": 0.0, "loss/contrastive": 0.0})
    kl_method: Literal["auto", "closed_form", "monte_carlo"] = "auto"  # auto: closed form for Gaussian pairs
    mc_samples: int = 16  # draws per step for the Monte-Carlo cross-entropy
    log_scale_min: float = -7.0  # log-scale clamp inside the KL (ClariNet)
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [[1024, 256]])  # [n_fft, hop] each
    teacher_temperature: float = 1.0  # distil the teacher's law at this sampling temperature (scales x T)

    def __post_init__(self) -> None:
        if not self.teacher_temperature > 0:
            raise ConfigError(f"loss.teacher_temperature must be > 0, got {self.teacher_temperature}")
        unknown = sorted(set(self.weights) - set(LOSS_TERMS))
        if unknown:
            raise ConfigError(f"loss.weights: unknown term(s) {unknown}; known: {', '.join(LOSS_TERMS)}")
        self.weights = {**{k: 0.0 for k in LOSS_TERMS}, **self.weights}


@dataclass
class AdversarialConfig:
    """A discriminator beside the distillation (Yamamoto et al. 2019; `distill.nn.discriminators`): its kind
    ("" = none), from which step it trains and the generator hears it (Parallel WaveGAN's recipe starts it
    halfway), and its own optimiser (AdamW, constant LR; clipping at train.grad_clip). The generator's terms
    are weighted in loss.weights: loss/adv (least squares) and loss/fm (feature matching)."""

    discriminator: str = ""  # "", "dilated_conv" (Parallel WaveGAN's) or "hifigan" (multi-period + multi-scale)
    layers: int = 10  # dilated_conv: convolutions
    channels: int = 64  # dilated_conv: their width
    start_step: int = 0  # the discriminator's first step (its terms join the generator's loss from here)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.discriminator and self.discriminator not in DISCRIMINATORS:
            raise ConfigError(f"adversarial.discriminator must be '' (none) or one of {', '.join(DISCRIMINATORS)}, "
                              f"got {self.discriminator!r}")
        if self.start_step < 0 or not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"adversarial.start_step and adversarial.weight_decay must be >= 0 and adversarial.lr "
                              f"> 0 (got {self.start_step}, {self.weight_decay}, {self.lr})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"adversarial.betas must be two numbers in [0, 1), got {self.betas}")
        if self.layers < 2 or self.channels < 1:
            raise ConfigError(f"adversarial.layers must be >= 2 and adversarial.channels >= 1 "
                              f"(got {self.layers}, {self.channels})")


@dataclass
class StudentValidConfig:
    max_utterances: int = 4  # validation KL and mel L1 over the first N validation utterances
    max_seconds: float = 2.0  # each cut to this length


@dataclass
class StudentConfig:
    teacher: str = ""  # teacher checkpoint or run folder; "" = the shipped (universal) teacher
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    valid: StudentValidConfig = field(default_factory=StudentValidConfig)


def build_student(cfg: StudentConfig, teacher: TeacherModelConfig | None = None) -> IAFStudent:
    """The student a config describes, for a teacher of these hyperparameters (the student takes its
    upsampler's mode and scales, its speakers and, with `model.linear_prediction`, its predictor);
    None: a teacher of `TeacherModelConfig`'s defaults (the stretch upsampler [16, 16], one speaker,
    no predictor)."""
    return IAFStudent(cfg.model, teacher, cfg.features, cfg.data.mel_context)


def teacher_settings(cfg: StudentConfig, user_keys: set[str]) -> dict[str, Any]:
    """What a student config takes from its teacher's checkpoint unless the user wrote it: the teacher's
    feature settings (every `features.*`), its `data.mel_context`, and `model.linear_prediction` turned off
    for a teacher without a usable predictor. -> {dotted key: the teacher's value} for the keys that differ.
    A key the user wrote stays as written: where it contradicts the teacher, loading the teacher names both
    values in one line."""
    teacher, _ = load_teacher(cfg.teacher or None)  # None: the shipped teacher
    taken: dict[str, Any] = {}
    own = to_dict(cfg.features)
    for key, value in to_dict(teacher.features).items():
        if own.get(key) != value and f"features.{key}" not in user_keys and "features" not in user_keys:
            taken[f"features.{key}"] = value
    if teacher.mel_context != cfg.data.mel_context and "data.mel_context" not in user_keys:
        taken["data.mel_context"] = teacher.mel_context
    predictor = teacher.config.linear_prediction
    if cfg.model.linear_prediction and "model.linear_prediction" not in user_keys and (
            predictor.order == 0 or predictor.interpolate):
        taken["model.linear_prediction"] = False
    return taken


class DistillTask(Task):
    name = "student"

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        self.teacher_path = Path(config.teacher) if config.teacher else demo_teacher_path()
        self.teacher, payload = load_teacher(self.teacher_path, features=config.features)
        self.teacher_info = {
            "path": str(self.teacher_path),
            "sha256": file_sha256(self.teacher_path),
            "step": payload["step"],
            "features": payload["features"],
            "model_args": self.teacher.record(),  # in today's form, also for a teacher saved before it
        }
        if not self.teacher.dist.distillable:
            raise ConfigError(
                f"teacher {self.teacher_path.name} has a '{self.teacher.dist.name}' output "
                "(a categorical over classes, no gradient with respect to the sample): "
                "density distillation needs a gaussian or mol teacher"
            )
        if self.teacher.mel_context != config.data.mel_context:
            raise ConfigError(
                f"data.mel_context {config.data.mel_context} differs from the teacher's {self.teacher.mel_context}; "
                f"set data.mel_context={self.teacher.mel_context}"
            )
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.voices = corpus_voices(config.data)  # the voices it is distilled on (checkpoint_extra)
        # a multi-speaker teacher: the student learns its speakers, with its map, from a corpus that names them
        self.speakers = payload.get("extra", {}).get("speakers") if self.teacher.speaker is not None else None
        if self.teacher.speaker is not None:
            if self.speakers is None:
                raise ConfigError(f"teacher {self.teacher_path.name} is multi-speaker but its checkpoint has no "
                                  "speaker map (trained before data.speakers existed); "
                                  "retrain it with data.speakers set")
            if not config.data.speakers:
                raise ConfigError(f"teacher {self.teacher_path.name} is multi-speaker "
                                  f"({', '.join(list(self.speakers)[:8])}); set data.speakers (folder or column) "
                                  "so the corpus names each utterance's speaker")
        elif config.data.speakers:
            raise ConfigError(f"data.speakers={config.data.speakers} but teacher {self.teacher_path.name} has no "
                              "speaker input; distil a single-speaker teacher with data.speakers unset")
        method = config.loss.kl_method
        gaussian_pair = isinstance(self.teacher.dist, Gaussian) and config.model.distribution == "gaussian"
        if method == "closed_form" and not gaussian_pair:
            raise ConfigError(
                "loss.kl_method=closed_form needs a Gaussian teacher and a Gaussian student; use monte_carlo"
            )
        self.closed_form = gaussian_pair if method == "auto" else method == "closed_form"
        if (not config.model.upsampler_from_teacher and not config.model.train_upsampler
                and self.teacher.config.upsample == "transposed"):  # stretch starts as a moving average
            raise ConfigError("model.upsampler_from_teacher=false with model.train_upsampler=false would freeze a "
                              "randomly initialised (transposed) mel upsampler; set one of them to true")
        if config.loss.weights["loss/kl_reg"] > 0 and not gaussian_pair:
            raise ConfigError("loss/kl_reg (ClariNet's log-scale regulariser) needs Gaussian teacher and student; "
                              "set its weight to 0")
        w = config.loss.weights
        uses_discriminator = w["loss/adv"] > 0 or w["loss/fm"] > 0
        own_terms = any(w[k] > 0 for k in ("loss/kl", "loss/kl_reg", "loss/stft", "loss/mel", "loss/power",
                                           "loss/contrastive"))
        if not own_terms and (not uses_discriminator or config.adversarial.start_step > 0):
            when = " before adversarial.start_step" if uses_discriminator else ""
            raise ConfigError(f"no loss term is active{when}: give loss/kl, loss/stft, loss/mel or loss/power a "
                              "weight > 0"
                              + (", or set adversarial.start_step=0" if uses_discriminator else ""))
        if uses_discriminator != bool(config.adversarial.discriminator):
            raise ConfigError("loss/adv and loss/fm need adversarial.discriminator (dilated_conv or hifigan), and a "
                              "discriminator needs loss/adv or loss/fm > 0: set both or neither")
        if config.adversarial.discriminator and config.train.amp == "fp16":
            raise ConfigError("a discriminator trains under train.amp=bf16 or off, not fp16 (one loss scaler per "
                              "optimiser is not implemented); use train.amp=bf16")
        # the teacher runs in a training step only for a term that reads it: with loss/kl, loss/kl_reg and
        # loss/contrastive at 0 (a teacher-free baseline) a step costs what the student's own terms cost
        self.uses_teacher = any(config.loss.weights[k] > 0 for k in ("loss/kl", "loss/kl_reg", "loss/contrastive"))
        self._fake: torch.Tensor | None = None  # the last step's student audio, for the discriminator's step
        self.logmel = LogMel(config.features)
        self.loss_logmel = self.logmel  # moved to the training device by `setup`

    # ------------------------------------------------------------------ model and data
    def build_model(self) -> IAFStudent:
        m, speakers = self.config.model, self.teacher.speaker
        student = build_student(self.config, self.teacher.config)
        if speakers is not None:  # start from the teacher's speaker embeddings (trained from there)
            assert student.speaker is not None  # built with the teacher's speaker count
            student.speaker.load_state_dict(speakers.state_dict())
        if m.upsampler_from_teacher:
            student.upsampler.load_state_dict(self.teacher.upsampler.state_dict())
        if not m.train_upsampler:
            for p in student.upsampler.parameters():
                p.requires_grad_(False)
        return student

    def build_discriminator(self) -> torch.nn.Module | None:
        """The discriminator `adversarial.discriminator` names (None: none), fresh; the trainer owns it."""
        adv = self.config.adversarial
        if not adv.discriminator:
            return None
        kind = DISCRIMINATORS[adv.discriminator]
        return kind(adv.layers, adv.channels) if kind is DilatedConvDiscriminator else kind()

    def discriminator_train_config(self) -> TrainConfig:
        """The discriminator's optimiser settings, as a TrainConfig for the trainer's builders: the run's,
        with adversarial's LR, betas and weight decay, a constant schedule and no warm-up."""
        adv = self.config.adversarial
        return dataclasses.replace(self.config.train, lr=adv.lr, betas=list(adv.betas), weight_decay=adv.weight_decay,
                                   schedule="constant", warmup_steps=0, anneal_fraction=0.0, lr_min=0.0)

    def discriminator_step(self, discriminator: torch.nn.Module, batch: Any,
                           step: int) -> dict[str, torch.Tensor] | None:
        """The discriminator's loss on the batch's audio and the student audio of the generator's step just
        taken (both detached), from adversarial.start_step on; None before."""
        if step < self.config.adversarial.start_step or self._fake is None:
            return None
        loss = discriminator_loss(discriminator, batch["audio"].float(), self._fake)
        return {"loss": loss, "loss/disc": loss.detach()}

    def shares_upsampler(self, student: IAFStudent) -> bool:
        """Whether the student's upsampler is the teacher's, frozen (the presets' setting; checked on the
        weights once, after any checkpoint was loaded): then its output is computed once per step for both."""
        if self._shares_upsampler is None:
            m = self.config.model
            mine, theirs = student.upsampler.state_dict(), self.teacher.upsampler.state_dict()
            self._shares_upsampler = (not m.train_upsampler and mine.keys() == theirs.keys()
                                      and all(torch.equal(v.cpu(), theirs[k].cpu()) for k, v in mine.items()))
        return self._shares_upsampler

    _shares_upsampler: bool | None = None

    def setup(self, device: torch.device) -> None:
        self.teacher.to(device).eval()
        # the mel term's own log-mel on the training device (its window and filterbank are buffers);
        # `self.logmel` stays on the CPU, where validation scores the audio
        self.loss_logmel = LogMel(self.config.features).to(device)

    def checkpoint_extra(self) -> dict:
        return {"teacher": self.teacher_info, **({"speakers": self.speakers} if self.speakers is not None else {}),
                **({"voices": self.voices} if self.voices else {})}

    def flops_per_sample(self, model) -> float:
        """Student forward + backward (6 FLOPs per MAC); the frozen teacher's forward on the student's
        sample and its backward to that input (4 per MAC; no weight gradients)."""
        flows = cast(IAFStudent, unwrap(model)).flows
        teacher = 4 * self.teacher.stack.macs_per_sample() if self.uses_teacher else 0
        return 6 * sum(f.macs_per_sample() for f in flows) + teacher

    # ------------------------------------------------------------------ the objective
    def teacher_law(self, y: torch.Tensor, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                    mel_cond: torch.Tensor | None = None, lpc: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen teacher teacher-forced on the student's sample y (B, T) -> params (B, P, T), float32,
        at `loss.teacher_temperature` (the law its sampler draws from at that temperature). mel_cond, lpc:
        the teacher's `upsampler(mel)` and `predictor(mel)` when already computed."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            params = self.teacher(y.float(), mel.float(), speaker, mel_cond, lpc)
            return self.teacher.dist.temper(params, self.config.loss.teacher_temperature)

    def kl_terms(self, student: IAFStudent, out: StudentOutput, teacher_params: torch.Tensor,
                 skip: int = 0) -> dict[str, torch.Tensor]:
        """Per-step KL (B, T - skip), the student's entropy and the cross-entropy, and the regulariser,
        from step `skip` on."""
        lsm = self.config.loss.log_scale_min
        if skip:
            teacher_params = teacher_params[..., skip:]
            out = StudentOutput(out.x[:, skip:], out.mu_tot[:, skip:], out.log_s_tot[:, skip:])
        if self.closed_form:
            mu_p, log_s_p = teacher_params[:, 0], teacher_params[:, 1]
            kl = gaussian_kl(out.mu_tot, out.log_s_tot, mu_p, log_s_p, lsm)
            reg = log_scale_regulariser(out.log_s_tot, log_s_p, lsm)
            # the entropy of the student's step with the KL's clamp, so that cross-entropy - entropy is the KL
            entropy = student.dist.entropy(torch.stack([out.mu_tot, out.log_s_tot.clamp(min=lsm)], dim=1))
            return {"kl": kl, "entropy": entropy, "cross_entropy": kl + entropy, "reg": reg}
        # The student's own scale, unclamped: a clamp here would cut the entropy gradient that keeps
        # s_tot from collapsing (the teacher's distribution applies its own floor).
        est = monte_carlo_kl(student.dist, out.params, self.teacher.dist, teacher_params, self.config.loss.mc_samples)
        return {"kl": est.kl, "entropy": est.entropy, "cross_entropy": est.cross_entropy,
                "reg": torch.zeros_like(est.kl)}

    def training_step(self, model, batch, step):
        student = unwrap(model)
        weights = self.config.loss.weights
        audio, mel, speaker = batch["audio"], batch["mel"], batch.get("speaker")
        z = student.sample_noise(tuple(audio.shape), audio.device, torch.float32)
        with torch.autocast(device_type=audio.device.type, enabled=False):
            # computed once for both models: the frozen upsampler they share, the predictor an LP student
            # takes from its teacher (float32, as the teacher has always seen them)
            mel_cond = self.teacher.upsampler(mel.float()) if self.shares_upsampler(student) else None
            lpc = student.predictor(mel) if student.lpc is not None else None
        # under bf16 autocast the convs run in bf16, the flow composition in float32
        out = model(z, mel, speaker, mel_cond=mel_cond, lpc=lpc)
        values = {}
        if self.uses_teacher:
            with torch.autocast(device_type=audio.device.type, enabled=False):
                # float32 from here: bf16 rounding of mu would add (d mu)^2 / 2 s^2 to a KL whose scales reach e^-7
                # teacher-forced on the student's sample
                teacher_params = self.teacher_law(out.x, mel, speaker, mel_cond, lpc)
                # a crop cut from inside an utterance: its first steps have a law the teacher never learned
                # (its linear predictor lacks their history; the teacher's own loss leaves them out too)
                terms = self.kl_terms(student, out, teacher_params, self.teacher.crop_warmup())
            values = {
                "loss/kl": terms["kl"].mean(),
                "loss/kl_reg": terms["reg"].mean(),
                "distill/entropy": terms["entropy"].mean(),
                "distill/cross_entropy": terms["cross_entropy"].mean(),
            }
        adversarial = self.discriminator is not None and step >= self.config.adversarial.start_step
        if weights["loss/stft"] > 0 or weights["loss/mel"] > 0 or weights["loss/power"] > 0 or adversarial:
            heard = student.to_audio(out.x.float())  # de-emphasised: compared with the real audio
        if adversarial:
            assert self.discriminator is not None  # adversarial says so
            # through a detached copy of the discriminator's weights: these terms train the student only
            terms_adv = generator_adversarial_losses(self.discriminator, heard,
                                                     audio.float() if weights["loss/fm"] > 0 else None)
            values.update({f"loss/{k}": v for k, v in terms_adv.items()})
            self._fake = heard.detach()  # what the discriminator's step judges
        if weights["loss/stft"] > 0:
            values["loss/stft"] = stft_loss(heard, audio.float(), tuple(map(tuple, self.config.loss.stft_resolutions)))
        if weights["loss/mel"] > 0:
            values["loss/mel"] = mel_loss(self.loss_logmel, heard, audio.float())
        if weights["loss/power"] > 0:
            values["loss/power"] = power_loss(heard, audio.float())
        if weights["loss/contrastive"] > 0 and audio.shape[0] > 1:
            # Parallel WaveNet: push away from the teacher given another item's mel (gamma = the weight)
            other = torch.roll(torch.arange(audio.shape[0], device=audio.device), 1)
            with torch.autocast(device_type=audio.device.type, enabled=False):
                mismatched = self.kl_terms(
                    student, out, self.teacher_law(out.x, mel[other], speaker[other] if speaker is not None else None),
                    self.teacher.crop_warmup(),
                )["kl"].mean()
            values["loss/contrastive"] = -mismatched
        total = sum(weights[k] * v for k, v in values.items() if k in weights)
        for k, log_s in enumerate(out.flow_log_scales):
            values[f"student/flow{k}_mean_log_s"] = log_s.detach().mean()
        values["student/mean_log_s_tot"] = out.log_s_tot.detach().mean()
        return {"loss": total, **values}

    # ------------------------------------------------------------------ validation
    def validate(self, model, valid_data, logger: RunLogger, step: int) -> dict[str, float]:
        cfg = self.config
        device = next(model.parameters()).device
        # The same noise (and Monte-Carlo draws) at every validation, without touching the training RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            return self._validate(model, valid_data, logger, step, device)

    def _validate(self, model, valid_data, logger: RunLogger, step: int, device: torch.device) -> dict[str, float]:
        cfg, feats = self.config, self.config.features
        kl_sum, mel_sum, count, first = 0.0, 0.0, 0, None
        for i in range(min(cfg.valid.max_utterances, len(valid_data))):
            item = valid_data[i]
            frames = item["mel"].shape[-1]
            if cfg.valid.max_seconds > 0:
                frames = min(frames, int(cfg.valid.max_seconds * feats.sample_rate) // feats.hop_length)
            mel = model.pad_mels(item["mel"][:, :frames]).to(device)
            length = frames * feats.hop_length
            z = model.sample_noise((1, length), device, torch.float32)
            speaker = speaker_batch(item, device)
            out = model(z, mel, speaker)
            with torch.autocast(device_type=device.type, enabled=False):
                terms = self.kl_terms(model, out, self.teacher_law(out.x, mel, speaker))
            kl_sum += float(terms["kl"].sum())
            count += length
            audio = model.to_audio(out.x[0].float()).clamp(-1, 1).cpu()
            reference = item["audio"][:length]
            mel_sum += float((self.logmel(audio) - self.logmel(reference)).abs().mean())
            if first is None:
                first = (audio, reference)
        n = min(cfg.valid.max_utterances, len(valid_data))
        results = {"loss/kl": kl_sum / max(count, 1), "mel_l1": mel_sum / max(n, 1)}
        if first is not None and logger.enabled:
            audio, reference = first
            logger.audio("valid/student", audio, feats.sample_rate, step)
            logger.audio("valid/reference", reference, feats.sample_rate, step)
            fig = mel_figure([self.logmel(reference), self.logmel(audio)], ["reference", f"student, step {step}"],
                             feats.hop_length, feats.sample_rate)
            logger.figure("valid/mel", fig, step)
        return results
