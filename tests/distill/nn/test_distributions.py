"""Output distributions: normalisation, agreement with scipy, sampling moments, entropies, floors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from distill.errors import ConfigError
from distill.nn.distributions import (
    DiscretizedMixLogistic,
    Gaussian,
    Logistic,
    MuLawCategorical,
    build_distribution,
)


def params_of(*rows: torch.Tensor) -> torch.Tensor:
    """Stack per-parameter (B, T) tensors into (B, P, T)."""
    return torch.stack(rows, dim=1).double()


def test_gaussian_log_prob_matches_scipy():
    mu, log_sigma = torch.tensor([[0.1, -0.3, 0.0]]).double(), torch.tensor([[-2.0, -4.0, 0.5]]).double()
    x = torch.tensor([[0.15, -0.2, 1.3]]).double()
    ours = Gaussian().log_prob(params_of(mu, log_sigma), x.double())
    theirs = scipy.stats.norm.logpdf(x.numpy(), mu.numpy(), np.exp(log_sigma.numpy()))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10)


def test_logistic_log_prob_matches_scipy():
    mu, log_s = torch.tensor([[0.1, -0.3]]).double(), torch.tensor([[-2.0, -5.0]]).double()
    x = torch.tensor([[0.4, -0.31]]).double()
    ours = Logistic().log_prob(params_of(mu, log_s), x.double())
    theirs = scipy.stats.logistic.logpdf(x.numpy(), mu.numpy(), np.exp(log_s.numpy()))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10)


def test_log_scale_floor_is_honoured():
    dist = Gaussian(log_scale_min=-9.0)
    below = params_of(torch.zeros(1, 1), torch.full((1, 1), -20.0))
    at = params_of(torch.zeros(1, 1), torch.full((1, 1), -9.0))
    x = torch.full((1, 1), 1e-4, dtype=torch.float64)
    assert torch.equal(dist.log_prob(below, x), dist.log_prob(at, x))
    assert torch.equal(dist.entropy(below), dist.entropy(at))
    assert float(dist.sample(below, 1.0).sub(0).abs().max()) < 1e-2  # draws use the floored scale


@pytest.mark.parametrize("dist", [Gaussian(), Logistic()], ids=["gaussian", "logistic"])
def test_sampling_moments_and_entropy_agree_with_monte_carlo(dist):
    torch.manual_seed(0)
    n = 200_000
    mu, log_s = 0.2, -1.5
    params = params_of(torch.full((1, n), mu), torch.full((1, n), log_s))
    x = dist.sample(params)
    scale = math.exp(log_s)
    std = scale if isinstance(dist, Gaussian) else scale * math.pi / math.sqrt(3)
    assert float(x.mean()) == pytest.approx(mu, abs=4 * std / math.sqrt(n))
    assert float(x.std()) == pytest.approx(std, rel=0.01)
    mc_entropy = float(-dist.log_prob(params, x).mean())
    assert float(dist.entropy(params)[0, 0]) == pytest.approx(mc_entropy, abs=0.01)


@pytest.mark.parametrize("bins", [256, 65536])
def test_mixture_of_logistics_sums_to_one_over_all_bins(bins):
    dist = DiscretizedMixLogistic(num_components=3, num_bins=bins)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, generator=g, dtype=torch.float64)
    mus = torch.tensor([-0.99, 0.0, 0.7], dtype=torch.float64)  # one component near the lower edge
    log_s = torch.tensor([-3.0, -6.0, -1.0], dtype=torch.float64)
    centres = (torch.arange(bins, dtype=torch.float64) * dist.bin_width - 1)[None]  # every bin, once
    params = torch.cat([logits, mus, log_s])[None, :, None].expand(1, 9, bins)
    total = dist.log_prob(params, centres).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-9)


def test_mol_bins_are_the_16_bit_pcm_values_and_pass_gradients():
    dist = DiscretizedMixLogistic(num_components=1, num_bins=65536)
    pcm = torch.arange(-32768, 32768, dtype=torch.float32) / 32768
    assert torch.equal(dist.quantize(pcm), pcm)  # every 16-bit value is its own bin, even in float32
    assert torch.equal(dist.bin_index(pcm), torch.arange(65536, dtype=torch.float32))
    x = torch.tensor([[0.1003]], dtype=torch.float64, requires_grad=True)
    params = params_of(torch.zeros(1, 1), torch.full((1, 1), 0.1), torch.full((1, 1), -3.0))
    dist.log_prob(params, x).sum().backward()
    # the straight-through gradient is the continuous logistic's score at the bin centre: -(2 sigma(z) - 1) / s
    z = (dist.quantize(x.detach()) - 0.1) / math.exp(-3.0)
    expected = -(2 * torch.sigmoid(z) - 1) / math.exp(-3.0)
    assert torch.allclose(x.grad, expected, rtol=1e-3)


def test_single_component_mol_approximates_the_continuous_logistic():
    dist = DiscretizedMixLogistic(num_components=1, num_bins=65536)
    params = params_of(torch.zeros(1, 3), torch.tensor([[0.1, -0.2, 0.0]]), torch.full((1, 3), -4.0))
    x = torch.tensor([[0.12, -0.25, 0.01]], dtype=torch.float64)
    discrete = dist.log_prob(params, x)
    continuous = Logistic().log_prob(params[:, 1:], dist.quantize(x)) + math.log(dist.bin_width)
    assert torch.allclose(discrete, continuous, atol=1e-6)


def test_mixture_sampling_matches_its_mean_and_lands_on_bins():
    torch.manual_seed(1)
    dist = DiscretizedMixLogistic(num_components=2, num_bins=256)
    n = 100_000
    row = torch.tensor([math.log(0.25), math.log(0.75), -0.5, 0.3, -4.0, -4.0])
    params = row[None, :, None].expand(1, 6, n).double()
    x = dist.sample(params)
    assert float(x.mean()) == pytest.approx(float(dist.mean(params)[0, 0]), abs=0.01)
    assert float(dist.mean(params)[0, 0]) == pytest.approx(0.25 * -0.5 + 0.75 * 0.3)
    assert torch.allclose(dist.quantize(x), x)


def test_mu_law_is_a_normalised_256_way_categorical():
    dist = MuLawCategorical()
    idx = torch.arange(256)
    assert torch.equal(dist.encode(dist.decode(idx)), idx)  # the class centres encode to themselves
    x = torch.linspace(-1, 1, 1001)
    assert float((dist.decode(dist.encode(x)) - x).abs().max()) < 0.05  # companding error, worst at the edges
    logits = torch.randn(1, 256, 1, dtype=torch.float64)
    probs = dist.log_prob(logits.expand(1, 256, 256), dist.decode(idx)[None].double()).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.manual_seed(0)
    draws = dist.sample(logits.expand(1, 256, 50_000))
    assert float(draws.mean()) == pytest.approx(float(dist.mean(logits)[0, 0]), abs=0.01)
    with pytest.raises(TypeError, match="no closed-form"):
        dist.entropy(logits)


def test_unknown_distribution_or_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown output distribution 'laplace'"):
        build_distribution("laplace")
    with pytest.raises(ConfigError, match="distribution 'mulaw'"):
        build_distribution("mulaw", log_scale_min=-7)


@pytest.mark.parametrize("dist", [Gaussian(), Logistic(), DiscretizedMixLogistic(num_components=3, num_bins=65536)],
                         ids=["gaussian", "logistic", "mol"])
def test_affine_is_the_law_of_offset_plus_gain_times_x(dist):
    torch.manual_seed(0)
    params = torch.randn(1, dist.num_params, 1, dtype=torch.float64) * 0.3
    params[:, dist.scale_slice()] -= 4.0  # scales ~ e^-4, well above every floor
    offset, log_gain = torch.tensor([[0.2]], dtype=torch.float64), torch.tensor([[-1.5]], dtype=torch.float64)
    moved = dist.affine(params, offset, log_gain)
    torch.manual_seed(1)
    draws = torch.stack([dist.sample(params)[0, 0] for _ in range(4000)])
    torch.manual_seed(1)
    moved_draws = torch.stack([dist.sample(moved)[0, 0] for _ in range(4000)])
    if dist.continuous:  # the same noise: exactly offset + g x, and the density changes by -log g
        assert torch.allclose(moved_draws, 0.2 + math.exp(-1.5) * draws, atol=1e-12)
        x = draws[:5].reshape(1, 5)
        y = 0.2 + math.exp(-1.5) * x
        lp_x = dist.log_prob(params.expand(-1, -1, 5), x)
        assert torch.allclose(dist.log_prob(moved.expand(-1, -1, 5), y), lp_x + 1.5, atol=1e-9)
    else:  # on the bin grid: the same up to one bin
        assert (moved_draws - (0.2 + math.exp(-1.5) * draws)).abs().max() <= 2 * dist.bin_width
    assert torch.equal(moved[:, : dist.location_slice().start], params[:, : dist.location_slice().start])


def test_mulaw_has_no_location_for_linear_prediction():
    with pytest.raises(ConfigError, match="no location"):
        MuLawCategorical().affine(torch.zeros(1, 256, 1), torch.zeros(1, 1), torch.zeros(1, 1))


def test_mol_at_temperature_zero_takes_the_most_likely_component_whatever_the_noise():
    dist = DiscretizedMixLogistic(num_components=3, num_bins=65536)
    params = params_of(*[torch.tensor([[v]]) for v in (0.0, 2.0, -1.0, -0.5, 0.3, 0.6, -3.0, -3.0, -3.0)])
    for seed in range(20):
        torch.manual_seed(seed)
        u = torch.rand(1, 4, 1, dtype=torch.float64)
        assert float(dist.draw(params, u, temperature=0.0)) == pytest.approx(float(dist.quantize(params[:, 4])))


def test_tempering_a_law_gives_the_law_its_sampler_draws_from_at_that_temperature():
    from distill.nn.distributions import Gaussian

    dist = Gaussian()
    params = torch.stack([torch.full((1, 200_000), 0.3), torch.full((1, 200_000), -1.0)], dim=1)
    draws = dist.sample(params, temperature=0.5)
    tempered = dist.temper(params, 0.5)
    assert torch.allclose(tempered[:, 0], params[:, 0]) and torch.allclose(tempered[:, 1], params[:, 1] + math.log(0.5))
    assert float(draws.std()) == pytest.approx(0.5 * math.exp(-1.0), rel=0.01)
    # the draws' average log-density under the tempered law is minus its entropy
    assert float(dist.log_prob(tempered, draws).mean()) == pytest.approx(-float(dist.entropy(tempered).mean()),
                                                                         abs=0.01)
    assert dist.temper(params, 1.0) is params
