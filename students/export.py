"""Export a distilled student to ONNX and run it with onnxruntime (CPU), no PyTorch needed at inference.

The exported graph is the whole parallel synthesis: (z (B, T), mel (B, n_mels, F + 2c)) -> audio
(B, T) with T = F * hop, batch and length dynamic (up to `MAX_FRAMES` frames, recorded in the file's
metadata as `max_frames`). The caller draws z (N(0, 1) for a ClariNet student, Logistic(0, 1) for a
Parallel WaveNet one; `noise()` does it with numpy), so the same noise gives the same audio in PyTorch
and in onnxruntime (tested).

Everything the student computes from the mel is in the graph:
- the pitch source (`distill.nn.pitch.MelPitch`: F0 and voicing from the mel, the phase summed over
  the utterance) and the linear predictor (`distill.nn.lpc.MelLPC`: Levinson-Durbin per frame), in
  float64 as in PyTorch;
- the all-pole synthesis filter (`distill.nn.lpc.lp_synthesis`), in float32 as in PyTorch, with the
  filter's state carried across blocks by prefix doubling (a fixed number of rounds, enough for
  `MAX_FRAMES`) instead of PyTorch's loop over blocks, which a graph of fixed size cannot hold.
On real mels onnxruntime agrees with PyTorch to float32 rounding (tests/students/test_export.py
asserts max |difference| <= 1e-4 and SNR >= 60 dB on the demo corpus's voices).

A student of a pre-emphasised teacher: the graph ends at the flows' (or the filter's) output, which
is still pre-emphasised; the file's metadata records `preemphasis` (a), and `OnnxStudent` de-emphasises
(x_t = y_t + a x_(t-1), scipy) and clips; another runtime must apply the same filter.
"""

from __future__ import annotations

import copy
import importlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.errors import ConfigError, MelError
from distill.nn.lpc import doubling_levels
from students.iaf import IAFStudent

OPSET = 18


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs the '{module.split('.')[0]}' package: "
                          "pip install 'wavedistill[onnx]'") from None


MAX_FRAMES = 1 << 16  # the longest mel an exported graph takes: 17.5 minutes at hop 256, 16 kHz


class SynthesisGraph(nn.Module):
    """(z, mel) -> audio: `students.iaf.synthesize` as one module (the conditioning with the pitch
    source, the flows, the all-pole filter with its state carried by prefix doubling)."""

    def __init__(self, student: IAFStudent, max_frames: int = MAX_FRAMES):
        super().__init__()
        self.student = student
        # rounds of doubling that cover the longest input's blocks (lp_synthesis's `levels`)
        self.levels = doubling_levels(max_frames * student.hop_length // student.lp_block) \
            if student.lpc is not None else 0

    def forward(self, z: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        student = self.student
        x = student.flow(z, student.conditioning(mel)).x
        if student.lpc is not None:  # the flows gave the excitation
            x = student.excite(x, student.lpc.of_padded(mel, student.mel_context), "doubling", self.levels)
        return x if student.preemphasis else x.clamp(-1, 1)  # else clipped after de-emphasis


def export_onnx(student: IAFStudent, out: str | Path, frames: int = 32) -> Path:
    """Write `student` as an ONNX graph with dynamic batch and length; returns the path."""
    _need("onnx")
    if student.speaker is not None:
        raise ConfigError("ONNX export of a multi-speaker student is not supported yet (the graph has no speaker "
                          "input); synthesise it with students.vocoder.Vocoder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    student = copy.deepcopy(student).float().cpu().eval().requires_grad_(False)  # the caller's is left as it is
    n_mels = student.features.n_mels
    # example batch 2: torch.export would specialise a dimension of size 1
    mel = torch.randn(2, n_mels, frames + 2 * student.mel_context)
    z = torch.randn(2, frames * student.hop_length)
    tmp = out.with_name(out.name + ".tmp")
    batch, length = torch.export.Dim("batch", max=1024), torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    shapes = {"z": {0: batch, 1: student.hop_length * length},
              "mel": {0: batch, 2: length + 2 * student.mel_context}}
    # optimize=False, constants folded instead: the exporter's optimiser (onnxscript 0.7) drops the
    # addition of a small constant (the analyses' 1e-9 and 1e-12, which keep digital silence finite)
    # traced with autograd on (no parameter needs it): the stacks' out-of-place form; their in-place
    # inference path (`infer`) would become copies and scatters in the graph (onnxruntime 2x slower)
    # the exporter's notes on itself (torchvision absent, deprecations inside torch) are not the user's
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*")
            program = torch.onnx.export(SynthesisGraph(student).eval(), (z, mel), input_names=["z", "mel"],
                                        output_names=["audio"], dynamic_shapes=shapes, opset_version=OPSET,
                                        dynamo=True, verbose=False, optimize=False)
    finally:
        quiet.setLevel(level)
    assert program is not None  # torch.onnx.export(dynamo=True) returns a program
    optimizer = _need("onnxscript.optimizer")
    optimizer.fold_constants(program.model)
    optimizer.remove_unused_nodes(program.model)
    program.save(str(tmp))
    onnx = _need("onnx")
    model = onnx.load(str(tmp))
    for key, value in {"max_frames": MAX_FRAMES, "mel_context": student.mel_context,
                       "hop_length": student.hop_length}.items():
        model.metadata_props.add(key=key, value=str(value))
    if student.preemphasis:
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
        meta = self.session.get_modelmeta().custom_metadata_map
        self.preemphasis = float(meta.get("preemphasis", 0.0))
        # the input contract (files exported before these were recorded have none: not checked)
        self.max_frames, self.mel_context, self.hop_length = (
            int(meta[key]) if key in meta else None for key in ("max_frames", "mel_context", "hop_length"))

    def synthesize(self, mel: np.ndarray, z: np.ndarray) -> np.ndarray:
        """mel (B, n_mels, F + 2 mel_context) with its context frames, z (B, F * hop) -> audio (B, F * hop)."""
        if self.mel_context is not None and self.hop_length is not None:
            frames = mel.shape[-1] - 2 * self.mel_context
            if self.max_frames is not None and frames > self.max_frames:
                raise MelError("mel", f"has {frames} frames; this export takes at most {self.max_frames} "
                               "(synthesise longer audio in pieces)")
            if z.shape[-1] != frames * self.hop_length:
                raise ConfigError(f"z has {z.shape[-1]} samples; a mel of {frames} frames (+ {self.mel_context} "
                                  f"context frames each side) needs {frames * self.hop_length}")
        audio = self.session.run(["audio"], {"z": z.astype(np.float32), "mel": mel.astype(np.float32)})[0]
        if self.preemphasis:
            from scipy.signal import lfilter

            audio = np.clip(lfilter([1.0], [1.0, -self.preemphasis], audio, axis=-1), -1, 1).astype(np.float32)
        return audio
