"""IAF students: strict causality, triangular Jacobian with diagonal s_tot, log-det, initial scale."""

from __future__ import annotations

import math

import pytest
import torch

from distill.errors import ConfigError
from students.iaf import synthesize
from tests.models import STUDENT_LP as LP
from tests.models import student_inputs as inputs
from tests.models import tiny_student


def output_of(student, mel, name):
    """z (T,) -> the student's output `name` (T,) for one mel: the function whose Jacobian a test takes."""
    return lambda z_: getattr(student(z_[None], mel), name)[0]


def test_initialisation_gives_a_small_total_scale_and_zero_mean():
    student = tiny_student(randomise=False)
    z, mel = inputs()
    out = student(z, mel)
    assert torch.allclose(out.log_s_tot, torch.full_like(z, math.log(0.05)))
    assert torch.equal(out.mu_tot, torch.zeros_like(z))


@pytest.mark.parametrize("distribution", ["gaussian", "logistic"])
def test_sample_is_z_times_s_tot_plus_mu_tot(distribution):
    student = tiny_student(distribution)
    z, mel = inputs(batch=2)
    out = student(z, mel)
    assert torch.allclose(out.x, z * out.log_s_tot.exp() + out.mu_tot, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_jacobian_is_lower_triangular_with_diagonal_s_tot_and_the_log_det_matches(kernel_size):
    student = tiny_student(kernel_size=kernel_size)
    z, mel = inputs()
    jac = torch.autograd.functional.jacobian(lambda z_: student(z_[None], mel).x[0], z[0])
    out = student(z, mel)
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros_like(jac))  # d x_t / d z_s = 0 for s > t
    assert torch.allclose(torch.diagonal(jac), out.log_s_tot[0].exp(), atol=1e-12)
    assert torch.tril(jac, diagonal=-1).abs().sum() > 0  # and x_t does depend on earlier z
    _, logdet = torch.linalg.slogdet(jac)
    assert float(logdet) == pytest.approx(out.log_s_tot.sum().item(), abs=1e-9)


def test_the_per_step_law_depends_on_strictly_earlier_noise_only():
    student = tiny_student()
    z, mel = inputs()
    for name in ("mu_tot", "log_s_tot"):
        jac = torch.autograd.functional.jacobian(output_of(student, mel, name), z[0])
        assert torch.equal(torch.triu(jac), torch.zeros_like(jac))  # d mu_t / d z_s = 0 for s >= t


def test_log_prob_is_the_change_of_variables():
    student = tiny_student("logistic")
    z, mel = inputs()
    out = student(z, mel)
    jac = torch.autograd.functional.jacobian(lambda z_: student(z_[None], mel).x[0], z[0])
    log_pz = (-z - 2 * torch.nn.functional.softplus(-z)).sum()
    assert student.log_prob(out, z).sum().item() == pytest.approx((log_pz - torch.linalg.slogdet(jac)[1]).item(),
                                                                  abs=1e-9)


def test_parallel_synthesis_needs_no_teacher():
    student = tiny_student()
    _, mel = inputs(batch=3)
    torch.manual_seed(0)
    audio = synthesize(student, mel)
    assert audio.shape == (3, 24) and audio.abs().max() <= 1
    assert not torch.allclose(audio[0], audio[1])


