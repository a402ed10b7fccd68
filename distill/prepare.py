"""The data stage: read and check a corpus's splits, fill the mel cache, summarise, draw one mel.

`wavedistill data` runs it on any corpus; `wavedistill demo` runs it on the bundled one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distill.audio import save_wav
from distill.config import DataStageConfig, save_config, to_dict
from distill.data import load_split
from distill.plots import mel_figure, save_figure

log = logging.getLogger("wavedistill")


def prepare(cfg: DataStageConfig, splits: list[str], out_dir: str | Path | None = None) -> dict:
    """Check every file of `splits`; returns per-split counts and minutes (and writes a summary to out_dir)."""
    summary = {"corpus": cfg.data.corpus, "features": to_dict(cfg.features), "splits": {}}
    first = None
    for split in splits:
        # Training files must hold a whole segment; the others (and "all") only need one STFT window.
        min_samples = cfg.data.segment_length if split == "train" else cfg.features.n_fft
        store = load_split(cfg.data, cfg.features, split, min_samples)
        durations = [item.num_samples / cfg.features.sample_rate for item in store.items]
        summary["splits"][split] = {
            "utterances": len(store),
            "minutes": round(store.total_seconds / 60, 3),
            "shortest_s": round(min(durations), 3),
            "longest_s": round(max(durations), 3),
        }
        if first is None:
            audio, mel = store.get(0)
            first = (store.items[0].utt.id, audio, mel)
    if out_dir is not None and first is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        uid, audio, mel = first
        safe = uid.replace("/", "_")
        save_wav(out / f"{safe}.wav", audio, cfg.features.sample_rate)
        fig = mel_figure([mel], [f"log-mel of {uid}"], cfg.features.hop_length, cfg.features.sample_rate)
        summary["mel_image"] = str(save_figure(fig, out / f"{safe}_mel.png"))
        (out / "data_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"corpus: {summary['corpus']}", "| split | utterances | minutes | shortest (s) | longest (s) |", "|---|---:|---:|---:|---:|"]
    for split, s in summary["splits"].items():
        lines.append(f"| {split} | {s['utterances']} | {s['minutes']:.2f} | {s['shortest_s']:.2f} | {s['longest_s']:.2f} |")
    if "mel_image" in summary:
        lines.append(f"mel image: {summary['mel_image']}")
    return "\n".join(lines)
