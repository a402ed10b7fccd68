"""Loading teachers (the shipped teacher by default) and exporting a run's teacher.

Two teachers ship: the universal one (`universal_lp_pitch_tiny.pt`, trained on the demo corpus's eight
training voices and told the mel's pitch), the default of every command that needs a teacher, and the
single-voice one it started from (`demo_gaussian_lp_tiny.pt`, slt only), which loads by path. Each has
its model card beside it.

An exported teacher is a slim checkpoint: the EMA weights as `model`, the model class and its record
(`model_args`: `WaveNetTeacher.record`), the feature settings and the config, and no optimiser state.
It loads without its YAML.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path

import torch

from distill.config import FeatureConfig, to_dict
from distill.errors import CheckpointError
from distill.train.checkpoint import atomic_save, checkpoint_file, checkpoint_payload, load_checkpoint, load_model
from teachers.wavenet import WaveNetTeacher

DEMO_TEACHER_NAME = "universal_lp_pitch_tiny.pt"
SINGLE_VOICE_TEACHER_NAME = "demo_gaussian_lp_tiny.pt"


def demo_teacher_path() -> Path:
    """The default teacher, shipped inside the package: the universal one (any voice's mel)."""
    return Path(str(resources.files("teachers") / "pretrained" / DEMO_TEACHER_NAME))


def single_voice_teacher_path() -> Path:
    """The single-voice (slt) teacher the universal one started from, shipped beside it."""
    return demo_teacher_path().with_name(SINGLE_VOICE_TEACHER_NAME)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (of a run folder's latest checkpoint)."""
    digest = hashlib.sha256()
    with open(checkpoint_file(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(
    path: str | Path | None = None,
    features: FeatureConfig | dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[WaveNetTeacher, dict]:
    """(teacher in eval mode with its EMA weights, checkpoint payload). `path` may be a checkpoint
    file or a run folder; None means the shipped default teacher. With `features`, settings that
    differ from the teacher's are an error naming both values."""
    path = Path(path) if path is not None else demo_teacher_path()
    if path == demo_teacher_path() and not path.is_file():
        raise CheckpointError(
            f"{path}: the shipped teacher is missing from this installation; reinstall wavedistill"
        )
    if isinstance(features, FeatureConfig):
        features = to_dict(features)
    model, payload = load_model(path, "teacher", WaveNetTeacher, features, device)
    return model, payload


def recorded_temperatures(payload: dict) -> tuple[float, float | None]:
    """A teacher checkpoint's documented synthesis temperatures: (valid.temperature, default 1;
    valid.voiced_temperature, None where 0 or absent)."""
    valid = payload.get("config", {}).get("valid", {})
    return float(valid.get("temperature", 1.0)), float(valid.get("voiced_temperature", 0.0)) or None


def export_teacher(source: str | Path, out: str | Path, temperature: float | None = None,
                   voiced_temperature: float | None = None) -> dict:
    """Write the slim, self-describing form of a teacher run's latest (or given) checkpoint.
    temperature: record it as the teacher's synthesis temperature (config valid.temperature);
    voiced_temperature: as its temperature in voiced speech (valid.voiced_temperature; 0: none), for a
    teacher with a pitch source."""
    payload = load_checkpoint(source)
    if payload.get("task") != "teacher":
        raise CheckpointError(f"{source}: is a '{payload.get('task')}' checkpoint, not a teacher")
    for flag, value in (("--temperature", temperature), ("--voiced-temperature", voiced_temperature)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise CheckpointError(f"{flag} must be a finite number >= 0, got {value}")
    if voiced_temperature and not payload["model_args"].get("model", {}).get("pitch_source"):
        raise CheckpointError(f"{source}: --voiced-temperature follows the voicing of a pitch source, and this "
                              "teacher has none (model.pitch_source: false)")
    recorded = {"temperature": temperature, "voiced_temperature": voiced_temperature}
    recorded = {k: float(v) for k, v in recorded.items() if v is not None}
    if recorded:
        config = payload["config"]
        payload["config"] = {**config, "valid": {**config.get("valid", {}), **recorded}}
    valid = payload["config"].get("valid", {})
    if valid.get("voiced_temperature", 0.0) > 0 and not valid.get("temperature", 1.0) > 0:
        raise CheckpointError(f"{source}: a voiced temperature needs a temperature > 0 for unvoiced speech (the "
                              f"recorded one is {valid.get('temperature')}): pass --temperature")
    weights = payload["ema"]["model"] if payload.get("ema") else payload["model"]
    batch = payload["config"]["train"]["batch_size"] * payload.get("world_size", 1)
    segment = payload["config"]["data"]["segment_length"]
    slim = checkpoint_payload(
        "teacher", payload["step"], {k: v.float().contiguous() for k, v in weights.items()},
        payload["model_class"], payload["model_args"], payload["features"], payload["config"],
        {**payload.get("extra", {}), "weights": "ema" if payload.get("ema") else "model",
         "samples_seen": payload["batches_consumed"] * batch * segment},
        versions=payload.get("versions", {}),
    )
    atomic_save(slim, out)
    return {"path": str(out), "step": slim["step"], "bytes": Path(out).stat().st_size,
            "temperature": slim["config"].get("valid", {}).get("temperature"),
            "voiced_temperature": slim["config"].get("valid", {}).get("voiced_temperature", 0.0)}
