"""The one training loop (AMP, EMA, clipping, schedule, DDP, resume, logging), the task interface, optimiser
builders, checkpoints, run folders and the hardware's peak. Knows no model: imports `distill.data.datasets`
and `distill.audio`, never `distill.nn`."""
