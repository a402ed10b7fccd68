"""Corpora: which utterances exist, which split each belongs to, and who speaks each.

Three kinds, chosen by `resolve_corpus(spec)`:
- `"demo"`: the bundled demo corpus, made by `distill.data.make_demo_corpus`: ten synthetic voices (flite and
  festival; eight for training, two held out of train), 16 kHz FLAC, fixed train/valid/test lists;
- a folder in LJSpeech layout: `metadata.csv` (`id|text[|normalized text[|speaker]]`) and `wavs/<id>.wav`;
- any other folder: every audio file under it, recursively.

Speaker labels (`Utterance.speaker`): metadata.csv's fourth column where a line has one; in a plain folder,
the first sub-folder below the corpus root ("" for files directly in it). A label alone changes nothing
a model sees: only `data.speakers` ("column" or "folder") makes a multi-speaker corpus whose labels become
speaker ids, and then every utterance must have one (`with_speakers`); evaluation reports per voice by them.

Splits: a corpus folder holding `train.txt` / `valid.txt` / `test.txt` (one utterance id a line)
uses them; otherwise each id goes to a split by a stable hash of the id, so adding files never
moves an existing utterance to another split.

Bad entries (a metadata line without its text column, a listed file that is missing) are skipped
with one warning line naming the file and the reason; a corpus with nothing left is a `CorpusError`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from distill.audio.io import save_wav, soundfile_module
from distill.errors import CorpusError

log = logging.getLogger("wavedistill")

SPLITS = ("train", "valid", "test")
DEMO = "demo"


SPEAKER_SOURCES = ("", "folder", "column")


@dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus: a stable id, its audio file, (if known) its text and its speaker."""

    id: str
    path: Path
    text: str = ""
    speaker: str = ""


def demo_corpus_dir() -> Path:
    """The folder of the bundled demo corpus inside the installed `distill` package."""
    return Path(str(resources.files("distill.data") / "demo_corpus"))


def audio_extensions() -> set[str]:
    """File extensions soundfile can read here (lower case, with the dot); only .wav without soundfile."""
    sf = soundfile_module()
    if sf is None:
        return {".wav"}
    exts = {"." + name.lower() for name in sf.available_formats()}
    exts |= {".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif"}  # .opus: Ogg Opus, libsndfile >= 1.0.29
    return exts


def ljspeech(root: Path, speaker_column: bool = False) -> list[Utterance]:
    """Utterances of an LJSpeech-layout folder (`metadata.csv` + `wavs/`), each labelled with its line's fourth
    column (`id|text|normalized text|speaker`) where it has one. speaker_column: every line must have it
    (a line without is skipped with a warning)."""
    meta = root / "metadata.csv"
    utts = []
    seen = set()
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{meta}: cannot read ({err}); it must be UTF-8 text with lines 'id|text'") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = line.split("|")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            log.warning("skipping %s line %d: expected 'id|text[|normalized text]', got %r", meta, number, line[:80])
            continue
        uid = cols[0].strip()
        if uid in seen:
            log.warning("skipping %s line %d: duplicate id %r", meta, number, uid)
            continue
        speaker = cols[3].strip() if len(cols) > 3 else ""
        if speaker_column and not speaker:
            log.warning("skipping %s line %d: data.speakers=column needs 'id|text|normalized text|speaker', got %r",
                        meta, number, line[:80])
            continue
        text = cols[2].strip() if len(cols) > 2 and cols[2].strip() else cols[1].strip()
        path = _find_audio(root / "wavs", uid)
        if path is None:
            log.warning("skipping %s line %d: no audio file wavs/%s.<wav|flac|...>", meta, number, uid)
            continue
        seen.add(uid)
        utts.append(Utterance(uid, path, text, speaker))
    if not utts:
        raise CorpusError(
            f"{meta}: no usable line (each needs 'id|text' and an audio file wavs/<id>.wav)"
        )
    return utts


def _find_audio(folder: Path, uid: str) -> Path | None:
    for ext in (".wav", ".flac", ".ogg", ".mp3"):
        candidate = folder / f"{uid}{ext}"
        if candidate.is_file():
            return candidate
    return None


def audio_folder(root: Path) -> list[Utterance]:
    """Every audio file under `root`, recursively; the id is the relative path without extension, the speaker
    label the first folder below `root` ("" for a file directly in it)."""
    exts = audio_extensions()
    # Broken symlinks are kept, so that reading them reports the file instead of silently dropping it.
    paths = sorted(p for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and p.suffix.lower() in exts)
    if not paths:
        raise CorpusError(
            f"{root}: no audio files found (looked recursively for {', '.join(sorted(exts))})"
        )
    utts = []
    for p in paths:
        rel = p.relative_to(root)
        utts.append(Utterance(rel.with_suffix("").as_posix(), p, speaker=rel.parts[0] if len(rel.parts) > 1 else ""))
    return utts


