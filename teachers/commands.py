"""`wavedistill train-teacher`."""

from __future__ import annotations

from distill.cli.commands import add_training_arguments, run_training


def add_train_teacher(sub) -> None:
    p = sub.add_parser("train-teacher", help="train an autoregressive WaveNet teacher")
    add_training_arguments(p, default_config="configs/teacher/gaussian_tiny.yaml")
    p.set_defaults(func=_train_teacher)


def _train_teacher(args) -> int:
    from teachers.task import TeacherConfig, TeacherTask

    return run_training(args, TeacherConfig, TeacherTask)


def add_export_teacher(sub) -> None:
    p = sub.add_parser("export-teacher", help="write the slim, self-describing teacher (EMA weights) of a run")
    p.add_argument("--run", required=True, help="a teacher run folder or one of its checkpoints")
    p.add_argument("--out", required=True, help="output .pt file (e.g. teachers/pretrained/universal_lp_pitch_tiny.pt)")
    p.add_argument("--temperature", type=float, default=None,
                   help="record this as the teacher's synthesis temperature (its config's valid.temperature, "
                        "`wavedistill eval`'s default for it); default: keep the run's")
    p.add_argument("--voiced-temperature", type=float, default=None,
                   help="record this as its temperature in voiced speech (valid.voiced_temperature; a teacher with "
                        "a pitch source; 0: none); default: keep the run's")
    p.set_defaults(func=_export_teacher)


def _export_teacher(args) -> int:
    import json

    from distill.train.folders import check_output_file
    from teachers.pretrained import export_teacher

    check_output_file(args.out, "--out")
    print(json.dumps(export_teacher(args.run, args.out, args.temperature, args.voiced_temperature), indent=2))
    return 0
