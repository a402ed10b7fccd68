"""The `wavedistill` command: subcommands, one-line errors, the env report, the demo's data stage."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from distill.cli import env
from distill.cli.commands import training_config
from distill.cli.main import main
from distill.config import save_config
from distill.train.checkpoint import load_checkpoint
from teachers.sampling.fastloop import available as fastloop_available
from tests.toy import ToyConfig


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=300)


def test_env_reports_versions_and_exits_zero():
    result = run("env", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    import torch

    assert info["torch"] == torch.__version__ and info["problems"] == []
    assert info["cuda_available"] == torch.cuda.is_available() and "torch_threads" in info


def test_env_fails_with_a_hint_when_something_required_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(env, "REQUIRED", env.REQUIRED + [("no_such_module_xyz", "no-such-package", "testing")])
    assert main(["env"]) == 1
    out = capsys.readouterr().out
    assert "no_such_module_xyz" in out and "pip install no-such-package" in out.splitlines()[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "--corpus", "/definitely/not/here"], "corpus '/definitely/not/here' not found"),
        (["data", "data.segmnt_length=4"], "unknown key 'data.segmnt_length'"),
        (["data", "--config", "/no/such.yaml"], "config file not found"),
        (["make-demo-corpus", "--held-out-set"], "--held-out-set needs --out DIR"),
        (["make-demo-corpus", "--held-out-set", "--out", "/nonexistent/held_out_set", "--voices", "rms"],
         "unknown voice 'rms'"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message):
    result = run(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"wavedistill {args[0]}: error: ") and message in lines[0]


def test_bad_files_in_a_corpus_are_warnings_and_the_stage_completes(tmp_path, synth_corpus):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("utt00.wav", "utt01.wav", "utt02.wav"):
        (folder / name).write_bytes((synth_corpus / name).read_bytes())
    (folder / "broken.wav").write_text("not audio")
    result = run("data", "--corpus", str(folder), "--split", "all", "data.segment_length=4096")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "broken.wav" in warnings[0] and "not readable as audio" in warnings[0]
    assert "| all | 3 |" in result.stdout


def test_corpus_paths_are_taken_literally(tmp_path, synth_corpus):
    folder = tmp_path / "2024 #1"
    folder.mkdir()
    for name in ("utt00.wav", "utt01.wav"):
        (folder / name).write_bytes((synth_corpus / name).read_bytes())
    result = run("data", "--corpus", str(folder), "--split", "all")
    assert result.returncode == 0, result.stderr
    assert "| all | 2 |" in result.stdout


def test_demo_distils_evaluates_and_prints_the_summary(tmp_path):
    out = tmp_path / "demo"
    # the C-loop teacher sampler where it builds (the incremental one, the demo's default, is tested on its
    # own; on a 2-core machine without AVX-512 it made this test ~1 min longer)
    sampler = ("--teacher-sampler", "fast") if fastloop_available() else ()
    # one 0.5 s utterance of each of the corpus's ten voices; PESQ only (the library metrics have their own tests);
    # one timed run per system (the default five are tested on eval's own report)
    args = ("demo", "--out", str(out), "--steps", "2", "--max-utterances", "1", "--max-seconds", "0.5",
            "--rtf-seconds", "0.1", "--rtf-runs", "1", "--metrics", "none", *sampler)
    result = run(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "data" / "data_summary.json").read_text())
    assert {s: v["utterances"] for s, v in summary["splits"].items()} == {"train": 284, "valid": 32, "test": 58}
    assert load_checkpoint(out / "student")["step"] == 2
    # the demo's preset: the STFT loss and the log-mel L1, no teacher pass in the step
    logged = [json.loads(line) for line in (out / "student" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "loss" in r][-1]
    assert "loss/stft" in last and "loss/mel" in last and "loss/kl" not in last
    report = json.loads((out / "report" / "report.json").read_text())
    assert list(report["systems"]) == ["reference", "griffin_lim", "teacher", "student"]
    assert report["systems"]["reference"]["pesq_wb"] > 4.6 and report["systems"]["student"]["rtf"]["rtf"] > 0
    assert "| student |" in result.stdout and str(out / "report" / "report.html") in result.stdout
    # every voice of the test split, grouped by the voices the student's checkpoint records
    groups = {name: entry["group"] for name, entry in report["voices"].items()}
    assert len(groups) == 10 and groups["slt"] == "training"
    assert groups["ked_diphone"] == groups["upc_ca_ona_hts"] == "held-out"
    assert "per group of voices" in result.stdout
    # a second demo continues the student where the first stopped (scoring the references alone: the quickest)
    again = run(*args, "--systems", "reference")
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(out / "student")["step"] == 4


def test_a_demo_with_a_bad_config_stops_in_one_line_before_writing_anything(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--config", str(tmp_path / "nope.yaml"), "--steps", "1", "--out", str(out))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith(
        "nope.yaml: config file not found; pass an existing YAML file (presets are in configs/)")
    assert not out.exists()


def test_resume_reads_the_runs_own_config(tmp_path):
    saved = ToyConfig()
    saved.train.lr = 0.123
    save_config(saved, tmp_path / "config.yaml")
    args = argparse.Namespace(out=str(tmp_path), resume=True, config=None, steps=50, overrides=["train.log_every=7"])
    cfg = training_config(args, ToyConfig)
    assert (cfg.train.lr, cfg.train.steps, cfg.train.log_every) == (0.123, 50, 7)
    fresh = training_config(argparse.Namespace(out=str(tmp_path / "new"), resume=False, config=None, steps=None,
                                               overrides=[]), ToyConfig)
    assert fresh.train.lr == ToyConfig().train.lr
