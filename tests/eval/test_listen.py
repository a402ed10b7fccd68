"""`wavedistill listen` and `listen-results`: the page (in headless Chromium where installed, with
its scripted rater), the low anchor, the results server, and the aggregation against a hand computation."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill.errors import ConfigError
from eval.listen import ANCHOR, REFERENCE, aggregate, build_spec, low_anchor, serve_in_thread, write_page
from tests.conftest import harmonic

SR = 16000
SYSTEMS = ["griffin_lim", "teacher", "student run"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report folder as `wavedistill eval` writes it (report.json listing its wavs), 2 utterances."""
    root = tmp_path_factory.mktemp("report")
    wavs: dict[str, dict[str, str]] = {}
    for u, (utt, seconds) in enumerate((("utt_a", 1.0), ("utt_b", 1.5))):
        wavs[utt] = {}
        for s, name in enumerate([REFERENCE, *SYSTEMS]):
            x = harmonic(seconds, 120 + 10 * u, seed=s)
            path = f"wavs/{utt}_{s}.wav"
            (root / "wavs").mkdir(exist_ok=True)
            sf.write(root / path, x, SR, subtype="PCM_16")
            wavs[utt][name] = path
    systems = {name: {"pesq_wb": 1.0} for name in [REFERENCE, *SYSTEMS]}
    (root / "report.json").write_text(json.dumps({"systems": systems, "wavs": wavs}))
    return root


def test_the_low_anchor_keeps_the_band_below_3_5_khz_and_removes_the_rest():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR).astype(np.float32) * 0.1
    y = low_anchor(x, SR)
    spectrum_x, spectrum_y = np.abs(np.fft.rfft(x)) ** 2, np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    low, high = freqs < 2500, freqs > 4500
    assert spectrum_y[low].sum() / spectrum_x[low].sum() == pytest.approx(1.0, abs=0.02)
    assert spectrum_y[high].sum() / spectrum_x[high].sum() < 1e-3
    assert y.shape == x.shape


def test_listen_writes_one_self_contained_page(report, tmp_path):
    result = cli("listen", str(report), "--out", str(tmp_path / "page"))
    assert result.returncode == 0, result.stderr
    assert "mushra, ab, mos on 2 utterance(s)" in result.stdout and "A/B student run vs teacher" in result.stdout
    page = (tmp_path / "page" / "index.html").read_text()
    assert "src=\"wavs/" not in page and page.count("data:audio/wav;base64,") == 2 * 5  # 4 systems + the anchor
    config = json.loads(re.search(r'<script id="config" type="application/json">(.*?)</script>', page, re.S)[1])
    assert config["systems"] == SYSTEMS and config["ab"] == ["student run", "teacher"]


