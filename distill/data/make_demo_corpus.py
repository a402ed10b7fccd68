"""Make the bundled multi-voice demo corpus with flite and festival (`wavedistill make-demo-corpus`).

The corpus shipped in `distill/data/demo_corpus/` was made by this module; users never need the synthesisers.
To remake it: `apt-get install flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
festvox-italp16k festvox-itapc16k festvox-ca-ona-hts`, then `wavedistill make-demo-corpus`. Audio files
that exist are kept (`--force` remakes those of the voices named by `--voices`, or all), so the committed
audio never changes by accident; metadata.csv and the split lists are always rewritten, and FLAC files of
utterances no longer planned are removed.

Voices (`VOICES`): flite's slt (female, US English; the demo voice), rms (male), awb (male, Scottish) and
kal16 (male); festival's kal_diphone (male), ked_diphone (male), cmu_us_slt_arctic_hts (female), the
Italian lp_diphone (female) and pc_diphone (male) and the Catalan upc_ca_ona_hts (female), all reading
English. ked_diphone and upc_ca_ona_hts are held out of train (`HELD_OUT_VOICES`).

slt, unchanged since the corpus had one voice so that its figures stay comparable: lines 1-150 of
`sentences.txt` (sentences written for this project), ids demo_0001..demo_0150, flite duration stretch
0.85, leading/trailing silence trimmed to 100 ms, no level change. Of every 15 the 8th is valid and the
15th test, the rest train: 130 / 10 / 10.

Every other voice reads slt's sentences under the id `<voice>_<NNNN>`, NNNN the sentence's line, so
rms_0015 says what demo_0015 says, in the split slt has it in. The k-th training voice (k = 0..6 in
`VOICES` order, slt not counted) reads 22 of slt's train sentences starting at the 22k-th (wrapping
round), 2 of its valid sentences from the 2k-th and 4 of its test sentences from the 4k-th: the seven
windows cover every train text, each test text is read by slt and two or three training voices, and no
voice ever trains on a test text. The j-th held-out voice reads 4 of slt's valid sentences from the 4j-th
and all 10 test sentences, nothing in train. In all 374 utterances, 284 train, 32 valid, 58 test; 22
train sentences a voice (not more) keep the FLAC under 25 MB.

Recipe of the other voices: flite voices at slt's stretch 0.85; festival voices at their natural rate,
because its HTS voices ignore festival's duration stretch (the diphone voices would be the only ones sped
up) and their utterances, about 1.3x as long as slt's, stay within 7 s. Each is resampled to 16 kHz
(scipy's polyphase `resample_poly`; cmu_us_slt_arctic_hts speaks at 32 kHz) and scaled so that its
active level (`active_level`) is the median of slt's, unless that would put its peak above 0.99: then the
peak is 0.99 and the utterance stays quieter (`match_level`; the peakier waveforms of kal16, kal_diphone
and ked_diphone leave them 3-5 dB below slt, awb 1 dB). Silence is trimmed as slt's, and the level matched once
more. The Italian voices are given '.' for '?': festival's Italian intonation fails on some questions.
metadata.csv: `id|text|text|voice`, slt's voice column `slt`.

The wider held-out set (`make-demo-corpus --held-out-set --out DIR`, `make_held_out_set`): six more of
Debian's festival voices (`EXTRA_HELD_OUT`: Czech, Finnish and Russian; two women, three men and a child)
read slt's 10 test sentences into DIR/<voice>/<voice>_<NNNN>.flac, made as the other voices are (16 kHz,
trimmed, levels matched to slt's). It is not bundled (the corpus's FLAC budget is spent) and no preset
trains on it: `wavedistill eval --data DIR --split all` scores every model on it as held-out voices.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from distill.data.corpus import demo_corpus_dir
from distill.errors import WavedistillError

log = logging.getLogger("wavedistill")

SAMPLE_RATE = 16000
MARGIN_S = 0.1
TRIM_THRESHOLD = 0.01
STRETCH = 0.85  # flite's duration_stretch: slt's recipe, kept for every flite voice
PEAK_CEILING = 0.99
SLT_COUNT = 150
TRAIN_PER_VOICE, VALID_PER_VOICE, TEST_PER_VOICE = 22, 2, 4
HELD_OUT_VALID = 4

# Never in train: evaluation on them measures how a model does on voices it never heard. One of each sex:
# ked_diphone is made the way training voice kal_diphone is (US English diphones), so only the speaker is
# new: the near case; upc_ca_ona_hts brings another language's speaker and the HTS method: the far case.
HELD_OUT_VOICES = ("ked_diphone", "upc_ca_ona_hts")


@dataclass(frozen=True)
class Voice:
    """One synthetic voice: its name (the speaker label), synthesiser, sex and the Debian package that has it."""

    name: str
    engine: str  # "flite" or "festival"
    sex: str
    package: str
    no_questions: bool = False  # read '?' as '.' (festival's Italian intonation fails on some questions)

    @property
    def held_out(self) -> bool:
        return self.name in HELD_OUT_VOICES or self.name in EXTRA_BY_NAME

    def prefix(self) -> str:
        """The utterance ids' prefix: `demo` for slt (its ids predate the other voices), else the name."""
        return "demo" if self.name == "slt" else self.name


