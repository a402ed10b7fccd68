"""Copy synthesis and scoring: mel(reference) -> each vocoder -> audio, scored against the reference.

Systems: the reference itself (the PESQ ceiling), Griffin-Lim from the same mels (the floor a neural
vocoder must beat), the teacher (autoregressive sampling) and each student (one parallel pass); any
of them can be left out (`EvalRequest.systems`). On request, WORLD analysis-synthesis of the recording
(`eval.baselines.world_resynthesis`, an oracle: not from the mel), and the teacher's and the students'
audio after the mel post-filter (`distill.audio.postfilter`, `EvalRequest.postfilter`). Every system is
scored the same way: PESQ (wideband; narrowband on request), log-mel L1, multi-resolution STFT
distance, the teacher's NLL of its audio (for a student, an estimate of the cross-entropy H(P_S, P_T),
the part of KL(P_S || P_T) the teacher sees), and the library metrics that are installed
(`eval.metrics.LIBRARY_METRICS`: DNSMOS, STOI, F0 and voicing, MCD). Each synthesising system also gets
a real-time factor, timed on one clip at batch 1 (see `eval.timing.real_time_factor`); the teacher is
timed with its reference sampler (incremental) and its fastest one, and every speed-up is quoted
against both.

Voices: `eval.voices` chooses the utterances of each voice and groups the voices (its docstring states
the rule); `voice_sections` aggregates the scores per voice and per group of voices like `aggregate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from distill.audio.mel import LogMel
from distill.audio.postfilter import POST_FILTERED, MelPostFilter
from distill.config import FeatureConfig
from distill.data.corpus import resolve_corpus
from distill.data.datasets import UtteranceStore
from distill.errors import ConfigError, CorpusError
from eval.baselines import griffin_lim, world_resynthesis
from eval.degrade import MelDegradation
from eval.metrics import LIBRARY_METRICS, library_scores, mel_l1, pesq_scores, stft_distance
from eval.timing import real_time_factor
from eval.voices import GROUPS, UNLABELLED, select_utterances
from students.iaf import IAFStudent, synthesize
from teachers.sampling import fastest_method, generate
from teachers.wavenet import WaveNetTeacher

REFERENCE, GRIFFIN_LIM, WORLD, TEACHER, STUDENT = "reference", "griffin_lim", "world", "teacher", "student"
# what --systems chooses from ("student": every student; "world": on request, an oracle from the recording)
SYSTEMS = (REFERENCE, GRIFFIN_LIM, WORLD, TEACHER, STUDENT)
DEFAULT_SYSTEMS = (REFERENCE, GRIFFIN_LIM, TEACHER, STUDENT)


@dataclass
class Clip:
    id: str
    reference: torch.Tensor  # (F * hop,)
    mel: torch.Tensor  # (n_mels, F), no context
    speaker: int | None = None  # the speaker id a multi-speaker model synthesises it with
    speaker_name: str = ""  # the corpus's voice label ("" where it names none)
    degraded: torch.Tensor | None = None  # the mel every system synthesises from instead (eval.degrade)

    @property
    def input_mel(self) -> torch.Tensor:
        """The mel the systems synthesise from: `degraded` when set, else the recording's own `mel` (which
        the metrics and the reference's spectrogram always use)."""
        return self.mel if self.degraded is None else self.degraded

    @property
    def voice(self) -> str:
        """The voice it is reported under: its label, or UNLABELLED."""
        return self.speaker_name or UNLABELLED


def speakers_of(clips: list[Clip], device: torch.device) -> torch.Tensor | None:
    """The clips' speaker ids (B,), or None when they have none (single-speaker models)."""
    if any(c.speaker is None for c in clips):
        return None
    return torch.tensor([c.speaker for c in clips], device=device)


