"""A teacher told the mel's pitch (`TeacherModelConfig.pitch_source`): the source is conditioning, so the
teacher stays causal, incremental == parallel, every sampler draws from the same law, and with the source's
weights at zero it is the teacher without one, draw for draw."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import FeatureConfig, to_dict
from distill.errors import ConfigError
from distill.nn.pitch import SOURCE_CHANNELS, MelPitch
from teachers.sampling import generate, incremental_forward, step_temperatures
from teachers.sampling.fastloop import available, fast_generate
from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig, WaveNetTeacher

# the smallest features whose mel resolves harmonics below the source's 1.5 kHz band (>= 8 bands there)
FEATURES = FeatureConfig(n_mels=40, hop_length=16, n_fft=256, win_length=256, preemphasis=0.85)
N_MELS, HOP = FEATURES.n_mels, FEATURES.hop_length


def pitch_teacher(pitch_source=True, lp_order=4, kernel_size=3, dtype=torch.float64, seed=0, residual=8, gate=8,
                  skip=8) -> WaveNetTeacher:
    config = TeacherModelConfig("gaussian", layers=6, cycle=3, kernel_size=kernel_size, residual_channels=residual,
                                gate_channels=gate, skip_channels=skip, upsample_scales=[4, 4],
                                linear_prediction=LinearPredictionConfig(order=lp_order), pitch_source=pitch_source)
    torch.manual_seed(seed)
    model = WaveNetTeacher(config, FEATURES, mel_context=2).to(dtype).eval()
    with torch.no_grad():  # the head starts at zero (the LP-only law); give the network a say
        model.stack.head[-1].weight.normal_(0, 0.3)
        model.stack.head[-1].bias.normal_(0, 0.3)
    return model


def voiced_mel(frames=24, batch=2, dtype=torch.float64) -> torch.Tensor:
    """Log-mels (B, 40, frames + 4) of pulse trains at 120 and 210 Hz (the second item half voiced), with
    silent context frames."""
    from distill.audio.mel import LogMel

    t = torch.arange(frames * HOP, dtype=torch.float64) / FEATURES.sample_rate
    mels = []
    for i, f0 in enumerate((120.0, 210.0)[:batch]):
        x = sum(torch.cos(2 * math.pi * k * f0 * t) / k for k in range(1, 20)) * 0.05
        if i == 1:
            x[: len(x) // 2] = 0.01 * torch.randn(len(x) // 2, generator=torch.Generator().manual_seed(3))
        mels.append(LogMel(FEATURES)(x.float())[:, :frames])
    silence = math.log(FEATURES.log_floor)
    return torch.nn.functional.pad(torch.stack(mels), (2, 2), value=silence).to(dtype)


def test_the_source_joins_the_conditioning_and_reaches_the_output():
    model = pitch_teacher()
    mel = voiced_mel()
    cond = model.conditioning(mel)
    assert cond.shape == (2, N_MELS + SOURCE_CHANNELS, 24 * HOP)
    assert torch.equal(cond[:, N_MELS:], MelPitch.build(model.pitch_args, HOP, N_MELS).source(mel, 2).double())
    assert cond[:, -1].max() > 0.9 and cond[:, N_MELS].abs().max() > 0.5  # voiced somewhere: a live source
    y = 0.01 * torch.randn(2, 24 * HOP, dtype=torch.float64)
    lpc = model.predictor(mel)
    silent = cond.clone()
    silent[:, N_MELS:] = 0
    assert not torch.allclose(model.forward_cond(y, silent, lpc), model.forward_cond(y, cond, lpc))


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_incremental_equals_teacher_forced_forward_with_the_source(kernel_size):
    model = pitch_teacher(kernel_size=kernel_size)
    mel = voiced_mel(frames=12)
    y = 0.01 * torch.randn(2, 12 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cond, lpc = model.conditioning(mel), model.predictor(mel)
    parallel = model.forward_cond(y, cond, lpc)
    stepwise = incremental_forward(model, y, cond, lpc)
    assert torch.allclose(parallel, stepwise, atol=1e-6, rtol=0)


def test_the_source_leaves_the_teacher_causal_with_the_same_receptive_field():
    model = pitch_teacher(lp_order=0)
    mel = voiced_mel(frames=40, batch=1)
    y = (0.01 * torch.randn(1, 40 * HOP, dtype=torch.float64)).requires_grad_(True)
    t = 500
    params = model(y, mel)
    params[0, 0, t].backward()
    reached = torch.nonzero(y.grad[0]).flatten().tolist()
    assert max(reached) == t - 1  # strictly earlier samples only
    assert t - min(reached) == model.receptive_field()
    bumped = y.detach().clone()
    bumped[0, t] += 1.0
    assert torch.equal(model(bumped, mel)[..., : t + 1], params.detach()[..., : t + 1])


def zero_source_twin(plain: WaveNetTeacher) -> WaveNetTeacher:
    """A pitch-source teacher initialised from `plain` as `--init` does it (zero weights on the source)."""
    twin = pitch_teacher(dtype=next(plain.parameters()).dtype)
    twin.load_state_dict(twin.grown_from(plain.state_dict()))
    assert all(layer.cond.weight[:, N_MELS:].abs().max() == 0 for layer in twin.stack.layers)
    return twin


@pytest.mark.parametrize("method", ["incremental", "naive", "graph", "fast"])
def test_with_the_source_switched_off_every_sampler_draws_what_the_plain_teacher_draws(method):
    if method == "fast" and not available():
        pytest.skip("no C compiler for the fast loop")
    dtype = torch.float32 if method == "fast" else torch.float64
    plain = pitch_teacher(pitch_source=False, dtype=dtype, seed=4)
    assert_same_draws(plain, zero_source_twin(plain), voiced_mel(frames=10, dtype=dtype), method)


def assert_same_draws(plain: WaveNetTeacher, twin: WaveNetTeacher, mel: torch.Tensor, method: str) -> None:
    """`twin` (a teacher widened from `plain` with zero weights on its new inputs) draws what `plain` draws
    with `method` from the same seed: exactly, or to float32 rounding in the C loop."""
    torch.manual_seed(5)
    before = generate(plain, mel, method)
    torch.manual_seed(5)
    after = generate(twin, mel, method)
    assert before.std() > 1e-3
    assert torch.equal(before, after) if method != "fast" else torch.allclose(before, after, atol=1e-6, rtol=0)


def test_every_sampler_draws_from_the_pitch_teachers_law():
    model = pitch_teacher()
    mel = voiced_mel(frames=10)
    draws = {}
    for method in ("incremental", "naive", "graph"):
        torch.manual_seed(5)
        draws[method] = generate(model, mel, method)
    assert torch.allclose(draws["incremental"], draws["naive"], atol=1e-9)
    assert torch.allclose(draws["incremental"], draws["graph"], atol=1e-9)


@pytest.mark.skipif(not available(), reason="no C compiler for the fast loop")
def test_the_c_loop_reads_the_source_like_the_parallel_forward():
    model = pitch_teacher(dtype=torch.float32)
    mel = voiced_mel(frames=10, dtype=torch.float32)
    cond, lpc = model.conditioning(mel), model.predictor(mel)
    y = 0.01 * torch.randn(2, cond.shape[-1])
    _, params = fast_generate(model, cond, prompt=y[:, :-1], return_params=True, chunk=64, lpc=lpc)
    assert torch.allclose(params, model.forward_cond(y, cond, lpc), atol=2e-5)


def test_the_checkpoint_records_the_source_and_a_record_without_one_is_a_plain_teacher():
    model = pitch_teacher()
    record = model.record()
    assert record["model"]["pitch_source"] is True and record["pitch"] == model.pitch_args
    again = WaveNetTeacher.from_record({"model_args": record, "features": to_dict(FEATURES)})
    again.load_state_dict(model.state_dict())
    again = again.double().eval()
    mel = voiced_mel(frames=8)
    assert torch.equal(again.conditioning(mel), model.conditioning(mel))
    plain = pitch_teacher(pitch_source=False).record()
    assert "pitch" not in plain  # what teachers recorded before the option existed
    old = {"model": {k: v for k, v in plain["model"].items() if k != "pitch_source"}, "mel_context": 2}
    loaded = WaveNetTeacher.from_record({"model_args": old, "features": to_dict(FEATURES)})
    assert loaded.pitch is None and loaded.pitch_args is None


@pytest.mark.parametrize("method", ["incremental", "naive", "graph", "fast"])
def test_a_voiced_temperature_equal_to_the_temperature_changes_no_draw(method):
    if method == "fast" and not available():
        pytest.skip("no C compiler for the fast loop")
    dtype = torch.float32 if method == "fast" else torch.float64
    model, mel = pitch_teacher(dtype=dtype), voiced_mel(frames=10, dtype=dtype)
    torch.manual_seed(5)
    plain = generate(model, mel, method, temperature=0.7)
    torch.manual_seed(5)
    assert torch.equal(plain, generate(model, mel, method, temperature=0.7, voiced_temperature=0.7))


def test_every_sampler_draws_the_same_at_a_voiced_temperature_and_it_changes_only_voiced_steps():
    model, mel = pitch_teacher(), voiced_mel(frames=10)
    draws = {}
    for method in ("incremental", "naive", "graph"):
        torch.manual_seed(5)
        draws[method] = generate(model, mel, method, temperature=1.0, voiced_temperature=0.3)
    assert torch.allclose(draws["incremental"], draws["naive"], atol=1e-9)
    assert torch.allclose(draws["incremental"], draws["graph"], atol=1e-9)
    torch.manual_seed(5)
    plain = generate(model, mel, "incremental", temperature=1.0)
    # the first item's pulse train is voiced: its draws change; the same noise elsewhere gives the same
    # audio until the first voiced step (the second item starts with noise, unvoiced)
    voicing = model.conditioning(mel)[:, -1]
    assert voicing[0].max() > 0.9 and not torch.equal(draws["incremental"][0], plain[0])
    first = int((voicing[1] > 0).nonzero()[0])
    assert first > 0 and torch.equal(draws["incremental"][1, :first], plain[1, :first])


def test_step_temperatures_follow_the_source_voicing():
    cond = torch.zeros(2, 5, 4, dtype=torch.float64)
    cond[:, -1] = torch.tensor([[0.0, 1.0, 0.5, 0.25], [1.0, 1.0, 0.0, 0.0]])
    temps = step_temperatures(cond, temperature=1.0, voiced_temperature=0.4)
    assert torch.allclose(temps, torch.tensor([[1.0, 0.4, 0.7, 0.85], [0.4, 0.4, 1.0, 1.0]], dtype=torch.float64))


def test_a_voiced_temperature_needs_a_pitch_source_and_positive_temperatures():
    mel = voiced_mel(frames=6)
    with pytest.raises(ConfigError, match="has none"):
        generate(pitch_teacher(pitch_source=False), mel, "incremental", voiced_temperature=0.5)
    for temperature, voiced in ((0.0, 0.5), (1.0, 0.0), (1.0, float("nan")), (1.0, float("inf"))):
        with pytest.raises(ConfigError, match="both be finite and > 0"):
            generate(pitch_teacher(), mel, "incremental", temperature=temperature, voiced_temperature=voiced)
