"""The LP-WaveNet teacher (linear prediction from the mel, pre-emphasis): causal, incremental ==
parallel, and every sampler (naive, incremental, graph, C loop) draws from the same law."""

from __future__ import annotations

import pytest
import torch

from distill.audio.mel import deemphasis
from distill.errors import ConfigError
from distill.nn.lpc import lp_predict
from teachers.sampling import generate, incremental_forward
from teachers.sampling.fastloop import available, fast_generate
from tests.models import small_teacher

LP = {"order": 4, "sample_rate": 16000, "n_fft": 16, "win_length": 16, "f_min": 0.0, "f_max": 8000.0}
LP_HEADS = [("gaussian", {}), ("mol", {"num_components": 3, "num_bins": 65536})]


def lp_teacher(distribution="gaussian", args=None, preemphasis=0.0, dtype=torch.float64, **kw):
    model = small_teacher(distribution, args, preemphasis=preemphasis, linear_prediction=LP, dtype=dtype, **kw)
    with torch.no_grad():  # the head starts at zero (the LP-only law); give the network a say
        model.stack.head[-1].weight.normal_(0, 0.3)
        model.stack.head[-1].bias.normal_(0, 0.3)
    return model


def lp_inputs(frames=20, batch=2, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, 5, frames + 4, generator=g, dtype=dtype) - 4.0  # expected residuals ~ 1e-2
    y = 0.05 * torch.randn(batch, frames * 4, generator=g, dtype=dtype)
    return y, mel


@pytest.mark.parametrize("distribution, args", LP_HEADS, ids=[h[0] for h in LP_HEADS])
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_incremental_equals_the_teacher_forced_forward_with_linear_prediction(distribution, args, kernel_size):
    model = lp_teacher(distribution, args, kernel_size=kernel_size)
    y, mel = lp_inputs()
    cond, lpc = model.conditioning(mel), model.predictor(mel)
    assert lpc.shape == (2, 1 + LP["order"], y.shape[-1])
    parallel = model.forward_cond(y, cond, lpc)
    assert torch.allclose(parallel, incremental_forward(model, y, cond, lpc), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="linear prediction"):
        model.forward_cond(y, cond)  # silently dropping the predictor is refused


def test_linear_prediction_keeps_the_teacher_causal_and_reaches_p_samples_back():
    model = lp_teacher(layers=2, cycle=1, kernel_size=2)  # a network receptive field of 3 < 1 + p taps
    y, mel = lp_inputs(frames=30, batch=1)
    base = model(y, mel)
    for s in (0, 40, 90):
        moved = y.clone()
        moved[:, s] += 0.1
        out = model(moved, mel)
        assert torch.equal(out[:, :, : s + 1], base[:, :, : s + 1])  # the past is untouched
        assert not torch.allclose(out[:, :, s + 1], base[:, :, s + 1])
    y.requires_grad_(True)
    t = 60
    model.dist.unpack(model(y, mel))[0][0, t].backward()  # the location
    reached = (y.grad[0].abs() > 0).nonzero().flatten().tolist()
    assert max(reached) == t - 1 and t - min(reached) == max(LP["order"], model.receptive_field())


def test_at_initialisation_an_lp_teacher_is_the_lp_only_model():
    model = small_teacher(linear_prediction=LP)  # as built: the head is zero
    y, mel = lp_inputs()
    lpc = model.predictor(mel)
    mu, log_sigma = model.dist.unpack(model(y, mel))
    assert torch.allclose(mu, lp_predict(y, lpc[:, 1:]), atol=1e-12)
    assert torch.allclose(log_sigma, lpc[:, 0].to(log_sigma.dtype), atol=1e-12)


@pytest.mark.parametrize("distribution, args", LP_HEADS, ids=[h[0] for h in LP_HEADS])
@pytest.mark.parametrize("preemphasis", [0.0, 0.85])
def test_naive_incremental_and_graph_samplers_draw_the_same_audio(distribution, args, preemphasis):
    model = lp_teacher(distribution, args, preemphasis=preemphasis, kernel_size=3)
    _, mel = lp_inputs(frames=37)  # 148 samples: the graph sampler's blocks of 64 and a partial one
    draws = {}
    for method in ("incremental", "naive", "graph"):
        torch.manual_seed(5)
        draws[method] = generate(model, mel, method)
    assert torch.allclose(draws["incremental"], draws["naive"], atol=1e-9)
    assert torch.allclose(draws["incremental"], draws["graph"], atol=1e-9)
    assert draws["incremental"].std() > 1e-3


