"""`wavedistill eval-teacher` (copy synthesis with a teacher, scored next to Griffin-Lim and the
reference) and `wavedistill demo`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_eval_teacher(sub) -> None:
    p = sub.add_parser("eval-teacher", help="copy-synthesise a corpus split with a teacher; PESQ vs Griffin-Lim")
    p.add_argument("--teacher", default=None, help="teacher checkpoint or run folder (default: the shipped demo teacher)")
    p.add_argument("--data", default="demo", help="corpus: 'demo', an LJSpeech folder or a folder of audio files")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--max-utterances", type=int, default=10, help="0 = all")
    p.add_argument("--max-seconds", type=float, default=0.0, help="cut each utterance to this length (0 = whole)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances sampled together")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval_teacher")
    p.set_defaults(func=_eval_teacher)


def add_demo(sub) -> None:
    from distill.commands import add_data_stage_arguments

    p = sub.add_parser("demo", help="the end-to-end demo on the bundled corpus (today: data + teacher copy synthesis)")
    add_data_stage_arguments(p)
    p.add_argument("--max-utterances", type=int, default=3, help="test utterances the teacher re-synthesises")
    p.add_argument("--max-seconds", type=float, default=2.0, help="seconds of each (AR sampling is slow on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_demo, out="runs/demo")


def _demo(args) -> int:
    from distill.commands import run_data_stage

    run_data_stage(args, "demo")
    teacher_args = argparse.Namespace(
        teacher=None, data="demo", split="test", max_utterances=args.max_utterances, max_seconds=args.max_seconds,
        batch_size=16, temperature=1.0, device=args.device, seed=0, out=str(Path(args.out) / "teacher"),
    )
    _eval_teacher(teacher_args)
    print(
        "demo: ran the data stage and the shipped teacher's copy synthesis (scored next to Griffin-Lim). "
        "Distilling a student and its evaluation join this command when they land."
    )
    return 0


def _eval_teacher(args) -> int:
    import torch

    from distill.config import FeatureConfig
    from distill.distributed import pick_device
    from eval.baselines import griffin_lim
    from eval.copy_synthesis import load_clips, score_systems, teacher_synthesis, write_copy_synthesis
    from teachers.pretrained import demo_teacher_path, load_teacher

    device = pick_device(args.device)
    teacher_path = Path(args.teacher) if args.teacher else demo_teacher_path()
    teacher, payload = load_teacher(teacher_path, device=device)
    features = FeatureConfig(**payload["features"])
    clips = load_clips(args.data, args.split, features, args.max_utterances, args.max_seconds)
    torch.manual_seed(args.seed)
    silence = torch.log(torch.tensor(features.log_floor)).item()
    audio, seconds = teacher_synthesis(teacher, clips, silence, device, args.batch_size, args.temperature,
                                       progress=sys.stderr.isatty())
    samples = sum(c.reference.numel() for c in clips)
    systems = {
        "reference": [c.reference for c in clips],
        "griffin_lim": [griffin_lim(c.mel, features) for c in clips],
        "teacher": audio,
    }
    table = score_systems(clips, systems, features)
    settings = {
        "teacher": str(teacher_path),
        "teacher_step": payload["step"],
        "data": args.data,
        "split": args.split,
        "utterances": len(clips),
        "audio_seconds": samples / features.sample_rate,
        # one cold run incl. warm-up and padded batch items: a rough figure; `wavedistill bench` measures speed
        "teacher_synthesis_seconds_cold": seconds,
        "teacher_samples_per_s_cold": samples / seconds,
        "batch_size": args.batch_size,
        "temperature": args.temperature,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
    }
    summary = write_copy_synthesis(Path(args.out), clips, systems, table, features, settings)
    print(summary["markdown"])
    print(json.dumps({k: settings[k] for k in ("utterances", "audio_seconds", "teacher_samples_per_s_cold", "device")}))
    print(f"written: {Path(args.out) / 'copy_synthesis.json'}")
    return 0
