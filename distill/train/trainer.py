"""The one training loop. Tasks (`distill.train.task.Task`) supply the model, data and losses.

What the loop does for every task: AMP (bf16 on CUDA, off on CPU), EMA weights, grad-norm
clipping, LR schedule, periodic validation on the EMA weights, TensorBoard + metrics.jsonl,
a progress bar on a terminal (log lines otherwise), atomic checkpoints every N steps (and on
SIGINT/SIGTERM, after the current step), exact `resume`, non-finite losses skipped and counted,
and DDP under `torchrun`.

No step waits for the device: whether a loss is finite is a device flag that the fused AdamW step,
the EMA and the loss sums read on the device; the host reads the sums and the non-finite counts
every `train.log_every` steps and before each checkpoint. So `train.steps` counts the steps taken,
skipped ones included (they are few, and logged), and a run of `train.max_nonfinite_in_row`
non-finite steps is noticed at the next log line or checkpoint.

Resuming restores weights, EMA, optimiser, scheduler, grad scaler, every rank's RNG states and
the data position, so N steps straight and N/2 + resume + N/2 give bit-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from distill.config import save_config, to_dict
from distill.data.datasets import StreamSampler
from distill.errors import CheckpointError, ConfigError, TrainingDiverged
from distill.train import distributed
from distill.train.checkpoint import (
    RESUME_KEYS,
    CheckpointManager,
    checkpoint_payload,
    class_path,
    load_checkpoint,
    load_state,
    model_record,
    rng_state,
    set_rng_state,
)
from distill.train.folders import RunLock, check_output_folder
from distill.train.hardware import device_name, peak_tflops
from distill.train.logger import RunLogger
from distill.train.optim import apply_settings, build_ema, build_optimizer, build_scheduler, lr_factor
from distill.train.task import Task

log = logging.getLogger("wavedistill")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on `device` (None = full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=off (or auto) on the CPU")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if mode == "bf16":
            raise ConfigError("train.amp=bf16 but this GPU has no bf16 support; use train.amp=fp16 or off")
        return None
    return torch.bfloat16


class TimeBudget:
    """An invocation's time budget: `max_minutes` of wall time and `max_cpu_minutes` of this process's CPU
    time (all its threads; time other processes take from the machine is not counted), either 0 = none.
    `spent()` is the larger fraction used (0 without a budget); the run stops past 1 and anneals from
    1 - `anneal_fraction` on."""

    def __init__(self, max_minutes: float, max_cpu_minutes: float, anneal_fraction: float) -> None:
        self._clocks = [(clock, clock(), minutes * 60) for clock, minutes in ((time.monotonic, max_minutes),
                                                                              (time.process_time, max_cpu_minutes))
                        if minutes > 0]
        self.anneals = bool(self._clocks) and anneal_fraction > 0

    def spent(self) -> float:
        return max(((clock() - start) / seconds for clock, start, seconds in self._clocks), default=0.0)


class ComputeClock:
    """The compute a run has spent inside its training loop, summed over every invocation (resumes
    included): the main process's CPU seconds (all its threads) and wall seconds. Logged as
    train/cpu_minutes and train/wall_minutes and kept in every checkpoint (`compute`), so a checkpoint
    says what budget it holds. The clocks are bound here, apart from `time`'s attributes."""

    _CLOCKS = {"cpu_s": time.process_time, "wall_s": time.monotonic}

    def __init__(self, carried: dict | None = None) -> None:
        self.carried = {k: float((carried or {}).get(k, 0.0)) for k in self._CLOCKS}
        self._marks: dict | None = None

    def start(self) -> None:
        self._marks = {k: clock() for k, clock in self._CLOCKS.items()}

    def stop(self) -> None:
        self.carried, self._marks = self.totals(), None

    def totals(self) -> dict:
        if self._marks is None:
            return dict(self.carried)
        return {k: self.carried[k] + clock() - self._marks[k] for k, clock in self._CLOCKS.items()}


