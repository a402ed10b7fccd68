"""`wavedistill eval` end to end (tiny teacher + a 2-step student on CPU), the agreement of report.json,
report.md, report.html and TensorBoard, the RTF timing, and (where Chromium is installed) the page
rendering with its images and players."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.data.corpus import demo_corpus_dir
from eval.metrics import LIBRARY_METRICS
from eval.report import group_rows, metric_rows, summary_rows, voice_rows
from eval.timing import real_time_factor
from tests.models import SMALL, save_teacher

# the end-to-end evaluation's corpus: two demo test utterances, one voice per sub-folder; the single clip
# of the quicker evaluations: the first of them, alone in a folder
CLIPS = ["rms/rms_0015", "slt/demo_0015"]


def one(report_dir: Path) -> tuple[str, ...]:
    """The arguments of the quicker evaluations: one clip (the fixture's folder "one")."""
    return "--data", str(report_dir.parent / "one"), "--split", "all", "--max-utterances", "1"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    for uid in CLIPS:
        source = demo_corpus_dir() / "wavs" / f"{Path(uid).name}.flac"
        for folder in ("voices", "one") if uid == CLIPS[1] else ("voices",):
            (root / folder / uid).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / folder / f"{uid}.flac")
    # an LP teacher, so that the preset's student (which takes its predictor) goes through eval end to end
    teacher = save_teacher(root / "teacher.pt", "gaussian",
                           overrides=("valid.temperature=0.8", "model.linear_prediction.order=8"))
    result = cli("distill", "--teacher", teacher, "--out", str(root / "student_run"), "--steps", "2", *SMALL)
    assert result.returncode == 0, result.stderr
    result = cli("eval", "--teacher", teacher, "--student", str(root / "student_run"), "--data", str(root / "voices"),
                 "--split", "all", "--max-utterances", "2", "--max-seconds", "0.5", "--rtf-seconds", "0.25",
                 "--out", str(root / "report"))
    assert result.returncode == 0, result.stderr
    assert "| student_run |" in result.stdout and "report.html" in result.stdout
    assert "per group of voices" in result.stdout  # a line per group and system under the tables
    return root / "report"


