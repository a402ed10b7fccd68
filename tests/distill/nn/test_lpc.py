"""Linear prediction from the mel and pre-emphasis: the math the LP-WaveNet teacher relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from distill.audio.mel import LogMel, deemphasis, preemphasis
from distill.config import FeatureConfig
from distill.nn.lpc import (
    MelLPC,
    doubling_levels,
    impulse_response,
    levinson,
    lp_predict,
    lp_synthesis,
    reflection_to_lpc,
    synthesis_block,
)


def ar_process(coeffs, seconds=4.0, sigma=0.01, seed=0) -> torch.Tensor:
    """x_t = sum_k coeffs[k-1] x_(t-k) + sigma e_t, e ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    e = sigma * rng.standard_normal(int(16000 * seconds))
    return torch.from_numpy(scipy.signal.lfilter([1.0], np.r_[1.0, -np.asarray(coeffs)], e)).float()


def all_pole(poles) -> list[float]:
    """Prediction coefficients of the all-pole filter with these (radius, Hz) conjugate pole pairs."""
    roots = [r * np.exp(s * 2j * np.pi * f / 16000) for r, f in poles for s in (1, -1)]
    return list(-np.real(np.poly(roots))[1:])


def test_levinson_solves_the_normal_equations_and_steps_back_up():
    coeffs = all_pole([(0.9, 500), (0.8, 2500)])
    x = ar_process(coeffs, seconds=8).double()
    n = x.numel()
    r = torch.stack([(x[: n - k] * x[k:]).sum() / n for k in range(5)])
    c, k, err = levinson(r[None], 4)
    toeplitz = torch.tensor([[float(r[abs(i - j)]) for j in range(4)] for i in range(4)], dtype=torch.float64)
    assert torch.allclose(toeplitz @ c[0], r[1:], rtol=1e-10)  # the Yule-Walker equations
    assert torch.allclose(c[0], torch.tensor(coeffs, dtype=torch.float64), atol=0.02)  # the process itself
    assert float(err[0]) == pytest.approx(float(r[0] - (c[0] * r[1:]).sum()), rel=1e-10)
    assert (k.abs() < 1).all() and torch.allclose(reflection_to_lpc(k), c, atol=1e-12)


@pytest.mark.parametrize("preemph", [0.0, 0.85])
def test_the_lpc_of_an_all_pole_process_is_recovered_from_its_mel_alone(preemph):
    feats = FeatureConfig()
    coeffs = all_pole([(0.95, 400), (0.9, 1800)])
    x = ar_process(coeffs, sigma=0.01)
    mel = LogMel(feats)(x)[None]
    # no white-noise correction: its -40 dB floor (the default, for conditioning) flattens a process whose
    # spectrum spans more than 40 dB, as this one does
    lpc = MelLPC(order=4, preemphasis=preemph, white_noise=0.0)
    rows = lpc(mel)  # (1, 5, T)
    assert rows.shape == (1, 5, mel.shape[-1] * 256)
    middle = rows[0, :, 4096:-4096]
    if preemph == 0:  # the envelope of an order-4 process is order 4: the true coefficients
        mean = middle[1:].mean(-1)
        assert torch.allclose(mean, torch.tensor(coeffs, dtype=torch.float32), atol=0.05), mean
    y = preemphasis(x, preemph)[None]
    residual = (y - lp_predict(y, rows[:, 1:]))[0, 4096:-4096]
    # the predictor whitens: the residual is close to the innovation (std 0.01), far below the signal's
    assert float(residual.std()) < 1.3 * 0.01 < 0.2 * float(y[0, 4096:-4096].std())
    # and the gain read from the mel predicts the residual's size to within ~25%
    assert float(torch.exp(middle[0]).mean()) == pytest.approx(float(residual.std()), rel=0.25)


def test_silence_and_real_speech_give_stable_finite_predictors():
    feats = FeatureConfig()
    lpc = MelLPC(order=16, preemphasis=0.85)
    silence = torch.full((1, 80, 5), math.log(feats.log_floor))
    speech = LogMel(feats)(ar_process(all_pole([(0.97, 300), (0.9, 1200), (0.8, 3000)]), seconds=1))[None]
    for mel in (silence, speech, torch.cat([silence, speech], dim=-1)):
        k, log_gain = lpc.frame_analysis(mel)
        assert (k.abs() < 1).all() and torch.isfinite(log_gain).all()  # every frame's synthesis filter is stable
        assert torch.isfinite(lpc(mel)).all()