class Trainer:
    """Train `task` in `run_dir`.

    resume: continue exactly from `run_dir/checkpoints/latest.pt` (starts fresh if there is none).
    init_from: a checkpoint whose model weights initialise a new run (optimiser etc. start fresh).
    """

    def __init__(self, task: Task, run_dir: str | Path, resume: bool = False, init_from: str | Path | None = None):
        self.task = task
        self.cfg = task.train_config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.init_from = init_from
        self.device = distributed.pick_device(self.cfg.device)
        self.dist = distributed.setup(self.device)
        self.amp = amp_dtype(self.cfg.amp, self.device)
        self.checkpoints = CheckpointManager(self.run_dir, self.cfg.keep_last)
        self.step = 0
        self.batches_consumed = 0
        self.nonfinite_skipped = 0
        self.compute = ComputeClock()
        self._stop_signal: int | None = None
        self.lock: RunLock | None = None

    # ------------------------------------------------------------------ the public seam
    # build() -> train_step() / train_to() -> state(): what fit() does, in parts, for the bench, the tests
    # and scripts that drive training themselves. `model`, `optimizer`, `loader` exist after build().

    def build(self) -> None:
        """Make the model (EMA, optimiser, schedule, data), resume from the run's checkpoint when asked,
        and take the run folder's lock (released by fit(), or by `close()`)."""
        cfg = self.cfg
        check_output_folder(self.run_dir, "the run folder (--out)")
        if self.dist.is_main:  # one run per folder: held until fit() ends (the kernel drops it on any exit)
            self.lock = RunLock(self.run_dir).acquire()
            removed = self.checkpoints.remove_temp_files()
            if removed:
                log.info("removed %d temporary file(s) left by an interrupted checkpoint write in %s",
                         removed, self.checkpoints.dir)
        if not self.resume and self.checkpoints.latest.exists():
            raise CheckpointError(
                f"{self.run_dir} already holds a run (checkpoints/latest.pt); pass --resume to continue it "
                "or choose another output folder"
            )
        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = self.task.build_model().to(self.device)
        if self.init_from is not None:
            payload = load_checkpoint(self.init_from)
            load_state(self.model, self.task.initial_weights(self.model, payload), f"model of {self.init_from}")
            log.info("initialised weights from %s (step %d)", self.init_from, payload["step"])
        self.task.setup(self.device)
        self.flops_per_sample = self.task.flops_per_sample(self.model)
        kind = "float32" if self.amp is None else "bfloat16"  # fp16 and bf16 share the tensor-core peak
        self.peak_tflops = cfg.peak_tflops or peak_tflops(device_name(self.device), kind)  # the user's figure wins
        params = self.task.trainable_parameters(self.model)
        self.params = list(params)
        self.optimizer = build_optimizer(self.params, cfg)
        self.annealing = False  # the time budget's annealing phase (train.anneal_fraction), per invocation
        self.scheduler = build_scheduler(self.optimizer, cfg, lambda: self.annealing)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.ema = build_ema(self.model, cfg)  # of the model only, never of a discriminator
        # a second model with its own optimiser (an adversarial discriminator), when the task has one
        self.discriminator = self.task.build_discriminator()
        if self.discriminator is not None:
            self.discriminator.to(self.device)
            self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
            d_cfg = self.task.discriminator_train_config()
            self.d_optimizer = build_optimizer(self.d_params, d_cfg)
            self.d_scheduler = build_scheduler(self.d_optimizer, d_cfg)
            self.task.discriminator = self.discriminator

        resumed_from = None
        found = self.checkpoints.newest_loadable() if self.resume else None
        if found is not None:
            resumed_from, payload = found
            if resumed_from.name != self.checkpoints.latest.name:
                log.info("resuming from %s, newer than checkpoints/latest.pt (a run stopped between the two writes)",
                         resumed_from.name)
            # RNG states must stay on the CPU; load_state_dict moves weights to the parameters' device
            self._restore(payload, resumed_from)
        else:
            if self.resume:
                log.info("no checkpoint in %s yet; starting from step 0", self.checkpoints.dir)
            seed_everything(cfg.seed + self.dist.rank)  # training randomness differs per rank
        if self.dist.is_main:
            save_config(self.task.config, self.run_dir / "config.yaml")
        # on every resume, drop what an interrupted run logged after its last checkpoint (all of it when it
        # never wrote one), so that each step appears once in metrics.jsonl and TensorBoard
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, resume_step=self.step if self.resume else None)
        self.train_model: torch.nn.Module | None = self.model  # None once dropped (_leave_process_group)
        self.train_discriminator = self.discriminator
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
            if self.discriminator is not None:
                self.train_discriminator = DistributedDataParallel(self.discriminator, device_ids=ids)
        if cfg.compile:
            # torch.compile of a Module returns a Module (OptimizedModule); its stub says a callable
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        train_data, self.valid_data = self.task.build_datasets()
        sampler = StreamSampler(
            # the tasks' datasets have a __len__ (torch's Dataset declares none)
            len(train_data), cfg.seed, self.dist.rank, self.dist.world_size,  # type: ignore[arg-type]
            start=self.batches_consumed * cfg.batch_size,
        )
        workers = getattr(getattr(self.task.config, "data", None), "num_workers", 0)
        self.loader: DataLoader | None = DataLoader(
            train_data,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=self.task.collate_fn,
            persistent_workers=workers > 0,
            drop_last=True,
            # Its own generator: the loader's per-iterator seed draw must not consume the global RNG,
            # or a resumed run's random draws would be shifted by one.
            generator=torch.Generator().manual_seed(cfg.seed + self.dist.rank),
        )
        self._batches: Any = None  # train_step's own iterator over the loader, made on first use
        self._window = StepWindow(self.device)

    def train_step(self, batch: Any = None) -> None:
        """One optimisation step of the training loop on `batch` (default: the loader's next batch), with
        its clipping, skip-on-non-finite, schedule and EMA; the step counter advances. Nothing waits for
        the device: the losses are summed on it (`train_to` logs them)."""
        assert self.train_model is not None and self.loader is not None, "call build() first"
        if batch is None:
            if self._batches is None:
                self._batches = iter(self.loader)
            batch = next(self._batches)
            self.batches_consumed += 1
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        self._train_step(self.train_model, to_device(batch, self.device), self._window, clip)

    def state(self) -> dict:
        """The checkpoint payload of this moment (weights, EMA, optimiser, schedule, data position and this
        process's RNG state): what `save_checkpoint` writes on a single process."""
        return self._payload([rng_state()])

    def close(self) -> None:
        """Release what build() holds (the logger's files, the run folder's lock); fit() does this itself."""
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _restore(self, payload: dict, path: Path) -> None:
        if payload.get("task") != self.task.name:
            raise CheckpointError(
                f"{path}: was written by task '{payload.get('task')}', not '{self.task.name}'; "
                "resume it with the command that created it"
            )
        missing = [k for k in RESUME_KEYS if k not in payload]
        if missing:
            raise CheckpointError(f"{path}: cannot resume from it: it has no {', '.join(missing)} (an exported or "
                                  "foreign checkpoint?); start a new run from its weights with --init instead")
        load_state(self.model, payload["model"], "model")
        if self.ema is not None:
            if payload["ema"] is None:
                raise CheckpointError(f"{path}: has no EMA weights but train.ema_decay > 0")
            self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        apply_settings(self.optimizer, self.scheduler, self.cfg)
        if self.discriminator is not None:
            saved = payload.get("discriminator")
            if saved is None:
                log.warning("%s: has no discriminator; the discriminator starts fresh at step %d",
                            self.checkpoints.named(path), int(payload["step"]))
            else:
                load_state(self.discriminator, saved["model"], "discriminator")
                self.d_optimizer.load_state_dict(saved["optimizer"])
                self.d_scheduler.load_state_dict(saved["scheduler"])
                apply_settings(self.d_optimizer, self.d_scheduler, self.task.discriminator_train_config())
        self.step = int(payload["step"])
        self.batches_consumed = int(payload["batches_consumed"])
        self.nonfinite_skipped = int(payload["nonfinite_skipped"])
        if "compute" not in payload:
            log.warning("%s predates the compute count: train/cpu_minutes and train/wall_minutes count from "
                        "step %d", self.checkpoints.named(path), self.step)
        self.compute = ComputeClock(payload.get("compute"))
        states = payload["rng"]
        if len(states) != self.dist.world_size:
            log.warning(
                "checkpoint was written by %d process(es), resuming with %d: data order continues, "
                "but random draws will not repeat those of an uninterrupted run",
                len(states), self.dist.world_size,
            )
            seed_everything(self.cfg.seed + self.step + self.dist.rank)
        else:
            set_rng_state(states[self.dist.rank])
        log.info("resumed from %s at step %d", self.checkpoints.named(path), self.step)

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, rng_states: list) -> dict:
        return checkpoint_payload(
            self.task.name, self.step, self.model.state_dict(), class_path(self.model),
            model_record(self.model), self.task.features(), to_dict(self.task.config),
            self.task.checkpoint_extra(), ema=self.ema.state_dict() if self.ema is not None else None,
            training={"batches_consumed": self.batches_consumed, "nonfinite_skipped": self.nonfinite_skipped,
                      "compute": self.compute.totals(),
                      "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "scaler": self.scaler.state_dict(), "rng": rng_states, "world_size": self.dist.world_size,
                      **({"discriminator": {"model": self.discriminator.state_dict(),
                                            "optimizer": self.d_optimizer.state_dict(),
                                            "scheduler": self.d_scheduler.state_dict()}}
                         if self.discriminator is not None else {})},
        )

    def save_checkpoint(self) -> Path | None:
        """Collective: every rank contributes its RNG state; the main process writes."""
        states = distributed.gather_objects(rng_state(), self.dist)
        path = None
        with distributed.main_only(self.dist, "writing the checkpoint") as is_main:
            if is_main:
                try:
                    path = self.checkpoints.save(self._payload(states))
                except OSError as err:  # a full disk, a folder gone read-only: earlier checkpoints are intact
                    last = self.checkpoints.latest if self.checkpoints.latest.exists() else None
                    raise CheckpointError(
                        f"{self.checkpoints.dir}: could not write the checkpoint of step {self.step} "
                        f"({err.strerror or err}); the last good one is {last or 'none'} (free space and --resume)"
                    ) from None
        return path

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        with distributed.main_only(self.dist, "validation") as is_main:
            if is_main and self.valid_data is not None:
                model = self.ema.model if self.ema is not None else self.model
                was_training = model.training
                model.eval()
                with torch.no_grad(), self._autocast():
                    results = self.task.validate(model, self.valid_data, self.logger, self.step)
                model.train(was_training)
                self.logger.scalars({f"valid/{k}": v for k, v in results.items()}, self.step)
                self.logger.flush()
        return results

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def fit(self, until_step: int | None = None) -> Path | None:
        """Train to `train.steps` (or stop early at `until_step`, with a checkpoint, as if interrupted),
        or until `train.max_minutes` of wall time (`train.max_cpu_minutes` of CPU time) have passed; returns
        the last checkpoint written."""
        cfg = self.cfg
        handlers = {}
        with contextlib.suppress(ValueError):  # not in the main thread: keep the default handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        bar = None
        last, ok = None, False
        try:
            # inside the try: a start that fails after taking the folder's lock (a run already there, a
            # checkpoint that cannot be resumed) still releases it and leaves the process group
            self.build()
            if self.dist.is_main and sys.stderr.isatty():
                bar = tqdm(total=cfg.steps, initial=self.step, desc=self.task.name, dynamic_ncols=True)
            last = self.train_to(cfg.steps if until_step is None else min(until_step, cfg.steps), bar)
            ok = True
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            if bar is not None:
                bar.close()
            self.close()
            self._leave_process_group(ok)
        return last

    def _leave_process_group(self, ok: bool) -> None:
        """Under torchrun: drop what holds the process group (the DDP wrapper and its reducer, the loader)
        and leave it now, so that its threads end before the interpreter's static destructors run; left
        to those, ~1 run in 8 aborted at exit (SIGABRT) after finishing its work, and torchrun failed the job."""
        if not self.dist.enabled:
            return
        self.train_model = getattr(self, "model", None)
        self.train_discriminator = getattr(self, "discriminator", None)
        self.loader = None
        gc.collect()
        distributed.cleanup(self.dist, wait=ok)

    def train_to(self, until_step: int, bar=None) -> Path | None:
        """The training loop from the current step to `until_step` (or a clock, or a signal): steps,
        logging, validation and checkpoints; returns the last checkpoint written. The step itself never
        waits for the device: finiteness, the skip decision, the counters and the loss sums stay on the
        device and are read every `log_every` steps and at checkpoints."""
        cfg = self.cfg
        budget = TimeBudget(cfg.max_minutes, cfg.max_cpu_minutes, cfg.anneal_fraction)
        model = self.train_model
        assert model is not None and self.loader is not None  # dropped only after the last loop
        model.train()
        data = iter(self.loader)
        window = StepWindow(self.device)
        last_ckpt = self.checkpoints.latest if self.step > 0 else None
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.compute.start()
        while self.step < until_step:
            batch = to_device(next(data), self.device)
            self.batches_consumed += 1
            self._train_step(model, batch, window, clip)
            if bar is not None:
                bar.update(1)
            spent = budget.spent()
            asked = self._stop_signal is not None or spent > 1.0
            anneal = not self.annealing and budget.anneals and spent >= 1.0 - cfg.anneal_fraction
            stop, anneal = distributed.any_ranks([asked, anneal], self.dist)  # one host collective per step
            if anneal and not self.annealing:
                self._start_annealing()

            finished = self.step >= until_step
            logging_now = self.step % cfg.log_every == 0 or finished
            checkpoint_now = self.step % cfg.checkpoint_every == 0 or finished or stop
            if logging_now or checkpoint_now:
                skipped, longest_run = window.nonfinite()
                self.nonfinite_skipped += skipped
                if skipped:
                    log.warning(
                        "%d non-finite loss(es) or gradient(s) up to step %d: those updates were skipped (%d in all)",
                        skipped, self.step, self.nonfinite_skipped,
                    )
                if longest_run >= cfg.max_nonfinite_in_row:
                    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise TrainingDiverged(
                        f"{longest_run} non-finite losses in a row before step {self.step} "
                        f"(train.max_nonfinite_in_row={cfg.max_nonfinite_in_row}); {where}; "
                        "lower train.lr or check the data"
                    )
            if logging_now:
                values = window.means()
                values["train/lr"] = self.optimizer.param_groups[0]["lr"]
                values["train/samples_per_s"] = window.samples_per_s()
                if self.flops_per_sample:  # model FLOPs achieved, and their fraction of the device's peak
                    values["train/tflops"] = values["train/samples_per_s"] * self.flops_per_sample / 1e12
                    if self.peak_tflops:
                        values["train/mfu"] = values["train/tflops"] / self.peak_tflops
                values["train/nonfinite_skipped"] = self.nonfinite_skipped
                totals = self.compute.totals()
                values["train/cpu_minutes"] = totals["cpu_s"] / 60
                values["train/wall_minutes"] = totals["wall_s"] / 60
                if self.ema is not None:
                    values["train/ema_decay"] = self.ema.current_decay()
                self.logger.scalars(values, self.step)
                if bar is not None:
                    bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}", refresh=False)
                elif self.dist.is_main:
                    log.info(
                        "step %d/%d  loss %.5g  grad_norm %.3g  lr %.3g  %.0f samples/s",
                        self.step, cfg.steps, values.get("loss", float("nan")),
                        values.get("train/grad_norm", float("nan")), values["train/lr"], values["train/samples_per_s"],
                    )
                window.reset()
            if self.step % cfg.valid_every == 0 or self.step == cfg.steps:
                self.validate()
            if checkpoint_now:
                last_ckpt = self.save_checkpoint() or last_ckpt
            if stop:
                log.warning("stopped at step %d (signal, train.max_minutes or train.max_cpu_minutes); "
                            "checkpoint written, continue with --resume", self.step)
                break
        self.compute.stop()
        return last_ckpt

    def _start_annealing(self) -> None:
        """The last `train.anneal_fraction` of the time budget: the LR drops to anneal_factor x the
        schedule's from the next step on, for the rest of this invocation (a resumed run starts at the full
        LR again and anneals at the end of its own budget)."""
        self.annealing = True
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.scheduler.last_epoch, self.cfg, True)
        if self.dist.is_main:
            log.info("step %d: the last %.0f%% of the time budget, LR x %.3g (train.anneal_fraction)",
                     self.step, 100 * self.cfg.anneal_fraction, self.cfg.anneal_factor)

    def _train_step(self, model: torch.nn.Module, batch: Any, window: StepWindow, clip: float) -> None:
        """Forward, backward, clipping, the update (skipped on the device when the loss or a gradient is
        not finite), the EMA and the window's sums: nothing here waits for the device (a CUDA test runs
        it under torch.cuda.set_sync_debug_mode("error"))."""
        with self._autocast():
            out = self.task.training_step(model, batch, self.step)
        loss = out["loss"]
        self.scaler.scale(loss).backward()
        # device flags, the same on every rank: the loss is finite everywhere ...
        loss_ok = distributed.all_ranks(torch.isfinite(loss.detach()), self.dist)
        if self.scaler.is_enabled():
            # fp16: the scaler skips updates whose gradients overflow and shrinks its scale (routine, not
            # divergence). A non-finite loss with finite gradients must be skipped too: poison them.
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_mul_(grads, torch.where(loss_ok, 1.0, float("nan")))
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        # ... and the update is applied (the gradients, all-reduced under DDP, are finite too)
        applied = loss_ok & torch.isfinite(grad_norm)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the fused optimiser reads the scaler's flag on the device
            self.scaler.update()
            diverged = ~loss_ok
        else:
            # read on the device by the fused AdamW step (an attribute torch's stub does not declare)
            self.optimizer.found_inf = (~applied).float()  # type: ignore[attr-defined]
            self.optimizer.step()
            diverged = ~applied
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, applied)
        if self.train_discriminator is not None:
            out = {**out, **self.discriminator_update(batch, clip)}
        self.step += 1
        window.add(out, grad_norm, applied, diverged, self.task.batch_samples(batch) * self.dist.world_size)

    def discriminator_update(self, batch: Any, clip: float) -> dict[str, torch.Tensor]:
        """The discriminator's update after the model's (its loss on the batch and on the model's output of
        this step, both detached), with its own clipping and skip-on-non-finite; its terms for the window
        (none before the task starts it). Nothing waits for the device."""
        assert self.train_discriminator is not None
        with self._autocast():
            out = self.task.discriminator_step(self.train_discriminator, batch, self.step)
        if out is None:
            return {}
        out["loss"].backward()
        ok = distributed.all_ranks(torch.isfinite(out["loss"].detach()), self.dist)
        norm = torch.nn.utils.clip_grad_norm_(self.d_params, clip)
        applied = ok & torch.isfinite(norm)
        self.d_optimizer.found_inf = (~applied).float()  # type: ignore[attr-defined]
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)
        self.d_scheduler.step()
        # a skipped discriminator step logs zeros, not NaN (its terms share the model's step window), and
        # counts in train/disc_skipped: the share of the window's (applied) steps whose discriminator
        # update was skipped
        terms = {k: v for k, v in out.items() if k != "loss"} | {"train/disc_grad_norm": norm}
        return {k: torch.where(applied, v.detach().float(), 0.0) for k, v in terms.items()} | {
            "train/disc_skipped": (~applied).float()}


