"""Teacher sampling from static buffers, replayed as a CUDA graph (`generate(method="graph")`).

The recursion of `distill.nn.StackStepper` rewritten so that every tensor it reads or writes is
allocated once and every index is a Python constant, which is what a CUDA graph needs:

- per layer a linear history buffer of `span + N` steps (span = (k-1) d) instead of a ring: step i of
  a block writes row span + i and its taps read rows span + i - j d; the input of the next layer is
  written straight into that layer's history row (no copy);
- the conditioning projections (with the conv biases) of N steps in one buffer, filled per block;
- the draw of step i written into an output buffer and fed back as step i + 1's input.

N consecutive steps (a *block*) are therefore one fixed sequence of kernels. On CUDA it is captured
once as a CUDA graph and replayed for every block: one launch per N samples instead of ~170 kernel
launches from Python per sample, which is what limits eager per-sample sampling on a GPU. Between
blocks the last `span` rows of each history move to the front (inside the graph too). Random draws
inside a graph are fresh on every replay (PyTorch's graph-safe generator).

On a CPU the same block runs eagerly; that is how it is tested against the incremental sampler (same
numbers, and with the same seed the same draws). On a CPU `method="fast"` (a C loop) is the fast one.
"""

from __future__ import annotations

import torch

from distill.nn import SQRT_HALF, StackStepper
from teachers.wavenet import WaveNetTeacher

BLOCK = 64  # steps per block (per graph replay)


class BlockSampler:
    """Draws `cond.shape[-1]` samples from `teacher`, N steps per block.

    cond: (B, C, T) the teacher's conditioning; prompt: (B, P) known samples (teacher-forced); mode:
    "sample" or "mean". `run()` -> (B, T).
    """

    def __init__(
        self,
        teacher: WaveNetTeacher,
        cond: torch.Tensor,
        temperature: float = 1.0,
        mode: str = "sample",
        prompt: torch.Tensor | None = None,
        block: int = BLOCK,
        graph: bool | None = None,
    ):
        if mode not in ("sample", "mean"):
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        self.teacher, self.cond, self.temperature, self.mode = teacher, cond, temperature, mode
        self.prompt = prompt
        self.n = block
        self.graph = cond.device.type == "cuda" if graph is None else graph
        w = StackStepper(teacher.stack, cond)  # the pre-arranged weights
        self.w = w
        batch, steps = cond.shape[0], cond.shape[-1]
        self.batch, self.length = batch, steps
        residual = w.w_in.shape[1]
        self.spans = [max(t) if t else 0 for t in w.taps]
        new = cond.new_zeros
        # the inputs of layer l (a layer without taps, k = 1, keeps just the block's N rows)
        self.hist = [new(span + block, batch, residual) for span in self.spans]
        gates = w.conv_bias.shape[-1]
        self.cond_buf = new(block, len(self.spans), batch, gates)
        self.forced = new(block, batch, 1)
        self.forced_mask = torch.zeros(block, 1, 1, dtype=torch.bool, device=cond.device)
        self.prev = new(batch, 1)
        self.out = new(block, batch, 1)
        self._graph: torch.cuda.CUDAGraph | None = None

    # ------------------------------------------------------------------ the block
    def _input_row(self, layer: int, i: int) -> torch.Tensor:
        """Where layer `layer`'s input at step i of a block lives."""
        return self.hist[layer][self.spans[layer] + i]

    def _block(self) -> None:
        """N steps with constant indices: the captured unit."""
        w, n = self.w, self.n
        for hist, span in zip(self.hist, self.spans):
            if span:
                hist[:span].copy_(hist[n : n + span].clone())
        layers = len(self.spans)
        for i in range(n):
            h = torch.addmm(w.b_in, self.prev, w.w_in, out=self._input_row(0, i))
            zs = []
            for l in range(layers):
                hist, span = self.hist[l], self.spans[l]
                taps = [hist[span + i - back] for back in w.taps[l]]
                a = torch.addmm(self.cond_buf[i, l], torch.cat(taps + [h], dim=1) if taps else h, w.w_tap[l])
                filt, gate = a.split(w.gate[l], dim=1)
                z = torch.tanh(filt) * torch.sigmoid(gate)
                zs.append(z)
                if l + 1 < layers:  # the last layer's residual output is never used
                    res = torch.addmm(w.b_res[l], z, w.w_res[l])
                    h = torch.add(res, h, alpha=SQRT_HALF, out=self._input_row(l + 1, i))
            skips = torch.addmm(w.b_skip, torch.cat(zs, dim=1), w.w_skip)
            hidden = torch.addmm(w.h1[1], torch.relu(skips), w.h1[0])
            params = torch.addmm(w.h2[1], torch.relu(hidden), w.h2[0])[:, :, None]  # (B, P, 1)
            dist = self.teacher.dist
            if self.mode == "mean":
                x = dist.mean(params)
            else:
                x = dist.sample(params, self.temperature)
            x = torch.where(self.forced_mask[i], self.forced[i], x.clamp(-1, 1))
            self.out[i].copy_(x)
            self.prev.copy_(x)

    # ------------------------------------------------------------------ per block, outside the graph
    def _load(self, t0: int) -> int:
        """Fill the conditioning and prompt buffers for steps t0 .. t0 + N - 1; returns the valid count."""
        w, n = self.w, self.n
        m = min(n, self.length - t0)
        bias = w.conv_bias[None, :, None, :]
        if w.has_cond:
            c = self.cond[:, :, t0 : t0 + m]
            self.cond_buf[:m].copy_(torch.einsum("lgc,bcn->nlbg", w.w_cond, c) + bias)
        else:
            self.cond_buf[:m].copy_(bias.expand(m, -1, self.batch, -1))
        self.cond_buf[m:].copy_(bias.expand(n - m, -1, self.batch, -1))
        self.forced_mask.zero_()
        if self.prompt is not None and t0 < self.prompt.shape[-1]:
            k = min(m, self.prompt.shape[-1] - t0)
            self.forced[:k].copy_(self.prompt[:, t0 : t0 + k].t()[:, :, None])
            self.forced_mask[:k] = True
        return m

    def _reset(self) -> None:
        for hist in self.hist:
            hist.zero_()
        self.prev.zero_()

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS handles and workspaces), then record one block."""
        self._load(0)
        stream = torch.cuda.Stream(device=self.cond.device)
        stream.wait_stream(torch.cuda.current_stream(self.cond.device))
        with torch.cuda.stream(stream):
            self._block()
        torch.cuda.current_stream(self.cond.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._block()
        self._graph = graph

    @torch.inference_mode()
    def run(self, progress=None) -> torch.Tensor:
        if self.graph and self._graph is None:
            self._capture()
        self._reset()  # the warm-up block ran on real buffers
        audio = self.cond.new_zeros(self.batch, self.length)
        for t0 in range(0, self.length, self.n):
            m = self._load(t0)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._block()
            audio[:, t0 : t0 + m] = self.out[:m, :, 0].t()
            if progress is not None:
                progress.update(m)
        return audio
