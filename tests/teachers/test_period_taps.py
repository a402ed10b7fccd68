"""Period taps (`TeacherModelConfig.period_taps`): the signal one pitch period back (the period read from the
mel) joins the teacher's input. The taps read only samples before t, so the teacher stays causal; the
incremental path equals the parallel one in float64 and the C loop's parameters equal it in float32; the
PyTorch samplers draw from one law; with the taps' weights at zero the teacher is the one without them, draw
for draw, in every sampler that covers them; the CUDA-graph sampler says in one line that it does not."""

from __future__ import annotations

import pytest
import torch

from distill.errors import ConfigError
from teachers.sampling import fastest_method, generate, incremental_forward, reference_method
from teachers.sampling.fastloop import available, fast_generate
from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig, WaveNetTeacher, period_input, period_step
from tests.teachers.test_pitch_teacher import FEATURES, HOP, assert_same_draws, voiced_mel


def taps_teacher(taps=3, kernel_size=3, dtype=torch.float64, seed=0, live=True) -> WaveNetTeacher:
    config = TeacherModelConfig("gaussian", layers=6, cycle=3, kernel_size=kernel_size, residual_channels=8,
                                gate_channels=8, skip_channels=8, upsample_scales=[4, 4],
                                linear_prediction=LinearPredictionConfig(order=4), pitch_source=True,
                                period_taps=taps)
    torch.manual_seed(seed)
    model = WaveNetTeacher(config, FEATURES, mel_context=2).to(dtype).eval()
    with torch.no_grad():  # the head starts at zero (the LP-only law); give the network a say
        model.stack.head[-1].weight.normal_(0, 0.3)
        model.stack.head[-1].bias.normal_(0, 0.3)
        if live and taps:  # and the taps a strong one
            model.stack.input.weight[:, 1:].normal_(0, 3.0)
    return model


