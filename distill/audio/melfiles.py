"""Mel files from outside (a TTS model's, another pipeline's): reading, matching them to audio, and
checking their convention against the models' own log-mel before anything trains on them.

A mel file is a .npy (`numpy.save`) or .pt (`torch.save` of one tensor) array of one utterance,
(n_mels, frames) or (frames, n_mels) (told apart by n_mels; a leading axis of length 1 is dropped).
The convention the models expect is `distill.audio.mel.LogMel`'s: natural log of the Slaney mel
magnitude, floored at features.log_floor, T // hop frames, frame i describing samples [i*hop, (i+1)*hop).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from distill.errors import MelError

MEL_SUFFIXES = (".npy", ".pt")
TRIM_FRAMES = 2  # an external mel this many frames off T // hop is trimmed (with a warning); more is refused


def read_mel(path: Path, n_mels: int, info: dict | None = None) -> torch.Tensor:
    """A mel file as (n_mels, frames) float32 (orientation detected from n_mels), or a `MelError`.
    info: a dict that gets "transposed" (the file was (frames, n_mels))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as err:
        raise MelError(path, f"not readable ({err.strerror or err})") from None
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
                raise MelError(
                    path, f"holds a {type(mel).__name__}, not one tensor (save the mel with torch.save(mel, path))"
                )
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
    transposed = mel.shape[0] != n_mels and mel.shape[1] == n_mels
    if transposed:
        mel = mel.T
    if info is not None:
        info["transposed"] = transposed
    if mel.shape[0] != n_mels:
        raise MelError(path, f"has shape {tuple(mel.shape)}: neither axis is the model's {n_mels} mel channels")
    return check_values(mel, path).contiguous()


def check_values(mel: torch.Tensor, name) -> torch.Tensor:
    """A (n_mels, F) mel with at least one frame and only finite values, as float32, or a `MelError`."""
    if mel.shape[-1] == 0:
        raise MelError(name, "has no frames")
    mel = mel.float()
    if not torch.isfinite(mel).all():
        raise MelError(name, f"contains {int((~torch.isfinite(mel)).sum())} NaN or Inf values")
    return mel


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


def mel_file(mel_dir: str | Path, utt_id: str) -> Path | None:
    """The mel file of an utterance in `mel_dir`: `<id>.npy` or `<id>.pt` (the id may hold folders,
    as in an audio-folder corpus), or None."""
    for suffix in MEL_SUFFIXES:
        path = Path(mel_dir) / f"{utt_id}{suffix}"
        if path.is_file():
            return path
    return None


def align_mel(mel: torch.Tensor, num_samples: int, hop: int, path: Path) -> tuple[torch.Tensor, int]:
    """An external mel against its audio's T // hop frames -> (the mel cut to at most T // hop frames,
    how many frames it was off). Up to TRIM_FRAMES off is accepted (the caller warns); more is a MelError."""
    frames = num_samples // hop
    off = mel.shape[-1] - frames
    if abs(off) > TRIM_FRAMES:
        raise MelError(path, f"has {mel.shape[-1]} frames but its audio ({num_samples} samples) has {frames} "
                       f"(T // hop, hop {hop}): a different hop, sample rate or file?")
    return mel[:, :frames], off


def _fit(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    """Least squares theirs ~ a * ours + b over matched values -> (a, b, correlation)."""
    x, y = ours.ravel().astype(np.float64), theirs.ravel().astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan, math.nan, math.nan
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b), float(np.corrcoef(x, y)[0, 1])


# (scale a of theirs = a * ours + b, what a mel at that scale is), natural-log magnitude being a = 1
SCALES = [
    (1.0, "natural log of the magnitude (the models' convention)"),
    (2.0, "natural log of the power (|X|^2), not the magnitude"),
    (1 / math.log(10), "log10 of the magnitude, not the natural log"),
    (2 / math.log(10), "log10 of the power"),
    (20 / math.log(10), "decibels (20 log10 |X|)"),
]


