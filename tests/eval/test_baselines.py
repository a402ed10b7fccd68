"""WORLD analysis-synthesis of the recording (`--systems ...,world`): an oracle source-filter vocoder that
keeps the recording's pitch and voicing, scored like every system, and refused where it would mislead."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from distill.errors import ConfigError

pytest.importorskip("pyworld")


def test_world_keeps_the_length_the_pitch_and_the_voicing_of_the_recording():
    from distill.audio.io import load_audio
    from distill.data.corpus import resolve_corpus
    from eval.baselines import world_resynthesis
    from eval.metrics import f0_scores, pesq_scores

    x = load_audio(resolve_corpus("demo", "test")[0].path, 16000)
    y = world_resynthesis(x, 16000)
    assert y.shape == x.shape and y.dtype == x.dtype and float(y.abs().max()) <= 1.0
    scores = f0_scores(x.double().numpy(), y.double().numpy())
    assert scores["vuv_f1"] > 0.9 and scores["f0_rmse_cents"] < 60
    # a vocoder, not a copy: clearly below the reference's own PESQ, clearly above the recording in noise
    torch.manual_seed(0)
    pesq_world, pesq_noisy = (r.score for r in pesq_scores([(x, y), (x, x + 0.05 * torch.randn_like(x))], 16000))
    assert 2.5 < pesq_world < 4.0 and pesq_noisy < 1.5
    # the pitch contour comes through: the median F0 of the voiced frames within 30 cents
    from eval.metrics import f0_track

    f0_x, f0_y = (f0_track(a.double().numpy())[0] for a in (x, y))
    assert abs(1200 * np.log2(np.median(f0_y[f0_y > 0]) / np.median(f0_x[f0_x > 0]))) < 30


def test_eval_scores_world_on_request_and_refuses_it_with_degraded_mels(tmp_path):
    from distill.data.corpus import demo_corpus_dir
    from eval.evaluate import DEFAULT_SYSTEMS, EvalRequest
    from eval.pipeline import run

    assert "world" not in DEFAULT_SYSTEMS  # an oracle from the recording, on request only
    (tmp_path / "one").mkdir()
    shutil.copy(demo_corpus_dir() / "wavs" / "demo_0015.flac", tmp_path / "one")
    common = dict(max_utterances=1, max_seconds=1.0, systems=("reference", "griffin_lim", "world"),
                  metrics=("f0",), rtf_runs=1, rtf_seconds=0.25, data=str(tmp_path / "one"), split="all")
    report = run(EvalRequest(**common, out=str(tmp_path / "world")))
    world = report["systems"]["world"]
    assert list(report["systems"]) == ["reference", "griffin_lim", "world"]
    # scored like every system (1 s of slt: WORLD 2.97, Griffin-Lim 2.71 PESQ wb when written)
    assert world["pesq_wb"] > 2.5 and world["vuv_f1"] > 0.85 and world["rtf"]["device"] == "cpu"
    saved = json.loads((tmp_path / "world" / "report.json").read_text())
    assert saved["systems"]["world"]["pesq_wb"] == pytest.approx(world["pesq_wb"])
    assert "| world |" in (tmp_path / "world" / "report.md").read_text()
    with pytest.raises(ConfigError, match="--systems world analyses the recording"):
        run(EvalRequest(**common, degrade_mels="light", out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()
