"""Copy synthesis: mel(reference) -> vocoder -> audio, scored against the reference.

Used by `wavedistill eval-teacher` (teacher vs Griffin-Lim vs the reference) and, with students,
by the full evaluation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.audio import LogMel, load_audio, pad_mel, save_wav
from distill.config import FeatureConfig
from distill.corpus import resolve_corpus
from distill.errors import CorpusError
from distill.plots import mel_figure, save_figure
from eval.baselines import griffin_lim
from eval.metrics import mel_l1, pesq_scores, stft_distance
from teachers.sampling import generate
from teachers.wavenet import WaveNetTeacher


@dataclass
class Clip:
    id: str
    reference: torch.Tensor  # (F * hop,)
    mel: torch.Tensor  # (n_mels, F), no context


def load_clips(corpus: str, split: str, features: FeatureConfig, max_utterances: int, max_seconds: float) -> list[Clip]:
    """Up to `max_utterances` utterances of a split, each cut to `max_seconds` (0 = whole)."""
    logmel = LogMel(features)
    clips = []
    for utt in resolve_corpus(corpus, split):
        if len(clips) >= max_utterances > 0:
            break
        audio = load_audio(utt.path, features.sample_rate)
        if max_seconds > 0:
            audio = audio[: int(max_seconds * features.sample_rate)]
        frames = audio.numel() // features.hop_length
        if frames * features.hop_length < features.n_fft:
            continue
        audio = audio[: frames * features.hop_length]
        clips.append(Clip(utt.id, audio, logmel(audio)))
    if not clips:
        raise CorpusError(f"corpus '{corpus}' split '{split}': no utterance long enough to evaluate")
    return clips


@torch.inference_mode()
def teacher_synthesis(teacher: WaveNetTeacher, clips: list[Clip], silence: float, device: torch.device,
                      batch_size: int = 16, temperature: float = 1.0, progress: bool = False) -> tuple[list[torch.Tensor], float]:
    """Incremental AR copy synthesis, utterances batched (mels padded with silence). Returns audio and wall seconds."""
    outputs: list[torch.Tensor] = []
    start = time.perf_counter()
    ctx = teacher.mel_context
    for i in range(0, len(clips), batch_size):
        group = clips[i : i + batch_size]
        frames = max(c.mel.shape[-1] for c in group)
        mels = torch.stack([
            pad_mel(torch.nn.functional.pad(c.mel, (0, frames - c.mel.shape[-1]), value=silence), ctx, silence)
            for c in group
        ]).to(device)
        audio = generate(teacher, mels, temperature=temperature, progress=progress).cpu()
        outputs += [audio[j, : c.reference.numel()] for j, c in enumerate(group)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return outputs, time.perf_counter() - start


def score_systems(clips: list[Clip], systems: dict[str, list[torch.Tensor]], features: FeatureConfig) -> dict:
    """Per-utterance and mean PESQ (wb), log-mel L1 and multi-resolution STFT distance per system."""
    logmel = LogMel(features)
    table = {}
    for name, audios in systems.items():
        pesq = pesq_scores([(c.reference, a) for c, a in zip(clips, audios)], features.sample_rate, "wb")
        rows = []
        for clip, audio, p in zip(clips, audios, pesq):
            rows.append({
                "id": clip.id,
                "pesq_wb": p.score,
                "pesq_reason": p.reason,
                "mel_l1": mel_l1(clip.mel, logmel(audio)),
                "stft_distance": stft_distance(clip.reference, audio),
            })
        scored = [r["pesq_wb"] for r in rows if not math.isnan(r["pesq_wb"])]
        table[name] = {
            "pesq_wb": sum(scored) / len(scored) if scored else math.nan,
            "pesq_scored": len(scored),
            "mel_l1": sum(r["mel_l1"] for r in rows) / len(rows),
            "stft_distance": sum(r["stft_distance"] for r in rows) / len(rows),
            "utterances": rows,
        }
    return table


def write_copy_synthesis(out: Path, clips: list[Clip], systems: dict[str, list[torch.Tensor]], table: dict,
                         features: FeatureConfig, settings: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    logmel = LogMel(features)
    for name, audios in systems.items():
        for clip, audio in zip(clips, audios):
            save_wav(out / "wavs" / f"{clip.id.replace('/', '_')}_{name}.wav", audio, features.sample_rate)
    first = clips[0]
    mels = [first.mel] + [logmel(audios[0]) for audios in systems.values() if audios is not systems.get("reference")]
    titles = ["reference"] + [n for n in systems if n != "reference"]
    image = save_figure(mel_figure(mels, titles, features.hop_length, features.sample_rate), out / f"{first.id}_mels.png")
    summary = {"settings": settings, "systems": table, "mel_image": str(image)}
    (out / "copy_synthesis.json").write_text(json.dumps(summary, indent=2, default=float))
    lines = ["| system | PESQ wb | log-mel L1 | MR-STFT distance |", "|---|---:|---:|---:|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['pesq_wb']:.3f} | {row['mel_l1']:.3f} | {row['stft_distance']:.3f} |")
    (out / "copy_synthesis.md").write_text("\n".join(lines) + "\n")
    summary["markdown"] = "\n".join(lines)
    return summary