VOICES = (
    Voice("slt", "flite", "female", "flite"),
    Voice("rms", "flite", "male", "flite"),
    Voice("awb", "flite", "male", "flite"),
    Voice("kal16", "flite", "male", "flite"),
    Voice("kal_diphone", "festival", "male", "festvox-kallpc16k"),
    Voice("ked_diphone", "festival", "male", "festvox-kdlpc16k"),
    Voice("cmu_us_slt_arctic_hts", "festival", "female", "festvox-us-slt-hts"),
    Voice("lp_diphone", "festival", "female", "festvox-italp16k", no_questions=True),
    Voice("pc_diphone", "festival", "male", "festvox-itapc16k", no_questions=True),
    Voice("upc_ca_ona_hts", "festival", "female", "festvox-ca-ona-hts"),
)
VOICE_BY_NAME = {v.name: v for v in VOICES}

# Debian's other festival voices at 16 kHz or more, never in the bundled corpus: a wider held-out set
# (`make_held_out_set`) of languages, speakers and pitch ranges no training voice has, from a child's 253 Hz
# (czech_krb; median F0 by pyworld's DIO over the 10 test sentences) to a man's 74 Hz (czech_machac), reading
# the English test sentences with their own language's letter-to-sound rules. Left out: festvox-czech-ph (a
# third Czech man), the 8 kHz English voices, and the Hindi, Marathi and Telugu voices (not tried).
EXTRA_HELD_OUT = (
    Voice("czech_dita", "festival", "female", "festvox-czech-dita"),
    Voice("czech_krb", "festival", "child", "festvox-czech-krb"),
    Voice("czech_machac", "festival", "male", "festvox-czech-machac"),
    Voice("suo_fi_lj_diphone", "festival", "female", "festvox-suopuhe-lj"),
    Voice("hy_fi_mv_diphone", "festival", "male", "festvox-suopuhe-mv"),
    Voice("msu_ru_nsh_clunits", "festival", "male", "festvox-ru"),
)
EXTRA_BY_NAME = {v.name: v for v in EXTRA_HELD_OUT}


@dataclass(frozen=True)
class Entry:
    """One planned utterance: id, voice name, 1-based line of sentences.txt, its text and split."""

    id: str
    voice: str
    line: int
    text: str
    split: str


# A synthesiser: (voice, text) -> (audio (T,) float in [-1, 1], its sample rate).
Synth = Callable[[Voice, str], tuple[np.ndarray, int]]


def split_of(position: int) -> str:
    """slt's split of the utterance at 1-based `position`."""
    if position % 15 == 0:
        return "test"
    if position % 15 == 8:
        return "valid"
    return "train"


def _window(items: list[int], start: int, count: int) -> list[int]:
    return sorted(items[(start + i) % len(items)] for i in range(count))


