"""Pitch from the mel spectrogram, and a pitch-synchronous source for students.

Why: an LP student's flows must turn white noise into the excitation, which in voiced speech is a
pulse train at the pitch period. With only the mel and the noise's past to go on, the flows take
thousands of steps to place one pulse a period after the last (docs/experiments.md: after the demo's 10
minutes they had the fundamental and not the harmonics above ~500 Hz). The mel already fixes the
pitch: below ~1.5 kHz its bands (Slaney scale, ~37 Hz apart for 80 bands to 8 kHz) resolve the
harmonics of a voice. So, like neural source-filter vocoders (NSF, Wang et al. 2019) but with nothing
learned, the student is handed a source computed from the mel alone:

    log-mel frame -> its detail across bands (minus a 5-band moving average) in the band below
    `band_hz` -> cosine similarity with the same detail of the mel of an ideal pulse train (harmonics
    with the analysis window's spectral shape, through the same filterbank) at every candidate F0 on
    a log grid -> the best candidate, refined by a parabola; the similarity, averaged over 3 frames,
    is the voicing score.

`MelPitch.source` turns the frame track into per-sample channels: the log F0 and the voicing are
interpolated between frame centres, the phase is the running sum of F0 / sample_rate, and the
channels are [v * pulse, v * sin(phase), v * cos(phase), v] with the band-limited pulse train
sum_(k <= K) cos(k phase) / sqrt(K / 2) (K harmonics below Nyquist, unit RMS: the excitation's own
units in an LP student) and v the soft voicing. The source depends on the mel only (not on the
noise), so it is conditioning like the mel: the flows stay autoregressive in z and the log-determinant
is unchanged.

Measured on the demo test split against pyworld's Harvest on the audio: median error 20 cents on
voiced frames, 72% within 50 cents, 6% octave errors. The score is 0.91 in the median voiced frame
(0.81 at its lower quartile) and 0.46 in the median unvoiced one (0.60 at its 95th percentile; white
noise alike: many candidates find some ripple), so the soft voicing `voicing` = (0.5, 0.7) rises from
0 to 1 between them; averaged over 3 frames, voiced/unvoiced F1 is 0.935 at 0.55 on the test and valid
splits (0.92 unaveraged), and white noise gets a mean voicing of 0.06.

`f0_median` (odd, default 1: off) replaces each frame's log F0 by the median over that many frames
(edges replicated). The best candidate is chosen frame by frame, so a low voice whose harmonics the mel
barely resolves gets isolated jumps: on the demo corpus's test and valid recordings, kal16 (median F0
88 Hz) had 18% of the frames that it and pyworld's DIO both call voiced more than 300 cents from DIO's
F0, and 24% of its frame-to-frame steps over 200 cents; over 3 frames, 12% and 10% (all ten voices:
3.6% -> 2.7% gross errors). A median of 3 reaches as far as the voicing average (one frame), so it needs
no more mel context than before; wider ones need more (`context_frames`).

`low_f0_voicing` (default 0: off) adds up to that much to the voicing score of low frames: the full amount
where the frame's F0 is at or below 75 Hz, nothing from 120 Hz up, linear in log F0 between
(`LOW_F0_RAMP_HZ`). The template match scores a deep voice's voiced frames low because the mel barely
resolves its harmonics: at 74 Hz they are 4.7 bins of a 1,024-point analysis apart, near the Hann window's
4-bin main lobe, and two mel bands apart. Against pyworld's DIO on czech_machac (74 Hz, a voice of the wider
held-out set) the voiced frames' median score is 0.58 and the unvoiced frames' 0.47, so at a threshold of 0.6
the voicing's F1 is 0.58 (recall 0.42); with 0.15 it is 0.86, hy_fi_mv_diphone (82 Hz) 0.68 -> 0.78 and kal16
0.76 -> 0.79, every voice above 120 Hz unchanged and the corpus's other low voices within 0.02.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from distill.audio.mel import mel_filterbank
from distill.errors import ConfigError
from distill.nn.analysis import Float64Analysis, exact

SOURCE_CHANNELS = 4  # MelPitch.source: pulse, sin, cos, voicing
LOW_F0_RAMP_HZ = (75.0, 120.0)  # `low_f0_voicing`: its whole bonus at or below the first F0, none from the second
VOICING_BONUS_CEILING = 0.5  # `low_f0_voicing` stays below it: the start of the default voicing ramp


def _band_detail(x: torch.Tensor, width: int = 5) -> torch.Tensor:
    """x (..., bands) minus its moving average over `width` bands (edges replicated): the harmonic
    ripple of a spectrum without its envelope. A product with a (bands, bands) averaging matrix, not a
    convolution: the same sums, in float64 in an ONNX graph too (onnxruntime has no float64 Conv)."""
    bands = x.shape[-1]
    reach = torch.arange(width, device=x.device) - width // 2
    neighbours = (torch.arange(bands, device=x.device)[:, None] + reach[None, :]).clamp(0, bands - 1)
    average = nn.functional.one_hot(neighbours, bands).sum(1).to(x.dtype) / width  # (bands, bands)
    return x - x @ average.T


class MelPitch(Float64Analysis):
    """F0 and voicing per frame from log-mel frames, and the per-sample source (module doc).

    forward(logmel (B, n_mels, F)) -> f0 (B, F) in Hz (the best candidate, also in unvoiced frames, so
    the phase runs on), score (B, F) in [-1, 1 + low_f0_voicing] (voicing). No parameters; the templates are
    rebuilt from the arguments, so checkpoints do not hold them.
    """

    templates: torch.Tensor  # buffers, typed (nn.Module's attribute lookup says Tensor | Module)
    log2_cands: torch.Tensor

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 256,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        f0_min: float = 60.0,
        f0_max: float = 500.0,
        band_hz: float = 1500.0,
        steps_per_octave: int = 48,
        voicing: tuple | list = (0.5, 0.7),
        f0_median: int = 1,
        low_f0_voicing: float = 0.0,
    ):
        super().__init__()
        if not 0 < f0_min < f0_max < sample_rate / 2:
            raise ConfigError(f"pitch_source needs 0 < f0_min < f0_max < sample_rate / 2, got {f0_min}, {f0_max}")
        if len(voicing) != 2 or not voicing[0] < voicing[1]:
            raise ConfigError(f"pitch_source voicing must be [low, high] with low < high, got {voicing}")
        if not odd_width(f0_median):
            raise ConfigError(f"pitch_source f0_median must be an odd number of frames >= 1 (1: off), "
                              f"got {f0_median!r}")
        # a silent frame scores 0 and its best candidate is the lowest F0: a bonus of voicing[0] would voice it
        ceiling = min(VOICING_BONUS_CEILING, voicing[0])
        if not voicing_bonus(low_f0_voicing, ceiling):
            raise ConfigError(f"pitch_source low_f0_voicing must be a number in [0, {ceiling}) (0: off; below the "
                              f"voicing ramp's start, or silence would voice), got {low_f0_voicing!r}")
        self.sample_rate, self.hop = sample_rate, hop_length
        self.voicing = (float(voicing[0]), float(voicing[1]))
        self.f0_median = f0_median
        self.low_f0_voicing = float(low_f0_voicing)
        fbanks = mel_filterbank(n_fft, f_min, f_max, n_mels, sample_rate).double()  # (n_freqs, n_mels)
        freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
        centres = freqs[fbanks.argmax(0)]
        self.bands = int((centres < band_hz).sum())
        if self.bands < 8:
            raise ConfigError(f"pitch_source band_hz={band_hz} leaves {self.bands} mel bands; it needs >= 8 "
                              "(raise band_hz or use more mel bands)")
        octaves = math.log2(f0_max / f0_min)
        n_cands = int(octaves * steps_per_octave) + 1
        cands = f0_min * 2 ** (torch.arange(n_cands, dtype=torch.float64) / steps_per_octave)
        # the analysis window's magnitude response, 8x oversampled: each harmonic's shape in the spectrum
        oversample = 8
        window = torch.hann_window(win_length, dtype=torch.float64)
        response = torch.fft.rfft(window, n=n_fft * oversample).abs()
        bin_hz = sample_rate / n_fft
        top = min(sample_rate / 2, 2 * band_hz)  # harmonics above this do not reach the band's filters
        templates = []
        for f0 in cands.tolist():
            harmonics = f0 * torch.arange(1, int(top // f0) + 1, dtype=torch.float64)
            dist = (freqs[:, None] - harmonics[None, :]).abs() / bin_hz  # (n_freqs, H) in bins
            idx = (dist * oversample).round().long().clamp(max=response.numel() - 1)
            templates.append((response[idx] * (dist < 4)).sum(-1))
        mel = torch.stack(templates) @ fbanks  # (C, n_mels)
        logmel = torch.log(mel + 1e-3 * mel.max(-1, keepdim=True).values)[:, : self.bands]
        detail = _band_detail(logmel)
        self.register_buffer("templates", detail / detail.norm(dim=-1, keepdim=True), persistent=False)
        self.register_buffer("log2_cands", torch.log2(cands), persistent=False)

    @classmethod
    def build(cls, args: dict, hop_length: int, n_mels: int) -> MelPitch:
        """A student's pitch tracker from its `pitch_source` arguments: an unknown one is a one-line ConfigError."""
        try:
            return cls(hop_length=hop_length, n_mels=n_mels, **args)
        except TypeError as err:
            raise ConfigError(f"pitch_source: {err}") from None

    def context_frames(self) -> int:
        """Mel frames beyond a crop's edge that its samples' F0 and voicing depend on: the interpolation
        reaches the next frame, whose voicing averages one frame further and whose F0 the median takes
        from `f0_median // 2` further. What a model's `mel_context` must cover for a crop's source to be the
        whole utterance's over its samples; a model refuses a median wider than 3 that its context does
        not cover (narrower ones reach no further than the source always did)."""
        return 1 + max(1, self.f0_median // 2)

    @torch.no_grad()
    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=logmel.device.type, enabled=False):
            x = _band_detail(logmel.double().transpose(1, 2)[..., : self.bands])  # (B, F, bands)
            x = x / (x.norm(dim=-1, keepdim=True) + exact(1e-9, x))
            templates, log2_cands = self.templates, self.log2_cands  # float64 (Float64Analysis)
            score = x @ templates.T  # (B, F, C)
            best = score.argmax(-1).clamp(1, score.shape[-1] - 2)
            a, b, c = (score.gather(-1, (best + o)[..., None])[..., 0] for o in (-1, 0, 1))
            denom = a - 2 * b + c
            vertex = 0.5 * (a - c) / denom.clamp(max=exact(-1e-12, denom))
            offset = torch.where(denom < 0, vertex, torch.zeros_like(b)).clamp(-1, 1)
            step = log2_cands[1] - log2_cands[0]
            # voicing: the best similarity averaged over 3 frames (edges replicated); the chance maxima
            # of unvoiced frames are isolated, voiced runs are not (F1 0.92 -> 0.935 on the demo splits)
            edged = torch.cat([b[:, :1], b, b[:, -1:]], dim=-1)
            score = (edged[:, :-2] + edged[:, 1:-1] + edged[:, 2:]) / 3
            log2_f0 = log2_cands[best] + offset * step
            if self.f0_median > 1:
                log2_f0 = running_median(log2_f0, self.f0_median)
            if self.low_f0_voicing > 0:
                low, high = (math.log2(f) for f in LOW_F0_RAMP_HZ)
                ramp = ((exact(high, log2_f0) - log2_f0) / exact(high - low, log2_f0)).clamp(0, 1)
                score = score + exact(self.low_f0_voicing, score) * ramp
            return 2**log2_f0, score

    @torch.no_grad()
    def per_sample(self, mel: torch.Tensor, mel_context: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, F + 2 mel_context) -> F0 in Hz and voicing in [0, 1] of every sample, each
        (B, F * hop) float64: log F0 and voicing interpolated between the two nearest frame centres. The
        context frames condition no sample of their own but are the edge frames' neighbours in the
        voicing average and the interpolation: a mel alone (context = silence) and the same mel padded
        with silence in a batch get the same values."""
        c = mel_context
        f0, score = self(mel)
        with torch.autocast(device_type=mel.device.type, enabled=False):
            lo, hi = self.voicing
            v = ((score - exact(lo, score)) / exact(hi - lo, score)).clamp(0, 1)
            rows = torch.stack([torch.log(f0), v], dim=1)  # (B, 2, F + 2c)
            frames = rows.shape[-1]
            # the samples of frames c .. F + c - 1, each between its two nearest frame centres (frame i
            # is centred at i hop + hop/2 - 1/2); held beyond the first and last centre
            t = torch.arange(c * self.hop, (frames - c) * self.hop, device=mel.device, dtype=torch.float64)
            pos = ((t + 0.5) / self.hop - 0.5).clamp(0, frames - 1)
            low = pos.floor().long().clamp(max=max(frames - 2, 0))
            high = (low + 1).clamp(max=frames - 1)
            w = pos - low
            rows = rows[..., low] * (1 - w) + rows[..., high] * w
            return torch.exp(rows[:, 0]), rows[:, 1]

    @torch.no_grad()
    def source(self, mel: torch.Tensor, mel_context: int = 0) -> torch.Tensor:
        """mel (B, n_mels, F + 2 mel_context) -> the source (B, 4, F * hop) float32 (module doc), from
        `per_sample`'s F0 and voicing."""
        f0_t, v_t = self.per_sample(mel, mel_context)
        with torch.autocast(device_type=mel.device.type, enabled=False):
            turn = exact(2 * math.pi, f0_t)
            phase = torch.remainder(turn * torch.cumsum(f0_t / self.sample_rate, dim=-1), turn)
            pulse = band_limited_pulse(phase, torch.floor(self.sample_rate / 2 / f0_t))
            out = torch.stack([v_t * pulse, v_t * torch.sin(phase), v_t * torch.cos(phase), v_t], dim=1)
            return out.float()


