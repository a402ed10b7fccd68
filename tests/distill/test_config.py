"""Strict typed configs: unknown keys, wrong types, overrides, `extends`, presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import DataStageConfig, TrainConfig, load_config, save_config
from distill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_the_key_the_file_and_a_suggestion(tmp_path):
    path = write(tmp_path, "data:\n  segmnt_length: 4096\n")
    with pytest.raises(ConfigError) as info:
        load_config(DataStageConfig, path)
    message = str(info.value)
    assert (str(path) in message and "'data.segmnt_length'" in message
            and "did you mean 'data.segment_length'" in message)


def test_wrong_types_name_the_key(tmp_path):
    for text, key, expected in [
        ("data:\n  segment_length: 4096.5\n", "data.segment_length", "an integer"),
        ("data:\n  preload: yes please\n", "data.preload", "true or false"),
        ("features: 3\n", "features", "a mapping"),
        ("features:\n  f_max: high\n", "features.f_max", "a number"),
    ]:
        with pytest.raises(ConfigError, match=f"key '{key}': expected {expected}"):
            load_config(DataStageConfig, write(tmp_path, text))


def test_literal_and_list_fields_are_checked():
    @__import__("dataclasses").dataclass
    class Holder:
        train: TrainConfig = __import__("dataclasses").field(default_factory=TrainConfig)

    with pytest.raises(ConfigError, match="one of 'constant', 'cosine', 'step'"):
        load_config(Holder, None, ["train.schedule=linear"])
    with pytest.raises(ConfigError, match=r"train.betas\[1\]"):
        load_config(Holder, None, ["train.betas=[0.9, fast]"])
    cfg = load_config(Holder, None, ["train.lr=1e-3", "train.betas=[0.8, 0.99]", "train.amp=bf16"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.train.betas == [0.8, 0.99] and cfg.train.amp == "bf16"


def test_overrides_and_extends(tmp_path):
    write(tmp_path, "features:\n  n_mels: 64\ndata:\n  segment_length: 4096\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ndata:\n  mel_context: 4\n", "child.yaml")
    cfg = load_config(DataStageConfig, child, ["data.segment_length=2048", "features.f_max=7600"])
    assert ((cfg.features.n_mels, cfg.data.segment_length, cfg.data.mel_context, cfg.features.f_max)
            == (64, 2048, 4, 7600.0))
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(DataStageConfig, child, ["data.segment_length"])
    with pytest.raises(ConfigError, match="'segment_length' is a value, not a section"):
        load_config(DataStageConfig, child, ["data.segment_length.x=1"])


def test_invalid_yaml_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="line 2 is not valid YAML"):
        load_config(DataStageConfig, write(tmp_path, "data:\n\tpreload: true\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(DataStageConfig, tmp_path / "nope.yaml")
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(DataStageConfig, tmp_path / "a.yaml")


def test_feature_validation_reports_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: features: .*Nyquist"):
        load_config(DataStageConfig, write(tmp_path, "features:\n  f_max: 9000\n"))


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(DataStageConfig, ROOT / "configs/data/demo.yaml", ["data.mel_context=5"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(DataStageConfig, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_presets_load(preset):
    cfg = load_config(DataStageConfig, preset)
    rate = {"ljspeech_22k.yaml": 22050, "libritts_24k.yaml": 24000}.get(preset.name, 16000)
    assert cfg.features.sample_rate == rate and cfg.features.f_max <= rate / 2


def test_extends_takes_a_list_merged_in_order_under_the_file_itself(tmp_path):
    write(tmp_path, "data:\n  mel_context: 3\n  segment_length: 100\n", "a.yaml")
    write(tmp_path, "data:\n  mel_context: 4\nfeatures:\n  n_mels: 40\n", "b.yaml")
    cfg = load_config(DataStageConfig, write(tmp_path, "extends: [a.yaml, b.yaml]\nfeatures:\n  n_mels: 20\n"))
    assert (cfg.data.segment_length, cfg.data.mel_context, cfg.features.n_mels) == (100, 4, 20)
    with pytest.raises(ConfigError, match="a path to a YAML file or a list of them"):
        load_config(DataStageConfig, write(tmp_path, "extends: [a.yaml, 3]\n", "bad.yaml"))


def test_a_partial_section_keeps_the_parents_defaults():
    from tests.toy import ToyConfig

    cfg = load_config(ToyConfig, None, ["train.steps=3", "data.corpus=/x"])
    assert (cfg.train.steps, cfg.train.log_every, cfg.train.ema_decay) == (3, 2, 0.99)  # ToyConfig's, not TrainConfig's
    assert cfg.data.segment_length == 2048


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.valid_every=0", "train.valid_every = 0 must be >= 1"),
        ("train.batch_size=0", "train.batch_size = 0 must be >= 1"),
        ("train.betas=[0.9]", "train.betas = [0.9] must be two numbers"),
        ("train.lr=-1", "train.lr = -1.0 must be > 0"),
        ("data.mel_context=-1", "data.mel_context = -1 must be >= 0"),
    ],
)
def test_out_of_range_values_are_config_errors(override, message):
    from tests.toy import ToyConfig

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(ToyConfig, None, [override])


def test_yaml_booleans_spell_literal_choices(tmp_path):
    from tests.toy import ToyConfig

    cfg = load_config(ToyConfig, write(tmp_path, "train:\n  amp: off\n"))
    assert cfg.train.amp == "off"
