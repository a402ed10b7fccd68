"""The training loop: exact resume, EMA, schedules, non-finite handling, signals, logging, DDP."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import pytest
import torch

from distill.config import TrainConfig
from distill.errors import CheckpointError, TrainingDiverged
from distill.train.checkpoint import load_checkpoint
from distill.train.optim import EMA, lr_factor
from distill.train.trainer import Trainer
from tests.toy import ToyConfig, ToyTask, free_port


def toy_config(corpus, **train) -> ToyConfig:
    cfg = ToyConfig()
    cfg.data.corpus = str(corpus)
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def state(run_dir) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "latest.pt")


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bit_identical(synth_corpus, tmp_path, caplog):
    straight = tmp_path / "straight"
    Trainer(ToyTask(toy_config(synth_corpus, steps=8, schedule="cosine", warmup_steps=2)), straight).fit()

    halves = tmp_path / "halves"
    cfg = toy_config(synth_corpus, steps=8, schedule="cosine", warmup_steps=2)
    Trainer(ToyTask(cfg), halves).fit(until_step=4)  # stops as an interrupted run does
    with caplog.at_level(logging.INFO, logger="wavedistill"):
        Trainer(ToyTask(cfg), halves, resume=True).fit()
    # the log names the step file it resumed from (latest.pt was a link to it, and has moved on since)
    assert f"resumed from {halves / 'checkpoints' / 'step_00000004.pt'} at step 4" in caplog.text

    a, b = state(straight), state(halves)
    assert a["step"] == b["step"] == 8
    assert a["batches_consumed"] == b["batches_consumed"] == 8
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"]["model"], b["ema"]["model"])
    assert a["scheduler"] == b["scheduler"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert_same_tensors(sa, sb)
    # and the run did something: the weights moved away from their initial values
    first = load_checkpoint(halves / "checkpoints" / "step_00000004.pt")
    assert not torch.equal(first["model"]["proj.weight"], b["model"]["proj.weight"])


def test_training_lowers_the_loss_and_logs(synth_corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=40, log_every=5, valid_every=20, checkpoint_every=20)), run).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    for key in ("loss/l1", "train/grad_norm", "train/lr", "train/samples_per_s", "train/nonfinite_skipped"):
        assert key in train[-1]
    valid = [r for r in records if "valid/loss/l1" in r]
    assert [r["step"] for r in valid] == [20, 40]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()
    ckpt = state(run)
    assert ckpt["task"] == "toy" and ckpt["model_class"] == "tests.toy:ToyVocoder"
    assert ckpt["model_args"] == {"n_mels": 80, "hop_length": 256, "context": 2, "dropout": 0.1}
    assert ckpt["features"]["hop_length"] == 256 and ckpt["config"]["train"]["steps"] == 40
    assert len(ckpt["rng"]) == 1 and set(ckpt["rng"][0]) == {"python", "numpy", "torch", "cuda"}


def test_keeps_last_k_checkpoints_plus_latest(synth_corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=10, checkpoint_every=2, keep_last=2)), run).fit()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.pt", "step_00000008.pt", "step_00000010.pt"]
    assert state(run)["step"] == 10


def test_existing_run_is_not_overwritten_without_resume(synth_corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=2)), run).fit()
    before = (run / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(ToyTask(toy_config(synth_corpus, steps=2)), run).fit()
    assert (run / "checkpoints" / "latest.pt").read_bytes() == before


def test_nonfinite_losses_are_skipped_and_counted(synth_corpus, tmp_path):
    run = tmp_path / "run"
    # calls 3 and 4 give NaN: two skipped updates within the run's 6 steps
    task = ToyTask(toy_config(synth_corpus, steps=6, checkpoint_every=100, log_every=2), nan_steps=(3, 4))
    Trainer(task, run).fit()
    ckpt = state(run)
    assert ckpt["step"] == 6 and ckpt["nonfinite_skipped"] == 2 and ckpt["batches_consumed"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(v).all() for v in ckpt["ema"]["model"].values())
    assert all(torch.isfinite(v).all() for s in ckpt["optimizer"]["state"].values() for v in s.values())
    # the optimiser counted only the 4 applied updates (its bias correction is not advanced by a skip)
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {4}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if "train/nonfinite_skipped" in r}
    assert [train[s]["train/nonfinite_skipped"] for s in (2, 4, 6)] == [0, 2, 2]
    assert "loss" not in train[4]  # the window of steps 3-4 had no applied step: no mean to report
    assert all(math.isfinite(train[s]["loss"]) for s in (2, 6))


def test_a_skipped_step_leaves_weights_ema_and_optimiser_untouched(synth_corpus, tmp_path):
    run = tmp_path / "run"
    cfg = toy_config(synth_corpus, steps=6, checkpoint_every=1, ema_decay=0.9)
    Trainer(ToyTask(cfg, nan_steps=(5,)), run).fit()
    before, after = (load_checkpoint(run / "checkpoints" / f"step_0000000{n}.pt") for n in (4, 5))
    assert_same_tensors(before["model"], after["model"])
    assert_same_tensors(before["ema"]["model"], after["ema"]["model"])
    for sa, sb in zip(before["optimizer"]["state"].values(), after["optimizer"]["state"].values(),
                      strict=True):
        assert_same_tensors(sa, sb)
    assert not torch.equal(after["model"]["proj.weight"], state(run)["model"]["proj.weight"])  # step 6 applied


def test_too_many_nonfinite_in_a_row_stops_with_last_good_checkpoint(synth_corpus, tmp_path):
    run = tmp_path / "run"
    cfg = toy_config(synth_corpus, steps=20, checkpoint_every=2, log_every=2, max_nonfinite_in_row=3)
    task = ToyTask(cfg, nan_steps=range(5, 100))
    # steps 5-6 skipped (a run of 2: checkpoint 6 is written, with step 4's weights); at step 8 the run is 4
    with pytest.raises(TrainingDiverged, match="4 non-finite losses in a row before step 8.*step_00000006.pt"):
        Trainer(task, run).fit()
    ckpt = state(run)
    assert ckpt["step"] == 6
    assert_same_tensors(ckpt["model"], load_checkpoint(run / "checkpoints" / "step_00000004.pt")["model"])
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_sigterm_checkpoints_after_the_step_and_resume_matches(synth_corpus, tmp_path):
    straight = tmp_path / "straight"
    Trainer(ToyTask(toy_config(synth_corpus, steps=6, checkpoint_every=100)), straight).fit()
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=6, checkpoint_every=100), signal_at=3), run).fit()
    assert state(run)["step"] == 3
    Trainer(ToyTask(toy_config(synth_corpus, steps=6, checkpoint_every=100)), run, resume=True).fit()
    assert_same_tensors(state(straight)["model"], state(run)["model"])


def test_the_public_seam_trains_as_fit_does(synth_corpus, tmp_path):
    """build() / train_step() / state(): three steps by hand give fit()'s weights, step and data position."""
    Trainer(ToyTask(toy_config(synth_corpus, steps=3)), tmp_path / "fit").fit()
    trainer = Trainer(ToyTask(toy_config(synth_corpus, steps=3)), tmp_path / "seam")
    trainer.build()
    for _ in range(3):
        trainer.train_step()
    by_hand = trainer.state()
    trainer.close()
    fitted = state(tmp_path / "fit")
    assert by_hand["step"] == fitted["step"] == 3
    assert by_hand["batches_consumed"] == fitted["batches_consumed"]
    assert_same_tensors(by_hand["model"], fitted["model"])
    assert_same_tensors(by_hand["ema"]["model"], fitted["ema"]["model"])