def hash_split(uid: str, valid_fraction: float, test_fraction: float) -> str:
    """Stable split of an utterance id: the same id always lands in the same split."""
    u = zlib.crc32(uid.encode("utf-8")) / 2**32
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def with_speakers(utts: list[Utterance], root: Path, source: str) -> list[Utterance]:
    """The utterances of a plain audio folder that a multi-speaker corpus can use: with source "folder",
    those in a speaker folder (the first folder below the corpus root, which `audio_folder` made their label:
    LibriTTS with the corpus at a subset such as train-clean-100: the speaker id; VCTK with the corpus at
    wav48/: p225, ...); with "" (one speaker), all of them."""
    if source == "folder":
        named = [u for u in utts if u.speaker]
        if len(named) < len(utts):
            log.warning("%s: %d file(s) directly in the corpus folder have no speaker folder; skipped",
                        root, len(utts) - len(named))
        if not named:
            raise CorpusError(f"{root}: data.speakers=folder needs audio in one folder per speaker "
                              "(<corpus>/<speaker>/.../<file>); none found")
        return named
    return utts


def resolve_corpus(
    spec: str,
    split: str = "train",
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    speakers: str = "",
) -> list[Utterance]:
    """The utterances of `split` ("train", "valid", "test" or "all") of the corpus `spec`, with their
    speakers when `speakers` names where they come from (`with_speakers`)."""
    if split not in SPLITS + ("all",):
        raise CorpusError(f"unknown split '{split}'; use one of train, valid, test, all")
    if speakers not in SPEAKER_SOURCES:
        raise CorpusError(f"data.speakers '{speakers}' is not one of folder, column or \"\" (single speaker)")
    root = demo_corpus_dir() if spec == DEMO else Path(spec).expanduser()
    if not root.exists():
        raise CorpusError(
            f"corpus '{spec}' not found; pass 'demo', an LJSpeech folder (metadata.csv + wavs/) "
            "or a folder of audio files"
        )
    if root.is_file():
        raise CorpusError(f"corpus '{spec}' is a file; pass the folder that holds the audio")
    if (root / "metadata.csv").is_file():
        if speakers == "folder":
            raise CorpusError(f"{root}: an LJSpeech-layout corpus (metadata.csv) has no speaker folders; use "
                              "data.speakers=column with a fourth column id|text|normalized text|speaker")
        utts = ljspeech(root, speaker_column=speakers == "column")
    else:
        if speakers == "column":
            raise CorpusError(f"{root}: data.speakers=column reads metadata.csv, which this folder does not have; "
                              "use data.speakers=folder for one folder per speaker")
        utts = with_speakers(audio_folder(root), root, speakers)
    if split == "all":
        return utts
    list_file = root / f"{split}.txt"
    if (root / "train.txt").is_file():
        if not list_file.is_file():
            raise CorpusError(f"{root}: has train.txt but no {split}.txt; add the list or remove train.txt")
        wanted = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_id = {u.id: u for u in utts}
        chosen = []
        for uid in wanted:
            if uid in by_id:
                chosen.append(by_id[uid])
            else:
                log.warning("skipping %s: lists %r, which the corpus does not have", list_file, uid)
    else:
        chosen = [u for u in utts if hash_split(u.id, valid_fraction, test_fraction) == split]
    if not chosen:
        raise CorpusError(
            f"corpus '{spec}': split '{split}' is empty ({len(utts)} utterances in all); "
            f"add {split}.txt lists or change data.valid_fraction / data.test_fraction"
        )
    return chosen


def harmonic_signal(seconds: float, f0: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """A speech-like synthetic signal: five harmonics of a gliding f0 under a slow amplitude envelope,
    with a little noise; float32 in about [-0.6, 0.6]. For smoke tests and device checks, not for quality."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    return (0.25 * x * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write_synthetic_corpus(folder: str | Path, count: int, seconds: float, sample_rate: int = 16000,
                           splits: tuple[int, int] | None = None) -> Path:
    """`count` harmonic signals (f0 110 Hz + 20 Hz per file) as 16-bit WAV `utt00.wav` ... in `folder`
    (soundfile not needed); splits (valid, test): also write train/valid/test lists, the last files
    going to valid and test."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"utt{i:02d}" for i in range(count)]
    for i, uid in enumerate(ids):
        save_wav(folder / f"{uid}.wav", harmonic_signal(seconds, 110 + 20 * i, seed=i, sample_rate=sample_rate),
                 sample_rate)
    if splits is not None:
        valid, test = splits
        train = count - valid - test
        for name, part in (("train", ids[:train]), ("valid", ids[train:train + valid]), ("test", ids[train + valid:])):
            (folder / f"{name}.txt").write_text("".join(f"{uid}\n" for uid in part))
    return folder
