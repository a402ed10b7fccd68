"""The distillation task: frozen teacher, gradients into the student only, KL falls, bad pairings refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.config import load_config
from distill.errors import ConfigError
from distill.train.checkpoint import load_checkpoint
from distill.train.trainer import Trainer
from students.task import DistillTask, StudentConfig
from teachers.pretrained import demo_teacher_path, file_sha256, single_voice_teacher_path
from tests.models import SMALL, save_teacher

ROOT = Path(__file__).resolve().parents[2]


def config(*extra: str, preset: str = "configs/student/clarinet_tiny.yaml") -> StudentConfig:
    return load_config(StudentConfig, preset, SMALL + list(extra))


def test_a_step_changes_the_student_and_leaves_the_teacher_bit_identical(tmp_path):
    task = DistillTask(config("loss.weights.loss/stft=1.0"))
    assert task.teacher_info["path"] == str(demo_teacher_path())  # no teacher given: the shipped default
    trainer = Trainer(task, tmp_path / "run")
    trainer.build()
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_to(1)
    assert all(torch.equal(v, task.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert all(p.grad is None for p in task.teacher.parameters())
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any(k.startswith("flows.0.") for k in changed) and any(k.startswith("flows.1.") for k in changed)
    assert not any(k.startswith("upsampler.") for k in changed)  # the frozen copy of the teacher's upsampler
    trainer.close()


def test_the_mel_term_alone_trains_a_teacher_free_student(tmp_path):
    task = DistillTask(config("loss.weights={loss/kl: 0, loss/kl_reg: 0, loss/stft: 0, loss/mel: 1.0}",
                              "train.steps=2"))
    assert not task.uses_teacher
    Trainer(task, tmp_path / "run").fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mel = [r["loss/mel"] for r in records if "loss/mel" in r]
    assert mel and all(0 < v < 5 for v in mel) and not any("loss/kl" in r or "loss/stft" in r for r in records)


def test_distillation_lowers_the_kl_markedly_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    teacher = single_voice_teacher_path()  # the KL's fall in 60 steps, measured with this teacher (slt's)
    Trainer(DistillTask(config(f"teacher={teacher}", "train.steps=60", "loss.weights.loss/stft=0")), run).fit()
    kl = [r["loss/kl"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert sum(kl[-2:]) / 2 < 0.5 * sum(kl[:2]) / 2, kl
    extra = load_checkpoint(run)["extra"]["teacher"]
    assert extra["path"] == str(teacher) and extra["sha256"] == file_sha256(teacher)
    assert extra["features"]["hop_length"] == 256


def test_monte_carlo_distillation_from_a_mixture_of_logistics_teacher(tmp_path):
    teacher = save_teacher(tmp_path / "mol.pt", "mol", {"num_components": 2, "num_bins": 65536, "log_scale_min": -7.0})
    task = DistillTask(config(f"teacher={teacher}", "train.steps=2", "model.linear_prediction=false",
                              preset="configs/student/parallel_wavenet_tiny.yaml"))
    assert not task.closed_form
    Trainer(task, tmp_path / "run").fit()
    record = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-2]
    assert {"loss/kl", "loss/power", "distill/entropy", "distill/cross_entropy",
            "student/flow0_mean_log_s"} <= set(record)
    assert record["distill/cross_entropy"] - record["distill/entropy"] == pytest.approx(record["loss/kl"], rel=1e-6)
    # logistic entropy log s + 2 at the initial s_tot, before the flows have moved far
    assert record["distill/entropy"] == pytest.approx(math.log(task.config.model.initial_scale) + 2, abs=0.3)


def test_a_mu_law_teacher_cannot_be_distilled(tmp_path):
    teacher = save_teacher(tmp_path / "mulaw.pt", "mulaw")
    with pytest.raises(ConfigError, match="'mulaw' output .* needs a gaussian or mol teacher"):
        DistillTask(config(f"teacher={teacher}"))


def test_incompatible_loss_choices_are_config_errors():
    with pytest.raises(ConfigError, match="kl_reg"):
        DistillTask(config("model.distribution=logistic"))
    with pytest.raises(ConfigError, match="closed_form needs a Gaussian"):
        DistillTask(config("model.distribution=logistic", "loss.weights.loss/kl_reg=0", "loss.kl_method=closed_form"))
    with pytest.raises(ConfigError, match="unknown term"):
        config("loss.weights.loss/kll=1")


def test_distill_command_runs_from_the_shipped_teacher(tmp_path):
    result = subprocess.run([sys.executable, "-m", "distill.cli", "distill", "--out", str(tmp_path / "d"),
                             "--steps", "2", *SMALL], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "d")["task"] == "student"


def test_a_student_takes_its_teachers_settings_unless_the_user_wrote_them(tmp_path, capsys):
    from distill.cli.main import main

    # a teacher without pre-emphasis or a predictor, with 3 context frames; the tiny preset has 0.85, an LP
    # student and 2 frames: the student takes the teacher's, and says so
    teacher = save_teacher(tmp_path / "t.pt", "gaussian", overrides=("features.preemphasis=0.0", "data.mel_context=3"))
    result = subprocess.run([sys.executable, "-m", "distill.cli", "distill", "--teacher", teacher, "--out",
                             str(tmp_path / "d"), "--steps", "1", *SMALL], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "taking the teacher's settings: features.preemphasis=0.0, data.mel_context=3, " \
           "model.linear_prediction=False" in result.stderr
    ran = load_checkpoint(tmp_path / "d")["config"]
    assert ran["features"]["preemphasis"] == 0.0 and ran["data"]["mel_context"] == 3
    assert ran["model"]["linear_prediction"] is False
    # a setting the user wrote that contradicts the teacher: one line naming both values, nothing trained
    own = tmp_path / "mine.yaml"
    own.write_text(f"extends: {ROOT / 'configs/student/clarinet_tiny.yaml'}\nfeatures:\n  preemphasis: 0.85\n")
    for how in (["features.preemphasis=0.85"], ["--config", str(own)]):  # in this process: the same command
        code = main(["distill", "--teacher", teacher, "--out", str(tmp_path / "e"), "--steps", "1", *SMALL, *how])
        error = capsys.readouterr().err
        (line,) = [line for line in error.splitlines() if "error:" in line]
        assert code != 0 and "Traceback" not in error, error
        assert "preemphasis: 0.0 in teacher t.pt vs 0.85" in line
        assert not (tmp_path / "e" / "checkpoints").exists()


def _fixed_batch(task, seed=0):
    train, _ = task.build_datasets()
    return {k: torch.stack([train[(i, seed + i)][k] for i in range(2)]) for k in ("audio", "mel")}


def _step_with_known_noise(task, monkeypatch):
    """One training step whose noise z is fixed, and the student's output for that same z."""
    student = task.build_model()
    batch = _fixed_batch(task)
    z = torch.randn(2, batch["audio"].shape[1])
    monkeypatch.setattr(type(student), "sample_noise", lambda self, shape, device=None, dtype=None: z)
    values = task.training_step(student, batch, 0)
    return student, batch, values, student(z, batch["mel"])


