"""The prepared GPU check: its dry run on the CPU, with soundfile and pesq unimportable as on a GPU
machine with torch alone, runs every step and writes what the GPU run would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from eval.device_check import CUDA_TESTS

ROOT = Path(__file__).resolve().parents[2]


def test_the_list_of_cuda_test_files_is_complete():
    marked = re.compile(r"^(@pytest\.mark\.cuda|pytestmark = pytest\.mark\.cuda)", re.MULTILINE)
    files = (ROOT / "tests").rglob("test_*.py")
    holding = sorted(str(p.relative_to(ROOT)) for p in files if marked.search(p.read_text()))
    assert holding == sorted(CUDA_TESTS)


def test_the_dry_run_completes_without_soundfile_or_pesq(tmp_path):
    block = tmp_path / "block"  # every process of the check (and its children) finds neither package
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['soundfile'] = None\nsys.modules['pesq'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(ROOT)])}
    out = tmp_path / "check"
    result = subprocess.run([sys.executable, "-m", "eval.device_check", str(out), "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k]["status"] for k in ("env", "install", "cuda_tests", "bench", "train")} == {
        "env": "ok", "install": "skipped", "cuda_tests": "ok", "bench": "ok", "train": "ok"}
    env_info = json.loads((out / "env.json").read_text())
    assert env_info["packages"]["soundfile"] is False and env_info["packages"]["pesq"] is False
    assert "5 skipped" in (out / "cuda_tests.log").read_text()  # collected, and skipped without a GPU
    whats = [r["what"] for r in json.loads((out / "bench.json").read_text())["rows"]]
    assert whats[0] == "teacher training" and "distillation step" in whats
    assert "teacher sampling, incremental" in whats and "student clarinet (paper size) synthesis, 1 s" in whats
    assert (out / "bench.md").read_text().startswith("| what |")
    train = summary["train"]
    assert train["steps"] >= 10 and train["samples_per_s"] > 0
    assert len(list((out / "corpus").glob("*.wav"))) == 12


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    result = subprocess.run([sys.executable, "-m", "eval.device_check", str(tmp_path), "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not empty" in result.stderr and (tmp_path / "old.txt").is_file()
