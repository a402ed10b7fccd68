"""Linear prediction from the mel spectrogram (LP-WaveNet, arXiv:1811.11913; the idea behind LPCNet).

The mel already fixes each frame's spectral envelope, so a teacher need not learn it: per frame,

    log-mel -> mel magnitude -> linear magnitude (pseudo-inverse of the filterbank, clamped >= 0)
    -> power (times the pre-emphasis response |1 - a e^-jw|^2 when the model works on pre-emphasised
    audio) -> autocorrelation (inverse real FFT) -> lag window + white-noise correction
    -> Levinson-Durbin -> prediction coefficients c_1..c_p,

and Levinson-Durbin's final prediction error, over the analysis window's energy, estimates the
residual's power g^2 per sample. The teacher's step law becomes

    location_t = sum_k c_k(t) x_(t-k) + g(t) * net_location_t,   log scale_t = log g(t) + net_log_scale_t,

so its network works in units of the expected residual (its zero output already is the LP-only model:
-4.29 nats/sample on the demo test split with pre-emphasis 0.85) instead of learning an envelope and a
gain the mel gives away, and an Adam step moves the location by a fraction of the residual, not of the
signal. The prediction is linear in x_<t: causal, differentiable in x (distillation's gradient flows
through it) and a p-tap dot product per step in every sampler. Coefficients are held over each
frame's hop block (frame i conditions samples [i hop, (i+1) hop), `distill.audio`'s alignment rule)
or interpolated per sample between frame centres in the reflection-coefficient domain, where every
point between two stable filters is stable.

Sign convention: prediction coefficients, x_hat_t = sum_k c_k x_(t-k) (A(z) = 1 - sum_k c_k z^-k).
"""

from __future__ import annotations

import math

import torch

from distill.audio.mel import mel_filterbank
from distill.errors import ConfigError
from distill.nn.analysis import Float64Analysis, exact
from distill.nn.layers import shift_right