def test_the_kl_is_student_against_teacher_at_the_same_step(monkeypatch):
    """Checked against the teacher evaluated step by step (p(x_t | x_<t) by construction) and the
    KL written out by hand: an off-by-one or a reversed KL would not match."""
    from distill.nn.losses import gaussian_kl
    from teachers.sampling import incremental_forward

    task = DistillTask(config())
    student, batch, values, out = _step_with_known_noise(task, monkeypatch)
    teacher, mel = task.teacher, batch["mel"]
    stepwise = incremental_forward(teacher, out.x.detach(), teacher.conditioning(mel), teacher.predictor(mel))
    k = teacher.crop_warmup()  # the crop's first steps (the predictor's missing history) are left out
    lsm, temperature = task.config.loss.log_scale_min, task.config.loss.teacher_temperature
    assert student.lpc is not None and temperature == 0.7  # the preset: an LP student, the teacher at 0.7
    stepwise = teacher.dist.temper(stepwise, temperature)
    expected = gaussian_kl(out.mu_tot, out.log_s_tot, stepwise[:, 0], stepwise[:, 1], lsm)[:, k:].mean()
    assert values["loss/kl"].item() == pytest.approx(expected.item(), rel=1e-4)
    reverse = gaussian_kl(stepwise[:, 0], stepwise[:, 1], out.mu_tot, out.log_s_tot, lsm)[:, k:].mean()
    assert abs(reverse.item() - expected.item()) > 1e-3  # the test can tell the two directions apart


def test_gradients_flow_through_the_students_sample_into_the_teachers_view(monkeypatch):
    task = DistillTask(config())
    batch = _fixed_batch(task)

    def grads(detach_sample: bool) -> torch.Tensor:
        torch.manual_seed(3)
        student = task.build_model()
        if detach_sample:
            forward = type(task.teacher).forward_cond
            monkeypatch.setattr(type(task.teacher), "forward_cond",
                                lambda self, y, cond, lpc=None, lag=None: forward(self, y.detach(), cond, lpc, lag))
        torch.manual_seed(4)
        task.training_step(student, batch, 0)["loss/kl"].backward()
        monkeypatch.undo()
        return torch.cat([p.grad.flatten() for p in student.flows.parameters() if p.grad is not None])

    through, cut = grads(False), grads(True)
    assert not torch.allclose(through, cut, atol=1e-6)  # the pathwise term through x is there