@dataclass
class EvalRequest:
    """One evaluation: what to synthesise and score, and how. Built by the CLI from its flags (or by a
    script), checked once by `validate`, made concrete by `eval.pipeline.run` (the "auto" sampler, the
    teacher's own temperature, the metrics that are installed), then used as it is: `evaluate` reads
    it and the report's settings are this resolved request."""

    teacher: str = ""  # checkpoint or run folder; "" = the shipped (universal) teacher
    students: tuple[str, ...] = ()  # checkpoints or run folders
    checkpoints: str = ""  # "" (each run's latest), "all" or steps "1000,2000": quality over training
    data: str = "demo"  # 'demo', an LJSpeech folder or any folder of audio files
    split: str = "test"
    max_utterances: int = 10  # 0 = all; of each voice when the split has several (`select_utterances`)
    max_seconds: float = 0.0  # cut each utterance (0 = whole)
    speaker: str | None = None  # multi-speaker models: synthesise every clip as this speaker
    training_voices: tuple[str, ...] | None = None  # the "training" group; None: the checkpoints' records
    device: str = "auto"
    systems: tuple[str, ...] = DEFAULT_SYSTEMS  # what is synthesised and scored (the reference is always the reference)
    metrics: tuple[str, ...] = ("all",)  # library metrics (eval.metrics.LIBRARY_METRICS), "all" or "none"
    pesq_modes: tuple[str, ...] = ("wb",)
    teacher_sampler: str = "auto"  # auto (graph on CUDA, incremental on a CPU), incremental, graph or fast
    teacher_batch: int = 16  # utterances the teacher samples together
    temperature: float | None = None  # the teacher's (None: its own synthesis temperature)
    # the teacher's temperature in voiced speech (`teachers.sampling.step_temperatures`): None, the recorded one
    # unless `temperature` is given; 0, none (`temperature` everywhere)
    voiced_temperature: float | None = None
    # the students' noise scale (1: a student distilled at loss.teacher_temperature T imitates the teacher at T)
    student_temperature: float = 1.0
    student_dtype: str = "float32"  # students: float32 or bfloat16 (autocast)
    student_compile: bool = False  # students' flows through torch.compile (`students.iaf.compiled_flows`)
    seed: int = 0
    rtf_seconds: float = 1.0  # length of the timing clip (0 = the whole first clip)
    rtf_runs: int = 5
    rtf_warmup: int = 1
    degrade_mels: str = ""  # eval.degrade: every system synthesises from degraded mels ("": the recordings')
    # > 0: also score the teacher and every student after this many iterations of the mel post-filter
    # (`distill.audio.postfilter.MelPostFilter`), as "<system> + post-filter", from the same draws
    postfilter: int = 0
    out: str = "runs/eval"

    def validate(self) -> None:
        """Every check that needs no file: one line naming the setting and the fix."""
        if self.max_utterances < 0 or self.max_seconds < 0 or self.rtf_runs < 1 or self.rtf_seconds < 0:
            raise ConfigError("--max-utterances, --max-seconds and --rtf-seconds must be >= 0 and --rtf-runs >= 1")
        unknown = [n for n in self.systems if n not in SYSTEMS]
        if unknown or not self.systems:
            raise ConfigError(f"--systems {','.join(self.systems)!r}: choose from {', '.join(SYSTEMS)} "
                              "(comma separated, e.g. --systems reference,griffin_lim,student)")
        if self.teacher_sampler not in ("auto", "incremental", "graph", "fast"):
            raise ConfigError(f"--teacher-sampler {self.teacher_sampler!r}: auto, incremental, graph or fast")
        if self.student_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--student-dtype {self.student_dtype!r}: float32 or bfloat16")
        if not set(self.pesq_modes) <= {"wb", "nb"}:
            raise ConfigError(f"PESQ modes {self.pesq_modes}: wb and/or nb")
        MelDegradation.parse(self.degrade_mels)
        if self.postfilter < 0:
            raise ConfigError(f"--postfilter {self.postfilter}: the mel post-filter's iterations, >= 0 (0: none)")
        if self.postfilter and not {TEACHER, STUDENT} & set(self.systems):
            raise ConfigError("--postfilter filters the teacher's and the students' audio: add teacher or student to "
                              "--systems, or leave --postfilter out")
        if WORLD in self.systems:
            if self.degrade_mels:
                raise ConfigError("--systems world analyses the recording, not its mel, so --degrade-mels would not "
                                  "reach it: leave world out of --systems, or --degrade-mels out")
            import importlib.util

            if importlib.util.find_spec("pyworld") is None:
                raise ConfigError("--systems world needs pyworld: pip install 'wavedistill[eval]', or leave world out")


