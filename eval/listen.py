"""A blind listening test from an evaluation report, and the analysis of its ratings.

`wavedistill listen REPORT_DIR` writes one self-contained HTML page (every clip embedded as a WAV
data URI, so it can be mailed to raters and opened offline) with up to three tests:

- MUSHRA (ITU-R BS.1534-3): per utterance, the open reference, then the hidden reference, a low
  anchor (the reference low-passed at 3.5 kHz) and every system, in a random order under neutral
  letters, each rated 0-100 on a slider;
- A/B preference between two systems per utterance (A/B order random): A, B or no preference;
- MOS: every (utterance, system) clip, reference included, rated on the 5-point ACR scale.

The order of trials, and of the stimuli within each, is drawn per rater (the seed and the resulting
order are saved with the ratings). Ratings are exported as a JSON download; with `--serve` the
folder is served on 127.0.0.1 and the page also posts its results, which the server writes into
`results/`. `wavedistill listen-results FILES...` aggregates: MUSHRA after BS.1534-3's
post-screening (an assessor who rates the hidden reference below 90 in more than 15% of the items is
excluded), means with 95% confidence intervals (Student's t) per system for MUSHRA and MOS, A/B
preference shares with a two-sided binomial test, as results.md / results.json / results.png.

The page has a scripted rater for tests and demonstrations: opening it with `#selftest` fills every
trial through the page's own controls with seeded random ratings, exports, and writes the exported
JSON and every audio element's duration into `<pre id="selftest">`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from distill.audio.io import require_soundfile
from distill.audio.postfilter import POST_FILTERED
from distill.errors import ConfigError

FORMAT = "wavedistill-listen/1"
TESTS = ("mushra", "ab", "mos")
REFERENCE, ANCHOR = "reference", "anchor_3.5kHz"
ANCHOR_HZ = 3500.0
# BS.1534-3 post-screening: exclude an assessor who rates the hidden reference below 90 for more than 15% of items
SCREEN_BELOW, SCREEN_SHARE = 90.0, 0.15


@dataclass
class ListenSpec:
    """What the page tests; built from the report by `build_spec`."""

    utterances: list[str]
    systems: list[str]  # rated systems (MUSHRA and MOS), without the reference and the anchor
    ab_pair: tuple[str, str] | None
    tests: tuple[str, ...]
    audio: dict[str, dict[str, bytes]]  # audio[utterance][system or REFERENCE or ANCHOR] = WAV bytes


def low_anchor(x: np.ndarray, sample_rate: int, cutoff: float = ANCHOR_HZ) -> np.ndarray:
    """BS.1534-3's low anchor: the reference low-passed at 3.5 kHz (8th-order Butterworth, zero phase)."""
    from scipy.signal import butter, sosfiltfilt

    if cutoff >= sample_rate / 2:
        raise ConfigError(f"the low anchor's cutoff {cutoff:g} Hz needs audio above {2 * cutoff:g} Hz "
                          f"sampling; this report's is {sample_rate} Hz")
    sos = butter(8, cutoff, btype="low", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def _wav_bytes(x: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf = require_soundfile("the listening page")
    sf.write(buffer, np.clip(x, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def build_spec(report_dir: Path, tests: tuple[str, ...] = TESTS, ab: str = "", max_utterances: int = 0) -> ListenSpec:
    """Read report.json and its wavs; every problem is one line naming the file and the fix."""
    path = report_dir / "report.json"
    if not path.is_file():
        raise ConfigError(f"{report_dir}: no report.json; give the --out folder of `wavedistill eval` or `demo`")
    report = json.loads(path.read_text(encoding="utf-8"))
    wavs = report.get("wavs")
    if not wavs:
        raise ConfigError(f"{path}: does not list its wavs (written before `listen` existed); run the evaluation again")
    unknown = [t for t in tests if t not in TESTS]
    if unknown or not tests:
        raise ConfigError(f"--tests {','.join(tests)}: choose from {', '.join(TESTS)}")
    utterances = list(wavs)[: max_utterances or None]
    systems = [s for s in report["systems"] if s != REFERENCE]
    if not systems:
        raise ConfigError(f"{path}: has no system besides the reference to rate")
    ab_pair = None
    if "ab" in tests:
        if ab:
            pair = [s.strip() for s in ab.split(",")]
            if len(pair) != 2 or pair[0] == pair[1] or any(s not in report["systems"] for s in pair):
                raise ConfigError(f"--ab {ab!r}: two different systems of the report, e.g. "
                                  f"--ab '{systems[-1]},{systems[0]}' (it has {', '.join(report['systems'])})")
            ab_pair = (pair[0], pair[1])
        elif len(systems) >= 2:  # the last student against the teacher (or the system before it), both unfiltered
            models = [s for s in systems if not s.endswith(POST_FILTERED)] or systems
            last = models[-1]
            # a model listed first (no teacher, nothing before it) meets the last system: its filtered self
            other = "teacher" if "teacher" in models and last != "teacher" else systems[systems.index(last) - 1]
            ab_pair = (last, other)
        else:
            raise ConfigError(f"{path}: A/B needs two systems; it has {', '.join(systems)} (leave out ab with --tests)")
    audio: dict[str, dict[str, bytes]] = {}
    for utt in utterances:
        audio[utt] = {}
        for name in [REFERENCE, *systems]:
            file = report_dir / wavs[utt].get(name, "")
            if not file.is_file():
                raise ConfigError(f"{file}: missing (listed in {path}); run the evaluation again")
            x, rate = require_soundfile("the listening page").read(file, dtype="float32")
            audio[utt][name] = _wav_bytes(x, rate)
            if name == REFERENCE and "mushra" in tests:
                audio[utt][ANCHOR] = _wav_bytes(low_anchor(x, rate), rate)
    return ListenSpec(utterances, systems, ab_pair, tuple(t for t in TESTS if t in tests), audio)


def write_page(spec: ListenSpec, out: Path, title: str = "Listening test") -> Path:
    """The self-contained page, `out/index.html`."""
    out.mkdir(parents=True, exist_ok=True)
    keys: dict[str, str] = {}  # audio id -> data URI
    clips: dict[str, dict[str, str]] = {}
    for u, (utt, by_system) in enumerate(spec.audio.items()):
        clips[utt] = {}
        for s, (name, data) in enumerate(by_system.items()):
            key = f"a{u}_{s}"
            keys[key] = "data:audio/wav;base64," + base64.b64encode(data).decode("ascii")
            clips[utt][name] = key
    config = {"format": FORMAT, "tests": list(spec.tests), "utterances": spec.utterances, "systems": spec.systems,
              "ab": list(spec.ab_pair) if spec.ab_pair else None, "clips": clips, "reference": REFERENCE,
              "anchor": ANCHOR}
    page = PAGE.replace("__TITLE__", html.escape(title)).replace("__CONFIG__", _script_json(config))
    page = page.replace("__AUDIO__", _script_json(keys))
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value).replace("</", "<\\/")


# --------------------------------------------------------------------------------------------
# --serve: the folder on 127.0.0.1; POST /results writes results/<rater>_<time>.json


def validate_results(data: object, source: str) -> dict:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{source}: not a wavedistill listening-test result (format {FORMAT!r} expected)")
    for key in ("rater", "mushra", "ab", "mos"):
        if key not in data:
            raise ConfigError(f"{source}: has no {key!r}; export it again from the page")
    return data


def make_server(folder: Path, port: int = 8000) -> ThreadingHTTPServer:
    """A server for the listening folder on 127.0.0.1 (port 0: any free port)."""
    results = folder / "results"

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/results":
                self.send_error(404, "POST results to /results")
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                data = validate_results(json.loads(self.rfile.read(length)), "the posted results")
            except (ValueError, ConfigError) as err:
                self.send_error(400, str(err))
                return
            results.mkdir(exist_ok=True)
            rater = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(data["rater"]))[:40] or "rater"
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            path = results / f"{rater}_{stamp}.json"
            path.write_text(json.dumps(data, indent=1), encoding="utf-8")
            body = json.dumps({"saved": f"results/{path.name}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve_in_thread(folder: Path, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = make_server(folder, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


# --------------------------------------------------------------------------------------------
# listen-results: aggregation


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its 95% confidence interval (Student's t; NaN for one value)."""
    from scipy.stats import t

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "ci95": math.nan}
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "ci95": math.nan}
    half = float(t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "ci95": half}


def screen_mushra(results: list[dict]) -> tuple[list[dict], list[str]]:
    """BS.1534-3 post-screening: (kept results, lines naming each excluded rater and why)."""
    kept, excluded = [], []
    for r in results:
        trials = r["mushra"]
        low = sum(1 for t in trials if t["ratings"].get(REFERENCE, 100) < SCREEN_BELOW)
        if trials and low / len(trials) > SCREEN_SHARE:
            excluded.append(f"{r['rater']}: rated the hidden reference below {SCREEN_BELOW:g} in {low} of "
                            f"{len(trials)} items (> {SCREEN_SHARE:.0%})")
        else:
            kept.append(r)
    return kept, excluded


def aggregate(results: list[dict]) -> dict:
    from scipy.stats import binomtest

    out: dict = {"raters": [r["rater"] for r in results]}
    kept, excluded = screen_mushra([r for r in results if r["mushra"]])
    mushra: dict[str, list[float]] = {}
    for r in kept:
        for trial in r["mushra"]:
            for system, score in trial["ratings"].items():
                mushra.setdefault(system, []).append(float(score))
    out["mushra"] = {"raters_kept": [r["rater"] for r in kept], "excluded": excluded,
                     "systems": {s: mean_ci(v) for s, v in mushra.items()}}
    mos: dict[str, list[float]] = {}
    for r in results:
        for trial in r["mos"]:
            mos.setdefault(trial["system"], []).append(float(trial["score"]))
    out["mos"] = {"systems": {s: mean_ci(v) for s, v in mos.items()}}
    pairs: dict[tuple[str, str], dict[str, int]] = {}
    for r in results:
        for trial in r["ab"]:
            pair = tuple(sorted((trial["a"], trial["b"])))
            counts = pairs.setdefault(pair, {pair[0]: 0, pair[1]: 0, "none": 0})  # type: ignore[index]
            counts[trial["choice"] if trial["choice"] in pair else "none"] += 1
    out["ab"] = []
    for (first, second), counts in pairs.items():
        decided = counts[first] + counts[second]
        p = binomtest(counts[first], decided, 0.5).pvalue if decided else math.nan
        out["ab"].append({"systems": [first, second], "counts": counts, "trials": decided + counts["none"],
                          "share_first": counts[first] / decided if decided else math.nan, "p_value": float(p)})
    return out


def _cell(stat: dict, digits: int = 1) -> str:
    if not stat["n"]:
        return "-"
    ci = "" if math.isnan(stat["ci95"]) else f" ± {stat['ci95']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{ci} (n = {stat['n']})"


def to_markdown(agg: dict) -> str:
    lines = [f"# Listening test: {len(agg['raters'])} rater(s)", ""]
    mushra, mos = agg["mushra"]["systems"], agg["mos"]["systems"]
    systems = list(dict.fromkeys([*mushra, *mos]))
    lines += ["| system | MUSHRA (0-100), mean ± 95% CI | MOS (1-5), mean ± 95% CI |", "|---|---:|---:|"]
    for s in systems:
        lines.append(f"| {s} | {_cell(mushra[s]) if s in mushra else '-'} | {_cell(mos[s], 2) if s in mos else '-'} |")
    kept = ", ".join(agg["mushra"]["raters_kept"]) or "-"
    lines += ["", f"MUSHRA raters kept after BS.1534-3 post-screening: {kept}."]
    lines += [f"Excluded: {line}." for line in agg["mushra"]["excluded"]]
    if agg["ab"]:
        lines += ["", "| A/B pair | prefers first | prefers second | no preference | first's share of decided | "
                  "p (two-sided binomial) |", "|---|---:|---:|---:|---:|---:|"]
        for ab in agg["ab"]:
            a, b = ab["systems"]
            c = ab["counts"]
            lines.append(f"| {a} vs {b} | {c[a]} | {c[b]} | {c['none']} | {ab['share_first']:.2f} "
                         f"| {ab['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def results_figure(agg: dict):
    import matplotlib.pyplot as plt

    parts = [(k, agg[k]["systems"], lim) for k, lim in (("mushra", (0, 100)), ("mos", (1, 5))) if agg[k]["systems"]]
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(5 * max(1, len(parts)), 3.2), squeeze=False,
                             constrained_layout=True)
    for ax, (name, stats, lim) in zip(axes[0], parts, strict=False):
        names = list(stats)
        means = [stats[s]["mean"] for s in names]
        errors = [0 if math.isnan(stats[s]["ci95"]) else stats[s]["ci95"] for s in names]
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(*lim)
        ax.set_title(f"{name.upper()} (mean, 95% CI)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


def load_results(files: list[str]) -> list[dict]:
    out = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such results file (the JSON the page exported, or --serve's results/*.json)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ConfigError(f"{path}: not JSON ({err}); export it again from the page") from None
        out.append(validate_results(data, str(path)))
    if not out:
        raise ConfigError("listen-results: give at least one results file")
    return out


PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 24px; max-width: 1100px; color: #222; }
.trial { border: 1px solid #ccc; padding: 10px 14px; margin: 14px 0; }
.trial.done { border-color: #4a4; }
.stim { display: grid; grid-template-columns: 3em 320px 1fr 3.5em; gap: 8px; align-items: center; margin: 4px 0; }
.stim input[type=range] { width: 100%; }
.choices label { margin-right: 18px; }
#progress { font-weight: 600; }
button { font-size: 1em; padding: 4px 12px; }
</style></head><body>
<h1>__TITLE__</h1>
<p>Listen with headphones in a quiet room. <b>MUSHRA</b>: rate every stimulus against the reference (100 = the same
as the reference; one of them is the hidden reference). <b>A/B</b>: which of the two sounds more natural?
<b>MOS</b>: how natural does the clip sound (1 bad - 5 excellent)?</p>
<p>Your name or ID: <input id="rater" size="24"> <button id="start">Start</button></p>
<div id="tests"></div>
<p><span id="progress"></span> <button id="export" disabled>Export results (JSON)</button> <span id="saved"></span></p>
<pre id="selftest" hidden></pre>
<script id="config" type="application/json">__CONFIG__</script>
<script id="audio" type="application/json">__AUDIO__</script>
<script>
"use strict";
const CONFIG = JSON.parse(document.getElementById("config").textContent);
const AUDIO = JSON.parse(document.getElementById("audio").textContent);
let rng = null, seed = 0, trials = [];

function mulberry32(a) {
  return function () {
    a |= 0; a = a + 0x6D2B79F5 | 0;
    let t = Math.imul(a ^ a >>> 15, 1 | a);
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t;
    return ((t ^ t >>> 14) >>> 0) / 4294967296;
  };
}
function shuffle(list) {
  const a = list.slice();
  for (let i = a.length - 1; i > 0; i--) { const j = Math.floor(rng() * (i + 1)); [a[i], a[j]] = [a[j], a[i]]; }
  return a;
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}
function player(utt, system) {
  return el("audio", {controls: "", preload: "metadata", src: AUDIO[CONFIG.clips[utt][system]]});
}
function buildTrials() {
  const list = [];
  for (const utt of CONFIG.utterances) {
    if (CONFIG.tests.includes("mushra"))
      list.push({test: "mushra", utterance: utt,
                 stimuli: shuffle([CONFIG.reference, CONFIG.anchor, ...CONFIG.systems])});
    if (CONFIG.tests.includes("ab") && CONFIG.ab) {
      const [a, b] = shuffle(CONFIG.ab);
      list.push({test: "ab", utterance: utt, a: a, b: b});
    }
    if (CONFIG.tests.includes("mos"))
      for (const s of [CONFIG.reference, ...CONFIG.systems]) list.push({test: "mos", utterance: utt, system: s});
  }
  return shuffle(list);
}
function render() {
  const root = document.getElementById("tests");
  root.innerHTML = "";
  trials.forEach((trial, i) => {
    const box = el("div", {class: "trial", id: "trial" + i});
    trial.box = box;
    if (trial.test === "mushra") {
      box.append(el("h3", {}, `${i + 1}. MUSHRA`),
                 el("div", {class: "stim"}, "Ref.", player(trial.utterance, CONFIG.reference), "", ""));
      trial.inputs = {};
      trial.stimuli.forEach((s, k) => {
        const slider = el("input", {type: "range", min: "0", max: "100", step: "1", value: "50"});
        const value = el("span", {}, "-");
        slider.addEventListener("input", () => {
          value.textContent = slider.value; slider.dataset.moved = "1"; update();
        });
        trial.inputs[s] = slider;
        box.append(el("div", {class: "stim"}, String.fromCharCode(65 + k), player(trial.utterance, s), slider, value));
      });
    } else if (trial.test === "ab") {
      box.append(el("h3", {}, `${i + 1}. A/B: which sounds more natural?`),
                 el("div", {class: "stim"}, "A", player(trial.utterance, trial.a), "", ""),
                 el("div", {class: "stim"}, "B", player(trial.utterance, trial.b), "", ""));
      const choices = el("div", {class: "choices"});
      for (const [label, v] of [["A", "a"], ["B", "b"], ["no preference", "none"]]) {
        const radio = el("input", {type: "radio", name: "ab" + i, value: v});
        radio.addEventListener("change", update);
        choices.append(el("label", {}, radio, " " + label));
      }
      box.append(choices);
    } else {
      box.append(el("h3", {}, `${i + 1}. MOS: how natural does it sound?`),
                 el("div", {class: "stim"}, "", player(trial.utterance, trial.system), "", ""));
      const choices = el("div", {class: "choices"});
      ["1 bad", "2 poor", "3 fair", "4 good", "5 excellent"].forEach((label, k) => {
        const radio = el("input", {type: "radio", name: "mos" + i, value: String(k + 1)});
        radio.addEventListener("change", update);
        choices.append(el("label", {}, radio, " " + label));
      });
      box.append(choices);
    }
    root.append(box);
  });
  update();
}
function answer(trial, i) {
  if (trial.test === "mushra") {
    if (!Object.values(trial.inputs).every(s => s.dataset.moved)) return null;
    const ratings = {};
    for (const [s, slider] of Object.entries(trial.inputs)) ratings[s] = Number(slider.value);
    return {utterance: trial.utterance, order: trial.stimuli, ratings: ratings};
  }
  const checked = document.querySelector(`input[name=${trial.test}${i}]:checked`);
  if (!checked) return null;
  if (trial.test === "ab")
    return {utterance: trial.utterance, a: trial.a, b: trial.b,
            choice: checked.value === "none" ? "none" : (checked.value === "a" ? trial.a : trial.b)};
  return {utterance: trial.utterance, system: trial.system, score: Number(checked.value)};
}
function update() {
  let done = 0;
  trials.forEach((t, i) => { const ok = answer(t, i) !== null; t.box.classList.toggle("done", ok); done += ok; });
  document.getElementById("progress").textContent = trials.length ? `${done} of ${trials.length} trials rated` : "";
  document.getElementById("export").disabled = !trials.length || done < trials.length;
}
function results() {
  const out = {format: CONFIG.format, rater: document.getElementById("rater").value, seed: seed,
               finished: new Date().toISOString(), trial_order: trials.map(t => t.test + ":" + t.utterance),
               mushra: [], ab: [], mos: []};
  trials.forEach((t, i) => out[t.test].push(answer(t, i)));
  return out;
}
function start(fixedSeed) {
  if (!document.getElementById("rater").value.trim()) { alert("Enter your name or ID first."); return; }
  seed = fixedSeed !== undefined ? fixedSeed : Math.floor(Math.random() * 2 ** 31);
  rng = mulberry32(seed);
  trials = buildTrials();
  render();
}
async function exportResults() {
  const data = results();
  const text = JSON.stringify(data, null, 1);
  const link = el("a", {href: URL.createObjectURL(new Blob([text], {type: "application/json"})),
                        download: `listening_${data.rater.replace(/[^A-Za-z0-9_.-]+/g, "_")}.json`});
  document.body.append(link); link.click(); link.remove();
  if (location.protocol.startsWith("http")) {
    try {
      const r = await fetch("results", {method: "POST", headers: {"Content-Type": "application/json"}, body: text});
      document.getElementById("saved").textContent = r.ok ? "saved on the server: " + (await r.json()).saved
                                                          : "the server refused the results: " + r.status;
    } catch (e) { document.getElementById("saved").textContent = "not saved on a server (" + e + ")"; }
  }
  return data;
}
document.getElementById("start").addEventListener("click", () => start());
document.getElementById("export").addEventListener("click", exportResults);

// the scripted rater (#selftest): fills every trial through the controls, exports, reports durations
async function selftest() {
  document.getElementById("rater").value = "selftest";
  start(12345);
  const pick = mulberry32(777);
  trials.forEach((t, i) => {
    if (t.test === "mushra") {
      for (const [s, slider] of Object.entries(t.inputs)) {
        slider.value = String(s === CONFIG.reference ? 90 + Math.floor(pick() * 11) : Math.floor(pick() * 101));
        slider.dispatchEvent(new Event("input"));
      }
    } else {
      const radios = document.querySelectorAll(`input[name=${t.test}${i}]`);
      const radio = radios[Math.floor(pick() * radios.length)];
      radio.checked = true; radio.dispatchEvent(new Event("change"));
    }
  });
  const audios = Array.from(document.querySelectorAll("audio"));
  await Promise.all(audios.map(a => a.readyState >= 1 ? null : new Promise(ok => {
    a.addEventListener("loadedmetadata", ok); a.addEventListener("error", ok);
  })));
  const exportable = !document.getElementById("export").disabled;
  const data = await exportResults();
  const out = document.getElementById("selftest");
  out.textContent = JSON.stringify({exportable: exportable, durations: audios.map(a => a.duration), results: data});
  out.hidden = false;
}
if (location.hash === "#selftest") selftest();
</script></body></html>
"""