def test_init_from_loads_weights_only(synth_corpus, tmp_path):
    first = tmp_path / "first"
    Trainer(ToyTask(toy_config(synth_corpus, steps=4)), first).fit()
    trainer = Trainer(ToyTask(toy_config(synth_corpus, steps=0)), tmp_path / "second",
                      init_from=first / "checkpoints" / "latest.pt")
    trainer.build()
    assert trainer.step == 0
    assert torch.equal(trainer.model.proj.weight, state(first)["model"]["proj.weight"])


def test_lr_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine", lr_min=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    step = TrainConfig(schedule="step", decay_every=50, decay_gamma=0.5)
    assert [lr_factor(s, step) for s in (0, 49, 50, 149)] == [1.0, 1.0, 0.5, 0.25]
    # annealing: the last fifth of the steps at a quarter of the schedule's LR, on top of any schedule
    anneal = TrainConfig(steps=100, warmup_steps=10, anneal_fraction=0.2, anneal_factor=0.25)
    assert [lr_factor(s, anneal) for s in (0, 9, 79, 80, 99)] == [0.1, 1.0, 1.0, 0.25, 0.25]
    assert lr_factor(50, anneal, annealing=True) == 0.25  # the trainer's clock says so
    assert lr_factor(80, dataclasses.replace(cfg, anneal_fraction=0.2)) == pytest.approx(0.25 * lr_factor(80, cfg))


