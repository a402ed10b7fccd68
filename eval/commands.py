"""`wavedistill eval` (copy synthesis with a teacher and students, scored next to Griffin-Lim and the
reference, written as a report) and `wavedistill demo` (distil the tiny ClariNet student from the
shipped teacher on the bundled corpus, then evaluate both)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from students.iaf import IAFStudent

log = logging.getLogger("wavedistill")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="copy-synthesise a corpus split with a teacher and students; PESQ, RTF, report")
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint or run folder (default: the shipped demo teacher)")
    p.add_argument("--student", action="append", default=[], metavar="PATH",
                   help="student checkpoint or run folder; repeat for several (none: teacher and baselines only)")
    p.add_argument("--data", default="demo",
                   help="'demo', an LJSpeech folder or any folder of audio files (use --split all)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--checkpoints", default="",
                   help="quality over training: 'all' (every step checkpoint each --student run folder keeps; "
                        "train.keep_last sets how many) or steps, e.g. 1000,2000; each becomes a row and the report "
                        "plots every metric against the step (default: each run's latest checkpoint)")
    add_eval_arguments(p, max_utterances=10, max_seconds=0.0, out="runs/eval")
    p.set_defaults(func=_eval)


def add_eval_arguments(p: argparse.ArgumentParser, max_utterances: int, max_seconds: float, out: str) -> None:
    p.add_argument("--max-utterances", type=int, default=max_utterances,
                   help="0 = all (the teacher is slow: keep it small)")
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
                        "at its own synthesis temperature, its config's valid.temperature, and the students at 1: a "
                        "student distilled with loss.teacher_temperature T already imitates the teacher at T, so "
                        "an explicit value scales a tempered student's noise once more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speaker", default=None,
                   help="multi-speaker models: synthesise every clip as this speaker (default: each clip's own, "
                        "named by the corpus as in the teacher's training data)")
    p.add_argument("--systems", default="reference,griffin_lim,teacher,student",
                   help="comma list of the systems to synthesise and score, from reference, griffin_lim, teacher "
                        "and student (every --student); leaving out teacher skips its slow sampling (and the "
                        "speed-ups against it)")
    p.add_argument("--metrics", default="all",
                   help="library metrics beside PESQ, log-mel L1 and MR-STFT: all (default), none, or a comma list "
                        "of dnsmos, stoi, f0, mcd; each needs the eval extra (pip install 'wavedistill[eval]') "
                        "and is skipped with a warning where its package is missing")
    p.add_argument("--out", default=out, help="folder for report.json/md/html, wavs/, images/, tensorboard/")


def run_eval(args, students: list[str]) -> dict:
    """Load, synthesise, score and write the report. Returns the report dict (plus `paths`)."""
    import torch

    from distill.config import FeatureConfig
    from distill.distributed import pick_device
    from distill.env import collect
    from distill.errors import ConfigError
    from distill.folders import check_output_folder
    from eval.evaluate import SYSTEMS, EvalSettings, evaluate, load_clips
    from eval.metrics import resolve_metrics
    from eval.report import write_report
    from eval.timing import device_name
    from students.pretrained import load_student
    from teachers.pretrained import demo_teacher_path, file_sha256, load_teacher

    check_output_folder(args.out, "--out")
    if args.max_utterances < 0 or args.max_seconds < 0 or args.rtf_runs < 1 or args.rtf_seconds < 0:
        raise ConfigError("--max-utterances, --max-seconds and --rtf-seconds must be >= 0 and --rtf-runs >= 1")
    chosen = tuple(n.strip() for n in args.systems.split(",") if n.strip())
    unknown = [n for n in chosen if n not in SYSTEMS]
    if unknown or not chosen:
        raise ConfigError(f"--systems {args.systems!r}: choose from {', '.join(SYSTEMS)} "
                          "(comma separated, e.g. --systems reference,griffin_lim,student)")
    metrics, skipped = resolve_metrics(args.metrics)
    for line in skipped.values():
        log.warning(line)
    device = pick_device(args.device)
    if args.teacher_sampler == "auto":
        args.teacher_sampler = "graph" if device.type == "cuda" else "incremental"
    if args.teacher_sampler == "fast" and device.type != "cpu":
        raise ConfigError(f"--teacher-sampler fast is the CPU loop; with --device {device} use --teacher-sampler graph")
    teacher_path = Path(args.teacher) if args.teacher else demo_teacher_path()
    teacher, payload = load_teacher(teacher_path, device=device)
    student_temperature = 1.0 if args.temperature is None else args.temperature
    if args.temperature is None:  # the temperature its trainer documented for it
        args.temperature = float(payload.get("config", {}).get("valid", {}).get("temperature", 1.0))
    features = FeatureConfig(**payload["features"])
    if 0 < args.rtf_seconds * features.sample_rate < features.n_fft:
        raise ConfigError(f"--rtf-seconds {args.rtf_seconds} is shorter than one STFT window "
                          f"({features.n_fft / features.sample_rate:.3f} s); "
                          "pass a longer clip or 0 (the whole first clip)")
    teacher_sha = file_sha256(teacher_path)
    loaded: dict[str, IAFStudent] = {}
    student_info: dict[str, dict] = {}
    for path, series in _expand_checkpoints(students, getattr(args, "checkpoints", "")):
        student, spayload = load_student(path, features=features, device=device)
        name = _student_name(Path(series or path), loaded, spayload["step"] if series else None)
        source = spayload.get("extra", {}).get("teacher", {})
        if source.get("sha256") and source["sha256"] != teacher_sha:
            log.warning("%s was distilled from %s (sha256 %s...), not from the teacher evaluated here (%s)",
                        name, source.get("path"), source["sha256"][:12], teacher_path)
        loaded[name] = student
        student_info[name] = {"path": str(path), "step": spayload["step"], "teacher_path": source.get("path"),
                              "teacher_sha256": source.get("sha256"),
                              "teacher_matches": source.get("sha256") == teacher_sha,
                              "run": str(_run_folder(Path(path)) or ""), "series": str(series or "")}
    speaker_map = payload.get("extra", {}).get("speakers") if teacher.speaker is not None else None
    source = payload.get("config", {}).get("data", {}).get("speakers", "") if speaker_map else ""
    clips = load_clips(args.data, args.split, features, args.max_utterances, args.max_seconds,
                       "" if getattr(args, "speaker", None) else source)
    if speaker_map is not None:
        _assign_speakers(clips, speaker_map, getattr(args, "speaker", None), loaded, student_info)
    elif getattr(args, "speaker", None):
        raise ConfigError(f"--speaker {args.speaker}: the teacher {teacher_path.name} has no speaker input")
    settings = EvalSettings(
        pesq_modes=("wb", "nb") if args.pesq_nb else ("wb",), teacher_batch=args.teacher_batch,
        teacher_sampler=args.teacher_sampler,
        temperature=args.temperature, student_temperature=student_temperature, seed=args.seed,
        rtf_seconds=args.rtf_seconds, rtf_runs=args.rtf_runs,
        autocast_dtype=args.student_dtype, student_compile=args.student_compile,
        systems=chosen, metrics=tuple(m.name for m in metrics),
    )
    log.info("evaluating %d utterance(s) (%.1f s) on %s", len(clips),
             sum(c.reference.numel() for c in clips) / features.sample_rate, device)
    table, systems = evaluate(teacher, loaded, clips, features, device, settings, progress=sys.stderr.isatty(),
                              log=log.info)
    report = {
        "settings": {
            "teacher": {"path": str(teacher_path), "step": payload["step"], "sha256": teacher_sha,
                        "run": str(_run_folder(teacher_path) or "")},
            "students": student_info,
            "data": args.data, "split": args.split, "utterances": len(clips),
            "utterance_ids": [c.id for c in clips],
            "audio_seconds": sum(c.reference.numel() for c in clips) / features.sample_rate,
            "max_utterances": args.max_utterances, "max_seconds": args.max_seconds,
            "pesq_modes": list(settings.pesq_modes), "student_dtype": args.student_dtype,
            "student_compile": args.student_compile,
            "teacher_sampler": args.teacher_sampler,
            "temperature": args.temperature, "student_temperature": student_temperature, "seed": args.seed,
            "rtf_seconds": args.rtf_seconds, "rtf_runs": args.rtf_runs, "rtf_warmup": settings.rtf_warmup,
            "systems": list(chosen), "metrics": list(settings.metrics), "metrics_skipped": skipped,
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "features": payload["features"],
        },
        "versions": {k: v for k, v in collect().info.items() if isinstance(v, (str, int, float, bool)) or v is None},
        "systems": table,
    }
    report["paths"] = {k: str(v) for k, v in write_report(Path(args.out), report, clips, systems, features).items()}
    return report


def _assign_speakers(clips: list, speaker_map: dict, speaker: str | None, students: dict, info: dict) -> None:
    """Each clip's speaker id for a multi-speaker teacher: --speaker for all, else the clip's own (from the
    corpus, named the way the teacher's training data named them); students must share the teacher's map."""
    from distill.errors import ConfigError

    for name, student in students.items():
        if student.speaker is None or student.speaker.num_embeddings != len(speaker_map):
            raise ConfigError(f"student {name} ({info[name]['path']}) does not have the teacher's "
                              f"{len(speaker_map)} speakers; evaluate it with the teacher it was distilled from")
    known = ", ".join(sorted(speaker_map))
    if speaker is not None:
        if speaker not in speaker_map:
            raise ConfigError(f"unknown speaker {speaker!r}; known: {known}")
        for clip in clips:
            clip.speaker = speaker_map[speaker]
        return
    unknown = sorted({c.speaker_name for c in clips if c.speaker_name not in speaker_map})
    if unknown:
        raise ConfigError(f"the evaluation split's speakers {', '.join(map(repr, unknown[:5]))} are not the teacher's "
                          f"({known}); pass --speaker NAME to synthesise every clip with one of them")
    for clip in clips:
        clip.speaker = speaker_map[clip.speaker_name]


def _run_folder(path: Path) -> Path | None:
    """The run folder a student argument belongs to (itself, or the folder of its checkpoints/)."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def _expand_checkpoints(students: list[str], checkpoints: str) -> list[tuple[str, str | None]]:
    """(checkpoint path, the run folder when it is one of several checkpoints of it) per student system.
    checkpoints: "" (each run's latest), "all" (every step checkpoint a run folder keeps) or a comma list
    of steps."""
    from distill.checkpoint import CheckpointManager
    from distill.errors import ConfigError

    if not checkpoints:
        return [(path, None) for path in students]
    wanted = None if checkpoints == "all" else checkpoints.split(",")
    if wanted is not None and not all(w.strip().isdigit() for w in wanted):
        raise ConfigError(f"--checkpoints {checkpoints!r}: give 'all' or steps separated by commas, e.g. 1000,2000")
    out: list[tuple[str, str | None]] = []
    for path in students:
        if not Path(path).is_dir():
            raise ConfigError(f"--checkpoints needs run folders: {path} is not one (pass the run folder, "
                              "e.g. --student runs/distill)")
        files = {int(f.stem.split("_")[1]): f for f in CheckpointManager(path).step_files()}
        steps = sorted(files) if wanted is None else [int(w) for w in wanted]
        missing = [s for s in steps if s not in files]
        if missing or not steps:
            kept = ", ".join(map(str, sorted(files))) or "none"
            raise ConfigError(f"{path}: no step checkpoint for step(s) {', '.join(map(str, missing)) or '-'}; "
                              f"it keeps {kept} (train.keep_last sets how many are kept)")
        out += [(str(files[s]), path) for s in steps]
    return out


def _student_name(path: Path, taken: dict, step: int | None = None) -> str:
    """The run folder's (or checkpoint file's) name, prefixed 'student ' unless it says so already,
    with ' @ step' for one of several checkpoints of a run; unique among the students."""
    stem = path.name if path.is_dir() else (path.parent.parent.name if path.parent.name == "checkpoints" else path.stem)
    base = stem if stem.lower().startswith("student") else f"student {stem}"
    base += f" @ {step}" if step is not None else ""
    name, n = base, 2
    while name in taken:
        name, n = f"{base} ({n})", n + 1
    return name


def print_summary(report: dict) -> None:
    from eval.report import (
        _markdown_table,
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
    print(f"report: {Path(report['paths']['html']).resolve()}")


def _eval(args) -> int:
    report = run_eval(args, args.student)
    print_summary(report)
    return 0


# --------------------------------------------------------------------------------------------
# wavedistill demo


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="distil the tiny ClariNet student from the shipped teacher, then evaluate both")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="distillation budget in wall-clock minutes (default 10: the whole demo ~11 min on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=None, help="stop distillation after this many steps instead (or first)")
    add_eval_arguments(p, max_utterances=3, max_seconds=2.0, out="runs/demo")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from distill.commands import run_data_stage, run_training
    from distill.errors import ConfigError
    from students.task import DistillTask, StudentConfig

    if args.minutes <= 0 or (args.steps is not None and args.steps < 1):
        raise ConfigError("--minutes must be > 0 and --steps >= 1 (e.g. --minutes 10, or --steps 500)")
    out = Path(args.out)
    print("== 1/3 data: the bundled demo corpus", flush=True)
    run_data_stage(argparse.Namespace(config=None, split="splits", out=str(out / "data"), overrides=[]), "demo")
    student_dir = out / "student"
    resume = (student_dir / "checkpoints" / "latest.pt").is_file()
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    print(f"== 2/3 distil the tiny ClariNet student from the shipped teacher ({budget}"
          f"{', continuing the previous demo run' if resume else ''}) -> {student_dir}", flush=True)
    overrides = [f"train.max_minutes={0 if args.steps else args.minutes}", f"train.device={args.device}"]
    done = 0
    if resume:
        from distill.checkpoint import load_checkpoint

        done = load_checkpoint(student_dir)["step"]
    # --steps N: N more steps; --minutes: the clock decides (a resumed run's saved train.steps must not;
    # 20,000 more is the preset's length, far beyond what a CPU budget reaches)
    overrides.append(f"train.steps={done + (args.steps or 20_000)}")
    run_training(argparse.Namespace(config=None, default_config="configs/student/clarinet_tiny.yaml",
                                    out=str(student_dir), resume=resume, init=None, steps=None, overrides=overrides),
                 StudentConfig, DistillTask)
    print("== 3/3 evaluate teacher and student on the test split", flush=True)
    eval_args = argparse.Namespace(**{**vars(args), "teacher": None, "data": "demo", "split": "test",
                                      "out": str(out / "report")})
    report = run_eval(eval_args, [str(student_dir)])
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

    from distill.plots import save_figure
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
