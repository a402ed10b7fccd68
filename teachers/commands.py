"""`wavedistill train-teacher`."""

from __future__ import annotations

from distill.commands import add_training_arguments, run_training


def add_train_teacher(sub) -> None:
    p = sub.add_parser("train-teacher", help="train an autoregressive WaveNet teacher")
    add_training_arguments(p, default_config="configs/teacher/gaussian_tiny.yaml")
    p.set_defaults(func=_train_teacher)


def _train_teacher(args) -> int:
    from teachers.task import TeacherConfig, TeacherTask

    return run_training(args, TeacherConfig, TeacherTask)
