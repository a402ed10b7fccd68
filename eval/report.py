"""The evaluation report: report.json (every number, the settings and versions), report.md (tables),
report.html (the same tables, spectrograms of every system side by side, audio players), the wavs,
and the same scalars, audio and spectrograms in TensorBoard.

The Markdown and HTML tables are rendered from one list of formatted rows (`summary_rows`), and
TensorBoard gets the unrounded values of report.json, so the four agree by construction.

An evaluation whose clips carry several voice labels adds report.json's `voices` and `groups` sections
(`eval.evaluate.voice_sections`; the groups' rule is `eval.voices.VOICE_RULE`, also in the settings):
a per-group and a per-voice table beside the overall ones, and the scalars `eval/<group>/<system>/<metric>`
and `eval/voice/<voice>/<system>/<metric>` beside `eval/<system>/<metric>`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import torch

from distill.audio.io import save_wav
from distill.audio.mel import LogMel
from distill.audio.plots import curves_figure, mel_figure, save_figure
from distill.config import FeatureConfig
from distill.train.logger import RunLogger
from eval.evaluate import GRIFFIN_LIM, REFERENCE, Clip
from eval.metrics import CREPE_PREFIX, LIBRARY_METRICS, METRIC_RATE
from eval.voices import voice_groups_note

SCALARS = ("pesq_wb", "pesq_nb", "mel_l1", "stft_distance", "teacher_nll",
           *(key for metric in LIBRARY_METRICS.values() for key in metric.keys))
# the library metrics' columns: (report key, heading, digits), in the order of their table; the pitch
# figures twice, as DIO and as CREPE read them
PITCH_COLUMNS = (
    ("f0_rmse_cents", "F0 RMSE (cents)", 1), ("vuv_f1", "V/UV F1", 3), ("vuv_precision", "V/UV prec.", 3),
    ("vuv_recall", "V/UV recall", 3), ("periodicity_error", "periodicity err.", 3),
)
METRIC_COLUMNS = (
    ("dnsmos_ovrl", "DNSMOS OVRL", 3), ("dnsmos_sig", "DNSMOS SIG", 3), ("dnsmos_bak", "DNSMOS BAK", 3),
    ("dnsmos_p808", "DNSMOS P.808", 3), ("stoi", "STOI", 3), ("estoi", "ESTOI", 3),
    *PITCH_COLUMNS,
    ("mcd", "MCD (dB)", 2),
    *((CREPE_PREFIX + key, f"CREPE {heading}", digits) for key, heading, digits in PITCH_COLUMNS),
)
TB_AUDIO_CLIPS = 3  # utterances whose audio and spectrograms go to TensorBoard


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _file_names(names) -> dict[str, str]:
    """A distinct file-name-safe form of each name ("a b" and "a_b" must not share files)."""
    out, taken = {}, set()
    for name in names:
        safe, n = _safe(name), 2
        while safe in taken:
            safe, n = f"{_safe(name)}-{n}", n + 1
        taken.add(safe)
        out[name] = safe
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return f"{value:.{digits}f}"


def _samplers(report: dict) -> list[str]:
    """The teacher samplers that were timed (every speed-up is quoted against each)."""
    return list((report["systems"].get("teacher") or {}).get("rtf_by_sampler") or {})


def summary_columns(report: dict) -> list[str]:
    modes = report["settings"]["pesq_modes"]
    return (["system"] + [f"PESQ {m}" for m in modes]
            + ["log-mel L1", "MR-STFT dist.", "teacher NLL (nats)", "RTF (median)", "RTF min-max", "x real time"]
            + [f"speed-up vs teacher ({m})" for m in _samplers(report)])


def summary_rows(report: dict) -> list[list[str]]:
    """One row of formatted cells per system, in the order of `summary_columns`."""
    rows = []
    for name, entry in report["systems"].items():
        cells = [name]
        for mode in report["settings"]["pesq_modes"]:
            scored, total = entry[f"pesq_{mode}_scored"], len(entry["utterances"])
            cells.append(_fmt(entry[f"pesq_{mode}"]) + ("" if scored == total else f" ({scored}/{total} scored)"))
        cells += [_fmt(entry["mel_l1"]), _fmt(entry["stft_distance"]), _fmt(entry["teacher_nll"])]
        rtf = entry.get("rtf")
        if rtf:
            cells += [_fmt(rtf["rtf"], 4), f"{_fmt(rtf['rtf_min'], 4)}-{_fmt(rtf['rtf_max'], 4)}",
                      _fmt(rtf["x_real_time"], 1)]
        else:
            cells += ["-", "-", "-"]
        speedups = entry.get("speedup_over_teacher_by_sampler") or {}
        for sampler in _samplers(report):
            speedup = speedups.get(sampler)
            cells.append(f"{speedup:.1f}x" if speedup is not None and math.isfinite(speedup) else "-")
        rows.append(cells)
    return rows


def _metric_keys(report: dict) -> list[tuple[str, str, int]]:
    entries = list(report["systems"].values())
    return [c for c in METRIC_COLUMNS if entries and c[0] in entries[0]]


def metric_columns(report: dict) -> list[str]:
    """The library metrics' table (DNSMOS, STOI, F0, MCD): only the columns that were computed."""
    keys = _metric_keys(report)
    return ["system"] + [heading for _, heading, _ in keys] if keys else []


