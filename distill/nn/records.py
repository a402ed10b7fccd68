"""Model records in checkpoints: what a checkpoint's `model_args` hold for the models built from these
parts, and the conversion of the flat constructor arguments that checkpoints kept before models took
their config (up to 2026-12-05). Teachers and students both read their records through here."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from distill.audio.mel import silence_value
from distill.config import FeatureConfig, from_dict
from distill.errors import CheckpointError
from distill.nn.lpc import MelLPC


def read_record(payload: dict, legacy: Callable[[dict, FeatureConfig], dict]) -> tuple[dict, FeatureConfig]:
    """(a checkpoint's model record, its features); legacy(payload, features) converts the flat constructor
    arguments of checkpoints written before models took their config."""
    features = from_dict(FeatureConfig, payload["features"], "the checkpoint's features")
    args = payload["model_args"]
    return (args if "model" in args else legacy(payload, features)), features


def legacy_record(args: dict, features: FeatureConfig, where: str = "the checkpoint's model arguments") -> dict:
    """Flat constructor arguments, as checkpoints kept them before models took their config (up to
    2026-12-05) -> the `record` of the model they describe: {"model": its config section as plain data,
    "mel_context": ...}, and the predictor's arguments as "linear_prediction" (None when off). Their
    copies of the features (n_mels, hop_length, preemphasis, mel_silence, the analysis settings in the
    predictor's and a student's pitch source's arguments) must equal the checkpoint's features, or it is
    a one-line CheckpointError naming `where`. A student's arguments keep their own keys (the caller
    takes what it needs); values the old constructors replaced by a default (None, an empty list) take
    that default."""
    if not isinstance(args, dict) or not all(isinstance(args.get(k) or {}, dict)
                                             for k in ("linear_prediction", "pitch_source")):
        raise CheckpointError(f"{where} are not a mapping with mappings for linear_prediction and pitch_source; "
                              "use a checkpoint written by wavedistill")
    model = dict(args)
    mel_context = model.pop("mel_context", 2)
    lp: dict = dict(model.pop("linear_prediction", None) or {})
    if lp:  # the old predictor's default order, where the arguments left it out
        lp.setdefault("order", inspect.signature(MelLPC.__init__).parameters["order"].default)
    copies = {"n_mels": features.n_mels, "hop_length": features.hop_length, "preemphasis": features.preemphasis,
              "mel_silence": silence_value(features)}
    differ = [f"{key} {model[key]!r} (features: {value!r})" for key, value in copies.items()
              if key in model and model[key] != value]
    differ += features.analysis_differences("linear_prediction", lp)
    differ += features.analysis_differences("pitch_source", model.get("pitch_source") or {})
    if differ:
        raise CheckpointError(f"{where} disagree with its features (" + "; ".join(differ)
                              + "); it was not written by wavedistill's trainer")
    for key in copies:
        model.pop(key, None)
    for key in ("distribution_args", "upsample_scales"):
        if key in model and not model[key]:
            del model[key]  # the old constructors' `or` default: the config's
    if lp:
        model["linear_prediction"] = {key: value for key, value in lp.items() if key not in features.analysis()}
    return {"model": model, "mel_context": mel_context, "linear_prediction": lp or None}
