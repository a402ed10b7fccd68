"""wavedistill base package: audio, features, corpora, configs, checkpoints and the training loop.

This package imports none of its siblings (`teachers`, `students`, `eval`); they build on it.
"""

__version__ = "0.1.0"