def running_median(x: torch.Tensor, width: int) -> torch.Tensor:
    """The median of x (B, F) over `width` (odd) frames centred on each, the edges replicated. Shifted
    copies sorted along a new axis (an ONNX TopK), not `unfold` and `median`."""
    half = width // 2
    edged = torch.cat([x[:, :1].expand(-1, half), x, x[:, -1:].expand(-1, half)], dim=-1)
    frames = x.shape[-1]
    windows = torch.stack([edged[:, i : i + frames] for i in range(width)], dim=-1)
    return windows.sort(dim=-1).values[..., half]


def band_limited_pulse(phase: torch.Tensor, harmonics: torch.Tensor) -> torch.Tensor:
    """sum_(k = 1..K) cos(k phase) / sqrt(K / 2), K = `harmonics` (per sample, >= 1): a pulse train with
    no energy above its K-th harmonic and unit RMS. Closed form (Dirichlet kernel):
    sum_k cos(k p) = (sin((K + 1/2) p) / sin(p / 2) - 1) / 2, whose limit at p = 0 is K."""
    k = harmonics.clamp(min=1)
    half = torch.sin(phase / 2)
    near = half.abs() < exact(1e-6, half)
    total = torch.where(
        near, k, (torch.sin((k + 0.5) * phase) / torch.where(near, torch.ones_like(half), half) - 1) / 2
    )
    return total / torch.sqrt(k / 2)


