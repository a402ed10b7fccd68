"""Quality metrics against a reference: PESQ (wideband / narrowband), multi-resolution STFT
distance and log-mel L1; and, from their libraries where installed (the `eval` extra), DNSMOS,
STOI / ESTOI, F0 RMSE, voicing F1 and periodicity error, and mel-cepstral distortion; the same pitch
figures read by CREPE with the `crepe` extra, only when asked for.

PESQ runs in worker processes: the C implementation is not thread-safe, and separate processes
use all cores. An utterance PESQ cannot score (too short, no speech found) becomes NaN with the
reason recorded, never an exception.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import multiprocessing as mp
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from distill.audio.io import resample

PESQ_RATES = {"wb": 16000, "nb": 8000}


@dataclass
class PesqResult:
    score: float  # NaN when PESQ could not score the pair
    reason: str = ""  # why it is NaN


def _pesq_one(args: tuple) -> tuple[float, str]:
    from pesq import PesqError, pesq

    ref, deg, rate, mode = args
    try:
        return float(pesq(rate, ref, deg, mode)), ""
    except PesqError as err:  # NoUtterancesError, BufferTooShortError, ...
        detail = err.args[0] if err.args else ""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return math.nan, f"{type(err).__name__}: {detail}"
    except (ValueError, RuntimeError) as err:
        return math.nan, f"{type(err).__name__}: {err}"


def pesq_scores(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], sample_rate: int, mode: str = "wb", workers: int | None = None
) -> list[PesqResult]:
    """PESQ of each (reference (T,), degraded (T,)) pair. Audio is resampled to 16 kHz (wb) or 8 kHz (nb)."""
    if mode not in PESQ_RATES:
        raise ValueError(f"PESQ mode must be 'wb' or 'nb', got {mode!r}")
    rate = PESQ_RATES[mode]
    jobs = []
    for ref, deg in pairs:
        n = min(ref.shape[-1], deg.shape[-1])
        ref_at_rate = resample(torch.as_tensor(ref[..., :n]).float(), sample_rate, rate).numpy().astype(np.float64)
        deg_at_rate = resample(torch.as_tensor(deg[..., :n]).float(), sample_rate, rate).numpy().astype(np.float64)
        jobs.append((ref_at_rate, deg_at_rate, rate, mode))
    if not jobs:
        return []
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers == 1:
        results = [_pesq_one(job) for job in jobs]
    else:
        # fork: workers need only numpy and pesq (no torch threads), and start in milliseconds
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
            results = list(pool.map(_pesq_one, jobs))
    return [PesqResult(score, reason) for score, reason in results]


def stft_distance(ref: torch.Tensor, deg: torch.Tensor, resolutions=((512, 128), (1024, 256), (2048, 512))) -> float:
    """Multi-resolution STFT distance: mean over resolutions of spectral convergence + log-magnitude L1."""
    n = min(ref.shape[-1], deg.shape[-1])
    ref, deg = ref[..., :n].float(), deg[..., :n].float()
    total = 0.0
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft)
        # constant padding: reflection needs clips longer than n_fft / 2
        r = torch.stft(ref, n_fft, hop, window=window, pad_mode="constant", return_complex=True).abs().clamp(min=1e-7)
        d = torch.stft(deg, n_fft, hop, window=window, pad_mode="constant", return_complex=True).abs().clamp(min=1e-7)
        convergence = torch.linalg.norm(r - d) / torch.linalg.norm(r)
        log_l1 = (r.log() - d.log()).abs().mean()
        total += float(convergence + log_l1)
    return total / len(resolutions)


def mel_l1(ref_mel: torch.Tensor, deg_mel: torch.Tensor) -> float:
    """Mean absolute difference of two log-mels (n_mels, F), over their common frames."""
    n = min(ref_mel.shape[-1], deg_mel.shape[-1])
    return float((ref_mel[..., :n] - deg_mel[..., :n]).abs().mean())


# --------------------------------------------------------------------------------------------
# Metrics from their libraries (the `eval` extra): each is skipped, with one line saying which
# package is missing, where it is not installed. All of them score 16 kHz audio (the rate DNSMOS was
# trained at and PESQ wideband's); other rates are resampled first, as for PESQ.

METRIC_RATE = 16000
F0_FRAME_MS = 10.0  # pyworld's frame period for F0, voicing and periodicity
F0_FLOOR, F0_CEIL = 50.0, 800.0  # Hz: the F0 search range
PERIODICITY_BAND_HZ = 4000.0  # periodicity = 1 - D4C aperiodicity averaged over 0 .. this
# the keys of `compare_tracks`' values: the f0 metric's, and the crepe metric's with its prefix
PITCH_KEYS = ("f0_rmse_cents", "vuv_f1", "vuv_precision", "vuv_recall", "periodicity_error")
CREPE_PREFIX = "crepe_"


@dataclass(frozen=True)
class LibraryMetric:
    """A family of report columns computed by one library."""

    name: str  # the --metrics name
    modules: tuple[str, ...]  # what must import for it to run
    keys: tuple[str, ...]  # the report keys it fills, per utterance and (mean) per system
    intrusive: bool  # needs the reference (False: scores the audio alone, the reference included)
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (reference, degraded) at 16 kHz -> values
    extra: str = "eval"  # the extra that installs its modules
    in_all: bool = True  # run by `--metrics all` (False: only when named; too slow for every evaluation on a CPU)

    def missing(self) -> list[str]:
        """The modules that do not import here (empty: it can run)."""
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


def dnsmos(_reference: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 (signal, background, overall) and P.808 of one 16 kHz clip, from `speechmos`
    (Microsoft's ONNX models, shipped in its wheel, run with onnxruntime). Non-intrusive: the reference
    is not used. The audio is clipped to [-1, 1], as it is when written to a WAV file."""
    from speechmos import dnsmos as model

    out = model.run(np.clip(audio, -1.0, 1.0).astype(np.float64), METRIC_RATE)
    return {"dnsmos_sig": float(out["sig_mos"]), "dnsmos_bak": float(out["bak_mos"]),
            "dnsmos_ovrl": float(out["ovrl_mos"]), "dnsmos_p808": float(out["p808_mos"])}


