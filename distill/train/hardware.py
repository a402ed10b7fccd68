"""What the device is and what it could do: its name, and its dense peak FLOP/s for model FLOPs
utilisation (the trainer's `train/mfu`, the benchmark's "of peak" column)."""

from __future__ import annotations

from pathlib import Path

import torch

# dense peak TFLOP/s by (GPU name fragment, dtype): the vendors' datasheet figures, no sparsity;
# float32 is the non-tensor-core rate (PyTorch's default matmul precision)
GPU_PEAKS = {("H100", "float32"): 67.0, ("H100", "bfloat16"): 989.0, ("H200", "float32"): 67.0,
             ("H200", "bfloat16"): 989.0, ("A100", "float32"): 19.5, ("A100", "bfloat16"): 312.0}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def peak_tflops(name: str, dtype: str) -> float | None:
    """The datasheet dense peak of the GPU called `name` for `dtype` ("float32" or anything naming
    bfloat16), or None (CPUs: only the user knows theirs; callers let a user's figure win).

    float32 is the non-tensor-core rate; cuDNN runs float32 convolutions in TF32 on these GPUs by
    default (torch.backends.cudnn.allow_tf32), up to ~7x faster, so a float32 row's fraction of this
    peak can overstate how close to the hardware it runs."""
    kind = "bfloat16" if "bfloat16" in dtype else "float32"
    for (fragment, table_dtype), peak in GPU_PEAKS.items():
        if fragment in name and table_dtype == kind:
            return peak
    return None
