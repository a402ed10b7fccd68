"""Per-sample output distributions, shared by teachers, students and losses.

Every distribution reads a parameter tensor `params: (B, P, T)` (P = `num_params`) and scores or
draws audio `x: (B, T)` in [-1, 1]:

- `Gaussian`: params (mu, log_sigma); log_sigma clamped below at `log_scale_min` (ClariNet: -9 for
  teacher training, -7 inside the KL). Continuous density; `entropy` is per step.
- `Logistic`: params (mu, log_s); continuous density (the Parallel WaveNet student's per-step law).
- `DiscretizedMixLogistic`: K components (logit_pi, mu, log_s) over `num_bins` bins on the PCM grid
  (2^16 bins: centres k / 32768 - 1, exactly the 16-bit sample values; 2^8: k / 128 - 1), edge bins
  absorbing the tails (PixelCNN++). Probabilities are exact and sum to one:
  log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)), with no
  "mid-range pdf" fallback. Rounding to a bin is straight-through, so d log p / dx is the gradient
  of the bin's probability as the bin moves: the pathwise gradient distillation needs.
- `MuLawCategorical`: 256 classes over mu-law companded amplitude (the original WaveNet); a
  teacher-only head: it has no density to distil from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.errors import ConfigError

LOG_2PI = math.log(2 * math.pi)


class OutputDistribution:
    """Base class. `continuous` distributions have a density, a per-step entropy and can be distilled."""

    name: str = ""
    num_params: int = 0
    continuous: bool = False
    # a teacher with this output can be distilled: log_prob is differentiable in x (pathwise gradients)
    distillable: bool = True
    log_scale_min: float  # the floor of the log scales, for laws with scales (set by their __init__)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, P, T), (B, T) -> (B, T) log-probability (density for continuous laws), nats."""
        raise NotImplementedError

    def log_density(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, T) log-density, nats: `log_prob` for continuous laws; a discretised law's bin probability
        over its bin width (so that a cross-entropy or KL against a continuous law reads in the same
        units, and KL(p || p) is 0)."""
        return self.log_prob(params, x)

    def sample(self, params: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(B, P, T) -> (B, T) draws; temperature scales the spread (0 = the mean/mode): one number, or
        each draw's own (B, T), all > 0."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P, T) -> (B, T)."""
        raise NotImplementedError

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P, T) -> (B, T) differential entropy per step, nats."""
        raise TypeError(f"the {self.name} distribution has no closed-form differential entropy")

    def location_slice(self) -> slice:
        """The rows of `params` that are locations (for `affine`)."""
        raise ConfigError(f"the {self.name} output has no location to shift (linear prediction needs gaussian or mol)")

    def scale_slice(self) -> slice:
        """The rows of `params` that are log scales, right after the locations (for `affine`)."""
        raise ConfigError(f"the {self.name} output has no scale (linear prediction needs gaussian or mol)")

    def affine(self, params: torch.Tensor, offset: torch.Tensor, log_gain: torch.Tensor) -> torch.Tensor:
        """The law of offset + g x for x of law `params`: locations -> offset + g location, log scales
        -> log scale + log g (the floor of the log scale still applies, in the new units).
        params (B, P, T), offset and log_gain (B, T) -> (B, P, T). Linear prediction maps the network's
        law, in units of the expected residual, to the signal's law this way."""
        loc, scale = self.location_slice(), self.scale_slice()
        log_gain = log_gain[:, None].to(params.dtype)
        moved = offset[:, None].to(params.dtype) + torch.exp(log_gain) * params[:, loc]
        scaled = params[:, scale] + log_gain
        return torch.cat([params[:, : loc.start], moved, scaled, params[:, scale.stop :]], dim=1)

    def temper(self, params: torch.Tensor, temperature: float) -> torch.Tensor:
        """The law that `sample(params, temperature)` draws from, as params: every log scale + log T
        (a mixture keeps its weights). params (B, P, T) -> (B, P, T); temperature > 0. One approximation:
        the floor `log_scale_min` still applies when these params are read, so a step whose tempered
        scale falls below the floor (the teacher's quietest steps, a few percent of speech for T = 0.7)
        is read at the floor, slightly wider than the sampler draws."""
        if temperature == 1.0:
            return params
        scale = self.scale_slice()
        scaled = params[:, scale].clamp(min=self.log_scale_min) + math.log(temperature)
        return torch.cat([params[:, : scale.start], scaled, params[:, scale.stop :]], dim=1)


