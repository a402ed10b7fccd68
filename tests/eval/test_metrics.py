"""PESQ, spectral distances and the Griffin-Lim baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.audio.io import load_audio
from distill.audio.mel import LogMel
from distill.config import FeatureConfig
from distill.data.corpus import resolve_corpus
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


# ------------------------------------------------------------------------------------------------
# The library metrics (the eval extra): best values for identical signals, monotone damage, and the
# same numbers as the library called directly.

def _needs(*modules: str) -> None:
    for module in modules:
        pytest.importorskip(module)


def _noisy(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    return x + level * np.random.default_rng(seed).standard_normal(x.size)


@pytest.fixture(scope="module")
def speech64(speech) -> np.ndarray:
    return speech.numpy().astype(np.float64)


def test_stoi_is_one_for_the_reference_falls_with_noise_and_equals_pystoi(speech64):
    _needs("pystoi")
    from pystoi import stoi

    from eval.metrics import stoi_scores

    assert stoi_scores(speech64, speech64) == {"stoi": pytest.approx(1.0), "estoi": pytest.approx(1.0)}
    scores = [stoi_scores(speech64, _noisy(speech64, level)) for level in (0.01, 0.05, 0.2)]
    for key in ("stoi", "estoi"):
        assert 1 > scores[0][key] > scores[1][key] > scores[2][key]
    assert scores[1]["estoi"] == stoi(speech64, _noisy(speech64, 0.05), 16000, extended=True)
    short = speech64[:4000]  # 0.25 s: pystoi warns and returns 1e-5; the report says it is undefined
    assert math.isnan(stoi_scores(short, short)["stoi"])


def test_mcd_is_zero_for_identical_signals_grows_with_noise_and_equals_the_package(speech64, tmp_path):
    _needs("mel_cepstral_distance")
    import soundfile as sf
    from mel_cepstral_distance import compare_audio_files

    from eval.metrics import mcd

    assert mcd(speech64, speech64)["mcd"] == 0.0
    values = [mcd(speech64, _noisy(speech64, level))["mcd"] for level in (0.003, 0.03, 0.1)]
    assert 0 < values[0] < values[1] < values[2]
    noisy = _noisy(speech64, 0.03)
    for name, x in (("a", speech64), ("b", noisy)):
        sf.write(tmp_path / f"{name}.wav", x, 16000, subtype="PCM_24")
    direct, _ = compare_audio_files(tmp_path / "a.wav", tmp_path / "b.wav", aligning="pad", remove_silence="no")
    assert values[1] == pytest.approx(direct, rel=1e-9)


def test_f0_metrics_are_perfect_for_identical_signals_and_grow_with_a_pitch_shift(speech64):
    _needs("pyworld")
    import pyworld

    from eval.metrics import F0_CEIL, F0_FLOOR, f0_scores

    assert f0_scores(speech64, speech64) == {"f0_rmse_cents": 0.0, "vuv_f1": 1.0, "vuv_precision": 1.0,
                                             "vuv_recall": 1.0, "periodicity_error": 0.0}
    # the utterance resynthesised by WORLD with its F0 raised by 0, 25, 100, 300 cents: same timing and envelope
    f0, envelope, aperiodicity = pyworld.wav2world(speech64, 16000)
    shifted = [pyworld.synthesize(f0 * 2 ** (c / 1200), envelope, aperiodicity, 16000)[: speech64.size]
               for c in (0, 25, 100, 300)]
    scores = [f0_scores(shifted[0], y) for y in shifted[1:]]
    errors = [s["f0_rmse_cents"] for s in scores]
    assert errors[0] < errors[1] < errors[2] and 250 < errors[2] < 350
    assert scores[0]["periodicity_error"] < scores[2]["periodicity_error"]
    # the F0 error is pyworld's: the same from DIO + StoneMask called directly
    tracks = []
    for x in (shifted[0], shifted[2]):
        raw, times = pyworld.dio(x, 16000, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=10.0)
        tracks.append(pyworld.stonemask(x, raw, times, 16000))
    both = (tracks[0] > 0) & (tracks[1] > 0)
    direct = np.sqrt(np.mean((1200 * np.log2(tracks[1][both] / tracks[0][both])) ** 2))
    assert errors[1] == pytest.approx(direct, rel=1e-9)


def test_voicing_f1_counts_unvoiced_frames_against_the_reference():
    _needs("pyworld")
    from eval.metrics import f0_scores
    from tests.conftest import harmonic

    voiced = harmonic(1.0, 150, seed=0).astype(np.float64)
    half = voiced.copy()
    half[8000:] = 0.003 * np.random.default_rng(1).standard_normal(8000)  # the second half unvoiced
    scores = f0_scores(voiced, half)
    assert 0.5 < scores["vuv_f1"] < 0.8  # about half the reference's voiced frames are missed
    assert scores["f0_rmse_cents"] < 20  # where both are voiced they agree
    # missing voiced frames lowers the recall and leaves the precision whole
    assert scores["vuv_precision"] == 1.0 and 0.35 < scores["vuv_recall"] < 0.65
    f1 = 2 * scores["vuv_precision"] * scores["vuv_recall"] / (scores["vuv_precision"] + scores["vuv_recall"])
    assert scores["vuv_f1"] == pytest.approx(f1)
    # voicing frames the reference leaves unvoiced is the other way round: the same F1 by precision
    over = f0_scores(half, voiced)
    assert over["vuv_recall"] == 1.0 and over["vuv_precision"] == pytest.approx(scores["vuv_recall"])
    assert over["vuv_f1"] == pytest.approx(scores["vuv_f1"])
    # nothing voiced in the audio: recall 0 and no precision to speak of
    silent = f0_scores(voiced, 0.003 * np.random.default_rng(2).standard_normal(voiced.size))
    assert silent["vuv_recall"] == 0.0 and math.isnan(silent["vuv_precision"])


@pytest.fixture
def tiny_crepe(monkeypatch):
    """CREPE's tiny model instead of the full one (a third of the time; its tracks are cached under their own
    name)."""
    _needs("torchcrepe")
    import eval.metrics as metrics

    monkeypatch.setattr(metrics, "CREPE_MODEL", "tiny")


def _glide(f0: float, seconds: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Five harmonics of an F0 gliding 10% about `f0` at a steady level over a noise floor 38 dB down (the
    silence rule averages A-weighted decibels over every FFT bin: five clean harmonics alone read as silence),
    and that F0 at every 10 ms."""
    def track(t):
        return f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))

    phase = 2 * np.pi * np.cumsum(track(np.arange(int(seconds * 16000)) / 16000)) / 16000
    noise = 0.003 * np.random.default_rng(0).standard_normal(phase.size)
    harmonics = 0.25 * sum(np.sin(k * phase) / k for k in range(1, 6))
    return harmonics + noise, track(np.arange(int(seconds * 100) + 1) / 100)


