"""Loading distilled students: the EMA weights of a `wavedistill distill` run or checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.config import FeatureConfig, to_dict
from distill.train.checkpoint import load_model
from students.iaf import IAFStudent


def load_student(
    path: str | Path,
    features: FeatureConfig | dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[IAFStudent, dict]:
    """(student in eval mode, checkpoint payload); `path` is a checkpoint file or a run folder.
    payload["extra"]["teacher"] names the teacher it was distilled from (path, sha256, step)."""
    if isinstance(features, FeatureConfig):
        features = to_dict(features)
    model, payload = load_model(path, "student", IAFStudent, features, device)
    return model, payload
