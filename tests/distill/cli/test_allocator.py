"""The glibc malloc settings: applied on glibc, skippable by environment, idempotent."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from distill.cli.allocator import tune_allocator; print(tune_allocator(), tune_allocator())"


def run(mode: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "WAVEDISTILL_MALLOC"}
    if mode:
        env["WAVEDISTILL_MALLOC"] = mode
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=60).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_settings_apply_on_glibc_once_and_can_be_refused():
    assert run(None) == "True True"
    assert run("default") == "False False"