def test_crepe_metrics_read_pitch_and_voicing_with_its_own_keys(tiny_crepe):
    from eval.metrics import crepe_scores, crepe_track

    voiced, truth = _glide(150)
    f0, periodicity = crepe_track(voiced)
    assert f0.size == periodicity.size == 101  # frames centred on 0, 10, ..., 1000 ms, as DIO's
    inner = slice(5, -5)
    assert (f0[inner] > 0).all()
    assert np.sqrt(np.mean((1200 * np.log2(f0[inner] / truth[inner])) ** 2)) < 30
    assert crepe_scores(voiced, voiced) == {"crepe_f0_rmse_cents": 0.0, "crepe_vuv_f1": 1.0,
                                            "crepe_vuv_precision": 1.0, "crepe_vuv_recall": 1.0,
                                            "crepe_periodicity_error": 0.0}
    # the second half silent: its frames are made aperiodic and unvoiced, so the recall halves
    half = voiced.copy()
    half[8000:] = 0.0
    f0_half, per_half = crepe_track(half)
    assert (f0_half[55:] == 0).all() and (per_half[55:] == 0).all()
    scores = crepe_scores(voiced, half)
    assert scores["crepe_vuv_precision"] == 1.0 and 0.4 < scores["crepe_vuv_recall"] < 0.6
    # a third of an octave up: the F0 error reads about 400 cents
    up, _ = _glide(150 * 2 ** (400 / 1200))
    assert 350 < crepe_scores(voiced, up)["crepe_f0_rmse_cents"] < 450


def test_crepe_metrics_use_the_full_model_by_default():
    _needs("torchcrepe")
    import eval.metrics as metrics

    assert metrics.CREPE_MODEL == "full"
    voiced, truth = _glide(200, seconds=0.5)
    f0, _ = metrics.crepe_track(voiced)
    assert f0.size == 51 and (f0[5:-5] > 0).all()
    assert np.sqrt(np.mean((1200 * np.log2(f0[5:-5] / truth[5:-5])) ** 2)) < 30


