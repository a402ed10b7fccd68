"""The teacher on CUDA gives the CPU's numbers (skipped where there is no GPU)."""

from __future__ import annotations

import pytest
import torch

from teachers.sampling import generate, incremental_forward
from tests.models import small_teacher
from tests.models import teacher_inputs as inputs

pytestmark = pytest.mark.cuda


def test_incremental_on_cuda_equals_the_cpu_forward():
    model = small_teacher(dtype=torch.float64)
    x, mel = inputs(model)
    cond = model.conditioning(mel)
    expected = model.forward_cond(x, cond)
    gpu = model.cuda()
    got = incremental_forward(gpu, x.cuda(), cond.cuda()).cpu()
    assert torch.allclose(got, expected, atol=1e-6)


def test_sampling_and_bf16_training_step_run_on_cuda():
    model = small_teacher(dtype=torch.float32).cuda()
    x, mel = inputs(model, dtype=torch.float32)
    audio = generate(model, mel.cuda())
    assert audio.is_cuda and torch.isfinite(audio).all()
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        params = model(x.cuda(), mel.cuda())
    loss = -model.dist.log_prob(params.float(), x.cuda()).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_graph_sampler_captures_and_replays_the_incremental_recursion():
    from teachers.sampling.graph import BlockSampler

    model = small_teacher(dtype=torch.float64)
    _, mel = inputs(model, frames=37)
    expected = generate(model, mel, mode="mean")  # CPU incremental
    gpu = model.cuda()
    cond = gpu.conditioning(mel.cuda())
    sampler = BlockSampler(gpu, 2, cond.device, cond.dtype, mode="mean")
    got = sampler.run(cond)
    assert sampler._graph is not None  # captured, and replayed for each of the 3 blocks
    assert torch.allclose(got.cpu(), expected, atol=1e-9, rtol=0)
    assert torch.equal(sampler.run(cond), got)  # a second run starts from fresh state


def test_graph_sampling_draws_fresh_noise_on_every_replay():
    model = small_teacher("mol", {"num_components": 3, "num_bins": 256}, dtype=torch.float32).cuda()
    _, mel = inputs(model, frames=64, dtype=torch.float32)
    audio = generate(model, mel.cuda(), "graph")
    assert audio.shape == (2, 256) and torch.isfinite(audio).all() and audio.abs().max() <= 1
    # a replay that repeated its recorded random numbers would draw the same audio again
    assert not torch.equal(generate(model, mel.cuda(), "graph"), audio)
