"""Autoregressive sampling from a WaveNet teacher.

- `incremental` (Fast WaveNet): per-layer ring buffers, O(layers) work per sample, batch > 1.
- `graph`: the incremental recursion from preallocated buffers with constant indices, 64 steps
  captured as one CUDA graph (replayed per block) on a GPU; eager on a CPU.
- `fast`: the incremental recursion as one compiled C loop (CPU; every head).
- `naive`: recompute the stack over the last receptive-field window for every sample; the
  reference the incremental path is checked against (and what the benchmark compares with).

All accept `temperature` (scales the spread of each draw) and `mode="mean"` (take each step's
mean instead of a draw: no sampling hiss in silence, but duller speech).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from distill.errors import ConfigError
from distill.nn import shift_right
from teachers.wavenet import WaveNetTeacher


def _draw(teacher: WaveNetTeacher, params: torch.Tensor, mode: str, temperature: float) -> torch.Tensor:
    """params (B, P, 1) -> (B, 1), clamped to [-1, 1] in the model domain (every sampler does the same;
    a pre-emphasised signal could reach 1 + a, which speech at sane levels does not come near)."""
    if mode == "mean":
        return teacher.dist.mean(params).clamp(-1, 1)
    if mode != "sample":
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    return teacher.dist.sample(params, temperature).clamp(-1, 1)


def lp_step(audio: torch.Tensor, lpc: torch.Tensor, t: int) -> torch.Tensor:
    """The linear prediction of step t from the samples before it: sum_k c_k(t) audio[:, t-k].
    audio: (B, T) (model domain), lpc: (B, 1 + p, T) `teacher.predictor(mel)` -> (B, 1)."""
    lo = max(0, t - (lpc.shape[1] - 1))
    past = audio[:, lo:t].flip(-1)  # y_(t-1), y_(t-2), ...
    return (lpc[:, 1 : 1 + t - lo, t].to(audio.dtype) * past).sum(1, keepdim=True)


def _step_params(teacher: WaveNetTeacher, params: torch.Tensor, audio: torch.Tensor, lpc, t: int) -> torch.Tensor:
    """The network's parameters of step t (B, P, 1) mapped by the linear predictor (when the teacher has one)."""
    if lpc is None:
        return params
    return teacher.dist.affine(params, lp_step(audio, lpc, t), lpc[:, :1, t].to(params.dtype))


@torch.inference_mode()
def incremental_forward(teacher: WaveNetTeacher, y: torch.Tensor, cond: torch.Tensor,
                        lpc: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced parameters computed step by step. y: (B, T), cond: (B, C, T), lpc: (B, 1 + p, T) or
    None -> (B, P, T).

    Must equal `teacher.forward_cond(y, cond, lpc)`; this is what the incremental path is tested with.
    """
    batch, _, length = cond.shape
    stepper = teacher.stack.stepper(cond)
    prev = torch.zeros(batch, 1, device=cond.device, dtype=cond.dtype)
    out = []
    for t in range(length):
        out.append(_step_params(teacher, stepper.step(prev)[:, :, None], y, lpc, t)[:, :, 0])
        prev = y[:, t : t + 1]
    return torch.stack(out, dim=-1)


def fastest_method(teacher: WaveNetTeacher, device: torch.device) -> str:
    """The fastest sampler for `teacher` on `device`: "graph" on CUDA, "fast" (the C loop) on a CPU
    where it can be built and covers the teacher, "incremental" otherwise."""
    from teachers.fastloop import unsupported

    if device.type == "cuda":
        return "graph"
    return "fast" if device.type == "cpu" and unsupported(teacher) is None else "incremental"


@torch.inference_mode()
def generate(
    teacher: WaveNetTeacher,
    mel: torch.Tensor,
    method: str = "incremental",
    temperature: float = 1.0,
    mode: str = "sample",
    speaker: torch.Tensor | None = None,
    progress: bool = False,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """mel: (B, n_mels, F + 2c) -> audio (B, F * hop) drawn from the teacher.

    method: "incremental" (Fast WaveNet in PyTorch; any head, CPU or CUDA), "graph" (the same recursion
    from static buffers, 64 steps per CUDA graph replay, `teachers.graphsampler`; any head; the one to
    use on a GPU, eager on a CPU), "fast" (the same recursion as one compiled C loop,
    `teachers.fastloop`; CPU, every head; several times faster on a CPU) or "naive"
    (recomputes the receptive field for every sample; the reference).

    prompt: (B, P) known audio that the output starts with; sampling continues after it (P < F * hop).

    Every sampler works in the teacher's model domain (pre-emphasised audio when the teacher has
    `preemphasis`; the prompt is converted) with its linear prediction, and the result is de-emphasised.
    """
    was_training = teacher.training
    teacher.eval()
    cond = teacher.conditioning(mel, speaker)
    lpc = teacher.predictor(mel)
    batch, _, length = cond.shape
    audio = torch.zeros(batch, length, device=cond.device, dtype=cond.dtype)
    start = 0
    if prompt is not None:
        prompt = teacher.to_model_domain(prompt.to(cond.dtype))
        start = prompt.shape[-1]
        audio[:, :start] = prompt
    steps = tqdm(range(length), desc=f"{method} sampling", disable=not progress, leave=False)
    if method == "incremental":
        stepper = teacher.stack.stepper(cond)
        prev = torch.zeros(batch, 1, device=cond.device, dtype=cond.dtype)
        for t in steps:
            params = stepper.step(prev)
            if t < start:  # teacher-forced through the prompt
                prev = audio[:, t : t + 1]
                continue
            prev = _draw(teacher, _step_params(teacher, params[:, :, None], audio, lpc, t), mode, temperature)
            audio[:, t] = prev[:, 0]
    elif method == "fast":
        from teachers.fastloop import fast_generate

        if cond.device.type != "cpu":
            raise ConfigError("method='fast' is the CPU loop; on a GPU use method='graph'")
        audio = fast_generate(teacher, cond, temperature, mode, prompt, lpc=lpc).to(cond.dtype)
    elif method == "graph":
        from teachers.graphsampler import graph_generate

        bar = tqdm(total=length, desc="graph sampling", disable=not progress, leave=False)
        audio = graph_generate(teacher, cond, temperature, mode, prompt, bar, lpc=lpc)
        bar.close()
    elif method == "naive":
        field = teacher.receptive_field()
        for t in steps:
            if t < start:
                continue
            lo = max(0, t - field)
            window = shift_right(audio[:, lo : t + 1])[:, None, :]
            params = _step_params(teacher, teacher.stack(window, cond[:, :, lo : t + 1])[:, :, -1:], audio, lpc, t)
            audio[:, t] = _draw(teacher, params, mode, temperature)[:, 0]
    else:
        raise ValueError(f"method must be 'incremental', 'graph', 'fast' or 'naive', got {method!r}")
    teacher.train(was_training)
    if teacher.preemphasis:
        audio = teacher.to_audio(audio).clamp(-1, 1)
    return audio
