"""Pitch from the mel and the student's pitch-synchronous source (distill.nn.pitch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from distill.audio.mel import LogMel
from distill.config import FeatureConfig, to_dict
from distill.errors import ConfigError
from distill.nn.pitch import MelPitch, band_limited_pulse, pitch_arguments, running_median

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
    for width in (0, 2, True, 3.0):
        with pytest.raises(ConfigError, match="f0_median must be an odd number"):
            MelPitch(f0_median=width)


def test_a_student_records_every_pitch_argument():
    args = pitch_arguments(FeatureConfig())
    assert args["f0_min"] == 60.0 and args["sample_rate"] == SR and args["voicing"] == [0.5, 0.7]
    assert args["f0_median"] == 1  # off
    MelPitch.build(args, HOP, 80)  # what the checkpoint records builds the same tracker
    del args["f0_median"]  # what checkpoints recorded before the median: off
    assert MelPitch.build(args, HOP, 80).f0_median == 1


def test_the_running_median_removes_an_isolated_jump_and_keeps_steps_and_edges():
    track = torch.tensor([[7.0, 7.0, 8.0, 7.0, 7.0, 6.0, 6.0, 6.0]], dtype=torch.float64)
    assert running_median(track, 3).tolist() == [[7.0, 7.0, 7.0, 7.0, 7.0, 6.0, 6.0, 6.0]]
    assert torch.equal(running_median(track, 1), track)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, generator=g, dtype=torch.float64)
    edged = torch.cat([x[:, :1], x[:, :1], x, x[:, -1:], x[:, -1:]], dim=-1)
    # torch's own median over the same windows, the edges replicated
    assert torch.equal(running_median(x, 5), edged.unfold(-1, 5, 1).median(-1).values)


def test_the_f0_median_removes_a_one_frame_octave_jump_and_keeps_the_voicing():
    """A 110 Hz mel with one frame taken from a 220 Hz one: the tracker jumps an octave for that frame,
    the median over 3 frames takes the neighbours' F0 there and changes nothing else by more than it would."""
    low = LogMel(FeatureConfig())(voiced(110.0, 110.0, seconds=1.0)[0])[None]
    high = LogMel(FeatureConfig())(voiced(220.0, 220.0, seconds=1.0)[0])[None]
    mel = low.clone()
    mel[..., 30] = high[..., 30]
    raw, score = MelPitch()(mel)
    smooth, same_score = MelPitch(f0_median=3)(mel)
    assert torch.equal(score, same_score)  # the voicing does not change
    cents = lambda f: 1200 * torch.log2(f[0] / 110.0)  # noqa: E731
    assert abs(float(cents(raw)[30]) - 1200) < 100  # the raw track jumps an octave at frame 30
    assert float(cents(smooth)[29:32].abs().max()) < 50  # the median does not
    assert torch.allclose(smooth, 2 ** running_median(torch.log2(raw), 3), rtol=1e-12)


@pytest.mark.parametrize("width, context, exact", [(1, 2, True), (3, 2, True), (5, 2, False), (5, 3, True)])
def test_a_crop_with_enough_context_gets_the_whole_utterance_s_source(width, context, exact):
    """Training crops carry `mel_context` real frames on each side: with as many as `context_frames`, a
    crop's F0 and voicing are the whole utterance's over its samples (a median of 5 needs 3)."""
    x, _ = voiced(80.0, 160.0, seconds=1.5, seed=3)
    # noise from the crop's start on: an F0 track that jumps from frame to frame, which the median changes
    x[5000:] = 0.05 * torch.randn(x.numel() - 5000, generator=torch.Generator().manual_seed(3))
    mel = torch.nn.functional.pad(LogMel(FeatureConfig())(x)[None], (context, context), value=math.log(1e-5))
    pitch = MelPitch(f0_median=width)
    assert (pitch.context_frames() <= context) == exact
    f0, v = pitch.per_sample(mel, context)
    start, frames = 20, 12  # the crop's own frames, with `context` real frames beyond each edge
    f0_crop, v_crop = pitch.per_sample(mel[..., start : start + frames + 2 * context], context)
    whole = slice(start * HOP, (start + frames) * HOP)
    same = torch.allclose(f0_crop, f0[:, whole], rtol=1e-12) and torch.allclose(v_crop, v[:, whole], atol=1e-12)
    assert same == exact


def test_a_median_wider_than_the_mel_context_is_refused_where_the_model_is_built():
    from students.iaf import IAFStudent, StudentModelConfig
    from teachers.wavenet import TeacherModelConfig, WaveNetTeacher

    small = dict(flows=[1], cycle=1, residual_channels=4, gate_channels=4, skip_channels=4)
    student = IAFStudent(StudentModelConfig(pitch_source=True, pitch_f0_median=3, **small))
    assert student.pitch is not None and student.pitch.f0_median == 3 and student.pitch_args["f0_median"] == 3
    again = IAFStudent.from_record({"model_args": student.record(), "features": to_dict(FeatureConfig())})
    assert again.pitch is not None and again.pitch.f0_median == 3  # the checkpoint keeps it
    record = student.record()
    record["pitch"]["f0_median"] = 5  # the two copies of the setting disagree: not a wavedistill checkpoint
    with pytest.raises(ConfigError, match="f0_median 5 disagrees with model.pitch_f0_median 3"):
        IAFStudent.from_record({"model_args": record, "features": to_dict(FeatureConfig())})
    with pytest.raises(ConfigError, match=r"model.pitch_f0_median 5 reaches 3 mel frames beyond a crop, "
                                          r"data.mel_context is 2; set data.mel_context >= 3"):
        IAFStudent(StudentModelConfig(pitch_source=True, pitch_f0_median=5, **small), mel_context=2)
    assert IAFStudent(StudentModelConfig(pitch_source=True, pitch_f0_median=5, **small), mel_context=3).pitch
    # a median of 3 (or none) asks no more context than the source always did: a `repeat` upsampler, no context
    repeat = TeacherModelConfig(upsample="repeat")
    for width in (1, 3):
        assert IAFStudent(StudentModelConfig(pitch_source=True, pitch_f0_median=width, **small), repeat,
                          mel_context=0).pitch
    for config in (StudentModelConfig, TeacherModelConfig):
        with pytest.raises(ConfigError, match="set model.pitch_source: true"):
            config(pitch_f0_median=3)
        with pytest.raises(ConfigError, match="model.pitch_f0_median must be an odd number"):
            config(pitch_source=True, pitch_f0_median=2)
    teacher = WaveNetTeacher(TeacherModelConfig(pitch_source=True, pitch_f0_median=3, layers=2, cycle=2,
                                                residual_channels=4, gate_channels=4, skip_channels=4))
    assert teacher.pitch is not None and teacher.pitch.f0_median == 3


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