def metric_rows(report: dict) -> list[list[str]]:
    keys = _metric_keys(report)
    if not keys:
        return []
    # NaN (undefined, e.g. STOI of a clip too short for it) is null in report.json: both read "NaN"
    return [[name] + [_fmt(math.nan if entry[key] is None else entry[key], digits) for key, _, digits in keys]
            for name, entry in report["systems"].items()]


def utterance_columns(report: dict) -> list[str]:
    return (["utterance"] + (["voice"] if report.get("voices") else []) + ["seconds"]
            + [f"{name} PESQ {report['settings']['pesq_modes'][0]}" for name in report["systems"]])


def utterance_rows(report: dict) -> list[list[str]]:
    mode = report["settings"]["pesq_modes"][0]
    systems = list(report["systems"].values())
    rows = []
    for i, utt in enumerate(systems[0]["utterances"]):
        rows.append([utt["id"]] + ([utt["voice"]] if report.get("voices") else []) + [_fmt(utt["seconds"], 2)]
                    + [_fmt(s["utterances"][i][f"pesq_{mode}"]) for s in systems])
    return rows


def _cell(entry: dict, key: str, digits: int = 3) -> str:
    """A mean of `entry` formatted ("-": not computed; "NaN": undefined, null in report.json)."""
    if key not in entry:
        return "-"
    return _fmt(_number(entry[key]), digits)


def _score_keys(report: dict) -> list[tuple[str, str, int]]:
    """(key, heading, digits) of every mean of a per-voice or per-group row, in the overall tables' order."""
    return ([(f"pesq_{m}", f"PESQ {m}", 3) for m in report["settings"]["pesq_modes"]]
            + [("mel_l1", "log-mel L1", 3), ("stft_distance", "MR-STFT dist.", 3),
               ("teacher_nll", "teacher NLL (nats)", 3)] + _metric_keys(report))


def _score_cells(report: dict, entry: dict, count: int) -> list[str]:
    cells = []
    for key, _, digits in _score_keys(report):
        scored = entry.get(f"{key}_scored", count) if key.startswith("pesq_") else count
        cells.append(_cell(entry, key, digits) + ("" if scored == count else f" ({scored}/{count} scored)"))
    return cells


def _voice_list(voices: list[str], shown: int = 4) -> str:
    if len(voices) <= shown:
        return ", ".join(voices)
    return f"{', '.join(voices[:shown - 1])} and {len(voices) - shown + 1} more"


def group_columns(report: dict) -> list[str]:
    """The per-group table (empty without a `groups` section): one row per group and system."""
    if not report.get("groups"):
        return []
    return ["group", "voices", "utterances", "system"] + [h for _, h, _ in _score_keys(report)]


def group_rows(report: dict) -> list[list[str]]:
    return [[group, _voice_list(g["voices"]), str(g["utterances"]), name] + _score_cells(report, entry, g["utterances"])
            for group, g in (report.get("groups") or {}).items() for name, entry in g["systems"].items()]


def voice_columns(report: dict) -> list[str]:
    """The per-voice table (empty without a `voices` section): one row per voice and system."""
    if not report.get("voices"):
        return []
    return ["voice", "group", "utterances", "system"] + [h for _, h, _ in _score_keys(report)]


