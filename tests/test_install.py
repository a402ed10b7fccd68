"""Install anywhere: the wheel carries what the commands read at run time (presets, the demo corpus, the
shipped teacher, the C loop's source), and a non-editable install works from an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "Could not find a version that satisfies" in result.stderr:
        pytest.skip("no build backend reachable (setuptools/wheel from the package index)")
    assert result.returncode == 0, result.stderr
    (found,) = out.glob("wavedistill-*.whl")
    return found


def site_dirs() -> list[str]:
    """The site-packages folders this interpreter imports from (a virtual environment's own and, where it
    has them, its base's)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def make_venv(folder: Path) -> Path:
    """A fresh virtual environment that sees this interpreter's installed packages (torch and the other
    dependencies) through a .pth file of plain paths. `venv --system-site-packages` would not do: inside a
    virtual environment it gives the *base* interpreter's packages, which may lack torch. Plain paths are
    not site folders, so the .pth files there (this checkout's editable install) are not run."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    (own,) = (folder / "lib").glob("python3*/site-packages")
    (own / "_wavedistill_test_parent.pth").write_text("\n".join(site_dirs()) + "\n")
    return folder


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable); torch and the other
    dependencies come from this interpreter's site-packages."""
    venv = make_venv(tmp_path_factory.mktemp("venv"))
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return venv


def _run_in_empty_folder(venv: Path, folder: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "wavedistill"), *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_wheel_carries_every_preset_the_demo_corpus_the_teacher_and_the_c_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    assert presets and presets <= names
    corpus = {str(p.relative_to(ROOT)) for p in (ROOT / "distill" / "data" / "demo_corpus").rglob("*") if p.is_file()
              and p.suffix in (".txt", ".csv", ".flac")}
    assert corpus and corpus <= names
    assert {"teachers/pretrained/universal_lp_pitch_tiny.pt", "teachers/pretrained/demo_gaussian_lp_tiny.pt",
            "teachers/sampling/fastloop.c"} <= names
    assert not any(n.startswith(("tests/", "runs/", "teachers/pretrained/training/")) for n in names)


def test_a_non_editable_install_distils_from_an_empty_folder_with_its_own_presets(installed, tmp_path):
    result = _run_in_empty_folder(installed, tmp_path / "work", "distill", "--steps", "1", "--out", "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "run" / "checkpoints" / "latest.pt").is_file()
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import distill; print(distill.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert str(installed) in where  # the wheel's copy ran, not this checkout


@pytest.mark.slow  # ~7 minutes on 2 cores (the teacher's autoregressive sampling)
def test_the_demo_runs_from_an_empty_folder_after_a_non_editable_install(installed, tmp_path):
    result = _run_in_empty_folder(installed, tmp_path / "work", "demo", "--steps", "2", timeout=1800)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "work" / "runs" / "demo" / "report" / "report.html").is_file()


def test_the_test_venv_imports_torch_from_where_this_interpreter_does(tmp_path):
    import torch

    venv = make_venv(tmp_path / "venv")
    code = "import torch, importlib.util; print(torch.__file__); print(importlib.util.find_spec('distill'))"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0, where.stderr
    torch_file, distill_spec = where.stdout.splitlines()
    assert torch_file == torch.__file__
    assert distill_spec == "None", "the checkout's editable install leaked into the fresh environment"
