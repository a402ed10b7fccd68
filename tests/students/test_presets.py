"""The 22.05 kHz (LJSpeech, HiFi-GAN V1) and 24 kHz (LibriTTS, BigVGAN) presets: each paper-size teacher
and its student share the data preset's features, build, and run on a crop at that rate."""

from __future__ import annotations

import pytest
import torch

from distill.audio.mel import LogMel
from distill.config import DataStageConfig, load_config, to_dict
from students.task import StudentConfig, build_student
from teachers.task import TeacherConfig, build_teacher
from tests.conftest import harmonic

EXPECTED = {  # sample_rate, n_fft, hop, win, n_mels, f_max
    "ljspeech_22k": (22050, 1024, 256, 1024, 80, 8000.0),
    "libritts_24k": (24000, 1024, 256, 1024, 100, 12000.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_rate_presets_pair_a_teacher_and_a_student_on_the_data_presets_features(name):
    data = load_config(DataStageConfig, f"configs/data/{name}.yaml")
    teacher_cfg = load_config(TeacherConfig, f"configs/teacher/gaussian_clarinet_{name}.yaml")
    student_cfg = load_config(StudentConfig, f"configs/student/clarinet_{name}.yaml")
    f = data.features
    assert (f.sample_rate, f.n_fft, f.hop_length, f.win_length, f.n_mels, f.f_max) == EXPECTED[name]
    assert f.f_min == 0.0 and f.log_floor == 1e-5 and f.preemphasis == 0.0
    assert to_dict(teacher_cfg.features) == to_dict(student_cfg.features) == to_dict(f)
    assert teacher_cfg.data.segment_length == student_cfg.data.segment_length == 16384
    assert teacher_cfg.model.residual_channels == 128 and student_cfg.model.flows == [10] * 6  # still paper size

    teacher = build_teacher(teacher_cfg).eval()
    student = build_student(student_cfg, teacher.config).eval()
    wav = torch.from_numpy(harmonic(0.2, 150.0, 0, sr=f.sample_rate))
    mel = LogMel(f)(wav)
    frames = wav.numel() // f.hop_length
    assert mel.shape == (f.n_mels, frames)
    padded = torch.nn.functional.pad(mel, (2, 2), value=-11.5)[None]
    x = wav[None, : frames * f.hop_length]
    with torch.no_grad():
        assert torch.isfinite(teacher.log_prob(x, padded)).all()
        out = student(torch.randn(1, frames * f.hop_length), padded)
    assert out.x.shape == (1, frames * f.hop_length)
