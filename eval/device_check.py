"""`python -m eval.device_check OUT`: the prepared check for a machine with one NVIDIA GPU.

For a GPU machine with Python and torch but possibly without pesq, soundfile or a network (e.g. one
H100 or H200 for a short time), so that its first minutes go to measuring. Run from the repository root;
it takes at most about 8 minutes and writes everything under OUT:

1. `env.json`: Python, torch, CUDA, the GPU, and which optional packages are present;
2. `install.log`: `pip install --no-deps -e .` (the project without its dependencies);
3. `cuda_tests.log`: the tests marked `cuda` (`CUDA_TESTS`, the files that hold them);
4. `bench.json` / `bench.md`: the GPU subset of `wavedistill bench`: the tiny teacher's training step in
   bf16, its CUDA-graph sampler against the incremental one at batch 1, the paper-size ClariNet
   student's 1 s synthesis in bf16, eager and compiled, and a distillation step;
5. `train/`: a 2-minute bf16 training of the tiny teacher on a synthetic harmonic corpus written as
   16-bit WAV (`corpus/`; no soundfile needed), with its `metrics.jsonl`, and `train.log`;
6. `summary.json`: every step's status ("ok", "failed" or "skipped"), seconds and headline figures.

A failed step is recorded and the next one runs. `--dry-run` runs the same steps on the CPU at toy sizes
without installing anything (a test does, with soundfile and pesq made unimportable).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the test files that hold `cuda` tests (a CPU test checks that the list is complete); the other test
# files need soundfile, which a GPU machine with torch alone does not have
CUDA_TESTS = ["tests/teachers/test_cuda.py", "tests/distill/train/test_trainer.py"]
OPTIONAL = ["soundfile", "pesq", "speechmos", "pystoi", "pyworld", "torchcrepe", "onnxruntime", "tensorboard"]


def _env() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": str(torch.__version__),
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "packages": {name: _installed(name) for name in OPTIONAL},
    }


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules as None: made unimportable (the dry-run test does)
        return False


def _run(command: list[str], log: Path, timeout: float) -> dict:
    """A child process with its output in `log`; its status and seconds."""
    start = time.perf_counter()
    code: int | str
    with log.open("w") as out:
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[device check] timed out after {timeout:.0f} s\n")
            code = "timeout"
    return {"status": "ok" if code == 0 else "failed", "returncode": code,
            "seconds": round(time.perf_counter() - start, 1), "log": log.name}


def _bench(device_name: str, quick: bool) -> list[dict]:
    """The GPU subset of the bench (module doc, 4)."""

    import torch

    from distill.config import load_config
    from eval import bench
    from eval.timing import device_name as name_of
    from students.task import StudentConfig
    from teachers.task import TeacherConfig, build_teacher

    device = torch.device(device_name)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rows = bench.bench_teacher(device, quick, torch.bfloat16 if bf16 else torch.float32, sampling=False)
    torch.manual_seed(0)
    teacher = build_teacher(load_config(TeacherConfig, bench.PRESET)).to(device).eval()
    base = {"model": "teacher gaussian_tiny", "device": name_of(device), "threads": torch.get_num_threads(),
            "receptive_field": teacher.receptive_field()}
    bench.sampler_rows(teacher, base, device, quick, 1, rows)
    cfg = load_config(StudentConfig, bench.STUDENTS["student clarinet (paper size)"])
    torch.manual_seed(0)
    student = bench.preset_student(cfg).to(device).eval()
    rows += bench.student_rows("student clarinet (paper size)", student, device, quick, [(1, 1.0, "1 s")],
                               [torch.bfloat16 if bf16 else None], lambda label, dtype: device.type == "cuda")
    rows += bench.bench_distillation(device, quick)
    bench.add_utilisation(rows)
    return rows


def _step(summary: dict, name: str, fn) -> None:
    """Run one step, record its status and seconds, never raise."""
    start = time.perf_counter()
    try:
        result = fn() or {}
        summary[name] = {"status": "ok", **result}
    except Exception as err:  # a device check reports every failure and goes on
        summary[name] = {"status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0],
                         "traceback": traceback.format_exc(limit=6)}
    summary[name].setdefault("seconds", round(time.perf_counter() - start, 1))
    print(f"[device check] {name}: {summary[name]['status']} ({summary[name]['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the logs and JSON (created; must be empty or new)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes, no install")
    parser.add_argument("--train-minutes", type=float, default=2.0, help="the bf16 teacher training's wall time")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; give a new folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    summary: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def env() -> dict:
        info = _env()
        (out / "env.json").write_text(json.dumps(info, indent=2))
        if not args.dry_run and not info["gpu"]:
            raise RuntimeError("no CUDA device: run with --dry-run on a CPU")
        return {"gpu": info["gpu"]}

    _step(summary, "env", env)
    if args.dry_run:
        summary["install"] = {"status": "skipped", "seconds": 0.0}
    else:
        summary["install"] = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                   "-e", "."], out / "install.log", 180)
    # without the project's addopts: they start pytest-xdist workers, which a bare machine may not have
    summary["cuda_tests"] = _run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-m", "cuda",
                                  "-p", "no:cacheprovider", *CUDA_TESTS], out / "cuda_tests.log", 150)

    def bench() -> dict:
        from eval.bench import to_markdown

        rows = _bench(device, quick=args.dry_run)
        (out / "bench.json").write_text(json.dumps({"rows": rows}, indent=2))
        (out / "bench.md").write_text(to_markdown({"rows": rows}) + "\n")
        return {"rows": len(rows), "figures": {f"{r['what']} [{r['dtype']}]": round(r["samples_per_s"])
                                               for r in rows if r.get("samples_per_s")}}

    _step(summary, "bench", bench)

    def train() -> dict:
        from distill.data.corpus import write_synthetic_corpus

        corpus = write_synthetic_corpus(out / "corpus", count=12 if args.dry_run else 48,
                                        seconds=1.0 if args.dry_run else 3.0, splits=(2, 2))
        minutes = 0.0 if args.dry_run else args.train_minutes  # the dry run: 20 steps, whatever they take
        amp = "off" if args.dry_run else "bf16"
        overrides = [f"data.corpus={corpus}", f"train.device={device}", f"train.amp={amp}",
                     f"train.max_minutes={minutes}", "train.steps=1000000", "train.log_every=10",
                     "train.valid_every=1000000", "train.checkpoint_every=1000000", "valid.max_utterances=1"]
        if args.dry_run:
            overrides += ["train.steps=20", "data.segment_length=2048", "train.batch_size=2", "model.layers=4",
                          "model.cycle=2"]
        # `train-teacher` through its Python entry point, in a child process: no installed console script or
        # entry-point metadata needed (the install step may have failed), and a crash stays in train.log
        code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
                "from distill.cli.commands import train; from teachers.task import TeacherConfig, TeacherTask; "
                "train(TeacherConfig, TeacherTask, sys.argv[1], sys.argv[2], sys.argv[3:])")
        config = str(ROOT / "configs" / "teacher" / "gaussian_tiny.yaml")
        result = _run([sys.executable, "-c", code, str(out / "train"), config, *overrides], out / "train.log",
                      minutes * 60 + 300)
        records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
                   ] if (out / "train" / "metrics.jsonl").is_file() else []
        logged = [r for r in records if "loss" in r]
        if result["status"] != "ok" or not logged:
            raise RuntimeError(f"train-teacher ended {result['returncode']} with {len(logged)} logged steps; "
                               "see train.log")
        return {**result, "steps": logged[-1]["step"], "first_loss": logged[0]["loss"], "last_loss": logged[-1]["loss"],
                "samples_per_s": logged[-1].get("train/samples_per_s"), "mfu": logged[-1].get("train/mfu")}

    _step(summary, "train", train)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    failed = [name for name, step in summary.items() if isinstance(step, dict) and step.get("status") == "failed"]
    print(f"[device check] {'all steps ok' if not failed else 'failed: ' + ', '.join(failed)}; {out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