def test_rtf_excludes_the_warm_up_and_records_its_settings(monkeypatch):
    # a clock that only the synthesis advances: the figures are exact, whatever the machine's load
    now = [0.0]
    monkeypatch.setattr("eval.timing.time", SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []

    def synth():
        calls.append(1)
        now[0] += 0.4 if len(calls) == 1 else 0.01 * len(calls)  # a first call that compiles / allocates

    r = real_time_factor(synth, audio_seconds=0.5, device=torch.device("cpu"), repeats=5, warmup=1)
    assert len(calls) == 6 and r["runs"] == 5 and r["warmup"] == 1
    # timed calls 2..6 took 0.02..0.06 s: the warm-up's 0.4 s is in none of the figures
    assert (r["min_s"], r["median_s"], r["max_s"]) == pytest.approx((0.02, 0.04, 0.06))
    assert (r["rtf"], r["rtf_min"], r["rtf_max"]) == pytest.approx((0.08, 0.04, 0.12))
    assert r["x_real_time"] == pytest.approx(12.5)
    assert {"batch", "audio_seconds", "dtype", "device_name", "torch", "threads"} <= set(r)


def test_the_report_holds_every_system_with_scores_and_timings(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    systems = report["systems"]
    assert list(systems) == ["reference", "griffin_lim", "teacher", "student_run"]
    assert systems["reference"]["pesq_wb"] == pytest.approx(4.644, abs=0.01)
    assert systems["reference"]["mel_l1"] == 0 and systems["reference"]["rtf"] is None
    for name in ("griffin_lim", "teacher", "student_run"):
        entry = systems[name]
        assert 1.0 <= entry["pesq_wb"] < 4.5 and entry["mel_l1"] > 0 and math.isfinite(entry["teacher_nll"])
        assert (entry["rtf"]["runs"] == 5 and entry["rtf"]["rtf"] > 0
                and entry["rtf"]["audio_seconds"] == 0.24)  # whole hops
        assert [u["id"] for u in entry["utterances"]] == CLIPS
    assert systems["student_run"]["speedup_over_teacher"] > 1  # parallel beats autoregressive
    # the teacher timed with its reference sampler and its fastest; every speed-up quoted against each
    samplers = set(systems["teacher"]["rtf_by_sampler"])
    assert "incremental" in samplers and samplers <= {"incremental", "fast"}
    assert set(systems["student_run"]["speedup_over_teacher_by_sampler"]) == samplers
    for metric in LIBRARY_METRICS.values():  # every installed metric of `--metrics all`, for every system
        if metric.in_all and not metric.missing():
            assert all(key in e and key in e["utterances"][0] for key in metric.keys for e in systems.values())
    if not LIBRARY_METRICS["mcd"].missing():
        assert systems["reference"]["mcd"] == 0.0 and systems["teacher"]["mcd"] > 0
    if not LIBRARY_METRICS["stoi"].missing():  # 0.5 s clips: too little speech for STOI, undefined, not 1e-5
        assert systems["reference"]["stoi"] is None and "NaN" in (report_dir / "report.md").read_text()
    settings = report["settings"]
    assert settings["utterances"] == len(CLIPS) and settings["students"]["student_run"]["teacher_matches"]
    spent = settings["students"]["student_run"]["cpu_minutes"]  # the budget its checkpoint holds
    assert 0 < spent < 60 and f"{spent:.1f} CPU-minutes" in (report_dir / "report.md").read_text()
    assert settings["temperature"] == 0.8  # no --temperature: the teacher's own synthesis temperature
    assert report["versions"]["torch"] == str(torch.__version__)
    assert len(list((report_dir / "wavs").glob("*.wav"))) == 4 * len(CLIPS)
    spectrograms = [f for f in (report_dir / "images").glob("*.png") if not f.name.startswith(("training_", "over_"))]
    assert len(spectrograms) == 4 * len(CLIPS)
    # two voices: every system per voice and per group of voices as well
    assert [u["voice"] for u in systems["reference"]["utterances"]] == ["rms", "slt"]
    assert set(report["voices"]) == {"rms", "slt"}
    assert all(list(v["systems"]) == list(systems) and v["utterances"] == 1 for v in report["voices"].values())
    assert sum(g["utterances"] for g in report["groups"].values()) == len(CLIPS)
    assert (report_dir / "images" / "training_student_run.png").is_file()  # the student run's training curves


def test_markdown_html_json_and_tensorboard_agree(report_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = json.loads((report_dir / "report.json").read_text())
    markdown = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    # re-rendered from the JSON: the written tables' cells (per group and voice where the clips have several)
    for row in summary_rows(report) + metric_rows(report) + group_rows(report) + voice_rows(report):
        assert "| " + " | ".join(row) + " |" in markdown
        assert "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" in page
    events = EventAccumulator(str(report_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    for name, entry in report["systems"].items():
        for key in ("pesq_wb", "mel_l1", "stft_distance", "teacher_nll", "stoi", "dnsmos_ovrl", "mcd"):
            if key not in entry or entry[key] is None:  # a metric not installed, or NaN (null in strict JSON)
                continue
            logged = events.Scalars(f"eval/{name}/{key}")[-1].value
            assert logged == pytest.approx(entry[key], rel=1e-5, abs=1e-6)
        if entry["rtf"]:
            assert events.Scalars(f"eval/{name}/rtf")[-1].value == pytest.approx(entry["rtf"]["rtf"], rel=1e-5)
    for prefix, section in ([(f"eval/{g}", e) for g, e in report.get("groups", {}).items()]
                            + [(f"eval/voice/{v}", e) for v, e in report.get("voices", {}).items()]):
        for name, entry in section["systems"].items():
            if entry["mel_l1"] is not None:
                logged = events.Scalars(f"{prefix}/{name}/mel_l1")[-1].value
                assert logged == pytest.approx(entry["mel_l1"], rel=1e-5, abs=1e-6)
    assert any(tag.startswith("audio/") for tag in events.Tags()["audio"])


def test_every_image_and_player_in_the_page_points_at_a_real_file(report_dir):
    page = (report_dir / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    players = re.findall(r"<audio controls preload='metadata' src='([^']+)'", page)
    assert len(images) == len(players) == 4 * len(CLIPS)
    for src in images:
        assert (report_dir / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for src in players:
        audio, rate = sf.read(report_dir / src)
        assert rate == 16000 and len(audio) == 31 * 256  # 0.5 s in whole hops


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_chromium_renders_the_report_with_its_spectrograms(report_dir, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,3000", f"--screenshot={shot}", (report_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1280)
    # the magma spectrograms put thousands of saturated, non-grey pixels on an otherwise black-on-white page
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.3
    assert int(colourful.sum()) > 20_000, "the spectrogram images did not render"
    assert np.isclose(pixels[5, 5], 1.0).all()  # a white page, not an error screen


def test_the_fast_teacher_sampler_in_the_report(report_dir, tmp_path):
    from teachers.sampling.fastloop import available

    if not available():
        pytest.skip("no C compiler for the fast loop")
    teacher = str(report_dir.parent / "teacher.pt")
    result = cli("eval", "--teacher", teacher, "--systems", "reference,teacher", *one(report_dir), "--max-seconds",
                 "0.5", "--rtf-seconds", "0.25", "--teacher-sampler", "fast", "--metrics", "none", "--out",
                 str(tmp_path / "fast"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "fast" / "report.json").read_text())
    settings, systems = report["settings"], report["systems"]
    assert settings["teacher_sampler"] == "fast" and systems["teacher"]["rtf"]["rtf"] > 0
    assert math.isfinite(systems["teacher"]["pesq_wb"])
    assert "teacher sampler: fast" in (tmp_path / "fast" / "report.md").read_text()


@pytest.mark.slow  # ~25 s of inductor compilation on 2 cores; compiled synthesis itself: tests/students/test_iaf.py
def test_a_compiled_student_in_the_report(report_dir, tmp_path):
    result = cli("eval", "--student", str(report_dir.parent / "student_run"), "--systems", "reference,student",
                 *one(report_dir), "--max-seconds", "0.5", "--rtf-seconds", "0.25", "--student-compile",
                 "--metrics", "none", "--out", str(tmp_path / "compiled"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "compiled" / "report.json").read_text())
    settings, systems = report["settings"], report["systems"]
    assert settings["student_compile"] is True and systems["student_run"]["rtf"]["dtype"] == "float32 compiled"
    assert math.isfinite(systems["student_run"]["pesq_wb"])
    assert "students in float32, compiled" in (tmp_path / "compiled" / "report.md").read_text()


def test_dnsmos_in_the_report_is_speechmos_on_the_written_files(report_dir):
    if LIBRARY_METRICS["dnsmos"].missing():
        pytest.skip("speechmos not installed")
    from speechmos import dnsmos

    report = json.loads((report_dir / "report.json").read_text())
    for name in ("reference", "student_run"):
        for utt in report["systems"][name]["utterances"]:
            audio, rate = sf.read(report_dir / report["wavs"][utt["id"]][name])
            direct = dnsmos.run(audio, rate)  # the 16-bit file: equal to the float audio scored, to quantisation
            # (a 2-step student's quiet, noise-like output moves by up to ~0.02 when quantised; another rate
            # or another signal moves DNSMOS by tenths)
            assert utt["dnsmos_ovrl"] == pytest.approx(direct["ovrl_mos"], abs=0.03)
            assert utt["dnsmos_p808"] == pytest.approx(direct["p808_mos"], abs=0.03)


def test_systems_and_metrics_can_be_chosen(report_dir, tmp_path):
    teacher = str(report_dir.parent / "teacher.pt")
    result = cli("eval", "--teacher", teacher, "--student", str(report_dir.parent / "student_run"),
                 *one(report_dir), "--max-seconds", "0.5", "--rtf-seconds", "0.25", "--rtf-runs", "1",
                 "--systems", "griffin_lim,student", "--metrics", "mcd,crepe", "--out", str(tmp_path / "some"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "some" / "report.json").read_text())
    assert list(report["systems"]) == ["griffin_lim", "student_run"]  # no teacher sampling, no reference row
    crepe = not LIBRARY_METRICS["crepe"].missing()  # CREPE only when named, and where the crepe extra is installed
    assert report["settings"]["systems"] == ["griffin_lim", "student"]
    assert report["settings"]["metrics"] == (["mcd", "crepe"] if crepe else ["mcd"])
    student = report["systems"]["student_run"]
    assert "mcd" in student and "stoi" not in student and "speedup_over_teacher" not in student
    assert "speed-up vs teacher" not in result.stdout and "| MCD (dB) |" in result.stdout
    if crepe:
        assert all(key in student and key in student["utterances"][0] for key in LIBRARY_METRICS["crepe"].keys)
        assert "CREPE V/UV F1" in result.stdout and "torchcrepe" in (tmp_path / "some" / "report.md").read_text()
    bad = cli("eval", "--teacher", teacher, "--systems", "teacher,wavenet", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "--systems 'teacher,wavenet': choose from reference, griffin_lim" in bad.stderr
    bad = cli("eval", "--teacher", teacher, "--metrics", "visqol", "--out", str(tmp_path / "bad2"))
    assert bad.returncode != 0 and "unknown metric(s) visqol" in bad.stderr


def test_quality_over_training_scores_each_checkpoint_and_plots_the_curves(report_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    teacher, run = str(report_dir.parent / "teacher.pt"), tmp_path / "student_b"
    result = cli("distill", "--teacher", teacher, "--out", str(run), "--steps", "4", *SMALL,
                 "train.checkpoint_every=2", "train.log_every=1", "train.valid_every=2")
    assert result.returncode == 0, result.stderr
    args = ["eval", "--teacher", teacher, "--student", str(run), *one(report_dir), "--max-seconds", "0.5",
            "--rtf-seconds", "0.25", "--rtf-runs", "1", "--systems", "reference,student", "--metrics", "mcd"]
    result = cli(*args, "--checkpoints", "all", "--out", str(tmp_path / "curves"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "curves"
    report = json.loads((out / "report.json").read_text())
    assert list(report["systems"]) == ["reference", "student_b @ 2", "student_b @ 4"]
    assert [report["settings"]["students"][n]["step"] for n in ("student_b @ 2", "student_b @ 4")] == [2, 4]
    page = (out / "report.html").read_text()
    for image in ("images/over_training_student_b.png", "images/training_student_b.png"):
        assert f"src='{image}'" in page and (out / image).read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    logged = events.Scalars("over_training/student_b/mcd")
    assert [e.step for e in logged] == [2, 4]
    assert [e.value for e in logged] == pytest.approx([report["systems"][f"student_b @ {k}"]["mcd"] for k in (2, 4)])
    bad = cli(*args, "--checkpoints", "2,3", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "no step checkpoint for step(s) 3; it keeps 2, 4" in bad.stderr


def test_training_curves_keep_the_last_value_of_a_step_logged_twice(tmp_path):
    from eval.report import training_curves

    lines = [{"step": 1, "loss/kl": 3.0, "train/lr": 1e-3}, {"step": 2, "loss/kl": 2.0},
             {"step": 2, "loss/kl": 2.5, "valid/loss/kl": 1.5}]  # resumed from step 1: step 2 logged again
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 3, "lo')
    assert training_curves(tmp_path) == {"loss/kl": ([1, 2], [3.0, 2.5]), "valid/loss/kl": ([2], [1.5])}


def test_system_and_utterance_names_get_distinct_safe_file_names():
    from eval.report import _file_names

    names = _file_names(["student a b", "student a_b", "spk/1", "spk_1"])
    assert len(set(names.values())) == 4 and all("/" not in v and " " not in v for v in names.values())


def test_the_report_says_when_pesq_resampled_the_audio():
    from eval.report import pesq_note

    def report(rate, modes):
        return {"settings": {"features": {"sample_rate": rate}, "pesq_modes": modes}, "systems": {}}

    assert pesq_note(report(16000, ["wb"])) == ""
    assert "22050 Hz; PESQ wb at 16 kHz" in pesq_note(report(22050, ["wb"]))
    assert "PESQ wb at 16 kHz and PESQ nb at 8 kHz" in pesq_note(report(24000, ["wb", "nb"]))


def test_every_library_metric_has_its_columns_and_its_line_in_the_note():
    from eval.metrics import LIBRARY_METRICS
    from eval.report import METRIC_COLUMNS, metric_note

    columns = [key for key, _, _ in METRIC_COLUMNS]
    assert len(columns) == len(set(columns))
    for metric in LIBRARY_METRICS.values():
        assert set(metric.keys) <= set(columns), metric.name
        note = metric_note({"settings": {"metrics": [metric.name]}})
        assert note.startswith("At 16 kHz (other rates resampled). ") and ". . " not in note, metric.name