def voice_rows(report: dict) -> list[list[str]]:
    return [[voice, v["group"], str(v["utterances"]), name] + _score_cells(report, entry, v["utterances"])
            for voice, v in (report.get("voices") or {}).items() for name, entry in v["systems"].items()]


def group_lines(report: dict) -> list[str]:
    """The console's per-group summary: one line per group and system with PESQ, V/UV F1 and DNSMOS OVRL
    (those computed), each beside Griffin-Lim's on the same clips (in brackets)."""
    groups = report.get("groups") or {}
    if not groups:
        return []
    mode = report["settings"]["pesq_modes"][0]
    keys = [(f"pesq_{mode}", f"PESQ {mode}", 3), ("vuv_f1", "V/UV F1", 3), ("dnsmos_ovrl", "DNSMOS OVRL", 3)]
    heads = {group: f"{group} ({_voice_list(g['voices'])}; {g['utterances']} utt.)" for group, g in groups.items()}
    width = max(map(len, heads.values()))
    names = max(len(name) for g in groups.values() for name in g["systems"])
    lines = ["per group of voices, Griffin-Lim's on the same clips in brackets:"]
    for group, g in groups.items():
        floor = g["systems"].get(GRIFFIN_LIM)
        for name, entry in g["systems"].items():
            parts = [f"{heading} {_cell(entry, key, digits)}"
                     + (f" ({_cell(floor, key, digits)})" if floor is not None and name != GRIFFIN_LIM else "")
                     for key, heading, digits in keys if key in entry]
            lines.append(f"{heads[group]:<{width}}  {name:<{names}}  " + "  ".join(parts))
    return lines


def pesq_note(report: dict) -> str:
    """How PESQ was scored: at its own rate (16 kHz wideband, 8 kHz narrowband), resampled when the
    audio is at another one."""
    s = report["settings"]
    rate = int(s.get("features", {}).get("sample_rate", 16000))
    own = {"wb": 16000, "nb": 8000}
    resampled = [f"PESQ {m} at {own[m] // 1000} kHz" for m in s["pesq_modes"] if own.get(m, rate) != rate]
    if not resampled:
        return ""
    return (f"The audio is at {rate} Hz; {' and '.join(resampled)} (ITU-T P.862's rates): reference and "
            "system output are both resampled for it. The other metrics use the audio as it is.")


def timing_note(report: dict) -> str:
    s = report["settings"]
    timing = next((e["rtf"] for e in report["systems"].values() if e.get("rtf")), None)
    if timing is None:
        return ""
    return (f"RTF = synthesis wall time / audio duration (lower is faster), median of {timing['runs']} runs after "
            f"{timing['warmup']} warm-up, batch {timing['batch']}, a {timing['audio_seconds']:.2f} s clip, "
            f"{s['device_name']} ({s['device']}), {timing['threads']} CPU threads, torch {timing['torch']}; "
            f"teacher sampler: {s.get('teacher_sampler', 'incremental')}; students in {s['student_dtype']}"
            f"{', compiled' if s.get('student_compile') else ''}. "
            "Griffin-Lim runs on the CPU (torchaudio)"
            f"{'; the mel post-filter too, after the model it follows' if s.get('postfilter') else ''}.")


def notes(report: dict) -> str:
    """The lines under the summary table: how PESQ and the RTF were measured."""
    return " ".join(n for n in (pesq_note(report), timing_note(report)) if n)


