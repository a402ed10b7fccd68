"""The distillation objectives against Monte Carlo, and the spectral losses on identical signals."""

from __future__ import annotations

import math

import pytest
import torch

from distill.audio.mel import LogMel
from distill.config import FeatureConfig
from distill.nn.distributions import DiscretizedMixLogistic, Gaussian, Logistic
from distill.nn.losses import gaussian_kl, log_scale_regulariser, mel_loss, monte_carlo_kl, power_loss, stft_loss


def pairs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu_q, mu_p = (torch.randn(1, n, generator=g, dtype=torch.float64) * 0.1,
                  torch.randn(1, n, generator=g, dtype=torch.float64) * 0.1)
    ls_q, ls_p = (-3 + torch.rand(1, n, generator=g, dtype=torch.float64),
                  -3 + torch.rand(1, n, generator=g, dtype=torch.float64))
    return mu_q, ls_q, mu_p, ls_p


def test_kl_of_a_distribution_with_itself_is_zero():
    mu, ls, _, _ = pairs()
    assert torch.allclose(gaussian_kl(mu, ls, mu, ls), torch.zeros_like(mu), atol=1e-12)
    assert torch.equal(log_scale_regulariser(ls, ls), torch.zeros_like(ls))


def test_closed_form_gaussian_kl_equals_monte_carlo():
    torch.manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = pairs()
    closed = gaussian_kl(mu_q, ls_q, mu_p, ls_p)
    q, p = torch.stack([mu_q, ls_q], 1), torch.stack([mu_p, ls_p], 1)
    draws = Gaussian().sample(q.expand(200_000, -1, -1))
    mc = (Gaussian().log_prob(q, draws) - Gaussian().log_prob(p, draws)).mean(0, keepdim=True)
    assert torch.allclose(closed, mc, atol=0.02)
    assert (closed > 0).all()


def test_kl_clamps_log_scales_at_minus_seven():
    mu = torch.zeros(1, 1, dtype=torch.float64)
    assert torch.equal(gaussian_kl(mu, torch.full_like(mu, -12.0), mu, torch.full_like(mu, -3.0)),
                       gaussian_kl(mu, torch.full_like(mu, -7.0), mu, torch.full_like(mu, -3.0)))


def test_monte_carlo_kl_with_a_gaussian_teacher_matches_the_closed_form_and_passes_gradients():
    torch.manual_seed(1)
    mu_q, ls_q, mu_p, ls_p = pairs()
    q = torch.stack([mu_q, ls_q], 1).requires_grad_(True)
    p = torch.stack([mu_p, ls_p], 1)
    est = monte_carlo_kl(Gaussian(), q.expand(4000, -1, -1), Gaussian(), p.expand(4000, -1, -1), num_samples=16)
    assert torch.allclose(est.kl.mean(0, keepdim=True), gaussian_kl(mu_q, ls_q, mu_p, ls_p), atol=0.02, rtol=0.01)
    assert torch.allclose(est.entropy[0], 0.5 * math.log(2 * math.pi * math.e) + ls_q[0])
    est.kl.mean().backward()
    assert q.grad.abs().min() > 0  # reparameterised draws carry gradients to mu and log s


def test_monte_carlo_kl_against_a_one_component_mol_teacher_is_the_logistic_kl():
    torch.manual_seed(2)
    n = 50_000
    student = torch.tensor([[0.10], [-3.5]], dtype=torch.float64)[None].expand(n, 2, 1)
    teacher_logistic = torch.tensor([[0.12], [-3.2]], dtype=torch.float64)[None].expand(n, 2, 1)
    mol = DiscretizedMixLogistic(num_components=1, num_bins=65536)
    teacher_mol = torch.cat([torch.zeros(n, 1, 1, dtype=torch.float64), teacher_logistic], dim=1)
    discrete = monte_carlo_kl(Logistic(), student, mol, teacher_mol, num_samples=4).kl.mean()
    continuous = monte_carlo_kl(Logistic(), student, Logistic(), teacher_logistic, num_samples=4).kl.mean()
    # scored as a density (bin mass over bin width), the discretised teacher reads like the continuous one
    assert float(discrete) == pytest.approx(float(continuous), abs=0.01)


def test_a_student_that_equals_its_mol_teacher_has_zero_kl():
    torch.manual_seed(3)
    n = 50_000
    law = torch.tensor([[0.05], [-4.0]], dtype=torch.float64)[None].expand(n, 2, 1)
    mol = DiscretizedMixLogistic(num_components=1, num_bins=65536)
    est = monte_carlo_kl(Logistic(), law, mol, torch.cat([torch.zeros(n, 1, 1, dtype=torch.float64), law], dim=1), 4)
    assert float(est.kl.mean()) == pytest.approx(0.0, abs=0.01)  # was log(2^16 / 2) = 10.4 when scored as log P
    assert float(est.cross_entropy.mean()) == pytest.approx(float(est.entropy.mean()), abs=0.01)


def test_spectral_losses_vanish_for_identical_signals_and_grow_with_damage():
    torch.manual_seed(0)
    x = torch.randn(2, 8192) * 0.1
    assert float(stft_loss(x, x)) == 0.0 and float(power_loss(x, x)) == 0.0
    multi = ((512, 128), (1024, 256), (2048, 512))
    assert float(stft_loss(x, x, multi)) == 0.0
    small, large = x + 0.01 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
    assert 0 < float(stft_loss(small, x, multi)) < float(stft_loss(large, x, multi))
    assert 0 < float(power_loss(small, x)) < float(power_loss(large, x))
    logmel = LogMel(FeatureConfig())
    assert float(mel_loss(logmel, x, x)) == 0.0
    assert 0 < float(mel_loss(logmel, small, x)) < float(mel_loss(logmel, large, x))


def test_the_mel_loss_is_the_mean_log_mel_difference_and_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    logmel = LogMel(FeatureConfig())
    x, y = torch.randn(2, 8192) * 0.1, torch.randn(2, 8192) * 0.05
    expected = (logmel(x) - logmel(y)).abs().mean()
    assert float(mel_loss(logmel, x, y)) == pytest.approx(float(expected), rel=1e-6)
    # a copy at half the amplitude: every band of the natural-log magnitude mel log 2 lower
    assert float(mel_loss(logmel, x, 0.5 * x)) == pytest.approx(math.log(2), rel=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mel_loss(logmel, x, y).dtype == torch.float32
