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


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a distilled student to ONNX (run it with onnxruntime, no PyTorch)")
    p.add_argument("--student", required=True, help="student checkpoint or run folder")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=_export)


def _export(args) -> int:
    import numpy as np

    from students.export import OnnxStudent, export_onnx, noise
    from students.iaf import synthesize
    from students.pretrained import load_student

    student, payload = load_student(args.student)
    path = export_onnx(student, args.out)
    # check the file against PyTorch on a fresh input before calling it done
    import torch

    mel = np.random.default_rng(0).normal(-5, 2, (1, student.constructor_args["n_mels"], 20 + 2 * student.mel_context))
    z = noise(student, (1, 20 * student.hop_length))
    ours = synthesize(student, torch.from_numpy(mel).float(), z=torch.from_numpy(z)).numpy()
    error = float(np.abs(OnnxStudent(path).synthesize(mel, z) - ours).max())
    print(f"exported {args.student} (step {payload['step']}) -> {path} ({path.stat().st_size / 1e6:.1f} MB); "
          f"onnxruntime vs PyTorch on the same noise: max |difference| {error:.2e}")
    return 0
