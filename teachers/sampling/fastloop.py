"""Fast CPU sampling of WaveNet teachers: the whole per-sample loop in C (`fastloop.c`).

The PyTorch incremental sampler (`teachers.sampling.stepper.StackStepper`) spends its time dispatching ~150 small
tensor ops per sample; this runs the same recursion in one compiled loop per chunk of 1,024 steps.
The C file is compiled once with the system compiler (`cc -O3 -march=native`) into a per-user cache
(`$XDG_CACHE_HOME/wavedistill`, or `~/.cache/wavedistill`) and loaded with ctypes. Where there is no
compiler, `available()` is False and `generate(method="fast")` says so in one line.

Every output head: Gaussian, logistic, mixture of logistics, mu-law. Same numbers as the PyTorch
paths to float32 rounding (tested: teacher-forced parameters against the parallel forward pass; every
sample against the draw its own parameters and noise imply, by `distill.nn.distributions`' own functions).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import ConfigError
from teachers.sampling import check_lag, check_request
from teachers.sampling.stepper import StackStepper

SOURCE = Path(__file__).with_name("fastloop.c")
# the C source as this module was imported with: a process builds the loop that its own argument list
# (`ARGTYPES`) describes, even when the file on disk changes under a running process (an upgrade)
SOURCE_TEXT = SOURCE.read_bytes()
_lib = None
_error = ""


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "wavedistill"


def _build() -> ctypes.CDLL | None:
    global _error
    import shlex

    compiler = (shlex.split(os.environ["CC"]) if os.environ.get("CC")
                else [shutil.which("cc") or shutil.which("gcc") or ""])
    if not compiler[0]:
        _error = "no C compiler found (install gcc, or set CC)"
        return None
    source = SOURCE_TEXT
    # -ffast-math for the object only (vectorised expf); linking the library without it keeps GCC from
    # adding crtfastmath.o, whose constructor would switch the whole process to flush-to-zero.
    flags = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC"]
    # -march=native: a library built on one CPU may not run on another (a shared home folder)
    key = hashlib.sha256(source + " ".join([*compiler, *flags, _cpu_signature()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"fastloop_{key}.so"
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                code, obj, built = Path(tmp) / SOURCE.name, Path(tmp) / "fastloop.o", Path(tmp) / target.name
                code.write_bytes(source)
                for command in ([*compiler, *flags, "-c", str(code), "-o", str(obj)],
                                [*compiler, "-shared", str(obj), "-o", str(built), "-lm"]):
                    result = subprocess.run(command, capture_output=True, text=True)
                    if result.returncode != 0:
                        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode
                        _error = f"building {SOURCE.name} failed: {detail}"
                        return None
                os.replace(built, target)  # atomic: concurrent first uses never see half a library
        lib = ctypes.CDLL(str(target))
    except OSError as err:  # no compiler binary, read-only or noexec cache, ...
        _error = f"building or loading {SOURCE.name} failed: {err}"
        return None
    lib.wavenet_steps.restype = ctypes.c_int
    lib.wavenet_steps.argtypes = ARGTYPES
    return lib


# `wavenet_steps`' parameters in fastloop.c's order: ctypes converts and checks every argument
_i, _p, _f = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
ARGTYPES: list[type[ctypes._SimpleCData[Any]]] = [
    _i, _i, _i, _i, _i, _i, _i, _i,  # n, batch, layers, residual, gate, skip, hidden, kernel
    _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p,  # cond, w_in, b_in, w_tap, w_res, b_res, w_skip, b_skip, w/b h1, h2
    _p, _i, _p, _p,  # rings, span_max, spans, backs
    _p, _i, ctypes.c_long, _i,  # audio, total, pos, start
    _p, _p, _p, _i, _f, _p, _f, _p,  # noise, params, prev, mode, temperature, temps, log_scale_min, work
    _i, _i, _i, _i, _p, _p, _i, _i, _i,  # dist, num_params, noise_per_step, bins, table, lpc, order, loc, nloc
    _p, _i,  # lags, ntaps
]


def _cpu_signature() -> str:
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return platform.machine() + "|" + "|".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + "|" + platform.processor()


def available() -> bool:
    """True when the C loop is built (or can be)."""
    global _lib
    if _lib is None and not _error:
        _lib = _build()
    return _lib is not None


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


KINDS = {"gaussian": 0, "logistic": 1, "mol": 2, "mulaw": 3}  # the output heads the C loop draws from


def unsupported(teacher) -> str | None:
    """Why the C loop cannot sample this teacher (None when it can)."""
    if not available():
        return f"fast sampling is unavailable here: {_error}"
    if teacher.dist.name not in KINDS:
        return f"fast sampling covers {', '.join(KINDS)} teachers, not '{teacher.dist.name}'"
    stack = teacher.stack
    if stack.input.in_channels != 1 + getattr(teacher, "period_taps", 0):
        return "fast sampling needs a teacher whose input is the previous sample (and its period taps)"
    layers = stack.layers
    if any(layer.kernel_size != layers[0].kernel_size or layer.gate_channels != layers[0].gate_channels
           for layer in layers):
        return "fast sampling needs the same kernel size and gate width in every layer"
    return None


@torch.inference_mode()
def fast_generate(teacher, cond: torch.Tensor, temperature: float | torch.Tensor = 1.0, mode: str = "sample",
                  prompt: torch.Tensor | None = None, noise: torch.Tensor | None = None, chunk: int = 1024,
                  return_params: bool = False, lpc: torch.Tensor | None = None, lag: torch.Tensor | None = None):
    """cond: (B, C, T) upsampled conditioning -> audio (B, T) [, params (B, P, T)], in the teacher's
    model domain (`generate` converts the prompt and de-emphasises the result).

    lpc: (B, 1 + p, T) `teacher.predictor(mel)`, required for a teacher with linear prediction; lag: (B, T)
    `teacher.period(mel)`, required for a teacher with period taps (read in float64, as the PyTorch paths do).

    noise: what each step's draw consumes (default: drawn here, chunk by chunk, from torch's
    generator): (B, T) standard draws for a Gaussian or logistic teacher; (B, Q, T) uniforms in (0, 1)
    for a mixture (Q = K + 1) or mu-law (Q = classes) teacher, as their `draw(params, u)` takes them.
    return_params: also return every step's raw parameters (B, P, T).
    temperature: one for every step, or each step's own (B, T) (`teachers.sampling.step_temperatures`).
    """
    reason = unsupported(teacher)
    if reason:
        raise ConfigError(f"{reason}; use method='incremental'")
    dist = teacher.dist
    per_step = getattr(dist, "uniforms_per_step", 1)
    table = dist.decode(torch.arange(dist.num_classes)).float().contiguous() if dist.name == "mulaw" else None
    stack = teacher.stack
    cond = cond.detach().float().cpu()
    batch, _, length = cond.shape
    check_request("fast", mode, temperature, prompt, batch, length)
    temps = None
    if isinstance(temperature, torch.Tensor):
        temps, temperature = temperature.detach().float().cpu(), 1.0
    stepper = StackStepper(stack, cond, chunk=chunk)  # its pre-arranged float32 weights
    layers, kernel = len(stepper.w_tap), stack.layers[0].kernel_size
    residual, gate = stack.input.out_channels, stepper.gate[0]
    skip, hidden = stepper.w_skip.shape[1], stepper.h1[0].shape[1]

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.detach().float().contiguous()

    w = {
        "w_in": flat(stepper.w_in), "b_in": flat(stepper.b_in),  # (1 + taps, R): y(t - 1)'s row first
        "w_tap": flat(torch.stack(stepper.w_tap)), "w_res": flat(torch.stack(stepper.w_res)),
        "b_res": flat(torch.stack(stepper.b_res)), "w_skip": flat(stepper.w_skip), "b_skip": flat(stepper.b_skip),
        "w_h1": flat(stepper.h1[0]), "b_h1": flat(stepper.h1[1]),
        "w_h2": flat(stepper.h2[0]), "b_h2": flat(stepper.h2[1]),
    }
    span_max = max(stepper.spans)
    rings = torch.zeros(layers, span_max, batch, residual)
    spans = np.ascontiguousarray(stepper.spans, dtype=np.int32)
    backs = np.ascontiguousarray([b for taps in stepper.taps for b in taps] or [0], dtype=np.int32)
    audio = torch.zeros(batch, length)
    start = 0
    if prompt is not None:
        start = prompt.shape[-1]
        audio[:, :start] = prompt.float().cpu()
    if noise is not None:
        noise = noise.float().cpu()
        expected = (batch, length) if dist.name in ("gaussian", "logistic") else (batch, per_step, length)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        noise = noise.reshape(batch, per_step, length)
    if (lpc is None) != (teacher.lpc is None):
        raise ValueError("pass lpc=teacher.predictor(mel) exactly when the teacher has linear prediction")
    order, loc = 0, slice(0, 0)
    if lpc is not None:
        order, loc = lpc.shape[1] - 1, dist.location_slice()
        if dist.scale_slice().start != loc.stop:
            raise ValueError("the C loop expects the log scales right after the locations")
        lpc = lpc.detach().float().cpu()
    check_lag(teacher, lag)
    taps = teacher.period_taps
    if lag is not None:
        lag = lag.detach().double().cpu()
    n_params = dist.num_params
    params = torch.zeros(length, batch, n_params) if return_params else None
    prev = torch.zeros(batch)
    work = torch.zeros(batch * (residual + kernel * residual + 2 * gate + layers * gate + skip + hidden + n_params))
    w_cond = stepper.w_cond.float() if stepper.has_cond else None
    conv_bias = stepper.conv_bias.float()
    assert _lib is not None  # built: unsupported() said so
    for t0 in range(0, length, chunk):
        n = min(chunk, length - t0)
        if w_cond is not None:
            proj = torch.einsum("lgc,bcn->nlbg", w_cond, cond[:, :, t0 : t0 + n]) + conv_bias[None, :, None, :]
        else:
            proj = conv_bias[None, :, None, :].expand(n, -1, batch, -1)
        proj = flat(proj)
        if noise is not None:
            eps = noise[:, :, t0 : t0 + n].permute(2, 0, 1).contiguous()  # (n, B, Q)
        elif dist.name in ("gaussian", "logistic"):  # standard draws: its own sampler at location 0, log scale 0
            eps = dist.sample(torch.zeros(n, 2, batch)).contiguous()
        else:
            eps = torch.rand(n, batch, per_step)
        coeffs = flat(lpc[:, :, t0 : t0 + n].permute(2, 0, 1)) if lpc is not None else None  # (n, B, 1 + p)
        lags = lag[:, t0 : t0 + n].t().contiguous() if lag is not None else None  # (n, B) float64
        step_temps = temps[:, t0 : t0 + n].t().contiguous() if temps is not None else None  # (n, B)
        _lib.wavenet_steps(
            n, batch, layers, residual, gate, skip, hidden, kernel, _ptr(proj),
            *(_ptr(w[k]) for k in ("w_in", "b_in", "w_tap", "w_res", "b_res", "w_skip", "b_skip", "w_h1", "b_h1",
                                   "w_h2", "b_h2")),
            _ptr(rings), span_max, spans.ctypes.data_as(ctypes.c_void_p), backs.ctypes.data_as(ctypes.c_void_p),
            _ptr(audio), length, ctypes.c_long(t0), start, _ptr(eps),
            _ptr(params[t0 : t0 + n]) if params is not None else None, _ptr(prev),
            1 if mode == "mean" else 0, ctypes.c_float(temperature), _ptr(step_temps),
            ctypes.c_float(getattr(dist, "log_scale_min", 0.0)), _ptr(work), KINDS[dist.name], n_params, per_step,
            getattr(dist, "num_bins", 0), _ptr(table), _ptr(coeffs), order, loc.start, loc.stop - loc.start,
            _ptr(lags), taps,
        )
    if params is not None:  # return_params
        return audio, params.permute(1, 2, 0).contiguous()
    return audio
