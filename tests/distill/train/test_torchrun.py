"""torchrun jobs as a cluster runs them: a worker killed mid-run under `--max-restarts` (the group restarts,
resumes from the newest checkpoint and ends exactly as an uninterrupted job), and two nodes (two elastic
agents on this machine, c10d rendezvous, gloo) that train, checkpoint, resume and end as one node with two
processes does. Each job: 2 processes of a small teacher on the CPU."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.train.checkpoint import load_checkpoint
from tests.toy import free_port

ROOT = Path(__file__).resolve().parents[3]
SMALL = ["model.layers=10", "model.cycle=5", "model.residual_channels=8", "model.gate_channels=8",
         "model.skip_channels=8", "data.segment_length=2048", "train.batch_size=1", "train.log_every=1",
         "train.valid_every=1000", "valid.max_utterances=1", "valid.sample_seconds=0", "train.device=cpu",
         "train.checkpoint_every=8"]
STEPS = 16


def console_script() -> str:
    """The `wavedistill` console script of this Python (else the one on PATH); skips unless it is a Python
    script: torchrun runs it with Python, so a shell shim (pyenv's) will not do."""
    beside = os.path.join(os.path.dirname(sys.executable), "wavedistill")
    script = beside if os.path.isfile(beside) else shutil.which("wavedistill")
    if script is None:
        pytest.skip("no wavedistill console script")
    with open(script, "rb") as f:
        if not f.read(2) == b"#!" or b"python" not in f.readline():
            pytest.skip(f"{script} is not a Python console script")
    return script


def launch(launcher: list[str], corpus: Path, out: Path, steps: int, *extra: str, marker: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WAVEDISTILL_TEST_JOB": marker or str(out)}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, console_script(), "train-teacher",
               "--config", "configs/teacher/gaussian_tiny.yaml", "--out", str(out), "--steps", str(steps),
               f"data.corpus={corpus}", *SMALL, *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: subprocess.Popen, timeout: float = 300) -> str:
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        _, err = job.communicate()
        pytest.fail(f"the job did not finish in {timeout} s: {err[-3000:]}")
    assert job.returncode == 0, err[-3000:]
    assert "terminate called" not in err  # no rank aborted at exit (gloo's destructors)
    return err


def worker_pid(marker: str, rank: int) -> int | None:
    """The pid of the training process of `rank` in the job marked `marker` (not its torchrun agent)."""
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"WAVEDISTILL_TEST_JOB={marker}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x["step"] == y["step"] == STEPS
    assert x["model"].keys() == y["model"].keys()
    assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), "the weights differ"


@pytest.fixture(scope="module")
def uninterrupted(synth_corpus, tmp_path_factory) -> Path:
    """One node, two processes, never interrupted: what the other jobs must end as."""
    out = tmp_path_factory.mktemp("straight") / "run"
    finish(launch(["--standalone", "--nproc_per_node", "2"], synth_corpus, out, STEPS))
    return out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker to kill through /proc")
def test_a_worker_killed_mid_run_restarts_the_group_which_resumes_and_ends_as_an_uninterrupted_job(
        synth_corpus, uninterrupted, tmp_path):
    out = tmp_path / "run"
    job = launch(["--standalone", "--nproc_per_node", "2", "--max-restarts", "2"], synth_corpus, out, STEPS,
                 "--resume")
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step_00000008.pt").exists() and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint at step 8 in 300 s"
        time.sleep(0.05)
    pid = worker_pid(str(out), 1)
    assert pid is not None and job.poll() is None, "the job ended before a worker could be killed"
    os.kill(pid, signal.SIGKILL)
    err = finish(job)
    assert "exitcode: -9" in err  # torchrun saw the worker die and restarted the group
    assert "resumed from" in err and "Connection refused" not in err
    assert_same_weights(out, uninterrupted)


def test_two_nodes_train_checkpoint_resume_and_end_as_one_node_with_two_processes(
        synth_corpus, uninterrupted, tmp_path):
    out = tmp_path / "run"
    for steps, extra in ((8, ()), (STEPS, ("--resume",))):
        port = free_port()
        nodes = [launch(["--nnodes", "2", "--node-rank", str(node), "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                         "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"],
                        synth_corpus, out, steps, *extra, marker=f"{out}-{node}") for node in (0, 1)]
        logs = [finish(node) for node in nodes]
    assert any(f"resumed from {out / 'checkpoints' / 'step_00000008.pt'} at step 8" in log for log in logs)
    assert load_checkpoint(out)["world_size"] == 2
    assert_same_weights(out, uninterrupted)
