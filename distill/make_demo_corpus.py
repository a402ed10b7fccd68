"""Make the bundled demo corpus with the flite speech synthesiser (`wavedistill make-demo-corpus`).

The corpus shipped in `distill/demo_corpus/` was made by this script; users never need flite.
To remake it: `apt-get install flite`, then `wavedistill make-demo-corpus` (it overwrites the
audio, metadata.csv and the split lists from `sentences.txt`, sentences written for this project).

Recipe: voice `slt` (US English, female, 16 kHz), durations stretched by 0.85 to keep the corpus
at 6-8 minutes, leading/trailing silence trimmed to 100 ms, 16-bit FLAC. Splits are fixed by
position: of every 15 utterances the 8th goes to valid and the 15th to test, the rest to train.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from distill.corpus import demo_corpus_dir
from distill.errors import WavedistillError

log = logging.getLogger("wavedistill")

SAMPLE_RATE = 16000
MARGIN_S = 0.1
TRIM_THRESHOLD = 0.01


def trim_silence(x: np.ndarray, sample_rate: int, threshold: float = TRIM_THRESHOLD,
                 margin_s: float = MARGIN_S) -> np.ndarray:
    """Cut leading/trailing samples quieter than `threshold`, keeping `margin_s` of silence each side."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x
    margin = int(margin_s * sample_rate)
    return x[max(0, loud[0] - margin) : min(len(x), loud[-1] + 1 + margin)]


def split_of(position: int) -> str:
    """Split of the utterance at 1-based `position`."""
    if position % 15 == 0:
        return "test"
    if position % 15 == 8:
        return "valid"
    return "train"


def synthesize(text: str, out_wav: Path, stretch: float, voice: str = "slt") -> None:
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-t", text, "-o", str(out_wav)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise WavedistillError(f"flite failed on {text[:40]!r}: {result.stderr.strip()[:200]}")


def make_demo_corpus(out_dir: Path | None = None, count: int = 150, stretch: float = 0.85) -> dict:
    """Synthesise `count` sentences into `out_dir` (default: the packaged corpus). Returns a summary."""
    if shutil.which("flite") is None:
        raise WavedistillError("flite is not installed; install it with 'apt-get install flite' (Debian/Ubuntu)")
    source = demo_corpus_dir() / "sentences.txt"
    sentences = [s.strip() for s in source.read_text(encoding="utf-8").splitlines() if s.strip()]
    if len(sentences) < count:
        raise WavedistillError(f"{source} has {len(sentences)} sentences, fewer than the {count} asked for")
    out_dir = Path(out_dir) if out_dir is not None else demo_corpus_dir()
    wavs = out_dir / "wavs"
    if wavs.exists():
        shutil.rmtree(wavs)
    wavs.mkdir(parents=True)
    rows, seconds = [], 0.0
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        for position, text in enumerate(sentences[:count], start=1):
            uid = f"demo_{position:04d}"
            raw = Path(tmp) / f"{uid}.wav"
            synthesize(text, raw, stretch)
            x, rate = sf.read(str(raw), dtype="float32")
            if rate != SAMPLE_RATE:
                raise WavedistillError(
                    f"flite produced {rate} Hz audio, expected {SAMPLE_RATE}; is the slt voice installed?"
                )
            x = trim_silence(x, rate)
            sf.write(str(wavs / f"{uid}.flac"), x, rate, subtype="PCM_16", format="FLAC")
            seconds += len(x) / rate
            rows.append(f"{uid}|{text}|{text}")
            splits[split_of(position)].append(uid)
    (out_dir / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    for name, ids in splits.items():
        (out_dir / f"{name}.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in wavs.iterdir())
    return {
        "utterances": count,
        "minutes": seconds / 60,
        "megabytes": size / 1e6,
        **{name: len(ids) for name, ids in splits.items()},
        "folder": str(out_dir),
    }
