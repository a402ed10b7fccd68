"""The evaluation pipeline: an `EvalRequest` in, a report out (`run`). The CLI (`wavedistill eval`)
only maps its flags to a request, and the demo builds one; scripts can do the same:

    from eval.evaluate import EvalRequest
    from eval.pipeline import run
    report = run(EvalRequest(students=("runs/distill",), max_utterances=4, systems=("reference", "student")))
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import torch

from distill.cli.env import collect
from distill.config import FeatureConfig
from distill.errors import ConfigError
from distill.train.checkpoint import CheckpointManager
from distill.train.distributed import pick_device
from distill.train.folders import check_output_folder
from eval.degrade import MelDegradation
from eval.evaluate import STUDENT, TEACHER, Clip, EvalRequest, evaluate, load_clips, voice_sections
from eval.metrics import resolve_metrics
from eval.report import write_report
from eval.timing import device_name
from eval.voices import VOICE_RULE, selection_note, voice_groups
from students.iaf import IAFStudent
from students.pretrained import load_student
from teachers.pretrained import demo_teacher_path, file_sha256, load_teacher, recorded_temperatures
from teachers.sampling import check_voiced_temperature, reference_method, resolve_temperatures

log = logging.getLogger("wavedistill")


def run(request: EvalRequest) -> dict:
    """Validate, load, synthesise, score and write the report into `request.out`. Returns the report
    (the dict written as report.json, plus `paths`). Its settings are the request as it ran (the
    "auto" sampler, the teacher's own temperature and the installed metrics made concrete), with the
    teacher and students expanded into their provenance, and the facts of the run (device, clips)."""
    request.validate()
    check_output_folder(request.out, "--out")
    metrics, skipped = resolve_metrics(",".join(request.metrics))
    for line in skipped.values():
        log.warning(line)
    device = pick_device(request.device)
    sampler = request.teacher_sampler
    if sampler == "fast" and device.type != "cpu":
        raise ConfigError(f"--teacher-sampler fast is the CPU loop; with --device {device} use --teacher-sampler graph")
    teacher_path = Path(request.teacher) if request.teacher else demo_teacher_path()
    teacher, payload = load_teacher(teacher_path, device=device)
    if sampler == "auto":  # the reference sampler for evaluation: CUDA graphs on a GPU (where they cover the
        sampler = reference_method(teacher, device)  # teacher), incremental on a CPU
    student_temperature = request.student_temperature if request.temperature is None else request.temperature
    # the temperatures its trainer documented for it, unless told (a --temperature alone: everywhere)
    temperature, voiced = resolve_temperatures(recorded_temperatures(payload), request.temperature,
                                               request.voiced_temperature)
    if voiced is not None:
        check_voiced_temperature(teacher, temperature, voiced)
    request = dataclasses.replace(request, teacher=str(teacher_path), teacher_sampler=sampler, temperature=temperature,
                                  voiced_temperature=voiced,
                                  student_temperature=student_temperature, metrics=tuple(m.name for m in metrics))
    features = FeatureConfig(**payload["features"])
    if 0 < request.rtf_seconds * features.sample_rate < features.n_fft:
        raise ConfigError(f"--rtf-seconds {request.rtf_seconds} is shorter than one STFT window "
                          f"({features.n_fft / features.sample_rate:.3f} s); "
                          "pass a longer clip or 0 (the whole first clip)")
    teacher_sha = file_sha256(teacher_path)
    loaded: dict[str, IAFStudent] = {}
    student_info: dict[str, dict] = {}
    for path, series in _expand_checkpoints(request.students, request.checkpoints):
        student, spayload = load_student(path, features=features, device=device)
        name = _student_name(Path(series or path), loaded, spayload["step"] if series else None)
        source = spayload.get("extra", {}).get("teacher", {})
        if source.get("sha256") and source["sha256"] != teacher_sha:
            log.warning("%s was distilled from %s (sha256 %s...), not from the teacher evaluated here (%s)",
                        name, source.get("path"), source["sha256"][:12], teacher_path)
        loaded[name] = student
        compute = spayload.get("compute") or {}  # what its training loop spent (checkpoints since the count)
        student_info[name] = {"path": str(path), "step": spayload["step"], "teacher_path": source.get("path"),
                              "cpu_minutes": compute["cpu_s"] / 60 if "cpu_s" in compute else None,
                              "teacher_sha256": source.get("sha256"),
                              "teacher_matches": source.get("sha256") == teacher_sha,
                              "run": str(_run_folder(Path(path)) or ""), "series": str(series or ""),
                              "voices": spayload.get("extra", {}).get("voices")}
    speaker_map = payload.get("extra", {}).get("speakers") if teacher.speaker is not None else None
    source = payload.get("config", {}).get("data", {}).get("speakers", "") if speaker_map else ""
    clips = load_clips(request.data, request.split, features, request.max_utterances, request.max_seconds,
                       "" if request.speaker else source)
    degradation = MelDegradation.parse(request.degrade_mels)
    if degradation:  # every system from the same degraded mels, each clip's noise from its own seed
        for i, clip in enumerate(clips):
            clip.degraded = degradation.apply(clip.mel, request.seed + i)
        log.info("every system synthesises from degraded mels: %s", degradation.describe())
    if speaker_map is not None:
        _assign_speakers(clips, speaker_map, request.speaker, loaded, student_info)
    elif request.speaker:
        raise ConfigError(f"--speaker {request.speaker}: the teacher {teacher_path.name} has no speaker input")
    log.info("evaluating %d utterance(s) (%.1f s) on %s", len(clips),
             sum(c.reference.numel() for c in clips) / features.sample_rate, device)
    teacher_voices = payload.get("extra", {}).get("voices")
    recorded = {**({TEACHER: teacher_voices} if TEACHER in request.systems else {}),
                **({name: info["voices"] for name, info in student_info.items()} if STUDENT in request.systems
                   else {})}
    groups = _groups(clips, recorded, request.training_voices)
    table, systems = evaluate(teacher, loaded, clips, features, device, request, progress=sys.stderr.isatty(),
                              log=log.info)
    settings = {
        **dataclasses.asdict(request),
        "teacher": {"path": str(teacher_path), "step": payload["step"], "sha256": teacher_sha,
                    "run": str(_run_folder(teacher_path) or ""), "voices": teacher_voices},
        "students": student_info,
        "metrics_skipped": skipped,
        "selection": selection_note(request.max_utterances, [c.voice for c in clips]),
        "voice_groups": {"rule": VOICE_RULE, "recorded": recorded, "groups": groups},
        "utterances": len(clips), "utterance_ids": [c.id for c in clips],
        "audio_seconds": sum(c.reference.numel() for c in clips) / features.sample_rate,
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "features": payload["features"],
        "mel_degradation": {**degradation.record(), "description": degradation.describe()},
    }
    report = {
        "settings": settings,
        "versions": {k: v for k, v in collect().info.items() if isinstance(v, (str, int, float, bool)) or v is None},
        "systems": table,
    }
    if len(groups) > 1:  # a corpus with one voice label (or none) reports as one table
        library_keys = tuple(k for m in metrics for k in m.keys)
        report["voices"], report["groups"] = voice_sections(table, groups, request.pesq_modes, library_keys)
    report["paths"] = {k: str(v) for k, v in write_report(Path(request.out), report, clips, systems, features).items()}
    return report


def _groups(clips: list[Clip], recorded: dict[str, list[str] | None],
            training_voices: tuple[str, ...] | None) -> dict[str, str]:
    """Each evaluated voice's group (`eval.voices.voice_groups`); a --training-voices name that no clip
    carries is warned about (a misspelt name would silently move its voice to the held-out group)."""
    voices = sorted({c.voice for c in clips})
    missing = sorted(set(training_voices or ()) - set(voices))
    if missing and len(voices) > 1:
        log.warning("--training-voices %s: no evaluated clip has this voice (the clips' voices: %s)",
                    ",".join(missing), ", ".join(voices))
    return voice_groups(voices, recorded, training_voices)


def _assign_speakers(clips: list, speaker_map: dict, speaker: str | None, students: dict, info: dict) -> None:
    """Each clip's speaker id for a multi-speaker teacher: --speaker for all, else the clip's own (from the
    corpus, named the way the teacher's training data named them); students must share the teacher's map."""
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


def _expand_checkpoints(students: tuple[str, ...], checkpoints: str) -> list[tuple[str, str | None]]:
    """(checkpoint path, the run folder when it is one of several checkpoints of it) per student system.
    checkpoints: "" (each run's latest), "all" (every step checkpoint a run folder keeps) or a comma list
    of steps."""
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
