"""Adversarial distillation in the shared trainer: the discriminator's own optimiser, its start step, its
state in the run's checkpoints (exact resume) and not in the student, and the configuration's one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import load_config
from distill.errors import ConfigError
from distill.train.checkpoint import load_checkpoint
from distill.train.trainer import Trainer
from eval.bench import GRID
from students.pretrained import load_student
from students.task import DistillTask, StudentConfig
from tests.models import SMALL
from tests.toy import free_port

ADVERSARIAL = ["adversarial.discriminator=dilated_conv", "adversarial.layers=3", "adversarial.channels=8",
               "loss.weights.loss/adv=1.0", "loss.weights.loss/fm=2.0", "loss.weights.loss/stft=1.0"]


def config(*extra: str) -> StudentConfig:
    return load_config(StudentConfig, "configs/student/clarinet_tiny.yaml", SMALL + ADVERSARIAL + list(extra))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_discriminator_is_bit_identical(tmp_path):
    cfg = config("train.steps=4", "adversarial.start_step=1")
    Trainer(DistillTask(cfg), tmp_path / "straight").fit()
    Trainer(DistillTask(cfg), tmp_path / "halves").fit(until_step=2)
    Trainer(DistillTask(cfg), tmp_path / "halves", resume=True).fit()
    a, b = (load_checkpoint(tmp_path / run) for run in ("straight", "halves"))
    assert a["step"] == b["step"] == 4
    assert same(a["model"], b["model"]) and same(a["ema"]["model"], b["ema"]["model"])
    assert same(a["discriminator"]["model"], b["discriminator"]["model"])
    assert a["discriminator"]["scheduler"] == b["discriminator"]["scheduler"]
    for sa, sb in zip(a["discriminator"]["optimizer"]["state"].values(),
                      b["discriminator"]["optimizer"]["state"].values(), strict=True):
        assert same(sa, sb)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    assert {"loss/adv", "loss/fm", "loss/disc", "train/disc_grad_norm"} <= set(last)
    # resumed with other discriminator settings: the run's config wins over those its optimiser state saved
    changed = Trainer(DistillTask(config("train.steps=4", "adversarial.start_step=1", "adversarial.lr=3e-4",
                                         "adversarial.betas=[0.8, 0.99]")), tmp_path / "halves", resume=True)
    changed.build()
    group = changed.d_optimizer.param_groups[0]
    assert (group["lr"], group["betas"]) == (3e-4, (0.8, 0.99)) and changed.d_scheduler.base_lrs == [3e-4]
    changed.close()
    # the student loads from the run as any student does; the discriminator is the run's, not the model's
    student, payload = load_student(tmp_path / "straight")
    assert student.lpc is not None
    assert not any("parametrizations" in k for k in payload["model"])  # no weight-normed conv of the discriminator


def test_before_its_start_step_a_discriminator_changes_nothing(tmp_path):
    """The student's weights equal those of a run without a discriminator, and the discriminator's stay
    as they were built (its terms, and its own updates, begin at adversarial.start_step)."""
    Trainer(DistillTask(config("train.steps=3", "adversarial.start_step=100")), tmp_path / "waiting").fit()
    plain = load_config(StudentConfig, "configs/student/clarinet_tiny.yaml",
                        SMALL + ["train.steps=3", "loss.weights.loss/stft=1.0"])
    Trainer(DistillTask(plain), tmp_path / "plain").fit()
    waiting, without = load_checkpoint(tmp_path / "waiting"), load_checkpoint(tmp_path / "plain")
    assert same(waiting["model"], without["model"]) and "discriminator" not in without
    assert not waiting["discriminator"]["optimizer"]["state"]  # never stepped
    # its weights are those it was built with (the trainer builds it after the model, from the run's seed)
    task = DistillTask(config())
    torch.manual_seed(task.config.train.seed)
    task.build_model()
    fresh = task.build_discriminator()
    assert fresh is not None and same(fresh.state_dict(), waiting["discriminator"]["model"])


def test_each_discriminator_kind_builds_its_own_model():
    from distill.nn.discriminators import DilatedConvDiscriminator, HiFiGANDiscriminator

    dilated = DistillTask(config()).build_discriminator()
    assert isinstance(dilated, DilatedConvDiscriminator) and len(dilated.convs) == 3  # adversarial.layers
    assert isinstance(DistillTask(config("adversarial.discriminator=hifigan")).build_discriminator(),
                      HiFiGANDiscriminator)
    plain = load_config(StudentConfig, "configs/student/clarinet_tiny.yaml", SMALL)
    assert DistillTask(plain).build_discriminator() is None


def test_the_adversarial_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match="loss/adv and loss/fm need adversarial.discriminator"):
        DistillTask(load_config(StudentConfig, "configs/student/clarinet_tiny.yaml",
                                SMALL + ["loss.weights.loss/adv=1.0"]))
    with pytest.raises(ConfigError, match="a discriminator needs loss/adv or loss/fm"):
        DistillTask(config("loss.weights.loss/adv=0", "loss.weights.loss/fm=0"))
    with pytest.raises(ConfigError, match="adversarial.discriminator must be"):
        config("adversarial.discriminator=melgan")
    with pytest.raises(ConfigError, match="not fp16"):
        DistillTask(config("train.amp=fp16"))
    with pytest.raises(ConfigError, match="no loss term is active before adversarial.start_step"):
        DistillTask(config("loss.weights.loss/stft=0", "loss.weights.loss/kl=0", "loss.weights.loss/kl_reg=0",
                           "adversarial.start_step=10"))
    for bad in ("adversarial.betas=[0.5]", "adversarial.layers=1", "adversarial.weight_decay=-1"):
        with pytest.raises(ConfigError, match="adversarial."):
            config(bad)


def test_the_grid_presets_make_tasks_and_a_teacher_free_step_never_runs_the_teacher(tmp_path):
    tasks = {name: DistillTask(load_config(StudentConfig, f"configs/student/{name}.yaml", SMALL)) for name in GRID}
    assert [name for name, task in tasks.items() if not task.uses_teacher] == ["clarinet_tiny_stft",
                                                                                "clarinet_tiny_stft_gan"]
    task = tasks["clarinet_tiny_stft_gan"]
    task.config.adversarial.start_step = 0  # the discriminator's terms from the first step

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher-free step ran the teacher")

    task.teacher_law = no_teacher  # type: ignore[method-assign]
    trainer = Trainer(task, tmp_path / "run")
    trainer.build()
    trainer.train_to(2)
    trainer.close()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    assert "loss/kl" not in last and {"loss/stft", "loss/adv", "loss/disc"} <= set(last)


@pytest.mark.parametrize("kind", ["dilated_conv", "hifigan"])
def test_a_discriminator_trains_under_bf16_autocast(tmp_path, kind):
    Trainer(DistillTask(config("train.steps=2", "train.amp=bf16", f"adversarial.discriminator={kind}")),
            tmp_path / "run").fit()
    record = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line][-1]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss/adv", "loss/fm", "loss/disc"))


def test_bench_times_a_grid_step_and_names_the_discriminators_share():
    from eval.bench import bench_grid

    rows = bench_grid(torch.device("cpu"), quick=True, presets=("clarinet_tiny_stft_gan",))
    assert [r["what"] for r in rows] == ["grid step, clarinet_tiny_stft_gan",
                                         "grid step, clarinet_tiny_stft_gan: the discriminator's step",
                                         "grid step, clarinet_tiny_stft_gan: the discriminator's share of the step"]
    assert rows[0]["samples_per_s"] > 0 and rows[1]["median_s"] > 0 and 0 < rows[2]["ratio"] < 1


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(DistillTask(config("train.steps=3", "adversarial.start_step=1")), run_dir)
    trainer.fit()  # leaves the process group itself
    torch.save({"model": trainer.model.state_dict(), "discriminator": trainer.discriminator.state_dict()},
               f"{out}/rank{rank}.pt")


def test_adversarial_distillation_under_ddp_keeps_both_models_in_step_across_ranks(tmp_path):
    """Two CPU processes (gloo) distil with a discriminator: the student and the discriminator, each
    wrapped for DDP, end bit-identical on both ranks (their gradients are averaged; each rank draws its
    own noise and crops), the discriminator has trained, and rank 0's checkpoint holds it."""
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert same(a["model"], b["model"]) and same(a["discriminator"], b["discriminator"])
    saved = load_checkpoint(tmp_path / "run")
    assert saved["world_size"] == 2 and saved["discriminator"]["optimizer"]["state"]  # it took its steps
    assert same(saved["discriminator"]["model"], a["discriminator"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/adv", "loss/disc"} <= set([r for r in records if "loss" in r][-1])
