"""Atomic, self-describing checkpoints, loaded safely.

A checkpoint is a dict saved with `torch.save` holding only tensors and plain data, so it loads
with `torch.load(weights_only=True)`: a file that would run code when unpickled is refused.

Keys: format, version, task, step, batches_consumed, nonfinite_skipped, compute (the CPU and wall
seconds the training loop spent, over every invocation), model, ema, optimizer,
scheduler, scaler, rng (per rank: python, numpy, torch, cuda), config (the full resolved config),
model_class, model_args (what rebuilds the model: `model_record`), features (the feature settings), extra (task data,
e.g. which teacher a student was distilled from), versions.

Writes go to a temp file in the same folder, are fsync'ed, then renamed over the target, so a crash
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import logging
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from distill.errors import CheckpointError, ConfigError

log = logging.getLogger("wavedistill")

FORMAT = "wavedistill-checkpoint"
VERSION = 1
# what every checkpoint has (loading any model needs them)
REQUIRED_KEYS = ("task", "step", "model", "model_class", "model_args", "features")
# what a checkpoint needs for --resume (an exported teacher or a foreign file has only some of it)
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "step", "batches_consumed", "nonfinite_skipped")
LATEST = "latest.pt"
# Only classes of this project may be rebuilt from a checkpoint's model_class.
_TRUSTED_PACKAGES = ("distill", "teachers", "students", "eval")
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")
M = TypeVar("M", bound=torch.nn.Module)  # load_model's model class
# Feature settings that older checkpoints predate, with the value those checkpoints were made with.
FEATURE_DEFAULTS = {"preemphasis": 0.0}


# --------------------------------------------------------------------------------------------
# What a checkpoint records of its model


def remember_args(init):
    """Decorate a module's `__init__` so the instance keeps its arguments in `constructor_args`.

    The outermost decorated `__init__` wins, so a subclass records its own arguments. Arguments must
    be plain data (numbers, strings, bools, None, lists, dicts) so that checkpoints stay safe to load.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        init(self, *args, **kwargs)
        _check_plain(arguments, type(self).__name__)
        object.__setattr__(self, "constructor_args", arguments)

    return wrapper


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: constructor argument keys must be strings, got {k!r}")
            _check_plain(v, where)
        return
    raise TypeError(
        f"{where}: constructor argument {value!r} ({type(value).__name__}) is not plain data; "
        "pass numbers, strings, lists or dicts so checkpoints can describe the model"
    )


def model_record(model: torch.nn.Module) -> dict:
    """What a checkpoint keeps as `model_args`: the model's `record()` (a model built from a config,
    rebuilt by its `from_record`), else the plain arguments `remember_args` kept."""
    record = getattr(model, "record", None)
    return record() if callable(record) else getattr(model, "constructor_args", {})


