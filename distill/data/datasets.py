"""Datasets: aligned random crops for training, whole utterances for validation and evaluation.

Every file is read once when a dataset is built. A file that cannot be used (unreadable, empty,
truncated, not audio, NaN/Inf samples, silent, shorter than one segment) is skipped with one
warning line naming it and the reason; a dataset with nothing usable raises `CorpusError`.

Crops are deterministic: the sampler hands each dataset access a seed derived from the run seed and
the position in the (infinite) sample stream, so data order and crop offsets are the same with any
number of DataLoader workers, after `--resume`, and split across DDP ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from distill.audio.io import change_speed, load_audio
from distill.audio.mel import LogMel, num_frames, pad_mel
from distill.audio.melfiles import align_mel, mel_file, read_mel
from distill.config import DataConfig, FeatureConfig, to_dict
from distill.data.corpus import Utterance, resolve_corpus
from distill.errors import AudioError, CorpusError, MelError

log = logging.getLogger("wavedistill")


@dataclass
class LoadedUtterance:
    """A usable utterance. `audio` (T,) and `mel` (n_mels, T // hop) are None unless preloaded; `speed`
    != 1: the utterance's speed-perturbed copy (`change_speed`), audio, mel and num_samples of the copy."""

    utt: Utterance
    num_samples: int
    audio: torch.Tensor | None = None
    mel: torch.Tensor | None = None
    speaker: int = 0  # the id of utt.speaker in the store's speaker map
    speed: float = 1.0


class MelCache:
    """On-disk cache of log-mels, one `.npy` per utterance, in a folder keyed by the feature settings.

    An entry is also keyed by the audio file's size and modification time, so an edited file is
    recomputed, and by the speed factor of a speed-perturbed copy. Writes are atomic (temp file + rename),
    so an interrupted run never leaves a bad entry.
    """

    def __init__(self, root: str | Path, features: FeatureConfig):
        # the mel is always of the audio itself: pre-emphasis (what a model learns) does not key it
        settings = {k: v for k, v in to_dict(features).items() if k != "preemphasis"}
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(root) / f"mel-{key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        record = self.dir / "features.json"
        if not record.exists():
            record.write_text(json.dumps(settings, indent=2))

    def _entry(self, utt: Utterance, speed: float) -> Path:
        st = utt.path.stat()
        key = f"{utt.path.resolve()}|{st.st_size}|{st.st_mtime_ns}" + (f"|speed {speed!r}" if speed != 1 else "")
        return self.dir / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"

    def get(self, utt: Utterance, speed: float = 1.0) -> torch.Tensor | None:
        entry = self._entry(utt, speed)
        if not entry.exists():
            return None
        try:
            return torch.from_numpy(np.load(entry, allow_pickle=False))
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)  # a damaged entry is recomputed
            return None

    def put(self, utt: Utterance, mel: torch.Tensor, speed: float = 1.0) -> None:
        entry = self._entry(utt, speed)
        tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, mel.numpy(), allow_pickle=False)
        tmp.replace(entry)