def test_frame_i_conditions_exactly_samples_i_hop_to_i_plus_one_hop():
    """Two different envelopes side by side: the held rows switch exactly at the frame's hop block."""
    feats = FeatureConfig()
    a = LogMel(feats)(ar_process(all_pole([(0.95, 400)]), seconds=0.5))[None]
    b = LogMel(feats)(ar_process(all_pole([(0.9, 2500)]), seconds=0.5, seed=1))[None]
    mel = torch.cat([a[..., 5:8], b[..., 5:8], a[..., 5:7]], dim=-1)  # 8 frames with changes at frames 3 and 6
    lpc = MelLPC(order=6)
    rows = lpc(mel)[0]  # (7, 8 * 256)
    per_frame = lpc.frame_coefficients(mel)[0].float()  # (8, 6)
    for i in range(mel.shape[-1]):
        block = rows[1:, i * 256 : (i + 1) * 256]
        assert torch.allclose(block, per_frame[i][:, None].expand_as(block), atol=1e-6), i
    assert not torch.allclose(per_frame[2], per_frame[3], atol=0.1)  # the test can see a one-frame shift
    smooth = MelLPC(order=6, interpolate=True)(mel)[0]
    # interpolated: half-way between frame centres 2 and 3 (samples 767.5 | 768) the law is the mean of the two
    assert torch.allclose(smooth[0, 767:769].mean(), (rows[0, 767] + rows[0, 768]) / 2, atol=1e-4)
    assert torch.allclose(smooth[0, 640], rows[0, 640], atol=0.02)  # near a frame centre: that frame's gain


def test_interpolated_coefficients_equal_held_ones_for_a_steady_mel_and_stay_stable():
    mel = LogMel(FeatureConfig())(ar_process(all_pole([(0.9, 700)]), seconds=1))[None]
    steady = mel[..., 10:11].expand(-1, -1, 6)
    held, interpolated = MelLPC(order=8), MelLPC(order=8, interpolate=True)
    assert torch.allclose(held(steady), interpolated(steady), atol=1e-6)
    varying = interpolated(mel)
    assert varying.shape == held(mel).shape and torch.isfinite(varying).all()


def test_preemphasis_is_inverted_exactly_with_a_unit_jacobian_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 500, dtype=torch.float64)
    assert torch.allclose(deemphasis(preemphasis(x, 0.85), 0.85), x, atol=1e-12)
    assert torch.allclose(preemphasis(deemphasis(x, 0.85), 0.85), x, atol=1e-12)
    short = torch.randn(6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: preemphasis(v, 0.85), short)
    assert torch.allclose(torch.tril(jac), jac) and float(torch.linalg.det(jac)) == pytest.approx(1.0)
    y = torch.randn(1, 50, dtype=torch.float64, requires_grad=True)
    deemphasis(y, 0.85)[0, -1].backward()  # x_T depends on every y_t with weight a^(T - t)
    assert torch.allclose(y.grad[0], 0.85 ** torch.arange(49, -1, -1, dtype=torch.float64), atol=1e-12)
    assert preemphasis(x, 0.0) is x and deemphasis(x, 0.0) is x


