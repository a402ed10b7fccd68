"""The compiled sampling loop: the same recursion as the PyTorch paths, to float32 rounding."""

from __future__ import annotations

import pytest
import torch

from teachers.sampling import generate
from teachers.sampling.fastloop import available, fast_generate
from tests.models import HEADS, small_teacher
from tests.models import teacher_inputs as inputs

pytestmark = pytest.mark.skipif(not available(), reason="no C compiler for the fast loop")


def teacher_and_cond(kernel_size=2, batch=2, frames=40, distribution="gaussian", args=None, **kw):
    model = small_teacher(distribution, args, kernel_size=kernel_size, dtype=torch.float32, **kw)
    with torch.no_grad():  # a head that is far from zero, so every path matters
        model.stack.head[-1].weight.normal_(0, 0.5)
    x, mel = inputs(model, frames=frames, batch=batch, dtype=torch.float32)
    return model, x, model.conditioning(mel), mel


@pytest.mark.parametrize("distribution, args", HEADS, ids=[h[0] for h in HEADS])
@pytest.mark.parametrize("kernel_size, layers, cycle", [(2, 6, 3), (3, 5, 4), (1, 3, 3)])
def test_teacher_forced_parameters_equal_the_parallel_forward(kernel_size, layers, cycle, distribution, args):
    model, x, cond, _ = teacher_and_cond(kernel_size, layers=layers, cycle=cycle, distribution=distribution, args=args)
    # a prompt of all but the last sample forces every step's input; params are read back per step
    audio, params = fast_generate(model, cond, prompt=x[:, :-1], return_params=True, chunk=64)
    reference = model.forward_cond(x, cond)
    assert params.shape == reference.shape and torch.allclose(params, reference, atol=2e-5)
    assert torch.equal(audio[:, :-1], x[:, :-1])


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_every_sample_is_the_draw_its_own_parameters_and_noise_imply(temperature):
    model, _, cond, _ = teacher_and_cond(kernel_size=3, batch=3, layers=5, cycle=4)
    noise = torch.randn(3, cond.shape[-1])
    audio = fast_generate(model, cond, temperature=temperature, noise=noise, chunk=50)  # chunk seams inside
    mu, log_s = model.dist.unpack(model.forward_cond(audio, cond))  # teacher-forced on its own output
    assert torch.allclose(audio, (mu + temperature * torch.exp(log_s) * noise).clamp(-1, 1), atol=2e-5)
    assert audio.abs().max() <= 1 and audio.std() > 0.01


@pytest.mark.parametrize("distribution, args", HEADS[1:], ids=[h[0] for h in HEADS[1:]])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_mixture_and_mulaw_draws_are_the_distributions_own_function_of_the_uniforms(distribution, args, temperature):
    model, _, cond, _ = teacher_and_cond(kernel_size=3, batch=3, layers=5, cycle=4, distribution=distribution,
                                         args=args)
    dist = model.dist
    u = torch.rand(3, dist.uniforms_per_step, cond.shape[-1])
    audio = fast_generate(model, cond, temperature=temperature, noise=u, chunk=50)
    expected = dist.draw(model.forward_cond(audio, cond), u, temperature)  # teacher-forced on its own output
    close = (audio - expected).abs() <= 2e-5
    # float32 rounding may tip a value lying on a bin edge into the neighbouring bin, rarely
    assert close.float().mean() > 0.99
    if distribution == "mol":
        assert ((audio - expected).abs() <= 2.0 / dist.num_bins + 2e-5).all()
    assert audio.abs().max() <= 1 and (audio.std() > 0.01 or temperature == 0)


@pytest.mark.parametrize("distribution, args", HEADS, ids=[h[0] for h in HEADS])
def test_mean_mode_and_generate_dispatch_match_the_incremental_sampler(distribution, args):
    model, _, _, mel = teacher_and_cond(distribution=distribution, args=args)
    fast = generate(model, mel, method="fast", mode="mean")
    slow = generate(model, mel, method="incremental", mode="mean")
    assert torch.allclose(fast, slow, atol=2e-5)


def test_loading_the_loop_leaves_the_process_floating_point_mode_alone():
    # a -ffast-math shared library can switch the whole process to flush-to-zero when it loads
    assert available()
    assert (torch.tensor([1e-38]) / 100).item() > 0
    assert (torch.tensor([1e-310], dtype=torch.float64) / 10).item() > 0


def test_noise_of_the_wrong_shape_is_refused():
    model, _, cond, _ = teacher_and_cond()
    with pytest.raises(ValueError, match="noise must have shape"):
        fast_generate(model, cond, noise=torch.randn(1, cond.shape[-1]))
    model, _, cond, _ = teacher_and_cond(distribution="mol", args={"num_components": 3, "num_bins": 256})
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 4, 160\)"):
        fast_generate(model, cond, noise=torch.rand(2, cond.shape[-1]))