def test_listen_names_bad_input(report, tmp_path):
    bad = cli("listen", str(tmp_path))
    assert bad.returncode != 0 and "no report.json" in bad.stderr
    with pytest.raises(ConfigError, match="--ab 'teacher,wavenet': two different systems of the report"):
        build_spec(report, ab="teacher,wavenet")
    with pytest.raises(ConfigError, match="choose from mushra, ab, mos"):
        build_spec(report, ("mushra", "abx"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_a_scripted_rater_fills_every_trial_in_chromium_and_the_aggregate_is_right(report, tmp_path):
    assert cli("listen", str(report), "--out", str(tmp_path / "page")).returncode == 0
    page = (tmp_path / "page" / "index.html").as_uri() + "#selftest"
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
                          "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.S)
    assert found, "the page's scripted rater did not finish"
    out = json.loads(found[1].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert out["exportable"]  # every trial rated: the export button was enabled
    # every player loaded its clip: 2 utterances x (MUSHRA: ref + 5 stimuli, A/B: 2, MOS: 4)
    durations = sorted(out["durations"])
    assert len(durations) == 2 * (6 + 2 + 4)
    assert durations == pytest.approx(sorted([1.0] * 12 + [1.5] * 12), abs=1e-3)
    results = out["results"]
    assert len(results["mushra"]) == 2 and len(results["ab"]) == 2 and len(results["mos"]) == 2 * 4
    assert all(set(t["ratings"]) == {REFERENCE, ANCHOR, *SYSTEMS} for t in results["mushra"])
    # a second rater who misses the hidden reference (post-screened out of MUSHRA), then the CLI's aggregate
    bad = json.loads(json.dumps(results))
    bad["rater"] = "careless"
    for trial in bad["mushra"]:
        trial["ratings"][REFERENCE] = 40
    files = []
    for r in (results, bad):
        files.append(tmp_path / f"{r['rater']}.json")
        files[-1].write_text(json.dumps(r))
    done = cli("listen-results", *map(str, files), "--out", str(tmp_path / "agg"))
    assert done.returncode == 0, done.stderr
    agg = json.loads((tmp_path / "agg" / "results.json").read_text())
    assert agg["mushra"]["raters_kept"] == ["selftest"] and "careless" in agg["mushra"]["excluded"][0]
    # by hand: the kept rater's MUSHRA scores, both raters' MOS scores, per system
    for system in [REFERENCE, ANCHOR, *SYSTEMS]:
        scores = [t["ratings"][system] for t in results["mushra"]]
        assert agg["mushra"]["systems"][system]["mean"] == pytest.approx(sum(scores) / len(scores))
        half = 12.706 * np.std(scores, ddof=1) / math.sqrt(2)  # t(0.975, 1 degree of freedom) = 12.706
        assert agg["mushra"]["systems"][system]["ci95"] == pytest.approx(half, rel=1e-4)
    for system in [REFERENCE, *SYSTEMS]:
        scores = [t["score"] for r in (results, bad) for t in r["mos"] if t["system"] == system]
        assert agg["mos"]["systems"][system]["n"] == 4
        assert agg["mos"]["systems"][system]["mean"] == pytest.approx(sum(scores) / 4)
    (pair,) = agg["ab"]
    choices = [t["choice"] for r in (results, bad) for t in r["ab"]]
    assert pair["trials"] == 4 and pair["counts"]["none"] == choices.count("none")
    assert all(pair["counts"][s] == choices.count(s) for s in pair["systems"])
    assert (tmp_path / "agg" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| student run |" in (tmp_path / "agg" / "results.md").read_text()


def test_mushra_post_screening_follows_bs1534():
    def rater(name: str, reference_scores: list[float]) -> dict:
        return {"rater": name, "ab": [], "mos": [],
                "mushra": [{"ratings": {REFERENCE: s, "x": 50.0}} for s in reference_scores]}

    # 1 of 7 items below 90 is 14% (kept); 2 of 7 is 29% (excluded)
    agg = aggregate([rater("a", [100] * 6 + [80]), rater("b", [100] * 5 + [80, 85])])
    assert agg["mushra"]["raters_kept"] == ["a"]
    assert agg["mushra"]["systems"]["x"] == {"n": 7, "mean": 50.0, "ci95": 0.0}


def test_the_server_serves_the_page_and_writes_posted_results(report, tmp_path):
    write_page(build_spec(report), tmp_path / "page")
    server, _ = serve_in_thread(tmp_path / "page")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert b"__CONFIG__" not in urllib.request.urlopen(f"{base}/index.html").read()
        body = json.dumps({"format": "wavedistill-listen/1", "rater": "R 1/x", "mushra": [], "ab": [], "mos": []})
        request = urllib.request.Request(f"{base}/results", body.encode(), {"Content-Type": "application/json"})
        saved = json.loads(urllib.request.urlopen(request).read())["saved"]
        assert re.fullmatch(r"results/R_1_x_\d{8}T\d{6}\d+Z\.json", saved)
        assert json.loads((tmp_path / "page" / saved).read_text())["rater"] == "R 1/x"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{base}/results", b'{"rater": 1}'))
        assert refused.value.code == 400
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_ab_pair_leaves_the_post_filtered_systems_out(tmp_path):
    """An evaluation with --postfilter lists '<system> + post-filter' after the models: the default A/B is
    still the last model against the teacher, and a report with one model pits it against its filtered self."""
    for names, pair in (([*SYSTEMS, "teacher + post-filter", "student run + post-filter"], ("student run", "teacher")),
                        (["student run", "student run + post-filter"], ("student run", "student run + post-filter"))):
        root = tmp_path / str(len(names))
        (root / "wavs").mkdir(parents=True)
        wavs = {"utt": {}}
        for s, name in enumerate([REFERENCE, *names]):
            sf.write(root / f"wavs/utt_{s}.wav", harmonic(0.5, 120, seed=s), SR, subtype="PCM_16")
            wavs["utt"][name] = f"wavs/utt_{s}.wav"
        systems = {name: {"pesq_wb": 1.0} for name in [REFERENCE, *names]}
        (root / "report.json").write_text(json.dumps({"systems": systems, "wavs": wavs}))
        assert build_spec(root).ab_pair == pair
