"""`wavedistill bench`: speed figures printed as JSON and a Markdown table (never asserted by tests).

Teacher training samples/s; teacher sampling samples/s, naive (window recompute) vs incremental, at
batch 1 and 16; student parallel synthesis samples/s and real-time factor (tiny and ClariNet-size;
1 s at batch 1 with its speed-up over the teacher's incremental sampling of the same 1 s, 10 s at
batch 1, 16 x 1 s), in float32 and, where the device has native bf16, bf16 autocast; a distillation
step; the glibc allocator settings' effect (default vs tuned, each in a fresh process); the tiny
student exported to ONNX, onnxruntime beside PyTorch, and the ablation grid's training steps with the
discriminator's share (both on the CPU only, not with --quick); on the CPU,
and on CUDA when present. Each figure is the median of >= 5 timed runs after warm-up, with the GPU
synchronised, and carries its device, dtype, batch and thread count, the model FLOPs per sample, the
achieved GFLOP/s and its fraction of the device's peak (GPU: the datasheet table; CPU: this CPU's
own float32 and bf16 matrix-product peak, measured first, or --cpu-peak-tflops).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from distill.cli.allocator import tune_allocator
from distill.config import load_config
from distill.train.hardware import peak_tflops
from eval.timing import device_name, timed
from students.iaf import synthesize
from students.task import StudentConfig, build_student
from teachers.pretrained import demo_teacher_path, load_teacher
from teachers.sampling import generate
from teachers.sampling.fastloop import available as fastloop_available
from teachers.task import TeacherConfig, TeacherModelConfig, build_teacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET = CONFIGS / "teacher" / "gaussian_tiny.yaml"
STUDENTS = {"student clarinet_tiny": CONFIGS / "student" / "clarinet_tiny.yaml",
            "student clarinet (paper size)": CONFIGS / "student" / "clarinet.yaml"}


def bench_teacher(device: torch.device, quick: bool, dtype: torch.dtype = torch.float32,
                  sampling: bool = True) -> list[dict]:
    """The tiny teacher's training step and (sampling: True) its samplers."""
    cfg = load_config(TeacherConfig, PRESET)
    torch.manual_seed(0)
    model = build_teacher(cfg).to(device)
    hop, ctx, n_mels = cfg.features.hop_length, cfg.data.mel_context, cfg.features.n_mels
    rows = []
    repeats = 5
    macs = model.stack.macs_per_sample()
    base = {"model": "teacher gaussian_tiny", "device": device_name(device), "threads": torch.get_num_threads(),
            "receptive_field": model.receptive_field()}

    # training step: forward + NLL + backward + Adam update, random (audio, mel) crops
    batch, segment = (2, 4096) if quick else (4, 8192)
    x = (0.1 * torch.randn(batch, segment)).to(device)
    mel = (torch.randn(batch, n_mels, segment // hop + 2 * ctx) - 5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def train_step():
        with autocast:
            params = model(x, mel)
        loss = -model.dist.log_prob(params.float(), x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = timed(train_step, device, repeats, warmup=2)
    rows.append({**base, "what": "teacher training", "batch": batch, "length": segment,
                 "dtype": dtype_label(dtype), "samples_per_s": batch * segment / t["median_s"],
                 "flops_per_sample": 6 * macs, **t})
    if not sampling:
        return rows

    # sampling: incremental vs naive, float32 (AR sampling in bf16 drifts)
    model.eval()
    field = model.receptive_field()
    for b in (1, 16):
        rates = sampler_rows(model, base, device, quick, b, rows)
        # naive at steady state: every window already holds a full receptive field (a prompt of R samples)
        new = 1 if quick else 32
        frames = -(-(field + new) // hop)
        mel = (torch.randn(b, n_mels, frames + 2 * ctx) - 5).to(device)
        prompt = (0.1 * torch.randn(b, frames * hop - new)).to(device)
        t = timed(functools.partial(generate, model, mel, "naive", prompt=prompt), device, repeats)
        naive = b * new / t["median_s"]
        rows.append({**base, "what": "teacher sampling, naive", "batch": b, "length": new, "dtype": "float32",
                     "samples_per_s": naive, **t})
        rows.append({**base, "what": "incremental / naive speed-up", "batch": b, "length": None, "dtype": "float32",
                     "samples_per_s": None, "ratio": rates["incremental"] / naive})

    # 1 s of audio at batch 1: the teacher's incremental sampling, the reference for the students
    frames = (512 if quick else 16000) // hop
    mel = (torch.randn(1, n_mels, frames + 2 * ctx) - 5).to(device)
    t = timed(lambda: generate(model, mel), device, repeats)
    rows.append({**base, "what": "teacher sampling, incremental, 1 s", "batch": 1, "length": frames * hop,
                 "dtype": "float32", "samples_per_s": frames * hop / t["median_s"], "flops_per_sample": 2 * macs,
                 "rtf": t["median_s"] / (frames * hop / cfg.features.sample_rate), **t})
    return rows


def quick_sized(cfg, device: torch.device, quick: bool):
    """A training config on `device`, with --quick's crops (2 x 4,096 samples) when `quick`."""
    cfg.train = dataclasses.replace(cfg.train, device=str(device))
    if quick:
        cfg.data = dataclasses.replace(cfg.data, segment_length=4096)
        cfg.train = dataclasses.replace(cfg.train, batch_size=2)
    return cfg


@contextlib.contextmanager
def built_trainer(task):
    """(a Trainer of `task` built in a throw-away run folder, one batch of its loader as the loader gives
    it): what the training-step rows time (`train_step` moves the batch, as the loop does); closed afterwards."""
    from distill.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(task, run_dir)
        trainer.build()
        try:
            assert trainer.loader is not None  # built
            yield trainer, next(iter(trainer.loader))
        finally:
            trainer.close()


def bench_trainer(device: torch.device, quick: bool) -> list[dict]:
    """The training loop's own step (`distill.train.trainer.Trainer.train_step`) on the tiny teacher preset:
    forward (autocast as `train.amp=auto` picks: bf16 on CUDA), NLL, backward, clipping, the fused AdamW
    update with its on-device skip flag, the EMA and the loss sums; batches from the demo corpus."""
    from teachers.task import TeacherTask

    cfg = quick_sized(load_config(TeacherConfig, PRESET), device, quick)
    with built_trainer(TeacherTask(cfg)) as (trainer, batch):
        t = timed(functools.partial(trainer.train_step, batch), device, 5, warmup=2)
    samples = cfg.train.batch_size * cfg.data.segment_length
    return [{"model": "teacher gaussian_tiny", "device": device_name(device), "threads": torch.get_num_threads(),
             "what": "teacher training, Trainer step (+ clipping, fused AdamW, EMA)", "batch": cfg.train.batch_size,
             "length": cfg.data.segment_length, "dtype": "bfloat16 autocast" if trainer.amp else "float32",
             "samples_per_s": samples / t["median_s"], "flops_per_sample": trainer.flops_per_sample, **t}]


def sampler_rows(model, base: dict, device: torch.device, quick: bool, batch: int, rows: list[dict],
                 label: str = "") -> dict[str, float]:
    """Samples/s of the incremental sampler and of this device's faster one (the same recursion as
    CUDA graph replays, teachers/sampling/graph.py, or as one compiled C loop, teachers/sampling/fastloop.c), with
    their ratio, appended to `rows`; returns the rates by method."""
    faster = {"cuda": [("graph", "graph (CUDA graphs)")],
              "cpu": [("fast", "fast (C loop)")] if fastloop_available() else []}
    hop, n_mels = model.hop_length, model.features.n_mels
    frames = (256 if quick else 2048) // hop
    mel = (torch.randn(batch, n_mels, frames + 2 * model.mel_context) - 5).to(device)
    macs, rates = model.stack.macs_per_sample(), {}
    for method, name in [("incremental", "incremental")] + faster.get(device.type, []):
        t = timed(functools.partial(generate, model, mel, method), device, 5)
        rates[method] = batch * frames * hop / t["median_s"]
        rows.append({**base, "what": f"teacher sampling{label}, {name}", "batch": batch, "length": frames * hop,
                     "dtype": "float32", "samples_per_s": rates[method], "flops_per_sample": 2 * macs, **t})
        if method != "incremental":
            rows.append({**base, "what": f"{method} / incremental speed-up{label}", "batch": batch, "length": None,
                         "dtype": "float32", "samples_per_s": None, "ratio": rates[method] / rates["incremental"]})
    return rates


def bench_other_heads(device: torch.device, quick: bool) -> list[dict]:
    """Batch-1 sampling of the mixture-of-logistics and mu-law tiny teachers (random weights): every
    output head has the faster samplers too."""
    rows: list[dict] = []
    for preset in ("mol_tiny", "mulaw_tiny"):
        torch.manual_seed(0)
        model = build_teacher(load_config(TeacherConfig, CONFIGS / "teacher" / f"{preset}.yaml")).to(device).eval()
        base = {"model": f"teacher {preset}", "device": device_name(device), "threads": torch.get_num_threads(),
                "receptive_field": model.receptive_field()}
        sampler_rows(model, base, device, quick, 1, rows, f" ({preset})")
    return rows


def cpu_has_bf16() -> bool:
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bench_students(device: torch.device, quick: bool, teacher_rate: float) -> list[dict]:
    """Parallel synthesis of 1 s (batch 1), 10 s and 16 x 1 s for each student preset, in float32 and
    (where the device has native bf16) under bf16 autocast, eager and through torch.compile (on CUDA
    every shape and dtype, reduce-overhead mode; on a CPU the float32 1 s only; not with --quick), with
    the 1 s speed-up over the teacher's float32 incremental sampling and compiled / eager ratios."""
    rows = []
    bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    for name, preset in STUDENTS.items():
        cfg = load_config(StudentConfig, preset)
        torch.manual_seed(0)
        student = preset_student(cfg).to(device).eval()
        shapes = [(1, 1.0, "1 s")] + ([] if quick else [(1, 10.0, "10 s"), (16, 1.0, "16 x 1 s")])
        rows += student_rows(name, student, device, quick, shapes, [None, torch.bfloat16] if bf16 else [None],
                             lambda label, dtype: not quick and (device.type == "cuda"
                                                                 or (dtype is None and label == "1 s")),
                             teacher_rate)
    return rows


def student_rows(name: str, student, device: torch.device, quick: bool, shapes: list[tuple[int, float, str]],
                 dtypes: list[torch.dtype | None], compiled: Callable[[str, torch.dtype | None], bool],
                 teacher_rate: float | None = None) -> list[dict]:
    """A student's parallel synthesis of random mels: a row per (batch, seconds, label) shape, autocast dtype
    (None: float32) and eager / torch.compile (`compiled(label, dtype)`: also compiled), 5 timed runs after 2
    warm-ups (a quarter of each length with `quick`); a compiled / eager ratio row after each compiled one, the
    speed-up over `teacher_rate` samples/s on the "1 s" rows."""
    cfg_features, ctx = student.features, student.mel_context
    hop, rate = cfg_features.hop_length, cfg_features.sample_rate
    flops = 2 * sum(flow.macs_per_sample() for flow in student.flows)
    rows = []
    for batch, seconds, label in shapes:
        frames = int((0.25 if quick else seconds) * rate) // hop
        mel = (torch.randn(batch, cfg_features.n_mels, frames + 2 * ctx) - 5).to(device)
        for dtype in dtypes:
            eager_rate = None
            for compile_ in [False, True] if compiled(label, dtype) else [False]:
                t = timed(functools.partial(synthesize, student, mel, autocast_dtype=dtype, compile=compile_),
                          device, 5, warmup=2)
                samples = batch * frames * hop
                kind = ("float32" if dtype is None else "bfloat16 autocast") + (" compiled" if compile_ else "")
                row = {"model": name, "device": device_name(device), "threads": torch.get_num_threads(),
                       "what": f"{name} synthesis, {label}", "batch": batch, "length": frames * hop,
                       "dtype": kind, "samples_per_s": samples / t["median_s"],
                       "rtf": t["median_s"] / (samples / rate), "flops_per_sample": flops, **t}
                if label == "1 s" and teacher_rate:
                    row["speedup_over_teacher"] = row["samples_per_s"] / teacher_rate
                rows.append(row)
                if compile_:
                    rows.append({"model": name, "device": row["device"], "threads": row["threads"],
                                 "what": f"{name}, {label}: compiled / eager speed-up", "batch": batch,
                                 "length": None, "dtype": kind, "samples_per_s": None,
                                 "ratio": row["samples_per_s"] / eager_rate})
                eager_rate = row["samples_per_s"]
    return rows


def bench_onnx(quick: bool) -> list[dict]:
    """The tiny student (the demo's shape: the mel's predictor, the all-pole filter, the pitch source)
    exported to ONNX (`students.export`), its onnxruntime synthesis beside PyTorch's on the CPU; none
    when the ONNX packages are missing (pip install -e ".[onnx]"). Exporting takes about a minute."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")):
        return []
    from students.export import export_onnx

    torch.manual_seed(0)
    student = preset_student(load_config(StudentConfig, STUDENTS["student clarinet_tiny"])).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(student, Path(folder) / "student.onnx")
        return onnx_rows("student clarinet_tiny", student, path, quick)


def onnx_rows(name: str, student, path: str | Path, quick: bool) -> list[dict]:
    """Synthesis of 1 s and (not `quick`) 10 s (quick: 0.25 s; each labelled with its length in whole hops)
    at batch 1 from random mels, by PyTorch (float32, eager) and by onnxruntime from the exported file
    `path` (`OnnxStudent`, de-emphasis included, as many threads as PyTorch's), the same noise for both,
    5 timed runs after 2 warm-ups each; an onnxruntime / PyTorch ratio row after each pair."""
    from students.export import OnnxStudent, noise

    device, threads = torch.device("cpu"), torch.get_num_threads()
    session = OnnxStudent(path, threads=threads)
    hop, rate, ctx = student.hop_length, student.features.sample_rate, student.mel_context
    base = {"model": name, "device": device_name(device), "threads": threads, "batch": 1}
    rows = []
    for seconds in [1.0] + ([] if quick else [10.0]):
        frames = int((0.25 if quick else seconds) * rate) // hop
        label = f"{frames * hop / rate:g} s"
        mel = torch.randn(1, student.features.n_mels, frames + 2 * ctx) - 5
        z = noise(student, (1, frames * hop))
        runs: dict[str, Callable[[], object]] = {
            "PyTorch": functools.partial(synthesize, student, mel, z=torch.from_numpy(z)),
            "onnxruntime": functools.partial(session.synthesize, mel.numpy(), z)}
        speed = {}
        for runtime, run in runs.items():
            t = timed(run, device, 5, warmup=2)
            speed[runtime] = frames * hop / t["median_s"]
            rows.append({**base, "what": f"{name} synthesis, {label}, {runtime}", "length": frames * hop,
                         "dtype": "float32", "samples_per_s": speed[runtime],
                         "rtf": t["median_s"] / (frames * hop / rate), **t})
        rows.append({**base, "what": f"{name}, {label}: onnxruntime / PyTorch speed", "length": None,
                     "dtype": "float32", "samples_per_s": None, "ratio": speed["onnxruntime"] / speed["PyTorch"]})
    return rows


def preset_student(cfg: StudentConfig):
    """A preset's student, with the shipped teacher's linear predictor when the preset uses one."""
    teacher = TeacherModelConfig()  # a plain teacher's conditioning: the stretch upsampler, one speaker
    if cfg.model.linear_prediction:
        teacher = load_teacher(demo_teacher_path(), features=cfg.features)[0].config
    return build_student(cfg, teacher)


def bench_distillation(device: torch.device, quick: bool, dtype: torch.dtype = torch.float32) -> list[dict]:
    """One distillation step of the tiny ClariNet student from the shipped teacher (its shape is the tiny
    teacher preset; the universal one since 2026-12-07, with its pitch source, the single-voice one before:
    figures from before that date are not comparable one to one): student forward, teacher forward on the
    sample, KL + STFT, backward, Adam; under autocast for dtype bfloat16, as the Trainer runs it with
    train.amp=bf16."""
    from students.task import DistillTask

    cfg = load_config(StudentConfig, STUDENTS["student clarinet_tiny"])
    batch, segment = (2, 4096) if quick else (cfg.train.batch_size, cfg.data.segment_length)
    task = DistillTask(cfg)
    task.setup(device)
    torch.manual_seed(0)
    student = task.build_model().to(device)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    hop, ctx = cfg.features.hop_length, cfg.data.mel_context
    data = {"audio": (0.1 * torch.randn(batch, segment)).to(device),
            "mel": (torch.randn(batch, cfg.features.n_mels, segment // hop + 2 * ctx) - 5).to(device)}

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = task.training_step(student, data, 0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = timed(step, device, 5, warmup=2)
    flops = task.flops_per_sample(student)
    return [{"model": "student clarinet_tiny + teacher gaussian_tiny", "device": device_name(device),
             "threads": torch.get_num_threads(), "what": "distillation step", "batch": batch, "length": segment,
             "dtype": dtype_label(dtype), "samples_per_s": batch * segment / t["median_s"], "flops_per_sample": flops,
             **t}]


GRID = ("clarinet_tiny_stft", "clarinet_tiny_stft_gan", "clarinet_tiny_kl", "clarinet_tiny", "clarinet_tiny_gan",
        "parallel_wavenet_tiny_gan")  # the ablation grid's presets (docs/distill.md)


def bench_grid(device: torch.device, quick: bool, presets: tuple[str, ...] = GRID) -> list[dict]:
    """The training step of each ablation-grid preset (`Trainer.train_step` on batches of the demo corpus,
    the discriminator active from the first step), and for a preset with a discriminator its own step
    alone, with its share of the whole step: what each term costs at equal CPU budget."""
    from distill.train.trainer import to_device
    from students.task import DistillTask

    rows = []
    for preset in presets:
        cfg = quick_sized(load_config(StudentConfig, CONFIGS / "student" / f"{preset}.yaml"), device, quick)
        cfg.adversarial = dataclasses.replace(cfg.adversarial, start_step=0)
        with built_trainer(DistillTask(cfg)) as (trainer, batch):
            step = timed(functools.partial(trainer.train_step, batch), device, 5, warmup=2)
            disc = (timed(functools.partial(trainer.discriminator_update, to_device(batch, device), float("inf")),
                          device, 5, warmup=1) if trainer.discriminator is not None else None)
        samples = cfg.train.batch_size * cfg.data.segment_length
        base = {"model": f"student {preset}", "device": device_name(device), "threads": torch.get_num_threads(),
                "batch": cfg.train.batch_size, "length": cfg.data.segment_length,
                "dtype": "bfloat16 autocast" if trainer.amp else "float32"}
        rows.append({**base, "what": f"grid step, {preset}", "samples_per_s": samples / step["median_s"], **step})
        if disc is not None:
            rows.append({**base, "what": f"grid step, {preset}: the discriminator's step", "samples_per_s": None,
                         **disc})
            rows.append({**base, "what": f"grid step, {preset}: the discriminator's share of the step",
                         "samples_per_s": None, "length": None, "ratio": disc["median_s"] / step["median_s"]})
    return rows


def dtype_label(dtype: torch.dtype) -> str:
    """A row's dtype: "float32", or "bfloat16 autocast" (the convolutions in bf16 under autocast)."""
    return "float32" if dtype == torch.float32 else f"{str(dtype).split('.')[-1]} autocast"


def _tiny_student_seconds(quick: bool) -> float:
    """Median seconds of the tiny student's 1 s synthesis in this process (its allocator as it is)."""
    cfg = load_config(StudentConfig, STUDENTS["student clarinet_tiny"])
    torch.manual_seed(0)
    student = preset_student(cfg).eval()
    frames = (4096 if quick else 16000) // cfg.features.hop_length
    mel = torch.randn(1, cfg.features.n_mels, frames + 2 * cfg.data.mel_context) - 5
    return timed(lambda: synthesize(student, mel), torch.device("cpu"), 5, warmup=2)["median_s"]


def bench_allocator(quick: bool) -> list[dict]:
    """The tiny student's synthesis with glibc's default malloc vs `distill.cli.allocator` settings, each in a
    fresh process (the settings cannot be undone inside one), back to back."""
    seconds = {}
    for mode in ("default", "tuned"):
        env = {**os.environ, "WAVEDISTILL_MALLOC": mode}
        code = (f"from distill.cli.allocator import tune_allocator; tune_allocator(); import eval.bench as b; "
                f"print(b._tiny_student_seconds({quick}))")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            return []
        seconds[mode] = float(result.stdout.strip().splitlines()[-1])
    base = {"model": "student clarinet_tiny", "device": device_name(torch.device("cpu")),
            "threads": torch.get_num_threads(), "batch": 1, "length": None, "dtype": "float32", "samples_per_s": None}
    return [{**base, "what": f"tiny student synthesis, {mode} malloc", "median_s": seconds[mode], "runs": 5}
            for mode in seconds] + [
        {**base, "what": "tuned / default malloc speed-up", "ratio": seconds["default"] / seconds["tuned"]}]


GEMM_SIZES = (128, 256, 384, 512)  # square products whose operands stay near the caches (a core's L2: 2 MB here)


def bench_cpu_peak(quick: bool) -> list[dict]:
    """This CPU's own attainable peak, measured: the best GFLOP/s of square matrix products (torch.mm,
    all threads) at sizes whose operands stay in the caches, in float32 and, where the CPU has native
    bf16 (AVX512-BF16 / AMX), bfloat16. The vCPUs' clock is not exposed, so a datasheet peak cannot be
    computed; this is the ceiling that the "of peak" column of the CPU rows is measured against."""
    device = torch.device("cpu")
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_bf16() else [])
    sizes = GEMM_SIZES[1:3] if quick else GEMM_SIZES
    rows = []
    for dtype in dtypes:
        best: dict = {}
        for n in sizes:
            a, b, c = (torch.randn(n, n).to(dtype) for _ in range(3))
            calls = max(1, int((2e9 if quick else 2e10) / (2 * n**3)))  # 2e10 FLOP: ~0.1 s at 200 GFLOP/s

            def gemms(a=a, b=b, c=c, calls=calls):
                for _ in range(calls):
                    torch.mm(a, b, out=c)
            t = timed(gemms, device, 3 if quick else 5, warmup=1)
            gflops = 2 * n**3 * calls / t["median_s"] / 1e9
            if gflops > best.get("gflops_per_s", 0):
                best = {"what": f"CPU peak: {n} x {n} GEMM (best of sizes {', '.join(map(str, sizes))})",
                        "gflops_per_s": gflops, **t}
        rows.append({"model": "torch.mm", "device": device_name(device), "threads": torch.get_num_threads(),
                     "batch": None, "length": None, "dtype": str(dtype).split(".")[-1], "samples_per_s": None,
                     "peak_gflops": best["gflops_per_s"], **best})
    return rows


def measured_peaks(rows: list[dict]) -> dict[str, float]:
    """{"float32": TFLOP/s, "bfloat16": TFLOP/s} from `bench_cpu_peak`'s rows."""
    return {row["dtype"]: row["peak_gflops"] / 1e3 for row in rows if row.get("peak_gflops")}


def add_utilisation(rows: list[dict], cpu_peak_tflops: float | None = None) -> None:
    """Achieved GFLOP/s (model FLOPs per sample x samples/s) and the fraction of the device's peak: the
    datasheet peak on a GPU; on the CPU the measured GEMM peak of the row's precision (`bench_cpu_peak`),
    except that `cpu_peak_tflops`, when given, replaces the float32 one."""
    cpu_peaks = measured_peaks(rows)
    for row in rows:
        if row.get("flops_per_sample") and row.get("samples_per_s"):
            row["gflops_per_s"] = row["flops_per_sample"] * row["samples_per_s"] / 1e9
            if row["device"] != device_name(torch.device("cpu")):
                peak = peak_tflops(row["device"], row["dtype"])
            elif "bfloat16" in row["dtype"]:
                peak = cpu_peaks.get("bfloat16")
            else:
                peak = cpu_peaks.get("float32") if cpu_peak_tflops is None else cpu_peak_tflops
            row["peak_fraction"] = row["gflops_per_s"] / (peak * 1e3) if peak else None


def run_bench(quick: bool = False, devices: list[str] | None = None, cpu_peak_tflops: float | None = None) -> dict:
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for name in devices:
        device = torch.device(name)
        if device.type == "cpu":
            rows += bench_cpu_peak(quick)
        teacher_rows = bench_teacher(device, quick)
        rows += teacher_rows
        teacher_rate = [r for r in teacher_rows
                        if r["what"] == "teacher sampling, incremental, 1 s"][0]["samples_per_s"]
        rows += bench_students(device, quick, teacher_rate)
        rows += bench_trainer(device, quick)
        rows += bench_other_heads(device, quick)
        rows += bench_distillation(device, quick)
        if device.type == "cpu":
            rows += bench_allocator(quick)
            if not quick:  # the export alone takes about a minute; the grid, six trainings
                rows += bench_onnx(quick)
                rows += bench_grid(device, quick)
        if cpu_has_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported():  # native bf16 only
            rows += bench_teacher(device, quick, torch.bfloat16, sampling=False)
            rows += bench_distillation(device, quick, torch.bfloat16)
    add_utilisation(rows, cpu_peak_tflops)
    return {
        "quick": quick,
        "malloc_tuned": tune_allocator(),
        "torch": str(torch.__version__),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = ["| what | device | dtype | batch | length | samples/s | RTF | ratio | GFLOP/s | of peak "
             "| median s (runs) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        rate = f"{r['samples_per_s']:,.0f}" if r.get("samples_per_s") else ""
        ratio = r.get("ratio") or r.get("speedup_over_teacher")
        ratio = f"{ratio:.1f}x" if ratio else ""
        rtf = f"{r['rtf']:.3f}" if r.get("rtf") else ""
        timing = f"{r['median_s']:.4f} ({r['runs']})" if "median_s" in r else ""
        gflops = f"{r['gflops_per_s']:,.1f}" if r.get("gflops_per_s") else ""
        peak = f"{100 * r['peak_fraction']:.1f}%" if r.get("peak_fraction") else ""
        lines.append(f"| {r['what']} | {r['device']} ({r['threads']} threads) | {r['dtype']} | {r['batch'] or ''} | "
                     f"{r['length'] or ''} | {rate} | {rtf} | {ratio} | {gflops} | {peak} | {timing} |")
    return "\n".join(lines)


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (JSON + Markdown); --quick for a CI-sized run")
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds on a CPU")
    p.add_argument("--device", action="append", default=None, help="cpu and/or cuda (default: all present)")
    p.add_argument("--out", default=None, help="write the JSON here (the Markdown goes beside it, .md)")
    p.add_argument("--cpu-peak-tflops", type=float, default=None,
                   help="the CPU's fp32 peak for the 'of peak' column (default: the measured GEMM peak)")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    result = run_bench(args.quick, args.device, args.cpu_peak_tflops)
    text = json.dumps(result, indent=2)
    print(text)
    print(to_markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".md").write_text(to_markdown(result) + "\n")
    return 0
