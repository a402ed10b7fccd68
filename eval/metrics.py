"""Quality metrics against a reference: PESQ (wideband / narrowband), multi-resolution STFT
distance and log-mel L1.

PESQ runs in worker processes: the C implementation is not thread-safe, and separate processes
use all cores. An utterance PESQ cannot score (too short, no speech found) becomes NaN with the
reason recorded, never an exception.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from distill.audio import resample

PESQ_RATES = {"wb": 16000, "nb": 8000}


@dataclass
class PesqResult:
    score: float  # NaN when PESQ could not score the pair
    reason: str = ""  # why it is NaN


def _pesq_one(args: tuple) -> tuple[float, str]:
    from pesq import PesqError, pesq

    ref, deg, rate, mode = args
    try:
        return float(pesq(rate, ref, deg, mode)), ""
    except PesqError as err:  # NoUtterancesError, BufferTooShortError, ...
        detail = err.args[0] if err.args else ""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return math.nan, f"{type(err).__name__}: {detail}"
    except (ValueError, RuntimeError) as err:
        return math.nan, f"{type(err).__name__}: {err}"


def pesq_scores(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], sample_rate: int, mode: str = "wb", workers: int | None = None
) -> list[PesqResult]:
    """PESQ of each (reference (T,), degraded (T,)) pair. Audio is resampled to 16 kHz (wb) or 8 kHz (nb)."""
    if mode not in PESQ_RATES:
        raise ValueError(f"PESQ mode must be 'wb' or 'nb', got {mode!r}")
    rate = PESQ_RATES[mode]
    jobs = []
    for ref, deg in pairs:
        n = min(ref.shape[-1], deg.shape[-1])
        ref_at_rate = resample(torch.as_tensor(ref[..., :n]).float(), sample_rate, rate).numpy().astype(np.float64)
        deg_at_rate = resample(torch.as_tensor(deg[..., :n]).float(), sample_rate, rate).numpy().astype(np.float64)
        jobs.append((ref_at_rate, deg_at_rate, rate, mode))
    if not jobs:
        return []
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers == 1:
        results = [_pesq_one(job) for job in jobs]
    else:
        # fork: workers need only numpy and pesq (no torch threads), and start in milliseconds
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            results = list(pool.map(_pesq_one, jobs))
    return [PesqResult(score, reason) for score, reason in results]


def stft_distance(ref: torch.Tensor, deg: torch.Tensor, resolutions=((512, 128), (1024, 256), (2048, 512))) -> float:
    """Multi-resolution STFT distance: mean over resolutions of spectral convergence + log-magnitude L1."""
    n = min(ref.shape[-1], deg.shape[-1])
    ref, deg = ref[..., :n].float(), deg[..., :n].float()
    total = 0.0
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft)
        # constant padding: reflection needs clips longer than n_fft / 2
        r = torch.stft(ref, n_fft, hop, window=window, pad_mode="constant", return_complex=True).abs().clamp(min=1e-7)
        d = torch.stft(deg, n_fft, hop, window=window, pad_mode="constant", return_complex=True).abs().clamp(min=1e-7)
        convergence = torch.linalg.norm(r - d) / torch.linalg.norm(r)
        log_l1 = (r.log() - d.log()).abs().mean()
        total += float(convergence + log_l1)
    return total / len(resolutions)


def mel_l1(ref_mel: torch.Tensor, deg_mel: torch.Tensor) -> float:
    """Mean absolute difference of two log-mels (n_mels, F), over their common frames."""
    n = min(ref_mel.shape[-1], deg_mel.shape[-1])
    return float((ref_mel[..., :n] - deg_mel[..., :n]).abs().mean())
