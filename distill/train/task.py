"""What a training task plugs into the one training loop (`distill.train.trainer.Trainer`).

Branch by task class, not by flags: the teacher and each student are `Task` subclasses.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.config import TrainConfig
from distill.train.logger import RunLogger


class Task(abc.ABC):
    """A trainable job. `config` is the task's top-level config dataclass; it must have a `train`
    section (`TrainConfig`) and may have `features` (a `FeatureConfig`, stored in checkpoints)."""

    #: a short name stored in checkpoints; resuming a run of another task is refused
    name: str = "task"

    def __init__(self, config: Any):
        self.config = config

    @property
    def train_config(self) -> TrainConfig:
        return self.config.train

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The trainable model: one with `record()` and `from_record(payload)` (see
        `distill.train.checkpoint.model_record`), or one whose `__init__` is decorated with
        `distill.train.checkpoint.remember_args`."""

    def build_datasets(self) -> tuple[Dataset, Any]:
        """(training dataset indexed by `StreamSampler` keys, validation data or None).

        Default: aligned crops of the train split and whole valid utterances of `config.data`."""
        from distill.data.datasets import vocoder_datasets

        return vocoder_datasets(self.config.data, self.config.features, self.speakers)

    #: the speaker map (name -> id) of a multi-speaker task, saved in its checkpoints; None: one speaker
    speakers: dict[str, int] | None = None

    @abc.abstractmethod
    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Forward + losses on one batch (already on the device, inside autocast).

        Returns a dict with the total under "loss" and every term under its own name
        (`loss/nll`, `loss/kl`, ...), which is also its TensorBoard tag. Do not call backward.
        """

    def validate(self, model: torch.nn.Module, valid_data: Any, logger: RunLogger, step: int) -> dict[str, float]:
        """Evaluate `model` (the EMA weights when EMA is on), log media, return scalars.

        Runs under `torch.no_grad()` on the main process only. Returned keys are logged as `valid/<key>`.
        """
        return {}

    def setup(self, device: torch.device) -> None:  # noqa: B027  an optional hook: doing nothing is the default
        """Move task-owned state (e.g. a frozen teacher) to the training device."""

    def batch_samples(self, batch: Any) -> int:
        """Audio samples in a batch, for the samples/s figure."""
        return int(batch["audio"].numel())

    def flops_per_sample(self, model: torch.nn.Module) -> float | None:
        """Model FLOPs of one training step per audio sample (forward + backward), for the trainer's
        `train/tflops` and `train/mfu`; None when the task does not know them."""
        return None

    collate_fn: Callable | None = None

    def trainable_parameters(self, model: torch.nn.Module):
        return [p for p in model.parameters() if p.requires_grad]

    def initial_weights(self, model: torch.nn.Module, payload: dict) -> dict:
        """The state dict that initialises `model` from another run's checkpoint `payload` (`--init`): its
        weights as they are; a task whose models can grow from a smaller one's says how."""
        return payload["model"]

    #: the trainer's discriminator (unwrapped), when `build_discriminator` made one
    discriminator: torch.nn.Module | None = None

    def build_discriminator(self) -> torch.nn.Module | None:
        """A second model trained beside the first with its own optimiser (an adversarial discriminator),
        or None (the default). The trainer builds it, keeps it in the run's checkpoints (not in exports),
        wraps it for DDP, and sets `discriminator` to it before the first step."""
        return None

    def discriminator_train_config(self) -> TrainConfig:
        """The discriminator's optimiser and schedule settings (default: the run's `train` section)."""
        return self.train_config

    def discriminator_step(self, discriminator: torch.nn.Module, batch: Any,
                           step: int) -> dict[str, torch.Tensor] | None:
        """The discriminator's losses after the model's step `step` on `batch` (inside autocast): its total
        under "loss", every term under its tag; None when it does not train at this step."""
        return None

    def checkpoint_extra(self) -> dict:
        """Plain data the task stores in every checkpoint (e.g. which teacher a student came from)."""
        return {}

    def features(self) -> dict:
        """Feature settings stored in checkpoints (empty when the task has none)."""
        from distill.config import to_dict

        feats = getattr(self.config, "features", None)
        return to_dict(feats) if feats is not None else {}
