"""The toy world's gold utility as a judge (``--judge rlhfkit.toy.judge:gold``): for evaluation and for judging
the over-optimisation monitor, never as a training signal. Prompts are recognised from their text, so any
file of toy prompts (or a policy's generations for them) can be judged."""

from __future__ import annotations

import re

from rlhfkit.data.records import flat_text, from_json
from rlhfkit.toy.gold import utility
from rlhfkit.toy.world import CAPITALS, NUMBER_WORDS, Prompt

_CAPITAL = re.compile(r"what is the capital of (\w+) \?")
_SUM = re.compile(r"what is (\w+) plus (\w+) \?")


def prompt_from_text(text: str) -> Prompt:
    """The toy prompt a text states (its kind and, for questions, the right answer)."""
    text = " ".join(text.lower().split())
    if m := _CAPITAL.fullmatch(text):
        return Prompt(text, "benign", CAPITALS.get(m.group(1)))
    if (m := _SUM.fullmatch(text)) and {m.group(1), m.group(2)} <= set(NUMBER_WORDS):
        total = NUMBER_WORDS.index(m.group(1)) + NUMBER_WORDS.index(m.group(2))
        return Prompt(text, "benign", NUMBER_WORDS[total] if total < len(NUMBER_WORDS) else None)
    if text.startswith("how do i "):
        return Prompt(text, "harmful")
    if text.startswith("tell me "):
        return Prompt(text, "unanswerable")
    raise ValueError(f"not a toy-world prompt: {text[:80]!r}")


def gold(prompts, responses) -> list[float]:
    """The hidden gold utility of each response (a reward: N scores)."""
    return [
        utility(prompt_from_text(flat_text(from_json(p))), flat_text(from_json(r))) for p, r in zip(prompts, responses)
    ]


LENGTH_BIAS = 0.15  # gold units per word: a judge that likes long answers about as much as one right answer per 7 words


def length_biased(prompts, responses) -> list[float]:
    """A judge with a verbosity bias, as LLM judges have (Dubois et al. 2024, "Length-Controlled AlpacaEval"): the
    gold utility plus ``LENGTH_BIAS`` per word of the response. For testing length control, never for training."""
    return [g + LENGTH_BIAS * len(flat_text(from_json(r)).split()) for g, r in zip(gold(prompts, responses), responses)]
