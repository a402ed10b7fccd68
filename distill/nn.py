"""Building blocks: causal convolution, the gated residual WaveNet stack, the mel upsampler.

The WaveNet stack is used by the teacher (one stack) and by every student flow. It is causal: output
t depends on inputs <= t. Callers that must see only *strictly earlier* samples (the teacher's
p(x_t | x_<t), each IAF flow) shift their input by one sample first (`shift_right`).

Incremental (Fast WaveNet) evaluation: `WaveNetStack.step` processes one time step with per-layer
ring buffers holding the last (k-1)*d inputs of each dilated conv, O(layers) work per sample, and
gives the same numbers as the parallel forward pass (tested in float64).
"""

from __future__ import annotations

import contextlib
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from distill import engine
from distill.audio import pad_mel
from distill.config import FeatureConfig
from distill.errors import ConfigError
from distill.pitch import SOURCE_CHANNELS, MelPitch, pitch_arguments

SQRT_HALF = math.sqrt(0.5)


def shift_right(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """(..., T) -> (..., T): y_t = x_{t-steps}, zeros at the start."""
    return F.pad(x, (steps, 0))[..., : x.shape[-1]]


def gated_tanh(filt: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """tanh(filt) * sigmoid(gate), with tanh(f) written as 2 sigmoid(2f) - 1.

    The same function (error <= 2e-7 in float32), but PyTorch's CPU tanh kernel is several times slower
    than its sigmoid kernel on long (B, C, T) tensors; this form halves the gate's cost in parallel
    synthesis on CPU (measured by `wavedistill bench`). The per-step incremental evaluator keeps torch.tanh.
    """
    return (torch.sigmoid(2 * filt) * 2 - 1) * torch.sigmoid(gate)


def gated_tanh_(filt: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """`gated_tanh` in place (the same operations in the same order): the result in `filt`, `gate`
    overwritten. For inference only (autograd needs the inputs)."""
    return filt.mul_(2).sigmoid_().mul_(2).sub_(1).mul_(gate.sigmoid_())


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads (k-1)*d zeros on the left only: output t sees inputs t-(k-1)d .. t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class GatedResidualLayer(nn.Module):
    """z = tanh(W_f*x + V_f c) * sigmoid(W_g*x + V_g c); residual and skip 1x1 convs of z.

    `forward` takes this layer's conditioning projection V c (B, 2G, T) ready-made
    (`WaveNetStack.project_cond`).
    """

    def __init__(self, residual: int, gate: int, skip: int, cond: int, kernel_size: int, dilation: int):
        super().__init__()
        self.gate_channels = gate
        self.skip_channels = skip
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = CausalConv1d(residual, 2 * gate, kernel_size, dilation)
        self.cond = nn.Conv1d(cond, 2 * gate, 1, bias=False) if cond > 0 else None
        self.out = nn.Conv1d(gate, residual + skip, 1)  # residual and skip in one matmul

    def forward(self, x: torch.Tensor, cond_proj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.conv(x)
        if cond_proj is not None:
            a = a + cond_proj
        filt, gate = a.split(self.gate_channels, dim=1)
        z = gated_tanh(filt, gate)
        res, skip = self.out(z).split([x.shape[1], self.skip_channels], dim=1)
        return (x + res) * SQRT_HALF, skip

    def infer(self, x: torch.Tensor, cond_proj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` without autograd (off the CPU; the CPU runs `distill.engine`): the same operations
        in the same order, done in place, so a layer allocates two buffers (the conv's and the 1x1's
        output) instead of ~10. The same numbers: bit for bit at batch 1 (tested); at batch > 1 the
        gate halves are strided views, whose row ends PyTorch computes with scalar kernels (a last-bit
        difference)."""
        a = self.conv(x)
        if cond_proj is not None:
            a.add_(cond_proj)
        filt, gate = a.split(self.gate_channels, dim=1)
        z = gated_tanh_(filt, gate)
        res, skip = self.out(z).split([x.shape[1], self.skip_channels], dim=1)
        if res.dtype != x.dtype:  # a float32 stream into a bf16 layer: the sum is float32, as in forward
            return (x + res) * SQRT_HALF, skip
        return res.add_(x).mul_(SQRT_HALF), skip


class WaveNetStack(nn.Module):
    """Input 1x1 conv -> L gated residual layers (dilation 2^(i mod cycle)) -> ReLU-1x1-ReLU-1x1 head.

    forward(x: (B, in_channels, T), c: (B, cond_channels, T) | None) -> (B, out_channels, T), causal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layers: int = 20,
        cycle: int = 10,
        kernel_size: int = 2,
        residual_channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 64,
        cond_channels: int = 0,
    ):
        super().__init__()
        if layers < 1 or cycle < 1 or kernel_size < 1:
            raise ConfigError(f"WaveNet needs layers, cycle, kernel_size >= 1 (got {layers}, {cycle}, {kernel_size})")
        self.input = nn.Conv1d(in_channels, residual_channels, 1)
        # typed for mypy as the list of layers it holds (nn.ModuleList is not generic: its items are nn.Module)
        self.layers = cast("list[GatedResidualLayer]", nn.ModuleList(
            GatedResidualLayer(
                residual_channels, gate_channels, skip_channels, cond_channels, kernel_size, 2 ** (i % cycle)
            )
            for i in range(layers)
        ))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(), nn.Conv1d(skip_channels, out_channels, 1)
        )
        self.skip_scale = math.sqrt(1.0 / layers)

    def macs_per_sample(self) -> int:
        """Multiply-accumulates of one forward pass per time step (convs and 1x1s; biases, gates and
        the conditioning's upsampling left out). FLOPs = 2 x MACs."""
        residual = self.input.out_channels
        total = self.input.in_channels * residual
        for layer in self.layers:
            gates = 2 * layer.gate_channels
            total += layer.kernel_size * residual * gates + layer.gate_channels * (residual + layer.skip_channels)
            if layer.cond is not None:
                total += layer.cond.in_channels * gates
        head1, head2 = cast(nn.Conv1d, self.head[1]), cast(nn.Conv1d, self.head[3])
        return total + head1.in_channels * head1.out_channels + head2.in_channels * head2.out_channels

    def receptive_field(self) -> int:
        """Inputs that output t depends on: (k-1) * sum(dilations) + 1 (the 1x1 convs add none)."""
        return sum((layer.kernel_size - 1) * layer.dilation for layer in self.layers) + 1

    def project_cond(self, c: torch.Tensor | None, budget_bytes: int = 16 << 20):
        """Each layer's conditioning projection V_l c (B, 2G, T), in the order of the layers (None each
        when the stack or the call has no conditioning). Consecutive layers are projected together in
        one matrix product as long as their projections fit `budget_bytes` (speed without holding
        every layer's projection of a long utterance at once); `c` is made contiguous once. 16 MB keeps
        each product below glibc's largest automatic mmap threshold (32 MB): a plain Python process then
        reuses freed projections from its heap instead of mapping and faulting in fresh pages every step
        (side by side on 2 cores, the tiny teacher's float32 training step without tuned malloc: 21.5k
        samples/s at 64 MB, 28-33k at 8-16 MB)."""
        if c is None or self.layers[0].cond is None:
            yield from (None for _ in self.layers)
            return
        c = c.contiguous()
        per_layer = c.shape[0] * c.shape[-1] * c.element_size() * 2 * self.layers[0].gate_channels
        group = max(1, budget_bytes // max(per_layer, 1))
        for start in range(0, len(self.layers), group):
            layers = self.layers[start : start + group]
            weight = torch.cat([cast(nn.Conv1d, layer.cond).weight for layer in layers])
            yield from F.conv1d(c, weight).split([2 * layer.gate_channels for layer in layers], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.infer(x, c)
        if time_major(x) and not self.hooked():
            return self.forward_time_major(x, c)
        return self.forward_channels_first(x, c)

    def hooked(self) -> bool:
        """Whether a conv of the stack has forward (pre-)hooks, e.g. torch.nn.utils.weight_norm's, which
        recomputes the weight in a pre-hook: `forward_time_major` reads the weights without calling the
        convs, so such a stack keeps the convolutional form."""
        return any(m._forward_pre_hooks or m._forward_hooks for m in self.modules() if isinstance(m, nn.Conv1d))

    def forward_channels_first(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` with autograd as convolutions on (B, C, T)."""
        with self.float32(x, 0):
            h = self.input(x)
        skips = 0
        for i, (layer, proj) in enumerate(zip(self.layers, self.project_cond(c), strict=False)):
            h, proj = self.precise_inputs(i, h, proj)
            with self.float32(x, i):
                h, s = layer(h, proj)
            skips = skips + s
        return self.head(skips * self.skip_scale)

    def forward_time_major(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` with autograd as matrix products in time-major layout (B, T, C): each dilated conv is
        one product per tap, the later taps added into the rows they reach; the 1x1s and the conditioning
        projection are products too. The same function as the convolutional form (tested to float64
        rounding, gradients included); on a CPU under bf16 autocast it is the faster of the two (see
        `time_major`). Under autocast, the float32 layers project the conditioning in float32 (the
        convolutional form rounds that projection to bf16 first: a difference within bf16 rounding)."""
        length = x.shape[-1]
        with self.float32(x, 0):
            h = F.linear(x.transpose(1, 2), self.input.weight[:, :, 0], self.input.bias)
        cond = _TimeMajorCond(c, x) if c is not None and self.layers[0].cond is not None else None
        skips: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            precise = self.precise(x, i)
            h, _ = self.precise_inputs(i, h, None)
            with self.float32(x, i):
                weight = layer.conv.weight  # (2G, R, k): tap k - 1 reads the current step
                k = layer.kernel_size
                a = F.linear(h, weight[:, :, k - 1], layer.conv.bias)
                for tap in range(k - 1):
                    shift = (k - 1 - tap) * layer.dilation
                    if shift < length:
                        a[:, shift:] += F.linear(h[:, : length - shift], weight[:, :, tap])
                if cond is not None:
                    a = a + F.linear(cond.get(precise), cast(nn.Conv1d, layer.cond).weight[:, :, 0])
                filt, gate = a.split(layer.gate_channels, dim=-1)
                # bf16: tanh * sigmoid (3 kernels, forward and backward, against gated_tanh's 5)
                z = torch.tanh(filt) * torch.sigmoid(gate) if a.dtype == torch.bfloat16 else gated_tanh(filt, gate)
                res, s = F.linear(z, layer.out.weight[:, :, 0], layer.out.bias).split(
                    [h.shape[-1], layer.skip_channels], dim=-1)
                h = (h + res) * SQRT_HALF
            skips = s if skips is None else skips + s
        head1, head2 = cast(nn.Conv1d, self.head[1]), cast(nn.Conv1d, self.head[3])
        y = F.relu(cast(torch.Tensor, skips) * self.skip_scale)
        y = F.relu(F.linear(y, head1.weight[:, :, 0], head1.bias))
        return F.linear(y, head2.weight[:, :, 0], head2.bias).transpose(1, 2).contiguous()

    # Under bf16 autocast, the input 1x1 and the first `float32_layers` gated layers run in float32: the
    # previous sample enters the stack there, and rounding it to bf16's 8 bits costs a teacher more than
    # the later layers do (the shipped teacher's validation log density in bf16 autocast: -0.030
    # nats/sample against float32; input and first two layers in float32: -0.011). Teachers set 2.
    float32_layers = 0

    def precise(self, x: torch.Tensor, i: int) -> bool:
        """Whether layer i (the input conv with i = 0) runs in float32 under the autocast now in force."""
        return i < self.float32_layers and torch.is_autocast_enabled(x.device.type)

    def float32(self, x: torch.Tensor, i: int):
        """The autocast state for layer i (the input conv with i = 0): off for the float32 layers."""
        return torch.autocast(x.device.type, enabled=False) if self.precise(x, i) else contextlib.nullcontext()

    def precise_inputs(self, i: int, h: torch.Tensor, proj: torch.Tensor | None):
        """(h, proj) for layer i, in float32 for the float32 layers (proj was projected under autocast)."""
        if not self.precise(h, i):
            return h, proj
        return h.float(), None if proj is None else proj.float()

    def infer(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without autograd (what `forward` runs under no_grad / inference_mode): on a CPU as
        matrix products in reused buffers (`distill.engine`), elsewhere `infer_in_place`."""
        if engine.supports(self, x):
            return engine.stack_forward(self, x, c)
        return self.infer_in_place(x, c)

    def infer_in_place(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` without autograd: the same numbers from in-place operations
        (`GatedResidualLayer.infer`); a few buffers per layer."""
        with self.float32(x, 0):
            h = self.input(x)
        skips = None
        for i, (layer, proj) in enumerate(zip(self.layers, self.project_cond(c), strict=False)):
            h, proj = self.precise_inputs(i, h, proj)
            with self.float32(x, i):
                h, s = layer.infer(h, proj)
            skips = s.clone() if skips is None else skips.add_(s)
        z = cast(torch.Tensor, skips).mul_(self.skip_scale).relu_()
        return self.head[3](self.head[1](z).relu_())


def time_major(x: torch.Tensor) -> bool:
    """Whether a forward with autograd runs `WaveNetStack.forward_time_major`: on a CPU under bf16 autocast,
    eager or compiled, where matrix products beat mkldnn's bf16 convolutions and the bf16 gate is cheaper
    as tanh * sigmoid (BENCHMARKS.md; in float32 the convolutions are faster)."""
    cpu = x.device.type == "cpu"
    return cpu and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class _TimeMajorCond:
    """One stack call's conditioning (B, C, T) in time-major layout, made once per precision: float32 for
    the float32 layers, the autocast dtype for the rest (autocast would cast it again at every layer)."""

    def __init__(self, c: torch.Tensor, x: torch.Tensor):
        self.c, self.device = c, x.device.type
        self.made: dict[torch.dtype, torch.Tensor] = {}

    def get(self, precise: bool) -> torch.Tensor:
        if precise:
            dtype = torch.float32
        elif torch.is_autocast_enabled(self.device):
            dtype = torch.get_autocast_dtype(self.device)
        else:
            dtype = self.c.dtype
        if dtype not in self.made:
            self.made[dtype] = self.c.transpose(1, 2).to(dtype).contiguous()
        return self.made[dtype]


@torch.compiler.disable  # inductor (torch 2.11) fails to lower its reshapes ("NotImplementedError: View"); runs eager
def _stretch(x: torch.Tensor, conv: nn.Conv1d, s: int) -> torch.Tensor:
    """`conv(x.repeat_interleave(s))` for a depthwise conv of width 2s+1 and padding s, computed in
    polyphase form: output phase r of step q only sees steps q-1, q, q+1 of x, with weights that are
    partial sums of the kernel. Same numbers, ~(2s+1)/3 times fewer multiplications.

    x: (B, C, L) -> (B, C, L * s).
    """
    weight = conv.weight[:, 0]  # (C, 2s+1)
    sums = F.pad(weight.cumsum(dim=1), (1, 0))  # sums[:, k] = w[0] + ... + w[k-1]
    r = torch.arange(s, device=x.device)
    before = sums[:, s - r]  # taps reading step q-1: w[0 .. s-r-1]
    now = sums[:, 2 * s - r] - sums[:, s - r]  # step q: w[s-r .. 2s-r-1]
    after = sums[:, 2 * s + 1 : 2 * s + 2] - sums[:, 2 * s - r]  # step q+1: w[2s-r .. 2s]
    poly = torch.stack([before, now, after], dim=-1).reshape(-1, 1, 3)  # (C * s, 1, 3)
    channels, length = x.shape[1], x.shape[-1]
    bias = cast(torch.Tensor, conv.bias)  # the stretch convs have one (torch types it Tensor | None)
    y = F.conv1d(x, poly, bias.repeat_interleave(s), padding=1, groups=channels)  # (B, C*s, L)
    return y.reshape(x.shape[0], channels, s, length).transpose(2, 3).reshape(x.shape[0], channels, length * s)


class MelUpsampler(nn.Module):
    """Log-mel frames -> per-sample conditioning; owns the model's input contract (`pad`: the context
    frames and their silence value).

    forward(mel: (B, n_mels, F + 2*context)) -> (B, n_mels, F * hop). The `context` frames on each
    side only feed the smoothing convolutions; the output covers exactly the F central frames.

    mode "stretch" (repeat + conv): for each scale s, repeat every step s times, then smooth with a
    learned depthwise conv of width 2s+1 (the product of the scales must equal hop);
    "transposed": a ConvTranspose1d (kernel 2s, stride s) per scale; "repeat": repetition only.
    """

    def __init__(self, n_mels: int, hop_length: int, scales: list[int], mode: str = "stretch", context: int = 2,
                 silence: float = math.log(1e-5)):
        super().__init__()
        self.silence = silence  # the log-mel of digital silence: what `pad` puts beyond the edges
        if mode not in ("stretch", "transposed", "repeat"):
            raise ConfigError(f"upsample mode '{mode}' is not one of stretch, transposed, repeat")
        if mode != "repeat" and math.prod(scales) != hop_length:
            raise ConfigError(f"upsample_scales {scales} multiply to {math.prod(scales)}, not hop_length {hop_length}")
        self.hop = hop_length
        self.scales = list(scales) if mode != "repeat" else [hop_length]
        self.mode = mode
        self.context = context
        self.convs = nn.ModuleList()
        conv: nn.Conv1d | nn.ConvTranspose1d
        for s in self.scales if mode != "repeat" else []:
            if mode == "stretch":
                conv = nn.Conv1d(n_mels, n_mels, 2 * s + 1, padding=s, groups=n_mels)
                nn.init.constant_(conv.weight, 1.0 / (2 * s + 1))  # starts as a moving average
                nn.init.zeros_(cast(torch.Tensor, conv.bias))
            else:
                # kernel 2s - (s mod 2) with padding s // 2: exactly L*s outputs, centred for odd s too
                conv = nn.ConvTranspose1d(n_mels, n_mels, 2 * s - s % 2, stride=s, padding=s // 2, groups=n_mels)
            self.convs.append(conv)
        needed = self.context_frames()
        if context < needed:
            raise ConfigError(
                f"the '{mode}' upsampler with scales {self.scales} reaches {needed} mel frames beyond a crop; "
                f"set data.mel_context >= {needed} (got {context})"
            )

    def context_frames(self) -> int:
        """Mel frames beyond each edge that the output can depend on (what `context` must cover)."""
        if self.mode == "repeat":
            return 0
        reach = 0  # in output samples
        for i, s in enumerate(self.scales):
            # stretch: a conv reaching s steps each way at this stage's output rate; transposed: one
            # input step, also s output steps. Each step is worth prod(later scales) final samples.
            reach += s * math.prod(self.scales[i + 1 :])
        return math.ceil(reach / self.hop)

    def pad(self, mels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Utterance mels -> this upsampler's input: `context` frames of silence on each side. mels: one
        (n_mels, F) or (B, n_mels, F) tensor, or a list of (n_mels, F_i) (each padded with silence to the
        longest first) -> (B, n_mels, F + 2 context); a lone (n_mels, F) gives B = 1."""
        if isinstance(mels, (list, tuple)):
            longest = max(m.shape[-1] for m in mels)
            mels = torch.stack([F.pad(m, (0, longest - m.shape[-1]), value=self.silence) for m in mels])
        elif mels.dim() == 2:
            mels = mels[None]
        return pad_mel(mels, self.context, self.silence)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        if self.mode == "repeat":
            x = x.repeat_interleave(self.hop, dim=-1)
        for s, conv in zip(self.scales, self.convs, strict=False):
            x = _stretch(x, cast(nn.Conv1d, conv), s) if self.mode == "stretch" else conv(x)
            x = F.leaky_relu(x, 0.4)
        cut = self.context * self.hop
        return x[..., cut : x.shape[-1] - cut] if cut else x


class MelConditioned:
    """The conditioning every vocoder model here shares: `upsampler` (a `MelUpsampler`), `speaker` (an
    embedding table or None) and `pitch` (the mel's pitch-synchronous source, `distill.pitch.MelPitch`,
    or None). Callers hand utterance mels to `pad_mels` and the result to the model."""

    upsampler: MelUpsampler
    speaker: nn.Embedding | None
    pitch: MelPitch | None
    pitch_args: dict | None  # the source's `MelPitch` arguments, as the model's checkpoint records them
    mel_context: int
    features: FeatureConfig  # the log-mel settings the model reads

    def build_pitch(self, enabled: bool, pitch: dict | None) -> int:
        """Set `pitch` and `pitch_args` for a model with (`enabled`) or without a pitch source; pitch: the
        `MelPitch` arguments a checkpoint recorded (None: `distill.pitch.pitch_arguments(self.features)`).
        Returns the conditioning channels the source adds (0 without one)."""
        self.pitch_args = (pitch_arguments(self.features) if pitch is None else dict(pitch)) if enabled else None
        differ = self.features.analysis_differences("pitch", self.pitch_args or {})
        if differ:
            raise ConfigError(f"the pitch source's arguments disagree with the features ({'; '.join(differ)})")
        self.pitch = (MelPitch.build(self.pitch_args, self.features.hop_length, self.features.n_mels)
                      if self.pitch_args is not None else None)
        return SOURCE_CHANNELS if self.pitch is not None else 0

    def pad_mels(self, mels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Utterance mels (no context; see `MelUpsampler.pad`) -> the model's mel input."""
        return self.upsampler.pad(mels)

    def conditioning(self, mel: torch.Tensor, speaker: torch.Tensor | None = None,
                     mel_cond: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, n_mels, F + 2c) [+ speaker ids (B,)] -> (B, cond_channels, F * hop): the upsampled mel,
        the speaker's embedding (multi-speaker models) and the mel's pitch-synchronous source (models with
        a pitch source: 4 channels, `distill.pitch.MelPitch.source`), in that order. mel_cond:
        `upsampler(mel)` when the caller has it already (a frozen upsampler shared by teacher and
        student): not computed again."""
        cond = with_speaker(self.upsampler(mel) if mel_cond is None else mel_cond, self.speaker, speaker)
        if self.pitch is None:
            return cond
        return torch.cat([cond, self.pitch.source(mel, self.mel_context).to(cond.dtype)], dim=1)


def with_speaker(cond: torch.Tensor, table: nn.Embedding | None, speaker: torch.Tensor | None) -> torch.Tensor:
    """Per-sample conditioning (B, C, T) plus a multi-speaker model's speaker embedding, broadcast over
    time -> (B, C + speaker_dim, T); unchanged for a model without speakers (`table` None). Teachers and
    students condition the same way."""
    if table is None:
        if speaker is not None:
            raise ConfigError("this model has no speaker input; pass no speaker")
        return cond
    if speaker is None:
        raise ConfigError(f"this model is multi-speaker ({table.num_embeddings} speakers): pass speaker ids (B,)")
    emb = table(speaker.to(cond.device))[:, :, None].expand(-1, -1, cond.shape[-1])
    return torch.cat([cond, emb.to(cond.dtype)], dim=1)
