"""Degraded mels (`wavedistill eval --degrade-mels`): the smoothing and the noise do what the docs say, and
every system of an evaluation synthesises from them while the metrics keep the recording as the truth."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distill.errors import ConfigError
from eval.degrade import LEVELS, MelDegradation


def test_specs_parse_to_their_strengths_and_a_bad_one_is_one_line():
    assert not MelDegradation.parse("") and not MelDegradation.parse("none")
    assert MelDegradation.parse("medium") == MelDegradation(*LEVELS["medium"])
    assert MelDegradation.parse("time=2, noise=0.2") == MelDegradation(time=2.0, noise=0.2)
    for bad in ("time=-1", "blur=2", "time=2,time=3", "noise=x", "heavy"):
        with pytest.raises(ConfigError, match="--degrade-mels .*time=T,freq=F,noise=N"):
            MelDegradation.parse(bad)


def test_smoothing_spreads_an_impulse_by_its_standard_deviation_on_its_own_axis():
    mel = torch.zeros(40, 61)
    mel[20, 30] = 1.0
    for axis, degradation in ((1, MelDegradation(time=2.0)), (0, MelDegradation(freq=3.0))):
        bump = degradation.apply(mel, seed=0)
        assert torch.allclose(bump.sum(), torch.tensor(1.0), atol=1e-5)  # the kernel sums to one
        profile = bump.sum(dim=1 - axis)
        other = bump.sum(dim=axis)
        centre = 30 if axis == 1 else 20
        offsets = torch.arange(profile.numel()) - centre
        std = float((profile * offsets**2).sum().sqrt())
        assert abs(std - (degradation.time or degradation.freq)) < 0.05  # cut at 3 std: 1% short
        assert int((other.abs() > 1e-6).sum()) == 1  # nothing moves along the other axis
    constant = torch.full((40, 61), -3.0)
    assert torch.allclose(MelDegradation(time=2, freq=2).apply(constant, 0), constant)  # edges replicated


def test_noise_has_its_standard_deviation_and_repeats_with_its_seed():
    mel = torch.zeros(80, 500)
    degradation = MelDegradation(noise=0.3)
    out = degradation.apply(mel, seed=4)
    assert abs(float(out.std()) - 0.3) < 0.01 and out.dtype == mel.dtype and out.shape == mel.shape
    assert torch.equal(out, degradation.apply(mel, seed=4)) and not torch.equal(out, degradation.apply(mel, seed=5))
    assert torch.equal(MelDegradation().apply(mel, 0), mel)


def test_every_system_synthesises_from_the_degraded_mels_and_the_truth_stays_the_recording(tmp_path):
    from distill.audio.mel import LogMel
    from distill.config import FeatureConfig
    from distill.data.corpus import demo_corpus_dir
    from eval.baselines import griffin_lim
    from eval.evaluate import EvalRequest, load_clips
    from eval.metrics import mel_l1
    from eval.pipeline import run

    (tmp_path / "one").mkdir()  # one clip: the figures and the teacher's NLL of each system are per clip
    shutil.copy(demo_corpus_dir() / "wavs" / "demo_0015.flac", tmp_path / "one")
    common = dict(max_utterances=1, max_seconds=0.5, systems=("reference", "griffin_lim"), metrics=("none",),
                  rtf_runs=1, rtf_seconds=0.25, data=str(tmp_path / "one"), split="all")
    smooth = run(EvalRequest(**common, degrade_mels="time=3,freq=3", out=str(tmp_path / "smooth")))
    assert smooth["settings"]["mel_degradation"]["time"] == 3.0
    # Griffin-Lim from over-smoothed mels lands farther from the recording's mel than from the recording's
    # own mel (computed here, same clip); the reference is the recording, untouched
    feats = FeatureConfig(**smooth["settings"]["features"])
    clip = load_clips(str(tmp_path / "one"), "all", feats, 1, 0.5)[0]
    clean = mel_l1(clip.mel, LogMel(feats)(griffin_lim(clip.mel, feats)))
    assert smooth["systems"]["griffin_lim"]["mel_l1"] > clean + 0.05
    assert smooth["systems"]["reference"]["mel_l1"] == 0
    assert "degraded (time smoothing std 3 frames" in (tmp_path / "smooth" / "report.md").read_text()
    saved = json.loads((tmp_path / "smooth" / "report.json").read_text())
    assert saved["settings"]["mel_degradation"]["description"].startswith("time smoothing std 3")
    with pytest.raises(ConfigError, match="--degrade-mels"):
        run(EvalRequest(**common, degrade_mels="blur=1", out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()