def test_the_fastest_method_per_device():
    from teachers.sampling import fastest_method
    from teachers.sampling.fastloop import unsupported

    model = small_teacher("mol", {"num_components": 2, "num_bins": 256}, dtype=torch.float32)
    assert unsupported(model) is None
    assert fastest_method(model, torch.device("cpu")) == "fast"
    assert fastest_method(model, torch.device("cuda")) == "graph"


def test_at_batch_1_wide_layers_take_the_register_blocked_products_and_give_the_same_parameters():
    """At batch 1 the C loop's products keep 64 outputs in registers (`axpy_rows`); widths of 80 gate and
    70 skip outputs run a block and a remainder. Teacher-forced, its parameters equal the parallel forward."""
    from teachers.wavenet import TeacherModelConfig, WaveNetTeacher
    from tests.models import tiny_features

    torch.manual_seed(0)
    config = TeacherModelConfig(layers=4, cycle=2, kernel_size=2, residual_channels=40, gate_channels=40,
                                skip_channels=70, upsample_scales=[2, 2])
    model = WaveNetTeacher(config, tiny_features()[0], mel_context=2).eval()
    with torch.no_grad():
        model.stack.head[-1].weight.normal_(0, 0.5)
    x, mel = inputs(model, frames=30, batch=1, dtype=torch.float32)
    cond = model.conditioning(mel)
    audio, params = fast_generate(model, cond, prompt=x[:, :-1], return_params=True, chunk=64)
    reference = model.forward_cond(x, cond)
    assert params.shape == reference.shape == (1, 2, x.shape[-1])
    torch.testing.assert_close(params, reference.detach(), atol=2e-5, rtol=1e-5)
    assert torch.equal(audio[:, :-1], x[:, :-1])


@pytest.mark.parametrize("distribution, args", HEADS, ids=[h[0] for h in HEADS])
def test_each_step_is_drawn_at_its_own_temperature(distribution, args):
    """A temperature per step (a voiced temperature, `teachers.sampling.step_temperatures`): every sample is
    the draw its parameters, noise and own temperature imply, as the distribution computes it."""
    model, _, cond, _ = teacher_and_cond(kernel_size=3, batch=3, layers=5, cycle=4, distribution=distribution,
                                         args=args)
    dist = model.dist
    temps = 0.2 + 0.8 * torch.rand(3, cond.shape[-1])
    if distribution in ("gaussian", "logistic"):
        noise = dist.sample(torch.zeros(3, 2, cond.shape[-1]))
        audio = fast_generate(model, cond, temperature=temps, noise=noise, chunk=50)
        mu, log_s = dist.unpack(model.forward_cond(audio, cond))
        expected = (mu + temps * torch.exp(log_s) * noise).clamp(-1, 1)
    else:
        noise = torch.rand(3, dist.uniforms_per_step, cond.shape[-1])
        audio = fast_generate(model, cond, temperature=temps, noise=noise, chunk=50)
        expected = dist.draw(model.forward_cond(audio, cond), noise, temps)
    close = (audio - expected).abs() <= 2e-5
    assert close.float().mean() > 0.99  # a mixture's bin edge or a tie of two classes may tip, rarely
    # the same temperature at every step is the plain temperature, draw for draw
    same = fast_generate(model, cond, temperature=torch.full_like(temps, 0.6), noise=noise, chunk=50)
    assert torch.equal(same, fast_generate(model, cond, temperature=0.6, noise=noise, chunk=50))


def test_the_loop_is_built_from_the_source_the_module_was_imported_with(tmp_path, monkeypatch):
    """A running process whose fastloop.c changes on disk (an upgrade under a long training) still builds the
    loop its own argument list describes: the source is read once, at import."""
    from teachers.sampling import fastloop

    changed = tmp_path / "fastloop.c"
    changed.write_text("int wavenet_steps(void) { return -1; }  /* another version's signature */\n")
    monkeypatch.setattr(fastloop, "SOURCE", changed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no library built before
    lib = fastloop._build()
    assert lib is not None and list((tmp_path / "cache" / "wavedistill").glob("fastloop_*.so"))
    model, _, cond, _ = teacher_and_cond(batch=1, frames=4)
    noise = torch.randn(1, cond.shape[-1])
    monkeypatch.setattr(fastloop, "_lib", lib)
    audio = fast_generate(model, cond, noise=noise, chunk=16)
    mu, log_s = model.dist.unpack(model.forward_cond(audio, cond))
    assert torch.allclose(audio, (mu + torch.exp(log_s) * noise).clamp(-1, 1), atol=2e-5)
