"""Shared fixtures: small synthetic corpora written to temporary folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from distill.data.corpus import harmonic_signal, write_synthetic_corpus

SR = 16000


def harmonic(seconds: float, f0: float, seed: int, sr: int = SR) -> np.ndarray:
    """A speech-like test signal (`distill.data.corpus.harmonic_signal`)."""
    return harmonic_signal(seconds, f0, seed, sr)


def write_corpus(folder: Path, count: int = 6, seconds: float = 1.0) -> Path:
    return write_synthetic_corpus(folder, count, seconds, SR)


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


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`, the README's command) each worker, and every process it starts, computes
    on one thread: two workers share the two cores instead of four threads fighting over them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where a CUDA device is usable."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
