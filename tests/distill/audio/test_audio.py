"""Audio I/O and the log-mel frame/sample alignment that teacher conditioning relies on."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.audio.io import load_audio, save_wav
from distill.audio.mel import LogMel, num_frames, pad_mel
from distill.config import FeatureConfig
from distill.errors import AudioError, ConfigError

SR = 16000


def tone(freq: float, seconds: float, sr: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def dominant_frequency(x: torch.Tensor, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def test_defaults_are_the_documented_16k_settings():
    f = FeatureConfig()
    assert (f.sample_rate, f.n_fft, f.win_length, f.hop_length, f.n_mels, f.f_min, f.f_max, f.log_floor) == (
        16000, 1024, 1024, 256, 80, 0.0, 8000.0, 1e-5
    )


def test_stereo_is_downmixed_and_other_rates_resampled(tmp_path):
    left, right = tone(440, 1.0, 22050), tone(440, 1.0, 22050) * 0.0
    sf.write(str(tmp_path / "st.flac"), np.stack([left, right], axis=1), 22050, subtype="PCM_24")
    x = load_audio(tmp_path / "st.flac", SR)
    assert x.dtype == torch.float32 and x.ndim == 1
    assert x.numel() == SR  # 1 s at the new rate
    assert dominant_frequency(x, SR) == pytest.approx(440, abs=2)
    assert float(x[2000:-2000].abs().max()) == pytest.approx(0.25, abs=0.01)  # mean of the two channels


def test_wav_round_trip_is_16_bit_and_clips(tmp_path):
    x = torch.linspace(-1.5, 1.5, 1000)
    save_wav(tmp_path / "a.wav", x, SR)
    info = sf.info(str(tmp_path / "a.wav"))
    assert info.subtype == "PCM_16" and info.samplerate == SR
    y = load_audio(tmp_path / "a.wav", SR)
    assert torch.allclose(y, x.clamp(-1, 1), atol=1 / 32768 + 1e-7)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not audio at all " * 20), "not readable as audio"),
        (lambda p: sf.write(str(p), np.array([0.1, np.nan, 0.2], dtype=np.float32), SR, subtype="FLOAT"), "NaN or Inf"),
        (lambda p: None, "file not found"),
    ],
)
def test_bad_files_raise_one_line_audio_errors(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path, SR)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("length", [0, 255, 256, 257, 16000, 16383, 16384])
def test_frame_count_is_length_floordiv_hop(length):
    mel = LogMel(FeatureConfig())(torch.randn(length))
    assert mel.shape == (80, length // 256) == (80, num_frames(length, 256))


def test_batched_input_equals_item_by_item():
    logmel = LogMel(FeatureConfig())
    x = torch.randn(2, 3, 4096)
    mel = logmel(x)
    assert mel.shape == (2, 3, 80, 16)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(mel[i, j], logmel(x[i, j]), atol=1e-5)


def test_frames_match_an_independent_numpy_stft():
    f = FeatureConfig()
    logmel = LogMel(f)
    x = torch.randn(5000) * 0.1
    ours = logmel(x).numpy()
    hop, pad = f.hop_length, (f.n_fft - f.hop_length) // 2
    padded = np.pad(x.numpy()[: (5000 // hop) * hop], (pad, pad))
    window = np.hanning(f.n_fft + 1)[:-1]  # periodic Hann
    mags = np.stack(
        [np.abs(np.fft.rfft(padded[i * hop : i * hop + f.n_fft] * window)) for i in range(5000 // hop)], axis=1
    )
    theirs = np.log(np.maximum(logmel.fbanks.numpy().T @ mags, f.log_floor))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("block", [3, 10, 25])
def test_frame_i_describes_hop_block_i(block):
    """A click in hop block j gives the loudest frame j: mel[:, i] conditions audio[i*hop:(i+1)*hop]."""
    x = torch.zeros(256 * 32)
    x[block * 256 + 128] = 1.0  # centre of block j
    energy = LogMel(FeatureConfig())(x).exp().sum(0)
    assert int(energy.argmax()) == block
    # and the click is invisible to frames whose window does not reach it
    assert float(energy[block + 3]) == pytest.approx(80 * 1e-5, rel=1e-3)


def test_mel_of_a_hop_aligned_crop_equals_the_slice_of_the_whole():
    f = FeatureConfig()
    logmel = LogMel(f)
    x = torch.randn(256 * 60) * 0.1
    whole = logmel(x)
    a, b, pad = 12, 40, logmel.pad
    crop = x[a * 256 - pad : b * 256 + pad]
    # framing the unpadded crop directly (what the padding rule promises)
    spec = logmel.spectrogram(crop[None])
    direct = torch.log(torch.clamp((spec.transpose(1, 2) @ logmel.fbanks).transpose(1, 2), min=f.log_floor))[0]
    assert torch.allclose(direct, whole[:, a:b], atol=1e-5)


def test_silence_and_padding_value():
    logmel = LogMel(FeatureConfig())
    assert torch.allclose(logmel(torch.zeros(4096)), torch.full((80, 16), logmel.silence_value))
    padded = pad_mel(torch.zeros(80, 5), 2, logmel.silence_value)
    assert padded.shape == (80, 9) and float(padded[0, 0]) == pytest.approx(np.log(1e-5))


def test_bad_feature_settings_are_config_errors():
    with pytest.raises(ConfigError, match="must be even"):
        FeatureConfig(n_fft=1024, hop_length=255)
    with pytest.raises(ConfigError, match="Nyquist"):
        FeatureConfig(sample_rate=16000, f_max=11025)


def test_without_soundfile_16_bit_wav_is_read_and_written_and_other_formats_are_one_line(tmp_path, monkeypatch):
    import distill.audio.io
    import distill.data.corpus
    from distill.data.corpus import audio_extensions

    x = (0.5 * np.sin(np.linspace(0, 200, 4000))).astype(np.float32)
    save_wav(tmp_path / "with.wav", x, 16000)  # soundfile
    sf.write(str(tmp_path / "a.flac"), x, 16000)
    sf.write(str(tmp_path / "x24.wav"), x, 16000, subtype="PCM_24")
    monkeypatch.setattr(distill.audio.io, "soundfile_module", lambda: None)
    monkeypatch.setattr(distill.data.corpus, "soundfile_module", lambda: None)
    save_wav(tmp_path / "without.wav", x, 16000)  # the standard library's wave
    assert (tmp_path / "without.wav").read_bytes()[44:] == (tmp_path / "with.wav").read_bytes()[44:]  # same PCM
    y = load_audio(tmp_path / "without.wav", 16000)
    assert torch.equal(y, torch.from_numpy(sf.read(str(tmp_path / "with.wav"), dtype="float32")[0]))
    for name, message in [("a.flac", "reading .flac needs the soundfile package"),
                          ("x24.wav", "24-bit WAV: needs the soundfile package")]:
        with pytest.raises(AudioError, match=message) as err:
            load_audio(tmp_path / name, 16000)
        assert "\n" not in str(err.value)
    assert audio_extensions() == {".wav"}
