"""Unseen voices as an axis of evaluation: the per-voice and per-group means, the groups' rule, the
per-voice choice of utterances, mixed voices in one teacher batch, and `eval` end to end on a two-voice
folder (one sub-folder per voice)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from distill.audio.io import save_wav
from distill.data.corpus import Utterance, harmonic_signal
from distill.errors import ConfigError
from distill.train.checkpoint import atomic_save
from eval.commands import add_eval, print_summary, request_from_args
from eval.evaluate import Clip, EvalRequest, aggregate, teacher_synthesis, voice_sections
from eval.report import group_lines, group_rows, voice_rows
from eval.voices import HELD_OUT, TRAINING, UNKNOWN, UNLABELLED, select_utterances, voice_groups
from teachers.sampling.fastloop import available as fastloop_available
from tests.models import save_teacher, small_teacher

NAN = math.nan


def row(voice: str, pesq: float, mel: float, stoi: float) -> dict:
    return {"id": f"{voice}{pesq}", "voice": voice, "seconds": 1.0, "pesq_wb": pesq, "mel_l1": mel,
            "stft_distance": 2 * mel, "teacher_nll": -mel, "stoi": stoi}


def test_means_per_voice_and_per_group_skip_nan_as_the_overall_table_does():
    rows = [row("a", 2.0, 1.0, 0.5), row("a", NAN, 3.0, NAN), row("b", 3.0, 5.0, 0.7), row("b", 4.0, 7.0, 0.9),
            row("c", NAN, 1.0, NAN)]
    table = {"teacher": {"utterances": rows}}
    voices, groups = voice_sections(table, {"a": TRAINING, "b": HELD_OUT, "c": HELD_OUT}, ("wb",), ("stoi",))
    a, b, c = (voices[v]["systems"]["teacher"] for v in "abc")
    assert [voices[v]["group"] for v in voices] == [TRAINING, HELD_OUT, HELD_OUT]
    assert [voices[v]["utterances"] for v in voices] == [2, 2, 1]
    # PESQ and the library metrics skip a NaN (and count what PESQ scored); mel L1 averages every utterance
    assert (a["pesq_wb"], a["pesq_wb_scored"], a["mel_l1"], a["stoi"]) == (2.0, 1, 2.0, 0.5)
    assert (b["pesq_wb"], b["pesq_wb_scored"], b["mel_l1"], b["stft_distance"]) == (3.5, 2, 6.0, 12.0)
    assert b["stoi"] == pytest.approx(0.8) and b["teacher_nll"] == -6.0
    assert math.isnan(c["pesq_wb"]) and c["pesq_wb_scored"] == 0 and math.isnan(c["stoi"])  # nothing scored
    assert list(groups) == [TRAINING, HELD_OUT]  # no empty group
    held = groups[HELD_OUT]
    assert held["voices"] == ["b", "c"] and held["utterances"] == 3
    held_teacher = held["systems"]["teacher"]
    assert held_teacher["pesq_wb"] == 3.5 and held_teacher["mel_l1"] == pytest.approx(13 / 3)
    assert groups[TRAINING]["systems"]["teacher"] == a
    # the overall table's means are the same function of all rows
    overall = aggregate(rows, ("wb",), ("stoi",))
    assert overall["pesq_wb"] == 3.0 and overall["pesq_wb_scored"] == 3 and overall["mel_l1"] == 3.4


def test_the_per_voice_tables_render_the_sections():
    rows = [row("a", 2.0, 1.0, 0.5), row("b", NAN, 3.0, 0.7)]
    table = {"griffin_lim": {"utterances": rows}, "teacher": {"utterances": [dict(r, pesq_wb=3.0) for r in rows]}}
    voices, groups = voice_sections(table, {"a": TRAINING, "b": HELD_OUT}, ("wb",), ())
    report = {"settings": {"pesq_modes": ["wb"]}, "systems": table, "voices": voices, "groups": groups}
    assert ["b", HELD_OUT, "1", "griffin_lim", "NaN (0/1 scored)", "3.000"] == voice_rows(report)[2][:6]
    assert [HELD_OUT, "b", "1", "teacher", "3.000"] == group_rows(report)[3][:5]
    lines = group_lines(report)
    assert len(lines) == 5  # a heading, then one line per group and system
    assert "held-out (b; 1 utt.)" in lines[4] and "teacher" in lines[4] and "PESQ wb 3.000 (NaN)" in lines[4]
    assert "(" not in lines[3].split("griffin_lim")[1]  # Griffin-Lim's own line has nothing beside it


def test_groups_come_from_the_models_records_or_from_training_voices():
    voices = ["alice", "bob", "carol", UNLABELLED]
    assert voice_groups(voices, {"teacher": None, "student": None}) == dict.fromkeys(voices, UNKNOWN)
    assert voice_groups(voices, {}) == dict.fromkeys(voices, UNKNOWN)
    # a model without a record adds nothing; the others' voices are the training group
    groups = voice_groups(voices, {"teacher": None, "student a": ["alice"], "student b": ["bob", ""]})
    assert groups == {"alice": TRAINING, "bob": TRAINING, "carol": HELD_OUT, UNLABELLED: TRAINING}
    # --training-voices replaces the records (also where there are none); an empty list: every voice held out
    assert voice_groups(voices, {"student": ["alice"]}, ("carol",)) == {
        "alice": HELD_OUT, "bob": HELD_OUT, "carol": TRAINING, UNLABELLED: HELD_OUT}
    assert voice_groups(voices, {"teacher": None}, ("bob",))["bob"] == TRAINING
    assert set(voice_groups(voices, {"student": ["alice"]}, ()).values()) == {HELD_OUT}


def test_training_voices_flag_reaches_the_request():
    parser = argparse.ArgumentParser()
    add_eval(parser.add_subparsers())
    request = request_from_args(parser.parse_args(["eval", "--training-voices", "alice, bob"]), [])
    assert request.training_voices == ("alice", "bob")
    assert request_from_args(parser.parse_args(["eval"]), []).training_voices is None


def utts(*speakers: str) -> list[Utterance]:
    return [Utterance(f"u{i}", Path(f"u{i}.wav"), speaker=s) for i, s in enumerate(speakers)]


def test_max_utterances_takes_the_first_n_of_each_voice():
    split = utts("a", "a", "a", "b", "c", "b", "b", "c")  # listed voice by voice, then interleaved
    assert [u.id for u in select_utterances(split, 2)] == ["u0", "u1", "u3", "u4", "u5", "u7"]
    assert [u.id for u in select_utterances(split, 1)] == ["u0", "u3", "u4"]
    assert select_utterances(split, 0) == split
    one = utts("a", "a", "a")  # one voice or none: the first N of the split, as ever
    assert select_utterances(one, 2) == one[:2] and select_utterances(utts("", "", ""), 2) == utts("", "")
    assert [u.id for u in select_utterances(utts("", "a", ""), 1)] == ["u0", "u1"]  # unlabelled is one voice


def test_one_teacher_batch_may_mix_voices_and_lengths():
    teacher = small_teacher(num_speakers=2)
    features = teacher.features
    g = torch.Generator().manual_seed(3)
    clips = [Clip(f"c{i}", torch.zeros(frames * features.hop_length, dtype=torch.float64),
                  torch.randn(features.n_mels, frames, generator=g, dtype=torch.float64), speaker=i,
                  speaker_name=name) for i, (frames, name) in enumerate([(9, "alice"), (6, "bob")])]
    cpu = torch.device("cpu")
    # temperature 0: the mean path, so that the batched and the lone synthesis must agree exactly
    batched = teacher_synthesis(teacher, clips, features, cpu, batch_size=2, temperature=0.0)
    alone = [teacher_synthesis(teacher, [c], features, cpu, batch_size=1, temperature=0.0)[0] for c in clips]
    for b, a, clip in zip(batched, alone, clips, strict=True):
        assert b.shape == a.shape == clip.reference.shape
        torch.testing.assert_close(b, a)
    swapped = [Clip(c.id, c.reference, c.mel, speaker=1 - c.speaker) for c in clips]  # each clip's own id counts
    assert not torch.allclose(teacher_synthesis(teacher, swapped, features, cpu, 2, 0.0)[1], batched[1])


@pytest.fixture(scope="module")
def two_voices(tmp_path_factory) -> tuple[Path, str]:
    """A folder corpus with one sub-folder per voice (alice, bob), its test list voice by voice, and a tiny
    teacher whose checkpoint records that it trained on alice."""
    root = tmp_path_factory.mktemp("voices")
    corpus = root / "corpus"
    ids = {"train": [], "valid": [], "test": []}
    for v, (voice, f0) in enumerate((("alice", 220.0), ("bob", 110.0))):
        for i, split in enumerate(("train", "valid", "test", "test")):
            uid = f"{voice}/{voice}_{i}"
            save_wav(corpus / f"{uid}.wav", harmonic_signal(0.6, f0, seed=10 * v + i), 16000)
            ids[split].append(uid)
    for split, names in ids.items():
        (corpus / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    teacher = save_teacher(root / "teacher.pt", "gaussian")
    payload = torch.load(teacher, weights_only=False)
    payload["extra"]["voices"] = ["alice"]  # what a teacher task records: its training split's voices
    atomic_save(payload, teacher)
    return corpus, teacher


def test_eval_reports_every_metric_per_voice_and_per_group(two_voices, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eval.pipeline import run

    corpus, teacher = two_voices
    out = tmp_path / "report"
    report = run(EvalRequest(teacher=teacher, data=str(corpus), split="test", max_utterances=1, max_seconds=0.3,
                             systems=("reference", "griffin_lim", "teacher"), metrics=("f0",), rtf_seconds=0.1,
                             rtf_runs=1, rtf_warmup=0, teacher_sampler="fast" if fastloop_available() else "auto",
                             out=str(out)))
    written = json.loads((out / "report.json").read_text())
    # the test list is voice by voice: the first utterance of each voice, not the first two of the list
    assert written["settings"]["utterance_ids"] == ["alice/alice_2", "bob/bob_2"]
    assert written["settings"]["selection"] == "the first 1 utterance(s) of each voice"
    assert written["settings"]["voice_groups"]["recorded"] == {"teacher": ["alice"]}
    assert {v: e["group"] for v, e in written["voices"].items()} == {"alice": TRAINING, "bob": HELD_OUT}
    assert [g["voices"] for g in written["groups"].values()] == [["alice"], ["bob"]]
    for voice, group in (("alice", TRAINING), ("bob", HELD_OUT)):
        utt = next(u for u in written["systems"]["teacher"]["utterances"] if u["voice"] == voice)
        for section in (written["voices"][voice], written["groups"][group]):
            assert section["utterances"] == 1
            for key in ("pesq_wb", "mel_l1", "stft_distance", "teacher_nll", "vuv_f1", "f0_rmse_cents"):
                # one utterance per voice: its means are that utterance's scores
                assert section["systems"]["teacher"][key] == pytest.approx(utt[key], nan_ok=True)
            assert set(section["systems"]) == {"reference", "griffin_lim", "teacher"}
    markdown = (out / "report.md").read_text()
    assert "## Per group of voices" in markdown and "## Per voice" in markdown
    assert "| bob | held-out | 1 | teacher |" in markdown and "| training | alice | 1 | teacher |" in markdown
    assert "voice groups: training = the voices an evaluated model" in markdown
    assert "<h2>Per voice</h2>" in (out / "report.html").read_text()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    for tag, value in ((f"eval/{HELD_OUT}/teacher/pesq_wb", written["groups"][HELD_OUT]["systems"]["teacher"]),
                       ("eval/voice/alice/griffin_lim/mel_l1", written["voices"]["alice"]["systems"]["griffin_lim"])):
        key = tag.rsplit("/", 1)[1]
        assert events.Scalars(tag)[-1].value == pytest.approx(value[key], rel=1e-5)
    print_summary(report)
    printed = capsys.readouterr().out
    assert "| teacher |" in printed  # the overall table, as before
    lines = [line for line in printed.splitlines() if line.startswith((TRAINING, HELD_OUT))]
    assert len(lines) == 6  # two groups, three systems
    assert any(line.startswith("held-out (bob; 1 utt.)") and "teacher" in line and "V/UV F1" in line
               for line in lines)


def test_a_corpus_with_one_voice_reports_as_one_table(two_voices, tmp_path):
    from eval.pipeline import run

    corpus, teacher = two_voices
    out = tmp_path / "one"
    report = run(EvalRequest(teacher=teacher, data=str(corpus / "bob"), split="all", max_utterances=1,
                             max_seconds=0.25, systems=("reference", "griffin_lim"), metrics=(), rtf_seconds=0.1,
                             rtf_runs=1, out=str(out)))
    assert "voices" not in report and "groups" not in report and report["settings"]["utterances"] == 1
    assert report["settings"]["selection"] == "the first 1 utterance(s) of the split"
    markdown = (out / "report.md").read_text()
    assert "Per voice" not in markdown and "voice groups" not in markdown and group_lines(report) == []


def test_eval_scores_the_post_filtered_teacher_beside_the_teacher(two_voices, tmp_path):
    from eval.pipeline import run

    corpus, teacher = two_voices
    common = dict(teacher=teacher, data=str(corpus), split="test", max_utterances=1, max_seconds=0.3, metrics=(),
                  rtf_seconds=0.1, rtf_runs=1, rtf_warmup=0,
                  teacher_sampler="fast" if fastloop_available() else "auto")
    report = run(EvalRequest(**common, systems=("reference", "teacher"), postfilter=2, out=str(tmp_path / "pf")))
    systems = report["systems"]
    assert list(systems) == ["reference", "teacher", "teacher + post-filter"]
    plain, post = systems["teacher"], systems["teacher + post-filter"]
    # the same draws, their mel moved to the recording's: a much smaller log-mel distance
    assert post["mel_l1"] < 0.5 * plain["mel_l1"]
    assert post["rtf"]["rtf"] > 0 and "teacher + post-filter" in report["groups"][HELD_OUT]["systems"]
    assert "the mel post-filter too" in (tmp_path / "pf" / "report.md").read_text()  # the timing note says so
    with pytest.raises(ConfigError, match="--postfilter -1"):
        run(EvalRequest(**common, postfilter=-1, out=str(tmp_path / "bad")))
    with pytest.raises(ConfigError, match="add teacher or student to --systems"):
        run(EvalRequest(**common, systems=("reference", "griffin_lim"), postfilter=1, out=str(tmp_path / "bad")))
    assert not (tmp_path / "bad").exists()
