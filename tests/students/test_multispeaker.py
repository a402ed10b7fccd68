"""Multi-speaker end to end: speakers named by the corpus's folders, a teacher trained and a student
distilled through the CLI with the speaker map in their checkpoints, the speaker changing the audio of
both, and one line for a missing, unknown or unwanted speaker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from distill.config import DataConfig
from distill.data.corpus import resolve_corpus
from distill.data.datasets import corpus_speakers
from distill.errors import ConfigError, CorpusError
from distill.train.checkpoint import load_checkpoint
from students.vocoder import Vocoder
from tests.conftest import SR, harmonic

TEACHER = ["model.layers=2", "model.cycle=2", "model.residual_channels=8", "model.gate_channels=8",
           "model.skip_channels=8", "model.speaker_dim=4", "data.segment_length=2048", "train.batch_size=2",
           "train.log_every=1", "train.valid_every=2", "valid.max_utterances=1", "valid.sample_seconds=0.02"]
STUDENT = ["model.flows=[2]", "model.residual_channels=8", "model.gate_channels=8", "model.skip_channels=8",
           "model.linear_prediction=false", "features.preemphasis=0.0", "data.segment_length=2048",
           "train.batch_size=2", "train.valid_every=2", "valid.max_utterances=1", "valid.max_seconds=0.2"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two speakers, one folder each (the LibriTTS / VCTK layout), with fixed split lists."""
    root = tmp_path_factory.mktemp("two_speakers")
    ids = []
    for speaker, f0 in (("alice", 210.0), ("bob", 105.0)):
        (root / speaker).mkdir()
        for i in range(4):
            sf.write(str(root / speaker / f"u{i}.wav"), harmonic(0.6, f0 + 7 * i, seed=i), SR, subtype="PCM_16")
            ids.append(f"{speaker}/u{i}")
    (root / "train.txt").write_text("\n".join(i for i in ids if not i.endswith("u3")) + "\n")
    (root / "valid.txt").write_text("alice/u3\nbob/u3\n")
    (root / "test.txt").write_text("alice/u3\n")
    return root


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("runs")
    teacher = cli("train-teacher", "--config", "configs/teacher/gaussian_tiny.yaml", "--out", str(folder / "teacher"),
                  "--steps", "2", f"data.corpus={corpus}", "data.speakers=folder", *TEACHER)
    assert teacher.returncode == 0, teacher.stderr
    student = cli("distill", "--teacher", str(folder / "teacher"), "--out", str(folder / "student"), "--steps", "2",
                  f"data.corpus={corpus}", "data.speakers=folder", *STUDENT)
    assert student.returncode == 0, student.stderr
    return {"teacher": folder / "teacher", "student": folder / "student", "folder": folder}


def test_the_corpus_folders_name_the_speakers_and_the_map_is_sorted(corpus):
    assert {u.speaker for u in resolve_corpus(str(corpus), "valid", speakers="folder")} == {"alice", "bob"}
    assert corpus_speakers(DataConfig(corpus=str(corpus), speakers="folder")) == {"alice": 0, "bob": 1}
    with pytest.raises(CorpusError, match="reads metadata.csv"):
        resolve_corpus(str(corpus), "train", speakers="column")


def test_speaker_folders_in_an_ljspeech_layout_are_one_line(tmp_path):
    (tmp_path / "wavs").mkdir()
    sf.write(str(tmp_path / "wavs" / "a.wav"), harmonic(0.2, 100.0, 0), SR)
    (tmp_path / "metadata.csv").write_text("a|text|text\n")
    with pytest.raises(CorpusError, match="use data.speakers=column"):
        resolve_corpus(str(tmp_path), "all", speakers="folder")


