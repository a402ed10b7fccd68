"""The builders of what the trainer composes around a model (the role of AudioCraft's
`solvers/builders.py`): the optimiser, the LR schedule and the EMA of the weights, each from the
`train` section of a config. The trainer, the bench and scripts that drive training themselves use
these, so that one config gives one optimiser everywhere."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import cast

import torch

from distill.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig, annealing: bool = False) -> float:
    """Multiplier of `cfg.lr` at optimiser step `step` (0-based): linear warm-up, then the schedule, times
    `cfg.anneal_factor` in the annealing phase: from step (1 - anneal_fraction) x steps on, or from when
    the trainer says so (`annealing`: the same fraction of a time budget, `train.max_minutes` or
    `train.max_cpu_minutes`)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.anneal_fraction > 0 and step >= (1.0 - cfg.anneal_fraction) * cfg.steps:
        annealing = True
    anneal = cfg.anneal_factor if annealing else 1.0
    if cfg.schedule == "constant":
        return anneal
    if cfg.schedule == "step":
        return anneal * cfg.decay_gamma ** (step // max(1, cfg.decay_every))
    # cosine from lr at the end of warm-up down to lr_min at cfg.steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr_min / cfg.lr if cfg.lr > 0 else 0.0
    return anneal * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW at `cfg.lr` with `cfg.betas` (two numbers: TrainConfig checks) and `cfg.weight_decay`; fused:
    one kernel for all parameters, and it can skip a non-finite step on the device (found_inf)."""
    return torch.optim.AdamW(list(params), lr=cfg.lr, betas=cast("tuple[float, float]", tuple(cfg.betas)),
                             weight_decay=cfg.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    annealing: Callable[[], bool] = lambda: False) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR multiplier `lr_factor` per optimiser step; `annealing()` says whether the wall-clock
    budget's annealing phase has begun (the trainer's clock)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, annealing()))


def apply_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                   cfg: TrainConfig) -> None:
    """After a resume: a restored optimiser's state carries the hyper-parameters it was saved with; the
    run's (possibly overridden) `cfg` wins: its betas, weight decay and LR at the schedule's position."""
    for group in optimizer.param_groups:
        group["betas"] = tuple(cfg.betas)
        group["weight_decay"] = cfg.weight_decay
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(scheduler.last_epoch, cfg)


def build_ema(model: torch.nn.Module, cfg: TrainConfig) -> EMA | None:
    """The EMA of `model`'s weights at `cfg.ema_decay`; None when it is 0 (off)."""
    return EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None


class EMA:
    """Exponential moving average of a model's weights, used for validation and evaluation.

    After optimiser update n (1-based) the average moves towards the live weights:
        ema <- d_n * ema + (1 - d_n) * weights,   d_n = min(decay, (1 + n) / (10 + n))
    The warm-up of d_n keeps short runs from being dominated by the initial weights. (Note the
    direction: some public vocoder code swaps the two factors, which freezes the EMA at init.)
    Buffers (e.g. normalisation statistics) are copied, not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, applied: torch.Tensor | None = None) -> None:
        """One step of the average. applied: a 0-dim bool tensor, False when the optimiser skipped
        this step (non-finite loss); the average then stays as it is, decided on the device."""
        self.updates += 1
        d = self.current_decay()
        ema_params: list[torch.Tensor] = list(self.model.parameters())
        if ema_params:
            params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
            # ema += w (p - ema), three fused kernels; w a 0-dim device tensor when it depends on `applied`
            # (the Tensor overload of _foreach_mul_: no .item(), so no host-device sync on a GPU)
            weight = 1.0 - d if applied is None else applied.to(ema_params[0].dtype) * (1.0 - d)
            delta = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(delta, weight)
            torch._foreach_add_(ema_params, delta)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        from distill.train.checkpoint import load_state

        load_state(self.model, state["model"], "EMA")
        self.updates = int(state["updates"])
