"""The bundled multi-voice demo corpus (its split, labels, files and packaging) and its builder's rules
(sentence plan, level matching, missing voices), the builder run with a fake synthesiser."""

from __future__ import annotations

from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill.data.corpus import demo_corpus_dir, harmonic_signal, resolve_corpus
from distill.data.make_demo_corpus import (
    EXTRA_BY_NAME,
    EXTRA_HELD_OUT,
    HELD_OUT_VOICES,
    SAMPLE_RATE,
    VOICE_BY_NAME,
    VOICES,
    active_level,
    check_voices,
    make_demo_corpus,
    make_held_out_set,
    match_level,
    parse_voices,
    plan_corpus,
    read_sentences,
    slt_level,
    split_of,
    trim_silence,
)
from distill.errors import WavedistillError

ROOT = Path(__file__).resolve().parents[3]
TRAINING = [v.name for v in VOICES if not v.held_out]
FESTIVAL = {v.name for v in VOICES if v.engine == "festival"}
ALL_INSTALLED: dict[str, set[str] | None] = {"flite": {v.name for v in VOICES if v.engine == "flite"},
                                             "festival": FESTIVAL}
NONE_INSTALLED: dict[str, set[str] | None] = {"flite": None, "festival": None}


def metadata() -> dict[str, list[str]]:
    """id -> its columns [text, normalized text, voice], from the packaged metadata.csv."""
    lines = (demo_corpus_dir() / "metadata.csv").read_text(encoding="utf-8").splitlines()
    return {cols[0]: cols[1:] for cols in (line.split("|") for line in lines if line)}


def split_ids() -> dict[str, list[str]]:
    return {s: (demo_corpus_dir() / f"{s}.txt").read_text(encoding="utf-8").split() for s in ("train", "valid", "test")}


def voice_of(uid: str) -> str:
    return metadata()[uid][2]


# ----------------------------------------------------------------------------- the packaged corpus


def test_held_out_voices_never_train_and_every_voice_is_tested():
    meta, ids = metadata(), split_ids()
    voices = {s: Counter(meta[u][2] for u in part) for s, part in ids.items()}
    assert not set(HELD_OUT_VOICES) & set(voices["train"])
    for name in HELD_OUT_VOICES:
        assert voices["test"][name] == 10
    for name in TRAINING:
        assert voices["train"][name] > 0 and voices["test"][name] > 0, name
    assert set(voices["test"]) == {v.name for v in VOICES}


def test_no_voice_trains_on_a_text_that_any_voice_is_tested_on():
    meta, ids = metadata(), split_ids()
    train_texts = {meta[u][0] for u in ids["train"]}
    test_texts = {meta[u][0] for u in ids["test"]}
    assert len(test_texts) == 10 and not train_texts & test_texts


def test_lists_metadata_and_files_agree_and_the_voice_column_matches_the_id():
    meta, ids = metadata(), split_ids()
    listed = [u for part in ids.values() for u in part]
    assert len(listed) == len(set(listed)) == len(meta)  # each utterance in exactly one split
    assert set(listed) == set(meta)
    files = {p.stem for p in (demo_corpus_dir() / "wavs").iterdir()}
    assert files == set(meta)
    for uid, (text, normalized, voice) in meta.items():
        prefix = uid.rsplit("_", 1)[0]
        assert (prefix == "demo" and voice == "slt") or prefix == voice, uid
        assert text and text == normalized


def test_resolve_corpus_labels_every_demo_utterance_with_its_voice():
    for split in ("train", "test"):
        utts = resolve_corpus("demo", split)
        assert all(u.speaker == voice_of(u.id) for u in utts)
    assert {u.speaker for u in resolve_corpus("demo", "test")} == {v.name for v in VOICES}
    assert resolve_corpus("demo", "test")[0].id == "demo_0015"  # slt's utterances come first, as before


def test_the_audio_is_16k_mono_flac_and_the_corpus_stays_small():
    files = sorted((demo_corpus_dir() / "wavs").iterdir())
    infos = [sf.info(str(p)) for p in files]
    assert {(i.samplerate, i.channels, i.format, i.subtype) for i in infos} == {(16000, 1, "FLAC", "PCM_16")}
    assert all(1.0 <= i.duration <= 10.0 for i in infos)
    assert sum(p.stat().st_size for p in files) < 26e6


def test_the_package_data_patterns_ship_every_corpus_file():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["distill.data"]
    root = demo_corpus_dir()
    files = [p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file()]
    assert len(files) > 300

    def shipped(rel: str) -> bool:  # setuptools' glob: '*' stays inside one folder
        parts = rel.split("/")
        return any(len(pat.split("/")) == len(parts) and all(map(fnmatchcase, parts, pat.split("/")))
                   for pat in patterns)

    assert [f for f in files if not shipped(f)] == []


# ----------------------------------------------------------------------------- the builder's rules


