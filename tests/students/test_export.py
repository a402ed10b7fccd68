"""ONNX export: onnxruntime gives the PyTorch student's audio for the same noise, at any batch and length.

Two students, each exported once: a tiny plain one (random mels, batches and lengths), and through the
CLI (the user's path; about a minute) the demo's student shape (the `clarinet_tiny` preset: the mel's
linear predictor and all-pole filter, the pitch source, pre-emphasis), checked on real mels of the demo
corpus's voices against the documented tolerance (docs/export.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from distill.errors import ConfigError, MelError  # noqa: E402
from students.export import OnnxStudent, export_onnx, noise  # noqa: E402
from students.iaf import synthesize  # noqa: E402
from tests.models import save_model, tiny_student  # noqa: E402

# the documented tolerance of an export against PyTorch on real mels (docs/export.md)
MAX_DIFFERENCE, MIN_SNR_DB = 1e-4, 60.0


def export(folder: Path, student) -> tuple[Path, str]:
    save_model(folder / "s.pt", student, "student", step=7)
    result = subprocess.run([sys.executable, "-m", "distill.cli", "export", "--student", str(folder / "s.pt"),
                             "--out", str(folder / "s.onnx")], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    return folder / "s.onnx", result.stdout


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple:
    """A tiny student of a plain teacher: its graph ends with the clip."""
    student = tiny_student().float()
    return student, export_onnx(student, tmp_path_factory.mktemp("onnx") / "s.onnx")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple:
    """The demo's student shape, its flows' heads randomised (a fresh student's are zero: its output
    would not depend on the flows' weights)."""
    from distill.config import load_config
    from eval.bench import STUDENTS, preset_student
    from students.task import StudentConfig

    student = preset_student(load_config(StudentConfig, STUDENTS["student clarinet_tiny"])).eval()
    assert student.lpc is not None and student.pitch is not None and student.preemphasis > 0
    torch.manual_seed(0)
    with torch.no_grad():
        for flow in student.flows:
            flow.head[-1].weight.normal_(0, 0.05)
    return (student, *export(tmp_path_factory.mktemp("onnx"), student))


def test_onnx_output_equals_pytorch_for_the_same_noise_at_any_batch_and_length(plain):
    student, path = plain
    session = OnnxStudent(path, threads=1)
    rng = np.random.default_rng(1)
    for batch, frames in [(1, 3), (3, 17), (2, 40)]:  # none is the export's example shape
        mel = rng.normal(size=(batch, 5, frames + 4)).astype(np.float32)
        z = noise(student, (batch, frames * 4), seed=batch)
        ours = synthesize(student, torch.from_numpy(mel), z=torch.from_numpy(z)).numpy()
        theirs = session.synthesize(mel, z)
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < 1e-5
    assert session.preemphasis == 0.0


def demo_mels(student) -> list[torch.Tensor]:
    """Log-mels of one file of four voices (training and held-out, male and female), with context frames."""
    from distill.audio.io import load_audio
    from distill.audio.mel import LogMel
    from distill.data.corpus import demo_corpus_dir

    logmel = LogMel(student.features)
    files = [demo_corpus_dir() / "wavs" / f"{name}.flac"
             for name in ("demo_0015", "kal16_0030", "ked_diphone_0045", "upc_ca_ona_hts_0030")]
    return [student.pad_mels([logmel(load_audio(f, student.features.sample_rate))]) for f in files]


def test_the_demo_students_export_reproduces_pytorch_on_real_mels_within_the_documented_tolerance(demo):
    """The graph holds the pitch source, the predictor and the all-pole filter (state carried by
    prefix doubling); onnxruntime agrees with PyTorch to float32 rounding on every voice."""
    student, path, stdout = demo
    assert Path(path).stat().st_size > 1000 and "max |difference|" in stdout  # the command checked its file
    assert float(stdout.rsplit(" ", 1)[-1]) <= MAX_DIFFERENCE
    session = OnnxStudent(path, threads=1)
    assert session.preemphasis == student.preemphasis and session.mel_context == student.mel_context
    mels = demo_mels(student)
    for i, mel in enumerate(mels):
        z = noise(student, (1, (mel.shape[-1] - 2 * student.mel_context) * student.hop_length), seed=i)
        ours = synthesize(student, mel, z=torch.from_numpy(z)).numpy()
        theirs = session.synthesize(mel.numpy(), z)
        snr = 10 * np.log10((ours**2).sum() / ((ours - theirs) ** 2).sum())
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= MAX_DIFFERENCE and snr >= MIN_SNR_DB
    # a batch: two voices' mels cut to one length
    frames = min(m.shape[-1] for m in mels[:2])
    batch = torch.cat([m[..., :frames] for m in mels[:2]])
    z = noise(student, (2, (frames - 2 * student.mel_context) * student.hop_length), seed=9)
    ours = synthesize(student, batch, z=torch.from_numpy(z)).numpy()
    assert np.abs(session.synthesize(batch.numpy(), z) - ours).max() <= MAX_DIFFERENCE


def test_the_graphs_doubling_rounds_cover_its_longest_input(demo):
    from distill.nn.lpc import doubling_levels
    from students.export import MAX_FRAMES, SynthesisGraph

    student = demo[0]
    blocks = MAX_FRAMES * student.hop_length // student.lp_block
    levels = SynthesisGraph(student).levels
    assert levels == doubling_levels(blocks) == 18 and 2**levels + 1 >= blocks > 2 ** (levels - 1) + 1


def test_an_exported_student_names_what_is_wrong_with_its_input(demo):
    student, path, _ = demo
    session = OnnxStudent(path, threads=1)
    mel = np.zeros((1, student.features.n_mels, session.max_frames + 1 + 2 * student.mel_context), np.float32)
    with pytest.raises(MelError, match="at most 65536"):
        session.synthesize(mel, np.zeros((1, 1), np.float32))
    with pytest.raises(ConfigError, match="needs 2560"):
        session.synthesize(mel[..., :14], np.zeros((1, 100), np.float32))


def test_noise_has_the_students_law():
    g, lg = noise("gaussian", (200_000,)), noise("logistic", (200_000,))
    assert abs(g.std() - 1) < 0.01 and abs(lg.std() - np.pi / np.sqrt(3)) < 0.02


def test_bench_times_the_export_beside_pytorch(demo):
    from eval.bench import onnx_rows, to_markdown

    student, path, _ = demo
    rows = onnx_rows("student clarinet_tiny", student, path, quick=True)
    ends = ("0.24 s, PyTorch", "0.24 s, onnxruntime", "0.24 s: onnxruntime / PyTorch speed")  # quick: 15 frames
    assert len(rows) == 3 and all(r["what"].endswith(end) for r, end in zip(rows, ends, strict=True))
    assert rows[0]["samples_per_s"] > 0 and rows[1]["samples_per_s"] > 0 and rows[2]["ratio"] > 0
    assert "onnxruntime / PyTorch speed" in to_markdown({"rows": rows})


def test_a_pitch_student_with_the_f0_median_and_the_low_f0_voicing_exports_exactly(tmp_path):
    """Both pitch options are in the graph: a tiny pitch student with a median of 3 and a low-F0 voicing
    bonus of 0.15 matches PyTorch on a low voice's mel (kal16, 88 Hz: the bonus is in play)."""
    from distill.audio.io import load_audio
    from distill.audio.mel import LogMel
    from distill.data.corpus import demo_corpus_dir
    from distill.nn.pitch import MelPitch
    from students.iaf import IAFStudent, StudentModelConfig

    torch.manual_seed(0)
    student = IAFStudent(StudentModelConfig(flows=[2], cycle=2, residual_channels=8, gate_channels=8,
                                            skip_channels=8, pitch_source=True, pitch_f0_median=3,
                                            pitch_low_f0_voicing=0.15)).eval()
    with torch.no_grad():
        for flow in student.flows:
            flow.head[-1].weight.normal_(0, 0.05)
    session = OnnxStudent(export_onnx(student, tmp_path / "s.onnx"), threads=1)
    audio = load_audio(demo_corpus_dir() / "wavs" / "kal16_0030.flac", student.features.sample_rate)[:16000]
    mel = student.pad_mels([LogMel(student.features)(audio)])
    assert student.pitch is not None
    f0, score = student.pitch(mel)
    assert f0.min() < 120 and (score > MelPitch()(mel)[1]).any()  # the bonus is in play
    z = noise(student, (1, (mel.shape[-1] - 2 * student.mel_context) * student.hop_length), seed=0)
    ours = synthesize(student, mel, z=torch.from_numpy(z)).numpy()
    assert np.abs(session.synthesize(mel.numpy(), z) - ours).max() <= MAX_DIFFERENCE
