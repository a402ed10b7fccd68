"""Export a distilled student to ONNX and run it with onnxruntime (CPU), no PyTorch needed at inference.

The exported graph is the whole parallel synthesis: (z (B, T), mel (B, n_mels, F + 2c)) -> audio
(B, T) in [-1, 1] with T = F * hop, batch and length dynamic. The caller draws z (N(0, 1) for a
ClariNet student, Logistic(0, 1) for a Parallel WaveNet one; `noise()` does it with numpy), so the
same noise gives the same audio in PyTorch and in onnxruntime (tested). A student of a pre-emphasised
teacher: the graph ends at the flows' output, which is still pre-emphasised, the file's metadata
records `preemphasis` (a), and `OnnxStudent` de-emphasises (x_t = y_t + a x_(t-1), scipy) and clips;
another runtime must apply the same filter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.errors import ConfigError
from students.iaf import IAFStudent

OPSET = 18


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs the '{module}' package: pip install 'wavedistill[onnx]'") from None


class SynthesisGraph(nn.Module):
    """(z, mel) -> audio: the upsampler and the flows of `students.iaf.synthesize`, as one module."""

    def __init__(self, student: IAFStudent):
        super().__init__()
        self.student = student

    def forward(self, z: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        cond = self.student.upsampler(mel)
        x = self.student.flow(z, cond).x
        return x if self.student.preemphasis else x.clamp(-1, 1)  # else clipped after de-emphasis


def export_onnx(student: IAFStudent, out: str | Path, frames: int = 32) -> Path:
    """Write `student` as an ONNX graph with dynamic batch and length; returns the path."""
    _need("onnx")
    if student.lpc is not None:
        raise ConfigError("ONNX export of a linear-prediction student is not supported yet (its all-pole synthesis "
                          "filter from the mel has no ONNX form here); synthesise it with students.iaf.synthesize")
    if student.pitch is not None:
        raise ConfigError("ONNX export of a student with a pitch source is not supported yet (its F0 tracker from the "
                          "mel has no ONNX form here); synthesise it with students.iaf.synthesize")
    if student.speaker is not None:
        raise ConfigError("ONNX export of a multi-speaker student is not supported yet (the graph has no speaker "
                          "input); synthesise it with students.vocoder.Vocoder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    student = student.float().cpu().eval()
    n_mels = student.features.n_mels
    # example batch 2: torch.export would specialise a dimension of size 1
    mel = torch.randn(2, n_mels, frames + 2 * student.mel_context)
    z = torch.randn(2, frames * student.hop_length)
    tmp = out.with_name(out.name + ".tmp")
    batch, length = torch.export.Dim("batch", max=1024), torch.export.Dim("frames", min=1, max=1 << 20)
    shapes = {"z": {0: batch, 1: student.hop_length * length},
              "mel": {0: batch, 2: length + 2 * student.mel_context}}
    with torch.no_grad():
        program = torch.onnx.export(SynthesisGraph(student), (z, mel), input_names=["z", "mel"], output_names=["audio"],
                                    dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, verbose=False)
    program.save(str(tmp))  # type: ignore[union-attr]  # torch.onnx.export(dynamo=True) returns a program
    if student.preemphasis:
        onnx = _need("onnx")
        model = onnx.load(str(tmp))
        model.metadata_props.add(key="preemphasis", value=repr(float(student.preemphasis)))
        onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def noise(student_or_distribution, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """z for the exported graph: standard normal (gaussian) or standard logistic, float32."""
    name = student_or_distribution if isinstance(student_or_distribution, str) else student_or_distribution.dist.name
    rng = np.random.default_rng(seed)
    if name == "gaussian":
        return rng.standard_normal(shape).astype(np.float32)
    u = rng.uniform(1e-6, 1 - 1e-6, shape)
    return np.log(u / (1 - u)).astype(np.float32)


class OnnxStudent:
    """An exported student in an onnxruntime CPU session: `synthesize(mel, z) -> audio` (numpy)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = _need("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.preemphasis = float(self.session.get_modelmeta().custom_metadata_map.get("preemphasis", 0.0))

    def synthesize(self, mel: np.ndarray, z: np.ndarray) -> np.ndarray:
        audio = self.session.run(["audio"], {"z": z.astype(np.float32), "mel": mel.astype(np.float32)})[0]
        if self.preemphasis:
            from scipy.signal import lfilter

            audio = np.clip(lfilter([1.0], [1.0, -self.preemphasis], audio, axis=-1), -1, 1).astype(np.float32)
        return audio
