"""ONNX export: onnxruntime gives the PyTorch student's audio for the same noise, at any batch and length.

One export (through the CLI, the user's path) serves every test: exporting takes tens of seconds.
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

from students.export import OnnxStudent, noise  # noqa: E402
from students.iaf import synthesize  # noqa: E402
from tests.models import save_model, tiny_student  # noqa: E402


@pytest.fixture(scope="module", params=[0.0, 0.85], ids=["plain", "preemphasis"])
def exported(tmp_path_factory, request) -> tuple:
    """A student of a plain teacher, and of a pre-emphasised one (its graph ends before the de-emphasis)."""
    folder = tmp_path_factory.mktemp("onnx")
    student = tiny_student(preemphasis=request.param).float()
    save_model(folder / "s.pt", student, "student", step=7)
    result = subprocess.run([sys.executable, "-m", "distill.cli", "export", "--student", str(folder / "s.pt"),
                             "--out", str(folder / "s.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return student, folder / "s.onnx", result.stdout


def test_export_command_writes_a_file_it_has_checked(exported):
    _, path, stdout = exported
    assert Path(path).stat().st_size > 1000 and "max |difference|" in stdout
    assert float(stdout.rsplit(" ", 1)[-1]) < 1e-5


def test_onnx_output_equals_pytorch_for_the_same_noise_at_any_batch_and_length(exported):
    student, path, _ = exported
    session = OnnxStudent(path, threads=1)
    rng = np.random.default_rng(1)
    for batch, frames in [(1, 3), (3, 17), (2, 40)]:  # none is the export's example shape
        mel = rng.normal(size=(batch, 5, frames + 4)).astype(np.float32)
        z = noise(student, (batch, frames * 4), seed=batch)
        ours = synthesize(student, torch.from_numpy(mel), z=torch.from_numpy(z)).numpy()
        theirs = session.synthesize(mel, z)
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < 1e-5
    assert session.preemphasis == student.preemphasis


def test_noise_has_the_students_law():
    g, lg = noise("gaussian", (200_000,)), noise("logistic", (200_000,))
    assert abs(g.std() - 1) < 0.01 and abs(lg.std() - np.pi / np.sqrt(3)) < 0.02
