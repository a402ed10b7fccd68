"""The teacher's math: causality, receptive field, incremental == parallel, sampling, overfitting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.audio.io import load_audio
from distill.audio.mel import LogMel, pad_mel
from distill.config import FeatureConfig
from distill.data.corpus import resolve_corpus
from distill.errors import ConfigError
from teachers.sampling import generate, incremental_forward
from teachers.sampling.stepper import StackStepper
from teachers.wavenet import TeacherModelConfig, WaveNetTeacher
from tests.models import HEADS, small_teacher
from tests.models import teacher_inputs as inputs


@pytest.mark.parametrize("kernel_size, layers, cycle", [(2, 6, 3), (3, 5, 4)])
def test_receptive_field_formula(kernel_size, layers, cycle):
    model = small_teacher(kernel_size=kernel_size, layers=layers, cycle=cycle)
    dilations = [2 ** (i % cycle) for i in range(layers)]
    assert model.receptive_field() == (kernel_size - 1) * sum(dilations) + 1


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_perturbing_the_future_leaves_the_past_unchanged(kernel_size):
    model = small_teacher(kernel_size=kernel_size)
    x, mel = inputs(model)
    base = model(x, mel)
    for s in (0, 17, 50):
        y = x.clone()
        y[:, s] += 0.5
        out = model(y, mel)
        assert torch.equal(out[:, :, : s + 1], base[:, :, : s + 1])  # p(x_t | x_<t) for t <= s: untouched
        assert not torch.allclose(out[:, :, s + 1], base[:, :, s + 1])  # x_s does reach t = s + 1


@pytest.mark.parametrize("kernel_size, layers, cycle", [(2, 6, 3), (3, 5, 4)])
def test_one_hot_gradient_measures_the_receptive_field(kernel_size, layers, cycle):
    model = small_teacher(kernel_size=kernel_size, layers=layers, cycle=cycle)
    x, mel = inputs(model, frames=30, batch=1)
    x.requires_grad_(True)
    t = 100
    model(x, mel)[0, :, t].sum().backward()
    reached = (x.grad[0].abs() > 0).nonzero().flatten().tolist()
    assert max(reached) == t - 1  # strictly earlier samples only
    assert t - min(reached) == model.receptive_field()  # x_{t-R} .. x_{t-1}


@pytest.mark.parametrize("distribution, args", HEADS, ids=[h[0] for h in HEADS])
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_incremental_equals_teacher_forced_forward(distribution, args, kernel_size):
    model = small_teacher(distribution, args, kernel_size=kernel_size)
    x, mel = inputs(model)
    cond = model.conditioning(mel)
    parallel = model.forward_cond(x, cond)
    stepwise = incremental_forward(model, x, cond)
    assert parallel.shape == stepwise.shape
    assert torch.allclose(parallel, stepwise, atol=1e-6, rtol=0)


def test_incremental_and_naive_sampling_draw_the_same_audio():
    model = small_teacher(kernel_size=3)
    _, mel = inputs(model, frames=12)
    torch.manual_seed(5)
    fast = generate(model, mel, "incremental")
    torch.manual_seed(5)
    slow = generate(model, mel, "naive")
    assert fast.shape == (2, 48) and torch.allclose(fast, slow, atol=1e-9)
    assert fast.abs().max() <= 1
    assert not torch.allclose(fast[0], fast[1])  # the batch items are independent draws


def test_sampling_continues_a_prompt_the_same_way_in_both_methods():
    model = small_teacher(kernel_size=3)
    x, mel = inputs(model, frames=12)
    torch.manual_seed(7)
    fast = generate(model, mel, "incremental", prompt=x[:, :30])
    torch.manual_seed(7)
    slow = generate(model, mel, "naive", prompt=x[:, :30])
    assert torch.equal(fast[:, :30], x[:, :30]) and torch.allclose(fast, slow, atol=1e-9)
    torch.manual_seed(7)
    assert not torch.allclose(generate(model, mel, "incremental")[:, 30:], fast[:, 30:])  # the prompt matters


def test_mean_mode_and_temperature_zero_are_deterministic():
    model = small_teacher()
    _, mel = inputs(model, frames=8)
    a = generate(model, mel, mode="mean")
    b = generate(model, mel, mode="mean")
    c = generate(model, mel, temperature=0.0)
    assert torch.equal(a, b) and torch.allclose(a, c)


def test_speaker_embedding_changes_the_output():
    model = small_teacher(num_speakers=3, speaker_dim=4)
    x, mel = inputs(model)
    a = model(x, mel, torch.tensor([0, 0]))
    b = model(x, mel, torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ConfigError, match="multi-speaker .3 speakers.: pass speaker ids"):
        model(x, mel)
    with pytest.raises(ConfigError, match="no speaker input"):
        small_teacher()(x, mel, torch.tensor([0, 0]))


def test_a_tiny_teacher_overfits_one_clip_well_below_the_unconditional_baseline():
    features = FeatureConfig()
    utt = resolve_corpus("demo", "train")[0]
    audio = load_audio(utt.path, 16000)[8000 : 8000 + 4096][None]  # 0.26 s of voiced speech
    mel = pad_mel(LogMel(features)(audio), 2, math.log(1e-5))
    torch.manual_seed(0)
    model = WaveNetTeacher(TeacherModelConfig(layers=8, cycle=8, residual_channels=16, gate_channels=16,
                                              skip_channels=16), features, mel_context=2)
    # an i.i.d. Gaussian fitted to the clip: what a model that ignores context and mel achieves
    baseline = 0.5 * math.log(2 * math.pi * math.e * float(audio.var()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(300):  # ~10 s on 2 CPU cores
        nll = -model.log_prob(audio, mel).mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
        history.append(nll.item())
    assert history[0] > baseline  # it starts worse than the baseline...
    assert min(history[-50:]) < baseline - 1.5, (history[-50:], baseline)  # ...and ends far below it
    assert history[-1] < baseline - 0.5


@pytest.mark.parametrize("mode, scales, hop", [("stretch", [2, 2], 4), ("transposed", [2, 2], 4),
                                               ("transposed", [5, 6, 10], 300), ("stretch", [5, 3], 15),
                                               ("repeat", [4], 4)])
def test_mel_upsampler_covers_exactly_the_central_frames_and_is_centred(mode, scales, hop):
    from distill.nn.conditioning import MelUpsampler

    torch.manual_seed(0)
    up = MelUpsampler(1, hop, scales, mode, context=3).double()
    with torch.no_grad():
        for conv in up.convs:  # positive, symmetric kernels: the response to an impulse stays centred
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    frames, f = 10, 4
    mel = torch.zeros(1, 1, frames + 6, dtype=torch.float64)
    mel[0, 0, 3 + f] = 1.0  # an impulse in central frame f
    out = up(mel)[0, 0].detach()
    assert out.shape == (frames * hop,)
    positions = torch.arange(out.numel(), dtype=torch.float64)
    centre = float((out.clamp(min=0) * positions).sum() / out.clamp(min=0).sum())
    assert centre == pytest.approx(f * hop + (hop - 1) / 2, abs=0.01)  # the centre of hop block f
    assert up.context_frames() <= 3


def test_too_little_mel_context_for_the_upsampler_is_a_config_error():
    with pytest.raises(ConfigError, match="set data.mel_context >= 2"):
        WaveNetTeacher(mel_context=1)


def test_incremental_crosses_conditioning_chunks():
    model = small_teacher(kernel_size=3)
    x, mel = inputs(model, frames=30)
    cond = model.conditioning(mel)
    stepper = StackStepper(model.stack, cond, chunk=7)  # 120 steps: 17 chunk boundaries
    prev = torch.zeros(2, 1, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        outs.append(stepper.step(prev))
        prev = x[:, t : t + 1]
    assert torch.allclose(torch.stack(outs, -1), model.forward_cond(x, cond), atol=1e-6)


@pytest.mark.parametrize("s", [1, 2, 5, 16])
def test_polyphase_stretch_equals_repeat_then_convolve(s):
    from distill.nn.conditioning import _stretch

    torch.manual_seed(s)
    conv = torch.nn.Conv1d(3, 3, 2 * s + 1, padding=s, groups=3).double()
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    assert torch.allclose(_stretch(x, conv, s), conv(x.repeat_interleave(s, dim=-1)), atol=1e-12)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_macs_per_sample_matches_torchs_flop_counter(kernel_size):
    from torch.utils.flop_counter import FlopCounterMode

    from distill.nn.wavenet import WaveNetStack

    stack = WaveNetStack(1, 2, layers=5, cycle=3, kernel_size=kernel_size, residual_channels=8, gate_channels=12,
                         skip_channels=6, cond_channels=5)
    length = 64
    with FlopCounterMode(display=False) as counter:
        stack(torch.randn(2, 1, length), torch.randn(2, 5, length))
    assert counter.get_total_flops() == 2 * stack.macs_per_sample() * 2 * length  # FLOPs = 2 MACs, batch 2


def test_a_mol_teachers_log_density_is_its_bin_probability_over_the_bin_width():
    model = small_teacher("mol", {"num_components": 3, "num_bins": 256})
    x, mel = inputs(model)
    gap = model.log_density(x, mel) - model.log_prob(x, mel)
    assert torch.allclose(gap, torch.full_like(gap, -math.log(2 / 256)))
    gaussian = small_teacher("gaussian")
    assert torch.equal(gaussian.log_density(x, mel), gaussian.log_prob(x, mel))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "magic"}, "method must be one of 'incremental', 'graph', 'fast', 'naive'"),
    ({"mode": "greedy"}, "mode must be 'sample' or 'mean'"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"prompt": torch.zeros(1, 10)}, r"prompt must be \(batch=2, P\) with P < 80 samples"),
    ({"prompt": torch.zeros(2, 80)}, r"prompt must be \(batch=2, P\) with P < 80 samples"),
])
def test_generate_checks_method_mode_temperature_and_prompt_before_sampling(kwargs, message):
    model = small_teacher().train()
    _, mel = inputs(model)
    with pytest.raises(ValueError, match=message):
        generate(model, mel, **kwargs)
    assert model.training  # its mode is given back when a check fails too


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("float32_layers", [0, 2])
def test_the_in_place_inference_pass_gives_the_training_forwards_numbers_bit_for_bit(batch, autocast, float32_layers):
    """`WaveNetStack.infer_in_place` (what forward runs without autograd off the CPU) repeats the
    convolutional forward's operations in place: bit for bit at batch 1; at batch > 1 the gate halves
    are strided views, whose row ends PyTorch computes with its scalar kernels, so the last bit may differ."""
    from distill.nn.wavenet import WaveNetStack

    torch.manual_seed(0)
    stack = WaveNetStack(1, 2, layers=6, cycle=3, kernel_size=3, residual_channels=8, gate_channels=12,
                         skip_channels=10, cond_channels=5)
    stack.float32_layers = float32_layers
    x, c = torch.randn(batch, 1, 300), torch.randn(batch, 5, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        reference = stack.forward_channels_first(x, c)
        with torch.no_grad():
            fast = stack.infer_in_place(x, c)
    assert reference.requires_grad and not fast.requires_grad
    assert fast.dtype == reference.dtype
    if batch == 1:
        assert torch.equal(fast, reference)
    else:
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6 if not autocast else 1e-2)


def test_under_bf16_autocast_a_teachers_input_and_first_two_layers_run_in_float32(monkeypatch):
    """In each form of the forward: without grad, convolutional with grad, and time-major (what a CPU
    trains with under bf16 autocast): the products with a dilated conv's weights are float32 in the
    first two layers and bf16 after them."""
    from torch.overrides import TorchFunctionMode

    import distill.nn.wavenet

    teacher = small_teacher("gaussian", dtype=torch.float32)
    assert teacher.stack.float32_layers == 2
    dtypes = []
    hooks = [layer.conv.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
             for layer in teacher.stack.layers]
    hooks.append(teacher.stack.input.register_forward_hook(lambda module, args, out: inputs_dtype.append(out.dtype)))
    taps = {id(layer.conv.weight) for layer in teacher.stack.layers}
    inputs_dtype: list = []

    class TapProducts(TorchFunctionMode):  # the time-major form's products: the input 1x1, a dilated conv's taps
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            base = getattr(args[1], "_base", None) if func is torch.nn.functional.linear else None
            if base is teacher.stack.input.weight:
                inputs_dtype.append(out.dtype)
            elif len(args) > 2 and id(base) in taps:  # the current tap (the one with the bias)
                dtypes.append(out.dtype)
            return out

    y, mel = inputs(teacher, dtype=torch.float32)
    for form in ("no grad", "channels first", "time major"):
        dtypes.clear()
        inputs_dtype.clear()
        monkeypatch.setattr(distill.nn.wavenet, "time_major", lambda x, form=form: form == "time major")
        if form == "time major":  # hooked convs keep the convolutional form (`WaveNetStack.hooked`)
            for hook in hooks:
                hook.remove()
            assert not teacher.stack.hooked()
        with torch.set_grad_enabled(form != "no grad"), torch.autocast("cpu", dtype=torch.bfloat16), TapProducts():
            teacher(y, mel)
        assert len(dtypes) == len(teacher.stack.layers) and inputs_dtype == [torch.float32], form
        assert dtypes[:2] == [torch.float32] * 2 and set(dtypes[2:]) == {torch.bfloat16}, form


@pytest.mark.parametrize(("kernel_size", "cond_channels", "length"), [(2, 5, 300), (3, 5, 300), (2, 0, 300), (2, 5, 6)])
def test_the_time_major_training_forward_is_the_convolutional_one_values_and_gradients(
        kernel_size, cond_channels, length):
    """`forward_time_major` (a CPU's training forward under bf16 autocast) against
    `forward_channels_first` in float64: outputs and the gradients of input, conditioning and every
    weight, with taps reaching past the start (length 6 < the dilations)."""
    from distill.nn.wavenet import WaveNetStack

    torch.manual_seed(0)
    stack = WaveNetStack(1, 2, layers=6, cycle=4, kernel_size=kernel_size, residual_channels=8, gate_channels=12,
                         skip_channels=10, cond_channels=cond_channels).double()  # dilations 1, 2, 4, 8, 1, 2
    with torch.no_grad():
        stack.head[-1].weight.normal_(0, 0.5)
    x = torch.randn(2, 1, length, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, cond_channels, length, dtype=torch.float64, requires_grad=True) if cond_channels else None
    wrt = [x, *([c] if c is not None else []), *stack.parameters()]
    expected, got = stack.forward_channels_first(x, c), stack.forward_time_major(x, c)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(got, wrt, g), torch.autograd.grad(expected, wrt, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_cpu_trains_time_major_under_bf16_autocast_only_and_never_past_a_convs_hooks():
    """Time-major under bf16 autocast only; a stack whose convs carry hooks (torch.nn.utils.weight_norm
    recomputes the weight in a pre-hook, which the time-major form would skip) keeps the convolutions."""
    from distill.nn.layers import time_major
    from distill.nn.wavenet import WaveNetStack

    torch.manual_seed(0)
    stack = WaveNetStack(1, 2, layers=4, cycle=2, residual_channels=16, gate_channels=16, skip_channels=16,
                         cond_channels=5)
    x, c = torch.randn(2, 1, 200), torch.randn(2, 5, 200)
    assert not time_major(x) and not stack.hooked()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert not time_major(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert time_major(x)
        torch.testing.assert_close(stack(x, c), stack.forward_channels_first(x, c), rtol=0.05, atol=0.05)
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(stack.layers[1].conv)
    assert stack.hooked()
    optimiser = torch.optim.SGD(stack.parameters(), lr=0.01)
    for _ in range(2):  # the second step would fail ("backward through the graph a second time") time-major
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = stack(x, c).float().square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_one_config_builds_the_teacher_and_is_what_its_checkpoint_records(tmp_path):
    from distill.config import to_dict
    from teachers.pretrained import load_teacher
    from teachers.wavenet import LinearPredictionConfig
    from tests.models import save_model

    config = TeacherModelConfig("mol", {"num_components": 2, "num_bins": 256}, layers=3, cycle=3,
                                residual_channels=8, gate_channels=8, skip_channels=8, num_speakers=2, speaker_dim=4,
                                linear_prediction=LinearPredictionConfig(order=4))
    features = FeatureConfig(preemphasis=0.85, log_floor=1e-4)
    torch.manual_seed(0)
    model = WaveNetTeacher(config, features, mel_context=3).double().eval()
    config.layers = 99  # changed after the build: neither the model nor its record follows
    assert len(model.stack.layers) == 3 and model.record() == {"model": to_dict(model.config), "mel_context": 3}
    assert model.record()["model"]["linear_prediction"] == to_dict(LinearPredictionConfig(order=4))
    loaded, payload = load_teacher(save_model(tmp_path / "t.pt", model, "teacher"))
    assert loaded.record() == model.record() and loaded.features == features
    assert loaded.upsampler.silence == math.log(1e-4)  # from the features: no copy of its own
    g = torch.Generator().manual_seed(0)
    mel, y = torch.randn(2, 80, 4 + 6, generator=g), 0.1 * torch.randn(2, 4 * 256, generator=g)
    speaker = torch.tensor([0, 1])
    assert torch.equal(loaded.double().log_prob(y.double(), mel.double(), speaker),
                       model.log_prob(y.double(), mel.double(), speaker))


def test_teacher_checkpoints_of_flat_constructor_arguments_load_as_their_config_with_the_same_numbers():
    """The single-voice teacher (written without mel_silence) and the MoL run's checkpoint (with it) predate
    the config as constructor argument: they load as the config their run was trained with, and the
    single-voice teacher gives the log density it gave before the change."""
    from distill.audio.mel import LogMel
    from distill.config import from_dict
    from distill.train.checkpoint import load_checkpoint
    from teachers.pretrained import load_teacher, single_voice_teacher_path

    for path in (single_voice_teacher_path(), single_voice_teacher_path().parent / "training" / "mol_lp_tiny"):
        payload = load_checkpoint(path)
        assert "model" not in payload["model_args"]
        teacher, _ = load_teacher(path)
        assert teacher.config == from_dict(TeacherModelConfig, payload["config"]["model"])
        assert teacher.mel_context == 2 and teacher.features.preemphasis == 0.85
    teacher, payload = load_teacher(single_voice_teacher_path())
    x = load_audio(resolve_corpus("demo", "test")[0].path, 16000)[: 62 * 256][None]
    mel = teacher.pad_mels(LogMel(FeatureConfig(**payload["features"]))(x[0])[:, :62])
    with torch.no_grad():  # measured with the code before the change (flat constructor arguments)
        assert float(teacher.log_prob(x, mel).mean()) == pytest.approx(4.9560723, abs=1e-4)


def test_flat_arguments_that_disagree_with_the_features_are_one_checkpoint_error(tmp_path):
    from distill.errors import CheckpointError
    from teachers.pretrained import load_teacher
    from tests.models import save_model

    model = WaveNetTeacher(TeacherModelConfig(layers=2, cycle=2, residual_channels=4, gate_channels=4, skip_channels=4))
    flat = {**model.record()["model"], "linear_prediction": None, "n_mels": 40, "hop_length": 256, "mel_context": 2}
    save_model(tmp_path / "t.pt", model, "teacher", model_args=flat)
    with pytest.raises(CheckpointError, match=r"disagree with its features \(n_mels 40 \(features: 80\)\)") as err:
        load_teacher(tmp_path / "t.pt")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[2] / "configs" / "teacher").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_teacher_preset_builds_a_teacher_that_scores_audio(preset):
    from distill.config import load_config
    from teachers.task import TeacherConfig, build_teacher

    cfg = load_config(TeacherConfig, preset)
    torch.manual_seed(0)
    teacher = build_teacher(cfg).eval()
    hop, ctx = cfg.features.hop_length, cfg.data.mel_context
    assert teacher.receptive_field() > cfg.model.layers
    x = 0.1 * torch.randn(1, 4 * hop)
    mel = torch.randn(1, cfg.features.n_mels, 4 + 2 * ctx) - 5
    with torch.no_grad():
        nll = -teacher.log_density(x, mel)
    assert nll.shape == (1, 4 * hop) and torch.isfinite(nll).all()