def test_ema_moves_towards_the_weights():
    model = torch.nn.Linear(3, 1)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = min(0.9, 2 / 11)  # warm-up: (1 + n) / (10 + n) with n = 1
    expected = d * start + (1 - d) * model.weight.detach()
    assert torch.allclose(ema.model.weight, expected)
    assert not ema.model.weight.requires_grad
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.model.weight, model.weight, atol=1e-6)


# ----------------------------------------------------------------------------- DDP (2 CPU processes, gloo)


def _ddp_worker(rank: int, world: int, port: int, corpus: str, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = toy_config(corpus, steps=6, batch_size=2, checkpoint_every=3)
    cfg.model.dropout = 0.0
    Trainer(ToyTask(cfg, with_discriminator=True), run_dir).fit()  # leaves the process group itself


def test_ddp_two_cpu_processes_match_one_process_with_the_global_batch(synth_corpus, tmp_path):
    import torch.multiprocessing as mp

    ddp_run = tmp_path / "ddp"
    mp.start_processes(_ddp_worker, args=(2, free_port(), str(synth_corpus), str(ddp_run)),
                       nprocs=2, start_method="spawn", join=True)
    single = tmp_path / "single"
    cfg = toy_config(synth_corpus, steps=6, batch_size=4, checkpoint_every=3)
    cfg.model.dropout = 0.0
    Trainer(ToyTask(cfg, with_discriminator=True), single).fit()

    a, b = state(ddp_run), state(single)
    assert a["world_size"] == 2 and len(a["rng"]) == 2
    # the model and a second model with its own optimiser (a discriminator), each wrapped for DDP
    for mine, theirs in ((a["model"], b["model"]), (a["discriminator"]["model"], b["discriminator"]["model"])):
        for key in mine:
            # Adam normalises tiny gradients, so summation-order rounding shows up at ~1e-6 after 6 steps;
            # different data or unsynchronised gradients would differ by ~1e-3 (the weights move ~1e-2).
            assert torch.allclose(mine[key], theirs[key], atol=2e-5, rtol=0), key
    halfway = load_checkpoint(single / "checkpoints" / "step_00000003.pt")
    assert not torch.allclose(a["discriminator"]["model"]["weight"], halfway["discriminator"]["model"]["weight"])
    moved = b["model"]["proj.weight"] - halfway["model"]["proj.weight"]
    assert moved.abs().max() > 1e-3
    # only rank 0 wrote: one config, one metrics file, one set of checkpoints
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == [
        "latest.pt", "step_00000003.pt", "step_00000006.pt"]
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]


def test_data_order_does_not_depend_on_loader_workers(synth_corpus, tmp_path):
    runs = []
    for workers in (0, 2):
        cfg = toy_config(synth_corpus, steps=4, checkpoint_every=100)
        cfg.data.num_workers = workers
        Trainer(ToyTask(cfg), tmp_path / f"w{workers}").fit()
        runs.append(state(tmp_path / f"w{workers}"))
    assert_same_tensors(runs[0]["model"], runs[1]["model"])


def test_amp_choice_per_device():
    from distill.errors import ConfigError
    from distill.train.trainer import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16  # explicit CPU bf16 autocast is allowed
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        amp_dtype("fp16", cpu)


def test_resume_applies_an_overridden_lr_and_trims_the_interrupted_log(synth_corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=8, checkpoint_every=4, log_every=2)), run).fit(until_step=6)
    # a run that logged step 6 but died before its step-6 checkpoint: point latest.pt back at step 4
    (run / "checkpoints" / "latest.pt").unlink()
    os.link(run / "checkpoints" / "step_00000004.pt", run / "checkpoints" / "latest.pt")
    Trainer(ToyTask(toy_config(synth_corpus, steps=8, checkpoint_every=4, log_every=2, lr=1e-5)), run,
            resume=True).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]  # step 6 once, from the resumed run
    assert [r for r in records if "loss" in r][-1]["train/lr"] == pytest.approx(1e-5)


def test_a_skipped_discriminator_step_is_counted_and_leaves_its_weights(synth_corpus, tmp_path):
    """A non-finite discriminator loss skips that discriminator update (its weights stay), not the model's;
    train/disc_skipped logs the share of the window's steps whose discriminator update was skipped."""
    cfg = toy_config(synth_corpus, steps=4, log_every=4, checkpoint_every=100, valid_every=100)
    trainer = Trainer(ToyTask(cfg, with_discriminator=True, disc_nan_steps=(1, 2)), tmp_path / "r")
    trainer.build()
    weights = []
    for _ in range(4):
        trainer.train_to(trainer.step + 1)
        weights.append(trainer.discriminator.weight.detach().clone())
    assert not torch.equal(weights[0], weights[3]) and torch.equal(weights[0], weights[2])
    assert trainer.nonfinite_skipped == 0  # the model's updates all went through
    trainer.close()
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["train/disc_skipped"] for r in logged if "train/disc_skipped" in r]
    assert shares == [0.0, 1.0, 1.0, 0.0]  # one step per window here