def test_the_plan_follows_the_rule():
    sentences = read_sentences()
    plan = plan_corpus(sentences)
    counts = Counter((e.voice, e.split) for e in plan)
    assert [counts["slt", s] for s in ("train", "valid", "test")] == [130, 10, 10]
    for name in TRAINING[1:]:
        assert [counts[name, s] for s in ("train", "valid", "test")] == [22, 2, 4]
    for name in HELD_OUT_VOICES:
        assert [counts[name, s] for s in ("train", "valid", "test")] == [0, 4, 10]
    for e in plan:
        assert e.split == split_of(e.line) and e.text == sentences[e.line - 1]
        assert e.id == f"{'demo' if e.voice == 'slt' else e.voice}_{e.line:04d}"
    slt_train = {e.line for e in plan if e.voice == "slt" and e.split == "train"}
    assert {e.line for e in plan if e.voice != "slt" and e.split == "train"} == slt_train  # the windows cover it
    other_test = Counter(e.line for e in plan if e.voice in TRAINING[1:] and e.split == "test")
    assert set(other_test) == {e.line for e in plan if e.voice == "slt" and e.split == "test"}
    assert min(other_test.values()) >= 2  # rotated: every test text is read by more than one training voice
    # a voice's sentences do not depend on which other voices are made
    subset = plan_corpus(sentences, parse_voices("ked_diphone,lp_diphone"))
    assert subset == [e for e in plan if e.voice in ("slt", "ked_diphone", "lp_diphone")]


def test_match_level_reaches_the_target_or_the_peak_ceiling():
    speech = harmonic_signal(1.0, 150, seed=0)
    padded = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(8000, np.float32)])
    assert active_level(padded, SAMPLE_RATE) == pytest.approx(active_level(speech, SAMPLE_RATE), rel=0.02)
    for scale in (0.05, 1.0):
        y = match_level(scale * padded, 0.1, SAMPLE_RATE)
        assert active_level(y, SAMPLE_RATE) == pytest.approx(0.1, rel=1e-3) and np.abs(y).max() < 0.99
    clicks = np.zeros(16000, np.float32)
    clicks[::160] = 0.5  # a crest factor no level of 0.2 fits under the ceiling
    y = match_level(clicks, 0.2, SAMPLE_RATE)
    assert np.abs(y).max() == pytest.approx(0.99) and active_level(y, SAMPLE_RATE) < 0.2
    with pytest.raises(WavedistillError, match="silent"):
        match_level(np.zeros(1600, np.float32), 0.1, SAMPLE_RATE)


def test_a_missing_synthesiser_or_voice_names_its_debian_package():
    voices = parse_voices(None)
    check_voices(voices, ALL_INSTALLED)
    lacking = {**ALL_INSTALLED, "festival": FESTIVAL - {"ked_diphone"}}
    with pytest.raises(WavedistillError, match=r"^festival voice ked_diphone is not installed; "
                                               r"apt-get install festvox-kdlpc16k$"):
        check_voices(voices, lacking)
    with pytest.raises(WavedistillError, match=r"^festival \(text2wave\) is not installed; apt-get install festival$"):
        check_voices(voices, {**ALL_INSTALLED, "festival": None})
    with pytest.raises(WavedistillError, match=r"^flite is not installed; apt-get install flite$"):
        check_voices(voices, {**ALL_INSTALLED, "flite": None})
    with pytest.raises(WavedistillError, match="unknown voice 'nobody'; choose from slt, rms"):
        parse_voices("rms,nobody")