class _LocationScale(OutputDistribution):
    """params (mu, log scale); the log scale is clamped below at `log_scale_min`."""

    num_params = 2
    continuous = True

    def __init__(self, log_scale_min: float = -9.0):
        self.log_scale_min = log_scale_min

    def unpack(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, T) -> mu (B, T), log scale (B, T) clamped below."""
        return params[:, 0], params[:, 1].clamp(min=self.log_scale_min)

    def mean(self, params):
        return params[:, 0]

    def location_slice(self):
        return slice(0, 1)

    def scale_slice(self):
        return slice(1, 2)


class Gaussian(_LocationScale):
    name = "gaussian"

    def log_prob(self, params, x):
        mu, log_sigma = self.unpack(params)
        z = (x - mu) * torch.exp(-log_sigma)
        return -0.5 * LOG_2PI - log_sigma - 0.5 * z * z

    def sample(self, params, temperature=1.0):
        mu, log_sigma = self.unpack(params)
        return mu + temperature * torch.exp(log_sigma) * torch.randn_like(mu)

    def entropy(self, params):
        return 0.5 * (LOG_2PI + 1.0) + self.unpack(params)[1]


class Logistic(_LocationScale):
    name = "logistic"

    def log_prob(self, params, x):
        mu, log_s = self.unpack(params)
        z = (x - mu) * torch.exp(-log_s)
        return -z - log_s - 2.0 * F.softplus(-z)

    def sample(self, params, temperature=1.0):
        mu, log_s = self.unpack(params)
        u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
        return mu + temperature * torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))

    def entropy(self, params):
        return self.unpack(params)[1] + 2.0


def _is_zero(temperature: float | torch.Tensor) -> bool:
    """Temperature 0 (the mode, no draw): only ever one number; a temperature per draw is > 0."""
    return not isinstance(temperature, torch.Tensor) and temperature == 0


def _log_sigmoid_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(a) - sigmoid(b)) for a > b, exact and stable."""
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))


class DiscretizedMixLogistic(OutputDistribution):
    name = "mol"
    continuous = False

    def __init__(self, num_components: int = 10, num_bins: int = 65536, log_scale_min: float = -7.0):
        if num_bins < 2:
            raise ConfigError(f"mol num_bins must be >= 2, got {num_bins}")
        self.num_components = num_components
        self.num_bins = num_bins
        self.log_scale_min = log_scale_min
        self.num_params = 3 * num_components

    @property
    def bin_width(self) -> float:
        return 2.0 / self.num_bins

    def unpack(self, params):
        """(B, 3K, T) -> logit_pi, mu, log_s, each (B, K, T)."""
        k = self.num_components
        return params[:, :k], params[:, k : 2 * k], params[:, 2 * k :].clamp(min=self.log_scale_min)

    def bin_index(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] -> index of the nearest bin centre, in [0, num_bins - 1] (float)."""
        return torch.round((x.clamp(-1, 1) + 1) / self.bin_width).clamp(0, self.num_bins - 1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Snap x to the nearest bin centre."""
        return self.bin_index(x) * self.bin_width - 1

    def log_prob(self, params, x):
        logit_pi, mu, log_s = self.unpack(params)
        idx = self.bin_index(x.detach())
        centre = idx * self.bin_width - 1
        xq = (x + (centre - x).detach()).unsqueeze(1)  # the centre's value, x's gradient; (B, 1, T)
        inv_s = torch.exp(-log_s)
        half = self.bin_width / 2
        upper = (xq - mu + half) * inv_s
        lower = (xq - mu - half) * inv_s
        inner = _log_sigmoid_diff(upper, lower)
        first = F.logsigmoid(upper)  # the lowest bin takes (-inf, -1 + half]
        last = F.logsigmoid(-lower)  # the highest bin takes [1 - 3 half, inf)
        edge_lo = (idx == 0).unsqueeze(1)
        edge_hi = (idx == self.num_bins - 1).unsqueeze(1)
        log_probs = torch.where(edge_lo, first, torch.where(edge_hi, last, inner))
        return torch.logsumexp(log_probs + F.log_softmax(logit_pi, dim=1), dim=1)

    def log_density(self, params, x):
        return self.log_prob(params, x) - math.log(self.bin_width)

    @property
    def uniforms_per_step(self) -> int:
        return self.num_components + 1

    def sample(self, params, temperature=1.0):
        batch, _, steps = params.shape
        u = torch.rand(batch, self.uniforms_per_step, steps, device=params.device, dtype=params.dtype)
        return self.draw(params, u, temperature)

    def draw(self, params, u, temperature=1.0):
        """The sample that uniforms u (B, K + 1, T) in (0, 1) select: the component by Gumbel-max of
        the first K, the value by the logistic's inverse CDF at the last, then snapped to a bin. At
        temperature 0: the most likely component's location (no draw at all).
        (`teachers/sampling/fastloop.c` implements the same function.)"""
        logit_pi, mu, log_s = self.unpack(params)
        k = self.num_components
        if _is_zero(temperature):
            gumbel = torch.zeros_like(logit_pi)
        else:
            gumbel = -torch.log(-torch.log(u[:, :k].clamp(1e-10, 1 - 1e-10)))
        # the chosen component's parameters by index (exact even where another component is inf)
        choice = (logit_pi + gumbel).argmax(dim=1, keepdim=True)  # (B, 1, T)
        mu_k = mu.gather(1, choice)[:, 0]
        log_s_k = log_s.gather(1, choice)[:, 0]
        v = u[:, k].clamp(1e-6, 1 - 1e-6)
        x = mu_k + temperature * torch.exp(log_s_k) * (torch.log(v) - torch.log1p(-v))
        return self.quantize(x)

    def mean(self, params):
        logit_pi, mu, _ = self.unpack(params)
        return (F.softmax(logit_pi, dim=1) * mu).sum(1).clamp(-1, 1)

    def location_slice(self) -> slice:
        return slice(self.num_components, 2 * self.num_components)

    def scale_slice(self) -> slice:
        return slice(2 * self.num_components, 3 * self.num_components)


