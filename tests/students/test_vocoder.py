"""The vocoder as users call it: the Python API (`students.vocoder.Vocoder`, the README's lines) and
`wavedistill vocode` on mel files of another pipeline, audio files and bad files."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from distill.audio.io import save_wav
from distill.audio.mel import LogMel
from distill.audio.melfiles import read_mel
from distill.config import FeatureConfig, to_dict
from distill.errors import ConfigError, MelError
from students.iaf import IAFStudent, StudentModelConfig
from students.vocode_files import vocode_files
from students.vocoder import Vocoder
from teachers.wavenet import TeacherModelConfig, WaveNetTeacher
from tests.conftest import harmonic
from tests.models import save_model

FEATURES = FeatureConfig()  # 16 kHz, hop 256, 80 mels
HOP, N_MELS = FEATURES.hop_length, FEATURES.n_mels
ROOT = Path(__file__).resolve().parents[2]


def _save(model, task: str, path: Path, config: dict | None = None) -> Path:
    return save_model(path, model, task, step=3, features=to_dict(FEATURES), config=config)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vocoder")
    torch.manual_seed(0)
    student = IAFStudent(StudentModelConfig("gaussian", [2, 2], cycle=2, kernel_size=3, residual_channels=8,
                                            gate_channels=8, skip_channels=8, initial_scale=0.3))
    with torch.no_grad():  # the zero-initialised heads would make every output the same noise
        for flow in student.flows:
            flow.head[-1].weight.normal_(0, 0.3)
    teacher = WaveNetTeacher(TeacherModelConfig(layers=4, cycle=2, residual_channels=8, gate_channels=8,
                                                skip_channels=8))
    speakers = WaveNetTeacher(TeacherModelConfig(layers=2, cycle=2, residual_channels=8, gate_channels=8,
                                                 skip_channels=8, num_speakers=2, speaker_dim=4))
    with torch.no_grad():
        speakers.speaker.weight.normal_(0, 3.0)
    run = folder / "runs" / "distill_clarinet_tiny" / "checkpoints"
    run.mkdir(parents=True)
    return {"student": _save(student, "student", run / "latest.pt").parents[1],
            "teacher": _save(teacher, "teacher", folder / "teacher.pt", {"valid": {"temperature": 0.5}}),
            "speakers": _save(speakers, "teacher", folder / "speakers.pt"),
            "folder": folder}


def _mel(seconds: float, f0: float, seed: int) -> torch.Tensor:
    return LogMel(FEATURES)(torch.from_numpy(harmonic(seconds, f0, seed)).float())


def test_the_readme_example_runs_as_written(models, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(from students.vocoder import Vocoder.*?)```", readme, re.S)
    assert block, "README has no Python API example starting with 'from students.vocoder import Vocoder'"
    folder = models["folder"]
    save_wav(folder / "speech.wav", harmonic(1.0, 140.0, 1), FEATURES.sample_rate)
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    frames = int(1.0 * FEATURES.sample_rate) // HOP
    assert scope["mel"].shape == (N_MELS, frames)
    assert sf.info(str(folder / "resynth.wav")).frames == frames * HOP
    assert [a.shape[-1] for a in scope["batch"]] == [frames * HOP, 50 * HOP]


def test_a_batch_of_unequal_lengths_gives_each_mel_its_own_audio_as_if_alone(models):
    voc = Vocoder.load(models["student"])
    a, b = _mel(0.6, 120.0, 1), _mel(0.3, 200.0, 2)
    together = voc([a, b], seed=5)
    assert [x.shape[-1] for x in together] == [a.shape[-1] * HOP, b.shape[-1] * HOP]
    assert torch.allclose(together[0], voc(a, seed=5), atol=1e-5)
    assert torch.allclose(together[1], voc(b, seed=6), atol=1e-5)  # item i draws from seed + i
    assert not torch.allclose(voc(a, seed=5), voc(a, seed=7))
    stacked = voc(torch.stack([a, a]), seed=5)
    assert stacked.shape == (2, a.shape[-1] * HOP) and torch.allclose(stacked[0], together[0], atol=1e-5)
    assert voc.kind == "student" and voc.temperature == 1.0 and voc.sample_rate == FEATURES.sample_rate
    assert torch.equal(voc(a.numpy(), seed=5), voc(a, seed=5))  # a .npy mel as loaded


def test_a_teacher_uses_its_recorded_temperature_and_a_seed_repeats_it(models):
    voc = Vocoder.load(models["teacher"])
    mel = _mel(0.1, 150.0, 3)
    assert voc.kind == "teacher" and voc.temperature == 0.5
    first, again = voc(mel, seed=1, method="incremental"), voc(mel, seed=1, method="incremental")
    assert first.shape == (mel.shape[-1] * HOP,) and torch.equal(first, again)
    mean = voc(mel, mode="mean", method="incremental")
    assert torch.equal(mean, voc(mel, mode="mean", temperature=2.0, method="incremental"))
    with pytest.raises(ConfigError, match="float32"):
        Vocoder.load(models["teacher"], dtype="bfloat16")


def test_every_bad_mel_is_one_line_saying_what_is_wrong(models):
    voc = Vocoder.load(models["student"])
    good = _mel(0.2, 100.0, 4)
    cases = {"40 mel channels": torch.zeros(40, 10), "no frames": torch.zeros(N_MELS, 0),
             "NaN or Inf": good.clone().index_fill_(1, torch.tensor([2]), math.nan),
             "2-D": torch.zeros(2, 2, N_MELS, 5)}
    for reason, mel in cases.items():
        with pytest.raises(MelError, match=reason) as err:
            voc(mel)
        assert "\n" not in str(err.value)


def test_a_speaker_changes_a_multi_speaker_teachers_output_and_a_wrong_one_is_one_line(models):
    voc = Vocoder.load(models["speakers"])
    mel = _mel(0.05, 150.0, 5)
    one, two = (voc(mel, speaker=s, mode="mean", method="incremental") for s in (0, 1))
    assert not torch.allclose(one, two)
    with pytest.raises(ConfigError, match="pass a speaker"):
        voc(mel)
    with pytest.raises(ConfigError, match="out of range; known: ids 0..1"):
        voc(mel, speaker=2)
    with pytest.raises(ConfigError, match="no speaker input"):
        Vocoder.load(models["student"])(mel, speaker=0)


def _independent_mel(wav: np.ndarray, features: FeatureConfig = FEATURES) -> np.ndarray:
    """A log-mel written the way HiFi-GAN's `mel_spectrogram` does it (reflect-pad (n_fft - hop) / 2, an
    uncentred torch.stft, magnitude, Slaney filters, log of the clamp at 1e-5), not by LogMel: the kind of
    file a TTS pipeline writes."""
    x = torch.from_numpy(wav).float()[None]
    pad = (features.n_fft - features.hop_length) // 2
    x = torch.nn.functional.pad(x[None], (pad, pad), mode="reflect")[0]
    spec = torch.stft(x, features.n_fft, features.hop_length, features.win_length,
                      torch.hann_window(features.win_length), center=False, return_complex=True).abs()
    fbanks = torchaudio.functional.melscale_fbanks(features.n_fft // 2 + 1, features.f_min, features.f_max,
                                                   features.n_mels, features.sample_rate, "slaney", "slaney")
    return torch.log((fbanks.T @ spec[0]).clamp(min=1e-5)).numpy()


def test_the_models_mel_is_hifi_gans_away_from_the_edges():
    wav = harmonic(0.5, 150.0, 3)
    ours, theirs = LogMel(FEATURES)(torch.from_numpy(wav)).numpy(), _independent_mel(wav)
    assert ours.shape == theirs.shape  # T // hop frames on both sides
    assert np.abs(ours[:, 3:-3] - theirs[:, 3:-3]).max() < 1e-3  # the edges differ: zero vs reflect padding


def _vocode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", "vocode", *args], capture_output=True, text=True,
                          timeout=300)


def test_vocode_writes_frames_times_hop_samples_per_mel_and_one_line_per_bad_file(models, tmp_path):
    mels, out = tmp_path / "mels", tmp_path / "wavs"
    mels.mkdir()
    frames = {}
    for i, f0 in enumerate([110.0, 180.0, 240.0]):
        mel = _independent_mel(harmonic(0.4 + 0.1 * i, f0, i))
        frames[f"utt{i}"] = mel.shape[1]
        if i == 0:
            np.save(mels / "utt0.npy", mel)
        elif i == 1:
            np.save(mels / "utt1.npy", mel.T)  # (frames, n_mels), as many TTS models write it
        else:
            torch.save(torch.from_numpy(mel)[None], mels / "utt2.pt")  # a leading batch axis of 1
    save_wav(mels / "copy.wav", harmonic(0.5, 130.0, 9), FEATURES.sample_rate)
    frames["copy"] = int(0.5 * FEATURES.sample_rate) // HOP
    np.save(mels / "narrow.npy", np.zeros((40, 20), np.float32))
    np.save(mels / "nan.npy", np.full((N_MELS, 20), np.nan, np.float32))
    np.save(mels / "empty.npy", np.zeros((N_MELS, 0), np.float32))
    (mels / "text.npy").write_text("not an array")
    (mels / "noise.wav").write_bytes(b"RIFF....WAVEfmt junk")

    result = _vocode(str(mels), "--student", str(models["student"]), "--out", str(out), "--batch", "2")
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert sorted(Path(ln.split()[1].rstrip(":")).name for ln in errors) == \
        ["empty.npy", "nan.npy", "narrow.npy", "noise.wav", "text.npy"]
    assert "warning:" not in result.stderr  # the independent mels are in the model's convention
    for name, count in frames.items():
        assert sf.info(str(out / f"{name}.wav")).frames == count * HOP

    # existing outputs are kept; --overwrite replaces them, with the same audio for the same seed
    before = sf.read(str(out / "utt1.wav"))[0]
    (out / "utt0.wav").write_bytes(b"keep me")
    again = _vocode(str(mels), "--student", str(models["student"]), "--out", str(out), "--batch", "1", "--overwrite")
    assert again.returncode == 1, again.stderr
    assert np.array_equal(sf.read(str(out / "utt1.wav"))[0], before)  # input i draws seed + i, whatever --batch
    assert sf.info(str(out / "utt0.wav")).frames == frames["utt0"] * HOP
    (out / "utt0.wav").write_bytes(b"keep me")
    kept = _vocode(str(mels / "utt0.npy"), "--student", str(models["student"]), "--out", str(out))
    assert kept.returncode == 0 and (out / "utt0.wav").read_bytes() == b"keep me" and "--overwrite" in kept.stderr


def test_mel_files_are_read_in_either_orientation_and_a_foreign_file_is_refused(tmp_path):
    mel = np.random.default_rng(0).normal(-5, 1, (N_MELS, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", mel.T)
    assert torch.equal(read_mel(tmp_path / "a.npy", N_MELS), torch.from_numpy(mel))
    np.save(tmp_path / "b.npy", np.array(["x"] * 3))
    with pytest.raises(MelError, match="not numbers"):
        read_mel(tmp_path / "b.npy", N_MELS)
    torch.save({"mel": torch.from_numpy(mel)}, tmp_path / "c.pt")
    with pytest.raises(MelError, match="not one tensor"):
        read_mel(tmp_path / "c.pt", N_MELS)


def test_a_db_mel_gets_a_warning_and_a_missing_input_a_line(models, tmp_path):
    np.save(tmp_path / "db.npy", np.full((N_MELS, 8), -80.0, np.float32))
    result = _vocode(str(tmp_path / "db.npy"), str(tmp_path / "nothing_*.npy"), "--student", str(models["student"]),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "below the model's silence floor" in result.stderr and "matches no file" in result.stderr
    assert sf.info(str(tmp_path / "out" / "db.wav")).frames == 8 * HOP


def test_the_model_owns_its_context_frames_and_their_silence_value(tmp_path):
    from distill.config import load_config
    from teachers.pretrained import load_teacher
    from teachers.task import TeacherConfig, build_teacher

    cfg = load_config(TeacherConfig, "configs/teacher/gaussian_tiny.yaml",
                      ["features.log_floor=1e-4", "model.layers=2", "model.cycle=2", "data.mel_context=3"])
    teacher = build_teacher(cfg)
    a, b = torch.zeros(N_MELS, 5), torch.ones(N_MELS, 2)
    padded = teacher.pad_mels([a, b])
    assert padded.shape == (2, N_MELS, 5 + 6)
    silence = math.log(1e-4)
    assert (torch.equal(padded[1, :, 3:5], b) and (padded[1, :, 5:] == silence).all()
            and (padded[:, :, :3] == silence).all())
    assert torch.equal(teacher.pad_mels(a), padded[:1])
    # the silence value is the features' (a model keeps no copy of its own), also after a checkpoint
    save_model(tmp_path / "t.pt", teacher, "teacher", features=to_dict(cfg.features))
    assert load_teacher(tmp_path / "t.pt")[0].upsampler.silence == silence


def test_a_voiced_temperature_reaches_a_pitch_teacher_and_the_others_refuse_it(models, tmp_path):
    torch.manual_seed(1)
    pitch = WaveNetTeacher(TeacherModelConfig(layers=4, cycle=2, residual_channels=8, gate_channels=8,
                                              skip_channels=8, pitch_source=True), FEATURES)
    with torch.no_grad():  # the zero-initialised head would draw every step from one law
        pitch.stack.head[-1].weight.normal_(0, 0.3)
    voc = Vocoder.load(_save(pitch, "teacher", tmp_path / "pitch.pt", {"valid": {"temperature": 0.5}}))
    mel = _mel(0.2, 150.0, 3)
    plain = voc(mel, seed=1, method="fast")
    assert torch.equal(plain, voc(mel, seed=1, method="fast", voiced_temperature=0.5))  # T everywhere
    for method in ("fast", "incremental"):  # voiced speech at 0.1: a different draw
        assert not torch.equal(voc(mel, seed=1, method=method), voc(mel, seed=1, method=method,
                                                                       voiced_temperature=0.1))
    with pytest.raises(ConfigError, match="a student samples its noise at one scale"):
        Vocoder.load(models["student"])(mel, voiced_temperature=0.5)
    with pytest.raises(ConfigError, match="has none"):
        Vocoder.load(models["teacher"])(mel, voiced_temperature=0.5)
    np.save(tmp_path / "a.npy", mel.numpy())
    refused = _vocode(str(tmp_path / "a.npy"), "--student", str(models["student"]), "--out", str(tmp_path / "o"),
                      "--voiced-temperature", "0.5")
    assert refused.returncode != 0 and "a voiced temperature is a teacher's" in refused.stderr
    assert not list((tmp_path / "o").glob("*.wav"))


def test_the_post_filter_moves_the_output_towards_its_mel_and_vocode_takes_it(models, tmp_path):
    voc = Vocoder.load(models["student"])
    mel = _mel(0.5, 140.0, 4)
    plain, post = voc(mel, seed=5), voc(mel, seed=5, postfilter=2)
    assert post.shape == plain.shape and not torch.allclose(post, plain)
    logmel = LogMel(FEATURES)
    distance = [float((logmel(x) - mel).abs().mean()) for x in (plain, post)]
    assert distance[1] < 0.5 * distance[0]  # the same draw, its envelope moved to the mel's
    together = voc([mel, mel], seed=5, postfilter=2)
    assert torch.allclose(together[0], post, atol=1e-5)
    with pytest.raises(ConfigError, match="iterations must be >= 0"):
        voc(mel, postfilter=-1)
    np.save(tmp_path / "utt.npy", mel.numpy())
    result = _vocode(str(tmp_path / "utt.npy"), "--student", str(models["student"]), "--out", str(tmp_path / "wavs"),
                     "--postfilter", "2", "--seed", "5")
    assert result.returncode == 0, result.stderr
    written = torch.from_numpy(sf.read(str(tmp_path / "wavs" / "utt.wav"), dtype="float32")[0])
    assert written.shape == post.shape and torch.allclose(written, post, atol=1e-3)  # 16-bit WAV
    with pytest.raises(ConfigError, match="--postfilter must be >= 0"):  # before any file is read or written
        vocode_files(voc, [str(tmp_path / "utt.npy")], tmp_path / "bad", postfilter=-1)
    assert not (tmp_path / "bad").exists()
