"""Small models and checkpoints shared by the tests: one builder per model kind, one way to save one.

Every builder seeds torch first, so a test that builds the same model twice gets the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from distill.config import FeatureConfig, load_config, to_dict
from distill.train.checkpoint import atomic_save, checkpoint_payload, class_path, model_record

# the teachers' output heads, at sizes a test can afford
HEADS = [("gaussian", {}), ("mol", {"num_components": 3, "num_bins": 256}), ("mulaw", {})]
# a linear predictor for the tiny students' 5 mels and hop 4
STUDENT_LP = {"order": 3, "n_fft": 64, "win_length": 64}
# overrides that shrink a student preset to a few seconds of training
SMALL = ["model.flows=[3, 3]", "model.residual_channels=16", "model.gate_channels=16", "model.skip_channels=16",
         "data.segment_length=2048", "train.batch_size=2", "train.log_every=5", "train.valid_every=1000",
         "train.checkpoint_every=1000", "train.lr=3e-3", "valid.max_utterances=1", "valid.max_seconds=0.25"]


def tiny_features(preemphasis: float = 0.0, linear_prediction: dict | None = None) -> tuple[FeatureConfig, dict]:
    """(features of 5 mels at hop 4, the predictor's own settings): a test's predictor is one dict of
    `MelLPC` arguments; its feature settings (n_fft, ...) go to the features, the rest is returned."""
    lp = dict(linear_prediction or {})
    names = {f.name for f in dataclasses.fields(FeatureConfig)}
    features = FeatureConfig(n_mels=5, hop_length=4, preemphasis=preemphasis,
                             **{k: lp.pop(k) for k in list(lp) if k in names})
    return features, lp


def small_teacher(distribution="gaussian", args=None, kernel_size=2, layers=6, cycle=3, dtype=torch.float64,
                  preemphasis=0.0, linear_prediction=None, **kw):
    """A WaveNet teacher with 8 channels, 5 mels and hop 4, in eval mode; kw: more `TeacherModelConfig` fields."""
    from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig, WaveNetTeacher

    features, lp = tiny_features(preemphasis, linear_prediction)
    config = TeacherModelConfig(distribution, args or {}, layers=layers, cycle=cycle, kernel_size=kernel_size,
                                residual_channels=8, gate_channels=8, skip_channels=8, upsample_scales=[2, 2],
                                linear_prediction=LinearPredictionConfig(**lp), **kw)
    torch.manual_seed(0)
    return WaveNetTeacher(config, features, mel_context=2).to(dtype).eval()


def teacher_inputs(model, frames=20, batch=2, dtype=torch.float64, seed=1):
    """(audio (B, frames * 4), mel (B, 5, frames + 4)) for `small_teacher`."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 5, frames + 4, generator=g, dtype=dtype)
    x = 0.3 * torch.randn(batch, frames * 4, generator=g, dtype=dtype)
    return x, mel


def tiny_student(distribution="gaussian", flows=(3, 2), kernel_size=2, randomise=True, preemphasis=0.0,
                 linear_prediction=None):
    """An IAF student with 8 channels, 5 mels and hop 4, in float64 (with `linear_prediction`, its teacher's
    predictor as one dict of `MelLPC` arguments)."""
    from students.iaf import IAFStudent, StudentModelConfig
    from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig

    features, lp = tiny_features(preemphasis, linear_prediction)
    config = StudentModelConfig(distribution, list(flows), cycle=3, kernel_size=kernel_size, residual_channels=8,
                                gate_channels=8, skip_channels=8, linear_prediction=bool(lp))
    teacher = TeacherModelConfig(upsample_scales=[2, 2], linear_prediction=LinearPredictionConfig(**lp))
    torch.manual_seed(0)
    student = IAFStudent(config, teacher, features, mel_context=2).double()
    if randomise:  # the zero-initialised heads would hide most of the dependence structure
        with torch.no_grad():
            for flow in student.flows:
                flow.head[-1].weight.normal_(0, 0.3)
    return student


def student_inputs(frames=6, batch=1, seed=1):
    """(noise z (B, frames * 4), mel (B, 5, frames + 4)) for `tiny_student`."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames * 4, generator=g, dtype=torch.float64),
            torch.randn(batch, 5, frames + 4, generator=g, dtype=torch.float64))


def save_model(path, model: torch.nn.Module, task: str, *, step: int = 1, features: dict | None = None,
               config: dict | None = None, model_args: dict | None = None, extra: dict | None = None) -> Path:
    """Write `model` as a `task` checkpoint the way the trainer does (`checkpoint_payload`); model_args
    replaces the model's record (an old or a broken checkpoint)."""
    args = model_record(model) if model_args is None else model_args
    if features is None:  # the model's own, as the trainer writes them
        features = to_dict(model.features) if hasattr(model, "features") else {}
    payload = checkpoint_payload(task, step, model.state_dict(), class_path(model), args, features,
                                 config or {}, extra=extra or {})
    atomic_save(payload, path)
    return Path(path)


def save_teacher(path, distribution: str, args: dict | None = None, overrides: tuple = ()) -> str:
    """A 3-layer teacher of the `gaussian_tiny` preset with the shipped teacher's pre-emphasis (0.85), so
    that the student presets' features match it."""
    from teachers.task import TeacherConfig, build_teacher

    cfg = load_config(TeacherConfig, "configs/teacher/gaussian_tiny.yaml",
                      ["model.layers=3", "model.cycle=3", "model.residual_channels=8", "model.gate_channels=8",
                       "model.skip_channels=8", f"model.distribution={distribution}", "features.preemphasis=0.85",
                       *overrides])
    cfg.model.distribution_args = args or {}
    return str(save_model(path, build_teacher(cfg), "teacher", features=to_dict(cfg.features), config=to_dict(cfg)))
