"""`wavedistill eval --voiced-temperature`: the shipped (pitch-source) teacher samples voiced speech at it, the
report says so, and a teacher without a pitch source refuses it in one line before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.errors import ConfigError


def test_eval_samples_the_teacher_at_a_voiced_temperature_and_says_so(tmp_path):
    from distill.data.corpus import demo_corpus_dir
    from eval.evaluate import EvalRequest
    from eval.pipeline import run
    from teachers.pretrained import single_voice_teacher_path

    (tmp_path / "one").mkdir()
    shutil.copy(demo_corpus_dir() / "wavs" / "demo_0015.flac", tmp_path / "one")
    common = dict(max_utterances=1, max_seconds=0.5, systems=("reference", "teacher"), metrics=("none",),
                  rtf_runs=1, rtf_seconds=0.1, data=str(tmp_path / "one"), split="all", teacher_sampler="fast")
    voiced = run(EvalRequest(**common, temperature=1.0, voiced_temperature=0.3, out=str(tmp_path / "voiced")))
    plain = run(EvalRequest(**common, temperature=1.0, out=str(tmp_path / "plain")))
    assert voiced["settings"]["voiced_temperature"] == 0.3 and plain["settings"]["voiced_temperature"] is None
    # which pair runs is settled before any synthesis: the reference alone shows it, at no sampling cost
    resolve = {**common, "systems": ("reference",)}
    # neither given: the shipped teacher's recorded pair
    recorded = run(EvalRequest(**resolve, out=str(tmp_path / "recorded")))["settings"]
    assert (recorded["temperature"], recorded["voiced_temperature"]) == (0.85, 0.5)
    # a voiced temperature alone keeps the recorded temperature; 0 switches the recorded voiced one off
    alone = run(EvalRequest(**resolve, voiced_temperature=0.3, out=str(tmp_path / "alone")))["settings"]
    assert (alone["temperature"], alone["voiced_temperature"]) == (0.85, 0.3)
    off = run(EvalRequest(**resolve, voiced_temperature=0.0, out=str(tmp_path / "off")))["settings"]
    assert (off["temperature"], off["voiced_temperature"]) == (0.85, None)
    # the same seed, a different draw in voiced speech
    assert voiced["systems"]["teacher"]["mel_l1"] != plain["systems"]["teacher"]["mel_l1"]
    assert "- voiced temperature: 0.3 (the teacher's, in voiced speech; 1.0 where unvoiced)" in \
        (tmp_path / "voiced" / "report.md").read_text()
    saved = json.loads((tmp_path / "voiced" / "report.json").read_text())
    assert saved["settings"]["voiced_temperature"] == 0.3
    with pytest.raises(ConfigError, match="has none"):
        run(EvalRequest(**common, teacher=str(single_voice_teacher_path()), voiced_temperature=0.3,
                        out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad" / "report.json").exists()
