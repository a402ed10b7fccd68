"""Run logging: TensorBoard plus a `metrics.jsonl` twin (one JSON object per logging call).

Only the main process writes; on other ranks every method is a no-op. When a run resumes at step
n, what was logged after n (by the interrupted run) is dropped from TensorBoard and metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        # None while disabled: every use is behind `self.enabled`
        self.writer: Any = None  # a tensorboard SummaryWriter
        self._jsonl: Any = None  # the open metrics.jsonl
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            purge = None if resume_step is None else resume_step + 1  # TensorBoard purges steps >= this
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
            metrics = run_dir / "metrics.jsonl"
            if resume_step is not None and metrics.exists():
                kept = [line for line in metrics.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resume_step]
                metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            self._jsonl = open(metrics, "a", encoding="utf-8")

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log each value under its own tag (the tag is the key, e.g. `loss/kl`)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for tag, value in clean.items():
            self.writer.add_scalar(tag, value, step)
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def audio(self, tag: str, x: torch.Tensor | np.ndarray, sample_rate: int, step: int) -> None:
        """x: (T,) float in [-1, 1]."""
        if not self.enabled:
            return
        x = torch.as_tensor(x).detach().float().cpu().reshape(1, -1).clamp(-1, 1)
        self.writer.add_audio(tag, x, step, sample_rate=sample_rate)

    def figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure (closed after logging)."""
        if not self.enabled:
            return
        self.writer.add_figure(tag, figure, step, close=True)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self._jsonl.close()
            self.enabled = False