def test_both_checkpoints_carry_the_map_and_the_speaker_changes_both_models_audio(runs, corpus):
    for name in ("teacher", "student"):
        payload = load_checkpoint(runs[name])
        assert payload["extra"]["speakers"] == {"alice": 0, "bob": 1}
        assert payload["model_args"]["model" if name == "teacher" else "teacher"]["num_speakers"] == 2
    mel = Vocoder.load(runs["student"]).mel(torch.from_numpy(harmonic(0.2, 150.0, 5)))
    student = Vocoder.load(runs["student"])
    assert not torch.allclose(student(mel, speaker="alice", seed=0), student(mel, speaker="bob", seed=0))
    assert torch.equal(student(mel, speaker="bob", seed=0), student(mel, speaker=1, seed=0))
    teacher = Vocoder.load(runs["teacher"])
    one, two = (teacher(mel[:, :4], speaker=s, mode="mean", method="incremental") for s in ("alice", "bob"))
    assert not torch.allclose(one, two)
    with pytest.raises(ConfigError, match="unknown speaker 'carol'; known: alice, bob"):
        student(mel, speaker="carol")
    with pytest.raises(ConfigError, match="multi-speaker: pass a speaker .one of alice, bob."):
        student(mel)


def test_vocode_takes_a_speaker_and_an_unknown_one_is_one_line(runs, tmp_path):
    wav = tmp_path / "in.wav"
    sf.write(str(wav), harmonic(0.3, 140.0, 1), SR, subtype="PCM_16")
    good = cli("vocode", str(wav), "--student", str(runs["student"]), "--speaker", "bob", "--out", str(tmp_path / "o"))
    assert good.returncode == 0, good.stderr
    assert sf.info(str(tmp_path / "o" / "in.wav")).frames == int(0.3 * SR) // 256 * 256
    bad = cli("vocode", str(wav), "--student", str(runs["student"]), "--speaker", "carol", "--out", str(tmp_path / "p"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("known: alice, bob")


def test_speakers_without_a_corpus_that_names_them_are_one_line(runs, corpus, tmp_path):
    declared = cli("train-teacher", "--config", "configs/teacher/gaussian_tiny.yaml", "--out", str(tmp_path / "t"),
                   "--steps", "1", f"data.corpus={corpus}", "model.num_speakers=2", *TEACHER)
    assert declared.returncode == 2 and "set data.speakers to folder" in declared.stderr
    assert len(declared.stderr.strip().splitlines()) == 1
    unnamed = cli("distill", "--teacher", str(runs["teacher"]), "--out", str(tmp_path / "s"), "--steps", "1",
                  f"data.corpus={corpus}", *STUDENT)
    assert unnamed.returncode == 2 and "is multi-speaker (alice, bob); set data.speakers" in unnamed.stderr


def test_eval_synthesises_each_clip_as_its_own_speaker_and_refuses_an_unknown_one(runs, corpus, tmp_path):
    common = ["eval", "--teacher", str(runs["teacher"]), "--student", str(runs["student"]), "--data", str(corpus),
              "--split", "valid", "--max-seconds", "0.15", "--metrics", "none", "--rtf-runs", "1",
              "--rtf-seconds", "0.1"]
    own = cli(*common, "--out", str(tmp_path / "own"))
    assert own.returncode == 0, own.stderr
    assert (tmp_path / "own" / "report.json").is_file()
    short = cli(*common[:-1], "0.03", "--out", str(tmp_path / "short"))
    assert short.returncode == 2 and "shorter than one STFT window" in short.stderr
    unknown = cli(*common, "--speaker", "carol", "--out", str(tmp_path / "carol"))
    assert unknown.returncode == 2 and "unknown speaker 'carol'; known: alice, bob" in unknown.stderr


def test_eval_speaker_assignment_own_or_asked_for():
    from eval.evaluate import Clip
    from eval.pipeline import _assign_speakers

    clips = [Clip("a", torch.zeros(4), torch.zeros(2, 1), speaker_name="alice"),
             Clip("b", torch.zeros(4), torch.zeros(2, 1), speaker_name="bob")]
    _assign_speakers(clips, {"alice": 0, "bob": 1}, None, {}, {})
    assert [c.speaker for c in clips] == [0, 1]
    _assign_speakers(clips, {"alice": 0, "bob": 1}, "bob", {}, {})
    assert [c.speaker for c in clips] == [1, 1]
    clips.append(Clip("c", torch.zeros(4), torch.zeros(2, 1), speaker_name="carol"))
    with pytest.raises(ConfigError, match="'carol' are not the teacher's .alice, bob.; pass --speaker"):
        _assign_speakers(clips, {"alice": 0, "bob": 1}, None, {}, {})
