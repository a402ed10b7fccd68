"""Teacher sampling from static buffers, replayed as a CUDA graph (`generate(method="graph")`).

The recursion of `teachers.sampling.stepper.StackStepper` rewritten so that every tensor it reads or writes is
allocated once and every index is a Python constant, which is what a CUDA graph needs:

- per layer a linear history buffer of `span + N` steps (span = (k-1) d) instead of a ring: step i of
  a block writes row span + i and its taps read rows span + i - j d; the input of the next layer is
  written straight into that layer's history row (no copy);
- the conditioning projections (with the conv biases) of N steps in one buffer, filled per block;
- the draw of step i written into an output buffer and fed back as step i + 1's input;
- with linear prediction, the coefficients of N steps in one buffer and the last p outputs in another.

N consecutive steps (a *block*) are therefore one fixed sequence of kernels. On CUDA it is captured
once as a CUDA graph and replayed for every block: one launch per N samples instead of ~170 kernel
launches from Python per sample, which is what limits eager per-sample sampling on a GPU. Between
blocks the last `span` rows of each history move to the front (inside the graph too). Random draws
inside a graph are fresh on every replay (PyTorch's graph-safe generator).

On a CPU the same block runs eagerly; that is how it is tested against the incremental sampler (same
numbers, and with the same seed the same draws). On a CPU `method="fast"` (a C loop) is the fast one.
"""

from __future__ import annotations

import weakref

import torch

from distill.nn.layers import SQRT_HALF
from teachers.sampling import MODES, draw
from teachers.sampling.stepper import StackStepper
from teachers.wavenet import WaveNetTeacher

BLOCK = 64  # steps per block (per graph replay)
CACHED = 4  # samplers kept per teacher (each holds its buffers and, on CUDA, its graph)

_samplers: weakref.WeakKeyDictionary[WaveNetTeacher, dict] = weakref.WeakKeyDictionary()


