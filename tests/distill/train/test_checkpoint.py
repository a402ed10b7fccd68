"""Checkpoints: atomic writes, safe loading, clear errors, self-description, RNG round trip."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from distill.errors import CheckpointError
from distill.train import checkpoint as ck
from distill.train.checkpoint import (
    CheckpointManager,
    atomic_save,
    build_model,
    check_features,
    load_checkpoint,
    load_state,
    remember_args,
    rng_state,
    set_rng_state,
)


def payload(step: int = 1, **extra) -> dict:
    return {"format": ck.FORMAT, "version": ck.VERSION, "task": "teacher", "step": step,
            "model": {"w": torch.ones(3) * step}, "model_class": "teachers.wavenet:WaveNetTeacher", "model_args": {},
            "features": {}, **extra}


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    atomic_save(payload(1), target)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(payload(2), target)
    monkeypatch.undo()
    assert load_checkpoint(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_manager_keeps_last_k_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        manager.save(payload(step))
    assert [p.name for p in manager.step_files()] == ["step_00000020.pt", "step_00000030.pt"]
    assert load_checkpoint(manager.latest)["step"] == 30
    assert load_checkpoint(tmp_path / "checkpoints")["step"] == 30  # a folder means its latest.pt


def test_truncated_foreign_and_missing_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save(payload(), good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or not written by torch.save"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "noise.pt")
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a wavedistill checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({**payload(), "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**payload(), "extra": _RunsCode(str(marker))}, evil, pickle_protocol=protocol)
    with pytest.raises(CheckpointError, match="refused: the file holds Python objects that would run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({**payload(), "rng": [rng_state()]}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1), np.random.randn())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1), np.random.randn()) == expected


class Tiny(torch.nn.Module):
    @remember_args
    def __init__(self, width: int = 4, act: str = "tanh", sizes: list | None = None):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)


class Wider(Tiny):
    @remember_args
    def __init__(self, extra: int = 2):
        super().__init__(width=4 + extra)


def test_models_remember_their_own_constructor_arguments():
    assert Tiny(8, sizes=[1, 2]).constructor_args == {"width": 8, "act": "tanh", "sizes": [1, 2]}
    assert Wider(3).constructor_args == {"extra": 3}
    with pytest.raises(TypeError, match="not plain data"):
        Tiny(4, act=torch.nn.Tanh())


def test_build_model_rebuilds_trusted_classes_only(monkeypatch):
    model = Tiny(6)
    saved = {"model_class": ck.class_path(model), "model_args": model.constructor_args, "model": model.state_dict()}
    with pytest.raises(CheckpointError, match="not part of wavedistill"):
        build_model(saved)
    monkeypatch.setattr(ck, "_TRUSTED_PACKAGES", ck._TRUSTED_PACKAGES + ("tests",))
    rebuilt = build_model(saved)
    assert torch.equal(rebuilt.lin.weight, model.lin.weight)


def test_build_model_refuses_functions_and_bad_arguments(tmp_path):
    marker = tmp_path / "ran"
    evil = {"model_class": "distill.train.checkpoint:os.system", "model_args": {"command": f"touch {marker}"},
            "model": {}}
    with pytest.raises(CheckpointError, match="not a model class"):
        build_model(evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a model class"):
        build_model({**evil, "model_class": "distill.train.checkpoint:torch"})
    with pytest.raises(CheckpointError, match=r"model record \(model_args\) or features do not fit"):
        build_model({"model_class": "distill.nn.layers:CausalConv1d", "model_args": {"nope": 1}, "model": {}})


def test_strict_loading_names_the_mismatch():
    with pytest.raises(CheckpointError, match=r"shape mismatch lin.weight \(6, 6\) vs \(4, 4\)"):
        load_state(Tiny(4), Tiny(6).state_dict(), "model")
    with pytest.raises(CheckpointError, match="unexpected extra.w"):
        load_state(Tiny(4), {**Tiny(4).state_dict(), "extra.w": torch.ones(1)}, "model")


def test_feature_mismatch_names_both_values():
    with pytest.raises(CheckpointError, match=r"hop_length: 256 in teacher.pt vs 200 in the data"):
        check_features({"hop_length": 256, "n_mels": 80}, {"hop_length": 200, "n_mels": 80}, "teacher.pt", "the data")
    check_features({"n_mels": 80}, {"n_mels": 80}, "a", "b")


def test_a_checkpoint_written_before_preemphasis_existed_reads_as_preemphasis_zero(tmp_path):
    from distill.config import FeatureConfig, to_dict

    old = to_dict(FeatureConfig())
    del old["preemphasis"]  # what checkpoints before the key held
    atomic_save(payload(features=old), tmp_path / "old.pt")
    features = load_checkpoint(tmp_path / "old.pt")["features"]
    check_features(features, to_dict(FeatureConfig()), "old.pt", "the config")  # the same settings
    with pytest.raises(CheckpointError, match=r"preemphasis: 0.0 in old.pt vs 0.85 in the config"):
        check_features(features, to_dict(FeatureConfig(preemphasis=0.85)), "old.pt", "the config")