def stoi_scores(reference: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """Short-time objective intelligibility and its extended form (`pystoi`; 1 = the reference). NaN
    where the reference has too little speech for it (pystoi needs 30 frames, about 0.4 s, of speech
    after removing silence; it warns and returns 1e-5 then)."""
    import warnings

    from pystoi import stoi

    out = {}
    for key, extended in (("stoi", False), ("estoi", True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(stoi(reference, audio, METRIC_RATE, extended=extended))
        out[key] = math.nan if any("Not enough STFT frames" in str(w.message) for w in caught) else value
    return out


def f0_track(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz per 10 ms frame, 0 where unvoiced; periodicity per frame in [0, 1]) from `pyworld`:
    DIO refined by StoneMask for F0 and voicing (FastSpeech 2's and ESPnet's choice), D4C for the
    aperiodicity, whose complement averaged below 4 kHz is the periodicity.

    Why DIO and not Harvest: the metric compares two tracks, so the tracker must be consistent more
    than it must be right. On a demo test utterance resynthesised with its F0 raised by 25 cents,
    DIO's tracks differ by an RMS 32.7 cents and Harvest's by 307 (its median is right, 24.9, but it
    jumps octaves on 9% of the frames); with white noise 33 dB below the speech, 13.6 against 340."""
    return cached_track(f"dio-{F0_FLOOR}-{F0_CEIL}-{F0_FRAME_MS}-{PERIODICITY_BAND_HZ}", _dio_track, audio)


# An evaluation scores every system against the same references, one system after another: each track is
# kept under its tracker's name and settings and the audio's SHA-1 (a track is a few kB; the audio would be
# hundreds), read-only, so a reference is read once as long as one system's tracks fit (each system adds two
# per utterance and tracker: up to 2,048 utterances with one tracker, 1,024 with both).
TRACK_CACHE_SIZE = 4096
_tracks: OrderedDict[tuple[str, bytes], tuple[np.ndarray, np.ndarray]] = OrderedDict()


def cached_track(name: str, tracker: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tracker(audio as contiguous float64), or the track it gave for the same samples under the same name."""
    x = np.ascontiguousarray(audio, dtype=np.float64)
    key = (name, hashlib.sha1(x.tobytes(), usedforsecurity=False).digest())
    if key in _tracks:
        _tracks.move_to_end(key)
        return _tracks[key]
    track = tracker(x)
    for values in track:
        values.flags.writeable = False
    _tracks[key] = track
    if len(_tracks) > TRACK_CACHE_SIZE:
        _tracks.popitem(last=False)
    return track


def _dio_track(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pyworld

    f0, times = pyworld.dio(x, METRIC_RATE, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=F0_FRAME_MS)
    f0 = pyworld.stonemask(x, f0, times, METRIC_RATE)
    aperiodicity = pyworld.d4c(x, f0, times, METRIC_RATE)
    band = np.fft.rfftfreq((aperiodicity.shape[1] - 1) * 2, 1 / METRIC_RATE) <= PERIODICITY_BAND_HZ
    return f0, 1.0 - aperiodicity[:, band].mean(axis=1)


def f0_scores(reference: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """Pitch and voicing accuracy against the reference (the CARGAN / BigVGAN set, with pyworld's
    trackers): F0 RMSE in cents over the frames both call voiced, voiced/unvoiced F1 with the
    reference's voicing as the truth, and the RMS difference of the two periodicity tracks over all
    frames. NaN where no frame is voiced in both (F0) or in either (F1).

    F1 has two ways to fall, and they call for different fixes: the voicing's precision (of the
    frames the audio voices, the share the reference voices too; low when a vocoder voices breaths,
    fricatives or a source's false alarms) and its recall (of the reference's voiced frames, the share
    the audio voices too; low when sampling noise hides the harmonics from the tracker). NaN where
    the audio (precision) or the reference (recall) voices no frame."""
    return compare_tracks(f0_track(reference), f0_track(audio))


def compare_tracks(reference: tuple[np.ndarray, np.ndarray], audio: tuple[np.ndarray, np.ndarray],
                   prefix: str = "") -> dict[str, float]:
    """F0 RMSE (cents), V/UV F1, precision and recall, and the periodicity error of two (F0 per frame,
    0 where unvoiced; periodicity per frame) tracks on one frame grid, cut to the shorter; each key
    prefixed with `prefix`."""
    (f0_ref, per_ref), (f0_deg, per_deg) = reference, audio
    n = min(f0_ref.size, f0_deg.size)
    f0_ref, f0_deg, per_ref, per_deg = f0_ref[:n], f0_deg[:n], per_ref[:n], per_deg[:n]
    v_ref, v_deg = f0_ref > 0, f0_deg > 0
    both = v_ref & v_deg
    cents = 1200 * np.log2(f0_deg[both] / f0_ref[both])
    tp, fp, fn = int(both.sum()), int((v_deg & ~v_ref).sum()), int((v_ref & ~v_deg).sum())
    values = {"f0_rmse_cents": float(np.sqrt(np.mean(cents**2))) if both.any() else math.nan,
              "vuv_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
              "vuv_precision": tp / (tp + fp) if tp + fp else math.nan,
              "vuv_recall": tp / (tp + fn) if tp + fn else math.nan,
              "periodicity_error": float(np.sqrt(np.mean((per_ref - per_deg) ** 2)))}
    return {prefix + key: value for key, value in values.items()}


# CREPE as Vocos's evaluation reads pitch (its settings, adapted from CARGAN's, which decides voicing by a
# hysteresis instead): torchcrepe's full model over 50-550 Hz, Viterbi decoding, frames quieter than -60 dB
# (A-weighted) made aperiodic, frames with periodicity under 0.21 unvoiced
CREPE_MODEL = "full"
CREPE_FMIN, CREPE_FMAX = 50.0, 550.0
CREPE_SILENCE_DB = -60.0
CREPE_UNVOICED = 0.21


def crepe_track(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F0 in Hz per 10 ms frame, 0 where unvoiced; periodicity per frame in [0, 1]) from `torchcrepe`,
    Vocos's settings (the constants above), frames centred on multiples of 10 ms as DIO's are. It runs on
    the CPU, the full model at about 6 s per second of audio on one thread (2 vCPUs AMD EPYC, torch 2.11),
    hence not part of `--metrics all`."""
    name = f"crepe-{CREPE_MODEL}-{CREPE_FMIN}-{CREPE_FMAX}-{CREPE_SILENCE_DB}-{CREPE_UNVOICED}"
    return cached_track(name, _crepe_track, audio)


def _crepe_track(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torchcrepe

    x = torch.from_numpy(audio.astype(np.float32))[None]
    hop = METRIC_RATE // 100
    with torch.inference_mode():
        f0, periodicity = torchcrepe.predict(x, METRIC_RATE, hop, CREPE_FMIN, CREPE_FMAX, CREPE_MODEL,
                                             return_periodicity=True, batch_size=512, device="cpu", pad=True)
        periodicity = torchcrepe.threshold.Silence(CREPE_SILENCE_DB)(periodicity, x, METRIC_RATE, hop, True)
        f0 = torchcrepe.threshold.At(CREPE_UNVOICED)(f0, periodicity)
    return torch.nan_to_num(f0[0], nan=0.0).double().numpy(), periodicity[0].double().numpy()


def crepe_scores(reference: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """`f0_scores`' five values read by CREPE instead of pyworld (keys prefixed `crepe_`): the tracker
    the CARGAN, BigVGAN and Vocos papers report with, a neural one that keeps its voicing where DIO's
    flickers (DIO's V/UV F1 of a recording against itself delayed by 2.5 ms is 0.75-0.97 per voice of the
    demo corpus, CREPE's 0.97-0.99; docs/evaluate.md, "Two pitch trackers")."""
    return compare_tracks(crepe_track(reference), crepe_track(audio), prefix=CREPE_PREFIX)


def mcd(reference: np.ndarray, audio: np.ndarray) -> dict[str, float]:
    """Mel-cepstral distortion in dB (`mel_cepstral_distance`, its defaults: 32 ms frames, 8 ms hop,
    20 mel bands, coefficients 1-16), the two signals aligned sample by sample (zero padding, no DTW:
    copy synthesis is time-aligned). The package reads WAV files; they are written to a temporary folder."""
    import tempfile
    import warnings

    import soundfile as sf
    from mel_cepstral_distance import compare_audio_files

    with tempfile.TemporaryDirectory(prefix="wavedistill-mcd-") as folder:
        paths = [os.path.join(folder, f"{name}.wav") for name in ("reference", "audio")]
        for path, x in zip(paths, (reference, audio), strict=True):
            sf.write(path, np.clip(x, -1.0, 1.0), METRIC_RATE, subtype="PCM_24")
        with warnings.catch_warnings():  # scipy's WAV reader on chunks it does not use
            warnings.simplefilter("ignore")
            value, _penalty = compare_audio_files(paths[0], paths[1], aligning="pad", remove_silence="no")
    return {"mcd": float(value)}


LIBRARY_METRICS = {
    m.name: m
    for m in (
        LibraryMetric("dnsmos", ("speechmos", "librosa", "onnxruntime", "requests"),
                      ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"), False, dnsmos),
        LibraryMetric("stoi", ("pystoi",), ("stoi", "estoi"), True, stoi_scores),
        LibraryMetric("f0", ("pyworld",), PITCH_KEYS, True, f0_scores),
        LibraryMetric("mcd", ("mel_cepstral_distance", "soundfile"), ("mcd",), True, mcd),
        LibraryMetric("crepe", ("torchcrepe",), tuple(CREPE_PREFIX + key for key in PITCH_KEYS), True, crepe_scores,
                      extra="crepe", in_all=False),
    )
}


def resolve_metrics(names: str) -> tuple[list[LibraryMetric], dict[str, str]]:
    """The library metrics to run for `--metrics` ("all", "none" or a comma list), and for each one
    left out because its package is missing, the line that says so."""
    wanted = [n for n, m in LIBRARY_METRICS.items() if m.in_all] if names == "all" else [] if names == "none" else \
        [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in LIBRARY_METRICS]
    if unknown:
        from distill.errors import ConfigError

        raise ConfigError(f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(LIBRARY_METRICS)}, or all / none")
    run, skipped = [], {}
    for name in wanted:
        metric = LIBRARY_METRICS[name]
        missing = metric.missing()
        if missing:
            skipped[name] = (f"{name} skipped: {', '.join(missing)} not installed "
                             f"(pip install 'wavedistill[{metric.extra}]')")
        else:
            run.append(metric)
    return run, skipped


def library_scores(metrics: list[LibraryMetric], pairs: list[tuple[torch.Tensor, torch.Tensor]],
                   sample_rate: int) -> list[dict[str, float]]:
    """Every metric's values for each (reference, degraded) pair, both cut to their common length and
    resampled to 16 kHz."""
    out = []
    for ref, deg in pairs:
        n = min(ref.shape[-1], deg.shape[-1])
        ref16, deg16 = (resample(torch.as_tensor(x[..., :n]).float(), sample_rate, METRIC_RATE)
                        .numpy().astype(np.float64) for x in (ref, deg))
        values: dict[str, float] = {}
        for metric in metrics:
            values.update(metric.score(ref16, deg16))
        out.append(values)
    return out
