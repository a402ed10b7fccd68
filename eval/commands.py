"""`wavedistill eval` (copy synthesis with a teacher and students, scored next to Griffin-Lim and the
reference, written as a report) and `wavedistill demo` (train the tiny ClariNet student of the grid's
winning preset beside the shipped teacher on the bundled corpus, then evaluate both)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

log = logging.getLogger("wavedistill")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="copy-synthesise a corpus split with a teacher and students; PESQ, RTF, report")
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint or run folder (default: the shipped universal teacher)")
    p.add_argument("--student", action="append", default=[], metavar="PATH",
                   help="student checkpoint or run folder; repeat for several (none: teacher and baselines only)")
    p.add_argument("--data", default="demo",
                   help="'demo', an LJSpeech folder or any folder of audio files (use --split all)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--checkpoints", default="",
                   help="quality over training: 'all' (every step checkpoint each --student run folder keeps; "
                        "train.keep_last sets how many) or steps, e.g. 1000,2000; each becomes a row and the report "
                        "plots every metric against the step (default: each run's latest checkpoint)")
    p.add_argument("--training-voices", default=None, metavar="A,B,...",
                   help="the voices the evaluated models trained on, comma separated, in place of what their "
                        "checkpoints record; the report aggregates every metric per voice and per group: training "
                        "(these voices), held-out (the others); without it and without records the group is "
                        "'unknown'")
    add_eval_arguments(p, max_utterances=10, max_seconds=0.0, out="runs/eval")
    p.set_defaults(func=_eval)


def add_eval_arguments(p: argparse.ArgumentParser, max_utterances: int, max_seconds: float, out: str) -> None:
    p.add_argument("--max-utterances", type=int, default=max_utterances,
                   help=f"the first N utterances of the split, or of each voice when the split's utterances carry "
                        f"several voice labels (default {max_utterances}; 0 = all; the teacher is slow: keep it "
                        "small)")
    p.add_argument("--max-seconds", type=float, default=max_seconds,
                   help="cut each utterance to this length (0 = whole)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--pesq-nb", action="store_true", help="also narrowband PESQ (8 kHz)")
    p.add_argument("--student-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="students' synthesis precision (bfloat16: autocast, on CUDA or CPUs with AVX512-BF16)")
    p.add_argument("--rtf-seconds", type=float, default=1.0,
                   help="length of the clip every RTF is timed on (0 = whole)")
    p.add_argument("--rtf-runs", type=int, default=5, help="timed runs per system (median reported; >= 5 recommended)")
    p.add_argument("--teacher-batch", type=int, default=16, help="utterances the teacher samples together")
    p.add_argument("--student-compile", action="store_true",
                   help="run the students' flows through torch.compile (reduce-overhead CUDA graphs on a GPU)")
    p.add_argument("--teacher-sampler", default="auto", choices=["auto", "incremental", "graph", "fast"],
                   help="the teacher's AR sampler: incremental (PyTorch, any head and device), graph (the same "
                        "replayed as CUDA graphs), fast (C loop; CPU, any head); auto = graph on CUDA, "
                        "incremental on a CPU")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature of the teacher and the students' noise scale (default: the teacher "
                        "at its own synthesis temperature, its config's valid.temperature (with its recorded voiced "
                        "temperature, which a --temperature alone switches off), and the students at 1: a "
                        "student distilled with loss.teacher_temperature T already imitates the teacher at T, so "
                        "an explicit value scales a tempered student's noise once more)")
    p.add_argument("--voiced-temperature", type=float, default=None, metavar="T",
                   help="a teacher with a pitch source samples voiced speech at this temperature and unvoiced speech "
                        "at --temperature, following the voicing it reads from the mel (LPCNet's pitch-dependent "
                        "temperature; docs/teacher.md); 0: none; default: the teacher's recorded one "
                        "(valid.voiced_temperature) unless --temperature is given, which then applies everywhere")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--degrade-mels", default="", metavar="SPEC",
                   help="synthesise every system from degraded mels, a stand-in for a TTS model's: light, medium, "
                        "strong, or time=T,freq=F,noise=N (Gaussian smoothing across frames and mel bands, std in "
                        "frames and bands, then Gaussian noise on the log-mel, std in nats); the reference stays the "
                        "recording (docs/evaluate.md)")
    p.add_argument("--postfilter", type=int, default=0, metavar="N",
                   help="also score the teacher and every student after N iterations of the mel post-filter, which "
                        "moves each frame's mel-band energies to the mel's (distill.audio.postfilter; "
                        "docs/evaluate.md), as '<system> + post-filter', from the same draws; 0 (default): none")
    p.add_argument("--speaker", default=None,
                   help="multi-speaker models: synthesise every clip as this speaker (default: each clip's own, "
                        "named by the corpus as in the teacher's training data)")
    p.add_argument("--systems", default="reference,griffin_lim,teacher,student",
                   help="comma list of the systems to synthesise and score, from reference, griffin_lim, world, "
                        "teacher and student (every --student); leaving out teacher skips its slow sampling (and "
                        "the speed-ups against it); world (not in the default) is WORLD analysis-synthesis of the "
                        "recording itself, an oracle source-filter vocoder (needs the eval extra)")
    p.add_argument("--metrics", default="all",
                   help="library metrics beside PESQ, log-mel L1 and MR-STFT: all (default: dnsmos, stoi, f0, mcd, "
                        "from the eval extra), none, or a comma list of those and crepe (F0 and voicing read by "
                        "CREPE, the papers' tracker: the crepe extra, about 6 s per second of audio on a CPU thread, "
                        "never part of all); each is skipped with a warning where its package is missing")
    p.add_argument("--out", default=out, help="folder for report.json/md/html, wavs/, images/, tensorboard/")


def request_from_args(args, students: list[str]):
    """The `EvalRequest` the eval (and demo) flags describe; nothing is checked or resolved here."""
    from eval.evaluate import EvalRequest

    return EvalRequest(
        teacher=getattr(args, "teacher", None) or "", students=tuple(students),
        checkpoints=getattr(args, "checkpoints", ""), data=getattr(args, "data", "demo"),
        split=getattr(args, "split", "test"), max_utterances=args.max_utterances, max_seconds=args.max_seconds,
        speaker=getattr(args, "speaker", None), device=args.device,
        training_voices=_names(getattr(args, "training_voices", None)),
        systems=tuple(n.strip() for n in args.systems.split(",") if n.strip()),
        metrics=tuple(n.strip() for n in args.metrics.split(",") if n.strip()),
        pesq_modes=("wb", "nb") if args.pesq_nb else ("wb",), teacher_sampler=args.teacher_sampler,
        teacher_batch=args.teacher_batch, temperature=args.temperature,
        voiced_temperature=getattr(args, "voiced_temperature", None), student_dtype=args.student_dtype,
        student_compile=args.student_compile, seed=args.seed, rtf_seconds=args.rtf_seconds, rtf_runs=args.rtf_runs,
        degrade_mels=getattr(args, "degrade_mels", ""), postfilter=getattr(args, "postfilter", 0), out=args.out,
    )


def _names(text: str | None) -> tuple[str, ...] | None:
    """A comma list as a tuple of names ("" gives none; None stays None)."""
    return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())


def print_summary(report: dict) -> None:
    """The overall tables, then (a multi-voice evaluation) one line per group of voices per system."""
    from eval.report import (
        _markdown_table,
        group_lines,
        metric_columns,
        metric_note,
        metric_rows,
        notes,
        summary_columns,
        summary_rows,
    )

    print("\n".join(_markdown_table(summary_columns(report), summary_rows(report))))
    print(notes(report))
    if metric_columns(report):
        print()
        print("\n".join(_markdown_table(metric_columns(report), metric_rows(report))))
    if metric_note(report):
        print(metric_note(report))
    if group_lines(report):
        print()
        print("\n".join(group_lines(report)))
    print(f"report: {Path(report['paths']['html']).resolve()}")


def _eval(args) -> int:
    from eval.pipeline import run

    report = run(request_from_args(args, args.student))
    print_summary(report)
    return 0


# --------------------------------------------------------------------------------------------
# wavedistill demo


# the student preset that scored best after the demo's budget (10 minutes of 2 cores): the STFT loss alone beat
# KL + STFT in PESQ and DNSMOS on training and held-out voices in the ablation grid of docs/distill.md, and the
# log-mel L1 beside it raised PESQ further (docs/distill.md#the-mel-term)
DEMO_STUDENT = "configs/student/clarinet_tiny_stft_mel.yaml"


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the tiny ClariNet student beside the shipped teacher (the preset that won "
                                    "the 10-minute grid), then evaluate both on the first 2 s of 1 test utterance "
                                    "of each voice of the demo corpus")
    p.add_argument("--config", default=DEMO_STUDENT,
                   help=f"the student preset (default {DEMO_STUDENT}: the STFT and log-mel losses, no teacher "
                        "term, the best at 10 minutes, docs/distill.md; configs/student/clarinet_tiny.yaml adds the "
                        "KL to the teacher)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="distillation budget in wall-clock minutes (default 10: the whole demo ~11 min on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=None, help="stop distillation after this many steps instead (or first)")
    add_eval_arguments(p, max_utterances=1, max_seconds=2.0, out="runs/demo")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    import dataclasses

    from distill.cli.commands import prepare_data, train
    from distill.config import load_config
    from distill.errors import ConfigError
    from distill.train.checkpoint import load_checkpoint
    from eval.pipeline import run
    from students.task import DistillTask, StudentConfig

    if args.minutes <= 0 or (args.steps is not None and args.steps < 1):
        raise ConfigError("--minutes must be > 0 and --steps >= 1 (e.g. --minutes 10, or --steps 500)")
    load_config(StudentConfig, args.config)  # a bad --config stops here, in one line, before any work
    out = Path(args.out)
    print("== 1/3 data: the bundled demo corpus", flush=True)
    prepare_data("demo", out / "data")
    student_dir = out / "student"
    resume = (student_dir / "checkpoints" / "latest.pt").is_file()
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    print(f"== 2/3 train the tiny ClariNet student ({args.config}) beside the shipped teacher ({budget}"
          f"{', continuing the previous demo run' if resume else ''}) -> {student_dir}", flush=True)
    done = load_checkpoint(student_dir)["step"] if resume else 0
    # --steps N: N more steps; --minutes: the clock decides (a resumed run's saved train.steps must not;
    # 20,000 more is the preset's length, far beyond what a CPU budget reaches)
    train(StudentConfig, DistillTask, student_dir, args.config,
          [f"train.max_minutes={0 if args.steps else args.minutes}", f"train.device={args.device}",
           f"train.steps={done + (args.steps or 20_000)}"], resume=resume)
    print("== 3/3 evaluate teacher and student on the test split", flush=True)
    # the demo's flags are eval's, without --teacher, --data and --split: the shipped teacher, the demo test split
    report = run(dataclasses.replace(request_from_args(args, [str(student_dir)]), out=str(out / "report")))
    print_summary(report)
    return 0


# --------------------------------------------------------------------------------------------
# wavedistill listen / listen-results


def add_listen(sub) -> None:
    p = sub.add_parser("listen", help="write a blind listening test (MUSHRA, A/B, MOS) from an evaluation report")
    p.add_argument("report", help="the --out folder of `wavedistill eval` (or runs/demo/report)")
    p.add_argument("--tests", default="mushra,ab,mos", help="comma list of mushra, ab, mos")
    p.add_argument("--ab", default="", help="the A/B pair, e.g. 'student distill,teacher' (default: the last "
                                            "student against the teacher)")
    p.add_argument("--max-utterances", type=int, default=0, help="use the first N utterances (0 = all)")
    p.add_argument("--title", default="Listening test")
    p.add_argument("--out", default=None, help="folder for index.html (default: REPORT/listen)")
    p.add_argument("--serve", action="store_true",
                   help="serve the folder on 127.0.0.1 and write posted results into its results/ until Ctrl-C")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_listen)


def _listen(args) -> int:
    from distill.errors import ConfigError
    from eval.listen import build_spec, make_server, write_page

    report = Path(args.report)
    if args.max_utterances < 0:
        raise ConfigError("--max-utterances must be >= 0")
    spec = build_spec(report, tuple(t.strip() for t in args.tests.split(",") if t.strip()), args.ab,
                      args.max_utterances)
    out = Path(args.out) if args.out else report / "listen"
    page = write_page(spec, out, args.title)
    count = len(spec.utterances)
    print(f"{page} ({page.stat().st_size / 1e6:.1f} MB, every clip embedded): {', '.join(spec.tests)} on {count} "
          f"utterance(s), systems {', '.join(spec.systems)}" + (f"; A/B {' vs '.join(spec.ab_pair)}" if spec.ab_pair
                                                               else ""))
    if not args.serve:
        print("send the page to the raters; they export their ratings as JSON; then: wavedistill listen-results FILES")
        return 0
    try:
        server = make_server(out, args.port)
    except OSError as err:
        raise ConfigError(f"--port {args.port}: cannot listen on 127.0.0.1 ({err.strerror}); "
                          "pick another port") from None
    print(f"serving http://127.0.0.1:{server.server_address[1]}/index.html ; results go to {out / 'results'}; "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_listen_results(sub) -> None:
    p = sub.add_parser("listen-results", help="aggregate listening-test ratings: means, 95%% CIs, post-screening")
    p.add_argument("files", nargs="+", help="results JSON files (the page's export or --serve's results/*.json)")
    p.add_argument("--out", default=None, help="folder for results.md/json/png (default: beside the first file)")
    p.set_defaults(func=_listen_results)


def _listen_results(args) -> int:
    import json

    from distill.audio.plots import save_figure
    from eval.listen import aggregate, load_results, results_figure, to_markdown
    from eval.report import _strict

    results = load_results(args.files)
    agg = aggregate(results)
    out = Path(args.out) if args.out else Path(args.files[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_strict(agg), indent=1, allow_nan=False), encoding="utf-8")
    markdown = to_markdown(agg)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    save_figure(results_figure(agg), out / "results.png")
    print(markdown)
    print(f"written: {out / 'results.md'}, results.json, results.png")
    return 0
