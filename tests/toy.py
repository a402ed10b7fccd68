"""A tiny task for exercising the training loop: predict each hop of audio from its mel frames."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from distill.config import DataConfig, FeatureConfig, TrainConfig
from distill.train.checkpoint import remember_args
from distill.train.task import Task


class ToyVocoder(torch.nn.Module):
    @remember_args
    def __init__(self, n_mels: int = 80, hop_length: int = 256, context: int = 2, dropout: float = 0.1):
        super().__init__()
        self.hop = hop_length
        self.drop = torch.nn.Dropout(dropout)  # random: exercises the RNG state on resume
        self.proj = torch.nn.Conv1d(n_mels, hop_length, 2 * context + 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (B, n_mels, F + 2c) -> audio (B, F * hop)."""
        y = self.proj(self.drop(mel) * 0.1)
        return y.transpose(1, 2).reshape(mel.shape[0], -1)


@dataclass
class ToyModel:
    dropout: float = 0.1


@dataclass
class ToyConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(segment_length=2048, mel_context=2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=8, batch_size=4, lr=3e-3, log_every=2, valid_every=4, checkpoint_every=4, ema_decay=0.99
    ))
    model: ToyModel = field(default_factory=ToyModel)


class ToyTask(Task):
    name = "toy"

    def __init__(self, config: ToyConfig, nan_steps: tuple = (), signal_at: int | None = None,
                 with_discriminator: bool = False, disc_nan_steps: tuple = ()):
        super().__init__(config)
        self.nan_steps = set(nan_steps)
        self.disc_nan_steps = set(disc_nan_steps)  # steps (0-based) whose discriminator loss is NaN
        self.signal_at = signal_at
        self.with_discriminator = with_discriminator
        self.calls = 0

    def build_discriminator(self):
        """with_discriminator: a one-conv second model with its own optimiser (its loss reads the batch only)."""
        return torch.nn.Conv1d(1, 1, 5, padding=2) if self.with_discriminator else None

    def discriminator_step(self, discriminator, batch, step):
        loss = (discriminator(batch["audio"][:, None]) ** 2).mean()
        if step in self.disc_nan_steps:
            loss = loss * float("nan")
        return {"loss": loss, "loss/disc": loss.detach()}

    def build_model(self):
        f, d = self.config.features, self.config.data
        return ToyVocoder(f.n_mels, f.hop_length, d.mel_context, self.config.model.dropout)

    def training_step(self, model, batch, step):
        self.calls += 1
        if self.signal_at is not None and self.calls == self.signal_at:
            os.kill(os.getpid(), __import__("signal").SIGTERM)
        pred = model(batch["mel"])
        loss = F.l1_loss(pred, batch["audio"])
        if self.calls in self.nan_steps:
            loss = loss * float("nan")
        return {"loss": loss, "loss/l1": loss}

    def validate(self, model, valid_data, logger, step):
        ctx = self.config.data.mel_context
        total = 0.0
        for item in valid_data:
            mel = F.pad(item["mel"], (ctx, ctx), value=-11.5)[None]
            total += F.l1_loss(model(mel)[0], item["audio"]).item()
        return {"loss/l1": total / len(valid_data)}


def free_port() -> int:
    """A free local TCP port, for a process group's rendezvous in the DDP and torchrun tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
