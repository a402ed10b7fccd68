"""Errors meant for people: each message is one line saying what is wrong, where, and how to fix it.

The command line catches `WavedistillError` and prints its message without a traceback.
"""


class WavedistillError(Exception):
    """Base class of every error whose message is written for the user."""


class AudioError(WavedistillError):
    """An audio file cannot be used. `reason` is the short cause, `path` the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MelError(WavedistillError):
    """A mel spectrogram (a file or an array) cannot be vocoded. `name` says which, `reason` why."""

    def __init__(self, name, reason: str):
        self.name = str(name)
        self.reason = reason
        super().__init__(f"{self.name}: {reason}")


class CorpusError(WavedistillError):
    """A corpus is missing, empty or has no usable utterance."""


class ConfigError(WavedistillError):
    """A configuration file or a command-line override is invalid."""


class CheckpointError(WavedistillError):
    """A checkpoint is truncated, foreign, unsafe or does not match what it is loaded into."""


class TrainingDiverged(WavedistillError):
    """Too many non-finite losses in a row; the last good checkpoint is left intact."""