class MuLawCategorical(OutputDistribution):
    name = "mulaw"
    continuous = False
    distillable = False  # a softmax over classes: no gradient with respect to the amplitude

    def __init__(self, num_classes: int = 256):
        self.num_classes = num_classes
        self.num_params = num_classes
        self.mu = float(num_classes - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] -> class index (long)."""
        y = torch.sign(x) * torch.log1p(self.mu * x.abs().clamp(max=1)) / math.log1p(self.mu)
        return torch.round((y + 1) / 2 * self.mu).long()

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """class index -> amplitude in [-1, 1] (the class centre)."""
        y = 2 * idx.to(torch.get_default_dtype()) / self.mu - 1
        return torch.sign(y) * torch.expm1(y.abs() * math.log1p(self.mu)) / self.mu

    def log_prob(self, params, x):
        return F.log_softmax(params, dim=1).gather(1, self.encode(x).unsqueeze(1)).squeeze(1)

    @property
    def uniforms_per_step(self) -> int:
        return self.num_classes

    def sample(self, params, temperature=1.0):
        if _is_zero(temperature):
            return self.decode(params.argmax(dim=1)).to(params.dtype)
        return self.draw(params, torch.rand_like(params), temperature)

    def draw(self, params, u, temperature=1.0):
        """The class that uniforms u (B, C, T) in (0, 1) select by Gumbel-max of logits / temperature
        (the most likely class at temperature 0), as its amplitude. (`teachers/sampling/fastloop.c` too.)"""
        if _is_zero(temperature):
            return self.decode(params.argmax(dim=1)).to(params.dtype)
        if isinstance(temperature, torch.Tensor):  # each draw's own (B, T), over the classes' axis
            temperature = temperature.unsqueeze(1)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
        return self.decode((params / temperature + gumbel).argmax(dim=1)).to(params.dtype)

    def mean(self, params):
        values = self.decode(torch.arange(self.num_classes, device=params.device)).to(params.dtype)
        return torch.einsum("bct,c->bt", F.softmax(params, dim=1), values)


def build_distribution(name: str, **kwargs) -> OutputDistribution:
    """'gaussian' | 'logistic' | 'mol' | 'mulaw', with that class's keyword arguments."""
    classes = {c.name: c for c in (Gaussian, Logistic, DiscretizedMixLogistic, MuLawCategorical)}
    if name not in classes:
        raise ConfigError(f"unknown output distribution '{name}'; use one of {', '.join(classes)}")
    try:
        return classes[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"distribution '{name}': {err}") from None