class BlockSampler:
    """Draws from `teacher` for a batch of `batch` sequences, N steps per block.

    Built once per (batch, dtype, device, mode, temperature); `run(cond, prompt)` then samples any
    length. temperature None: each step's own, given to `run` as (batch, T) and loaded per block. It
    keeps the teacher's weights as they were when it was built (see `graph_generate`).
    """

    def __init__(
        self,
        teacher: WaveNetTeacher,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
        temperature: float | None = 1.0,
        mode: str = "sample",
        block: int = BLOCK,
        graph: bool | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        self.dist, self.temperature, self.mode = teacher.dist, temperature, mode  # not the teacher itself
        self.n, self.batch, self.device = block, batch, torch.device(device)
        self.graph = self.device.type == "cuda" if graph is None else graph
        w = StackStepper(teacher.stack, None, batch=batch)  # the pre-arranged weights
        self.w = w
        residual = w.w_in.shape[1]
        self.spans = [max(t) if t else 0 for t in w.taps]

        def new(*shape):
            return torch.zeros(*shape, device=self.device, dtype=dtype)

        # the inputs of layer l (a layer without taps, k = 1, keeps just the block's N rows)
        self.hist = [new(span + block, batch, residual) for span in self.spans]
        self.cond_buf = new(block, len(self.spans), batch, w.conv_bias.shape[-1])
        self.forced = new(block, batch, 1)
        self.forced_mask = torch.zeros(block, 1, 1, dtype=torch.bool, device=self.device)
        self.prev = new(batch, 1)
        self.out = new(block, batch, 1)
        self.order = teacher.lpc.order if teacher.lpc is not None else 0
        self.lpc_buf = new(block, batch, 1 + self.order)  # each step's log gain and coefficients
        self.past = new(batch, self.order)  # y_(t-1), ..., y_(t-p)
        self.temp_buf = new(block, batch, 1) + 1  # each step's temperature (temperature None)
        self._graph: torch.cuda.CUDAGraph | None = None
        self.cond: torch.Tensor | None = None
        self.prompt: torch.Tensor | None = None
        self.lpc: torch.Tensor | None = None
        self.temps: torch.Tensor | None = None

    # ------------------------------------------------------------------ the block
    def _input_row(self, layer: int, i: int) -> torch.Tensor:
        """Where layer `layer`'s input at step i of a block lives."""
        return self.hist[layer][self.spans[layer] + i]

    def _block(self) -> None:
        """N steps with constant indices: the captured unit."""
        w, n = self.w, self.n
        for hist, span in zip(self.hist, self.spans, strict=True):
            if span:
                hist[:span].copy_(hist[n : n + span].clone())
        layers = len(self.spans)
        for i in range(n):
            h = torch.addmm(w.b_in, self.prev, w.w_in, out=self._input_row(0, i))
            zs = []
            for li in range(layers):
                hist, span = self.hist[li], self.spans[li]
                taps = [hist[span + i - back] for back in w.taps[li]]
                a = torch.addmm(self.cond_buf[i, li], torch.cat(taps + [h], dim=1) if taps else h, w.w_tap[li])
                filt, gate = a.split(w.gate[li], dim=1)
                z = torch.tanh(filt) * torch.sigmoid(gate)
                zs.append(z)
                if li + 1 < layers:  # the last layer's residual output is never used
                    res = torch.addmm(w.b_res[li], z, w.w_res[li])
                    h = torch.add(res, h, alpha=SQRT_HALF, out=self._input_row(li + 1, i))
            skips = torch.addmm(w.b_skip, torch.cat(zs, dim=1), w.w_skip)
            hidden = torch.addmm(w.h1[1], torch.relu(skips), w.h1[0])
            params = torch.addmm(w.h2[1], torch.relu(hidden), w.h2[0])[:, :, None]  # (B, P, 1)
            if self.order:
                lp = self.lpc_buf[i]
                params = self.dist.affine(params, (lp[:, 1:] * self.past).sum(1, keepdim=True), lp[:, :1])
            temperature = self.temp_buf[i] if self.temperature is None else self.temperature
            x = torch.where(self.forced_mask[i], self.forced[i], draw(self.dist, params, self.mode, temperature))
            self.out[i].copy_(x)
            self.prev.copy_(x)
            if self.order:
                self.past.copy_(torch.cat([x, self.past[:, :-1]], dim=1))

    # ------------------------------------------------------------------ per block, outside the graph
    def _load(self, t0: int) -> int:
        """Fill the conditioning and prompt buffers for steps t0 .. t0 + N - 1; returns the valid count."""
        w, n = self.w, self.n
        assert self.cond is not None  # set by `run`
        m = min(n, self.cond.shape[-1] - t0)
        bias = w.conv_bias[None, :, None, :]
        if w.has_cond:
            c = self.cond[:, :, t0 : t0 + m]
            self.cond_buf[:m].copy_(torch.einsum("lgc,bcn->nlbg", w.w_cond, c) + bias)
        else:
            self.cond_buf[:m].copy_(bias.expand(m, -1, self.batch, -1))
        self.cond_buf[m:].copy_(bias.expand(n - m, -1, self.batch, -1))
        if self.order:
            assert self.lpc is not None  # given to `run` exactly when the teacher has linear prediction
            self.lpc_buf.zero_()
            self.lpc_buf[:m].copy_(self.lpc[:, :, t0 : t0 + m].permute(2, 0, 1))
        if self.temperature is None:
            assert self.temps is not None  # given to `run` exactly when the sampler takes each step's own
            self.temp_buf.fill_(1.0)
            self.temp_buf[:m].copy_(self.temps[:, t0 : t0 + m].t()[:, :, None])
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
        self.past.zero_()

    def _capture(self) -> None:
        """Warm up on a side stream (cuBLAS handles and workspaces), then record one block."""
        with torch.cuda.device(self.device):
            self._load(0)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._block()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._block()
        self._graph = graph

    @torch.inference_mode()
    def run(self, cond: torch.Tensor, prompt: torch.Tensor | None = None, progress=None,
            lpc: torch.Tensor | None = None, temps: torch.Tensor | None = None) -> torch.Tensor:
        """cond: (batch, C, T) the teacher's conditioning; prompt: (batch, P) known samples (model domain);
        lpc: (batch, 1 + p, T) the linear predictor (`teacher.predictor`) (exactly when the teacher has them);
        temps: (batch, T) each step's temperature (exactly when the sampler was built with temperature None)
        -> (batch, T)."""
        if cond.shape[0] != self.batch or cond.device != self.device:
            raise ValueError(f"this sampler was built for batch {self.batch} on {self.device}, "
                             f"got {cond.shape[0]} on {cond.device}")
        if (lpc is None) != (self.order == 0):
            raise ValueError("pass lpc=teacher.predictor(mel) exactly when the teacher has linear prediction")
        if (temps is None) != (self.temperature is not None):
            raise ValueError("pass temps (each step's temperature) exactly when the sampler was built without one")
        if temps is not None and tuple(temps.shape) != (self.batch, cond.shape[-1]):
            raise ValueError(f"temps must have shape ({self.batch}, {cond.shape[-1]}), got {tuple(temps.shape)}")
        self.cond, self.prompt = cond, prompt
        self.temps = temps.to(self.temp_buf.dtype) if temps is not None else None
        self.lpc = lpc.to(self.lpc_buf.dtype) if lpc is not None else None
        try:
            if self.graph and self._graph is None:
                self._capture()
            self._reset()  # the warm-up block ran on real buffers, and so did the previous run
            length = cond.shape[-1]
            audio = cond.new_zeros(self.batch, length)
            for t0 in range(0, length, self.n):
                m = self._load(t0)
                if self._graph is not None:
                    self._graph.replay()
                else:
                    self._block()
                audio[:, t0 : t0 + m] = self.out[:m, :, 0].t()
                if progress is not None:
                    progress.update(m)
        finally:
            self.cond = self.prompt = self.lpc = self.temps = None  # not kept alive by the cache
        return audio


def graph_generate(teacher: WaveNetTeacher, cond: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                   mode: str = "sample",
                   prompt: torch.Tensor | None = None, progress=None, block: int = BLOCK,
                   lpc: torch.Tensor | None = None) -> torch.Tensor:
    """Sample with a `BlockSampler` kept per teacher and (batch, dtype, device, mode, temperature), so
    that repeated calls (an evaluation's batches, timed runs) reuse its buffers and captured graph. A
    sampler is rebuilt when any of the teacher's parameters was replaced or changed in place since
    (their identities, storages and version counters are compared), so it never samples with stale
    weights. temperature: one number, or each step's own (B, T)."""
    temps = temperature if isinstance(temperature, torch.Tensor) else None
    fixed = None if temps is not None else float(temperature)
    # (an inference tensor has no version counter; such weights are taken to stay as they are)
    weights = tuple((id(p), p.data_ptr(), -1 if p.is_inference() else p._version) for p in teacher.parameters())
    key = (cond.shape[0], cond.dtype, str(cond.device), mode, fixed, block)
    cache = _samplers.setdefault(teacher, {})
    entry = cache.get(key)
    if entry is None or entry[0] != weights:
        cache.pop(key, None)
        while len(cache) >= CACHED:
            cache.pop(next(iter(cache)))  # the oldest
        entry = cache[key] = (weights, BlockSampler(teacher, cond.shape[0], cond.device, cond.dtype, fixed,
                                                    mode, block))
    return entry[1].run(cond, prompt, progress, lpc, temps)
