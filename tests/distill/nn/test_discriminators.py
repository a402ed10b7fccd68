"""Discriminators and the least-squares adversarial losses: values on known scores, the receptive field,
and that each side's gradient reaches only its own weights."""

from __future__ import annotations

import pytest
import torch

from distill.nn.discriminators import DilatedConvDiscriminator, HiFiGANDiscriminator
from distill.nn.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_losses,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)


def test_least_squares_losses_on_known_scores():
    ones, zeros, halves = torch.ones(2, 1, 5), torch.zeros(2, 1, 5), torch.full((2, 1, 5), 0.5)
    assert lsgan_discriminator_loss([ones], [zeros]) == 0  # a perfect discriminator
    assert lsgan_discriminator_loss([zeros], [ones]) == 2  # the worst one
    assert lsgan_discriminator_loss([halves], [halves]) == 0.5
    assert lsgan_generator_loss([ones]) == 0 and lsgan_generator_loss([zeros]) == 1
    # summed over sub-discriminators, averaged within each whatever its shape
    assert lsgan_generator_loss([zeros, torch.full((3, 1, 2, 7), 3.0)]) == 1 + 4
    assert lsgan_discriminator_loss([ones, halves], [zeros, halves]) == 0.5


def test_feature_matching_is_the_mean_absolute_difference_per_layer_summed_over_discriminators():
    a, b = torch.zeros(2, 4, 8), torch.full((2, 4, 8), 2.0)
    assert feature_matching_loss([[a, a]], [[a, a]]) == 0
    assert feature_matching_loss([[a, a]], [[b, a]]) == 1  # (2 + 0) / 2 layers
    assert feature_matching_loss([[a], [a, a]], [[b], [b, b]]) == 4


def test_the_dilated_conv_discriminator_sees_its_receptive_field_centred_and_no_further():
    torch.manual_seed(0)
    disc = DilatedConvDiscriminator()
    field = disc.receptive_field()
    assert field == 2 * (1 + sum(range(1, 9)) + 1) + 1 == 77  # kernel 3: dilations 1, 1..8, 1
    x = torch.randn(1, 400)
    logits, features = disc(x)[0]
    assert logits.shape == (1, 1, 400) and len(features) == 9
    bumped = x.clone()
    t = 200
    bumped[0, t] += 1.0
    changed = (disc(bumped)[0][0] - logits).abs()[0, 0] > 0
    reach = (field - 1) // 2
    assert changed[t - reach : t + reach + 1].all() and not changed[: t - reach].any()
    assert not changed[t + reach + 1 :].any()


@pytest.mark.parametrize("make", [DilatedConvDiscriminator, lambda: HiFiGANDiscriminator(periods=(2, 3), scales=2)],
                         ids=["dilated_conv", "hifigan"])
def test_each_sides_gradient_reaches_only_its_own_weights(make):
    torch.manual_seed(0)
    disc = make()
    gain = torch.nn.Parameter(torch.tensor(0.5))  # the generator: fake = gain * z
    real, z = 0.3 * torch.randn(2, 1021), torch.randn(2, 1021)  # an odd length: the periods pad
    fake = gain * z
    losses = generator_adversarial_losses(disc, fake, real)
    (losses["adv"] + losses["fm"]).backward()
    assert gain.grad is not None and gain.grad != 0
    assert all(p.grad is None for p in disc.parameters())
    gain.grad = None
    discriminator_loss(disc, real, gain * z).backward()
    assert gain.grad is None
    assert all(p.grad is not None for p in disc.parameters()) and any(p.grad.abs().sum() > 0 for p in disc.parameters())


def test_hifigan_scores_every_period_and_scale():
    torch.manual_seed(0)
    disc = HiFiGANDiscriminator()
    scores = disc(torch.randn(1, 2048))
    assert len(scores) == 5 + 3
    for period, (logits, features) in zip((2, 3, 5, 7, 11), scores[:5], strict=False):
        assert logits.shape[-1] == period and len(features) == 5  # one column per phase of the period
    assert [len(features) for _, features in scores[5:]] == [6, 6, 6]
    assert scores[5][0].shape[-1] > scores[6][0].shape[-1] > scores[7][0].shape[-1]  # pooled by 2 each