def test_synthesis_with_given_noise_is_the_flow_of_that_noise_and_bf16_autocast_stays_close():
    student = tiny_student().float()
    z, mel = inputs(batch=2)
    z, mel = 0.5 * z.float(), mel.float()
    audio = synthesize(student, mel, z=z)
    # the same numbers to float rounding (on a CPU synthesis runs the stacks through distill.nn.engine)
    torch.testing.assert_close(audio, student(z, mel).x.detach().clamp(-1, 1), rtol=1e-5, atol=1e-6)
    low = synthesize(student, mel, z=z, autocast_dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    snr = 10 * math.log10(float((audio ** 2).sum() / ((audio - low) ** 2).sum()))
    assert snr > 25  # bf16 keeps ~3 significant digits in mu and log s


def test_the_stacked_conditioning_projection_equals_one_projection_per_layer():
    student = tiny_student()
    _, mel = inputs(batch=2)
    cond = student.upsampler(mel)
    for flow in student.flows:
        for layer, proj in zip(flow.layers, flow.project_cond(cond), strict=True):
            assert torch.allclose(proj, layer.cond(cond), atol=1e-12)


def test_a_distilled_student_loads_by_run_folder_and_refuses_a_teacher_checkpoint(tmp_path):
    from distill.errors import CheckpointError
    from students.pretrained import load_student
    from teachers.pretrained import demo_teacher_path
    from tests.models import save_model

    student = tiny_student().float()
    save_model(tmp_path / "run" / "checkpoints" / "latest.pt", student, "student", step=3)
    loaded, saved = load_student(tmp_path / "run")
    assert saved["step"] == 3 and not loaded.training
    z, mel = (t.float() for t in inputs())
    assert torch.equal(loaded(z, mel).x, student(z, mel).x)
    with pytest.raises(CheckpointError, match="not a student"):
        load_student(demo_teacher_path())


@pytest.mark.parametrize("chunk", [5, 7, 16, 23])
def test_chunked_synthesis_equals_whole_synthesis_at_every_seam(chunk):
    student = tiny_student(kernel_size=3)  # receptive fields 15 and 7: chunks shorter and longer than those
    z, mel = inputs(frames=12, batch=2)
    whole = synthesize(student, mel, z=z, chunk=0)
    chunked = synthesize(student, mel, z=z, chunk=chunk)
    assert torch.allclose(chunked, whole, atol=1e-12, rtol=0)


def test_automatic_chunks_bound_the_batch_times_length_and_keep_enough_context(monkeypatch):
    import students.iaf as iaf

    student = tiny_student(kernel_size=3)
    assert iaf.auto_chunk(student, 1) == iaf.CHUNK_ROWS and iaf.auto_chunk(student, 16) == iaf.CHUNK_ROWS // 16
    assert iaf.auto_chunk(student, 16, "cuda") == iaf.GPU_CHUNK_ROWS // 16  # 16 x 1 s in one pass on a GPU
    monkeypatch.setattr(iaf, "CHUNK_ROWS", 40)  # force chunking on a short input: still exact
    z, mel = inputs(frames=30, batch=2)
    assert iaf.auto_chunk(student, 2) == 60  # 4 receptive fields of 15 beat 40 // 2
    assert torch.allclose(synthesize(student, mel, z=z), synthesize(student, mel, z=z, chunk=0), atol=1e-12, rtol=0)


def test_compiled_synthesis_equals_eager_synthesis_and_is_made_once():
    import students.iaf as iaf

    student = tiny_student(flows=(2,)).float()
    z, mel = (t.float() for t in inputs(frames=12, batch=2))
    eager = synthesize(student, mel, z=z)
    compiled = synthesize(student, mel, z=z, compile=True)
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=0)
    assert iaf.compiled_flows(student) is iaf.compiled_flows(student)  # cached per student and mode
    assert not torch.equal(synthesize(student, mel, compile=True), compiled)  # fresh noise still drawn
    import gc
    import weakref

    ref = weakref.ref(student)
    del student
    gc.collect()
    assert ref() is None  # the cached compiled function does not keep its student alive