@pytest.mark.parametrize("budget", ["max_minutes", "max_cpu_minutes"])
def test_a_time_budget_stops_with_a_checkpoint(synth_corpus, tmp_path, budget):
    run = tmp_path / "run"
    Trainer(ToyTask(toy_config(synth_corpus, steps=50, checkpoint_every=100, **{budget: 1e-6})), run).fit()
    assert state(run)["step"] == 1


def test_the_cpu_budget_counts_this_process_only():
    """train.max_cpu_minutes reads the process's CPU clock: time spent waiting (here sleeping, as when
    other processes hold the cores) does not count, while the wall budget's clock runs on."""
    from distill.train.trainer import TimeBudget

    cpu, wall = TimeBudget(0, 1.0, 0.2), TimeBudget(1.0 / 60, 0, 0.2)  # one CPU minute; one wall second
    time.sleep(0.3)
    assert cpu.spent() < 0.01 and 0.29 <= wall.spent() < 0.9
    assert TimeBudget(0, 0, 0.2).spent() == 0.0 and not TimeBudget(0, 0, 0.2).anneals
    assert cpu.anneals and not TimeBudget(0, 1.0, 0.0).anneals


def test_the_compute_count_adds_up_over_resumes(synth_corpus, tmp_path, monkeypatch, caplog):
    """train/cpu_minutes and train/wall_minutes, and every checkpoint's `compute`, sum the training loop's
    clocks over every invocation: a resumed run goes on from what its checkpoint holds. A checkpoint
    written before the count existed resumes with a warning and counts from its step."""
    from distill.train.trainer import ComputeClock

    ticks = {"cpu_s": iter(range(0, 10_000, 3)), "wall_s": iter(range(0, 10_000, 6))}  # 3 (6) s a reading
    monkeypatch.setattr(ComputeClock, "_CLOCKS", {k: (lambda it=it: float(next(it))) for k, it in ticks.items()})
    cfg = toy_config(synth_corpus, steps=6, log_every=1, checkpoint_every=3, valid_every=100)
    run = tmp_path / "run"
    Trainer(ToyTask(cfg), run).fit(until_step=3)
    first = state(run)["compute"]
    assert first["cpu_s"] > 0 and first["wall_s"] == 2 * first["cpu_s"]
    Trainer(ToyTask(cfg), run, resume=True).fit()
    final = state(run)["compute"]
    logged = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    cpu = [r["train/cpu_minutes"] for r in logged]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert cpu == sorted(cpu) and cpu[3] > first["cpu_s"] / 60  # the resumed leg adds to the first one's
    assert final["cpu_s"] > first["cpu_s"] and logged[-1]["train/wall_minutes"] == pytest.approx(2 * cpu[-1])

    old = load_checkpoint(run / "checkpoints" / "latest.pt")  # as a checkpoint that predates the count
    del old["compute"]
    for name in ("step_00000006.pt", "latest.pt"):
        path = run / "checkpoints" / name
        if not path.is_symlink():
            torch.save(old, path)
    with caplog.at_level(logging.WARNING, logger="wavedistill"):
        Trainer(ToyTask(toy_config(synth_corpus, steps=8, log_every=1, checkpoint_every=3, valid_every=100)), run,
                resume=True).fit()
    assert "predates the compute count" in caplog.text and "count from step 6" in caplog.text
    assert state(run)["step"] == 8 and 0 < state(run)["compute"]["cpu_s"] < final["cpu_s"]


