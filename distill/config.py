"""Typed configuration: dataclasses <- YAML, strictly.

Rules (every one gives a `ConfigError` naming the key and the file):
- an unknown key is an error (with the closest known key as a hint);
- a value of the wrong type is an error (ints are accepted where floats are expected, and
  strings such as "1e-3", which YAML 1.1 leaves as strings, are read as floats there);
- a file may start from another one with `extends: relative/path.yaml` (or a list of them, merged in
  order); its keys override the base;
- command-line overrides are `key.sub=value`, the value parsed as YAML.

The dataclasses here are the sections that every task shares (features, data, train); each task
adds its own `model` section and a top-level dataclass that groups them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

import yaml

from distill.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # the config schema's classes are dataclasses


@dataclass
class FeatureConfig:
    """Log-mel features; a checkpoint stores these and refuses data computed otherwise."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5
    # Pre-emphasis a (0 = off; LPCNet: 0.85): models learn y_t = x_t - a x_(t-1) and every output is
    # de-emphasised. The mel is always of the audio itself. log p(x) = log p(y) (unit Jacobian).
    preemphasis: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.preemphasis < 1:
            problems.append(f"preemphasis must be in [0, 1), got {self.preemphasis}")
        if self.win_length > self.n_fft:
            problems.append(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            problems.append(
                f"n_fft - hop_length = {self.n_fft - self.hop_length} must be even "
                "(each frame is centred on its hop block)"
            )
        if self.f_max > self.sample_rate / 2:
            problems.append(f"f_max {self.f_max} is above the Nyquist frequency {self.sample_rate / 2}")
        if not 0 <= self.f_min < self.f_max:
            problems.append(f"need 0 <= f_min < f_max, got f_min {self.f_min}, f_max {self.f_max}")
        if min(self.sample_rate, self.n_fft, self.hop_length, self.n_mels) <= 0 or self.log_floor <= 0:
            problems.append("sample_rate, n_fft, hop_length, n_mels and log_floor must be positive")
        if problems:
            raise ConfigError("features: " + "; ".join(problems))

    def analysis(self) -> dict:
        """The settings of the mel analysis that the mel's linear predictor and pitch source invert
        (`distill.nn.lpc.MelLPC`, `distill.nn.pitch.MelPitch`), which those modules take as arguments."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.win_length,
                "f_min": self.f_min, "f_max": self.f_max}

    def analysis_differences(self, name: str, args: dict) -> list[str]:
        """Where a module's copy of `analysis` (a predictor's or a pitch source's arguments, named `name`)
        differs from these settings, one "name.key value (features: value)" each."""
        expected = self.analysis()
        return [f"{name}.{key} {args[key]!r} (features: {expected[key]!r})" for key in args
                if key in expected and args[key] != expected[key]]


@dataclass
class DataConfig:
    """Where the audio comes from and how training crops are cut."""

    # "demo" (the bundled corpus), an LJSpeech-layout folder (metadata.csv + wavs/), or any folder of audio.
    corpus: str = "demo"
    # Training crop length in samples; rounded down to a multiple of the hop length.
    segment_length: int = 8192
    # Extra mel frames on each side of a crop, for the conditioning network's receptive field.
    mel_context: int = 2
    # Corpora without train.txt/valid.txt/test.txt lists are split by a hash of the utterance id.
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    # Where speaker names come from: "" (one speaker), "folder" (the first folder below the corpus root:
    # LibriTTS/<subset>, VCTK/wav48) or "column" (metadata.csv lines id|text|normalized text|speaker).
    # The training split's speakers, sorted, become ids 0..N-1 (the map is saved in every checkpoint).
    speakers: str = ""
    # Keep decoded audio and mels in memory (fast; the demo corpus needs ~30 MB).
    preload: bool = True
    # Folder for an on-disk mel cache keyed by the feature settings; empty = no cache.
    mel_cache: str = ""
    # Folder of external mels (a TTS model's, ground-truth aligned) to train on instead of the audio's own:
    # <utterance id>.npy or .pt per utterance, checked against the audio's T // hop frames (`distill.audio.melfiles`);
    # mel_cache is not used with it. Check a folder first: wavedistill data --mels DIR.
    mel_dir: str = ""
    # A file whose peak is below this is reported as silent and skipped.
    silence_threshold: float = 1e-4
    # DataLoader worker processes (0 = load in the training process).
    num_workers: int = 0
    # Speed perturbation of the training split: for each factor a, every training utterance gets a copy
    # that plays a times faster with its pitch and formants a times higher (`distill.audio.io.change_speed`;
    # its mel computed from the copy), a voice the corpus does not have. [] = off; [0.9, 1.1] triples the
    # training utterances. Validation and evaluation always read the audio as it is. Not with mel_dir.
    speed_perturb: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_ranges("data", [
            ("segment_length", self.segment_length >= 1, ">= 1"),
            ("mel_context", self.mel_context >= 0, ">= 0"),
            ("valid_fraction", 0 <= self.valid_fraction < 1, "in [0, 1)"),
            ("test_fraction", 0 <= self.test_fraction < 1 - self.valid_fraction, "in [0, 1 - valid_fraction)"),
            ("silence_threshold", self.silence_threshold >= 0, ">= 0"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
            ("speakers", self.speakers in ("", "folder", "column"), "one of folder, column or \"\""),
            ("speed_perturb", all(0.5 <= a <= 2 and speed_ratio(a) != 1 for a in self.speed_perturb)
             and len({speed_ratio(a) for a in self.speed_perturb}) == len(self.speed_perturb),
             "a list of factors in [0.5, 2], distinct and none of them 1 as fractions of denominator <= 100 "
             "(the audio as it is is always kept)"),
        ], self)
        if self.speed_perturb and self.mel_dir:
            raise ConfigError(f"data.speed_perturb {self.speed_perturb} with data.mel_dir {self.mel_dir!r}: the "
                              "external mels describe the audio as it is; drop one of the two")


def speed_ratio(factor: float) -> Fraction:
    """A speed-perturbation factor as the resampling ratio it is applied as: the nearest fraction with a
    denominator up to 100 (0.9 -> 9/10, 1.004 -> 1)."""
    return Fraction(factor).limit_denominator(100)


@dataclass
class TrainConfig:
    """The training loop shared by the teacher and the students."""

    steps: int = 10000
    batch_size: int = 4  # per process; the global batch is batch_size * world size
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = 0
    lr_min: float = 0.0  # floor of the cosine schedule
    decay_every: int = 200000  # "step" schedule: multiply the LR by decay_gamma every decay_every steps
    decay_gamma: float = 0.5
    # the last part of the budget at a lower LR (warmup-stable-decay): the steps from (1 - anneal_fraction)
    # x steps on, or, with max_minutes (max_cpu_minutes), also the last anneal_fraction of this invocation's
    # wall (CPU) time
    anneal_fraction: float = 0.0  # 0 = off
    anneal_factor: float = 0.25  # the LR's multiplier while annealing (on top of the schedule)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    ema_decay: float = 0.9999  # 0 disables EMA; the effective decay warms up as min(d, (1+n)/(10+n))
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto = bf16 on CUDA when supported, off on CPU
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    seed: int = 1234
    log_every: int = 50
    valid_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3  # step checkpoints kept besides latest.pt
    max_nonfinite_in_row: int = 20  # stop after this many consecutive non-finite losses
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much wall time; 0 = no limit. Resume to go on.
    # stop (with a checkpoint) after this much CPU time of the process, all its threads together; 0 = no
    # limit. An equal-budget comparison that other processes on the machine do not skew (docs/distill.md)
    max_cpu_minutes: float = 0.0
    compile: bool = False  # torch.compile the training model (pays on GPUs for long runs; compiling takes minutes)
    peak_tflops: float = 0.0  # the device's dense peak for train/mfu; 0 = the built-in GPU table (CPUs: none); set wins

    def __post_init__(self) -> None:
        _check_ranges("train", [
            ("steps", self.steps >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("lr_min", 0 <= self.lr_min <= self.lr, "in [0, lr]"),
            ("decay_every", self.decay_every >= 1, ">= 1"),
            ("decay_gamma", 0 < self.decay_gamma <= 1, "in (0, 1]"),
            ("anneal_fraction", 0 <= self.anneal_fraction < 1, "in [0, 1) (0 = off)"),
            ("anneal_factor", 0 < self.anneal_factor <= 1, "in (0, 1]"),
            ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = no clipping)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 = no EMA)"),
            ("log_every", self.log_every >= 1, ">= 1"),
            ("valid_every", self.valid_every >= 1, ">= 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("keep_last", self.keep_last >= 1, ">= 1"),
            ("max_nonfinite_in_row", self.max_nonfinite_in_row >= 1, ">= 1"),
            ("max_minutes", self.max_minutes >= 0, ">= 0 (0 = no limit)"),
            ("max_cpu_minutes", self.max_cpu_minutes >= 0, ">= 0 (0 = no limit)"),
            ("peak_tflops", self.peak_tflops >= 0, ">= 0 (0 = look the GPU up)"),
        ], self)


def _check_ranges(section: str, checks: list, obj) -> None:
    bad = [f"{section}.{name} = {getattr(obj, name)!r} must be {rule}" for name, ok, rule in checks if not ok]
    if bad:
        raise ConfigError("; ".join(bad))


@dataclass
class DataStageConfig:
    """The data-preparation stage (`wavedistill data`, and the demo until the model stages exist)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain data


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp` and convert it; raise ConfigError naming `key`."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(
            f"{where}: key '{key}': expected {expected}, got {value!r} ({type(value).__name__})"
        )

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a section (a class, not an instance)
        if not isinstance(value, dict):
            raise fail(f"a mapping of {tp.__name__} keys")
        return _build(tp, value, key, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except ConfigError as err:
                errors.append(err)
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off/on/yes/no as booleans
            spelled = [a for a in args
                       if str(a).lower() in (("on", "yes", "true") if value else ("off", "no", "false"))]
            value = spelled[0] if spelled else value
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list ({_type_name(tp)})")
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    raise ConfigError(f"{where}: key '{key}': unsupported annotation {tp!r} in the config schema")


def _build(cls: type[T], values: dict, prefix: str, where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        # A section given in part keeps the parent's defaults for the rest (which may differ from
        # the section class's own defaults, e.g. a task's TrainConfig(steps=...)).
        defaults = cls()
    except (TypeError, ConfigError):
        defaults = None
    kwargs = {}
    for name, value in values.items():
        full = f"{prefix}.{name}" if prefix else str(name)
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f" (did you mean '{(prefix + '.' if prefix else '') + close[0]}'?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{full}'{hint}; known keys here: {', '.join(sorted(known))}"
            )
        if defaults is not None and isinstance(value, dict) and dataclasses.is_dataclass(hints[name]):
            value = merge(to_dict(getattr(defaults, name)), value)
        kwargs[name] = _coerce(value, hints[name], full, where)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def from_dict(cls: type[T], values: dict, where: str = "<config>") -> T:
    """Build the dataclass `cls` from nested plain data, strictly (see the module docstring)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, got {type(values).__name__}")
    return _build(cls, values, "", where)


def to_dict(cfg: Any) -> dict:
    """The plain-data form of a config dataclass (safe for YAML and for checkpoints)."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# Files and overrides


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def config_path(path: str | Path) -> Path:
    """A config file argument as the file it names: the path as given, or a preset of the project when the
    path is relative and only that exists (configs/teacher/x.yaml works from any folder)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        return PROJECT_ROOT / path
    return path


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = config_path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file (presets are in configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} is not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'extends' must be a path to a YAML file or a list of them, got {base!r}")
    merged: dict = {}
    for name in bases:  # later files override earlier ones; this file overrides them all
        merged = merge(merged, _read_yaml(path.parent / name, seen + (path,)))
    return merge(merged, data)


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'train.lr=3e-4'` -> (['train', 'lr'], 3e-4). The value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override '{text}': expected key.sub=value, e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings to nested plain data (validation happens in `from_dict`)."""
    out = merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML file (or start from the defaults when `path` is None), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path is not None else {}
    where = str(path) if path is not None else "<defaults>"
    if overrides:
        data = apply_overrides(data, overrides)
        where += " + command-line overrides"
    return from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run really used, every key spelled out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