class UtteranceStore:
    """Reads, checks and (optionally) keeps in memory the audio and mels of a list of utterances; with
    `speed_perturb`, each usable utterance is followed by its copies at those speeds (a copy shorter than
    `min_samples` is left out)."""

    def __init__(
        self,
        utterances: list[Utterance],
        features: FeatureConfig,
        min_samples: int,
        silence_threshold: float = 1e-4,
        preload: bool = True,
        mel_cache: str | Path = "",
        source: str = "corpus",
        mel_dir: str | Path = "",
        speakers: dict[str, int] | None = None,
        speed_perturb: Sequence[float] = (),
    ):
        self.features = features
        self.logmel = LogMel(features)
        self.mel_dir = Path(mel_dir) if mel_dir else None
        if self.mel_dir is not None and not self.mel_dir.is_dir():
            raise CorpusError(f"data.mel_dir {mel_dir}: no such folder; pass the folder of <utterance id>.npy mels")
        if speed_perturb and self.mel_dir is not None:
            raise CorpusError(f"{source}: speed perturbation needs mels computed from the audio, not data.mel_dir")
        self.cache = MelCache(mel_cache, features) if mel_cache and self.mel_dir is None else None
        self.preload = preload
        self.speakers = speakers  # name -> id; None: a single-speaker store
        self.items: list[LoadedUtterance] = []
        skipped = short_copies = 0
        trimmed: list[tuple[str, int]] = []  # (id, frames off) of external mels
        for utt in utterances:
            if speakers is not None and utt.speaker not in speakers:
                log.warning("skipping %s: speaker %r is not one the model knows (%s)", utt.path, utt.speaker,
                            ", ".join(sorted(speakers)) or "none")
                skipped += 1
                continue
            try:
                audio = load_audio(utt.path, features.sample_rate)
            except AudioError as err:
                log.warning("skipping %s: %s", err.path, err.reason)
                skipped += 1
                continue
            peak = float(audio.abs().max())
            if peak < silence_threshold:
                log.warning("skipping %s: silent (peak %.2g < data.silence_threshold %.2g)", utt.path, peak,
                            silence_threshold)
                skipped += 1
                continue
            if audio.numel() < min_samples:
                log.warning(
                    "skipping %s: %d samples, shorter than one segment (%d samples)", utt.path, audio.numel(),
                    min_samples,
                )
                skipped += 1
                continue
            item = LoadedUtterance(utt, audio.numel(), speaker=speakers[utt.speaker] if speakers is not None else 0)
            if self.mel_dir is not None:
                try:
                    mel, off = self._external_mel(utt, audio.numel())
                except MelError as err:
                    log.warning("skipping %s: %s", utt.path, err)
                    skipped += 1
                    continue
                if mel.shape[-1] * features.hop_length < min_samples:
                    log.warning("skipping %s: its mel has %d frames, shorter than one segment (%d samples)",
                                utt.path, mel.shape[-1], min_samples)
                    skipped += 1
                    continue
                if off:
                    trimmed.append((utt.id, off))
                item.mel = mel if preload else None
                item.audio = audio if preload else None
            else:
                self._keep(item, audio)
            self.items.append(item)
            for speed in speed_perturb:  # a copy keeps the utterance's speaker id (and voice label)
                copy = change_speed(audio, speed)
                if copy.numel() >= min_samples:
                    self.items.append(self._keep(LoadedUtterance(utt, copy.numel(), speaker=item.speaker,
                                                                 speed=speed), copy))
                else:
                    short_copies += 1
        if short_copies:
            log.warning("%s: %d speed-perturbed cop%s shorter than one segment (%d samples) left out", source,
                        short_copies, "y" if short_copies == 1 else "ies", min_samples)
        if trimmed:
            offs = sorted({off for _, off in trimmed})
            log.warning("%s: %d mel file(s) in %s are %s frame(s) off the audio's T // hop (e.g. %s): their audio or "
                        "mel is cut to the shorter of the two", source, len(trimmed), self.mel_dir,
                        "/".join(f"{o:+d}" for o in offs), trimmed[0][0])
        if not self.items:
            raise CorpusError(
                f"{source}: none of its {len(utterances)} files is usable ({skipped} skipped, see the warnings above)"
            )

    def _keep(self, item: LoadedUtterance, audio: torch.Tensor) -> LoadedUtterance:
        """Keep the audio and mel of `item` in memory (preload), or fill the mel cache with its mel."""
        if self.preload:
            item.audio = audio
            item.mel = self._compute_mel(item.utt, audio, item.speed)
        elif self.cache is not None and self.cache.get(item.utt, item.speed) is None:
            self.cache.put(item.utt, self.logmel(audio), item.speed)
        return item

    def _external_mel(self, utt: Utterance, num_samples: int) -> tuple[torch.Tensor, int]:
        """The utterance's mel from data.mel_dir, cut to the audio's frames -> (mel, frames off)."""
        assert self.mel_dir is not None  # asked only with data.mel_dir set
        path = mel_file(self.mel_dir, utt.id)
        if path is None:
            raise MelError(self.mel_dir / f"{utt.id}.npy", "missing (data.mel_dir has no mel for this utterance)")
        return align_mel(read_mel(path, self.features.n_mels), num_samples, self.features.hop_length, path)

    def _compute_mel(self, utt: Utterance, audio: torch.Tensor, speed: float = 1.0) -> torch.Tensor:
        mel = self.cache.get(utt, speed) if self.cache is not None else None
        if mel is None or mel.shape[-1] != num_frames(audio.numel(), self.features.hop_length):
            mel = self.logmel(audio)
            if self.cache is not None:
                self.cache.put(utt, mel, speed)
        return mel

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio (T,), mel (n_mels, T // hop)) of item `index`."""
        item = self.items[index]
        if item.audio is not None and item.mel is not None:  # kept in memory: both or neither
            return item.audio, item.mel
        audio = load_audio(item.utt.path, self.features.sample_rate)
        if self.mel_dir is not None:
            return audio, self._external_mel(item.utt, audio.numel())[0]
        if item.speed != 1:
            audio = change_speed(audio, item.speed)
        return audio, self._compute_mel(item.utt, audio, item.speed)

    @property
    def total_seconds(self) -> float:
        return sum(i.num_samples for i in self.items) / self.features.sample_rate

    @property
    def originals(self) -> list[LoadedUtterance]:
        """The utterances as they are (no speed-perturbed copies)."""
        return [i for i in self.items if i.speed == 1]


def speaker_batch(item: dict, device: torch.device) -> torch.Tensor | None:
    """A dataset item's speaker id as a batch of one (B = 1,), or None for a single-speaker corpus."""
    return torch.tensor([item["speaker"]], device=device) if "speaker" in item else None


def corpus_speakers(data: DataConfig) -> dict[str, int] | None:
    """The speaker map of a multi-speaker corpus (data.speakers set): its training split's speaker names,
    sorted, -> ids 0..N-1; None for a single-speaker one."""
    if not data.speakers:
        return None
    names = sorted({u.speaker for u in resolve_corpus(data.corpus, "train", data.valid_fraction, data.test_fraction,
                                                      data.speakers)})
    return {name: i for i, name in enumerate(names)}


def corpus_voices(data: DataConfig) -> list[str]:
    """The voice labels of the corpus's training split (`Utterance.speaker`: a metadata speaker column or
    a speaker folder), sorted; empty for a corpus without labels. A model's checkpoint records them, so
    that an evaluation can tell the voices it trained on from the ones it never heard. Read whatever
    data.speakers says: a universal model trains without speaker ids, but its voices are still known."""
    utts = resolve_corpus(data.corpus, "train", data.valid_fraction, data.test_fraction, data.speakers)
    return sorted({u.speaker for u in utts if u.speaker})


def voice_order(labels: list[str]) -> list[int]:
    """Indices of `labels` (one voice label per utterance) taken one voice at a time, round robin in the
    order the voices first appear: the first N cover min(N, voices) voices. Within a voice the order is kept."""
    by_voice: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_voice.setdefault(label, []).append(i)
    queues = list(by_voice.values())
    order: list[int] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order


def load_split(data: DataConfig, features: FeatureConfig, split: str, min_samples: int,
               speakers: dict[str, int] | None = None) -> UtteranceStore:
    """Resolve, read and check one split of the configured corpus (with `speakers`, the map its
    utterances' speakers must be in; the train split with its data.speed_perturb copies)."""
    utts = resolve_corpus(data.corpus, split, data.valid_fraction, data.test_fraction, data.speakers)
    return UtteranceStore(
        utts,
        features,
        min_samples=min_samples,
        silence_threshold=data.silence_threshold,
        preload=data.preload,
        mel_cache=data.mel_cache,
        source=f"corpus '{data.corpus}' split '{split}'",
        mel_dir=data.mel_dir,
        speakers=speakers,
        speed_perturb=data.speed_perturb if split == "train" else (),
    )


class SegmentDataset(Dataset):
    """Aligned random crops for training.

    Indexed by `(utterance index, seed)` pairs from `StreamSampler`. Returns a dict:
      audio: (S,) float32, S = segment_length rounded down to a multiple of hop;
      mel:   (n_mels, S // hop + 2 * mel_context) float32, frame `mel_context + i` describes
             audio[i*hop:(i+1)*hop]; frames beyond the utterance edges are silence.
    """

    def __init__(self, store: UtteranceStore, segment_length: int, mel_context: int):
        hop = store.features.hop_length
        self.store = store
        self.frames = segment_length // hop
        if self.frames < 1:
            raise CorpusError(f"data.segment_length {segment_length} is shorter than one hop ({hop} samples)")
        self.segment = self.frames * hop
        self.context = mel_context

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = key
        audio, mel = self.store.get(index)
        hop = self.store.features.hop_length
        available = mel.shape[-1] - self.frames
        start = int(np.random.default_rng(seed).integers(0, available + 1))
        mel = pad_mel(mel, self.context, self.store.logmel.silence_value)
        item: dict[str, torch.Tensor | int] = {
            "audio": audio[start * hop : start * hop + self.segment],
            "mel": mel[:, start : start + self.frames + 2 * self.context],
        }
        if self.store.speakers is not None:
            item["speaker"] = self.store.items[index].speaker
        return item


class UtteranceDataset(Dataset):
    """Whole utterances (validation, evaluation). Returns a dict:
    id (str), audio (T',) with T' = (T // hop) * hop, mel (n_mels, T // hop) without context and voice
    (str, the utterance's voice label; "" when the corpus has none).
    """

    def __init__(self, store: UtteranceStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        audio, mel = self.store.get(index)
        hop = self.store.features.hop_length
        utt = self.store.items[index].utt
        item: dict[str, Any] = {"id": utt.id, "audio": audio[: mel.shape[-1] * hop], "mel": mel, "voice": utt.speaker}
        if self.store.speakers is not None:
            item["speaker"] = self.store.items[index].speaker
        return item


class StreamSampler(Sampler):
    """An infinite, resumable, rank-aware stream of `(index, seed)` pairs.

    The global stream is the concatenation of seeded permutations of the dataset (epoch e uses
    seed + e). Rank r of W takes global positions r, r + W, r + 2W, ...; `start` skips that many of
    this rank's items (the trainer passes batches_consumed * batch_size). Each item carries a seed
    derived from (seed, global position), so crops do not depend on the worker that loads them.
    One process with batch W*B sees exactly the items that W ranks with batch B see together.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if length <= 0:
            raise ValueError("StreamSampler needs a non-empty dataset")
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.rank + self.world_size * self.start
        epoch = -1
        perm: list[int] = []  # the permutation of epoch `epoch`, drawn at the first item
        while True:
            e, offset = divmod(position, self.length)
            if e != epoch:
                epoch = e
                g = torch.Generator().manual_seed(self.seed + e)
                perm = torch.randperm(self.length, generator=g).tolist()
            item_seed = int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])
            yield perm[offset], item_seed
            position += self.world_size

    def __len__(self) -> int:  # DataLoader asks; the stream is endless, the trainer counts steps
        return 2**62


def vocoder_datasets(data: DataConfig, features: FeatureConfig,
                     speakers: dict[str, int] | None = None) -> tuple[SegmentDataset, UtteranceDataset]:
    """The usual pair: aligned training crops of the train split, whole utterances of the valid split
    (each item with its speaker id when `speakers` maps the corpus's speakers)."""
    train = load_split(data, features, "train", data.segment_length, speakers)
    valid = load_split(data, features, "valid", features.n_fft, speakers)
    return SegmentDataset(train, data.segment_length, data.mel_context), UtteranceDataset(valid)