@pytest.mark.parametrize("clock, budget", [("monotonic", "max_minutes"), ("process_time", "max_cpu_minutes")])
def test_the_last_part_of_a_time_budget_is_annealed(synth_corpus, tmp_path, monkeypatch, clock, budget):
    """train.anneal_fraction with train.max_minutes (wall time) or train.max_cpu_minutes (the process's CPU
    time): the LR drops for the last fraction of the budget and the run stops at its end."""
    import distill.train.trainer

    ticks = iter(range(0, 10_000))  # one second per reading of the budget's clock
    monkeypatch.setattr(distill.train.trainer.time, clock, lambda: float(next(ticks)))
    cfg = toy_config(synth_corpus, steps=1000, log_every=1, checkpoint_every=1000, valid_every=1000, lr=1e-3,
                     anneal_fraction=0.25, anneal_factor=0.1, **{budget: 0.5})  # 30 s: anneal from 22.5 s
    run = tmp_path / "run"
    Trainer(ToyTask(cfg), run).fit()
    lrs = [r["train/lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert 25 <= len(lrs) <= 31  # stopped by the clock
    high = sum(lr == pytest.approx(1e-3) for lr in lrs)
    assert lrs[:high] == [pytest.approx(1e-3)] * high and lrs[high:] == [pytest.approx(1e-4)] * (len(lrs) - high)
    assert 20 <= high <= 24 and len(lrs) - high >= 5  # the last quarter, give or take the step in flight


def test_fp16_style_scaler_survives_skipped_steps(synth_corpus, tmp_path):
    """With a grad scaler, a skipped step must still close the scaler's step (regression test)."""
    trainer = Trainer(ToyTask(toy_config(synth_corpus, steps=4, checkpoint_every=100), nan_steps=(1,)), tmp_path / "r")
    trainer.build()
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer.train_to(4)
    assert trainer.step == 4 and trainer.nonfinite_skipped == 1
    assert trainer.scaler.get_scale() == 2.0**15  # the overflow halved the scale
    trainer.close()


def test_fp16_scale_overflows_are_skipped_but_not_counted_as_divergence(synth_corpus, tmp_path):
    """An infinite loss scale overflows every gradient while the loss stays finite: the scaler skips
    the updates (routine under fp16), and the run neither counts them nor stops as diverged."""
    cfg = toy_config(synth_corpus, steps=4, checkpoint_every=100, log_every=2, max_nonfinite_in_row=2)
    trainer = Trainer(ToyTask(cfg), tmp_path / "r")
    trainer.build()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))
    trainer.train_to(4)
    assert trainer.step == 4 and trainer.nonfinite_skipped == 0
    assert_same_tensors(before, trainer.model.state_dict())  # every update was skipped
    trainer.close()


def test_a_compiled_run_trains_like_an_eager_one_and_saves_plain_weights(synth_corpus, tmp_path):
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = toy_config(synth_corpus, steps=3, valid_every=100, compile=compile_)
        cfg.model.dropout = 0.0  # compiled dropout draws from another RNG stream
        Trainer(ToyTask(cfg), tmp_path / name).fit()
        runs[name] = state(tmp_path / name)["model"]
    assert runs["eager"].keys() == runs["compiled"].keys()  # no "_orig_mod." prefixes: loads without compiling
    for key in runs["eager"]:
        assert torch.allclose(runs["eager"][key], runs["compiled"][key], atol=1e-4), key


def test_model_flops_and_their_fraction_of_the_peak_are_logged(synth_corpus, tmp_path):
    class Counted(ToyTask):
        def flops_per_sample(self, model):
            return 2e6

    run = tmp_path / "run"
    Trainer(Counted(toy_config(synth_corpus, steps=4, log_every=2, peak_tflops=0.5)), run).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train/tflops" in r][-1]
    assert last["train/tflops"] == pytest.approx(last["train/samples_per_s"] * 2e6 / 1e12)
    assert last["train/mfu"] == pytest.approx(last["train/tflops"] / 0.5)
    plain = tmp_path / "plain"  # a task that does not know its FLOPs logs neither
    Trainer(ToyTask(toy_config(synth_corpus, steps=2, log_every=2)), plain).fit()
    assert not any("train/tflops" in line for line in (plain / "metrics.jsonl").read_text().splitlines())


def test_flops_per_sample_of_the_teacher_and_the_distillation_tasks():
    from distill.config import load_config
    from students.task import DistillTask, StudentConfig
    from teachers.task import TeacherConfig, TeacherTask

    root = Path(__file__).resolve().parents[3] / "configs"
    teacher = TeacherTask(load_config(TeacherConfig, root / "teacher" / "gaussian_tiny.yaml"))
    model = teacher.build_model()
    assert teacher.flops_per_sample(model) == 6 * model.stack.macs_per_sample()
    task = DistillTask(load_config(StudentConfig, root / "student" / "clarinet_tiny.yaml"))
    student = task.build_model()
    expected = 6 * sum(f.macs_per_sample() for f in student.flows) + 4 * task.teacher.stack.macs_per_sample()
    assert task.flops_per_sample(student) == expected


@pytest.mark.cuda
def test_a_training_step_on_cuda_never_waits_for_the_device(synth_corpus, tmp_path):
    cfg = toy_config(synth_corpus, steps=100, device="cuda")
    trainer = Trainer(ToyTask(cfg, nan_steps=(3,)), tmp_path / "run")
    trainer.build()
    trainer.train_step()  # lazy set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):  # the second of these has a NaN loss: skipped on the device
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer._window.nonfinite() == (1, 1) and trainer.step == 4
    trainer.close()