def test_mean_mode_follows_the_predictor_as_the_parallel_pass_does():
    model = lp_teacher(kernel_size=3)
    _, mel = lp_inputs(frames=30)
    for method in ("incremental", "graph"):
        y = generate(model, mel, method, mode="mean")
        assert torch.allclose(y, model.dist.mean(model(y, mel)).clamp(-1, 1), atol=1e-9)


def test_a_preemphasised_teacher_samples_in_its_domain_and_returns_deemphasised_audio():
    model = lp_teacher(preemphasis=0.85, kernel_size=2)
    x, mel = lp_inputs(frames=30)
    torch.manual_seed(9)
    audio = generate(model, mel, "incremental", prompt=x[:, :50])
    assert torch.allclose(audio[:, :50], x[:, :50], atol=1e-12)  # the prompt is audio, given back as audio
    model.preemphasis = 0.0  # the same law (the predictor was built for 0.85); its draws left in the model domain
    torch.manual_seed(9)
    y = generate(model, mel, "incremental")
    model.preemphasis = 0.85
    torch.manual_seed(9)
    plain = generate(model, mel, "incremental")
    assert torch.allclose(plain, deemphasis(y, 0.85).clamp(-1, 1), atol=1e-12)
    # log p(x) is scored in the model domain: the unit Jacobian makes the two equal
    yy = model.to_model_domain(plain)
    assert torch.allclose(model.log_prob(plain, mel), model.dist.log_prob(model(yy, mel), yy))


@pytest.mark.skipif(not available(), reason="no C compiler for the fast loop")
@pytest.mark.parametrize("distribution, args", LP_HEADS, ids=[h[0] for h in LP_HEADS])
def test_the_c_loop_applies_the_predictor_like_the_parallel_forward(distribution, args):
    model = lp_teacher(distribution, args, kernel_size=3, dtype=torch.float32)
    y, mel = lp_inputs(frames=40, dtype=torch.float32)
    cond, lpc = model.conditioning(mel), model.predictor(mel)
    _, params = fast_generate(model, cond, prompt=y[:, :-1], return_params=True, chunk=64, lpc=lpc)
    assert torch.allclose(params, model.forward_cond(y, cond, lpc), atol=2e-5)
    with pytest.raises(ValueError, match="linear prediction"):
        fast_generate(model, cond)
    if distribution == "gaussian":  # each sample is the draw its own (predicted, scaled) law and noise imply
        noise = torch.randn(2, cond.shape[-1])
        drawn = fast_generate(model, cond, noise=noise, chunk=50, lpc=lpc)
        mu, log_s = model.dist.unpack(model.forward_cond(drawn, cond, lpc))
        assert torch.allclose(drawn, (mu + torch.exp(log_s) * noise).clamp(-1, 1), atol=2e-5)
    torch.manual_seed(2)  # and generate() routes it with the de-emphasis like every other sampler
    assert generate(model, mel, "fast").shape == (2, 160)


def test_linear_prediction_needs_a_head_with_a_location_and_the_crop_warmup_counts_its_taps():
    with pytest.raises(ConfigError, match="no location"):
        small_teacher("mulaw", linear_prediction=LP)
    assert lp_teacher(preemphasis=0.85).crop_warmup() == LP["order"] + 1
    assert small_teacher().crop_warmup() == 0


def test_an_lp_mixture_starts_with_distinct_components():
    model = small_teacher("mol", {"num_components": 3, "num_bins": 65536}, linear_prediction=LP)
    y, mel = lp_inputs()
    _, mu, _ = model.dist.unpack(model(y, mel))
    assert (mu[:, 0] < mu[:, 1]).all() and (mu[:, 1] < mu[:, 2]).all()  # symmetry broken from the start
