"""Subcommands provided by the base package, and the argument handling every training command shares."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.config import DataStageConfig, load_config
from distill.errors import ConfigError

log = logging.getLogger("wavedistill")


# --------------------------------------------------------------------------------------------
# Shared by training commands (train-teacher, distill, ...)


def add_training_arguments(parser: argparse.ArgumentParser, default_config: str | None = None,
                           out_required: bool = True) -> None:
    parser.add_argument("--config", default=None,
                        help=f"YAML preset (see configs/){'; default ' + default_config if default_config else ''}")
    parser.set_defaults(default_config=default_config)
    parser.add_argument("--out", required=out_required, default=None,
                        help="run folder: checkpoints/, tensorboard/, config.yaml, metrics.jsonl")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out exactly where its latest checkpoint stopped")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start a new run from the model weights of another checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="shorthand for train.steps=N")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.lr=3e-4")


def training_config(args: argparse.Namespace, config_cls: type):
    """The config of a training command: a fresh run reads --config; --resume reads the run's own
    config.yaml (so the continuation is exact) and applies only the command-line overrides."""
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    return run_config(config_cls, args.out, args.config or getattr(args, "default_config", None), overrides,
                      args.resume, explicit=bool(args.config))


def run_config(config_cls: type, out: str | Path, config: str | Path | None, overrides: list[str], resume: bool,
               explicit: bool = True):
    """A run's config: `config` with `overrides`, or, resuming, the run's own config.yaml with them."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"argument {bad[0]!r} is not an override; write key.sub=value (e.g. train.lr=3e-4)")
    saved = Path(out) / "config.yaml"
    if resume and saved.is_file():
        if config and explicit:
            log.info("resuming: using %s (the run's own config), not --config %s", saved, config)
        return load_config(config_cls, saved, overrides)
    return load_config(config_cls, config, overrides)


def train(config_cls: type, make_task: Callable, out: str | Path, config: str | Path | None = None,
          overrides: list[str] | None = None, resume: bool = False, init: str | None = None,
          explicit: bool = False) -> Path | None:
    """Train (or, with `resume`, continue) the run in `out`: what `train-teacher` and `distill` do,
    callable from Python. Returns the last checkpoint. explicit: `config` was asked for by name (a
    resumed run uses its own config.yaml and says so)."""
    from distill.train.folders import check_output_folder

    check_output_folder(out, "--out")  # before any work: a file, a path under a file, a read-only folder
    return fit(run_config(config_cls, out, config, list(overrides or []), resume, explicit), make_task, out, resume,
               init)


def fit(cfg: Any, make_task: Callable, out: str | Path, resume: bool = False, init: str | None = None) -> Path | None:
    """Run the training loop on the task `make_task(cfg)` into `out`; returns the last checkpoint."""
    from distill.train.trainer import Trainer

    trainer = Trainer(make_task(cfg), out, resume=resume, init_from=init)
    last = trainer.fit()
    if last is not None and trainer.dist.is_main:  # under torchrun, one line, not one per rank
        log.info("last checkpoint: %s", last)
    return last


def run_training(args: argparse.Namespace, config_cls: type, make_task: Callable) -> int:
    """`train-teacher` and `distill`: the output folder checked first, then `training_config`, then `fit`."""
    from distill.train.folders import check_output_folder

    check_output_folder(args.out, "--out")
    fit(training_config(args, config_cls), make_task, args.out, args.resume, args.init)
    return 0


# --------------------------------------------------------------------------------------------
# wavedistill env


