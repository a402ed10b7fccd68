"""Audio I/O: read any libsndfile format (soundfile) at a given rate, resample, write 16-bit WAV.

`torchaudio.load`/`save` are not used: they need torchcodec and FFmpeg. soundfile reads WAV, FLAC,
OGG/Vorbis, MP3 (libsndfile >= 1.1) and the other libsndfile formats. Where soundfile is not installed
(a machine with torch alone), 16-bit PCM WAV is still read and written (the standard library's `wave`),
and any other format is one line saying what to install.
"""

from __future__ import annotations

import logging
import math
import re
import wave
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torchaudio

from distill.config import speed_ratio
from distill.errors import AudioError, WavedistillError

log = logging.getLogger("wavedistill")


NO_SOUNDFILE = "needs the soundfile package (pip install soundfile); without it only 16-bit PCM WAV is read"


def soundfile_module() -> ModuleType | None:
    """soundfile, or None where it (or its libsndfile) is not installed."""
    try:
        import soundfile
    except (ImportError, OSError):
        return None
    return soundfile


def require_soundfile(what: str) -> ModuleType:
    """soundfile for `what`, or one line saying how to install it."""
    sf = soundfile_module()
    if sf is None:
        raise WavedistillError(f"{what} needs the soundfile package: pip install soundfile")
    return sf


def _read_pcm16_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV without soundfile: (T, channels) float32 in [-1, 1), sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{8 * w.getsampwidth()}-bit WAV: {NO_SOUNDFILE}")
        channels, rate, frames = w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(frames, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0, rate


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read any soundfile format as float32 mono in [-1, 1] at `sample_rate`.

    Returns: (T,) float32. Stereo and multichannel files are averaged to mono; other sample rates
    are resampled with torchaudio (band-limited sinc). A float file with samples beyond full scale
    (peak > FULL_SCALE_TOLERANCE) is divided by its peak, with one warning naming it. Raises `AudioError`
    (with the file and the reason) for a missing, unreadable, empty or non-finite file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    sf = soundfile_module()
    if sf is None and path.suffix.lower() != ".wav":
        raise AudioError(path, f"reading {path.suffix or 'this format'} {NO_SOUNDFILE}")
    errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError, EOFError, wave.Error)
    try:
        if sf is None:
            data, rate = _read_pcm16_wav(path)
        else:
            errors += (sf.LibsndfileError,)
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except errors as err:
        text = str(err).split("\n")[0].strip() or type(err).__name__
        text = re.sub(r"^Error opening .*?: ", "", text)  # libsndfile repeats the path
        raise AudioError(path, f"not readable as audio ({text})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or Inf samples")
    x = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    peak = float(x.abs().max())
    if peak > FULL_SCALE_TOLERANCE:  # only float files can: integer PCM reads within [-1, 1]
        if str(path) not in _WARNED_OVER_FULL_SCALE:
            _WARNED_OVER_FULL_SCALE.add(str(path))
            log.warning("%s: samples reach %.3g, outside [-1, 1]: scaled by 1/%.3g (float audio beyond full scale is "
                        "peak-normalised to 1)", path, peak, peak)
        x = x / peak
    if rate != sample_rate:
        x = resample(x, rate, sample_rate)
    return x


# A float file whose peak exceeds this is divided by its peak (a mild overshoot of float WAVs, such as
# 1.0001 from resampling elsewhere, is left alone); each such file is named once per process.
FULL_SCALE_TOLERANCE = 1.001


_WARNED_OVER_FULL_SCALE: set[str] = set()


def resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling. x: (..., T) float -> (..., about T * new / orig: torchaudio's length, which
    may be a sample or two longer than the rounded ratio)."""
    if orig_rate == new_rate:
        return x
    g = math.gcd(int(orig_rate), int(new_rate))
    return torchaudio.functional.resample(x, orig_rate // g, new_rate // g)


def change_speed(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Speed perturbation: `x` (..., T) resampled so that, played at its own rate, it lasts T / factor
    samples with every frequency (pitch and formants) `factor` times higher, as a tape played faster.
    The factor is taken as a fraction with a denominator up to 100 (`speed_ratio`: 0.9 = 9/10); band-limited."""
    ratio = speed_ratio(factor)
    if ratio <= 0:
        raise ValueError(f"speed factor {factor} must be > 0")
    return resample(x, ratio.numerator, ratio.denominator)


def save_wav(path: str | Path, x: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono audio as 16-bit PCM WAV. x: (T,) or (1, T) float in [-1, 1]; values outside are clipped."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clip(-1.0, 1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf = soundfile_module()
    if sf is not None:
        sf.write(str(path), x, sample_rate, subtype="PCM_16", format="WAV")
        return
    pcm = np.clip(np.floor(x * 32768.0), -32768, 32767).astype("<i2")  # libsndfile's PCM_16, bit for bit (tested)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
