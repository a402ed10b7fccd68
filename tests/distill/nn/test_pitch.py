"""Pitch from the mel and the student's pitch-synchronous source (distill.nn.pitch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from distill.audio.mel import LogMel
from distill.config import FeatureConfig
from distill.errors import ConfigError
from distill.nn.pitch import MelPitch, band_limited_pulse, pitch_arguments

SR, HOP = 16000, 256


def voiced(f0_start=110.0, f0_end=260.0, seconds=2.0, seed=0):
    """A glottal-like pulse train whose F0 glides log-linearly from f0_start to f0_end, through two
    formant resonances, with a little noise -> (audio (T,) float32, F0 per sample (T,))."""
    n = int(SR * seconds)
    f0 = f0_start * (f0_end / f0_start) ** (np.arange(n) / n)
    phase = 2 * np.pi * np.cumsum(f0 / SR)
    pulses = np.zeros(n)
    pulses[1:][np.diff(np.floor(phase / (2 * np.pi))) > 0] = 1.0
    x = scipy.signal.lfilter([1.0], [1.0, -0.95], pulses)  # a decaying glottal shape
    for radius, hz in ((0.97, 600.0), (0.95, 1800.0)):
        w = 2 * np.pi * hz / SR
        x = scipy.signal.lfilter([1.0], [1.0, -2 * radius * np.cos(w), radius**2], x)
    x += 1e-3 * np.std(x) * np.random.default_rng(seed).standard_normal(n)
    return torch.from_numpy(0.3 * x / np.abs(x).max()).float(), f0


def frame_f0(f0_per_sample: np.ndarray, frames: int) -> np.ndarray:
    return f0_per_sample[np.arange(frames) * HOP + HOP // 2]


@pytest.mark.parametrize("f0_range", [(110.0, 260.0), (220.0, 140.0)])
def test_the_f0_of_a_voiced_signal_is_recovered_from_its_mel(f0_range):
    x, f0 = voiced(*f0_range)
    mel = LogMel(FeatureConfig())(x)[None]
    est, score = MelPitch()(mel)
    truth = frame_f0(f0, mel.shape[-1])
    cents = 1200 * np.abs(np.log2(est[0, 2:-2].numpy() / truth[2:-2]))  # edge frames see the padding
    assert np.median(cents) < 25 and (cents < 50).mean() > 0.9, np.percentile(cents, [50, 90])
    assert float(score[0, 2:-2].min()) > 0.7  # voiced throughout: v = 1


def test_noise_is_unvoiced():
    x = 0.1 * torch.randn(SR, generator=torch.Generator().manual_seed(0))
    _, score = MelPitch()(LogMel(FeatureConfig())(x)[None])
    assert float(score.median()) < 0.5  # below the voicing weight's lower end: v = 0
    assert float(((score - 0.5) / 0.2).clamp(0, 1).mean()) < 0.1  # the mean soft voicing


def test_the_band_limited_pulse_is_the_sum_of_its_harmonics_with_unit_rms():
    g = torch.Generator().manual_seed(0)
    phase = torch.rand(1000, generator=g, dtype=torch.float64) * 2 * math.pi
    phase[:3] = torch.tensor([0.0, 2 * math.pi, 1e-9])  # the Dirichlet kernel's removable singularity
    k = torch.randint(1, 60, (1000,), generator=g).double()
    explicit = torch.stack([sum(torch.cos(j * p) for j in range(1, int(kk) + 1))
                            for p, kk in zip(phase, k, strict=True)])
    assert torch.allclose(band_limited_pulse(phase, k), explicit / torch.sqrt(k / 2), atol=1e-6)
    period = torch.arange(4096, dtype=torch.float64) / 4096 * 2 * math.pi
    assert float(band_limited_pulse(period, torch.full_like(period, 31)).pow(2).mean()) == pytest.approx(1.0, rel=1e-6)


def test_the_source_runs_at_the_mel_s_pitch_and_follows_its_voicing():
    x, f0 = voiced(150.0, 150.0, seconds=1.0)
    x[SR // 2 :] = 0.05 * torch.randn(SR // 2, generator=torch.Generator().manual_seed(1))  # second half: noise
    mel = LogMel(FeatureConfig())(x)[None]
    src = MelPitch().source(torch.nn.functional.pad(mel, (2, 2), value=math.log(1e-5)), mel_context=2)
    assert src.shape == (1, 4, mel.shape[-1] * HOP) and src.dtype == torch.float32
    v = src[0, 3]
    assert float(v[1000:7000].min()) == 1.0 and float(v[10000:15000].mean()) < 0.15  # noise: rarely voiced
    # the sine channel's spectrum over the voiced part peaks at 150 Hz
    sine = src[0, 1, 1000:7000].double().numpy()
    spectrum = np.abs(np.fft.rfft(sine * np.hanning(sine.size), n=1 << 16))
    assert abs(np.argmax(spectrum) * SR / (1 << 16) - 150.0) < 3.0
    # the mel alone (silence as context) and padded with more silence, as in a batch: the same source
    silence = math.log(1e-5)
    alone = MelPitch().source(torch.nn.functional.pad(mel[..., :40], (2, 2), value=silence), 2)
    batched = MelPitch().source(torch.nn.functional.pad(mel[..., :40], (2, 12), value=silence), 2)
    assert torch.allclose(batched[..., : alone.shape[-1]], alone, atol=1e-6)
    # the phase runs on without jumps, voiced or not: each step advances it by 2 pi F0 / SR, F0 <= f0_max
    steps = torch.diff(torch.atan2(src[0, 1], src[0, 2]).double().where(src[0, 3] > 0, torch.nan))
    steps = steps[~steps.isnan()].remainder(2 * math.pi)
    assert float(steps.max()) <= 2 * math.pi * 500 / SR + 1e-4


def test_bad_pitch_arguments_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="f0_min"):
        MelPitch(f0_min=500, f0_max=100)
    with pytest.raises(ConfigError, match="pitch_source: .*unexpected keyword"):
        MelPitch.build({"f0_floor": 50}, HOP, 80)
    with pytest.raises(ConfigError, match="band_hz"):
        MelPitch(band_hz=100)


def test_a_student_records_every_pitch_argument():
    args = pitch_arguments(FeatureConfig())
    assert args["f0_min"] == 60.0 and args["sample_rate"] == SR and args["voicing"] == [0.5, 0.7]
    MelPitch.build(args, HOP, 80)  # what the checkpoint records builds the same tracker


def test_a_pitch_source_student_conditions_on_the_source_and_stays_an_iaf():
    """The source is conditioning (a function of the mel, not of z): the per-step law still depends on
    strictly earlier noise only, x = mu_tot + s_tot z, and chunked synthesis is still exact."""
    from distill.nn.pitch import SOURCE_CHANNELS
    from students.iaf import IAFStudent, StudentModelConfig, synthesize

    torch.manual_seed(0)
    student = IAFStudent(StudentModelConfig("gaussian", [2, 2], cycle=2, kernel_size=3, residual_channels=8,
                                            gate_channels=8, skip_channels=8, pitch_source=True)).double()
    with torch.no_grad():
        for flow in student.flows:
            flow.head[-1].weight.normal_(0, 0.3)
    x, _ = voiced(150.0, 200.0, seconds=0.25)
    mel = torch.nn.functional.pad(LogMel(FeatureConfig())(x)[None], (2, 2), value=math.log(1e-5)).double()
    cond = student.conditioning(mel)
    assert cond.shape == (1, 80 + SOURCE_CHANNELS, (mel.shape[-1] - 4) * HOP)
    assert torch.equal(cond[:, 80:], MelPitch().source(mel, 2).double())
    assert next(iter(student.flows[0].project_cond(cond))).shape[1] == 2 * 8  # the stacks take the extra channels
    z = torch.randn(1, cond.shape[-1], dtype=torch.float64)
    out = student(z, mel)
    assert torch.allclose(out.x, out.mu_tot + out.log_s_tot.exp() * z, atol=1e-12)
    t = 700
    bumped = z.clone()
    bumped[0, t] += 1.0
    again = student(bumped, mel)
    for name in ("mu_tot", "log_s_tot"):  # step t's law does not see z_t; later steps do
        a, b = getattr(out, name)[0], getattr(again, name)[0]
        assert torch.equal(a[: t + 1], b[: t + 1]) and not torch.equal(a[t + 1 :], b[t + 1 :])
    assert torch.allclose(synthesize(student, mel, z=z, chunk=300), synthesize(student, mel, z=z, chunk=0),
                          atol=1e-12, rtol=0)
    silent = cond.clone()
    silent[:, 80:] = 0
    assert not torch.allclose(student.flow(z, silent).x, out.x)  # the source reaches the output