def slt_lines(sentences: Sequence[str]) -> dict[str, list[int]]:
    """The 1-based lines of `sentences` in each of slt's splits (one line naming the shortfall when there are
    fewer than the corpus needs)."""
    if len(sentences) < SLT_COUNT:
        raise WavedistillError(f"sentences.txt has {len(sentences)} sentences; the demo corpus needs {SLT_COUNT}")
    return {s: [p for p in range(1, SLT_COUNT + 1) if split_of(p) == s] for s in ("train", "valid", "test")}


def plan_corpus(sentences: Sequence[str], voices: Sequence[Voice] = VOICES) -> list[Entry]:
    """The utterances of `voices` (slt first, then `VOICES` order) by the rule in the module docstring."""
    lines = slt_lines(sentences)
    training = [v.name for v in VOICES if v.name != "slt" and not v.held_out]
    entries = []
    for voice in sorted(voices, key=VOICES.index):
        if voice.name == "slt":
            chosen = [(p, split_of(p)) for p in range(1, SLT_COUNT + 1)]
        elif voice.held_out:
            j = HELD_OUT_VOICES.index(voice.name)
            chosen = [(p, "valid") for p in _window(lines["valid"], HELD_OUT_VALID * j, HELD_OUT_VALID)]
            chosen += [(p, "test") for p in lines["test"]]
        else:
            k = training.index(voice.name)
            chosen = [(p, s) for s, n in (("train", TRAIN_PER_VOICE), ("valid", VALID_PER_VOICE),
                                          ("test", TEST_PER_VOICE)) for p in _window(lines[s], n * k, n)]
        entries += [Entry(f"{voice.prefix()}_{p:04d}", voice.name, p, sentences[p - 1], s)
                    for p, s in sorted(chosen)]
    return entries


