"""PESQ, spectral distances and the Griffin-Lim baseline."""

from __future__ import annotations

import math

import pytest
import torch

from distill.audio import LogMel, load_audio
from distill.config import FeatureConfig
from distill.corpus import resolve_corpus
from eval.baselines import griffin_lim
from eval.metrics import mel_l1, pesq_scores, stft_distance

FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    x = load_audio(resolve_corpus("demo", "test")[0].path, 16000)
    return x[: x.numel() // 256 * 256]


def test_pesq_of_a_signal_with_itself_is_the_maximum_and_falls_with_noise(speech):
    torch.manual_seed(0)
    noisy = [speech + level * torch.randn_like(speech) for level in (0.003, 0.03, 0.1)]
    scores = [r.score for r in pesq_scores([(speech, speech)] + [(speech, n) for n in noisy], 16000, "wb")]
    assert scores[0] == pytest.approx(4.644, abs=0.01)
    assert scores[0] > scores[1] > scores[2] > scores[3]
    nb = pesq_scores([(speech, speech)], 16000, "nb")[0].score
    assert nb == pytest.approx(4.55, abs=0.05)


def test_pesq_errors_become_nan_with_the_reason():
    silent, short = torch.zeros(16000), torch.randn(1000) * 0.1
    results = pesq_scores([(silent, silent), (short, short)], 16000)
    assert math.isnan(results[0].score) and "NoUtterancesError" in results[0].reason
    assert math.isnan(results[1].score) and "BufferTooShortError" in results[1].reason


def test_pesq_resamples_other_rates(speech):
    import torchaudio

    at_22k = torchaudio.functional.resample(speech, 16000, 22050)
    assert pesq_scores([(at_22k, at_22k)], 22050)[0].score == pytest.approx(4.644, abs=0.01)


def test_distances_of_identical_signals_are_zero_and_grow_with_damage(speech):
    assert stft_distance(speech, speech) == 0.0
    assert stft_distance(speech[:1024], speech[:1024]) == 0.0  # shorter than the largest FFT
    mel = LogMel(FEATURES)(speech)
    assert mel_l1(mel, mel) == 0.0
    torch.manual_seed(0)
    small, large = speech + 0.003 * torch.randn_like(speech), speech + 0.05 * torch.randn_like(speech)
    assert 0 < stft_distance(speech, small) < stft_distance(speech, large)


def test_griffin_lim_baseline_is_aligned_and_plausible(speech):
    mel = LogMel(FEATURES)(speech)
    audio = griffin_lim(mel, FEATURES)
    assert audio.shape == speech.shape
    assert torch.equal(audio, griffin_lim(mel, FEATURES))  # repeatable
    shifted = [stft_distance(speech, torch.roll(audio, s)) for s in (-128, 0, 128)]
    assert shifted[1] < min(shifted[0], shifted[2])  # best lined up without a shift
    assert 1.3 < pesq_scores([(speech, audio)], 16000)[0].score < 2.5
