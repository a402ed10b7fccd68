"""distill.nn.engine: a WaveNet stack's CPU inference as time-major matrix products in reused buffers."""

from __future__ import annotations

import threading

import pytest
import torch

from distill.nn import engine
from distill.nn.wavenet import WaveNetStack


def _stack(kernel_size=2, cond=5, dtype=torch.float64):
    torch.manual_seed(0)
    stack = WaveNetStack(1, 2, layers=6, cycle=3, kernel_size=kernel_size, residual_channels=8, gate_channels=12,
                         skip_channels=10, cond_channels=cond)
    return stack.to(dtype)


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("cond", [0, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_engine_computes_the_stacks_forward(kernel_size, cond, batch):
    stack = _stack(kernel_size, cond)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 50, generator=g, dtype=torch.float64)  # shorter than the last dilations' reach
    c = torch.randn(batch, cond, 50, generator=g, dtype=torch.float64) if cond else None
    reference = stack(x, c)
    with torch.no_grad():
        assert engine.supports(stack, x)
        out = stack(x, c)  # forward without autograd on a CPU runs the engine
    assert out.dtype == torch.float64 and out.shape == reference.shape
    torch.testing.assert_close(out, reference.detach(), rtol=1e-12, atol=1e-12)


def test_the_engine_under_bf16_autocast_works_in_bf16_like_forward():
    stack = _stack(dtype=torch.float32)
    x, c = torch.randn(2, 1, 400), torch.randn(2, 5, 400)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = stack(x, c).detach()
        out = engine.stack_forward(stack, x, c)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.float(), rtol=0.05, atol=0.02)
    torch.testing.assert_close(out.float(), stack(x, c).detach(), rtol=0.05, atol=0.02)  # and near float32


def test_the_engine_reuses_its_buffers_across_calls_and_keeps_them_per_thread():
    stack = _stack(dtype=torch.float32)
    x, c = torch.randn(1, 1, 300), torch.randn(1, 5, 300)
    engine.release_buffers()
    first = engine.stack_forward(stack, x, c)
    buffers = engine._local.buffers[2]
    second = engine.stack_forward(stack, x, c)
    assert engine._local.buffers[2] is buffers  # same shapes: nothing made again
    assert torch.equal(first, second)
    other = []
    thread = threading.Thread(target=lambda: other.append((engine.stack_forward(stack, x, c), engine._local.buffers)))
    thread.start()
    thread.join()
    assert torch.equal(other[0][0], first) and other[0][1][2] is not buffers
    shorter = engine.stack_forward(stack, x[..., :200], c[..., :200])  # a shorter pass uses the first rows
    assert engine._local.buffers[2] is buffers  # causal: the same outputs as the first 200 of the longer pass
    torch.testing.assert_close(shorter, first[..., :200])
    engine.stack_forward(stack, torch.cat([x, x], -1), torch.cat([c, c], -1))  # a longer one makes them again
    assert engine._local.buffers[1] == 600 and engine._local.buffers[2]["h"].shape[0] == 600
    engine.release_buffers()


def test_the_engine_leaves_teachers_float32_layers_under_autocast_to_forward():
    stack = _stack(dtype=torch.float32)
    stack.float32_layers = 2
    x = torch.randn(1, 1, 10)
    assert engine.supports(stack, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not engine.supports(stack, x)
