"""`wavedistill distill`."""

from __future__ import annotations

from pathlib import Path

from distill.commands import add_training_arguments, run_training


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="distil a parallel IAF student from a frozen autoregressive teacher")
    add_training_arguments(p, default_config="configs/student/clarinet_tiny.yaml", out_required=False)
    p.add_argument("--teacher", default=None, help="teacher checkpoint or run folder (default: the shipped demo teacher)")
    p.set_defaults(func=_distill)


def _distill(args) -> int:
    from students.task import DistillTask, StudentConfig

    if args.teacher:
        args.overrides = list(args.overrides) + [f"teacher={args.teacher}"]
    if args.out is None:
        args.out = str(Path("runs") / f"distill_{Path(args.config or args.default_config).stem}")
    return run_training(args, StudentConfig, DistillTask)