def test_period_input_reads_one_period_back_interpolated_and_zero_before_the_start():
    y = torch.randn(2, 50, dtype=torch.float64)
    lag = torch.full((2, 50), 10.0, dtype=torch.float64)
    lag[1] = 7.25
    taps = period_input(y, lag, 3)
    assert taps.shape == (2, 3, 50)
    for t in range(50):
        for k, o in enumerate((-1, 0, 1)):
            src = t - 10 + o
            assert taps[0, k, t] == (y[0, src] if src >= 0 else 0.0)
            pos = t - 7.25 + o  # between floor(pos) and floor(pos) + 1, weight 0.75 on the later one
            lo = int(pos // 1)
            a = y[1, lo] if lo >= 0 else 0.0
            b = y[1, lo + 1] if lo + 1 >= 0 else 0.0
            assert torch.isclose(taps[1, k, t], torch.as_tensor(a + 0.75 * (b - a), dtype=torch.float64), atol=1e-15)
    # the step-by-step taps are the parallel ones, exactly; a window of the signal with its start index too
    for t in range(50):
        assert torch.equal(period_step(y, lag, t, 3), taps[:, :, t])
    assert torch.equal(period_input(y[:, 20:], lag[:, 20:], 3, start=20)[..., 12:], taps[..., 32:])


def test_the_period_is_the_mels_pitch_period():
    model = taps_teacher()
    mel = voiced_mel(frames=40)
    lag = model.period(mel)
    assert lag.shape == (2, 40 * HOP) and lag.dtype == torch.float64
    f0, _ = model.pitch.per_sample(mel, 2)
    assert torch.equal(lag, (16000 / f0).clamp(3, 267))
    assert lag.min() >= 3 and lag.max() <= model.max_period == 267  # 16 kHz over the tracker's lowest 60 Hz


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_incremental_equals_teacher_forced_forward_with_period_taps(kernel_size):
    model = taps_teacher(kernel_size=kernel_size)
    mel = voiced_mel(frames=30)
    y = 0.01 * torch.randn(2, 30 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cond, lpc, lag = model.conditioning(mel), model.predictor(mel), model.period(mel)
    parallel = model.forward_cond(y, cond, lpc, lag)
    silent = taps_teacher(kernel_size=kernel_size, live=False)  # the same teacher, the taps' weights small
    assert not torch.allclose(parallel, silent.forward_cond(y, cond, lpc, lag))
    assert torch.allclose(parallel, incremental_forward(model, y, cond, lpc, lag), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="lag=teacher.period"):
        model.forward_cond(y, cond, lpc)


def test_period_taps_keep_the_teacher_causal_and_reach_one_period_back():
    model = taps_teacher()
    mel = voiced_mel(frames=40, batch=1)
    y = (0.01 * torch.randn(1, 40 * HOP, dtype=torch.float64)).requires_grad_(True)
    t = 500
    params = model(y, mel)
    params[0, 0, t].backward()
    reached = torch.nonzero(y.grad[0]).flatten().tolist()
    assert max(reached) == t - 1  # strictly earlier samples only
    assert t - min(reached) <= model.receptive_field()
    # beyond the stack's own field: the taps one period back (these tiny features read about 100 samples)
    assert t - min(reached) >= model.stack.receptive_field() + model.period(mel)[0, t - 30 : t].min() - 2
    bumped = y.detach().clone()
    bumped[0, t] += 1.0
    assert torch.equal(model(bumped, mel)[..., : t + 1], params.detach()[..., : t + 1])
    assert model.crop_warmup() == model.period_reach() == 267 + 1 + 1


@pytest.mark.parametrize("method", ["incremental", "naive", "fast"])
def test_with_the_taps_switched_off_the_samplers_draw_what_the_teacher_without_them_draws(method):
    if method == "fast" and not available():
        pytest.skip("no C compiler for the fast loop")
    dtype = torch.float32 if method == "fast" else torch.float64
    plain = taps_teacher(taps=0, seed=4, dtype=dtype)
    twin = taps_teacher(taps=3, seed=9, dtype=dtype)
    twin.load_state_dict(twin.grown_from(plain.state_dict()))
    assert twin.stack.input.weight[:, 1:].abs().max() == 0
    assert_same_draws(plain, twin, voiced_mel(frames=24, dtype=dtype), method)


def test_the_pytorch_samplers_draw_from_one_law_and_the_graph_sampler_says_it_does_not_cover_the_taps():
    model = taps_teacher()
    mel = voiced_mel(frames=24)
    draws = {}
    for method in ("incremental", "naive"):
        torch.manual_seed(5)
        draws[method] = generate(model, mel, method)
    assert torch.allclose(draws["incremental"], draws["naive"], atol=1e-9)
    with pytest.raises(ConfigError, match="period taps"):
        generate(model, mel, "graph")
    # so the "auto" policies do not pick it on a GPU (and still pick it for a teacher without taps)
    cuda = torch.device("cuda")
    assert fastest_method(model, cuda) == reference_method(model, cuda) == "incremental"
    plain = taps_teacher(taps=0)
    assert fastest_method(plain, cuda) == reference_method(plain, cuda) == "graph"


@pytest.mark.skipif(not available(), reason="no C compiler for the fast loop")
def test_the_c_loop_reads_the_period_taps_like_the_parallel_forward():
    model = taps_teacher(dtype=torch.float32)
    mel = voiced_mel(frames=30, dtype=torch.float32)
    cond, lpc, lag = model.conditioning(mel), model.predictor(mel), model.period(mel)
    y = 0.01 * torch.randn(2, cond.shape[-1])
    _, params = fast_generate(model, cond, prompt=y[:, :-1], return_params=True, chunk=64, lpc=lpc, lag=lag)
    expected = model.forward_cond(y, cond, lpc, lag)
    assert not torch.allclose(expected, taps_teacher(dtype=torch.float32, live=False).forward_cond(y, cond, lpc, lag))
    assert torch.allclose(params, expected, atol=2e-5)
    with pytest.raises(ValueError, match="lag=teacher.period"):
        fast_generate(model, cond, lpc=lpc)


@pytest.mark.parametrize("taps, source, message", [(2, True, "odd"), (-1, True, "odd"), (3, False, "pitch_source")])
def test_a_bad_period_taps_setting_is_one_line(taps, source, message):
    with pytest.raises(ConfigError, match=message):
        TeacherModelConfig(pitch_source=source, period_taps=taps)
