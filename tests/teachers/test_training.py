"""`wavedistill train-teacher` end to end, exporting, and loading a teacher with matching features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.config import FeatureConfig, load_config
from distill.errors import CheckpointError, ConfigError
from distill.train.checkpoint import load_checkpoint
from teachers.pretrained import export_teacher, load_teacher
from teachers.task import TeacherConfig, TeacherTask
from tests.models import small_teacher, teacher_inputs

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.layers=4", "model.cycle=4", "model.residual_channels=8", "model.gate_channels=8",
    "model.skip_channels=8", "data.segment_length=2048", "train.batch_size=2", "train.log_every=2",
    "train.valid_every=4", "train.checkpoint_every=2", "valid.max_utterances=1", "valid.sample_seconds=0.05",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    first = cli("train-teacher", "--config", "configs/teacher/gaussian_tiny.yaml", "--out", str(run), "--steps", "4",
                *TINY)
    assert first.returncode == 0, first.stderr
    resumed = cli("train-teacher", "--out", str(run), "--resume", "--steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    return run


def test_train_teacher_trains_validates_checkpoints_and_resumes(teacher_run):
    ckpt = load_checkpoint(teacher_run)
    assert ckpt["task"] == "teacher" and ckpt["step"] == 6 and ckpt["model_class"] == "teachers.wavenet:WaveNetTeacher"
    records = [json.loads(line) for line in (teacher_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss/nll" in r and "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["train/bits_per_sample"] == pytest.approx(r["loss/nll"] / 0.6931471805599453) for r in train)
    valid = [r for r in records if "valid/loss/nll" in r]
    assert [r["step"] for r in valid] == [4, 6] and all("valid/sample_mel_l1" in r for r in valid)
    events = list((teacher_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 20_000  # scalars + audio + mel images


def test_export_and_load_a_teacher(teacher_run, tmp_path):
    info = export_teacher(teacher_run, tmp_path / "t.pt")
    assert info["step"] == 6
    slim = load_checkpoint(tmp_path / "t.pt")
    assert "optimizer" not in slim and slim["extra"]["samples_seen"] == 6 * 2 * 2048
    teacher, payload = load_teacher(tmp_path / "t.pt", features=FeatureConfig())
    full = load_checkpoint(teacher_run)
    assert torch.equal(teacher.stack.input.weight, full["ema"]["model"]["stack.input.weight"])  # EMA weights
    assert not teacher.training
    assert payload["config"]["valid"]["temperature"] == full["config"]["valid"]["temperature"]  # the run's
    assert export_teacher(teacher_run, tmp_path / "t07.pt", temperature=0.7)["temperature"] == 0.7
    assert load_checkpoint(tmp_path / "t07.pt")["config"]["valid"]["temperature"] == 0.7  # eval's default for it


def test_loading_a_teacher_for_other_features_names_both_values(teacher_run, tmp_path):
    export_teacher(teacher_run, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"hop_length: 256 in teacher t.pt vs 200 in the data/config"):
        load_teacher(tmp_path / "t.pt", features=FeatureConfig(hop_length=200, n_fft=1000, win_length=1000))


def test_a_student_or_foreign_checkpoint_is_not_a_teacher(tmp_path):
    from distill.train.checkpoint import FORMAT, VERSION, atomic_save

    atomic_save({"format": FORMAT, "version": VERSION, "task": "student", "step": 1, "model": {},
                 "model_class": "students.iaf:IAFStudent", "model_args": {}, "features": {}}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="not a teacher"):
        load_teacher(tmp_path / "s.pt")
    atomic_save({"format": FORMAT, "version": VERSION, "task": "teacher"}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="incomplete wavedistill checkpoint: it has no step, model, model_class"):
        load_teacher(tmp_path / "t.pt")


def test_the_shipped_teachers_load_for_the_demo_features_the_universal_one_by_default():
    from teachers.pretrained import demo_teacher_path, single_voice_teacher_path

    # their documented synthesis temperatures: the universal one's unvoiced and voiced (its pitch source's voicing)
    temperatures = {demo_teacher_path(): (0.85, 0.5), single_voice_teacher_path(): (0.7, 0.0)}
    for path, (temperature, voiced) in temperatures.items():
        assert path.stat().st_size <= 10 * 2**20
        teacher, payload = load_teacher(path, features=FeatureConfig(preemphasis=0.85))
        assert teacher.config.distribution == "gaussian" and teacher.receptive_field() == 2047
        assert teacher.lpc is not None and teacher.lpc.order == 16 and teacher.preemphasis == 0.85
        valid = payload["config"]["valid"]
        assert (valid["temperature"], valid.get("voiced_temperature", 0.0)) == (temperature, voiced)
        assert payload["extra"]["samples_seen"] > 0 and payload["step"] > 0
        assert all(torch.isfinite(p).all() for p in teacher.parameters())
    teacher, payload = load_teacher(features=FeatureConfig(preemphasis=0.85))  # default: the universal one
    assert teacher.config.pitch_source and teacher.speaker is None  # any voice's mel, told its pitch
    assert payload["extra"]["voices"] == ["awb", "cmu_us_slt_arctic_hts", "kal16", "kal_diphone", "lp_diphone",
                                          "pc_diphone", "rms", "slt"]  # the corpus's eight training voices


def test_a_compiled_teacher_trains_like_the_eager_one():
    """torch.compile of the whole teacher (train.compile=true) lowers: the stretch upsampler, which
    inductor cannot lower, runs eagerly inside it; loss and gradients match the eager model's."""
    teacher = small_teacher("gaussian", dtype=torch.float32).train()
    y, mel = teacher_inputs(teacher, dtype=torch.float32)
    results = []
    for model in (teacher, torch.compile(teacher)):
        teacher.zero_grad()
        loss = -teacher.dist.log_prob(model(y, mel), y).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in teacher.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_compiled_teacher_under_bf16_autocast_trains_time_major_like_the_eager_one():
    """train.compile=true with train.amp=bf16 on a CPU: the compiled model runs the time-major form too,
    with the eager one's loss and gradients to bf16 rounding."""
    teacher = small_teacher("gaussian", layers=2, cycle=2, dtype=torch.float32).train()
    y, mel = teacher_inputs(teacher, dtype=torch.float32)
    results = []
    for model in (teacher, torch.compile(teacher)):
        teacher.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -teacher.dist.log_prob(model(y, mel).float(), y).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in teacher.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=2e-2, atol=2e-2)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * float(b.abs().max()))
    traced = []  # what dynamo hands the compiler: the time-major form's products, no convolution of a layer

    def backend(graph, example_inputs):
        traced.extend(str(node.target) for node in graph.graph.nodes)
        return graph.forward

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = torch.randn(y.shape[0], teacher.stack.layers[0].cond.in_channels, y.shape[-1])
        torch.compile(teacher.stack, backend=backend)(y[:, None], cond)
    assert any("linear" in t for t in traced) and not any("conv1d" in t for t in traced)