def fake_synth(calls: list[tuple[str, np.ndarray]]):
    """A synthesiser stand-in: a harmonic signal between half-second silences, its level set by the call
    and its rate by the engine (festival at 32 kHz, as its HTS voice), so that resampling and level
    matching have work to do. Records (voice, audio) of each call."""
    def synth(voice, text):
        rate = 32000 if voice.engine == "festival" else SAMPLE_RATE
        gain = 0.3 if voice.name == "slt" else 0.05 + 0.05 * (len(calls) % 7)
        x = gain * harmonic_signal(1.0, 100 + len(text), seed=len(calls), sample_rate=rate)
        silence = np.zeros(rate // 2, np.float32)
        calls.append((voice.name, np.concatenate([silence, x, silence])))
        return calls[-1][1], rate
    return synth


def test_the_builder_writes_a_level_matched_labelled_corpus_and_keeps_what_exists(tmp_path):
    calls: list[tuple[str, np.ndarray]] = []
    summary = make_demo_corpus(tmp_path, "rms,ked_diphone", synth=fake_synth(calls), installed=ALL_INSTALLED)
    assert Counter(name for name, _ in calls) == {"slt": 150, "rms": 28, "ked_diphone": 14}
    assert (summary["train"], summary["valid"], summary["test"]) == (152, 16, 24)
    lines = (tmp_path / "metadata.csv").read_text().splitlines()
    assert len(lines) == 192 and all(len(line.split("|")) == 4 for line in lines)
    wavs = tmp_path / "wavs"
    slt = sf.read(str(wavs / "demo_0001.flac"), dtype="float32")[0]
    assert np.abs(slt - trim_silence(calls[0][1], SAMPLE_RATE)).max() < 1e-4  # slt: trimmed, never scaled
    target = np.median([active_level(sf.read(str(p))[0], SAMPLE_RATE) for p in wavs.glob("demo_*.flac")])
    others = [*wavs.glob("rms_*.flac"), *wavs.glob("ked_diphone_*.flac")]
    for p in others:
        x, rate = sf.read(str(p))
        assert rate == SAMPLE_RATE and active_level(x, rate) == pytest.approx(target, rel=0.01)
        assert 0.8 < len(x) / rate < 1.25  # the half-second silences trimmed to 100 ms
    assert {u.speaker for u in resolve_corpus(str(tmp_path), "test")} == {"slt", "rms", "ked_diphone"}
    assert "ked_diphone" not in {u.speaker for u in resolve_corpus(str(tmp_path), "train")}

    # a second run keeps existing audio (needing no synthesiser) and drops the voices not asked for
    calls.clear()
    again = make_demo_corpus(tmp_path, "rms", synth=fake_synth(calls), installed=NONE_INSTALLED)
    assert calls == [] and again["kept"] == 178 and not list(wavs.glob("ked_diphone_*"))
    with pytest.raises(WavedistillError, match="flite is not installed"):
        make_demo_corpus(tmp_path, "rms", force=True, synth=fake_synth(calls), installed=NONE_INSTALLED)


def test_the_wider_held_out_set_reads_the_test_texts_one_folder_per_voice_at_slts_level(tmp_path):
    # six more voices, none of them in the corpus or its training split, each a held-out voice
    assert not set(EXTRA_BY_NAME) & set(VOICE_BY_NAME) and all(v.held_out for v in EXTRA_HELD_OUT)
    assert len(EXTRA_HELD_OUT) == 6 and all(v.engine == "festival" for v in EXTRA_HELD_OUT)
    calls: list[tuple[str, np.ndarray]] = []
    texts: list[str] = []
    synth = fake_synth(calls)

    def reading(voice, text):
        texts.append(text)
        return synth(voice, text)

    installed: dict[str, set[str] | None] = {"flite": None, "festival": set(EXTRA_BY_NAME)}
    summary = make_held_out_set(tmp_path, "czech_krb,msu_ru_nsh_clunits,czech_krb", synth=reading,
                                installed=installed)
    assert Counter(name for name, _ in calls) == {"czech_krb": 10, "msu_ru_nsh_clunits": 10}  # a name given twice
    assert summary["test"] == 20 and summary["train"] == summary["valid"] == 0
    assert {t["group"] for t in summary["voices"].values()} == {"held-out"}
    assert all(abs(t["level_db"]) < 0.2 for t in summary["voices"].values())  # at slt's level
    # the texts of slt's test split (which no voice of the corpus trains on), under the corpus's id scheme
    slt_test = sorted(u.removeprefix("demo_") for u in split_ids()["test"] if u.startswith("demo_"))
    texts_of = metadata()
    assert sorted(texts) == sorted(2 * [texts_of[f"demo_{n}"][0] for n in slt_test])
    target = slt_level(demo_corpus_dir() / "wavs", plan_corpus(read_sentences(), [VOICE_BY_NAME["slt"]]))
    for voice in ("czech_krb", "msu_ru_nsh_clunits"):
        files = sorted((tmp_path / voice).glob("*.flac"))
        assert [p.stem.removeprefix(f"{voice}_") for p in files] == slt_test
        for p in files:
            x, rate = sf.read(str(p))
            assert rate == SAMPLE_RATE and active_level(x, rate) == pytest.approx(target, rel=0.01)
    # `eval --data DIR --split all` labels every file by its sub-folder
    utts = resolve_corpus(str(tmp_path), "all")
    assert len(utts) == 20 and {u.speaker for u in utts} == {"czech_krb", "msu_ru_nsh_clunits"}

    # kept on a second run (no synthesiser needed); --force needs the voice; bad names and folders refused
    calls.clear()
    assert make_held_out_set(tmp_path, "czech_krb", synth=fake_synth(calls), installed=NONE_INSTALLED)["kept"] == 10
    assert calls == []
    with pytest.raises(WavedistillError, match=r"^festival voice czech_krb is not installed; "
                                               r"apt-get install festvox-czech-krb$"):
        make_held_out_set(tmp_path, "czech_krb", force=True, synth=fake_synth(calls),
                          installed={"flite": None, "festival": set()})
    with pytest.raises(WavedistillError, match="unknown voice 'slt'; choose from czech_dita"):
        make_held_out_set(tmp_path, "slt", synth=fake_synth(calls), installed=installed)
    for inside in (demo_corpus_dir(), demo_corpus_dir() / "wavs", demo_corpus_dir().parent):
        with pytest.raises(WavedistillError, match="or holds the bundled demo corpus; give the wider held-out set"):
            make_held_out_set(inside, synth=fake_synth(calls), installed=installed)