def test_a_linear_prediction_student_keeps_a_triangular_jacobian_whose_diagonal_is_its_step_scale():
    """With the mel's all-pole filter after the flows, x_t given z_<t is still one Gaussian: location
    mu_tot_t, scale exp(log_s_tot_t) = g_t s_tot_t; dx/dz lower triangular with that diagonal; the per-step
    law a function of strictly earlier noise; log-det = sum log_s_tot."""
    student = tiny_student(linear_prediction=LP, preemphasis=0.85)
    z, mel = inputs(frames=8)
    out = student(z, mel)
    lpc = student.predictor(mel)
    assert lpc.shape == (1, 4, 32) and torch.isfinite(lpc).all()
    assert torch.allclose(out.x, out.mu_tot + out.log_s_tot.exp() * z, atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda z_: student(z_[None], mel).x[0], z[0])
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros_like(jac))
    assert torch.allclose(torch.diagonal(jac), out.log_s_tot[0].exp(), atol=1e-12)
    assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(out.log_s_tot.sum().item(), rel=1e-6)  # LU's rounding
    for name in ("mu_tot", "log_s_tot"):
        jac = torch.autograd.functional.jacobian(output_of(student, mel, name), z[0])
        assert torch.equal(torch.triu(jac), torch.zeros_like(jac))
    # the envelope is the filter's, not the flows': far from the flows' output alone
    flows_only = student.flow(z, student.upsampler(mel)).x
    assert not torch.allclose(out.x, flows_only, atol=1e-3)
    # synthesis is that same signal, de-emphasised
    from distill.audio.mel import deemphasis

    audio = synthesize(student, mel, z=z, chunk=0)
    assert torch.allclose(audio, deemphasis(out.x, 0.85).clamp(-1, 1), atol=1e-12)


def test_a_linear_prediction_student_refuses_interpolated_coefficients():
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="held over each hop"):
        tiny_student(linear_prediction={**LP, "interpolate": True})


def test_one_config_builds_the_student_and_is_what_its_checkpoint_records(tmp_path):
    """The student's own section, its teacher's (upsampler, speakers, predictor) and the pitch source's
    arguments rebuild it from a checkpoint; defaults live in the config alone."""
    from distill.config import FeatureConfig, to_dict
    from students.iaf import IAFStudent, StudentModelConfig
    from students.pretrained import load_student
    from teachers.wavenet import LinearPredictionConfig, TeacherModelConfig
    from tests.models import save_model

    assert IAFStudent().record()["model"] == to_dict(StudentModelConfig())
    config = StudentModelConfig(flows=[1, 2], residual_channels=4, gate_channels=4, skip_channels=4,
                                initial_scale=0.4, linear_prediction=True, pitch_source=True)
    teacher = TeacherModelConfig(num_speakers=2, speaker_dim=4, linear_prediction=LinearPredictionConfig(order=16))
    features = FeatureConfig(preemphasis=0.85)
    torch.manual_seed(0)
    student = IAFStudent(config, teacher, features, pitch={**pitch_defaults(features), "f0_min": 70.0})
    config.flows.append(3)  # changed after the build: neither the model nor its record follows
    assert len(student.flows) == 2 and student.record()["teacher"] == to_dict(teacher)
    loaded, _ = load_student(save_model(tmp_path / "s.pt", randomised(student), "student"))
    assert loaded.record() == student.record() and loaded.pitch_args["f0_min"] == 70.0
    z, mel, speaker = torch.randn(2, 4 * 256), torch.randn(2, 80, 4 + 4), torch.tensor([1, 0])
    assert torch.equal(loaded(z, mel, speaker).x, student(z, mel, speaker).x)
    with pytest.raises(ConfigError, match="needs a teacher with linear prediction"):
        IAFStudent(config, TeacherModelConfig(), features)
    disagree = r"pitch source's arguments disagree .*pitch.sample_rate 22050 \(features: 16000\)"
    with pytest.raises(ConfigError, match=disagree):
        IAFStudent(config, teacher, features, pitch={**pitch_defaults(features), "sample_rate": 22050})


def pitch_defaults(features):
    from distill.nn.pitch import pitch_arguments

    return pitch_arguments(features)


def randomised(student):
    with torch.no_grad():  # the zero-initialised heads would make every student the same
        for flow in student.flows:
            flow.head[-1].weight.normal_(0, 0.3)
    return student