def metric_note(report: dict) -> str:
    """The line under the metrics table: what each is, where it comes from, and what was skipped."""
    s = report["settings"]
    skipped = list((s.get("metrics_skipped") or {}).values())
    if not s.get("metrics") and not skipped:
        return ""
    about = {
        "dnsmos": "DNSMOS P.835 / P.808 from speechmos (non-intrusive: the reference is scored too; higher is better)",
        "stoi": "STOI and ESTOI from pystoi (1 = the reference)",
        "f0": "F0 RMSE in cents over the frames voiced in both, voiced/unvoiced F1 against the reference's voicing "
              "and the RMS periodicity difference, from pyworld (DIO + StoneMask, D4C; lower is better, F1 higher)",
        "mcd": "mel-cepstral distortion from mel_cepstral_distance (aligned, no DTW; lower is better)",
        "crepe": "F0 RMSE, voiced/unvoiced F1 and the RMS periodicity difference read by torchcrepe (Vocos's "
                 "settings: the full model, 50-550 Hz, silence below -60 dB A-weighted, unvoiced below periodicity "
                 "0.21; lower is better, F1 higher)",
    }
    parts = []
    if s.get("metrics"):
        parts.append(f"At {METRIC_RATE // 1000} kHz (other rates resampled). "
                     + "; ".join(about[m] for m in s["metrics"] if m in about)
                     + ". Means skip utterances where a metric is undefined.")
    parts += skipped
    return " ".join(parts)


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def to_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Evaluation: {s['data']} / {s['split']}, {s['utterances']} utterance(s), "
             f"{s['audio_seconds']:.1f} s", ""]
    lines += _markdown_table(summary_columns(report), summary_rows(report))
    lines += ["", notes(report), ""]
    if metric_columns(report):
        lines += ["## Objective metrics", ""] + _markdown_table(metric_columns(report), metric_rows(report)) + [""]
    if metric_note(report):
        lines += [metric_note(report), ""]
    if group_columns(report):
        lines += ["## Per group of voices", ""] + _markdown_table(group_columns(report), group_rows(report)) + [""]
        lines += ["## Per voice", ""] + _markdown_table(voice_columns(report), voice_rows(report)) + [""]
    lines += ["## Per utterance", ""]
    lines += _markdown_table(utterance_columns(report), utterance_rows(report))
    lines += ["", "## Settings", ""] + [f"- {k}: {v}" for k, v in _settings_lines(report)]
    return "\n".join(lines) + "\n"


def _settings_lines(report: dict) -> list[tuple[str, str]]:
    s = report["settings"]
    lines = [("teacher", f"{s['teacher']['path']} (step {s['teacher']['step']}, sha256 {s['teacher']['sha256'][:12]})")]
    for name, info in s["students"].items():
        origin = ("distilled from this teacher" if info["teacher_matches"]
                  else f"distilled from another teacher ({info['teacher_path']})")
        spent = f", {info['cpu_minutes']:.1f} CPU-minutes" if info.get("cpu_minutes") is not None else ""
        lines.append((name, f"{info['path']} (step {info['step']}{spent}, {origin})"))
    lines += [(k, str(s[k])) for k in ("data", "split", "utterances", "selection", "max_seconds", "seed",
                                         "temperature", "device", "device_name", "threads") if k in s]
    if s.get("voiced_temperature") is not None and "teacher" in report["systems"]:
        lines.append(("voiced temperature", f"{s['voiced_temperature']} (the teacher's, in voiced speech; "
                                            f"{s.get('temperature')} where unvoiced)"))
    if s.get("degrade_mels"):
        lines.append(("mels", f"degraded ({s['mel_degradation']['description']}); the reference is the recording"))
    if report.get("groups"):
        lines.append(("voice groups", voice_groups_note(report)))
    lines += [(k, str(v)) for k, v in report["versions"].items()]
    return lines


CURVE_KEYS = (("pesq_wb", "PESQ wb"), ("pesq_nb", "PESQ nb"), ("mel_l1", "log-mel L1"),
              ("stft_distance", "MR-STFT dist."), ("teacher_nll", "teacher NLL (nats)"))


def over_training(report: dict) -> dict[str, dict]:
    """Quality over training: for each run evaluated at several checkpoints (`--checkpoints`),
    {"name": its rows' common name, "steps": [...], "systems": [...], key: [values]} for every metric."""
    series: dict[str, dict] = {}
    for name, info in report["settings"]["students"].items():
        if info.get("series") and name in report["systems"]:
            entry = series.setdefault(info["series"], {"name": name.rsplit(" @ ", 1)[0], "steps": [], "systems": []})
            entry["steps"].append(info["step"])
            entry["systems"].append(name)
    keys = [(k, h) for k, h in CURVE_KEYS + tuple((k, h) for k, h, _ in METRIC_COLUMNS)
            if any(k in e for e in report["systems"].values())]
    for entry in series.values():
        order = sorted(range(len(entry["steps"])), key=entry["steps"].__getitem__)
        entry["steps"] = [entry["steps"][i] for i in order]
        entry["systems"] = [entry["systems"][i] for i in order]
        entry["keys"] = keys
        for key, _ in keys:
            entry[key] = [_number(report["systems"][n].get(key)) for n in entry["systems"]]
    return {run: e for run, e in series.items() if len(e["steps"]) > 1}