def test_deemphasis_runs_in_float32_under_bf16_autocast():
    """Distillation de-emphasises the student's sample inside the trainer's autocast region."""
    y = torch.randn(2, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = deemphasis(y, 0.85)
    assert x.dtype == torch.float32 and torch.allclose(x, deemphasis(y, 0.85))


def held_stable_coefficients(batch, frames, hop, order, seed=0, dtype=torch.float64) -> torch.Tensor:
    """(B, p, frames * hop): a random stable (and resonant: |k| up to 0.95) predictor per frame, held
    over its hop."""
    g = torch.Generator().manual_seed(seed)
    k = 0.95 * (2 * torch.rand(batch, frames, order, generator=g, dtype=dtype) - 1)
    return reflection_to_lpc(k).repeat_interleave(hop, dim=1).transpose(1, 2).contiguous()


def sequential_synthesis(u, coeffs):
    """The recursion sample by sample: the definition lp_synthesis must equal."""
    y = torch.zeros_like(u)
    for t in range(u.shape[1]):
        acc = u[:, t].clone()
        for k in range(1, coeffs.shape[1] + 1):
            if t - k >= 0:
                acc = acc + coeffs[:, k - 1, t] * y[:, t - k]
        y[:, t] = acc
    return y


@pytest.mark.parametrize("hop,length", [(256, 256 * 5 - 37), (64, 64 * 7), (40, 40 * 6 + 3)])
def test_lp_synthesis_equals_the_sample_by_sample_recursion_and_inverts_the_prediction_error(hop, length):
    order = 8
    coeffs = held_stable_coefficients(2, -(-length // hop), hop, order)[..., :length]
    u = torch.randn(2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block = synthesis_block(hop, order)
    assert hop % block == 0 and order <= block <= 64
    y = lp_synthesis(u, coeffs, block)
    assert torch.allclose(y, sequential_synthesis(u, coeffs), atol=1e-9, rtol=1e-9)
    # the state carried by prefix doubling (the ONNX graph's form): the same to rounding, with the
    # rounds this length needs and with more (a graph's fixed count)
    for levels in (None, 12):
        assert torch.allclose(lp_synthesis(u, coeffs, block, "doubling", levels), y, atol=1e-12, rtol=1e-12)
    # u is the prediction error of y: the teacher's predictor applied to the synthesised signal gives it back
    assert torch.allclose(y - lp_predict(y, coeffs), u, atol=1e-9)
    # float32 stays close (resonant filters, blocks carried over many hops)
    y32 = lp_synthesis(u.float(), coeffs.float(), block)
    assert (y32.double() - y).abs().max() < 1e-4 * y.abs().max()


@pytest.mark.parametrize("carry", ["sequential", "doubling"])
def test_lp_synthesis_is_causal_linear_and_its_gradient_is_the_adjoint_filter(carry):
    order, hop = 4, 16
    coeffs = held_stable_coefficients(1, 3, hop, order, seed=3)
    u = torch.randn(1, 3 * hop, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: lp_synthesis(v, coeffs, hop, carry), (u,))
    # output t depends on inputs s <= t only
    y = lp_synthesis(u, coeffs, hop, carry)
    (grad,) = torch.autograd.grad(y[0, 20], u)
    assert grad[0, 21:].abs().max() == 0 and grad[0, 20] == 1.0


@pytest.mark.parametrize("order,length", [(1, 5), (4, 40), (16, 64), (16, 13)])
def test_impulse_response_is_the_filters(order, length):
    coeffs = held_stable_coefficients(3, 2, 1, order, seed=order)[..., 0]  # (3, p): three filters
    h = impulse_response(coeffs, length)
    impulse = np.r_[1.0, np.zeros(length - 1)]
    for i in range(3):
        expected = scipy.signal.lfilter([1.0], np.r_[1.0, -coeffs[i].numpy()], impulse)
        assert np.allclose(h[i].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_doubling_rounds_cover_two_to_the_rounds_blocks_and_no_more():
    """`levels` rounds compose 2 ** levels block maps: the states of 2 ** levels + 1 blocks, the contract
    behind an export's longest input (`doubling_levels`)."""
    order, block, blocks = 4, 8, 10
    coeffs = held_stable_coefficients(1, blocks, block, order, seed=5)
    u = torch.randn(1, blocks * block, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = lp_synthesis(u, coeffs, block)
    assert doubling_levels(blocks) == 4 and doubling_levels(9) == 3 and doubling_levels(1) == 0
    assert torch.allclose(lp_synthesis(u, coeffs, block, "doubling", 4), y, atol=1e-12)
    short = lp_synthesis(u, coeffs, block, "doubling", 3)  # 8 maps: exact up to block 8 of 0..9
    assert torch.allclose(short[:, : 9 * block], y[:, : 9 * block], atol=1e-12)
    assert not torch.allclose(short[:, 9 * block :], y[:, 9 * block :], atol=1e-6)
    with pytest.raises(ValueError, match="carry must be"):
        lp_synthesis(u, coeffs, block, "scan")


def test_lp_synthesis_stays_in_full_precision_under_bf16_autocast():
    """bf16 training on a GPU runs the student's forward under autocast: the filter must not follow."""
    coeffs = held_stable_coefficients(1, 4, 64, 16, dtype=torch.float32)
    u = 1e-3 * torch.randn(1, 256)
    exact = lp_synthesis(u, coeffs, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = lp_synthesis(u, coeffs, 64)
        from_bf16 = lp_synthesis(u.bfloat16(), coeffs, 64)
    assert low.dtype == torch.float32 and torch.equal(low, exact)
    assert from_bf16.dtype == torch.float32


def test_an_unknown_predictor_argument_is_one_config_error_in_a_config_and_in_the_predictor():
    from distill.config import load_config
    from distill.errors import ConfigError
    from distill.nn.lpc import MelLPC
    from teachers.task import TeacherConfig

    with pytest.raises(ConfigError, match="unknown key 'model.linear_prediction.lag_window'.*lag_window_hz"):
        load_config(TeacherConfig, "configs/teacher/gaussian_tiny.yaml", ["model.linear_prediction.lag_window=60"])
    bad = {"order": 4, "lag_window": 60.0}  # lag_window_hz misspelt
    with pytest.raises(ConfigError, match="linear_prediction: .*lag_window"):
        MelLPC.build(bad, 256, 80, 0.0)


def test_a_cast_model_keeps_its_mel_analyses_in_float64():
    """`model.float()` / `.half()` cast parameters; the predictor's and the pitch tracker's float64
    buffers keep their values (a float32 round trip of the pseudo-inverse moves a resonant frame's
    reflection coefficients), and their outputs stay bit-identical."""
    from distill.nn.pitch import MelPitch

    features = FeatureConfig()
    mel = LogMel(features)(ar_process(all_pole([(0.98, 500), (0.95, 1500)]), seconds=0.5))[None]
    holder = torch.nn.Module()
    holder.lpc, holder.pitch = MelLPC(order=16, preemphasis=0.85), MelPitch()
    before = {name: buf.clone() for name, buf in holder.named_buffers()}
    lpc, (f0, score) = holder.lpc(mel), holder.pitch(mel)
    for cast in (holder.float, holder.half, holder.double):
        cast()
        for name, buf in holder.named_buffers():
            assert buf.dtype == torch.float64 and torch.equal(buf, before[name]), name
        assert torch.equal(holder.lpc(mel), lpc)
        assert all(torch.equal(a, b) for a, b in zip(holder.pitch(mel), (f0, score), strict=True))