def test_tracks_are_read_once_per_tracker_and_audio(monkeypatch):
    import eval.metrics as metrics

    calls = []

    def tracker(x):
        calls.append(x.copy())
        return x[:2], x[2:4]

    monkeypatch.setattr(metrics, "TRACK_CACHE_SIZE", 3)
    monkeypatch.setattr(metrics, "_tracks", metrics.OrderedDict())
    a, b = np.arange(8, dtype=np.float32), np.arange(8.0) + 1
    first = metrics.cached_track("t", tracker, a)
    assert first[0].dtype == np.float64 and calls[0].flags["C_CONTIGUOUS"]  # read as contiguous float64
    assert not first[0].flags.writeable and not first[1].flags.writeable  # no caller can change a kept track
    assert metrics.cached_track("t", tracker, a.astype(np.float64)) is first and len(calls) == 1  # same samples
    metrics.cached_track("u", tracker, a)  # another tracker's name: read again
    metrics.cached_track("t", tracker, b)
    assert len(calls) == 3
    metrics.cached_track("t", tracker, a[::-1])  # the fourth track pushes out the least recently used, ("t", a)
    assert len(calls) == 4
    metrics.cached_track("u", tracker, a)
    assert len(calls) == 4
    metrics.cached_track("t", tracker, a)
    assert len(calls) == 5


def test_the_track_comparison_is_the_same_for_both_trackers():
    from eval.metrics import compare_tracks

    f0_ref = np.array([0.0, 100.0, 100.0, 200.0, 0.0, 0.0, 150.0])  # one frame longer: cut
    f0_deg = np.array([0.0, 0.0, 200.0, 200.0, 150.0, 90.0])
    per_ref, per_deg = np.zeros(7), np.full(6, 0.5)
    # both voiced: frames 2 (an octave off) and 3; voiced by the audio alone: 4, 5; by the reference alone: 1
    values = compare_tracks((f0_ref, per_ref), (f0_deg, per_deg), prefix="x_")
    assert values == {"x_f0_rmse_cents": pytest.approx(np.sqrt(1200**2 / 2)), "x_vuv_f1": pytest.approx(4 / 7),
                      "x_vuv_precision": pytest.approx(2 / 4), "x_vuv_recall": pytest.approx(2 / 3),
                      "x_periodicity_error": pytest.approx(0.5)}
    assert compare_tracks((f0_deg, per_deg), (f0_ref, per_ref))["vuv_precision"] == pytest.approx(2 / 3)


def test_dnsmos_equals_speechmos_called_directly_and_falls_with_noise(speech64):
    _needs("speechmos", "librosa", "onnxruntime")
    from speechmos import dnsmos as direct

    from eval.metrics import dnsmos

    ours = dnsmos(speech64, speech64)
    theirs = direct.run(speech64, 16000)
    assert ours["dnsmos_ovrl"] == theirs["ovrl_mos"] and ours["dnsmos_p808"] == pytest.approx(theirs["p808_mos"])
    assert ours["dnsmos_sig"] == theirs["sig_mos"] and ours["dnsmos_bak"] == theirs["bak_mos"]
    noisy = [dnsmos(speech64, _noisy(speech64, level)) for level in (0.01, 0.05, 0.2)]
    assert ours["dnsmos_ovrl"] > noisy[0]["dnsmos_ovrl"] > noisy[1]["dnsmos_ovrl"] > noisy[2]["dnsmos_ovrl"]
    assert ours["dnsmos_p808"] > noisy[2]["dnsmos_p808"] + 0.3  # P.808 is not monotone at the smallest levels


def test_metric_selection_names_unknown_and_missing_packages(monkeypatch):
    import importlib.util

    from distill.errors import ConfigError
    from eval.metrics import LIBRARY_METRICS, resolve_metrics

    assert resolve_metrics("none") == ([], {})
    with pytest.raises(ConfigError, match="unknown metric.*pesq2.*dnsmos, stoi, f0, mcd, crepe"):
        resolve_metrics("stoi,pesq2")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "pystoi" else real(name))
    run, skipped = resolve_metrics("stoi,mcd")
    assert [m.name for m in run] == (["mcd"] if not LIBRARY_METRICS["mcd"].missing() else [])
    assert skipped["stoi"] == "stoi skipped: pystoi not installed (pip install 'wavedistill[eval]')"
    # CREPE runs only when named (about 6 s per second of audio on a CPU thread) and names its own extra
    assert "crepe" not in [m.name for m in resolve_metrics("all")[0]] + list(resolve_metrics("all")[1])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torchcrepe" else real(name))
    assert resolve_metrics("crepe")[1]["crepe"] == ("crepe skipped: torchcrepe not installed "
                                                    "(pip install 'wavedistill[crepe]')")
