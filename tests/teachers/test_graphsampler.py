"""The static-buffer block sampler (what a CUDA graph replays) equals the incremental sampler.

On a CPU the block runs eagerly; the same code is captured on CUDA (tests/teachers/test_cuda.py).
"""

from __future__ import annotations

import pytest
import torch

from teachers.sampling import generate
from teachers.sampling.graph import BlockSampler, _samplers
from tests.models import HEADS, small_teacher
from tests.models import teacher_inputs as inputs


@pytest.mark.parametrize("distribution, args", HEADS, ids=[h[0] for h in HEADS])
@pytest.mark.parametrize("kernel_size", [1, 2, 3])
def test_block_sampler_draws_what_the_incremental_sampler_draws(distribution, args, kernel_size):
    model = small_teacher(distribution, args, kernel_size=kernel_size)
    _, mel = inputs(model, frames=37)  # 148 samples: two full blocks of 64 and a partial one
    torch.manual_seed(3)
    incremental = generate(model, mel, "incremental")
    torch.manual_seed(3)
    graph = generate(model, mel, "graph")
    assert graph.shape == incremental.shape == (2, 148)
    assert torch.allclose(graph, incremental, atol=1e-9, rtol=0)
    assert not torch.allclose(graph[0], graph[1])  # independent draws per batch item


@pytest.mark.parametrize("block", [1, 5, 64, 200])
def test_block_size_does_not_change_the_numbers(block):
    """Blocks shorter and longer than the largest dilation span (4 x (k-1) here) and than the clip."""
    model = small_teacher(kernel_size=3)
    _, mel = inputs(model, frames=30)
    cond = model.conditioning(mel)
    torch.manual_seed(11)
    expected = generate(model, mel, "incremental")
    torch.manual_seed(11)
    got = BlockSampler(model, 2, cond.device, cond.dtype, block=block).run(cond)
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)


def test_a_prompt_is_teacher_forced_as_in_the_incremental_sampler():
    model = small_teacher(kernel_size=2)
    x, mel = inputs(model, frames=30)
    prompt = x[:, :70]  # crosses the first block boundary
    incremental = generate(model, mel, "incremental", mode="mean", prompt=prompt)
    graph = generate(model, mel, "graph", mode="mean", prompt=prompt)
    assert torch.equal(graph[:, :70], prompt)
    assert torch.allclose(graph, incremental, atol=1e-9, rtol=0)
    assert not torch.allclose(graph[:, 70:], generate(model, mel, "graph", mode="mean")[:, 70:])


def test_a_sampler_is_reused_and_a_rerun_starts_fresh():
    model = small_teacher()
    _, mel = inputs(model, frames=20)
    first = generate(model, mel, "graph", temperature=0.0)
    (entry,) = _samplers[model].values()
    second = generate(model, mel, "graph", temperature=0.0)  # the same sampler: its state must not leak
    assert _samplers[model][next(iter(_samplers[model]))] is entry
    assert torch.equal(first, second)
    assert torch.allclose(first, generate(model, mel, mode="mean"), atol=1e-9, rtol=0)
    _, longer = inputs(model, frames=33)  # another length: the same sampler
    assert torch.allclose(generate(model, longer, "graph", mode="mean"), generate(model, longer, mode="mean"),
                          atol=1e-9, rtol=0)
    assert len(_samplers[model]) == 2  # temperature 0 sampling and mean mode


def test_a_sampler_built_before_a_weight_change_is_not_used_after_it():
    model = small_teacher()
    _, mel = inputs(model, frames=20)
    before = generate(model, mel, "graph", mode="mean")
    with torch.no_grad():
        model.stack.head[-1].bias.add_(0.1)  # in place: the parameter object stays the same
    after = generate(model, mel, "graph", mode="mean")
    assert not torch.allclose(before, after)
    assert torch.allclose(after, generate(model, mel, mode="mean"), atol=1e-9, rtol=0)


def test_the_cache_does_not_keep_a_teacher_alive():
    import gc
    import weakref

    model = small_teacher()
    _, mel = inputs(model, frames=8)
    gc.collect()
    cached = len(_samplers)
    generate(model, mel, "graph")
    assert len(_samplers) == cached + 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and len(_samplers) == cached
