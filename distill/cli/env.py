"""`wavedistill env`: the environment report researchers run first (and paste into bug reports)."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass, field

# (module, pip package, what it is for) — all required at run time.
REQUIRED = [
    ("torch", "torch", "models and training"),
    ("torchaudio", "torchaudio", "mel features and resampling"),
    ("numpy", "numpy", "arrays"),
    ("scipy", "scipy", "signal processing and tests"),
    ("soundfile", "soundfile", "audio file I/O"),
    ("pesq", "pesq", "wideband PESQ"),
    ("yaml", "pyyaml", "configs"),
    ("tensorboard", "tensorboard", "training logs"),
    ("einops", "einops", "tensor reshaping"),
    ("tqdm", "tqdm", "progress bars"),
    ("matplotlib", "matplotlib", "spectrogram images"),
]


@dataclass
class EnvReport:
    info: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _version(module, package: str) -> str:
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "installed"
    return str(version)


def collect() -> EnvReport:
    report = EnvReport()
    info = report.info
    info["python"] = sys.version.split()[0]
    info["platform"] = platform.platform()
    info["cpu_count"] = os.cpu_count()
    modules = {}
    for name, package, purpose in REQUIRED:
        try:
            modules[name] = importlib.import_module(name)
            info[name] = _version(modules[name], package)
        except Exception as err:  # any import failure is reported, not raised
            info[name] = f"MISSING ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
            report.problems.append(f"{name} is not importable ({purpose}): pip install {package}")
    torch = modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_build"] = torch.version.cuda or "none (CPU build)"
        info["cuda_available"] = torch.cuda.is_available()
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        gpus = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append(f"{props.name} ({props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor})")
            info["bf16_cuda"] = torch.cuda.is_bf16_supported()
        info["gpu_count"] = len(gpus)
        info["gpus"] = gpus
        info["bf16_cpu"] = True  # CPU autocast supports bf16 on every build torch ships
        ta = modules.get("torchaudio")
        if ta is not None:
            tv = torch.__version__.split("+")[0].split(".")[:2]
            av = ta.__version__.split("+")[0].split(".")[:2]
            if tv != av:
                report.problems.append(
                    f"torch {torch.__version__} and torchaudio {ta.__version__} differ; "
                    "reinstall them as a matched pair: pip install -e . (or torch==X.Y torchaudio==X.Y)"
                )
    sf = modules.get("soundfile")
    if sf is not None:
        info["libsndfile"] = sf.__libsndfile_version__
    return report


def format_report(report: EnvReport) -> str:
    width = max(len(k) for k in report.info)
    lines = [f"{key.ljust(width)}  {value}" for key, value in report.info.items()]
    for problem in report.problems:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)