def test_export_records_a_voiced_temperature_for_a_pitch_teacher_only(teacher_run, tmp_path):
    from students.vocoder import Vocoder

    with pytest.raises(CheckpointError, match="has none"):
        export_teacher(teacher_run, tmp_path / "v.pt", voiced_temperature=0.5)
    state = ROOT / "teachers/pretrained/training/universal_lp_pitch_speed_tiny/checkpoints/latest.pt"
    info = export_teacher(state, tmp_path / "u.pt", temperature=0.85, voiced_temperature=0.5)
    assert info["temperature"] == 0.85 and info["voiced_temperature"] == 0.5
    voc = Vocoder.load(tmp_path / "u.pt")
    assert (voc.temperature, voc.voiced_temperature) == (0.85, 0.5)
    # the recorded pair; a temperature alone applies everywhere; a voiced temperature alone keeps the recorded one
    assert voc.temperatures() == (0.85, 0.5) and voc.temperatures(1.0) == (1.0, None)
    assert voc.temperatures(None, 0.3) == (0.85, 0.3) and voc.temperatures(1.0, 0.3) == (1.0, 0.3)
    with pytest.raises(CheckpointError, match="finite number >= 0"):
        export_teacher(state, tmp_path / "x.pt", voiced_temperature=-1.0)
    with pytest.raises(CheckpointError, match="needs a temperature > 0 for unvoiced speech"):
        export_teacher(state, tmp_path / "y.pt", temperature=0.0, voiced_temperature=0.5)  # no file to sample
    from teachers.task import TeacherValidConfig

    for bad in ({"temperature": 0.0, "voiced_temperature": 0.5}, {"voiced_temperature": float("inf")}):
        with pytest.raises(ConfigError, match="valid.temperature"):
            TeacherValidConfig(**bad)
    with pytest.raises(ConfigError, match="model.pitch_source: true"):
        TeacherTask(load_config(TeacherConfig, "configs/teacher/gaussian_tiny.yaml", ["valid.voiced_temperature=0.5"]))
