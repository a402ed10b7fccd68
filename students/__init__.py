"""Parallel inverse-autoregressive-flow students and the distillation task (built on `teachers`)."""
