"""The benchmark: timing excludes warm-up, and the quick CLI run produces every figure."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from eval.bench import cpu_has_bf16
from eval.timing import timed
from teachers.sampling.fastloop import available as fastloop_available


def test_timing_excludes_warm_up():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.5 if len(calls) == 1 else 0.01)  # only the first (warm-up) call is slow

    t = timed(fn, torch.device("cpu"), repeats=5, warmup=1)
    assert len(calls) == 6 and t["runs"] == 5
    assert t["max_s"] < 0.2 and 0.005 < t["median_s"] < 0.1


def test_quick_bench_reports_training_and_both_sampling_methods(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "distill.cli", "bench", "--quick", "--device", "cpu",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    whats = [r["what"] for r in rows]
    native_bf16 = cpu_has_bf16()  # then teacher training and the distillation step also run under bf16 autocast
    assert whats.count("distillation step") == (2 if native_bf16 else 1)
    assert whats.count("fast / incremental speed-up") == (2 if fastloop_available() else 0)
    for head in ("mol_tiny", "mulaw_tiny"):  # every output head is sampled by both samplers
        assert whats.count(f"teacher sampling ({head}), incremental") == 1
        assert whats.count(f"fast / incremental speed-up ({head})") == (1 if fastloop_available() else 0)
    assert all(r["gflops_per_s"] > 0 for r in rows if r["what"] in ("teacher training", "distillation step"))
    assert whats.count("teacher training") == (2 if native_bf16 else 1)
    assert whats.count("incremental / naive speed-up") == 2
    assert whats.count("teacher training, Trainer step (+ clipping, fused AdamW, EMA)") == 1
    students = [r for r in rows if r["what"].startswith("student") and r["dtype"] == "float32"]
    assert len(students) == 2 and all(r["speedup_over_teacher"] > 0 and r["rtf"] > 0 for r in students)
    for r in rows:
        if "speed-up" in r["what"]:  # the speed-up rows carry a ratio only
            assert r["ratio"] > 0
        elif "malloc" in r["what"]:  # timed in a child process
            assert r["median_s"] > 0 and r["runs"] == 5
        elif r["what"].startswith("CPU peak"):  # the measured matrix-product peak of each precision
            assert r["gflops_per_s"] > 0 and r["dtype"] in ("float32", "bfloat16")
        else:
            assert (r["samples_per_s"] > 0 and r["runs"] >= 5 and r["threads"] >= 1
                    and r["dtype"] in ("float32", "bfloat16 autocast"))
    assert all(r["ratio"] > 0 for r in rows if r["what"] == "incremental / naive speed-up")  # reported, not judged
    assert [r["what"] for r in rows if "malloc" in r["what"]] == [
        "tiny student synthesis, default malloc", "tiny student synthesis, tuned malloc",
        "tuned / default malloc speed-up"]
    bf16 = [r for r in rows if r["dtype"] == "bfloat16 autocast"]
    assert len(bf16) == (4 if native_bf16 else 0)  # bf16 rows only where the CPU has native bf16
    peaks = {r["dtype"]: r["gflops_per_s"] for r in rows if r["what"].startswith("CPU peak")}
    assert set(peaks) == ({"float32", "bfloat16"} if native_bf16 else {"float32"})
    for r in rows:  # every CPU row with model FLOPs has its fraction of the measured peak of its precision
        if r.get("gflops_per_s") and not r["what"].startswith("CPU peak"):
            peak = peaks["bfloat16" if "bfloat16" in r["dtype"] else "float32"]
            assert r["peak_fraction"] == pytest.approx(r["gflops_per_s"] / peak)
    assert out.with_suffix(".md").read_text().startswith("| what |")
