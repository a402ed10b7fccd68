"""Distillation objectives and auxiliary losses. Each returns per-step values or a scalar as stated.

KL(P_S || P_T) = H(P_S, P_T) - H(P_S), evaluated per step t on the student's own sample, with the
teacher run once, teacher-forced on that sample.

- `gaussian_kl`: closed form for a Gaussian student step q = N(mu_q, s_q) and Gaussian teacher step
  p = N(mu_p, s_p) (ClariNet), both log-scales clamped below (-7):
      KL(q || p) = log s_p - log s_q + (s_q^2 - s_p^2 + (mu_p - mu_q)^2) / (2 s_p^2)
- `log_scale_regulariser`: (log s_p - log s_q)^2 (ClariNet, weight lambda = 4).
- `monte_carlo_kl`: any teacher (e.g. a mixture of logistics, Parallel WaveNet): analytic entropy of
  the student's step plus a cross-entropy from N fresh draws x'_t = mu_tot_t + s_tot_t * eps per step
  (x_<t held fixed), scored under the teacher's step-t distribution.
- `stft_loss` (single or multi-resolution magnitude), `power_loss` (time-averaged power spectrum).
- Adversarial terms (least-squares GAN, Mao et al. 2017, as in Yamamoto et al. 2019 and HiFi-GAN), on
  the scores of a `distill.nn.discriminators` discriminator, summed over its sub-discriminators and
  averaged within each: the discriminator's `discriminator_loss` = E[(1 - D(x))^2] + E[D(x_S)^2] (x real,
  x_S the student's, detached: it trains the discriminator only); the generator's
  `generator_adversarial_losses`: "adv" = E[(1 - D(x_S))^2] and "fm" = feature matching, the L1 distance
  between the discriminator's hidden activations on x_S and on x, averaged over layers, through a copy of
  the discriminator's weights outside the graph, so that these terms train the generator only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from distill.nn.distributions import OutputDistribution

KL_LOG_SCALE_MIN = -7.0


def gaussian_kl(
    mu_q: torch.Tensor, log_s_q: torch.Tensor, mu_p: torch.Tensor, log_s_p: torch.Tensor,
    log_scale_min: float = KL_LOG_SCALE_MIN,
) -> torch.Tensor:
    """Per-step KL(N(mu_q, s_q) || N(mu_p, s_p)), nats; all inputs and the output (B, T)."""
    log_s_q = log_s_q.clamp(min=log_scale_min)
    log_s_p = log_s_p.clamp(min=log_scale_min)
    var_p = torch.exp(2 * log_s_p)
    return log_s_p - log_s_q + (torch.exp(2 * log_s_q) - var_p + (mu_p - mu_q) ** 2) / (2 * var_p)


def log_scale_regulariser(log_s_q: torch.Tensor, log_s_p: torch.Tensor,
                          log_scale_min: float = KL_LOG_SCALE_MIN) -> torch.Tensor:
    """Per-step (log s_p - log s_q)^2 with the same clamps as the KL (ClariNet)."""
    return (log_s_p.clamp(min=log_scale_min) - log_s_q.clamp(min=log_scale_min)) ** 2


@dataclass
class MonteCarloKL:
    """Per-step (B, T) estimates, nats: kl = cross_entropy - entropy."""

    kl: torch.Tensor
    entropy: torch.Tensor
    cross_entropy: torch.Tensor


def monte_carlo_kl(
    student_dist: OutputDistribution,
    student_params: torch.Tensor,
    teacher_dist: OutputDistribution,
    teacher_params: torch.Tensor,
    num_samples: int = 16,
) -> MonteCarloKL:
    """KL(P_S || P_T) per step with the student's entropy in closed form and the cross-entropy from
    `num_samples` draws of the student's step distribution, scored by the teacher's step distribution
    as a density (a discretised teacher's bin probability over the bin width: log(2^16 / 2) = 10.4 nats
    above the bin's log-probability, so that KL(p || p) reads 0; the gradient is the same).

    student_params: (B, 2, T) (mu_tot, log_s_tot); teacher_params: (B, P, T) computed once on the
    student's sample. The draws are reparameterised, so gradients reach mu_tot and log_s_tot.
    """
    if not student_dist.continuous:
        raise TypeError("the student's per-step distribution must be continuous")
    entropy = student_dist.entropy(student_params)
    cross: torch.Tensor | float = 0.0
    for _ in range(num_samples):
        draw = student_dist.sample(student_params)  # x'_t ~ D(mu_tot_t, s_tot_t), x_<t fixed
        cross = cross - teacher_dist.log_density(teacher_params, draw)  # a MoL teacher's bin mass per width
    cross = cross / num_samples
    return MonteCarloKL(cross - entropy, entropy, cast(torch.Tensor, cross))  # a tensor after >= 1 draw


def _magnitudes(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop, window=window, pad_mode="constant", return_complex=True).abs()


def stft_loss(
    x: torch.Tensor, y: torch.Tensor, resolutions: tuple = ((1024, 256),), eps: float = 1e-7
) -> torch.Tensor:
    """Scalar: mean over resolutions of spectral convergence + log-magnitude L1. x, y: (B, T).

    One resolution is ClariNet's STFT loss; several make the multi-resolution variant."""
    total = x.new_zeros(())
    for n_fft, hop in resolutions:
        mx, my = _magnitudes(x, n_fft, hop), _magnitudes(y, n_fft, hop)
        convergence = torch.linalg.norm(my - mx, dim=(-2, -1)) / torch.linalg.norm(my, dim=(-2, -1)).clamp(min=eps)
        log_l1 = (torch.log(my.clamp(min=eps)) - torch.log(mx.clamp(min=eps))).abs().mean(dim=(-2, -1))
        total = total + (convergence + log_l1).mean()
    return total / len(resolutions)


def mel_loss(logmel: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Scalar: the mean absolute difference of the log-mels of x and y (B, T), HiFi-GAN's reconstruction
    term. `logmel` is the model's own log-mel (`distill.audio.mel.LogMel`): the spectrum it is told to
    vocode, in the bands and on the log scale a mel vocoder's input has, computed in float32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return (logmel(x.float()) - logmel(y.float())).abs().mean()


def power_loss(x: torch.Tensor, y: torch.Tensor, n_fft: int = 1024, hop: int = 256, eps: float = 1e-7) -> torch.Tensor:
    """Scalar: Parallel WaveNet's power loss on a log scale: the mean over frequency bins of
    |log P_x(f) - log P_y(f)|, P(f) = mean_t |STFT|^2 (the time-averaged power spectrum), per item,
    averaged (an L1 distance of log spectra, like the STFT loss's log-magnitude term). The paper's raw
    || P_x - P_y ||^2 summed over bins scales with the signal's power squared and outweighed the
    per-sample KL ~300x in gradient norm; the log form is scale-free and bounded
    (a test bounds its gradient against the KL's at initialisation)."""
    px = _magnitudes(x, n_fft, hop).pow(2).mean(dim=-1)
    py = _magnitudes(y, n_fft, hop).pow(2).mean(dim=-1)
    return (torch.log(px + eps) - torch.log(py + eps)).abs().mean(dim=-1).mean()


def lsgan_discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """sum over sub-discriminators of mean((1 - D(x))^2) + mean(D(x_S)^2), from their logits."""
    return sum((((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake, strict=True)),
               torch.zeros((), device=real[0].device))


def lsgan_generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """sum over sub-discriminators of mean((1 - D(x_S))^2), from their logits."""
    return sum((((1 - f) ** 2).mean() for f in fake), torch.zeros((), device=fake[0].device))


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """sum over sub-discriminators of the mean over their layers of mean |h(x_S) - h(x)| (x's detached)."""
    total = torch.zeros((), device=fake[0][0].device)
    for layers_real, layers_fake in zip(real, fake, strict=True):
        total = total + sum((torch.mean(torch.abs(f - r.detach())) for r, f in zip(layers_real, layers_fake,
                                                                                   strict=True)),
                            torch.zeros((), device=total.device)) / len(layers_fake)
    return total


def discriminator_loss(disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's least-squares loss on real audio and the student's (B, T), both detached: its
    gradient reaches the discriminator's weights only."""
    scores_real, scores_fake = disc(real.detach()), disc(fake.detach())
    return lsgan_discriminator_loss([r for r, _ in scores_real], [f for f, _ in scores_fake])


def generator_adversarial_losses(disc: torch.nn.Module, fake: torch.Tensor,
                                 real: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{"adv": the generator's least-squares term, "fm": feature matching (when `real` is given)} for the
    student's audio `fake` (B, T). The discriminator runs on detached copies of its parameters
    (`torch.func.functional_call`), so the gradient reaches `fake` and never the discriminator's weights;
    its buffers are its own (spectral norm's power-iteration vectors advance as in any forward)."""
    weights = {name: p.detach() for name, p in disc.named_parameters()}
    scores_fake = torch.func.functional_call(disc, weights, (fake,), strict=False)
    losses = {"adv": lsgan_generator_loss([f for f, _ in scores_fake])}
    if real is not None:
        with torch.no_grad():
            scores_real = torch.func.functional_call(disc, weights, (real,), strict=False)
        losses["fm"] = feature_matching_loss([h for _, h in scores_real], [h for _, h in scores_fake])
    return losses