def levinson(r: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Levinson-Durbin. r: (..., >= order + 1) autocorrelation (lag 0 first, r_0 > 0) ->
    (prediction coefficients c (..., order), reflection coefficients k (..., order), final error (...)).
    """
    c = r.new_zeros(*r.shape[:-1], order)
    ks = r.new_zeros(*r.shape[:-1], order)
    err = r[..., 0]
    for i in range(order):
        acc = r[..., i + 1] - (c[..., :i] * r[..., 1 : i + 1].flip(-1)).sum(-1)
        k = acc / err
        c = torch.cat([c[..., :i] - k[..., None] * c[..., :i].flip(-1), k[..., None], c[..., i + 1 :]], dim=-1)
        ks[..., i] = k
        err = err * (1 - k * k)
    return c, ks, err


def reflection_to_lpc(k: torch.Tensor) -> torch.Tensor:
    """Step-up recursion: reflection coefficients (..., p) -> prediction coefficients (..., p)."""
    order = k.shape[-1]
    c = k.new_zeros(*k.shape[:-1], 0)
    for i in range(order):
        ki = k[..., i : i + 1]
        c = torch.cat([c - ki * c.flip(-1), ki], dim=-1)
    return c


def lp_predict(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """x_hat_t = sum_k c_k(t) x_(t-k), zeros before the start. x: (B, T), coeffs: (B, p, T) -> (B, T).
    (`MelLPC`'s output holds the coefficients in rows 1..p.)"""
    pred = torch.zeros_like(x)
    for k in range(coeffs.shape[1]):
        pred = pred + coeffs[:, k].to(x.dtype) * shift_right(x, k + 1)
    return pred


class MelLPC(Float64Analysis):
    """Per-sample log gain and prediction coefficients from log-mel frames.

    forward(logmel: (B, n_mels, F)) -> (B, 1 + order, F * hop_length) float32: row 0 is log g (the
    log of the expected residual's standard deviation), rows 1.. the coefficients c_1..c_p. No
    parameters (nothing to learn; the filterbank's pseudo-inverse is rebuilt from the arguments, so
    checkpoints do not hold it).
    """

    inverse: torch.Tensor  # buffers, typed (nn.Module's attribute lookup says Tensor | Module)
    emphasis: torch.Tensor
    lag_window: torch.Tensor

    def __init__(
        self,
        order: int = 16,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 256,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        preemphasis: float = 0.0,
        lag_window_hz: float = 60.0,
        white_noise: float = 1e-4,
        interpolate: bool = False,
    ):
        super().__init__()
        if not 1 <= order < n_fft // 2:
            raise ConfigError(f"linear_prediction order must be in [1, {n_fft // 2}), got {order}")
        if lag_window_hz < 0 or white_noise < 0:
            raise ConfigError(f"linear_prediction lag_window_hz and white_noise must be >= 0 "
                              f"(got {lag_window_hz}, {white_noise})")
        self.order, self.hop, self.n_fft, self.interpolate = order, hop_length, n_fft, interpolate
        self.white_noise = white_noise
        fbanks = mel_filterbank(n_fft, f_min, f_max, n_mels, sample_rate).double()  # what LogMel applies
        omega = torch.linspace(0, math.pi, n_fft // 2 + 1, dtype=torch.float64)
        emphasis = 1 + preemphasis**2 - 2 * preemphasis * torch.cos(omega)  # |1 - a e^-jw|^2
        lags = torch.arange(order + 1, dtype=torch.float64)
        lag_window = torch.exp(-0.5 * (2 * math.pi * lag_window_hz * lags / sample_rate) ** 2)
        self.register_buffer("inverse", torch.linalg.pinv(fbanks), persistent=False)  # (n_mels, n_freqs)
        self.register_buffer("emphasis", emphasis, persistent=False)
        self.register_buffer("lag_window", lag_window, persistent=False)
        # r_0 of a frame is sum_n (w_n x_n)^2: per-sample power = error / sum_n w_n^2 (LogMel's Hann window)
        self.window_energy = float(torch.hann_window(win_length, dtype=torch.float64).pow(2).sum())

    @classmethod
    def build(cls, args: dict, hop_length: int, n_mels: int, preemphasis: float) -> MelLPC:
        """A model's predictor from its `linear_prediction` arguments (a checkpoint's or a config's): an
        unknown argument is a one-line ConfigError."""
        try:
            return cls(hop_length=hop_length, n_mels=n_mels, preemphasis=preemphasis, **args)
        except TypeError as err:
            raise ConfigError(f"linear_prediction: {err}") from None

    def of_padded(self, mel: torch.Tensor, mel_context: int) -> torch.Tensor:
        """`forward` on mel frames (B, n_mels, F + 2 mel_context) with the dataset's context frames,
        which condition no sample of their own -> (B, 1 + p, F * hop)."""
        c = mel_context
        return self(mel[..., c : mel.shape[-1] - c] if c else mel)

    def frame_analysis(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, F) -> reflection coefficients (B, F, order), each |k| < 1, and the log gain
        (B, F), float64."""
        # float64 whatever the model was cast to (Float64Analysis): Levinson-Durbin on float32 loses
        # the small poles
        mag = torch.exp(logmel.double()).transpose(1, 2) @ self.inverse  # (B, F, n_freqs)
        power = mag.clamp(min=0) ** 2 * self.emphasis
        r = torch.fft.irfft(power, n=self.n_fft)[..., : self.order + 1] * self.lag_window
        # white-noise correction (a floor at -40 dB of the frame's power) keeps the system well
        # conditioned; the tiny absolute term keeps digital silence (r = 0) finite
        r0 = r[..., :1] * exact(1 + self.white_noise, r) + exact(1e-12, r)
        r = torch.cat([r0, r[..., 1:]], dim=-1)
        _, k, err = levinson(r, self.order)
        return k, 0.5 * torch.log(err / self.window_energy)

    def frame_coefficients(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, F) -> prediction coefficients per frame (B, F, order), float64."""
        return reflection_to_lpc(self.frame_analysis(logmel)[0])

    @torch.no_grad()
    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logmel.device.type, enabled=False):
            k, log_gain = self.frame_analysis(logmel)  # (B, F, p), (B, F)
            rows = torch.cat([log_gain[..., None], k], dim=-1)  # (B, F, 1 + p)
            frames = k.shape[1]
            if self.interpolate and frames > 1:
                # frame i is centred between samples i hop + hop/2 - 1 and i hop + hop/2; the log gain
                # and the reflection coefficients are interpolated linearly between centres
                t = torch.arange(frames * self.hop, device=k.device, dtype=torch.float64)
                pos = ((t + 0.5) / self.hop - 0.5).clamp(0, frames - 1)
                lo = pos.floor().long().clamp(max=frames - 2)
                w = (pos - lo)[None, :, None]
                rows = rows[:, lo] * (1 - w) + rows[:, lo + 1] * w  # (B, T, 1 + p)
            out = torch.cat([rows[..., :1], reflection_to_lpc(rows[..., 1:])], dim=-1)
            if not (self.interpolate and frames > 1):  # held over each hop block
                out = out.repeat_interleave(self.hop, dim=1)
            return out.transpose(1, 2).float().contiguous()  # (B, 1 + p, T)


def synthesis_block(hop_length: int, order: int, longest: int = 64) -> int:
    """Block length for `lp_synthesis` with coefficients held over each hop: the largest divisor of the
    hop that is at most `longest` and at least the order (the hop itself when none is)."""
    for block in range(min(longest, hop_length), order - 1, -1):
        if hop_length % block == 0:
            return block
    return hop_length


def lp_synthesis(u: torch.Tensor, coeffs: torch.Tensor, block: int, carry: str = "sequential",
                 levels: int | None = None) -> torch.Tensor:
    """All-pole synthesis y_t = sum_k c_k(t) y_(t-k) + u_t from a zero state: the inverse of the
    prediction error u = y - lp_predict(y, coeffs). u: (B, T); coeffs: (B, p, T), constant over each
    run of `block` samples from t = 0 (`block` >= p; `MelLPC`'s held coefficients with a block that
    divides the hop, `synthesis_block`) -> y: (B, T) in u's dtype (float32 for a bf16/fp16 u; autocast
    is switched off inside), differentiable in u.

    Parallel over blocks, not a loop over samples: within block b the filter is fixed, so
    y_b = H_b u_b + Z_b s_(b-1), with H_b (L x L) the lower-triangular Toeplitz matrix of the filter's
    first L impulse-response samples, Z_b (L x p) its response to the state s_(b-1) = (y_(bL-1), ...,
    y_(bL-p)) left by the block before. Only the p-vector states are carried from block to block;
    everything else is batched matrix products, on a CPU or a GPU. carry:

    - "sequential" (the default): one p x p product per block, in a Python loop;
    - "doubling": the states as the prefix compositions of the blocks' affine maps s -> A_b s + d_b,
      `levels` rounds of composing each map with the one 2^r blocks before (Hillis-Steele): the same
      states to rounding (tested), in a graph whose size does not depend on the length, which is what
      an ONNX export needs (`students.export`). It covers 2 ** levels + 1 blocks (None: as many rounds
      as this length needs, `doubling_levels`) and costs levels x blocks small matrix products.
    """
    if block < coeffs.shape[1]:
        raise ValueError(f"lp_synthesis: block {block} is shorter than the order {coeffs.shape[1]}")
    if carry not in ("sequential", "doubling"):
        raise ValueError(f"lp_synthesis: carry must be 'sequential' or 'doubling', got {carry!r}")
    # never in bf16/fp16, even under autocast (bf16 training on a GPU): a resonant filter's output and
    # the predictor applied to it would be off by whole residuals
    with torch.autocast(u.device.type, enabled=False):
        u = u.float() if u.dtype in (torch.bfloat16, torch.float16) else u
        return _blockwise_synthesis(u, coeffs, block, carry, levels)


def _blockwise_synthesis(u: torch.Tensor, coeffs: torch.Tensor, block: int, carry: str,
                         levels: int | None) -> torch.Tensor:
    batch, length = u.shape
    order = coeffs.shape[1]
    blocks = -(-length // block)
    u = torch.nn.functional.pad(u, (0, blocks * block - length)).view(batch, blocks, block, 1)
    c = coeffs[:, :, ::block].transpose(1, 2).to(u.dtype)  # (B, n, p): each block's filter
    with torch.no_grad():  # functions of the mel only
        h = impulse_response(c, block)  # (B, n, L)
        lag = torch.arange(block, device=u.device)
        lag = lag[:, None] - lag[None, :]
        toeplitz = h[..., lag.clamp(min=0)] * (lag >= 0).to(h.dtype)  # (B, n, L, L)
        # the state enters as an extra input v_i = sum_m c_(i+m) y_(-m) for i + m <= p (i < p)
        idx = torch.arange(order, device=u.device)
        pos = idx[:, None] + idx[None, :]  # i + (m - 1)
        v = c[..., pos.clamp(max=order - 1)] * (pos < order).to(c.dtype)  # (B, n, p, p)
        zero_input = toeplitz[..., :order] @ v  # (B, n, L, p)
        tail = zero_input[:, :, -order:].flip(2)  # the next state's dependence on this state (B, n, p, p)
    forced = (toeplitz @ u)  # (B, n, L, 1): each block from a zero state
    carried = forced[:, :, -order:].flip(2)  # (B, n, p, 1)
    if carry == "doubling":
        states = _doubled_states(tail, carried, levels)
    else:
        state = [u.new_zeros(batch, order, 1)]
        for b in range(blocks - 1):
            state.append(carried[:, b] + tail[:, b] @ state[-1])
        states = torch.stack(state, dim=1)
    y = forced + zero_input @ states
    return y.view(batch, blocks * block)[:, :length]


def impulse_response(c: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` samples of the all-pole filters' impulse responses, h_0 = 1 and
    h_j = sum_k c_k h_(j-k): c (..., p) -> h (..., length), by the recursion itself."""
    history = torch.zeros_like(c)  # h_(j-1) .. h_(j-p)
    history[..., 0] = 1.0
    steps = [torch.ones_like(c[..., 0])]
    for _ in range(1, length):
        steps.append((c * history).sum(-1))
        history = torch.cat([steps[-1][..., None], history[..., :-1]], dim=-1)
    return torch.stack(steps, dim=-1)


def doubling_levels(blocks: int) -> int:
    """Rounds of prefix doubling that carry the state across `blocks` blocks: the last block's state
    composes blocks - 1 maps, and r rounds compose 2^r."""
    return max(blocks - 2, 0).bit_length()


def _doubled_states(tail: torch.Tensor, carried: torch.Tensor, levels: int | None) -> torch.Tensor:
    """The states entering each block, s_0 = 0 and s_(b+1) = A_b s_b + d_b (A = tail (B, n, p, p),
    d = carried (B, n, p, 1)), by `levels` rounds of prefix doubling -> (B, n, p, 1). After round r,
    map b is the composition of the 2^(r+1) maps ending at b (fewer at the start, where the maps before
    block 0 are the identity); its offset is then the state after block b from a zero state."""
    batch, blocks, order = carried.shape[:3]
    if levels is None:
        levels = doubling_levels(blocks)
    a, d = tail, carried
    eye = torch.eye(order, dtype=a.dtype, device=a.device)
    index = torch.arange(blocks, device=a.device)
    for level in range(levels):
        # each block's map composed with the one 2^level blocks before (none before block 0: the
        # identity), by gathering rather than slicing: a symbolic length in an export stays one symbol
        shift = 1 << level
        earlier = (index - shift).clamp(min=0)
        first = (index < shift)[None, :, None, None]
        before_d = torch.where(first, torch.zeros_like(d[:, :1]), d[:, earlier])
        if level + 1 < levels:  # the last round needs only the offsets
            before_a = torch.where(first, eye, a[:, earlier])
            d, a = a @ before_d + d, a @ before_a
        else:
            d = a @ before_d + d
    return torch.cat([d.new_zeros(batch, 1, order, 1), d[:, : blocks - 1]], dim=1)