def add_env(sub) -> None:
    p = sub.add_parser("env", help="report versions, CUDA/GPU, threads and what is missing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_env)


def _env(args) -> int:
    from distill.cli.env import collect, format_report

    report = collect()
    if args.json:
        print(json.dumps({**report.info, "problems": report.problems}, indent=2))
    else:
        print(format_report(report))
    if report.problems:
        print(f"wavedistill env: {len(report.problems)} problem(s); fix: {report.problems[0]}")
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# wavedistill data


def add_data_stage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML with features: and data: sections (default: built-in defaults)")
    p.add_argument("--split", default="splits", choices=["splits", "train", "valid", "test", "all"],
                   help="splits: train, valid and test each (default); all: the whole corpus as one")
    p.add_argument("--out", default=None, help="folder for data_summary.json, one mel image and its audio")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. data.preload=false")


def add_data(sub) -> None:
    p = sub.add_parser("data",
                       help="read and check a corpus (demo, LJSpeech folder or audio folder), fill the mel cache")
    p.add_argument("--corpus", default=None,
                   help="'demo', an LJSpeech folder or a folder of audio files (sets data.corpus)")
    p.add_argument("--mels", default=None, metavar="DIR",
                   help="instead: check a folder of external mels (<utterance id>.npy/.pt, for data.mel_dir) against "
                        "the corpus's audio and the features; exit 1 unless they are in the models' convention")
    add_data_stage_arguments(p)
    p.set_defaults(func=_data)


def run_data_stage(args, corpus: str | None) -> dict:
    return prepare_data(corpus, args.out, args.split, args.config, list(args.overrides))


def prepare_data(corpus: str | None, out: str | Path | None = None, split: str = "splits",
                 config: str | None = None, overrides: list[str] | None = None) -> dict:
    """`wavedistill data`, callable from Python: read and check a corpus's splits (`split`: "splits"
    for train, valid and test, or one of them), print and return the summary (written into `out`)."""
    from distill.data.prepare import format_summary, prepare
    from distill.train.folders import check_output_folder

    if out:
        check_output_folder(out, "--out")
    cfg = load_config(DataStageConfig, config, list(overrides or []))
    if corpus:  # a path, taken as it is (not parsed as YAML like an override)
        cfg.data.corpus = corpus
    splits = ["train", "valid", "test"] if split == "splits" else [split]
    summary = prepare(cfg, splits, str(out) if out else None)
    print(format_summary(summary))
    return summary


def _data(args) -> int:
    if args.mels:
        from distill.data.prepare import check_mels, format_mel_check
        from distill.train.folders import check_output_folder

        if args.out:
            check_output_folder(args.out, "--out")
        cfg = load_config(DataStageConfig, args.config, list(args.overrides))
        if args.corpus:
            cfg.data.corpus = args.corpus
        report = check_mels(cfg, args.mels, "all" if args.split == "splits" else args.split)
        print(format_mel_check(report))
        if args.out:
            (Path(args.out) / "mel_check.json").write_text(json.dumps(report, indent=2))
        return 0 if report["verdict"].startswith("ok") and not report["problems"] else 1
    run_data_stage(args, args.corpus)
    return 0


def add_make_demo_corpus(sub) -> None:
    p = sub.add_parser("make-demo-corpus",
                       help="remake the bundled demo corpus: ten flite and festival voices (Debian packages flite, "
                            "festival, festvox-*; a missing one is named)")
    p.add_argument("--out", default=None, help="folder to write (default: the packaged demo corpus; required with "
                                               "--held-out-set)")
    p.add_argument("--voices", default=None, metavar="A,B",
                   help="only these voices (comma-separated; slt is always made); default: all ten (with "
                        "--held-out-set: among its six, no slt)")
    p.add_argument("--force", action="store_true",
                   help="synthesise the --voices named (all without --voices) again; default: keep audio files "
                        "that exist")
    p.add_argument("--held-out-set", action="store_true",
                   help="instead, write the wider held-out set into --out: six more festival voices (Czech, Finnish, "
                        "Russian) reading the test sentences, one sub-folder per voice, for `eval --data DIR "
                        "--split all`; --voices picks among them")
    p.set_defaults(func=_make_demo_corpus)


def _make_demo_corpus(args) -> int:
    from distill.data.make_demo_corpus import format_summary, make_demo_corpus, make_held_out_set

    if args.held_out_set:
        if args.out is None:
            raise ConfigError("make-demo-corpus --held-out-set needs --out DIR (the set is not bundled); "
                              "add --out runs/held_out_set")
        print(format_summary(make_held_out_set(args.out, args.voices, args.force)))
        return 0
    print(format_summary(make_demo_corpus(args.out, args.voices, args.force)))
    return 0
