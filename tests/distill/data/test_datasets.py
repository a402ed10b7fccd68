"""Corpora, bad input, aligned training crops, the sampler and the mel cache."""

from __future__ import annotations

import logging
import os
import wave

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.audio.io import change_speed, load_audio
from distill.audio.mel import LogMel
from distill.config import DataConfig, DataStageConfig, FeatureConfig
from distill.data.corpus import demo_corpus_dir, hash_split, resolve_corpus
from distill.data.datasets import MelCache, SegmentDataset, StreamSampler, UtteranceDataset, UtteranceStore, load_split
from distill.data.prepare import prepare
from distill.errors import ConfigError, CorpusError
from tests.conftest import SR, harmonic, write_corpus

FEATURES = FeatureConfig()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------- the bundled demo corpus


def test_the_demo_voice_slt_keeps_its_utterances_and_split():
    """slt's part of the demo corpus is as it was when slt was its only voice, so its figures compare."""
    splits = {s: [u for u in resolve_corpus("demo", s) if u.speaker == "slt"] for s in ("train", "valid", "test")}
    ids = {s: {u.id for u in utts} for s, utts in splits.items()}
    assert set.union(*ids.values()) == {f"demo_{i:04d}" for i in range(1, 151)}
    assert ids["valid"] == {f"demo_{i:04d}" for i in range(8, 151, 15)}
    assert ids["test"] == {f"demo_{i:04d}" for i in range(15, 151, 15)}
    assert not (ids["train"] & ids["valid"]) and not (ids["train"] & ids["test"]) and not (ids["valid"] & ids["test"])
    files = sorted((demo_corpus_dir() / "wavs").glob("demo_*.flac"))
    assert len(files) == 150
    infos = [sf.info(str(p)) for p in files]
    assert {(i.samplerate, i.channels, i.format) for i in infos} == {(16000, 1, "FLAC")}
    minutes = sum(i.duration for i in infos) / 60
    assert 6.0 <= minutes <= 8.0
    assert all(u.text for u in splits["test"])


# ----------------------------------------------------------------------------- corpora and bad input


def test_audio_folder_is_recursive_and_hash_split_is_stable(tmp_path):
    write_corpus(tmp_path / "a", count=3)
    write_corpus(tmp_path / "a" / "deeper", count=2)
    utts = resolve_corpus(str(tmp_path / "a"), "all")
    assert sorted(u.id for u in utts) == ["deeper/utt00", "deeper/utt01", "utt00", "utt01", "utt02"]
    assert hash_split("LJ001-0001", 0.05, 0.05) == hash_split("LJ001-0001", 0.05, 0.05)
    shares = [hash_split(f"id{i}", 0.1, 0.2) for i in range(5000)]
    assert shares.count("test") / 5000 == pytest.approx(0.2, abs=0.02)
    assert shares.count("valid") / 5000 == pytest.approx(0.1, abs=0.02)


def test_speaker_labels_come_from_the_fourth_column_or_the_first_folder_without_data_speakers(tmp_path):
    write_corpus(tmp_path / "lj" / "wavs", count=2)
    (tmp_path / "lj" / "metadata.csv").write_text("utt00|Hi.|Hi.|anna\nutt01|Yes.\n")
    assert [u.speaker for u in resolve_corpus(str(tmp_path / "lj"), "all")] == ["anna", ""]
    assert [u.id for u in resolve_corpus(str(tmp_path / "lj"), "all", speakers="column")] == ["utt00"]
    write_corpus(tmp_path / "f" / "bob" / "deeper", count=1)
    write_corpus(tmp_path / "f", count=1)
    utts = resolve_corpus(str(tmp_path / "f"), "all")
    assert {u.id: u.speaker for u in utts} == {"bob/deeper/utt00": "bob", "utt00": ""}
    assert [u.id for u in resolve_corpus(str(tmp_path / "f"), "all", speakers="folder")] == ["bob/deeper/utt00"]