def trim_silence(x: np.ndarray, sample_rate: int, threshold: float = TRIM_THRESHOLD,
                 margin_s: float = MARGIN_S) -> np.ndarray:
    """Cut leading/trailing samples quieter than `threshold`, keeping `margin_s` of silence each side."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x
    margin = int(margin_s * sample_rate)
    return x[max(0, loud[0] - margin) : min(len(x), loud[-1] + 1 + margin)]


def active_level(x: np.ndarray, sample_rate: int, floor_db: float = -40.0, frame_s: float = 0.02) -> float:
    """RMS of x (T,) over its 20 ms frames whose own RMS is within `floor_db` of the loudest frame's:
    the level of the speech, which pauses and trimmed margins do not dilute. 0 for silence."""
    n = int(frame_s * sample_rate)
    frames = np.asarray(x, dtype=np.float64)[: len(x) // n * n].reshape(-1, n)
    if frames.size == 0:
        return 0.0
    power = (frames**2).mean(axis=1)
    if power.max() <= 0:
        return 0.0
    active = power[power >= power.max() * 10 ** (floor_db / 10)]
    return float(np.sqrt(active.mean()))


def match_level(x: np.ndarray, target: float, sample_rate: int, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """x (T,) scaled so that its `active_level` is `target`, or its peak `ceiling` where that is lower."""
    level, peak = active_level(x, sample_rate), float(np.abs(x).max(initial=0.0))
    if level <= 0:
        raise WavedistillError("a synthesised utterance is silent; the voice produced no audio")
    gain = min(target / level, ceiling / peak)
    return (x * gain).astype(np.float32)


def to_rate(x: np.ndarray, rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """x (T,) from `rate` to `new_rate` Hz (polyphase FIR, scipy's Kaiser window)."""
    if rate == new_rate:
        return x.astype(np.float32)
    g = gcd(rate, new_rate)
    return resample_poly(np.asarray(x, dtype=np.float64), new_rate // g, rate // g).astype(np.float32)


def installed_voices() -> dict[str, set[str] | None]:
    """The voices each synthesiser has here, by engine; None where the synthesiser is not installed."""
    found: dict[str, set[str] | None] = {"flite": None, "festival": None}
    if shutil.which("flite"):
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
        found["flite"] = set(out.split(":", 1)[-1].split())
    if shutil.which("text2wave") and shutil.which("festival"):
        out = subprocess.run(["festival", "--pipe"], input="(print (voice.list))\n", capture_output=True,
                             text=True).stdout
        found["festival"] = set(out.replace("(", " ").replace(")", " ").split())
    return found


def check_voices(voices: Sequence[Voice], installed: dict[str, set[str] | None]) -> None:
    """One line naming the Debian package to install for the first voice `installed` lacks."""
    for voice in voices:
        have = installed.get(voice.engine)
        if have is None:
            tool = "flite" if voice.engine == "flite" else "festival (text2wave)"
            raise WavedistillError(f"{tool} is not installed; apt-get install {voice.engine}")
        if voice.name not in have:
            raise WavedistillError(f"{voice.engine} voice {voice.name} is not installed; "
                                   f"apt-get install {voice.package}")


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """`text` spoken by `voice`: (audio (T,) float32, its sample rate). flite voices at `STRETCH`."""
    spoken = text.replace("?", ".") if voice.no_questions else text
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        if voice.engine == "flite":
            cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={STRETCH}", "-t", spoken,
                   "-o", str(wav)]
        else:
            (Path(tmp) / "in.txt").write_text(spoken + "\n", encoding="utf-8")
            cmd = ["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(wav), str(Path(tmp) / "in.txt")]
        result = subprocess.run(cmd, capture_output=True, text=True)
        said = (result.stdout + result.stderr).strip()
        # festival reports a Scheme error on stdout and still exits 0, leaving no usable file
        if result.returncode != 0 or "ERROR" in said or not wav.is_file() or wav.stat().st_size <= 44:
            raise WavedistillError(f"{voice.engine} voice {voice.name} failed on {text[:40]!r}: {said[:200]}")
        x, rate = sf.read(str(wav), dtype="float32")
    return (x if x.ndim == 1 else x.mean(axis=1)), rate


def render(voice: Voice, text: str, target: float | None, synth: Synth) -> np.ndarray:
    """The corpus audio of one utterance (T,) at 16 kHz: slt's recipe for slt (`target` unused), resampled,
    level-matched to `target` and trimmed for the others."""
    x, rate = synth(voice, text)
    if voice.name == "slt":
        if rate != SAMPLE_RATE:
            raise WavedistillError(f"flite produced {rate} Hz audio, expected {SAMPLE_RATE}; "
                                   "is the slt voice installed?")
        return trim_silence(x, rate)
    assert target is not None  # set from slt's utterances before any other voice is rendered
    # matched before trimming, so that the trim threshold sits at the same level below the speech as slt's,
    # and again after, because trimming moves the frames `active_level` measures (a change of ~0.2 dB)
    y = trim_silence(match_level(to_rate(x, rate), target, SAMPLE_RATE), SAMPLE_RATE)
    return match_level(y, target, SAMPLE_RATE)


def read_sentences() -> list[str]:
    source = demo_corpus_dir() / "sentences.txt"
    return [s.strip() for s in source.read_text(encoding="utf-8").splitlines() if s.strip()]


def _names(names: str | Sequence[str]) -> list[str]:
    return [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]


def parse_voices(names: str | Sequence[str] | None) -> list[Voice]:
    """Voices by name ("rms,awb" or a list; None: all); slt is always among them (the demo voice and the
    level every other voice is matched to)."""
    if names is None:
        return list(VOICES)
    wanted = _known(names, VOICE_BY_NAME)
    return [v for v in VOICES if v.name == "slt" or v.name in wanted]


def _known(names: str | Sequence[str], catalogue: dict[str, Voice]) -> list[str]:
    """The names asked for, each checked against `catalogue` (one line naming the first unknown one)."""
    wanted = _names(names)
    unknown = [n for n in wanted if n not in catalogue]
    if unknown:
        raise WavedistillError(f"unknown voice {unknown[0]!r}; choose from {', '.join(catalogue)}")
    return wanted


def make_demo_corpus(out_dir: str | Path | None = None, voices: str | Sequence[str] | None = None,
                     force: bool = False, synth: Synth | None = None,
                     installed: dict[str, set[str] | None] | None = None) -> dict:
    """Write the demo corpus of `voices` (default all; slt always) into `out_dir` (default: the packaged
    corpus). Existing audio is kept, unless `force`: then the voices named are synthesised again (slt only
    when named or when `voices` is None). synth/installed: the synthesiser and the voices each engine has
    (default: the real ones). Returns the summary (`summarize`)."""
    chosen = parse_voices(voices)
    forced = {v.name for v in chosen} if voices is None else set(_names(voices))
    entries = plan_corpus(read_sentences(), chosen)
    out = Path(out_dir) if out_dir is not None else demo_corpus_dir()
    wavs = out / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    todo = [e for e in entries if (force and e.voice in forced) or not audio_path(out, e).is_file()]
    if todo:
        needed = [v for v in chosen if any(e.voice == v.name for e in todo)]
        check_voices(needed, installed if installed is not None else installed_voices())
    planned = {f"{e.id}.flac" for e in entries}
    stale = [p for p in wavs.glob("*.flac") if p.name not in planned]
    for p in stale:
        p.unlink()
    if stale:
        log.info("removed %d audio file(s) of utterances no longer in the corpus", len(stale))
    synth = synth or synthesize
    target: float | None = None
    for i, e in enumerate(todo):
        voice = VOICE_BY_NAME[e.voice]
        if voice.name != "slt" and target is None:
            target = slt_level(wavs, entries)
        x = render(voice, e.text, target, synth)
        sf.write(str(audio_path(out, e)), x, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        if (i + 1) % 50 == 0:
            log.info("synthesised %d of %d utterances", i + 1, len(todo))
    (out / "metadata.csv").write_text("".join(f"{e.id}|{e.text}|{e.text}|{e.voice}\n" for e in entries),
                                      encoding="utf-8")
    for split in ("train", "valid", "test"):
        (out / f"{split}.txt").write_text("".join(f"{e.id}\n" for e in entries if e.split == split),
                                          encoding="utf-8")
    summary = summarize(out, entries)
    summary.update(made=len(todo), kept=len(entries) - len(todo))
    return summary


def plan_held_out_set(sentences: Sequence[str], voices: Sequence[Voice] = EXTRA_HELD_OUT) -> list[Entry]:
    """The wider held-out set: each of `voices` reads the 10 sentences of slt's test split (texts no voice of
    the corpus trains on), ids `<voice>_<NNNN>` as in the corpus."""
    lines = slt_lines(sentences)["test"]
    return [Entry(f"{v.name}_{p:04d}", v.name, p, sentences[p - 1], "test") for v in voices for p in lines]


def audio_path(out: Path, entry: Entry) -> Path:
    """Where an utterance's FLAC lives: `wavs/<id>.flac` in the corpus, `<voice>/<id>.flac` in the wider
    held-out set (a folder with one sub-folder per voice, which `wavedistill eval --data` labels by it)."""
    folder = entry.voice if entry.voice in EXTRA_BY_NAME else "wavs"
    return out / folder / f"{entry.id}.flac"


def make_held_out_set(out_dir: str | Path, voices: str | Sequence[str] | None = None, force: bool = False,
                      synth: Synth | None = None, installed: dict[str, set[str] | None] | None = None) -> dict:
    """Write the wider held-out set of `voices` (names from `EXTRA_HELD_OUT`; default all) into `out_dir`, one
    sub-folder per voice, resampled to 16 kHz, trimmed and level-matched as the corpus's voices are (to the
    median active level of the bundled slt). Not part of the bundled corpus and never trained on; existing
    audio is kept unless `force`. synth/installed as `make_demo_corpus`'s. Returns the summary."""
    out, corpus = Path(out_dir).resolve(), demo_corpus_dir().resolve()
    if out.is_relative_to(corpus) or corpus.is_relative_to(out):
        raise WavedistillError(f"{out} is or holds the bundled demo corpus; give the wider held-out set a folder of "
                               "its own (make-demo-corpus --held-out-set --out DIR)")
    wanted = None if voices is None else set(_known(voices, EXTRA_BY_NAME))
    chosen = [v for v in EXTRA_HELD_OUT if wanted is None or v.name in wanted]
    sentences = read_sentences()
    entries = plan_held_out_set(sentences, chosen)
    todo = [e for e in entries if force or not audio_path(out, e).is_file()]
    if todo:
        check_voices([v for v in chosen if any(e.voice == v.name for e in todo)],
                     installed if installed is not None else installed_voices())
    target = slt_level(corpus / "wavs", plan_corpus(sentences, [VOICE_BY_NAME["slt"]]))
    synth = synth or synthesize
    for e in todo:
        path = audio_path(out, e)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), render(EXTRA_BY_NAME[e.voice], e.text, target, synth), SAMPLE_RATE, subtype="PCM_16",
                 format="FLAC")
    summary = summarize(out, entries, reference=target)
    summary.update(made=len(todo), kept=len(entries) - len(todo))
    return summary


def slt_level(wavs: Path, entries: Sequence[Entry]) -> float:
    """The median `active_level` of slt's utterances in `wavs`: the level every other voice is given."""
    levels = [active_level(sf.read(str(wavs / f"{e.id}.flac"), dtype="float32")[0], SAMPLE_RATE)
              for e in entries if e.voice == "slt"]
    return float(np.median(levels))


def summarize(out: Path, entries: Sequence[Entry], reference: float | None = None) -> dict:
    """Per voice: sex, group, utterances per split, minutes, megabytes of FLAC, shortest/longest seconds
    and the median active level in dB relative to slt's (to `reference` when given: a set without slt);
    and the totals. The audio of an entry is `audio_path(out, entry)`."""
    voices: dict[str, dict] = {}
    for e in entries:
        path = audio_path(out, e)
        x, rate = sf.read(str(path), dtype="float32")
        voice = VOICE_BY_NAME.get(e.voice) or EXTRA_BY_NAME[e.voice]
        v = voices.setdefault(e.voice, {
            "sex": voice.sex, "group": "held-out" if voice.held_out else "train",
            "train": 0, "valid": 0, "test": 0, "seconds": [], "bytes": 0, "levels": []})
        v[e.split] += 1
        v["seconds"].append(len(x) / rate)
        v["bytes"] += path.stat().st_size
        v["levels"].append(active_level(x, rate))
    if reference is None:
        reference = float(np.median(voices["slt"]["levels"])) if "slt" in voices else 1.0
    table = {}
    for name, v in voices.items():
        table[name] = {
            "sex": v["sex"], "group": v["group"], "train": v["train"], "valid": v["valid"], "test": v["test"],
            "minutes": round(sum(v["seconds"]) / 60, 2), "megabytes": round(v["bytes"] / 1e6, 2),
            "shortest_s": round(min(v["seconds"]), 2), "longest_s": round(max(v["seconds"]), 2),
            "level_db": round(20 * np.log10(float(np.median(v["levels"])) / reference), 1) + 0.0,  # no -0.0
        }
    return {
        "voices": table,
        "utterances": len(entries),
        **{s: sum(t[s] for t in table.values()) for s in ("train", "valid", "test")},
        "minutes": round(sum(t["minutes"] for t in table.values()), 2),
        "megabytes": round(sum(t["megabytes"] for t in table.values()), 2),
        "folder": str(out),
    }


def format_summary(summary: dict) -> str:
    """The summary as a table: one line per voice, then the totals."""
    head = f"{'voice':<22} {'sex':<6} {'group':<8} {'train':>5} {'valid':>5} {'test':>4} {'min':>5} {'MB':>5} " \
           f"{'s':>9} {'dB':>5}"
    rows = [head]
    for name, t in summary["voices"].items():
        rows.append(f"{name:<22} {t['sex']:<6} {t['group']:<8} {t['train']:>5} {t['valid']:>5} {t['test']:>4} "
                    f"{t['minutes']:>5.1f} {t['megabytes']:>5.1f} {t['shortest_s']:>4.1f}-{t['longest_s']:<4.1f} "
                    f"{t['level_db']:>5.1f}")
    rows.append(f"{'all':<22} {'':<6} {'':<8} {summary['train']:>5} {summary['valid']:>5} {summary['test']:>4} "
                f"{summary['minutes']:>5.1f} {summary['megabytes']:>5.1f}")
    rows.append(f"{summary['utterances']} utterances in {summary['folder']} ({summary.get('made', 0)} synthesised, "
                f"{summary.get('kept', 0)} kept); dB: median active level relative to slt's")
    return "\n".join(rows)