def test_contrastive_term_pushes_away_from_the_teacher_given_another_mel(monkeypatch):
    from distill.nn.losses import gaussian_kl

    task = DistillTask(config("loss.weights.loss/contrastive=0.3", "loss.weights.loss/kl_reg=0",
                              "loss.weights.loss/stft=0"))
    student, batch, values, out = _step_with_known_noise(task, monkeypatch)
    swapped = task.teacher.dist.temper(task.teacher(out.x, batch["mel"][[1, 0]]), task.config.loss.teacher_temperature)
    k = task.teacher.crop_warmup()
    mismatched = gaussian_kl(out.mu_tot, out.log_s_tot, swapped[:, 0], swapped[:, 1],
                             task.config.loss.log_scale_min)[:, k:].mean()
    assert values["loss/contrastive"].item() == pytest.approx(-mismatched.item(), rel=1e-4)
    assert values["loss"].item() == pytest.approx((values["loss/kl"] - 0.3 * mismatched).item(), rel=1e-4)


def _grad_norm(loss, params) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))


@pytest.mark.parametrize("preset", ["parallel_wavenet_tiny", "parallel_wavenet"])
def test_the_power_loss_gradient_is_of_the_kls_order_at_initialisation(tmp_path, preset):
    """The paper's raw power loss (summed squared power over bins) had ~300x the KL's gradient norm at
    initialisation, so both presets optimised it instead of the KL."""
    # the tiny preset distils an LP teacher (an LP student), the paper-size one a plain teacher
    lp = ("model.linear_prediction.order=8",) if preset == "parallel_wavenet_tiny" else ()
    teacher = save_teacher(tmp_path / "mol.pt", "mol", {"num_components": 2, "num_bins": 65536, "log_scale_min": -7.0},
                           overrides=lp)
    task = DistillTask(load_config(StudentConfig, f"configs/student/{preset}.yaml",
                                   [f"teacher={teacher}", "loss.mc_samples=4", "data.segment_length=4096",
                                    "features.preemphasis=0.85"]))
    torch.manual_seed(0)
    student = task.build_model()
    values = task.training_step(student, _fixed_batch(task), 0)
    params = [p for p in student.parameters() if p.requires_grad]
    weights = task.config.loss.weights
    kl = _grad_norm(weights["loss/kl"] * values["loss/kl"], params)
    power = _grad_norm(weights["loss/power"] * values["loss/power"], params)
    assert weights["loss/power"] > 0 and 0.05 < power / kl < 10, (power, kl)


def test_the_logged_cross_entropy_is_the_gaussian_cross_entropy_and_minus_the_entropy_the_kl(monkeypatch):
    task = DistillTask(config("loss.log_scale_min=-7", "loss.teacher_temperature=1.0"))
    student, batch, values, out = _step_with_known_noise(task, monkeypatch)
    with torch.no_grad():
        out.log_s_tot[:, ::2] = -9.0  # below the KL's clamp of -7 on every other step: where they disagreed
    params = task.teacher(out.x.detach(), batch["mel"])
    terms = task.kl_terms(student, out, params)
    # H(q, p) = log s_p + log(2 pi) / 2 + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2), both scales clamped at -7
    log_s_q, log_s_p = out.log_s_tot.clamp(min=-7.0), params[:, 1].clamp(min=-7.0)
    cross = log_s_p + 0.5 * math.log(2 * math.pi) + (
        torch.exp(2 * log_s_q) + (out.mu_tot - params[:, 0]) ** 2) / (2 * torch.exp(2 * log_s_p))
    assert torch.allclose(terms["cross_entropy"], cross, rtol=1e-4, atol=1e-4)
    assert torch.allclose(terms["cross_entropy"] - terms["entropy"], terms["kl"], atol=1e-4)


def test_a_random_frozen_upsampler_is_a_config_error(tmp_path):
    frozen = ("model.upsampler_from_teacher=false", "model.train_upsampler=false")
    teacher = save_teacher(tmp_path / "t.pt", "gaussian", overrides=("model.upsample=transposed",))
    with pytest.raises(ConfigError, match="randomly initialised .* upsampler"):
        DistillTask(config(f"teacher={teacher}", *frozen))
    DistillTask(config(*frozen))  # the shipped teacher's stretch upsampler starts as a moving average: allowed


