"""Growing a teacher (`WaveNetTeacher.grown_from`, what `train-teacher --init` applies): a wider teacher
started from a narrower one computes the same law and draws the same audio with every sampler, every
zero column that reads a new unit gets a gradient from the first step (no new unit is dead), and what is
not a growth stays the loader's error."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from distill.config import to_dict
from distill.errors import CheckpointError
from distill.nn.pitch import SOURCE_CHANNELS
from teachers.sampling import generate
from teachers.sampling.fastloop import available
from teachers.task import TeacherTask
from teachers.wavenet import WaveNetTeacher
from tests.teachers.test_pitch_teacher import FEATURES, HOP, N_MELS, pitch_teacher, voiced_mel

# the pitch teacher of test_pitch_teacher (6 layers, 8 channels unless told), with kernel 2
teacher = functools.partial(pitch_teacher, kernel_size=2)


def grown(small: WaveNetTeacher, **widths) -> WaveNetTeacher:
    big = teacher(**widths, dtype=next(small.parameters()).dtype, seed=7)
    big.load_state_dict(big.grown_from(small.state_dict()))
    return big


WIDER = {"residual": 12, "gate": 16, "skip": 10}


@pytest.mark.parametrize("pitch_source", [True, False])
def test_a_grown_teacher_computes_the_narrow_teachers_law(pitch_source):
    small = teacher(pitch_source=pitch_source)
    big = grown(small, **WIDER)  # the big one always has a source: from a plain teacher, it is new too
    assert big.stack.layers[0].conv.weight.shape == (32, 12, 2) and big.stack.head[1].weight.shape == (10, 10, 1)
    mel = voiced_mel()
    y = 0.01 * torch.randn(2, 24 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(big(y, mel), small(y, mel), atol=1e-12, rtol=0)
    # the new units compute something: only the zero columns reading them keep them out of the law
    h = big.stack.input(y.unsqueeze(1))
    assert h[:, 8:].abs().max() > 1e-3


@pytest.mark.parametrize("method", ["incremental", "naive", "graph", "fast"])
def test_a_grown_teacher_draws_what_the_narrow_teacher_draws(method):
    if method == "fast" and not available():
        pytest.skip("no C compiler for the fast loop")
    dtype = torch.float32 if method == "fast" else torch.float64
    small = teacher(dtype=dtype, seed=4)
    big = grown(small, **WIDER)
    mel = voiced_mel(frames=10, dtype=dtype)
    torch.manual_seed(5)
    before = generate(small, mel, method, voiced_temperature=0.5)
    torch.manual_seed(5)
    after = generate(big, mel, method, voiced_temperature=0.5)
    assert before.std() > 1e-3
    assert torch.allclose(before, after, atol=1e-5 if method == "fast" else 1e-10, rtol=0)


def test_new_units_keep_their_fresh_rows_with_zero_biases():
    small = teacher()
    big = teacher(**WIDER, seed=7)
    fresh = {k: v.clone() for k, v in big.state_dict().items()}
    big.load_state_dict(big.grown_from(small.state_dict()))
    conv, fresh_conv = big.stack.layers[2].conv, fresh["stack.layers.2.conv.weight"]
    assert torch.equal(conv.weight[8:16, :8], fresh_conv[8:16, :8])  # new filter units: their own init
    assert torch.equal(conv.weight[24:, :8], fresh_conv[24:, :8])  # new gate units
    assert torch.equal(conv.weight[:8, :8], small.stack.layers[2].conv.weight[:8])  # old filter units, in place
    assert torch.equal(conv.weight[16:24, :8], small.stack.layers[2].conv.weight[8:])  # old gate units, moved
    assert conv.bias[8:16].abs().max() == 0 and conv.bias[24:].abs().max() == 0
    out = big.stack.layers[2].out
    assert torch.equal(out.bias[12:20], small.stack.layers[2].out.bias[8:])  # old skip rows after 12 residual
    assert out.bias[8:12].abs().max() == 0 and out.bias[20:].abs().max() == 0
    assert big.stack.head[1].bias[8:].abs().max() == 0


def test_every_zero_column_of_a_grown_teacher_learns_from_the_first_step():
    small = teacher(pitch_source=False)
    big = grown(small, **WIDER).train()
    mel = voiced_mel()
    y = 0.01 * torch.randn(2, 24 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (-big.log_prob(y, mel).mean()).backward()
    layer = big.stack.layers[3]
    zero_reads = {
        "conv columns reading the new residual channels": layer.conv.weight.grad[:, 8:],
        "cond columns reading the pitch source": layer.cond.weight.grad[:, N_MELS:],
        "residual/skip 1x1 columns reading the new gate units": layer.out.weight.grad[:, 8:],
        "head columns reading the new skip channels": big.stack.head[1].weight.grad[:, 8:],
        "output columns reading the new head units": big.stack.head[3].weight.grad[:, 8:],
    }
    for what, grad in zero_reads.items():
        assert grad.abs().max() > 0, what
    assert layer.cond.weight.shape[1] == N_MELS + SOURCE_CHANNELS


def test_a_state_wider_than_the_teacher_stays_the_loaders_one_line_error():
    big = teacher(**WIDER)
    small = teacher()
    with pytest.raises(RuntimeError, match="size mismatch"):
        small.load_state_dict(small.grown_from(big.state_dict()))


def test_what_is_not_a_growth_stays_the_loaders_error():
    small = teacher()
    mol = WaveNetTeacher(dataclasses.replace(small.config, distribution="mol",
                                             distribution_args={"num_components": 2}), FEATURES, 2).double()
    with pytest.raises(RuntimeError, match="size mismatch"):  # another head: the output's rows are its law
        mol.load_state_dict(mol.grown_from(small.state_dict()))
    with pytest.raises(RuntimeError, match="size mismatch"):  # another kernel
        wide_kernel = WaveNetTeacher(dataclasses.replace(small.config, kernel_size=3), FEATURES, 2).double()
        wide_kernel.load_state_dict(wide_kernel.grown_from(small.state_dict()))
    three = WaveNetTeacher(dataclasses.replace(small.config, period_taps=3), FEATURES, 2).double()
    five = WaveNetTeacher(dataclasses.replace(small.config, period_taps=5), FEATURES, 2).double()
    with pytest.raises(RuntimeError, match="size mismatch"):  # taps at other offsets do not embed
        five.load_state_dict(five.grown_from(three.state_dict()))
    five.load_state_dict(five.grown_from(small.state_dict()))  # from no taps they do: zero columns
    assert five.stack.input.weight[:, 1:].abs().max() == 0


def test_a_checkpoint_of_another_dilation_cycle_is_refused_in_one_line():
    small = teacher(dtype=torch.float32)
    other = WaveNetTeacher(dataclasses.replace(small.config, cycle=2), FEATURES, mel_context=2)
    task = TeacherTask.__new__(TeacherTask)  # only initial_weights is exercised: no corpus needed
    payload = {"model": small.state_dict(), "model_args": small.record(), "features": to_dict(FEATURES)}
    with pytest.raises(CheckpointError, match="dilation cycle 3.*dilation cycle 2"):
        task.initial_weights(other, payload)


def test_train_teacher_init_grows_a_narrower_checkpoint():
    """`--init` goes through the task's `initial_weights`: a checkpoint's narrower weights come in grown."""
    small = teacher(dtype=torch.float32)
    big_config = dataclasses.replace(small.config, residual_channels=12, gate_channels=16, skip_channels=10)
    task = TeacherTask.__new__(TeacherTask)  # only initial_weights is exercised: no corpus needed
    torch.manual_seed(7)
    big = WaveNetTeacher(big_config, FEATURES, mel_context=2)
    payload = {"model": small.state_dict(), "model_args": small.record(), "features": to_dict(FEATURES)}
    big.load_state_dict(task.initial_weights(big, payload))
    mel = voiced_mel(dtype=torch.float32)
    y = 0.01 * torch.randn(2, 24 * HOP, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(big(y, mel), small(y, mel), atol=1e-5, rtol=0)
