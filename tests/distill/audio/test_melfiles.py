"""External mels (data.mel_dir, `wavedistill data --mels`): reading, alignment with the audio, training on
them, and the convention check that names log10, power, dB, normalised and centred mels."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchaudio

from distill.audio.io import load_audio
from distill.audio.melfiles import align_mel, read_mel
from distill.config import DataConfig, DataStageConfig, FeatureConfig, load_config
from distill.data.corpus import resolve_corpus
from distill.data.datasets import SegmentDataset, UtteranceStore
from distill.data.prepare import check_mels
from distill.errors import MelError

FEATURES = FeatureConfig()
HOP = FEATURES.hop_length


def hifigan_magnitude(x: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Mel magnitude computed independently of LogMel (HiFi-GAN's padding, or a centred STFT)."""
    if not center:
        pad = (FEATURES.n_fft - HOP) // 2
        x = torch.nn.functional.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(x, FEATURES.n_fft, HOP, FEATURES.win_length, torch.hann_window(FEATURES.win_length),
                      center=center, return_complex=True).abs()
    fb = torchaudio.functional.melscale_fbanks(FEATURES.n_fft // 2 + 1, FEATURES.f_min, FEATURES.f_max,
                                               FEATURES.n_mels, FEATURES.sample_rate, "slaney", "slaney")
    return (fb.T @ spec).clamp(min=FEATURES.log_floor)


CONVENTIONS = {
    "ok": lambda m: torch.log(m),
    "log10": lambda m: torch.log10(m),
    "power": lambda m: torch.log(m**2),
    "db": lambda m: 20 * torch.log10(m),
    "normalised": lambda m: (torch.log(m) - torch.log(m).mean()) / torch.log(m).std(),
}


@pytest.fixture(scope="module")
def mel_dirs(synth_corpus, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mels")
    dirs = {name: root / name for name in list(CONVENTIONS) + ["centred"]}
    for d in dirs.values():
        d.mkdir()
    for utt in resolve_corpus(str(synth_corpus), "all"):
        x = load_audio(utt.path, FEATURES.sample_rate)
        magnitude = hifigan_magnitude(x)
        for name, convert in CONVENTIONS.items():
            mel = convert(magnitude).numpy()
            np.save(dirs[name] / f"{utt.id}.npy", mel.T if name == "log10" else mel)  # one folder transposed
        np.save(dirs["centred"] / f"{utt.id}.npy", torch.log(hifigan_magnitude(x, center=True)).numpy())
    return dirs


def _check(synth_corpus, folder) -> dict:
    cfg = load_config(DataStageConfig, None, [f"data.corpus={synth_corpus}"])
    return check_mels(cfg, folder)


@pytest.mark.parametrize("name, verdict", [
    ("ok", "ok: the mels are in the models' convention"), ("log10", "log10 of the magnitude"),
    ("power", "natural log of the power"), ("db", "decibels"), ("normalised", "normalised to zero mean"),
    ("centred", "ok (usable): one frame more"),
])
def test_the_check_names_the_convention_of_a_mel_folder(synth_corpus, mel_dirs, name, verdict):
    report = _check(synth_corpus, mel_dirs[name])
    assert report["verdict"].startswith(verdict) or verdict in report["verdict"], report["verdict"]
    assert report["with_mel"] == report["utterances"] == 6 and not report["problems"]
    assert report["transposed"] == (6 if name == "log10" else 0)
    assert report["frames_off_count"] == ({"1": 6} if name == "centred" else {"0": 6})


def test_data_mels_exits_1_unless_the_mels_are_usable(synth_corpus, mel_dirs, tmp_path):
    def run(folder):
        return subprocess.run([sys.executable, "-m", "distill.cli", "data", "--corpus", str(synth_corpus), "--mels",
                               str(folder), "--out", str(tmp_path / folder.name)], capture_output=True, text=True,
                              timeout=300)
    good, bad = run(mel_dirs["ok"]), run(mel_dirs["db"])
    assert good.returncode == 0 and "verdict: ok" in good.stdout, good.stdout + good.stderr
    assert bad.returncode == 1 and "decibels" in bad.stdout
    fit = json.loads((tmp_path / "db" / "mel_check.json").read_text())["fit"]
    assert fit["scale"] == pytest.approx(8.686, abs=0.05)


def test_a_mel_one_or_two_frames_off_is_cut_and_more_is_refused(tmp_path):
    mel = torch.randn(FEATURES.n_mels, 12)
    assert align_mel(mel, 10 * HOP + 5, HOP, tmp_path / "a.npy")[0].shape[-1] == 10  # two frames more: cut
    kept, off = align_mel(mel, 13 * HOP, HOP, tmp_path / "a.npy")
    assert torch.equal(kept, mel) and off == -1  # one frame fewer: kept, the audio is cut
    with pytest.raises(MelError, match="has 12 frames but its audio .* has 15"):
        align_mel(mel, 15 * HOP, HOP, tmp_path / "a.npy")
    np.save(tmp_path / "t.npy", mel.numpy().T)
    assert torch.equal(read_mel(tmp_path / "t.npy", FEATURES.n_mels), mel)


def test_training_data_comes_from_the_mel_dir_and_bad_files_are_one_line_each(synth_corpus, mel_dirs, tmp_path, caplog):
    folder = tmp_path / "mels"
    folder.mkdir()
    utts = resolve_corpus(str(synth_corpus), "all")
    for i, utt in enumerate(utts):
        mel = np.load(mel_dirs["ok"] / f"{utt.id}.npy") + 0.5  # marked: the store must hand out these values
        if i == 1:
            mel = np.concatenate([mel, mel[:, -1:]], 1)  # one frame too many: cut, with a warning
        if i == 2:
            mel = mel[:, :-5]  # five frames short: refused
        if i != 3:  # utterance 3 has no file
            np.save(folder / f"{utt.id}.npy", mel)
    caplog.set_level(logging.WARNING, logger="wavedistill")
    store = UtteranceStore(utts, FEATURES, min_samples=2048, mel_dir=folder, preload=False)
    assert [item.utt.id for item in store.items] == [utts[i].id for i in (0, 1, 4, 5)]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{utts[2].id}.npy: has " in text and f"{utts[3].id}.npy: missing" in text
    assert "1 mel file(s)" in text and "+1 frame(s) off" in text
    audio, mel = store.get(0)
    assert torch.allclose(mel, torch.from_numpy(np.load(folder / f"{utts[0].id}.npy")))
    crop = SegmentDataset(store, 2048, 2)[(1, 7)]
    assert crop["audio"].shape == (2048,) and crop["mel"].shape == (FEATURES.n_mels, 2048 // HOP + 4)


def test_a_teacher_trains_on_a_mel_dir(synth_corpus, mel_dirs, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "distill.cli", "train-teacher", "--config",
                             "configs/teacher/gaussian_tiny.yaml", "--out", str(run), "--steps", "2",
                             f"data.corpus={synth_corpus}", f"data.mel_dir={mel_dirs['ok']}", "model.layers=2",
                             "model.cycle=2", "model.residual_channels=8", "model.gate_channels=8",
                             "model.skip_channels=8", "data.segment_length=2048", "train.batch_size=2",
                             "train.valid_every=2", "valid.max_utterances=1", "valid.sample_seconds=0.02"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "mel_dir: " in (run / "config.yaml").read_text()
    assert DataConfig(mel_dir=str(mel_dirs["ok"])).mel_dir  # a plain config key