# A student's constructor arguments as checkpoints recorded them before models took their config
# (the layout of a `wavedistill demo` student of 2026-12-04, at a test's size, its pitch floor moved)
FLAT_STUDENT = {
    "distribution": "gaussian", "flows": [1, 2], "cycle": 10, "kernel_size": 3, "residual_channels": 4,
    "gate_channels": 4, "skip_channels": 4, "n_mels": 80, "hop_length": 256, "mel_context": 2, "upsample": "stretch",
    "upsample_scales": [16, 16], "initial_scale": 0.4, "preemphasis": 0.85,
    "linear_prediction": {"order": 16, "sample_rate": 16000, "n_fft": 1024, "win_length": 1024, "f_min": 0.0,
                          "f_max": 8000.0, "lag_window_hz": 60.0, "white_noise": 0.0001, "interpolate": False},
    "pitch_source": {"sample_rate": 16000, "n_fft": 1024, "win_length": 1024, "f_min": 0.0, "f_max": 8000.0,
                     "f0_min": 70.0, "f0_max": 500.0, "band_hz": 1500.0, "steps_per_octave": 48, "voicing": [0.5, 0.7]},
    "num_speakers": 0, "speaker_dim": 16, "mel_silence": -11.512925464970229,
}


def test_a_student_checkpoint_of_flat_constructor_arguments_loads_as_its_config_and_its_teachers(tmp_path):
    from distill.config import FeatureConfig
    from distill.train.checkpoint import load_checkpoint
    from students.iaf import IAFStudent, StudentModelConfig
    from students.pretrained import load_student
    from teachers.pretrained import load_teacher, single_voice_teacher_path
    from tests.models import save_model

    shipped = load_checkpoint(single_voice_teacher_path())  # flat arguments too
    features = FeatureConfig(**shipped["features"])
    config = StudentModelConfig(flows=[1, 2], cycle=10, residual_channels=4, gate_channels=4, skip_channels=4,
                                initial_scale=0.4, linear_prediction=True, pitch_source=True, train_upsampler=True)
    torch.manual_seed(0)
    student = randomised(IAFStudent(config, load_teacher(single_voice_teacher_path())[0].config, features,
                                    pitch=FLAT_STUDENT["pitch_source"]))
    save_model(tmp_path / "s.pt", student, "student", model_args=FLAT_STUDENT, features=shipped["features"],
               config={"model": {"train_upsampler": True}}, extra={"teacher": {"model_args": shipped["model_args"]}})
    loaded, _ = load_student(tmp_path / "s.pt")
    assert loaded.record() == student.record()
    z, mel = torch.randn(1, 4 * 256), torch.randn(1, 80, 4 + 4)
    assert torch.equal(loaded(z, mel).x, student(z, mel).x)


def test_flat_student_arguments_keep_the_old_constructors_defaults_and_check_the_pitch_sources_features():
    from distill.config import FeatureConfig
    from distill.errors import CheckpointError
    from students.iaf import legacy_student_record

    features = FeatureConfig(preemphasis=0.85)
    lp = {k: v for k, v in FLAT_STUDENT["linear_prediction"].items() if k != "order"}  # the old default: 16
    flat = {**FLAT_STUDENT, "flows": None, "upsample_scales": None, "linear_prediction": lp}
    # a run config or extra of another shape than the trainer's is ignored, as the old loader did
    record = legacy_student_record({"model_args": flat, "config": [1], "extra": "x"}, features)
    assert record["model"]["flows"] == [10] * 6 and "upsample_scales" not in record["teacher"]
    assert record["teacher"]["linear_prediction"]["order"] == 16 and record["pitch"]["f0_min"] == 70.0
    pitch = {**FLAT_STUDENT["pitch_source"], "sample_rate": 22050}
    with pytest.raises(CheckpointError, match=r"pitch_source.sample_rate 22050 \(features: 16000\)"):
        legacy_student_record({"model_args": {**FLAT_STUDENT, "pitch_source": pitch}}, features)
    with pytest.raises(CheckpointError, match="not a mapping"):
        legacy_student_record({"model_args": {**FLAT_STUDENT, "linear_prediction": [1]}}, features)
