"""The vocoder as a Python object: load a student or a teacher, hand it log-mels, get audio.

    from students.vocoder import Vocoder

    voc = Vocoder.load("runs/distill_clarinet_tiny")       # a student or teacher checkpoint or run folder
    mel = voc.mel(wav)                                       # (n_mels, frames) from (T,) audio at voc.sample_rate
    audio = voc(mel, seed=0)                                  # (frames * hop,) float32 in [-1, 1]
    audios = voc([mel_a, mel_b], seed=0)                      # unequal lengths: a list, each its own length

The object owns the model's input contract: mels come without context frames, in the model's
convention (`distill.audio.mel.LogMel`: natural log of the Slaney mel magnitude, frame i describing samples
[i*hop, (i+1)*hop)); the `mel_context` frames of digital silence the conditioning network reads beyond
each edge are added here, so no caller pads. Every mel is checked (n_mels, finite, not empty) with a
one-line `MelError` naming what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import torch

from distill.audio.mel import LogMel
from distill.audio.melfiles import check_values
from distill.audio.postfilter import MelPostFilter
from distill.config import FeatureConfig, from_dict
from distill.errors import CheckpointError, ConfigError, MelError
from distill.train.checkpoint import load_checkpoint
from students.iaf import IAFStudent, synthesize
from students.pretrained import load_student
from teachers.pretrained import load_teacher, recorded_temperatures
from teachers.sampling import check_voiced_temperature, fastest_method, generate, resolve_temperatures
from teachers.wavenet import WaveNetTeacher

DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


class Vocoder:
    """A loaded student (parallel synthesis) or teacher (autoregressive sampling) behind one call.

    kind: "student" or "teacher"; features: the `FeatureConfig` the model was trained on;
    sample_rate, hop_length, n_mels: from it. temperature: the default noise scale (a teacher's
    recorded synthesis temperature, 1.0 for a student: a student distilled at the teacher's
    temperature T imitates the teacher at T). voiced_temperature: a teacher's recorded temperature in
    voiced speech (None: none recorded; `teachers.sampling.step_temperatures`). dtype: "float32", or
    "bfloat16" (autocast, students only).
    """

    def __init__(self, model: IAFStudent | WaveNetTeacher, payload: dict, device: str | torch.device = "cpu",
                 dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model = model
        self.kind = "student" if isinstance(model, IAFStudent) else "teacher"
        if self.kind == "teacher" and dtype != "float32":
            raise ConfigError("a teacher samples in float32 (its recursion accumulates every step); use dtype float32")
        self.device = torch.device(device)
        self.dtype = dtype
        self.payload = payload
        self.features = from_dict(FeatureConfig, payload["features"], "checkpoint features")
        self.temperature, self.voiced_temperature = recorded_temperatures(payload if self.kind == "teacher" else {})
        self.speakers: dict[str, int] = dict(payload.get("extra", {}).get("speakers", {}) or {})
        self._logmel = LogMel(self.features)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
             dtype: str = "float32") -> Vocoder:
        """A student or teacher checkpoint file or run folder (which one is read from the checkpoint);
        None: the shipped universal teacher."""
        model: IAFStudent | WaveNetTeacher
        if path is None:
            model, payload = load_teacher(None, device=device)
            return cls(model, payload, device, dtype)
        task = load_checkpoint(path).get("task")
        if task == "student":
            model, payload = load_student(path, device=device)
        elif task == "teacher":
            model, payload = load_teacher(path, device=device)
        else:
            raise CheckpointError(f"{path}: is a '{task}' checkpoint; the vocoder loads a student or a teacher")
        return cls(model, payload, device, dtype)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def hop_length(self) -> int:
        return self.features.hop_length

    @property
    def n_mels(self) -> int:
        return self.features.n_mels

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """The model's log-mel of audio at `sample_rate`: (..., T) -> (..., n_mels, T // hop) float32."""
        return self._logmel(torch.as_tensor(wav).float().cpu())

    def check(self, mel, name: str = "mel") -> torch.Tensor:
        """A mel as (n_mels, F) float32, or a one-line `MelError` saying what is wrong with it."""
        mel = torch.as_tensor(mel)
        if not (mel.is_floating_point() or mel.dtype in (torch.int16, torch.int32, torch.int64)):
            raise MelError(name, f"dtype {mel.dtype} is not a number type")
        if mel.dim() != 2:
            raise MelError(name, f"has shape {tuple(mel.shape)}; a mel is 2-D, (n_mels, frames)")
        if mel.shape[0] != self.n_mels:
            raise MelError(name, f"has {mel.shape[0]} mel channels; this model takes {self.n_mels} "
                           f"(shape {tuple(mel.shape)} read as (n_mels, frames))")
        return check_values(mel, name)

    def __call__(self, mel, temperature: float | None = None, seed: int | None = None,
                 speaker: int | str | None = None, mode: str = "sample", method: str = "auto",
                 voiced_temperature: float | None = None, postfilter: int = 0):
        """mel: (n_mels, F) -> audio (F * hop,); (B, n_mels, F) -> (B, F * hop); a list of (n_mels, F_i)
        -> a list of (F_i * hop,), synthesised as one batch (shorter mels padded with silence, outputs cut).

        temperature: the noise scale (default `self.temperature`, with `self.voiced_temperature`; a
        temperature given alone applies everywhere). seed: reproducible output; for a
        student the noise of item i is drawn from seed + i, so an item's audio does not depend on
        what it is batched with. speaker: a name (of `self.speakers`) or an int id, for a multi-speaker
        model. mode, method: the
        teacher's ("sample" or "mean"; "auto" = the fastest sampler for the device,
        `teachers.sampling.fastest_method`). voiced_temperature: a teacher with a pitch source samples
        voiced speech at this temperature and unvoiced speech at `temperature`
        (`teachers.sampling.step_temperatures`); a student refuses it. postfilter: > 0, that many
        iterations of the mel post-filter on each output (`distill.audio.postfilter.MelPostFilter`: each
        frame's mel-band energies moved to the mel's), on the CPU.
        """
        if isinstance(mel, np.ndarray):  # a TTS model's .npy, as loaded
            mel = torch.from_numpy(mel)
        single = isinstance(mel, torch.Tensor) and mel.dim() == 2
        batched = isinstance(mel, torch.Tensor) and mel.dim() == 3
        items = [mel] if single else list(mel)
        mels = [self.check(m, f"mel {i}" if not single else "mel") for i, m in enumerate(items)]
        if not mels:
            return [] if not batched else torch.zeros(0, 0)
        temperature, voiced_temperature = self.temperatures(temperature, voiced_temperature)
        if postfilter < 0:
            raise ConfigError(f"postfilter: the mel post-filter's iterations must be >= 0, got {postfilter}")
        audios = self._synthesize(mels, temperature, seed, self.speaker_ids(speaker, len(mels)), mode, method,
                                  voiced_temperature)
        if postfilter:
            post = MelPostFilter(self.features, postfilter)
            audios = [post(a, m.to(a)) for a, m in zip(audios, mels, strict=True)]
        if single:
            return audios[0]
        return torch.stack(audios) if batched else audios

    def temperatures(self, temperature: float | None = None,
                     voiced_temperature: float | None = None) -> tuple[float, float | None]:
        """The (temperature, voiced temperature) a call samples at: neither given, the recorded pair; a
        temperature alone, that temperature everywhere; a voiced temperature alone, with the recorded
        temperature; a voiced temperature of 0, none. One ConfigError for what this model cannot honour: a
        temperature < 0, a voiced temperature for a student (its noise has one scale) or for a teacher
        without a pitch source."""
        temperature, voiced_temperature = resolve_temperatures((self.temperature, self.voiced_temperature),
                                                               temperature, voiced_temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {temperature}")
        if voiced_temperature is not None:
            if self.kind == "student":
                raise ConfigError("a voiced temperature is a teacher's: a student samples its noise at one scale; "
                                  "leave it out")
            check_voiced_temperature(cast(WaveNetTeacher, self.model), temperature, float(voiced_temperature))
        return temperature, voiced_temperature

    def speaker_ids(self, speaker: int | str | None, batch: int) -> torch.Tensor | None:
        """A speaker name or id -> ids (batch,) on the device (None for a single-speaker model), or one
        ConfigError line: missing, unknown (listing the known ones), or given to a model without speakers."""
        table = self.model.speaker
        if table is None:
            if speaker is not None:
                raise ConfigError("this model has no speaker input; drop the speaker argument")
            return None
        if speaker is None:
            raise ConfigError(f"this model is multi-speaker: pass a speaker (one of {self._known_speakers()})")
        if isinstance(speaker, str) and speaker in self.speakers:  # a name first: LibriTTS's names are numbers
            index = self.speakers[speaker]
        elif isinstance(speaker, str) and (self.speakers or not speaker.isdigit()):
            raise ConfigError(f"unknown speaker {speaker!r}; known: {self._known_speakers()}")
        else:
            index = int(speaker)
            if not 0 <= index < table.num_embeddings:
                raise ConfigError(f"speaker id {index} is out of range; known: {self._known_speakers()}")
        return torch.full((batch,), index, dtype=torch.long, device=self.device)

    def _known_speakers(self) -> str:
        if self.speakers:
            return ", ".join(sorted(self.speakers))
        assert self.model.speaker is not None  # asked only of a multi-speaker model
        return f"ids 0..{self.model.speaker.num_embeddings - 1}"

    @torch.inference_mode()
    def _synthesize(self, mels: list[torch.Tensor], temperature: float, seed: int | None,
                    speaker: torch.Tensor | None, mode: str, method: str,
                    voiced_temperature: float | None = None) -> list[torch.Tensor]:
        frames = max(m.shape[-1] for m in mels)
        batch = self.model.pad_mels(mels).to(self.device)
        hop = self.hop_length
        if isinstance(self.model, IAFStudent):  # self.kind == "student"
            z = None
            if seed is not None:
                z = torch.zeros(len(mels), frames * hop)
                for i, m in enumerate(mels):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed + i)
                        z[i, : m.shape[-1] * hop] = self.model.sample_noise((1, m.shape[-1] * hop))[0] * temperature
                z = z.to(self.device)
            audio = synthesize(self.model, batch, temperature, z=z, autocast_dtype=DTYPES[self.dtype], speaker=speaker)
        else:
            teacher = cast(WaveNetTeacher, self.model)  # not a student
            if method == "auto":
                method = fastest_method(teacher, self.device)
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                audio = generate(teacher, batch, method, temperature=temperature, mode=mode, speaker=speaker,
                                 voiced_temperature=voiced_temperature)
        audio = audio.float().cpu()
        return [audio[i, : m.shape[-1] * hop] for i, m in enumerate(mels)]