def test_ljspeech_layout_skips_bad_lines_with_one_warning_each(tmp_path, caplog):
    root = tmp_path / "lj"
    write_corpus(root / "wavs", count=3)
    (root / "metadata.csv").write_text(
        "utt00|Hello there.|Hello there.\n"
        "utt01\n"  # missing text column
        "utt02|Good morning.\n"  # two columns are fine
        "utt09|No such file.\n"
    )
    utts = resolve_corpus(str(root), "all")
    assert [u.id for u in utts] == ["utt00", "utt02"] and utts[1].text == "Good morning."
    messages = warnings_of(caplog)
    assert len(messages) == 2
    assert "line 2" in messages[0] and "expected 'id|text" in messages[0]
    assert "line 4" in messages[1] and "no audio file" in messages[1]


def test_empty_or_missing_corpora_are_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        resolve_corpus(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no audio files found"):
        resolve_corpus(str(tmp_path / "empty"))
    (tmp_path / "lj").mkdir()
    (tmp_path / "lj" / "metadata.csv").write_text("only_ids\nno_text_here\n")
    with pytest.raises(CorpusError, match="no usable line"):
        resolve_corpus(str(tmp_path / "lj"))


def _write_bad_files(folder):
    """One good file and one of each kind of bad input; returns {file name: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / "good.wav"), harmonic(1.0, 120, 0), SR, subtype="PCM_16")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("definitely not a RIFF file\n" * 10)
    full = (folder / "good.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(full[:30])  # cut inside the header
    sf.write(str(folder / "nan.wav"), np.full(16000, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    sf.write(str(folder / "silent.wav"), np.zeros(16000, dtype=np.float32), SR, subtype="PCM_16")
    sf.write(str(folder / "short.wav"), harmonic(0.05, 120, 1), SR, subtype="PCM_16")
    os.symlink(folder / "gone.wav", folder / "dangling.wav")  # an unreadable path
    return {
        "empty.wav": "empty file",
        "text.wav": "not readable as audio",
        "truncated.wav": "not readable as audio",
        "nan.wav": "NaN or Inf",
        "silent.wav": "silent",
        "short.wav": "shorter than one segment",
        "dangling.wav": "file not found",
    }


def test_each_bad_file_is_skipped_with_one_line_naming_it(tmp_path, caplog):
    expected = _write_bad_files(tmp_path / "bad")
    data = DataConfig(corpus=str(tmp_path / "bad"), segment_length=8192)
    store = load_split(data, FEATURES, "all", min_samples=8192)
    assert [i.utt.id for i in store.items] == ["good"]
    messages = warnings_of(caplog)
    assert len(messages) == len(expected)
    for name, reason in expected.items():
        [line] = [m for m in messages if name in m]
        assert reason in line and "\n" not in line


def test_a_truncated_body_is_read_as_the_samples_that_are_there(tmp_path):
    """A WAV whose header promises more data than the file holds keeps what is there (libsndfile)."""
    path = tmp_path / "cut.wav"
    sf.write(str(path), harmonic(1.0, 120, 0), SR, subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with wave.open(str(path)) as w:
        assert w.getnframes() == 16000  # the header still says 1 s
    store = UtteranceStore([resolve_corpus(str(tmp_path), "all")[0]], FEATURES, min_samples=1024)
    assert 7900 <= store.items[0].num_samples <= 8000


def test_a_corpus_with_nothing_usable_is_one_clear_error(tmp_path):
    folder = tmp_path / "allbad"
    _write_bad_files(folder)
    (folder / "good.wav").unlink()
    with pytest.raises(CorpusError, match=r"none of its 7 files is usable \(7 skipped"):
        load_split(DataConfig(corpus=str(folder)), FEATURES, "all", min_samples=8192)


def test_split_lists_naming_unknown_ids_warn(tmp_path, caplog):
    root = write_corpus(tmp_path / "c", count=3)
    (root / "train.txt").write_text("utt00\nutt01\nnot_there\n")
    (root / "valid.txt").write_text("utt02\n")
    assert [u.id for u in resolve_corpus(str(root), "train")] == ["utt00", "utt01"]
    assert any("not_there" in m for m in warnings_of(caplog))
    with pytest.raises(CorpusError, match="no test.txt"):
        resolve_corpus(str(root), "test")


# ----------------------------------------------------------------------------- datasets


def test_training_crops_are_aligned_with_their_mel_frames(synth_corpus):
    data = DataConfig(corpus=str(synth_corpus), segment_length=4096, mel_context=2)
    store = load_split(data, FEATURES, "train", data.segment_length)
    ds = SegmentDataset(store, data.segment_length, data.mel_context)
    logmel = LogMel(FEATURES)
    for seed in range(5):
        item = ds[(seed % len(ds), seed)]
        assert item["audio"].shape == (4096,) and item["mel"].shape == (80, 16 + 4)
        # the crop's own mel, away from its zero-padded edges, equals the frames handed with it
        own = logmel(item["audio"])
        assert torch.allclose(own[:, 2:-2], item["mel"][:, 2 + 2 : 2 + 16 - 2], atol=1e-4)
        # and the crop really is a hop-aligned piece of the utterance
        audio, _ = store.get(seed % len(ds))
        starts = [s for s in range(0, audio.numel() - 4096 + 1, 256) if torch.equal(audio[s : s + 4096], item["audio"])]
        assert len(starts) == 1


def test_crops_at_utterance_edges_get_silence_context(synth_corpus):
    data = DataConfig(corpus=str(synth_corpus), segment_length=62 * 256, mel_context=3)
    store = load_split(data, FEATURES, "train", data.segment_length)
    ds = SegmentDataset(store, data.segment_length, data.mel_context)
    item = ds[(0, 7)]  # 62 of the 62 frames: the crop is the whole utterance
    silence = LogMel(FEATURES).silence_value
    assert torch.all(item["mel"][:, :3] == silence) and torch.all(item["mel"][:, -3:] == silence)


def test_whole_utterances_are_trimmed_to_whole_frames(synth_corpus):
    store = load_split(DataConfig(corpus=str(synth_corpus)), FEATURES, "valid", 1024)
    item = UtteranceDataset(store)[0]
    assert item["id"] == "utt04" and item["audio"].numel() == item["mel"].shape[-1] * 256 == 62 * 256


def test_stream_sampler_ranks_partition_the_single_process_stream():
    single = StreamSampler(10, seed=3)
    stream = [next(it) for it in [iter(single)] for _ in range(40)]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))  # each epoch is a permutation
    assert [i for i, _ in stream[:10]] != [i for i, _ in stream[10:20]]  # epochs differ
    ranks = [iter(StreamSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    per_rank = [[next(it) for _ in range(20)] for it in ranks]
    assert per_rank[0] == stream[0::2] and per_rank[1] == stream[1::2]
    resumed = iter(StreamSampler(10, seed=3, start=13))
    assert [next(resumed) for _ in range(5)] == stream[13:18]


def test_mel_cache_is_used_and_keyed_by_features(tmp_path, synth_corpus, monkeypatch):
    utts = resolve_corpus(str(synth_corpus), "train")
    first = UtteranceStore(utts, FEATURES, 1024, mel_cache=tmp_path / "cache")
    monkeypatch.setattr(LogMel, "forward", lambda self, x: (_ for _ in ()).throw(AssertionError("recomputed")))
    second = UtteranceStore(utts, FEATURES, 1024, mel_cache=tmp_path / "cache")
    assert torch.equal(first.get(0)[1], second.get(0)[1])
    other = FeatureConfig(n_mels=64)
    with pytest.raises(AssertionError, match="recomputed"):
        UtteranceStore(utts, other, 1024, mel_cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one folder per feature setting
    assert MelCache(tmp_path / "cache", FEATURES).dir.name.startswith("mel-")


def test_change_speed_plays_faster_with_every_frequency_scaled():
    t = np.arange(SR) / SR
    x = torch.from_numpy(np.sin(2 * np.pi * 200 * t)).float()
    for factor in (0.9, 1.1):
        y = change_speed(x, factor)
        assert abs(y.numel() - SR / factor) < 1  # lasts 1 / factor as long at the same rate
        spectrum = np.abs(np.fft.rfft(y.numpy() * np.hanning(y.numel())))
        peak_hz = np.argmax(spectrum) * SR / y.numel()
        assert abs(peak_hz - 200 * factor) < 2  # 200 Hz -> 180 / 220 Hz


def test_speed_perturbation_adds_a_copy_per_factor_to_the_training_split_only(synth_corpus, tmp_path, caplog):
    data = DataConfig(corpus=str(synth_corpus), segment_length=4096, speed_perturb=[0.9, 1.1])
    train = load_split(data, FEATURES, "train", data.segment_length)
    assert len(train) == 3 * 4 and [i.speed for i in train.items[:3]] == [1.0, 0.9, 1.1]
    assert len(load_split(data, FEATURES, "valid", 1024)) == 1  # evaluation reads the audio as it is
    plain, slow, fast = (train.get(i) for i in range(3))
    assert torch.equal(slow[0], change_speed(plain[0], 0.9)) and torch.equal(fast[0], change_speed(plain[0], 1.1))
    logmel = LogMel(FEATURES)
    for audio, mel in (slow, fast):  # each copy's mel is the copy's own
        assert torch.allclose(mel, logmel(audio)) and train.items[1].num_samples == slow[0].numel()
    # read from disk (no preload) through the mel cache: the same audio and mels, cached under their speed
    lazy = load_split(DataConfig(corpus=str(synth_corpus), speed_perturb=[0.9, 1.1], preload=False,
                                 mel_cache=str(tmp_path / "cache")), FEATURES, "train", 4096)
    assert len(list(next((tmp_path / "cache").iterdir()).glob("*.npy"))) == 12
    for i in range(3):
        assert torch.equal(lazy.get(i)[0], train.get(i)[0])
        assert torch.allclose(lazy.get(i)[1], train.get(i)[1])
    # a copy shorter than one segment is left out with one line, the utterance itself kept
    short = load_split(DataConfig(corpus=str(synth_corpus), speed_perturb=[1.1]), FEATURES, "train", 15000)
    assert [i.speed for i in short.items] == [1.0] * 4
    assert "4 speed-perturbed copies shorter than one segment (15000 samples) left out" in " ".join(
        warnings_of(caplog))
    # the data stage counts the utterances as they are, the copies apart
    splits = prepare(DataStageConfig(data=data), ["train", "valid"])["splits"]
    assert splits["train"]["utterances"] == 4 and splits["train"]["speed_copies"] == 8
    assert splits["train"]["minutes"] == pytest.approx(4 * 62 * 256 / SR / 60, abs=1e-3)
    assert "speed_copies" not in splits["valid"]


def test_speed_perturbation_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"data.speed_perturb = \[1.0\] must be"):
        DataConfig(speed_perturb=[1.0])
    with pytest.raises(ConfigError, match="data.speed_perturb"):
        DataConfig(speed_perturb=[0.9, 0.9001])  # the same resampling ratio, 9/10
    with pytest.raises(ConfigError, match="data.speed_perturb"):
        DataConfig(speed_perturb=[1.004])  # 1/1 at denominators up to 100: the audio as it is
    with pytest.raises(ConfigError, match="data.mel_dir"):
        DataConfig(speed_perturb=[0.9], mel_dir="mels")


def test_an_ogg_opus_file_in_a_corpus_folder_is_found_and_read(tmp_path):
    x = (0.2 * np.sin(np.arange(48000) / 10)).astype(np.float32)
    sf.write(str(tmp_path / "utt.opus"), x, 48000, format="OGG", subtype="OPUS")
    (utt,) = resolve_corpus(str(tmp_path), "all")
    assert utt.id == "utt" and load_audio(utt.path, 16000).numel() == 16000