def load_clips(corpus: str, split: str, features: FeatureConfig, max_utterances: int, max_seconds: float,
               speakers: str = "") -> list[Clip]:
    """The usable utterances of a split that `select_utterances` takes (unreadable, silent or too short
    files are skipped with a warning naming the file), each cut to `max_seconds` (0 = whole) and to whole
    hops. speakers: where the corpus names its speakers (data.speakers); each clip's `speaker` is then set
    by the caller from the model's map. Every clip keeps its utterance's voice label."""
    utts = select_utterances(resolve_corpus(corpus, split, speakers=speakers), max_utterances)
    store = UtteranceStore(utts, features, min_samples=features.n_fft, source=f"corpus '{corpus}' split '{split}'")
    clips = []
    for i, item in enumerate(store.items):
        audio = store.get(i)[0]
        if max_seconds > 0:
            audio = audio[: int(max_seconds * features.sample_rate)]
        frames = audio.numel() // features.hop_length
        if frames * features.hop_length < features.n_fft:
            continue
        audio = audio[: frames * features.hop_length]
        clips.append(Clip(item.utt.id, audio, store.logmel(audio), speaker_name=item.utt.speaker))
    if not clips:
        raise CorpusError(f"corpus '{corpus}' split '{split}': no utterance long enough to evaluate "
                          f"(need {features.n_fft} samples after --max-seconds)")
    return clips


@torch.inference_mode()
def teacher_synthesis(teacher: WaveNetTeacher, clips: list[Clip], features: FeatureConfig, device: torch.device,
                      batch_size: int = 16, temperature: float = 1.0, progress: bool = False,
                      method: str = "incremental", voiced_temperature: float | None = None) -> list[torch.Tensor]:
    """AR copy synthesis (`teachers.sampling.generate` method), utterances batched (shorter mels padded
    with silence, as `pad_mels` pads every mel's edges; a multi-speaker model gets each clip's own speaker
    id, so one batch may mix voices)."""
    outputs: list[torch.Tensor] = []
    for i in range(0, len(clips), batch_size):
        group = clips[i : i + batch_size]
        mels = teacher.pad_mels([c.input_mel for c in group]).to(device)
        audio = generate(teacher, mels, method, temperature=temperature, progress=progress,
                         speaker=speakers_of(group, device), voiced_temperature=voiced_temperature).float().cpu()
        outputs += [audio[j, : c.reference.numel()] for j, c in enumerate(group)]
    return outputs


def _autocast(name: str) -> torch.dtype | None:
    return {"float32": None, "bfloat16": torch.bfloat16}[name]


@torch.inference_mode()
def student_synthesis(student: IAFStudent, clips: list[Clip], features: FeatureConfig, device: torch.device,
                      temperature: float = 1.0, autocast_dtype: str = "float32",
                      compile: bool = False) -> list[torch.Tensor]:
    """Parallel copy synthesis, one utterance per pass."""
    return [
        synthesize(student, student.pad_mels(c.input_mel).to(device), temperature,
                   autocast_dtype=_autocast(autocast_dtype), compile=compile,
                   speaker=speakers_of([c], device))[0].float().cpu()
        for c in clips
    ]


