"""Voice labels on the data side: the voices a model trains on (what its checkpoint records) and the order in
which a multi-voice validation split is read."""

from __future__ import annotations

from distill.config import DataConfig
from distill.data.datasets import corpus_voices, voice_order


def test_voice_order_takes_one_utterance_of_each_voice_in_turn():
    assert voice_order(["a", "a", "b", "c", "b", "a"]) == [0, 2, 3, 1, 4, 5]
    assert voice_order(["", "", ""]) == [0, 1, 2]  # an unlabelled corpus keeps its order
    assert voice_order([]) == []


def test_the_demo_corpus_trains_on_eight_voices_and_never_on_the_held_out_two():
    voices = corpus_voices(DataConfig(corpus="demo"))
    assert voices == sorted(voices) and len(voices) == 8 and "slt" in voices
    assert not {"ked_diphone", "upc_ca_ona_hts"} & set(voices)