def test_a_preemphasised_lp_teacher_distils_in_its_domain_and_the_student_deemphasises(tmp_path, monkeypatch):
    from distill.audio.mel import deemphasis
    from distill.errors import CheckpointError
    from students.iaf import synthesize

    teacher = save_teacher(tmp_path / "lp.pt", "gaussian", overrides=("model.linear_prediction.order=8",))
    with pytest.raises(CheckpointError, match="preemphasis: 0.85 .* vs 0.0"):
        DistillTask(config(f"teacher={teacher}", "features.preemphasis=0.0"))  # not the teacher's pre-emphasis
    task = DistillTask(config(f"teacher={teacher}", "loss.weights.loss/stft=1.0"))
    student, batch, values, out = _step_with_known_noise(task, monkeypatch)
    assert student.preemphasis == 0.85 and task.teacher.lpc is not None
    assert all(torch.isfinite(values[k]) for k in ("loss/kl", "loss/stft"))
    monkeypatch.undo()
    mel = batch["mel"][:1]
    z = torch.randn(1, (mel.shape[-1] - 2 * task.config.data.mel_context) * 256)
    expected = deemphasis(student(z, mel).x, 0.85).clamp(-1, 1)  # flows, the mel's all-pole filter, de-emphasis
    assert torch.allclose(synthesize(student, mel, z=z, chunk=0), expected, atol=1e-5)


def test_a_linear_prediction_student_starts_as_its_lp_only_teacher_and_distils_its_tempered_law(tmp_path):
    """An LP teacher with a zero head is the LP-only model, N(0, 1) in units of the expected residual; an
    LP student with s_tot = 1 and mu_tot = 0 is that same law: the predictor's terms cancel and the KL
    is 0 at every step (none of the 64 nats/sample a student without the predictor starts from). At
    loss.teacher_temperature T the target is N(0, T): KL = log T + (1 - T^2) / (2 T^2)."""
    teacher = save_teacher(tmp_path / "lp.pt", "gaussian", overrides=("model.linear_prediction.order=8",))
    for temperature in (1.0, 0.5):
        task = DistillTask(config(f"teacher={teacher}", "model.linear_prediction=true", "model.initial_scale=1.0",
                                  "loss.log_scale_min=-30", f"loss.teacher_temperature={temperature}"))
        student = task.build_model()
        assert student.lpc is not None and student.lpc.order == task.teacher.lpc.order == 8
        batch = _fixed_batch(task)
        z = torch.randn(2, batch["audio"].shape[1])
        out = student(z, batch["mel"])
        terms = task.kl_terms(student, out, task.teacher_law(out.x, batch["mel"]))
        kl = terms["kl"][out.log_s_tot > -8.0]  # where tempering stays above the teacher's log-scale floor (-9)
        expected = math.log(temperature) + (1 - temperature**2) / (2 * temperature**2)
        assert kl.numel() > 1000 and torch.allclose(kl, torch.full_like(kl, expected), atol=1e-4), (kl.min(), kl.max())
    # and the loss trains: a step changes the flows
    values = task.training_step(student, batch, 0)
    values["loss"].backward()
    assert student.flows[0].head[-1].weight.grad.abs().sum() > 0


def test_linear_prediction_needs_a_teacher_with_a_predictor():
    from students.task import build_student
    from teachers.wavenet import TeacherModelConfig

    with pytest.raises(ConfigError, match="needs a teacher with linear prediction"):
        build_student(config("model.linear_prediction=true"), TeacherModelConfig())
    with pytest.raises(ConfigError, match="needs a teacher with linear prediction"):  # no teacher: the defaults'
        build_student(config("model.linear_prediction=true"))
    assert build_student(config("model.linear_prediction=false")).teacher_config == TeacherModelConfig()


def test_the_shared_upsampler_and_predictor_are_computed_once_with_the_same_numbers(tmp_path):
    """With the presets' frozen copy of the teacher's upsampler (and an LP student's predictor), one step
    computes them once for both models; the losses equal a step that computes them separately."""
    task = DistillTask(config("loss.weights.loss/stft=1.0"))
    assert task.teacher_info["path"] == str(demo_teacher_path())  # no teacher given: the shipped default
    trainer = Trainer(task, tmp_path / "run")
    trainer.build()
    student = trainer.model
    assert student.lpc is not None and task.shares_upsampler(student)
    batch = next(iter(trainer.loader))
    calls = {"upsampler": 0, "predictor": 0}
    for module, name in ((task.teacher.upsampler, "upsampler"), (student.upsampler, "upsampler"),
                         (task.teacher.lpc, "predictor"), (student.lpc, "predictor")):
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    torch.manual_seed(3)
    shared = task.training_step(student, batch, 1)
    assert calls == {"upsampler": 1, "predictor": 1}
    task._shares_upsampler = False  # the old path: each model its own upsampler
    torch.manual_seed(3)
    separate = task.training_step(student, batch, 1)
    assert calls["upsampler"] == 3
    for key in ("loss/kl", "loss/stft", "distill/entropy"):
        assert torch.equal(shared[key], separate[key]), key
    trainer.close()