def class_path(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def checkpoint_payload(task: str, step: int, model_state: dict, model_class: str, model_args: dict,
                       features: dict, config: dict, extra: dict, versions: dict | None = None,
                       ema: dict | None = None, training: dict | None = None) -> dict:
    """A checkpoint's dict (module doc), built in one place: what every checkpoint holds, plus `training`
    (batches_consumed, nonfinite_skipped, optimizer, scheduler, scaler, rng, world_size: what --resume
    needs) for a training checkpoint; an exported model has none of it. versions: the ones it was made
    with (default: the running wavedistill and torch)."""
    if versions is None:
        import distill

        versions = {"wavedistill": distill.__version__, "torch": str(torch.__version__)}
    return {
        "format": FORMAT,
        "version": VERSION,
        "task": task,
        "step": step,
        "model": model_state,
        "ema": ema,
        **(training or {}),
        "config": config,
        "model_class": model_class,
        "model_args": model_args,
        "features": features,
        "extra": extra,
        "versions": versions,
    }


def build_model(payload: dict) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes (class + `model_record`) and load its weights."""
    module_name, _, qualname = payload["model_class"].partition(":")
    if module_name.split(".")[0] not in _TRUSTED_PACKAGES:
        raise CheckpointError(
            f"checkpoint names model class {payload['model_class']!r}, which is not part of wavedistill; "
            "refusing to import it"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    cls = vars(module).get(qualname) if module is not None else None
    # Only a model class defined in a wavedistill package: never a function or an imported name.
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == module_name):
        raise CheckpointError(
            f"checkpoint names model class {payload['model_class']!r}, which is not a model class of this wavedistill"
        )
    try:
        # a model built from a config rebuilds itself from the checkpoint (`from_record`); a model of plain
        # arguments (`remember_args`) from them
        rebuild = getattr(cls, "from_record", None)
        model = rebuild(payload) if rebuild is not None else cls(**payload["model_args"])
    except CheckpointError:
        raise
    except KeyError as err:
        raise CheckpointError(f"checkpoint's model record (model_args) has no key {err} that {payload['model_class']} "
                              "needs; was it written by another version of wavedistill?") from None
    except (TypeError, ValueError, RuntimeError, AttributeError, ConfigError) as err:  # RuntimeError: negative sizes
        raise CheckpointError(
            f"checkpoint's model record (model_args) or features do not fit {payload['model_class']} ({err}); "
            "was it written by another version of wavedistill?"
        ) from None
    load_state(model, payload["model"], "model")
    return model


def load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming the missing/unexpected/mismatched keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {', '.join(shapes[:3])}")
        raise CheckpointError(
            f"{what} weights do not fit the model ({'; '.join(parts)}); was it saved from another architecture?"
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------
# RNG states as plain data


def rng_state() -> dict:
    """The python, numpy, torch and CUDA RNG states of this process, as tensors and plain data."""
    # the legacy state tuple (numpy's stub picks its dict overload for a call without `legacy`)
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# --------------------------------------------------------------------------------------------
# Saving and loading


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:
                # a write that fails (a full disk: OSError ENOSPC) inside torch.save's zip writer surfaces as the
                # writer's own clean-up error ("[enforce fail at inline_container.cc] unexpected pos ...");
                # the OSError is what happened
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise OSError(errno.EIO, f"torch.save failed ({str(err).splitlines()[0]})") from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: the file itself, or a run folder's latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / LATEST, path / "checkpoints" / LATEST]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise CheckpointError(
                f"{path}: folder has no {LATEST} nor checkpoints/{LATEST}; pass a checkpoint file or a run folder"
            )
        path = found[0]
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a wavedistill checkpoint; every failure is a one-line `CheckpointError`."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not written by torch.save: no zip archive header)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler error:" in ln or "Unsupported" in ln]
        detail = (lines[-1].replace("WeightsUnpickler error:", "").strip().split(". ")[0][:160] if lines
                  else "not plain tensors and data")
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects that would run code when loaded "
            f"({detail}); only load checkpoints written by wavedistill"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint "
            f"(truncated or not written by torch.save: {str(err).splitlines()[0][:160]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wavedistill checkpoint (no format tag '{FORMAT}')")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')} is not {VERSION}, "
            "the one this wavedistill reads"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: an incomplete wavedistill checkpoint: it has no {', '.join(missing)} "
                              "(written by hand or by another tool?); use a checkpoint written by wavedistill")
    weights = payload["ema"]["model"] if isinstance(payload.get("ema"), dict) and "model" in payload["ema"] \
        else payload["model"]
    bad = [name for name, value in (("model", weights), ("model_args", payload["model_args"]),
                                    ("features", payload["features"])) if not isinstance(value, dict)]
    if bad or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: malformed wavedistill checkpoint ({', '.join(bad) or 'model'} is not a mapping"
                              f"{' of tensors' if not bad else ''}); use a checkpoint written by wavedistill")
    if isinstance(payload.get("features"), dict):
        # feature keys added after a checkpoint was written take their default, which is what it used
        payload["features"] = {**FEATURE_DEFAULTS, **payload["features"]}
    return payload


def check_features(saved: dict, current: dict, saved_name: str, current_name: str) -> None:
    """Raise if two feature settings differ, naming every differing key and both values."""
    diffs = [
        f"{key}: {saved.get(key)!r} in {saved_name} vs {current.get(key)!r} in {current_name}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if diffs:
        raise CheckpointError(
            "feature settings differ (" + "; ".join(diffs) + f"); use data/features that match {saved_name}"
        )


def load_model(
    path: str | Path,
    task: str,
    model_type: type[M],
    features: dict | None = None,
    device: str | torch.device = "cpu",
) -> tuple[M, dict]:
    """(model in eval mode with its EMA weights when saved, checkpoint payload) from a checkpoint file
    or run folder written by `task`. With `features` (a dict), settings that differ from the
    checkpoint's are an error naming both values."""
    path = Path(path)
    payload = load_checkpoint(path)
    if payload.get("task") != task:
        raise CheckpointError(f"{path}: is a '{payload.get('task')}' checkpoint, not a {task}")
    if features is not None:
        check_features(payload["features"], dict(features), f"{task} {path.name}", "the data/config")
    weights = payload["ema"]["model"] if payload.get("ema") else payload["model"]
    model = build_model({**payload, "model": weights})
    if not isinstance(model, model_type):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a {model_type.__name__}")
    return model.to(device).eval(), payload


class CheckpointManager:
    """Keeps `step_XXXXXXXX.pt` files (the last `keep_last`) and `latest.pt` in a run folder."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)

    @property
    def latest(self) -> Path:
        return self.dir / LATEST

    def step_file(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.pt"

    def named(self, path: Path) -> Path:
        """The step file that `path` is (latest.pt is a hard link to one), else `path`: what a log names."""
        if not path.exists():
            return path
        same = [f for f in self.step_files() if f != path and os.path.samefile(f, path)]
        return same[-1] if same else path

    def step_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        steps = {p: int(m.group(1)) for p in self.dir.iterdir() if (m := _STEP_FILE.match(p.name))}
        return sorted(steps, key=steps.__getitem__)

    def remove_temp_files(self) -> int:
        """Delete what interrupted writes left (`.step_*.pt.PID.tmp`, `.latest.pt.PID.link`); call it only
        while holding the run's lock (no other process writes here). Returns how many were removed."""
        if not self.dir.is_dir():
            return 0
        stale = [p for p in self.dir.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".link"))]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def newest_loadable(self) -> tuple[Path, dict] | None:
        """(path, payload) of the newest checkpoint that loads: the newest step file (a run killed between
        writing it and re-pointing latest.pt left latest behind), an older one if that is damaged, or
        latest.pt when it is newer still (a copy, or step files pruned); None when there is none. A damaged
        file is skipped with a warning naming it; when none loads, the newest one's error is raised (a run
        never silently starts again from step 0 over checkpoints it could not read)."""
        errors: list[CheckpointError] = []

        def load(path: Path) -> dict | None:
            try:
                return load_checkpoint(path, map_location="cpu")
            except CheckpointError as err:
                log.warning("skipping %s", err)
                errors.append(err)
                return None

        best: tuple[Path, dict] | None = None
        for path in reversed(self.step_files()):
            payload = load(path)
            if payload is not None:
                best = (path, payload)
                break
        if self.latest.exists() and not (best is not None and os.path.samefile(best[0], self.latest)):
            latest = load(self.latest)
            if latest is not None and (best is None or latest["step"] >= best[1]["step"]):
                best = (self.latest, latest)
        elif best is not None and self.latest.exists():
            best = (self.latest, best[1])  # the usual case: latest.pt is the newest step file (a hard link)
        if best is None and errors:
            raise errors[0]
        return best

    def save(self, payload: dict) -> Path:
        """Write the step file, point latest.pt at it (hard link, else a copy), prune old step files."""
        target = self.step_file(payload["step"])
        atomic_save(payload, target)
        tmp = self.dir / f".{LATEST}.{os.getpid()}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
            os.replace(tmp, self.latest)
        except OSError:
            tmp.unlink(missing_ok=True)
            atomic_save(payload, self.latest)
        _fsync_dir(self.dir)
        for old in self.step_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return target