def _number(value) -> float:
    return math.nan if value is None else float(value)


def over_training_figure(report: dict, entry: dict):
    """Every metric of one run against the checkpoint's step, the teacher and Griffin-Lim as lines."""
    panels, lines = {}, {}
    for key, heading in entry["keys"]:
        panels[heading] = {entry["name"]: (entry["steps"], entry[key])}
        lines[heading] = {n: _number(report["systems"][n].get(key)) for n in ("teacher", "griffin_lim")
                          if n in report["systems"]}
    return curves_figure(panels, lines)


def training_curves(run: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The loss terms and validation scalars a run logged (`metrics.jsonl`), by tag: (steps, values);
    a step logged twice (a run resumed from an earlier checkpoint) keeps its last value."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    by_tag: dict[str, dict[int, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        for tag, value in record.items():
            if (tag.startswith(("loss/", "valid/")) or tag == "loss") and isinstance(value, (int, float)):
                by_tag.setdefault(tag, {})[int(record["step"])] = float(value)
    return {tag: (sorted(v), [v[k] for k in sorted(v)]) for tag, v in sorted(by_tag.items())}


def _html_table(columns: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; padding: 6px; }
figure img { width: 100%; display: block; }
figure audio { width: 100%; margin-top: 4px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.note { color: #555; max-width: 70em; }
img.curves { max-width: 1000px; width: 100%; }
"""


def to_html(report: dict, media: dict[str, dict[str, dict[str, str]]],
            figures: list[tuple[str, str]] | None = None) -> str:
    """media[clip id][system] = {"image": relative path, "audio": relative path}; figures: (heading,
    relative image path) of the curves (quality over training, training curves)."""
    s = report["settings"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>wavedistill evaluation</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Evaluation: {html.escape(s['data'])} / {html.escape(s['split'])}, {s['utterances']} utterance(s), "
        f"{s['audio_seconds']:.1f} s</h1>",
        _html_table(summary_columns(report), summary_rows(report), "summary"),
        f"<p class='note'>{html.escape(notes(report))}</p>",
        *(["<h2>Objective metrics</h2>", _html_table(metric_columns(report), metric_rows(report), "metrics")]
          if metric_columns(report) else []),
        *([f"<p class='note'>{html.escape(metric_note(report))}</p>"] if metric_note(report) else []),
        *(["<h2>Per group of voices</h2>", _html_table(group_columns(report), group_rows(report), "groups"),
           "<h2>Per voice</h2>", _html_table(voice_columns(report), voice_rows(report), "voices")]
          if group_columns(report) else []),
        *(f"<h2>{html.escape(heading)}</h2><img class='curves' src='{html.escape(image)}' "
          f"alt='{html.escape(heading)}'>" for heading, image in figures or []),
        "<h2>Per utterance</h2>",
        _html_table(utterance_columns(report), utterance_rows(report), "utterances"),
    ]
    for clip_id, systems in media.items():
        parts.append(f"<h3>{html.escape(clip_id)}</h3><div class='grid'>")
        for name, files in systems.items():
            parts.append(
                f"<figure><figcaption>{html.escape(name)}</figcaption>"
                f"<img src='{html.escape(files['image'])}' alt='log-mel spectrogram, {html.escape(name)}'>"
                f"<audio controls preload='metadata' src='{html.escape(files['audio'])}'></audio></figure>"
            )
        parts.append("</div>")
    parts.append("<h2>Settings</h2><ul>")
    parts += [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in _settings_lines(report)]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def write_report(out: Path, report: dict, clips: list[Clip], systems: dict[str, list[torch.Tensor]],
                 features: FeatureConfig, image_clips: int = 0) -> dict[str, Path]:
    """Write everything into `out`; returns the paths of report.json/md/html. `image_clips` limits
    how many utterances get spectrogram images and players in the HTML (0 = all)."""
    out.mkdir(parents=True, exist_ok=True)
    logmel = LogMel(features)
    media: dict[str, dict[str, dict[str, str]]] = {}
    logger = RunLogger(out, resume_step=-1)  # a fresh TensorBoard view each time the folder is reused
    system_files, clip_files = _file_names(systems), _file_names(c.id for c in clips)
    for i, clip in enumerate(clips):
        mels = {name: (clip.mel if name == REFERENCE else logmel(audios[i])) for name, audios in systems.items()}
        stem = clip_files[clip.id]
        for name, audios in systems.items():
            save_wav(out / "wavs" / f"{stem}_{system_files[name]}.wav", audios[i], features.sample_rate)
            report.setdefault("wavs", {}).setdefault(clip.id, {})[name] = f"wavs/{stem}_{system_files[name]}.wav"
        if image_clips and i >= image_clips:
            continue
        low = float(clip.mel.min())
        high = max(float(m.max()) for m in mels.values())
        media[clip.id] = {}
        for name, mel in mels.items():
            image = f"images/{stem}_{system_files[name]}.png"
            save_figure(mel_figure([mel], [f"{name}: {clip.id}"], features.hop_length, features.sample_rate,
                                   (low, high), width=6.0), out / image)
            media[clip.id][name] = {"image": image, "audio": f"wavs/{stem}_{system_files[name]}.wav"}
        if i < TB_AUDIO_CLIPS:
            for name, audios in systems.items():
                logger.audio(f"audio/{clip.id}/{name}", audios[i], features.sample_rate, 0)
            logger.figure(f"mel/{clip.id}", mel_figure(list(mels.values()), list(mels), features.hop_length,
                                                       features.sample_rate, (low, high)), 0)
    figures: list[tuple[str, str]] = []  # (heading, image path) for the page's curves
    for run, entry in over_training(report).items():
        image = f"images/over_training_{_safe(Path(run).name)}.png"
        save_figure(over_training_figure(report, entry), out / image)
        logger.figure(f"over_training/{entry['name']}", over_training_figure(report, entry), 0)
        for i, step in enumerate(entry["steps"]):
            logger.scalars({f"over_training/{entry['name']}/{k}": entry[k][i] for k, _ in entry["keys"]}, step)
        figures.append((f"Quality over training: {entry['name']} ({run})", image))
    runs = {info["run"]: name.rsplit(" @ ", 1)[0] for name, info in report["settings"]["students"].items()
            if info.get("run")}
    if report["settings"]["teacher"].get("run"):
        runs[report["settings"]["teacher"]["run"]] = "teacher"
    for run, name in runs.items():
        curves = training_curves(Path(run))
        if curves:
            image = f"images/training_{_safe(Path(run).name)}.png"
            save_figure(curves_figure({tag: {name: xy} for tag, xy in curves.items()}), out / image)
            figures.append((f"Training curves: {name} ({run}/metrics.jsonl)", image))
    for name, entry in report["systems"].items():
        values = {f"eval/{name}/{k}": entry[k] for k in SCALARS if k in entry}
        if entry.get("rtf"):
            values[f"eval/{name}/rtf"] = entry["rtf"]["rtf"]
            values[f"eval/{name}/x_real_time"] = entry["rtf"]["x_real_time"]
        if entry.get("speedup_over_teacher") is not None:
            values[f"eval/{name}/speedup_over_teacher"] = entry["speedup_over_teacher"]
        for sampler, speedup in (entry.get("speedup_over_teacher_by_sampler") or {}).items():
            values[f"eval/{name}/speedup_over_teacher_{sampler}"] = speedup
        logger.scalars(values, 0)
    # per group and per voice: the same quantities under the same names, the group or voice before the system
    for prefix, section in ([(f"eval/{g}", e) for g, e in (report.get("groups") or {}).items()]
                            + [(f"eval/voice/{v}", e) for v, e in (report.get("voices") or {}).items()]):
        for name, entry in section["systems"].items():
            logger.scalars({f"{prefix}/{name}/{k}": entry[k] for k in SCALARS if k in entry}, 0)
    logger.text("eval/summary", to_markdown(report), 0)
    logger.close()
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    # strict JSON: NaN (a PESQ that could not be scored; its reason is beside it) is written as null
    paths["json"].write_text(json.dumps(_strict(report), indent=2, default=_json_default, allow_nan=False),
                             encoding="utf-8")
    paths["md"].write_text(to_markdown(report), encoding="utf-8")
    paths["html"].write_text(to_html(report, media, figures), encoding="utf-8")
    return paths


def _strict(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, (torch.Tensor,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return float(value)
