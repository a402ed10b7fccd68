"""Voices in an evaluation: the label each clip is reported under, the utterances taken of each voice,
and the groups of voices whose scores are reported beside the overall ones.

Each clip carries its corpus's voice label (`eval.evaluate.Clip.voice`; UNLABELLED where the corpus
names none). When the clips carry more than one label, `--max-utterances N` takes the first N utterances
of each voice (`select_utterances`; else the first N of the split), and the scores are also aggregated per
voice and per group of voices (`eval.evaluate.voice_sections`), the same way as the overall table. The
groups (`voice_groups`): "training" = the voices that an evaluated model (the teacher when it synthesises,
every student) recorded in its checkpoint (`extra["voices"]`, its training split's labels); "held-out" =
the voices that no evaluated model trained on; "unknown" = every voice when no evaluated model records its
voices. `--training-voices a,b,c` names the training voices instead of the records. VOICE_RULE is the
same rule in one line, written into the report's settings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from distill.data.corpus import Utterance

TRAINING, HELD_OUT, UNKNOWN = "training", "held-out", "unknown"  # the voice groups, in the report's order
GROUPS = (TRAINING, HELD_OUT, UNKNOWN)
UNLABELLED = "(unlabelled)"  # the voice of a clip whose corpus names none
VOICE_RULE = ("training = the voices an evaluated model (the teacher when it synthesises, every student) recorded "
              "in its checkpoint as its training split's; held-out = the voices no evaluated model trained on; "
              "unknown = every voice when no evaluated model records its voices; --training-voices names the "
              "training voices instead of the records")


def select_utterances(utts: list[Utterance], max_utterances: int) -> list[Utterance]:
    """What an evaluation takes from a split, in the split's order: every utterance (0); when the split
    has several voice labels, the first `max_utterances` of each voice (a split listed voice by voice
    would otherwise give one voice); else the first `max_utterances`."""
    if max_utterances <= 0:
        return list(utts)
    if len({u.speaker for u in utts}) <= 1:
        return utts[:max_utterances]
    taken: Counter[str] = Counter()
    chosen = []
    for utt in utts:
        if taken[utt.speaker] < max_utterances:
            taken[utt.speaker] += 1
            chosen.append(utt)
    return chosen


def selection_note(max_utterances: int, voices: Iterable[str]) -> str:
    """How the clips were chosen, for the report's settings. voices: the clips' voices (`Clip.voice`)."""
    if max_utterances <= 0:
        return "every utterance of the split"
    if len(set(voices)) > 1:
        return f"the first {max_utterances} utterance(s) of each voice"
    return f"the first {max_utterances} utterance(s) of the split"


def voice_groups(voices: Iterable[str], recorded: dict[str, list[str] | None],
                 training_voices: tuple[str, ...] | None = None) -> dict[str, str]:
    """Each voice's group (TRAINING, HELD_OUT or UNKNOWN) by the rule of VOICE_RULE. recorded: per
    evaluated model, the voices its checkpoint records (None: no record); training_voices: the user's
    list (--training-voices), which replaces the records."""
    if training_voices is not None:
        known: set[str] | None = {v or UNLABELLED for v in training_voices}
    elif any(r is not None for r in recorded.values()):
        known = {v or UNLABELLED for r in recorded.values() if r is not None for v in r}
    else:
        known = None
    return {v: UNKNOWN if known is None else TRAINING if v in known else HELD_OUT for v in voices}


def voice_groups_note(report: dict) -> str:
    """The groups' rule, where this evaluation's training voices came from, and each group's voices."""
    s = report["settings"]
    if s.get("training_voices") is not None:
        source = f"--training-voices {','.join(s['training_voices']) or '(none)'}"
    else:
        source = "records: " + ("; ".join(f"{model}: {', '.join(v) if v is not None else 'none'}"
                                          for model, v in s["voice_groups"]["recorded"].items()) or "no model")
    members = "; ".join(f"{group}: {', '.join(g['voices'])}" for group, g in report["groups"].items())
    return f"{s['voice_groups']['rule']}. Here ({source}): {members}"
