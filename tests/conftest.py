"""Shared fixtures: small synthetic corpora written to temporary folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16000


def harmonic(seconds: float, f0: float, seed: int, sr: int = SR) -> np.ndarray:
    """A speech-like test signal: a few harmonics of a gliding f0 with a slow amplitude envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    return (0.25 * x * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write_corpus(folder: Path, count: int = 6, seconds: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sf.write(str(folder / f"utt{i:02d}.wav"), harmonic(seconds, 110 + 20 * i, seed=i), SR, subtype="PCM_16")
    return folder


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """Six 1-second harmonic signals at 16 kHz, with train/valid/test lists."""
    root = write_corpus(tmp_path_factory.mktemp("synth"))
    (root / "train.txt").write_text("\n".join(f"utt{i:02d}" for i in range(4)) + "\n")
    (root / "valid.txt").write_text("utt04\n")
    (root / "test.txt").write_text("utt05\n")
    return root


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    """The CLI sets up its own handler and stops propagation; tests read warnings through caplog."""
    logger = logging.getLogger("wavedistill")
    logger.propagate = True
    for h in list(logger.handlers):
        if getattr(h, "_wavedistill", False):
            logger.removeHandler(h)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA device is usable."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