def odd_width(width) -> bool:
    """Whether `width` is a median's width: an odd int >= 1 (a bool or a float is not)."""
    return isinstance(width, int) and not isinstance(width, bool) and width >= 1 and width % 2 == 1


def voicing_bonus(value, ceiling: float = VOICING_BONUS_CEILING) -> bool:
    """Whether `value` is a `low_f0_voicing`: a real number in [0, ceiling), by default 0.5, where the default
    voicing ramp starts (a bool is not one)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) < ceiling


def check_low_f0_voicing(value, pitch_source: bool) -> None:
    """A model config's `pitch_low_f0_voicing`: a number in [0, 0.5) (0: off), and > 0 only with a pitch source;
    otherwise a one-line ConfigError naming the config key."""
    if not voicing_bonus(value):
        raise ConfigError(f"model.pitch_low_f0_voicing must be a number in [0, 0.5) (0: off; from 0.5 on, silence "
                          f"would voice), got {value!r}")
    if value > 0 and not pitch_source:
        raise ConfigError("model.pitch_low_f0_voicing raises the mel's voicing: set model.pitch_source: true")


def check_f0_median(width, pitch_source: bool) -> None:
    """A model config's `pitch_f0_median`: an odd number of frames >= 1 (1: off), and > 1 only with a pitch
    source; otherwise a one-line ConfigError naming the config key."""
    if not odd_width(width):
        raise ConfigError(f"model.pitch_f0_median must be an odd number of frames >= 1 (1: off), got {width!r}")
    if width > 1 and not pitch_source:
        raise ConfigError("model.pitch_f0_median smooths the mel's pitch: set model.pitch_source: true")


def pitch_arguments(features) -> dict:
    """Every `MelPitch` argument but hop_length and n_mels for the feature settings `features` (a
    `FeatureConfig`), defaults written out: what a student records, so that a later change of a default
    does not change a trained student's source."""
    import inspect

    args = {name: p.default for name, p in inspect.signature(MelPitch.__init__).parameters.items()
            if name not in ("self", "hop_length", "n_mels")}
    args.update(features.analysis(), voicing=list(args["voicing"]))
    return args
