"""`wavedistill vocode`: mel files (a TTS model's) or audio files (copy synthesis) -> one WAV each.

Inputs are files, folders (their mel and audio files, sorted) or globs. A mel file is a .npy or .pt
array of one utterance, (n_mels, frames) or (frames, n_mels) (told apart by the model's n_mels; a
leading axis of length 1 is dropped), in the model's convention: natural log of the Slaney mel
magnitude, floored at the features' log_floor (`distill.audio.LogMel`). Any other file is read as
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

import numpy as np
import torch
from tqdm import tqdm

from distill.audio import load_audio, save_wav, silence_value
from distill.errors import AudioError, MelError
from students.vocoder import Vocoder

log = logging.getLogger("wavedistill")

MEL_SUFFIXES = (".npy", ".pt")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> (the input files in order, without repeats; one problem line for each
    spec that names nothing)."""
    files: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in MEL_SUFFIXES + AUDIO_SUFFIXES)
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


def read_mel(path: Path, n_mels: int) -> torch.Tensor:
    """A mel file as (n_mels, frames) float32 (orientation detected from n_mels), or a `MelError`."""
    with open(path, "rb") as f:
        head = f.read(6)
    suffix = path.suffix.lower()
    if suffix == ".npy" and head != b"\x93NUMPY":
        raise MelError(path, "not a .npy file (no NumPy header); write mels with numpy.save")
    if suffix == ".pt" and head[:4] != b"PK\x03\x04":
        raise MelError(path, "not a .pt file written by torch.save (no zip archive header)")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise MelError(path, f"holds {array.dtype} values, not numbers")
            mel = torch.from_numpy(np.asarray(array, dtype=np.float32))
        else:
            mel = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(mel, np.ndarray):
                mel = torch.from_numpy(mel)
            if not isinstance(mel, torch.Tensor):
                raise MelError(path, f"holds a {type(mel).__name__}, not one tensor (save the mel with torch.save(mel, path))")
            mel = mel.detach().float()
    except MelError:
        raise
    except Exception as err:  # numpy and torch raise many types for a damaged or foreign file
        text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise MelError(path, f"not readable as a {path.suffix} array ({text})") from None
    while mel.dim() > 2 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.dim() != 2:
        raise MelError(path, f"has shape {tuple(mel.shape)}; a mel is (n_mels, frames) or (frames, n_mels)")
    if mel.shape[0] != n_mels and mel.shape[1] == n_mels:
        mel = mel.T
    if mel.shape[0] != n_mels:
        raise MelError(path, f"has shape {tuple(mel.shape)}: neither axis is the model's {n_mels} mel channels")
    return mel.contiguous()


def range_warning(mel: torch.Tensor, floor: float) -> str | None:
    """A line when a mel's values cannot be natural-log magnitudes floored at `floor` (a dB, log10 or
    linear mel vocodes to noise), else None."""
    low, high = float(mel.min()), float(mel.max())
    if low < floor - 0.5:
        return (f"values reach {low:.1f}, below the model's silence floor {floor:.2f} (natural log of log_floor): "
                "a dB or differently floored mel? the audio will be wrong")
    if low >= 0 and high > 20:
        return f"values are in [{low:.1f}, {high:.1f}]: a linear (not log) mel? the audio will be wrong"
    if high < floor + 3:
        return f"values stay within [{low:.2f}, {high:.2f}], near the silence floor {floor:.2f}: silence, or log10?"
    return None


@dataclass
class VocodeResult:
    written: list[Path]
    skipped: list[Path]  # outputs that existed (no --overwrite)
    failed: list[str]  # one line each


def vocode_files(vocoder: Vocoder, specs: list[str], out: str | Path, batch: int = 8, seed: int | None = 0,
                 temperature: float | None = None, mode: str = "sample", overwrite: bool = False,
                 progress: bool = True) -> VocodeResult:
    """Vocode every input (see the module docstring). The i-th input's noise is drawn from seed + i for
    a student, so its audio does not depend on --batch."""
    if batch < 1:
        from distill.errors import ConfigError

        raise ConfigError(f"--batch must be >= 1, got {batch}")
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
                             seed=None if seed is None else seed + run[0][0], mode=mode)
            for (_, _, target), audio in zip(run, audios):
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
