"""Timing: median and spread of repeated calls after warm-up, the GPU synchronised around each call,
and the real-time factor with the settings a reader needs to place it (device, dtype, batch, length,
torch version, CPU threads)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from distill.train.hardware import device_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median and spread (seconds) of `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats,
            "warmup": warmup}


def real_time_factor(fn: Callable[[], object], audio_seconds: float, device: torch.device, *, batch: int = 1,
                     dtype: str = "float32", repeats: int = 5, warmup: int = 1) -> dict:
    """RTF = wall seconds of synthesis / seconds of audio produced (lower is faster; < 1 is faster
    than real time) and its inverse, x real time. `fn` synthesises `batch` items of `audio_seconds` each."""
    t = timed(fn, device, repeats, warmup)
    produced = audio_seconds * batch
    return {
        "rtf": t["median_s"] / produced,
        "rtf_min": t["min_s"] / produced,
        "rtf_max": t["max_s"] / produced,
        "x_real_time": produced / t["median_s"],
        **t,
        "batch": batch,
        "audio_seconds": audio_seconds,
        "dtype": dtype,
        "device": str(device),
        "device_name": device_name(device),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
