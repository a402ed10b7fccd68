import pytest
import torch

from distill.audio.mel import LogMel
from distill.audio.postfilter import MelPostFilter
from distill.config import FeatureConfig
from distill.errors import ConfigError

FEATURES = FeatureConfig()


def voiced(seconds: float = 0.5, f0: float = 140.0, seed: int = 0) -> torch.Tensor:
    """A harmonic signal with a little noise: something with an envelope to move."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * FEATURES.sample_rate)) / FEATURES.sample_rate
    x = sum(torch.sin(2 * torch.pi * k * f0 * t + k) / k for k in range(1, 40))
    return (0.1 * x + 0.01 * torch.randn(t.shape, generator=g)).float()


def tilted(x: torch.Tensor) -> torch.Tensor:
    """x through a first-order high-pass: the same excitation with another envelope."""
    return torch.cat([x[:1], x[1:] - 0.9 * x[:-1]])


def mel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    logmel = LogMel(FEATURES)
    return float((logmel(a) - logmel(b)).abs().mean())


def test_the_audios_own_mel_leaves_it_unchanged():
    x = voiced()
    out = MelPostFilter(FEATURES)(x, LogMel(FEATURES)(x))
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


def test_it_moves_the_audios_mel_to_the_target_and_more_with_a_second_iteration():
    target = voiced(seed=1)
    wrong = tilted(target)  # the envelope of another filter
    before = mel_l1(wrong, target)
    once = mel_l1(MelPostFilter(FEATURES, iterations=1)(wrong, LogMel(FEATURES)(target)), target)
    twice = mel_l1(MelPostFilter(FEATURES, iterations=2)(wrong, LogMel(FEATURES)(target)), target)
    assert twice < once < 0.35 * before


def test_batches_tails_and_zero_iterations():
    x = torch.stack([voiced(seed=2), voiced(f0=95.0, seed=3)])
    tail = torch.full((2, 100), 0.25)
    audio = torch.cat([tilted(x), tail], dim=-1)
    mel = LogMel(FEATURES)(x)
    out = MelPostFilter(FEATURES)(audio, mel)
    assert out.shape == audio.shape and torch.equal(out[:, -100:], tail)  # past the mel's frames: as it was
    one = MelPostFilter(FEATURES)(audio[1], mel[1])
    assert torch.allclose(out[1], one, atol=1e-6)  # a batch row is filtered as alone
    assert torch.equal(MelPostFilter(FEATURES, iterations=0)(audio, mel), audio)


def test_a_one_frame_change_lands_on_that_frame():
    """Frame i of the log-mel is centred on sample i hop + hop / 2: a gain asked of one frame must change the
    audio around there (a filter off by half a hop or a whole one puts the change's centre elsewhere)."""
    x, hop = voiced(), FEATURES.hop_length
    mel = LogMel(FEATURES)(x)
    k = mel.shape[-1] // 2
    mel[:, k] += 1.0
    change = (MelPostFilter(FEATURES, iterations=1)(x, mel) - x) ** 2
    centre = float((change * torch.arange(x.numel())).sum() / change.sum())
    assert abs(centre - (k * hop + hop / 2)) < hop / 8


def test_every_sample_is_filtered_and_one_or_two_frames_work():
    hop = FEATURES.hop_length
    noise = 0.1 * torch.randn(20 * hop, generator=torch.Generator().manual_seed(4))
    quiet = torch.full((FEATURES.n_mels, 20), -11.0)  # a mel near silence: every frame, the first one too
    out = MelPostFilter(FEATURES)(noise, quiet)
    assert float(out[: hop // 2].pow(2).mean()) < 0.01 * float(noise[: hop // 2].pow(2).mean())
    for frames in (1, 2):
        short = noise[: frames * hop]
        assert MelPostFilter(FEATURES)(short, LogMel(FEATURES)(short)).shape == short.shape


def test_gains_are_bounded_and_silence_stays_silent():
    x = voiced()
    loud = LogMel(FEATURES)(x) + 20.0  # e^20 louder: the gain stops at e^3 per iteration
    out = MelPostFilter(FEATURES, iterations=1)(0.01 * x, loud)
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) <= 0.01 * float(x.abs().max()) * 2 * torch.e**3
    silence = torch.zeros_like(x)
    assert torch.equal(MelPostFilter(FEATURES)(silence, loud), silence)


def test_bad_settings_and_shapes_are_one_line_errors():
    with pytest.raises(ConfigError, match="iterations must be >= 0"):
        MelPostFilter(FEATURES, iterations=-1)
    with pytest.raises(ConfigError, match="max_log_gain must be > 0"):
        MelPostFilter(FEATURES, max_log_gain=0)
    with pytest.raises(ConfigError, match="same leading shape"):
        MelPostFilter(FEATURES)(torch.zeros(2, 4096), torch.zeros(3, FEATURES.n_mels, 16))