class StepWindow:
    """What the loop accumulates between two log lines, kept on the device so that no step waits for it.

    Loss terms and the gradient norm are summed over the steps whose update was applied (a skipped
    step's values are NaN or inf); non-finite steps (a non-finite loss, or gradient outside fp16, whose
    scaler skips overflowing steps as routine) are counted, with the longest run of them in a row.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.run = torch.zeros((), dtype=torch.int64, device=device)  # current run of non-finite steps
        self.reset()
        self._pending_skipped = torch.zeros((), dtype=torch.int64, device=device)
        self._longest = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.good = torch.zeros((), dtype=torch.int64, device=self.device)
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, out: dict[str, torch.Tensor], grad_norm: torch.Tensor, applied: torch.Tensor,
            diverged: torch.Tensor, samples: int) -> None:
        terms = dict(out)
        terms["train/grad_norm"] = grad_norm
        for key, value in terms.items():
            value = torch.where(applied, value.detach().float(), 0.0)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.good += applied
        bad = diverged.long()
        self._pending_skipped += bad
        self.run = (self.run + 1) * bad
        self._longest = torch.maximum(self._longest, self.run)
        self.samples += samples

    def nonfinite(self) -> tuple[int, int]:
        """(non-finite steps since the last call, the longest run in a row so far): one host sync."""
        skipped, longest = torch.stack([self._pending_skipped, self._longest]).tolist()
        self._pending_skipped.zero_()
        return int(skipped), int(longest)

    def means(self) -> dict[str, float]:
        """Mean of every term over the applied steps of the window (one host sync); empty if none."""
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys] + [self.good.float()]).tolist()
        good = values.pop()
        return {k: v / good for k, v in zip(keys, values, strict=True)} if good else {}

    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)
