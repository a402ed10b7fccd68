"""The data stage: read and check a corpus's splits, fill the mel cache, summarise, draw one mel.

`wavedistill data` runs it on any corpus; `wavedistill demo` runs it on the bundled one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.audio.io import load_audio, save_wav
from distill.audio.mel import LogMel, silence_value
from distill.audio.melfiles import align_mel, diagnose, mel_file, read_mel
from distill.audio.plots import mel_figure, save_figure
from distill.config import DataStageConfig, save_config, to_dict
from distill.data.corpus import resolve_corpus
from distill.data.datasets import load_split
from distill.errors import AudioError, CorpusError, MelError

log = logging.getLogger("wavedistill")


def prepare(cfg: DataStageConfig, splits: list[str], out_dir: str | Path | None = None) -> dict:
    """Check every file of `splits`; returns per-split counts and minutes (and writes a summary to out_dir)."""
    summary: dict[str, Any] = {"corpus": cfg.data.corpus, "features": to_dict(cfg.features), "splits": {}}
    first = None
    for split in splits:
        # Training files must hold a whole segment; the others (and "all") only need one STFT window.
        min_samples = cfg.data.segment_length if split == "train" else cfg.features.n_fft
        store = load_split(cfg.data, cfg.features, split, min_samples)
        # the utterances as they are; data.speed_perturb's copies of the train split are counted apart
        durations = [item.num_samples / cfg.features.sample_rate for item in store.originals]
        summary["splits"][split] = {
            "utterances": len(durations),
            "minutes": round(sum(durations) / 60, 3),
            "shortest_s": round(min(durations), 3),
            "longest_s": round(max(durations), 3),
        }
        if len(store) > len(durations):
            summary["splits"][split]["speed_copies"] = len(store) - len(durations)
            summary["splits"][split]["speed_copies_minutes"] = round(
                (store.total_seconds - sum(durations)) / 60, 3)
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
    lines = [f"corpus: {summary['corpus']}", "| split | utterances | minutes | shortest (s) | longest (s) |",
             "|---|---:|---:|---:|---:|"]
    for split, s in summary["splits"].items():
        lines.append(f"| {split} | {s['utterances']} | {s['minutes']:.2f} | {s['shortest_s']:.2f} "
                     f"| {s['longest_s']:.2f} |")
        if "speed_copies" in s:
            lines.append(f"| {split}: data.speed_perturb's copies | {s['speed_copies']} | "
                         f"{s['speed_copies_minutes']:.2f} | | |")
    if "mel_image" in summary:
        lines.append(f"mel image: {summary['mel_image']}")
    return "\n".join(lines)


def check_mels(cfg: DataStageConfig, mel_dir: str | Path, split: str = "all", max_files: int = 200) -> dict:
    """Compare a folder of external mels (`data.mel_dir`) with the models' own mels of the corpus's audio:
    which utterances have a file, its orientation and frame count against T // hop, the files that cannot
    be used, and the statistics and verdict of `distill.audio.melfiles.diagnose` (log10 vs ln, power vs
    magnitude, dB, normalisation, an offset or a shifted frame grid) over up to `max_files` of them."""
    mel_dir = Path(mel_dir)
    if not mel_dir.is_dir():
        raise CorpusError(f"--mels {mel_dir}: no such folder")
    features = cfg.features
    utts = resolve_corpus(cfg.data.corpus, split, cfg.data.valid_fraction, cfg.data.test_fraction)
    logmel, hop = LogMel(features), features.hop_length
    found = [(u, mel_file(mel_dir, u.id)) for u in utts]
    missing = [u.id for u, path in found if path is None]
    pairs, problems, transposed = [], [], 0
    offs: dict[int, int] = {}  # frames off -> files
    for utt, path in [(u, p) for u, p in found if p is not None][:max_files]:
        info: dict = {}
        try:
            theirs = read_mel(path, features.n_mels, info)
            audio = load_audio(utt.path, features.sample_rate)
        except (MelError, AudioError) as err:
            problems.append(str(err))
            continue
        off = theirs.shape[-1] - audio.numel() // hop
        offs[off] = offs.get(off, 0) + 1
        transposed += info["transposed"]
        try:
            align_mel(theirs, audio.numel(), hop, path)  # the training data's rule: more than TRIM_FRAMES off
        except MelError as err:
            problems.append(str(err))
            continue
        pairs.append((logmel(audio), theirs))
    report = {
        "mel_dir": str(mel_dir), "corpus": cfg.data.corpus, "split": split, "utterances": len(utts),
        "with_mel": len(utts) - len(missing), "missing": missing[:20], "missing_count": len(missing),
        "checked": len(pairs) + len(problems), "transposed": transposed,
        "frames_off_count": {str(k): v for k, v in sorted(offs.items())}, "problems": problems,
    }
    if pairs:
        report.update(diagnose(pairs, silence_value(features)))
    else:
        report["verdict"] = "no usable mel file to compare"
    return report


def format_mel_check(report: dict) -> str:
    transposed = f", {report['transposed']} stored as (frames, n_mels)" if report["transposed"] else ""
    lines = [f"mels: {report['mel_dir']} against corpus {report['corpus']} ({report['split']}): "
             f"{report['with_mel']} of {report['utterances']} utterances have a file; {report['checked']} checked"
             f"{transposed}"]
    if report["missing_count"]:
        lines.append(f"missing: {report['missing_count']} (e.g. {', '.join(report['missing'][:3])})")
    off = report["frames_off_count"]
    if off:
        lines.append("frames minus T // hop: " + ", ".join(f"{k}: {v} file(s)" for k, v in off.items()))
    lines += [f"error: {p}" for p in report["problems"]]
    if "fit" in report:
        t, o, f = report["theirs"], report["ours"], report["fit"]
        lines.append(f"values: theirs [{t['min']:.2f}, {t['max']:.2f}] mean {t['mean']:.2f} std {t['std']:.2f}; "
                     f"the audio's own [{o['min']:.2f}, {o['max']:.2f}] mean {o['mean']:.2f} std {o['std']:.2f}; "
                     f"theirs = {f['scale']:.3f} x ours {f['offset']:+.3f} (correlation {f['correlation']:.3f})")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)
