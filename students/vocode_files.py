"""`wavedistill vocode`: mel files (a TTS model's) or audio files (copy synthesis) -> one WAV each.

Inputs are files, folders (their mel and audio files, sorted) or globs. A mel file is a .npy or .pt
array of one utterance, (n_mels, frames) or (frames, n_mels) (told apart by the model's n_mels; a
leading axis of length 1 is dropped), in the model's convention: natural log of the Slaney mel
magnitude, floored at the features' log_floor (`distill.audio.mel.LogMel`). Any other file is read as
audio and resynthesised from its own mel. Each output is `OUT/<input stem>.wav` with exactly
frames x hop samples. A bad input is one line naming the file and is skipped; outputs that exist are
kept unless `overwrite`.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from distill.audio.io import load_audio, save_wav
from distill.audio.mel import silence_value
from distill.audio.melfiles import MEL_SUFFIXES, range_warning, read_mel
from distill.data.corpus import audio_extensions
from distill.errors import AudioError, ConfigError, MelError
from students.vocoder import Vocoder

log = logging.getLogger("wavedistill")

def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> (the input files in order, without repeats; one problem line for each
    spec that names nothing)."""
    files: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            wanted = set(MEL_SUFFIXES) | audio_extensions()
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in wanted)
            if not found:
                problems.append(f"{spec}: folder holds no mel (.npy, .pt) or audio file")
            files += found
        elif path.exists():
            files.append(path)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{spec}: the pattern matches no file")
            files += found
        else:
            problems.append(f"{spec}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, problems


@dataclass
class VocodeResult:
    written: list[Path]
    skipped: list[Path]  # outputs that existed (no --overwrite)
    failed: list[str]  # one line each


def vocode_files(vocoder: Vocoder, specs: list[str], out: str | Path, batch: int = 8, seed: int | None = 0,
                 temperature: float | None = None, mode: str = "sample", overwrite: bool = False,
                 progress: bool = True, speaker: str | None = None,
                 voiced_temperature: float | None = None, postfilter: int = 0) -> VocodeResult:
    """Vocode every input (see the module docstring). The i-th input's noise is drawn from seed + i for
    a student, so its audio does not depend on --batch. postfilter: iterations of the mel post-filter on
    every output (`Vocoder.__call__`)."""
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if postfilter < 0:
        raise ConfigError(f"--postfilter must be >= 0 (the mel post-filter's iterations; 0: none), got {postfilter}")
    vocoder.speaker_ids(speaker, 1)  # a missing or unknown speaker is one line before any file is read
    vocoder.temperatures(temperature, voiced_temperature)  # one line for a temperature the model cannot take
    out = Path(out)
    files, failed = expand_inputs(specs)
    result = VocodeResult([], [], failed)
    jobs: list[tuple[int, Path, Path]] = []  # (index, input, output)
    claimed: dict[Path, Path] = {}
    for index, path in enumerate(files):
        target = out / f"{path.stem}.wav"
        if target in claimed:
            result.failed.append(f"{path}: {target} is already the output of {claimed[target]} (same name); rename one")
            continue
        claimed[target] = path
        if target.exists() and not overwrite:
            result.skipped.append(target)
            continue
        jobs.append((index, path, target))
    floor = silence_value(vocoder.features)
    bar = tqdm(total=len(jobs), desc="vocoding", unit="file", disable=not progress)
    for start in range(0, len(jobs), batch):
        group = []
        for index, path, target in jobs[start : start + batch]:
            try:
                mel = _input_mel(vocoder, path)
            except (MelError, AudioError) as err:
                result.failed.append(str(err))
                bar.update(1)
                continue
            warning = range_warning(mel, floor)
            if warning:
                log.warning("%s: %s", path, warning)
            group.append((index, mel, target))
        # one call per run of consecutive indices, so input i always gets seed + i
        for run in _consecutive(group):
            audios = vocoder([m for _, m, _ in run], temperature=temperature,
                             seed=None if seed is None else seed + run[0][0], mode=mode, speaker=speaker,
                             voiced_temperature=voiced_temperature, postfilter=postfilter)
            for (_, _, target), audio in zip(run, audios, strict=True):
                out.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                save_wav(partial, audio, vocoder.sample_rate)
                os.replace(partial, target)
                result.written.append(target)
                bar.update(1)
    bar.close()
    return result


def _input_mel(vocoder: Vocoder, path: Path) -> torch.Tensor:
    if path.suffix.lower() in MEL_SUFFIXES:
        return vocoder.check(read_mel(path, vocoder.n_mels), str(path))
    audio = load_audio(path, vocoder.sample_rate)
    if audio.numel() < vocoder.hop_length:
        raise AudioError(path, f"shorter than one hop ({vocoder.hop_length} samples)")
    return vocoder.mel(audio)


def _consecutive(group: list) -> list[list]:
    runs: list[list] = []
    for item in group:
        if runs and runs[-1][-1][0] + 1 == item[0]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs
