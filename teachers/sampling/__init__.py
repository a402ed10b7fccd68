"""Autoregressive sampling from a WaveNet teacher: one `generate()` over four samplers.

- `incremental` (Fast WaveNet): per-layer ring buffers, O(layers) work per sample, batch > 1
  (`stepper.StackStepper`, whose folded weights every sampler but `naive` reads).
- `graph`: the incremental recursion from preallocated buffers with constant indices, 64 steps
  captured as one CUDA graph (replayed per block) on a GPU; eager on a CPU (`graph.py`).
- `fast`: the incremental recursion as one compiled C loop (CPU; every head; `fastloop.py`).
- `naive`: recompute the stack over the last receptive-field window for every sample; the
  reference the incremental path is checked against (and what the benchmark compares with).

All accept `temperature` (scales the spread of each draw) and `mode="mean"` (take each step's
mean instead of a draw: no sampling hiss in silence, but duller speech). `generate` checks the
method, mode, temperature and prompt once, then dispatches through `SAMPLERS`.

A temperature may also be each step's own, (B, T): `generate(..., voiced_temperature=Tv)` gives a
teacher with a pitch source the temperature T + (Tv - T) v(t) at sample t, v the soft voicing its
source reads from the mel (`step_temperatures`). LPCNet (Valin and Skoglund 2019) lowers its
temperature with the pitch correlation for the same reason: in voiced speech the noise of each draw
fills the gaps between the harmonics, which a pitch tracker (and a listener) hears as hoarseness,
while in unvoiced speech the noise is the signal, and a temperature below 1 takes its energy away
(20 log10 T dB).

Two "auto" policies, named here: `fastest_method` (validation samples, vocoding: the fastest sampler
the device has) and `reference_method` (evaluation: the sampler whose speed a paper quotes as the
teacher's, CUDA graphs on a GPU and the incremental PyTorch sampler on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from distill.errors import ConfigError
from teachers.sampling.stepper import StackStepper
from teachers.wavenet import WaveNetTeacher, period_step

MODES = ("sample", "mean")


def draw(dist, params: torch.Tensor, mode: str, temperature: float | torch.Tensor) -> torch.Tensor:
    """The one draw of the PyTorch samplers: params (B, P, 1) -> (B, 1), clamped to [-1, 1] in the model
    domain (a pre-emphasised signal could reach 1 + a, which speech at sane levels does not come near).
    temperature: one number, or each sequence's own (B, 1). The C loop implements the same function
    (`fastloop.c`'s `draw`)."""
    x = dist.mean(params) if mode == "mean" else dist.sample(params, temperature)
    return x.clamp(-1, 1)


def step_temperatures(cond: torch.Tensor, temperature: float, voiced_temperature: float) -> torch.Tensor:
    """Each sample's temperature (B, T), T + (Tv - T) v(t): `temperature` where the pitch source's soft
    voicing v is 0 (unvoiced), `voiced_temperature` where it is 1, linear between. cond (B, C, T): the
    conditioning of a teacher with a pitch source, whose last channel is v (`distill.nn.pitch`)."""
    voicing = cond[:, -1].clamp(0, 1)
    return temperature + (voiced_temperature - temperature) * voicing


def _at(temperature: float | torch.Tensor, t: int) -> float | torch.Tensor:
    """Step t's temperature: the one number, or column t (B, 1) of each step's own."""
    return temperature[:, t : t + 1] if isinstance(temperature, torch.Tensor) else temperature


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


def step_input(teacher: WaveNetTeacher, prev: torch.Tensor, audio: torch.Tensor, lag: torch.Tensor | None,
               t: int) -> torch.Tensor:
    """The network's input of step t (B, 1 + period_taps): y(t - 1) (prev, (B, 1)) and, for a teacher with
    period taps, `period_step` from the samples before t (`WaveNetTeacher.stack_input`, one step)."""
    if lag is None:
        return prev
    return torch.cat([prev, period_step(audio, lag, t, teacher.period_taps).to(prev.dtype)], dim=1)


def check_lag(teacher: WaveNetTeacher, lag: torch.Tensor | None) -> None:
    """One ValueError when the period `lag` is missing for a teacher with period taps, or given to one without."""
    if (lag is None) != (teacher.period_taps == 0):
        raise ValueError("pass lag=teacher.period(mel) exactly when the teacher has period taps")


@torch.inference_mode()
def incremental_forward(teacher: WaveNetTeacher, y: torch.Tensor, cond: torch.Tensor,
                        lpc: torch.Tensor | None = None, lag: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced parameters computed step by step. y: (B, T), cond: (B, C, T), lpc: (B, 1 + p, T) or
    None, lag: (B, T) `teacher.period(mel)` or None -> (B, P, T).

    Must equal `teacher.forward_cond(y, cond, lpc, lag)`; this is what the incremental path is tested with.
    """
    check_lag(teacher, lag)
    batch, _, length = cond.shape
    stepper = StackStepper(teacher.stack, cond)
    prev = torch.zeros(batch, 1, device=cond.device, dtype=cond.dtype)
    out = []
    for t in range(length):
        params = stepper.step(step_input(teacher, prev, y, lag, t))
        out.append(_step_params(teacher, params[:, :, None], y, lpc, t)[:, :, 0])
        prev = y[:, t : t + 1]
    return torch.stack(out, dim=-1)


# ---------------------------------------------------------------------------------------- the samplers
# Each: (teacher, cond (B, C, T), lpc or None, lag (B, T) or None, audio (B, T) holding the prompt's `start`
# samples (model domain), mode, temperature (a number, or each step's own (B, T)), progress) -> audio (B, T)
# in the model domain.

def _incremental(teacher, cond, lpc, lag, audio, start, mode, temperature, progress) -> torch.Tensor:
    stepper = StackStepper(teacher.stack, cond)
    prev = torch.zeros(audio.shape[0], 1, device=cond.device, dtype=cond.dtype)
    for t in tqdm(range(audio.shape[1]), desc="incremental sampling", disable=not progress, leave=False):
        params = stepper.step(step_input(teacher, prev, audio, lag, t))
        if t < start:  # teacher-forced through the prompt
            prev = audio[:, t : t + 1]
            continue
        prev = draw(teacher.dist, _step_params(teacher, params[:, :, None], audio, lpc, t), mode, _at(temperature, t))
        audio[:, t] = prev[:, 0]
    return audio


def _naive(teacher, cond, lpc, lag, audio, start, mode, temperature, progress) -> torch.Tensor:
    field = teacher.stack.receptive_field()
    for t in tqdm(range(start, audio.shape[1]), desc="naive sampling", disable=not progress, leave=False):
        lo = max(0, t - field)
        # the period taps of the window's samples read up to period_reach() samples before it
        first = max(0, lo - teacher.period_reach()) if lag is not None else lo
        past = None if lag is None else lag[:, first : t + 1]
        window = teacher.stack_input(audio[:, first : t + 1], past, first)[:, :, lo - first :]
        params = _step_params(teacher, teacher.stack(window, cond[:, :, lo : t + 1])[:, :, -1:], audio, lpc, t)
        audio[:, t] = draw(teacher.dist, params, mode, _at(temperature, t))[:, 0]
    return audio


def _fast(teacher, cond, lpc, lag, audio, start, mode, temperature, progress) -> torch.Tensor:
    from teachers.sampling.fastloop import fast_generate

    if cond.device.type != "cpu":
        raise ConfigError("method='fast' is the CPU loop; on a GPU use method='graph'")
    prompt = audio[:, :start] if start else None
    return fast_generate(teacher, cond, temperature, mode, prompt, lpc=lpc, lag=lag).to(cond.dtype)


def graph_unsupported(teacher: WaveNetTeacher) -> str | None:
    """Why the CUDA-graph sampler cannot sample this teacher (None when it can)."""
    if getattr(teacher, "period_taps", 0):
        return "the graph sampler does not cover period taps (model.period_taps); use method='incremental'"
    return None


def _graph(teacher, cond, lpc, lag, audio, start, mode, temperature, progress) -> torch.Tensor:
    from teachers.sampling.graph import graph_generate

    reason = graph_unsupported(teacher)
    if reason:
        raise ConfigError(reason)
    bar = tqdm(total=audio.shape[1], desc="graph sampling", disable=not progress, leave=False)
    prompt = audio[:, :start] if start else None
    out = graph_generate(teacher, cond, temperature, mode, prompt, bar, lpc=lpc)
    bar.close()
    return out


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "incremental": _incremental, "graph": _graph, "fast": _fast, "naive": _naive,
}


def fastest_method(teacher: WaveNetTeacher, device: torch.device) -> str:
    """The fastest sampler for `teacher` on `device`: "graph" on CUDA where it covers the teacher, "fast"
    (the C loop) on a CPU where it can be built and covers the teacher, "incremental" otherwise."""
    from teachers.sampling.fastloop import unsupported

    if device.type == "cuda":
        return "graph" if graph_unsupported(teacher) is None else "incremental"
    return "fast" if device.type == "cpu" and unsupported(teacher) is None else "incremental"


def reference_method(teacher: WaveNetTeacher, device: torch.device) -> str:
    """The sampler an evaluation times the teacher with unless told otherwise: "graph" on CUDA where it
    covers the teacher, "incremental" otherwise (on a CPU the C loop is timed beside it; `wavedistill eval
    --teacher-sampler`)."""
    return "graph" if device.type == "cuda" and graph_unsupported(teacher) is None else "incremental"


def check_request(method: str, mode: str, temperature: float | torch.Tensor, prompt: torch.Tensor | None,
                  batch: int, length: int) -> None:
    """One ValueError for a sampler, mode, temperature or prompt that `generate` cannot honour."""
    if method not in SAMPLERS:
        raise ValueError(f"method must be one of {', '.join(map(repr, SAMPLERS))}, got {method!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    if isinstance(temperature, torch.Tensor):
        if tuple(temperature.shape) != (batch, length):
            raise ValueError(f"a temperature per step must have shape ({batch}, {length}), "
                             f"got {tuple(temperature.shape)}")
        if temperature.numel() and not bool((temperature > 0).all() & temperature.isfinite().all()):
            raise ValueError(f"a temperature per step must be finite and > 0 everywhere; its lowest is "
                             f"{float(temperature.min()):.3g}")
    elif not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if prompt is not None and (prompt.dim() != 2 or prompt.shape[0] != batch or prompt.shape[1] >= length):
        raise ValueError(f"prompt must be (batch={batch}, P) with P < {length} samples, got {tuple(prompt.shape)}")


def check_voiced_temperature(teacher: WaveNetTeacher, temperature: float, voiced_temperature: float) -> None:
    """One ConfigError for a voiced temperature `generate` cannot honour: the teacher must read voicing from
    the mel (model.pitch_source), and both temperatures must be > 0."""
    if getattr(teacher, "pitch", None) is None:
        raise ConfigError("a voiced temperature follows the voicing of the teacher's pitch source, and this teacher "
                          "has none (model.pitch_source: false): leave the voiced temperature out")
    if not all(math.isfinite(t) and t > 0 for t in (voiced_temperature, temperature)):
        raise ConfigError(f"the voiced temperature and the temperature must both be finite and > 0, got "
                          f"{voiced_temperature!r} and {temperature!r}")


def resolve_temperatures(recorded: tuple[float, float | None], temperature: float | None = None,
                         voiced_temperature: float | None = None) -> tuple[float, float | None]:
    """The (temperature, voiced temperature) a synthesis runs at, from a teacher's recorded pair
    (`recorded_temperatures`) and what a caller gave: neither, the recorded pair; a temperature alone,
    that temperature everywhere; a voiced temperature alone, with the recorded temperature; a voiced
    temperature of 0, none. Nothing is checked here (`check_voiced_temperature` does)."""
    if temperature is None:
        temperature = recorded[0]
        if voiced_temperature is None:
            voiced_temperature = recorded[1]
    return float(temperature), (float(voiced_temperature) or None) if voiced_temperature is not None else None


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
    voiced_temperature: float | None = None,
) -> torch.Tensor:
    """mel: (B, n_mels, F + 2c) -> audio (B, F * hop) drawn from the teacher.

    method: "incremental" (Fast WaveNet in PyTorch; any head, CPU or CUDA), "graph" (the same recursion
    from static buffers, 64 steps per CUDA graph replay, `teachers.sampling.graph`; any head; the one to
    use on a GPU, eager on a CPU), "fast" (the same recursion as one compiled C loop,
    `teachers.sampling.fastloop`; CPU, every head; several times faster on a CPU) or "naive"
    (recomputes the receptive field for every sample; the reference).

    prompt: (B, P) known audio that the output starts with; sampling continues after it (P < F * hop).

    voiced_temperature: a teacher with a pitch source samples voiced speech at this temperature and
    unvoiced speech at `temperature`, following the soft voicing it reads from the mel
    (`step_temperatures`); both > 0. None: `temperature` everywhere.

    Every sampler works in the teacher's model domain (pre-emphasised audio when the teacher has
    `preemphasis`; the prompt is converted) with its linear prediction, and the result is de-emphasised.
    """
    was_training = teacher.training
    if voiced_temperature is not None:
        check_voiced_temperature(teacher, temperature, voiced_temperature)
    teacher.eval()
    try:
        cond = teacher.conditioning(mel, speaker)
        lpc, lag = teacher.predictor(mel), teacher.period(mel)
        batch, _, length = cond.shape
        check_request(method, mode, temperature, prompt, batch, length)
        temps: float | torch.Tensor = temperature
        if voiced_temperature is not None:
            temps = step_temperatures(cond, temperature, voiced_temperature)
        audio = torch.zeros(batch, length, device=cond.device, dtype=cond.dtype)
        start = 0
        if prompt is not None:
            start = prompt.shape[-1]
            audio[:, :start] = teacher.to_model_domain(prompt.to(cond.dtype))
        audio = SAMPLERS[method](teacher, cond, lpc, lag, audio, start, mode, temps, progress)
    finally:
        teacher.train(was_training)
    if teacher.preemphasis:
        audio = teacher.to_audio(audio).clamp(-1, 1)
    return audio