def _shifted(ours: torch.Tensor, theirs: torch.Tensor, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Matched frames, theirs i against ours i + shift, less 2 frames at each edge (where paddings differ)."""
    n = min(ours.shape[-1], theirs.shape[-1])
    lo, hi = max(0, -shift) + 2, min(n, ours.shape[-1] - shift) - 2
    return ours[:, lo + shift : hi + shift].numpy(), theirs[:, lo:hi].numpy()


def diagnose(pairs: list[tuple[torch.Tensor, torch.Tensor]], floor: float) -> dict:
    """Compare external mels with the models' own mels of the same audio. pairs: (ours (n_mels, F),
    theirs (n_mels, F')). -> statistics and one `verdict` line: "ok", or what the files most likely are."""
    shifts = {}
    for shift in (-1, 0, 1):  # theirs frame i against ours frame i + shift
        matched = [_shifted(ours, theirs, shift) for ours, theirs in pairs]
        shifts[shift] = _fit(np.concatenate([o for o, _ in matched], 1), np.concatenate([t for _, t in matched], 1))[2]
    best_shift = max(shifts, key=lambda s: -1 if math.isnan(shifts[s]) else shifts[s])
    if not shifts[best_shift] > shifts[0] + 0.005:  # a frame grid half a hop off ties; only a clear win counts
        best_shift = 0
    n_all = [min(o.shape[-1], t.shape[-1]) for o, t in pairs]
    ours_all = np.concatenate([o[:, :n].numpy() for (o, _), n in zip(pairs, n_all, strict=True)], 1)
    theirs_all = np.concatenate([t[:, :n].numpy() for (_, t), n in zip(pairs, n_all, strict=True)], 1)
    a, b, r = _fit(ours_all, theirs_all)
    stats = {
        "files": len(pairs),
        "theirs": {"min": float(theirs_all.min()), "max": float(theirs_all.max()), "mean": float(theirs_all.mean()),
                   "std": float(theirs_all.std())},
        "ours": {"min": float(ours_all.min()), "max": float(ours_all.max()), "mean": float(ours_all.mean()),
                 "std": float(ours_all.std())},
        "fit": {"scale": a, "offset": b, "correlation": r},
        "correlation_by_frame_shift": {str(k): v for k, v in shifts.items()},
        "frames_off": sorted({t.shape[-1] - o.shape[-1] for o, t in pairs}),
    }
    stats["verdict"] = _verdict(stats, best_shift, floor)
    return stats


def _verdict(stats: dict, best_shift: int, floor: float) -> str:
    fit, theirs, ours = stats["fit"], stats["theirs"], stats["ours"]
    a, b, r = fit["scale"], fit["offset"], fit["correlation"]
    if math.isnan(r):
        return "the mels are constant: nothing to compare"
    if r < 0.9:
        hint = f"; they match best one frame {'later' if best_shift > 0 else 'earlier'}" if best_shift else ""
        return (f"the mels do not follow the audio's own (correlation {r:.2f}): a different band (f_min/f_max), "
                f"n_fft, filterbank (HTK vs Slaney) or alignment{hint}")
    if abs(theirs["mean"]) < 0.3 and abs(theirs["std"] - 1) < 0.3 and abs(ours["std"] - 1) > 0.3:
        return "the mels look normalised to zero mean and unit variance: undo the normalisation first"
    scale, name = min(SCALES, key=lambda s: abs(math.log(abs(a) + 1e-12) - math.log(s[0])))
    if abs(math.log(abs(a) + 1e-12) - math.log(scale)) > 0.15:
        return f"the mels are a scaled version of the models' (scale {a:.3f}, offset {b:+.2f}): not the same convention"
    if scale != 1.0:
        return f"the mels are {name} (scale {a:.3f}): convert them to the natural log of the magnitude"
    if abs(b) > 0.5:
        return (f"the mels are offset by {b:+.2f} nats (a gain of x{math.exp(b):.2f}) from the models': a different "
                "filter normalisation or audio level")
    if theirs["min"] < floor - 0.5:
        return f"the mels go below the models' silence floor ({theirs['min']:.2f} < {floor:.2f}): a lower log_floor"
    if best_shift:
        return f"the mels match best one frame {'later' if best_shift > 0 else 'earlier'}: a centred STFT?"
    if r < 0.995 and stats["frames_off"] == [1]:
        return (f"ok (usable): one frame more than T // hop and a looser match (correlation {r:.3f}): frames centred "
                "half a hop earlier (a centred STFT, center=True); the extra frame is cut. An uncentred STFT with "
                "(n_fft - hop) / 2 padding matches exactly")
    return "ok: the mels are in the models' convention"