@torch.inference_mode()
def teacher_nll(teacher: WaveNetTeacher, clips: list[Clip], audios: list[torch.Tensor], features: FeatureConfig,
                device: torch.device) -> list[float]:
    """The teacher's mean NLL of each audio given its clip's mel (teacher-forced), nats/sample as a density
    (a MoL teacher's bin NLL less log(1 / bin width): comparable across heads, students and Gaussians)."""
    out = []
    for clip, audio in zip(clips, audios, strict=True):
        mel = teacher.pad_mels(clip.input_mel).to(device)
        x = audio[: clip.reference.numel()].float().clamp(-1, 1)[None].to(device)
        out.append(float(-teacher.log_density(x, mel, speakers_of([clip], device)).mean()))
    return out


def timing_clip(clip: Clip, features: FeatureConfig, seconds: float) -> Clip:
    """The first `seconds` of a clip (whole hops), the input of every RTF measurement."""
    if seconds <= 0:
        return clip
    frames = max(1, min(clip.mel.shape[-1], int(seconds * features.sample_rate) // features.hop_length))
    return Clip(clip.id, clip.reference[: frames * features.hop_length], clip.mel[:, :frames], clip.speaker,
                clip.speaker_name, None if clip.degraded is None else clip.degraded[:, :frames])


def aggregate(rows: list[dict], pesq_modes: tuple = ("wb",), library_keys: tuple = ()) -> dict:
    """The mean scores of per-utterance rows (`score_systems`'s): PESQ and the library metrics skip NaN
    (an utterance where they are undefined; PESQ also counts the scored ones, "pesq_<mode>_scored"; no
    scored utterance gives NaN); log-mel L1, MR-STFT distance and the teacher NLL are defined for every
    utterance and averaged over all (a NaN among them shows)."""
    entry: dict[str, Any] = {}
    for mode in pesq_modes:
        scored = [r[f"pesq_{mode}"] for r in rows if not math.isnan(r[f"pesq_{mode}"])]
        entry[f"pesq_{mode}"] = sum(scored) / len(scored) if scored else math.nan
        entry[f"pesq_{mode}_scored"] = len(scored)
    for key in ("mel_l1", "stft_distance", "teacher_nll"):
        if rows and key in rows[0]:
            entry[key] = sum(r[key] for r in rows) / len(rows)
    for key in library_keys:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        entry[key] = sum(values) / len(values) if values else math.nan
    return entry


def voice_sections(table: dict, groups: dict[str, str], pesq_modes: tuple = ("wb",),
                   library_keys: tuple = ()) -> tuple[dict, dict]:
    """(report["voices"], report["groups"]): the overall table's means (`aggregate`) per voice and per
    group of voices, from each system's per-utterance rows (their "voice"). groups: each voice's group
    (`eval.voices.voice_groups`). voices[v] = {"group", "utterances", "systems": {system: means}};
    groups[g] = {"voices", "utterances", "systems": {system: means}}; groups and voices in GROUPS order,
    voices by name within a group."""
    order = sorted(groups, key=lambda v: (GROUPS.index(groups[v]), v))
    voices: dict[str, dict] = {}
    for voice in order:
        rows = {name: [r for r in entry["utterances"] if r["voice"] == voice] for name, entry in table.items()}
        voices[voice] = {"group": groups[voice], "utterances": len(next(iter(rows.values()), [])),
                         "systems": {name: aggregate(r, pesq_modes, library_keys) for name, r in rows.items()}}
    sections: dict[str, dict] = {}
    for group in GROUPS:
        members = [v for v in order if groups[v] == group]
        if not members:
            continue
        rows = {name: [r for r in entry["utterances"] if r["voice"] in members] for name, entry in table.items()}
        sections[group] = {"voices": members, "utterances": sum(voices[v]["utterances"] for v in members),
                           "systems": {name: aggregate(r, pesq_modes, library_keys) for name, r in rows.items()}}
    return voices, sections


def score_systems(clips: list[Clip], systems: dict[str, list[torch.Tensor]], features: FeatureConfig,
                  pesq_modes: tuple = ("wb",), nll: dict[str, list[float]] | None = None,
                  metrics: tuple = ()) -> dict:
    """Per-utterance scores (each row with its clip's voice) and their means (`aggregate`) per system.
    metrics: names of `eval.metrics.LIBRARY_METRICS` to add."""
    logmel = LogMel(features)
    library = [LIBRARY_METRICS[m] for m in metrics]
    library_keys = tuple(k for m in library for k in m.keys)
    table = {}
    for name, audios in systems.items():
        pairs = [(c.reference, a) for c, a in zip(clips, audios, strict=True)]
        pesq = {mode: pesq_scores(pairs, features.sample_rate, mode) for mode in pesq_modes}
        extra = library_scores(library, pairs, features.sample_rate)
        rows: list[dict[str, Any]] = []
        for i, (clip, audio) in enumerate(zip(clips, audios, strict=True)):
            row: dict[str, Any] = {"id": clip.id, "voice": clip.voice,
                                   "seconds": clip.reference.numel() / features.sample_rate}
            for mode in pesq_modes:
                row[f"pesq_{mode}"] = pesq[mode][i].score
                if pesq[mode][i].reason:
                    row[f"pesq_{mode}_reason"] = pesq[mode][i].reason
            row["mel_l1"] = mel_l1(clip.mel, logmel(audio))
            row["stft_distance"] = stft_distance(clip.reference, audio)
            if nll is not None:
                row["teacher_nll"] = nll[name][i]
            row.update(extra[i])
            rows.append(row)
        entry = aggregate(rows, pesq_modes, library_keys)
        entry["utterances"] = rows
        table[name] = entry
    return table


def evaluate(
    teacher: WaveNetTeacher,
    students: dict[str, IAFStudent],
    clips: list[Clip],
    features: FeatureConfig,
    device: torch.device,
    request: EvalRequest,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Synthesise, time and score every system of `request.systems`. Returns (systems table, audio per system)."""
    chosen = set(request.systems)
    systems: dict[str, list[torch.Tensor]] = {REFERENCE: [c.reference for c in clips]}
    names = [n for n in (GRIFFIN_LIM, WORLD, TEACHER) if n in chosen] + (list(students) if STUDENT in chosen else [])
    bar = tqdm(total=len(names) + 2, desc="evaluating", disable=not progress)
    probe = timing_clip(clips[0], features, request.rtf_seconds)
    probe_seconds = probe.reference.numel() / features.sample_rate
    rtf: dict[str, dict] = {}
    synths: dict[str, tuple[Callable[[list[Clip]], list[torch.Tensor]], str, int]] = {}  # the neural systems'

    def timing(name: str, synth: Callable[[list[Clip]], list[torch.Tensor]], dtype: str, warmup: int) -> dict:
        log(f"{name}: timing {request.rtf_runs} run(s) of a {probe_seconds:.2f} s clip after {warmup} warm-up")
        return real_time_factor(lambda: synth([probe]), probe_seconds, device, dtype=dtype,
                                repeats=request.rtf_runs, warmup=warmup)

    def run(name: str, synth: Callable[[list[Clip]], list[torch.Tensor]], dtype: str = "float32",
            warmup: int = request.rtf_warmup) -> None:
        bar.set_postfix_str(name)
        log(f"{name}: synthesising {len(clips)} utterance(s)")
        torch.manual_seed(request.seed)
        systems[name] = synth(clips)
        rtf[name] = timing(name, synth, dtype, warmup)
        synths[name] = (synth, dtype, warmup)
        bar.update()

    def teacher_synth(method: str) -> Callable[[list[Clip]], list[torch.Tensor]]:
        return lambda cs: teacher_synthesis(teacher, cs, features, device, request.teacher_batch,
                                            1.0 if request.temperature is None else request.temperature, False,
                                            method, request.voiced_temperature)

    if GRIFFIN_LIM in chosen:
        run(GRIFFIN_LIM, lambda cs: [griffin_lim(c.input_mel, features) for c in cs])
        rtf[GRIFFIN_LIM]["device"], rtf[GRIFFIN_LIM]["device_name"] = "cpu", "cpu (torchaudio Griffin-Lim)"
    if WORLD in chosen:
        run(WORLD, lambda cs: [world_resynthesis(c.reference, features.sample_rate) for c in cs])
        rtf[WORLD]["device"], rtf[WORLD]["device_name"] = "cpu", "cpu (pyworld analysis and synthesis)"
    teacher_rtf: dict[str, dict] = {}  # the teacher's RTF per sampler: the one evaluated, the reference, the fastest
    if TEACHER in chosen:
        run(TEACHER, teacher_synth(request.teacher_sampler))
        teacher_rtf[request.teacher_sampler] = rtf[TEACHER]
        for method in ("incremental", fastest_method(teacher, device)):
            if method not in teacher_rtf:
                teacher_rtf[method] = timing(f"{TEACHER} ({method} sampler)", teacher_synth(method), "float32",
                                             request.rtf_warmup)
    for name, student in students.items():
        if STUDENT not in chosen:
            break
        run(name, functools.partial(student_synthesis, student, features=features, device=device,
                                    temperature=request.student_temperature,
                                    autocast_dtype=request.student_dtype, compile=request.student_compile),
            request.student_dtype + (" compiled" if request.student_compile else ""),
            # a compiled student meets the probe's shape for the first time: compiling, and under
            # reduce-overhead recording its CUDA graphs, take the first two calls
            request.rtf_warmup + (2 if request.student_compile else 0))
    if request.postfilter:
        postfilter = MelPostFilter(features, request.postfilter)

        def filtered(audios: list[torch.Tensor], cs: list[Clip]) -> list[torch.Tensor]:
            return [postfilter(a.cpu(), c.input_mel.cpu()) for a, c in zip(audios, cs, strict=True)]

        def synthesise_filtered(synth: Callable[[list[Clip]], list[torch.Tensor]],
                                cs: list[Clip]) -> list[torch.Tensor]:
            return filtered(synth(cs), cs)  # what the post-filtered system's RTF times: synthesis and filter

        for name in [n for n in synths if n not in (GRIFFIN_LIM, WORLD)]:
            synth, dtype, warmup = synths[name]
            post = name + POST_FILTERED
            log(f"{post}: {request.postfilter} iteration(s) of the mel post-filter on {name}'s audio")
            systems[post] = filtered(systems[name], clips)  # the same draws
            rtf[post] = timing(post, functools.partial(synthesise_filtered, synth), dtype, warmup)
    bar.set_postfix_str("teacher NLL")
    nll = {name: teacher_nll(teacher, clips, audios, features, device) for name, audios in systems.items()}
    bar.update()
    bar.set_postfix_str("scoring")
    if request.metrics:
        log(f"scoring: PESQ and {', '.join(request.metrics)}")  # resolved: the installed library metrics
    table = score_systems(clips, systems, features, request.pesq_modes, nll, tuple(request.metrics))
    if REFERENCE not in chosen:
        del table[REFERENCE]
    bar.update()
    bar.close()
    for name, entry in table.items():
        entry["rtf"] = rtf.get(name)
        if name == TEACHER:
            entry["rtf_by_sampler"] = teacher_rtf
        elif name in rtf and teacher_rtf:
            entry["speedup_over_teacher"] = rtf[TEACHER]["median_s"] / rtf[name]["median_s"]
            entry["speedup_over_teacher_by_sampler"] = {m: t["median_s"] / rtf[name]["median_s"]
                                                        for m, t in teacher_rtf.items()}
    return table, systems