def test_the_low_f0_voicing_bonus_raises_only_low_frames_by_its_ramp_in_log_f0():
    """`low_f0_voicing`: the voicing score of a frame gains the whole bonus at or below 75 Hz, nothing from
    120 Hz up, linearly in log F0 between; the F0 track does not change, and silence stays unvoiced."""
    from distill.nn.pitch import LOW_F0_RAMP_HZ

    mel = LogMel(FeatureConfig())(voiced(65.0, 200.0, seconds=2.0, seed=5)[0])[None]
    f0, score = MelPitch()(mel)
    boosted_f0, boosted = MelPitch(low_f0_voicing=0.15)(mel)
    assert torch.equal(boosted_f0, f0)
    low, high = (math.log2(f) for f in LOW_F0_RAMP_HZ)
    ramp = ((high - torch.log2(f0)) / (high - low)).clamp(0, 1)
    assert torch.allclose(boosted - score, 0.15 * ramp, atol=1e-12)
    gain = (boosted - score)[0]
    assert float(gain[f0[0] <= 75.0].min()) == pytest.approx(0.15) and float(gain[f0[0] >= 120.0].abs().max()) == 0
    assert bool(((gain > 0) & (gain < 0.15)).any())  # the glide crosses the ramp
    # a silent mel scores 0 at the lowest candidate: the largest bonus allowed leaves it unvoiced
    silent = torch.full((1, 80, 20), math.log(1e-5), dtype=torch.float64)
    _, v = MelPitch(low_f0_voicing=0.49).per_sample(silent)
    assert float(v.max()) == 0.0
    for bad in (0.5, 1.0, -0.1):
        with pytest.raises(ConfigError, match=r"low_f0_voicing must be a number in \[0, 0.5\)"):
            MelPitch(low_f0_voicing=bad)
    assert MelPitch(low_f0_voicing=np.float32(0.15)).low_f0_voicing == pytest.approx(0.15)


def test_the_low_f0_voicing_is_recorded_checked_and_absent_in_old_records():
    from students.iaf import IAFStudent, StudentModelConfig
    from teachers.wavenet import TeacherModelConfig, WaveNetTeacher

    small = dict(flows=[1], cycle=1, residual_channels=4, gate_channels=4, skip_channels=4)
    student = IAFStudent(StudentModelConfig(pitch_source=True, pitch_low_f0_voicing=0.15, **small))
    assert student.pitch is not None and student.pitch.low_f0_voicing == 0.15
    features = to_dict(FeatureConfig())
    again = IAFStudent.from_record({"model_args": student.record(), "features": features})
    assert again.pitch is not None and again.pitch.low_f0_voicing == 0.15
    record = student.record()
    record["pitch"]["low_f0_voicing"] = 0.1
    with pytest.raises(ConfigError, match="low_f0_voicing 0.1 disagrees with model.pitch_low_f0_voicing 0.15"):
        IAFStudent.from_record({"model_args": record, "features": features})
    # a record written before the argument existed: the source as it always was
    plain = IAFStudent(StudentModelConfig(pitch_source=True, **small)).record()
    del plain["pitch"]["low_f0_voicing"], plain["model"]["pitch_low_f0_voicing"]
    old = IAFStudent.from_record({"model_args": plain, "features": features})
    assert old.pitch is not None and old.pitch.low_f0_voicing == 0.0
    plain["model"]["pitch_low_f0_voicing"] = 0.15  # a config that asks for it cannot read such a record as having it
    with pytest.raises(ConfigError, match="low_f0_voicing 0.0 disagrees with model.pitch_low_f0_voicing 0.15"):
        IAFStudent.from_record({"model_args": plain, "features": features})
    for config in (StudentModelConfig, TeacherModelConfig):
        with pytest.raises(ConfigError, match="set model.pitch_source: true"):
            config(pitch_low_f0_voicing=0.15)
        for bad in (-0.1, 0.5, True):
            with pytest.raises(ConfigError, match=r"model.pitch_low_f0_voicing must be a number in \[0, 0.5\)"):
                config(pitch_source=True, pitch_low_f0_voicing=bad)
    teacher = WaveNetTeacher(TeacherModelConfig(pitch_source=True, pitch_low_f0_voicing=0.15, layers=2, cycle=2,
                                                residual_channels=4, gate_channels=4, skip_channels=4))
    assert teacher.pitch is not None and teacher.pitch.low_f0_voicing == 0.15
