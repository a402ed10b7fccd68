"""`wavedistill distill`."""

from __future__ import annotations

import logging
from pathlib import Path

from distill.cli.commands import add_training_arguments, fit, training_config
from distill.train.folders import check_output_folder

log = logging.getLogger("wavedistill")


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="distil a parallel IAF student from a frozen autoregressive teacher")
    add_training_arguments(p, default_config="configs/student/clarinet_tiny.yaml", out_required=False)
    p.add_argument("--teacher", default=None,
                   help="teacher checkpoint or run folder (default: the shipped universal teacher)")
    p.set_defaults(func=_distill)


def _distill(args) -> int:
    from students.task import DistillTask, StudentConfig, teacher_settings

    if args.teacher:
        args.overrides = list(args.overrides) + [f"teacher={args.teacher}"]
    if args.out is None:
        args.out = str(Path("runs") / f"distill_{Path(args.config or args.default_config).stem}")
    check_output_folder(args.out, "--out")  # before any work, the config.yaml of a run to resume included
    if not args.resume:  # a resumed run keeps what its config.yaml recorded
        taken = teacher_settings(training_config(args, StudentConfig), user_keys(args))
        if taken:
            log.info("taking the teacher's settings: %s", ", ".join(f"{k}={v!r}" for k, v in taken.items()))
            args.overrides = list(args.overrides) + [f"{k}={yaml_value(v)}" for k, v in taken.items()]
    fit(training_config(args, StudentConfig), DistillTask, args.out, args.resume, args.init)
    return 0


def yaml_value(value) -> str:
    """A value as an override writes it (YAML: 1e-05 is a string there, 1.0e-05 a float)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def user_keys(args) -> set[str]:
    """The config keys the user wrote: command-line overrides, and the keys of a --config file of their own
    (not a shipped preset in configs/; the file itself, not what it extends)."""
    import yaml

    from distill.config import PROJECT_ROOT, config_path, parse_override

    keys = {".".join(parse_override(o)[0]) for o in args.overrides if "=" in o}
    if args.config:
        path = config_path(args.config)
        if path.is_file() and (PROJECT_ROOT / "configs").resolve() not in path.resolve().parents:
            keys |= dotted_keys(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return keys


def dotted_keys(data, prefix: str = "") -> set[str]:
    """The leaf keys of nested mappings, dotted as overrides write them ({"a": {"b": 1}} -> {"a.b"})."""
    if not isinstance(data, dict):
        return {prefix.rstrip(".")}
    return set().union(*[dotted_keys(v, f"{prefix}{k}.") for k, v in data.items()])


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a distilled student to ONNX (run it with onnxruntime, no PyTorch)")
    p.add_argument("--student", required=True, help="student checkpoint or run folder")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.set_defaults(func=_export)


def _export(args) -> int:
    import numpy as np

    from distill.train.folders import check_output_file
    from students.export import OnnxStudent, export_onnx, noise
    from students.iaf import synthesize
    from students.pretrained import load_student

    check_output_file(args.out, "--out")
    student, payload = load_student(args.student)
    path = export_onnx(student, args.out)
    # check the file against PyTorch on a fresh input before calling it done
    import torch

    mel = np.random.default_rng(0).normal(-5, 2, (1, student.features.n_mels, 20 + 2 * student.mel_context))
    z = noise(student, (1, 20 * student.hop_length))
    ours = synthesize(student, torch.from_numpy(mel).float(), z=torch.from_numpy(z)).numpy()
    error = float(np.abs(OnnxStudent(path).synthesize(mel, z) - ours).max())
    print(f"exported {args.student} (step {payload['step']}) -> {path} ({path.stat().st_size / 1e6:.1f} MB); "
          f"onnxruntime vs PyTorch on the same noise: max |difference| {error:.2e}")
    return 0


def add_vocode(sub) -> None:
    p = sub.add_parser("vocode",
                       help="mel files (a TTS model's) or audio files -> one WAV each, by a student or a teacher")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="mel files (.npy/.pt, (n_mels, frames) or (frames, n_mels)), audio files (copy synthesis), "
                        "folders or globs")
    which = p.add_mutually_exclusive_group()  # neither: the shipped teacher
    which.add_argument("--student", default=None, help="student checkpoint or run folder (parallel synthesis)")
    which.add_argument("--teacher", nargs="?", const="", default=None,
                       help="teacher checkpoint or run folder (autoregressive; no value, or neither option: the "
                            "shipped pretrained teacher)")
    p.add_argument("--out", required=True, help="folder for the WAVs (OUT/<input stem>.wav)")
    p.add_argument("--temperature", type=float, default=None,
                   help="noise scale (default: a teacher's recorded synthesis temperature; 1 for a student); given "
                        "alone it applies everywhere (a teacher's recorded voiced temperature is then not used)")
    p.add_argument("--voiced-temperature", type=float, default=None, metavar="T",
                   help="teacher with a pitch source only: sample voiced speech at this temperature and unvoiced "
                        "speech at --temperature, following the voicing it reads from the mel (docs/teacher.md); "
                        "0: none; default: the teacher's recorded one, unless --temperature is given (then: "
                        "everywhere)")
    p.add_argument("--mode", choices=["sample", "mean"], default="sample",
                   help="teacher only: draw each step, or take its mean (no hiss, duller)")
    p.add_argument("--postfilter", type=int, default=0, metavar="N",
                   help="N iterations of the mel post-filter on every output: each frame's mel-band energies moved "
                        "to the input mel's (distill.audio.postfilter; docs/vocode.md); 0 (default): none")
    p.add_argument("--speaker", default=None, help="a multi-speaker model's speaker: a name of its map or an id")
    p.add_argument("--seed", type=int, default=0, help="input i uses seed + i (students: independent of --batch)")
    p.add_argument("--batch", type=int, default=8, help="mels synthesised together")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="students: bfloat16 autocast (GPUs, CPUs with AVX512-BF16)")
    p.add_argument("--overwrite", action="store_true", help="replace WAVs that already exist (default: keep them)")
    p.set_defaults(func=_vocode)


def _vocode(args) -> int:
    import logging

    import torch

    from students.vocode_files import vocode_files
    from students.vocoder import Vocoder

    log = logging.getLogger("wavedistill")
    from distill.train.folders import check_output_folder

    check_output_folder(args.out, "--out")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.student is not None:
        vocoder = Vocoder.load(args.student, device=device, dtype=args.dtype)
    else:
        vocoder = Vocoder.load(args.teacher or None, device=device, dtype=args.dtype)
    if args.mode != "sample" and vocoder.kind == "student":
        log.warning("--mode applies to teachers; a student always samples")
    result = vocode_files(vocoder, args.inputs, args.out, batch=args.batch, seed=args.seed,
                          temperature=args.temperature, mode=args.mode, overwrite=args.overwrite, speaker=args.speaker,
                          voiced_temperature=args.voiced_temperature, postfilter=args.postfilter)
    for line in result.failed:
        log.error("%s (skipped)", line)
    if result.skipped:
        log.info("kept %d existing WAV(s) in %s (--overwrite replaces them)", len(result.skipped), args.out)
    log.info("vocoded %d file(s) -> %s with the %s (%s); %d failed", len(result.written), args.out, vocoder.kind,
             device, len(result.failed))
    return 1 if result.failed else 0
